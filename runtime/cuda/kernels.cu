/*
 * CUDA kernels of the model and the optimizers (contract in cuda_kernels.h).
 * The structure follows kernels.c one for one: the same cuBLAS products (the
 * row-major calls of kernels.c, mapped to cuBLAS's column-major convention by
 * gemm_rm), and kernels that do per row or per element what the CPU loops do.
 * Sums never use atomics: each has a fixed reduction tree, so a run repeats
 * bit for bit on the same GPU.
 */
#include "cuda_internal.h"
#include "cuda_kernels.h"

#include <cub/device/device_radix_sort.cuh>
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LAYERNORM_EPS 1e-5f
#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */

#define FULL_MASK 0xffffffffu
#define WARP 32
#define THREADS 256                  /* block size of every kernel */
#define ROWS_PER_BLOCK (THREADS / WARP) /* row kernels: one warp per row */

// ----------------------------------------------------------------------------
// launch and check helpers

/* At least one block: a grid of 0 is a launch error, and every kernel
 * checks its bounds anyway. */
static unsigned grid_for(size_t items, size_t per_block)
{
    return items ? (unsigned)((items + per_block - 1) / per_block) : 1u;
}

/* Every launch is followed by this: a bad configuration is reported by the
 * call that made it. */
static int launched(const char *what)
{
    return cuda_check(cudaGetLastError(), what);
}

static cudaStream_t stream(void)
{
    return cuda_compute_stream();
}

/* cuBLAS takes int dimensions; refuse what does not fit rather than wrap. */
static int fits_int(size_t value, const char *what)
{
    if (value <= (size_t)0x7fffffff)
        return 0;
    return cuda_fail("%s: dimension %zu exceeds cuBLAS's int range", what, value);
}

// ----------------------------------------------------------------------------
// scratch: buffers owned by this file, grown on demand and kept

enum {
    SCRATCH_ONES,      /* a vector of ones for column sums */
    SCRATCH_IOTA,      /* 0, 1, 2, ... for the token sort */
    SCRATCH_ROWS,      /* layernorm's dout * norm, [N, C] */
    SCRATCH_POINTERS,  /* attention's per-head pointer arrays */
    SCRATCH_SORTED,    /* sorted tokens and their rows */
    SCRATCH_SORT_TEMP, /* cub's temporary storage */
    SCRATCH_PARTIALS,  /* optimizer chunk sums */
    SCRATCH_SCALARS,   /* one double or float result */
    SCRATCH_BF16_A,    /* bf16 products: A and B of a product in bf16 */
    SCRATCH_BF16_B,
    SCRATCH_ROUNDED_QKV, /* bf16 attention: operands rounded to bf16, in fp32 */
    SCRATCH_ROUNDED_ATT,
    SCRATCH_ROUNDED_DOUT,
    SCRATCH_COUNT
};

static struct {
    void *ptr;
    size_t bytes;
} scratch[SCRATCH_COUNT];

/* Returns scratch `slot` of at least `bytes`, or NULL with the error set.
 * *grown (may be NULL) tells whether the contents were lost. */
static void *scratch_get(int slot, size_t bytes, bool *grown, const char *what)
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

static void timing_release(void);

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
static const float *ones(size_t n, const char *what)
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
static const int *iota(size_t n, const char *what)
{
    bool grown;
    int *v = (int *)scratch_get(SCRATCH_IOTA, n * sizeof(int), &grown, what);
    if (!v || !grown)
        return v;
    size_t count = scratch[SCRATCH_IOTA].bytes / sizeof(int);
    iota_kernel<<<grid_for(count, THREADS), THREADS, 0, stream()>>>(v, count);
    return filled(SCRATCH_IOTA, v, what);
}

// ----------------------------------------------------------------------------
// reductions: fixed trees, so every lane and every run gets the same bits

struct Sum {
    template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

/* A butterfly: every lane ends with the same value (a + b == b + a). */
template <typename T, typename Op> __device__ T warp_reduce(T value, Op op)
{
    for (int offset = WARP / 2; offset > 0; offset /= 2)
        value = op(value, __shfl_xor_sync(FULL_MASK, value, offset));
    return value;
}

/* Every thread of the block gets the result. The block is THREADS wide. */
template <typename T, typename Op> __device__ T block_reduce(T value, Op op, T identity)
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

// ----------------------------------------------------------------------------
// cuBLAS timing (PHALANX_CUDA_GEMM_TIMING=1): an event pair around every call,
// summed in batches so that the pool stays small.

enum { TIMING_PAIRS = 1024 };

static struct {
    int enabled; /* 0: not read from the environment yet, 1: on, 2: off */
    cudaEvent_t begin[TIMING_PAIRS], end[TIMING_PAIRS];
    int used;
    double seconds;
    long calls;
} timing;

extern "C" bool cuda_gemm_timing(void)
{
    if (timing.enabled == 0) {
        const char *flag = getenv("PHALANX_CUDA_GEMM_TIMING");
        timing.enabled = flag && *flag && strcmp(flag, "0") != 0 ? 1 : 2;
    }
    return timing.enabled == 1;
}

/* Adds up the recorded pairs (waits for the stream) and empties the pool. */
static int drain_timing(void)
{
    if (timing.used == 0)
        return 0;
    if (cuda_check(cudaStreamSynchronize(stream()), "cuBLAS timing"))
        return -1;
    for (int i = 0; i < timing.used; i++) {
        float ms = 0.0f;
        if (cuda_check(cudaEventElapsedTime(&ms, timing.begin[i], timing.end[i]),
                       "cuBLAS timing"))
            return -1;
        timing.seconds += ms * 1e-3;
    }
    timing.used = 0;
    return 0;
}

/* Returns the pair for the next call, or -1 (timing off, or no events). */
static int timing_begin(void)
{
    if (!cuda_gemm_timing())
        return -1;
    if (timing.used == TIMING_PAIRS && drain_timing())
        return -1;
    int i = timing.used;
    if (!timing.begin[i] && (cuda_check(cudaEventCreate(&timing.begin[i]), "cuBLAS timing") ||
                             cuda_check(cudaEventCreate(&timing.end[i]), "cuBLAS timing")))
        return -1;
    if (cuda_check(cudaEventRecord(timing.begin[i], stream()), "cuBLAS timing"))
        return -1;
    return i;
}

static void timing_end(int pair)
{
    if (pair < 0 || cuda_check(cudaEventRecord(timing.end[pair], stream()), "cuBLAS timing"))
        return;
    timing.used = pair + 1;
    timing.calls++;
}

extern "C" double cuda_gemm_seconds(long *calls)
{
    drain_timing();
    if (calls)
        *calls = timing.calls;
    return timing.seconds;
}

static void timing_release(void)
{
    for (int i = 0; i < TIMING_PAIRS; i++) {
        if (timing.begin[i]) {
            cudaEventDestroy(timing.begin[i]);
            cudaEventDestroy(timing.end[i]);
        }
        timing.begin[i] = timing.end[i] = NULL;
    }
    timing.used = 0;
    timing.seconds = 0.0;
    timing.calls = 0;
}

// ----------------------------------------------------------------------------
// matrix products

/* --precision bf16: the products' inputs rounded to bf16, fp32 sums. Set
 * once at open (cuda_set_bf16), like TF32's math mode. */
static bool bf16_products;

extern "C" int cuda_set_bf16(bool enabled)
{
    bf16_products = enabled;
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
static const __nv_bfloat16 *bf16_copy(int slot, const float *x, size_t count, const char *what)
{
    __nv_bfloat16 *copy =
        (__nv_bfloat16 *)scratch_get(slot, count * sizeof(__nv_bfloat16), NULL, what);
    if (!copy)
        return NULL;
    to_bf16_kernel<<<grid_for(count, THREADS), THREADS, 0, stream()>>>(copy, x, count);
    return launched(what) ? NULL : copy;
}

/* x itself in fp32, or under bf16 a copy of its `count` floats rounded to
 * bf16 (still fp32: a product of such values is exact, so an fp32 or TF32
 * product of them is the bf16 product). */
static const float *product_input(int slot, const float *x, size_t count, const char *what)
{
    if (!bf16_products)
        return x;
    float *copy = (float *)scratch_get(slot, count * sizeof(float), NULL, what);
    if (!copy)
        return NULL;
    round_bf16_kernel<<<grid_for(count, THREADS), THREADS, 0, stream()>>>(copy, x, count);
    return launched(what) ? NULL : copy;
}

/* Elements a row-major rows x cols view with leading dimension ld spans. */
static size_t span(int rows, int cols, int ld)
{
    return rows > 0 && cols > 0 ? (size_t)(rows - 1) * ld + cols : 0;
}

/* cublasGemmEx on bf16 copies of A and B (op(A) M x K, op(B) K x N), fp32
 * compute and output; operands swapped as in gemm_rm. */
static int gemm_rm_bf16(cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K,
                        float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                        float *C, int ldc, const char *what)
{
    bool na = ta == CUBLAS_OP_N, nb = tb == CUBLAS_OP_N;
    const __nv_bfloat16 *a = bf16_copy(SCRATCH_BF16_A, A, span(na ? M : K, na ? K : M, lda), what);
    const __nv_bfloat16 *b = a ? bf16_copy(SCRATCH_BF16_B, B, span(nb ? K : N, nb ? N : K, ldb),
                                           what)
                               : NULL;
    if (!b)
        return -1;
    int pair = timing_begin();
    cublasStatus_t status = cublasGemmEx(cuda_blas(), tb, ta, N, M, K, &alpha, b, CUDA_R_16BF,
                                         ldb, a, CUDA_R_16BF, lda, &beta, C, CUDA_R_32F, ldc,
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    timing_end(pair);
    return cuda_blas_check(status, what);
}

/* The row-major product of cblas_sgemm(CblasRowMajor, ...) on cuBLAS:
 * C = op(A) op(B) in row-major is C^T = op(B)^T op(A)^T in column-major, so
 * the operands swap and the transposition flags stay. */
static int gemm_rm(cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc,
                   const char *what)
{
    if (bf16_products)
        return gemm_rm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, what);
    int pair = timing_begin();
    cublasStatus_t status = cublasSgemm(cuda_blas(), tb, ta, N, M, K, &alpha, B, ldb, A, lda,
                                        &beta, C, ldc);
    timing_end(pair);
    return cuda_blas_check(status, what);
}

static int gemm_batched_rm(cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K,
                           float alpha, float *const *A, int lda, float *const *B, int ldb,
                           float beta, float *const *C, int ldc, int batch, const char *what)
{
    int pair = timing_begin();
    cublasStatus_t status = cublasSgemmBatched(cuda_blas(), tb, ta, N, M, K, &alpha,
                                               (const float *const *)B, ldb,
                                               (const float *const *)A, lda, &beta, C, ldc,
                                               batch);
    timing_end(pair);
    return cuda_blas_check(status, what);
}

/* Column sums of a row-major [rows, cols] matrix: y[cols] += x^T ones. */
static int column_sums_accumulate(float *y, const float *x, size_t rows, int cols,
                                  const char *what)
{
    const float *one = ones(rows, what);
    if (!one || fits_int(rows, what))
        return -1;
    const float alpha = 1.0f, beta = 1.0f;
    int pair = timing_begin();
    cublasStatus_t status = cublasSgemv(cuda_blas(), CUBLAS_OP_N, cols, (int)rows, &alpha, x,
                                        cols, one, 1, &beta, y, 1);
    timing_end(pair);
    return cuda_blas_check(status, what);
}

__global__ void add_bias_kernel(float *out, const float *bias, size_t N, int OC)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < N * OC)
        out[i] += bias[i % OC];
}

extern "C" int cuda_matmul_forward(float *out, const float *inp, const float *weight,
                                   const float *bias, size_t N, int IC, int OC)
{
    const char *what = "matmul_forward";
    if (fits_int(N, what) ||
        gemm_rm(CUBLAS_OP_N, CUBLAS_OP_T, (int)N, OC, IC, 1.0f, inp, IC, weight, IC, 0.0f, out,
                OC, what))
        return -1;
    if (!bias)
        return 0;
    add_bias_kernel<<<grid_for(N * OC, THREADS), THREADS, 0, stream()>>>(out, bias, N, OC);
    return launched(what);
}

extern "C" int cuda_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                    const float *inp, const float *weight, size_t N, int IC,
                                    int OC)
{
    const char *what = "matmul_backward";
    if (fits_int(N, what))
        return -1;
    if (dinp && gemm_rm(CUBLAS_OP_N, CUBLAS_OP_N, (int)N, IC, OC, 1.0f, dout, OC, weight, IC, 0.0f,
                        dinp, IC, what))
        return -1;
    if (gemm_rm(CUBLAS_OP_T, CUBLAS_OP_N, OC, IC, (int)N, 1.0f, dout, OC, inp, IC, 1.0f, dweight,
                IC, what))
        return -1;
    return dbias ? column_sums_accumulate(dbias, dout, N, OC, what) : 0;
}

// ----------------------------------------------------------------------------
// embeddings

__global__ void encoder_forward_kernel(float *out, const int *tokens, const float *wte,
                                       const float *wpe, int T, int C, int pos_offset, size_t count)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= count)
        return;
    size_t n = i / C;
    int c = (int)(i % C);
    out[i] = wte[(size_t)tokens[n] * C + c] + wpe[(size_t)(pos_offset + (int)(n % T)) * C + c];
}

extern "C" int cuda_encoder_forward(float *out, const int *tokens, const float *wte,
                                    const float *wpe, int B, int T, int C, int pos_offset)
{
    size_t count = (size_t)B * T * C;
    encoder_forward_kernel<<<grid_for(count, THREADS), THREADS, 0, stream()>>>(
        out, tokens, wte, wpe, T, C, pos_offset, count);
    return launched("encoder_forward");
}

/* dwpe row t gets the batch's rows t, b = 0, 1, ... in order: the CPU's sum. */
__global__ void wpe_backward_kernel(float *dwpe, const float *dout, int B, int T, int C,
                                    int pos_offset)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)T * C)
        return;
    size_t t = i / C, c = i % C;
    float *d = dwpe + (pos_offset + t) * C + c;
    float acc = *d;
    for (int b = 0; b < B; b++)
        acc += dout[((size_t)b * T + t) * C + c];
    *d = acc;
}

/* One block per run of equal tokens in the sorted list (the block at the
 * run's first entry does the work): the rows of that token, ascending (the
 * sort is stable), are added into its row of dwte, as the CPU does. */
__global__ void wte_backward_kernel(float *dwte, const float *dout, const int *sorted_tokens,
                                    const int *sorted_rows, int N, int C)
{
    int first = blockIdx.x, token = sorted_tokens[first];
    if (first > 0 && sorted_tokens[first - 1] == token)
        return;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float *d = dwte + (size_t)token * C + c;
        float acc = *d;
        for (int j = first; j < N && sorted_tokens[j] == token; j++)
            acc += dout[(size_t)sorted_rows[j] * C + c];
        *d = acc;
    }
}

/* Sorts (token, row) pairs by token so that each row of dwte is summed by one
 * block in a fixed order: atomics would make the sum's order, and its bits,
 * change from run to run. */
static int sort_tokens(const int *tokens, int N, int **sorted_tokens, int **sorted_rows)
{
    const char *what = "encoder_backward: sorting tokens";
    const int *rows = iota((size_t)N, what);
    int *sorted = (int *)scratch_get(SCRATCH_SORTED, 2 * (size_t)N * sizeof(int), NULL, what);
    if (!rows || !sorted)
        return -1;
    *sorted_tokens = sorted;
    *sorted_rows = sorted + N;
    size_t temp_bytes = 0;
    if (cuda_check(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, tokens, *sorted_tokens,
                                                   rows, *sorted_rows, N, 0, 32, stream()),
                   what))
        return -1;
    void *temp = scratch_get(SCRATCH_SORT_TEMP, temp_bytes, NULL, what);
    if (!temp)
        return -1;
    return cuda_check(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, tokens, *sorted_tokens,
                                                      rows, *sorted_rows, N, 0, 32, stream()),
                      what);
}

extern "C" int cuda_encoder_backward(float *dwte, float *dwpe, const float *dout,
                                     const int *tokens, int B, int T, int C, int pos_offset)
{
    const char *what = "encoder_backward";
    int N = B * T, *sorted_tokens, *sorted_rows;
    if (N == 0)
        return 0;
    wpe_backward_kernel<<<grid_for((size_t)T * C, THREADS), THREADS, 0, stream()>>>(
        dwpe, dout, B, T, C, pos_offset);
    if (launched(what) || sort_tokens(tokens, N, &sorted_tokens, &sorted_rows))
        return -1;
    wte_backward_kernel<<<N, THREADS, 0, stream()>>>(dwte, dout, sorted_tokens, sorted_rows, N, C);
    return launched(what);
}

// ----------------------------------------------------------------------------
// layernorm: one warp per row

/* The warp's row index, or -1 past the end. */
__device__ long warp_row(size_t rows)
{
    size_t row = blockIdx.x * (size_t)ROWS_PER_BLOCK + threadIdx.x / WARP;
    return row < rows ? (long)row : -1;
}

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

extern "C" int cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                      const float *weight, const float *bias, size_t N, int C)
{
    layernorm_forward_kernel<<<grid_for(N, ROWS_PER_BLOCK), THREADS, 0, stream()>>>(
        out, mean, rstd, inp, weight, bias, N, C);
    return launched("layernorm_forward");
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

extern "C" int cuda_layernorm_backward(float *dinp, float *dweight, float *dbias,
                                       const float *dout, const float *inp, const float *weight,
                                       const float *mean, const float *rstd, size_t N, int C)
{
    const char *what = "layernorm_backward";
    float *dout_norm = (float *)scratch_get(SCRATCH_ROWS, N * C * sizeof(float), NULL, what);
    if (!dout_norm)
        return -1;
    layernorm_backward_kernel<<<grid_for(N, ROWS_PER_BLOCK), THREADS, 0, stream()>>>(
        dinp, dout_norm, dout, inp, weight, mean, rstd, N, C);
    if (launched(what) || column_sums_accumulate(dweight, dout_norm, N, C, what))
        return -1;
    return column_sums_accumulate(dbias, dout, N, C, what);
}

// ----------------------------------------------------------------------------
// attention: the products of kernels.c on strided views of qkv, batched over
// (batch, head) with arrays of pointers; the causal softmax one warp per row

enum { MAX_VIEWS = 9 };

/* View v of pair (b, h) starts at base[v] + b * batch_stride[v] + h * head_stride[v]. */
struct HeadViews {
    float *base[MAX_VIEWS];
    size_t batch_stride[MAX_VIEWS], head_stride[MAX_VIEWS];
    int count;
};

__global__ void head_pointers_kernel(float **out, HeadViews views, int B, int NH)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x, pairs = B * NH;
    if (i >= views.count * pairs)
        return;
    int v = i / pairs, b = i % pairs / NH, h = i % NH;
    out[i] = views.base[v] + b * views.batch_stride[v] + h * views.head_stride[v];
}

/* Fills one array of B*NH pointers per view; array v starts at (*arrays) + v * B*NH. */
static int head_pointers(const HeadViews *views, int B, int NH, float ***arrays, const char *what)
{
    size_t count = (size_t)views->count * B * NH;
    *arrays = (float **)scratch_get(SCRATCH_POINTERS, count * sizeof(float *), NULL, what);
    if (!*arrays)
        return -1;
    head_pointers_kernel<<<grid_for(count, THREADS), THREADS, 0, stream()>>>(*arrays, *views, B,
                                                                             NH);
    return launched(what);
}

/* Row r of att is query position t = r % T: softmax over keys 0..t, zeros after. */
__global__ void softmax_causal_kernel(float *att, size_t rows, int T)
{
    long r = warp_row(rows);
    if (r < 0)
        return;
    int lane = threadIdx.x % WARP, t = (int)(r % T);
    float *row = att + r * T;
    float maxval = -INFINITY;
    for (int j = lane; j <= t; j += WARP)
        maxval = fmaxf(maxval, row[j]);
    maxval = warp_reduce(maxval, Max());
    float sum = 0.0f;
    for (int j = lane; j <= t; j += WARP) {
        row[j] = expf(row[j] - maxval);
        sum += row[j];
    }
    float inv = 1.0f / warp_reduce(sum, Sum());
    for (int j = lane; j <= t; j += WARP)
        row[j] *= inv;
    for (int j = t + 1 + lane; j < T; j += WARP)
        row[j] = 0.0f;
}

/* dS = P * (dP - rowsum(P * dP)), zeros above the diagonal. */
__global__ void softmax_causal_backward_kernel(float *datt, const float *att, size_t rows, int T)
{
    long r = warp_row(rows);
    if (r < 0)
        return;
    int lane = threadIdx.x % WARP, t = (int)(r % T);
    const float *p = att + r * T;
    float *d = datt + r * T;
    float dot = 0.0f;
    for (int j = lane; j <= t; j += WARP)
        dot += p[j] * d[j];
    dot = warp_reduce(dot, Sum());
    for (int j = lane; j <= t; j += WARP)
        d[j] = p[j] * (d[j] - dot);
    for (int j = t + 1 + lane; j < T; j += WARP)
        d[j] = 0.0f;
}

/* The views of qkv (or dqkv) [B, T, 3C]: q, k and v of head h are D columns
 * at h*D, C + h*D and 2C + h*D of rows 3C apart. */
static void qkv_views(HeadViews *views, const float *qkv, int T, int C, int NH)
{
    for (int part = 0; part < 3; part++) {
        int v = views->count++;
        views->base[v] = (float *)qkv + (size_t)part * C;
        views->batch_stride[v] = (size_t)T * 3 * C;
        views->head_stride[v] = (size_t)(C / NH);
    }
}

/* [B, NH, T, T] (att, datt) or [B, T, C] (out, dout). */
static void square_view(HeadViews *views, const float *base, int T, int NH)
{
    int v = views->count++;
    views->base[v] = (float *)base;
    views->batch_stride[v] = (size_t)NH * T * T;
    views->head_stride[v] = (size_t)T * T;
}

static void rows_view(HeadViews *views, const float *base, int T, int C, int NH)
{
    int v = views->count++;
    views->base[v] = (float *)base;
    views->batch_stride[v] = (size_t)T * C;
    views->head_stride[v] = (size_t)(C / NH);
}

/* Under bf16, src rounded to bf16 into dst (both fp32). */
static int round_into(float *dst, const float *src, size_t count, const char *what)
{
    round_bf16_kernel<<<grid_for(count, THREADS), THREADS, 0, stream()>>>(dst, src, count);
    return launched(what);
}

extern "C" int cuda_attention_forward(float *out, float *att, const float *qkv, int B, int T,
                                      int C, int NH)
{
    const char *what = "attention_forward";
    int D = C / NH, C3 = 3 * C, pairs = B * NH;
    float scale = 1.0f / sqrtf((float)D);
    size_t rows = (size_t)pairs * T, att_count = rows * T;
    // the products' inputs: qkv and the probabilities, rounded under bf16
    const float *qkv_in = product_input(SCRATCH_ROUNDED_QKV, qkv, (size_t)B * T * C3, what);
    float *att_in = !bf16_products ? att
                                   : (float *)scratch_get(SCRATCH_ROUNDED_ATT,
                                                          att_count * sizeof(float), NULL, what);
    if (!qkv_in || !att_in)
        return -1;
    HeadViews views = {};
    qkv_views(&views, qkv_in, T, C, NH);
    square_view(&views, att, T, NH);
    rows_view(&views, out, T, C, NH);
    square_view(&views, att_in, T, NH);
    float **ptr;
    if (head_pointers(&views, B, NH, &ptr, what))
        return -1;
    float **q = ptr, **k = ptr + pairs, **v = ptr + 2 * pairs, **p = ptr + 3 * pairs,
          **y = ptr + 4 * pairs, **p_in = ptr + 5 * pairs;
    if (gemm_batched_rm(CUBLAS_OP_N, CUBLAS_OP_T, T, T, D, scale, q, C3, k, C3, 0.0f, p, T, pairs,
                        what))
        return -1;
    softmax_causal_kernel<<<grid_for(rows, ROWS_PER_BLOCK), THREADS, 0, stream()>>>(att, rows, T);
    if (launched(what) || (att_in != att && round_into(att_in, att, att_count, what)))
        return -1;
    return gemm_batched_rm(CUBLAS_OP_N, CUBLAS_OP_N, T, D, T, 1.0f, p_in, T, v, C3, 0.0f, y, C,
                           pairs, what);
}

extern "C" int cuda_attention_backward(float *dqkv, float *datt, const float *dout,
                                       const float *qkv, const float *att, int B, int T, int C,
                                       int NH)
{
    const char *what = "attention_backward";
    int D = C / NH, C3 = 3 * C, pairs = B * NH;
    float scale = 1.0f / sqrtf((float)D);
    size_t rows = (size_t)pairs * T, att_count = rows * T;
    // the products' inputs, rounded under bf16; the softmax backward reads att in fp32
    const float *qkv_in = product_input(SCRATCH_ROUNDED_QKV, qkv, (size_t)B * T * C3, what);
    const float *att_in = product_input(SCRATCH_ROUNDED_ATT, att, att_count, what);
    const float *dout_in = product_input(SCRATCH_ROUNDED_DOUT, dout, (size_t)B * T * C, what);
    if (!qkv_in || !att_in || !dout_in)
        return -1;
    HeadViews views = {};
    qkv_views(&views, qkv_in, T, C, NH);
    qkv_views(&views, dqkv, T, C, NH);
    square_view(&views, att_in, T, NH);
    square_view(&views, datt, T, NH);
    rows_view(&views, dout_in, T, C, NH);
    float **ptr;
    if (head_pointers(&views, B, NH, &ptr, what))
        return -1;
    float **q = ptr, **k = ptr + pairs, **v = ptr + 2 * pairs;
    float **dq = ptr + 3 * pairs, **dk = ptr + 4 * pairs, **dv = ptr + 5 * pairs;
    float **p = ptr + 6 * pairs, **dp = ptr + 7 * pairs, **dy = ptr + 8 * pairs;
    // dP = dY V^T ; dV = P^T dY
    if (gemm_batched_rm(CUBLAS_OP_N, CUBLAS_OP_T, T, T, D, 1.0f, dy, C, v, C3, 0.0f, dp, T, pairs,
                        what) ||
        gemm_batched_rm(CUBLAS_OP_T, CUBLAS_OP_N, T, D, T, 1.0f, p, T, dy, C, 0.0f, dv, C3, pairs,
                        what))
        return -1;
    softmax_causal_backward_kernel<<<grid_for(rows, ROWS_PER_BLOCK), THREADS, 0, stream()>>>(
        datt, att, rows, T);
    if (launched(what))
        return -1;
    // dS: datt, or under bf16 datt rounded into the rounded probabilities'
    // buffer (dV, their last reader, is queued before)
    float **ds = dp;
    if (att_in != att) {
        if (round_into((float *)att_in, datt, att_count, what))
            return -1;
        ds = p;
    }
    // dQ = scale dS K ; dK = scale dS^T Q
    if (gemm_batched_rm(CUBLAS_OP_N, CUBLAS_OP_N, T, D, T, scale, ds, T, k, C3, 0.0f, dq, C3,
                        pairs, what))
        return -1;
    return gemm_batched_rm(CUBLAS_OP_T, CUBLAS_OP_N, T, D, T, scale, ds, T, q, C3, 0.0f, dk, C3,
                           pairs, what);
}

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

extern "C" int cuda_gelu_forward(float *out, const float *inp, size_t count)
{
    gelu_forward_kernel<<<grid_for(count, THREADS), THREADS, 0, stream()>>>(out, inp, count);
    return launched("gelu_forward");
}

extern "C" int cuda_gelu_backward(float *dinp, const float *inp, const float *dout, size_t count)
{
    gelu_backward_kernel<<<grid_for(count, THREADS), THREADS, 0, stream()>>>(dinp, inp, dout,
                                                                             count);
    return launched("gelu_backward");
}

extern "C" int cuda_residual_forward(float *out, const float *a, const float *b, size_t count)
{
    residual_kernel<<<grid_for(count, THREADS), THREADS, 0, stream()>>>(out, a, b, count);
    return launched("residual_forward");
}

extern "C" int cuda_accumulate(float *dst, const float *src, size_t count)
{
    residual_kernel<<<grid_for(count, THREADS), THREADS, 0, stream()>>>(dst, dst, src, count);
    return launched("accumulate");
}

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

/* Copies a device double to the host and waits for it. */
static int read_double(double *host, const double *device, const char *what)
{
    if (cuda_check(cudaMemcpyAsync(host, device, sizeof(double), cudaMemcpyDeviceToHost, stream()),
                   what))
        return -1;
    return cuda_check(cudaStreamSynchronize(stream()), what);
}

extern "C" int cuda_crossentropy_forward(float *probs, float *losses, const float *logits,
                                         const int *targets, size_t N, int V, double *loss_sum)
{
    const char *what = "crossentropy_forward";
    double *total = (double *)scratch_get(SCRATCH_SCALARS, sizeof(double), NULL, what);
    if (!total || fits_int(N, what))
        return -1;
    *loss_sum = 0.0;
    if (N == 0)
        return 0;
    crossentropy_forward_kernel<<<(unsigned)N, THREADS, 0, stream()>>>(probs, losses, logits,
                                                                       targets, V);
    if (launched(what))
        return -1;
    sum_to_double_kernel<<<1, THREADS, 0, stream()>>>(total, losses, N);
    return launched(what) || read_double(loss_sum, total, what) ? -1 : 0;
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

extern "C" int cuda_crossentropy_backward(float *dlogits, const float *probs, const int *targets,
                                          float dloss, size_t N, int V)
{
    crossentropy_backward_kernel<<<grid_for(N * V, THREADS), THREADS, 0, stream()>>>(
        dlogits, probs, targets, dloss, N, V);
    return launched("crossentropy_backward");
}

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
static double *partials_for(const OptimTensor *tensors, int count, const char *what)
{
    size_t most = 1;
    for (int i = 0; i < count; i++)
        most = tensors[i].numel > most ? tensors[i].numel : most;
    size_t chunks = grid_for(most, SUM_CHUNK);
    return (double *)scratch_get(SCRATCH_PARTIALS, 2 * chunks * sizeof(double), NULL, what);
}

extern "C" int cuda_optim_grad_sumsq(const OptimTensor *tensors, int count, double *sumsq)
{
    const char *what = "optim_grad_sumsq";
    double *partials = partials_for(tensors, count, what);
    double *total = (double *)scratch_get(SCRATCH_SCALARS, sizeof(double), NULL, what);
    if (!partials || !total ||
        cuda_check(cudaMemsetAsync(total, 0, sizeof(double), stream()), what))
        return -1;
    for (int i = 0; i < count; i++) {
        size_t n = tensors[i].numel, chunks = grid_for(n, SUM_CHUNK);
        if (n == 0)
            continue;
        sumsq_chunks_kernel<<<(unsigned)chunks, THREADS, 0, stream()>>>(partials,
                                                                        tensors[i].grad, n);
        add_partials_kernel<<<1, THREADS, 0, stream()>>>(total, partials, chunks);
        if (launched(what))
            return -1;
    }
    return read_double(sumsq, total, what);
}

static int lamb_tensor(const StepConstants &k, const OptimTensor *t, float lr, float wd,
                       double *partials, float *step_lr, const char *what)
{
    size_t n = t->numel, chunks = grid_for(n, SUM_CHUNK);
    lamb_moments_kernel<<<(unsigned)chunks, THREADS, 0, stream()>>>(
        k, partials, partials + chunks, t->param, t->grad, t->m, t->v, n, wd);
    lamb_ratio_kernel<<<1, THREADS, 0, stream()>>>(step_lr, partials, partials + chunks, chunks,
                                                   lr);
    lamb_apply_kernel<<<grid_for(n, THREADS), THREADS, 0, stream()>>>(k, t->param, t->m, t->v, n,
                                                                     wd, step_lr);
    return launched(what);
}

static int adam_tensor(const StepConstants &k, const OptimTensor *t, float lr, float wd,
                       const char *what)
{
    adam_kernel<<<grid_for(t->numel, THREADS), THREADS, 0, stream()>>>(
        k, t->param, t->grad, t->m, t->v, t->numel, lr, wd);
    return launched(what);
}

/* Tensors run one after another on the stream, so they share the partials
 * and the step_lr scalar. */
extern "C" int cuda_optim_step(const OptimConfig *cfg, const OptimTensor *tensors, int count,
                               float lr, long step, float grad_scale)
{
    const char *what = "optim_step";
    if (step < 1)
        return cuda_fail("%s: step %ld is not 1-based", what, step);
    StepConstants k = step_constants(cfg, step, grad_scale);
    double *partials = partials_for(tensors, count, what);
    float *step_lr = (float *)scratch_get(SCRATCH_SCALARS, sizeof(double), NULL, what);
    if (!partials || !step_lr)
        return -1;
    for (int i = 0; i < count; i++) {
        const OptimTensor *t = &tensors[i];
        bool plain = t->exclude && !cfg->decay_all;
        float wd = plain ? 0.0f : cfg->weight_decay;
        if (t->numel == 0)
            continue;
        int status = cfg->kind == OPTIM_LAMB && !plain
                         ? lamb_tensor(k, t, lr, wd, partials, step_lr, what)
                         : adam_tensor(k, t, lr, wd, what);
        if (status)
            return -1;
    }
    return 0;
}
