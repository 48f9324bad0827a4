/* labmq-example-mean — a minimal labmq worker written with the worker
 * runtime (labmq/worker.h): it subscribes to the streams named by --stream
 * and prints, about once per --option every=SECONDS (default 1), the running
 * mean of every stream's samples, until SIGTERM or SIGINT. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>
#include "labmq/labmq.h"

typedef struct stream_mean {
    lmq_sub_t *sub;
    const char *topic;
    double sum;
    uint64_t samples, blocks;
    char units[32];
} stream_mean_t;

static double element(const void *data, lmq_dtype_t dt, size_t i)
{
    switch (dt) {
    case LMQ_U8:
        return ((const uint8_t *)data)[i];
    case LMQ_I8:
        return ((const int8_t *)data)[i];
    case LMQ_U16:
        return ((const uint16_t *)data)[i];
    case LMQ_I16:
        return ((const int16_t *)data)[i];
    case LMQ_U32:
        return ((const uint32_t *)data)[i];
    case LMQ_I32:
        return ((const int32_t *)data)[i];
    case LMQ_U64:
        return (double)((const uint64_t *)data)[i];
    case LMQ_I64:
        return (double)((const int64_t *)data)[i];
    case LMQ_F32:
        return ((const float *)data)[i];
    case LMQ_F64:
        return ((const double *)data)[i];
    default:
        return 0;
    }
}

static void take(stream_mean_t *m, lmq_frame_t *f)
{
    lmq_dtype_t dt = lmq_frame_dtype(f);
    size_t n = lmq_dtype_size(dt) ? lmq_frame_size(f) / lmq_dtype_size(dt) : 0;
    const void *data = lmq_frame_data(f);
    for (size_t i = 0; i < n; i++)
        m->sum += element(data, dt, i);
    m->samples += n;
    m->blocks++;
    snprintf(m->units, sizeof m->units, "%s", lmq_frame_units(f));
}

static void report(const char *name, const stream_mean_t *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (m[i].samples)
            printf("%s: %s: %" PRIu64 " blocks, %" PRIu64 " lost, mean %.6g%s%s\n", name, m[i].topic, m[i].blocks,
                   lmq_sub_lost(m[i].sub), m[i].sum / (double)m[i].samples, m[i].units[0] ? " " : "", m[i].units);
        else
            printf("%s: %s: no data yet\n", name, m[i].topic);
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int code;
    lmq_worker_t *w = lmq_worker_new(argc, argv,
                                     "Prints the running mean of each --stream. Options:\n"
                                     "  --option every=SECONDS   how often to print (default 1)",
                                     &code);
    if (!w)
        return code;
    const char *every_text = lmq_worker_option(w, "every");
    char *end = NULL;
    double every = every_text ? strtod(every_text, &end) : 1.0;
    if (every_text && (end == every_text || *end || !(every > 0 && every <= 3600))) {
        fprintf(stderr, "%s: --option every=%s: not a number of seconds in (0, 3600]\n", lmq_worker_name(w),
                every_text);
        lmq_worker_destroy(&w);
        return LMQ_WORKER_EXIT_USAGE;
    }
    size_t n = lmq_worker_stream_count(w);
    if (n == 0) {
        fprintf(stderr, "%s: no --stream given: nothing to average\n", lmq_worker_name(w));
        lmq_worker_destroy(&w);
        return LMQ_WORKER_EXIT_USAGE;
    }
    stream_mean_t *m = calloc(n, sizeof *m);
    zmq_pollitem_t *items = calloc(n + 1, sizeof *items);
    int status = LMQ_WORKER_EXIT_OK;
    for (size_t i = 0; m && items && i < n; i++) {
        m[i].topic = lmq_worker_stream(w, i);
        m[i].sub = lmq_sub_new(lmq_worker_zctx(w), lmq_worker_data(w), m[i].topic);
        if (!m[i].sub) {
            fprintf(stderr, "%s: cannot subscribe to %s at %s\n", lmq_worker_name(w), m[i].topic, lmq_worker_data(w));
            status = LMQ_WORKER_EXIT_FAILURE;
            goto out;
        }
        items[i] = (zmq_pollitem_t){lmq_sub_socket(m[i].sub), 0, ZMQ_POLLIN, 0};
    }
    if (!m || !items) {
        fprintf(stderr, "%s: out of memory\n", lmq_worker_name(w));
        status = LMQ_WORKER_EXIT_FAILURE;
        goto out;
    }
    items[n] = (zmq_pollitem_t){NULL, lmq_worker_fd(w), ZMQ_POLLIN, 0};
    printf("%s: averaging %zu stream%s from %s\n", lmq_worker_name(w), n, n == 1 ? "" : "s", lmq_worker_data(w));
    fflush(stdout);
    int64_t next = lmq_clock_mono_ns() + (int64_t)(every * 1e9);
    while (!lmq_worker_stopping(w)) {
        int64_t now = lmq_clock_mono_ns();
        if (now >= next) {
            report(lmq_worker_name(w), m, n);
            next = now + (int64_t)(every * 1e9);
        }
        if (zmq_poll(items, (int)n + 1, (long)((next - now) / 1000000) + 1) < 0 && zmq_errno() != EINTR) {
            fprintf(stderr, "%s: zmq_poll: %s\n", lmq_worker_name(w), zmq_strerror(zmq_errno()));
            status = LMQ_WORKER_EXIT_FAILURE;
            break;
        }
        for (size_t i = 0; i < n; i++) {
            lmq_frame_t *f;
            /* Drain what has arrived; a malformed block is skipped (counted by the sub). */
            for (int k = 0; k < 64 && (items[i].revents & ZMQ_POLLIN); k++) {
                int rc = lmq_sub_recv(m[i].sub, &f, 0);
                if (rc == LMQ_ETIMEOUT)
                    break;
                if (rc == 0) {
                    take(&m[i], f);
                    lmq_frame_destroy(&f);
                }
            }
        }
    }
    if (status == LMQ_WORKER_EXIT_OK) {
        report(lmq_worker_name(w), m, n);
        printf("%s: stopped by signal %d\n", lmq_worker_name(w), lmq_worker_stop_signal(w));
        fflush(stdout);
    }
out:
    for (size_t i = 0; m && i < n; i++)
        lmq_sub_destroy(&m[i].sub);
    free(m);
    free(items);
    lmq_worker_destroy(&w);
    return status;
}
