/* The communicator interface: dispatch to the backend's table (backend.h). */
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>

bool comm_launched_by_mpi(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK");
}

Comm *comm_world_init(int *argc, char ***argv, char *err, size_t err_len)
{
    if (!comm_launched_by_mpi())
        return comm_local_world();
    return comm_mpi_world(argc, argv, err, err_len);
}

void comm_world_finalize(Comm *world)
{
    bool mpi = world && world->ops != comm_local_world()->ops;
    comm_free(world);
    if (mpi)
        comm_mpi_finalize();
}

int comm_rank(const Comm *comm) { return comm->rank; }
int comm_size(const Comm *comm) { return comm->size; }
const char *comm_error(const Comm *comm) { return comm->error; }
bool comm_broken(const Comm *comm) { return comm->broken; }

void comm_abort(Comm *comm, int code)
{
    fflush(stderr);
    if (comm->ops->abort)
        comm->ops->abort(comm, code);
    _Exit(code);
}

void comm_inject_failure(Comm *comm)
{
    comm->inject_failure = true;
}

Comm *comm_split(Comm *parent, int color, int key)
{
    return parent->ops->split(parent, color, key);
}

void comm_free(Comm *comm)
{
    if (comm)
        comm->ops->free(comm);
}

int comm_allreduce(Comm *comm, void *buffer, size_t count, CommType type)
{
    if (comm->inject_failure) {
        comm->inject_failure = false;
        return comm_break(comm, "allreduce failed on rank %d of %d: injected (commfail)",
                          comm->rank, comm->size);
    }
    return comm->ops->allreduce(comm, buffer, count, type);
}

int comm_reduce_scatter(Comm *comm, const void *send, void *recv, size_t recv_count,
                        CommType type)
{
    return comm->ops->reduce_scatter(comm, send, recv, recv_count, type);
}

int comm_allgather(Comm *comm, const void *send, void *recv, size_t send_count, CommType type)
{
    return comm->ops->allgather(comm, send, recv, send_count, type);
}

int comm_alltoall(Comm *comm, const void *send, void *recv, size_t count, CommType type)
{
    return comm->ops->alltoall(comm, send, recv, count, type);
}

int comm_broadcast(Comm *comm, void *buffer, size_t count, CommType type, int root)
{
    return comm->ops->broadcast(comm, buffer, count, type, root);
}

int comm_send(Comm *comm, const void *buffer, size_t count, CommType type, int peer, int tag)
{
    return comm->ops->send(comm, buffer, count, type, peer, tag);
}

int comm_recv(Comm *comm, void *buffer, size_t count, CommType type, int peer, int tag)
{
    return comm->ops->recv(comm, buffer, count, type, peer, tag);
}

int comm_barrier(Comm *comm)
{
    return comm->ops->barrier(comm);
}

CommRequest *comm_iallreduce(Comm *comm, void *buffer, size_t count, CommType type)
{
    return comm->ops->iallreduce(comm, buffer, count, type);
}

CommRequest *comm_ireduce_scatter(Comm *comm, const void *send, void *recv, size_t recv_count,
                                  CommType type)
{
    return comm->ops->ireduce_scatter(comm, send, recv, recv_count, type);
}

CommRequest *comm_isend(Comm *comm, const void *buffer, size_t count, CommType type, int peer,
                        int tag)
{
    return comm->ops->isend(comm, buffer, count, type, peer, tag);
}

CommRequest *comm_irecv(Comm *comm, void *buffer, size_t count, CommType type, int peer,
                        int tag)
{
    return comm->ops->irecv(comm, buffer, count, type, peer, tag);
}

int comm_wait(CommRequest *request)
{
    return request->comm->ops->wait(request);
}

int comm_test(CommRequest *request, bool *done)
{
    return request->comm->ops->test(request, done);
}
