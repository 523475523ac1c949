/*
 * gpt: the GPT-2 model: configuration, parameters with logical names, and the
 * forward and backward passes of a contiguous range of layers.
 *
 * Contract
 * - A GPT holds the parameters of one pipeline stage: layers
 *   [layer_begin, layer_end), plus the embeddings when it is the first stage
 *   and the final LayerNorm and head when it is the last. The head is tied to
 *   the token embedding, so `wte` lives on both the first and the last stage.
 *   A single-stage model (gpt_init_full) holds everything.
 * - Parameters are one allocation (`params`), gradients another of the same
 *   layout (`grads`); `tensors` lists every logical tensor held, in storage
 *   order, with its name (`wte`, `h.3.attn.qkv.weight`, ...), logical shape
 *   and offset. Names and shapes never depend on the layout.
 * - gpt_init_params draws every element from the keyed generator (rng.h) with
 *   the stream of the tensor's name and the element's index in the logical
 *   tensor: the same seed gives the same weights on any stage or rank.
 * - Activations hold one micro-batch of B sequences of T tokens (T is the
 *   local length: seq_len, or seq_len / sp later). A pipeline keeps several.
 * - Backward passes accumulate into `grads` (gpt_zero_grad clears them), so
 *   the micro-batches of a step add up.
 * - Every buffer (parameters, gradients, activations, scratch) lives on the
 *   model's device (device.h) and every kernel is queued there; only the
 *   token and target arrays the data loader fills are host memory, uploaded
 *   by the passes that read them. With a GPU the passes return before the
 *   GPU has finished; device_sync(gpt->dev) reports a failed kernel.
 */
#ifndef PHALANX_GPT_H
#define PHALANX_GPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "device.h"
#include "ulysses.h"

typedef struct {
    int vocab, layers, heads, dim, seq_len;
} GPTConfig;

/* Checks the shape rules (positive sizes, dim divisible by heads, vocab at
 * most 65536 for uint16 tokens). Returns 0, or -1 with a message. */
int gpt_config_check(const GPTConfig *config, char *err, size_t err_len);

/* Rows of the token embedding: GPT-2's vocabulary and others beyond byte
 * tokens (vocab > 256) are padded to a multiple of 128, as llm.c pads them;
 * byte vocabularies are not. Padded rows start at zero, get a logit of -inf
 * (so they never win the softmax and their gradient is exactly zero) and
 * stay zero. */
int gpt_padded_vocab(const GPTConfig *config);

typedef struct {
    char name[48];
    int ndim;
    int shape[2];
    size_t offset, numel;
    bool excluded; /* bias or LayerNorm: no weight decay, no layer adaptation */
} ParamTensor;

typedef struct {
    float *ln1w, *ln1b;         /* [C], [C] */
    float *qkvw, *qkvb;         /* [3C, C], [3C] */
    float *attprojw, *attprojb; /* [C, C], [C] */
    float *ln2w, *ln2b;         /* [C], [C] */
    float *fcw, *fcb;           /* [4C, C], [4C] */
    float *fcprojw, *fcprojb;   /* [C, 4C], [C] */
} LayerWeights;

typedef struct {
    float *wte, *wpe;   /* [Vp, C] (gpt_padded_vocab), [maxT, C] */
    float *lnfw, *lnfb; /* [C], [C] */
    LayerWeights *layers; /* index: layer - layer_begin */
} Weights;

typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd; /* [B,T,C], [B,T], [B,T] */
    float *qkv;                       /* [B,T,3C] */
    float *att;                       /* [B,NH/sp,T*sp,T*sp] softmax probabilities */
    float *atty;                      /* [B,T,C] attention output before projection */
    float *qkv_heads, *atty_heads;    /* sp > 1: [B,T*sp,3C/sp], [B,T*sp,C/sp] */
    float *res_attn;                  /* [B,T,C] input + attention branch */
    float *ln2, *ln2_mean, *ln2_rstd; /* [B,T,C], [B,T], [B,T] */
    float *fch, *fch_gelu;            /* [B,T,4C] */
    float *out;                       /* [B,T,C] layer output (residual stream) */
} LayerActs;

/*
 * Activation recomputation (Megatron-LM's): what each layer keeps per
 * micro-batch between its forward and its backward pass.
 * - none: every intermediate.
 * - attn: all but the attention probabilities ([B, NH, T, T], the largest
 *   when T is long); the backward pass recomputes them from the kept q, k, v
 *   into one shared workspace.
 * - full: only the layer's output (so every layer's input is kept); the
 *   backward pass reruns the layer's forward up to the MLP's activation (its
 *   all-to-alls included under sequence parallelism) into one shared
 *   workspace, where the probabilities share floats with the MLP's
 *   intermediates, so it recomputes them again as attn does once the MLP's
 *   backward is done: the workspace is less than one layer's intermediates.
 * The kernels are deterministic, so recomputed values are the same bits:
 * losses and gradients do not change.
 */
typedef enum { RECOMPUTE_NONE, RECOMPUTE_ATTN, RECOMPUTE_FULL } Recompute;

bool recompute_parse(const char *text, Recompute *out);
const char *recompute_name(Recompute recompute);

typedef struct {
    const Device *dev;
    GPTConfig config;
    int layer_begin, layer_end;
    bool has_embedding, has_head;
    ParamTensor *tensors;
    int tensor_count;
    size_t param_count;
    float *params, *grads;
    Weights w, g; /* named views into params and grads */
    SeqParallel sp; /* size 1 unless gpt_enable_sequence_parallel */
    Recompute recompute; /* RECOMPUTE_NONE unless gpt_enable_recompute */
    LayerActs work;      /* recomputation workspace, shared by every layer and set */
    float *work_memory;
    size_t work_bytes;
    float *vocab_mask; /* head with a padded vocabulary: [Vp] logit bias, 0 or -inf */
} GPT;

int gpt_init(GPT *gpt, const Device *dev, const GPTConfig *config, int layer_begin,
             int layer_end, bool has_embedding, bool has_head);
int gpt_init_full(GPT *gpt, const Device *dev, const GPTConfig *config);
void gpt_free(GPT *gpt);
/* Splits every sequence over the ranks of `sp` (Ulysses attention). Call
 * before acts_init and scratch_init: buffer sizes depend on it. */
int gpt_enable_sequence_parallel(GPT *gpt, Comm *sp, int B, int local_T);
/* Chooses what the layers keep for backward and allocates the shared
 * workspace for micro-batches of B x T. Call after sequence parallelism and
 * before acts_init: the activation sets point into the workspace. */
int gpt_enable_recompute(GPT *gpt, Recompute recompute, int B, int T);
/* Returns 0, or -1 (out of memory, or a device error). */
int gpt_init_params(GPT *gpt, uint64_t seed);
void gpt_zero_grad(GPT *gpt);
const ParamTensor *gpt_find_tensor(const GPT *gpt, const char *name);
/* The first of the tensors of `layer` (held by this stage; its 12 tensors
 * follow in storage order), and the first of the head's (lnf.weight, then
 * lnf.bias; has_head only): found by position, without a name. */
const ParamTensor *gpt_layer_tensors(const GPT *gpt, int layer);
const ParamTensor *gpt_head_tensors(const GPT *gpt);
/* Writes the tensor table as JSON: {"param_count": P, "tensors": [{"name",
 * "shape", "offset"}, ...]}, which names the floats of `params` or `grads`. */
void gpt_write_manifest(const GPT *gpt, FILE *out);

typedef struct {
    const Device *dev;
    int B, T;
    size_t bytes; /* of activation memory held */
    float *memory;
    int *tokens, *targets;            /* [B,T] host memory, filled by the loader */
    int *dev_tokens, *dev_targets;    /* their device copies (the same arrays on cpu) */
    float *input;                     /* [B,T,C] stage input: embeddings or received */
    LayerActs *layers;                /* index: layer - layer_begin */
    float *lnf, *lnf_mean, *lnf_rstd; /* head only */
    float *logits, *probs, *losses;   /* [B,T,Vp], [B,T,Vp], [B,T]; head only */
} Activations;

/* Backward scratch, shared by every layer and micro-batch of a model. */
typedef struct {
    const Device *dev;
    size_t bytes;
    float *memory;
    float *dresid; /* [B,T,C] gradient of the residual stream, updated in place */
    float *dtmp, *dln, *dfch, *dqkv, *datt;
    float *datty_heads, *dqkv_heads; /* sp > 1 */
} Scratch;

int acts_init(Activations *acts, const GPT *gpt, int B, int T);
void acts_free(Activations *acts);
int scratch_init(Scratch *scratch, const GPT *gpt, int B, int T);
void scratch_free(Scratch *scratch);

/* Stage pieces. Under sequence parallelism T is the local length and
 * positions start at sp.rank * T. Layer passes return 0, or -1 when the
 * sequence-parallel exchange failed (message in gpt->sp.error). */
void gpt_embed_forward(const GPT *gpt, Activations *acts);
int gpt_layer_forward(GPT *gpt, Activations *acts, int layer);
/* Returns the mean loss over the B*T tokens (targets must be set). */
double gpt_head_forward(const GPT *gpt, Activations *acts);
/* dloss: gradient of the objective with respect to each token's loss. */
void gpt_head_backward(GPT *gpt, Activations *acts, Scratch *scratch, float dloss);
int gpt_layer_backward(GPT *gpt, Activations *acts, Scratch *scratch, int layer);
void gpt_embed_backward(GPT *gpt, Activations *acts, Scratch *scratch);

/* Output of the stage's last layer (what a pipeline stage sends on). */
float *acts_stage_output(const GPT *gpt, Activations *acts);

/* Whole model on one stage: embeddings (tokens in acts->tokens), every layer,
 * head. Returns the mean loss (NAN if a layer failed). */
double gpt_forward(GPT *gpt, Activations *acts);
int gpt_backward(GPT *gpt, Activations *acts, Scratch *scratch, float dloss);

#endif
