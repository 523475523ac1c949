/*
 * The device side of the CUDA backend (contract in cuda_kernels.h): the GPU,
 * its streams and cuBLAS handle, errors, memory, snapshot staging.
 */
#include "cuda_kernels.h"
#include "cuda_internal.h"

#include <stdarg.h>
#include <stdio.h>

static struct {
    bool ready;
    int device;
    cudaStream_t compute; /* every kernel and product */
    cudaStream_t copy;    /* snapshot copies, concurrent with compute */
    cudaEvent_t queued;   /* marks the compute work a snapshot must follow */
    cudaEvent_t copied;   /* the last snapshot copy */
    cublasHandle_t blas;
} gpu;

/* Per thread: the checkpoint sidecar's errors must not overwrite the
 * training thread's. */
static _Thread_local char error_text[512];

int cuda_fail(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(error_text, sizeof(error_text), format, args);
    va_end(args);
    return -1;
}

int cuda_check(cudaError_t code, const char *what)
{
    if (code == cudaSuccess)
        return 0;
    /* Clears a non-sticky error so that the next check reports its own. */
    (void)cudaGetLastError();
    return cuda_fail("%s: %s (%s)", what, cudaGetErrorString(code), cudaGetErrorName(code));
}

int cuda_blas_check(cublasStatus_t status, const char *what)
{
    if (status == CUBLAS_STATUS_SUCCESS)
        return 0;
    return cuda_fail("%s: cuBLAS %s", what, cublasGetStatusString(status));
}

const char *cuda_error(void)
{
    return error_text;
}

cudaStream_t cuda_compute_stream(void)
{
    return gpu.compute;
}

cublasHandle_t cuda_blas(void)
{
    return gpu.blas;
}

// ----------------------------------------------------------------------------
// device and streams

int cuda_device_count(void)
{
    int count = 0;
    cudaError_t code = cudaGetDeviceCount(&count);
    /* What the runtime says when libcuda.so is missing altogether. */
    if (code == cudaErrorInsufficientDriver) {
        (void)cudaGetLastError();
        cuda_fail("no usable CUDA driver (none installed, or one older than this CUDA runtime; "
                  "cudaGetDeviceCount: %s)",
                  cudaGetErrorName(code));
        return 0;
    }
    if (cuda_check(code, "cudaGetDeviceCount"))
        return 0;
    if (count == 0)
        cuda_fail("the CUDA driver reports no device");
    return count;
}

static int not_ready(const char *what)
{
    return cuda_fail("%s: the CUDA backend is not initialised (cuda_kernels_init)", what);
}

/* Streams are non-blocking: the legacy default stream, which other libraries
 * may use, must not serialize with training work. */
static int create_handles(int device)
{
    if (cuda_check(cudaSetDevice(device), "cudaSetDevice") ||
        cuda_check(cudaStreamCreateWithFlags(&gpu.compute, cudaStreamNonBlocking),
                   "creating the compute stream") ||
        cuda_check(cudaStreamCreateWithFlags(&gpu.copy, cudaStreamNonBlocking),
                   "creating the copy stream") ||
        cuda_check(cudaEventCreateWithFlags(&gpu.queued, cudaEventDisableTiming),
                   "creating an event") ||
        cuda_check(cudaEventCreateWithFlags(&gpu.copied, cudaEventDisableTiming),
                   "creating an event") ||
        cuda_blas_check(cublasCreate(&gpu.blas), "cublasCreate") ||
        cuda_blas_check(cublasSetStream(gpu.blas, gpu.compute), "cublasSetStream") ||
        cuda_blas_check(cublasSetMathMode(gpu.blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode"))
        return -1;
    return 0;
}

/* Destroys whatever create_handles made; the handles it did not reach are 0. */
static void destroy_handles(void)
{
    if (gpu.blas)
        cublasDestroy(gpu.blas);
    if (gpu.copied)
        cudaEventDestroy(gpu.copied);
    if (gpu.queued)
        cudaEventDestroy(gpu.queued);
    if (gpu.copy)
        cudaStreamDestroy(gpu.copy);
    if (gpu.compute)
        cudaStreamDestroy(gpu.compute);
    gpu.blas = NULL;
    gpu.copied = gpu.queued = NULL;
    gpu.copy = gpu.compute = NULL;
}

int cuda_kernels_init(int device, char *err, size_t err_len)
{
    int count = cuda_device_count(), status = -1; /* count 0: cuda_error() says why */
    if (gpu.ready)
        status = cuda_fail("already initialised on device %d", gpu.device);
    else if (count > 0 && (device < 0 || device >= count))
        status = cuda_fail("device %d does not exist: %d device(s) visible", device, count);
    else if (count > 0 && (status = create_handles(device)) != 0)
        destroy_handles();
    if (status == 0) {
        gpu.ready = true;
        gpu.device = device;
        return 0;
    }
    snprintf(err, err_len, "%s%s", count == 0 ? "no CUDA device: " : "", cuda_error());
    return -1;
}

void cuda_kernels_shutdown(void)
{
    if (!gpu.ready)
        return;
    cudaStreamSynchronize(gpu.compute);
    cudaStreamSynchronize(gpu.copy);
    cuda_scratch_release();
    destroy_handles();
    gpu.ready = false;
}

int cuda_kernels_sync(void)
{
    if (!gpu.ready)
        return not_ready("cuda_kernels_sync");
    return cuda_check(cudaStreamSynchronize(gpu.compute), "running CUDA kernels");
}

int cuda_set_tf32(bool enabled)
{
    if (!gpu.ready)
        return not_ready("cuda_set_tf32");
    return cuda_blas_check(cublasSetMathMode(gpu.blas, enabled ? CUBLAS_TF32_TENSOR_OP_MATH
                                                               : CUBLAS_DEFAULT_MATH),
                           "cublasSetMathMode");
}

// ----------------------------------------------------------------------------
// memory

void *cuda_alloc(size_t bytes)
{
    void *ptr = NULL;
    /* cudaMalloc(0) succeeds with NULL, which callers would read as failure. */
    if (cuda_check(cudaMalloc(&ptr, bytes ? bytes : 1), "cudaMalloc"))
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
static int copy_and_wait(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                         const char *what)
{
    if (!gpu.ready)
        return not_ready(what);
    if (cuda_check(cudaMemcpyAsync(dst, src, bytes, kind, gpu.compute), what))
        return -1;
    return cuda_check(cudaStreamSynchronize(gpu.compute), what);
}

int cuda_memcpy_h2d(void *device_dst, const void *host_src, size_t bytes)
{
    return copy_and_wait(device_dst, host_src, bytes, cudaMemcpyHostToDevice, "cuda_memcpy_h2d");
}

int cuda_memcpy_d2h(void *host_dst, const void *device_src, size_t bytes)
{
    return copy_and_wait(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, "cuda_memcpy_d2h");
}

int cuda_memset_zero(void *device_dst, size_t bytes)
{
    if (!gpu.ready)
        return not_ready("cuda_memset_zero");
    return cuda_check(cudaMemsetAsync(device_dst, 0, bytes, gpu.compute), "cuda_memset_zero");
}

int cuda_memcpy_d2d(void *device_dst, const void *device_src, size_t bytes)
{
    if (!gpu.ready)
        return not_ready("cuda_memcpy_d2d");
    return cuda_check(cudaMemcpyAsync(device_dst, device_src, bytes, cudaMemcpyDeviceToDevice,
                                      gpu.compute),
                      "cuda_memcpy_d2d");
}

int cuda_copy_rows(float *dst, size_t dst_pitch, const float *src, size_t src_pitch,
                   size_t width, size_t rows)
{
    if (!gpu.ready)
        return not_ready("cuda_copy_rows");
    if (rows == 0 || width == 0)
        return 0;
    return cuda_check(cudaMemcpy2DAsync(dst, dst_pitch * sizeof(float), src,
                                        src_pitch * sizeof(float), width * sizeof(float), rows,
                                        cudaMemcpyDeviceToDevice, gpu.compute),
                      "cuda_copy_rows");
}

// ----------------------------------------------------------------------------
// snapshot staging

void *cuda_host_alloc_pinned(size_t bytes)
{
    void *ptr = NULL;
    if (cuda_check(cudaHostAlloc(&ptr, bytes ? bytes : 1, cudaHostAllocDefault),
                   "cudaHostAlloc"))
        return NULL;
    return ptr;
}

void cuda_host_free_pinned(void *host_ptr)
{
    if (host_ptr)
        cudaFreeHost(host_ptr);
}

int cuda_snapshot_copy_async(void *pinned_dst, const void *device_src, size_t bytes)
{
    const char *what = "cuda_snapshot_copy_async";
    if (!gpu.ready)
        return not_ready(what);
    if (cuda_check(cudaEventRecord(gpu.queued, gpu.compute), what) ||
        cuda_check(cudaStreamWaitEvent(gpu.copy, gpu.queued, 0), what) ||
        cuda_check(cudaMemcpyAsync(pinned_dst, device_src, bytes, cudaMemcpyDeviceToHost,
                                   gpu.copy),
                   what) ||
        cuda_check(cudaEventRecord(gpu.copied, gpu.copy), what))
        return -1;
    return 0;
}

int cuda_snapshot_wait(void)
{
    const char *what = "cuda_snapshot_wait";
    if (!gpu.ready)
        return not_ready(what);
    /* The current device is per thread: a sidecar thread starts on device 0. */
    if (cuda_check(cudaSetDevice(gpu.device), what))
        return -1;
    return cuda_check(cudaEventSynchronize(gpu.copied), what);
}

int cuda_compute_after_snapshot(void)
{
    if (!gpu.ready)
        return not_ready("cuda_compute_after_snapshot");
    return cuda_check(cudaStreamWaitEvent(gpu.compute, gpu.copied, 0),
                      "cuda_compute_after_snapshot");
}
