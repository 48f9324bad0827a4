/* The supervisor's state as a jansson value, for the broker's `workers`
 * reply. Internal to liblabmq. */
#ifndef LMQ_SUPERVISE_INTERNAL_H
#define LMQ_SUPERVISE_INTERNAL_H

#include <jansson.h>
#include "labmq/supervise.h"

/* The JSON array of docs/protocol.md's `workers` result (an empty array for
 * s == NULL); NULL on allocation failure. New reference. */
json_t *lmq__supervisor_snapshot(lmq_supervisor_t *s);

/* The rule lmq_supervisor_add applies to names. */
#define LMQ__WORKER_NAME_RULE "1..63 letters, digits, _ - ."
bool lmq__worker_name_ok(const char *name);

/* Forgets a worker: while the supervisor runs, stops it first (SIGTERM to
 * its process group, SIGKILL after the grace period) and waits until it is
 * reaped, so a worker of the same name can be added right after (a reload's
 * changed worker). Call it from the thread that adds workers. 0 or
 * LMQ_ENOTFOUND. */
int lmq__supervisor_remove(lmq_supervisor_t *s, const char *name);

#endif
