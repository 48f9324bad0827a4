/* Liveness (protocol 2.5): a proxy notices a labmqd that is stopped
 * (SIGSTOP) or killed mid-call within the heartbeat timeout + 1 s, long
 * before a call timeout of 20 s, and says what it knows: a get failed
 * UNREACHABLE, a call or set has an unknown outcome, never a guess. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"
#include "proto.h"

#define CALL_TIMEOUT_MS 20000
/* the bound the protocol promises, plus room for a loaded machine */
#define NOTICE_MS (LMQ__HEARTBEAT_IVL_MS + LMQ__HEARTBEAT_TIMEOUT_MS + 1000 + 1500)

static const char *lab_yaml = "devices:\n  - name: psu1\n    driver: sim-psu\n";

START_TEST(stopped_daemon_noticed_by_heartbeats)
{
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = lmq_proxy_new(ctx, d.control, "psu1");
    lmq_proxy_set_timeout(p, CALL_TIMEOUT_MS);
    lmq_value_t v = {0}, one = lmq_float(1.0);
    ck_assert_int_eq(lmq_proxy_get(p, "voltage", &v), 0);
    th_stop_process(d.pid);
    double t0 = th_now_ms();
    int rc = lmq_proxy_get(p, "voltage", &v);
    double took = th_now_ms() - t0;
    ck_assert_msg(rc == LMQ_EUNREACH, "%s: %s", lmq_status_name(rc), lmq_proxy_last_error(p));
    ck_assert_msg(strstr(lmq_proxy_last_error(p), "daemon not responding"), "%s", lmq_proxy_last_error(p));
    ck_assert_msg(took < NOTICE_MS, "noticed after %.0f ms", took);
    /* still stopped: a set cannot even be sent (no live connection) */
    t0 = th_now_ms();
    lmq_proxy_set_timeout(p, 1000);
    rc = lmq_proxy_set(p, "voltage", &one);
    ck_assert_msg(rc == LMQ_EUNREACH, "%s: %s", lmq_status_name(rc), lmq_proxy_last_error(p));
    ck_assert_int_eq(kill(d.pid, SIGCONT), 0);
    /* back: the same proxy works again */
    lmq_proxy_set_timeout(p, CALL_TIMEOUT_MS);
    ck_assert_msg(lmq_proxy_get(p, "voltage", &v) == 0, "%s", lmq_proxy_last_error(p));
    /* a set in flight when the daemon stops (each request now takes 1 s
     * longer; the stop comes 0.3 s into it): its outcome is unknown */
    lmq_value_t delay = {0};
    lmq_value_set_string(&delay, "delay:1000");
    ck_assert_int_eq(lmq_proxy_set(p, "fault", &delay), 0);
    lmq_value_clear(&delay);
    char pidtext[32], out[256];
    snprintf(pidtext, sizeof pidtext, "%d", (int)d.pid);
    snprintf(out, sizeof out, "%s/stopper.out", d.dir);
    char *argv[] = {"/bin/sh", "-c", "sleep 0.3; kill -STOP \"$1\"", "sh", pidtext, NULL};
    pid_t stopper = th_spawn_to_files(argv, out, NULL);
    t0 = th_now_ms();
    rc = lmq_proxy_set(p, "voltage", &one);
    took = th_now_ms() - t0;
    int status;
    th_wait_exit(stopper, 5000, &status);
    ck_assert_msg(rc == LMQ_EOUTCOME, "%s: %s", lmq_status_name(rc), lmq_proxy_last_error(p));
    ck_assert_msg(strstr(lmq_proxy_last_error(p), "outcome is unknown"), "%s", lmq_proxy_last_error(p));
    ck_assert_msg(took < 300 + NOTICE_MS, "noticed after %.0f ms", took);
    kill(d.pid, SIGCONT);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

START_TEST(killed_daemon_noticed_at_once)
{
    th_daemon_t d;
    th_daemon_start(&d, lab_yaml);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = lmq_proxy_new(ctx, d.control, "psu1");
    lmq_proxy_set_timeout(p, CALL_TIMEOUT_MS);
    lmq_value_t delay = {0};
    lmq_value_set_string(&delay, "delay:2000");
    ck_assert_int_eq(lmq_proxy_set(p, "fault", &delay), 0);
    lmq_value_clear(&delay);
    char pidtext[32], out[256];
    snprintf(pidtext, sizeof pidtext, "%d", (int)d.pid);
    snprintf(out, sizeof out, "%s/killer.out", d.dir);
    char *argv[] = {"/bin/sh", "-c", "sleep 0.3; kill -KILL \"$1\"", "sh", pidtext, NULL};
    pid_t killer = th_spawn_to_files(argv, out, NULL);
    double t0 = th_now_ms();
    lmq_value_t r = {0};
    int rc = lmq_proxy_call(p, "reset", NULL, 0, &r);
    double took = th_now_ms() - t0;
    int status;
    th_wait_exit(killer, 5000, &status);
    ck_assert_msg(rc == LMQ_EOUTCOME, "%s: %s", lmq_status_name(rc), lmq_proxy_last_error(p));
    ck_assert_msg(took < 300 + NOTICE_MS, "noticed after %.0f ms", took);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    th_daemon_cleanup(&d);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("liveness");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, stopped_daemon_noticed_by_heartbeats);
    tcase_add_test(tc, killed_daemon_noticed_at_once);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return th_run_suite(suite()); }
