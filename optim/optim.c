/* LAMB, AdamW and global-norm clipping (see optim.h for the contract). */
#include "optim.h"

#include <assert.h>
#include <math.h>
#include <string.h>

/* OpenMP is optional: without -fopenmp the loops run serially, with the same
 * results, and no "unknown pragma" warning is raised. */
#ifdef _OPENMP
#define OMP(directive) _Pragma(#directive)
#else
#define OMP(directive)
#endif

/* Element loops shorter than this run on one thread: starting a parallel
 * region costs more than updating a bias vector. */
#define PARALLEL_MIN_NUMEL ((size_t)1 << 15)

/* Sums of squares are taken over fixed blocks of SUM_BLOCK elements, and the
 * block sums are added in block order. The result therefore depends only on
 * the data, never on the thread count (an OpenMP reduction's order does). */
#define SUM_BLOCK ((size_t)4096)
/* Blocks handled per parallel region: bounds the partial sums kept on the
 * stack, since optim allocates nothing. */
#define SUM_GROUP 256

OptimConfig optim_default_config(OptimKind kind)
{
    return (OptimConfig){
        .kind = kind,
        .beta1 = 0.9f,
        .beta2 = 0.999f,
        .eps = kind == OPTIM_LAMB ? 1e-6f : 1e-8f, /* LAMB paper; torch.optim.AdamW */
        .weight_decay = 0.01f,
        .decay_all = false,
    };
}

static const char *const optim_kind_names[] = {
    [OPTIM_LAMB] = "lamb",
    [OPTIM_ADAMW] = "adamw",
};

bool optim_kind_parse(const char *text, OptimKind *out)
{
    for (int k = OPTIM_LAMB; k <= OPTIM_ADAMW; k++) {
        if (text && strcmp(text, optim_kind_names[k]) == 0) {
            *out = (OptimKind)k;
            return true;
        }
    }
    return false;
}

const char *optim_kind_name(OptimKind kind)
{
    return kind == OPTIM_LAMB || kind == OPTIM_ADAMW ? optim_kind_names[kind] : "unknown";
}

/* ---------------------------------------------------------------------- */
/* Parameter names                                                         */

/* A LayerNorm component is one that starts with "ln": "ln1", "ln_2", "lnf". */
static bool is_layernorm_component(const char *begin, const char *end)
{
    return end - begin >= 2 && begin[0] == 'l' && begin[1] == 'n';
}

bool optim_name_is_excluded(const char *name)
{
    assert(name);
    const char *last = strrchr(name, '.');
    const char *leaf = last ? last + 1 : name;
    if (strcmp(leaf, "bias") == 0)
        return true;
    for (const char *begin = name;;) {
        const char *end = strchr(begin, '.');
        if (!end)
            end = begin + strlen(begin);
        if (is_layernorm_component(begin, end))
            return true;
        if (*end == '\0')
            return false;
        begin = end + 1;
    }
}

/* ---------------------------------------------------------------------- */
/* Deterministic blocked sums                                              */

typedef struct {
    double a, b;
} SumPair;

/* One block's sums over elements [begin, end), in an order fixed by the code
 * (never by the threads). */
typedef SumPair (*BlockSumFn)(const void *ctx, size_t begin, size_t end);

static SumPair blocked_sum(BlockSumFn fn, const void *ctx, size_t numel)
{
    SumPair total = {0.0, 0.0};
    for (size_t base = 0; base < numel; base += SUM_BLOCK * SUM_GROUP) {
        SumPair part[SUM_GROUP];
        size_t blocks = (numel - base + SUM_BLOCK - 1) / SUM_BLOCK;
        int count = blocks < SUM_GROUP ? (int)blocks : SUM_GROUP;
        OMP(omp parallel for if (count > 1) schedule(static))
        for (int b = 0; b < count; b++) {
            size_t begin = base + (size_t)b * SUM_BLOCK;
            size_t end = begin + SUM_BLOCK < numel ? begin + SUM_BLOCK : numel;
            part[b] = fn(ctx, begin, end);
        }
        for (int b = 0; b < count; b++) {
            total.a += part[b].a;
            total.b += part[b].b;
        }
    }
    return total;
}

/* Sum of squares of x[0..n) in double. Eight interleaved accumulators, added
 * in a fixed order at the end, let the compiler vectorize the loop while the
 * result still depends only on the data. */
static double sumsq(const float *x, size_t n)
{
    enum { LANES = 8 };
    double lane[LANES] = {0.0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++)
            lane[l] += (double)x[i + l] * x[i + l];
    for (; i < n; i++)
        lane[i % LANES] += (double)x[i] * x[i];
    double sum = 0.0;
    for (int l = 0; l < LANES; l++)
        sum += lane[l];
    return sum;
}

static SumPair grad_sumsq_block(const void *ctx, size_t begin, size_t end)
{
    const float *g = ctx;
    return (SumPair){sumsq(g + begin, end - begin), 0.0};
}

double optim_grad_sumsq(const OptimTensor *tensors, int count)
{
    double sum = 0.0;
    for (int i = 0; i < count; i++)
        sum += blocked_sum(grad_sumsq_block, tensors[i].grad, tensors[i].numel).a;
    return sum;
}

float optim_clip_scale(double global_norm, float clip)
{
    /* Written as "norm > clip" so that a NaN norm leaves gradients alone:
     * the caller's non-finite check, not the clip, must catch it. */
    if (clip > 0.0f && global_norm > clip)
        return (float)(clip / global_norm);
    return 1.0f;
}

/* ---------------------------------------------------------------------- */
/* The update                                                              */

/* What every element of every tensor needs for one step. */
typedef struct {
    float beta1, beta2, eps;
    float bias1, bias2; /* bias corrections 1 - beta^t */
    float grad_scale;
} StepConstants;

static StepConstants step_constants(const OptimConfig *cfg, long step, float grad_scale)
{
    assert(step >= 1);
    return (StepConstants){
        .beta1 = cfg->beta1,
        .beta2 = cfg->beta2,
        .eps = cfg->eps,
        .bias1 = (float)(1.0 - pow(cfg->beta1, (double)step)),
        .bias2 = (float)(1.0 - pow(cfg->beta2, (double)step)),
        .grad_scale = grad_scale,
    };
}

/* Scales the gradient in place, then folds it into both moments. */
static inline void update_moments(const StepConstants *k, float *g, float *m, float *v)
{
    float grad = *g * k->grad_scale;
    *g = grad;
    *m = k->beta1 * *m + (1.0f - k->beta1) * grad;
    *v = k->beta2 * *v + (1.0f - k->beta2) * grad * grad;
}

/* The update direction before the learning rate: m_hat / (sqrt(v_hat) + eps)
 * plus decoupled weight decay. */
static inline float update_direction(const StepConstants *k, float m, float v, float w, float wd)
{
    return (m / k->bias1) / (sqrtf(v / k->bias2) + k->eps) + wd * w;
}

/* AdamW, and LAMB on tensors without layer adaptation (ratio 1): one pass. */
static void adam_tensor(const StepConstants *k, const OptimTensor *t, float lr, float wd)
{
    float *w = t->param, *g = t->grad, *m = t->m, *v = t->v;
    OMP(omp parallel for if (t->numel >= PARALLEL_MIN_NUMEL) schedule(static))
    for (size_t i = 0; i < t->numel; i++) {
        update_moments(k, &g[i], &m[i], &v[i]);
        w[i] -= lr * update_direction(k, m[i], v[i], w[i], wd);
    }
}

typedef struct {
    const StepConstants *k;
    const OptimTensor *t;
    float wd;
} LambPass;

/* LAMB's first pass over one block: moments, and the block's ||w||^2 and
 * ||u||^2. The update u is kept only for the block (optim owns no buffer, and
 * the gradient must stay the scaled gradient), so the second pass recomputes
 * it from the same inputs, which gives the same bits. */
static SumPair lamb_moments_block(const void *ctx, size_t begin, size_t end)
{
    const LambPass *p = ctx;
    const OptimTensor *t = p->t;
    /* Local copies: the compiler cannot tell that the stores below leave
     * them alone, and reloading them each element stops vectorization. */
    const StepConstants k = *p->k;
    const float wd = p->wd;
    size_t n = end - begin;
    float *w = t->param + begin, *g = t->grad + begin, *m = t->m + begin, *v = t->v + begin;
    float u[SUM_BLOCK];
    for (size_t i = 0; i < n; i++) {
        update_moments(&k, &g[i], &m[i], &v[i]);
        u[i] = update_direction(&k, m[i], v[i], w[i], wd);
    }
    return (SumPair){sumsq(w, n), sumsq(u, n)};
}

/* LAMB's trust ratio ||w|| / ||u||, 1 when either is 0 (apex, TFA): a zero
 * tensor (fresh bias-like init) must still move. */
static double trust_ratio(double w_sumsq, double u_sumsq)
{
    return w_sumsq > 0.0 && u_sumsq > 0.0 ? sqrt(w_sumsq) / sqrt(u_sumsq) : 1.0;
}

/* LAMB's second pass: the update at the trust ratio of the whole tensor. */
static void lamb_apply(const StepConstants *k, const OptimTensor *t, float lr, float wd,
                       const double *sums)
{
    float step_lr = (float)(lr * trust_ratio(sums[0], sums[1]));
    float *w = t->param;
    const float *m = t->m, *v = t->v;
    OMP(omp parallel for if (t->numel >= PARALLEL_MIN_NUMEL) schedule(static))
    for (size_t i = 0; i < t->numel; i++)
        w[i] -= step_lr * update_direction(k, m[i], v[i], w[i], wd);
}

static bool layer_adapted(const OptimConfig *cfg, const OptimTensor *t)
{
    return cfg->kind == OPTIM_LAMB && !(t->exclude && !cfg->decay_all);
}

static float decay_of(const OptimConfig *cfg, const OptimTensor *t)
{
    return t->exclude && !cfg->decay_all ? 0.0f : cfg->weight_decay;
}

void optim_step_begin(const OptimConfig *cfg, const OptimTensor *tensors, int count, float lr,
                      long step, float grad_scale, double *sums)
{
    StepConstants k = step_constants(cfg, step, grad_scale);
    for (int i = 0; i < count; i++) {
        const OptimTensor *t = &tensors[i];
        sums[2 * i] = sums[2 * i + 1] = 0.0;
        if (!layer_adapted(cfg, t)) {
            adam_tensor(&k, t, lr, decay_of(cfg, t));
            continue;
        }
        LambPass pass = {&k, t, decay_of(cfg, t)};
        SumPair part = blocked_sum(lamb_moments_block, &pass, t->numel);
        sums[2 * i] = part.a;
        sums[2 * i + 1] = part.b;
    }
}

void optim_step_end(const OptimConfig *cfg, const OptimTensor *tensors, int count, float lr,
                    long step, float grad_scale, const double *sums)
{
    StepConstants k = step_constants(cfg, step, grad_scale);
    for (int i = 0; i < count; i++)
        if (layer_adapted(cfg, &tensors[i]))
            lamb_apply(&k, &tensors[i], lr, decay_of(cfg, &tensors[i]), sums + 2 * i);
}

/* One tensor at a time, both halves: its sums stay on the stack. */
void optim_step(const OptimConfig *cfg, const OptimTensor *tensors, int count,
                float lr, long step, float grad_scale)
{
    for (int i = 0; i < count; i++) {
        double sums[2];
        optim_step_begin(cfg, &tensors[i], 1, lr, step, grad_scale, sums);
        optim_step_end(cfg, &tensors[i], 1, lr, step, grad_scale, sums);
    }
}
