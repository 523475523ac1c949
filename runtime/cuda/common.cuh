/*
 * Private to the CUDA kernels (the .cu files): the launch and check
 * helpers, the reductions, the scratch buffers and the matrix products that
 * more than one operation uses. The kernels follow kernels.c one for one: the
 * same cuBLAS products (the row-major calls of kernels.c, mapped to cuBLAS's
 * column-major convention by gemm_rm), and kernels that do per row or per
 * element what the CPU loops do. Sums never use atomics: each has a fixed
 * reduction tree, so a run repeats bit for bit on the same GPU.
 */
#ifndef PHALANX_CUDA_COMMON_CUH
#define PHALANX_CUDA_COMMON_CUH

#include "cuda_internal.h"
#include "cuda_kernels.h"

#include <math.h>

#define FULL_MASK 0xffffffffu
#define WARP 32
#define THREADS 256                  /* block size of every kernel */
#define ROWS_PER_BLOCK (THREADS / WARP) /* row kernels: one warp per row */

// ----------------------------------------------------------------------------
// launch and check helpers

/* At least one block: a grid of 0 is a launch error, and every kernel
 * checks its bounds anyway. */
static inline unsigned grid_for(size_t items, size_t per_block)
{
    return items ? (unsigned)((items + per_block - 1) / per_block) : 1u;
}

/* Every launch is followed by this: a bad configuration is reported by the
 * call that made it. */
static inline int launched(CudaContext *ctx, const char *what)
{
    return cuda_check(ctx, cudaGetLastError(), what);
}

/* cuBLAS takes int dimensions; refuse what does not fit rather than wrap. */
static inline int fits_int(CudaContext *ctx, size_t value, const char *what)
{
    if (value <= (size_t)0x7fffffff)
        return 0;
    return cuda_fail(ctx, "%s: dimension %zu exceeds cuBLAS's int range", what, value);
}

// ----------------------------------------------------------------------------
// scratch (scratch.cu): the context's buffers (slots in cuda_internal.h), grown
// on demand and kept

/* Returns scratch `slot` of at least `bytes`, or NULL with the error set.
 * *grown (may be NULL) tells whether the contents were lost. */
void *scratch_get(CudaContext *ctx, int slot, size_t bytes, bool *grown, const char *what);
/* A vector of n ones: column sums are a gemv against it. */
const float *ones(CudaContext *ctx, size_t n, const char *what);
/* 0, 1, ..., n-1: the row indices that the token sort carries along. */
const int *iota(CudaContext *ctx, size_t n, const char *what);
/* Copies a device double to the host and waits for it. */
int read_double(CudaContext *ctx, double *host, const double *device, const char *what);

// ----------------------------------------------------------------------------
// reductions: fixed trees, so every lane and every run gets the same bits

struct Sum {
    template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

/* A butterfly: every lane ends with the same value (a + b == b + a). */
template <typename T, typename Op> __device__ inline T warp_reduce(T value, Op op)
{
    for (int offset = WARP / 2; offset > 0; offset /= 2)
        value = op(value, __shfl_xor_sync(FULL_MASK, value, offset));
    return value;
}

/* Every thread of the block gets the result. The block is THREADS wide. */
template <typename T, typename Op> __device__ inline T block_reduce(T value, Op op, T identity)
{
    __shared__ T partial[THREADS / WARP];
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    value = warp_reduce(value, op);
    if (lane == 0)
        partial[warp] = value;
    __syncthreads();
    value = lane < THREADS / WARP ? partial[lane] : identity;
    value = warp_reduce(value, op);
    __syncthreads(); /* partial is reused by the next call */
    return value;
}

/* The warp's row index, or -1 past the end. */
__device__ inline long warp_row(size_t rows)
{
    size_t row = blockIdx.x * (size_t)ROWS_PER_BLOCK + threadIdx.x / WARP;
    return row < rows ? (long)row : -1;
}

// ----------------------------------------------------------------------------
// matrix products (matmul.cu)

/* cuBLAS timing (PHALANX_CUDA_GEMM_TIMING): its events, freed at shutdown. */
void timing_release(CudaContext *ctx);
/* x itself in fp32, or under bf16 a copy of its `count` floats rounded to
 * bf16 in scratch `slot` (still fp32). */
const float *product_input(CudaContext *ctx, int slot, const float *x, size_t count,
                           const char *what);
/* Under bf16, src rounded to bf16 into dst (both fp32). */
int round_into(CudaContext *ctx, float *dst, const float *src, size_t count, const char *what);
/* The row-major product of cblas_sgemm(CblasRowMajor, ...) on cuBLAS. */
int gemm_rm(CudaContext *ctx, cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K,
            float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C,
            int ldc, const char *what);
int gemm_batched_rm(CudaContext *ctx, cublasOperation_t ta, cublasOperation_t tb, int M, int N,
                    int K, float alpha, float *const *A, int lda, float *const *B, int ldb,
                    float beta, float *const *C, int ldc, int batch, const char *what);
/* Column sums of a row-major [rows, cols] matrix: y[cols] += x^T ones. */
int column_sums_accumulate(CudaContext *ctx, float *y, const float *x, size_t rows, int cols,
                           const char *what);

#endif
