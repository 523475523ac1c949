/* DeepSpeed-Ulysses all-to-all re-sharding (contract in ulysses.h). */
#include "ulysses.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ulysses_init(SeqParallel *sp, const Device *dev, Comm *comm, int B, int local_T, int C)
{
    memset(sp, 0, sizeof(*sp));
    sp->dev = dev;
    sp->size = comm ? comm_size(comm) : 1;
    sp->rank = comm ? comm_rank(comm) : 0;
    if (sp->size == 1)
        return 0;
    sp->comm = comm;
    size_t bytes = (size_t)B * local_T * 3 * C * sizeof(float);
    sp->send = device_alloc(dev, bytes);
    sp->recv = device_alloc(dev, bytes);
    return sp->send && sp->recv ? 0 : -1;
}

void ulysses_free(SeqParallel *sp)
{
    if (sp->dev) {
        device_free(sp->dev, sp->send);
        device_free(sp->dev, sp->recv);
    }
    memset(sp, 0, sizeof(*sp));
    sp->size = 1;
}

static int exchange(SeqParallel *sp, size_t per_peer)
{
    char why[256];
    if (device_ready(sp->dev, why, sizeof(why))) {
        snprintf(sp->error, sizeof(sp->error), "sequence-parallel all-to-all: %s", why);
        return -1;
    }
    if (comm_alltoall(sp->comm, sp->send, sp->recv, per_peer, COMM_F32) == 0)
        return 0;
    snprintf(sp->error, sizeof(sp->error), "sequence-parallel all-to-all: %s",
             comm_error(sp->comm));
    return -1;
}

/* Rows are tokens (b, t) of B * local_T; within a row, part p and head group
 * j is the block of `width` floats at p*C + j*width. */
int ulysses_seq_to_heads(SeqParallel *sp, float *out, const float *in, int B, int local_T,
                         int C, int parts)
{
    const Device *dev = sp->dev;
    int P = sp->size, width = C / P, T = local_T * P;
    size_t rows = (size_t)B * local_T, per_peer = rows * parts * width;
    // send[j][row][p] = in[row][p*C + j*width ...]: head group j goes to rank j
    for (int j = 0; j < P; j++)
        for (int p = 0; p < parts; p++)
            device_copy_rows(dev, sp->send + j * per_peer + (size_t)p * width,
                             (size_t)parts * width, in + (size_t)p * C + (size_t)j * width,
                             (size_t)parts * C, (size_t)width, rows);
    if (exchange(sp, per_peer))
        return -1;
    // recv[i][b] holds tokens i*local_T + t of my head group, for every t
    size_t block = (size_t)local_T * parts * width;
    for (int i = 0; i < P; i++)
        device_copy_rows(dev, out + (size_t)i * block, (size_t)T * parts * width,
                         sp->recv + i * per_peer, block, block, (size_t)B);
    return 0;
}

int ulysses_heads_to_seq(SeqParallel *sp, float *out, const float *in, int B, int local_T,
                         int C, int parts)
{
    const Device *dev = sp->dev;
    int P = sp->size, width = C / P, T = local_T * P;
    size_t rows = (size_t)B * local_T, per_peer = rows * parts * width;
    size_t block = (size_t)local_T * parts * width;
    // send[j][b] = my head group's rows for tokens j*local_T + t: they belong to rank j
    for (int j = 0; j < P; j++)
        device_copy_rows(dev, sp->send + j * per_peer, block, in + (size_t)j * block,
                         (size_t)T * parts * width, block, (size_t)B);
    if (exchange(sp, per_peer))
        return -1;
    // recv[i][row][p] is head group i of my tokens: columns p*C + i*width
    for (int i = 0; i < P; i++)
        for (int p = 0; p < parts; p++)
            device_copy_rows(dev, out + (size_t)p * C + (size_t)i * width, (size_t)parts * C,
                             sp->recv + i * per_peer + (size_t)p * width, (size_t)parts * width,
                             (size_t)width, rows);
    return 0;
}
