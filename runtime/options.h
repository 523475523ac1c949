/*
 * options: the command line of a training worker (`phalanx train`), parsed
 * with getopt_long into TrainOptions, with every value checked.
 *
 * options_parse() returns 0 when training should run, 1 when it printed what
 * was asked (--help) and the program should exit 0, and -1 on bad input, after
 * printing a message that names the flag, the value and the fix.
 */
#ifndef PHALANX_OPTIONS_H
#define PHALANX_OPTIONS_H

#include "batch.h"
#include "checkpoint.h"
#include "device.h"
#include "gpt.h"
#include "optim.h"
#include "topology.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
    const char *data, *val_data;
    const char *metrics_path, *dump_params_path;
    bool metrics_overwrite; /* a fresh run may replace an existing --metrics file */
    bool metrics_append;    /* a fresh run continues it (an elastic relaunch) */
    GPTConfig model;
    int micro_batch, global_batch;
    long steps;
    uint64_t seed;
    OptimConfig optim;
    double lr, min_lr_ratio, decay_fraction;
    float clip;
    ScheduleKind schedule;
    long warmup;
    int threads;
    const char *device; /* "cpu" or "cuda" (device.h) */
    bool tf32;          /* cuda: TF32 tensor cores for matrix products */
    bool bf16;          /* --precision bf16: bf16 matrix products (device_bf16) */
    Recompute recompute; /* what layers keep for backward (gpt.h) */
    int zero;            /* ZeRO stage: 0 (replicated optimizer) or 1 (sharded, zero.h) */
    int grad_bucket;     /* floats per gradient bucket (gradsync.h, zero.h) */
    long eval_every;
    int eval_batches;
    bool quiet; /* no per-step progress lines */
    Layout layout;     /* axes given with --dp/--pp/--sp or --layout DxPxS (others 1) */
    bool layout_auto;  /* --layout auto, or no axis given at all */
    int pp_split[MAX_STAGES]; /* --pp-split: layers per stage */
    int pp_split_count;       /* 0: even split */
    /* adaptive batch (optim/batch.h) */
    bool batch_adaptive;
    int max_global_batch, batch_quantum;
    long batch_check;
    double batch_eta, batch_ema;
    LrScaling lr_scaling;
    long train_samples; /* the run's length in samples: steps x global batch by default */
    /* checkpoints (checkpoint/checkpoint.h); ckpt.dir NULL: off */
    CkptOptions ckpt;
    const char *resume; /* NULL, "latest" or a path */
    const char *init_from; /* NULL, or the weights to start from (modelfile.h) */
    unsigned shape_given;  /* bits: --vocab, --layers, --heads, --dim, --seq-len given */
} TrainOptions;

/* The constraints a layout must meet for these options. */
LayoutNeeds options_layout_needs(const TrainOptions *options);

/* The layout for `world` ranks: the one given, or the automatic choice.
 * Returns 0, or -1 after printing the broken rule and the valid layouts. */
int options_resolve_layout(const TrainOptions *options, int world, Layout *out);

int options_parse(TrainOptions *options, int argc, char **argv);
void options_usage(FILE *out);

#endif
