/* Plain cblas_sgemm throughput, the reference line of scripts/bench-cpu.
 *
 * usage: bench_sgemm THREADS REPS M N K [M N K ...]
 *
 * For each M N K: C[M,N] = A[M,K] @ B[N,K]^T (row-major, B transposed, the
 * shape of a linear layer's forward), with OpenBLAS's own threading set to
 * THREADS. One warm-up call, then REPS timed calls; prints one line
 *   sgemm M N K best_gflops median_gflops
 * (2*M*N*K flops per call). Best-of-REPS is the figure the bench reports; the
 * median shows how noisy the machine was.
 *
 * Built by scripts/bench-cpu itself:
 *   cc -O2 -march=native bench_sgemm.c -I/usr/include/x86_64-linux-gnu/openblas-pthread -lopenblas
 */
#define _POSIX_C_SOURCE 199309L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 6 || (argc - 3) % 3 != 0) {
        fprintf(stderr, "usage: %s THREADS REPS M N K [M N K ...]\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[1]), reps = atoi(argv[2]);
    if (threads < 1 || reps < 1) {
        fprintf(stderr, "bench_sgemm: THREADS and REPS must be positive\n");
        return 2;
    }
    openblas_set_num_threads(threads);
    printf("core %s threads %d\n", openblas_get_corename(), threads);
    for (int a = 3; a + 2 < argc; a += 3) {
        int M = atoi(argv[a]), N = atoi(argv[a + 1]), K = atoi(argv[a + 2]);
        float *A = malloc(sizeof(float) * (size_t)M * K);
        float *B = malloc(sizeof(float) * (size_t)N * K);
        float *C = malloc(sizeof(float) * (size_t)M * N);
        double *gf = malloc(sizeof(double) * (size_t)reps);
        if (!A || !B || !C || !gf) {
            fprintf(stderr, "bench_sgemm: out of memory\n");
            return 1;
        }
        for (size_t i = 0; i < (size_t)M * K; i++)
            A[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
        for (size_t i = 0; i < (size_t)N * K; i++)
            B[i] = (float)((i * 104729) % 1000) * 1e-3f - 0.5f;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K, 0.0f,
                    C, N);
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K,
                        0.0f, C, N);
            gf[r] = 2.0 * M * N * K / (now() - t0) * 1e-9;
        }
        qsort(gf, (size_t)reps, sizeof(double), cmp);
        printf("sgemm %d %d %d %.2f %.2f\n", M, N, K, gf[reps - 1], gf[reps / 2]);
        free(A);
        free(B);
        free(C);
        free(gf);
    }
    return 0;
}
