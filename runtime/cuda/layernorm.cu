/* LayerNorm (contract in cuda_kernels.h). */
#include "common.cuh"

#define LAYERNORM_EPS 1e-5f

// ----------------------------------------------------------------------------
// layernorm: one warp per row


__global__ void layernorm_forward_kernel(float *out, float *mean, float *rstd, const float *inp,
                                         const float *weight, const float *bias, size_t N, int C)
{
    long n = warp_row(N);
    if (n < 0)
        return;
    int lane = threadIdx.x % WARP;
    const float *x = inp + n * C;
    float m = 0.0f;
    for (int c = lane; c < C; c += WARP)
        m += x[c];
    m = warp_reduce(m, Sum()) / C;
    float var = 0.0f;
    for (int c = lane; c < C; c += WARP)
        var += (x[c] - m) * (x[c] - m);
    var = warp_reduce(var, Sum()) / C;
    float s = 1.0f / sqrtf(var + LAYERNORM_EPS);
    float *o = out + n * C;
    for (int c = lane; c < C; c += WARP)
        o[c] = (x[c] - m) * s * weight[c] + bias[c];
    if (lane == 0) {
        mean[n] = m;
        rstd[n] = s;
    }
}

extern "C" int cuda_layernorm_forward(CudaContext *ctx, float *out, float *mean, float *rstd,
                                      const float *inp, const float *weight, const float *bias,
                                      size_t N, int C)
{
    layernorm_forward_kernel<<<grid_for(N, ROWS_PER_BLOCK), THREADS, 0, ctx->compute>>>(
        out, mean, rstd, inp, weight, bias, N, C);
    return launched(ctx, "layernorm_forward");
}

/* dinp of one row; also the row's dout * norm, whose column sums are dweight. */
__global__ void layernorm_backward_kernel(float *dinp, float *dout_norm, const float *dout,
                                          const float *inp, const float *weight,
                                          const float *mean, const float *rstd, size_t N, int C)
{
    long n = warp_row(N);
    if (n < 0)
        return;
    int lane = threadIdx.x % WARP;
    const float *x = inp + n * C, *d = dout + n * C;
    float m = mean[n], s = rstd[n];
    float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
    for (int c = lane; c < C; c += WARP) {
        float norm = (x[c] - m) * s;
        float dnorm = weight[c] * d[c];
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean = warp_reduce(dnorm_mean, Sum()) / C;
    dnorm_norm_mean = warp_reduce(dnorm_norm_mean, Sum()) / C;
    float *di = dinp + n * C, *dn = dout_norm + n * C;
    for (int c = lane; c < C; c += WARP) {
        float norm = (x[c] - m) * s;
        di[c] = (weight[c] * d[c] - dnorm_mean - norm * dnorm_norm_mean) * s;
        dn[c] = norm * d[c];
    }
}

extern "C" int cuda_layernorm_backward(CudaContext *ctx, float *dinp, float *dweight, float *dbias,
                                       const float *dout, const float *inp, const float *weight,
                                       const float *mean, const float *rstd, size_t N, int C)
{
    const char *what = "layernorm_backward";
    float *dout_norm = (float *)scratch_get(ctx, SCRATCH_ROWS, N * C * sizeof(float), NULL, what);
    if (!dout_norm)
        return -1;
    layernorm_backward_kernel<<<grid_for(N, ROWS_PER_BLOCK), THREADS, 0, ctx->compute>>>(
        dinp, dout_norm, dout, inp, weight, mean, rstd, N, C);
    if (launched(ctx, what) || column_sums_accumulate(ctx, dweight, dout_norm, N, C, what))
        return -1;
    return column_sums_accumulate(ctx, dbias, dout, N, C, what);
}
