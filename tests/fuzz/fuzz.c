/* Helpers shared by the harnesses (fuzz.h). */
#include "fuzz.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Noreturn void fuzz_fail(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fputs("fuzz: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    abort();
}

/* libFuzzer's entry point takes no context, so the scratch directory is the
 * one piece of process-wide state: made once, removed by atexit. */
static char scratch[4096];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_scratch(void)
{
    nftw(scratch, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *fuzz_scratch_dir(void)
{
    if (scratch[0])
        return scratch;
    const char *tmp = getenv("TMPDIR");
    snprintf(scratch, sizeof(scratch), "%s/phalanx-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(scratch))
        fuzz_fail("cannot make a scratch directory %s: %s (set TMPDIR to a writable folder)",
                  scratch, strerror(errno));
    atexit(remove_scratch);
    return scratch;
}

void fuzz_path(char *out, size_t out_len, const char *dir, const char *name)
{
    int n = snprintf(out, out_len, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= out_len)
        fuzz_fail("path %s/%s is too long (set TMPDIR to a shorter folder)", dir, name);
}

void fuzz_write_file(const char *path, const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        fuzz_fail("cannot write %s: %s", path, strerror(errno));
    for (size_t done = 0; done < size;) {
        ssize_t n = write(fd, data + done, size - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fuzz_fail("cannot write %s: %s", path, n < 0 ? strerror(errno) : "short write");
        done += (size_t)n;
    }
    if (close(fd) != 0)
        fuzz_fail("cannot write %s: %s", path, strerror(errno));
}

uint8_t *fuzz_read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0)
        fuzz_fail("cannot read %s: %s", path, strerror(errno));
    *size = (size_t)st.st_size;
    uint8_t *data = malloc(*size ? *size : 1);
    if (!data || fread(data, 1, *size, f) != *size)
        fuzz_fail("cannot read %s: %s", path, data ? "short read" : "out of memory");
    fclose(f);
    return data;
}
