/* Wire protocol v1 codec (docs/protocol.md): JSON header frames via jansson,
 * arrays as raw binary frames. Internal to liblabmq. */
#ifndef LMQ_PROTO_H
#define LMQ_PROTO_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <zmq.h>
#include "labmq/export.h"
#include "labmq/value.h"

#define LMQ__PROTOCOL 1
#define LMQ__MAX_HEADER 65536
#define LMQ__MAX_BINFRAMES 16
#define LMQ__MAX_ARGS 32
#define LMQ__MAX_FRAME ((int64_t)64 << 20)
#define LMQ__MAX_ID ((uint64_t)1 << 53)
#define LMQ__MAX_CLIENT 128        /* bytes of a request's `client` */
#define LMQ__MAX_LOCK_DEVICES 64   /* devices one `lock` names */
#define LMQ__LEASE_MIN_MS 100
#define LMQ__LEASE_MAX_MS 60000
#define LMQ__LEASE_DEFAULT_MS 10000
#define LMQ__MAX_DEADLINE_MS 86400000 /* a day */

typedef enum lmq__op {
    LMQ__OP_PING,
    LMQ__OP_LIST,
    LMQ__OP_DESCRIBE,
    LMQ__OP_CALL,
    LMQ__OP_GET,
    LMQ__OP_SET,
    LMQ__OP_STATS,
    LMQ__OP_WORKERS,
    LMQ__OP_SUBSCRIBE,   /* flow subscriptions (protocol 3.2) */
    LMQ__OP_CREDIT,
    LMQ__OP_UNSUBSCRIBE,
    LMQ__OP_LOCK,
    LMQ__OP_UNLOCK,
    LMQ__OP_COUNT
} lmq__op_t;

const char *lmq__op_name(lmq__op_t op);

/* Binary frames following a header. */
typedef struct lmq__frames {
    zmq_msg_t msg[LMQ__MAX_BINFRAMES];
    size_t n;
} lmq__frames_t;

/* Writes the reason into err (printf-style) and returns status: the one
 * way the checks of requests, values and subscriptions fail. */
int lmq__failf(char *err, size_t errlen, int status, const char *fmt, ...) LMQ_PRINTF(4, 5);

void lmq__frames_init(lmq__frames_t *f);
void lmq__frames_close(lmq__frames_t *f);

/* A validated request header. Strings and json pointers borrow from json. */
typedef struct lmq__request {
    json_t *json;
    bool has_id;
    uint64_t id;
    lmq__op_t op;
    const char *device;
    const char *name;
    json_t *args;
    json_t *value;
    /* subscribe / credit (3.2): types checked, values judged by the broker */
    json_t *topics;   /* array, or NULL */
    const char *mode; /* NULL when absent */
    bool has_window;
    int64_t window;
    bool has_n;
    int64_t n;
    const char *client;  /* NULL when the request has none */
    int64_t deadline_ms; /* -1 when the request has none */
    json_t *devices;     /* lock/unlock: array of device names (checked), NULL when absent */
    int64_t lease_ms;    /* lock: the lease (default LMQ__LEASE_DEFAULT_MS) */
} lmq__request_t;

/* Parses and validates a request header frame followed by nbin binary
 * frames. Returns 0, or LMQ_EPROTO with a message for people in err; on error
 * req->has_id tells whether the id could still be read (for the reply). */
int lmq__request_parse(const void *data, size_t len, size_t nbin, lmq__request_t *req, char *err, size_t errlen);
void lmq__request_clear(lmq__request_t *req);

/* Encodes a request header into msg; array arguments are appended to bin. */
int lmq__request_encode(zmq_msg_t *msg, uint64_t id, lmq__op_t op, const char *device, const char *name,
                        const lmq_value_t *args, size_t nargs, const lmq_value_t *value, lmq__frames_t *bin);

/* A parsed reply header. */
typedef struct lmq__reply {
    json_t *json;
    bool has_id;
    uint64_t id;
    bool ok;
    json_t *result;      /* borrowed */
    int status;          /* 0 when ok */
    const char *message; /* borrowed; "" when ok */
} lmq__reply_t;

int lmq__reply_parse(const void *data, size_t len, lmq__reply_t *rep, char *err, size_t errlen);
void lmq__reply_clear(lmq__reply_t *rep);

/* Encodes reply headers. result is stolen (may be NULL for null). */
int lmq__reply_ok(zmq_msg_t *msg, bool has_id, uint64_t id, json_t *result);
int lmq__reply_error(zmq_msg_t *msg, bool has_id, uint64_t id, int status, const char *message);

/* Fast paths writing the JSON directly. reply_value: like reply_ok with the
 * value converted (arrays move into bin); LMQ_ERANGE for a non-finite float.
 * request_encode_fast: scalar arguments and plain names only; returns 1 when
 * the request needs the general encoder. */
int lmq__reply_value(zmq_msg_t *msg, uint64_t id, lmq_value_t *result, lmq__frames_t *bin);
int lmq__request_encode_fast(zmq_msg_t *msg, uint64_t id, lmq__op_t op, const char *device, const char *name,
                             const lmq_value_t *args, size_t nargs, const lmq_value_t *value);

/* Value <-> JSON. Arrays reference binary frames ({"$frame":K,...}, K from 1). */
int lmq__value_from_json(const json_t *j, const lmq__frames_t *bin, lmq_value_t *out, char *err, size_t errlen);
/* The same, marking the frames it references in *used (bit K-1 for frame K)
 * and refusing a frame already marked. Errors: LMQ_EPROTO for a malformed
 * array reference, LMQ_EARG for a JSON list (not a labmq value), LMQ_EMEM. */
int lmq__value_from_json_used(const json_t *j, const lmq__frames_t *bin, unsigned *used, lmq_value_t *out, char *err,
                              size_t errlen);
/* Moves an array's data into a new frame of `bin` (v is left LMQ_NONE then). */
json_t *lmq__value_to_json(lmq_value_t *v, lmq__frames_t *bin);

/* Appends `"deadline_ms":N` (when deadline_ms >= 0) and `"client":` with
 * client_json (when not NULL: already a JSON string, lmq__json_quote) to an
 * encoded request header. Returns 0, LMQ_EARG (not a header) or LMQ_EMEM;
 * msg is unchanged on failure. */
int lmq__request_add_keys(zmq_msg_t *msg, int64_t deadline_ms, const char *client_json);

/* ZMTP heartbeats (protocol 1.1): every labmq socket on tcp:// or ipc://
 * pings its peer every LMQ__HEARTBEAT_IVL_MS and drops a connection that
 * has sent nothing for LMQ__HEARTBEAT_TIMEOUT_MS. */
#define LMQ__HEARTBEAT_IVL_MS 500
#define LMQ__HEARTBEAT_TIMEOUT_MS 1500
#define LMQ__HEARTBEAT_TTL_MS 3000
void lmq__heartbeat_set(void *sock);

/* Memory handed to another thread through ZeroMQ (a job's pointer, a
 * zero-copy payload over inproc): ZeroMQ orders the sender's writes before
 * the receiver's reads, but
 * through atomics in libzmq, which ThreadSanitizer does not see (Debian's
 * libzmq is not instrumented): these say so in an LMQ_TSAN build, and are
 * nothing otherwise. */
#if defined(__SANITIZE_THREAD__)
#define LMQ__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LMQ__TSAN 1
#endif
#endif
#ifdef LMQ__TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define lmq__handoff_release(p) __tsan_release(p)
#define lmq__handoff_acquire(p) __tsan_acquire(p)
#else
#define lmq__handoff_release(p) ((void)(p))
#define lmq__handoff_acquire(p) ((void)(p))
#endif

/* Receives the remaining parts of a multipart message whose last part had
 * ZMQ_RCVMORE: up to max of them into parts (initialised here; the caller
 * closes them), the rest received and dropped. Returns how many parts
 * followed in all, which may exceed max. */
size_t lmq__recv_rest(void *sock, zmq_msg_t *parts, size_t max);

/* Serialises json into a new message (compact). Returns 0 or LMQ_EMEM. */
int lmq__json_to_msg(const json_t *json, zmq_msg_t *msg);

/* text as a JSON string literal, quotes included (caller frees); NULL on
 * invalid UTF-8 or no memory. */
char *lmq__json_quote(const char *text);

/* Data header for a stream block; units_json is already quoted (lmq__json_quote). */
int lmq__data_header(zmq_msg_t *msg, uint64_t seq, uint64_t epoch, int64_t t_ns, lmq_dtype_t dtype, unsigned ndim,
                     const size_t *shape, const char *units_json);

/* A stream block's header as a subscriber reads it (protocol 3). */
typedef struct lmq__block_header {
    uint64_t seq, epoch;
    int64_t t_ns;
    lmq_dtype_t dtype;
    unsigned ndim;
    size_t shape[LMQ_MAX_DIMS];
    char units[32]; /* cut at a character boundary when longer */
} lmq__block_header_t;

/* Parses and validates a block header, and checks that a payload of
 * payload_size bytes is what it announces. Returns 0, or LMQ_EPROTO with the
 * reason in err. Accepts any bytes: it is a subscriber's boundary. */
int lmq__data_header_parse(const void *data, size_t len, size_t payload_size, lmq__block_header_t *h, char *err,
                           size_t errlen);

#endif
