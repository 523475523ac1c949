/*
 * data: token shards in llm.c's format, and the sampler that maps global
 * sample indices to windows of them.
 *
 * Shard format (llm.c, dev/data/data_common.py): a header of 256 little-endian
 * int32 (magic 20240520, version 1, token count), then that many uint16 tokens.
 *
 * Contract
 * - tokendata_open() takes a spec: a comma-separated list of file paths or glob
 *   patterns (each pattern sorted by name, shards in the order given). It maps
 *   every shard read-only and checks everything up front: the file exists, its
 *   header is whole, the magic and version are right, the size equals
 *   1024 + 2 * count bytes, and every token id is below `vocab`. On any failure
 *   it returns -1 with a message in `err` that names the file and the fix, and
 *   leaves nothing open.
 * - A window is seq_len + 1 consecutive tokens of one shard (inputs are the
 *   first seq_len, targets the last seq_len). Windows start every seq_len
 *   tokens and never cross a shard boundary; window ids run over the shards in
 *   order. tokendata_windows() == 0 means the data is shorter than one sequence.
 * - The sampler (DESIGN.md: samples have global indices): global sample g is
 *   window sampler_window(seed, n, g) where epoch e = g / n is a keyed
 *   pseudo-random permutation of [0, n) (keyed by seed and e, RNG_SHUFFLE).
 *   Every window appears exactly once per epoch; the result depends on
 *   (seed, n, g) only, never on the layout or the rank.
 * - data_prepare_main() is `phalanx data prepare`: text files -> train and
 *   validation shards of byte-level tokens (vocab 256).
 */
#ifndef PHALANX_DATA_H
#define PHALANX_DATA_H

#include <stddef.h>
#include <stdint.h>

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1
#define SHARD_HEADER_INTS 256

typedef struct {
    char *path;
    const uint16_t *tokens; /* points into the mapping, past the header */
    size_t count;           /* tokens in this shard */
    void *map;
    size_t map_size;
} TokenShard;

typedef struct {
    TokenShard *shards;
    int shard_count;
    size_t token_count; /* over all shards */
} TokenData;

int tokendata_open(TokenData *data, const char *spec, int vocab, char *err, size_t err_len);
void tokendata_close(TokenData *data);

size_t tokendata_windows(const TokenData *data, int seq_len);

/* Fills inputs[seq_len] and targets[seq_len] with window `window`. */
void tokendata_window(const TokenData *data, int seq_len, size_t window, int *inputs,
                      int *targets);

size_t sampler_window(uint64_t seed, size_t window_count, uint64_t sample);

/* Writes a shard file (used by data prepare and by tests). Returns 0 or -1 with err. */
int shard_write(const char *path, const uint16_t *tokens, size_t count, char *err,
                size_t err_len);

int data_prepare_main(int argc, char **argv);

#endif
