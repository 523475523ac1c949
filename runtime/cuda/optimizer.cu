/* The optimizers (AdamW, LAMB) and the gradient norm (contract in cuda_kernels.h). */
#include "common.cuh"

// ----------------------------------------------------------------------------
// optimizer: the update of optim.c element for element; sums of squares over
// fixed chunks of SUM_CHUNK elements, one block each, then the chunk sums in
// chunk order by one block

#define SUM_PER_THREAD 16
#define SUM_CHUNK (THREADS * SUM_PER_THREAD)

struct StepConstants {
    float beta1, beta2, eps;
    float bias1, bias2; /* bias corrections 1 - beta^t */
    float grad_scale;
};

/* As optim.c's step_constants: the corrections in double, then rounded. */
static StepConstants step_constants(const OptimConfig *cfg, long step, float grad_scale)
{
    StepConstants k;
    k.beta1 = cfg->beta1;
    k.beta2 = cfg->beta2;
    k.eps = cfg->eps;
    k.bias1 = (float)(1.0 - pow(cfg->beta1, (double)step));
    k.bias2 = (float)(1.0 - pow(cfg->beta2, (double)step));
    k.grad_scale = grad_scale;
    return k;
}

__device__ void update_moments(const StepConstants &k, float *g, float *m, float *v)
{
    float grad = *g * k.grad_scale;
    *g = grad;
    *m = k.beta1 * *m + (1.0f - k.beta1) * grad;
    *v = k.beta2 * *v + (1.0f - k.beta2) * grad * grad;
}

__device__ float update_direction(const StepConstants &k, float m, float v, float w, float wd)
{
    return (m / k.bias1) / (sqrtf(v / k.bias2) + k.eps) + wd * w;
}

/* The element of this block's chunk that this thread handles j-th (coalesced:
 * consecutive threads, consecutive elements). */
__device__ size_t chunk_element(int j)
{
    return blockIdx.x * (size_t)SUM_CHUNK + (size_t)j * THREADS + threadIdx.x;
}

__global__ void sumsq_chunks_kernel(double *partials, const float *x, size_t n)
{
    double sum = 0.0;
    for (int j = 0; j < SUM_PER_THREAD && chunk_element(j) < n; j++) {
        size_t i = chunk_element(j);
        sum += (double)x[i] * x[i];
    }
    sum = block_reduce(sum, Sum(), 0.0);
    if (threadIdx.x == 0)
        partials[blockIdx.x] = sum;
}

/* Sum of partials[0..count) by one block. */
__device__ double sum_partials(const double *partials, size_t count)
{
    double sum = 0.0;
    for (size_t i = threadIdx.x; i < count; i += THREADS)
        sum += partials[i];
    return block_reduce(sum, Sum(), 0.0);
}

__global__ void add_partials_kernel(double *total, const double *partials, size_t count)
{
    double sum = sum_partials(partials, count);
    if (threadIdx.x == 0)
        *total += sum;
}

__global__ void adam_kernel(StepConstants k, float *w, float *g, float *m, float *v, size_t n,
                            float lr, float wd)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    update_moments(k, &g[i], &m[i], &v[i]);
    w[i] -= lr * update_direction(k, m[i], v[i], w[i], wd);
}

/* LAMB's first pass: moments, and per chunk ||w||^2 and ||u||^2 (u is not
 * kept: the second pass recomputes it from the same inputs, same bits). */
__global__ void lamb_moments_kernel(StepConstants k, double *w_partials, double *u_partials,
                                    const float *w, float *g, float *m, float *v, size_t n,
                                    float wd)
{
    double w_sum = 0.0, u_sum = 0.0;
    for (int j = 0; j < SUM_PER_THREAD && chunk_element(j) < n; j++) {
        size_t i = chunk_element(j);
        update_moments(k, &g[i], &m[i], &v[i]);
        float u = update_direction(k, m[i], v[i], w[i], wd);
        w_sum += (double)w[i] * w[i];
        u_sum += (double)u * u;
    }
    w_sum = block_reduce(w_sum, Sum(), 0.0);
    u_sum = block_reduce(u_sum, Sum(), 0.0);
    if (threadIdx.x == 0) {
        w_partials[blockIdx.x] = w_sum;
        u_partials[blockIdx.x] = u_sum;
    }
}

/* step_lr = lr * ||w|| / ||u||, or lr when either is 0 (optim.c's trust_ratio). */
__global__ void lamb_ratio_kernel(float *step_lr, const double *w_partials,
                                  const double *u_partials, size_t count, float lr)
{
    double w_sumsq = sum_partials(w_partials, count);
    double u_sumsq = sum_partials(u_partials, count);
    if (threadIdx.x != 0)
        return;
    double ratio = w_sumsq > 0.0 && u_sumsq > 0.0 ? sqrt(w_sumsq) / sqrt(u_sumsq) : 1.0;
    *step_lr = (float)(lr * ratio);
}

__global__ void lamb_apply_kernel(StepConstants k, float *w, const float *m, const float *v,
                                  size_t n, float wd, const float *step_lr)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n)
        w[i] -= *step_lr * update_direction(k, m[i], v[i], w[i], wd);
}

/* Room for the two chunk-sum arrays of the largest tensor. */
static double *partials_for(CudaContext *ctx, const OptimTensor *tensors, int count,
                            const char *what)
{
    size_t most = 1;
    for (int i = 0; i < count; i++)
        most = tensors[i].numel > most ? tensors[i].numel : most;
    size_t chunks = grid_for(most, SUM_CHUNK);
    return (double *)scratch_get(ctx, SCRATCH_PARTIALS, 2 * chunks * sizeof(double), NULL, what);
}

extern "C" int cuda_optim_grad_sumsq(CudaContext *ctx, const OptimTensor *tensors, int count,
                                     double *sumsq)
{
    const char *what = "optim_grad_sumsq";
    double *partials = partials_for(ctx, tensors, count, what);
    double *total = (double *)scratch_get(ctx, SCRATCH_SCALARS, sizeof(double), NULL, what);
    if (!partials || !total ||
        cuda_check(ctx, cudaMemsetAsync(total, 0, sizeof(double), ctx->compute), what))
        return -1;
    for (int i = 0; i < count; i++) {
        size_t n = tensors[i].numel, chunks = grid_for(n, SUM_CHUNK);
        if (n == 0)
            continue;
        sumsq_chunks_kernel<<<(unsigned)chunks, THREADS, 0, ctx->compute>>>(partials,
                                                                            tensors[i].grad, n);
        add_partials_kernel<<<1, THREADS, 0, ctx->compute>>>(total, partials, chunks);
        if (launched(ctx, what))
            return -1;
    }
    return read_double(ctx, sumsq, total, what);
}

static int lamb_tensor(CudaContext *ctx, const StepConstants &k, const OptimTensor *t, float lr,
                       float wd, double *partials, float *step_lr, const char *what)
{
    size_t n = t->numel, chunks = grid_for(n, SUM_CHUNK);
    lamb_moments_kernel<<<(unsigned)chunks, THREADS, 0, ctx->compute>>>(
        k, partials, partials + chunks, t->param, t->grad, t->m, t->v, n, wd);
    lamb_ratio_kernel<<<1, THREADS, 0, ctx->compute>>>(step_lr, partials, partials + chunks, chunks,
                                                       lr);
    lamb_apply_kernel<<<grid_for(n, THREADS), THREADS, 0, ctx->compute>>>(k, t->param, t->m, t->v,
                                                                          n, wd, step_lr);
    return launched(ctx, what);
}

static int adam_tensor(CudaContext *ctx, const StepConstants &k, const OptimTensor *t, float lr,
                       float wd, const char *what)
{
    adam_kernel<<<grid_for(t->numel, THREADS), THREADS, 0, ctx->compute>>>(
        k, t->param, t->grad, t->m, t->v, t->numel, lr, wd);
    return launched(ctx, what);
}

/* Tensors run one after another on the stream, so they share the partials
 * and the step_lr scalar. */
extern "C" int cuda_optim_step(CudaContext *ctx, const OptimConfig *cfg, const OptimTensor *tensors,
                               int count, float lr, long step, float grad_scale)
{
    const char *what = "optim_step";
    if (step < 1)
        return cuda_fail(ctx, "%s: step %ld is not 1-based", what, step);
    StepConstants k = step_constants(cfg, step, grad_scale);
    double *partials = partials_for(ctx, tensors, count, what);
    float *step_lr = (float *)scratch_get(ctx, SCRATCH_SCALARS, sizeof(double), NULL, what);
    if (!partials || !step_lr)
        return -1;
    for (int i = 0; i < count; i++) {
        const OptimTensor *t = &tensors[i];
        bool plain = t->exclude && !cfg->decay_all;
        float wd = plain ? 0.0f : cfg->weight_decay;
        if (t->numel == 0)
            continue;
        int status = cfg->kind == OPTIM_LAMB && !plain
                         ? lamb_tensor(ctx, k, t, lr, wd, partials, step_lr, what)
                         : adam_tensor(ctx, k, t, lr, wd, what);
        if (status)
            return -1;
    }
    return 0;
}
