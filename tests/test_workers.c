/* Workers under labmqd: the `workers:` config key (values and errors with
 * positions), the standard worker argv and the environment a worker gets,
 * the `workers` op as `labmq workers` shows it, the example worker's output
 * in labmqd's log, and no worker (nor a worker's child) outliving labmqd. */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"

#define CHILD LMQ_BUILD_DIR "/tests/supervise_child"
#define MEAN LMQ_BUILD_DIR "/workers/example/labmq-example-mean"
#define CLI LMQ_BUILD_DIR "/tools/labmq"

static bool alive(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'), st = 0;
    return p && sscanf(p + 1, " %c", &st) == 1 && st != 'Z';
}

static char *wait_file(const char *path, int timeout_ms)
{
    double end = th_now_ms() + timeout_ms;
    char *text;
    while (!(text = th_read_file(path)) && th_now_ms() < end)
        usleep(5000);
    ck_assert_msg(text != NULL, "%s never appeared", path);
    return text;
}

/* Runs the CLI; returns its stdout (caller frees) and its exit status. */
static char *run_cli(const th_daemon_t *d, const char *dir, bool json, int *status)
{
    char out[256];
    snprintf(out, sizeof out, "%s/cli.out", dir);
    char *argv[] = {CLI, "-e", (char *)d->control, "workers", json ? "--json" : NULL, NULL};
    pid_t pid = th_spawn_to_files(argv, out, NULL);
    ck_assert_int_eq(th_wait_exit(pid, 20000, status), 0);
    return th_slurp(out);
}

static void expect_config_error(const char *yaml, const char *message)
{
    char *err = NULL;
    lmq_config_t *cfg = lmq_config_parse(yaml, strlen(yaml), &err);
    ck_assert_ptr_null(cfg);
    ck_assert_ptr_nonnull(err);
    ck_assert_msg(strcmp(err, message) == 0, "got:      %s\nexpected: %s", err, message);
    free(err);
}

START_TEST(config_workers)
{
    const char *yaml = "devices: []\n"
                       "workers:\n"
                       "  - name: mean1\n"
                       "    program: labmq-example-mean\n"
                       "    args: [--stream, daq1/wave, --option, every=2, 10]\n"
                       "    env: [LANG=C, EMPTY=]\n"
                       "    restart: always\n"
                       "  - name: once\n"
                       "    program: /bin/true\n"
                       "    restart: never\n"
                       "  - name: bare\n"
                       "    program: ./relative/prog\n"
                       "    env: []\n";
    char *err = NULL;
    lmq_config_t *cfg = lmq_config_parse(yaml, strlen(yaml), &err);
    /* ./relative/prog does not exist: the file names it. */
    ck_assert_ptr_null(cfg);
    ck_assert_str_eq(err, "<config>:12:14: worker 'bare': program ./relative/prog: No such file or directory");
    free(err);

    char dir[128], prog[256], yaml2[1024];
    th_tempdir(dir, sizeof dir);
    snprintf(prog, sizeof prog, "%s/prog", dir);
    th_write_file(prog, "#!/bin/sh\n");
    chmod(prog, 0755);
    snprintf(yaml2, sizeof yaml2, "%.*s    program: ./prog\n    env: []\n",
             (int)(strstr(yaml, "    program: ./") - yaml), yaml);
    char path[256];
    snprintf(path, sizeof path, "%s/lab.yaml", dir);
    th_write_file(path, yaml2);
    cfg = lmq_config_load(path, &err);
    ck_assert_msg(cfg != NULL, "%s", err ? err : "");
    ck_assert_int_eq(lmq_config_worker_count(cfg), 3);
    const lmq_config_worker_t *w = lmq_config_worker(cfg, 0);
    ck_assert_str_eq(w->name, "mean1");
    ck_assert_str_eq(w->program, "labmq-example-mean");
    const char *args[] = {"--stream", "daq1/wave", "--option", "every=2", "10"};
    for (int i = 0; i < 5; i++)
        ck_assert_str_eq(w->args[i], args[i]);
    ck_assert_ptr_null(w->args[5]);
    ck_assert_str_eq(w->env[0], "LANG=C");
    ck_assert_str_eq(w->env[1], "EMPTY=");
    ck_assert_ptr_null(w->env[2]);
    ck_assert_int_eq(w->restart, LMQ_RESTART_ALWAYS);
    w = lmq_config_worker(cfg, 1);
    ck_assert_int_eq(w->restart, LMQ_RESTART_NEVER);
    ck_assert_ptr_null(w->args[0]);
    ck_assert_ptr_null(w->env); /* none given: the daemon's environment */
    w = lmq_config_worker(cfg, 2);
    char resolved[300];
    snprintf(resolved, sizeof resolved, "%s/./prog", dir);
    ck_assert_str_eq(w->program, resolved); /* relative to the file */
    ck_assert_int_eq(w->restart, LMQ_RESTART_ON_FAILURE);
    ck_assert_ptr_nonnull(w->env); /* an empty environment, given */
    ck_assert_ptr_null(w->env[0]);
    ck_assert_ptr_null(lmq_config_worker(cfg, 3));
    lmq_config_destroy(&cfg);
    th_rmtree(dir);
}
END_TEST

START_TEST(config_worker_errors_have_positions)
{
    expect_config_error("devices: []\nworkers:\n  - name: w1\n    program: x\n    restart: sometimes\n",
                        "<config>:5:14: worker 'w1': restart 'sometimes' is not one of always, on-failure, never");
    expect_config_error("devices: []\nworkers:\n  - name: w1\n    program: x\n    env: [A=1, NOEQUALS]\n",
                        "<config>:5:16: worker 'w1': env entry 'NOEQUALS' is not KEY=VALUE");
    expect_config_error("devices: []\nworkers:\n  - name: w1\n    program: x\n    argv: [a]\n",
                        "<config>:5:5: worker 'w1': unknown key 'argv' (valid keys: name, program, args, env, "
                        "restart)");
    expect_config_error("devices: []\nworkers:\n  - name: w1\n",
                        "<config>:3:5: worker 'w1': missing required key 'program'");
    expect_config_error("devices: []\nworkers:\n  - name: w1\n    program: x\n  - name: w1\n    program: y\n",
                        "<config>:5:11: worker 'w1': duplicate name (first used on line 3)");
    expect_config_error("devices: []\nworkers:\n  - name: 'bad name'\n    program: x\n",
                        "<config>:3:11: worker name 'bad name' is invalid (use 1..63 letters, digits, _ - .)");
    expect_config_error("devices: []\nworkers:\n  - name: w1\n    program: x\n    args: {a: 1}\n",
                        "<config>:5:11: workers[0].args: expected a list, found a mapping");
    expect_config_error("devices: []\nworker: []\n",
                        "<config>:2:1: unknown key 'worker' (valid keys: control, data, log_level, stop_grace, "
                        "fault_after, time_scale, subscriber_memory, devices, workers, security)");
}
END_TEST

START_TEST(labmqd_runs_lists_and_stops_its_workers)
{
    char dir[128], report[256], sleeper[256], pids[256], yaml[2048];
    th_tempdir(dir, sizeof dir);
    snprintf(report, sizeof report, "%s/report", dir);
    snprintf(sleeper, sizeof sleeper, "%s/sleeper", dir);
    snprintf(pids, sizeof pids, "%s/pids", dir);
    snprintf(yaml, sizeof yaml,
             "stop_grace: 0.5\n"
             "devices:\n"
             "  - name: daq1\n"
             "    driver: sim-daq\n"
             "    options: {channels: 1}\n"
             "workers:\n"
             "  - name: reporter\n"
             "    program: %s\n"
             "    args: [report, %s, 'two words']\n"
             "    env: [ONLY=this]\n"
             "    restart: never\n"
             "  - name: sleeper\n"
             "    program: %s\n"
             "    args: [sleep, %s]\n"
             "  - name: stubborn\n"
             "    program: %s\n"
             "    args: [stubborn, %s]\n"
             "    restart: always\n"
             "  - name: mean1\n"
             "    program: %s\n"
             "    args: [--stream, daq1/wave, --option, every=0.2]\n",
             CHILD, report, CHILD, sleeper, CHILD, pids, MEAN);
    th_daemon_t d;
    th_daemon_start(&d, yaml);

    /* The standard worker argv, then the worker's own; its environment exactly. */
    char *text = wait_file(report, 10000), expect[2048];
    snprintf(expect, sizeof expect,
             "fds: 0 1 2\ngroup leader: yes\nargv[0]=%s\nargv[1]=--control\nargv[2]=%s\nargv[3]=--data\n"
             "argv[4]=%s\nargv[5]=--name\nargv[6]=reporter\nargv[7]=report\nargv[8]=%s\nargv[9]=two words\n"
             "env=ONLY=this\n",
             CHILD, d.control, d.data, report);
    ck_assert_str_eq(text, expect);
    free(text);
    text = wait_file(sleeper, 10000);
    pid_t sleeper_pid = atoi(text);
    free(text);
    text = wait_file(pids, 10000);
    int stubborn_pid = 0, grandchild = 0;
    ck_assert_int_eq(sscanf(text, "%d %d", &stubborn_pid, &grandchild), 2);
    free(text);

    /* The workers op, through the CLI: all running after a second. */
    json_t *j = NULL;
    double end = th_now_ms() + 15000;
    int status;
    for (;;) {
        char *out = run_cli(&d, dir, true, &status);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "labmq workers --json: %s", out);
        json_decref(j);
        j = json_loads(out, 0, NULL);
        free(out);
        ck_assert_ptr_nonnull(j);
        ck_assert_int_eq(json_array_size(j), 4);
        bool settled = true;
        for (size_t i = 1; i < 4; i++)
            settled &= strcmp(json_string_value(json_object_get(json_array_get(j, i), "state")), "running") == 0;
        settled &= strcmp(json_string_value(json_object_get(json_array_get(j, 0), "state")), "exited") == 0;
        if (settled || th_now_ms() > end)
            break;
        usleep(100 * 1000);
    }
    json_t *w = json_array_get(j, 0);
    ck_assert_str_eq(json_string_value(json_object_get(w, "name")), "reporter");
    ck_assert_str_eq(json_string_value(json_object_get(w, "state")), "exited");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(w, "last_exit"), "code")), 0);
    w = json_array_get(j, 1);
    ck_assert_str_eq(json_string_value(json_object_get(w, "name")), "sleeper");
    ck_assert_str_eq(json_string_value(json_object_get(w, "state")), "running");
    ck_assert_int_eq(json_integer_value(json_object_get(w, "pid")), sleeper_pid);
    ck_assert_int_eq(json_integer_value(json_object_get(w, "restarts")), 0);
    ck_assert(json_real_value(json_object_get(w, "uptime_s")) >= 1.0);
    ck_assert(json_is_null(json_object_get(w, "last_exit")));
    ck_assert_str_eq(json_string_value(json_object_get(w, "restart")), "on-failure");
    w = json_array_get(j, 2);
    ck_assert_int_eq(json_integer_value(json_object_get(w, "pid")), stubborn_pid);
    w = json_array_get(j, 3);
    ck_assert_str_eq(json_string_value(json_object_get(w, "state")), "running");
    pid_t mean_pid = (pid_t)json_integer_value(json_object_get(w, "pid"));
    json_decref(j);

    char *out = run_cli(&d, dir, false, &status);
    ck_assert_int_eq(WEXITSTATUS(status), 0);
    ck_assert_msg(strstr(out, "WORKER") && strstr(out, "STATE") && strstr(out, "RESTARTS") && strstr(out, "UPTIME") &&
                      strstr(out, "LAST EXIT"),
                  "%s", out);
    char pid_text[32];
    snprintf(pid_text, sizeof pid_text, " %d ", (int)sleeper_pid);
    const char *line = strstr(out, "\nsleeper ");
    ck_assert_msg(line, "%s", out);
    size_t len = strcspn(line + 1, "\n");
    char row[256];
    snprintf(row, sizeof row, "%.*s", (int)len, line + 1);
    ck_assert_msg(strstr(row, " running ") && strstr(row, pid_text) && strstr(row, " -"), "%s", out);
    ck_assert_msg(strstr(out, "\nreporter  exited "), "%s", out);
    free(out);

    /* The example worker's output goes to labmqd's log. */
    end = th_now_ms() + 15000;
    char *log = NULL;
    while (th_now_ms() < end) {
        free(log);
        log = th_slurp(d.log);
        if (strstr(log, "mean1: daq1/wave: ") && strstr(log, " blocks, 0 lost, mean "))
            break;
        usleep(50 * 1000);
    }
    ck_assert_msg(strstr(log, " blocks, 0 lost, mean "), "%s", log);
    free(log);

    /* SIGTERM to labmqd: every worker gone, the one ignoring SIGTERM and its
     * child too (after the 0.5 s grace), and labmqd exits 0. */
    pid_t all[] = {sleeper_pid, stubborn_pid, mean_pid};
    for (size_t i = 0; i < 3; i++)
        ck_assert(alive(all[i]));
    ck_assert(alive(grandchild));
    status = th_daemon_stop(&d, SIGTERM);
    log = th_slurp(d.log);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s", log);
    ck_assert_msg(strstr(log, "worker stubborn (pid") && strstr(log, "killing it"), "%s", log);
    ck_assert_msg(strstr(log, "mean1: stopped by signal 15"), "%s", log);
    free(log);
    for (size_t i = 0; i < 3; i++)
        ck_assert_msg(kill(all[i], 0) == -1 && errno == ESRCH, "worker pid %d outlived labmqd", (int)all[i]);
    end = th_now_ms() + 5000;
    while (alive(grandchild) && th_now_ms() < end)
        usleep(5000);
    ck_assert_msg(!alive(grandchild), "a worker's child (%d) outlived labmqd", grandchild);
    th_rmtree(d.dir);
    th_rmtree(dir);
}
END_TEST

START_TEST(runtime_worker_stops_when_labmqd_is_killed)
{
    th_daemon_t d;
    char yaml[512];
    snprintf(yaml, sizeof yaml,
             "devices:\n  - name: daq1\n    driver: sim-daq\n    options: {channels: 1}\n"
             "workers:\n  - name: mean1\n    program: %s\n    args: [--stream, daq1/wave]\n",
             MEAN);
    th_daemon_start(&d, yaml);
    char dir[128];
    th_tempdir(dir, sizeof dir);
    pid_t mean_pid = 0;
    double end = th_now_ms() + 15000;
    while (!mean_pid && th_now_ms() < end) {
        int status;
        char *out = run_cli(&d, dir, true, &status);
        json_t *j = json_loads(out, 0, NULL);
        free(out);
        mean_pid = (pid_t)json_integer_value(json_object_get(json_array_get(j, 0), "pid"));
        json_decref(j);
        if (!mean_pid)
            usleep(20 * 1000);
    }
    ck_assert_int_gt(mean_pid, 0);
    /* Let it get past lmq_worker_new (it prints once subscribed). */
    end = th_now_ms() + 15000;
    char *log = NULL;
    while (th_now_ms() < end) {
        free(log);
        log = th_slurp(d.log);
        if (strstr(log, "mean1: averaging"))
            break;
        usleep(20 * 1000);
    }
    ck_assert_msg(strstr(log, "mean1: averaging"), "%s", log);
    free(log);
    ck_assert(alive(mean_pid));
    int status = th_daemon_stop(&d, SIGKILL);
    ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    end = th_now_ms() + 10000;
    while (alive(mean_pid) && th_now_ms() < end)
        usleep(10 * 1000);
    ck_assert_msg(!alive(mean_pid), "worker %d outlived a labmqd killed with SIGKILL", (int)mean_pid);
    log = th_slurp(d.log);
    ck_assert_msg(strstr(log, "mean1: stopped by signal 15"), "%s", log);
    free(log);
    th_rmtree(dir);
    th_rmtree(d.dir);
}
END_TEST

/* The Python worker of workers/README.md, as printed there, under labmqd. */
START_TEST(readme_python_worker_runs)
{
    char *readme = th_slurp(LMQ_SOURCE_DIR "/workers/README.md");
    const char *start = strstr(readme, "```python\n");
    ck_assert_ptr_nonnull(start);
    start += strlen("```python\n");
    const char *end = strstr(start, "```");
    ck_assert_ptr_nonnull(end);
    char dir[128], script[256], yaml[1024];
    th_tempdir(dir, sizeof dir);
    snprintf(script, sizeof script, "%s/pyworker", dir);
    size_t len = (size_t)(end - start);
    char *text = malloc(len + 64);
    ck_assert_ptr_nonnull(text);
    snprintf(text, len + 64, "#!/usr/bin/python3\n%.*s", (int)len, start);
    th_write_file(script, text);
    free(text);
    free(readme);
    chmod(script, 0755);
    snprintf(yaml, sizeof yaml,
             "devices:\n  - name: daq1\n    driver: sim-daq\n    options: {channels: 1}\n"
             "workers:\n  - name: py1\n    program: %s\n    args: [--stream, daq1/wave]\n",
             script);
    th_daemon_t d;
    th_daemon_start(&d, yaml);
    double deadline = th_now_ms() + 20000;
    char *log = NULL;
    while (th_now_ms() < deadline) {
        free(log);
        log = th_slurp(d.log);
        if (strstr(log, "py1: daq1/wave seq "))
            break;
        usleep(50 * 1000);
    }
    ck_assert_msg(strstr(log, "py1: daq1/wave seq "), "%s", log);
    free(log);
    int status = th_daemon_stop(&d, SIGTERM);
    log = th_slurp(d.log);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s", log);
    ck_assert_msg(strstr(log, "py1: stopped\n"), "%s", log); /* it took SIGTERM and left its loop */
    free(log);
    th_rmtree(d.dir);
    th_rmtree(dir);
}
END_TEST

START_TEST(workers_op_without_workers)
{
    th_daemon_t d;
    th_daemon_start(&d, "devices: []\n");
    char dir[128];
    th_tempdir(dir, sizeof dir);
    int status;
    char *out = run_cli(&d, dir, true, &status);
    ck_assert_int_eq(WEXITSTATUS(status), 0);
    ck_assert_str_eq(out, "[]\n");
    free(out);
    out = run_cli(&d, dir, false, &status);
    ck_assert_int_eq(WEXITSTATUS(status), 0);
    ck_assert_ptr_nonnull(strstr(out, "no workers"));
    free(out);
    /* The op takes no keys. */
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, tmo = 10000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    ck_assert_int_eq(zmq_connect(s, d.control), 0);
    const char *req = "{\"v\":1,\"id\":7,\"op\":\"workers\",\"device\":\"x\"}";
    zmq_send(s, req, strlen(req), 0);
    char buf[1024];
    int n = zmq_recv(s, buf, sizeof buf - 1, 0);
    ck_assert_int_gt(n, 0);
    buf[n] = 0;
    ck_assert_msg(strstr(buf, "\"ok\":false") && strstr(buf, "PROTO") && strstr(buf, "takes no 'device'"), "%s", buf);
    zmq_close(s);
    zmq_ctx_term(ctx);
    th_rmtree(dir);
    th_daemon_finish(&d);
}
END_TEST

static Suite *workers_suite(void)
{
    Suite *s = suite_create("workers");
    TCase *tc = tcase_create("labmqd");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, config_workers);
    tcase_add_test(tc, config_worker_errors_have_positions);
    tcase_add_test(tc, labmqd_runs_lists_and_stops_its_workers);
    tcase_add_test(tc, workers_op_without_workers);
    tcase_add_test(tc, runtime_worker_stops_when_labmqd_is_killed);
    tcase_add_test(tc, readme_python_worker_runs);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return th_run_suite(workers_suite()); }
