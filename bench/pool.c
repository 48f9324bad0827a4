/* labmq — bench/pool: what a labmq pool worker costs to start and how many
 * tiny tasks a pool of two gets through, next to Python multiprocessing on
 * the same machine in the same run (bench/pool_mp.py, run by
 * /usr/bin/python3), printed as one table.
 *
 *  - start-up: a worker spawned, connected and its first task handled
 *    (lmq_pool_new with one worker, then one task's round trip), next to
 *    multiprocessing 'spawn' and 'fork' starting a trivial process and
 *    receiving its first message;
 *  - throughput: 10,000 centroids of 4x4 uint16 frames through lmq_pool
 *    with 2 workers, next to multiprocessing.Pool(2) with 'spawn' (map with
 *    its automatic chunks, and imap_unordered one task at a time).
 *
 * Nothing is asserted: the numbers are reported, the exit status says only
 * whether every part ran. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>
#include "labmq/labmq.h"

/* LMQ_BENCH_CENTROID, LMQ_BENCH_SOURCE_DIR: set by bench/CMakeLists.txt. */
#define PYTHON "/usr/bin/python3"

extern char **environ;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Samples of every round, merged: start-ups in ms, runs in s. */
typedef struct samples {
    double v[4096];
    int n;
} samples_t;

static void add(samples_t *s, double v)
{
    if (s->n < (int)(sizeof s->v / sizeof *s->v))
        s->v[s->n++] = v;
}

static double median(samples_t *s)
{
    qsort(s->v, (size_t)s->n, sizeof *s->v, cmp_double);
    return s->n ? s->v[s->n / 2] : 0;
}

static double minimum(samples_t *s)
{
    median(s);
    return s->n ? s->v[0] : 0;
}

typedef struct results {
    samples_t spawn, fork, py_create, map, imap1;       /* python */
    samples_t start, floor, create2, create32, c2, c32; /* labmq */
} results_t;

/* A 4x4 uint16 frame task (bench/pool_mp.py builds the same ones). */
static size_t frame(unsigned char *b, unsigned i)
{
    memcpy(b, "\x04\0\0\0\x04\0\0\0", 8);
    for (unsigned k = 0; k < 16; k++) {
        unsigned v = 1 + (i * 7 + k * 13) % 1000;
        b[8 + 2 * k] = (unsigned char)v;
        b[9 + 2 * k] = (unsigned char)(v >> 8);
    }
    return 40;
}

/* Start-up of one labmq worker, `runs` times: median and min in ms. */
static int labmq_starts(void *ctx, int runs, samples_t *out)
{
    unsigned char task[40];
    size_t len = frame(task, 1);
    for (int i = 0; i < runs; i++) {
        double t0 = now_ms();
        lmq_pool_t *p = lmq_pool_new(ctx, LMQ_BENCH_CENTROID, NULL, 1);
        uint64_t id;
        if (!p || lmq_pool_submit(p, task, len, &id) != 0 || lmq_pool_result(p, &id, NULL, NULL, 10000) != 0) {
            fprintf(stderr, "bench/pool: a labmq worker did not start: %s\n",
                    p ? lmq_pool_last_error(p) : strerror(errno));
            lmq_pool_destroy(&p);
            return -1;
        }
        add(out, now_ms() - t0);
        lmq_pool_destroy(&p);
    }
    return 0;
}

/* The floor under any worker's start: posix_spawn of the worker program
 * with --help (the dynamic loader maps liblabmq, libzmq and their
 * dependencies, then it prints and exits) until it is reaped. */
static int exec_floor(int runs, samples_t *out)
{
    char *argv[] = {LMQ_BENCH_CENTROID, "--help", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    int rc = 0;
    for (int i = 0; i < runs && rc == 0; i++) {
        double t0 = now_ms();
        pid_t pid;
        int st;
        if ((rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ)) != 0 || waitpid(pid, &st, 0) != pid) {
            fprintf(stderr, "bench/pool: cannot run %s: %s\n", argv[0], strerror(rc ? rc : errno));
            rc = -1;
        }
        add(out, now_ms() - t0);
    }
    posix_spawn_file_actions_destroy(&fa);
    return rc;
}

/* ntasks through a pool of 2 workers with the given credit: seconds taken
 * from the first submit to the last result (workers already up). */
static int labmq_throughput(void *ctx, int ntasks, const char *credit, samples_t *seconds, samples_t *create_ms)
{
    char opt[32];
    snprintf(opt, sizeof opt, "credit=%s", credit);
    char *args[] = {"--option", opt, NULL};
    double t0 = now_ms();
    lmq_pool_t *p = lmq_pool_new(ctx, LMQ_BENCH_CENTROID, args, 2);
    if (!p) {
        fprintf(stderr, "bench/pool: cannot start the pool: %s\n", strerror(errno));
        return -1;
    }
    unsigned char task[40];
    uint64_t id;
    frame(task, 0);
    if (lmq_pool_submit(p, task, 40, &id) != 0 || lmq_pool_result(p, &id, NULL, NULL, 10000) != 0)
        goto fail;
    add(create_ms, now_ms() - t0);
    t0 = now_ms();
    for (int i = 0; i < ntasks; i++) {
        size_t len = frame(task, (unsigned)i);
        if (lmq_pool_submit(p, task, len, NULL) != 0)
            goto fail;
    }
    for (int i = 0; i < ntasks; i++) {
        void *r;
        size_t len;
        if (lmq_pool_result(p, &id, &r, &len, 30000) != 0 || len != 24)
            goto fail;
        free(r);
    }
    add(seconds, (now_ms() - t0) / 1e3);
    lmq_pool_destroy(&p);
    return 0;
fail:
    fprintf(stderr, "bench/pool: the pool failed: %s\n", lmq_pool_last_error(p));
    lmq_pool_destroy(&p);
    return -1;
}

/* Runs bench/pool_mp.py (posix_spawn; its output into a temp file) and
 * reads its lines. */
static int python_side(int starts, int ntasks, results_t *r)
{
    char out[] = "/tmp/labmq-bench-pool-XXXXXX";
    int fd = mkstemp(out);
    if (fd < 0) {
        fprintf(stderr, "bench/pool: cannot create a temp file: %s\n", strerror(errno));
        return -1;
    }
    char s_arg[16], t_arg[16];
    snprintf(s_arg, sizeof s_arg, "%d", starts);
    snprintf(t_arg, sizeof t_arg, "%d", ntasks);
    char *argv[] = {PYTHON, LMQ_BENCH_SOURCE_DIR "/bench/pool_mp.py", "--starts", s_arg, "--tasks", t_arg, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd, 1);
    pid_t pid;
    int rc = posix_spawn(&pid, PYTHON, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fd);
    int status = 0;
    if (rc != 0)
        fprintf(stderr, "bench/pool: cannot run %s: %s\n", PYTHON, strerror(rc));
    else if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "bench/pool: %s %s failed (wait status %d)\n", PYTHON, argv[1], status);
        rc = -1;
    }
    FILE *f = rc == 0 ? fopen(out, "re") : NULL;
    char line[65536];
    int found = 0;
    while (f && fgets(line, sizeof line, f)) {
        double a;
        int n, used;
        if (strncmp(line, "start spawn ", 12) == 0 || strncmp(line, "start fork ", 11) == 0) {
            bool spawn = line[6] == 's';
            for (char *q = line + (spawn ? 12 : 11); sscanf(q, "%lf%n", &a, &used) == 1; q += used)
                add(spawn ? &r->spawn : &r->fork, a);
            found |= spawn ? 1 : 2;
        } else if (sscanf(line, "pool_create %lf", &a) == 1) {
            add(&r->py_create, a);
            found |= 4;
        } else if (sscanf(line, "pool map %d %lf", &n, &a) == 2) {
            add(&r->map, a);
            found |= 8;
        } else if (sscanf(line, "pool imap1 %d %lf", &n, &a) == 2) {
            add(&r->imap1, a);
            found |= 16;
        }
    }
    if (f)
        fclose(f);
    unlink(out);
    if (rc == 0 && found != 31) {
        fprintf(stderr, "bench/pool: %s printed an incomplete report\n", argv[1]);
        rc = -1;
    }
    return rc == 0 ? 0 : -1;
}

static void usage(FILE *out)
{
    fprintf(out, "Usage: pool [--quick] [--starts N] [--tasks N]\n"
                 "  --starts N   start-ups timed per system, over 3 rounds (default 30; --quick 5)\n"
                 "  --tasks N    tiny tasks through each pool (default 10000; --quick 2000)\n"
                 "  --quick      a short smoke run\n");
}

int main(int argc, char **argv)
{
    int starts = 30, ntasks = 10000, rounds = 3;
    static const struct option opts[] = {{"quick", no_argument, NULL, 'q'},
                                         {"starts", required_argument, NULL, 's'},
                                         {"tasks", required_argument, NULL, 't'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'q':
            starts = 5;
            ntasks = 2000;
            rounds = 1;
            break;
        case 's':
        case 't': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 1000000) {
                fprintf(stderr, "bench/pool: --%s '%s' is not a count from 1 to 1000000\n",
                        c == 's' ? "starts" : "tasks", optarg);
                return 2;
            }
            *(c == 's' ? &starts : &ntasks) = (int)v;
            break;
        }
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "bench/pool: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }

    /* Alternating rounds, samples merged: a burst of noise from a neighbour
     * on a shared machine lands on both systems alike. Each round runs
     * Python first, so its children are gone before the labmq pools start. */
    static results_t r;
    void *ctx = zmq_ctx_new();
    int per_round = (starts + rounds - 1) / rounds;
    for (int round = 0; round < rounds; round++)
        if (python_side(per_round, ntasks, &r) != 0 || exec_floor(per_round, &r.floor) != 0 ||
            labmq_starts(ctx, per_round, &r.start) != 0 || labmq_throughput(ctx, ntasks, "2", &r.c2, &r.create2) != 0 ||
            labmq_throughput(ctx, ntasks, "32", &r.c32, &r.create32) != 0) {
            zmq_ctx_term(ctx);
            return 1;
        }
    zmq_ctx_term(ctx);

    double l_med = median(&r.start), sp = median(&r.spawn);
    printf("bench/pool: start-up (spawned, connected, first message handled; %d runs each) and %d tiny tasks\n"
           "(centroid of a 4x4 uint16 frame) through 2 workers; %d alternating rounds, medians\n\n",
           r.start.n, ntasks, rounds);
    printf("%-44s %10s %10s %12s\n", "start-up", "median ms", "min ms", "x labmq");
    printf("%-44s %10.2f %10.2f %12s\n", "labmq pool worker (C, posix_spawn)", l_med, minimum(&r.start), "1.0");
    printf("%-44s %10.2f %10.2f %12.1f\n", "  (floor: exec of that program, --help)", median(&r.floor),
           minimum(&r.floor), median(&r.floor) / l_med);
    printf("%-44s %10.2f %10.2f %12.1f\n", "python multiprocessing 'spawn'", sp, minimum(&r.spawn), sp / l_med);
    printf("%-44s %10.2f %10.2f %12.1f\n", "python multiprocessing 'fork'", median(&r.fork), minimum(&r.fork),
           median(&r.fork) / l_med);
    double s2 = median(&r.c2), s32 = median(&r.c32), map = median(&r.map), imap1 = median(&r.imap1);
    printf("\n%-44s %10s %10s %12s\n", "throughput, 2 workers", "tasks/s", "run s", "pool up ms");
    printf("%-44s %10.0f %10.3f %12.1f\n", "labmq pool, credit 2 (default)", ntasks / s2, s2, median(&r.create2));
    printf("%-44s %10.0f %10.3f %12.1f\n", "labmq pool, credit 32", ntasks / s32, s32, median(&r.create32));
    printf("%-44s %10.0f %10.3f %12.1f\n", "python Pool(2) 'spawn', map (auto chunks)", ntasks / map, map,
           median(&r.py_create));
    printf("%-44s %10.0f %10.3f %12s\n", "python Pool(2) 'spawn', imap chunksize=1", ntasks / imap1, imap1, "(same)");
    double best = s2 < s32 ? s2 : s32;
    printf("\ntargets: start-up >= 10x faster than 'spawn': %.1fx %s; throughput above Pool(2) 'spawn':"
           " %.2fx of map %s, %.2fx of imap chunksize=1 %s\n",
           sp / l_med, sp / l_med >= 10 ? "ok" : "MISS", map / best, map / best > 1 ? "ok" : "MISS", imap1 / best,
           imap1 / best > 1 ? "ok" : "MISS");
    return 0;
}
