/* The 1F1B pipeline schedule of one stage (contract in pipeline.h). */
#include "pipeline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TAG_ACTIVATION = 1, TAG_GRADIENT = 2 };

static size_t activation_floats(const Pipeline *p)
{
    return (size_t)p->sets[0].B * p->sets[0].T * p->gpt->config.dim;
}

int pipeline_init(Pipeline *p, GPT *gpt, Comm *pp, int micro_batch, int seq_len,
                  int max_micro_batches)
{
    memset(p, 0, sizeof(*p));
    p->gpt = gpt;
    p->pp = pp;
    p->stage = comm_rank(pp);
    p->stages = comm_size(pp);
    p->set_count = p->stages - p->stage;
    if (p->set_count > max_micro_batches)
        p->set_count = max_micro_batches;
    p->sets = calloc((size_t)p->set_count, sizeof(Activations));
    p->pending_act = calloc((size_t)p->set_count, sizeof(CommRequest *));
    if (!p->sets || !p->pending_act)
        return -1;
    for (int i = 0; i < p->set_count; i++)
        if (acts_init(&p->sets[i], gpt, micro_batch, seq_len))
            return -1;
    p->send_grad =
        device_alloc(gpt->dev, (size_t)micro_batch * seq_len * gpt->config.dim * sizeof(float));
    if (!p->send_grad || scratch_init(&p->scratch, gpt, micro_batch, seq_len))
        return -1;
    return 0;
}

void pipeline_free(Pipeline *p)
{
    for (int i = 0; p->sets && i < p->set_count; i++)
        acts_free(&p->sets[i]);
    free(p->sets);
    free(p->pending_act);
    if (p->gpt && p->send_grad)
        device_free(p->gpt->dev, p->send_grad);
    scratch_free(&p->scratch);
    memset(p, 0, sizeof(*p));
}

size_t pipeline_activation_bytes(const Pipeline *p)
{
    size_t bytes = p->scratch.bytes + p->gpt->work_bytes + activation_floats(p) * sizeof(float);
    for (int i = 0; i < p->set_count; i++)
        bytes += p->sets[i].bytes;
    return bytes;
}

static int fail(Pipeline *p, const char *what)
{
    snprintf(p->error, sizeof(p->error), "pipeline stage %d: %s: %s", p->stage, what,
             comm_error(p->pp));
    return -1;
}

/* Communicators touch device buffers only once the kernels queued before
 * are done (comm.h): they read what those wrote, and they overwrite what
 * those may still read. A failed kernel is reported here too. */
static int stage_device_ready(Pipeline *p)
{
    char why[512];
    if (device_ready(p->gpt->dev, why, sizeof(why)) == 0)
        return 0;
    snprintf(p->error, sizeof(p->error), "pipeline stage %d: %s", p->stage, why);
    return -1;
}

static int layer_failed(Pipeline *p)
{
    snprintf(p->error, sizeof(p->error), "pipeline stage %d: %s", p->stage, p->gpt->sp.error);
    return -1;
}

static int wait_request(Pipeline *p, CommRequest **request, const char *what)
{
    if (!*request)
        return 0;
    int status = comm_wait(*request);
    *request = NULL;
    return status ? fail(p, what) : 0;
}

static bool is_last(const Pipeline *p)
{
    return p->stage == p->stages - 1;
}

// ----------------------------------------------------------------------------
// forward

static int forward(Pipeline *p, int index, LoadMicroBatch load, void *context, double weight,
                   double *loss)
{
    int slot = index % p->set_count;
    Activations *acts = &p->sets[slot];
    if (wait_request(p, &p->pending_act[slot], "sending activations"))
        return -1;
    load(context, index, acts);
    if (p->stage == 0)
        gpt_embed_forward(p->gpt, acts);
    else if (stage_device_ready(p)) /* this set's last backward may still read its input */
        return -1;
    else if (comm_recv(p->pp, acts->input, activation_floats(p), COMM_F32, p->stage - 1,
                       TAG_ACTIVATION))
        return fail(p, "receiving activations");
    for (int l = p->gpt->layer_begin; l < p->gpt->layer_end; l++)
        if (gpt_layer_forward(p->gpt, acts, l))
            return layer_failed(p);
    if (is_last(p)) {
        *loss += weight * gpt_head_forward(p->gpt, acts);
        return 0;
    }
    if (stage_device_ready(p))
        return -1;
    p->pending_act[slot] = comm_isend(p->pp, acts_stage_output(p->gpt, acts),
                                      activation_floats(p), COMM_F32, p->stage + 1,
                                      TAG_ACTIVATION);
    return p->pending_act[slot] ? 0 : fail(p, "sending activations");
}

// ----------------------------------------------------------------------------
// backward

/* Tells the gradient sync that everything from tensor `t`'s offset on is final. */
static int ready_from(Pipeline *p, GradSync *sync, const ParamTensor *t)
{
    if (!sync)
        return 0;
    if (gradsync_ready_from(sync, t->offset) == 0)
        return 0;
    snprintf(p->error, sizeof(p->error), "pipeline stage %d: %s", p->stage, sync->error);
    return -1;
}

static int backward_input_gradient(Pipeline *p, Activations *acts, float dloss, GradSync *sync)
{
    if (is_last(p)) {
        gpt_head_backward(p->gpt, acts, &p->scratch, dloss);
        return ready_from(p, sync, gpt_head_tensors(p->gpt));
    }
    if (stage_device_ready(p)) /* the last backward may still use dresid */
        return -1;
    if (comm_recv(p->pp, p->scratch.dresid, activation_floats(p), COMM_F32, p->stage + 1,
                  TAG_GRADIENT))
        return fail(p, "receiving gradients");
    return 0;
}

static int backward_output_gradient(Pipeline *p, Activations *acts, GradSync *sync)
{
    if (p->stage == 0) {
        gpt_embed_backward(p->gpt, acts, &p->scratch);
        return ready_from(p, sync, &p->gpt->tensors[0]); /* wte */
    }
    if (wait_request(p, &p->pending_grad, "sending gradients"))
        return -1;
    device_copy(p->gpt->dev, p->send_grad, p->scratch.dresid, activation_floats(p) * sizeof(float));
    if (stage_device_ready(p))
        return -1;
    p->pending_grad = comm_isend(p->pp, p->send_grad, activation_floats(p), COMM_F32,
                                 p->stage - 1, TAG_GRADIENT);
    if (!p->pending_grad)
        return fail(p, "sending gradients");
    return ready_from(p, sync, &p->gpt->tensors[0]);
}

/* `sync` is non-NULL only for the step's last micro-batch. */
static int backward(Pipeline *p, int index, float dloss, GradSync *sync)
{
    Activations *acts = &p->sets[index % p->set_count];
    if (backward_input_gradient(p, acts, dloss, sync))
        return -1;
    for (int l = p->gpt->layer_end - 1; l >= p->gpt->layer_begin; l--) {
        if (gpt_layer_backward(p->gpt, acts, &p->scratch, l))
            return layer_failed(p);
        if (ready_from(p, sync, gpt_layer_tensors(p->gpt, l)))
            return -1;
    }
    if (backward_output_gradient(p, acts, sync))
        return -1;
    if (index == 0 && p->after_first_backward)
        p->after_first_backward(p->hook_context);
    p->live--;
    return 0;
}

// ----------------------------------------------------------------------------
// schedules

static int finish_sends(Pipeline *p)
{
    for (int i = 0; i < p->set_count; i++)
        if (wait_request(p, &p->pending_act[i], "sending activations"))
            return -1;
    return wait_request(p, &p->pending_grad, "sending gradients");
}

static int forward_counted(Pipeline *p, int index, LoadMicroBatch load, void *context,
                           double weight, double *loss)
{
    if (forward(p, index, load, context, weight, loss))
        return -1;
    if (++p->live > p->live_max)
        p->live_max = p->live;
    return 0;
}

int pipeline_train_step(Pipeline *p, int count, LoadMicroBatch load, void *context,
                        float dloss, double loss_weight, GradSync *sync, double *loss)
{
    int warmup = p->stages - p->stage - 1;
    if (warmup > count)
        warmup = count;
    p->live = p->live_max = 0;
    for (int k = 0; k < warmup; k++)
        if (forward_counted(p, k, load, context, loss_weight, loss))
            return -1;
    for (int k = 0; k < count - warmup; k++) {
        if (forward_counted(p, warmup + k, load, context, loss_weight, loss) ||
            backward(p, k, dloss, k == count - 1 ? sync : NULL))
            return -1;
    }
    for (int k = count - warmup; k < count; k++)
        if (backward(p, k, dloss, k == count - 1 ? sync : NULL))
            return -1;
    return finish_sends(p);
}

int pipeline_eval(Pipeline *p, int count, LoadMicroBatch load, void *context, double weight,
                  double *loss)
{
    for (int k = 0; k < count; k++) {
        if (forward(p, k, load, context, weight, loss) ||
            wait_request(p, &p->pending_act[k % p->set_count], "sending activations"))
            return -1;
    }
    return 0;
}
