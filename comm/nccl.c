/*
 * The NCCL backend: device buffers, one CUDA stream per communicator.
 *
 * - Bootstrap: rank 0 makes the NCCL unique id and broadcasts it over a host
 *   communicator (MPI, or the local world of one process); sub-communicators
 *   come from ncclCommSplit.
 * - Blocking operations return when their result is in device memory. The
 *   caller must have finished writing the buffers they read (for example
 *   cuda_kernels_sync()): this stream does not wait for other streams.
 * - NCCL runs the operations of a communicator in the order they are issued,
 *   and a send does not complete until its receive is posted. MPI codes rely
 *   on isend/irecv progressing by themselves (two ranks that each isend to the
 *   other, then recv, do not deadlock). To keep that, isend and irecv are
 *   posted lazily: at the communicator's next call, all pending ones together
 *   in one NCCL group, joined by that call's own send or recv. comm_test()
 *   and comm_wait() count as calls.
 * - Tags are not used: messages between two ranks match in posting order.
 * - Errors: every call checks NCCL's result, the communicator's asynchronous
 *   error while it waits (a dead peer fails the wait instead of hanging it
 *   when NCCL detects it) and CUDA's errors.
 */
#include "backend.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

static const CommOps nccl_ops;

typedef struct {
    bool send;
    void *buffer;
    size_t count;
    CommType type;
    int peer;
} PointToPoint;

typedef struct {
    PointToPoint op;
    bool failed;       /* posting it failed: waiting on it must not succeed */
    cudaEvent_t event; /* recorded after the op once posted */
} NcclRequest;

typedef struct {
    ncclComm_t nccl;
    int device;          /* the GPU the communicator was made on */
    cudaStream_t stream; /* every operation of this communicator */
    cudaEvent_t done;    /* what blocking operations wait for */
    float *barrier_word; /* device memory reduced by comm_barrier */
    NcclRequest **pending;
    int pending_count, pending_capacity;
} NcclComm;

static NcclComm *impl_of(const Comm *comm)
{
    return comm->impl;
}

static ncclDataType_t nccl_type(CommType type)
{
    switch (type) {
    case COMM_F32: return ncclFloat32;
    case COMM_F64: return ncclFloat64;
    case COMM_I64: return ncclInt64;
    case COMM_BYTE: return ncclUint8;
    }
    return ncclUint8;
}

static int nccl_result(Comm *comm, ncclResult_t code, const char *what)
{
    if (code == ncclSuccess)
        return 0;
    const char *detail = impl_of(comm) ? ncclGetLastError(impl_of(comm)->nccl) : "";
    return comm_break(comm, "%s failed on rank %d of %d: %s%s%s", what, comm->rank, comm->size,
                      ncclGetErrorString(code), *detail ? ": " : "", detail);
}

static int cuda_result(Comm *comm, cudaError_t code, const char *what)
{
    if (code == cudaSuccess)
        return 0;
    (void)cudaGetLastError();
    return comm_fail(comm, "%s failed on rank %d of %d: CUDA %s", what, comm->rank, comm->size,
                     cudaGetErrorString(code));
}

/* The current device is per thread: the sidecar's thread starts on device 0. */
static int enter(Comm *comm, const char *what)
{
    return cuda_result(comm, cudaSetDevice(impl_of(comm)->device), what);
}

/* Waits for `event` while watching for an NCCL error (a peer gone). */
static int wait_event(Comm *comm, cudaEvent_t event, const char *what)
{
    for (;;) {
        cudaError_t code = cudaEventQuery(event);
        if (code == cudaSuccess)
            return 0;
        if (code != cudaErrorNotReady)
            return cuda_result(comm, code, what);
        ncclResult_t async = ncclSuccess;
        if (nccl_result(comm, ncclCommGetAsyncError(impl_of(comm)->nccl, &async), what) ||
            nccl_result(comm, async, what))
            return -1;
        sched_yield();
    }
}

/* Ends a blocking operation: waits until the stream has done it. */
static int finish(Comm *comm, const char *what)
{
    NcclComm *c = impl_of(comm);
    if (cuda_result(comm, cudaEventRecord(c->done, c->stream), what))
        return -1;
    return wait_event(comm, c->done, what);
}

static ncclResult_t post_p2p(NcclComm *c, const PointToPoint *op)
{
    if (op->send)
        return ncclSend(op->buffer, op->count, nccl_type(op->type), op->peer, c->nccl, c->stream);
    return ncclRecv(op->buffer, op->count, nccl_type(op->type), op->peer, c->nccl, c->stream);
}

/* Posts the pending isend/irecv, and `extra` (may be NULL), in one group. */
static int flush(Comm *comm, const PointToPoint *extra, const char *what)
{
    NcclComm *c = impl_of(comm);
    if (c->pending_count == 0 && !extra)
        return 0;
    ncclResult_t code = ncclGroupStart();
    for (int i = 0; i < c->pending_count && code == ncclSuccess; i++)
        code = post_p2p(c, &c->pending[i]->op);
    if (extra && code == ncclSuccess)
        code = post_p2p(c, extra);
    ncclResult_t end = ncclGroupEnd();
    int status = nccl_result(comm, code, what) || nccl_result(comm, end, what) ? -1 : 0;
    for (int i = 0; i < c->pending_count; i++) {
        NcclRequest *r = c->pending[i];
        if (status == 0)
            status = cuda_result(comm, cudaEventRecord(r->event, c->stream), what);
        r->failed = status != 0;
    }
    c->pending_count = 0;
    return status;
}

/* Every operation starts here: the right device, pending p2p posted first. */
static int begin(Comm *comm, const char *what)
{
    return enter(comm, what) || flush(comm, NULL, what) ? -1 : 0;
}

// ----------------------------------------------------------------------------
// construction

static void destroy_impl(NcclComm *c, bool broken)
{
    if (!c)
        return;
    if (c->nccl) {
        if (broken) {
            ncclCommAbort(c->nccl);
        } else {
            ncclCommFinalize(c->nccl);
            ncclCommDestroy(c->nccl);
        }
    }
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    cudaFree(c->barrier_word);
    if (c->done)
        cudaEventDestroy(c->done);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c->pending);
    free(c);
}

/* A communicator's CUDA side, on the calling thread's current device. */
static NcclComm *new_impl(char *err, size_t err_len)
{
    NcclComm *c = calloc(1, sizeof(NcclComm));
    if (!c) {
        snprintf(err, err_len, "out of memory for an NCCL communicator");
        return NULL;
    }
    cudaError_t code = cudaGetDevice(&c->device);
    if (code == cudaSuccess)
        code = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (code == cudaSuccess)
        code = cudaEventCreateWithFlags(&c->done, cudaEventDisableTiming);
    if (code == cudaSuccess)
        code = cudaMalloc((void **)&c->barrier_word, sizeof(float));
    if (code == cudaSuccess)
        return c;
    snprintf(err, err_len, "preparing an NCCL communicator: CUDA %s", cudaGetErrorString(code));
    destroy_impl(c, false);
    return NULL;
}

static Comm *wrap(NcclComm *c, char *err, size_t err_len)
{
    Comm *comm = calloc(1, sizeof(Comm));
    if (!comm) {
        snprintf(err, err_len, "out of memory for an NCCL communicator");
        destroy_impl(c, false);
        return NULL;
    }
    ncclCommUserRank(c->nccl, &comm->rank);
    ncclCommCount(c->nccl, &comm->size);
    comm->ops = &nccl_ops;
    comm->impl = c;
    return comm;
}

Comm *comm_nccl_from_mpi(Comm *mpi_comm, char *err, size_t err_len)
{
    /* Rank 0 sends whether it has an id at all, so that every rank fails
     * together instead of waiting in ncclCommInitRank for rank 0. */
    struct {
        int ok;
        ncclUniqueId id;
    } boot = {0};
    ncclResult_t code = ncclSuccess;
    if (comm_rank(mpi_comm) == 0) {
        code = ncclGetUniqueId(&boot.id);
        boot.ok = code == ncclSuccess;
    }
    if (comm_broadcast(mpi_comm, &boot, sizeof(boot), COMM_BYTE, 0)) {
        snprintf(err, err_len, "broadcasting the NCCL id: %s", comm_error(mpi_comm));
        return NULL;
    }
    if (!boot.ok) {
        snprintf(err, err_len, "rank 0 could not make an NCCL id%s%s",
                 code != ncclSuccess ? ": " : "",
                 code != ncclSuccess ? ncclGetErrorString(code) : "");
        return NULL;
    }
    NcclComm *c = new_impl(err, err_len);
    if (!c)
        return NULL;
    code = ncclCommInitRank(&c->nccl, comm_size(mpi_comm), boot.id, comm_rank(mpi_comm));
    if (code != ncclSuccess) {
        snprintf(err, err_len, "ncclCommInitRank failed on rank %d of %d: %s: %s",
                 comm_rank(mpi_comm), comm_size(mpi_comm), ncclGetErrorString(code),
                 ncclGetLastError(NULL));
        c->nccl = NULL;
        destroy_impl(c, false);
        return NULL;
    }
    return wrap(c, err, err_len);
}

static Comm *nccl_split(Comm *parent, int color, int key)
{
    if (begin(parent, "ncclCommSplit"))
        return NULL;
    char err[sizeof(parent->error)];
    NcclComm *c = new_impl(err, sizeof(err));
    if (!c) {
        comm_fail(parent, "%s", err);
        return NULL;
    }
    if (nccl_result(parent, ncclCommSplit(impl_of(parent)->nccl, color, key, &c->nccl, NULL),
                    "ncclCommSplit")) {
        c->nccl = NULL;
        destroy_impl(c, false);
        return NULL;
    }
    Comm *child = wrap(c, err, sizeof(err));
    if (!child)
        comm_fail(parent, "%s", err);
    return child;
}

static void nccl_free(Comm *comm)
{
    NcclComm *c = impl_of(comm);
    ncclResult_t async = ncclSuccess;
    bool ok = enter(comm, "freeing") == 0 && flush(comm, NULL, "freeing") == 0 &&
              ncclCommGetAsyncError(c->nccl, &async) == ncclSuccess && async == ncclSuccess;
    /* A broken communicator is aborted: finalizing it could wait forever. */
    destroy_impl(c, !ok);
    free(comm);
}

// ----------------------------------------------------------------------------
// blocking operations

static int nccl_allreduce(Comm *comm, void *buffer, size_t count, CommType type)
{
    const char *what = "ncclAllReduce";
    NcclComm *c = impl_of(comm);
    if (begin(comm, what) ||
        nccl_result(comm, ncclAllReduce(buffer, buffer, count, nccl_type(type), ncclSum, c->nccl,
                                        c->stream),
                    what))
        return -1;
    return finish(comm, what);
}

static int nccl_reduce_scatter(Comm *comm, const void *send, void *recv, size_t recv_count,
                               CommType type)
{
    const char *what = "ncclReduceScatter";
    NcclComm *c = impl_of(comm);
    if (begin(comm, what) ||
        nccl_result(comm, ncclReduceScatter(send, recv, recv_count, nccl_type(type), ncclSum,
                                            c->nccl, c->stream),
                    what))
        return -1;
    return finish(comm, what);
}

static int nccl_allgather(Comm *comm, const void *send, void *recv, size_t send_count,
                          CommType type)
{
    const char *what = "ncclAllGather";
    NcclComm *c = impl_of(comm);
    if (begin(comm, what) ||
        nccl_result(comm, ncclAllGather(send, recv, send_count, nccl_type(type), c->nccl,
                                        c->stream),
                    what))
        return -1;
    return finish(comm, what);
}

/* NCCL has no all-to-all: one send and one receive per peer, grouped. */
static int nccl_alltoall(Comm *comm, const void *send, void *recv, size_t count, CommType type)
{
    const char *what = "all-to-all (grouped ncclSend/ncclRecv)";
    NcclComm *c = impl_of(comm);
    if (begin(comm, what))
        return -1;
    size_t bytes = count * comm_type_size(type);
    ncclResult_t code = ncclGroupStart();
    for (int peer = 0; peer < comm->size && code == ncclSuccess; peer++) {
        code = ncclSend((const char *)send + peer * bytes, count, nccl_type(type), peer, c->nccl,
                        c->stream);
        if (code == ncclSuccess)
            code = ncclRecv((char *)recv + peer * bytes, count, nccl_type(type), peer, c->nccl,
                            c->stream);
    }
    ncclResult_t end = ncclGroupEnd();
    if (nccl_result(comm, code, what) || nccl_result(comm, end, what))
        return -1;
    return finish(comm, what);
}

static int nccl_broadcast(Comm *comm, void *buffer, size_t count, CommType type, int root)
{
    const char *what = "ncclBroadcast";
    NcclComm *c = impl_of(comm);
    if (begin(comm, what) ||
        nccl_result(comm, ncclBroadcast(buffer, buffer, count, nccl_type(type), root, c->nccl,
                                        c->stream),
                    what))
        return -1;
    return finish(comm, what);
}

/* A blocking send or recv joins the pending isend/irecv in one group. */
static int point_to_point(Comm *comm, const PointToPoint *op, const char *what)
{
    if (enter(comm, what) || flush(comm, op, what))
        return -1;
    return finish(comm, what);
}

static int nccl_send(Comm *comm, const void *buffer, size_t count, CommType type, int peer,
                     int tag)
{
    (void)tag;
    PointToPoint op = {true, (void *)buffer, count, type, peer};
    return point_to_point(comm, &op, "ncclSend");
}

static int nccl_recv(Comm *comm, void *buffer, size_t count, CommType type, int peer, int tag)
{
    (void)tag;
    PointToPoint op = {false, buffer, count, type, peer};
    return point_to_point(comm, &op, "ncclRecv");
}

static int nccl_barrier(Comm *comm)
{
    return nccl_allreduce(comm, impl_of(comm)->barrier_word, 1, COMM_F32);
}

// ----------------------------------------------------------------------------
// non-blocking operations

static NcclRequest *new_request(Comm *comm, const char *what)
{
    NcclRequest *r = calloc(1, sizeof(NcclRequest));
    if (!r) {
        comm_fail(comm, "%s: out of memory for a request", what);
        return NULL;
    }
    if (cuda_result(comm, cudaEventCreateWithFlags(&r->event, cudaEventDisableTiming), what)) {
        free(r);
        return NULL;
    }
    return r;
}

static void free_request(NcclRequest *r)
{
    cudaEventDestroy(r->event);
    free(r);
}

static CommRequest *wrap_request(Comm *comm, NcclRequest *r)
{
    CommRequest *request = calloc(1, sizeof(CommRequest));
    if (!request) {
        comm_fail(comm, "out of memory for a request");
        return NULL;
    }
    request->comm = comm;
    request->impl = r;
    return request;
}

/* The request of a collective just queued on the stream (`queued`: its
 * ncclResult): an event after it. */
static CommRequest *queued_request(Comm *comm, NcclRequest *r, ncclResult_t queued,
                                   const char *what)
{
    NcclComm *c = impl_of(comm);
    if (nccl_result(comm, queued, what) ||
        cuda_result(comm, cudaEventRecord(r->event, c->stream), what)) {
        free_request(r);
        return NULL;
    }
    CommRequest *request = wrap_request(comm, r);
    if (!request)
        free_request(r);
    return request;
}

static CommRequest *nccl_iallreduce(Comm *comm, void *buffer, size_t count, CommType type)
{
    const char *what = "ncclAllReduce";
    NcclComm *c = impl_of(comm);
    NcclRequest *r = begin(comm, what) ? NULL : new_request(comm, what);
    if (!r)
        return NULL;
    return queued_request(comm, r,
                          ncclAllReduce(buffer, buffer, count, nccl_type(type), ncclSum,
                                        c->nccl, c->stream),
                          what);
}

static CommRequest *nccl_ireduce_scatter(Comm *comm, const void *send, void *recv,
                                         size_t recv_count, CommType type)
{
    const char *what = "ncclReduceScatter";
    NcclComm *c = impl_of(comm);
    NcclRequest *r = begin(comm, what) ? NULL : new_request(comm, what);
    if (!r)
        return NULL;
    return queued_request(comm, r,
                          ncclReduceScatter(send, recv, recv_count, nccl_type(type), ncclSum,
                                            c->nccl, c->stream),
                          what);
}

/* Queues an isend/irecv until the communicator's next call (see the top). */
static CommRequest *defer(Comm *comm, const PointToPoint *op, const char *what)
{
    NcclComm *c = impl_of(comm);
    if (c->pending_count == c->pending_capacity) {
        int capacity = c->pending_capacity ? 2 * c->pending_capacity : 8;
        NcclRequest **grown = realloc(c->pending, (size_t)capacity * sizeof(*grown));
        if (!grown) {
            comm_fail(comm, "%s: out of memory for a request", what);
            return NULL;
        }
        c->pending = grown;
        c->pending_capacity = capacity;
    }
    NcclRequest *r = new_request(comm, what);
    CommRequest *request = r ? wrap_request(comm, r) : NULL;
    if (!request) {
        if (r)
            free_request(r);
        return NULL;
    }
    r->op = *op;
    c->pending[c->pending_count++] = r;
    return request;
}

static CommRequest *nccl_isend(Comm *comm, const void *buffer, size_t count, CommType type,
                               int peer, int tag)
{
    (void)tag;
    PointToPoint op = {true, (void *)buffer, count, type, peer};
    return defer(comm, &op, "ncclSend");
}

static CommRequest *nccl_irecv(Comm *comm, void *buffer, size_t count, CommType type, int peer,
                               int tag)
{
    (void)tag;
    PointToPoint op = {false, buffer, count, type, peer};
    return defer(comm, &op, "ncclRecv");
}

static int not_posted(Comm *comm, const char *what)
{
    return comm_fail(comm, "%s: this isend/irecv failed when it was posted, on rank %d of %d "
                     "(the call that posted it reported why)", what, comm->rank, comm->size);
}

static int nccl_wait(CommRequest *request)
{
    Comm *comm = request->comm;
    NcclRequest *r = request->impl;
    int status = begin(comm, "comm_wait");
    if (status == 0 && r->failed)
        status = not_posted(comm, "comm_wait");
    if (status == 0)
        status = wait_event(comm, r->event, "comm_wait");
    free_request(r);
    free(request);
    return status;
}

static int nccl_test(CommRequest *request, bool *done)
{
    Comm *comm = request->comm;
    NcclRequest *r = request->impl;
    *done = false;
    if (begin(comm, "comm_test"))
        return -1;
    if (r->failed)
        return not_posted(comm, "comm_test");
    cudaError_t code = cudaEventQuery(r->event);
    if (code == cudaErrorNotReady) {
        ncclResult_t async = ncclSuccess;
        ncclCommGetAsyncError(impl_of(comm)->nccl, &async);
        return nccl_result(comm, async, "comm_test");
    }
    *done = code == cudaSuccess;
    return cuda_result(comm, code, "comm_test");
}

static const CommOps nccl_ops = {
    .name = "nccl",
    .split = nccl_split,
    .free = nccl_free,
    .allreduce = nccl_allreduce,
    .reduce_scatter = nccl_reduce_scatter,
    .allgather = nccl_allgather,
    .alltoall = nccl_alltoall,
    .broadcast = nccl_broadcast,
    .send = nccl_send,
    .recv = nccl_recv,
    .barrier = nccl_barrier,
    .iallreduce = nccl_iallreduce,
    .ireduce_scatter = nccl_ireduce_scatter,
    .isend = nccl_isend,
    .irecv = nccl_irecv,
    .wait = nccl_wait,
    .test = nccl_test,
};
