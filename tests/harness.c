/* The test harness: temp dirs, files, processes started with posix_spawn
 * (never fork), and labmqd started on private endpoints and waited for. */
#include "harness.h"
#include <check.h>
#include <jansson.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

double th_now_ms(void) { return (double)lmq_clock_mono_ns() / 1e6; }

int th_run_suite(Suite *suite)
{
    SRunner *sr = srunner_create(suite);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

void th_tempdir(char *buf, size_t size)
{
    snprintf(buf, size, "/tmp/lmqtest-XXXXXX");
    ck_assert_msg(mkdtemp(buf) != NULL, "mkdtemp: %s", strerror(errno));
}

void th_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

char *th_read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n < 2) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
            }
            buf = nb;
        }
    }
    fclose(f);
    if (buf)
        buf[n] = 0;
    return buf;
}

char *th_slurp(const char *path)
{
    char *text = th_read_file(path);
    ck_assert_msg(text != NULL, "cannot read %s: %s", path, strerror(errno));
    return text;
}

void th_rmtree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
            th_rmtree(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

pid_t th_spawn_to_files(char *const argv[], const char *out_path, const char *err_path)
{
    const int wr = O_WRONLY | O_CREAT | O_TRUNC;
    posix_spawn_file_actions_t fa;
    ck_assert_int_eq(posix_spawn_file_actions_init(&fa), 0);
    ck_assert_int_eq(posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0), 0);
    ck_assert_int_eq(posix_spawn_file_actions_addopen(&fa, 1, out_path, wr, 0600), 0);
    if (err_path)
        ck_assert_int_eq(posix_spawn_file_actions_addopen(&fa, 2, err_path, wr, 0600), 0);
    else
        ck_assert_int_eq(posix_spawn_file_actions_adddup2(&fa, 1, 2), 0);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    ck_assert_msg(rc == 0, "posix_spawn %s: %s", argv[0], strerror(rc));
    return pid;
}

int th_wait_exit(pid_t pid, int timeout_ms, int *status)
{
    int rc = lmq_spawn_wait(pid, status, timeout_ms);
    ck_assert_msg(rc != LMQ_EARG, "waitpid %d: %s", (int)pid, strerror(errno));
    if (rc == 0)
        return 0;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

/* True when no device is still in its first open(). */
static bool all_opened(lmq_proxy_t *p)
{
    char *text = NULL;
    if (lmq_proxy_list(p, &text) != 0)
        return false;
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    size_t i;
    json_t *dev;
    bool done = j != NULL;
    json_array_foreach(j, i, dev)
    {
        if (strcmp(json_string_value(json_object_get(dev, "state")), "opening") == 0)
            done = false;
    }
    json_decref(j);
    return done;
}

void th_daemon_restart(th_daemon_t *d)
{
    char *argv[] = {LMQ_BUILD_DIR "/workers/labmqd/labmqd", "--config", d->config, "--control", d->control,
                    "--data", d->data, "--log-level", "warn", NULL};
    d->pid = th_spawn_to_files(argv, d->log, NULL);
    /* Ready means answering, and every device past its first open attempt
     * (start-up does not wait for instruments, so `list` says "opening"
     * until then): tests never race a device's open. A context of its own,
     * made and ended here, inside the test's process. */
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = lmq_proxy_new(ctx, d->control, NULL);
    lmq_proxy_set_timeout(p, 200);
    char *pong = NULL;
    double deadline = th_now_ms() + 20000; /* generous: sanitizers on a loaded machine */
    int rc, st = 0;
    bool exited = false;
    while ((rc = lmq_proxy_ping(p, &pong)) != 0 && th_now_ms() < deadline &&
           !(exited = waitpid(d->pid, &st, WNOHANG) == d->pid))
        ;
    free(pong);
    while (rc == 0 && !all_opened(p)) {
        if (th_now_ms() > deadline || (exited = waitpid(d->pid, &st, WNOHANG) == d->pid)) {
            rc = -1;
            break;
        }
        struct timespec nap = {0, 5 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    if (rc == 0)
        return;
    if (exited)
        d->pid = 0;
    else /* the daemon must not outlive the test */
        th_daemon_stop(d, SIGKILL);
    char *log = th_read_file(d->log);
    ck_abort_msg("labmqd %s:\n%s", exited ? "exited before answering" : "did not answer within 20 s",
                 log ? log : "(no output)");
}

static void daemon_paths(th_daemon_t *d)
{
    memset(d, 0, sizeof *d);
    th_tempdir(d->dir, sizeof d->dir);
    snprintf(d->config, sizeof d->config, "%s/lab.yaml", d->dir);
    snprintf(d->control, sizeof d->control, "ipc://%s/control", d->dir);
    snprintf(d->data, sizeof d->data, "ipc://%s/data", d->dir);
    snprintf(d->log, sizeof d->log, "%s/labmqd.log", d->dir);
}

void th_daemon_start(th_daemon_t *d, const char *yaml)
{
    daemon_paths(d);
    th_write_file(d->config, yaml);
    th_daemon_restart(d);
}

void th_daemon_start_config(th_daemon_t *d, const char *config_path)
{
    daemon_paths(d);
    snprintf(d->config, sizeof d->config, "%s", config_path);
    th_daemon_restart(d);
}

int th_daemon_stop(th_daemon_t *d, int sig)
{
    if (d->pid <= 0)
        return -1;
    kill(d->pid, sig);
    int st = -1;
    if (th_wait_exit(d->pid, 20000, &st) != 0)
        st = -1;
    d->pid = 0;
    return st;
}

void th_daemon_finish(th_daemon_t *d)
{
    int status = th_daemon_stop(d, SIGTERM);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char *log = th_read_file(d->log);
        ck_abort_msg("labmqd ended with status 0x%x after SIGTERM:\n%s", (unsigned)status, log ? log : "");
    }
    th_rmtree(d->dir);
}

void th_daemon_cleanup(th_daemon_t *d)
{
    th_daemon_stop(d, SIGTERM);
    th_rmtree(d->dir);
}

json_t *th_recv_reply(void *sock, int timeout_ms)
{
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) != 1)
        return NULL;
    zmq_msg_t m;
    zmq_msg_init(&m);
    zmq_msg_recv(&m, sock, 0);
    json_t *j = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, NULL);
    int more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    while (more) {
        zmq_msg_init(&m);
        zmq_msg_recv(&m, sock, 0);
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    ck_assert_msg(j != NULL, "a reply header that is not JSON");
    return j;
}

const char *th_reply_code(json_t *r)
{
    if (json_is_true(json_object_get(r, "ok")))
        return "OK";
    const char *code = json_string_value(json_object_get(json_object_get(r, "error"), "code"));
    return code ? code : "(no code)";
}

const char *th_reply_message(json_t *r)
{
    const char *m = json_string_value(json_object_get(json_object_get(r, "error"), "message"));
    return m ? m : "";
}

char th_proc_state(pid_t pid, pid_t *ppid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* The name may hold spaces and parentheses: the state follows the last ')'. */
    char *p = strrchr(buf, ')'), st = 0;
    int pp = 0;
    if (!p || sscanf(p + 1, " %c %d", &st, &pp) != 2)
        return 0;
    if (ppid)
        *ppid = pp;
    return st;
}

/* The state letter of /proc/PID/task/TID/stat. */
static char task_state(pid_t pid, const char *tid)
{
    char path[320], buf[512];
    snprintf(path, sizeof path, "/proc/%d/task/%.255s/stat", (int)pid, tid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'), st = 0;
    return p && sscanf(p + 1, " %c", &st) == 1 ? st : 0;
}

void th_stop_process(pid_t pid)
{
    ck_assert_int_eq(kill(pid, SIGSTOP), 0);
    /* kill returns before every thread has stopped; under load a request
     * sent at once could still be served. */
    double end = th_now_ms() + 10000;
    for (;;) {
        char dir[64];
        snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
        DIR *d = opendir(dir);
        ck_assert_msg(d != NULL, "process %d is gone", (int)pid);
        bool all = true;
        for (struct dirent *e; all && (e = readdir(d));)
            if (e->d_name[0] != '.') {
                char st = task_state(pid, e->d_name);
                all = st == 'T' || st == 't' || st == 0;
            }
        closedir(d);
        if (all)
            return;
        ck_assert_msg(th_now_ms() < end, "process %d did not stop within 10 s", (int)pid);
        struct timespec nap = {0, 1000000};
        nanosleep(&nap, NULL);
    }
}

const char *th_use_path(int path)
{
    if (path == 0)
        unsetenv("LABMQ_NO_LOCAL");
    else
        setenv("LABMQ_NO_LOCAL", "1", 1);
    return path == 0 ? "local" : "zmq";
}
