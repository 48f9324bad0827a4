/* labmq — device proxies: remote method calls and typed properties.
 *
 * A proxy names a device at a control endpoint. It owns one DEALER socket, so
 * it must be used by one thread at a time. It survives daemon restarts: after
 * a timeout or a lost daemon the same object simply works again once a daemon
 * answers (no re-creation). A missing daemon gives LMQ_EUNREACH within the
 * call's timeout, never a hang. A daemon that stops answering mid-call
 * (stopped, killed, its host gone) is noticed by heartbeats within about
 * 2.5 s, sooner than a longer timeout: a get then fails LMQ_EUNREACH, a call
 * or set LMQ_EOUTCOME (it may or may not have run: never retry it blindly).
 * Every synchronous call, get and set carries the proxy's timeout as its
 * deadline: the daemon answers LMQ_ETIMEOUT without running a request that
 * could not start in time (pipelined ones carry none).
 *
 * A proxy can be written as a URI ("ENDPOINT#DEVICE", e.g.
 * "ipc:///run/user/1000/labmq/control#psu1") and reopened in any process; that
 * is all another process needs, never a handle. */
#ifndef LABMQ_PROXY_H
#define LABMQ_PROXY_H

#include <stdint.h>
#include "labmq/auth.h"
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
/* The same for a daemon with keys (docs/security.md): every connection is
 * CURVE with keys (copied; lmq_client_keys_load reads them from files).
 * keys NULL: as lmq_proxy_new. A daemon that refuses the key (not on its
 * allow-list, or a wrong server key) never answers: calls then fail with
 * LMQ_EUNREACH, and the message says to check the keys. NULL also for
 * malformed keys. */
LMQ_EXPORT lmq_proxy_t *lmq_proxy_new_keys(void *zctx, const char *endpoint, const char *device,
                                           const lmq_client_keys_t *keys);
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

/* ---- locks (protocol 2.6) ----
 * A lock gives this proxy's client exclusive `set`/`call` of devices; others
 * get LMQ_ELOCKED naming the holder, while `get` and `describe` stay open to
 * all. A lock is a lease of lease_ms (LMQ_PROXY_LEASE_DEFAULT_MS when 0;
 * 100 to 60000): every call, get or set this client makes to a locked device
 * renews it, and so does lmq_proxy_lock again. A proxy has no thread of its
 * own, so nothing renews in the background: a program that may stay silent
 * longer than the lease calls lmq_proxy_lock again in time. A lease that
 * runs out (the program crashed, hung or forgot) puts the device in its safe
 * state (a supply's output off), and an event says so.
 *
 * The holder is the proxy's client name (lmq_proxy_client), which survives
 * the new socket a proxy opens after a timeout. devices: ndevices names, or
 * NULL/0 for the proxy's own device. Locking is all or nothing. */
#define LMQ_PROXY_LEASE_DEFAULT_MS 10000
LMQ_EXPORT int lmq_proxy_lock(lmq_proxy_t *p, const char *const *devices, size_t ndevices, int lease_ms);
/* Releases the devices named (NULL/0: every lock of this client). Devices
 * not locked by this client are left alone; locked by another: LMQ_ELOCKED. */
LMQ_EXPORT int lmq_proxy_unlock(lmq_proxy_t *p, const char *const *devices, size_t ndevices);
/* The name this proxy gives the daemon in every request (`client`): the
 * holder of its locks, shown by `labmq ls`, and the key of the daemon's
 * memory of its calls (retries, protocol 2.5). Default
 * "USER@HOST pid PID #XXXXXX", distinct for every proxy. Proxies of one
 * program may share a name (to share its locks); the name is not
 * authenticated. Borrowed. */
LMQ_EXPORT const char *lmq_proxy_client(const lmq_proxy_t *p);
LMQ_EXPORT int lmq_proxy_set_client(lmq_proxy_t *p, const char *name);

/* Why the last failed call failed ("device 'psu9' not found"). Borrowed,
 * valid until the next call on this proxy. */
LMQ_EXPORT const char *lmq_proxy_last_error(const lmq_proxy_t *p);

#ifdef __cplusplus
}
#endif
#endif
