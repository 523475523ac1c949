/*
 * Output files of the trainer: checked before a run starts, opened without
 * following a link, written with every error reported (outfile.h).
 */
#include "outfile.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The real path of the directory that would hold `path`; false when it does
 * not exist (the open then fails with a message of its own). */
static bool real_parent(const char *path, char *out)
{
    char parent[PATH_MAX];
    if (snprintf(parent, sizeof(parent), "%s", path) >= (int)sizeof(parent))
        return false;
    char *slash = strrchr(parent, '/');
    if (!slash)
        snprintf(parent, sizeof(parent), ".");
    else if (slash == parent)
        parent[1] = '\0';
    else
        *slash = '\0';
    return realpath(parent, out) != NULL;
}

/* `dir` is `inside` or one of its ancestors (both real paths). */
static bool contains(const char *dir, const char *inside)
{
    size_t n = strlen(dir);
    if (n == 1 && dir[0] == '/')
        return true;
    return strncmp(dir, inside, n) == 0 && (inside[n] == '\0' || inside[n] == '/');
}

static int check_place(const OutfilePolicy *policy, const char *path, char *err,
                       size_t err_len)
{
    char parent[PATH_MAX], dir[PATH_MAX];
    if (!real_parent(path, parent))
        return 0;
    for (int i = 0; i < 2; i++) {
        const char *forbidden = policy->forbidden[i];
        if (forbidden && *forbidden && realpath(forbidden, dir) && contains(dir, parent))
            return util_fail(err, err_len,
                             "%s '%s' is inside the checkpoint directory '%s', whose files the "
                             "checkpoint writer prunes: write it elsewhere",
                             policy->flag, path, forbidden);
    }
    return 0;
}

int outfile_check(const OutfilePolicy *policy, const char *path, char *err, size_t err_len)
{
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISREG(st.st_mode))
            return util_fail(err, err_len, "%s '%s' is %s: name a regular file (or a new one)",
                             policy->flag, path, util_file_kind(st.st_mode));
        if (policy->mode == OUTFILE_NEW)
            return util_fail(err, err_len, "%s '%s' exists and would be overwritten: %s",
                             policy->flag, path, policy->existing_hint);
    } else if (errno != ENOENT) {
        return util_fail(err, err_len, "%s '%s': %s", policy->flag, path, strerror(errno));
    }
    return check_place(policy, path, err, err_len);
}

static int open_flags(OutfileMode mode, bool exists)
{
    int flags = O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
    if (!exists)
        return flags | O_CREAT | O_EXCL; // a file that appears meanwhile is not ours
    return flags | (mode == OUTFILE_APPEND ? O_APPEND : O_TRUNC);
}

FILE *outfile_open(const OutfilePolicy *policy, const char *path, char *err, size_t err_len)
{
    if (outfile_check(policy, path, err, err_len) != 0)
        return NULL;
    struct stat st;
    bool exists = lstat(path, &st) == 0;
    int fd = open(path, open_flags(policy->mode, exists), 0644);
    if (fd < 0) {
        util_fail(err, err_len, "%s: cannot write '%s': %s", policy->flag, path,
                  errno == ELOOP ? "it is a symbolic link" : strerror(errno));
        return NULL;
    }
    // what was opened is what is checked, whatever the name pointed to before
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        util_fail(err, err_len, "%s '%s' is not a regular file: name a regular file", policy->flag,
                  path);
        close(fd);
        return NULL;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    FILE *file = fdopen(fd, policy->mode == OUTFILE_APPEND ? "a" : "w");
    if (!file) {
        util_fail(err, err_len, "%s: cannot write '%s': %s", policy->flag, path, strerror(errno));
        close(fd);
    }
    return file;
}

int outfile_flush(FILE *file, const char *path, char *err, size_t err_len)
{
    // after an earlier failed write errno still tells why: nothing since has failed
    if (fflush(file) == 0 && !ferror(file))
        return 0;
    return util_fail(err, err_len, "cannot write '%s': %s", path,
                     errno ? strerror(errno) : "a write failed");
}

int outfile_close(FILE *file, const char *path, char *err, size_t err_len)
{
    int flushed = outfile_flush(file, path, err, err_len);
    int closed = fclose(file);
    if (flushed != 0)
        return -1;
    return closed == 0 ? 0
                       : util_fail(err, err_len, "cannot write '%s': %s", path, strerror(errno));
}

void outfile_json_number(FILE *file, const char *key, double value, int decimals)
{
    if (!isfinite(value))
        fprintf(file, ", \"%s\": null", key);
    else if (decimals < 0)
        fprintf(file, ", \"%s\": %.17g", key, value);
    else
        fprintf(file, ", \"%s\": %.*f", key, decimals, value);
}
