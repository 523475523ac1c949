/* Unit tests of optim: schedules, clipping, name exclusion, parsing, and
 * single LAMB/AdamW steps small enough to work out by hand. The comparison
 * with PyTorch over many steps is tests/test_optim_torch.py. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "optim.h"

static void assert_close_at(double actual, double expected, double tolerance,
                            const char *file, int line)
{
    if (!(fabs(actual - expected) <= tolerance)) {
        print_error("%.9g != %.9g (tolerance %g)\n", actual, expected, tolerance);
        _fail(file, line);
    }
}
#define assert_close(actual, expected, tolerance) \
    assert_close_at((actual), (expected), (tolerance), __FILE__, __LINE__)

/* ---------------------------------------------------------------------- */
/* Schedules: lr_max 2, min 0.2, warm-up 10, then a span of 100 to 110.   */

static Schedule schedule_of(ScheduleKind kind)
{
    return (Schedule){.kind = kind, .lr_max = 2.0, .min_ratio = 0.1,
                      .warmup = 10.0, .total = 110.0, .decay_fraction = 0.2};
}

/* Warm-up is the same for every kind. */
static void test_schedule_warmup(void **state)
{
    (void)state;
    for (int k = SCHEDULE_COSINE; k <= SCHEDULE_WSD; k++) {
        Schedule s = schedule_of((ScheduleKind)k);
        assert_close(schedule_lr(&s, 0.0), 0.0, 1e-12);
        assert_close(schedule_lr(&s, 1.0), 0.2, 1e-12);
        assert_close(schedule_lr(&s, 5.0), 1.0, 1e-12);
        assert_close(schedule_lr(&s, 10.0), 2.0, 1e-12);
    }
}

static void test_schedule_cosine(void **state)
{
    (void)state;
    Schedule s = schedule_of(SCHEDULE_COSINE);
    /* f = 1/4: 0.2 + 1.8 * (1 + cos(pi/4)) / 2, cos(pi/4) = sqrt(2)/2. */
    assert_close(schedule_lr(&s, 35.0), 0.2 + 1.8 * (1.0 + sqrt(0.5)) / 2.0, 1e-12);
    assert_close(schedule_lr(&s, 60.0), 1.1, 1e-12); /* f = 1/2: halfway */
    assert_close(schedule_lr(&s, 110.0), 0.2, 1e-12);
    assert_close(schedule_lr(&s, 1000.0), 0.2, 1e-12);
}

static void test_schedule_linear(void **state)
{
    (void)state;
    Schedule s = schedule_of(SCHEDULE_LINEAR);
    assert_close(schedule_lr(&s, 35.0), 2.0 - 1.8 * 0.25, 1e-12);
    assert_close(schedule_lr(&s, 60.0), 1.1, 1e-12);
    assert_close(schedule_lr(&s, 110.0), 0.2, 1e-12);
    assert_close(schedule_lr(&s, 1000.0), 0.2, 1e-12);
}

static void test_schedule_constant(void **state)
{
    (void)state;
    Schedule s = schedule_of(SCHEDULE_CONSTANT);
    assert_close(schedule_lr(&s, 60.0), 2.0, 1e-12);
    assert_close(schedule_lr(&s, 110.0), 2.0, 1e-12);
    assert_close(schedule_lr(&s, 1000.0), 2.0, 1e-12);
}

/* decay_fraction 0.2: flat until f = 0.8 (progress 90), then linear. */
static void test_schedule_wsd(void **state)
{
    (void)state;
    Schedule s = schedule_of(SCHEDULE_WSD);
    assert_close(schedule_lr(&s, 60.0), 2.0, 1e-12);
    assert_close(schedule_lr(&s, 90.0), 2.0, 1e-12);
    assert_close(schedule_lr(&s, 100.0), 1.1, 1e-12); /* half of the decay */
    assert_close(schedule_lr(&s, 110.0), 0.2, 1e-12);
    assert_close(schedule_lr(&s, 1000.0), 0.2, 1e-12);
}

static void test_schedule_without_warmup(void **state)
{
    (void)state;
    Schedule s = schedule_of(SCHEDULE_LINEAR);
    s.warmup = 0.0;
    s.total = 100.0;
    assert_close(schedule_lr(&s, 0.0), 2.0, 1e-12);
    assert_close(schedule_lr(&s, 50.0), 1.1, 1e-12);
}

static void test_schedule_parse(void **state)
{
    (void)state;
    const char *names[] = {"cosine", "linear", "constant", "wsd"};
    for (int k = SCHEDULE_COSINE; k <= SCHEDULE_WSD; k++) {
        ScheduleKind kind = SCHEDULE_COSINE;
        assert_true(schedule_kind_parse(names[k], &kind));
        assert_int_equal(kind, k);
        assert_string_equal(schedule_kind_name(kind), names[k]);
    }
    ScheduleKind kind = SCHEDULE_WSD;
    assert_false(schedule_kind_parse("cos", &kind));
    assert_false(schedule_kind_parse("", &kind));
    assert_false(schedule_kind_parse("cosine ", &kind));
    assert_false(schedule_kind_parse(NULL, &kind));
    assert_int_equal(kind, SCHEDULE_WSD); /* untouched on failure */
}

/* ---------------------------------------------------------------------- */
/* Names, parsing, defaults                                                */

static void test_name_exclusion(void **state)
{
    (void)state;
    assert_true(optim_name_is_excluded("h.0.ln1.weight"));
    assert_true(optim_name_is_excluded("h.0.ln2.bias"));
    assert_true(optim_name_is_excluded("h.0.attn.qkv.bias"));
    assert_true(optim_name_is_excluded("lnf.weight"));
    assert_true(optim_name_is_excluded("lnf.bias"));
    assert_false(optim_name_is_excluded("wte"));
    assert_false(optim_name_is_excluded("wpe"));
    assert_false(optim_name_is_excluded("h.3.mlp.fc.weight"));
    assert_false(optim_name_is_excluded("h.3.attn.proj.weight"));
    /* "ln" must start a component; "bias" must be the whole last one. */
    assert_false(optim_name_is_excluded("h.3.kiln.weight"));
    assert_false(optim_name_is_excluded("h.3.linear.weight"));
    assert_false(optim_name_is_excluded("h.3.fc.biased"));
}

static void test_optim_parse(void **state)
{
    (void)state;
    OptimKind kind = OPTIM_ADAMW;
    assert_true(optim_kind_parse("lamb", &kind));
    assert_int_equal(kind, OPTIM_LAMB);
    assert_true(optim_kind_parse("adamw", &kind));
    assert_int_equal(kind, OPTIM_ADAMW);
    assert_string_equal(optim_kind_name(OPTIM_LAMB), "lamb");
    assert_string_equal(optim_kind_name(OPTIM_ADAMW), "adamw");
    assert_false(optim_kind_parse("adam", &kind));
    assert_false(optim_kind_parse("sgd", &kind));
    assert_false(optim_kind_parse("", &kind));
    assert_false(optim_kind_parse(NULL, &kind));
    assert_int_equal(kind, OPTIM_ADAMW); /* untouched on failure */
}

static void test_default_config(void **state)
{
    (void)state;
    OptimConfig c = optim_default_config(OPTIM_LAMB);
    assert_int_equal(c.kind, OPTIM_LAMB);
    assert_close(c.beta1, 0.9, 1e-7);
    assert_close(c.beta2, 0.999, 1e-7);
    assert_close(c.eps, 1e-6, 1e-12);
    assert_close(c.weight_decay, 0.01, 1e-9);
    assert_false(c.decay_all);
    assert_int_equal(optim_default_config(OPTIM_ADAMW).kind, OPTIM_ADAMW);
}

/* ---------------------------------------------------------------------- */
/* Clipping                                                                */

static void test_clip_scale(void **state)
{
    (void)state;
    assert_close(optim_clip_scale(2.0, 1.0f), 0.5, 1e-7);
    assert_close(optim_clip_scale(8.0, 2.0f), 0.25, 1e-7);
    assert_close(optim_clip_scale(1.0, 1.0f), 1.0, 0.0);
    assert_close(optim_clip_scale(0.5, 1.0f), 1.0, 0.0);
    assert_close(optim_clip_scale(0.0, 1.0f), 1.0, 0.0);
    assert_close(optim_clip_scale(100.0, 0.0f), 1.0, 0.0);  /* off */
    assert_close(optim_clip_scale(100.0, -1.0f), 1.0, 0.0); /* off */
}

/* Sizes cross the 4096-element blocks and the 256-block groups of the
 * implementation; the values make every partial sum exact. */
static void test_grad_sumsq(void **state)
{
    (void)state;
    float small[2] = {1.0f, 2.0f}, one[1] = {3.0f};
    size_t mid_n = 3 * 4096 + 5, big_n = 256 * 4096 + 4099;
    float *mid = malloc(mid_n * sizeof *mid), *big = malloc(big_n * sizeof *big);
    assert_non_null(mid);
    assert_non_null(big);
    for (size_t i = 0; i < mid_n; i++)
        mid[i] = 0.5f;
    for (size_t i = 0; i < big_n; i++)
        big[i] = -1.0f;
    OptimTensor t[4] = {
        {.name = "a", .grad = small, .numel = 2},
        {.name = "b", .grad = one, .numel = 1},
        {.name = "c", .grad = mid, .numel = mid_n},
        {.name = "d", .grad = big, .numel = big_n},
    };
    assert_close(optim_grad_sumsq(t, 2), 14.0, 0.0);
    assert_close(optim_grad_sumsq(t, 4), 14.0 + 0.25 * (double)mid_n + (double)big_n, 0.0);
    assert_close(optim_grad_sumsq(t, 0), 0.0, 0.0);
    free(mid);
    free(big);
}

/* ---------------------------------------------------------------------- */
/* Single steps. At step 1 from zero moments, m_hat = g and v_hat = g^2, so
 * the Adam direction is g / (|g| + eps) = sign(g) within 1e-6.            */

typedef struct {
    float w[2], g[2], m[2], v[2];
} Pair2;

static OptimTensor tensor_of(Pair2 *p, const char *name, bool exclude)
{
    return (OptimTensor){.name = name, .param = p->w, .grad = p->g, .m = p->m,
                         .v = p->v, .numel = 2, .exclude = exclude};
}

static void test_lamb_zero_weights_ratio_one(void **state)
{
    (void)state;
    OptimConfig cfg = optim_default_config(OPTIM_LAMB);
    Pair2 p = {.w = {0.0f, 0.0f}, .g = {1.0f, -1.0f}};
    OptimTensor t = tensor_of(&p, "h.0.mlp.fc.weight", false);
    optim_step(&cfg, &t, 1, 0.1f, 1, 1.0f);
    /* ||w|| = 0: ratio 1, so w = -lr * sign(g) (not 0, as ratio 0 would give). */
    assert_close(p.w[0], -0.1, 1e-6);
    assert_close(p.w[1], 0.1, 1e-6);
}

/* ||w|| = 5, u = (1, 1), so the step is lr * 5 * (1, 1) / sqrt(2). */
static void test_lamb_trust_ratio(void **state)
{
    (void)state;
    OptimConfig cfg = optim_default_config(OPTIM_LAMB);
    cfg.weight_decay = 0.0f;
    Pair2 p = {.w = {3.0f, 4.0f}, .g = {1.0f, 1.0f}};
    OptimTensor t = tensor_of(&p, "h.0.mlp.fc.weight", false);
    optim_step(&cfg, &t, 1, 0.1f, 1, 1.0f);
    assert_close(p.w[0], 3.0 - 0.5 / sqrt(2.0), 1e-5);
    assert_close(p.w[1], 4.0 - 0.5 / sqrt(2.0), 1e-5);
}

/* Excluded: no decay, no adaptation, so w -= lr * sign(g). */
static void test_lamb_excluded(void **state)
{
    (void)state;
    OptimConfig cfg = optim_default_config(OPTIM_LAMB);
    cfg.weight_decay = 0.5f;
    Pair2 p = {.w = {3.0f, 4.0f}, .g = {1.0f, 1.0f}};
    OptimTensor t = tensor_of(&p, "h.0.ln1.weight", true);
    optim_step(&cfg, &t, 1, 0.1f, 1, 1.0f);
    assert_close(p.w[0], 2.9, 1e-5);
    assert_close(p.w[1], 3.9, 1e-5);
}

/* decay_all: u = (1, 1) + 0.5 (3, 4) = (2.5, 3), ratio = 5 / sqrt(15.25). */
static void test_lamb_decay_all(void **state)
{
    (void)state;
    OptimConfig cfg = optim_default_config(OPTIM_LAMB);
    cfg.weight_decay = 0.5f;
    cfg.decay_all = true;
    Pair2 p = {.w = {3.0f, 4.0f}, .g = {1.0f, 1.0f}};
    OptimTensor t = tensor_of(&p, "h.0.ln1.weight", true);
    optim_step(&cfg, &t, 1, 0.1f, 1, 1.0f);
    double ratio = 5.0 / sqrt(15.25);
    assert_close(p.w[0], 3.0 - 0.1 * ratio * 2.5, 1e-5);
    assert_close(p.w[1], 4.0 - 0.1 * ratio * 3.0, 1e-5);
}

/* AdamW: w -= lr * (sign(g) + wd * w) = 1 - 0.1 * (1 + 0.5 * 1). */
static void test_adamw_step(void **state)
{
    (void)state;
    OptimConfig cfg = optim_default_config(OPTIM_ADAMW);
    cfg.weight_decay = 0.5f;
    Pair2 p = {.w = {1.0f, 1.0f}, .g = {2.0f, 2.0f}};
    Pair2 q = p;
    OptimTensor t[2] = {tensor_of(&p, "h.0.mlp.fc.weight", false),
                        tensor_of(&q, "h.0.mlp.fc.bias", true)};
    optim_step(&cfg, t, 2, 0.1f, 1, 1.0f);
    assert_close(p.w[0], 0.85, 1e-5);
    assert_close(q.w[0], 0.9, 1e-5); /* excluded: no decay */
}

/* With a constant gradient, bias correction at t = 2 gives m_hat = g again
 * (m = 0.19 g, 1 - 0.9^2 = 0.19), so the second step is the same size. */
static void test_bias_correction_step_two(void **state)
{
    (void)state;
    OptimConfig cfg = optim_default_config(OPTIM_ADAMW);
    cfg.weight_decay = 0.0f;
    Pair2 p = {.w = {1.0f, 1.0f}, .g = {2.0f, 2.0f}};
    OptimTensor t = tensor_of(&p, "w", false);
    optim_step(&cfg, &t, 1, 0.1f, 1, 1.0f);
    p.g[0] = p.g[1] = 2.0f;
    optim_step(&cfg, &t, 1, 0.1f, 2, 1.0f);
    assert_close(p.m[0], 0.19 * 2.0, 1e-6);
    assert_close(p.w[0], 0.8, 1e-5);
}

/* The scale reaches m and v, and the gradient is left scaled. */
static void test_grad_scale(void **state)
{
    (void)state;
    OptimConfig cfg = optim_default_config(OPTIM_LAMB);
    Pair2 p = {.w = {1.0f, 1.0f}, .g = {4.0f, -4.0f}};
    OptimTensor t = tensor_of(&p, "w", false);
    optim_step(&cfg, &t, 1, 0.1f, 1, 0.5f);
    assert_close(p.g[0], 2.0, 0.0);
    assert_close(p.g[1], -2.0, 0.0);
    assert_close(p.m[0], 0.2, 1e-7);
    assert_close(p.v[1], 0.004, 1e-6);
}

/* ---------------------------------------------------------------------- */
/* Determinism: the same bits whatever the thread count.                  */

#ifdef _OPENMP
enum { BIG = 256 * 4096 + 70001 }; /* more than one group of blocks */

typedef struct {
    float *w, *g, *m, *v;
} Buffers;

static Buffers filled_buffers(void)
{
    Buffers b = {malloc(BIG * sizeof(float)), malloc(BIG * sizeof(float)),
                 calloc(BIG, sizeof(float)), calloc(BIG, sizeof(float))};
    assert_true(b.w && b.g && b.m && b.v);
    uint32_t x = 12345;
    for (size_t i = 0; i < BIG; i++) {
        x = x * 1664525u + 1013904223u; /* any fixed sequence will do */
        b.w[i] = (float)(x >> 8) / 16777216.0f - 0.5f;
        b.g[i] = (float)((x >> 4) & 0xfff) / 4096.0f - 0.5f;
    }
    return b;
}

static void free_buffers(Buffers *b)
{
    free(b->w);
    free(b->g);
    free(b->m);
    free(b->v);
}

/* Three LAMB steps with clipping on `threads` threads. */
static double run_lamb(Buffers *b, int threads)
{
    omp_set_num_threads(threads);
    OptimConfig cfg = optim_default_config(OPTIM_LAMB);
    OptimTensor t = {.name = "w", .param = b->w, .grad = b->g, .m = b->m,
                     .v = b->v, .numel = BIG};
    double sumsq = 0.0;
    for (long step = 1; step <= 3; step++) {
        sumsq = optim_grad_sumsq(&t, 1);
        optim_step(&cfg, &t, 1, 1e-2f, step, optim_clip_scale(sqrt(sumsq), 1.0f));
    }
    return sumsq;
}

static void test_thread_count_independent(void **state)
{
    (void)state;
    Buffers one = filled_buffers(), many = filled_buffers();
    double sumsq_one = run_lamb(&one, 1), sumsq_many = run_lamb(&many, 4);
    assert_memory_equal(&sumsq_one, &sumsq_many, sizeof(double));
    assert_memory_equal(one.w, many.w, BIG * sizeof(float));
    assert_memory_equal(one.m, many.m, BIG * sizeof(float));
    assert_memory_equal(one.v, many.v, BIG * sizeof(float));
    free_buffers(&one);
    free_buffers(&many);
}
#else
static void test_thread_count_independent(void **state)
{
    (void)state;
    skip();
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedule_warmup),
        cmocka_unit_test(test_schedule_cosine),
        cmocka_unit_test(test_schedule_linear),
        cmocka_unit_test(test_schedule_constant),
        cmocka_unit_test(test_schedule_wsd),
        cmocka_unit_test(test_schedule_without_warmup),
        cmocka_unit_test(test_schedule_parse),
        cmocka_unit_test(test_name_exclusion),
        cmocka_unit_test(test_optim_parse),
        cmocka_unit_test(test_default_config),
        cmocka_unit_test(test_clip_scale),
        cmocka_unit_test(test_grad_sumsq),
        cmocka_unit_test(test_lamb_zero_weights_ratio_one),
        cmocka_unit_test(test_lamb_trust_ratio),
        cmocka_unit_test(test_lamb_excluded),
        cmocka_unit_test(test_lamb_decay_all),
        cmocka_unit_test(test_adamw_step),
        cmocka_unit_test(test_bias_correction_step_two),
        cmocka_unit_test(test_grad_scale),
        cmocka_unit_test(test_thread_count_independent),
    };
    return cmocka_run_group_tests_name("optim", tests, NULL, NULL);
}
