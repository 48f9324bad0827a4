/* Request checking (core/src/check.c): what the tables allow checking is
 * answered by the broker before the request is queued, whatever state the
 * device is in, and every malformed array reference is PROTO (protocol 2.2).
 * A raw DEALER speaks the wire protocol to an in-process daemon. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"

#define CTL "inproc://check-ctl"
#define DATA "inproc://check-data"

typedef struct lab {
    void *zctx;
    lmq_daemon_t *d;
    void *sock;
} lab_t;

static void lab_start(lab_t *lab)
{
    lab->zctx = zmq_ctx_new();
    lab->d = lmq_daemon_new(lab->zctx, CTL, DATA, NULL);
    ck_assert_int_eq(lmq_daemon_add(lab->d, "psu1", lmq_driver_find("sim-psu"), "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_add(lab->d, "daq1", lmq_driver_find("sim-daq"), "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_start(lab->d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(lab->d, 20000), 0);
    lab->sock = zmq_socket(lab->zctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(lab->sock, ZMQ_LINGER, &linger, sizeof linger);
    ck_assert_int_eq(zmq_connect(lab->sock, CTL), 0);
}

static void lab_stop(lab_t *lab)
{
    zmq_close(lab->sock);
    lmq_daemon_destroy(&lab->d);
    zmq_ctx_term(lab->zctx);
}

/* Sends a header and nbin frames (frame k holds sizes[k] zero bytes) and
 * returns the reply header. */
static json_t *request(lab_t *lab, const char *header, size_t nbin, const size_t *sizes, int timeout_ms)
{
    ck_assert_int_ge(zmq_send(lab->sock, header, strlen(header), nbin ? ZMQ_SNDMORE : 0), 0);
    for (size_t k = 0; k < nbin; k++) {
        char *buf = calloc(1, sizes[k] + 1);
        ck_assert_int_ge(zmq_send(lab->sock, buf, sizes[k], k + 1 < nbin ? ZMQ_SNDMORE : 0), 0);
        free(buf);
    }
    json_t *j = th_recv_reply(lab->sock, timeout_ms);
    ck_assert_msg(j != NULL, "no reply within %d ms to %s", timeout_ms, header);
    return j;
}

#define SET_V(value) "{\"v\":1,\"id\":7,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":" value "}"
#define REF(frame, dtype, shape) "{\"$frame\":" frame ",\"dtype\":\"" dtype "\",\"shape\":" shape "}"

/* Defect 4: every malformed array reference is PROTO (the document says so),
 * the same for any property or argument; a well-formed one reaches the type
 * check (ARG: voltage is a float). */
START_TEST(array_references)
{
    static const struct {
        const char *header;
        size_t nbin, sizes[2];
        const char *code, *text;
    } cases[] = {
        {SET_V(REF("0", "<f8", "[1]")), 1, {8}, "PROTO", "$frame"},
        {SET_V(REF("2", "<f8", "[1]")), 1, {8}, "PROTO", "$frame"},
        {SET_V(REF("\"1\"", "<f8", "[1]")), 1, {8}, "PROTO", "$frame"},
        {SET_V(REF("1.0", "<f8", "[1]")), 1, {8}, "PROTO", "$frame"},
        {SET_V(REF("1", "<f8", "[2]")), 1, {8}, "PROTO", "need 16"},
        {SET_V(REF("1", "<f8", "[1]")), 1, {9}, "PROTO", "has 9 bytes"},
        {SET_V(REF("1", ">f8", "[1]")), 1, {8}, "PROTO", "unknown dtype"},
        {SET_V(REF("1", "float64", "[1]")), 1, {8}, "PROTO", "unknown dtype"},
        {SET_V(REF("1", "<f2", "[1]")), 1, {2}, "PROTO", "unknown dtype"},
        {SET_V(REF("1", "f8", "[1]")), 1, {8}, "PROTO", "unknown dtype"},
        {SET_V(REF("1", "<f8", "[-1]")), 1, {8}, "PROTO", "non-negative"},
        {SET_V(REF("1", "<f8", "\"1\"")), 1, {8}, "PROTO", "shape"},
        {SET_V(REF("1", "<f8", "[1.5]")), 1, {8}, "PROTO", "non-negative integers"},
        {SET_V("{\"$frame\":1,\"dtype\":\"<f8\"}"), 1, {8}, "PROTO", "exactly the keys"},
        {SET_V("{\"$frame\":1,\"dtype\":\"<f8\",\"shape\":[1],\"order\":\"C\"}"), 1, {8}, "PROTO", "exactly the keys"},
        {SET_V(REF("1", "<f8", "[1,1,1,1,1]")), 1, {8}, "PROTO", "at most 4"},
        {SET_V(REF("1", "<f8", "[1]")), 0, {0}, "PROTO", "$frame"},
        /* a frame the header never names */
        {SET_V("2.0"), 1, {8}, "PROTO", "frame 1 is not referenced"},
        {SET_V(REF("1", "<f8", "[1]")), 2, {8, 8}, "PROTO", "frame 2 is not referenced"},
        /* one frame, two values */
        {"{\"v\":1,\"id\":7,\"op\":\"call\",\"device\":\"daq1\",\"name\":\"write_ao\",\"args\":[" REF("1", "<i8", "[]")
         "," REF("1", "<f8", "[]") "]}",
         1,
         {8},
         "PROTO",
         "referenced twice"},
        /* well formed (0-d and 4-d included): the value is then an array, not a float */
        {SET_V(REF("1", "<f8", "[]")), 1, {8}, "ARG", "must be float, got array"},
        {SET_V(REF("1", "|u1", "[1,2,1,3]")), 1, {6}, "ARG", "must be float, got array"},
        {SET_V(REF("1", "<f8", "[0]")), 1, {0}, "ARG", "must be float, got array"},
        /* a JSON list is not a labmq value */
        {SET_V("[1,2]"), 0, {0}, "ARG", "binary frames"},
        /* frames on an op that takes none */
        {"{\"v\":1,\"id\":7,\"op\":\"get\",\"device\":\"psu1\",\"name\":\"voltage\"}", 1, {8}, "PROTO", "no binary"},
    };
    lab_t lab;
    lab_start(&lab);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *r = request(&lab, cases[i].header, cases[i].nbin, cases[i].sizes, 5000);
        ck_assert_msg(!strcmp(th_reply_code(r), cases[i].code), "case %zu (%s): %s '%s', want %s", i, cases[i].header,
                      th_reply_code(r), th_reply_message(r), cases[i].code);
        ck_assert_msg(strstr(th_reply_message(r), cases[i].text), "case %zu: '%s' lacks '%s'", i, th_reply_message(r),
                      cases[i].text);
        ck_assert_int_eq(json_integer_value(json_object_get(r, "id")), 7);
        json_decref(r);
    }
    lab_stop(&lab);
}
END_TEST

static void set_fault(lab_t *lab, const char *fault)
{
    char hdr[200];
    snprintf(hdr, sizeof hdr, "{\"v\":1,\"id\":1,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"fault\",\"value\":\"%s\"}",
             fault);
    json_t *r = request(lab, hdr, 0, NULL, 5000);
    ck_assert_str_eq(th_reply_code(r), "OK");
    json_decref(r);
}

/* Defect 3: bad values are answered at once, by the broker, whatever the
 * device is doing: with `fault error` they used to answer DEVICE, with
 * `hang:MS` TIMEOUT after MS. */
START_TEST(bad_requests_answered_before_the_device)
{
    static const struct {
        const char *header, *code, *text;
    } cases[] = {
        {SET_V("100"), "RANGE", "outside 0..30 V"},
        {SET_V("-0.5"), "RANGE", "outside"},
        {SET_V("\"high\""), "ARG", "must be float, got string"},
        {SET_V("true"), "ARG", "must be float, got bool"},
        {"{\"v\":1,\"id\":7,\"op\":\"call\",\"device\":\"psu1\",\"name\":\"reset\",\"args\":[1]}", "ARG",
         "takes 0 arguments"},
        {"{\"v\":1,\"id\":7,\"op\":\"call\",\"device\":\"psu1\",\"name\":\"sweep\",\"args\":[0,1]}", "ARG",
         "takes 3 arguments (start, stop, points), got 2"},
        {"{\"v\":1,\"id\":7,\"op\":\"call\",\"device\":\"psu1\",\"name\":\"sweep\",\"args\":[0,1,1]}", "RANGE",
         "'points' of psu1.sweep = 1 is outside 2..10000"},
        {"{\"v\":1,\"id\":7,\"op\":\"call\",\"device\":\"psu1\",\"name\":\"sweep\",\"args\":[0,1,2.5]}", "ARG",
         "must be int, got float"},
        {"{\"v\":1,\"id\":7,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"mode\",\"value\":\"CV\"}", "READONLY",
         "read-only"},
    };
    const char *faults[] = {"error", "hang:400"};
    lab_t lab;
    lab_start(&lab);
    for (int k = 0; k < 2; k++) {
        set_fault(&lab, faults[k]);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            double t0 = th_now_ms();
            /* 300 ms: well below the 400 ms hang a queued request would wait */
            json_t *r = request(&lab, cases[i].header, 0, NULL, 300);
            double ms = th_now_ms() - t0;
            ck_assert_msg(!strcmp(th_reply_code(r), cases[i].code), "fault %s, case %zu: %s '%s', want %s", faults[k], i,
                          th_reply_code(r), th_reply_message(r), cases[i].code);
            ck_assert_msg(strstr(th_reply_message(r), cases[i].text), "case %zu: '%s' lacks '%s'", i, th_reply_message(r),
                          cases[i].text);
            ck_assert_msg(ms < 300, "answered after %.0f ms", ms);
            json_decref(r);
        }
        /* while a good request does reach the faulty device */
        json_t *r = request(&lab, SET_V("1.0"), 0, NULL, 5000);
        ck_assert_str_eq(th_reply_code(r), k == 0 ? "DEVICE" : "TIMEOUT");
        json_decref(r);
    }
    set_fault(&lab, "none");
    lab_stop(&lab);
}
END_TEST

/* The answers protocol 2.1 and 2.3 give for JSON at the edges: what a strict
 * parser refuses is PROTO with a null id (the header was never read), a
 * missing key is PROTO with the id. */
START_TEST(json_edges)
{
    static const struct {
        const char *header;
        bool id_null;
        const char *text;
    } cases[] = {
        {"{\"v\":1,\"id\":7,\"op\":\"get\",\"device\":\"psu1\\u0000\",\"name\":\"voltage\"}", true, "JSON"},
        {"{\"v\":1,\"id\":7,\"op\":\"get\",\"device\":\"\\ud800\",\"name\":\"voltage\"}", true, "JSON"},
        {SET_V("9223372036854775808"), true, "JSON"},
        {SET_V("1e400"), true, "JSON"},
        {"{\"v\":1,\"id\":7,\"id\":8,\"op\":\"ping\"}", true, "JSON"},
        {"[1,2]", true, "object"},
        {"", true, "empty header"},
        {"{\"v\":1,\"id\":7}", false, "missing key 'op'"},
        {"{\"v\":1,\"id\":7,\"op\":\"get\",\"device\":\"psu1\"}", false, "needs 'name'"},
        {"{\"id\":7,\"op\":\"ping\"}", false, "missing key 'v'"},
    };
    lab_t lab;
    lab_start(&lab);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *r = request(&lab, cases[i].header, 0, NULL, 5000);
        ck_assert_msg(!strcmp(th_reply_code(r), "PROTO"), "case %zu (%s): %s '%s'", i, cases[i].header,
                      th_reply_code(r), th_reply_message(r));
        ck_assert_msg(strstr(th_reply_message(r), cases[i].text), "case %zu: '%s' lacks '%s'", i,
                      th_reply_message(r), cases[i].text);
        json_t *id = json_object_get(r, "id");
        ck_assert_msg(cases[i].id_null ? json_is_null(id) : json_integer_value(id) == 7, "case %zu: id %s", i,
                      json_is_null(id) ? "null" : "set");
        json_decref(r);
    }
    lab_stop(&lab);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("check");
    TCase *tc = tcase_create("check");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, array_references);
    tcase_add_test(tc, bad_requests_answered_before_the_device);
    tcase_add_test(tc, json_edges);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
