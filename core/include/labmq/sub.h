/* labmq — stream subscriptions.
 *
 * A subscription receives the blocks a device publishes on one stream
 * ("device/stream") from the daemon's data endpoint. Each block carries seq
 * (per stream, gap-free at the publisher) and epoch (changes when the publisher
 * restarts): a jump in seq within one epoch is counted as lost frames; a new
 * epoch is counted as a restart, not a loss. Payloads are not copied: a frame
 * points into the received message until destroyed. One thread at a time. */
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
LMQ_EXPORT void lmq_sub_destroy(lmq_sub_t **s);
/* The same for a daemon with keys (docs/security.md), as lmq_proxy_new_keys.
 * A refused key receives nothing (lmq_sub_recv times out). */
LMQ_EXPORT lmq_sub_t *lmq_sub_new_keys(void *zctx, const char *data_endpoint, const char *topic,
                                       const lmq_client_keys_t *keys);

/* Waits up to timeout_ms (-1 = forever) for the next block. 0 and *frame set
 * (caller destroys), LMQ_ETIMEOUT, or LMQ_EPROTO for a malformed block (which
 * is skipped; see lmq_sub_last_error). */
LMQ_EXPORT int lmq_sub_recv(lmq_sub_t *s, lmq_frame_t **frame, int timeout_ms);

LMQ_EXPORT uint64_t lmq_sub_received(const lmq_sub_t *s);
LMQ_EXPORT uint64_t lmq_sub_lost(const lmq_sub_t *s);     /* frames missing from seq gaps */
LMQ_EXPORT uint64_t lmq_sub_restarts(const lmq_sub_t *s); /* epoch changes seen */
LMQ_EXPORT const char *lmq_sub_last_error(const lmq_sub_t *s);
/* The ZeroMQ socket, for zmq_poll with other sockets (do not recv on it). */
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
