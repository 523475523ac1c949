/* The elastic agent (contract in elastic.h; its state in agent.h). */
#include "elastic.h"
#include "drill.h"
#include "inject.h"
#include "util.h"

#include "checkpoint.h"
#include "plan.h"
#include "runtime.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_TRAIN_ARGS 512
#define PROBE_SECONDS 30.0 /* a probe still running then is killed: not answered */
#define PROBES_TO_HEAL 2   /* answered in a row: the host is healthy */
/* What a reach check runs on a host (as the worker of spawn_probe): it
 * needs no channel, mpirun's (or srun's) exit status is the answer. */
#define REACH_COMMAND "/bin/true"

// ----------------------------------------------------------------------------
// the options (events are parsed by elastic_event_parse, inject.c)

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
                            "--fault-command CMD (or " FAULT_COMMAND_ENV "), with {kind} and "
                            "{host} in it, e.g. 'scripts/netcluster {kind} NAME {host}'\n",
                    o->events[i]);
            return -1;
        }
    }
    return 0;
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

/* The host leaves the launches and is probed from now on. */
static void pool_leave_out(Agent *agent, PoolHost *p)
{
    p->failed = true;
    p->answers = 0;
    p->healthy_at = 0;
    p->spare_why[0] = '\0';
    p->next_probe_at = util_now_seconds() + agent->options->rejoin_every;
    pool_write_excluded(agent);
}

/* The failed rank's host leaves the launches (pool_leave_out). */
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
    pool_leave_out(agent, p);
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

/* Waits for the reach checks in `pids` (at most PROBE_SECONDS: one still
 * running then is killed); answered[i]: it exited 0. */
static void reach_checks_wait(pid_t *pids, bool *answered, int count)
{
    double deadline = util_now_seconds() + PROBE_SECONDS;
    for (int running = count; running > 0 && util_now_seconds() < deadline;) {
        running = 0;
        for (int i = 0; i < count; i++) {
            int status;
            if (pids[i] > 0 && waitpid(pids[i], &status, WNOHANG) == pids[i]) {
                answered[i] = WIFEXITED(status) && WEXITSTATUS(status) == 0;
                pids[i] = 0;
            }
            running += pids[i] > 0;
        }
        if (running > 0)
            usleep(20000);
    }
    for (int i = 0; i < count; i++)
        if (pids[i] > 0) {
            kill(-pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
        }
}

/* A failure names one lost host, but hosts fail together (a rack's power, a
 * switch), and mpirun cannot start a job on a list that names a lost host.
 * So before a relaunch every listed host not left out is checked at once:
 * REACH_COMMAND started on it the way ranks start (spawn_probe), which needs
 * no channel between attempts. A host where it does not run is left out
 * too (and probed to come back like any other). Returns how many were; the
 * first one's name in `first`. */
static int leave_out_unreachable_hosts(Agent *agent, char *first, size_t first_len)
{
    pid_t pids[MAX_POOL_HOSTS] = {0};
    bool answered[MAX_POOL_HOSTS] = {false};
    SpawnPlan plan = agent->config->plan;
    plan.worker = REACH_COMMAND;
    for (int i = 0; i < agent->pool_count; i++) {
        char err[256];
        if (agent->pool[i].failed)
            continue;
        pids[i] = spawn_probe(&plan, agent->pool[i].name, err, sizeof(err));
        if (pids[i] < 0) {
            fprintf(stderr, "phalanx run: cannot check host %s: %s\n", agent->pool[i].name,
                    err);
            pids[i] = 0;
            answered[i] = true; /* not known to be lost: the launch decides */
        }
    }
    reach_checks_wait(pids, answered, agent->pool_count);
    int lost = 0;
    first[0] = '\0';
    for (int i = 0; i < agent->pool_count; i++) {
        PoolHost *p = &agent->pool[i];
        if (p->failed || answered[i])
            continue;
        fprintf(stderr, "phalanx run: host %s cannot start a process (checked the way ranks "
                        "start): it is lost too and left out of the relaunch\n", p->name);
        if (lost++ == 0)
            snprintf(first, first_len, "%s", p->name);
        pool_leave_out(agent, p);
    }
    return lost;
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
        drill_fire_due_host_faults(agent, step);
    } else if (strcmp(event, "committed") == 0) {
        if (step > agent->memory_committed)
            agent->memory_committed = step;
        a->replicated_step = step;
        if (a->step_heard - step > a->replication_lag_max)
            a->replication_lag_max = a->step_heard - step;
    } else if (strcmp(event, "resumed") == 0) {
        a->resumed_at = at;
        a->resumed_step = step;
        const long *read = agent->job->read_bytes;
        fprintf(stderr, "phalanx run: attempt %d resumed step %ld from the %s tier (%s): read "
                        "%ld bytes from the ranks' own hosts' memory, %ld from other hosts' "
                        "memory, %ld from the durable tier\n",
                agent->attempt_count - 1, step, drill_report_resumed_tier(agent, agent->job->resumed_path),
                agent->job->resumed_path, read[0], read[1], read[2]);
    }
}

static void print_failure(const Agent *agent, const Attempt *a)
{
    const JobFailure *f = &a->failure;
    char who[128] = "an unknown rank";
    if (f->rank >= 0)
        snprintf(who, sizeof(who), "rank %d (node %s)", f->rank, f->node[0] ? f->node : "?");
    fprintf(stderr, "phalanx run: %s of %s detected (%s) %.2f s after launch, after step %ld%s%s\n",
            job_failure_name(f->kind), who, f->how ? f->how : "", f->detected_at - a->launched_at,
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
    drill_corrupt_shards(agent, index);
    drill_set_fault_env(agent, index);
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
    drill_reap_fault_commands(agent);
    a->failure = job->failure;
    snprintf(a->resumed_path, sizeof(a->resumed_path), "%s", job->resumed_path);
    memcpy(a->read_bytes, job->read_bytes, sizeof(a->read_bytes));
    drill_attribute_failure(agent, a);
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

/* The reach check of the hosts after attempt `a`, done once per attempt:
 * how many were found lost (the first one's name in `first`). */
static int check_hosts_once(Agent *agent, Attempt *a, char *first, size_t first_len)
{
    first[0] = '\0';
    if (!a->hosts_checked) {
        a->hosts_checked = true;
        a->hosts_found_lost = leave_out_unreachable_hosts(agent, first, first_len);
    }
    return a->hosts_found_lost;
}

/* The ranks alive once more hosts were left out: no more than the hosts
 * not left out hold (the nodes alive follow). */
static int lost_hosts_counted(Agent *agent, int alive)
{
    int per_node = agent->options->ranks_per_node, capacity = pool_capacity(agent, NULL);
    if (capacity < alive) {
        alive = capacity;
        agent->nodes_alive = capacity / per_node;
    }
    return alive;
}

/* A launch whose ranks did not all start, not stopped by the user: on
 * listed hosts, one may be lost (mpirun cannot start its daemon there, and
 * the whole launch fails). A host the check finds lost makes it a failure
 * to retry without that host; else it is not retried. */
static bool start_failed_on_lost_host(Agent *agent, Attempt *a)
{
    const Job *job = agent->job;
    if (job->ready || job->stop_signal || !agent->pool_listed || a->failure.kind != FAILURE_NONE)
        return false;
    char first[256];
    if (check_hosts_once(agent, a, first, sizeof(first)) == 0)
        return false;
    a->failure = (JobFailure){.kind = FAILURE_UNREACHABLE, .rank = -1,
                              .detected_at = a->ended_at, /* the checks are the relaunch's */
                              .how = "the launch failed: a host is unreachable"};
    snprintf(a->failure.node, sizeof(a->failure.node), "%.63s", first);
    return true;
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
    bool host_lost = a->failure.kind == FAILURE_UNREACHABLE || a->failure.kind == FAILURE_CRASH;
    char first[256];
    if (agent->pool_listed && host_lost && check_hosts_once(agent, a, first, sizeof(first)) > 0)
        alive = lost_hosts_counted(agent, alive);
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
    /* Both live on the heap: a Job is about 2.5 MB, too big for the stack. */
    Agent *agent = calloc(1, sizeof(*agent));
    Job *job = calloc(1, sizeof(*job));
    if (!agent || !job) {
        free(agent);
        free(job);
        fprintf(stderr, "phalanx run: out of memory for the elastic agent\n");
        return 1;
    }
    agent->options = options;
    agent->config = config;
    agent->job = job;
    agent->train_argv = config->plan.train_argv;
    agent->train_argc = config->plan.train_argc;
    agent->nodes_alive = config->plan.ranks / options->ranks_per_node;
    agent->outcome = "completed";
    agent->memory_committed = -1;
    agent->t0 = util_now_seconds();
    agent->max_ranks = options->max_ranks > 0 ? options->max_ranks : config->plan.ranks;
    pool_init(agent);
    config->detect = true;
    config->heartbeat_timeout = options->heartbeat_timeout;
    config->on_event = on_job_event;
    config->on_probe = on_probe;
    config->on_tick = on_tick;
    config->event_context = agent;
    char why[2048];
    int world = plan_world(agent, config->plan.ranks, 0, 0, why, sizeof(why));
    if (world != config->plan.ranks) {
        fprintf(stderr, "phalanx run: no layout for %d rank(s): %s\n", config->plan.ranks, why);
        free(agent);
        free(job);
        return 2;
    }
    agent->first_epoch = agent->plan.ckpt_dir[0] ? ckpt_fence_epoch(agent->plan.ckpt_dir) + 1 : 0;
    int status = 0;
    while (world > 0 && agent->attempt_count < MAX_ATTEMPTS) {
        if (run_attempt(agent, world) != 0) {
            status = 1;
            agent->outcome = "launch failed";
            break;
        }
        Attempt *last = &agent->attempts[agent->attempt_count - 1];
        const JobFailure *f = &last->failure;
        bool retry = start_failed_on_lost_host(agent, last) || f->kind == FAILURE_CRASH ||
                     f->kind == FAILURE_HANG || f->kind == FAILURE_UNREACHABLE;
        int grown = retry ? 0 : grown_world(agent);
        if (grown > 0) {
            world = grown;
            job_close(job);
            continue;
        }
        if (!retry) {
            status = job_exit_status(job);
            if (status != 0)
                agent->outcome = job->stop_signal ? "stopped" : "failed (not retried)";
            break;
        }
        world = next_world(agent, &status);
        job_close(job);
    }
    job_close(job);
    drill_report_write(agent, status);
    free(job);
    free(agent);
    return status;
}
