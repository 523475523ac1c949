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
