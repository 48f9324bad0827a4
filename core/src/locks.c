/* Device locks (protocol 2.6), kept by the broker thread: who holds which
 * device and until when. A lock is a lease: the holder renews it (another
 * `lock`, or any request of its own to the device) or loses it, and a lost
 * lock puts the device in its safe state, so a crashed or hung script never
 * leaves an instrument driving its load. The device thread does the safe
 * state and announces every change; it learns of them through its pipe, in
 * order with the jobs queued before. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon_internal.h"
#include "labmq/status.h"
#include "locks.h"

typedef struct lock {
    bool held;
    lmq__holder_t holder;
    int64_t lease_ns;
    int64_t expires_ns;
} lock_t;

struct lmq__locks {
    lmq_daemon_t *d;
    lock_t *v;    /* [d->ndev] */
    lock_t *next; /* a reload's table, between prepare and remap */
};

void lmq__holder_of(const lmq__request_t *req, const zmq_msg_t *routing_id, const char *peer, lmq__holder_t *h)
{
    /* "local" and "anonymous@..." are not names a client proved. */
    bool proven = peer && *peer && strcmp(peer, "local") != 0 && strncmp(peer, "anonymous@", 10) != 0;
    char scope[80] = "";
    if (proven)
        snprintf(scope, sizeof scope, "%.70s: ", peer);
    if (req->client) {
        snprintf(h->key, sizeof h->key, "c:%s%s", scope, req->client);
        snprintf(h->name, sizeof h->name, "%s%s", scope, req->client);
        return;
    }
    /* No name given: the connection is the holder, named by its routing id
     * (5 bytes as ROUTER makes them; a client's own may be longer: the key
     * keeps 64 bytes, the name 16). */
    const unsigned char *id = zmq_msg_data((zmq_msg_t *)routing_id);
    size_t n = zmq_msg_size((zmq_msg_t *)routing_id);
    char hex[2 * 64 + 1] = "";
    for (size_t i = 0; i < n && i < 64; i++)
        snprintf(hex + 2 * i, 3, "%02x", id[i]);
    snprintf(h->key, sizeof h->key, "r:%s", hex);
    snprintf(h->name, sizeof h->name, "%sconnection %.32s%s", scope, hex, n > 16 ? "..." : "");
}

lmq__locks_t *lmq__locks_new(lmq_daemon_t *d)
{
    lmq__locks_t *l = calloc(1, sizeof *l);
    if (!l || !(l->v = calloc(d->ndev + 1, sizeof *l->v))) {
        free(l);
        return NULL;
    }
    l->d = d;
    return l;
}

void lmq__locks_destroy(lmq__locks_t **pl)
{
    if (!pl || !*pl)
        return;
    free((*pl)->v);
    free((*pl)->next);
    free(*pl);
    *pl = NULL;
}

/* Tells the device thread (through the pipe its jobs take, so it comes
 * after what the device already accepted). */
static void notify(lmq__locks_t *l, size_t i, char what, const char *name)
{
    lmq_dev_t *dev = l->d->devs[i];
    char buf[2 + sizeof l->v[i].holder.name];
    size_t n = strlen(name);
    buf[0] = LMQ__MSG_LOCK;
    buf[1] = what;
    memcpy(buf + 2, name, n);
    if (!dev->broker_pipe || zmq_send(dev->broker_pipe, buf, 2 + n, ZMQ_DONTWAIT) < 0)
        lmq_log(l->d->log, LMQ_LOG_ERROR, dev->name, "cannot tell the device of its lock change (%s): %s",
                what == LMQ__LOCK_EXPIRED ? "lock expired; its safe state does NOT run" : "event lost",
                zmq_strerror(zmq_errno()));
}

static size_t find(const lmq__locks_t *l, const char *name)
{
    for (size_t i = 0; i < l->d->ndev; i++)
        if (strcmp(l->d->devs[i]->name, name) == 0)
            return i;
    return SIZE_MAX;
}

int lmq__locks_prepare(lmq__locks_t *l, size_t ndev)
{
    free(l->next);
    l->next = calloc(ndev + 1, sizeof *l->next);
    return l->next ? 0 : LMQ_EMEM;
}

void lmq__locks_remap(lmq__locks_t *l, lmq_dev_t *const *old, size_t nold)
{
    for (size_t j = 0; j < nold; j++) {
        if (!l->v[j].held)
            continue;
        size_t i = find(l, old[j]->name);
        if (i != SIZE_MAX)
            l->next[i] = l->v[j];
        else
            lmq_log(l->d->log, LMQ_LOG_INFO, old[j]->name, "removed by a reload: its lock by '%s' ends",
                    l->v[j].holder.name);
    }
    free(l->v);
    l->v = l->next;
    l->next = NULL;
}

static void locked_msg(const lmq__locks_t *l, size_t i, int64_t now, char *err, size_t errlen)
{
    const lock_t *k = &l->v[i];
    double left = (double)(k->expires_ns - now) / 1e9;
    snprintf(err, errlen, "%s is locked by '%s' for another %.1f s (lease %.1f s, renewed while it is used)",
             l->d->devs[i]->name, k->holder.name, left > 0 ? left : 0.0, (double)k->lease_ns / 1e9);
}

static json_t *names_of(const lmq__locks_t *l, const size_t *idx, size_t n)
{
    json_t *a = json_array();
    for (size_t k = 0; a && k < n; k++)
        json_array_append_new(a, json_string(l->d->devs[idx[k]]->name));
    return a;
}

int lmq__locks_op(lmq__locks_t *l, const lmq__request_t *req, const zmq_msg_t *routing_id, const char *peer,
                  int64_t now,
                  json_t **result, char *err, size_t errlen)
{
    lmq__holder_t h;
    lmq__holder_of(req, routing_id, peer, &h);
    size_t idx[LMQ__MAX_LOCK_DEVICES], n = 0;
    size_t given = req->devices ? json_array_size(req->devices) : 0;
    for (size_t k = 0; k < given; k++) {
        const char *name = json_string_value(json_array_get(req->devices, k));
        size_t i = find(l, name);
        if (i == SIZE_MAX) {
            snprintf(err, errlen, "no device '%.64s' to %s", name, lmq__op_name(req->op));
            return LMQ_ENOTFOUND;
        }
        bool dup = false;
        for (size_t j = 0; j < n && !dup; j++)
            dup = idx[j] == i;
        if (!dup)
            idx[n++] = i;
    }
    /* All or nothing: a lock that fails on one device takes none. */
    for (size_t k = 0; k < n; k++) {
        lock_t *lk = &l->v[idx[k]];
        if (lk->held && strcmp(lk->holder.key, h.key) != 0) {
            locked_msg(l, idx[k], now, err, errlen);
            return LMQ_ELOCKED;
        }
    }
    if (req->op == LMQ__OP_LOCK) {
        int64_t lease = req->lease_ms * 1000000;
        for (size_t k = 0; k < n; k++) {
            lock_t *lk = &l->v[idx[k]];
            bool renewal = lk->held;
            lk->held = true;
            lk->holder = h;
            lk->lease_ns = lease;
            lk->expires_ns = now + lease;
            if (!renewal) {
                lmq_log(l->d->log, LMQ_LOG_INFO, l->d->devs[idx[k]]->name, "locked by '%s' (lease %lld ms)", h.name,
                        (long long)req->lease_ms);
                notify(l, idx[k], LMQ__LOCK_TAKEN, h.name);
            }
        }
        *result = json_pack("{s:o, s:s, s:I}", "devices", names_of(l, idx, n), "holder", h.name, "lease_ms",
                            (json_int_t)req->lease_ms);
    } else {
        /* unlock without devices: every lock of this holder */
        if (!req->devices)
            for (size_t i = 0; i < l->d->ndev && n < LMQ__MAX_LOCK_DEVICES; i++)
                if (l->v[i].held && strcmp(l->v[i].holder.key, h.key) == 0)
                    idx[n++] = i;
        size_t released[LMQ__MAX_LOCK_DEVICES], nr = 0;
        for (size_t k = 0; k < n && nr < LMQ__MAX_LOCK_DEVICES; k++) {
            lock_t *lk = &l->v[idx[k]];
            if (!lk->held)
                continue;
            lk->held = false;
            released[nr++] = idx[k];
            lmq_log(l->d->log, LMQ_LOG_INFO, l->d->devs[idx[k]]->name, "unlocked by '%s'", h.name);
            notify(l, idx[k], LMQ__LOCK_RELEASED, h.name);
        }
        *result = json_pack("{s:o}", "unlocked", names_of(l, released, nr));
    }
    if (!*result) {
        snprintf(err, errlen, "out of memory");
        return LMQ_EMEM;
    }
    return 0;
}

int lmq__locks_check(lmq__locks_t *l, size_t i, const lmq__request_t *req, const zmq_msg_t *routing_id,
                     const char *peer, int64_t now,
                     char *err, size_t errlen)
{
    lock_t *lk = &l->v[i];
    if (!lk->held)
        return 0;
    lmq__holder_t h;
    lmq__holder_of(req, routing_id, peer, &h);
    if (strcmp(lk->holder.key, h.key) != 0) {
        locked_msg(l, i, now, err, errlen);
        return LMQ_ELOCKED;
    }
    lk->expires_ns = now + lk->lease_ns;
    return 0;
}

int lmq__locks_expire(lmq__locks_t *l, int64_t now, int max_ms)
{
    int64_t next = INT64_MAX;
    for (size_t i = 0; i < l->d->ndev; i++) {
        lock_t *lk = &l->v[i];
        if (!lk->held)
            continue;
        if (lk->expires_ns <= now) {
            lk->held = false;
            lmq_log(l->d->log, LMQ_LOG_WARN, l->d->devs[i]->name,
                    "lock of '%s' expired (not renewed within %lld ms): putting the device in its safe state",
                    lk->holder.name, (long long)(lk->lease_ns / 1000000));
            notify(l, i, LMQ__LOCK_EXPIRED, lk->holder.name);
        } else if (lk->expires_ns < next)
            next = lk->expires_ns;
    }
    if (next == INT64_MAX)
        return max_ms;
    int64_t ms = (next - now + 999999) / 1000000;
    return max_ms >= 0 && ms > max_ms ? max_ms : (int)ms;
}

json_t *lmq__locks_info(const lmq__locks_t *l, size_t i, int64_t now)
{
    const lock_t *lk = &l->v[i];
    if (!lk->held)
        return json_null();
    int64_t left = (lk->expires_ns - now) / 1000000;
    return json_pack("{s:s, s:I, s:I}", "holder", lk->holder.name, "lease_ms", (json_int_t)(lk->lease_ns / 1000000),
                     "expires_in_ms", (json_int_t)(left > 0 ? left : 0));
}
