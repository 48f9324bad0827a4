/* Status codes, values and the logger: the small public pieces. */
#include <check.h>
#include "harness.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "labmq/labmq.h"

START_TEST(status_names_round_trip)
{
    for (int s = LMQ_OK; s >= LMQ_ESYS; s--) {
        ck_assert_int_eq(lmq_status_from_name(lmq_status_name(s)), s);
        ck_assert_str_ne(lmq_strerror(s), "unknown error");
    }
    ck_assert_str_eq(lmq_status_name(LMQ_ETIMEOUT), "TIMEOUT");
    ck_assert_str_eq(lmq_strerror(-999), "unknown error");
    ck_assert_int_eq(lmq_status_from_name("NO_SUCH_CODE"), LMQ_EPROTO);
}
END_TEST

START_TEST(value_parse_and_format)
{
    lmq_value_t v = {0};
    char buf[64];
    ck_assert_int_eq(lmq_value_parse(&v, "3.5", LMQ_FLOAT), 0);
    ck_assert_double_eq(v.u.f, 3.5);
    ck_assert_int_eq(lmq_value_parse(&v, "abc", LMQ_FLOAT), LMQ_EARG);
    ck_assert_int_eq(lmq_value_parse(&v, "12", LMQ_NONE), 0);
    ck_assert_int_eq(v.type, LMQ_INT);
    ck_assert_int_eq(lmq_value_parse(&v, "on", LMQ_NONE), 0);
    ck_assert(v.type == LMQ_BOOL && v.u.b);
    ck_assert_int_eq(lmq_value_parse(&v, "hello", LMQ_NONE), 0);
    ck_assert_int_eq(v.type, LMQ_STRING);
    lmq_value_format(&v, buf, sizeof buf);
    ck_assert_str_eq(buf, "\"hello\"");
    lmq_value_clear(&v);
    ck_assert_int_eq(v.type, LMQ_NONE);
    size_t shape[2] = {3, 4};
    ck_assert_int_eq(lmq_value_set_array(&v, LMQ_F64, 2, shape, NULL), 0);
    ck_assert_uint_eq(v.u.a.nbytes, 96);
    lmq_value_format(&v, buf, sizeof buf);
    ck_assert_str_eq(buf, "<f8[3,4]");
    lmq_value_t c = {0};
    ck_assert_int_eq(lmq_value_copy(&c, &v), 0);
    ck_assert_ptr_ne(c.u.a.data, v.u.a.data);
    lmq_value_clear(&c);
    lmq_value_clear(&v);
    ck_assert_int_eq(lmq_value_set_string(&v, "\xff\xfe"), LMQ_EARG);
}
END_TEST

START_TEST(dtype_names)
{
    ck_assert_int_eq(lmq_dtype_parse("<f8"), LMQ_F64);
    ck_assert_int_eq(lmq_dtype_parse("|u1"), LMQ_U8);
    ck_assert_int_eq(lmq_dtype_parse("<u2"), LMQ_U16);
    ck_assert_int_eq(lmq_dtype_parse(">f8"), LMQ_DT_INVALID);
    ck_assert_uint_eq(lmq_dtype_size(LMQ_U16), 2);
    ck_assert_str_eq(lmq_dtype_name(LMQ_I32), "<i4");
}
END_TEST

typedef struct {
    int count;
    char last[256];
} captured_t;

static void capture(void *user, lmq_log_level_t level, const char *source, const char *msg)
{
    captured_t *c = user;
    (void)level;
    c->count++;
    snprintf(c->last, sizeof c->last, "%s: %s", source, msg);
}

START_TEST(log_levels_and_handler)
{
    captured_t c = {0};
    lmq_log_t *log = lmq_log_new(LMQ_LOG_INFO, capture, &c);
    lmq_log(log, LMQ_LOG_DEBUG, "x", "hidden");
    ck_assert_int_eq(c.count, 0);
    lmq_log(log, LMQ_LOG_WARN, "psu1", "value %d", 42);
    ck_assert_int_eq(c.count, 1);
    ck_assert_str_eq(c.last, "psu1: value 42");
    lmq_log_set_level(log, LMQ_LOG_TRACE);
    lmq_log_hex(log, "psu1", "tx", "VOLT 3.3\n", 9);
    ck_assert_int_eq(c.count, 2);
    ck_assert_ptr_nonnull(strstr(c.last, "56 4f 4c 54"));
    ck_assert_int_eq(lmq_log_level_parse("debug"), LMQ_LOG_DEBUG);
    ck_assert_int_eq(lmq_log_level_parse("loud"), -1);
    lmq_log_destroy(&log);
    ck_assert_ptr_null(log);
    lmq_log_destroy(&log);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("status");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, status_names_round_trip);
    tcase_add_test(tc, value_parse_and_format);
    tcase_add_test(tc, dtype_names);
    tcase_add_test(tc, log_levels_and_handler);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
