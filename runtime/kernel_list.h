/*
 * kernel_list: the model's operations, written once. Each entry is
 * X(return type, name, (parameters), (arguments)); the return type is one
 * token (void or double). From these lists come the CPU declarations
 * (kernels.h), the device table and its call wrappers (device.h), the CUDA
 * declarations (cuda/cuda_kernels.h) and the CUDA table (cuda/table.c), so
 * that adding a kernel is one entry here plus its implementation in each
 * backend.
 *
 * Shapes and semantics are those of the CPU kernels (conventions in
 * kernels.h): N = B*T rows of tokens; backward functions ACCUMULATE (+=)
 * into parameter gradients and OVERWRITE input gradients unless the name
 * says "accumulate".
 */
#ifndef PHALANX_KERNEL_LIST_H
#define PHALANX_KERNEL_LIST_H

/* (a, b) -> a, b: how a generator splices a parenthesised list into another. */
#define KERNEL_UNPAREN(...) __VA_ARGS__

/* The products that --precision bf16 replaces (their inputs rounded to
 * bfloat16, fp32 accumulation). */
#define KERNEL_PRODUCTS(X)                                                                    \
    /* out[N,OC] = inp[N,IC] @ weight[OC,IC]^T + bias[OC] (bias may be NULL) */               \
    X(void, matmul_forward,                                                                   \
      (float *out, const float *inp, const float *weight, const float *bias, size_t N,        \
       int IC, int OC),                                                                       \
      (out, inp, weight, bias, N, IC, OC))                                                    \
    /* dinp = dout @ weight (overwrites; NULL to skip); dweight += dout^T @ inp;              \
     * dbias += column sums of dout (NULL to skip) */                                         \
    X(void, matmul_backward,                                                                  \
      (float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,        \
       const float *weight, size_t N, int IC, int OC),                                        \
      (dinp, dweight, dbias, dout, inp, weight, N, IC, OC))                                   \
    /* Causal self-attention of qkv[B,T,3C] (q | k | v, heads of D = C/NH columns):           \
     * att[B,NH,T,T] keeps the softmax probabilities for the backward pass,                   \
     * out[B,T,C] the heads' outputs side by side. */                                         \
    X(void, attention_forward,                                                                \
      (float *out, float *att, const float *qkv, int B, int T, int C, int NH),                \
      (out, att, qkv, B, T, C, NH))                                                           \
    /* datt is [B,NH,T,T] scratch; dqkv is overwritten. */                                    \
    X(void, attention_backward,                                                               \
      (float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,       \
       int B, int T, int C, int NH),                                                          \
      (dqkv, datt, dout, qkv, att, B, T, C, NH))

/* Every operation of the device table's model kernels. */
#define KERNEL_LIST(X)                                                                        \
    /* out[N,C] = wte[tokens[n]] + wpe[pos_offset + n % T] */                                 \
    X(void, encoder_forward,                                                                  \
      (float *out, const int *tokens, const float *wte, const float *wpe, int B, int T,       \
       int C, int pos_offset),                                                                \
      (out, tokens, wte, wpe, B, T, C, pos_offset))                                           \
    X(void, encoder_backward,                                                                 \
      (float *dwte, float *dwpe, const float *dout, const int *tokens, int B, int T, int C,   \
       int pos_offset),                                                                       \
      (dwte, dwpe, dout, tokens, B, T, C, pos_offset))                                        \
    /* out = (x - mean) * rstd * w + b over the last dimension C, eps 1e-5 (PyTorch's). */    \
    X(void, layernorm_forward,                                                                \
      (float *out, float *mean, float *rstd, const float *inp, const float *weight,           \
       const float *bias, size_t N, int C),                                                   \
      (out, mean, rstd, inp, weight, bias, N, C))                                             \
    X(void, layernorm_backward,                                                               \
      (float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,        \
       const float *weight, const float *mean, const float *rstd, size_t N, int C),           \
      (dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C))                            \
    KERNEL_PRODUCTS(X)                                                                        \
    /* tanh-approximated GELU (GPT-2's; PyTorch's gelu(approximate="tanh")) */                \
    X(void, gelu_forward, (float *out, const float *inp, size_t count), (out, inp, count))    \
    X(void, gelu_backward, (float *dinp, const float *inp, const float *dout, size_t count),  \
      (dinp, inp, dout, count))                                                               \
    /* dst += src */                                                                          \
    X(void, accumulate, (float *dst, const float *src, size_t count), (dst, src, count))      \
    /* probs[N,V] = softmax(logits) (in place allowed); losses[n] = -log probs[n,             \
     * targets[n]]; returns the sum of losses in double. */                                   \
    X(double, crossentropy_forward,                                                           \
      (float *probs, float *losses, const float *logits, const int *targets, size_t N,        \
       int V),                                                                                \
      (probs, losses, logits, targets, N, V))                                                 \
    /* dlogits = (probs - onehot(targets)) * dloss, in place over probs allowed. */           \
    X(void, crossentropy_backward,                                                            \
      (float *dlogits, const float *probs, const int *targets, float dloss, size_t N, int V), \
      (dlogits, probs, targets, dloss, N, V))

/* The optimizer's operations (semantics and CPU implementation: optim.h). */
#define KERNEL_OPTIM(X)                                                                       \
    X(double, optim_grad_sumsq, (const OptimTensor *tensors, int count), (tensors, count))    \
    X(void, optim_step,                                                                       \
      (const OptimConfig *cfg, const OptimTensor *tensors, int count, float lr, long step,    \
       float grad_scale),                                                                     \
      (cfg, tensors, count, lr, step, grad_scale))

#endif
