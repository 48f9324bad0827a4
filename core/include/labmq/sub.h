/* labmq — stream subscriptions.
 *
 * A subscription receives the blocks a device publishes on one stream
 * ("device/stream") from the daemon's data endpoint. Each block carries seq
 * (per stream, gap-free at the publisher) and epoch (changes when the publisher
 * restarts): a jump in seq within one epoch is counted as lost frames; a new
 * epoch is counted as a restart, not a loss. Payloads are not copied: a frame
 * points into the received message until destroyed. One thread at a time.
 *
 * Two kinds (docs/protocol.md 3 and 3.2):
 *   plain (lmq_sub_new)      a SUB socket on the data endpoint. A subscriber
 *                            that does not keep up loses blocks silently at
 *                            ZeroMQ's high-water mark (seen as seq gaps only).
 *   flow (lmq_sub_new_opts)  a subscription on the control endpoint with
 *                            credit: the daemon sends at most `window` blocks
 *                            ahead and keeps the rest in a queue bounded in
 *                            bytes. LMQ_SUB_LOSSLESS drops the newest block
 *                            when the bound is reached (what arrives is an
 *                            unbroken prefix; a recorder loses nothing at
 *                            rates it can write); LMQ_SUB_LOSSY drops the
 *                            oldest (a display sees the newest). Drops are
 *                            counted in the daemon's stats and seen here as
 *                            seq gaps. A slow subscriber never slows the
 *                            device or other subscribers. */
#ifndef LABMQ_SUB_H
#define LABMQ_SUB_H

#include <stdbool.h>
#include <stdint.h>
#include "labmq/auth.h"
#include "labmq/export.h"
#include "labmq/value.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lmq_sub lmq_sub_t;
typedef struct lmq_frame lmq_frame_t;

/* zctx: the caller's ZeroMQ context. topic: "device/stream". */
LMQ_EXPORT lmq_sub_t *lmq_sub_new(void *zctx, const char *data_endpoint, const char *topic);

typedef enum lmq_sub_mode { LMQ_SUB_LOSSLESS = 1, LMQ_SUB_LOSSY = 2 } lmq_sub_mode_t;

#define LMQ_SUB_DEFAULT_WINDOW 256
#define LMQ_SUB_MAX_WINDOW 1000

typedef struct lmq_sub_opts {
    lmq_sub_mode_t mode;
    /* Blocks the daemon may send before this subscriber consumes them,
     * 1..LMQ_SUB_MAX_WINDOW; 0: LMQ_SUB_DEFAULT_WINDOW. A lossy subscriber
     * also has at most this many blocks queued for it in the daemon, so a
     * small window keeps a slow display close to now (1: the newest only). */
    unsigned window;
    /* A daemon with keys (docs/security.md): as lmq_proxy_new_keys; NULL:
     * none. Borrowed for the constructor only. */
    const lmq_client_keys_t *keys;
} lmq_sub_opts_t;

/* A flow subscription to topic ("device/stream", "$events/device") at the
 * daemon's control endpoint. The subscribe request is sent at once (it
 * waits in ZeroMQ until a daemon is there); the daemon's answer is read by
 * lmq_sub_recv, which returns a refusal (LMQ_ENOTFOUND for an unknown stream,
 * the reason in lmq_sub_last_error) and asks again about once a second.
 * lmq_sub_recv also returns credit as blocks are consumed, renews the
 * subscription's lease, and subscribes again after a daemon restart or an
 * expired lease: call it at least every 3 s, also when lmq_sub_socket is not
 * readable (with a timeout of 0 it returns LMQ_ETIMEOUT then). NULL on
 * invalid arguments or no memory. */
LMQ_EXPORT lmq_sub_t *lmq_sub_new_opts(void *zctx, const char *control_endpoint, const char *topic,
                                       const lmq_sub_opts_t *opts);
LMQ_EXPORT void lmq_sub_destroy(lmq_sub_t **s);
/* The same for a daemon with keys (docs/security.md), as lmq_proxy_new_keys.
 * A refused key receives nothing (lmq_sub_recv times out). */
LMQ_EXPORT lmq_sub_t *lmq_sub_new_keys(void *zctx, const char *data_endpoint, const char *topic,
                                       const lmq_client_keys_t *keys);

/* Waits up to timeout_ms (-1 = forever) for the next block. 0 and *frame set
 * (caller destroys), LMQ_ETIMEOUT, or LMQ_EPROTO for a malformed block (which
 * is skipped; see lmq_sub_last_error). A flow subscription also returns the
 * daemon's refusal of the subscription or of its credit (its status). */
LMQ_EXPORT int lmq_sub_recv(lmq_sub_t *s, lmq_frame_t **frame, int timeout_ms);

LMQ_EXPORT uint64_t lmq_sub_received(const lmq_sub_t *s);
LMQ_EXPORT uint64_t lmq_sub_lost(const lmq_sub_t *s);     /* frames missing from seq gaps */
LMQ_EXPORT uint64_t lmq_sub_restarts(const lmq_sub_t *s); /* epoch changes seen */
LMQ_EXPORT const char *lmq_sub_last_error(const lmq_sub_t *s);
/* Flow subscriptions: whether the daemon has accepted the subscription
 * (and it has not lapsed since); always true for a plain one. */
LMQ_EXPORT bool lmq_sub_active(const lmq_sub_t *s);
/* The ZeroMQ socket, for zmq_poll with other sockets (do not recv on it).
 * Readable also when only a reply to the flow protocol waits. */
LMQ_EXPORT void *lmq_sub_socket(lmq_sub_t *s);

LMQ_EXPORT void lmq_frame_destroy(lmq_frame_t **f);
LMQ_EXPORT const char *lmq_frame_topic(const lmq_frame_t *f);
LMQ_EXPORT uint64_t lmq_frame_seq(const lmq_frame_t *f);
LMQ_EXPORT uint64_t lmq_frame_epoch(const lmq_frame_t *f);
LMQ_EXPORT int64_t lmq_frame_time_ns(const lmq_frame_t *f); /* CLOCK_REALTIME ns */
LMQ_EXPORT lmq_dtype_t lmq_frame_dtype(const lmq_frame_t *f);
LMQ_EXPORT unsigned lmq_frame_ndim(const lmq_frame_t *f);
LMQ_EXPORT const size_t *lmq_frame_shape(const lmq_frame_t *f);
LMQ_EXPORT const char *lmq_frame_units(const lmq_frame_t *f);
LMQ_EXPORT const void *lmq_frame_data(const lmq_frame_t *f); /* borrowed, aligned to 8 */
LMQ_EXPORT size_t lmq_frame_size(const lmq_frame_t *f);
/* Frames lost just before this one (seq gap), and whether it opens a new epoch. */
LMQ_EXPORT uint64_t lmq_frame_lost_before(const lmq_frame_t *f);
LMQ_EXPORT bool lmq_frame_restarted(const lmq_frame_t *f);

#ifdef __cplusplus
}
#endif
#endif
