/* DeepSpeed-Ulysses all-to-all re-sharding (contract in ulysses.h). */
#include "ulysses.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ulysses_init(SeqParallel *sp, Comm *comm, int B, int local_T, int C)
{
    memset(sp, 0, sizeof(*sp));
    sp->size = comm ? comm_size(comm) : 1;
    sp->rank = comm ? comm_rank(comm) : 0;
    if (sp->size == 1)
        return 0;
    sp->comm = comm;
    size_t floats = (size_t)B * local_T * 3 * C;
    sp->send = malloc(floats * sizeof(float));
    sp->recv = malloc(floats * sizeof(float));
    return sp->send && sp->recv ? 0 : -1;
}

void ulysses_free(SeqParallel *sp)
{
    free(sp->send);
    free(sp->recv);
    memset(sp, 0, sizeof(*sp));
    sp->size = 1;
}

static int exchange(SeqParallel *sp, size_t per_peer)
{
    if (comm_alltoall(sp->comm, sp->send, sp->recv, per_peer, COMM_F32) == 0)
        return 0;
    snprintf(sp->error, sizeof(sp->error), "sequence-parallel all-to-all: %s",
             comm_error(sp->comm));
    return -1;
}

/* A block of `width` floats: token t of sequence b, part p, head group j. */
int ulysses_seq_to_heads(SeqParallel *sp, float *out, const float *in, int B, int local_T,
                         int C, int parts)
{
    int P = sp->size, width = C / P, T = local_T * P;
    size_t per_peer = (size_t)B * local_T * parts * width;
    // send[j][b][t][p] = in[b][t][p*C + j*width ...]: head group j goes to rank j
    for (int j = 0; j < P; j++)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < local_T; t++)
                for (int p = 0; p < parts; p++)
                    memcpy(sp->send + j * per_peer +
                               (((size_t)b * local_T + t) * parts + p) * width,
                           in + ((size_t)b * local_T + t) * parts * C + (size_t)p * C +
                               (size_t)j * width,
                           (size_t)width * sizeof(float));
    if (exchange(sp, per_peer))
        return -1;
    // recv[i][b][t][p] holds tokens i*local_T + t of my head group
    for (int i = 0; i < P; i++)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < local_T; t++)
                memcpy(out + ((size_t)b * T + (size_t)i * local_T + t) * parts * width,
                       sp->recv + i * per_peer + ((size_t)b * local_T + t) * parts * width,
                       (size_t)parts * width * sizeof(float));
    return 0;
}

int ulysses_heads_to_seq(SeqParallel *sp, float *out, const float *in, int B, int local_T,
                         int C, int parts)
{
    int P = sp->size, width = C / P, T = local_T * P;
    size_t per_peer = (size_t)B * local_T * parts * width;
    // send[j][b][t] = my head group's rows for tokens j*local_T + t: they belong to rank j
    for (int j = 0; j < P; j++)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < local_T; t++)
                memcpy(sp->send + j * per_peer + ((size_t)b * local_T + t) * parts * width,
                       in + ((size_t)b * T + (size_t)j * local_T + t) * parts * width,
                       (size_t)parts * width * sizeof(float));
    if (exchange(sp, per_peer))
        return -1;
    // recv[i][b][t][p] is head group i of my tokens: columns p*C + i*width
    for (int i = 0; i < P; i++)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < local_T; t++)
                for (int p = 0; p < parts; p++)
                    memcpy(out + ((size_t)b * local_T + t) * parts * C + (size_t)p * C +
                               (size_t)i * width,
                           sp->recv + i * per_peer +
                               (((size_t)b * local_T + t) * parts + p) * width,
                           (size_t)width * sizeof(float));
    return 0;
}
