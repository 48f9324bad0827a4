/* Stream subscriptions: SUB socket, strict header parsing, loss accounting
 * from seq gaps within an epoch. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "labmq/labmq.h"
#include "auth_internal.h"
#include "proto.h"
#include "value_internal.h"

struct lmq_sub {
    void *sock;
    char *topic;
    size_t topic_len;
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

void lmq_sub_destroy(lmq_sub_t **ps)
{
    if (!ps || !*ps)
        return;
    lmq_sub_t *s = *ps;
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
            zmq_pollitem_t item = {s->sock, 0, ZMQ_POLLIN, 0};
            int n = zmq_poll(&item, 1, left);
            if (n <= 0) {
                zmq_msg_close(&topic);
                return n < 0 ? LMQ_ECLOSED : LMQ_ETIMEOUT;
            }
            zmq_msg_recv(&topic, s->sock, 0);
        }
        size_t nrest = zmq_msg_more(&topic) ? lmq__recv_rest(s->sock, rest, 2) : 0;
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
