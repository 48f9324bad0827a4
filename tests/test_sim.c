/* The simulated instruments (drivers/sim), through the public API: an
 * in-process daemon on inproc:// endpoints, proxies and subscriptions, exactly
 * as a lab app would use them. Expectations come from the drivers' models
 * (noise switched off where a test compares exact values).
 *
 * Check forks per test: every test creates its own ZeroMQ context inside the
 * test body, never in a fixture that runs before the fork. */
#include <check.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "harness.h"
#include "labmq/labmq.h"

#define CTL "inproc://t-ctl"
#define DATA "inproc://t-data"
/* Generous: under the sanitizers on two shared cores everything is slow. */
#define CALL_TIMEOUT_MS 10000

typedef struct devspec {
    const char *name, *driver;
    const char *const *options;
} devspec_t;

typedef struct lab {
    void *zctx;
    lmq_daemon_t *daemon;
} lab_t;

static void lab_start(lab_t *lab, const devspec_t *devs, size_t n)
{
    lab->zctx = zmq_ctx_new();
    ck_assert_ptr_nonnull(lab->zctx);
    lab->daemon = lmq_daemon_new(lab->zctx, CTL, DATA, NULL);
    ck_assert_ptr_nonnull(lab->daemon);
    for (size_t i = 0; i < n; i++) {
        const lmq_driver_t *drv = lmq_driver_find(devs[i].driver);
        ck_assert_msg(drv != NULL, "no driver %s", devs[i].driver);
        int rc = lmq_daemon_add(lab->daemon, devs[i].name, drv, "", devs[i].options);
        ck_assert_msg(rc == 0, "add %s: %s", devs[i].name, lmq_daemon_last_error(lab->daemon));
    }
    int rc = lmq_daemon_start(lab->daemon);
    ck_assert_msg(rc == 0, "start: %s", lmq_daemon_last_error(lab->daemon));
    ck_assert_msg(lmq_daemon_wait_ready(lab->daemon, 20000) == 0, "%s", lmq_daemon_last_error(lab->daemon));
}

static void lab_stop(lab_t *lab)
{
    lmq_daemon_destroy(&lab->daemon);
    ck_assert_ptr_null(lab->daemon);
    zmq_ctx_term(lab->zctx);
}

static lmq_proxy_t *proxy(lab_t *lab, const char *device)
{
    lmq_proxy_t *p = lmq_proxy_new(lab->zctx, CTL, device);
    ck_assert_ptr_nonnull(p);
    lmq_proxy_set_timeout(p, CALL_TIMEOUT_MS);
    return p;
}

static double get_d(lmq_proxy_t *p, const char *prop)
{
    double v = NAN;
    int rc = lmq_proxy_get_double(p, prop, &v);
    ck_assert_msg(rc == 0, "get %s.%s: %s: %s", lmq_proxy_device(p), prop, lmq_status_name(rc),
                  lmq_proxy_last_error(p));
    return v;
}

static int try_set_d(lmq_proxy_t *p, const char *prop, double v)
{
    lmq_value_t val = lmq_float(v);
    return lmq_proxy_set(p, prop, &val);
}

static void set_d(lmq_proxy_t *p, const char *prop, double v)
{
    int rc = try_set_d(p, prop, v);
    ck_assert_msg(rc == 0, "set %s.%s = %g: %s: %s", lmq_proxy_device(p), prop, v, lmq_status_name(rc),
                  lmq_proxy_last_error(p));
}

static void set_b(lmq_proxy_t *p, const char *prop, bool b)
{
    lmq_value_t val = lmq_bool(b);
    int rc = lmq_proxy_set(p, prop, &val);
    ck_assert_msg(rc == 0, "set %s.%s: %s: %s", lmq_proxy_device(p), prop, lmq_status_name(rc),
                  lmq_proxy_last_error(p));
}

static int try_set_s(lmq_proxy_t *p, const char *prop, const char *s)
{
    lmq_value_t val = {0};
    ck_assert_int_eq(lmq_value_set_string(&val, s), 0);
    int rc = lmq_proxy_set(p, prop, &val);
    lmq_value_clear(&val);
    return rc;
}

static void set_s(lmq_proxy_t *p, const char *prop, const char *s)
{
    int rc = try_set_s(p, prop, s);
    ck_assert_msg(rc == 0, "set %s.%s = %s: %s: %s", lmq_proxy_device(p), prop, s, lmq_status_name(rc),
                  lmq_proxy_last_error(p));
}

static void assert_get_s(lmq_proxy_t *p, const char *prop, const char *want)
{
    lmq_value_t v = {0};
    int rc = lmq_proxy_get(p, prop, &v);
    ck_assert_msg(rc == 0, "get %s: %s: %s", prop, lmq_status_name(rc), lmq_proxy_last_error(p));
    ck_assert_int_eq(v.type, LMQ_STRING);
    ck_assert_str_eq(v.u.s, want);
    lmq_value_clear(&v);
}

static void assert_error(lmq_proxy_t *p, int rc, int want, const char *text)
{
    ck_assert_msg(rc == want, "expected %s, got %s (%s)", lmq_status_name(want), lmq_status_name(rc),
                  lmq_proxy_last_error(p));
    if (text)
        ck_assert_msg(strstr(lmq_proxy_last_error(p), text) != NULL, "error '%s' lacks '%s'",
                      lmq_proxy_last_error(p), text);
}

static double read_ai(lmq_proxy_t *daq, int64_t ch)
{
    lmq_value_t arg = lmq_int(ch), res = {0};
    int rc = lmq_proxy_call(daq, "read", &arg, 1, &res);
    ck_assert_msg(rc == 0, "read(%lld): %s: %s", (long long)ch, lmq_status_name(rc), lmq_proxy_last_error(daq));
    ck_assert_int_eq(res.type, LMQ_FLOAT);
    return res.u.f;
}

static int write_ao(lmq_proxy_t *daq, int64_t ch, double volts)
{
    lmq_value_t args[2] = {lmq_int(ch), lmq_float(volts)};
    return lmq_proxy_call(daq, "write_ao", args, 2, NULL);
}

/* A linear, noise-free, instantly slewing supply: every reading is exact. */
static const char *const psu_linear[] = {"load_diode", "false", "load_ohms", "100", "noise", "0",
                                         "slew_v_per_s", "0", NULL};

/* ---- sim-psu ---- */

START_TEST(psu_cv_to_cc)
{
    lab_t lab;
    devspec_t devs[] = {{"psu1", "sim-psu", psu_linear}};
    lab_start(&lab, devs, 1);
    lmq_proxy_t *psu = proxy(&lab, "psu1");

    assert_get_s(psu, "mode", "OFF");
    set_d(psu, "current_limit", 0.1);
    set_d(psu, "voltage", 5.0);
    set_b(psu, "output", true);
    /* 5 V across 100 ohm = 50 mA, under the 100 mA limit: constant voltage. */
    assert_get_s(psu, "mode", "CV");
    ck_assert_double_eq_tol(get_d(psu, "measured_voltage"), 5.0, 1e-9);
    ck_assert_double_eq_tol(get_d(psu, "measured_current"), 0.05, 1e-12);

    /* A 20 mA limit: the supply holds the current, the voltage drops to 2 V. */
    set_d(psu, "current_limit", 0.02);
    assert_get_s(psu, "mode", "CC");
    ck_assert_double_eq_tol(get_d(psu, "measured_current"), 0.02, 1e-12);
    ck_assert_double_eq_tol(get_d(psu, "measured_voltage"), 2.0, 1e-9);
    ck_assert_double_eq_tol(get_d(psu, "voltage"), 5.0, 1e-12); /* the setpoint is kept */

    /* Back to CV exactly at the boundary. */
    set_d(psu, "current_limit", 0.05);
    assert_get_s(psu, "mode", "CV");

    /* measure() returns [V, A] in one reading. */
    lmq_value_t res = {0};
    ck_assert_int_eq(lmq_proxy_call(psu, "measure", NULL, 0, &res), 0);
    ck_assert_int_eq(res.type, LMQ_ARRAY);
    ck_assert_int_eq(res.u.a.dtype, LMQ_F64);
    ck_assert_uint_eq(res.u.a.shape[0], 2);
    ck_assert_double_eq_tol(((double *)res.u.a.data)[0], 5.0, 1e-9);
    ck_assert_double_eq_tol(((double *)res.u.a.data)[1], 0.05, 1e-12);
    lmq_value_clear(&res);

    ck_assert_int_eq(lmq_proxy_call(psu, "reset", NULL, 0, NULL), 0);
    assert_get_s(psu, "mode", "OFF");
    ck_assert_double_eq(get_d(psu, "measured_current"), 0.0);

    lmq_proxy_destroy(&psu);
    lab_stop(&lab);
}
END_TEST

START_TEST(psu_diode_load_is_nonlinear)
{
    lab_t lab;
    const char *const opts[] = {"noise", "0", "slew_v_per_s", "0", NULL}; /* default: diode + 100 ohm */
    devspec_t devs[] = {{"psu1", "sim-psu", opts}};
    lab_start(&lab, devs, 1);
    lmq_proxy_t *psu = proxy(&lab, "psu1");
    set_d(psu, "current_limit", 1.0);
    set_b(psu, "output", true);

    set_d(psu, "voltage", 1.0);
    double i1 = get_d(psu, "measured_current");
    set_d(psu, "voltage", 5.0);
    double i5 = get_d(psu, "measured_current");
    /* Below the LED's knee almost nothing flows; above it the resistor
     * dominates, with the diode dropping about 1.9 V. */
    ck_assert_msg(i1 < 1e-6, "I(1 V) = %g A", i1);
    ck_assert_msg(i5 > 0.025 && i5 < 0.035, "I(5 V) = %g A", i5);
    double vd = 5.0 - i5 * 100.0;
    ck_assert_msg(vd > 1.7 && vd < 2.1, "diode drop %g V", vd);

    /* A sweep: [points, 2], current rising monotonically. */
    lmq_value_t args[3] = {lmq_float(0.0), lmq_float(6.0), lmq_int(13)}, res = {0};
    int rc = lmq_proxy_call(psu, "sweep", args, 3, &res);
    ck_assert_msg(rc == 0, "sweep: %s", lmq_proxy_last_error(psu));
    ck_assert_int_eq(res.type, LMQ_ARRAY);
    ck_assert_uint_eq(res.u.a.ndim, 2);
    ck_assert_uint_eq(res.u.a.shape[0], 13);
    ck_assert_uint_eq(res.u.a.shape[1], 2);
    const double *iv = res.u.a.data;
    for (int k = 1; k < 13; k++) {
        ck_assert_double_eq_tol(iv[2 * k], 0.5 * k, 1e-9);
        ck_assert(iv[2 * k + 1] >= iv[2 * k - 1]);
    }
    lmq_value_clear(&res);
    ck_assert_double_eq_tol(get_d(psu, "voltage"), 5.0, 1e-12); /* restored */

    lmq_proxy_destroy(&psu);
    lab_stop(&lab);
}
END_TEST

/* Upper bound for a set that slews for `ms`: the slew itself waits on one
 * timer, so only the round trip adds to it. Twice the slew plus 300 ms covers
 * a slow round trip on a loaded machine under the sanitizers, and still fails
 * a supply that slews at a third of its rate or waits for a full-range ramp
 * (30 V at 20 V/s: 1.5 s). */
#define SLEW_BOUND_MS(ms) (2.0 * (ms) + 300.0)

START_TEST(psu_slew_is_paced)
{
    lab_t lab;
    const char *const opts[] = {"load_diode", "false", "noise", "0", "slew_v_per_s", "20", NULL};
    devspec_t devs[] = {{"psu1", "sim-psu", opts}};
    lab_start(&lab, devs, 1);
    lmq_proxy_t *psu = proxy(&lab, "psu1");
    set_d(psu, "current_limit", 1.0);
    set_b(psu, "output", true);
    /* The set returns once the output has slewed: 10 V at 20 V/s is 0.5 s,
     * paced by the clock, and the terminals are at the setpoint then. */
    double t0 = th_now_ms();
    set_d(psu, "voltage", 10.0);
    double took = th_now_ms() - t0;
    ck_assert_msg(took >= 490 && took < SLEW_BOUND_MS(500), "a 10 V step at 20 V/s returned after %.0f ms", took);
    ck_assert_double_eq_tol(get_d(psu, "measured_voltage"), 10.0, 1e-9);
    /* Down again, half the way: half the time. */
    t0 = th_now_ms();
    set_d(psu, "voltage", 5.0);
    took = th_now_ms() - t0;
    ck_assert_msg(took >= 240 && took < SLEW_BOUND_MS(250), "a 5 V step at 20 V/s returned after %.0f ms", took);
    ck_assert_double_eq_tol(get_d(psu, "measured_voltage"), 5.0, 1e-9);
    /* A sweep waits for each point too: 5 -> 7.5 -> 10 V is 0.25 s of slewing,
     * and every reading is at its point. */
    lmq_value_t args[3] = {lmq_float(5.0), lmq_float(10.0), lmq_int(3)}, res = {0};
    t0 = th_now_ms();
    int rc = lmq_proxy_call(psu, "sweep", args, 3, &res);
    took = th_now_ms() - t0;
    ck_assert_msg(rc == 0, "sweep: %s", lmq_proxy_last_error(psu));
    ck_assert_msg(took >= 240 && took < SLEW_BOUND_MS(250), "a 5 V sweep at 20 V/s returned after %.0f ms", took);
    ck_assert_uint_eq(res.u.a.shape[0], 3);
    for (int k = 0; k < 3; k++)
        ck_assert_double_eq_tol(((const double *)res.u.a.data)[2 * k], 5.0 + 2.5 * k, 1e-9);
    lmq_value_clear(&res);
    lmq_proxy_destroy(&psu);
    lab_stop(&lab);
}
END_TEST

START_TEST(psu_limits_and_access)
{
    lab_t lab;
    devspec_t devs[] = {{"psu1", "sim-psu", psu_linear}};
    lab_start(&lab, devs, 1);
    lmq_proxy_t *psu = proxy(&lab, "psu1");

    /* The unit's max_voltage (30 V by default), not the model's 60 V rating. */
    assert_error(psu, try_set_d(psu, "voltage", 45.0), LMQ_ERANGE, "psu1.voltage = 45 V is outside 0..30 V");
    assert_error(psu, try_set_d(psu, "voltage", 100.0), LMQ_ERANGE, NULL); /* beyond the model's rating */
    assert_error(psu, try_set_d(psu, "voltage", -1.0), LMQ_ERANGE, NULL);
    assert_error(psu, try_set_d(psu, "current_limit", 3.5), LMQ_ERANGE, "outside 0..3 A");
    assert_error(psu, try_set_d(psu, "measured_voltage", 1.0), LMQ_EREADONLY, NULL);
    assert_error(psu, try_set_s(psu, "mode", "CC"), LMQ_EREADONLY, NULL);
    assert_error(psu, try_set_s(psu, "voltage", "high"), LMQ_EARG, NULL);
    assert_error(psu, try_set_d(psu, "volts", 1.0), LMQ_ENOTFOUND, NULL);
    lmq_value_t args[3] = {lmq_float(0.0), lmq_float(40.0), lmq_int(3)};
    assert_error(psu, lmq_proxy_call(psu, "sweep", args, 3, NULL), LMQ_ERANGE, NULL);
    args[1] = lmq_float(1.0);
    assert_error(psu, lmq_proxy_call(psu, "sweep", args, 3, NULL), LMQ_EDEVICE, "output is off");
    ck_assert_double_eq(get_d(psu, "voltage"), 0.0); /* nothing took effect */

    lmq_proxy_destroy(&psu);
    lab_stop(&lab);
}
END_TEST

START_TEST(psu_bad_options_keep_device_closed)
{
    lab_t lab;
    const char *const opts[] = {"max_voltage", "100", NULL};
    devspec_t devs[] = {{"psu1", "sim-psu", opts}};
    lab_start(&lab, devs, 1);
    lmq_proxy_t *psu = proxy(&lab, "psu1");
    double v;
    assert_error(psu, lmq_proxy_get_double(psu, "voltage", &v), LMQ_EDEVICE, "rating");
    lmq_proxy_destroy(&psu);
    lab_stop(&lab);
}
END_TEST

/* ---- wiring between instruments ---- */

START_TEST(daq_measures_psu_current)
{
    lab_t lab;
    const char *const daq_opts[] = {"ai_wires", "psu1.iout, psu1.vout,,daq1.ao1", "ai_gain", "10", "noise", "0",
                                    NULL};
    devspec_t devs[] = {{"psu1", "sim-psu", psu_linear}, {"daq1", "sim-daq", daq_opts}};
    lab_start(&lab, devs, 2);
    lmq_proxy_t *psu = proxy(&lab, "psu1"), *daq = proxy(&lab, "daq1");

    set_d(psu, "current_limit", 1.0);
    set_d(psu, "voltage", 5.0);
    set_b(psu, "output", true);
    ck_assert_double_eq_tol(get_d(psu, "measured_current"), 0.05, 1e-12);
    /* 10 V per A of the psu's current, within one LSB of the 10 V range. */
    double lsb = 20.0 / 65536;
    ck_assert_double_eq_tol(read_ai(daq, 0), 0.5, lsb);
    ck_assert_double_eq_tol(read_ai(daq, 1), 10.0 - lsb, lsb / 2); /* 5 V x 10 clips at full scale */
    ck_assert_double_eq_tol(read_ai(daq, 2), 0.0, lsb);     /* unconnected */
    ck_assert_double_eq_tol(get_d(daq, "ai0"), 0.5, lsb);
    ck_assert_double_eq(get_d(daq, "ai0_gain"), 10.0);

    /* A gain of 1 on ai1 reads the voltage itself. */
    set_d(daq, "ai1_gain", 1.0);
    ck_assert_double_eq_tol(read_ai(daq, 1), 5.0, lsb);
    /* A smaller range resolves the current better. */
    set_d(daq, "ai_range", 0.8);
    ck_assert_double_eq(get_d(daq, "ai_range"), 1.0);
    ck_assert_double_eq_tol(read_ai(daq, 0), 0.5, 2.0 / 65536);

    /* Analog output loops back into ai3 through the wire. */
    ck_assert_int_eq(write_ao(daq, 1, 0.25), 0);
    ck_assert_double_eq_tol(read_ai(daq, 3), 1.0 - 2.0 / 65536, 1e-9); /* 0.25 V x 10 clips on the 1 V range */
    set_d(daq, "ai3_gain", 1.0);
    ck_assert_double_eq_tol(read_ai(daq, 3), 0.25, 2.0 / 65536);

    lmq_value_t arg = lmq_int(4), res = {0};
    assert_error(daq, lmq_proxy_call(daq, "read", &arg, 1, NULL), LMQ_ERANGE, "outside 0..3");
    double v;
    assert_error(daq, lmq_proxy_get_double(daq, "ai5", &v), LMQ_ENOTFOUND, NULL);
    ck_assert_int_eq(lmq_proxy_call(daq, "read_all", NULL, 0, &res), 0);
    ck_assert_int_eq(res.type, LMQ_ARRAY);
    ck_assert_uint_eq(res.u.a.shape[0], 4);
    ck_assert_double_eq_tol(((double *)res.u.a.data)[0], 0.5, 2.0 / 65536);
    lmq_value_clear(&res);

    lmq_proxy_destroy(&psu);
    lmq_proxy_destroy(&daq);
    lab_stop(&lab);
}
END_TEST

START_TEST(daq_output_drives_load)
{
    lab_t lab;
    const char *const psu_opts[] = {"load_diode", "false", "load_ohms", "100", "noise",        "0",
                                    "slew_v_per_s", "0",  "load_control", "daq1.ao0", NULL};
    devspec_t devs[] = {{"psu1", "sim-psu", psu_opts}, {"daq1", "sim-daq", NULL}};
    lab_start(&lab, devs, 2);
    lmq_proxy_t *psu = proxy(&lab, "psu1"), *daq = proxy(&lab, "daq1");

    set_d(psu, "current_limit", 1.0);
    set_d(psu, "voltage", 5.0);
    set_b(psu, "output", true);
    ck_assert_double_eq_tol(get_d(psu, "measured_current"), 0.05, 1e-12);
    /* Gate at 5 V: 20 mS/V x (5 - 1) V = 80 mS in parallel, 0.4 A more at 5 V. */
    ck_assert_int_eq(write_ao(daq, 0, 5.0), 0);
    ck_assert_double_eq_tol(get_d(psu, "measured_current"), 0.45, 1e-12);
    /* Below threshold the load is off again. */
    ck_assert_int_eq(write_ao(daq, 0, 0.5), 0);
    ck_assert_double_eq_tol(get_d(psu, "measured_current"), 0.05, 1e-12);
    /* Enough to hit the 0.3 A limit: the supply goes CC. */
    ck_assert_int_eq(write_ao(daq, 0, 10.0), 0);
    set_d(psu, "current_limit", 0.3);
    assert_get_s(psu, "mode", "CC");
    ck_assert_double_eq_tol(get_d(psu, "measured_current"), 0.3, 1e-12);

    assert_error(daq, write_ao(daq, 0, 11.0), LMQ_ERANGE, "outside -10..10 V");
    assert_error(daq, write_ao(daq, 2, 1.0), LMQ_ERANGE, "outside 0..1");

    lmq_proxy_destroy(&psu);
    lmq_proxy_destroy(&daq);
    lab_stop(&lab);
}
END_TEST

/* ---- streams ---- */

START_TEST(daq_wave_stream)
{
    lab_t lab;
    const char *const opts[] = {"sample_rate", "10000", "block_size", "500", "frequency", "50", NULL};
    devspec_t devs[] = {{"daq1", "sim-daq", opts}};
    lab_start(&lab, devs, 1);
    lmq_proxy_t *daq = proxy(&lab, "daq1");
    lmq_sub_t *sub = lmq_sub_new(lab.zctx, DATA, "daq1/wave");
    ck_assert_ptr_nonnull(sub);

    enum { N = 12 };
    lmq_frame_t *f[N];
    double t_first = 0;
    for (int k = 0; k < N; k++) {
        int rc = lmq_sub_recv(sub, &f[k], 5000);
        ck_assert_msg(rc == 0, "block %d: %s", k, lmq_status_name(rc));
        if (k == 0)
            t_first = th_now_ms();
    }
    double elapsed = th_now_ms() - t_first; /* 11 periods of 50 ms */
    ck_assert_msg(elapsed > 300 && elapsed < 3000, "%d blocks took %.0f ms", N - 1, elapsed);
    ck_assert_uint_eq(lmq_sub_lost(sub), 0);
    double step = 2 * M_PI * 50.0 / 10000.0 * 1.0; /* largest change between samples, amplitude 1 V */
    for (int k = 0; k < N; k++) {
        ck_assert_int_eq(lmq_frame_dtype(f[k]), LMQ_F64);
        ck_assert_uint_eq(lmq_frame_ndim(f[k]), 1);
        ck_assert_uint_eq(lmq_frame_shape(f[k])[0], 500);
        ck_assert_uint_eq(lmq_frame_size(f[k]), 500 * sizeof(double));
        ck_assert_str_eq(lmq_frame_units(f[k]), "V");
        const double *x = lmq_frame_data(f[k]);
        for (int i = 1; i < 500; i++)
            ck_assert_msg(fabs(x[i] - x[i - 1]) < step + 0.01, "jump inside block %d at %d", k, i);
        if (k > 0) {
            ck_assert_uint_eq(lmq_frame_seq(f[k]), lmq_frame_seq(f[k - 1]) + 1);
            /* Block times follow the sample clock exactly: 500 samples at 10 kS/s. */
            int64_t dt = lmq_frame_time_ns(f[k]) - lmq_frame_time_ns(f[k - 1]);
            ck_assert_msg(llabs(dt - 50000000) < 1000, "block spacing %lld ns", (long long)dt);
            /* Phase-continuous across blocks. */
            const double *prev = lmq_frame_data(f[k - 1]);
            ck_assert_msg(fabs(x[0] - prev[499]) < step + 0.01, "jump between blocks %d and %d", k - 1, k);
        }
    }
    for (int k = 0; k < N; k++)
        lmq_frame_destroy(&f[k]);

    assert_error(daq, try_set_s(daq, "waveform", "triangle"), LMQ_EARG, "sine, square or noise");
    assert_error(daq, try_set_d(daq, "frequency", 6000.0), LMQ_ERANGE, "Nyquist");
    assert_error(daq, try_set_d(daq, "sample_rate", 50.0), LMQ_ERANGE, "Nyquist"); /* below 2 x 50 Hz */
    assert_error(daq, try_set_d(daq, "sample_rate", 0.5), LMQ_ERANGE, NULL);
    assert_error(daq, try_set_d(daq, "amplitude", 10.5), LMQ_ERANGE, NULL);
    assert_error(daq, try_set_d(daq, "amplitude", -1.0), LMQ_ERANGE, NULL);
    ck_assert_double_eq(get_d(daq, "sample_rate"), 10000.0); /* nothing took effect */
    ck_assert_double_eq(get_d(daq, "amplitude"), 1.0);
    set_s(daq, "waveform", "square");
    set_d(daq, "amplitude", 2.0);
    /* Skip every block that may hold samples from before the change: a block
     * is generated once its last sample is due, so one whose first sample
     * comes after the set returned was generated wholly after it, however
     * late the blocks queued before it are delivered. */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t changed_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
    lmq_frame_t *sq = NULL;
    for (int k = 0;; k++) {
        /* 20 blocks/s: 200 blocks is 10 s of stream at least. */
        ck_assert_msg(k < 200, "no block acquired after the change among %d", k);
        lmq_frame_destroy(&sq);
        ck_assert_int_eq(lmq_sub_recv(sub, &sq, 5000), 0);
        if (lmq_frame_time_ns(sq) >= changed_ns)
            break;
    }
    const double *x = lmq_frame_data(sq);
    for (int i = 0; i < 500; i++)
        ck_assert_msg(fabs(fabs(x[i]) - 2.0) < 0.01, "square sample %d = %g", i, x[i]);
    lmq_frame_destroy(&sq);

    lmq_sub_destroy(&sub);
    lmq_proxy_destroy(&daq);
    lab_stop(&lab);
}
END_TEST

/* Centroid of the pixels well above the dark level. */
static void centroid(const uint16_t *px, size_t w, size_t h, double *cx, double *cy)
{
    double sx = 0, sy = 0, s = 0;
    for (size_t y = 0; y < h; y++)
        for (size_t x = 0; x < w; x++) {
            double v = px[y * w + x];
            if (v > 300) {
                sx += v * (double)x;
                sy += v * (double)y;
                s += v;
            }
        }
    ck_assert_msg(s > 0, "no spot in the frame");
    *cx = sx / s;
    *cy = sy / s;
}

START_TEST(camera_frames_and_spot)
{
    lab_t lab;
    const char *const opts[] = {"width", "128", "height", "96", "fps", "20", "exposure_ms", "2", NULL};
    devspec_t devs[] = {{"cam1", "sim-camera", opts}};
    lab_start(&lab, devs, 1);
    lmq_proxy_t *cam = proxy(&lab, "cam1");
    lmq_sub_t *sub = lmq_sub_new(lab.zctx, DATA, "cam1/frames");
    ck_assert_ptr_nonnull(sub);

    lmq_frame_t *f = NULL;
    ck_assert_int_eq(lmq_sub_recv(sub, &f, 5000), 0);
    ck_assert_int_eq(lmq_frame_dtype(f), LMQ_U16);
    ck_assert_uint_eq(lmq_frame_ndim(f), 2);
    ck_assert_uint_eq(lmq_frame_shape(f)[0], 96);
    ck_assert_uint_eq(lmq_frame_shape(f)[1], 128);
    ck_assert_str_eq(lmq_frame_units(f), "counts");
    const uint16_t *px = lmq_frame_data(f);
    uint16_t mx = 0;
    for (size_t i = 0; i < 96 * 128; i++)
        mx = px[i] > mx ? px[i] : mx;
    ck_assert_msg(mx > 500 && mx <= 4095, "peak %u counts", (unsigned)mx); /* 12-bit */
    lmq_frame_destroy(&f);

    /* Two snaps 300 ms apart: the spot has moved. */
    lmq_value_t a = {0}, b = {0};
    ck_assert_int_eq(lmq_proxy_call(cam, "snap", NULL, 0, &a), 0);
    usleep(300000);
    ck_assert_int_eq(lmq_proxy_call(cam, "snap", NULL, 0, &b), 0);
    ck_assert_int_eq(a.type, LMQ_ARRAY);
    ck_assert_int_eq(a.u.a.dtype, LMQ_U16);
    ck_assert_uint_eq(a.u.a.ndim, 2);
    ck_assert_uint_eq(a.u.a.shape[0], 96);
    ck_assert_uint_eq(a.u.a.shape[1], 128);
    double ax, ay, bx, by;
    centroid(a.u.a.data, 128, 96, &ax, &ay);
    centroid(b.u.a.data, 128, 96, &bx, &by);
    ck_assert_msg(hypot(bx - ax, by - ay) > 2.0, "spot stayed at (%.1f, %.1f) -> (%.1f, %.1f)", ax, ay, bx, by);
    lmq_value_clear(&a);
    lmq_value_clear(&b);

    assert_error(cam, try_set_d(cam, "exposure", 100.0), LMQ_ERANGE, "frame period");
    assert_error(cam, try_set_d(cam, "width", 64.0), LMQ_EREADONLY, NULL);

    /* stop(): no more frames. */
    ck_assert_int_eq(lmq_proxy_call(cam, "stop", NULL, 0, NULL), 0);
    while (lmq_sub_recv(sub, &f, 300) == 0)
        lmq_frame_destroy(&f);
    ck_assert_int_eq(lmq_sub_recv(sub, &f, 400), LMQ_ETIMEOUT);
    lmq_value_t acq = {0};
    ck_assert_int_eq(lmq_proxy_get(cam, "acquiring", &acq), 0);
    ck_assert(acq.type == LMQ_BOOL && !acq.u.b);
    ck_assert_int_eq(lmq_proxy_call(cam, "start", NULL, 0, NULL), 0);
    ck_assert_int_eq(lmq_sub_recv(sub, &f, 5000), 0);
    lmq_frame_destroy(&f);

    lmq_sub_destroy(&sub);
    lmq_proxy_destroy(&cam);
    lab_stop(&lab);
}
END_TEST

/* ---- the fault knob ---- */

START_TEST(fault_delay)
{
    lab_t lab;
    devspec_t devs[] = {{"psu1", "sim-psu", psu_linear}};
    lab_start(&lab, devs, 1);
    lmq_proxy_t *psu = proxy(&lab, "psu1");
    assert_get_s(psu, "fault", "none");
    set_s(psu, "fault", "delay:250");
    assert_get_s(psu, "fault", "delay:250"); /* the knob itself is never delayed */
    double t0 = th_now_ms();
    get_d(psu, "voltage");
    double dt = th_now_ms() - t0;
    ck_assert_msg(dt >= 240, "delayed get took %.0f ms", dt);
    set_s(psu, "fault", "none");
    t0 = th_now_ms();
    get_d(psu, "voltage");
    dt = th_now_ms() - t0;
    ck_assert_msg(dt < 240, "cleared get took %.0f ms", dt);
    lmq_proxy_destroy(&psu);
    lab_stop(&lab);
}
END_TEST

START_TEST(fault_error_and_disconnect)
{
    lab_t lab;
    const char *const cam_opts[] = {"width", "32", "height", "32", "fps", "20", "exposure_ms", "1", NULL};
    devspec_t devs[] = {{"psu1", "sim-psu", psu_linear}, {"cam1", "sim-camera", cam_opts}};
    lab_start(&lab, devs, 2);
    lmq_proxy_t *psu = proxy(&lab, "psu1"), *cam = proxy(&lab, "cam1");
    double v;

    set_s(psu, "fault", "error");
    assert_error(psu, lmq_proxy_get_double(psu, "voltage", &v), LMQ_EDEVICE, "simulated instrument error");
    assert_error(psu, try_set_d(psu, "voltage", 1.0), LMQ_EDEVICE, "simulated instrument error");
    assert_error(psu, lmq_proxy_call(psu, "reset", NULL, 0, NULL), LMQ_EDEVICE, NULL);
    /* Unplugged for 400 ms: the daemon sees the link go (IO, then
     * DISCONNECTED while reopening fails), and the device comes back by
     * itself, as after a power cycle. */
    set_s(psu, "fault", "disconnect:400");
    double t0 = th_now_ms();
    int rc = lmq_proxy_get_double(psu, "voltage", &v);
    ck_assert_msg(rc == LMQ_EIO || rc == LMQ_EDEVICE, "unplugged: %s (%s)", lmq_status_name(rc),
                  lmq_proxy_last_error(psu));
    ck_assert_msg(strstr(lmq_proxy_last_error(psu), "disconnected") || strstr(lmq_proxy_last_error(psu), "unplugged"),
                  "%s", lmq_proxy_last_error(psu));
    while ((rc = lmq_proxy_get_double(psu, "voltage", &v)) != 0 && th_now_ms() - t0 < 5000)
        ck_assert_msg(rc == LMQ_EDEVICE, "while unplugged: %s (%s)", lmq_status_name(rc), lmq_proxy_last_error(psu));
    ck_assert_msg(rc == 0, "not back within 5 s: %s", lmq_proxy_last_error(psu));
    ck_assert_msg(th_now_ms() - t0 >= 390, "back after %.0f ms, unplugged for 400", th_now_ms() - t0);
    assert_get_s(psu, "fault", "none"); /* a fresh instrument */

    /* A disconnected camera stops publishing; back, it starts afresh. */
    lmq_sub_t *sub = lmq_sub_new(lab.zctx, DATA, "cam1/frames");
    ck_assert_ptr_nonnull(sub);
    lmq_frame_t *f = NULL;
    ck_assert_int_eq(lmq_sub_recv(sub, &f, 5000), 0);
    lmq_frame_destroy(&f);
    set_s(cam, "fault", "disconnect:600");
    while (lmq_sub_recv(sub, &f, 400) == 0)
        lmq_frame_destroy(&f);
    ck_assert_int_eq(lmq_sub_recv(sub, &f, 100), LMQ_ETIMEOUT);
    t0 = th_now_ms();
    while ((rc = lmq_proxy_call(cam, "start", NULL, 0, NULL)) != 0 && th_now_ms() - t0 < 5000)
        ;
    ck_assert_msg(rc == 0, "camera not back: %s", lmq_proxy_last_error(cam));
    ck_assert_int_eq(lmq_sub_recv(sub, &f, 5000), 0);
    lmq_frame_destroy(&f);
    ck_assert_uint_eq(lmq_sub_lost(sub), 0); /* nothing was published, so nothing is lost */

    lmq_sub_destroy(&sub);
    lmq_proxy_destroy(&psu);
    lmq_proxy_destroy(&cam);
    lab_stop(&lab);
}
END_TEST

START_TEST(fault_hang)
{
    lab_t lab;
    devspec_t devs[] = {{"psu1", "sim-psu", psu_linear}, {"daq1", "sim-daq", NULL}};
    lab_start(&lab, devs, 2);
    lmq_proxy_t *psu = proxy(&lab, "psu1"), *daq = proxy(&lab, "daq1");
    double v;

    set_s(psu, "fault", "hang:3000");
    lmq_proxy_set_timeout(psu, 200);
    double t0 = th_now_ms();
    assert_error(psu, lmq_proxy_get_double(psu, "voltage", &v), LMQ_ETIMEOUT, NULL);
    /* The proxy gives up at its own timeout (a poll on its socket), not when
     * the device answers: 200 ms, plus 300 ms for a slow wake-up on a loaded
     * machine, is still far below the 3 s hang. */
    double waited = th_now_ms() - t0;
    ck_assert_msg(waited >= 190 && waited < 200 + 300, "a 200 ms timeout returned after %.0f ms", waited);
    /* Other devices are not held up by the hung one: daq1 answers while psu1
     * is still hung (2.8 s of the hang are left), in a small part of the time
     * the hang lasts. Its own timeout is below the hang, too, so a daemon
     * that serialised the devices fails here even if the clock lies. */
    lmq_proxy_set_timeout(daq, 1000);
    double t1 = th_now_ms();
    get_d(daq, "sample_rate");
    double other = th_now_ms() - t1;
    ck_assert_msg(other < 1000, "daq1 took %.0f ms while psu1 hung for 3000 ms", other);
    ck_assert_msg(th_now_ms() - t0 < 2500, "psu1's hang was over before daq1 was asked (%.0f ms)",
                  th_now_ms() - t0);
    lmq_proxy_set_timeout(daq, CALL_TIMEOUT_MS);
    /* The clear queues behind the hung request and lands when it expires. */
    lmq_proxy_set_timeout(psu, CALL_TIMEOUT_MS);
    set_s(psu, "fault", "none");
    get_d(psu, "voltage");

    /* A plain hang lasts until shutdown, which must still be prompt. */
    set_s(psu, "fault", "hang");
    lmq_proxy_set_timeout(psu, 200);
    assert_error(psu, lmq_proxy_get_double(psu, "voltage", &v), LMQ_ETIMEOUT, NULL);
    lmq_proxy_destroy(&psu);
    lmq_proxy_destroy(&daq);
    t0 = th_now_ms();
    lab_stop(&lab);
    ck_assert_msg(th_now_ms() - t0 < 5000, "shutdown took %.0f ms", th_now_ms() - t0);
}
END_TEST

START_TEST(fault_invalid_text)
{
    lab_t lab;
    devspec_t devs[] = {{"daq1", "sim-daq", NULL}};
    lab_start(&lab, devs, 1);
    lmq_proxy_t *daq = proxy(&lab, "daq1");
    const char *bad[] = {"bogus", "delay", "delay:", "delay:abc", "delay:5x", "hang:-5", "delay:99999999", "Error"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        assert_error(daq, try_set_s(daq, "fault", bad[k]), LMQ_EARG, "none, delay:MS, hang, hang:MS, error, disconnect or disconnect:MS");
    assert_get_s(daq, "fault", "none");
    set_s(daq, "fault", "hang:0"); /* a zero-length hang answers with a timeout at once */
    double v;
    assert_error(daq, lmq_proxy_get_double(daq, "frequency", &v), LMQ_ETIMEOUT, "simulated hang");
    set_s(daq, "fault", "delay:0");
    get_d(daq, "frequency");
    lmq_proxy_destroy(&daq);
    lab_stop(&lab);
}
END_TEST

/* ---- transcript ---- */

/* Finds our descriptor for `path` in /proc/self/fd; -1 when none. */
static int find_fd(const char *path)
{
    char real[PATH_MAX];
    if (!realpath(path, real))
        return -1;
    for (int fd = 0; fd < 1024; fd++) {
        char link[64], target[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n <= 0)
            continue;
        target[n] = '\0';
        if (strcmp(target, real) == 0)
            return fd;
    }
    return -1;
}

START_TEST(psu_transcript)
{
    char dir[128], path[160];
    th_tempdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/transcript.log", dir);
    lab_t lab;
    const char *const opts[] = {"transcript", path, "noise", "0", NULL};
    devspec_t devs[] = {{"psu1", "sim-psu", opts}};
    lab_start(&lab, devs, 1);
    lmq_proxy_t *psu = proxy(&lab, "psu1");

    /* The handle is the device's alone: never inherited by a spawned process. */
    int fd = find_fd(path);
    ck_assert_msg(fd >= 0, "transcript not open");
    int fl = fcntl(fd, F_GETFD);
    ck_assert_msg(fl >= 0 && (fl & FD_CLOEXEC), "transcript descriptor %d lacks FD_CLOEXEC", fd);

    set_d(psu, "voltage", 1.5);
    set_b(psu, "output", true);
    get_d(psu, "measured_current");
    ck_assert_int_eq(lmq_proxy_call(psu, "reset", NULL, 0, NULL), 0);
    lmq_proxy_destroy(&psu);
    lab_stop(&lab);

    FILE *fp = fopen(path, "r");
    ck_assert_ptr_nonnull(fp);
    char line[256];
    const char *want[] = {"psu1 voltage", "psu1 output", "psu1 measured_current", "psu1 reset"};
    size_t k = 0;
    while (fgets(line, sizeof line, fp) && k < 4) {
        /* 2024-01-02T03:04:05.123456Z psu1 voltage */
        ck_assert_msg(strlen(line) > 28 && line[4] == '-' && line[10] == 'T' && line[26] == 'Z', "line: %s", line);
        if (strstr(line, want[k]))
            k++;
    }
    fclose(fp);
    th_rmtree(dir);
    ck_assert_msg(k == 4, "transcript lacks '%s'", k < 4 ? want[k] : "");
}
END_TEST

START_TEST(describe_lists_fault_and_streams)
{
    lab_t lab;
    devspec_t devs[] = {{"psu1", "sim-psu", NULL}, {"daq1", "sim-daq", NULL}, {"cam1", "sim-camera", NULL}};
    lab_start(&lab, devs, 3);
    const char *names[] = {"psu1", "daq1", "cam1"};
    const char *streams[] = {"\"iv\"", "\"wave\"", "\"frames\""};
    for (int k = 0; k < 3; k++) {
        lmq_proxy_t *p = proxy(&lab, names[k]);
        char *json = NULL;
        int rc = lmq_proxy_describe(p, &json);
        ck_assert_msg(rc == 0, "describe %s: %s", names[k], lmq_proxy_last_error(p));
        ck_assert_msg(strstr(json, "\"fault\"") != NULL, "%s", json);
        ck_assert_msg(strstr(json, streams[k]) != NULL, "%s", json);
        free(json);
        lmq_proxy_destroy(&p);
    }
    lab_stop(&lab);
}
END_TEST

static Suite *sim_suite(void)
{
    Suite *s = suite_create("sim");
    TCase *tc = tcase_create("sim");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, psu_cv_to_cc);
    tcase_add_test(tc, psu_diode_load_is_nonlinear);
    tcase_add_test(tc, psu_slew_is_paced);
    tcase_add_test(tc, psu_limits_and_access);
    tcase_add_test(tc, psu_bad_options_keep_device_closed);
    tcase_add_test(tc, daq_measures_psu_current);
    tcase_add_test(tc, daq_output_drives_load);
    tcase_add_test(tc, daq_wave_stream);
    tcase_add_test(tc, camera_frames_and_spot);
    tcase_add_test(tc, fault_delay);
    tcase_add_test(tc, fault_error_and_disconnect);
    tcase_add_test(tc, fault_hang);
    tcase_add_test(tc, fault_invalid_text);
    tcase_add_test(tc, psu_transcript);
    tcase_add_test(tc, describe_lists_fault_and_streams);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return th_run_suite(sim_suite());
}
