/* The model's tensor table (runtime/gpt.h): the layer and head tensors found
 * by position, the weight views, and which tensors are excluded from weight
 * decay. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "gpt.h"

#include <stdio.h>
#include <string.h>

static const GPTConfig CONFIG = {.vocab = 300, .layers = 4, .heads = 2, .dim = 8, .seq_len = 6};

/* Each stage's layers and ends, as a pipeline of 1, 2 or 3 stages holds them. */
static const struct {
    int begin, end;
    bool embedding, head;
} STAGES[] = {{0, 4, true, true}, {0, 2, true, false}, {2, 4, false, true},
              {1, 3, false, false}};

static void check_stage(int s)
{
    GPT gpt;
    assert_int_equal(gpt_init(&gpt, device_cpu(), &CONFIG, STAGES[s].begin, STAGES[s].end,
                              STAGES[s].embedding, STAGES[s].head),
                     0);
    char name[48];
    for (int l = gpt.layer_begin; l < gpt.layer_end; l++) {
        const ParamTensor *first = gpt_layer_tensors(&gpt, l);
        snprintf(name, sizeof(name), "h.%d.ln1.weight", l);
        assert_string_equal(first->name, name);
        snprintf(name, sizeof(name), "h.%d.mlp.proj.bias", l);
        assert_string_equal(first[11].name, name);
        /* the named views point at the same tensors */
        const LayerWeights *w = &gpt.w.layers[l - gpt.layer_begin];
        assert_ptr_equal(w->ln1w, gpt.params + first[0].offset);
        assert_ptr_equal(w->qkvw, gpt.params + first[2].offset);
        assert_ptr_equal(w->fcprojb, gpt.params + first[11].offset);
    }
    if (STAGES[s].head)
        assert_string_equal(gpt_head_tensors(&gpt)->name, "lnf.weight");
    gpt_free(&gpt);
}

static void test_layer_and_head_tensors_by_position(void **state)
{
    (void)state;
    for (size_t s = 0; s < sizeof(STAGES) / sizeof(STAGES[0]); s++)
        check_stage((int)s);
}

/* Biases and LayerNorm parameters, and only they. */
static void test_excluded_tensors(void **state)
{
    (void)state;
    GPT gpt;
    assert_int_equal(gpt_init_full(&gpt, device_cpu(), &CONFIG), 0);
    assert_int_equal(gpt.tensor_count, 2 + 12 * CONFIG.layers + 2);
    for (int i = 0; i < gpt.tensor_count; i++) {
        const char *n = gpt.tensors[i].name;
        bool expected = strstr(n, ".bias") || strstr(n, "ln1.") || strstr(n, "ln2.") ||
                        strstr(n, "lnf.");
        assert_int_equal(gpt.tensors[i].excluded, expected);
    }
    gpt_free(&gpt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layer_and_head_tensors_by_position),
        cmocka_unit_test(test_excluded_tensors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
