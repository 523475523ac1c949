/*
 * fuzz_channel: the launcher channel's line parser (launcher/protocol.h).
 * The input is one line as a stranger on the launcher's port could send it,
 * held in a buffer of exactly its length (no NUL after it), so reading past
 * `length` is an AddressSanitizer report. Checked besides not crashing:
 * - protocol_parse: a refusal has a reason; an accepted message has its
 *   words NUL-terminated, printable and within their buffers, an `auth`
 *   answer of 64 lower-case hex digits, and text inside the line;
 * - protocol_sanitize_text, at several output sizes: the output is
 *   terminal-safe (printable ASCII and well-formed UTF-8 without C1
 *   controls, surrogates or bidirectional controls), its length is the
 *   return value, it fits, and sanitizing it again changes nothing;
 * - protocol_step_of_job: true only for JOB.STEP of the job given.
 */
#include "fuzz.h"

#include "protocol.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define JOB_ID "4242"

static void check_word(const char *what, const char *word, size_t size)
{
    size_t n = strnlen(word, size);
    if (n == size)
        fuzz_fail("%s is not NUL-terminated in its %zu bytes", what, size);
    for (size_t i = 0; i < n; i++)
        if (word[i] <= ' ' || word[i] > '~')
            fuzz_fail("%s holds byte 0x%02x", what, (unsigned char)word[i]);
}

static void check_parse(const char *line, size_t length)
{
    ProtocolMessage m;
    char err[256] = "";
    if (protocol_parse(line, length, &m, err, sizeof(err)) != 0) {
        if (!err[0] || !memchr(err, '\0', sizeof(err)))
            fuzz_fail("protocol_parse refused a line without a reason");
        return;
    }
    check_word("node", m.node, sizeof(m.node));
    check_word("slurm_step", m.slurm_step, sizeof(m.slurm_step));
    check_word("fault_kind", m.fault_kind, sizeof(m.fault_kind));
    check_word("answer", m.answer, sizeof(m.answer));
    if (m.kind == PROTOCOL_AUTH &&
        (strlen(m.answer) != PROTOCOL_ANSWER_HEX ||
         strspn(m.answer, "0123456789abcdef") != PROTOCOL_ANSWER_HEX))
        fuzz_fail("auth accepted with answer '%s'", m.answer);
    if (m.text_length > 0 && (m.text < line || m.text + m.text_length > line + length))
        fuzz_fail("text of %zu bytes lies outside the %zu-byte line", m.text_length, length);
}

/* The length of the terminal-safe UTF-8 character at s, or 0 (an oracle
 * written apart from protocol.c's). */
static size_t safe_char(const unsigned char *s, size_t left)
{
    if (s[0] >= 0x20 && s[0] <= 0x7E)
        return 1;
    size_t n = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 0;
    if (n == 0 || n > left || s[0] > 0xF4)
        return 0;
    unsigned long cp = s[0] & (0x7Fu >> n);
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3Fu);
    }
    static const unsigned long smallest[] = {0, 0, 0x80, 0x800, 0x10000};
    bool bidi = (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069) ||
                cp == 0x200E || cp == 0x200F || cp == 0x061C;
    if (cp < smallest[n] || cp <= 0x9F || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) ||
        bidi)
        return 0;
    return n;
}

static void check_sanitize(const char *text, size_t length, size_t out_len)
{
    char *out = malloc(out_len), *again = malloc(out_len);
    size_t n = protocol_sanitize_text(text, length, out, out_len);
    if (n >= out_len || out[n] != '\0' || strlen(out) != n)
        fuzz_fail("sanitize into %zu bytes returned %zu for a %zu-byte string", out_len, n,
                  strlen(out));
    const unsigned char *s = (const unsigned char *)out;
    for (size_t i = 0, c; i < n; i += c)
        if ((c = safe_char(s + i, n - i)) == 0)
            fuzz_fail("sanitized text keeps byte 0x%02x at %zu", s[i], i);
    if (protocol_sanitize_text(out, n, again, out_len) != n || memcmp(out, again, n) != 0)
        fuzz_fail("sanitizing sanitized text changed it");
    free(out);
    free(again);
}

static void check_step_of_job(const char *line, size_t length)
{
    char *step = malloc(length + 1);
    memcpy(step, line, length);
    step[length] = '\0';
    if (protocol_step_of_job(step, JOB_ID)) {
        const char *rest = step + strlen(JOB_ID) + 1;
        if (strncmp(step, JOB_ID ".", strlen(JOB_ID) + 1) != 0 || !*rest ||
            strspn(rest, "0123456789") != strlen(rest))
            fuzz_fail("'%s' accepted as a step of job " JOB_ID, step);
    }
    if (protocol_step_of_job(step, "") || protocol_step_of_job(step, NULL))
        fuzz_fail("'%s' accepted as a step of no job", step);
    free(step);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *line = malloc(size ? size : 1); /* exactly the line: no NUL after it */
    memcpy(line, data, size);
    check_parse(line, size);
    check_sanitize(line, size, 1);
    check_sanitize(line, size, 8);
    check_sanitize(line, size, 4 * size + 8);
    check_step_of_job(line, size);
    free(line);
    return 0;
}
