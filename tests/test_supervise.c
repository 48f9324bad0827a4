/* lmq_spawn_ex and the supervisor: what a worker is born with (stdio and the
 * named descriptors only, argv and environment exactly as given, its own
 * process group), restarts with back-off until the crash budget is spent,
 * the restart policies, stop escalating to SIGKILL, and never a zombie or an
 * orphan left behind. The worker is tests/supervise_child. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"
#include "supervise_internal.h"

#define CHILD LMQ_BUILD_DIR "/tests/supervise_child"
#define MEAN LMQ_BUILD_DIR "/workers/example/labmq-example-mean"

/* A process that still runs (a zombie has ended: reaping it is its parent's job). */
static bool alive(pid_t pid)
{
    char st = th_proc_state(pid, NULL);
    return st != 0 && st != 'Z';
}

/* Fails the test when a child of this process is a zombie. */
static void assert_no_zombies(void)
{
    DIR *d = opendir("/proc");
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        pid_t pid = (pid_t)atoi(e->d_name), ppid = 0;
        if (pid <= 0)
            continue;
        char st = th_proc_state(pid, &ppid);
        if (ppid == getpid())
            ck_assert_msg(st != 'Z', "pid %d is a zombie child of the test", (int)pid);
    }
    closedir(d);
}

static lmq_worker_info_t info_of(lmq_supervisor_t *s, size_t i)
{
    lmq_worker_info_t in;
    ck_assert_int_eq(lmq_supervisor_info(s, i, &in), 0);
    return in;
}

/* Waits (bounded) until worker i is in state st. */
static lmq_worker_info_t wait_state(lmq_supervisor_t *s, size_t i, lmq_worker_state_t st, int timeout_ms)
{
    double end = th_now_ms() + timeout_ms;
    lmq_worker_info_t in = info_of(s, i);
    while (in.state != st && th_now_ms() < end) {
        usleep(5000);
        in = info_of(s, i);
    }
    ck_assert_msg(in.state == st, "worker %s is %s, expected %s", in.name, lmq_worker_state_name(in.state),
                  lmq_worker_state_name(st));
    return in;
}

/* Waits (bounded) for a file to appear and returns its text. */
static char *wait_file(const char *path, int timeout_ms)
{
    double end = th_now_ms() + timeout_ms;
    char *text;
    while (!(text = th_read_file(path)) && th_now_ms() < end)
        usleep(5000);
    ck_assert_msg(text != NULL, "%s never appeared", path);
    return text;
}

START_TEST(spawn_ex_child_sees_only_stdio_and_named_fds)
{
    char dir[128], report[256];
    th_tempdir(dir, sizeof dir);
    snprintf(report, sizeof report, "%s/report", dir);
    int p[2];
    ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
    int leaky = open("/dev/null", O_RDONLY); /* careless: not close-on-exec */
    ck_assert_int_ge(leaky, 3);
    /* A kept descriptor above a gap of open ones, under a number of its own. */
    ck_assert_int_eq(dup3(p[1], 40, O_CLOEXEC), 40);
    int keep[] = {40, p[0]};
    char *argv[] = {CHILD, "report", report, "two words", "", "ünï", NULL};
    char *envp[] = {"A=1", "EMPTY=", "LABMQ_X=a=b", NULL};
    pid_t pid;
    ck_assert_int_eq(lmq_spawn_ex(argv, envp, keep, 2, &pid), 0);
    int status;
    ck_assert_int_eq(th_wait_exit(pid, 10000, &status), 0);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char *text = th_slurp(report), expect[1024];
    snprintf(expect, sizeof expect,
             "fds: 0 1 2 %d 40\ngroup leader: yes\nargv[0]=%s\nargv[1]=report\nargv[2]=%s\n"
             "argv[3]=two words\nargv[4]=\nargv[5]=ünï\nenv=A=1\nenv=EMPTY=\nenv=LABMQ_X=a=b\n",
             p[0], CHILD, report);
    /* /proc lists descriptors in numeric order; p[0] < 40. */
    ck_assert_int_lt(p[0], 40);
    ck_assert_str_eq(text, expect);
    free(text);
    /* The parent's own descriptors keep close-on-exec. */
    ck_assert_int_eq(fcntl(40, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    ck_assert_int_eq(fcntl(p[0], F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);

    /* No descriptor named, no environment given: stdio only, empty environ. */
    char *argv2[] = {CHILD, "report", report, NULL};
    ck_assert_int_eq(lmq_spawn_ex(argv2, NULL, NULL, 0, &pid), 0);
    ck_assert_int_eq(th_wait_exit(pid, 10000, &status), 0);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    text = th_slurp(report);
    snprintf(expect, sizeof expect, "fds: 0 1 2\ngroup leader: yes\nargv[0]=%s\nargv[1]=report\nargv[2]=%s\n", CHILD,
             report);
    ck_assert_str_eq(text, expect);
    free(text);
    close(p[0]);
    close(p[1]);
    close(40);
    close(leaky);
    assert_no_zombies();
    th_rmtree(dir);
}
END_TEST

START_TEST(spawn_ex_errors)
{
    pid_t pid = 0;
    char *missing[] = {"/nonexistent/labmq-worker", NULL};
    ck_assert_int_eq(lmq_spawn_ex(missing, NULL, NULL, 0, &pid), LMQ_ENOTFOUND);
    char *ok[] = {CHILD, "crash", "/nonexistent/file", NULL};
    int closed_fd = 1000, low = 2;
    ck_assert_int_eq(lmq_spawn_ex(ok, NULL, &closed_fd, 1, &pid), LMQ_EARG);
    ck_assert_int_eq(lmq_spawn_ex(ok, NULL, &low, 1, &pid), LMQ_EARG);
    ck_assert_int_eq(lmq_spawn_ex(ok, NULL, NULL, 1, &pid), LMQ_EARG);
    assert_no_zombies();
}
END_TEST

START_TEST(crashing_worker_backs_off_then_fails)
{
    char dir[128], starts[256];
    th_tempdir(dir, sizeof dir);
    snprintf(starts, sizeof starts, "%s/starts", dir);
    /* A child of the host program that the supervisor must leave alone. */
    char *quiet_argv[] = {"/bin/true", NULL};
    pid_t other;
    ck_assert_int_eq(lmq_spawn(quiet_argv, &other), 0);

    lmq_supervisor_t *s = lmq_supervisor_new(NULL);
    char *argv[] = {CHILD, "crash", starts, NULL};
    ck_assert_int_eq(lmq_supervisor_add(s, "crasher", argv, NULL, LMQ_RESTART_ALWAYS), 0);
    ck_assert_int_eq(lmq_supervisor_start(s), 0);
    lmq_worker_info_t in = wait_state(s, 0, LMQ_WORKER_FAILED, 30000);
    ck_assert_int_eq(in.restarts, 4);
    ck_assert_int_eq(in.pid, 0);
    ck_assert(in.has_exited);
    ck_assert_int_eq(in.last_exit_code, 3);
    ck_assert_int_eq(in.last_exit_signal, 0);
    ck_assert_msg(strstr(in.error, "crashed 5 times within 60 s (last: exit status 3)"), "%s", in.error);

    /* Five starts, 100, 200, 400 and 800 ms apart (plus the start-up time of
     * the child: generous upper bounds, the machine is shared). */
    char *text = th_slurp(starts);
    long long t[8];
    int n = 0;
    for (char *line = strtok(text, "\n"); line && n < 8; line = strtok(NULL, "\n"))
        t[n++] = atoll(line);
    free(text);
    ck_assert_int_eq(n, 5);
    for (int k = 1; k < n; k++) {
        double gap_ms = (double)(t[k] - t[k - 1]) / 1e6, want = 100.0 * (1 << (k - 1));
        ck_assert_msg(gap_ms >= want - 5 && gap_ms < want + 2000, "restart %d came after %.0f ms, expected ~%.0f", k,
                      gap_ms, want);
    }
    /* FAILED is final: no more starts. */
    usleep(300 * 1000);
    ck_assert_int_eq(info_of(s, 0).state, LMQ_WORKER_FAILED);
    ck_assert_int_eq(lmq_supervisor_stop(s), 0);
    lmq_supervisor_destroy(&s);
    ck_assert_ptr_null(s);
    /* The host's own child was not reaped by the supervisor. */
    int status;
    ck_assert_int_eq(th_wait_exit(other, 10000, &status), 0);
    assert_no_zombies();
    th_rmtree(dir);
}
END_TEST

START_TEST(restart_policies)
{
    char dir[128], f0[256], f1[256], f2[256], f3[256];
    th_tempdir(dir, sizeof dir);
    snprintf(f0, sizeof f0, "%s/never", dir);
    snprintf(f1, sizeof f1, "%s/onfail-ok", dir);
    snprintf(f2, sizeof f2, "%s/always-ok", dir);
    snprintf(f3, sizeof f3, "%s/onfail-crash", dir);
    lmq_supervisor_t *s = lmq_supervisor_new(NULL);
    char *a0[] = {CHILD, "exit", f0, "7", NULL}, *a1[] = {CHILD, "exit", f1, "0", NULL};
    char *a2[] = {CHILD, "exit", f2, "0", NULL}, *a3[] = {CHILD, "exit", f3, "9", NULL};
    ck_assert_int_eq(lmq_supervisor_add(s, "never", a0, NULL, LMQ_RESTART_NEVER), 0);
    ck_assert_int_eq(lmq_supervisor_add(s, "onfail-ok", a1, NULL, LMQ_RESTART_ON_FAILURE), 0);
    ck_assert_int_eq(lmq_supervisor_add(s, "always-ok", a2, NULL, LMQ_RESTART_ALWAYS), 0);
    ck_assert_int_eq(lmq_supervisor_add(s, "onfail-crash", a3, NULL, LMQ_RESTART_ON_FAILURE), 0);
    ck_assert_int_eq(lmq_supervisor_start(s), 0);
    lmq_worker_info_t in = wait_state(s, 0, LMQ_WORKER_EXITED, 10000);
    ck_assert_int_eq(in.last_exit_code, 7);
    ck_assert_int_eq(in.restarts, 0);
    in = wait_state(s, 1, LMQ_WORKER_EXITED, 10000);
    ck_assert_int_eq(in.last_exit_code, 0);
    ck_assert_int_eq(in.restarts, 0);
    /* always: a clean exit is restarted too (with back-off); on-failure: a crash is. */
    double end = th_now_ms() + 10000;
    while ((info_of(s, 2).restarts < 2 || info_of(s, 3).restarts < 2) && th_now_ms() < end)
        usleep(5000);
    ck_assert_uint_ge(info_of(s, 2).restarts, 2);
    ck_assert_uint_ge(info_of(s, 3).restarts, 2);
    /* Exactly the starts counted, for the one that ran once. */
    char *text = th_slurp(f0);
    ck_assert_int_eq((int)strlen(text), (int)strcspn(text, "\n") + 1);
    free(text);

    /* The snapshot the broker serves. */
    char *js = lmq_supervisor_json(s);
    ck_assert_ptr_nonnull(js);
    json_error_t jerr;
    json_t *j = json_loads(js, 0, &jerr);
    free(js);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(json_array_size(j), 4);
    json_t *w0 = json_array_get(j, 0);
    ck_assert_str_eq(json_string_value(json_object_get(w0, "name")), "never");
    ck_assert_str_eq(json_string_value(json_object_get(w0, "state")), "exited");
    ck_assert_str_eq(json_string_value(json_object_get(w0, "restart")), "never");
    ck_assert(json_is_null(json_object_get(w0, "pid")));
    ck_assert(json_is_null(json_object_get(w0, "error")));
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(w0, "last_exit"), "code")), 7);
    ck_assert_int_eq(json_object_size(w0), 8);
    json_decref(j);

    ck_assert_int_eq(lmq_supervisor_stop(s), 0);
    for (size_t i = 0; i < 4; i++) {
        in = info_of(s, i);
        ck_assert_int_eq(in.pid, 0);
        ck_assert(in.state == LMQ_WORKER_EXITED || in.state == LMQ_WORKER_STOPPED);
    }
    lmq_supervisor_destroy(&s);
    assert_no_zombies();
    th_rmtree(dir);
}
END_TEST

START_TEST(stop_kills_worker_ignoring_sigterm_and_its_children)
{
    char dir[128], pids[256], sleeper[256];
    th_tempdir(dir, sizeof dir);
    snprintf(pids, sizeof pids, "%s/pids", dir);
    snprintf(sleeper, sizeof sleeper, "%s/sleeper", dir);
    lmq_supervisor_t *s = lmq_supervisor_new(NULL);
    char *a0[] = {CHILD, "stubborn", pids, NULL}, *a1[] = {CHILD, "sleep", sleeper, NULL};
    ck_assert_int_eq(lmq_supervisor_add(s, "stubborn", a0, NULL, LMQ_RESTART_ALWAYS), 0);
    ck_assert_int_eq(lmq_supervisor_add(s, "polite", a1, NULL, LMQ_RESTART_ALWAYS), 0);
    lmq_supervisor_set_stop_grace(s, 400);
    ck_assert_int_eq(lmq_supervisor_start(s), 0);
    char *text = wait_file(pids, 10000);
    int worker = 0, grandchild = 0;
    ck_assert_int_eq(sscanf(text, "%d %d", &worker, &grandchild), 2);
    free(text);
    text = wait_file(sleeper, 10000);
    int polite = atoi(text);
    free(text);
    ck_assert_int_eq(info_of(s, 0).pid, worker);
    ck_assert_int_eq(info_of(s, 1).pid, polite);
    ck_assert(alive(worker) && alive(grandchild) && alive(polite));
    /* Running: up for a second or more. */
    wait_state(s, 0, LMQ_WORKER_RUNNING, 10000);

    double t0 = th_now_ms();
    ck_assert_int_eq(lmq_supervisor_stop(s), 0);
    double took = th_now_ms() - t0;
    ck_assert_msg(took >= 395 && took < 10000, "stop took %.0f ms with a 400 ms grace period", took);
    lmq_worker_info_t in = info_of(s, 0);
    ck_assert_int_eq(in.state, LMQ_WORKER_STOPPED);
    ck_assert_int_eq(in.last_exit_signal, SIGKILL);
    in = info_of(s, 1);
    ck_assert_int_eq(in.state, LMQ_WORKER_STOPPED);
    ck_assert_int_eq(in.last_exit_signal, SIGTERM);
    ck_assert_int_eq(in.restarts, 0);
    /* Gone, the grandchild too (init reaps it: it was never ours). */
    ck_assert(!alive(worker) && !alive(polite));
    double end = th_now_ms() + 5000;
    while (alive(grandchild) && th_now_ms() < end)
        usleep(5000);
    ck_assert_msg(!alive(grandchild), "the worker's child %d outlived it", grandchild);
    ck_assert_int_eq(lmq_supervisor_stop(s), 0); /* idempotent */
    lmq_supervisor_destroy(&s);
    lmq_supervisor_destroy(&s);
    assert_no_zombies();
    th_rmtree(dir);
}
END_TEST

START_TEST(crashing_worker_leaves_no_orphan)
{
    /* The worker dies (SIGKILL from outside) while its child lives: the
     * child goes with it, and the worker is restarted. */
    char dir[128], pids[256];
    th_tempdir(dir, sizeof dir);
    snprintf(pids, sizeof pids, "%s/pids", dir);
    lmq_supervisor_t *s = lmq_supervisor_new(NULL);
    char *a0[] = {CHILD, "stubborn", pids, NULL};
    ck_assert_int_eq(lmq_supervisor_add(s, "stubborn", a0, NULL, LMQ_RESTART_ON_FAILURE), 0);
    lmq_supervisor_set_stop_grace(s, 100);
    ck_assert_int_eq(lmq_supervisor_start(s), 0);
    char *text = wait_file(pids, 10000);
    int worker = 0, grandchild = 0;
    ck_assert_int_eq(sscanf(text, "%d %d", &worker, &grandchild), 2);
    free(text);
    unlink(pids);
    ck_assert_int_eq(kill(worker, SIGKILL), 0);
    text = wait_file(pids, 10000);
    free(text);
    lmq_worker_info_t in = info_of(s, 0);
    ck_assert_int_eq(in.restarts, 1);
    ck_assert_int_eq(in.last_exit_signal, SIGKILL);
    double end = th_now_ms() + 5000;
    while (alive(grandchild) && th_now_ms() < end)
        usleep(5000);
    ck_assert(!alive(grandchild));
    lmq_supervisor_destroy(&s);
    assert_no_zombies();
    th_rmtree(dir);
}
END_TEST

START_TEST(bad_declarations_and_missing_program)
{
    lmq_supervisor_t *s = lmq_supervisor_new(NULL);
    char *argv[] = {"/nonexistent/worker", NULL}, *none[] = {NULL};
    ck_assert_int_eq(lmq_supervisor_add(s, "bad name", argv, NULL, LMQ_RESTART_ALWAYS), LMQ_EARG);
    ck_assert_ptr_nonnull(strstr(lmq_supervisor_last_error(s), "invalid worker name"));
    ck_assert_int_eq(lmq_supervisor_add(s, "w", none, NULL, LMQ_RESTART_ALWAYS), LMQ_EARG);
    ck_assert_ptr_nonnull(strstr(lmq_supervisor_last_error(s), "no program"));
    ck_assert_int_eq(lmq_supervisor_add(s, "w", argv, NULL, LMQ_RESTART_ALWAYS), 0);
    ck_assert_int_eq(lmq_supervisor_add(s, "w", argv, NULL, LMQ_RESTART_ALWAYS), LMQ_EARG);
    ck_assert_ptr_nonnull(strstr(lmq_supervisor_last_error(s), "declared twice"));
    ck_assert_int_eq(lmq_supervisor_start(s), 0);
    lmq_worker_info_t in = wait_state(s, 0, LMQ_WORKER_FAILED, 10000);
    ck_assert_str_eq(in.error, "cannot start /nonexistent/worker: no such program");
    /* Declared while running: started (and refused) like the others. */
    ck_assert_int_eq(lmq_supervisor_add(s, "late", argv, NULL, LMQ_RESTART_ALWAYS), 0);
    ck_assert_int_eq(lmq_supervisor_add(s, "late", argv, NULL, LMQ_RESTART_ALWAYS), LMQ_EARG);
    in = wait_state(s, 1, LMQ_WORKER_FAILED, 10000);
    ck_assert_str_eq(in.error, "cannot start /nonexistent/worker: no such program");
    ck_assert_int_eq(lmq_restart_parse("on-failure"), LMQ_RESTART_ON_FAILURE);
    ck_assert_int_eq(lmq_restart_parse("always"), LMQ_RESTART_ALWAYS);
    ck_assert_int_eq(lmq_restart_parse("never"), LMQ_RESTART_NEVER);
    ck_assert_int_eq(lmq_restart_parse("sometimes"), -1);
    lmq_supervisor_destroy(&s);
    assert_no_zombies();
}
END_TEST

/* What a reload does to workers: one added while the others run is started,
 * one removed is stopped (SIGKILL after the grace when it ignores SIGTERM)
 * and reaped before lmq__supervisor_remove returns, and the rest are not
 * touched. */
START_TEST(add_and_remove_while_running)
{
    char dir[128], keep[256], late[256], pids[256];
    th_tempdir(dir, sizeof dir);
    snprintf(keep, sizeof keep, "%s/keep", dir);
    snprintf(late, sizeof late, "%s/late", dir);
    snprintf(pids, sizeof pids, "%s/pids", dir);
    lmq_supervisor_t *s = lmq_supervisor_new(NULL);
    char *a0[] = {CHILD, "sleep", keep, NULL}, *a1[] = {CHILD, "stubborn", pids, NULL},
         *a2[] = {CHILD, "sleep", late, NULL};
    ck_assert_int_eq(lmq_supervisor_add(s, "keep", a0, NULL, LMQ_RESTART_ALWAYS), 0);
    ck_assert_int_eq(lmq_supervisor_add(s, "stubborn", a1, NULL, LMQ_RESTART_ALWAYS), 0);
    lmq_supervisor_set_stop_grace(s, 300);
    ck_assert_int_eq(lmq_supervisor_start(s), 0);
    char *text = wait_file(keep, 10000);
    int kept = atoi(text);
    free(text);
    text = wait_file(pids, 10000);
    int stubborn = 0, grandchild = 0;
    ck_assert_int_eq(sscanf(text, "%d %d", &stubborn, &grandchild), 2);
    free(text);

    ck_assert_int_eq(lmq_supervisor_add(s, "late", a2, NULL, LMQ_RESTART_ALWAYS), 0);
    text = wait_file(late, 10000);
    int latecomer = atoi(text);
    free(text);
    ck_assert_int_eq(lmq_supervisor_count(s), 3);
    ck_assert_int_eq(info_of(s, 2).pid, latecomer);
    ck_assert(alive(latecomer));

    ck_assert_int_eq(lmq__supervisor_remove(s, "stubborn"), 0);
    ck_assert(!alive(stubborn));
    ck_assert_int_eq(lmq_supervisor_count(s), 2);
    ck_assert_str_eq(info_of(s, 0).name, "keep");
    ck_assert_str_eq(info_of(s, 1).name, "late");
    ck_assert_int_eq(lmq__supervisor_remove(s, "stubborn"), LMQ_ENOTFOUND);
    /* The same name can come back at once (a changed worker). */
    unlink(pids);
    ck_assert_int_eq(lmq_supervisor_add(s, "stubborn", a1, NULL, LMQ_RESTART_ALWAYS), 0);
    text = wait_file(pids, 10000);
    int again = 0;
    ck_assert_int_eq(sscanf(text, "%d", &again), 1);
    free(text);
    ck_assert_int_ne(again, stubborn);

    lmq_worker_info_t in = info_of(s, 0);
    ck_assert_int_eq(in.pid, kept);
    ck_assert_int_eq(in.restarts, 0);
    ck_assert(alive(kept));
    lmq_supervisor_destroy(&s);
    ck_assert(!alive(kept) && !alive(latecomer) && !alive(again));
    assert_no_zombies();
    th_rmtree(dir);
}
END_TEST

START_TEST(host_ignoring_sigchld_does_not_hang_the_supervisor)
{
    /* The kernel then reaps the workers itself: their end is still seen,
     * as a crash with an unknown status. */
    char dir[128], f[256];
    th_tempdir(dir, sizeof dir);
    snprintf(f, sizeof f, "%s/starts", dir);
    signal(SIGCHLD, SIG_IGN);
    lmq_supervisor_t *s = lmq_supervisor_new(NULL);
    char *argv[] = {CHILD, "exit", f, "0", NULL};
    ck_assert_int_eq(lmq_supervisor_add(s, "w", argv, NULL, LMQ_RESTART_NEVER), 0);
    ck_assert_int_eq(lmq_supervisor_start(s), 0);
    lmq_worker_info_t in = wait_state(s, 0, LMQ_WORKER_EXITED, 10000);
    ck_assert_int_eq(in.last_exit_code, 255);
    ck_assert_int_eq(in.pid, 0);
    lmq_supervisor_destroy(&s);
    signal(SIGCHLD, SIG_DFL);
    th_rmtree(dir);
}
END_TEST

/* ---- the worker runtime ---- */

START_TEST(worker_argv_parsed)
{
    char *argv[] = {"/opt/x/my-worker",
                    "--control",
                    "ipc:///tmp/c",
                    "--data=ipc:///tmp/d",
                    "--name",
                    "w1",
                    "--device",
                    "psu1",
                    "--device=daq1",
                    "--stream",
                    "daq1/wave",
                    "--option",
                    "k=v",
                    "--option=k=w",
                    "--option",
                    "empty=",
                    NULL};
    int code = -1;
    lmq_worker_t *w = lmq_worker_new(16, argv, NULL, &code);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(code, 0);
    ck_assert_str_eq(lmq_worker_control(w), "ipc:///tmp/c");
    ck_assert_str_eq(lmq_worker_data(w), "ipc:///tmp/d");
    ck_assert_str_eq(lmq_worker_name(w), "w1");
    ck_assert_int_eq(lmq_worker_device_count(w), 2);
    ck_assert_str_eq(lmq_worker_device(w, 0), "psu1");
    ck_assert_str_eq(lmq_worker_device(w, 1), "daq1");
    ck_assert_ptr_null(lmq_worker_device(w, 2));
    ck_assert_int_eq(lmq_worker_stream_count(w), 1);
    ck_assert_str_eq(lmq_worker_stream(w, 0), "daq1/wave");
    ck_assert_str_eq(lmq_worker_option(w, "k"), "w"); /* the last one given */
    ck_assert_str_eq(lmq_worker_option(w, "empty"), "");
    ck_assert_ptr_null(lmq_worker_option(w, "kk"));
    ck_assert_ptr_null(lmq_worker_option(w, "missing"));
    ck_assert_ptr_nonnull(lmq_worker_zctx(w));
    ck_assert(!lmq_worker_stopping(w));
    lmq_worker_destroy(&w);
    ck_assert_ptr_null(w);
    lmq_worker_destroy(&w);

    /* Without --name: the program's file name. */
    char *bare[] = {"/opt/x/my-worker", "--control", "ipc:///tmp/c", "--data", "ipc:///tmp/d", NULL};
    w = lmq_worker_new(5, bare, NULL, &code);
    ck_assert_ptr_nonnull(w);
    ck_assert_str_eq(lmq_worker_name(w), "my-worker");
    lmq_worker_destroy(&w);
}
END_TEST

START_TEST(worker_stops_on_sigterm_through_its_fd)
{
    char *argv[] = {"w", "--control", "ipc:///tmp/c", "--data", "ipc:///tmp/d", NULL};
    int code;
    lmq_worker_t *w = lmq_worker_new(5, argv, NULL, &code);
    ck_assert_ptr_nonnull(w);
    zmq_pollitem_t item = {NULL, lmq_worker_fd(w), ZMQ_POLLIN, 0};
    ck_assert_int_eq(zmq_poll(&item, 1, 50), 0);
    ck_assert(!lmq_worker_stopping(w));
    ck_assert_int_eq(lmq_worker_stop_signal(w), 0);
    /* To the process, as labmqd sends it: blocked, it waits in the fd. */
    ck_assert_int_eq(kill(getpid(), SIGTERM), 0);
    ck_assert_int_eq(zmq_poll(&item, 1, 10000), 1);
    ck_assert(lmq_worker_stopping(w));
    ck_assert(lmq_worker_stopping(w)); /* and stays so */
    ck_assert_int_eq(lmq_worker_stop_signal(w), SIGTERM);
    lmq_worker_destroy(&w);
}
END_TEST

/* Runs the example worker with args; returns stdout+stderr, exit status in *status. */
static char *run_mean(char *const args[], int *status)
{
    char dir[128], out[256];
    th_tempdir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/out", dir);
    char *argv[16] = {MEAN};
    for (int i = 0; args[i] && i < 14; i++)
        argv[i + 1] = args[i];
    pid_t pid = th_spawn_to_files(argv, out, NULL);
    ck_assert_int_eq(th_wait_exit(pid, 20000, status), 0);
    char *text = th_slurp(out);
    th_rmtree(dir);
    return text;
}

START_TEST(worker_command_line_errors_are_clear)
{
    int status;
    char *help[] = {"--help", NULL};
    char *text = run_mean(help, &status);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == LMQ_WORKER_EXIT_OK);
    ck_assert_msg(strstr(text, "Usage: labmq-example-mean [--control EP]") && strstr(text, "--option every=SECONDS"),
                  "%s", text);
    free(text);
    struct {
        char *args[4];
        const char *message;
    } bad[] = {
        {{"--bogus", "x", NULL},
         "labmq-example-mean: unknown option '--bogus' (options: --control, --data, --name, "
         "--device, --stream, --option, --help)\n"},
        {{"--stream", "daq1", NULL}, "labmq-example-mean: --stream 'daq1' is not DEV/STREAM (like daq1/wave)\n"},
        {{"--option", "novalue", NULL}, "labmq-example-mean: --option 'novalue' is not KEY=VALUE\n"},
        {{"--name", NULL}, "labmq-example-mean: option --name needs a value\n"},
        {{"stray", NULL}, "labmq-example-mean: unexpected argument 'stray' (workers take only options; see --help)\n"},
        {{"--control", "ipc:///tmp/c", "--data=ipc:///tmp/d", NULL},
         "labmq-example-mean: no --stream given: nothing to average\n"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        text = run_mean(bad[i].args, &status);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == LMQ_WORKER_EXIT_USAGE, "%s", text);
        ck_assert_str_eq(text, bad[i].message);
        free(text);
    }
}
END_TEST

static Suite *supervise_suite(void)
{
    Suite *s = suite_create("supervise");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, spawn_ex_child_sees_only_stdio_and_named_fds);
    tcase_add_test(tc, spawn_ex_errors);
    tcase_add_test(tc, crashing_worker_backs_off_then_fails);
    tcase_add_test(tc, restart_policies);
    tcase_add_test(tc, stop_kills_worker_ignoring_sigterm_and_its_children);
    tcase_add_test(tc, crashing_worker_leaves_no_orphan);
    tcase_add_test(tc, bad_declarations_and_missing_program);
    tcase_add_test(tc, add_and_remove_while_running);
    tcase_add_test(tc, host_ignoring_sigchld_does_not_hang_the_supervisor);
    suite_add_tcase(s, tc);
    TCase *rt = tcase_create("runtime");
    tcase_add_test(rt, worker_argv_parsed);
    tcase_add_test(rt, worker_stops_on_sigterm_through_its_fd);
    tcase_add_test(rt, worker_command_line_errors_are_clear);
    suite_add_tcase(s, rt);
    return s;
}

int main(void) { return th_run_suite(supervise_suite()); }
