/*
 * The MPI backend (Open MPI, CPU buffers). Every communicator returns errors
 * (MPI_ERRORS_RETURN) instead of aborting, so a failure reaches the caller
 * with MPI's own message.
 */
#include "backend.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static const CommOps mpi_ops;

static MPI_Comm handle(const Comm *comm)
{
    return *(MPI_Comm *)comm->impl;
}

static MPI_Datatype mpi_type(CommType type)
{
    switch (type) {
    case COMM_F32: return MPI_FLOAT;
    case COMM_F64: return MPI_DOUBLE;
    case COMM_I64: return MPI_INT64_T;
    case COMM_BYTE: return MPI_BYTE;
    }
    return MPI_BYTE;
}

/* MPI counts are int: refuse what does not fit rather than truncate. */
static int check_count(Comm *comm, size_t count)
{
    if (count > (size_t)0x7fffffff)
        return comm_fail(comm, "message of %zu elements exceeds MPI's int count", count);
    return 0;
}

static int mpi_result(Comm *comm, int code, const char *what)
{
    if (code == MPI_SUCCESS)
        return 0;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(code, text, &length);
    return comm_break(comm, "%s failed on rank %d of %d: %s", what, comm->rank, comm->size, text);
}

static Comm *wrap(MPI_Comm mpi_comm)
{
    Comm *comm = calloc(1, sizeof(Comm));
    MPI_Comm *impl = malloc(sizeof(MPI_Comm));
    if (!comm || !impl) {
        free(comm);
        free(impl);
        return NULL;
    }
    *impl = mpi_comm;
    MPI_Comm_set_errhandler(mpi_comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(mpi_comm, &comm->rank);
    MPI_Comm_size(mpi_comm, &comm->size);
    comm->ops = &mpi_ops;
    comm->impl = impl;
    return comm;
}

Comm *comm_mpi_world(int *argc, char ***argv, char *err, size_t err_len)
{
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
        snprintf(err, err_len, "MPI_Init_thread failed");
        return NULL;
    }
    if (provided < MPI_THREAD_MULTIPLE) {
        snprintf(err, err_len,
                 "this MPI library gives thread level %d, not MPI_THREAD_MULTIPLE; the "
                 "checkpoint sidecar needs it: use an MPI built with thread support",
                 provided);
        MPI_Finalize();
        return NULL;
    }
    MPI_Comm world;
    MPI_Comm_dup(MPI_COMM_WORLD, &world);
    return wrap(world);
}

void comm_mpi_finalize(void)
{
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized)
        MPI_Finalize();
}

static Comm *mpi_split(Comm *parent, int color, int key)
{
    MPI_Comm child;
    if (mpi_result(parent, MPI_Comm_split(handle(parent), color, key, &child), "MPI_Comm_split"))
        return NULL;
    return wrap(child);
}

static void mpi_free(Comm *comm)
{
    MPI_Comm_free((MPI_Comm *)comm->impl);
    free(comm->impl);
    free(comm);
}

static int mpi_allreduce(Comm *comm, void *buffer, size_t count, CommType type)
{
    if (check_count(comm, count))
        return -1;
    return mpi_result(comm, MPI_Allreduce(MPI_IN_PLACE, buffer, (int)count, mpi_type(type),
                                          MPI_SUM, handle(comm)),
                      "MPI_Allreduce");
}

static int mpi_reduce_scatter(Comm *comm, const void *send, void *recv, size_t recv_count,
                              CommType type)
{
    if (check_count(comm, recv_count * (size_t)comm->size))
        return -1;
    return mpi_result(comm, MPI_Reduce_scatter_block(send, recv, (int)recv_count, mpi_type(type),
                                                     MPI_SUM, handle(comm)),
                      "MPI_Reduce_scatter_block");
}

static int mpi_allgather(Comm *comm, const void *send, void *recv, size_t send_count,
                         CommType type)
{
    if (check_count(comm, send_count * (size_t)comm->size))
        return -1;
    MPI_Datatype t = mpi_type(type);
    return mpi_result(comm, MPI_Allgather(send, (int)send_count, t, recv, (int)send_count, t,
                                          handle(comm)),
                      "MPI_Allgather");
}

static int mpi_alltoall(Comm *comm, const void *send, void *recv, size_t count, CommType type)
{
    if (check_count(comm, count * (size_t)comm->size))
        return -1;
    MPI_Datatype t = mpi_type(type);
    return mpi_result(comm, MPI_Alltoall(send, (int)count, t, recv, (int)count, t, handle(comm)),
                      "MPI_Alltoall");
}

static int mpi_broadcast(Comm *comm, void *buffer, size_t count, CommType type, int root)
{
    if (check_count(comm, count))
        return -1;
    return mpi_result(comm, MPI_Bcast(buffer, (int)count, mpi_type(type), root, handle(comm)),
                      "MPI_Bcast");
}

static int mpi_send(Comm *comm, const void *buffer, size_t count, CommType type, int peer,
                    int tag)
{
    if (check_count(comm, count))
        return -1;
    return mpi_result(comm, MPI_Send(buffer, (int)count, mpi_type(type), peer, tag, handle(comm)),
                      "MPI_Send");
}

static int mpi_recv(Comm *comm, void *buffer, size_t count, CommType type, int peer, int tag)
{
    if (check_count(comm, count))
        return -1;
    return mpi_result(comm, MPI_Recv(buffer, (int)count, mpi_type(type), peer, tag, handle(comm),
                                     MPI_STATUS_IGNORE),
                      "MPI_Recv");
}

static int mpi_barrier(Comm *comm)
{
    return mpi_result(comm, MPI_Barrier(handle(comm)), "MPI_Barrier");
}

// ----------------------------------------------------------------------------
// non-blocking

static CommRequest *new_request(Comm *comm)
{
    CommRequest *request = calloc(1, sizeof(CommRequest));
    MPI_Request *impl = malloc(sizeof(MPI_Request));
    if (!request || !impl) {
        free(request);
        free(impl);
        comm_fail(comm, "out of memory for a request");
        return NULL;
    }
    request->comm = comm;
    request->impl = impl;
    return request;
}

/* Frees the request when MPI refused to start it, recording why. */
static CommRequest *started(CommRequest *request, int code, const char *what)
{
    if (mpi_result(request->comm, code, what) == 0)
        return request;
    free(request->impl);
    free(request);
    return NULL;
}

static CommRequest *mpi_iallreduce(Comm *comm, void *buffer, size_t count, CommType type)
{
    CommRequest *r = check_count(comm, count) ? NULL : new_request(comm);
    if (!r)
        return NULL;
    return started(r, MPI_Iallreduce(MPI_IN_PLACE, buffer, (int)count, mpi_type(type), MPI_SUM,
                                     handle(comm), r->impl),
                   "MPI_Iallreduce");
}

static CommRequest *mpi_ireduce_scatter(Comm *comm, const void *send, void *recv,
                                        size_t recv_count, CommType type)
{
    CommRequest *r =
        check_count(comm, recv_count * (size_t)comm->size) ? NULL : new_request(comm);
    if (!r)
        return NULL;
    return started(r, MPI_Ireduce_scatter_block(send, recv, (int)recv_count, mpi_type(type),
                                                MPI_SUM, handle(comm), r->impl),
                   "MPI_Ireduce_scatter_block");
}

static CommRequest *mpi_isend(Comm *comm, const void *buffer, size_t count, CommType type,
                              int peer, int tag)
{
    CommRequest *r = check_count(comm, count) ? NULL : new_request(comm);
    if (!r)
        return NULL;
    return started(r, MPI_Isend(buffer, (int)count, mpi_type(type), peer, tag, handle(comm),
                                r->impl),
                   "MPI_Isend");
}

static CommRequest *mpi_irecv(Comm *comm, void *buffer, size_t count, CommType type, int peer,
                              int tag)
{
    CommRequest *r = check_count(comm, count) ? NULL : new_request(comm);
    if (!r)
        return NULL;
    return started(r, MPI_Irecv(buffer, (int)count, mpi_type(type), peer, tag, handle(comm),
                                r->impl),
                   "MPI_Irecv");
}

static int mpi_wait(CommRequest *request)
{
    int code = MPI_Wait(request->impl, MPI_STATUS_IGNORE);
    int result = mpi_result(request->comm, code, "MPI_Wait");
    free(request->impl);
    free(request);
    return result;
}

static int mpi_test(CommRequest *request, bool *done)
{
    int flag = 0;
    int result = mpi_result(request->comm, MPI_Test(request->impl, &flag, MPI_STATUS_IGNORE),
                            "MPI_Test");
    *done = flag != 0;
    return result;
}

static void mpi_abort(Comm *comm, int code)
{
    MPI_Abort(handle(comm), code);
}

static const CommOps mpi_ops = {
    .name = "mpi",
    .split = mpi_split,
    .free = mpi_free,
    .allreduce = mpi_allreduce,
    .reduce_scatter = mpi_reduce_scatter,
    .allgather = mpi_allgather,
    .alltoall = mpi_alltoall,
    .broadcast = mpi_broadcast,
    .send = mpi_send,
    .recv = mpi_recv,
    .barrier = mpi_barrier,
    .iallreduce = mpi_iallreduce,
    .ireduce_scatter = mpi_ireduce_scatter,
    .isend = mpi_isend,
    .irecv = mpi_irecv,
    .wait = mpi_wait,
    .test = mpi_test,
    .abort = mpi_abort,
};
