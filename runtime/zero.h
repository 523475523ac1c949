/*
 * zero: ZeRO-1 optimizer sharding (DeepSpeed's stage 1, Megatron's
 * distributed optimizer) over the R ranks of a stage's dp x sp group.
 *
 * Contract
 * - Rank j of the group owns rows [j*rows/R, (j+1)*rows/R) of every tensor
 *   of the stage (elements for 1-D tensors): the same split the checkpoint
 *   writer gives replica j (ckpt_tensor_share), so each rank holds exactly
 *   the moments it would write. Its pieces lie one after another in a shard
 *   of `shard_floats`; the moments m and v and the summed gradient exist for
 *   the shard only, about 1/R of the stage's parameters.
 * - Tensors are grouped in buckets of at least `bucket_floats` (in storage
 *   order); per bucket the owners' pieces are packed into a staging buffer of
 *   R equal chunks (padded with zeros), so one reduce-scatter sums the whole
 *   group's gradients into each owner's chunk and one all-gather brings every
 *   owner's updated parameters back.
 * - Overlap: the backward pass finishes gradients from the end of the buffer
 *   towards its start (gradsync.h); zero_ready_from() launches each bucket's
 *   non-blocking reduce-scatter as soon as its gradients are final, the last
 *   bucket first, while the backward pass goes on. ZERO_SLOTS staging buffers
 *   take turns (a launch waits for the bucket that used its slot), so staging
 *   stays a few buckets whatever the model. zero_reduce_scatter() launches
 *   the rest and waits for all. A bucket holding `held_tensor` (the tied wte,
 *   which is summed between the stages after the backward pass) is launched
 *   only by zero_reduce_scatter(). Every rank of the group launches the
 *   buckets in the same order (the same stage reports the same offsets).
 * - `tensors` lists the rank's pieces as OptimTensor (one per tensor of the
 *   stage, in order; numel may be 0), ready for optim_step_begin/end: LAMB's
 *   trust ratio and the global norm come from partial squares summed over the
 *   group (zero_sum), so the algorithm is the one of the unsharded run.
 * - Buffers are on the model's device; the device's queue is drained before
 *   a communicator reads what a copy wrote.
 */
#ifndef PHALANX_ZERO_H
#define PHALANX_ZERO_H

#include "comm.h"
#include "gpt.h"
#include "optim.h"

#include <stddef.h>

typedef struct {
    int tensor_begin, tensor_end; /* [begin, end) of gpt->tensors */
    size_t per_owner;             /* floats in each owner's chunk, padding included */
    size_t shard_offset;          /* where this rank's chunk starts in the shard */
} ZeroBucket;

#define ZERO_SLOTS 2 /* staging buffers for reduce-scatters in flight */

typedef struct {
    const Device *dev;
    GPT *gpt;
    Comm *comm; /* dp x sp: device tensors */
    Comm *host; /* dp x sp: host values */
    int rank, size;
    ZeroBucket *buckets;
    int bucket_count;
    size_t shard_floats;
    float *grad_shard, *m, *v; /* [shard_floats] each */
    float *staging;            /* ZERO_SLOTS x slot_floats: a bucket's R chunks each */
    size_t slot_floats;        /* the largest bucket's R chunks */
    CommRequest *in_flight[ZERO_SLOTS]; /* the reduce-scatter using each slot */
    int launched;              /* buckets launched this step, from the last one */
    int held_tensor;           /* its bucket waits for zero_reduce_scatter; -1: none */
    OptimTensor *tensors;      /* this rank's pieces, gpt->tensor_count of them */
    double *sums;              /* LAMB's partial squares, 2 per tensor */
    char error[640];
} Zero;

/* The pieces of rank `owner` of `owners` in tensor `t`: elements
 * [*first, *first + *count) of the tensor. */
void zero_piece(const ParamTensor *t, int owner, int owners, size_t *first, size_t *count);

/* Where this rank's piece of tensor `tensor` starts in its shard (the same
 * place in m, v and grad_shard). */
size_t zero_piece_offset(const Zero *z, int tensor);

/* Returns 0, or -1 when out of memory (z->error). */
int zero_init(Zero *z, GPT *gpt, Comm *comm, Comm *host, size_t bucket_floats);
void zero_free(Zero *z);

/* Gradients at offsets >= `offset` are final: launches the reduce-scatter
 * of every bucket that lies there (but the held one). Returns 0 or -1. */
int zero_ready_from(Zero *z, size_t offset);
/* gpt->grads (this rank's, whole) -> z->grad_shard, summed over the group:
 * launches the buckets not launched yet and waits for every one. */
int zero_reduce_scatter(Zero *z);
/* Every owner's pieces of gpt->params -> every rank's gpt->params. Uses
 * grad_shard as the send buffer: call after the optimizer step. */
int zero_allgather(Zero *z);
/* Sums `count` doubles over the group, in place. */
int zero_sum(Zero *z, double *values, int count);

/* Bytes of optimizer state (m and v) this rank holds. */
size_t zero_state_bytes(const Zero *z);

#endif
