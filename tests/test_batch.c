/* Unit tests of the adaptive batch controller (optim/batch.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "rng.h"

enum { DIM = 16, POPULATION = 20000, SMALL = 4, BIG = 64, OBSERVATIONS = 6000 };

/* Least squares with Gaussian noise: loss_i = (x_i . w - y_i)^2 / 2, so the
 * per-example gradient is g_i = x_i (x_i . w - y_i). At fixed w the true mean
 * gradient G and covariance trace tr(Sigma) are computable over the whole
 * population, which gives the true B_simple = tr(Sigma) / |G|^2. */
typedef struct {
    double x[POPULATION][DIM], residual[POPULATION];
} Problem;

static void gradient(const Problem *p, int i, double *g)
{
    for (int d = 0; d < DIM; d++)
        g[d] = p->x[i][d] * p->residual[i];
}

static void make_problem(Problem *p)
{
    for (int i = 0; i < POPULATION; i++) {
        double prediction_error = 0.0;
        for (int d = 0; d < DIM; d++) {
            p->x[i][d] = rng_normal(1, RNG_INIT, 1, (uint64_t)i * DIM + d);
            prediction_error += p->x[i][d] * 0.15; /* w - w* = 0.15 in every coordinate */
        }
        p->residual[i] = prediction_error + rng_normal(1, RNG_INIT, 2, (uint64_t)i);
    }
}

static double true_noise_scale(const Problem *p)
{
    double mean[DIM] = {0}, g[DIM], trace = 0.0, signal = 0.0;
    for (int i = 0; i < POPULATION; i++) {
        gradient(p, i, g);
        for (int d = 0; d < DIM; d++)
            mean[d] += g[d] / POPULATION;
    }
    for (int i = 0; i < POPULATION; i++) {
        gradient(p, i, g);
        for (int d = 0; d < DIM; d++)
            trace += (g[d] - mean[d]) * (g[d] - mean[d]) / POPULATION;
    }
    for (int d = 0; d < DIM; d++)
        signal += mean[d] * mean[d];
    return trace / signal;
}

/* |mean gradient of `count` samples drawn at random|^2; the first `count`
 * draws of observation `obs` (so the small batch is inside the big one). */
static double batch_sqnorm(const Problem *p, int obs, int count)
{
    double mean[DIM] = {0}, g[DIM], norm = 0.0;
    for (int k = 0; k < count; k++) {
        int i = (int)(rng_bits(9, RNG_SHUFFLE, (uint32_t)obs, (uint64_t)k) % POPULATION);
        gradient(p, i, g);
        for (int d = 0; d < DIM; d++)
            mean[d] += g[d] / count;
    }
    for (int d = 0; d < DIM; d++)
        norm += mean[d] * mean[d];
    return norm;
}

static void estimate_within_ten_percent_of_true_noise_scale(void **state)
{
    (void)state;
    Problem *p = malloc(sizeof(Problem));
    make_problem(p);
    double truth = true_noise_scale(p);
    BatchController c;
    batch_init(&c, true, BIG, 1024, 8, 1.0, 0.999);
    double estimate = NAN;
    for (int obs = 0; obs < OBSERVATIONS; obs++)
        estimate = batch_observe(&c, batch_sqnorm(p, obs, SMALL), SMALL, batch_sqnorm(p, obs, BIG),
                                 BIG);
    print_message("true B_simple %.2f, estimate %.2f (%.1f%%)\n", truth, estimate,
                  100.0 * (estimate - truth) / truth);
    assert_true(truth > 5.0 && truth < 500.0); /* a problem where the test means something */
    assert_true(fabs(estimate - truth) / truth < 0.10);
    free(p);
}

static void grows_by_quanta_up_to_the_cap_and_never_shrinks(void **state)
{
    (void)state;
    BatchController c;
    batch_init(&c, true, 32, 96, 16, 0.5, 0.0);
    // decay 0: the estimate is the last observation; choose |G|^2 = 1, tr = 10:
    // small = 1 + 10/4, big = 1 + 10/32 -> B_simple = 10, needed = 10 / 0.25 = 40
    batch_observe(&c, 1.0 + 10.0 / 4, 4, 1.0 + 10.0 / 32, 32);
    assert_float_equal(batch_noise_scale(&c), 10.0, 1e-9);
    assert_true(batch_decide(&c));
    assert_int_equal(c.batch, 48); /* 40 rounded up to a multiple of 16 */
    batch_observe(&c, 1.0 + 100.0 / 4, 4, 1.0 + 100.0 / 48, 48); /* needs 400 */
    assert_true(batch_decide(&c));
    assert_int_equal(c.batch, 96); /* capped */
    batch_observe(&c, 1.0 + 1.0 / 4, 4, 1.0 + 1.0 / 96, 96); /* needs only 4 */
    assert_false(batch_decide(&c));
    assert_int_equal(c.batch, 96);
}

static void fixed_policy_never_grows(void **state)
{
    (void)state;
    BatchController c;
    batch_init(&c, false, 32, 96, 16, 0.5, 0.0);
    batch_observe(&c, 1.0 + 100.0 / 4, 4, 1.0 + 100.0 / 32, 32);
    assert_false(batch_decide(&c));
    assert_int_equal(c.batch, 32);
}

static void lr_scaling_rules(void **state)
{
    (void)state;
    assert_float_equal(lr_scale(LR_SCALING_SQRT, 128, 32), 2.0, 1e-12);
    assert_float_equal(lr_scale(LR_SCALING_LINEAR, 128, 32), 4.0, 1e-12);
    assert_float_equal(lr_scale(LR_SCALING_NONE, 128, 32), 1.0, 1e-12);
    LrScaling s;
    assert_true(lr_scaling_parse("sqrt", &s) && s == LR_SCALING_SQRT);
    assert_false(lr_scaling_parse("cubic", &s));
}

/* Issue 14: batch 0, -8, NaN or 1e12, or a cursor-like count of 2^62,
 * restored from a checkpoint, are refused with the field named. */
static void restored_state_is_range_checked(void **state)
{
    (void)state;
    char err[256];
    assert_int_equal(batch_state_check(16, 1.5, 0.5, 0.9, 3, err, sizeof(err)), 0);
    const double batches[] = {0, -8, NAN, 1e12, 2.5};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(batch_state_check(batches[i], 1.5, 0.5, 0.9, 3, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "'batch.batch'"));
    }
    assert_int_equal(batch_state_check(16, INFINITY, 0.5, 0.9, 3, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "'batch.ema_noise'"));
    assert_int_equal(batch_state_check(16, 1.5, 0.5, 1.5, 3, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "'batch.ema_weight'"));
    assert_int_equal(batch_state_check(16, 1.5, 0.5, 0.9, 0x1p62, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "'batch.updates'"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(estimate_within_ten_percent_of_true_noise_scale),
        cmocka_unit_test(grows_by_quanta_up_to_the_cap_and_never_shrinks),
        cmocka_unit_test(fixed_policy_never_grows),
        cmocka_unit_test(lr_scaling_rules),
        cmocka_unit_test(restored_state_is_range_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
