/*
 * gpu_check: every cuda_ kernel against its CPU twin in kernels.h, and 10 LAMB
 * and AdamW steps against optim.c, on random inputs of small shapes (T not a
 * power of two, several heads, rows longer than a warp). TF32 stays off.
 *
 * A check compares a whole output or gradient: it passes when every element
 * is finite and max |gpu - cpu| <= 1e-4 * max |cpu| (the tensor's own scale;
 * element-wise ratios would judge the rounding noise of values that cancel
 * to nearly 0). Outputs start as NaN, so an element a kernel forgets fails;
 * accumulated gradients start random on both sides, so "+=" is checked.
 *
 * One line per check; exit 0 when all pass, 1 when any fails, 77 (meson's
 * "skipped") with the reason when there is no CUDA device.
 */
#include "cuda_kernels.h"
#include "kernels.h"
#include "optim.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOLERANCE 1e-4
#define EXIT_SKIP 77

static int checks, failures;
static CudaContext *gpu; /* made by main, for every check */

static void die(const char *what)
{
    fprintf(stderr, "gpu_check: %s: %s\n", what, cuda_error(gpu));
    exit(1);
}

#define CHECK(call)                                                                             \
    do {                                                                                        \
        if ((call) != 0)                                                                        \
            die(#call);                                                                         \
    } while (0)

// ----------------------------------------------------------------------------
// buffers: every one is registered and released at the end of its check

enum { MAX_BUFFERS = 64 };
static struct {
    void *ptr;
    bool device;
} buffers[MAX_BUFFERS];
static int buffer_count;

static void *keep(void *ptr, bool device)
{
    if (!ptr)
        die(device ? "cuda_alloc" : "malloc");
    if (buffer_count == MAX_BUFFERS) {
        fprintf(stderr, "gpu_check: more than %d buffers in one check\n", MAX_BUFFERS);
        exit(1);
    }
    buffers[buffer_count].ptr = ptr;
    buffers[buffer_count].device = device;
    buffer_count++;
    return ptr;
}

static void release_buffers(void)
{
    CHECK(cuda_kernels_sync(gpu));
    for (int i = 0; i < buffer_count; i++) {
        if (buffers[i].device)
            cuda_free(buffers[i].ptr);
        else
            free(buffers[i].ptr);
    }
    buffer_count = 0;
}

static float *host_floats(size_t n)
{
    return keep(malloc((n ? n : 1) * sizeof(float)), false);
}

/* xorshift64*: fixed seed, so a failure repeats. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t next_random(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

/* Uniform in [-scale, scale). */
static float *random_floats(size_t n, float scale)
{
    float *x = host_floats(n);
    for (size_t i = 0; i < n; i++)
        x[i] = scale * ((float)next_random() / 2147483648.0f - 1.0f);
    return x;
}

static int *random_ints(size_t n, int bound)
{
    int *x = keep(malloc(n * sizeof(int)), false);
    for (size_t i = 0; i < n; i++)
        x[i] = (int)(next_random() % (uint32_t)bound);
    return x;
}

static void *to_device(const void *host, size_t bytes)
{
    void *d = keep(cuda_alloc(gpu, bytes), true);
    CHECK(cuda_memcpy_h2d(gpu, d, host, bytes));
    return d;
}

static float *device_floats(const float *host, size_t n)
{
    return to_device(host, n * sizeof(float));
}

/* An output buffer full of NaN: an element the kernel does not write fails. */
static float *device_poison(size_t n)
{
    float *x = host_floats(n);
    for (size_t i = 0; i < n; i++)
        x[i] = NAN;
    return device_floats(x, n);
}

// ----------------------------------------------------------------------------
// comparison

static void report(const char *what, bool ok, double error)
{
    checks++;
    failures += !ok;
    printf("%-44s %s  max|gpu-cpu|/max|cpu| = %.2e\n", what, ok ? "ok  " : "FAIL", error);
}

static void expect_close(const char *what, const float *device, const float *expected, size_t n)
{
    float *got = host_floats(n);
    CHECK(cuda_memcpy_d2h(gpu, got, device, n * sizeof(float)));
    double max_diff = 0.0, max_ref = 0.0;
    bool finite = true;
    for (size_t i = 0; i < n; i++) {
        finite = finite && isfinite(got[i]);
        max_diff = fmax(max_diff, fabs((double)got[i] - expected[i]));
        max_ref = fmax(max_ref, fabs((double)expected[i]));
    }
    double error = max_diff / (max_ref > 0.0 ? max_ref : 1.0);
    report(what, finite && error <= TOLERANCE, finite ? error : INFINITY);
}

static void expect_close_double(const char *what, double got, double expected)
{
    double error = fabs(got - expected) / (expected != 0.0 ? fabs(expected) : 1.0);
    report(what, isfinite(got) && error <= TOLERANCE, error);
}

static const char *label(const char *format, ...) __attribute__((format(printf, 1, 2)));
static const char *label(const char *format, ...)
{
    static char text[128];
    va_list args;
    va_start(args, format);
    vsnprintf(text, sizeof(text), format, args);
    va_end(args);
    return text;
}

// ----------------------------------------------------------------------------
// the model's kernels

static void check_encoder(int B, int T, int C, int V, int pos_offset)
{
    size_t N = (size_t)B * T, P = (size_t)(T + pos_offset);
    int *tokens = random_ints(N, V); /* V small: rows of dwte shared by many tokens */
    float *wte = random_floats((size_t)V * C, 1.0f), *wpe = random_floats(P * C, 1.0f);
    float *out = host_floats(N * C);
    encoder_forward(out, tokens, wte, wpe, B, T, C, pos_offset);
    int *d_tokens = to_device(tokens, N * sizeof(int));
    float *d_out = device_poison(N * C);
    CHECK(cuda_encoder_forward(gpu, d_out, d_tokens, device_floats(wte, (size_t)V * C),
                               device_floats(wpe, P * C), B, T, C, pos_offset));
    expect_close(label("encoder_forward B%d T%d C%d", B, T, C), d_out, out, N * C);

    float *dout = random_floats(N * C, 1.0f);
    float *dwte = random_floats((size_t)V * C, 1.0f), *dwpe = random_floats(P * C, 1.0f);
    float *d_dwte = device_floats(dwte, (size_t)V * C), *d_dwpe = device_floats(dwpe, P * C);
    encoder_backward(dwte, dwpe, dout, tokens, B, T, C, pos_offset);
    CHECK(cuda_encoder_backward(gpu, d_dwte, d_dwpe, device_floats(dout, N * C), d_tokens, B, T, C,
                                pos_offset));
    expect_close(label("encoder_backward dwte V%d", V), d_dwte, dwte, (size_t)V * C);
    expect_close(label("encoder_backward dwpe pos_offset %d", pos_offset), d_dwpe, dwpe, P * C);
    release_buffers();
}

static void check_layernorm(size_t N, int C)
{
    float *inp = random_floats(N * C, 2.0f);
    float *w = random_floats(C, 1.0f), *b = random_floats(C, 1.0f);
    float *out = host_floats(N * C), *mean = host_floats(N), *rstd = host_floats(N);
    layernorm_forward(out, mean, rstd, inp, w, b, N, C);
    float *d_inp = device_floats(inp, N * C), *d_w = device_floats(w, C);
    float *d_out = device_poison(N * C), *d_mean = device_poison(N), *d_rstd = device_poison(N);
    CHECK(
        cuda_layernorm_forward(gpu, d_out, d_mean, d_rstd, d_inp, d_w, device_floats(b, C), N, C));
    expect_close(label("layernorm_forward out N%zu C%d", N, C), d_out, out, N * C);
    expect_close(label("layernorm_forward mean N%zu C%d", N, C), d_mean, mean, N);
    expect_close(label("layernorm_forward rstd N%zu C%d", N, C), d_rstd, rstd, N);

    float *dout = random_floats(N * C, 1.0f), *dinp = host_floats(N * C);
    float *dw = random_floats(C, 1.0f), *db = random_floats(C, 1.0f);
    float *d_dw = device_floats(dw, C), *d_db = device_floats(db, C);
    float *d_dinp = device_poison(N * C);
    layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
    CHECK(cuda_layernorm_backward(gpu, d_dinp, d_dw, d_db, device_floats(dout, N * C), d_inp, d_w,
                                  d_mean, d_rstd, N, C));
    expect_close(label("layernorm_backward dinp N%zu C%d", N, C), d_dinp, dinp, N * C);
    expect_close(label("layernorm_backward dweight N%zu C%d", N, C), d_dw, dw, C);
    expect_close(label("layernorm_backward dbias N%zu C%d", N, C), d_db, db, C);
    release_buffers();
}

/* with_optional: bias and dinp given (otherwise both NULL, as the head does). */
static void check_matmul(size_t N, int IC, int OC, bool with_optional)
{
    float *inp = random_floats(N * IC, 1.0f), *w = random_floats((size_t)OC * IC, 0.5f);
    float *bias = with_optional ? random_floats(OC, 1.0f) : NULL;
    float *out = host_floats(N * OC);
    matmul_forward(out, inp, w, bias, N, IC, OC);
    float *d_inp = device_floats(inp, N * IC), *d_w = device_floats(w, (size_t)OC * IC);
    float *d_out = device_poison(N * OC);
    CHECK(cuda_matmul_forward(gpu, d_out, d_inp, d_w, bias ? device_floats(bias, OC) : NULL, N, IC,
                              OC));
    expect_close(label("matmul_forward %zux%d->%d%s", N, IC, OC, bias ? " +bias" : ""), d_out, out,
                 N * OC);

    float *dout = random_floats(N * OC, 1.0f), *dw = random_floats((size_t)OC * IC, 1.0f);
    float *dinp = with_optional ? host_floats(N * IC) : NULL;
    float *dbias = with_optional ? random_floats(OC, 1.0f) : NULL;
    float *d_dw = device_floats(dw, (size_t)OC * IC);
    float *d_dinp = dinp ? device_poison(N * IC) : NULL;
    float *d_dbias = dbias ? device_floats(dbias, OC) : NULL;
    matmul_backward(dinp, dw, dbias, dout, inp, w, N, IC, OC);
    CHECK(cuda_matmul_backward(gpu, d_dinp, d_dw, d_dbias, device_floats(dout, N * OC), d_inp, d_w,
                               N, IC, OC));
    if (dinp)
        expect_close(label("matmul_backward dinp %zux%d->%d", N, IC, OC), d_dinp, dinp, N * IC);
    expect_close(label("matmul_backward dweight %zux%d->%d", N, IC, OC), d_dw, dw, (size_t)OC * IC);
    if (dbias)
        expect_close(label("matmul_backward dbias %zux%d->%d", N, IC, OC), d_dbias, dbias, OC);
    release_buffers();
}

static void check_attention(int B, int T, int C, int NH)
{
    size_t qkv_n = (size_t)B * T * 3 * C, out_n = (size_t)B * T * C, att_n = (size_t)B * NH * T * T;
    float *qkv = random_floats(qkv_n, 1.0f), *out = host_floats(out_n), *att = host_floats(att_n);
    attention_forward(out, att, qkv, B, T, C, NH);
    float *d_qkv = device_floats(qkv, qkv_n), *d_out = device_poison(out_n);
    float *d_att = device_poison(att_n);
    CHECK(cuda_attention_forward(gpu, d_out, d_att, d_qkv, B, T, C, NH));
    expect_close(label("attention_forward out B%d T%d C%d NH%d", B, T, C, NH), d_out, out, out_n);
    expect_close(label("attention_forward att B%d T%d C%d NH%d", B, T, C, NH), d_att, att, att_n);

    float *dout = random_floats(out_n, 1.0f), *dqkv = host_floats(qkv_n);
    float *datt = host_floats(att_n);
    float *d_dqkv = device_poison(qkv_n);
    attention_backward(dqkv, datt, dout, qkv, att, B, T, C, NH);
    CHECK(cuda_attention_backward(gpu, d_dqkv, device_poison(att_n), device_floats(dout, out_n),
                                  d_qkv, d_att, B, T, C, NH));
    expect_close(label("attention_backward dqkv B%d T%d C%d NH%d", B, T, C, NH), d_dqkv, dqkv,
                 qkv_n);
    release_buffers();
}

static void check_elementwise(size_t n)
{
    float *x = random_floats(n, 4.0f), *y = random_floats(n, 1.0f), *out = host_floats(n);
    float *d_x = device_floats(x, n), *d_y = device_floats(y, n), *d_out = device_poison(n);
    gelu_forward(out, x, n);
    CHECK(cuda_gelu_forward(gpu, d_out, d_x, n));
    expect_close(label("gelu_forward n%zu", n), d_out, out, n);
    gelu_backward(out, x, y, n);
    CHECK(cuda_gelu_backward(gpu, d_out, d_x, d_y, n));
    expect_close(label("gelu_backward n%zu", n), d_out, out, n);
    residual_forward(out, x, y, n);
    CHECK(cuda_residual_forward(gpu, d_out, d_x, d_y, n));
    expect_close(label("residual_forward n%zu", n), d_out, out, n);
    accumulate(x, y, n);
    CHECK(cuda_accumulate(gpu, d_x, d_y, n));
    expect_close(label("accumulate n%zu", n), d_x, x, n);
    release_buffers();
}

/* Out of place, then in place (probs over logits, dlogits over probs), as
 * the contract allows both. */
static void check_crossentropy(size_t N, int V)
{
    size_t n = N * (size_t)V;
    float *logits = random_floats(n, 4.0f), *probs = host_floats(n), *losses = host_floats(N);
    int *targets = random_ints(N, V);
    double sum = crossentropy_forward(probs, losses, logits, targets, N, V), d_sum = 0.0;
    float *d_logits = device_floats(logits, n), *d_probs = device_poison(n);
    float *d_losses = device_poison(N);
    int *d_targets = to_device(targets, N * sizeof(int));
    CHECK(cuda_crossentropy_forward(gpu, d_probs, d_losses, d_logits, d_targets, N, V, &d_sum));
    expect_close(label("crossentropy_forward probs N%zu V%d", N, V), d_probs, probs, n);
    expect_close(label("crossentropy_forward losses N%zu V%d", N, V), d_losses, losses, N);
    expect_close_double(label("crossentropy_forward loss sum N%zu V%d", N, V), d_sum, sum);
    CHECK(cuda_crossentropy_forward(gpu, d_logits, d_losses, d_logits, d_targets, N, V, &d_sum));
    expect_close(label("crossentropy_forward in place N%zu V%d", N, V), d_logits, probs, n);

    float dloss = 1.0f / (float)N, *dlogits = host_floats(n), *d_dlogits = device_poison(n);
    crossentropy_backward(dlogits, probs, targets, dloss, N, V);
    CHECK(cuda_crossentropy_backward(gpu, d_dlogits, d_probs, d_targets, dloss, N, V));
    expect_close(label("crossentropy_backward N%zu V%d", N, V), d_dlogits, dlogits, n);
    CHECK(cuda_crossentropy_backward(gpu, d_probs, d_probs, d_targets, dloss, N, V));
    expect_close(label("crossentropy_backward in place N%zu V%d", N, V), d_probs, dlogits, n);
    release_buffers();
}

// ----------------------------------------------------------------------------
// optimizers: several tensors in one allocation (as the model keeps them),
// sizes around and past the GPU's 4096-element sum chunks

enum { TENSORS = 4, STEPS = 10 };
static const char *const tensor_names[TENSORS] = {"wte", "h.0.attn.qkv.weight", "h.0.ln1.weight",
                                                  "h.0.attn.qkv.bias"};
static const size_t tensor_sizes[TENSORS] = {10007, 3 * 4096 + 5, 300, 4096};

/* Views of one block of `total` floats per buffer, base + offset of each tensor. */
static void make_views(OptimTensor *t, float *param, float *grad, float *m, float *v)
{
    size_t offset = 0;
    for (int i = 0; i < TENSORS; i++) {
        t[i] = (OptimTensor){
            .name = tensor_names[i],
            .param = param + offset, .grad = grad + offset, .m = m + offset, .v = v + offset,
            .numel = tensor_sizes[i],
            .exclude = optim_name_is_excluded(tensor_names[i]),
        };
        offset += tensor_sizes[i];
    }
}

static void check_optimizer(OptimKind kind, float lr)
{
    size_t total = 0;
    for (int i = 0; i < TENSORS; i++)
        total += tensor_sizes[i];
    OptimConfig cfg = optim_default_config(kind);
    float *param = random_floats(total, 1.0f), *grad = host_floats(total);
    float *m = host_floats(total), *v = host_floats(total);
    memset(m, 0, total * sizeof(float));
    memset(v, 0, total * sizeof(float));
    float *d_param = device_floats(param, total), *d_grad = device_floats(grad, total);
    float *d_m = device_floats(m, total), *d_v = device_floats(v, total);
    OptimTensor cpu[TENSORS], on_gpu[TENSORS];
    make_views(cpu, param, grad, m, v);
    make_views(on_gpu, d_param, d_grad, d_m, d_v);
    double worst_sumsq = 0.0;
    for (long step = 1; step <= STEPS; step++) {
        for (size_t i = 0; i < total; i++)
            grad[i] = 0.1f * ((float)next_random() / 2147483648.0f - 1.0f);
        CHECK(cuda_memcpy_h2d(gpu, d_grad, grad, total * sizeof(float)));
        double sumsq = optim_grad_sumsq(cpu, TENSORS), d_sumsq = 0.0;
        CHECK(cuda_optim_grad_sumsq(gpu, on_gpu, TENSORS, &d_sumsq));
        worst_sumsq = fmax(worst_sumsq, fabs(d_sumsq - sumsq) / sumsq);
        /* A clip that bites: both sides then scale the gradients. */
        float scale = optim_clip_scale(sqrt(sumsq), 1.0f);
        optim_step(&cfg, cpu, TENSORS, lr, step, scale);
        CHECK(cuda_optim_step(gpu, &cfg, on_gpu, TENSORS, lr, step, scale));
    }
    const char *name = optim_kind_name(kind);
    report(label("%s: grad sum of squares, %d steps", name, STEPS), worst_sumsq <= TOLERANCE,
           worst_sumsq);
    expect_close(label("%s: params after %d steps", name, STEPS), d_param, param, total);
    expect_close(label("%s: m after %d steps", name, STEPS), d_m, m, total);
    expect_close(label("%s: v after %d steps", name, STEPS), d_v, v, total);
    expect_close(label("%s: scaled grads after %d steps", name, STEPS), d_grad, grad, total);
    release_buffers();
}

// ----------------------------------------------------------------------------
// memory helpers

/* A snapshot copy to pinned memory, then what the optimizer does after
 * cuda_compute_after_snapshot: compute work that overwrites the source. The
 * copy must hold the values from before, though the host never waited; the
 * overwrite (a memset, as fast as a kernel gets) must land too. */
static void check_snapshot(size_t n)
{
    float *x = random_floats(n, 1.0f);
    float *d_x = device_floats(x, n);
    float *pinned = cuda_host_alloc_pinned(gpu, n * sizeof(float));
    if (!pinned)
        die("cuda_host_alloc_pinned");
    CHECK(cuda_snapshot_copy_async(gpu, pinned, d_x, n * sizeof(float)));
    CHECK(cuda_compute_after_snapshot(gpu));
    CHECK(cuda_memset_zero(gpu, d_x, n * sizeof(float)));
    char why[512];
    if (cuda_snapshot_wait(gpu, why, sizeof(why))) {
        fprintf(stderr, "gpu_check: cuda_snapshot_wait: %s\n", why);
        exit(1);
    }
    bool same = memcmp(pinned, x, n * sizeof(float)) == 0;
    cuda_host_free_pinned(pinned);
    float *zero = host_floats(n);
    memset(zero, 0, n * sizeof(float));
    report("snapshot copy ordered before the compute work after it", same, same ? 0.0 : 1.0);
    expect_close("memset_zero", d_x, zero, n);
    release_buffers();
}

/* The strided copies of the Ulysses re-sharding (cudaMemcpy2D) and the
 * device-to-device copy, against the same copies on the host. */
static void check_copies(size_t rows, size_t width, size_t src_pitch, size_t dst_pitch)
{
    float *src = random_floats(rows * src_pitch, 1.0f);
    float *expected = random_floats(rows * dst_pitch, 1.0f); /* untouched gaps stay */
    float *d_src = device_floats(src, rows * src_pitch);
    float *d_dst = device_floats(expected, rows * dst_pitch);
    for (size_t r = 0; r < rows; r++)
        memcpy(expected + r * dst_pitch, src + r * src_pitch, width * sizeof(float));
    CHECK(cuda_copy_rows(gpu, d_dst, dst_pitch, d_src, src_pitch, width, rows));
    expect_close(label("copy_rows %zu x %zu (pitch %zu -> %zu)", rows, width, src_pitch,
                       dst_pitch),
                 d_dst, expected, rows * dst_pitch);
    float *d_copy = device_poison(rows * src_pitch);
    CHECK(cuda_memcpy_d2d(gpu, d_copy, d_src, rows * src_pitch * sizeof(float)));
    expect_close("memcpy_d2d", d_copy, src, rows * src_pitch);
    release_buffers();
}

int main(void)
{
    char err[512];
    if (cuda_device_count(err, sizeof(err)) == 0) {
        printf("no CUDA device: %s\n", err);
        return EXIT_SKIP;
    }
    gpu = cuda_kernels_init(0, err, sizeof(err));
    if (!gpu) {
        fprintf(stderr, "gpu_check: %s\n", err);
        return 1;
    }
    check_encoder(2, 13, 48, 7, 3);
    check_encoder(3, 70, 100, 50, 0);
    check_layernorm(26, 48);
    check_layernorm(210, 100);
    check_matmul(26, 48, 144, true);
    check_matmul(210, 100, 67, false);
    check_attention(2, 13, 48, 4);
    check_attention(3, 70, 40, 5);
    check_elementwise(1000003);
    check_crossentropy(26, 67);
    check_crossentropy(70, 1000);
    check_optimizer(OPTIM_LAMB, 1e-2f);
    check_optimizer(OPTIM_ADAMW, 1e-2f);
    check_snapshot(100003);
    check_snapshot(1 << 24); /* long enough for an unordered memset to overtake the copy */
    check_copies(70, 16, 48, 16);
    check_copies(13, 33, 33, 100);
    cuda_kernels_shutdown(gpu);
    printf("%d of %d checks passed (TF32 off, tolerance %.0e)\n", checks - failures, checks,
           TOLERANCE);
    return failures ? 1 : 0;
}
