/*
 * gradsync: sums gradients over the data-parallel x sequence-parallel group
 * in buckets, overlapped with the backward pass.
 *
 * The backward pass finishes gradients from the end of the parameter buffer
 * towards its start (head, last layer, ..., first layer, embeddings), so
 * "everything from offset o on is final" describes readiness completely.
 * The caller reports that with gradsync_ready_from() during the last
 * micro-batch's backward pass; a bucket (a contiguous range of at least
 * bucket_floats, or the rest) is launched as a non-blocking allreduce as soon
 * as it is final, and gradsync_finish() launches what is left and waits.
 * With a group of one rank, or none (comm NULL), every call does nothing. The gradients are on
 * `dev`: its queue is drained before a bucket is handed to the communicator.
 * ZeRO-1 (`zero` set, comm NULL): gradsync_ready_from() passes readiness to
 * zero_ready_from(), which reduce-scatters ZeRO's own buckets as they become
 * final; zero_reduce_scatter() finishes them (gradsync_finish does nothing).
 */
#ifndef PHALANX_GRADSYNC_H
#define PHALANX_GRADSYNC_H

#include "comm.h"
#include "device.h"
#include "zero.h"

#include <stddef.h>

#define GRADSYNC_MAX_BUCKETS 1024

typedef struct {
    Comm *comm;
    const Device *dev;
    float *grads;
    size_t count;         /* floats in grads */
    size_t bucket_floats; /* smallest bucket worth a message */
    size_t launched_from; /* [launched_from, count) is in flight or done */
    CommRequest *requests[GRADSYNC_MAX_BUCKETS];
    int request_count;
    double comm_seconds;  /* time spent waiting in gradsync_finish, this step */
    Zero *zero;           /* ZeRO-1: readiness goes to its reduce-scatter; NULL: none */
    char error[640];
} GradSync;

void gradsync_init(GradSync *sync, Comm *comm, const Device *dev, float *grads, size_t count,
                   size_t bucket_floats);
/* Starts a new step: nothing launched yet. */
void gradsync_begin(GradSync *sync);
/* Gradients at offsets >= `offset` are final on this rank. Returns 0 or -1. */
int gradsync_ready_from(GradSync *sync, size_t offset);
/* Launches the rest and waits for every bucket. Returns 0 or -1 (sync->error). */
int gradsync_finish(GradSync *sync);

#endif
