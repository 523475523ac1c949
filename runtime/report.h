/*
 * report: what a run tells its user and its launcher (runtime/report.c).
 * Rank 0 alone writes: the header line, one progress line per step, and the
 * --metrics rows (JSON lines, one per step). Its lines go to the launcher
 * over the channel when there is one, else to stdout; --quiet silences them.
 * Private to runtime/.
 */
#ifndef PHALANX_REPORT_H
#define PHALANX_REPORT_H

#include "outfile.h"
#include "trainer.h"

#include <limits.h>
#include <stdbool.h>

/* What one optimizer step did: the training loop fills it, the reports read it. */
typedef struct {
    long step; /* 1-based: optimizer steps completed */
    double loss, lr, grad_norm, val_loss, seconds, comm_seconds;
    int batch;            /* the global batch of this step */
    bool measured;        /* the noise scale was estimated at this step */
    int live_activations[MAX_STAGES]; /* most activation sets alive, per stage */
    double ckpt_stall_seconds; /* the training thread blocked by checkpoints */
    bool has_val, stop;
    bool abandoned; /* a stop came between its micro-batches: nothing of it applied */
} StepReport;

/* Rank 0's line: a progress line of step `step` (> 0), else a log line. */
void report_line(Trainer *t, long step, const char *line);

/* The line that opens the run: model, layout, memory, device. */
void report_header(Trainer *t);

/* The progress line of step r->step, with an ETA: `elapsed` seconds took
 * this process from run progress `began` (report_run_progress) to now. */
void report_progress(Trainer *t, const StepReport *r, double elapsed, double began);

/* The share of the run done, by whichever limit (steps, samples) comes first. */
double report_run_progress(const Trainer *t);

/* Appends step r->step's row to --metrics, when open. A failed write closes
 * it, says so once, and sets t->metrics_lost: training goes on. */
void report_metrics_row(Trainer *t, const StepReport *r);

/* Closes --metrics; -1 when it is, or was earlier, lost to a write error. */
int report_close_metrics(Trainer *t);

/* The outfile.h policy of the run's output file `flag` (--metrics,
 * --dump-params): never inside a checkpoint tier, whose files pruning
 * removes. `tiers` holds the directories the policy points to. */
OutfilePolicy report_output_policy(const Trainer *t, const char *flag, OutfileMode mode,
                                   char tiers[2][PATH_MAX]);

#endif
