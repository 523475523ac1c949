/* CPU kernels of the model (contract in kernels.h). */
#include "kernels.h"

#include "bf16.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

#define LAYERNORM_EPS 1e-5f

void kernels_set_threads(int threads)
{
    if (threads > 0)
        omp_set_num_threads(threads);
}

/* OpenBLAS runs single-threaded and the kernels split each product over the
 * OpenMP threads themselves: two thread pools on the same cores (OpenMP's
 * spinning between regions, OpenBLAS's own) slow each other down several
 * times over on a small machine. Each output block is computed by one thread
 * from the whole inner dimension, so results do not depend on the split. */
static void single_threaded_blas(void)
{
    static int done;
    if (!done) {
        openblas_set_num_threads(1);
        done = 1;
    }
}

static void bf16_gemm_rounded(bool trans_a, bool trans_b, size_t M, size_t N, size_t K,
                              float alpha, const float *A, size_t lda, const float *B,
                              size_t ldb, float beta, float *C, size_t ldc);

/* Memory for rounded copies of a bf16 product's operands. Out of memory in
 * the middle of a step has no error path through the kernels' interface:
 * stop loudly rather than train on garbage. */
static void *bf16_scratch(size_t bytes)
{
    void *p = malloc(bytes + 1);
    if (!p) {
        fprintf(stderr, "phalanx: out of memory for %zu bytes of bf16 operands\n", bytes);
        abort();
    }
    return p;
}

/* Which library's sgemm is faster depends on the CPU, not on the shape:
 * oneDNN 2.6's JIT sgemm measured about 1.1-1.6x OpenBLAS 0.3.21 on this
 * model's shapes on an AVX-512 CPU, but on an AVX2-only one (AMD EPYC Zen 3)
 * about 0.55x wherever the left operand is transposed (every weight
 * gradient, attention's dK and dV) and 0.9x on most of the rest, one product
 * per thread on 2 threads. A property of the CPU, so the choice (and the
 * bits) are the same in every run on a machine, whatever --threads. */
static bool onednn_sgemm_is_faster(void)
{
#ifdef HAVE_DNNL
    return __builtin_cpu_supports("avx512f");
#else
    return false;
#endif
}

/* C = alpha op(A) op(B) + beta C, row-major, on the calling thread alone;
 * `bf16`: inputs rounded to bfloat16 (bf16.h). Called from inside OpenMP
 * regions: oneDNN then runs sequentially (OpenBLAS is single-threaded). */
static void gemm(bool bf16, bool trans_a, bool trans_b, size_t M, size_t N, size_t K,
                 float alpha, const float *A, size_t lda, const float *B, size_t ldb, float beta,
                 float *C, size_t ldc)
{
    if (bf16) {
        bf16_gemm_rounded(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#ifdef HAVE_DNNL
    if (onednn_sgemm_is_faster()) {
        dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', (dnnl_dim_t)M, (dnnl_dim_t)N,
                   (dnnl_dim_t)K, alpha, A, (dnnl_dim_t)lda, B, (dnnl_dim_t)ldb, beta, C,
                   (dnnl_dim_t)ldc);
        return;
    }
#endif
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, alpha, A,
                (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

/* The per-head products of attention in bf16: operands rounded to bf16 in
 * fp32 copies, then the fp32 product (exact products, fp32 sums: the same
 * arithmetic as a bf16 matmul). oneDNN's bf16 matmul costs tens of
 * microseconds per call to set up, more than these small products take. */
static void bf16_gemm_rounded(bool trans_a, bool trans_b, size_t M, size_t N, size_t K,
                              float alpha, const float *A, size_t lda, const float *B,
                              size_t ldb, float beta, float *C, size_t ldc)
{
    size_t a_rows = trans_a ? K : M, a_cols = trans_a ? M : K; // as stored
    size_t b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
    float *a = bf16_scratch((a_rows * a_cols + b_rows * b_cols) * sizeof(float));
    float *b = a + a_rows * a_cols;
    bf16_round_rows(a, A, lda, a_rows, a_cols);
    bf16_round_rows(b, B, ldb, b_rows, b_cols);
    gemm(false, trans_a, trans_b, M, N, K, alpha, a, a_cols, b, b_cols, beta, C, ldc);
    free(a);
}

/* [begin, end) of `count` items for the calling thread of the current team. */
static void thread_range(size_t count, size_t *begin, size_t *end)
{
    size_t threads = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
    size_t chunk = (count + threads - 1) / threads;
    *begin = id * chunk < count ? id * chunk : count;
    *end = *begin + chunk < count ? *begin + chunk : count;
}

// ----------------------------------------------------------------------------
// exp without libm: plain arithmetic, no branch and no library call, so GCC
// vectorizes the loops that call it, and a vector lane computes exactly what
// a scalar remainder does (bits do not depend on where a thread's range of
// elements starts). libm's expf and tanhf are not vectorized, and each is a
// call through the PLT for every element.

/* x with its magnitude at most `limit` (> 0), sign kept; a NaN stays NaN. On
 * the bit patterns, in unsigned integers: a float compare and select lets
 * GCC fold the clamped path into constants, and the branch that is left
 * stops vectorization (fminf is a libm call). */
static inline float clamp_magnitude(float x, float limit)
{
    uint32_t xb, lb;
    memcpy(&xb, &x, sizeof(xb));
    memcpy(&lb, &limit, sizeof(lb));
    uint32_t mag = xb & 0x7fffffffu;
    bool clamp = mag > lb && mag <= 0x7f800000u; // not a NaN
    xb = (xb & 0x80000000u) | (clamp ? lb : mag);
    memcpy(&x, &xb, sizeof(x));
    return x;
}

/* exp(x) for x <= 88: 2^n * e^r, |r| <= ln2/2, e^r by its Taylor series to
 * r^7 (error about 1e-7 relative); 0 below about -87.3 (and for -inf), NaN
 * for NaN. */
static inline float exp_small(float x)
{
    x = clamp_magnitude(x, 104.0f); // -inf: 0 below, not NaN from inf - inf
    // n = x / ln2 rounded to nearest by adding and removing 1.5 * 2^23 (GCC
    // vectorizes this; it does not vectorize floorf); the low bits of the
    // shifted value are n as an integer, so no float-to-int conversion (which
    // a NaN would make undefined) is needed
    float shifted = x * 1.44269504f + 12582912.0f;
    float n = shifted - 12582912.0f;
    float r = (x - n * 0.693359375f) + n * 2.12194440e-4f; // ln2 in two parts
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 +
              r * (1.0f / 720 + r * (1.0f / 5040)))))));
    uint32_t shifted_bits;
    memcpy(&shifted_bits, &shifted, sizeof(shifted_bits));
    uint32_t biased = shifted_bits - 0x4B400000u + 127u; // n + 127, unsigned wrap
    uint32_t bits = biased - 1u < 254u ? biased << 23 : 0u; // 2^n, or 0 below 2^-126
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

// ----------------------------------------------------------------------------
// row reductions: LANES interleaved partial results, combined in a fixed
// order at the end, so that GCC vectorizes the loop (a float sum in one
// accumulator is a chain of dependent additions it may not reorder) while
// the result still depends only on the data, never on the threads.

#define LANES 8

/* Partial sums lane[0..LANES) added up in a fixed order (the elements past
 * the last whole group of LANES go into one more sum, added last). */
static float lanes_total(const float *lane)
{
    float sum = 0.0f;
    for (int l = 0; l < LANES; l++)
        sum += lane[l];
    return sum;
}

/* The sum of x[0..n). */
static float sum_of(const float *x, int n)
{
    float lane[LANES] = {0.0f};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++)
            lane[l] += x[i + l];
    float tail = 0.0f;
    for (; i < n; i++)
        tail += x[i];
    return lanes_total(lane) + tail;
}

/* The sum of (x[i] - m)^2 over [0, n). */
static float sum_sq_dev(const float *x, int n, float m)
{
    float lane[LANES] = {0.0f};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++)
            lane[l] += (x[i + l] - m) * (x[i + l] - m);
    float tail = 0.0f;
    for (; i < n; i++)
        tail += (x[i] - m) * (x[i] - m);
    return lanes_total(lane) + tail;
}

/* The sum of a[i] * (x[i] - m) over [0, n). */
static float sum_dot_dev(const float *a, const float *x, int n, float m)
{
    float lane[LANES] = {0.0f};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++)
            lane[l] += a[i + l] * (x[i + l] - m);
    float tail = 0.0f;
    for (; i < n; i++)
        tail += a[i] * (x[i] - m);
    return lanes_total(lane) + tail;
}

/* The largest of x[0..n), NaNs skipped (as fmaxf does); -inf when n is 0. */
static float max_of(const float *x, int n)
{
    float lane[LANES];
    for (int l = 0; l < LANES; l++)
        lane[l] = -INFINITY;
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++)
            lane[l] = x[i + l] > lane[l] ? x[i + l] : lane[l];
    float m = -INFINITY;
    for (; i < n; i++)
        m = x[i] > m ? x[i] : m;
    for (int l = 0; l < LANES; l++)
        m = lane[l] > m ? lane[l] : m;
    return m;
}

/* out[i] = exp(x[i] - shift), the numerators of a softmax (in place allowed). */
static void exp_shifted(float *out, const float *x, int n, float shift)
{
#pragma omp simd
    for (int i = 0; i < n; i++)
        out[i] = exp_small(x[i] - shift);
}

// ----------------------------------------------------------------------------
// embeddings

void encoder_forward(float *out, const int *tokens, const float *wte, const float *wpe,
                     int B, int T, int C, int pos_offset)
{
#pragma omp parallel for
    for (int n = 0; n < B * T; n++) {
        const float *tok = wte + (size_t)tokens[n] * C;
        const float *pos = wpe + (size_t)(pos_offset + n % T) * C;
        float *o = out + (size_t)n * C;
        for (int c = 0; c < C; c++)
            o[c] = tok[c] + pos[c];
    }
}

void encoder_backward(float *dwte, float *dwpe, const float *dout, const int *tokens,
                      int B, int T, int C, int pos_offset)
{
    // Sequential over tokens: several tokens may share a row of dwte, and a
    // fixed order keeps the sum repeatable.
    for (int n = 0; n < B * T; n++) {
        const float *d = dout + (size_t)n * C;
        float *tok = dwte + (size_t)tokens[n] * C;
        float *pos = dwpe + (size_t)(pos_offset + n % T) * C;
        for (int c = 0; c < C; c++) {
            tok[c] += d[c];
            pos[c] += d[c];
        }
    }
}

// ----------------------------------------------------------------------------
// layernorm

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *weight, const float *bias, size_t N, int C)
{
#pragma omp parallel for
    for (size_t n = 0; n < N; n++) {
        const float *x = inp + n * C;
        float m = sum_of(x, C) / C;
        float var = sum_sq_dev(x, C, m) / C;
        float s = 1.0f / sqrtf(var + LAYERNORM_EPS);
        float *o = out + n * C;
        for (int c = 0; c < C; c++)
            o[c] = (x[c] - m) * s * weight[c] + bias[c];
        mean[n] = m;
        rstd[n] = s;
    }
}

void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, const float *mean,
                        const float *rstd, size_t N, int C)
{
#pragma omp parallel for
    for (size_t n = 0; n < N; n++) {
        const float *x = inp + n * C, *d = dout + n * C;
        float m = mean[n], s = rstd[n];
        // dnorm = weight * dout, kept in the row of dinp until it is overwritten
        float *di = dinp + n * C;
        for (int c = 0; c < C; c++)
            di[c] = weight[c] * d[c];
        float dnorm_mean = sum_of(di, C) / C;
        float dnorm_norm_mean = sum_dot_dev(di, x, C, m) * s / C; // mean of dnorm * norm
        for (int c = 0; c < C; c++) {
            float norm = (x[c] - m) * s;
            di[c] = (di[c] - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
    // Parameter gradients: each thread a slice of channels, rows in order
    // (contiguous slices of each row, not a column walk through the rows).
#pragma omp parallel
    {
        size_t c0, c1;
        thread_range((size_t)C, &c0, &c1);
        for (size_t n = 0; n < N; n++) {
            const float *x = inp + n * C, *d = dout + n * C;
            for (size_t c = c0; c < c1; c++) {
                dweight[c] += (x[c] - mean[n]) * rstd[n] * d[c];
                dbias[c] += d[c];
            }
        }
    }
}

// ----------------------------------------------------------------------------
// matmul: the rows of out and dinp go in blocks of ROW_BLOCK, the rows of
// dweight (output channels) in blocks of channel_block(OC), each block one
// product on one thread. The blocks' shapes do not depend on the thread
// count, and neither does any library's choice of kernel or summation order
// for them: any --threads gives the same bits. (oneDNN's sgemm reaches about
// 10% more at 256 rows than at 128, AVX-512.)

#define ROW_BLOCK 256
#define CHANNEL_BLOCK 128
#define WIDE_OUTPUT 8192
#define WIDE_CHANNEL_BLOCK 512

/* The weight gradient's row blocks for an output of OC channels: 128, so
 * that a width of 256 still splits over two threads, but 512 for outputs
 * wider than WIDE_OUTPUT (a vocabulary), where a block's transposed operand
 * is OC floats apart from row to row: 128-float pieces of a 50257-wide
 * gradient measured 0.92x the speed of 512-float ones (GPT-2's head,
 * OpenBLAS, Zen 3), and at that width there are still about 100 blocks. */
static size_t channel_block(int OC)
{
    return OC > WIDE_OUTPUT ? WIDE_CHANNEL_BLOCK : CHANNEL_BLOCK;
}

static size_t block_count(size_t n, size_t block)
{
    return (n + block - 1) / block;
}

/* Block b of n rows in blocks of `block`: [b * block, block_end). */
static size_t block_end(size_t b, size_t n, size_t block)
{
    return (b + 1) * block < n ? (b + 1) * block : n;
}

/* Rows [n0, n1) of out += bias. */
static void add_bias(float *out, const float *bias, size_t n0, size_t n1, int OC)
{
    for (size_t n = n0; bias && n < n1; n++)
        for (int o = 0; o < OC; o++)
            out[n * OC + o] += bias[o];
}

/* dbias[o0, o1) += column sums of dout: rows in order, each row's slice
 * contiguous (a column walk through dout missed the cache on every element). */
static void bias_gradient(float *dbias, const float *dout, size_t N, int OC, size_t o0, size_t o1)
{
    for (size_t n = 0; dbias && n < N; n++)
        for (size_t o = o0; o < o1; o++)
            dbias[o] += dout[n * OC + o];
}

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                    size_t N, int IC, int OC)
{
    single_threaded_blas();
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < block_count(N, ROW_BLOCK); b++) {
        size_t n0 = b * ROW_BLOCK, n1 = block_end(b, N, ROW_BLOCK);
        gemm(false, false, true, n1 - n0, OC, IC, 1.0f, inp + n0 * IC, IC, weight, IC, 0.0f,
             out + n0 * OC, OC);
        add_bias(out, bias, n0, n1, OC);
    }
}

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                     const float *inp, const float *weight, size_t N, int IC, int OC)
{
    single_threaded_blas();
    size_t channels = channel_block(OC);
#pragma omp parallel
    {
        // dinp rows [n0, n1) = dout rows @ weight
#pragma omp for schedule(static) nowait
        for (size_t b = 0; b < (dinp ? block_count(N, ROW_BLOCK) : 0); b++) {
            size_t n0 = b * ROW_BLOCK, n1 = block_end(b, N, ROW_BLOCK);
            gemm(false, false, false, n1 - n0, IC, OC, 1.0f, dout + n0 * OC, OC, weight, IC,
                 0.0f, dinp + n0 * IC, IC);
        }
        // dweight rows [o0, o1) += dout[:, o0:o1]^T @ inp, summed over all N
#pragma omp for schedule(static)
        for (size_t b = 0; b < block_count((size_t)OC, channels); b++) {
            size_t o0 = b * channels, o1 = block_end(b, (size_t)OC, channels);
            gemm(false, true, false, o1 - o0, IC, N, 1.0f, dout + o0, OC, inp, IC, 1.0f,
                 dweight + o0 * IC, IC);
            bias_gradient(dbias, dout, N, OC, o0, o1);
        }
    }
}

// ----------------------------------------------------------------------------
// matmul in bf16: each operand is rounded (packed) once, by all threads in
// row slices, then the blocks' products run on the packed copies (rounding
// inside each product would pack a shared operand once per block).

/* Inside a parallel region: this thread's rows of X rounded into dst. */
static void pack_rows(uint16_t *dst, const float *X, size_t rows, size_t cols)
{
    size_t r0, r1;
    thread_range(rows, &r0, &r1);
    if (r1 > r0)
        bf16_pack(dst + r0 * cols, X + r0 * cols, cols, r1 - r0, cols);
}

void matmul_forward_bf16(float *out, const float *inp, const float *weight, const float *bias,
                         size_t N, int IC, int OC)
{
    uint16_t *inp16 = bf16_scratch(N * IC * sizeof(uint16_t));
    uint16_t *weight16 = bf16_scratch((size_t)OC * IC * sizeof(uint16_t));
#pragma omp parallel
    {
        pack_rows(inp16, inp, N, IC);
        pack_rows(weight16, weight, OC, IC);
#pragma omp barrier
#pragma omp for schedule(static)
        for (size_t b = 0; b < block_count(N, ROW_BLOCK); b++) {
            size_t n0 = b * ROW_BLOCK, n1 = block_end(b, N, ROW_BLOCK);
            bf16_gemm_packed(false, true, n1 - n0, OC, IC, 1.0f, inp16 + n0 * IC, IC, weight16,
                             IC, 0.0f, out + n0 * OC, OC);
            add_bias(out, bias, n0, n1, OC);
        }
    }
    free(inp16);
    free(weight16);
}

void matmul_backward_bf16(float *dinp, float *dweight, float *dbias, const float *dout,
                          const float *inp, const float *weight, size_t N, int IC, int OC)
{
    uint16_t *dout16 = bf16_scratch(N * OC * sizeof(uint16_t));
    uint16_t *inp16 = bf16_scratch(N * IC * sizeof(uint16_t));
    uint16_t *weight16 = dinp ? bf16_scratch((size_t)OC * IC * sizeof(uint16_t)) : NULL;
#pragma omp parallel
    {
        pack_rows(dout16, dout, N, OC);
        pack_rows(inp16, inp, N, IC);
        if (weight16)
            pack_rows(weight16, weight, OC, IC);
#pragma omp barrier
#pragma omp for schedule(static) nowait
        for (size_t b = 0; b < (dinp ? block_count(N, ROW_BLOCK) : 0); b++) {
            size_t n0 = b * ROW_BLOCK, n1 = block_end(b, N, ROW_BLOCK);
            bf16_gemm_packed(false, false, n1 - n0, IC, OC, 1.0f, dout16 + n0 * OC, OC,
                             weight16, IC, 0.0f, dinp + n0 * IC, IC);
        }
#pragma omp for schedule(static)
        for (size_t b = 0; b < block_count((size_t)OC, CHANNEL_BLOCK); b++) {
            size_t o0 = b * CHANNEL_BLOCK, o1 = block_end(b, (size_t)OC, CHANNEL_BLOCK);
            bf16_gemm_packed(true, false, o1 - o0, IC, N, 1.0f, dout16 + o0, OC, inp16, IC,
                             1.0f, dweight + o0 * IC, IC);
            bias_gradient(dbias, dout, N, OC, o0, o1);
        }
    }
    free(dout16);
    free(inp16);
    free(weight16);
}

// ----------------------------------------------------------------------------
// attention: one (batch, head) pair per thread at a time; scores and products
// by sgemm on strided views of qkv. Causal: rows go in blocks of
// ATTENTION_ROWS, and a block's products stop at its last row's column, so
// the masked upper triangle is (mostly) never computed; within a block the
// softmax zeroes what lies above the diagonal.

#define ATTENTION_ROWS 64

/* Rows [t0, t1) of the scores into probabilities; columns above the diagonal
 * (up to T) are set to 0. */
static void softmax_causal_rows(float *scores, int t0, int t1, int T)
{
    for (int t = t0; t < t1; t++) {
        float *row = scores + (size_t)t * T;
        float maxval = max_of(row, t + 1);
        exp_shifted(row, row, t + 1, maxval);
        float sum = sum_of(row, t + 1);
        float inv = 1.0f / sum;
        for (int j = 0; j <= t; j++)
            row[j] *= inv;
        for (int j = t + 1; j < T; j++)
            row[j] = 0.0f;
    }
}

static void attention_forward_as(bool bf16, float *out, float *att, const float *qkv, int B,
                                 int T, int C, int NH)
{
    int D = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)D);
    single_threaded_blas();
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * C3 + h * D;
            const float *k = q + C, *v = q + 2 * C;
            float *p = att + ((size_t)b * NH + h) * T * T;
            float *y = out + (size_t)b * T * C + h * D;
            for (int t0 = 0; t0 < T; t0 += ATTENTION_ROWS) {
                int t1 = t0 + ATTENTION_ROWS < T ? t0 + ATTENTION_ROWS : T;
                size_t rows = (size_t)(t1 - t0);
                float *pr = p + (size_t)t0 * T;
                gemm(bf16, false, true, rows, t1, D, scale, q + (size_t)t0 * C3, C3, k, C3, 0.0f,
                     pr, T);
                softmax_causal_rows(p, t0, t1, T);
                gemm(bf16, false, false, rows, D, t1, 1.0f, pr, T, v, C3, 0.0f,
                     y + (size_t)t0 * C, C);
            }
        }
    }
}

/* dS = P * (dP - rowsum(P * dP)): the softmax backward, rows [t0, t1). */
static void softmax_backward_rows(float *dscores, const float *probs, int t0, int t1, int T)
{
    for (int t = t0; t < t1; t++) {
        const float *p = probs + (size_t)t * T;
        float *d = dscores + (size_t)t * T;
        float dot = 0.0f;
        for (int j = 0; j <= t; j++)
            dot += p[j] * d[j];
        for (int j = 0; j <= t; j++)
            d[j] = p[j] * (d[j] - dot);
        for (int j = t + 1; j < t1; j++)
            d[j] = 0.0f;
    }
}

/* One (batch, head): the row blocks in order, so that the sums into dK and dV
 * (over row blocks) have a fixed order. */
static void attention_backward_head(bool bf16, float *dq, float *dk, float *dv, float *dp,
                                    const float *dy, const float *q, const float *k,
                                    const float *v, const float *p, int T, int C, int D,
                                    float scale)
{
    size_t C3 = 3 * (size_t)C;
    for (int t = 0; t < T; t++) {
        memset(dk + t * C3, 0, (size_t)D * sizeof(float));
        memset(dv + t * C3, 0, (size_t)D * sizeof(float));
    }
    for (int t0 = 0; t0 < T; t0 += ATTENTION_ROWS) {
        int t1 = t0 + ATTENTION_ROWS < T ? t0 + ATTENTION_ROWS : T;
        size_t rows = (size_t)(t1 - t0);
        const float *pr = p + (size_t)t0 * T, *dyr = dy + (size_t)t0 * C;
        float *dpr = dp + (size_t)t0 * T;
        // dP = dY V^T ; dV[:t1] += P^T dY
        gemm(bf16, false, true, rows, t1, D, 1.0f, dyr, C, v, C3, 0.0f, dpr, T);
        gemm(bf16, true, false, t1, D, rows, 1.0f, pr, T, dyr, C, 1.0f, dv, C3);
        softmax_backward_rows(dp, p, t0, t1, T);
        // dQ = scale dS K ; dK[:t1] += scale dS^T Q
        gemm(bf16, false, false, rows, D, t1, scale, dpr, T, k, C3, 0.0f, dq + (size_t)t0 * C3, C3);
        gemm(bf16, true, false, t1, D, rows, scale, dpr, T, q + (size_t)t0 * C3, C3, 1.0f, dk, C3);
    }
}

static void attention_backward_as(bool bf16, float *dqkv, float *datt, const float *dout,
                                  const float *qkv, const float *att, int B, int T, int C,
                                  int NH)
{
    int D = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)D);
    single_threaded_blas();
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            size_t base = (size_t)b * T * C3 + h * D;
            float *dq = dqkv + base;
            size_t probs = ((size_t)b * NH + h) * T * T;
            attention_backward_head(bf16, dq, dq + C, dq + 2 * C, datt + probs,
                                    dout + (size_t)b * T * C + h * D, qkv + base,
                                    qkv + base + C, qkv + base + 2 * C, att + probs, T, C, D,
                                    scale);
        }
    }
}

void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH)
{
    attention_forward_as(false, out, att, qkv, B, T, C, NH);
}

void attention_forward_bf16(float *out, float *att, const float *qkv, int B, int T, int C,
                            int NH)
{
    attention_forward_as(true, out, att, qkv, B, T, C, NH);
}

void attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                        const float *att, int B, int T, int C, int NH)
{
    attention_backward_as(false, dqkv, datt, dout, qkv, att, B, T, C, NH);
}

void attention_backward_bf16(float *dqkv, float *datt, const float *dout, const float *qkv,
                             const float *att, int B, int T, int C, int NH)
{
    attention_backward_as(true, dqkv, datt, dout, qkv, att, B, T, C, NH);
}

// ----------------------------------------------------------------------------
// elementwise

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */

/* tanh(a) = (e - 1) / (e + 1), e = exp(2a); |a| clamped to 9, where tanh is
 * 1 in float. Absolute error about 1e-7, all GELU needs (it adds 1). */
static inline float tanh_small(float a)
{
    float e = exp_small(2.0f * clamp_magnitude(a, 9.0f));
    return (e - 1.0f) / (e + 1.0f);
}

void gelu_forward(float *out, const float *inp, size_t count)
{
#pragma omp parallel for simd /* no alias check: dinp may be dout (in place) */
    for (size_t i = 0; i < count; i++) {
        float x = inp[i];
        float cube = 0.044715f * x * x * x;
        out[i] = 0.5f * x * (1.0f + tanh_small(GELU_SCALE * (x + cube)));
    }
}

void gelu_backward(float *dinp, const float *inp, const float *dout, size_t count)
{
#pragma omp parallel for simd /* no alias check: dinp may be dout (in place) */
    for (size_t i = 0; i < count; i++) {
        float x = inp[i];
        float cube = 0.044715f * x * x * x;
        float th = tanh_small(GELU_SCALE * (x + cube));
        float sech2 = 1.0f - th * th;
        float local = 0.5f * (1.0f + th) +
                      0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = local * dout[i];
    }
}

void residual_forward(float *out, const float *a, const float *b, size_t count)
{
#pragma omp parallel for
    for (size_t i = 0; i < count; i++)
        out[i] = a[i] + b[i];
}

void accumulate(float *dst, const float *src, size_t count)
{
#pragma omp parallel for
    for (size_t i = 0; i < count; i++)
        dst[i] += src[i];
}

// ----------------------------------------------------------------------------
// cross-entropy

double crossentropy_forward(float *probs, float *losses, const float *logits,
                            const int *targets, size_t N, int V)
{
#pragma omp parallel for
    for (size_t n = 0; n < N; n++) {
        const float *z = logits + n * V;
        float *p = probs + n * V;
        float target_logit = z[targets[n]]; // read before p (maybe z) is written
        float maxval = max_of(z, V);
        exp_shifted(p, z, V, maxval);
        float sum = sum_of(p, V);
        // loss from the log-sum-exp, not from log(p): exact for tiny p
        losses[n] = logf(sum) + maxval - target_logit;
        float inv = 1.0f / sum;
        for (int i = 0; i < V; i++)
            p[i] *= inv;
    }
    double total = 0.0;
    for (size_t n = 0; n < N; n++)
        total += losses[n];
    return total;
}

void crossentropy_backward(float *dlogits, const float *probs, const int *targets,
                           float dloss, size_t N, int V)
{
#pragma omp parallel for
    for (size_t n = 0; n < N; n++) {
        const float *p = probs + n * V;
        float *d = dlogits + n * V;
        for (int i = 0; i < V; i++)
            d[i] = p[i] * dloss;
        d[targets[n]] -= dloss;
    }
}
