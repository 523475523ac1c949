/* Unit tests of the keyed generator (runtime/rng.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>

#include "rng.h"

/* Known-answer vectors of Philox4x32-10 published with Random123 (kat_vectors). */
static void philox_known_answers(void **state)
{
    (void)state;
    static const struct {
        uint32_t counter[4];
        uint64_t key;
        uint32_t expected[4];
    } cases[] = {
        {{0, 0, 0, 0}, 0, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         0xffffffffffffffffull,
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         ((uint64_t)0x299f31d0 << 32) | 0xa4093822,
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint32_t out[4];
        rng_philox(cases[i].key, cases[i].counter, out);
        for (int w = 0; w < 4; w++)
            assert_int_equal(out[w], cases[i].expected[w]);
    }
}

static void draws_are_keyed_not_streamed(void **state)
{
    (void)state;
    uint32_t stream = rng_name_stream("h.0.attn.qkv.weight");
    double first = rng_normal(42, RNG_INIT, stream, 1000);
    // drawing other numbers in between changes nothing
    for (uint64_t i = 0; i < 100; i++)
        (void)rng_normal(42, RNG_INIT, stream, i);
    assert_true(rng_normal(42, RNG_INIT, stream, 1000) == first);
    assert_true(rng_normal(43, RNG_INIT, stream, 1000) != first);
    assert_true(rng_normal(42, RNG_SHUFFLE, stream, 1000) != first);
    assert_true(rng_normal(42, RNG_INIT, rng_name_stream("h.1.attn.qkv.weight"), 1000) != first);
}

static void normal_has_unit_moments(void **state)
{
    (void)state;
    const int n = 200000;
    double sum = 0, sumsq = 0;
    for (int i = 0; i < n; i++) {
        double x = rng_normal(7, RNG_INIT, 1, (uint64_t)i);
        sum += x;
        sumsq += x * x;
    }
    double mean = sum / n, var = sumsq / n - mean * mean;
    // standard errors: 1/sqrt(n) = 0.0022 for the mean, sqrt(2/n) = 0.0032 for the variance
    assert_true(fabs(mean) < 0.01);
    assert_true(fabs(var - 1.0) < 0.015);
}

static void uniform_is_open_interval(void **state)
{
    (void)state;
    for (uint64_t i = 0; i < 100000; i++) {
        double u = rng_uniform(3, RNG_SHUFFLE, 9, i);
        assert_true(u > 0.0 && u < 1.0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(philox_known_answers),
        cmocka_unit_test(draws_are_keyed_not_streamed),
        cmocka_unit_test(normal_has_unit_moments),
        cmocka_unit_test(uniform_is_open_interval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
