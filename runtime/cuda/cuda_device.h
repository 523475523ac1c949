/* The CUDA backend as a device table (device.h); used by runtime/device.c. */
#ifndef PHALANX_CUDA_DEVICE_H
#define PHALANX_CUDA_DEVICE_H

#include "device.h"

/* Picks the GPU of the node-local rank and opens the backend on it: a table
 * of its own, whose ctx holds the GPU's context. NULL with a message that
 * names the fix when there is no such GPU. */
const Device *cuda_device_open(bool tf32, char *err, size_t err_len);
/* --precision bf16: the products of `fp32` (an open cuda table) take bf16
 * inputs (cuda_kernels.h); returns the same table. */
const Device *cuda_device_bf16(const Device *fp32);
/* Prints the cuBLAS timing (PHALANX_CUDA_GEMM_TIMING), shuts the GPU's
 * context down and frees the table. */
void cuda_device_close(const Device *device);

#endif
