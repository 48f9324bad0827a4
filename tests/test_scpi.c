/* The scpi driver end to end: an in-process daemon drives labmq-siminst,
 * with each example description (examples/instruments/), over a
 * pseudo-terminal and over TCP: round trips, limits checked before the
 * instrument sees a value, instrument errors, dropped / late / garbled
 * replies, hang-up, reconnection and restore. */
#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"

#define SIM_BIN LMQ_BUILD_DIR "/tools/siminst/labmq-siminst"
/* The driver's reply timeout in these tests: well above the simulator's
 * answer time on a loaded machine, short enough to keep the tests quick. */
#define TIMEOUT_MS 500
#define STR_(x) #x
#define STR(x) STR_(x)

/* One instrument: its description, a writable float property with two
 * values inside its limits (the simulator keeps them exactly), one outside,
 * the simulator's variable behind the property, and a second property whose
 * value differs from the first's, to tell answers apart. */
typedef struct inst {
    const char *name;
    const char *desc, *sim_model;
    const char *prop;
    double a, b, outside;
    const char *outside_text; /* how the refused value would have looked on the wire */
    const char *sim_var;      /* "#sim set" name of prop's variable... */
    double forgot;            /* ...and a value it takes when the instrument forgets (a, b differ) */
    const char *other;        /* another readable property... */
    double other_value;       /* ...and its value after other_cmd */
    const char *other_set;    /* property to set to other_value */
    bool other_int;           /* other_set is an int property */
} inst_t;

static const inst_t insts[] = {
    {"dp832", "rigol-dp832.yaml", "rigol-dp832.yaml", "voltage", 1.5, 2.25, 40, "VOLT 40", "volt@1", 0, "current", 0.5,
     "current", false},
    {"34461a", "keysight-34461a.yaml", "keysight-34461a.yaml", "nplc", 10, 1, 1000, "NPLC 1000", "nplc", 100,
     "sample_count", 3, "sample_count", true},
    {"k2400", "keithley-2400.yaml", "keithley-2400.yaml", "voltage", 1.5, -2.25, 300, "VOLT 300", "src_volt", 0, "nplc",
     0.5, "nplc", false},
};

typedef struct sim {
    char dir[128], out[192], err[192], link[192], model[192];
    char conn[256];
    bool tcp;
    pid_t pid;
} sim_t;

/* The first line labmq-siminst prints: its address. */
static bool first_line(const char *path, char *buf, size_t size, int timeout_ms)
{
    double end = th_now_ms() + timeout_ms;
    while (th_now_ms() < end) {
        char *t = th_read_file(path);
        char *nl = t ? strchr(t, '\n') : NULL;
        if (nl) {
            snprintf(buf, size, "%.*s", (int)(nl - t), t);
            free(t);
            return true;
        }
        free(t);
        usleep(10000);
    }
    return false;
}

/* Writes the description `desc` and starts the simulator on sim_model. */
static void sim_spawn(sim_t *s, const char *desc, const char *sim_model, bool tcp)
{
    memset(s, 0, sizeof *s);
    s->tcp = tcp;
    th_tempdir(s->dir, sizeof s->dir);
    snprintf(s->out, sizeof s->out, "%s/out", s->dir);
    snprintf(s->err, sizeof s->err, "%s/err", s->dir);
    snprintf(s->link, sizeof s->link, "%s/tty", s->dir);
    snprintf(s->model, sizeof s->model, "%s/model.yaml", s->dir);
    th_write_file(s->model, desc);
    const char *argv[] = {
        SIM_BIN,   "--seed", "7", "--log", "--fault-commands", tcp ? "--tcp" : "--link", tcp ? "0" : s->link,
        sim_model, NULL};
    s->pid = th_spawn_to_files((char *const *)argv, s->out, s->err);
    char line[200];
    if (!first_line(s->out, line, sizeof line, 10000)) {
        char *e = th_read_file(s->err);
        ck_abort_msg("labmq-siminst printed no address:\n%s", e ? e : "");
    }
    if (tcp)
        snprintf(s->conn, sizeof s->conn, "%s", line);
    else
        snprintf(s->conn, sizeof s->conn, "serial:%s", s->link);
}

/* Starts the simulator on an example instrument; the description is the
 * example's plus a method that passes fault commands ("#sim drop 1") and one
 * that sends any command with the error check. */
static void sim_start(sim_t *s, const inst_t *in, bool tcp)
{
    char path[512];
    snprintf(path, sizeof path, "%s/examples/instruments/%s", LMQ_SOURCE_DIR, in->desc);
    char *text = th_slurp(path);
    /* methods: is the last section of every example */
    ck_assert_ptr_nonnull(strstr(text, "\nmethods:\n"));
    size_t n = strlen(text) + 512;
    char *full = malloc(n);
    snprintf(full, n,
             "%s"
             "  - {name: sim, args: [{name: spec, type: string}], command: '#sim {spec}', error_check: false}\n"
             "  - {name: raw, args: [{name: text, type: string}], command: '{text}'}\n"
             "  - {name: slow_idn, command: '*IDN?', returns: string, timeout_ms: 30000}\n",
             text);
    char sim_model[512];
    snprintf(sim_model, sizeof sim_model, "%s/examples/instruments/siminst/%s", LMQ_SOURCE_DIR, in->sim_model);
    sim_spawn(s, full, sim_model, tcp);
    free(full);
    free(text);
}

static void sim_stop(sim_t *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        int st = -1;
        ck_assert_int_eq(th_wait_exit(s->pid, 20000, &st), 0);
        s->pid = 0;
    }
    th_rmtree(s->dir);
}

/* What the simulator received so far (its --log lines "< ..."). */
static bool sim_saw(const sim_t *s, const char *text)
{
    char *log = th_read_file(s->err);
    bool saw = log && strstr(log, text);
    free(log);
    return saw;
}

typedef struct lab {
    void *ctx;
    lmq_daemon_t *d;
    lmq_proxy_t *p;
    lmq_log_t *log;
} lab_t;

static double wait_state(lab_t *l, const char *want, int timeout_ms);

static void lab_start(lab_t *l, const sim_t *s, bool restore)
{
    l->ctx = zmq_ctx_new();
    /* warnings (disconnected, cannot open) are expected here: errors only */
    l->log = lmq_log_new(LMQ_LOG_ERROR, NULL, NULL);
    l->d = lmq_daemon_new(l->ctx, "inproc://scpi", "inproc://scpi-data", l->log);
    ck_assert_ptr_nonnull(l->d);
    const char *opts[] = {"model", s->model, "timeout_ms", STR(TIMEOUT_MS), NULL};
    ck_assert_msg(lmq_daemon_add(l->d, "psu", lmq_driver_find("scpi"), s->conn, opts) == 0, "%s",
                  lmq_daemon_last_error(l->d));
    if (restore)
        ck_assert_int_eq(lmq_daemon_set_restore(l->d, "psu", true), 0);
    ck_assert_int_eq(lmq_daemon_start(l->d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(l->d, 20000), 0);
    l->p = lmq_proxy_new(l->ctx, "inproc://scpi", "psu");
    ck_assert_ptr_nonnull(l->p);
    lmq_proxy_set_timeout(l->p, 10000);
    /* On a loaded machine the first open (its *IDN? within TIMEOUT_MS) may
     * fail and be retried: every test starts from a ready device. */
    ck_assert_msg(wait_state(l, "ready", 20000) >= 0, "the device did not become ready");
}

static void lab_stop(lab_t *l)
{
    lmq_proxy_destroy(&l->p);
    ck_assert_int_eq(lmq_daemon_stop(l->d), 0);
    lmq_daemon_destroy(&l->d);
    zmq_ctx_term(l->ctx);
    lmq_log_destroy(&l->log);
}

/* The device's state in `list` ("ready", "disconnected", ...), and its error. */
static void list_state(lab_t *l, char *state, size_t size, char *err, size_t errsize)
{
    char *json = NULL;
    ck_assert_int_eq(lmq_proxy_list(l->p, &json), 0);
    json_t *j = json_loads(json, 0, NULL);
    ck_assert_ptr_nonnull(j);
    json_t *dev = json_array_get(j, 0);
    snprintf(state, size, "%s", json_string_value(json_object_get(dev, "state")));
    if (err)
        snprintf(err, errsize, "%s",
                 json_is_string(json_object_get(dev, "error")) ? json_string_value(json_object_get(dev, "error")) : "");
    json_decref(j);
    free(json);
}

/* Polls list until the state is `want`; returns the ms it took, or -1. */
static double wait_state(lab_t *l, const char *want, int timeout_ms)
{
    double t0 = th_now_ms();
    char state[32];
    while (th_now_ms() - t0 < timeout_ms) {
        list_state(l, state, sizeof state, NULL, 0);
        if (strcmp(state, want) == 0)
            return th_now_ms() - t0;
        usleep(10000);
    }
    return -1;
}

static double get_f(lab_t *l, const char *prop)
{
    lmq_value_t v = {0};
    int rc = lmq_proxy_get(l->p, prop, &v);
    ck_assert_msg(rc == 0, "get %s: %s", prop, lmq_proxy_last_error(l->p));
    double d = 0;
    ck_assert_int_eq(lmq_value_to_double(&v, &d), 0);
    lmq_value_clear(&v);
    return d;
}

static void set_f(lab_t *l, const char *prop, double x)
{
    lmq_value_t v = lmq_float(x);
    ck_assert_msg(lmq_proxy_set(l->p, prop, &v) == 0, "set %s %g: %s", prop, x, lmq_proxy_last_error(l->p));
}

/* Calls a one-string-argument method; returns its status. */
static int call_s(lab_t *l, const char *method, const char *arg)
{
    lmq_value_t a = {0}, r = {0};
    lmq_value_set_string(&a, arg);
    int rc = lmq_proxy_call(l->p, method, &a, 1, &r);
    lmq_value_clear(&a);
    lmq_value_clear(&r);
    return rc;
}

#define ASSERT_ERR(l, call, code, text)                                                                                \
    do {                                                                                                               \
        int rc_ = (call);                                                                                              \
        ck_assert_msg(rc_ == (code), "%s: %s, not %s: %s", #call, lmq_status_name(rc_), lmq_status_name(code),         \
                      lmq_proxy_last_error((l)->p));                                                                   \
        ck_assert_msg(strstr(lmq_proxy_last_error((l)->p), (text)), "'%s' lacks '%s'", lmq_proxy_last_error((l)->p),   \
                      (text));                                                                                         \
    } while (0)

/* Everything but the link faults, for one instrument on one transport. */
static void run_requests(const inst_t *in, bool tcp)
{
    sim_t s;
    sim_start(&s, in, tcp);
    lab_t l;
    lab_start(&l, &s, false);

    /* round trips */
    set_f(&l, in->prop, in->a);
    ck_assert_double_eq_tol(get_f(&l, in->prop), in->a, 1e-9);
    set_f(&l, in->prop, in->b);
    ck_assert_double_eq_tol(get_f(&l, in->prop), in->b, 1e-9);
    lmq_value_t ov = in->other_int ? lmq_int((int64_t)in->other_value) : lmq_float(in->other_value);
    ck_assert_msg(lmq_proxy_set(l.p, in->other_set, &ov) == 0, "%s", lmq_proxy_last_error(l.p));
    ck_assert_double_eq_tol(get_f(&l, in->other), in->other_value, 1e-9);

    /* out of range: the daemon refuses it; the instrument never sees it */
    lmq_value_t v = lmq_float(in->outside);
    ASSERT_ERR(&l, lmq_proxy_set(l.p, in->prop, &v), LMQ_ERANGE, in->prop);
    ck_assert_double_eq_tol(get_f(&l, in->prop), in->b, 1e-9);
    ck_assert_msg(sim_saw(&s, "< "), "the simulator's log shows nothing: the check below would prove nothing");
    ck_assert_msg(!sim_saw(&s, in->outside_text), "the simulator saw %s", in->outside_text);

    /* an instrument error from the error queue, with the instrument's text */
    ASSERT_ERR(&l, call_s(&l, "raw", "NOSUCH:HEADER 1"), LMQ_EDEVICE, "-113,\"Undefined header\"");
    /* the queue was emptied: the next write is clean */
    set_f(&l, in->prop, in->a);

    /* a dropped reply: TIMEOUT naming the command, then the next query
     * gets its own answer */
    ck_assert_int_eq(call_s(&l, "sim", "drop 1"), 0);
    ASSERT_ERR(&l, lmq_proxy_get(l.p, in->prop, &v), LMQ_ETIMEOUT, "?' timed out after " STR(TIMEOUT_MS) " ms");
    ck_assert_double_eq_tol(get_f(&l, in->other), in->other_value, 1e-9);
    ck_assert_double_eq_tol(get_f(&l, in->prop), in->a, 1e-9);

    /* A reply 50 ms after the timeout is never returned to the next query.
     * (On a loaded machine the device thread may wake after the late reply
     * came: it is then its own query's answer, which is right too; the
     * timeout must still happen in one of three tries.) */
    char late[32];
    snprintf(late, sizeof late, "late %d", TIMEOUT_MS + 50);
    bool timed_out = false;
    for (int attempt = 0; attempt < 3 && !timed_out; attempt++) {
        ck_assert_int_eq(call_s(&l, "sim", late), 0);
        lmq_value_t got = {0};
        int rc = lmq_proxy_get(l.p, in->prop, &got);
        if (rc == LMQ_ETIMEOUT) {
            timed_out = true;
            ck_assert_msg(strstr(lmq_proxy_last_error(l.p), "timed out"), "%s", lmq_proxy_last_error(l.p));
        } else {
            double x = 0;
            ck_assert_msg(rc == 0 && lmq_value_to_double(&got, &x) == 0, "%s", lmq_proxy_last_error(l.p));
            ck_assert_double_eq_tol(x, in->a, 1e-9);
        }
        lmq_value_clear(&got);
        ck_assert_double_eq_tol(get_f(&l, in->other), in->other_value, 1e-9); /* not in->a */
        ck_assert_double_eq_tol(get_f(&l, in->prop), in->a, 1e-9);
    }
    ck_assert_msg(timed_out, "the late reply never timed out");

    /* garbled bytes: PROTO naming them, then back in step */
    ck_assert_int_eq(call_s(&l, "sim", "garble 1"), 0);
    ASSERT_ERR(&l, lmq_proxy_get(l.p, in->prop, &v), LMQ_EPROTO, "does not parse");
    ck_assert_msg(strstr(lmq_proxy_last_error(l.p), "\"~"), "%s", lmq_proxy_last_error(l.p));
    ck_assert_double_eq_tol(get_f(&l, in->prop), in->a, 1e-9);

    /* replies cut into pieces arrive whole */
    ck_assert_int_eq(call_s(&l, "sim", "split 2 5"), 0);
    ck_assert_double_eq_tol(get_f(&l, in->prop), in->a, 1e-9);
    ck_assert_int_eq(call_s(&l, "sim", "clear"), 0);

    lab_stop(&l);
    sim_stop(&s);
}

/* Hang-up: DISCONNECTED within 1 s, READY within 2 s after the simulator
 * serves again; with restore the last-set value is written back to an
 * instrument that forgot it. */
static void run_hangup(const inst_t *in, bool tcp, bool restore)
{
    sim_t s;
    sim_start(&s, in, tcp);
    lab_t l;
    lab_start(&l, &s, restore);
    set_f(&l, in->prop, in->b);
    bool has_output = strcmp(in->name, "34461a") != 0;
    lmq_value_t on = lmq_bool(true);
    if (has_output)
        ck_assert_int_eq(lmq_proxy_set(l.p, "output", &on), 0);
    /* the instrument forgets (as when power-cycled), then drops the link */
    char cmd[96];
    snprintf(cmd, sizeof cmd, "set %s %g", in->sim_var, in->forgot);
    ck_assert_int_eq(call_s(&l, "sim", cmd), 0);
    if (has_output) {
        snprintf(cmd, sizeof cmd, "set %s 0", strcmp(in->name, "dp832") == 0 ? "out@1" : "out");
        ck_assert_int_eq(call_s(&l, "sim", cmd), 0);
    }
    const int down_ms = 500;
    snprintf(cmd, sizeof cmd, "hangup %d", down_ms);
    ck_assert_int_eq(call_s(&l, "sim", cmd), 0);
    double t0 = th_now_ms();
    /* no request needed: the idle link check notices */
    lmq_value_t v = {0};
    double waited = wait_state(&l, "disconnected", 1000);
    ck_assert_msg(waited >= 0, "not disconnected within 1 s of the hang-up");
    ck_assert_double_le(th_now_ms() - t0, 1000);
    /* calls meanwhile get a clear error */
    ASSERT_ERR(&l, lmq_proxy_get(l.p, in->prop, &v), LMQ_EDEVICE, "disconnected");
    double back = t0 + down_ms;
    ck_assert_msg(wait_state(&l, "ready", (int)(back - th_now_ms()) + 2000) >= 0,
                  "not ready within 2 s after the simulator came back");
    ck_assert_double_le(th_now_ms() - back, 2000);
    ck_assert_double_eq_tol(get_f(&l, in->prop), restore ? in->b : in->forgot, 1e-9);
    if (has_output) { /* restore: false in the descriptions: a reconnect never switches an output on */
        ck_assert_int_eq(lmq_proxy_get(l.p, "output", &v), 0);
        ck_assert(v.type == LMQ_BOOL && !v.u.b);
    }
    lab_stop(&l);
    sim_stop(&s);
}

START_TEST(requests_tcp) { run_requests(&insts[_i], true); }
END_TEST

START_TEST(requests_pty) { run_requests(&insts[_i], false); }
END_TEST

START_TEST(hangup_restore_tcp) { run_hangup(&insts[_i], true, true); }
END_TEST

START_TEST(hangup_restore_pty) { run_hangup(&insts[_i], false, true); }
END_TEST

/* Without restore the forgotten value stays forgotten: the restore tests
 * above can fail. */
START_TEST(hangup_without_restore) { run_hangup(&insts[0], _i == 1, false); }
END_TEST

/* Methods returning lists, bools and enums, per instrument (TCP). */
START_TEST(methods_and_types)
{
    sim_t s;
    sim_start(&s, &insts[_i], true);
    lab_t l;
    lab_start(&l, &s, false);
    lmq_value_t v = {0}, args[3];
    if (_i == 0) { /* DP832: output on into the simulator's 10 ohm load */
        set_f(&l, "voltage", 2);
        v = lmq_bool(true);
        ck_assert_int_eq(lmq_proxy_set(l.p, "output", &v), 0);
        ck_assert_int_eq(lmq_proxy_get(l.p, "output", &v), 0);
        ck_assert(v.type == LMQ_BOOL && v.u.b);
        args[0] = lmq_int(1);
        ck_assert_msg(lmq_proxy_call(l.p, "measure_all", args, 1, &v) == 0, "%s", lmq_proxy_last_error(l.p));
        ck_assert(v.type == LMQ_ARRAY && v.u.a.dtype == LMQ_F64 && v.u.a.shape[0] == 3);
        const double *x = v.u.a.data;
        ck_assert_double_eq_tol(x[0], 2, 1e-9);   /* V */
        ck_assert_double_eq_tol(x[1], 0.2, 1e-9); /* A */
        ck_assert_double_eq_tol(x[2], 0.4, 1e-9); /* W */
        lmq_value_clear(&v);
        ck_assert_int_eq(lmq_proxy_get(l.p, "mode", &v), 0);
        ck_assert_str_eq(v.u.s, "cv");
        lmq_value_clear(&v);
        args[0] = lmq_int(2), args[1] = lmq_float(3.5), args[2] = lmq_float(0.25);
        ck_assert_int_eq(lmq_proxy_call(l.p, "apply", args, 3, &v), 0);
        ck_assert_double_eq_tol(get_f(&l, "voltage2"), 3.5, 1e-9);
        ck_assert_double_eq_tol(get_f(&l, "current2"), 0.25, 1e-9);
    } else if (_i == 1) { /* 34461A: three readings of the simulated 1.23456789 V */
        v = lmq_int(3);
        ck_assert_int_eq(lmq_proxy_set(l.p, "sample_count", &v), 0);
        ck_assert_msg(lmq_proxy_call(l.p, "read_all", NULL, 0, &v) == 0, "%s", lmq_proxy_last_error(l.p));
        ck_assert(v.type == LMQ_ARRAY && v.u.a.shape[0] == 3);
        for (int k = 0; k < 3; k++)
            ck_assert_double_eq_tol(((const double *)v.u.a.data)[k], 1.23456789, 1e-4);
        lmq_value_clear(&v);
        lmq_value_set_string(&v, "bus");
        ck_assert_int_eq(lmq_proxy_set(l.p, "trigger_source", &v), 0);
        lmq_value_clear(&v);
        ck_assert_int_eq(lmq_proxy_get(l.p, "trigger_source", &v), 0);
        ck_assert_str_eq(v.u.s, "bus");
        lmq_value_clear(&v);
        /* INIT with a BUS trigger: the meter queues -214 "Trigger deadlock" */
        ASSERT_ERR(&l, lmq_proxy_call(l.p, "initiate", NULL, 0, &v), LMQ_EDEVICE, "-214");
        lmq_value_set_string(&v, "nonsense");
        ASSERT_ERR(&l, lmq_proxy_set(l.p, "trigger_source", &v), LMQ_EARG, "one of: immediate, external, bus");
        lmq_value_clear(&v);
        v = lmq_bool(false);
        ck_assert_int_eq(lmq_proxy_set(l.p, "autorange", &v), 0);
        ck_assert_int_eq(lmq_proxy_get(l.p, "autorange", &v), 0);
        ck_assert(v.type == LMQ_BOOL && !v.u.b);
    } else { /* 2400: source 1 V into the simulator's 1 kohm load */
        lmq_value_set_string(&v, "voltage");
        ck_assert_int_eq(lmq_proxy_set(l.p, "source", &v), 0);
        lmq_value_clear(&v);
        ck_assert_int_eq(lmq_proxy_get(l.p, "source", &v), 0); /* the 2400 answers "VOLT" */
        ck_assert_str_eq(v.u.s, "voltage");
        lmq_value_clear(&v);
        set_f(&l, "voltage", 1);
        set_f(&l, "current_compliance", 0.01);
        /* output off: READ? is refused (error 803) and never answers */
        ASSERT_ERR(&l, lmq_proxy_call(l.p, "read", NULL, 0, &v), LMQ_ETIMEOUT, "803");
        v = lmq_bool(true);
        ck_assert_int_eq(lmq_proxy_set(l.p, "output", &v), 0);
        ck_assert_msg(lmq_proxy_call(l.p, "read", NULL, 0, &v) == 0, "%s", lmq_proxy_last_error(l.p));
        ck_assert(v.type == LMQ_ARRAY && v.u.a.shape[0] == 2);
        ck_assert_double_eq_tol(((const double *)v.u.a.data)[0], 1, 1e-6);
        ck_assert_double_eq_tol(((const double *)v.u.a.data)[1], 1e-3, 1e-9);
        lmq_value_clear(&v);
        ck_assert_double_eq_tol(get_f(&l, "measured_current"), 1e-3, 1e-9);
        args[0] = lmq_float(-0.5), args[1] = lmq_float(0.02);
        ck_assert_int_eq(lmq_proxy_call(l.p, "source_voltage", args, 2, &v), 0);
        ck_assert_double_eq_tol(get_f(&l, "voltage"), -0.5, 1e-9);
        ck_assert_double_eq_tol(get_f(&l, "current_compliance"), 0.02, 1e-9);
    }
    lab_stop(&l);
    sim_stop(&s);
}
END_TEST

/* IEEE 488.2 blocks through the whole path, from a model that sends them. */
START_TEST(blocks_end_to_end)
{
    char dir[128], model[192];
    th_tempdir(dir, sizeof dir);
    snprintf(model, sizeof model, "%s/blocks.yaml", dir);
    th_write_file(model, "identity: \"LABMQ,BLOCKS,0,1\"\n"
                         "commands:\n"
                         "  - {header: \"DATA?\", reply: \"#18ABCDEFGH\"}\n"
                         "  - {header: \"SHORt?\", reply: \"#19ABC\"}\n"
                         "  - {header: \"INDefinite?\", reply: \"#0ABCD\"}\n"
                         "  - {header: \"NOTblock?\", reply: \"1.5\"}\n");
    static const char desc[] = "idn: BLOCKS\n"
                               "methods:\n"
                               "  - {name: words, command: 'DATA?', returns: block, dtype: '>i2'}\n"
                               "  - {name: bytes, command: 'DATA?', returns: block, dtype: 'u1'}\n"
                               "  - {name: indefinite, command: 'IND?', returns: block, dtype: '<i2'}\n"
                               "  - {name: short, command: 'SHOR?', returns: block, dtype: 'u1'}\n"
                               "  - {name: notblock, command: 'NOT?', returns: block, dtype: 'u1'}\n";
    for (int tcp = 0; tcp < 2; tcp++) {
        sim_t s;
        sim_spawn(&s, desc, model, tcp);
        lab_t l;
        lab_start(&l, &s, false);
        lmq_value_t v = {0};
        ck_assert_msg(lmq_proxy_call(l.p, "words", NULL, 0, &v) == 0, "%s", lmq_proxy_last_error(l.p));
        ck_assert(v.type == LMQ_ARRAY && v.u.a.dtype == LMQ_I16 && v.u.a.shape[0] == 4);
        const unsigned char *b = v.u.a.data; /* "AB" big-endian = 0x4142, stored little-endian */
        ck_assert(b[0] == 'B' && b[1] == 'A' && b[6] == 'H' && b[7] == 'G');
        lmq_value_clear(&v);
        ck_assert_int_eq(lmq_proxy_call(l.p, "bytes", NULL, 0, &v), 0);
        ck_assert(v.u.a.shape[0] == 8 && memcmp(v.u.a.data, "ABCDEFGH", 8) == 0);
        lmq_value_clear(&v);
        ck_assert_msg(lmq_proxy_call(l.p, "indefinite", NULL, 0, &v) == 0, "%s", lmq_proxy_last_error(l.p));
        ck_assert(v.u.a.shape[0] == 2 && memcmp(v.u.a.data, "ABCD", 4) == 0);
        lmq_value_clear(&v);
        /* 9 bytes announced, 3 and a newline sent: a timeout, then in step again */
        ASSERT_ERR(&l, lmq_proxy_call(l.p, "short", NULL, 0, &v), LMQ_ETIMEOUT, "SHOR?");
        ck_assert_int_eq(lmq_proxy_call(l.p, "bytes", NULL, 0, &v), 0);
        ck_assert(v.u.a.shape[0] == 8 && memcmp(v.u.a.data, "ABCDEFGH", 8) == 0);
        lmq_value_clear(&v);
        ASSERT_ERR(&l, lmq_proxy_call(l.p, "notblock", NULL, 0, &v), LMQ_EPROTO, "\"1.5\"");
        ck_assert_int_eq(lmq_proxy_call(l.p, "bytes", NULL, 0, &v), 0);
        lmq_value_clear(&v);
        lab_stop(&l);
        sim_stop(&s);
    }
    th_rmtree(dir);
}
END_TEST

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    ck_assert_ptr_nonnull(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

/* Hang-up after hang-up, each met by a request: the device comes back
 * every time and no descriptor is left behind by a close/reopen cycle. */
START_TEST(reconnect_cycles)
{
    bool tcp = _i == 1;
    sim_t s;
    sim_start(&s, &insts[0], tcp);
    lab_t l;
    lab_start(&l, &s, false);
    set_f(&l, "voltage", 1.25);
    int fds_after_first = 0;
    for (int cycle = 0; cycle < 100; cycle++) { /* the 100 unplug/replug cycles */
        ck_assert_int_eq(call_s(&l, "sim", "hangup 100"), 0);
        lmq_value_t v = {0};
        int rc = lmq_proxy_get(l.p, "voltage", &v);
        ck_assert_msg(rc == LMQ_EIO || rc == LMQ_EDEVICE, "cycle %d: %s", cycle, lmq_status_name(rc));
        ck_assert_msg(wait_state(&l, "ready", 5000) >= 0, "cycle %d: not ready again", cycle);
        ck_assert_double_eq_tol(get_f(&l, "voltage"), 1.25, 1e-9);
        if (cycle == 0)
            fds_after_first = count_fds();
    }
    ck_assert_int_eq(count_fds(), fds_after_first);
    lab_stop(&l);
    sim_stop(&s);
}
END_TEST

/* A device waiting for a reply that never comes (30 s timeout) does not
 * hold up the daemon's shutdown: the transport's wait is cancelled. */
START_TEST(stop_during_a_long_read)
{
    sim_t s;
    sim_start(&s, &insts[0], _i == 1);
    lab_t l;
    lab_start(&l, &s, false);
    ck_assert_int_eq(call_s(&l, "sim", "drop 1"), 0);
    uint64_t id;
    ck_assert_int_eq(lmq_proxy_send_call(l.p, "slow_idn", NULL, 0, &id), 0);
    usleep(300000); /* the device is in its read now */
    double t0 = th_now_ms();
    lmq_value_t v = {0};
    ck_assert_int_eq(lmq_daemon_stop(l.d), 0);
    double took = th_now_ms() - t0;
    ck_assert_msg(took < 3000, "stop took %.0f ms", took);
    /* the pending call was answered, not dropped */
    uint64_t got = 0;
    int rc = lmq_proxy_recv(l.p, &got, &v);
    ck_assert_msg(rc == LMQ_ECLOSED && got == id, "%s: %s", lmq_status_name(rc), lmq_proxy_last_error(l.p));
    lab_stop(&l);
    sim_stop(&s);
}
END_TEST

/* A description for another model: open fails naming both, and the device
 * stays disconnected (retrying) with that reason. */
START_TEST(idn_mismatch)
{
    sim_t s;
    sim_start(&s, &insts[1], true); /* a 34461A ... */
    char path[512];
    snprintf(path, sizeof path, "%s/examples/instruments/rigol-dp832.yaml",
             LMQ_SOURCE_DIR); /* ... described as a DP832 */
    void *ctx = zmq_ctx_new();
    lmq_daemon_t *d = lmq_daemon_new(ctx, "inproc://scpi", "inproc://scpi-data", NULL);
    const char *opts[] = {"model", path, NULL};
    ck_assert_int_eq(lmq_daemon_add(d, "psu", lmq_driver_find("scpi"), s.conn, opts), 0);
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, 20000), 0);
    lab_t l = {ctx, d, lmq_proxy_new(ctx, "inproc://scpi", "psu"), NULL};
    char state[32], err[512];
    list_state(&l, state, sizeof state, err, sizeof err);
    ck_assert_str_eq(state, "disconnected");
    ck_assert_msg(strstr(err, "Keysight Technologies,34461A") && strstr(err, "RIGOL TECHNOLOGIES,DP832") &&
                      strstr(err, "idn_check"),
                  "%s", err);
    lab_stop(&l);
    sim_stop(&s);
}
END_TEST

/* A lock that expires sends the description's safe_state commands: the
 * DP832's outputs go off in the simulated instrument. */
START_TEST(expired_lock_sends_safe_state)
{
    sim_t s;
    sim_start(&s, &insts[0], true);
    lab_t l;
    lab_start(&l, &s, false);
    lmq_proxy_t *other = lmq_proxy_new(l.ctx, "inproc://scpi", "psu");
    lmq_proxy_set_timeout(other, 10000);
    lmq_value_t on = lmq_bool(true), out = {0};
    ck_assert_msg(lmq_proxy_set(l.p, "output", &on) == 0, "%s", lmq_proxy_last_error(l.p));
    ck_assert_int_eq(lmq_proxy_lock(l.p, NULL, 0, 300), 0);
    ck_assert_int_eq(lmq_proxy_get(other, "output", &out), 0);
    ck_assert(out.type == LMQ_BOOL && out.u.b);
    double end = th_now_ms() + 10000;
    while (lmq_proxy_get(other, "output", &out) == 0 && out.u.b && th_now_ms() < end)
        usleep(50000);
    ck_assert_msg(out.type == LMQ_BOOL && !out.u.b, "output still on after the lock expired");
    ck_assert_int_eq(lmq_proxy_set(other, "output", &on), 0); /* the lock is gone */
    lmq_proxy_destroy(&other);
    lab_stop(&l);
    sim_stop(&s);
}
END_TEST

/* Configuration errors surface at lmq_daemon_add, naming the file and line. */
START_TEST(configure_errors)
{
    char dir[128], path[192];
    th_tempdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/bad.yaml", dir);
    th_write_file(path, "properties:\n  - {name: v, type: float, get: 'V?', set: 'V {volt}'}\n");
    void *ctx = zmq_ctx_new();
    lmq_daemon_t *d = lmq_daemon_new(ctx, "inproc://scpi", "inproc://scpi-data", NULL);
    const char *opts[] = {"model", path, NULL};
    ck_assert_int_eq(lmq_daemon_add(d, "psu", lmq_driver_find("scpi"), "tcp:127.0.0.1:1", opts), LMQ_ECONFIG);
    ck_assert_msg(strstr(lmq_daemon_last_error(d), "bad.yaml:2: property 'v': set: {volt} names no argument"), "%s",
                  lmq_daemon_last_error(d));
    ck_assert_int_eq(lmq_daemon_add(d, "psu", lmq_driver_find("scpi"), NULL, opts), LMQ_ECONFIG);
    ck_assert_msg(strstr(lmq_daemon_last_error(d), "needs a connection"), "%s", lmq_daemon_last_error(d));
    const char *none[] = {NULL};
    ck_assert_int_eq(lmq_daemon_add(d, "psu", lmq_driver_find("scpi"), "tcp:127.0.0.1:1", none), LMQ_ECONFIG);
    ck_assert_msg(strstr(lmq_daemon_last_error(d), "model"), "%s", lmq_daemon_last_error(d));
    lmq_daemon_destroy(&d);
    zmq_ctx_term(ctx);
    th_rmtree(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("scpi");
    TCase *tc = tcase_create("siminst");
    tcase_set_timeout(tc, 120);
    int n = (int)(sizeof insts / sizeof insts[0]);
    tcase_add_loop_test(tc, requests_tcp, 0, n);
    tcase_add_loop_test(tc, requests_pty, 0, n);
    tcase_add_loop_test(tc, hangup_restore_tcp, 0, n);
    tcase_add_loop_test(tc, hangup_restore_pty, 0, n);
    tcase_add_loop_test(tc, hangup_without_restore, 0, 2);
    tcase_add_loop_test(tc, methods_and_types, 0, n);
    tcase_add_test(tc, blocks_end_to_end);
    tcase_add_loop_test(tc, reconnect_cycles, 0, 2);
    tcase_add_loop_test(tc, stop_during_a_long_read, 0, 2);
    tcase_add_test(tc, idn_mismatch);
    tcase_add_test(tc, configure_errors);
    tcase_add_test(tc, expired_lock_sends_safe_state);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
