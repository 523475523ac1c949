/* runtime/outfile.h: JSON numbers that stay JSON (null for NaN and
 * infinity), and the checks an output path must pass. The whole runs are in
 * test_file_safety.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "outfile.h"

/* What outfile_json_number writes for `value`. */
static const char *json_of(double value, int decimals)
{
    static char text[128];
    FILE *f = fmemopen(text, sizeof(text), "w");
    assert_non_null(f);
    outfile_json_number(f, "x", value, decimals);
    fclose(f);
    return text;
}

static void test_non_finite_numbers_are_null(void **state)
{
    (void)state;
    assert_string_equal(json_of(NAN, -1), ", \"x\": null");
    assert_string_equal(json_of(-NAN, -1), ", \"x\": null");
    assert_string_equal(json_of(INFINITY, 3), ", \"x\": null");
    assert_string_equal(json_of(-INFINITY, 1), ", \"x\": null");
    assert_string_equal(json_of(0.1, -1), ", \"x\": 0.10000000000000001");
    assert_string_equal(json_of(2.5, 3), ", \"x\": 2.500");
}

static char dir[] = "/tmp/test_outfile_XXXXXX";

static int make_dir(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

/* Runs whether the test passed or not. */
static int remove_dir(void **state)
{
    (void)state;
    char command[128];
    snprintf(command, sizeof(command), "rm -rf '%s'", dir);
    return system(command) == 0 ? 0 : -1;
}

static void test_check_refuses_and_allows(void **state)
{
    (void)state;
    char ckpt[64], inside[96], file[64], err[512];
    snprintf(ckpt, sizeof(ckpt), "%s/ckpt", dir);
    snprintf(inside, sizeof(inside), "%s/ckpt/m.jsonl", dir);
    snprintf(file, sizeof(file), "%s/m.jsonl", dir);
    assert_int_equal(mkdir(ckpt, 0700), 0);
    OutfilePolicy policy = {"--metrics", OUTFILE_NEW, "pass --metrics-overwrite", {ckpt, NULL}};
    assert_int_equal(outfile_check(&policy, file, err, sizeof(err)), 0); // new: fine
    assert_int_equal(outfile_check(&policy, inside, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "inside the checkpoint directory"));
    assert_int_equal(outfile_check(&policy, dir, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "is a directory"));
    FILE *f = outfile_open(&policy, file, err, sizeof(err));
    assert_non_null(f);
    assert_int_equal(outfile_close(f, file, err, sizeof(err)), 0);
    assert_int_equal(outfile_check(&policy, file, err, sizeof(err)), -1); // exists now
    assert_non_null(strstr(err, "pass --metrics-overwrite"));
    policy.mode = OUTFILE_OVERWRITE;
    assert_int_equal(outfile_check(&policy, file, err, sizeof(err)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_non_finite_numbers_are_null),
        cmocka_unit_test_setup_teardown(test_check_refuses_and_allows, make_dir, remove_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
