/*
 * stateful: the parts of a run that carry state from one checkpoint to the
 * run that resumes it (torchtitan's Stateful): the optimizer, the learning
 * rate schedule and the batch controller. Each saves itself as typed values
 * of the run state (checkpoint.h, CkptRunState.values and its extra pairs),
 * checks what a checkpoint holds for it, and restores itself; checkpoint/
 * stores the values without knowing them, so a new part (ZeRO shards, bf16
 * master weights, another controller) adds an entry here and no field there.
 * The checkpoint keeps the core itself: step, sample cursor, seed, model,
 * the writer's layout.
 *
 * Contract
 * - The parts save in a fixed order (PARTS in stateful.c), the order of
 *   their attributes in group `run` of the index (format 1: optimizer, lr,
 *   beta1, beta2, eps, weight_decay, clip, decay_all, schedule, warmup_steps,
 *   total_steps, train_samples, min_lr_ratio, decay_fraction, global_batch,
 *   micro_batch; the batch controller's pairs in run/extra).
 * - check() judges a read run state alone (no run needed): every value
 *   present with its type and in range, or -1 with a message naming it as
 *   the reader names its own fields ("attribute 'lr' is missing, unreadable
 *   or of the wrong type", "'beta1' is 2, outside [0, 1]"). stateful_check
 *   runs every part's: it is the CkptStateCheck of resume, of --init-from a
 *   checkpoint and of `phalanx ckpt verify` and `inspect`.
 * - restore() runs after check() passed: it takes the part's state back, or
 *   refuses a checkpoint this run cannot continue (another optimizer's
 *   moments) with the fix in its message. What the command line may change
 *   between runs (learning rate, schedule, micro-batch) is saved for the
 *   record and not restored.
 * - self is the part's owner: for the runtime's parts, the Trainer.
 */
#ifndef PHALANX_STATEFUL_H
#define PHALANX_STATEFUL_H

#include "checkpoint.h"

#include <stddef.h>

typedef struct {
    const char *name;
    /* Puts the part's values into state; -1 when the run state is full. */
    int (*save)(const void *self, CkptRunState *state);
    int (*check)(const CkptRunState *state, char *err, size_t err_len);
    int (*restore)(void *self, const CkptRunState *state, char *err, size_t err_len);
} Stateful;

/* Every part, in saving order. */
int stateful_save(const void *self, CkptRunState *state, char *err, size_t err_len);
/* A CkptStateCheck: every part's check, in order. */
int stateful_check(const CkptRunState *state, char *err, size_t err_len);
int stateful_restore(void *self, const CkptRunState *state, char *err, size_t err_len);

#endif
