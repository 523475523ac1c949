/* Private to runtime/cuda/: what device.c shares with the kernels (*.cu). */
#ifndef PHALANX_CUDA_INTERNAL_H
#define PHALANX_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

cudaStream_t cuda_compute_stream(void);
cublasHandle_t cuda_blas(void);

/* Record a message for cuda_error() and return -1; the checks return 0 on
 * success and otherwise name `what` and the library's own message. */
int cuda_fail(const char *format, ...) __attribute__((format(printf, 1, 2)));
int cuda_check(cudaError_t code, const char *what);
int cuda_blas_check(cublasStatus_t status, const char *what);

/* The kernels' scratch buffers, freed by cuda_kernels_shutdown(). */
void cuda_scratch_release(void);

#ifdef __cplusplus
}
#endif

#endif
