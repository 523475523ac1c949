/* Checkpoints in one process (checkpoint/checkpoint.h): round trips in both
 * modes, the async hand-over, pruning, and every bad input the reader and
 * ckpt_open() must refuse with a message. Multi-rank resharding, h5py,
 * crashes and full disks are in test_checkpoint.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "ckpt_tensors.h"
#include "comm.h"
#include "stateful.h"

#define TENSORS 3

typedef struct {
    char dir[256];
    char tier2[512], tier1[512], path[600];
    char err[1024];
    Comm *world;
    CkptTensor t[TENSORS];
} Fixture;

static const CkptModel MODEL = {256, 2, 2, 32, 32};

static size_t numel(const CkptTensor *t)
{
    return (size_t)t->shape[0] * (size_t)(t->ndim == 2 ? t->shape[1] : 1);
}

/* Distinct values per tensor, kind, version and element. */
static void fill(CkptTensor *t, int count, int version)
{
    for (int k = 0; k < count; k++)
        for (size_t i = 0; i < numel(&t[k]); i++) {
            t[k].param[i] = (float)(version * 100000 + k * 10000 + (int)i);
            t[k].m[i] = -t[k].param[i];
            t[k].v[i] = t[k].param[i] + 0.5f;
        }
}

static void zero(CkptTensor *t, int count)
{
    for (int k = 0; k < count; k++) {
        memset(t[k].param, 0, numel(&t[k]) * sizeof(float));
        memset(t[k].m, 0, numel(&t[k]) * sizeof(float));
        memset(t[k].v, 0, numel(&t[k]) * sizeof(float));
    }
}

static void assert_version(const CkptTensor *t, int count, int version)
{
    for (int k = 0; k < count; k++)
        for (size_t i = 0; i < numel(&t[k]); i++) {
            float p = (float)(version * 100000 + k * 10000 + (int)i);
            assert_true(t[k].param[i] == p && t[k].m[i] == -p && t[k].v[i] == p + 0.5f);
        }
}

static int setup(void **state)
{
    Fixture *f = calloc(1, sizeof(*f));
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof(f->dir), "%s/test_ckpt_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->tier2, sizeof(f->tier2), "%s/ckpt", f->dir);
    snprintf(f->tier1, sizeof(f->tier1), "%s/shm", f->dir);
    f->world = comm_world_init(NULL, NULL, f->err, sizeof(f->err));
    test_tensor_make(&f->t[0], "wte", 16, 8, 0, 1);
    test_tensor_make(&f->t[1], "h.0.attn.qkv.weight", 24, 8, 0, 1);
    test_tensor_make(&f->t[2], "lnf.bias", 8, 0, 0, 1);
    *state = f;
    return f->world ? 0 : -1;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    Fixture *f = *state;
    for (int k = 0; k < TENSORS; k++)
        test_tensor_free(&f->t[k]);
    comm_world_finalize(f->world);
    int rc = nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return rc;
}

static CkptOptions options(Fixture *f, CkptMode mode, long every, int keep)
{
    return (CkptOptions){.dir = f->tier2, .memory_dir = f->tier1, .every = every, .keep = keep,
                         .mode = mode};
}

static CkptRunState run_state_without(int64_t step, const char *skip)
{
    CkptRunState s;
    memset(&s, 0, sizeof(s));
    s.step = step;
    s.sample_cursor = step * 32;
    s.seed = 0x8000000000000001ull; // needs all 64 bits
    s.model = MODEL;
    TestParts parts = {.optimizer = "adamw", .lr = 3e-4, .beta2 = 0.95, .schedule = "wsd",
                       .warmup_steps = 5, .total_steps = 100, .train_samples = 3200,
                       .global_batch = 32, .micro_batch = 4};
    assert_int_equal(test_parts_put(&s, &parts, skip), 0);
    s.writer = (CkptLayout){1, 1, 1, 1};
    ckpt_state_set(&s, "batch.noise_scale", 12.25);
    return s;
}

static CkptRunState run_state(int64_t step)
{
    return run_state_without(step, NULL);
}

static const char *text_of(const CkptRunState *s, const char *key)
{
    const char *text = NULL;
    assert_true(ckpt_state_get_str(s, key, &text));
    return text;
}

static double f64_of(const CkptRunState *s, const char *key)
{
    double value = NAN;
    assert_true(ckpt_state_get_f64(s, key, &value));
    return value;
}

static int64_t i64_of(const CkptRunState *s, const char *key)
{
    int64_t value = -1;
    assert_true(ckpt_state_get_i64(s, key, &value));
    return value;
}

/* Runs steps 1..steps, checkpointing when due (the protocol of checkpoint.h). */
static void train(Fixture *f, CkptOptions o, int steps)
{
    Checkpointer *ck = ckpt_open(&o, f->world, f->t, TENSORS, f->err, sizeof(f->err));
    assert_non_null(ck);
    for (int s = 1; s <= steps; s++) {
        ckpt_wait_copied(ck);
        fill(f->t, TENSORS, s);
        CkptRunState state = run_state(s);
        if (ckpt_due(ck, s))
            assert_int_equal(ckpt_snapshot(ck, &state, f->err, sizeof(f->err)), 0);
    }
    assert_int_equal(ckpt_stats(ck).snapshots, steps / o.every);
    CkptStats stats;
    assert_int_equal(ckpt_close(ck, true, &stats), 0);
    assert_int_equal(stats.snapshots, steps / o.every);
    assert_int_equal(stats.committed[1], steps / o.every);
}

static const char *step_path(Fixture *f, int step)
{
    snprintf(f->path, sizeof(f->path), "%s/step_%08d", f->tier2, step);
    return f->path;
}

static void test_sync_round_trip(void **state)
{
    Fixture *f = *state;
    train(f, options(f, CKPT_SYNC, 2, 3), 4);
    zero(f->t, TENSORS);
    CkptRunState s;
    assert_int_equal(ckpt_load(step_path(f, 4), f->t, TENSORS, &MODEL, NULL, &s, f->err,
                               sizeof(f->err)),
                     CKPT_OK);
    assert_version(f->t, TENSORS, 4);
    CkptRunState want = run_state(4);
    assert_int_equal(s.format_version, CKPT_FORMAT_VERSION);
    assert_int_equal(s.step, 4);
    assert_int_equal(s.sample_cursor, want.sample_cursor);
    assert_true(s.seed == want.seed);
    assert_string_equal(text_of(&s, "optimizer"), "adamw");
    assert_string_equal(text_of(&s, "schedule"), "wsd");
    assert_true(f64_of(&s, "lr") == f64_of(&want, "lr") &&
                f64_of(&s, "beta2") == f64_of(&want, "beta2"));
    assert_int_equal(i64_of(&s, "warmup_steps"), 5);
    assert_int_equal(i64_of(&s, "total_steps"), 100);
    assert_int_equal(i64_of(&s, "train_samples"), 3200);
    assert_memory_equal(&s.model, &MODEL, sizeof(MODEL));
    assert_true(ckpt_state_get(&s, "batch.noise_scale", 0) == 12.25);
    // the older one is still there, with its own version
    assert_int_equal(ckpt_load(step_path(f, 2), f->t, TENSORS, NULL, NULL, &s, f->err,
                               sizeof(f->err)),
                     CKPT_OK);
    assert_version(f->t, TENSORS, 2);
}

/* The sidecar must save the version handed over, though the buffers change
 * right after ckpt_wait_copied() returns. */
static void test_async_saves_the_handed_version(void **state)
{
    Fixture *f = *state;
    CkptOptions o = options(f, CKPT_ASYNC, 3, 2);
    train(f, o, 7); // checkpoints at 3 and 6; step 7 rewrites the buffers
    zero(f->t, TENSORS);
    CkptRunState s;
    assert_int_equal(ckpt_load(step_path(f, 6), f->t, TENSORS, &MODEL, NULL, &s, f->err,
                               sizeof(f->err)),
                     CKPT_OK);
    assert_version(f->t, TENSORS, 6);
    assert_int_equal(s.step, 6);
}

static void test_keep_prunes_and_close_cleans_tier1(void **state)
{
    Fixture *f = *state;
    train(f, options(f, CKPT_ASYNC, 1, 2), 5);
    CkptEntry *entries;
    int count;
    assert_int_equal(ckpt_list(f->tier2, &entries, &count, f->err, sizeof(f->err)), 0);
    assert_int_equal(count, 2);
    assert_int_equal(entries[0].step, 4);
    assert_int_equal(entries[1].step, 5);
    assert_int_equal(entries[1].status, CKPT_OK);
    assert_true(entries[1].bytes > 0);
    free(entries);
    struct stat st;
    assert_int_not_equal(stat(f->tier1, &st), 0); // tier 1 is gone after a good run
}

/* A source filled asynchronously (a GPU rank's device-to-host copy): the
 * checkpointer waits for it before reading the tensors; when that wait fails
 * the version is not committed, and the next one is. */
typedef struct {
    int calls, fail_on;
} SourceWait;

static int counted_wait(void *context, char *err, size_t err_len)
{
    SourceWait *w = context;
    if (++w->calls != w->fail_on)
        return 0;
    snprintf(err, err_len, "injected copy failure");
    return -1;
}

static void check_source_wait(Fixture *f, CkptMode mode)
{
    CkptOptions o = options(f, mode, 1, 5);
    Checkpointer *ck = ckpt_open(&o, f->world, f->t, TENSORS, f->err, sizeof(f->err));
    assert_non_null(ck);
    SourceWait wait = {0, 2};
    ckpt_set_source_wait(ck, counted_wait, &wait);
    for (int s = 1; s <= 3; s++) {
        ckpt_wait_copied(ck);
        fill(f->t, TENSORS, s);
        CkptRunState state = run_state(s);
        assert_int_equal(ckpt_snapshot(ck, &state, f->err, sizeof(f->err)), 0);
    }
    CkptStats stats;
    ckpt_close(ck, true, &stats);
    assert_int_equal(wait.calls, 3);
    assert_int_equal(stats.committed[1], 2);
    assert_int_equal(stats.failed[1], 1);
    CkptRunState s;
    zero(f->t, TENSORS);
    assert_int_equal(ckpt_load(step_path(f, 3), f->t, TENSORS, &MODEL, NULL, &s, f->err,
                               sizeof(f->err)),
                     CKPT_OK);
    assert_version(f->t, TENSORS, 3);
    assert_int_not_equal(
        ckpt_load(step_path(f, 2), f->t, TENSORS, &MODEL, NULL, &s, f->err, sizeof(f->err)),
                  CKPT_OK);
}

static void test_source_wait_sync(void **state)
{
    check_source_wait(*state, CKPT_SYNC);
}

static void test_source_wait_async(void **state)
{
    check_source_wait(*state, CKPT_ASYNC);
}

static void test_model_mismatch_names_the_dimensions(void **state)
{
    Fixture *f = *state;
    train(f, options(f, CKPT_SYNC, 1, 1), 1);
    CkptModel other = MODEL;
    other.dim = 64;
    other.layers = 3;
    CkptRunState s;
    assert_int_equal(ckpt_load(step_path(f, 1), f->t, TENSORS, &other, NULL, &s, f->err,
                               sizeof(f->err)),
                     CKPT_MISMATCH);
    assert_non_null(strstr(f->err, "checkpoint has --layers 2 --dim 32, this run has --layers 3 "
                                   "--dim 64"));
}

static void test_tensor_shape_mismatch(void **state)
{
    Fixture *f = *state;
    train(f, options(f, CKPT_SYNC, 1, 1), 1);
    CkptTensor wider;
    test_tensor_make(&wider, "wte", 16, 9, 0, 1);
    CkptRunState s;
    assert_int_equal(ckpt_load(step_path(f, 1), &wider, 1, NULL, NULL, &s, f->err, sizeof(f->err)),
                     CKPT_MISMATCH);
    assert_non_null(strstr(f->err, "tensor 'wte'"));
    snprintf(wider.name, sizeof(wider.name), "h.9.attn.qkv.weight");
    assert_int_equal(ckpt_load(step_path(f, 1), &wider, 1, NULL, NULL, &s, f->err, sizeof(f->err)),
                     CKPT_MISMATCH);
    assert_non_null(strstr(f->err, "no tensor 'h.9.attn.qkv.weight'"));
    // a 1-D bias asked for as [8, 1]: said "[8, 1], this run [8, 1]"
    snprintf(wider.name, sizeof(wider.name), "lnf.bias");
    wider.shape[0] = 8;
    wider.shape[1] = 1;
    assert_int_equal(ckpt_load(step_path(f, 1), &wider, 1, NULL, NULL, &s, f->err, sizeof(f->err)),
                     CKPT_MISMATCH);
    assert_non_null(strstr(f->err, "the checkpoint has shape [8], this run [8, 1]"));
    test_tensor_free(&wider);
}

static void test_missing_and_partial_checkpoints(void **state)
{
    Fixture *f = *state;
    CkptRunState s;
    assert_int_equal(ckpt_load(step_path(f, 7), f->t, TENSORS, NULL, NULL, &s, f->err,
                               sizeof(f->err)),
                     CKPT_NOT_FOUND);
    assert_non_null(strstr(f->err, "no such file or directory"));
    train(f, options(f, CKPT_SYNC, 1, 2), 2);
    char index[700];
    snprintf(index, sizeof(index), "%s/index.h5", step_path(f, 2));
    assert_int_equal(unlink(index), 0);
    assert_int_equal(ckpt_load(step_path(f, 2), f->t, TENSORS, NULL, NULL, &s, f->err,
                               sizeof(f->err)),
                     CKPT_INCOMPLETE);
    assert_non_null(strstr(f->err, "never committed"));
    assert_int_equal(ckpt_verify(step_path(f, 2), NULL, stderr, f->err, sizeof(f->err)),
                     CKPT_INCOMPLETE);
    // a shard cut short: the index knows its size
    char shard[700];
    snprintf(shard, sizeof(shard), "%s/rank_00000.h5", step_path(f, 1));
    assert_int_equal(truncate(shard, 1000), 0);
    assert_int_equal(ckpt_load(step_path(f, 1), f->t, TENSORS, NULL, NULL, &s, f->err,
                               sizeof(f->err)),
                     CKPT_CORRUPT);
    assert_non_null(strstr(f->err, "truncated"));
}

/* "latest": the newest complete checkpoint; a damaged one is skipped. */
static void test_resume_falls_back(void **state)
{
    Fixture *f = *state;
    CkptOptions o = options(f, CKPT_SYNC, 1, 3);
    o.memory_dir = "none";
    train(f, o, 3);
    char path[1024], shard[700];
    CkptRunState s;
    zero(f->t, TENSORS);
    CkptReadBytes read = {1, 1, 1};
    assert_int_equal(ckpt_resume(f->world, &o, "latest", f->t, TENSORS, &MODEL, &s, path,
                                 sizeof(path), &read, f->err, sizeof(f->err)),
                     CKPT_OK);
    assert_int_equal(s.step, 3);
    // every tensor's params, m and v, read from the durable tier
    uint64_t floats = 0;
    for (int k = 0; k < TENSORS; k++)
        floats += 3 * (uint64_t)f->t[k].shape[0] *
                  (uint64_t)(f->t[k].ndim == 2 ? f->t[k].shape[1] : 1);
    assert_int_equal(read.durable, floats * sizeof(float));
    assert_int_equal(read.host_memory, 0);
    assert_int_equal(read.other_hosts, 0);
    snprintf(shard, sizeof(shard), "%s/rank_00000.h5", step_path(f, 3));
    assert_int_equal(truncate(shard, 5000), 0);
    assert_int_equal(ckpt_resume(f->world, &o, "latest", f->t, TENSORS, &MODEL, &s, path,
                                 sizeof(path), NULL, f->err, sizeof(f->err)),
                     CKPT_OK);
    assert_int_equal(s.step, 2);
    assert_string_equal(path, step_path(f, 2));
    assert_version(f->t, TENSORS, 2);
    // a model that does not fit is not a reason to fall back
    CkptModel other = MODEL;
    other.heads = 4;
    assert_int_equal(ckpt_resume(f->world, &o, "latest", f->t, TENSORS, &other, &s, path,
                                 sizeof(path), NULL, f->err, sizeof(f->err)),
                     CKPT_MISMATCH);
    assert_non_null(strstr(f->err, "--heads 2"));
}

static void test_resume_with_nothing_there(void **state)
{
    Fixture *f = *state;
    CkptOptions o = options(f, CKPT_SYNC, 1, 1);
    char path[1024];
    CkptRunState s;
    assert_int_equal(ckpt_resume(f->world, &o, "latest", f->t, TENSORS, &MODEL, &s, path,
                                 sizeof(path), NULL, f->err, sizeof(f->err)),
                     CKPT_NOT_FOUND);
    assert_non_null(strstr(f->err, "no complete checkpoint"));
}

static void test_open_rejects_bad_inputs(void **state)
{
    Fixture *f = *state;
    CkptOptions o = options(f, CKPT_ASYNC, 1, 1);
    // two replicas claimed, but this world has one rank: half of wte is unowned
    f->t[0].replica_count = 2;
    assert_null(ckpt_open(&o, f->world, f->t, TENSORS, f->err, sizeof(f->err)));
    assert_non_null(strstr(f->err, "tensor 'wte': rows [8, 16) are written by no rank"));
    f->t[0].replica_count = 1;
    // a --ckpt-dir under a regular file cannot be created, even by root
    char file[600];
    snprintf(file, sizeof(file), "%s/plain", f->dir);
    fclose(fopen(file, "w"));
    snprintf(f->tier2, sizeof(f->tier2), "%s/plain/ckpt", f->dir);
    assert_null(ckpt_open(&o, f->world, f->t, TENSORS, f->err, sizeof(f->err)));
    assert_non_null(strstr(f->err, "--ckpt-dir"));
    o.every = 0;
    assert_null(ckpt_open(&o, f->world, f->t, TENSORS, f->err, sizeof(f->err)));
    assert_non_null(strstr(f->err, "--ckpt-every is 0"));
}

/* ---- issue 14: never follow a link the checkpoint writer did not make ---- */

static void write_text(const char *path, const char *text)
{
    FILE *file = fopen(path, "w");
    assert_non_null(file);
    fputs(text, file);
    assert_int_equal(fclose(file), 0);
}

static void assert_text(const char *path, const char *text)
{
    char got[64] = "";
    FILE *file = fopen(path, "r");
    assert_non_null(file);
    size_t n = fread(got, 1, sizeof(got) - 1, file);
    fclose(file);
    got[n] = '\0';
    assert_string_equal(got, text);
}

/* Links planted at a shard's name in both tiers are replaced by the shard,
 * never written through. */
static void test_shard_link_is_not_written_through(void **state)
{
    Fixture *f = *state;
    char victim[600], step[700], link[800];
    snprintf(victim, sizeof(victim), "%s/victim", f->dir);
    write_text(victim, "precious");
    const char *tiers[] = {f->tier2, f->tier1};
    for (int t = 0; t < 2; t++) {
        snprintf(step, sizeof(step), "%s/step_00000002", tiers[t]);
        snprintf(link, sizeof(link), "%s/rank_00000.h5", step);
        assert_int_equal(mkdir(tiers[t], 0700), 0);
        assert_int_equal(mkdir(step, 0700), 0);
        assert_int_equal(symlink(victim, link), 0);
    }
    train(f, options(f, CKPT_SYNC, 2, 3), 2);
    assert_text(victim, "precious");
    snprintf(link, sizeof(link), "%s/rank_00000.h5", step_path(f, 2));
    struct stat st;
    assert_int_equal(lstat(link, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    CkptRunState s;
    assert_int_equal(ckpt_load(step_path(f, 2), f->t, TENSORS, NULL, NULL, &s, f->err,
                               sizeof(f->err)),
                     CKPT_OK);
}

/* A step directory that is a link, in either tier, is not pruned: what it
 * points to keeps every file, even those named like a checkpoint's. */
static void test_pruning_leaves_linked_steps_alone(void **state)
{
    Fixture *f = *state;
    char victim[600], file[700], link[700];
    snprintf(victim, sizeof(victim), "%s/victim", f->dir);
    assert_int_equal(mkdir(victim, 0700), 0);
    const char *names[] = {"index.h5", "rank_00000.h5", "precious"};
    for (int i = 0; i < 3; i++) {
        snprintf(file, sizeof(file), "%s/%s", victim, names[i]);
        write_text(file, names[i]);
    }
    const char *tiers[] = {f->tier2, f->tier1};
    for (int t = 0; t < 2; t++) {
        snprintf(link, sizeof(link), "%s/step_00000001", tiers[t]);
        assert_int_equal(mkdir(tiers[t], 0700), 0);
        assert_int_equal(symlink(victim, link), 0);
    }
    train(f, options(f, CKPT_SYNC, 2, 1), 6); // keeps step 6 only; close clears tier 1
    for (int i = 0; i < 3; i++) {
        snprintf(file, sizeof(file), "%s/%s", victim, names[i]);
        assert_text(file, names[i]);
    }
}

/* A removal cut short by a kill leaves its step under the name pruning
 * renamed it to first: never listed as an (incomplete) checkpoint, swept by
 * the next pruning (layout names only; anything else keeps it). */
static void test_a_removal_cut_short_is_no_checkpoint_and_is_swept(void **state)
{
    Fixture *f = *state;
    char left[600], file[700];
    assert_int_equal(mkdir(f->tier2, 0700), 0);
    const char *dirs[] = {"removing_step_00000001", "removing_step_00000002.e3"};
    for (int i = 0; i < 2; i++) {
        snprintf(left, sizeof(left), "%s/%s", f->tier2, dirs[i]);
        assert_int_equal(mkdir(left, 0755), 0);
        snprintf(file, sizeof(file), "%s/rank_00000.h5", left);
        write_text(file, "half removed");
    }
    snprintf(file, sizeof(file), "%s/removing_step_00000002.e3/precious", f->tier2);
    write_text(file, "not a layout name");
    CkptEntry *entries;
    int count;
    assert_int_equal(ckpt_list(f->tier2, &entries, &count, f->err, sizeof(f->err)), 0);
    assert_int_equal(count, 0);
    free(entries);
    train(f, options(f, CKPT_SYNC, 1, 1), 3); // prunes steps 1 and 2
    struct stat st;
    snprintf(left, sizeof(left), "%s/%s", f->tier2, dirs[0]);
    assert_int_not_equal(stat(left, &st), 0);
    assert_text(file, "not a layout name");
    assert_int_equal(ckpt_list(f->tier2, &entries, &count, f->err, sizeof(f->err)), 0);
    assert_int_equal(count, 1);
    assert_int_equal(entries[0].step, 3);
    free(entries);
    snprintf(left, sizeof(left), "%s/removing_step_00000002", f->tier2);
    assert_int_not_equal(stat(left, &st), 0); // pruned steps leave nothing behind
}

static void assert_tier1_refused(Fixture *f, const char *why)
{
    CkptOptions o = options(f, CKPT_SYNC, 2, 1);
    assert_null(ckpt_open(&o, f->world, f->t, TENSORS, f->err, sizeof(f->err)));
    assert_non_null(strstr(f->err, f->tier1));
    assert_non_null(strstr(f->err, why));
    assert_non_null(strstr(f->err, "--ckpt-memory-dir"));
}

/* Tier 1 sits at a predictable name in a world-writable directory: one that
 * someone else made first (or may write in) is refused, not used. */
static void test_tier1_of_someone_else_is_refused(void **state)
{
    Fixture *f = *state;
    assert_int_equal(mkdir(f->tier1, 0700), 0);
    assert_int_equal(chmod(f->tier1, 0777), 0);
    assert_tier1_refused(f, "is writable by others (mode 0777)");
    assert_int_equal(chmod(f->tier1, 0770), 0);
    assert_tier1_refused(f, "is writable by its group");
    assert_int_equal(chmod(f->tier1, 0700), 0);
    if (geteuid() == 0) { // only root can give a directory away
        assert_int_equal(chown(f->tier1, 65534, 65534), 0);
        assert_tier1_refused(f, "belongs to uid 65534");
    }
    char elsewhere[600];
    snprintf(elsewhere, sizeof(elsewhere), "%s/elsewhere", f->dir);
    assert_int_equal(mkdir(elsewhere, 0700), 0);
    assert_int_equal(rmdir(f->tier1), 0);
    assert_int_equal(symlink(elsewhere, f->tier1), 0);
    assert_tier1_refused(f, "is a symbolic link");
    // a private directory of our own is used, and one made by the run is 0700
    assert_int_equal(unlink(f->tier1), 0);
    train(f, options(f, CKPT_SYNC, 2, 1), 2);
    CkptOptions o = options(f, CKPT_SYNC, 2, 1);
    Checkpointer *ck = ckpt_open(&o, f->world, f->t, TENSORS, f->err, sizeof(f->err));
    assert_non_null(ck);
    struct stat st;
    assert_int_equal(lstat(f->tier1, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    assert_int_equal(ckpt_close(ck, true, NULL), 0);
}

static void test_state_key_values(void **state)
{
    (void)state;
    CkptRunState s;
    memset(&s, 0, sizeof(s));
    char key[32];
    for (int i = 0; i < CKPT_EXTRA_MAX; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(ckpt_state_set(&s, key, i), 0);
    }
    assert_int_equal(ckpt_state_set(&s, "k3", -1), 0); // replaces
    assert_int_equal(ckpt_state_set(&s, "one.too.many", 1), -1);
    assert_int_equal(ckpt_state_set(&s, "a.key.that.is.much.too.long.to.fit", 1), -1);
    assert_true(ckpt_state_get(&s, "k3", 0) == -1);
    assert_true(ckpt_state_get(&s, "absent", 7) == 7);
}

static void test_state_typed_values(void **state)
{
    (void)state;
    CkptRunState s;
    memset(&s, 0, sizeof(s));
    char key[32];
    for (int i = 0; i < CKPT_VALUE_MAX; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(ckpt_state_put_i64(&s, key, i), 0);
    }
    assert_int_equal(ckpt_state_put_f64(&s, "one.too.many", 1), -1);
    assert_int_equal(ckpt_state_put_str(&s, "k3", "text"), 0); // replaces, type and all
    assert_int_equal(s.value_count, CKPT_VALUE_MAX);
    assert_string_equal(s.values[3].key, "k3"); // in its place
    int64_t number;
    assert_false(ckpt_state_get_i64(&s, "k3", &number));
    assert_string_equal(text_of(&s, "k3"), "text");
    assert_int_equal(i64_of(&s, "k4"), 4);
    memset(&s, 0, sizeof(s));
    assert_int_equal(ckpt_state_put_int(&s, "a.key.that.is.much.too.long.to.fit", 1), -1);
    assert_int_equal(ckpt_state_put_str(&s, "k", "a text that is much too long to fit in"), -1);
    assert_int_equal(s.value_count, 0);
}

/* ---- issue 14: resume and verify refuse a run state out of range ---- */

typedef struct {
    const char *field; /* the name the message must give */
    void (*spoil)(CkptRunState *s);
} Spoiler;

static void cursor_negative(CkptRunState *s) { s->sample_cursor = -1; }
static void cursor_huge(CkptRunState *s) { s->sample_cursor = (int64_t)1 << 62; }
static void batch_zero(CkptRunState *s) { ckpt_state_put_int(s, "global_batch", 0); }
static void micro_negative(CkptRunState *s) { ckpt_state_put_int(s, "micro_batch", -8); }
static void lr_nan(CkptRunState *s) { ckpt_state_put_f64(s, "lr", NAN); }
static void beta_above_one(CkptRunState *s) { ckpt_state_put_f64(s, "beta1", 2.0); }
static void extra_nan(CkptRunState *s) { ckpt_state_set(s, "batch.ema_noise", NAN); }

static const Spoiler SPOILERS[] = {
    {"'sample_cursor' is -1", cursor_negative}, {"'sample_cursor' is 4611686018427387904", cursor_huge},
    {"'global_batch' is 0", batch_zero},        {"'micro_batch' is -8", micro_negative},
    {"'lr' is nan", lr_nan},                    {"'beta1' is 2", beta_above_one},
    {"'batch.ema_noise' is nan", extra_nan},
};
#define SPOILER_COUNT ((int)(sizeof(SPOILERS) / sizeof(SPOILERS[0])))

/* Step i+1 is written with SPOILERS[i] applied (the writer does not judge). */
static void write_spoiled(Fixture *f)
{
    CkptOptions o = options(f, CKPT_SYNC, 1, SPOILER_COUNT);
    o.memory_dir = "none";
    Checkpointer *ck = ckpt_open(&o, f->world, f->t, TENSORS, f->err, sizeof(f->err));
    assert_non_null(ck);
    for (int i = 0; i < SPOILER_COUNT; i++) {
        fill(f->t, TENSORS, i + 1);
        CkptRunState s = run_state(i + 1);
        SPOILERS[i].spoil(&s);
        assert_int_equal(ckpt_snapshot(ck, &s, f->err, sizeof(f->err)), 0);
    }
    assert_int_equal(ckpt_close(ck, true, NULL), 0);
}

static void test_run_state_out_of_range_is_corrupt(void **state)
{
    Fixture *f = *state;
    write_spoiled(f);
    for (int i = 0; i < SPOILER_COUNT; i++) {
        CkptRunState s;
        assert_int_equal(ckpt_load(step_path(f, i + 1), f->t, TENSORS, &MODEL, stateful_check, &s,
                                   f->err, sizeof(f->err)),
                         CKPT_CORRUPT);
        if (!strstr(f->err, SPOILERS[i].field))
            fail_msg("'%s' not in: %s", SPOILERS[i].field, f->err);
        FILE *report = tmpfile();
        assert_int_equal(ckpt_verify(step_path(f, i + 1), stateful_check, report, f->err,
                                     sizeof(f->err)),
                         CKPT_CORRUPT);
        fclose(report);
    }
}

/* A part the checkpoint module has never heard of (ZeRO shards, bf16
 * master weights, a new controller) saves typed values and gets each back
 * with its type, through the same files: checkpoint/ needs no change. */
static void test_a_new_parts_values_round_trip(void **state)
{
    Fixture *f = *state;
    CkptOptions o = options(f, CKPT_SYNC, 1, 1);
    o.memory_dir = "none";
    Checkpointer *ck = ckpt_open(&o, f->world, f->t, TENSORS, f->err, sizeof(f->err));
    assert_non_null(ck);
    fill(f->t, TENSORS, 1);
    CkptRunState s = run_state(1);
    assert_int_equal(ckpt_state_put_i64(&s, "zero.shard_rows", (int64_t)1 << 40), 0);
    assert_int_equal(ckpt_state_put_int(&s, "bf16.master", -7), 0);
    assert_int_equal(ckpt_state_put_f64(&s, "ctrl.gain", 0.125), 0);
    assert_int_equal(ckpt_state_put_str(&s, "ctrl.kind", "pid"), 0);
    assert_int_equal(ckpt_snapshot(ck, &s, f->err, sizeof(f->err)), 0);
    assert_int_equal(ckpt_close(ck, true, NULL), 0);

    CkptRunState r;
    assert_int_equal(ckpt_load(step_path(f, 1), f->t, TENSORS, &MODEL, stateful_check, &r,
                               f->err, sizeof(f->err)),
                     CKPT_OK);
    assert_int_equal(r.value_count, s.value_count);
    assert_int_equal(i64_of(&r, "zero.shard_rows"), (int64_t)1 << 40);
    int32_t master = 0;
    assert_true(ckpt_state_get_int(&r, "bf16.master", &master) && master == -7);
    assert_true(f64_of(&r, "ctrl.gain") == 0.125);
    assert_string_equal(text_of(&r, "ctrl.kind"), "pid");
    // another type is not found, and neither is what was never saved
    assert_false(ckpt_state_get_int(&r, "zero.shard_rows", &master));
    double number;
    assert_false(ckpt_state_get_f64(&r, "ctrl.kind", &number));
    assert_false(ckpt_state_get_f64(&r, "ctrl.absent", &number));
}

/* A stateful part's value that is missing, or of another type, is refused
 * by the part's check with the reader's message of format 1, and resume
 * and verify say it as a corrupt run state. */
static void test_a_missing_part_value_is_corrupt(void **state)
{
    Fixture *f = *state;
    CkptOptions o = options(f, CKPT_SYNC, 1, 2);
    o.memory_dir = "none";
    Checkpointer *ck = ckpt_open(&o, f->world, f->t, TENSORS, f->err, sizeof(f->err));
    assert_non_null(ck);
    for (int step = 1; step <= 2; step++) {
        fill(f->t, TENSORS, step);
        CkptRunState s = run_state_without(step, "lr");
        if (step == 2)
            assert_int_equal(ckpt_state_put_int(&s, "lr", 1), 0);
        assert_int_equal(ckpt_snapshot(ck, &s, f->err, sizeof(f->err)), 0);
    }
    assert_int_equal(ckpt_close(ck, true, NULL), 0);
    const char *want =
        "corrupt run state: attribute 'lr' is missing, unreadable or of the wrong type";
    for (int step = 1; step <= 2; step++) {
        CkptRunState s;
        assert_int_equal(ckpt_load(step_path(f, step), f->t, TENSORS, &MODEL, stateful_check, &s,
                                   f->err, sizeof(f->err)),
                         CKPT_CORRUPT);
        if (!strstr(f->err, want))
            fail_msg("'%s' not in: %s", want, f->err);
        assert_int_equal(ckpt_verify(step_path(f, step), stateful_check, stderr, f->err,
                                     sizeof(f->err)),
                         CKPT_CORRUPT);
        if (!strstr(f->err, want))
            fail_msg("'%s' not in: %s", want, f->err);
        // checkpoint/ itself stores values it does not know, checked or not
        assert_int_equal(ckpt_load(step_path(f, step), f->t, TENSORS, &MODEL, NULL, &s, f->err,
                                   sizeof(f->err)),
                         CKPT_OK);
    }
}

static int refuse_step_2(const CkptRunState *s, char *err, size_t err_len)
{
    if (s->step != 2)
        return 0;
    snprintf(err, err_len, "'batch.batch' is 0, outside [1, 2147483647]");
    return -1;
}

/* The caller's check refuses step 2: resume falls back to step 1, for
 * "latest" and for the explicit step directory alike. */
static void test_resume_falls_back_past_a_refused_state(void **state)
{
    Fixture *f = *state;
    CkptOptions o = options(f, CKPT_SYNC, 1, 3);
    o.memory_dir = "none";
    train(f, o, 2);
    o.check_state = refuse_step_2;
    char path[1024], explicit[700];
    CkptRunState s;
    assert_int_equal(ckpt_resume(f->world, &o, "latest", f->t, TENSORS, &MODEL, &s, path,
                                 sizeof(path), NULL, f->err, sizeof(f->err)),
                     CKPT_OK);
    assert_int_equal(s.step, 1);
    snprintf(explicit, sizeof(explicit), "%s", step_path(f, 2));
    assert_int_equal(ckpt_resume(f->world, &o, explicit, f->t, TENSORS, &MODEL, &s, path,
                                 sizeof(path), NULL, f->err, sizeof(f->err)),
                     CKPT_OK);
    assert_int_equal(s.step, 1);
    assert_string_equal(path, step_path(f, 1));
    assert_version(f->t, TENSORS, 1);
}


/* The fence's history and the one validity rule (checkpoint.h, "Fencing"). */
static void test_fence_history_and_rule(void **state)
{
    Fixture *f = *state;
    CkptFence fence;
    assert_int_equal(ckpt_fence_read(f->dir, &fence, f->err, sizeof(f->err)), 0);
    assert_int_equal(fence.count, 0); // no fence: nothing is fenced
    assert_int_equal(ckpt_fence_epoch(f->dir), -1);
    assert_int_equal(ckpt_fence_raise(f->dir, 0, -1, f->err, sizeof(f->err)), 0);
    assert_int_equal(ckpt_fence_raise(f->dir, 1, 2, f->err, sizeof(f->err)), 0);
    assert_int_equal(ckpt_fence_raise(f->dir, 1, 5, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "already fences epoch 1"));
    assert_int_equal(ckpt_fence_epoch(f->dir), 1);
    assert_int_equal(ckpt_fence_read(f->dir, &fence, f->err, sizeof(f->err)), 0);
    assert_int_equal(fence.count, 2);
    char why[256] = "";
    assert_true(ckpt_fence_allows(&fence, 0, 2, why, sizeof(why)));
    assert_false(ckpt_fence_allows(&fence, 0, 3, why, sizeof(why)));
    assert_string_equal(why, "fenced: attempt 0 wrote step 3 after attempt 1 fenced it off at "
                             "step 2; no reader uses it");
    assert_true(ckpt_fence_allows(&fence, 1, 1000, NULL, 0));
    assert_true(ckpt_fence_allows(&fence, -1, 1000, NULL, 0)); // not elastic: never fenced
    ckpt_fence_free(&fence);

    // the first fences wrote "epoch F": read, and fencing nothing
    char path[700];
    snprintf(path, sizeof(path), "%s/fence", f->dir);
    FILE *file = fopen(path, "w");
    fputs("epoch 3\n", file);
    fclose(file);
    assert_int_equal(ckpt_fence_read(f->dir, &fence, f->err, sizeof(f->err)), 0);
    assert_true(fence.count == 1 && ckpt_fence_allows(&fence, 0, 1000, NULL, 0));
    ckpt_fence_free(&fence);
    assert_int_equal(ckpt_fence_raise(f->dir, 4, 7, f->err, sizeof(f->err)), 0);
    assert_int_equal(ckpt_fence_read(f->dir, &fence, f->err, sizeof(f->err)), 0);
    assert_true(fence.count == 2 && !ckpt_fence_allows(&fence, 3, 8, NULL, 0));
    ckpt_fence_free(&fence);

    // what cannot be parsed is never guessed at: readers stop, naming the line
    file = fopen(path, "w");
    fputs("epoch 0 after -1\nepoch one after 2\n", file);
    fclose(file);
    assert_int_equal(ckpt_fence_read(f->dir, &fence, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "line 2 is not 'epoch F after K'"));
    CkptEntry *entries = NULL;
    int count = 0;
    assert_int_equal(ckpt_list(f->dir, &entries, &count, f->err, sizeof(f->err)), -1);
    assert_int_equal(ckpt_fence_raise(f->dir, 9, 1, f->err, sizeof(f->err)), -1);
}

/* A step directory holds one epoch's files (step_N.eE), its index records
 * E, and a list is judged by the fence it is given (tier 1 by tier 2's). */
static void test_epoch_directories_and_the_fence_of_another_tier(void **state)
{
    Fixture *f = *state;
    CkptOptions o = options(f, CKPT_SYNC, 1, 3);
    o.memory_dir = "none";
    setenv(CKPT_EPOCH_ENV, "0", 1);
    train(f, o, 3);
    unsetenv(CKPT_EPOCH_ENV);
    char dir[700], fences[700];
    ckpt_step_dir(dir, sizeof(dir), f->tier2, 3, 0);
    assert_string_equal(dir + strlen(f->tier2), "/step_00000003.e0");
    CkptRunState s;
    assert_int_equal(ckpt_load(dir, f->t, TENSORS, &MODEL, NULL, &s, f->err, sizeof(f->err)),
                               CKPT_OK);
    assert_int_equal(s.step, 3);
    assert_true(ckpt_state_get(&s, "fence.epoch", -2) == 0);

    snprintf(fences, sizeof(fences), "%s/other", f->dir);
    assert_int_equal(ckpt_fence_raise(fences, 1, 1, f->err, sizeof(f->err)), 0);
    CkptEntry *entries = NULL;
    int count = 0;
    assert_int_equal(ckpt_list(f->tier2, &entries, &count, f->err, sizeof(f->err)), 0);
    assert_int_equal(count, 3);
    for (int i = 0; i < count; i++)
        assert_int_equal(entries[i].status, CKPT_OK); // tier2 has no fence of its own
    free(entries);
    assert_int_equal(ckpt_list_fenced(f->tier2, fences, &entries, &count, f->err,
                                      sizeof(f->err)), 0);
    assert_int_equal(count, 3);
    assert_true(entries[0].epoch == 0 && entries[0].status == CKPT_OK);
    assert_int_equal(entries[1].status, CKPT_FENCED);
    assert_int_equal(entries[2].status, CKPT_FENCED);
    free(entries);

    // a step directory renamed to another epoch: its index says otherwise
    char renamed[700];
    ckpt_step_dir(renamed, sizeof(renamed), f->tier2, 3, 7);
    assert_int_equal(rename(dir, renamed), 0);
    assert_int_equal(ckpt_verify(renamed, NULL, stderr, f->err, sizeof(f->err)), CKPT_CORRUPT);
    assert_non_null(strstr(f->err, "written by epoch 0, its name says 7"));
}

/* A ZeRO-1 rank reads only its share of m and v: buffers of exactly the
 * share's rows (ASan would see a write past them) receive those rows; the
 * parameters are filled whole. Share 1 of 3 of every tensor. */
static void test_moments_share_only_reads_the_share_rows(void **state)
{
    Fixture *f = *state;
    train(f, options(f, CKPT_SYNC, 1, 1), 2);
    zero(f->t, TENSORS);
    CkptTensor share[TENSORS];
    for (int k = 0; k < TENSORS; k++) {
        share[k] = f->t[k];
        share[k].replica_index = 1;
        share[k].replica_count = 3;
        share[k].moments_share_only = true;
        size_t first, count;
        ckpt_tensor_share(&share[k], &first, &count);
        assert_true(count > 0 && count < numel(&f->t[k]));
        share[k].m = malloc(count * sizeof(float));
        share[k].v = malloc(count * sizeof(float));
        assert_non_null(share[k].m);
        assert_non_null(share[k].v);
    }
    CkptRunState s;
    assert_int_equal(ckpt_load(step_path(f, 2), share, TENSORS, &MODEL, NULL, &s, f->err,
                               sizeof(f->err)),
                     CKPT_OK);
    for (int k = 0; k < TENSORS; k++) {
        size_t first, count;
        ckpt_tensor_share(&share[k], &first, &count);
        for (size_t i = 0; i < numel(&f->t[k]); i++)
            assert_true(f->t[k].param[i] == (float)(2 * 100000 + k * 10000 + (int)i));
        for (size_t i = 0; i < count; i++) {
            float p = (float)(2 * 100000 + k * 10000 + (int)(first + i));
            assert_true(share[k].m[i] == -p && share[k].v[i] == p + 0.5f);
        }
        free(share[k].m);
        free(share[k].v);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sync_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_moments_share_only_reads_the_share_rows, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_async_saves_the_handed_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_prunes_and_close_cleans_tier1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_source_wait_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_source_wait_async, setup, teardown),
        cmocka_unit_test_setup_teardown(test_model_mismatch_names_the_dimensions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tensor_shape_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_and_partial_checkpoints, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_falls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_with_nothing_there, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_rejects_bad_inputs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shard_link_is_not_written_through, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pruning_leaves_linked_steps_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_removal_cut_short_is_no_checkpoint_and_is_swept,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_tier1_of_someone_else_is_refused, setup, teardown),
        cmocka_unit_test(test_state_key_values),
        cmocka_unit_test(test_state_typed_values),
        cmocka_unit_test_setup_teardown(test_run_state_out_of_range_is_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_new_parts_values_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_missing_part_value_is_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fence_history_and_rule, setup, teardown),
        cmocka_unit_test_setup_teardown(test_epoch_directories_and_the_fence_of_another_tier,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_falls_back_past_a_refused_state, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
