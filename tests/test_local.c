/* The local channel (core/src/local.c, local_client.c; protocol.md 6): the
 * proxy's behaviour over both paths (loop tests: 0 = local channel, 1 =
 * ZeroMQ), the shared queue bound, CLOSED at stop, mixed clients on one
 * device, dead and slow clients, descriptor hygiene, fallback, and the
 * channel's own framing errors, spoken raw. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>
#include "device_internal.h"
#include "harness.h"
#include "labmq/labmq.h"
#include "local.h"

static const char *lab_yaml = "devices:\n"
                              "  - name: psu1\n    driver: sim-psu\n"
                              "  - name: cam1\n    driver: sim-camera\n    options: {width: 1024, height: 768}\n";

#define CK_OK(p, expr) ck_assert_msg((expr) == 0, "%s: %s", #expr, lmq_proxy_last_error(p))

/* Loop index 0: proxies use the channel; 1: LABMQ_NO_LOCAL keeps them (and
 * the daemons started after) on ZeroMQ. */
#define use_path th_use_path

static lmq_proxy_t *proxy(void *ctx, const th_daemon_t *d, const char *dev)
{
    lmq_proxy_t *p = lmq_proxy_new(ctx, d->control, dev);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* The device's stats object. */
static json_t *dev_stats(void *ctx, const th_daemon_t *d, const char *dev)
{
    lmq_proxy_t *p = lmq_proxy_new(ctx, d->control, NULL);
    char *text = NULL;
    CK_OK(p, lmq_proxy_stats(p, &text));
    json_t *j = json_loads(text, 0, NULL), *found = NULL, *e;
    size_t i;
    json_array_foreach(json_object_get(j, "devices"), i, e) if (!strcmp(json_string_value(json_object_get(e, "name")),
                                                                         dev)) found = json_incref(e);
    json_decref(j);
    free(text);
    lmq_proxy_destroy(&p);
    ck_assert_ptr_nonnull(found);
    return found;
}

static long long stat_int(json_t *s, const char *key) { return json_integer_value(json_object_get(s, key)); }

/* The channel's socket path, from describe (NULL when none: caller frees). */
static char *channel_path(void *ctx, const th_daemon_t *d, const char *dev)
{
    lmq_proxy_t *p = proxy(ctx, d, dev);
    char *text = NULL;
    CK_OK(p, lmq_proxy_describe(p, &text));
    json_t *j = json_loads(text, 0, NULL);
    const char *path = json_string_value(json_object_get(json_object_get(j, "local"), "path"));
    char *copy = path ? strdup(path) : NULL;
    json_decref(j);
    free(text);
    lmq_proxy_destroy(&p);
    return copy;
}

static int raw_connect(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "connect %s: %s", path, strerror(errno));
    return fd;
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Sends a one-frame request record (flag 0, the table, the header). */
static void raw_send(int fd, const char *header)
{
    size_t hl = strlen(header);
    unsigned char *rec = malloc(9 + hl);
    rec[0] = 0;
    put32(rec + 1, 1);
    put32(rec + 5, (uint32_t)hl);
    memcpy(rec + 9, header, hl);
    ck_assert_int_eq(send(fd, rec, 9 + hl, MSG_NOSIGNAL), (ssize_t)(9 + hl));
    free(rec);
}

/* Receives one single-record reply: its header as JSON (NULL after timeout_ms). */
static json_t *raw_recv(int fd, int timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    static unsigned char buf[1 << 18];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0)
        return NULL;
    ck_assert_int_eq(buf[0], 0);
    ck_assert_int_ge(n, 9);
    uint32_t nf = buf[1] | buf[2] << 8 | (uint32_t)buf[3] << 16 | (uint32_t)buf[4] << 24;
    uint32_t hl = buf[5] | buf[6] << 8 | (uint32_t)buf[7] << 16 | (uint32_t)buf[8] << 24;
    ck_assert_uint_ge(nf, 1);
    size_t off = 1 + 4 + 4 * (size_t)nf;
    ck_assert_uint_le(off + hl, (size_t)n);
    return json_loadb((const char *)buf + off, hl, 0, NULL);
}

static void set_fault(lmq_proxy_t *p, const char *fault)
{
    lmq_value_t v = {0};
    lmq_value_set_string(&v, fault);
    CK_OK(p, lmq_proxy_set(p, "fault", &v));
    lmq_value_clear(&v);
}

/* Everything a client does through a proxy, on the path of the loop: scalars,
 * an array reply split over several records, a request too large for a
 * record (ZeroMQ then, on either path), every check, and stats per path. */
START_TEST(calls_take_the_path_asked)
{
    const char *path = use_path(_i);
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *psu = proxy(ctx, &d, "psu1"), *cam = proxy(ctx, &d, "cam1");
    ck_assert_str_eq(lmq_proxy_last_path(psu), "");
    lmq_value_t v = lmq_float(2.5), r = {0};
    CK_OK(psu, lmq_proxy_set(psu, "voltage", &v));
    ck_assert_str_eq(lmq_proxy_last_path(psu), path);
    double x;
    CK_OK(psu, lmq_proxy_get_double(psu, "voltage", &x));
    ck_assert_double_eq(x, 2.5);
    ck_assert_str_eq(lmq_proxy_last_path(psu), path);

    /* sweep: an array result */
    lmq_value_t on = lmq_bool(true);
    CK_OK(psu, lmq_proxy_set(psu, "output", &on));
    lmq_value_t sw[3] = {lmq_float(0), lmq_float(1), lmq_int(200)};
    lmq_proxy_set_timeout(psu, 20000); /* the simulated output slews */
    CK_OK(psu, lmq_proxy_call(psu, "sweep", sw, 3, &r));
    ck_assert_int_eq(r.type, LMQ_ARRAY);
    ck_assert_uint_eq(r.u.a.shape[0], 200);
    ck_assert_uint_eq(r.u.a.shape[1], 2);
    lmq_value_clear(&r);
    /* a 1.5 MB camera frame: many records */
    CK_OK(cam, lmq_proxy_call(cam, "snap", NULL, 0, &r));
    ck_assert_uint_eq(r.u.a.shape[0], 768);
    ck_assert_uint_eq(r.u.a.shape[1], 1024);
    lmq_value_clear(&r);
    ck_assert_str_eq(lmq_proxy_last_path(cam), path);

    /* 17000 doubles (136 kB) do not fit in a record: this request goes by ZeroMQ */
    enum { NV = 17000 };
    size_t shape[1] = {NV};
    lmq_value_t arr = {0};
    ck_assert_int_eq(lmq_value_set_array(&arr, LMQ_F64, 1, shape, NULL), 0);
    double *vv = arr.u.a.data;
    for (int i = 0; i < NV; i++)
        vv[i] = (double)(i % 100) / 10;
    /* (the driver takes at most 10000: its refusal is the reply) */
    ck_assert_int_eq(lmq_proxy_call(psu, "list_sweep", &arr, 1, &r), LMQ_EARG);
    ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(psu), "1..10000 voltages (got 1 dimensions, 17000)"));
    ck_assert_str_eq(lmq_proxy_last_path(psu), "zmq");
    lmq_value_clear(&arr);
    CK_OK(psu, lmq_proxy_get_double(psu, "voltage", &x));
    ck_assert_str_eq(lmq_proxy_last_path(psu), path); /* and back */

    /* the same checks, the same words, on either path */
    ck_assert_int_eq(lmq_proxy_get(psu, "volts", &r), LMQ_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(psu), "psu1 has no property 'volts' (properties: "));
    ck_assert_int_eq(lmq_proxy_call(psu, "explode", NULL, 0, &r), LMQ_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(psu), "psu1 has no method 'explode' (methods: reset"));
    v = lmq_float(31);
    ck_assert_int_eq(lmq_proxy_set(psu, "voltage", &v), LMQ_ERANGE);
    ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(psu), "is outside 0..30"));
    ck_assert_int_eq(lmq_proxy_set(psu, "measured_current", &v), LMQ_EREADONLY);
    ck_assert_int_eq(lmq_proxy_call(psu, "sweep", sw, 2, &r), LMQ_EARG);
    ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(psu), "takes 3 arguments (start, stop, points), got 2"));
    lmq_value_t text = {0};
    lmq_value_set_string(&text, "five");
    ck_assert_int_eq(lmq_proxy_set(psu, "voltage", &text), LMQ_EARG);
    ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(psu), "must be float, got string"));
    lmq_value_clear(&text);
    ck_assert_str_eq(lmq_proxy_last_path(psu), path);

    /* stats count the device's calls per path: the 5 that ran on psu1 here
     * (set voltage, set output, sweep, get, get) and the list_sweep that
     * went by ZeroMQ */
    json_t *s = dev_stats(ctx, &d, "psu1");
    long long local = stat_int(s, "calls_local"), zmq = stat_int(s, "calls_zmq");
    ck_assert_int_eq(local + zmq, stat_int(s, "calls"));
    if (_i == 0) {
        ck_assert_int_eq(local, 5);
        ck_assert_int_eq(zmq, 1);
        ck_assert_int_eq(stat_int(s, "local_clients"), 1);
    } else {
        ck_assert_int_eq(local, 0);
        ck_assert_int_eq(zmq, 6);
    }
    json_decref(s);
    lmq_proxy_destroy(&psu);
    lmq_proxy_destroy(&cam);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

/* A TIMEOUT is followed by a fresh connection: the late reply of the timed
 * out request is never taken for the answer to the next one. */
START_TEST(timeout_then_no_stale_reply)
{
    const char *path = use_path(_i);
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = proxy(ctx, &d, "psu1");
    lmq_value_t v = lmq_float(1.0);
    CK_OK(p, lmq_proxy_set(p, "voltage", &v));
    set_fault(p, "delay:400");
    lmq_proxy_set_timeout(p, 150);
    double x, t0 = th_now_ms();
    ck_assert_int_eq(lmq_proxy_get_double(p, "voltage", &x), LMQ_ETIMEOUT);
    ck_assert_double_lt(th_now_ms() - t0, 150 + 300);
    ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(p), "no reply within 150 ms"));
    lmq_proxy_set_timeout(p, 3000);
    set_fault(p, "none"); /* runs after the delayed get, whose reply is now late */
    v = lmq_float(3.0);
    CK_OK(p, lmq_proxy_set(p, "voltage", &v));
    CK_OK(p, lmq_proxy_get_double(p, "voltage", &x));
    ck_assert_double_eq(x, 3.0);
    ck_assert_str_eq(lmq_proxy_last_path(p), path);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

typedef struct {
    lmq_proxy_t *p;
    int rc;
    double ms;
} call_arg_t;

static void *get_in_thread(void *arg)
{
    call_arg_t *a = arg;
    double x, t0 = th_now_ms();
    a->rc = lmq_proxy_get_double(a->p, "voltage", &x);
    a->ms = th_now_ms() - t0;
    return NULL;
}

/* SIGKILL with a request in flight, then with none; restart; an absent
 * daemon. The same proxy recovers on its own. */
START_TEST(sigkill_restart_and_absent_daemon)
{
    const char *path = use_path(_i);
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = proxy(ctx, &d, "psu1");
    double x;
    CK_OK(p, lmq_proxy_get_double(p, "voltage", &x));
    set_fault(p, "hang");
    lmq_proxy_set_timeout(p, 2000);
    call_arg_t a = {p, 0, 0};
    pthread_t t;
    pthread_create(&t, NULL, get_in_thread, &a);
    struct timespec nap = {0, 200 * 1000 * 1000};
    nanosleep(&nap, NULL);
    th_daemon_stop(&d, SIGKILL);
    pthread_join(t, NULL);
    /* Both paths notice a dead daemon at once (the channel closes; the
     * ZeroMQ socket's monitor sees the disconnect): a get is UNREACHABLE,
     * long before its 2 s timeout (protocol 2.5). */
    ck_assert_msg(a.rc == LMQ_EUNREACH, "rc %d: %s", a.rc, lmq_proxy_last_error(p));
    ck_assert_double_lt(a.ms, 1500);

    lmq_proxy_set_timeout(p, 300);
    int rc = lmq_proxy_get_double(p, "voltage", &x);
    ck_assert_msg(rc == LMQ_EUNREACH || rc == LMQ_ETIMEOUT, "rc %d: %s", rc, lmq_proxy_last_error(p));
    double t0 = th_now_ms();
    th_daemon_restart(&d);
    rc = -1;
    while (rc != 0 && th_now_ms() - t0 < 3000)
        rc = lmq_proxy_get_double(p, "voltage", &x);
    ck_assert_msg(rc == 0, "the proxy did not recover within 3 s: %s", lmq_proxy_last_error(p));
    lmq_value_t v = lmq_float(1.5);
    CK_OK(p, lmq_proxy_set(p, "voltage", &v));
    CK_OK(p, lmq_proxy_get_double(p, "voltage", &x));
    ck_assert_double_eq(x, 1.5);
    ck_assert_str_eq(lmq_proxy_last_path(p), path);

    /* absent: UNREACHABLE within the timeout (or TIMEOUT, when ZeroMQ took
     * the request before it noticed the connection was gone) */
    th_daemon_stop(&d, SIGKILL);
    t0 = th_now_ms();
    rc = lmq_proxy_get_double(p, "voltage", &x);
    ck_assert_msg(rc == LMQ_EUNREACH || rc == LMQ_ETIMEOUT, "rc %d: %s", rc, lmq_proxy_last_error(p));
    ck_assert_double_lt(th_now_ms() - t0, 300 + 200);
    rc = lmq_proxy_get_double(p, "voltage", &x);
    ck_assert_int_eq(rc, LMQ_EUNREACH);
    ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(p), "no daemon answers"));
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    th_daemon_cleanup(&d);
}
END_TEST

/* The per-device bound counts both paths: a request of the proxy's path
 * holds the device (a 2 s hang) while a raw ZeroMQ client fills the queue;
 * then the proxy's next request is refused as soon as the device is free to
 * read it, where the local path reads it (the ZeroMQ path: at once). */
START_TEST(queue_bound_is_shared)
{
    use_path(_i);
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = proxy(ctx, &d, "psu1");
    set_fault(p, "hang:2000");
    uint64_t ida, idb, idc, id;
    CK_OK(p, lmq_proxy_send_get(p, "voltage", &ida));
    struct timespec nap = {0, 100 * 1000 * 1000};
    nanosleep(&nap, NULL);
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, unlimited = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_SNDHWM, &unlimited, sizeof unlimited);
    ck_assert_int_eq(zmq_connect(s, d.control), 0);
    for (int k = 1; k <= 1100; k++) {
        char buf[200];
        int n = snprintf(buf, sizeof buf, "{\"v\":1,\"id\":%d,\"op\":\"get\",\"device\":\"psu1\",\"name\":\"voltage\"}",
                         k);
        ck_assert_int_eq(zmq_send(s, buf, (size_t)n, 0), n);
    }
    /* the broker refuses the 101 beyond its bound (the proxy's request counts) */
    for (int k = 0; k < 101; k++) {
        json_t *r = th_recv_reply(s, 5000);
        ck_assert_ptr_nonnull(r);
        ck_assert_str_eq(th_reply_code(r), "TIMEOUT");
        ck_assert_ptr_nonnull(strstr(th_reply_message(r), "1000 requests already queued"));
        json_decref(r);
    }
    CK_OK(p, lmq_proxy_send_get(p, "voltage", &idb));
    CK_OK(p, lmq_proxy_send_get(p, "voltage", &idc));
    lmq_proxy_set_timeout(p, 5000);
    /* local: A ends (its hang), B takes A's place, C is refused; ZeroMQ: B and C are refused */
    bool c_refused = false;
    for (int k = 0; k < (_i == 0 ? 2 : 3) && !c_refused; k++) {
        int rc = lmq_proxy_recv(p, &id, NULL);
        ck_assert_int_eq(rc, LMQ_ETIMEOUT);
        if (id == ida)
            ck_assert_msg(strstr(lmq_proxy_last_error(p), "simulated hang"), "%s", lmq_proxy_last_error(p));
        else
            ck_assert_ptr_nonnull(strstr(lmq_proxy_last_error(p), "1000 requests already queued"));
        ck_assert(_i == 1 || id != idb);
        c_refused = id == idc;
    }
    ck_assert(c_refused);
    zmq_close(s);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

/* Pipelined replies keep the order of the sends; at stop, requests waiting
 * at a hung device are answered CLOSED in the order they were sent. The
 * second half runs on the channel only: the proxy's DEALER (ZMQ_IMMEDIATE)
 * may drop replies it holds unread when the daemon's end closes, so the
 * ZeroMQ half of this promise is tested raw, in test_broker. */
START_TEST(closed_at_stop_in_order)
{
    use_path(_i);
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = proxy(ctx, &d, "psu1");
    enum { N = 300 };
    uint64_t ids[N], id;
    for (int i = 0; i < N; i++)
        CK_OK(p, lmq_proxy_send_get(p, "voltage", &ids[i]));
    for (int i = 0; i < N; i++) {
        CK_OK(p, lmq_proxy_recv(p, &id, NULL));
        ck_assert_uint_eq(id, ids[i]);
    }
    if (_i == 1) {
        lmq_proxy_destroy(&p);
        zmq_ctx_term(ctx);
        th_daemon_finish(&d);
        return;
    }
    set_fault(p, "hang");
    for (int i = 0; i < 5; i++)
        CK_OK(p, lmq_proxy_send_get(p, "voltage", &ids[i]));
    lmq_proxy_set_timeout(p, 300);
    ck_assert_int_eq(lmq_proxy_recv(p, &id, NULL), LMQ_ETIMEOUT);
    kill(d.pid, SIGTERM);
    lmq_proxy_set_timeout(p, 10000);
    for (int i = 0; i < 5; i++) {
        int rc = lmq_proxy_recv(p, &id, NULL);
        ck_assert_msg(rc == LMQ_ECLOSED, "reply %d: %d %s", i, rc, lmq_proxy_last_error(p));
        ck_assert_uint_eq(id, ids[i]);
    }
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    int st = th_daemon_stop(&d, SIGTERM);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "labmqd status 0x%x", (unsigned)st);
    th_daemon_cleanup(&d);
}
END_TEST

typedef struct {
    lmq_proxy_t *p;
    double base;
    int n, failures;
} setter_t;

static void *set_many(void *arg)
{
    setter_t *s = arg;
    for (int i = 0; i < s->n; i++) {
        lmq_value_t v = lmq_float(s->base + i * 0.001);
        s->failures += lmq_proxy_set(s->p, "voltage", &v) != 0;
    }
    return NULL;
}

/* One client on the channel, one on ZeroMQ, setting one property at once:
 * each gets its replies, and the device applies each client's sets in the
 * order that client sent them (seen in the change events). */
START_TEST(mixed_clients_interleave_sets)
{
    use_path(0);
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    lmq_events_t *ev = lmq_events_new(ctx, d.data, "psu1");
    ck_assert_ptr_nonnull(ev);
    lmq_proxy_t *lp = proxy(ctx, &d, "psu1"), *zp = proxy(ctx, &d, "psu1");
    lmq_proxy_set_local(zp, false);
    /* the subscription must have reached the daemon before the sets */
    lmq_event_t *e = NULL;
    lmq_value_t v0 = lmq_float(0.5);
    for (int tries = 0; tries < 50; tries++) {
        CK_OK(lp, lmq_proxy_set(lp, "voltage", &v0));
        if (lmq_events_recv(ev, &e, 100) == 0)
            break;
    }
    ck_assert_ptr_nonnull(e);
    lmq_event_destroy(&e);
    while (lmq_events_recv(ev, &e, 200) == 0)
        lmq_event_destroy(&e);
    ck_assert_str_eq(lmq_proxy_last_path(lp), "local");
    enum { N = 300 };
    setter_t a = {lp, 10.0, N, 0}, b = {zp, 20.0, N, 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, set_many, &a);
    pthread_create(&tb, NULL, set_many, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    ck_assert_int_eq(a.failures, 0);
    ck_assert_int_eq(b.failures, 0);
    ck_assert_str_eq(lmq_proxy_last_path(zp), "zmq");
    int got_a = 0, got_b = 0, switches = 0, last_src = -1;
    while (got_a + got_b < 2 * N && lmq_events_recv(ev, &e, 3000) == 0) {
        ck_assert_str_eq(lmq_event_cause(e), "set");
        double x = lmq_event_value(e)->u.f;
        int src = x >= 20.0 - 1e-9;
        int k = (int)((x - (src ? 20.0 : 10.0)) / 0.001 + 0.5);
        if (src) {
            ck_assert_int_eq(k, got_b);
            got_b++;
        } else {
            ck_assert_int_eq(k, got_a);
            got_a++;
        }
        switches += last_src >= 0 && src != last_src;
        last_src = src;
        lmq_event_destroy(&e);
    }
    ck_assert_int_eq(got_a, N);
    ck_assert_int_eq(got_b, N);
    ck_assert_uint_eq(lmq_events_lost(ev), 0);
    ck_assert_int_gt(switches, 0); /* they really interleaved */
    lmq_events_destroy(&ev);
    lmq_proxy_destroy(&lp);
    lmq_proxy_destroy(&zp);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

/* A client that sends and never reads, and one that dies with a request in
 * flight, cost other clients nothing. */
START_TEST(dead_and_slow_clients_do_not_block)
{
    use_path(0);
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    char *path = channel_path(ctx, &d, "psu1");
    ck_assert_ptr_nonnull(path);
    int slow = raw_connect(path);
    struct timeval tv = {0, 200 * 1000};
    setsockopt(slow, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int sent = 0;
    for (int id = 1; id <= 5000; id++) { /* until its socket takes no more */
        char hdr[200];
        int n = snprintf(hdr, sizeof hdr,
                         "{\"v\":1,\"id\":%d,\"op\":\"call\",\"device\":\"psu1\",\"name\":\"sweep\",\"args\":[0,1,"
                         "2000]}",
                         id);
        unsigned char rec[300];
        rec[0] = 0;
        put32(rec + 1, 1);
        put32(rec + 5, (uint32_t)n);
        memcpy(rec + 9, hdr, (size_t)n);
        if (send(slow, rec, 9 + (size_t)n, MSG_NOSIGNAL) < 0)
            break;
        sent++;
    }
    ck_assert_int_gt(sent, 100);
    int dying = raw_connect(path);
    raw_send(dying, "{\"v\":1,\"id\":7,\"op\":\"get\",\"device\":\"psu1\",\"name\":\"voltage\"}");
    close(dying);

    lmq_proxy_t *p = proxy(ctx, &d, "psu1");
    double x, worst = 0;
    for (int i = 0; i < 100; i++) {
        double t0 = th_now_ms();
        CK_OK(p, lmq_proxy_get_double(p, "voltage", &x));
        worst = th_now_ms() - t0 > worst ? th_now_ms() - t0 : worst;
    }
    ck_assert_msg(worst < 1000, "a get took %.1f ms beside a client that does not read", worst);
    ck_assert_str_eq(lmq_proxy_last_path(p), "local");
    close(slow);
    json_t *s = NULL;
    for (int tries = 0; tries < 100; tries++) {
        json_decref(s);
        s = dev_stats(ctx, &d, "psu1");
        if (stat_int(s, "local_clients") == 1 && stat_int(s, "in_flight") == 0)
            break;
        struct timespec nap = {0, 20 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    ck_assert_int_eq(stat_int(s, "local_clients"), 1);
    ck_assert_int_eq(stat_int(s, "in_flight"), 0);
    json_decref(s);
    free(path);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

static int count_fds(pid_t pid)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%ld/fd", (long)pid);
    DIR *dp = opendir(dir);
    ck_assert_ptr_nonnull(dp);
    int n = 0;
    for (struct dirent *e; (e = readdir(dp));)
        n += e->d_name[0] != '.';
    closedir(dp);
    return n;
}

/* 10,000 connections come and go (every tenth with a request): the
 * daemon's descriptor count ends where it began. */
START_TEST(connect_cycles_keep_fd_count)
{
    use_path(0);
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    char *path = channel_path(ctx, &d, "psu1");
    ck_assert_ptr_nonnull(path);
    json_t *s = dev_stats(ctx, &d, "psu1");
    json_decref(s);
    /* the stats client's connection is gone once the count holds still */
    int before = count_fds(d.pid);
    for (int tries = 0, prev = -1; tries < 50 && before != prev; tries++) {
        struct timespec nap = {0, 50 * 1000 * 1000};
        nanosleep(&nap, NULL);
        prev = before;
        before = count_fds(d.pid);
    }
    for (int i = 0; i < 10000; i++) {
        int fd = raw_connect(path);
        if (i % 10 == 0) {
            raw_send(fd, "{\"v\":1,\"id\":1,\"op\":\"get\",\"device\":\"psu1\",\"name\":\"voltage\"}");
            json_t *r = raw_recv(fd, 5000);
            ck_assert_ptr_nonnull(r);
            ck_assert_str_eq(th_reply_code(r), "OK");
            json_decref(r);
        }
        close(fd);
    }
    int after = -1;
    for (int tries = 0; tries < 200 && (after = count_fds(d.pid)) != before; tries++) {
        struct timespec nap = {0, 10 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    ck_assert_int_eq(after, before);
    s = dev_stats(ctx, &d, "psu1");
    ck_assert_int_eq(stat_int(s, "local_clients"), 0);
    ck_assert_int_eq(stat_int(s, "calls_local"), 1000);
    json_decref(s);
    free(path);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

/* No channel offered (an older daemon, or LABMQ_NO_LOCAL in its
 * environment), or the proxy told not to: ZeroMQ, unnoticed. */
START_TEST(fallback_without_a_channel)
{
    use_path(1); /* the daemon starts with LABMQ_NO_LOCAL=1 */
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    use_path(0);
    void *ctx = zmq_ctx_new();
    char *path = channel_path(ctx, &d, "psu1");
    ck_assert_ptr_null(path);
    lmq_proxy_t *p = proxy(ctx, &d, "psu1");
    double x;
    CK_OK(p, lmq_proxy_get_double(p, "voltage", &x));
    ck_assert_str_eq(lmq_proxy_last_path(p), "zmq");
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);

    th_daemon_start(&d, lab_yaml);
    ctx = zmq_ctx_new();
    p = proxy(ctx, &d, "psu1");
    lmq_proxy_set_local(p, false);
    CK_OK(p, lmq_proxy_get_double(p, "voltage", &x));
    ck_assert_str_eq(lmq_proxy_last_path(p), "zmq");
    lmq_proxy_set_local(p, true);
    CK_OK(p, lmq_proxy_get_double(p, "voltage", &x));
    ck_assert_str_eq(lmq_proxy_last_path(p), "local");
    /* the socket is the daemon's alone, and goes with it */
    path = channel_path(ctx, &d, "psu1");
    ck_assert_ptr_nonnull(path);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    th_daemon_stop(&d, SIGTERM);
    ck_assert_int_ne(access(path, F_OK), 0);
    free(path);
    th_daemon_cleanup(&d);
}
END_TEST

/* Locks are kept by the broker: the channel refuses set and call of a
 * locked device (naming the holder), the holder's proxy goes by ZeroMQ while
 * it holds a lock (renewing it), gets stay open, and after unlock-all the
 * holder is back on the channel. Deadlines hold on the channel too. */
START_TEST(locks_and_deadlines_on_the_channel)
{
    use_path(0);
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *holder = proxy(ctx, &d, "psu1"), *other = proxy(ctx, &d, "psu1");
    double x;
    CK_OK(other, lmq_proxy_get_double(other, "voltage", &x));
    ck_assert_str_eq(lmq_proxy_last_path(other), "local");
    CK_OK(holder, lmq_proxy_set_client(holder, "holder-script"));
    CK_OK(holder, lmq_proxy_lock(holder, NULL, 0, 10000));
    lmq_value_t v = lmq_float(1.25);
    ck_assert_int_eq(lmq_proxy_set(other, "voltage", &v), LMQ_ELOCKED);
    ck_assert_str_eq(lmq_proxy_last_path(other), "local");
    ck_assert_msg(strstr(lmq_proxy_last_error(other), "locked by 'holder-script'"), "%s", lmq_proxy_last_error(other));
    CK_OK(other, lmq_proxy_get_double(other, "voltage", &x));
    ck_assert_str_eq(lmq_proxy_last_path(other), "local");
    CK_OK(holder, lmq_proxy_set(holder, "voltage", &v));
    ck_assert_str_eq(lmq_proxy_last_path(holder), "zmq");
    CK_OK(holder, lmq_proxy_unlock(holder, NULL, 0));
    CK_OK(other, lmq_proxy_set(other, "voltage", &v));
    ck_assert_str_eq(lmq_proxy_last_path(other), "local");
    CK_OK(holder, lmq_proxy_get_double(holder, "voltage", &x));
    ck_assert_str_eq(lmq_proxy_last_path(holder), "local");
    ck_assert(x == 1.25);

    /* deadline_ms 0 on the channel: TIMEOUT, never run */
    char *path = channel_path(ctx, &d, "psu1");
    ck_assert_ptr_nonnull(path);
    int fd = raw_connect(path);
    raw_send(fd, "{\"v\":1,\"id\":7,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":3.0,"
                 "\"deadline_ms\":0}");
    json_t *r = raw_recv(fd, 5000);
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(r, "error"), "code")), "TIMEOUT");
    json_decref(r);
    close(fd);
    free(path);
    CK_OK(other, lmq_proxy_get_double(other, "voltage", &x));
    ck_assert(x == 1.25);

    lmq_proxy_destroy(&holder);
    lmq_proxy_destroy(&other);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

/* What the channel refuses, it answers, and the connection goes on. */
START_TEST(malformed_records_are_answered)
{
    use_path(0);
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    char *path = channel_path(ctx, &d, "psu1");
    ck_assert_ptr_nonnull(path);
    int fd = raw_connect(path);
    int big = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    static unsigned char rec[200000];
    memset(rec, ' ', sizeof rec);
    rec[0] = 0;
    put32(rec + 1, 1);
    put32(rec + 5, sizeof rec - 9);
    ck_assert_int_eq(send(fd, rec, sizeof rec, MSG_NOSIGNAL), (ssize_t)sizeof rec);
    json_t *r = raw_recv(fd, 5000);
    ck_assert_str_eq(th_reply_code(r), "PROTO");
    ck_assert_ptr_nonnull(strstr(th_reply_message(r), "larger than the 131072"));
    ck_assert(json_is_null(json_object_get(r, "id")));
    json_decref(r);
    /* a request may not span records */
    unsigned char more[10] = {1, 1, 0, 0, 0, 1, 0, 0, 0, '{'};
    ck_assert_int_eq(send(fd, more, sizeof more, MSG_NOSIGNAL), 10);
    r = raw_recv(fd, 5000);
    ck_assert_str_eq(th_reply_code(r), "PROTO");
    ck_assert_ptr_nonnull(strstr(th_reply_message(r), "one record"));
    json_decref(r);
    /* a frame table that claims more than the record holds */
    unsigned char bad[12] = {0, 1, 0, 0, 0, 100, 0, 0, 0, '{', '}', ' '};
    ck_assert_int_eq(send(fd, bad, sizeof bad, MSG_NOSIGNAL), 12);
    r = raw_recv(fd, 5000);
    ck_assert_str_eq(th_reply_code(r), "PROTO");
    ck_assert_ptr_nonnull(strstr(th_reply_message(r), "claims 100 bytes"));
    json_decref(r);
    raw_send(fd, "{\"v\":1,\"id\":5,\"op\":\"list\"}");
    r = raw_recv(fd, 5000);
    ck_assert_str_eq(th_reply_code(r), "PROTO");
    ck_assert_ptr_nonnull(strstr(th_reply_message(r), "send it to the control endpoint"));
    ck_assert_int_eq(json_integer_value(json_object_get(r, "id")), 5);
    json_decref(r);
    raw_send(fd, "{\"v\":1,\"id\":6,\"op\":\"get\",\"device\":\"cam1\",\"name\":\"width\"}");
    r = raw_recv(fd, 5000);
    ck_assert_str_eq(th_reply_code(r), "NOTFOUND");
    json_decref(r);
    raw_send(fd, "{\"v\":1,\"id\":7,\"op\":\"get\",\"device\":\"psu1\",\"name\":\"voltage\",\"id\":8}");
    r = raw_recv(fd, 5000);
    ck_assert_str_eq(th_reply_code(r), "PROTO");
    json_decref(r);
    raw_send(fd, "{\"v\":1,\"id\":9,\"op\":\"get\",\"device\":\"psu1\",\"name\":\"voltage\"}");
    r = raw_recv(fd, 5000);
    ck_assert_str_eq(th_reply_code(r), "OK");
    ck_assert_int_eq(json_integer_value(json_object_get(r, "id")), 9);
    json_decref(r);
    close(fd);
    free(path);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

/* A driver whose one method says who called: the uid the device thread
 * knows for a local-channel job, -1 for a ZeroMQ job. */
static int m_whoami(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    (void)state;
    (void)args;
    pthread_mutex_lock(&dev->mu);
    const lmq__job_t *job = dev->current;
    pthread_mutex_unlock(&dev->mu);
    uid_t uid;
    gid_t gid;
    pid_t pid;
    *result = lmq_int(lmq__local_job_peer(job, &uid, &gid, &pid) && pid == getpid() && gid == getgid() ? (long)uid : -1);
    return 0;
}

static const lmq_method_t who_methods[] = {{.name = "whoami", .ret = LMQ_INT, .fn = m_whoami}, {.name = NULL}};
static const lmq_driver_t who_driver = {.name = "test-who", .description = "says who called", .methods = who_methods};

typedef struct {
    pthread_mutex_t mu;
    char text[8192];
} logbuf_t;

static void keep_log(void *user, lmq_log_level_t level, const char *source, const char *msg)
{
    (void)level;
    logbuf_t *b = user;
    pthread_mutex_lock(&b->mu);
    size_t n = strlen(b->text);
    snprintf(b->text + n, sizeof b->text - n, "%s: %s\n", source, msg);
    pthread_mutex_unlock(&b->mu);
}

/* The device thread knows a local client's credentials (SO_PEERCRED): they
 * are logged, and a job tells them (lmq__local_job_peer) for access roles. */
START_TEST(peer_credentials_are_known)
{
    use_path(0);
    char dir[128], control[200], data[200];
    th_tempdir(dir, sizeof dir);
    snprintf(control, sizeof control, "ipc://%s/control", dir);
    snprintf(data, sizeof data, "ipc://%s/data", dir);
    logbuf_t lb = {.mu = PTHREAD_MUTEX_INITIALIZER};
    lmq_log_t *log = lmq_log_new(LMQ_LOG_DEBUG, keep_log, &lb);
    void *ctx = zmq_ctx_new();
    lmq_daemon_t *d = lmq_daemon_new(ctx, control, data, log);
    ck_assert_int_eq(lmq_daemon_add(d, "who", &who_driver, NULL, NULL), 0);
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, 20000), 0);
    lmq_proxy_t *p = lmq_proxy_new(ctx, control, "who");
    lmq_value_t r = {0};
    CK_OK(p, lmq_proxy_call(p, "whoami", NULL, 0, &r));
    ck_assert_str_eq(lmq_proxy_last_path(p), "local");
    ck_assert_int_eq(r.u.i, (long)getuid());
    lmq_proxy_set_local(p, false);
    CK_OK(p, lmq_proxy_call(p, "whoami", NULL, 0, &r));
    ck_assert_str_eq(lmq_proxy_last_path(p), "zmq");
    ck_assert_int_eq(r.u.i, -1);
    char want[120];
    snprintf(want, sizeof want, "local client #1: pid %ld, uid %ld, gid %ld", (long)getpid(), (long)getuid(),
             (long)getgid());
    pthread_mutex_lock(&lb.mu);
    ck_assert_msg(strstr(lb.text, want), "no '%s' in the log:\n%s", want, lb.text);
    /* a call on the channel is audited like one through the broker */
    snprintf(want, sizeof want, "audit: local uid %ld pid %ld call who.whoami", (long)getuid(), (long)getpid());
    ck_assert_msg(strstr(lb.text, want), "no '%s' in the log:\n%s", want, lb.text);
    pthread_mutex_unlock(&lb.mu);
    lmq_proxy_destroy(&p);
    lmq_daemon_destroy(&d);
    zmq_ctx_term(ctx);
    lmq_log_destroy(&log);
    th_rmtree(dir);
}
END_TEST

/* LABMQ_LOCAL_SPIN_US: the default, 0, the bound, and a value that is no
 * number of microseconds (the default, as unset); no spin with one CPU. */
START_TEST(spin_setting)
{
    bool one_cpu = sysconf(_SC_NPROCESSORS_ONLN) < 2;
    int64_t dflt = one_cpu ? 0 : LMQ__LOCAL_SPIN_US_DEFAULT * 1000LL;
    unsetenv("LABMQ_LOCAL_SPIN_US");
    ck_assert_int_eq(lmq__local_spin_ns(), dflt);
    setenv("LABMQ_LOCAL_SPIN_US", "0", 1);
    ck_assert_int_eq(lmq__local_spin_ns(), 0);
    setenv("LABMQ_LOCAL_SPIN_US", "200", 1);
    ck_assert_int_eq(lmq__local_spin_ns(), one_cpu ? 0 : 200000);
    const char *bad[] = {"-1", "20000", "50us", "x", " 5"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        setenv("LABMQ_LOCAL_SPIN_US", bad[i], 1);
        ck_assert_msg(lmq__local_spin_ns() == dflt, "LABMQ_LOCAL_SPIN_US=%s", bad[i]);
    }
    unsetenv("LABMQ_LOCAL_SPIN_US");
}
END_TEST

/* The polling state's rules (lmq__spin_t): on at first; off after a wait
 * whose window ran out; on again after a wait that slept less than the
 * window, unless a busy CPU put it on hold. */
START_TEST(spin_state)
{
    setenv("LABMQ_LOCAL_SPIN_US", "50", 1);
    lmq__spin_t s;
    lmq__spin_init(&s);
    unsetenv("LABMQ_LOCAL_SPIN_US");
    if (s.window_ns == 0) /* one CPU: never polls */
        return;
    ck_assert(lmq__spin_allowed(&s));
    int64_t now = lmq_clock_mono_ns();
    ck_assert(!lmq__spin_yield(&s, now - 1000000)); /* began 1 ms ago: the window is over */
    ck_assert(!lmq__spin_allowed(&s));
    lmq__spin_slept(&s, 2 * s.window_ns); /* a slow answer keeps it off */
    ck_assert(!lmq__spin_allowed(&s));
    lmq__spin_slept(&s, s.window_ns / 2); /* a quick one turns it on */
    ck_assert(lmq__spin_allowed(&s));
    s.on = false;
    s.hold_until = lmq_clock_mono_ns() + LMQ__SPIN_HOLD_NS; /* as after a long yield */
    lmq__spin_slept(&s, s.window_ns / 2);
    ck_assert(!lmq__spin_allowed(&s));
    s.hold_until = lmq_clock_mono_ns() - 1;
    lmq__spin_slept(&s, s.window_ns / 2);
    ck_assert(lmq__spin_allowed(&s));
    /* Within the window a yield keeps polling, unless the yield itself took
     * long: either way the answer is consistent with the state. */
    bool more = lmq__spin_yield(&s, lmq_clock_mono_ns());
    ck_assert(more == lmq__spin_allowed(&s));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("local");
    TCase *both = tcase_create("both_paths");
    tcase_set_timeout(both, 120);
    tcase_add_loop_test(both, calls_take_the_path_asked, 0, 2);
    tcase_add_loop_test(both, timeout_then_no_stale_reply, 0, 2);
    tcase_add_loop_test(both, sigkill_restart_and_absent_daemon, 0, 2);
    tcase_add_loop_test(both, queue_bound_is_shared, 0, 2);
    tcase_add_loop_test(both, closed_at_stop_in_order, 0, 2);
    suite_add_tcase(s, both);
    TCase *local = tcase_create("local");
    tcase_set_timeout(local, 180);
    tcase_add_test(local, mixed_clients_interleave_sets);
    tcase_add_test(local, dead_and_slow_clients_do_not_block);
    tcase_add_test(local, connect_cycles_keep_fd_count);
    tcase_add_test(local, fallback_without_a_channel);
    tcase_add_test(local, malformed_records_are_answered);
    tcase_add_test(local, peer_credentials_are_known);
    tcase_add_test(local, locks_and_deadlines_on_the_channel);
    tcase_add_test(local, spin_setting);
    tcase_add_test(local, spin_state);
    suite_add_tcase(s, local);
    return th_run_suite(s);
}
