/* Tensors on the heap for the checkpoint tests (test_checkpoint.c, ckpt_driver.c): what a
 * training run's CkptTensor points at, without the model; and the stateful parts' values a
 * run saves with them (also for tests/fuzz/ckpt_seed.c). */
#ifndef PHALANX_TESTS_CKPT_TENSORS_H
#define PHALANX_TESTS_CKPT_TENSORS_H

#include "checkpoint.h"

#include <stdint.h>

/* Sets *t to the tensor `name` of rows x cols (cols 0: 1-D, [rows]) with param, m and v
 * zeroed on the heap, this rank's piece `index` of its `count` replicas (0 of 1: whole). */
void test_tensor_make(CkptTensor *t, const char *name, int64_t rows, int64_t cols, int index,
                      int count);

/* Frees what test_tensor_make allocated. */
void test_tensor_free(CkptTensor *t);

/* The values of a run's stateful parts (runtime/stateful.c). */
typedef struct {
    const char *optimizer;
    double lr, beta1, beta2, eps, weight_decay, clip;
    int decay_all;
    const char *schedule;
    int64_t warmup_steps, total_steps, train_samples;
    double min_lr_ratio, decay_fraction;
    int global_batch, micro_batch;
} TestParts;

/* Puts p into s as runtime/stateful.c saves a run's parts (the same keys, types and order,
 * so that the file is a run's), all but the value of key `skip` (NULL: all). 0, or -1. */
int test_parts_put(CkptRunState *s, const TestParts *p, const char *skip);

#endif
