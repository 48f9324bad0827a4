/* Flow-controlled stream subscriptions (docs/protocol.md 3.2): a slow lossy
 * subscriber does not reduce what a lossless one receives; the daemon holds at
 * most the configured bytes per subscriber (its stats and its RSS); lossless
 * drops the newest and lossy the oldest, counted exactly; bad requests get
 * clear errors; unsubscribed streams are not produced; an expired lease frees
 * the queue and the client library subscribes again by itself. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"
#include "proto.h"

/* ---- a source whose blocks the test publishes itself, exactly ---- */

#define BLOCK_DOUBLES 1000 /* 8000-byte payloads */

static int burst(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    (void)state;
    (void)result;
    static double data[BLOCK_DOUBLES];
    for (int64_t i = 0; i < args[0].u.i; i++) {
        int rc = lmq_dev_publish(dev, 0, lmq_clock_real_ns(), data, sizeof data);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int source_open(lmq_dev_t *dev, void **state)
{
    size_t shape[1] = {BLOCK_DOUBLES};
    *state = NULL;
    return lmq_dev_stream_shape(dev, 0, 1, shape);
}

static void source_close(lmq_dev_t *dev, void *state)
{
    (void)dev;
    (void)state;
}

static const lmq_arg_t burst_args[] = {
    {.name = "n", .type = LMQ_INT, .doc = "blocks", .limited = true, .min = 0, .max = 10000}, {.name = NULL}};
static const lmq_method_t source_methods[] = {
    {.name = "burst", .doc = "publishes n blocks at once", .args = burst_args, .fn = burst}, {.name = NULL}};
static const lmq_stream_t source_streams[] = {
    {.name = "data", .doc = "blocks on demand", .dtype = LMQ_F64, .unit = "V"},
    {.name = "other", .doc = "never published", .dtype = LMQ_F64, .unit = ""},
    {.name = NULL}};
static const lmq_driver_t source_driver = {
    .name = "test-source",
    .description = "publishes blocks when asked (test_flow)",
    .open = source_open,
    .close = source_close,
    .methods = source_methods,
    .streams = source_streams,
};

typedef struct lab {
    void *zctx;
    lmq_daemon_t *d;
    lmq_proxy_t *src; /* calls burst */
    lmq_proxy_t *admin;
} lab_t;

#define CONTROL "inproc://flow"
#define DATA "inproc://flow-data"

static void lab_start(lab_t *l, size_t memory)
{
    l->zctx = zmq_ctx_new();
    l->d = lmq_daemon_new(l->zctx, CONTROL, DATA, NULL);
    ck_assert_int_eq(lmq_daemon_add(l->d, "src", &source_driver, "", NULL), 0);
    if (memory)
        ck_assert_int_eq(lmq_daemon_set_subscriber_memory(l->d, memory), 0);
    ck_assert_int_eq(lmq_daemon_start(l->d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(l->d, 5000), 0);
    l->src = lmq_proxy_new(l->zctx, CONTROL, "src");
    l->admin = lmq_proxy_new(l->zctx, CONTROL, NULL);
}

static void lab_stop(lab_t *l)
{
    lmq_proxy_destroy(&l->src);
    lmq_proxy_destroy(&l->admin);
    ck_assert_int_eq(lmq_daemon_stop(l->d), 0);
    lmq_daemon_destroy(&l->d);
    zmq_ctx_term(l->zctx);
}

static void publish(lab_t *l, int n)
{
    lmq_value_t arg = lmq_int(n);
    int rc = lmq_proxy_call(l->src, "burst", &arg, 1, NULL);
    ck_assert_msg(rc == 0, "burst: %s", lmq_proxy_last_error(l->src));
}

static json_t *stats_of(lmq_proxy_t *p)
{
    char *text = NULL;
    ck_assert_int_eq(lmq_proxy_stats(p, &text), 0);
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    ck_assert_ptr_nonnull(j);
    return j;
}

static json_t *stream_stats(json_t *stats, const char *device, const char *stream)
{
    json_t *devs = json_object_get(stats, "devices");
    for (size_t i = 0; i < json_array_size(devs); i++) {
        json_t *dev = json_array_get(devs, i), *streams = json_object_get(dev, "streams");
        if (strcmp(json_string_value(json_object_get(dev, "name")), device) != 0)
            continue;
        for (size_t k = 0; k < json_array_size(streams); k++)
            if (!strcmp(json_string_value(json_object_get(json_array_get(streams, k), "name")), stream))
                return json_array_get(streams, k);
    }
    ck_abort_msg("no stats for %s/%s", device, stream);
    return NULL;
}

static json_int_t stat_int(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    ck_assert_msg(json_is_integer(v), "no integer '%s' in stats", key);
    return json_integer_value(v);
}

/* The stats entry of subscription `id`, or NULL when it is gone. */
static json_t *subscriber(json_t *stats, json_int_t id)
{
    json_t *subs = json_object_get(stats, "subscribers");
    for (size_t i = 0; i < json_array_size(subs); i++)
        if (stat_int(json_array_get(subs, i), "subscription") == id)
            return json_array_get(subs, i);
    return NULL;
}

/* ---- a raw protocol client: a DEALER that sees replies and blocks ---- */

typedef struct msg {
    bool reply;
    json_t *json; /* the reply, or the block's header */
    char topic[64];
    size_t parts;
} msg_t;

static void *dealer(void *zctx, const char *ep)
{
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    ck_assert_int_eq(zmq_connect(s, ep), 0);
    return s;
}

/* The next message within timeout_ms; false when none came. */
static bool next_msg(void *sock, int timeout_ms, msg_t *m)
{
    memset(m, 0, sizeof *m);
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) != 1)
        return false;
    zmq_msg_t part;
    bool more = true;
    while (more) {
        zmq_msg_init(&part);
        ck_assert_int_ge(zmq_msg_recv(&part, sock, 0), 0);
        more = zmq_msg_more(&part);
        const char *data = zmq_msg_data(&part);
        size_t size = zmq_msg_size(&part);
        if (m->parts == 0)
            lmq__handoff_acquire(zmq_msg_data(&part)); /* a reply the broker released in send_reply */
        if (m->parts == 0 && size && data[0] == '{') {
            m->reply = true;
            m->json = json_loadb(data, size, 0, NULL);
        } else if (m->parts == 0) {
            snprintf(m->topic, sizeof m->topic, "%.*s", (int)size, data);
        } else if (m->parts == 1 && !m->reply) {
            m->json = json_loadb(data, size, 0, NULL);
        }
        m->parts++;
        zmq_msg_close(&part);
    }
    ck_assert_ptr_nonnull(m->json);
    return true;
}

static uint64_t block_seq(const msg_t *m) { return (uint64_t)json_integer_value(json_object_get(m->json, "seq")); }

/* Sends a request (text without v and id) and returns its reply; blocks that
 * arrive meanwhile are counted into *blocks (may be NULL: none expected). */
static json_t *request(void *sock, const char *body, int *blocks)
{
    static int id = 0;
    char buf[1024];
    snprintf(buf, sizeof buf, "{\"v\":1,\"id\":%d,%s}", ++id, body);
    ck_assert_int_eq(zmq_send(sock, buf, strlen(buf), 0), (int)strlen(buf));
    msg_t m;
    for (;;) {
        ck_assert_msg(next_msg(sock, 5000, &m), "no reply to %s", buf);
        if (m.reply)
            break;
        ck_assert_msg(blocks != NULL, "a block arrived before the reply to %s", buf);
        (*blocks)++;
        json_decref(m.json);
    }
    ck_assert_int_eq(json_integer_value(json_object_get(m.json, "id")), id);
    return m.json;
}

static void expect_error(void *sock, const char *body, const char *code, const char *text)
{
    json_t *r = request(sock, body, NULL);
    ck_assert_msg(!strcmp(th_reply_code(r), code), "%s: expected %s, got %s (%s)", body, code, th_reply_code(r),
                  th_reply_message(r));
    ck_assert_msg(strstr(th_reply_message(r), text), "%s: message '%s' lacks '%s'", body, th_reply_message(r), text);
    json_decref(r);
}

static json_int_t subscribe_ok(void *sock, const char *body)
{
    json_t *r = request(sock, body, NULL);
    ck_assert_msg(!strcmp(th_reply_code(r), "OK"), "%s: %s", body, th_reply_message(r));
    json_int_t id = stat_int(json_object_get(r, "result"), "subscription");
    json_decref(r);
    return id;
}

/* Receives exactly `n` blocks (no more within a short wait); returns their
 * seqs in order. */
static void expect_blocks(void *sock, size_t n, uint64_t *seqs)
{
    msg_t m;
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(next_msg(sock, 5000, &m), "block %zu of %zu missing", i + 1, n);
        ck_assert_msg(!m.reply, "a reply where a block was expected");
        ck_assert_str_eq(m.topic, "src/data");
        ck_assert_uint_eq(m.parts, 3);
        seqs[i] = block_seq(&m);
        json_decref(m.json);
    }
    ck_assert_msg(!next_msg(sock, 200, &m), "more than %zu blocks arrived", n);
}

static void credit(void *sock, int n)
{
    char body[64];
    snprintf(body, sizeof body, "\"op\":\"credit\",\"n\":%d", n);
    json_t *r = request(sock, body, NULL);
    ck_assert_msg(!strcmp(th_reply_code(r), "OK"), "credit: %s", th_reply_message(r));
    json_decref(r);
}

/* What one block counts against the bound: its frames (topic, a header of
 * about 110 bytes, 8000 bytes of payload) and the protocol's 256 bytes of
 * bookkeeping. The bound is set between k and k + 1 blocks so that exactly k
 * fit. */
static size_t bound_for(int k) { return (size_t)k * (8000 + 500) + 100; }

START_TEST(lossless_drops_newest_exactly)
{
    lab_t l;
    lab_start(&l, bound_for(5));
    void *c = dealer(l.zctx, CONTROL);
    json_int_t id = subscribe_ok(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\"],\"mode\":\"lossless\",\"window\":8");
    publish(&l, 10);
    /* 5 fit the bound (all sent: the window is 8); 5..9 are the newest, dropped. */
    uint64_t seqs[10];
    expect_blocks(c, 5, seqs);
    for (int i = 0; i < 5; i++)
        ck_assert_uint_eq(seqs[i], (uint64_t)i);
    json_t *st = stats_of(l.admin);
    json_t *sub = subscriber(st, id);
    ck_assert_ptr_nonnull(sub);
    ck_assert_int_eq(stat_int(sub, "delivered"), 5);
    ck_assert_int_eq(stat_int(sub, "dropped"), 5);
    ck_assert_int_eq(stat_int(sub, "queued_blocks"), 0);
    ck_assert_int_eq(stat_int(sub, "in_flight_blocks"), 5);
    ck_assert_int_le(stat_int(sub, "in_flight_bytes"), (json_int_t)bound_for(5));
    ck_assert_int_eq(stat_int(stream_stats(st, "src", "data"), "subscriber_drops"), 5);
    ck_assert_int_eq(stat_int(st, "subscriber_memory"), (json_int_t)bound_for(5));
    json_decref(st);
    /* Consumed: the room is back; the next blocks arrive, the gap stays. */
    credit(c, 5);
    publish(&l, 3);
    expect_blocks(c, 3, seqs);
    for (int i = 0; i < 3; i++)
        ck_assert_uint_eq(seqs[i], (uint64_t)(10 + i));
    /* Within the window, beyond the bound: the queue never holds more. */
    publish(&l, 4);
    expect_blocks(c, 2, seqs);
    ck_assert_uint_eq(seqs[0], 13);
    ck_assert_uint_eq(seqs[1], 14);
    st = stats_of(l.admin);
    ck_assert_int_eq(stat_int(subscriber(st, id), "dropped"), 5 + 2);
    json_decref(st);
    json_t *r = request(c, "\"op\":\"unsubscribe\"", NULL);
    ck_assert_str_eq(th_reply_code(r), "OK");
    ck_assert_int_eq(stat_int(json_object_get(r, "result"), "delivered"), 10);
    ck_assert_int_eq(stat_int(json_object_get(r, "result"), "dropped"), 7);
    json_decref(r);
    zmq_close(c);
    lab_stop(&l);
}
END_TEST

START_TEST(lossy_drops_oldest_exactly)
{
    lab_t l;
    lab_start(&l, 0);
    /* By count: a lossy subscriber has at most `window` blocks queued. */
    void *c = dealer(l.zctx, CONTROL);
    json_int_t id = subscribe_ok(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\"],\"mode\":\"lossy\",\"window\":2");
    publish(&l, 10);
    uint64_t seqs[10];
    expect_blocks(c, 2, seqs); /* 0, 1 sent; 2..7 dropped as older; 8, 9 queued */
    ck_assert_uint_eq(seqs[0], 0);
    ck_assert_uint_eq(seqs[1], 1);
    json_t *st = stats_of(l.admin);
    json_t *sub = subscriber(st, id);
    ck_assert_int_eq(stat_int(sub, "dropped"), 6);
    ck_assert_int_eq(stat_int(sub, "queued_blocks"), 2);
    ck_assert_int_eq(stat_int(stream_stats(st, "src", "data"), "subscriber_drops"), 6);
    json_decref(st);
    credit(c, 2);
    expect_blocks(c, 2, seqs);
    ck_assert_uint_eq(seqs[0], 8);
    ck_assert_uint_eq(seqs[1], 9);
    zmq_close(c);
    lab_stop(&l);

    /* By bytes: 3 blocks in flight, room for one more: the newest stays. */
    lab_start(&l, bound_for(4));
    c = dealer(l.zctx, CONTROL);
    id = subscribe_ok(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\"],\"mode\":\"lossy\",\"window\":3");
    publish(&l, 10);
    expect_blocks(c, 3, seqs);
    ck_assert_uint_eq(seqs[2], 2);
    st = stats_of(l.admin);
    sub = subscriber(st, id);
    ck_assert_int_eq(stat_int(sub, "dropped"), 6); /* 3..8 */
    ck_assert_int_eq(stat_int(sub, "queued_blocks"), 1);
    ck_assert_int_le(stat_int(sub, "queued_bytes") + stat_int(sub, "in_flight_bytes"), (json_int_t)bound_for(4));
    json_decref(st);
    credit(c, 3);
    expect_blocks(c, 1, seqs);
    ck_assert_uint_eq(seqs[0], 9);
    zmq_close(c);
    lab_stop(&l);
}
END_TEST

START_TEST(bad_requests_get_clear_errors)
{
    lab_t l;
    lab_start(&l, 0);
    void *c = dealer(l.zctx, CONTROL);
    expect_error(c, "\"op\":\"subscribe\",\"topics\":\"src/data\",\"mode\":\"lossy\"", "PROTO", "'topics' must be");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[1],\"mode\":\"lossy\"", "PROTO", "array of strings");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[],\"mode\":\"lossy\"", "ARG", "'topics' is empty");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\"]", "PROTO", "needs 'mode'");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\"],\"mode\":\"fast\"", "ARG",
                 "mode must be \"lossless\" or \"lossy\"");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\"],\"mode\":\"lossy\",\"window\":0", "RANGE",
                 "window 0 is outside 1..1000");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\"],\"mode\":\"lossy\",\"window\":1001", "RANGE",
                 "outside 1..1000");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\"],\"mode\":\"lossy\",\"window\":2.5", "PROTO",
                 "'window' must be an integer");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[\"nope/data\"],\"mode\":\"lossy\"", "NOTFOUND",
                 "no device 'nope' (devices: src)");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[\"src/wave\"],\"mode\":\"lossy\"", "NOTFOUND",
                 "src has no stream 'wave' (streams: data, other)");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[\"src/\"],\"mode\":\"lossy\"", "ARG", "not DEVICE/STREAM");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[\"$events/nope\"],\"mode\":\"lossy\"", "NOTFOUND",
                 "no device 'nope'");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\",\"src/data\"],\"mode\":\"lossy\"", "ARG",
                 "given twice");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\"],\"mode\":\"lossy\",\"device\":\"src\"", "PROTO",
                 "takes no 'device'");
    expect_error(c, "\"op\":\"credit\",\"n\":1", "NOTFOUND", "no flow subscription on this connection");
    expect_error(c, "\"op\":\"credit\"", "PROTO", "needs 'n'");
    expect_error(c, "\"op\":\"unsubscribe\"", "NOTFOUND", "no flow subscription");
    /* A REQ socket cannot take blocks after its one reply. */
    void *req = zmq_socket(l.zctx, ZMQ_REQ);
    int linger = 0;
    zmq_setsockopt(req, ZMQ_LINGER, &linger, sizeof linger);
    ck_assert_int_eq(zmq_connect(req, CONTROL), 0);
    const char *sub = "{\"v\":1,\"id\":1,\"op\":\"subscribe\",\"topics\":[\"src/data\"],\"mode\":\"lossy\"}";
    zmq_send(req, sub, strlen(sub), 0);
    json_t *r = th_recv_reply(req, 5000);
    ck_assert_str_eq(th_reply_code(r), "PROTO");
    ck_assert_ptr_nonnull(strstr(th_reply_message(r), "needs a DEALER"));
    json_decref(r);
    zmq_close(req);

    /* Nobody subscribed: the stream is not produced (seq is not spent). */
    publish(&l, 3);
    json_t *st = stats_of(l.admin);
    ck_assert_int_eq(stat_int(stream_stats(st, "src", "data"), "published"), 0);
    json_decref(st);
    subscribe_ok(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\",\"$events/src\"],\"mode\":\"lossless\",\"window\":4");
    expect_error(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\"],\"mode\":\"lossy\"", "PROTO",
                 "already has flow subscription");
    expect_error(c, "\"op\":\"credit\",\"n\":1", "RANGE", "credit 1 is outside 0..0");
    expect_error(c, "\"op\":\"credit\",\"n\":-1", "RANGE", "outside");
    publish(&l, 3);
    uint64_t seqs[3];
    expect_blocks(c, 3, seqs);
    ck_assert_uint_eq(seqs[0], 0);
    expect_error(c, "\"op\":\"credit\",\"n\":4", "RANGE", "credit 4 is outside 0..3");
    credit(c, 0); /* a renewal */
    credit(c, 3);
    st = stats_of(l.admin);
    ck_assert_int_eq(stat_int(stream_stats(st, "src", "data"), "published"), 3);
    ck_assert_int_eq(stat_int(stream_stats(st, "src", "other"), "published"), 0);
    json_decref(st);
    r = request(c, "\"op\":\"unsubscribe\"", NULL);
    ck_assert_str_eq(th_reply_code(r), "OK");
    json_decref(r);
    publish(&l, 3);
    st = stats_of(l.admin);
    ck_assert_int_eq(stat_int(stream_stats(st, "src", "data"), "published"), 3);
    ck_assert_int_eq(json_array_size(json_object_get(st, "subscribers")), 0);
    json_decref(st);
    zmq_close(c);
    lab_stop(&l);
}
END_TEST

/* A lease without credit or renewal ends the subscription and frees its
 * queue; a client that has gone is dropped at the first send. */
START_TEST(lease_expiry_frees_the_queue)
{
    lab_t l;
    lab_start(&l, 0);
    void *c = dealer(l.zctx, CONTROL);
    json_int_t id = subscribe_ok(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\"],\"mode\":\"lossless\",\"window\":1");
    publish(&l, 5);
    json_t *st = stats_of(l.admin);
    ck_assert_int_eq(stat_int(subscriber(st, id), "queued_blocks"), 4);
    ck_assert_int_gt(stat_int(subscriber(st, id), "queued_bytes"), 4 * 8000);
    json_decref(st);
    st = NULL;
    double t0 = th_now_ms();
    json_t *sub = NULL;
    do {
        struct timespec nap = {0, 200 * 1000000L};
        nanosleep(&nap, NULL);
        json_decref(st);
        st = stats_of(l.admin);
        sub = subscriber(st, id);
    } while (sub && th_now_ms() - t0 < 20000);
    ck_assert_msg(!sub, "the subscription outlived its lease");
    ck_assert_double_ge(th_now_ms() - t0, 9000); /* not before its lease of 10 s */
    json_decref(st);
    /* Gone: nothing is produced for it, and its credit is refused. */
    publish(&l, 2);
    st = stats_of(l.admin);
    ck_assert_int_eq(stat_int(stream_stats(st, "src", "data"), "published"), 5);
    json_decref(st);
    msg_t m;
    ck_assert(next_msg(c, 1000, &m)); /* the one block it had been sent */
    ck_assert(!m.reply);
    json_decref(m.json);
    expect_error(c, "\"op\":\"credit\",\"n\":1", "NOTFOUND", "lease");
    zmq_close(c);

    /* A client that disconnects is dropped at once when a block is sent to it. */
    c = dealer(l.zctx, CONTROL);
    id = subscribe_ok(c, "\"op\":\"subscribe\",\"topics\":[\"src/data\"],\"mode\":\"lossless\",\"window\":4");
    zmq_close(c);
    st = NULL;
    t0 = th_now_ms();
    do {
        publish(&l, 1);
        json_decref(st);
        st = stats_of(l.admin);
        sub = subscriber(st, id);
    } while (sub && th_now_ms() - t0 < 3000);
    ck_assert_msg(!sub, "a gone client's subscription was kept");
    json_decref(st);
    lab_stop(&l);
}
END_TEST

/* lmq_sub: credit flows by itself (many windows' worth, nothing lost), and a
 * lapsed subscription is made again by lmq_sub_recv. */
START_TEST(client_library_credits_and_resubscribes)
{
    lab_t l;
    lab_start(&l, 0);
    lmq_sub_opts_t o = {.mode = LMQ_SUB_LOSSLESS, .window = 8};
    lmq_sub_t *s = lmq_sub_new_opts(l.zctx, CONTROL, "src/data", &o);
    ck_assert_ptr_nonnull(s);
    lmq_frame_t *f = NULL;
    double t0 = th_now_ms();
    while (!lmq_sub_active(s) && th_now_ms() - t0 < 5000)
        ck_assert_int_eq(lmq_sub_recv(s, &f, 50), LMQ_ETIMEOUT);
    ck_assert(lmq_sub_active(s));
    for (int round = 0; round < 10; round++) {
        publish(&l, 4); /* within the window: never more than it in flight */
        for (int i = 0; i < 4; i++) {
            int rc = lmq_sub_recv(s, &f, 5000);
            ck_assert_msg(rc == 0, "recv: %s (%s)", lmq_strerror(rc), lmq_sub_last_error(s));
            ck_assert_uint_eq(lmq_frame_seq(f), (uint64_t)(round * 4 + i));
            lmq_frame_destroy(&f);
        }
    }
    ck_assert_uint_eq(lmq_sub_received(s), 40);
    ck_assert_uint_eq(lmq_sub_lost(s), 0);
    /* Not called for longer than the lease: the daemon forgets it ... */
    struct timespec nap = {11, 0};
    nanosleep(&nap, NULL);
    json_t *st = stats_of(l.admin);
    ck_assert_int_eq(json_array_size(json_object_get(st, "subscribers")), 0);
    json_decref(st);
    /* ... and the next calls subscribe again (the refused renewal says so). */
    int rc;
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(lmq_sub_recv(s, &f, 100), LMQ_ETIMEOUT);
    ck_assert(lmq_sub_active(s));
    st = stats_of(l.admin);
    ck_assert_int_eq(json_array_size(json_object_get(st, "subscribers")), 1);
    json_decref(st);
    publish(&l, 1);
    ck_assert_int_eq(lmq_sub_recv(s, &f, 5000), 0);
    ck_assert_uint_eq(lmq_frame_seq(f), 40);
    lmq_frame_destroy(&f);
    lmq_sub_destroy(&s);

    /* A refusal is lmq_sub_recv's answer, with the daemon's reason. */
    s = lmq_sub_new_opts(l.zctx, CONTROL, "src/nope", &o);
    rc = lmq_sub_recv(s, &f, 5000);
    ck_assert_int_eq(rc, LMQ_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(lmq_sub_last_error(s), "src has no stream 'nope'"));
    lmq_sub_destroy(&s);
    lab_stop(&l);
}
END_TEST

/* ---- against labmqd: the requirement of issue 7 ---- */

/* Change events reach a flow subscription like blocks, also the one the
 * broker makes itself for a device stuck in its driver (state fault, cause
 * stuck): nothing of $events/psu1 is missing from its seq. */
START_TEST(flow_subscription_gets_every_event_also_fault)
{
    void *zctx = zmq_ctx_new();
    lmq_daemon_t *d = lmq_daemon_new(zctx, CONTROL, DATA, NULL);
    ck_assert_int_eq(lmq_daemon_add(d, "psu1", lmq_driver_find("sim-psu"), "", NULL), 0);
    lmq_daemon_set_fault_after(d, 200);
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, 5000), 0);
    void *sock = dealer(zctx, CONTROL);
    subscribe_ok(sock, "\"op\":\"subscribe\",\"topics\":[\"$events/psu1\"],\"mode\":\"lossless\"");
    lmq_proxy_t *p = lmq_proxy_new(zctx, CONTROL, "psu1");
    lmq_proxy_set_timeout(p, 10000);
    lmq_value_t hang = {0};
    ck_assert_int_eq(lmq_value_set_string(&hang, "hang:1500"), 0);
    ck_assert_msg(lmq_proxy_set(p, "fault", &hang) == 0, "%s", lmq_proxy_last_error(p));
    lmq_value_clear(&hang);
    uint64_t id;
    ck_assert_int_eq(lmq_proxy_send_get(p, "voltage", &id), 0); /* runs into the hang */
    bool stuck = false, back = false;
    int64_t last_seq = -1;
    msg_t m;
    double end = th_now_ms() + 10000;
    while (!(stuck && back) && th_now_ms() < end && next_msg(sock, 5000, &m)) {
        if (!m.reply) {
            ck_assert_str_eq(m.topic, "$events/psu1");
            int64_t seq = (int64_t)json_integer_value(json_object_get(m.json, "seq"));
            ck_assert_msg(last_seq < 0 || seq == last_seq + 1, "event seq %lld after %lld", (long long)seq,
                          (long long)last_seq);
            last_seq = seq;
            const char *cause = json_string_value(json_object_get(m.json, "cause"));
            stuck = stuck || (cause && !strcmp(cause, "stuck"));
            back = back || (stuck && cause && !strcmp(cause, "responding"));
        }
        json_decref(m.json);
    }
    ck_assert_msg(stuck, "no 'stuck' event on the flow subscription");
    ck_assert_msg(back, "no 'responding' event after it");
    lmq_value_t v = {0};
    uint64_t got = 0;
    int rc = lmq_proxy_recv(p, &got, &v); /* the hung get: its reply (the simulated hang ends in TIMEOUT) */
    ck_assert_msg(rc == 0 || rc == LMQ_ETIMEOUT, "%s", lmq_proxy_last_error(p));
    ck_assert_uint_eq(got, id);
    lmq_value_clear(&v);
    lmq_proxy_destroy(&p);
    zmq_close(sock);
    ck_assert_int_eq(lmq_daemon_stop(d), 0);
    lmq_daemon_destroy(&d);
    zmq_ctx_term(zctx);
}
END_TEST

/* A recorder-like lossless subscriber gets every block while a display-like
 * lossy one reading one block a second drops (counted in stats and seen as
 * its seq gaps). */
START_TEST(slow_lossy_does_not_reduce_lossless)
{
    th_daemon_t d;
    th_daemon_start(&d, "devices:\n"
                        "  - name: daq1\n    driver: sim-daq\n    options: {sample_rate: 50000, block_size: 100}\n");
    void *ctx = zmq_ctx_new();
    lmq_sub_opts_t fast_o = {.mode = LMQ_SUB_LOSSLESS}, slow_o = {.mode = LMQ_SUB_LOSSY, .window = 1};
    lmq_sub_t *fast = lmq_sub_new_opts(ctx, d.control, "daq1/wave", &fast_o);
    lmq_sub_t *slow = lmq_sub_new_opts(ctx, d.control, "daq1/wave", &slow_o);
    lmq_proxy_t *admin = lmq_proxy_new(ctx, d.control, NULL);
    lmq_frame_t *f = NULL;
    int rc = lmq_sub_recv(fast, &f, 5000);
    ck_assert_msg(rc == 0, "%s", lmq_sub_last_error(fast));
    uint64_t first = lmq_frame_seq(f), last = first;
    lmq_frame_destroy(&f);
    double t0 = th_now_ms(), next_slow = t0;
    uint64_t slow_got = 0;
    while (th_now_ms() - t0 < 4000) {
        /* The slow one takes one block a second, no more. */
        if (th_now_ms() >= next_slow) {
            next_slow += 1000;
            if (lmq_sub_recv(slow, &f, 0) == 0)
                slow_got++;
            lmq_frame_destroy(&f);
        }
        rc = lmq_sub_recv(fast, &f, 20);
        if (rc == 0) {
            ck_assert_uint_gt(lmq_frame_seq(f), last);
            last = lmq_frame_seq(f);
            lmq_frame_destroy(&f);
        } else
            ck_assert_int_eq(rc, LMQ_ETIMEOUT);
    }
    ck_assert_uint_ge(slow_got, 2);
    ck_assert_uint_le(slow_got, 5);
    /* 500 blocks/s for 4 s: allow for a slow, shared machine */
    ck_assert_uint_ge(last - first, 1000);
    json_t *st = stats_of(admin);
    json_t *wave = stream_stats(st, "daq1", "wave");
    /* Every block the instrument made reached the lossless subscriber: a gap
     * can only be one the (simulated) board itself overran, on a machine too
     * busy to run it in time, and counted as such. */
    ck_assert_uint_le(lmq_sub_lost(fast), (uint64_t)stat_int(wave, "skipped"));
    ck_assert_uint_eq(lmq_sub_received(fast) + lmq_sub_lost(fast), last - first + 1);
    json_t *s, *lossy = NULL, *lossless = NULL;
    size_t i;
    json_array_foreach(json_object_get(st, "subscribers"), i, s)
    {
        if (!strcmp(json_string_value(json_object_get(s, "mode")), "lossy"))
            lossy = s;
        else
            lossless = s;
    }
    ck_assert_ptr_nonnull(lossy);
    ck_assert_ptr_nonnull(lossless);
    ck_assert_int_eq(stat_int(lossless, "dropped"), 0);
    ck_assert_int_gt(stat_int(lossy, "dropped"), 500);
    ck_assert_int_eq(stat_int(wave, "subscriber_drops"), stat_int(lossy, "dropped"));
    ck_assert_int_eq(stat_int(wave, "dropped"), 0); /* the device was never held up */
    ck_assert_uint_gt(lmq_sub_lost(slow), 500);
    ck_assert_uint_le(lmq_sub_lost(slow), (uint64_t)stat_int(lossy, "dropped"));
    json_decref(st);
    lmq_proxy_destroy(&admin);
    lmq_sub_destroy(&fast);
    lmq_sub_destroy(&slow);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

static long rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *fp = fopen(path, "re");
    ck_assert_ptr_nonnull(fp);
    long kb = -1;
    while (fgets(line, sizeof line, fp))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(fp);
    return kb;
}

/* A subscriber that reads nothing, on a camera making 25 MB/s: without the
 * bound the daemon would hold what its window lets it send (up to 1000 frames,
 * about 130 MB, in the ROUTER's pipe); with it, never more than the configured
 * 256 KiB. */
START_TEST(daemon_memory_stays_within_the_bound)
{
    /* The daemon under ASan keeps freed blocks in a quarantine (256 MB by
     * default), which would hide what the daemon itself holds. */
    const char *asan = getenv("ASAN_OPTIONS");
    char env[512];
    snprintf(env, sizeof env, "%s%squarantine_size_mb=4:thread_local_quarantine_size_kb=256", asan ? asan : "",
             asan && *asan ? ":" : "");
    setenv("ASAN_OPTIONS", env, 1);
    th_daemon_t d;
    th_daemon_start(&d, "subscriber_memory: 262144\n"
                        "devices:\n"
                        "  - name: cam1\n    driver: sim-camera\n    options: {width: 256, height: 256, fps: 200}\n");
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *admin = lmq_proxy_new(ctx, d.control, NULL);
    json_t *st = stats_of(admin);
    ck_assert_int_eq(stat_int(st, "subscriber_memory"), 262144);
    ck_assert_int_eq(stat_int(st, "plain_subscriber_hwm"), 2); /* 256 KiB over 128 KiB frames */
    json_decref(st);
    /* The client's own socket takes almost nothing either: what is sent and
     * not read stays in the daemon's pipe, where the bound must count it. */
    void *c = zmq_socket(ctx, ZMQ_DEALER);
    int rcvhwm = 1, linger = 0;
    zmq_setsockopt(c, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    zmq_setsockopt(c, ZMQ_LINGER, &linger, sizeof linger);
    ck_assert_int_eq(zmq_connect(c, d.control), 0);
    json_int_t id =
        subscribe_ok(c, "\"op\":\"subscribe\",\"topics\":[\"cam1/frames\"],\"mode\":\"lossless\",\"window\":1000");
    /* Warm up: the camera runs and the first frames were sent. */
    struct timespec nap = {0, 500 * 1000000L};
    nanosleep(&nap, NULL);
    long base = rss_kb(d.pid), peak = base;
    double t0 = th_now_ms();
    json_int_t dropped = 0;
    while (th_now_ms() - t0 < 3000) {
        st = stats_of(admin);
        json_t *sub = subscriber(st, id);
        ck_assert_ptr_nonnull(sub);
        ck_assert_int_le(stat_int(sub, "queued_bytes") + stat_int(sub, "in_flight_bytes"), 262144);
        dropped = stat_int(sub, "dropped");
        json_decref(st);
        long kb = rss_kb(d.pid);
        if (kb > peak)
            peak = kb;
        nap.tv_nsec = 50 * 1000000L;
        nanosleep(&nap, NULL);
    }
    /* 200 frames/s x 3 s = about 78 MB offered; a slow machine makes fewer. */
    ck_assert_msg(peak - base < 32 * 1024, "labmqd grew from %ld kB to %ld kB", base, peak);
    ck_assert_int_gt(dropped, 100);
    zmq_close(c);
    lmq_proxy_destroy(&admin);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("flow");
    TCase *tc = tcase_create("protocol");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, lossless_drops_newest_exactly);
    tcase_add_test(tc, lossy_drops_oldest_exactly);
    tcase_add_test(tc, bad_requests_get_clear_errors);
    tcase_add_test(tc, lease_expiry_frees_the_queue);
    tcase_add_test(tc, client_library_credits_and_resubscribes);
    tcase_add_test(tc, flow_subscription_gets_every_event_also_fault);
    suite_add_tcase(s, tc);
    TCase *live = tcase_create("labmqd");
    tcase_set_timeout(live, 60);
    tcase_add_test(live, slow_lossy_does_not_reduce_lossless);
    tcase_add_test(live, daemon_memory_stays_within_the_bound);
    suite_add_tcase(s, live);
    return th_run_suite(s);
}
