/* Private to runtime/cuda/: what device.c shares with the kernels (*.cu). */
#ifndef PHALANX_CUDA_INTERNAL_H
#define PHALANX_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "cuda_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The scratch buffers of the kernels, by use. */
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

/* cuBLAS timing (PHALANX_CUDA_GEMM_TIMING=1): an event pair around every
 * call, summed in batches so that the pool stays small. */
enum { TIMING_PAIRS = 1024 };

typedef struct {
    int enabled; /* 0: not read from the environment yet, 1: on, 2: off */
    cudaEvent_t begin[TIMING_PAIRS], end[TIMING_PAIRS];
    int used;
    double seconds;
    long calls;
} CudaTiming;

/* Everything the backend keeps for one GPU (cuda_kernels_init makes it). */
struct CudaContext {
    int device;
    cudaStream_t compute; /* every kernel and product */
    cudaStream_t copy;    /* snapshot copies, concurrent with compute */
    cudaEvent_t queued;   /* marks the compute work a snapshot must follow */
    cudaEvent_t copied;   /* the last snapshot copy */
    cublasHandle_t blas;
    /* Written by the training thread only: the checkpoint sidecar's
     * cuda_snapshot_wait reports into its own buffer. */
    char error[512];
    /* --precision bf16: the products' inputs rounded to bf16, fp32 sums. Set
     * once at open (cuda_set_bf16), like TF32's math mode. */
    bool bf16_products;
    struct {
        void *ptr;
        size_t bytes;
    } scratch[SCRATCH_COUNT];
    CudaTiming timing;
};

/* Record a message for cuda_error() and return -1; the checks return 0 on
 * success and otherwise name `what` and the library's own message. */
int cuda_fail(CudaContext *ctx, const char *format, ...) __attribute__((format(printf, 2, 3)));
int cuda_check(CudaContext *ctx, cudaError_t code, const char *what);
int cuda_blas_check(CudaContext *ctx, cublasStatus_t status, const char *what);

/* The kernels' scratch buffers, freed by cuda_kernels_shutdown(). */
void cuda_scratch_release(CudaContext *ctx);

#ifdef __cplusplus
}
#endif

#endif
