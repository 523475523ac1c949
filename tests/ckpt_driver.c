/*
 * ckpt_driver: the checkpoint module without the model, for the tests in
 * test_checkpoint.py. It builds the tensor table of a small GPT (the names
 * and shapes of runtime/gpt.c) split over a dp x pp x sp layout, and
 *
 *   write  runs a fake training loop: before "optimizer step" s it waits for
 *          the sidecar's copy, then sets every element to value(name, kind,
 *          s, index), and checkpoints when due (the protocol of checkpoint.h);
 *   read   resumes (latest or a path) in any layout and checks every element
 *          of every tensor it holds against value(..., step) bit for bit,
 *          then prints the run state as one JSON line.
 *
 * Each rank holds whole tensors of its stage; replicas split their rows
 * (wte is held by the first and the last stage when pp > 1).
 */
#include "checkpoint.h"
#include "ckpt_tensors.h"
#include "comm.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *dir, *memory_dir, *resume, *mode;
    int dp, pp, sp;
    CkptModel model;
    long steps, every;
    int keep, work_ms, global_batch;
} Args;

typedef struct {
    CkptTensor *tensors;
    int count;
} Table;

/* The value every test expects: a float in [2, 4) whose mantissa hashes
 * (name, kind, step, index), so a misplaced, stale or wrong-kind element shows.
 * test_checkpoint.py computes the same with numpy. */
static float value(const char *name, int kind, long step, size_t i)
{
    uint32_t h = 2166136261u;
    for (const char *c = name; *c; c++)
        h = (h ^ (unsigned char)*c) * 16777619u;
    uint32_t x = h ^ ((uint32_t)kind * 0x9e3779b9u) ^ ((uint32_t)step * 0x85ebca6bu);
    x += (uint32_t)i * 0x27d4eb2du;
    x ^= x >> 15;
    x *= 0x2c1b3c6du;
    x ^= x >> 12;
    uint32_t bits = 0x40000000u | (x & 0x7fffffu);
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

static void add(Table *t, const char *name, int64_t rows, int64_t cols, int index, int count)
{
    test_tensor_make(&t->tensors[t->count++], name, rows, cols, index, count);
}

/* The tensors of this rank's stage, in the order of runtime/gpt.c. */
static Table build_table(const Args *a, int rank)
{
    static const struct {
        const char *suffix;
        int rows_c, cols_c; /* multiples of C; cols 0: 1-D */
    } layer[] = {
        {"ln1.weight", 1, 0},      {"ln1.bias", 1, 0},      {"attn.qkv.weight", 3, 1},
        {"attn.qkv.bias", 3, 0},   {"attn.proj.weight", 1, 1}, {"attn.proj.bias", 1, 0},
        {"ln2.weight", 1, 0},      {"ln2.bias", 1, 0},      {"mlp.fc.weight", 4, 1},
        {"mlp.fc.bias", 4, 0},     {"mlp.proj.weight", 1, 4}, {"mlp.proj.bias", 1, 0},
    };
    const CkptModel *m = &a->model;
    int C = m->dim, sp_i = rank % a->sp, dp_i = rank / a->sp % a->dp, stage = rank / (a->sp * a->dp);
    int replicas = a->dp * a->sp, replica = dp_i * a->sp + sp_i;
    int first = stage * m->layers / a->pp, end = (stage + 1) * m->layers / a->pp;
    Table t = {calloc((size_t)(12 * m->layers + 8), sizeof(CkptTensor)), 0};
    bool tied = a->pp > 1;
    if (stage == 0) {
        add(&t, "wte", m->vocab, C, replica, tied ? 2 * replicas : replicas);
        add(&t, "wpe", m->seq_len, C, replica, replicas);
    }
    char name[CKPT_NAME_MAX];
    for (int l = first; l < end; l++)
        for (size_t i = 0; i < sizeof(layer) / sizeof(layer[0]); i++) {
            snprintf(name, sizeof(name), "h.%d.%s", l, layer[i].suffix);
            add(&t, name, (int64_t)layer[i].rows_c * C, (int64_t)layer[i].cols_c * C, replica,
                replicas);
        }
    if (stage == a->pp - 1) {
        add(&t, "lnf.weight", C, 0, replica, replicas);
        add(&t, "lnf.bias", C, 0, replica, replicas);
        if (tied)
            add(&t, "wte", m->vocab, C, replicas + replica, 2 * replicas);
    }
    return t;
}

static size_t numel(const CkptTensor *x)
{
    return (size_t)x->shape[0] * (size_t)(x->ndim == 2 ? x->shape[1] : 1);
}

static void fill(Table *t, long step)
{
    for (int k = 0; k < t->count; k++) {
        CkptTensor *x = &t->tensors[k];
        float *buffers[3] = {x->param, x->m, x->v};
        for (int kind = 0; kind < 3; kind++)
            for (size_t i = 0; i < numel(x); i++)
                buffers[kind][i] = value(x->name, kind, step, i);
    }
}

/* Returns the number of elements that differ from step's values. */
static size_t check(const Table *t, long step, int rank)
{
    size_t bad = 0;
    for (int k = 0; k < t->count; k++) {
        const CkptTensor *x = &t->tensors[k];
        const float *buffers[3] = {x->param, x->m, x->v};
        for (int kind = 0; kind < 3; kind++)
            for (size_t i = 0; i < numel(x); i++) {
                float want = value(x->name, kind, step, i);
                if (memcmp(&buffers[kind][i], &want, sizeof(float)) == 0)
                    continue;
                if (bad++ == 0)
                    fprintf(stderr, "ckpt_driver: rank %d: %s kind %d element %zu is %.9g, "
                            "expected %.9g\n", rank, x->name, kind, i, buffers[kind][i], want);
            }
    }
    return bad;
}

static CkptRunState run_state(const Args *a, long step, int world)
{
    CkptRunState s;
    memset(&s, 0, sizeof(s));
    s.step = step;
    s.sample_cursor = step * a->global_batch;
    s.seed = 0xfeedfacecafebeefull;
    s.model = a->model;
    TestParts parts = {.optimizer = "lamb", .lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999,
                       .eps = 1e-6, .weight_decay = 0.01, .clip = 1.0, .schedule = "cosine",
                       .warmup_steps = 2, .total_steps = a->steps,
                       .train_samples = a->steps * a->global_batch, .min_lr_ratio = 0.1,
                       .decay_fraction = 0.2, .global_batch = a->global_batch, .micro_batch = 2};
    test_parts_put(&s, &parts, NULL);
    s.writer = (CkptLayout){a->dp, a->pp, a->sp, world};
    ckpt_state_set(&s, "batch.noise_scale", 0.5 * (double)step);
    return s;
}

static int run_write(const Args *a, Comm *world, Table *t)
{
    int rank = comm_rank(world);
    CkptMode mode;
    if (!ckpt_mode_parse(a->mode, &mode)) {
        fprintf(stderr, "ckpt_driver: --mode '%s': async or sync\n", a->mode);
        return 2;
    }
    CkptOptions options = {.dir = a->dir, .memory_dir = a->memory_dir, .every = a->every,
                           .keep = a->keep, .mode = mode};
    char err[1024];
    Checkpointer *ck = ckpt_open(&options, world, t->tensors, t->count, err, sizeof(err));
    if (!ck) {
        fprintf(stderr, "ckpt_driver: rank %d: %s\n", rank, err);
        return 1;
    }
    for (long s = 1; s <= a->steps; s++) {
        ckpt_wait_copied(ck);
        fill(t, s); // the "optimizer step": every element changes
        CkptRunState state = run_state(a, s, comm_size(world));
        if (ckpt_due(ck, s) && ckpt_snapshot(ck, &state, err, sizeof(err)) != 0)
            fprintf(stderr, "ckpt_driver: rank %d: %s\n", rank, err);
        nanosleep(&(struct timespec){a->work_ms / 1000, (a->work_ms % 1000) * 1000000L}, NULL);
    }
    CkptStats stats;
    int closed = ckpt_close(ck, true, &stats);
    if (rank == 0)
        printf("{\"snapshots\": %ld, \"committed\": [%ld, %ld], \"failed\": [%ld, %ld], "
               "\"stall_ms\": %.3f, \"copy_ms\": %.3f, \"flush_ms\": %.3f, \"closed\": %d}\n",
               stats.snapshots, stats.committed[0], stats.committed[1], stats.failed[0],
               stats.failed[1], stats.stall_seconds * 1e3, stats.last_copy_seconds * 1e3,
               stats.last_flush_seconds * 1e3, closed);
    return 0;
}

static int run_read(const Args *a, Comm *world, Table *t)
{
    int rank = comm_rank(world);
    CkptOptions options = {.dir = a->dir, .memory_dir = a->memory_dir, .every = 1, .keep = 1,
                           .mode = CKPT_SYNC};
    CkptRunState s;
    char path[4096], err[1024];
    CkptReadBytes read;
    CkptStatus status = ckpt_resume(world, &options, a->resume, t->tensors, t->count, &a->model,
                                    &s, path, sizeof(path), &read, err, sizeof(err));
    if (status != CKPT_OK) {
        if (rank == 0)
            fprintf(stderr, "ckpt_driver: %s (%s)\n", err, ckpt_status_name(status));
        return 10 + (int)status;
    }
    int64_t bad = (int64_t)check(t, (long)s.step, rank), tensors = t->count;
    const char *optimizer = "";
    ckpt_state_get_str(&s, "optimizer", &optimizer);
    int64_t sums[2] = {bad, tensors};
    if (comm_allreduce(world, sums, 2, COMM_I64) != 0)
        return 1;
    if (rank == 0)
        printf("{\"path\": \"%s\", \"step\": %lld, \"sample_cursor\": %lld, \"seed\": %llu, "
               "\"writer\": [%d, %d, %d, %d], \"noise_scale\": %.17g, \"optimizer\": \"%s\", "
               "\"bad\": %lld, \"tensors\": %lld, \"read_bytes\": [%llu, %llu, %llu]}\n",
               path, (long long)s.step, (long long)s.sample_cursor, (unsigned long long)s.seed,
               s.writer.dp, s.writer.pp, s.writer.sp, s.writer.world,
               ckpt_state_get(&s, "batch.noise_scale", -1), optimizer, (long long)sums[0],
               (long long)sums[1], (unsigned long long)read.host_memory,
               (unsigned long long)read.other_hosts, (unsigned long long)read.durable);
    return sums[0] == 0 ? 0 : 1;
}

static int parse(int argc, char **argv, Args *a)
{
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},     {"memory-dir", required_argument, NULL, 'M'},
        {"resume", required_argument, NULL, 'r'},  {"mode", required_argument, NULL, 'o'},
        {"layout", required_argument, NULL, 'l'},  {"layers", required_argument, NULL, 'L'},
        {"heads", required_argument, NULL, 'H'},   {"dim", required_argument, NULL, 'C'},
        {"vocab", required_argument, NULL, 'V'},   {"seq-len", required_argument, NULL, 'T'},
        {"steps", required_argument, NULL, 's'},   {"every", required_argument, NULL, 'e'},
        {"keep", required_argument, NULL, 'k'},    {"work-ms", required_argument, NULL, 'w'},
        {NULL, 0, NULL, 0},
    };
    *a = (Args){.mode = "async", .resume = "latest", .dp = 1, .pp = 1, .sp = 1,
                .model = {256, 2, 2, 32, 32}, .steps = 4, .every = 2, .keep = 2,
                .global_batch = 8};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': a->dir = optarg; break;
        case 'M': a->memory_dir = optarg; break;
        case 'r': a->resume = optarg; break;
        case 'o': a->mode = optarg; break;
        case 'l':
            if (sscanf(optarg, "%dx%dx%d", &a->dp, &a->pp, &a->sp) != 3)
                return -1;
            break;
        case 'L': a->model.layers = atoi(optarg); break;
        case 'H': a->model.heads = atoi(optarg); break;
        case 'C': a->model.dim = atoi(optarg); break;
        case 'V': a->model.vocab = atoi(optarg); break;
        case 'T': a->model.seq_len = atoi(optarg); break;
        case 's': a->steps = atol(optarg); break;
        case 'e': a->every = atol(optarg); break;
        case 'k': a->keep = atoi(optarg); break;
        case 'w': a->work_ms = atoi(optarg); break;
        default: return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    Args a;
    if (argc < 2 || (strcmp(argv[1], "write") != 0 && strcmp(argv[1], "read") != 0) ||
        parse(argc - 1, argv + 1, &a) != 0) {
        fprintf(stderr, "usage: ckpt_driver write|read --dir DIR [--memory-dir DIR|none] "
                        "[--layout DPxPPxSP] [--layers L --heads H --dim C --vocab V "
                        "--seq-len T] [--steps N --every E --keep K --mode async|sync "
                        "--work-ms MS] [--resume latest|PATH]\n");
        return 2;
    }
    char err[512];
    Comm *world = comm_world_init(&argc, &argv, err, sizeof(err));
    if (!world) {
        fprintf(stderr, "ckpt_driver: %s\n", err);
        return 1;
    }
    if (a.dp * a.pp * a.sp != comm_size(world) || a.model.layers % a.pp != 0) {
        fprintf(stderr, "ckpt_driver: layout %dx%dx%d does not fit %d rank(s) and %d layers\n",
                a.dp, a.pp, a.sp, comm_size(world), a.model.layers);
        comm_world_finalize(world);
        return 2;
    }
    Table t = build_table(&a, comm_rank(world));
    int status = strcmp(argv[1], "write") == 0 ? run_write(&a, world, &t)
                                               : run_read(&a, world, &t);
    for (int k = 0; k < t.count; k++)
        test_tensor_free(&t.tensors[k]);
    free(t.tensors);
    comm_world_finalize(world);
    return status;
}
