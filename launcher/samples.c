/* The samples a run's committed trajectory consumed (contract in samples.h). */
#include "samples.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    char line[8192];
    while (fgets(line, sizeof(line), f)) {
        long step;
        long long samples;
        int batch;
        const char *s = strstr(line, "\"step\": "), *c = strstr(line, "\"samples\": "),
                   *b = strstr(line, "\"global_batch\": ");
        if (!s || !c || !b || sscanf(s + 8, "%ld", &step) != 1 ||
            sscanf(c + 11, "%lld", &samples) != 1 || sscanf(b + 16, "%d", &batch) != 1 ||
            step < 1)
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
