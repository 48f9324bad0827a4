/* The daemon with clients in other processes: every simulated device through
 * proxies, isolation of a hung device, recovery after SIGKILL, an absent
 * daemon, and the same API against an in-process daemon. */
#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"

static const char *lab_yaml =
    "devices:\n"
    "  - name: psu1\n    driver: sim-psu\n"
    "  - name: daq1\n    driver: sim-daq\n    options: {ai_wires: \"psu1.iout,psu1.vout\", sample_rate: 2000, "
    "block_size: 100}\n"
    "  - name: cam1\n    driver: sim-camera\n    options: {width: 64, height: 48, fps: 5}\n";

static lmq_proxy_t *proxy(void *ctx, const th_daemon_t *d, const char *dev)
{
    lmq_proxy_t *p = lmq_proxy_new(ctx, d->control, dev);
    ck_assert_ptr_nonnull(p);
    return p;
}

#define CK_OK(p, expr) ck_assert_msg((expr) == 0, "%s: %s", #expr, lmq_proxy_last_error(p))

/* Every property of every device can be read; describe agrees with get. */
START_TEST(every_device_describes_and_gets)
{
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    const char *devices[] = {"psu1", "daq1", "cam1"};
    for (int i = 0; i < 3; i++) {
        lmq_proxy_t *p = proxy(ctx, &d, devices[i]);
        char *text = NULL;
        CK_OK(p, lmq_proxy_describe(p, &text));
        json_t *j = json_loads(text, 0, NULL);
        ck_assert_ptr_nonnull(j);
        ck_assert_str_eq(json_string_value(json_object_get(j, "device")), devices[i]);
        ck_assert(json_is_true(json_object_get(j, "open")));
        size_t k;
        json_t *prop;
        json_array_foreach(json_object_get(j, "properties"), k, prop)
        {
            const char *name = json_string_value(json_object_get(prop, "name"));
            /* Limits are the unit's (max_voltage defaults to 30 V), not the model's rating. */
            if (i == 0 && !strcmp(name, "voltage"))
                ck_assert_double_eq(json_number_value(json_object_get(prop, "max")), 30.0);
            lmq_value_t v = {0};
            /* Every property described exists: no exceptions (a DAQ describes
             * only its configured inputs). */
            ck_assert_msg(lmq_proxy_get(p, name, &v) == 0, "%s.%s: %s", devices[i], name, lmq_proxy_last_error(p));
            ck_assert_int_eq(v.type, lmq_type_parse(json_string_value(json_object_get(prop, "type"))));
            /* Writing back what was read is always legal for rw properties. */
            if (!strcmp(json_string_value(json_object_get(prop, "access")), "rw"))
                ck_assert_msg(lmq_proxy_set(p, name, &v) == 0, "%s.%s: %s", devices[i], name,
                              lmq_proxy_last_error(p));
            lmq_value_clear(&v);
        }
        ck_assert_uint_gt(k, 3);
        json_decref(j);
        free(text);
        lmq_proxy_destroy(&p);
    }
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

START_TEST(calls_and_sets_on_each_device)
{
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *psu = proxy(ctx, &d, "psu1"), *daq = proxy(ctx, &d, "daq1"), *cam = proxy(ctx, &d, "cam1");

    /* psu: set, read back, drive the load, and the DAQ sees the current through its wire */
    lmq_value_t v = lmq_float(5.0), on = lmq_bool(true), r = {0};
    CK_OK(psu, lmq_proxy_set(psu, "voltage", &v));
    v = lmq_float(0.1);
    CK_OK(psu, lmq_proxy_set(psu, "current_limit", &v));
    CK_OK(psu, lmq_proxy_set(psu, "output", &on));
    double volts, amps;
    CK_OK(psu, lmq_proxy_get_double(psu, "voltage", &volts));
    ck_assert_double_eq_tol(volts, 5.0, 1e-12);
    CK_OK(psu, lmq_proxy_get_double(psu, "measured_current", &amps));
    ck_assert_double_gt(amps, 0.0);
    lmq_value_t ch0 = lmq_int(0);
    CK_OK(daq, lmq_proxy_call(daq, "read", &ch0, 1, &r));
    ck_assert_int_eq(r.type, LMQ_FLOAT);
    ck_assert_double_eq_tol(r.u.f, amps, amps * 0.05 + 1e-3);

    /* daq: an array result, and argument checking */
    CK_OK(daq, lmq_proxy_call(daq, "read_all", NULL, 0, &r));
    ck_assert_int_eq(r.type, LMQ_ARRAY);
    ck_assert_int_eq(r.u.a.dtype, LMQ_F64);
    lmq_value_clear(&r);
    lmq_value_t text = {0};
    lmq_value_set_string(&text, "zero");
    ck_assert_int_eq(lmq_proxy_call(daq, "read", &text, 1, &r), LMQ_EARG);
    ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(daq), "must be int"));
    lmq_value_clear(&text);
    lmq_value_t ao[2] = {lmq_int(0), lmq_float(1.25)};
    CK_OK(daq, lmq_proxy_call(daq, "write_ao", ao, 2, NULL));

    /* camera: one frame of the configured size */
    CK_OK(cam, lmq_proxy_call(cam, "snap", NULL, 0, &r));
    ck_assert_int_eq(r.type, LMQ_ARRAY);
    ck_assert_int_eq(r.u.a.dtype, LMQ_U16);
    ck_assert_uint_eq(r.u.a.ndim, 2);
    ck_assert_uint_eq(r.u.a.shape[0], 48);
    ck_assert_uint_eq(r.u.a.shape[1], 64);
    lmq_value_clear(&r);

    /* stats count what happened */
    char *stats = NULL;
    CK_OK(psu, lmq_proxy_stats(psu, &stats));
    json_t *j = json_loads(stats, 0, NULL);
    json_t *dev0 = json_array_get(json_object_get(j, "devices"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(dev0, "name")), "psu1");
    ck_assert_int_ge(json_integer_value(json_object_get(dev0, "calls")), 5);
    json_decref(j);
    free(stats);

    lmq_proxy_destroy(&psu);
    lmq_proxy_destroy(&daq);
    lmq_proxy_destroy(&cam);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

/* A hung device costs its own callers a TIMEOUT and nobody else anything;
 * the daemon still stops cleanly with a device hung. */
START_TEST(hung_device_is_isolated)
{
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *psu = proxy(ctx, &d, "psu1"), *daq = proxy(ctx, &d, "daq1");
    double t0 = th_now_ms(), v;
    for (int i = 0; i < 20; i++)
        CK_OK(daq, lmq_proxy_get_double(daq, "amplitude", &v));
    double normal_ms = (th_now_ms() - t0) / 20;

    lmq_value_t hang = {0};
    lmq_value_set_string(&hang, "hang");
    CK_OK(psu, lmq_proxy_set(psu, "fault", &hang));
    lmq_value_clear(&hang);
    lmq_proxy_set_timeout(psu, 300);
    t0 = th_now_ms();
    ck_assert_int_eq(lmq_proxy_get_double(psu, "voltage", &v), LMQ_ETIMEOUT);
    double waited = th_now_ms() - t0;
    ck_assert_double_ge(waited, 290);
    ck_assert_double_lt(waited, 300 + 200);
    ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(psu), "no reply within 300 ms"));

    /* psu1's thread is stuck for good; daq1 answers as before. On a loaded
     * machine one call may be slow for scheduling reasons: the median shows
     * the normal path, and the worst stays far below a hang (for ever). */
    double dts[20];
    for (int i = 0; i < 20; i++) {
        t0 = th_now_ms();
        CK_OK(daq, lmq_proxy_get_double(daq, "amplitude", &v));
        dts[i] = th_now_ms() - t0;
    }
    double worst = 0, below = 0;
    for (int i = 0; i < 20; i++) {
        worst = dts[i] > worst ? dts[i] : worst;
        below += dts[i] < 50 + 10 * normal_ms;
    }
    ck_assert_msg(below >= 10, "most daq1 calls slowed beyond %.1f ms (normally %.2f ms)", 50 + 10 * normal_ms,
                  normal_ms);
    ck_assert_msg(worst < 1000, "a daq1 call took %.1f ms while psu1 hung", worst);
    /* And the hung device keeps failing fast for its callers, never hanging them. */
    ck_assert_int_eq(lmq_proxy_get_double(psu, "voltage", &v), LMQ_ETIMEOUT);

    lmq_proxy_destroy(&psu);
    lmq_proxy_destroy(&daq);
    zmq_ctx_term(ctx);
    t0 = th_now_ms();
    int st = th_daemon_stop(&d, SIGTERM);
    ck_assert_msg(st == 0, "labmqd with a hung device exited with status %d", st);
    ck_assert_double_lt(th_now_ms() - t0, 5000);
    th_daemon_cleanup(&d);
}
END_TEST

START_TEST(same_proxy_survives_daemon_kill)
{
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *psu = proxy(ctx, &d, "psu1");
    lmq_proxy_set_timeout(psu, 500);
    double v;
    CK_OK(psu, lmq_proxy_get_double(psu, "voltage", &v));
    th_daemon_stop(&d, SIGKILL);
    int rc = lmq_proxy_get_double(psu, "voltage", &v);
    ck_assert_msg(rc == LMQ_EUNREACH || rc == LMQ_ETIMEOUT, "rc %d: %s", rc, lmq_proxy_last_error(psu));

    double t0 = th_now_ms();
    th_daemon_restart(&d);
    rc = -1;
    while (rc != 0 && th_now_ms() - t0 < 3000)
        rc = lmq_proxy_get_double(psu, "voltage", &v);
    ck_assert_msg(rc == 0, "the proxy did not recover within 3 s: %s", lmq_proxy_last_error(psu));
    /* the new daemon is really there: a set takes effect */
    lmq_value_t nv = lmq_float(1.5);
    CK_OK(psu, lmq_proxy_set(psu, "voltage", &nv));
    CK_OK(psu, lmq_proxy_get_double(psu, "voltage", &v));
    ck_assert_double_eq_tol(v, 1.5, 1e-12);
    lmq_proxy_destroy(&psu);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

START_TEST(absent_daemon_fails_within_timeout)
{
    char dir[128], ep[200];
    th_tempdir(dir, sizeof dir);
    snprintf(ep, sizeof ep, "ipc://%s/control", dir);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = lmq_proxy_new(ctx, ep, "psu1");
    lmq_proxy_set_timeout(p, 300);
    double v, t0 = th_now_ms();
    int rc = lmq_proxy_get_double(p, "voltage", &v);
    double dt = th_now_ms() - t0;
    ck_assert_int_eq(rc, LMQ_EUNREACH);
    ck_assert_double_lt(dt, 300 + 100);
    ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(p), "no daemon answers"));
    /* tcp too, on a loopback port nobody serves */
    lmq_proxy_t *q = lmq_proxy_new(ctx, "tcp://127.0.0.1:9", "psu1");
    lmq_proxy_set_timeout(q, 300);
    t0 = th_now_ms();
    ck_assert_int_eq(lmq_proxy_get_double(q, "voltage", &v), LMQ_EUNREACH);
    ck_assert_double_lt(th_now_ms() - t0, 300 + 100);
    lmq_proxy_destroy(&p);
    lmq_proxy_destroy(&q);
    zmq_ctx_term(ctx);
    th_rmtree(dir);
}
END_TEST

START_TEST(proxy_uri_round_trip)
{
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = lmq_proxy_open(ctx, "ipc:///tmp/x/control#psu1");
    ck_assert_ptr_nonnull(p);
    ck_assert_str_eq(lmq_proxy_device(p), "psu1");
    char *uri = lmq_proxy_uri(p);
    ck_assert_str_eq(uri, "ipc:///tmp/x/control#psu1");
    free(uri);
    lmq_proxy_destroy(&p);
    ck_assert_ptr_null(lmq_proxy_new(ctx, "", "psu1"));
    ck_assert_ptr_null(lmq_proxy_open(ctx, "bogus://nowhere#psu1"));
    zmq_ctx_term(ctx);
}
END_TEST

/* A lab app embeds the daemon: same proxies and subscriptions over inproc. */
START_TEST(in_process_daemon)
{
    void *ctx = zmq_ctx_new();
    lmq_daemon_t *d = lmq_daemon_new(ctx, "inproc://lab", "inproc://lab-data", NULL);
    const char *opts[] = {"sample_rate", "1000", "block_size", "50", NULL};
    ck_assert_int_eq(lmq_daemon_add(d, "daq1", lmq_driver_find("sim-daq"), NULL, opts), 0);
    ck_assert_int_eq(lmq_daemon_add(d, "daq1", lmq_driver_find("sim-daq"), NULL, NULL), LMQ_ECONFIG);
    const char *bad[] = {"no_such_option", "1", NULL};
    ck_assert_int_eq(lmq_daemon_add(d, "daq2", lmq_driver_find("sim-daq"), NULL, bad), LMQ_ECONFIG);
    ck_assert_ptr_nonnull(strstr(lmq_daemon_last_error(d), "no_such_option"));
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, 20000), 0);

    lmq_proxy_t *p = lmq_proxy_new(ctx, "inproc://lab", "daq1");
    double amp;
    CK_OK(p, lmq_proxy_get_double(p, "amplitude", &amp));
    lmq_sub_t *s = lmq_sub_new(ctx, "inproc://lab-data", "daq1/wave");
    ck_assert_ptr_nonnull(s);
    lmq_frame_t *f = NULL;
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(lmq_sub_recv(s, &f, 2000), 0);
        ck_assert_uint_eq(lmq_frame_ndim(f), 1);
        ck_assert_uint_eq(lmq_frame_shape(f)[0], 50);
        ck_assert_uint_eq(lmq_frame_size(f), 50 * sizeof(double));
        ck_assert_str_eq(lmq_frame_units(f), "V");
        const double *x = lmq_frame_data(f);
        for (int k = 0; k < 50; k++)
            ck_assert_double_le(x[k] < 0 ? -x[k] : x[k], amp * 1.01 + 1e-9);
        lmq_frame_destroy(&f);
    }
    ck_assert_uint_eq(lmq_sub_lost(s), 0);
    lmq_sub_destroy(&s);
    lmq_proxy_destroy(&p);

    /* A second daemon cannot take the same endpoints. */
    lmq_daemon_t *d2 = lmq_daemon_new(ctx, "inproc://lab", "inproc://lab-data2", NULL);
    ck_assert_int_eq(lmq_daemon_start(d2), LMQ_EBUSY);
    ck_assert_ptr_nonnull(strstr(lmq_daemon_last_error(d2), "inproc://lab"));
    lmq_daemon_destroy(&d2);
    lmq_daemon_destroy(&d);
    ck_assert_ptr_null(d);
    zmq_ctx_term(ctx);
}
END_TEST

/* A daemon on tcp with a wildcard host and port (every interface, a port of ZeroMQ's choosing)
 * reports the port it got, and the proxy turns the wildcard host into one a
 * client can connect to. */
START_TEST(data_endpoint_is_connectable)
{
    void *ctx = zmq_ctx_new();
    lmq_daemon_t *d = lmq_daemon_new(ctx, "inproc://lab", "tcp://*:*", NULL);
    lmq_daemon_set_insecure(d, true); /* keys are test_security's subject */
    const char *opts[] = {"sample_rate", "1000", "block_size", "100", NULL};
    ck_assert_int_eq(lmq_daemon_add(d, "daq1", lmq_driver_find("sim-daq"), NULL, opts), 0);
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, 20000), 0);
    lmq_proxy_t *p = lmq_proxy_new(ctx, "inproc://lab", NULL);
    char ep[256], small[8];
    CK_OK(p, lmq_proxy_data_endpoint(p, ep, sizeof ep));
    ck_assert_msg(strncmp(ep, "tcp://127.0.0.1:", 16) == 0 && strchr(ep + 16, '*') == NULL, "%s", ep);
    ck_assert_int_gt(atoi(ep + 16), 0);
    ck_assert_int_eq(lmq_proxy_data_endpoint(p, small, sizeof small), LMQ_EARG);
    lmq_sub_t *s = lmq_sub_new(ctx, ep, "daq1/wave");
    lmq_frame_t *f = NULL;
    ck_assert_int_eq(lmq_sub_recv(s, &f, 3000), 0);
    ck_assert_uint_eq(lmq_frame_shape(f)[0], 100);
    lmq_frame_destroy(&f);
    lmq_sub_destroy(&s);
    lmq_proxy_destroy(&p);
    lmq_daemon_destroy(&d);
    zmq_ctx_term(ctx);
}
END_TEST

/* A device that cannot open leaves the daemon serving, and says why. */
START_TEST(device_open_failure_is_reported)
{
    void *ctx = zmq_ctx_new();
    lmq_daemon_t *d = lmq_daemon_new(ctx, "inproc://lab", "inproc://lab-data", NULL);
    const char *opts[] = {"transcript", "/nonexistent-dir/t.log", NULL};
    ck_assert_int_eq(lmq_daemon_add(d, "psu1", lmq_driver_find("sim-psu"), NULL, opts), 0);
    ck_assert_int_eq(lmq_daemon_add(d, "psu2", lmq_driver_find("sim-psu"), NULL, NULL), 0);
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, 20000), 0);
    lmq_proxy_t *p1 = lmq_proxy_new(ctx, "inproc://lab", "psu1"), *p2 = lmq_proxy_new(ctx, "inproc://lab", "psu2");
    double v;
    ck_assert_int_eq(lmq_proxy_get_double(p1, "voltage", &v), LMQ_EDEVICE);
    ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(p1), "disconnected"));
    ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(p1), "/nonexistent-dir/t.log"));
    CK_OK(p2, lmq_proxy_get_double(p2, "voltage", &v));
    char *list = NULL;
    CK_OK(p2, lmq_proxy_list(p2, &list));
    ck_assert_ptr_nonnull(strstr(list, "\"open\": false"));
    ck_assert_ptr_nonnull(strstr(list, "\"state\": \"disconnected\""));
    free(list);
    lmq_proxy_destroy(&p1);
    lmq_proxy_destroy(&p2);
    lmq_daemon_destroy(&d);
    zmq_ctx_term(ctx);
}
END_TEST

/* Requests in flight are all answered, none lost, when many are pipelined. */
START_TEST(pipelined_requests_all_answered)
{
    void *ctx = zmq_ctx_new();
    lmq_daemon_t *d = lmq_daemon_new(ctx, "inproc://lab", "inproc://lab-data", NULL);
    ck_assert_int_eq(lmq_daemon_add(d, "psu1", lmq_driver_find("sim-psu"), NULL, NULL), 0);
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, 20000), 0);
    lmq_proxy_t *p = lmq_proxy_new(ctx, "inproc://lab", "psu1");
    enum { N = 200 };
    bool seen[N] = {false};
    uint64_t first = 0, id;
    for (int i = 0; i < N; i++) {
        CK_OK(p, lmq_proxy_send_get(p, "voltage", &id));
        if (i == 0)
            first = id;
    }
    for (int i = 0; i < N; i++) {
        lmq_value_t v = {0};
        CK_OK(p, lmq_proxy_recv(p, &id, &v));
        ck_assert_uint_lt(id - first, N);
        ck_assert(!seen[id - first]);
        seen[id - first] = true;
    }
    lmq_proxy_destroy(&p);
    lmq_daemon_destroy(&d);
    zmq_ctx_term(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("daemon");
    TCase *tc = tcase_create("processes");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, every_device_describes_and_gets);
    tcase_add_test(tc, calls_and_sets_on_each_device);
    tcase_add_test(tc, hung_device_is_isolated);
    tcase_add_test(tc, same_proxy_survives_daemon_kill);
    tcase_add_test(tc, absent_daemon_fails_within_timeout);
    suite_add_tcase(s, tc);
    TCase *inproc = tcase_create("inproc");
    tcase_set_timeout(inproc, 60);
    tcase_add_test(inproc, proxy_uri_round_trip);
    tcase_add_test(inproc, in_process_daemon);
    tcase_add_test(inproc, data_endpoint_is_connectable);
    tcase_add_test(inproc, device_open_failure_is_reported);
    tcase_add_test(inproc, pipelined_requests_all_answered);
    suite_add_tcase(s, inproc);
    return th_run_suite(s);
}
