/*
 * A worker's set-up and tear-down (contract in trainer.h): the rank grid and
 * its communicator groups, the device, the model (fresh, or --init-from),
 * the optimizer and its ZeRO-1 shards, the data, the output files, the
 * checkpoints (snapshot.c) and the launcher channel. The step and the loop
 * are train.c's.
 */
#include "runtime.h"
#include "util.h"

#include "kernels.h"
#include "modelfile.h"
#include "outfile.h"
#include "report.h"
#include "snapshot.h"
#include "trainer.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int open_data(TokenData *data, size_t *windows, const char *spec, const char *flag,
                     const GPTConfig *model)
{
    char err[1024];
    if (tokendata_open(data, spec, model->vocab, err, sizeof(err)) != 0) {
        fprintf(stderr, "phalanx train: %s: %s\n", flag, err);
        return -1;
    }
    *windows = tokendata_windows(data, model->seq_len);
    if (*windows == 0) {
        fprintf(stderr,
                "phalanx train: %s: --seq-len %d is longer than the data: its longest shard "
                "holds fewer than %d tokens; use a shorter --seq-len or more data\n",
                flag, model->seq_len, model->seq_len + 1);
        return -1;
    }
    return 0;
}


/* --zero 1: the shards replace m, v and the optimizer's tensor list; their
 * reduce-scatter overlaps the backward pass (gradsync), but for the bucket of
 * the tied wte, which is summed between the stages first. */
static int setup_zero(Trainer *t)
{
    t->sharded = t->opt.zero == 1 && comm_size(t->dpsp) > 1;
    if (t->opt.zero == 1 && !t->sharded && t->rank == 0)
        fprintf(stderr, "phalanx train: warning: --zero 1 has no effect with dp x sp = 1: one "
                        "replica holds the whole optimizer state (training goes on unsharded, "
                        "so an elastic restart on fewer ranks still runs)\n");
    if (!t->sharded)
        return 0;
    if (zero_init(&t->zero, &t->gpt, t->dpsp_data, t->dpsp, (size_t)t->opt.grad_bucket) == 0) {
        const ParamTensor *wte = trainer_tied_embedding(t);
        t->zero.held_tensor = wte ? (int)(wte - t->gpt.tensors) : -1;
        return 0;
    }
    fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, t->zero.error);
    return -1;
}

/* Unsharded: m and v as large as the parameters, one OptimTensor per tensor. */
static int allocate_moments(Trainer *t)
{
    GPT *gpt = &t->gpt;
    t->m = device_alloc(t->dev, gpt->param_count * sizeof(float));
    t->v = device_alloc(t->dev, gpt->param_count * sizeof(float));
    t->optim_tensors = calloc((size_t)gpt->tensor_count, sizeof(OptimTensor));
    if (!t->m || !t->v || !t->optim_tensors)
        return -1;
    for (int i = 0; i < gpt->tensor_count; i++) {
        const ParamTensor *p = &gpt->tensors[i];
        t->optim_tensors[i] = (OptimTensor){
            .name = p->name,
            .param = gpt->params + p->offset,
            .grad = gpt->grads + p->offset,
            .m = t->m + p->offset,
            .v = t->v + p->offset,
            .numel = p->numel,
            .exclude = p->excluded,
        };
    }
    return 0;
}

static int setup_optimizer(Trainer *t)
{
    if (!t->sharded && allocate_moments(t))
        return -1;
    const TrainOptions *o = &t->opt;
    t->schedule = (Schedule){
        .kind = o->schedule,
        .lr_max = o->lr,
        .min_ratio = o->min_lr_ratio,
        .warmup = (double)o->warmup * o->global_batch,
        .total = (double)o->train_samples,
        .decay_fraction = o->decay_fraction,
    };
    return 0;
}

static Comm *split_group(Trainer *t, LayoutGroup group)
{
    GroupSplit split = layout_group_split(t->layout, t->coord, group);
    return comm_split(t->world, split.colour, split.key);
}

/* The dp, pp, sp and dp x sp groups of this rank (DESIGN.md "Rank grid"). */
static int setup_groups(Trainer *t)
{
    t->dp = split_group(t, LAYOUT_GROUP_DP);
    t->pp = split_group(t, LAYOUT_GROUP_PP);
    t->sp = split_group(t, LAYOUT_GROUP_SP);
    t->dpsp = split_group(t, LAYOUT_GROUP_DPSP);
    t->tied = split_group(t, LAYOUT_GROUP_TIED);
    if (t->dp && t->pp && t->sp && t->dpsp && t->tied)
        return 0;
    fprintf(stderr, "phalanx train: rank %d: cannot build the rank groups: %s\n", t->rank,
            comm_error(t->world));
    return -1;
}

/* The communicator for device tensors over the ranks of `group`. Collective
 * over the group. */
static Comm *data_comm(Trainer *t, Comm *group, const char *name)
{
    if (t->dev->host_memory || comm_size(group) == 1)
        return group;
    char err[512];
#ifdef HAVE_NCCL
    Comm *nccl = comm_nccl_from_mpi(group, err, sizeof(err));
    if (nccl)
        return nccl;
#else
    snprintf(err, sizeof(err), "this phalanx was built without NCCL, which --device cuda needs "
                               "between ranks; install NCCL and rebuild, or run one rank");
#endif
    fprintf(stderr, "phalanx train: rank %d: the NCCL communicator of the %s group: %s\n",
            t->rank, name, err);
    return NULL;
}

static int setup_data_groups(Trainer *t)
{
    t->pp_data = data_comm(t, t->pp, "pp");
    t->sp_data = t->pp_data ? data_comm(t, t->sp, "sp") : NULL;
    t->dpsp_data = t->sp_data ? data_comm(t, t->dpsp, "dp x sp") : NULL;
    t->tied_data = t->dpsp_data ? data_comm(t, t->tied, "tied embedding") : NULL;
    return t->tied_data ? 0 : -1;
}

static void free_data_group(Comm *data, Comm *group)
{
    if (data && data != group)
        comm_free(data);
}

/* --init-from: this stage's tensors from the file; the moments stay zero.
 * A resumed run (an elastic relaunch) takes its weights from the checkpoint. */
static int load_initial_weights(Trainer *t)
{
    char err[2048];
    if (modelfile_load(t->opt.init_from, &t->gpt, err, sizeof(err)) == 0)
        return 0;
    fprintf(stderr, "phalanx train: rank %d: --init-from: %s\n", t->rank, err);
    return -1;
}

static int setup_model(Trainer *t)
{
    const TrainOptions *o = &t->opt;
    LayoutNeeds needs = options_layout_needs(o);
    int begin, end, stage = t->coord.pp, micro_batches = o->max_global_batch / o->micro_batch;
    int local_T = o->model.seq_len / t->layout.sp;
    layout_stage_layers(t->layout, &needs, stage, &begin, &end);
    t->window_tokens = calloc((size_t)o->model.seq_len, sizeof(int));
    t->window_targets = calloc((size_t)o->model.seq_len, sizeof(int));
    if (!t->window_tokens || !t->window_targets ||
        gpt_init(&t->gpt, t->dev, &o->model, begin, end, stage == 0,
                 stage == t->layout.pp - 1) ||
        gpt_enable_sequence_parallel(&t->gpt, t->sp_data, o->micro_batch, local_T) ||
        gpt_enable_recompute(&t->gpt, o->recompute, o->micro_batch, local_T) ||
        pipeline_init(&t->pipe, &t->gpt, t->pp_data, o->micro_batch, local_T, micro_batches) ||
        setup_zero(t) || setup_optimizer(t) ||
        (t->layout.sp > 1 &&
         !(t->grad_snapshot = device_alloc(t->dev, t->gpt.param_count * sizeof(float)))) ||
        gpt_init_params(&t->gpt, o->seed)) {
        fprintf(stderr, "phalanx train: rank %d: out of %s memory for this model and "
                        "micro-batch%s%s\n",
                t->rank, t->dev->name, device_error(t->dev)[0] ? ": " : "", device_error(t->dev));
        return -1;
    }
    if (o->init_from && !o->resume && load_initial_weights(t))
        return -1;
    batch_init(&t->batch, o->batch_adaptive, o->global_batch, o->max_global_batch,
               o->batch_quantum, o->batch_eta, o->batch_ema);
    // sharded: ZeRO's reduce-scatter, overlapped with the backward pass, replaces the allreduce
    gradsync_init(&t->sync, t->sharded ? NULL : t->dpsp_data, t->dev, t->gpt.grads,
                  t->gpt.param_count, (size_t)o->grad_bucket);
    t->sync.zero = t->sharded ? &t->zero : NULL;
    return 0;
}

/* Everything a rank can fail at before training; each rank reports its own. */
static int setup_rank(Trainer *t)
{
    const TrainOptions *o = &t->opt;
    char err[512];
    if (channel_open(&t->channel, t->rank, comm_size(t->world), err, sizeof(err))) {
        fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, err);
        return -1;
    }
    if (fault_init(&t->faults, t->rank, err, sizeof(err))) {
        fprintf(stderr, "phalanx train: %s\n", err);
        return -1;
    }
    kernels_set_threads(o->threads);
    if (!(t->dev = device_open(o->device, o->tf32, err, sizeof(err))) ||
        (o->bf16 && !(t->dev = device_bf16(t->dev, err, sizeof(err))))) {
        fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, err);
        return -1;
    }
    if (setup_groups(t) || setup_data_groups(t) ||
        open_data(&t->train, &t->train_windows, o->data, "--data", &o->model))
        return -1;
    if (o->val_data &&
        open_data(&t->val, &t->val_windows, o->val_data, "--val-data", &o->model))
        return -1;
    return setup_model(t);
}

/* A resumed run continues the metrics of the run it resumes; a fresh one
 * replaces an existing file only when told to. */
static OutfileMode metrics_mode(const TrainOptions *o)
{
    if (o->resume || o->metrics_append)
        return OUTFILE_APPEND;
    return o->metrics_overwrite ? OUTFILE_OVERWRITE : OUTFILE_NEW;
}

/* Opened last, once the run is sure to start: a run refused for its
 * checkpoints must not truncate the metrics of the run it would overwrite.
 * --dump-params is only checked: it is written at the end. */
static int open_outputs(Trainer *t)
{
    const TrainOptions *o = &t->opt;
    char tiers[2][PATH_MAX], err[2 * PATH_MAX + 256];
    bool failed = false;
    if (t->rank == 0 && o->dump_params_path) {
        OutfilePolicy dump = report_output_policy(t, "--dump-params", OUTFILE_OVERWRITE, tiers);
        failed = outfile_check(&dump, o->dump_params_path, err, sizeof(err)) != 0;
    }
    if (t->rank == 0 && !failed && o->metrics_path) {
        OutfilePolicy metrics = report_output_policy(t, "--metrics", metrics_mode(o), tiers);
        failed = !(t->metrics = outfile_open(&metrics, o->metrics_path, err, sizeof(err)));
    }
    if (failed)
        fprintf(stderr, "phalanx train: %s\n", err);
    if (trainer_world_sum(t, failed) == 0)
        return 0;
    snapshot_close(t, false);
    return -1;
}

int trainer_setup(Trainer *t)
{
    int world = comm_size(t->world);
    t->rank = comm_rank(t->world);
    if (options_resolve_layout(&t->opt, world, &t->layout))
        return -1; /* every rank sees the same options: all stop here */
    t->coord = layout_coord(t->layout, t->rank);
    int failed = setup_rank(t) != 0;
    // every rank learns whether any rank failed, so none waits in a collective for it
    double failures = trainer_world_sum(t, failed);
    if (failures == 0)
        return snapshot_setup(t) || open_outputs(t) ? -1 : 0;
    if (t->rank == 0 && !failed)
        fprintf(stderr, "phalanx train: %.0f rank(s) failed to start; see their messages\n",
                failures);
    return -1;
}

void trainer_teardown(Trainer *t)
{
    free(t->ckpt_tensors);
    if (t->metrics)
        fclose(t->metrics);
    if (t->dev) {
        device_free(t->dev, t->m);
        device_free(t->dev, t->v);
        device_free(t->dev, t->grad_snapshot);
        if (t->host_state)
            device_host_free(t->dev, t->host_state);
    }
    free(t->optim_tensors);
    zero_free(&t->zero);
    pipeline_free(&t->pipe);
    gpt_free(&t->gpt);
    free(t->window_tokens);
    free(t->window_targets);
    tokendata_close(&t->train);
    tokendata_close(&t->val);
    free_data_group(t->pp_data, t->pp);
    free_data_group(t->sp_data, t->sp);
    free_data_group(t->dpsp_data, t->dpsp);
    free_data_group(t->tied_data, t->tied);
    device_close(t->dev);
    comm_free(t->dp);
    comm_free(t->pp);
    comm_free(t->sp);
    comm_free(t->dpsp);
    comm_free(t->tied);
    channel_close(&t->channel);
}
