/*
 * modelfile: a model's weights in the files other programs read and write,
 * and the one way every command opens a model given by path.
 *
 * Formats (content decides, never the file name)
 * - checkpoint: a Phalanx checkpoint (a step directory or its index.h5),
 *   read with ckpt_load; its run state gives the shape.
 * - safetensors: Hugging Face's GPT-2 (GPT2LMHeadModel): 8-byte little-endian
 *   header length, a JSON header (dtype, shape, data_offsets per tensor,
 *   __metadata__ {"format": "pt", "n_head": ...}) padded with spaces to a
 *   multiple of 8, then the float32 data. Names transformer.wte.weight,
 *   transformer.h.N.attn.c_attn.weight, ...; Conv1D weights stored [in, out]
 *   (the transpose of ours); the head is tied to wte and not stored; wte has
 *   the unpadded vocabulary. config.json is written beside it, and read
 *   for n_head when the metadata lacks it.
 * - llmc: llm.c's model file: 256 int32 (magic 20240326, version 3 = fp32,
 *   max_seq_len, vocab, layers, heads, channels, padded vocab: a multiple of
 *   128), then wte [Vp, C], wpe, and the per-layer tensors stacked over the
 *   layers in llm.c's order, all [out, in], then lnfw, lnfb.
 *
 * Contract
 * - modelfile_probe() reads the shape (seq_len is the position table's
 *   length) and checks the whole file's structure up front: a truncated file,
 *   a foreign one, a header that lies about offsets or sizes, a wrong dtype
 *   or a missing tensor are refused here, naming the file and the problem.
 * - modelfile_load() fills every tensor `gpt` holds (any pipeline stage:
 *   whole logical tensors) and uploads them to its device. The model must have
 *   the file's shape. Padded embedding rows are zero.
 * - modelfile_export() writes the whole model `gpt` (gpt_init_full on a
 *   device whose memory the host reads) to `path` through a temporary file
 *   and a rename: on failure nothing is left at `path`.
 * All return 0, or -1 with a message in err; nothing aborts.
 */
#ifndef PHALANX_MODELFILE_H
#define PHALANX_MODELFILE_H

#include "gpt.h"

#include <stdbool.h>
#include <stddef.h>

typedef enum { MODEL_CHECKPOINT, MODEL_SAFETENSORS, MODEL_LLMC } ModelFormat;

#define LLMC_MODEL_MAGIC 20240326
#define LLMC_MODEL_VERSION 3

const char *modelfile_format_name(ModelFormat format);
/* "safetensors" or "llmc" (what export writes). */
bool modelfile_format_parse(const char *text, ModelFormat *out);

int modelfile_probe(const char *path, ModelFormat *format, GPTConfig *config, char *err,
                    size_t err_len);
int modelfile_load(const char *path, GPT *gpt, char *err, size_t err_len);
int modelfile_export(const GPT *gpt, ModelFormat format, const char *path, char *err,
                     size_t err_len);

#endif
