/* Stream subscriptions: gap-free delivery from a real daemon, exact loss
 * counting on forced gaps, an epoch change counted as a restart, and
 * malformed blocks refused without losing the stream. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"

/* Publishes one crafted block on a raw XPUB. */
static void publish(void *pub, const char *topic, uint64_t seq, uint64_t epoch, size_t n)
{
    char hdr[256];
    snprintf(hdr, sizeof hdr,
             "{\"v\":1,\"seq\":%llu,\"epoch\":%llu,\"t_ns\":1,\"dtype\":\"<f8\",\"shape\":[%zu],\"units\":\"V\"}",
             (unsigned long long)seq, (unsigned long long)epoch, n);
    double data[16] = {0};
    for (size_t i = 0; i < n && i < 16; i++)
        data[i] = (double)seq + (double)i / 100;
    zmq_send(pub, topic, strlen(topic), ZMQ_SNDMORE);
    zmq_send(pub, hdr, strlen(hdr), ZMQ_SNDMORE);
    zmq_send(pub, data, n * sizeof(double), 0);
}

/* XPUB tells us when the subscription has arrived, so nothing is published
 * into the void before the subscriber listens. */
static void *publisher(void *ctx, const char *ep)
{
    void *pub = zmq_socket(ctx, ZMQ_XPUB);
    int linger = 0;
    zmq_setsockopt(pub, ZMQ_LINGER, &linger, sizeof linger);
    ck_assert_int_eq(zmq_bind(pub, ep), 0);
    return pub;
}

static void await_subscription(void *pub)
{
    char buf[64];
    int timeout = 2000;
    zmq_setsockopt(pub, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    ck_assert_int_gt(zmq_recv(pub, buf, sizeof buf, 0), 0);
    ck_assert_int_eq(buf[0], 1);
}

static uint64_t recv_seq(lmq_sub_t *s)
{
    lmq_frame_t *f = NULL;
    int rc = lmq_sub_recv(s, &f, 2000);
    ck_assert_msg(rc == 0, "recv: %s (%s)", lmq_strerror(rc), lmq_sub_last_error(s));
    uint64_t seq = lmq_frame_seq(f);
    lmq_frame_destroy(&f);
    return seq;
}

START_TEST(forced_gap_counted_exactly)
{
    void *ctx = zmq_ctx_new();
    void *pub = publisher(ctx, "inproc://data");
    lmq_sub_t *s = lmq_sub_new(ctx, "inproc://data", "daq1/wave");
    await_subscription(pub);
    for (uint64_t q = 0; q < 5; q++)
        publish(pub, "daq1/wave", q, 100, 4);
    for (uint64_t q = 0; q < 5; q++)
        ck_assert_uint_eq(recv_seq(s), q);
    ck_assert_uint_eq(lmq_sub_lost(s), 0);

    publish(pub, "daq1/wave", 8, 100, 4); /* 5, 6, 7 never sent */
    lmq_frame_t *f = NULL;
    ck_assert_int_eq(lmq_sub_recv(s, &f, 2000), 0);
    ck_assert_uint_eq(lmq_frame_lost_before(f), 3);
    ck_assert(!lmq_frame_restarted(f));
    lmq_frame_destroy(&f);
    ck_assert_uint_eq(lmq_sub_lost(s), 3);
    publish(pub, "daq1/wave", 9, 100, 4);
    publish(pub, "daq1/wave", 20, 100, 4);
    recv_seq(s);
    recv_seq(s);
    ck_assert_uint_eq(lmq_sub_lost(s), 3 + 10);
    ck_assert_uint_eq(lmq_sub_received(s), 8);
    lmq_sub_destroy(&s);
    zmq_close(pub);
    zmq_ctx_term(ctx);
}
END_TEST

START_TEST(epoch_change_is_a_restart_not_a_gap)
{
    void *ctx = zmq_ctx_new();
    void *pub = publisher(ctx, "inproc://data");
    lmq_sub_t *s = lmq_sub_new(ctx, "inproc://data", "daq1/wave");
    await_subscription(pub);
    for (uint64_t q = 40; q < 43; q++)
        publish(pub, "daq1/wave", q, 7, 2);
    publish(pub, "daq1/wave", 0, 8, 2); /* the publisher restarted */
    publish(pub, "daq1/wave", 1, 8, 2);
    for (int i = 0; i < 3; i++)
        recv_seq(s);
    lmq_frame_t *f = NULL;
    ck_assert_int_eq(lmq_sub_recv(s, &f, 2000), 0);
    ck_assert(lmq_frame_restarted(f));
    ck_assert_uint_eq(lmq_frame_epoch(f), 8);
    ck_assert_uint_eq(lmq_frame_lost_before(f), 0);
    lmq_frame_destroy(&f);
    ck_assert_uint_eq(recv_seq(s), 1);
    ck_assert_uint_eq(lmq_sub_restarts(s), 1);
    ck_assert_uint_eq(lmq_sub_lost(s), 0);
    lmq_sub_destroy(&s);
    zmq_close(pub);
    zmq_ctx_term(ctx);
}
END_TEST

START_TEST(malformed_and_foreign_blocks_are_skipped)
{
    void *ctx = zmq_ctx_new();
    void *pub = publisher(ctx, "inproc://data");
    lmq_sub_t *s = lmq_sub_new(ctx, "inproc://data", "daq1/wave");
    await_subscription(pub);
    publish(pub, "daq1/wave", 0, 1, 4);
    publish(pub, "daq1/wave2", 0, 1, 4); /* prefix match, other stream: dropped silently */
    /* header announces 4 doubles, payload has 3 */
    const char *hdr = "{\"v\":1,\"seq\":1,\"epoch\":1,\"t_ns\":1,\"dtype\":\"<f8\",\"shape\":[4],\"units\":\"V\"}";
    double three[3] = {0};
    zmq_send(pub, "daq1/wave", 9, ZMQ_SNDMORE);
    zmq_send(pub, hdr, strlen(hdr), ZMQ_SNDMORE);
    zmq_send(pub, three, sizeof three, 0);
    /* not JSON */
    zmq_send(pub, "daq1/wave", 9, ZMQ_SNDMORE);
    zmq_send(pub, "{{{", 3, ZMQ_SNDMORE);
    zmq_send(pub, three, sizeof three, 0);
    /* topic alone */
    zmq_send(pub, "daq1/wave", 9, 0);
    /* one frame too many */
    zmq_send(pub, "daq1/wave", 9, ZMQ_SNDMORE);
    zmq_send(pub, hdr, strlen(hdr), ZMQ_SNDMORE);
    zmq_send(pub, three, sizeof three, ZMQ_SNDMORE);
    zmq_send(pub, three, sizeof three, 0);
    publish(pub, "daq1/wave", 2, 1, 4);

    ck_assert_uint_eq(recv_seq(s), 0);
    lmq_frame_t *f = NULL;
    ck_assert_int_eq(lmq_sub_recv(s, &f, 2000), LMQ_EPROTO);
    ck_assert_ptr_nonnull(strstr(lmq_sub_last_error(s), "header announces"));
    ck_assert_int_eq(lmq_sub_recv(s, &f, 2000), LMQ_EPROTO);
    ck_assert_ptr_nonnull(strstr(lmq_sub_last_error(s), "not JSON"));
    ck_assert_int_eq(lmq_sub_recv(s, &f, 2000), LMQ_EPROTO);
    ck_assert_ptr_nonnull(strstr(lmq_sub_last_error(s), "block of 1 frames"));
    ck_assert_int_eq(lmq_sub_recv(s, &f, 2000), LMQ_EPROTO);
    ck_assert_ptr_nonnull(strstr(lmq_sub_last_error(s), "block of 4 frames"));
    lmq_frame_t *g = NULL;
    ck_assert_int_eq(lmq_sub_recv(s, &g, 2000), 0);
    ck_assert_uint_eq(lmq_frame_seq(g), 2);
    const double *x = lmq_frame_data(g);
    ck_assert_double_eq(x[3], 2.03);
    lmq_frame_destroy(&g);
    /* the malformed block with seq 1 was refused, so seq 2 shows one lost */
    ck_assert_uint_eq(lmq_sub_lost(s), 1);
    ck_assert_int_eq(lmq_sub_recv(s, &g, 50), LMQ_ETIMEOUT);
    lmq_sub_destroy(&s);
    zmq_close(pub);
    zmq_ctx_term(ctx);
}
END_TEST

/* A real labmqd process streaming while clients also make calls: every
 * block arrives, in order, none lost. */
START_TEST(daemon_stream_is_gap_free)
{
    th_daemon_t d;
    th_daemon_start(&d, "devices:\n"
                        "  - name: daq1\n    driver: sim-daq\n    options: {sample_rate: 20000, block_size: 200}\n"
                        "  - name: cam1\n    driver: sim-camera\n    options: {width: 256, height: 256, fps: 20}\n");
    void *ctx = zmq_ctx_new();
    lmq_sub_t *wave = lmq_sub_new(ctx, d.data, "daq1/wave");
    lmq_sub_t *cam = lmq_sub_new(ctx, d.data, "cam1/frames");
    lmq_proxy_t *p = lmq_proxy_new(ctx, d.control, "daq1");
    lmq_frame_t *f = NULL;
    ck_assert_int_eq(lmq_sub_recv(wave, &f, 3000), 0);
    uint64_t first = lmq_frame_seq(f), expect = first + 1;
    lmq_frame_destroy(&f);
    double t0 = th_now_ms();
    int frames = 0;
    while (th_now_ms() - t0 < 1500) {
        zmq_pollitem_t items[] = {{lmq_sub_socket(wave), 0, ZMQ_POLLIN, 0}, {lmq_sub_socket(cam), 0, ZMQ_POLLIN, 0}};
        zmq_poll(items, 2, 100);
        if (items[0].revents & ZMQ_POLLIN) {
            ck_assert_int_eq(lmq_sub_recv(wave, &f, 0), 0);
            ck_assert_uint_eq(lmq_frame_seq(f), expect);
            expect++;
            lmq_frame_destroy(&f);
        }
        if (items[1].revents & ZMQ_POLLIN) {
            ck_assert_int_eq(lmq_sub_recv(cam, &f, 0), 0);
            ck_assert_uint_eq(lmq_frame_size(f), 256 * 256 * 2);
            frames++;
            lmq_frame_destroy(&f);
        }
        double v;
        ck_assert_int_eq(lmq_proxy_get_double(p, "amplitude", &v), 0);
    }
    /* 100 blocks/s for 1.5 s: allow for a slow, shared machine */
    ck_assert_uint_ge(expect - first, 60);
    ck_assert_int_ge(frames, 10);
    ck_assert_uint_eq(lmq_sub_lost(wave), 0);
    ck_assert_uint_eq(lmq_sub_lost(cam), 0);
    ck_assert_uint_eq(lmq_sub_restarts(wave), 0);

    /* Restart the daemon: the same subscription sees a restart, not a loss. */
    th_daemon_stop(&d, SIGTERM);
    th_daemon_restart(&d);
    int rc;
    do
        rc = lmq_sub_recv(wave, &f, 3000);
    while (rc == 0 && !lmq_frame_restarted(f) && (lmq_frame_destroy(&f), 1));
    ck_assert_int_eq(rc, 0);
    ck_assert(lmq_frame_restarted(f));
    lmq_frame_destroy(&f);
    ck_assert_uint_eq(lmq_sub_restarts(wave), 1);
    ck_assert_uint_eq(lmq_sub_lost(wave), 0);

    lmq_proxy_destroy(&p);
    lmq_sub_destroy(&wave);
    lmq_sub_destroy(&cam);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sub");
    TCase *tc = tcase_create("accounting");
    tcase_add_test(tc, forced_gap_counted_exactly);
    tcase_add_test(tc, epoch_change_is_a_restart_not_a_gap);
    tcase_add_test(tc, malformed_and_foreign_blocks_are_skipped);
    suite_add_tcase(s, tc);
    TCase *live = tcase_create("daemon");
    tcase_set_timeout(live, 60);
    tcase_add_test(live, daemon_stream_is_gap_free);
    suite_add_tcase(s, live);
    return th_run_suite(s);
}
