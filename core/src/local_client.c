/* The local channel, client side (docs/protocol.md 6): one SOCK_SEQPACKET
 * connection to a device thread; requests go as one record each, replies
 * come as one or more records (reassembled here). Used by lmq_proxy. */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include "labmq/labmq.h"
#include "local.h"

#define MAX_FRAMES (1 + LMQ__MAX_BINFRAMES)

int64_t lmq__local_spin_ns(void)
{
    const char *e = getenv("LABMQ_LOCAL_SPIN_US");
    long us = LMQ__LOCAL_SPIN_US_DEFAULT;
    if (e && *e >= '0' && *e <= '9') {
        char *end;
        long v = strtol(e, &end, 10);
        if (*end == 0 && v >= 0 && v <= LMQ__LOCAL_SPIN_US_MAX)
            us = v; /* anything else: the default, as for an unset variable */
    }
    return sysconf(_SC_NPROCESSORS_ONLN) > 1 ? (int64_t)us * 1000 : 0;
}

void lmq__spin_init(lmq__spin_t *s) { *s = (lmq__spin_t){.window_ns = lmq__local_spin_ns(), .on = true}; }

bool lmq__spin_allowed(const lmq__spin_t *s) { return s->on && s->window_ns > 0; }

bool lmq__spin_yield(lmq__spin_t *s, int64_t start)
{
    int64_t t0 = lmq_clock_mono_ns();
    sched_yield();
    int64_t t1 = lmq_clock_mono_ns();
    if (t1 - t0 > LMQ__SPIN_BUSY_NS) {
        s->on = false;
        s->hold_until = t1 + LMQ__SPIN_HOLD_NS;
        return false;
    }
    if (t1 - start >= s->window_ns) {
        s->on = false;
        return false;
    }
    return true;
}

void lmq__spin_slept(lmq__spin_t *s, int64_t waited_ns)
{
    if (!s->on && s->window_ns > 0 && waited_ns < s->window_ns && lmq_clock_mono_ns() >= s->hold_until)
        s->on = true;
}
/* A reply may not be larger than the protocol allows a message to be. */
#define MAX_MESSAGE ((size_t)LMQ__MAX_HEADER + LMQ__MAX_BINFRAMES * (size_t)LMQ__MAX_FRAME + 4096)

struct lmq__lchan {
    int fd;
    size_t record_max; /* the smaller of the daemon's limit and our send buffer's */
    unsigned char *rbuf;
    unsigned char *acc; /* a reply of several records, so far */
    size_t acc_len, acc_cap;
};

lmq__lchan_t *lmq__lchan_connect(const char *path, size_t record_max, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (!path || strlen(path) >= sizeof sa.sun_path || record_max < 64) {
        snprintf(err, errlen, "local channel: unusable path or record size");
        errno = EINVAL;
        return NULL;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    lmq__lchan_t *ch = calloc(1, sizeof *ch);
    if (!ch || !(ch->rbuf = malloc(LMQ__LOCAL_RECORD_MAX + 1))) {
        free(ch);
        snprintf(err, errlen, "local channel: out of memory");
        errno = ENOMEM;
        return NULL;
    }
    ch->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (ch->fd < 0 || connect(ch->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        snprintf(err, errlen, "local channel %s: %s", path, strerror(e));
        lmq__lchan_close(&ch);
        errno = e;
        return NULL;
    }
    int sndbuf = 0;
    socklen_t len = sizeof sndbuf;
    ch->record_max = record_max < LMQ__LOCAL_RECORD_MAX ? record_max : LMQ__LOCAL_RECORD_MAX;
    /* A record beyond the send buffer is refused (EMSGSIZE). */
    if (getsockopt(ch->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) == 0 && sndbuf > 64 &&
        (size_t)sndbuf - 64 < ch->record_max)
        ch->record_max = (size_t)sndbuf - 64;
    return ch;
}

void lmq__lchan_close(lmq__lchan_t **pch)
{
    if (!pch || !*pch)
        return;
    lmq__lchan_t *ch = *pch;
    if (ch->fd >= 0)
        close(ch->fd);
    free(ch->rbuf);
    free(ch->acc);
    free(ch);
    *pch = NULL;
}

int lmq__lchan_fd(const lmq__lchan_t *ch) { return ch ? ch->fd : -1; }

/* Waits for events on the socket; 0 when they came, LMQ_ETIMEOUT. */
static int wait_for(int fd, short events, int timeout_ms)
{
    struct pollfd pf = {.fd = fd, .events = events};
    int64_t deadline = lmq_clock_mono_ns() + (int64_t)timeout_ms * 1000000;
    for (;;) {
        int64_t left = (deadline - lmq_clock_mono_ns() + 999999) / 1000000;
        int n = poll(&pf, 1, left > 0 ? (int)left : 0);
        if (n > 0)
            return 0;
        if (n == 0 || errno != EINTR)
            return LMQ_ETIMEOUT;
    }
}

int lmq__lchan_send(lmq__lchan_t *ch, zmq_msg_t *hdr, const lmq__frames_t *bin, int timeout_ms)
{
    size_t nb = bin ? bin->n : 0, n = 1 + nb, lens[MAX_FRAMES];
    lens[0] = zmq_msg_size(hdr);
    size_t total = 1 + LMQ__LOCAL_TABLE(n) + lens[0];
    for (size_t i = 0; i < nb; i++)
        total += lens[1 + i] = zmq_msg_size((zmq_msg_t *)&bin->msg[i]);
    if (total > ch->record_max)
        return 1;
    unsigned char pre[1 + LMQ__LOCAL_TABLE(MAX_FRAMES)];
    pre[0] = 0;
    lmq__local_put_table(pre + 1, lens, n);
    struct iovec iov[1 + MAX_FRAMES];
    iov[0] = (struct iovec){pre, 1 + LMQ__LOCAL_TABLE(n)};
    iov[1] = (struct iovec){zmq_msg_data(hdr), lens[0]};
    for (size_t i = 0; i < nb; i++)
        iov[2 + i] = (struct iovec){zmq_msg_data((zmq_msg_t *)&bin->msg[i]), lens[1 + i]};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 1 + n};
    int64_t deadline = lmq_clock_mono_ns() + (int64_t)timeout_ms * 1000000;
    for (;;) {
        if (sendmsg(ch->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EMSGSIZE)
            return 1;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS)
            return LMQ_ECLOSED; /* EPIPE, ECONNRESET, ECONNREFUSED: the daemon's end is gone */
        int left = (int)((deadline - lmq_clock_mono_ns()) / 1000000);
        if (left <= 0 || wait_for(ch->fd, POLLOUT, left) != 0)
            return LMQ_ETIMEOUT;
    }
}

static int take_message(const unsigned char *msg, size_t len, zmq_msg_t *hdr, lmq__frames_t *bin, char *err,
                        size_t errlen)
{
    const unsigned char *frame[MAX_FRAMES];
    size_t flen[MAX_FRAMES], nf;
    int rc = lmq__local_split(msg, len, frame, flen, &nf, err, errlen);
    if (rc != 0)
        return rc;
    if (zmq_msg_init_size(hdr, flen[0]) != 0) {
        zmq_msg_init(hdr);
        snprintf(err, errlen, "out of memory");
        return LMQ_EMEM;
    }
    memcpy(zmq_msg_data(hdr), frame[0], flen[0]);
    for (size_t i = 1; i < nf; i++) {
        if (zmq_msg_init_size(&bin->msg[bin->n], flen[i]) != 0) {
            snprintf(err, errlen, "out of memory");
            return LMQ_EMEM;
        }
        memcpy(zmq_msg_data(&bin->msg[bin->n]), frame[i], flen[i]);
        bin->n++;
    }
    return 0;
}

int lmq__lchan_recv(lmq__lchan_t *ch, int timeout_ms, bool ready, zmq_msg_t *hdr, lmq__frames_t *bin, char *err,
                    size_t errlen)
{
    int64_t deadline = lmq_clock_mono_ns() + (int64_t)timeout_ms * 1000000;
    zmq_msg_init(hdr);
    /* Unless the caller has seen it readable, waiting first saves a
     * receive that would only say EAGAIN: a reply is rarely there before
     * the call has waited. */
    if (!ready && wait_for(ch->fd, POLLIN, timeout_ms) != 0)
        return LMQ_ETIMEOUT;
    for (;;) {
        ssize_t n = recv(ch->fd, ch->rbuf, LMQ__LOCAL_RECORD_MAX + 1, MSG_DONTWAIT | MSG_TRUNC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int left = (int)((deadline - lmq_clock_mono_ns() + 999999) / 1000000);
            if (left <= 0 || wait_for(ch->fd, POLLIN, left) != 0)
                return LMQ_ETIMEOUT;
            continue;
        }
        if (n <= 0) {
            snprintf(err, errlen, "the daemon closed the local channel");
            return LMQ_ECLOSED;
        }
        if (n > LMQ__LOCAL_RECORD_MAX || (ch->rbuf[0] & ~LMQ__LOCAL_MORE)) {
            snprintf(err, errlen, "local channel: a malformed record from the daemon (%zd bytes, flags 0x%02x)", n,
                     ch->rbuf[0]);
            return LMQ_EPROTO;
        }
        bool more = ch->rbuf[0] & LMQ__LOCAL_MORE;
        size_t len = (size_t)n - 1;
        if (!more && ch->acc_len == 0) /* the usual case: one record */
            return take_message(ch->rbuf + 1, len, hdr, bin, err, errlen);
        if (ch->acc_len + len > MAX_MESSAGE) {
            snprintf(err, errlen, "local channel: a reply beyond %zu bytes", MAX_MESSAGE);
            return LMQ_EPROTO;
        }
        if (ch->acc_len + len > ch->acc_cap) {
            size_t cap = ch->acc_cap ? ch->acc_cap : 262144;
            while (cap < ch->acc_len + len)
                cap *= 2;
            unsigned char *na = realloc(ch->acc, cap);
            if (!na) {
                snprintf(err, errlen, "out of memory");
                return LMQ_EMEM;
            }
            ch->acc = na;
            ch->acc_cap = cap;
        }
        memcpy(ch->acc + ch->acc_len, ch->rbuf + 1, len);
        ch->acc_len += len;
        if (!more) {
            int rc = take_message(ch->acc, ch->acc_len, hdr, bin, err, errlen);
            ch->acc_len = 0;
            return rc;
        }
    }
}
