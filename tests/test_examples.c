/* The examples, end to end: a real labmqd on examples/sim-lab.yaml, the C
 * iv_scan and the Python iv_scan.py run against it as separate processes, the
 * way a user runs them. Checks their exit status, that the printed I-V curve
 * rises, and that no stream block was lost.
 *
 * Children are started with posix_spawn: a test creates its ZeroMQ context
 * (for the readiness ping) before spawning, and fork after that is unsafe. */
#include <check.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "labmq/labmq.h"

#define IV_SCAN LMQ_BUILD_DIR "/examples/iv_scan"
#define IV_SCAN_PY LMQ_SOURCE_DIR "/examples/python/iv_scan.py"
#define SIM_LAB LMQ_SOURCE_DIR "/examples/sim-lab.yaml"
#define PYTHON "/usr/bin/python3"
#define RULES_PY LMQ_SOURCE_DIR "/tests/iv_scan_rules.py"

/* Generous: under AddressSanitizer on two loaded cores everything is slow. */
#define RUN_TIMEOUT_MS 60000

/* Runs argv to completion with its output into out_path; returns the wait
 * status. An overrun is a failure (the child is killed first). */
static int run_to_file(char *const argv[], const char *out_path, const char *what)
{
    int status;
    if (th_wait_exit(th_spawn_to_files(argv, out_path, NULL), RUN_TIMEOUT_MS, &status) != 0)
        ck_abort_msg("%s did not finish within %d ms", what, RUN_TIMEOUT_MS);
    return status;
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
    const char *l = strstr(s, "lost ");
    ck_assert_msg(l && sscanf(l, "lost %llu", &lost) == 1, "%s: stream report unreadable:\n%s", what, out);
    const char *colon = strchr(s, ':');
    ck_assert_msg(colon && sscanf(colon + 1, " %llu blocks", &blocks) == 1, "%s: no block count:\n%s", what, out);
    ck_assert_msg(blocks >= 3, "%s: only %llu stream blocks in a second:\n%s", what, blocks, out);
    ck_assert_msg(lost == 0, "%s: %llu stream blocks lost:\n%s", what, lost, out);
}

/* Runs one example (cmd: program and script, NULL-terminated) against a fresh
 * lab: it must exit 0 and print a rising I-V curve with no block lost. */
static void check_example(const char *what, char *const cmd[])
{
    th_daemon_t lab;
    th_daemon_start_config(&lab, SIM_LAB);
    char out_path[256];
    snprintf(out_path, sizeof out_path, "%s/%s.out", lab.dir, what);
    char *argv[8];
    int n = 0;
    while (*cmd)
        argv[n++] = *cmd++;
    argv[n++] = "--endpoint";
    argv[n++] = lab.control;
    argv[n] = NULL;
    int status = run_to_file(argv, out_path, what);
    char *out = th_slurp(out_path);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s failed (status 0x%x):\n%s", what,
                  (unsigned)status, out);
    check_output(what, out);
    free(out);
    th_daemon_finish(&lab); /* SIGTERM, as service managers stop it: must exit 0 */
}

START_TEST(c_example)
{
    char *const cmd[] = {IV_SCAN, NULL};
    check_example("iv_scan", cmd);
}
END_TEST

START_TEST(python_example)
{
    ck_assert_msg(access(PYTHON, X_OK) == 0, PYTHON " is missing: run scripts/setup-deps.sh");
    /* The data endpoint is left to the script: it asks the daemon (ping). */
    char *const cmd[] = {PYTHON, IV_SCAN_PY, NULL};
    check_example("iv_scan.py", cmd);
}
END_TEST

/* The Python client keeps the rules of docs/protocol.md 2.5 (UNREACHABLE,
 * TIMEOUT and a fresh socket, stale replies dropped): tests/iv_scan_rules.py
 * drives it against a hung device and a dead endpoint. */
START_TEST(python_client_timeout_rules)
{
    th_daemon_t lab;
    th_daemon_start_config(&lab, SIM_LAB);
    char out_path[256], dead[256];
    snprintf(out_path, sizeof out_path, "%s/rules.out", lab.dir);
    snprintf(dead, sizeof dead, "ipc://%s/nobody", lab.dir);
    char *argv[] = {PYTHON, RULES_PY, lab.control, dead, NULL};
    int status = run_to_file(argv, out_path, "iv_scan_rules.py");
    char *out = th_slurp(out_path);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0 && strstr(out, "ok\n"),
                  "iv_scan_rules.py failed (status 0x%x):\n%s", (unsigned)status, out);
    free(out);
    th_daemon_finish(&lab);
}
END_TEST

/* No daemon: both examples must say so and exit 1 promptly, not hang. */
START_TEST(no_daemon)
{
    char dir[64];
    th_tempdir(dir, sizeof dir);
    char ep[128], out_path[128];
    snprintf(ep, sizeof ep, "ipc://%s/control", dir);
    snprintf(out_path, sizeof out_path, "%s/out", dir);

    char *c_argv[] = {IV_SCAN, "--endpoint", ep, NULL};
    char *py_argv[] = {PYTHON, IV_SCAN_PY, "--endpoint", ep, NULL};
    char *const *argvs[] = {c_argv, py_argv};
    for (int k = 0; k < 2; k++) {
        int status = run_to_file(argvs[k], out_path, argvs[k][0]);
        char *out = th_slurp(out_path);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "%s: expected exit 1, got 0x%x:\n%s",
                      argvs[k][0], (unsigned)status, out);
        ck_assert_msg(strstr(out, "no labmqd answers") != NULL, "%s: unclear message:\n%s", argvs[k][0], out);
        free(out);
    }
    th_rmtree(dir);
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
    tcase_add_test(tc, python_client_timeout_rules);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return th_run_suite(examples_suite());
}
