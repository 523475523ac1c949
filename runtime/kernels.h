/*
 * kernels: the CPU implementations of the model's operations, each a
 * forward/backward pair on row-major fp32 arrays (shapes in the comments).
 * Matrix products go to oneDNN's sgemm on CPUs with AVX-512 and to
 * OpenBLAS's cblas_sgemm elsewhere (and in a build without libdnnl-dev): the
 * faster of the two on each kind of CPU, measured; each block of the output
 * on one thread; the rest is
 * C with OpenMP, written so that GCC vectorizes it: exponentials (GELU's
 * tanh, softmax, cross-entropy) by kernels.c's own exp, not libm's (about
 * 1e-7 relative; exp(-inf) is exactly 0, NaN stays NaN), and row sums in
 * fixed interleaved lanes.
 *
 * Conventions (as in llm.c): N = B*T rows of tokens; backward functions
 * ACCUMULATE (+=) into parameter gradients (so micro-batches add up) and
 * OVERWRITE input gradients unless the name says "accumulate".
 * Every loop whose result is a sum has a fixed order that does not depend on
 * the number of threads (products go in blocks of a fixed size, one thread
 * each), so a run is bit-for-bit repeatable at any --threads.
 */
#ifndef PHALANX_KERNELS_H
#define PHALANX_KERNELS_H

#include "kernel_list.h"

#include <stddef.h>

/* The operations of kernel_list.h, each under its own name (the shapes and
 * semantics are written there), and the products' bf16 variants under the
 * name with _bf16 (--precision bf16: every product's inputs rounded to
 * bfloat16, fp32 accumulation; bf16.h; bf16_open() first; biases, softmax
 * and everything else in fp32). */
#define KERNELS_DECLARE(ret, name, params, args) ret name params;
#define KERNELS_DECLARE_BF16(ret, name, params, args) ret name##_bf16 params;
KERNEL_LIST(KERNELS_DECLARE)
KERNEL_PRODUCTS(KERNELS_DECLARE_BF16)
#undef KERNELS_DECLARE
#undef KERNELS_DECLARE_BF16

/* out = a + b */
void residual_forward(float *out, const float *a, const float *b, size_t count);

/* Threads for the kernels (OpenMP; OpenBLAS itself runs single-threaded). 0: all cores. */
void kernels_set_threads(int threads);

#endif
