/* The --inject grammar (elastic.h): kept apart from the agent so that it
 * stays pure and tests/fuzz/fuzz_inject.c can link it alone. */
#include "elastic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int elastic_event_parse(const char *text, ElasticEvent *e)
{
    memset(e, 0, sizeof(*e));
    char body[128];
    snprintf(body, sizeof(body), "%s", text);
    char *hash = strchr(body, '#');
    if (hash) {
        char *end;
        e->attempt = (int)strtol(hash + 1, &end, 10);
        if (end == hash + 1 || *end || e->attempt < 0)
            return -1;
        *hash = '\0';
    }
    int used = 0;
    if (sscanf(body, "slow:%d*%lf%n", &e->who, &e->factor, &used) == 2 && !body[used] &&
        e->factor >= 1 && e->who >= 0)
        return snprintf(e->kind, sizeof(e->kind), "slow"), 0;
    if (sscanf(body, "corrupt:%ld%n", &e->step, &used) == 1 && !body[used] && e->step >= 1)
        return snprintf(e->kind, sizeof(e->kind), "corrupt"), 0;
    if (sscanf(body, "%15[a-z]:%d@%ld%n", e->kind, &e->who, &e->step, &used) == 3 &&
        !body[used] && e->who >= 0 && e->step >= 1)
        for (const char *k = "crash\0hang\0node\0flushkill\0"; *k; k += strlen(k) + 1)
            if (strcmp(e->kind, k) == 0)
                return 0;
    return -1;
}
