/*
 * The file system side of checkpoints: names, durable writes (write, fsync,
 * rename, directory fsync), removal and listing of step directories.
 *
 * Never follow a link we did not make. A tier's root is opened once; every
 * step directory and file below it is reached from that handle with openat,
 * mkdirat, renameat and unlinkat, with O_NOFOLLOW, so a link planted under a
 * tier (at a shard's name, or as a whole step directory) is never written
 * through and what it points to is never deleted. Files are created under a
 * temporary name with O_EXCL and renamed into place; removal takes only the
 * regular files a checkpoint's layout names, and step directories.
 */
#include "internal.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Writes go out in pieces of 8 MiB so the sidecar can serve a copy request
 * between two of them instead of after the whole shard. */
#define WRITE_PIECE ((size_t)8 << 20)

#define STEP_FORMAT "step_%08lld"
#define EPOCH_FORMAT ".e%d" /* after STEP_FORMAT: the attempt that wrote the step */
#define SHARD_FORMAT "rank_%05d.h5"
#define TEMP_SUFFIX ".tmp"

/* Below a tier's root nothing is reached through a link. */
#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)

void files_step_name(char *out, size_t len, int64_t step, int epoch)
{
    if (epoch < 0)
        snprintf(out, len, STEP_FORMAT, (long long)step);
    else
        snprintf(out, len, STEP_FORMAT EPOCH_FORMAT, (long long)step, epoch);
}

void files_shard_name(char *out, size_t len, int rank)
{
    snprintf(out, len, SHARD_FORMAT, rank);
}

void ckpt_step_dir(char *out, size_t len, const char *tier, int64_t step, int epoch)
{
    char name[64];
    files_step_name(name, sizeof(name), step, epoch);
    snprintf(out, len, "%s/%s", tier, name);
}

void ckpt_shard_path(char *out, size_t len, const char *step_dir, int rank)
{
    snprintf(out, len, "%s/" SHARD_FORMAT, step_dir, rank);
}

void files_index_path(char *out, size_t len, const char *step_dir)
{
    snprintf(out, len, "%s/%s", step_dir, CKPT_INDEX_FILE);
}

void files_locate(const char *path, char *dir, char *index)
{
    if (files_is_dir(path)) {
        snprintf(dir, PATH_MAX, "%s", path);
        files_index_path(index, PATH_MAX, path);
        return;
    }
    snprintf(index, PATH_MAX, "%s", path);
    snprintf(dir, PATH_MAX, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, PATH_MAX, ".");
}

bool files_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

bool files_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int64_t files_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) ? (int64_t)st.st_size : -1;
}

static int make_dir(const char *path, mode_t mode, char *err, size_t err_len)
{
    if (mkdir(path, mode) == 0 || (errno == EEXIST && files_is_dir(path)))
        return 0;
    return util_fail(err, err_len, "cannot create directory '%s': %s", path,
                     errno == EEXIST ? "a file of that name exists" : strerror(errno));
}

/* Creates the parents of `path` (0755) and `path` itself with `mode`. */
static int make_dirs(const char *path, mode_t mode, char *err, size_t err_len)
{
    char partial[PATH_MAX];
    if (snprintf(partial, sizeof(partial), "%s", path) >= (int)sizeof(partial))
        return util_fail(err, err_len, "path too long: '%s'", path);
    for (char *p = partial + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int rc = make_dir(partial, 0755, err, err_len);
        *p = '/';
        if (rc != 0)
            return -1;
    }
    return make_dir(partial, mode, err, err_len);
}

int files_mkdirs(const char *path, char *err, size_t err_len)
{
    return make_dirs(path, 0755, err, err_len);
}

void files_close(FilesDir *dir)
{
    if (dir->fd >= 0)
        close(dir->fd);
    dir->fd = -1;
}

int files_open_tier(FilesDir *tier, char *err, size_t err_len)
{
    if (files_mkdirs(tier->path, err, err_len) != 0)
        return -1;
    // the user named this directory: a link to it is theirs to make
    tier->fd = open(tier->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (tier->fd < 0)
        return util_fail(err, err_len, "cannot open directory '%s': %s", tier->path,
                         strerror(errno));
    return 0;
}

/* True with the reason in `why` when an open directory is not private:
 * another user's, or writable by group or others. */
static bool unsafe_dir(int fd, char *why, size_t why_len)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        snprintf(why, why_len, "cannot be examined (%s)", strerror(errno));
    else if (st.st_uid != geteuid())
        snprintf(why, why_len, "belongs to uid %u, not to this user (uid %u)",
                 (unsigned)st.st_uid, (unsigned)geteuid());
    else if (st.st_mode & (S_IWGRP | S_IWOTH))
        snprintf(why, why_len, "is writable by %s (mode %04o)",
                 st.st_mode & S_IWOTH ? "others" : "its group", (unsigned)(st.st_mode & 07777));
    else
        return false;
    return true;
}

int files_open_private(FilesDir *tier, char *err, size_t err_len)
{
    const char *path = tier->path;
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISDIR(st.st_mode)) {
        util_fail(err, err_len, "'%s' is %s", path,
                  S_ISLNK(st.st_mode) ? "a symbolic link" : "not a directory");
        return FILES_UNSAFE;
    }
    if (make_dirs(path, 0700, err, err_len) != 0)
        return -1;
    // checked on the handle, not the name: it cannot be swapped in between
    tier->fd = open(path, DIR_FLAGS);
    if (tier->fd < 0 && errno != ELOOP && errno != ENOTDIR)
        return util_fail(err, err_len, "cannot open directory '%s': %s", path, strerror(errno));
    char why[128] = "is a symbolic link or not a directory";
    if (tier->fd >= 0 && !unsafe_dir(tier->fd, why, sizeof(why)))
        return 0;
    files_close(tier);
    util_fail(err, err_len, "'%s' %s", path, why);
    return FILES_UNSAFE;
}

int files_open_step(const FilesDir *tier, int64_t step, int epoch, bool create, FilesDir *out,
                    char *err, size_t err_len)
{
    char name[64];
    files_step_name(name, sizeof(name), step, epoch);
    ckpt_step_dir(out->path, sizeof(out->path), tier->path, step, epoch);
    if (create && mkdirat(tier->fd, name, 0755) != 0 && errno != EEXIST)
        return util_fail(err, err_len, "cannot create directory '%s': %s", out->path,
                         strerror(errno));
    out->fd = openat(tier->fd, name, DIR_FLAGS);
    if (out->fd < 0)
        return util_fail(err, err_len, "cannot open directory '%s': %s", out->path,
                         errno == ELOOP || errno == ENOTDIR
                             ? "it is a symbolic link or not a directory"
                             : strerror(errno));
    return 0;
}

int files_probe(const FilesDir *dir, char *err, size_t err_len)
{
    char probe[64];
    snprintf(probe, sizeof(probe), ".phalanx-probe-%ld", (long)getpid());
    unlinkat(dir->fd, probe, 0); // a stale one of a pid that ran before
    int fd = openat(dir->fd, probe, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return util_fail(err, err_len, "cannot write in '%s': %s", dir->path, strerror(errno));
    close(fd);
    unlinkat(dir->fd, probe, 0);
    return 0;
}


/* Writes and fsyncs an open file in pieces; fault injection may kill here. */
static int write_pieces(int fd, const void *data, size_t size, const WriteHooks *hooks)
{
    const char *bytes = data;
    for (size_t done = 0; done < size;) {
        size_t piece = size - done < WRITE_PIECE ? size - done : WRITE_PIECE;
        if (hooks && hooks->kill_at >= done && hooks->kill_at < done + piece) {
            // fault injection: die with part of the file on disk
            if (util_write_all(fd, bytes + done, hooks->kill_at - done) == 0)
                fsync(fd);
            raise(SIGKILL);
        }
        if (util_write_all(fd, bytes + done, piece) != 0)
            return -1;
        done += piece;
        if (hooks && hooks->between && done < size)
            hooks->between(hooks->ctx);
    }
    return fsync(fd);
}

/* Moves `temp` to `name` in `dir` unless `name` exists (EEXIST then).
 * renameat2(RENAME_NOREPLACE) does it in one step; a file system that
 * refuses that flag (EINVAL) gets a hard link and an unlink, which fails
 * the same way on an existing name. */
static int rename_noreplace(const FilesDir *dir, const char *temp, const char *name)
{
    if (renameat2(dir->fd, temp, dir->fd, name, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
    if (linkat(dir->fd, temp, dir->fd, name, 0) != 0)
        return -1;
    unlinkat(dir->fd, temp, 0);
    return 0;
}

/* files_write and files_publish: `noreplace` keeps an existing `name`. */
static int write_durably(const FilesDir *dir, const char *name, const void *data, size_t size,
                         const WriteHooks *hooks, bool noreplace, char *err, size_t err_len)
{
    char temp[NAME_MAX + 1];
    if (snprintf(temp, sizeof(temp), "%s" TEMP_SUFFIX, name) >= (int)sizeof(temp))
        return util_fail(err, err_len, "name too long: '%s'", name);
    // a temporary file of a writer that was killed: ours to replace, never to follow
    unlinkat(dir->fd, temp, 0);
    int fd = openat(dir->fd, temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        return util_fail(err, err_len, "cannot create '%s/%s': %s", dir->path, temp,
                         strerror(errno));
    int written = write_pieces(fd, data, size, hooks);
    int saved = errno;
    if (close(fd) != 0 && written == 0) {
        written = -1;
        saved = errno;
    }
    // rename replaces a link at `name` itself: what it pointed to is untouched
    if (written == 0 && (noreplace ? rename_noreplace(dir, temp, name)
                                   : renameat(dir->fd, temp, dir->fd, name)) != 0) {
        saved = errno;
        unlinkat(dir->fd, temp, 0);
        return util_fail(err, err_len, "cannot rename '%s/%s' into place: %s", dir->path, temp,
                         saved == EEXIST ? "a file of that name is there (never replaced)"
                                         : strerror(saved));
    }
    if (written != 0) {
        unlinkat(dir->fd, temp, 0);
        return util_fail(err, err_len, "cannot write '%s/%s': %s", dir->path, name,
                         strerror(saved));
    }
    // the rename is durable only once the directory entry is
    if (fsync(dir->fd) != 0)
        return util_fail(err, err_len, "cannot fsync directory '%s': %s", dir->path,
                         strerror(errno));
    return 0;
}

int files_write(const FilesDir *dir, const char *name, const void *data, size_t size,
                const WriteHooks *hooks, char *err, size_t err_len)
{
    return write_durably(dir, name, data, size, hooks, false, err, err_len);
}

int files_publish(const FilesDir *dir, const char *name, const void *data, size_t size,
                  char *err, size_t err_len)
{
    return write_durably(dir, name, data, size, NULL, true, err, err_len);
}

int files_fsync(const FilesDir *dir)
{
    return fsync(dir->fd);
}

bool files_has_file(const FilesDir *dir, const char *name)
{
    struct stat st;
    return fstatat(dir->fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
}

void files_remove_file(const FilesDir *dir, const char *name)
{
    // a link of that name stays: the writer's rename replaces it
    if (files_has_file(dir, name))
        unlinkat(dir->fd, name, 0);
}

/* rank_%05d.h5, index.h5, and their temporary names: what a step holds. */
static bool layout_name(const char *name)
{
    char base[NAME_MAX + 1];
    snprintf(base, sizeof(base), "%s", name);
    size_t len = strlen(base), suffix = strlen(TEMP_SUFFIX);
    if (len > suffix && strcmp(base + len - suffix, TEMP_SUFFIX) == 0)
        base[len - suffix] = '\0';
    if (strcmp(base, CKPT_INDEX_FILE) == 0)
        return true;
    // a buddy's copy (replica.c) is part of the layout like the own shard
    const char *rank = strncmp(base, "buddy_", 6) == 0 ? base + 6 : base;
    if (strncmp(rank, "rank_", 5) != 0)
        return false;
    size_t digits = strspn(rank + 5, "0123456789");
    return digits >= 5 && strcmp(rank + 5 + digits, ".h5") == 0;
}

static void remove_layout_files(const FilesDir *step)
{
    int fd = dup(step->fd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)))
        if (layout_name(e->d_name))
            files_remove_file(step, e->d_name);
    closedir(d);
}

/* A step directory being removed is first renamed to this prefix + its name:
 * it stops being a step at once and whole, so a removal cut short (a kill)
 * leaves a name no listing takes for an incomplete checkpoint. The next
 * removal in the tier sweeps such leftovers. */
#define REMOVING_PREFIX "removing_"

/* Empties (layout names only) and removes the directory `name` of `tier`. */
static void remove_dir_named(const FilesDir *tier, const char *name)
{
    FilesDir dir = {.fd = openat(tier->fd, name, DIR_FLAGS)};
    if (dir.fd < 0)
        return; // gone, or a link: not ours to follow
    if (snprintf(dir.path, sizeof(dir.path), "%s/%s", tier->path, name) >= (int)sizeof(dir.path))
        dir.path[0] = '\0'; // the path is for messages only
    remove_layout_files(&dir);
    files_close(&dir);
    unlinkat(tier->fd, name, AT_REMOVEDIR); // fails when something else is left: it stays
}

static void sweep_removals(const FilesDir *tier)
{
    int fd = dup(tier->fd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return;
    }
    rewinddir(d);
    struct dirent *e;
    FilesStep step;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, REMOVING_PREFIX, strlen(REMOVING_PREFIX)) == 0 &&
            files_parse_step_name(e->d_name + strlen(REMOVING_PREFIX), &step))
            remove_dir_named(tier, e->d_name);
    closedir(d);
}

void files_remove_step(const FilesDir *tier, int64_t step, int epoch)
{
    char name[64], removing[80];
    files_step_name(name, sizeof(name), step, epoch);
    snprintf(removing, sizeof(removing), REMOVING_PREFIX "%s", name);
    sweep_removals(tier);
    struct stat st;
    if (fstatat(tier->fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode))
        return; // gone, or a link: not ours to follow
    // rename moves a link put there since as a link: the removal below never follows it
    if (renameat(tier->fd, name, tier->fd, removing) != 0)
        return;
    fsync(tier->fd);
    remove_dir_named(tier, removing);
}

void files_remove_own(const FilesDir *tier, int64_t step, int epoch, int rank)
{
    FilesDir dir;
    if (files_open_step(tier, step, epoch, false, &dir, NULL, 0) != 0)
        return;
    char shard[64], temp[80];
    files_shard_name(shard, sizeof(shard), rank);
    snprintf(temp, sizeof(temp), "%s" TEMP_SUFFIX, shard);
    files_remove_file(&dir, shard);
    files_remove_file(&dir, temp);
    files_close(&dir);
    char name[64];
    files_step_name(name, sizeof(name), step, epoch);
    // fails while other ranks' files are there: the last one removes it
    unlinkat(tier->fd, name, AT_REMOVEDIR);
}

uint64_t files_dir_bytes(const char *dir, time_t *newest)
{
    uint64_t total = 0;
    *newest = 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *e;
    struct stat st;
    while ((e = readdir(d))) {
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        total += (uint64_t)st.st_size;
        if (st.st_mtime > *newest)
            *newest = st.st_mtime;
    }
    closedir(d);
    return total;
}

bool files_parse_step_name(const char *name, FilesStep *out)
{
    if (strncmp(name, "step_", 5) != 0)
        return false;
    const char *digits = name + 5;
    size_t n = strspn(digits, "0123456789");
    if (n == 0 || n > 18)
        return false;
    FilesStep s = {strtoll(digits, NULL, 10), -1};
    const char *epoch = digits + n;
    if (*epoch) {
        size_t m = strncmp(epoch, ".e", 2) == 0 ? strspn(epoch + 2, "0123456789") : 0;
        if (m == 0 || m > 9 || epoch[2 + m] != '\0')
            return false;
        s.epoch = (int)strtol(epoch + 2, NULL, 10);
    }
    *out = s;
    return true;
}

static int compare_steps(const void *a, const void *b)
{
    const FilesStep *x = a, *y = b;
    if (x->step != y->step)
        return (x->step > y->step) - (x->step < y->step);
    return (x->epoch > y->epoch) - (x->epoch < y->epoch);
}

/* Steps of the real step directories in an open directory (links are not steps). */
static int list_steps(DIR *d, const char *path, FilesStep **steps, int *count, char *err,
                      size_t err_len)
{
    int capacity = 0, n = 0;
    FilesStep *list = NULL, step;
    struct dirent *e;
    struct stat st;
    while ((e = readdir(d))) {
        if (!files_parse_step_name(e->d_name, &step) ||
            fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode))
            continue;
        if (n == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            FilesStep *grown = realloc(list, (size_t)capacity * sizeof(*list));
            if (!grown) {
                free(list);
                return util_fail(err, err_len, "out of memory listing '%s'", path);
            }
            list = grown;
        }
        list[n++] = step;
    }
    if (n > 1)
        qsort(list, (size_t)n, sizeof(*list), compare_steps);
    *steps = list;
    *count = n;
    return 0;
}

int files_list_steps(const char *dir, FilesStep **steps, int *count, char *err, size_t err_len)
{
    *steps = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d)
        return util_fail(err, err_len, "cannot read directory '%s': %s", dir, strerror(errno));
    int rc = list_steps(d, dir, steps, count, err, err_len);
    closedir(d);
    return rc;
}

int files_list_tier(const FilesDir *tier, FilesStep **steps, int *count)
{
    *steps = NULL;
    *count = 0;
    int fd = openat(tier->fd, ".", DIR_FLAGS);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int rc = list_steps(d, tier->path, steps, count, NULL, 0);
    closedir(d);
    return rc;
}

/* FNV-1a: a stable name for the tier-1 directory of a tier-2 path. */
static uint64_t fnv1a(const char *text)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *text; text++)
        h = (h ^ (unsigned char)*text) * 0x100000001b3ull;
    return h;
}

void ckpt_tier_dirs(const CkptOptions *options, char *tier1, size_t tier1_len, char *tier2,
                    size_t tier2_len)
{
    const char *dir = options->dir ? options->dir : "";
    snprintf(tier2, tier2_len, "%s", dir);
    tier1[0] = '\0';
    if (options->memory_dir && *options->memory_dir) {
        if (strcmp(options->memory_dir, "none") != 0)
            snprintf(tier1, tier1_len, "%s", options->memory_dir);
        return;
    }
    if (!*dir || !files_is_dir("/dev/shm"))
        return;
    // the same tier-2 directory must give the same tier-1 directory in the
    // next run (that is how a restarted run finds it), so hash its real path
    char absolute[PATH_MAX], cwd[PATH_MAX];
    if (!realpath(dir, absolute)) {
        if (dir[0] == '/' || !getcwd(cwd, sizeof(cwd)))
            snprintf(absolute, sizeof(absolute), "%s", dir);
        else
            snprintf(absolute, sizeof(absolute), "%.2000s/%.2000s", cwd, dir);
    }
    snprintf(tier1, tier1_len, "/dev/shm/phalanx-%016llx", (unsigned long long)fnv1a(absolute));
}

// ----------------------------------------------------------------------------
// the fence (checkpoint.h)

#define FENCE_FILE "fence"
#define FENCE_MAX_BYTES ((size_t)1 << 20)

/* The fence file's text (NUL-terminated, malloc'd); "" when there is none. */
static int read_fence_text(const char *dir, char **text, char *err, size_t err_len)
{
    *text = NULL;
    int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int fd = dir_fd < 0 ? -1 : openat(dir_fd, FENCE_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    int saved = errno;
    if (dir_fd >= 0)
        close(dir_fd);
    if (fd < 0 && saved != ENOENT)
        return util_fail(err, err_len, "%s/%s: cannot be read: %s", dir, FENCE_FILE,
                         strerror(saved));
    char *buffer = malloc(FENCE_MAX_BYTES + 1);
    ssize_t got = 0;
    while (buffer && fd >= 0 && (size_t)got < FENCE_MAX_BYTES) {
        ssize_t n = read(fd, buffer + got, FENCE_MAX_BYTES - (size_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            got = n < 0 ? -1 : got;
            break;
        }
        got += n;
    }
    if (fd >= 0)
        close(fd);
    if (!buffer || got < 0) {
        free(buffer);
        return util_fail(err, err_len, "%s/%s: cannot be read", dir, FENCE_FILE);
    }
    buffer[got] = '\0';
    *text = buffer;
    return 0;
}

/* One line: "epoch F after K" (K = -1: no checkpoint then), or the "epoch F"
 * of the first fences, which invalidated nothing (after = INT64_MAX). */
static bool parse_fence_line(const char *line, CkptFenceEntry *entry)
{
    int epoch, end = 0;
    long long after;
    if (sscanf(line, "epoch %d after %lld%n", &epoch, &after, &end) == 2 && line[end] == '\0' &&
        epoch >= 0 && after >= -1) {
        *entry = (CkptFenceEntry){epoch, after};
        return true;
    }
    end = 0;
    if (sscanf(line, "epoch %d%n", &epoch, &end) == 1 && line[end] == '\0' && epoch >= 0) {
        *entry = (CkptFenceEntry){epoch, INT64_MAX};
        return true;
    }
    return false;
}

static int parse_fence(const char *dir, char *text, CkptFence *fence, char *err, size_t err_len)
{
    int lines = 0;
    for (const char *c = text; *c; c++)
        lines += *c == '\n';
    fence->entries = calloc((size_t)lines + 2, sizeof(CkptFenceEntry));
    if (!fence->entries)
        return util_fail(err, err_len, "out of memory reading %s/%s", dir, FENCE_FILE);
    int number = 0;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        number++;
        CkptFenceEntry *entry = &fence->entries[fence->count];
        if (!parse_fence_line(line, entry) ||
            (fence->count > 0 && entry->epoch <= entry[-1].epoch))
            return util_fail(err, err_len,
                             "%s/%s: line %d is not 'epoch F after K' with F above the line "
                             "before; the file is the agent's alone: restore it, or remove it "
                             "only when no process of an earlier attempt can still be running",
                             dir, FENCE_FILE, number);
        fence->count++;
    }
    return 0;
}

int ckpt_fence_read(const char *dir, CkptFence *fence, char *err, size_t err_len)
{
    *fence = (CkptFence){NULL, 0};
    char *text;
    if (read_fence_text(dir, &text, err, err_len) != 0)
        return -1;
    int rc = parse_fence(dir, text, fence, err, err_len);
    free(text);
    if (rc != 0)
        ckpt_fence_free(fence);
    return rc;
}

void ckpt_fence_free(CkptFence *fence)
{
    free(fence->entries);
    *fence = (CkptFence){NULL, 0};
}

bool ckpt_fence_allows(const CkptFence *fence, int epoch, int64_t step, char *why,
                       size_t why_len)
{
    if (epoch < 0)
        return true; // not an attempt of an elastic job: no fence applies
    for (int i = 0; i < fence->count; i++) {
        const CkptFenceEntry *f = &fence->entries[i];
        if (f->epoch > epoch && step > f->after) {
            util_fail(why, why_len,
                      "fenced: attempt %d wrote step %lld after attempt %d fenced it off at "
                      "step %lld; no reader uses it", epoch, (long long)step, f->epoch,
                      (long long)f->after);
            return false;
        }
    }
    return true;
}

int ckpt_fence_epoch(const char *dir)
{
    CkptFence fence;
    if (ckpt_fence_read(dir, &fence, NULL, 0) != 0)
        return -1;
    int epoch = fence.count ? fence.entries[fence.count - 1].epoch : -1;
    ckpt_fence_free(&fence);
    return epoch;
}

/* "epoch F after K", or "epoch F" for an entry of the first fences. */
static size_t fence_line(char *out, size_t len, const CkptFenceEntry *e)
{
    int n = e->after == INT64_MAX
                ? snprintf(out, len, "epoch %d\n", e->epoch)
                : snprintf(out, len, "epoch %d after %lld\n", e->epoch, (long long)e->after);
    return n < 0 ? 0 : (size_t)n;
}

int ckpt_fence_raise(const char *dir, int epoch, int64_t after, char *err, size_t err_len)
{
    FilesDir tier = {.fd = -1};
    snprintf(tier.path, sizeof(tier.path), "%s", dir);
    CkptFence fence = {NULL, 0};
    if (files_open_tier(&tier, err, err_len) != 0 ||
        ckpt_fence_read(dir, &fence, err, err_len) != 0) {
        files_close(&tier);
        return -1;
    }
    int rc = 0;
    if (fence.count > 0 && fence.entries[fence.count - 1].epoch >= epoch)
        rc = util_fail(err, err_len, "%s/%s already fences epoch %d: a new attempt needs a "
                       "higher one", dir, FENCE_FILE, fence.entries[fence.count - 1].epoch);
    const size_t line_max = 64;
    char *text = rc == 0 ? malloc(((size_t)fence.count + 1) * line_max) : NULL;
    if (rc == 0 && !text)
        rc = util_fail(err, err_len, "out of memory");
    if (rc == 0) {
        size_t used = 0;
        for (int i = 0; i < fence.count; i++)
            used += fence_line(text + used, line_max, &fence.entries[i]);
        used += fence_line(text + used, line_max, &(CkptFenceEntry){epoch, after});
        // the whole history, replaced at once: a reader sees the old or the new
        rc = files_write(&tier, FENCE_FILE, text, used, NULL, err, err_len);
    }
    free(text);
    ckpt_fence_free(&fence);
    files_close(&tier);
    return rc;
}
