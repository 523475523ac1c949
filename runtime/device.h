/*
 * device: the compute backend of a worker, a table of function pointers and
 * the backend's context, chosen once at start (`--device cpu|cuda`). The model, the pipeline, the
 * sequence-parallel exchange, the gradient sync, the optimizer and the
 * checkpoint glue reach their buffers and kernels only through it.
 *
 * Backends: cpu (kernels.c, OpenBLAS); cuda (runtime/cuda/, one GPU per
 * rank); cpu-staged, the cpu kernels behind cuda's memory discipline
 * (separate buffers, explicit uploads and downloads, a host mirror and
 * snapshot copies for checkpoints), so that the code paths a GPU takes run
 * and are tested on machines without one.
 *
 * Contract
 * - Buffers from alloc() are device memory, zero-filled. `host_memory`: they
 *   are host memory too, so MPI can send them. `staged`: they are not the
 *   caller's host arrays, so host data goes in with upload() and out with
 *   download(), and checkpoints read a mirror filled by snapshot_copy(); when
 *   false (cpu) host arrays may be used in place. The kernels have the shapes
 *   and semantics of kernel_list.h and the optimizer those of optim.h, on such
 *   buffers; OptimTensor arrays and OptimConfig themselves are host memory.
 * - Work is queued in order and may run after the call returns (cuda: one
 *   compute stream). upload(), download(), crossentropy_forward() and
 *   optim_grad_sumsq() return when their result is there. sync() waits for
 *   every queued kernel; communicators read device buffers only after it (an NCCL
 *   stream does not wait for the compute stream: comm.h).
 * - Errors are sticky: a kernel that fails records the first message and
 *   later calls go on harmlessly; sync() returns -1 from then on and error()
 *   says what failed first. The training loop checks at every step.
 * - Snapshots (checkpoints of staged buffers; NULL unless staged): the
 *   training thread queues snapshot_copy() into pinned host memory from
 *   host_alloc() on a copy stream of its own, after the compute work queued
 *   so far; snapshot_wait() (any thread: the checkpoint sidecar) waits for
 *   the copies to land; compute_after_snapshot() makes the compute work
 *   queued next (the optimizer) wait for them on the device, so that the
 *   host thread does not block.
 */
#ifndef PHALANX_DEVICE_H
#define PHALANX_DEVICE_H

#include "kernel_list.h"
#include "optim.h"

#include <stdbool.h>
#include <stddef.h>

/* The memory and stream operations, X(return type, name, (parameters),
 * (arguments)) as in kernel_list.h; the five whose result is a pointer or
 * that take no argument besides the context are members of their own. */
#define DEVICE_OPS(X)                                                                         \
    X(void, free, (void *buffer), (buffer))                                                   \
    X(void, upload, (void *dst, const void *host_src, size_t bytes), (dst, host_src, bytes))  \
    X(void, download, (void *host_dst, const void *src, size_t bytes), (host_dst, src, bytes)) \
    X(void, copy, (void *dst, const void *src, size_t bytes), (dst, src, bytes))              \
    /* rows x width floats from src (row pitch src_pitch floats) to dst (dst_pitch) */        \
    X(void, copy_rows,                                                                        \
      (float *dst, size_t dst_pitch, const float *src, size_t src_pitch, size_t width,        \
       size_t rows),                                                                          \
      (dst, dst_pitch, src, src_pitch, width, rows))                                          \
    X(void, zero, (void *dst, size_t bytes), (dst, bytes))                                    \
    X(void, host_free, (void *host_buffer), (host_buffer))                                    \
    X(void, snapshot_copy, (void *host_dst, const void *src, size_t bytes),                   \
      (host_dst, src, bytes))                                                                 \
    X(int, snapshot_wait, (char *err, size_t err_len), (err, err_len))

/* Every entry takes the backend's context (`ctx`: its streams, handles,
 * scratch buffers and errors; NULL on cpu) first. Callers use the
 * device_<entry>(dev, ...) wrappers below, which pass it. */
#define DEVICE_MEMBER(ret, name, params, args) ret (*name)(void *ctx, KERNEL_UNPAREN params);

typedef struct {
    const char *name; /* "cpu", "cuda", "cpu-staged" */
    bool host_memory, staged;
    void *ctx;

    void *(*alloc)(void *ctx, size_t bytes); /* NULL when out of memory */
    int (*sync)(void *ctx);
    const char *(*error)(void *ctx);
    void *(*host_alloc)(void *ctx, size_t bytes);
    void (*compute_after_snapshot)(void *ctx);
    DEVICE_OPS(DEVICE_MEMBER)
    KERNEL_LIST(DEVICE_MEMBER)
    KERNEL_OPTIM(DEVICE_MEMBER)
} Device;

#undef DEVICE_MEMBER

/* device_<entry>(dev, ...): dev's entry called with dev's context. */
#define DEVICE_RETURN_void
#define DEVICE_RETURN_int return
#define DEVICE_RETURN_double return
#define DEVICE_WRAPPER(ret, name, params, args)                                               \
    static inline ret device_##name(const Device *dev, KERNEL_UNPAREN params)                 \
    {                                                                                         \
        DEVICE_RETURN_##ret dev->name(dev->ctx, KERNEL_UNPAREN args);                         \
    }
DEVICE_OPS(DEVICE_WRAPPER)
KERNEL_LIST(DEVICE_WRAPPER)
KERNEL_OPTIM(DEVICE_WRAPPER)
#undef DEVICE_WRAPPER

static inline void *device_alloc(const Device *dev, size_t bytes)
{
    return dev->alloc(dev->ctx, bytes);
}

static inline int device_sync(const Device *dev)
{
    return dev->sync(dev->ctx);
}

static inline const char *device_error(const Device *dev)
{
    return dev->error(dev->ctx);
}

static inline void *device_host_alloc(const Device *dev, size_t bytes)
{
    return dev->host_alloc(dev->ctx, bytes);
}

static inline void device_compute_after_snapshot(const Device *dev)
{
    dev->compute_after_snapshot(dev->ctx);
}

/* Drains `dev`'s queue (sync). Returns 0, or -1 after a failed kernel with
 * "<name> device: <first error>" in err: what callers say before they hand
 * buffers to a communicator, or at the end of a step. */
int device_ready(const Device *dev, char *err, size_t err_len);

/* The CPU backend (kernels.c, optim.c); always there, never fails. */
const Device *device_cpu(void);

/* Opens the backend `name` for this process. cuda takes the GPU of the
 * node-local rank (OMPI_COMM_WORLD_LOCAL_RANK, else SLURM_LOCALID, else 0)
 * and turns TF32 tensor cores on only when `tf32`. Returns NULL with a
 * message that names the fix (no GPU, too few GPUs, a build without CUDA). */
const Device *device_open(const char *name, bool tf32, char *err, size_t err_len);
void device_close(const Device *device);

/* `fp32`'s table with bf16 matrix products (--precision bf16: inputs rounded
 * to bfloat16, fp32 accumulation; kernels.h), or NULL with a message naming
 * the fix: on cpu, a CPU without AVX512-BF16 or a build without oneDNN.
 * cuda switches its open backend to cuBLAS bf16 products. Everything else,
 * parameters included, stays fp32. */
const Device *device_bf16(const Device *fp32, char *err, size_t err_len);

/* True when `name` is a backend of this build ("cpu" always); otherwise
 * false with the reason and the fix in `why`. */
bool device_built(const char *name, char *why, size_t why_len);

#endif
