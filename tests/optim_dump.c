/*
 * optim_dump: runs optimizer steps on tensors and gradients given in a file,
 * for tests/test_optim_torch.py to compare with PyTorch.
 *
 * Usage: optim_dump lamb|adamw IN.bin OUT.bin
 *
 * IN.bin, little-endian int32 and float32, packed:
 *   int32   count, steps
 *   float32 lr, beta1, beta2, eps, weight_decay, clip   (clip <= 0: no clipping)
 *   count x { int32 numel, int32 exclude }
 *   count x float32[numel]                   initial parameters
 *   steps x count x float32[numel]           gradients of step 1, 2, ...
 * OUT.bin: the final parameters, then m, then v, each as count x float32[numel].
 *
 * Each step does what the runtime does with one rank: the global norm from
 * optim_grad_sumsq, the scale from optim_clip_scale, then optim_step with the
 * 1-based step number. Moments start at zero.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim.h"

typedef struct {
    const unsigned char *data;
    size_t size, pos;
    const char *path;
} Reader;

static void die(const char *message, const char *path)
{
    fprintf(stderr, "optim_dump: %s: %s\n", path, message);
    exit(1);
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        die("out of memory", "malloc");
    return p;
}

static float *zeroed_floats(size_t numel)
{
    float *p = calloc(numel ? numel : 1, sizeof(float));
    if (!p)
        die("out of memory", "calloc");
    return p;
}

static void take(Reader *r, void *out, size_t bytes)
{
    if (r->size - r->pos < bytes)
        die("file ends early (see the format at the top of optim_dump.c)", r->path);
    memcpy(out, r->data + r->pos, bytes);
    r->pos += bytes;
}

static int32_t take_int(Reader *r)
{
    int32_t x;
    take(r, &x, sizeof x);
    return x;
}

static float take_float(Reader *r)
{
    float x;
    take(r, &x, sizeof x);
    return x;
}

static Reader read_whole_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die("cannot open", path);
    if (fseek(f, 0, SEEK_END) != 0)
        die("cannot seek", path);
    long size = ftell(f);
    if (size < 0)
        die("cannot tell its size", path);
    unsigned char *data = xmalloc((size_t)size);
    rewind(f);
    if (fread(data, 1, (size_t)size, f) != (size_t)size)
        die("short read", path);
    fclose(f);
    return (Reader){.data = data, .size = (size_t)size, .path = path};
}

typedef struct {
    float lr, clip;
    int count, steps;
    OptimConfig cfg;
    OptimTensor *tensors;
} Problem;

/* Reads the header and the initial parameters, and allocates zeroed moments
 * and one gradient buffer per tensor. */
static Problem read_problem(Reader *r, OptimKind kind)
{
    Problem p = {.cfg = optim_default_config(kind)};
    p.count = take_int(r);
    p.steps = take_int(r);
    if (p.count < 0 || p.steps < 0)
        die("negative tensor or step count", r->path);
    p.lr = take_float(r);
    p.cfg.beta1 = take_float(r);
    p.cfg.beta2 = take_float(r);
    p.cfg.eps = take_float(r);
    p.cfg.weight_decay = take_float(r);
    p.clip = take_float(r);
    p.tensors = xmalloc((size_t)p.count * sizeof *p.tensors);
    for (int i = 0; i < p.count; i++) {
        int32_t numel = take_int(r);
        if (numel < 0)
            die("negative numel", r->path);
        OptimTensor *t = &p.tensors[i];
        *t = (OptimTensor){.name = "tensor", .numel = (size_t)numel,
                           .exclude = take_int(r) != 0};
        t->param = xmalloc(t->numel * sizeof(float));
        t->grad = xmalloc(t->numel * sizeof(float));
        t->m = zeroed_floats(t->numel);
        t->v = zeroed_floats(t->numel);
    }
    for (int i = 0; i < p.count; i++)
        take(r, p.tensors[i].param, p.tensors[i].numel * sizeof(float));
    return p;
}

static void run_steps(Problem *p, Reader *r)
{
    for (long step = 1; step <= p->steps; step++) {
        for (int i = 0; i < p->count; i++)
            take(r, p->tensors[i].grad, p->tensors[i].numel * sizeof(float));
        double norm = sqrt(optim_grad_sumsq(p->tensors, p->count));
        float scale = optim_clip_scale(norm, p->clip);
        optim_step(&p->cfg, p->tensors, p->count, p->lr, step, scale);
    }
    if (r->pos != r->size)
        die("bytes left after the last step's gradients", r->path);
}

static void write_result(const Problem *p, const char *path)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        die("cannot create", path);
    for (int which = 0; which < 3; which++) {
        for (int i = 0; i < p->count; i++) {
            const OptimTensor *t = &p->tensors[i];
            const float *src = which == 0 ? t->param : which == 1 ? t->m : t->v;
            if (fwrite(src, sizeof(float), t->numel, f) != t->numel)
                die("short write", path);
        }
    }
    if (fclose(f) != 0)
        die("cannot close", path);
}

int main(int argc, char **argv)
{
    OptimKind kind;
    if (argc != 4 || !optim_kind_parse(argv[1], &kind)) {
        fprintf(stderr, "usage: optim_dump lamb|adamw IN.bin OUT.bin\n");
        return 2;
    }
    Reader r = read_whole_file(argv[2]);
    Problem p = read_problem(&r, kind);
    run_steps(&p, &r);
    write_result(&p, argv[3]);
    return 0;
}
