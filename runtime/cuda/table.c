/*
 * The CUDA backend behind the device table (device.h): each entry queues the
 * cuda_ function of the same name and keeps its first failure (the table's
 * errors are sticky, so that the model's code reads like the CPU's and the
 * training loop checks once per step).
 */
#include "cuda_device.h"
#include "cuda_kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Written by the training thread only (the sidecar uses snapshot_wait,
 * which reports its own errors). */
static struct {
    bool failed;
    char message[512];
} sticky;

static void keep(int status)
{
    if (status == 0 || sticky.failed)
        return;
    sticky.failed = true;
    snprintf(sticky.message, sizeof(sticky.message), "%s", cuda_error());
}

static void *table_alloc(size_t bytes)
{
    void *buffer = cuda_alloc(bytes);
    if (buffer && cuda_memset_zero(buffer, bytes)) {
        cuda_free(buffer);
        return NULL;
    }
    return buffer;
}

static void table_upload(void *dst, const void *src, size_t bytes)
{
    keep(cuda_memcpy_h2d(dst, src, bytes));
}

static void table_download(void *dst, const void *src, size_t bytes)
{
    keep(cuda_memcpy_d2h(dst, src, bytes));
}

static void table_copy(void *dst, const void *src, size_t bytes)
{
    if (dst != src)
        keep(cuda_memcpy_d2d(dst, src, bytes));
}

static void table_copy_rows(float *dst, size_t dst_pitch, const float *src, size_t src_pitch,
                            size_t width, size_t rows)
{
    keep(cuda_copy_rows(dst, dst_pitch, src, src_pitch, width, rows));
}

static void table_zero(void *dst, size_t bytes)
{
    keep(cuda_memset_zero(dst, bytes));
}

static int table_sync(void)
{
    keep(cuda_kernels_sync());
    return sticky.failed ? -1 : 0;
}

static const char *table_error(void)
{
    return sticky.message;
}

static void table_encoder_forward(float *out, const int *tokens, const float *wte, const float *wpe,
                            int B, int T, int C, int pos_offset)
{
    keep(cuda_encoder_forward(out, tokens, wte, wpe, B, T, C, pos_offset));
}

static void table_encoder_backward(float *dwte, float *dwpe, const float *dout, const int *tokens,
                             int B, int T, int C, int pos_offset)
{
    keep(cuda_encoder_backward(dwte, dwpe, dout, tokens, B, T, C, pos_offset));
}

static void table_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, size_t N, int C)
{
    keep(cuda_layernorm_forward(out, mean, rstd, inp, weight, bias, N, C));
}

static void table_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, size_t N, int C)
{
    keep(cuda_layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C));
}

static void table_matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                           size_t N, int IC, int OC)
{
    keep(cuda_matmul_forward(out, inp, weight, bias, N, IC, OC));
}

static void table_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, size_t N, int IC, int OC)
{
    keep(cuda_matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, IC, OC));
}

static void table_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C,
                              int NH)
{
    keep(cuda_attention_forward(out, att, qkv, B, T, C, NH));
}

static void table_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                               const float *att, int B, int T, int C, int NH)
{
    keep(cuda_attention_backward(dqkv, datt, dout, qkv, att, B, T, C, NH));
}

static void table_gelu_forward(float *out, const float *inp, size_t count)
{
    keep(cuda_gelu_forward(out, inp, count));
}

static void table_gelu_backward(float *dinp, const float *inp, const float *dout, size_t count)
{
    keep(cuda_gelu_backward(dinp, inp, dout, count));
}

static void table_accumulate(float *dst, const float *src, size_t count)
{
    keep(cuda_accumulate(dst, src, count));
}

static double table_crossentropy_forward(float *probs, float *losses, const float *logits,
                                   const int *targets, size_t N, int V)
{
    double sum = NAN;
    keep(cuda_crossentropy_forward(probs, losses, logits, targets, N, V, &sum));
    return sticky.failed ? NAN : sum;
}

static void table_crossentropy_backward(float *dlogits, const float *probs, const int *targets,
                                  float dloss, size_t N, int V)
{
    keep(cuda_crossentropy_backward(dlogits, probs, targets, dloss, N, V));
}

static double table_grad_sumsq(const OptimTensor *tensors, int count)
{
    double sum = NAN;
    keep(cuda_optim_grad_sumsq(tensors, count, &sum));
    return sticky.failed ? NAN : sum;
}

static void table_optim_step(const OptimConfig *cfg, const OptimTensor *tensors, int count, float lr,
                       long step, float grad_scale)
{
    keep(cuda_optim_step(cfg, tensors, count, lr, step, grad_scale));
}

static void table_snapshot_copy(void *host_dst, const void *src, size_t bytes)
{
    keep(cuda_snapshot_copy_async(host_dst, src, bytes));
}

static int table_snapshot_wait(char *err, size_t err_len)
{
    if (cuda_snapshot_wait() == 0)
        return 0;
    snprintf(err, err_len, "copying the snapshot from the GPU: %s", cuda_error());
    return -1;
}

static void table_compute_after_snapshot(void)
{
    keep(cuda_compute_after_snapshot());
}

static const Device cuda_device = {
    .name = "cuda",
    .host_memory = false,
    .staged = true,
    .alloc = table_alloc,
    .free = cuda_free,
    .upload = table_upload,
    .download = table_download,
    .copy = table_copy,
    .copy_rows = table_copy_rows,
    .zero = table_zero,
    .sync = table_sync,
    .error = table_error,
    .encoder_forward = table_encoder_forward,
    .encoder_backward = table_encoder_backward,
    .layernorm_forward = table_layernorm_forward,
    .layernorm_backward = table_layernorm_backward,
    .matmul_forward = table_matmul_forward,
    .matmul_backward = table_matmul_backward,
    .attention_forward = table_attention_forward,
    .attention_backward = table_attention_backward,
    .gelu_forward = table_gelu_forward,
    .gelu_backward = table_gelu_backward,
    .accumulate = table_accumulate,
    .crossentropy_forward = table_crossentropy_forward,
    .crossentropy_backward = table_crossentropy_backward,
    .grad_sumsq = table_grad_sumsq,
    .optim_step = table_optim_step,
    .host_alloc = cuda_host_alloc_pinned,
    .host_free = cuda_host_free_pinned,
    .snapshot_copy = table_snapshot_copy,
    .snapshot_wait = table_snapshot_wait,
    .compute_after_snapshot = table_compute_after_snapshot,
};

/* mpirun and srun say which rank of this node a process is. */
static int local_rank(const char **source)
{
    static const char *names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *value = getenv(names[i]);
        if (value && *value) {
            *source = names[i];
            return atoi(value);
        }
    }
    *source = NULL;
    return 0;
}

const Device *cuda_device_open(bool tf32, char *err, size_t err_len)
{
    const char *source;
    int local = local_rank(&source), count = cuda_device_count();
    char detail[512];
    if (count == 0) {
        snprintf(err, err_len,
                 "--device cuda: no CUDA device is usable here (%s); run on a machine with an "
                 "NVIDIA GPU and its driver, or use --device cpu",
                 cuda_error());
        return NULL;
    }
    if (local >= count) {
        snprintf(err, err_len,
                 "--device cuda: this process is local rank %d (%s) but only %d GPU(s) are "
                 "visible: one GPU per rank; start at most %d rank(s) per node "
                 "(phalanx run --ranks-per-node %d), or use --device cpu",
                 local, source, count, count, count);
        return NULL;
    }
    if (cuda_kernels_init(local, detail, sizeof(detail))) {
        snprintf(err, err_len, "--device cuda: GPU %d: %s", local, detail);
        return NULL;
    }
    if (cuda_set_tf32(tf32)) {
        snprintf(err, err_len, "--device cuda: GPU %d: %s", local, cuda_error());
        cuda_kernels_shutdown();
        return NULL;
    }
    sticky.failed = false;
    sticky.message[0] = '\0';
    return &cuda_device;
}

const Device *cuda_device_bf16(void)
{
    cuda_set_bf16(true);
    return &cuda_device;
}

void cuda_device_close(void)
{
    long calls = 0;
    if (cuda_gemm_timing()) {
        double seconds = cuda_gemm_seconds(&calls);
        fprintf(stderr, "cuda: cuBLAS time %.3f s in %ld calls (PHALANX_CUDA_GEMM_TIMING)\n",
                seconds, calls);
    }
    cuda_kernels_shutdown();
}
