/*
 * optim: the optimizers (LAMB, AdamW), global-norm gradient clipping and the
 * learning-rate schedules.
 *
 * Contract
 * - The optimizer works on a list of OptimTensor: each is one logical tensor
 *   (or the fragment of one that this rank owns) with its parameter, gradient
 *   and the two moment buffers m and v, all fp32 and `numel` long. The caller
 *   owns every buffer; optim allocates nothing.
 * - Clipping is split in two so that a distributed caller can reduce in
 *   between: optim_grad_sumsq() gives this rank's sum of squared gradients;
 *   the caller sums it over every rank that holds distinct gradients, takes the
 *   square root (the global norm) and passes optim_clip_scale(norm, clip) to
 *   optim_step(), which multiplies every gradient by it before m and v are
 *   updated (as NVIDIA apex's FusedLAMB does).
 * - LAMB (You et al. 2020, Alg. 2, with apex/TFA conventions), per tensor:
 *     m = b1 m + (1-b1) g ;  v = b2 v + (1-b2) g^2
 *     r = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
 *     u = r + wd * w                       (wd = 0 for excluded tensors)
 *     ratio = ||w|| / ||u||, or 1 when either norm is 0 or the tensor is excluded
 *     w -= lr * ratio * u
 *   Per-tensor norms are over the whole tensor; a caller that splits one
 *   logical tensor across ranks (ZeRO-1) uses optim_step_begin/end below.
 * - AdamW (Loshchilov & Hutter): w -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * w),
 *   the same as torch.optim.AdamW, with wd = 0 for excluded tensors.
 * - `exclude` marks biases and LayerNorm parameters: no weight decay and no
 *   layer adaptation, unless OptimConfig.decay_all is set.
 * - `step` is 1-based (the first update uses t = 1 for bias correction).
 * - Schedules map progress (any unit: the runtime uses samples, so that a
 *   growing batch does not make the schedule jump) to a learning rate.
 */
#ifndef PHALANX_OPTIM_H
#define PHALANX_OPTIM_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { OPTIM_LAMB = 0, OPTIM_ADAMW = 1 } OptimKind;

typedef struct {
    OptimKind kind;
    float beta1, beta2, eps, weight_decay;
    bool decay_all; /* true: biases and LayerNorm get decay and adaptation too */
} OptimConfig;

typedef struct {
    const char *name; /* logical name, for messages */
    float *param, *grad, *m, *v;
    size_t numel;
    bool exclude; /* bias or LayerNorm parameter */
} OptimTensor;

/* Defaults: b1 0.9, b2 0.999, wd 0.01; eps 1e-6 for LAMB (the paper's), 1e-8 for
 * AdamW (torch.optim.AdamW's). */
OptimConfig optim_default_config(OptimKind kind);

/* Parses "lamb" / "adamw"; returns false for anything else. */
bool optim_kind_parse(const char *text, OptimKind *out);
const char *optim_kind_name(OptimKind kind);

/* True for names that denote a bias or a LayerNorm parameter (".bias" suffix,
 * or a "ln" path component such as "h.0.ln1.weight", "lnf.weight"). */
bool optim_name_is_excluded(const char *name);

/* Sum over all tensors of sum(g^2), accumulated in double. */
double optim_grad_sumsq(const OptimTensor *tensors, int count);

/* Scale that brings the global norm down to `clip`: min(1, clip / norm).
 * clip <= 0 means no clipping (returns 1). */
float optim_clip_scale(double global_norm, float clip);

/* One update of every tensor at learning rate `lr`, 1-based step `step`;
 * gradients are multiplied by `grad_scale` first (they are left scaled). */
void optim_step(const OptimConfig *cfg, const OptimTensor *tensors, int count,
                float lr, long step, float grad_scale);

/* optim_step in two halves, for tensors split over ranks (ZeRO-1): each
 * tensor is then this rank's fragment of a logical tensor. begin updates the
 * moments (and applies AdamW and the unadapted tensors whole) and writes the
 * fragment's partial squares ||w||^2, ||u||^2 of LAMB to sums[2i], sums[2i+1]
 * (0 for tensors without layer adaptation); the caller adds them up over the
 * ranks that hold the other fragments; end applies LAMB's update with the
 * trust ratio of those whole-tensor sums. Over whole tensors, begin then end
 * is optim_step, bit for bit. */
void optim_step_begin(const OptimConfig *cfg, const OptimTensor *tensors, int count, float lr,
                      long step, float grad_scale, double *sums);
void optim_step_end(const OptimConfig *cfg, const OptimTensor *tensors, int count, float lr,
                    long step, float grad_scale, const double *sums);

/* ---------------------------------------------------------------------- */
/* Learning-rate schedules                                                */

typedef enum {
    SCHEDULE_COSINE = 0,   /* linear warm-up, cosine decay to min */
    SCHEDULE_LINEAR = 1,   /* linear warm-up, linear decay to min */
    SCHEDULE_CONSTANT = 2, /* linear warm-up, then constant */
    SCHEDULE_WSD = 3,      /* warm-up, stable, linear decay over the last decay_fraction */
} ScheduleKind;

typedef struct {
    ScheduleKind kind;
    double lr_max;         /* peak learning rate */
    double min_ratio;      /* final lr = min_ratio * lr_max (cosine, linear, wsd) */
    double warmup;         /* progress units of linear warm-up from 0 */
    double total;          /* progress units of the whole run */
    double decay_fraction; /* wsd: share of total spent decaying (0, 1] */
} Schedule;

bool schedule_kind_parse(const char *text, ScheduleKind *out);
const char *schedule_kind_name(ScheduleKind kind);

/* Learning rate for a step whose end is at `progress` (the runtime passes the
 * samples consumed through the end of the step, c_s + B_s, so the first step
 * of a warm-up already has a non-zero rate). Warm-up: lr_max * progress / warmup.
 * After it, with f = (progress - warmup) / (total - warmup) clamped to [0, 1]:
 * cosine  min + (max - min) * (1 + cos(pi f)) / 2;  linear  max - (max - min) f;
 * wsd     max until f reaches 1 - decay_fraction (measured on the post-warm-up
 *         span), then linear to min;  constant  max.   min = min_ratio * lr_max. */
double schedule_lr(const Schedule *s, double progress);

#endif
