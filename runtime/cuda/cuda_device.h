/* The CUDA backend as a device table (device.h); used by runtime/device.c. */
#ifndef PHALANX_CUDA_DEVICE_H
#define PHALANX_CUDA_DEVICE_H

#include "device.h"

/* Picks the GPU of the node-local rank and opens the backend on it. NULL
 * with a message that names the fix when there is no such GPU. */
const Device *cuda_device_open(bool tf32, char *err, size_t err_len);
/* --precision bf16: the open backend's matrix products take bf16 inputs
 * (cuda_kernels.h); returns its table, the same one. */
const Device *cuda_device_bf16(void);
/* Prints the cuBLAS timing (PHALANX_CUDA_GEMM_TIMING) and shuts down. */
void cuda_device_close(void);

#endif
