/* The drill's injected events (contract in drill.h): the worker faults each
 * attempt's ranks get, corrupted shards, and host faults asked of the fault
 * command. */
#include "drill.h"
#include "inject.h"
#include "util.h"

#include "checkpoint.h"
#include "runtime.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define FAULT_COMMAND_SECONDS 30.0 /* a fault command still running then is killed */

/* The worker's environment for attempt `a`: FAULT_ENV and the checkpoint
 * module's kill-during-flush hook (CKPT_FLUSH_KILL_ENV). */
void drill_set_fault_env(const Agent *agent, int a)
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
    setenv(CKPT_FLUSH_KILL_ENV, flush, 1);
}

/* corrupt:S events of attempt `a`: one flipped byte in the middle of the
 * step-S checkpoint's rank-0 shard, in every tier that has it. */
void drill_corrupt_shards(const Agent *agent, int a)
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
            ckpt_shard_path(shard, sizeof(shard), step_dir, 0);
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
void drill_fire_due_host_faults(Agent *agent, long step)
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
void drill_reap_fault_commands(Agent *agent)
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
void drill_attribute_failure(Agent *agent, Attempt *a)
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
