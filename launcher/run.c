/*
 * `phalanx run` and `phalanx drill`: the command lines (contract in
 * launcher.h); one job (job.h), or the elastic agent (elastic.h).
 */
#include "launcher.h"

#include "channel.h"
#include "elastic.h"
#include "job.h"
#include "plan.h"
#include "runtime.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    JobConfig config;
    bool elastic;
    ElasticOptions elastic_options;
} Run;

// ----------------------------------------------------------------------------
// command line

static void usage(FILE *out, bool drill)
{
    fprintf(out,
          "usage: phalanx %s -n N [launcher options] -- [phalanx train options]\n"
          "%s"
          "\n"
          "Starts N ranks of `phalanx train` and shows the job's progress. Inside a Slurm\n"
          "allocation (SLURM_JOB_ID set) the ranks start with srun, otherwise with mpirun.\n"
          "The layout (--dp/--pp/--sp or --layout) is checked before any rank starts.\n"
          "%s"
          "\n"
          "  -n, --ranks N            number of ranks, 1 to %d (required)\n"
          "      --via auto|mpirun|srun  how to start them (default auto)\n"
          "      --hostfile FILE      mpirun across the hosts in FILE\n"
          "      --hosts H1,H2,...    mpirun across these hosts\n"
          "      --channel-address ADDR  the IPv4 address of this host the ranks reach the\n"
          "                           launcher at (default: across hosts, the address of\n"
          "                           the interface that routes to the first host; on one\n"
          "                           host, 127.0.0.1)\n"
          "      --startup-timeout S  seconds for every rank to start (default 60)\n"
          "      --worker PATH        the phalanx binary the ranks run (default: this one)\n"
          "Elastic recovery (restart the world on the survivors, resume from the newest\n"
          "complete checkpoint, the global batch kept; needs --ckpt-dir to lose nothing):\n"
          "      --elastic            detect crashes (a rank's channel lost) and hangs (no\n"
          "                           heartbeat), remove the failed node and any host\n"
          "                           that cannot start a process, relaunch\n"
          "      --min-ranks M        stop when fewer ranks survive (default 1)\n"
          "      --max-restarts K     relaunches allowed, at most %d (default 3)\n"
          "      --heartbeat-timeout S  a rank silent this long has hung (default 30); a host\n"
          "                           that leaves the pings unacknowledged for 2 s is lost\n"
          "                           at once, whatever S is\n"
          "      --max-ranks M        grow back up to M ranks when hosts left out answer\n"
          "                           probes again, or with spare hosts (default: -n)\n"
          "      --rejoin-every S     probe a host left out every S seconds: `phalanx probe`\n"
          "                           started on it as the ranks are (mpirun or srun) must\n"
          "                           reach the launcher; 2 answers in a row: healthy, back in\n"
          "                           the host list, and the run grows at a step boundary\n"
          "                           (its checkpoint committed, no step recomputed; the\n"
          "                           global batch kept) when a layout fits (default 10)\n"
          "      --ranks-per-node R   R consecutive ranks form a node, lost together: virtual\n"
          "                           nodes on one host; under srun, --ntasks-per-node R on\n"
          "                           Slurm's nodes (default 1)\n"
          "      --inject EVENT       (repeatable; implies --elastic) a failure to inject:\n"
          "                           crash:RANK@STEP, hang:RANK@STEP, slow:RANK*FACTOR,\n"
          "                           node:NODE@STEP, flushkill:RANK@STEP (SIGKILL in that\n"
          "                           step's checkpoint flush), corrupt:STEP (flip a byte in\n"
          "                           that checkpoint before the attempt), partition:HOST@STEP\n"
          "                           and poweroff:HOST@STEP (after STEP, run --fault-command),\n"
          "                           restore:HOST@STEP (heal or poweron, after the host's\n"
          "                           fault, in the first attempt from #A to reach STEP);\n"
          "                           #A after an event puts it in attempt A (0: the first one)\n"
          "      --fault-command CMD  how partition, poweroff and restore are made: a shell\n"
          "                           command with {kind} (partition, poweroff, heal, poweron)\n"
          "                           and {host} replaced (default $" FAULT_COMMAND_ENV "),\n"
          "                           e.g. 'scripts/netcluster {kind} NAME {host}'; the agent\n"
          "                           detects the lost host by itself (unacknowledged pings)\n"
          "      --report FILE        write the drill report (JSON: timeline, MTTR, steps\n"
          "                           recomputed, samples lost, grows, spares)%s\n"
          "  -h, --help               this text\n"
          "\n"
          "Ctrl-C (or SIGTERM) stops every rank cleanly after its current step (or between\n"
          "micro-batches of a long one); a second Ctrl-C kills the job.\n"
          "Ranks stop by themselves, at a step boundary (or between groups of micro-\n"
          "batches of a long step) and without another checkpoint,\n"
          "when this launcher is gone: its channel closed, or silent for\n"
          CHANNEL_TIMEOUT_ENV " seconds (environment; default 10, 1 to 86400).\n"
          "The channel is opened by a secret drawn for each job and given to the ranks in\n"
          "their environment (" CHANNEL_SECRET_ENV "); other connections are ignored.\n"
          "\n"
          "Exit status: 0 every rank finished; 1 the job could not be started, or a rank\n"
          "failed (a rank's or mpirun's own non-zero status is passed on); 2 bad options;\n"
          "3 the ranks did not start in time; 4 --max-restarts were used up; 5 too few\n"
          "ranks (or no valid layout) remain; 130 after Ctrl-C, 143 after SIGTERM.\n",
          drill ? "drill" : "run",
          drill ? "" : "       phalanx run -n N [launcher options] -- eval CKPT|FILE --data GLOB ...\n"
                       "         (N ranks of `phalanx eval` split the batches; not elastic)\n",
          drill ? "`phalanx drill` is `phalanx run --elastic` with failures to inject\n"
                  "(--inject) and a report (--report, default drill-report.json).\n"
                : "",
          JOB_MAX_CLIENTS, ELASTIC_MAX_RESTARTS, drill ? " (default drill-report.json)" : "");
}

/* Limits of the launcher's numbers: a job's ranks each hold a channel to the
 * launcher (at most JOB_MAX_CLIENTS); a timeout longer than a day is a typo. */
#define MAX_TIMEOUT_S 86400.0

static int parse_count(const char *flag, const char *text, int min, int max, int *out)
{
    return parse_flag_int("phalanx run", flag, text, min, max, out);
}

static int parse_seconds(const char *flag, const char *text, double *out)
{
    return parse_flag_double("phalanx run", flag, text, 0.1, MAX_TIMEOUT_S, out);
}

static int parse_via(const char *text, Via *out)
{
    static const char *names[] = {"auto", "mpirun", "srun"};
    for (int i = 0; i < 3; i++)
        if (strcmp(text, names[i]) == 0) {
            *out = (Via)i;
            return 0;
        }
    fprintf(stderr, "phalanx run: --via: '%s' is not auto, mpirun or srun\n", text);
    return -1;
}

enum { OPT_ELASTIC = 256, OPT_MIN_RANKS, OPT_MAX_RESTARTS, OPT_HEARTBEAT, OPT_PER_NODE,
       OPT_INJECT, OPT_REPORT, OPT_CHANNEL_ADDRESS, OPT_FAULT_COMMAND, OPT_MAX_RANKS,
       OPT_REJOIN_EVERY };

static int add_event(ElasticOptions *e, const char *event)
{
    if (e->event_count == ELASTIC_MAX_EVENTS) {
        fprintf(stderr, "phalanx run: --inject: at most %d events\n", ELASTIC_MAX_EVENTS);
        return -1;
    }
    e->events[e->event_count++] = event;
    return 0;
}

static int apply_run_option(Run *run, int code, int *ranks)
{
    SpawnPlan *plan = &run->config.plan;
    ElasticOptions *e = &run->elastic_options;
    switch (code) {
    case 'n': return parse_count("-n/--ranks", optarg, 1, JOB_MAX_CLIENTS, ranks);
    case 'v': return parse_via(optarg, &plan->via);
    case 'f': plan->hostfile = optarg; return 0;
    case 'H': plan->hosts = optarg; return 0;
    case OPT_CHANNEL_ADDRESS: run->config.channel_address = optarg; return 0;
    case 't': return parse_seconds("--startup-timeout", optarg, &run->config.startup_timeout);
    case 'w': plan->worker = optarg; return 0;
    case OPT_ELASTIC: run->elastic = true; return 0;
    case OPT_MIN_RANKS:
        return parse_count("--min-ranks", optarg, 1, JOB_MAX_CLIENTS, &e->min_ranks);
    case OPT_MAX_RESTARTS:
        return parse_count("--max-restarts", optarg, 0, ELASTIC_MAX_RESTARTS, &e->max_restarts);
    case OPT_HEARTBEAT:
        return parse_seconds("--heartbeat-timeout", optarg, &e->heartbeat_timeout);
    case OPT_PER_NODE:
        return parse_count("--ranks-per-node", optarg, 1, JOB_MAX_CLIENTS, &e->ranks_per_node);
    case OPT_INJECT: run->elastic = true; return add_event(e, optarg);
    case OPT_REPORT: e->report_path = optarg; return 0;
    case OPT_FAULT_COMMAND: e->fault_command = optarg; return 0;
    case OPT_MAX_RANKS:
        return parse_count("--max-ranks", optarg, 1, JOB_MAX_CLIENTS, &e->max_ranks);
    case OPT_REJOIN_EVERY: return parse_seconds("--rejoin-every", optarg, &e->rejoin_every);
    }
    fprintf(stderr, "phalanx run: unknown option or missing value: '%s'; see "
                    "`phalanx run --help`\n", optarg && optind > 1 ? optarg : "?");
    return -1;
}

static int parse_run_options(Run *run, int argc, char **argv, bool drill)
{
    static const struct option options[] = {
        {"ranks", required_argument, NULL, 'n'},
        {"via", required_argument, NULL, 'v'},
        {"hostfile", required_argument, NULL, 'f'},
        {"hosts", required_argument, NULL, 'H'},
        {"channel-address", required_argument, NULL, OPT_CHANNEL_ADDRESS},
        {"startup-timeout", required_argument, NULL, 't'},
        {"worker", required_argument, NULL, 'w'},
        {"elastic", no_argument, NULL, OPT_ELASTIC},
        {"min-ranks", required_argument, NULL, OPT_MIN_RANKS},
        {"max-restarts", required_argument, NULL, OPT_MAX_RESTARTS},
        {"heartbeat-timeout", required_argument, NULL, OPT_HEARTBEAT},
        {"ranks-per-node", required_argument, NULL, OPT_PER_NODE},
        {"inject", required_argument, NULL, OPT_INJECT},
        {"report", required_argument, NULL, OPT_REPORT},
        {"fault-command", required_argument, NULL, OPT_FAULT_COMMAND},
        {"max-ranks", required_argument, NULL, OPT_MAX_RANKS},
        {"rejoin-every", required_argument, NULL, OPT_REJOIN_EVERY},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ranks = 0; /* not given */
    optind = 1;
    opterr = 0;
    int code;
    while ((code = getopt_long(argc, argv, "+n:h", options, NULL)) != -1) {
        if (code == 'h') {
            usage(stdout, drill);
            return 1;
        }
        if (code == '?' || code == ':') {
            fprintf(stderr, "phalanx run: unknown option or missing value: '%s'; see "
                            "`phalanx %s --help`\n", argv[optind - 1], drill ? "drill" : "run");
            return -1;
        }
        if (apply_run_option(run, code, &ranks))
            return -1;
    }
    if (ranks == 0) {
        fprintf(stderr, "phalanx run: -n N (the number of ranks, 1 to %d) is required\n",
                JOB_MAX_CLIENTS);
        return -1;
    }
    run->config.plan.ranks = ranks;
    run->config.plan.train_argc = argc - optind;
    run->config.plan.train_argv = argv + optind;
    if (drill) {
        run->elastic = true;
        if (!run->elastic_options.report_path)
            run->elastic_options.report_path = "drill-report.json";
    }
    if (run->elastic_options.report_path && !run->elastic) {
        fprintf(stderr, "phalanx run: --report needs --elastic (or phalanx drill)\n");
        return -1;
    }
    return run->elastic ? elastic_check(&run->elastic_options, run->config.plan.ranks) : 0;
}

/* The worker must exist before anything starts (locally: remote hosts are
 * covered by the start-up timeout). */
static int check_worker(const Run *run)
{
    const SpawnPlan *plan = &run->config.plan;
    if (spawn_is_multi_host(plan) || access(plan->worker, X_OK) == 0)
        return 0;
    fprintf(stderr, "phalanx run: the worker binary '%s' cannot be run: %s; build it "
                    "(scripts/build) or give --worker PATH\n",
            plan->worker, strerror(errno));
    return -1;
}

/* `phalanx run -n N -- eval ...`: the ranks run `phalanx eval`, whose options
 * are checked here. 0, 1 after eval's --help, -1 when refused. */
static int check_eval(Run *run, bool drill)
{
    SpawnPlan *plan = &run->config.plan;
    if (run->elastic) {
        fprintf(stderr, "phalanx %s: eval is not elastic (an evaluation that failed is run "
                        "again): use `phalanx run -n N -- eval ...` without --elastic, "
                        "--inject or --report\n", drill ? "drill" : "run");
        return -1;
    }
    int parsed = eval_check_launch(plan->train_argc, plan->train_argv);
    plan->command = "eval";
    plan->train_argv++;
    plan->train_argc--;
    return parsed;
}

/* The training layout, checked before any rank starts (argv[-1] is `--` or a
 * flag: reuse a name). */
static int check_train(const SpawnPlan *plan)
{
    char *train_argv[512] = {"train"};
    int train_argc = 1;
    for (int i = 0; i < plan->train_argc && train_argc < 511; i++)
        train_argv[train_argc++] = plan->train_argv[i];
    return plan_check_launch(plan->ranks, train_argc, train_argv);
}

static void set_defaults(Run *run)
{
    memset(run, 0, sizeof(*run));
    run->config.startup_timeout = 60;
    run->config.epoch = -1;
    const char *fault_command = getenv(FAULT_COMMAND_ENV);
    run->elastic_options = (ElasticOptions){
        .min_ranks = 1, .max_restarts = 3, .ranks_per_node = 1, .heartbeat_timeout = 30,
        .rejoin_every = 10,
        .fault_command = fault_command && *fault_command ? fault_command : NULL};
    static char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    self[n > 0 ? n : 0] = '\0';
    run->config.plan.worker = n > 0 ? self : "/proc/self/exe";
}

static int launch(int argc, char **argv, bool drill)
{
    static Run run;
    set_defaults(&run);
    int parsed = parse_run_options(&run, argc, argv, drill);
    if (parsed != 0)
        return parsed > 0 ? 0 : 2;
    SpawnPlan *plan = &run.config.plan;
    if (plan->train_argc > 0 && strcmp(plan->train_argv[0], "eval") == 0) {
        int eval = check_eval(&run, drill);
        if (eval != 0)
            return eval > 0 ? 0 : 2;
    }
    int check = plan->command ? 0 : check_train(plan);
    if (check != 0 || check_worker(&run))
        return check ? check : 2;
    plan->elastic = run.elastic;
    const char *slurm_job = getenv("SLURM_JOB_ID");
    bool srun = spawn_resolve_via(plan->via) == VIA_SRUN;
    fprintf(stderr, "phalanx run: starting %d rank(s) with %s%s%s%s\n", plan->ranks,
            srun ? "srun in Slurm job " : "mpirun", srun && slurm_job ? slurm_job : "",
            srun && !slurm_job ? "(no job)" : "", run.elastic ? " (elastic)" : "");
    if (run.elastic)
        return elastic_run(&run.config, &run.elastic_options);
    static Job job;
    if (job_start(&job, &run.config) != 0)
        return 1;
    job_watch(&job);
    int status = job_exit_status(&job);
    job_close(&job);
    return status;
}

int run_main(int argc, char **argv)
{
    return launch(argc, argv, false);
}

int drill_main(int argc, char **argv)
{
    return launch(argc, argv, true);
}

int probe_main(int argc, char **argv)
{
    if (argc > 1) {
        bool help = strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0;
        fprintf(help ? stdout : stderr,
                "usage: phalanx probe (no options)\n\nStarted by the elastic agent of "
                "`phalanx run` on a host it wants back: reaches the agent's channel\n"
                "($" CHANNEL_ENV "), authenticates and names this host.\n");
        return help ? 0 : 2;
    }
    char err[512];
    if (channel_probe(err, sizeof(err)) != 0) {
        fprintf(stderr, "phalanx probe: %s\n", err);
        return 1;
    }
    return 0;
}
