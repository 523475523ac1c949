/* Causal self-attention (contract in cuda_kernels.h). */
#include "common.cuh"

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
static int head_pointers(CudaContext *ctx, const HeadViews *views, int B, int NH, float ***arrays,
                         const char *what)
{
    size_t count = (size_t)views->count * B * NH;
    *arrays = (float **)scratch_get(ctx, SCRATCH_POINTERS, count * sizeof(float *), NULL, what);
    if (!*arrays)
        return -1;
    head_pointers_kernel<<<grid_for(count, THREADS), THREADS, 0, ctx->compute>>>(*arrays, *views, B,
                                                                                 NH);
    return launched(ctx, what);
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

extern "C" int cuda_attention_forward(CudaContext *ctx, float *out, float *att, const float *qkv,
                                      int B, int T, int C, int NH)
{
    const char *what = "attention_forward";
    int D = C / NH, C3 = 3 * C, pairs = B * NH;
    float scale = 1.0f / sqrtf((float)D);
    size_t rows = (size_t)pairs * T, att_count = rows * T;
    // the products' inputs: qkv and the probabilities, rounded under bf16
    const float *qkv_in = product_input(ctx, SCRATCH_ROUNDED_QKV, qkv, (size_t)B * T * C3, what);
    float *att_in =
        !ctx->bf16_products
            ? att
            : (float *)scratch_get(ctx, SCRATCH_ROUNDED_ATT, att_count * sizeof(float), NULL, what);
    if (!qkv_in || !att_in)
        return -1;
    HeadViews views = {};
    qkv_views(&views, qkv_in, T, C, NH);
    square_view(&views, att, T, NH);
    rows_view(&views, out, T, C, NH);
    square_view(&views, att_in, T, NH);
    float **ptr;
    if (head_pointers(ctx, &views, B, NH, &ptr, what))
        return -1;
    float **q = ptr, **k = ptr + pairs, **v = ptr + 2 * pairs, **p = ptr + 3 * pairs,
          **y = ptr + 4 * pairs, **p_in = ptr + 5 * pairs;
    if (gemm_batched_rm(ctx, CUBLAS_OP_N, CUBLAS_OP_T, T, T, D, scale, q, C3, k, C3, 0.0f, p, T,
                        pairs, what))
        return -1;
    softmax_causal_kernel<<<grid_for(rows, ROWS_PER_BLOCK), THREADS, 0, ctx->compute>>>(att, rows,
                                                                                        T);
    if (launched(ctx, what) || (att_in != att && round_into(ctx, att_in, att, att_count, what)))
        return -1;
    return gemm_batched_rm(ctx, CUBLAS_OP_N, CUBLAS_OP_N, T, D, T, 1.0f, p_in, T, v, C3, 0.0f, y, C,
                           pairs, what);
}

extern "C" int cuda_attention_backward(CudaContext *ctx, float *dqkv, float *datt,
                                       const float *dout, const float *qkv, const float *att, int B,
                                       int T, int C, int NH)
{
    const char *what = "attention_backward";
    int D = C / NH, C3 = 3 * C, pairs = B * NH;
    float scale = 1.0f / sqrtf((float)D);
    size_t rows = (size_t)pairs * T, att_count = rows * T;
    // the products' inputs, rounded under bf16; the softmax backward reads att in fp32
    const float *qkv_in = product_input(ctx, SCRATCH_ROUNDED_QKV, qkv, (size_t)B * T * C3, what);
    const float *att_in = product_input(ctx, SCRATCH_ROUNDED_ATT, att, att_count, what);
    const float *dout_in = product_input(ctx, SCRATCH_ROUNDED_DOUT, dout, (size_t)B * T * C, what);
    if (!qkv_in || !att_in || !dout_in)
        return -1;
    HeadViews views = {};
    qkv_views(&views, qkv_in, T, C, NH);
    qkv_views(&views, dqkv, T, C, NH);
    square_view(&views, att_in, T, NH);
    square_view(&views, datt, T, NH);
    rows_view(&views, dout_in, T, C, NH);
    float **ptr;
    if (head_pointers(ctx, &views, B, NH, &ptr, what))
        return -1;
    float **q = ptr, **k = ptr + pairs, **v = ptr + 2 * pairs;
    float **dq = ptr + 3 * pairs, **dk = ptr + 4 * pairs, **dv = ptr + 5 * pairs;
    float **p = ptr + 6 * pairs, **dp = ptr + 7 * pairs, **dy = ptr + 8 * pairs;
    // dP = dY V^T ; dV = P^T dY
    if (gemm_batched_rm(ctx, CUBLAS_OP_N, CUBLAS_OP_T, T, T, D, 1.0f, dy, C, v, C3, 0.0f, dp, T,
                        pairs, what) ||
        gemm_batched_rm(ctx, CUBLAS_OP_T, CUBLAS_OP_N, T, D, T, 1.0f, p, T, dy, C, 0.0f, dv, C3,
                        pairs, what))
        return -1;
    softmax_causal_backward_kernel<<<grid_for(rows, ROWS_PER_BLOCK), THREADS, 0, ctx->compute>>>(
        datt, att, rows, T);
    if (launched(ctx, what))
        return -1;
    // dS: datt, or under bf16 datt rounded into the rounded probabilities'
    // buffer (dV, their last reader, is queued before)
    float **ds = dp;
    if (att_in != att) {
        if (round_into(ctx, (float *)att_in, datt, att_count, what))
            return -1;
        ds = p;
    }
    // dQ = scale dS K ; dK = scale dS^T Q
    if (gemm_batched_rm(ctx, CUBLAS_OP_N, CUBLAS_OP_N, T, D, T, scale, ds, T, k, C3, 0.0f, dq, C3,
                        pairs, what))
        return -1;
    return gemm_batched_rm(ctx, CUBLAS_OP_T, CUBLAS_OP_N, T, D, T, scale, ds, T, q, C3, 0.0f, dk,
                           C3, pairs, what);
}
