/*
 * fuzz_ckpt_index, fuzz_ckpt_shard: the checkpoint reader
 * (checkpoint/checkpoint.h). Built twice: FUZZ_CKPT_FILE names the file of
 * the base checkpoint (FUZZ_CKPT_BASE, made by ckpt_seed.c) that the input
 * replaces, index.h5 or rank_00000.h5; the other file stays the real one.
 * Each input goes through ckpt_verify (what `phalanx ckpt verify` runs) and
 * ckpt_load (what resume runs) for the base's tensors, both with the
 * runtime's check of the stateful parts' values (runtime/stateful.h).
 * Besides not crashing, both must explain every refusal: a status other
 * than CKPT_OK comes with a non-empty message.
 */
#include "fuzz.h"

#include "checkpoint.h"
#include "stateful.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#if !defined(FUZZ_CKPT_FILE) || !defined(FUZZ_CKPT_BASE)
#error "build with -DFUZZ_CKPT_FILE=\"index.h5\" (or a shard's name) and -DFUZZ_CKPT_BASE=\"DIR\""
#endif

#define ROWS 4 /* the tensors of ckpt_seed.c */
#define COLS 2

typedef struct {
    float wte[3][ROWS * COLS], bias[3][COLS];
    CkptTensor tensors[2];
} Tensors;

static void tensors_init(Tensors *t)
{
    memset(t, 0, sizeof(*t));
    t->tensors[0] =
        (CkptTensor){"wte", 2, {ROWS, COLS}, t->wte[0], t->wte[1], t->wte[2], 0, 1, false};
    t->tensors[1] = (CkptTensor){"ln_f.bias", 1, {COLS, 0}, t->bias[0], t->bias[1], t->bias[2],
                                 0, 1, false};
}

static CkptStatus verify(const char *dir, char *err, size_t err_len)
{
    FILE *report = fopen("/dev/null", "w");
    if (!report)
        fuzz_fail("cannot open /dev/null");
    err[0] = '\0';
    CkptStatus status = ckpt_verify(dir, stateful_check, report, err, err_len);
    fclose(report);
    if (status != CKPT_OK && !err[0])
        fuzz_fail("ckpt_verify said '%s' without a reason", ckpt_status_name(status));
    return status;
}

static void load(const char *dir)
{
    Tensors t;
    tensors_init(&t);
    CkptRunState state;
    char err[8192] = "";
    CkptStatus status = ckpt_load(dir, t.tensors, 2, NULL, stateful_check, &state, err,
                                  sizeof(err));
    if (status != CKPT_OK && !err[0])
        fuzz_fail("ckpt_load said '%s' without a reason", ckpt_status_name(status));
}

static void copy_base_file(const char *dir, const char *name)
{
    char from[4200], to[4200];
    fuzz_path(from, sizeof(from), FUZZ_CKPT_BASE, name);
    fuzz_path(to, sizeof(to), dir, name);
    size_t size;
    uint8_t *bytes = fuzz_read_file(from, &size);
    fuzz_write_file(to, bytes, size);
    free(bytes);
}

/* The step directory in the scratch folder, filled from the base and
 * checked once: a base that no longer verifies would make every input fail
 * early and the fuzzing shallow, so it is a finding of its own. */
static const char *checkpoint_dir(void)
{
    static char dir[4200]; /* libFuzzer gives no context: see fuzz.c */
    if (dir[0])
        return dir;
    fuzz_path(dir, sizeof(dir), fuzz_scratch_dir(), "step_00000001");
    if (mkdir(dir, 0700) != 0)
        fuzz_fail("cannot make %s", dir);
    copy_base_file(dir, "index.h5");
    copy_base_file(dir, "rank_00000.h5");
    char err[8192];
    if (verify(dir, err, sizeof(err)) != CKPT_OK)
        fuzz_fail("the base checkpoint %s no longer verifies (%s): the format changed; "
                  "regenerate it with ckpt_seed (tests/fuzz/ckpt_seed.c)", FUZZ_CKPT_BASE, err);
    return dir;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *dir = checkpoint_dir();
    char path[4300];
    fuzz_path(path, sizeof(path), dir, FUZZ_CKPT_FILE);
    fuzz_write_file(path, data, size);
    char err[8192];
    verify(dir, err, sizeof(err));
    load(dir);
    return 0;
}
