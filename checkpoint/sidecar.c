/*
 * The writer: a Checkpointer per rank and, in async mode, its sidecar thread.
 *
 * Hand-over (async). The training thread sets copy_requested; the sidecar
 * copies this rank's share into `staging` (staged = true) and wakes the
 * training thread, which may then change its buffers again. The sidecar then
 * serialises staging into a shard image (staged = false: staging is free for
 * the next copy) and writes that image to each tier. A copy request that
 * arrives meanwhile is served between two pieces of a write or while the
 * sidecar waits for the other ranks, so the training thread waits only when
 * a copy is asked for while staging still holds an earlier version.
 *
 * Commit of a tier (every rank, in the same order):
 *   1. write and fsync rank_R.h5
 *   2. agree: allreduce of [ranks that succeeded, shard size of each rank]
 *   3. rank 0 writes index.h5 atomically, then decides what to prune
 *   4. agree: allreduce of [index committed, prune below step P]
 *   5. prune
 * A rank whose write failed still takes part in both agreements, so no rank
 * waits forever and none commits a checkpoint that lacks a shard.
 */
#include "internal.h"
#include "util.h"

#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

enum { TIER_MEMORY, TIER_DIR, TIER_COUNT };
static const char *const TIER_NAME[TIER_COUNT] = {"tier 1 (memory)", "tier 2"};

/* Fault injection: SIGKILL in the middle of step's shard in one tier. */
typedef struct {
    int64_t step; /* -1: off */
    int tier;     /* TIER_MEMORY or TIER_DIR */
    int rank;     /* -1: every rank */
} Fault;

/* One fragment this rank writes, and where its rows sit in staging. */
typedef struct {
    CkptFragment fragment;
    int tensor;
    size_t staging_offset; /* floats, within each kind's part of staging */
} Own;

struct Checkpointer {
    CkptOptions options;
    FilesDir tier[TIER_COUNT];       /* path "" when the tier is off */
    Comm *comm;                      /* the sidecar's own */
    int rank, world;
    uint64_t run_id;
    CkptTensor *tensors;
    int tensor_count;
    Own *own;
    int own_count;
    size_t staging_floats; /* per kind */
    float *staging;        /* params, m, v parts of staging_floats each */
    CkptFragment *all;     /* every rank's fragments, sorted */
    int all_count;
    Fault fault;
    int epoch;   /* $PHALANX_EPOCH: this attempt of an elastic job; -1: unfenced */
    bool fenced; /* a newer attempt's fence was seen: nothing is written any more */
    Replica replica; /* buddy copies of tier 1 (replica.c) */

    bool threaded;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;   /* to the sidecar: work or quit */
    pthread_cond_t copied; /* to the training thread */
    bool copy_requested, staged, quit, broken;
    bool abandoned; /* ckpt_abandon(): rank 0 writes no index any more */
    CkptRunState requested, staged_state;
    bool requested_durable, staged_durable; /* ckpt_snapshot_durable */
    bool last_dir_ok; /* the newest flush reached tier 2 */
    CkptSourceWait source_wait; /* NULL: the tensors are ready when handed over */
    void *source_context;
    char source_error[512]; /* non-empty: the staged version is unusable */
    CkptStats stats;
    /* rank 0: the index of the checkpoint being flushed, built once for both
     * tiers (VDS creation is most of a flush's CPU time) */
    void *index_image;
    size_t index_size;
    void *index_template; /* rank 0: the first index of this run, updated since */
    size_t index_template_size;
};


bool ckpt_mode_parse(const char *text, CkptMode *out)
{
    if (strcmp(text, "async") == 0)
        *out = CKPT_ASYNC;
    else if (strcmp(text, "sync") == 0)
        *out = CKPT_SYNC;
    else
        return false;
    return true;
}

// ----------------------------------------------------------------------------
// set-up

static Fault fault_parse(int rank)
{
    Fault f = {-1, TIER_DIR, -1};
    const char *text = getenv(CKPT_FLUSH_KILL_ENV);
    if (!text || !*text)
        return f;
    char *end;
    long long step = strtoll(text, &end, 10);
    long tier = 2, who = -1;
    if (end != text && *end == ':')
        tier = strtol(end + 1, &end, 10);
    if (end != text && *end == '@')
        who = strtol(end + 1, &end, 10);
    if (end == text || *end != '\0' || step < 1 || (tier != 1 && tier != 2)) {
        if (rank == 0)
            fprintf(stderr,
                    "phalanx ckpt: " CKPT_FLUSH_KILL_ENV "='%s' ignored: the form is "
                    "STEP[:TIER][@RANK], e.g. 20, 20:1 or 20:2@3\n",
                    text);
        return f;
    }
    f.step = step;
    f.tier = tier == 1 ? TIER_MEMORY : TIER_DIR;
    f.rank = (int)who;
    return f;
}

static int check_options(const CkptOptions *o, char *err, size_t err_len)
{
    if (!o->dir || !*o->dir)
        return util_fail(err, err_len, "--ckpt-dir is required for checkpoints");
    if (o->every < 1)
        return util_fail(err, err_len, "--ckpt-every is %ld: it must be at least 1", o->every);
    if (o->keep < 1)
        return util_fail(err, err_len, "--ckpt-keep is %d: it must be at least 1", o->keep);
    if (o->durable_every < 0 || (o->durable_every > 0 && o->durable_every % o->every != 0))
        return util_fail(err, err_len, "--ckpt-durable-every is %ld: it must be a multiple of "
                         "--ckpt-every (%ld)", o->durable_every, o->every);
    if (o->durable_every > o->every && o->memory_dir && strcmp(o->memory_dir, "none") == 0)
        return util_fail(err, err_len, "--ckpt-durable-every %ld keeps the checkpoints between "
                         "in tier 1, which --ckpt-memory-dir none turns off: drop one of them",
                         o->durable_every);
    hbool_t safe = 0;
    if (o->mode == CKPT_ASYNC && (H5is_library_threadsafe(&safe) < 0 || !safe))
        return util_fail(err, err_len,
                         "this HDF5 library is not thread-safe; the checkpoint sidecar needs "
                         "Debian's serial libhdf5 (pkg-config hdf5-serial)");
    return 0;
}

static int check_tensor(const CkptTensor *t, char *err, size_t err_len)
{
    if (memchr(t->name, '\0', CKPT_NAME_MAX) == NULL || !t->name[0] || strchr(t->name, '/'))
        return util_fail(err, err_len, "tensor name '%.*s' is empty, too long or has a '/'",
                         CKPT_NAME_MAX, t->name);
    if (t->ndim < 1 || t->ndim > 2 || t->shape[0] < 1 ||
        ckpt_row_length(t->ndim, t->shape) < 1)
        return util_fail(err, err_len, "tensor '%s': ndim %d / shape is not a 1-D or 2-D shape",
                         t->name, t->ndim);
    if (!t->param || !t->m || !t->v)
        return util_fail(err, err_len, "tensor '%s': params, m and v are all needed", t->name);
    if (t->replica_count < 1 || t->replica_index < 0 || t->replica_index >= t->replica_count)
        return util_fail(err, err_len, "tensor '%s': replica %d of %d is not a replica",
                         t->name, t->replica_index, t->replica_count);
    return 0;
}

static void share_rows(const CkptTensor *t, int64_t *begin, int64_t *end)
{
    int64_t rows = t->shape[0], j = t->replica_index, r = t->replica_count;
    *begin = j * rows / r;
    *end = (j + 1) * rows / r;
}

void ckpt_tensor_share(const CkptTensor *t, size_t *first, size_t *count)
{
    int64_t begin, end, row = ckpt_row_length(t->ndim, t->shape);
    share_rows(t, &begin, &end);
    *first = (size_t)(begin * row);
    *count = (size_t)((end - begin) * row);
}

/* This rank's share of every tensor: rows [j*rows/R, (j+1)*rows/R). */
static int plan_own(Checkpointer *ck, char *err, size_t err_len)
{
    ck->own = calloc((size_t)ck->tensor_count + 1, sizeof(Own));
    if (!ck->own)
        return util_fail(err, err_len, "out of memory");
    for (int i = 0; i < ck->tensor_count; i++) {
        const CkptTensor *t = &ck->tensors[i];
        if (check_tensor(t, err, err_len) != 0)
            return -1;
        int64_t begin, end;
        share_rows(t, &begin, &end);
        if (begin == end)
            continue; // more replicas than rows: this one writes nothing
        Own *o = &ck->own[ck->own_count++];
        o->tensor = i;
        o->staging_offset = ck->staging_floats;
        o->fragment = (CkptFragment){.ndim = t->ndim, .shape = {t->shape[0], t->shape[1]},
                                     .rank = ck->rank, .row_begin = begin, .row_end = end};
        if (t->ndim == 1)
            o->fragment.shape[1] = 0;
        snprintf(o->fragment.name, sizeof(o->fragment.name), "%s", t->name);
        ck->staging_floats += (size_t)(end - begin) * (size_t)ckpt_row_length(t->ndim, t->shape);
    }
    ck->staging = malloc(KIND_COUNT * ck->staging_floats * sizeof(float) + 1);
    if (!ck->staging)
        return util_fail(err, err_len, "out of memory for %zu MiB of checkpoint staging",
                         KIND_COUNT * ck->staging_floats * sizeof(float) >> 20);
    return 0;
}

/* Tier 2 must work; tier 1 is dropped (by every rank, later) when it does
 * not, but a tier-1 directory that someone else may control stops the run:
 * it could hold links that turn our shards into writes elsewhere. */
static int check_dirs(Checkpointer *ck, bool *memory_ok, char *err, size_t err_len)
{
    char why[PATH_MAX + 128];
    FilesDir *dir = &ck->tier[TIER_DIR], *memory = &ck->tier[TIER_MEMORY];
    if (files_open_tier(dir, why, sizeof(why)) != 0 ||
        files_probe(dir, why, sizeof(why)) != 0)
        return util_fail(err, err_len, "--ckpt-dir '%s': %s", dir->path, why);
    if (!memory->path[0])
        return 0;
    int opened = files_open_private(memory, why, sizeof(why));
    if (opened == FILES_UNSAFE)
        return util_fail(err, err_len,
                         "%s: %s, so it may not be this run's to use: remove it, or pass "
                         "--ckpt-memory-dir DIR (a directory of your own) or "
                         "--ckpt-memory-dir none",
                         TIER_NAME[TIER_MEMORY], why);
    *memory_ok = opened == 0 && files_probe(memory, why, sizeof(why)) == 0;
    if (!*memory_ok)
        fprintf(stderr, "phalanx ckpt: rank %d: %s is not usable (%s)\n", ck->rank,
                TIER_NAME[TIER_MEMORY], why);
    return 0;
}

static int setup_local(Checkpointer *ck, const CkptOptions *options, const CkptTensor *tensors,
                       int count, bool *memory_ok, char *err, size_t err_len)
{
    ck->options = *options;
    ck->tensor_count = count;
    ck->tensors = malloc(((size_t)count + 1) * sizeof(CkptTensor));
    if (!ck->tensors)
        return util_fail(err, err_len, "out of memory");
    if (count > 0)
        memcpy(ck->tensors, tensors, (size_t)count * sizeof(CkptTensor));
    for (int t = 0; t < TIER_COUNT; t++)
        ck->stats.last_step[t] = -1;
    ck->fault = fault_parse(ck->rank);
    const char *epoch = getenv(CKPT_EPOCH_ENV);
    ck->epoch = epoch && *epoch ? atoi(epoch) : -1;
    char why[512];
    if (check_options(options, err, err_len) != 0)
        return -1;
    // tier 2 exists before its real path names tier 1 (ckpt_tier_dirs)
    if (files_mkdirs(options->dir, why, sizeof(why)) != 0)
        return util_fail(err, err_len, "--ckpt-dir '%s': %s", options->dir, why);
    ckpt_tier_dirs(options, ck->tier[TIER_MEMORY].path, PATH_MAX, ck->tier[TIER_DIR].path,
                   PATH_MAX);
    ck->options.dir = ck->tier[TIER_DIR].path;
    ck->options.memory_dir = NULL;
    return plan_own(ck, err, err_len) || check_dirs(ck, memory_ok, err, err_len) ? -1 : 0;
}

/* Every rank learns every fragment: allgather of counts, then of records
 * padded to the largest count. */
static int exchange_fragments(Checkpointer *ck, Comm *world, char *err, size_t err_len)
{
    int64_t mine = ck->own_count, *counts = calloc((size_t)ck->world, sizeof(int64_t));
    if (!counts || comm_allgather(world, &mine, counts, 1, COMM_I64) != 0) {
        free(counts);
        return util_fail(err, err_len, "fragment exchange: %s", comm_error(world));
    }
    int64_t most = 0, total = 0;
    for (int r = 0; r < ck->world; r++) {
        most = counts[r] > most ? counts[r] : most;
        total += counts[r];
    }
    size_t padded = (size_t)most * sizeof(CkptFragment);
    CkptFragment *send = calloc((size_t)most + 1, sizeof(CkptFragment));
    CkptFragment *recv = calloc((size_t)most * (size_t)ck->world + 1, sizeof(CkptFragment));
    ck->all = calloc((size_t)total + 1, sizeof(CkptFragment));
    int rc = send && recv && ck->all ? 0 : util_fail(err, err_len, "out of memory");
    for (int i = 0; rc == 0 && i < ck->own_count; i++)
        send[i] = ck->own[i].fragment;
    if (rc == 0 && most > 0 && comm_allgather(world, send, recv, padded, COMM_BYTE) != 0)
        rc = util_fail(err, err_len, "fragment exchange: %s", comm_error(world));
    for (int r = 0; rc == 0 && r < ck->world; r++)
        for (int64_t i = 0; i < counts[r]; i++)
            ck->all[ck->all_count++] = recv[(size_t)r * (size_t)most + (size_t)i];
    free(counts);
    free(send);
    free(recv);
    if (rc == 0)
        format_fragments_sort(ck->all, ck->all_count);
    return rc;
}

static uint64_t new_run_id(void)
{
    uint64_t id = 0;
    if (getrandom(&id, sizeof(id), 0) != (ssize_t)sizeof(id))
        id = (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid();
    return id;
}

// ----------------------------------------------------------------------------
// copy

/* When the sources cannot be read (a failed GPU copy), the version is still
 * staged, marked unusable: its flush then votes "not written" in the commit
 * agreement like a failed write, so that every rank drops it together. */
static void copy_snapshot(Checkpointer *ck)
{
    double start = util_now_seconds();
    ck->source_error[0] = '\0';
    if (ck->source_wait &&
        ck->source_wait(ck->source_context, ck->source_error, sizeof(ck->source_error)) != 0 &&
        !ck->source_error[0])
        snprintf(ck->source_error, sizeof(ck->source_error), "the tensors could not be read");
    for (int i = 0; i < ck->own_count && !ck->source_error[0]; i++) {
        const Own *o = &ck->own[i];
        const CkptTensor *t = &ck->tensors[o->tensor];
        size_t row = (size_t)ckpt_row_length(t->ndim, t->shape);
        size_t first = (size_t)o->fragment.row_begin * row;
        size_t n = (size_t)(o->fragment.row_end - o->fragment.row_begin) * row;
        // a ZeRO-1 rank's moments start at its share (checkpoint.h)
        size_t moments_first = t->moments_share_only ? 0 : first;
        const float *source[KIND_COUNT] = {t->param + first, t->m + moments_first,
                                           t->v + moments_first};
        for (int kind = 0; kind < KIND_COUNT; kind++)
            memcpy(ck->staging + kind * ck->staging_floats + o->staging_offset, source[kind],
                   n * sizeof(float));
    }
    pthread_mutex_lock(&ck->lock);
    ck->staged = true;
    ck->copy_requested = false;
    ck->staged_state = ck->requested;
    ck->staged_durable = ck->requested_durable;
    ck->stats.last_copy_seconds = util_now_seconds() - start;
    pthread_cond_broadcast(&ck->copied);
    pthread_mutex_unlock(&ck->lock);
}

void ckpt_set_source_wait(Checkpointer *ck, CkptSourceWait wait, void *context)
{
    ck->source_wait = wait;
    ck->source_context = context;
}

/* Called by the sidecar whenever it could otherwise only wait. */
static void serve_copy(void *arg)
{
    Checkpointer *ck = arg;
    if (!ck->threaded)
        return;
    pthread_mutex_lock(&ck->lock);
    bool go = ck->copy_requested && !ck->staged;
    pthread_mutex_unlock(&ck->lock);
    if (go)
        copy_snapshot(ck);
}

static void release_staging(Checkpointer *ck)
{
    pthread_mutex_lock(&ck->lock);
    ck->staged = false;
    pthread_mutex_unlock(&ck->lock);
    serve_copy(ck);
}

// ----------------------------------------------------------------------------
// flush and commit

/* A non-blocking allreduce on the sidecar's communicator; the sidecar serves
 * copies while the slowest rank catches up. */
static int agree(Checkpointer *ck, int64_t *values, size_t count)
{
    WriteHooks hooks = {ck->threaded ? serve_copy : NULL, ck, SIZE_MAX};
    return replica_wait(comm_iallreduce(ck->comm, values, count, COMM_I64), &hooks);
}

/* Rank 0's index is what commits a checkpoint, so rank 0 alone deciding to
 * write none keeps the ranks in step: every rank still takes part in every
 * agreement (none waits forever), and each removes its shard afterwards. */
static bool is_abandoned(Checkpointer *ck)
{
    pthread_mutex_lock(&ck->lock);
    bool abandoned = ck->abandoned;
    pthread_mutex_unlock(&ck->lock);
    return abandoned;
}

void ckpt_abandon(Checkpointer *ck)
{
    pthread_mutex_lock(&ck->lock);
    ck->abandoned = true;
    pthread_mutex_unlock(&ck->lock);
}

static void mark_broken(Checkpointer *ck)
{
    fprintf(stderr,
            "phalanx ckpt: rank %d: the checkpoint agreement failed (%s); no further "
            "checkpoints in this run\n",
            ck->rank, comm_error(ck->comm));
    pthread_mutex_lock(&ck->lock);
    ck->broken = true;
    pthread_mutex_unlock(&ck->lock);
}

static int build_shard(Checkpointer *ck, const CkptRunState *state, void **image, size_t *size,
                       char *err, size_t err_len)
{
    ShardPiece *pieces = calloc((size_t)ck->own_count + 1, sizeof(ShardPiece));
    if (!pieces)
        return util_fail(err, err_len, "out of memory");
    for (int i = 0; i < ck->own_count; i++) {
        pieces[i].fragment = &ck->own[i].fragment;
        for (int kind = 0; kind < KIND_COUNT; kind++)
            pieces[i].data[kind] =
                ck->staging + kind * ck->staging_floats + ck->own[i].staging_offset;
    }
    ShardContent content = {.step = state->step, .run_id = ck->run_id, .rank = ck->rank,
                            .world = ck->world, .pieces = pieces, .piece_count = ck->own_count};
    int rc = format_shard_image(&content, image, size, err, err_len);
    free(pieces);
    return rc;
}

/* A newer attempt fenced this one off (checkpoint.h): read before every
 * shard and index, and once seen, for good. The agent writes the fence
 * before it launches the newer attempt, so a rank on a partitioned host
 * that flushes after the recovery began sees it at its next write. */
static bool fenced(Checkpointer *ck)
{
    if (ck->epoch < 0 || ck->fenced)
        return ck->fenced;
    int fence = ckpt_fence_epoch(ck->tier[TIER_DIR].path);
    if (fence > ck->epoch) {
        ck->fenced = true;
        fprintf(stderr, "phalanx ckpt: rank %d: attempt %d of this job is fenced off by "
                        "attempt %d (%s/fence): no more checkpoints from it\n", ck->rank,
                ck->epoch, fence, ck->tier[TIER_DIR].path);
    }
    return ck->fenced;
}

static int write_shard(Checkpointer *ck, int tier, const FilesDir *dir, int64_t step,
                       const void *image, size_t size, char *err, size_t err_len)
{
    if (fenced(ck))
        return util_fail(err, err_len, "fenced off by a newer attempt of the job");
    if (ck->rank == 0) // an index left by an earlier run at this step would describe other shards
        files_remove_file(dir, CKPT_INDEX_FILE);
    const Fault *f = &ck->fault;
    bool die = f->step == step && f->tier == tier && (f->rank < 0 || f->rank == ck->rank);
    WriteHooks hooks = {serve_copy, ck, die ? size / 2 : SIZE_MAX};
    char shard[64];
    files_shard_name(shard, sizeof(shard), ck->rank);
    return files_write(dir, shard, image, size, &hooks, err, err_len);
}

/* Rank 0: the index image of this flush (the same bytes in every tier). */
static int build_index(Checkpointer *ck, const CkptRunState *state, const int64_t *sizes,
                       char *err, size_t err_len)
{
    if (ck->index_image)
        return 0;
    CkptShard *shards = calloc((size_t)ck->world, sizeof(CkptShard));
    if (!shards)
        return util_fail(err, err_len, "out of memory");
    for (int r = 0; r < ck->world; r++)
        shards[r] = (CkptShard){r, sizes[r]};
    // the index names the epoch that wrote it (checkpoint.h, "Fencing"); one
    // that is not elastic leaves the key out, unless a resumed state has it
    CkptRunState labelled = *state;
    bool label = ck->epoch >= 0 || ckpt_state_get(state, CKPT_EPOCH_KEY, -1) != -1;
    if (label && ckpt_state_set(&labelled, CKPT_EPOCH_KEY, ck->epoch) != 0) {
        free(shards);
        return util_fail(err, err_len, "the run state has no room for %s", CKPT_EPOCH_KEY);
    }
    IndexContent content = {.state = &labelled, .run_id = ck->run_id, .fragments = ck->all,
                            .fragment_count = ck->all_count, .shards = shards,
                            .shard_count = ck->world};
    int rc = ck->index_template
                 ? format_index_update(ck->index_template, ck->index_template_size, &content,
                                       &ck->index_image, &ck->index_size, err, err_len)
                 : format_index_image(&content, &ck->index_image, &ck->index_size, err,
                                      err_len);
    free(shards);
    if (rc == 0 && !ck->index_template && (ck->index_template = malloc(ck->index_size))) {
        memcpy(ck->index_template, ck->index_image, ck->index_size);
        ck->index_template_size = ck->index_size;
    }
    return rc;
}

static int write_index(Checkpointer *ck, int tier, const FilesDir *dir,
                       const CkptRunState *state, const int64_t *sizes, char *err,
                       size_t err_len)
{
    int rc = build_index(ck, state, sizes, err, err_len) ||
                     files_publish(dir, CKPT_INDEX_FILE, ck->index_image, ck->index_size, err,
                                   err_len)
                 ? -1
                 : 0;
    // and the step directory's own entry, when it is new
    if (rc == 0 && files_fsync(&ck->tier[tier]) != 0)
        rc = util_fail(err, err_len, "cannot fsync '%s'", ck->tier[tier].path);
    return rc;
}

/* The oldest of the newest `keep` steps of a tier that hold a complete
 * checkpoint valid under `fence` (one step counts once, whatever its
 * epochs); 0 when there are none. */
static int64_t oldest_kept(Checkpointer *ck, int tier, const CkptFence *fence, int keep)
{
    FilesStep *steps = NULL;
    int64_t below = 0;
    int count = 0, kept = 0;
    if (files_list_tier(&ck->tier[tier], &steps, &count) != 0)
        return 0;
    for (int i = count - 1; i >= 0 && kept < keep; i--) {
        FilesDir dir;
        if ((kept > 0 && steps[i].step == below) ||
            !ckpt_fence_allows(fence, steps[i].epoch, steps[i].step, NULL, 0) ||
            files_open_step(&ck->tier[tier], steps[i].step, steps[i].epoch, false, &dir, NULL,
                            0) != 0)
            continue;
        if (files_has_file(&dir, CKPT_INDEX_FILE)) {
            below = steps[i].step;
            kept++;
        }
        files_close(&dir);
    }
    free(steps);
    return below;
}

/* Rank 0, after its commit: steps below the returned one go (never the one
 * just committed). The fence is read after the index is in place: a commit
 * that the fence already rejects (it landed after a newer attempt began)
 * prunes nothing, and only valid checkpoints count as kept, so a stale
 * commit never pushes a valid one out. */
static int64_t prune_below(Checkpointer *ck, int tier, int64_t committed)
{
    int keep = tier == TIER_MEMORY && ck->options.keep > 2 ? 2 : ck->options.keep;
    CkptFence fence;
    if (ckpt_fence_read(ck->tier[TIER_DIR].path, &fence, NULL, 0) != 0)
        return 0;
    int64_t below = ckpt_fence_allows(&fence, ck->epoch, committed, NULL, 0)
                        ? oldest_kept(ck, tier, &fence, keep)
                        : 0;
    ckpt_fence_free(&fence);
    return below < committed ? below : committed;
}

/* A writer removes no step of a newer attempt than its own (one that is not
 * elastic, epoch -1, is never fenced off and may remove any). */
static bool may_remove(const Checkpointer *ck, const FilesStep *step)
{
    return ck->epoch < 0 || step->epoch <= ck->epoch;
}

/* Tier 2 is shared storage: rank 0 removes whole directories. Tier 1 is
 * node-local: every rank removes what its node holds. */
static void prune(Checkpointer *ck, int tier, int64_t below)
{
    FilesStep *steps = NULL;
    int count = 0;
    if (below <= 0 || (tier == TIER_DIR && ck->rank != 0) ||
        files_list_tier(&ck->tier[tier], &steps, &count) != 0)
        return;
    for (int i = 0; i < count && steps[i].step < below; i++) {
        if (!may_remove(ck, &steps[i]))
            continue;
        if (ck->rank == 0 || (tier == TIER_MEMORY && ck->replica.on && ck->replica.leader))
            files_remove_step(&ck->tier[tier], steps[i].step, steps[i].epoch);
        else
            files_remove_own(&ck->tier[tier], steps[i].step, steps[i].epoch, ck->rank);
    }
    free(steps);
}

static void report_not_committed(Checkpointer *ck, int tier, int64_t step, int64_t failed)
{
    if (ck->rank == 0)
        fprintf(stderr,
                "phalanx ckpt: the checkpoint of step %lld is not committed to %s (%s): %lld "
                "of %d rank(s) could not write their shard; training goes on\n",
                (long long)step, TIER_NAME[tier], ck->tier[tier].path, (long long)failed,
                ck->world);
}

static bool commit_tier(Checkpointer *ck, int tier, const CkptRunState *state,
                        const void *image, size_t size, const char *build_error)
{
    char err[PATH_MAX + 512];
    FilesDir dir = {.fd = -1};
    int wrote = !image     ? util_fail(err, sizeof(err), "%s", build_error)
                : fenced(ck) ? util_fail(err, sizeof(err), "fenced off by a newer attempt")
                : files_open_step(&ck->tier[tier], state->step, ck->epoch, true, &dir, err,
                                  sizeof(err))
                    ? -1
                    : write_shard(ck, tier, &dir, state->step, image, size, err, sizeof(err));
    if (tier == TIER_MEMORY && ck->replica.on) {
        // every rank takes part, whatever it wrote: its buddy waits for it
        WriteHooks hooks = {ck->threaded ? serve_copy : NULL, ck, SIZE_MAX};
        char why[PATH_MAX + 512];
        if (replica_exchange(&ck->replica, ck->comm, &dir, wrote == 0 ? image : NULL, size,
                             &hooks, why, sizeof(why)) != 0 && wrote == 0)
            wrote = util_fail(err, sizeof(err), "%s", why);
    }
    if (wrote != 0)
        fprintf(stderr, "phalanx ckpt: rank %d: step %lld, %s: %s\n", ck->rank,
                (long long)state->step, TIER_NAME[tier], err);
    // votes: [ranks whose shard is durable, then each rank's shard size]
    int64_t *votes = calloc((size_t)ck->world + 1, sizeof(int64_t));
    if (!votes) {
        mark_broken(ck);
        return false;
    }
    votes[0] = wrote == 0;
    votes[1 + ck->rank] = wrote == 0 ? (int64_t)size : 0;
    int64_t verdict[2] = {0, 0}; // [index committed, prune below this step]
    int rc = agree(ck, votes, (size_t)ck->world + 1);
    bool all_wrote = rc == 0 && votes[0] == ck->world;
    if (all_wrote && ck->rank == 0 && !is_abandoned(ck) && !fenced(ck)) {
        verdict[0] = write_index(ck, tier, &dir, state, votes + 1, err, sizeof(err)) == 0;
        if (verdict[0])
            verdict[1] = prune_below(ck, tier, state->step);
        else
            fprintf(stderr, "phalanx ckpt: step %lld, %s: %s\n", (long long)state->step,
                    TIER_NAME[tier], err);
    }
    if (rc == 0 && !all_wrote)
        report_not_committed(ck, tier, state->step, ck->world - votes[0]);
    free(votes);
    if (rc == 0 && all_wrote)
        rc = agree(ck, verdict, 2);
    if (rc == 0 && verdict[0] && tier == TIER_MEMORY && ck->replica.on)
        replica_share_index(&ck->replica, ck->comm, &dir, ck->index_image, ck->index_size);
    if (rc != 0)
        mark_broken(ck);
    files_close(&dir);
    if (rc != 0 || !verdict[0]) {
        files_remove_own(&ck->tier[tier], state->step, ck->epoch, ck->rank);
        return false;
    }
    prune(ck, tier, verdict[1]);
    return true;
}

static void flush(Checkpointer *ck, const CkptRunState *state)
{
    double start = util_now_seconds();
    void *image = NULL;
    size_t size = 0;
    char err[512];
    int built = ck->source_error[0]
                    ? util_fail(err, sizeof(err), "%s", ck->source_error)
                    : build_shard(ck, state, &image, &size, err, sizeof(err));
    release_staging(ck);
    bool ok[TIER_COUNT] = {false, false}, wanted[TIER_COUNT];
    wanted[TIER_MEMORY] = ck->tier[TIER_MEMORY].path[0] &&
                          ck->stats.last_step[TIER_MEMORY] != state->step;
    wanted[TIER_DIR] = ck->staged_durable || ckpt_durable_due(ck, state->step);
    for (int tier = 0; tier < TIER_COUNT && !ck->broken; tier++)
        if (wanted[tier])
            ok[tier] = commit_tier(ck, tier, state, built == 0 ? image : NULL, size, err);
    free(image);
    pthread_mutex_lock(&ck->lock);
    for (int tier = 0; tier < TIER_COUNT; tier++) {
        if (!wanted[tier])
            continue;
        ck->stats.committed[tier] += ok[tier];
        ck->stats.failed[tier] += !ok[tier];
        if (ok[tier])
            ck->stats.last_step[tier] = state->step;
    }
    if (wanted[TIER_DIR])
        ck->last_dir_ok = ok[TIER_DIR];
    free(ck->index_image);
    ck->index_image = NULL;
    ck->stats.last_shard_bytes = size;
    ck->stats.last_flush_seconds = util_now_seconds() - start;
    pthread_mutex_unlock(&ck->lock);
}

static void *sidecar_main(void *arg)
{
    Checkpointer *ck = arg;
    h5_quiet();
    pthread_mutex_lock(&ck->lock);
    for (;;) {
        if (ck->copy_requested && !ck->staged) {
            pthread_mutex_unlock(&ck->lock);
            copy_snapshot(ck);
            pthread_mutex_lock(&ck->lock);
        } else if (ck->staged) {
            CkptRunState state = ck->staged_state;
            pthread_mutex_unlock(&ck->lock);
            flush(ck, &state);
            pthread_mutex_lock(&ck->lock);
        } else if (ck->quit) {
            break;
        } else {
            pthread_cond_wait(&ck->wake, &ck->lock);
        }
    }
    pthread_mutex_unlock(&ck->lock);
    return NULL;
}

// ----------------------------------------------------------------------------
// the training thread's side

static void free_checkpointer(Checkpointer *ck)
{
    if (!ck)
        return;
    comm_free(ck->comm);
    replica_free(&ck->replica);
    for (int t = 0; t < TIER_COUNT; t++)
        files_close(&ck->tier[t]);
    free(ck->tensors);
    free(ck->own);
    free(ck->staging);
    free(ck->all);
    free(ck->index_template);
    pthread_mutex_destroy(&ck->lock);
    pthread_cond_destroy(&ck->wake);
    pthread_cond_destroy(&ck->copied);
    free(ck);
}

static Checkpointer *new_checkpointer(Comm *world)
{
    Checkpointer *ck = calloc(1, sizeof(*ck));
    if (!ck)
        return NULL;
    ck->rank = comm_rank(world);
    ck->world = comm_size(world);
    for (int t = 0; t < TIER_COUNT; t++)
        ck->tier[t].fd = -1;
    pthread_mutex_init(&ck->lock, NULL);
    pthread_cond_init(&ck->wake, NULL);
    pthread_cond_init(&ck->copied, NULL);
    return ck;
}

/* A flush allocates buffers of the shard's size (the HDF5 image and its
 * copy); glibc maps every allocation above 32 MB afresh and unmaps it at
 * free. The page faults, zeroing and TLB shootdowns of that, every flush,
 * slowed the training thread by ~20% in scripts/bench-ckpt (86 MB shards).
 * Served from the heap and kept there, the same memory is reused instead. */
static void keep_large_buffers(void)
{
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

/* Every rank runs the same collectives whatever failed locally, then all
 * learn whether any rank failed: all return a Checkpointer or none does. */
Checkpointer *ckpt_open(const CkptOptions *options, Comm *world, const CkptTensor *tensors,
                        int count, char *err, size_t err_len)
{
    keep_large_buffers();
    Checkpointer *ck = new_checkpointer(world);
    if (!ck) {
        util_fail(err, err_len, "out of memory");
        return NULL;
    }
    bool memory_ok = true;
    int failed = setup_local(ck, options, tensors, count, &memory_ok, err, err_len);
    ck->comm = comm_split(world, 0, ck->rank);
    if (!ck->comm && !failed)
        failed = util_fail(err, err_len, "cannot make the sidecar's communicator: %s",
                           comm_error(world));
    if (failed)
        ck->own_count = 0; // still take part in the exchange, with nothing
    if (exchange_fragments(ck, world, failed ? NULL : err, err_len) != 0)
        failed = -1;
    if (replica_plan(&ck->replica, world, options->replicate, ck->tier[TIER_MEMORY].path[0],
                     failed ? NULL : err, err_len) != 0)
        failed = -1;
    ck->stats.replicated = ck->replica.on;
    int64_t votes[3] = {failed != 0, !memory_ok, ck->rank == 0 ? (int64_t)new_run_id() : 0};
    if (comm_allreduce(world, votes, 3, COMM_I64) != 0) {
        if (!failed)
            util_fail(err, err_len, "checkpoint set-up: %s", comm_error(world));
        free_checkpointer(ck);
        return NULL;
    }
    // the table is the same on every rank: so is this verdict
    if (votes[0] == 0 && format_fragments_check(ck->all, ck->all_count, err, err_len) != 0) {
        free_checkpointer(ck);
        return NULL;
    }
    if (votes[0] != 0) {
        if (!failed)
            util_fail(err, err_len, "%lld rank(s) could not set up checkpoints (see their "
                      "messages)", (long long)votes[0]);
        free_checkpointer(ck);
        return NULL;
    }
    ck->run_id = (uint64_t)votes[2];
    if (votes[1] != 0) {
        if (ck->rank == 0)
            fprintf(stderr, "phalanx ckpt: %s is off for this run: %lld rank(s) cannot use it\n",
                    TIER_NAME[TIER_MEMORY], (long long)votes[1]);
        ck->tier[TIER_MEMORY].path[0] = '\0';
        ck->replica.on = false;
        ck->options.durable_every = 0; // no tier 1: every checkpoint is durable
    }
    ck->threaded = options->mode == CKPT_ASYNC;
    if (ck->threaded && pthread_create(&ck->thread, NULL, sidecar_main, ck) != 0) {
        // not fatal: the files are the same, only training waits for them
        fprintf(stderr, "phalanx ckpt: rank %d: cannot start the sidecar thread; checkpoints "
                        "are written synchronously\n", ck->rank);
        ck->threaded = false;
    }
    return ck;
}

bool ckpt_due(const Checkpointer *ck, int64_t step)
{
    return step > 0 && step % ck->options.every == 0;
}

bool ckpt_durable_due(const Checkpointer *ck, int64_t step)
{
    long every = ck->options.durable_every ? ck->options.durable_every : ck->options.every;
    return step > 0 && step % every == 0;
}

double ckpt_wait_copied(Checkpointer *ck)
{
    if (!ck->threaded)
        return 0.0;
    pthread_mutex_lock(&ck->lock);
    double stalled = 0.0;
    if (ck->copy_requested) {
        double start = util_now_seconds();
        while (ck->copy_requested)
            pthread_cond_wait(&ck->copied, &ck->lock);
        stalled = util_now_seconds() - start;
        ck->stats.stall_seconds += stalled;
    }
    ck->stats.last_stall_seconds = stalled;
    pthread_mutex_unlock(&ck->lock);
    return stalled;
}

static int snapshot(Checkpointer *ck, const CkptRunState *state, bool durable, char *err,
                    size_t err_len)
{
    ckpt_wait_copied(ck); // the previous version must be out of the buffers
    pthread_mutex_lock(&ck->lock);
    bool broken = ck->broken;
    if (!broken) {
        ck->requested = *state;
        ck->requested_durable = durable;
        ck->requested.format_version = CKPT_FORMAT_VERSION;
        ck->stats.snapshots++;
        ck->copy_requested = true;
        pthread_cond_signal(&ck->wake);
    }
    pthread_mutex_unlock(&ck->lock);
    if (broken)
        return util_fail(err, err_len, "checkpoints stopped after a communication failure");
    if (ck->threaded)
        return 0;
    double start = util_now_seconds();
    copy_snapshot(ck);
    flush(ck, &ck->staged_state);
    pthread_mutex_lock(&ck->lock);
    ck->stats.last_stall_seconds = util_now_seconds() - start;
    ck->stats.stall_seconds += ck->stats.last_stall_seconds;
    pthread_mutex_unlock(&ck->lock);
    return 0;
}

int ckpt_snapshot(Checkpointer *ck, const CkptRunState *state, char *err, size_t err_len)
{
    return snapshot(ck, state, false, err, err_len);
}

int ckpt_snapshot_durable(Checkpointer *ck, const CkptRunState *state, char *err,
                          size_t err_len)
{
    return snapshot(ck, state, true, err, err_len);
}

CkptStats ckpt_stats(Checkpointer *ck)
{
    pthread_mutex_lock(&ck->lock);
    CkptStats stats = ck->stats;
    pthread_mutex_unlock(&ck->lock);
    return stats;
}

/* A successful run no longer needs tier 1, unless tier 2 is behind it. */
static void clean_memory_tier(Checkpointer *ck)
{
    const char *root = ck->tier[TIER_MEMORY].path;
    if (ck->stats.last_step[TIER_MEMORY] > ck->stats.last_step[TIER_DIR]) {
        if (ck->rank == 0)
            fprintf(stderr,
                    "phalanx ckpt: %s kept in %s: its newest checkpoint (step %lld) never "
                    "reached --ckpt-dir\n",
                    TIER_NAME[TIER_MEMORY], root,
                    (long long)ck->stats.last_step[TIER_MEMORY]);
        return;
    }
    prune(ck, TIER_MEMORY, INT64_MAX);
    rmdir(root); // a link is not removed by rmdir, nor what it points to
}

int ckpt_close(Checkpointer *ck, bool success, CkptStats *final)
{
    if (ck->threaded) {
        pthread_mutex_lock(&ck->lock);
        ck->quit = true;
        pthread_cond_signal(&ck->wake);
        pthread_mutex_unlock(&ck->lock);
        pthread_join(ck->thread, NULL);
    }
    // every rank's flushes are over before tier 1 goes
    int synced = comm_barrier(ck->comm);
    if (success && synced == 0 && ck->tier[TIER_MEMORY].path[0] && !ck->broken)
        clean_memory_tier(ck);
    int rc = ck->stats.snapshots == 0 || ck->last_dir_ok ? 0 : -1;
    if (final)
        *final = ck->stats;
    free_checkpointer(ck);
    return rc;
}
