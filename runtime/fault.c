/* Failure injection in the worker (contract in fault.h). */
#include "fault.h"
#include "util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


/* Where the step of an event KIND:RANK@STEP goes; NULL for an unknown kind. */
static long *event_step(Faults *f, const char *kind)
{
    if (!strcmp(kind, "crash"))
        return &f->crash_step;
    if (!strcmp(kind, "hang"))
        return &f->hang_step;
    if (!strcmp(kind, "commfail"))
        return &f->commfail_step;
    return NULL;
}

/* One event "KIND:RANK@STEP" or "slow:RANK*FACTOR"; applies it when it names `rank`. */
static int parse_event(Faults *f, const char *event, int rank, char *err, size_t err_len)
{
    char kind[16];
    int target, used = 0;
    long step;
    double factor;
    if (sscanf(event, "%15[a-z]:%d@%ld%n", kind, &target, &step, &used) == 3 &&
        event[used] == '\0' && step >= 1 && event_step(f, kind)) {
        if (target == rank)
            *event_step(f, kind) = step;
        return 0;
    }
    if (sscanf(event, "slow:%d*%lf%n", &target, &factor, &used) == 2 && event[used] == '\0' &&
        factor >= 1.0) {
        if (target == rank)
            f->slow_factor = factor;
        return 0;
    }
    snprintf(err, err_len, "%s: '%s' is not crash:RANK@STEP, hang:RANK@STEP, "
             "commfail:RANK@STEP or slow:RANK*FACTOR (FACTOR >= 1)", FAULT_ENV, event);
    return -1;
}

int fault_init(Faults *f, int rank, char *err, size_t err_len)
{
    memset(f, 0, sizeof(*f));
    f->rank = rank;
    f->slow_factor = 1.0;
    const char *spec = getenv(FAULT_ENV);
    if (!spec || !*spec)
        return 0;
    char copy[1024];
    snprintf(copy, sizeof(copy), "%s", spec);
    for (char *save, *e = strtok_r(copy, ";", &save); e; e = strtok_r(NULL, ";", &save))
        if (parse_event(f, e, rank, err, err_len))
            return -1;
    return 0;
}

void fault_step_begin(Faults *f)
{
    f->step_started = util_now_seconds();
}

void fault_mid_step(Faults *f, Channel *channel, Comm *world, long step)
{
    if (f->commfail_step == step) {
        fprintf(stderr, "phalanx train: rank %d: injected communication failure at step %ld\n",
                channel->rank, step);
        comm_inject_failure(world);
    }
    bool crash = f->crash_step == step, hang = f->hang_step == step;
    if (!crash && !hang)
        return;
    channel_send(channel, "fault %s %d %ld", crash ? "crash" : "hang", channel->rank, step);
    fprintf(stderr, "phalanx train: rank %d: injected %s at step %ld\n", channel->rank,
            crash ? "crash" : "hang", step);
    raise(crash ? SIGKILL : SIGSTOP);
}

void fault_step_end(Faults *f)
{
    if (f->slow_factor <= 1.0)
        return;
    double delay = (util_now_seconds() - f->step_started) * (f->slow_factor - 1.0);
    struct timespec ts = {(time_t)delay, (long)((delay - (double)(time_t)delay) * 1e9)};
    nanosleep(&ts, NULL);
    f->slowed_steps++;
    f->slept_seconds += delay;
}

void fault_report(const Faults *f)
{
    if (f->slowed_steps > 0)
        fprintf(stderr, "phalanx train: rank %d: injected slowdown x%g: slept %.3f s after %ld "
                        "steps\n", f->rank, f->slow_factor, f->slept_seconds, f->slowed_steps);
}
