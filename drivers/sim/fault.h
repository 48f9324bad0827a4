/* labmq — the fault knob shared by the simulated instruments (internal).
 *
 * Every simulated device has a read-write string property `fault` that makes
 * it misbehave the way real instruments do, so clients, the daemon and tests
 * can exercise their error paths without hardware:
 *
 *   none        normal operation
 *   delay:MS    every request takes MS ms longer, then succeeds
 *   hang        every request blocks until the daemon shuts down
 *   hang:MS     every request blocks MS ms, then fails with LMQ_ETIMEOUT
 *   error       every request fails with LMQ_EDEVICE
 *   disconnect[:MS]  the instrument is unplugged for MS ms (default 1000): the
 *               daemon sees the link go (DISCONNECTED), reopen attempts fail
 *               until MS has passed, then the device comes back as after a
 *               power cycle (settings lost, unless the config restores them)
 *
 * Requests to a device are served one at a time, so while a request hangs the
 * device also cannot take `fault=none`: a queued clear takes effect after
 * hang:MS expires; a plain `hang` lasts until shutdown, like a wedged
 * instrument that needs a power cycle.
 *
 * Convention: a simulated device's state struct begins with an lmq__fault_t,
 * so the shared property callbacks and before hook below work on any of them. */
#ifndef LABMQ_SIM_FAULT_H
#define LABMQ_SIM_FAULT_H

#include <stdbool.h>
#include <stdint.h>
#include "labmq/driver.h"

typedef enum lmq__fault_kind {
    LMQ__FAULT_NONE = 0,
    LMQ__FAULT_DELAY,
    LMQ__FAULT_HANG,
    LMQ__FAULT_ERROR,
    LMQ__FAULT_DISCONNECT
} lmq__fault_kind_t;

typedef struct lmq__fault {
    lmq__fault_kind_t kind;
    int64_t ms; /* delay / hang duration; -1 = hang until shutdown */
} lmq__fault_t;

/* Applies the fault to the request `name`; 0 = go on with it. Usable as a
 * driver's `before` hook when the state begins with an lmq__fault_t. */
int lmq__fault_before(lmq_dev_t *dev, void *state, const char *name);
/* Property callbacks for `fault` (state begins with an lmq__fault_t): get
 * answers the canonical text ("none", "delay:250", "hang"); set leaves the
 * fault unchanged on invalid text. */
int lmq__fault_get(lmq_dev_t *dev, void *state, lmq_value_t *out);
int lmq__fault_set(lmq_dev_t *dev, void *state, const lmq_value_t *in);

/* Driver `check` hook: LMQ_EIO once the instrument was unplugged. */
int lmq__fault_check(lmq_dev_t *dev, void *state);
/* For open(): LMQ_EIO (with the time left) while the instrument is unplugged. */
int lmq__fault_plugged(lmq_dev_t *dev);

/* True while stream polls must not publish (the instrument is "unplugged"). */
static inline bool lmq__fault_streams_down(const void *state)
{
    return ((const lmq__fault_t *)state)->kind == LMQ__FAULT_DISCONNECT;
}

#define LMQ__FAULT_PROPERTY_NAME "fault"
#define LMQ__FAULT_PROPERTY                                                                                            \
    {                                                                                                                  \
        .name = LMQ__FAULT_PROPERTY_NAME,                                                                              \
        .doc = "simulated fault: none, delay:MS, hang, hang:MS, error, disconnect or disconnect:MS",                   \
        .type = LMQ_STRING, .unit = "", .get = lmq__fault_get, .set = lmq__fault_set, .transient = true                \
    }

#endif
