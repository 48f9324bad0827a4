/* Device locks (protocol 2.6): exclusive control of devices by one client,
 * held on a lease the holder renews; an expired lock puts its devices in
 * their safe state. Used by the broker thread only. Internal to liblabmq. */
#ifndef LMQ_LOCKS_H
#define LMQ_LOCKS_H

#include <jansson.h>
#include <stdint.h>
#include <zmq.h>
#include "proto.h"

typedef struct lmq_daemon lmq_daemon_t;
typedef struct lmq_dev lmq_dev_t;
typedef struct lmq__locks lmq__locks_t;

/* Who sent a request, as locks see it. key identifies the holder (requests
 * with the same key are the same holder); name is for people. */
typedef struct lmq__holder {
    char key[LMQ__MAX_CLIENT + 88];
    char name[LMQ__MAX_CLIENT + 120];
} lmq__holder_t;

/* The holder of a request: its `client` when it has one (stable across the
 * reconnects a client makes after a timeout), else its connection (routing
 * id); with keys, within the name the client authenticated as (peer, from
 * lmq__peer_name), so that no client can take or free another's lock by
 * claiming its `client`. */
void lmq__holder_of(const lmq__request_t *req, const zmq_msg_t *routing_id, const char *peer, lmq__holder_t *h);

/* d: the daemon whose devices are locked (its devices and their pipes). */
lmq__locks_t *lmq__locks_new(lmq_daemon_t *d);
void lmq__locks_destroy(lmq__locks_t **l);

/* Serves `lock` and `unlock`. Returns 0 with *result (the reply's result),
 * or a status (LOCKED, NOTFOUND, MEM) with the reason in err. */
int lmq__locks_op(lmq__locks_t *l, const lmq__request_t *req, const zmq_msg_t *routing_id, const char *peer,
                  int64_t now_ns,
                  json_t **result, char *err, size_t errlen);

/* May the sender of req `set`/`call` device dev_index now? 0 (a request of
 * the holder renews its lease), or LMQ_ELOCKED naming the holder in err. */
int lmq__locks_check(lmq__locks_t *l, size_t dev_index, const lmq__request_t *req, const zmq_msg_t *routing_id,
                     const char *peer, int64_t now_ns, char *err, size_t errlen);

/* Ends the locks whose lease has run out (their devices go to their safe
 * state, an event says so) and returns how many ms the broker may sleep
 * before the next expiry, at most max_ms (-1: no bound). */
int lmq__locks_expire(lmq__locks_t *l, int64_t now_ns, int max_ms);

/* A reload replaces the daemon's device table (broker.c): first
 * lmq__locks_prepare for the new table's size (0 or LMQ_EMEM; nothing has
 * changed yet), then, once d->devs is the new table, lmq__locks_remap with
 * the old one. A lock moves with its device's name (a reconfigured device
 * stays locked by its holder); the locks of removed devices end without a
 * safe state: the device is gone. */
int lmq__locks_prepare(lmq__locks_t *l, size_t ndev);
void lmq__locks_remap(lmq__locks_t *l, lmq_dev_t *const *old, size_t nold);

/* `list`: {"holder":NAME,"lease_ms":N,"expires_in_ms":N} for a locked
 * device, else JSON null. */
json_t *lmq__locks_info(const lmq__locks_t *l, size_t dev_index, int64_t now_ns);

/* What a lock change asks of the device thread: the first byte after the
 * LMQ__MSG_LOCK kind; the holder's name follows. */
enum { LMQ__LOCK_TAKEN = 'l', LMQ__LOCK_RELEASED = 'u', LMQ__LOCK_EXPIRED = 'x' };

#endif
