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

/* The table's context: the GPU's, and the table's first failure. Written by
 * the training thread only (the sidecar uses snapshot_wait, which reports
 * its own errors). */
typedef struct {
    Device device; /* its ctx points here */
    CudaContext *gpu;
    bool failed;
    char message[512];
} Table;

static CudaContext *gpu_of(void *ctx)
{
    return ((Table *)ctx)->gpu;
}

static void keep(void *ctx, int status)
{
    Table *table = ctx;
    if (status == 0 || table->failed)
        return;
    table->failed = true;
    snprintf(table->message, sizeof(table->message), "%s", cuda_error(table->gpu));
}

static bool failed(void *ctx)
{
    return ((Table *)ctx)->failed;
}

static void *table_alloc(void *ctx, size_t bytes)
{
    void *buffer = cuda_alloc(gpu_of(ctx), bytes);
    if (buffer && cuda_memset_zero(gpu_of(ctx), buffer, bytes)) {
        cuda_free(buffer);
        return NULL;
    }
    return buffer;
}

static void table_free(void *ctx, void *buffer)
{
    (void)ctx;
    cuda_free(buffer);
}

static void table_upload(void *ctx, void *dst, const void *src, size_t bytes)
{
    keep(ctx, cuda_memcpy_h2d(gpu_of(ctx), dst, src, bytes));
}

static void table_download(void *ctx, void *dst, const void *src, size_t bytes)
{
    keep(ctx, cuda_memcpy_d2h(gpu_of(ctx), dst, src, bytes));
}

static void table_copy(void *ctx, void *dst, const void *src, size_t bytes)
{
    if (dst != src)
        keep(ctx, cuda_memcpy_d2d(gpu_of(ctx), dst, src, bytes));
}

static void table_copy_rows(void *ctx, float *dst, size_t dst_pitch, const float *src,
                            size_t src_pitch, size_t width, size_t rows)
{
    keep(ctx, cuda_copy_rows(gpu_of(ctx), dst, dst_pitch, src, src_pitch, width, rows));
}

static void table_zero(void *ctx, void *dst, size_t bytes)
{
    keep(ctx, cuda_memset_zero(gpu_of(ctx), dst, bytes));
}

static int table_sync(void *ctx)
{
    keep(ctx, cuda_kernels_sync(gpu_of(ctx)));
    return failed(ctx) ? -1 : 0;
}

static const char *table_error(void *ctx)
{
    return ((Table *)ctx)->message;
}

/* One entry per operation of kernel_list.h: it queues the cuda_ function of
 * the same name and keeps its first failure; those that return a double
 * give NAN after one. */
#define TABLE_CALL_void(name, args) keep(ctx, cuda_##name(gpu_of(ctx), KERNEL_UNPAREN args));
#define TABLE_CALL_double(name, args)                                                         \
    double result = NAN;                                                                      \
    keep(ctx, cuda_##name(gpu_of(ctx), KERNEL_UNPAREN args, &result));                        \
    return failed(ctx) ? NAN : result;
#define TABLE_ENTRY(ret, name, params, args)                                                  \
    static ret table_##name(void *ctx, KERNEL_UNPAREN params)                                 \
    {                                                                                         \
        TABLE_CALL_##ret(name, args)                                                          \
    }
KERNEL_LIST(TABLE_ENTRY)
KERNEL_OPTIM(TABLE_ENTRY)

static void *table_host_alloc(void *ctx, size_t bytes)
{
    return cuda_host_alloc_pinned(gpu_of(ctx), bytes);
}

static void table_host_free(void *ctx, void *host_buffer)
{
    (void)ctx;
    cuda_host_free_pinned(host_buffer);
}

static void table_snapshot_copy(void *ctx, void *host_dst, const void *src, size_t bytes)
{
    keep(ctx, cuda_snapshot_copy_async(gpu_of(ctx), host_dst, src, bytes));
}

static int table_snapshot_wait(void *ctx, char *err, size_t err_len)
{
    char why[512];
    if (cuda_snapshot_wait(gpu_of(ctx), why, sizeof(why)) == 0)
        return 0;
    snprintf(err, err_len, "copying the snapshot from the GPU: %s", why);
    return -1;
}

static void table_compute_after_snapshot(void *ctx)
{
    keep(ctx, cuda_compute_after_snapshot(gpu_of(ctx)));
}

#define TABLE_MEMBER(ret, name, params, args) .name = table_##name,

/* The table every open copies; its ctx is set to the copy's Table. */
static const Device cuda_table = {
    .name = "cuda",
    .host_memory = false,
    .staged = true,
    .alloc = table_alloc,
    .sync = table_sync,
    .error = table_error,
    .host_alloc = table_host_alloc,
    .compute_after_snapshot = table_compute_after_snapshot,
    DEVICE_OPS(TABLE_MEMBER) KERNEL_LIST(TABLE_MEMBER) KERNEL_OPTIM(TABLE_MEMBER)
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
    char detail[512];
    int local = local_rank(&source), count = cuda_device_count(detail, sizeof(detail));
    if (count == 0) {
        snprintf(err, err_len,
                 "--device cuda: no CUDA device is usable here (%s); run on a machine with an "
                 "NVIDIA GPU and its driver, or use --device cpu",
                 detail);
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
    Table *table = calloc(1, sizeof(*table));
    if (!table) {
        snprintf(err, err_len, "--device cuda: out of host memory");
        return NULL;
    }
    table->gpu = cuda_kernels_init(local, detail, sizeof(detail));
    if (!table->gpu) {
        snprintf(err, err_len, "--device cuda: GPU %d: %s", local, detail);
        free(table);
        return NULL;
    }
    if (cuda_set_tf32(table->gpu, tf32)) {
        snprintf(err, err_len, "--device cuda: GPU %d: %s", local, cuda_error(table->gpu));
        cuda_kernels_shutdown(table->gpu);
        free(table);
        return NULL;
    }
    table->device = cuda_table;
    table->device.ctx = table;
    return &table->device;
}

const Device *cuda_device_bf16(const Device *fp32)
{
    cuda_set_bf16(gpu_of(fp32->ctx), true);
    return fp32;
}

void cuda_device_close(const Device *device)
{
    Table *table = device->ctx;
    long calls = 0;
    if (cuda_gemm_timing(table->gpu)) {
        double seconds = cuda_gemm_seconds(table->gpu, &calls);
        fprintf(stderr, "cuda: cuBLAS time %.3f s in %ld calls (PHALANX_CUDA_GEMM_TIMING)\n",
                seconds, calls);
    }
    cuda_kernels_shutdown(table->gpu);
    free(table);
}
