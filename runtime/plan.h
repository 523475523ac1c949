/*
 * plan: what the launcher learns of a run from its training options before
 * any rank starts (runtime/plan.c). The launcher's one way into the
 * training options and the rank grid (options.h, topology.h); it parses the
 * same command line the ranks will parse, so the two never disagree.
 */
#ifndef PHALANX_PLAN_H
#define PHALANX_PLAN_H

#include <stddef.h>

/* Parses the training options and checks that a layout fits `world` ranks.
 * Returns 0 when the run can start, else the exit status, after printing
 * what is wrong. */
int plan_check_launch(int world, int argc, char **argv);

/* What the elastic launcher needs of a run's training options. */
typedef struct {
    int dp, pp, sp;             /* a layout for the world asked */
    char ckpt_dir[4096];        /* "" when checkpoints are off */
    char ckpt_memory_dir[4096]; /* --ckpt-memory-dir as given, "" for the default */
    char metrics[4096];         /* --metrics, "" when not given */
} TrainPlan;

/* Parses training options already checked by plan_check_launch and picks a
 * layout for `world` ranks that keeps the run (its global batch and model):
 * pipeline and sequence degrees prefer_pp x prefer_sp with the rest
 * data-parallel when that fits, else the most data-parallel valid layout.
 * prefer_pp = 0: the options' own layout. Returns 0, or -1 with the reason in
 * err; prints nothing. */
int plan_launch(int world, int prefer_pp, int prefer_sp, int argc, char **argv, TrainPlan *plan,
                char *err, size_t err_len);

#endif
