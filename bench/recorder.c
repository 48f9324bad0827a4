/* bench/recorder — how fast labmq-recorder writes a stream to local disk
 * without losing a block, next to the disk's own write rate (dd) in the same
 * run. Prints one table.
 *
 * A labmqd with a simulated camera (2 MiB frames of u16) is started on ipc
 * endpoints in a temporary directory on the disk under test; the frame rate
 * is raised step by step and the recorder records each rate for --duration
 * seconds. Per row: what the camera offered, what the recorder took in while
 * streaming, the rate to disk including the final fsync at close (comparable
 * to dd conv=fdatasync), the blocks lost (from the recorder's /gaps count) and
 * the blocks the simulated camera itself could not produce in time (the
 * daemon's "skipped": the source's limit, not the recorder's). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>
#include "labmq/labmq.h"

#define FRAME_W 1024
#define FRAME_H 1024
#define FRAME_BYTES ((double)FRAME_W * FRAME_H * 2)

typedef struct opts {
    const char *dir;
    double duration;
    int dd_mib;
    bool quick;
    const char *labmqd, *recorder;
} opts_t;

typedef struct row {
    char what[64];
    double offered, streamed, cpu_pct;
    long long blocks, lost, skipped;
    bool has_stream;
} row_t;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Runs argv with stdout and stderr into log; returns the exit code, -1 when
 * it could not run or died of a signal. */
static int run(char *const argv[], const char *log, pid_t *pid_out, struct rusage *ru)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid;
    extern char **environ;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        fprintf(stderr, "recorder bench: cannot start %s: %s\n", argv[0], strerror(rc));
        return -1;
    }
    if (pid_out) {
        *pid_out = pid;
        return 0;
    }
    int st;
    struct rusage dummy;
    if (wait4(pid, &st, 0, ru ? ru : &dummy) != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = calloc(1, 1 << 16);
    if (buf && fread(buf, 1, (1 << 16) - 1, f) == 0 && ferror(f))
        buf[0] = '\0';
    fclose(f);
    return buf;
}

static int dd_row(const opts_t *o, row_t *r)
{
    char of[600], count[32], log[600];
    snprintf(of, sizeof of, "of=%s/dd.bin", o->dir);
    snprintf(count, sizeof count, "count=%d", o->dd_mib);
    snprintf(log, sizeof log, "%s/dd.log", o->dir);
    char *argv[] = {"/bin/dd", "if=/dev/zero", of, "bs=1M", count, "conv=fdatasync", NULL};
    double t0 = now_s();
    int rc = run(argv, log, NULL, NULL);
    double dt = now_s() - t0;
    unlink(of + 3);
    if (rc != 0) {
        char *text = slurp(log);
        fprintf(stderr, "recorder bench: dd failed: %s\n", text ? text : "");
        free(text);
        return -1;
    }
    snprintf(r->what, sizeof r->what, "dd bs=1M conv=fdatasync");
    r->streamed = o->dd_mib * 1048576.0 / 1e6 / dt;
    return 0;
}

static long long camera_skipped(lmq_proxy_t *p)
{
    char *text = NULL;
    if (lmq_proxy_stats(p, &text) != 0)
        return -1;
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    json_t *devs = json_object_get(j, "devices"), *d, *s;
    size_t i, k;
    long long skipped = -1;
    json_array_foreach(devs, i, d)
    {
        const char *name = json_string_value(json_object_get(d, "name"));
        if (!name || strcmp(name, "cam1") != 0)
            continue;
        json_array_foreach(json_object_get(d, "streams"), k, s)
        {
            skipped = json_integer_value(json_object_get(s, "skipped")) + json_integer_value(json_object_get(s, "dropped"));
        }
    }
    json_decref(j);
    return skipped;
}

static int set_fps(lmq_proxy_t *cam, double fps)
{
    lmq_value_t v = lmq_float(fps);
    int rc = lmq_proxy_set(cam, "fps", &v);
    if (rc != 0)
        fprintf(stderr, "recorder bench: set cam1 fps %g: %s\n", fps, lmq_proxy_last_error(cam));
    return rc;
}

static int record_row(const opts_t *o, const char *control, lmq_proxy_t *daemon, lmq_proxy_t *cam, double fps,
                      row_t *r)
{
    char file[600], log[600], dur[32];
    snprintf(file, sizeof file, "%s/rec.h5", o->dir);
    snprintf(log, sizeof log, "%s/rec.log", o->dir);
    snprintf(dur, sizeof dur, "%g", o->duration);
    if (set_fps(cam, fps) != 0 || lmq_proxy_call(cam, "start", NULL, 0, NULL) != 0)
        return -1;
    long long skipped0 = camera_skipped(daemon);
    char *argv[] = {(char *)o->recorder, "--control", (char *)control, "--overwrite", "-o", file, "--duration", dur,
                    "cam1/frames", NULL};
    struct rusage ru;
    double t0 = now_s();
    int rc = run(argv, log, NULL, &ru);
    double wall = now_s() - t0;
    lmq_proxy_call(cam, "stop", NULL, 0, NULL);
    long long skipped1 = camera_skipped(daemon);
    char *text = slurp(log);
    const char *sum = text ? strstr(text, "rec.h5: ") : NULL;
    double mb = 0, secs = 0, rate = 0;
    unsigned long long blocks = 0, lost = 0;
    if (rc != 0 || !sum ||
        sscanf(sum, "rec.h5: %llu blocks, %lf MB in %lf s (%lf MB/s), lost %llu", &blocks, &mb, &secs, &rate, &lost) !=
            5) {
        fprintf(stderr, "recorder bench: the recorder failed (exit %d):\n%s\n", rc, text ? text : "");
        free(text);
        unlink(file);
        return -1;
    }
    free(text);
    unlink(file);
    snprintf(r->what, sizeof r->what, "labmq-recorder cam 1024x1024 u16");
    r->has_stream = true;
    r->offered = fps * FRAME_BYTES / 1e6;
    r->streamed = rate;
    double cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    r->cpu_pct = 100 * cpu / wall;
    r->blocks = (long long)blocks;
    r->lost = (long long)lost;
    r->skipped = skipped0 >= 0 && skipped1 >= 0 ? skipped1 - skipped0 : -1;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: recorder [--dir DIR] [--duration S] [--dd-mib N] [--quick]\n"
            "\n"
            "Records a simulated camera (2 MiB frames) at rising frame rates with labmq-recorder and\n"
            "prints one table next to dd's write rate to the same directory.\n"
            "  --dir DIR      where the files go: the disk under test (default /var/tmp)\n"
            "  --duration S   seconds per rate (default 5)\n"
            "  --dd-mib N     MiB written by dd (default 1024)\n"
            "  --quick        2 rates, 2 s each, dd 128 MiB (a smoke test)\n");
}

int main(int argc, char **argv)
{
    opts_t o = {.dir = "/var/tmp", .duration = 5, .dd_mib = 1024, .labmqd = LMQ_BENCH_LABMQD,
                .recorder = LMQ_BENCH_RECORDER};
    static const struct option lo[] = {{"dir", required_argument, NULL, 'd'},
                                       {"duration", required_argument, NULL, 't'},
                                       {"dd-mib", required_argument, NULL, 'm'},
                                       {"quick", no_argument, NULL, 'q'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'd': o.dir = optarg; break;
        case 't': o.duration = atof(optarg); break;
        case 'm': o.dd_mib = atoi(optarg); break;
        case 'q': o.quick = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (o.quick) {
        o.duration = 2;
        o.dd_mib = 128;
    }
    if (o.duration <= 0 || o.dd_mib <= 0) {
        usage(stderr);
        return 2;
    }
    char dir[512];
    snprintf(dir, sizeof dir, "%s/lmq-recbench-XXXXXX", o.dir);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "recorder bench: cannot make a directory in %s: %s\n", o.dir, strerror(errno));
        return 1;
    }
    o.dir = dir;
    char config[600], control[600], data[600], dlog[600];
    snprintf(config, sizeof config, "%s/lab.yaml", dir);
    snprintf(control, sizeof control, "ipc://%s/control", dir);
    snprintf(data, sizeof data, "ipc://%s/data", dir);
    snprintf(dlog, sizeof dlog, "%s/labmqd.log", dir);
    FILE *cf = fopen(config, "w");
    if (!cf)
        return 1;
    fprintf(cf, "devices:\n  - name: cam1\n    driver: sim-camera\n    options: {width: %d, height: %d, fps: 10}\n",
            FRAME_W, FRAME_H);
    fclose(cf);

    row_t rows[16];
    size_t nrows = 0;
    memset(rows, 0, sizeof rows);
    int status = 0;
    if (dd_row(&o, &rows[nrows]) == 0)
        nrows++;
    else
        status = 1;

    char *dargv[] = {(char *)o.labmqd, "--config", config, "--control", control, "--data", data, NULL};
    pid_t daemon_pid;
    if (run(dargv, dlog, &daemon_pid, NULL) != 0)
        return 1;
    void *zctx = zmq_ctx_new();
    lmq_proxy_t *dp = lmq_proxy_new(zctx, control, NULL), *cam = lmq_proxy_new(zctx, control, "cam1");
    lmq_proxy_set_timeout(dp, 200);
    char *pong = NULL;
    double deadline = now_s() + 20;
    while (lmq_proxy_ping(dp, &pong) != 0 && now_s() < deadline)
        ;
    free(pong);
    lmq_proxy_set_timeout(dp, 5000);
    lmq_proxy_set_timeout(cam, 5000);
    const double fps_full[] = {12.5, 25, 50, 100, 200, 400};
    const double fps_quick[] = {12.5, 25};
    const double *fps = o.quick ? fps_quick : fps_full;
    size_t nfps = o.quick ? 2 : sizeof fps_full / sizeof fps_full[0];
    for (size_t i = 0; i < nfps && nrows < 16; i++) {
        row_t *r = &rows[nrows];
        if (record_row(&o, control, dp, cam, fps[i], r) != 0) {
            status = 1;
            break;
        }
        nrows++;
        /* The source or the recorder is saturated: higher rates say no more. */
        if (r->lost > 0 || r->streamed < 0.9 * r->offered)
            break;
    }
    lmq_proxy_destroy(&cam);
    lmq_proxy_destroy(&dp);
    zmq_ctx_term(zctx);
    kill(daemon_pid, SIGTERM);
    waitpid(daemon_pid, NULL, 0);

    printf("labmq-recorder to local disk (%s), %g s per rate; MB = 10^6 bytes\n\n", o.dir, o.duration);
    printf("%-34s %12s %13s %8s %8s %6s %8s\n", "system", "offered MB/s", "written MB/s", "CPU %", "blocks", "lost",
           "skipped");
    double best = 0;
    for (size_t i = 0; i < nrows; i++) {
        const row_t *r = &rows[i];
        if (!r->has_stream) {
            printf("%-34s %12s %13.1f %8s %8s %6s %8s\n", r->what, "-", r->streamed, "-", "-", "-", "-");
            continue;
        }
        printf("%-34s %12.1f %13.1f %8.0f %8lld %6lld %8lld\n", r->what, r->offered, r->streamed, r->cpu_pct,
               r->blocks, r->lost, r->skipped);
        if (r->lost == 0 && r->streamed > best)
            best = r->streamed;
    }
    printf("\nhighest rate recorded with 0 lost: %.1f MB/s", best);
    if (nrows && !rows[0].has_stream && rows[0].streamed > 0)
        printf(" (%.2fx dd's rate to disk)", best / rows[0].streamed);
    printf("\nwritten MB/s: dd's to the disk including fdatasync; the recorder's while streaming (the page\n"
           "cache takes it; the recorder fsyncs at close). CPU %%: the recorder's user+system time over its\n"
           "run (100 = one core). lost: blocks in /gaps. skipped: frames the simulated camera itself\n"
           "could not produce in time, or the daemon dropped (the source's limit, not the recorder's).\n"
           "Rates rise until a loss or until the source falls short of its rate.\n");
    const char *leftovers[] = {"lab.yaml", "labmqd.log", "dd.log", "rec.log", "control", "data"};
    for (size_t i = 0; i < sizeof leftovers / sizeof leftovers[0]; i++) {
        char path[700];
        snprintf(path, sizeof path, "%s/%s", dir, leftovers[i]);
        unlink(path);
    }
    rmdir(dir);
    return status;
}
