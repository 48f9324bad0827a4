/* Wire protocol v1: the codec itself, and a real labmqd answering a table of
 * malformed requests, each with its specific error, while it keeps serving. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"
#include "proto.h"

/* ---- codec, no sockets ---- */

START_TEST(parse_valid_request)
{
    const char *h = "{\"v\":1,\"id\":42,\"op\":\"call\",\"device\":\"psu1\",\"name\":\"sweep\",\"args\":[1,2.5,\"x\"]}";
    lmq__request_t req;
    char err[256];
    ck_assert_int_eq(lmq__request_parse(h, strlen(h), 0, &req, err, sizeof err), 0);
    ck_assert(req.has_id);
    ck_assert_uint_eq(req.id, 42);
    ck_assert_int_eq(req.op, LMQ__OP_CALL);
    ck_assert_str_eq(req.device, "psu1");
    ck_assert_str_eq(req.name, "sweep");
    ck_assert_uint_eq(json_array_size(req.args), 3);
    lmq__request_clear(&req);
}
END_TEST

/* client, deadline_ms, lock and unlock (protocol 2.1, 2.6), and the keys a
 * proxy appends to an encoded header reading back the same. */
START_TEST(parse_lock_keys_and_appended_keys)
{
    lmq__request_t req;
    char err[256];
    const char *h = "{\"v\":1,\"id\":1,\"op\":\"lock\",\"devices\":[\"psu1\",\"daq1\"],\"lease_ms\":2000,"
                    "\"client\":\"alice\"}";
    ck_assert_int_eq(lmq__request_parse(h, strlen(h), 0, &req, err, sizeof err), 0);
    ck_assert_int_eq(req.op, LMQ__OP_LOCK);
    ck_assert_uint_eq(json_array_size(req.devices), 2);
    ck_assert_int_eq(req.lease_ms, 2000);
    ck_assert_str_eq(req.client, "alice");
    ck_assert_int_eq(req.deadline_ms, -1);
    lmq__request_clear(&req);
    static const struct {
        const char *h, *why;
    } bad[] = {
        {"{\"v\":1,\"id\":1,\"op\":\"lock\"}", "op 'lock' needs 'devices'"},
        {"{\"v\":1,\"id\":1,\"op\":\"lock\",\"devices\":[]}", "'devices' must be a list of 1 to 64"},
        {"{\"v\":1,\"id\":1,\"op\":\"lock\",\"devices\":[1]}", "'devices' entry 1 is not a string"},
        {"{\"v\":1,\"id\":1,\"op\":\"lock\",\"devices\":[\"a\"],\"lease_ms\":99}", "'lease_ms' must be"},
        {"{\"v\":1,\"id\":1,\"op\":\"unlock\",\"lease_ms\":200}", "op 'unlock' takes no 'lease_ms'"},
        {"{\"v\":1,\"id\":1,\"op\":\"ping\",\"devices\":[\"a\"]}", "op 'ping' takes no 'devices'"},
        {"{\"v\":1,\"id\":1,\"op\":\"ping\",\"client\":\"\"}", "'client' must be a string of 1 to 128"},
        {"{\"v\":1,\"id\":1,\"op\":\"ping\",\"deadline_ms\":1.5}", "'deadline_ms' must be an integer"},
        {"{\"v\":1,\"id\":1,\"op\":\"ping\",\"deadline_ms\":86400001}", "'deadline_ms' must be an integer"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_int_eq(lmq__request_parse(bad[i].h, strlen(bad[i].h), 0, &req, err, sizeof err), LMQ_EPROTO);
        ck_assert_msg(strstr(err, bad[i].why), "%s: %s", bad[i].h, err);
        lmq__request_clear(&req);
    }
    zmq_msg_t m;
    lmq_value_t v = lmq_float(2.5);
    ck_assert_int_eq(lmq__request_encode_fast(&m, 9, LMQ__OP_SET, "psu1", "voltage", NULL, 0, &v), 0);
    char *quoted = lmq__json_quote("bob \"the\" builder");
    ck_assert_int_eq(lmq__request_add_keys(&m, 1500, quoted), 0);
    free(quoted);
    ck_assert_int_eq(lmq__request_parse(zmq_msg_data(&m), zmq_msg_size(&m), 0, &req, err, sizeof err), 0);
    ck_assert_int_eq(req.deadline_ms, 1500);
    ck_assert_str_eq(req.client, "bob \"the\" builder");
    ck_assert(json_real_value(req.value) == 2.5);
    lmq__request_clear(&req);
    zmq_msg_close(&m);
}
END_TEST

START_TEST(parse_keeps_id_on_error)
{
    const char *h = "{\"v\":1,\"id\":7,\"op\":\"nope\"}";
    lmq__request_t req;
    char err[256];
    ck_assert_int_eq(lmq__request_parse(h, strlen(h), 0, &req, err, sizeof err), LMQ_EPROTO);
    ck_assert(req.has_id);
    ck_assert_uint_eq(req.id, 7);
    ck_assert_ptr_nonnull(strstr(err, "unknown op 'nope'"));
    lmq__request_clear(&req);
}
END_TEST

START_TEST(array_value_round_trip)
{
    double data[6] = {1, 2, 3, 4, 5, 6.5};
    size_t shape[2] = {2, 3};
    lmq_value_t v = {0}, back = {0};
    ck_assert_int_eq(lmq_value_set_array(&v, LMQ_F64, 2, shape, data), 0);
    lmq__frames_t bin;
    lmq__frames_init(&bin);
    json_t *j = lmq__value_to_json(&v, &bin);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(v.type, LMQ_NONE); /* data moved into the frame, not copied */
    ck_assert_uint_eq(bin.n, 1);
    ck_assert_uint_eq(zmq_msg_size(&bin.msg[0]), sizeof data);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "$frame")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(j, "dtype")), "<f8");
    char err[256];
    ck_assert_int_eq(lmq__value_from_json(j, &bin, &back, err, sizeof err), 0);
    ck_assert_int_eq(back.type, LMQ_ARRAY);
    ck_assert_uint_eq(back.u.a.shape[1], 3);
    ck_assert_double_eq(((double *)back.u.a.data)[5], 6.5);
    lmq_value_clear(&back);
    /* A frame whose size does not match the announced shape is refused. */
    json_object_set_new(j, "shape", json_pack("[i]", 5));
    ck_assert_int_eq(lmq__value_from_json(j, &bin, &back, err, sizeof err), LMQ_EPROTO);
    ck_assert_ptr_nonnull(strstr(err, "bytes"));
    json_decref(j);
    lmq__frames_close(&bin);
}
END_TEST

START_TEST(scalar_values_encode_as_json)
{
    lmq__frames_t bin;
    lmq__frames_init(&bin);
    lmq_value_t v = lmq_float(2.5);
    json_t *j = lmq__value_to_json(&v, &bin);
    ck_assert(json_is_real(j) && json_real_value(j) == 2.5);
    json_decref(j);
    v = lmq_int(-3);
    j = lmq__value_to_json(&v, &bin);
    ck_assert(json_is_integer(j) && json_integer_value(j) == -3);
    json_decref(j);
    ck_assert_uint_eq(bin.n, 0);
}
END_TEST

START_TEST(data_header_is_valid_json)
{
    zmq_msg_t m;
    size_t shape[2] = {480, 640};
    char *units = lmq__json_quote("counts \"raw\"");
    ck_assert_int_eq(lmq__data_header(&m, 12, 99, 1700000000000000000LL, LMQ_U16, 2, shape, units), 0);
    free(units);
    json_error_t e;
    json_t *j = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, &e);
    ck_assert_msg(j != NULL, "%s", e.text);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "seq")), 12);
    ck_assert_str_eq(json_string_value(json_object_get(j, "dtype")), "<u2");
    ck_assert_str_eq(json_string_value(json_object_get(j, "units")), "counts \"raw\"");
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(j, "shape"), 1)), 640);
    json_decref(j);
    zmq_msg_close(&m);
}
END_TEST

/* ---- the fast encoders write what jansson writes ---- */

/* a and b hold the same JSON: same types (an int is not a float), floats bit
 * for bit (so -0.0 differs from 0.0), strings byte for byte. */
static bool json_same(const json_t *a, const json_t *b)
{
    if (json_typeof(a) != json_typeof(b))
        return false;
    switch (json_typeof(a)) {
    case JSON_REAL: {
        double x = json_real_value(a), y = json_real_value(b);
        return memcmp(&x, &y, sizeof x) == 0;
    }
    case JSON_INTEGER:
        return json_integer_value(a) == json_integer_value(b);
    case JSON_STRING:
        return json_string_length(a) == json_string_length(b) &&
               memcmp(json_string_value(a), json_string_value(b), json_string_length(a)) == 0;
    case JSON_ARRAY:
        if (json_array_size(a) != json_array_size(b))
            return false;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!json_same(json_array_get(a, i), json_array_get(b, i)))
                return false;
        return true;
    case JSON_OBJECT: {
        if (json_object_size(a) != json_object_size(b))
            return false;
        const char *key;
        json_t *va;
        json_object_foreach((json_t *)a, key, va)
        {
            json_t *vb = json_object_get(b, key);
            if (!vb || !json_same(va, vb))
                return false;
        }
        return true;
    }
    default:
        return true; /* true, false, null: the type says it all */
    }
}

static json_t *msg_json(zmq_msg_t *m, const char *what)
{
    json_error_t e;
    json_t *j = json_loadb(zmq_msg_data(m), zmq_msg_size(m), JSON_REJECT_DUPLICATES, &e);
    ck_assert_msg(j != NULL, "%s: not JSON (%s): %.*s", what, e.text, (int)zmq_msg_size(m),
                  (const char *)zmq_msg_data(m));
    return j;
}

#define TWO53 9007199254740992.0

/* Every scalar type, and the numbers a printf-based encoder gets wrong most
 * easily: shortest round trip, signed zero, subnormals, the int64 edges. */
static const lmq_value_t fast_values[] = {
    {LMQ_NONE, {.i = 0}},
    {LMQ_BOOL, {.b = true}},
    {LMQ_BOOL, {.b = false}},
    {LMQ_INT, {.i = 0}},
    {LMQ_INT, {.i = -1}},
    {LMQ_INT, {.i = INT64_MIN}},
    {LMQ_INT, {.i = INT64_MAX}},
    {LMQ_INT, {.i = -9007199254740993LL}},
    {LMQ_INT, {.i = 9007199254740993LL}}, /* 2^53 + 1: not a double */
    {LMQ_INT, {.i = -123456789012345678LL}},
    {LMQ_FLOAT, {.f = 0.1}},
    {LMQ_FLOAT, {.f = 1e300}},
    {LMQ_FLOAT, {.f = -1e300}},
    {LMQ_FLOAT, {.f = -0.0}},
    {LMQ_FLOAT, {.f = 0.0}},
    {LMQ_FLOAT, {.f = 1.0}},
    {LMQ_FLOAT, {.f = -2.5}},
    {LMQ_FLOAT, {.f = TWO53}},
    {LMQ_FLOAT, {.f = TWO53 + 2.0}},
    {LMQ_FLOAT, {.f = -TWO53 * 1024.0}},
    {LMQ_FLOAT, {.f = 5e-324}},
    {LMQ_FLOAT, {.f = -5e-324}},
    {LMQ_FLOAT, {.f = 2.2250738585072014e-308}},
    {LMQ_FLOAT, {.f = 1.7976931348623157e308}},
    {LMQ_FLOAT, {.f = 1.0 / 3.0}},
    {LMQ_FLOAT, {.f = 123456.789}},
    {LMQ_FLOAT, {.f = 1e22}},
    {LMQ_FLOAT, {.f = 1e-7}},
    {LMQ_FLOAT, {.f = 0.30000000000000004}},
};
#define N_FAST (sizeof fast_values / sizeof fast_values[0])

static void describe_value(const lmq_value_t *v, char *buf, size_t size)
{
    if (v->type == LMQ_FLOAT)
        snprintf(buf, size, "float %.17g (%a)", v->u.f, v->u.f);
    else if (v->type == LMQ_INT)
        snprintf(buf, size, "int %lld", (long long)v->u.i);
    else
        snprintf(buf, size, "%s", lmq_type_name(v->type));
}

START_TEST(fast_reply_writes_what_jansson_writes)
{
    uint64_t ids[] = {0, 7, (1ULL << 53) - 1};
    for (size_t k = 0; k < N_FAST; k++)
        for (size_t q = 0; q < sizeof ids / sizeof ids[0]; q++) {
            char what[96];
            describe_value(&fast_values[k], what, sizeof what);
            lmq_value_t a = fast_values[k], b = fast_values[k];
            lmq__frames_t bin;
            lmq__frames_init(&bin);
            zmq_msg_t fast, ref;
            ck_assert_int_eq(lmq__reply_value(&fast, ids[q], &a, &bin), 0);
            ck_assert_int_eq(lmq__reply_ok(&ref, true, ids[q], lmq__value_to_json(&b, &bin)), 0);
            ck_assert_uint_eq(bin.n, 0);
            json_t *jf = msg_json(&fast, what), *jr = msg_json(&ref, what);
            ck_assert_msg(json_same(jf, jr), "reply to %s: fast '%.*s', jansson '%.*s'", what,
                          (int)zmq_msg_size(&fast), (const char *)zmq_msg_data(&fast), (int)zmq_msg_size(&ref),
                          (const char *)zmq_msg_data(&ref));
            if (fast_values[k].type == LMQ_FLOAT) {
                /* The text reads back to the very same bits. */
                double back = json_real_value(json_object_get(jf, "result"));
                ck_assert_msg(memcmp(&back, &fast_values[k].u.f, sizeof back) == 0, "%s came back as %a", what, back);
            }
            /* And a client reads it as the same value. */
            lmq__reply_t rep;
            char err[256];
            ck_assert_int_eq(lmq__reply_parse(zmq_msg_data(&fast), zmq_msg_size(&fast), &rep, err, sizeof err), 0);
            ck_assert(rep.ok && rep.has_id && rep.id == ids[q]);
            lmq_value_t got = {0};
            ck_assert_int_eq(lmq__value_from_json(rep.result, &bin, &got, err, sizeof err), 0);
            ck_assert_msg(got.type == fast_values[k].type && memcmp(&got.u, &fast_values[k].u, sizeof(double)) == 0,
                          "%s read back as another value", what);
            lmq__reply_clear(&rep);
            json_decref(jf);
            json_decref(jr);
            zmq_msg_close(&fast);
            zmq_msg_close(&ref);
        }
    /* Non-finite floats have no JSON form. */
    lmq__frames_t bin;
    lmq__frames_init(&bin);
    zmq_msg_t m;
    lmq_value_t bad[] = {lmq_float(NAN), lmq_float(INFINITY), lmq_float(-INFINITY)};
    for (size_t k = 0; k < 3; k++)
        ck_assert_int_eq(lmq__reply_value(&m, 1, &bad[k], &bin), LMQ_ERANGE);
    /* Strings take the general path and come out escaped as jansson does. */
    lmq_value_t str = {0}, str2 = {0};
    ck_assert_int_eq(lmq_value_set_string(&str, "tab\t \"q\" \\ \xc3\xa9 \x01"), 0);
    ck_assert_int_eq(lmq_value_copy(&str2, &str), 0);
    zmq_msg_t ref;
    ck_assert_int_eq(lmq__reply_value(&m, 3, &str, &bin), 0);
    ck_assert_int_eq(lmq__reply_ok(&ref, true, 3, lmq__value_to_json(&str2, &bin)), 0);
    ck_assert_uint_eq(zmq_msg_size(&m), zmq_msg_size(&ref));
    ck_assert(memcmp(zmq_msg_data(&m), zmq_msg_data(&ref), zmq_msg_size(&m)) == 0);
    zmq_msg_close(&m);
    zmq_msg_close(&ref);
    lmq_value_clear(&str);
    lmq_value_clear(&str2);
}
END_TEST

/* The fast request encoder against the general one, for one request. */
static void compare_request(lmq__op_t op, const char *device, const char *name, const lmq_value_t *args, size_t nargs,
                            const lmq_value_t *value, const char *what)
{
    zmq_msg_t fast, ref;
    lmq__frames_t bin;
    lmq__frames_init(&bin);
    ck_assert_msg(lmq__request_encode_fast(&fast, 12345, op, device, name, args, nargs, value) == 0,
                  "%s: the fast encoder declined", what);
    ck_assert_int_eq(lmq__request_encode(&ref, 12345, op, device, name, args, nargs, value, &bin), 0);
    ck_assert_uint_eq(bin.n, 0);
    json_t *jf = msg_json(&fast, what), *jr = msg_json(&ref, what);
    ck_assert_msg(json_same(jf, jr), "%s: fast '%.*s', jansson '%.*s'", what, (int)zmq_msg_size(&fast),
                  (const char *)zmq_msg_data(&fast), (int)zmq_msg_size(&ref), (const char *)zmq_msg_data(&ref));
    /* What the fast encoder writes, the daemon accepts as that request. */
    lmq__request_t req;
    char err[256];
    ck_assert_msg(lmq__request_parse(zmq_msg_data(&fast), zmq_msg_size(&fast), 0, &req, err, sizeof err) == 0, "%s: %s",
                  what, err);
    ck_assert_int_eq(req.op, op);
    ck_assert_uint_eq(req.id, 12345);
    lmq__request_clear(&req);
    json_decref(jf);
    json_decref(jr);
    zmq_msg_close(&fast);
    zmq_msg_close(&ref);
}

START_TEST(fast_request_writes_what_jansson_writes)
{
    compare_request(LMQ__OP_PING, NULL, NULL, NULL, 0, NULL, "ping");
    compare_request(LMQ__OP_GET, "psu1", "voltage", NULL, 0, NULL, "get");
    compare_request(LMQ__OP_CALL, "psu1", "reset", NULL, 0, NULL, "call without arguments");
    /* Every value alone as a set, and all of them as one call's arguments. */
    for (size_t k = 0; k < N_FAST; k++) {
        char what[96];
        describe_value(&fast_values[k], what, sizeof what);
        compare_request(LMQ__OP_SET, "psu1", "voltage", NULL, 0, &fast_values[k], what);
    }
    compare_request(LMQ__OP_CALL, "psu1", "m", fast_values, N_FAST, NULL, "call with every value");

    /* Names that need escaping (or are not ASCII) must fall back to the
     * general encoder, which escapes them as jansson does. */
    static const char *const awkward[] = {"ps\"u", "a\\b", "tab\there", "nl\n", "\x7f", "\xc3\xa9t\xc3\xa9",
                                          "\x01"};
    lmq_value_t one = lmq_float(1.0);
    for (size_t k = 0; k < sizeof awkward / sizeof awkward[0]; k++) {
        zmq_msg_t m;
        ck_assert_msg(lmq__request_encode_fast(&m, 1, LMQ__OP_SET, awkward[k], "voltage", NULL, 0, &one) == 1,
                      "device name %zu went the fast way", k);
        ck_assert_msg(lmq__request_encode_fast(&m, 1, LMQ__OP_GET, "psu1", awkward[k], NULL, 0, NULL) == 1,
                      "property name %zu went the fast way", k);
        lmq__frames_t bin;
        lmq__frames_init(&bin);
        ck_assert_int_eq(lmq__request_encode(&m, 1, LMQ__OP_GET, awkward[k], awkward[k], NULL, 0, NULL, &bin), 0);
        json_t *j = msg_json(&m, awkward[k]);
        ck_assert_str_eq(json_string_value(json_object_get(j, "device")), awkward[k]);
        ck_assert_str_eq(json_string_value(json_object_get(j, "name")), awkward[k]);
        json_decref(j);
        zmq_msg_close(&m);
    }
    /* So do strings, arrays and non-finite floats among the values, and very long names. */
    zmq_msg_t m;
    lmq_value_t s = {0};
    ck_assert_int_eq(lmq_value_set_string(&s, "x"), 0);
    ck_assert_int_eq(lmq__request_encode_fast(&m, 1, LMQ__OP_SET, "psu1", "mode", NULL, 0, &s), 1);
    ck_assert_int_eq(lmq__request_encode_fast(&m, 1, LMQ__OP_CALL, "psu1", "m", &s, 1, NULL), 1);
    lmq_value_clear(&s);
    lmq_value_t nan = lmq_float(NAN);
    ck_assert_int_eq(lmq__request_encode_fast(&m, 1, LMQ__OP_SET, "psu1", "voltage", NULL, 0, &nan), 1);
    char longname[300];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    ck_assert_int_eq(lmq__request_encode_fast(&m, 1, LMQ__OP_GET, "psu1", longname, NULL, 0, NULL), 1);
}
END_TEST

/* ---- a real daemon and a raw DEALER ---- */

static const char *lab_yaml = "devices:\n  - name: psu1\n    driver: sim-psu\n";

/* A raw socket of `type` connected to the daemon's control endpoint; a
 * receive gives up after 5 s. */
static void *raw_socket(void *ctx, int type, const th_daemon_t *d)
{
    void *sock = zmq_socket(ctx, type);
    ck_assert_ptr_nonnull(sock);
    int timeout = 5000, linger = 0;
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    ck_assert_int_eq(zmq_connect(sock, d->control), 0);
    return sock;
}

/* Sends the frames, returns the reply header parsed (caller decrefs). */
static json_t *raw_request(void *sock, const char *const *frames, const size_t *lens, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_int_ge(zmq_send(sock, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0), 0);
    zmq_msg_t m;
    zmq_msg_init(&m);
    ck_assert_msg(zmq_msg_recv(&m, sock, 0) >= 0, "no reply within the receive timeout");
    json_error_t e;
    json_t *j = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, &e);
    ck_assert_msg(j != NULL, "reply is not JSON: %s", e.text);
    while (zmq_msg_more(&m)) {
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        zmq_msg_recv(&m, sock, 0);
    }
    zmq_msg_close(&m);
    return j;
}

static json_t *raw1(void *sock, const char *header)
{
    size_t len = strlen(header);
    return raw_request(sock, &header, &len, 1);
}

/* Receives one reply header (the binary frames after it are dropped). */
static json_t *expect_reply_json(void *sock)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    ck_assert_msg(zmq_msg_recv(&m, sock, 0) >= 0, "no reply within the receive timeout");
    json_t *j = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, NULL);
    ck_assert_msg(j != NULL, "reply is not JSON");
    while (zmq_msg_more(&m)) {
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        zmq_msg_recv(&m, sock, 0);
    }
    zmq_msg_close(&m);
    return j;
}

/* Receives and counts whatever else arrives within ms. */
static int drain(void *sock, int ms)
{
    int count = 0;
    zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
    while (zmq_poll(&item, 1, ms) == 1) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        zmq_msg_recv(&m, sock, 0);
        if (!zmq_msg_more(&m))
            count++;
        zmq_msg_close(&m);
    }
    return count;
}

static void expect_ping_ok(void *sock)
{
    json_t *r = raw1(sock, "{\"v\":1,\"id\":999,\"op\":\"ping\"}");
    ck_assert_msg(json_is_true(json_object_get(r, "ok")), "daemon stopped serving after a bad request");
    ck_assert_int_eq(json_integer_value(json_object_get(r, "id")), 999);
    json_decref(r);
}

static const struct {
    const char *header;
    const char *code;
    const char *text; /* must appear in the message */
} malformed[] = {
    {"this is not json", "PROTO", "not valid JSON"},
    {"\xff\xfe{\"v\":1}", "PROTO", "UTF-8"},
    {"[1,2,3]", "PROTO", "must be a JSON object"},
    {"{\"v\":1,\"id\":1,\"v\":1,\"op\":\"ping\"}", "PROTO", "duplicate"},
    {"{\"id\":1,\"op\":\"ping\"}", "PROTO", "missing key 'v'"},
    {"{\"v\":2,\"id\":1,\"op\":\"ping\"}", "PROTO", "protocol version"},
    {"{\"v\":1,\"op\":\"ping\"}", "PROTO", "missing key 'id'"},
    {"{\"v\":1,\"id\":-4,\"op\":\"ping\"}", "PROTO", "'id' must be"},
    {"{\"v\":1,\"id\":\"x\",\"op\":\"ping\"}", "PROTO", "'id' must be"},
    {"{\"v\":1,\"id\":1}", "PROTO", "missing key 'op'"},
    {"{\"v\":1,\"id\":1,\"op\":7}", "PROTO", "'op' must be a string"},
    {"{\"v\":1,\"id\":1,\"op\":\"explode\"}", "PROTO", "unknown op 'explode'"},
    {"{\"v\":1,\"id\":1,\"op\":\"ping\",\"bogus\":1}", "PROTO", "unknown key 'bogus'"},
    {"{\"v\":1,\"id\":1,\"op\":\"ping\",\"device\":\"psu1\"}", "PROTO", "takes no 'device'"},
    {"{\"v\":1,\"id\":1,\"op\":\"get\",\"device\":\"psu1\"}", "PROTO", "needs 'name'"},
    {"{\"v\":1,\"id\":1,\"op\":\"get\",\"device\":5,\"name\":\"voltage\"}", "PROTO", "'device' must be a string"},
    {"{\"v\":1,\"id\":1,\"op\":\"call\",\"device\":\"psu1\",\"name\":\"reset\",\"args\":{}}", "PROTO",
     "'args' must be an array"},
    {"{\"v\":1,\"id\":1,\"op\":\"get\",\"device\":\"psu9\",\"name\":\"voltage\"}", "NOTFOUND", "no device 'psu9'"},
    {"{\"v\":1,\"id\":1,\"op\":\"describe\",\"device\":\"psu9\"}", "NOTFOUND", "no device 'psu9'"},
    {"{\"v\":1,\"id\":1,\"op\":\"get\",\"device\":\"psu1\",\"name\":\"volts\"}", "NOTFOUND", "no property 'volts'"},
    {"{\"v\":1,\"id\":1,\"op\":\"call\",\"device\":\"psu1\",\"name\":\"fly\"}", "NOTFOUND", "no method 'fly'"},
    {"{\"v\":1,\"id\":1,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"measured_voltage\",\"value\":1}", "READONLY",
     "read-only"},
    {"{\"v\":1,\"id\":1,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":\"high\"}", "ARG",
     "must be float, got string"},
    {"{\"v\":1,\"id\":1,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":-5}", "RANGE", "outside"},
    {"{\"v\":1,\"id\":1,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":[1,2]}", "ARG",
     "binary frames"},
    {"{\"v\":1,\"id\":1,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":"
     "{\"$frame\":1,\"dtype\":\"<f8\",\"shape\":[1]}}",
     "PROTO", "$frame"},
    {"{\"v\":1,\"id\":1,\"op\":\"call\",\"device\":\"psu1\",\"name\":\"reset\",\"args\":[1]}", "ARG",
     "takes 0 arguments"},
};

START_TEST(malformed_requests_get_specific_errors)
{
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    void *sock = raw_socket(ctx, ZMQ_DEALER, &d);
    expect_ping_ok(sock);
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
        json_t *r = raw1(sock, malformed[i].header);
        json_t *err = json_object_get(r, "error");
        const char *code = json_string_value(json_object_get(err, "code"));
        const char *msg = json_string_value(json_object_get(err, "message"));
        ck_assert_msg(json_is_false(json_object_get(r, "ok")), "case %zu: not an error", i);
        ck_assert_msg(code && !strcmp(code, malformed[i].code), "case %zu (%s): code %s, want %s", i,
                      malformed[i].header, code, malformed[i].code);
        ck_assert_msg(msg && strstr(msg, malformed[i].text), "case %zu: message '%s' lacks '%s'", i, msg,
                      malformed[i].text);
        json_decref(r);
        expect_ping_ok(sock);
    }
    zmq_close(sock);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

START_TEST(malformed_framing_and_limits)
{
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    void *sock = raw_socket(ctx, ZMQ_DEALER, &d);

    /* oversize header */
    size_t big = 70000;
    char *huge = malloc(big + 1);
    memset(huge, ' ', big);
    huge[big] = 0;
    memcpy(huge, "{\"v\":1,\"id\":3,\"op\":\"ping\"}", 26);
    json_t *r = raw1(sock, huge);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(json_object_get(r, "error"), "message")), "65536"));
    json_decref(r);
    free(huge);
    expect_ping_ok(sock);

    /* empty header frame */
    const char *empty[] = {""};
    size_t zero[] = {0};
    /* An empty first frame is the REQ delimiter; with nothing after it there is no header. */
    r = raw_request(sock, empty, zero, 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(r, "error"), "code")), "PROTO");
    json_decref(r);
    expect_ping_ok(sock);

    /* 17 binary frames */
    const char *frames[18];
    size_t lens[18];
    frames[0] = "{\"v\":1,\"id\":5,\"op\":\"get\",\"device\":\"psu1\",\"name\":\"voltage\"}";
    lens[0] = strlen(frames[0]);
    for (int i = 1; i < 18; i++)
        frames[i] = "xxxxxxxx", lens[i] = 8;
    r = raw_request(sock, frames, lens, 18);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(r, "error"), "code")), "PROTO");
    json_decref(r);
    expect_ping_ok(sock);

    /* An error reply still carries the request's id. */
    r = raw1(sock, "{\"v\":1,\"id\":77,\"op\":\"get\",\"device\":\"psu9\",\"name\":\"x\"}");
    ck_assert_int_eq(json_integer_value(json_object_get(r, "id")), 77);
    json_decref(r);
    r = raw1(sock, "garbage");
    ck_assert(json_is_null(json_object_get(r, "id")));
    json_decref(r);

    zmq_close(sock);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

START_TEST(req_clients_are_served_too)
{
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    void *sock = raw_socket(ctx, ZMQ_REQ, &d);
    json_t *r = raw1(sock, "{\"v\":1,\"id\":1,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":2}");
    ck_assert(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    r = raw1(sock, "{\"v\":1,\"id\":2,\"op\":\"get\",\"device\":\"psu1\",\"name\":\"voltage\"}");
    ck_assert(json_is_true(json_object_get(r, "ok")));
    ck_assert_double_eq(json_number_value(json_object_get(r, "result")), 2.0);
    json_decref(r);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

/* ---- the limits of docs/protocol.md 4, each at and just past its edge ---- */

static void expect_code(json_t *r, const char *code, const char *what)
{
    const char *got = json_string_value(json_object_get(json_object_get(r, "error"), "code"));
    const char *msg = json_string_value(json_object_get(json_object_get(r, "error"), "message"));
    ck_assert_msg(got && strcmp(got, code) == 0, "%s: code %s (%s), want %s", what, got ? got : "(none)",
                  msg ? msg : "", code);
}

/* A call of psu1.reset (which takes none) with n integer arguments. */
static json_t *call_with_args(void *sock, int n)
{
    char hdr[512];
    int len = snprintf(hdr, sizeof hdr, "{\"v\":1,\"id\":%d,\"op\":\"call\",\"device\":\"psu1\",\"name\":\"reset\","
                                        "\"args\":[", 500 + n);
    for (int i = 0; i < n; i++)
        len += snprintf(hdr + len, sizeof hdr - (size_t)len, "%s%d", i ? "," : "", i);
    snprintf(hdr + len, sizeof hdr - (size_t)len, "]}");
    json_t *r = raw1(sock, hdr);
    ck_assert_int_eq(json_integer_value(json_object_get(r, "id")), 500 + n);
    return r;
}

/* A set of psu1.voltage to an array of `ndim` dimensions of size 1. */
static json_t *set_array_dims(void *sock, int ndim)
{
    char hdr[256];
    int len = snprintf(hdr, sizeof hdr, "{\"v\":1,\"id\":%d,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\","
                                        "\"value\":{\"$frame\":1,\"dtype\":\"<f8\",\"shape\":[", 600 + ndim);
    for (int i = 0; i < ndim; i++)
        len += snprintf(hdr + len, sizeof hdr - (size_t)len, "%s1", i ? "," : "");
    snprintf(hdr + len, sizeof hdr - (size_t)len, "]}}");
    double one = 1.0;
    const char *frames[2] = {hdr, (const char *)&one};
    size_t lens[2] = {strlen(hdr), sizeof one};
    json_t *r = raw_request(sock, frames, lens, 2);
    ck_assert_int_eq(json_integer_value(json_object_get(r, "id")), 600 + ndim);
    return r;
}

START_TEST(argument_and_dimension_limits)
{
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    void *sock = raw_socket(ctx, ZMQ_DEALER, &d);
    /* 32 arguments pass the protocol's limit and reach the method's check;
     * 33 are a malformed request. */
    json_t *r = call_with_args(sock, 32);
    expect_code(r, "ARG", "32 arguments to reset");
    json_decref(r);
    r = call_with_args(sock, 33);
    expect_code(r, "PROTO", "33 arguments");
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(json_object_get(r, "error"), "message")), "32"));
    json_decref(r);
    expect_ping_ok(sock);
    /* 4 dimensions are a valid array (a float property refuses it: ARG);
     * 5 are a malformed reference. */
    r = set_array_dims(sock, 4);
    expect_code(r, "ARG", "a 4-d array for a float");
    json_decref(r);
    r = set_array_dims(sock, 5);
    expect_code(r, "PROTO", "a 5-d array");
    json_decref(r);
    expect_ping_ok(sock);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

static void free_frame(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Sends a get of psu1.voltage followed by one binary frame of `size` bytes
 * (handed to ZeroMQ, not copied). */
static void send_get_with_frame(void *sock, int id, size_t size)
{
    char hdr[128];
    snprintf(hdr, sizeof hdr, "{\"v\":1,\"id\":%d,\"op\":\"get\",\"device\":\"psu1\",\"name\":\"voltage\"}", id);
    ck_assert_int_ge(zmq_send(sock, hdr, strlen(hdr), ZMQ_SNDMORE), 0);
    char *big = malloc(size);
    ck_assert_ptr_nonnull(big);
    memset(big, 0x5a, size);
    zmq_msg_t m;
    ck_assert_int_eq(zmq_msg_init_data(&m, big, size, free_frame, NULL), 0);
    ck_assert_int_ge(zmq_msg_send(&m, sock, 0), 0);
}

/* Waits up to ms for a ZMQ_EVENT_DISCONNECTED on the monitor socket. */
static bool saw_disconnect(void *mon, int ms)
{
    double end = th_now_ms() + ms;
    zmq_pollitem_t item = {mon, 0, ZMQ_POLLIN, 0};
    while (th_now_ms() < end && zmq_poll(&item, 1, (long)(end - th_now_ms()) + 1) == 1) {
        zmq_msg_t ev, addr;
        zmq_msg_init(&ev);
        zmq_msg_init(&addr);
        zmq_msg_recv(&ev, mon, 0);
        zmq_msg_recv(&addr, mon, 0);
        uint16_t event = 0;
        if (zmq_msg_size(&ev) >= 2)
            memcpy(&event, zmq_msg_data(&ev), 2);
        zmq_msg_close(&ev);
        zmq_msg_close(&addr);
        if (event == ZMQ_EVENT_DISCONNECTED)
            return true;
    }
    return false;
}

START_TEST(frame_size_limit_drops_only_that_connection)
{
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    void *big = raw_socket(ctx, ZMQ_DEALER, &d), *other = raw_socket(ctx, ZMQ_DEALER, &d);
    ck_assert_int_eq(zmq_socket_monitor(big, "inproc://mon-big", ZMQ_EVENT_DISCONNECTED), 0);
    ck_assert_int_eq(zmq_socket_monitor(other, "inproc://mon-other", ZMQ_EVENT_DISCONNECTED), 0);
    void *mon_big = zmq_socket(ctx, ZMQ_PAIR), *mon_other = zmq_socket(ctx, ZMQ_PAIR);
    int linger = 0;
    zmq_setsockopt(mon_big, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(mon_other, ZMQ_LINGER, &linger, sizeof linger);
    ck_assert_int_eq(zmq_connect(mon_big, "inproc://mon-big"), 0);
    ck_assert_int_eq(zmq_connect(mon_other, "inproc://mon-other"), 0);
    expect_ping_ok(big);
    expect_ping_ok(other);

    /* Exactly 64 MiB is within the limit: the request is answered. */
    send_get_with_frame(big, 41, (size_t)LMQ__MAX_FRAME);
    json_t *r = expect_reply_json(big);
    ck_assert_int_eq(json_integer_value(json_object_get(r, "id")), 41);
    json_decref(r);
    ck_assert(!saw_disconnect(mon_big, 0));

    /* One byte more: ZeroMQ drops that connection, nothing is answered... */
    send_get_with_frame(big, 42, (size_t)LMQ__MAX_FRAME + 1);
    ck_assert_msg(saw_disconnect(mon_big, 10000), "the daemon kept a connection that sent a 64 MiB + 1 frame");
    /* ...and only that one: the other client is served, never dropped. */
    expect_ping_ok(other);
    ck_assert(!saw_disconnect(mon_other, 0));
    /* The dropped client reconnects by itself and is served again; the
     * oversized request got no reply. */
    expect_ping_ok(big);
    ck_assert_int_eq(drain(big, 300), 0);
    ck_assert_int_eq(drain(other, 0), 0);

    zmq_close(mon_big);
    zmq_close(mon_other);
    zmq_close(big);
    zmq_close(other);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

/* ---- pipelined calls through the public proxy ---- */

static const char *pipe_yaml = "devices:\n  - name: psu1\n    driver: sim-psu\n"
                               "    options: {load_diode: false, noise: 0, slew_v_per_s: 0}\n";

START_TEST(pipelined_calls_are_matched_by_id)
{
    th_daemon_t d;
    th_daemon_start(&d, pipe_yaml);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = lmq_proxy_new(ctx, d.control, "psu1");
    ck_assert_ptr_nonnull(p);
    lmq_proxy_set_timeout(p, 20000);
    lmq_value_t on = lmq_bool(true), limit = lmq_float(3.0);
    ck_assert_int_eq(lmq_proxy_set(p, "current_limit", &limit), 0);
    ck_assert_int_eq(lmq_proxy_set(p, "output", &on), 0);

    /* K sweeps in flight at once, each with its own shape and start, so a
     * result tells which request it answers; every 5th asks for 1 point,
     * below sweep's minimum of 2, and must fail with its own id. */
    enum { K = 40 };
    uint64_t ids[K];
    for (int k = 0; k < K; k++) {
        int64_t points = k % 5 == 4 ? 1 : 2 + k;
        lmq_value_t args[3] = {lmq_float(0.25 * k), lmq_float(0.25 * k + 1.0), lmq_int(points)};
        ck_assert_int_eq(lmq_proxy_send_call(p, "sweep", args, 3, &ids[k]), 0);
        for (int j = 0; j < k; j++)
            ck_assert_msg(ids[j] != ids[k], "requests %d and %d share id %llu", j, k, (unsigned long long)ids[k]);
    }
    bool answered[K] = {false};
    for (int n = 0; n < K; n++) {
        uint64_t id = 0;
        lmq_value_t res = {0};
        int rc = lmq_proxy_recv(p, &id, &res);
        int k = -1;
        for (int j = 0; j < K; j++)
            if (ids[j] == id)
                k = j;
        ck_assert_msg(k >= 0, "reply %d has id %llu, which no request had (rc %s)", n, (unsigned long long)id,
                      lmq_status_name(rc));
        ck_assert_msg(!answered[k], "request %d answered twice", k);
        answered[k] = true;
        if (k % 5 == 4) {
            ck_assert_msg(rc == LMQ_ERANGE, "sweep of 1 point (request %d): %s", k, lmq_status_name(rc));
            lmq_value_clear(&res);
            continue;
        }
        ck_assert_msg(rc == 0, "request %d: %s: %s", k, lmq_status_name(rc), lmq_proxy_last_error(p));
        ck_assert_int_eq(res.type, LMQ_ARRAY);
        ck_assert_uint_eq(res.u.a.ndim, 2);
        ck_assert_uint_eq(res.u.a.shape[0], (size_t)(2 + k));
        ck_assert_uint_eq(res.u.a.shape[1], 2);
        const double *iv = res.u.a.data;
        ck_assert_double_eq_tol(iv[0], 0.25 * k, 1e-9);
        ck_assert_double_eq_tol(iv[2 * (size_t)(1 + k)], 0.25 * k + 1.0, 1e-9);
        lmq_value_clear(&res);
    }
    /* Nothing more is on the way. */
    lmq_proxy_set_timeout(p, 300);
    uint64_t id;
    ck_assert_int_eq(lmq_proxy_recv(p, &id, NULL), LMQ_ETIMEOUT);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

/* ---- a storm of mutated requests ---- */

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: deterministic, so a failure replays with the same seed */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

/* Request bodies after the id (each request gets its own id in front). */
static const char *const storm_templates[] = {
    "\"op\":\"ping\"}",
    "\"op\":\"list\"}",
    "\"op\":\"stats\",\"device\":\"psu1\"}",
    "\"op\":\"describe\",\"device\":\"psu1\"}",
    "\"op\":\"get\",\"device\":\"psu1\",\"name\":\"voltage\"}",
    "\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":1.5}",
    "\"op\":\"call\",\"device\":\"psu1\",\"name\":\"reset\",\"args\":[]}",
    "\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":{\"$frame\":1,\"dtype\":\"<f8\",\"shape\":[1]}}",
};

enum { STORM_MAX_FRAMES = 1 + 1 + 20 };

/* The id the reply must carry, decided from the bytes as sent: the header is
 * the first frame, or the second when the first is an empty delimiter
 * (docs/protocol.md 2); its id can be read when jansson, as the daemon uses
 * it, parses it as an object with a valid id. False: the reply's id is null. */
static bool storm_expected_id(char frames[][512], const size_t *lens, size_t n, json_int_t *id)
{
    size_t at = (n >= 2 && lens[0] == 0) ? 1 : 0;
    if (at >= n)
        return false;
    json_t *j = json_loadb(frames[at], lens[at], JSON_REJECT_DUPLICATES, NULL);
    json_t *jid = json_object_get(j, "id");
    bool ok = json_is_integer(jid) && json_integer_value(jid) >= 0 &&
              json_integer_value(jid) < ((json_int_t)1 << 53);
    if (ok)
        *id = json_integer_value(jid);
    json_decref(j);
    return ok;
}

/* Receives one reply (skipping a REQ-style empty delimiter), checks it is a
 * well-formed protocol reply, and returns its id (-1 for null). */
static json_int_t expect_reply(void *sock, size_t i, uint64_t seed)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    ck_assert_msg(zmq_msg_recv(&m, sock, 0) >= 0, "request %zu (seed %llu): no reply", i, (unsigned long long)seed);
    if (zmq_msg_size(&m) == 0 && zmq_msg_more(&m)) {
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        zmq_msg_recv(&m, sock, 0);
    }
    json_t *j = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, NULL);
    ck_assert_msg(j && json_is_boolean(json_object_get(j, "ok")), "request %zu (seed %llu): malformed reply", i,
                  (unsigned long long)seed);
    if (json_is_false(json_object_get(j, "ok"))) {
        json_t *e = json_object_get(j, "error");
        ck_assert(json_is_string(json_object_get(e, "code")));
        ck_assert(json_string_length(json_object_get(e, "message")) > 0);
    }
    json_t *jid = json_object_get(j, "id");
    ck_assert_msg(json_is_integer(jid) || json_is_null(jid), "request %zu (seed %llu): reply id is neither an "
                  "integer nor null", i, (unsigned long long)seed);
    json_int_t id = json_is_integer(jid) ? json_integer_value(jid) : -1;
    json_decref(j);
    while (zmq_msg_more(&m)) {
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        zmq_msg_recv(&m, sock, 0);
    }
    zmq_msg_close(&m);
    return id;
}

START_TEST(random_requests_never_stop_the_daemon)
{
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    void *sock = raw_socket(ctx, ZMQ_DEALER, &d);
    uint64_t seed = 0x1ab0c0ffeeULL, rng = seed;
    enum { N = 3000 };
    size_t with_id = 0;
    for (size_t i = 0; i < N; i++) {
        /* Every request has its own id, unlike any other in the run. */
        json_int_t sent_id = 100000 + (json_int_t)i;
        const char *t = storm_templates[rng_next(&rng) % (sizeof storm_templates / sizeof *storm_templates)];
        static char frames[STORM_MAX_FRAMES][512];
        size_t lens[STORM_MAX_FRAMES], nf = 0;
        bool delim = false;
        char *hdr = frames[0];
        int hl = snprintf(hdr, 512, "{\"v\":1,\"id\":%lld,%s", (long long)sent_id, t);
        ck_assert(hl > 0 && hl < 400);
        size_t len = (size_t)hl;
        /* A few byte-level mutations: flips, random bytes, truncation, insertion. */
        int muts = (int)(rng_next(&rng) % 4);
        for (int k = 0; k < muts && len > 0; k++) {
            uint64_t r = rng_next(&rng);
            size_t at = (size_t)(r >> 8) % len;
            switch (r % 4) {
            case 0:
                hdr[at] ^= (char)(1u << ((r >> 40) % 8));
                break;
            case 1:
                hdr[at] = (char)(r >> 48);
                break;
            case 2:
                len = at;
                break;
            default:
                if (len + 1 < 512) {
                    memmove(hdr + at + 1, hdr + at, len - at);
                    hdr[at] = "{}[]\",:0\\\xc3\xff"[(r >> 32) % 12];
                    len++;
                }
            }
        }
        /* 0-3 binary frames of random sizes, sometimes an empty first frame
         * (a REQ delimiter), rarely more frames than allowed. */
        size_t nbin = rng_next(&rng) % 4;
        if (rng_next(&rng) % 50 == 0)
            nbin = 17 + rng_next(&rng) % 4;
        delim = rng_next(&rng) % 10 == 0;
        if (delim) {
            memmove(frames[1], hdr, len);
            lens[nf++] = 0;
        }
        lens[nf++] = len;
        for (size_t b = 0; b < nbin; b++) {
            char *junk = frames[nf];
            size_t jl = rng_next(&rng) % 24;
            for (size_t q = 0; q < jl; q++)
                junk[q] = (char)rng_next(&rng);
            lens[nf++] = jl;
        }
        for (size_t f = 0; f < nf; f++)
            ck_assert_int_ge(zmq_send(sock, frames[f], lens[f], f + 1 < nf ? ZMQ_SNDMORE : 0), 0);

        json_int_t want = -1;
        bool has = storm_expected_id(frames, lens, nf, &want);
        json_int_t got = expect_reply(sock, i, seed);
        with_id += has;
        if (has && nbin > LMQ__MAX_BINFRAMES)
            /* Too many frames may be refused before the header is read. */
            ck_assert_msg(got == want || got == -1, "request %zu (seed %llu, %zu frames): reply id %lld, sent %lld",
                          i, (unsigned long long)seed, nf, (long long)got, (long long)want);
        else if (has)
            ck_assert_msg(got == want, "request %zu (seed %llu): reply id %lld, the header's id is %lld: %.*s", i,
                          (unsigned long long)seed, (long long)got, (long long)want, (int)lens[delim], frames[delim]);
        else
            ck_assert_msg(got == -1, "request %zu (seed %llu): reply id %lld to a header whose id cannot be read: "
                          "%.*s", i, (unsigned long long)seed, (long long)got, (int)lens[delim], frames[delim]);
        if (i % 100 == 99)
            expect_ping_ok(sock);
    }
    /* Both kinds were exercised, and nothing was answered twice: every reply
     * above was the one awaited, and none is left over. */
    ck_assert_msg(with_id > N / 4 && with_id < N - N / 20, "%zu of %d headers kept a readable id", with_id, N);
    ck_assert_int_eq(drain(sock, 500), 0);
    /* The device still works, and the daemon stops cleanly (sanitizers clean). */
    json_t *r = raw1(sock, "{\"v\":1,\"id\":1,\"op\":\"get\",\"device\":\"psu1\",\"name\":\"voltage\"}");
    ck_assert(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("proto");
    TCase *codec = tcase_create("codec");
    tcase_add_test(codec, parse_valid_request);
    tcase_add_test(codec, parse_keeps_id_on_error);
    tcase_add_test(codec, parse_lock_keys_and_appended_keys);
    tcase_add_test(codec, array_value_round_trip);
    tcase_add_test(codec, scalar_values_encode_as_json);
    tcase_add_test(codec, data_header_is_valid_json);
    tcase_add_test(codec, fast_reply_writes_what_jansson_writes);
    tcase_add_test(codec, fast_request_writes_what_jansson_writes);
    suite_add_tcase(s, codec);
    TCase *daemon = tcase_create("daemon");
    tcase_set_timeout(daemon, 60);
    tcase_add_test(daemon, malformed_requests_get_specific_errors);
    tcase_add_test(daemon, malformed_framing_and_limits);
    tcase_add_test(daemon, req_clients_are_served_too);
    tcase_add_test(daemon, random_requests_never_stop_the_daemon);
    tcase_add_test(daemon, argument_and_dimension_limits);
    tcase_add_test(daemon, frame_size_limit_drops_only_that_connection);
    tcase_add_test(daemon, pipelined_calls_are_matched_by_id);
    suite_add_tcase(s, daemon);
    return th_run_suite(s);
}
