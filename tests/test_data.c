/* Token shards, windows and the sampler (runtime/data.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data.h"

#define VOCAB 256

typedef struct {
    char dir[256];
    char path[512]; /* scratch for path() */
    char err[1024];
} Fixture;

static int setup(void **state)
{
    Fixture *f = calloc(1, sizeof(*f));
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof(f->dir), "%s/test_data_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(f->dir))
        return -1;
    *state = f;
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    Fixture *f = *state;
    int rc = nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return rc;
}

static const char *path(Fixture *f, const char *name)
{
    snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, name);
    return f->path;
}

/* Shard NAME holding tokens first, first+1, ... (mod VOCAB). */
static void make_shard(Fixture *f, const char *name, size_t count, unsigned first)
{
    uint16_t *tokens = malloc((count + 1) * sizeof(*tokens));
    for (size_t i = 0; i < count; i++)
        tokens[i] = (uint16_t)((first + i) % VOCAB);
    int rc = shard_write(path(f, name), tokens, count, f->err, sizeof(f->err));
    if (rc != 0)
        print_error("shard_write: %s\n", f->err);
    assert_int_equal(rc, 0);
    free(tokens);
}

/* A file of `bytes` bytes whose header is (magic, version, count); zeros after it. */
static void make_raw(Fixture *f, const char *name, int32_t magic, int32_t version,
                     int32_t count, size_t bytes)
{
    char *buf = calloc(1, bytes + 12);
    int32_t header[3] = {magic, version, count};
    memcpy(buf, header, sizeof(header));
    FILE *fp = fopen(path(f, name), "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(buf, 1, bytes, fp), bytes);
    fclose(fp);
    free(buf);
}

static void assert_contains(const char *text, const char *part)
{
    if (!strstr(text, part))
        fail_msg("expected \"%s\" in the message: %s", part, text);
}

/* Opening `spec` fails, names every part, and leaves nothing behind. */
static void assert_open_fails(Fixture *f, const char *spec, const char *part1,
                              const char *part2)
{
    TokenData data;
    f->err[0] = '\0';
    assert_int_equal(tokendata_open(&data, spec, VOCAB, f->err, sizeof(f->err)), -1);
    assert_contains(f->err, part1);
    assert_contains(f->err, part2);
    assert_null(data.shards);
    assert_int_equal(data.shard_count, 0);
}

static void test_open_valid_and_window_contents(void **state)
{
    Fixture *f = *state;
    make_shard(f, "a.bin", 100, 0);
    make_shard(f, "b.bin", 50, 100);
    char spec[1100];
    snprintf(spec, sizeof(spec), "%s/a.bin,%s/b.bin", f->dir, f->dir);
    TokenData data;
    assert_int_equal(tokendata_open(&data, spec, VOCAB, f->err, sizeof(f->err)), 0);
    assert_int_equal(data.shard_count, 2);
    assert_int_equal(data.token_count, 150);
    assert_int_equal(data.shards[1].count, 50);
    assert_int_equal(data.shards[1].tokens[0], 100);
    assert_int_equal(tokendata_windows(&data, 8), 99 / 8 + 49 / 8);

    int inputs[8], targets[8];
    tokendata_window(&data, 8, 0, inputs, targets);
    for (int t = 0; t < 8; t++) {
        assert_int_equal(inputs[t], t);
        assert_int_equal(targets[t], t + 1);
    }
    tokendata_window(&data, 8, 12, inputs, targets); /* first window of b */
    assert_int_equal(inputs[0], 100);
    assert_int_equal(targets[7], 108);
    tokendata_close(&data);
    assert_null(data.shards);
}

static void test_windows_never_cross_shards(void **state)
{
    Fixture *f = *state;
    make_shard(f, "s_0.bin", 37, 0);   /* values 0..36 */
    make_shard(f, "s_1.bin", 64, 100); /* values 100..163 */
    make_shard(f, "s_2.bin", 5, 200);  /* too short for one window of 8 */
    make_shard(f, "s_3.bin", 9, 208);  /* exactly one window */
    TokenData data;
    assert_int_equal(tokendata_open(&data, path(f, "s_*.bin"), VOCAB, f->err,
                                    sizeof(f->err)), 0);
    size_t windows = tokendata_windows(&data, 8);
    assert_int_equal(windows, 36 / 8 + 63 / 8 + 0 + 1);
    int inputs[8], targets[8];
    for (size_t w = 0; w < windows; w++) {
        tokendata_window(&data, 8, w, inputs, targets);
        /* one shard: consecutive values, start on a multiple of seq_len in it */
        assert_int_equal(targets[7], inputs[0] + 8);
        assert_int_equal(inputs[0] / 100, targets[7] / 100);
        assert_int_equal((inputs[0] % 100) % 8, 0);
        for (int t = 0; t < 8; t++)
            assert_int_equal(targets[t], inputs[t] + 1);
    }
    tokendata_window(&data, 8, windows - 1, inputs, targets);
    assert_int_equal(inputs[0], 208);
    tokendata_close(&data);
}

static void test_windows_zero_when_sequence_too_long(void **state)
{
    Fixture *f = *state;
    make_shard(f, "short.bin", 100, 0);
    TokenData data;
    assert_int_equal(tokendata_open(&data, path(f, "short.bin"), VOCAB, f->err,
                                    sizeof(f->err)), 0);
    assert_int_equal(tokendata_windows(&data, 99), 1); /* 99 inputs + 1 target = 100 */
    assert_int_equal(tokendata_windows(&data, 100), 0);
    assert_int_equal(tokendata_windows(&data, 1000), 0);
    tokendata_close(&data);
}

static void test_glob_is_sorted_and_lists_combine(void **state)
{
    Fixture *f = *state;
    make_shard(f, "train_002.bin", 10, 20);
    make_shard(f, "train_000.bin", 10, 0);
    make_shard(f, "train_001.bin", 10, 10);
    make_shard(f, "val_000.bin", 10, 50);
    char spec[1100];
    snprintf(spec, sizeof(spec), "%s/val_000.bin,%s/train_*.bin", f->dir, f->dir);
    TokenData data;
    assert_int_equal(tokendata_open(&data, spec, VOCAB, f->err, sizeof(f->err)), 0);
    assert_int_equal(data.shard_count, 4);
    assert_int_equal(data.shards[0].tokens[0], 50);
    for (int i = 1; i < 4; i++)
        assert_int_equal(data.shards[i].tokens[0], 10 * (i - 1));
    tokendata_close(&data);
}

static void test_bad_magic(void **state)
{
    Fixture *f = *state;
    make_raw(f, "magic.bin", 12345, SHARD_VERSION, 0, 1024);
    assert_open_fails(f, path(f, "magic.bin"), "bad magic 12345", "phalanx data prepare");
    assert_open_fails(f, path(f, "magic.bin"), f->path, "20240520");
}

static void test_bad_version(void **state)
{
    Fixture *f = *state;
    make_raw(f, "version.bin", SHARD_MAGIC, 2, 0, 1024);
    assert_open_fails(f, path(f, "version.bin"), f->path, "version 2");
}

static void test_truncated_file(void **state)
{
    Fixture *f = *state;
    make_raw(f, "truncated.bin", SHARD_MAGIC, SHARD_VERSION, 100, 1024 + 2 * 50);
    assert_open_fails(f, path(f, "truncated.bin"), f->path, "truncated");
    assert_open_fails(f, path(f, "truncated.bin"), "100 tokens", "1124 bytes");
    make_raw(f, "long.bin", SHARD_MAGIC, SHARD_VERSION, 10, 1024 + 2 * 11);
    assert_open_fails(f, path(f, "long.bin"), f->path, "10 tokens");
}

static void test_header_shorter_than_1024_bytes(void **state)
{
    Fixture *f = *state;
    make_raw(f, "stub.bin", SHARD_MAGIC, SHARD_VERSION, 0, 100);
    assert_open_fails(f, path(f, "stub.bin"), f->path, "header");
    make_raw(f, "empty.bin", 0, 0, 0, 0);
    assert_open_fails(f, path(f, "empty.bin"), f->path, "only 0 bytes");
}

static void test_missing_file(void **state)
{
    Fixture *f = *state;
    assert_open_fails(f, path(f, "nowhere.bin"), f->path, "No such file");
}

static void test_glob_matching_nothing(void **state)
{
    Fixture *f = *state;
    make_shard(f, "train_000.bin", 10, 0);
    char spec[1100];
    snprintf(spec, sizeof(spec), "%s/train_000.bin,%s/vla_*.bin", f->dir, f->dir);
    assert_open_fails(f, spec, path(f, "vla_*.bin"), "no files match");
}

static void test_token_outside_vocab(void **state)
{
    Fixture *f = *state;
    uint16_t tokens[] = {1, 2, 3, 255, 300, 5, 400};
    assert_int_equal(shard_write(path(f, "wide.bin"), tokens, 7, f->err, sizeof(f->err)), 0);
    assert_open_fails(f, path(f, "wide.bin"), f->path, "token 4 is 300");
    assert_open_fails(f, path(f, "wide.bin"), "vocab 256", "tokenizer");
    TokenData data;
    assert_int_equal(tokendata_open(&data, path(f, "wide.bin"), 300, f->err,
                                    sizeof(f->err)), -1); /* a token equal to vocab */
    assert_contains(f->err, "token 4 is 300");
    assert_int_equal(tokendata_open(&data, path(f, "wide.bin"), 301, f->err,
                                    sizeof(f->err)), -1);
    assert_contains(f->err, "token 6 is 400");
    assert_int_equal(tokendata_open(&data, path(f, "wide.bin"), 401, f->err,
                                    sizeof(f->err)), 0);
    tokendata_close(&data);
}

static int mapped(const char *file)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[4096];
    int found = 0;
    while (maps && fgets(line, sizeof(line), maps))
        found |= strstr(line, file) != NULL;
    if (maps)
        fclose(maps);
    return found;
}

static void test_failure_leaves_nothing_mapped(void **state)
{
    Fixture *f = *state;
    make_shard(f, "good.bin", 100, 0);
    make_raw(f, "bad.bin", 7, SHARD_VERSION, 0, 1024);
    char spec[1100];
    snprintf(spec, sizeof(spec), "%s/good.bin,%s/bad.bin", f->dir, f->dir);
    TokenData data;
    assert_int_equal(tokendata_open(&data, spec, VOCAB, f->err, sizeof(f->err)), -1);
    assert_contains(f->err, path(f, "bad.bin"));
    assert_false(mapped(path(f, "good.bin")));

    assert_int_equal(tokendata_open(&data, path(f, "good.bin"), VOCAB, f->err,
                                    sizeof(f->err)), 0);
    assert_true(mapped(f->path)); /* the check above can see a mapping */
    tokendata_close(&data);
    assert_false(mapped(f->path));
}

static void test_shard_write_format(void **state)
{
    Fixture *f = *state;
    uint16_t tokens[3] = {7, 65535, 0};
    assert_int_equal(shard_write(path(f, "w.bin"), tokens, 3, f->err, sizeof(f->err)), 0);
    FILE *fp = fopen(f->path, "rb");
    assert_non_null(fp);
    int32_t header[SHARD_HEADER_INTS];
    uint16_t read_back[4];
    assert_int_equal(fread(header, sizeof(int32_t), SHARD_HEADER_INTS, fp), SHARD_HEADER_INTS);
    assert_int_equal(fread(read_back, sizeof(uint16_t), 4, fp), 3);
    fclose(fp);
    assert_int_equal(header[0], SHARD_MAGIC);
    assert_int_equal(header[1], SHARD_VERSION);
    assert_int_equal(header[2], 3);
    for (int i = 3; i < SHARD_HEADER_INTS; i++)
        assert_int_equal(header[i], 0);
    assert_memory_equal(read_back, tokens, sizeof(tokens));
    assert_int_equal(access(path(f, "w.bin.tmp"), F_OK), -1); /* no temporary left */

    assert_int_equal(shard_write(path(f, "no/such/dir/w.bin"), tokens, 3, f->err,
                                 sizeof(f->err)), -1);
    assert_contains(f->err, f->path);
}

/* ---- sampler ------------------------------------------------------------ */

/* Epoch `epoch` of the sampler with `seed` visits every window of n once. */
static void assert_permutation(uint64_t seed, size_t n, uint64_t epoch)
{
    unsigned char *seen = calloc(n, 1);
    for (uint64_t i = 0; i < n; i++) {
        size_t w = sampler_window(seed, n, epoch * n + i);
        if (w >= n || seen[w])
            fail_msg("seed %llu n %zu epoch %llu: window %zu out of range or repeated",
                     (unsigned long long)seed, n, (unsigned long long)epoch, w);
        seen[w] = 1;
    }
    free(seen);
}

static void test_sampler_is_a_permutation(void **state)
{
    (void)state;
    const size_t sizes[] = {1, 2, 3, 4, 5, 7, 16, 17, 1000, 4096, 4097, 65537};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        for (uint64_t seed = 0; seed < 3; seed++)
            for (uint64_t epoch = 0; epoch < 3; epoch++)
                assert_permutation(seed, sizes[i], epoch);
    assert_permutation(42, 1000, 1ULL << 33); /* epochs past 32 bits */
}

static int same_epoch(uint64_t seed_a, uint64_t epoch_a, uint64_t seed_b, uint64_t epoch_b,
                      size_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (sampler_window(seed_a, n, epoch_a * n + i) != sampler_window(seed_b, n, epoch_b * n + i))
            return 0;
    return 1;
}

static void test_sampler_depends_on_seed_and_epoch_only(void **state)
{
    (void)state;
    const size_t sizes[] = {1000, 4097};
    for (int i = 0; i < 2; i++) {
        size_t n = sizes[i];
        assert_true(same_epoch(1, 0, 1, 0, n)); /* deterministic */
        assert_false(same_epoch(1, 0, 2, 0, n));
        assert_false(same_epoch(1, 0, 1, 1, n));
        assert_false(same_epoch(1, 1, 1, 2, n));
    }
    size_t first = sampler_window(7, 1000, 123456789);
    assert_int_equal(sampler_window(7, 1000, 123456789), first);
}

/* Not the identity nor a near-identity, and every position is roughly
 * uniform over the windows across epochs. */
static void test_sampler_shuffles(void **state)
{
    (void)state;
    size_t fixed = 0;
    for (uint64_t i = 0; i < 1000; i++)
        fixed += sampler_window(3, 1000, i) == i;
    assert_true(fixed < 10); /* a random permutation has 1 on average */

    enum { N = 7, EPOCHS = 14000 };
    for (uint64_t position = 0; position < N; position++) {
        unsigned counts[N] = {0};
        for (uint64_t e = 0; e < EPOCHS; e++)
            counts[sampler_window(11, N, e * N + position)]++;
        for (int w = 0; w < N; w++)
            if (counts[w] < EPOCHS / N * 8 / 10 || counts[w] > EPOCHS / N * 12 / 10)
                fail_msg("position %llu lands on window %d %u times in %d epochs",
                         (unsigned long long)position, w, counts[w], EPOCHS);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_valid_and_window_contents, setup, teardown),
        cmocka_unit_test_setup_teardown(test_windows_never_cross_shards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_windows_zero_when_sequence_too_long, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_glob_is_sorted_and_lists_combine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_magic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_shorter_than_1024_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_glob_matching_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_outside_vocab, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_leaves_nothing_mapped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shard_write_format, setup, teardown),
        cmocka_unit_test(test_sampler_is_a_permutation),
        cmocka_unit_test(test_sampler_depends_on_seed_and_epoch_only),
        cmocka_unit_test(test_sampler_shuffles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
