/* labmq — the worker runtime.
 *
 * A worker is a process labmqd starts and supervises (labmq/supervise.h,
 * the `workers:` config key). It is born with stdio only and learns
 * everything from its argv, the standard worker argv:
 *
 *   PROGRAM --control EP --data EP --name NAME [--device DEV]...
 *           [--stream DEV/STREAM]... [--option KEY=VALUE]... [--help]
 *
 * (each also as --key=value). labmqd passes --control, --data and --name;
 * the rest come from the worker's `args:` in the config. workers/README.md
 * is the contract for workers in any language: signals, exit codes, output.
 *
 * lmq_worker_new parses that argv, blocks SIGTERM and SIGINT so they arrive
 * through a descriptor (a signalfd) instead of interrupting anything, and
 * creates the process's ZeroMQ context. The worker is also asked to stop
 * (SIGTERM) when its parent dies, so a daemon killed outright leaves no
 * worker running. Call it first in main, before any
 * thread exists. A worker's loop then polls its sockets together with
 * lmq_worker_fd and ends when lmq_worker_stopping says so:
 *
 *   zmq_pollitem_t items[] = {{lmq_sub_socket(sub), 0, ZMQ_POLLIN, 0},
 *                             {NULL, lmq_worker_fd(w), ZMQ_POLLIN, 0}};
 *   while (!lmq_worker_stopping(w)) {
 *       zmq_poll(items, 2, -1);
 *       ...
 *   }
 *
 * One thread at a time per worker object. */
#ifndef LABMQ_WORKER_H
#define LABMQ_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include "labmq/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lmq_worker lmq_worker_t;

/* The exit statuses of the contract. A worker that exits LMQ_WORKER_EXIT_OK
 * is not restarted under `restart: on-failure`; any other status is a crash. */
enum {
    LMQ_WORKER_EXIT_OK = 0,      /* stopped on request (SIGTERM/SIGINT) or done */
    LMQ_WORKER_EXIT_FAILURE = 1, /* could not do its work */
    LMQ_WORKER_EXIT_USAGE = 2,   /* bad command line */
};

/* Parses argv (see above), installs the stop signals and creates the ZeroMQ
 * context. Returns the worker, or NULL with *exit_code set to what main
 * should return: LMQ_WORKER_EXIT_OK after --help (the usage is printed on
 * stdout), LMQ_WORKER_EXIT_USAGE for a bad command line (the reason on
 * stderr, naming the argument), LMQ_WORKER_EXIT_FAILURE when the system
 * refused (on stderr). about: what this worker does and the --option keys
 * it reads, shown by --help (may be NULL). Without --control/--data the
 * default endpoints are used (labmq --help); without --name, the program's
 * file name. A stream must be DEV/STREAM, an option KEY=VALUE. */
LMQ_EXPORT lmq_worker_t *lmq_worker_new(int argc, char *const argv[], const char *about, int *exit_code);

/* Frees the worker and terminates its ZeroMQ context: close every socket
 * made in it first. Accepts NULL; sets *w to NULL. */
LMQ_EXPORT void lmq_worker_destroy(lmq_worker_t **w);

/* The process's ZeroMQ context (borrowed, owned by the worker). */
LMQ_EXPORT void *lmq_worker_zctx(lmq_worker_t *w);

/* Borrowed strings, valid until destroy. */
LMQ_EXPORT const char *lmq_worker_name(const lmq_worker_t *w);
LMQ_EXPORT const char *lmq_worker_control(const lmq_worker_t *w);
LMQ_EXPORT const char *lmq_worker_data(const lmq_worker_t *w);
/* --device and --stream in command-line order; NULL past the end. */
LMQ_EXPORT size_t lmq_worker_device_count(const lmq_worker_t *w);
LMQ_EXPORT const char *lmq_worker_device(const lmq_worker_t *w, size_t i);
LMQ_EXPORT size_t lmq_worker_stream_count(const lmq_worker_t *w);
LMQ_EXPORT const char *lmq_worker_stream(const lmq_worker_t *w, size_t i);
/* The value of --option KEY=VALUE (the last one given for KEY), or NULL. */
LMQ_EXPORT const char *lmq_worker_option(const lmq_worker_t *w, const char *key);

/* True once SIGTERM or SIGINT has arrived (and from then on). Cheap: call
 * it in every loop iteration. */
LMQ_EXPORT bool lmq_worker_stopping(lmq_worker_t *w);
/* The signal that asked the worker to stop, or 0. */
LMQ_EXPORT int lmq_worker_stop_signal(const lmq_worker_t *w);
/* A descriptor that becomes readable when a stop signal arrives, for
 * zmq_poll ({NULL, fd, ZMQ_POLLIN, 0}) or poll(2). Do not read it: call
 * lmq_worker_stopping. */
LMQ_EXPORT int lmq_worker_fd(const lmq_worker_t *w);

#ifdef __cplusplus
}
#endif
#endif
