/*
 * fuzz: what every harness in tests/fuzz/ keeps (libFuzzer's interface).
 *
 * - A harness defines LLVMFuzzerTestOneInput(data, size): it hands the bytes
 *   to one parser of Phalanx, checks what that parser's contract promises
 *   about the result, and returns 0. A crash, a sanitizer report or a broken
 *   promise (fuzz_fail) is a finding: the process aborts and the input that
 *   did it is kept.
 * - Inputs are independent: a harness keeps no state between calls other than
 *   its scratch files, which it rewrites in full for every input.
 * - Built with clang and -Dfuzz=true, libFuzzer's own main drives the harness
 *   (scripts/fuzz). In every other build replay.c's main runs it over files
 *   and directories, and `meson test` replays the committed corpus/<harness>/
 *   and regressions/<harness>/ that way, without clang.
 * - Harnesses that need files write them into one private directory per
 *   process (fuzz_scratch_dir) under $TMPDIR, removed at exit; a run that
 *   aborts leaves it behind, so the callers point TMPDIR at a folder of
 *   their own (the build tree, scripts/fuzz's work directory).
 */
#ifndef PHALANX_FUZZ_H
#define PHALANX_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Prints "fuzz: <message>" to stderr and aborts: a finding. */
_Noreturn void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The process's scratch directory, made on first use, removed with all it
 * holds at exit. */
const char *fuzz_scratch_dir(void);

/* out = "dir/name"; aborts when it does not fit (no finding: a setup error). */
void fuzz_path(char *out, size_t out_len, const char *dir, const char *name);

/* Replaces the file at `path` by these bytes. A failure here is the
 * machine's (disk full), not a finding: it aborts with the reason. */
void fuzz_write_file(const char *path, const uint8_t *data, size_t size);

/* Reads a whole file into a malloc'd buffer (*size bytes); aborts on failure. */
uint8_t *fuzz_read_file(const char *path, size_t *size);

#endif
