/* Transports, the common layer: picks the kind from the connection string's
 * prefix, and wraps each kind's raw operations with what every kind needs
 * alike: the read-ahead buffer behind read_line/read_exact, the hex trace,
 * the broken flag, cancellation between wait slices and the error text. */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "labmq/driver.h"
#include "transport_internal.h"

/* The USBTMC kind (lmq__transport_usbtmc) joins this table at the merge. */
static const lmq__transport_ops_t *const kinds[] = {&lmq__transport_serial, &lmq__transport_tcp,
                                                      &lmq__transport_usbtmc};
#define NKINDS (sizeof kinds / sizeof kinds[0])

/* Longest terminator read_line accepts: it must fit in the read-ahead buffer
 * with room to spare, and real instruments use one or two bytes. */
#define TERM_MAX 16

int lmq__transport_fail(lmq_transport_t *t, int status, const char *fmt, ...)
{
    int n = snprintf(t->err, sizeof t->err, "%s: ", t->connection ? t->connection : "?");
    if (n >= 0 && (size_t)n < sizeof t->err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->err + n, sizeof t->err - (size_t)n, fmt, ap);
        va_end(ap);
    }
    if (status == LMQ_EIO)
        t->broken = true;
    lmq_log(t->log, LMQ_LOG_DEBUG, t->source, "%s (%s)", t->err, lmq_status_name(status));
    return status;
}

bool lmq__transport_cancelled(const lmq_transport_t *t) { return t->cancel && atomic_load(t->cancel); }

int lmq__transport_slice_ms(int64_t deadline_ns)
{
    int64_t left = deadline_ns - lmq_clock_mono_ns();
    if (left <= 0)
        return 0;
    /* Rounded up: a wait that ends just short of the deadline would only
     * spin through one more zero-length slice. */
    int64_t ms = (left + 999999) / 1000000;
    return ms > LMQ__TRANSPORT_SLICE_MS ? LMQ__TRANSPORT_SLICE_MS : (int)ms;
}

int lmq__transport_poll(lmq_transport_t *t, int fd, short events, short *revents, int64_t deadline_ns)
{
    for (;;) {
        if (lmq__transport_cancelled(t))
            return lmq__transport_fail(t, LMQ_ECLOSED, "cancelled");
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, lmq__transport_slice_ms(deadline_ns));
        if (rc < 0 && errno != EINTR)
            return lmq__transport_fail(t, LMQ_EIO, "poll: %s", strerror(errno));
        if (rc > 0) {
            *revents = p.revents;
            return 0;
        }
        if (lmq_clock_mono_ns() >= deadline_ns)
            return lmq__transport_fail(t, LMQ_ETIMEOUT, "timeout waiting to %s", (events & POLLOUT) ? "write" : "read");
    }
}

int lmq__transport_drain(lmq_transport_t *t, int quiet_ms, int64_t deadline_ns)
{
    unsigned char junk[512];
    size_t dropped = 0;
    char saved[sizeof t->err];
    memcpy(saved, t->err, sizeof saved);
    int rc;
    for (;;) {
        int64_t now = lmq_clock_mono_ns();
        if (dropped && now >= deadline_ns) {
            rc = lmq__transport_fail(
                t, LMQ_ETIMEOUT, "clear: the line did not go quiet for %d ms before the deadline (%zu bytes dropped)",
                quiet_ms, dropped);
            break;
        }
        int64_t quiet_end = now + (int64_t)quiet_ms * 1000000;
        bool cut = quiet_end > deadline_ns;
        if (cut)
            quiet_end = deadline_ns;
        size_t got = 0;
        bool eom = false;
        rc = t->ops->read(t, junk, sizeof junk, &got, &eom, quiet_end);
        if (rc == LMQ_ETIMEOUT) {
            /* Quiet for the whole quiet time, or silent all along until the
             * deadline cut the wait short: nothing late is on its way. */
            if (cut && dropped) {
                rc = lmq__transport_fail(
                    t, LMQ_ETIMEOUT,
                    "clear: the line did not go quiet for %d ms before the deadline (%zu bytes dropped)", quiet_ms,
                    dropped);
            } else {
                rc = 0;
                memcpy(t->err, saved, sizeof saved); /* the expected timeout is no failure */
            }
            break;
        }
        if (rc < 0)
            break;
        lmq_log_hex(t->log, t->source, "rx", junk, got);
        dropped += got;
    }
    if (dropped)
        lmq_log(t->log, LMQ_LOG_DEBUG, t->source, "clear: dropped %zu late bytes", dropped);
    return rc;
}

int lmq_transport_open(lmq_transport_t **tp, const char *connection, const lmq_transport_opts_t *opts, char *err,
                       size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!tp) {
        if (err && errlen)
            snprintf(err, errlen, "lmq_transport_open: no handle pointer given");
        return LMQ_EARG;
    }
    *tp = NULL;
    if (!connection || !*connection) {
        if (err && errlen)
            snprintf(err, errlen, "empty connection string (expected e.g. serial:/dev/ttyUSB0 or tcp:host:5025)");
        return LMQ_EARG;
    }
    const char *colon = strchr(connection, ':');
    const lmq__transport_ops_t *ops = NULL;
    for (size_t i = 0; colon && i < NKINDS; i++)
        if (strlen(kinds[i]->kind) == (size_t)(colon - connection) &&
            strncmp(connection, kinds[i]->kind, (size_t)(colon - connection)) == 0)
            ops = kinds[i];
    if (!ops) {
        if (err && errlen) {
            char known[128] = "";
            for (size_t i = 0; i < NKINDS; i++)
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s:", i ? ", " : "", kinds[i]->kind);
            if (colon)
                snprintf(err, errlen, "%s: unknown transport kind (known: %s)", connection, known);
            else
                snprintf(err, errlen, "%s: no transport kind (expected KIND:ADDRESS, KIND one of %s)", connection,
                         known);
        }
        return LMQ_EARG;
    }
    int open_ms = opts ? opts->open_timeout_ms : 0;
    if (open_ms < 0) {
        if (err && errlen)
            snprintf(err, errlen, "%s: negative open timeout %d ms", connection, open_ms);
        return LMQ_EARG;
    }
    if (open_ms == 0)
        open_ms = 2000;

    lmq_transport_t *t = calloc(1, sizeof *t);
    if (!t || !(t->connection = strdup(connection)) ||
        !(t->source = strdup(opts && opts->source ? opts->source : connection))) {
        if (t)
            free(t->connection);
        free(t);
        if (err && errlen)
            snprintf(err, errlen, "%s: out of memory", connection);
        return LMQ_EMEM;
    }
    t->ops = ops;
    t->log = opts ? opts->log : NULL;
    t->cancel = opts ? opts->cancel : NULL;
    int rc = ops->open(t, colon + 1, lmq_clock_mono_ns() + (int64_t)open_ms * 1000000);
    if (rc < 0) {
        if (err && errlen)
            snprintf(err, errlen, "%s", t->err[0] ? t->err : connection);
        if (t->impl)
            ops->close(t);
        free(t->connection);
        free(t->source);
        free(t);
        return rc;
    }
    lmq_log(t->log, LMQ_LOG_DEBUG, t->source, "opened %s", connection);
    *tp = t;
    return 0;
}

void lmq_transport_close(lmq_transport_t **tp)
{
    if (!tp || !*tp)
        return;
    lmq_transport_t *t = *tp;
    if (t->impl)
        t->ops->close(t);
    free(t->connection);
    free(t->source);
    free(t);
    *tp = NULL;
}

const char *lmq_transport_kind(const lmq_transport_t *t) { return t ? t->ops->kind : ""; }
const char *lmq_transport_connection(const lmq_transport_t *t) { return t ? t->connection : ""; }
bool lmq_transport_broken(const lmq_transport_t *t) { return t && t->broken; }

int lmq_transport_check(lmq_transport_t *t)
{
    if (!t)
        return LMQ_EARG;
    if (t->broken)
        return LMQ_EIO;
    return t->ops->check ? t->ops->check(t) : 0;
}

int lmq__transport_check_fd(lmq_transport_t *t, int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLRDHUP};
    if (poll(&pfd, 1, 0) < 0 || !(pfd.revents & (POLLHUP | POLLERR | POLLRDHUP | POLLNVAL)))
        return 0;
    return lmq__transport_fail(t, LMQ_EIO, "%s",
                               (pfd.revents & POLLERR) ? "connection reset or device error" : "the other end hung up");
}
const char *lmq_transport_last_error(const lmq_transport_t *t) { return t ? t->err : ""; }

void lmq__transport_set_cap(lmq_transport_t *t, const int64_t *cap_ns)
{
    if (t)
        t->cap_ns = cap_ns;
}

/* The deadline of one wait: the caller's, or the request's when sooner. */
static int64_t capped(const lmq_transport_t *t, int64_t deadline_ns, bool *by_cap)
{
    int64_t cap = t->cap_ns ? *t->cap_ns : 0;
    *by_cap = cap != 0 && cap != t->cap_fired && cap < deadline_ns;
    return *by_cap ? cap : deadline_ns;
}

/* A wait that the request's deadline ended says so. */
static int cap_result(lmq_transport_t *t, int rc, bool by_cap, const char *what)
{
    if (rc != LMQ_ETIMEOUT || !by_cap)
        return rc;
    t->cap_fired = *t->cap_ns;
    return lmq__transport_fail(t, LMQ_ETIMEOUT, "the request's deadline passed while waiting to %s", what);
}

/* What every operation checks before touching the handle. */
static int ready(lmq_transport_t *t)
{
    if (t->broken)
        return lmq__transport_fail(t, LMQ_EIO, "broken (unplugged, hung up or reset): close and reopen it");
    if (lmq__transport_cancelled(t))
        return lmq__transport_fail(t, LMQ_ECLOSED, "cancelled");
    return 0;
}

int lmq_transport_write(lmq_transport_t *t, const void *data, size_t len, int64_t deadline_ns)
{
    if (!t || (!data && len))
        return LMQ_EARG;
    int rc = ready(t);
    if (rc < 0)
        return rc;
    /* Traced before the write, so a command that then times out still shows. */
    lmq_log_hex(t->log, t->source, "tx", data, len);
    if (len == 0)
        return 0;
    bool by_cap;
    int64_t dl = capped(t, deadline_ns, &by_cap);
    return cap_result(t, t->ops->write(t, data, len, dl), by_cap, "write");
}

/* Raw read from the kind, traced. */
static int raw_read(lmq_transport_t *t, void *buf, size_t size, size_t *got, bool *eom, int64_t deadline_ns)
{
    *got = 0;
    *eom = false;
    bool by_cap;
    int64_t dl = capped(t, deadline_ns, &by_cap);
    int rc = cap_result(t, t->ops->read(t, buf, size, got, eom, dl), by_cap, "read");
    if (rc == 0)
        lmq_log_hex(t->log, t->source, "rx", buf, *got);
    return rc;
}

/* Reads more into the read-ahead buffer (which must have room). */
static int fill(lmq_transport_t *t, int64_t deadline_ns)
{
    if (t->rpos == t->rlen)
        t->rpos = t->rlen = 0;
    if (t->rpos > 0 && t->rlen == sizeof t->rbuf) {
        memmove(t->rbuf, t->rbuf + t->rpos, t->rlen - t->rpos);
        t->rlen -= t->rpos;
        t->rpos = 0;
    }
    size_t got;
    bool eom;
    int rc = raw_read(t, t->rbuf + t->rlen, sizeof t->rbuf - t->rlen, &got, &eom, deadline_ns);
    if (rc < 0)
        return rc;
    t->rlen += got;
    t->reom = eom;
    return 0;
}

/* Takes n buffered bytes; the message end goes with the last of them. */
static void consume(lmq_transport_t *t, size_t n)
{
    t->rpos += n;
    if (t->rpos == t->rlen) {
        t->rpos = t->rlen = 0;
        t->reom = false;
    }
}

int lmq_transport_read(lmq_transport_t *t, void *buf, size_t size, size_t *got, bool *eom, int64_t deadline_ns)
{
    bool eom_local;
    size_t got_local;
    if (!eom)
        eom = &eom_local;
    if (!got)
        got = &got_local;
    *got = 0;
    *eom = false;
    if (!t || !buf || size == 0)
        return LMQ_EARG;
    if (t->rlen > t->rpos || t->reom) {
        size_t n = t->rlen - t->rpos < size ? t->rlen - t->rpos : size;
        memcpy(buf, t->rbuf + t->rpos, n);
        *got = n;
        *eom = t->reom && t->rpos + n == t->rlen;
        if (*eom)
            t->reom = false;
        consume(t, n);
        return 0;
    }
    int rc = ready(t);
    if (rc < 0)
        return rc;
    return raw_read(t, buf, size, got, eom, deadline_ns);
}

int lmq_transport_read_line(lmq_transport_t *t, char *buf, size_t size, size_t *len, const char *term,
                            int64_t deadline_ns)
{
    if (len)
        *len = 0;
    if (!t || !buf || size == 0)
        return LMQ_EARG;
    buf[0] = '\0';
    size_t tl = term ? strlen(term) : 0;
    if (tl == 0 || tl > TERM_MAX)
        return lmq__transport_fail(t, LMQ_EARG, "read_line: the terminator must be 1 to %d bytes", TERM_MAX);
    int rc;
    size_t out = 0;   /* bytes stored in buf */
    size_t total = 0; /* bytes of this line seen */
    size_t scan = t->rpos;
    for (;;) {
        const unsigned char *hit = memmem(t->rbuf + scan, t->rlen - scan, term, tl);
        size_t n = hit ? (size_t)(hit - (t->rbuf + t->rpos)) : t->rlen - t->rpos;
        if (hit || t->reom || t->rlen - t->rpos == sizeof t->rbuf) {
            /* Move the line (or, when the buffer is full, all but what could
             * start a terminator) out of the buffer. */
            size_t take = (hit || t->reom) ? n : n - (tl - 1);
            size_t fit = out + take <= size - 1 ? take : size - 1 - out;
            memcpy(buf + out, t->rbuf + t->rpos, fit);
            out += fit;
            total += take;
            bool done = hit || t->reom;
            consume(t, take + (hit ? tl : 0));
            if (done) {
                if (!hit)
                    t->reom = false; /* the message end was this line's end */
                break;
            }
        }
        if (t->rpos > 0 && t->rlen > t->rpos) {
            memmove(t->rbuf, t->rbuf + t->rpos, t->rlen - t->rpos);
            t->rlen -= t->rpos;
            t->rpos = 0;
        }
        /* A terminator can only begin in the last tl-1 old bytes or later. */
        scan = t->rlen - t->rpos >= tl - 1 ? t->rlen - (tl - 1) : t->rpos;
        rc = ready(t);
        if (rc == 0)
            rc = fill(t, deadline_ns);
        if (rc < 0) {
            buf[out] = '\0';
            if (len)
                *len = out;
            if (rc == LMQ_ETIMEOUT && total > size - 1) {
                /* Its tail goes too: it must not pass for the next line. */
                total += t->rlen - t->rpos;
                t->rpos = t->rlen = 0;
                return lmq__transport_fail(
                    t, LMQ_ERANGE, "line longer than %zu bytes (%zu received, no terminator before the deadline)",
                    size - 1, total);
            }
            return rc;
        }
    }
    buf[out] = '\0';
    if (len)
        *len = out;
    if (total > size - 1)
        return lmq__transport_fail(t, LMQ_ERANGE, "line of %zu bytes does not fit in %zu", total, size - 1);
    return 0;
}

int lmq_transport_read_exact(lmq_transport_t *t, void *buf, size_t n, int64_t deadline_ns)
{
    if (!t || (!buf && n))
        return LMQ_EARG;
    unsigned char *p = buf;
    size_t have = 0;
    while (have < n) {
        size_t avail = t->rlen - t->rpos;
        if (avail) {
            size_t k = avail < n - have ? avail : n - have;
            memcpy(p + have, t->rbuf + t->rpos, k);
            have += k;
            consume(t, k);
            continue;
        }
        t->reom = false; /* an empty message end carries no bytes */
        int rc = ready(t);
        if (rc < 0)
            return rc;
        if (n - have >= sizeof t->rbuf) {
            /* Large blocks go straight into the caller's buffer. */
            size_t got;
            bool eom;
            rc = raw_read(t, p + have, n - have, &got, &eom, deadline_ns);
            if (rc < 0)
                return rc;
            have += got;
        } else if ((rc = fill(t, deadline_ns)) < 0) {
            return rc;
        }
    }
    return 0;
}

int lmq_transport_clear(lmq_transport_t *t, int quiet_ms, int64_t deadline_ns)
{
    if (!t)
        return LMQ_EARG;
    if (quiet_ms < 0)
        return lmq__transport_fail(t, LMQ_EARG, "clear: negative quiet time %d ms", quiet_ms);
    if (t->rlen > t->rpos) {
        lmq_log(t->log, LMQ_LOG_DEBUG, t->source, "clear: dropped %zu buffered bytes", t->rlen - t->rpos);
    }
    t->rpos = t->rlen = 0;
    t->reom = false;
    int rc = ready(t);
    if (rc < 0)
        return rc;
    return t->ops->clear(t, quiet_ms, deadline_ns);
}

int lmq_transport_status_byte(lmq_transport_t *t, uint8_t *stb, int64_t deadline_ns)
{
    if (!t || !stb)
        return LMQ_EARG;
    if (!t->ops->status_byte)
        return lmq__transport_fail(t, LMQ_EARG, "a %s transport has no status byte (USBTMC only)", t->ops->kind);
    int rc = ready(t);
    if (rc < 0)
        return rc;
    bool by_cap;
    int64_t dl = capped(t, deadline_ns, &by_cap);
    return cap_result(t, t->ops->status_byte(t, stb, dl), by_cap, "read the status byte");
}

int lmq_transport_scan(lmq_port_fn fn, void *user, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!fn) {
        if (err && errlen)
            snprintf(err, errlen, "lmq_transport_scan: no callback given");
        return LMQ_EARG;
    }
    int serial = lmq__transport_scan_serial(fn, user, err, errlen);
    if (serial < 0)
        return serial;
    int usbtmc = lmq__transport_scan_usbtmc(fn, user, err, errlen);
    if (usbtmc < 0)
        return usbtmc;
    return serial + usbtmc;
}
