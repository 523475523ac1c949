/* The --inject grammar (contract in inject.h, the events in elastic.h): kept
 * apart from the agent so that it stays pure and tests/fuzz/fuzz_inject.c can
 * link it alone.
 *
 * Strict on purpose: numbers are decimal digits only (no sign, no spaces),
 * in range for their field, and the whole text must be read. A drill that
 * silently injected something else than what was written (a rank that
 * wrapped around, an attempt number cut off) would report on the wrong
 * failure. */
#include "inject.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Reads decimal digits at *p as a value in [min, max]; advances past them. */
static bool read_integer(const char **p, long min, long max, long *out)
{
    if (!isdigit((unsigned char)**p))
        return false;
    char *end;
    errno = 0;
    long value = strtol(*p, &end, 10);
    if (errno == ERANGE || value < min || value > max)
        return false;
    *p = end;
    *out = value;
    return true;
}

static bool read_int(const char **p, int *out)
{
    long value;
    if (!read_integer(p, 0, INT_MAX, &value))
        return false;
    *out = (int)value;
    return true;
}

/* A slow-down factor: a finite decimal number >= 1. */
static bool read_factor(const char **p, double *out)
{
    if (!isdigit((unsigned char)**p))
        return false;
    char *end;
    errno = 0;
    double value = strtod(*p, &end);
    if (errno == ERANGE || !isfinite(value) || value < 1)
        return false;
    *p = end;
    *out = value;
    return true;
}

static bool expect(const char **p, char c)
{
    if (**p != c)
        return false;
    (*p)++;
    return true;
}

static bool is_rank_kind(const char *kind)
{
    for (const char *k = "crash\0hang\0node\0flushkill\0"; *k; k += strlen(k) + 1)
        if (strcmp(kind, k) == 0)
            return true;
    return false;
}

/* A host as the fault command gets it in place of {host}: a name or an
 * address, of characters no shell gives a meaning to. */
static bool read_host(const char **p, char *out, size_t len)
{
    size_t n = strspn(*p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_");
    if (n == 0 || n >= len || **p == '-')
        return false;
    memcpy(out, *p, n);
    out[n] = '\0';
    *p += n;
    return true;
}

static bool is_host_kind(const char *kind)
{
    return strcmp(kind, "partition") == 0 || strcmp(kind, "poweroff") == 0 ||
           strcmp(kind, "restore") == 0;
}

int elastic_event_parse(const char *text, ElasticEvent *e)
{
    memset(e, 0, sizeof(*e));
    const char *colon = strchr(text, ':');
    size_t kind_length = colon ? (size_t)(colon - text) : 0;
    if (kind_length == 0 || kind_length >= sizeof(e->kind))
        return -1;
    memcpy(e->kind, text, kind_length);
    const char *p = colon + 1;
    bool ok;
    if (strcmp(e->kind, "slow") == 0)
        ok = read_int(&p, &e->who) && expect(&p, '*') && read_factor(&p, &e->factor);
    else if (strcmp(e->kind, "corrupt") == 0)
        ok = read_integer(&p, 1, LONG_MAX, &e->step);
    else if (is_host_kind(e->kind))
        ok = read_host(&p, e->host, sizeof(e->host)) && expect(&p, '@') &&
             read_integer(&p, 1, LONG_MAX, &e->step);
    else
        ok = is_rank_kind(e->kind) && read_int(&p, &e->who) && expect(&p, '@') &&
             read_integer(&p, 1, LONG_MAX, &e->step);
    if (ok && expect(&p, '#'))
        ok = read_int(&p, &e->attempt);
    return ok && *p == '\0' ? 0 : -1;
}
