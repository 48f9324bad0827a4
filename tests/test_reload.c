/* labmqd reloading its configuration on SIGHUP, as a real process: a device
 * added, one removed (its queued requests answered CLOSED, then NOTFOUND),
 * one reconfigured (new options, new epoch), workers added, removed and
 * changed, and broken configurations refused whole. Throughout, clients keep
 * calling and streaming from the devices the reloads do not touch, and those
 * never blink: every call answered, no change event, the same epoch, no seq
 * lost.
 *
 * labmqd runs as a child started with posix_spawn; the clients are threads
 * of the test, each with its own sockets on the test's one context. */
#include <check.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "harness.h"
#include "labmq/labmq.h"

#define LABMQD LMQ_BUILD_DIR "/workers/labmqd/labmqd"
#define CHILD LMQ_BUILD_DIR "/tests/supervise_child"
#define CLI LMQ_BUILD_DIR "/tools/labmq"
/* Generous: sanitizers on two loaded cores. */
#define WAIT_MS 30000

/* ---- clients that run through every reload ---- */

/* Calls get(property) on a device in a loop, counting the outcomes. */
typedef struct caller {
    void *zctx;
    const char *control, *device, *property;
    atomic_bool stop;
    atomic_ulong ok, failed;
    char first_error[300]; /* written before `failed` is first raised */
    pthread_t thread;
} caller_t;

static void *caller_main(void *arg)
{
    caller_t *c = arg;
    lmq_proxy_t *p = lmq_proxy_new(c->zctx, c->control, c->device);
    lmq_proxy_set_timeout(p, WAIT_MS);
    while (!atomic_load(&c->stop)) {
        double v;
        int rc = lmq_proxy_get_double(p, c->property, &v);
        if (rc == 0) {
            atomic_fetch_add(&c->ok, 1);
            continue;
        }
        if (atomic_load(&c->failed) == 0)
            snprintf(c->first_error, sizeof c->first_error, "%s: %s", lmq_status_name(rc), lmq_proxy_last_error(p));
        atomic_fetch_add(&c->failed, 1);
    }
    lmq_proxy_destroy(&p);
    return NULL;
}

/* Receives one stream, noting losses and epoch changes. */
typedef struct watcher {
    void *zctx;
    const char *data;
    char topic[64];
    atomic_bool stop;
    atomic_ulong received;
    /* read after join */
    uint64_t lost, restarts, first_epoch, last_epoch;
    pthread_t thread;
} watcher_t;

static void *watcher_main(void *arg)
{
    watcher_t *w = arg;
    lmq_sub_t *sub = lmq_sub_new(w->zctx, w->data, w->topic);
    while (sub && !atomic_load(&w->stop)) {
        lmq_frame_t *f = NULL;
        if (lmq_sub_recv(sub, &f, 50) != 0)
            continue;
        if (atomic_load(&w->received) == 0)
            w->first_epoch = lmq_frame_epoch(f);
        w->last_epoch = lmq_frame_epoch(f);
        atomic_fetch_add(&w->received, 1);
        lmq_frame_destroy(&f);
    }
    w->lost = sub ? lmq_sub_lost(sub) : 1;
    w->restarts = sub ? lmq_sub_restarts(sub) : 1;
    lmq_sub_destroy(&sub);
    return NULL;
}

/* Every change event of every device ($events/). */
#define MAX_EVENTS 256
typedef struct event_log {
    void *zctx;
    const char *data;
    atomic_bool stop;
    pthread_mutex_t mu;
    struct {
        char device[32], kind[16], state[16];
    } ev[MAX_EVENTS];
    size_t n;
    uint64_t lost;
    pthread_t thread;
} event_log_t;

static void *events_main(void *arg)
{
    event_log_t *l = arg;
    lmq_events_t *e = lmq_events_new(l->zctx, l->data, NULL);
    while (e && !atomic_load(&l->stop)) {
        lmq_event_t *ev = NULL;
        if (lmq_events_recv(e, &ev, 50) != 0)
            continue;
        pthread_mutex_lock(&l->mu);
        if (l->n < MAX_EVENTS) {
            snprintf(l->ev[l->n].device, sizeof l->ev[0].device, "%s", lmq_event_device(ev));
            snprintf(l->ev[l->n].kind, sizeof l->ev[0].kind, "%s", lmq_event_kind(ev));
            snprintf(l->ev[l->n].state, sizeof l->ev[0].state, "%s", lmq_event_state(ev) ? lmq_event_state(ev) : "");
            l->n++;
        }
        pthread_mutex_unlock(&l->mu);
        lmq_event_destroy(&ev);
    }
    pthread_mutex_lock(&l->mu);
    l->lost = e ? lmq_events_lost(e) : 1;
    pthread_mutex_unlock(&l->mu);
    lmq_events_destroy(&e);
    return NULL;
}

/* How many events the log holds for device (kind/state "" = any). */
static size_t count_events(event_log_t *l, const char *device, const char *kind, const char *state)
{
    size_t n = 0;
    pthread_mutex_lock(&l->mu);
    for (size_t i = 0; i < l->n; i++)
        n += strcmp(l->ev[i].device, device) == 0 && (!*kind || strcmp(l->ev[i].kind, kind) == 0) &&
             (!*state || strcmp(l->ev[i].state, state) == 0);
    pthread_mutex_unlock(&l->mu);
    return n;
}

/* ---- the daemon ---- */

typedef struct fixture {
    char dir[64], config[128], control[160], data[160], log[128];
    char w1[160], w1b[160], w2[160]; /* the workers' pid files */
    pid_t pid;
    void *zctx;
    lmq_proxy_t *admin;
    int64_t last_reload_ns;
} fixture_t;

static json_t *json_of(char *text)
{
    json_t *j = json_loads(text, 0, NULL);
    ck_assert_msg(j != NULL, "not JSON: %s", text);
    free(text);
    return j;
}

static json_t *ping_config(fixture_t *t)
{
    char *text = NULL;
    int rc = lmq_proxy_ping(t->admin, &text);
    ck_assert_msg(rc == 0, "ping: %s", lmq_proxy_last_error(t->admin));
    json_t *j = json_of(text);
    json_t *cfg = json_incref(json_object_get(j, "config"));
    json_decref(j);
    ck_assert_msg(json_is_object(cfg), "ping has no config object");
    return cfg;
}

/* The state of a device in `list`, or NULL when it is not listed. */
static char *list_state(fixture_t *t, const char *device)
{
    char *text = NULL;
    ck_assert_int_eq(lmq_proxy_list(t->admin, &text), 0);
    json_t *j = json_of(text);
    size_t i;
    json_t *d;
    char *state = NULL;
    json_array_foreach(j, i, d)
    {
        if (strcmp(json_string_value(json_object_get(d, "name")), device) == 0)
            state = strdup(json_string_value(json_object_get(d, "state")));
    }
    json_decref(j);
    return state;
}

static void wait_state(fixture_t *t, const char *device, const char *want)
{
    double end = th_now_ms() + WAIT_MS;
    char *st = NULL;
    while ((st = list_state(t, device)) && strcmp(st, want) != 0 && th_now_ms() < end) {
        free(st);
        usleep(10000);
    }
    ck_assert_msg(st && strcmp(st, want) == 0, "%s is %s, expected %s", device, st ? st : "not listed", want);
    free(st);
}

/* Writes yaml as the config, sends SIGHUP and waits until the daemon has
 * answered it (last_reload_ns moves); returns ping's config object. */
static json_t *reload(fixture_t *t, const char *yaml)
{
    th_write_file(t->config, yaml);
    ck_assert_int_eq(kill(t->pid, SIGHUP), 0);
    double end = th_now_ms() + WAIT_MS;
    for (;;) {
        json_t *cfg = ping_config(t);
        json_t *ns = json_object_get(cfg, "last_reload_ns");
        if (json_is_integer(ns) && json_integer_value(ns) != t->last_reload_ns) {
            t->last_reload_ns = json_integer_value(ns);
            return cfg;
        }
        json_decref(cfg);
        ck_assert_msg(th_now_ms() < end, "labmqd did not answer SIGHUP within %d ms", WAIT_MS);
        usleep(20000);
    }
}

static void assert_applied(json_t *cfg, json_int_t generation)
{
    const char *last = json_string_value(json_object_get(cfg, "last_reload"));
    ck_assert_msg(last && strcmp(last, "ok") == 0, "reload refused: %s", last ? last : "(null)");
    ck_assert_int_eq(json_integer_value(json_object_get(cfg, "generation")), generation);
}

static void assert_refused(json_t *cfg, json_int_t generation, const char *why)
{
    const char *last = json_string_value(json_object_get(cfg, "last_reload"));
    ck_assert_msg(last && strstr(last, why), "expected a refusal naming '%s', last_reload: %s", why,
                  last ? last : "(null)");
    ck_assert_int_eq(json_integer_value(json_object_get(cfg, "generation")), generation);
}

static pid_t read_pid(const char *path)
{
    double end = th_now_ms() + WAIT_MS;
    char *text;
    while (!(text = th_read_file(path)) && th_now_ms() < end)
        usleep(10000);
    ck_assert_msg(text != NULL, "%s never appeared", path);
    pid_t pid = (pid_t)atoi(text);
    free(text);
    ck_assert_int_gt(pid, 0);
    return pid;
}

static bool alive(pid_t pid)
{
    char st = th_proc_state(pid, NULL);
    return st != 0 && st != 'Z';
}

/* The `workers` entry of name: its pid, 0 when not running, -1 when absent. */
static long worker_pid(fixture_t *t, const char *name)
{
    char *text = NULL;
    ck_assert_int_eq(lmq_proxy_workers(t->admin, &text), 0);
    json_t *j = json_of(text);
    size_t i;
    json_t *w;
    long pid = -1;
    json_array_foreach(j, i, w)
    {
        if (strcmp(json_string_value(json_object_get(w, "name")), name) == 0)
            pid = json_is_integer(json_object_get(w, "pid")) ? (long)json_integer_value(json_object_get(w, "pid")) : 0;
    }
    json_decref(j);
    return pid;
}

/* A device's in_flight in `stats`: requests accepted and not yet answered. */
static json_int_t in_flight(fixture_t *t, const char *device)
{
    char *text = NULL;
    ck_assert_int_eq(lmq_proxy_stats(t->admin, &text), 0);
    json_t *j = json_of(text);
    json_t *dev;
    size_t i;
    json_int_t n = -1;
    json_array_foreach(json_object_get(j, "devices"), i, dev)
    {
        if (strcmp(json_string_value(json_object_get(dev, "name")), device) == 0)
            n = json_integer_value(json_object_get(dev, "in_flight"));
    }
    json_decref(j);
    return n;
}

/* The config: endpoints in the file (so that changing them is refused), the
 * untouched psu1 and daq1, then `extra` (devices and workers). */
static void write_config(fixture_t *t, char *buf, size_t size, const char *devices, const char *workers)
{
    snprintf(buf, size,
             "control: %s\n"
             "data: %s\n"
             "stop_grace: 5\n"
             "devices:\n"
             "  - name: psu1\n    driver: sim-psu\n    options: {load_ohms: 50, monitor_hz: 20}\n"
             "  - name: daq1\n    driver: sim-daq\n    options: {block_size: 100}\n"
             "%s"
             "%s%s",
             t->control, t->data, devices, workers[0] ? "workers:\n" : "", workers);
}

static void start(fixture_t *t, const char *yaml)
{
    th_write_file(t->config, yaml);
    char *argv[] = {LABMQD, "--config", t->config, "--log-level", "info", NULL};
    t->pid = th_spawn_to_files(argv, t->log, NULL);
    t->admin = lmq_proxy_new(t->zctx, t->control, NULL);
    lmq_proxy_set_timeout(t->admin, 300);
    double end = th_now_ms() + WAIT_MS;
    char *pong = NULL;
    while (lmq_proxy_ping(t->admin, &pong) != 0) {
        int st;
        ck_assert_msg(waitpid(t->pid, &st, WNOHANG) != t->pid, "labmqd exited at start:\n%s", th_slurp(t->log));
        ck_assert_msg(th_now_ms() < end, "labmqd did not answer");
    }
    free(pong);
    lmq_proxy_set_timeout(t->admin, WAIT_MS);
}

static const char psu2_psu3[] = "  - name: psu2\n    driver: sim-psu\n"
                                "  - name: psu3\n    driver: sim-psu\n    options: {max_voltage: 30}\n";

START_TEST(test_reload_untouched_devices_never_blink)
{
    fixture_t t = {0};
    th_tempdir(t.dir, sizeof t.dir);
    snprintf(t.config, sizeof t.config, "%s/lab.yaml", t.dir);
    snprintf(t.control, sizeof t.control, "ipc://%s/control", t.dir);
    snprintf(t.data, sizeof t.data, "ipc://%s/data", t.dir);
    snprintf(t.log, sizeof t.log, "%s/labmqd.log", t.dir);
    snprintf(t.w1, sizeof t.w1, "%s/w1.pid", t.dir);
    snprintf(t.w1b, sizeof t.w1b, "%s/w1b.pid", t.dir);
    snprintf(t.w2, sizeof t.w2, "%s/w2.pid", t.dir);
    t.zctx = zmq_ctx_new();
    char yaml[4096], workers[1024], devices[1024];

    write_config(&t, yaml, sizeof yaml, psu2_psu3, "");
    start(&t, yaml);
    wait_state(&t, "psu1", "ready");
    wait_state(&t, "daq1", "ready");
    wait_state(&t, "psu3", "ready");
    json_t *cfg = ping_config(&t);
    ck_assert_int_eq(json_integer_value(json_object_get(cfg, "generation")), 1);
    ck_assert_msg(json_is_null(json_object_get(cfg, "last_reload")), "no reload yet, but last_reload is set");
    ck_assert_int_gt(json_integer_value(json_object_get(cfg, "loaded_ns")), 0);
    json_decref(cfg);

    /* The clients of the untouched devices, and the observers. */
    caller_t c_psu1 = {.zctx = t.zctx, .control = t.control, .device = "psu1", .property = "voltage"};
    caller_t c_daq1 = {.zctx = t.zctx, .control = t.control, .device = "daq1", .property = "sample_rate"};
    watcher_t w_wave = {.zctx = t.zctx, .data = t.data, .topic = "daq1/wave"};
    watcher_t w_iv = {.zctx = t.zctx, .data = t.data, .topic = "psu1/iv"};
    watcher_t w_iv3 = {.zctx = t.zctx, .data = t.data, .topic = "psu3/iv"};
    event_log_t events = {.zctx = t.zctx, .data = t.data};
    pthread_mutex_init(&events.mu, NULL);
    ck_assert_int_eq(pthread_create(&events.thread, NULL, events_main, &events), 0);
    ck_assert_int_eq(pthread_create(&w_wave.thread, NULL, watcher_main, &w_wave), 0);
    ck_assert_int_eq(pthread_create(&w_iv.thread, NULL, watcher_main, &w_iv), 0);
    ck_assert_int_eq(pthread_create(&w_iv3.thread, NULL, watcher_main, &w_iv3), 0);
    ck_assert_int_eq(pthread_create(&c_psu1.thread, NULL, caller_main, &c_psu1), 0);
    ck_assert_int_eq(pthread_create(&c_daq1.thread, NULL, caller_main, &c_daq1), 0);
    /* Wait until every observer is live: the streams flow, and a change
     * event (psu2 slowed down, for step 2) has come through. */
    lmq_proxy_t *p2 = lmq_proxy_new(t.zctx, t.control, "psu2");
    lmq_proxy_set_timeout(p2, WAIT_MS);
    lmq_value_t slow = {0};
    lmq_value_set_string(&slow, "delay:3000");
    double end = th_now_ms() + WAIT_MS;
    while (count_events(&events, "psu2", "property", "") == 0 && th_now_ms() < end) {
        ck_assert_int_eq(lmq_proxy_set(p2, "fault", &slow), 0);
        usleep(50000);
    }
    lmq_value_clear(&slow);
    ck_assert_msg(count_events(&events, "psu2", "property", ""), "no change event reached the subscriber");
    while ((!atomic_load(&w_wave.received) || !atomic_load(&w_iv.received) || !atomic_load(&w_iv3.received) ||
            !atomic_load(&c_psu1.ok) || !atomic_load(&c_daq1.ok)) &&
           th_now_ms() < end)
        usleep(10000);
    ck_assert_msg(atomic_load(&w_wave.received) && atomic_load(&w_iv.received) && atomic_load(&w_iv3.received),
                  "streams not flowing");

    /* 1. Added: a device and two workers. */
    unsigned long before_calls = atomic_load(&c_psu1.ok), before_blocks = atomic_load(&w_wave.received);
    snprintf(devices, sizeof devices, "%s  - name: psu4\n    driver: sim-psu\n", psu2_psu3);
    snprintf(workers, sizeof workers,
             "  - name: w1\n    program: %s\n    args: [sleep, %s]\n"
             "  - name: w2\n    program: %s\n    args: [sleep, %s]\n",
             CHILD, t.w1, CHILD, t.w2);
    write_config(&t, yaml, sizeof yaml, devices, workers);
    cfg = reload(&t, yaml);
    assert_applied(cfg, 2);
    json_decref(cfg);
    wait_state(&t, "psu4", "ready");
    lmq_proxy_t *p4 = lmq_proxy_new(t.zctx, t.control, "psu4");
    lmq_proxy_set_timeout(p4, WAIT_MS);
    double v = -1;
    ck_assert_int_eq(lmq_proxy_get_double(p4, "voltage", &v), 0);
    pid_t w1 = read_pid(t.w1), w2 = read_pid(t.w2);
    ck_assert_int_eq(worker_pid(&t, "w1"), w1);
    ck_assert_int_eq(worker_pid(&t, "w2"), w2);

    /* 2. Removed, with requests queued: psu2 takes 3 s per request. */
    uint64_t ids[5];
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(lmq_proxy_send_get(p2, "voltage", &ids[i]), 0);
    /* Accepted by the daemon before the reload (not still on their way). */
    end = th_now_ms() + WAIT_MS;
    while (in_flight(&t, "psu2") < 5 && th_now_ms() < end)
        usleep(5000);
    ck_assert_int_eq(in_flight(&t, "psu2"), 5);
    snprintf(devices, sizeof devices,
             "  - name: psu3\n    driver: sim-psu\n    options: {max_voltage: 30}\n"
             "  - name: psu4\n    driver: sim-psu\n");
    snprintf(workers, sizeof workers, "  - name: w1\n    program: %s\n    args: [sleep, %s]\n", CHILD, t.w1);
    write_config(&t, yaml, sizeof yaml, devices, workers);
    cfg = reload(&t, yaml);
    assert_applied(cfg, 3);
    json_decref(cfg);
    /* The running request is cut short by the stop (the simulated delay
     * ends with CLOSED too); those still queued are answered by the broker. */
    int removed = 0;
    for (int i = 0; i < 5; i++) {
        uint64_t id = 0;
        int rc = lmq_proxy_recv(p2, &id, NULL);
        ck_assert_msg(rc == LMQ_ECLOSED, "a request to the removed psu2: %s (%s)", lmq_status_name(rc),
                      lmq_proxy_last_error(p2));
        removed += strstr(lmq_proxy_last_error(p2), "psu2: removed from the configuration by a reload") != NULL;
    }
    ck_assert_msg(removed >= 1, "no queued request to the removed device was answered as removed");
    ck_assert_int_eq(lmq_proxy_get_double(p2, "voltage", &v), LMQ_ENOTFOUND);
    char *st = list_state(&t, "psu2");
    ck_assert_msg(st == NULL, "psu2 still listed (%s)", st);
    ck_assert_int_ge(count_events(&events, "psu2", "state", "stopped"), 1);
    /* The reload returned once the removed worker was gone. */
    ck_assert_msg(!alive(w2), "worker w2 (pid %d) still runs", (int)w2);
    ck_assert_int_eq(worker_pid(&t, "w2"), -1);
    ck_assert_int_eq(worker_pid(&t, "w1"), w1);

    /* 3. Reconfigured: psu3 gets a lower voltage limit, w1 other arguments. */
    lmq_proxy_t *p3 = lmq_proxy_new(t.zctx, t.control, "psu3");
    lmq_proxy_set_timeout(p3, WAIT_MS);
    lmq_value_t twenty = lmq_float(20);
    ck_assert_int_eq(lmq_proxy_set(p3, "voltage", &twenty), 0);
    snprintf(devices, sizeof devices,
             "  - name: psu3\n    driver: sim-psu\n    options: {max_voltage: 12}\n"
             "  - name: psu4\n    driver: sim-psu\n");
    snprintf(workers, sizeof workers, "  - name: w1\n    program: %s\n    args: [sleep, %s]\n", CHILD, t.w1b);
    write_config(&t, yaml, sizeof yaml, devices, workers);
    cfg = reload(&t, yaml);
    assert_applied(cfg, 4);
    json_decref(cfg);
    /* A new instance: the setpoint is back to 0, 20 V is beyond the new limit. */
    ck_assert_int_eq(lmq_proxy_get_double(p3, "voltage", &v), 0);
    ck_assert(v == 0);
    ck_assert_int_ne(lmq_proxy_set(p3, "voltage", &twenty), 0);
    ck_assert_int_ge(count_events(&events, "psu3", "state", "stopped"), 1);
    pid_t w1b = read_pid(t.w1b);
    ck_assert_int_ne(w1b, w1);
    ck_assert_msg(!alive(w1), "the old w1 (pid %d) still runs", (int)w1);
    ck_assert_int_eq(worker_pid(&t, "w1"), w1b);
    /* The new psu3 publishes under a new epoch. */
    unsigned long iv3 = atomic_load(&w_iv3.received);
    end = th_now_ms() + WAIT_MS;
    while (atomic_load(&w_iv3.received) < iv3 + 3 && th_now_ms() < end)
        usleep(10000);

    /* 4. Broken configurations: each refused as a whole, nothing changes.
     * Each also drops psu4, which must survive. */
    char good_devices[1024];
    snprintf(good_devices, sizeof good_devices, "%s", devices);
    const char *const bad_devices[][2] = {
        {"  - name: psu3\n    driver: sim-psu\n    options: {max_voltage: 12}\n  - name: [unclosed\n", "syntax"},
        {"  - name: psu5\n    driver: no-such-driver\n", "no-such-driver"},
        {"  - name: psu1\n    driver: sim-psu\n", "duplicate"},
        {"  - name: psu5\n    driver: scpi\n    connection: tcp:127.0.0.1:1\n"
         "    options: {model: no-such-model.yaml}\n",
         "no-such-model.yaml"},
    };
    for (size_t i = 0; i < sizeof bad_devices / sizeof *bad_devices; i++) {
        write_config(&t, yaml, sizeof yaml, bad_devices[i][0], workers);
        cfg = reload(&t, yaml);
        assert_refused(cfg, 4, bad_devices[i][1]);
        json_decref(cfg);
    }
    /* A key that cannot change live. */
    char moved[200];
    snprintf(moved, sizeof moved, "ipc://%s/data2", t.dir);
    write_config(&t, yaml, sizeof yaml, good_devices, workers);
    char *at = strstr(yaml, t.data);
    ck_assert_ptr_nonnull(at);
    char yaml2[4200];
    snprintf(yaml2, sizeof yaml2, "%.*s%s%s", (int)(at - yaml), yaml, moved, at + strlen(t.data));
    cfg = reload(&t, yaml2);
    assert_refused(cfg, 4, "data: the data endpoint cannot change");
    json_decref(cfg);
    ck_assert_int_eq(lmq_proxy_get_double(p4, "voltage", &v), 0);
    ck_assert_int_eq(lmq_proxy_get_double(p3, "voltage", &v), 0);
    ck_assert_int_eq(worker_pid(&t, "w1"), w1b);
    char *logtext = th_slurp(t.log);
    ck_assert_msg(strstr(logtext, "reload refused") && strstr(logtext, "no-such-driver"), "%s", logtext);
    free(logtext);
    /* `labmq ping` and `labmq stats` show it too. */
    const char *cmds[] = {"ping", "stats"};
    for (size_t k = 0; k < 2; k++) {
        char out[160];
        snprintf(out, sizeof out, "%s/cli.txt", t.dir);
        char *argv[] = {CLI, "--endpoint", t.control, (char *)cmds[k], NULL};
        int status;
        ck_assert_int_eq(th_wait_exit(th_spawn_to_files(argv, out, NULL), WAIT_MS, &status), 0);
        char *text = th_slurp(out);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0 && strstr(text, "generation 4") &&
                          strstr(text, "last reload REFUSED: data: the data endpoint cannot change"),
                      "labmq %s:\n%s", cmds[k], text);
        free(text);
    }

    /* The untouched devices went on being served through all of it. */
    end = th_now_ms() + WAIT_MS;
    while ((atomic_load(&c_psu1.ok) <= before_calls || atomic_load(&w_wave.received) <= before_blocks) &&
           th_now_ms() < end)
        usleep(10000);
    atomic_store(&c_psu1.stop, true);
    atomic_store(&c_daq1.stop, true);
    atomic_store(&w_wave.stop, true);
    atomic_store(&w_iv.stop, true);
    atomic_store(&w_iv3.stop, true);
    atomic_store(&events.stop, true);
    pthread_join(c_psu1.thread, NULL);
    pthread_join(c_daq1.thread, NULL);
    pthread_join(w_wave.thread, NULL);
    pthread_join(w_iv.thread, NULL);
    pthread_join(w_iv3.thread, NULL);
    pthread_join(events.thread, NULL);
    ck_assert_msg(atomic_load(&c_psu1.failed) == 0, "psu1: %lu calls failed, first: %s", atomic_load(&c_psu1.failed),
                  c_psu1.first_error);
    ck_assert_msg(atomic_load(&c_daq1.failed) == 0, "daq1: %lu calls failed, first: %s", atomic_load(&c_daq1.failed),
                  c_daq1.first_error);
    ck_assert_uint_gt(atomic_load(&c_psu1.ok), before_calls);
    ck_assert_uint_gt(atomic_load(&w_wave.received), before_blocks);
    ck_assert_msg(w_wave.lost == 0 && w_wave.restarts == 0 && w_wave.first_epoch == w_wave.last_epoch,
                  "daq1/wave: %llu lost, %llu restarts", (unsigned long long)w_wave.lost,
                  (unsigned long long)w_wave.restarts);
    ck_assert_msg(w_iv.lost == 0 && w_iv.restarts == 0 && w_iv.first_epoch == w_iv.last_epoch,
                  "psu1/iv: %llu lost, %llu restarts", (unsigned long long)w_iv.lost,
                  (unsigned long long)w_iv.restarts);
    ck_assert_msg(w_iv3.first_epoch != w_iv3.last_epoch && w_iv3.restarts >= 1, "the reconfigured psu3 kept its epoch");
    ck_assert_uint_eq(count_events(&events, "psu1", "", ""), 0);
    ck_assert_uint_eq(count_events(&events, "daq1", "", ""), 0);
    ck_assert_uint_ge(count_events(&events, "psu4", "state", "ready"), 1);
    ck_assert_uint_ge(count_events(&events, "psu3", "state", "ready"), 1);
    ck_assert_uint_eq(events.lost, 0);
    /* psu1's stats were kept: every call the client made is counted. */
    char *text = NULL;
    ck_assert_int_eq(lmq_proxy_stats(t.admin, &text), 0);
    json_t *stats = json_of(text);
    json_t *dev;
    size_t i;
    json_int_t psu1_calls = -1;
    json_array_foreach(json_object_get(stats, "devices"), i, dev)
    {
        if (strcmp(json_string_value(json_object_get(dev, "name")), "psu1") == 0)
            psu1_calls = json_integer_value(json_object_get(dev, "calls"));
    }
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(stats, "config"), "generation")), 4);
    json_decref(stats);
    ck_assert_msg(psu1_calls >= (json_int_t)atomic_load(&c_psu1.ok), "psu1 stats count %lld calls, the client made %lu",
                  (long long)psu1_calls, atomic_load(&c_psu1.ok));

    lmq_proxy_destroy(&p2);
    lmq_proxy_destroy(&p3);
    lmq_proxy_destroy(&p4);
    lmq_proxy_destroy(&t.admin);
    zmq_ctx_term(t.zctx);
    pthread_mutex_destroy(&events.mu);
    ck_assert_int_eq(kill(t.pid, SIGTERM), 0);
    int status;
    ck_assert_int_eq(th_wait_exit(t.pid, WAIT_MS, &status), 0);
    logtext = th_slurp(t.log);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status 0x%x:\n%s", (unsigned)status, logtext);
    ck_assert_msg(!alive(w1b), "worker w1 outlived labmqd");
    ck_assert_msg(strstr(logtext, "Sanitizer") == NULL, "%s", logtext);
    free(logtext);
    th_rmtree(t.dir);
}
END_TEST

/* A device stuck in its driver (a plain 60 s block, as vendor code does) is
 * reconfigured, then removed before its old instance has closed (the
 * replacement waiting for it is dropped without ever running), then added
 * back (the new instance waits for the old one, then opens): every request
 * is answered, the old instance is abandoned after the stop grace and
 * reported, the other device is served throughout, and labmqd, which cannot
 * wait for that thread, exits with status 3 when stopped. */
START_TEST(test_reload_stuck_device_abandoned)
{
    fixture_t t = {0};
    th_tempdir(t.dir, sizeof t.dir);
    snprintf(t.config, sizeof t.config, "%s/lab.yaml", t.dir);
    snprintf(t.control, sizeof t.control, "ipc://%s/control", t.dir);
    snprintf(t.data, sizeof t.data, "ipc://%s/data", t.dir);
    snprintf(t.log, sizeof t.log, "%s/labmqd.log", t.dir);
    t.zctx = zmq_ctx_new();
    char yaml[2048];
    const char *fmt = "control: %s\ndata: %s\nstop_grace: 5\ndevices:\n"
                      "  - name: psu1\n    driver: sim-psu\n"
                      "%s";
    char stuck[512];
    snprintf(stuck, sizeof stuck, "  - name: stuck\n    driver: %s\n    options: {open_ms: %%d}\n", STUCK_DRIVER);
    char dev[600];
    snprintf(dev, sizeof dev, stuck, 0);
    snprintf(yaml, sizeof yaml, fmt, t.control, t.data, dev);
    start(&t, yaml);
    wait_state(&t, "stuck", "ready");
    lmq_proxy_t *ps = lmq_proxy_new(t.zctx, t.control, "stuck"), *p1 = lmq_proxy_new(t.zctx, t.control, "psu1");
    lmq_proxy_set_timeout(ps, WAIT_MS);
    lmq_proxy_set_timeout(p1, WAIT_MS);
    uint64_t slow, fast_old, fast_new;
    ck_assert_int_eq(lmq_proxy_send_get(ps, "slow", &slow), 0);
    ck_assert_int_eq(lmq_proxy_send_get(ps, "fast", &fast_old), 0);
    double end = th_now_ms() + WAIT_MS;
    while (in_flight(&t, "stuck") < 2 && th_now_ms() < end)
        usleep(5000);
    ck_assert_int_eq(in_flight(&t, "stuck"), 2);

    snprintf(dev, sizeof dev, stuck, 1);
    snprintf(yaml, sizeof yaml, fmt, t.control, t.data, dev);
    json_t *cfg = reload(&t, yaml);
    assert_applied(cfg, 2);
    json_decref(cfg);
    /* The new instance waits for the old one to let go of the instrument. */
    char *st = list_state(&t, "stuck");
    ck_assert_str_eq(st, "opening");
    free(st);
    ck_assert_int_eq(lmq_proxy_send_get(ps, "fast", &fast_new), 0);
    end = th_now_ms() + WAIT_MS;
    while (in_flight(&t, "stuck") < 1 && th_now_ms() < end)
        usleep(5000);

    snprintf(yaml, sizeof yaml, fmt, t.control, t.data, "");
    cfg = reload(&t, yaml);
    assert_applied(cfg, 3);
    json_decref(cfg);
    double v;
    ck_assert_int_eq(lmq_proxy_get_double(p1, "voltage", &v), 0);
    lmq_proxy_t *again = lmq_proxy_new(t.zctx, t.control, "stuck");
    lmq_proxy_set_timeout(again, WAIT_MS);
    ck_assert_int_eq(lmq_proxy_get_double(again, "fast", &v), LMQ_ENOTFOUND);

    /* Back again, well within the 5 s grace (a reload takes milliseconds):
     * the old instance still holds the instrument, so the new one waits,
     * then opens and answers. */
    snprintf(dev, sizeof dev, stuck, 0);
    snprintf(yaml, sizeof yaml, fmt, t.control, t.data, dev);
    cfg = reload(&t, yaml);
    assert_applied(cfg, 4);
    json_decref(cfg);
    st = list_state(&t, "stuck");
    ck_assert_msg(strcmp(st, "opening") == 0, "stuck is %s:\n%s", st, th_slurp(t.log));
    free(st);
    ck_assert_int_eq(lmq_proxy_get_double(again, "fast", &v), 0);
    ck_assert(v == 2);
    lmq_proxy_destroy(&again);
    int answered = 0;
    bool seen[3] = {false, false, false};
    while (answered < 3) {
        uint64_t id = 0;
        int rc = lmq_proxy_recv(ps, &id, NULL);
        ck_assert_msg(rc == LMQ_ECLOSED, "%s: %s", lmq_status_name(rc), lmq_proxy_last_error(ps));
        const char *why = lmq_proxy_last_error(ps);
        if (id == slow) {
            ck_assert_msg(strstr(why, "stuck in this request; its outcome is unknown"), "%s", why);
            seen[0] = true;
        } else if (id == fast_old) { /* the old instance's, which the added one replaces */
            ck_assert_msg(strstr(why, "stuck: reconfigured by a reload"), "%s", why);
            seen[1] = true;
        } else if (id == fast_new) { /* queued for the replacement dropped before it ran */
            ck_assert_msg(strstr(why, "stuck: removed from the configuration by a reload"), "%s", why);
            seen[2] = true;
        }
        answered++;
    }
    ck_assert(seen[0] && seen[1] && seen[2]);
    ck_assert_int_eq(lmq_proxy_get_double(p1, "voltage", &v), 0);
    char *logtext = th_slurp(t.log);
    ck_assert_msg(strstr(logtext, "abandoned") && strstr(logtext, "get slow"), "%s", logtext);
    free(logtext);

    lmq_proxy_destroy(&ps);
    lmq_proxy_destroy(&p1);
    lmq_proxy_destroy(&t.admin);
    zmq_ctx_term(t.zctx);
    ck_assert_int_eq(kill(t.pid, SIGTERM), 0);
    int status;
    ck_assert_int_eq(th_wait_exit(t.pid, WAIT_MS, &status), 0);
    logtext = th_slurp(t.log);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 3, "status 0x%x:\n%s", (unsigned)status, logtext);
    ck_assert_msg(strstr(logtext, "removed by a reload stayed stuck"), "%s", logtext);
    free(logtext);
    th_rmtree(t.dir);
}
END_TEST

/* The library call an embedding program uses: the comparison is of parsed
 * values (50 and 50.0, an option left at its default and one given as it),
 * an unchanged device keeps its stats, the endpoints cannot move, a daemon
 * that is not running cannot be reloaded, and *next is consumed every time. */
START_TEST(test_reload_in_process)
{
    void *ctx = zmq_ctx_new();
    const lmq_driver_t *psu = lmq_driver_find("sim-psu");
    ck_assert_ptr_nonnull(psu);
    lmq_daemon_t *d = lmq_daemon_new(ctx, "inproc://lab", "inproc://lab-data", NULL);
    const char *const opts[] = {"load_ohms", "50", NULL};
    ck_assert_int_eq(lmq_daemon_add(d, "psu1", psu, "", opts), 0);
    lmq_daemon_t *next = lmq_daemon_new(ctx, "inproc://lab", "inproc://lab-data", NULL);
    ck_assert_int_eq(lmq_daemon_reload(d, &next), LMQ_EARG); /* not started */
    ck_assert_ptr_null(next);
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, WAIT_MS), 0);
    lmq_proxy_t *p = lmq_proxy_new(ctx, "inproc://lab", "psu1");
    lmq_proxy_set_timeout(p, WAIT_MS);
    double v;
    ck_assert_int_eq(lmq_proxy_get_double(p, "voltage", &v), 0);

    /* The same configuration, written differently, plus a new device. */
    next = lmq_daemon_new(ctx, "inproc://lab", "inproc://lab-data", NULL);
    const char *const same[] = {"max_voltage", "30", "load_ohms", "50.0", NULL};
    ck_assert_int_eq(lmq_daemon_add(next, "psu1", psu, "", same), 0);
    ck_assert_int_eq(lmq_daemon_add(next, "psu2", psu, "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_reload(d, &next), 0);
    ck_assert_ptr_null(next);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, WAIT_MS), 0);
    lmq_proxy_t *admin = lmq_proxy_new(ctx, "inproc://lab", NULL);
    lmq_proxy_set_timeout(admin, WAIT_MS);
    char *text = NULL;
    ck_assert_int_eq(lmq_proxy_stats(admin, &text), 0);
    json_t *stats = json_loads(text, 0, NULL);
    free(text);
    json_t *devs = json_object_get(stats, "devices");
    ck_assert_uint_eq(json_array_size(devs), 2);
    json_t *d0 = json_array_get(devs, 0);
    ck_assert_str_eq(json_string_value(json_object_get(d0, "name")), "psu1");
    ck_assert_int_eq(json_integer_value(json_object_get(d0, "calls")), 1); /* the same device, its stats kept */
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(stats, "config"), "generation")), 2);
    json_decref(stats);

    /* Endpoints cannot move: refused, nothing changed, the reason recorded. */
    next = lmq_daemon_new(ctx, "inproc://elsewhere", "inproc://lab-data", NULL);
    ck_assert_int_eq(lmq_daemon_reload(d, &next), LMQ_ECONFIG);
    ck_assert_ptr_null(next);
    ck_assert_msg(strstr(lmq_daemon_last_error(d), "control: the control endpoint cannot change"), "%s",
                  lmq_daemon_last_error(d));
    ck_assert_int_eq(lmq_proxy_ping(admin, &text), 0);
    json_t *pong = json_loads(text, 0, NULL);
    free(text);
    json_t *cfg = json_object_get(pong, "config");
    ck_assert_int_eq(json_integer_value(json_object_get(cfg, "generation")), 2);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(cfg, "last_reload")), "control"));
    json_decref(pong);
    ck_assert_int_eq(lmq_proxy_get_double(p, "voltage", &v), 0);

    /* Security settings cannot change live either (keys would need every
     * connection to be made again). */
    next = lmq_daemon_new(ctx, "inproc://lab", "inproc://lab-data", NULL);
    lmq_daemon_set_insecure(next, true);
    ck_assert_int_eq(lmq_daemon_reload(d, &next), LMQ_ECONFIG);
    ck_assert_ptr_null(next);
    ck_assert_msg(strstr(lmq_daemon_last_error(d), "security: "), "%s", lmq_daemon_last_error(d));
    ck_assert_int_eq(lmq_proxy_get_double(p, "voltage", &v), 0);

    /* A refusal recorded by the program itself (a file that did not load). */
    lmq_daemon_reload_refused(d, "lab.yaml:3:1: syntax error");
    ck_assert_int_eq(lmq_proxy_ping(admin, &text), 0);
    ck_assert_msg(strstr(text, "lab.yaml:3:1: syntax error"), "%s", text);
    free(text);

    lmq_proxy_destroy(&p);
    lmq_proxy_destroy(&admin);
    ck_assert_int_eq(lmq_daemon_stop(d), 0);
    lmq_daemon_destroy(&d);
    zmq_ctx_term(ctx);
}
END_TEST

/* A lock follows its device's name through a reload that moves the device
 * in the daemon's table (locks.c keeps them by position); a removed
 * device's lock ends with it. */
START_TEST(test_reload_keeps_locks_by_name)
{
    void *ctx = zmq_ctx_new();
    const lmq_driver_t *psu = lmq_driver_find("sim-psu");
    lmq_daemon_t *d = lmq_daemon_new(ctx, "inproc://lab", "inproc://lab-data", NULL);
    ck_assert_int_eq(lmq_daemon_add(d, "psuA", psu, "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_add(d, "psuB", psu, "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_add(d, "psuC", psu, "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, WAIT_MS), 0);
    lmq_proxy_t *holder = lmq_proxy_new(ctx, "inproc://lab", "psuC");
    lmq_proxy_t *other = lmq_proxy_new(ctx, "inproc://lab", "psuC");
    lmq_proxy_t *otherB = lmq_proxy_new(ctx, "inproc://lab", "psuB");
    lmq_proxy_set_timeout(holder, WAIT_MS);
    lmq_proxy_set_timeout(other, WAIT_MS);
    lmq_proxy_set_timeout(otherB, WAIT_MS);
    const char *devs[] = {"psuA", "psuC"};
    ck_assert_msg(lmq_proxy_lock(holder, devs, 2, 60000) == 0, "%s", lmq_proxy_last_error(holder));

    lmq_daemon_t *next = lmq_daemon_new(ctx, "inproc://lab", "inproc://lab-data", NULL);
    ck_assert_int_eq(lmq_daemon_add(next, "psuB", psu, "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_add(next, "psuC", psu, "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_reload(d, &next), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, WAIT_MS), 0);

    lmq_value_t v = lmq_float(1.0);
    ck_assert_int_eq(lmq_proxy_set(other, "voltage", &v), LMQ_ELOCKED); /* psuC: now at index 1, still locked */
    ck_assert_msg(lmq_proxy_set(otherB, "voltage", &v) == 0, "%s", lmq_proxy_last_error(otherB)); /* psuB: never locked */
    ck_assert_msg(lmq_proxy_set(holder, "voltage", &v) == 0, "%s", lmq_proxy_last_error(holder));

    /* psuA comes back: a new device, unlocked. */
    next = lmq_daemon_new(ctx, "inproc://lab", "inproc://lab-data", NULL);
    ck_assert_int_eq(lmq_daemon_add(next, "psuA", psu, "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_add(next, "psuB", psu, "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_add(next, "psuC", psu, "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_reload(d, &next), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, WAIT_MS), 0);
    lmq_proxy_t *otherA = lmq_proxy_new(ctx, "inproc://lab", "psuA");
    lmq_proxy_set_timeout(otherA, WAIT_MS);
    ck_assert_msg(lmq_proxy_set(otherA, "voltage", &v) == 0, "%s", lmq_proxy_last_error(otherA));
    ck_assert_int_eq(lmq_proxy_set(other, "voltage", &v), LMQ_ELOCKED);

    lmq_proxy_destroy(&holder);
    lmq_proxy_destroy(&other);
    lmq_proxy_destroy(&otherA);
    lmq_proxy_destroy(&otherB);
    ck_assert_int_eq(lmq_daemon_stop(d), 0);
    lmq_daemon_destroy(&d);
    zmq_ctx_term(ctx);
}
END_TEST

static Suite *reload_suite(void)
{
    Suite *s = suite_create("reload");
    TCase *tc = tcase_create("sighup");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_reload_untouched_devices_never_blink);
    tcase_add_test(tc, test_reload_stuck_device_abandoned);
    tcase_add_test(tc, test_reload_in_process);
    tcase_add_test(tc, test_reload_keeps_locks_by_name);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return th_run_suite(reload_suite()); }
