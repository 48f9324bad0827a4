/* Flow-controlled stream subscriptions (docs/protocol.md 3.2): a client
 * subscribes on the control endpoint and the broker sends it blocks through
 * the ROUTER as credit allows; what it cannot send yet waits in a queue
 * bounded in bytes, dropping the newest block (lossless) or the oldest
 * (lossy) beyond the bound. Broker thread only. Internal to liblabmq. */
#ifndef LMQ_FLOW_H
#define LMQ_FLOW_H

#include <stdbool.h>
#include <stddef.h>
#include <zmq.h>
#include "daemon_internal.h"
#include "proto.h"

#define LMQ__FLOW_DEFAULT_MEMORY ((size_t)64 << 20)
#define LMQ__FLOW_MIN_MEMORY ((size_t)1 << 10)
#define LMQ__FLOW_MAX_MEMORY ((size_t)1 << 40)
#define LMQ__FLOW_DEFAULT_WINDOW 256
#define LMQ__FLOW_MAX_WINDOW 1000 /* a ROUTER's per-connection high-water mark */
#define LMQ__FLOW_MAX_TOPICS 64
#define LMQ__FLOW_LEASE_MS 10000
/* What a block counts against the bound besides its frames: the daemon's
 * bookkeeping, fixed by the protocol so that a client can count the same. */
#define LMQ__FLOW_BLOCK_OVERHEAD 256

typedef struct lmq__flow lmq__flow_t;

/* router: the broker's ROUTER socket (borrowed). memory: bytes held per
 * subscriber at most. */
lmq__flow_t *lmq__flow_new(lmq_daemon_t *d, void *router, size_t memory);
/* Frees every subscription and what it holds. */
void lmq__flow_destroy(lmq__flow_t **f);

static inline bool lmq__flow_op(lmq__op_t op)
{
    return op == LMQ__OP_SUBSCRIBE || op == LMQ__OP_CREDIT || op == LMQ__OP_UNSUBSCRIBE;
}

/* Serves subscribe, credit or unsubscribe from the connection whose routing
 * id is env[0] (nenv 2: a REQ client). Returns 0 with the reply's result in
 * *result (new reference), or a negative status with the reason in err. */
int lmq__flow_request(lmq__flow_t *f, const zmq_msg_t *env, size_t nenv, const lmq__request_t *req, json_t **result,
                      char *err, size_t errlen);

/* Sends what credit allows to every subscription: after a credit's reply,
 * so that the reply comes before the blocks it releases. */
void lmq__flow_pump(lmq__flow_t *f);

/* A message a device published (topic, header, payload frames): a
 * reference to each part is queued for every subscription whose topics
 * match, and sent as credit allows. parts stay the caller's. */
void lmq__flow_publish(lmq__flow_t *f, zmq_msg_t *parts, size_t n);

/* Whether some flow subscription wants this stream topic. */
bool lmq__flow_wants(const lmq__flow_t *f, const char *topic);
/* True once after the set of wanted topics changed (a subscription made,
 * ended, expired or dropped): the broker recomputes what devices publish. */
bool lmq__flow_take_changed(lmq__flow_t *f);

/* Milliseconds until lmq__flow_tick has something to do; -1: nothing. */
int lmq__flow_timeout_ms(const lmq__flow_t *f);
/* Ends subscriptions whose lease ran out, and retries sends ZeroMQ refused
 * for a full pipe. */
void lmq__flow_tick(lmq__flow_t *f);

/* For stats: the subscriptions, and the limits that apply. */
json_t *lmq__flow_stats(const lmq__flow_t *f);
size_t lmq__flow_memory(const lmq__flow_t *f);

/* The XPUB's per-subscriber high-water mark for plain SUB clients: the
 * memory bound over the largest block of d's streams (their shapes now, or
 * `seen`, the largest payload published so far), within [2, 1000]. */
int lmq__flow_plain_hwm(const lmq_daemon_t *d, size_t memory, size_t seen);

#endif
