/* The broker thread: owns the ROUTER (control) and XPUB (data) sockets and
 * the broker ends of the device pipes. It validates every request (including
 * values against the device's tables), answers the daemon-wide ops itself,
 * and hands device requests to device threads as jobs; a slow device
 * therefore never delays the others. Every accepted request is answered
 * exactly once: replies a client is not reading yet wait in a backlog
 * instead of being dropped by ZeroMQ's high-water mark. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include "daemon_internal.h"
#include "dedup.h"
#include "flow.h"
#include "labmq/labmq.h"
#include "local.h"
#include "locks.h"
#include "supervise_internal.h"

#define MAX_PARTS (2 + 1 + LMQ__MAX_BINFRAMES)
#define DEVICE_QUEUE_LIMIT 1000
/* Replies to requests that were refused at once (errors) wait at most this
 * many in the backlog; beyond it a client that sends without reading loses
 * them (counted, logged). Replies to accepted requests always wait: their
 * number is bounded by the device queues. */
#define BACKLOG_REFUSED_LIMIT 10000
#define BACKLOG_RETRY_MS 5

#define JOB_CACHE 64
/* How often devices a reload stops are checked while they close. */
#define RETIRE_POLL_MS 10

/* A device a reload stopped, closing on its own thread while the broker
 * goes on serving the others; or (dev NULL) a device waiting to be launched. */
typedef struct retiring {
    lmq_dev_t *dev;       /* stopping; NULL once finished */
    lmq_dev_t *successor; /* launched once dev has closed: its reconfigured replacement */
    int64_t deadline;     /* mono ns: abandoned if still in its driver then */
} retiring_t;

/* A reply ZeroMQ could not take yet: the client's pipe is full. */
typedef struct pending {
    struct pending *next;
    size_t n;
    bool accepted;
    zmq_msg_t part[]; /* n: usually the routing id and a header, ~200 bytes in all */
} pending_t;

typedef struct broker {
    lmq_daemon_t *d;
    void *pipe, *router, *xpub;
    zmq_pollitem_t *items;
    size_t nitems; /* pipe, router, xpub, each device, each retiring device, the retire timer */
    /* devices a reload stopped, until they have closed (see "reload") */
    retiring_t *retiring;
    size_t nretiring, retiring_cap;
    int retire_timer; /* timerfd ticking while devices retire; -1 until needed */
    /* Finished jobs kept for reuse: a job is several KB, too big for
     * malloc's per-thread cache, and one is needed per request. */
    lmq__job_t *cache[JOB_CACHE];
    size_t ncache;
    pending_t *pend_head, *pend_tail;
    size_t npend, npend_refused;
    char **prefixes; /* subscribed topic prefixes (XPUB reports each once) */
    size_t nprefixes;
    const char *peer; /* who sent the request being handled (audit of refusals); NULL between requests */
    lmq__locks_t *locks;  /* who holds which device (locks.c) */
    lmq__dedup_t *dedup;  /* recent calls and sets of named clients (dedup.c) */
    lmq__flow_t *flow; /* flow-controlled subscriptions on the control endpoint */
    size_t largest_block; /* payload bytes, the largest published so far */
    int plain_hwm;        /* the XPUB's SNDHWM now */
} broker_t;

static lmq__job_t *job_get(broker_t *b)
{
    lmq__job_t *job = b->ncache ? b->cache[--b->ncache] : malloc(sizeof *job);
    if (!job)
        return NULL;
    job->prev = job->next = NULL;
    job->method = NULL;
    job->prop = NULL;
    job->failed = false;
    job->status = 0;
    job->fail_msg[0] = 0;
    job->peer[0] = 0;
    job->tracked = false;
    job->deadline_ns = 0;
    job->nenvelope = 0;
    job->nargs = 0;
    job->lclient = NULL; /* local channel: a ZeroMQ job */
    memset(&job->value, 0, sizeof job->value);
    memset(&job->req, 0, sizeof job->req);
    lmq__frames_init(&job->reply_bin);
    zmq_msg_init(&job->reply);
    return job;
}

/* Releases what the job holds and keeps the memory for the next request. */
static void job_put(broker_t *b, lmq__job_t *job)
{
    if (b->ncache == JOB_CACHE) {
        lmq__job_destroy(&job);
        return;
    }
    for (size_t i = 0; i < job->nenvelope; i++)
        zmq_msg_close(&job->envelope[i]);
    job->nenvelope = 0;
    lmq__request_clear(&job->req);
    for (size_t i = 0; i < job->nargs; i++)
        lmq_value_clear(&job->args[i]);
    job->nargs = 0;
    lmq_value_clear(&job->value);
    zmq_msg_close(&job->reply);
    lmq__frames_close(&job->reply_bin);
    b->cache[b->ncache++] = job;
}

/* ---- replies ---- */

static bool same_peer(const zmq_msg_t *a, const zmq_msg_t *b)
{
    size_t n = zmq_msg_size((zmq_msg_t *)a);
    return n == zmq_msg_size((zmq_msg_t *)b) &&
           memcmp(zmq_msg_data((zmq_msg_t *)a), zmq_msg_data((zmq_msg_t *)b), n) == 0;
}

/* Sends parts[0..n) (routing id first). Returns 0 when sent (or the client is
 * gone: nothing left to do), else EAGAIN with the parts untouched. */
static int try_send(broker_t *b, zmq_msg_t *parts, size_t n)
{
    /* ROUTER_MANDATORY: the first part fails with EAGAIN when this client's
     * pipe is full and EHOSTUNREACH when it has disconnected; once it is
     * taken, the rest of the message follows. */
    if (zmq_msg_send(&parts[0], b->router, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        int e = zmq_errno();
        if (e == EAGAIN)
            return EAGAIN;
        b->d->replies_undeliverable++;
        lmq_log(b->d->log, LMQ_LOG_DEBUG, "broker", "reply dropped: the client has gone (%s)", zmq_strerror(e));
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&parts[i]);
        return 0;
    }
    for (size_t i = 1; i < n; i++)
        if (zmq_msg_send(&parts[i], b->router, (i + 1 < n ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0) {
            lmq_log(b->d->log, LMQ_LOG_ERROR, "broker", "reply cut short: %s", zmq_strerror(zmq_errno()));
            for (size_t k = i; k < n; k++)
                zmq_msg_close(&parts[k]);
            break;
        }
    return 0;
}

static bool backlogged(const broker_t *b, const zmq_msg_t *id)
{
    for (const pending_t *p = b->pend_head; p; p = p->next)
        if (same_peer(&p->part[0], id))
            return true;
    return false;
}

/* Takes ownership of parts[0..n): sends them, or keeps them in the backlog
 * (in order per client) until the client reads. */
static void send_parts(broker_t *b, zmq_msg_t *parts, size_t n, bool accepted)
{
    if (!(b->npend && backlogged(b, &parts[0])) && try_send(b, parts, n) == 0)
        return;
    if (!accepted && b->npend_refused >= BACKLOG_REFUSED_LIMIT) {
        uint64_t k = ++b->d->replies_dropped;
        if ((k & (k - 1)) == 0)
            lmq_log(b->d->log, LMQ_LOG_WARN, "broker",
                    "a client sends without reading its replies; %llu error replies dropped so far",
                    (unsigned long long)k);
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&parts[i]);
        return;
    }
    pending_t *p = malloc(sizeof *p + n * sizeof p->part[0]);
    if (!p) {
        b->d->replies_dropped++;
        lmq_log(b->d->log, LMQ_LOG_ERROR, "broker", "out of memory: a reply is lost");
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&parts[i]);
        return;
    }
    p->next = NULL;
    p->n = n;
    p->accepted = accepted;
    for (size_t i = 0; i < n; i++) {
        zmq_msg_init(&p->part[i]);
        zmq_msg_move(&p->part[i], &parts[i]);
    }
    if (b->pend_tail)
        b->pend_tail->next = p;
    else
        b->pend_head = p;
    b->pend_tail = p;
    b->npend++;
    b->npend_refused += !accepted;
}

/* Retries the backlog, oldest first, skipping clients still full. */
static void flush_backlog(broker_t *b)
{
    enum { MAX_BLOCKED = 32 };
    const zmq_msg_t *blocked[MAX_BLOCKED];
    size_t nblocked = 0;
    pending_t **link = &b->pend_head;
    while (*link) {
        pending_t *p = *link;
        bool skip = false;
        for (size_t i = 0; i < nblocked && !skip; i++)
            skip = same_peer(blocked[i], &p->part[0]);
        if (!skip && try_send(b, p->part, p->n) == 0) {
            *link = p->next;
            b->npend--;
            b->npend_refused -= !p->accepted;
            free(p);
            continue;
        }
        if (!skip) {
            if (nblocked == MAX_BLOCKED)
                break;
            blocked[nblocked++] = &p->part[0];
        }
        link = &p->next;
    }
    b->pend_tail = NULL;
    for (pending_t *p = b->pend_head; p; p = p->next)
        b->pend_tail = p;
}

static void free_backlog(broker_t *b)
{
    while (b->pend_head) {
        pending_t *p = b->pend_head;
        b->pend_head = p->next;
        for (size_t i = 0; i < p->n; i++)
            zmq_msg_close(&p->part[i]);
        free(p);
    }
    b->pend_tail = NULL;
    b->npend = b->npend_refused = 0;
}

/* Sends envelope + header + frames. The envelope is copied (the job keeps
 * its own); header and frames are consumed. */
static void send_reply(broker_t *b, const zmq_msg_t *env, size_t nenv, zmq_msg_t *hdr, lmq__frames_t *bin,
                       bool accepted)
{
    zmq_msg_t parts[MAX_PARTS];
    size_t n = 0;
    for (size_t i = 0; i < nenv; i++) {
        zmq_msg_init(&parts[n]);
        zmq_msg_copy(&parts[n++], (zmq_msg_t *)&env[i]);
    }
    lmq__handoff_release(zmq_msg_data(hdr)); /* a client over inproc reads it in place */
    zmq_msg_init(&parts[n]);
    zmq_msg_move(&parts[n++], hdr);
    for (size_t i = 0; bin && i < bin->n; i++) {
        zmq_msg_init(&parts[n]);
        zmq_msg_move(&parts[n++], &bin->msg[i]);
    }
    if (bin)
        lmq__frames_close(bin);
    send_parts(b, parts, n, accepted);
}

static void reply_error(broker_t *b, const zmq_msg_t *env, size_t nenv, const lmq__request_t *req, int status,
                        const char *msg, bool accepted)
{
    zmq_msg_t hdr;
    b->d->errors++;
    /* Accepted requests are audited when their job ends. */
    if (!accepted && req && b->peer && lmq__op_changes_state(req->op))
        lmq__audit(b->d->log, b->peer, req, status, msg, 0);
    if (lmq__reply_error(&hdr, req && req->has_id, req ? req->id : 0, status, msg) != 0)
        return;
    send_reply(b, env, nenv, &hdr, NULL, accepted);
}

static void reply_ok(broker_t *b, const zmq_msg_t *env, size_t nenv, const lmq__request_t *req, json_t *result)
{
    zmq_msg_t hdr;
    if (!result) {
        reply_error(b, env, nenv, req, LMQ_EMEM, "out of memory", false);
        return;
    }
    if (lmq__reply_ok(&hdr, true, req->id, result) != 0)
        return;
    send_reply(b, env, nenv, &hdr, NULL, false);
}

/* ---- daemon-wide ops ---- */

static lmq_dev_t *find_device(lmq_daemon_t *d, const char *name)
{
    for (size_t i = 0; i < d->ndev; i++)
        if (strcmp(d->devs[i]->name, name) == 0)
            return d->devs[i];
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* What ping and stats show of the configuration: its generation, when it
 * was applied, and how the last reload went. */
static json_t *config_json(lmq_daemon_t *d)
{
    pthread_mutex_lock(&d->cfg_mu);
    json_t *j = json_pack("{s:I, s:I, s:o, s:o}", "generation", (json_int_t)d->generation, "loaded_ns",
                          (json_int_t)d->loaded_ns, "last_reload",
                          d->last_reload_ns ? json_string(d->last_reload) : json_null(), "last_reload_ns",
                          d->last_reload_ns ? json_integer((json_int_t)d->last_reload_ns) : json_null());
    pthread_mutex_unlock(&d->cfg_mu);
    return j;
}

static json_t *device_stats(lmq_dev_t *dev)
{
    const lmq__dev_stats_t *s = &dev->stats;
    uint32_t sorted[LMQ__LAT_RING];
    size_t n = s->ring_n < LMQ__LAT_RING ? s->ring_n : LMQ__LAT_RING;
    memcpy(sorted, s->ring, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_u32);
    double p50 = n ? sorted[n / 2] : 0, p99 = n ? sorted[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] : 0;
    double mean = s->calls ? s->latency_sum_us / (double)s->calls : 0;
    json_t *streams = json_array();
    for (size_t i = 0; i < dev->nstreams; i++) {
        lmq__stream_rt_t *st = &dev->streams[i];
        json_array_append_new(streams, json_pack("{s:s, s:I, s:I, s:I, s:I, s:I}", "name", dev->stream_defs[i].name,
                                                 "published", (json_int_t)atomic_load(&st->published), "dropped",
                                                 (json_int_t)atomic_load(&st->dropped), "skipped",
                                                 (json_int_t)atomic_load(&st->skipped), "errors",
                                                 (json_int_t)atomic_load(&st->errors), "subscriber_drops",
                                                 (json_int_t)st->subscriber_drops));
    }
    pthread_mutex_lock(&dev->mu);
    json_t *j =
        json_pack("{s:s, s:s, s:I, s:I, s:I, s:{s:f, s:f, s:f, s:f}, s:I, s:I, s:I, s:o}", "name", dev->name, "state",
                  lmq__dev_state_name(dev->dev_state), "calls", (json_int_t)s->calls, "errors", (json_int_t)s->errors,
                  "in_flight", (json_int_t)s->in_flight, "latency_us", "mean", mean, "p50", p50, "p99", p99, "max",
                  s->latency_max_us, "disconnects", (json_int_t)dev->disconnects, "reopens", (json_int_t)dev->reopens,
                  "restores", (json_int_t)dev->restores, "streams", streams);
    pthread_mutex_unlock(&dev->mu);
    if (j) {
        json_object_set_new(j, "events_dropped", json_integer((json_int_t)atomic_load(&dev->events_dropped)));
        json_object_set_new(j, "events_subscriber_drops", json_integer((json_int_t)dev->events_subscriber_drops));
        lmq__local_stats(dev, j); /* local channel: calls per path */
    }
    return j;
}

static void reply_no_device(broker_t *b, zmq_msg_t *env, size_t nenv, const lmq__request_t *req)
{
    lmq_daemon_t *d = b->d;
    char names[512], msg[700];
    size_t len = 0;
    names[0] = 0;
    for (size_t i = 0; i < d->ndev && len < sizeof names; i++)
        len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", i ? ", " : "", d->devs[i]->name);
    snprintf(msg, sizeof msg, "no device '%.64s' (devices: %s)", req->device, d->ndev ? names : "none");
    reply_error(b, env, nenv, req, LMQ_ENOTFOUND, msg, false);
}

/* The stream subscribers' part of stats (protocol 3.2). */
static void flow_stats(broker_t *b, json_t *result)
{
    json_object_set_new(result, "subscriber_memory", json_integer((json_int_t)lmq__flow_memory(b->flow)));
    json_object_set_new(result, "plain_subscriber_hwm", json_integer(b->plain_hwm));
    json_object_set_new(result, "subscribers", lmq__flow_stats(b->flow));
}

static void update_wanted(broker_t *b);

/* A plain SUB client that does not read makes the daemon hold at most about
 * the flow subscribers' bound (protocol 3.2): the XPUB's high-water mark
 * follows the largest block, as the shapes say (drivers set them when they
 * open: each state event recomputes) and as blocks show. It applies to
 * clients that connect afterwards. */
static void update_plain_hwm(broker_t *b)
{
    int hwm = lmq__flow_plain_hwm(b->d, lmq__flow_memory(b->flow), b->largest_block);
    if (hwm != b->plain_hwm && zmq_setsockopt(b->xpub, ZMQ_SNDHWM, &hwm, sizeof hwm) == 0)
        b->plain_hwm = hwm;
}

/* subscribe, credit, unsubscribe: answered by the flow module. */
static void handle_flow(broker_t *b, zmq_msg_t *env, size_t nenv, const lmq__request_t *req)
{
    json_t *result = NULL;
    char err[700];
    int rc = lmq__flow_request(b->flow, env, nenv, req, &result, err, sizeof err);
    if (rc != 0)
        reply_error(b, env, nenv, req, rc, err, false);
    else
        reply_ok(b, env, nenv, req, result);
    lmq__flow_pump(b->flow);
    if (lmq__flow_take_changed(b->flow))
        update_wanted(b);
}

static void handle_local(broker_t *b, zmq_msg_t *env, size_t nenv, lmq__request_t *req)
{
    lmq_daemon_t *d = b->d;
    json_t *result = NULL;
    switch (req->op) {
    case LMQ__OP_PING:
        result = json_pack("{s:s, s:s, s:i, s:s, s:s, s:f}", "daemon", "labmqd", "version", LMQ_VERSION_STRING,
                           "protocol", LMQ__PROTOCOL, "control", d->bound_control, "data", d->bound_data, "uptime_s",
                           (double)(lmq_clock_mono_ns() - d->started_ns) / 1e9);
        break;
    case LMQ__OP_LIST:
        result = json_array();
        for (size_t i = 0; i < d->ndev; i++) {
            lmq_dev_t *dev = d->devs[i];
            pthread_mutex_lock(&dev->mu);
            bool has_error = dev->dev_state == LMQ__DEV_DISCONNECTED || dev->dev_state == LMQ__DEV_FAULT;
            json_t *entry = json_pack("{s:s, s:s, s:s, s:s, s:b, s:o}", "name", dev->name, "driver",
                                      dev->drv->name, "description",
                                      dev->drv->description ? dev->drv->description : "", "state",
                                      lmq__dev_state_name(dev->dev_state), "open", dev->is_open, "error",
                                      has_error ? json_string(dev->open_error) : json_null());
            pthread_mutex_unlock(&dev->mu);
            if (entry)
                json_object_set_new(entry, "locked_by", lmq__locks_info(b->locks, i, lmq_clock_mono_ns()));
            json_array_append_new(result, entry);
        }
        break;
    case LMQ__OP_STATS: {
        json_t *devs = json_array();
        for (size_t i = 0; i < d->ndev; i++)
            if (!req->device || strcmp(req->device, d->devs[i]->name) == 0)
                json_array_append_new(devs, device_stats(d->devs[i]));
        if (req->device && json_array_size(devs) == 0) {
            json_decref(devs);
            goto no_device;
        }
        result = json_pack("{s:f, s:I, s:I, s:I, s:I, s:I, s:o}", "uptime_s",
                           (double)(lmq_clock_mono_ns() - d->started_ns) / 1e9, "requests", (json_int_t)d->requests,
                           "errors", (json_int_t)d->errors, "replies_waiting", (json_int_t)b->npend, "replies_dropped",
                           (json_int_t)d->replies_dropped, "replies_undeliverable",
                           (json_int_t)d->replies_undeliverable, "devices", devs);
        if (result)
            flow_stats(b, result);
        break;
    }
    case LMQ__OP_WORKERS:
        result = lmq__supervisor_snapshot(d->sup);
        break;
    case LMQ__OP_LOCK:
    case LMQ__OP_UNLOCK: {
        char err[400];
        int rc = lmq__locks_op(b->locks, req, &env[0], b->peer, lmq_clock_mono_ns(), &result, err, sizeof err);
        if (rc != 0) {
            reply_error(b, env, nenv, req, rc, err, false);
            return;
        }
        break;
    }
    case LMQ__OP_DESCRIBE: {
        lmq_dev_t *dev = find_device(d, req->device);
        if (!dev)
            goto no_device;
        result = lmq__describe(dev);
        lmq__local_describe(dev, result); /* local channel: where it listens */
        break;
    }
    default:
        break;
    }
    if (result && (req->op == LMQ__OP_PING || req->op == LMQ__OP_STATS))
        json_object_set_new(result, "config", config_json(d));
    reply_ok(b, env, nenv, req, result);
    return;
no_device:
    reply_no_device(b, env, nenv, req);
}

/* ---- device requests ---- */

/* The device's queue, in acceptance order: replies and CLOSED answers at
 * shutdown follow it. */
static void queue_append(lmq_dev_t *dev, lmq__job_t *job)
{
    job->next = NULL;
    job->prev = dev->queue_tail;
    if (dev->queue_tail)
        dev->queue_tail->next = job;
    else
        dev->queue_head = job;
    dev->queue_tail = job;
}

static void queue_remove(lmq_dev_t *dev, lmq__job_t *job)
{
    if (job->prev)
        job->prev->next = job->next;
    else
        dev->queue_head = job->next;
    if (job->next)
        job->next->prev = job->prev;
    else
        dev->queue_tail = job->prev;
    job->prev = job->next = NULL;
}

/* For duplicates that waited for the request they repeat (dedup.c). */
static void send_to_duplicate(void *user, const zmq_msg_t *env, size_t nenv, zmq_msg_t *hdr, lmq__frames_t *bin)
{
    send_reply(user, env, nenv, hdr, bin, true);
}

/* What a call/get/set passes before its checks: its deadline, a retry
 * (answered from memory, never run again) and the device's lock. Returns 0
 * to go on, 1 when answered here, or an error status with err. */
static int admit(broker_t *b, size_t dev_index, const lmq__request_t *req, zmq_msg_t *env, size_t nenv, char *err,
                 size_t errlen)
{
    if (req->deadline_ms == 0) {
        snprintf(err, errlen, "%s %s.%s: deadline passed before the device ran it (deadline_ms 0)",
                 lmq__op_name(req->op), req->device, req->name);
        return LMQ_ETIMEOUT;
    }
    int64_t now = lmq_clock_mono_ns();
    if (req->op == LMQ__OP_GET) {
        /* open to all; the holder's get renews its lease */
        lmq__locks_check(b->locks, dev_index, req, &env[0], b->peer, now, err, errlen);
        return 0;
    }
    zmq_msg_t hdr;
    lmq__frames_t bin;
    int status = 0;
    switch (lmq__dedup_lookup(b->dedup, req, env, nenv, now, &hdr, &bin, &status, err, errlen)) {
    case LMQ__DEDUP_REPLAY:
        lmq_log(b->d->log, LMQ_LOG_INFO, req->device, "retry of %s %s (id %llu of '%s') answered from memory",
                lmq__op_name(req->op), req->name, (unsigned long long)req->id, req->client);
        send_reply(b, env, nenv, &hdr, &bin, false);
        return 1;
    case LMQ__DEDUP_JOINED:
        return 1;
    case LMQ__DEDUP_REFUSED:
        return status;
    default:
        break;
    }
    return lmq__locks_check(b->locks, dev_index, req, &env[0], b->peer, now, err, errlen);
}

/* Reads one whole multipart message from the ROUTER and acts on it; false
 * when none was waiting. */
static bool handle_request(broker_t *b)
{
    lmq_daemon_t *d = b->d;
    zmq_msg_t parts[MAX_PARTS];
    zmq_msg_init(&parts[0]);
    if (zmq_msg_recv(&parts[0], b->router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&parts[0]);
        return false;
    }
    size_t n = 1 + (zmq_msg_more(&parts[0]) ? lmq__recv_rest(b->router, parts + 1, MAX_PARTS - 1) : 0);
    bool too_many = n > MAX_PARTS;
    if (too_many)
        n = MAX_PARTS;
    d->requests++;
    /* parts[0] is the client's routing id; REQ clients add an empty delimiter. */
    size_t nenv = (n >= 2 && zmq_msg_size(&parts[1]) == 0) ? 2 : 1;
    lmq__request_t req = {0};
    lmq__job_t *job = NULL;
    char err[700];
    if (too_many) {
        snprintf(err, sizeof err, "too many frames; at most %d binary frames follow the header", LMQ__MAX_BINFRAMES);
        reply_error(b, parts, nenv, NULL, LMQ_EPROTO, err, false);
        goto done;
    }
    if (n <= nenv) {
        /* Only an empty frame: answer as to a DEALER, whose header it was. */
        reply_error(b, parts, 1, NULL, LMQ_EPROTO, "empty header frame (expected a JSON object)", false);
        goto done;
    }
    zmq_msg_t *hdr = &parts[nenv];
    size_t nbin = n - nenv - 1;
    char peer[80];
    lmq__peer_name(hdr, peer, sizeof peer);
    b->peer = peer;
    if (lmq__request_parse(zmq_msg_data(hdr), zmq_msg_size(hdr), nbin, &req, err, sizeof err) != 0) {
        lmq_log(d->log, LMQ_LOG_DEBUG, "broker", "rejected request: %s", err);
        reply_error(b, parts, nenv, &req, LMQ_EPROTO, err, false);
        goto done;
    }
    if (req.op != LMQ__OP_CALL && req.op != LMQ__OP_SET && nbin) {
        reply_error(b, parts, nenv, &req, LMQ_EPROTO, "this op takes no binary frames", false);
        goto done;
    }
    if (lmq__auth_permit(d->auth, peer, req.op, err, sizeof err) != 0) {
        reply_error(b, parts, nenv, &req, LMQ_EPERM, err, false);
        goto done;
    }
    if (lmq__flow_op(req.op)) {
        handle_flow(b, parts, nenv, &req);
        goto done;
    }
    if (req.op != LMQ__OP_CALL && req.op != LMQ__OP_GET && req.op != LMQ__OP_SET) {
        handle_local(b, parts, nenv, &req);
        goto done;
    }
    lmq_dev_t *dev = find_device(d, req.device);
    if (!dev) {
        reply_no_device(b, parts, nenv, &req);
        goto done;
    }
    const lmq_method_t *method;
    const lmq_property_t *prop;
    int target = lmq__dev_target(dev, req.op == LMQ__OP_CALL, req.op == LMQ__OP_SET, req.name, &method, &prop, err,
                                 sizeof err);
    if (target != 0) {
        reply_error(b, parts, nenv, &req, target, err, false);
        goto done;
    }
    size_t dev_index = 0;
    while (d->devs[dev_index] != dev)
        dev_index++;
    int admitted = admit(b, dev_index, &req, parts, nenv, err, sizeof err);
    if (admitted != 0) {
        if (admitted < 0)
            reply_error(b, parts, nenv, &req, admitted, err, false);
        goto done;
    }
    int64_t deadline_ns = req.deadline_ms > 0 ? lmq_clock_mono_ns() + req.deadline_ms * 1000000 : 0;
    /* The running request counts: in_flight is everything accepted and not
     * yet answered. */
    if (dev->stats.in_flight >= DEVICE_QUEUE_LIMIT) {
        snprintf(err, sizeof err, "%s is not answering: %d requests already queued", dev->name, DEVICE_QUEUE_LIMIT);
        reply_error(b, parts, nenv, &req, LMQ_ETIMEOUT, err, false);
        goto done;
    }
    if (!(job = job_get(b))) {
        reply_error(b, parts, nenv, &req, LMQ_EMEM, "out of memory", false);
        goto done;
    }
    job->dev = dev;
    job->method = method;
    job->prop = prop;
    job->deadline_ns = deadline_ns;
    job->req = req;
    snprintf(job->peer, sizeof job->peer, "%s", peer);
    memset(&req, 0, sizeof req);
    lmq__frames_t bin;
    bin.n = nbin;
    for (size_t i = 0; i < nbin; i++) {
        zmq_msg_init(&bin.msg[i]);
        zmq_msg_move(&bin.msg[i], &parts[nenv + 1 + i]);
    }
    int rc = lmq__check_request(dev, job, &bin, err, sizeof err);
    lmq__frames_close(&bin);
    if (rc != 0) {
        reply_error(b, parts, nenv, &job->req, rc, err, false);
        goto done;
    }
    job->t_start = lmq_clock_mono_ns();
    job->nenvelope = nenv;
    for (size_t i = 0; i < nenv; i++) {
        zmq_msg_init(&job->envelope[i]);
        zmq_msg_move(&job->envelope[i], &parts[i]);
    }
    if (lmq__send_ptr(dev->broker_pipe, LMQ__MSG_JOB, job, ZMQ_DONTWAIT) != 0) {
        snprintf(err, sizeof err, "%s: request queue full", dev->name);
        reply_error(b, job->envelope, job->nenvelope, &job->req, LMQ_ETIMEOUT, err, false);
        goto done;
    }
    queue_append(dev, job);
    dev->stats.in_flight++;
    if (job->req.op != LMQ__OP_GET)
        job->tracked = lmq__dedup_start(b->dedup, &job->req, lmq_clock_mono_ns());
    job = NULL;
done:
    b->peer = NULL;
    if (job)
        job_put(b, job);
    lmq__request_clear(&req);
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&parts[i]);
    return true;
}

static void finish_job(broker_t *b, lmq__job_t *job)
{
    lmq_dev_t *dev = job->dev;
    queue_remove(dev, job);
    dev->stats.in_flight--;
    dev->stats.calls++;
    double us = (double)(lmq_clock_mono_ns() - job->t_start) / 1e3;
    dev->stats.latency_sum_us += us;
    if (us > dev->stats.latency_max_us)
        dev->stats.latency_max_us = us;
    dev->stats.ring[dev->stats.ring_n++ % LMQ__LAT_RING] = us > 4e9 ? UINT32_MAX : (uint32_t)us;
    if (job->failed) {
        dev->stats.errors++;
        b->d->errors++;
    }
    bool oom = zmq_msg_size(&job->reply) == 0;
    int status = job->failed ? job->status : 0;
    if (lmq__op_changes_state(job->req.op))
        lmq__audit(b->d->log, job->peer, &job->req, oom ? LMQ_EMEM : status,
                   oom ? "out of memory encoding the reply" : job->fail_msg, lmq_clock_mono_ns() - job->t_start);
    if (oom) {
        /* The driver's reply could not be encoded: MEM is the outcome, for a
         * retry too. */
        zmq_msg_close(&job->reply);
        lmq__frames_close(&job->reply_bin);
        if (lmq__reply_error(&job->reply, true, job->req.id, LMQ_EMEM, "out of memory encoding the reply") != 0)
            zmq_msg_init(&job->reply);
    }
    if (job->tracked)
        lmq__dedup_finish(b->dedup, &job->req, &job->reply, &job->reply_bin, lmq_clock_mono_ns(), send_to_duplicate,
                          b);
    if (zmq_msg_size(&job->reply) == 0)
        reply_error(b, job->envelope, job->nenvelope, &job->req, LMQ_EMEM, "out of memory encoding the reply", true);
    else
        send_reply(b, job->envelope, job->nenvelope, &job->reply, &job->reply_bin, true);
    job_put(b, job);
}

/* Sends a published message (topic, header, payload frames) to the flow
 * subscriptions (references) and to the data endpoint, without copying;
 * takes the parts. Used for what devices publish and for the events the
 * broker makes for them (a device stuck in its driver). */
static void publish_parts(broker_t *b, zmq_msg_t *parts, size_t np)
{
    lmq__flow_publish(b->flow, parts, np);
    if (lmq__flow_take_changed(b->flow))
        update_wanted(b);
    size_t payload = np >= 3 ? zmq_msg_size(&parts[2]) : 0;
    if (payload > b->largest_block || (zmq_msg_size(&parts[0]) > sizeof LMQ__EVENTS_PREFIX - 1 &&
                                       memcmp(zmq_msg_data(&parts[0]), LMQ__EVENTS_PREFIX,
                                              sizeof LMQ__EVENTS_PREFIX - 1) == 0)) {
        if (payload > b->largest_block)
            b->largest_block = payload;
        update_plain_hwm(b);
    }
    for (size_t i = 0; i < np; i++) {
        zmq_msg_send(&parts[i], b->xpub, (i + 1 < np ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
        zmq_msg_close(&parts[i]);
    }
}

static void publish_cb(void *arg, zmq_msg_t *parts, size_t np) { publish_parts(arg, parts, np); }

/* Reads one message from a device pipe: a finished job or a stream block;
 * false when none was waiting. */
static bool handle_device(broker_t *b, lmq_dev_t *dev)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, dev->broker_pipe, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return false;
    }
    const char *p = zmq_msg_data(&m);
    size_t n = zmq_msg_size(&m);
    if (n == 1 + sizeof(void *) && p[0] == LMQ__MSG_DONE) {
        lmq__job_t *job;
        memcpy(&job, p + 1, sizeof job);
        lmq__handoff_acquire(job);
        finish_job(b, job);
    } else if (n == 1 && p[0] == LMQ__MSG_PUBLISH && zmq_msg_more(&m)) {
        /* topic, header, payload frames (a stream block, or a change event
         * with or without a value frame): forwarded without copying, to the
         * flow subscriptions (references) and to the data endpoint. */
        zmq_msg_t parts[MAX_PARTS];
        size_t np = lmq__recv_rest(dev->broker_pipe, parts, MAX_PARTS);
        if (np > MAX_PARTS)
            np = MAX_PARTS;
        publish_parts(b, parts, np);
    }
    zmq_msg_close(&m);
    return true;
}

/* ---- who listens ----
 * XPUB passes on the first subscription to a prefix and the last
 * unsubscription from it; the set of prefixes somebody holds tells each
 * device which of its streams to publish at all. */

static void update_wanted(broker_t *b)
{
    lmq_daemon_t *d = b->d;
    for (size_t i = 0; i < d->ndev; i++)
        for (size_t k = 0; k < d->devs[i]->nstreams; k++) {
            lmq__stream_rt_t *st = &d->devs[i]->streams[k];
            bool wanted = b->flow && lmq__flow_wants(b->flow, st->topic);
            for (size_t p = 0; p < b->nprefixes && !wanted; p++)
                wanted = strncmp(st->topic, b->prefixes[p], strlen(b->prefixes[p])) == 0;
            atomic_store(&st->wanted, wanted);
        }
}

static bool handle_subscription(broker_t *b)
{
    char msg[256];
    int n = zmq_recv(b->xpub, msg, sizeof msg - 1, ZMQ_DONTWAIT);
    if (n < 0)
        return false;
    if (n < 1 || n >= (int)sizeof msg - 1 || (msg[0] != 0 && msg[0] != 1))
        return true; /* not a subscription, or a prefix longer than any topic: it matches nothing */
    msg[n] = '\0';
    const char *prefix = msg + 1;
    lmq_log(b->d->log, LMQ_LOG_DEBUG, "broker", "%s '%s'", msg[0] ? "subscribe" : "unsubscribe", prefix);
    size_t i = 0;
    while (i < b->nprefixes && strcmp(b->prefixes[i], prefix) != 0)
        i++;
    if (msg[0] == 1 && i == b->nprefixes) {
        char **np = realloc(b->prefixes, (b->nprefixes + 1) * sizeof *np);
        char *copy = strdup(prefix);
        if (np)
            b->prefixes = np;
        if (!np || !copy) {
            free(copy);
            /* Cannot track it: publish everything rather than starve a subscriber. */
            for (size_t k = 0; k < b->d->ndev; k++)
                for (size_t j = 0; j < b->d->devs[k]->nstreams; j++)
                    atomic_store(&b->d->devs[k]->streams[j].wanted, true);
            return true;
        }
        b->prefixes[b->nprefixes++] = copy;
    } else if (msg[0] == 0 && i < b->nprefixes) {
        free(b->prefixes[i]);
        b->prefixes[i] = b->prefixes[--b->nprefixes];
    }
    update_wanted(b);
    return true;
}

static void report(broker_t *b, int status, const char *msg)
{
    char buf[600];
    int n = snprintf(buf, sizeof buf, "E%c%s", (char)-status, msg);
    zmq_send(b->pipe, buf, n < (int)sizeof buf ? (size_t)n : sizeof buf - 1, 0);
}

static void *make_socket(broker_t *b, int type)
{
    void *s = zmq_socket(b->d->zctx, type);
    int linger = 200; /* bounded: shutdown never waits long for a gone client */
    if (s)
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    return s;
}

/* ---- hung devices ---- */

static void drain_device(void *arg, lmq_dev_t *dev)
{
    /* Bounded by the pipe's high-water mark, with room for what arrives meanwhile. */
    for (int k = 0; k < 20000 && handle_device(arg, dev); k++)
        ;
}

/* Marks devices stuck in their driver FAULT; returns when to look again. */
static int64_t watch_devices(broker_t *b, int64_t now)
{
    int64_t next = INT64_MAX;
    for (size_t i = 0; i < b->d->ndev; i++) {
        int64_t due = lmq__dev_watch(b->d->devs[i], now, b->d->fault_after_ns, publish_cb, drain_device, b);
        if (due < next)
            next = due;
    }
    return next;
}

/* ---- shutdown ---- */

static void answer_queue_closed(broker_t *b, lmq_dev_t *dev, const char *why);

/* Stops every device thread (at most the grace period), answers what the
 * devices finished, then answers CLOSED, in order, what they never got to.
 * A device stuck in its driver is named and left behind. */
static void shutdown_devices(broker_t *b)
{
    lmq_daemon_t *d = b->d;
    for (size_t i = 0; i < d->ndev; i++) {
        char term = LMQ__MSG_TERM;
        atomic_store(&d->devs[i]->stopping, true);
        if (d->devs[i]->broker_pipe)
            zmq_send(d->devs[i]->broker_pipe, &term, 1, ZMQ_DONTWAIT);
    }
    int64_t deadline = lmq_clock_mono_ns() + d->stop_grace_ns;
    size_t nstuck = 0;
    int len = 0;
    d->stuck_msg[0] = 0;
    for (size_t i = 0; i < d->ndev; i++) {
        lmq_dev_t *dev = d->devs[i];
        if (lmq__dev_join(dev, deadline) == 0)
            continue;
        pthread_mutex_lock(&dev->mu);
        double secs = dev->busy_since ? (double)(lmq_clock_mono_ns() - dev->busy_since) / 1e9 : 0;
        char what[160];
        snprintf(what, sizeof what, "%s", dev->busy_since ? dev->busy_what : "its driver");
        pthread_mutex_unlock(&dev->mu);
        lmq_log(d->log, LMQ_LOG_ERROR, dev->name,
                "stuck in its driver (%s, for %.1f s): not waiting for it beyond the %.1f s grace period", what, secs,
                (double)d->stop_grace_ns / 1e9);
        if (len >= 0 && (size_t)len < sizeof d->stuck_msg)
            len += snprintf(d->stuck_msg + len, sizeof d->stuck_msg - (size_t)len, "%s%s (in %s for %.1f s)",
                            nstuck ? ", " : "", dev->name, what, secs);
        nstuck++;
    }
    d->nstuck = nstuck;
    for (size_t i = 0; i < d->ndev; i++) {
        lmq_dev_t *dev = d->devs[i];
        if (!dev->broker_pipe)
            continue;
        /* Even a device left stuck may have finished jobs before: their
         * replies are real and go out (its thread writes only its own end of
         * the pipe; the job it holds now is still in the queue). */
        while (handle_device(b, dev))
            ;
        answer_queue_closed(b, dev, "the daemon is shutting down");
        zmq_close(dev->broker_pipe);
        dev->broker_pipe = NULL;
    }
    /* Give the last replies their chance to leave (the sockets' linger
     * bounds it). */
    for (int tries = 0; b->npend && tries < 40; tries++) {
        flush_backlog(b);
        if (b->npend) {
            struct timespec nap = {0, BACKLOG_RETRY_MS * 1000000L};
            nanosleep(&nap, NULL);
        }
    }
}

/* ---- reload ----
 * lmq_daemon_reload (the caller's thread) prepares the new devices and sends
 * a plan over the daemon pipe; here, between two poll passes, the broker
 * binds their pipes, swaps the device table and tells the removed devices to
 * stop. They close on their own threads while the others go on being served;
 * retire_poll forwards what they still send, and once each has exited (or
 * overrun the stop grace) answers its unfinished requests CLOSED, frees it,
 * and launches its reconfigured replacement, which thus never opens the
 * instrument while the old instance still holds it. */

/* Creates and binds the broker's end of a device's pipe at
 * dev->pipe_endpoint (at start-up and for a device a reload adds). */
static int bind_device_pipe(broker_t *b, lmq_dev_t *dev)
{
    dev->broker_pipe = make_socket(b, ZMQ_PAIR);
    if (!dev->broker_pipe)
        return LMQ_ESYS;
    lmq__pipe_options(dev->broker_pipe);
    if (zmq_bind(dev->broker_pipe, dev->pipe_endpoint) != 0) {
        zmq_close(dev->broker_pipe);
        dev->broker_pipe = NULL;
        return LMQ_ESYS;
    }
    return 0;
}

/* Answers CLOSED, in order, every request a device accepted and never
 * finished (its thread has exited or been abandoned): at shutdown, and for a
 * device a reload removed. why: "the daemon is shutting down", "removed from
 * the configuration by a reload". Audited; retries waiting get the same. */
static void answer_queue_closed(broker_t *b, lmq_dev_t *dev, const char *why)
{
    lmq__job_t *running = NULL;
    if (dev->abandoned) {
        pthread_mutex_lock(&dev->mu);
        running = dev->current;
        pthread_mutex_unlock(&dev->mu);
    }
    while (dev->queue_head) {
        lmq__job_t *job = dev->queue_head;
        queue_remove(dev, job);
        dev->stats.in_flight--;
        char msg[300];
        if (job == running)
            snprintf(msg, sizeof msg, "%s: %s and the device is stuck in this request; its outcome is unknown",
                     dev->name, why);
        else
            snprintf(msg, sizeof msg, "%s: %s", dev->name, why);
        if (lmq__op_changes_state(job->req.op))
            lmq__audit(b->d->log, job->peer, &job->req, LMQ_ECLOSED, msg, lmq_clock_mono_ns() - job->t_start);
        if (job->tracked) {
            /* retries waiting for it get the same answer (dedup.c) */
            zmq_msg_t hdr;
            if (lmq__reply_error(&hdr, true, job->req.id, LMQ_ECLOSED, msg) == 0) {
                lmq__dedup_finish(b->dedup, &job->req, &hdr, NULL, lmq_clock_mono_ns(), send_to_duplicate, b);
                zmq_msg_close(&hdr);
            }
        }
        reply_error(b, job->envelope, job->nenvelope, &job->req, LMQ_ECLOSED, msg, true);
        /* The stuck thread still holds the running job: never free it. */
        if (job != running)
            lmq__job_destroy(&job);
    }
}

/* Ticks every RETIRE_POLL_MS while devices retire, so that one overrunning
 * its deadline is finished even when nothing else wakes the broker (a
 * poll item of its own: the loop's timeout stays as it is). */
static void retire_timer_set(broker_t *b, bool on)
{
    if (b->retire_timer < 0 && on) {
        b->retire_timer = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
        if (b->retire_timer < 0)
            lmq_log(b->d->log, LMQ_LOG_ERROR, "broker",
                    "cannot create a timer (%s): removed devices are finished only when the broker wakes",
                    strerror(errno));
    }
    if (b->retire_timer < 0)
        return;
    struct itimerspec its = {0};
    if (on)
        its.it_value.tv_nsec = its.it_interval.tv_nsec = RETIRE_POLL_MS * 1000000L;
    timerfd_settime(b->retire_timer, 0, &its, NULL);
}

/* Points the poll items at the current devices, the retiring devices and
 * the retire timer. items must have room for 3 + ndev + nretiring + 1. */
static void fill_items(broker_t *b, zmq_pollitem_t *items)
{
    lmq_daemon_t *d = b->d;
    items[0] = (zmq_pollitem_t){b->pipe, 0, ZMQ_POLLIN, 0};
    items[1] = (zmq_pollitem_t){b->router, 0, ZMQ_POLLIN, 0};
    items[2] = (zmq_pollitem_t){b->xpub, 0, ZMQ_POLLIN, 0};
    size_t n = 3;
    for (size_t i = 0; i < d->ndev; i++)
        items[n++] = (zmq_pollitem_t){d->devs[i]->broker_pipe, 0, ZMQ_POLLIN, 0};
    for (size_t k = 0; k < b->nretiring; k++)
        if (b->retiring[k].dev)
            items[n++] = (zmq_pollitem_t){b->retiring[k].dev->broker_pipe, 0, ZMQ_POLLIN, 0};
    if (b->nretiring && b->retire_timer >= 0)
        items[n++] = (zmq_pollitem_t){NULL, b->retire_timer, ZMQ_POLLIN, 0};
    b->nitems = n;
}

static void reload_reply(broker_t *b, int status, const char *msg)
{
    /* The main thread goes on with the plan and the tables once it reads
     * this (through ZeroMQ, which ThreadSanitizer does not see into). */
    lmq__handoff_release(b->d);
    if (status == 0) {
        char ok = LMQ__MSG_READY;
        zmq_send(b->pipe, &ok, 1, 0);
    } else
        report(b, status, msg);
}

/* Stops dev (its thread closes the driver) without waiting for it. */
static void retire_start(broker_t *b, lmq_dev_t *dev, lmq_dev_t *successor, int64_t deadline)
{
    /* A replacement from an earlier reload that has not been launched yet
     * (its predecessor is still closing) is dropped before it ever runs. */
    for (size_t k = 0; k < b->nretiring; k++)
        if (b->retiring[k].successor == dev) {
            b->retiring[k].successor = NULL;
            zmq_close(dev->pipe);
            dev->pipe = NULL;
            atomic_store(&dev->exited, true);
        }
    char term = LMQ__MSG_TERM;
    atomic_store(&dev->stopping, true);
    zmq_send(dev->broker_pipe, &term, 1, ZMQ_DONTWAIT);
    b->retiring[b->nretiring++] = (retiring_t){.dev = dev, .successor = successor, .deadline = deadline};
}

static void reload_apply(broker_t *b, lmq__reload_t *r)
{
    lmq_daemon_t *d = b->d;
    /* Everything that can fail comes first, so that a failure leaves the
     * running devices exactly as they were. */
    size_t cap = b->nretiring + r->nremoved + r->nadded;
    if (cap > b->retiring_cap) {
        retiring_t *grown = realloc(b->retiring, cap * sizeof *grown);
        if (!grown) {
            reload_reply(b, LMQ_EMEM, "out of memory");
            return;
        }
        b->retiring = grown;
        b->retiring_cap = cap;
    }
    zmq_pollitem_t *items = calloc(3 + r->ndev + cap + 1, sizeof *items);
    if (!items || lmq__locks_prepare(b->locks, r->ndev) != 0) {
        free(items);
        reload_reply(b, LMQ_EMEM, "out of memory");
        return;
    }
    for (size_t i = 0; i < r->nadded; i++) {
        lmq_dev_t *dev = r->added[i];
        snprintf(dev->pipe_endpoint, sizeof dev->pipe_endpoint, "inproc://lmq-%p-dev-r%llu-%zu", (void *)d,
                 (unsigned long long)r->seq, i);
        int rc = bind_device_pipe(b, dev);
        if (rc == 0 && (rc = lmq__dev_connect(dev, d->zctx, d->log, d->wires, r->epoch + i)) != 0) {
            zmq_close(dev->broker_pipe);
            dev->broker_pipe = NULL;
        }
        if (rc != 0) {
            for (size_t k = 0; k < i; k++) {
                zmq_close(r->added[k]->pipe);
                r->added[k]->pipe = NULL;
                zmq_close(r->added[k]->broker_pipe);
                r->added[k]->broker_pipe = NULL;
            }
            free(items);
            char msg[200];
            snprintf(msg, sizeof msg, "cannot create the pipe of device %s: %s", dev->name, zmq_strerror(zmq_errno()));
            reload_reply(b, LMQ_ESYS, msg);
            return;
        }
    }
    int64_t deadline = lmq_clock_mono_ns() + r->stop_grace_ns;
    for (size_t k = 0; k < r->nremoved; k++)
        retire_start(b, r->removed[k], r->successor[k], deadline);
    for (size_t i = 0; i < r->nadded; i++) {
        bool waits = false;
        for (size_t k = 0; k < r->nremoved; k++)
            waits = waits || r->successor[k] == r->added[i];
        /* Added back while an earlier reload's instance of that name is
         * still closing: it waits for it, like a reconfigured device. */
        for (size_t k = 0; k < b->nretiring && !waits; k++) {
            retiring_t *old = &b->retiring[k];
            if (old->dev && !old->successor && strcmp(old->dev->name, r->added[i]->name) == 0) {
                old->successor = r->added[i];
                waits = true;
            }
        }
        if (!waits)
            lmq__local_bind(r->added[i], d->bound_control, d->log); /* local channel (none: logged, not fatal) */
        if (!waits && lmq__dev_launch(r->added[i]) != 0) {
            lmq_log(d->log, LMQ_LOG_ERROR, r->added[i]->name, "cannot start its thread: %s; retrying", strerror(errno));
            b->retiring[b->nretiring++] = (retiring_t){.successor = r->added[i]};
        }
    }
    lmq_dev_t **old = d->devs;
    d->devs = r->devs;
    size_t nold = d->ndev;
    d->ndev = d->cap = r->ndev;
    r->devs = old;
    lmq__locks_remap(b->locks, old, nold);
    d->stop_grace_ns = r->stop_grace_ns;
    retire_timer_set(b, b->nretiring > 0);
    free(b->items);
    b->items = items;
    fill_items(b, items);
    update_wanted(b);
    reload_reply(b, 0, NULL);
}

/* A message on the daemon pipe: a reload (applied, true) or TERM (false). */
static bool daemon_command(broker_t *b)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, b->pipe, 0) < 0) {
        zmq_msg_close(&m);
        return zmq_errno() == EINTR || zmq_errno() == EAGAIN;
    }
    const char *p = zmq_msg_data(&m);
    bool reload = zmq_msg_size(&m) == 1 + sizeof(void *) && p[0] == LMQ__MSG_RELOAD;
    if (reload) {
        lmq__reload_t *r;
        memcpy(&r, p + 1, sizeof r);
        lmq__handoff_acquire(r); /* lmq__send_ptr released it */
        reload_apply(b, r);
    }
    zmq_msg_close(&m);
    return reload;
}

/* Finishes a stopped device: joined (or abandoned past its deadline), what
 * it sent forwarded, its unfinished requests answered CLOSED, freed. */
static void retire_one(broker_t *b, retiring_t *r)
{
    lmq_daemon_t *d = b->d;
    lmq_dev_t *dev = r->dev;
    bool replaced = r->successor != NULL;
    lmq__dev_join(dev, lmq_clock_mono_ns());
    if (dev->abandoned) {
        pthread_mutex_lock(&dev->mu);
        char what[160];
        snprintf(what, sizeof what, "%s", dev->busy_since ? dev->busy_what : "its driver");
        pthread_mutex_unlock(&dev->mu);
        d->nabandoned++;
        lmq_log(d->log, LMQ_LOG_ERROR, dev->name,
                "stuck in its driver (%s) beyond the %.1f s grace period after a reload %s it: abandoned (its thread "
                "and memory stay; labmqd will exit without waiting for it)",
                what, (double)d->stop_grace_ns / 1e9, replaced ? "reconfigured" : "removed");
    }
    while (handle_device(b, dev))
        ;
    answer_queue_closed(b, dev,
                        replaced
                            ? "reconfigured by a reload; this request was for the old configuration and did not run"
                            : "removed from the configuration by a reload");
    zmq_close(dev->broker_pipe);
    dev->broker_pipe = NULL;
    if (!dev->abandoned)
        lmq_log(d->log, LMQ_LOG_INFO, dev->name, "%s",
                replaced ? "closed; reopening with its new configuration" : "closed: removed from the configuration");
    lmq__dev_destroy(&dev); /* an abandoned one stays with its thread */
    r->dev = NULL;
}

/* Each pass while devices retire: forward what they send, finish those that
 * have exited or overrun, launch their replacements. */
static void retire_poll(broker_t *b)
{
    lmq_daemon_t *d = b->d;
    int64_t now = lmq_clock_mono_ns();
    uint64_t ticks;
    if (b->retire_timer >= 0 && read(b->retire_timer, &ticks, sizeof ticks) < 0) {
        /* EAGAIN: not this tick's wake-up */
    }
    size_t item = 3 + d->ndev, before = b->nretiring;
    bool finished = false;
    for (size_t k = 0; k < b->nretiring; k++) {
        retiring_t *r = &b->retiring[k];
        if (!r->dev)
            continue;
        if (b->items[item++].revents & ZMQ_POLLIN)
            for (int n = 0; n < 64 && handle_device(b, r->dev); n++)
                ;
        if (atomic_load(&r->dev->exited) || now >= r->deadline) {
            retire_one(b, r);
            finished = true;
        }
    }
    size_t keep = 0;
    for (size_t k = 0; k < b->nretiring; k++) {
        retiring_t *r = &b->retiring[k];
        if (!r->dev && r->successor) {
            /* Bound now, not with the plan: the instance it replaces had the
             * same path until it closed. */
            lmq__local_bind(r->successor, d->bound_control, d->log);
            if (lmq__dev_launch(r->successor) == 0)
                r->successor = NULL;
            else
                lmq_log(d->log, LMQ_LOG_ERROR, r->successor->name, "cannot start its thread: %s; retrying",
                        strerror(errno));
        }
        if (r->dev || r->successor)
            b->retiring[keep++] = *r;
    }
    b->nretiring = keep;
    if (!keep)
        retire_timer_set(b, false);
    if (finished || keep != before)
        fill_items(b, b->items); /* no more entries than before: it fits */
}

/* At shutdown: waits for the retiring devices (each up to its deadline) and
 * finishes them; a replacement never launched closes its pipe, and
 * shutdown_devices then answers its queue. */
static void retire_finish_all(broker_t *b)
{
    for (size_t k = 0; k < b->nretiring; k++) {
        retiring_t *r = &b->retiring[k];
        if (r->dev) {
            lmq__dev_join(r->dev, r->deadline);
            retire_one(b, r);
        }
        if (r->successor) {
            zmq_close(r->successor->pipe);
            r->successor->pipe = NULL;
        }
    }
    b->nretiring = 0;
}

void *lmq__broker_main(void *arg)
{
    broker_t b = {.d = arg, .retire_timer = -1};
    lmq_daemon_t *d = b.d;
    d->started_ns = lmq_clock_mono_ns();
    b.pipe = zmq_socket(d->zctx, ZMQ_PAIR);
    zmq_connect(b.pipe, d->pipe_endpoint);

    b.router = make_socket(&b, ZMQ_ROUTER);
    b.xpub = make_socket(&b, ZMQ_XPUB);
    b.flow = lmq__flow_new(d, b.router, d->subscriber_memory);
    char msg[560];
    size_t nitems = 3 + d->ndev;
    b.items = calloc(nitems, sizeof *b.items);
    if (!b.router || !b.xpub || !b.items || !b.flow) {
        report(&b, LMQ_ESYS, "cannot create the broker's sockets");
        goto out;
    }
    b.locks = lmq__locks_new(d);
    b.dedup = lmq__dedup_new();
    if (!b.locks || !b.dedup) {
        report(&b, LMQ_EMEM, "out of memory");
        goto out;
    }
    lmq__heartbeat_set(b.router);
    lmq__heartbeat_set(b.xpub);
    int64_t maxmsg = LMQ__MAX_FRAME;
    int mandatory = 1;
    zmq_setsockopt(b.router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(b.router, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory);
    if (lmq__auth_server_socket(d->auth, b.router, "control", msg, sizeof msg) != 0 ||
        lmq__auth_server_socket(d->auth, b.xpub, "data", msg, sizeof msg) != 0) {
        report(&b, LMQ_ESYS, msg);
        goto out;
    }
    if (zmq_bind(b.router, d->control) != 0) {
        int e = zmq_errno();
        snprintf(msg, sizeof msg, "cannot bind control endpoint %s: %s", d->control, zmq_strerror(e));
        report(&b, e == EADDRINUSE ? LMQ_EBUSY : LMQ_ECONFIG, msg);
        goto out;
    }
    update_plain_hwm(&b);
    if (zmq_bind(b.xpub, d->data) != 0) {
        int e = zmq_errno();
        snprintf(msg, sizeof msg, "cannot bind data endpoint %s: %s", d->data, zmq_strerror(e));
        report(&b, e == EADDRINUSE ? LMQ_EBUSY : LMQ_ECONFIG, msg);
        goto out;
    }
    /* A wildcard port ("tcp://host:*") binds some port: tell clients which one. */
    size_t len = sizeof d->bound_control;
    if (zmq_getsockopt(b.router, ZMQ_LAST_ENDPOINT, d->bound_control, &len) != 0)
        snprintf(d->bound_control, sizeof d->bound_control, "%s", d->control);
    len = sizeof d->bound_data;
    if (zmq_getsockopt(b.xpub, ZMQ_LAST_ENDPOINT, d->bound_data, &len) != 0)
        snprintf(d->bound_data, sizeof d->bound_data, "%s", d->data);
    for (size_t i = 0; i < d->ndev; i++) {
        lmq_dev_t *dev = d->devs[i];
        snprintf(dev->pipe_endpoint, sizeof dev->pipe_endpoint, "inproc://lmq-%p-dev-%zu", (void *)d, i);
        int rc = bind_device_pipe(&b, dev);
        if (rc == 0) {
            lmq__local_bind(dev, d->bound_control, d->log); /* local channel (none: logged, not fatal) */
            rc = lmq__dev_start(dev, d->zctx, d->log, d->wires, d->epoch + i);
        }
        if (rc != 0) {
            snprintf(msg, sizeof msg, "cannot start device %s: %s", dev->name, strerror(errno));
            report(&b, LMQ_ESYS, msg);
            goto out;
        }
    }
    /* Devices open on their own threads; start-up never waits for an
     * instrument (requests queue until the device has opened). */
    lmq_log(d->log, LMQ_LOG_INFO, "broker", "serving %zu device%s on %s (data %s)", d->ndev, d->ndev == 1 ? "" : "s",
            d->bound_control, d->bound_data);
    b.items[0] = (zmq_pollitem_t){b.pipe, 0, ZMQ_POLLIN, 0};
    b.items[1] = (zmq_pollitem_t){b.router, 0, ZMQ_POLLIN, 0};
    b.items[2] = (zmq_pollitem_t){b.xpub, 0, ZMQ_POLLIN, 0};
    for (size_t i = 0; i < d->ndev; i++)
        b.items[3 + i] = (zmq_pollitem_t){d->devs[i]->broker_pipe, 0, ZMQ_POLLIN, 0};
    b.nitems = nitems;
    char ready = LMQ__MSG_READY;
    zmq_send(b.pipe, &ready, 1, 0);

    int64_t watch_due = d->fault_after_ns ? lmq_clock_mono_ns() : INT64_MAX;
    for (;;) {
        long timeout = lmq__locks_expire(b.locks, lmq_clock_mono_ns(), b.npend ? BACKLOG_RETRY_MS : -1);
        if (watch_due != INT64_MAX) {
            int64_t now = lmq_clock_mono_ns();
            if (now >= watch_due)
                watch_due = watch_devices(&b, now);
            long watch_ms = watch_due == INT64_MAX ? -1 : (long)((watch_due - now) / 1000000 + 1);
            if (watch_ms >= 0 && (timeout < 0 || watch_ms < timeout))
                timeout = watch_ms;
        }
        int flow_timeout = lmq__flow_timeout_ms(b.flow);
        if (flow_timeout >= 0 && (timeout < 0 || flow_timeout < timeout))
            timeout = flow_timeout;
        if (zmq_poll(b.items, (int)nitems, timeout) < 0) {
            if (zmq_errno() == EINTR)
                continue;
            break;
        }
        if (b.items[0].revents & ZMQ_POLLIN) {
            if (!daemon_command(&b))
                break; /* TERM */
            /* a reload, which rebuilt the poll items */
            nitems = b.nitems;
            continue;
        }
        if (b.npend)
            flush_backlog(&b);
        lmq__flow_tick(b.flow);
        if (lmq__flow_take_changed(b.flow))
            update_wanted(&b);
        /* Replies first: they finish work already accepted. */
        /* Bounded batches keep one busy client or device from starving the rest. */
        for (size_t i = 0; i < d->ndev; i++)
            if (b.items[3 + i].revents & ZMQ_POLLIN)
                for (int k = 0; k < 64 && handle_device(&b, d->devs[i]); k++)
                    ;
        if (b.items[1].revents & ZMQ_POLLIN)
            for (int k = 0; k < 64 && handle_request(&b); k++)
                ;
        if (b.items[2].revents & ZMQ_POLLIN)
            for (int k = 0; k < 64 && handle_subscription(&b); k++)
                ;
        if (b.nretiring) { /* last: it may rebuild the poll items */
            retire_poll(&b);
            nitems = b.nitems;
        }
    }
    lmq_log(d->log, LMQ_LOG_INFO, "broker", "stopping: answering what was accepted, closing devices");
out:
    retire_finish_all(&b);
    shutdown_devices(&b);
    free_backlog(&b);
    lmq__locks_destroy(&b.locks);
    lmq__dedup_destroy(&b.dedup);
    lmq__flow_destroy(&b.flow);
    for (size_t i = 0; i < b.nprefixes; i++)
        free(b.prefixes[i]);
    free(b.prefixes);
    free(b.items);
    free(b.retiring);
    if (b.retire_timer >= 0)
        close(b.retire_timer);
    while (b.ncache)
        free(b.cache[--b.ncache]);
    if (b.router)
        zmq_close(b.router);
    if (b.xpub)
        zmq_close(b.xpub);
    zmq_close(b.pipe);
    return NULL;
}
