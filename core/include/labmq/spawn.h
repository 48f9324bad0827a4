/* labmq — spawning worker processes.
 *
 * Workers are started with posix_spawn, never fork: the child begins fresh
 * (no ZeroMQ context, no device handle) and receives only argv and the
 * environment; every descriptor but stdin, stdout and stderr is closed in the
 * child. Endpoints and proxy URIs travel in argv. */
#ifndef LABMQ_SPAWN_H
#define LABMQ_SPAWN_H

#include <sys/types.h>
#include "labmq/export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Starts argv[0] (searched in PATH when it has no '/'). Returns 0 and the
 * child's pid, or a negative status with errno preserved: LMQ_ENOTFOUND (no
 * such program), LMQ_EPERM (not executable), LMQ_EMEM, LMQ_ESYS (another
 * refusal of the system, e.g. too many processes), LMQ_EARG. */
LMQ_EXPORT int lmq_spawn(char *const argv[], pid_t *pid);

/* Starts argv[0] like lmq_spawn, with an explicit environment and in a
 * process group of its own (its pid is the group id), so that a stop can
 * signal the worker and whatever it started in one kill(-pid, sig).
 * envp: the child's whole environment (NULL-terminated; NULL: an empty one).
 * keep_fds[0..nkeep): descriptors the child keeps open under the same
 * numbers (their close-on-exec flag is cleared in the child only); every
 * other descriptor above stderr is closed. A program name without '/' is
 * searched in the PATH of the caller's environment, not of envp. Signal
 * dispositions are the defaults and the mask empty. Errors as lmq_spawn;
 * LMQ_EARG also for a keep_fds entry that is not an open descriptor >= 3. */
LMQ_EXPORT int lmq_spawn_ex(char *const argv[], char *const envp[], const int *keep_fds, size_t nkeep,
                            pid_t *pid);

/* Waits up to timeout_ms (-1 forever) for pid; *status gets the waitpid status.
 * Returns 0, LMQ_ETIMEOUT, or LMQ_EARG. */
LMQ_EXPORT int lmq_spawn_wait(pid_t pid, int *status, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
