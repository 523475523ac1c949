/*
 * cuda_kernels: the CUDA device backend. Every operation of kernels.h with the
 * same shapes and semantics, named with a cuda_ prefix, on DEVICE pointers;
 * the optimizer updates of optim.h on device tensors; memory helpers and
 * pinned staging for checkpoint snapshots.
 *
 * Contract
 * - cuda_kernels_init() selects a GPU and makes a context (CudaContext) with
 *   its compute stream and cuBLAS handle; every other function but the two
 *   frees takes that context first (no state lives outside it). Every cuda_ kernel is queued
 *   on the context's stream and
 *   returns at once; cuda_kernels_sync() waits for it. Functions that return
 *   a host value (the loss sum, the gradient sum of squares) and the
 *   cuda_memcpy_* helpers wait for the stream themselves.
 * - Conventions of kernels.h: N = B*T rows; backward functions ACCUMULATE
 *   into parameter gradients and OVERWRITE input gradients; the same in-place
 *   cases are allowed. Pointer arguments are device memory, except the
 *   OptimConfig and the OptimTensor array itself (their param, grad, m and v
 *   are device pointers).
 * - Matrix products are cuBLAS sgemm in fp32. TF32 tensor cores are off
 *   unless cuda_set_tf32(true): results then differ from the CPU's by TF32's
 *   10-bit mantissa. cuda_set_bf16(true) (--precision bf16): every product's
 *   inputs rounded to bf16 (to nearest even, as the CPU), fp32 sums: the
 *   linear layers through cublasGemmEx on bf16 copies, attention's batched
 *   products on fp32 copies rounded to bf16 (exact products: the same math).
 * - Sums are deterministic: no atomics, fixed reduction trees, so the same
 *   inputs give the same bits on the same GPU model. They are not the CPU's
 *   bits (the summation order differs); tests/gpu holds them to 1e-4 relative.
 * - Every function returns 0, or -1 with a message in cuda_error(ctx) (the
 *   context's; cuda_snapshot_wait writes to the caller's); nothing aborts. A
 *   failed kernel launch is reported by the call that queued it; an error
 *   while a kernel runs, by the next call that waits. cuda_alloc and cuda_host_alloc_pinned return NULL on failure.
 * - Threads: kernels, memcpy and cuda_snapshot_copy_async are called from the
 *   thread that owns the training loop; cuda_snapshot_wait from any thread
 *   (the checkpoint sidecar waits for its copy).
 */
#ifndef PHALANX_CUDA_KERNELS_H
#define PHALANX_CUDA_KERNELS_H

#include <stdbool.h>
#include <stddef.h>

#include "kernel_list.h"
#include "optim.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------- */
/* Device, stream, errors                                                  */

/* Number of usable GPUs; 0 (never a crash) without a GPU or a driver, the
 * reason then in `why`. */
int cuda_device_count(char *why, size_t why_len);
/* Everything the backend keeps for one GPU: its streams, cuBLAS handle,
 * events, scratch buffers, settings and last error (cuda_internal.h). */
typedef struct CudaContext CudaContext;

/* Makes `device` current and creates the context, its streams and its
 * cuBLAS handle; NULL with the reason in err. */
CudaContext *cuda_kernels_init(int device, char *err, size_t err_len);
/* Waits for queued work, then frees everything the context holds, and it. */
void cuda_kernels_shutdown(CudaContext *ctx);
int cuda_kernels_sync(CudaContext *ctx);
const char *cuda_error(CudaContext *ctx);
/* TF32 tensor cores for the matrix products (off after init). */
int cuda_set_tf32(CudaContext *ctx, bool enabled);
/* bf16 matrix products (off after init). */
int cuda_set_bf16(CudaContext *ctx, bool enabled);

/* ---------------------------------------------------------------------- */
/* Memory                                                                  */

void *cuda_alloc(CudaContext *ctx, size_t bytes);
void cuda_free(void *device_ptr);
/* Queued on the compute stream after the work before them; they return when
 * the copy is done. */
int cuda_memcpy_h2d(CudaContext *ctx, void *device_dst, const void *host_src, size_t bytes);
int cuda_memcpy_d2h(CudaContext *ctx, void *host_dst, const void *device_src, size_t bytes);
/* Queued; they return at once. */
int cuda_memset_zero(CudaContext *ctx, void *device_dst, size_t bytes);
int cuda_memcpy_d2d(CudaContext *ctx, void *device_dst, const void *device_src, size_t bytes);
/* rows x width floats, row pitches in floats (cudaMemcpy2DAsync). */
int cuda_copy_rows(CudaContext *ctx, float *dst, size_t dst_pitch, const float *src,
                   size_t src_pitch, size_t width, size_t rows);

/* Page-locked host memory, so that snapshot copies run asynchronously. */
void *cuda_host_alloc_pinned(CudaContext *ctx, size_t bytes);
void cuda_host_free_pinned(void *host_ptr);
/* Copies device memory to pinned host memory on a copy stream of its own,
 * after the compute work queued so far (the snapshot sees parameters as of
 * this call) and concurrently with the compute work queued later. */
int cuda_snapshot_copy_async(CudaContext *ctx, void *pinned_dst, const void *device_src,
                             size_t bytes);
/* Waits until every snapshot copy queued so far has landed; a failure is
 * described in err (not in cuda_error: any thread may call it). */
int cuda_snapshot_wait(CudaContext *ctx, char *err, size_t err_len);
/* Makes the compute work queued from now on wait (on the GPU) for every
 * snapshot copy queued so far: the optimizer must not overwrite parameters
 * still being copied, and the host thread need not block for that. */
int cuda_compute_after_snapshot(CudaContext *ctx);

/* ---------------------------------------------------------------------- */
/* Profiling: PHALANX_CUDA_GEMM_TIMING=1 at init brackets every cuBLAS call
 * with events on the compute stream; cuda_gemm_seconds() (it waits for the
 * stream) gives the GPU time spent in cuBLAS since init, and the count of
 * calls. Off, it costs nothing and reports 0. */
bool cuda_gemm_timing(CudaContext *ctx);
double cuda_gemm_seconds(CudaContext *ctx, long *calls);

/* ---------------------------------------------------------------------- */
/* Model kernels (shapes and semantics: kernels.h)                         */

/* cuda_<name> for every operation of kernel_list.h: the same parameters,
 * and an int status; those that return a double there write it (host
 * memory) to a last parameter `result` instead and wait for the stream
 * (crossentropy_forward: the sum of losses). */
#define CUDA_KERNEL_RESULT_void
#define CUDA_KERNEL_RESULT_double , double *result
#define CUDA_KERNEL_DECLARE(ret, name, params, args)                                          \
    int cuda_##name(CudaContext *ctx, KERNEL_UNPAREN params CUDA_KERNEL_RESULT_##ret);
KERNEL_LIST(CUDA_KERNEL_DECLARE)

/* out = a + b (kernels.h's residual_forward; gpu_check holds it to the CPU's). */
int cuda_residual_forward(CudaContext *ctx, float *out, const float *a, const float *b,
                          size_t count);

/* ---------------------------------------------------------------------- */
/* Optimizer (semantics: optim.h; tensors hold device pointers)            */

/* optim_grad_sumsq (result: host, double; waits for the stream) and
 * optim_step on the device: LAMB's per-tensor norms and trust ratio stay on
 * the GPU, so the step queues its work without waiting. */
KERNEL_OPTIM(CUDA_KERNEL_DECLARE)
#undef CUDA_KERNEL_DECLARE

#ifdef __cplusplus
}
#endif

#endif
