/*
 * The file system side of checkpoints: names, durable writes (write, fsync,
 * rename, directory fsync), removal and listing of step directories.
 */
#include "internal.h"

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

int ckpt_fail(char *err, size_t err_len, const char *format, ...)
{
    if (err && err_len) {
        va_list args;
        va_start(args, format);
        vsnprintf(err, err_len, format, args);
        va_end(args);
    }
    return -1;
}

int64_t ckpt_row_length(int ndim, const int64_t shape[2])
{
    return ndim == 2 ? shape[1] : 1;
}

void files_step_dir(char *out, size_t len, const char *tier, int64_t step)
{
    snprintf(out, len, "%s/step_%08lld", tier, (long long)step);
}

void files_shard_path(char *out, size_t len, const char *step_dir, int rank)
{
    snprintf(out, len, "%s/rank_%05d.h5", step_dir, rank);
}

void files_index_path(char *out, size_t len, const char *step_dir)
{
    snprintf(out, len, "%s/%s", step_dir, CKPT_INDEX_FILE);
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

static int make_dir(const char *path, char *err, size_t err_len)
{
    if (mkdir(path, 0755) == 0 || (errno == EEXIST && files_is_dir(path)))
        return 0;
    return ckpt_fail(err, err_len, "cannot create directory '%s': %s", path,
                     errno == EEXIST ? "a file of that name exists" : strerror(errno));
}

int files_mkdirs(const char *path, char *err, size_t err_len)
{
    char partial[PATH_MAX];
    if (snprintf(partial, sizeof(partial), "%s", path) >= (int)sizeof(partial))
        return ckpt_fail(err, err_len, "path too long: '%s'", path);
    for (char *p = partial + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int rc = make_dir(partial, err, err_len);
        *p = '/';
        if (rc != 0)
            return -1;
    }
    return make_dir(partial, err, err_len);
}

int files_probe(const char *dir, char *err, size_t err_len)
{
    char probe[PATH_MAX];
    snprintf(probe, sizeof(probe), "%s/.phalanx-probe-%ld", dir, (long)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return ckpt_fail(err, err_len, "cannot write in '%s': %s", dir, strerror(errno));
    close(fd);
    unlink(probe);
    return 0;
}

static int write_all(int fd, const char *data, size_t size)
{
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        data += n;
        size -= (size_t)n;
    }
    return 0;
}

int files_write(const char *path, const void *data, size_t size, const WriteHooks *hooks,
                char *err, size_t err_len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return ckpt_fail(err, err_len, "cannot create '%s': %s", path, strerror(errno));
    const char *bytes = data;
    for (size_t done = 0; done < size;) {
        size_t piece = size - done < WRITE_PIECE ? size - done : WRITE_PIECE;
        if (hooks && hooks->kill_at >= done && hooks->kill_at < done + piece) {
            // fault injection: die with part of the file on disk
            if (write_all(fd, bytes + done, hooks->kill_at - done) == 0)
                fsync(fd);
            raise(SIGKILL);
        }
        if (write_all(fd, bytes + done, piece) != 0)
            goto failed;
        done += piece;
        if (hooks && hooks->between && done < size)
            hooks->between(hooks->ctx);
    }
    if (fsync(fd) != 0)
        goto failed;
    if (close(fd) != 0)
        return ckpt_fail(err, err_len, "cannot write '%s': %s", path, strerror(errno));
    return 0;
failed:
    ckpt_fail(err, err_len, "cannot write '%s': %s", path, strerror(errno));
    close(fd);
    return -1;
}

int files_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int files_write_atomic(const char *path, const void *data, size_t size, char *err,
                       size_t err_len)
{
    char tmp[PATH_MAX], dir[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    if (files_write(tmp, data, size, NULL, err, err_len) != 0) {
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        ckpt_fail(err, err_len, "cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    // the rename is durable only once the directory entry is
    if (files_fsync_dir(slash ? dir : ".") != 0)
        return ckpt_fail(err, err_len, "cannot fsync directory of '%s': %s", path,
                         strerror(errno));
    return 0;
}

static void remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        char child[PATH_MAX];
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(child, sizeof(child), "%s/%s", path, e->d_name);
            if (e->d_type == DT_DIR || (e->d_type == DT_UNKNOWN && files_is_dir(child)))
                remove_tree(child);
            else
                unlink(child);
        }
        closedir(d);
    }
    rmdir(path);
}

void files_remove_step(const char *step_dir)
{
    char index[PATH_MAX];
    files_index_path(index, sizeof(index), step_dir);
    if (unlink(index) == 0)
        files_fsync_dir(step_dir);
    remove_tree(step_dir);
}

void files_remove_own(const char *file, const char *dir)
{
    unlink(file);
    rmdir(dir); // fails while other ranks' files are there: the last one removes it
}

uint64_t files_dir_bytes(const char *dir, time_t *newest)
{
    uint64_t total = 0;
    *newest = 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *e;
    char child[PATH_MAX];
    struct stat st;
    while ((e = readdir(d))) {
        snprintf(child, sizeof(child), "%s/%s", dir, e->d_name);
        if (stat(child, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        total += (uint64_t)st.st_size;
        if (st.st_mtime > *newest)
            *newest = st.st_mtime;
    }
    closedir(d);
    return total;
}

/* "step_" followed by digits only. */
static bool parse_step_name(const char *name, int64_t *step)
{
    if (strncmp(name, "step_", 5) != 0)
        return false;
    const char *digits = name + 5;
    size_t n = strspn(digits, "0123456789");
    if (n == 0 || n > 18 || digits[n] != '\0')
        return false;
    *step = strtoll(digits, NULL, 10);
    return true;
}

static int compare_steps(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int files_list_steps(const char *dir, int64_t **steps, int *count, char *err, size_t err_len)
{
    *steps = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d)
        return ckpt_fail(err, err_len, "cannot read directory '%s': %s", dir, strerror(errno));
    int capacity = 0, n = 0;
    int64_t *list = NULL, step;
    struct dirent *e;
    char child[PATH_MAX];
    while ((e = readdir(d))) {
        snprintf(child, sizeof(child), "%s/%s", dir, e->d_name);
        if (!parse_step_name(e->d_name, &step) || !files_is_dir(child))
            continue;
        if (n == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            int64_t *grown = realloc(list, (size_t)capacity * sizeof(*list));
            if (!grown) {
                free(list);
                closedir(d);
                return ckpt_fail(err, err_len, "out of memory listing '%s'", dir);
            }
            list = grown;
        }
        list[n++] = step;
    }
    closedir(d);
    if (n > 1)
        qsort(list, (size_t)n, sizeof(*list), compare_steps);
    *steps = list;
    *count = n;
    return 0;
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
