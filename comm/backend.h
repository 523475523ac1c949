/* Private to comm/: the table of operations a backend provides. */
#ifndef PHALANX_COMM_BACKEND_H
#define PHALANX_COMM_BACKEND_H

#include "comm.h"

#include <stdarg.h>

typedef struct {
    const char *name;
    Comm *(*split)(Comm *parent, int color, int key);
    void (*free)(Comm *comm);
    int (*allreduce)(Comm *comm, void *buffer, size_t count, CommType type);
    int (*reduce_scatter)(Comm *comm, const void *send, void *recv, size_t recv_count,
                          CommType type);
    int (*allgather)(Comm *comm, const void *send, void *recv, size_t send_count,
                     CommType type);
    int (*alltoall)(Comm *comm, const void *send, void *recv, size_t count, CommType type);
    int (*broadcast)(Comm *comm, void *buffer, size_t count, CommType type, int root);
    int (*send)(Comm *comm, const void *buffer, size_t count, CommType type, int peer, int tag);
    int (*recv)(Comm *comm, void *buffer, size_t count, CommType type, int peer, int tag);
    int (*barrier)(Comm *comm);
    CommRequest *(*iallreduce)(Comm *comm, void *buffer, size_t count, CommType type);
    CommRequest *(*ireduce_scatter)(Comm *comm, const void *send, void *recv,
                                    size_t recv_count, CommType type);
    CommRequest *(*isend)(Comm *comm, const void *buffer, size_t count, CommType type,
                          int peer, int tag);
    CommRequest *(*irecv)(Comm *comm, void *buffer, size_t count, CommType type, int peer,
                          int tag);
    int (*wait)(CommRequest *request);
    int (*test)(CommRequest *request, bool *done);
    void (*abort)(Comm *comm, int code); /* NULL: comm_abort ends this process alone */
} CommOps;

struct Comm {
    const CommOps *ops;
    int rank, size;
    char error[256];
    bool broken;         /* comm_broken() */
    bool inject_failure; /* comm_inject_failure(): the next allreduce fails */
    void *impl;          /* the backend's handle */
};

struct CommRequest {
    Comm *comm;
    void *impl; /* the backend's request, or NULL when already complete */
};

/* backend.c: what every backend shares. */
size_t comm_type_size(CommType type);
/* Records a message for comm_error() and returns -1. */
int comm_fail(Comm *comm, const char *format, ...) __attribute__((format(printf, 2, 3)));
/* The same for a failure inside the communication library: also marks the
 * communicator broken (comm_broken). */
int comm_break(Comm *comm, const char *format, ...) __attribute__((format(printf, 2, 3)));

Comm *comm_local_world(void);
Comm *comm_mpi_world(int *argc, char ***argv, char *err, size_t err_len);
void comm_mpi_finalize(void);

#endif
