/* labmq — the acquisition daemon as a library object.
 *
 * A daemon binds a control endpoint (ROUTER) and a data endpoint (XPUB), runs
 * a broker thread and one thread per device. A lab app can run one in-process
 * on inproc:// endpoints and use the same proxies and subscriptions as a remote
 * client; only the endpoint strings differ. The workers/labmqd program is a thin
 * main() around this object. */
#ifndef LABMQ_DAEMON_H
#define LABMQ_DAEMON_H

#include <stdbool.h>
#include "labmq/auth.h"
#include "labmq/driver.h"
#include "labmq/export.h"
#include "labmq/log.h"
#include "labmq/supervise.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lmq_daemon lmq_daemon_t;

/* zctx: a ZeroMQ context the caller owns and keeps alive until destroy.
 * log: borrowed, may be NULL. Endpoints are bound by lmq_daemon_start. */
LMQ_EXPORT lmq_daemon_t *lmq_daemon_new(void *zctx, const char *control_endpoint, const char *data_endpoint,
                                        lmq_log_t *log);

/* Declares a device before start. options: NULL-terminated list of
 * alternating names and values ({"load_ohms", "100", NULL}), checked against
 * the driver's option table. Returns 0 or LMQ_EARG / LMQ_ECONFIG with the
 * reason in lmq_daemon_last_error. */
LMQ_EXPORT int lmq_daemon_add(lmq_daemon_t *d, const char *name, const lmq_driver_t *driver,
                              const char *connection, const char *const *options);

/* After a lost link, write back the properties clients last set before the
 * device is READY again (an instrument that was power-cycled forgot them).
 * Before start. LMQ_ENOTFOUND for an unknown device. */
LMQ_EXPORT int lmq_daemon_set_restore(lmq_daemon_t *d, const char *device, bool restore);

/* Simulated instruments run time_scale times faster than real time (slew
 * ramps, exposures, conversions; stream rates stay real). 1 by default;
 * 0.001..1e6. Before start. LMQ_EARG outside. */
LMQ_EXPORT int lmq_daemon_set_time_scale(lmq_daemon_t *d, double time_scale);

/* The most a stream subscriber makes the daemon hold for it, in bytes
 * (docs/protocol.md 3.2): blocks queued or sent and not yet credited back for
 * a flow subscription; the data endpoint's per-subscriber high-water mark is
 * derived from it for plain SUB clients. 64 MiB by default; 1 KiB..1 TiB.
 * Before start; LMQ_EARG otherwise. */
LMQ_EXPORT int lmq_daemon_set_subscriber_memory(lmq_daemon_t *d, size_t bytes);

/* Declares a worker before start: a program the daemon starts once its
 * endpoints are bound, supervises (restart policy, back-off, crash budget:
 * labmq/supervise.h) and stops before it closes the devices. Its argv is the
 * standard worker argv (workers/README.md), then args:
 *   PROGRAM --control EP --data EP --name NAME ARGS...
 * with the endpoints as bound (wildcard ports resolved). program: a path, or
 * a name searched in PATH. args: NULL-terminated, may be NULL. envp: the
 * worker's whole environment, NULL-terminated; NULL: the daemon's own.
 * Returns 0, LMQ_EARG or LMQ_ECONFIG (a duplicate name), the reason in
 * lmq_daemon_last_error. */
LMQ_EXPORT int lmq_daemon_add_worker(lmq_daemon_t *d, const char *name, const char *program,
                                     const char *const *args, const char *const *envp, lmq_restart_t restart);

/* Security (docs/security.md), before start. With a server secret key
 * (Z85, from a key file: lmq_keypair_load) both endpoints are CURVE servers
 * and accept only the clients allowed with lmq_daemon_allow, each with a
 * role (labmq/auth.h); every other connection is refused and logged. Without
 * keys, lmq_daemon_start refuses a network (tcp://...) endpoint unless
 * lmq_daemon_set_insecure(d, true), and then logs a warning; ipc:// and
 * inproc:// endpoints are then served to every local process that can open
 * them. Return 0, or LMQ_EARG / LMQ_ECONFIG (a duplicate client name or key) /
 * LMQ_ESYS (no CURVE in this libzmq) with the reason in lmq_daemon_last_error.
 * One daemon with keys per ZeroMQ context: it runs the context's ZAP handler,
 * which refuses clients of any other socket there that sets a ZAP domain. */
LMQ_EXPORT int lmq_daemon_set_curve(lmq_daemon_t *d, const char *secret_z85);
/* name: who the client is in logs, replies and audit lines
 * (1 to 64 letters, digits, '_', '-', '.', '@'); public_z85: its public key. */
LMQ_EXPORT int lmq_daemon_allow(lmq_daemon_t *d, const char *name, const char *public_z85, lmq_role_t role);
LMQ_EXPORT void lmq_daemon_set_insecure(lmq_daemon_t *d, bool insecure);

/* How long lmq_daemon_stop waits for devices to close (default 5000 ms);
 * the same grace is given to workers between SIGTERM and SIGKILL. */
LMQ_EXPORT void lmq_daemon_set_stop_grace(lmq_daemon_t *d, int ms);

/* A ready device whose driver has been busy (a request, a stream poll, a
 * link check) for this long is shown as "fault" (list, describe, stats, and a
 * state change event) until the driver returns; 0 never marks one. Before
 * lmq_daemon_start only. The default, 3000 ms, marks a device hung under a
 * client's default call timeout (LMQ_PROXY_DEFAULT_TIMEOUT_MS, 2000) within
 * twice that timeout. */
#define LMQ_DAEMON_DEFAULT_FAULT_AFTER_MS 3000
LMQ_EXPORT void lmq_daemon_set_fault_after(lmq_daemon_t *d, int ms);

/* Binds the endpoints and starts the broker and one thread per device, then
 * returns: it does not wait for instruments to open (each device opens on
 * its own thread; requests to it wait until it has, and `list` shows it as
 * "opening"). A device whose open fails does not stop the daemon: it is
 * reported as disconnected and retried with back-off. Returns LMQ_EBUSY when
 * another daemon already serves the control endpoint, LMQ_ECONFIG for a
 * network endpoint without keys (see lmq_daemon_set_curve). */
LMQ_EXPORT int lmq_daemon_start(lmq_daemon_t *d);

/* Waits until every device is past its first open attempt (open or
 * disconnected, none "opening"), at most timeout_ms (-1: no limit). Returns
 * 0 or LMQ_ETIMEOUT (lmq_daemon_last_error names the devices still opening). */
LMQ_EXPORT int lmq_daemon_wait_ready(lmq_daemon_t *d, int timeout_ms);

/* Stops: first the workers (SIGTERM, SIGKILL after the grace period, all
 * reaped), then answers what was accepted (CLOSED for what the devices never got
 * to), closes the devices, joins the threads. A device stuck in its driver
 * beyond the grace period (a vendor call that never returns) is not waited
 * for: the result is LMQ_ETIMEOUT, lmq_daemon_last_error names it, and its
 * thread is left running with its memory and ZeroMQ socket -- the process
 * should then exit without zmq_ctx_term (which would wait for that socket).
 * Returns 0 otherwise. Idempotent. */
LMQ_EXPORT int lmq_daemon_stop(lmq_daemon_t *d);

/* Reloads a running daemon: *next is a daemon declared like the first one
 * (lmq_daemon_new with the same context and endpoints, then lmq_daemon_add,
 * lmq_daemon_add_worker, ... -- lmq_config_apply does it from a file) but
 * never started; declaring it has already checked every device (options,
 * the driver's configure). The difference is applied:
 *  - a device whose parsed configuration (driver, connection, option values,
 *    restore) is unchanged is not touched: same thread, handle, epoch,
 *    stream seq, queue and stats, no change event;
 *  - a removed device is stopped as at shutdown (what it had not run is
 *    answered CLOSED; a device stuck in its driver beyond the stop grace is
 *    abandoned and logged, and lmq_daemon_stop then returns LMQ_ETIMEOUT);
 *    requests naming it get NOTFOUND from then on;
 *  - an added device starts (opening, then ready);
 *  - a reconfigured device is stopped, then started anew with a new epoch
 *    once the old instance has closed; requests meanwhile queue for the new;
 *  - workers likewise: unchanged ones keep running, removed ones are
 *    stopped (this call waits for them, at most the stop grace), added and
 *    changed ones are (re)started;
 *  - the stop grace is taken over.
 * Refused with LMQ_ECONFIG, nothing changed, when the endpoints or the time
 * scale differ (they cannot change under running clients and devices);
 * lmq_daemon_last_error names the key. Call it from the thread that started
 * the daemon. *next is consumed (destroyed, set to NULL) in every case. The
 * outcome shows in `ping` and `stats` (docs/protocol.md: config). Returns 0,
 * LMQ_EARG (d not running), LMQ_ECONFIG, LMQ_EMEM or LMQ_ESYS. */
LMQ_EXPORT int lmq_daemon_reload(lmq_daemon_t *d, lmq_daemon_t **next);
/* Records (for `ping` and `stats`) and logs a reload refused before
 * lmq_daemon_reload could be called: a configuration that did not load.
 * why: the reason, copied. */
LMQ_EXPORT void lmq_daemon_reload_refused(lmq_daemon_t *d, const char *why);
/* Stops (lmq_daemon_stop) if still running, and frees. */
LMQ_EXPORT void lmq_daemon_destroy(lmq_daemon_t **d);

LMQ_EXPORT const char *lmq_daemon_last_error(const lmq_daemon_t *d);

/* Default endpoints: ipc:// under $XDG_RUNTIME_DIR/labmq/ or /tmp/labmq-$UID/.
 * Writes "ipc://DIR/control" / "ipc://DIR/data" into buf. When `create` is true the
 * directory is created with mode 0700 (and an existing one must be ours and
 * not group/world-accessible). Returns 0 or a negative status. */
LMQ_EXPORT int lmq_default_endpoint(char *buf, size_t size, const char *which, bool create);

#ifdef __cplusplus
}
#endif
#endif
