/*
 * The lowest floor of checkpoint/: values every other file shares, with no
 * HDF5 and no file system. Status names, messages that name a path, tensor
 * shapes, the run state's typed values and key-value pairs (and the
 * messages of their range checks), the model-shape check, and the
 * memory of a read index.
 */
#include "internal.h"
#include "util.h"

#include <math.h>
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

/* The slot of `key`: its value, or the next free one (NULL when full or
 * the key does not fit). */
static CkptValue *value_slot(CkptRunState *state, const char *key)
{
    if (strlen(key) >= sizeof(state->values[0].key))
        return NULL;
    int i = 0;
    while (i < state->value_count && strcmp(state->values[i].key, key) != 0)
        i++;
    if (i == CKPT_VALUE_MAX)
        return NULL;
    if (i == state->value_count) {
        state->value_count++;
        snprintf(state->values[i].key, sizeof(state->values[i].key), "%s", key);
    }
    return &state->values[i];
}

int ckpt_state_put_int(CkptRunState *state, const char *key, int32_t value)
{
    CkptValue *v = value_slot(state, key);
    if (!v)
        return -1;
    v->type = CKPT_INT32;
    v->as.i32 = value;
    return 0;
}

int ckpt_state_put_i64(CkptRunState *state, const char *key, int64_t value)
{
    CkptValue *v = value_slot(state, key);
    if (!v)
        return -1;
    v->type = CKPT_INT64;
    v->as.i64 = value;
    return 0;
}

int ckpt_state_put_f64(CkptRunState *state, const char *key, double value)
{
    CkptValue *v = value_slot(state, key);
    if (!v)
        return -1;
    v->type = CKPT_F64;
    v->as.f64 = value;
    return 0;
}

int ckpt_state_put_str(CkptRunState *state, const char *key, const char *text)
{
    if (strlen(text) >= CKPT_TEXT_MAX)
        return -1;
    CkptValue *v = value_slot(state, key);
    if (!v)
        return -1;
    v->type = CKPT_TEXT;
    snprintf(v->as.text, sizeof(v->as.text), "%s", text);
    return 0;
}

static const CkptValue *value_of(const CkptRunState *state, const char *key, CkptValueType type)
{
    for (int i = 0; i < state->value_count; i++)
        if (strcmp(state->values[i].key, key) == 0)
            return state->values[i].type == type ? &state->values[i] : NULL;
    return NULL;
}

bool ckpt_state_get_int(const CkptRunState *state, const char *key, int32_t *out)
{
    const CkptValue *v = value_of(state, key, CKPT_INT32);
    if (v)
        *out = v->as.i32;
    return v != NULL;
}

bool ckpt_state_get_i64(const CkptRunState *state, const char *key, int64_t *out)
{
    const CkptValue *v = value_of(state, key, CKPT_INT64);
    if (v)
        *out = v->as.i64;
    return v != NULL;
}

bool ckpt_state_get_f64(const CkptRunState *state, const char *key, double *out)
{
    const CkptValue *v = value_of(state, key, CKPT_F64);
    if (v)
        *out = v->as.f64;
    return v != NULL;
}

bool ckpt_state_get_str(const CkptRunState *state, const char *key, const char **out)
{
    const CkptValue *v = value_of(state, key, CKPT_TEXT);
    if (v)
        *out = v->as.text;
    return v != NULL;
}

static int missing(char *err, size_t err_len, const char *key)
{
    return util_fail(err, err_len, "attribute '%s' is missing, unreadable or of the wrong type",
                     key);
}

int ckpt_range_fail(char *err, size_t err_len, const char *field, int64_t value, int64_t low,
                    int64_t high)
{
    return util_fail(err, err_len, "'%s' is %lld, outside [%lld, %lld]", field, (long long)value,
                     (long long)low, (long long)high);
}

static int in_range(int64_t value, const char *key, int64_t low, int64_t high, char *err,
                    size_t err_len)
{
    return value < low || value > high ? ckpt_range_fail(err, err_len, key, value, low, high)
                                       : 0;
}

int ckpt_state_need_int(const CkptRunState *state, const char *key, int64_t low, int64_t high,
                        char *err, size_t err_len)
{
    int32_t value;
    if (!ckpt_state_get_int(state, key, &value))
        return missing(err, err_len, key);
    return in_range(value, key, low, high, err, err_len);
}

int ckpt_state_need_i64(const CkptRunState *state, const char *key, int64_t low, int64_t high,
                        char *err, size_t err_len)
{
    int64_t value;
    if (!ckpt_state_get_i64(state, key, &value))
        return missing(err, err_len, key);
    return in_range(value, key, low, high, err, err_len);
}

int ckpt_state_need_f64(const CkptRunState *state, const char *key, double low, double high,
                        char *err, size_t err_len)
{
    double value;
    if (!ckpt_state_get_f64(state, key, &value))
        return missing(err, err_len, key);
    if (value >= low && value <= high)
        return 0;
    return util_fail(err, err_len, "'%s' is %g, %s [%g, %g]", key, value,
                     isfinite(value) ? "outside" : "not a finite number in", low, high);
}

/* As the reader says of a string attribute (h5_attr_read_string). */
int ckpt_state_need_str(const CkptRunState *state, const char *key, char *err, size_t err_len)
{
    const char *text;
    if (ckpt_state_get_str(state, key, &text))
        return 0;
    for (int i = 0; i < state->value_count; i++)
        if (strcmp(state->values[i].key, key) == 0)
            return util_fail(err, err_len, "attribute '%s' is not a string", key);
    return util_fail(err, err_len, "attribute '%s' is missing", key);
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
