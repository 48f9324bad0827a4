/* labmq — the device model, as a driver sees it.
 *
 * A driver is a `static const lmq_driver_t` with designated initialisers. Its
 * method, property, stream and option tables make every device self-describing:
 * `describe`, argument checking and the CLI are generated from them.
 *
 * Threading: every device runs on a thread of its own inside the daemon; that
 * thread alone calls the driver's functions for that device, so drivers need no
 * locks. A slow driver delays only its own device.
 *
 * Tables end with an entry whose name is NULL. */
#ifndef LABMQ_DRIVER_H
#define LABMQ_DRIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "labmq/export.h"
#include "labmq/log.h"
#include "labmq/transport.h"
#include "labmq/value.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The running device, handed to every driver callback. Borrowed. */
typedef struct lmq_dev lmq_dev_t;

typedef struct lmq_arg {
    const char *name;
    lmq_type_t type; /* an LMQ_INT argument is accepted for LMQ_FLOAT */
    const char *unit; /* "V", "A", "" */
    const char *doc;
    bool limited; /* when true, numeric values outside [min, max] get LMQ_ERANGE before the driver runs */
    double min, max;
} lmq_arg_t;

/* args are already checked against the table (count, type, limits);
 * set *result (left LMQ_NONE for no result). Return 0 or a negative status,
 * preferably via lmq_dev_fail() so the caller learns why. */
typedef int (*lmq_method_fn)(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result);

typedef struct lmq_method {
    const char *name;
    const char *doc;        /* one line */
    const lmq_arg_t *args;  /* NULL-name terminated; NULL = no arguments */
    lmq_type_t ret;         /* LMQ_NONE = returns nothing */
    const char *ret_unit;
    lmq_method_fn fn;
    lmq_dtype_t ret_dtype;  /* for ret == LMQ_ARRAY: element type (describe shows it) */
    unsigned ret_ndim;      /* for ret == LMQ_ARRAY: dimensions; 0 = varies */
    const void *user;       /* for the handler: lmq_dev_user() while it runs */
} lmq_method_t;

typedef struct lmq_property {
    const char *name;
    const char *doc;
    lmq_type_t type;
    const char *unit;
    bool limited; /* when true, numeric writes outside [min, max] get LMQ_ERANGE */
    double min, max;
    int (*get)(lmq_dev_t *dev, void *state, lmq_value_t *out);
    int (*set)(lmq_dev_t *dev, void *state, const lmq_value_t *in); /* NULL = read-only */
    const void *user; /* for get/set: lmq_dev_user() while they run */
    bool transient;   /* never written back by a restore (a trigger, a fault knob) */
} lmq_property_t;

typedef struct lmq_stream {
    const char *name;
    const char *doc;
    lmq_dtype_t dtype;
    const char *unit;
    /* Called on the device thread when a block is due (see lmq_dev_stream_rate);
     * publishes with lmq_dev_publish. now_ns is CLOCK_MONOTONIC. */
    int (*poll)(lmq_dev_t *dev, void *state, int64_t now_ns);
    const void *user; /* for poll: lmq_dev_user() while it runs */
} lmq_stream_t;

/* Configuration options a driver accepts (the `options:` of a device in the
 * YAML config). Values are checked against `type` before open(). */
typedef struct lmq_option {
    const char *name;
    lmq_type_t type; /* LMQ_BOOL, LMQ_INT, LMQ_FLOAT or LMQ_STRING */
    const char *def; /* default as text; NULL = required */
    const char *doc;
    bool path; /* LMQ_STRING naming a file: the config resolves it against its own directory */
} lmq_option_t;

/* A device's own tables, built by a driver's configure() from the device's
 * options (the scpi driver declares its commands in a file named by an
 * option; sim-daq has as many inputs as configured). Each table ends with an
 * entry whose name is NULL. `release` frees them all (and `user`) when the
 * device is destroyed. */
typedef struct lmq_tables {
    const lmq_method_t *methods;
    const lmq_property_t *properties;
    const lmq_stream_t *streams;
    void *user;
    void (*release)(struct lmq_tables *tables);
} lmq_tables_t;

typedef struct lmq_driver {
    const char *name;        /* "sim-psu" */
    const char *description; /* one line */
    const lmq_option_t *options;
    /* Opens the instrument (on the device thread). Set *state. Return 0 or a
     * negative status with lmq_dev_fail(); the daemon keeps running, reports
     * the device as not open and retries with back-off. The daemon does not
     * wait for open(): requests to the device wait until it has returned.
     *
     * A link lost later (unplugged, hung up): return LMQ_EIO from any
     * handler or poll. The daemon then closes the device (state
     * DISCONNECTED), reopens it with back-off, and, when the config asks for
     * it, writes back the properties clients last set before the device is
     * READY again. */
    int (*open)(lmq_dev_t *dev, void **state);
    void (*close)(lmq_dev_t *dev, void *state);
    /* Optional: runs before every call/get/set with its method or property
     * name; a non-zero return fails that request. Simulated devices hang their
     * fault knob here; a real driver can check its link. */
    int (*before)(lmq_dev_t *dev, void *state, const char *name);
    const lmq_method_t *methods;
    const lmq_property_t *properties;
    const lmq_stream_t *streams;
    /* Optional: a cheap link check (no I/O that can block), run about every
     * 250 ms while the device is idle, so a lost link is noticed without a
     * request: return LMQ_EIO (lmq_transport_check does the work for
     * transports). */
    int (*check)(lmq_dev_t *dev, void *state);
    /* Optional: runs once when the device is declared (lmq_daemon_add, on the
     * caller's thread, before any open: no I/O here). It may fill *tables
     * with this device's own methods, properties and streams, which then
     * replace the static ones above for this device; options are readable
     * (lmq_dev_opt_*). Return 0, or a negative status with lmq_dev_fail():
     * the message becomes the configuration error. */
    int (*configure)(lmq_dev_t *dev, lmq_tables_t *tables);
    /* Optional (driver ABI 3): puts the instrument in a state that is safe
     * to leave unattended (a supply's output off, a heater at zero). Runs on
     * the device thread, while the device is open, when a client's lock on
     * it expires (its holder stopped renewing it or disconnected: protocol
     * 2.6), after the requests already queued. Return 0, 1 when this device
     * has nothing to do (a driver whose configuration declares no safe
     * state), or a negative status with lmq_dev_fail(): the failure is
     * logged and announced. */
    int (*safe_state)(lmq_dev_t *dev, void *state);
} lmq_driver_t;

/* Out-of-tree drivers: a shared object, built against the installed labmq
 * (find_package(labmq) or pkg-config), whose source ends with
 *     LMQ_DRIVER_EXPORT(my_driver)
 * and which a config names by path: `driver: ./libmydriver.so` (relative to
 * the config file). The ABI number is compared when it is loaded: a driver
 * built for another ABI is refused and must be rebuilt. ABI 3 appended
 * `safe_state` to lmq_driver_t (its source needs no change). */
#define LMQ_DRIVER_ABI 3
#define LMQ_DRIVER_ENTRY "lmq_driver_entry"
#define LMQ_DRIVER_ABI_SYMBOL "lmq_driver_abi"
#define LMQ_DRIVER_EXPORT(drv)                                                                                   \
    __attribute__((visibility("default"))) int lmq_driver_abi(void);                                            \
    __attribute__((visibility("default"))) const lmq_driver_t *lmq_driver_entry(void);                          \
    int lmq_driver_abi(void) { return LMQ_DRIVER_ABI; }                                                         \
    const lmq_driver_t *lmq_driver_entry(void) { return &(drv); }

/* ---- services the daemon gives drivers (device thread only) ---- */

LMQ_EXPORT const char *lmq_dev_name(const lmq_dev_t *dev);
/* Connection string from the config ("serial:/dev/ttyUSB0?baud=9600"); "" when none. */
LMQ_EXPORT const char *lmq_dev_connection(const lmq_dev_t *dev);
LMQ_EXPORT lmq_log_t *lmq_dev_log(const lmq_dev_t *dev);

/* Option values, already validated and defaulted. Unknown names are a driver
 * bug (assert). */
LMQ_EXPORT double lmq_dev_opt_float(const lmq_dev_t *dev, const char *name);
LMQ_EXPORT int64_t lmq_dev_opt_int(const lmq_dev_t *dev, const char *name);
LMQ_EXPORT bool lmq_dev_opt_bool(const lmq_dev_t *dev, const char *name);
LMQ_EXPORT const char *lmq_dev_opt_str(const lmq_dev_t *dev, const char *name);

/* The `user` pointer of the method, property or stream entry being served
 * (NULL outside a handler). Lets one handler serve many table entries. */
LMQ_EXPORT const void *lmq_dev_user(const lmq_dev_t *dev);

/* The `user` of the tables this device's configure() built (NULL when it
 * built none): what open() and close() need from the configuration (the scpi
 * driver's parsed description). */
LMQ_EXPORT void *lmq_dev_tables_user(const lmq_dev_t *dev);

/* Opens the transport named by this device's connection string (transport.h)
 * with the device's log and name, and its stop flag as the cancel flag, so
 * no wait outlives a shutdown. 0 or a negative status with lmq_dev_fail()
 * already set from the transport's reason. */
LMQ_EXPORT int lmq_dev_transport_open(lmq_dev_t *dev, lmq_transport_t **t, int open_timeout_ms);

/* Records why the current request failed and returns `status`, so a handler
 * can write `return lmq_dev_fail(dev, LMQ_ERANGE, "%.3f V exceeds ...", v);` */
LMQ_EXPORT int lmq_dev_fail(lmq_dev_t *dev, int status, const char *fmt, ...) LMQ_PRINTF(3, 4);

/* Sleeps up to ns nanoseconds; returns LMQ_ECLOSED early when the device is
 * being stopped, else 0. Use it for every long wait so shutdown stays prompt. */
LMQ_EXPORT int lmq_dev_sleep(lmq_dev_t *dev, int64_t ns);
LMQ_EXPORT bool lmq_dev_stopping(const lmq_dev_t *dev);

/* Sets how often stream `index` is polled (0 = paused), and its block shape. */
LMQ_EXPORT int lmq_dev_stream_rate(lmq_dev_t *dev, size_t index, double hz);
LMQ_EXPORT int lmq_dev_stream_shape(lmq_dev_t *dev, size_t index, unsigned ndim, const size_t *shape);

/* Narrows a limited property's [min, max] for this device (e.g. to the
 * max_voltage option of this unit), within the table's limits. describe shows
 * these limits and writes outside them get LMQ_ERANGE before the setter runs.
 * Call from open() or any callback. LMQ_ENOTFOUND / LMQ_EARG on misuse. */
LMQ_EXPORT int lmq_dev_property_limits(lmq_dev_t *dev, const char *property, double min, double max);

/* Announces that a property changed by itself (a mode the instrument
 * switched, a reading crossing a limit), as a change event to every
 * subscriber (protocol 3.1, cause "driver"). A client's successful set, a
 * restore and state changes are announced by the daemon already. */
LMQ_EXPORT int lmq_dev_notify(lmq_dev_t *dev, const char *property, const lmq_value_t *value);

/* Whether anybody subscribes to stream `index` now. A block published
 * while nobody does is dropped at once (no seq spent), so a driver with
 * costly blocks (a rendered frame) can check this and skip the work. */
LMQ_EXPORT bool lmq_dev_stream_wanted(const lmq_dev_t *dev, size_t index);

/* Declares `blocks` blocks of stream `index` lost inside the driver (an
 * acquisition overrun): their sequence numbers are spent, so every
 * subscriber counts them as lost. */
LMQ_EXPORT int lmq_dev_stream_skip(lmq_dev_t *dev, size_t index, uint64_t blocks);

/* Publishes one block of stream `index`: nbytes must match the stream's shape
 * and dtype. The data is copied once into the outgoing message. t_ns is the
 * acquisition time (CLOCK_REALTIME ns). */
LMQ_EXPORT int lmq_dev_publish(lmq_dev_t *dev, size_t index, int64_t t_ns, const void *data, size_t nbytes);

/* Same, handing over a malloc'd buffer (zero-copy); the daemon frees it. */
LMQ_EXPORT int lmq_dev_publish_take(lmq_dev_t *dev, size_t index, int64_t t_ns, void **data, size_t nbytes);

/* Simulated wiring: named analog signals shared by the devices of one daemon,
 * so simulated instruments on different threads can be connected (the
 * supply's output current read by the DAQ's input, the DAQ's analog output
 * driving the load). Thread-safe; the values live in the daemon. Wire names
 * are "device.signal" by convention. get returns LMQ_ENOTFOUND until the wire
 * was first set. */
LMQ_EXPORT int lmq_dev_wire_set(lmq_dev_t *dev, const char *wire, double value);
LMQ_EXPORT int lmq_dev_wire_get(lmq_dev_t *dev, const char *wire, double *value);

/* Simulated time, for simulated instruments: the daemon's time_scale (1 by
 * default; 60 makes an hour-long ramp take a minute). lmq_dev_sim_ns is a
 * monotonic clock running time_scale times faster than CLOCK_MONOTONIC;
 * lmq_dev_sim_sleep sleeps ns of simulated time (ns / time_scale of real
 * time), returning LMQ_ECLOSED early when the device is stopping. Real
 * instruments ignore both. */
LMQ_EXPORT double lmq_dev_time_scale(const lmq_dev_t *dev);
LMQ_EXPORT int64_t lmq_dev_sim_ns(const lmq_dev_t *dev);
LMQ_EXPORT int lmq_dev_sim_sleep(lmq_dev_t *dev, int64_t ns);

/* Clocks, in nanoseconds. */
LMQ_EXPORT int64_t lmq_clock_mono_ns(void);
LMQ_EXPORT int64_t lmq_clock_real_ns(void);

/* ---- the built-in drivers ---- */

/* Looks up a driver compiled into liblabmq by name; NULL when unknown. */
LMQ_EXPORT const lmq_driver_t *lmq_driver_find(const char *name);
/* The NULL-terminated list of built-in drivers. */
LMQ_EXPORT const lmq_driver_t *const *lmq_driver_list(void);

/* Loads an out-of-tree driver (see LMQ_DRIVER_EXPORT). It stays loaded for
 * the life of the process. NULL on failure, with the reason in err (not
 * found, not a labmq driver, built for another ABI, a missing symbol). */
LMQ_EXPORT const lmq_driver_t *lmq_driver_load(const char *path, char *err, size_t errlen);

/* describe: the JSON text of a driver's tables for a device (caller frees),
 * as sent by the `describe` op. NULL on allocation failure. */
LMQ_EXPORT char *lmq_driver_describe(const lmq_driver_t *drv, const char *device_name);

#ifdef __cplusplus
}
#endif
#endif
