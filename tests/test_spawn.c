/* The problem labmq exists for: a device handle cannot be shared with
 * another process (fork inherits it half-alive, spawn cannot pass it, Python
 * cannot pickle it). Here the daemon holds the handle, and a worker started
 * with posix_spawn uses the device through a proxy URI alone, born with
 * nothing but stdio. */
#include <check.h>
#include <sys/stat.h>
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"

#define CHILD LMQ_BUILD_DIR "/tests/spawn_child"

extern char **environ;

/* Defect 10: a program that does not exist is NOTFOUND (it was ARG), one
 * that is not executable is PERMISSION; errno says the same. */
START_TEST(spawn_errors_name_the_cause)
{
    pid_t pid = 0;
    char *missing[] = {"/nonexistent/labmq-worker", NULL};
    ck_assert_int_eq(lmq_spawn(missing, &pid), LMQ_ENOTFOUND);
    ck_assert_int_eq(errno, ENOENT);
    char *unlisted[] = {"labmq-no-such-program-in-path", NULL};
    ck_assert_int_eq(lmq_spawn(unlisted, &pid), LMQ_ENOTFOUND);
    char dir[64], path[128];
    th_tempdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/not-executable", dir);
    th_write_file(path, "#!/bin/sh\n");
    chmod(path, 0644);
    char *noexec[] = {path, NULL};
    ck_assert_int_eq(lmq_spawn(noexec, &pid), LMQ_EPERM);
    ck_assert_int_eq(errno, EACCES);
    char *none[] = {NULL};
    ck_assert_int_eq(lmq_spawn(none, &pid), LMQ_EARG);
    th_rmtree(dir);
}
END_TEST

/* Does process pid hold an open descriptor on path? */
static bool holds_file(pid_t pid, const char *path)
{
    char dir[64], link[PATH_MAX + 64], target[PATH_MAX];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dir);
    bool found = false;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        snprintf(link, sizeof link, "%s/%s", dir, e->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
            target[n] = 0;
            found |= strcmp(target, path) == 0;
        }
    }
    if (d)
        closedir(d);
    return found;
}

START_TEST(spawned_worker_uses_device_by_uri_only)
{
    th_daemon_t d;
    char yaml[512], transcript[256], report[256];
    char dir[128];
    th_tempdir(dir, sizeof dir);
    snprintf(transcript, sizeof transcript, "%s/psu1-transcript.log", dir);
    snprintf(report, sizeof report, "%s/report.txt", dir);
    snprintf(yaml, sizeof yaml, "devices:\n  - name: psu1\n    driver: sim-psu\n    options: {transcript: %s}\n",
             transcript);
    th_daemon_start(&d, yaml);

    /* The parent is a typical lab app: a context, a proxy, and a file it
     * opened carelessly without O_CLOEXEC. */
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = lmq_proxy_new(ctx, d.control, "psu1");
    double v;
    /* Answered only once psu1's thread has opened its driver... */
    ck_assert_int_eq(lmq_proxy_get_double(p, "voltage", &v), 0);
    /* ...so by now the handle lives in the daemon, on psu1's thread. */
    ck_assert(holds_file(d.pid, transcript));
    int leaky = open(transcript, O_RDONLY);
    ck_assert_int_ge(leaky, 3);
    char *text;

    /* A current limit only the child sets: neither a default nor anything
     * this process ever writes (it never touches current_limit). */
    double limit_before = -1;
    ck_assert_int_eq(lmq_proxy_get_double(p, "current_limit", &limit_before), 0);
    double limit = 0.1 + (double)(getpid() % 1000) / 1000.0 * 0.8 + 0.0001;
    ck_assert(limit != limit_before);
    char limit_arg[32];
    snprintf(limit_arg, sizeof limit_arg, "%.4f", limit);
    text = th_read_file(transcript);
    ck_assert_ptr_nonnull(text);
    size_t before = strlen(text); /* the transcript so far is the parent's */
    free(text);

    char *uri = lmq_proxy_uri(p);
    char *argv[] = {CHILD, uri, report, limit_arg, NULL};
    pid_t pid;
    ck_assert_int_eq(lmq_spawn(argv, &pid), 0);
    int st;
    ck_assert_int_eq(lmq_spawn_wait(pid, &st, 20000), 0);
    text = th_read_file(report);
    ck_assert_ptr_nonnull(text);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed: %s", text);
    /* Born with stdio only: not the careless file, not the parent's sockets. */
    ck_assert_msg(strncmp(text, "fds: 0 1 2\n", 11) == 0, "child inherited descriptors: %s", text);
    ck_assert_ptr_nonnull(strstr(text, "voltage 2.500"));
    free(text);

    /* The child's requests reached the instrument owned by the daemon: its
     * value is there, and the transcript, past what this process caused,
     * shows the child's set. */
    text = th_read_file(transcript);
    ck_assert_ptr_nonnull(text);
    ck_assert_uint_gt(strlen(text), before);
    ck_assert_msg(strstr(text + before, " psu1 current_limit\n") != NULL,
                  "the child's set is not in the transcript:\n%s", text);
    free(text);
    double got = -1;
    ck_assert_int_eq(lmq_proxy_get_double(p, "current_limit", &got), 0);
    ck_assert_msg(got == strtod(limit_arg, NULL), "current_limit %.6f, the child set %s", got, limit_arg);

    close(leaky);
    free(uri);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    th_daemon_finish(&d);
    th_rmtree(dir);
}
END_TEST

/* The control experiment: a plain posix_spawn hands the careless descriptor
 * to the child, which is exactly what lmq_spawn prevents. */
START_TEST(plain_spawn_leaks_what_lmq_spawn_does_not)
{
    char dir[128], report[256];
    th_tempdir(dir, sizeof dir);
    snprintf(report, sizeof report, "%s/report.txt", dir);
    int leaky = open("/proc/self/status", O_RDONLY);
    ck_assert_int_ge(leaky, 3);
    char *argv[] = {CHILD, "ipc:///nonexistent/control#psu1", report, NULL};
    pid_t pid;
    ck_assert_int_eq(posix_spawn(&pid, CHILD, NULL, NULL, argv, environ), 0);
    int st;
    waitpid(pid, &st, 0);
    char *text = th_read_file(report);
    char want[32];
    snprintf(want, sizeof want, " %d", leaky);
    ck_assert_ptr_nonnull(text);
    ck_assert_msg(strstr(text, want) != NULL, "expected the plain spawn to leak fd %d: %s", leaky, text);
    free(text);
    close(leaky);
    th_rmtree(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("spawn");
    TCase *tc = tcase_create("spawn");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, spawned_worker_uses_device_by_uri_only);
    tcase_add_test(tc, spawn_errors_name_the_cause);
    tcase_add_test(tc, plain_spawn_leaks_what_lmq_spawn_does_not);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
