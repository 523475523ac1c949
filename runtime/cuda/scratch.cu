/* The kernels' scratch buffers and constant vectors (contract in cuda_kernels.h). */
#include "common.cuh"

/* Returns scratch `slot` of at least `bytes`, or NULL with the error set.
 * *grown (may be NULL) tells whether the contents were lost. */
void *scratch_get(CudaContext *ctx, int slot, size_t bytes, bool *grown, const char *what)
{
    if (grown)
        *grown = false;
    bytes = bytes ? bytes : 1; /* a NULL buffer would read as a failure */
    if (ctx->scratch[slot].bytes >= bytes)
        return ctx->scratch[slot].ptr;
    /* Queued work may still read the old buffer. */
    if (cuda_check(ctx, cudaStreamSynchronize(ctx->compute), what))
        return NULL;
    cudaFree(ctx->scratch[slot].ptr);
    ctx->scratch[slot].ptr = NULL;
    ctx->scratch[slot].bytes = 0;
    if (cuda_check(ctx, cudaMalloc(&ctx->scratch[slot].ptr, bytes), what))
        return NULL;
    ctx->scratch[slot].bytes = bytes;
    if (grown)
        *grown = true;
    return ctx->scratch[slot].ptr;
}

extern "C" void cuda_scratch_release(CudaContext *ctx)
{
    timing_release(ctx);
    for (int i = 0; i < SCRATCH_COUNT; i++) {
        cudaFree(ctx->scratch[i].ptr);
        ctx->scratch[i].ptr = NULL;
        ctx->scratch[i].bytes = 0;
    }
}

__global__ void fill_kernel(float *out, float value, size_t count)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < count)
        out[i] = value;
}

__global__ void iota_kernel(int *out, size_t count)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < count)
        out[i] = (int)i;
}

/* After the fill of a grown constant buffer: on failure the slot is marked
 * empty, so that the next call allocates and fills it again. */
template <typename T>
static const T *filled(CudaContext *ctx, int slot, const T *buffer, const char *what)
{
    if (launched(ctx, what) == 0)
        return buffer;
    ctx->scratch[slot].bytes = 0;
    return NULL;
}

/* A vector of n ones: column sums are a gemv against it. */
const float *ones(CudaContext *ctx, size_t n, const char *what)
{
    bool grown;
    float *v = (float *)scratch_get(ctx, SCRATCH_ONES, n * sizeof(float), &grown, what);
    if (!v || !grown)
        return v;
    size_t count = ctx->scratch[SCRATCH_ONES].bytes / sizeof(float);
    fill_kernel<<<grid_for(count, THREADS), THREADS, 0, ctx->compute>>>(v, 1.0f, count);
    return filled(ctx, SCRATCH_ONES, v, what);
}

/* 0, 1, ..., n-1: the row indices that the token sort carries along. */
const int *iota(CudaContext *ctx, size_t n, const char *what)
{
    bool grown;
    int *v = (int *)scratch_get(ctx, SCRATCH_IOTA, n * sizeof(int), &grown, what);
    if (!v || !grown)
        return v;
    size_t count = ctx->scratch[SCRATCH_IOTA].bytes / sizeof(int);
    iota_kernel<<<grid_for(count, THREADS), THREADS, 0, ctx->compute>>>(v, count);
    return filled(ctx, SCRATCH_IOTA, v, what);
}

/* Copies a device double to the host and waits for it. */
int read_double(CudaContext *ctx, double *host, const double *device, const char *what)
{
    if (cuda_check(
            ctx,
            cudaMemcpyAsync(host, device, sizeof(double), cudaMemcpyDeviceToHost, ctx->compute),
            what))
        return -1;
    return cuda_check(ctx, cudaStreamSynchronize(ctx->compute), what);
}
