/* Values (core/src/value.c): parsing text as a lab user means it. */
#include <check.h>
#include <jansson.h>
#include <zmq.h>
#include <stdlib.h>
#include <string.h>
#include "harness.h"
#include "labmq/labmq.h"

/* Defect 9: strtoll's base 0 read "010" as 8, in the config and on the
 * command line. Integers are decimal; hexadecimal only with 0x. */
START_TEST(integers_are_decimal)
{
    static const struct {
        const char *text;
        int rc;
        int64_t want;
    } cases[] = {
        {"010", 0, 10},        {"08", 0, 8},      {"-010", 0, -10},     {"+7", 0, 7},
        {"0x10", 0, 16},       {"0X1f", 0, 31},   {"-0x10", 0, -16},    {"0", 0, 0},
        {"9223372036854775807", 0, INT64_MAX},    {"9223372036854775808", LMQ_EARG, 0},
        {"0x", LMQ_EARG, 0},   {"1.5", LMQ_EARG, 0}, {"12abc", LMQ_EARG, 0}, {"", LMQ_EARG, 0},
        {"0b101", LMQ_EARG, 0}, {"0o17", LMQ_EARG, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lmq_value_t v = {0};
        int rc = lmq_value_parse(&v, cases[i].text, LMQ_INT);
        ck_assert_msg(rc == cases[i].rc, "'%s': %d", cases[i].text, rc);
        if (rc == 0)
            ck_assert_msg(v.type == LMQ_INT && v.u.i == cases[i].want, "'%s' read as %lld", cases[i].text,
                          (long long)v.u.i);
    }
    /* and when the type is guessed (the CLI without describe) */
    lmq_value_t v = {0};
    ck_assert_int_eq(lmq_value_parse(&v, "010", LMQ_NONE), 0);
    ck_assert_int_eq(v.type, LMQ_INT);
    ck_assert_int_eq(v.u.i, 10);
}
END_TEST

/* The same rule where a config gives an integer option: channels: 010 is a
 * DAQ with ten inputs. */
START_TEST(config_integers_are_decimal)
{
    char *err = NULL;
    const char yaml[] = "devices:\n  - name: daq1\n    driver: sim-daq\n    options: {channels: 010}\n";
    lmq_config_t *cfg = lmq_config_parse(yaml, strlen(yaml), &err);
    ck_assert_msg(cfg != NULL, "%s", err ? err : "");
    void *zctx = zmq_ctx_new();
    lmq_daemon_t *d = lmq_daemon_new(zctx, "inproc://v-ctl", "inproc://v-data", NULL);
    ck_assert_int_eq(lmq_config_apply(cfg, d, &err), 0);
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    lmq_proxy_t *p = lmq_proxy_new(zctx, "inproc://v-ctl", "daq1");
    char *text = NULL;
    ck_assert_int_eq(lmq_proxy_describe(p, &text), 0);
    json_t *j = json_loads(text, 0, NULL);
    size_t i, inputs = 0;
    json_t *e;
    json_array_foreach(json_object_get(j, "properties"), i, e)
    {
        const char *name = json_string_value(json_object_get(e, "name"));
        inputs += !strncmp(name, "ai", 2) && name[2] >= '0' && name[2] <= '9' && !strstr(name, "_gain");
    }
    ck_assert_uint_eq(inputs, 10);
    json_decref(j);
    free(text);
    lmq_proxy_destroy(&p);
    lmq_daemon_destroy(&d);
    zmq_ctx_term(zctx);
    lmq_config_destroy(&cfg);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("value");
    TCase *tc = tcase_create("value");
    tcase_add_test(tc, integers_are_decimal);
    tcase_add_test(tc, config_integers_are_decimal);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
