/* The local channel, daemon side (docs/protocol.md 6): each device thread
 * listens on a Unix SOCK_SEQPACKET socket beside the daemon's ipc:// control
 * endpoint and serves call/get/set from clients on this host itself, with
 * the same checks (check.c), the same queue bound (the device's in_flight,
 * shared with the broker) and the same CLOSED answers at stop as the ZeroMQ
 * path. The thread waits with epoll on the pipe's ZMQ_FD and the sockets;
 * each source gets a bounded budget per turn of the loop so neither path can
 * starve the other. A client that does not read never blocks the thread:
 * replies are sent non-blocking (MSG_NOSIGNAL), wait in a per-client queue,
 * and while that queue is long the client's requests are not read. */
/* _GNU_SOURCE (accept4, struct ucred) comes from the build */
#include "local.h"
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include "auth_internal.h"
#include "labmq/labmq.h"

/* The broker's per-device bound (protocol 2.5); the two paths share it. */
#define QUEUE_LIMIT 1000
/* While more replies than this wait for a client, its requests stay unread
 * (in its socket: its own sends then block) instead of growing the queue. */
#define OUT_MAX_MSGS 256
#define OUT_MAX_BYTES ((size_t)16 << 20)
/* How long the replies of a stopping device may take to leave. */
#define STOP_FLUSH_MS 200
#define MAX_EVENTS 64
#define MAX_FRAMES (1 + LMQ__MAX_BINFRAMES)
/* Records taken from a client by one recvmmsg: a pipelining client costs
 * one system call per batch, and a drained socket needs no extra EAGAIN. */
#define RBATCH 8
#define RECSZ ((size_t)LMQ__LOCAL_RECORD_MAX + 1)

typedef struct outmsg {
    struct outmsg *next;
    size_t len, off;
    unsigned char data[]; /* the whole message: frame table, then frames */
} outmsg_t;

typedef struct lmq__lclient {
    struct lmq__lclient *next;
    int fd; /* -1 once gone; the struct lives on while its jobs run */
    struct ucred cred;
    uint64_t serial;
    bool readable, reading, writing; /* readiness seen; EPOLLIN / EPOLLOUT registered */
    size_t frag;                     /* largest record its socket takes */
    outmsg_t *out_head, *out_tail;
    size_t nout, out_bytes;
    size_t jobs; /* accepted and not answered */
} lclient_t;

struct lmq__local {
    int lfd, ep;
    atomic_bool listening; /* read by the broker (describe) */
    bool use_zmq_poll;     /* LABMQ_LOCAL_POLL=zmq: wait with zmq_poll instead of epoll (to compare) */
    zmq_pollitem_t *items;
    lclient_t **item_client;
    size_t items_cap;
    bool pipe_watched;
    bool pipe_readable; /* ZMQ_EVENTS said POLLIN when last asked */
    lmq__spin_t spin;       /* polling for the next request before sleeping */
    int64_t last_answer_ns; /* when the thread last answered a channel request */
    bool accept_ready;
    char path[sizeof(((struct sockaddr_un *)NULL)->sun_path)];
    dev_t sock_dev; /* the socket file this channel made (unlink_own) */
    ino_t sock_ino;
    lmq_log_t *log;
    lclient_t *clients;
    uint64_t serial;
    lmq__job_t *fifo_head, *fifo_tail; /* accepted jobs, oldest first (linked by next) */
    unsigned char *rbuf; /* RBATCH records of RECSZ bytes: a record and a byte to see truncation */
    /* written by the device thread, read by the broker (stats) */
    _Atomic uint64_t calls, errors, clients_now, clients_total;
};

typedef struct lmq__local local_t;

/* ---- framing ---- */

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void lmq__local_put_table(unsigned char *out, const size_t *lens, size_t n)
{
    put_u32(out, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        put_u32(out + 4 + 4 * i, (uint32_t)lens[i]);
}

int lmq__local_split(const unsigned char *msg, size_t len, const unsigned char **frame, size_t *flen, size_t *n,
                     char *err, size_t errlen)
{
    if (len < 4) {
        snprintf(err, errlen, "local channel: a message of %zu bytes has no frame count", len);
        return LMQ_EPROTO;
    }
    uint32_t nf = get_u32(msg);
    if (nf < 1 || nf > MAX_FRAMES) {
        snprintf(err, errlen, "local channel: %u frames; a message has 1 (the header) to %d", nf, MAX_FRAMES);
        return LMQ_EPROTO;
    }
    size_t off = LMQ__LOCAL_TABLE(nf);
    if (len < off) {
        snprintf(err, errlen, "local channel: the frame table of %u frames is cut short", nf);
        return LMQ_EPROTO;
    }
    for (uint32_t i = 0; i < nf; i++) {
        size_t l = get_u32(msg + 4 + 4 * i);
        if (l > len - off) {
            snprintf(err, errlen, "local channel: frame %u claims %zu bytes; %zu remain", i, l, len - off);
            return LMQ_EPROTO;
        }
        frame[i] = msg + off;
        flen[i] = l;
        off += l;
    }
    if (off != len) {
        snprintf(err, errlen, "local channel: %zu bytes after the last frame", len - off);
        return LMQ_EPROTO;
    }
    *n = nf;
    return 0;
}

/* ---- binding ---- */

static bool disabled_by_env(void)
{
    const char *e = getenv("LABMQ_NO_LOCAL");
    return e && *e && strcmp(e, "0") != 0;
}

/* Removes the socket file only if it is still the one this channel made:
 * after a reload the device's next instance may have bound the same path
 * (an abandoned, stuck instance that ends later must not take it away). */
static void unlink_own(const local_t *L)
{
    struct stat st;
    if (lstat(L->path, &st) == 0 && st.st_dev == L->sock_dev && st.st_ino == L->sock_ino)
        unlink(L->path);
}

void lmq__local_bind(lmq_dev_t *dev, const char *control, lmq_log_t *log)
{
    if (dev->local || strncmp(control, "ipc://", 6) != 0)
        return; /* tcp and inproc clients have no use for it */
    if (disabled_by_env()) {
        lmq_log(log, LMQ_LOG_DEBUG, dev->name, "no local channel: LABMQ_NO_LOCAL is set");
        return;
    }
    const char *path = control + 6, *slash = strrchr(path, '/');
    if (path[0] != '/' || !slash) {
        lmq_log(log, LMQ_LOG_INFO, dev->name, "no local channel: the control endpoint %s is not an absolute path",
                control);
        return;
    }
    char dir[4096];
    int dl = snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    struct stat st;
    /* Whoever reaches the socket drives the instrument: only a directory
     * that is ours and closed to others (the runtime directory) will do. */
    if (dl < 0 || (size_t)dl >= sizeof dir || lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) ||
        st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
        lmq_log(log, LMQ_LOG_WARN, dev->name,
                "no local channel: %s is not a directory of this user closed to others (mode 0700); clients use "
                "ZeroMQ",
                dir);
        return;
    }
    local_t *L = calloc(1, sizeof *L);
    if (!L || !(L->rbuf = malloc(RBATCH * RECSZ))) {
        if (L)
            free(L);
        lmq_log(log, LMQ_LOG_ERROR, dev->name, "no local channel: out of memory");
        return;
    }
    L->lfd = L->ep = -1;
    L->log = log;
    int n = snprintf(L->path, sizeof L->path, "%s/%s.%s.local", dir, slash + 1, dev->name);
    if (n < 0 || (size_t)n >= sizeof L->path) {
        lmq_log(log, LMQ_LOG_WARN, dev->name, "no local channel: %s/%s.%s.local is longer than a socket path may be",
                dir, slash + 1, dev->name);
        goto fail;
    }
    /* A socket left by a daemon that was killed is replaced (as ZeroMQ
     * does for ipc endpoints); anything else is not ours to remove. */
    if (lstat(L->path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            lmq_log(log, LMQ_LOG_WARN, dev->name, "no local channel: %s exists and is not a socket", L->path);
            goto fail;
        }
        unlink(L->path);
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, L->path, (size_t)n + 1);
    L->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    L->ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = L};
    if (L->lfd < 0 || L->ep < 0 || bind(L->lfd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        chmod(L->path, 0600) != 0 || listen(L->lfd, 128) != 0 || epoll_ctl(L->ep, EPOLL_CTL_ADD, L->lfd, &ev) != 0) {
        lmq_log(log, LMQ_LOG_WARN, dev->name, "no local channel at %s: %s", L->path, strerror(errno));
        unlink(L->path);
        goto fail;
    }
    if (lstat(L->path, &st) == 0) {
        L->sock_dev = st.st_dev;
        L->sock_ino = st.st_ino;
    }
    const char *how = getenv("LABMQ_LOCAL_POLL");
    L->use_zmq_poll = how && strcmp(how, "zmq") == 0;
    lmq__spin_init(&L->spin);
    atomic_store(&L->listening, true);
    dev->local = L;
    lmq_log(log, LMQ_LOG_INFO, dev->name, "local channel at %s%s", L->path, L->use_zmq_poll ? " (zmq_poll)" : "");
    return;
fail:
    if (L->lfd >= 0)
        close(L->lfd);
    if (L->ep >= 0)
        close(L->ep);
    free(L->rbuf);
    free(L);
}

void lmq__local_describe(lmq_dev_t *dev, json_t *obj)
{
    local_t *L = dev->local;
    if (obj && L && atomic_load(&L->listening))
        json_object_set_new(obj, "local", json_pack("{s:s, s:i}", "path", L->path, "record_max", LMQ__LOCAL_RECORD_MAX));
}

void lmq__local_stats(lmq_dev_t *dev, json_t *obj)
{
    local_t *L = dev->local;
    uint64_t lc = L ? atomic_load(&L->calls) : 0, le = L ? atomic_load(&L->errors) : 0;
    json_object_set_new(obj, "calls", json_integer((json_int_t)(dev->stats.calls + lc)));
    json_object_set_new(obj, "errors", json_integer((json_int_t)(dev->stats.errors + le)));
    json_object_set_new(obj, "calls_zmq", json_integer((json_int_t)dev->stats.calls));
    json_object_set_new(obj, "calls_local", json_integer((json_int_t)lc));
    json_object_set_new(obj, "local_clients", json_integer((json_int_t)(L ? atomic_load(&L->clients_now) : 0)));
}

bool lmq__local_job_peer(const lmq__job_t *job, uid_t *uid, gid_t *gid, pid_t *pid)
{
    if (!job || !job->lclient)
        return false;
    if (uid)
        *uid = job->lclient->cred.uid;
    if (gid)
        *gid = job->lclient->cred.gid;
    if (pid)
        *pid = job->lclient->cred.pid;
    return true;
}

/* ---- clients ---- */

static void set_interest(local_t *L, lclient_t *c, bool reading, bool writing)
{
    if (c->fd < 0 || (c->reading == reading && c->writing == writing))
        return;
    struct epoll_event ev = {.events = (reading ? EPOLLIN : 0) | (writing ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(L->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->reading = reading;
    c->writing = writing;
}

static void drop_output(lclient_t *c)
{
    while (c->out_head) {
        outmsg_t *m = c->out_head;
        c->out_head = m->next;
        free(m);
    }
    c->out_tail = NULL;
    c->nout = c->out_bytes = 0;
}

static void client_gone(local_t *L, lmq_dev_t *dev, lclient_t *c, const char *why)
{
    if (c->fd < 0)
        return;
    lmq_log(L->log, LMQ_LOG_DEBUG, dev->name, "local client #%llu (pid %ld, uid %ld) gone: %s",
            (unsigned long long)c->serial, (long)c->cred.pid, (long)c->cred.uid, why);
    epoll_ctl(L->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    drop_output(c);
    atomic_fetch_sub(&L->clients_now, 1);
}

/* Frees clients that are gone and have no job left. */
static void reap(local_t *L)
{
    for (lclient_t **link = &L->clients; *link;) {
        lclient_t *c = *link;
        if (c->fd < 0 && c->jobs == 0) {
            *link = c->next;
            free(c);
        } else
            link = &c->next;
    }
}

static void accept_clients(local_t *L, lmq_dev_t *dev)
{
    for (int k = 0; k < 16; k++) {
        int fd = accept4(L->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno != EINTR && errno != ECONNABORTED)
                L->accept_ready = false;
            if (errno == EMFILE || errno == ENFILE)
                lmq_log(L->log, LMQ_LOG_WARN, dev->name, "local channel: cannot accept a client: %s",
                        strerror(errno));
            if (L->accept_ready)
                continue;
            return;
        }
        lclient_t *c = calloc(1, sizeof *c);
        socklen_t len = sizeof c->cred;
        int sndbuf = 0;
        socklen_t blen = sizeof sndbuf;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (!c || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c->cred, &len) != 0 ||
            getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &blen) != 0 ||
            epoll_ctl(L->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            lmq_log(L->log, LMQ_LOG_WARN, dev->name, "local channel: cannot take a client: %s",
                    c ? strerror(errno) : "out of memory");
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->reading = true;
        c->serial = ++L->serial;
        /* The kernel refuses a record beyond the send buffer (EMSGSIZE). */
        c->frag = sndbuf > 4096 + 64 && (size_t)sndbuf - 64 < LMQ__LOCAL_RECORD_MAX ? (size_t)sndbuf - 64
                                                                                   : LMQ__LOCAL_RECORD_MAX;
        if (sndbuf <= 4096 + 64)
            c->frag = 4096;
        c->next = L->clients;
        L->clients = c;
        atomic_fetch_add(&L->clients_now, 1);
        atomic_fetch_add(&L->clients_total, 1);
        lmq_log(L->log, LMQ_LOG_DEBUG, dev->name, "local client #%llu: pid %ld, uid %ld, gid %ld",
                (unsigned long long)c->serial, (long)c->cred.pid, (long)c->cred.uid, (long)c->cred.gid);
    }
}

/* Sends what waits for c, record by record, until the socket is full. */
static void flush_out(local_t *L, lmq_dev_t *dev, lclient_t *c)
{
    while (c->fd >= 0 && c->out_head) {
        outmsg_t *m = c->out_head;
        size_t chunk = m->len - m->off;
        unsigned char flag = 0;
        if (chunk > c->frag - 1) {
            chunk = c->frag - 1;
            flag = LMQ__LOCAL_MORE;
        }
        struct iovec iov[2] = {{&flag, 1}, {m->data + m->off, chunk}};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
        if (sendmsg(c->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
                set_interest(L, c, c->reading, true);
                return;
            }
            if (errno == EMSGSIZE && c->frag > 4096) {
                c->frag /= 2;
                continue;
            }
            client_gone(L, dev, c, strerror(errno));
            return;
        }
        m->off += chunk;
        if (m->off == m->len) {
            c->out_head = m->next;
            if (!c->out_head)
                c->out_tail = NULL;
            c->nout--;
            c->out_bytes -= m->len;
            free(m);
        }
    }
    if (c->fd >= 0)
        set_interest(L, c, c->nout < OUT_MAX_MSGS / 2 && c->out_bytes < OUT_MAX_BYTES / 2 ? true : c->reading,
                     false);
}

/* Sends header + frames to c: at once when its socket takes them, else
 * queued. bin may be NULL; its frames are only read. */
static void send_msg(local_t *L, lmq_dev_t *dev, lclient_t *c, const void *hdr, size_t hlen, lmq__frames_t *bin)
{
    if (c->fd < 0)
        return; /* gone: like a ZeroMQ reply to a client that disconnected */
    size_t nb = bin ? bin->n : 0, n = 1 + nb, lens[MAX_FRAMES], total;
    lens[0] = hlen;
    for (size_t i = 0; i < nb; i++)
        lens[1 + i] = zmq_msg_size(&bin->msg[i]);
    total = LMQ__LOCAL_TABLE(n);
    for (size_t i = 0; i < n; i++)
        total += lens[i];
    unsigned char pre[1 + LMQ__LOCAL_TABLE(MAX_FRAMES)];
    pre[0] = 0;
    lmq__local_put_table(pre + 1, lens, n);
    if (!c->out_head && total + 1 <= c->frag) {
        struct iovec iov[1 + MAX_FRAMES];
        iov[0] = (struct iovec){pre, 1 + LMQ__LOCAL_TABLE(n)};
        iov[1] = (struct iovec){(void *)hdr, hlen};
        for (size_t i = 0; i < nb; i++)
            iov[2 + i] = (struct iovec){zmq_msg_data(&bin->msg[i]), lens[1 + i]};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 1 + n};
        ssize_t r;
        do
            r = sendmsg(c->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        while (r < 0 && errno == EINTR);
        if (r >= 0)
            return;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS && errno != EMSGSIZE) {
            client_gone(L, dev, c, strerror(errno));
            return;
        }
    }
    outmsg_t *m = malloc(sizeof *m + total);
    if (!m) {
        /* Losing one reply silently would leave the client waiting for it:
         * closing the connection tells it at once. */
        lmq_log(L->log, LMQ_LOG_ERROR, dev->name, "local channel: out of memory for a reply; closing the client");
        client_gone(L, dev, c, "out of memory");
        return;
    }
    m->next = NULL;
    m->len = total;
    m->off = 0;
    memcpy(m->data, pre + 1, LMQ__LOCAL_TABLE(n));
    size_t off = LMQ__LOCAL_TABLE(n);
    memcpy(m->data + off, hdr, hlen);
    off += hlen;
    for (size_t i = 0; i < nb; i++) {
        memcpy(m->data + off, zmq_msg_data(&bin->msg[i]), lens[1 + i]);
        off += lens[1 + i];
    }
    if (c->out_tail)
        c->out_tail->next = m;
    else
        c->out_head = m;
    c->out_tail = m;
    c->nout++;
    c->out_bytes += total;
    if (c->nout >= OUT_MAX_MSGS || c->out_bytes >= OUT_MAX_BYTES)
        set_interest(L, c, false, c->writing); /* back-pressure: stop reading its requests */
    flush_out(L, dev, c);
}

/* The audit line of a state-changing request (as the broker writes it for
 * the control endpoint): the channel's client is named by its uid and pid. */
static void audit(const local_t *L, const lclient_t *c, const lmq__request_t *req, int status, const char *msg,
                  int64_t elapsed_ns)
{
    if (!req || !req->device || !lmq__op_changes_state(req->op))
        return;
    char peer[64];
    snprintf(peer, sizeof peer, "local uid %ld pid %ld", (long)c->cred.uid, (long)c->cred.pid);
    lmq__audit(L->log, peer, req, status, msg, elapsed_ns);
}

static void reply_error(local_t *L, lmq_dev_t *dev, lclient_t *c, const lmq__request_t *req, int status,
                        const char *msg)
{
    audit(L, c, req, status, msg, 0);
    zmq_msg_t hdr;
    if (lmq__reply_error(&hdr, req && req->has_id, req ? req->id : 0, status, msg) != 0)
        return;
    send_msg(L, dev, c, zmq_msg_data(&hdr), zmq_msg_size(&hdr), NULL);
    zmq_msg_close(&hdr);
}

/* Checks one request as the broker does (protocol 2.1, 2.2, 2.5) and
 * queues it, or answers the failure at once. */
static void admit(local_t *L, lmq_dev_t *dev, lclient_t *c, const unsigned char **frame, const size_t *flen,
                  size_t nframes)
{
    lmq__request_t req = {0};
    char err[700];
    size_t nbin = nframes - 1;
    if (lmq__request_parse(frame[0], flen[0], nbin, &req, err, sizeof err) != 0) {
        reply_error(L, dev, c, &req, LMQ_EPROTO, err);
        goto done;
    }
    if (req.op != LMQ__OP_CALL && req.op != LMQ__OP_SET && nbin) {
        reply_error(L, dev, c, &req, LMQ_EPROTO, "this op takes no binary frames");
        goto done;
    }
    if (req.op != LMQ__OP_CALL && req.op != LMQ__OP_GET && req.op != LMQ__OP_SET) {
        snprintf(err, sizeof err, "op '%s' is not served on a device's local channel: send it to the control endpoint",
                 lmq__op_name(req.op));
        reply_error(L, dev, c, &req, LMQ_EPROTO, err);
        goto done;
    }
    if (strcmp(req.device, dev->name) != 0) {
        snprintf(err, sizeof err, "no device '%.64s' on this local channel (it serves '%s')", req.device, dev->name);
        reply_error(L, dev, c, &req, LMQ_ENOTFOUND, err);
        goto done;
    }
    const lmq_method_t *method;
    const lmq_property_t *prop;
    int target = lmq__dev_target(dev, req.op == LMQ__OP_CALL, req.op == LMQ__OP_SET, req.name, &method, &prop, err,
                                 sizeof err);
    if (target != 0) {
        reply_error(L, dev, c, &req, target, err);
        goto done;
    }
    /* Locks and their leases are the broker's (protocol 2.6): a locked
     * device's set and call go through it, the holder's too (the C proxy
     * leaves the channel while it holds a lock). */
    if (req.op != LMQ__OP_GET && dev->lock_holder[0]) {
        snprintf(err, sizeof err,
                 "%s is locked by '%.200s'; the local channel does not carry set or call to a locked device (its "
                 "holder sends them to the control endpoint)",
                 dev->name, dev->lock_holder);
        reply_error(L, dev, c, &req, LMQ_ELOCKED, err);
        goto done;
    }
    if (req.deadline_ms == 0) {
        snprintf(err, sizeof err, "%s %s.%s: deadline passed before the device ran it (deadline_ms 0)",
                 lmq__op_name(req.op), req.device, req.name);
        reply_error(L, dev, c, &req, LMQ_ETIMEOUT, err);
        goto done;
    }
    /* One bound for both paths: the broker counts into the same in_flight. */
    uint64_t cur = atomic_load(&dev->stats.in_flight);
    do {
        if (cur >= QUEUE_LIMIT) {
            snprintf(err, sizeof err, "%s is not answering: %d requests already queued", dev->name, QUEUE_LIMIT);
            reply_error(L, dev, c, &req, LMQ_ETIMEOUT, err);
            goto done;
        }
    } while (!atomic_compare_exchange_weak(&dev->stats.in_flight, &cur, cur + 1));
    lmq__job_t *job = calloc(1, sizeof *job);
    if (!job) {
        atomic_fetch_sub(&dev->stats.in_flight, 1);
        reply_error(L, dev, c, &req, LMQ_EMEM, "out of memory");
        goto done;
    }
    zmq_msg_init(&job->reply);
    lmq__frames_init(&job->reply_bin);
    job->dev = dev;
    job->method = method;
    job->prop = prop;
    job->req = req;
    memset(&req, 0, sizeof req);
    /* The frames stay in the record buffer: the check copies what it keeps. */
    lmq__frames_t bin;
    bin.n = nbin;
    for (size_t i = 0; i < nbin; i++)
        zmq_msg_init_data(&bin.msg[i], (void *)frame[1 + i], flen[1 + i], NULL, NULL);
    int rc = lmq__check_request(dev, job, &bin, err, sizeof err);
    lmq__frames_close(&bin);
    if (rc != 0) {
        atomic_fetch_sub(&dev->stats.in_flight, 1);
        reply_error(L, dev, c, &job->req, rc, err);
        lmq__job_destroy(&job);
        goto done;
    }
    /* Access roles (the trust work) decide here, by lmq__local_job_peer's uid. */
    job->lclient = c;
    c->jobs++;
    job->t_start = lmq_clock_mono_ns();
    job->deadline_ns = job->req.deadline_ms > 0 ? job->t_start + job->req.deadline_ms * 1000000 : 0;
    job->next = NULL;
    if (L->fifo_tail)
        L->fifo_tail->next = job;
    else
        L->fifo_head = job;
    L->fifo_tail = job;
done:
    lmq__request_clear(&req);
}

/* Answers or admits one record of n bytes (its real length: more than the
 * buffer when the kernel truncated it). */
static void take_record(local_t *L, lmq_dev_t *dev, lclient_t *c, const unsigned char *rec, size_t n)
{
    char err[300];
    if (n > LMQ__LOCAL_RECORD_MAX) {
        snprintf(err, sizeof err,
                 "local channel: a record of %zu bytes is larger than the %d the channel carries; send it over ZeroMQ",
                 n, LMQ__LOCAL_RECORD_MAX);
        reply_error(L, dev, c, NULL, LMQ_EPROTO, err);
        return;
    }
    if (rec[0] != 0) {
        snprintf(err, sizeof err, "local channel: a request must be one record with flag byte 0 (got 0x%02x)",
                 rec[0]);
        reply_error(L, dev, c, NULL, LMQ_EPROTO, err);
        return;
    }
    const unsigned char *frame[MAX_FRAMES];
    size_t flen[MAX_FRAMES], nf;
    if (lmq__local_split(rec + 1, n - 1, frame, flen, &nf, err, sizeof err) != 0) {
        reply_error(L, dev, c, NULL, LMQ_EPROTO, err);
        return;
    }
    admit(L, dev, c, frame, flen, nf);
}

/* Reads up to max records from c in one call: how many were read (fewer
 * than max: the socket is drained), or -1 when the client is gone. */
static int read_batch(local_t *L, lmq_dev_t *dev, lclient_t *c, int max)
{
    struct mmsghdr mv[RBATCH];
    struct iovec iov[RBATCH];
    if (max > RBATCH)
        max = RBATCH;
    for (int i = 0; i < max; i++) {
        iov[i] = (struct iovec){L->rbuf + (size_t)i * RECSZ, RECSZ};
        mv[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iov[i], .msg_iovlen = 1}};
    }
    int n;
    do
        n = recvmmsg(c->fd, mv, (unsigned)max, MSG_DONTWAIT | MSG_TRUNC, NULL);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        c->readable = false;
        return 0;
    }
    if (n < 0) {
        client_gone(L, dev, c, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (mv[i].msg_len == 0) { /* a record is never empty: 0 is the end of the connection */
            client_gone(L, dev, c, "closed");
            return -1;
        }
        take_record(L, dev, c, L->rbuf + (size_t)i * RECSZ, mv[i].msg_len);
        if (c->fd < 0)
            return -1;
    }
    if (n < max)
        c->readable = false;
    return n;
}

static lmq__job_t *fifo_pop(local_t *L)
{
    lmq__job_t *job = L->fifo_head;
    if (job) {
        L->fifo_head = job->next;
        if (!L->fifo_head)
            L->fifo_tail = NULL;
        job->next = NULL;
    }
    return job;
}

/* Sends a finished job's reply and frees it. */
static void answer(local_t *L, lmq_dev_t *dev, lmq__job_t *job)
{
    lclient_t *c = job->lclient;
    atomic_fetch_add(&L->calls, 1);
    if (job->failed)
        atomic_fetch_add(&L->errors, 1);
    bool oom = zmq_msg_size(&job->reply) == 0;
    if (!oom) /* (an oom reply is audited by reply_error) */
        audit(L, c, &job->req, job->failed ? job->status : 0, job->fail_msg, lmq_clock_mono_ns() - job->t_start);
    if (oom)
        reply_error(L, dev, c, &job->req, LMQ_EMEM, "out of memory encoding the reply");
    else
        send_msg(L, dev, c, zmq_msg_data(&job->reply), zmq_msg_size(&job->reply), &job->reply_bin);
    atomic_fetch_sub(&dev->stats.in_flight, 1);
    c->jobs--;
    lmq__job_destroy(&job);
}

/* ---- the device thread ---- */

/* The same wait with zmq_poll over the pipe, the listener and the clients
 * (LABMQ_LOCAL_POLL=zmq), kept to measure one against the other. */
static int wait_zmq_poll(local_t *L, lmq_dev_t *dev, long timeout_ms)
{
    size_t n = 2;
    for (lclient_t *c = L->clients; c; c = c->next)
        n += c->fd >= 0;
    if (n > L->items_cap) {
        zmq_pollitem_t *ni = realloc(L->items, n * sizeof *ni);
        if (ni)
            L->items = ni;
        lclient_t **nc = realloc(L->item_client, n * sizeof *nc);
        if (nc)
            L->item_client = nc;
        if (!ni || !nc)
            return 0; /* out of memory: the loop comes round again */
        L->items_cap = n;
    }
    L->items[0] = (zmq_pollitem_t){dev->pipe, 0, ZMQ_POLLIN, 0};
    L->items[1] = (zmq_pollitem_t){NULL, L->lfd, ZMQ_POLLIN, 0};
    size_t k = 2;
    for (lclient_t *c = L->clients; c; c = c->next)
        if (c->fd >= 0) {
            L->item_client[k] = c;
            L->items[k++] = (zmq_pollitem_t){NULL, c->fd,
                                             (short)((c->reading ? ZMQ_POLLIN : 0) | (c->writing ? ZMQ_POLLOUT : 0)), 0};
        }
    if (L->fifo_head || L->accept_ready)
        timeout_ms = 0;
    if (zmq_poll(L->items, (int)k, timeout_ms) < 0)
        return zmq_errno() == ETERM ? -1 : 0;
    L->accept_ready = L->items[1].revents & ZMQ_POLLIN;
    for (size_t i = 2; i < k; i++) {
        lclient_t *c = L->item_client[i];
        short re = L->items[i].revents;
        if (re & (ZMQ_POLLIN | ZMQ_POLLERR))
            c->readable = true;
        if ((re & ZMQ_POLLERR) && !c->reading)
            client_gone(L, dev, c, "hung up");
        else if (re & ZMQ_POLLOUT)
            flush_out(L, dev, c);
    }
    return 0;
}

int lmq__local_wait(lmq_dev_t *dev, long timeout_ms)
{
    local_t *L = dev->local;
    if (!L) {
        zmq_pollitem_t item = {dev->pipe, 0, ZMQ_POLLIN, 0};
        return zmq_poll(&item, 1, timeout_ms) < 0 && zmq_errno() == ETERM ? -1 : 1;
    }
    if (L->use_zmq_poll)
        return wait_zmq_poll(L, dev, timeout_ms) < 0 ? -1 : 1;
    if (!L->pipe_watched) {
        int zfd;
        size_t len = sizeof zfd;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL};
        if (zmq_getsockopt(dev->pipe, ZMQ_FD, &zfd, &len) == 0 && epoll_ctl(L->ep, EPOLL_CTL_ADD, zfd, &ev) == 0)
            L->pipe_watched = true;
        else
            timeout_ms = timeout_ms > 1 ? 1 : timeout_ms; /* cannot wait on the pipe: poll it */
        dev->pipe_used = true;
    }
    /* ZMQ_FD is edge-triggered: what the pipe holds is known only from
     * ZMQ_EVENTS, asked after every send and receive and after the fd
     * fired. Between those its answer cannot change (a message arriving
     * fires the fd), so a turn that only served the channel skips the two
     * system calls it costs. */
    if (dev->pipe_used || !L->pipe_watched) {
        int zev = 0;
        size_t zlen = sizeof zev;
        if (zmq_getsockopt(dev->pipe, ZMQ_EVENTS, &zev, &zlen) != 0 && zmq_errno() == ETERM)
            return -1;
        L->pipe_readable = zev & ZMQ_POLLIN;
        dev->pipe_used = false;
    }
    if (L->pipe_readable || L->fifo_head || L->accept_ready)
        timeout_ms = 0;
    struct epoll_event evs[MAX_EVENTS];
    int n = 0;
    /* Right after an answer the client's next request is usually on its
     * way: polling for it a little (lmq__local_spin_ns) saves the wake-up.
     * Never past the loop's own timeout (a stream may be due). */
    if (timeout_ms > 0 && L->last_answer_ns && lmq__spin_allowed(&L->spin)) {
        int64_t due = lmq_clock_mono_ns() + (int64_t)timeout_ms * 1000000;
        while ((n = epoll_wait(L->ep, evs, MAX_EVENTS, 0)) == 0 && lmq__spin_yield(&L->spin, L->last_answer_ns) &&
               lmq_clock_mono_ns() < due)
            ;
        n = n > 0 ? n : 0;
    }
    if (n == 0) {
        n = epoll_wait(L->ep, evs, MAX_EVENTS, (int)timeout_ms);
        if (n > 0 && L->last_answer_ns)
            lmq__spin_slept(&L->spin, lmq_clock_mono_ns() - L->last_answer_ns);
    }
    for (int i = 0; i < n; i++) {
        void *p = evs[i].data.ptr;
        if (p == L)
            L->accept_ready = true;
        else if (p) {
            lclient_t *c = p;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                c->readable = true;
            if ((evs[i].events & (EPOLLHUP | EPOLLERR)) && !c->reading)
                client_gone(L, dev, c, "hung up");
            else if (evs[i].events & EPOLLOUT)
                flush_out(L, dev, c);
        } else
            L->pipe_readable = dev->pipe_used = true; /* the fd fired: receive, then ask again */
    }
    return L->pipe_readable || !L->pipe_watched;
}

/* Reads and admits requests, a batch per client per pass so that clients
 * share the budget. */
static void read_some(local_t *L, lmq_dev_t *dev, int *budget)
{
    for (bool progress = true; *budget > 0 && progress;) {
        progress = false;
        for (lclient_t *c = L->clients; c && *budget > 0; c = c->next) {
            int got = c->fd >= 0 && c->readable && c->reading ? read_batch(L, dev, c, *budget) : 0;
            if (got > 0) {
                *budget -= got;
                progress = true;
            }
        }
    }
}

void lmq__local_serve(lmq_dev_t *dev)
{
    local_t *L = dev->local;
    if (!L)
        return;
    if (L->accept_ready)
        accept_clients(L, dev);
    int budget = LMQ__LOCAL_BUDGET;
    read_some(L, dev, &budget);
    int64_t t0 = L->fifo_head ? lmq_clock_mono_ns() : 0;
    for (int ran = 0; ran < LMQ__LOCAL_BUDGET && L->fifo_head && !atomic_load(&dev->stopping); ran++) {
        lmq__job_t *job = fifo_pop(L);
        lmq__dev_handle_job(dev, job);
        answer(L, dev, job);
        L->last_answer_ns = lmq_clock_mono_ns();
    }
    /* What came while slow jobs ran is checked now, not after the pipe's
     * next turn: refusals are answered as soon as the thread is free. */
    if (t0 && lmq_clock_mono_ns() - t0 > 1000000) {
        for (lclient_t *c = L->clients; c; c = c->next)
            c->readable = c->fd >= 0;
        read_some(L, dev, &budget);
    }
    reap(L);
}

void lmq__local_stop(lmq_dev_t *dev)
{
    local_t *L = dev->local;
    if (!L || L->lfd < 0)
        return;
    /* No new clients: the socket goes first. */
    atomic_store(&L->listening, false);
    close(L->lfd);
    L->lfd = -1;
    unlink_own(L);
    char msg[300];
    snprintf(msg, sizeof msg, "%s: the daemon is shutting down", dev->name);
    /* Accepted and never run: CLOSED, in order. */
    for (lmq__job_t *job; (job = fifo_pop(L));) {
        reply_error(L, dev, job->lclient, &job->req, LMQ_ECLOSED, msg);
        atomic_fetch_sub(&dev->stats.in_flight, 1);
        job->lclient->jobs--;
        lmq__job_destroy(&job);
    }
    /* Sent and not read yet: every request the daemon reads gets its reply. */
    for (lclient_t *c = L->clients; c; c = c->next)
        for (int k = 0; k < 100000 && c->fd >= 0; k++) {
            ssize_t n = recv(c->fd, L->rbuf, LMQ__LOCAL_RECORD_MAX + 1, MSG_DONTWAIT | MSG_TRUNC);
            if (n <= 0)
                break;
            const unsigned char *frame[MAX_FRAMES];
            size_t flen[MAX_FRAMES], nf;
            char err[300];
            lmq__request_t req = {0};
            if (n <= LMQ__LOCAL_RECORD_MAX && L->rbuf[0] == 0 &&
                lmq__local_split(L->rbuf + 1, (size_t)n - 1, frame, flen, &nf, err, sizeof err) == 0)
                lmq__request_parse(frame[0], flen[0], nf - 1, &req, err, sizeof err);
            reply_error(L, dev, c, &req, LMQ_ECLOSED, msg);
            lmq__request_clear(&req);
        }
    /* The replies get a bounded time to leave, as the broker's linger. */
    int64_t deadline = lmq_clock_mono_ns() + (int64_t)STOP_FLUSH_MS * 1000000;
    for (;;) {
        struct pollfd pf[64];
        lclient_t *who[64];
        nfds_t np = 0;
        for (lclient_t *c = L->clients; c && np < 64; c = c->next)
            if (c->fd >= 0 && c->out_head) {
                pf[np] = (struct pollfd){.fd = c->fd, .events = POLLOUT};
                who[np++] = c;
            }
        int64_t left = (deadline - lmq_clock_mono_ns()) / 1000000;
        if (np == 0 || left <= 0)
            break;
        if (poll(pf, np, (int)left) <= 0)
            break;
        for (nfds_t i = 0; i < np; i++)
            if (pf[i].revents)
                flush_out(L, dev, who[i]);
    }
    for (lclient_t *c = L->clients; c; c = c->next)
        client_gone(L, dev, c, "the device stopped");
    reap(L);
}

void lmq__local_destroy(lmq_dev_t *dev)
{
    local_t *L = dev->local;
    if (!L)
        return;
    if (L->lfd >= 0) { /* the device thread never ran */
        close(L->lfd);
        unlink_own(L);
    }
    for (lmq__job_t *job; (job = fifo_pop(L));)
        lmq__job_destroy(&job);
    while (L->clients) {
        lclient_t *c = L->clients;
        L->clients = c->next;
        if (c->fd >= 0)
            close(c->fd);
        drop_output(c);
        free(c);
    }
    if (L->ep >= 0)
        close(L->ep);
    free(L->items);
    free(L->item_client);
    free(L->rbuf);
    free(L);
    dev->local = NULL;
}
