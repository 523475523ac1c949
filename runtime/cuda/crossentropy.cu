/* Softmax cross-entropy (contract in cuda_kernels.h). */
#include "common.cuh"

// ----------------------------------------------------------------------------
// cross-entropy: one block per row of logits

__global__ void crossentropy_forward_kernel(float *probs, float *losses, const float *logits,
                                            const int *targets, int V)
{
    size_t n = blockIdx.x;
    const float *z = logits + n * V;
    float *p = probs + n * V;
    /* Read before p (maybe z) is written: the reductions below synchronize
     * the block before any write. */
    float target_logit = z[targets[n]];
    float maxval = -INFINITY;
    for (int i = threadIdx.x; i < V; i += THREADS)
        maxval = fmaxf(maxval, z[i]);
    maxval = block_reduce(maxval, Max(), -INFINITY);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < V; i += THREADS)
        sum += expf(z[i] - maxval);
    sum = block_reduce(sum, Sum(), 0.0f);
    // loss from the log-sum-exp, not from log(p): exact for tiny p
    if (threadIdx.x == 0)
        losses[n] = logf(sum) + maxval - target_logit;
    float inv = 1.0f / sum;
    for (int i = threadIdx.x; i < V; i += THREADS)
        p[i] = expf(z[i] - maxval) * inv;
}

/* One block: the sum of values[0..count) in double, written to *out. */
__global__ void sum_to_double_kernel(double *out, const float *values, size_t count)
{
    double sum = 0.0;
    for (size_t i = threadIdx.x; i < count; i += THREADS)
        sum += values[i];
    sum = block_reduce(sum, Sum(), 0.0);
    if (threadIdx.x == 0)
        *out = sum;
}

extern "C" int cuda_crossentropy_forward(CudaContext *ctx, float *probs, float *losses,
                                         const float *logits, const int *targets, size_t N, int V,
                                         double *loss_sum)
{
    const char *what = "crossentropy_forward";
    double *total = (double *)scratch_get(ctx, SCRATCH_SCALARS, sizeof(double), NULL, what);
    if (!total || fits_int(ctx, N, what))
        return -1;
    *loss_sum = 0.0;
    if (N == 0)
        return 0;
    crossentropy_forward_kernel<<<(unsigned)N, THREADS, 0, ctx->compute>>>(probs, losses, logits,
                                                                           targets, V);
    if (launched(ctx, what))
        return -1;
    sum_to_double_kernel<<<1, THREADS, 0, ctx->compute>>>(total, losses, N);
    return launched(ctx, what) || read_double(ctx, loss_sum, total, what) ? -1 : 0;
}

__global__ void crossentropy_backward_kernel(float *dlogits, const float *probs,
                                             const int *targets, float dloss, size_t N, int V)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= N * V)
        return;
    float d = probs[i] * dloss;
    if ((int)(i % V) == targets[i / V])
        d -= dloss;
    dlogits[i] = d;
}

extern "C" int cuda_crossentropy_backward(CudaContext *ctx, float *dlogits, const float *probs,
                                          const int *targets, float dloss, size_t N, int V)
{
    crossentropy_backward_kernel<<<grid_for(N * V, THREADS), THREADS, 0, ctx->compute>>>(
        dlogits, probs, targets, dloss, N, V);
    return launched(ctx, "crossentropy_backward");
}
