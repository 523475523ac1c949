/* The run's stateful parts and their checkpointed values (contract in
 * stateful.h). */
#include "stateful.h"
#include "trainer.h"
#include "util.h"

#include <limits.h>
#include <string.h>

// ----------------------------------------------------------------------------
// optimizer: its kind (so the file reads without Phalanx: "lamb"/"adamw")
// and hyper-parameters

static int optimizer_save(const void *self, CkptRunState *s)
{
    const TrainOptions *o = &((const Trainer *)self)->opt;
    return ckpt_state_put_str(s, "optimizer", optim_kind_name(o->optim.kind)) |
           ckpt_state_put_f64(s, "lr", o->lr) | ckpt_state_put_f64(s, "beta1", o->optim.beta1) |
           ckpt_state_put_f64(s, "beta2", o->optim.beta2) |
           ckpt_state_put_f64(s, "eps", o->optim.eps) |
           ckpt_state_put_f64(s, "weight_decay", o->optim.weight_decay) |
           ckpt_state_put_f64(s, "clip", o->clip) |
           ckpt_state_put_int(s, "decay_all", o->optim.decay_all);
}

static int optimizer_check(const CkptRunState *s, char *err, size_t err_len)
{
    return ckpt_state_need_str(s, "optimizer", err, err_len) ||
                   ckpt_state_need_f64(s, "lr", 0, 1e6, err, err_len) ||
                   ckpt_state_need_f64(s, "beta1", 0, 1, err, err_len) ||
                   ckpt_state_need_f64(s, "beta2", 0, 1, err, err_len) ||
                   ckpt_state_need_f64(s, "eps", 0, 1, err, err_len) ||
                   ckpt_state_need_f64(s, "weight_decay", 0, 1e6, err, err_len) ||
                   ckpt_state_need_f64(s, "clip", 0, 1e30, err, err_len) ||
                   ckpt_state_need_int(s, "decay_all", 0, 1, err, err_len)
               ? -1
               : 0;
}

/* The moments are the optimizer's: another optimizer cannot continue them.
 * The hyper-parameters are the command line's. */
static int optimizer_restore(void *self, const CkptRunState *s, char *err, size_t err_len)
{
    const char *kind = optim_kind_name(((const Trainer *)self)->opt.optim.kind), *saved = "";
    ckpt_state_get_str(s, "optimizer", &saved);
    if (strcmp(saved, kind) == 0)
        return 0;
    return util_fail(err, err_len, "holds %s moments, this run uses --optim %s; use --optim %s",
                     saved, kind, saved);
}

// ----------------------------------------------------------------------------
// learning-rate schedule: saved for the record; a resumed run follows its
// own command line (it may lengthen the run)

static int schedule_save(const void *self, CkptRunState *s)
{
    const TrainOptions *o = &((const Trainer *)self)->opt;
    return ckpt_state_put_str(s, "schedule", schedule_kind_name(o->schedule)) |
           ckpt_state_put_i64(s, "warmup_steps", o->warmup) |
           ckpt_state_put_i64(s, "total_steps", o->steps) |
           ckpt_state_put_i64(s, "train_samples", o->train_samples) |
           ckpt_state_put_f64(s, "min_lr_ratio", o->min_lr_ratio) |
           ckpt_state_put_f64(s, "decay_fraction", o->decay_fraction);
}

static int schedule_check(const CkptRunState *s, char *err, size_t err_len)
{
    return ckpt_state_need_str(s, "schedule", err, err_len) ||
                   ckpt_state_need_i64(s, "warmup_steps", 0, CKPT_COUNT_MAX, err, err_len) ||
                   ckpt_state_need_i64(s, "total_steps", 0, CKPT_COUNT_MAX, err, err_len) ||
                   ckpt_state_need_i64(s, "train_samples", 0, CKPT_COUNT_MAX, err, err_len) ||
                   ckpt_state_need_f64(s, "min_lr_ratio", 0, 1, err, err_len) ||
                   ckpt_state_need_f64(s, "decay_fraction", 0, 1, err, err_len)
               ? -1
               : 0;
}

static int schedule_restore(void *self, const CkptRunState *s, char *err, size_t err_len)
{
    (void)self, (void)s, (void)err, (void)err_len;
    return 0;
}

// ----------------------------------------------------------------------------
// batch controller: the global batch of the coming steps and the micro-batch
// as values; the controller's estimates as run/extra pairs

static int batch_save(const void *self, CkptRunState *s)
{
    const Trainer *t = self;
    const BatchController *b = &t->batch;
    return ckpt_state_put_int(s, "global_batch", b->batch) |
           ckpt_state_put_int(s, "micro_batch", t->opt.micro_batch) |
           ckpt_state_set(s, "batch.adaptive", b->adaptive) |
           ckpt_state_set(s, "batch.batch", b->batch) |
           ckpt_state_set(s, "batch.ema_noise", b->ema_noise) |
           ckpt_state_set(s, "batch.ema_signal", b->ema_signal) |
           ckpt_state_set(s, "batch.ema_weight", b->ema_weight) |
           ckpt_state_set(s, "batch.updates", (double)b->updates);
}

/* A checkpoint whose controller state is out of range is refused, and
 * resume falls back past it. */
static int batch_check(const CkptRunState *s, char *err, size_t err_len)
{
    int32_t global_batch = 0;
    if (ckpt_state_need_int(s, "global_batch", 1, INT_MAX, err, err_len) ||
        ckpt_state_need_int(s, "micro_batch", 1, INT_MAX, err, err_len))
        return -1;
    ckpt_state_get_int(s, "global_batch", &global_batch);
    if (ckpt_state_get(s, "batch.adaptive", 0) == 0)
        return 0;
    return batch_state_check(ckpt_state_get(s, "batch.batch", global_batch),
                             ckpt_state_get(s, "batch.ema_noise", 0),
                             ckpt_state_get(s, "batch.ema_signal", 0),
                             ckpt_state_get(s, "batch.ema_weight", 0),
                             ckpt_state_get(s, "batch.updates", 0), err, err_len);
}

/* Values checked by batch_check when the checkpoint was read. */
static int batch_restore(void *self, const CkptRunState *s, char *err, size_t err_len)
{
    (void)err, (void)err_len;
    BatchController *b = &((Trainer *)self)->batch;
    if (!b->adaptive || ckpt_state_get(s, "batch.adaptive", 0) == 0)
        return 0; /* a fixed-batch run keeps the batch of its command line */
    b->batch = (int)ckpt_state_get(s, "batch.batch", b->batch);
    b->ema_noise = ckpt_state_get(s, "batch.ema_noise", 0);
    b->ema_signal = ckpt_state_get(s, "batch.ema_signal", 0);
    b->ema_weight = ckpt_state_get(s, "batch.ema_weight", 0);
    b->updates = (long)ckpt_state_get(s, "batch.updates", 0);
    return 0;
}

// ----------------------------------------------------------------------------
// all parts

static const Stateful PARTS[] = {
    {"optimizer", optimizer_save, optimizer_check, optimizer_restore},
    {"schedule", schedule_save, schedule_check, schedule_restore},
    {"batch controller", batch_save, batch_check, batch_restore},
};
#define PART_COUNT (sizeof(PARTS) / sizeof(PARTS[0]))

int stateful_save(const void *self, CkptRunState *state, char *err, size_t err_len)
{
    for (size_t i = 0; i < PART_COUNT; i++)
        if (PARTS[i].save(self, state) != 0)
            return util_fail(err, err_len, "the run state has no room for the %s's values",
                             PARTS[i].name);
    return 0;
}

int stateful_check(const CkptRunState *state, char *err, size_t err_len)
{
    for (size_t i = 0; i < PART_COUNT; i++)
        if (PARTS[i].check(state, err, err_len) != 0)
            return -1;
    return 0;
}

int stateful_restore(void *self, const CkptRunState *state, char *err, size_t err_len)
{
    for (size_t i = 0; i < PART_COUNT; i++)
        if (PARTS[i].restore(self, state, err, err_len) != 0)
            return -1;
    return 0;
}
