/* The --inject grammar (launcher/elastic.h, elastic_event_parse): what it
 * accepts and, since it is strict, what it refuses. fuzz_inject.c checks
 * the accepted events against their text on arbitrary inputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "inject.h"

#include <string.h>

static void accepts_every_kind(void **state)
{
    (void)state;
    ElasticEvent e;
    assert_int_equal(elastic_event_parse("crash:1@3", &e), 0);
    assert_string_equal(e.kind, "crash");
    assert_int_equal(e.who, 1);
    assert_int_equal(e.step, 3);
    assert_int_equal(e.attempt, 0);
    assert_int_equal(elastic_event_parse("hang:0@12#2", &e), 0);
    assert_string_equal(e.kind, "hang");
    assert_int_equal(e.attempt, 2);
    assert_int_equal(elastic_event_parse("slow:3*1.5#1", &e), 0);
    assert_string_equal(e.kind, "slow");
    assert_int_equal(e.who, 3);
    assert_true(e.factor == 1.5);
    assert_int_equal(elastic_event_parse("node:1@5", &e), 0);
    assert_int_equal(elastic_event_parse("flushkill:0@4", &e), 0);
    assert_int_equal(elastic_event_parse("corrupt:9#1", &e), 0);
    assert_string_equal(e.kind, "corrupt");
    assert_int_equal(e.step, 9);
    assert_int_equal(e.attempt, 1);
    assert_int_equal(elastic_event_parse("partition:h2@5", &e), 0);
    assert_string_equal(e.kind, "partition");
    assert_string_equal(e.host, "h2");
    assert_int_equal(e.step, 5);
    assert_int_equal(elastic_event_parse("poweroff:10.240.1.3@7#1", &e), 0);
    assert_string_equal(e.host, "10.240.1.3");
    assert_int_equal(e.attempt, 1);
}

static void refuses_what_it_would_misread(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", "crash", "crash:1", "crash:1@0", "explode:1@3", "crash:1@3#", "crash:1@3x",
        "crash: 1@3", "crash:-1@3", "crash:+1@3", "crash:1@ 3", "hang:0@3# 1",
        "crash:2147483648@3",           /* rank past INT_MAX: wrapped to 0 before */
        "crash:1@99999999999999999999", /* step past LONG_MAX */
        "hang:0@3#4294967296",          /* attempt wrapped to 0 before */
        "slow:0*inf", "slow:0*nan", "slow:0*0.5", "slow:0*1e999", "slow:0*", "slow:0*-2",
        "corrupt:0", "corrupt:1@2", "flushkillflushkill:0@1",
        "partition:@3", "partition:h2", "partition:h2@0", "poweroff:h;2@3", "poweroff:$(x)@3",
        "partition:-rf@3", "partition:h 2@3", "crash:h2@3",
        "partition:a234567890123456789012345678901234567890123456789012345678901234@3",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ElasticEvent e;
        if (elastic_event_parse(bad[i], &e) == 0)
            fail_msg("'%s' was accepted", bad[i]);
    }
}

static void reads_a_long_text_whole(void **state)
{
    (void)state;
    /* 128 characters and more were cut off before: attempt 0 instead of 1 */
    char text[300] = "crash:1@5#";
    memset(text + strlen(text), '0', 200);
    strcat(text, "1");
    ElasticEvent e;
    assert_int_equal(elastic_event_parse(text, &e), 0);
    assert_int_equal(e.attempt, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(accepts_every_kind),
        cmocka_unit_test(refuses_what_it_would_misread),
        cmocka_unit_test(reads_a_long_text_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
