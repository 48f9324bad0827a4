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

/* Waits up to timeout_ms (-1 forever) for pid; *status gets the waitpid status.
 * Returns 0, LMQ_ETIMEOUT, or LMQ_EARG. */
LMQ_EXPORT int lmq_spawn_wait(pid_t pid, int *status, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
