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
    /* written by the device thread, read by the broker (stats) */
    _Atomic uint64_t published; /* blocks handed to the broker */
    _Atomic uint64_t dropped;   /* blocks the broker pipe refused (seq spent) */
    _Atomic uint64_t skipped;   /* blocks the driver declared lost (lmq_dev_stream_skip) */
    _Atomic uint64_t errors;    /* blocks refused as malformed, and failed polls */
    atomic_bool wanted;         /* a subscriber's prefix matches the topic (broker writes) */
    uint64_t subscriber_drops;  /* broker: blocks flow subscriptions dropped at their bound */
} lmq__stream_rt_t;

#define LMQ__LAT_RING 1024

typedef struct lmq__dev_stats {
    uint64_t calls, errors;
    /* accepted and not answered, the running one included, on both paths:
     * the broker's and the local channel's (local.c, device thread) */
    _Atomic uint64_t in_flight;
    double latency_sum_us, latency_max_us;
    uint32_t ring[LMQ__LAT_RING]; /* recent latencies, µs */
    size_t ring_n;
} lmq__dev_stats_t;

/* Where a device is in its life; shown by list, describe and stats. */
typedef enum lmq__dev_state {
    LMQ__DEV_OPENING = 0,  /* the first open() has not returned yet */
    LMQ__DEV_READY,        /* open, serving */
    LMQ__DEV_DISCONNECTED, /* open() failed or the link was lost: reopened with back-off */
    LMQ__DEV_STOPPED,      /* closed at shutdown */
    LMQ__DEV_FAULT         /* open, but its driver has been busy for longer than fault_after */
} lmq__dev_state_t;

const char *lmq__dev_state_name(lmq__dev_state_t s);

typedef struct lmq__job lmq__job_t;

struct lmq_dev {
    /* configuration: immutable once the daemon starts */
    char *name;
    const lmq_driver_t *drv;
    char *connection;
    lmq__option_value_t *opts;
    size_t nopts;
    /* this device's tables: the driver's static ones, or those its
     * configure() built (owned through `tables`) */
    const lmq_method_t *methods;
    const lmq_property_t *props;
    const lmq_stream_t *stream_defs;
    lmq_tables_t tables;
    size_t nstreams, nmethods, nprops;
    bool restore; /* write back what clients set after a reconnect */
    double time_scale; /* simulated time runs this much faster (lmq_dev_sim_ns) */
    int64_t sim_t0;    /* CLOCK_MONOTONIC when simulated time started */
    lmq_log_t *log;
    lmq__wires_t *wires;
    void *zctx;
    char pipe_endpoint[96];
    uint64_t epoch;

    /* lifecycle */
    pthread_t thread;
    bool thread_started;
    bool abandoned; /* stuck in its driver at shutdown: never joined or freed */
    atomic_bool stopping;
    atomic_bool exited; /* the thread has left its loop and closed its driver */

    /* device thread */
    void *pipe;
    bool pipe_used; /* sent or received on the pipe since local.c last asked ZMQ_EVENTS */
    void *state;
    int64_t next_open_try;
    int64_t next_check; /* of the driver's link check */
    int64_t reopen_backoff_ns;
    int fail_status;
    char fail_msg[512];
    const void *cur_user;      /* lmq_dev_user() */
    char *ev_topic;            /* "$events/<name>" */
    uint64_t ev_seq;           /* the next change event's number (under ev_mu) */
    /* Held while an event takes its seq and goes into the pipe: the broker,
     * which also publishes this device's events (FAULT), takes it to keep
     * seq in the order events reach the data endpoint. */
    pthread_mutex_t ev_mu;
    lmq_value_t *last_set;     /* [nprops]: what clients last set (for restore) */
    int64_t deadline_ns;       /* the running request's deadline (mono), 0 when none: caps transport waits */
    char lock_holder[LMQ__MAX_CLIENT + 120]; /* device thread: who holds its lock ("": none), for local.c */

    /* shared: written under mu */
    pthread_mutex_t mu;
    lmq__dev_state_t dev_state;
    bool is_open; /* dev_state == READY; the device thread reads it without mu */
    char open_error[256];
    lmq__stream_rt_t *streams;
    double (*limits)[2];    /* per property: [min, max] now in force */
    lmq__job_t *current;    /* the job the driver is running, NULL when idle */
    int64_t busy_since;     /* mono ns when the driver was entered; 0 when idle */
    char busy_what[160];    /* "get voltage", "open" */
    uint64_t disconnects, reopens, restores;
    _Atomic uint64_t events_dropped; /* change events the broker pipe refused (seq spent) */

    /* broker */
    void *broker_pipe;
    lmq__dev_stats_t stats;
    lmq__job_t *queue_head, *queue_tail; /* accepted jobs in order, oldest first */
    uint64_t events_subscriber_drops;    /* change events flow subscriptions dropped at their bound */

    struct lmq__local *local; /* local.c: the device's local channel; NULL when it has none */
};

/* A request on its way from the broker to a device thread and back. The
 * broker allocates it, checks it and parses its values; the device thread
 * runs it and fills the reply; the broker sends and frees it. Only the
 * pointer crosses the inproc pipe. */
struct lmq__job {
    struct lmq__job *prev, *next; /* the device's queue (broker thread) */
    lmq_dev_t *dev;
    zmq_msg_t envelope[2]; /* routing id, and the empty delimiter of REQ clients */
    size_t nenvelope;
    lmq__request_t req;
    const lmq_method_t *method;
    const lmq_property_t *prop;
    lmq_value_t args[LMQ__MAX_ARGS]; /* call: checked arguments */
    size_t nargs;
    lmq_value_t value; /* set: the checked value */
    int64_t t_start;
    int64_t deadline_ns; /* mono; 0: none (protocol 2.1 deadline_ms) */
    bool tracked;        /* remembered for retries (dedup.h) */
    zmq_msg_t reply;
    lmq__frames_t reply_bin;
    bool failed;
    int status;         /* failed: the reply's status */
    char fail_msg[200]; /* failed: the start of the reply's message (audit) */
    char peer[80];      /* who sent it (lmq__peer_name), for the audit line */
    struct lmq__lclient *lclient; /* local.c: the client of a local-channel job; NULL for ZeroMQ */
};

/* Topic prefix of change events on the data endpoint: "$events/psu1". */
#define LMQ__EVENTS_PREFIX "$events/"

/* inproc message kinds (first byte of the first frame) */
enum { LMQ__MSG_JOB = 'Q', LMQ__MSG_DONE = 'R', LMQ__MSG_PUBLISH = 'P', LMQ__MSG_READY = 'Y', LMQ__MSG_TERM = 'T' };
/* A lock change for the device thread (locks.h): kind, what, holder's name. */
#define LMQ__MSG_LOCK 'K'

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
/* The options both ends of a device's inproc pipe take (broker and device
 * thread): no linger, a high-water mark above the queue bound. */
void lmq__pipe_options(void *sock);

/* Starts the device thread; it connects to dev->pipe_endpoint (bound by the broker). */
int lmq__dev_start(lmq_dev_t *dev, void *zctx, lmq_log_t *log, lmq__wires_t *wires, uint64_t epoch);
/* lmq__dev_start in two steps, for a device that must wait before it opens
 * (a reload's reconfigured device waits for its old instance to close the
 * instrument): connect creates and connects the device's end of the pipe, so
 * the broker can queue jobs at once; launch starts the thread. A device
 * connected but never launched has its dev->pipe closed by the broker. */
int lmq__dev_connect(lmq_dev_t *dev, void *zctx, lmq_log_t *log, lmq__wires_t *wires, uint64_t epoch);
int lmq__dev_launch(lmq_dev_t *dev);
/* True when dev's parsed configuration (driver, connection, option values,
 * restore, time scale) equals other's: a reload leaves such a device alone. */
bool lmq__dev_same_config(const lmq_dev_t *dev, const lmq_dev_t *other);
/* Waits until the device thread has exited, at most until deadline_ns
 * (mono). Returns 0, or LMQ_ETIMEOUT: the thread is stuck in its driver and
 * is left running (dev->abandoned). */
int lmq__dev_join(lmq_dev_t *dev, int64_t deadline_ns);

/* Checks a call's arguments or a set's value against the device's tables
 * (count, type, limits, array references) and converts them into the job
 * (job->args / job->value). bin: the request's binary frames. Returns 0, or a
 * status with the reason in err: LMQ_EARG, LMQ_ERANGE, LMQ_EPROTO (a bad array
 * reference or an unreferenced frame), LMQ_EMEM. */
int lmq__check_request(lmq_dev_t *dev, lmq__job_t *job, const lmq__frames_t *bin, char *err, size_t errlen);

/* Looks up a method / property / stream by name; NULL when unknown. */
const lmq_method_t *lmq__dev_method(const lmq_dev_t *dev, const char *name);
const lmq_property_t *lmq__dev_property(const lmq_dev_t *dev, const char *name);
/* What a call (a method) or a get/set (a property) names, checked as the
 * protocol says (2.2): 0, or LMQ_ENOTFOUND (the message lists what exists)
 * or LMQ_EREADONLY with the reason in err. One check for both paths, the
 * broker's and the local channel's. */
int lmq__dev_target(const lmq_dev_t *dev, bool call, bool set, const char *name, const lmq_method_t **method,
                    const lmq_property_t **prop, char *err, size_t errlen);
/* The limits in force for property `p` of this device (under mu). */
void lmq__dev_limits(lmq_dev_t *dev, const lmq_property_t *p, double *min, double *max);

/* describe: a JSON object for the device (with runtime shape/rate and state). */
json_t *lmq__describe(lmq_dev_t *dev);

/* Broker thread: marks the device FAULT when it is ready and its driver has
 * been busy (a request, a stream poll, a link check) for fault_after_ns or
 * longer, and publishes that state event itself through publish(arg, parts,
 * n) (topic, header and value frames, taken: the broker's path to the data
 * endpoint and the flow subscriptions), as the device thread is the one
 * that is stuck. drain(arg, dev) must forward everything the device has
 * sent on its pipe so far, so that its earlier events go out first. The
 * device thread makes it ready again when the driver returns. Returns when
 * (mono ns) to look at the device again. */
typedef void (*lmq__publish_fn)(void *arg, zmq_msg_t *parts, size_t n);
int64_t lmq__dev_watch(lmq_dev_t *dev, int64_t now, int64_t fault_after_ns, lmq__publish_fn publish,
                       void (*drain)(void *arg, lmq_dev_t *dev), void *arg);

/* Wires (simulated signals), owned by the daemon. */
lmq__wires_t *lmq__wires_new(void);
void lmq__wires_destroy(lmq__wires_t **w);

/* Sends a pointer-carrying message (JOB or DONE); what ptr points to passes
 * to the receiver, which calls lmq__handoff_acquire(ptr) before touching it. */
int lmq__send_ptr(void *sock, char kind, void *ptr, int flags);

void lmq__job_destroy(lmq__job_t **job);

/* Device thread: runs a checked job and fills its reply (the local channel
 * runs its jobs through this too). */
void lmq__dev_handle_job(lmq_dev_t *dev, lmq__job_t *job);

#endif
