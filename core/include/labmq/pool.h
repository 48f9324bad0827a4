/* labmq — a pool of persistent worker processes for many small tasks.
 *
 * lmq_pool_new spawns N workers (lmq_spawn_ex: never fork; each in a
 * process group of its own) with the standard worker argv
 *
 *   PROGRAM --control ipc://DIR/pool --name pool-SLOT.GEN --option pool=PID
 *           [worker_args...]
 *
 * where DIR is a private (0700) temp directory and PID the pool's process
 * (a worker whose parent is no longer PID when it starts exits at once). The pool binds a ROUTER
 * there; each worker connects a DEALER whose routing id is its --name, says
 * READY with its credit K (how many tasks it may hold at once: --option
 * credit=K, default 2) and then gets at most K tasks in flight, so a slow
 * worker is never flooded and a fast one is never idle for long. Tasks
 * travel in batches of up to K/2 per message (an idle worker gets a task at
 * once; a busy one, while the caller is still submitting, full batches), and
 * their results come back the same way: for tiny tasks give the workers a
 * larger credit (32 or more) so that messages, not tasks, are what is paid for.
 *
 * Every task is tracked until its result arrives. A worker that dies (its
 * pidfd tells; it is reaped at once) has its tasks given to the others and
 * is started again (at once if it had done work or ran for a second, else
 * after a back-off from 100 ms doubling to 5 s). Which of its tasks killed
 * it is not known (a result sent just before a crash dies with the process),
 * so each task in flight on it counts an attempt and is then run alone on a
 * worker that gets nothing else meanwhile: a second death names the
 * culprit. A task in flight on max_attempts workers that died (default 3:
 * a poison task) is reported failed instead. A result is accepted only from the worker the
 * task is currently assigned to, so each task's outcome is delivered
 * exactly once: a late answer from a worker taken for dead, or a second
 * answer to a task resubmitted elsewhere, is dropped.
 *
 * The pool has no thread of its own: its work (dispatch, results, worker
 * deaths and restarts) is done inside lmq_pool_submit and lmq_pool_result.
 * One thread at a time per pool, and best always the same one: a worker is
 * asked to stop (PR_SET_PDEATHSIG) when the thread that spawned it ends,
 * and a worker is (re)spawned by whichever thread calls in; the pool's socket lives in the caller's
 * ZeroMQ context, so destroy the pool before terminating the context.
 *
 * A worker program is a handler run by lmq_pool_worker_run (see below); the
 * wire protocol between pool and worker is internal to this module. */
#ifndef LABMQ_POOL_H
#define LABMQ_POOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "labmq/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lmq_pool lmq_pool_t;

/* Spawns nworkers (1..256) workers of worker_program (a path, or a name
 * looked up in PATH) with the caller's environment and worker_args
 * (NULL-terminated, may be NULL) after the standard argv, and returns once
 * every worker is ready (has connected and asked for work; up to 10 s).
 * Returns the pool, or NULL with errno: EINVAL (a bad argument), ENOENT or
 * EACCES (the program cannot be started), ECHILD (a worker exited before it
 * was ready: e.g. it refused its command line, see its stderr), ETIMEDOUT
 * (a worker did not become ready in time), ENOMEM, or the system's error. */
LMQ_EXPORT lmq_pool_t *lmq_pool_new(void *zctx, const char *worker_program, char *const worker_args[], int nworkers);

/* Stops the workers (asks each to stop, then SIGTERM to its process group,
 * then SIGKILL after the stop grace), reaps every one, closes the socket and
 * removes the temp directory. Pending tasks and undelivered results are
 * dropped. Accepts NULL; sets *p to NULL. */
LMQ_EXPORT void lmq_pool_destroy(lmq_pool_t **p);

/* Queues a copy of task[0..len) (len may be 0) and dispatches what it can
 * without waiting. *task_id (may be NULL) gets the task's id: 1, 2, 3, ...
 * in submission order. Returns 0, LMQ_EARG, LMQ_EMEM. */
LMQ_EXPORT int lmq_pool_submit(lmq_pool_t *p, const void *task, size_t len, uint64_t *task_id);

/* Waits up to timeout_ms (-1: forever, 0: just look) for the next finished
 * task, in completion order, and delivers it, once:
 *  - 0: the handler's result; *result (caller frees with free(); NULL when
 *    *len is 0) and *len;
 *  - LMQ_EDEVICE: the handler reported a failure for *task_id (its text in
 *    lmq_pool_last_error); *result NULL, *len 0;
 *  - LMQ_EIO: max_attempts workers died while the task was in flight on
 *    them, so it is given up (lmq_pool_last_error says how the
 *    last one ended); *result NULL, *len 0;
 *  - LMQ_ETIMEOUT: nothing finished in time; LMQ_ENOTFOUND: no task is
 *    pending (every submitted task was delivered); LMQ_EARG.
 * result and len may be NULL when the result is not wanted (it is freed). */
LMQ_EXPORT int lmq_pool_result(lmq_pool_t *p, uint64_t *task_id, void **result, size_t *len, int timeout_ms);

/* Tasks submitted and not yet delivered by lmq_pool_result. */
LMQ_EXPORT size_t lmq_pool_pending(const lmq_pool_t *p);

/* How many workers may die while a task is in flight on them before it is
 * given up (>= 1; default 3; with 1, the tasks that shared a worker with a
 * poison task fail with it). Returns 0 or LMQ_EARG. */
LMQ_EXPORT int lmq_pool_set_max_attempts(lmq_pool_t *p, unsigned attempts);
/* How long destroy waits after SIGTERM before SIGKILL (default 2000 ms). */
LMQ_EXPORT void lmq_pool_set_stop_grace(lmq_pool_t *p, int ms);

/* The number of workers, and the pid of worker i (0 while it is down);
 * for tests and monitoring. */
LMQ_EXPORT int lmq_pool_size(const lmq_pool_t *p);
LMQ_EXPORT pid_t lmq_pool_worker_pid(const lmq_pool_t *p, int i);
/* Times workers were started again after dying. */
LMQ_EXPORT unsigned lmq_pool_restarts(const lmq_pool_t *p);

/* The reason for the last failure (borrowed, "" when none). */
LMQ_EXPORT const char *lmq_pool_last_error(const lmq_pool_t *p);

/* A task handler: task[0..len) is borrowed for the call and not necessarily
 * aligned (memcpy multi-byte values out of it). Returns 0 with
 * *result (malloc'ed, taken by the runtime; may stay NULL) and *rlen; or
 * non-zero for a failure, optionally with a text in *result and *rlen (also
 * malloc'ed, taken) that the pool reports as the task's error. A handler
 * that crashes takes the worker down: the pool retries the task elsewhere
 * up to max_attempts times. */
typedef int (*lmq_pool_handler_fn)(void *user, const void *task, size_t len, void **result, size_t *rlen);

/* The whole main of a pool worker: parses the standard worker argv
 * (lmq_worker_new; --option credit=K, 1..1024, default 2), connects to the
 * pool and runs handler on each task until the pool asks it to stop or
 * SIGTERM/SIGINT arrives. Returns the exit status for main:
 * LMQ_WORKER_EXIT_OK, _USAGE (explained on stderr) or _FAILURE. */
LMQ_EXPORT int lmq_pool_worker_run(int argc, char *const argv[], lmq_pool_handler_fn handler, void *user);

#ifdef __cplusplus
}
#endif
#endif
