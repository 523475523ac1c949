/* GELU, the residual sum and accumulation (contract in cuda_kernels.h). */
#include "common.cuh"

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */

// ----------------------------------------------------------------------------
// elementwise

__global__ void gelu_forward_kernel(float *out, const float *inp, size_t count)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= count)
        return;
    float x = inp[i];
    float cube = 0.044715f * x * x * x;
    out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + cube)));
}

__global__ void gelu_backward_kernel(float *dinp, const float *inp, const float *dout,
                                     size_t count)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= count)
        return;
    float x = inp[i];
    float cube = 0.044715f * x * x * x;
    float th = tanhf(GELU_SCALE * (x + cube));
    float sech2 = 1.0f - th * th;
    float local =
        0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[i] = local * dout[i];
}

__global__ void residual_kernel(float *out, const float *a, const float *b, size_t count)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < count)
        out[i] = a[i] + b[i];
}

extern "C" int cuda_gelu_forward(CudaContext *ctx, float *out, const float *inp, size_t count)
{
    gelu_forward_kernel<<<grid_for(count, THREADS), THREADS, 0, ctx->compute>>>(out, inp, count);
    return launched(ctx, "gelu_forward");
}

extern "C" int cuda_gelu_backward(CudaContext *ctx, float *dinp, const float *inp,
                                  const float *dout, size_t count)
{
    gelu_backward_kernel<<<grid_for(count, THREADS), THREADS, 0, ctx->compute>>>(dinp, inp, dout,
                                                                                 count);
    return launched(ctx, "gelu_backward");
}

extern "C" int cuda_residual_forward(CudaContext *ctx, float *out, const float *a, const float *b,
                                     size_t count)
{
    residual_kernel<<<grid_for(count, THREADS), THREADS, 0, ctx->compute>>>(out, a, b, count);
    return launched(ctx, "residual_forward");
}

extern "C" int cuda_accumulate(CudaContext *ctx, float *dst, const float *src, size_t count)
{
    residual_kernel<<<grid_for(count, THREADS), THREADS, 0, ctx->compute>>>(dst, dst, src, count);
    return launched(ctx, "accumulate");
}
