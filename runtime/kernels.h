/*
 * kernels: the CPU implementations of the model's operations, each a
 * forward/backward pair on row-major fp32 arrays (shapes in the comments).
 * Matrix products go to oneDNN's sgemm (OpenBLAS's cblas_sgemm in a build
 * without libdnnl-dev), each block of the output on one thread; the rest is
 * C with OpenMP.
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

#include <stddef.h>

/* out[N,C] = wte[tokens[n]] + wpe[pos_offset + n % T] */
void encoder_forward(float *out, const int *tokens, const float *wte, const float *wpe,
                     int B, int T, int C, int pos_offset);
void encoder_backward(float *dwte, float *dwpe, const float *dout, const int *tokens,
                      int B, int T, int C, int pos_offset);

/* out = (x - mean) * rstd * w + b over the last dimension C, eps 1e-5 (PyTorch's). */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *weight, const float *bias, size_t N, int C);
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, const float *mean,
                        const float *rstd, size_t N, int C);

/* out[N,OC] = inp[N,IC] @ weight[OC,IC]^T + bias[OC] (bias may be NULL) */
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                    size_t N, int IC, int OC);
/* dinp = dout @ weight (overwrites; NULL to skip); dweight += dout^T @ inp;
 * dbias += column sums of dout (NULL to skip) */
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                     const float *inp, const float *weight, size_t N, int IC, int OC);

/* Causal self-attention of qkv[B,T,3C] (q | k | v, heads of D = C/NH columns):
 * att[B,NH,T,T] keeps the softmax probabilities for the backward pass,
 * out[B,T,C] the heads' outputs side by side. */
void attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH);
/* datt is [B,NH,T,T] scratch; dqkv is overwritten. */
void attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                        const float *att, int B, int T, int C, int NH);

/* The same four with bf16 products (--precision bf16): every product's inputs
 * rounded to bfloat16, fp32 accumulation (bf16.h; bf16_open() first);
 * biases, softmax and everything else in fp32. */
void matmul_forward_bf16(float *out, const float *inp, const float *weight, const float *bias,
                         size_t N, int IC, int OC);
void matmul_backward_bf16(float *dinp, float *dweight, float *dbias, const float *dout,
                          const float *inp, const float *weight, size_t N, int IC, int OC);
void attention_forward_bf16(float *out, float *att, const float *qkv, int B, int T, int C,
                            int NH);
void attention_backward_bf16(float *dqkv, float *datt, const float *dout, const float *qkv,
                             const float *att, int B, int T, int C, int NH);

/* tanh-approximated GELU (GPT-2's; PyTorch's gelu(approximate="tanh")) */
void gelu_forward(float *out, const float *inp, size_t count);
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t count);

/* out = a + b */
void residual_forward(float *out, const float *a, const float *b, size_t count);
/* dst += src */
void accumulate(float *dst, const float *src, size_t count);

/* probs[N,V] = softmax(logits) (in place allowed); losses[n] = -log probs[n, targets[n]];
 * returns the sum of losses in double. */
double crossentropy_forward(float *probs, float *losses, const float *logits,
                            const int *targets, size_t N, int V);
/* dlogits = (probs - onehot(targets)) * dloss, in place over probs allowed. */
void crossentropy_backward(float *dlogits, const float *probs, const int *targets,
                           float dloss, size_t N, int V);

/* Threads for the kernels (OpenMP; OpenBLAS itself runs single-threaded). 0: all cores. */
void kernels_set_threads(int threads);

#endif
