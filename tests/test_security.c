/* Security (docs/security.md): key files, a daemon on loopback tcp with CURVE
 * keys and an allow-list, roles (observe gets PERMISSION for set and call),
 * the refusal of unknown keys, NULL-security peers and a wrong server key
 * (each logged), the refusal of tcp:// without keys, the audit line, and
 * labmqd and the CLI with key files. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "auth_internal.h"
#include "daemon_internal.h"
#include "harness.h"
#include "labmq/labmq.h"

#define LABMQD LMQ_BUILD_DIR "/workers/labmqd/labmqd"
#define CLI LMQ_BUILD_DIR "/tools/labmq"
#define IV_SCAN LMQ_BUILD_DIR "/examples/iv_scan"
#define SIM_LAB LMQ_SOURCE_DIR "/examples/sim-lab.yaml"
/* A refused client gets no answer: its calls end at this timeout. */
#define REFUSED_TIMEOUT_MS 700
#define RUN_LIMIT_MS 20000

/* ---- a log that tests can search ---- */

typedef struct logbuf {
    pthread_mutex_t mu;
    char text[64 * 1024];
    size_t len;
} logbuf_t;

static void log_into(void *user, lmq_log_level_t level, const char *source, const char *msg)
{
    logbuf_t *lb = user;
    pthread_mutex_lock(&lb->mu);
    int n =
        snprintf(lb->text + lb->len, sizeof lb->text - lb->len, "%s %s: %s\n", lmq_log_level_name(level), source, msg);
    if (n > 0)
        lb->len += (size_t)n < sizeof lb->text - lb->len ? (size_t)n : sizeof lb->text - lb->len - 1;
    pthread_mutex_unlock(&lb->mu);
}

/* Waits (bounded) until the log holds needle; returns whether it did. */
static bool log_wait(logbuf_t *lb, const char *needle, int timeout_ms)
{
    double end = th_now_ms() + timeout_ms;
    for (;;) {
        pthread_mutex_lock(&lb->mu);
        bool found = strstr(lb->text, needle) != NULL;
        pthread_mutex_unlock(&lb->mu);
        if (found || th_now_ms() > end)
            return found;
        usleep(10000);
    }
}

/* ---- an in-process daemon with keys on loopback tcp ---- */

typedef struct lab {
    char dir[64];
    void *ctx;
    logbuf_t log;
    lmq_log_t *logger;
    lmq_daemon_t *d;
    lmq_keypair_t server, alice, bob, carol; /* alice: control, bob: observe, carol: not allowed */
} lab_t;

static void keypair(lmq_keypair_t *kp)
{
    char err[200];
    ck_assert_msg(lmq_keypair_new(kp, err, sizeof err) == 0, "%s", err);
}

static void lab_start(lab_t *l, bool secured)
{
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->log.mu, NULL);
    l->ctx = zmq_ctx_new();
    l->logger = lmq_log_new(LMQ_LOG_INFO, log_into, &l->log);
    keypair(&l->server);
    keypair(&l->alice);
    keypair(&l->bob);
    keypair(&l->carol);
    l->d = lmq_daemon_new(l->ctx, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", l->logger);
    ck_assert_ptr_nonnull(l->d);
    ck_assert_int_eq(lmq_daemon_add(l->d, "psu1", lmq_driver_find("sim-psu"), "", NULL), 0);
    const char *daq_opts[] = {"sample_rate", "1000", "block_size", "100", NULL};
    ck_assert_int_eq(lmq_daemon_add(l->d, "daq1", lmq_driver_find("sim-daq"), "", daq_opts), 0);
    if (secured) {
        ck_assert_int_eq(lmq_daemon_set_curve(l->d, l->server.secret_key), 0);
        ck_assert_int_eq(lmq_daemon_allow(l->d, "alice", l->alice.public_key, LMQ_ROLE_CONTROL), 0);
        ck_assert_int_eq(lmq_daemon_allow(l->d, "bob", l->bob.public_key, LMQ_ROLE_OBSERVE), 0);
        ck_assert_int_eq(lmq_daemon_start(l->d), 0);
        ck_assert_int_eq(lmq_daemon_wait_ready(l->d, 10000), 0);
    }
}

static void lab_stop(lab_t *l)
{
    lmq_daemon_destroy(&l->d);
    zmq_ctx_term(l->ctx);
    lmq_log_destroy(&l->logger);
    pthread_mutex_destroy(&l->log.mu);
}

static lmq_client_keys_t keys_of(const lmq_keypair_t *who, const char *server_key)
{
    lmq_client_keys_t k = {.client = *who};
    snprintf(k.server_key, sizeof k.server_key, "%s", server_key);
    return k;
}

/* A proxy to the lab's daemon as `who` (NULL: no keys), trusting server_key. */
static lmq_proxy_t *proxy_as(lab_t *l, const char *device, const lmq_keypair_t *who, const char *server_key)
{
    lmq_client_keys_t k = who ? keys_of(who, server_key) : (lmq_client_keys_t){0};
    lmq_proxy_t *p = lmq_proxy_new_keys(l->ctx, l->d->bound_control, device, who ? &k : NULL);
    ck_assert_ptr_nonnull(p);
    return p;
}

START_TEST(control_client_works_and_is_audited)
{
    lab_t l;
    lab_start(&l, true);
    lmq_proxy_t *p = proxy_as(&l, "psu1", &l.alice, l.server.public_key);
    lmq_value_t v = lmq_float(2.5);
    ck_assert_msg(lmq_proxy_set(p, "voltage", &v) == 0, "%s", lmq_proxy_last_error(p));
    double got = 0;
    ck_assert_int_eq(lmq_proxy_get_double(p, "voltage", &got), 0);
    ck_assert(got == 2.5);
    ck_assert_msg(log_wait(&l.log, "info audit: alice set psu1.voltage 2.5 -> OK (", 5000), "%s", l.log.text);
    /* A get changes nothing: not audited. */
    ck_assert_ptr_null(strstr(l.log.text, "alice get"));
    /* A refused set is audited with its outcome. */
    lmq_value_t big = lmq_float(1e6);
    ck_assert_int_eq(lmq_proxy_set(p, "voltage", &big), LMQ_ERANGE);
    ck_assert_msg(log_wait(&l.log, "alice set psu1.voltage 1000000.0 -> RANGE: ", 5000), "%s", l.log.text);
    lmq_proxy_destroy(&p);
    lab_stop(&l);
}
END_TEST

START_TEST(observe_role_reads_but_cannot_write)
{
    lab_t l;
    lab_start(&l, true);
    lmq_proxy_t *p = proxy_as(&l, "psu1", &l.bob, l.server.public_key);
    double got = -1;
    ck_assert_msg(lmq_proxy_get_double(p, "voltage", &got) == 0, "%s", lmq_proxy_last_error(p));
    char *json = NULL;
    ck_assert_int_eq(lmq_proxy_describe(p, &json), 0);
    free(json);
    ck_assert_int_eq(lmq_proxy_list(p, &json), 0);
    free(json);
    lmq_value_t v = lmq_float(1.0);
    ck_assert_int_eq(lmq_proxy_set(p, "voltage", &v), LMQ_EPERM);
    ck_assert_str_eq(lmq_proxy_last_error(p), "client 'bob' has role observe; set needs control");
    ck_assert_int_eq(lmq_proxy_call(p, "reset", NULL, 0, NULL), LMQ_EPERM);
    ck_assert_str_eq(lmq_proxy_last_error(p), "client 'bob' has role observe; call needs control");
    ck_assert_msg(log_wait(&l.log, "bob set psu1.voltage 1.0 -> PERMISSION: client 'bob' has role observe", 5000), "%s",
                  l.log.text);
    /* The voltage is unchanged. */
    ck_assert_int_eq(lmq_proxy_get_double(p, "voltage", &got), 0);
    ck_assert(got == 0.0);

    /* Subscribing is observing. */
    lmq_client_keys_t bob = keys_of(&l.bob, l.server.public_key);
    lmq_sub_t *s = lmq_sub_new_keys(l.ctx, l.d->bound_data, "daq1/wave", &bob);
    ck_assert_ptr_nonnull(s);
    lmq_frame_t *f = NULL;
    int rc = lmq_sub_recv(s, &f, 10000);
    ck_assert_msg(rc == 0, "no block for an observer: %s", lmq_sub_last_error(s));
    lmq_frame_destroy(&f);
    lmq_sub_destroy(&s);
    /* So is a flow subscription (protocol 3.2), on the control endpoint with
     * the same keys: blocks arrive and credit flows, gap-free. */
    lmq_sub_opts_t o = {.mode = LMQ_SUB_LOSSLESS, .window = 4, .keys = &bob};
    s = lmq_sub_new_opts(l.ctx, l.d->bound_control, "daq1/wave", &o);
    ck_assert_ptr_nonnull(s);
    for (int i = 0; i < 12; i++) {
        rc = lmq_sub_recv(s, &f, 10000);
        ck_assert_msg(rc == 0, "no flow block for an observer: %s (%s)", lmq_strerror(rc), lmq_sub_last_error(s));
        lmq_frame_destroy(&f);
    }
    ck_assert_uint_eq(lmq_sub_lost(s), 0);
    lmq_sub_destroy(&s);
    lmq_proxy_destroy(&p);
    lab_stop(&l);
}
END_TEST

/* With keys a lock belongs to the authenticated client: another control
 * client that claims the same `client` name is not its holder. */
START_TEST(lock_holder_is_the_authenticated_client)
{
    lab_t l;
    lab_start(&l, false);
    lmq_keypair_t dave;
    keypair(&dave);
    ck_assert_int_eq(lmq_daemon_set_curve(l.d, l.server.secret_key), 0);
    ck_assert_int_eq(lmq_daemon_allow(l.d, "alice", l.alice.public_key, LMQ_ROLE_CONTROL), 0);
    ck_assert_int_eq(lmq_daemon_allow(l.d, "dave", dave.public_key, LMQ_ROLE_CONTROL), 0);
    ck_assert_int_eq(lmq_daemon_start(l.d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(l.d, 10000), 0);
    lmq_proxy_t *pa = proxy_as(&l, "psu1", &l.alice, l.server.public_key);
    lmq_proxy_t *pd = proxy_as(&l, "psu1", &dave, l.server.public_key);
    ck_assert_int_eq(lmq_proxy_set_client(pa, "script"), 0);
    ck_assert_int_eq(lmq_proxy_set_client(pd, "script"), 0);
    const char *devs[] = {"psu1"};
    ck_assert_msg(lmq_proxy_lock(pa, devs, 1, 10000) == 0, "%s", lmq_proxy_last_error(pa));
    lmq_value_t v = lmq_float(1.5);
    ck_assert_int_eq(lmq_proxy_set(pd, "voltage", &v), LMQ_ELOCKED);
    ck_assert_msg(strstr(lmq_proxy_last_error(pd), "locked by 'alice: script'"), "%s", lmq_proxy_last_error(pd));
    ck_assert_int_eq(lmq_proxy_lock(pd, devs, 1, 10000), LMQ_ELOCKED);
    ck_assert_msg(lmq_proxy_set(pa, "voltage", &v) == 0, "%s", lmq_proxy_last_error(pa));
    lmq_proxy_destroy(&pa);
    lmq_proxy_destroy(&pd);
    lab_stop(&l);
}
END_TEST

START_TEST(unknown_client_is_refused_and_logged)
{
    lab_t l;
    lab_start(&l, true);
    lmq_proxy_t *p = proxy_as(&l, "psu1", &l.carol, l.server.public_key);
    lmq_proxy_set_timeout(p, REFUSED_TIMEOUT_MS);
    double got;
    ck_assert_int_eq(lmq_proxy_get_double(p, "voltage", &got), LMQ_EUNREACH);
    ck_assert_msg(strstr(lmq_proxy_last_error(p), "allow-list") != NULL, "%s", lmq_proxy_last_error(p));
    char needle[120];
    snprintf(needle, sizeof needle, "its public key %s is not on the allow-list", l.carol.public_key);
    ck_assert_msg(log_wait(&l.log, needle, 5000), "%s", l.log.text);
    /* Nor may it subscribe. */
    lmq_client_keys_t carol = keys_of(&l.carol, l.server.public_key);
    lmq_sub_t *s = lmq_sub_new_keys(l.ctx, l.d->bound_data, "daq1/wave", &carol);
    ck_assert_ptr_nonnull(s);
    lmq_frame_t *f = NULL;
    ck_assert_int_eq(lmq_sub_recv(s, &f, 1500), LMQ_ETIMEOUT);
    lmq_sub_destroy(&s);
    lmq_proxy_destroy(&p);
    lab_stop(&l);
}
END_TEST

static size_t count(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

START_TEST(refusals_are_logged_at_a_bounded_rate)
{
    lab_t l;
    lab_start(&l, true);
    /* carol retries (ZeroMQ reconnects every 100 ms and more) from many sockets at once. */
    enum { N = 12 };
    lmq_proxy_t *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = proxy_as(&l, NULL, &l.carol, l.server.public_key);
        lmq_proxy_set_timeout(p[i], 50);
        char *json = NULL;
        ck_assert_int_eq(lmq_proxy_ping(p[i], &json), LMQ_EUNREACH);
    }
    ck_assert(log_wait(&l.log, "not on the allow-list", 5000));
    usleep(300 * 1000);
    for (int i = 0; i < N; i++)
        lmq_proxy_destroy(&p[i]);
    lmq_daemon_stop(l.d); /* the handler reports what it did not log */
    pthread_mutex_lock(&l.log.mu);
    size_t lines = count(l.log.text, "warn auth: refused") + count(l.log.text, "warn auth: a client");
    bool summary = strstr(l.log.text, "more refused connections were not logged") != NULL;
    pthread_mutex_unlock(&l.log.mu);
    ck_assert_msg(lines == 10 && summary, "%zu refusal lines, summary %d:\n%s", lines, summary, l.log.text);
    lab_stop(&l);
}
END_TEST

START_TEST(null_security_peer_is_refused_and_logged)
{
    lab_t l;
    lab_start(&l, true);
    lmq_proxy_t *p = proxy_as(&l, NULL, NULL, NULL);
    lmq_proxy_set_timeout(p, REFUSED_TIMEOUT_MS);
    char *json = NULL;
    ck_assert_int_eq(lmq_proxy_ping(p, &json), LMQ_EUNREACH);
    /* Which side notices the mismatch first is a race: either way it is logged. */
    ck_assert_msg(log_wait(&l.log, "it does not use CURVE (NULL or PLAIN security)", 5000) ||
                      log_wait(&l.log, "hung up during the handshake", 1),
                  "%s", l.log.text);
    /* A raw DEALER that speaks the protocol gets no reply either. */
    void *raw = zmq_socket(l.ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(raw, ZMQ_LINGER, &linger, sizeof linger);
    ck_assert_int_eq(zmq_connect(raw, l.d->bound_control), 0);
    zmq_send(raw, "{\"v\":1,\"id\":1,\"op\":\"ping\"}", 26, ZMQ_DONTWAIT);
    struct json_t *reply = th_recv_reply(raw, 1000);
    ck_assert_ptr_null(reply);
    zmq_close(raw);
    lmq_proxy_destroy(&p);
    lab_stop(&l);
}
END_TEST

START_TEST(wrong_server_key_is_refused_and_logged)
{
    lab_t l;
    lab_start(&l, true);
    /* alice is allowed, but trusts another server: the handshake fails, and
     * she would never talk to an impostor. */
    lmq_proxy_t *p = proxy_as(&l, "psu1", &l.alice, l.carol.public_key);
    lmq_proxy_set_timeout(p, REFUSED_TIMEOUT_MS);
    double got;
    ck_assert_int_eq(lmq_proxy_get_double(p, "voltage", &got), LMQ_EUNREACH);
    ck_assert_msg(log_wait(&l.log, "CURVE handshake failed (protocol error 0x11000001", 5000), "%s", l.log.text);
    ck_assert_ptr_null(strstr(l.log.text, "audit"));
    lmq_proxy_destroy(&p);
    lab_stop(&l);
}
END_TEST

START_TEST(tcp_without_keys_needs_insecure)
{
    lab_t l;
    lab_start(&l, false);
    ck_assert_int_eq(lmq_daemon_start(l.d), LMQ_ECONFIG);
    ck_assert_msg(strstr(lmq_daemon_last_error(l.d), "refusing to serve tcp://127.0.0.1:* without CURVE keys"), "%s",
                  lmq_daemon_last_error(l.d));
    lmq_daemon_set_insecure(l.d, true);
    ck_assert_int_eq(lmq_daemon_start(l.d), 0);
    ck_assert_msg(log_wait(&l.log, "warn auth: INSECURE: serving tcp://127.0.0.1:*", 1000), "%s", l.log.text);
    /* Anyone may then do anything; the audit names the peer's address. */
    lmq_proxy_t *p = proxy_as(&l, "psu1", NULL, NULL);
    lmq_value_t v = lmq_float(1.5);
    ck_assert_msg(lmq_proxy_set(p, "voltage", &v) == 0, "%s", lmq_proxy_last_error(p));
    ck_assert_msg(log_wait(&l.log, "audit: anonymous@127.0.0.1 set psu1.voltage 1.5 -> OK", 5000), "%s", l.log.text);
    lmq_proxy_destroy(&p);
    lab_stop(&l);
}
END_TEST

START_TEST(local_ipc_peer_is_local)
{
    /* Without keys, ipc and inproc stay open to local processes: their
     * identity is "local", and they may do everything. */
    void *ctx = zmq_ctx_new();
    logbuf_t lb = {.len = 0};
    pthread_mutex_init(&lb.mu, NULL);
    lmq_log_t *log = lmq_log_new(LMQ_LOG_INFO, log_into, &lb);
    lmq_daemon_t *d = lmq_daemon_new(ctx, "inproc://c", "inproc://d", log);
    ck_assert_int_eq(lmq_daemon_add(d, "psu1", lmq_driver_find("sim-psu"), "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    lmq_proxy_t *p = lmq_proxy_new(ctx, "inproc://c", "psu1");
    lmq_value_t v = lmq_float(0.5);
    ck_assert_int_eq(lmq_proxy_call(p, "reset", NULL, 0, NULL), 0);
    ck_assert_int_eq(lmq_proxy_set(p, "voltage", &v), 0);
    ck_assert_msg(log_wait(&lb, "audit: local call psu1.reset [] -> OK", 5000), "%s", lb.text);
    ck_assert_msg(log_wait(&lb, "audit: local set psu1.voltage 0.5 -> OK", 5000), "%s", lb.text);
    lmq_proxy_destroy(&p);
    lmq_daemon_destroy(&d);
    zmq_ctx_term(ctx);
    lmq_log_destroy(&log);
    pthread_mutex_destroy(&lb.mu);
}
END_TEST

START_TEST(inproc_peer_with_keys_is_local_and_may_control)
{
    /* inproc has no handshake: with keys, the daemon's own process is the
     * one peer without a name, and it keeps every right. */
    lab_t l;
    memset(&l, 0, sizeof l);
    pthread_mutex_init(&l.log.mu, NULL);
    l.ctx = zmq_ctx_new();
    l.logger = lmq_log_new(LMQ_LOG_INFO, log_into, &l.log);
    keypair(&l.server);
    l.d = lmq_daemon_new(l.ctx, "inproc://c", "inproc://d", l.logger);
    ck_assert_int_eq(lmq_daemon_add(l.d, "psu1", lmq_driver_find("sim-psu"), "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_set_curve(l.d, l.server.secret_key), 0);
    ck_assert_int_eq(lmq_daemon_allow(l.d, "local", l.server.public_key, LMQ_ROLE_CONTROL), LMQ_EARG);
    ck_assert_msg(strstr(lmq_daemon_last_error(l.d), "invalid client name 'local'"), "%s", lmq_daemon_last_error(l.d));
    ck_assert_int_eq(lmq_daemon_start(l.d), 0);
    lmq_proxy_t *p = lmq_proxy_new(l.ctx, "inproc://c", "psu1");
    lmq_value_t v = lmq_float(0.25);
    ck_assert_msg(lmq_proxy_set(p, "voltage", &v) == 0, "%s", lmq_proxy_last_error(p));
    ck_assert_msg(log_wait(&l.log, "audit: local set psu1.voltage 0.25 -> OK", 5000), "%s", l.log.text);
    lmq_proxy_destroy(&p);
    lab_stop(&l);
}
END_TEST

START_TEST(peer_name_helper)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    char buf[8];
    ck_assert_uint_eq(lmq__peer_name(&m, buf, sizeof buf), 5);
    ck_assert_str_eq(buf, "local");
    ck_assert_uint_eq(lmq__peer_name(NULL, buf, 3), 2); /* truncated, still terminated */
    ck_assert_str_eq(buf, "lo");
    zmq_msg_close(&m);
    ck_assert(!lmq__op_changes_state(LMQ__OP_GET) && !lmq__op_changes_state(LMQ__OP_WORKERS));
    ck_assert(lmq__op_changes_state(LMQ__OP_SET) && lmq__op_changes_state(LMQ__OP_CALL));
}
END_TEST

/* ---- key files ---- */

START_TEST(keygen_files_load_and_secret_permissions_are_checked)
{
    char dir[64], path[128], pub[140], err[400];
    th_tempdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/alice.key", dir);
    snprintf(pub, sizeof pub, "%s.pub", path);
    lmq_keypair_t kp, back;
    keypair(&kp);
    ck_assert_msg(lmq_keypair_save(&kp, path, false, err, sizeof err) == 0, "%s", err);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0600);
    ck_assert_int_eq(stat(pub, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0644);
    ck_assert_msg(lmq_keypair_load(&back, path, true, err, sizeof err) == 0, "%s", err);
    ck_assert_str_eq(back.public_key, kp.public_key);
    ck_assert_str_eq(back.secret_key, kp.secret_key);
    /* The public file has no secret, and says so when one is needed. */
    ck_assert_int_eq(lmq_keypair_load(&back, pub, true, err, sizeof err), LMQ_ECONFIG);
    ck_assert_msg(strstr(err, "holds only a public key"), "%s", err);
    char z85[LMQ_KEY_Z85_LEN + 1];
    ck_assert_int_eq(lmq_key_public(z85, pub, err, sizeof err), 0);
    ck_assert_str_eq(z85, kp.public_key);
    ck_assert_int_eq(lmq_key_public(z85, kp.public_key, err, sizeof err), 0);
    ck_assert_str_eq(z85, kp.public_key);
    /* No silent replacement. */
    ck_assert_int_eq(lmq_keypair_save(&kp, path, false, err, sizeof err), LMQ_EBUSY);
    /* A secret key others can read is refused, with the fix. */
    chmod(path, 0644);
    ck_assert_int_eq(lmq_keypair_load(&back, path, true, err, sizeof err), LMQ_EPERM);
    ck_assert_msg(strstr(err, "has mode 0644") && strstr(err, "chmod 600"), "%s", err);
    /* ... but its public key may still be read (an allow-list entry). */
    ck_assert_int_eq(lmq_key_public(z85, path, err, sizeof err), 0);
    /* A damaged file names the line. */
    char bad[128];
    snprintf(bad, sizeof bad, "%s/bad.key", dir);
    th_write_file(bad, "curve\n    public-key = \"tooshort\"\n");
    ck_assert_int_eq(lmq_keypair_load(&back, bad, false, err, sizeof err), LMQ_ECONFIG);
    ck_assert_msg(strstr(err, "line 2: the public-key is not a 40-character Z85 key"), "%s", err);
    /* A secret that is not the public key's. */
    lmq_keypair_t other;
    keypair(&other);
    char mixed[400];
    snprintf(mixed, sizeof mixed, "curve\n public-key = \"%s\"\n secret-key = \"%s\"\n", kp.public_key,
             other.secret_key);
    th_write_file(bad, mixed);
    chmod(bad, 0600);
    ck_assert_int_eq(lmq_keypair_load(&back, bad, true, err, sizeof err), LMQ_ECONFIG);
    ck_assert_msg(strstr(err, "does not belong to its public key"), "%s", err);
    ck_assert_int_eq(lmq_key_public(z85, "not-a-key-and-no-such-file", err, sizeof err), LMQ_EIO);
    th_rmtree(dir);
}
END_TEST

/* ---- the config file ---- */

START_TEST(config_security_block)
{
    char dir[64], path[128], yaml[1600], err[300];
    th_tempdir(dir, sizeof dir);
    lmq_keypair_t server, alice, bob;
    keypair(&server);
    keypair(&alice);
    keypair(&bob);
    snprintf(path, sizeof path, "%s/server.key", dir);
    ck_assert_int_eq(lmq_keypair_save(&server, path, false, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/alice.key", dir);
    ck_assert_int_eq(lmq_keypair_save(&alice, path, false, err, sizeof err), 0);
    snprintf(yaml, sizeof yaml,
             "control: tcp://127.0.0.1:*\n"
             "devices:\n  - {name: psu1, driver: sim-psu}\n"
             "security:\n"
             "  key: server.key\n"
             "  clients:\n"
             "    - {name: alice, key: alice.key.pub, role: control}\n"
             "    - {name: bob, key: \"%s\"}\n",
             bob.public_key);
    snprintf(path, sizeof path, "%s/lab.yaml", dir);
    th_write_file(path, yaml);
    char *e = NULL;
    lmq_config_t *cfg = lmq_config_load(path, &e);
    ck_assert_msg(cfg != NULL, "%s", e);
    ck_assert_str_eq(lmq_config_server_public_key(cfg), server.public_key);
    ck_assert_uint_eq(lmq_config_client_count(cfg), 2);
    ck_assert_str_eq(lmq_config_client(cfg, 0)->public_key, alice.public_key);
    ck_assert_int_eq(lmq_config_client(cfg, 0)->role, LMQ_ROLE_CONTROL);
    ck_assert_str_eq(lmq_config_client(cfg, 1)->name, "bob");
    ck_assert_int_eq(lmq_config_client(cfg, 1)->role, LMQ_ROLE_OBSERVE); /* the default */
    lmq_config_destroy(&cfg);

    static const struct {
        const char *security, *message;
    } bad[] = {
        {"  key: server.key\n  clients:\n    - {name: alice, key: alice.key.pub, role: admin}\n",
         ":7:47: security: client 'alice': role 'admin' is not observe or control"},
        {"  key: nothere.key\n", ":5:8: security: key: cannot open key file "},
        {"  key: alice.key.pub\n", "holds only a public key"},
        {"  key: server.key\n  insecure: true\n", "insecure: true contradicts key:"},
        {"  clients:\n    - {name: alice, key: alice.key.pub}\n", "security: clients need the daemon's own key pair"},
        {"  key: server.key\n  clients:\n    - {name: alice, key: alice.key.pub}\n    - {name: alice, key: "
         "server.key.pub}\n",
         "security: client 'alice' is listed twice"},
        {"  key: server.key\n  clients:\n    - {name: a, key: alice.key.pub}\n    - {name: b, key: alice.key}\n",
         "security: clients 'a' and 'b' have the same key"},
        {"  key: server.key\n  clients:\n    - {name: \"a b\", key: alice.key.pub}\n", "client name 'a b' is invalid"},
        {"  key: server.key\n  colour: red\n", "unknown key 'colour'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(yaml, sizeof yaml,
                 "control: tcp://127.0.0.1:*\ndevices:\n  - {name: psu1, driver: sim-psu}\nsecurity:\n%s",
                 bad[i].security);
        th_write_file(path, yaml);
        e = NULL;
        cfg = lmq_config_load(path, &e);
        ck_assert_msg(cfg == NULL, "case %zu loaded", i);
        ck_assert_msg(e && strstr(e, bad[i].message), "case %zu: %s", i, e ? e : "(no message)");
        free(e);
    }
    /* A server key file that others can read. */
    snprintf(path, sizeof path, "%s/server.key", dir);
    chmod(path, 0640);
    snprintf(path, sizeof path, "%s/lab.yaml", dir);
    th_write_file(path, "devices:\n  - {name: psu1, driver: sim-psu}\nsecurity:\n  key: server.key\n");
    e = NULL;
    ck_assert_ptr_null(lmq_config_load(path, &e));
    ck_assert_msg(e && strstr(e, "has mode 0640") && strstr(e, "chmod 600"), "%s", e);
    free(e);
    th_rmtree(dir);
}
END_TEST

/* ---- labmqd and the CLI ---- */

/* Runs argv to completion (bounded) with output into dir/out; returns the
 * exit status, *out the output (caller frees). */
static int run(const char *dir, char *const argv[], char **out)
{
    char path[128];
    snprintf(path, sizeof path, "%s/out", dir);
    pid_t pid = th_spawn_to_files(argv, path, NULL);
    int status = 0;
    ck_assert_int_eq(th_wait_exit(pid, RUN_LIMIT_MS, &status), 0);
    *out = th_slurp(path);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

START_TEST(labmqd_refuses_tcp_without_keys)
{
    char dir[64], cfg[128];
    th_tempdir(dir, sizeof dir);
    snprintf(cfg, sizeof cfg, "%s/lab.yaml", dir);
    th_write_file(cfg,
                  "control: tcp://127.0.0.1:*\ndata: tcp://127.0.0.1:*\ndevices:\n  - {name: psu1, driver: sim-psu}\n");
    char *out = NULL;
    char *argv[] = {(char *)LABMQD, (char *)"--config", cfg, NULL};
    ck_assert_int_eq(run(dir, argv, &out), 1);
    ck_assert_msg(strstr(out, "labmqd: cannot start: refusing to serve tcp://127.0.0.1:* without CURVE keys"), "%s",
                  out);
    free(out);
    /* insecure: true starts, with a warning; SIGTERM stops it. */
    th_write_file(cfg, "control: tcp://127.0.0.1:*\ndata: tcp://127.0.0.1:*\ndevices:\n  - {name: psu1, driver: "
                       "sim-psu}\nsecurity: {insecure: true}\n");
    char path[128];
    snprintf(path, sizeof path, "%s/out", dir);
    pid_t pid = th_spawn_to_files(argv, path, NULL);
    double end = th_now_ms() + RUN_LIMIT_MS;
    char *text = NULL;
    while (th_now_ms() < end) {
        free(text);
        text = th_read_file(path);
        if (text && strstr(text, "labmqd: serving"))
            break;
        usleep(20000);
    }
    ck_assert_msg(text && strstr(text, "warn  auth: INSECURE: serving tcp://127.0.0.1:*"), "%s", text ? text : "");
    free(text);
    kill(pid, SIGTERM);
    int status;
    ck_assert_int_eq(th_wait_exit(pid, RUN_LIMIT_MS, &status), 0);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    th_rmtree(dir);
}
END_TEST

START_TEST(cli_with_keys_against_labmqd)
{
    char dir[64], path[160], err[300];
    th_tempdir(dir, sizeof dir);
    /* Keys as an operator makes them: labmq keygen. */
    const char *names[] = {"server", "alice", "bob"};
    char *out = NULL;
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s.key", dir, names[i]);
        char *argv[] = {(char *)CLI, (char *)"keygen", (char *)"-o", path, NULL};
        ck_assert_int_eq(run(dir, argv, &out), 0);
        ck_assert_msg(strstr(out, "public key: "), "%s", out);
        free(out);
    }
    /* Without -o the pair is printed, in the key file's format. */
    char *print_argv[] = {(char *)CLI, (char *)"keygen", NULL};
    ck_assert_int_eq(run(dir, print_argv, &out), 0);
    ck_assert_msg(strstr(out, "curve\n    public-key = \"") && strstr(out, "    secret-key = \""), "%s", out);
    free(out);
    char *argv_again[] = {(char *)CLI, (char *)"keygen", (char *)"-o", path, NULL};
    ck_assert_int_eq(run(dir, argv_again, &out), 1);
    ck_assert_msg(strstr(out, "File exists"), "%s", out);
    free(out);
    lmq_keypair_t server;
    snprintf(path, sizeof path, "%s/server.key", dir);
    ck_assert_msg(lmq_keypair_load(&server, path, true, err, sizeof err) == 0, "%s", err);

    /* A free loopback port: bind one and let it go. */
    void *ctx = zmq_ctx_new();
    void *probe = zmq_socket(ctx, ZMQ_ROUTER);
    ck_assert_int_eq(zmq_bind(probe, "tcp://127.0.0.1:*"), 0);
    char ep[64], data_ep[64];
    size_t len = sizeof ep;
    zmq_getsockopt(probe, ZMQ_LAST_ENDPOINT, ep, &len);
    void *probe2 = zmq_socket(ctx, ZMQ_XPUB);
    ck_assert_int_eq(zmq_bind(probe2, "tcp://127.0.0.1:*"), 0);
    len = sizeof data_ep;
    zmq_getsockopt(probe2, ZMQ_LAST_ENDPOINT, data_ep, &len);
    zmq_close(probe);
    zmq_close(probe2);
    zmq_ctx_term(ctx);

    char yaml[600], cfg[128];
    snprintf(yaml, sizeof yaml,
             "control: %s\ndata: %s\ndevices:\n  - {name: psu1, driver: sim-psu}\n"
             "  - {name: daq1, driver: sim-daq, options: {sample_rate: 1000, block_size: 100}}\n"
             "security:\n  key: server.key\n  clients:\n"
             "    - {name: alice, key: alice.key.pub, role: control}\n"
             "    - {name: bob, key: bob.key.pub, role: observe}\n",
             ep, data_ep);
    snprintf(cfg, sizeof cfg, "%s/lab.yaml", dir);
    th_write_file(cfg, yaml);
    char log_path[128];
    snprintf(log_path, sizeof log_path, "%s/labmqd.log", dir);
    char *dargv[] = {(char *)LABMQD, (char *)"--config", cfg, NULL};
    pid_t daemon = th_spawn_to_files(dargv, log_path, NULL);

    char alice_key[128], bob_key[128], server_pub[128];
    snprintf(alice_key, sizeof alice_key, "%s/alice.key", dir);
    snprintf(bob_key, sizeof bob_key, "%s/bob.key", dir);
    snprintf(server_pub, sizeof server_pub, "%s/server.key.pub", dir);
    /* alice sets (retrying while labmqd starts). */
    char *set_argv[] = {(char *)CLI,       (char *)"-e",   ep,
                        (char *)"--key",   alice_key,      (char *)"--server-key",
                        server_pub,        (char *)"set",  (char *)"psu1",
                        (char *)"voltage", (char *)"1.25", NULL};
    int rc = -1;
    out = NULL;
    for (double end = th_now_ms() + RUN_LIMIT_MS; rc != 0 && th_now_ms() < end;) {
        free(out);
        out = NULL;
        rc = run(dir, set_argv, &out);
    }
    ck_assert_msg(rc == 0, "%s", out);
    free(out);
    /* bob reads, with the server key given as Z85 through the environment. */
    setenv("LABMQ_SERVER_KEY", server.public_key, 1);
    setenv("LABMQ_KEY", bob_key, 1);
    char *get_argv[] = {(char *)CLI, (char *)"-e", ep, (char *)"get", (char *)"psu1", (char *)"voltage", NULL};
    ck_assert_int_eq(run(dir, get_argv, &out), 0);
    ck_assert_msg(strstr(out, "1.25 V"), "%s", out);
    free(out);
    char *bob_set[] = {(char *)CLI,    (char *)"-e",      ep,          (char *)"set",
                       (char *)"psu1", (char *)"voltage", (char *)"2", NULL};
    ck_assert_int_eq(run(dir, bob_set, &out), 1);
    ck_assert_msg(strstr(out, "labmq: PERMISSION: client 'bob' has role observe; set needs control"), "%s", out);
    free(out);
    /* record hands the keys to labmq-recorder. */
    char h5[128];
    snprintf(h5, sizeof h5, "%s/run.h5", dir);
    char *rec[] = {(char *)CLI,          (char *)"-e",  ep,  (char *)"record", (char *)"daq1/wave", (char *)"-o", h5,
                   (char *)"--duration", (char *)"0.5", NULL};
    ck_assert_int_eq(run(dir, rec, &out), 0);
    free(out);
    ck_assert_int_eq(access(h5, R_OK), 0);
    /* Without keys: refused, and told why that may be. */
    unsetenv("LABMQ_SERVER_KEY");
    unsetenv("LABMQ_KEY");
    char *plain[] = {(char *)CLI, (char *)"-e", ep, (char *)"-t", (char *)"500", (char *)"ping", NULL};
    ck_assert_int_eq(run(dir, plain, &out), 1);
    ck_assert_msg(strstr(out, "no daemon answers"), "%s", out);
    free(out);
    /* A key without the server's key is a usage error. */
    char *half[] = {(char *)CLI, (char *)"-e", ep, (char *)"--key", alice_key, (char *)"ping", NULL};
    ck_assert_int_eq(run(dir, half, &out), 2);
    ck_assert_msg(strstr(out, "--server-key"), "%s", out);
    free(out);
    kill(daemon, SIGTERM);
    int status;
    ck_assert_int_eq(th_wait_exit(daemon, RUN_LIMIT_MS, &status), 0);
    char *log = th_slurp(log_path);
    ck_assert_msg(strstr(log, "audit: alice set psu1.voltage 1.25 -> OK"), "%s", log);
    ck_assert_msg(strstr(log, "audit: bob set psu1.voltage 2") && strstr(log, "-> PERMISSION: client 'bob'"), "%s",
                  log);
    ck_assert_msg(strstr(log, "does not use CURVE") || strstr(log, "without CURVE keys"), "%s", log);
    free(log);
    th_rmtree(dir);
}
END_TEST

/* Two free loopback endpoints (bound, then let go). */
static void free_endpoints(char *a, char *b, size_t n)
{
    void *ctx = zmq_ctx_new();
    void *s1 = zmq_socket(ctx, ZMQ_ROUTER), *s2 = zmq_socket(ctx, ZMQ_ROUTER);
    ck_assert_int_eq(zmq_bind(s1, "tcp://127.0.0.1:*"), 0);
    ck_assert_int_eq(zmq_bind(s2, "tcp://127.0.0.1:*"), 0);
    size_t len = n;
    zmq_getsockopt(s1, ZMQ_LAST_ENDPOINT, a, &len);
    len = n;
    zmq_getsockopt(s2, ZMQ_LAST_ENDPOINT, b, &len);
    zmq_close(s1);
    zmq_close(s2);
    zmq_ctx_term(ctx);
}

START_TEST(c_example_with_keys)
{
    char dir[64], path[160], err[300], ep[64], data_ep[64];
    th_tempdir(dir, sizeof dir);
    lmq_keypair_t server, alice;
    keypair(&server);
    keypair(&alice);
    snprintf(path, sizeof path, "%s/server.key", dir);
    ck_assert_int_eq(lmq_keypair_save(&server, path, false, err, sizeof err), 0);
    char alice_key[128];
    snprintf(alice_key, sizeof alice_key, "%s/alice.key", dir);
    ck_assert_int_eq(lmq_keypair_save(&alice, alice_key, false, err, sizeof err), 0);
    /* The example's lab, with an allow-list. */
    char *lab = th_slurp(SIM_LAB);
    size_t len = strlen(lab) + 400;
    char *yaml = malloc(len);
    snprintf(yaml, len,
             "%s\nsecurity:\n  key: server.key\n  clients:\n    - {name: alice, key: \"%s\", role: control}\n", lab,
             alice.public_key);
    free(lab);
    char cfg[128];
    snprintf(cfg, sizeof cfg, "%s/lab.yaml", dir);
    th_write_file(cfg, yaml);
    free(yaml);
    free_endpoints(ep, data_ep, sizeof ep);
    char log_path[128];
    snprintf(log_path, sizeof log_path, "%s/labmqd.log", dir);
    char *dargv[] = {(char *)LABMQD, (char *)"--config", cfg, (char *)"--control", ep, (char *)"--data", data_ep, NULL};
    pid_t daemon = th_spawn_to_files(dargv, log_path, NULL);
    char *out = NULL;
    char *argv[] = {(char *)IV_SCAN,        (char *)"--endpoint", ep,
                    (char *)"--wait",       (char *)"20",         (char *)"--seconds",
                    (char *)"0.3",          (char *)"--key",      alice_key,
                    (char *)"--server-key", server.public_key,    NULL};
    int rc = run(dir, argv, &out);
    ck_assert_msg(rc == 0, "iv_scan exited %d:\n%s", rc, out);
    free(out);
    /* Without keys the example finds no daemon that answers it. */
    char *plain[] = {(char *)IV_SCAN, (char *)"--endpoint", ep, (char *)"--seconds", (char *)"0.3", NULL};
    ck_assert_int_eq(run(dir, plain, &out), 1);
    free(out);
    kill(daemon, SIGTERM);
    int status;
    ck_assert_int_eq(th_wait_exit(daemon, RUN_LIMIT_MS, &status), 0);
    char *log = th_slurp(log_path);
    ck_assert_msg(strstr(log, "audit: alice set psu1.output true -> OK"), "%s", log);
    free(log);
    th_rmtree(dir);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("security");
    TCase *tc = tcase_create("security");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, peer_name_helper);
    tcase_add_test(tc, keygen_files_load_and_secret_permissions_are_checked);
    tcase_add_test(tc, config_security_block);
    tcase_add_test(tc, control_client_works_and_is_audited);
    tcase_add_test(tc, observe_role_reads_but_cannot_write);
    tcase_add_test(tc, lock_holder_is_the_authenticated_client);
    tcase_add_test(tc, unknown_client_is_refused_and_logged);
    tcase_add_test(tc, null_security_peer_is_refused_and_logged);
    tcase_add_test(tc, refusals_are_logged_at_a_bounded_rate);
    tcase_add_test(tc, wrong_server_key_is_refused_and_logged);
    tcase_add_test(tc, tcp_without_keys_needs_insecure);
    tcase_add_test(tc, local_ipc_peer_is_local);
    tcase_add_test(tc, inproc_peer_with_keys_is_local_and_may_control);
    tcase_add_test(tc, labmqd_refuses_tcp_without_keys);
    tcase_add_test(tc, cli_with_keys_against_labmqd);
    tcase_add_test(tc, c_example_with_keys);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return th_run_suite(suite()); }
