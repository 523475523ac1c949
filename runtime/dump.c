/* --dump-params: the model gathered on rank 0 and written (contract in dump.h). */
#include "dump.h"

#include "report.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One file of --dump-params (checked as outfile.h says); NULL after a message. */
static FILE *open_dump(const Trainer *t, const char *path)
{
    char tiers[2][PATH_MAX], err[2 * PATH_MAX + 256];
    OutfilePolicy policy = report_output_policy(t, "--dump-params", OUTFILE_OVERWRITE, tiers);
    FILE *file = outfile_open(&policy, path, err, sizeof(err));
    if (!file)
        fprintf(stderr, "phalanx train: %s\n", err);
    return file;
}

/* Closes a dump file; -1 after a message when any write to it failed. */
static int close_dump(FILE *file, const char *path)
{
    char err[PATH_MAX + 256];
    if (outfile_close(file, path, err, sizeof(err)) == 0)
        return 0;
    fprintf(stderr, "phalanx train: --dump-params: %s\n", err);
    return -1;
}

static int dump_floats(const Trainer *t, const char *path, const float *data, size_t count)
{
    FILE *file = open_dump(t, path);
    if (!file)
        return -1;
    fwrite(data, sizeof(float), count, file); // a short write shows in close_dump
    return close_dump(file, path);
}

/* Final parameters as raw float32 plus a JSON manifest (tests, inspection);
 * `params` is host memory in gpt's layout. */
static int write_params(const Trainer *t, const GPT *gpt, const float *params, const char *path)
{
    char manifest[PATH_MAX + 8];
    snprintf(manifest, sizeof(manifest), "%s.json", path);
    if (dump_floats(t, path, params, gpt->param_count) != 0)
        return -1;
    FILE *json = open_dump(t, manifest);
    if (!json)
        return -1;
    gpt_write_manifest(gpt, json);
    return close_dump(json, manifest);
}

/* This stage's parameters in host memory (a copy: malloc'd), or NULL. */
static float *host_params(Trainer *t)
{
    size_t bytes = t->gpt.param_count * sizeof(float);
    float *host = malloc(bytes);
    if (!host) {
        fprintf(stderr, "phalanx train: rank %d: --dump-params: out of memory\n", t->rank);
        return NULL;
    }
    device_download(t->dev, host, t->gpt.params, bytes);
    if (trainer_device_failed(t, "--dump-params: copying the parameters")) {
        free(host);
        return NULL;
    }
    return host;
}

enum { TAG_DUMP = 77 };

/* Copies stage `stage`'s parameters (received from its first replica) into
 * the whole model; the last stage's copy of wte goes to *tied_copy. */
static int receive_stage(Trainer *t, GPT *full, int stage, float *tied_copy)
{
    LayoutNeeds needs = options_layout_needs(&t->opt);
    int begin, end, source = layout_rank(t->layout, (GridCoord){0, stage, 0});
    layout_stage_layers(t->layout, &needs, stage, &begin, &end);
    GPT part;
    if (gpt_init(&part, device_cpu(), &t->opt.model, begin, end, false,
                 stage == t->layout.pp - 1))
        return -1;
    int status = comm_recv(t->world, part.params, part.param_count, COMM_F32, source, TAG_DUMP);
    for (int i = 0; status == 0 && i < part.tensor_count; i++) {
        const ParamTensor *from = &part.tensors[i];
        float *to = strcmp(from->name, "wte") == 0
                        ? tied_copy
                        : full->params + gpt_find_tensor(full, from->name)->offset;
        memcpy(to, part.params + from->offset, from->numel * sizeof(float));
    }
    gpt_free(&part);
    return status;
}

static int write_tied_copy(const Trainer *t, const float *tied, size_t count, const char *path)
{
    char tied_path[PATH_MAX + 8];
    snprintf(tied_path, sizeof(tied_path), "%s.tied", path);
    return dump_floats(t, tied_path, tied, count);
}

/* Rank 0 puts the stages together: its own, then each later stage's. */
static int gather_stages(Trainer *t, const float *own_params, const char *path)
{
    GPT full;
    if (gpt_init_full(&full, device_cpu(), &t->opt.model))
        return -1;
    const ParamTensor *wte = gpt_find_tensor(&full, "wte");
    float *tied = malloc(wte->numel * sizeof(float));
    int status = tied ? 0 : -1;
    for (int i = 0; status == 0 && i < t->gpt.tensor_count; i++) {
        const ParamTensor *own = &t->gpt.tensors[i];
        memcpy(full.params + gpt_find_tensor(&full, own->name)->offset,
               own_params + own->offset, own->numel * sizeof(float));
    }
    for (int stage = 1; status == 0 && stage < t->layout.pp; stage++)
        status = receive_stage(t, &full, stage, tied);
    if (status == 0)
        status = write_params(t, &full, full.params, path);
    if (status == 0)
        status = write_tied_copy(t, tied, wte->numel, path);
    free(tied);
    gpt_free(&full);
    return status;
}

/* Gathers the whole model on rank 0 and writes it; with pp > 1 the last
 * stage's copy of the tied embedding goes to PATH.tied, for comparison. */
int dump_params(Trainer *t, const char *path)
{
    bool writer = t->layout.pp == 1 ? t->rank == 0 : t->coord.dp == 0 && t->coord.sp == 0;
    if (!writer)
        return 0;
    float *params = host_params(t);
    if (!params)
        return -1;
    int status;
    if (t->layout.pp == 1)
        status = write_params(t, &t->gpt, params, path);
    else if (t->rank != 0)
        status = comm_send(t->world, params, t->gpt.param_count, COMM_F32, 0, TAG_DUMP);
    else
        status = gather_stages(t, params, path);
    free(params);
    return status;
}
