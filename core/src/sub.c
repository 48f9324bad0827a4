/* Stream subscriptions: a SUB socket, or a flow subscription on a DEALER
 * (protocol 3.2: subscribe, credit as blocks are consumed, lease renewal,
 * subscribing again when the daemon forgot us); strict header parsing, loss
 * accounting from seq gaps within an epoch. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "labmq/labmq.h"
#include "auth_internal.h"
#include "proto.h"
#include "value_internal.h"

/* Where a flow subscription stands with the daemon. */
enum flow_state { FLOW_SUBSCRIBING, FLOW_ACTIVE, FLOW_REFUSED };

#define NS_PER_MS 1000000LL
#define RETRY_NS (1000 * NS_PER_MS)     /* asking again after a refusal */
#define DEFAULT_LEASE_NS (10000 * NS_PER_MS)
#define IDLE_PROBE_NS (500 * NS_PER_MS) /* nothing heard for this long: ask the daemon */
#define CLOSE_WAIT_NS (200 * NS_PER_MS) /* destroy waits this long at most for the daemon's answers */

struct lmq_sub {
    void *sock;
    char *topic;
    size_t topic_len;
    /* flow subscriptions */
    bool flow;
    lmq_sub_mode_t mode;
    unsigned window;
    enum flow_state state;
    /* Request ids only grow. The subscribes of one attempt are
     * series..last_sub (more than one after a disconnect: the daemon answers
     * the first, and refuses the duplicates); later ids are credits. */
    uint64_t next_id, series, last_sub;
    uint64_t answered; /* the newest request id the daemon has answered */
    unsigned owed;            /* blocks consumed and not yet credited back */
    uint64_t owed_bytes;      /* ... and what they count against the daemon's bound */
    uint64_t memory_limit;    /* the daemon's bound for this subscription */
    uint64_t block_overhead;  /* what a block counts besides its frames */
    int64_t sent_ns;          /* when the last request went out */
    int64_t rx_ns;            /* when a message last came in ... */
    bool heard;               /* ... or one came since flow_service last looked */
    int64_t retry_ns;         /* FLOW_REFUSED: when to ask again */
    int64_t lease_ns;
    bool have_last;
    uint64_t last_seq, last_epoch;
    uint64_t received, lost, restarts;
    char err[300];
};

struct lmq_frame {
    const char *topic; /* borrowed from the subscription */
    uint64_t seq, epoch, lost_before;
    int64_t t_ns;
    bool restarted;
    lmq_dtype_t dtype;
    unsigned ndim;
    size_t shape[LMQ_MAX_DIMS];
    char units[32];
    zmq_msg_t payload;
    void *aligned; /* copy of a small payload that ZeroMQ stored unaligned */
};

static int send_request(lmq_sub_t *s, json_t *j, uint64_t *id)
{
    if (!j)
        return LMQ_EMEM;
    *id = ++s->next_id;
    json_object_set_new(j, "v", json_integer(LMQ__PROTOCOL));
    json_object_set_new(j, "id", json_integer((json_int_t)*id));
    zmq_msg_t m;
    int rc = lmq__json_to_msg(j, &m);
    json_decref(j);
    s->sent_ns = lmq_clock_mono_ns(); /* an attempt: a failed one is retried when next due */
    if (rc != 0)
        return rc;
    /* The DEALER queues while no daemon is connected; a full queue means a
     * daemon that has not read for long: try again later. */
    if (zmq_msg_send(&m, s->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return LMQ_EUNREACH;
    }
    return 0;
}

/* Subscribes; a new attempt unless one is under way (then a duplicate, for
 * a daemon that may never have seen the first). */
static void send_subscribe(lmq_sub_t *s)
{
    uint64_t id;
    bool new_series = s->state != FLOW_SUBSCRIBING || s->series == 0;
    s->state = FLOW_SUBSCRIBING;
    s->owed = 0;
    s->owed_bytes = 0;
    if (send_request(s,
                     json_pack("{s:s, s:[s], s:s, s:i}", "op", "subscribe", "topics", s->topic, "mode",
                               s->mode == LMQ_SUB_LOSSLESS ? "lossless" : "lossy", "window", (int)s->window),
                     &id) == 0) {
        if (new_series)
            s->series = id;
        s->last_sub = id;
    }
}

/* Returns credit and renews the lease when due, asks again after a
 * refusal or an unanswered subscribe. Returns ms until it is next due. */
static int64_t flow_service(lmq_sub_t *s)
{
    int64_t now = lmq_clock_mono_ns(), due;
    if (s->heard) {
        s->rx_ns = now;
        s->heard = false;
    }
    switch (s->state) {
    case FLOW_SUBSCRIBING:
        /* A daemon answers subscribe at once; silence means it went away
         * with our request, or none is there yet (then the request waits in
         * the DEALER, and a duplicate's refusal is ignored). */
        if (now - s->sent_ns >= s->lease_ns / 3)
            send_subscribe(s);
        due = s->sent_ns + s->lease_ns / 3;
        break;
    case FLOW_REFUSED:
        if (now >= s->retry_ns)
            send_subscribe(s);
        due = s->state == FLOW_REFUSED ? s->retry_ns : s->sent_ns + s->lease_ns / 3;
        break;
    default: {
        /* Pipelined: half the window comes back while the other half is
         * still on its way, so the daemon never waits for us at full rate;
         * with large blocks the bound fills before the window, so a quarter
         * of it comes back too. Renewing at a third of the lease survives
         * one lost renewal. */
        unsigned half = s->window / 2 ? s->window / 2 : 1;
        uint64_t id;
        /* Silence is also a question: a daemon that restarted sends nothing
         * and knows nothing of us; asked, it says NOTFOUND, and we subscribe
         * again within about IDLE_PROBE_NS. */
        int64_t quiet = (s->rx_ns > s->sent_ns ? s->rx_ns : s->sent_ns) + IDLE_PROBE_NS;
        if ((s->owed >= half || (s->owed && s->owed_bytes >= s->memory_limit / 4) ||
             now - s->sent_ns >= s->lease_ns / 3 || now >= quiet) &&
            send_request(s, json_pack("{s:s, s:i}", "op", "credit", "n", (int)s->owed), &id) == 0) {
            s->owed = 0;
            s->owed_bytes = 0;
        }
        due = s->sent_ns + s->lease_ns / 3;
        quiet = (s->rx_ns > s->sent_ns ? s->rx_ns : s->sent_ns) + IDLE_PROBE_NS;
        if (quiet < due)
            due = quiet;
        break;
    }
    }
    int64_t ms = (due - now) / NS_PER_MS + 1;
    return ms < 0 ? 0 : ms;
}

lmq_sub_t *lmq_sub_new_opts(void *zctx, const char *control_endpoint, const char *topic, const lmq_sub_opts_t *opts)
{
    if (!zctx || !control_endpoint || !topic || !*topic || !opts ||
        (opts->mode != LMQ_SUB_LOSSLESS && opts->mode != LMQ_SUB_LOSSY) || opts->window > LMQ_SUB_MAX_WINDOW ||
        (opts->keys && !lmq__client_keys_ok(opts->keys)))
        return NULL;
    lmq_sub_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->flow = true;
    s->mode = opts->mode;
    s->window = opts->window ? opts->window : LMQ_SUB_DEFAULT_WINDOW;
    s->lease_ns = DEFAULT_LEASE_NS;
    s->topic = strdup(topic);
    s->topic_len = strlen(topic);
    s->sock = zmq_socket(zctx, ZMQ_DEALER);
    /* No linger: destroy waits for the answer to its unsubscribe itself. */
    int linger = 0, hwm = 10000;
    int64_t maxmsg = -1;
    if (!s->topic || !s->sock)
        goto fail;
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    /* Unique within the context: a subscription freed just before at this
     * address may still hold its name until ZeroMQ has reaped its socket. */
    if ((opts->keys && lmq__curve_client(s->sock, opts->keys) != 0) || zmq_connect(s->sock, control_endpoint) != 0)
        goto fail;
    send_subscribe(s);
    return s;
fail:
    lmq_sub_destroy(&s);
    return NULL;
}

bool lmq_sub_active(const lmq_sub_t *s) { return s && (!s->flow || s->state == FLOW_ACTIVE); }

lmq_sub_t *lmq_sub_new(void *zctx, const char *data_endpoint, const char *topic)
{
    return lmq_sub_new_keys(zctx, data_endpoint, topic, NULL);
}

lmq_sub_t *lmq_sub_new_keys(void *zctx, const char *data_endpoint, const char *topic, const lmq_client_keys_t *keys)
{
    if (!zctx || !data_endpoint || !topic || !*topic || (keys && !lmq__client_keys_ok(keys)))
        return NULL;
    lmq_sub_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->topic = strdup(topic);
    s->topic_len = strlen(topic);
    s->sock = zmq_socket(zctx, ZMQ_SUB);
    int linger = 0, hwm = 10000;
    if (!s->topic || !s->sock)
        goto fail;
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    lmq__heartbeat_set(s->sock); /* a stopped daemon drops the connection: ZeroMQ reconnects */
    zmq_setsockopt(s->sock, ZMQ_SUBSCRIBE, topic, s->topic_len);
    if ((keys && lmq__curve_client(s->sock, keys) != 0) || zmq_connect(s->sock, data_endpoint) != 0)
        goto fail;
    return s;
fail:
    lmq_sub_destroy(&s);
    return NULL;
}

/* Ends a flow subscription: unsubscribes (the daemon frees its queue at
 * once) and waits briefly for the answers to what was sent. Closing a
 * DEALER right after a send, while blocks still arrive, leaks the
 * connection's receive buffer in libzmq 4.3.4 (seen under LeakSanitizer);
 * once the daemon has answered, nothing is on its way out. */
static void flow_close(lmq_sub_t *s)
{
    uint64_t id;
    if (s->state == FLOW_ACTIVE)
        send_request(s, json_pack("{s:s}", "op", "unsubscribe"), &id);
    int64_t deadline = lmq_clock_mono_ns() + CLOSE_WAIT_NS;
    while (s->answered < s->next_id) {
        int64_t left = (deadline - lmq_clock_mono_ns()) / NS_PER_MS;
        zmq_pollitem_t item = {s->sock, 0, ZMQ_POLLIN, 0};
        if (left <= 0 || zmq_poll(&item, 1, (long)left) <= 0)
            break;
        zmq_msg_t m;
        zmq_msg_init(&m);
        int got = zmq_msg_recv(&m, s->sock, ZMQ_DONTWAIT);
        lmq__handoff_acquire(zmq_msg_data(&m)); /* a reply is read in place, as in lmq_sub_recv */
        if (got >= 0 && zmq_msg_size(&m) && *(char *)zmq_msg_data(&m) == '{') {
            lmq__reply_t rep;
            char perr[64];
            if (lmq__reply_parse(zmq_msg_data(&m), zmq_msg_size(&m), &rep, perr, sizeof perr) == 0 && rep.has_id &&
                rep.id > s->answered)
                s->answered = rep.id;
            lmq__reply_clear(&rep);
        }
        bool more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        if (more) {
            zmq_msg_t scratch;
            lmq__recv_rest(s->sock, &scratch, 0);
        }
    }
}

void lmq_sub_destroy(lmq_sub_t **ps)
{
    if (!ps || !*ps)
        return;
    lmq_sub_t *s = *ps;
    if (s->sock && s->flow)
        flow_close(s);
    if (s->sock)
        zmq_close(s->sock);
    free(s->topic);
    free(s);
    *ps = NULL;
}

uint64_t lmq_sub_received(const lmq_sub_t *s) { return s ? s->received : 0; }
uint64_t lmq_sub_lost(const lmq_sub_t *s) { return s ? s->lost : 0; }
uint64_t lmq_sub_restarts(const lmq_sub_t *s) { return s ? s->restarts : 0; }
const char *lmq_sub_last_error(const lmq_sub_t *s) { return s ? s->err : "no subscription"; }
void *lmq_sub_socket(lmq_sub_t *s) { return s ? s->sock : NULL; }

static int bad(lmq_sub_t *s, const char *fmt, ...) LMQ_PRINTF(2, 3);
static int bad(lmq_sub_t *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return LMQ_EPROTO;
}

static int parse_header(lmq_sub_t *s, const zmq_msg_t *hdr, lmq_frame_t *f)
{
    lmq__block_header_t h;
    if (lmq__data_header_parse(zmq_msg_data((zmq_msg_t *)hdr), zmq_msg_size((zmq_msg_t *)hdr),
                               zmq_msg_size(&f->payload), &h, s->err, sizeof s->err) != 0)
        return LMQ_EPROTO;
    f->seq = h.seq;
    f->epoch = h.epoch;
    f->t_ns = h.t_ns;
    f->dtype = h.dtype;
    f->ndim = h.ndim;
    memcpy(f->shape, h.shape, sizeof f->shape);
    memcpy(f->units, h.units, sizeof f->units);
    return 0;
}

/* A reply on a flow subscription's socket (header already received). Returns
 * 0, or the status to hand to the caller (a refusal). */
static int flow_reply(lmq_sub_t *s, zmq_msg_t *hdr)
{
    lmq__reply_t rep;
    char perr[200];
    if (lmq__reply_parse(zmq_msg_data(hdr), zmq_msg_size(hdr), &rep, perr, sizeof perr) != 0) {
        lmq__reply_clear(&rep);
        return bad(s, "malformed reply from the daemon: %s", perr);
    }
    int rc = 0;
    if (rep.has_id && rep.id > s->answered)
        s->answered = rep.id;
    if (!rep.has_id || rep.id < s->series) {
        /* older than this attempt: about a subscription that is gone */
    } else if (rep.id <= s->last_sub) {
        /* A subscribe of this attempt: the first answer counts; once active,
         * a duplicate's refusal ("already has a flow subscription") does not. */
        if (s->state != FLOW_SUBSCRIBING) {
        } else if (rep.ok) {
            s->state = FLOW_ACTIVE;
            s->owed = 0;
            s->owed_bytes = 0;
            json_t *limit = json_object_get(rep.result, "memory_limit");
            json_t *overhead = json_object_get(rep.result, "block_overhead");
            s->memory_limit = json_is_integer(limit) && json_integer_value(limit) > 0
                                  ? (uint64_t)json_integer_value(limit)
                                  : UINT64_MAX;
            s->block_overhead =
                json_is_integer(overhead) && json_integer_value(overhead) >= 0 ? (uint64_t)json_integer_value(overhead) : 0;
            double lease = json_number_value(json_object_get(rep.result, "lease_s"));
            if (lease >= 1 && lease <= 3600)
                s->lease_ns = (int64_t)(lease * 1e9);
        } else {
            s->state = FLOW_REFUSED;
            s->retry_ns = lmq_clock_mono_ns() + RETRY_NS;
            snprintf(s->err, sizeof s->err, "subscription to %s refused: %s", s->topic, rep.message);
            rc = rep.status;
        }
    } else if (!rep.ok && s->state == FLOW_ACTIVE) {
        if (rep.status == LMQ_ENOTFOUND) {
            /* The lease expired, or the daemon restarted: subscribe again;
             * whatever was missed shows as a seq gap or a new epoch. */
            send_subscribe(s);
        } else {
            snprintf(s->err, sizeof s->err, "credit for %s refused: %s", s->topic, rep.message);
            rc = rep.status;
        }
    }
    lmq__reply_clear(&rep);
    return rc;
}

int lmq_sub_recv(lmq_sub_t *s, lmq_frame_t **frame, int timeout_ms)
{
    if (!s || !frame)
        return LMQ_EARG;
    *frame = NULL;
    int64_t start = lmq_clock_mono_ns();
    for (;;) {
        /* topic, header, payload. A block already queued is taken without a
         * zmq_poll: at high rates that system call per block was a fifth of
         * the subscriber's time (bench/streams). */
        zmq_msg_t topic, rest[2];
        zmq_msg_init(&topic);
        if (zmq_msg_recv(&topic, s->sock, ZMQ_DONTWAIT) < 0) {
            if (zmq_errno() != EAGAIN) {
                zmq_msg_close(&topic);
                return LMQ_ECLOSED;
            }
            int left = timeout_ms;
            if (timeout_ms >= 0) {
                left = timeout_ms - (int)((lmq_clock_mono_ns() - start) / 1000000);
                if (left < 0)
                    left = 0;
            }
            int wait = left;
            if (s->flow) {
                int64_t due = flow_service(s);
                if (wait < 0 || due < wait)
                    wait = (int)due;
            }
            zmq_pollitem_t item[1] = {{s->sock, 0, ZMQ_POLLIN, 0}};
            int n = zmq_poll(item, 1, wait);
            if (n < 0 || (n == 0 && wait == left)) {
                zmq_msg_close(&topic);
                return n < 0 ? LMQ_ECLOSED : LMQ_ETIMEOUT;
            }
            if (!(item[0].revents & ZMQ_POLLIN) || zmq_msg_recv(&topic, s->sock, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&topic);
                continue;
            }
        }
        s->heard = true;
        if (s->flow) /* a reply over inproc is read in place; the broker's send_reply released it */
            lmq__handoff_acquire(zmq_msg_data(&topic));
        if (s->flow && zmq_msg_size(&topic) > 0 && *(const char *)zmq_msg_data(&topic) == '{') {
            /* A reply: its first frame is JSON, a topic never starts with '{'. */
            if (zmq_msg_more(&topic)) {
                zmq_msg_t scratch;
                lmq__recv_rest(s->sock, &scratch, 0);
            }
            int rc = flow_reply(s, &topic);
            zmq_msg_close(&topic);
            if (rc != 0)
                return rc;
            continue;
        }
        size_t nrest = zmq_msg_more(&topic) ? lmq__recv_rest(s->sock, rest, 2) : 0;
        if (s->flow && s->state == FLOW_ACTIVE) {
            /* Every message the daemon sent spent one credit, ours or not,
             * well-formed or not. */
            s->owed++;
            s->owed_bytes += s->block_overhead + zmq_msg_size(&topic);
            for (size_t i = 0; i < nrest && i < 2; i++)
                s->owed_bytes += zmq_msg_size(&rest[i]);
        }
        /* SUB filters by prefix: "daq1/wave" also matches "daq1/wave2". */
        bool ours = zmq_msg_size(&topic) == s->topic_len && memcmp(zmq_msg_data(&topic), s->topic, s->topic_len) == 0;
        zmq_msg_close(&topic);
        lmq_frame_t *f = ours && nrest == 2 ? calloc(1, sizeof *f) : NULL;
        int rc = 0;
        if (ours && nrest != 2)
            rc = bad(s, "block of %zu frames; expected topic, header and payload", nrest + 1);
        else if (ours && !f)
            rc = LMQ_EMEM;
        else if (f) {
            zmq_msg_init(&f->payload);
            zmq_msg_move(&f->payload, &rest[1]);
            lmq__handoff_acquire(zmq_msg_data(&f->payload));
            rc = parse_header(s, &rest[0], f);
        }
        for (size_t i = 0; i < nrest && i < 2; i++)
            zmq_msg_close(&rest[i]);
        if (s->flow)
            flow_service(s);
        if (!ours)
            continue;
        if (rc != 0) {
            lmq_frame_destroy(&f);
            return rc;
        }
        f->topic = s->topic;
        if (s->have_last && f->epoch != s->last_epoch) {
            f->restarted = true;
            s->restarts++;
        } else if (s->have_last && f->seq > s->last_seq + 1) {
            f->lost_before = f->seq - s->last_seq - 1;
            s->lost += f->lost_before;
        }
        s->have_last = true;
        s->last_seq = f->seq;
        s->last_epoch = f->epoch;
        s->received++;
        size_t size = zmq_msg_size(&f->payload);
        if (((uintptr_t)zmq_msg_data(&f->payload) & 7) != 0 && size) {
            /* Only tiny payloads live inside the message struct unaligned;
             * copying those is cheaper than surprising a reader of doubles. */
            f->aligned = malloc(size);
            if (!f->aligned) {
                lmq_frame_destroy(&f);
                return LMQ_EMEM;
            }
            memcpy(f->aligned, zmq_msg_data(&f->payload), size);
        }
        *frame = f;
        return 0;
    }
}

void lmq_frame_destroy(lmq_frame_t **pf)
{
    if (!pf || !*pf)
        return;
    zmq_msg_close(&(*pf)->payload);
    free((*pf)->aligned);
    free(*pf);
    *pf = NULL;
}

const char *lmq_frame_topic(const lmq_frame_t *f) { return f->topic; }
uint64_t lmq_frame_seq(const lmq_frame_t *f) { return f->seq; }
uint64_t lmq_frame_epoch(const lmq_frame_t *f) { return f->epoch; }
int64_t lmq_frame_time_ns(const lmq_frame_t *f) { return f->t_ns; }
lmq_dtype_t lmq_frame_dtype(const lmq_frame_t *f) { return f->dtype; }
unsigned lmq_frame_ndim(const lmq_frame_t *f) { return f->ndim; }
const size_t *lmq_frame_shape(const lmq_frame_t *f) { return f->shape; }
const char *lmq_frame_units(const lmq_frame_t *f) { return f->units; }
const void *lmq_frame_data(const lmq_frame_t *f)
{
    return f->aligned ? f->aligned : zmq_msg_data((zmq_msg_t *)&f->payload);
}
size_t lmq_frame_size(const lmq_frame_t *f) { return zmq_msg_size((zmq_msg_t *)&f->payload); }
uint64_t lmq_frame_lost_before(const lmq_frame_t *f) { return f->lost_before; }
bool lmq_frame_restarted(const lmq_frame_t *f) { return f->restarted; }
