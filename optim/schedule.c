/* Learning-rate schedules (see optim.h for the formulas). */
#include "optim.h"

#include <math.h>
#include <string.h>

static const char *const schedule_kind_names[] = {
    [SCHEDULE_COSINE] = "cosine",
    [SCHEDULE_LINEAR] = "linear",
    [SCHEDULE_CONSTANT] = "constant",
    [SCHEDULE_WSD] = "wsd",
};

bool schedule_kind_parse(const char *text, ScheduleKind *out)
{
    for (int k = SCHEDULE_COSINE; k <= SCHEDULE_WSD; k++) {
        if (text && strcmp(text, schedule_kind_names[k]) == 0) {
            *out = (ScheduleKind)k;
            return true;
        }
    }
    return false;
}

const char *schedule_kind_name(ScheduleKind kind)
{
    return kind >= SCHEDULE_COSINE && kind <= SCHEDULE_WSD ? schedule_kind_names[kind]
                                                           : "unknown";
}

/* Share of the post-warm-up span done at `progress`, in [0, 1]. A run with
 * no span after its warm-up (total <= warmup) is finished once warm-up is. */
static double decay_progress(const Schedule *s, double progress)
{
    if (progress >= s->total)
        return 1.0;
    double f = (progress - s->warmup) / (s->total - s->warmup);
    return f < 0.0 ? 0.0 : f;
}

/* WSD: how far the decay has gone (0 = still at max, 1 = at min) at span
 * share f; the decay takes the last decay_fraction of the span. The fraction
 * is clamped to [0, 1], and 0 never decays. */
static double wsd_decay_share(double f, double decay_fraction)
{
    double fraction = fmin(fmax(decay_fraction, 0.0), 1.0);
    double start = 1.0 - fraction;
    return f <= start ? 0.0 : (f - start) / fraction;
}

double schedule_lr(const Schedule *s, double progress)
{
    if (progress < s->warmup)
        return s->lr_max * fmax(progress, 0.0) / s->warmup;
    double max = s->lr_max, min = s->min_ratio * s->lr_max;
    double f = decay_progress(s, progress);
    switch (s->kind) {
    case SCHEDULE_COSINE:
        return min + (max - min) * (1.0 + cos(M_PI * f)) / 2.0;
    case SCHEDULE_LINEAR:
        return max - (max - min) * f;
    case SCHEDULE_WSD:
        return max - (max - min) * wsd_decay_share(f, s->decay_fraction);
    case SCHEDULE_CONSTANT:
        break;
    }
    return max;
}
