/* labmq — tests of the labmq command-line client.
 *
 * Each test runs an in-process daemon (sim-psu as psu1, sim-daq as daq1) on
 * ipc endpoints in a fresh temporary directory, then runs the real CLI binary
 * with posix_spawn (never fork: this process has a ZeroMQ context and daemon
 * threads) and checks its exit code, stdout and stderr. */
#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"

#define CLI_PATH LMQ_BUILD_DIR "/tools/labmq"
#define MAX_ARGS 32
/* Any single CLI run in these tests finishes in well under this. */
#define RUN_LIMIT_MS 20000
/* main() makes one directory for the whole run and names it here; each test
 * works below it, and main removes it even when a failed check skipped a
 * test's own cleanup. */
#define BASE_ENV "LMQ_TEST_CLI_DIR"

typedef struct fixture {
    char dir[96];
    char control[160];
    char data[160];
    char out_path[160];
    char err_path[160];
    void *zctx;
    lmq_daemon_t *daemon;
} fixture_t;

typedef struct result {
    int code; /* exit status; -1 when killed by a signal */
    char *out;
    char *err;
    double secs;
} result_t;

static void fx_init(fixture_t *f, bool with_daemon)
{
    memset(f, 0, sizeof *f);
    const char *base = getenv(BASE_ENV);
    snprintf(f->dir, sizeof f->dir, "%s/t-XXXXXX", base ? base : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(f->dir));
    snprintf(f->control, sizeof f->control, "ipc://%s/control", f->dir);
    snprintf(f->data, sizeof f->data, "ipc://%s/data", f->dir);
    snprintf(f->out_path, sizeof f->out_path, "%s/stdout", f->dir);
    snprintf(f->err_path, sizeof f->err_path, "%s/stderr", f->dir);
    f->zctx = zmq_ctx_new();
    ck_assert_ptr_nonnull(f->zctx);
    if (!with_daemon)
        return;
    f->daemon = lmq_daemon_new(f->zctx, f->control, f->data, NULL);
    ck_assert_ptr_nonnull(f->daemon);
    const lmq_driver_t *psu = lmq_driver_find("sim-psu"), *daq = lmq_driver_find("sim-daq");
    ck_assert_ptr_nonnull(psu);
    ck_assert_ptr_nonnull(daq);
    ck_assert_int_eq(lmq_daemon_add(f->daemon, "psu1", psu, "", NULL), 0);
    ck_assert_int_eq(lmq_daemon_add(f->daemon, "daq1", daq, "", NULL), 0);
    int rc = lmq_daemon_start(f->daemon);
    ck_assert_msg(rc == 0, "daemon start: %d %s", rc, lmq_daemon_last_error(f->daemon));
    ck_assert_msg(lmq_daemon_wait_ready(f->daemon, 20000) == 0, "%s", lmq_daemon_last_error(f->daemon));
}

static void fx_fini(fixture_t *f)
{
    lmq_daemon_destroy(&f->daemon);
    zmq_ctx_term(f->zctx);
    th_rmtree(f->dir);
}

static void result_free(result_t *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof *r);
}

/* Starts the CLI with "--endpoint CONTROL" and the NULL-terminated words in
 * ap; its stdout and stderr go to files in the fixture's directory. */
static pid_t spawn_cli_v(fixture_t *f, const char *first, va_list ap)
{
    char *argv[MAX_ARGS + 4];
    int n = 0;
    argv[n++] = (char *)CLI_PATH;
    argv[n++] = (char *)"--endpoint";
    argv[n++] = f->control;
    for (const char *a = first; a; a = va_arg(ap, const char *)) {
        ck_assert_int_lt(n, MAX_ARGS);
        argv[n++] = (char *)a;
    }
    argv[n] = NULL;
    return th_spawn_to_files(argv, f->out_path, f->err_path);
}

static pid_t spawn_cli(fixture_t *f, const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    pid_t pid = spawn_cli_v(f, first, ap);
    va_end(ap);
    return pid;
}

/* Waits for the CLI started at t0 (th_now_ms) and collects its output. */
static result_t wait_cli(fixture_t *f, pid_t pid, double t0)
{
    result_t r = {0};
    int status = 0;
    double left = RUN_LIMIT_MS - (th_now_ms() - t0);
    if (th_wait_exit(pid, left > 0 ? (int)left : 0, &status) != 0)
        ck_abort_msg("the CLI did not finish within %d ms", RUN_LIMIT_MS);
    r.secs = (th_now_ms() - t0) / 1000;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = th_slurp(f->out_path);
    r.err = th_slurp(f->err_path);
    return r;
}

/* Runs the CLI to completion: run(&f, "get", "psu1", "voltage", NULL). */
static result_t run(fixture_t *f, const char *first, ...)
{
    double t0 = th_now_ms();
    va_list ap;
    va_start(ap, first);
    pid_t pid = spawn_cli_v(f, first, ap);
    va_end(ap);
    return wait_cli(f, pid, t0);
}

#define ck_assert_contains(hay, needle)                                                                      \
    ck_assert_msg(strstr((hay), (needle)) != NULL, "expected '%s' in:\n%s", (needle), (hay))

#define ck_assert_exit(r, want)                                                                              \
    ck_assert_msg((r).code == (want), "exit %d, expected %d\nstdout:\n%s\nstderr:\n%s", (r).code, (want),     \
                  (r).out, (r).err)

/* ---- tests ---- */

START_TEST(test_ls_lists_devices)
{
    fixture_t f;
    fx_init(&f, true);
    result_t r = run(&f, "ls", NULL);
    ck_assert_exit(r, 0);
    ck_assert_contains(r.out, "NAME");
    ck_assert_contains(r.out, "psu1");
    ck_assert_contains(r.out, "sim-psu");
    ck_assert_contains(r.out, "daq1");
    ck_assert_contains(r.out, "sim-daq");
    ck_assert_contains(r.out, "ready");
    ck_assert_str_eq(r.err, "");
    result_free(&r);
    fx_fini(&f);
}
END_TEST

START_TEST(test_describe_shows_members)
{
    fixture_t f;
    fx_init(&f, true);
    result_t r = run(&f, "describe", "psu1", NULL);
    ck_assert_exit(r, 0);
    ck_assert_contains(r.out, "sim-psu");
    ck_assert_contains(r.out, "voltage");
    ck_assert_contains(r.out, "current_limit");
    ck_assert_contains(r.out, "measured_current");
    ck_assert_contains(r.out, "PROPERTY");
    ck_assert_contains(r.out, " ro ");
    ck_assert_contains(r.out, " rw ");
    ck_assert_contains(r.out, "sweep(start: float V, stop: float V, points: int)");
    result_free(&r);

    r = run(&f, "describe", "daq1", NULL);
    ck_assert_exit(r, 0);
    ck_assert_contains(r.out, "read(channel: int)");
    ck_assert_contains(r.out, "wave");
    ck_assert_contains(r.out, "<f8");
    ck_assert_contains(r.out, "Hz");
    result_free(&r);
    fx_fini(&f);
}
END_TEST

START_TEST(test_set_get_round_trip)
{
    /* Each row: set psu1 PROP VALUE, then get PROP (with --json when json). */
    static const struct {
        const char *prop, *value;
        bool json;
        const char *want;
    } cases[] = {
        {"voltage", "3.3", false, "3.3 V\n"},
        /* An integer where a float is expected is sent as a float. */
        {"current_limit", "1", true, "1.0\n"},
        {"output", "on", false, "true\n"},
    };
    fixture_t f;
    fx_init(&f, true);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        result_t r = run(&f, "set", "psu1", cases[i].prop, cases[i].value, NULL);
        ck_assert_exit(r, 0);
        result_free(&r);
        r = run(&f, "get", "psu1", cases[i].prop, cases[i].json ? "--json" : NULL, NULL);
        ck_assert_exit(r, 0);
        ck_assert_str_eq(r.out, cases[i].want);
        result_free(&r);
    }
    fx_fini(&f);
}
END_TEST

START_TEST(test_call_with_args)
{
    fixture_t f;
    fx_init(&f, true);
    result_t r = run(&f, "call", "daq1", "read", "0", NULL);
    ck_assert_exit(r, 0);
    char *end = NULL;
    strtod(r.out, &end);
    ck_assert_msg(end != r.out && strcmp(end, " V\n") == 0, "read printed '%s'", r.out);
    result_free(&r);

    /* "2" goes to a float argument as a float: no ARG error from the daemon. */
    r = run(&f, "call", "daq1", "write_ao", "0", "2", NULL);
    ck_assert_exit(r, 0);
    ck_assert_str_eq(r.out, "");
    result_free(&r);

    /* The supply refuses to sweep with its output off, as real ones do. */
    r = run(&f, "set", "psu1", "output", "true", NULL);
    ck_assert_exit(r, 0);
    result_free(&r);
    r = run(&f, "call", "psu1", "sweep", "0", "1", "3", NULL);
    ck_assert_exit(r, 0);
    ck_assert_contains(r.out, "<f8 [3, 2]");
    ck_assert_contains(r.out, "min ");
    result_free(&r);
    fx_fini(&f);
}
END_TEST

START_TEST(test_errors_are_clear)
{
    /* Each row: a command that must fail with exit 1, nothing on stdout and
     * every listed text on stderr. */
    static const struct {
        const char *argv[5]; /* NULL-terminated */
        const char *err[3];  /* NULL-terminated unless full */
    } cases[] = {
        {{"call", "daq1", "read", "abc"}, {"labmq: ARG: ", "channel", "abc"}},
        {{"call", "daq1", "read"}, {"labmq: ARG: ", "channel: int"}},
        {{"get", "psu9", "voltage"}, {"labmq: NOTFOUND: ", "psu9"}},
        /* The properties that exist are listed. */
        {{"get", "psu1", "nosuch"}, {"labmq: NOTFOUND: ", "nosuch", "current_limit"}},
        {{"call", "psu1", "explode"}, {"labmq: NOTFOUND: "}},
        {{"set", "psu1", "output", "maybe"}, {"labmq: ARG: "}},
        /* A negative number is a value, not an option: the daemon's range check answers. */
        {{"set", "psu1", "voltage", "-1"}, {"labmq: RANGE: "}},
        {{"set", "psu1", "measured_current", "1"}, {"labmq: READONLY: "}},
        {{"watch", "daq1/nosuch"}, {"labmq: NOTFOUND: ", "wave"}},
    };
    const size_t nerr = sizeof cases[0].err / sizeof cases[0].err[0];
    fixture_t f;
    fx_init(&f, true);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *const *a = cases[i].argv;
        result_t r = run(&f, a[0], a[1], a[2], a[3], a[4], NULL);
        ck_assert_msg(r.code == 1 && r.out[0] == '\0', "case %zu (%s %s %s): exit %d\nstdout:\n%s\nstderr:\n%s", i,
                      a[0], a[1], a[2] ? a[2] : "", r.code, r.out, r.err);
        for (size_t k = 0; k < nerr && cases[i].err[k]; k++)
            ck_assert_msg(strstr(r.err, cases[i].err[k]) != NULL, "case %zu: expected '%s' in:\n%s", i,
                          cases[i].err[k], r.err);
        result_free(&r);
    }
    fx_fini(&f);
}
END_TEST

START_TEST(test_usage_errors)
{
    fixture_t f;
    fx_init(&f, false); /* usage is checked before any daemon is asked */
    static const char *const cases[][4] = {
        {"frobnicate", NULL},
        {"--bogus", "ls", NULL},
        {"get", "psu1", NULL},
        {"describe", NULL},
        {"ls", "extra", NULL},
        {"watch", "daq1/", NULL},
        {"ls", "--count", "3", NULL},
        {"--timeout", "soon", "ls", NULL},
        {"--timeout", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        result_t r = run(&f, cases[i][0], cases[i][1], cases[i][2], cases[i][3], NULL);
        ck_assert_msg(r.code == 2, "case %zu (%s %s): exit %d, stderr:\n%s", i, cases[i][0],
                      cases[i][1] ? cases[i][1] : "", r.code, r.err);
        ck_assert_contains(r.err, "labmq: ");
        ck_assert_contains(r.err, "--help");
        result_free(&r);
    }
    result_t r = run(&f, NULL);
    ck_assert_exit(r, 2);
    result_free(&r);

    r = run(&f, "--help", NULL);
    ck_assert_exit(r, 0);
    ck_assert_contains(r.out, "Exit status");
    ck_assert_contains(r.out, "labmq call daq1 read 0");
    result_free(&r);

    r = run(&f, "--version", NULL);
    ck_assert_exit(r, 0);
    ck_assert_contains(r.out, LMQ_VERSION_STRING);
    result_free(&r);
    fx_fini(&f);
}
END_TEST

static json_t *parse_json(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);
    ck_assert_msg(j != NULL, "not JSON (%s):\n%s", jerr.text, text);
    return j;
}

START_TEST(test_json_output)
{
    fixture_t f;
    fx_init(&f, true);
    result_t r = run(&f, "--json", "ls", NULL);
    ck_assert_exit(r, 0);
    json_t *j = parse_json(r.out);
    ck_assert(json_is_array(j));
    ck_assert_uint_eq(json_array_size(j), 2);
    json_decref(j);
    result_free(&r);

    r = run(&f, "describe", "psu1", "--json", NULL);
    ck_assert_exit(r, 0);
    j = parse_json(r.out);
    ck_assert(json_is_array(json_object_get(j, "properties")));
    json_decref(j);
    result_free(&r);

    r = run(&f, "--json", "ping", NULL);
    ck_assert_exit(r, 0);
    j = parse_json(r.out);
    ck_assert_str_eq(json_string_value(json_object_get(j, "data")), f.data);
    json_decref(j);
    result_free(&r);

    r = run(&f, "set", "psu1", "output", "true", "--json", NULL);
    ck_assert_exit(r, 0);
    ck_assert_str_eq(r.out, "null\n");
    result_free(&r);
    r = run(&f, "--json", "call", "psu1", "sweep", "0", "2", "5", NULL);
    ck_assert_exit(r, 0);
    j = parse_json(r.out);
    ck_assert_str_eq(json_string_value(json_object_get(j, "dtype")), "<f8");
    ck_assert_uint_eq(json_array_size(json_object_get(j, "data")), 10);
    json_decref(j);
    result_free(&r);

    r = run(&f, "--json", "stats", NULL);
    ck_assert_exit(r, 0);
    j = parse_json(r.out);
    ck_assert(json_is_array(json_object_get(j, "devices")));
    json_decref(j);
    result_free(&r);
    fx_fini(&f);
}
END_TEST

START_TEST(test_ping_and_stats)
{
    fixture_t f;
    fx_init(&f, true);
    result_t r = run(&f, "ping", NULL);
    ck_assert_exit(r, 0);
    ck_assert_contains(r.out, "labmqd");
    ck_assert_contains(r.out, f.data);
    result_free(&r);

    r = run(&f, "get", "psu1", "voltage", NULL);
    ck_assert_exit(r, 0);
    result_free(&r);
    r = run(&f, "stats", NULL);
    ck_assert_exit(r, 0);
    ck_assert_contains(r.out, "DEVICE");
    ck_assert_contains(r.out, "P99");
    ck_assert_contains(r.out, "psu1");
    ck_assert_msg(!strstr(r.out, "SUBSCRIPTION"), "a subscriber table without subscribers:\n%s", r.out);
    result_free(&r);

    /* A flow subscription shows in its own table. */
    void *ctx = zmq_ctx_new();
    lmq_sub_opts_t o = {.mode = LMQ_SUB_LOSSLESS, .window = 16};
    lmq_sub_t *sub = lmq_sub_new_opts(ctx, f.control, "daq1/wave", &o);
    lmq_frame_t *fr = NULL;
    ck_assert_int_eq(lmq_sub_recv(sub, &fr, 5000), 0);
    lmq_frame_destroy(&fr);
    r = run(&f, "stats", NULL);
    ck_assert_exit(r, 0);
    ck_assert_contains(r.out, "SUBSCRIPTION");
    ck_assert_contains(r.out, "HELD BYTES");
    ck_assert_contains(r.out, "lossless");
    ck_assert_contains(r.out, "daq1/wave");
    result_free(&r);
    lmq_sub_destroy(&sub);
    zmq_ctx_term(ctx);
    fx_fini(&f);
}
END_TEST

START_TEST(test_watch_counts_blocks)
{
    fixture_t f;
    fx_init(&f, true);
    /* --duration only guards against a stream that never comes. */
    result_t r = run(&f, "watch", "daq1/wave", "--count", "5", "--duration", "15", NULL);
    ck_assert_exit(r, 0);
    ck_assert_contains(r.out, "daq1/wave  5 blocks");
    ck_assert_contains(r.out, "lost 0");
    ck_assert_contains(r.out, "restarts 0");
    ck_assert_contains(r.out, "[1000] <f8");
    result_free(&r);

    r = run(&f, "--json", "watch", "daq1/wave", "-n", "3", "--duration", "15", NULL);
    ck_assert_exit(r, 0);
    json_t *j = parse_json(r.out);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "blocks")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "lost")), 0);
    ck_assert_str_eq(json_string_value(json_object_get(j, "units")), "V");
    json_decref(j);
    result_free(&r);
    fx_fini(&f);
}
END_TEST

START_TEST(test_watch_sigint_summarises)
{
    fixture_t f;
    fx_init(&f, true);
    double t0 = th_now_ms();
    pid_t pid = spawn_cli(&f, "watch", "daq1/wave", "--duration", "15", NULL);
    /* Interrupt only once blocks flow: into a file watch prints a line per
     * second, and before its first line it may not yet catch the signal. */
    for (bool flowing = false; !flowing;) {
        ck_assert_msg(th_now_ms() - t0 < 10000, "watch printed no live line within 10 s");
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        char *out = th_slurp(f.out_path);
        flowing = strstr(out, "blocks/s") != NULL;
        free(out);
    }
    double t_sig = th_now_ms();
    ck_assert_int_eq(kill(pid, SIGINT), 0);
    result_t r = wait_cli(&f, pid, t0);
    double stop_ms = th_now_ms() - t_sig;
    ck_assert_exit(r, 0);
    /* watch polls a signalfd beside its socket, so it reacts at once; 3 s
     * leaves room for its summary and a sanitizer's exit on a loaded machine,
     * and is far below the 15 s a watch that missed the signal would run. */
    ck_assert_msg(stop_ms < 3000, "watch took %.0f ms to stop after SIGINT", stop_ms);
    ck_assert_contains(r.out, "blocks/s");
    ck_assert_contains(r.out, "lost 0");
    result_free(&r);
    fx_fini(&f);
}
END_TEST

/* `watch DEV`: another client's set and a disconnect appear as they happen. */
START_TEST(test_watch_device_events)
{
    fixture_t f;
    fx_init(&f, true);
    double t0 = th_now_ms();
    pid_t pid = spawn_cli(&f, "watch", "psu1", "--count", "3", NULL);
    /* until watch says it is watching, and its subscription has reached the daemon */
    for (bool ready = false; !ready;) {
        ck_assert_msg(th_now_ms() - t0 < 10000, "watch did not start within 10 s");
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        char *out = th_slurp(f.out_path);
        ready = strstr(out, "watching psu1") != NULL;
        free(out);
    }
    struct timespec ts = {0, 300 * 1000 * 1000};
    nanosleep(&ts, NULL);
    lmq_proxy_t *p = lmq_proxy_new(f.zctx, f.control, "psu1");
    lmq_value_t v = lmq_float(1.25), s = {0};
    ck_assert_int_eq(lmq_proxy_set(p, "voltage", &v), 0);
    lmq_value_set_string(&s, "disconnect:200");
    ck_assert_int_eq(lmq_proxy_set(p, "fault", &s), 0);
    lmq_value_clear(&s);
    result_t r = wait_cli(&f, pid, t0);
    ck_assert_exit(r, 0);
    ck_assert_contains(r.out, "psu1.voltage = 1.25 (set)");
    ck_assert_contains(r.out, "psu1.fault = \"disconnect:200\" (set)");
    ck_assert_contains(r.out, "psu1 is disconnected (lost): ");
    result_free(&r);
    lmq_proxy_destroy(&p);
    fx_fini(&f);
}
END_TEST

START_TEST(test_no_daemon)
{
    fixture_t f;
    fx_init(&f, false);
    result_t r = run(&f, "--timeout", "500", "ls", NULL);
    ck_assert_exit(r, 1);
    ck_assert_contains(r.err, "labmq: no daemon answers at ");
    ck_assert_contains(r.err, f.control);
    ck_assert_contains(r.err, "is labmqd running?");
    ck_assert_msg(r.secs < 1.5, "took %.2f s with a 500 ms timeout", r.secs);
    result_free(&r);

    r = run(&f, "--timeout", "500", "get", "psu1", "voltage", NULL);
    ck_assert_exit(r, 1);
    ck_assert_contains(r.err, "no daemon answers");
    result_free(&r);
    fx_fini(&f);
}
END_TEST

static Suite *cli_suite(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ls_lists_devices);
    tcase_add_test(tc, test_describe_shows_members);
    tcase_add_test(tc, test_set_get_round_trip);
    tcase_add_test(tc, test_call_with_args);
    tcase_add_test(tc, test_errors_are_clear);
    tcase_add_test(tc, test_usage_errors);
    tcase_add_test(tc, test_json_output);
    tcase_add_test(tc, test_ping_and_stats);
    tcase_add_test(tc, test_watch_counts_blocks);
    tcase_add_test(tc, test_watch_device_events);
    tcase_add_test(tc, test_watch_sigint_summarises);
    tcase_add_test(tc, test_no_daemon);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    char base[] = "/tmp/labmq-test-cli-XXXXXX";
    if (!mkdtemp(base)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    setenv(BASE_ENV, base, 1);
    int status = th_run_suite(cli_suite());
    th_rmtree(base);
    return status;
}
