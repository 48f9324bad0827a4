/* labmq — supervised worker processes.
 *
 * A supervisor starts declared workers with lmq_spawn_ex (explicit argv and
 * environment, only stdio inherited, a process group of its own), watches
 * them on a thread of its own, and restarts those that end according to
 * their policy:
 *
 *  - back-off: a worker that ends is restarted after 100 ms, then 200 ms,
 *    400 ms, ... doubling up to 30 s; the delay starts again from 100 ms
 *    once a run has lasted 10 s;
 *  - crash budget: a worker that crashes (exits non-zero or is killed by a
 *    signal) 5 times within 60 s is marked FAILED and left alone; so is one
 *    whose program cannot be started at all (missing, not executable);
 *  - reaping: only the supervisor's own children, by pid (never
 *    waitpid(-1): the host program may have children of its own; it must
 *    not set SIGCHLD to SIG_IGN, which makes the kernel discard the exit
 *    statuses: a worker then counts as crashed, status 255). When a
 *    worker's main process ends, whatever it left in its process group is
 *    killed, so no grandchild outlives it as an orphan.
 *
 * lmq_supervisor_stop sends SIGTERM to every worker's process group, SIGKILL
 * to those still there after the grace period, and returns once all are
 * reaped. The supervisor's thread does all spawning, signalling and reaping;
 * the state functions may be called from any thread. */
#ifndef LABMQ_SUPERVISE_H
#define LABMQ_SUPERVISE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include "labmq/export.h"
#include "labmq/log.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lmq_supervisor lmq_supervisor_t;

typedef enum lmq_restart {
    LMQ_RESTART_ON_FAILURE = 0, /* restart after a crash, not after exit status 0 */
    LMQ_RESTART_ALWAYS,         /* restart whenever it ends (exit 0 included) */
    LMQ_RESTART_NEVER,          /* run once */
} lmq_restart_t;

typedef enum lmq_worker_state {
    LMQ_WORKER_STOPPED = 0, /* not started yet, or stopped by lmq_supervisor_stop */
    LMQ_WORKER_STARTING,    /* spawned less than 1 s ago */
    LMQ_WORKER_RUNNING,     /* up for 1 s or more */
    LMQ_WORKER_BACKOFF,     /* ended; a restart is scheduled */
    LMQ_WORKER_FAILED,      /* crash budget spent, or the program cannot be started */
    LMQ_WORKER_EXITED,      /* ended and its policy says not to restart it */
} lmq_worker_state_t;

/* A snapshot of one worker (lmq_supervisor_info). */
typedef struct lmq_worker_info {
    char name[64];
    lmq_worker_state_t state;
    pid_t pid;            /* 0 when not running */
    unsigned restarts;    /* times it was started again after ending */
    double uptime_s;      /* of the current run; 0 when not running */
    bool has_exited;      /* it ended at least once: the last_* fields are valid */
    int last_exit_code;   /* exit status of the last end, or -1 when killed by a signal */
    int last_exit_signal; /* the signal that killed it the last time, or 0 */
    char error[256];      /* why it FAILED ("" otherwise) */
} lmq_worker_info_t;

/* log: borrowed, may be NULL (worker starts, ends and restarts are logged). */
LMQ_EXPORT lmq_supervisor_t *lmq_supervisor_new(lmq_log_t *log);
/* Stops (lmq_supervisor_stop) if running, and frees. */
LMQ_EXPORT void lmq_supervisor_destroy(lmq_supervisor_t **s);

/* Declares a worker, before start or while running (then the supervisor
 * thread starts it at once; labmqd does so on a reload). name: 1..63 of letters, digits, _ - .,
 * unique. argv (argv[0] the program, searched in PATH when it has no '/') and
 * envp (NULL: an empty environment) are copied. Returns 0, LMQ_EARG (the
 * reason in lmq_supervisor_last_error) or LMQ_EMEM. */
LMQ_EXPORT int lmq_supervisor_add(lmq_supervisor_t *s, const char *name, char *const argv[], char *const envp[],
                                  lmq_restart_t restart);

/* How long lmq_supervisor_stop waits after SIGTERM before SIGKILL (default
 * 5000 ms). */
LMQ_EXPORT void lmq_supervisor_set_stop_grace(lmq_supervisor_t *s, int ms);

/* Starts the supervising thread, which starts every worker. Returns 0,
 * LMQ_EARG (already started) or LMQ_ESYS. A worker whose program cannot be
 * started does not fail this call: it is FAILED, with the reason. */
LMQ_EXPORT int lmq_supervisor_start(lmq_supervisor_t *s);

/* Stops every worker (SIGTERM to its process group, SIGKILL after the grace
 * period), reaps them, and joins the thread. Idempotent; returns 0. */
LMQ_EXPORT int lmq_supervisor_stop(lmq_supervisor_t *s);

/* The number of workers declared (call it from the thread that adds them). */
LMQ_EXPORT size_t lmq_supervisor_count(const lmq_supervisor_t *s);
/* Snapshot of worker i (in declaration order). 0 or LMQ_EARG. */
LMQ_EXPORT int lmq_supervisor_info(lmq_supervisor_t *s, size_t i, lmq_worker_info_t *info);
/* All workers as the JSON array the `workers` op answers (docs/protocol.md);
 * caller frees. NULL on allocation failure. */
LMQ_EXPORT char *lmq_supervisor_json(lmq_supervisor_t *s);

/* "running", "backoff", ... (static storage). */
LMQ_EXPORT const char *lmq_worker_state_name(lmq_worker_state_t state);
/* "always", "on-failure", "never"; and back (-1 for anything else). */
LMQ_EXPORT const char *lmq_restart_name(lmq_restart_t restart);
LMQ_EXPORT int lmq_restart_parse(const char *text);

LMQ_EXPORT const char *lmq_supervisor_last_error(const lmq_supervisor_t *s);

#ifdef __cplusplus
}
#endif
#endif
