/* labmqd, the program: command line, --check-config, start-up, refusing a
 * second daemon on the same endpoint, and a clean exit on SIGTERM/SIGINT.
 *
 * The real binary runs as a child started with posix_spawn (a test may hold a
 * ZeroMQ context, and fork after that is unsafe). Each test gets its own
 * XDG_RUNTIME_DIR, so the default endpoints are private to it. */
#include <check.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "harness.h"
#include "labmq/labmq.h"

#define LABMQD LMQ_BUILD_DIR "/workers/labmqd/labmqd"
/* Generous: under AddressSanitizer on two loaded cores start-up is slow. */
#define START_TIMEOUT_MS 20000
#define STOP_TIMEOUT_MS 10000

typedef struct fixture {
    char dir[64];      /* also XDG_RUNTIME_DIR */
    char config[128];  /* a good config */
    char control[160]; /* the default control endpoint under dir */
    pid_t daemon;
} fixture_t;

static const char lab_yaml[] = "devices:\n"
                               "  - name: psu1\n"
                               "    driver: sim-psu\n"
                               "    options: {load_ohms: 50}\n"
                               "  - name: daq1\n"
                               "    driver: sim-daq\n";

static void setup(fixture_t *t)
{
    memset(t, 0, sizeof *t);
    th_tempdir(t->dir, sizeof t->dir);
    setenv("XDG_RUNTIME_DIR", t->dir, 1);
    snprintf(t->config, sizeof t->config, "%s/lab.yaml", t->dir);
    th_write_file(t->config, lab_yaml);
    snprintf(t->control, sizeof t->control, "ipc://%s/labmq/control", t->dir);
}

/* A failed check ends the test process and Check kills its process group,
 * the daemon with it; this is the normal end of a test. */
static void teardown(fixture_t *t)
{
    if (t->daemon > 0) {
        kill(t->daemon, SIGKILL);
        waitpid(t->daemon, NULL, 0);
        t->daemon = 0;
    }
    th_rmtree(t->dir);
}

/* Starts labmqd ("--config config" first unless config is NULL, then the
 * NULL-terminated words in ap), stdout and stderr into out_path. */
static pid_t spawn_labmqd(const char *out_path, const char *config, va_list ap)
{
    char *argv[16] = {(char *)LABMQD};
    int argc = 1;
    if (config) {
        argv[argc++] = (char *)"--config";
        argv[argc++] = (char *)config;
    }
    for (char *a; argc < 15 && (a = va_arg(ap, char *)) != NULL;)
        argv[argc++] = a;
    argv[argc] = NULL;
    return th_spawn_to_files(argv, out_path, NULL);
}

/* Runs labmqd to completion; returns its exit code, output in *out. */
#define run_labmqd(t, out, ...) run_labmqd_(t, out, __VA_ARGS__, (char *)NULL)
static int run_labmqd_(fixture_t *t, char **out, ...)
{
    char path[128];
    snprintf(path, sizeof path, "%s/out.txt", t->dir);
    va_list ap;
    va_start(ap, out);
    pid_t pid = spawn_labmqd(path, NULL, ap);
    va_end(ap);
    int status;
    int rc = th_wait_exit(pid, START_TIMEOUT_MS, &status);
    *out = th_slurp(path);
    ck_assert_msg(rc == 0, "labmqd did not exit; output:\n%s", *out);
    ck_assert_msg(WIFEXITED(status), "labmqd died (status %d); output:\n%s", status, *out);
    return WEXITSTATUS(status);
}

/* Starts the daemon on the good config with the NULL-terminated extra
 * arguments, in the background, and waits for its "serving" line. */
static void start_daemon(fixture_t *t, const char *log_path, ...)
{
    va_list ap;
    va_start(ap, log_path);
    t->daemon = spawn_labmqd(log_path, t->config, ap);
    va_end(ap);
    double deadline = th_now_ms() + START_TIMEOUT_MS;
    for (;;) {
        char *log = th_slurp(log_path);
        bool ready = strstr(log, "labmqd: serving") != NULL;
        int status;
        if (!ready && waitpid(t->daemon, &status, WNOHANG) == t->daemon) {
            t->daemon = 0;
            ck_abort_msg("labmqd exited during start-up (status %d):\n%s", status, log);
        }
        free(log);
        if (ready)
            return;
        ck_assert_msg(th_now_ms() < deadline, "labmqd not ready after %d ms", START_TIMEOUT_MS);
        usleep(20000);
    }
}

static void stop_daemon(fixture_t *t, int sig)
{
    ck_assert_int_eq(kill(t->daemon, sig), 0);
    int status;
    int rc = th_wait_exit(t->daemon, STOP_TIMEOUT_MS, &status);
    t->daemon = 0;
    ck_assert_msg(rc == 0, "labmqd did not stop within %d ms of signal %d", STOP_TIMEOUT_MS, sig);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "labmqd exit status %d after signal %d", status,
                  sig);
}

static void ping(void *zctx, const char *endpoint)
{
    lmq_proxy_t *p = lmq_proxy_new(zctx, endpoint, NULL);
    ck_assert_ptr_nonnull(p);
    lmq_proxy_set_timeout(p, START_TIMEOUT_MS);
    char *json = NULL;
    int rc = lmq_proxy_ping(p, &json);
    ck_assert_msg(rc == 0, "ping %s: %s (%s)", endpoint, lmq_strerror(rc), lmq_proxy_last_error(p));
    ck_assert_msg(strstr(json, "labmqd") != NULL, "%s", json);
    free(json);
    lmq_proxy_destroy(&p);
}

START_TEST(test_help)
{
    fixture_t t;
    setup(&t);
    char *out;
    ck_assert_int_eq(run_labmqd(&t, &out, "--help"), 0);
    ck_assert_msg(strstr(out, "--config") && strstr(out, "--check-config") && strstr(out, "devices:") &&
                      strstr(out, "sim-psu") && strstr(out, "Exit status"),
                  "%s", out);
    free(out);

    ck_assert_int_eq(run_labmqd(&t, &out, "--version"), 0);
    ck_assert_msg(strstr(out, LMQ_VERSION_STRING) != NULL, "%s", out);
    free(out);

    ck_assert_int_eq(run_labmqd(&t, &out, "--bogus"), 2);
    ck_assert_msg(strstr(out, "--help") != NULL, "%s", out);
    free(out);

    /* No config: a usage error that says what is missing. */
    ck_assert_int_eq(run_labmqd(&t, &out, "--log-level", "info"), 2);
    ck_assert_msg(strstr(out, "--config") != NULL, "%s", out);
    free(out);

    ck_assert_int_eq(run_labmqd(&t, &out, "--config", t.config, "--log-level", "loud"), 2);
    ck_assert_msg(strstr(out, "loud") != NULL, "%s", out);
    free(out);
    teardown(&t);
}
END_TEST

START_TEST(test_check_config)
{
    fixture_t t;
    setup(&t);
    char *out;
    ck_assert_int_eq(run_labmqd(&t, &out, "--check-config", "--config", t.config), 0);
    ck_assert_msg(strstr(out, "psu1") && strstr(out, "sim-psu") && strstr(out, "load_ohms=50") &&
                      strstr(out, "daq1") && strstr(out, t.control),
                  "%s", out);
    free(out);
    /* Checking only looks: the runtime directory is not created. */
    char dir[128];
    snprintf(dir, sizeof dir, "%s/labmq", t.dir);
    struct stat st;
    ck_assert_int_ne(lstat(dir, &st), 0);

    /* A tcp endpoint without keys would be refused at start: the check says so. */
    ck_assert_int_eq(run_labmqd(&t, &out, "-n", "-c", t.config, "--control", "tcp://127.0.0.1:7000"), 1);
    ck_assert_msg(strstr(out, "control:   tcp://127.0.0.1:7000") && strstr(out, "tcp://127.0.0.1:7000 needs CURVE keys"),
                  "%s", out);
    free(out);

    char bad[128], want[200];
    snprintf(bad, sizeof bad, "%s/bad.yaml", t.dir);
    th_write_file(bad, "devices:\n  - name: psu1\n    driver: sim-psu\n  speed: 9\n");
    ck_assert_int_eq(run_labmqd(&t, &out, "--check-config", "--config", bad), 1);
    snprintf(want, sizeof want, "%s:4:", bad); /* file:line:column */
    ck_assert_msg(strstr(out, want) != NULL, "%s", out);
    free(out);

    th_write_file(bad, "devices:\n  - name: psu1\n    driver: sim-psu\n    options: {fps: 3}\n");
    ck_assert_int_eq(run_labmqd(&t, &out, "--check-config", "--config", bad), 1);
    snprintf(want, sizeof want, "%s:4:15: device 'psu1': option 'fps'", bad);
    ck_assert_msg(strstr(out, want) != NULL, "%s", out);
    free(out);

    /* A driver's own configuration (the scpi driver's instrument description,
     * read by its configure) is checked too, not only the YAML's shape. */
    th_write_file(bad, "devices:\n  - name: psu\n    driver: scpi\n    connection: tcp:127.0.0.1:1\n"
                       "    options: {model: no-such-description.yaml}\n");
    ck_assert_int_eq(run_labmqd(&t, &out, "--check-config", "--config", bad), 1);
    ck_assert_msg(strstr(out, "device 'psu'") && strstr(out, "no-such-description.yaml"), "%s", out);
    free(out);

    snprintf(bad, sizeof bad, "%s/missing.yaml", t.dir);
    ck_assert_int_eq(run_labmqd(&t, &out, "--check-config", "--config", bad), 1);
    ck_assert_msg(strstr(out, bad) != NULL, "%s", out);
    free(out);
    teardown(&t);
}
END_TEST

START_TEST(test_serve_and_refuse_second)
{
    fixture_t t;
    setup(&t);
    char log1[128], *out;
    snprintf(log1, sizeof log1, "%s/labmqd1.log", t.dir);
    start_daemon(&t, log1, (char *)NULL);
    char *log = th_slurp(log1);
    ck_assert_msg(strstr(log, "serving 2 devices") && strstr(log, t.control), "%s", log);
    free(log);

    /* The runtime directory was made private. */
    char dir[128];
    snprintf(dir, sizeof dir, "%s/labmq", t.dir);
    struct stat st;
    ck_assert_int_eq(lstat(dir, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0700);

    ck_assert_int_eq(run_labmqd(&t, &out, "--config", t.config), 1);
    ck_assert_msg(strstr(out, "already") && strstr(out, t.control), "%s", out);
    free(out);

    /* The first one is unharmed. */
    void *zctx = zmq_ctx_new();
    ping(zctx, t.control);
    zmq_ctx_term(zctx);

    stop_daemon(&t, SIGTERM);
    log = th_slurp(log1);
    ck_assert_msg(strstr(log, "Sanitizer") == NULL, "%s", log);
    free(log);
    teardown(&t);
}
END_TEST

START_TEST(test_overrides_and_sigint)
{
    fixture_t t;
    setup(&t);
    char log1[128], control[160], data[160];
    snprintf(log1, sizeof log1, "%s/labmqd.log", t.dir);
    snprintf(control, sizeof control, "ipc://%s/c", t.dir);
    snprintf(data, sizeof data, "ipc://%s/d", t.dir);
    start_daemon(&t, log1, "--control", control, "--data", data, (char *)NULL);
    void *zctx = zmq_ctx_new();
    ping(zctx, control);
    lmq_proxy_t *p = lmq_proxy_new(zctx, control, "psu1");
    lmq_proxy_set_timeout(p, START_TIMEOUT_MS);
    double v = -1;
    ck_assert_int_eq(lmq_proxy_get_double(p, "voltage", &v), 0);
    /* The daemon reports the overridden data endpoint, publishes there, and
     * left the default one alone. */
    char reported[200];
    ck_assert_int_eq(lmq_proxy_data_endpoint(p, reported, sizeof reported), 0);
    ck_assert_str_eq(reported, data);
    lmq_sub_t *sub = lmq_sub_new(zctx, data, "daq1/wave");
    ck_assert_ptr_nonnull(sub);
    lmq_frame_t *f = NULL;
    int rc = lmq_sub_recv(sub, &f, START_TIMEOUT_MS);
    ck_assert_msg(rc == 0, "no daq1/wave block at %s: %s", data, lmq_status_name(rc));
    ck_assert_str_eq(lmq_frame_units(f), "V");
    lmq_frame_destroy(&f);
    lmq_sub_destroy(&sub);
    char default_data[160];
    snprintf(default_data, sizeof default_data, "%s/labmq/data", t.dir);
    ck_assert_msg(access(default_data, F_OK) != 0, "the default data endpoint %s was bound too", default_data);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(zctx);
    stop_daemon(&t, SIGINT);
    teardown(&t);
}
END_TEST

/* A device stuck in its driver (a plain 60 s sleep, as vendor code might)
 * delays neither start-up (its open blocks 1.5 s) nor, beyond stop_grace, the
 * stop: labmqd names it and exits with status 3. */
START_TEST(test_stuck_driver_bounded_stop)
{
    char dir[64], config[128], control[160], log[128];
    th_tempdir(dir, sizeof dir);
    snprintf(config, sizeof config, "%s/lab.yaml", dir);
    snprintf(control, sizeof control, "ipc://%s/control", dir);
    snprintf(log, sizeof log, "%s/labmqd.log", dir);
    char yaml[600];
    snprintf(yaml, sizeof yaml,
             "stop_grace: 1\n"
             "devices:\n"
             "  - name: stuck\n    driver: %s\n"
             "  - name: opener\n    driver: %s\n    options: {open_ms: 1500}\n"
             "  - name: psu1\n    driver: sim-psu\n",
             STUCK_DRIVER, STUCK_DRIVER);
    th_write_file(config, yaml);
    char data[160];
    snprintf(data, sizeof data, "ipc://%s/data", dir);
    char *argv[] = {LABMQD, "--config", config, "--control", control, "--data", data, NULL};
    double t0 = th_now_ms();
    pid_t pid = th_spawn_to_files(argv, log, NULL);
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *psu = lmq_proxy_new(ctx, control, "psu1"), *stuck = lmq_proxy_new(ctx, control, "stuck");
    double v;
    lmq_proxy_set_timeout(psu, 200);
    while (lmq_proxy_get_double(psu, "voltage", &v) != 0 && th_now_ms() - t0 < START_TIMEOUT_MS)
        ;
    /* psu1 served while "opener" is still in its 1.5 s open(): start-up did not wait (a loaded machine
     * may take longer to start at all, so this compares with the open, not with a clock) */
    lmq_proxy_t *op = lmq_proxy_new(ctx, control, NULL);
    char *list = NULL;
    ck_assert_int_eq(lmq_proxy_list(op, &list), 0);
    ck_assert_msg(strstr(list, "\"opening\"") || th_now_ms() - t0 > 1500, "%s", list);
    free(list);
    lmq_proxy_set_timeout(stuck, 300);
    ck_assert_int_eq(lmq_proxy_get_double(stuck, "slow", &v), LMQ_ETIMEOUT);
    lmq_proxy_destroy(&psu);
    lmq_proxy_destroy(&stuck);
    lmq_proxy_destroy(&op);
    zmq_ctx_term(ctx);
    t0 = th_now_ms();
    kill(pid, SIGTERM);
    int st;
    ck_assert_int_eq(th_wait_exit(pid, STOP_TIMEOUT_MS, &st), 0);
    double took = th_now_ms() - t0;
    char *text = th_slurp(log);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 3, "status 0x%x:\n%s", (unsigned)st, text);
    ck_assert_msg(took >= 900 && took < 5000, "stopped after %.0f ms with stop_grace 1 s", took);
    ck_assert_msg(strstr(text, "stuck") && strstr(text, "get slow"), "%s", text);
    free(text);
    th_rmtree(dir);
}
END_TEST

/* Under systemd (Type=notify): READY=1 once clients can connect,
 * RELOADING=1 then READY=1 around a reload, STOPPING=1 when told to stop. */
START_TEST(test_systemd_notify)
{
    char dir[64], config[128], sock_path[128], log[128], control[160], data[160];
    th_tempdir(dir, sizeof dir);
    snprintf(config, sizeof config, "%s/lab.yaml", dir);
    snprintf(sock_path, sizeof sock_path, "%s/notify", dir);
    snprintf(log, sizeof log, "%s/labmqd.log", dir);
    snprintf(control, sizeof control, "ipc://%s/control", dir);
    snprintf(data, sizeof data, "ipc://%s/data", dir);
    th_write_file(config, lab_yaml);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    ck_assert_uint_lt(strlen(sock_path), sizeof sa.sun_path);
    memcpy(sa.sun_path, sock_path, strlen(sock_path) + 1);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = {START_TIMEOUT_MS / 1000, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setenv("NOTIFY_SOCKET", sock_path, 1);
    char *argv[] = {LABMQD, "--config", config, "--control", control, "--data", data, NULL};
    pid_t pid = th_spawn_to_files(argv, log, NULL);
    unsetenv("NOTIFY_SOCKET");
    char buf[700];
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    ck_assert_msg(n > 0, "no READY=1 from labmqd");
    buf[n] = 0;
    ck_assert_msg(!strncmp(buf, "READY=1\n", 8) && strstr(buf, "STATUS=serving 2 devices"), "%s", buf);
    /* and it does serve by then */
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = lmq_proxy_new(ctx, control, NULL);
    char *pong = NULL;
    ck_assert_int_eq(lmq_proxy_ping(p, &pong), 0);
    free(pong);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    /* SIGHUP: RELOADING=1 with the monotonic time (systemd >= 253 wants
     * it), then READY=1 once the reload is done; a device added shows in
     * the status. */
    th_write_file(config, "devices:\n  - name: psu1\n    driver: sim-psu\n    options: {load_ohms: 50}\n"
                          "  - name: daq1\n    driver: sim-daq\n  - name: psu2\n    driver: sim-psu\n");
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    unsigned long long before_us = (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000;
    kill(pid, SIGHUP);
    n = recv(fd, buf, sizeof buf - 1, 0);
    ck_assert_msg(n > 0, "no RELOADING=1 from labmqd");
    buf[n] = 0;
    unsigned long long usec = 0;
    ck_assert_msg(sscanf(buf, "RELOADING=1\nMONOTONIC_USEC=%llu", &usec) == 1 && usec >= before_us, "%s", buf);
    n = recv(fd, buf, sizeof buf - 1, 0);
    ck_assert_msg(n > 0, "no READY=1 after the reload");
    buf[n] = 0;
    ck_assert_msg(!strncmp(buf, "READY=1\n", 8) && strstr(buf, "STATUS=serving 3 devices"), "%s", buf);
    kill(pid, SIGTERM);
    n = recv(fd, buf, sizeof buf - 1, 0);
    ck_assert_msg(n > 0, "no STOPPING=1 from labmqd");
    buf[n] = 0;
    ck_assert_str_eq(buf, "STOPPING=1");
    int st;
    ck_assert_int_eq(th_wait_exit(pid, STOP_TIMEOUT_MS, &st), 0);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(fd);
    th_rmtree(dir);
}
END_TEST

static Suite *labmqd_suite(void)
{
    Suite *s = suite_create("labmqd");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_help);
    tcase_add_test(tc, test_check_config);
    tcase_add_test(tc, test_serve_and_refuse_second);
    tcase_add_test(tc, test_overrides_and_sigint);
    tcase_add_test(tc, test_stuck_driver_bounded_stop);
    tcase_add_test(tc, test_systemd_notify);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return th_run_suite(labmqd_suite());
}
