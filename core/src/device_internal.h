/* The running device: configuration, its thread, and what the broker keeps
 * about it. Internal to liblabmq.
 *
 * Ownership and threads: the daemon owns every lmq_dev. Fields under "device
 * thread" are touched only by that thread; "broker" only by the broker
 * thread; "shared" only under mu. */
#ifndef LMQ_DEVICE_INTERNAL_H
#define LMQ_DEVICE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include "labmq/driver.h"
#include "proto.h"

typedef struct lmq__wires lmq__wires_t;

typedef struct lmq__option_value {
    const lmq_option_t *opt;
    lmq_value_t val;
} lmq__option_value_t;

typedef struct lmq__stream_rt {
    double rate_hz;
    unsigned ndim;
    size_t shape[LMQ_MAX_DIMS];
    char *topic;      /* "device/stream" */
    char *units_json; /* the stream's unit as a JSON string, escaped once */
    uint64_t seq;     /* device thread */
    int64_t next_due; /* device thread */
    uint64_t dropped; /* device thread: blocks the broker pipe refused */
} lmq__stream_rt_t;

#define LMQ__LAT_RING 1024

typedef struct lmq__dev_stats {
    uint64_t calls, errors, in_flight;
    double latency_sum_us, latency_max_us;
    uint32_t ring[LMQ__LAT_RING]; /* recent latencies, µs */
    size_t ring_n;
} lmq__dev_stats_t;

struct lmq_dev {
    /* configuration: immutable once the daemon starts */
    char *name;
    const lmq_driver_t *drv;
    char *connection;
    lmq__option_value_t *opts;
    size_t nopts;
    size_t nstreams, nmethods, nprops;
    lmq_log_t *log;
    lmq__wires_t *wires;
    void *zctx;
    char pipe_endpoint[96];
    uint64_t epoch;

    /* lifecycle */
    pthread_t thread;
    bool thread_started;
    atomic_bool stopping;

    /* device thread */
    void *pipe;
    void *state;
    int64_t last_open_try;
    int fail_status;
    char fail_msg[512];

    /* shared: written under mu; the device thread, their only writer, may
     * read is_open and open_error without it */
    pthread_mutex_t mu;
    bool is_open;
    char open_error[256];
    lmq__stream_rt_t *streams;
    double (*limits)[2]; /* per property: [min, max] now in force */

    /* broker */
    void *broker_pipe;
    lmq__dev_stats_t stats;
};

/* A request on its way from the broker to a device thread and back. The
 * broker allocates it, the device thread fills the reply, the broker sends
 * and frees it; only the pointer crosses the inproc pipe. */
typedef struct lmq__job {
    struct lmq__job *prev, *next; /* broker's list of jobs in flight */
    lmq_dev_t *dev;
    zmq_msg_t envelope[2]; /* routing id, and the empty delimiter of REQ clients */
    size_t nenvelope;
    lmq__request_t req;
    lmq__frames_t bin;
    const lmq_method_t *method;
    const lmq_property_t *prop;
    int64_t t_start;
    zmq_msg_t reply;
    lmq__frames_t reply_bin;
    bool failed;
} lmq__job_t;

/* inproc message kinds (first byte of the first frame) */
enum { LMQ__MSG_JOB = 'Q', LMQ__MSG_DONE = 'R', LMQ__MSG_PUBLISH = 'P', LMQ__MSG_READY = 'Y', LMQ__MSG_TERM = 'T' };

/* The rules lmq_daemon_add applies, shared with the config file's checks so
 * that what a config accepts the daemon accepts too. */
#define LMQ__DEVICE_NAME_RULE "1 to 64 letters, digits, '_', '-' and '.'"
bool lmq__device_name_ok(const char *name);

enum { LMQ__OPT_UNKNOWN = 1, LMQ__OPT_NO_VALUE, LMQ__OPT_MISSING, LMQ__OPT_BAD_VALUE };
typedef struct lmq__option_fault {
    const char *name;        /* the option at fault */
    const lmq_option_t *opt; /* its entry in the driver's table; NULL when LMQ__OPT_UNKNOWN */
    const char *text;        /* the value that did not parse (LMQ__OPT_BAD_VALUE) */
} lmq__option_fault_t;
/* Checks options (name, value, ..., NULL) against drv: every name is one of
 * its options and has a value; then every option of drv, given or default, is
 * present and parses as its type, into out[k] for drv's k-th option (out may
 * be NULL: check only). Returns 0 or an LMQ__OPT_* fault, described in *f. */
int lmq__options_parse(const lmq_driver_t *drv, const char *const *options, lmq__option_value_t *out,
                       lmq__option_fault_t *f);

lmq_dev_t *lmq__dev_new(const char *name, const lmq_driver_t *drv, const char *connection,
                        const char *const *options, char *err, size_t errlen);
void lmq__dev_destroy(lmq_dev_t **dev);
/* Starts the device thread; it connects to dev->pipe_endpoint (bound by the broker). */
int lmq__dev_start(lmq_dev_t *dev, void *zctx, lmq_log_t *log, lmq__wires_t *wires, uint64_t epoch);
void lmq__dev_join(lmq_dev_t *dev);

/* Looks up a method / property / stream by name; NULL when unknown. */
const lmq_method_t *lmq__dev_method(const lmq_dev_t *dev, const char *name);
const lmq_property_t *lmq__dev_property(const lmq_dev_t *dev, const char *name);
/* The limits in force for property `p` of this device (under mu). */
void lmq__dev_limits(lmq_dev_t *dev, const lmq_property_t *p, double *min, double *max);

/* describe: a JSON object for the device (with runtime shape/rate and state). */
json_t *lmq__describe(lmq_dev_t *dev);

/* Wires (simulated signals), owned by the daemon. */
lmq__wires_t *lmq__wires_new(void);
void lmq__wires_destroy(lmq__wires_t **w);

/* Sends a pointer-carrying message (JOB or DONE). */
int lmq__send_ptr(void *sock, char kind, void *ptr, int flags);

void lmq__job_destroy(lmq__job_t **job);

#endif
