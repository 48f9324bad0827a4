/* Locks, deadlines and retry de-duplication (protocol 2.1, 2.5, 2.6) against
 * in-process daemons, and a lock holder that is killed (a labmq process).
 * sim-psu's transcript (one line per request that reached the driver, and
 * one per safe state) counts what the instrument saw. */
#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"

#define LABMQ_CLI LMQ_BUILD_DIR "/tools/labmq"

typedef struct lab {
    void *ctx;
    lmq_daemon_t *d;
    char dir[128], transcript[192];
} lab_t;

/* psu1 (with a transcript; slew 10 V/s, so a 5 V step takes 0.5 s while the
 * output is on) and psu2, on inproc endpoints. */
static void lab_start(lab_t *l)
{
    th_tempdir(l->dir, sizeof l->dir);
    snprintf(l->transcript, sizeof l->transcript, "%s/psu1.log", l->dir);
    l->ctx = zmq_ctx_new();
    l->d = lmq_daemon_new(l->ctx, "inproc://lk", "inproc://lk-data", NULL);
    const char *o1[] = {"transcript", l->transcript, "slew_v_per_s", "10", NULL};
    ck_assert_int_eq(lmq_daemon_add(l->d, "psu1", lmq_driver_find("sim-psu"), NULL, o1), 0);
    ck_assert_int_eq(lmq_daemon_add(l->d, "psu2", lmq_driver_find("sim-psu"), NULL, NULL), 0);
    ck_assert_int_eq(lmq_daemon_start(l->d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(l->d, 20000), 0);
}

static void lab_stop(lab_t *l)
{
    lmq_daemon_destroy(&l->d);
    zmq_ctx_term(l->ctx);
    th_rmtree(l->dir);
}

/* Transcript lines naming `what` ("voltage", "safe_state"). */
static int transcript_count(const lab_t *l, const char *what)
{
    char *text = th_read_file(l->transcript);
    int n = 0;
    char pat[64];
    snprintf(pat, sizeof pat, " psu1 %s\n", what);
    for (const char *p = text; p && (p = strstr(p, pat)); p += strlen(pat))
        n++;
    free(text);
    return n;
}

static json_t *list_entry(lmq_proxy_t *p, const char *name)
{
    char *text = NULL;
    ck_assert_int_eq(lmq_proxy_list(p, &text), 0);
    json_t *all = json_loads(text, 0, NULL), *d, *hit = NULL;
    free(text);
    size_t i;
    json_array_foreach(all, i, d) if (!strcmp(json_string_value(json_object_get(d, "name")), name)) hit =
        json_incref(d);
    json_decref(all);
    ck_assert_ptr_nonnull(hit);
    return hit;
}

static const char *holder_of(json_t *entry)
{
    return json_string_value(json_object_get(json_object_get(entry, "locked_by"), "holder"));
}

START_TEST(lock_refuses_others_and_names_the_holder)
{
    lab_t l;
    lab_start(&l);
    lmq_proxy_t *a = lmq_proxy_new(l.ctx, "inproc://lk", "psu1"), *b = lmq_proxy_new(l.ctx, "inproc://lk", "psu1");
    ck_assert_int_eq(lmq_proxy_set_client(a, "alice@bench pid 1"), 0);
    ck_assert_int_eq(lmq_proxy_lock(a, NULL, 0, 5000), 0);
    lmq_value_t v = lmq_float(1.0);
    ck_assert_int_eq(lmq_proxy_set(b, "voltage", &v), LMQ_ELOCKED);
    ck_assert_msg(strstr(lmq_proxy_last_error(b), "psu1 is locked by 'alice@bench pid 1'"), "%s",
                  lmq_proxy_last_error(b));
    ck_assert_int_eq(lmq_proxy_call(b, "reset", NULL, 0, NULL), LMQ_ELOCKED);
    /* reading stays open to all */
    double got;
    ck_assert_int_eq(lmq_proxy_get_double(b, "voltage", &got), 0);
    char *desc = NULL;
    ck_assert_int_eq(lmq_proxy_describe(b, &desc), 0);
    free(desc);
    /* the holder works as before */
    ck_assert_int_eq(lmq_proxy_set(a, "voltage", &v), 0);
    json_t *e = list_entry(b, "psu1");
    ck_assert_str_eq(holder_of(e), "alice@bench pid 1");
    json_decref(e);
    /* all or nothing: b locking psu2 and psu1 takes neither */
    const char *both[] = {"psu2", "psu1"};
    ck_assert_int_eq(lmq_proxy_lock(b, both, 2, 0), LMQ_ELOCKED);
    e = list_entry(b, "psu2");
    ck_assert(json_is_null(json_object_get(e, "locked_by")));
    json_decref(e);
    /* another name is another holder, whatever the connection */
    ck_assert_int_eq(lmq_proxy_unlock(b, NULL, 0), 0); /* b holds nothing: releases nothing */
    ck_assert_int_eq(lmq_proxy_set(b, "voltage", &v), LMQ_ELOCKED);
    ck_assert_int_eq(lmq_proxy_set_client(b, "alice@bench pid 1"), 0);
    ck_assert_int_eq(lmq_proxy_set(b, "voltage", &v), 0);
    ck_assert_int_eq(lmq_proxy_set_client(b, "bob"), 0);
    ck_assert_int_eq(lmq_proxy_unlock(a, NULL, 0), 0);
    ck_assert_int_eq(lmq_proxy_set(b, "voltage", &v), 0);
    e = list_entry(b, "psu1");
    ck_assert(json_is_null(json_object_get(e, "locked_by")));
    json_decref(e);
    /* bad requests are named */
    ck_assert_int_eq(lmq_proxy_lock(a, (const char *[]){"psu9"}, 1, 0), LMQ_ENOTFOUND);
    ck_assert_msg(strstr(lmq_proxy_last_error(a), "psu9"), "%s", lmq_proxy_last_error(a));
    ck_assert_int_eq(lmq_proxy_lock(a, NULL, 0, 50), LMQ_EARG);
    lmq_proxy_destroy(&a);
    lmq_proxy_destroy(&b);
    lab_stop(&l);
}
END_TEST

/* Waits for a lock event of psu1 with `cause`; returns it (caller destroys). */
static lmq_event_t *wait_lock_event(lmq_events_t *ev, const char *cause, int timeout_ms)
{
    double end = th_now_ms() + timeout_ms;
    while (th_now_ms() < end) {
        lmq_event_t *e = NULL;
        if (lmq_events_recv(ev, &e, 100) == 0 && e) {
            if (!strcmp(lmq_event_kind(e), "lock") && !strcmp(lmq_event_cause(e), cause))
                return e;
            lmq_event_destroy(&e);
        }
    }
    return NULL;
}

START_TEST(lease_not_renewed_puts_the_device_in_its_safe_state)
{
    lab_t l;
    lab_start(&l);
    lmq_events_t *ev = lmq_events_new(l.ctx, "inproc://lk-data", "psu1");
    lmq_proxy_t *a = lmq_proxy_new(l.ctx, "inproc://lk", "psu1"), *b = lmq_proxy_new(l.ctx, "inproc://lk", "psu1");
    lmq_value_t on = lmq_bool(true), out = {0};
    ck_assert_int_eq(lmq_proxy_set(a, "output", &on), 0);
    ck_assert_int_eq(lmq_proxy_lock(a, NULL, 0, 300), 0);
    lmq_event_t *e = wait_lock_event(ev, "locked", 5000);
    ck_assert_ptr_nonnull(e);
    ck_assert_str_eq(lmq_event_holder(e), lmq_proxy_client(a));
    lmq_event_destroy(&e);
    /* using it renews it: 0.6 s of gets every 50 ms, twice the lease */
    double t0 = th_now_ms();
    while (th_now_ms() - t0 < 600) {
        ck_assert_int_eq(lmq_proxy_get(a, "output", &out), 0);
        usleep(50000);
    }
    ck_assert_int_eq(lmq_proxy_set(b, "output", &on), LMQ_ELOCKED);
    ck_assert_int_eq(transcript_count(&l, "safe_state"), 0);
    /* a goes silent: the lease runs out, the output goes off */
    e = wait_lock_event(ev, "lock expired", 5000);
    ck_assert_msg(e != NULL, "no 'lock expired' event");
    ck_assert_str_eq(lmq_event_safe_state(e), "done");
    ck_assert_str_eq(lmq_event_holder(e), lmq_proxy_client(a));
    lmq_event_destroy(&e);
    ck_assert_int_eq(lmq_proxy_get(b, "output", &out), 0);
    ck_assert(out.type == LMQ_BOOL && !out.u.b);
    ck_assert_int_eq(transcript_count(&l, "safe_state"), 1);
    ck_assert_int_eq(lmq_proxy_set(b, "output", &on), 0); /* free for others */
    lmq_events_destroy(&ev);
    lmq_proxy_destroy(&a);
    lmq_proxy_destroy(&b);
    lab_stop(&l);
}
END_TEST

/* Raw protocol: a DEALER of the test's own. */
static void *dealer(void *ctx, const char *ep)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    ck_assert_int_eq(zmq_connect(s, ep), 0);
    return s;
}

static void send_text(void *s, const char *text) { ck_assert_int_eq(zmq_send(s, text, strlen(text), 0), (int)strlen(text)); }

static json_t *ask(void *s, const char *text)
{
    send_text(s, text);
    json_t *r = th_recv_reply(s, 10000);
    ck_assert_msg(r != NULL, "no reply to %s", text);
    return r;
}

START_TEST(deadline_passed_never_reaches_the_driver)
{
    lab_t l;
    lab_start(&l);
    void *s = dealer(l.ctx, "inproc://lk");
    json_t *r = ask(s, "{\"v\":1,\"id\":1,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"output\",\"value\":true}");
    ck_assert_str_eq(th_reply_code(r), "OK");
    json_decref(r);
    /* 0 ms: refused at once */
    r = ask(s, "{\"v\":1,\"id\":2,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":1,\"deadline_ms\":0}");
    ck_assert_str_eq(th_reply_code(r), "TIMEOUT");
    ck_assert_msg(strstr(th_reply_message(r), "deadline passed before the device ran it"), "%s", th_reply_message(r));
    json_decref(r);
    /* a slow set (0 -> 5 V at 10 V/s: 0.5 s), then one that may wait 100 ms */
    send_text(s, "{\"v\":1,\"id\":3,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":5}");
    send_text(s, "{\"v\":1,\"id\":4,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":1,"
                 "\"deadline_ms\":100}");
    json_t *r3 = th_recv_reply(s, 10000), *r4 = th_recv_reply(s, 10000);
    ck_assert_ptr_nonnull(r3);
    ck_assert_ptr_nonnull(r4);
    ck_assert_str_eq(th_reply_code(r3), "OK");
    ck_assert_str_eq(th_reply_code(r4), "TIMEOUT");
    ck_assert_msg(strstr(th_reply_message(r4), "deadline passed before the device ran it"), "%s",
                  th_reply_message(r4));
    json_decref(r3);
    json_decref(r4);
    ck_assert_int_eq(transcript_count(&l, "voltage"), 1); /* only id 3 reached the instrument */
    /* bad deadlines are PROTO */
    r = ask(s, "{\"v\":1,\"id\":5,\"op\":\"get\",\"device\":\"psu1\",\"name\":\"voltage\",\"deadline_ms\":-1}");
    ck_assert_str_eq(th_reply_code(r), "PROTO");
    ck_assert_msg(strstr(th_reply_message(r), "deadline_ms"), "%s", th_reply_message(r));
    json_decref(r);
    zmq_close(s);
    lab_stop(&l);
}
END_TEST

START_TEST(retried_set_runs_once)
{
    lab_t l;
    lab_start(&l);
    void *s1 = dealer(l.ctx, "inproc://lk"), *s2 = dealer(l.ctx, "inproc://lk");
    const char *set = "{\"v\":1,\"id\":77,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":1.5,"
                      "\"client\":\"retrier\"}";
    json_t *r = ask(s1, set);
    ck_assert_str_eq(th_reply_code(r), "OK");
    json_decref(r);
    /* the retry comes on another connection (a client reconnects after a timeout) */
    r = ask(s2, set);
    ck_assert_str_eq(th_reply_code(r), "OK");
    ck_assert_int_eq(json_integer_value(json_object_get(r, "id")), 77);
    json_decref(r);
    ck_assert_int_eq(transcript_count(&l, "voltage"), 1);
    /* the same id for another request is a client bug, named */
    r = ask(s2, "{\"v\":1,\"id\":77,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"current_limit\",\"value\":0.1,"
                "\"client\":\"retrier\"}");
    ck_assert_str_eq(th_reply_code(r), "PROTO");
    ck_assert_msg(strstr(th_reply_message(r), "id 77 of client 'retrier' was already used"), "%s",
                  th_reply_message(r));
    json_decref(r);
    /* another client's id 77 is its own */
    r = ask(s2, "{\"v\":1,\"id\":77,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":1.5,"
                "\"client\":\"other\"}");
    ck_assert_str_eq(th_reply_code(r), "OK");
    json_decref(r);
    ck_assert_int_eq(transcript_count(&l, "voltage"), 2);
    /* a retry of a set still running waits for its reply: output on, a 0.5 s step */
    r = ask(s1, "{\"v\":1,\"id\":78,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"output\",\"value\":true}");
    ck_assert_str_eq(th_reply_code(r), "OK");
    json_decref(r);
    const char *slow = "{\"v\":1,\"id\":79,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":6.5,"
                       "\"client\":\"retrier\"}";
    send_text(s1, slow);
    send_text(s2, slow);
    json_t *a = th_recv_reply(s1, 10000), *b = th_recv_reply(s2, 10000);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_str_eq(th_reply_code(a), "OK");
    ck_assert_str_eq(th_reply_code(b), "OK");
    json_decref(a);
    json_decref(b);
    ck_assert_int_eq(transcript_count(&l, "voltage"), 3);
    /* requests without a client name are not remembered: each one runs */
    const char *anon = "{\"v\":1,\"id\":80,\"op\":\"set\",\"device\":\"psu1\",\"name\":\"voltage\",\"value\":6.5}";
    json_decref(ask(s1, anon));
    json_decref(ask(s1, anon));
    ck_assert_int_eq(transcript_count(&l, "voltage"), 5);
    zmq_close(s1);
    zmq_close(s2);
    lab_stop(&l);
}
END_TEST

/* Without a client name the connection is the holder. */
START_TEST(connection_holds_without_a_client_name)
{
    lab_t l;
    lab_start(&l);
    void *s1 = dealer(l.ctx, "inproc://lk"), *s2 = dealer(l.ctx, "inproc://lk");
    json_t *r = ask(s1, "{\"v\":1,\"id\":1,\"op\":\"lock\",\"devices\":[\"psu2\"],\"lease_ms\":5000}");
    ck_assert_str_eq(th_reply_code(r), "OK");
    ck_assert_msg(!strncmp(json_string_value(json_object_get(json_object_get(r, "result"), "holder")), "connection ", 11),
                  "holder of an unnamed lock");
    json_decref(r);
    const char *set = "{\"v\":1,\"id\":2,\"op\":\"set\",\"device\":\"psu2\",\"name\":\"voltage\",\"value\":1}";
    r = ask(s2, set);
    ck_assert_str_eq(th_reply_code(r), "LOCKED");
    ck_assert_msg(strstr(th_reply_message(r), "psu2 is locked by 'connection "), "%s", th_reply_message(r));
    json_decref(r);
    r = ask(s1, set);
    ck_assert_str_eq(th_reply_code(r), "OK");
    json_decref(r);
    /* unlock by another connection releases nothing, and says so */
    r = ask(s2, "{\"v\":1,\"id\":3,\"op\":\"unlock\",\"devices\":[\"psu2\"]}");
    ck_assert_str_eq(th_reply_code(r), "LOCKED");
    json_decref(r);
    r = ask(s1, "{\"v\":1,\"id\":4,\"op\":\"unlock\"}");
    ck_assert_str_eq(th_reply_code(r), "OK");
    ck_assert_int_eq(json_array_size(json_object_get(json_object_get(r, "result"), "unlocked")), 1);
    json_decref(r);
    r = ask(s2, set);
    ck_assert_str_eq(th_reply_code(r), "OK");
    json_decref(r);
    zmq_close(s1);
    zmq_close(s2);
    lab_stop(&l);
}
END_TEST

/* An instrument that accepts the connection and never answers: the request's
 * deadline, not the driver's 10 s timeout, bounds the wait. */
START_TEST(transport_waits_capped_by_the_deadline)
{
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    ck_assert_int_eq(bind(ls, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(ls, 4), 0); /* connections complete in the backlog, never read */
    ck_assert_int_eq(getsockname(ls, (struct sockaddr *)&a, &alen), 0);
    char dir[128], desc[192], conn[64];
    th_tempdir(dir, sizeof dir);
    snprintf(desc, sizeof desc, "%s/mute.yaml", dir);
    th_write_file(desc, "instrument: Mute\n"
                        "terminators: {write: \"\\n\", read: \"\\n\"}\n"
                        "timeout_ms: 10000\n"
                        "clear_quiet_ms: 20\n"
                        "properties:\n"
                        "  - {name: level, type: float, unit: V, get: 'LEV?'}\n");
    snprintf(conn, sizeof conn, "tcp:127.0.0.1:%d", ntohs(a.sin_port));
    void *ctx = zmq_ctx_new();
    lmq_daemon_t *d = lmq_daemon_new(ctx, "inproc://mute", "inproc://mute-data", NULL);
    const char *opts[] = {"model", desc, NULL};
    ck_assert_msg(lmq_daemon_add(d, "mute", lmq_driver_find("scpi"), conn, opts) == 0, "%s", lmq_daemon_last_error(d));
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, 20000), 0);
    void *s = dealer(ctx, "inproc://mute");
    double t0 = th_now_ms();
    json_t *r = ask(s, "{\"v\":1,\"id\":1,\"op\":\"get\",\"device\":\"mute\",\"name\":\"level\",\"deadline_ms\":200}");
    double took = th_now_ms() - t0;
    ck_assert_str_eq(th_reply_code(r), "TIMEOUT");
    /* 10 s without the cap; the deadline plus the resync (20 ms of quiet)
     * plus a generous margin for a loaded machine with it */
    ck_assert_msg(took < 200 + 2500, "took %.0f ms: %s", took, th_reply_message(r));
    json_decref(r);
    zmq_close(s);
    lmq_daemon_destroy(&d);
    zmq_ctx_term(ctx);
    close(ls);
    th_rmtree(dir);
}
END_TEST

/* A lock holder that is killed: its lease runs out and the supply's output
 * goes off. The holder is `labmq lock`, a process of its own. */
START_TEST(killed_holder_leaves_the_output_off)
{
    th_daemon_t d;
    th_daemon_start(&d, "devices:\n  - name: psu1\n    driver: sim-psu\n");
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = lmq_proxy_new(ctx, d.control, "psu1");
    lmq_value_t on = lmq_bool(true), out = {0};
    ck_assert_int_eq(lmq_proxy_set(p, "output", &on), 0);
    char outp[256];
    snprintf(outp, sizeof outp, "%s/lock.out", d.dir);
    char ep[256];
    snprintf(ep, sizeof ep, "%s", d.control);
    char *argv[] = {LABMQ_CLI, "-e", ep, "lock", "psu1", "--lease", "500", NULL};
    pid_t holder = th_spawn_to_files(argv, outp, NULL);
    double end = th_now_ms() + 20000;
    int rc;
    while ((rc = lmq_proxy_set(p, "output", &on)) == 0 && th_now_ms() < end)
        usleep(20000);
    ck_assert_msg(rc == LMQ_ELOCKED, "psu1 never locked by labmq lock: %s", lmq_proxy_last_error(p));
    /* held well beyond its lease while the holder lives (it renews) */
    usleep(1200000);
    ck_assert_int_eq(lmq_proxy_set(p, "output", &on), LMQ_ELOCKED);
    kill(holder, SIGKILL);
    int status;
    ck_assert_int_eq(th_wait_exit(holder, 5000, &status), 0);
    end = th_now_ms() + 10000;
    while (lmq_proxy_get(p, "output", &out) == 0 && out.u.b && th_now_ms() < end)
        usleep(20000);
    ck_assert_msg(out.type == LMQ_BOOL && !out.u.b, "output still on after the holder died");
    ck_assert_int_eq(lmq_proxy_set(p, "output", &on), 0); /* and the lock is gone */
    char *log = th_read_file(d.log);
    ck_assert_msg(log && strstr(log, "lock of '") && strstr(log, "expired"), "%s", log ? log : "");
    free(log);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
}
END_TEST

/* safe_state was appended in driver ABI 3: a plugin built for ABI 2 has a
 * shorter struct and is refused, saying why, never read past its end. */
START_TEST(older_plugins_are_refused)
{
    char err[400] = "";
    ck_assert_ptr_null(lmq_driver_load(ABI2_DRIVER, err, sizeof err));
    ck_assert_msg(strstr(err, "built for driver ABI 2, this labmq speaks 3 (ABI 3 added safe_state"), "%s", err);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("locks");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, lock_refuses_others_and_names_the_holder);
    tcase_add_test(tc, lease_not_renewed_puts_the_device_in_its_safe_state);
    tcase_add_test(tc, deadline_passed_never_reaches_the_driver);
    tcase_add_test(tc, retried_set_runs_once);
    tcase_add_test(tc, connection_holds_without_a_client_name);
    tcase_add_test(tc, transport_waits_capped_by_the_deadline);
    tcase_add_test(tc, killed_holder_leaves_the_output_off);
    tcase_add_test(tc, older_plugins_are_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return th_run_suite(suite()); }
