/* labmqd, the program: command line, --check-config, start-up, refusing a
 * second daemon on the same endpoint, and a clean exit on SIGTERM/SIGINT.
 *
 * The real binary runs as a child started with posix_spawn (a test may hold a
 * ZeroMQ context, and fork after that is unsafe). Each test gets its own
 * XDG_RUNTIME_DIR, so the default endpoints are private to it. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "labmq/labmq.h"

extern char **environ;

#define LABMQD LMQ_BUILD_DIR "/workers/labmqd/labmqd"
/* Generous: under AddressSanitizer on two loaded cores start-up is slow. */
#define START_TIMEOUT_MS 20000
#define STOP_TIMEOUT_MS 10000

static struct {
    char dir[64];        /* also XDG_RUNTIME_DIR */
    char config[128];    /* a good config */
    char control[160];   /* the default control endpoint under dir */
    pid_t daemon;
} t;

static const char lab_yaml[] = "devices:\n"
                               "  - name: psu1\n"
                               "    driver: sim-psu\n"
                               "    options: {load_ohms: 50}\n"
                               "  - name: daq1\n"
                               "    driver: sim-daq\n";

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

/* The whole file as a string (caller frees); "" when missing. */
static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = calloc(1, 65536);
    ck_assert_ptr_nonnull(buf);
    if (f) {
        size_t n = fread(buf, 1, 65535, f);
        buf[n] = '\0';
        fclose(f);
    }
    return buf;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void setup(void)
{
    snprintf(t.dir, sizeof t.dir, "/tmp/lmq-test-labmqd-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(t.dir));
    setenv("XDG_RUNTIME_DIR", t.dir, 1);
    snprintf(t.config, sizeof t.config, "%s/lab.yaml", t.dir);
    write_file(t.config, lab_yaml);
    snprintf(t.control, sizeof t.control, "ipc://%s/labmq/control", t.dir);
    t.daemon = 0;
}

/* Check ends a test process on a failed assertion; the daemon must not
 * outlive it. */
static void teardown(void)
{
    if (t.daemon > 0) {
        kill(t.daemon, SIGKILL);
        waitpid(t.daemon, NULL, 0);
        t.daemon = 0;
    }
    nftw(t.dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

/* Starts labmqd with the given arguments (NULL-terminated), stdout and
 * stderr into out_path. */
static pid_t spawn_labmqd(const char *out_path, ...)
{
    char *argv[16] = {(char *)LABMQD};
    int argc = 1;
    va_list ap;
    va_start(ap, out_path);
    for (char *a; argc < 15 && (a = va_arg(ap, char *)) != NULL;)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;

    posix_spawn_file_actions_t fa;
    ck_assert_int_eq(posix_spawn_file_actions_init(&fa), 0);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    ck_assert_msg(rc == 0, "posix_spawn %s: %s", argv[0], strerror(rc));
    return pid;
}

/* Waits up to timeout_ms; returns the wait status, or -1 on timeout (the
 * child is then killed). */
static int wait_exit(pid_t pid, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        ck_assert_msg(r == 0, "waitpid: %s", strerror(errno));
        if (now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return -1;
        }
        usleep(10000);
    }
}

/* Runs labmqd to completion; returns its exit code, output in *out. */
#define run_labmqd(out, ...) run_labmqd_(out, __VA_ARGS__, (char *)NULL)
static int run_labmqd_(char **out, ...)
{
    char path[128];
    snprintf(path, sizeof path, "%s/out.txt", t.dir);
    char *argv[8] = {0};
    int argc = 0;
    va_list ap;
    va_start(ap, out);
    for (char *a; argc < 7 && (a = va_arg(ap, char *)) != NULL;)
        argv[argc++] = a;
    va_end(ap);
    pid_t pid = spawn_labmqd(path, argv[0], argv[1], argv[2], argv[3], argv[4], argv[5], argv[6], (char *)NULL);
    int status = wait_exit(pid, START_TIMEOUT_MS);
    *out = read_file(path);
    ck_assert_msg(status != -1, "labmqd did not exit; output:\n%s", *out);
    ck_assert_msg(WIFEXITED(status), "labmqd died (status %d); output:\n%s", status, *out);
    return WEXITSTATUS(status);
}

/* Starts the daemon in the background and waits for its "serving" line. */
static void start_daemon(const char *log_path, const char *a1, const char *a2, const char *a3, const char *a4)
{
    t.daemon = spawn_labmqd(log_path, "--config", t.config, a1, a2, a3, a4, (char *)NULL);
    int64_t deadline = now_ms() + START_TIMEOUT_MS;
    for (;;) {
        char *log = read_file(log_path);
        bool ready = strstr(log, "labmqd: serving") != NULL;
        int status;
        if (!ready && waitpid(t.daemon, &status, WNOHANG) == t.daemon) {
            t.daemon = 0;
            ck_abort_msg("labmqd exited during start-up (status %d):\n%s", status, log);
        }
        free(log);
        if (ready)
            return;
        ck_assert_msg(now_ms() < deadline, "labmqd not ready after %d ms", START_TIMEOUT_MS);
        usleep(20000);
    }
}

static void stop_daemon(int sig)
{
    ck_assert_int_eq(kill(t.daemon, sig), 0);
    int status = wait_exit(t.daemon, STOP_TIMEOUT_MS);
    t.daemon = 0;
    ck_assert_msg(status != -1, "labmqd did not stop within %d ms of signal %d", STOP_TIMEOUT_MS, sig);
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
    char *out;
    ck_assert_int_eq(run_labmqd(&out, "--help"), 0);
    ck_assert_msg(strstr(out, "--config") && strstr(out, "--check-config") && strstr(out, "devices:") &&
                      strstr(out, "sim-psu") && strstr(out, "Exit status"),
                  "%s", out);
    free(out);

    ck_assert_int_eq(run_labmqd(&out, "--version"), 0);
    ck_assert_msg(strstr(out, LMQ_VERSION_STRING) != NULL, "%s", out);
    free(out);

    ck_assert_int_eq(run_labmqd(&out, "--bogus"), 2);
    ck_assert_msg(strstr(out, "--help") != NULL, "%s", out);
    free(out);

    /* No config: a usage error that says what is missing. */
    ck_assert_int_eq(run_labmqd(&out, "--log-level", "info"), 2);
    ck_assert_msg(strstr(out, "--config") != NULL, "%s", out);
    free(out);

    ck_assert_int_eq(run_labmqd(&out, "--config", t.config, "--log-level", "loud"), 2);
    ck_assert_msg(strstr(out, "loud") != NULL, "%s", out);
    free(out);
}
END_TEST

START_TEST(test_check_config)
{
    char *out;
    ck_assert_int_eq(run_labmqd(&out, "--check-config", "--config", t.config), 0);
    ck_assert_msg(strstr(out, "psu1") && strstr(out, "sim-psu") && strstr(out, "load_ohms=50") &&
                      strstr(out, "daq1") && strstr(out, t.control),
                  "%s", out);
    free(out);
    /* Checking only looks: the runtime directory is not created. */
    char dir[128];
    snprintf(dir, sizeof dir, "%s/labmq", t.dir);
    struct stat st;
    ck_assert_int_ne(lstat(dir, &st), 0);

    ck_assert_int_eq(run_labmqd(&out, "-n", "-c", t.config, "--control", "tcp://127.0.0.1:7000"), 0);
    ck_assert_msg(strstr(out, "tcp://127.0.0.1:7000") != NULL, "%s", out);
    free(out);

    char bad[128], want[200];
    snprintf(bad, sizeof bad, "%s/bad.yaml", t.dir);
    write_file(bad, "devices:\n  - name: psu1\n    driver: sim-psu\n  speed: 9\n");
    ck_assert_int_eq(run_labmqd(&out, "--check-config", "--config", bad), 1);
    snprintf(want, sizeof want, "%s:4:", bad); /* file:line:column */
    ck_assert_msg(strstr(out, want) != NULL, "%s", out);
    free(out);

    write_file(bad, "devices:\n  - name: psu1\n    driver: sim-psu\n    options: {fps: 3}\n");
    ck_assert_int_eq(run_labmqd(&out, "--check-config", "--config", bad), 1);
    snprintf(want, sizeof want, "%s:4:15: device 'psu1': option 'fps'", bad);
    ck_assert_msg(strstr(out, want) != NULL, "%s", out);
    free(out);

    snprintf(bad, sizeof bad, "%s/missing.yaml", t.dir);
    ck_assert_int_eq(run_labmqd(&out, "--check-config", "--config", bad), 1);
    ck_assert_msg(strstr(out, bad) != NULL, "%s", out);
    free(out);
}
END_TEST

START_TEST(test_serve_and_refuse_second)
{
    char log1[128], *out;
    snprintf(log1, sizeof log1, "%s/labmqd1.log", t.dir);
    start_daemon(log1, NULL, NULL, NULL, NULL);
    char *log = read_file(log1);
    ck_assert_msg(strstr(log, "serving 2 devices") && strstr(log, t.control), "%s", log);
    free(log);

    /* The runtime directory was made private. */
    char dir[128];
    snprintf(dir, sizeof dir, "%s/labmq", t.dir);
    struct stat st;
    ck_assert_int_eq(lstat(dir, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0700);

    ck_assert_int_eq(run_labmqd(&out, "--config", t.config), 1);
    ck_assert_msg(strstr(out, "already") && strstr(out, t.control), "%s", out);
    free(out);

    /* The first one is unharmed. */
    void *zctx = zmq_ctx_new();
    ping(zctx, t.control);
    zmq_ctx_term(zctx);

    stop_daemon(SIGTERM);
    log = read_file(log1);
    ck_assert_msg(strstr(log, "Sanitizer") == NULL, "%s", log);
    free(log);
}
END_TEST

START_TEST(test_overrides_and_sigint)
{
    char log1[128], control[160], data[160];
    snprintf(log1, sizeof log1, "%s/labmqd.log", t.dir);
    snprintf(control, sizeof control, "ipc://%s/c", t.dir);
    snprintf(data, sizeof data, "ipc://%s/d", t.dir);
    start_daemon(log1, "--control", control, "--data", data);
    void *zctx = zmq_ctx_new();
    ping(zctx, control);
    lmq_proxy_t *p = lmq_proxy_new(zctx, control, "psu1");
    double v = -1;
    ck_assert_int_eq(lmq_proxy_get_double(p, "voltage", &v), 0);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(zctx);
    stop_daemon(SIGINT);
}
END_TEST

static Suite *labmqd_suite(void)
{
    Suite *s = suite_create("labmqd");
    TCase *tc = tcase_create("cli");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_help);
    tcase_add_test(tc, test_check_config);
    tcase_add_test(tc, test_serve_and_refuse_second);
    tcase_add_test(tc, test_overrides_and_sigint);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(labmqd_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
