/* Wire protocol v1: the codec itself, and a real labmqd answering a table of
 * malformed requests, each with its specific error, while it keeps serving. */
#include <check.h>
#include <jansson.h>
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
     "ARG", "$frame"},
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
    tcase_add_test(codec, array_value_round_trip);
    tcase_add_test(codec, scalar_values_encode_as_json);
    tcase_add_test(codec, data_header_is_valid_json);
    suite_add_tcase(s, codec);
    TCase *daemon = tcase_create("daemon");
    tcase_set_timeout(daemon, 60);
    tcase_add_test(daemon, malformed_requests_get_specific_errors);
    tcase_add_test(daemon, malformed_framing_and_limits);
    tcase_add_test(daemon, req_clients_are_served_too);
    tcase_add_test(daemon, random_requests_never_stop_the_daemon);
    suite_add_tcase(s, daemon);
    return th_run_suite(s);
}
