/*
 * outfile: the trainer's output files (--metrics, --dump-params).
 *
 * A path the user names for output is written only when it is, or will be,
 * a regular file of its own: a symbolic link, a FIFO, a directory or a
 * device there is refused (a FIFO would block the run, a link could turn a
 * root run's output into a write elsewhere), and so is a path inside a
 * checkpoint directory (those belong to the checkpoint writer's pruning).
 * An existing file is replaced or continued only when the caller says so.
 * Write errors (a full disk, a file-size limit) are reported, never lost:
 * JSON gets no NaN or infinity, which are not JSON numbers.
 */
#ifndef PHALANX_OUTFILE_H
#define PHALANX_OUTFILE_H

#include <stdio.h>

typedef enum {
    OUTFILE_NEW,       /* refuse an existing file */
    OUTFILE_APPEND,    /* continue an existing file, or create it */
    OUTFILE_OVERWRITE, /* replace an existing file, or create it */
} OutfileMode;

/* Where an output file may be written: flag for messages ("--metrics"),
 * what an existing file means, and the directories it must stay out of
 * (NULL or "" entries are skipped). */
typedef struct {
    const char *flag;
    OutfileMode mode;
    const char *existing_hint; /* OUTFILE_NEW: how to allow an existing file */
    const char *forbidden[2];
} OutfilePolicy;

/* 0 when `path` may be opened under `policy`, else -1 with a message in err
 * that names the flag, the path, the problem and the fix. Nothing is
 * created: a run checks its outputs before it starts. */
int outfile_check(const OutfilePolicy *policy, const char *path, char *err, size_t err_len);

/* outfile_check, then opens without following a link (O_NOFOLLOW) and
 * without blocking (O_NONBLOCK), and checks again on the open file that it
 * is regular. NULL with a message in err. */
FILE *outfile_open(const OutfilePolicy *policy, const char *path, char *err, size_t err_len);

/* Flushes; -1 with "cannot write 'PATH': reason" in err when this or any
 * earlier write to `file` failed. */
int outfile_flush(FILE *file, const char *path, char *err, size_t err_len);

/* Flushes and closes `file` (always); -1 with a message as outfile_flush. */
int outfile_close(FILE *file, const char *path, char *err, size_t err_len);

/* `, "key": value` with `decimals` digits after the point (-1: all 17
 * significant digits), or null for a value that is not finite. */
void outfile_json_number(FILE *file, const char *key, double value, int decimals);

#endif
