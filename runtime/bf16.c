/* bf16 products on the CPU through oneDNN's matmul (contract in bf16.h). */
#include "bf16.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

/* Branch-free, so that GCC vectorizes the loops that call it. */
static inline uint16_t bf16_bits(float x)
{
    uint32_t bits;
    memcpy(&bits, &x, sizeof(bits));
    uint32_t nearest = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16; // ties to even
    uint32_t quiet_nan = (bits >> 16) | 0x40u;                      // NaN stays a NaN
    return (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : nearest);
}

void bf16_pack(uint16_t *dst, const float *X, size_t ld, size_t rows, size_t cols)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            dst[r * cols + c] = bf16_bits(X[r * ld + c]);
}

void bf16_round_rows(float *dst, const float *X, size_t ld, size_t rows, size_t cols)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) {
            uint32_t bits = (uint32_t)bf16_bits(X[r * ld + c]) << 16;
            memcpy(&dst[r * cols + c], &bits, sizeof(bits));
        }
}

#ifdef HAVE_DNNL

/* oneDNN's CPU engine: created once by bf16_open(), thread-safe, never
 * released (it lives as long as the process, as the cuBLAS handle does). */
static dnnl_engine_t engine;

/* A product oneDNN cannot set up (out of memory) in the middle of a step:
 * the kernels' interface cannot report it; stop loudly rather than train on
 * garbage. */
static void fail(const char *what, size_t M, size_t N, size_t K)
{
    fprintf(stderr, "phalanx: bf16 matrix product %zux%zux%zu: %s\n", M, N, K, what);
    abort();
}

int bf16_open(char *err, size_t err_len)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512bf16")) {
        snprintf(err, err_len,
                 "--precision bf16: this CPU has no AVX512-BF16 instructions (bf16 matrix "
                 "products would be emulated, slower than fp32); use --precision fp32, or a "
                 "CPU with AVX512-BF16 (Cooper Lake, Sapphire Rapids, Zen 4 or newer)");
        return -1;
    }
    if (!engine && dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success) {
        snprintf(err, err_len, "--precision bf16: oneDNN could not open its CPU engine");
        return -1;
    }
    return 0;
}

/* rows x cols, row-major with leading dimension ld, or (trans) stored as its
 * transpose: the packed arrays keep the caller's layout, the matmul reads
 * them through strides. */
static dnnl_memory_desc_t matrix_desc(size_t rows, size_t cols, size_t ld, bool trans,
                                      dnnl_data_type_t t)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {(dnnl_dim_t)rows, (dnnl_dim_t)cols};
    dnnl_dims_t strides = {trans ? 1 : (dnnl_dim_t)ld, trans ? (dnnl_dim_t)ld : 1};
    dnnl_memory_desc_init_by_strides(&md, 2, dims, t, strides);
    return md;
}

/* The three operands of C[M,N] = op(A)[M,K] op(B)[K,N], A and B packed. */
typedef struct {
    dnnl_memory_desc_t a, b, c;
} Operands;

static Operands operands(bool trans_a, bool trans_b, size_t M, size_t N, size_t K, size_t lda,
                         size_t ldb, size_t ldc)
{
    return (Operands){matrix_desc(M, K, lda, trans_a, dnnl_bf16),
                      matrix_desc(K, N, ldb, trans_b, dnnl_bf16),
                      matrix_desc(M, N, ldc, false, dnnl_f32)};
}

static dnnl_primitive_t matmul_primitive(const Operands *o, float alpha, float beta)
{
    dnnl_matmul_desc_t desc;
    dnnl_primitive_attr_t attr;
    dnnl_post_ops_t post_ops;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t primitive = NULL;
    dnnl_matmul_desc_init(&desc, &o->a, &o->b, NULL, &o->c);
    dnnl_primitive_attr_create(&attr);
    dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha);
    dnnl_post_ops_create(&post_ops);
    if (beta != 0.0f)
        dnnl_post_ops_append_sum(post_ops, beta);
    dnnl_primitive_attr_set_post_ops(attr, post_ops);
    // oneDNN's primitive cache makes a repeated shape cheap to create
    if (dnnl_primitive_desc_create(&pd, &desc, attr, engine, NULL) == dnnl_success)
        dnnl_primitive_create(&primitive, pd);
    dnnl_primitive_desc_destroy(pd);
    dnnl_post_ops_destroy(post_ops);
    dnnl_primitive_attr_destroy(attr);
    return primitive;
}

static void run_matmul(dnnl_primitive_t primitive, const Operands *o, const uint16_t *a,
                       const uint16_t *b, float *C)
{
    dnnl_memory_t am, bm, cm;
    dnnl_stream_t stream;
    dnnl_memory_create(&am, &o->a, engine, (void *)a);
    dnnl_memory_create(&bm, &o->b, engine, (void *)b);
    dnnl_memory_create(&cm, &o->c, engine, C);
    dnnl_stream_create(&stream, engine, dnnl_stream_default_flags);
    dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}};
    dnnl_primitive_execute(primitive, stream, 3, args);
    dnnl_stream_wait(stream);
    dnnl_stream_destroy(stream);
    dnnl_memory_destroy(am);
    dnnl_memory_destroy(bm);
    dnnl_memory_destroy(cm);
}

void bf16_gemm_packed(bool trans_a, bool trans_b, size_t M, size_t N, size_t K, float alpha,
                      const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, float beta,
                      float *C, size_t ldc)
{
    if (M == 0 || N == 0)
        return;
    Operands o = operands(trans_a, trans_b, M, N, K, lda, ldb, ldc);
    dnnl_primitive_t primitive = matmul_primitive(&o, alpha, beta);
    if (!primitive)
        fail("oneDNN has no matmul for it (out of memory?)", M, N, K);
    run_matmul(primitive, &o, A, B, C);
    dnnl_primitive_destroy(primitive);
}

#else

int bf16_open(char *err, size_t err_len)
{
    snprintf(err, err_len,
             "--precision bf16: this phalanx was built without oneDNN (libdnnl-dev), whose "
             "bf16 matrix products it uses; install it (scripts/install-deps) and rebuild, "
             "or use --precision fp32");
    return -1;
}

/* Not reached: bf16_open() refused, so nothing asks for a bf16 product. */
void bf16_gemm_packed(bool trans_a, bool trans_b, size_t M, size_t N, size_t K, float alpha,
                      const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, float beta,
                      float *C, size_t ldc)
{
    (void)trans_a, (void)trans_b, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda,
        (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
    abort();
}

#endif
