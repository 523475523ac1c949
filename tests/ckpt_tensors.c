#include "ckpt_tensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void test_tensor_make(CkptTensor *t, const char *name, int64_t rows, int64_t cols, int index,
                      int count)
{
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->ndim = cols ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
    t->param = calloc(n, sizeof(float));
    t->m = calloc(n, sizeof(float));
    t->v = calloc(n, sizeof(float));
    t->replica_index = index;
    t->replica_count = count;
}

void test_tensor_free(CkptTensor *t)
{
    free(t->param);
    free(t->m);
    free(t->v);
}

/* One value unless its key is `skip`. */
#define PUT(kind, key, value) (skip && strcmp(key, skip) == 0 ? 0 : kind(s, key, value))

int test_parts_put(CkptRunState *s, const TestParts *p, const char *skip)
{
    return PUT(ckpt_state_put_str, "optimizer", p->optimizer) |
           PUT(ckpt_state_put_f64, "lr", p->lr) | PUT(ckpt_state_put_f64, "beta1", p->beta1) |
           PUT(ckpt_state_put_f64, "beta2", p->beta2) | PUT(ckpt_state_put_f64, "eps", p->eps) |
           PUT(ckpt_state_put_f64, "weight_decay", p->weight_decay) |
           PUT(ckpt_state_put_f64, "clip", p->clip) |
           PUT(ckpt_state_put_int, "decay_all", p->decay_all) |
           PUT(ckpt_state_put_str, "schedule", p->schedule) |
           PUT(ckpt_state_put_i64, "warmup_steps", p->warmup_steps) |
           PUT(ckpt_state_put_i64, "total_steps", p->total_steps) |
           PUT(ckpt_state_put_i64, "train_samples", p->train_samples) |
           PUT(ckpt_state_put_f64, "min_lr_ratio", p->min_lr_ratio) |
           PUT(ckpt_state_put_f64, "decay_fraction", p->decay_fraction) |
           PUT(ckpt_state_put_int, "global_batch", p->global_batch) |
           PUT(ckpt_state_put_int, "micro_batch", p->micro_batch);
}
