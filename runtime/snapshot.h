/*
 * snapshot: the training loop's side of checkpoints (checkpoint/checkpoint.h):
 * which tensors this rank saves, the run state that goes with them, and
 * resuming a run in any layout.
 *
 * Contract
 * - snapshot_setup() is collective over the world and runs after every rank
 *   has built its model. With --resume it loads this rank's tensors, the
 *   sample cursor, the step count and the batch controller from the
 *   checkpoint (any layout wrote it; the model shape and --seed must match).
 *   With --ckpt-dir it opens the checkpointer; a fresh run (no --resume)
 *   refuses a --ckpt-dir that already holds checkpoints, so that it never
 *   overwrites or prunes another run's. Returns 0, or -1 on every rank after
 *   rank 0 printed why.
 * - Under --zero 1 a rank saves its own shard of m and v (fragments of the
 *   logical tensors, like any replica's share), so a checkpoint resumes with
 *   or without --zero in any layout. A sharded resume reads m and v whole
 *   into temporary buffers (twice the stage's parameters, freed before
 *   training starts) and keeps its shard.
 * - Around optimizer step s: snapshot_before_update() right before the
 *   optimizer writes (waits only while the sidecar still copies the previous
 *   snapshot), snapshot_after_update() right after the step's state is final
 *   (cursor and batch controller updated); it checkpoints when --ckpt-every
 *   says so, and after the last step of the run. Both return the seconds the
 *   training thread was blocked.
 * - snapshot_close() is collective: it finishes the flushes (tier 1 goes
 *   after a successful run) and frees what setup made.
 */
#ifndef PHALANX_SNAPSHOT_H
#define PHALANX_SNAPSHOT_H

#include "trainer.h"

#include <stdbool.h>
#include <stddef.h>

int snapshot_setup(Trainer *t);
double snapshot_before_update(Trainer *t);
double snapshot_after_update(Trainer *t, bool last);
/* For the progress line: "ckpt off", "ckpt none yet", "ckpt 40" (the newest
 * committed step in tier 2), "ckpt 40 (t1 42)" (tier 1 is ahead), "ckpt t1 42". */
void snapshot_describe(Trainer *t, char *out, size_t len);
/* The newest step committed to tier 2 (and tier 1), -1 for none (or off). */
void snapshot_committed(Trainer *t, long *tier2, long *tier1);
/* Returns -1 (on every rank, after rank 0 said so) when this run asked for
 * checkpoints and committed none to --ckpt-dir (a full disk): the run must
 * not end as a success. */
int snapshot_close(Trainer *t, bool success);

#endif
