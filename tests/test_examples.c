/* The examples, end to end: a real labmqd on examples/sim-lab.yaml, the C
 * iv_scan and the Python iv_scan.py run against it as separate processes, the
 * way a user runs them. Checks their exit status, that the printed I-V curve
 * rises, and that no stream block was lost.
 *
 * Children are started with posix_spawn: a test creates its ZeroMQ context
 * (for the readiness ping) before spawning, and fork after that is unsafe. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
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
#define IV_SCAN LMQ_BUILD_DIR "/examples/iv_scan"
#define IV_SCAN_PY LMQ_SOURCE_DIR "/examples/python/iv_scan.py"
#define SIM_LAB LMQ_SOURCE_DIR "/examples/sim-lab.yaml"
#define PYTHON "/usr/bin/python3"

/* Generous: under AddressSanitizer on two loaded cores everything is slow. */
#define START_TIMEOUT_MS 20000
#define RUN_TIMEOUT_MS 60000

static struct lab {
    char dir[64];
    char control[128], data[128], log[128];
    pid_t daemon;
} lab;

/* Check exits the test process on a failed assertion; this makes sure the
 * daemon does not outlive it. */
static void kill_daemon(void)
{
    if (lab.daemon > 0) {
        kill(lab.daemon, SIGKILL);
        waitpid(lab.daemon, NULL, 0);
        lab.daemon = 0;
    }
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Starts argv with stdout and stderr into out_path (so a large output cannot
 * block the child on a full pipe) and stdin from /dev/null. */
static pid_t spawn_to_file(char *const argv[], const char *out_path)
{
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

/* Waits for pid up to timeout_ms; kills it when it overruns. Returns the wait status. */
static int wait_for(pid_t pid, int timeout_ms, const char *what)
{
    int64_t deadline = now_ms() + timeout_ms;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        ck_assert_msg(r == 0, "waitpid %s: %s", what, strerror(errno));
        if (now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            ck_abort_msg("%s did not finish within %d ms", what, timeout_ms);
        }
        usleep(20000);
    }
}

/* The whole file as a string (caller frees). */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "open %s: %s", path, strerror(errno));
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2)
            buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    ck_assert_ptr_nonnull(buf);
    buf[len] = '\0';
    return buf;
}

static void lab_start(void)
{
    snprintf(lab.dir, sizeof lab.dir, "/tmp/lmq-test-ex.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(lab.dir));
    snprintf(lab.control, sizeof lab.control, "ipc://%s/control", lab.dir);
    snprintf(lab.data, sizeof lab.data, "ipc://%s/data", lab.dir);
    snprintf(lab.log, sizeof lab.log, "%s/labmqd.log", lab.dir);
    atexit(kill_daemon);

    char *argv[] = {LABMQD, "--config", SIM_LAB, "--control", lab.control, "--data", lab.data, NULL};
    lab.daemon = spawn_to_file(argv, lab.log);

    /* Ready = answers a ping. */
    void *zctx = zmq_ctx_new();
    ck_assert_ptr_nonnull(zctx);
    lmq_proxy_t *p = lmq_proxy_new(zctx, lab.control, NULL);
    ck_assert_ptr_nonnull(p);
    lmq_proxy_set_timeout(p, 500);
    int64_t deadline = now_ms() + START_TIMEOUT_MS;
    int rc;
    char *json = NULL;
    while ((rc = lmq_proxy_ping(p, &json)) != 0) {
        int status;
        if (waitpid(lab.daemon, &status, WNOHANG) == lab.daemon) {
            lab.daemon = 0;
            char *log = slurp(lab.log);
            ck_abort_msg("labmqd exited (status 0x%x) before answering:\n%s", (unsigned)status, log);
        }
        ck_assert_msg(now_ms() < deadline, "labmqd did not answer a ping within %d ms: %s", START_TIMEOUT_MS,
                      lmq_proxy_last_error(p));
    }
    free(json);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(zctx);
}

/* SIGTERM is how scripts and service managers stop the daemon: it must exit 0. */
static void lab_stop(void)
{
    ck_assert_int_eq(kill(lab.daemon, SIGTERM), 0);
    int status = wait_for(lab.daemon, START_TIMEOUT_MS, "labmqd after SIGTERM");
    lab.daemon = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char *log = slurp(lab.log);
        ck_abort_msg("labmqd ended with status 0x%x after SIGTERM:\n%s", (unsigned)status, log);
    }
    /* posix_spawn rather than system(): system() forks this (ZeroMQ) process. */
    char *argv[] = {"/bin/rm", "-rf", lab.dir, NULL};
    pid_t pid;
    if (posix_spawn(&pid, argv[0], NULL, NULL, argv, environ) == 0)
        waitpid(pid, NULL, 0);
}

/* Checks an iv_scan transcript: a table of "V_set V_meas I" rows whose
 * current rises, and a stream line with "lost 0". */
static void check_output(const char *what, const char *out)
{
    enum { MAX_ROWS = 256 };
    double cur[MAX_ROWS];
    int rows = 0;
    double v_prev = -1, i_max = 0;
    const char *line = out;
    while (line && *line) {
        /* A row is exactly three numbers on one line. */
        char row[256];
        size_t len = strcspn(line, "\n");
        snprintf(row, sizeof row, "%.*s", (int)(len < sizeof row ? len : sizeof row - 1), line);
        double vset, vmeas, i;
        char tail;
        if (sscanf(row, "%lf %lf %lf %c", &vset, &vmeas, &i, &tail) == 3) {
            ck_assert_msg(rows < MAX_ROWS, "%s: too many rows:\n%s", what, out);
            ck_assert_msg(vset > v_prev, "%s: V_set not increasing at row %d:\n%s", what, rows, out);
            ck_assert_msg(vmeas > vset - 0.05 && vmeas < vset + 0.05, "%s: V_meas %g far from V_set %g:\n%s",
                          what, vmeas, vset, out);
            cur[rows++] = i;
            if (i > i_max)
                i_max = i;
            v_prev = vset;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    ck_assert_msg(rows >= 5, "%s: expected an I-V table, got %d rows:\n%s", what, rows, out);
    /* Rising within the noise (1% of full scale), and a diode load: next to
     * nothing at 0 V, milliamps at the top. */
    for (int k = 1; k < rows; k++)
        ck_assert_msg(cur[k] >= cur[k - 1] - 0.01 * i_max, "%s: the current falls at row %d:\n%s", what, k, out);
    ck_assert_msg(cur[rows - 1] > 1e-3 && cur[rows - 1] > 10 * fabs(cur[0]),
                  "%s: the current does not rise (first %g A, last %g A):\n%s", what, cur[0], cur[rows - 1], out);

    const char *s = strstr(out, "stream ");
    ck_assert_msg(s != NULL, "%s: no stream report:\n%s", what, out);
    unsigned long long blocks = 0, lost = 1;
    const char *b = strstr(s, "blocks"), *l = strstr(s, "lost ");
    ck_assert_msg(b && l && sscanf(l, "lost %llu", &lost) == 1, "%s: stream report unreadable:\n%s", what, out);
    const char *colon = strchr(s, ':');
    ck_assert_msg(colon && sscanf(colon + 1, " %llu blocks", &blocks) == 1, "%s: no block count:\n%s", what, out);
    ck_assert_msg(blocks >= 3, "%s: only %llu stream blocks in a second:\n%s", what, blocks, out);
    ck_assert_msg(lost == 0, "%s: %llu stream blocks lost:\n%s", what, lost, out);
}

START_TEST(c_example)
{
    lab_start();
    char out_path[128];
    snprintf(out_path, sizeof out_path, "%s/iv_scan.out", lab.dir);
    char *argv[] = {IV_SCAN, "--endpoint", lab.control, NULL};
    int status = wait_for(spawn_to_file(argv, out_path), RUN_TIMEOUT_MS, "iv_scan");
    char *out = slurp(out_path);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "iv_scan failed (status 0x%x):\n%s",
                  (unsigned)status, out);
    check_output("iv_scan", out);
    free(out);
    lab_stop();
}
END_TEST

START_TEST(python_example)
{
    ck_assert_msg(access(PYTHON, X_OK) == 0, PYTHON " is missing: run scripts/setup-deps.sh");
    lab_start();
    char out_path[128];
    snprintf(out_path, sizeof out_path, "%s/iv_scan_py.out", lab.dir);
    /* The data endpoint is left to the script: it asks the daemon (ping). */
    char *argv[] = {PYTHON, IV_SCAN_PY, "--endpoint", lab.control, NULL};
    int status = wait_for(spawn_to_file(argv, out_path), RUN_TIMEOUT_MS, "iv_scan.py");
    char *out = slurp(out_path);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "iv_scan.py failed (status 0x%x):\n%s",
                  (unsigned)status, out);
    check_output("iv_scan.py", out);
    free(out);
    lab_stop();
}
END_TEST

/* No daemon: both examples must say so and exit 1 promptly, not hang. */
START_TEST(no_daemon)
{
    char dir[] = "/tmp/lmq-test-ex.XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char ep[128], out_path[128];
    snprintf(ep, sizeof ep, "ipc://%s/control", dir);
    snprintf(out_path, sizeof out_path, "%s/out", dir);

    char *c_argv[] = {IV_SCAN, "--endpoint", ep, NULL};
    char *py_argv[] = {PYTHON, IV_SCAN_PY, "--endpoint", ep, NULL};
    char *const *argvs[] = {c_argv, py_argv};
    for (int k = 0; k < 2; k++) {
        int status = wait_for(spawn_to_file(argvs[k], out_path), RUN_TIMEOUT_MS, argvs[k][0]);
        char *out = slurp(out_path);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "%s: expected exit 1, got 0x%x:\n%s",
                      argvs[k][0], (unsigned)status, out);
        ck_assert_msg(strstr(out, "no labmqd answers") != NULL, "%s: unclear message:\n%s", argvs[k][0], out);
        free(out);
    }
    unlink(out_path);
    rmdir(dir);
}
END_TEST

static Suite *examples_suite(void)
{
    Suite *s = suite_create("examples");
    TCase *tc = tcase_create("examples");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, c_example);
    tcase_add_test(tc, python_example);
    tcase_add_test(tc, no_daemon);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(examples_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
