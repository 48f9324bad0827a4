/* Change events (core/src/events.c and the device thread's emit_event): a
 * client's set reaches every other client as an event with the new value; a
 * device's disconnect and reconnect arrive as state events, in order; a
 * restore announces what it wrote back. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"

#define CTL "inproc://ev-ctl"
#define DATA "inproc://ev-data"

typedef struct lab {
    void *zctx;
    lmq_daemon_t *d;
} lab_t;

static void lab_start(lab_t *lab, bool restore)
{
    lab->zctx = zmq_ctx_new();
    lab->d = lmq_daemon_new(lab->zctx, CTL, DATA, NULL);
    const char *opts[] = {"slew_v_per_s", "0", "monitor_hz", "0", NULL};
    ck_assert_int_eq(lmq_daemon_add(lab->d, "psu1", lmq_driver_find("sim-psu"), "", opts), 0);
    ck_assert_int_eq(lmq_daemon_add(lab->d, "psu10", lmq_driver_find("sim-psu"), "", opts), 0);
    ck_assert_int_eq(lmq_daemon_set_restore(lab->d, "psu1", restore), 0);
    ck_assert_int_eq(lmq_daemon_start(lab->d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(lab->d, 20000), 0);
}

static void lab_stop(lab_t *lab)
{
    lmq_daemon_destroy(&lab->d);
    zmq_ctx_term(lab->zctx);
}

/* The next event that belongs to the test: a device's first "opened" may
 * come after we subscribed, on a loaded machine. */
static lmq_event_t *next(lmq_events_t *e)
{
    for (;;) {
        lmq_event_t *ev = NULL;
        int rc = lmq_events_recv(e, &ev, 5000);
        ck_assert_msg(rc == 0, "no event: %s %s", lmq_status_name(rc), lmq_events_last_error(e));
        if (strcmp(lmq_event_cause(ev), "opened") != 0)
            return ev;
        lmq_event_destroy(&ev);
    }
}

/* Waits until the subscription has reached the daemon: sets psu1's fault
 * knob (to what it is) until that event arrives, then drops the events it
 * caused. A fixed sleep would be too short on a loaded machine. */
static void sync_events(lmq_events_t *e, lmq_proxy_t *psu1)
{
    lmq_value_t none = {0};
    lmq_value_set_string(&none, "none");
    double t0 = th_now_ms();
    for (bool seen = false; !seen;) {
        ck_assert_msg(th_now_ms() - t0 < 20000, "the subscription never reached the daemon");
        ck_assert_int_eq(lmq_proxy_set(psu1, "fault", &none), 0);
        lmq_event_t *ev = NULL;
        while (lmq_events_recv(e, &ev, 100) == 0) {
            seen |= !strcmp(lmq_event_name(ev), "fault");
            lmq_event_destroy(&ev);
        }
    }
    lmq_value_clear(&none);
}

START_TEST(set_is_seen_by_another_client)
{
    lab_t lab;
    lab_start(&lab, false);
    lmq_events_t *e = lmq_events_new(lab.zctx, DATA, "psu1");
    ck_assert_ptr_nonnull(e);
    lmq_proxy_t *a = lmq_proxy_new(lab.zctx, CTL, "psu1"), *other = lmq_proxy_new(lab.zctx, CTL, "psu10");
    sync_events(e, a);
    lmq_value_t v = lmq_float(2.5);
    ck_assert_int_eq(lmq_proxy_set(other, "voltage", &v), 0); /* psu10: not ours, never delivered */
    ck_assert_int_eq(lmq_proxy_set(a, "voltage", &v), 0);
    lmq_event_t *ev = next(e);
    ck_assert_str_eq(lmq_event_device(ev), "psu1");
    ck_assert_str_eq(lmq_event_kind(ev), "property");
    ck_assert_str_eq(lmq_event_name(ev), "voltage");
    ck_assert_str_eq(lmq_event_cause(ev), "set");
    ck_assert_int_eq(lmq_event_value(ev)->type, LMQ_FLOAT);
    ck_assert_double_eq(lmq_event_value(ev)->u.f, 2.5);
    uint64_t seq = lmq_event_seq(ev);
    lmq_event_destroy(&ev);
    /* a refused set changes nothing, and says nothing */
    lmq_value_t bad = lmq_float(1000);
    ck_assert_int_eq(lmq_proxy_set(a, "voltage", &bad), LMQ_ERANGE);
    lmq_value_t on = lmq_bool(true);
    ck_assert_int_eq(lmq_proxy_set(a, "output", &on), 0);
    ev = next(e);
    ck_assert_str_eq(lmq_event_name(ev), "output");
    ck_assert_uint_eq(lmq_event_seq(ev), seq + 1);
    ck_assert_uint_eq(lmq_event_lost_before(ev), 0);
    lmq_event_destroy(&ev);
    ck_assert_int_eq(lmq_events_recv(e, &ev, 200), LMQ_ETIMEOUT);
    lmq_proxy_destroy(&a);
    lmq_proxy_destroy(&other);
    lmq_events_destroy(&e);
    lab_stop(&lab);
}
END_TEST

START_TEST(disconnect_reconnect_restore_in_order)
{
    lab_t lab;
    lab_start(&lab, true);
    lmq_events_t *e = lmq_events_new(lab.zctx, DATA, NULL); /* every device */
    lmq_proxy_t *a = lmq_proxy_new(lab.zctx, CTL, "psu1");
    sync_events(e, a);
    lmq_value_t v = lmq_float(1.5), s = {0};
    ck_assert_int_eq(lmq_proxy_set(a, "voltage", &v), 0);
    lmq_value_set_string(&s, "disconnect:300");
    ck_assert_int_eq(lmq_proxy_set(a, "fault", &s), 0);
    lmq_value_clear(&s);
    const char *want[][3] = {
        {"property", "voltage", "set"},   {"property", "fault", "set"},     {"state", "disconnected", "lost"},
        {"property", "voltage", "restore"}, {"state", "ready", "restored"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        lmq_event_t *ev = next(e);
        ck_assert_str_eq(lmq_event_device(ev), "psu1");
        const char *what = !strcmp(lmq_event_kind(ev), "state") ? lmq_event_state(ev) : lmq_event_name(ev);
        ck_assert_msg(!strcmp(lmq_event_kind(ev), want[i][0]) && !strcmp(what, want[i][1]) &&
                          !strcmp(lmq_event_cause(ev), want[i][2]),
                      "event %zu: %s %s (%s), want %s %s (%s)", i, lmq_event_kind(ev), what, lmq_event_cause(ev),
                      want[i][0], want[i][1], want[i][2]);
        if (i == 2)
            ck_assert_ptr_nonnull(strstr(lmq_event_error(ev), "disconnected"));
        if (i == 3)
            ck_assert_double_eq(lmq_event_value(ev)->u.f, 1.5);
        lmq_event_destroy(&ev);
    }
    ck_assert_uint_eq(lmq_events_lost(e), 0);
    double got;
    ck_assert_int_eq(lmq_proxy_get_double(a, "voltage", &got), 0);
    ck_assert_double_eq(got, 1.5);
    lmq_proxy_destroy(&a);
    lmq_events_destroy(&e);
    lab_stop(&lab);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("events");
    TCase *tc = tcase_create("events");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, set_is_seen_by_another_client);
    tcase_add_test(tc, disconnect_reconnect_restore_in_order);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
