/* Parsing the channel's lines and cleaning their text (contract in protocol.h). */
#include "protocol.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define DIGITS "0123456789"

/* The line still to read; fields are separated by exactly one space. */
typedef struct {
    const char *at;
    size_t left;
} Cursor;

static int failed(char *err, size_t err_len, const char *what, const char *why)
{
    snprintf(err, err_len, "%s: %s", what, why);
    return -1;
}

/* The next field (up to a space or the end); false when there is none or it is empty. */
static bool next_field(Cursor *c, const char **field, size_t *length)
{
    if (c->left == 0)
        return false;
    const char *space = memchr(c->at, ' ', c->left);
    size_t n = space ? (size_t)(space - c->at) : c->left;
    *field = c->at;
    *length = n;
    c->at += n + (space != NULL);
    c->left -= n + (space != NULL);
    return n > 0;
}

/* Decimal digits, optionally after a '-', within [min, max]. */
static bool decimal_in(const char *f, size_t n, long min, long max, long *out)
{
    bool negative = n > 0 && f[0] == '-';
    size_t i = negative;
    if (i == n)
        return false;
    long value = 0;
    for (; i < n; i++) {
        if (f[i] < '0' || f[i] > '9')
            return false;
        int digit = f[i] - '0';
        if (value > (LONG_MAX - digit) / 10)
            return false;
        value = value * 10 + digit;
    }
    value = negative ? -value : value;
    if (value < min || value > max)
        return false;
    *out = value;
    return true;
}

static bool read_long(Cursor *c, long min, long max, long *out)
{
    const char *f;
    size_t n;
    return next_field(c, &f, &n) && decimal_in(f, n, min, max, out);
}

static bool read_int(Cursor *c, long min, long max, int *out)
{
    long value;
    if (!read_long(c, min, max, &value))
        return false;
    *out = (int)value;
    return true;
}

/* A word of printable ASCII (no spaces) that fits `out` with its NUL. */
static bool read_word(Cursor *c, char *out, size_t out_len)
{
    const char *f;
    size_t n;
    if (!next_field(c, &f, &n) || n >= out_len)
        return false;
    for (size_t i = 0; i < n; i++)
        if (f[i] <= ' ' || f[i] > '~')
            return false;
    memcpy(out, f, n);
    out[n] = '\0';
    return true;
}

static bool at_end(const Cursor *c)
{
    return c->left == 0;
}

// ----------------------------------------------------------------------------
// one parser per keyword: the cursor is past the keyword and its space

static int parse_auth(Cursor *c, ProtocolMessage *m, char *err, size_t err_len)
{
    if (!read_word(c, m->answer, sizeof(m->answer)) || !at_end(c) ||
        strlen(m->answer) != PROTOCOL_ANSWER_HEX ||
        strspn(m->answer, DIGITS "abcdef") != PROTOCOL_ANSWER_HEX)
        return failed(err, err_len, "auth", "ANSWER is not 64 lower-case hex digits");
    return 0;
}

static int parse_hello(Cursor *c, ProtocolMessage *m, char *err, size_t err_len)
{
    if (!read_int(c, 0, INT_MAX, &m->rank))
        return failed(err, err_len, "hello", "RANK is not a number in [0, 2^31)");
    if (!read_int(c, 1, INT_MAX, &m->world))
        return failed(err, err_len, "hello", "WORLD is not a number in [1, 2^31)");
    if (!read_long(c, 1, INT_MAX, &m->pid))
        return failed(err, err_len, "hello", "PID is not a number in [1, 2^31)");
    if (!read_word(c, m->node, sizeof(m->node)))
        return failed(err, err_len, "hello", "NODE is missing or longer than 63 characters");
    if (!read_word(c, m->slurm_step, sizeof(m->slurm_step)))
        return failed(err, err_len, "hello", "STEP is missing or longer than 63 characters");
    if (strcmp(m->slurm_step, "-") == 0)
        m->slurm_step[0] = '\0';
    m->epoch = -1;
    const char *f;
    size_t n;
    Cursor rest = *c;
    if (next_field(&rest, &f, &n) && n > 6 && memcmp(f, "epoch=", 6) == 0) {
        long epoch;
        if (!decimal_in(f + 6, n - 6, 0, INT_MAX, &epoch))
            return failed(err, err_len, "hello", "epoch=N is not a number in [0, 2^31)");
        m->epoch = (int)epoch;
    }
    return 0; /* later fields are for later launchers */
}

/* STEP, then the rest of the line as text (empty when there is none). */
static int parse_step_and_text(Cursor *c, ProtocolMessage *m, const char *what, char *err,
                               size_t err_len)
{
    if (!read_long(c, 0, LONG_MAX, &m->step))
        return failed(err, err_len, what, "STEP is not a number in [0, 2^63)");
    m->text = c->at;
    m->text_length = c->left;
    return 0;
}

static int parse_progress(Cursor *c, ProtocolMessage *m, char *err, size_t err_len)
{
    return parse_step_and_text(c, m, "progress", err, err_len);
}

static int parse_resumed(Cursor *c, ProtocolMessage *m, char *err, size_t err_len)
{
    return parse_step_and_text(c, m, "resumed", err, err_len);
}

/* STEP alone. */
static int parse_step_only(Cursor *c, ProtocolMessage *m, const char *what, char *err,
                           size_t err_len)
{
    if (!read_long(c, 0, LONG_MAX, &m->step) || !at_end(c))
        return failed(err, err_len, what, "STEP is not a number in [0, 2^63)");
    return 0;
}

static int parse_step(Cursor *c, ProtocolMessage *m, char *err, size_t err_len)
{
    return parse_step_only(c, m, "step", err, err_len);
}

static int parse_committed(Cursor *c, ProtocolMessage *m, char *err, size_t err_len)
{
    return parse_step_only(c, m, "committed", err, err_len);
}

static int parse_log(Cursor *c, ProtocolMessage *m, char *err, size_t err_len)
{
    (void)err;
    (void)err_len;
    m->text = c->at;
    m->text_length = c->left;
    return 0;
}

static int parse_done(Cursor *c, ProtocolMessage *m, char *err, size_t err_len)
{
    if (!read_int(c, 0, INT_MAX, &m->rank))
        return failed(err, err_len, "done", "RANK is not a number in [0, 2^31)");
    if (!read_int(c, INT_MIN, INT_MAX, &m->status) || !at_end(c))
        return failed(err, err_len, "done", "STATUS is not a number");
    return 0;
}

static int parse_beat(Cursor *c, ProtocolMessage *m, char *err, size_t err_len)
{
    if (!read_int(c, 0, INT_MAX, &m->rank))
        return failed(err, err_len, "beat", "RANK is not a number in [0, 2^31)");
    if (!read_long(c, 0, LONG_MAX, &m->step) || !at_end(c))
        return failed(err, err_len, "beat", "STEP is not a number in [0, 2^63)");
    return 0;
}

static int parse_fault(Cursor *c, ProtocolMessage *m, char *err, size_t err_len)
{
    if (!read_word(c, m->fault_kind, sizeof(m->fault_kind)))
        return failed(err, err_len, "fault", "KIND is missing or longer than 63 characters");
    if (!read_int(c, 0, INT_MAX, &m->rank))
        return failed(err, err_len, "fault", "RANK is not a number in [0, 2^31)");
    if (!read_long(c, 0, LONG_MAX, &m->step) || !at_end(c))
        return failed(err, err_len, "fault", "STEP is not a number in [0, 2^63)");
    return 0;
}

static int parse_loaded(Cursor *c, ProtocolMessage *m, char *err, size_t err_len)
{
    if (!read_long(c, 0, LONG_MAX, &m->step))
        return failed(err, err_len, "loaded", "STEP is not a number in [0, 2^63)");
    for (int i = 0; i < 3; i++)
        if (!read_long(c, 0, LONG_MAX, &m->read_bytes[i]))
            return failed(err, err_len, "loaded",
                          "HOST OTHER DURABLE are not three numbers in [0, 2^63)");
    if (!at_end(c))
        return failed(err, err_len, "loaded", "more fields after DURABLE");
    return 0;
}

static int parse_probe(Cursor *c, ProtocolMessage *m, char *err, size_t err_len)
{
    if (!read_word(c, m->node, sizeof(m->node)) || !at_end(c))
        return failed(err, err_len, "probe", "NODE is missing, longer than 63 characters or "
                                             "followed by more");
    return 0;
}

typedef int (*Parser)(Cursor *, ProtocolMessage *, char *, size_t);

static const struct {
    const char *keyword;
    ProtocolKind kind;
    Parser parse;
} KEYWORDS[] = {
    {"auth", PROTOCOL_AUTH, parse_auth},       {"hello", PROTOCOL_HELLO, parse_hello},
    {"progress", PROTOCOL_PROGRESS, parse_progress}, {"step", PROTOCOL_STEP, parse_step},
    {"log", PROTOCOL_LOG, parse_log},          {"done", PROTOCOL_DONE, parse_done},
    {"beat", PROTOCOL_BEAT, parse_beat},       {"fault", PROTOCOL_FAULT, parse_fault},
    {"resumed", PROTOCOL_RESUMED, parse_resumed}, {"probe", PROTOCOL_PROBE, parse_probe},
    {"committed", PROTOCOL_COMMITTED, parse_committed}, {"loaded", PROTOCOL_LOADED, parse_loaded},
};

int protocol_parse(const char *line, size_t length, ProtocolMessage *out, char *err,
                   size_t err_len)
{
    memset(out, 0, sizeof(*out));
    out->text = "";
    if (memchr(line, '\0', length))
        return failed(err, err_len, "line", "holds a NUL byte");
    Cursor c = {line, length};
    const char *keyword;
    size_t n;
    if (!next_field(&c, &keyword, &n))
        return failed(err, err_len, "line", "empty, or starts with a space");
    for (size_t i = 0; i < sizeof(KEYWORDS) / sizeof(KEYWORDS[0]); i++)
        if (strlen(KEYWORDS[i].keyword) == n && memcmp(KEYWORDS[i].keyword, keyword, n) == 0) {
            out->kind = KEYWORDS[i].kind;
            return KEYWORDS[i].parse(&c, out, err, err_len);
        }
    return failed(err, err_len, "line", "unknown keyword");
}

// ----------------------------------------------------------------------------
// text for a terminal

/* The bytes of the escape sequence at s[0] == ESC, up to `left`. */
static size_t escape_length(const unsigned char *s, size_t left)
{
    if (left < 2)
        return left;
    if (s[1] == '[') { /* CSI: parameters and intermediates, then a final byte */
        size_t i = 2;
        while (i < left && s[i] >= 0x20 && s[i] <= 0x3F)
            i++;
        return i < left && s[i] >= 0x40 && s[i] <= 0x7E ? i + 1 : i;
    }
    if (strchr("]P_^X", s[1])) { /* OSC, DCS, APC, PM, SOS: up to BEL or ESC \ */
        for (size_t i = 2; i < left; i++) {
            if (s[i] == 0x07)
                return i + 1;
            if (s[i] == 0x1B)
                return i + 1 < left && s[i + 1] == '\\' ? i + 2 : i;
        }
        return left;
    }
    return 2;
}

/* Bidirectional overrides and isolates reorder what follows on screen. */
static bool is_bidi_control(uint32_t cp)
{
    return (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069) || cp == 0x200E ||
           cp == 0x200F || cp == 0x061C;
}

/* The length of the well-formed, printable UTF-8 character at s (2 to 4
 * bytes), or 0: C1 controls, overlong forms, surrogates and bidi controls are 0. */
static size_t utf8_length(const unsigned char *s, size_t left)
{
    size_t n;
    uint32_t cp, min;
    if (s[0] >= 0xC2 && s[0] <= 0xDF)
        n = 2, cp = s[0] & 0x1Fu, min = 0x80;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF)
        n = 3, cp = s[0] & 0x0Fu, min = 0x800;
    else if (s[0] >= 0xF0 && s[0] <= 0xF4)
        n = 4, cp = s[0] & 0x07u, min = 0x10000;
    else
        return 0;
    if (left < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3Fu);
    }
    bool printable = cp >= min && cp > 0x9F && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF) &&
                     !is_bidi_control(cp);
    return printable ? n : 0;
}

size_t protocol_sanitize_text(const char *text, size_t length, char *out, size_t out_len)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, used = 0;
    while (i < length) {
        size_t n = 1;
        bool keep = s[i] >= 0x20 && s[i] <= 0x7E;
        if (s[i] == 0x1B)
            n = escape_length(s + i, length - i);
        else if (s[i] >= 0x80 && (n = utf8_length(s + i, length - i)) > 0)
            keep = true;
        else if (s[i] >= 0x80)
            n = 1;
        if (keep) {
            if (used + n > out_len - 1)
                break; /* no room for the whole character */
            memcpy(out + used, s + i, n);
            used += n;
        }
        i += n;
    }
    out[used] = '\0';
    return used;
}

// ----------------------------------------------------------------------------

bool protocol_step_of_job(const char *step, const char *job_id)
{
    if (!job_id || !*job_id)
        return false;
    size_t job_len = strlen(job_id);
    if (job_len > 20 || strspn(job_id, DIGITS) != job_len)
        return false;
    if (strncmp(step, job_id, job_len) != 0 || step[job_len] != '.')
        return false;
    const char *step_part = step + job_len + 1;
    size_t step_len = strlen(step_part);
    return step_len > 0 && step_len <= 20 && strspn(step_part, DIGITS) == step_len;
}
