/* Token shards, windows and the keyed sampler (see data.h). */
#include "data.h"
#include "util.h"

#include "rng.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tokens are used in place, straight from the mapping: the file is little-endian. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "token shards are little-endian and are read in place: big-endian hosts are not supported"
#endif

#define HEADER_BYTES (SHARD_HEADER_INTS * sizeof(int32_t))
#define PREPARE_HINT "make one with `phalanx data prepare`"

/* ---- opening ------------------------------------------------------------ */

static void shard_unmap(TokenShard *shard)
{
    if (shard->map)
        munmap(shard->map, shard->map_size);
    free(shard->path);
    memset(shard, 0, sizeof(*shard));
}

/* The checks that need only the header and the file size. */
static int check_header(const char *path, const int32_t *header, size_t size, char *err,
                        size_t err_len)
{
    if (header[0] != SHARD_MAGIC)
        return util_fail(err, err_len,
                         "%s: bad magic %d (expected %d): not a Phalanx/llm.c token shard; "
                         PREPARE_HINT, path, header[0], SHARD_MAGIC);
    if (header[1] != SHARD_VERSION)
        return util_fail(err, err_len,
                         "%s: unsupported shard version %d (expected %d, uint16 tokens); "
                         "convert it or " PREPARE_HINT, path, header[1], SHARD_VERSION);
    if (header[2] < 0)
        return util_fail(err, err_len, "%s: negative token count %d in the header: the file is "
                         "corrupt; " PREPARE_HINT " again", path, header[2]);
    size_t expected = HEADER_BYTES + 2 * (size_t)header[2];
    if (size != expected)
        return util_fail(err, err_len,
                         "%s: file is %zu bytes but its header promises %d tokens (%zu bytes): "
                         "the file is truncated or was still being written; " PREPARE_HINT
                         " again", path, size, header[2], expected);
    return 0;
}

/* Every token below vocab; reports the first one that is not. */
static int check_tokens(const TokenShard *shard, int vocab, char *err, size_t err_len)
{
    for (size_t i = 0; i < shard->count; i++) {
        if (shard->tokens[i] >= vocab)
            return util_fail(err, err_len,
                             "%s: token %zu is %u, outside the vocabulary (vocab %d): the shard "
                             "was made with another tokenizer; use a model with a larger vocab "
                             "or " PREPARE_HINT, shard->path, i, (unsigned)shard->tokens[i],
                             vocab);
    }
    return 0;
}

static int shard_map(TokenShard *shard, const char *path, int vocab, char *err,
                     size_t err_len)
{
    memset(shard, 0, sizeof(*shard));
    shard->path = strdup(path);
    if (!shard->path)
        return util_fail(err, err_len, "%s: out of memory", path);
    /* O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer,
     * deaf to SIGTERM; fstat then refuses anything but a regular file. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return util_fail(err, err_len, "%s: cannot open: %s; check the path or " PREPARE_HINT,
                         path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int saved = errno;
        close(fd);
        return util_fail(err, err_len, "%s: cannot stat: %s", path, strerror(saved));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return util_fail(err, err_len, "%s: not a regular file (%s); give a shard file, or a "
                         "pattern such as DIR/train_*.bin for a directory of shards", path,
                         util_file_kind(st.st_mode));
    }
    size_t size = (size_t)st.st_size;
    if (size < HEADER_BYTES) {
        close(fd);
        return util_fail(err, err_len,
                         "%s: only %zu bytes, shorter than the %zu-byte shard header: the file is "
                         "truncated or not a token shard; " PREPARE_HINT, path, size,
                         (size_t)HEADER_BYTES);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int saved = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED)
        return util_fail(err, err_len, "%s: mmap failed: %s", path, strerror(saved));
    shard->map = map;
    shard->map_size = size;
    int32_t header[SHARD_HEADER_INTS];
    memcpy(header, map, HEADER_BYTES);
    if (check_header(path, header, size, err, err_len) != 0)
        return -1;
    shard->tokens = (const uint16_t *)((const char *)map + HEADER_BYTES);
    shard->count = (size_t)header[2];
    return check_tokens(shard, vocab, err, err_len);
}

static int add_shard(TokenData *data, const char *path, int vocab, char *err, size_t err_len)
{
    TokenShard *grown = realloc(data->shards, (data->shard_count + 1) * sizeof(*grown));
    if (!grown)
        return util_fail(err, err_len, "%s: out of memory", path);
    data->shards = grown;
    TokenShard *shard = &data->shards[data->shard_count++];
    if (shard_map(shard, path, vocab, err, err_len) != 0)
        return -1; /* counted, so tokendata_close() releases what it holds */
    data->token_count += shard->count;
    return 0;
}

static int has_glob_chars(const char *s)
{
    return strpbrk(s, "*?[") != NULL;
}

/* One item of the spec: a plain path, or a pattern that must match something. */
static int add_item(TokenData *data, const char *item, int vocab, char *err, size_t err_len)
{
    if (!has_glob_chars(item))
        return add_shard(data, item, vocab, err, err_len);
    glob_t matches;
    int rc = glob(item, GLOB_ERR, NULL, &matches); /* glob(3) sorts by name */
    if (rc == GLOB_NOMATCH)
        return util_fail(err, err_len, "%s: no files match this pattern; check the path or "
                         PREPARE_HINT, item);
    if (rc != 0)
        return util_fail(err, err_len, "%s: cannot expand the pattern (%s)", item,
                         rc == GLOB_NOSPACE ? "out of memory" : "read error");
    int status = 0;
    for (size_t i = 0; i < matches.gl_pathc && status == 0; i++)
        status = add_shard(data, matches.gl_pathv[i], vocab, err, err_len);
    globfree(&matches);
    return status;
}

static int open_items(TokenData *data, char *items, int vocab, char *err, size_t err_len)
{
    char *save = NULL;
    int any = 0;
    for (char *item = strtok_r(items, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        any = 1;
        if (add_item(data, item, vocab, err, err_len) != 0)
            return -1;
    }
    if (!any)
        return util_fail(err, err_len, "empty data spec: give shard paths or patterns, e.g. "
                         "data/fortunes/train_*.bin");
    return 0;
}

int tokendata_open(TokenData *data, const char *spec, int vocab, char *err, size_t err_len)
{
    memset(data, 0, sizeof(*data));
    if (vocab <= 0)
        return util_fail(err, err_len, "%s: vocab must be positive, got %d", spec, vocab);
    char *items = strdup(spec);
    if (!items)
        return util_fail(err, err_len, "%s: out of memory", spec);
    int status = open_items(data, items, vocab, err, err_len);
    free(items);
    if (status != 0)
        tokendata_close(data);
    return status;
}

void tokendata_close(TokenData *data)
{
    for (int i = 0; i < data->shard_count; i++)
        shard_unmap(&data->shards[i]);
    free(data->shards);
    memset(data, 0, sizeof(*data));
}

/* ---- windows ------------------------------------------------------------ */

/* Window k of a shard covers tokens [k * seq_len, k * seq_len + seq_len]. */
static size_t shard_windows(size_t count, int seq_len)
{
    return count > 0 ? (count - 1) / (size_t)seq_len : 0;
}

size_t tokendata_windows(const TokenData *data, int seq_len)
{
    if (seq_len <= 0)
        return 0;
    size_t windows = 0;
    for (int i = 0; i < data->shard_count; i++)
        windows += shard_windows(data->shards[i].count, seq_len);
    return windows;
}

void tokendata_window(const TokenData *data, int seq_len, size_t window, int *inputs,
                      int *targets)
{
    assert(seq_len > 0);
    for (int i = 0; i < data->shard_count; i++) {
        const TokenShard *shard = &data->shards[i];
        size_t windows = shard_windows(shard->count, seq_len);
        if (window >= windows) {
            window -= windows;
            continue;
        }
        const uint16_t *start = shard->tokens + window * (size_t)seq_len;
        for (int t = 0; t < seq_len; t++) {
            inputs[t] = start[t];
            targets[t] = start[t + 1];
        }
        return;
    }
    assert(!"tokendata_window: window id past the last window");
}

/* ---- sampler ------------------------------------------------------------ */

/*
 * The permutation of an epoch is a 4-round Feistel network over 2h-bit
 * integers (the smallest even width with 4^h >= n), walked in cycles until it
 * lands below n. Why this and not a shuffled array:
 *  - It costs O(1) memory and O(1) time per sample, so any rank can compute any
 *    global sample on its own, whatever the layout, without materialising or
 *    broadcasting a permutation of millions of windows.
 *  - A Feistel network is a bijection on [0, 4^h) whatever its round function
 *    (a round keeps the half it feeds to that function, so XORing the same value
 *    again undoes it), and with a pseudo-random round
 *    function four rounds give a pseudo-random permutation (Luby-Rackoff). The
 *    round function is Philox via rng_bits, keyed by (seed, RNG_SHUFFLE, epoch).
 *  - Cycle walking (re-applying the network while the result is >= n) restricts
 *    a permutation of a larger set to a permutation of [0, n): following the
 *    cycle through x must come back to x < n, so it stops at the first element
 *    of the cycle below n, and distinct x reach distinct results. Since
 *    4^h < 4n, it needs fewer than 4 steps on average.
 */
static uint64_t feistel(uint64_t seed, uint32_t stream, int half_bits, uint64_t x)
{
    uint64_t mask = (1ULL << half_bits) - 1; /* half_bits <= 32 */
    uint64_t left = x >> half_bits, right = x & mask;
    for (uint64_t round = 0; round < 4; round++) {
        uint64_t f = rng_bits(seed, RNG_SHUFFLE, stream, (round << 32) | right);
        uint64_t next = (left ^ f) & mask;
        left = right;
        right = next;
    }
    return (left << half_bits) | right;
}

size_t sampler_window(uint64_t seed, size_t window_count, uint64_t sample)
{
    assert(window_count > 0);
    uint64_t n = window_count;
    uint64_t epoch = sample / n;
    uint64_t x = sample % n;
    if (n == 1)
        return 0;
    int half_bits = 1;
    while (half_bits < 32 && (n - 1) >> (2 * half_bits) != 0)
        half_bits++;
    /* Epochs past 2^32 fold into the 32-bit stream id; no run gets near that. */
    uint32_t stream = (uint32_t)epoch ^ (uint32_t)(epoch >> 32);
    do
        x = feistel(seed, stream, half_bits, x);
    while (x >= n);
    return (size_t)x;
}

/* ---- writing ------------------------------------------------------------ */


/* Makes the rename durable: the directory entry is data too. */
static void fsync_parent(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

static int write_file(int fd, const uint16_t *tokens, size_t count)
{
    int32_t header[SHARD_HEADER_INTS] = {SHARD_MAGIC, SHARD_VERSION, (int32_t)count};
    if (util_write_all(fd, header, sizeof(header)) != 0)
        return -1;
    if (util_write_all(fd, tokens, count * sizeof(*tokens)) != 0)
        return -1;
    return fsync(fd);
}

/* Writes PATH.tmp, fsyncs it and renames it over PATH: a crash leaves either
 * the old file or the whole new one, never half a shard. */
int shard_write(const char *path, const uint16_t *tokens, size_t count, char *err,
                size_t err_len)
{
    if (count > INT32_MAX)
        return util_fail(err, err_len, "%s: %zu tokens do not fit one shard (at most %d); "
                         "split them over several shards", path, count, INT32_MAX);
    size_t tmp_len = strlen(path) + sizeof(".tmp");
    char *tmp = malloc(tmp_len);
    if (!tmp)
        return util_fail(err, err_len, "%s: out of memory", path);
    snprintf(tmp, tmp_len, "%s.tmp", path);
    int status = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        util_fail(err, err_len, "%s: cannot create: %s", tmp, strerror(errno));
    } else {
        int rc = write_file(fd, tokens, count);
        int saved = errno;
        if (close(fd) != 0 && rc == 0) {
            rc = -1;
            saved = errno;
        }
        if (rc == 0 && rename(tmp, path) != 0) {
            rc = -1;
            saved = errno;
        }
        if (rc == 0) {
            fsync_parent(path);
            status = 0;
        } else {
            util_fail(err, err_len, "%s: cannot write: %s", path, strerror(saved));
            unlink(tmp);
        }
    }
    free(tmp);
    return status;
}
