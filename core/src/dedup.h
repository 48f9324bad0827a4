/* Retry de-duplication (protocol 2.5): the daemon remembers the `call`s and
 * `set`s of each named client (`client` key) by id, so a retry of one it has
 * run, or is running, is never run again. Used by the broker thread only.
 * Internal to liblabmq. */
#ifndef LMQ_DEDUP_H
#define LMQ_DEDUP_H

#include <stdint.h>
#include <zmq.h>
#include "proto.h"

#define LMQ__DEDUP_PER_CLIENT 1024        /* ids remembered per client */
#define LMQ__DEDUP_CLIENTS 256            /* clients remembered */
#define LMQ__DEDUP_TTL_NS (60LL * 1000000000) /* an id is forgotten after this */
#define LMQ__DEDUP_REPLY_MAX (64 * 1024)  /* a reply larger than this is not kept */
#define LMQ__DEDUP_BUDGET (16 * 1024 * 1024) /* replies kept, in all */
#define LMQ__DEDUP_JOIN_MAX 8             /* duplicates waiting for one running request */

typedef struct lmq__dedup lmq__dedup_t;

lmq__dedup_t *lmq__dedup_new(void);
void lmq__dedup_destroy(lmq__dedup_t **dd);

enum {
    LMQ__DEDUP_NEW = 0,  /* not seen: run it (and lmq__dedup_start it) */
    LMQ__DEDUP_REPLAY,   /* run before: *hdr and *bin are its reply, to send again */
    LMQ__DEDUP_JOINED,   /* running now: the envelope waits for its reply */
    LMQ__DEDUP_REFUSED   /* run before, reply not kept, or the id reused: *status and err */
};

/* Looks up a call/set that carries `client`. env[0..nenv) is the sender's
 * envelope (copied when JOINED). */
int lmq__dedup_lookup(lmq__dedup_t *dd, const lmq__request_t *req, const zmq_msg_t *env, size_t nenv, int64_t now_ns,
                      zmq_msg_t *hdr, lmq__frames_t *bin, int *status, char *err, size_t errlen);

/* Remembers req as running. false when it cannot (out of memory): the
 * request then runs untracked. */
bool lmq__dedup_start(lmq__dedup_t *dd, const lmq__request_t *req, int64_t now_ns);

/* Sends a reply to one waiting duplicate: envelope, a copy of the header and
 * of the frames (the callee consumes hdr and bin). */
typedef void (*lmq__dedup_send_fn)(void *user, const zmq_msg_t *env, size_t nenv, zmq_msg_t *hdr, lmq__frames_t *bin);

/* A tracked request finished with this reply (not consumed): keeps a copy
 * when it fits the bounds, and answers the duplicates that joined it. */
void lmq__dedup_finish(lmq__dedup_t *dd, const lmq__request_t *req, const zmq_msg_t *hdr, const lmq__frames_t *bin,
                       int64_t now_ns, lmq__dedup_send_fn send, void *user);

#endif
