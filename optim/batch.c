/* Adaptive batch-size controller and LR scaling (contract in batch.h). */
#include "batch.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

void batch_init(BatchController *c, bool adaptive, int start_batch, int max_batch, int quantum,
                double eta, double decay)
{
    memset(c, 0, sizeof(*c));
    c->adaptive = adaptive;
    c->start_batch = start_batch;
    c->max_batch = max_batch > start_batch ? max_batch : start_batch;
    c->quantum = quantum > 0 ? quantum : start_batch;
    c->eta = eta;
    c->decay = decay;
    c->batch = start_batch;
}

double batch_noise_scale(const BatchController *c)
{
    if (c->updates == 0)
        return NAN;
    double signal = c->ema_signal / c->ema_weight, noise = c->ema_noise / c->ema_weight;
    return signal > 0 ? noise / signal : NAN;
}

double batch_observe(BatchController *c, double small_sqnorm, int small_batch,
                     double big_sqnorm, int big_batch)
{
    if (big_batch <= small_batch)
        return batch_noise_scale(c); /* one batch size: nothing to difference */
    double bs = small_batch, bb = big_batch;
    double signal = (bb * big_sqnorm - bs * small_sqnorm) / (bb - bs);
    double noise = (small_sqnorm - big_sqnorm) / (1.0 / bs - 1.0 / bb);
    c->ema_signal = c->decay * c->ema_signal + (1.0 - c->decay) * signal;
    c->ema_noise = c->decay * c->ema_noise + (1.0 - c->decay) * noise;
    c->ema_weight = c->decay * c->ema_weight + (1.0 - c->decay);
    c->updates++;
    return batch_noise_scale(c);
}

bool batch_decide(BatchController *c)
{
    double noise_scale = batch_noise_scale(c);
    if (!c->adaptive || !isfinite(noise_scale) || c->batch >= c->max_batch)
        return false;
    double needed = noise_scale / (c->eta * c->eta);
    if (c->batch >= needed)
        return false;
    double quanta = ceil(needed / c->quantum);
    int grown = quanta * c->quantum >= c->max_batch ? c->max_batch : (int)quanta * c->quantum;
    if (grown <= c->batch)
        return false;
    c->batch = grown;
    return true;
}

static int out_of_range(const char *field, double value, double low, double high,
                        bool integer, char *err, size_t err_len)
{
    if (value >= low && value <= high && (!integer || value == floor(value)))
        return 0;
    snprintf(err, err_len, "'%s' is %g, not %s in [%g, %g]", field, value,
             integer ? "an integer" : "a number", low, high);
    return -1;
}

int batch_state_check(double batch, double ema_noise, double ema_signal, double ema_weight,
                      double updates, char *err, size_t err_len)
{
    return out_of_range("batch.batch", batch, 1, INT_MAX, true, err, err_len) ||
                   out_of_range("batch.ema_noise", ema_noise, -DBL_MAX, DBL_MAX, false, err,
                                err_len) ||
                   out_of_range("batch.ema_signal", ema_signal, -DBL_MAX, DBL_MAX, false, err,
                                err_len) ||
                   out_of_range("batch.ema_weight", ema_weight, 0, 1, false, err, err_len) ||
                   out_of_range("batch.updates", updates, 0, 9007199254740992.0, true, err,
                                err_len)
               ? -1
               : 0;
}

static const char *const scaling_names[] = {"none", "sqrt", "linear"};

bool lr_scaling_parse(const char *text, LrScaling *out)
{
    for (int i = 0; i < 3; i++)
        if (text && strcmp(text, scaling_names[i]) == 0) {
            *out = (LrScaling)i;
            return true;
        }
    return false;
}

double lr_scale(LrScaling scaling, int batch, int base_batch)
{
    double ratio = (double)batch / base_batch;
    switch (scaling) {
    case LR_SCALING_SQRT: return sqrt(ratio);
    case LR_SCALING_LINEAR: return ratio;
    case LR_SCALING_NONE: break;
    }
    return 1.0;
}
