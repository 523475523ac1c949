/*
 * The reader: load one checkpoint into any layout, resume collectively with
 * fallback, and the checks behind `phalanx ckpt ls|verify|inspect`.
 *
 * A checkpoint is read through its index: the fragment table says which
 * shard holds which rows of each logical tensor, and every fragment is read
 * from its shard with its checksums verified. (The index's virtual datasets
 * are for readers without Phalanx: a missing source there reads as NaN,
 * where this reader must report the missing shard instead.)
 */
#include "internal.h"
#include "util.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// ----------------------------------------------------------------------------
// one checkpoint

/* Shards opened so far, by rank, while reading one checkpoint. */
typedef struct {
    const char *dir;
    const CkptIndex *index;
    hid_t *open;
    uint64_t bytes_read; /* tensor data read so far */
} ShardSet;

static const CkptShard *find_shard(const CkptIndex *x, int rank)
{
    for (int i = 0; i < x->shard_count; i++)
        if (x->shards[i].rank == rank)
            return &x->shards[i];
    return NULL;
}

/* Present, of the size the index recorded (a cheap completeness check). */
static CkptStatus shard_present(const char *dir, const CkptShard *s, char *err, size_t err_len)
{
    char path[PATH_MAX];
    ckpt_shard_path(path, sizeof(path), dir, s->rank);
    int64_t size = files_size(path);
    if (size < 0) {
        ckpt_fail_at(err, err_len, path, "is missing");
        return CKPT_INCOMPLETE;
    }
    if (size != s->bytes) {
        ckpt_fail_at(err, err_len, path, "has %lld bytes, the index says %lld (truncated or "
                     "replaced)", (long long)size, (long long)s->bytes);
        return CKPT_CORRUPT;
    }
    return CKPT_OK;
}

static CkptStatus shard_get(ShardSet *set, int rank, hid_t *out, char *err, size_t err_len)
{
    // the index reader checked that shard ranks are 0..shard_count-1, each once
    const CkptShard *s = rank >= 0 && rank < set->index->shard_count
                             ? find_shard(set->index, rank)
                             : NULL;
    if (!s) {
        util_fail(err, err_len, "the index lists no shard for rank %d", rank);
        return CKPT_CORRUPT;
    }
    if (set->open[rank] < 0) {
        char path[PATH_MAX];
        ckpt_shard_path(path, sizeof(path), set->dir, rank);
        CkptStatus status = shard_present(set->dir, s, err, err_len);
        if (status == CKPT_OK)
            status = format_shard_open(path, set->index, rank, &set->open[rank], err, err_len);
        if (status != CKPT_OK)
            return status;
    }
    *out = set->open[rank];
    return CKPT_OK;
}

static int shard_set_init(ShardSet *set, const char *dir, const CkptIndex *index)
{
    set->dir = dir;
    set->index = index;
    set->bytes_read = 0;
    set->open = malloc(((size_t)index->shard_count + 1) * sizeof(hid_t));
    if (!set->open)
        return -1;
    for (int i = 0; i < index->shard_count; i++)
        set->open[i] = H5I_INVALID_HID;
    return 0;
}

static void shard_set_close(ShardSet *set)
{
    for (int i = 0; set->open && i < set->index->shard_count; i++)
        if (set->open[i] >= 0)
            H5Fclose(set->open[i]);
    free(set->open);
}

/* Fragments of `name`: the first one and how many (the table is sorted). */
static int find_fragments(const CkptIndex *x, const char *name, int *count)
{
    int lo = 0, hi = x->fragment_count;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (strcmp(x->fragments[mid].name, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    int end = lo;
    while (end < x->fragment_count && strcmp(x->fragments[end].name, name) == 0)
        end++;
    *count = end - lo;
    return lo;
}

/* `differs`: what a tensor that is missing or of another shape means. When
 * the model shape matched the run's, the index disagrees with its own run
 * state: corrupt (resume falls back); without a model to compare, the
 * caller asked for other tensors: a mismatch. */
static CkptStatus load_tensor(ShardSet *set, const CkptTensor *t, CkptStatus differs, char *err,
                              size_t err_len)
{
    int n, first = find_fragments(set->index, t->name, &n);
    if (n == 0) {
        util_fail(err, err_len, "the checkpoint has no tensor '%s'%s", t->name,
                  differs == CKPT_CORRUPT ? " although its model shape is this run's" : "");
        return differs;
    }
    const CkptFragment *f = &set->index->fragments[first];
    int64_t row = ckpt_row_length(t->ndim, t->shape);
    if (f->ndim != t->ndim || f->shape[0] != t->shape[0] ||
        ckpt_row_length(f->ndim, f->shape) != row) {
        char had[64], has[64];
        ckpt_shape_text(f->ndim, f->shape, had, sizeof(had));
        ckpt_shape_text(t->ndim, t->shape, has, sizeof(has));
        util_fail(err, err_len, "tensor '%s': the checkpoint has shape %s, this run %s", t->name,
                  had, has);
        return differs;
    }
    float *dest[KIND_COUNT] = {t->param, t->m, t->v};
    /* Rows [from, to) of each kind: m and v hold only this rank's share when
     * moments_share_only (a ZeRO-1 rank never holds the whole moments). */
    int64_t share_first = 0, share_count = t->shape[0];
    if (t->moments_share_only) {
        size_t first, count;
        ckpt_tensor_share(t, &first, &count);
        share_first = (int64_t)first / row;
        share_count = (int64_t)count / row;
    }
    for (int i = 0; i < n; i++, f++) {
        hid_t shard;
        CkptStatus status = shard_get(set, f->rank, &shard, err, err_len);
        for (int kind = 0; status == CKPT_OK && kind < KIND_COUNT; kind++) {
            char why[768];
            bool share = kind != KIND_PARAM && t->moments_share_only;
            int64_t from = share ? share_first : 0, to = share ? share_first + share_count
                                                               : t->shape[0];
            int64_t lo = f->row_begin > from ? f->row_begin : from;
            int64_t hi = f->row_end < to ? f->row_end : to;
            if (!dest[kind] || lo >= hi)
                continue;
            status = format_fragment_read_rows(shard, kind, f, lo - f->row_begin, hi - lo,
                                               dest[kind] + (lo - from) * row, why, sizeof(why));
            if (status == CKPT_OK) {
                set->bytes_read += (uint64_t)(hi - lo) * (uint64_t)row * sizeof(float);
            } else {
                char shard_path[PATH_MAX];
                ckpt_shard_path(shard_path, sizeof(shard_path), set->dir, f->rank);
                ckpt_fail_at(err, err_len, shard_path, "%s", why);
            }
        }
        if (status != CKPT_OK)
            return status;
    }
    return CKPT_OK;
}

/* The epoch of the checkpoint in step directory `dir` whose index is
 * `index`, against its directory's name and the fence (checkpoint.h,
 * "Fencing": the one validity rule of every reader). */
static CkptStatus check_epoch(const char *dir, const CkptIndex *index, const CkptFence *fence,
                              char *err, size_t err_len)
{
    double recorded = ckpt_state_get(&index->state, CKPT_EPOCH_KEY, -1);
    if (recorded != (double)(int)recorded || recorded < -1) {
        ckpt_fail_at(err, err_len, dir, "corrupt run state: run/extra '%s' is %g, not an "
                     "attempt number", CKPT_EPOCH_KEY, recorded);
        return CKPT_CORRUPT;
    }
    int epoch = (int)recorded;
    const char *slash = strrchr(dir, '/');
    FilesStep named;
    if (files_parse_step_name(slash ? slash + 1 : dir, &named) && named.epoch != epoch) {
        ckpt_fail_at(err, err_len, dir, "its index was written by epoch %d, its name says %d "
                     "(renamed, or mixed with another attempt's files)", epoch, named.epoch);
        return CKPT_CORRUPT;
    }
    char why[256];
    if (!ckpt_fence_allows(fence, epoch, index->state.step, why, sizeof(why))) {
        ckpt_fail_at(err, err_len, dir, "%s", why);
        return CKPT_FENCED;
    }
    return CKPT_OK;
}

/* check_epoch with the fence of `fence_dir`, or of dir's parent when NULL. */
static CkptStatus check_epoch_at(const char *dir, const char *fence_dir, const CkptIndex *index,
                                 char *err, size_t err_len)
{
    char parent[PATH_MAX];
    if (!fence_dir || !*fence_dir) {
        snprintf(parent, sizeof(parent), "%s", dir);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent)
            *slash = '\0';
        else
            snprintf(parent, sizeof(parent), slash ? "/" : ".");
        fence_dir = parent;
    }
    CkptFence fence;
    char why[PATH_MAX + 512];
    if (ckpt_fence_read(fence_dir, &fence, why, sizeof(why)) != 0) {
        util_fail(err, err_len, "%s", why);
        return CKPT_ERROR;
    }
    CkptStatus status = check_epoch(dir, index, &fence, err, err_len);
    ckpt_fence_free(&fence);
    return status;
}

/* The one validation of load, resume and verify (checkpoint.h, "Reading"):
 * reads and checks the index of the checkpoint at `path` (format_index_read
 * checks all it holds), its epoch against the fence of `fence_dir` (NULL:
 * of the step directory's parent), the model against `expect` and the
 * caller's `check` of the run state when given, and opens its shard set
 * over `dir` (PATH_MAX bytes, which the set refers to). On CKPT_OK the
 * caller closes the set and frees the index; otherwise nothing is left open. */
static CkptStatus open_checkpoint(const char *path, const char *fence_dir,
                                  const CkptModel *expect, CkptStateCheck check, char *dir,
                                  CkptIndex *index, ShardSet *set, char *err, size_t err_len)
{
    h5_quiet();
    CkptStatus status = ckpt_index_read(path, index, err, err_len);
    if (status != CKPT_OK)
        return status;
    char file[PATH_MAX];
    files_locate(path, dir, file);
    char why[1024];
    status = check_epoch_at(dir, fence_dir, index, err, err_len);
    if (status != CKPT_OK)
        ; // named by check_epoch_at
    else if (expect && ckpt_model_check(&index->state.model, expect, err, err_len) != 0)
        status = CKPT_MISMATCH;
    else if (check && check(&index->state, why, sizeof(why)) != 0) {
        ckpt_fail_at(err, err_len, file, "corrupt run state: %s", why);
        status = CKPT_CORRUPT;
    } else if (shard_set_init(set, dir, index) != 0) {
        util_fail(err, err_len, "out of memory");
        status = CKPT_ERROR;
    }
    if (status != CKPT_OK)
        ckpt_index_free(index);
    return status;
}

/* `bytes_read` (may be NULL): the tensor data read, on success. */
static CkptStatus load_checked(const char *path, const char *fence_dir,
                               const CkptTensor *tensors, int count, const CkptModel *expect,
                               CkptStateCheck check, CkptRunState *state,
                               uint64_t *bytes_read, char *err, size_t err_len)
{
    CkptIndex index;
    ShardSet set;
    char dir[PATH_MAX];
    CkptStatus status =
        open_checkpoint(path, fence_dir, expect, check, dir, &index, &set, err, err_len);
    if (status != CKPT_OK)
        return status;
    CkptStatus differs = expect ? CKPT_CORRUPT : CKPT_MISMATCH;
    for (int i = 0; status == CKPT_OK && i < count; i++)
        status = load_tensor(&set, &tensors[i], differs, err, err_len);
    shard_set_close(&set);
    if (status == CKPT_OK)
        *state = index.state;
    if (status == CKPT_OK && bytes_read)
        *bytes_read = set.bytes_read;
    ckpt_index_free(&index);
    return status;
}

CkptStatus ckpt_load(const char *path, const CkptTensor *tensors, int count,
                     const CkptModel *expect, CkptStateCheck check, CkptRunState *state,
                     char *err, size_t err_len)
{
    return load_checked(path, NULL, tensors, count, expect, check, state, NULL, err, err_len);
}

// ----------------------------------------------------------------------------
// listing

/* Index readable, valid under `fence`, and every shard present at its
 * recorded size. */
static CkptStatus quick_check(const char *dir, const CkptFence *fence, char *why,
                              size_t why_len)
{
    CkptIndex index;
    CkptStatus status = ckpt_index_read(dir, &index, why, why_len);
    for (int i = 0; status == CKPT_OK && i < index.shard_count; i++)
        status = shard_present(dir, &index.shards[i], why, why_len);
    if (status == CKPT_OK)
        status = check_epoch(dir, &index, fence, why, why_len);
    ckpt_index_free(&index);
    return status;
}

static void list_entry(CkptEntry *e, const char *dir, const FilesStep *step,
                       const CkptFence *fence)
{
    char index[PATH_MAX];
    struct stat st;
    e->step = step->step;
    e->epoch = step->epoch;
    ckpt_step_dir(e->path, sizeof(e->path), dir, step->step, step->epoch);
    e->bytes = files_dir_bytes(e->path, &e->time);
    files_index_path(index, sizeof(index), e->path);
    if (stat(index, &st) == 0)
        e->time = st.st_mtime;
    e->status = quick_check(e->path, fence, e->why, sizeof(e->why));
    if (e->status == CKPT_OK)
        e->why[0] = '\0';
}

int ckpt_list_fenced(const char *dir, const char *fence_dir, CkptEntry **entries, int *count,
                     char *err, size_t err_len)
{
    FilesStep *steps;
    CkptFence fence;
    int n;
    *entries = NULL;
    *count = 0;
    if (ckpt_fence_read(fence_dir, &fence, err, err_len) != 0)
        return -1;
    if (files_list_steps(dir, &steps, &n, err, err_len) != 0) {
        ckpt_fence_free(&fence);
        return -1;
    }
    CkptEntry *list = calloc((size_t)n + 1, sizeof(CkptEntry));
    for (int i = 0; list && i < n; i++)
        list_entry(&list[i], dir, &steps[i], &fence);
    free(steps);
    ckpt_fence_free(&fence);
    if (!list)
        return util_fail(err, err_len, "out of memory");
    *entries = list;
    *count = n;
    return 0;
}

int ckpt_list(const char *dir, CkptEntry **entries, int *count, char *err, size_t err_len)
{
    return ckpt_list_fenced(dir, dir, entries, count, err, err_len);
}

int64_t ckpt_newest_complete(const CkptOptions *options)
{
    char tiers[2][PATH_MAX];
    ckpt_tier_dirs(options, tiers[0], sizeof(tiers[0]), tiers[1], sizeof(tiers[1]));
    int64_t newest = -1;
    for (int t = 0; t < 2; t++) {
        CkptEntry *entries = NULL;
        int count = 0;
        if (!tiers[t][0] || ckpt_list_fenced(tiers[t], tiers[1], &entries, &count, NULL, 0) != 0)
            continue; /* a directory that does not exist yet holds nothing */
        for (int i = 0; i < count; i++)
            if (entries[i].status == CKPT_OK && entries[i].step > newest)
                newest = entries[i].step;
        free(entries);
    }
    return newest;
}

// ----------------------------------------------------------------------------
// verify

/* Reads every kind of every fragment; reports each failure. */
static CkptStatus verify_data(ShardSet *set, FILE *report)
{
    const CkptIndex *x = set->index;
    int64_t largest = 0;
    for (int i = 0; i < x->fragment_count; i++) {
        const CkptFragment *f = &x->fragments[i];
        int64_t n = (f->row_end - f->row_begin) * ckpt_row_length(f->ndim, f->shape);
        largest = n > largest ? n : largest;
    }
    float *scratch = malloc((size_t)largest * sizeof(float) + 1);
    if (!scratch) {
        fprintf(report, "out of memory for a fragment of %lld floats\n", (long long)largest);
        return CKPT_ERROR;
    }
    CkptStatus worst = CKPT_OK;
    char why[1024];
    for (int i = 0; i < x->fragment_count; i++) {
        const CkptFragment *f = &x->fragments[i];
        hid_t shard;
        CkptStatus status = shard_get(set, f->rank, &shard, why, sizeof(why));
        if (status != CKPT_OK)
            continue; // reported once per shard by verify_shards
        for (int kind = 0; kind < KIND_COUNT; kind++) {
            char what[768];
            if (format_fragment_read(shard, kind, f, scratch, what, sizeof(what)) != CKPT_OK) {
                fprintf(report, "%s/rank_%05d.h5: %s\n", set->dir, f->rank, what);
                worst = CKPT_CORRUPT;
            }
        }
    }
    free(scratch);
    return worst;
}

/* Every shard of the index: present, of its size, belonging to this index. */
static CkptStatus verify_shards(ShardSet *set, FILE *report)
{
    CkptStatus worst = CKPT_OK;
    char why[1024];
    for (int i = 0; i < set->index->shard_count; i++) {
        hid_t shard;
        CkptStatus status = shard_get(set, set->index->shards[i].rank, &shard, why, sizeof(why));
        if (status == CKPT_OK)
            continue;
        fprintf(report, "%s\n", why);
        if (worst != CKPT_INCOMPLETE)
            worst = status;
    }
    return worst;
}

CkptStatus ckpt_verify(const char *path, CkptStateCheck check, FILE *report, char *err,
                       size_t err_len)
{
    CkptIndex index;
    ShardSet set;
    char dir[PATH_MAX];
    CkptStatus status =
        open_checkpoint(path, NULL, NULL, check, dir, &index, &set, err, err_len);
    if (status != CKPT_OK)
        return status;
    CkptStatus shards = verify_shards(&set, report);
    CkptStatus data = verify_data(&set, report);
    shard_set_close(&set);
    // verify_shards ranks a missing piece above a damaged one
    status = shards != CKPT_OK ? shards : data;
    if (status != CKPT_OK)
        ckpt_fail_at(err, err_len, dir, "%s",
                     status == CKPT_INCOMPLETE ? "shards are missing"
                                               : "some data failed its checks");
    ckpt_index_free(&index);
    return status;
}

// ----------------------------------------------------------------------------
// resume

typedef struct {
    char path[PATH_MAX];
    char fence_dir[PATH_MAX]; /* whose fence judges it; "": its parent's */
    int64_t step;
    int epoch;
    int tier;
} Candidate;

static int compare_candidates(const void *a, const void *b)
{
    const Candidate *x = a, *y = b;
    if (x->step != y->step)
        return x->step < y->step ? 1 : -1; // newest first
    if (x->epoch != y->epoch)
        return x->epoch < y->epoch ? 1 : -1; // of one step, the newest attempt's
    return x->tier - y->tier;                // tier 1 (memory, faster) first
}

/* The complete and valid checkpoints of `dir` (judged by the fence of
 * `fence_dir`), appended to *list. Newer ones that are not are skipped with
 * a note (after a crash or a recovery, that is expected). */
static void add_complete(const char *dir, const char *fence_dir, int tier, Candidate **list,
                         int *count)
{
    CkptEntry *entries;
    int n;
    char err[PATH_MAX + 512];
    if (!dir[0])
        return;
    if (ckpt_list_fenced(dir, fence_dir, &entries, &n, err, sizeof(err)) != 0) {
        if (files_is_dir(dir))
            fprintf(stderr, "phalanx ckpt: cannot list %s: %s\n", dir, err);
        return;
    }
    Candidate *grown = realloc(*list, ((size_t)*count + (size_t)n + 1) * sizeof(Candidate));
    bool found = false;
    for (int i = n - 1; grown && i >= 0; i--) {
        if (entries[i].status != CKPT_OK) {
            if (!found)
                fprintf(stderr, "phalanx ckpt: skipping %s (%s)\n", entries[i].path,
                        entries[i].why);
            continue;
        }
        found = true;
        Candidate *c = &grown[(*count)++];
        snprintf(c->path, sizeof(c->path), "%s", entries[i].path);
        snprintf(c->fence_dir, sizeof(c->fence_dir), "%s", fence_dir);
        c->step = entries[i].step;
        c->epoch = entries[i].epoch;
        c->tier = tier;
    }
    if (grown)
        *list = grown;
    free(entries);
}

/* After an explicit DIR/step_N (or its index.h5), the complete checkpoints
 * of DIR older than N: what resume falls back to when step N is refused. */
static void add_older_siblings(const char *spec, Candidate **list, int *count)
{
    char dir[PATH_MAX], index[PATH_MAX];
    files_locate(spec, dir, index);
    char *slash = strrchr(dir, '/');
    const char *base = slash ? slash + 1 : dir;
    FilesStep named;
    if (!files_parse_step_name(base, &named))
        return;
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof(dir), ".");
    int first = *count;
    add_complete(dir, dir, 2, list, count);
    int kept = first;
    for (int i = first; i < *count; i++)
        if ((*list)[i].step < named.step)
            (*list)[kept++] = (*list)[i];
    *count = kept;
}

/* Rank 0: what to try, newest first. Returns how many (0: nothing found). */
static int resume_candidates(const CkptOptions *options, const char *spec, Candidate **out,
                             char *err, size_t err_len)
{
    char tier1[PATH_MAX], tier2[PATH_MAX], index[PATH_MAX];
    int count = 0;
    *out = NULL;
    if (strcmp(spec, "latest") == 0) {
        if (!options->dir || !*options->dir) {
            util_fail(err, err_len, "--resume latest needs --ckpt-dir");
            return 0;
        }
        ckpt_tier_dirs(options, tier1, sizeof(tier1), tier2, sizeof(tier2));
        add_complete(tier1, tier2, 1, out, &count); // tier 1 is judged by tier 2's fence
        add_complete(tier2, tier2, 2, out, &count);
        if (count == 0)
            util_fail(err, err_len, "--resume latest: no complete checkpoint in '%s'%s%s%s",
                      tier2, tier1[0] ? " or in tier 1 '" : "", tier1, tier1[0] ? "'" : "");
    } else {
        files_index_path(index, sizeof(index), spec);
        FilesStep *steps = NULL;
        int n = 0;
        // a directory of step directories: its newest complete checkpoints
        if (files_is_dir(spec) && !files_exists(index) &&
            files_list_steps(spec, &steps, &n, NULL, 0) == 0 && n > 0)
            add_complete(spec, spec, 2, out, &count);
        free(steps);
        if (count == 0 && (*out = calloc(1, sizeof(Candidate)))) {
            snprintf((*out)[0].path, sizeof((*out)[0].path), "%s", spec);
            (*out)[0].step = INT64_MAX; // the one asked for comes first
            count = 1;
            add_older_siblings(spec, out, &count);
        }
    }
    if (count > 1)
        qsort(*out, (size_t)count, sizeof(Candidate), compare_candidates);
    return count;
}

static CkptStatus agree_status(Comm *comm, CkptStatus status, const char *mine, char *err,
                               size_t err_len);

/* Sums *read over the ranks of `comm` (every rank the same). */
static void sum_read_bytes(Comm *comm, CkptReadBytes *read)
{
    uint64_t bytes[3] = {read->host_memory, read->other_hosts, read->durable};
    if (comm_allreduce(comm, bytes, 3, COMM_I64) == 0)
        *read = (CkptReadBytes){bytes[0], bytes[1], bytes[2]};
}

/* Loads `path` on every rank; returns the status of the first rank that
 * failed (its message in err on every rank), or CKPT_OK with *read summed
 * over the ranks. */
static CkptStatus resume_try(Comm *comm, const Candidate *c, const CkptTensor *tensors,
                             int count, const CkptModel *expect, CkptStateCheck check,
                             CkptRunState *state, CkptReadBytes *read, char *err,
                             size_t err_len)
{
    char mine[1024];
    uint64_t bytes = 0;
    CkptStatus status = load_checked(c->path, c->fence_dir, tensors, count, expect, check,
                                     state, &bytes, mine, sizeof(mine));
    status = agree_status(comm, status, mine, err, err_len);
    if (status == CKPT_OK) {
        *read = c->tier == 1 ? (CkptReadBytes){.host_memory = bytes}
                             : (CkptReadBytes){.durable = bytes};
        sum_read_bytes(comm, read);
    }
    return status;
}

/* Every rank learns every rank's status: the same verdict everywhere (the
 * first failed rank's, its message `mine` in err on every rank). */
static CkptStatus agree_status(Comm *comm, CkptStatus status, const char *mine, char *err,
                               size_t err_len)
{
    int world = comm_size(comm), rank = comm_rank(comm);
    int64_t *statuses = calloc((size_t)world, sizeof(int64_t));
    if (!statuses) {
        util_fail(err, err_len, "resume: out of memory");
        return CKPT_ERROR;
    }
    statuses[rank] = status;
    if (comm_allreduce(comm, statuses, (size_t)world, COMM_I64) != 0) {
        util_fail(err, err_len, "resume: %s", comm_error(comm));
        free(statuses);
        return CKPT_ERROR;
    }
    int first = 0;
    while (first < world && statuses[first] == CKPT_OK)
        first++;
    CkptStatus result = first < world ? (CkptStatus)statuses[first] : CKPT_OK;
    free(statuses);
    if (result == CKPT_OK)
        return CKPT_OK;
    char message[1024];
    snprintf(message, sizeof(message), "%s", mine);
    if (comm_broadcast(comm, message, sizeof(message), COMM_BYTE, first) != 0)
        snprintf(message, sizeof(message), "failed on rank %d", first);
    message[sizeof(message) - 1] = '\0';
    if (world > 1)
        util_fail(err, err_len, "rank %d: %s", first, message);
    else
        util_fail(err, err_len, "%s", message);
    return result;
}

/* Candidate `which` of the survey, assembled and read on every rank. */
static CkptStatus memory_try(Comm *comm, const char *tier1, const char *tier2,
                             const ReplicaSurvey *survey, int which, const CkptTensor *tensors,
                             int count, const CkptModel *expect, CkptStateCheck check,
                             CkptRunState *state, CkptReadBytes *read, char *err,
                             size_t err_len)
{
    ReplicaView view;
    char mine[1024];
    CkptStatus status = CKPT_OK;
    if (replica_fetch(comm, tier1, survey, which, &view, mine, sizeof(mine)) != 0)
        status = CKPT_INCOMPLETE;
    else
        status = load_checked(view.view, tier2, tensors, count, expect, check, state, NULL,
                              mine, sizeof(mine));
    replica_view_remove(tier1, &view);
    status = agree_status(comm, status, mine, err, err_len);
    if (status != CKPT_OK)
        return status;
    *read = (CkptReadBytes){.host_memory = view.local_bytes, .other_hosts = view.network_bytes};
    sum_read_bytes(comm, read);
    if (comm_rank(comm) == 0)
        fprintf(stderr, "phalanx ckpt: recovered step %lld from memory (tier 1 of the "
                        "surviving hosts): %llu bytes read where they were held, %llu bytes "
                        "over the network from other hosts\n",
                (long long)view.step, (unsigned long long)read->host_memory,
                (unsigned long long)read->other_hosts);
    return status;
}

/* "latest" with buddy copies in tier 1: the newest checkpoint the
 * survivors' memory holds whole (checkpoint.h, "Replication"). CKPT_OK, or
 * CKPT_NOT_FOUND to go on to the tiers as they are (rank 0 says why when
 * memory had copies but no usable checkpoint). */
static CkptStatus resume_from_memory(Comm *comm, const CkptOptions *options,
                                     const CkptTensor *tensors, int count,
                                     const CkptModel *expect, CkptRunState *state,
                                     char *path_out, size_t path_len, CkptReadBytes *read)
{
    char tier1[PATH_MAX], tier2[PATH_MAX], err[1024];
    ckpt_tier_dirs(options, tier1, sizeof(tier1), tier2, sizeof(tier2));
    ReplicaSurvey survey;
    if (!tier1[0] || replica_survey(comm, tier1, &survey, err, sizeof(err)) != 0)
        return CKPT_NOT_FOUND;
    // memory is read for speed, never for an older state than the durable tier's
    CkptOptions durable = *options;
    durable.memory_dir = "none";
    int64_t floor = comm_rank(comm) == 0 ? ckpt_newest_complete(&durable) : -1;
    if (comm_broadcast(comm, &floor, 1, COMM_I64, 0) != 0)
        floor = INT64_MAX;
    CkptStatus status = CKPT_NOT_FOUND;
    for (int i = 0; survey.replicated && i < survey.candidate_count &&
                    survey.candidates[i][0] >= floor; i++) {
        status = memory_try(comm, tier1, tier2, &survey, i, tensors, count, expect,
                            options->check_state, state, read, err, sizeof(err));
        if (status == CKPT_OK) {
            ckpt_step_dir(path_out, path_len, tier1, survey.candidates[i][0],
                          (int)survey.candidates[i][1]);
            break;
        }
        if (comm_rank(comm) == 0)
            fprintf(stderr, "phalanx ckpt: cannot recover step %lld from memory (%s)\n",
                    (long long)survey.candidates[i][0], err);
        if (status == CKPT_MISMATCH || status == CKPT_ERROR)
            break;
    }
    if (status != CKPT_OK && survey.replicated && comm_rank(comm) == 0)
        fprintf(stderr, "phalanx ckpt: the surviving hosts' memory holds no complete "
                        "checkpoint (%s): reading the durable tier\n",
                survey.candidate_count == 0
                    ? "some shard is in neither its own nor its buddy's memory: a host and "
                      "its buddy host were both lost"
                    : "every complete one failed its checks");
    replica_survey_free(&survey);
    return status == CKPT_OK ? CKPT_OK : CKPT_NOT_FOUND;
}

CkptStatus ckpt_resume(Comm *comm, const CkptOptions *options, const char *spec,
                       const CkptTensor *tensors, int count, const CkptModel *expect,
                       CkptRunState *state, char *path_out, size_t path_len,
                       CkptReadBytes *read, char *err, size_t err_len)
{
    CkptReadBytes unused;
    if (!read)
        read = &unused;
    *read = (CkptReadBytes){0};
    if (strcmp(spec, "latest") == 0 && options->dir && *options->dir &&
        resume_from_memory(comm, options, tensors, count, expect, state, path_out, path_len,
                           read) == CKPT_OK)
        return CKPT_OK;
    Candidate *candidates = NULL, tried = {.path = ""};
    int64_t n = 0;
    char none[1024] = "";
    if (comm_rank(comm) == 0)
        n = resume_candidates(options, spec, &candidates, none, sizeof(none));
    if (comm_broadcast(comm, &n, 1, COMM_I64, 0) != 0 ||
        comm_broadcast(comm, none, sizeof(none), COMM_BYTE, 0) != 0) {
        free(candidates);
        util_fail(err, err_len, "resume: %s", comm_error(comm));
        return CKPT_ERROR;
    }
    CkptStatus status = CKPT_NOT_FOUND;
    util_fail(err, err_len, "%s", none);
    for (int64_t i = 0; i < n; i++) {
        if (comm_rank(comm) == 0)
            tried = candidates[i];
        if (comm_broadcast(comm, &tried, sizeof(tried), COMM_BYTE, 0) != 0) {
            status = CKPT_ERROR;
            util_fail(err, err_len, "resume: %s", comm_error(comm));
            break;
        }
        tried.path[sizeof(tried.path) - 1] = tried.fence_dir[sizeof(tried.fence_dir) - 1] = '\0';
        status = resume_try(comm, &tried, tensors, count, expect, options->check_state, state,
                            read, err, err_len);
        // a model that does not fit fails every checkpoint the same way
        if (status == CKPT_OK || status == CKPT_MISMATCH || status == CKPT_ERROR)
            break;
        if (comm_rank(comm) == 0 && i + 1 < n)
            fprintf(stderr, "phalanx ckpt: cannot resume from %s (%s); trying the previous "
                            "complete checkpoint\n", tried.path, err);
    }
    free(candidates);
    if (status == CKPT_OK)
        snprintf(path_out, path_len, "%s", tried.path);
    return status;
}
