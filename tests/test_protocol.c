/* The launcher's channel line parser and text sanitizer (launcher/protocol.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>

#include <cmocka.h>

#include "protocol.h"

static int parse(const char *line, ProtocolMessage *m)
{
    char err[256];
    return protocol_parse(line, strlen(line), m, err, sizeof(err));
}

/* Every line of `lines` is refused with a message, which names `naming`
 * (NULL: any non-empty message). */
static void assert_refused(const char *const *lines, size_t count, const char *naming)
{
    ProtocolMessage m;
    for (size_t i = 0; i < count; i++) {
        char err[256] = "";
        assert_int_equal(protocol_parse(lines[i], strlen(lines[i]), &m, err, sizeof(err)), -1);
        assert_true(strlen(err) > 0);
        if (naming)
            assert_non_null(strstr(err, naming));
    }
}

static void test_hello_fields(void **state)
{
    (void)state;
    ProtocolMessage m;
    assert_int_equal(parse("hello 3 4 1234 node7 812.0", &m), 0);
    assert_int_equal(m.kind, PROTOCOL_HELLO);
    assert_int_equal(m.rank, 3);
    assert_int_equal(m.world, 4);
    assert_int_equal(m.pid, 1234);
    assert_string_equal(m.node, "node7");
    assert_string_equal(m.slurm_step, "812.0");
    assert_int_equal(parse("hello 0 2 99 host -", &m), 0);
    assert_string_equal(m.slurm_step, "");
}

static void test_hello_takes_later_fields(void **state)
{
    (void)state;
    ProtocolMessage m;
    assert_int_equal(parse("hello 1 2 99 host - epoch=3 more", &m), 0);
    assert_int_equal(m.rank, 1);
    assert_int_equal(m.epoch, 3);
    assert_int_equal(parse("hello 1 2 99 host -", &m), 0);
    assert_int_equal(m.epoch, -1); /* a rank outside an elastic job */
    assert_int_equal(parse("hello 1 2 99 host - epoch=x", &m), -1);
    assert_int_equal(parse("hello 1 2 99 host - epoch=99999999999", &m), -1);
}

static void test_hello_refuses_bad_fields(void **state)
{
    (void)state;
    ProtocolMessage m;
    const char *bad[] = {
        "hello -1 2 99 host -",          "hello 1 0 99 host -",
        "hello 1 2 0 host -",            "hello x 2 99 host -",
        "hello 1 2 99 host",             "hello 1  2 99 host -",
        "hello 99999999999 2 99 host -", "hello 1 2 99999999999999999999 host -",
        "hello 1 2 99 h\x1b[31m -",      "hello 1 2 99 host -\x01",
        "hello",                         "hello ",
    };
    assert_refused(bad, sizeof(bad) / sizeof(bad[0]), NULL);
    char long_node[200] = "hello 1 2 99 ";
    memset(long_node + strlen(long_node), 'n', 64);
    strcat(long_node, " -");
    assert_int_equal(parse(long_node, &m), -1);
}

static void test_probe_names_its_node_and_nothing_else(void **state)
{
    (void)state;
    ProtocolMessage m;
    assert_int_equal(parse("probe h3", &m), 0);
    assert_int_equal(m.kind, PROTOCOL_PROBE);
    assert_string_equal(m.node, "h3");
    char long_node[100] = "probe ";
    memset(long_node + strlen(long_node), 'n', 64);
    const char *bad[] = {"probe", "probe ", "probe h3 extra", "probe  h3", "probe h\x1b" "3",
                         long_node};
    assert_refused(bad, sizeof(bad) / sizeof(bad[0]), "probe");
}

static void test_committed_names_one_step_and_nothing_else(void **state)
{
    (void)state;
    ProtocolMessage m;
    assert_int_equal(parse("committed 11", &m), 0);
    assert_int_equal(m.kind, PROTOCOL_COMMITTED);
    assert_int_equal(m.step, 11);
    const char *bad[] = {"committed", "committed ", "committed 11 12", "committed -1",
                         "committed  11", "committed 1x", "committed 99999999999999999999"};
    assert_refused(bad, sizeof(bad) / sizeof(bad[0]), "committed");
}

static void test_loaded_names_a_step_and_three_byte_counts(void **state)
{
    (void)state;
    ProtocolMessage m;
    assert_int_equal(parse("loaded 11 87135758 86874294 0", &m), 0);
    assert_int_equal(m.kind, PROTOCOL_LOADED);
    assert_int_equal(m.step, 11);
    assert_int_equal(m.read_bytes[0], 87135758);
    assert_int_equal(m.read_bytes[1], 86874294);
    assert_int_equal(m.read_bytes[2], 0);
    assert_int_equal(parse("loaded 0 0 0 9223372036854775807", &m), 0);
    assert_int_equal(m.read_bytes[2], LONG_MAX);
    const char *bad[] = {"loaded", "loaded 11", "loaded 11 1 2", "loaded 11 1 2 3 4",
                         "loaded 11 -1 2 3", "loaded 11 1  2 3",
                         "loaded 11 1 2x 3", "loaded 11 1 2 9223372036854775808",
                         "loaded x 1 2 3"};
    assert_refused(bad, sizeof(bad) / sizeof(bad[0]), "loaded");
}

static void test_every_keyword(void **state)
{
    (void)state;
    ProtocolMessage m;
    assert_int_equal(parse("progress 12 step 12 | loss 3.1", &m), 0);
    assert_int_equal(m.kind, PROTOCOL_PROGRESS);
    assert_int_equal(m.step, 12);
    assert_int_equal(m.text_length, strlen("step 12 | loss 3.1"));
    assert_memory_equal(m.text, "step 12 | loss 3.1", m.text_length);
    assert_int_equal(parse("progress 5", &m), 0);
    assert_int_equal(m.text_length, 0);
    assert_int_equal(parse("step 7", &m), 0);
    assert_int_equal(m.kind, PROTOCOL_STEP);
    assert_int_equal(m.step, 7);
    assert_int_equal(parse("log hello there", &m), 0);
    assert_int_equal(m.kind, PROTOCOL_LOG);
    assert_memory_equal(m.text, "hello there", m.text_length);
    assert_int_equal(parse("done 1 -3", &m), 0);
    assert_int_equal(m.kind, PROTOCOL_DONE);
    assert_int_equal(m.status, -3);
    assert_int_equal(parse("beat 1 40", &m), 0);
    assert_int_equal(m.kind, PROTOCOL_BEAT);
    assert_int_equal(parse("fault crash 1 4", &m), 0);
    assert_int_equal(m.kind, PROTOCOL_FAULT);
    assert_string_equal(m.fault_kind, "crash");
    assert_int_equal(parse("resumed 8 /tmp/a b/step_00000008", &m), 0);
    assert_int_equal(m.kind, PROTOCOL_RESUMED);
    assert_int_equal(m.step, 8);
    assert_memory_equal(m.text, "/tmp/a b/step_00000008", m.text_length);
}

static void test_auth(void **state)
{
    (void)state;
    ProtocolMessage m;
    char line[128] = "auth ";
    memset(line + 5, 'a', 64);
    line[69] = '\0';
    assert_int_equal(parse(line, &m), 0);
    assert_int_equal(m.kind, PROTOCOL_AUTH);
    assert_int_equal(strlen(m.answer), 64);
    line[68] = '\0'; /* 63 digits */
    assert_int_equal(parse(line, &m), -1);
    line[68] = 'G';
    assert_int_equal(parse(line, &m), -1);
}

static void test_refuses_unknown_and_trailing(void **state)
{
    (void)state;
    ProtocolMessage m;
    const char *bad[] = {"", " step 1", "stop", "step", "step 1 2", "step -1", "beat 1",
                         "done 1", "fault crash 1", "stepx 1", "step 1x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(parse(bad[i], &m), -1);
}

/* The length bounds the read: the bytes after it are never looked at. */
static void test_reads_only_length_bytes(void **state)
{
    (void)state;
    ProtocolMessage m;
    char err[128];
    const char line[] = "step 42";
    char *exact = malloc(strlen(line)); /* no NUL: a read past the end is a sanitizer error */
    memcpy(exact, line, strlen(line));
    assert_int_equal(protocol_parse(exact, strlen(line), &m, err, sizeof(err)), 0);
    assert_int_equal(m.step, 42);
    assert_int_equal(protocol_parse(exact, 6, &m, err, sizeof(err)), 0);
    assert_int_equal(m.step, 4);
    free(exact);
    assert_int_equal(protocol_parse("step 4\0 2", 9, &m, err, sizeof(err)), -1);
}

static void sanitized(const char *in, const char *expect)
{
    char out[256];
    size_t n = protocol_sanitize_text(in, strlen(in), out, sizeof(out));
    assert_string_equal(out, expect);
    assert_int_equal(n, strlen(expect));
}

static void test_sanitize_drops_controls_and_escapes(void **state)
{
    (void)state;
    sanitized("plain text 1.5", "plain text 1.5");
    sanitized("\x1b[31mred\x1b[0m", "red");
    sanitized("a\x1b]0;title\x07" "b", "ab");
    sanitized("a\x1b]8;;http://x\x1b\\link", "alink");
    sanitized("bell\x07 cr\r tab\t nl\n del\x7f", "bell cr tab nl del");
    sanitized("\x1b" "c reset", " reset");
    sanitized("\x1b[", "");
}

static void test_sanitize_keeps_utf8_only(void **state)
{
    (void)state;
    sanitized("loss \xe2\x86\x92 2.0 \xc3\xa9", "loss \xe2\x86\x92 2.0 \xc3\xa9");
    sanitized("c1 \xc2\x9b" "31m", "c1 31m");     /* U+009B, the 8-bit CSI */
    sanitized("overlong \xc0\xaf", "overlong ");  /* '/' in two bytes */
    sanitized("surrogate \xed\xa0\x80", "surrogate ");
    sanitized("cut \xe2\x86", "cut ");
    sanitized("bidi \xe2\x80\xae" "evil", "bidi evil");
    sanitized("emoji \xf0\x9f\x98\x80", "emoji \xf0\x9f\x98\x80");
}

static void test_sanitize_never_overflows(void **state)
{
    (void)state;
    char out[4];
    assert_int_equal(protocol_sanitize_text("abcdef", 6, out, sizeof(out)), 3);
    assert_string_equal(out, "abc");
    /* a 3-byte character that does not fit whole is left out */
    assert_int_equal(protocol_sanitize_text("a\xe2\x86\x92", 4, out, sizeof(out)), 1);
    assert_string_equal(out, "a");
    char one[1];
    assert_int_equal(protocol_sanitize_text("abc", 3, one, sizeof(one)), 0);
    assert_string_equal(one, "");
}

static void test_step_of_job(void **state)
{
    (void)state;
    assert_true(protocol_step_of_job("812.0", "812"));
    assert_true(protocol_step_of_job("812.13", "812"));
    assert_false(protocol_step_of_job("813.0", "812"));
    assert_false(protocol_step_of_job("8120.0", "812"));
    assert_false(protocol_step_of_job("812", "812"));
    assert_false(protocol_step_of_job("812.", "812"));
    assert_false(protocol_step_of_job("812.0x", "812"));
    assert_false(protocol_step_of_job("--user=root", "812"));
    assert_false(protocol_step_of_job("812.0", NULL));
    assert_false(protocol_step_of_job("812.0", ""));
    assert_false(protocol_step_of_job(".0", ""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello_fields),
        cmocka_unit_test(test_hello_takes_later_fields),
        cmocka_unit_test(test_hello_refuses_bad_fields),
        cmocka_unit_test(test_every_keyword),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_refuses_unknown_and_trailing),
        cmocka_unit_test(test_reads_only_length_bytes),
        cmocka_unit_test(test_sanitize_drops_controls_and_escapes),
        cmocka_unit_test(test_sanitize_keeps_utf8_only),
        cmocka_unit_test(test_sanitize_never_overflows),
        cmocka_unit_test(test_step_of_job),
        cmocka_unit_test(test_probe_names_its_node_and_nothing_else),
        cmocka_unit_test(test_committed_names_one_step_and_nothing_else),
        cmocka_unit_test(test_loaded_names_a_step_and_three_byte_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
