/* The TCP transport (tcp:HOST:PORT): a raw stream socket to an instrument's
 * port (e.g. SCPI on 5025), connected without blocking past the open
 * deadline. The common layer's buffering reassembles replies split across
 * segments. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "labmq/driver.h"
#include "transport_internal.h"

typedef struct tcp {
    int fd;
} tcp_t;

/* Splits "HOST:PORT" / "[V6]:PORT" into host and port. */
static int parse(lmq_transport_t *t, const char *rest, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *hs = rest, *he, *ps;
    if (rest[0] == '[') {
        hs = rest + 1;
        he = strchr(hs, ']');
        if (!he || he[1] != ':')
            return lmq__transport_fail(t, LMQ_EARG, "expected tcp:[IPv6]:PORT");
        ps = he + 2;
    } else {
        he = strrchr(rest, ':');
        if (!he)
            return lmq__transport_fail(t, LMQ_EARG, "expected tcp:HOST:PORT (no port)");
        if (memchr(rest, ':', (size_t)(he - rest)))
            return lmq__transport_fail(t, LMQ_EARG, "an IPv6 address goes in brackets: tcp:[::1]:PORT");
        ps = he + 1;
    }
    if (he == hs)
        return lmq__transport_fail(t, LMQ_EARG, "expected tcp:HOST:PORT (no host)");
    if ((size_t)(he - hs) >= hostlen)
        return lmq__transport_fail(t, LMQ_EARG, "host name too long");
    char *end;
    errno = 0;
    long p = *ps >= '0' && *ps <= '9' ? strtol(ps, &end, 10) : -1;
    if (p < 1 || p > 65535 || *end || errno)
        return lmq__transport_fail(t, LMQ_EARG, "port '%s' is not a number from 1 to 65535", ps);
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = '\0';
    snprintf(port, portlen, "%ld", p);
    return 0;
}

/* One connect attempt to one address; returns 0 or an errno (ETIMEDOUT
 * when the deadline passed, ECANCELED when cancelled). */
static int try_connect(lmq_transport_t *t, const struct addrinfo *ai, int64_t deadline_ns, int *fdp)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0)
        return errno;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        int e = errno;
        if (e != EINPROGRESS) {
            close(fd);
            return e;
        }
        for (;;) {
            if (lmq__transport_cancelled(t)) {
                close(fd);
                return ECANCELED;
            }
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int rc = poll(&p, 1, lmq__transport_slice_ms(deadline_ns));
            if (rc > 0)
                break;
            if (rc < 0 && errno != EINTR) {
                e = errno;
                close(fd);
                return e;
            }
            if (lmq_clock_mono_ns() >= deadline_ns) {
                close(fd);
                return ETIMEDOUT;
            }
        }
        socklen_t len = sizeof e;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
            e = errno;
        if (e) {
            close(fd);
            return e;
        }
    }
    *fdp = fd;
    return 0;
}

static int tcp_open(lmq_transport_t *t, const char *rest, int64_t deadline_ns)
{
    char host[256], port[8];
    int rc = parse(t, rest, host, sizeof host, port, sizeof port);
    if (rc < 0)
        return rc;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    /* Name resolution cannot be bounded by the deadline; numeric hosts and
     * /etc/hosts names resolve at once. */
    int g = getaddrinfo(host, port, &hints, &res);
    if (g == EAI_NONAME || g == EAI_NODATA || g == EAI_FAIL || g == EAI_AGAIN || g == EAI_ADDRFAMILY)
        return lmq__transport_fail(t, LMQ_ENOTFOUND, "unknown host '%s' (%s)", host, gai_strerror(g));
    if (g == EAI_MEMORY)
        return lmq__transport_fail(t, LMQ_EMEM, "out of memory resolving '%s'", host);
    if (g)
        return lmq__transport_fail(t, LMQ_EIO, "cannot resolve '%s': %s", host, g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
    int fd = -1, e = 0;
    for (const struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        int ae = try_connect(t, ai, deadline_ns, &fd);
        /* Keep the most telling reason: a refusal or a timeout over a
         * family the machine lacks. */
        if (ae && (e == 0 || e == EAFNOSUPPORT || e == EADDRNOTAVAIL || e == ENETUNREACH))
            e = ae;
        if (ae == ETIMEDOUT || ae == ECANCELED)
            break;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        if (e == ECANCELED)
            return lmq__transport_fail(t, LMQ_ECLOSED, "cancelled while connecting");
        if (e == ETIMEDOUT)
            return lmq__transport_fail(t, LMQ_ETIMEOUT, "no answer before the open deadline");
        if (e == ECONNREFUSED)
            return lmq__transport_fail(t, LMQ_EIO, "connection refused (nothing listening on that port?)");
        if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM)
            return lmq__transport_fail(t, LMQ_ESYS, "socket: %s", strerror(e));
        return lmq__transport_fail(t, LMQ_EIO, "cannot connect: %s", strerror(e));
    }
    int one = 1;
    /* Commands are small and latency matters more than packing. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* An instrument that vanishes without a FIN is found out eventually. */
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    tcp_t *c = malloc(sizeof *c);
    if (!c) {
        close(fd);
        return lmq__transport_fail(t, LMQ_EMEM, "out of memory");
    }
    c->fd = fd;
    t->impl = c;
    return 0;
}

static void tcp_close(lmq_transport_t *t)
{
    tcp_t *c = t->impl;
    close(c->fd);
    free(c);
    t->impl = NULL;
}

static int sock_error(lmq_transport_t *t, const char *op, int e)
{
    if (e == ECONNRESET)
        return lmq__transport_fail(t, LMQ_EIO, "connection reset by the peer");
    if (e == EPIPE)
        return lmq__transport_fail(t, LMQ_EIO, "connection closed by the peer");
    return lmq__transport_fail(t, LMQ_EIO, "%s: %s", op, strerror(e));
}

static int tcp_write(lmq_transport_t *t, const void *data, size_t len, int64_t deadline_ns)
{
    tcp_t *c = t->impl;
    const char *p = data;
    while (len) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return sock_error(t, "send", errno);
        short rev;
        int rc = lmq__transport_poll(t, c->fd, POLLOUT, &rev, deadline_ns);
        if (rc < 0)
            return rc;
        if ((rev & (POLLERR | POLLHUP)) && !(rev & POLLOUT)) {
            int e = 0;
            socklen_t l = sizeof e;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &l);
            return e ? sock_error(t, "send", e) : lmq__transport_fail(t, LMQ_EIO, "connection closed by the peer");
        }
    }
    return 0;
}

static int tcp_read(lmq_transport_t *t, void *buf, size_t size, size_t *got, bool *eom, int64_t deadline_ns)
{
    tcp_t *c = t->impl;
    (void)eom;
    bool hup = false;
    for (;;) {
        ssize_t n = recv(c->fd, buf, size, MSG_DONTWAIT);
        if (n > 0) {
            *got = (size_t)n;
            return 0;
        }
        if (n == 0)
            return lmq__transport_fail(t, LMQ_EIO, "connection closed by the peer");
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return sock_error(t, "recv", errno);
        if (hup)
            return lmq__transport_fail(t, LMQ_EIO, "connection closed by the peer");
        short rev;
        int rc = lmq__transport_poll(t, c->fd, POLLIN, &rev, deadline_ns);
        if (rc < 0)
            return rc;
        /* The next recv tells data from FIN from error. */
        hup = rev & (POLLERR | POLLHUP);
    }
}

static int tcp_clear(lmq_transport_t *t, int quiet_ms, int64_t deadline_ns)
{
    return lmq__transport_drain(t, quiet_ms, deadline_ns);
}

static int tcp_check(lmq_transport_t *t)
{
    const tcp_t *c = t->impl;
    return lmq__transport_check_fd(t, c->fd);
}

const lmq__transport_ops_t lmq__transport_tcp = {
    .kind = "tcp",
    .open = tcp_open,
    .close = tcp_close,
    .write = tcp_write,
    .read = tcp_read,
    .clear = tcp_clear,
    .status_byte = NULL,
    .check = tcp_check,
};
