/*
 * The device side of the CUDA backend (contract in cuda_kernels.h): the GPU,
 * its streams and cuBLAS handle, errors, memory, snapshot staging.
 */
#include "cuda_kernels.h"
#include "cuda_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

int cuda_fail(CudaContext *ctx, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(ctx->error, sizeof(ctx->error), format, args);
    va_end(args);
    return -1;
}

/* "what: message (name)", after clearing a non-sticky error so that the next
 * check reports its own. */
static void describe(char *out, size_t out_len, cudaError_t code, const char *what)
{
    (void)cudaGetLastError();
    snprintf(out, out_len, "%s: %s (%s)", what, cudaGetErrorString(code), cudaGetErrorName(code));
}

int cuda_check(CudaContext *ctx, cudaError_t code, const char *what)
{
    if (code == cudaSuccess)
        return 0;
    describe(ctx->error, sizeof(ctx->error), code, what);
    return -1;
}

int cuda_blas_check(CudaContext *ctx, cublasStatus_t status, const char *what)
{
    if (status == CUBLAS_STATUS_SUCCESS)
        return 0;
    return cuda_fail(ctx, "%s: cuBLAS %s", what, cublasGetStatusString(status));
}

const char *cuda_error(CudaContext *ctx)
{
    return ctx->error;
}

// ----------------------------------------------------------------------------
// device and streams

int cuda_device_count(char *why, size_t why_len)
{
    int count = 0;
    cudaError_t code = cudaGetDeviceCount(&count);
    /* What the runtime says when libcuda.so is missing altogether. */
    if (code == cudaErrorInsufficientDriver) {
        (void)cudaGetLastError();
        snprintf(why, why_len,
                 "no usable CUDA driver (none installed, or one older than this CUDA runtime; "
                 "cudaGetDeviceCount: %s)",
                 cudaGetErrorName(code));
        return 0;
    }
    if (code != cudaSuccess) {
        describe(why, why_len, code, "cudaGetDeviceCount");
        return 0;
    }
    if (count == 0)
        snprintf(why, why_len, "the CUDA driver reports no device");
    return count;
}

/* Streams are non-blocking: the legacy default stream, which other libraries
 * may use, must not serialize with training work. */
static int create_handles(CudaContext *ctx, int device)
{
    if (cuda_check(ctx, cudaSetDevice(device), "cudaSetDevice") ||
        cuda_check(ctx, cudaStreamCreateWithFlags(&ctx->compute, cudaStreamNonBlocking),
                   "creating the compute stream") ||
        cuda_check(ctx, cudaStreamCreateWithFlags(&ctx->copy, cudaStreamNonBlocking),
                   "creating the copy stream") ||
        cuda_check(ctx, cudaEventCreateWithFlags(&ctx->queued, cudaEventDisableTiming),
                   "creating an event") ||
        cuda_check(ctx, cudaEventCreateWithFlags(&ctx->copied, cudaEventDisableTiming),
                   "creating an event") ||
        cuda_blas_check(ctx, cublasCreate(&ctx->blas), "cublasCreate") ||
        cuda_blas_check(ctx, cublasSetStream(ctx->blas, ctx->compute), "cublasSetStream") ||
        cuda_blas_check(ctx, cublasSetMathMode(ctx->blas, CUBLAS_DEFAULT_MATH),
                        "cublasSetMathMode"))
        return -1;
    return 0;
}

/* Destroys whatever create_handles made; the handles it did not reach are 0. */
static void destroy_handles(CudaContext *ctx)
{
    if (ctx->blas)
        cublasDestroy(ctx->blas);
    if (ctx->copied)
        cudaEventDestroy(ctx->copied);
    if (ctx->queued)
        cudaEventDestroy(ctx->queued);
    if (ctx->copy)
        cudaStreamDestroy(ctx->copy);
    if (ctx->compute)
        cudaStreamDestroy(ctx->compute);
    ctx->blas = NULL;
    ctx->copied = ctx->queued = NULL;
    ctx->copy = ctx->compute = NULL;
}

CudaContext *cuda_kernels_init(int device, char *err, size_t err_len)
{
    char why[256];
    int count = cuda_device_count(why, sizeof(why));
    if (count == 0) {
        snprintf(err, err_len, "no CUDA device: %s", why);
        return NULL;
    }
    if (device < 0 || device >= count) {
        snprintf(err, err_len, "device %d does not exist: %d device(s) visible", device, count);
        return NULL;
    }
    CudaContext *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        snprintf(err, err_len, "out of host memory for the CUDA context");
        return NULL;
    }
    if (create_handles(ctx, device)) {
        snprintf(err, err_len, "%s", ctx->error);
        destroy_handles(ctx);
        free(ctx);
        return NULL;
    }
    ctx->device = device;
    return ctx;
}

void cuda_kernels_shutdown(CudaContext *ctx)
{
    if (!ctx)
        return;
    cudaStreamSynchronize(ctx->compute);
    cudaStreamSynchronize(ctx->copy);
    cuda_scratch_release(ctx);
    destroy_handles(ctx);
    free(ctx);
}

int cuda_kernels_sync(CudaContext *ctx)
{
    return cuda_check(ctx, cudaStreamSynchronize(ctx->compute), "running CUDA kernels");
}

int cuda_set_tf32(CudaContext *ctx, bool enabled)
{
    return cuda_blas_check(
        ctx,
        cublasSetMathMode(ctx->blas, enabled ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
        "cublasSetMathMode");
}

// ----------------------------------------------------------------------------
// memory

void *cuda_alloc(CudaContext *ctx, size_t bytes)
{
    void *ptr = NULL;
    /* cudaMalloc(0) succeeds with NULL, which callers would read as failure. */
    if (cuda_check(ctx, cudaMalloc(&ptr, bytes ? bytes : 1), "cudaMalloc"))
        return NULL;
    return ptr;
}

void cuda_free(void *device_ptr)
{
    if (device_ptr)
        cudaFree(device_ptr);
}

/* On the compute stream, never the legacy default stream: that one does not
 * wait for the non-blocking compute stream. */
static int copy_and_wait(CudaContext *ctx, void *dst, const void *src, size_t bytes,
                         enum cudaMemcpyKind kind, const char *what)
{
    if (cuda_check(ctx, cudaMemcpyAsync(dst, src, bytes, kind, ctx->compute), what))
        return -1;
    return cuda_check(ctx, cudaStreamSynchronize(ctx->compute), what);
}

int cuda_memcpy_h2d(CudaContext *ctx, void *device_dst, const void *host_src, size_t bytes)
{
    return copy_and_wait(ctx, device_dst, host_src, bytes, cudaMemcpyHostToDevice,
                         "cuda_memcpy_h2d");
}

int cuda_memcpy_d2h(CudaContext *ctx, void *host_dst, const void *device_src, size_t bytes)
{
    return copy_and_wait(ctx, host_dst, device_src, bytes, cudaMemcpyDeviceToHost,
                         "cuda_memcpy_d2h");
}

int cuda_memset_zero(CudaContext *ctx, void *device_dst, size_t bytes)
{
    return cuda_check(ctx, cudaMemsetAsync(device_dst, 0, bytes, ctx->compute), "cuda_memset_zero");
}

int cuda_memcpy_d2d(CudaContext *ctx, void *device_dst, const void *device_src, size_t bytes)
{
    return cuda_check(
        ctx, cudaMemcpyAsync(device_dst, device_src, bytes, cudaMemcpyDeviceToDevice, ctx->compute),
        "cuda_memcpy_d2d");
}

int cuda_copy_rows(CudaContext *ctx, float *dst, size_t dst_pitch, const float *src,
                   size_t src_pitch, size_t width, size_t rows)
{
    if (rows == 0 || width == 0)
        return 0;
    return cuda_check(ctx,
                      cudaMemcpy2DAsync(dst, dst_pitch * sizeof(float), src,
                                        src_pitch * sizeof(float), width * sizeof(float), rows,
                                        cudaMemcpyDeviceToDevice, ctx->compute),
                      "cuda_copy_rows");
}

// ----------------------------------------------------------------------------
// snapshot staging

void *cuda_host_alloc_pinned(CudaContext *ctx, size_t bytes)
{
    void *ptr = NULL;
    if (cuda_check(ctx, cudaHostAlloc(&ptr, bytes ? bytes : 1, cudaHostAllocDefault),
                   "cudaHostAlloc"))
        return NULL;
    return ptr;
}

void cuda_host_free_pinned(void *host_ptr)
{
    if (host_ptr)
        cudaFreeHost(host_ptr);
}

int cuda_snapshot_copy_async(CudaContext *ctx, void *pinned_dst, const void *device_src,
                             size_t bytes)
{
    const char *what = "cuda_snapshot_copy_async";
    if (cuda_check(ctx, cudaEventRecord(ctx->queued, ctx->compute), what) ||
        cuda_check(ctx, cudaStreamWaitEvent(ctx->copy, ctx->queued, 0), what) ||
        cuda_check(
            ctx, cudaMemcpyAsync(pinned_dst, device_src, bytes, cudaMemcpyDeviceToHost, ctx->copy),
            what) ||
        cuda_check(ctx, cudaEventRecord(ctx->copied, ctx->copy), what))
        return -1;
    return 0;
}

int cuda_snapshot_wait(CudaContext *ctx, char *err, size_t err_len)
{
    const char *what = "cuda_snapshot_wait";
    /* The current device is per thread: a sidecar thread starts on device 0. */
    cudaError_t code = cudaSetDevice(ctx->device);
    if (code == cudaSuccess)
        code = cudaEventSynchronize(ctx->copied);
    if (code == cudaSuccess)
        return 0;
    describe(err, err_len, code, what);
    return -1;
}

int cuda_compute_after_snapshot(CudaContext *ctx)
{
    return cuda_check(ctx, cudaStreamWaitEvent(ctx->compute, ctx->copied, 0),
                      "cuda_compute_after_snapshot");
}
