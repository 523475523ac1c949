/*
 * ulysses: the two all-to-all re-shardings of DeepSpeed-Ulysses sequence
 * parallelism over an sp group of P ranks. Rank r holds tokens
 * [r*T/P, (r+1)*T/P) of every sequence; attention needs whole sequences, so:
 *
 *   seq_to_heads  [B, T/P, parts*C] (all heads, my tokens)
 *              -> [B, T, parts*C/P] (my H/P heads, all tokens)
 *   heads_to_seq  the inverse.
 *
 * `parts` is 3 for packed q|k|v and 1 for the attention output; within each
 * part, head group j is columns [j*C/P, (j+1)*C/P). Forward uses
 * seq_to_heads(qkv, 3) then heads_to_seq(out, 1); backward the transposes,
 * seq_to_heads(dout, 1) then heads_to_seq(dqkv, 3).
 *
 * Buffers are on `dev` (device.h); the re-packing is queued there, and the
 * queue is drained before the all-to-all reads what it packed.
 */
#ifndef PHALANX_ULYSSES_H
#define PHALANX_ULYSSES_H

#include "comm.h"
#include "device.h"

#include <stddef.h>

typedef struct {
    const Device *dev;
    Comm *comm; /* NULL: no sequence parallelism */
    int size, rank;
    float *send, *recv; /* all-to-all staging, B * T/P * 3C floats each */
    char error[300];
} SeqParallel;

/* size 1 and no buffers when comm is NULL or has one rank. */
int ulysses_init(SeqParallel *sp, const Device *dev, Comm *comm, int B, int local_T, int C);
void ulysses_free(SeqParallel *sp);

int ulysses_seq_to_heads(SeqParallel *sp, float *out, const float *in, int B, int local_T,
                         int C, int parts);
int ulysses_heads_to_seq(SeqParallel *sp, float *out, const float *in, int B, int local_T,
                         int C, int parts);

#endif
