/*
 * fuzz_inject: the --inject grammar (launcher/elastic.h, elastic_event_parse).
 * The input is one command-line argument (bytes up to the first NUL, as argv
 * would carry them). When the parser accepts it, the event must be one the
 * grammar allows, must say what the text says (every integer of the text,
 * read here independently, equals the field it fills: nothing wrapped or was
 * cut off), and must read back the same from its canonical form.
 */
#include "fuzz.h"

#include "inject.h"

#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool is_kind(const char *kind)
{
    static const char *const kinds[] = {"crash",   "hang",      "slow",     "node",   "flushkill",
                                        "corrupt", "partition", "poweroff", "restore"};
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (strcmp(kind, kinds[i]) == 0)
            return true;
    return false;
}

static void check_ranges(const char *text, const ElasticEvent *e)
{
    if (!is_kind(e->kind))
        fuzz_fail("'%s' parsed as unknown kind '%s'", text, e->kind);
    if (e->attempt < 0)
        fuzz_fail("'%s' parsed with attempt %d", text, e->attempt);
    bool slow = strcmp(e->kind, "slow") == 0, corrupt = strcmp(e->kind, "corrupt") == 0;
    bool host = e->host[0] != '\0';
    if (host != (strcmp(e->kind, "partition") == 0 || strcmp(e->kind, "poweroff") == 0 ||
                 strcmp(e->kind, "restore") == 0))
        fuzz_fail("'%s' parsed as %s with host '%s'", text, e->kind, e->host);
    if (host && (strspn(e->host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                 "0123456789.-_") != strlen(e->host) || e->host[0] == '-'))
        fuzz_fail("'%s' parsed with host '%s', which a shell could misread", text, e->host);
    if (!corrupt && e->who < 0)
        fuzz_fail("'%s' parsed with rank/node %d", text, e->who);
    if (!slow && e->step < 1)
        fuzz_fail("'%s' parsed with step %ld", text, e->step);
    if (slow && !(isfinite(e->factor) && e->factor >= 1))
        fuzz_fail("'%s' parsed with slow factor %g", text, e->factor);
}

/* The integers of `text` in order (maximal digit runs), leaving out the
 * slow factor (from '*' to '#' or the end) and a host (up to the '@'). A
 * run too long for a long is -1, which no field may hold. */
static int text_integers(const char *text, bool host, long *values, int max)
{
    int count = 0;
    bool in_factor = false;
    const char *start = host && strchr(text, '@') ? strchr(text, '@') : text;
    for (const char *p = start; *p;) {
        if (*p == '*')
            in_factor = true;
        if (*p == '#')
            in_factor = false;
        if (!isdigit((unsigned char)*p) || in_factor) {
            p++;
            continue;
        }
        long value = 0;
        for (; isdigit((unsigned char)*p); p++) {
            int digit = *p - '0';
            value = value < 0 || value > (__LONG_MAX__ - digit) / 10 ? -1 : value * 10 + digit;
        }
        if (count < max)
            values[count] = value;
        count++;
    }
    return count;
}

static void check_fidelity(const char *text, const ElasticEvent *e)
{
    long fields[3];
    int n = 0;
    bool host = e->host[0] != '\0';
    if (strcmp(e->kind, "corrupt") != 0 && !host)
        fields[n++] = e->who;
    if (strcmp(e->kind, "slow") != 0)
        fields[n++] = e->step;
    if (strchr(text, '#'))
        fields[n++] = e->attempt;
    long values[3];
    int count = text_integers(text, host, values, 3);
    if (count != n)
        fuzz_fail("'%s' has %d integer(s) but its %s event uses %d", text, count, e->kind, n);
    for (int i = 0; i < n; i++)
        if (values[i] != fields[i])
            fuzz_fail("'%s': integer %d of the text is %ld, the event says %ld", text, i + 1,
                      values[i], fields[i]);
}

static void canonical(const ElasticEvent *e, char *out, size_t len)
{
    if (strcmp(e->kind, "slow") == 0)
        snprintf(out, len, "slow:%d*%.17g#%d", e->who, e->factor, e->attempt);
    else if (strcmp(e->kind, "corrupt") == 0)
        snprintf(out, len, "corrupt:%ld#%d", e->step, e->attempt);
    else if (e->host[0])
        snprintf(out, len, "%s:%s@%ld#%d", e->kind, e->host, e->step, e->attempt);
    else
        snprintf(out, len, "%s:%d@%ld#%d", e->kind, e->who, e->step, e->attempt);
}

static void check_round_trip(const char *text, const ElasticEvent *e)
{
    char again[160];
    canonical(e, again, sizeof(again));
    ElasticEvent back;
    if (elastic_event_parse(again, &back) != 0)
        fuzz_fail("'%s' parsed, but its canonical form '%s' does not", text, again);
    if (strcmp(back.kind, e->kind) != 0 || strcmp(back.host, e->host) != 0 ||
        back.who != e->who || back.step != e->step ||
        back.factor != e->factor || back.attempt != e->attempt)
        fuzz_fail("'%s' and its canonical form '%s' parse differently", text, again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    ElasticEvent e;
    if (elastic_event_parse(text, &e) == 0) {
        check_ranges(text, &e);
        check_fidelity(text, &e);
        check_round_trip(text, &e);
    }
    free(text);
    return 0;
}
