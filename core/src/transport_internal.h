/* Transports: what transport.c (the common layer: connection-string dispatch,
 * read-ahead buffer, hex trace, deadlines, errors) shares with each kind's
 * implementation (transport_serial.c, transport_tcp.c, transport_usbtmc.c).
 * Internal to liblabmq.
 *
 * A kind implements raw operations on its handle; the common layer wraps
 * them with tracing, the read-ahead buffer behind read_line/read_exact, the
 * `broken` flag and cancellation. A kind's operation returns 0 or a negative
 * status and reports its reason with lmq__transport_fail(). */
#ifndef LMQ_TRANSPORT_INTERNAL_H
#define LMQ_TRANSPORT_INTERNAL_H

#include "labmq/status.h"
#include "labmq/transport.h"

/* The longest single wait slice: cancellation is noticed within it. */
#define LMQ__TRANSPORT_SLICE_MS 50

typedef struct lmq__transport_ops {
    const char *kind; /* "serial", matched against the connection's prefix before ':' */
    /* rest: the connection string after "kind:". Sets t->impl. On failure
     * t->impl is either NULL (everything released) or fit for close, which
     * the common layer then calls. */
    int (*open)(lmq_transport_t *t, const char *rest, int64_t deadline_ns);
    void (*close)(lmq_transport_t *t); /* frees t->impl; must not fail */
    int (*write)(lmq_transport_t *t, const void *data, size_t len, int64_t deadline_ns);
    /* At least one byte (or, for USBTMC, a possibly empty message end with
     * *eom set), at most size. */
    int (*read)(lmq_transport_t *t, void *buf, size_t size, size_t *got, bool *eom, int64_t deadline_ns);
    /* Kind-specific part of lmq_transport_clear (the common layer has already
     * dropped its own buffer). */
    int (*clear)(lmq_transport_t *t, int quiet_ms, int64_t deadline_ns);
    int (*status_byte)(lmq_transport_t *t, uint8_t *stb, int64_t deadline_ns); /* NULL: none */
    /* Non-blocking link check (lmq_transport_check); NULL: the kind cannot
     * tell without I/O, and only operations notice a lost link. */
    int (*check)(lmq_transport_t *t);
} lmq__transport_ops_t;

#define LMQ__TRANSPORT_RBUF 4096

struct lmq_transport {
    const lmq__transport_ops_t *ops;
    char *connection;
    char *source;
    lmq_log_t *log;
    const atomic_bool *cancel;
    bool broken; /* set by the kind (or the common layer) on unplug/hang-up/reset */
    char err[512];
    /* read-ahead for read_line / read_exact: rbuf[rpos..rlen) not yet consumed */
    unsigned char rbuf[LMQ__TRANSPORT_RBUF];
    size_t rpos, rlen;
    bool reom; /* the buffered bytes end a USBTMC message */
    void *impl;
    /* The running request's deadline (mono ns, 0: none), owned by the device
     * that opened the transport: it caps every write and read wait. Once a
     * wait ended at it, the rest of that request (a driver's resync after
     * the timeout) runs on the driver's own timeouts, so the link stays in
     * step: cap_fired holds the deadline that fired. */
    const int64_t *cap_ns;
    int64_t cap_fired;
};

/* Caps this transport's waits by *cap_ns while it is not 0 (see above). */
void lmq__transport_set_cap(lmq_transport_t *t, const int64_t *cap_ns);

/* Records why the current operation failed; returns status. LMQ_EIO also
 * marks the transport broken. */
int lmq__transport_fail(lmq_transport_t *t, int status, const char *fmt, ...) LMQ_PRINTF(3, 4);
/* True when the cancel flag is up. */
bool lmq__transport_cancelled(const lmq_transport_t *t);
/* Milliseconds left until deadline_ns (rounded up), capped to one wait
 * slice; 0 when past. */
int lmq__transport_slice_ms(int64_t deadline_ns);
/* Waits in slices until fd has one of events (poll(2) bits; *revents
 * receives what it has, hang-up and error bits included): 0, LMQ_ETIMEOUT at
 * the deadline, LMQ_ECLOSED when cancelled. Polls once even when the
 * deadline has passed, so data already there is never a timeout. */
int lmq__transport_poll(lmq_transport_t *t, int fd, short events, short *revents, int64_t deadline_ns);
/* The link check of a descriptor-based kind: LMQ_EIO (and broken) when the
 * far end hung up or reset, else 0. Never blocks. */
int lmq__transport_check_fd(lmq_transport_t *t, int fd);
/* The byte-stream clear: reads and drops (tracing it) until a read has waited
 * quiet_ms in vain, bounded by the deadline. For kinds whose read op times
 * out with LMQ_ETIMEOUT. */
int lmq__transport_drain(lmq_transport_t *t, int quiet_ms, int64_t deadline_ns);

extern const lmq__transport_ops_t lmq__transport_serial, lmq__transport_tcp, lmq__transport_usbtmc;

/* Discovery, one per kind; same contract as lmq_transport_scan. */
int lmq__transport_scan_serial(lmq_port_fn fn, void *user, char *err, size_t errlen);
int lmq__transport_scan_usbtmc(lmq_port_fn fn, void *user, char *err, size_t errlen);

#endif
