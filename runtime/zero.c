/* ZeRO-1 optimizer sharding (contract in zero.h). */
#include "zero.h"

#include "checkpoint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The checkpoint writer's replica split, so that a rank's moments are the
 * ones it writes. */
void zero_piece(const ParamTensor *t, int owner, int owners, size_t *first, size_t *count)
{
    CkptTensor split = {.ndim = t->ndim,
                        .shape = {t->shape[0], t->ndim == 2 ? t->shape[1] : 0},
                        .replica_index = owner,
                        .replica_count = owners};
    ckpt_tensor_share(&split, first, count);
}

static size_t piece_count(const Zero *z, int tensor, int owner)
{
    size_t first, count;
    zero_piece(&z->gpt->tensors[tensor], owner, z->size, &first, &count);
    return count;
}

/* Buckets of at least bucket_floats; each owner's chunk is the largest sum of
 * its pieces, so the R chunks of a bucket have one size. */
static int plan_buckets(Zero *z, size_t bucket_floats, size_t *staging_floats)
{
    const GPT *gpt = z->gpt;
    z->buckets = calloc((size_t)gpt->tensor_count, sizeof(ZeroBucket));
    if (!z->buckets)
        return -1;
    *staging_floats = 0;
    for (int begin = 0, end; begin < gpt->tensor_count; begin = end) {
        size_t numel = 0;
        for (end = begin; end < gpt->tensor_count && numel < bucket_floats; end++)
            numel += gpt->tensors[end].numel;
        ZeroBucket *b = &z->buckets[z->bucket_count++];
        *b = (ZeroBucket){begin, end, 0, z->shard_floats};
        for (int owner = 0; owner < z->size; owner++) {
            size_t sum = 0;
            for (int i = begin; i < end; i++)
                sum += piece_count(z, i, owner);
            if (sum > b->per_owner)
                b->per_owner = sum;
        }
        z->shard_floats += b->per_owner;
        if (b->per_owner * z->size > *staging_floats)
            *staging_floats = b->per_owner * z->size;
    }
    return 0;
}

/* This rank's pieces as optimizer tensors over the shard. */
static void point_tensors(Zero *z, float *grads, float *m, float *v)
{
    GPT *gpt = z->gpt;
    for (int b = 0; b < z->bucket_count; b++) {
        size_t at = z->buckets[b].shard_offset;
        for (int i = z->buckets[b].tensor_begin; i < z->buckets[b].tensor_end; i++) {
            const ParamTensor *p = &gpt->tensors[i];
            size_t first, count;
            zero_piece(p, z->rank, z->size, &first, &count);
            z->tensors[i] = (OptimTensor){
                .name = p->name,
                .param = gpt->params + p->offset + first,
                .grad = grads + at,
                .m = m + at,
                .v = v + at,
                .numel = count,
                .exclude = p->excluded,
            };
            at += count;
        }
    }
}

size_t zero_piece_offset(const Zero *z, int tensor)
{
    return (size_t)(z->tensors[tensor].m - z->m);
}

int zero_init(Zero *z, GPT *gpt, Comm *comm, Comm *host, size_t bucket_floats)
{
    memset(z, 0, sizeof(*z));
    z->dev = gpt->dev;
    z->gpt = gpt;
    z->comm = comm;
    z->host = host;
    z->rank = comm_rank(comm);
    z->size = comm_size(comm);
    z->held_tensor = -1;
    size_t staging_floats;
    z->tensors = calloc((size_t)gpt->tensor_count, sizeof(OptimTensor));
    z->sums = calloc(2 * (size_t)gpt->tensor_count, sizeof(double));
    if (!z->tensors || !z->sums || plan_buckets(z, bucket_floats, &staging_floats))
        goto out_of_memory;
    size_t shard_bytes = (z->shard_floats ? z->shard_floats : 1) * sizeof(float);
    z->grad_shard = device_alloc(z->dev, shard_bytes);
    z->m = device_alloc(z->dev, shard_bytes);
    z->v = device_alloc(z->dev, shard_bytes);
    z->slot_floats = staging_floats ? staging_floats : 1;
    z->staging = device_alloc(z->dev, ZERO_SLOTS * z->slot_floats * sizeof(float));
    if (!z->grad_shard || !z->m || !z->v || !z->staging)
        goto out_of_memory;
    device_zero(z->dev, z->m, shard_bytes);
    device_zero(z->dev, z->v, shard_bytes);
    point_tensors(z, z->grad_shard, z->m, z->v);
    return 0;
out_of_memory:
    snprintf(z->error, sizeof(z->error), "ZeRO-1: out of %s memory for the shards",
             z->dev->name);
    return -1;
}

void zero_free(Zero *z)
{
    if (!z->dev)
        return;
    device_free(z->dev, z->grad_shard);
    device_free(z->dev, z->m);
    device_free(z->dev, z->v);
    device_free(z->dev, z->staging);
    free(z->buckets);
    free(z->tensors);
    free(z->sums);
    memset(z, 0, sizeof(*z));
}

size_t zero_state_bytes(const Zero *z)
{
    return 2 * z->shard_floats * sizeof(float);
}

/* Copies the pieces of `owner` in bucket b between the stage's buffer and a
 * packed chunk, in either direction. */
static void copy_pieces(Zero *z, const ZeroBucket *b, int owner, float *whole, float *chunk,
                        bool pack)
{
    size_t at = 0;
    for (int i = b->tensor_begin; i < b->tensor_end; i++) {
        size_t first, count;
        zero_piece(&z->gpt->tensors[i], owner, z->size, &first, &count);
        float *inside = whole + z->gpt->tensors[i].offset + first;
        if (count)
            device_copy(z->dev, pack ? chunk + at : inside, pack ? inside : chunk + at,
                        count * sizeof(float));
        at += count;
    }
}

static int communicated(Zero *z, int status, const char *what)
{
    if (status == 0)
        return 0;
    snprintf(z->error, sizeof(z->error), "ZeRO-1 %s: %s", what, comm_error(z->comm));
    return -1;
}

static int device_drained(Zero *z, const char *what)
{
    char why[512];
    if (device_ready(z->dev, why, sizeof(why)) == 0)
        return 0;
    snprintf(z->error, sizeof(z->error), "ZeRO-1 %s: %s", what, why);
    return -1;
}

/* Waits for the reduce-scatter that used `slot`, if any. */
static int slot_free(Zero *z, int slot)
{
    CommRequest *request = z->in_flight[slot];
    z->in_flight[slot] = NULL;
    return request ? communicated(z, comm_wait(request), "gradient reduce-scatter") : 0;
}

/* Packs the next bucket (from the last one down) into its slot and starts
 * its reduce-scatter. */
static int launch_next(Zero *z)
{
    const ZeroBucket *b = &z->buckets[z->bucket_count - 1 - z->launched];
    int slot = z->launched % ZERO_SLOTS;
    float *staging = z->staging + (size_t)slot * z->slot_floats;
    if (slot_free(z, slot))
        return -1;
    device_zero(z->dev, staging, b->per_owner * z->size * sizeof(float));
    for (int owner = 0; owner < z->size; owner++)
        copy_pieces(z, b, owner, z->gpt->grads, staging + owner * b->per_owner, true);
    if (device_drained(z, "gradient reduce-scatter"))
        return -1;
    z->in_flight[slot] = comm_ireduce_scatter(z->comm, staging, z->grad_shard + b->shard_offset,
                                              b->per_owner, COMM_F32);
    if (!z->in_flight[slot])
        return communicated(z, -1, "gradient reduce-scatter");
    z->launched++;
    return 0;
}

static bool holds_held_tensor(const Zero *z, const ZeroBucket *b)
{
    return z->held_tensor >= b->tensor_begin && z->held_tensor < b->tensor_end;
}

int zero_ready_from(Zero *z, size_t offset)
{
    while (z->launched < z->bucket_count) {
        const ZeroBucket *b = &z->buckets[z->bucket_count - 1 - z->launched];
        if (z->gpt->tensors[b->tensor_begin].offset < offset || holds_held_tensor(z, b))
            break;
        if (launch_next(z))
            return -1;
    }
    bool done; // lets MPI move the buckets in flight along while the caller computes
    for (int slot = 0; slot < ZERO_SLOTS; slot++)
        if (z->in_flight[slot])
            comm_test(z->in_flight[slot], &done);
    return 0;
}

int zero_reduce_scatter(Zero *z)
{
    int status = 0;
    while (status == 0 && z->launched < z->bucket_count)
        status = launch_next(z);
    for (int slot = 0; slot < ZERO_SLOTS; slot++)
        if (slot_free(z, slot))
            status = -1;
    z->launched = 0;
    return status;
}

int zero_allgather(Zero *z)
{
    for (int k = 0; k < z->bucket_count; k++) {
        const ZeroBucket *b = &z->buckets[k];
        float *mine = z->grad_shard + b->shard_offset;
        device_zero(z->dev, mine, b->per_owner * sizeof(float));
        copy_pieces(z, b, z->rank, z->gpt->params, mine, true);
        if (device_drained(z, "parameter all-gather") ||
            communicated(z, comm_allgather(z->comm, mine, z->staging, b->per_owner, COMM_F32),
                         "parameter all-gather"))
            return -1;
        for (int owner = 0; owner < z->size; owner++)
            copy_pieces(z, b, owner, z->gpt->params, z->staging + owner * b->per_owner, false);
    }
    return device_drained(z, "parameter all-gather");
}

int zero_sum(Zero *z, double *values, int count)
{
    if (z->size == 1 || comm_allreduce(z->host, values, (size_t)count, COMM_F64) == 0)
        return 0;
    snprintf(z->error, sizeof(z->error), "ZeRO-1 sums over dp x sp: %s", comm_error(z->host));
    return -1;
}
