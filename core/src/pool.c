/* The task pool: N spawned workers behind a ROUTER with credit-based
 * dispatch, every task tracked until its result arrives, dead workers'
 * tasks resubmitted and the workers restarted, each outcome delivered once;
 * and the worker side (lmq_pool_worker_run) that turns a handler into a
 * worker program.
 *
 * Wire (internal; pool ROUTER <-> worker DEALER, routing id = --name):
 *   worker -> pool  ["R", u32 credit]                  ready, may hold `credit` tasks
 *   worker -> pool  (["D", u8 ok, u64 id] [payload])+  results (ok 0: error text)
 *   pool -> worker  (["T", u64 id] [task])+            tasks
 *   pool -> worker  ["S"]                              stop
 * Several tasks travel in one message, and their results come back in one:
 * for tiny tasks the cost is per message (a wake-up on each side), not per
 * task. A batch is at most half the worker's credit, so the next one is on
 * its way while the worker runs this one. A message that is not a whole
 * number of well-formed pairs is dropped entire.
 * Integers in native byte order: both ends are on this machine (ipc://). */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>
#include "labmq/pool.h"
#include "labmq/spawn.h"
#include "labmq/status.h"
#include "labmq/worker.h"

extern char **environ;

#define POOL_MAX_WORKERS 256
#define POOL_READY_MS 10000
#define POOL_ASK_MS 500 /* destroy: how long a stop request gets before SIGTERM */
#define POOL_BACKOFF_MIN_MS 100
#define POOL_BACKOFF_MAX_MS 5000
#define POOL_MAX_CREDIT 1024
#define POOL_MAX_PARTS (1 + 2 * POOL_MAX_CREDIT) /* routing id + a full batch of pairs */

typedef struct task {
    uint64_t id;
    void *data;
    size_t len;
    unsigned attempts; /* workers that died while it was in flight on them */
    int worker;        /* slot it is in flight on, -1 while queued */
    int status;        /* once finished: 0 or the failure, with error (may be NULL) */
    char *error;
    struct task *hnext, *qnext;
} task_t;

typedef struct queue {
    task_t *head, *tail;
    size_t n;
} queue_t;

typedef struct wslot {
    pid_t pid; /* 0 while down */
    int pidfd; /* -1 when the kernel has none: then polled with waitpid */
    unsigned gen;
    char name[32];
    size_t namelen;
    bool ready, ever_ready;
    bool isolated; /* runs a suspect task alone: gets nothing else meanwhile */
    unsigned credit, inflight, handled;
    double started_ms, restart_at_ms;
    unsigned backoff_ms;
} wslot_t;

struct lmq_pool {
    void *sock;
    char dir[256], ep[300];
    char **argv; /* program, --control, ep, --name, <slot name>, args..., NULL */
    size_t name_arg, nargv;
    int n;
    wslot_t *w;
    task_t **buckets;
    size_t nbuckets, ntasks;
    queue_t queue;    /* new tasks */
    queue_t suspects; /* tasks that were in flight when a worker died */
    int draining;     /* a worker fed nothing new until idle, for a suspect; -1 */
    queue_t done;     /* finished tasks (data: the result), in completion order */
    size_t ndone;
    uint64_t next_id;
    unsigned max_attempts, restarts;
    int grace_ms;
    bool startup_failed;
    char error[512];
    zmq_msg_t parts[POOL_MAX_PARTS]; /* drain's receive buffer */
    task_t *batch[POOL_MAX_CREDIT];  /* send_batch's */
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- the task table (chained hash by id) and the queues ---- */

static task_t **bucket(lmq_pool_t *p, uint64_t id)
{
    return &p->buckets[(id * 0x9E3779B97F4A7C15ull >> 20) & (p->nbuckets - 1)];
}

static bool table_grow(lmq_pool_t *p)
{
    size_t old = p->nbuckets, n = old ? old * 2 : 256;
    task_t **nb = calloc(n, sizeof *nb), **ob = p->buckets;
    if (!nb)
        return false;
    p->buckets = nb;
    p->nbuckets = n;
    for (size_t i = 0; i < old; i++)
        for (task_t *t = ob[i], *next; t; t = next) {
            next = t->hnext;
            task_t **b = bucket(p, t->id);
            t->hnext = *b;
            *b = t;
        }
    free(ob);
    return true;
}

static task_t *table_find(lmq_pool_t *p, uint64_t id)
{
    for (task_t *t = *bucket(p, id); t; t = t->hnext)
        if (t->id == id)
            return t;
    return NULL;
}

static void table_remove(lmq_pool_t *p, task_t *t)
{
    for (task_t **pp = bucket(p, t->id); *pp; pp = &(*pp)->hnext)
        if (*pp == t) {
            *pp = t->hnext;
            p->ntasks--;
            return;
        }
}

static void queue_push(queue_t *q, task_t *t, bool front)
{
    t->worker = -1;
    q->n++;
    if (front) {
        t->qnext = q->head;
        q->head = t;
        if (!q->tail)
            q->tail = t;
        return;
    }
    t->qnext = NULL;
    if (q->tail)
        q->tail->qnext = t;
    else
        q->head = t;
    q->tail = t;
}

static task_t *queue_pop(queue_t *q)
{
    task_t *t = q->head;
    if (t) {
        q->n--;
        if (!(q->head = t->qnext))
            q->tail = NULL;
    }
    return t;
}

static void task_free(task_t *t)
{
    if (t) {
        free(t->data);
        free(t->error);
        free(t);
    }
}

/* Moves a task out of the table into the delivery queue, its data replaced
 * by the result (taken). error (copied; a copy that fails leaves the generic
 * text) is the reason of a failure. No allocation is needed to finish. */
static void finish(lmq_pool_t *p, task_t *t, int status, void *data, size_t len, const char *error)
{
    table_remove(p, t);
    free(t->data);
    t->data = data;
    t->len = len;
    t->status = status;
    t->error = error ? strdup(error) : NULL;
    queue_push(&p->done, t, false);
    p->ndone++;
}

/* ---- workers ---- */

static int spawn_worker(lmq_pool_t *p, int i)
{
    wslot_t *w = &p->w[i];
    w->gen++;
    w->namelen = (size_t)snprintf(w->name, sizeof w->name, "pool-%d.%u", i, w->gen);
    p->argv[p->name_arg] = w->name;
    pid_t pid;
    int rc = lmq_spawn_ex(p->argv, environ, NULL, 0, &pid);
    p->argv[p->name_arg] = NULL;
    if (rc != 0) {
        int e = errno;
        snprintf(p->error, sizeof p->error, "cannot start worker %d (%s): %s", i, p->argv[0], strerror(e));
        errno = e;
        return rc;
    }
    w->pid = pid;
    w->pidfd = pidfd_open(pid, 0); /* close-on-exec by nature */
    w->ready = false;
    w->credit = w->inflight = w->handled = 0;
    w->started_ms = now_ms();
    w->restart_at_ms = 0;
    return 0;
}

static void describe_status(char *buf, size_t size, int status)
{
    if (WIFSIGNALED(status))
        snprintf(buf, size, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else if (WIFEXITED(status))
        snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
    else
        snprintf(buf, size, "ended (wait status %d)", status);
}

/* Worker i has been reaped: every task in flight on it counts an attempt
 * (one of them may have killed it; which, is not known: a result sent just
 * before a crash can be lost with the process) and becomes a suspect that
 * runs alone on a worker, so that a second death names the culprit; a task
 * out of attempts is failed. A restart is scheduled. */
static void worker_died(lmq_pool_t *p, int i, int status)
{
    wslot_t *w = &p->w[i];
    char how[128];
    describe_status(how, sizeof how, status);
    snprintf(p->error, sizeof p->error, "worker %d (pid %d) %s", i, (int)w->pid, how);
    if (w->pidfd >= 0)
        close(w->pidfd);
    w->pidfd = -1;
    w->pid = 0;
    w->ready = false;
    w->isolated = false;
    if (p->draining == i)
        p->draining = -1;
    if (!w->ever_ready)
        p->startup_failed = true;
    task_t *mine = NULL;
    for (size_t b = 0; b < p->nbuckets; b++)
        for (task_t *t = p->buckets[b]; t; t = t->hnext)
            if (t->worker == i) {
                t->qnext = mine;
                mine = t;
            }
    for (task_t *t = mine, *next; t; t = next) {
        next = t->qnext;
        if (++t->attempts >= p->max_attempts) {
            char why[400];
            snprintf(why, sizeof why, "task %llu: %u workers died while it was in flight (last: %s)",
                     (unsigned long long)t->id, t->attempts, how);
            finish(p, t, LMQ_EIO, NULL, 0, why);
        } else {
            queue_push(&p->suspects, t, false);
        }
    }
    w->inflight = 0;
    double now = now_ms();
    if (w->handled > 0 || now - w->started_ms >= 1000) {
        w->backoff_ms = POOL_BACKOFF_MIN_MS;
        w->restart_at_ms = now;
    } else {
        if (w->backoff_ms < POOL_BACKOFF_MIN_MS)
            w->backoff_ms = POOL_BACKOFF_MIN_MS;
        w->restart_at_ms = now + w->backoff_ms;
        w->backoff_ms = w->backoff_ms * 2 > POOL_BACKOFF_MAX_MS ? POOL_BACKOFF_MAX_MS : w->backoff_ms * 2;
    }
}

/* Reaps worker i if it has ended; true when it did. */
static bool reap(lmq_pool_t *p, int i)
{
    int st;
    pid_t pid = p->w[i].pid;
    if (pid <= 0)
        return false;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) {
        worker_died(p, i, r == pid ? st : 0);
        return true;
    }
    return false;
}

static int slot_of(lmq_pool_t *p, const zmq_msg_t *id)
{
    size_t len = zmq_msg_size(id);
    for (int i = 0; i < p->n; i++)
        if (p->w[i].pid && p->w[i].namelen == len && memcmp(p->w[i].name, zmq_msg_data((zmq_msg_t *)id), len) == 0)
            return i;
    return -1;
}

/* Reads one whole message, of at most cap parts, into parts: the number of
 * parts, 0 when none is waiting, -1 when it had more (dropped entire). */
static int recv_parts(void *sock, zmq_msg_t *parts, int cap)
{
    int n = 0;
    bool more = true, oversize = false;
    while (more) {
        zmq_msg_t extra, *m = n < cap ? &parts[n] : &extra;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, n ? 0 : ZMQ_DONTWAIT) < 0) { /* the rest of a message is there */
            zmq_msg_close(m);
            break;
        }
        more = zmq_msg_more(m);
        if (m == &extra) {
            zmq_msg_close(m);
            oversize = true;
        } else {
            n++;
        }
    }
    if (oversize) {
        for (int k = 0; k < n; k++)
            zmq_msg_close(&parts[k]);
        return -1;
    }
    return n;
}

/* One result (a "D" header and its payload) from worker i. */
static void handle_result(lmq_pool_t *p, int i, const unsigned char *h, zmq_msg_t *payload)
{
    wslot_t *w = &p->w[i];
    uint64_t id;
    memcpy(&id, h + 2, 8);
    task_t *t = table_find(p, id);
    if (!t || t->worker != i)
        return; /* already delivered, or resubmitted elsewhere: the other answer counts */
    w->inflight--;
    w->handled++;
    if (!w->inflight)
        w->isolated = false;
    size_t len = zmq_msg_size(payload);
    if (h[1]) {
        void *data = NULL;
        if (len && !(data = malloc(len))) {
            queue_push(&p->queue, t, true); /* cannot keep the result: run it again later */
            return;
        }
        if (len)
            memcpy(data, zmq_msg_data(payload), len);
        finish(p, t, 0, data, len, NULL);
    } else {
        char why[400];
        snprintf(why, sizeof why, "task %llu: %.*s", (unsigned long long)id, len > 300 ? 300 : (int)len,
                 (const char *)zmq_msg_data(payload));
        if (!len)
            snprintf(why, sizeof why, "task %llu: the handler failed", (unsigned long long)id);
        finish(p, t, LMQ_EDEVICE, NULL, 0, why);
    }
}

/* One message from a worker: parts[0] is its routing id. Anything malformed
 * (checked whole before any of it counts) or from a worker that is no longer
 * the slot's current one is dropped. */
static void handle_message(lmq_pool_t *p, zmq_msg_t *parts, int nparts)
{
    if (nparts < 2)
        return;
    int i = slot_of(p, &parts[0]);
    if (i < 0)
        return; /* a late word from a worker already reaped */
    wslot_t *w = &p->w[i];
    const unsigned char *h = zmq_msg_data(&parts[1]);
    if (nparts == 2 && zmq_msg_size(&parts[1]) == 5 && h[0] == 'R') {
        uint32_t credit;
        memcpy(&credit, h + 1, 4);
        w->credit = credit < 1 ? 1 : credit > POOL_MAX_CREDIT ? POOL_MAX_CREDIT : credit;
        w->ready = w->ever_ready = true;
        w->backoff_ms = POOL_BACKOFF_MIN_MS;
        return;
    }
    if (nparts % 2 == 0)
        return;
    for (int k = 1; k < nparts; k += 2) {
        h = zmq_msg_data(&parts[k]);
        if (zmq_msg_size(&parts[k]) != 10 || h[0] != 'D')
            return;
    }
    for (int k = 1; k < nparts; k += 2)
        handle_result(p, i, zmq_msg_data(&parts[k]), &parts[k + 1]);
}

/* Reads every message waiting on the socket. */
static void drain(lmq_pool_t *p)
{
    int n;
    while ((n = recv_parts(p->sock, p->parts, POOL_MAX_PARTS)) != 0) {
        if (n > 0)
            handle_message(p, p->parts, n);
        for (int k = 0; k < n; k++)
            zmq_msg_close(&p->parts[k]);
    }
}

/* Sends the first n tasks of p->batch to worker i as one message; false
 * (the worker then gets nothing more until it says ready again) when the
 * socket refuses: a worker that is gone (EHOSTUNREACH) has its death
 * reported by its pidfd. The caller puts unsent tasks back. */
static bool send_batch(lmq_pool_t *p, int i, int n)
{
    wslot_t *w = &p->w[i];
    if (zmq_send(p->sock, w->name, w->namelen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        w->ready = false;
        return false;
    }
    /* Past the routing id a ROUTER takes the rest of the message whole. */
    for (int k = 0; k < n; k++) {
        task_t *t = p->batch[k];
        unsigned char h[9] = {'T'};
        memcpy(h + 1, &t->id, 8);
        zmq_send(p->sock, h, sizeof h, ZMQ_SNDMORE | ZMQ_DONTWAIT);
        zmq_send(p->sock, t->data, t->len, (k + 1 < n ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
        t->worker = i;
    }
    w->inflight += (unsigned)n;
    return true;
}

/* Sends one task alone to worker i; false when the socket refused. */
static bool send_task(lmq_pool_t *p, int i, task_t *t)
{
    p->batch[0] = t;
    return send_batch(p, i, 1);
}

static bool usable(const wslot_t *w) { return w->pid && w->ready; }

/* lazy (while the caller is still submitting): a worker that is busy gets
 * only a full batch, so tasks submitted in a burst travel together; an idle
 * one gets what there is at once. */
static void dispatch(lmq_pool_t *p, bool lazy)
{
    /* Suspects first, each alone on an idle worker. */
    while (p->suspects.head) {
        int idle = -1;
        for (int i = 0; i < p->n && idle < 0; i++)
            if (usable(&p->w[i]) && p->w[i].inflight == 0)
                idle = i;
        if (idle < 0) {
            /* None idle: let the least busy one run dry instead of waiting
             * for the whole queue to drain. */
            if (p->draining < 0 || !usable(&p->w[p->draining]))
                for (int i = 0; i < p->n; i++)
                    if (usable(&p->w[i]) && !p->w[i].isolated &&
                        (p->draining < 0 || !usable(&p->w[p->draining]) ||
                         p->w[i].inflight < p->w[p->draining].inflight))
                        p->draining = i;
            break;
        }
        task_t *t = queue_pop(&p->suspects);
        if (!send_task(p, idle, t)) {
            queue_push(&p->suspects, t, true);
            continue;
        }
        p->w[idle].isolated = true;
        if (p->draining == idle)
            p->draining = -1;
    }
    /* Then new tasks to the worker with the most free credit, in batches:
     * at most half its credit (so the next batch is under way while it runs
     * this one) and at most its share of the queue (so a few slow tasks
     * still spread over the workers). */
    while (p->queue.head) {
        int best = -1, usable_n = 0;
        unsigned best_free = 0;
        for (int i = 0; i < p->n; i++) {
            wslot_t *w = &p->w[i];
            if (!usable(w) || w->isolated || (i == p->draining && p->suspects.head))
                continue;
            usable_n++;
            if (w->credit > w->inflight && w->credit - w->inflight > best_free) {
                best = i;
                best_free = w->credit - w->inflight;
            }
        }
        if (best < 0)
            return;
        size_t share = (p->queue.n + (size_t)usable_n - 1) / (size_t)usable_n;
        size_t half = p->w[best].credit / 2 ? p->w[best].credit / 2 : 1;
        size_t n = best_free;
        n = n > half ? half : n;
        n = n > share ? share : n;
        if (lazy && p->w[best].inflight && n < half)
            return;
        for (size_t k = 0; k < n; k++)
            p->batch[k] = queue_pop(&p->queue);
        if (!send_batch(p, best, (int)n))
            while (n)
                queue_push(&p->queue, p->batch[--n], true);
    }
}

/* Does the pool's work for up to timeout_ms (-1 forever), returning early
 * when something happened. */
static void pump(lmq_pool_t *p, int timeout_ms)
{
    zmq_pollitem_t items[POOL_MAX_WORKERS + 1];
    int owner[POOL_MAX_WORKERS + 1];
    int n = 0;
    items[n] = (zmq_pollitem_t){p->sock, 0, ZMQ_POLLIN, 0};
    owner[n++] = -1;
    double now = now_ms();
    long cap = timeout_ms;
    for (int i = 0; i < p->n; i++) {
        wslot_t *w = &p->w[i];
        if (w->pid && w->pidfd >= 0) {
            items[n] = (zmq_pollitem_t){NULL, w->pidfd, ZMQ_POLLIN, 0};
            owner[n++] = i;
        } else if (w->pid) {
            cap = cap < 0 || cap > 20 ? 20 : cap; /* no pidfd: look with waitpid */
        } else {
            long due = (long)(w->restart_at_ms - now) + 1;
            due = due < 0 ? 0 : due;
            cap = cap < 0 || cap > due ? due : cap;
        }
    }
    int rc = zmq_poll(items, n, cap);
    drain(p); /* results first: a worker's last answers count before its death */
    if (rc > 0)
        for (int k = 1; k < n; k++)
            if (items[k].revents & ZMQ_POLLIN)
                reap(p, owner[k]);
    now = now_ms();
    for (int i = 0; i < p->n; i++) {
        wslot_t *w = &p->w[i];
        if (w->pid && w->pidfd < 0)
            reap(p, i);
        if (!w->pid && w->restart_at_ms <= now) {
            if (spawn_worker(p, i) == 0)
                p->restarts++;
            else
                w->restart_at_ms = now + POOL_BACKOFF_MAX_MS;
        }
    }
    dispatch(p, false);
}

/* ---- the public API ---- */

static void stop_workers(lmq_pool_t *p)
{
    for (int i = 0; i < p->n; i++)
        if (p->w[i].pid && p->w[i].ready) {
            zmq_send(p->sock, p->w[i].name, p->w[i].namelen, ZMQ_SNDMORE | ZMQ_DONTWAIT);
            zmq_send(p->sock, "S", 1, ZMQ_DONTWAIT);
        }
    /* Asked, then SIGTERM, then SIGKILL, each with its own wait. */
    for (int phase = 0; phase < 3; phase++) {
        double deadline = now_ms() + (phase == 0 ? POOL_ASK_MS : phase == 1 ? p->grace_ms : 5000);
        if (phase > 0)
            for (int i = 0; i < p->n; i++)
                if (p->w[i].pid)
                    kill(-p->w[i].pid, phase == 1 ? SIGTERM : SIGKILL);
        for (;;) {
            int left = 0;
            for (int i = 0; i < p->n; i++) {
                wslot_t *w = &p->w[i];
                int st;
                if (w->pid && waitpid(w->pid, &st, WNOHANG) != 0) {
                    if (w->pidfd >= 0)
                        close(w->pidfd);
                    w->pidfd = -1;
                    w->pid = 0;
                }
                left += w->pid != 0;
            }
            if (!left || now_ms() >= deadline)
                break;
            struct timespec nap = {0, 2 * 1000 * 1000};
            nanosleep(&nap, NULL);
        }
    }
    for (int i = 0; i < p->n; i++) { /* SIGKILL was sent: this cannot block for long */
        if (p->w[i].pid)
            waitpid(p->w[i].pid, NULL, 0);
        if (p->w[i].pidfd >= 0)
            close(p->w[i].pidfd);
        p->w[i].pid = 0;
        p->w[i].pidfd = -1;
    }
}

void lmq_pool_destroy(lmq_pool_t **pp)
{
    if (!pp || !*pp)
        return;
    lmq_pool_t *p = *pp;
    if (p->w && p->sock)
        stop_workers(p);
    if (p->sock) {
        int zero = 0;
        zmq_setsockopt(p->sock, ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(p->sock);
    }
    for (size_t b = 0; b < p->nbuckets; b++)
        for (task_t *t = p->buckets[b], *next; t; t = next) {
            next = t->hnext;
            task_free(t);
        }
    free(p->buckets);
    for (task_t *t; (t = queue_pop(&p->done));)
        task_free(t);
    if (p->dir[0]) {
        char path[300];
        snprintf(path, sizeof path, "%s/pool", p->dir);
        unlink(path);
        rmdir(p->dir);
    }
    if (p->argv) {
        for (size_t i = 0; i < p->nargv; i++)
            if (i != p->name_arg)
                free(p->argv[i]);
        free(p->argv);
    }
    free(p->w);
    free(p);
    *pp = NULL;
}

lmq_pool_t *lmq_pool_new(void *zctx, const char *worker_program, char *const worker_args[], int nworkers)
{
    if (!zctx || !worker_program || !*worker_program || nworkers < 1 || nworkers > POOL_MAX_WORKERS) {
        errno = EINVAL;
        return NULL;
    }
    size_t nargs = 0;
    while (worker_args && worker_args[nargs])
        nargs++;
    lmq_pool_t *p = calloc(1, sizeof *p);
    int err = ENOMEM;
    if (!p)
        goto fail;
    p->n = nworkers;
    p->max_attempts = 3;
    p->grace_ms = 2000;
    p->next_id = 1;
    p->name_arg = 4;
    p->draining = -1;
    if (!(p->w = calloc((size_t)nworkers, sizeof *p->w)) || !(p->argv = calloc(nargs + 8, sizeof *p->argv)) ||
        !table_grow(p))
        goto fail;
    for (int i = 0; i < nworkers; i++)
        p->w[i].pidfd = -1;
    const char *tmp = getenv("TMPDIR");
    /* An ipc:// path must fit in sun_path (108 bytes). */
    if (!tmp || !*tmp || strlen(tmp) > 60)
        tmp = "/tmp";
    snprintf(p->dir, sizeof p->dir, "%s/labmq-pool-XXXXXX", tmp);
    if (!mkdtemp(p->dir)) { /* mode 0700: only this user reaches the socket */
        err = errno;
        p->dir[0] = 0;
        goto fail;
    }
    snprintf(p->ep, sizeof p->ep, "ipc://%s/pool", p->dir);
    p->nargv = nargs + 7;
    char parent[40];
    snprintf(parent, sizeof parent, "pool=%d", (int)getpid());
    if (!(p->argv[0] = strdup(worker_program)) || !(p->argv[1] = strdup("--control")) ||
        !(p->argv[2] = strdup(p->ep)) || !(p->argv[3] = strdup("--name")) || !(p->argv[5] = strdup("--option")) ||
        !(p->argv[6] = strdup(parent)))
        goto fail;
    for (size_t i = 0; i < nargs; i++)
        if (!(p->argv[7 + i] = strdup(worker_args[i])))
            goto fail;
    int one = 1, zero = 0;
    if (!(p->sock = zmq_socket(zctx, ZMQ_ROUTER)) ||
        zmq_setsockopt(p->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0 ||
        zmq_setsockopt(p->sock, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        /* The workers' credits bound what is queued; a high-water mark
         * would only turn a full queue into a false "unreachable". */
        zmq_setsockopt(p->sock, ZMQ_SNDHWM, &zero, sizeof zero) != 0 || zmq_bind(p->sock, p->ep) != 0) {
        err = errno;
        goto fail;
    }
    for (int i = 0; i < nworkers; i++)
        if (spawn_worker(p, i) != 0) {
            err = errno;
            goto fail;
        }
    double deadline = now_ms() + POOL_READY_MS;
    for (;;) {
        int ready = 0;
        for (int i = 0; i < nworkers; i++)
            ready += p->w[i].ever_ready;
        if (ready == nworkers)
            break;
        if (p->startup_failed) {
            err = ECHILD;
            goto fail;
        }
        double left = deadline - now_ms();
        if (left <= 0) {
            err = ETIMEDOUT;
            goto fail;
        }
        pump(p, (int)left);
    }
    p->error[0] = 0;
    return p;
fail:
    lmq_pool_destroy(&p);
    errno = err;
    return NULL;
}

int lmq_pool_submit(lmq_pool_t *p, const void *task, size_t len, uint64_t *task_id)
{
    if (!p || (len && !task)) {
        if (p)
            snprintf(p->error, sizeof p->error, "lmq_pool_submit: %s", !task ? "task is NULL" : "bad argument");
        return LMQ_EARG;
    }
    if (p->ntasks >= p->nbuckets * 2 && !table_grow(p)) {
        snprintf(p->error, sizeof p->error, "lmq_pool_submit: out of memory for the task table");
        return LMQ_EMEM;
    }
    task_t *t = calloc(1, sizeof *t);
    if (!t || (len && !(t->data = malloc(len)))) {
        free(t);
        snprintf(p->error, sizeof p->error, "lmq_pool_submit: out of memory for a %zu-byte task", len);
        return LMQ_EMEM;
    }
    if (len)
        memcpy(t->data, task, len);
    t->len = len;
    t->id = p->next_id++;
    task_t **b = bucket(p, t->id);
    t->hnext = *b;
    *b = t;
    p->ntasks++;
    queue_push(&p->queue, t, false);
    if (task_id)
        *task_id = t->id;
    /* An idle worker gets the task at once, a busy one full batches; only
     * while tasks wait read what came back (credit). Deaths are handled in
     * lmq_pool_result. */
    dispatch(p, true);
    if (p->queue.head) {
        drain(p);
        dispatch(p, true);
    }
    return 0;
}

int lmq_pool_result(lmq_pool_t *p, uint64_t *task_id, void **result, size_t *len, int timeout_ms)
{
    if (!p)
        return LMQ_EARG;
    if (result)
        *result = NULL;
    if (len)
        *len = 0;
    double deadline = now_ms() + timeout_ms;
    if (!p->done.head) {
        if (p->ntasks == 0) {
            snprintf(p->error, sizeof p->error, "no task is pending");
            return LMQ_ENOTFOUND;
        }
        pump(p, 0);
        while (!p->done.head) {
            double left = deadline - now_ms();
            if (timeout_ms >= 0 && left <= 0) {
                snprintf(p->error, sizeof p->error, "no task finished within %d ms (%zu pending)", timeout_ms,
                         p->ntasks);
                return LMQ_ETIMEOUT;
            }
            pump(p, timeout_ms < 0 ? -1 : (int)left + 1);
        }
    }
    task_t *d = queue_pop(&p->done);
    p->ndone--;
    if (task_id)
        *task_id = d->id;
    int status = d->status;
    if (status == 0) {
        if (result) {
            *result = d->data;
            d->data = NULL;
        }
        if (len)
            *len = d->len;
    } else {
        snprintf(p->error, sizeof p->error, "%s", d->error ? d->error : "the task failed");
    }
    task_free(d);
    return status;
}

size_t lmq_pool_pending(const lmq_pool_t *p) { return p ? p->ntasks + p->ndone : 0; }

int lmq_pool_set_max_attempts(lmq_pool_t *p, unsigned attempts)
{
    if (!p || attempts < 1)
        return LMQ_EARG;
    p->max_attempts = attempts;
    return 0;
}

void lmq_pool_set_stop_grace(lmq_pool_t *p, int ms)
{
    if (p)
        p->grace_ms = ms < 0 ? 0 : ms;
}

int lmq_pool_size(const lmq_pool_t *p) { return p ? p->n : 0; }

pid_t lmq_pool_worker_pid(const lmq_pool_t *p, int i) { return p && i >= 0 && i < p->n ? p->w[i].pid : 0; }

unsigned lmq_pool_restarts(const lmq_pool_t *p) { return p ? p->restarts : 0; }

const char *lmq_pool_last_error(const lmq_pool_t *p) { return p ? p->error : "no pool"; }

/* ---- the worker side ---- */

static void free_result(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Runs one task; its result goes to *reply (a "D" header) and *m (the
 * payload, taken by the message: sent without a copy). */
static void run_task(lmq_pool_handler_fn handler, void *user, const unsigned char *h, zmq_msg_t *task,
                     unsigned char reply[10], zmq_msg_t *m)
{
    void *result = NULL;
    size_t rlen = 0;
    int rc = handler(user, zmq_msg_data(task), zmq_msg_size(task), &result, &rlen);
    if (!result)
        rlen = 0;
    reply[0] = 'D';
    reply[1] = rc == 0;
    memcpy(reply + 2, h + 1, 8);
    if (rlen)
        zmq_msg_init_data(m, result, rlen, free_result, NULL);
    else {
        free(result);
        zmq_msg_init(m);
    }
}

/* The worker's buffers for one message of tasks and its results. */
typedef struct batch {
    zmq_msg_t in[2 * POOL_MAX_CREDIT];
    zmq_msg_t out[POOL_MAX_CREDIT];
    unsigned char head[POOL_MAX_CREDIT][10];
} batch_t;

/* Runs the tasks of one message (pairs of "T" header and task) and sends
 * their results back as one message; false when the socket refused. A
 * message that is not all well-formed pairs is not the pool's: ignored. */
static bool run_batch(void *sock, lmq_pool_handler_fn handler, void *user, batch_t *b, int n)
{
    if (n % 2)
        return true;
    for (int k = 0; k < n; k += 2)
        if (zmq_msg_size(&b->in[k]) != 9 || *(const unsigned char *)zmq_msg_data(&b->in[k]) != 'T')
            return true;
    int tasks = n / 2;
    for (int k = 0; k < tasks; k++)
        run_task(handler, user, zmq_msg_data(&b->in[2 * k]), &b->in[2 * k + 1], b->head[k], &b->out[k]);
    bool ok = true;
    for (int k = 0; k < tasks; k++) {
        int more = k + 1 < tasks ? ZMQ_SNDMORE : 0;
        if (ok && (zmq_send(sock, b->head[k], 10, ZMQ_SNDMORE) < 0 || zmq_msg_send(&b->out[k], sock, more) < 0))
            ok = false;
        if (!ok)
            zmq_msg_close(&b->out[k]);
    }
    return ok;
}

int lmq_pool_worker_run(int argc, char *const argv[], lmq_pool_handler_fn handler, void *user)
{
    int code;
    lmq_worker_t *w = lmq_worker_new(argc, argv,
                                     "A labmq pool worker: lmq_pool_new starts it with --control (the pool's\n"
                                     "endpoint) and --name. Options: credit=K, the tasks it may hold at once\n"
                                     "(1..1024, default 2).",
                                     &code);
    if (!w)
        return code;
    const char *name = lmq_worker_name(w);
    if (!handler) {
        fprintf(stderr, "%s: no task handler\n", name);
        lmq_worker_destroy(&w);
        return LMQ_WORKER_EXIT_FAILURE;
    }
    uint32_t credit = 2;
    const char *c = lmq_worker_option(w, "credit");
    if (c) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(c, &end, 10);
        if (errno || end == c || *end || v < 1 || v > POOL_MAX_CREDIT || *c == '-') {
            fprintf(stderr, "%s: --option credit=%s is not a whole number from 1 to 1024\n", name, c);
            lmq_worker_destroy(&w);
            return LMQ_WORKER_EXIT_USAGE;
        }
        credit = (uint32_t)v;
    }
    /* A pool that died before the runtime asked for PR_SET_PDEATHSIG sent no
     * signal: then this worker's parent is already someone else. */
    const char *pool = lmq_worker_option(w, "pool");
    if (pool && atol(pool) != (long)getppid()) {
        fprintf(stderr, "%s: the pool (pid %s) is gone\n", name, pool);
        lmq_worker_destroy(&w);
        return LMQ_WORKER_EXIT_OK;
    }
    code = LMQ_WORKER_EXIT_FAILURE;
    batch_t *b = malloc(sizeof *b);
    void *sock = b ? zmq_socket(lmq_worker_zctx(w), ZMQ_DEALER) : NULL;
    int linger = 2000;
    unsigned char ready[5] = {'R'};
    memcpy(ready + 1, &credit, 4);
    if (!sock || zmq_setsockopt(sock, ZMQ_ROUTING_ID, name, strlen(name)) != 0 ||
        zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(sock, lmq_worker_control(w)) != 0 || zmq_send(sock, ready, sizeof ready, 0) < 0) {
        fprintf(stderr, "%s: cannot connect to the pool at %s: %s\n", name, lmq_worker_control(w), zmq_strerror(errno));
        goto out;
    }
    zmq_pollitem_t items[] = {{sock, 0, ZMQ_POLLIN, 0}, {NULL, lmq_worker_fd(w), ZMQ_POLLIN, 0}};
    bool stop = false;
    while (!stop && !lmq_worker_stopping(w)) {
        if (zmq_poll(items, 2, -1) < 0 && errno != EINTR)
            break;
        for (;;) {
            int n = recv_parts(sock, b->in, 2 * POOL_MAX_CREDIT);
            if (n == 0)
                break;
            if (n == 1 && zmq_msg_size(&b->in[0]) == 1 && *(const char *)zmq_msg_data(&b->in[0]) == 'S')
                stop = true;
            else if (n > 0 && !run_batch(sock, handler, user, b, n)) {
                fprintf(stderr, "%s: cannot send a result: %s\n", name, zmq_strerror(errno));
                stop = true;
            }
            for (int k = 0; k < n; k++)
                zmq_msg_close(&b->in[k]);
            if (stop || lmq_worker_stopping(w))
                break;
        }
    }
    code = LMQ_WORKER_EXIT_OK;
out:
    if (sock)
        zmq_close(sock);
    free(b);
    lmq_worker_destroy(&w);
    return code;
}
