/* Tensors on the heap for the checkpoint tests (test_checkpoint.c, ckpt_driver.c): what a
 * training run's CkptTensor points at, without the model. */
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

#endif
