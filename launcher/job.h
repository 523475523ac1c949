/*
 * job: one launch of the worker ranks and the launcher's watch over it
 * (private to launcher/). `phalanx run` makes one; the elastic agent makes
 * one per attempt.
 *
 * The launcher listens on a TCP port (the channel, protocol in runtime.h) of
 * an address the ranks reach: loopback on one host; across hosts
 * channel_address, else the address that routes to the job's first host;
 * starts mpirun or srun in a process group of its own (spawn.h), and waits on
 * the channel, its signals and the job. It prints rank 0's progress lines,
 * bounds start-up with a timeout (a rank that never says hello cannot hang
 * it), and turns Ctrl-C into a clean stop of every rank at a step boundary.
 *
 * Failure detection (when `detect` is set): a rank whose channel closes
 * before it said "done" has crashed; a rank silent for `heartbeat_timeout`
 * seconds has hung (ranks beat while the training thread makes progress);
 * the hung rank is the one that announced an injected fault, else one whose
 * process is stopped (on this host), else unknown (rank -1: every rank
 * waited on a peer, and none can be blamed). At every check, before any
 * silence is judged, the kernel is asked which hosts still acknowledge the
 * pings: a rank whose connection has had a ping unacknowledged for
 * UNREACHABLE_SECONDS is on a host that is partitioned or off
 * (FAILURE_UNREACHABLE), whatever `heartbeat_timeout` is. A rank blocked in
 * a collective is silent but its kernel still acknowledges, so this tells
 * the lost host from its waiting peers.
 * Either way the job is killed at once (SIGKILL to its process group: the
 * state that matters is in checkpoints) and JobFailure says who and when.
 *
 * The channel is inert to strangers. Every job draws a secret, given to the
 * ranks in their environment; a connection counts only once it has answered
 * the challenge (runtime.h) and then said hello for a rank that the job
 * launched and no connection has claimed yet. Until then its lines change
 * nothing, and its loss is no crash. Connections that have not said hello
 * within JOB_PENDING_SECONDS are closed, as is the oldest of them when more
 * than JOB_MAX_PENDING wait, and any connection whose line overflows its
 * buffer. A Slurm step from a hello is cancelled after a failure only when
 * it is JOB.STEP of the launcher's own $SLURM_JOB_ID. Text for the terminal
 * (progress, log) is stripped of control characters first. Every second the
 * launcher pings the ranks, which stop when it is gone (channel.h).
 *
 * Probes (the elastic agent's, `phalanx probe` on a host it wants back)
 * answer the same challenge and then say "probe NODE" instead of a hello;
 * they are handed to on_probe and closed, and claim no rank.
 */
#ifndef PHALANX_JOB_H
#define PHALANX_JOB_H

#include "runtime.h"
#include "spawn.h"

#include <stdbool.h>
#include <sys/types.h>

#define JOB_MAX_CLIENTS 1024
#define JOB_MAX_PENDING 64        /* connections not yet past their hello */
#define JOB_PENDING_SECONDS 10.0  /* for the challenge and the hello */

typedef struct {
    int fd;
    int rank; /* -1 until an authenticated hello */
    long pid;
    bool authenticated;
    bool done, faulted; /* said "done"; said "fault" (an injected failure) */
    bool probe;         /* said "probe": no rank, closed after it */
    double accepted_at, last_seen;
    char nonce[CHANNEL_TOKEN_HEX + 1];
    char node[64]; /* its host, or its Slurm node name */
    char address[64]; /* its IP address, as accepted */
    char buffer[2048];
    size_t length;
} JobClient;

typedef enum { FAILURE_NONE, FAILURE_CRASH, FAILURE_HANG, FAILURE_EXIT,
               FAILURE_UNREACHABLE } FailureKind;

typedef struct {
    FailureKind kind;
    int rank;          /* -1: unknown (the job exited non-zero with every channel closed) */
    char node[64];
    char address[64];  /* the rank's address as the launcher saw it (its host's) */
    double fault_at;   /* when the rank said "fault" (injected failures), else 0 */
    double detected_at;
    const char *how;   /* "lost channel", "no heartbeat", "exit status",
                          "host unreachable" */
} JobFailure;

/* Called for timeline events: "ranks_up" (every rank said hello), "resumed"
 * (with the step of the checkpoint; its path in Job.resumed_path),
 * "first_step" and "step" (every step rank 0 completed, with the step). */
typedef void (*JobEventHook)(void *context, const char *event, long step, double at);
/* Called for every probe that authenticated and said "probe NODE", with the
 * address its connection came from; the connection is then closed. */
typedef void (*JobProbeHook)(void *context, const char *node, const char *address, double at);
/* Called between polls (about every 20 ms) while the job runs. */
typedef void (*JobTickHook)(void *context, double now);

/* What a launch is asked to do: set by `phalanx run` from the command line,
 * and by the elastic agent before each attempt (ranks, hosts left out,
 * training options, epoch). job_start reads it and changes nothing in it. */
typedef struct {
    SpawnPlan plan;
    const char *channel_address; /* --channel-address: listen and advertise; NULL: chosen */
    int epoch; /* the elastic agent's attempt (CKPT_EPOCH_ENV); -1: not elastic. A hello
                  of another epoch is refused (a rank of an attempt given up on) */
    double startup_timeout;
    bool detect;              /* crash and hang detection (elastic) */
    double heartbeat_timeout; /* seconds; used when detect is set */
    JobEventHook on_event;
    JobProbeHook on_probe; /* NULL: probes are refused like strangers */
    JobTickHook on_tick;
    void *event_context; /* for all three hooks */
} JobConfig;

/* One launch: its configuration and what it has seen so far. job_start
 * clears everything else, so a Job is reused for the next attempt as is. */
typedef struct {
    const JobConfig *config; /* outlives the job */
    int listen_fd;
    char address[300];
    char secret[CHANNEL_TOKEN_HEX + 1]; /* never printed */
    JobClient clients[JOB_MAX_CLIENTS + JOB_MAX_PENDING];
    bool claimed[JOB_MAX_CLIENTS]; /* ranks that said hello */
    int client_count, hello_count;
    long refused;     /* connections closed before their hello */
    double pinged_at;
    long first_step, last_step; /* progress steps seen (rank 0), 0: none */
    char resumed_path[512];     /* the checkpoint the ranks resumed from, "" if none */
    long read_bytes[3];         /* rank 0's loaded line: own host's memory, other hosts'
                                   memory, durable; all 0 if none */
    pid_t pid;
    char slurm_step[64]; /* JOB.STEP of the ranks under srun, "" otherwise */
    int status; /* raw waitpid status, valid once done */
    bool done, ready, startup_timed_out;
    double started_at, stop_at, term_at, killed_at;
    int stop_signal;
    bool stop_requested; /* job_request_stop: the ranks' exit status is no failure */
    JobFailure failure;
} Job;

/* Installs the SIGINT/SIGTERM handlers of the launcher (once per process). */
int job_install_signals(void);
/* Clears the job's state, opens the channel and starts the ranks as `config`
 * says (job_close first when the job was started before). 0, or -1 after
 * printing why. */
int job_start(Job *job, const JobConfig *config);
/* Watches until the job has ended (and, after a failure, been killed). */
void job_watch(Job *job);
/* The exit status to report for a job that was not retried. */
int job_exit_status(const Job *job);
/* Asks every rank to stop after its current step, as Ctrl-C does (the
 * trainer commits that step's checkpoint and exits); the ranks' non-zero
 * status is then no failure. A crash or hang meanwhile still is one. */
void job_request_stop(Job *job);
/* Closes the channel and every client connection. */
void job_close(Job *job);
/* The job's raw exit code (128 + signal for a signal). */
int job_code(const Job *job);
/* "none", "crash", "hang", "exit" or "unreachable". */
const char *job_failure_name(FailureKind kind);

#endif
