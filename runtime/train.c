/*
 * The training loop of one worker: the step (data -> forward/backward over
 * this replica's micro-batches -> gradient sum over dp x sp -> clip ->
 * optimizer, then validation) and the loop over steps. Its set-up and
 * tear-down are setup.c's, its lines and metrics rows report.c's, its
 * checkpoints snapshot.c's.
 *
 * Step s (0-based) consumes global samples [s * B, (s + 1) * B) with B the
 * global batch, in B / micro micro-batches; data-parallel replica r takes the
 * contiguous share [r * B / dp, (r + 1) * B / dp) of them. Sample g is window
 * sampler_window(seed, windows, g) of the training data. The objective is the
 * mean token loss over the whole global batch, so every token's loss carries
 * the gradient 1 / (B * T) on whichever rank computes it, and summing the
 * gradients over dp x sp gives the same gradient in every layout.
 */
#include "runtime.h"
#include "util.h"

#include "dump.h"
#include "report.h"
#include "snapshot.h"
#include "trainer.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int signo)
{
    stop_signal = signo;
}


// ----------------------------------------------------------------------------
// one step

/* Where a step's micro-batches come from: training samples from `first` on,
 * or validation micro-batches first_batch, first_batch + stride, ... */
typedef struct {
    Trainer *trainer;
    uint64_t first;
    int first_batch, stride;
} BatchSource;

/* Row b of the micro-batch: this rank's part of `window` (all of it when sp = 1). */
static void load_window(Trainer *t, const TokenData *data, size_t window, Activations *acts,
                        int b)
{
    int T = t->opt.model.seq_len, local_T = acts->T;
    tokendata_window(data, T, window, t->window_tokens, t->window_targets);
    size_t first = (size_t)t->coord.sp * local_T;
    memcpy(acts->tokens + (size_t)b * local_T, t->window_tokens + first, local_T * sizeof(int));
    memcpy(acts->targets + (size_t)b * local_T, t->window_targets + first, local_T * sizeof(int));
}

static void load_train_micro_batch(void *context, int index, Activations *acts)
{
    BatchSource *src = context;
    Trainer *t = src->trainer;
    channel_beat(&t->channel, t->steps_done);
    uint64_t first = src->first + (uint64_t)index * (uint64_t)acts->B;
    for (int b = 0; b < acts->B; b++)
        load_window(t, &t->train, sampler_window(t->opt.seed, t->train_windows, first + (uint64_t)b),
                    acts, b);
}

static void load_val_micro_batch(void *context, int index, Activations *acts)
{
    BatchSource *src = context;
    Trainer *t = src->trainer;
    channel_beat(&t->channel, t->steps_done);
    size_t batch = (size_t)src->first_batch + (size_t)index * (size_t)src->stride;
    for (int b = 0; b < acts->B; b++)
        load_window(t, &t->val, (batch * (size_t)acts->B + (size_t)b) % t->val_windows, acts, b);
}

/* The two copies of wte (first stage: embedding, last stage: head) get the
 * sum of both gradients, as Megatron-LM does, so they never drift apart. */
static int sum_tied_gradients(Trainer *t)
{
    const ParamTensor *wte = trainer_tied_embedding(t);
    if (!wte || comm_size(t->tied) == 1)
        return 0;
    if (trainer_device_failed(t, "tied embedding gradients"))
        return -1;
    if (comm_allreduce(t->tied_data, t->gpt.grads + wte->offset, wte->numel, COMM_F32) == 0)
        return 0;
    fprintf(stderr, "phalanx train: rank %d: tied embedding gradients: %s\n", t->rank,
            comm_error(t->tied_data));
    return -1;
}

/* Sum of squares of a gradient buffer of this stage, without the last
 * stage's copy of wte (the first stage counts it). */
static double stage_sumsq(const Trainer *t, const float *grads)
{
    const ParamTensor *wte = trainer_tied_embedding(t);
    OptimTensor *views = calloc((size_t)t->gpt.tensor_count, sizeof(OptimTensor));
    if (!views)
        return NAN;
    int count = 0;
    for (int i = 0; i < t->gpt.tensor_count; i++) {
        const ParamTensor *p = &t->gpt.tensors[i];
        if (p == wte && t->coord.pp != 0)
            continue;
        views[count++] = (OptimTensor){.grad = (float *)grads + p->offset, .numel = p->numel};
    }
    double sum = device_optim_grad_sumsq(t->dev, views, count);
    free(views);
    return sum;
}

/* Sharded: the squares of this rank's summed pieces, added over dp x sp
 * (without the last stage's wte, as stage_sumsq). */
static double shard_sumsq(Trainer *t)
{
    const ParamTensor *wte = trainer_tied_embedding(t);
    double sum = 0.0;
    for (int i = 0; i < t->gpt.tensor_count; i++)
        if (!(&t->gpt.tensors[i] == wte && t->coord.pp != 0))
            sum += device_optim_grad_sumsq(t->dev, &t->zero.tensors[i], 1);
    if (zero_sum(&t->zero, &sum, 1) == 0)
        return sum;
    fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, t->zero.error);
    return NAN;
}

/* Sum of squared gradients over the whole model: each stage's own, wte once. */
static double global_grad_sumsq(Trainer *t)
{
    double local = t->sharded ? shard_sumsq(t) : stage_sumsq(t, t->gpt.grads);
    if (comm_size(t->pp) > 1 && comm_allreduce(t->pp, &local, 1, COMM_F64) != 0) {
        fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, comm_error(t->pp));
        return NAN;
    }
    return local;
}

/* The update: whole tensors, or (sharded) this rank's pieces with LAMB's
 * partial squares summed over dp x sp, then every rank's pieces gathered. */
static int optimizer_step(Trainer *t, float lr, long step, float clip_scale)
{
    const OptimConfig *cfg = &t->opt.optim;
    Zero *z = &t->zero;
    if (!t->sharded) {
        device_optim_step(t->dev, cfg, t->optim_tensors, t->gpt.tensor_count, lr, step, clip_scale);
        return 0;
    }
    optim_step_begin(cfg, z->tensors, t->gpt.tensor_count, lr, step, clip_scale, z->sums);
    if (zero_sum(z, z->sums, 2 * t->gpt.tensor_count) == 0) {
        optim_step_end(cfg, z->tensors, t->gpt.tensor_count, lr, step, clip_scale, z->sums);
        if (zero_allgather(z) == 0)
            return 0;
    }
    fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, z->error);
    return -1;
}

/* The squared norm of the step's first micro-batch gradient (the same
 * samples in every layout): replica 0 holds it right after that micro-batch's
 * backward pass, split over its stages and, under sp, over its sp ranks. */
static void measure_first_micro_batch(void *context)
{
    Trainer *t = context;
    if (t->coord.dp != 0)
        return;
    const float *grads = t->gpt.grads;
    if (t->layout.sp > 1) {
        device_copy(t->dev, t->grad_snapshot, grads, t->gpt.param_count * sizeof(float));
        if (device_sync(t->dev) != 0 ||
            comm_allreduce(t->sp_data, t->grad_snapshot, t->gpt.param_count, COMM_F32) != 0) {
            t->small_sumsq = NAN;
            return;
        }
        grads = t->grad_snapshot;
    }
    if (t->coord.sp == 0)
        t->small_sumsq = stage_sumsq(t, grads);
}

/* A stop is honoured between groups of this many micro-batches, so a step of
 * millions of them (or an evaluation as long) still stops within one group.
 * Each group is a whole 1F1B pass with its own pipeline fill and drain: as
 * many as the deepest pipeline keeps that bubble small, and a step that fits
 * one group runs as before. Gradients and losses add up in the same order
 * either way. */
#define MICRO_BATCHES_PER_GROUP MAX_STAGES

/* How a step's (or an evaluation's) groups of micro-batches ended; every rank
 * sees the same outcome except GROUPS_FAILED_HERE, the rank that failed.
 * GROUPS_ORPHANED: some rank's launcher is gone; every rank stops without
 * another checkpoint (stop_orphaned). */
enum { GROUPS_FAILED_HERE = -1, GROUPS_DONE, GROUPS_STOPPED, GROUPS_FAILED_ELSEWHERE,
       GROUPS_ORPHANED };

static void stop_orphaned(Trainer *t, bool lost_here);

static bool stop_wanted(Trainer *t)
{
    return stop_signal != 0 || channel_stop_requested(&t->channel);
}

/* Every rank, between two groups: a launcher lost anywhere stops every rank
 * within this group, not at the end of a step that may be long (a relaunch
 * may already be resuming); else a failure anywhere ends the step on every
 * rank (the failed one printed why), else a stop asked of any rank stops all.
 * GROUPS_DONE: go on. */
static int agree_between_groups(Trainer *t, bool failed_here)
{
    trainer_abort_if_comm_broken(t);
    bool orphaned = channel_launcher_lost(&t->channel);
    double values[3] = {stop_wanted(t) ? 1.0 : 0.0, failed_here ? 1.0 : 0.0,
                        orphaned ? 1.0 : 0.0};
    if (comm_allreduce(t->world, values, 3, COMM_F64) != 0) {
        trainer_abort_if_comm_broken(t);
        fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, comm_error(t->world));
        return GROUPS_FAILED_HERE;
    }
    if (values[2] > 0) {
        stop_orphaned(t, orphaned);
        return GROUPS_ORPHANED;
    }
    if (failed_here)
        return GROUPS_FAILED_HERE;
    if (values[1] > 0)
        return GROUPS_FAILED_ELSEWHERE;
    return values[0] > 0 ? GROUPS_STOPPED : GROUPS_DONE;
}

static int min_int(int a, int b)
{
    return a < b ? a : b;
}

/* The step's `count` micro-batches of this replica, in groups; the gradient
 * sync overlaps the last group's backward pass. */
static int micro_batch_groups(Trainer *t, int count, const BatchSource *src, float dloss,
                              double weight, double *loss_share)
{
    int live_max = 0;
    for (int done = 0;; done += MICRO_BATCHES_PER_GROUP) {
        int n = min_int(MICRO_BATCHES_PER_GROUP, count - done);
        bool last = done + n == count;
        BatchSource group = *src;
        group.first += (uint64_t)done * (uint64_t)t->opt.micro_batch;
        bool failed = pipeline_train_step(&t->pipe, n, load_train_micro_batch, &group, dloss,
                                          weight, last ? &t->sync : NULL, loss_share) != 0;
        if (failed)
            fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, t->pipe.error);
        if (t->pipe.live_max > live_max)
            live_max = t->pipe.live_max;
        t->pipe.live_max = live_max;
        t->pipe.after_first_backward = NULL; /* it measures the step's first micro-batch */
        if (last)
            return failed ? GROUPS_FAILED_HERE : GROUPS_DONE;
        int next = agree_between_groups(t, failed);
        if (next != GROUPS_DONE)
            return next;
    }
}

/* Forward and backward over this replica's micro-batches (1F1B over the
 * stages), gradients summed over dp x sp and between the copies of wte.
 * Adds this rank's share of the global mean loss to *loss_share; returns
 * GROUPS_DONE, GROUPS_STOPPED or GROUPS_FAILED_ELSEWHERE (on every rank), or
 * -1 after printing what failed here. */
static int compute_gradients(Trainer *t, StepReport *r, double *loss_share)
{
    const TrainOptions *o = &t->opt;
    int B = r->batch, per_replica = B / o->micro_batch / t->layout.dp;
    float dloss = 1.0f / ((float)B * (float)o->model.seq_len);
    BatchSource src = {t, t->cursor + (uint64_t)t->coord.dp * (uint64_t)per_replica *
                                          (uint64_t)o->micro_batch,
                       0, 1};
    gpt_zero_grad(&t->gpt);
    gradsync_begin(&t->sync);
    t->small_sumsq = 0.0;
    t->pipe.after_first_backward = r->measured ? measure_first_micro_batch : NULL;
    t->pipe.hook_context = t;
    // each rank's micro-batch loss is the mean over its B x T/sp tokens
    double weight = (double)o->micro_batch / B / t->layout.sp;
    int groups = micro_batch_groups(t, per_replica, &src, dloss, weight, loss_share);
    if (groups != GROUPS_DONE)
        return groups == GROUPS_FAILED_HERE ? -1 : groups;
    if (gradsync_finish(&t->sync)) {
        fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, t->sync.error);
        return -1;
    }
    if (sum_tied_gradients(t) || trainer_device_failed(t, "forward and backward"))
        return -1;
    if (t->sharded && zero_reduce_scatter(&t->zero)) {
        fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, t->zero.error);
        return -1;
    }
    r->comm_seconds = t->sync.comm_seconds;
    return 0;
}

/* This replica's validation batches in [first, end) (replica r takes
 * batches r, r + dp, ...) added to *share; false after printing a failure. */
static bool evaluate_group(Trainer *t, long first, long end, double *share)
{
    long dp = t->layout.dp, k = first + ((t->coord.dp - first) % dp + dp) % dp;
    int count = k < end ? (int)((end - 1 - k) / dp + 1) : 0;
    BatchSource src = {t, 0, (int)k, (int)dp};
    if (pipeline_eval(&t->pipe, count, load_val_micro_batch, &src,
                      1.0 / t->opt.eval_batches / t->layout.sp, share)) {
        fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, t->pipe.error);
        return false;
    }
    return trainer_device_failed(t, "validation") == 0;
}

/* Validation loss into *val_loss, summed over the world (NaN when a rank
 * failed), in groups of batches with a stop check between them. Returns
 * GROUPS_STOPPED or GROUPS_ORPHANED on every rank when that was agreed, else
 * GROUPS_DONE. */
static int evaluate(Trainer *t, double *val_loss)
{
    long total = t->opt.eval_batches;
    double share = 0.0;
    for (long first = 0; first < total; first += MICRO_BATCHES_PER_GROUP) {
        long end = first + MICRO_BATCHES_PER_GROUP < total ? first + MICRO_BATCHES_PER_GROUP
                                                            : total;
        bool failed = !evaluate_group(t, first, end, &share);
        int next = end == total ? GROUPS_DONE : agree_between_groups(t, failed);
        if (next == GROUPS_STOPPED || next == GROUPS_ORPHANED)
            return next;
        if (failed || next != GROUPS_DONE) {
            share = NAN;
            break;
        }
    }
    *val_loss = trainer_world_sum(t, share);
    return GROUPS_DONE;
}


/* The launcher is gone (killed, or silent): no one would act on this run
 * any more, and a relaunch may already resume from its checkpoints, so
 * every rank stops at this step without committing another one. */
static void stop_orphaned(Trainer *t, bool lost_here)
{
    if (lost_here)
        fprintf(stderr, "phalanx train: rank %d: %s; stopping after step %ld without another "
                        "checkpoint\n", t->rank, t->channel.lost_why, t->steps_done);
    if (t->ckpt)
        ckpt_abandon(t->ckpt);
}

/* The step's numbers every rank must agree on: loss, whether to stop, and
 * whether any rank failed (then all stop; the failed ones said why). */
static int agree_on_step(Trainer *t, double loss_share, bool failed, StepReport *r)
{
    trainer_abort_if_comm_broken(t);
    bool stop = stop_wanted(t), orphaned = channel_launcher_lost(&t->channel);
    double values[5] = {loss_share, stop ? 1.0 : 0.0, t->small_sumsq, failed ? 1.0 : 0.0,
                        orphaned ? 1.0 : 0.0};
    if (comm_allreduce(t->world, values, 5, COMM_F64) != 0) {
        trainer_abort_if_comm_broken(t);
        fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, comm_error(t->world));
        return -1;
    }
    if (values[4] > 0) {
        stop_orphaned(t, orphaned);
        return -1;
    }
    if (values[3] > 0) {
        if (t->rank == 0 && !failed)
            fprintf(stderr, "phalanx train: step %ld failed on %.0f rank(s); see their "
                            "messages\n", r->step, values[3]);
        return -1;
    }
    r->loss = values[0];
    r->stop = values[1] > 0;
    t->small_sumsq = values[2];
    return 0;
}

/* Each stage's most live activation sets in this step, known to every rank. */
static int gather_live_activations(Trainer *t, StepReport *r)
{
    double live[MAX_STAGES] = {0};
    if (t->coord.dp == 0 && t->coord.sp == 0)
        live[t->coord.pp] = t->pipe.live_max;
    if (comm_allreduce(t->world, live, (size_t)t->layout.pp, COMM_F64) != 0) {
        fprintf(stderr, "phalanx train: rank %d: %s\n", t->rank, comm_error(t->world));
        return -1;
    }
    for (int i = 0; i < t->layout.pp; i++)
        r->live_activations[i] = (int)live[i];
    return 0;
}

static int check_finite(const Trainer *t, const StepReport *r)
{
    if (isfinite(r->loss) && isfinite(r->grad_norm))
        return 0;
    double bad = isfinite(r->loss) ? r->grad_norm : r->loss;
    if (t->rank == 0)
        fprintf(stderr,
                "phalanx train: the %s is %s at step %ld: training diverged; lower --lr "
                "(now %g) or use --clip\n",
                isfinite(r->loss) ? "gradient norm" : "loss", isnan(bad) ? "NaN" : "infinite",
                r->step, t->opt.lr);
    return -1;
}

/* Feeds the noise-scale estimate and lets the controller grow the batch of
 * the steps that follow. The first micro-batch's gradient was summed with
 * weight 1 / (B T) per token: times B / micro it is that micro-batch's mean. */
static void update_batch(Trainer *t, StepReport *r)
{
    if (!r->measured)
        return;
    double scale = (double)r->batch / t->opt.micro_batch;
    batch_observe(&t->batch, t->small_sumsq * scale * scale, t->opt.micro_batch,
                  r->grad_norm * r->grad_norm, r->batch);
    batch_decide(&t->batch);
}

static int train_step(Trainer *t, long step_index, StepReport *r)
{
    const TrainOptions *o = &t->opt;
    double start = util_now_seconds();
    r->step = step_index + 1;
    r->batch = t->batch.batch;
    r->measured = o->batch_adaptive && step_index % o->batch_check == 0 && r->batch > o->micro_batch;
    fault_step_begin(&t->faults);
    double loss_share = 0.0;
    int computed = compute_gradients(t, r, &loss_share);
    if (computed == GROUPS_STOPPED) {
        r->step = t->steps_done;
        r->stop = r->abandoned = true;
        r->has_val = false;
        return 0;
    }
    if (computed == GROUPS_ORPHANED)
        return -1;
    bool failed = computed == GROUPS_FAILED_HERE; /* elsewhere: agree_on_step hears of it */
    fault_mid_step(&t->faults, &t->channel, t->world, r->step);
    if (agree_on_step(t, loss_share, failed, r) || gather_live_activations(t, r))
        return -1;
    // every rank of dp x sp now holds the same summed gradients of its stage
    r->grad_norm = sqrt(global_grad_sumsq(t));
    if (check_finite(t, r))
        return -1;
    float clip_scale = optim_clip_scale(r->grad_norm, o->clip);
    t->cursor += (uint64_t)r->batch;
    r->lr = schedule_lr(&t->schedule, (double)t->cursor) *
            lr_scale(o->lr_scaling, r->batch, o->global_batch);
    // the sidecar may still be copying the previous version of params, m, v
    r->ckpt_stall_seconds = snapshot_before_update(t);
    if (optimizer_step(t, (float)r->lr, r->step, clip_scale))
        return -1;
    update_batch(t, r);
    t->steps_done = r->step;
    bool last = r->step == o->steps || t->cursor >= (uint64_t)o->train_samples;
    r->has_val = o->val_data && (last || (o->eval_every && r->step % o->eval_every == 0));
    // before the checkpoint: a stop during the evaluation ends the run at this
    // step, with this step's checkpoint, as a stop during its training does
    int evaluated = r->has_val ? evaluate(t, &r->val_loss) : GROUPS_DONE;
    if (evaluated == GROUPS_ORPHANED)
        return -1;
    if (evaluated == GROUPS_STOPPED) {
        r->has_val = false;
        r->stop = true;
    }
    r->ckpt_stall_seconds += snapshot_after_update(t, last || r->stop);
    fault_step_end(&t->faults);
    r->seconds = util_now_seconds() - start;
    return 0;
}

// ----------------------------------------------------------------------------
// the loop

/* Rank 0 tells the launcher the newest memory checkpoint that is on two
 * hosts: after a host loss only the survivors' memory holds it, which the
 * launcher cannot see, and it must relaunch with --resume latest. */
static void announce_replicated_commit(Trainer *t)
{
    if (!t->ckpt || !ckpt_stats(t->ckpt).replicated)
        return;
    long tier2, tier1;
    snapshot_committed(t, &tier2, &tier1);
    if (tier1 >= 0)
        channel_send(&t->channel, "committed %ld", tier1);
}

static int finish(Trainer *t, const StepReport *r, double seconds)
{
    char line[256];
    int used = snprintf(line, sizeof(line), "%s: %ld steps in %.1f s, final loss %.4f",
                        r->stop ? "stopped" : "done", r->step, seconds, r->loss);
    if (r->has_val)
        snprintf(line + used, sizeof(line) - (size_t)used, ", validation loss %.4f", r->val_loss);
    report_line(t, 0, line);
    bool dumped = !t->opt.dump_params_path || dump_params(t, t->opt.dump_params_path) == 0;
    if (report_close_metrics(t) != 0 || !dumped)
        return 1;
    if (r->stop)
        return 128 + (stop_signal ? stop_signal : SIGTERM);
    return 0;
}

/* A stop inside a step drops that step and ends the run at the one before,
 * which gets the checkpoint a stop at its end would have given it, unless it
 * has one in tier 2 already (--ckpt-every, --ckpt-durable-every) or this
 * process did not train it (step 0, or the step it resumed from). */
static void checkpoint_before_dropped_step(Trainer *t, long first_step)
{
    if (t->ckpt && t->steps_done > first_step && !ckpt_durable_due(t->ckpt, t->steps_done))
        snapshot_after_update(t, true);
}

static int run_training(Trainer *t)
{
    report_header(t);
    double start = util_now_seconds(), began = report_run_progress(t);
    long first_step = t->steps_done;
    StepReport report = {.step = t->steps_done};
    for (long s = t->steps_done; s < t->opt.steps && t->cursor < (uint64_t)t->opt.train_samples;
         s++) {
        if (train_step(t, s, &report)) {
            trainer_abort_if_comm_broken(t); /* before the checkpoint's collectives */
            snapshot_close(t, false);
            return 1;
        }
        if (report.abandoned) {
            checkpoint_before_dropped_step(t, first_step);
            break;
        }
        if (t->rank == 0)
            report_metrics_row(t, &report);
        report_progress(t, &report, util_now_seconds() - start, began);
        if (t->rank == 0) { /* even under --quiet: the launcher's timeline */
            channel_send(&t->channel, "step %ld", report.step);
            announce_replicated_commit(t);
        }
        channel_beat(&t->channel, t->steps_done);
        if (report.stop)
            break;
    }
    if (trainer_device_failed(t, "the last optimizer step")) {
        snapshot_close(t, false);
        return 1;
    }
    int saved = snapshot_close(t, !report.stop);
    int status = finish(t, &report, util_now_seconds() - start);
    return status == 0 && saved != 0 ? 1 : status;
}

int train_main(int argc, char **argv)
{
    Trainer trainer;
    memset(&trainer, 0, sizeof(trainer));
    int parsed = options_parse(&trainer.opt, argc, argv);
    if (parsed != 0)
        return parsed > 0 ? 0 : 2;
    char err[512];
    trainer.world = comm_world_init(&argc, &argv, err, sizeof(err));
    if (!trainer.world) {
        fprintf(stderr, "phalanx train: %s\n", err);
        return 1;
    }
    signal(SIGINT, on_stop_signal);
    signal(SIGTERM, on_stop_signal);
    // past a file-size limit a write fails with EFBIG, which the run reports
    signal(SIGXFSZ, SIG_IGN);
    int status = trainer_setup(&trainer) ? 1 : run_training(&trainer);
    fault_report(&trainer.faults);
    channel_send(&trainer.channel, "done %d %d", trainer.rank, status);
    trainer_teardown(&trainer);
    comm_world_finalize(trainer.world);
    return status;
}
