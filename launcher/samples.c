/* The samples a run's committed trajectory consumed (contract in samples.h). */
#include "samples.h"

#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One metrics row's step, samples and global_batch; false when the line is
 * not a JSON object with the three as integers, step >= 1. */
static bool read_row(const char *line, long *step, long long *samples, long long *batch)
{
    json_t *row = json_loads(line, 0, NULL);
    json_t *s = json_object_get(row, "step"), *c = json_object_get(row, "samples"),
           *b = json_object_get(row, "global_batch");
    bool ok = json_is_integer(s) && json_is_integer(c) && json_is_integer(b) &&
              json_integer_value(s) >= 1 && json_integer_value(s) <= LONG_MAX;
    if (ok) {
        *step = (long)json_integer_value(s);
        *samples = json_integer_value(c);
        *batch = json_integer_value(b);
    }
    json_decref(row);
    return ok;
}

/* The committed trajectory: rows in file order, a row for step s replacing
 * every row from s on (a recomputed step after a resume). */
int samples_account(const char *metrics, SampleAccount *acc)
{
    memset(acc, 0, sizeof(*acc));
    FILE *f = metrics[0] ? fopen(metrics, "r") : NULL;
    if (!f)
        return -1;
    long long *ends = NULL, *starts = NULL;
    long cap = 0, count = 0;
    char *line = NULL;
    size_t line_cap = 0;
    while (getline(&line, &line_cap, f) >= 0) {
        long step;
        long long samples, batch;
        if (!read_row(line, &step, &samples, &batch))
            continue;
        if (step > cap) {
            long grown = step * 2;
            long long *e = realloc(ends, (size_t)grown * sizeof(*ends));
            long long *b2 = e ? realloc(starts, (size_t)grown * sizeof(*starts)) : NULL;
            ends = e ? e : ends;
            if (!b2) {
                count = -1; /* out of memory: no account */
                break;
            }
            starts = b2;
            cap = grown;
        }
        count = step; /* drops later rows: the resumed run replaced them */
        ends[step - 1] = samples;
        starts[step - 1] = samples - batch;
    }
    free(line);
    fclose(f);
    if (count < 0) {
        free(ends);
        free(starts);
        return -1;
    }
    acc->steps = count;
    long long cursor = 0;
    for (long i = 0; i < count; i++) {
        if (starts[i] > cursor)
            acc->lost += starts[i] - cursor;
        if (starts[i] < cursor)
            acc->duplicated += cursor - starts[i];
        cursor = ends[i];
    }
    acc->consumed = cursor;
    free(ends);
    free(starts);
    return 0;
}
