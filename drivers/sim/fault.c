/* labmq — the fault knob shared by the simulated instruments. See fault.h. */
#include "fault.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "labmq/status.h"
#include "labmq/value.h"
#include "sim.h"

/* Longest delay or timed hang accepted, so a typo cannot wedge a device for days. */
#define MAX_MS 3600000
#define ACCEPTED                                                                                                       \
    "none, delay:MS, hang, hang:MS, error, disconnect or disconnect:MS (MS: integer milliseconds, 0..3600000)"
#define DEFAULT_UNPLUG_MS 1000

static int parse_ms(const char *text, int64_t *ms)
{
    /* strtoll alone accepts signs, spaces and trailing junk; a knob that
     * silently reads "delay:5x" as 5 ms would hide typos in test setups. */
    if (*text < '0' || *text > '9')
        return -1;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    if (errno || *end != '\0' || v > MAX_MS)
        return -1;
    *ms = v;
    return 0;
}

/* Parses fault text into *f (unchanged on failure); 0 or LMQ_EARG with the reason. */
static int parse_fault(lmq_dev_t *dev, const char *text, lmq__fault_t *f)
{
    lmq__fault_t nf = {LMQ__FAULT_NONE, 0};
    if (!text)
        text = "";
    if (strcmp(text, "none") == 0) {
        nf.kind = LMQ__FAULT_NONE;
    } else if (strcmp(text, "error") == 0) {
        nf.kind = LMQ__FAULT_ERROR;
    } else if (strcmp(text, "disconnect") == 0) {
        nf.kind = LMQ__FAULT_DISCONNECT;
        nf.ms = DEFAULT_UNPLUG_MS;
    } else if (strncmp(text, "disconnect:", 11) == 0 && parse_ms(text + 11, &nf.ms) == 0) {
        nf.kind = LMQ__FAULT_DISCONNECT;
    } else if (strcmp(text, "hang") == 0) {
        nf.kind = LMQ__FAULT_HANG;
        nf.ms = -1;
    } else if (strncmp(text, "hang:", 5) == 0 && parse_ms(text + 5, &nf.ms) == 0) {
        nf.kind = LMQ__FAULT_HANG;
    } else if (strncmp(text, "delay:", 6) == 0 && parse_ms(text + 6, &nf.ms) == 0) {
        nf.kind = LMQ__FAULT_DELAY;
    } else {
        return lmq_dev_fail(dev, LMQ_EARG, "invalid fault '%.64s': expected " ACCEPTED, text);
    }
    *f = nf;
    return 0;
}

/* Canonical text of a fault; always NUL-terminates. */
static void format_fault(const lmq__fault_t *f, char *buf, size_t size)
{
    switch (f->kind) {
    case LMQ__FAULT_DELAY:
        snprintf(buf, size, "delay:%lld", (long long)f->ms);
        break;
    case LMQ__FAULT_HANG:
        if (f->ms < 0)
            snprintf(buf, size, "hang");
        else
            snprintf(buf, size, "hang:%lld", (long long)f->ms);
        break;
    case LMQ__FAULT_ERROR:
        snprintf(buf, size, "error");
        break;
    case LMQ__FAULT_DISCONNECT:
        snprintf(buf, size, "disconnect:%lld", (long long)f->ms);
        break;
    default:
        snprintf(buf, size, "none");
        break;
    }
}

int lmq__fault_before(lmq_dev_t *dev, void *state, const char *name)
{
    const lmq__fault_t *f = state;
    /* The knob itself must always answer, or a fault could never be cleared. */
    if (name && strcmp(name, LMQ__FAULT_PROPERTY_NAME) == 0)
        return 0;
    switch (f->kind) {
    case LMQ__FAULT_DELAY:
        return lmq_dev_sleep(dev, f->ms * 1000000);
    case LMQ__FAULT_HANG:
        if (f->ms >= 0) {
            int rc = lmq_dev_sleep(dev, f->ms * 1000000);
            if (rc)
                return rc;
            return lmq_dev_fail(dev, LMQ_ETIMEOUT, "no answer from the instrument within %lld ms (simulated hang)",
                                (long long)f->ms);
        }
        /* Sleep in slices rather than one huge interval: the daemon's deadline
         * arithmetic need not survive INT64_MAX. */
        while (!lmq_dev_stopping(dev)) {
            if (lmq_dev_sleep(dev, 1000000000) != 0)
                break;
        }
        return lmq_dev_fail(dev, LMQ_ECLOSED, "instrument hung (simulated) until shutdown");
    case LMQ__FAULT_ERROR:
        return lmq_dev_fail(dev, LMQ_EDEVICE, "simulated instrument error");
    case LMQ__FAULT_DISCONNECT:
        return lmq_dev_fail(dev, LMQ_EIO, "device disconnected (simulated)");
    default:
        return 0;
    }
}

/* The plug lives in the daemon's wires, not in the driver's state: it must
 * outlast the close and the reopen attempts. The value is the CLOCK_MONOTONIC
 * time in ms when the instrument is plugged in again. */
static int plug_wire(lmq_dev_t *dev, char buf[LMQ__SIM_WIRE_LEN])
{
    return lmq__sim_wire_name(dev, buf, "$unplugged_until_ms");
}

static double unplugged_ms_left(lmq_dev_t *dev)
{
    char wire[LMQ__SIM_WIRE_LEN];
    double until;
    if (plug_wire(dev, wire) != 0 || lmq_dev_wire_get(dev, wire, &until) != 0)
        return 0;
    double left = until - (double)lmq_clock_mono_ns() / 1e6;
    return left > 0 ? left : 0;
}

int lmq__fault_check(lmq_dev_t *dev, void *state)
{
    const lmq__fault_t *f = state;
    if (f->kind == LMQ__FAULT_DISCONNECT)
        return lmq_dev_fail(dev, LMQ_EIO, "device disconnected (simulated)");
    return 0;
}

int lmq__fault_plugged(lmq_dev_t *dev)
{
    double left = unplugged_ms_left(dev);
    if (left > 0)
        return lmq_dev_fail(dev, LMQ_EIO, "unplugged (simulated fault), back in %.0f ms", left);
    return 0;
}

int lmq__fault_get(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    char buf[32];
    format_fault(state, buf, sizeof buf);
    return lmq_value_set_string(out, buf);
}

int lmq__fault_set(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    if (in->type != LMQ_STRING)
        return lmq_dev_fail(dev, LMQ_EARG, "fault must be a string: " ACCEPTED);
    int rc = parse_fault(dev, in->u.s, state);
    const lmq__fault_t *f = state;
    if (rc == 0 && f->kind == LMQ__FAULT_DISCONNECT) {
        char wire[LMQ__SIM_WIRE_LEN];
        rc = plug_wire(dev, wire);
        if (rc == 0)
            rc = lmq_dev_wire_set(dev, wire, (double)lmq_clock_mono_ns() / 1e6 + (double)f->ms);
    }
    return rc;
}
