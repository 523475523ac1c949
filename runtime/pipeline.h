/*
 * pipeline: one training step of one pipeline stage under the 1F1B schedule
 * (PipeDream-Flush, as Megatron-LM runs it), and forward-only evaluation.
 *
 * Stage i of p, with m micro-batches: min(p - i - 1, m) warm-up forwards,
 * then alternately one forward and one backward, then the remaining
 * backwards. Activations go to stage i + 1 and their gradients come back on
 * the pp group; sends are non-blocking and overlap the next computation.
 * Stage i keeps at most p - i micro-batches of activations alive: it owns
 * that many activation sets and reuses them in turn.
 *
 * With p = 1 this is plain gradient accumulation over m micro-batches.
 * During the backward pass of the last micro-batch the gradient sync (if any)
 * is told which gradients are final, so their allreduce overlaps the rest.
 * Buffers are on the model's device; the pp communicator must take them
 * (MPI for cpu, NCCL for cuda).
 */
#ifndef PHALANX_PIPELINE_H
#define PHALANX_PIPELINE_H

#include "comm.h"
#include "gpt.h"
#include "gradsync.h"

/* Fills acts->tokens and acts->targets with micro-batch `index` of the step. */
typedef void (*LoadMicroBatch)(void *context, int index, Activations *acts);

typedef struct {
    GPT *gpt;
    Comm *pp; /* rank = stage index */
    int stage, stages;
    Activations *sets; /* min(stages - stage, max micro-batches) sets */
    int set_count;
    Scratch scratch;
    float *send_grad; /* [B,T,C]: the input gradient in flight to the previous stage */
    CommRequest **pending_act; /* per set: its output's send to the next stage */
    CommRequest *pending_grad;
    int live, live_max; /* activation sets in use now / at most during the step */
    /* called once per step, right after the first micro-batch's backward pass,
     * when the gradients hold that micro-batch alone (NULL: not called) */
    void (*after_first_backward)(void *context);
    void *hook_context;
    char error[768];
} Pipeline;

int pipeline_init(Pipeline *p, GPT *gpt, Comm *pp, int micro_batch, int seq_len,
                  int max_micro_batches);
void pipeline_free(Pipeline *p);
/* Bytes of activations, their gradients, the recomputation workspace and
 * transfer buffers this stage holds. */
size_t pipeline_activation_bytes(const Pipeline *p);

/* One step over `count` micro-batches; the loss of each micro-batch (mean over
 * its tokens, last stage only) times `loss_weight` is added to *loss.
 * Returns 0 or -1 (p->error). */
int pipeline_train_step(Pipeline *p, int count, LoadMicroBatch load, void *context,
                        float dloss, double loss_weight, GradSync *sync, double *loss);

/* Forward only, for validation: adds weight * mean loss of each micro-batch. */
int pipeline_eval(Pipeline *p, int count, LoadMicroBatch load, void *context, double weight,
                  double *loss);

#endif
