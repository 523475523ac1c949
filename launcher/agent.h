/*
 * agent: the elastic agent's options and state (private to launcher/; what
 * the agent does is in elastic.h). elastic.c runs the attempts, the host
 * pool, the probes and the grows in an Agent; the drill (drill.h: injected
 * events, the report) reads it and records the host faults it fired. One
 * Agent per `phalanx run --elastic`, passed explicitly.
 */
#ifndef PHALANX_AGENT_H
#define PHALANX_AGENT_H

#include "job.h"
#include "plan.h"

#include <stdbool.h>
#include <sys/types.h>

#define ELASTIC_MAX_EVENTS 32
/* Every attempt is kept for the report: at most this many relaunches. */
#define ELASTIC_MAX_RESTARTS 63

typedef struct {
    int min_ranks, max_restarts, ranks_per_node;
    double heartbeat_timeout;
    const char *events[ELASTIC_MAX_EVENTS];
    int event_count;
    const char *report_path; /* NULL: no report */
    /* partition and poweroff events: a shell command with {kind} and {host}
     * replaced (the host as the event names it); NULL: none given */
    const char *fault_command;
    int max_ranks;       /* growth cap; 0: the first launch's size */
    double rejoin_every; /* seconds between probes of a host left out */
} ElasticOptions; /* --min-ranks, --inject, --report ...: elastic.h */

#define MAX_ATTEMPTS (ELASTIC_MAX_RESTARTS + 1)
#define MAX_POOL_HOSTS 256

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
    long read_bytes[3]; /* what its resume read from where (Job.read_bytes) */
    const char *cause; /* the injected host fault behind the failure, or NULL */
    char cause_host[64];
    double last_step_at; /* when rank 0 completed last_step (its throughput) */
    bool grown;          /* it ended by the agent's stop, to grow */
    /* replication of tier 1 (rank 0's committed lines): the newest memory
     * checkpoint on two hosts (0: none) and how many steps it trailed the
     * step rank 0 had completed, at most */
    long step_heard, replicated_step, replication_lag_max;
    /* after its failure, the other hosts were checked for more lost ones:
     * how many were found */
    bool hosts_checked;
    int hosts_found_lost;
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

#endif
