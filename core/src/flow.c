/* Flow-controlled stream subscriptions (protocol 3.2), on the broker thread:
 * validation of subscribe/credit/unsubscribe, per-subscriber queues of
 * zero-copy message references bounded in bytes, credit accounting, drop
 * policies, leases, and their stats. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "flow.h"
#include "labmq/labmq.h"
#include "value_internal.h"

#define FLOW_RETRY_MS 5
#define MAX_BLOCK_PARTS 4 /* topic, header, payload; an event: topic, header, value frame */

/* One published message waiting for one subscriber: references, not copies
 * (zmq_msg_copy shares the payload). */
typedef struct fblock {
    struct fblock *next;
    size_t bytes, n;
    zmq_msg_t part[]; /* part[0]: the topic */
} fblock_t;

typedef struct fsub {
    struct fsub *next;
    zmq_msg_t peer; /* routing id */
    uint64_t id;
    bool lossless, dead;
    char **topics;
    size_t ntopics;
    uint32_t window, credit;
    /* Sizes of the blocks sent and not yet credited back, oldest first:
     * they count against the bound until the client says it consumed them. */
    size_t *ring;
    uint32_t ring_head, ring_n;
    size_t inflight_bytes;
    fblock_t *qh, *qt;
    size_t qn, qbytes;
    uint64_t delivered, dropped;
    int64_t lease_until, since;
} fsub_t;

struct lmq__flow {
    lmq_daemon_t *d;
    void *router;
    size_t memory;
    fsub_t *subs;
    size_t nsubs;
    uint64_t next_id;
    bool changed, stalled;
};

static int64_t now_ms(void) { return lmq_clock_mono_ns() / 1000000; }

lmq__flow_t *lmq__flow_new(lmq_daemon_t *d, void *router, size_t memory)
{
    lmq__flow_t *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->d = d;
    f->router = router;
    f->memory = memory;
    f->next_id = 1;
    return f;
}

static void block_free(fblock_t *b)
{
    for (size_t i = 0; i < b->n; i++)
        zmq_msg_close(&b->part[i]);
    free(b);
}

static void sub_free(fsub_t *s)
{
    while (s->qh) {
        fblock_t *b = s->qh;
        s->qh = b->next;
        block_free(b);
    }
    for (size_t i = 0; i < s->ntopics; i++)
        free(s->topics[i]);
    free(s->topics);
    free(s->ring);
    zmq_msg_close(&s->peer);
    free(s);
}

void lmq__flow_destroy(lmq__flow_t **pf)
{
    if (!pf || !*pf)
        return;
    lmq__flow_t *f = *pf;
    while (f->subs) {
        fsub_t *s = f->subs;
        f->subs = s->next;
        sub_free(s);
    }
    free(f);
    *pf = NULL;
}

size_t lmq__flow_memory(const lmq__flow_t *f) { return f->memory; }

static bool same_peer(const zmq_msg_t *a, const zmq_msg_t *b)
{
    size_t n = zmq_msg_size((zmq_msg_t *)a);
    return n == zmq_msg_size((zmq_msg_t *)b) &&
           memcmp(zmq_msg_data((zmq_msg_t *)a), zmq_msg_data((zmq_msg_t *)b), n) == 0;
}

static fsub_t *find_sub(const lmq__flow_t *f, const zmq_msg_t *peer)
{
    for (fsub_t *s = f->subs; s; s = s->next)
        if (!s->dead && same_peer(&s->peer, peer))
            return s;
    return NULL;
}

static bool topic_matches(const char *sub_topic, const char *topic, size_t len)
{
    /* "$events/" is the one prefix: every device's change events. */
    if (strcmp(sub_topic, LMQ__EVENTS_PREFIX) == 0)
        return len >= sizeof LMQ__EVENTS_PREFIX - 1 &&
               memcmp(topic, LMQ__EVENTS_PREFIX, sizeof LMQ__EVENTS_PREFIX - 1) == 0;
    return strlen(sub_topic) == len && memcmp(sub_topic, topic, len) == 0;
}

static bool sub_wants(const fsub_t *s, const char *topic, size_t len)
{
    for (size_t i = 0; i < s->ntopics; i++)
        if (topic_matches(s->topics[i], topic, len))
            return true;
    return false;
}

bool lmq__flow_wants(const lmq__flow_t *f, const char *topic)
{
    for (const fsub_t *s = f->subs; s; s = s->next)
        if (!s->dead && sub_wants(s, topic, strlen(topic)))
            return true;
    return false;
}

bool lmq__flow_take_changed(lmq__flow_t *f)
{
    bool c = f->changed;
    f->changed = false;
    return c;
}

/* ---- sending ---- */

/* The device and stream a topic belongs to, looked up when needed: a
 * reload may remove a device while blocks of it still wait in queues. */
static lmq_dev_t *topic_owner(const lmq__flow_t *f, const char *topic, size_t len, lmq__stream_rt_t **stream)
{
    const size_t plen = sizeof LMQ__EVENTS_PREFIX - 1;
    bool event = len > plen && memcmp(topic, LMQ__EVENTS_PREFIX, plen) == 0;
    *stream = NULL;
    for (size_t i = 0; i < f->d->ndev; i++) {
        lmq_dev_t *dev = f->d->devs[i];
        if (event) {
            if (strlen(dev->name) == len - plen && memcmp(dev->name, topic + plen, len - plen) == 0)
                return dev;
            continue;
        }
        for (size_t k = 0; k < dev->nstreams; k++)
            if (strlen(dev->streams[k].topic) == len && memcmp(dev->streams[k].topic, topic, len) == 0) {
                *stream = &dev->streams[k];
                return dev;
            }
    }
    return NULL;
}

static void count_drop(const lmq__flow_t *f, fsub_t *s, const zmq_msg_t *topic)
{
    s->dropped++;
    lmq__stream_rt_t *stream;
    lmq_dev_t *dev = topic_owner(f, zmq_msg_data((zmq_msg_t *)topic), zmq_msg_size((zmq_msg_t *)topic), &stream);
    if (stream)
        stream->subscriber_drops++;
    else if (dev)
        dev->events_subscriber_drops++;
}

/* Sends queued blocks while credit lasts. A full pipe leaves the block
 * queued for a retry; a client that has gone ends the subscription. */
static void pump(lmq__flow_t *f, fsub_t *s)
{
    while (!s->dead && s->credit > 0 && s->qh) {
        fblock_t *b = s->qh;
        zmq_msg_t id;
        zmq_msg_init(&id);
        zmq_msg_copy(&id, &s->peer);
        if (zmq_msg_send(&id, f->router, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&id);
            if (e == EAGAIN) {
                f->stalled = true;
                return;
            }
            lmq_log(f->d->log, LMQ_LOG_INFO, "flow", "subscription %llu ended: the client has gone (%s)",
                    (unsigned long long)s->id, zmq_strerror(e));
            s->dead = true;
            f->changed = true;
            return;
        }
        /* Once the routing id is taken, the rest of the message follows. */
        for (size_t i = 0; i < b->n; i++)
            zmq_msg_send(&b->part[i], f->router, (i + 1 < b->n ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
        s->qh = b->next;
        if (!s->qh)
            s->qt = NULL;
        s->qn--;
        s->qbytes -= b->bytes;
        s->credit--;
        s->ring[(s->ring_head + s->ring_n++) % s->window] = b->bytes;
        s->inflight_bytes += b->bytes;
        s->delivered++;
        block_free(b);
    }
}

static void drop_oldest(const lmq__flow_t *f, fsub_t *s)
{
    fblock_t *b = s->qh;
    s->qh = b->next;
    if (!s->qh)
        s->qt = NULL;
    s->qn--;
    s->qbytes -= b->bytes;
    count_drop(f, s, &b->part[0]);
    block_free(b);
}

/* Removes the subscriptions marked dead (their queues freed). */
static void reap(lmq__flow_t *f)
{
    for (fsub_t **link = &f->subs; *link;) {
        fsub_t *s = *link;
        if (s->dead) {
            *link = s->next;
            f->nsubs--;
            sub_free(s);
            f->changed = true;
        } else
            link = &s->next;
    }
}

void lmq__flow_publish(lmq__flow_t *f, zmq_msg_t *parts, size_t n)
{
    if (!f->subs || n < 2 || n > MAX_BLOCK_PARTS)
        return;
    const char *topic = zmq_msg_data(&parts[0]);
    /* The bound counts the frames and the daemon's bookkeeping of the
     * block: with tiny blocks the latter is most of it. */
    size_t tlen = zmq_msg_size(&parts[0]), bytes = LMQ__FLOW_BLOCK_OVERHEAD;
    for (size_t i = 0; i < n; i++)
        bytes += zmq_msg_size(&parts[i]);
    bool any_dead = false;
    for (fsub_t *s = f->subs; s; s = s->next) {
        if (s->dead || !sub_wants(s, topic, tlen))
            continue;
        size_t held = s->qbytes + s->inflight_bytes;
        if (!s->lossless) {
            /* Lossy: the newest blocks win; at most `window` wait besides
             * those in flight, so a slow reader stays close to now. */
            while (s->qh && (held + bytes > f->memory || s->qn >= s->window)) {
                drop_oldest(f, s);
                held = s->qbytes + s->inflight_bytes;
            }
        }
        /* Beyond the bound the new block is dropped: for a lossless
         * subscriber that keeps what it got an unbroken prefix; for a lossy
         * one it happens only when everything held is already in flight. A
         * block is always taken when nothing is held, however large. */
        if (held > 0 && held + bytes > f->memory) {
            count_drop(f, s, &parts[0]);
            continue;
        }
        fblock_t *b = malloc(sizeof *b + n * sizeof b->part[0]);
        if (!b) {
            count_drop(f, s, &parts[0]);
            continue;
        }
        b->next = NULL;
        b->bytes = bytes;
        b->n = n;
        for (size_t i = 0; i < n; i++) {
            zmq_msg_init(&b->part[i]);
            zmq_msg_copy(&b->part[i], &parts[i]);
        }
        if (s->qt)
            s->qt->next = b;
        else
            s->qh = b;
        s->qt = b;
        s->qn++;
        s->qbytes += bytes;
        pump(f, s);
        any_dead |= s->dead;
    }
    if (any_dead)
        reap(f);
}

int lmq__flow_timeout_ms(const lmq__flow_t *f)
{
    if (!f->subs)
        return -1;
    if (f->stalled)
        return FLOW_RETRY_MS;
    int64_t now = now_ms(), first = INT64_MAX;
    for (const fsub_t *s = f->subs; s; s = s->next)
        if (s->lease_until < first)
            first = s->lease_until;
    int64_t left = first - now + 1;
    return left < 0 ? 0 : left > 60000 ? 60000 : (int)left;
}

void lmq__flow_pump(lmq__flow_t *f)
{
    f->stalled = false;
    for (fsub_t *s = f->subs; s; s = s->next)
        pump(f, s);
    reap(f);
}

void lmq__flow_tick(lmq__flow_t *f)
{
    if (!f->subs)
        return;
    int64_t now = now_ms();
    bool retry = f->stalled;
    for (fsub_t *s = f->subs; s; s = s->next)
        if (!s->dead && now > s->lease_until) {
            lmq_log(f->d->log, LMQ_LOG_INFO, "flow",
                    "subscription %llu ended: no credit or renewal for %d s (%zu blocks, %zu bytes freed)",
                    (unsigned long long)s->id, LMQ__FLOW_LEASE_MS / 1000, s->qn, s->qbytes);
            s->dead = true;
        }
    if (retry)
        lmq__flow_pump(f);
    else
        reap(f);
}

/* ---- requests ---- */

static lmq_dev_t *find_device(lmq_daemon_t *d, const char *name, size_t len)
{
    for (size_t i = 0; i < d->ndev; i++)
        if (strlen(d->devs[i]->name) == len && memcmp(d->devs[i]->name, name, len) == 0)
            return d->devs[i];
    return NULL;
}

static int no_device(lmq_daemon_t *d, const char *topic, const char *name, size_t len, char *err, size_t errlen)
{
    char names[400];
    size_t n = 0;
    names[0] = 0;
    for (size_t i = 0; i < d->ndev && n < sizeof names; i++)
        n += (size_t)snprintf(names + n, sizeof names - n, "%s%s", i ? ", " : "", d->devs[i]->name);
    return lmq__failf(err, errlen, LMQ_ENOTFOUND, "topic '%.80s': no device '%.*s' (devices: %s)", topic, (int)len, name,
                 d->ndev ? names : "none");
}

/* A topic names one stream exactly ("DEV/STREAM"), one device's change
 * events ("$events/DEV"), or every device's ("$events/"). */
static int check_topic(lmq_daemon_t *d, const char *t, char *err, size_t errlen)
{
    const size_t plen = sizeof LMQ__EVENTS_PREFIX - 1;
    if (strncmp(t, LMQ__EVENTS_PREFIX, plen) == 0) {
        if (!t[plen] || find_device(d, t + plen, strlen(t + plen)))
            return 0;
        return no_device(d, t, t + plen, strlen(t + plen), err, errlen);
    }
    const char *slash = strchr(t, '/');
    if (!slash || slash == t || !slash[1])
        return lmq__failf(err, errlen, LMQ_EARG,
                     "topic '%.80s' is not DEVICE/STREAM, $events/DEVICE or $events/ (a flow subscription names "
                     "whole topics, not prefixes)",
                     t);
    lmq_dev_t *dev = find_device(d, t, (size_t)(slash - t));
    if (!dev)
        return no_device(d, t, t, (size_t)(slash - t), err, errlen);
    char names[400];
    size_t n = 0;
    names[0] = 0;
    for (size_t k = 0; k < dev->nstreams; k++) {
        if (strcmp(dev->streams[k].topic, t) == 0)
            return 0;
        if (n < sizeof names)
            n += (size_t)snprintf(names + n, sizeof names - n, "%s%s", k ? ", " : "", dev->stream_defs[k].name);
    }
    return lmq__failf(err, errlen, LMQ_ENOTFOUND, "%s has no stream '%.64s' (streams: %s)", dev->name, slash + 1,
                 dev->nstreams ? names : "none");
}

static json_t *topics_json(const fsub_t *s)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < s->ntopics; i++)
        json_array_append_new(a, json_string(s->topics[i]));
    return a;
}

static int subscribe(lmq__flow_t *f, const zmq_msg_t *env, size_t nenv, const lmq__request_t *req, json_t **result,
                     char *err, size_t errlen)
{
    lmq_daemon_t *d = f->d;
    if (nenv != 1)
        return lmq__failf(err, errlen, LMQ_EPROTO,
                     "subscribe needs a DEALER socket: blocks follow the reply, and a REQ socket takes one reply only");
    fsub_t *old = find_sub(f, &env[0]);
    if (old)
        return lmq__failf(err, errlen, LMQ_EPROTO,
                     "this connection already has flow subscription %llu: unsubscribe first, or subscribe on "
                     "another connection",
                     (unsigned long long)old->id);
    size_t nt = json_array_size(req->topics);
    if (nt == 0)
        return lmq__failf(err, errlen, LMQ_EARG, "'topics' is empty: name at least one DEVICE/STREAM or $events/DEVICE");
    if (nt > LMQ__FLOW_MAX_TOPICS)
        return lmq__failf(err, errlen, LMQ_EARG, "%zu topics; at most %d per subscription", nt, LMQ__FLOW_MAX_TOPICS);
    for (size_t i = 0; i < nt; i++) {
        const char *t = json_string_value(json_array_get(req->topics, i));
        if (!t)
            return lmq__failf(err, errlen, LMQ_EPROTO, "'topics' must be an array of strings (item %zu is not)", i);
        for (size_t k = 0; k < i; k++)
            if (strcmp(t, json_string_value(json_array_get(req->topics, k))) == 0)
                return lmq__failf(err, errlen, LMQ_EARG, "topic '%.80s' is given twice", t);
        int rc = check_topic(d, t, err, errlen);
        if (rc != 0)
            return rc;
    }
    bool lossless;
    if (strcmp(req->mode, "lossless") == 0)
        lossless = true;
    else if (strcmp(req->mode, "lossy") == 0)
        lossless = false;
    else
        return lmq__failf(err, errlen, LMQ_EARG, "mode must be \"lossless\" or \"lossy\", not \"%.40s\"", req->mode);
    int64_t window = req->has_window ? req->window : LMQ__FLOW_DEFAULT_WINDOW;
    if (window < 1 || window > LMQ__FLOW_MAX_WINDOW)
        return lmq__failf(err, errlen, LMQ_ERANGE, "window %lld is outside 1..%d blocks", (long long)window,
                     LMQ__FLOW_MAX_WINDOW);
    fsub_t *s = calloc(1, sizeof *s);
    if (s) {
        s->ring = calloc((size_t)window, sizeof *s->ring);
        s->topics = calloc(nt, sizeof *s->topics);
    }
    if (!s || !s->ring || !s->topics) {
        if (s) {
            free(s->ring);
            free(s->topics);
        }
        free(s);
        return lmq__failf(err, errlen, LMQ_EMEM, "out of memory");
    }
    zmq_msg_init(&s->peer);
    zmq_msg_copy(&s->peer, (zmq_msg_t *)&env[0]);
    for (size_t i = 0; i < nt; i++)
        if ((s->topics[s->ntopics] = strdup(json_string_value(json_array_get(req->topics, i)))))
            s->ntopics++;
    json_t *r = NULL;
    if (s->ntopics == nt) {
        s->id = f->next_id;
        s->lossless = lossless;
        s->window = s->credit = (uint32_t)window;
        s->since = now_ms();
        s->lease_until = s->since + LMQ__FLOW_LEASE_MS;
        r = json_pack("{s:I, s:s, s:o, s:I, s:I, s:I, s:f}", "subscription", (json_int_t)s->id, "mode",
                      lossless ? "lossless" : "lossy", "topics", topics_json(s), "window", (json_int_t)window,
                      "memory_limit", (json_int_t)f->memory, "block_overhead", (json_int_t)LMQ__FLOW_BLOCK_OVERHEAD,
                      "lease_s", LMQ__FLOW_LEASE_MS / 1000.0);
    }
    if (!r) {
        sub_free(s);
        return lmq__failf(err, errlen, LMQ_EMEM, "out of memory");
    }
    f->next_id++;
    s->next = f->subs;
    f->subs = s;
    f->nsubs++;
    f->changed = true;
    lmq_log(d->log, LMQ_LOG_DEBUG, "flow", "subscription %llu: %s, %zu topic%s, window %u", (unsigned long long)s->id,
            req->mode, nt, nt == 1 ? "" : "s", s->window);
    *result = r;
    return 0;
}

static int credit(fsub_t *s, const lmq__request_t *req, json_t **result, char *err, size_t errlen)
{
    if (req->n < 0 || (uint64_t)req->n > s->window - s->credit)
        return lmq__failf(err, errlen, LMQ_ERANGE,
                     "credit %lld is outside 0..%u: the window is %u blocks and %u are not yet sent (credit returns "
                     "blocks consumed, at most those in flight)",
                     (long long)req->n, s->window - s->credit, s->window, s->credit);
    uint32_t n = (uint32_t)req->n;
    for (uint32_t i = 0; i < n; i++) {
        s->inflight_bytes -= s->ring[s->ring_head];
        s->ring_head = (s->ring_head + 1) % s->window;
        s->ring_n--;
    }
    s->credit += n;
    s->lease_until = now_ms() + LMQ__FLOW_LEASE_MS;
    /* The blocks this releases go out after the reply (lmq__flow_pump). */
    *result = json_pack("{s:I}", "credit", (json_int_t)s->credit);
    return *result ? 0 : lmq__failf(err, errlen, LMQ_EMEM, "out of memory");
}

int lmq__flow_request(lmq__flow_t *f, const zmq_msg_t *env, size_t nenv, const lmq__request_t *req, json_t **result,
                      char *err, size_t errlen)
{
    *result = NULL;
    if (req->op == LMQ__OP_SUBSCRIBE)
        return subscribe(f, env, nenv, req, result, err, errlen);
    fsub_t *s = find_sub(f, &env[0]);
    if (!s)
        return lmq__failf(err, errlen, LMQ_ENOTFOUND,
                     "no flow subscription on this connection (never made, ended, or its lease of %d s expired)",
                     LMQ__FLOW_LEASE_MS / 1000);
    if (req->op == LMQ__OP_CREDIT)
        return credit(s, req, result, err, errlen);
    *result = json_pack("{s:I, s:I}", "delivered", (json_int_t)s->delivered, "dropped", (json_int_t)s->dropped);
    if (!*result)
        return lmq__failf(err, errlen, LMQ_EMEM, "out of memory");
    s->dead = true;
    reap(f);
    return 0;
}

/* ---- stats and limits ---- */

json_t *lmq__flow_stats(const lmq__flow_t *f)
{
    json_t *a = json_array();
    int64_t now = now_ms();
    for (const fsub_t *s = f->subs; a && s; s = s->next)
        json_array_append_new(
            a, json_pack("{s:I, s:s, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f}", "subscription",
                         (json_int_t)s->id, "mode", s->lossless ? "lossless" : "lossy", "topics", topics_json(s),
                         "window", (json_int_t)s->window, "credit", (json_int_t)s->credit, "queued_blocks",
                         (json_int_t)s->qn, "queued_bytes", (json_int_t)s->qbytes, "in_flight_blocks",
                         (json_int_t)s->ring_n, "in_flight_bytes", (json_int_t)s->inflight_bytes, "delivered",
                         (json_int_t)s->delivered, "dropped", (json_int_t)s->dropped, "age_s",
                         (double)(now - s->since) / 1e3));
    return a;
}

int lmq__flow_plain_hwm(const lmq_daemon_t *d, size_t memory, size_t seen)
{
    size_t largest = seen;
    for (size_t i = 0; i < d->ndev; i++) {
        lmq_dev_t *dev = d->devs[i];
        pthread_mutex_lock(&dev->mu); /* a driver sets its shapes when it opens */
        for (size_t k = 0; k < dev->nstreams; k++) {
            const lmq__stream_rt_t *st = &dev->streams[k];
            size_t n;
            if (lmq__array_nbytes(dev->stream_defs[k].dtype, st->ndim, st->shape, &n) == 0 && n > largest)
                largest = n;
        }
        pthread_mutex_unlock(&dev->mu);
    }
    size_t hwm = largest ? memory / largest : 1000;
    return hwm < 2 ? 2 : hwm > 1000 ? 1000 : (int)hwm;
}
