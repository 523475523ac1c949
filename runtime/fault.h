/*
 * fault: failure injection inside a training worker, for drills
 * (`phalanx drill`, `phalanx run --inject`). The launcher passes this run's
 * events in PHALANX_FAULTS, ';'-separated, each naming the rank it hits:
 *
 *   crash:RANK@STEP   SIGKILL in the middle of step STEP (after its forward
 *                     and backward, before the optimizer): the step is lost
 *   hang:RANK@STEP    SIGSTOP at the same point: the process freezes, as on a
 *                     hung device or node, and stops heartbeating
 *   slow:RANK*FACTOR  every step of RANK takes FACTOR times as long (sleeps)
 *   commfail:RANK@STEP  at the same point, the rank's next allreduce over
 *                     the world fails as a failure inside MPI would
 *                     (comm_inject_failure): the other ranks wait in it.
 *                     The worker's own (plain mpirun drills): the
 *                     launcher's --inject does not offer it.
 *
 * Before a crash or hang fires the rank says "fault KIND RANK STEP" on the
 * launcher channel, so the drill's timeline has the moment of failure.
 * (Kills during a checkpoint flush use the checkpoint module's own hook,
 * PHALANX_FAULT_KILL_DURING_FLUSH.) No events: every call does nothing.
 */
#ifndef PHALANX_FAULT_H
#define PHALANX_FAULT_H

#include "channel.h"
#include "comm.h"
#include "runtime.h" /* FAULT_ENV */

#include <stdbool.h>

typedef struct {
    int rank;
    long crash_step, hang_step, commfail_step; /* 0: none */
    double slow_factor;         /* 1: none */
    double step_started;
    long slowed_steps;    /* steps this rank slept after */
    double slept_seconds; /* in all */
} Faults;

/* Reads this rank's events; -1 with a message when the variable is malformed. */
int fault_init(Faults *faults, int rank, char *err, size_t err_len);
void fault_step_begin(Faults *faults);
/* In the middle of step `step` (1-based): fires a crash or hang due now, or
 * a communication failure on `world`. */
void fault_mid_step(Faults *faults, Channel *channel, Comm *world, long step);
/* At the end of a step: the delay of a slowed rank. */
void fault_step_end(Faults *faults);
/* A slowed rank says on stderr what it injected: "phalanx train: rank R:
 * injected slowdown xFACTOR: slept S s after N steps" (tests check that the
 * slowed rank slept and the others did not, without timing anything). */
void fault_report(const Faults *faults);

#endif
