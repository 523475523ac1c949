/* The GPT-2 model (contract in gpt.h); the math lives in kernels.c. */
#include "gpt.h"

#include "rng.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INIT_STD 0.02

// ----------------------------------------------------------------------------
// configuration

int gpt_config_check(const GPTConfig *c, char *err, size_t err_len)
{
    if (c->layers < 1)
        snprintf(err, err_len, "--layers is %d: a model needs at least 1 layer", c->layers);
    else if (c->heads < 1)
        snprintf(err, err_len, "--heads is %d: a model needs at least 1 head", c->heads);
    else if (c->dim < 1)
        snprintf(err, err_len, "--dim is %d: the width must be positive", c->dim);
    else if (c->dim % c->heads != 0)
        snprintf(err, err_len,
                 "--dim %d is not divisible by --heads %d: each head needs dim/heads "
                 "channels; choose a width that is a multiple of the head count",
                 c->dim, c->heads);
    else if (c->seq_len < 1)
        snprintf(err, err_len, "--seq-len is %d: sequences need at least 1 token", c->seq_len);
    else if (c->vocab < 2 || c->vocab > 65536)
        snprintf(err, err_len,
                 "--vocab is %d: it must be between 2 and 65536 (tokens are uint16)",
                 c->vocab);
    else
        return 0;
    return -1;
}

int gpt_padded_vocab(const GPTConfig *c)
{
    return c->vocab > 256 ? (c->vocab + 127) / 128 * 128 : c->vocab;
}

// ----------------------------------------------------------------------------
// parameters

/* The tensors of a layer, in storage order: each one's name after "h.<l>.",
 * its shape in units of C (cols 0: a vector) and the LayerWeights slot that
 * points at it. */
static const struct {
    const char *suffix;
    int rows, cols;
    size_t slot; /* offsetof(LayerWeights, ...) */
} layer_tensors[] = {
    {"ln1.weight", 1, 0, offsetof(LayerWeights, ln1w)},
    {"ln1.bias", 1, 0, offsetof(LayerWeights, ln1b)},
    {"attn.qkv.weight", 3, 1, offsetof(LayerWeights, qkvw)},
    {"attn.qkv.bias", 3, 0, offsetof(LayerWeights, qkvb)},
    {"attn.proj.weight", 1, 1, offsetof(LayerWeights, attprojw)},
    {"attn.proj.bias", 1, 0, offsetof(LayerWeights, attprojb)},
    {"ln2.weight", 1, 0, offsetof(LayerWeights, ln2w)},
    {"ln2.bias", 1, 0, offsetof(LayerWeights, ln2b)},
    {"mlp.fc.weight", 4, 1, offsetof(LayerWeights, fcw)},
    {"mlp.fc.bias", 4, 0, offsetof(LayerWeights, fcb)},
    {"mlp.proj.weight", 1, 4, offsetof(LayerWeights, fcprojw)},
    {"mlp.proj.bias", 1, 0, offsetof(LayerWeights, fcprojb)},
};
#define LAYER_TENSORS (int)(sizeof(layer_tensors) / sizeof(layer_tensors[0]))

/* Biases and LayerNorm parameters are excluded from weight decay and layer
 * adaptation: the optimizer's rule by name (optim.h). */
static void append_tensor(GPT *gpt, const char *name, int rows, int cols)
{
    ParamTensor *t = &gpt->tensors[gpt->tensor_count++];
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->ndim = cols ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->numel = (size_t)rows * (cols ? cols : 1);
    t->offset = gpt->param_count;
    t->excluded = optim_name_is_excluded(name);
    gpt->param_count += t->numel;
}

/* Every tensor the stage holds, in storage order. */
static void append_tensors(GPT *gpt)
{
    const GPTConfig *c = &gpt->config;
    int C = c->dim;
    char name[48];
    if (gpt->has_embedding || gpt->has_head)
        append_tensor(gpt, "wte", gpt_padded_vocab(c), C);
    if (gpt->has_embedding)
        append_tensor(gpt, "wpe", c->seq_len, C);
    for (int l = gpt->layer_begin; l < gpt->layer_end; l++)
        for (int i = 0; i < LAYER_TENSORS; i++) {
            snprintf(name, sizeof(name), "h.%d.%s", l, layer_tensors[i].suffix);
            append_tensor(gpt, name, layer_tensors[i].rows * C, layer_tensors[i].cols * C);
        }
    if (gpt->has_head) {
        append_tensor(gpt, "lnf.weight", C, 0);
        append_tensor(gpt, "lnf.bias", C, 0);
    }
}

const ParamTensor *gpt_layer_tensors(const GPT *gpt, int layer)
{
    int before = (gpt->has_embedding || gpt->has_head) + gpt->has_embedding;
    return &gpt->tensors[before + (layer - gpt->layer_begin) * LAYER_TENSORS];
}

const ParamTensor *gpt_head_tensors(const GPT *gpt)
{
    return &gpt->tensors[gpt->tensor_count - 2];
}

static float *view(const GPT *gpt, float *base, const char *name)
{
    const ParamTensor *t = gpt_find_tensor(gpt, name);
    return t ? base + t->offset : NULL;
}

static void point_weights(const GPT *gpt, Weights *w, float *base)
{
    w->wte = view(gpt, base, "wte");
    w->wpe = view(gpt, base, "wpe");
    w->lnfw = view(gpt, base, "lnf.weight");
    w->lnfb = view(gpt, base, "lnf.bias");
    for (int l = gpt->layer_begin; l < gpt->layer_end; l++) {
        char *lw = (char *)&w->layers[l - gpt->layer_begin];
        const ParamTensor *first = gpt_layer_tensors(gpt, l);
        for (int i = 0; i < LAYER_TENSORS; i++)
            *(float **)(lw + layer_tensors[i].slot) = base + first[i].offset;
    }
}

/* The head's logit bias: -inf on the padded rows, so they never win the
 * softmax and get no gradient. None when the vocabulary is not padded. */
static int init_vocab_mask(GPT *gpt)
{
    int V = gpt->config.vocab, Vp = gpt_padded_vocab(&gpt->config);
    if (Vp == V)
        return 0;
    float *host = malloc((size_t)Vp * sizeof(float));
    gpt->vocab_mask = device_alloc(gpt->dev, (size_t)Vp * sizeof(float));
    if (!host || !gpt->vocab_mask) {
        free(host);
        return gpt_free(gpt), -1;
    }
    for (int i = 0; i < Vp; i++)
        host[i] = i < V ? 0.0f : -INFINITY;
    device_upload(gpt->dev, gpt->vocab_mask, host, (size_t)Vp * sizeof(float));
    int status = device_sync(gpt->dev);
    free(host);
    return status;
}

int gpt_init(GPT *gpt, const Device *dev, const GPTConfig *config, int layer_begin,
             int layer_end, bool has_embedding, bool has_head)
{
    memset(gpt, 0, sizeof(*gpt));
    gpt->dev = dev;
    gpt->config = *config;
    gpt->layer_begin = layer_begin;
    gpt->layer_end = layer_end;
    gpt->sp.size = 1;
    gpt->has_embedding = has_embedding;
    gpt->has_head = has_head;
    int max_tensors = 5 + LAYER_TENSORS * (layer_end - layer_begin);
    int layers = layer_end - layer_begin;
    gpt->tensors = calloc((size_t)max_tensors, sizeof(ParamTensor));
    gpt->w.layers = calloc((size_t)(layers > 0 ? layers : 1), sizeof(LayerWeights));
    gpt->g.layers = calloc((size_t)(layers > 0 ? layers : 1), sizeof(LayerWeights));
    if (!gpt->tensors || !gpt->w.layers || !gpt->g.layers)
        return gpt_free(gpt), -1;
    append_tensors(gpt);
    gpt->params = device_alloc(dev, gpt->param_count * sizeof(float));
    gpt->grads = device_alloc(dev, gpt->param_count * sizeof(float));
    if (!gpt->params || !gpt->grads)
        return gpt_free(gpt), -1;
    point_weights(gpt, &gpt->w, gpt->params);
    point_weights(gpt, &gpt->g, gpt->grads);
    return has_head ? init_vocab_mask(gpt) : 0;
}

int gpt_init_full(GPT *gpt, const Device *dev, const GPTConfig *config)
{
    return gpt_init(gpt, dev, config, 0, config->layers, true, true);
}

int gpt_enable_sequence_parallel(GPT *gpt, Comm *sp, int B, int local_T)
{
    return ulysses_init(&gpt->sp, gpt->dev, sp, B, local_T, gpt->config.dim);
}

void gpt_free(GPT *gpt)
{
    if (!gpt->dev)
        return; /* never initialised */
    ulysses_free(&gpt->sp);
    device_free(gpt->dev, gpt->work_memory);
    free(gpt->tensors);
    free(gpt->w.layers);
    free(gpt->g.layers);
    device_free(gpt->dev, gpt->params);
    device_free(gpt->dev, gpt->grads);
    device_free(gpt->dev, gpt->vocab_mask);
    memset(gpt, 0, sizeof(*gpt));
}

const ParamTensor *gpt_find_tensor(const GPT *gpt, const char *name)
{
    for (int i = 0; i < gpt->tensor_count; i++)
        if (strcmp(gpt->tensors[i].name, name) == 0)
            return &gpt->tensors[i];
    return NULL;
}

void gpt_write_manifest(const GPT *gpt, FILE *out)
{
    fprintf(out, "{\"param_count\": %zu, \"tensors\": [", gpt->param_count);
    for (int i = 0; i < gpt->tensor_count; i++) {
        const ParamTensor *t = &gpt->tensors[i];
        fprintf(out, "%s{\"name\": \"%s\", \"shape\": [%d", i ? ", " : "", t->name,
                t->shape[0]);
        if (t->ndim == 2)
            fprintf(out, ", %d", t->shape[1]);
        fprintf(out, "], \"offset\": %zu}", t->offset);
    }
    fprintf(out, "]}\n");
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* GPT-2: LayerNorm weights 1, biases 0, weights N(0, 0.02), and the two
 * projections that write into the residual stream N(0, 0.02 / sqrt(2 L)). */
static void init_tensor(const GPT *gpt, float *params, const ParamTensor *t, uint64_t seed)
{
    float *p = params + t->offset;
    bool layernorm = t->excluded && ends_with(t->name, ".weight");
    if (t->excluded) {
        for (size_t i = 0; i < t->numel; i++)
            p[i] = layernorm ? 1.0f : 0.0f;
        return;
    }
    double std = INIT_STD;
    if (ends_with(t->name, "attn.proj.weight") || ends_with(t->name, "mlp.proj.weight"))
        std /= sqrt(2.0 * gpt->config.layers);
    uint32_t stream = rng_name_stream(t->name);
    // the padded rows of wte start (and stay) zero
    size_t drawn = strcmp(t->name, "wte") == 0 ? (size_t)gpt->config.vocab * t->shape[1]
                                               : t->numel;
#pragma omp parallel for
    for (size_t i = 0; i < drawn; i++)
        p[i] = (float)(std * rng_normal(seed, RNG_INIT, stream, i));
    for (size_t i = drawn; i < t->numel; i++)
        p[i] = 0.0f;
}

/* Drawn on the host (rng.h is host code), then uploaded. */
int gpt_init_params(GPT *gpt, uint64_t seed)
{
    const Device *dev = gpt->dev;
    float *host = !dev->staged ? gpt->params : malloc(gpt->param_count * sizeof(float));
    if (!host)
        return -1;
    for (int i = 0; i < gpt->tensor_count; i++)
        init_tensor(gpt, host, &gpt->tensors[i], seed);
    device_upload(dev, gpt->params, host, gpt->param_count * sizeof(float));
    if (host != gpt->params)
        free(host);
    return device_sync(dev);
}

void gpt_zero_grad(GPT *gpt)
{
    device_zero(gpt->dev, gpt->grads, gpt->param_count * sizeof(float));
}

bool recompute_parse(const char *text, Recompute *out)
{
    static const Recompute all[] = {RECOMPUTE_NONE, RECOMPUTE_ATTN, RECOMPUTE_FULL};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (strcmp(text, recompute_name(all[i])) == 0)
            return *out = all[i], true;
    return false;
}

const char *recompute_name(Recompute recompute)
{
    return recompute == RECOMPUTE_FULL ? "full" : recompute == RECOMPUTE_ATTN ? "attn" : "none";
}

// ----------------------------------------------------------------------------
// activations and scratch: one allocation each, carved into named views

typedef struct {
    float *base;
    size_t used;
} Carver;

static float *carve(Carver *c, size_t count)
{
    float *p = c->base ? c->base + c->used : NULL;
    c->used += count;
    return p;
}

/* What attention reads and writes but its probabilities: the layer's first
 * half, live from the layer's forward to the end of its backward. */
static void carve_attention(Carver *c, LayerActs *a, size_t N, int C, bool sp)
{
    a->ln1 = carve(c, N * C);
    a->ln1_mean = carve(c, N);
    a->ln1_rstd = carve(c, N);
    a->qkv = carve(c, N * 3 * C);
    a->atty = carve(c, N * C);
    // head-sharded copies hold the same number of floats as the local ones
    a->qkv_heads = sp ? carve(c, N * 3 * C) : NULL;
    a->atty_heads = sp ? carve(c, N * C) : NULL;
}

/* The MLP's inputs and intermediates, written after attention is done. */
static void carve_mlp(Carver *c, LayerActs *a, size_t N, int C)
{
    a->res_attn = carve(c, N * C);
    a->ln2 = carve(c, N * C);
    a->ln2_mean = carve(c, N);
    a->ln2_rstd = carve(c, N);
    a->fch = carve(c, N * 4 * C);
    a->fch_gelu = carve(c, N * 4 * C);
}

static void carve_layer(Carver *c, LayerActs *a, size_t N, int C, size_t att, bool sp)
{
    carve_attention(c, a, N, C, sp);
    a->att = carve(c, att);
    carve_mlp(c, a, N, C);
    a->out = carve(c, N * C);
}

/* [B, NH/sp, T*sp, T*sp]: attention runs over whole sequences for NH/sp heads. */
static size_t attention_floats(const GPT *gpt, int B, int T)
{
    size_t P = (size_t)gpt->sp.size;
    return (size_t)B * (gpt->config.heads / P) * (T * P) * (T * P);
}

/* What one layer keeps per micro-batch (gpt.h, Recompute); the rest points
 * into the shared workspace. */
static void carve_kept_layer(Carver *c, LayerActs *a, const GPT *gpt, size_t N, size_t att)
{
    int C = gpt->config.dim;
    if (gpt->recompute == RECOMPUTE_FULL) {
        *a = gpt->work;
        a->out = carve(c, N * C);
        return;
    }
    carve_layer(c, a, N, C, gpt->recompute == RECOMPUTE_ATTN ? 0 : att, gpt->sp.size > 1);
    if (gpt->recompute == RECOMPUTE_ATTN)
        a->att = gpt->work.att;
}

/* attn: the probabilities. full: one layer's intermediates but its output
 * (the layer's backward does not read it), where the probabilities share
 * their floats with the MLP's: in the forward they are dead once attention's
 * output is out, and the backward recomputes them as attn does, after the
 * MLP's backward (gpt_layer_backward). */
static void carve_workspace(Carver *c, LayerActs *w, const GPT *gpt, size_t N, size_t att)
{
    memset(w, 0, sizeof(*w));
    if (gpt->recompute == RECOMPUTE_FULL) {
        carve_attention(c, w, N, gpt->config.dim, gpt->sp.size > 1);
        size_t shared = c->used;
        w->att = carve(c, att);
        size_t att_end = c->used;
        c->used = shared;
        carve_mlp(c, w, N, gpt->config.dim);
        if (c->used < att_end)
            c->used = att_end;
    } else if (gpt->recompute == RECOMPUTE_ATTN) {
        w->att = carve(c, att);
    }
}

int gpt_enable_recompute(GPT *gpt, Recompute recompute, int B, int T)
{
    size_t N = (size_t)B * T, att = attention_floats(gpt, B, T);
    gpt->recompute = recompute;
    Carver sizing = {NULL, 0};
    carve_workspace(&sizing, &gpt->work, gpt, N, att);
    if (sizing.used == 0)
        return 0;
    gpt->work_memory = device_alloc(gpt->dev, sizing.used * sizeof(float));
    if (!gpt->work_memory)
        return -1;
    gpt->work_bytes = sizing.used * sizeof(float);
    Carver carver = {gpt->work_memory, 0};
    carve_workspace(&carver, &gpt->work, gpt, N, att);
    return 0;
}

static void carve_acts(Carver *c, Activations *a, const GPT *gpt)
{
    size_t N = (size_t)a->B * a->T;
    int C = gpt->config.dim, V = gpt_padded_vocab(&gpt->config);
    size_t att = attention_floats(gpt, a->B, a->T);
    a->input = carve(c, N * C);
    for (int l = 0; l < gpt->layer_end - gpt->layer_begin; l++)
        carve_kept_layer(c, &a->layers[l], gpt, N, att);
    if (gpt->has_head) {
        a->lnf = carve(c, N * C);
        a->lnf_mean = carve(c, N);
        a->lnf_rstd = carve(c, N);
        a->logits = carve(c, N * V);
        a->probs = carve(c, N * V);
        a->losses = carve(c, N);
    }
}

int acts_init(Activations *acts, const GPT *gpt, int B, int T)
{
    const Device *dev = gpt->dev;
    memset(acts, 0, sizeof(*acts));
    acts->dev = dev;
    acts->B = B;
    acts->T = T;
    int layers = gpt->layer_end - gpt->layer_begin;
    size_t ids = (size_t)B * T * sizeof(int);
    acts->layers = calloc((size_t)(layers > 0 ? layers : 1), sizeof(LayerActs));
    acts->tokens = calloc(1, ids);
    acts->targets = calloc(1, ids);
    acts->dev_tokens = !dev->staged ? acts->tokens : device_alloc(dev, ids);
    acts->dev_targets = !dev->staged ? acts->targets : device_alloc(dev, ids);
    Carver sizing = {NULL, 0};
    carve_acts(&sizing, acts, gpt);
    acts->memory = device_alloc(dev, sizing.used * sizeof(float));
    acts->bytes = sizing.used * sizeof(float);
    if (!acts->layers || !acts->tokens || !acts->targets || !acts->dev_tokens ||
        !acts->dev_targets || !acts->memory)
        return acts_free(acts), -1;
    Carver carver = {acts->memory, 0};
    carve_acts(&carver, acts, gpt);
    return 0;
}

void acts_free(Activations *acts)
{
    if (!acts->dev)
        return;
    device_free(acts->dev, acts->memory);
    if (acts->dev_tokens != acts->tokens)
        device_free(acts->dev, acts->dev_tokens);
    if (acts->dev_targets != acts->targets)
        device_free(acts->dev, acts->dev_targets);
    free(acts->layers);
    free(acts->tokens);
    free(acts->targets);
    memset(acts, 0, sizeof(*acts));
}

int scratch_init(Scratch *s, const GPT *gpt, int B, int T)
{
    size_t N = (size_t)B * T;
    int C = gpt->config.dim;
    size_t att = attention_floats(gpt, B, T);
    bool sp = gpt->sp.size > 1;
    size_t total = 3 * N * C + N * 4 * C + N * 3 * C + att + (sp ? N * 4 * C : 0);
    s->dev = gpt->dev;
    s->memory = device_alloc(gpt->dev, total * sizeof(float));
    if (!s->memory)
        return -1;
    s->bytes = total * sizeof(float);
    Carver c = {s->memory, 0};
    s->dresid = carve(&c, N * C);
    s->dtmp = carve(&c, N * C);
    s->dln = carve(&c, N * C);
    s->dfch = carve(&c, N * 4 * C);
    s->dqkv = carve(&c, N * 3 * C);
    s->datt = carve(&c, att);
    s->datty_heads = sp ? carve(&c, N * C) : NULL;
    s->dqkv_heads = sp ? carve(&c, N * 3 * C) : NULL;
    return 0;
}

void scratch_free(Scratch *s)
{
    if (s->dev)
        device_free(s->dev, s->memory);
    memset(s, 0, sizeof(*s));
}

// ----------------------------------------------------------------------------
// forward

static const float *layer_input(const GPT *gpt, const Activations *acts, int layer)
{
    return layer == gpt->layer_begin ? acts->input
                                     : acts->layers[layer - gpt->layer_begin - 1].out;
}

float *acts_stage_output(const GPT *gpt, Activations *acts)
{
    int count = gpt->layer_end - gpt->layer_begin;
    return count > 0 ? acts->layers[count - 1].out : acts->input;
}

void gpt_embed_forward(const GPT *gpt, Activations *acts)
{
    const Device *dev = gpt->dev;
    device_upload(dev, acts->dev_tokens, acts->tokens, (size_t)acts->B * acts->T * sizeof(int));
    device_encoder_forward(dev, acts->input, acts->dev_tokens, gpt->w.wte, gpt->w.wpe, acts->B,
                           acts->T, gpt->config.dim, gpt->sp.rank * acts->T);
}

/* Attention over the q, k, v this rank attends with: its own under P = 1,
 * the head-sharded whole sequences under Ulysses; probabilities into a->att. */
static void attend(GPT *gpt, LayerActs *a, float *out, int B, int T)
{
    int C = gpt->config.dim, NH = gpt->config.heads, P = gpt->sp.size;
    if (P == 1)
        device_attention_forward(gpt->dev, out, a->att, a->qkv, B, T, C, NH);
    else
        device_attention_forward(gpt->dev, out, a->att, a->qkv_heads, B, T * P, C / P, NH / P);
}

/* Ulysses: re-shard q, k, v by heads, attend over whole sequences, re-shard back. */
static int attention_forward_sharded(GPT *gpt, LayerActs *a, int B, int T)
{
    int C = gpt->config.dim;
    if (gpt->sp.size == 1) {
        attend(gpt, a, a->atty, B, T);
        return 0;
    }
    if (ulysses_seq_to_heads(&gpt->sp, a->qkv_heads, a->qkv, B, T, C, 3))
        return -1;
    attend(gpt, a, a->atty_heads, B, T);
    return ulysses_heads_to_seq(&gpt->sp, a->atty, a->atty_heads, B, T, C, 1);
}

static int attention_backward_sharded(GPT *gpt, LayerActs *a, Scratch *s, int B, int T)
{
    int C = gpt->config.dim, NH = gpt->config.heads, P = gpt->sp.size;
    if (P == 1) {
        device_attention_backward(gpt->dev, s->dqkv, s->datt, s->dln, a->qkv, a->att, B, T, C, NH);
        return 0;
    }
    if (ulysses_seq_to_heads(&gpt->sp, s->datty_heads, s->dln, B, T, C, 1))
        return -1;
    device_attention_backward(gpt->dev, s->dqkv_heads, s->datt, s->datty_heads, a->qkv_heads,
                              a->att, B, T * P, C / P, NH / P);
    return ulysses_heads_to_seq(&gpt->sp, s->dqkv, s->dqkv_heads, B, T, C, 3);
}

/* One layer from its input x into a's buffers up to the MLP's activation:
 * all that the layer's backward reads. */
static int layer_intermediates(GPT *gpt, LayerActs *a, const float *x, int layer, int B, int T)
{
    const Device *dev = gpt->dev;
    const LayerWeights *w = &gpt->w.layers[layer - gpt->layer_begin];
    size_t N = (size_t)B * T;
    int C = gpt->config.dim;

    device_layernorm_forward(dev, a->ln1, a->ln1_mean, a->ln1_rstd, x, w->ln1w, w->ln1b, N, C);
    device_matmul_forward(dev, a->qkv, a->ln1, w->qkvw, w->qkvb, N, C, 3 * C);
    if (attention_forward_sharded(gpt, a, B, T))
        return -1;
    device_matmul_forward(dev, a->res_attn, a->atty, w->attprojw, w->attprojb, N, C, C);
    device_accumulate(dev, a->res_attn, x, N * C);
    device_layernorm_forward(dev, a->ln2, a->ln2_mean, a->ln2_rstd, a->res_attn, w->ln2w, w->ln2b,
                             N, C);
    device_matmul_forward(dev, a->fch, a->ln2, w->fcw, w->fcb, N, C, 4 * C);
    device_gelu_forward(dev, a->fch_gelu, a->fch, N * 4 * C);
    return 0;
}

int gpt_layer_forward(GPT *gpt, Activations *acts, int layer)
{
    LayerActs *a = &acts->layers[layer - gpt->layer_begin];
    const LayerWeights *w = &gpt->w.layers[layer - gpt->layer_begin];
    size_t N = (size_t)acts->B * acts->T;
    int C = gpt->config.dim;
    if (layer_intermediates(gpt, a, layer_input(gpt, acts, layer), layer, acts->B, acts->T))
        return -1;
    device_matmul_forward(gpt->dev, a->out, a->fch_gelu, w->fcprojw, w->fcprojb, N, 4 * C, C);
    device_accumulate(gpt->dev, a->out, a->res_attn, N * C);
    return 0;
}

/* The layer's intermediates for its backward: under full recomputed into the
 * workspace (but for the probabilities, which it overwrites: see
 * recompute_probabilities), else the kept ones. */
static int layer_for_backward(GPT *gpt, Activations *acts, int layer, LayerActs **a)
{
    *a = &acts->layers[layer - gpt->layer_begin];
    if (gpt->recompute != RECOMPUTE_FULL)
        return 0;
    *a = &gpt->work;
    return layer_intermediates(gpt, *a, layer_input(gpt, acts, layer), layer, acts->B, acts->T);
}

/* attn and full: the probabilities again from q, k, v, once the projection's
 * backward has read the attention output: attention rewrites that output with
 * the same bits (it is not read again), so no spare buffer is needed. */
static void recompute_probabilities(GPT *gpt, LayerActs *a, int B, int T)
{
    if (gpt->recompute != RECOMPUTE_NONE)
        attend(gpt, a, gpt->sp.size == 1 ? a->atty : a->atty_heads, B, T);
}

double gpt_head_forward(const GPT *gpt, Activations *acts)
{
    const Device *dev = gpt->dev;
    size_t N = (size_t)acts->B * acts->T;
    int C = gpt->config.dim, V = gpt_padded_vocab(&gpt->config);
    const float *x = acts_stage_output(gpt, acts);
    device_upload(dev, acts->dev_targets, acts->targets, N * sizeof(int));
    device_layernorm_forward(dev, acts->lnf, acts->lnf_mean, acts->lnf_rstd, x, gpt->w.lnfw,
                             gpt->w.lnfb, N, C);
    device_matmul_forward(dev, acts->logits, acts->lnf, gpt->w.wte, gpt->vocab_mask, N, C, V);
    double total = device_crossentropy_forward(dev, acts->probs, acts->losses, acts->logits,
                                               acts->dev_targets, N, V);
    return total / (double)N;
}

double gpt_forward(GPT *gpt, Activations *acts)
{
    gpt_embed_forward(gpt, acts);
    for (int l = gpt->layer_begin; l < gpt->layer_end; l++)
        if (gpt_layer_forward(gpt, acts, l))
            return NAN;
    return gpt_head_forward(gpt, acts);
}

// ----------------------------------------------------------------------------
// backward: scratch->dresid carries the gradient of the residual stream from
// the head down to the embeddings, updated in place by each layer.

void gpt_head_backward(GPT *gpt, Activations *acts, Scratch *s, float dloss)
{
    const Device *dev = gpt->dev;
    size_t N = (size_t)acts->B * acts->T;
    int C = gpt->config.dim, V = gpt_padded_vocab(&gpt->config);
    // dlogits overwrite the probabilities: they are not needed afterwards
    device_crossentropy_backward(dev, acts->probs, acts->probs, acts->dev_targets, dloss, N, V);
    device_matmul_backward(dev, s->dln, gpt->g.wte, NULL, acts->probs, acts->lnf, gpt->w.wte, N, C,
                           V);
    device_layernorm_backward(dev, s->dresid, gpt->g.lnfw, gpt->g.lnfb, s->dln,
                              acts_stage_output(gpt, acts), gpt->w.lnfw, acts->lnf_mean,
                              acts->lnf_rstd, N, C);
}

int gpt_layer_backward(GPT *gpt, Activations *acts, Scratch *s, int layer)
{
    const Device *dev = gpt->dev;
    const LayerWeights *w = &gpt->w.layers[layer - gpt->layer_begin];
    LayerWeights *g = &gpt->g.layers[layer - gpt->layer_begin];
    const float *x = layer_input(gpt, acts, layer);
    LayerActs *a;
    if (layer_for_backward(gpt, acts, layer, &a))
        return -1;
    size_t N = (size_t)acts->B * acts->T;
    int C = gpt->config.dim;

    // MLP branch: out = res_attn + proj(gelu(fc(ln2(res_attn))))
    device_matmul_backward(dev, s->dfch, g->fcprojw, g->fcprojb, s->dresid, a->fch_gelu, w->fcprojw,
                           N, 4 * C, C);
    device_gelu_backward(dev, s->dfch, a->fch, s->dfch, N * 4 * C);
    device_matmul_backward(dev, s->dln, g->fcw, g->fcb, s->dfch, a->ln2, w->fcw, N, C, 4 * C);
    device_layernorm_backward(dev, s->dtmp, g->ln2w, g->ln2b, s->dln, a->res_attn, w->ln2w,
                              a->ln2_mean, a->ln2_rstd, N, C);
    device_accumulate(dev, s->dresid, s->dtmp, N * C);

    // attention branch: res_attn = x + proj(attention(qkv(ln1(x))))
    device_matmul_backward(dev, s->dln, g->attprojw, g->attprojb, s->dresid, a->atty, w->attprojw,
                           N, C, C);
    recompute_probabilities(gpt, a, acts->B, acts->T);
    if (attention_backward_sharded(gpt, a, s, acts->B, acts->T))
        return -1;
    device_matmul_backward(dev, s->dln, g->qkvw, g->qkvb, s->dqkv, a->ln1, w->qkvw, N, C, 3 * C);
    device_layernorm_backward(dev, s->dtmp, g->ln1w, g->ln1b, s->dln, x, w->ln1w, a->ln1_mean,
                              a->ln1_rstd, N, C);
    device_accumulate(dev, s->dresid, s->dtmp, N * C);
    return 0;
}

void gpt_embed_backward(GPT *gpt, Activations *acts, Scratch *s)
{
    // the tokens on the device are still this micro-batch's: embed_forward put them there
    device_encoder_backward(gpt->dev, gpt->g.wte, gpt->g.wpe, s->dresid, acts->dev_tokens, acts->B,
                            acts->T, gpt->config.dim, gpt->sp.rank * acts->T);
}

int gpt_backward(GPT *gpt, Activations *acts, Scratch *s, float dloss)
{
    gpt_head_backward(gpt, acts, s, dloss);
    for (int l = gpt->layer_end - 1; l >= gpt->layer_begin; l--)
        if (gpt_layer_backward(gpt, acts, s, l))
            return -1;
    gpt_embed_backward(gpt, acts, s);
    return 0;
}
