/*
 * fuzz_shard: the token-shard reader (runtime/data.h, tokendata_open). The
 * input is the bytes of one shard file. When the reader refuses it, the
 * message must name the file; when it accepts it, the data must be what
 * data.h promises: one shard of (size - 1024) / 2 tokens, each below the
 * vocabulary, whose windows read inside the shard (inputs and targets one
 * token apart) and whose sampler maps samples to existing windows.
 */
#include "fuzz.h"

#include "data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VOCAB 256 /* byte-level, as `phalanx data prepare` writes */
#define SAMPLES 64

static void check_windows(const TokenData *data, int seq_len)
{
    size_t windows = tokendata_windows(data, seq_len);
    size_t expected = data->token_count > 0 ? (data->token_count - 1) / (size_t)seq_len : 0;
    if (windows != expected)
        fuzz_fail("%zu tokens make %zu windows of %d, expected %zu", data->token_count,
                  windows, seq_len, expected);
    int *inputs = malloc((size_t)seq_len * sizeof(int));
    int *targets = malloc((size_t)seq_len * sizeof(int));
    for (size_t w = 0; w < windows; w++) {
        tokendata_window(data, seq_len, w, inputs, targets);
        for (int t = 0; t < seq_len; t++)
            if (inputs[t] < 0 || inputs[t] >= VOCAB || targets[t] < 0 || targets[t] >= VOCAB ||
                (t > 0 && inputs[t] != targets[t - 1]))
                fuzz_fail("window %zu of %d holds token %d -> %d at %d", w, seq_len,
                          inputs[t], targets[t], t);
    }
    for (uint64_t g = 0; windows > 0 && g < SAMPLES; g++)
        if (sampler_window(g, windows, g * 7919) >= windows)
            fuzz_fail("sample %llu maps past the last of %zu windows",
                      (unsigned long long)g * 7919, windows);
    free(inputs);
    free(targets);
}

int LLVMFuzzerTestOneInput(const uint8_t *bytes, size_t size)
{
    char path[4200];
    fuzz_path(path, sizeof(path), fuzz_scratch_dir(), "shard.bin");
    fuzz_write_file(path, bytes, size);
    TokenData data;
    char err[8192] = "";
    if (tokendata_open(&data, path, VOCAB, err, sizeof(err)) != 0) {
        if (!strstr(err, path))
            fuzz_fail("refused without naming the file: '%s'", err);
        if (data.shards || data.shard_count)
            fuzz_fail("refused but left %d shard(s) open", data.shard_count);
        return 0;
    }
    size_t tokens = size >= 1024 ? (size - 1024) / 2 : 0;
    if (data.shard_count != 1 || data.token_count != tokens)
        fuzz_fail("a %zu-byte file opened as %d shard(s) of %zu tokens", size,
                  data.shard_count, data.token_count);
    check_windows(&data, 1);
    check_windows(&data, 7);
    tokendata_close(&data);
    return 0;
}
