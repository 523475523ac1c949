/* The header, progress line and metrics rows of a run (contract in report.h). */
#include "report.h"

#include "snapshot.h"

#include <math.h>
#include <stdio.h>

/* rank 0's lines go to the launcher when there is one, else to stdout */
void report_line(Trainer *t, long step, const char *line)
{
    if (t->rank != 0 || t->opt.quiet)
        return;
    if (channel_connected(&t->channel)) {
        if (step > 0)
            channel_send(&t->channel, "progress %ld %s", step, line);
        else
            channel_send(&t->channel, "log %s", line);
        return;
    }
    printf("%s\n", line);
    fflush(stdout);
}

/* Where an output file may go: never into a checkpoint tier, whose files
 * pruning removes. `tiers` holds the directories the policy points to. */
OutfilePolicy report_output_policy(const Trainer *t, const char *flag, OutfileMode mode,
                                   char tiers[2][PATH_MAX])
{
    ckpt_tier_dirs(&t->opt.ckpt, tiers[0], PATH_MAX, tiers[1], PATH_MAX);
    return (OutfilePolicy){flag, mode,
                           "pass --metrics-overwrite to replace it, --metrics-append (or "
                           "--resume) to continue it, or name another file",
                           {tiers[0], tiers[1]}};
}

/* Closes the metrics file; -1 when it is, or was earlier, lost to a write
 * error (the message is printed once, when that happens). */
int report_close_metrics(Trainer *t)
{
    char err[PATH_MAX + 256];
    if (t->metrics && outfile_close(t->metrics, t->opt.metrics_path, err, sizeof(err)) != 0) {
        fprintf(stderr, "phalanx train: --metrics: %s; no further rows are written and the "
                        "run ends with status 1\n", err);
        t->metrics_lost = true;
    }
    t->metrics = NULL;
    return t->metrics_lost ? -1 : 0;
}

/* The moments m and v this rank holds: its shard under --zero 1. */
static size_t optimizer_bytes(const Trainer *t)
{
    return t->sharded ? zero_state_bytes(&t->zero) : 2 * t->gpt.param_count * sizeof(float);
}

void report_metrics_row(Trainer *t, const StepReport *r)
{
    FILE *f = t->metrics;
    if (!f)
        return;
    double tokens = (double)r->batch * t->opt.model.seq_len;
    // JSON has no NaN or infinity: a value that is not finite is null
    fprintf(f, "{\"step\": %ld, \"samples\": %llu", r->step, (unsigned long long)t->cursor);
    outfile_json_number(f, "loss", r->loss, -1);
    outfile_json_number(f, "lr", r->lr, -1);
    fprintf(f, ", \"global_batch\": %d", r->batch);
    // the elastic agent shrinks and grows the run: its size at every step
    const Layout *l = &t->layout;
    fprintf(f, ", \"world\": %d, \"layout\": \"%dx%dx%d\"", l->dp * l->pp * l->sp, l->dp, l->pp,
            l->sp);
    outfile_json_number(f, "tokens_per_s", tokens / r->seconds, 1);
    outfile_json_number(f, "grad_norm", r->grad_norm, -1);
    outfile_json_number(f, "step_ms", r->seconds * 1e3, 3);
    outfile_json_number(f, "grad_comm_ms", r->comm_seconds * 1e3, 3);
    outfile_json_number(f, "ckpt_stall_ms", r->ckpt_stall_seconds * 1e3, 3);
    outfile_json_number(f, "activation_mib", pipeline_activation_bytes(&t->pipe) / 1048576.0, 3);
    outfile_json_number(f, "optimizer_mib", optimizer_bytes(t) / 1048576.0, 3);
    fprintf(f, ", \"live_activations\": [");
    for (int i = 0; i < t->layout.pp; i++)
        fprintf(f, "%s%d", i ? ", " : "", r->live_activations[i]);
    fprintf(f, "]");
    // the controller's current estimate at every step; "noise_measured" marks
    // the steps that fed it a new measurement
    double noise = t->opt.batch_adaptive ? batch_noise_scale(&t->batch) : NAN;
    if (isfinite(noise))
        outfile_json_number(f, "noise_scale", noise, -1);
    if (r->measured)
        fprintf(f, ", \"noise_measured\": true");
    long tier2, tier1;
    snapshot_committed(t, &tier2, &tier1);
    if (t->ckpt) /* how far the background flushes are behind: timing, not the run */
        fprintf(f, ", \"ckpt_committed\": [%ld, %ld]", tier1, tier2);
    if (r->has_val)
        outfile_json_number(f, "val_loss", r->val_loss, -1);
    fprintf(f, "}\n");
    char err[PATH_MAX + 256];
    if (outfile_flush(f, t->opt.metrics_path, err, sizeof(err)) != 0) {
        // training goes on (its checkpoints are what count); the exit status tells
        fprintf(stderr, "phalanx train: --metrics: %s; no further rows are written and the "
                        "run ends with status 1\n", err);
        fclose(f);
        t->metrics = NULL;
        t->metrics_lost = true;
    }
}

/* The share of the run done, by whichever limit comes first. */
double report_run_progress(const Trainer *t)
{
    double by_samples = (double)t->cursor / t->opt.train_samples;
    double by_steps = (double)t->steps_done / t->opt.steps;
    return by_steps > by_samples ? by_steps : by_samples;
}

/* `elapsed` seconds took this process from progress `began` to now. */
void report_progress(Trainer *t, const StepReport *r, double elapsed, double began)
{
    char line[512], ckpt[64];
    double tokens = (double)r->batch * t->opt.model.seq_len;
    double done = report_run_progress(t);
    double eta = done > began ? elapsed / (done - began) * (1.0 - done) : 0.0;
    snapshot_describe(t, ckpt, sizeof(ckpt));
    int used = snprintf(line, sizeof(line),
                        "step %5ld/%ld | loss %.4f | lr %.2e | batch %d | %.0f tok/s | "
                        "grad %.3f | %s | ETA %dm%02ds",
                        r->step, t->opt.steps, r->loss, r->lr, r->batch,
                        tokens / r->seconds, r->grad_norm, ckpt, (int)(eta / 60), (int)eta % 60);
    if (r->has_val)
        snprintf(line + used, sizeof(line) - (size_t)used, " | val %.4f", r->val_loss);
    report_line(t, r->step, line);
}

void report_header(Trainer *t)
{
    const TrainOptions *o = &t->opt;
    char line[768];
    snprintf(line, sizeof(line),
             "phalanx train: %zu parameters (%d layers, %d heads, width %d, seq %d, vocab %d); "
             "%s, global batch %d (micro-batch %d); layout dp=%d pp=%d sp=%d on %d rank(s); "
             "%zu training windows; activation memory %.1f MiB, optimizer state %.1f MiB%s "
             "per rank; device %s",
             t->gpt.param_count, o->model.layers, o->model.heads, o->model.dim,
             o->model.seq_len, o->model.vocab, optim_kind_name(o->optim.kind), o->global_batch,
             o->micro_batch, t->layout.dp, t->layout.pp, t->layout.sp, comm_size(t->world),
             t->train_windows, pipeline_activation_bytes(&t->pipe) / 1048576.0,
             optimizer_bytes(t) / 1048576.0, t->sharded ? " (ZeRO-1)" : "", t->dev->name);
    report_line(t, 0, line);
}
