/* The broker thread: owns the ROUTER (control) and XPUB (data) sockets and
 * the broker ends of the device pipes. It validates every request, answers
 * the daemon-wide ops itself, and hands device requests to device threads as
 * jobs; a slow device therefore never delays the others. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon_internal.h"
#include "labmq/labmq.h"

#define MAX_PARTS (2 + 1 + LMQ__MAX_BINFRAMES)
#define DEVICE_QUEUE_LIMIT 1000

#define JOB_CACHE 64

typedef struct broker {
    lmq_daemon_t *d;
    void *pipe, *router, *xpub;
    zmq_pollitem_t *items;
    /* Finished jobs kept for reuse: a job is ~2 KB, too big for malloc's
     * per-thread cache, and one is needed per request. */
    lmq__job_t *cache[JOB_CACHE];
    size_t ncache;
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
    job->nenvelope = 0;
    memset(&job->req, 0, sizeof job->req);
    lmq__frames_init(&job->bin);
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
    lmq__frames_close(&job->bin);
    zmq_msg_close(&job->reply);
    lmq__frames_close(&job->reply_bin);
    b->cache[b->ncache++] = job;
}

static void send_reply(broker_t *b, zmq_msg_t *env, size_t nenv, zmq_msg_t *hdr, lmq__frames_t *bin)
{
    for (size_t i = 0; i < nenv; i++)
        zmq_msg_send(&env[i], b->router, ZMQ_SNDMORE);
    zmq_msg_send(hdr, b->router, bin && bin->n ? ZMQ_SNDMORE : 0);
    for (size_t i = 0; bin && i < bin->n; i++)
        zmq_msg_send(&bin->msg[i], b->router, i + 1 < bin->n ? ZMQ_SNDMORE : 0);
    if (bin)
        lmq__frames_close(bin); /* sent messages are empty now; closing is harmless */
}

static void reply_error(broker_t *b, zmq_msg_t *env, size_t nenv, const lmq__request_t *req, int status,
                        const char *msg)
{
    zmq_msg_t hdr;
    b->d->errors++;
    if (lmq__reply_error(&hdr, req && req->has_id, req ? req->id : 0, status, msg) != 0)
        return;
    send_reply(b, env, nenv, &hdr, NULL);
    zmq_msg_close(&hdr);
}

static void reply_ok(broker_t *b, zmq_msg_t *env, size_t nenv, const lmq__request_t *req, json_t *result)
{
    zmq_msg_t hdr;
    if (!result) {
        reply_error(b, env, nenv, req, LMQ_EMEM, "out of memory");
        return;
    }
    if (lmq__reply_ok(&hdr, true, req->id, result) != 0)
        return;
    send_reply(b, env, nenv, &hdr, NULL);
    zmq_msg_close(&hdr);
}

static lmq_dev_t *find_device(lmq_daemon_t *d, const char *name)
{
    for (size_t i = 0; i < d->ndev; i++)
        if (strcmp(d->devs[i]->name, name) == 0)
            return d->devs[i];
    return NULL;
}

/* "a, b, c" of a table's names, for error messages that show what exists. */
static void name_list(char *buf, size_t size, const void *table, size_t stride, size_t n)
{
    size_t len = 0;
    buf[0] = 0;
    for (size_t i = 0; i < n && len < size; i++) {
        const char *name = *(const char *const *)((const char *)table + i * stride);
        len += (size_t)snprintf(buf + len, size - len, "%s%s", i ? ", " : "", name);
    }
    if (n == 0)
        snprintf(buf, size, "none");
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
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
    return json_pack("{s:s, s:I, s:I, s:I, s:{s:f, s:f, s:f, s:f}}", "name", dev->name, "calls",
                     (json_int_t)s->calls, "errors", (json_int_t)s->errors, "in_flight", (json_int_t)s->in_flight,
                     "latency_us", "mean", mean, "p50", p50, "p99", p99, "max", s->latency_max_us);
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
    reply_error(b, env, nenv, req, LMQ_ENOTFOUND, msg);
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
            json_array_append_new(result, json_pack("{s:s, s:s, s:s, s:b, s:o}", "name", dev->name, "driver",
                                                    dev->drv->name, "description",
                                                    dev->drv->description ? dev->drv->description : "", "open",
                                                    dev->is_open,
                                                    "error", dev->is_open ? json_null() : json_string(dev->open_error)));
            pthread_mutex_unlock(&dev->mu);
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
        result = json_pack("{s:f, s:I, s:I, s:o}", "uptime_s", (double)(lmq_clock_mono_ns() - d->started_ns) / 1e9,
                           "requests", (json_int_t)d->requests, "errors", (json_int_t)d->errors, "devices", devs);
        break;
    }
    case LMQ__OP_DESCRIBE: {
        lmq_dev_t *dev = find_device(d, req->device);
        if (!dev)
            goto no_device;
        result = lmq__describe(dev);
        break;
    }
    default:
        break;
    }
    reply_ok(b, env, nenv, req, result);
    return;
no_device:
    reply_no_device(b, env, nenv, req);
}

static void job_link(lmq_daemon_t *d, lmq__job_t *job)
{
    job->prev = NULL;
    job->next = d->jobs;
    if (d->jobs)
        d->jobs->prev = job;
    d->jobs = job;
}

static void job_unlink(lmq_daemon_t *d, lmq__job_t *job)
{
    if (job->prev)
        job->prev->next = job->next;
    else
        d->jobs = job->next;
    if (job->next)
        job->next->prev = job->prev;
    job->prev = job->next = NULL;
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
    char err[600];
    if (too_many) {
        snprintf(err, sizeof err, "too many frames; at most %d binary frames follow the header", LMQ__MAX_BINFRAMES);
        reply_error(b, parts, nenv, NULL, LMQ_EPROTO, err);
        goto done;
    }
    if (n <= nenv) {
        /* Only an empty frame: answer as to a DEALER, whose header it was. */
        reply_error(b, parts, 1, NULL, LMQ_EPROTO, "empty header frame (expected a JSON object)");
        goto done;
    }
    zmq_msg_t *hdr = &parts[nenv];
    size_t nbin = n - nenv - 1;
    if (lmq__request_parse(zmq_msg_data(hdr), zmq_msg_size(hdr), nbin, &req, err, sizeof err) != 0) {
        lmq_log(d->log, LMQ_LOG_DEBUG, "broker", "rejected request: %s", err);
        reply_error(b, parts, nenv, &req, LMQ_EPROTO, err);
        goto done;
    }
    if (req.op != LMQ__OP_CALL && req.op != LMQ__OP_GET && req.op != LMQ__OP_SET) {
        if (nbin) {
            reply_error(b, parts, nenv, &req, LMQ_EPROTO, "this op takes no binary frames");
            goto done;
        }
        handle_local(b, parts, nenv, &req);
        goto done;
    }
    lmq_dev_t *dev = find_device(d, req.device);
    if (!dev) {
        reply_no_device(b, parts, nenv, &req);
        goto done;
    }
    const lmq_method_t *method = NULL;
    const lmq_property_t *prop = NULL;
    char names[400];
    if (req.op == LMQ__OP_CALL) {
        if (!(method = lmq__dev_method(dev, req.name))) {
            name_list(names, sizeof names, dev->drv->methods, sizeof(lmq_method_t), dev->nmethods);
            snprintf(err, sizeof err, "%s has no method '%.64s' (methods: %s)", dev->name, req.name, names);
            reply_error(b, parts, nenv, &req, LMQ_ENOTFOUND, err);
            goto done;
        }
    } else if (!(prop = lmq__dev_property(dev, req.name))) {
        name_list(names, sizeof names, dev->drv->properties, sizeof(lmq_property_t), dev->nprops);
        snprintf(err, sizeof err, "%s has no property '%.64s' (properties: %s)", dev->name, req.name, names);
        reply_error(b, parts, nenv, &req, LMQ_ENOTFOUND, err);
        goto done;
    } else if (req.op == LMQ__OP_SET && !prop->set) {
        snprintf(err, sizeof err, "%s.%s is read-only", dev->name, prop->name);
        reply_error(b, parts, nenv, &req, LMQ_EREADONLY, err);
        goto done;
    }
    if (dev->stats.in_flight >= DEVICE_QUEUE_LIMIT) {
        snprintf(err, sizeof err, "%s is not answering: %d requests already queued", dev->name, DEVICE_QUEUE_LIMIT);
        reply_error(b, parts, nenv, &req, LMQ_ETIMEOUT, err);
        goto done;
    }
    lmq__job_t *job = job_get(b);
    if (!job) {
        reply_error(b, parts, nenv, &req, LMQ_EMEM, "out of memory");
        goto done;
    }
    job->dev = dev;
    job->method = method;
    job->prop = prop;
    job->t_start = lmq_clock_mono_ns();
    job->nenvelope = nenv;
    for (size_t i = 0; i < nenv; i++) {
        zmq_msg_init(&job->envelope[i]);
        zmq_msg_move(&job->envelope[i], &parts[i]);
    }
    job->req = req;
    memset(&req, 0, sizeof req);
    for (size_t i = 0; i < nbin; i++) {
        zmq_msg_init(&job->bin.msg[i]);
        zmq_msg_move(&job->bin.msg[i], &parts[nenv + 1 + i]);
    }
    job->bin.n = nbin;
    if (lmq__send_ptr(dev->broker_pipe, LMQ__MSG_JOB, job, ZMQ_DONTWAIT) != 0) {
        snprintf(err, sizeof err, "%s: request queue full", dev->name);
        reply_error(b, job->envelope, job->nenvelope, &job->req, LMQ_ETIMEOUT, err);
        job_put(b, job);
        goto done;
    }
    job_link(d, job);
    dev->stats.in_flight++;
done:
    lmq__request_clear(&req);
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&parts[i]);
    return true;
}

static void finish_job(broker_t *b, lmq__job_t *job)
{
    lmq_dev_t *dev = job->dev;
    job_unlink(b->d, job);
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
    if (zmq_msg_size(&job->reply) == 0)
        reply_error(b, job->envelope, job->nenvelope, &job->req, LMQ_EMEM, "out of memory encoding the reply");
    else
        send_reply(b, job->envelope, job->nenvelope, &job->reply, &job->reply_bin);
    job_put(b, job);
}

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
        finish_job(b, job);
    } else if (n == 1 && p[0] == LMQ__MSG_PUBLISH) {
        /* topic, header, payload: forwarded without copying. */
        for (int i = 0; i < 3; i++) {
            zmq_msg_t part;
            zmq_msg_init(&part);
            zmq_msg_recv(&part, dev->broker_pipe, 0);
            zmq_msg_send(&part, b->xpub, i < 2 ? ZMQ_SNDMORE | ZMQ_DONTWAIT : ZMQ_DONTWAIT);
            zmq_msg_close(&part);
        }
    }
    zmq_msg_close(&m);
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

static void shutdown_devices(broker_t *b)
{
    lmq_daemon_t *d = b->d;
    for (size_t i = 0; i < d->ndev; i++) {
        char term = LMQ__MSG_TERM;
        atomic_store(&d->devs[i]->stopping, true);
        if (d->devs[i]->broker_pipe)
            zmq_send(d->devs[i]->broker_pipe, &term, 1, ZMQ_DONTWAIT);
    }
    for (size_t i = 0; i < d->ndev; i++)
        lmq__dev_join(d->devs[i]);
    /* Answer what the devices finished; refuse, but answer, what they never got to. */
    for (size_t i = 0; i < d->ndev; i++) {
        lmq_dev_t *dev = d->devs[i];
        if (!dev->broker_pipe)
            continue;
        while (handle_device(b, dev))
            ;
    }
    while (d->jobs) {
        lmq__job_t *job = d->jobs;
        job_unlink(d, job);
        char msg[200];
        snprintf(msg, sizeof msg, "%s: the daemon is shutting down", job->dev->name);
        reply_error(b, job->envelope, job->nenvelope, &job->req, LMQ_ECLOSED, msg);
        lmq__job_destroy(&job);
    }
    for (size_t i = 0; i < d->ndev; i++)
        if (d->devs[i]->broker_pipe) {
            zmq_close(d->devs[i]->broker_pipe);
            d->devs[i]->broker_pipe = NULL;
        }
}

void *lmq__broker_main(void *arg)
{
    broker_t b = {.d = arg};
    lmq_daemon_t *d = b.d;
    d->started_ns = lmq_clock_mono_ns();
    b.pipe = zmq_socket(d->zctx, ZMQ_PAIR);
    zmq_connect(b.pipe, d->pipe_endpoint);

    b.router = make_socket(&b, ZMQ_ROUTER);
    b.xpub = make_socket(&b, ZMQ_XPUB);
    int64_t maxmsg = LMQ__MAX_FRAME;
    zmq_setsockopt(b.router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    char msg[560];
    if (zmq_bind(b.router, d->control) != 0) {
        int e = zmq_errno();
        snprintf(msg, sizeof msg, "cannot bind control endpoint %s: %s", d->control, zmq_strerror(e));
        report(&b, e == EADDRINUSE ? LMQ_EBUSY : LMQ_ECONFIG, msg);
        goto out;
    }
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
        dev->broker_pipe = make_socket(&b, ZMQ_PAIR);
        int hwm = 10000, linger = 0;
        zmq_setsockopt(dev->broker_pipe, ZMQ_SNDHWM, &hwm, sizeof hwm);
        zmq_setsockopt(dev->broker_pipe, ZMQ_RCVHWM, &hwm, sizeof hwm);
        zmq_setsockopt(dev->broker_pipe, ZMQ_LINGER, &linger, sizeof linger);
        if (zmq_bind(dev->broker_pipe, dev->pipe_endpoint) != 0 ||
            lmq__dev_start(dev, d->zctx, d->log, d->wires, d->epoch + i) != 0) {
            snprintf(msg, sizeof msg, "cannot start device %s", dev->name);
            report(&b, LMQ_EMEM, msg);
            goto out;
        }
    }
    /* Devices open in parallel; wait until each has tried. */
    for (size_t i = 0; i < d->ndev; i++) {
        char c = 0;
        zmq_recv(d->devs[i]->broker_pipe, &c, 1, 0);
    }
    lmq_log(d->log, LMQ_LOG_INFO, "broker", "serving %zu device%s on %s (data %s)", d->ndev, d->ndev == 1 ? "" : "s",
            d->bound_control, d->bound_data);
    char ready = LMQ__MSG_READY;
    zmq_send(b.pipe, &ready, 1, 0);

    size_t nitems = 3 + d->ndev;
    b.items = calloc(nitems, sizeof *b.items);
    if (!b.items)
        goto out;
    b.items[0] = (zmq_pollitem_t){b.pipe, 0, ZMQ_POLLIN, 0};
    b.items[1] = (zmq_pollitem_t){b.router, 0, ZMQ_POLLIN, 0};
    b.items[2] = (zmq_pollitem_t){b.xpub, 0, ZMQ_POLLIN, 0};
    for (size_t i = 0; i < d->ndev; i++)
        b.items[3 + i] = (zmq_pollitem_t){d->devs[i]->broker_pipe, 0, ZMQ_POLLIN, 0};
    for (;;) {
        if (zmq_poll(b.items, (int)nitems, -1) < 0) {
            if (zmq_errno() == EINTR)
                continue;
            break;
        }
        if (b.items[0].revents & ZMQ_POLLIN)
            break; /* the only message on this pipe is TERM */
        /* Replies first: they finish work already accepted. */
        /* Bounded batches keep one busy client or device from starving the rest. */
        for (size_t i = 0; i < d->ndev; i++)
            if (b.items[3 + i].revents & ZMQ_POLLIN)
                for (int k = 0; k < 64 && handle_device(&b, d->devs[i]); k++)
                    ;
        if (b.items[1].revents & ZMQ_POLLIN)
            for (int k = 0; k < 64 && handle_request(&b); k++)
                ;
        if (b.items[2].revents & ZMQ_POLLIN) {
            /* Subscriptions: logged only; XPUB filters by itself. */
            char sub[256];
            int n = zmq_recv(b.xpub, sub, sizeof sub, ZMQ_DONTWAIT);
            if (n > 0)
                lmq_log(d->log, LMQ_LOG_DEBUG, "broker", "%s %.*s", sub[0] ? "subscribe" : "unsubscribe",
                        n - 1 < (int)sizeof sub - 1 ? n - 1 : (int)sizeof sub - 1, sub + 1);
        }
    }
    lmq_log(d->log, LMQ_LOG_INFO, "broker", "stopping: answering what was accepted, closing devices");
out:
    shutdown_devices(&b);
    free(b.items);
    while (b.ncache)
        free(b.cache[--b.ncache]);
    if (b.router)
        zmq_close(b.router);
    if (b.xpub)
        zmq_close(b.xpub);
    zmq_close(b.pipe);
    return NULL;
}
