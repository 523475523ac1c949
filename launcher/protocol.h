/*
 * protocol: the launcher's reading of one channel line (private to
 * launcher/). The lines are listed in runtime.h; this parser turns one of
 * them into a ProtocolMessage and decides nothing else: who may send it
 * (authentication, claimed ranks, the Slurm job) is job.c's business.
 *
 * Pure functions: no I/O, no allocation, no global state, and nothing read
 * beyond `length` (the line need not be NUL-terminated, and a NUL inside it
 * is an error), so a fuzzer can drive them with arbitrary bytes.
 *
 * Strictness: numbers are decimal digits only (a '-' only where the field
 * may be negative), within the field's type; every field is separated by
 * exactly one space; a line with too few fields, a field too long for its
 * buffer or an unknown keyword is an error. `hello` reads a sixth field
 * epoch=N (the attempt of an elastic job) and ignores any after it, so that
 * later launchers may add some and older ones still read the line.
 */
#ifndef PHALANX_PROTOCOL_H
#define PHALANX_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>

#define PROTOCOL_FIELD_MAX 64 /* node names, Slurm step ids, fault kinds: with the NUL */
#define PROTOCOL_ANSWER_HEX 64 /* the hex digits of an `auth` answer (HMAC-SHA256) */

typedef enum {
    PROTOCOL_AUTH,     /* auth ANSWER                      answer: 64 hex digits */
    PROTOCOL_HELLO,    /* hello RANK WORLD PID NODE STEP [epoch=N]  step: "" for "-" */
    PROTOCOL_PROGRESS, /* progress STEP TEXT                text may be empty */
    PROTOCOL_STEP,     /* step STEP */
    PROTOCOL_LOG,      /* log TEXT */
    PROTOCOL_DONE,     /* done RANK STATUS */
    PROTOCOL_BEAT,     /* beat RANK STEP */
    PROTOCOL_FAULT,    /* fault KIND RANK STEP */
    PROTOCOL_RESUMED,  /* resumed STEP PATH                 path in text */
    PROTOCOL_PROBE,    /* probe NODE: `phalanx probe` on a host the elastic agent
                          wants back; said instead of a hello, after auth */
    PROTOCOL_COMMITTED, /* committed STEP: rank 0, the memory checkpoint of step STEP
                           is held by its own host and a buddy host */
    PROTOCOL_LOADED,    /* loaded STEP HOST OTHER DURABLE: rank 0, the bytes its resume
                           read from where (read_bytes) */
} ProtocolKind;

typedef struct {
    ProtocolKind kind;
    int rank, world, status; /* those the line has; the others 0 */
    int epoch;               /* hello: its epoch=N, -1 without one */
    long pid, step;
    long read_bytes[3]; /* loaded: own host's memory, other hosts' memory, durable */
    char answer[PROTOCOL_ANSWER_HEX + 1];
    char node[PROTOCOL_FIELD_MAX];
    char slurm_step[PROTOCOL_FIELD_MAX];
    char fault_kind[PROTOCOL_FIELD_MAX];
    /* progress, log, resumed: the rest of the line, unsanitised and not
     * NUL-terminated; it points into the caller's line */
    const char *text;
    size_t text_length;
} ProtocolMessage;

/* Parses one line (without its '\n'). 0, or -1 with the reason in err
 * ("hello: RANK is not a number"); *out is then unspecified. */
int protocol_parse(const char *line, size_t length, ProtocolMessage *out, char *err,
                   size_t err_len);

/* Copies `text` for printing on a terminal: printable ASCII and well-formed
 * UTF-8 (no C1 controls, overlong forms, surrogates or bidirectional
 * overrides, which reorder the rest of the screen line) are kept; other
 * control characters and bytes are dropped, and so are whole escape
 * sequences (ESC [ ... final byte, ESC ] ... BEL or ESC \, ESC and one
 * byte). Writes at most out_len - 1 bytes and a NUL (out_len >= 1), never
 * cutting a UTF-8 character; returns the bytes written. */
size_t protocol_sanitize_text(const char *text, size_t length, char *out, size_t out_len);

/* True when `step` is JOB.STEP (decimal digits, a dot, decimal digits) and
 * JOB is `job_id`, the launcher's own $SLURM_JOB_ID (false when it is NULL
 * or empty): only such a step may be passed to scancel. */
bool protocol_step_of_job(const char *step, const char *job_id);

#endif
