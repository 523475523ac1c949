/*
 * comm: communicators. One interface, several backends behind a table of
 * function pointers chosen when a communicator is made:
 *   local  a world of one process, no MPI at all (a plain `phalanx train`);
 *   mpi    Open MPI, CPU buffers (MPI_Init_thread with MPI_THREAD_MULTIPLE,
 *          because the checkpoint sidecar communicates from its own thread);
 *   nccl   GPU buffers, one CUDA stream per communicator (nccl.c; built when
 *          NCCL is found, HAVE_NCCL). A host communicator bootstraps it by
 *          broadcasting the NCCL id; isend/irecv start at the next call.
 *
 * Contract
 * - comm_world_init() starts MPI when the process was launched by mpirun or
 *   srun (it looks for their environment) and otherwise returns a local world
 *   of size 1. comm_world_finalize() ends it.
 * - comm_split() makes a sub-communicator (world -> dp, pp, sp, dp x sp
 *   groups): ranks with the same color form a group, ordered by key. It is
 *   collective over the parent.
 * - Every operation returns 0 on success, or -1 with a message available from
 *   comm_error(); nothing aborts the process but comm_abort(). MPI
 *   communicators use MPI_ERRORS_RETURN for that reason.
 * - A failure inside the library (MPI or NCCL said no, not a refused
 *   argument) marks the communicator broken (comm_broken): MPI's state after
 *   an error is undefined, and a rank whose part of the same collective did
 *   not fail may wait in it for ever, so no further collective with those
 *   ranks can be trusted, on this communicator or any other. The caller ends
 *   the job (comm_abort) rather than agree on the failure with ranks that
 *   cannot answer.
 * - Reductions sum. Buffers are host memory for local and mpi, device memory
 *   for nccl (written by the caller's kernels before the call: the NCCL
 *   stream does not wait for other streams).
 * - Non-blocking operations return a CommRequest that comm_wait() completes
 *   and frees; comm_test() lets a caller drive progress between computations.
 * - Thread safety: different communicators may be used from different
 *   threads at the same time; one communicator is used by one thread.
 */
#ifndef PHALANX_COMM_H
#define PHALANX_COMM_H

#include <stdbool.h>
#include <stddef.h>

typedef struct Comm Comm;
typedef struct CommRequest CommRequest;

typedef enum { COMM_F32, COMM_F64, COMM_I64, COMM_BYTE } CommType;

/* Starts the world communicator. On failure returns NULL and fills err. */
Comm *comm_world_init(int *argc, char ***argv, char *err, size_t err_len);
/* Frees `world` and shuts MPI down (if it was started). */
void comm_world_finalize(Comm *world);

#ifdef HAVE_NCCL
/* The NCCL backend (nccl.c), for device buffers: a communicator over the same
 * ranks as `mpi_comm` (any host communicator: it only broadcasts the NCCL id),
 * on the calling thread's current CUDA device. Collective over mpi_comm. */
Comm *comm_nccl_from_mpi(Comm *mpi_comm, char *err, size_t err_len);
#endif

/* True when the process was started by mpirun or srun (MPI will be used). */
bool comm_launched_by_mpi(void);

int comm_rank(const Comm *comm);
int comm_size(const Comm *comm);
const char *comm_error(const Comm *comm);
/* True once an operation on `comm` failed inside the library (see above). */
bool comm_broken(const Comm *comm);
/* Ends every process of the job with exit status `code` (MPI_Abort on an MPI
 * communicator: mpirun or srun then stops the other ranks), or this process
 * alone for a local world. Does not return. */
_Noreturn void comm_abort(Comm *comm, int code);
/* For drills (PHALANX_FAULTS commfail): the next comm_allreduce on `comm`
 * fails here as a library failure would, without reaching the library, so
 * the other ranks wait in it as they would behind a real one. */
void comm_inject_failure(Comm *comm);

Comm *comm_split(Comm *parent, int color, int key);
void comm_free(Comm *comm);

int comm_allreduce(Comm *comm, void *buffer, size_t count, CommType type);
int comm_reduce_scatter(Comm *comm, const void *send, void *recv, size_t recv_count,
                        CommType type);
int comm_allgather(Comm *comm, const void *send, void *recv, size_t send_count,
                   CommType type);
int comm_alltoall(Comm *comm, const void *send, void *recv, size_t count_per_peer,
                  CommType type);
int comm_broadcast(Comm *comm, void *buffer, size_t count, CommType type, int root);
int comm_send(Comm *comm, const void *buffer, size_t count, CommType type, int peer, int tag);
int comm_recv(Comm *comm, void *buffer, size_t count, CommType type, int peer, int tag);
int comm_barrier(Comm *comm);

CommRequest *comm_iallreduce(Comm *comm, void *buffer, size_t count, CommType type);
/* Non-blocking comm_reduce_scatter: `send` (size x recv_count) must not
 * change, nor `recv` be read, until the request completes. */
CommRequest *comm_ireduce_scatter(Comm *comm, const void *send, void *recv, size_t recv_count,
                                  CommType type);
CommRequest *comm_isend(Comm *comm, const void *buffer, size_t count, CommType type, int peer,
                        int tag);
CommRequest *comm_irecv(Comm *comm, void *buffer, size_t count, CommType type, int peer,
                        int tag);
/* Completes and frees the request; 0 or -1 (message in comm_error of its comm). */
int comm_wait(CommRequest *request);
/* Drives progress; *done is set when complete (the request stays valid until comm_wait). */
int comm_test(CommRequest *request, bool *done);

#endif
