/* labmq-pool-demo — the task pool end to end: makes frames with a bright
 * spot at a known place, has a pool of labmq-pool-centroid workers reduce
 * each to its centroid, and prints how many were found where the spot was
 * and how fast. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>
#include "labmq/labmq.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Frame i: a Gaussian spot (sigma 2 px) on a flat background of 10, its
 * centre moving along a Lissajous curve; *sx, *sy get the true centroid. */
static unsigned char *make_frame(unsigned i, unsigned h, unsigned w, size_t *len, double *cx, double *cy)
{
    *len = 8 + (size_t)h * w * 2;
    unsigned char *b = malloc(*len);
    if (!b)
        return NULL;
    for (int k = 0; k < 4; k++) {
        b[k] = (unsigned char)(h >> (8 * k));
        b[4 + k] = (unsigned char)(w >> (8 * k));
    }
    double x0 = (w - 1) * (0.5 + 0.3 * sin(i * 0.07)), y0 = (h - 1) * (0.5 + 0.3 * cos(i * 0.05));
    double sum = 0, sx = 0, sy = 0;
    for (unsigned y = 0; y < h; y++)
        for (unsigned x = 0; x < w; x++) {
            double d2 = (x - x0) * (x - x0) + (y - y0) * (y - y0);
            unsigned v = 10 + (unsigned)lround(50000 * exp(-d2 / 8));
            unsigned char *px = b + 8 + 2 * ((size_t)y * w + x);
            px[0] = (unsigned char)v;
            px[1] = (unsigned char)(v >> 8);
            sum += v;
            sx += (double)v * x;
            sy += (double)v * y;
        }
    *cx = sx / sum;
    *cy = sy / sum;
    return b;
}

static void usage(FILE *out)
{
    fprintf(out, "Usage: labmq-pool-demo [--workers N] [--frames N] [--size HxW] [--worker PROGRAM]\n"
                 "Reduces synthetic frames to centroids on a pool of workers (default: 2 workers,\n"
                 "1000 frames of 64x64, the labmq-pool-centroid beside this program or in PATH).\n");
}

int main(int argc, char **argv)
{
    long workers = 2, frames = 1000;
    unsigned h = 64, w = 64;
    const char *worker = NULL;
    static const struct option opts[] = {
        {"workers", required_argument, NULL, 'n'}, {"frames", required_argument, NULL, 'f'},
        {"size", required_argument, NULL, 's'},    {"worker", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'n':
            workers = strtol(optarg, &end, 10);
            if (*end || workers < 1 || workers > 256) {
                fprintf(stderr, "labmq-pool-demo: --workers '%s' is not a count from 1 to 256\n", optarg);
                return 2;
            }
            break;
        case 'f':
            frames = strtol(optarg, &end, 10);
            if (*end || frames < 1 || frames > 10000000) {
                fprintf(stderr, "labmq-pool-demo: --frames '%s' is not a count from 1 to 10000000\n", optarg);
                return 2;
            }
            break;
        case 's':
            if (sscanf(optarg, "%ux%u%c", &h, &w, (char[]){0}) != 2 || h < 1 || w < 1 || h > 4096 || w > 4096) {
                fprintf(stderr, "labmq-pool-demo: --size '%s' is not HxW (1..4096 each, like 64x64)\n", optarg);
                return 2;
            }
            break;
        case 'p':
            worker = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    /* Beside this program (a build tree, an installed bin/), else PATH. */
    char beside[4096];
    if (!worker) {
        const char *slash = strrchr(argv[0], '/');
        if (slash && (size_t)(slash - argv[0]) + 32 < sizeof beside) {
            snprintf(beside, sizeof beside, "%.*s/labmq-pool-centroid", (int)(slash - argv[0]), argv[0]);
            worker = beside;
        } else {
            worker = "labmq-pool-centroid";
        }
    }
    void *ctx = zmq_ctx_new();
    double t0 = now_s();
    lmq_pool_t *pool = lmq_pool_new(ctx, worker, NULL, (int)workers);
    if (!pool) {
        fprintf(stderr, "labmq-pool-demo: cannot start %ld workers of %s: %s\n", workers, worker, strerror(errno));
        zmq_ctx_term(ctx);
        return 1;
    }
    double up = now_s() - t0;
    double *cx = malloc((size_t)frames * sizeof *cx), *cy = malloc((size_t)frames * sizeof *cy);
    int rc = 0;
    long close_enough = 0, failed = 0;
    t0 = now_s();
    for (long i = 0; i < frames && cx && cy; i++) {
        size_t len;
        unsigned char *f = make_frame((unsigned)i, h, w, &len, &cx[i], &cy[i]);
        if (!f || lmq_pool_submit(pool, f, len, NULL) != 0) {
            fprintf(stderr, "labmq-pool-demo: cannot submit frame %ld: %s\n", i, lmq_pool_last_error(pool));
            free(f);
            rc = 1;
            break;
        }
        free(f);
    }
    while (rc == 0 && lmq_pool_pending(pool)) {
        uint64_t id;
        void *r;
        size_t len;
        int st = lmq_pool_result(pool, &id, &r, &len, 30000);
        if (st == LMQ_ETIMEOUT) {
            fprintf(stderr, "labmq-pool-demo: %s\n", lmq_pool_last_error(pool));
            rc = 1;
        } else if (st != 0 || len != 24) {
            failed++;
            fprintf(stderr, "labmq-pool-demo: %s\n", lmq_pool_last_error(pool));
        } else {
            double x, y;
            memcpy(&x, r, 8);
            memcpy(&y, (char *)r + 8, 8);
            close_enough += fabs(x - cx[id - 1]) < 1e-6 && fabs(y - cy[id - 1]) < 1e-6;
        }
        free(st == 0 ? r : NULL);
    }
    double took = now_s() - t0;
    printf("%ld workers up in %.1f ms; %ld %ux%u frames in %.3f s (%.0f frames/s): %ld centroids right, %ld "
           "failed, %u worker restarts\n",
           workers, up * 1e3, frames, h, w, took, frames / took, close_enough, failed, lmq_pool_restarts(pool));
    lmq_pool_destroy(&pool);
    zmq_ctx_term(ctx);
    free(cx);
    free(cy);
    return rc || close_enough != frames ? 1 : 0;
}
