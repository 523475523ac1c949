/*
 * util: the small helpers every module shares, defined once. It sits below
 * every other module (runtime, checkpoint, optim, launcher may include it)
 * and depends on nothing of ours.
 */
#ifndef PHALANX_UTIL_H
#define PHALANX_UTIL_H

#include <stddef.h>
#include <sys/types.h>

/* Formats a message into err (nothing when err_len is 0) and returns -1, so
 * that a failing function can end with `return util_fail(err, err_len, ...)`. */
int util_fail(char *err, size_t err_len, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* What a file of this mode is, in words for a message ("a FIFO", "a
 * directory", "a symbolic link", ...); "a special file" for the rest. */
const char *util_file_kind(mode_t mode);

/* Seconds on the monotonic clock: for intervals, never for dates. */
double util_now_seconds(void);

/* Writes all of data to fd, retrying short writes and EINTR. 0, or -1 with
 * errno set by write(2). */
int util_write_all(int fd, const void *data, size_t size);

#endif
