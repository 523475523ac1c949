/* The CPU kernels' own exponential (runtime/kernels.c: exp_small, not libm)
 * at the edges the model reaches: GELU for large, infinite and NaN inputs
 * against a double-precision reference, the same bits whether an element is
 * computed in a vector lane or alone, and cross-entropy over logits of -inf
 * (a padded vocabulary) or NaN. And a matmul as wide as a vocabulary (its
 * weight gradient goes in wider blocks) against double precision, with the
 * same bits at any thread count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define COUNT 1000

/* GPT-2's tanh-approximated GELU in double. */
static double gelu_reference(double x)
{
    return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

/* Inputs from -30 to 30 and a few far out. */
static void gelu_inputs(float *x)
{
    for (int i = 0; i < COUNT; i++)
        x[i] = -30.0f + 60.0f * (float)i / (COUNT - 1);
    x[0] = -1e4f;
    x[1] = 1e4f;
    x[2] = -INFINITY;
    x[3] = 0.0f;
}

static void test_gelu_matches_double_precision(void **state)
{
    (void)state;
    float x[COUNT], y[COUNT], dy[COUNT], ones[COUNT];
    gelu_inputs(x);
    x[2] = 1e-3f;
    for (int i = 0; i < COUNT; i++)
        ones[i] = 1.0f;
    gelu_forward(y, x, COUNT);
    gelu_backward(dy, x, ones, COUNT);
    for (int i = 0; i < COUNT; i++) {
        double xd = x[i], h = 1e-3 * fmax(1.0, fabs(xd));
        double slope = (gelu_reference(xd + h) - gelu_reference(xd - h)) / (2 * h);
        assert_true(fabs(y[i] - gelu_reference(xd)) <= 1e-6 * fmax(1.0, fabs(xd)));
        assert_true(fabs(dy[i] - slope) <= 1e-4);
    }
}

/* Each element alone (the scalar code) gives the bits that the whole array
 * (vector lanes, split over threads) gives. */
static void test_gelu_bits_do_not_depend_on_the_split(void **state)
{
    (void)state;
    float x[COUNT], whole[COUNT], alone[COUNT], dwhole[COUNT], dalone[COUNT], dout[COUNT];
    gelu_inputs(x);
    for (int i = 0; i < COUNT; i++)
        dout[i] = 1.0f + (float)i / COUNT;
    kernels_set_threads(2);
    gelu_forward(whole, x, COUNT);
    gelu_backward(dwhole, x, dout, COUNT);
    for (int i = 0; i < COUNT; i++) {
        gelu_forward(&alone[i], &x[i], 1);
        gelu_backward(&dalone[i], &x[i], &dout[i], 1);
    }
    assert_memory_equal(whole, alone, sizeof(whole));
    assert_memory_equal(dwhole, dalone, sizeof(dwhole));
}

static void test_gelu_of_nan_is_nan(void **state)
{
    (void)state;
    float x[9], y[9], dy[9], ones[9];
    for (int i = 0; i < 9; i++) {
        x[i] = i == 4 ? NAN : 1.0f;
        ones[i] = 1.0f;
    }
    gelu_forward(y, x, 9);
    gelu_backward(dy, x, ones, 9);
    assert_true(isnan(y[4]) && isnan(dy[4]));
    assert_true(isfinite(y[3]) && isfinite(dy[3]));
}

#define V 300

/* Logits of -inf get a probability of exactly 0 (no gradient to a padded
 * vocabulary's rows); the rest is softmax's, within float rounding. */
static void test_crossentropy_with_minus_infinity_logits(void **state)
{
    (void)state;
    float logits[V], probs[V], loss;
    double ref[V], sum = 0.0;
    for (int i = 0; i < V; i++)
        logits[i] = i < 256 ? (float)((i * 37) % 101) / 5.0f - 10.0f : -INFINITY;
    logits[7] = -95.0f; // below exp's normal range: 0 or about exp(-95), either is fine
    int target = 3;
    for (int i = 0; i < V; i++)
        sum += ref[i] = exp((double)logits[i]);
    double total = crossentropy_forward(probs, &loss, logits, &target, 1, V);
    for (int i = 0; i < V; i++) {
        if (i >= 256)
            assert_true(probs[i] == 0.0f);
        // relative: exp's own 1e-7, and logit - max rounded in float (|x| * 6e-8)
        assert_true(fabs(probs[i] - ref[i] / sum) <= 4e-6 * (ref[i] / sum) + 1e-30);
    }
    assert_true(fabs(total - (log(sum) - logits[target])) <= 1e-5);
}

static void test_crossentropy_of_a_nan_logit_is_nan(void **state)
{
    (void)state;
    float logits[V], probs[V], loss;
    for (int i = 0; i < V; i++)
        logits[i] = (float)(i % 13);
    logits[100] = NAN;
    int target = 3;
    assert_true(isnan(crossentropy_forward(probs, &loss, logits, &target, 1, V)));
}

/* Wider than kernels.c's WIDE_OUTPUT (8192), not a multiple of any block. */
#define WIDE_OC 10007
#define WIDE_N 24
#define WIDE_IC 16

typedef struct {
    float *dout, *inp, *weight, *dinp, *dweight, *dbias;
} WideProducts;

static float wide_value(size_t i, int salt)
{
    return (float)(((i + 1) * (size_t)(7919 + salt)) % 1009) / 1009.0f - 0.5f;
}

/* Inputs as above; dweight and dbias start non-zero (the kernel adds). */
static WideProducts wide_backward(int threads)
{
    size_t out = (size_t)WIDE_N * WIDE_OC, w = (size_t)WIDE_OC * WIDE_IC;
    WideProducts p = {malloc(out * sizeof(float)), malloc(WIDE_N * WIDE_IC * sizeof(float)),
                      malloc(w * sizeof(float)), malloc(WIDE_N * WIDE_IC * sizeof(float)),
                      malloc(w * sizeof(float)), malloc(WIDE_OC * sizeof(float))};
    assert_non_null(p.dout && p.inp && p.weight && p.dinp && p.dweight && p.dbias);
    for (size_t i = 0; i < out; i++)
        p.dout[i] = wide_value(i, 1);
    for (size_t i = 0; i < (size_t)WIDE_N * WIDE_IC; i++)
        p.inp[i] = wide_value(i, 2);
    for (size_t i = 0; i < w; i++) {
        p.weight[i] = wide_value(i, 3);
        p.dweight[i] = 1.0f;
    }
    for (size_t i = 0; i < WIDE_OC; i++)
        p.dbias[i] = 2.0f;
    kernels_set_threads(threads);
    matmul_backward(p.dinp, p.dweight, p.dbias, p.dout, p.inp, p.weight, WIDE_N, WIDE_IC,
                    WIDE_OC);
    return p;
}

static void wide_free(WideProducts *p)
{
    free(p->dout);
    free(p->inp);
    free(p->weight);
    free(p->dinp);
    free(p->dweight);
    free(p->dbias);
}

static void test_wide_matmul_backward_matches_double_at_any_thread_count(void **state)
{
    (void)state;
    WideProducts one = wide_backward(1), three = wide_backward(3);
    size_t w = (size_t)WIDE_OC * WIDE_IC;
    assert_memory_equal(one.dweight, three.dweight, w * sizeof(float));
    assert_memory_equal(one.dinp, three.dinp, WIDE_N * WIDE_IC * sizeof(float));
    assert_memory_equal(one.dbias, three.dbias, WIDE_OC * sizeof(float));
    for (size_t o = 0; o < WIDE_OC; o++) {
        double bias = 2.0;
        for (size_t n = 0; n < WIDE_N; n++)
            bias += one.dout[n * WIDE_OC + o];
        assert_true(fabs(one.dbias[o] - bias) <= 1e-5);
        for (size_t i = 0; i < WIDE_IC; i++) {
            double sum = 1.0;
            for (size_t n = 0; n < WIDE_N; n++)
                sum += (double)one.dout[n * WIDE_OC + o] * one.inp[n * WIDE_IC + i];
            assert_true(fabs(one.dweight[o * WIDE_IC + i] - sum) <= 1e-5);
        }
    }
    for (size_t n = 0; n < WIDE_N; n++)
        for (size_t i = 0; i < WIDE_IC; i++) {
            double sum = 0.0;
            for (size_t o = 0; o < WIDE_OC; o++)
                sum += (double)one.dout[n * WIDE_OC + o] * one.weight[o * WIDE_IC + i];
            assert_true(fabs(one.dinp[n * WIDE_IC + i] - sum) <= 1e-4);
        }
    wide_free(&one);
    wide_free(&three);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gelu_matches_double_precision),
        cmocka_unit_test(test_gelu_bits_do_not_depend_on_the_split),
        cmocka_unit_test(test_gelu_of_nan_is_nan),
        cmocka_unit_test(test_crossentropy_with_minus_infinity_logits),
        cmocka_unit_test(test_crossentropy_of_a_nan_logit_is_nan),
        cmocka_unit_test(test_wide_matmul_backward_matches_double_at_any_thread_count),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
