/* The task pool (labmq/pool.h): every result exactly once and correct (2000
 * centroid tasks on 3 workers), also when a worker is SIGKILLed mid-run; a
 * poison task that crashes its worker is failed after a bounded number of
 * attempts while the rest complete; credit keeps a busy worker from being
 * handed more; handler errors and bad arguments are reported clearly; and
 * destroy leaves no worker and no zombie, even when a worker hangs; answers
 * from a reaped worker's name, duplicates, phantoms and malformed messages
 * are dropped. The workers are workers/pool/labmq-pool-centroid,
 * tests/pool_child and tests/pool_rogue. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"

#define CENTROID LMQ_BUILD_DIR "/workers/pool/labmq-pool-centroid"
#define CHILD LMQ_BUILD_DIR "/tests/pool_child"
#define ROGUE LMQ_BUILD_DIR "/tests/pool_rogue"
#define DEMO LMQ_BUILD_DIR "/workers/pool/labmq-pool-demo"

/* Fails the test when any process (zombie or not) is a child of this one. */
static void assert_no_children(void)
{
    DIR *d = opendir("/proc");
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        pid_t pid = (pid_t)atoi(e->d_name), ppid = 0;
        if (pid <= 0)
            continue;
        char st = th_proc_state(pid, &ppid);
        ck_assert_msg(ppid != getpid(), "pid %d (state %c) is still a child of the test", (int)pid, st);
    }
    closedir(d);
}

/* ---- centroid tasks and their expected results ---- */

typedef struct frame_task {
    unsigned char *bytes;
    size_t len;
    double x, y;
    uint64_t total;
} frame_task_t;

static void put16(unsigned char *b, unsigned v)
{
    b[0] = (unsigned char)v;
    b[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *b, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

/* Frame i: (1 + i % 9) x (1 + i % 13) pixels of pseudo-random values, with
 * the centroid computed here in long double as the reference. */
static void make_frame(frame_task_t *t, unsigned i)
{
    uint32_t h = 1 + i % 9, w = 1 + i % 13;
    t->len = 8 + (size_t)h * w * 2;
    t->bytes = malloc(t->len);
    ck_assert_ptr_nonnull(t->bytes);
    put32(t->bytes, h);
    put32(t->bytes + 4, w);
    uint32_t s = i * 2654435761u + 12345;
    long double sx = 0, sy = 0;
    uint64_t total = 0;
    for (uint32_t y = 0; y < h; y++)
        for (uint32_t x = 0; x < w; x++) {
            s = s * 1664525u + 1013904223u;
            unsigned v = 1 + (s >> 16) % 65535;
            put16(t->bytes + 8 + 2 * (y * w + x), v);
            total += v;
            sx += (long double)v * x;
            sy += (long double)v * y;
        }
    t->total = total;
    t->x = (double)(sx / total);
    t->y = (double)(sy / total);
}

START_TEST(centroid_2000_tasks_three_workers_each_result_once)
{
    enum { N = 2000 };
    void *ctx = zmq_ctx_new();
    lmq_pool_t *p = lmq_pool_new(ctx, CENTROID, NULL, 3);
    ck_assert_msg(p != NULL, "lmq_pool_new: %s", strerror(errno));
    ck_assert_int_eq(lmq_pool_size(p), 3);
    frame_task_t *tasks = calloc(N + 1, sizeof *tasks);
    int *seen = calloc(N + 1, sizeof *seen);
    for (unsigned i = 1; i <= N; i++) {
        make_frame(&tasks[i], i);
        uint64_t id = 0;
        ck_assert_int_eq(lmq_pool_submit(p, tasks[i].bytes, tasks[i].len, &id), 0);
        ck_assert_uint_eq(id, i); /* ids are 1, 2, 3, ... in submission order */
    }
    ck_assert_uint_eq(lmq_pool_pending(p), N);
    for (int got = 0; got < N; got++) {
        uint64_t id = 0;
        void *r = NULL;
        size_t len = 0;
        int rc = lmq_pool_result(p, &id, &r, &len, 20000);
        ck_assert_msg(rc == 0, "result %d: %s: %s", got, lmq_strerror(rc), lmq_pool_last_error(p));
        ck_assert_msg(id >= 1 && id <= N, "unknown task id %llu", (unsigned long long)id);
        ck_assert_msg(seen[id]++ == 0, "task %llu delivered twice", (unsigned long long)id);
        ck_assert_uint_eq(len, 24);
        double x, y;
        uint64_t total;
        memcpy(&x, r, 8);
        memcpy(&y, (char *)r + 8, 8);
        memcpy(&total, (char *)r + 16, 8);
        ck_assert_uint_eq(total, tasks[id].total);
        ck_assert_msg(fabs(x - tasks[id].x) < 1e-9 && fabs(y - tasks[id].y) < 1e-9,
                      "task %llu: centroid (%.12g, %.12g), expected (%.12g, %.12g)", (unsigned long long)id, x, y,
                      tasks[id].x, tasks[id].y);
        free(r);
    }
    ck_assert_uint_eq(lmq_pool_pending(p), 0);
    uint64_t id = 99;
    ck_assert_int_eq(lmq_pool_result(p, &id, NULL, NULL, 100), LMQ_ENOTFOUND);
    ck_assert_uint_eq(lmq_pool_restarts(p), 0);
    /* A task of the wrong size is the handler's error, named, not a crash. */
    ck_assert_int_eq(lmq_pool_submit(p, "\x02\0\0\0\x02\0\0\0\1\0", 10, &id), 0);
    void *r = (void *)1;
    ck_assert_int_eq(lmq_pool_result(p, &id, &r, NULL, 20000), LMQ_EDEVICE);
    ck_assert_ptr_null(r);
    ck_assert_uint_eq(id, N + 1);
    ck_assert_str_eq(lmq_pool_last_error(p), "task 2001: a 2x2 frame task is 16 bytes, not 10");
    for (unsigned i = 1; i <= N; i++)
        free(tasks[i].bytes);
    free(tasks);
    free(seen);
    lmq_pool_destroy(&p);
    ck_assert_ptr_null(p);
    lmq_pool_destroy(&p); /* NULL is fine */
    zmq_ctx_term(ctx);
    assert_no_children();
}
END_TEST

/* Collects results until none is pending; each id in [1, n] exactly once and
 * equal to "3N from PID". Returns how many came from pid `from`. */
static int collect_echoes(lmq_pool_t *p, int n, const long *values, int *seen, pid_t from, uint64_t skip)
{
    int from_count = 0;
    for (;;) {
        uint64_t id = 0;
        void *r = NULL;
        size_t len = 0;
        int rc = lmq_pool_result(p, &id, &r, &len, 30000);
        if (rc == LMQ_ENOTFOUND)
            break;
        if (id == skip) {
            free(r);
            continue;
        }
        ck_assert_msg(rc == 0, "%s: %s", lmq_strerror(rc), lmq_pool_last_error(p));
        ck_assert_msg(id >= 1 && (int)id <= n, "unknown task id %llu", (unsigned long long)id);
        ck_assert_msg(seen[id]++ == 0, "task %llu delivered twice", (unsigned long long)id);
        long v = 0;
        int pid = 0;
        char text[64] = "";
        memcpy(text, r, len < sizeof text - 1 ? len : sizeof text - 1);
        ck_assert_msg(sscanf(text, "%ld from %d", &v, &pid) == 2, "result '%s'", text);
        ck_assert_int_eq(v, values[id] * 3);
        from_count += pid == from;
        free(r);
    }
    return from_count;
}

/* Run 0 with the default credit (one task per message), run 1 with credit
 * 16: the victim dies holding whole batches of tasks. */
START_TEST(worker_killed_mid_run_each_result_still_once)
{
    enum { N = 600 };
    void *ctx = zmq_ctx_new();
    char *batched[] = {"--option", "credit=16", NULL};
    lmq_pool_t *p = lmq_pool_new(ctx, CHILD, _i ? batched : NULL, 3);
    ck_assert_msg(p != NULL, "lmq_pool_new: %s", strerror(errno));
    long values[N + 1];
    int seen[N + 1];
    memset(seen, 0, sizeof seen);
    for (int i = 1; i <= N; i++) {
        char task[32];
        values[i] = 1000 + i;
        int len = snprintf(task, sizeof task, "slow:3:%ld", values[i]);
        ck_assert_int_eq(lmq_pool_submit(p, task, (size_t)len, NULL), 0);
    }
    /* A hundred results in, every worker has tasks in flight: kill one. */
    int got = 0;
    pid_t victim = lmq_pool_worker_pid(p, 1);
    ck_assert_int_gt(victim, 0);
    int from_victim = 0;
    while (got < 100) {
        uint64_t id;
        void *r;
        size_t len;
        ck_assert_int_eq(lmq_pool_result(p, &id, &r, &len, 30000), 0);
        ck_assert_msg(seen[id]++ == 0, "task %llu delivered twice", (unsigned long long)id);
        char text[64] = "";
        memcpy(text, r, len < sizeof text - 1 ? len : sizeof text - 1);
        long v;
        int pid;
        ck_assert(sscanf(text, "%ld from %d", &v, &pid) == 2 && v == values[id] * 3);
        from_victim += pid == victim;
        free(r);
        got++;
    }
    ck_assert_int_gt(from_victim, 0); /* it was working */
    ck_assert_int_ge(lmq_pool_pending(p), 400);
    ck_assert_int_eq(kill(victim, SIGKILL), 0);
    collect_echoes(p, N, values, seen, victim, 0);
    for (int i = 1; i <= N; i++)
        ck_assert_msg(seen[i] == 1, "task %d delivered %d times", i, seen[i]);
    ck_assert_uint_ge(lmq_pool_restarts(p), 1);
    pid_t again = lmq_pool_worker_pid(p, 1);
    ck_assert_int_gt(again, 0);
    ck_assert_int_ne(again, victim);
    ck_assert_int_eq(th_proc_state(victim, NULL), 0); /* reaped, not a zombie */
    /* The pool goes on taking work. */
    long more[4] = {0, 7, 8, 9};
    int seen2[4] = {0};
    for (int i = 1; i <= 3; i++) {
        char task[32];
        int len = snprintf(task, sizeof task, "echo:%ld", more[i]);
        ck_assert_int_eq(lmq_pool_submit(p, task, (size_t)len, NULL), 0);
    }
    lmq_pool_t *q = p; /* ids continue: 601..603; renumber for the check */
    for (int i = 0; i < 3; i++) {
        uint64_t id;
        void *r;
        size_t len;
        ck_assert_int_eq(lmq_pool_result(q, &id, &r, &len, 30000), 0);
        ck_assert(id > N && id <= N + 3 && seen2[id - N]++ == 0);
        free(r);
    }
    lmq_pool_destroy(&p);
    zmq_ctx_term(ctx);
    assert_no_children();
}
END_TEST

START_TEST(poison_task_fails_after_bounded_attempts_rest_complete)
{
    enum { N = 200, POISON = 57 };
    void *ctx = zmq_ctx_new();
    lmq_pool_t *p = lmq_pool_new(ctx, CHILD, NULL, 3);
    ck_assert_msg(p != NULL, "lmq_pool_new: %s", strerror(errno));
    ck_assert_int_eq(lmq_pool_set_max_attempts(p, 0), LMQ_EARG);
    ck_assert_int_eq(lmq_pool_set_max_attempts(p, 3), 0);
    long values[N + 1];
    int seen[N + 1];
    memset(seen, 0, sizeof seen);
    for (int i = 1; i <= N; i++) {
        char task[32];
        values[i] = i;
        int len = i == POISON ? snprintf(task, sizeof task, "crash") : snprintf(task, sizeof task, "echo:%d", i);
        ck_assert_int_eq(lmq_pool_submit(p, task, (size_t)len, NULL), 0);
    }
    int poison_seen = 0;
    for (;;) {
        uint64_t id = 0;
        void *r = NULL;
        size_t len = 0;
        int rc = lmq_pool_result(p, &id, &r, &len, 30000);
        if (rc == LMQ_ENOTFOUND)
            break;
        ck_assert_msg(id >= 1 && id <= N && seen[id]++ == 0, "task %llu unknown or delivered twice",
                      (unsigned long long)id);
        if (id == POISON) {
            ck_assert_int_eq(rc, LMQ_EIO);
            ck_assert_ptr_null(r);
            const char *e = lmq_pool_last_error(p);
            ck_assert_msg(strstr(e, "task 57: 3 workers died while it was in flight (last: killed by signal 6"), "%s",
                          e);
            poison_seen++;
            continue;
        }
        ck_assert_msg(rc == 0, "task %llu: %s: %s", (unsigned long long)id, lmq_strerror(rc), lmq_pool_last_error(p));
        long v;
        int pid;
        char text[64] = "";
        memcpy(text, r, len < sizeof text - 1 ? len : sizeof text - 1);
        ck_assert(sscanf(text, "%ld from %d", &v, &pid) == 2 && v == values[id] * 3);
        free(r);
    }
    ck_assert_int_eq(poison_seen, 1);
    for (int i = 1; i <= N; i++)
        ck_assert_msg(seen[i] == 1, "task %d delivered %d times", i, seen[i]);
    /* Three deaths, three restarts: the last may still wait out its back-off
     * (the pool works while it is called). */
    uint64_t id;
    double end = th_now_ms() + 20000;
    while (lmq_pool_restarts(p) < 3 && th_now_ms() < end) {
        ck_assert_int_eq(lmq_pool_submit(p, "echo:1", 6, NULL), 0);
        ck_assert_int_eq(lmq_pool_result(p, &id, NULL, NULL, 30000), 0);
    }
    ck_assert_uint_eq(lmq_pool_restarts(p), 3);
    /* A handler's own failure is reported once, not retried. */
    ck_assert_int_eq(lmq_pool_submit(p, "fail", 4, &id), 0);
    char want[64];
    snprintf(want, sizeof want, "task %llu: refused on purpose", (unsigned long long)id);
    ck_assert_int_eq(lmq_pool_result(p, &id, NULL, NULL, 30000), LMQ_EDEVICE);
    ck_assert_str_eq(lmq_pool_last_error(p), want);
    ck_assert_uint_eq(lmq_pool_restarts(p), 3);
    /* Large results and empty tasks travel too. */
    void *r;
    size_t len;
    ck_assert_int_eq(lmq_pool_submit(p, "huge", 4, NULL), 0);
    ck_assert_int_eq(lmq_pool_result(p, &id, &r, &len, 30000), 0);
    ck_assert_uint_eq(len, 1u << 20);
    ck_assert(((char *)r)[0] == 'x' && ((char *)r)[len - 1] == 'x');
    free(r);
    ck_assert_int_eq(lmq_pool_submit(p, NULL, 0, NULL), 0);
    ck_assert_int_eq(lmq_pool_result(p, &id, NULL, NULL, 30000), LMQ_EDEVICE); /* "" is not a known task */
    lmq_pool_destroy(&p);
    zmq_ctx_term(ctx);
    assert_no_children();
}
END_TEST

START_TEST(busy_worker_is_not_handed_more_than_its_credit)
{
    enum { N = 20 };
    void *ctx = zmq_ctx_new();
    char *args[] = {"--option", "credit=1", NULL};
    lmq_pool_t *p = lmq_pool_new(ctx, CHILD, args, 2);
    ck_assert_msg(p != NULL, "lmq_pool_new: %s", strerror(errno));
    uint64_t slow;
    ck_assert_int_eq(lmq_pool_submit(p, "slow:3000:1", 11, &slow), 0);
    long values[N + 2];
    for (int i = 2; i <= N + 1; i++) {
        char task[32];
        values[i] = i;
        int len = snprintf(task, sizeof task, "echo:%d", i);
        ck_assert_int_eq(lmq_pool_submit(p, task, (size_t)len, NULL), 0);
    }
    /* The slow task holds its worker's only credit: every other task goes to
     * the other worker, all finishing before the slow one. */
    pid_t busy = 0;
    for (int got = 0; got <= N; got++) {
        uint64_t id;
        void *r;
        size_t len;
        ck_assert_int_eq(lmq_pool_result(p, &id, &r, &len, 30000), 0);
        char text[64] = "";
        memcpy(text, r, len < sizeof text - 1 ? len : sizeof text - 1);
        free(r);
        long v;
        int pid;
        ck_assert(sscanf(text, "%ld from %d", &v, &pid) == 2);
        if (got < N) {
            ck_assert_msg(id != slow, "the slow task finished before %d quick ones", N - got);
            ck_assert_int_eq(v, values[id] * 3);
            ck_assert_msg(!busy || pid != busy, "a task ran on the busy worker");
            busy = pid == lmq_pool_worker_pid(p, 0) ? lmq_pool_worker_pid(p, 1) : lmq_pool_worker_pid(p, 0);
        } else {
            ck_assert_uint_eq(id, slow);
            ck_assert_int_eq(pid, busy);
        }
    }
    /* A worker refusing a bad credit is a worker that never became ready. */
    char *bad[] = {"--option", "credit=0", NULL};
    errno = 0;
    ck_assert_ptr_null(lmq_pool_new(ctx, CHILD, bad, 1));
    ck_assert_int_eq(errno, ECHILD);
    lmq_pool_destroy(&p);
    zmq_ctx_term(ctx);
    assert_no_children();
}
END_TEST

START_TEST(destroy_stops_hung_workers_no_zombie_no_process)
{
    void *ctx = zmq_ctx_new();
    lmq_pool_t *p = lmq_pool_new(ctx, CHILD, NULL, 3);
    ck_assert_msg(p != NULL, "lmq_pool_new: %s", strerror(errno));
    lmq_pool_set_stop_grace(p, 300);
    pid_t pids[3];
    for (int i = 0; i < 3; i++)
        ck_assert_int_gt(pids[i] = lmq_pool_worker_pid(p, i), 0);
    /* Two workers hang in their handler (deaf to the stop request and to
     * SIGTERM); one idles. */
    ck_assert_int_eq(lmq_pool_submit(p, "hang", 4, NULL), 0);
    ck_assert_int_eq(lmq_pool_submit(p, "hang", 4, NULL), 0);
    ck_assert_int_eq(lmq_pool_submit(p, "echo:1", 6, NULL), 0);
    uint64_t id;
    ck_assert_int_eq(lmq_pool_result(p, &id, NULL, NULL, 30000), 0);
    ck_assert_uint_eq(id, 3);
    ck_assert_int_eq(lmq_pool_result(p, &id, NULL, NULL, 200), LMQ_ETIMEOUT);
    double t0 = th_now_ms();
    lmq_pool_destroy(&p);
    double took = th_now_ms() - t0;
    for (int i = 0; i < 3; i++) {
        errno = 0;
        ck_assert_msg(kill(pids[i], 0) == -1 && errno == ESRCH, "worker %d still exists", (int)pids[i]);
    }
    ck_assert_msg(took >= 300, "destroy returned after %.0f ms, before the grace period", took);
    zmq_ctx_term(ctx);
    assert_no_children();
}
END_TEST

START_TEST(bad_arguments_are_refused)
{
    void *ctx = zmq_ctx_new();
    errno = 0;
    ck_assert_ptr_null(lmq_pool_new(NULL, CHILD, NULL, 1));
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_ptr_null(lmq_pool_new(ctx, CHILD, NULL, 0));
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_ptr_null(lmq_pool_new(ctx, CHILD, NULL, 257));
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_ptr_null(lmq_pool_new(ctx, "/nonexistent/labmq-worker", NULL, 2));
    ck_assert_int_eq(errno, ENOENT);
    char *unknown[] = {"--bogus", NULL}; /* the worker refuses its command line */
    ck_assert_ptr_null(lmq_pool_new(ctx, CENTROID, unknown, 2));
    ck_assert_int_eq(errno, ECHILD);
    lmq_pool_t *p = lmq_pool_new(ctx, CENTROID, NULL, 1);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(lmq_pool_submit(p, NULL, 5, NULL), LMQ_EARG);
    ck_assert_str_eq(lmq_pool_last_error(p), "lmq_pool_submit: task is NULL");
    ck_assert_int_eq(lmq_pool_result(p, NULL, NULL, NULL, 0), LMQ_ENOTFOUND);
    ck_assert_str_eq(lmq_pool_last_error(p), "no task is pending");
    ck_assert_int_eq(lmq_pool_submit(NULL, "x", 1, NULL), LMQ_EARG);
    ck_assert_int_eq(lmq_pool_result(NULL, NULL, NULL, NULL, 0), LMQ_EARG);
    ck_assert_int_eq(lmq_pool_worker_pid(p, 1), 0);
    lmq_pool_destroy(&p);
    zmq_ctx_term(ctx);
    assert_no_children();
}
END_TEST

START_TEST(late_duplicate_phantom_and_malformed_answers_are_dropped)
{
    enum { N = 20 };
    void *ctx = zmq_ctx_new();
    lmq_pool_t *p = lmq_pool_new(ctx, ROGUE, NULL, 1);
    ck_assert_msg(p != NULL, "lmq_pool_new: %s", strerror(errno));
    /* Its next incarnation answers each task also under this one's name. */
    pid_t first = lmq_pool_worker_pid(p, 0);
    ck_assert_int_eq(kill(first, SIGKILL), 0);
    int seen[N + 1];
    memset(seen, 0, sizeof seen);
    for (int i = 1; i <= N; i++) {
        char task[16];
        int len = snprintf(task, sizeof task, "%d", i);
        ck_assert_int_eq(lmq_pool_submit(p, task, (size_t)len, NULL), 0);
    }
    for (int i = 0; i < N; i++) {
        uint64_t id;
        void *r;
        size_t len;
        int rc = lmq_pool_result(p, &id, &r, &len, 30000);
        ck_assert_msg(rc == 0, "%s: %s", lmq_strerror(rc), lmq_pool_last_error(p));
        ck_assert_msg(id >= 1 && id <= N && seen[id]++ == 0, "task %llu unknown or delivered twice",
                      (unsigned long long)id);
        char text[64] = "", want[64];
        memcpy(text, r, len < sizeof text - 1 ? len : sizeof text - 1);
        snprintf(want, sizeof want, "%llu ok", (unsigned long long)id * 3);
        ck_assert_str_eq(text, want);
        free(r);
    }
    ck_assert_uint_eq(lmq_pool_restarts(p), 1);
    ck_assert_int_ne(lmq_pool_worker_pid(p, 0), first);
    /* The duplicates and phantoms that were still on their way: none surfaces. */
    ck_assert_int_eq(lmq_pool_result(p, NULL, NULL, NULL, 300), LMQ_ENOTFOUND);
    ck_assert_uint_eq(lmq_pool_pending(p), 0);
    uint64_t id;
    ck_assert_int_eq(lmq_pool_submit(p, "7", 1, &id), 0);
    ck_assert_uint_eq(id, N + 1);
    void *r;
    size_t len;
    ck_assert_int_eq(lmq_pool_result(p, &id, &r, &len, 30000), 0);
    ck_assert_uint_eq(id, N + 1);
    ck_assert(len == 5 && memcmp(r, "21 ok", 5) == 0);
    free(r);
    uint64_t other;
    ck_assert_int_eq(lmq_pool_result(p, &other, NULL, NULL, 300), LMQ_ENOTFOUND);
    lmq_pool_destroy(&p);
    zmq_ctx_term(ctx);
    assert_no_children();
}
END_TEST

/* The demo program finds its worker beside itself and checks every centroid. */
START_TEST(demo_program_gets_every_centroid_right)
{
    char dir[128], out[192];
    th_tempdir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/out", dir);
    char *argv[] = {DEMO, "--workers", "3", "--frames", "300", "--size", "17x23", NULL};
    int status;
    ck_assert_int_eq(th_wait_exit(th_spawn_to_files(argv, out, NULL), 60000, &status), 0);
    char *text = th_slurp(out);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s", text);
    ck_assert_msg(strstr(text, "300 17x23 frames") && strstr(text, "300 centroids right, 0 failed"), "%s", text);
    free(text);
    char *bad[] = {DEMO, "--size", "17", NULL};
    ck_assert_int_eq(th_wait_exit(th_spawn_to_files(bad, out, NULL), 60000, &status), 0);
    text = th_slurp(out);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 2, "%s", text);
    ck_assert_str_eq(text, "labmq-pool-demo: --size '17' is not HxW (1..4096 each, like 64x64)\n");
    free(text);
    th_rmtree(dir);
}
END_TEST

static Suite *pool_suite(void)
{
    Suite *s = suite_create("pool");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, centroid_2000_tasks_three_workers_each_result_once);
    tcase_add_loop_test(tc, worker_killed_mid_run_each_result_still_once, 0, 2);
    tcase_add_test(tc, poison_task_fails_after_bounded_attempts_rest_complete);
    tcase_add_test(tc, busy_worker_is_not_handed_more_than_its_credit);
    tcase_add_test(tc, destroy_stops_hung_workers_no_zombie_no_process);
    tcase_add_test(tc, bad_arguments_are_refused);
    tcase_add_test(tc, late_duplicate_phantom_and_malformed_answers_are_dropped);
    tcase_add_test(tc, demo_program_gets_every_centroid_right);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return th_run_suite(pool_suite()); }
