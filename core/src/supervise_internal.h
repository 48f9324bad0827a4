/* The supervisor's state as a jansson value, for the broker's `workers`
 * reply. Internal to liblabmq. */
#ifndef LMQ_SUPERVISE_INTERNAL_H
#define LMQ_SUPERVISE_INTERNAL_H

#include <jansson.h>
#include "labmq/supervise.h"

/* The JSON array of docs/protocol.md's `workers` result (an empty array for
 * s == NULL); NULL on allocation failure. New reference. */
json_t *lmq__supervisor_snapshot(lmq_supervisor_t *s);

#endif
