/* labmq — simulated instruments (internal).
 *
 * The three drivers below are referenced by the built-in driver registry. The
 * helpers give each simulated device its own deterministic noise source: the
 * generator lives in the device's state, so two devices never share mutable
 * state and a run with the same names and seeds reproduces the same readings.
 * Wire names ("<device>.<signal>") are made in one place too. */
#ifndef LABMQ_SIM_H
#define LABMQ_SIM_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include "labmq/driver.h"
#include "labmq/status.h"

extern const lmq_driver_t lmq__sim_psu, lmq__sim_daq, lmq__sim_camera;

typedef struct lmq__sim_rng {
    uint64_t s;
} lmq__sim_rng_t;

/* Seeds from the device name and a user seed, so devices differ from each
 * other but a given lab setup is reproducible. */
static inline void lmq__sim_rng_seed(lmq__sim_rng_t *r, const char *name, int64_t seed)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)name; p && *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    h ^= (uint64_t)seed * 0x9E3779B97F4A7C15ull;
    r->s = h ? h : 0x2545F4914F6CDD1Dull; /* xorshift has a fixed point at 0 */
}

/* xorshift64*: fast enough to fill megapixel frames per call. */
static inline uint64_t lmq__sim_rand(lmq__sim_rng_t *r)
{
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [0, 1). */
static inline double lmq__sim_uniform(lmq__sim_rng_t *r)
{
    return (double)(lmq__sim_rand(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Standard normal (Box-Muller; the second value is dropped to keep the
 * state a single word). */
static inline double lmq__sim_gauss(lmq__sim_rng_t *r)
{
    double u1 = lmq__sim_uniform(r), u2 = lmq__sim_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Longest wire name a simulated device reads or drives, with its NUL. */
#define LMQ__SIM_WIRE_LEN 128

/* Writes this device's wire "<device>.<signal>" into buf (LMQ__SIM_WIRE_LEN
 * bytes). Returns 0, or LMQ_ECONFIG through lmq_dev_fail when the name does
 * not fit: a cut name could make two wires one. Call from open(). */
static inline int lmq__sim_wire_name(lmq_dev_t *dev, char *buf, const char *signal)
{
    int n = snprintf(buf, LMQ__SIM_WIRE_LEN, "%s.%s", lmq_dev_name(dev), signal);
    if (n < 0 || n >= LMQ__SIM_WIRE_LEN)
        return lmq_dev_fail(dev, LMQ_ECONFIG, "device name '%.40s...' too long for wire names", lmq_dev_name(dev));
    return 0;
}

#endif
