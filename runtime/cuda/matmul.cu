/* Matrix products on cuBLAS, their bf16 variant and their timing (contract in cuda_kernels.h). */
#include "common.cuh"

#include <cuda_bf16.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------
// cuBLAS timing (PHALANX_CUDA_GEMM_TIMING=1): an event pair around every call,
// summed in batches so that the pool stays small.

extern "C" bool cuda_gemm_timing(CudaContext *ctx)
{
    if (ctx->timing.enabled == 0) {
        const char *flag = getenv("PHALANX_CUDA_GEMM_TIMING");
        ctx->timing.enabled = flag && *flag && strcmp(flag, "0") != 0 ? 1 : 2;
    }
    return ctx->timing.enabled == 1;
}

/* Adds up the recorded pairs (waits for the stream) and empties the pool. */
static int drain_timing(CudaContext *ctx)
{
    if (ctx->timing.used == 0)
        return 0;
    if (cuda_check(ctx, cudaStreamSynchronize(ctx->compute), "cuBLAS timing"))
        return -1;
    for (int i = 0; i < ctx->timing.used; i++) {
        float ms = 0.0f;
        if (cuda_check(ctx, cudaEventElapsedTime(&ms, ctx->timing.begin[i], ctx->timing.end[i]),
                       "cuBLAS timing"))
            return -1;
        ctx->timing.seconds += ms * 1e-3;
    }
    ctx->timing.used = 0;
    return 0;
}

/* Returns the pair for the next call, or -1 (timing off, or no events). */
static int timing_begin(CudaContext *ctx)
{
    if (!cuda_gemm_timing(ctx))
        return -1;
    if (ctx->timing.used == TIMING_PAIRS && drain_timing(ctx))
        return -1;
    int i = ctx->timing.used;
    if (!ctx->timing.begin[i] &&
        (cuda_check(ctx, cudaEventCreate(&ctx->timing.begin[i]), "cuBLAS timing") ||
         cuda_check(ctx, cudaEventCreate(&ctx->timing.end[i]), "cuBLAS timing")))
        return -1;
    if (cuda_check(ctx, cudaEventRecord(ctx->timing.begin[i], ctx->compute), "cuBLAS timing"))
        return -1;
    return i;
}

static void timing_end(CudaContext *ctx, int pair)
{
    if (pair < 0 ||
        cuda_check(ctx, cudaEventRecord(ctx->timing.end[pair], ctx->compute), "cuBLAS timing"))
        return;
    ctx->timing.used = pair + 1;
    ctx->timing.calls++;
}

extern "C" double cuda_gemm_seconds(CudaContext *ctx, long *calls)
{
    drain_timing(ctx);
    if (calls)
        *calls = ctx->timing.calls;
    return ctx->timing.seconds;
}

void timing_release(CudaContext *ctx)
{
    for (int i = 0; i < TIMING_PAIRS; i++) {
        if (ctx->timing.begin[i]) {
            cudaEventDestroy(ctx->timing.begin[i]);
            cudaEventDestroy(ctx->timing.end[i]);
        }
        ctx->timing.begin[i] = ctx->timing.end[i] = NULL;
    }
    ctx->timing.used = 0;
    ctx->timing.seconds = 0.0;
    ctx->timing.calls = 0;
}

// ----------------------------------------------------------------------------
// matrix products

extern "C" int cuda_set_bf16(CudaContext *ctx, bool enabled)
{
    ctx->bf16_products = enabled;
    return 0;
}

__global__ void to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t count)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < count)
        dst[i] = __float2bfloat16_rn(src[i]); // to nearest, ties to even: the CPU's rounding
}

__global__ void round_bf16_kernel(float *dst, const float *src, size_t count)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < count)
        dst[i] = __bfloat162float(__float2bfloat16_rn(src[i]));
}

/* The `count` floats from x, in bf16, in scratch `slot` (the same layout:
 * strided views stay valid at the same offsets). */
static const __nv_bfloat16 *bf16_copy(CudaContext *ctx, int slot, const float *x, size_t count,
                                      const char *what)
{
    __nv_bfloat16 *copy =
        (__nv_bfloat16 *)scratch_get(ctx, slot, count * sizeof(__nv_bfloat16), NULL, what);
    if (!copy)
        return NULL;
    to_bf16_kernel<<<grid_for(count, THREADS), THREADS, 0, ctx->compute>>>(copy, x, count);
    return launched(ctx, what) ? NULL : copy;
}

/* x itself in fp32, or under bf16 a copy of its `count` floats rounded to
 * bf16 (still fp32: a product of such values is exact, so an fp32 or TF32
 * product of them is the bf16 product). */
const float *product_input(CudaContext *ctx, int slot, const float *x, size_t count,
                           const char *what)
{
    if (!ctx->bf16_products)
        return x;
    float *copy = (float *)scratch_get(ctx, slot, count * sizeof(float), NULL, what);
    if (!copy)
        return NULL;
    round_bf16_kernel<<<grid_for(count, THREADS), THREADS, 0, ctx->compute>>>(copy, x, count);
    return launched(ctx, what) ? NULL : copy;
}

/* Elements a row-major rows x cols view with leading dimension ld spans. */
static size_t span(int rows, int cols, int ld)
{
    return rows > 0 && cols > 0 ? (size_t)(rows - 1) * ld + cols : 0;
}

/* cublasGemmEx on bf16 copies of A and B (op(A) M x K, op(B) K x N), fp32
 * compute and output; operands swapped as in gemm_rm. */
static int gemm_rm_bf16(CudaContext *ctx, cublasOperation_t ta, cublasOperation_t tb, int M, int N,
                        int K, float alpha, const float *A, int lda, const float *B, int ldb,
                        float beta, float *C, int ldc, const char *what)
{
    bool na = ta == CUBLAS_OP_N, nb = tb == CUBLAS_OP_N;
    const __nv_bfloat16 *a =
        bf16_copy(ctx, SCRATCH_BF16_A, A, span(na ? M : K, na ? K : M, lda), what);
    const __nv_bfloat16 *b =
        a ? bf16_copy(ctx, SCRATCH_BF16_B, B, span(nb ? K : N, nb ? N : K, ldb), what) : NULL;
    if (!b)
        return -1;
    int pair = timing_begin(ctx);
    cublasStatus_t status =
        cublasGemmEx(ctx->blas, tb, ta, N, M, K, &alpha, b, CUDA_R_16BF, ldb, a, CUDA_R_16BF, lda,
                     &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    timing_end(ctx, pair);
    return cuda_blas_check(ctx, status, what);
}

/* The row-major product of cblas_sgemm(CblasRowMajor, ...) on cuBLAS:
 * C = op(A) op(B) in row-major is C^T = op(B)^T op(A)^T in column-major, so
 * the operands swap and the transposition flags stay. */
int gemm_rm(CudaContext *ctx, cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K,
            float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C,
            int ldc, const char *what)
{
    if (ctx->bf16_products)
        return gemm_rm_bf16(ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, what);
    int pair = timing_begin(ctx);
    cublasStatus_t status =
        cublasSgemm(ctx->blas, tb, ta, N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc);
    timing_end(ctx, pair);
    return cuda_blas_check(ctx, status, what);
}

int gemm_batched_rm(CudaContext *ctx, cublasOperation_t ta, cublasOperation_t tb, int M, int N,
                    int K, float alpha, float *const *A, int lda, float *const *B, int ldb,
                    float beta, float *const *C, int ldc, int batch, const char *what)
{
    int pair = timing_begin(ctx);
    cublasStatus_t status =
        cublasSgemmBatched(ctx->blas, tb, ta, N, M, K, &alpha, (const float *const *)B, ldb,
                           (const float *const *)A, lda, &beta, C, ldc, batch);
    timing_end(ctx, pair);
    return cuda_blas_check(ctx, status, what);
}

/* Column sums of a row-major [rows, cols] matrix: y[cols] += x^T ones. */
int column_sums_accumulate(CudaContext *ctx, float *y, const float *x, size_t rows, int cols,
                           const char *what)
{
    const float *one = ones(ctx, rows, what);
    if (!one || fits_int(ctx, rows, what))
        return -1;
    const float alpha = 1.0f, beta = 1.0f;
    int pair = timing_begin(ctx);
    cublasStatus_t status =
        cublasSgemv(ctx->blas, CUBLAS_OP_N, cols, (int)rows, &alpha, x, cols, one, 1, &beta, y, 1);
    timing_end(ctx, pair);
    return cuda_blas_check(ctx, status, what);
}

__global__ void add_bias_kernel(float *out, const float *bias, size_t N, int OC)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < N * OC)
        out[i] += bias[i % OC];
}

extern "C" int cuda_matmul_forward(CudaContext *ctx, float *out, const float *inp,
                                   const float *weight, const float *bias, size_t N, int IC, int OC)
{
    const char *what = "matmul_forward";
    if (fits_int(ctx, N, what) || gemm_rm(ctx, CUBLAS_OP_N, CUBLAS_OP_T, (int)N, OC, IC, 1.0f, inp,
                                          IC, weight, IC, 0.0f, out, OC, what))
        return -1;
    if (!bias)
        return 0;
    add_bias_kernel<<<grid_for(N * OC, THREADS), THREADS, 0, ctx->compute>>>(out, bias, N, OC);
    return launched(ctx, what);
}

extern "C" int cuda_matmul_backward(CudaContext *ctx, float *dinp, float *dweight, float *dbias,
                                    const float *dout, const float *inp, const float *weight,
                                    size_t N, int IC, int OC)
{
    const char *what = "matmul_backward";
    if (fits_int(ctx, N, what))
        return -1;
    if (dinp && gemm_rm(ctx, CUBLAS_OP_N, CUBLAS_OP_N, (int)N, IC, OC, 1.0f, dout, OC, weight, IC,
                        0.0f, dinp, IC, what))
        return -1;
    if (gemm_rm(ctx, CUBLAS_OP_T, CUBLAS_OP_N, OC, IC, (int)N, 1.0f, dout, OC, inp, IC, 1.0f,
                dweight, IC, what))
        return -1;
    return dbias ? column_sums_accumulate(ctx, dbias, dout, N, OC, what) : 0;
}

/* Under bf16, src rounded to bf16 into dst (both fp32). */
int round_into(CudaContext *ctx, float *dst, const float *src, size_t count, const char *what)
{
    round_bf16_kernel<<<grid_for(count, THREADS), THREADS, 0, ctx->compute>>>(dst, src, count);
    return launched(ctx, what);
}
