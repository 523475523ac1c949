/*
 * device: the compute backend of a worker, a table of function pointers
 * chosen once at start (`--device cpu|cuda`). The model, the pipeline, the
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
 *   and semantics of kernels.h and the optimizer those of optim.h, on such
 *   buffers; OptimTensor arrays and OptimConfig themselves are host memory.
 * - Work is queued in order and may run after the call returns (cuda: one
 *   compute stream). upload(), download(), crossentropy_forward() and
 *   grad_sumsq() return when their result is there. sync() waits for every
 *   queued kernel; communicators read device buffers only after it (an NCCL
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

#include "optim.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    const char *name; /* "cpu", "cuda", "cpu-staged" */
    bool host_memory, staged;

    void *(*alloc)(size_t bytes); /* NULL when out of memory */
    void (*free)(void *buffer);
    void (*upload)(void *dst, const void *host_src, size_t bytes);
    void (*download)(void *host_dst, const void *src, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);
    /* rows x width floats from src (row pitch src_pitch floats) to dst (dst_pitch) */
    void (*copy_rows)(float *dst, size_t dst_pitch, const float *src, size_t src_pitch,
                      size_t width, size_t rows);
    void (*zero)(void *dst, size_t bytes);
    int (*sync)(void);
    const char *(*error)(void);

    void (*encoder_forward)(float *out, const int *tokens, const float *wte, const float *wpe,
                            int B, int T, int C, int pos_offset);
    void (*encoder_backward)(float *dwte, float *dwpe, const float *dout, const int *tokens,
                             int B, int T, int C, int pos_offset);
    void (*layernorm_forward)(float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, size_t N, int C);
    void (*layernorm_backward)(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, size_t N, int C);
    void (*matmul_forward)(float *out, const float *inp, const float *weight, const float *bias,
                           size_t N, int IC, int OC);
    void (*matmul_backward)(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, size_t N, int IC, int OC);
    void (*attention_forward)(float *out, float *att, const float *qkv, int B, int T, int C,
                              int NH);
    void (*attention_backward)(float *dqkv, float *datt, const float *dout, const float *qkv,
                               const float *att, int B, int T, int C, int NH);
    void (*gelu_forward)(float *out, const float *inp, size_t count);
    void (*gelu_backward)(float *dinp, const float *inp, const float *dout, size_t count);
    void (*accumulate)(float *dst, const float *src, size_t count);
    double (*crossentropy_forward)(float *probs, float *losses, const float *logits,
                                   const int *targets, size_t N, int V);
    void (*crossentropy_backward)(float *dlogits, const float *probs, const int *targets,
                                  float dloss, size_t N, int V);

    double (*grad_sumsq)(const OptimTensor *tensors, int count);
    void (*optim_step)(const OptimConfig *cfg, const OptimTensor *tensors, int count, float lr,
                       long step, float grad_scale);

    void *(*host_alloc)(size_t bytes);
    void (*host_free)(void *host_buffer);
    void (*snapshot_copy)(void *host_dst, const void *src, size_t bytes);
    int (*snapshot_wait)(char *err, size_t err_len);
    void (*compute_after_snapshot)(void);
} Device;

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
