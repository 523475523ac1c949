/* CPU kernels of the model (contract in kernels.h). */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

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

/* [begin, end) of `count` items for the calling thread of the current team. */
static void thread_range(size_t count, size_t *begin, size_t *end)
{
    size_t threads = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
    size_t chunk = (count + threads - 1) / threads;
    *begin = id * chunk < count ? id * chunk : count;
    *end = *begin + chunk < count ? *begin + chunk : count;
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
        float m = 0.0f;
        for (int c = 0; c < C; c++)
            m += x[c];
        m /= C;
        float var = 0.0f;
        for (int c = 0; c < C; c++)
            var += (x[c] - m) * (x[c] - m);
        var /= C;
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
        float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
        for (int c = 0; c < C; c++) {
            float norm = (x[c] - m) * s;
            float dnorm = weight[c] * d[c];
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * norm;
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        float *di = dinp + n * C;
        for (int c = 0; c < C; c++) {
            float norm = (x[c] - m) * s;
            di[c] = (weight[c] * d[c] - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
    // Parameter gradients: one channel per iteration, rows in order.
#pragma omp parallel for
    for (int c = 0; c < C; c++) {
        float dw = 0.0f, db = 0.0f;
        for (size_t n = 0; n < N; n++) {
            float d = dout[n * C + c];
            dw += (inp[n * C + c] - mean[n]) * rstd[n] * d;
            db += d;
        }
        dweight[c] += dw;
        dbias[c] += db;
    }
}

// ----------------------------------------------------------------------------
// matmul

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                    size_t N, int IC, int OC)
{
    single_threaded_blas();
#pragma omp parallel
    {
        size_t n0, n1;
        thread_range(N, &n0, &n1);
        if (n1 > n0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(n1 - n0), OC, IC, 1.0f,
                        inp + n0 * IC, IC, weight, IC, 0.0f, out + n0 * OC, OC);
        for (size_t n = n0; bias && n < n1; n++)
            for (int o = 0; o < OC; o++)
                out[n * OC + o] += bias[o];
    }
}

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                     const float *inp, const float *weight, size_t N, int IC, int OC)
{
    single_threaded_blas();
#pragma omp parallel
    {
        size_t n0, n1, o0, o1;
        thread_range(N, &n0, &n1);
        thread_range((size_t)OC, &o0, &o1);
        // dinp rows [n0, n1) = dout rows @ weight
        if (dinp && n1 > n0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(n1 - n0), IC, OC,
                        1.0f, dout + n0 * OC, OC, weight, IC, 0.0f, dinp + n0 * IC, IC);
        // dweight rows [o0, o1) += dout[:, o0:o1]^T @ inp, summed over all N
        if (o1 > o0)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(o1 - o0), IC, (int)N,
                        1.0f, dout + o0, OC, inp, IC, 1.0f, dweight + o0 * IC, IC);
        for (size_t o = o0; dbias && o < o1; o++) {
            float sum = 0.0f;
            for (size_t n = 0; n < N; n++)
                sum += dout[n * OC + o];
            dbias[o] += sum;
        }
    }
}

// ----------------------------------------------------------------------------
// attention: one (batch, head) pair per thread at a time; scores and products by sgemm on strided views
// of qkv; the causal mask is applied in the softmax (probabilities above the
// diagonal are exactly 0, so the full products stay correct).

static void softmax_causal_rows(float *scores, int T)
{
    for (int t = 0; t < T; t++) {
        float *row = scores + (size_t)t * T;
        float maxval = -INFINITY;
        for (int j = 0; j <= t; j++)
            maxval = fmaxf(maxval, row[j]);
        float sum = 0.0f;
        for (int j = 0; j <= t; j++) {
            row[j] = expf(row[j] - maxval);
            sum += row[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j <= t; j++)
            row[j] *= inv;
        for (int j = t + 1; j < T; j++)
            row[j] = 0.0f;
    }
}

void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH)
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
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, D, scale, q, C3, k, C3,
                        0.0f, p, T);
            softmax_causal_rows(p, T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, T, 1.0f, p, T, v, C3,
                        0.0f, y, C);
        }
    }
}

/* dS = P * (dP - rowsum(P * dP)): the softmax backward, row by row. */
static void softmax_backward_rows(float *dscores, const float *probs, int T)
{
    for (int t = 0; t < T; t++) {
        const float *p = probs + (size_t)t * T;
        float *d = dscores + (size_t)t * T;
        float dot = 0.0f;
        for (int j = 0; j <= t; j++)
            dot += p[j] * d[j];
        for (int j = 0; j <= t; j++)
            d[j] = p[j] * (d[j] - dot);
        for (int j = t + 1; j < T; j++)
            d[j] = 0.0f;
    }
}

void attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                        const float *att, int B, int T, int C, int NH)
{
    int D = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)D);
    single_threaded_blas();
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            size_t base = (size_t)b * T * C3 + h * D;
            const float *q = qkv + base, *k = q + C, *v = q + 2 * C;
            float *dq = dqkv + base, *dk = dq + C, *dv = dq + 2 * C;
            const float *p = att + ((size_t)b * NH + h) * T * T;
            float *dp = datt + ((size_t)b * NH + h) * T * T;
            const float *dy = dout + (size_t)b * T * C + h * D;
            // dP = dY V^T ; dV = P^T dY
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, D, 1.0f, dy, C, v, C3,
                        0.0f, dp, T);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, D, T, 1.0f, p, T, dy, C,
                        0.0f, dv, C3);
            softmax_backward_rows(dp, p, T);
            // dQ = scale dS K ; dK = scale dS^T Q
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, T, scale, dp, T, k,
                        C3, 0.0f, dq, C3);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, D, T, scale, dp, T, q, C3,
                        0.0f, dk, C3);
        }
    }
}

// ----------------------------------------------------------------------------
// elementwise

#define GELU_SCALE 0.7978845608028654f /* sqrt(2 / pi) */

void gelu_forward(float *out, const float *inp, size_t count)
{
#pragma omp parallel for
    for (size_t i = 0; i < count; i++) {
        float x = inp[i];
        float cube = 0.044715f * x * x * x;
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + cube)));
    }
}

void gelu_backward(float *dinp, const float *inp, const float *dout, size_t count)
{
#pragma omp parallel for
    for (size_t i = 0; i < count; i++) {
        float x = inp[i];
        float cube = 0.044715f * x * x * x;
        float arg = GELU_SCALE * (x + cube);
        float th = tanhf(arg);
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
        float maxval = -INFINITY;
        for (int i = 0; i < V; i++)
            maxval = fmaxf(maxval, z[i]);
        float sum = 0.0f;
        for (int i = 0; i < V; i++) {
            p[i] = expf(z[i] - maxval);
            sum += p[i];
        }
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
