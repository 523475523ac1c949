/*
 * `phalanx ckpt`: list, verify and inspect checkpoints (contract in ckpt.h).
 */
#include "ckpt.h"

#include "checkpoint.h"
#include "stateful.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static void usage(FILE *out)
{
    fputs("usage: phalanx ckpt ls DIR        checkpoints in DIR (and its tier 1 in /dev/shm):\n"
          "                                 step, time, size, complete or not, fenced\n"
          "       phalanx ckpt verify PATH   read a checkpoint whole: every checksum, every\n"
          "                                 shard; PATH may also be a directory of them\n"
          "       phalanx ckpt inspect PATH  run state and tensor list of a checkpoint\n"
          "\n"
          "PATH is a step directory (DIR/step_00000020, or DIR/step_00000020.e3 when\n"
          "attempt 3 of an elastic job wrote it) or its index.h5. verify checks\n"
          "what resume trusts: the index checksum, the run state's ranges, the fragment\n"
          "and shard tables, and that every dataset is float32 with Fletcher32 in its\n"
          "own shard. A FIFO, device or directory where a file belongs is refused.\n"
          "\n"
          "exit status (the worst checkpoint's, for a directory of them):\n"
          "  0  ok\n"
          "  1  corrupt: a checksum, size, type, range or format check failed\n"
          "  2  usage error\n"
          "  3  incomplete: never committed (no index.h5), or a shard is missing\n"
          "  4  not found: no such path, or no checkpoint there\n"
          "  5  mismatch: written in a newer checkpoint format than this Phalanx reads\n"
          "  6  error: a system error (permissions, memory), or DIR/fence unreadable\n"
          "  7  fenced: an attempt of an elastic job committed it after a newer attempt\n"
          "     fenced it off (DIR/fence: \"epoch F after K\" hides steps beyond K of\n"
          "     attempts before F); no reader uses it\n",
          out);
}

static void human_size(uint64_t bytes, char *out, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double value = (double)bytes;
    int unit = 0;
    while (value >= 1024 && unit < 4) {
        value /= 1024;
        unit++;
    }
    snprintf(out, len, unit ? "%.1f %s" : "%.0f %s", value, units[unit]);
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

// ----------------------------------------------------------------------------
// ls

static void print_entry(const CkptEntry *e)
{
    char when[32] = "-", size[32];
    struct tm tm;
    if (e->time && localtime_r(&e->time, &tm))
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
    human_size(e->bytes, size, sizeof(size));
    const char *state = e->status == CKPT_OK ? "complete" : ckpt_status_name(e->status);
    // the reason starts with the path, which the line already shows
    const char *why = e->why;
    size_t n = strlen(e->path);
    if (strncmp(why, e->path, n) == 0 && why[n] == ':')
        why += n + 2;
    printf("%10lld  %-19s  %10s  %-10s  %s%s%s\n", (long long)e->step, when, size, state,
           e->path, *why ? "  " : "", why);
}

/* `fence_dir`: whose fence judges the checkpoints (tier 1 is judged by tier 2's). */
static int list_tier(const char *dir, const char *fence_dir, const char *title)
{
    CkptEntry *entries;
    int count;
    char err[PATH_MAX + 1024];
    if (ckpt_list_fenced(dir, fence_dir, &entries, &count, err, sizeof(err)) != 0) {
        fprintf(stderr, "phalanx ckpt ls: %s\n", err);
        return CKPT_NOT_FOUND;
    }
    printf("%s: %s\n", title, dir);
    if (count == 0)
        printf("  no checkpoints\n");
    else
        printf("%10s  %-19s  %10s  %-10s  %s\n", "step", "time", "size", "state", "path");
    for (int i = 0; i < count; i++)
        print_entry(&entries[i]);
    free(entries);
    return 0;
}

static int ls_main(const char *dir)
{
    if (!is_dir(dir)) {
        fprintf(stderr, "phalanx ckpt ls: '%s' is not a directory\n", dir);
        return CKPT_NOT_FOUND;
    }
    int status = list_tier(dir, dir, "tier 2 (--ckpt-dir)");
    CkptOptions options = {.dir = dir};
    char tier1[PATH_MAX], tier2[PATH_MAX];
    ckpt_tier_dirs(&options, tier1, sizeof(tier1), tier2, sizeof(tier2));
    if (status == 0 && tier1[0] && is_dir(tier1))
        status = list_tier(tier1, dir, "tier 1 (memory)");
    return status;
}

// ----------------------------------------------------------------------------
// verify

static int verify_one(const char *path)
{
    char err[1024];
    CkptStatus status = ckpt_verify(path, stateful_check, stdout, err, sizeof(err));
    if (status != CKPT_OK) {
        printf("%s: %s: %s\n", path, ckpt_status_name(status), err);
        return status;
    }
    CkptIndex index;
    if (ckpt_index_read(path, &index, err, sizeof(err)) == CKPT_OK) {
        printf("%s: complete, every checksum good (step %lld, %d shard(s), %d fragment(s))\n",
               path, (long long)index.state.step, index.shard_count, index.fragment_count);
        ckpt_index_free(&index);
    }
    return CKPT_OK;
}

/* A directory of step directories: each one; the exit status of the worst. */
static int verify_main(const char *path)
{
    char index[PATH_MAX];
    snprintf(index, sizeof(index), "%s/index.h5", path);
    CkptEntry *entries;
    int count;
    struct stat st;
    if (!is_dir(path) || stat(index, &st) == 0 ||
        ckpt_list(path, &entries, &count, NULL, 0) != 0)
        return verify_one(path);
    if (count == 0) {
        free(entries);
        return verify_one(path);
    }
    int worst = CKPT_OK;
    for (int i = 0; i < count; i++) {
        int status = verify_one(entries[i].path);
        if (status == CKPT_INCOMPLETE || (status != CKPT_OK && worst != CKPT_INCOMPLETE))
            worst = status;
    }
    free(entries);
    return worst;
}

// ----------------------------------------------------------------------------
// inspect

static void print_value(const CkptValue *v)
{
    printf("%-14s ", v->key);
    switch (v->type) {
    case CKPT_INT32: printf("%d\n", (int)v->as.i32); break;
    case CKPT_INT64: printf("%lld\n", (long long)v->as.i64); break;
    case CKPT_F64: printf("%g\n", v->as.f64); break;
    case CKPT_TEXT: printf("%s\n", v->as.text); break;
    }
}

/* The core fields, then the stateful parts' values by key (runtime/stateful.h). */
static void print_state(const char *path, const CkptIndex *x)
{
    const CkptRunState *s = &x->state;
    printf("checkpoint     %s\n", path);
    printf("format         %d\n", s->format_version);
    printf("step           %lld\n", (long long)s->step);
    printf("sample cursor  %lld\n", (long long)s->sample_cursor);
    printf("seed           %llu\n", (unsigned long long)s->seed);
    printf("model          --vocab %d --layers %d --heads %d --dim %d --seq-len %d\n",
           s->model.vocab, s->model.layers, s->model.heads, s->model.dim, s->model.seq_len);
    printf("written by     dp %d x pp %d x sp %d (%d ranks), run %016llx\n", s->writer.dp,
           s->writer.pp, s->writer.sp, s->writer.world, (unsigned long long)x->run_id);
    for (int i = 0; i < s->value_count; i++)
        print_value(&s->values[i]);
    for (int i = 0; i < s->extra_count; i++)
        printf("extra          %s = %.17g\n", s->extra[i].key, s->extra[i].value);
}

static void print_tensors(const CkptIndex *x)
{
    int tensors = 0;
    for (int i = 0; i < x->fragment_count; i++)
        tensors += i == 0 || strcmp(x->fragments[i].name, x->fragments[i - 1].name) != 0;
    printf("tensors        %d (each as params, optim/m, optim/v)\n", tensors);
    printf("  %-32s %-16s %s\n", "name", "shape", "fragments: rank[rows)");
    for (int i = 0; i < x->fragment_count;) {
        const CkptFragment *f = &x->fragments[i];
        char shape[48];
        ckpt_shape_text(f->ndim, f->shape, shape, sizeof(shape));
        printf("  %-32s %-16s", f->name, shape);
        int j = i;
        for (; j < x->fragment_count && strcmp(x->fragments[j].name, f->name) == 0; j++)
            printf(" %d[%lld,%lld)", x->fragments[j].rank, (long long)x->fragments[j].row_begin,
                   (long long)x->fragments[j].row_end);
        printf("\n");
        i = j;
    }
}

static int inspect_main(const char *path)
{
    CkptIndex index;
    char err[1024];
    CkptStatus status = ckpt_index_read(path, &index, err, sizeof(err));
    char why[768];
    if (status == CKPT_OK && stateful_check(&index.state, why, sizeof(why)) != 0) {
        // what resume and verify say of it (checkpoint.h, "Reading")
        snprintf(err, sizeof(err), "%s%s: corrupt run state: %s", path,
                 is_dir(path) ? "/index.h5" : "", why);
        ckpt_index_free(&index);
        status = CKPT_CORRUPT;
    }
    if (status != CKPT_OK) {
        fprintf(stderr, "phalanx ckpt inspect: %s\n", err);
        return status;
    }
    print_state(path, &index);
    print_tensors(&index);
    ckpt_index_free(&index);
    return 0;
}

int ckpt_main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc != 3) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "ls") == 0)
        return ls_main(argv[2]);
    if (strcmp(argv[1], "verify") == 0)
        return verify_main(argv[2]);
    if (strcmp(argv[1], "inspect") == 0)
        return inspect_main(argv[2]);
    fprintf(stderr, "phalanx ckpt: unknown subcommand '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
