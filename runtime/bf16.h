/*
 * bf16: matrix products with bfloat16 inputs and float32 accumulation, the
 * products of `--precision bf16` on the CPU (oneDNN's matmul, which uses the
 * CPU's AVX512-BF16 or AMX instructions).
 *
 * Contract
 * - bf16_round(x) is x rounded to the nearest bfloat16 (ties to even, as
 *   PyTorch's .to(torch.bfloat16)), returned as a float.
 * - bf16_gemm() computes C = alpha * op(A) op(B) + beta * C (row-major, fp32
 *   in memory, beta 0 or 1) where every element of A and B is first rounded
 *   to bfloat16; products and sums are fp32. It runs on the calling thread
 *   alone (callers split work over OpenMP threads themselves).
 * - bf16_open() must succeed once before any bf16_gemm(): it checks that the
 *   build has oneDNN and the CPU has AVX512-BF16, else fails with a message
 *   that names the missing piece and the fix. Thread-safe after that.
 */
#ifndef PHALANX_BF16_H
#define PHALANX_BF16_H

#include <stdbool.h>
#include <stddef.h>

int bf16_open(char *err, size_t err_len);

float bf16_round(float x);

void bf16_gemm(bool trans_a, bool trans_b, size_t M, size_t N, size_t K, float alpha,
               const float *A, size_t lda, const float *B, size_t ldb, float beta, float *C,
               size_t ldc);

#endif
