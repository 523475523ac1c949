/*
 * batch: the adaptive batch-size controller (gradient noise scale and the
 * norm test) and the learning-rate scaling that follows the batch.
 *
 * Estimator (McCandlish et al. 2018, App. A.1): at one set of weights, with
 * |G_s|^2 the squared norm of the mean gradient of a small batch of B_s
 * samples and |G_b|^2 that of the big batch of B_b samples,
 *     |G|^2     ~ (B_b |G_b|^2 - B_s |G_s|^2) / (B_b - B_s)
 *     tr(Sigma) ~ (|G_s|^2 - |G_b|^2) / (1/B_s - 1/B_b)
 * are unbiased; both go through separate bias-corrected exponential moving
 * averages (single estimates are noisy and may be negative), and
 *     B_simple = EMA(tr Sigma) / EMA(|G|^2).
 * The runtime takes the small batch to be the step's first micro-batch (the
 * same samples in every layout) and the big batch the whole global batch.
 *
 * Norm test (Byrd et al.; AdAdaGrad, Lau et al.): the batch is large enough
 * when B >= tr(Sigma) / (eta^2 |G|^2) = B_simple / eta^2. When it is not,
 * the batch grows to that size rounded up to a multiple of `quantum`, capped
 * at `max_batch`; it never shrinks.
 *
 * The controller is plain data: copying it (into a checkpoint) copies its state.
 */
#ifndef PHALANX_BATCH_H
#define PHALANX_BATCH_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { LR_SCALING_NONE = 0, LR_SCALING_SQRT = 1, LR_SCALING_LINEAR = 2 } LrScaling;

typedef struct {
    /* settings */
    bool adaptive;
    int start_batch, max_batch, quantum;
    double eta;   /* norm-test tolerance (> 0) */
    double decay; /* EMA decay of the two estimates, e.g. 0.9 */
    /* state */
    int batch;               /* the global batch of the coming steps */
    double ema_noise, ema_signal; /* EMAs of tr(Sigma) and |G|^2 (bias-corrected on use) */
    double ema_weight;       /* 1 - decay^updates: the bias correction */
    long updates;
} BatchController;

/* Fills settings and the initial state (batch = start_batch). */
void batch_init(BatchController *c, bool adaptive, int start_batch, int max_batch, int quantum,
                double eta, double decay);

/* Feeds one measurement; returns the current B_simple estimate (NAN until it
 * is defined: no update yet, or a non-positive |G|^2 average). */
double batch_observe(BatchController *c, double small_sqnorm, int small_batch,
                     double big_sqnorm, int big_batch);

/* The current noise-scale estimate, as batch_observe returned last. */
double batch_noise_scale(const BatchController *c);

/* Applies the norm test (adaptive only): may raise c->batch. Returns true when it grew. */
bool batch_decide(BatchController *c);

/* The state an earlier run saved, as read back (doubles, so that a value
 * beyond an int is seen before any conversion): batch an integer in
 * [1, INT_MAX], the EMAs finite, ema_weight in [0, 1], updates an integer in
 * [0, 2^53]. Returns 0, or -1 with a message naming the field in err. */
int batch_state_check(double batch, double ema_noise, double ema_signal, double ema_weight,
                      double updates, char *err, size_t err_len);

bool lr_scaling_parse(const char *text, LrScaling *out);
/* Multiplier of the learning rate at `batch` for a schedule tuned at `base_batch`. */
double lr_scale(LrScaling scaling, int batch, int base_batch);

#endif
