/* The device model (core/src/device.c) with drivers written for the test:
 * a driver's mistakes and blocking calls must cost that device, never the
 * daemon; loss inside a driver reaches subscribers exactly; tables are per
 * device; a lost link is reconnected and restored. In-process daemons on
 * inproc:// endpoints; each test makes its own ZeroMQ context (Check forks). */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"

#define CTL "inproc://dev-ctl"
#define DATA "inproc://dev-data"

/* ---- test drivers ---- */

/* "badpub": publishes 4 doubles per block, and every second block with the
 * wrong size, as a buggy driver would. */
typedef struct badpub {
    int64_t n;
} badpub_t;

static int badpub_open(lmq_dev_t *dev, void **state)
{
    badpub_t *b = calloc(1, sizeof *b);
    if (!b)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
    size_t shape[1] = {4};
    lmq_dev_stream_shape(dev, 0, 1, shape);
    lmq_dev_stream_rate(dev, 0, 100);
    *state = b;
    return 0;
}

static void badpub_close(lmq_dev_t *dev, void *state)
{
    (void)dev;
    free(state);
}

static int badpub_poll(lmq_dev_t *dev, void *state, int64_t now)
{
    (void)now;
    badpub_t *b = state;
    double x[5] = {(double)b->n, 1, 2, 3, 4};
    size_t bytes = (b->n % 2) ? 5 * sizeof(double) : 4 * sizeof(double);
    b->n++;
    return lmq_dev_publish(dev, 0, lmq_clock_real_ns(), x, bytes);
}

static const lmq_stream_t badpub_streams[] = {
    {.name = "x", .doc = "4 doubles, every second block malformed", .dtype = LMQ_F64, .unit = "", .poll = badpub_poll},
    {.name = NULL},
};

static const lmq_driver_t badpub = {
    .name = "badpub", .open = badpub_open, .close = badpub_close, .streams = badpub_streams};

/* "blocker": blocks for real (a plain nanosleep, as vendor code would)
 * in open() for `open_ms`, and in every get of `slow` for 30 s. */
static const lmq_option_t blocker_options[] = {
    {.name = "open_ms", .type = LMQ_INT, .def = "0", .doc = "how long open() blocks"},
    {.name = NULL},
};

static void block_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static int blocker_open(lmq_dev_t *dev, void **state)
{
    block_ms(lmq_dev_opt_int(dev, "open_ms"));
    *state = NULL;
    return 0;
}

static int blocker_get_slow(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    (void)state;
    block_ms(30000);
    *out = lmq_float(1);
    return 0;
}

static int blocker_get_fast(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    (void)state;
    *out = lmq_float(2);
    return 0;
}

static const lmq_property_t blocker_props[] = {
    {.name = "slow", .doc = "blocks 30 s", .type = LMQ_FLOAT, .unit = "", .get = blocker_get_slow},
    {.name = "fast", .doc = "answers at once", .type = LMQ_FLOAT, .unit = "", .get = blocker_get_fast},
    {.name = NULL},
};

static const lmq_driver_t blocker = {
    .name = "blocker", .options = blocker_options, .open = blocker_open, .properties = blocker_props};

/* "flaky": a link that can be cut by a wire (as a cable would be): every
 * request and the link check fail with LMQ_EIO while the wire
 * "<name>.cut" is 1, and open() fails too. Remembers `level` only while
 * open (an instrument that forgets its settings when power-cycled). */
typedef struct flaky {
    double level;
} flaky_t;

static bool cut(lmq_dev_t *dev)
{
    char wire[96];
    double v = 0;
    snprintf(wire, sizeof wire, "%s.cut", lmq_dev_name(dev));
    return lmq_dev_wire_get(dev, wire, &v) == 0 && v != 0;
}

static int flaky_open(lmq_dev_t *dev, void **state)
{
    if (cut(dev))
        return lmq_dev_fail(dev, LMQ_EIO, "cable cut");
    flaky_t *f = calloc(1, sizeof *f);
    if (!f)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
    *state = f;
    return 0;
}

static void flaky_close(lmq_dev_t *dev, void *state)
{
    (void)dev;
    free(state);
}

static int flaky_check(lmq_dev_t *dev, void *state)
{
    (void)state;
    return cut(dev) ? lmq_dev_fail(dev, LMQ_EIO, "cable cut") : 0;
}

static int flaky_before(lmq_dev_t *dev, void *state, const char *name)
{
    (void)name;
    return flaky_check(dev, state);
}

static int flaky_get_level(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_float(((flaky_t *)state)->level);
    return 0;
}

static int flaky_set_level(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    (void)dev;
    ((flaky_t *)state)->level = in->u.f;
    return 0;
}

static const lmq_property_t flaky_props[] = {
    {.name = "level",
     .doc = "a setting",
     .type = LMQ_FLOAT,
     .unit = "V",
     .limited = true,
     .min = 0,
     .max = 10,
     .get = flaky_get_level,
     .set = flaky_set_level},
    {.name = NULL},
};

static const lmq_driver_t flaky = {.name = "flaky",
                                   .open = flaky_open,
                                   .close = flaky_close,
                                   .before = flaky_before,
                                   .check = flaky_check,
                                   .properties = flaky_props};

/* "cutter": a second device whose only property cuts a named device's cable
 * (through the daemon's wires), and mends it again. */
static int cutter_set(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    (void)state;
    char wire[96];
    const char *s = in->u.s;
    bool mend = s[0] == '+';
    snprintf(wire, sizeof wire, "%s.cut", mend ? s + 1 : s);
    return lmq_dev_wire_set(dev, wire, mend ? 0 : 1);
}

static int cutter_get(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    (void)state;
    return lmq_value_set_string(out, "");
}

static const lmq_property_t cutter_props[] = {
    {.name = "cut", .doc = "NAME cuts, +NAME mends", .type = LMQ_STRING, .get = cutter_get, .set = cutter_set},
    {.name = NULL},
};

static const lmq_driver_t cutter = {.name = "cutter", .properties = cutter_props};

/* ---- helpers ---- */

typedef struct lab {
    void *zctx;
    lmq_daemon_t *d;
} lab_t;

static void lab_new(lab_t *lab)
{
    lab->zctx = zmq_ctx_new();
    lab->d = lmq_daemon_new(lab->zctx, CTL, DATA, NULL);
    ck_assert_ptr_nonnull(lab->d);
}

static void lab_add(lab_t *lab, const char *name, const lmq_driver_t *drv, const char *const *opts)
{
    int rc = lmq_daemon_add(lab->d, name, drv, "", opts);
    ck_assert_msg(rc == 0, "add %s: %s", name, lmq_daemon_last_error(lab->d));
}

static void lab_start(lab_t *lab)
{
    ck_assert_msg(lmq_daemon_start(lab->d) == 0, "%s", lmq_daemon_last_error(lab->d));
    ck_assert_msg(lmq_daemon_wait_ready(lab->d, 20000) == 0, "%s", lmq_daemon_last_error(lab->d));
}

static void lab_end(lab_t *lab)
{
    ck_assert_int_eq(lmq_daemon_stop(lab->d), 0);
    lmq_daemon_destroy(&lab->d);
    zmq_ctx_term(lab->zctx);
}

static lmq_proxy_t *proxy(lab_t *lab, const char *dev)
{
    lmq_proxy_t *p = lmq_proxy_new(lab->zctx, CTL, dev);
    ck_assert_ptr_nonnull(p);
    lmq_proxy_set_timeout(p, 10000);
    return p;
}

/* The device's entry in `stats` (caller json_decref's the returned root via *root). */
static json_t *dev_stats(lmq_proxy_t *p, json_t **root)
{
    char *text = NULL;
    ck_assert_msg(lmq_proxy_stats(p, &text) == 0, "%s", lmq_proxy_last_error(p));
    *root = json_loads(text, 0, NULL);
    free(text);
    return json_array_get(json_object_get(*root, "devices"), 0);
}

static const char *dev_state(lmq_proxy_t *p, char *buf, size_t size)
{
    json_t *root;
    json_t *s = dev_stats(p, &root);
    snprintf(buf, size, "%s", json_string_value(json_object_get(s, "state")));
    json_decref(root);
    return buf;
}

/* ---- tests ---- */

/* Defect 1: a block of the wrong size aborted labmqd (the payload was closed
 * before its size was read for the error text). */
START_TEST(wrong_size_block_fails_that_block_only)
{
    lab_t lab;
    lab_new(&lab);
    lab_add(&lab, "bad", &badpub, NULL);
    lab_add(&lab, "psu1", lmq_driver_find("sim-psu"), NULL);
    lab_start(&lab);
    lmq_sub_t *sub = lmq_sub_new(lab.zctx, DATA, "bad/x");
    lmq_frame_t *f = NULL;
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(lmq_sub_recv(sub, &f, 5000), 0);
        ck_assert_uint_eq(lmq_frame_size(f), 4 * sizeof(double));
        /* Only the good ones (even n) arrive, with contiguous seq: a refused
         * block never got a number. */
        ck_assert_double_eq(fmod(((const double *)lmq_frame_data(f))[0], 2.0), 0.0);
        lmq_frame_destroy(&f);
    }
    ck_assert_uint_eq(lmq_sub_lost(sub), 0);
    lmq_proxy_t *p = proxy(&lab, "bad");
    json_t *root;
    json_t *st = json_array_get(json_object_get(dev_stats(p, &root), "streams"), 0);
    ck_assert_int_ge(json_integer_value(json_object_get(st, "errors")), 3);
    ck_assert_int_ge(json_integer_value(json_object_get(st, "published")), 3);
    json_decref(root);
    /* The rest of the lab is untouched. */
    lmq_proxy_t *psu = proxy(&lab, "psu1");
    double v;
    ck_assert_int_eq(lmq_proxy_get_double(psu, "voltage", &v), 0);
    lmq_proxy_destroy(&psu);
    lmq_proxy_destroy(&p);
    lmq_sub_destroy(&sub);
    lab_end(&lab);
}
END_TEST

/* Defect 8: a driver blocking in plain system calls delays neither start-up
 * nor, beyond the grace period, the stop; the stuck device is named, and
 * every accepted request still gets its one answer. This test leaves a
 * thread stuck by design, so it ends with _exit (the stuck thread still
 * holds its socket: zmq_ctx_term would wait 30 s). */
START_TEST(blocking_driver_bounds_start_and_stop)
{
    lab_t lab;
    lab_new(&lab);
    const char *slow_open[] = {"open_ms", "1500", NULL};
    lab_add(&lab, "stuck", &blocker, NULL);
    lab_add(&lab, "opener", &blocker, slow_open);
    lab_add(&lab, "psu1", lmq_driver_find("sim-psu"), NULL);
    lmq_daemon_set_stop_grace(lab.d, 500);
    double t0 = th_now_ms();
    ck_assert_int_eq(lmq_daemon_start(lab.d), 0);
    ck_assert_msg(th_now_ms() - t0 < 1000, "start waited %.0f ms for an open() of 1500 ms", th_now_ms() - t0);
    lmq_proxy_t *op = proxy(&lab, "opener");
    char state[32];
    ck_assert_str_eq(dev_state(op, state, sizeof state), "opening");
    /* A request waits for the open, then is served. */
    double v;
    ck_assert_msg(lmq_proxy_get_double(op, "fast", &v) == 0, "%s", lmq_proxy_last_error(op));
    ck_assert_double_eq(v, 2);
    ck_assert_str_eq(dev_state(op, state, sizeof state), "ready");

    /* Wedge "stuck" in its driver, and queue two more behind it. */
    lmq_proxy_t *sp = proxy(&lab, "stuck");
    uint64_t ids[3];
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(lmq_proxy_send_get(sp, i == 0 ? "slow" : "fast", &ids[i]), 0);
    struct timespec nap = {0, 200 * 1000000L};
    nanosleep(&nap, NULL);
    /* The others are not held up. */
    lmq_proxy_t *psu = proxy(&lab, "psu1");
    t0 = th_now_ms();
    ck_assert_int_eq(lmq_proxy_get_double(psu, "voltage", &v), 0);
    ck_assert_msg(th_now_ms() - t0 < 500, "psu1 took %.0f ms while another device was stuck", th_now_ms() - t0);

    t0 = th_now_ms();
    int rc = lmq_daemon_stop(lab.d);
    double took = th_now_ms() - t0;
    ck_assert_int_eq(rc, LMQ_ETIMEOUT);
    ck_assert_msg(took >= 450 && took < 2000, "stop took %.0f ms with a 500 ms grace period", took);
    const char *why = lmq_daemon_last_error(lab.d);
    ck_assert_msg(strstr(why, "stuck") && strstr(why, "get slow"), "%s", why);
    ck_assert_msg(!strstr(why, "psu1") && !strstr(why, "opener"), "%s", why);
    /* Each of the three requests: one CLOSED answer, in order. */
    lmq_proxy_set_timeout(sp, 2000);
    for (int i = 0; i < 3; i++) {
        uint64_t id = 0;
        lmq_value_t r = {0};
        rc = lmq_proxy_recv(sp, &id, &r);
        ck_assert_msg(rc == LMQ_ECLOSED, "reply %d: %s %s", i, lmq_status_name(rc), lmq_proxy_last_error(sp));
        ck_assert_uint_eq(id, ids[i]);
        if (i == 0)
            ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(sp), "outcome is unknown"));
    }
    _exit(0);
}
END_TEST

/* Defect 7: samples lost inside the driver (an overrun while the device
 * thread was held up) spend their sequence numbers: subscribers count them,
 * and t_ns stays on the seq grid. */
START_TEST(overrun_is_counted_as_lost)
{
    lab_t lab;
    lab_new(&lab);
    const char *opts[] = {"sample_rate", "1000", "block_size", "50", NULL}; /* 20 blocks/s */
    lab_add(&lab, "daq1", lmq_driver_find("sim-daq"), opts);
    lab_start(&lab);
    lmq_sub_t *sub = lmq_sub_new(lab.zctx, DATA, "daq1/wave");
    lmq_frame_t *f = NULL;
    ck_assert_int_eq(lmq_sub_recv(sub, &f, 5000), 0);
    lmq_frame_destroy(&f);
    /* Hold the device thread for 1.5 s: 30 blocks' time. */
    lmq_proxy_t *p = proxy(&lab, "daq1");
    lmq_value_t s = {0};
    lmq_value_set_string(&s, "hang:1500");
    ck_assert_int_eq(lmq_proxy_set(p, "fault", &s), 0);
    lmq_value_clear(&s);
    double v;
    lmq_proxy_set_timeout(p, 3000);
    lmq_proxy_get_double(p, "amplitude", &v); /* hangs 1.5 s, then fails */
    lmq_value_set_string(&s, "none");
    ck_assert_int_eq(lmq_proxy_set(p, "fault", &s), 0);
    lmq_value_clear(&s);
    uint64_t last_seq = 0;
    int64_t last_t = 0;
    bool first = true;
    for (int i = 0; i < 30; i++) {
        ck_assert_int_eq(lmq_sub_recv(sub, &f, 5000), 0);
        if (!first) {
            /* 50 ms per block, whatever was lost in between. */
            double dt_ms = (double)(lmq_frame_time_ns(f) - last_t) / 1e6;
            double want = 50.0 * (double)(lmq_frame_seq(f) - last_seq);
            ck_assert_msg(fabs(dt_ms - want) < 1.0, "seq %llu -> %llu but t_ns moved %.3f ms",
                          (unsigned long long)last_seq, (unsigned long long)lmq_frame_seq(f), dt_ms);
        }
        first = false;
        last_seq = lmq_frame_seq(f);
        last_t = lmq_frame_time_ns(f);
        lmq_frame_destroy(&f);
    }
    json_t *root;
    json_t *st = json_array_get(json_object_get(dev_stats(p, &root), "streams"), 0);
    json_int_t skipped = json_integer_value(json_object_get(st, "skipped"));
    json_decref(root);
    ck_assert_msg(skipped >= 10, "only %lld blocks skipped after a 1.5 s stall", (long long)skipped);
    ck_assert_uint_eq(lmq_sub_lost(sub), (uint64_t)skipped);
    lmq_proxy_destroy(&p);
    lmq_sub_destroy(&sub);
    lab_end(&lab);
}
END_TEST

/* Defect 6: a device describes exactly what it has. */
START_TEST(describe_lists_configured_inputs_only)
{
    lab_t lab;
    lab_new(&lab);
    const char *opts[] = {"channels", "2", "ao_channels", "0", NULL};
    lab_add(&lab, "daq1", lmq_driver_find("sim-daq"), opts);
    lab_start(&lab);
    lmq_proxy_t *p = proxy(&lab, "daq1");
    char *text = NULL;
    ck_assert_int_eq(lmq_proxy_describe(p, &text), 0);
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    size_t i;
    json_t *e;
    int ai = 0;
    json_array_foreach(json_object_get(j, "properties"), i, e)
    {
        const char *name = json_string_value(json_object_get(e, "name"));
        if (!strncmp(name, "ai", 2) && name[2] >= '0' && name[2] <= '9') {
            ai++;
            lmq_value_t v = {0};
            ck_assert_msg(lmq_proxy_get(p, name, &v) == 0, "%s: %s", name, lmq_proxy_last_error(p));
            lmq_value_clear(&v);
        }
    }
    ck_assert_int_eq(ai, 4); /* ai0, ai0_gain, ai1, ai1_gain */
    bool has_write_ao = false;
    json_array_foreach(json_object_get(j, "methods"), i, e)
    {
        has_write_ao |= !strcmp(json_string_value(json_object_get(e, "name")), "write_ao");
        if (!strcmp(json_string_value(json_object_get(e, "name")), "read")) {
            json_t *a = json_array_get(json_object_get(e, "args"), 0);
            ck_assert_double_eq(json_number_value(json_object_get(a, "max")), 1);
        }
    }
    ck_assert(!has_write_ao); /* no analog outputs: no method for them */
    json_decref(j);
    lmq_value_t v = {0};
    ck_assert_int_eq(lmq_proxy_get(p, "ai2", &v), LMQ_ENOTFOUND);
    lmq_value_t ch = lmq_int(2);
    ck_assert_int_eq(lmq_proxy_call(p, "read", &ch, 1, NULL), LMQ_ERANGE);
    lmq_proxy_destroy(&p);
    lab_end(&lab);
}
END_TEST

/* A lost link: DISCONNECTED within the link check's period, reopened with
 * back-off once the cable is back, and with `restore` the last setting is
 * written back (the instrument forgot it). */
START_TEST(reconnect_restores_settings)
{
    lab_t lab;
    lab_new(&lab);
    lab_add(&lab, "dev1", &flaky, NULL);
    lab_add(&lab, "dev2", &flaky, NULL);
    lab_add(&lab, "cutter", &cutter, NULL);
    ck_assert_int_eq(lmq_daemon_set_restore(lab.d, "dev1", true), 0);
    lab_start(&lab);
    lmq_proxy_t *p1 = proxy(&lab, "dev1"), *p2 = proxy(&lab, "dev2"), *c = proxy(&lab, "cutter");
    lmq_value_t v = lmq_float(4.5);
    ck_assert_int_eq(lmq_proxy_set(p1, "level", &v), 0);
    ck_assert_int_eq(lmq_proxy_set(p2, "level", &v), 0);
    lmq_value_t s = {0}, s2 = {0};
    char state[32];
    double got;
    for (int round = 0; round < 3; round++) {
        lmq_value_set_string(&s, "dev1");
        lmq_value_set_string(&s2, "dev2");
        ck_assert_int_eq(lmq_proxy_set(c, "cut", &s), 0);
        ck_assert_int_eq(lmq_proxy_set(c, "cut", &s2), 0);
        double t0 = th_now_ms();
        while (strcmp(dev_state(p1, state, sizeof state), "disconnected") != 0 && th_now_ms() - t0 < 3000)
            ;
        ck_assert_msg(th_now_ms() - t0 < 1000, "DISCONNECTED after %.0f ms", th_now_ms() - t0);
        while (strcmp(dev_state(p2, state, sizeof state), "disconnected") != 0 && th_now_ms() - t0 < 3000)
            ; /* dev2 too, so that it forgets its setting in every round */
        ck_assert_str_eq(state, "disconnected");
        ck_assert_int_eq(lmq_proxy_get_double(p1, "level", &got), LMQ_EDEVICE);
        ck_assert_msg(strstr(lmq_proxy_last_error(p1), "cable cut"), "%s", lmq_proxy_last_error(p1));
        lmq_value_set_string(&s, "+dev1");
        lmq_value_set_string(&s2, "+dev2");
        ck_assert_int_eq(lmq_proxy_set(c, "cut", &s), 0);
        ck_assert_int_eq(lmq_proxy_set(c, "cut", &s2), 0);
        t0 = th_now_ms();
        while (strcmp(dev_state(p1, state, sizeof state), "ready") != 0 && th_now_ms() - t0 < 3000)
            ;
        ck_assert_msg(th_now_ms() - t0 < 2000, "READY after %.0f ms", th_now_ms() - t0);
        ck_assert_int_eq(lmq_proxy_get_double(p1, "level", &got), 0);
        ck_assert_double_eq(got, 4.5); /* restored */
    }
    double t0 = th_now_ms();
    while (lmq_proxy_get_double(p2, "level", &got) != 0 && th_now_ms() - t0 < 3000)
        ;
    ck_assert_double_eq(got, 0); /* not restored: forgotten, as by the instrument */
    lmq_value_clear(&s2);
    json_t *root;
    json_t *st = dev_stats(p1, &root);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "disconnects")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "restores")), 3);
    json_decref(root);
    lmq_value_clear(&s);
    lmq_proxy_destroy(&p1);
    lmq_proxy_destroy(&p2);
    lmq_proxy_destroy(&c);
    lab_end(&lab);
}
END_TEST

/* Simulated time: with time_scale 100 a 5 V ramp at 1 V/s (5 s) takes 50 ms. */
START_TEST(time_scale_speeds_up_simulated_instruments)
{
    const char *opts[] = {"slew_v_per_s", "1", "noise", "0", NULL};
    double took[2];
    for (int k = 0; k < 2; k++) {
        lab_t lab;
        lab_new(&lab);
        lab_add(&lab, "psu1", lmq_driver_find("sim-psu"), opts);
        ck_assert_int_eq(lmq_daemon_set_time_scale(lab.d, k ? 100 : 10), 0);
        lab_start(&lab);
        lmq_proxy_t *p = proxy(&lab, "psu1");
        lmq_value_t on = lmq_bool(true), cl = lmq_float(1), v = lmq_float(5);
        ck_assert_int_eq(lmq_proxy_set(p, "current_limit", &cl), 0);
        ck_assert_int_eq(lmq_proxy_set(p, "output", &on), 0);
        double t0 = th_now_ms();
        ck_assert_int_eq(lmq_proxy_set(p, "voltage", &v), 0); /* returns once slewed */
        took[k] = th_now_ms() - t0;
        double vm;
        ck_assert_int_eq(lmq_proxy_get_double(p, "measured_voltage", &vm), 0);
        ck_assert_msg(fabs(vm - 5) < 0.05, "slewed to %g V", vm);
        lmq_proxy_destroy(&p);
        lab_end(&lab);
    }
    /* 5 s of simulated time: 500 ms at x10, 50 ms at x100 */
    ck_assert_msg(took[0] >= 450 && took[0] < 2500, "x10: %.0f ms", took[0]);
    ck_assert_msg(took[1] >= 45 && took[1] < took[0] / 3, "x100: %.0f ms (x10: %.0f ms)", took[1], took[0]);
}
END_TEST

/* A stream nobody subscribes to costs nothing: no block is made or sent
 * (published stays put); a subscriber starts it, and leaving stops it. */
START_TEST(unwatched_streams_cost_nothing)
{
    lab_t lab;
    lab_new(&lab);
    const char *opts[] = {"width", "256", "height", "256", "fps", "50", NULL};
    lab_add(&lab, "cam1", lmq_driver_find("sim-camera"), opts);
    lab_start(&lab);
    lmq_proxy_t *p = proxy(&lab, "cam1");
    ck_assert_int_eq(lmq_proxy_call(p, "start", NULL, 0, NULL), 0);
    struct timespec nap = {0, 500 * 1000000L};
    nanosleep(&nap, NULL);
    json_t *root;
    json_t *st = json_array_get(json_object_get(dev_stats(p, &root), "streams"), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "published")), 0);
    json_decref(root);
    lmq_sub_t *sub = lmq_sub_new(lab.zctx, DATA, "cam1/frames");
    lmq_frame_t *f = NULL;
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(lmq_sub_recv(sub, &f, 5000), 0);
        lmq_frame_destroy(&f);
    }
    ck_assert_uint_eq(lmq_sub_lost(sub), 0);
    lmq_sub_destroy(&sub);
    nanosleep(&nap, NULL); /* the unsubscription reaches the daemon */
    st = json_array_get(json_object_get(dev_stats(p, &root), "streams"), 0);
    json_int_t before = json_integer_value(json_object_get(st, "published"));
    json_decref(root);
    ck_assert_int_ge(before, 5);
    nanosleep(&nap, NULL); /* 25 frames' time */
    st = json_array_get(json_object_get(dev_stats(p, &root), "streams"), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "published")), before);
    json_decref(root);
    lmq_proxy_destroy(&p);
    lab_end(&lab);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("device");
    TCase *tc = tcase_create("device");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, wrong_size_block_fails_that_block_only);
    tcase_add_exit_test(tc, blocking_driver_bounds_start_and_stop, 0);
    tcase_add_test(tc, overrun_is_counted_as_lost);
    tcase_add_test(tc, describe_lists_configured_inputs_only);
    tcase_add_test(tc, reconnect_restores_settings);
    tcase_add_test(tc, time_scale_speeds_up_simulated_instruments);
    tcase_add_test(tc, unwatched_streams_cost_nothing);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
