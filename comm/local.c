/*
 * The local backend: a world of one process, for `phalanx train` started
 * without mpirun or srun. Collectives over one rank are copies or nothing;
 * point-to-point has no peer and fails.
 */
#include "backend.h"

#include <stdlib.h>
#include <string.h>

static const CommOps local_ops;

static Comm *local_new(void)
{
    Comm *comm = calloc(1, sizeof(Comm));
    if (comm) {
        comm->ops = &local_ops;
        comm->size = 1;
    }
    return comm;
}

static Comm *local_split(Comm *parent, int color, int key)
{
    (void)parent;
    (void)color;
    (void)key;
    return local_new();
}

static void local_free(Comm *comm)
{
    if (comm != comm_local_world())
        free(comm);
}

static int local_reduce(Comm *comm, void *buffer, size_t count, CommType type)
{
    (void)comm;
    (void)buffer;
    (void)count;
    (void)type;
    return 0;
}

static int local_copy(Comm *comm, const void *send, void *recv, size_t count, CommType type)
{
    (void)comm;
    if (send != recv)
        memmove(recv, send, count * comm_type_size(type));
    return 0;
}

static int local_broadcast(Comm *comm, void *buffer, size_t count, CommType type, int root)
{
    (void)root;
    return local_reduce(comm, buffer, count, type);
}

static int local_send(Comm *comm, const void *buffer, size_t count, CommType type, int peer,
                      int tag)
{
    (void)buffer;
    (void)count;
    (void)type;
    (void)tag;
    return comm_fail(comm, "send to rank %d: a local world has no other rank", peer);
}

static int local_recv(Comm *comm, void *buffer, size_t count, CommType type, int peer, int tag)
{
    return local_send(comm, buffer, count, type, peer, tag);
}

static int local_barrier(Comm *comm)
{
    (void)comm;
    return 0;
}

static CommRequest *completed_request(Comm *comm)
{
    CommRequest *request = calloc(1, sizeof(CommRequest));
    if (request)
        request->comm = comm;
    return request;
}

static CommRequest *local_iallreduce(Comm *comm, void *buffer, size_t count, CommType type)
{
    (void)buffer;
    (void)count;
    (void)type;
    return completed_request(comm);
}

/* One rank: its chunk is the whole send buffer, summed with nobody. */
static CommRequest *local_ireduce_scatter(Comm *comm, const void *send, void *recv,
                                          size_t recv_count, CommType type)
{
    local_copy(comm, send, recv, recv_count, type);
    return completed_request(comm);
}

static CommRequest *local_ipoint(Comm *comm, const void *buffer, size_t count, CommType type,
                                 int peer, int tag)
{
    local_send(comm, buffer, count, type, peer, tag);
    return NULL;
}

static CommRequest *local_irecv(Comm *comm, void *buffer, size_t count, CommType type, int peer,
                                int tag)
{
    return local_ipoint(comm, buffer, count, type, peer, tag);
}

static int local_wait(CommRequest *request)
{
    free(request);
    return 0;
}

static int local_test(CommRequest *request, bool *done)
{
    (void)request;
    *done = true;
    return 0;
}

static const CommOps local_ops = {
    .name = "local",
    .split = local_split,
    .free = local_free,
    .allreduce = local_reduce,
    .reduce_scatter = local_copy,
    .allgather = local_copy,
    .alltoall = local_copy,
    .broadcast = local_broadcast,
    .send = local_send,
    .recv = local_recv,
    .barrier = local_barrier,
    .iallreduce = local_iallreduce,
    .ireduce_scatter = local_ireduce_scatter,
    .isend = local_ipoint,
    .irecv = local_irecv,
    .wait = local_wait,
    .test = local_test,
};

Comm *comm_local_world(void)
{
    static Comm world = {.ops = &local_ops, .rank = 0, .size = 1};
    return &world;
}
