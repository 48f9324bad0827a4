/* Change-event subscriptions: a SUB socket on "$events/[DEVICE]", strict
 * header parsing, loss counting per device from seq gaps within an epoch. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "auth_internal.h"
#include "device_internal.h"
#include "labmq/events.h"
#include "labmq/driver.h"
#include "labmq/status.h"

#define MAX_TRACKED 256 /* devices whose seq a subscription to all follows */

typedef struct track {
    char device[72];
    uint64_t epoch, next_seq;
} track_t;

struct lmq_events {
    void *sock;
    char topic[96];
    size_t topic_len;
    bool one_device;
    track_t *tracks;
    size_t ntracks;
    uint64_t lost;
    char err[300];
};

struct lmq_event {
    json_t *json;
    const char *device, *kind, *name, *cause, *state, *error, *holder, *safe_state;
    lmq_value_t value;
    uint64_t seq, lost_before;
    int64_t t_ns;
};

lmq_events_t *lmq_events_new(void *zctx, const char *data_endpoint, const char *device)
{
    return lmq_events_new_keys(zctx, data_endpoint, device, NULL);
}

lmq_events_t *lmq_events_new_keys(void *zctx, const char *data_endpoint, const char *device,
                                  const lmq_client_keys_t *keys)
{
    if (!zctx || !data_endpoint || (device && (!*device || strlen(device) > 64)) ||
        (keys && !lmq__client_keys_ok(keys)))
        return NULL;
    lmq_events_t *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->one_device = device != NULL;
    e->topic_len = (size_t)snprintf(e->topic, sizeof e->topic, LMQ__EVENTS_PREFIX "%s", device ? device : "");
    e->tracks = calloc(MAX_TRACKED, sizeof *e->tracks);
    e->sock = zmq_socket(zctx, ZMQ_SUB);
    if (!e->tracks || !e->sock)
        goto fail;
    int linger = 0;
    zmq_setsockopt(e->sock, ZMQ_LINGER, &linger, sizeof linger);
    lmq__heartbeat_set(e->sock);
    zmq_setsockopt(e->sock, ZMQ_SUBSCRIBE, e->topic, e->topic_len);
    if ((keys && lmq__curve_client(e->sock, keys) != 0) || zmq_connect(e->sock, data_endpoint) != 0)
        goto fail;
    return e;
fail:
    lmq_events_destroy(&e);
    return NULL;
}

void lmq_events_destroy(lmq_events_t **pe)
{
    if (!pe || !*pe)
        return;
    lmq_events_t *e = *pe;
    if (e->sock)
        zmq_close(e->sock);
    free(e->tracks);
    free(e);
    *pe = NULL;
}

uint64_t lmq_events_lost(const lmq_events_t *e) { return e ? e->lost : 0; }
const char *lmq_events_last_error(const lmq_events_t *e) { return e ? e->err : "no subscription"; }
void *lmq_events_socket(lmq_events_t *e) { return e ? e->sock : NULL; }

static int bad(lmq_events_t *e, const char *fmt, ...) LMQ_PRINTF(2, 3);
static int bad(lmq_events_t *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err, sizeof e->err, fmt, ap);
    va_end(ap);
    return LMQ_EPROTO;
}

static const char *jstr(json_t *j, const char *key)
{
    const char *s = json_string_value(json_object_get(j, key));
    return s ? s : "";
}

/* Loss accounting: seq per device, restarted with each epoch. */
static uint64_t account(lmq_events_t *e, const char *device, uint64_t epoch, uint64_t seq)
{
    track_t *t = NULL;
    for (size_t i = 0; i < e->ntracks && !t; i++)
        if (strcmp(e->tracks[i].device, device) == 0)
            t = &e->tracks[i];
    if (!t) { /* the first event of a device sets its starting point */
        if (e->ntracks == MAX_TRACKED)
            return 0;
        t = &e->tracks[e->ntracks++];
        snprintf(t->device, sizeof t->device, "%s", device);
        t->epoch = epoch;
        t->next_seq = seq + 1;
        return 0;
    }
    uint64_t lost = 0;
    if (t->epoch == epoch && seq > t->next_seq)
        lost = seq - t->next_seq;
    t->epoch = epoch;
    t->next_seq = seq + 1;
    e->lost += lost;
    return lost;
}

#define FOREIGN 1 /* a longer topic that merely shares our prefix */

static int recv_one(lmq_events_t *e, lmq_event_t **out, int timeout_ms)
{
    zmq_pollitem_t it = {e->sock, 0, ZMQ_POLLIN, 0};
    int n = zmq_poll(&it, 1, timeout_ms);
    if (n < 0)
        return zmq_errno() == ETERM ? LMQ_ECLOSED : LMQ_EIO;
    if (n == 0)
        return LMQ_ETIMEOUT;
    zmq_msg_t topic;
    zmq_msg_init(&topic);
    zmq_msg_recv(&topic, e->sock, 0);
    lmq__frames_t parts;
    lmq__frames_init(&parts);
    if (zmq_msg_more(&topic)) {
        size_t got = lmq__recv_rest(e->sock, parts.msg, LMQ__MAX_BINFRAMES);
        parts.n = got < LMQ__MAX_BINFRAMES ? got : LMQ__MAX_BINFRAMES;
    }
    int rc = 0;
    size_t tlen = zmq_msg_size(&topic);
    lmq_event_t *ev = NULL;
    json_t *j = NULL;
    /* "$events/psu1" subscribed also receives "$events/psu10": drop those */
    if (e->one_device && tlen != e->topic_len)
        rc = FOREIGN;
    else if (parts.n < 1)
        rc = bad(e, "event without a header");
    else if (!(j = json_loadb(zmq_msg_data(&parts.msg[0]), zmq_msg_size(&parts.msg[0]), JSON_REJECT_DUPLICATES, NULL)))
        rc = bad(e, "event header is not JSON");
    else if (!json_is_integer(json_object_get(j, "seq")) || !json_is_integer(json_object_get(j, "epoch")) ||
             !*jstr(j, "device") || !*jstr(j, "kind"))
        rc = bad(e, "event header lacks seq, epoch, device or kind");
    else if (!(ev = calloc(1, sizeof *ev)))
        rc = LMQ_EMEM;
    if (rc == 0) {
        ev->json = j;
        j = NULL;
        ev->device = jstr(ev->json, "device");
        ev->kind = jstr(ev->json, "kind");
        ev->name = jstr(ev->json, "name");
        ev->cause = jstr(ev->json, "cause");
        ev->state = jstr(ev->json, "state");
        ev->error = jstr(ev->json, "error");
        ev->holder = jstr(ev->json, "holder");
        ev->safe_state = jstr(ev->json, "safe_state");
        ev->seq = (uint64_t)json_integer_value(json_object_get(ev->json, "seq"));
        ev->t_ns = (int64_t)json_integer_value(json_object_get(ev->json, "t_ns"));
        json_t *jv = json_object_get(ev->json, "value");
        if (jv) {
            /* the value's array frames follow the header */
            lmq__frames_t bin;
            bin.n = parts.n - 1;
            for (size_t i = 0; i < bin.n; i++)
                bin.msg[i] = parts.msg[i + 1];
            char why[200];
            if (lmq__value_from_json(jv, &bin, &ev->value, why, sizeof why) != 0)
                rc = bad(e, "event value: %s", why);
        }
        if (rc == 0)
            ev->lost_before = account(e, ev->device,
                                      (uint64_t)json_integer_value(json_object_get(ev->json, "epoch")), ev->seq);
        else
            lmq_event_destroy(&ev);
    }
    json_decref(j);
    zmq_msg_close(&topic);
    lmq__frames_close(&parts);
    *out = ev;
    return rc;
}

int lmq_events_recv(lmq_events_t *e, lmq_event_t **out, int timeout_ms)
{
    if (!e || !out)
        return LMQ_EARG;
    *out = NULL;
    int64_t deadline = lmq_clock_mono_ns() + (int64_t)timeout_ms * 1000000;
    for (;;) {
        int left = timeout_ms;
        if (timeout_ms >= 0) {
            int64_t ns = deadline - lmq_clock_mono_ns();
            left = ns > 0 ? (int)(ns / 1000000) : 0;
        }
        int rc = recv_one(e, out, left);
        if (rc != FOREIGN)
            return rc;
    }
}

void lmq_event_destroy(lmq_event_t **pev)
{
    if (!pev || !*pev)
        return;
    lmq_event_t *ev = *pev;
    lmq_value_clear(&ev->value);
    json_decref(ev->json);
    free(ev);
    *pev = NULL;
}

const char *lmq_event_device(const lmq_event_t *ev) { return ev->device; }
const char *lmq_event_kind(const lmq_event_t *ev) { return ev->kind; }
const char *lmq_event_name(const lmq_event_t *ev) { return ev->name; }
const lmq_value_t *lmq_event_value(const lmq_event_t *ev) { return &ev->value; }
const char *lmq_event_cause(const lmq_event_t *ev) { return ev->cause; }
const char *lmq_event_state(const lmq_event_t *ev) { return ev->state; }
const char *lmq_event_error(const lmq_event_t *ev) { return ev->error; }
const char *lmq_event_holder(const lmq_event_t *ev) { return ev->holder; }
const char *lmq_event_safe_state(const lmq_event_t *ev) { return ev->safe_state; }
uint64_t lmq_event_seq(const lmq_event_t *ev) { return ev->seq; }
int64_t lmq_event_time_ns(const lmq_event_t *ev) { return ev->t_ns; }
uint64_t lmq_event_lost_before(const lmq_event_t *ev) { return ev->lost_before; }
