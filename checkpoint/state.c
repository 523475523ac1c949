/*
 * The lowest floor of checkpoint/: values every other file shares, with no
 * HDF5 and no file system. Status names, messages that name a path, tensor
 * shapes, the run state's key-value pairs, the model-shape check, and the
 * memory of a read index.
 */
#include "internal.h"
#include "util.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *ckpt_status_name(CkptStatus status)
{
    switch (status) {
    case CKPT_OK: return "ok";
    case CKPT_CORRUPT: return "corrupt";
    case CKPT_INCOMPLETE: return "incomplete";
    case CKPT_NOT_FOUND: return "not found";
    case CKPT_MISMATCH: return "mismatch";
    case CKPT_ERROR: return "error";
    case CKPT_FENCED: return "fenced";
    }
    return "unknown";
}

int ckpt_fail_at(char *err, size_t err_len, const char *path, const char *format, ...)
{
    char reason[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(reason, sizeof(reason), format, args);
    va_end(args);
    if (!err || !err_len)
        return -1;
    size_t n = strlen(path), used = strlen(reason) + 3; // ": " and the NUL
    size_t room = err_len > used ? err_len - used : 0;
    if (n <= room)
        snprintf(err, err_len, "%s: %s", path, reason);
    else if (room >= 16) {
        size_t head = (room - 3) / 2, tail = room - 3 - head;
        snprintf(err, err_len, "%.*s...%s: %s", (int)head, path, path + n - tail, reason);
    } else
        snprintf(err, err_len, "%s", reason);
    return -1;
}

void ckpt_shape_text(int ndim, const int64_t shape[2], char *out, size_t len)
{
    if (ndim == 2)
        snprintf(out, len, "[%lld, %lld]", (long long)shape[0], (long long)shape[1]);
    else
        snprintf(out, len, "[%lld]", (long long)shape[0]);
}

// ----------------------------------------------------------------------------
// run state

int ckpt_state_set(CkptRunState *state, const char *key, double value)
{
    if (strlen(key) >= sizeof(state->extra[0].key))
        return -1;
    int i = 0;
    while (i < state->extra_count && strcmp(state->extra[i].key, key) != 0)
        i++;
    if (i == CKPT_EXTRA_MAX)
        return -1;
    snprintf(state->extra[i].key, sizeof(state->extra[i].key), "%s", key);
    state->extra[i].value = value;
    if (i == state->extra_count)
        state->extra_count++;
    return 0;
}

double ckpt_state_get(const CkptRunState *state, const char *key, double fallback)
{
    for (int i = 0; i < state->extra_count; i++)
        if (strcmp(state->extra[i].key, key) == 0)
            return state->extra[i].value;
    return fallback;
}

int ckpt_model_check(const CkptModel *checkpoint, const CkptModel *run, char *err,
                     size_t err_len)
{
    static const struct {
        const char *flag;
        size_t offset;
    } dims[] = {
        {"--vocab", offsetof(CkptModel, vocab)},     {"--layers", offsetof(CkptModel, layers)},
        {"--heads", offsetof(CkptModel, heads)},     {"--dim", offsetof(CkptModel, dim)},
        {"--seq-len", offsetof(CkptModel, seq_len)},
    };
    char had[256] = "", has[256] = "";
    size_t had_n = 0, has_n = 0;
    for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++) {
        int a = *(const int *)((const char *)checkpoint + dims[i].offset);
        int b = *(const int *)((const char *)run + dims[i].offset);
        if (a == b)
            continue;
        had_n += (size_t)snprintf(had + had_n, sizeof(had) - had_n, " %s %d", dims[i].flag, a);
        has_n += (size_t)snprintf(has + has_n, sizeof(has) - has_n, " %s %d", dims[i].flag, b);
    }
    if (had_n == 0)
        return 0;
    return util_fail(err, err_len,
                     "the model shape differs: checkpoint has%s, this run has%s (the layout may "
                     "change on resume, the model may not)",
                     had, has);
}

void ckpt_index_free(CkptIndex *index)
{
    free(index->fragments);
    free(index->shards);
    index->fragments = NULL;
    index->shards = NULL;
    index->fragment_count = index->shard_count = 0;
}

int64_t ckpt_row_length(int ndim, const int64_t shape[2])
{
    return ndim == 2 ? shape[1] : 1;
}
