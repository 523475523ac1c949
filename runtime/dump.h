/*
 * dump: --dump-params, the final parameters of a run as raw float32 in
 * gpt.h's order (PATH) plus a JSON manifest of the tensors (PATH.json), for
 * tests and inspection (runtime/dump.c). Private to runtime/.
 */
#ifndef PHALANX_DUMP_H
#define PHALANX_DUMP_H

#include "trainer.h"

/* Collective over the first replica's stages: rank 0 gathers the whole
 * model and writes it; with pp > 1 the last stage's copy of the tied
 * embedding goes to PATH.tied, for comparison. Returns 0, or -1 after a
 * message. */
int dump_params(Trainer *t, const char *path);

#endif
