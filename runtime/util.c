/* Shared runtime helpers (contract in util.h). */
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>

int util_fail(char *err, size_t err_len, const char *format, ...)
{
    if (err && err_len) {
        va_list args;
        va_start(args, format);
        vsnprintf(err, err_len, format, args);
        va_end(args);
    }
    return -1;
}

const char *util_file_kind(mode_t mode)
{
    if (S_ISLNK(mode))
        return "a symbolic link";
    if (S_ISFIFO(mode))
        return "a FIFO";
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISCHR(mode) || S_ISBLK(mode))
        return "a device";
    if (S_ISSOCK(mode))
        return "a socket";
    return "a special file";
}
