/* The kernels' scratch buffers and constant vectors (contract in cuda_kernels.h). */
#include "common.cuh"

static struct {
    void *ptr;
    size_t bytes;
} scratch[SCRATCH_COUNT];

/* Returns scratch `slot` of at least `bytes`, or NULL with the error set.
 * *grown (may be NULL) tells whether the contents were lost. */
void *scratch_get(int slot, size_t bytes, bool *grown, const char *what)
{
    if (grown)
        *grown = false;
    bytes = bytes ? bytes : 1; /* a NULL buffer would read as a failure */
    if (scratch[slot].bytes >= bytes)
        return scratch[slot].ptr;
    /* Queued work may still read the old buffer. */
    if (cuda_check(cudaStreamSynchronize(stream()), what))
        return NULL;
    cudaFree(scratch[slot].ptr);
    scratch[slot].ptr = NULL;
    scratch[slot].bytes = 0;
    if (cuda_check(cudaMalloc(&scratch[slot].ptr, bytes), what))
        return NULL;
    scratch[slot].bytes = bytes;
    if (grown)
        *grown = true;
    return scratch[slot].ptr;
}

extern "C" void cuda_scratch_release(void)
{
    timing_release();
    for (int i = 0; i < SCRATCH_COUNT; i++) {
        cudaFree(scratch[i].ptr);
        scratch[i].ptr = NULL;
        scratch[i].bytes = 0;
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
template <typename T> static const T *filled(int slot, const T *buffer, const char *what)
{
    if (launched(what) == 0)
        return buffer;
    scratch[slot].bytes = 0;
    return NULL;
}

/* A vector of n ones: column sums are a gemv against it. */
const float *ones(size_t n, const char *what)
{
    bool grown;
    float *v = (float *)scratch_get(SCRATCH_ONES, n * sizeof(float), &grown, what);
    if (!v || !grown)
        return v;
    size_t count = scratch[SCRATCH_ONES].bytes / sizeof(float);
    fill_kernel<<<grid_for(count, THREADS), THREADS, 0, stream()>>>(v, 1.0f, count);
    return filled(SCRATCH_ONES, v, what);
}

/* 0, 1, ..., n-1: the row indices that the token sort carries along. */
const int *iota(size_t n, const char *what)
{
    bool grown;
    int *v = (int *)scratch_get(SCRATCH_IOTA, n * sizeof(int), &grown, what);
    if (!v || !grown)
        return v;
    size_t count = scratch[SCRATCH_IOTA].bytes / sizeof(int);
    iota_kernel<<<grid_for(count, THREADS), THREADS, 0, stream()>>>(v, count);
    return filled(SCRATCH_IOTA, v, what);
}

/* Copies a device double to the host and waits for it. */
int read_double(double *host, const double *device, const char *what)
{
    if (cuda_check(cudaMemcpyAsync(host, device, sizeof(double), cudaMemcpyDeviceToHost, stream()),
                   what))
        return -1;
    return cuda_check(cudaStreamSynchronize(stream()), what);
}
