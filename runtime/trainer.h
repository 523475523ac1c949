/*
 * trainer: the state of one training worker, shared by the training loop
 * (train.c), its checkpoint glue (snapshot.c), its reports (report.c) and
 * its parameter dump (dump.c). Private to runtime/.
 */
#ifndef PHALANX_TRAINER_H
#define PHALANX_TRAINER_H

#include "channel.h"
#include "checkpoint.h"
#include "comm.h"
#include "data.h"
#include "device.h"
#include "fault.h"
#include "gpt.h"
#include "gradsync.h"
#include "optim.h"
#include "options.h"
#include "pipeline.h"
#include "topology.h"
#include "zero.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
    TrainOptions opt;
    const Device *dev; /* --device: where the model, gradients and moments live */
    Comm *world, *dp, *pp, *sp, *dpsp;
    Comm *tied; /* first and last stage of one pipeline: the two copies of wte */
    /* The groups that carry device tensors: pp, sp, dpsp and tied themselves
     * where the device is host memory (or the group is one rank); NCCL
     * communicators over the same ranks on GPUs. Host values (losses, norms)
     * always go over the groups above. */
    Comm *pp_data, *sp_data, *dpsp_data, *tied_data;
    Layout layout;
    GridCoord coord;
    int rank;
    Channel channel;
    TokenData train, val;
    size_t train_windows, val_windows;
    int *window_tokens, *window_targets; /* one whole window, before the sp split */
    GPT gpt; /* this rank's pipeline stage of the model */
    Pipeline pipe;
    GradSync sync;
    float *m, *v; /* on the device; NULL when sharded */
    bool sharded; /* --zero 1 over more than one dp x sp rank: m, v in `zero` */
    Zero zero;
    OptimTensor *optim_tensors;
    Schedule schedule;
    BatchController batch;
    uint64_t cursor;      /* global samples consumed by the steps done */
    float *grad_snapshot; /* sp > 1: the first micro-batch's gradient, summed over sp */
    double small_sumsq;   /* this rank's share of |first micro-batch gradient|^2 */
    FILE *metrics;
    bool metrics_lost; /* a write to --metrics failed: the run ends with status 1 */
    long steps_done;         /* optimizer steps completed (resumed ones included) */
    Checkpointer *ckpt;      /* NULL: checkpoints off */
    CkptTensor *ckpt_tensors; /* what this rank holds, for writing and resuming */
    float *host_state;        /* GPU: pinned mirror of params, m, v for checkpoints */
    int ckpt_tensor_count;
    Faults faults; /* injected failures of drills (fault.h) */
} Trainer;

/* Drains the device queue; after a failed kernel, says where (`when`) and
 * returns -1 (trainer.c). */
int trainer_device_failed(Trainer *t, const char *when);

/* The tied embedding (wte) when the pipeline holds two copies of it (pp > 1,
 * first and last stage), else NULL (trainer.c). */
const ParamTensor *trainer_tied_embedding(const Trainer *t);

/* Sums `value` over the world; a failed reduction counts as a failure: NaN
 * (trainer.c). */
double trainer_world_sum(Trainer *t, double value);

/* When a communication failed inside the library on any of this rank's
 * groups (comm_broken), says so and ends the whole job (comm_abort, exit
 * status 1): the other ranks may be waiting in that collective for ever, so
 * agreeing with them on the failure, or checkpointing, would hang. Returns
 * when nothing is broken (trainer.c). */
void trainer_abort_if_comm_broken(Trainer *t);

/* setup.c: everything a worker holds before its first step (rank grid and
 * groups, device, model, optimizer, data, outputs, checkpoints, channel), or
 * -1 with a message; trainer_teardown frees what set-up made, also after a
 * set-up that failed part-way. */
int trainer_setup(Trainer *t);
void trainer_teardown(Trainer *t);

#endif
