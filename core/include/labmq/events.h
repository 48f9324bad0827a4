/* labmq — change events: what changed on a device, as it happens.
 *
 * The daemon publishes an event on its data endpoint whenever a property of
 * a device changes (a client's successful set, a restore after a reconnect,
 * a driver's own announcement) and whenever a device changes state (ready,
 * disconnected, stopped), so a GUI stays true without polling. Each event
 * carries a per-device sequence number: a gap is counted as lost, a new
 * epoch as a restart (protocol 3.1). One thread at a time. */
#ifndef LABMQ_EVENTS_H
#define LABMQ_EVENTS_H

#include <stdint.h>
#include "labmq/auth.h"
#include "labmq/export.h"
#include "labmq/value.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lmq_events lmq_events_t;
typedef struct lmq_event lmq_event_t;

/* device: one device's events, or NULL for every device's. */
LMQ_EXPORT lmq_events_t *lmq_events_new(void *zctx, const char *data_endpoint, const char *device);
LMQ_EXPORT void lmq_events_destroy(lmq_events_t **e);
/* The same for a daemon with keys (docs/security.md), as lmq_proxy_new_keys. */
LMQ_EXPORT lmq_events_t *lmq_events_new_keys(void *zctx, const char *data_endpoint, const char *device,
                                             const lmq_client_keys_t *keys);

/* Waits up to timeout_ms (-1 = forever) for the next event: 0 and *ev set
 * (caller destroys), LMQ_ETIMEOUT, or LMQ_EPROTO for a malformed event
 * (skipped; see lmq_events_last_error). */
LMQ_EXPORT int lmq_events_recv(lmq_events_t *e, lmq_event_t **ev, int timeout_ms);
LMQ_EXPORT uint64_t lmq_events_lost(const lmq_events_t *e);
LMQ_EXPORT const char *lmq_events_last_error(const lmq_events_t *e);
/* The ZeroMQ socket, for zmq_poll (do not recv on it). */
LMQ_EXPORT void *lmq_events_socket(lmq_events_t *e);

LMQ_EXPORT void lmq_event_destroy(lmq_event_t **ev);
LMQ_EXPORT const char *lmq_event_device(const lmq_event_t *ev);
/* "property", "state" or "lock". */
LMQ_EXPORT const char *lmq_event_kind(const lmq_event_t *ev);
/* property events: the property and its new value (borrowed) */
LMQ_EXPORT const char *lmq_event_name(const lmq_event_t *ev);
LMQ_EXPORT const lmq_value_t *lmq_event_value(const lmq_event_t *ev);
/* "set", "restore", "driver"; for state events "opened", "reconnected",
 * "restored", "lost", "open failed", "stopped". */
LMQ_EXPORT const char *lmq_event_cause(const lmq_event_t *ev);
/* state events: "ready", "disconnected", "stopped", and why ("" when none). */
LMQ_EXPORT const char *lmq_event_state(const lmq_event_t *ev);
LMQ_EXPORT const char *lmq_event_error(const lmq_event_t *ev);
/* lock events (cause "locked", "unlocked", "lock expired"): the holder's
 * name, and for an expiry what the safe state did: "done", "failed" (why:
 * lmq_event_error), "none" (the driver has none), "not open"; "" otherwise. */
LMQ_EXPORT const char *lmq_event_holder(const lmq_event_t *ev);
LMQ_EXPORT const char *lmq_event_safe_state(const lmq_event_t *ev);
LMQ_EXPORT uint64_t lmq_event_seq(const lmq_event_t *ev);
LMQ_EXPORT int64_t lmq_event_time_ns(const lmq_event_t *ev); /* CLOCK_REALTIME ns */
/* Events of this device missed just before this one. */
LMQ_EXPORT uint64_t lmq_event_lost_before(const lmq_event_t *ev);

#ifdef __cplusplus
}
#endif
#endif
