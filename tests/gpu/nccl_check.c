/*
 * nccl_check: the NCCL communicator (comm/nccl.c) on device buffers, one GPU
 * per rank (rank r uses device r % count). Under mpirun it checks the
 * collectives across ranks; run alone it checks a world of one.
 *
 * Every check fills device buffers with small integers (sums are exact in
 * fp32), runs one operation and compares with what each rank must hold;
 * ranks then agree on the verdict and rank 0 prints one line per check.
 * Exit 0 when all pass, 1 when any fails, 77 without a CUDA device.
 */
#include "comm.h"
#include "cuda_kernels.h"

#include <stdio.h>
#include <stdlib.h>

#define COUNT 1003 /* elements per rank and message: not a round number */

static Comm *world, *nccl;
static int rank, size, failures;
static CudaContext *gpu; /* made by main */

static void die(const char *what, const char *why)
{
    fprintf(stderr, "nccl_check rank %d: %s: %s\n", rank, what, why);
    exit(1);
}

static float *device_alloc(size_t n)
{
    float *d = cuda_alloc(gpu, n * sizeof(float));
    if (!d)
        die("cuda_alloc", cuda_error(gpu));
    return d;
}

static void upload(float *device, const float *host, size_t n)
{
    if (cuda_memcpy_h2d(gpu, device, host, n * sizeof(float)))
        die("cuda_memcpy_h2d", cuda_error(gpu));
}

static float *download(const float *device, size_t n)
{
    float *host = malloc(n * sizeof(float));
    if (!host || cuda_memcpy_d2h(gpu, host, device, n * sizeof(float)))
        die("cuda_memcpy_d2h", cuda_error(gpu));
    return host;
}

/* A device buffer of n values fill(i). */
static float *device_pattern(size_t n, float (*fill)(size_t i))
{
    float *host = malloc(n * sizeof(float));
    if (!host)
        die("malloc", "out of memory");
    for (size_t i = 0; i < n; i++)
        host[i] = fill(i);
    float *device = device_alloc(n);
    upload(device, host, n);
    free(host);
    return device;
}

/* Compares the device buffer with expect(i), agrees over all ranks, prints. */
static void verdict(const char *what, int status, const float *device, size_t n,
                    float (*expect)(size_t i))
{
    long long bad = status != 0;
    if (status != 0)
        fprintf(stderr, "rank %d: %s: %s\n", rank, what, comm_error(nccl));
    else if (device) {
        float *got = download(device, n);
        for (size_t i = 0; i < n; i++)
            bad += got[i] != expect(i);
        free(got);
    }
    if (comm_allreduce(world, &bad, 1, COMM_I64))
        die("agreeing on a verdict", comm_error(world));
    failures += bad != 0;
    if (rank == 0)
        printf("nccl %-34s %s (%d rank%s)\n", what, bad ? "FAIL" : "ok  ", size,
               size == 1 ? "" : "s");
}

static int peer_right(void) { return (rank + 1) % size; }
static int peer_left(void) { return (rank + size - 1) % size; }

// ----------------------------------------------------------------------------
// patterns: element i of a buffer before and after an operation, on this rank

static float index_value(size_t i) { return (float)i; }
static float minus_one(size_t i) { (void)i; return -1.0f; }
static float rank_plus_one(size_t i) { (void)i; return (float)(rank + 1); }
static float sum_of_ranks(size_t i) { (void)i; return (float)(size * (size + 1) / 2); }
/* reduce-scatter: element i of the whole vector is (i % 7) * (rank + 1) */
static float scatter_input(size_t i) { return (float)(i % 7) * (float)(rank + 1); }
static float scatter_output(size_t i)
{
    return (float)((rank * COUNT + i) % 7) * (float)(size * (size + 1) / 2);
}
/* allgather, and the ring's messages: rank r holds r * COUNT + i */
static float rank_block(size_t i) { return (float)(rank * COUNT + i); }
static float left_block(size_t i) { return (float)(peer_left() * COUNT + i); }
/* all-to-all: block p from rank r holds r * 10 + p, element i adds i * 100 */
static float alltoall_input(size_t i) { return (float)(rank * 10 + i / COUNT + i % COUNT * 100); }
static float alltoall_output(size_t i)
{
    return (float)(i / COUNT * 10 + rank + i % COUNT * 100);
}
static float broadcast_input(size_t i) { return rank == size - 1 ? (float)i : -1.0f; }
/* split by parity: the sum of rank + 1 over the ranks of this rank's parity */
static float parity_sum(size_t i)
{
    (void)i;
    int sum = 0;
    for (int r = rank % 2; r < size; r += 2)
        sum += r + 1;
    return (float)sum;
}

// ----------------------------------------------------------------------------
// checks

static void check_collectives(void)
{
    float *x = device_pattern(COUNT, rank_plus_one);
    verdict("allreduce", comm_allreduce(nccl, x, COUNT, COMM_F32), x, COUNT, sum_of_ranks);

    float *whole = device_pattern((size_t)COUNT * size, scatter_input), *part = device_alloc(COUNT);
    verdict("reduce_scatter", comm_reduce_scatter(nccl, whole, part, COUNT, COMM_F32), part, COUNT,
            scatter_output);

    float *mine = device_pattern(COUNT, rank_block);
    verdict("allgather", comm_allgather(nccl, mine, whole, COUNT, COMM_F32), whole,
            (size_t)COUNT * size, index_value);

    float *send = device_pattern((size_t)COUNT * size, alltoall_input);
    float *recv = device_alloc((size_t)COUNT * size);
    verdict("alltoall (grouped send/recv)", comm_alltoall(nccl, send, recv, COUNT, COMM_F32), recv,
            (size_t)COUNT * size, alltoall_output);

    float *b = device_pattern(COUNT, broadcast_input);
    verdict("broadcast from the last rank", comm_broadcast(nccl, b, COUNT, COMM_F32, size - 1), b,
            COUNT, index_value);
    verdict("barrier", comm_barrier(nccl), NULL, 0, NULL);
    cuda_free(x);
    cuda_free(whole);
    cuda_free(part);
    cuda_free(mine);
    cuda_free(send);
    cuda_free(recv);
    cuda_free(b);
}

/* Each rank isends right, then does a blocking recv from the left: the
 * pipeline's pattern, which deadlocks if the isend is posted on its own. */
static void check_isend_then_recv(const float *out)
{
    float *in = device_pattern(COUNT, minus_one);
    CommRequest *sent = comm_isend(nccl, out, COUNT, COMM_F32, peer_right(), 1);
    int status = sent ? comm_recv(nccl, in, COUNT, COMM_F32, peer_left(), 1) : -1;
    if (sent && comm_wait(sent) && status == 0)
        status = -1;
    verdict("isend right + blocking recv left", status, in, COUNT, left_block);
    cuda_free(in);
}

static void check_irecv_isend(const float *out)
{
    float *in = device_pattern(COUNT, minus_one);
    CommRequest *r = comm_irecv(nccl, in, COUNT, COMM_F32, peer_left(), 2);
    CommRequest *s = r ? comm_isend(nccl, out, COUNT, COMM_F32, peer_right(), 2) : NULL;
    int status = r && s ? 0 : -1;
    if (s && comm_wait(s))
        status = -1;
    if (r && comm_wait(r))
        status = -1;
    verdict("irecv left + isend right, wait both", status, in, COUNT, left_block);
    cuda_free(in);
}

/* Blocking send and recv in an order that completes: even ranks send first,
 * odd ranks receive first (alone, the send to itself must be an isend). */
static void check_blocking_send_recv(const float *out)
{
    float *in = device_pattern(COUNT, minus_one);
    int status = -1;
    if (size == 1) {
        CommRequest *self = comm_isend(nccl, out, COUNT, COMM_F32, 0, 3);
        if (self && comm_recv(nccl, in, COUNT, COMM_F32, 0, 3) == 0 && comm_wait(self) == 0)
            status = 0;
    } else if (rank % 2 == 0) {
        status = comm_send(nccl, out, COUNT, COMM_F32, peer_right(), 3) ||
                 comm_recv(nccl, in, COUNT, COMM_F32, peer_left(), 3);
    } else {
        status = comm_recv(nccl, in, COUNT, COMM_F32, peer_left(), 3) ||
                 comm_send(nccl, out, COUNT, COMM_F32, peer_right(), 3);
    }
    verdict("blocking send/recv", status, in, COUNT, left_block);
    cuda_free(in);
}

static void check_point_to_point(void)
{
    float *out = device_pattern(COUNT, rank_block);
    check_isend_then_recv(out);
    check_irecv_isend(out);
    check_blocking_send_recv(out);
    cuda_free(out);
}

static void check_nonblocking_allreduce(void)
{
    float *x = device_pattern(COUNT, rank_plus_one);
    CommRequest *request = comm_iallreduce(nccl, x, COUNT, COMM_F32);
    bool done = false;
    int status = request ? 0 : -1;
    while (request && !done && status == 0)
        status = comm_test(request, &done);
    if (request && comm_wait(request) && status == 0)
        status = -1;
    verdict("iallreduce + test + wait", status, x, COUNT, sum_of_ranks);
    cuda_free(x);
}

static void check_split(void)
{
    Comm *half = comm_split(nccl, rank % 2, rank);
    float *x = device_pattern(COUNT, rank_plus_one);
    Comm *saved = nccl;
    int status = -1;
    if (half) {
        nccl = half; /* verdict() reports the child's error */
        status = comm_allreduce(half, x, COUNT, COMM_F32);
    }
    verdict("split by parity + allreduce", status, x, COUNT, parity_sum);
    nccl = saved;
    comm_free(half);
    cuda_free(x);
}

int main(int argc, char **argv)
{
    char err[512];
    world = comm_world_init(&argc, &argv, err, sizeof(err));
    if (!world)
        die("starting the world", err);
    rank = comm_rank(world);
    size = comm_size(world);
    int devices = cuda_device_count(err, sizeof(err));
    if (devices == 0) {
        if (rank == 0)
            printf("no CUDA device: %s\n", err);
        comm_world_finalize(world);
        return 77;
    }
    gpu = cuda_kernels_init(rank % devices, err, sizeof(err));
    if (!gpu)
        die("cuda_kernels_init", err);
    nccl = comm_nccl_from_mpi(world, err, sizeof(err));
    if (!nccl)
        die("comm_nccl_from_mpi", err);
    check_collectives();
    check_point_to_point();
    check_nonblocking_allreduce();
    check_split();
    comm_free(nccl);
    cuda_kernels_shutdown(gpu);
    comm_world_finalize(world);
    return failures ? 1 : 0;
}
