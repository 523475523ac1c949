/*
 * Buddy replication of tier 1 and recovery from the survivors' memory
 * (checkpoint.h, "Replication"). The sidecar calls replica_exchange and
 * replica_share_index from its thread on its own communicator; recovery
 * (replica_survey, replica_fetch) runs on the training thread before the
 * sidecar exists.
 */
#include "internal.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { HOST_NAME_BYTES = 256 };
enum { TAG_SIZE = 7101, TAG_DATA = 7102 };
enum { KIND_OWN = 0, KIND_COPY = 1 };
/* one surveyed item: step, epoch, shard (-1: the index), kind, count, rank */
enum { ITEM_STEP, ITEM_EPOCH, ITEM_SHARD, ITEM_KIND, ITEM_COUNT, ITEM_RANK, ITEM_FIELDS };

bool ckpt_replicate_parse(const char *text, CkptReplicate *out)
{
    static const char *const names[] = {"auto", "on", "off"};
    for (int i = 0; i < 3; i++)
        if (strcmp(text, names[i]) == 0) {
            *out = (CkptReplicate)i;
            return true;
        }
    return false;
}

void replica_copy_name(char *out, size_t len, int rank)
{
    snprintf(out, len, "buddy_rank_%05d.h5", rank);
}

// ----------------------------------------------------------------------------
// the pairing

/* Host ordinals by first appearance in rank order. */
static int number_hosts(const char *names, int world, int *host)
{
    int hosts = 0;
    for (int r = 0; r < world; r++) {
        host[r] = -1;
        for (int q = 0; q < r && host[r] < 0; q++)
            if (strcmp(names + (size_t)q * HOST_NAME_BYTES,
                       names + (size_t)r * HOST_NAME_BYTES) == 0)
                host[r] = host[q];
        if (host[r] < 0)
            host[r] = hosts++;
    }
    return hosts;
}

/* Rank i of host h is kept by rank i mod n of host h+1 (cyclic). */
static void pair_buddies(const int *host, int hosts, int world, int *buddy)
{
    for (int r = 0; r < world; r++) {
        int index = 0, next = (host[r] + 1) % hosts, on_next = 0;
        for (int q = 0; q < r; q++)
            index += host[q] == host[r];
        for (int q = 0; q < world; q++)
            on_next += host[q] == next;
        int wanted = index % on_next;
        buddy[r] = -1;
        for (int q = 0; q < world && buddy[r] < 0; q++)
            if (host[q] == next && wanted-- == 0)
                buddy[r] = q;
    }
}

int replica_plan(Replica *r, Comm *world, CkptReplicate mode, bool memory_tier, char *err,
                 size_t err_len)
{
    memset(r, 0, sizeof(*r));
    r->rank = comm_rank(world);
    r->world = comm_size(world);
    char mine[HOST_NAME_BYTES] = "";
    if (gethostname(mine, sizeof(mine) - 1) != 0)
        snprintf(mine, sizeof(mine), "?");
    char *names = calloc((size_t)r->world, HOST_NAME_BYTES);
    int *host = calloc((size_t)r->world, sizeof(int));
    r->buddy = calloc((size_t)r->world, sizeof(int));
    if (!names || !host || !r->buddy ||
        comm_allgather(world, mine, names, HOST_NAME_BYTES, COMM_BYTE) != 0) {
        free(names);
        free(host);
        return util_fail(err, err_len, "replication set-up: %s",
                         names && host && r->buddy ? comm_error(world) : "out of memory");
    }
    int hosts = number_hosts(names, r->world, host);
    r->leader = true;
    for (int q = 0; q < r->rank; q++)
        r->leader = r->leader && host[q] != host[r->rank];
    r->on = mode != CKPT_REPLICATE_OFF && memory_tier && hosts > 1;
    if (r->on)
        pair_buddies(host, hosts, r->world, r->buddy);
    else
        for (int q = 0; q < r->world; q++)
            r->buddy[q] = -1;
    if (mode == CKPT_REPLICATE_ON && memory_tier && hosts == 1 && r->rank == 0)
        fprintf(stderr, "phalanx ckpt: every rank is on one host (%s): there is no buddy "
                        "on another host, so tier 1 is not replicated\n", mine);
    free(names);
    free(host);
    return 0;
}

void replica_free(Replica *r)
{
    free(r->buddy);
    r->buddy = NULL;
}

// ----------------------------------------------------------------------------
// the sidecar's side

int replica_wait(CommRequest *request, const WriteHooks *hooks)
{
    if (!request)
        return -1;
    bool done = false;
    while (hooks && hooks->between && !done) {
        if (comm_test(request, &done) != 0)
            break;
        if (!done) {
            hooks->between(hooks->ctx);
            nanosleep(&(struct timespec){0, 200000}, NULL);
        }
    }
    return comm_wait(request);
}

/* Receives the copy of `source`'s shard and writes it into `step`. */
static int keep_copy(Comm *comm, const FilesDir *step, int source, const WriteHooks *hooks,
                     char *err, size_t err_len)
{
    int64_t size = -1;
    if (replica_wait(comm_irecv(comm, &size, 1, COMM_I64, source, TAG_SIZE), hooks) != 0)
        return util_fail(err, err_len, "receiving rank %d's shard: %s", source,
                         comm_error(comm));
    if (size < 0)
        return util_fail(err, err_len, "rank %d had no shard to send", source);
    char *bytes = malloc((size_t)size + 1);
    int rc = bytes ? 0 : util_fail(err, err_len, "out of memory for rank %d's shard", source);
    // the sender sends the bytes whatever happens here: always receive them
    char sink[1];
    if (replica_wait(comm_irecv(comm, bytes ? bytes : sink, bytes ? (size_t)size : 0,
                                COMM_BYTE, source, TAG_DATA), hooks) != 0 && rc == 0)
        rc = util_fail(err, err_len, "receiving rank %d's shard: %s", source,
                       comm_error(comm));
    char name[64];
    replica_copy_name(name, sizeof(name), source);
    if (rc == 0)
        rc = files_write(step, name, bytes, (size_t)size, hooks, err, err_len);
    free(bytes);
    return rc;
}

int replica_exchange(const Replica *r, Comm *comm, const FilesDir *step, const void *image,
                     size_t size, const WriteHooks *hooks, char *err, size_t err_len)
{
    int64_t sent_size = image ? (int64_t)size : -1;
    int buddy = r->buddy[r->rank];
    CommRequest *sends[2] = {NULL, NULL};
    sends[0] = comm_isend(comm, &sent_size, 1, COMM_I64, buddy, TAG_SIZE);
    if (image)
        sends[1] = comm_isend(comm, image, size, COMM_BYTE, buddy, TAG_DATA);
    int rc = 0;
    for (int source = 0; source < r->world; source++) {
        char why[PATH_MAX + 256];
        if (r->buddy[source] == r->rank &&
            keep_copy(comm, step, source, hooks, why, sizeof(why)) != 0 && rc == 0)
            rc = util_fail(err, err_len, "the buddy copy of rank %d: %s", source, why);
    }
    for (int i = 0; i < 2; i++)
        if ((i == 0 || image) && replica_wait(sends[i], hooks) != 0 && rc == 0)
            rc = util_fail(err, err_len, "sending the shard to buddy rank %d: %s", buddy,
                           comm_error(comm));
    return rc;
}

void replica_share_index(const Replica *r, Comm *comm, const FilesDir *step,
                         const void *image, size_t size)
{
    int64_t bytes = r->rank == 0 ? (int64_t)size : 0;
    if (comm_broadcast(comm, &bytes, 1, COMM_I64, 0) != 0 || bytes <= 0)
        return;
    char *copy = r->rank == 0 ? (char *)image : malloc((size_t)bytes);
    char sink[1], err[PATH_MAX + 256];
    int rc = comm_broadcast(comm, copy ? copy : sink, copy ? (size_t)bytes : 0, COMM_BYTE, 0);
    if (rc == 0 && copy && r->leader && r->rank != 0 &&
        files_publish(step, CKPT_INDEX_FILE, copy, (size_t)bytes, err, sizeof(err)) != 0)
        fprintf(stderr, "phalanx ckpt: rank %d: the tier-1 index on this host: %s\n", r->rank,
                err);
    if (r->rank != 0)
        free(copy);
}

// ----------------------------------------------------------------------------
// the survey of the survivors' tier 1

static int add_item(int64_t **items, int *count, int *room, const int64_t item[ITEM_FIELDS])
{
    if (*count == *room) {
        int grown_room = *room ? *room * 2 : 64;
        int64_t *grown = realloc(*items, (size_t)grown_room * ITEM_FIELDS * sizeof(int64_t));
        if (!grown)
            return -1;
        *items = grown;
        *room = grown_room;
    }
    memcpy(*items + (size_t)*count * ITEM_FIELDS, item, ITEM_FIELDS * sizeof(int64_t));
    (*count)++;
    return 0;
}

/* shard rank and kind from a file name; false for other names */
static bool parse_holding(const char *name, int64_t *shard, int64_t *kind)
{
    const char *digits = strncmp(name, "buddy_rank_", 11) == 0 ? name + 11
                         : strncmp(name, "rank_", 5) == 0      ? name + 5
                                                               : NULL;
    size_t n = digits ? strspn(digits, "0123456789") : 0;
    if (n < 5 || strcmp(digits + n, ".h5") != 0)
        return false;
    *shard = strtoll(digits, NULL, 10);
    *kind = digits == name + 5 ? KIND_OWN : KIND_COPY;
    return true;
}

/* The holdings of one step directory of this host's tier 1. */
static int survey_step(const FilesDir *tier, const FilesStep *s, int rank, int64_t **items,
                       int *count, int *room)
{
    FilesDir dir = {.fd = -1};
    if (files_open_step(tier, s->step, s->epoch, false, &dir, NULL, 0) != 0)
        return 0;
    int fd = dup(dir.fd), rc = 0;
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *e;
    while (d && rc == 0 && (e = readdir(d))) {
        int64_t item[ITEM_FIELDS] = {s->step, s->epoch, 0, 0, 0, rank};
        if (!files_has_file(&dir, e->d_name))
            continue;
        if (strcmp(e->d_name, CKPT_INDEX_FILE) == 0) {
            CkptIndex index;
            if (ckpt_index_read(dir.path, &index, NULL, 0) != CKPT_OK)
                continue; // a damaged index holds nothing
            item[ITEM_SHARD] = -1;
            item[ITEM_COUNT] = index.shard_count;
            ckpt_index_free(&index);
        } else if (!parse_holding(e->d_name, &item[ITEM_SHARD], &item[ITEM_KIND])) {
            continue;
        }
        rc = add_item(items, count, room, item);
    }
    if (d)
        closedir(d);
    else if (fd >= 0)
        close(fd);
    files_close(&dir);
    return rc;
}

static int survey_local(const char *tier1, int rank, int64_t **items, int *count)
{
    FilesDir tier = {.fd = -1};
    snprintf(tier.path, sizeof(tier.path), "%s", tier1);
    *items = NULL;
    *count = 0;
    if (!files_is_dir(tier1) || files_open_private(&tier, NULL, 0) != 0)
        return 0; // nothing held here (or not ours to trust)
    FilesStep *steps = NULL;
    int n = 0, room = 0, rc = files_list_tier(&tier, &steps, &n);
    for (int i = 0; rc == 0 && i < n; i++)
        rc = survey_step(&tier, &steps[i], rank, items, count, &room);
    free(steps);
    files_close(&tier);
    return rc;
}

/* Every rank's items, padded to the largest count (as exchange_fragments). */
static int gather_items(Comm *comm, const int64_t *mine, int count, ReplicaSurvey *survey)
{
    int world = comm_size(comm);
    int64_t own = count, *counts = calloc((size_t)world, sizeof(int64_t));
    if (!counts || comm_allgather(comm, &own, counts, 1, COMM_I64) != 0) {
        free(counts);
        return -1;
    }
    int64_t most = 0;
    for (int r = 0; r < world; r++)
        most = counts[r] > most ? counts[r] : most;
    size_t fields = (size_t)most * ITEM_FIELDS;
    int64_t *send = calloc(fields + 1, sizeof(int64_t));
    int64_t *recv = calloc(fields * (size_t)world + 1, sizeof(int64_t));
    survey->items = calloc(fields * (size_t)world + 1, sizeof(int64_t));
    int rc = send && recv && survey->items ? 0 : -1;
    if (rc == 0 && count > 0)
        memcpy(send, mine, (size_t)count * ITEM_FIELDS * sizeof(int64_t));
    if (rc == 0 && most > 0 && comm_allgather(comm, send, recv, fields, COMM_I64) != 0)
        rc = -1;
    for (int r = 0; rc == 0 && r < world; r++) {
        memcpy(survey->items + (size_t)survey->item_count * ITEM_FIELDS, recv + (size_t)r * fields,
               (size_t)counts[r] * ITEM_FIELDS * sizeof(int64_t));
        survey->item_count += (int)counts[r];
    }
    free(counts);
    free(send);
    free(recv);
    return rc;
}

static const int64_t *item_at(const ReplicaSurvey *s, int i)
{
    return s->items + (size_t)i * ITEM_FIELDS;
}

/* The lowest rank that holds `shard` (-1: the index) of (step, epoch) as
 * `kind` (any kind for the index); -1 when none does. With `rank` >= 0:
 * that rank, when it holds it, else -1. */
static int holder_of(const ReplicaSurvey *s, int64_t step, int64_t epoch, int64_t shard,
                     int64_t kind, int rank)
{
    int best = -1;
    for (int i = 0; i < s->item_count; i++) {
        const int64_t *x = item_at(s, i);
        if (x[ITEM_STEP] != step || x[ITEM_EPOCH] != epoch || x[ITEM_SHARD] != shard ||
            (shard >= 0 && x[ITEM_KIND] != kind) || (rank >= 0 && x[ITEM_RANK] != rank))
            continue;
        if (best < 0 || x[ITEM_RANK] < best)
            best = (int)x[ITEM_RANK];
    }
    return best;
}

/* Shards in the index of (step, epoch), -1 when no rank holds its index. */
static int64_t shard_count(const ReplicaSurvey *s, int64_t step, int64_t epoch)
{
    for (int i = 0; i < s->item_count; i++) {
        const int64_t *x = item_at(s, i);
        if (x[ITEM_STEP] == step && x[ITEM_EPOCH] == epoch && x[ITEM_SHARD] == -1)
            return x[ITEM_COUNT];
    }
    return -1;
}

/* The kind of copy of `shard` that recovery reads: an own copy if any. */
static int64_t chosen_kind(const ReplicaSurvey *s, int64_t step, int64_t epoch, int64_t shard)
{
    return holder_of(s, step, epoch, shard, KIND_OWN, -1) >= 0 ? KIND_OWN : KIND_COPY;
}

static bool held_whole(const ReplicaSurvey *s, int64_t step, int64_t epoch)
{
    int64_t n = shard_count(s, step, epoch);
    for (int64_t shard = 0; shard < n; shard++)
        if (holder_of(s, step, epoch, shard, chosen_kind(s, step, epoch, shard), -1) < 0)
            return false;
    return n > 0;
}

static int compare_newest(const void *a, const void *b)
{
    const int64_t *x = a, *y = b;
    if (x[0] != y[0])
        return x[0] < y[0] ? 1 : -1;
    return x[1] < y[1] ? 1 : x[1] > y[1] ? -1 : 0;
}

static int find_candidates(ReplicaSurvey *s)
{
    s->candidates = calloc((size_t)s->item_count + 1, sizeof(*s->candidates));
    if (!s->candidates)
        return -1;
    for (int i = 0; i < s->item_count; i++) {
        const int64_t *x = item_at(s, i);
        s->replicated = s->replicated || (x[ITEM_SHARD] >= 0 && x[ITEM_KIND] == KIND_COPY);
        bool seen = false;
        for (int c = 0; c < s->candidate_count && !seen; c++)
            seen = s->candidates[c][0] == x[ITEM_STEP] && s->candidates[c][1] == x[ITEM_EPOCH];
        if (!seen && held_whole(s, x[ITEM_STEP], x[ITEM_EPOCH])) {
            s->candidates[s->candidate_count][0] = x[ITEM_STEP];
            s->candidates[s->candidate_count][1] = x[ITEM_EPOCH];
            s->candidate_count++;
        }
    }
    qsort(s->candidates, (size_t)s->candidate_count, sizeof(*s->candidates), compare_newest);
    return 0;
}

int replica_survey(Comm *comm, const char *tier1, ReplicaSurvey *survey, char *err,
                   size_t err_len)
{
    memset(survey, 0, sizeof(*survey));
    int64_t *mine = NULL;
    int count = 0;
    int64_t failed = survey_local(tier1, comm_rank(comm), &mine, &count) != 0;
    if (failed)
        count = 0;
    int rc = comm_allreduce(comm, &failed, 1, COMM_I64) == 0 && failed == 0 &&
                     gather_items(comm, mine, count, survey) == 0 && find_candidates(survey) == 0
                 ? 0
                 : util_fail(err, err_len, "surveying tier 1: %s",
                             failed ? "out of memory" : comm_error(comm));
    free(mine);
    return rc;
}

void replica_survey_free(ReplicaSurvey *survey)
{
    free(survey->items);
    free(survey->candidates);
    memset(survey, 0, sizeof(*survey));
}

// ----------------------------------------------------------------------------
// assembling one checkpoint from memory

/* The file of `shard` (-1: the index) of `kind` in a step directory. */
static void holding_name(char *out, size_t len, int64_t shard, int64_t kind)
{
    if (shard < 0)
        snprintf(out, len, "%s", CKPT_INDEX_FILE);
    else if (kind == KIND_OWN)
        files_shard_name(out, len, (int)shard);
    else
        replica_copy_name(out, len, (int)shard);
}

static char *read_holding(const FilesDir *dir, const char *name, int64_t *size)
{
    int fd = openat(dir->fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    char *bytes = NULL;
    *size = -1;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
        (bytes = malloc((size_t)st.st_size + 1))) {
        ssize_t got = 0;
        while (got < st.st_size) {
            ssize_t n = pread(fd, bytes + got, (size_t)(st.st_size - got), got);
            if (n <= 0)
                break;
            got += n;
        }
        if (got == st.st_size)
            *size = st.st_size;
    }
    if (fd >= 0)
        close(fd);
    if (*size < 0) {
        free(bytes);
        bytes = NULL;
    }
    return bytes;
}

/* One holding into the view: linked when this host holds it, else received
 * from its holder (who sends it to each rank that lacks it, in one order). */
typedef struct {
    Comm *comm;
    const ReplicaSurvey *survey;
    const FilesDir *source, *view;
    ReplicaView *out;
    int rank, world;
} Assembly;

static int link_holding(Assembly *a, const char *name, const char *as)
{
    struct stat st;
    if (!files_has_file(a->source, name) || fstatat(a->source->fd, name, &st, AT_SYMLINK_NOFOLLOW))
        return -1;
    unlinkat(a->view->fd, as, 0);
    if (linkat(a->source->fd, name, a->view->fd, as, 0) != 0)
        return -1;
    a->out->local_bytes += (uint64_t)st.st_size;
    return 0;
}

static int send_holding(Assembly *a, const char *name, int to)
{
    int64_t size;
    char *bytes = read_holding(a->source, name, &size);
    int rc = comm_send(a->comm, &size, 1, COMM_I64, to, TAG_SIZE);
    if (rc == 0 && size > 0)
        rc = comm_send(a->comm, bytes, (size_t)size, COMM_BYTE, to, TAG_DATA);
    free(bytes);
    return rc;
}

static int receive_holding(Assembly *a, const char *as, int from, char *err, size_t err_len)
{
    int64_t size = -1;
    if (comm_recv(a->comm, &size, 1, COMM_I64, from, TAG_SIZE) != 0)
        return util_fail(err, err_len, "from rank %d: %s", from, comm_error(a->comm));
    if (size < 0)
        return util_fail(err, err_len, "rank %d could not read its copy of %s", from, as);
    char *bytes = malloc((size_t)size + 1);
    if (!bytes)
        return util_fail(err, err_len, "out of memory"); // both sides fail alike below
    int rc = comm_recv(a->comm, bytes, (size_t)size, COMM_BYTE, from, TAG_DATA);
    if (rc != 0)
        util_fail(err, err_len, "from rank %d: %s", from, comm_error(a->comm));
    else if ((rc = files_write(a->view, as, bytes, (size_t)size, NULL, err, err_len)) == 0)
        a->out->network_bytes += (uint64_t)size;
    free(bytes);
    return rc;
}

/* Every rank walks the same list (index, then shards 0..n-1; for each, the
 * ranks that lack it in rank order), so sends and receives pair up. */
static int assemble_one(Assembly *a, int64_t shard, char *err, size_t err_len)
{
    const ReplicaSurvey *s = a->survey;
    int64_t step = a->out->step, epoch = a->out->epoch;
    int64_t kind = shard < 0 ? KIND_OWN : chosen_kind(s, step, epoch, shard);
    int holder = holder_of(s, step, epoch, shard, kind, -1);
    char name[64], as[64];
    holding_name(name, sizeof(name), shard, kind);
    holding_name(as, sizeof(as), shard, KIND_OWN);
    int rc = 0;
    for (int q = 0; q < a->world; q++) {
        if (holder_of(s, step, epoch, shard, kind, q) >= 0) {
            if (q == a->rank && link_holding(a, name, as) != 0 && rc == 0)
                rc = util_fail(err, err_len, "cannot link %s/%s into the recovery view",
                               a->source->path, name);
        } else if (q == a->rank) {
            if (receive_holding(a, as, holder, err, err_len) != 0 && rc == 0)
                rc = -1;
        } else if (a->rank == holder && send_holding(a, name, q) != 0 && rc == 0) {
            rc = util_fail(err, err_len, "sending %s to rank %d: %s", name, q,
                           comm_error(a->comm));
        }
    }
    return rc;
}

static int open_view(const FilesDir *tier, ReplicaView *v, FilesDir *root, FilesDir *step,
                     char *err, size_t err_len)
{
    const char *name = strrchr(v->root, '/') + 1;
    if (mkdirat(tier->fd, name, 0700) != 0 && errno != EEXIST)
        return util_fail(err, err_len, "cannot create '%s': %s", v->root, strerror(errno));
    root->fd = openat(tier->fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    snprintf(root->path, sizeof(root->path), "%s", v->root);
    if (root->fd < 0)
        return util_fail(err, err_len, "cannot open '%s': %s", v->root, strerror(errno));
    files_remove_step(root, v->step, v->epoch); // left by an interrupted recovery
    if (files_open_step(root, v->step, v->epoch, true, step, err, err_len) != 0)
        return -1;
    snprintf(v->view, sizeof(v->view), "%s", step->path);
    return 0;
}

int replica_fetch(Comm *comm, const char *tier1, const ReplicaSurvey *survey, int which,
                  ReplicaView *view, char *err, size_t err_len)
{
    memset(view, 0, sizeof(*view));
    view->step = survey->candidates[which][0];
    view->epoch = (int)survey->candidates[which][1];
    snprintf(view->root, sizeof(view->root), "%s/recovery_rank_%05d", tier1, comm_rank(comm));
    FilesDir tier = {.fd = -1}, root = {.fd = -1}, step = {.fd = -1}, source = {.fd = -1};
    snprintf(tier.path, sizeof(tier.path), "%s", tier1);
    int rc = files_open_private(&tier, err, err_len) == 0 &&
                     open_view(&tier, view, &root, &step, err, err_len) == 0
                 ? 0
                 : -1;
    // a host that holds nothing of this step has no directory: it receives all
    if (rc == 0 && files_open_step(&tier, view->step, view->epoch, false, &source, NULL, 0))
        source.fd = -1;
    Assembly a = {comm, survey, &source, &step, view, comm_rank(comm), comm_size(comm)};
    int64_t n = shard_count(survey, view->step, view->epoch);
    // the walk goes on after a local failure: the other ranks wait for this one
    for (int64_t shard = -1; shard < n; shard++) {
        char why[PATH_MAX + 256];
        if (assemble_one(&a, shard, why, sizeof(why)) != 0 && rc == 0)
            rc = util_fail(err, err_len, "%s", why);
    }
    files_close(&source);
    files_close(&step);
    files_close(&root);
    files_close(&tier);
    return rc;
}

void replica_view_remove(const char *tier1, const ReplicaView *view)
{
    FilesDir root = {.fd = open(view->root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)};
    snprintf(root.path, sizeof(root.path), "%s", view->root);
    if (root.fd >= 0)
        files_remove_step(&root, view->step, view->epoch);
    files_close(&root);
    FilesDir tier = {.fd = open(tier1, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)};
    if (tier.fd >= 0)
        unlinkat(tier.fd, strrchr(view->root, '/') + 1, AT_REMOVEDIR);
    files_close(&tier);
}
