/* labmq — device proxies: remote method calls and typed properties.
 *
 * A proxy names a device at a control endpoint. It owns one DEALER socket
 * (and, with a daemon on this host, a connection to the device's local
 * channel), so it must be used by one thread at a time. It survives daemon restarts: after
 * a timeout or a lost daemon the same object simply works again once a daemon
 * answers (no re-creation). A missing daemon gives LMQ_EUNREACH within the
 * call's timeout, never a hang.
 *
 * A proxy can be written as a URI ("ENDPOINT#DEVICE", e.g.
 * "ipc:///run/user/1000/labmq/control#psu1") and reopened in any process; that
 * is all another process needs, never a handle. */
#ifndef LABMQ_PROXY_H
#define LABMQ_PROXY_H

#include <stdbool.h>
#include <stdint.h>
#include "labmq/export.h"
#include "labmq/value.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lmq_proxy lmq_proxy_t;

#define LMQ_PROXY_DEFAULT_TIMEOUT_MS 2000

/* zctx: the caller's ZeroMQ context (kept alive until destroy). device may be
 * NULL for a proxy used only for daemon-wide ops (list, ping, stats).
 * Returns NULL on invalid arguments or allocation failure. */
LMQ_EXPORT lmq_proxy_t *lmq_proxy_new(void *zctx, const char *endpoint, const char *device);
/* Opens "ENDPOINT#DEVICE" (or a bare ENDPOINT). */
LMQ_EXPORT lmq_proxy_t *lmq_proxy_open(void *zctx, const char *uri);
LMQ_EXPORT void lmq_proxy_destroy(lmq_proxy_t **p);

/* The proxy's URI; caller frees. */
LMQ_EXPORT char *lmq_proxy_uri(const lmq_proxy_t *p);
LMQ_EXPORT const char *lmq_proxy_device(const lmq_proxy_t *p);
/* Per-call timeout in ms (default LMQ_PROXY_DEFAULT_TIMEOUT_MS). */
LMQ_EXPORT void lmq_proxy_set_timeout(lmq_proxy_t *p, int timeout_ms);

/* Calls a method. args: nargs values (borrowed). result may be NULL; else it
 * receives the return value (caller clears). */
LMQ_EXPORT int lmq_proxy_call(lmq_proxy_t *p, const char *method, const lmq_value_t *args, size_t nargs,
                              lmq_value_t *result);
LMQ_EXPORT int lmq_proxy_get(lmq_proxy_t *p, const char *property, lmq_value_t *out);
LMQ_EXPORT int lmq_proxy_set(lmq_proxy_t *p, const char *property, const lmq_value_t *value);
/* Convenience for numeric properties. */
LMQ_EXPORT int lmq_proxy_get_double(lmq_proxy_t *p, const char *property, double *out);

/* Daemon-wide and description ops; *json receives the reply's "result" as
 * JSON text (caller frees). describe uses the proxy's device. */
LMQ_EXPORT int lmq_proxy_describe(lmq_proxy_t *p, char **json);
LMQ_EXPORT int lmq_proxy_list(lmq_proxy_t *p, char **json);
LMQ_EXPORT int lmq_proxy_ping(lmq_proxy_t *p, char **json);
LMQ_EXPORT int lmq_proxy_stats(lmq_proxy_t *p, char **json);
/* The daemon's supervised workers (the `workers` op). */
LMQ_EXPORT int lmq_proxy_workers(lmq_proxy_t *p, char **json);

/* The daemon's data endpoint, for lmq_sub_new, as this process can connect
 * to it: asked of the daemon (ping). A daemon bound to every interface
 * (tcp://0.0.0.0:P, tcp://[::]:P) is reached at the host of this proxy's
 * endpoint. Returns 0, LMQ_EARG when buf is too small, or the ping's status. */
LMQ_EXPORT int lmq_proxy_data_endpoint(lmq_proxy_t *p, char *buf, size_t size);

/* Pipelining: send a get/call without waiting (up to many in flight), then
 * collect replies in arrival order. *id identifies the request. Do not mix
 * with the synchronous calls while requests are in flight: those discard
 * replies that are not theirs. */
LMQ_EXPORT int lmq_proxy_send_get(lmq_proxy_t *p, const char *property, uint64_t *id);
LMQ_EXPORT int lmq_proxy_send_call(lmq_proxy_t *p, const char *method, const lmq_value_t *args, size_t nargs,
                                   uint64_t *id);
/* Waits up to the proxy's timeout for the next reply; *id receives its id,
 * result (may be NULL) its value. Returns the reply's status. */
LMQ_EXPORT int lmq_proxy_recv(lmq_proxy_t *p, uint64_t *id, lmq_value_t *result);

/* The local channel (docs/protocol.md 6): with a daemon on this host (an
 * ipc:// endpoint) call/get/set go straight to the device's thread over a
 * Unix socket the daemon names in describe; everything else, requests
 * larger than a channel record, and daemons that offer none go by ZeroMQ,
 * chosen per request without the caller noticing. enable=false (or
 * LABMQ_NO_LOCAL=1 in the environment when the proxy is created) keeps
 * this proxy on ZeroMQ. */
LMQ_EXPORT void lmq_proxy_set_local(lmq_proxy_t *p, bool enable);
/* The path the last call/get/set request took: "local", "zmq", or "" before
 * the first. Static string. */
LMQ_EXPORT const char *lmq_proxy_last_path(const lmq_proxy_t *p);

/* Why the last failed call failed ("device 'psu9' not found"). Borrowed,
 * valid until the next call on this proxy. */
LMQ_EXPORT const char *lmq_proxy_last_error(const lmq_proxy_t *p);

#ifdef __cplusplus
}
#endif
#endif
