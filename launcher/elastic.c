/* The elastic agent (contract in elastic.h). */
#include "elastic.h"
#include "util.h"

#include "checkpoint.h"
#include "plan.h"
#include "runtime.h"

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_ATTEMPTS (ELASTIC_MAX_RESTARTS + 1)
#define MAX_TRAIN_ARGS 512
#define FAULT_COMMAND_SECONDS 30.0 /* a fault command still running then is killed */
#define MAX_POOL_HOSTS 256
#define PROBE_SECONDS 30.0 /* a probe still running then is killed: not answered */
#define PROBES_TO_HEAL 2   /* answered in a row: the host is healthy */

/* What one attempt saw, for the report. */
typedef struct {
    int world, dp, pp, sp;
    bool resumed_flag;
    double launched_at, ranks_up_at, first_step_at, resumed_at, ended_at;
    long first_step, last_step, resumed_step;
    JobFailure failure;
    int node_lost; /* -1: none removed */
    char excluded[256];
    char resumed_path[512];
    const char *cause; /* the injected host fault behind the failure, or NULL */
    char cause_host[64];
    double last_step_at; /* when rank 0 completed last_step (its throughput) */
    bool grown;          /* it ended by the agent's stop, to grow */
    /* replication of tier 1 (rank 0's committed lines): the newest memory
     * checkpoint on two hosts (0: none) and how many steps it trailed the
     * step rank 0 had completed, at most */
    long step_heard, replicated_step, replication_lag_max;
} Attempt;

/* A host the job may use (the host list's, or a Slurm node left out). */
typedef struct {
    char name[256];   /* as the host list names it; under srun, the node's name */
    char node[64];    /* the name its ranks gave in their hello, once one failed */
    char address[64]; /* their address as the channel saw it */
    int slots;
    bool failed;      /* left out of the launches until it answers probes again */
    int answers;      /* probes answered in a row */
    pid_t probe_pid;  /* a probe in flight, or 0 */
    bool probe_answered;
    double next_probe_at;
    double healthy_at; /* when it was healthy again (0: not yet) */
    char spare_why[600]; /* healthy but not used: why ("" otherwise) */
} PoolHost;

/* A grow: the attempt that stopped for it, and what made it. */
typedef struct {
    int attempt;
    char hosts[256];
    double healthy_at, stop_at;
    int world_before, world_after;
} Grow;

typedef struct {
    const ElasticOptions *options;
    JobConfig *config; /* the user's launch, changed here for each attempt */
    Job *job;          /* the attempt's */
    char **train_argv; /* the user's training options */
    int train_argc;
    double t0;
    Attempt attempts[MAX_ATTEMPTS];
    int attempt_count;
    int nodes_alive; /* of ranks_per_node ranks each (virtual nodes) */
    char excluded[1024]; /* Slurm: nodes left out, comma-separated */
    TrainPlan plan;
    const char *outcome;
    /* host faults (partition, poweroff): fired once, their commands reaped */
    bool fired[ELASTIC_MAX_EVENTS];
    double fired_at[ELASTIC_MAX_EVENTS];
    pid_t fault_pid[ELASTIC_MAX_EVENTS];
    int first_epoch; /* above any fence an earlier job left in --ckpt-dir */
    /* growing back */
    PoolHost pool[MAX_POOL_HOSTS];
    int pool_count;
    bool pool_listed; /* the pool is --hosts/--hostfile (else Slurm nodes left out) */
    int max_ranks;
    Grow grows[MAX_ATTEMPTS];
    int grow_count;
    int grow_world; /* the world asked for by a stop to grow, 0: none */
    /* the newest memory checkpoint rank 0 said is on two hosts (-1: none):
     * the survivors of one lost host still hold it, where the agent cannot look */
    long memory_committed;
} Agent;

// ----------------------------------------------------------------------------
// events (parsed by elastic_event_parse, inject.c)

int elastic_check(const ElasticOptions *o, int ranks)
{
    if (o->min_ranks > ranks) {
        fprintf(stderr, "phalanx run: --min-ranks %d is above the job's %d rank(s): the run "
                        "could never start; lower --min-ranks or raise -n\n",
                o->min_ranks, ranks);
        return -1;
    }
    if (o->max_ranks > 0 && o->max_ranks < ranks) {
        fprintf(stderr, "phalanx run: --max-ranks %d is below -n %d: the run starts with -n "
                        "ranks and grows back up to --max-ranks; raise it or lower -n\n",
                o->max_ranks, ranks);
        return -1;
    }
    if (ranks % o->ranks_per_node != 0) {
        fprintf(stderr, "phalanx run: --ranks-per-node %d does not divide -n %d: every "
                        "(virtual) node holds the same number of ranks\n",
                o->ranks_per_node, ranks);
        return -1;
    }
    for (int i = 0; i < o->event_count; i++) {
        ElasticEvent e;
        if (elastic_event_parse(o->events[i], &e) != 0) {
            fprintf(stderr, "phalanx run: --inject '%s' is not an event: crash:RANK@STEP, "
                            "hang:RANK@STEP, slow:RANK*FACTOR, node:NODE@STEP, "
                            "flushkill:RANK@STEP, corrupt:STEP, partition:HOST@STEP, "
                            "poweroff:HOST@STEP or restore:HOST@STEP (HOST: letters, digits, "
                            "'.', '-', '_'), each with an optional #ATTEMPT (default #0)\n",
                    o->events[i]);
            return -1;
        }
        if (e.host[0] && !o->fault_command) {
            fprintf(stderr, "phalanx run: --inject '%s' needs a command that makes the fault: "
                            "--fault-command CMD (or PHALANX_FAULT_COMMAND), with {kind} and "
                            "{host} in it, e.g. 'scripts/netcluster {kind} NAME {host}'\n",
                    o->events[i]);
            return -1;
        }
    }
    return 0;
}

/* The worker's environment for attempt `a`: PHALANX_FAULTS and the
 * checkpoint module's kill-during-flush hook. */
static void set_fault_env(const Agent *agent, int a)
{
    char faults[1024] = "", flush[64] = "";
    size_t used = 0;
    for (int i = 0; i < agent->options->event_count; i++) {
        ElasticEvent e;
        elastic_event_parse(agent->options->events[i], &e);
        if (e.attempt != a)
            continue;
        int first = e.who, last = e.who;
        if (strcmp(e.kind, "node") == 0) {
            first = e.who * agent->options->ranks_per_node;
            last = first + agent->options->ranks_per_node - 1;
        }
        for (int r = first; r <= last && used < sizeof(faults) - 64; r++) {
            if (strcmp(e.kind, "slow") == 0)
                used += (size_t)snprintf(faults + used, sizeof(faults) - used, "slow:%d*%g;", r,
                                         e.factor);
            else if (strcmp(e.kind, "crash") == 0 || strcmp(e.kind, "node") == 0 ||
                     strcmp(e.kind, "hang") == 0)
                used += (size_t)snprintf(faults + used, sizeof(faults) - used, "%s:%d@%ld;",
                                         strcmp(e.kind, "hang") ? "crash" : "hang", r, e.step);
        }
        if (strcmp(e.kind, "flushkill") == 0)
            snprintf(flush, sizeof(flush), "%ld@%d", e.step, e.who);
    }
    setenv(FAULT_ENV, faults, 1);
    setenv("PHALANX_FAULT_KILL_DURING_FLUSH", flush, 1);
}

/* corrupt:S events of attempt `a`: one flipped byte in the middle of the
 * step-S checkpoint's rank-0 shard, in every tier that has it. */
static void corrupt_shards(const Agent *agent, int a)
{
    for (int i = 0; i < agent->options->event_count; i++) {
        ElasticEvent e;
        elastic_event_parse(agent->options->events[i], &e);
        if (e.attempt != a || strcmp(e.kind, "corrupt") != 0 || !agent->plan.ckpt_dir[0])
            continue;
        CkptOptions ck = {.dir = agent->plan.ckpt_dir, .memory_dir = agent->plan.ckpt_memory_dir};
        char tiers[2][4096], shard[8300];
        ckpt_tier_dirs(&ck, tiers[0], sizeof(tiers[0]), tiers[1], sizeof(tiers[1]));
        // the step's directory of each earlier attempt (its epoch), in each tier
        for (int k = 0; k < 2 * a; k++) {
            int t = k % 2, epoch = agent->first_epoch + k / 2;
            char step_dir[4200];
            ckpt_step_dir(step_dir, sizeof(step_dir), tiers[t], e.step, epoch);
            snprintf(shard, sizeof(shard), "%s/rank_00000.h5", step_dir);
            int fd = tiers[t][0] ? open(shard, O_RDWR) : -1;
            struct stat st;
            if (fd < 0 || fstat(fd, &st) != 0) {
                if (fd >= 0)
                    close(fd);
                continue;
            }
            unsigned char byte = 0;
            off_t middle = st.st_size / 2;
            if (pread(fd, &byte, 1, middle) == 1) {
                byte ^= 0xFF;
                if (pwrite(fd, &byte, 1, middle) == 1)
                    fprintf(stderr, "phalanx drill: corrupted one byte of %s\n", shard);
            }
            close(fd);
        }
    }
}

/* The fault command with {kind} and {host} filled in; -1 when too long. */
static int fault_command_text(const char *format, const ElasticEvent *e, char *out, size_t len)
{
    size_t used = 0;
    for (const char *p = format; *p;) {
        const char *value = strncmp(p, "{kind}", 6) == 0 ? e->kind
                            : strncmp(p, "{host}", 6) == 0 ? e->host : NULL;
        size_t n = value ? strlen(value) : 1;
        if (used + n >= len)
            return -1;
        memcpy(out + used, value ? value : p, n);
        used += n;
        p += value ? 6 : 1;
    }
    out[used] = '\0';
    return 0;
}

/* Asks for host fault i (the agent cannot make a network fault itself): its
 * command runs in the background, in a process group of its own. */
static void fire_host_fault(Agent *agent, int i, const ElasticEvent *e, long step)
{
    char command[4096];
    agent->fired[i] = true;
    agent->fired_at[i] = util_now_seconds();
    if (fault_command_text(agent->options->fault_command, e, command, sizeof(command)) != 0) {
        fprintf(stderr, "phalanx drill: --fault-command is too long; %s of %s not made\n",
                e->kind, e->host);
        return;
    }
    fprintf(stderr, "phalanx drill: %s of host %s after step %ld: %s\n", e->kind, e->host,
            step, command);
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        execl("/bin/sh", "sh", "-c", command, (char *)NULL);
        _exit(127);
    }
    agent->fault_pid[i] = pid > 0 ? pid : 0;
}

/* What restores `host`: the opposite of the last fault fired on it (netcluster
 * names them heal and poweron), else "restore" for the command to decide. */
static const char *restore_kind(const Agent *agent, const char *host)
{
    const char *kind = "restore";
    double latest = -1;
    for (int i = 0; i < agent->options->event_count; i++) {
        ElasticEvent e;
        elastic_event_parse(agent->options->events[i], &e);
        if (!agent->fired[i] || strcmp(e.host, host) != 0 || agent->fired_at[i] < latest ||
            strcmp(e.kind, "restore") == 0)
            continue;
        latest = agent->fired_at[i];
        kind = strcmp(e.kind, "partition") == 0 ? "heal" : "poweron";
    }
    return kind;
}

/* Rank 0 completed `step`: host faults of this attempt that are due, and
 * restores of this attempt or an earlier one (a restore comes after the
 * recovery from the fault it undoes). */
static void fire_due_host_faults(Agent *agent, long step)
{
    int current = agent->attempt_count - 1;
    for (int i = 0; i < agent->options->event_count; i++) {
        ElasticEvent e;
        elastic_event_parse(agent->options->events[i], &e);
        bool restore = strcmp(e.kind, "restore") == 0;
        if (!e.host[0] || agent->fired[i] || step < e.step ||
            (restore ? e.attempt > current : e.attempt != current))
            continue;
        if (restore)
            snprintf(e.kind, sizeof(e.kind), "%s", restore_kind(agent, e.host));
        fire_host_fault(agent, i, &e, step);
    }
}

/* Waits for the fault commands (bounded: a stuck one is killed). */
static void reap_fault_commands(Agent *agent)
{
    for (int i = 0; i < agent->options->event_count; i++) {
        pid_t pid = agent->fault_pid[i];
        int status = 0;
        double deadline = util_now_seconds() + FAULT_COMMAND_SECONDS;
        while (pid > 0 && waitpid(pid, &status, WNOHANG) == 0) {
            if (util_now_seconds() > deadline) {
                kill(-pid, SIGKILL);
                waitpid(pid, &status, 0);
                break;
            }
            usleep(20000);
        }
        if (pid > 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            fprintf(stderr, "phalanx drill: the fault command of '%s' failed (status %d)\n",
                    agent->options->events[i], WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        agent->fault_pid[i] = 0;
    }
}

/* A host fault of this attempt on the failed rank's host (by name or address). */
static void attribute_failure(Agent *agent, Attempt *a)
{
    for (int i = 0; i < agent->options->event_count && a->failure.kind != FAILURE_NONE; i++) {
        ElasticEvent e;
        elastic_event_parse(agent->options->events[i], &e);
        if (!agent->fired[i] || e.attempt != agent->attempt_count - 1 ||
            strcmp(e.kind, "restore") == 0 ||
            (strcmp(e.host, a->failure.node) != 0 && strcmp(e.host, a->failure.address) != 0))
            continue;
        a->cause = strcmp(e.kind, "partition") == 0 ? "partition" : "poweroff";
        snprintf(a->cause_host, sizeof(a->cause_host), "%s", e.host);
        if (a->failure.fault_at == 0)
            a->failure.fault_at = agent->fired_at[i];
    }
}

// ----------------------------------------------------------------------------
// planning an attempt

/* The newest checkpoint a relaunch can resume: the agent's own view of the
 * tiers, or a replicated memory checkpoint the ranks reported (-1: none). */
static long newest_checkpoint(const Agent *agent)
{
    const TrainPlan *plan = &agent->plan;
    CkptOptions ck = {.dir = plan->ckpt_dir, .memory_dir = plan->ckpt_memory_dir};
    long seen = plan->ckpt_dir[0] ? (long)ckpt_newest_complete(&ck) : -1;
    return seen > agent->memory_committed ? seen : agent->memory_committed;
}

/* The largest world of at most `alive` ranks (down to min_ranks) with a layout
 * that keeps the run; the first attempt keeps the user's layout. */
static int plan_world(Agent *agent, int alive, int prefer_pp, int prefer_sp, char *why,
                      size_t why_len)
{
    why[0] = '\0';
    // options are parsed as a command line: a program name first
    char *argv[MAX_TRAIN_ARGS + 1] = {"train"};
    int argc = 1;
    for (int i = 0; i < agent->train_argc && argc < MAX_TRAIN_ARGS; i++)
        argv[argc++] = agent->train_argv[i];
    for (int world = alive; world >= agent->options->min_ranks && world >= 1; world--) {
        char err[2048];
        if (plan_launch(world, prefer_pp, prefer_sp, argc, argv, &agent->plan, err,
                        sizeof(err)) == 0)
            return world;
        if (!why[0])
            snprintf(why, why_len, "%d rank(s): %.1900s", world, err);
    }
    return -1;
}

/* argv of attempt `a`: the user's options, then --layout (and --resume latest). */
static void build_argv(Agent *agent, Attempt *attempt, char **argv, char *layout, size_t len)
{
    int n = 0;
    for (int i = 0; i < agent->train_argc && n < MAX_TRAIN_ARGS - 6; i++)
        argv[n++] = agent->train_argv[i];
    snprintf(layout, len, "%dx%dx%d", attempt->dp, attempt->pp, attempt->sp);
    argv[n++] = "--layout";
    argv[n++] = layout;
    attempt->resumed_flag = agent->attempt_count > 1 && newest_checkpoint(agent) >= 0;
    if (attempt->resumed_flag) {
        argv[n++] = "--resume";
        argv[n++] = "latest";
    }
    // a relaunch continues the metrics of this job's earlier attempts (the
    // report drops rows a later attempt recomputed); a fresh run would refuse them
    if (agent->attempt_count > 1)
        argv[n++] = "--metrics-append";
    argv[n] = NULL;
    agent->config->plan.train_argv = argv;
    agent->config->plan.train_argc = n;
}

// ----------------------------------------------------------------------------
// the host pool: hosts left out, their probes, growing back

/* The hosts of --hosts/--hostfile ("name[:slots]"); under srun none yet. */
static void pool_init(Agent *agent)
{
    SpawnPlan all = agent->config->plan;
    all.exclude = NULL;
    char hosts[4096];
    agent->pool_listed = (all.hosts || all.hostfile) &&
                         spawn_resolve_via(all.via) == VIA_MPIRUN &&
                         spawn_filtered_hosts(&all, hosts, sizeof(hosts)) > 0;
    for (const char *h = hosts; agent->pool_listed && *h && agent->pool_count < MAX_POOL_HOSTS;) {
        size_t item = strcspn(h, ","), name = strcspn(h, ":,");
        PoolHost *p = &agent->pool[agent->pool_count++];
        snprintf(p->name, sizeof(p->name), "%.*s", (int)(name < 255 ? name : 255), h);
        p->slots = name < item ? atoi(h + name + 1) : 1;
        h += item + (h[item] == ',');
    }
}

/* The pool's host that a rank or a probe with this node name and address
 * is on, or NULL. */
static PoolHost *pool_find(Agent *agent, const char *node, const char *address)
{
    for (int i = 0; i < agent->pool_count; i++) {
        PoolHost *p = &agent->pool[i];
        if (strcmp(p->name, address) == 0 || strcmp(p->name, node) == 0 ||
            (p->node[0] && strcmp(p->node, node) == 0) ||
            (p->address[0] && strcmp(p->address, address) == 0))
            return p;
    }
    return NULL;
}

/* mpirun's hosts left out (and srun's --exclude): every failed host by its
 * list name, and by the node name its ranks gave. */
static void pool_write_excluded(Agent *agent)
{
    size_t used = 0;
    agent->excluded[0] = '\0';
    for (int i = 0; i < agent->pool_count; i++) {
        const PoolHost *p = &agent->pool[i];
        if (!p->failed)
            continue;
        used += (size_t)snprintf(agent->excluded + used, sizeof(agent->excluded) - used, "%s%s",
                                 used ? "," : "", p->name);
        if (p->node[0] && strcmp(p->node, p->name) != 0 && used < sizeof(agent->excluded))
            used += (size_t)snprintf(agent->excluded + used, sizeof(agent->excluded) - used,
                                     ",%s", p->node);
        if (used >= sizeof(agent->excluded))
            break;
    }
}

/* The failed rank's host leaves the launches and is probed from now on. */
static void pool_fail(Agent *agent, const JobFailure *f)
{
    PoolHost *p = pool_find(agent, f->node, f->address);
    if (!p && agent->pool_count < MAX_POOL_HOSTS) {
        // not listed (a Slurm node): known by its node name, or by its address
        // where a host list names hosts by address (a loopback one names none)
        p = &agent->pool[agent->pool_count++];
        memset(p, 0, sizeof(*p));
        bool by_address = agent->pool_listed && f->address[0] &&
                          strncmp(f->address, "127.", 4) != 0;
        snprintf(p->name, sizeof(p->name), "%s", by_address ? f->address : f->node);
        p->slots = agent->options->ranks_per_node;
    }
    if (!p)
        return;
    snprintf(p->node, sizeof(p->node), "%s", f->node);
    if (strncmp(f->address, "127.", 4) != 0)
        snprintf(p->address, sizeof(p->address), "%s", f->address);
    p->failed = true;
    p->answers = 0;
    p->healthy_at = 0;
    p->spare_why[0] = '\0';
    p->next_probe_at = util_now_seconds() + agent->options->rejoin_every;
    pool_write_excluded(agent);
}

/* The ranks the hosts not left out hold, up to max_ranks (`plus`: a host
 * counted as if it were back). Without a host list (srun), the nodes alive. */
static int pool_capacity(const Agent *agent, const PoolHost *plus)
{
    int slots = agent->pool_listed ? 0 : agent->nodes_alive * agent->options->ranks_per_node;
    for (int i = 0; i < agent->pool_count; i++)
        if ((agent->pool_listed && !agent->pool[i].failed) || &agent->pool[i] == plus)
            slots += agent->pool[i].slots;
    return slots < agent->max_ranks ? slots : agent->max_ranks;
}

/* A probe in flight that answered: this host. */
static void on_probe(void *context, const char *node, const char *address, double at)
{
    Agent *agent = context;
    PoolHost *p = pool_find(agent, node, address);
    (void)at;
    if (p && p->probe_pid > 0)
        p->probe_answered = true;
}

static void probe_start(Agent *agent, PoolHost *p, double now)
{
    char err[256];
    p->probe_answered = false;
    p->next_probe_at = now + agent->options->rejoin_every;
    p->probe_pid = spawn_probe(&agent->config->plan, p->name, err, sizeof(err));
    if (p->probe_pid < 0) {
        fprintf(stderr, "phalanx run: cannot probe host %s: %s\n", p->name, err);
        p->probe_pid = 0;
    }
}

/* A probe that has ended (or run too long: killed) counts: answered or not. */
static void probe_finish(PoolHost *p, double now, double started_before)
{
    int status;
    bool ended = waitpid(p->probe_pid, &status, WNOHANG) == p->probe_pid;
    if (!ended && now - started_before < PROBE_SECONDS)
        return;
    if (!ended) {
        kill(-p->probe_pid, SIGKILL);
        waitpid(p->probe_pid, &status, 0);
    }
    p->probe_pid = 0;
    if (!p->probe_answered) {
        if (p->answers > 0)
            fprintf(stderr, "phalanx run: host %s stopped answering probes; it stays left "
                            "out\n", p->name);
        p->answers = 0;
        p->healthy_at = 0;
        return;
    }
    if (++p->answers == PROBES_TO_HEAL) {
        p->healthy_at = now;
        fprintf(stderr, "phalanx run: host %s answered %d probes in a row: healthy again\n",
                p->name, PROBES_TO_HEAL);
    }
}

/* Probes of the hosts left out die with the attempt's channel: not counted. */
static void probes_cancel(Agent *agent)
{
    for (int i = 0; i < agent->pool_count; i++) {
        PoolHost *p = &agent->pool[i];
        if (p->probe_pid <= 0)
            continue;
        kill(-p->probe_pid, SIGKILL);
        waitpid(p->probe_pid, NULL, 0);
        p->probe_pid = 0;
        p->next_probe_at = 0;
    }
}

/* Healthy hosts come back: a stop to grow when they make a larger world
 * with a valid layout, else they stay spares (the report says why). */
static void consider_grow(Agent *agent, double now)
{
    Job *job = agent->job;
    const Attempt *a = &agent->attempts[agent->attempt_count - 1];
    if (job->stop_requested || job->stop_signal || job->failure.kind != FAILURE_NONE ||
        !job->ready)
        return;
    for (int i = 0; i < agent->pool_count; i++) {
        PoolHost *p = &agent->pool[i];
        if (!p->failed || p->healthy_at == 0)
            continue;
        int target = pool_capacity(agent, p);
        char why[2048];
        int world = target > a->world ? plan_world(agent, target, agent->attempts[0].pp,
                                                   agent->attempts[0].sp, why, sizeof(why))
                                      : -1;
        p->failed = false; /* back in the host list: in the next launch, or a spare */
        pool_write_excluded(agent);
        if (world > a->world) {
            Grow *g = &agent->grows[agent->grow_count++];
            *g = (Grow){.attempt = agent->attempt_count - 1, .healthy_at = p->healthy_at,
                        .stop_at = now, .world_before = a->world, .world_after = world};
            snprintf(g->hosts, sizeof(g->hosts), "%s", p->name);
            agent->grow_world = world;
            agent->nodes_alive += p->slots / agent->options->ranks_per_node;
            fprintf(stderr, "phalanx run: growing from %d to %d rank(s) with host %s: the "
                            "ranks stop after their current step (its checkpoint committed)\n",
                    a->world, world, p->name);
            job_request_stop(job);
            return;
        }
        agent->nodes_alive += p->slots / agent->options->ranks_per_node;
        if (target <= a->world)
            snprintf(p->spare_why, sizeof(p->spare_why), "the run has %d rank(s), at "
                     "--max-ranks %d", a->world, agent->max_ranks);
        else
            snprintf(p->spare_why, sizeof(p->spare_why), "no layout of %d to %d rank(s) keeps "
                     "this run: %.500s", a->world + 1, target, why);
        fprintf(stderr, "phalanx run: host %s is healthy again and kept as a spare: %s\n",
                p->name, p->spare_why);
    }
}

/* Between polls of the job: probes due, probes ended, a grow. */
static void on_tick(void *context, double now)
{
    Agent *agent = context;
    for (int i = 0; i < agent->pool_count; i++) {
        PoolHost *p = &agent->pool[i];
        if (!p->failed)
            continue;
        if (p->probe_pid > 0)
            probe_finish(p, now, p->next_probe_at - agent->options->rejoin_every);
        else if (now >= p->next_probe_at)
            probe_start(agent, p, now);
    }
    consider_grow(agent, now);
}

// ----------------------------------------------------------------------------
// the timeline

static const char *resumed_tier(const Agent *agent, const char *path);

/* The fence goes up before a launch (checkpoint.h, "Fencing"): from then on
 * whatever a rank of an earlier attempt still alive (a partitioned host)
 * commits beyond the newest valid step of now is invalid, whenever it
 * lands. */
static int raise_fence(const Agent *agent, int epoch)
{
    if (!agent->plan.ckpt_dir[0])
        return 0;
    char err[PATH_MAX + 512];
    if (ckpt_fence_raise(agent->plan.ckpt_dir, epoch, newest_checkpoint(agent), err,
                         sizeof(err)) == 0)
        return 0;
    fprintf(stderr, "phalanx run: cannot fence off earlier attempts: %s\n", err);
    return -1;
}

static void on_job_event(void *context, const char *event, long step, double at)
{
    Agent *agent = context;
    Attempt *a = &agent->attempts[agent->attempt_count - 1];
    if (strcmp(event, "ranks_up") == 0) {
        a->ranks_up_at = at;
    } else if (strcmp(event, "first_step") == 0) {
        a->first_step_at = at;
        a->first_step = step;
    } else if (strcmp(event, "step") == 0) {
        a->last_step_at = at;
        a->step_heard = step;
        fire_due_host_faults(agent, step);
    } else if (strcmp(event, "committed") == 0) {
        if (step > agent->memory_committed)
            agent->memory_committed = step;
        a->replicated_step = step;
        if (a->step_heard - step > a->replication_lag_max)
            a->replication_lag_max = a->step_heard - step;
    } else if (strcmp(event, "resumed") == 0) {
        a->resumed_at = at;
        a->resumed_step = step;
        fprintf(stderr, "phalanx run: attempt %d resumed step %ld from the %s tier (%s)\n",
                agent->attempt_count - 1, step, resumed_tier(agent, agent->job->resumed_path),
                agent->job->resumed_path);
    }
}

static const char *failure_name(FailureKind kind)
{
    static const char *const names[] = {"none", "crash", "hang", "exit", "unreachable"};
    return names[kind];
}

static void print_failure(const Agent *agent, const Attempt *a)
{
    const JobFailure *f = &a->failure;
    char who[128] = "an unknown rank";
    if (f->rank >= 0)
        snprintf(who, sizeof(who), "rank %d (node %s)", f->rank, f->node[0] ? f->node : "?");
    fprintf(stderr, "phalanx run: %s of %s detected (%s) %.2f s after launch, after step %ld%s%s\n",
            failure_name(f->kind), who, f->how ? f->how : "", f->detected_at - a->launched_at,
            a->last_step, a->cause ? "; injected: " : "", a->cause ? a->cause : "");
    (void)agent;
}

/* Removes the failed rank's node; returns the ranks still alive. */
static int remove_failed_node(Agent *agent, Attempt *a)
{
    int per_node = agent->options->ranks_per_node;
    a->node_lost = -1;
    if (a->failure.rank < 0)
        return agent->nodes_alive * per_node; /* nobody to blame: same size again */
    a->node_lost = a->failure.rank / per_node;
    agent->nodes_alive--;
    // real hosts (srun, or mpirun across hosts) are left out of the relaunch;
    // mpirun's hosts may be named by address (what the channel saw)
    if (spawn_is_multi_host(&agent->config->plan) && a->failure.node[0])
        pool_fail(agent, &a->failure);
    return agent->nodes_alive * per_node;
}

// ----------------------------------------------------------------------------
// the report

typedef struct {
    long steps;
    long long consumed, lost, duplicated;
} SampleAccount;

/* The committed trajectory: rows in file order, a row for step s replacing
 * every row from s on (a recomputed step after a resume). */
static int account_samples(const char *metrics, SampleAccount *acc)
{
    memset(acc, 0, sizeof(*acc));
    FILE *f = metrics[0] ? fopen(metrics, "r") : NULL;
    if (!f)
        return -1;
    long long *ends = NULL, *starts = NULL;
    long cap = 0, count = 0;
    char line[8192];
    while (fgets(line, sizeof(line), f)) {
        long step;
        long long samples;
        int batch;
        const char *s = strstr(line, "\"step\": "), *c = strstr(line, "\"samples\": "),
                   *b = strstr(line, "\"global_batch\": ");
        if (!s || !c || !b || sscanf(s + 8, "%ld", &step) != 1 ||
            sscanf(c + 11, "%lld", &samples) != 1 || sscanf(b + 16, "%d", &batch) != 1 ||
            step < 1)
            continue;
        if (step > cap) {
            long grown = step * 2;
            long long *e = realloc(ends, (size_t)grown * sizeof(*ends));
            long long *b2 = e ? realloc(starts, (size_t)grown * sizeof(*starts)) : NULL;
            ends = e ? e : ends;
            if (!b2) {
                count = -1; /* out of memory: no account */
                break;
            }
            starts = b2;
            cap = grown;
        }
        count = step; /* drops later rows: the resumed run replaced them */
        ends[step - 1] = samples;
        starts[step - 1] = samples - batch;
    }
    fclose(f);
    if (count < 0) {
        free(ends);
        free(starts);
        return -1;
    }
    acc->steps = count;
    long long cursor = 0;
    for (long i = 0; i < count; i++) {
        if (starts[i] > cursor)
            acc->lost += starts[i] - cursor;
        if (starts[i] < cursor)
            acc->duplicated += cursor - starts[i];
        cursor = ends[i];
    }
    acc->consumed = cursor;
    free(ends);
    free(starts);
    return 0;
}

/* A JSON string: names and paths come from ranks and users. */
static void write_json_text(FILE *out, const char *text)
{
    fputc('"', out);
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(out, "\\%c", *c);
        else if (*c < 0x20)
            fprintf(out, "\\u%04x", *c);
        else
            fputc(*c, out);
    }
    fputc('"', out);
}

/* Which tier a resumed checkpoint came from: "memory" (tier 1), "durable". */
static const char *resumed_tier(const Agent *agent, const char *path)
{
    CkptOptions ck = {.dir = agent->plan.ckpt_dir, .memory_dir = agent->plan.ckpt_memory_dir};
    char tiers[2][4096];
    ckpt_tier_dirs(&ck, tiers[0], sizeof(tiers[0]), tiers[1], sizeof(tiers[1]));
    size_t memory = strlen(tiers[0]);
    return memory && strncmp(path, tiers[0], memory) == 0 && path[memory] == '/' ? "memory"
                                                                                 : "durable";
}

/* Rank 0's steps per second in an attempt, from its first step to its last
 * (0 when it made fewer than two). */
static double steps_per_second(const Attempt *a)
{
    double seconds = a->last_step_at - a->first_step_at;
    return a->last_step > a->first_step && seconds > 0
               ? (double)(a->last_step - a->first_step) / seconds
               : 0;
}

static void write_attempt(FILE *out, const Agent *agent, int i)
{
    const Attempt *a = &agent->attempts[i];
    double t0 = agent->t0;
    fprintf(out, "    {\"attempt\": %d, \"world\": %d, \"layout\": \"%dx%dx%d\", "
                 "\"resume\": %s, \"launched_s\": %.3f",
            i, a->world, a->dp, a->pp, a->sp, a->resumed_flag ? "true" : "false",
            a->launched_at - t0);
    if (a->ranks_up_at > 0)
        fprintf(out, ", \"ranks_up_s\": %.3f", a->ranks_up_at - t0);
    if (a->resumed_at > 0) {
        fprintf(out, ", \"ckpt_loaded_s\": %.3f, \"resumed_step\": %ld, \"resumed_tier\": \"%s\", "
                     "\"resumed_from\": ", a->resumed_at - t0, a->resumed_step,
                resumed_tier(agent, a->resumed_path));
        write_json_text(out, a->resumed_path);
    }
    if (a->first_step_at > 0)
        fprintf(out, ", \"first_step_s\": %.3f, \"first_step\": %ld", a->first_step_at - t0,
                a->first_step);
    fprintf(out, ", \"last_step\": %ld, \"ended_s\": %.3f", a->last_step, a->ended_at - t0);
    double rate = steps_per_second(a);
    if (rate > 0)
        fprintf(out, ", \"steps_per_s\": %.3f", rate);
    if (a->grown)
        fprintf(out, ", \"ended_by\": \"grow\"");
    if (a->replicated_step > 0)
        fprintf(out, ", \"replicated_step\": %ld, \"replication_lag_max\": %ld",
                a->replicated_step, a->replication_lag_max);
    const JobFailure *f = &a->failure;
    if (f->kind != FAILURE_NONE) {
        fprintf(out, ", \"failure\": {\"kind\": \"%s\", \"rank\": %d, \"node\": ",
                failure_name(f->kind), f->rank);
        write_json_text(out, f->node);
        fprintf(out, ", \"address\": ");
        write_json_text(out, f->address);
        fprintf(out, ", \"how\": \"%s\", \"detected_s\": %.3f", f->how ? f->how : "",
                f->detected_at - t0);
        if (a->cause) {
            fprintf(out, ", \"cause\": \"%s\", \"host\": ", a->cause);
            write_json_text(out, a->cause_host);
        }
        if (f->fault_at > 0)
            fprintf(out, ", \"fault_s\": %.3f", f->fault_at - t0);
        fprintf(out, ", \"node_removed\": %d}", a->node_lost);
    }
    fprintf(out, "}%s\n", i + 1 < agent->attempt_count ? "," : "");
}

/* Per failure: detection, teardown, relaunch, load and first step, MTTR. */
static void write_recoveries(FILE *out, const Agent *agent)
{
    bool first = true;
    for (int i = 0; i + 1 < agent->attempt_count; i++) {
        const Attempt *a = &agent->attempts[i], *next = &agent->attempts[i + 1];
        const JobFailure *f = &a->failure;
        if (f->kind == FAILURE_NONE)
            continue; /* a grow (write_grows) */
        double failed = f->fault_at > 0 ? f->fault_at : f->detected_at;
        long resumed = next->resumed_at > 0 ? next->resumed_step : 0;
        fprintf(out, "%s    {\"attempt\": %d, \"kind\": \"%s\", \"rank\": %d, \"detect_s\": %.3f, "
                     "\"teardown_s\": %.3f, \"relaunch_s\": %.3f",
                first ? "" : ",\n", i, failure_name(f->kind), f->rank, f->detected_at - failed,
                a->ended_at - f->detected_at, next->launched_at - a->ended_at);
        // relaunch -> ranks up (processes, MPI) -> checkpoint loaded -> first step
        if (next->ranks_up_at > 0)
            fprintf(out, ", \"startup_s\": %.3f", next->ranks_up_at - next->launched_at);
        if (next->resumed_at > 0 && next->ranks_up_at > 0)
            fprintf(out, ", \"ckpt_load_s\": %.3f", next->resumed_at - next->ranks_up_at);
        if (next->first_step_at > 0)
            fprintf(out, ", \"mttr_s\": %.3f", next->first_step_at - failed);
        long recomputed = a->last_step - resumed;
        fprintf(out, ", \"last_step_before\": %ld, \"resumed_step\": %ld, \"steps_recomputed\": %ld}",
                a->last_step, resumed, recomputed > 0 ? recomputed : 0);
        first = false;
    }
    fprintf(out, "\n");
}

/* The steps per second of the attempt before the first failure, of the one
 * a grow stopped (on the survivors), and of the one after it. */
static void write_throughput(FILE *out, const Agent *agent, const Grow *g)
{
    int before = 0;
    while (before + 1 < agent->attempt_count &&
           agent->attempts[before].failure.kind == FAILURE_NONE)
        before++;
    double rates[3] = {steps_per_second(&agent->attempts[before]),
                       steps_per_second(&agent->attempts[g->attempt]),
                       g->attempt + 1 < agent->attempt_count
                           ? steps_per_second(&agent->attempts[g->attempt + 1]) : 0};
    const char *names[3] = {"before_loss", "survivors", "after_grow"};
    fprintf(out, ", \"steps_per_s\": {");
    for (int k = 0; k < 3; k++)
        fprintf(out, "%s\"%s\": %.3f", k ? ", " : "", names[k], rates[k]);
    fprintf(out, "}");
}

/* Per grow: host healthy, stop began, first step in the larger layout. */
static void write_grows(FILE *out, const Agent *agent)
{
    for (int i = 0; i < agent->grow_count; i++) {
        const Grow *g = &agent->grows[i];
        const Attempt *a = &agent->attempts[g->attempt];
        const Attempt *next = g->attempt + 1 < agent->attempt_count
                                  ? &agent->attempts[g->attempt + 1] : NULL;
        fprintf(out, "%s    {\"attempt\": %d, \"hosts\": ", i ? ",\n" : "", g->attempt);
        write_json_text(out, g->hosts);
        fprintf(out, ", \"world_before\": %d, \"world_after\": %d, \"healthy_s\": %.3f, "
                     "\"stop_s\": %.3f, \"stopped_after_step\": %ld",
                g->world_before, g->world_after, g->healthy_at - agent->t0,
                g->stop_at - agent->t0, a->last_step);
        if (next && next->first_step_at > 0) {
            long resumed = next->resumed_at > 0 ? next->resumed_step : 0;
            long recomputed = a->last_step - resumed;
            fprintf(out, ", \"layout_after\": \"%dx%dx%d\", \"first_step_after\": %ld, "
                         "\"first_step_after_s\": %.3f, \"grow_s\": %.3f, "
                         "\"steps_recomputed\": %ld",
                    next->dp, next->pp, next->sp, next->first_step,
                    next->first_step_at - agent->t0, next->first_step_at - g->healthy_at,
                    recomputed > 0 ? recomputed : 0);
        }
        write_throughput(out, agent, g);
        fprintf(out, "}");
    }
    fprintf(out, "\n");
}

/* Healthy hosts not used, and why. */
static void write_spares(FILE *out, const Agent *agent)
{
    bool first = true;
    for (int i = 0; i < agent->pool_count; i++) {
        const PoolHost *p = &agent->pool[i];
        if (!p->spare_why[0])
            continue;
        fprintf(out, "%s    {\"host\": ", first ? "" : ",\n");
        write_json_text(out, p->name);
        fprintf(out, ", \"why\": ");
        write_json_text(out, p->spare_why);
        fprintf(out, "}");
        first = false;
    }
    fprintf(out, "\n");
}

static void write_report(const Agent *agent, int status)
{
    const char *path = agent->options->report_path;
    if (!path)
        return;
    FILE *out = fopen(path, "w");
    if (!out) {
        fprintf(stderr, "phalanx run: --report: cannot write '%s': %s\n", path, strerror(errno));
        return;
    }
    fprintf(out, "{\n  \"outcome\": \"%s\", \"exit_status\": %d, \"restarts\": %d,\n",
            agent->outcome, status, agent->attempt_count - 1 - agent->grow_count);
    fprintf(out, "  \"min_ranks\": %d, \"max_ranks\": %d, \"ranks_per_node\": %d, "
                 "\"heartbeat_timeout_s\": %g, \"rejoin_every_s\": %g,\n",
            agent->options->min_ranks, agent->max_ranks, agent->options->ranks_per_node,
            agent->options->heartbeat_timeout, agent->options->rejoin_every);
    fprintf(out, "  \"injected\": [");
    for (int i = 0; i < agent->options->event_count; i++)
        fprintf(out, "%s\"%s\"", i ? ", " : "", agent->options->events[i]);
    fprintf(out, "],\n  \"attempts\": [\n");
    for (int i = 0; i < agent->attempt_count; i++)
        write_attempt(out, agent, i);
    fprintf(out, "  ],\n  \"recoveries\": [\n");
    write_recoveries(out, agent);
    fprintf(out, "  ],\n  \"grows\": [\n");
    write_grows(out, agent);
    fprintf(out, "  ],\n  \"spares\": [\n");
    write_spares(out, agent);
    fprintf(out, "  ]");
    SampleAccount acc;
    if (account_samples(agent->plan.metrics, &acc) == 0)
        fprintf(out, ",\n  \"samples\": {\"metrics\": \"%s\", \"committed_steps\": %ld, "
                     "\"consumed\": %lld, \"lost\": %lld, \"duplicated\": %lld}",
                agent->plan.metrics, acc.steps, acc.consumed, acc.lost, acc.duplicated);
    fprintf(out, "\n}\n");
    fclose(out);
    fprintf(stderr, "phalanx run: drill report in %s\n", path);
}

// ----------------------------------------------------------------------------
// the loop

static int run_attempt(Agent *agent, int world)
{
    Job *job = agent->job;
    Attempt *a = &agent->attempts[agent->attempt_count++];
    memset(a, 0, sizeof(*a));
    a->world = world;
    a->dp = agent->plan.dp;
    a->pp = agent->plan.pp;
    a->sp = agent->plan.sp;
    static char *argv[MAX_TRAIN_ARGS]; /* config->plan points here until the next attempt */
    static char layout[64];
    build_argv(agent, a, argv, layout, sizeof(layout));
    int index = agent->attempt_count - 1;
    corrupt_shards(agent, index);
    set_fault_env(agent, index);
    JobConfig *config = agent->config;
    config->plan.ranks = world;
    config->plan.exclude = agent->excluded[0] ? agent->excluded : NULL;
    config->plan.ranks_per_node = agent->options->ranks_per_node;
    fprintf(stderr, "phalanx run: attempt %d: %d rank(s), layout %s%s\n", index, world, layout,
            a->resumed_flag ? ", resuming from the newest checkpoint" : "");
    config->epoch = agent->first_epoch + index;
    if (raise_fence(agent, config->epoch) != 0)
        return -1;
    a->launched_at = util_now_seconds();
    if (job_start(job, config) != 0)
        return -1;
    job_watch(job);
    a->ended_at = util_now_seconds();
    reap_fault_commands(agent);
    a->failure = job->failure;
    snprintf(a->resumed_path, sizeof(a->resumed_path), "%s", job->resumed_path);
    attribute_failure(agent, a);
    a->first_step = job->first_step;
    a->last_step = job->last_step;
    probes_cancel(agent);
    return 0;
}

/* After an attempt that ended without a failure: the larger world of a grow
 * it stopped for, or 0 (it completed, or was stopped by the user). */
static int grown_world(Agent *agent)
{
    Attempt *a = &agent->attempts[agent->attempt_count - 1];
    const Job *job = agent->job;
    int world = agent->grow_world;
    agent->grow_world = 0;
    if (world == 0)
        return 0;
    if (!job->stop_requested || job->stop_signal || job_code(job) == 0) {
        agent->grow_count--; /* it finished (or was stopped) before the stop to grow */
        return 0;
    }
    a->grown = true;
    char why[2048];
    int planned = plan_world(agent, world, agent->attempts[0].pp, agent->attempts[0].sp, why,
                             sizeof(why));
    return planned == world ? world : 0;
}

/* After a failed attempt: the world of the next one, or an exit status. */
static int next_world(Agent *agent, int *status)
{
    Attempt *a = &agent->attempts[agent->attempt_count - 1];
    print_failure(agent, a);
    int alive = remove_failed_node(agent, a);
    if (agent->attempt_count - agent->grow_count > agent->options->max_restarts) {
        fprintf(stderr, "phalanx run: giving up: --max-restarts %d used up; the newest complete "
                        "checkpoint in %s is intact\n",
                agent->options->max_restarts,
                agent->plan.ckpt_dir[0] ? agent->plan.ckpt_dir : "(no --ckpt-dir)");
        agent->outcome = "restarts used up";
        *status = EXIT_RESTARTS_USED_UP;
        return -1;
    }
    if (alive < agent->options->min_ranks) {
        fprintf(stderr, "phalanx run: giving up: %d rank(s) left, below --min-ranks %d; the "
                        "newest complete checkpoint in %s is intact\n",
                alive, agent->options->min_ranks,
                agent->plan.ckpt_dir[0] ? agent->plan.ckpt_dir : "(no --ckpt-dir)");
        agent->outcome = "too few ranks";
        *status = EXIT_TOO_FEW_RANKS;
        return -1;
    }
    char hosts[4096];
    bool mpirun_hosts = agent->config->plan.hosts || agent->config->plan.hostfile;
    SpawnPlan next = agent->config->plan;
    next.exclude = agent->excluded;
    int kept = mpirun_hosts ? spawn_filtered_hosts(&next, hosts, sizeof(hosts)) : -1;
    if (kept == 0) {
        fprintf(stderr, "phalanx run: giving up: every host of %s is lost (%s); the newest "
                        "complete checkpoint is intact\n",
                agent->config->plan.hostfile ? "--hostfile" : "--hosts", agent->excluded);
        agent->outcome = "too few ranks";
        *status = EXIT_TOO_FEW_RANKS;
        return -1;
    }
    // listed hosts: as many ranks as they hold (spares step in), up to max_ranks
    alive = agent->pool_listed ? pool_capacity(agent, NULL) : alive;
    if (alive > agent->max_ranks)
        alive = agent->max_ranks;
    char why[2048];
    int world = plan_world(agent, alive, a->pp, a->sp, why, sizeof(why));
    if (world < 0) {
        fprintf(stderr, "phalanx run: giving up: no layout of %d to %d rank(s) fits this run "
                        "(%s)\n", agent->options->min_ranks, alive, why);
        agent->outcome = "no valid layout";
        *status = EXIT_TOO_FEW_RANKS;
    }
    return world;
}

int elastic_run(JobConfig *config, const ElasticOptions *options)
{
    static Agent agent;
    static Job job;
    memset(&agent, 0, sizeof(agent));
    agent.options = options;
    agent.config = config;
    agent.job = &job;
    agent.train_argv = config->plan.train_argv;
    agent.train_argc = config->plan.train_argc;
    agent.nodes_alive = config->plan.ranks / options->ranks_per_node;
    agent.outcome = "completed";
    agent.memory_committed = -1;
    agent.t0 = util_now_seconds();
    agent.max_ranks = options->max_ranks > 0 ? options->max_ranks : config->plan.ranks;
    pool_init(&agent);
    config->detect = true;
    config->heartbeat_timeout = options->heartbeat_timeout;
    config->on_event = on_job_event;
    config->on_probe = on_probe;
    config->on_tick = on_tick;
    config->event_context = &agent;
    char why[2048];
    int world = plan_world(&agent, config->plan.ranks, 0, 0, why, sizeof(why));
    if (world != config->plan.ranks) {
        fprintf(stderr, "phalanx run: no layout for %d rank(s): %s\n", config->plan.ranks, why);
        return 2;
    }
    agent.first_epoch = agent.plan.ckpt_dir[0] ? ckpt_fence_epoch(agent.plan.ckpt_dir) + 1 : 0;
    int status = 0;
    while (world > 0 && agent.attempt_count < MAX_ATTEMPTS) {
        if (run_attempt(&agent, world) != 0) {
            status = 1;
            agent.outcome = "launch failed";
            break;
        }
        const JobFailure *f = &agent.attempts[agent.attempt_count - 1].failure;
        bool retry = f->kind == FAILURE_CRASH || f->kind == FAILURE_HANG ||
                     f->kind == FAILURE_UNREACHABLE;
        int grown = retry ? 0 : grown_world(&agent);
        if (grown > 0) {
            world = grown;
            job_close(&job);
            continue;
        }
        if (!retry) {
            status = job_exit_status(&job);
            if (status != 0)
                agent.outcome = job.stop_signal ? "stopped" : "failed (not retried)";
            break;
        }
        world = next_world(&agent, &status);
        job_close(&job);
    }
    job_close(&job);
    write_report(&agent, status);
    return status;
}
