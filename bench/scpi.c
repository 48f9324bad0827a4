/* labmq — queries per second to a simulated SCPI instrument, through labmq
 * (proxy -> labmqd -> scpi driver -> labmq-siminst) and from a direct client
 * of the same simulator, over TCP and over a pseudo-terminal, in one run.
 *
 * The query is ":SOUR1:VOLT?" to labmq-siminst's Rigol DP832 (it answers at
 * once), so the table shows what labmq adds to a round trip; with a real
 * instrument its own time (milliseconds) dwarfs both.
 *
 * The simulator serves one client at a time, so the direct client runs
 * first, then labmqd connects. Every process is started with posix_spawn. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include <zmq.h>

#include "labmq/labmq.h"

/* LMQ_BENCH_LABMQD, LMQ_BENCH_SIMINST, LMQ_BENCH_SOURCE_DIR: set by bench/CMakeLists.txt. */

extern char **environ;

#define QUERY ":SOUR1:VOLT?\n"

typedef struct stats {
    int n;
    double total_s, mean_us, p50_us, p99_us;
} stats_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void summarise(double *us, int n, double total_s, stats_t *st)
{
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += us[i];
    qsort(us, (size_t)n, sizeof *us, cmp_double);
    *st = (stats_t){n, total_s, sum / n, us[n / 2], us[(int)((n - 1) * 0.99)]};
}

/* Starts argv with stdout into out_path; returns the pid or -1. */
static pid_t spawn_to(char *const argv[], const char *out_path)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, out_path, O_WRONLY | O_APPEND, 0600);
    pid_t pid = -1;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc) {
        fprintf(stderr, "bench/scpi: cannot start %s: %s\n", argv[0], strerror(rc));
        return -1;
    }
    return pid;
}

static void stop(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    int st;
    if (lmq_spawn_wait(pid, &st, 10000) != 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
}

/* The first line a child printed (its address), within 10 s. */
static bool first_line(const char *path, char *buf, size_t size)
{
    for (int i = 0; i < 1000; i++) {
        FILE *f = fopen(path, "re");
        if (f) {
            bool ok = fgets(buf, (int)size, f) && strchr(buf, '\n');
            fclose(f);
            if (ok) {
                buf[strcspn(buf, "\n")] = '\0';
                return true;
            }
        }
        usleep(10000);
    }
    return false;
}

/* ---- the direct client ---- */

static int open_direct(bool tcp, const char *where)
{
    if (tcp) {
        int port = 0;
        if (sscanf(where, "tcp:127.0.0.1:%d", &port) != 1)
            return -1;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            close(fd);
            return -1;
        }
        return fd;
    }
    int fd = open(where, O_RDWR | O_NOCTTY | O_CLOEXEC);
    struct termios tio;
    if (fd < 0 || tcgetattr(fd, &tio) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    cfmakeraw(&tio);
    tcsetattr(fd, TCSANOW, &tio);
    return fd;
}

/* One query, one reply line, within 2 s. */
static int direct_query(int fd)
{
    if (write(fd, QUERY, sizeof QUERY - 1) != (ssize_t)(sizeof QUERY - 1))
        return -1;
    char buf[128];
    size_t n = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 2000) <= 0)
            return -1;
        ssize_t r = read(fd, buf + n, sizeof buf - n);
        if (r <= 0)
            return -1;
        n += (size_t)r;
        if (memchr(buf, '\n', n))
            return 0;
        if (n == sizeof buf)
            return -1;
    }
}

static int run_direct(bool tcp, const char *where, int n, double *us, stats_t *st)
{
    int fd = open_direct(tcp, where);
    if (fd < 0) {
        fprintf(stderr, "bench/scpi: cannot reach the simulator at %s\n", where);
        return -1;
    }
    for (int i = 0; i < n / 10 + 1; i++) /* warm-up */
        if (direct_query(fd) != 0)
            goto fail;
    int64_t t0 = lmq_clock_mono_ns();
    for (int i = 0; i < n; i++) {
        int64_t a = lmq_clock_mono_ns();
        if (direct_query(fd) != 0)
            goto fail;
        us[i] = (double)(lmq_clock_mono_ns() - a) / 1e3;
    }
    summarise(us, n, (double)(lmq_clock_mono_ns() - t0) / 1e9, st);
    close(fd);
    return 0;
fail:
    fprintf(stderr, "bench/scpi: the simulator stopped answering %s\n", where);
    close(fd);
    return -1;
}

/* ---- through labmq ---- */

static int run_labmq(const char *dir, const char *conn, int n, double *us, stats_t *st)
{
    char config[512], control[512], log[512];
    snprintf(config, sizeof config, "%s/lab.yaml", dir);
    snprintf(control, sizeof control, "ipc://%s/control", dir);
    snprintf(log, sizeof log, "%s/labmqd.log", dir);
    FILE *f = fopen(config, "we");
    if (!f)
        return -1;
    fprintf(f,
            "control: %s\ndata: ipc://%s/data\nlog_level: warn\ndevices:\n"
            "  - name: psu\n    driver: scpi\n    connection: %s\n"
            "    options: {model: %s/examples/instruments/rigol-dp832.yaml}\n",
            control, dir, conn, LMQ_BENCH_SOURCE_DIR);
    fclose(f);
    char *argv[] = {LMQ_BENCH_LABMQD, "--config", config, NULL};
    pid_t pid = spawn_to(argv, log);
    if (pid < 0)
        return -1;
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = lmq_proxy_new(ctx, control, "psu");
    int rc = -1;
    lmq_value_t v = {0};
    /* ready once the device answers (labmqd binds, then opens the instrument) */
    for (int i = 0; p && i < 200; i++) {
        lmq_proxy_set_timeout(p, 500);
        if (lmq_proxy_get(p, "voltage", &v) == 0)
            break;
        usleep(50000);
    }
    lmq_proxy_set_timeout(p, 5000);
    for (int i = 0; p && i < n / 10 + 1; i++)
        if (lmq_proxy_get(p, "voltage", &v) != 0)
            goto done;
    int64_t t0 = lmq_clock_mono_ns();
    for (int i = 0; p && i < n; i++) {
        int64_t a = lmq_clock_mono_ns();
        if (lmq_proxy_get(p, "voltage", &v) != 0)
            goto done;
        us[i] = (double)(lmq_clock_mono_ns() - a) / 1e3;
    }
    summarise(us, n, (double)(lmq_clock_mono_ns() - t0) / 1e9, st);
    rc = 0;
done:
    if (rc)
        fprintf(stderr, "bench/scpi: labmq get failed: %s (labmqd's log: %s)\n",
                p ? lmq_proxy_last_error(p) : "no proxy", log);
    lmq_value_clear(&v);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    stop(pid);
    return rc;
}

static void row(const char *transport, const char *path, const stats_t *s)
{
    printf("%-9s %-38s %8d %9.0f %9.1f %9.1f %9.1f\n", transport, path, s->n, s->n / s->total_s, s->mean_us, s->p50_us,
           s->p99_us);
}

int main(int argc, char **argv)
{
    int n = 2000;
    static const struct option opts[] = {{"quick", no_argument, NULL, 'q'},
                                         {"count", required_argument, NULL, 'n'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "qn:h", opts, NULL)) != -1) {
        if (c == 'q')
            n = 200;
        else if (c == 'n' && atoi(optarg) > 0)
            n = atoi(optarg);
        else {
            printf("usage: %s [--quick] [--count N]\n"
                   "Queries per second to labmq-siminst (a DP832) over TCP and a pty: direct, and through\n"
                   "labmq (proxy -> labmqd -> scpi driver). N queries each (default 2000; --quick 200).\n",
                   argv[0]);
            return c == 'h' ? 0 : 2;
        }
    }
    char dir[] = "/tmp/labmq-bench-scpi-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("bench/scpi: mkdtemp");
        return 1;
    }
    double *us = malloc(sizeof *us * (size_t)n);
    int status = 0;
    printf("%-9s %-38s %8s %9s %9s %9s %9s\n", "transport", "path", "queries", "q/s", "mean us", "p50 us", "p99 us");
    for (int tcp = 1; tcp >= 0 && us; tcp--) {
        char out[256], link[256], addr[256], conn[600];
        snprintf(out, sizeof out, "%s/siminst-%s.out", dir, tcp ? "tcp" : "pty");
        snprintf(link, sizeof link, "%s/tty", dir);
        char *sargv[] = {LMQ_BENCH_SIMINST, tcp ? "--tcp" : "--link", tcp ? "0" : link,
                         LMQ_BENCH_SOURCE_DIR "/examples/instruments/siminst/rigol-dp832.yaml", NULL};
        pid_t sim = spawn_to(sargv, out);
        if (sim < 0 || !first_line(out, addr, sizeof addr)) {
            fprintf(stderr, "bench/scpi: labmq-siminst did not start (see %s)\n", out);
            stop(sim);
            status = 1;
            break;
        }
        snprintf(conn, sizeof conn, "%s%s", tcp ? "" : "serial:", tcp ? addr : link);
        stats_t s;
        const char *t = tcp ? "tcp" : "pty";
        if (run_direct(tcp != 0, tcp ? addr : link, n, us, &s) == 0)
            row(t, "direct client", &s);
        else
            status = 1;
        if (run_labmq(dir, conn, n, us, &s) == 0)
            row(t, "labmq: proxy > labmqd > scpi driver", &s);
        else
            status = 1;
        stop(sim);
    }
    free(us);
    if (status == 0) { /* keep the logs of a failed run */
        /* a flat folder of this program's files */
        DIR *dp = opendir(dir);
        for (struct dirent *e; dp && (e = readdir(dp)) != NULL;)
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                unlinkat(dirfd(dp), e->d_name, 0);
        if (dp)
            closedir(dp);
        rmdir(dir);
    } else {
        fprintf(stderr, "bench/scpi: logs kept in %s\n", dir);
    }
    return status;
}
