/*
 * bf16: matrix products with bfloat16 inputs and float32 accumulation, the
 * products of `--precision bf16` on the CPU (oneDNN's matmul, which uses the
 * CPU's AVX512-BF16 or AMX instructions).
 *
 * Contract
 * - Rounding is to the nearest bfloat16, ties to even (PyTorch's
 *   .to(torch.bfloat16)); NaN stays NaN.
 * - bf16_pack() rounds rows x cols of X (leading dimension ld) into a dense
 *   row-major bf16 array; bf16_round_rows() does the same into floats (bf16
 *   values held in fp32: a plain fp32 product of them is a bf16 product, the
 *   cheaper way for small products, where oneDNN's per-call cost dominates).
 * - bf16_gemm_packed() computes C = alpha * op(A) op(B) + beta * C (row-major,
 *   A and B packed bf16 as stored, leading dimensions lda and ldb, C fp32,
 *   beta 0 or 1); products and sums are fp32. It runs on the calling thread
 *   alone (callers split work over OpenMP threads themselves).
 * - bf16_open() must succeed once before any bf16_gemm_packed(): it checks that the
 *   build has oneDNN and the CPU has AVX512-BF16, else fails with a message
 *   that names the missing piece and the fix. Thread-safe after that.
 */
#ifndef PHALANX_BF16_H
#define PHALANX_BF16_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int bf16_open(char *err, size_t err_len);

void bf16_pack(uint16_t *dst, const float *X, size_t ld, size_t rows, size_t cols);
void bf16_round_rows(float *dst, const float *X, size_t ld, size_t rows, size_t cols);

void bf16_gemm_packed(bool trans_a, bool trans_b, size_t M, size_t N, size_t K, float alpha,
                      const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, float beta,
                      float *C, size_t ldc);

#endif
