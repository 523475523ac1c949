/* The drill report's sample accounting (launcher/samples.h): metrics rows
 * read with a JSON parser, later rows replacing recomputed steps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "samples.h"

/* Writes `text` to a fresh file and accounts it; the file is removed. */
static int account(const char *text, SampleAccount *acc)
{
    char path[] = "/tmp/phalanx-test-samples-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    int result = samples_account(path, acc);
    unlink(path);
    return result;
}

static void assert_account(const SampleAccount *acc, long steps, long long consumed,
                           long long lost, long long duplicated)
{
    assert_int_equal(acc->steps, steps);
    assert_int_equal(acc->consumed, consumed);
    assert_int_equal(acc->lost, lost);
    assert_int_equal(acc->duplicated, duplicated);
}

static void test_rows_as_the_trainer_writes_them(void **state)
{
    (void)state;
    SampleAccount acc;
    // steps 1-3, then a resume from step 2 recomputes 3 and goes on to 4
    assert_int_equal(account("{\"step\": 1, \"samples\": 4, \"loss\": 5.1, \"global_batch\": 4}\n"
                             "{\"step\": 2, \"samples\": 8, \"loss\": 5.0, \"global_batch\": 4}\n"
                             "{\"step\": 3, \"samples\": 12, \"loss\": 4.9, \"global_batch\": 4}\n"
                             "{\"step\": 3, \"samples\": 12, \"loss\": 4.9, \"global_batch\": 4}\n"
                             "{\"step\": 4, \"samples\": 16, \"loss\": 4.8, \"global_batch\": 4}\n",
                             &acc),
                     0);
    assert_account(&acc, 4, 16, 0, 0);
}

static void test_lost_and_duplicated_samples(void **state)
{
    (void)state;
    SampleAccount acc;
    // step 2 starts 4 samples late (lost), step 3 starts 2 early (duplicated)
    assert_int_equal(account("{\"step\": 1, \"samples\": 4, \"global_batch\": 4}\n"
                             "{\"step\": 2, \"samples\": 12, \"global_batch\": 4}\n"
                             "{\"step\": 3, \"samples\": 14, \"global_batch\": 4}\n",
                             &acc),
                     0);
    assert_account(&acc, 3, 14, 4, 2);
}

/* A parser, not a string search: the writer's spacing and key order do not
 * matter (the old strstr looked for `"step": ` with one space). */
static void test_any_spacing_and_key_order(void **state)
{
    (void)state;
    SampleAccount acc;
    assert_int_equal(account("{\"step\":1,\"samples\":4,\"global_batch\":4}\n"
                             "{ \"global_batch\" : 4 , \"samples\" : 8 , \"step\" : 2 }\n",
                             &acc),
                     0);
    assert_account(&acc, 2, 8, 0, 0);
}

/* Lines that are no row are skipped: not JSON, a torn last line, a field
 * missing or not an integer, a step below 1. */
static void test_malformed_lines_are_skipped(void **state)
{
    (void)state;
    SampleAccount acc;
    assert_int_equal(account("not json at all\n"
                             "{\"step\": 1, \"samples\": 4, \"global_batch\": 4}\n"
                             "{\"step\": 0, \"samples\": 4, \"global_batch\": 4}\n"
                             "{\"step\": \"2\", \"samples\": 8, \"global_batch\": 4}\n"
                             "{\"step\": 2, \"samples\": 8}\n"
                             "\n"
                             "{\"step\": 2, \"samples\": 8, \"global_batch\": 4}\n"
                             "{\"step\": 3, \"samples\": 12, \"glo",
                             &acc),
                     0);
    assert_account(&acc, 2, 8, 0, 0);
}

static void test_no_metrics_file(void **state)
{
    (void)state;
    SampleAccount acc;
    assert_int_equal(samples_account("", &acc), -1);
    assert_int_equal(samples_account("/nonexistent/phalanx/metrics.jsonl", &acc), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_as_the_trainer_writes_them),
        cmocka_unit_test(test_lost_and_duplicated_samples),
        cmocka_unit_test(test_any_spacing_and_key_order),
        cmocka_unit_test(test_malformed_lines_are_skipped),
        cmocka_unit_test(test_no_metrics_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
