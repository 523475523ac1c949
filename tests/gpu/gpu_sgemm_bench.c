/*
 * gpu_sgemm_bench: cuBLAS sgemm throughput (cuda_matmul_forward, no bias) at
 * the matrix-product shapes of GPT-2 124M with N = B*T = 8192 rows and C = 768:
 * qkv, attention projection, MLP fc and fc projection, and the LM head over
 * the padded vocabulary of 50304. Fp32, then TF32 tensor cores. Prints one
 * line per shape and one for all five together (total flops / total time),
 * in GFLOP/s. Exit 77 without a GPU.
 */
#include "cuda_kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ROWS 8192
#define WARMUP 2
#define ITERATIONS 10

typedef struct {
    const char *name;
    int in, out;
} Shape;

static CudaContext *gpu; /* made by main */

static const Shape shapes[] = {
    {"qkv", 768, 3 * 768},      {"attn proj", 768, 768}, {"fc", 768, 4 * 768},
    {"fc proj", 4 * 768, 768}, {"lm head", 768, 50304},
};
enum { SHAPES = sizeof(shapes) / sizeof(shapes[0]) };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "gpu_sgemm_bench: %s: %s\n", what, cuda_error(gpu));
    exit(1);
}

/* Device memory of n floats, filled with small values (never NaN or denormal). */
static float *device_values(size_t n)
{
    float *host = malloc(n * sizeof(float)), *device = cuda_alloc(gpu, n * sizeof(float));
    if (!host || !device)
        die("allocating");
    for (size_t i = 0; i < n; i++)
        host[i] = (float)(i % 17) / 17.0f - 0.5f;
    if (cuda_memcpy_h2d(gpu, device, host, n * sizeof(float)))
        die("cuda_memcpy_h2d");
    free(host);
    return device;
}

static void run(const char *mode, float *inp, float *weight, float *out)
{
    double all_flops = 0.0, all_seconds = 0.0;
    for (int k = 0; k < SHAPES; k++) {
        const Shape *s = &shapes[k];
        for (int i = 0; i < WARMUP; i++)
            if (cuda_matmul_forward(gpu, out, inp, weight, NULL, ROWS, s->in, s->out))
                die(s->name);
        if (cuda_kernels_sync(gpu))
            die("warm-up");
        double start = now();
        for (int i = 0; i < ITERATIONS; i++)
            if (cuda_matmul_forward(gpu, out, inp, weight, NULL, ROWS, s->in, s->out))
                die(s->name);
        if (cuda_kernels_sync(gpu))
            die(s->name);
        double seconds = (now() - start) / ITERATIONS;
        double flops = 2.0 * ROWS * s->in * s->out;
        all_flops += flops;
        all_seconds += seconds;
        printf("sgemm %-4s %-9s %5d x %4d -> %5d  %8.3f ms  %9.0f GFLOP/s\n", mode, s->name, ROWS,
               s->in, s->out, 1e3 * seconds, flops / seconds / 1e9);
    }
    printf("sgemm %-4s %-9s GPT-2 124M shapes, N=%d     %8.3f ms  %9.0f GFLOP/s\n", mode, "all",
           ROWS, 1e3 * all_seconds, all_flops / all_seconds / 1e9);
}

int main(void)
{
    char err[512];
    if (cuda_device_count(err, sizeof(err)) == 0) {
        printf("no CUDA device: %s\n", err);
        return 77;
    }
    gpu = cuda_kernels_init(0, err, sizeof(err));
    if (!gpu) {
        fprintf(stderr, "gpu_sgemm_bench: %s\n", err);
        return 1;
    }
    size_t inp_n = 0, weight_n = 0, out_n = 0; /* the largest of each over the shapes */
    for (int k = 0; k < SHAPES; k++) {
        size_t in = (size_t)shapes[k].in, out = (size_t)shapes[k].out;
        inp_n = ROWS * in > inp_n ? ROWS * in : inp_n;
        weight_n = in * out > weight_n ? in * out : weight_n;
        out_n = ROWS * out > out_n ? ROWS * out : out_n;
    }
    float *inp = device_values(inp_n), *weight = device_values(weight_n);
    float *out = device_values(out_n);
    run("fp32", inp, weight, out);
    if (cuda_set_tf32(gpu, true))
        die("cuda_set_tf32");
    run("tf32", inp, weight, out);
    cuda_free(inp);
    cuda_free(weight);
    cuda_free(out);
    cuda_kernels_shutdown(gpu);
    return 0;
}
