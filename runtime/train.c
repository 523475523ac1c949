/*
 * The training loop of one worker: data -> forward/backward over the step's
 * micro-batches -> clip -> optimizer, with progress, metrics and validation.
 *
 * Step s (0-based) consumes global samples [s * B, (s + 1) * B) with B the
 * global batch; sample g is window sampler_window(seed, windows, g) of the
 * training data. The objective is the mean token loss over the whole global
 * batch, so each token's loss carries the gradient 1 / (B * T).
 */
#include "runtime.h"

#include "data.h"
#include "gpt.h"
#include "kernels.h"
#include "optim.h"
#include "options.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    TrainOptions opt;
    TokenData train, val;
    size_t train_windows, val_windows;
    GPT gpt;
    Activations acts;
    Scratch scratch;
    float *m, *v;
    OptimTensor *optim_tensors;
    Schedule schedule;
    FILE *metrics;
} Trainer;

typedef struct {
    long step; /* 1-based: optimizer steps completed */
    double loss, lr, grad_norm, val_loss, seconds;
    bool has_val;
} StepReport;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ----------------------------------------------------------------------------
// set-up

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

static int setup_optimizer(Trainer *t)
{
    GPT *gpt = &t->gpt;
    t->m = calloc(gpt->param_count, sizeof(float));
    t->v = calloc(gpt->param_count, sizeof(float));
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
    const TrainOptions *o = &t->opt;
    t->schedule = (Schedule){
        .kind = o->schedule,
        .lr_max = o->lr,
        .min_ratio = o->min_lr_ratio,
        .warmup = (double)o->warmup * o->global_batch,
        .total = (double)o->steps * o->global_batch,
        .decay_fraction = o->decay_fraction,
    };
    return 0;
}

static int trainer_setup(Trainer *t)
{
    const TrainOptions *o = &t->opt;
    kernels_set_threads(o->threads);
    if (open_data(&t->train, &t->train_windows, o->data, "--data", &o->model))
        return -1;
    if (o->val_data &&
        open_data(&t->val, &t->val_windows, o->val_data, "--val-data", &o->model))
        return -1;
    if (gpt_init_full(&t->gpt, &o->model) ||
        acts_init(&t->acts, &t->gpt, o->micro_batch, o->model.seq_len) ||
        scratch_init(&t->scratch, &t->gpt, o->micro_batch, o->model.seq_len) ||
        setup_optimizer(t)) {
        fprintf(stderr, "phalanx train: out of memory for this model and micro-batch\n");
        return -1;
    }
    gpt_init_params(&t->gpt, o->seed);
    if (o->metrics_path && !(t->metrics = fopen(o->metrics_path, "w"))) {
        fprintf(stderr, "phalanx train: --metrics: cannot write '%s'\n", o->metrics_path);
        return -1;
    }
    return 0;
}

static void trainer_teardown(Trainer *t)
{
    if (t->metrics)
        fclose(t->metrics);
    free(t->m);
    free(t->v);
    free(t->optim_tensors);
    scratch_free(&t->scratch);
    acts_free(&t->acts);
    gpt_free(&t->gpt);
    tokendata_close(&t->train);
    tokendata_close(&t->val);
}

// ----------------------------------------------------------------------------
// one step

/* Loads samples [first, first + B) (training order) into the activations. */
static void load_train_batch(Trainer *t, uint64_t first)
{
    int B = t->acts.B, T = t->acts.T;
    for (int b = 0; b < B; b++) {
        size_t window = sampler_window(t->opt.seed, t->train_windows, first + (uint64_t)b);
        tokendata_window(&t->train, T, window, t->acts.tokens + (size_t)b * T,
                         t->acts.targets + (size_t)b * T);
    }
}

/* Forward and backward over the step's micro-batches; returns the mean loss. */
static double accumulate_gradients(Trainer *t, long step_index)
{
    const TrainOptions *o = &t->opt;
    int accumulation = o->global_batch / o->micro_batch;
    float dloss = 1.0f / ((float)o->global_batch * (float)o->model.seq_len);
    uint64_t cursor = (uint64_t)step_index * (uint64_t)o->global_batch;
    double loss_sum = 0.0;
    gpt_zero_grad(&t->gpt);
    for (int k = 0; k < accumulation; k++) {
        load_train_batch(t, cursor + (uint64_t)k * o->micro_batch);
        loss_sum += gpt_forward(&t->gpt, &t->acts);
        gpt_backward(&t->gpt, &t->acts, &t->scratch, dloss);
    }
    return loss_sum / accumulation;
}

static double evaluate(Trainer *t)
{
    int B = t->acts.B, T = t->acts.T;
    double loss_sum = 0.0;
    for (int k = 0; k < t->opt.eval_batches; k++) {
        for (int b = 0; b < B; b++) {
            size_t window = ((size_t)k * B + b) % t->val_windows;
            tokendata_window(&t->val, T, window, t->acts.tokens + (size_t)b * T,
                             t->acts.targets + (size_t)b * T);
        }
        loss_sum += gpt_forward(&t->gpt, &t->acts);
    }
    return loss_sum / t->opt.eval_batches;
}

static void write_metrics(Trainer *t, const StepReport *r)
{
    if (!t->metrics)
        return;
    double tokens = (double)t->opt.global_batch * t->opt.model.seq_len;
    fprintf(t->metrics,
            "{\"step\": %ld, \"loss\": %.17g, \"lr\": %.17g, \"global_batch\": %d, "
            "\"tokens_per_s\": %.1f, \"grad_norm\": %.17g",
            r->step, r->loss, r->lr, t->opt.global_batch, tokens / r->seconds, r->grad_norm);
    if (r->has_val)
        fprintf(t->metrics, ", \"val_loss\": %.17g", r->val_loss);
    fprintf(t->metrics, "}\n");
    fflush(t->metrics);
}

static void print_progress(const Trainer *t, const StepReport *r, double elapsed)
{
    if (t->opt.quiet)
        return;
    double tokens = (double)t->opt.global_batch * t->opt.model.seq_len;
    double eta = elapsed / r->step * (t->opt.steps - r->step);
    printf("step %5ld/%ld | loss %.4f | lr %.2e | batch %d | %.0f tok/s | grad %.3f | "
           "ckpt off | ETA %dm%02ds",
           r->step, t->opt.steps, r->loss, r->lr, t->opt.global_batch, tokens / r->seconds,
           r->grad_norm, (int)(eta / 60), (int)eta % 60);
    if (r->has_val)
        printf(" | val %.4f", r->val_loss);
    printf("\n");
    fflush(stdout);
}

static int train_step(Trainer *t, long step_index, StepReport *r)
{
    const TrainOptions *o = &t->opt;
    double start = now_seconds();
    r->step = step_index + 1;
    r->loss = accumulate_gradients(t, step_index);
    r->grad_norm = sqrt(optim_grad_sumsq(t->optim_tensors, t->gpt.tensor_count));
    if (!isfinite(r->loss) || !isfinite(r->grad_norm)) {
        double bad = isfinite(r->loss) ? r->grad_norm : r->loss;
        fprintf(stderr,
                "phalanx train: the %s is %s at step %ld: training diverged; lower --lr "
                "(now %g) or use --clip\n",
                isfinite(r->loss) ? "gradient norm" : "loss", isnan(bad) ? "NaN" : "infinite",
                r->step, o->lr);
        return -1;
    }
    float clip_scale = optim_clip_scale(r->grad_norm, o->clip);
    r->lr = schedule_lr(&t->schedule, (double)r->step * o->global_batch);
    optim_step(&o->optim, t->optim_tensors, t->gpt.tensor_count, (float)r->lr, r->step,
               clip_scale);
    bool last = r->step == o->steps;
    r->has_val = o->val_data && (last || (o->eval_every && r->step % o->eval_every == 0));
    if (r->has_val)
        r->val_loss = evaluate(t);
    r->seconds = now_seconds() - start;
    return 0;
}

// ----------------------------------------------------------------------------
// output of the final parameters (for tests and for inspection)

static int dump_params(const GPT *gpt, const char *path)
{
    char manifest[4096];
    snprintf(manifest, sizeof(manifest), "%s.json", path);
    FILE *raw = fopen(path, "wb");
    FILE *json = fopen(manifest, "w");
    if (!raw || !json) {
        fprintf(stderr, "phalanx train: --dump-params: cannot write '%s'\n", path);
        if (raw)
            fclose(raw);
        if (json)
            fclose(json);
        return -1;
    }
    fwrite(gpt->params, sizeof(float), gpt->param_count, raw);
    gpt_write_manifest(gpt, json);
    fclose(raw);
    return fclose(json) == 0 ? 0 : -1;
}

// ----------------------------------------------------------------------------

static void print_header(const Trainer *t)
{
    const TrainOptions *o = &t->opt;
    if (o->quiet)
        return;
    printf("phalanx train: %zu parameters (%d layers, %d heads, width %d, seq %d, vocab %d); "
           "%s, global batch %d = %d x %d micro-batches; %zu training windows\n",
           t->gpt.param_count, o->model.layers, o->model.heads, o->model.dim,
           o->model.seq_len, o->model.vocab, optim_kind_name(o->optim.kind), o->global_batch,
           o->micro_batch, o->global_batch / o->micro_batch, t->train_windows);
}

static int run_training(Trainer *t)
{
    print_header(t);
    double start = now_seconds();
    StepReport report = {0};
    for (long s = 0; s < t->opt.steps; s++) {
        if (train_step(t, s, &report))
            return 1;
        write_metrics(t, &report);
        print_progress(t, &report, now_seconds() - start);
    }
    if (!t->opt.quiet) {
        printf("done: %ld steps in %.1f s, final loss %.4f", t->opt.steps,
               now_seconds() - start, report.loss);
        if (report.has_val)
            printf(", validation loss %.4f", report.val_loss);
        printf("\n");
    }
    if (t->opt.dump_params_path && dump_params(&t->gpt, t->opt.dump_params_path))
        return 1;
    return 0;
}

int train_main(int argc, char **argv)
{
    Trainer trainer;
    memset(&trainer, 0, sizeof(trainer));
    int parsed = options_parse(&trainer.opt, argc, argv);
    if (parsed != 0)
        return parsed > 0 ? 0 : 2;
    int status = trainer_setup(&trainer) ? 1 : run_training(&trainer);
    trainer_teardown(&trainer);
    return status;
}

int data_main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "prepare") == 0)
        return data_prepare_main(argc - 1, argv + 1);
    fprintf(stderr, "usage: phalanx data prepare --out DIR [options] TEXT_FILE...\n");
    return 2;
}
