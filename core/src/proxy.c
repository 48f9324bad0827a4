/* Device proxies: a DEALER socket per proxy, request ids to match replies,
 * and a fresh socket after any timeout so that a stale request can never
 * reach a daemon later (the "lazy pirate" pattern of the ZeroMQ guide).
 * ZMTP heartbeats and a monitor of the socket tell a call that its daemon
 * stopped or went away without waiting out the call's timeout; locks and
 * the retry memory know the proxy by its client name (protocol 2.5, 2.6). */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>
#include "labmq/labmq.h"
#include "auth_internal.h"
#include "local.h"
#include "proto.h"

/* The local channel's state in a proxy (docs/protocol.md 6). */
enum { LOCAL_OFF, LOCAL_PROBE, LOCAL_NONE, LOCAL_CONNECT, LOCAL_ON };
/* How long a proxy goes by ZeroMQ alone after the daemon offered no channel
 * (or it could not be reached) before it asks again. */
#define LOCAL_RETRY_NS (2LL * 1000000000)
/* How long a call on the channel waits before it also watches the ZeroMQ
 * socket's monitor (recv_reply). */
#define LOCAL_QUIET_MS 100
enum { FROM_ZMQ, FROM_LOCAL, FROM_ANY };

struct lmq_proxy {
    void *zctx;
    void *sock;
    void *mon;        /* PAIR reading the socket's monitor: connection lost */
    unsigned mon_gen; /* makes each socket's monitor endpoint unique */
    char *client;      /* the `client` key of every request */
    char *client_json; /* ... as a JSON string, quoted once */
    char *endpoint;
    char *device;
    int timeout_ms;
    int sock_timeout; /* ZMQ_SNDTIMEO set on sock; -2 = not yet */
    uint64_t next_id;
    bool curve; /* lmq_proxy_new_keys: every socket is a CURVE client with keys */
    lmq_client_keys_t keys;
    char err[600];
    /* local channel: call/get/set of the device straight to its thread */
    lmq__lchan_t *lch;
    int local;              /* LOCAL_* */
    int64_t local_retry_ns; /* LOCAL_NONE: when to ask the daemon again */
    char *local_path;
    size_t local_max;
    unsigned pend_local, pend_zmq; /* pipelined requests in flight per path */
    lmq__spin_t spin;              /* polling for a channel reply before sleeping */
    const char *last_path;
    bool local_wanted; /* lmq_proxy_set_local's choice */
    bool locking;      /* holds (or may hold) a lock: the channel stays off (protocol 6) */
};

static int set_error(lmq_proxy_t *p, int status, const char *fmt, ...) LMQ_PRINTF(3, 4);
static int set_error(lmq_proxy_t *p, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
    return status;
}

static void close_socket(lmq_proxy_t *p)
{
    if (p->sock) {
        zmq_socket_monitor(p->sock, NULL, 0);
        zmq_close(p->sock);
        p->sock = NULL;
    }
    if (p->mon) {
        zmq_close(p->mon);
        p->mon = NULL;
    }
}

/* Watches the socket for a lost connection: the daemon closed it, or
 * heartbeats went unanswered (a stopped or hung daemon). Without a monitor
 * the proxy still works, with only its timeouts. */
static void open_monitor(lmq_proxy_t *p)
{
    char ep[96];
    snprintf(ep, sizeof ep, "inproc://lmq-proxy-monitor-%p-%u", (void *)p, p->mon_gen++);
    if (zmq_socket_monitor(p->sock, ep, ZMQ_EVENT_DISCONNECTED) != 0)
        return;
    p->mon = zmq_socket(p->zctx, ZMQ_PAIR);
    int linger = 0;
    if (p->mon)
        zmq_setsockopt(p->mon, ZMQ_LINGER, &linger, sizeof linger);
    if (p->mon && zmq_connect(p->mon, ep) != 0) {
        zmq_close(p->mon);
        p->mon = NULL;
    }
}

/* Reads one monitor event; true when it says the connection was lost. */
static bool monitor_lost(lmq_proxy_t *p)
{
    zmq_msg_t ev, addr;
    zmq_msg_init(&ev);
    if (zmq_msg_recv(&ev, p->mon, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&ev);
        return false;
    }
    bool lost = false;
    if (zmq_msg_size(&ev) >= 2) {
        uint16_t event;
        memcpy(&event, zmq_msg_data(&ev), sizeof event);
        lost = event == ZMQ_EVENT_DISCONNECTED;
    }
    if (zmq_msg_more(&ev)) {
        zmq_msg_init(&addr);
        zmq_msg_recv(&addr, p->mon, 0);
        zmq_msg_close(&addr);
    }
    zmq_msg_close(&ev);
    return lost;
}

static int open_socket(lmq_proxy_t *p)
{
    close_socket(p);
    p->sock = zmq_socket(p->zctx, ZMQ_DEALER);
    p->sock_timeout = -2;
    if (!p->sock)
        return set_error(p, LMQ_EMEM, "cannot create a socket: %s", zmq_strerror(zmq_errno()));
    /* IMMEDIATE: a request is queued only on a live connection, so with no
     * daemon the send times out (UNREACHABLE) instead of waiting in a queue
     * to surprise a daemon that starts an hour later. */
    int linger = 0, immediate = 1, ivl = 100, ivl_max = 500;
    zmq_setsockopt(p->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(p->sock, ZMQ_IMMEDIATE, &immediate, sizeof immediate);
    zmq_setsockopt(p->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(p->sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max);
    if (p->curve && lmq__curve_client(p->sock, &p->keys) != 0) {
        int e = zmq_errno();
        close_socket(p);
        return set_error(p, LMQ_ESYS, "cannot make a CURVE client socket: %s", zmq_strerror(e));
    }
    lmq__heartbeat_set(p->sock);
    open_monitor(p);
    if (zmq_connect(p->sock, p->endpoint) != 0) {
        int e = zmq_errno();
        close_socket(p);
        return set_error(p, LMQ_EARG, "cannot connect to '%s': %s", p->endpoint, zmq_strerror(e));
    }
    return 0;
}

/* "alice@lab3 pid 4242 #1f2e3d": who the proxy is, unique per proxy. */
static char *default_client(uint64_t salt)
{
    char host[64] = "?", buf[LMQ__MAX_CLIENT + 1];
    const char *user = getenv("USER");
    if (!user || !*user)
        user = getenv("LOGNAME");
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    snprintf(buf, sizeof buf, "%.40s@%.40s pid %ld #%06llx", user && *user ? user : "?", host, (long)getpid(),
             (unsigned long long)(salt & 0xffffff));
    return strdup(buf);
}

lmq_proxy_t *lmq_proxy_new(void *zctx, const char *endpoint, const char *device)
{
    return lmq_proxy_new_keys(zctx, endpoint, device, NULL);
}

lmq_proxy_t *lmq_proxy_new_keys(void *zctx, const char *endpoint, const char *device, const lmq_client_keys_t *keys)
{
    if (!zctx || !endpoint || !*endpoint || (device && !*device) || (keys && !lmq__client_keys_ok(keys)))
        return NULL;
    lmq_proxy_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->zctx = zctx;
    if (keys) {
        p->keys = *keys;
        p->curve = true;
    }
    p->timeout_ms = LMQ_PROXY_DEFAULT_TIMEOUT_MS;
    p->endpoint = strdup(endpoint);
    p->device = device ? strdup(device) : NULL;
    /* Ids start at a random point so replies meant for an earlier proxy on
     * a reused connection can't be mistaken for ours, and proxies sharing a
     * client name (lmq_proxy_set_client) don't share ids in the daemon's
     * retry memory. */
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (uint64_t)lmq_clock_real_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)p;
    p->next_id = r % (LMQ__MAX_ID / 2);
    p->client = default_client(r >> 40);
    p->client_json = p->client ? lmq__json_quote(p->client) : NULL;
    if (p->client && !p->client_json) { /* a user or host name that is not UTF-8 */
        free(p->client);
        char buf[64];
        snprintf(buf, sizeof buf, "pid %ld #%06llx", (long)getpid(), (unsigned long long)((r >> 40) & 0xffffff));
        p->client = strdup(buf);
        p->client_json = p->client ? lmq__json_quote(p->client) : NULL;
    }
    p->last_path = "";
    if (!p->endpoint || (device && !p->device) || !p->client_json || open_socket(p) != 0) {
        lmq_proxy_destroy(&p);
        return NULL;
    }
    lmq__spin_init(&p->spin);
    lmq_proxy_set_local(p, true);
    return p;
}

lmq_proxy_t *lmq_proxy_open(void *zctx, const char *uri)
{
    if (!uri)
        return NULL;
    const char *hash = strrchr(uri, '#');
    if (!hash)
        return lmq_proxy_new(zctx, uri, NULL);
    size_t len = (size_t)(hash - uri);
    char *endpoint = malloc(len + 1);
    if (!endpoint)
        return NULL;
    memcpy(endpoint, uri, len);
    endpoint[len] = 0;
    lmq_proxy_t *p = lmq_proxy_new(zctx, endpoint, hash[1] ? hash + 1 : NULL);
    free(endpoint);
    return p;
}

void lmq_proxy_destroy(lmq_proxy_t **pp)
{
    if (!pp || !*pp)
        return;
    lmq_proxy_t *p = *pp;
    close_socket(p);
    explicit_bzero(&p->keys, sizeof p->keys);
    free(p->client);
    free(p->client_json);
    lmq__lchan_close(&p->lch);
    free(p->local_path);
    free(p->endpoint);
    free(p->device);
    free(p);
    *pp = NULL;
}

char *lmq_proxy_uri(const lmq_proxy_t *p)
{
    if (!p)
        return NULL;
    size_t len = strlen(p->endpoint) + (p->device ? strlen(p->device) + 1 : 0) + 1;
    char *uri = malloc(len);
    if (uri)
        snprintf(uri, len, "%s%s%s", p->endpoint, p->device ? "#" : "", p->device ? p->device : "");
    return uri;
}

const char *lmq_proxy_device(const lmq_proxy_t *p) { return p ? p->device : NULL; }

void lmq_proxy_set_timeout(lmq_proxy_t *p, int timeout_ms)
{
    if (p)
        p->timeout_ms = timeout_ms < 0 ? LMQ_PROXY_DEFAULT_TIMEOUT_MS : timeout_ms;
}

const char *lmq_proxy_last_error(const lmq_proxy_t *p) { return p ? p->err : "no proxy"; }

/* ---- local channel ---- */

static void local_drop(lmq_proxy_t *p, int next)
{
    lmq__lchan_close(&p->lch);
    p->pend_local = 0;
    p->local = next;
    if (next == LOCAL_NONE)
        p->local_retry_ns = lmq_clock_mono_ns() + LOCAL_RETRY_NS;
}

void lmq_proxy_set_local(lmq_proxy_t *p, bool enable)
{
    if (!p)
        return;
    const char *no = getenv("LABMQ_NO_LOCAL");
    bool usable = p->device && strncmp(p->endpoint, "ipc://", 6) == 0 && !(no && *no && strcmp(no, "0") != 0);
    p->local_wanted = enable;
    /* A locked device's set and call go through the broker, which keeps
     * the lease: a lock holder stays on ZeroMQ until it unlocks all. */
    local_drop(p, enable && usable && !p->locking ? LOCAL_PROBE : LOCAL_OFF);
}

const char *lmq_proxy_last_path(const lmq_proxy_t *p) { return p ? p->last_path : ""; }

static int roundtrip(lmq_proxy_t *p, lmq__op_t op, const char *name, const lmq_value_t *args, size_t nargs,
                     const lmq_value_t *value, lmq_value_t *result, char **json);

/* Makes sure the proxy has its channel when the daemon offers one: asks
 * the daemon (describe) and connects. Returns 0 (with or without a
 * channel: without, requests go by ZeroMQ), or the status of a daemon that
 * does not answer at all (UNREACHABLE, TIMEOUT), which the request would
 * meet too. */
static int local_ensure(lmq_proxy_t *p)
{
    if (p->lch || p->local == LOCAL_OFF)
        return 0;
    if (p->local == LOCAL_NONE) {
        if (lmq_clock_mono_ns() < p->local_retry_ns)
            return 0;
        p->local = LOCAL_PROBE;
    }
    if (p->local == LOCAL_PROBE) {
        char *text = NULL;
        int rc = roundtrip(p, LMQ__OP_DESCRIBE, NULL, NULL, 0, NULL, NULL, &text);
        if (rc == LMQ_EUNREACH || rc == LMQ_ETIMEOUT)
            return rc;
        json_t *j = rc == 0 ? json_loads(text, 0, NULL) : NULL;
        free(text);
        json_t *loc = json_object_get(j, "local");
        const char *path = json_string_value(json_object_get(loc, "path"));
        json_int_t max = json_integer_value(json_object_get(loc, "record_max"));
        free(p->local_path);
        p->local_path = path && max > 0 ? strdup(path) : NULL;
        p->local_max = (size_t)max;
        json_decref(j);
        p->err[0] = 0;
        /* An older daemon, a daemon that offers none, or no such device. */
        if (!p->local_path) {
            local_drop(p, LOCAL_NONE);
            return 0;
        }
        p->local = LOCAL_CONNECT;
    }
    char err[300];
    if (!(p->lch = lmq__lchan_connect(p->local_path, p->local_max, err, sizeof err)))
        local_drop(p, LOCAL_NONE); /* gone, refused, not permitted: ZeroMQ */
    else
        p->local = LOCAL_ON;
    return 0;
}

/* The header of a lock/unlock (lmq_proxy_lock): keys besides v, id, op. */
static int encode_keys(zmq_msg_t *hdr, uint64_t id, lmq__op_t op, json_t *keys)
{
    json_t *j = json_deep_copy(keys);
    if (!j || json_object_set_new(j, "v", json_integer(LMQ__PROTOCOL)) != 0 ||
        json_object_set_new(j, "id", json_integer((json_int_t)id)) != 0 ||
        json_object_set_new(j, "op", json_string(lmq__op_name(op))) != 0) {
        json_decref(j);
        return LMQ_EMEM;
    }
    int rc = lmq__json_to_msg(j, hdr);
    json_decref(j);
    return rc;
}

/* keys: a lock/unlock's own keys (else NULL). with_deadline: the proxy's
 * timeout goes along as the request's deadline (synchronous calls). */
static int send_request_keys(lmq_proxy_t *p, lmq__op_t op, const char *name, const lmq_value_t *args, size_t nargs,
                             const lmq_value_t *value, json_t *keys, bool with_deadline, uint64_t *id, bool *on_local)
{
    *on_local = false;
    int rc = p->sock ? 0 : open_socket(p);
    if (rc != 0)
        return rc; /* the reason is in p->err */
    bool needs_device = op == LMQ__OP_CALL || op == LMQ__OP_GET || op == LMQ__OP_SET || op == LMQ__OP_DESCRIBE;
    if (needs_device && !p->device)
        return set_error(p, LMQ_EARG, "this proxy names no device (open it as ENDPOINT#DEVICE)");
    if (nargs > LMQ__MAX_ARGS)
        return set_error(p, LMQ_EARG, "%zu arguments; the limit is %d", nargs, LMQ__MAX_ARGS);
    zmq_msg_t hdr;
    lmq__frames_t bin;
    lmq__frames_init(&bin);
    *id = p->next_id++ % LMQ__MAX_ID;
    const char *device = (needs_device || op == LMQ__OP_STATS) ? p->device : NULL;
    if (keys)
        rc = encode_keys(&hdr, *id, op, keys);
    else {
        rc = lmq__request_encode_fast(&hdr, *id, op, device, name, args, nargs, value);
        if (rc == 1)
            rc = lmq__request_encode(&hdr, *id, op, device, name, args, nargs, value, &bin);
    }
    /* The call's timeout is its deadline at the daemon (protocol 2.1): a
     * request that could not start in time never reaches the instrument. */
    bool device_op = op == LMQ__OP_CALL || op == LMQ__OP_GET || op == LMQ__OP_SET;
    bool deadline = with_deadline && device_op && p->timeout_ms > 0 &&
                    p->timeout_ms <= LMQ__MAX_DEADLINE_MS; /* longer: none */
    if (rc == 0)
        rc = lmq__request_add_keys(&hdr, deadline ? p->timeout_ms : -1, p->client_json);
    if (rc != 0) {
        lmq__frames_close(&bin);
        return set_error(p, rc, "cannot encode the request (%s: names must be UTF-8, at most %d arrays, floats finite)",
                         lmq_strerror(rc), LMQ__MAX_BINFRAMES);
    }
    if (device_op && p->lch) {
        rc = lmq__lchan_send(p->lch, &hdr, &bin, p->timeout_ms);
        if (rc == 0 || rc == LMQ_ETIMEOUT) {
            zmq_msg_close(&hdr);
            lmq__frames_close(&bin);
        }
        if (rc == 0) {
            *on_local = true;
            p->last_path = "local";
            return 0;
        }
        if (rc == LMQ_ETIMEOUT) {
            local_drop(p, LOCAL_CONNECT);
            return set_error(p, LMQ_ETIMEOUT, "%s: the local channel took no request within %d ms", p->device,
                             p->timeout_ms);
        }
        if (rc == LMQ_ECLOSED) /* nothing was sent: the daemon went away, or restarted */
            local_drop(p, LOCAL_PROBE);
        /* else too large for one record: by ZeroMQ */
    }
    if (device_op)
        p->last_path = "zmq";
    if (p->sock_timeout != p->timeout_ms) {
        zmq_setsockopt(p->sock, ZMQ_SNDTIMEO, &p->timeout_ms, sizeof p->timeout_ms);
        p->sock_timeout = p->timeout_ms;
    }
    /* A connection lost before this request was sent is no news for it. */
    while (p->mon && monitor_lost(p))
        ;
    rc = zmq_msg_send(&hdr, p->sock, bin.n ? ZMQ_SNDMORE : 0);
    for (size_t i = 0; rc >= 0 && i < bin.n; i++)
        rc = zmq_msg_send(&bin.msg[i], p->sock, i + 1 < bin.n ? ZMQ_SNDMORE : 0);
    zmq_msg_close(&hdr);
    lmq__frames_close(&bin);
    if (rc < 0) {
        int e = zmq_errno();
        if (e == EAGAIN && p->curve)
            return set_error(p, LMQ_EUNREACH,
                             "no daemon accepts this client at %s within %d ms: is labmqd running, is this client's "
                             "public key on its allow-list, and is the server key its public key?",
                             p->endpoint, p->timeout_ms);
        if (e == EAGAIN)
            return set_error(p, LMQ_EUNREACH, "no daemon answers at %s within %d ms (is labmqd running?)", p->endpoint,
                             p->timeout_ms);
        return set_error(p, LMQ_EIO, "cannot send to %s: %s", p->endpoint, zmq_strerror(e));
    }
    return 0;
}

/* Pipelined requests carry no deadline: the proxy's timeout bounds the
 * wait for each next reply, not a request's time in the queue. */
static int send_pipelined(lmq_proxy_t *p, lmq__op_t op, const char *name, const lmq_value_t *args, size_t nargs,
                          uint64_t *id)
{
    bool local = false;
    p->err[0] = 0;
    int rc = local_ensure(p);
    if (rc == 0)
        rc = send_request_keys(p, op, name, args, nargs, NULL, NULL, false, id, &local);
    if (rc == 0 && local)
        p->pend_local++;
    else if (rc == 0)
        p->pend_zmq++;
    return rc;
}

#define LOST 1 /* recv_reply: the connection to the daemon was lost */

/* Polls the channel for a while before the caller sleeps on it
 * (lmq__local_spin_ns says why): true when a reply is there. */
static bool local_spin(lmq_proxy_t *p, struct pollfd *pf, int64_t start)
{
    if (!lmq__spin_allowed(&p->spin))
        return false;
    do
        if (poll(pf, 1, 0) > 0)
            return true;
    while (lmq__spin_yield(&p->spin, start));
    return false;
}

/* Receives one reply into rep (+ its binary frames), from one path or
 * (FROM_ANY, pipelining) whichever has one first; *came says which. */
static int recv_reply(lmq_proxy_t *p, int timeout_ms, int from, lmq__reply_t *rep, lmq__frames_t *bin, int *came)
{
    if (from == FROM_ANY) {
        from = !p->lch || !p->pend_local ? FROM_ZMQ : !p->pend_zmq ? FROM_LOCAL : FROM_ANY;
        if (from == FROM_ANY) {
            zmq_pollitem_t two[2] = {{p->sock, 0, ZMQ_POLLIN, 0}, {NULL, lmq__lchan_fd(p->lch), ZMQ_POLLIN, 0}};
            int n = zmq_poll(two, 2, timeout_ms);
            if (n < 0)
                return set_error(p, zmq_errno() == ETERM ? LMQ_ECLOSED : LMQ_EIO, "poll: %s",
                                 zmq_strerror(zmq_errno()));
            if (n == 0)
                return LMQ_ETIMEOUT;
            from = two[1].revents ? FROM_LOCAL : FROM_ZMQ;
        }
    }
    *came = from;
    bool ready = false;
    if (from == FROM_LOCAL && p->mon && timeout_ms != 0) {
        /* The channel has no heartbeats; the ZeroMQ socket beside it does
         * (protocol 1.2): a stopped daemon is noticed by its monitor. Its
         * news takes heartbeats (1.5 s) to come, so the first slice of the
         * wait watches the channel alone: one poll(2), where zmq_poll with
         * the monitor costs five system calls on every call. A daemon that
         * died hangs up the channel at once. */
        int64_t start = lmq_clock_mono_ns(), end = start + (int64_t)timeout_ms * 1000000;
        struct pollfd pf = {.fd = lmq__lchan_fd(p->lch), .events = POLLIN};
        ready = local_spin(p, &pf, start);
        if (!ready) {
            ready = poll(&pf, 1, timeout_ms < 0 || timeout_ms > LOCAL_QUIET_MS ? LOCAL_QUIET_MS : timeout_ms) > 0;
            if (ready)
                lmq__spin_slept(&p->spin, lmq_clock_mono_ns() - start);
        }
        zmq_pollitem_t it[2] = {{NULL, lmq__lchan_fd(p->lch), ZMQ_POLLIN, 0}, {p->mon, 0, ZMQ_POLLIN, 0}};
        for (; !ready;) {
            int64_t left = (end - lmq_clock_mono_ns() + 999999) / 1000000;
            int n = zmq_poll(it, 2, timeout_ms < 0 ? -1 : left > 0 ? (long)left : 0);
            if (n < 0)
                return set_error(p, zmq_errno() == ETERM ? LMQ_ECLOSED : LMQ_EIO, "poll: %s",
                                 zmq_strerror(zmq_errno()));
            if (n == 0)
                return LMQ_ETIMEOUT;
            if (it[0].revents)
                ready = true;
            else if (monitor_lost(p))
                return LOST;
        }
        if (timeout_ms > 0) {
            int64_t left = (end - lmq_clock_mono_ns() + 999999) / 1000000;
            timeout_ms = left > 0 ? (int)left : 0;
        }
    }
    if (from == FROM_LOCAL) {
        zmq_msg_t hdr;
        int rc = lmq__lchan_recv(p->lch, timeout_ms, ready, &hdr, bin, p->err, sizeof p->err);
        if (rc == 0)
            rc = lmq__reply_parse(zmq_msg_data(&hdr), zmq_msg_size(&hdr), rep, p->err, sizeof p->err);
        zmq_msg_close(&hdr);
        return rc;
    }
    zmq_pollitem_t items[2] = {{p->sock, 0, ZMQ_POLLIN, 0}, {p->mon, 0, ZMQ_POLLIN, 0}};
    int64_t end = lmq_clock_mono_ns() + (int64_t)timeout_ms * 1000000;
    for (;;) {
        int64_t left = (end - lmq_clock_mono_ns() + 999999) / 1000000;
        int n = zmq_poll(items, p->mon ? 2 : 1, timeout_ms < 0 ? -1 : left > 0 ? (long)left : 0);
        if (n < 0)
            return set_error(p, zmq_errno() == ETERM ? LMQ_ECLOSED : LMQ_EIO, "poll: %s", zmq_strerror(zmq_errno()));
        if (n == 0)
            return LMQ_ETIMEOUT;
        if (items[0].revents & ZMQ_POLLIN)
            break; /* a reply that made it wins over the loss that followed it */
        if (monitor_lost(p))
            return LOST;
    }
    zmq_msg_t hdr;
    zmq_msg_init(&hdr);
    zmq_msg_recv(&hdr, p->sock, 0);
    if (zmq_msg_more(&hdr)) { /* frames beyond the protocol's limit are dropped */
        size_t got = lmq__recv_rest(p->sock, bin->msg, LMQ__MAX_BINFRAMES);
        bin->n = got < LMQ__MAX_BINFRAMES ? got : LMQ__MAX_BINFRAMES;
    }
    int rc = lmq__reply_parse(zmq_msg_data(&hdr), zmq_msg_size(&hdr), rep, p->err, sizeof p->err);
    zmq_msg_close(&hdr);
    return rc;
}

/* Turns a reply into the caller's status and result value. */
static int take_result(lmq_proxy_t *p, const lmq__reply_t *rep, const lmq__frames_t *bin, lmq_value_t *result)
{
    if (!rep->ok)
        return set_error(p, rep->status, "%s", rep->message);
    if (!result)
        return 0;
    char err[300];
    int rc = lmq__value_from_json(rep->result ? rep->result : json_null(), bin, result, err, sizeof err);
    return rc == 0 ? 0 : set_error(p, rc, "malformed result: %s", err);
}

static int elapsed_ms(int64_t since) { return (int)((lmq_clock_mono_ns() - since) / 1000000); }

/* One synchronous round trip. On success, exactly one of result/json is
 * filled (when not NULL). */
static int roundtrip_keys(lmq_proxy_t *p, lmq__op_t op, const char *name, const lmq_value_t *args, size_t nargs,
                          const lmq_value_t *value, json_t *keys, lmq_value_t *result, char **json)
{
    if (!p)
        return LMQ_EARG;
    p->err[0] = 0;
    uint64_t id;
    bool local = false;
    int came, rc = 0;
    if (op == LMQ__OP_CALL || op == LMQ__OP_GET || op == LMQ__OP_SET)
        rc = local_ensure(p);
    if (rc != 0)
        return rc;
    int64_t start = lmq_clock_mono_ns();
    rc = send_request_keys(p, op, name, args, nargs, value, keys, true, &id, &local);
    if (rc != 0)
        return rc;
    for (;;) {
        int left = p->timeout_ms - elapsed_ms(start);
        lmq__reply_t rep = {0};
        lmq__frames_t bin;
        lmq__frames_init(&bin);
        rc = recv_reply(p, left > 0 ? left : 0, local ? FROM_LOCAL : FROM_ZMQ, &rep, &bin, &came);
        bool effect = op == LMQ__OP_CALL || op == LMQ__OP_SET || op == LMQ__OP_LOCK || op == LMQ__OP_UNLOCK;
        if (rc == LMQ_ETIMEOUT) {
            /* The request may still be queued at a hung device or lost with a
             * dead daemon; a new socket guarantees its late reply is never
             * read as the answer to a later call. */
            if (local)
                local_drop(p, LOCAL_CONNECT); /* the same rule for the local channel */
            else
                open_socket(p);
            return set_error(p, LMQ_ETIMEOUT, "%s%s%s %s: no reply within %d ms%s", p->device ? p->device : "",
                             p->device ? ": " : "", lmq__op_name(op), name ? name : "", p->timeout_ms,
                             effect ? " (it may or may not have run)" : "");
        }
        if (rc == LOST) {
            /* Whether the daemon read the request is unknowable: say so, and
             * never guess (protocol 2.5). */
            if (local)
                local_drop(p, LOCAL_PROBE);
            open_socket(p);
            if (effect)
                return set_error(p, LMQ_EOUTCOME,
                                 "%s%s%s %s: daemon not responding (connection to %s lost: stopped, gone, or no "
                                 "heartbeat for %d ms); the outcome is unknown: it may or may not have run",
                                 p->device ? p->device : "", p->device ? ": " : "", lmq__op_name(op), name ? name : "",
                                 p->endpoint, LMQ__HEARTBEAT_TIMEOUT_MS);
            return set_error(p, LMQ_EUNREACH,
                             "daemon not responding (connection to %s lost: stopped, gone, or no heartbeat for %d ms)",
                             p->endpoint, LMQ__HEARTBEAT_TIMEOUT_MS);
        }
        if (rc != 0 && local) {
            lmq__reply_clear(&rep);
            lmq__frames_close(&bin);
            local_drop(p, rc == LMQ_ECLOSED ? LOCAL_PROBE : LOCAL_CONNECT);
            /* As a lost ZeroMQ connection (protocol 2.5): never guessed. */
            if (rc == LMQ_ECLOSED)
                return set_error(p, effect ? LMQ_EOUTCOME : LMQ_EUNREACH,
                                 "%s: %s %s: the daemon closed the local channel before answering (it stopped or "
                                 "died)%s",
                                 p->device, lmq__op_name(op), name ? name : "",
                                 effect ? "; the outcome is unknown: it may or may not have run" : "");
            return rc;
        }
        if (rc != 0) {
            lmq__reply_clear(&rep);
            lmq__frames_close(&bin);
            return rc;
        }
        if (!rep.has_id || rep.id != id) { /* a late reply to an earlier request */
            lmq__reply_clear(&rep);
            lmq__frames_close(&bin);
            continue;
        }
        if (rep.ok && json) {
            *json = json_dumps(rep.result ? rep.result : json_null(), JSON_ENCODE_ANY | JSON_INDENT(2));
            rc = *json ? 0 : set_error(p, LMQ_EMEM, "out of memory");
        } else
            rc = take_result(p, &rep, &bin, result);
        lmq__reply_clear(&rep);
        lmq__frames_close(&bin);
        return rc;
    }
}

static int roundtrip(lmq_proxy_t *p, lmq__op_t op, const char *name, const lmq_value_t *args, size_t nargs,
                     const lmq_value_t *value, lmq_value_t *result, char **json)
{
    return roundtrip_keys(p, op, name, args, nargs, value, NULL, result, json);
}

int lmq_proxy_set_client(lmq_proxy_t *p, const char *name)
{
    if (!p || !name || !*name || strlen(name) > LMQ__MAX_CLIENT)
        return p ? set_error(p, LMQ_EARG, "a client name is 1 to %d bytes", LMQ__MAX_CLIENT) : LMQ_EARG;
    char *quoted = lmq__json_quote(name); /* NULL: not UTF-8 */
    char *copy = quoted ? strdup(name) : NULL;
    if (!copy) {
        free(quoted);
        return set_error(p, LMQ_EARG, "a client name must be UTF-8");
    }
    free(p->client);
    free(p->client_json);
    p->client = copy;
    p->client_json = quoted;
    return 0;
}

const char *lmq_proxy_client(const lmq_proxy_t *p) { return p ? p->client : NULL; }

/* lock/unlock: the devices named, or the proxy's own. */
static int lock_op(lmq_proxy_t *p, lmq__op_t op, const char *const *devices, size_t n, int lease_ms, char **json)
{
    if (!p)
        return LMQ_EARG;
    if ((n && !devices) || n > LMQ__MAX_LOCK_DEVICES)
        return set_error(p, LMQ_EARG, "devices: NULL, or more than %d", LMQ__MAX_LOCK_DEVICES);
    if (op == LMQ__OP_LOCK && lease_ms != 0 && (lease_ms < LMQ__LEASE_MIN_MS || lease_ms > LMQ__LEASE_MAX_MS))
        return set_error(p, LMQ_EARG, "a lease is %d to %d ms, not %d", LMQ__LEASE_MIN_MS, LMQ__LEASE_MAX_MS,
                         lease_ms);
    if (n == 0 && !p->device && op == LMQ__OP_LOCK)
        return set_error(p, LMQ_EARG, "no devices to lock, and this proxy names none");
    json_t *keys = json_object(), *list = json_array();
    int rc = keys && list ? 0 : LMQ_EMEM;
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (!devices[i] || json_array_append_new(list, json_string(devices[i])) != 0)
            rc = set_error(p, LMQ_EARG, "device %zu: NULL or not UTF-8", i + 1);
    if (rc == 0 && n == 0 && p->device && op == LMQ__OP_LOCK)
        json_array_append_new(list, json_string(p->device));
    if (rc == 0 && json_array_size(list))
        json_object_set(keys, "devices", list);
    if (rc == 0 && lease_ms)
        json_object_set_new(keys, "lease_ms", json_integer(lease_ms));
    char *text = NULL;
    if (rc == 0 && op == LMQ__OP_LOCK && !p->locking) {
        p->locking = true;
        lmq_proxy_set_local(p, p->local_wanted);
    }
    if (rc == 0)
        rc = roundtrip_keys(p, op, NULL, NULL, 0, NULL, keys, NULL, &text);
    if (rc == 0 && op == LMQ__OP_UNLOCK && n == 0 && p->locking) {
        p->locking = false;
        lmq_proxy_set_local(p, p->local_wanted);
    }
    if (json)
        *json = text;
    else
        free(text);
    json_decref(keys);
    json_decref(list);
    return rc == LMQ_EMEM && !p->err[0] ? set_error(p, rc, "out of memory") : rc;
}

int lmq_proxy_lock(lmq_proxy_t *p, const char *const *devices, size_t ndevices, int lease_ms)
{
    return lock_op(p, LMQ__OP_LOCK, devices, ndevices, lease_ms, NULL);
}

int lmq_proxy_unlock(lmq_proxy_t *p, const char *const *devices, size_t ndevices)
{
    return lock_op(p, LMQ__OP_UNLOCK, devices, ndevices, 0, NULL);
}

int lmq_proxy_call(lmq_proxy_t *p, const char *method, const lmq_value_t *args, size_t nargs, lmq_value_t *result)
{
    if (!method || (nargs && !args))
        return p ? set_error(p, LMQ_EARG, "no method name, or NULL args") : LMQ_EARG;
    lmq_value_t ignored = {0};
    int rc = roundtrip(p, LMQ__OP_CALL, method, args, nargs, NULL, result ? result : &ignored, NULL);
    lmq_value_clear(&ignored);
    return rc;
}

int lmq_proxy_get(lmq_proxy_t *p, const char *property, lmq_value_t *out)
{
    if (!property || !out)
        return p ? set_error(p, LMQ_EARG, "no property name or output") : LMQ_EARG;
    return roundtrip(p, LMQ__OP_GET, property, NULL, 0, NULL, out, NULL);
}

int lmq_proxy_get_double(lmq_proxy_t *p, const char *property, double *out)
{
    lmq_value_t v = {0};
    int rc = lmq_proxy_get(p, property, &v);
    if (rc == 0 && lmq_value_to_double(&v, out) != 0)
        rc = set_error(p, LMQ_EARG, "%s is a %s, not a number", property, lmq_type_name(v.type));
    lmq_value_clear(&v);
    return rc;
}

int lmq_proxy_set(lmq_proxy_t *p, const char *property, const lmq_value_t *value)
{
    if (!property || !value)
        return p ? set_error(p, LMQ_EARG, "no property name or value") : LMQ_EARG;
    lmq_value_t ignored = {0};
    int rc = roundtrip(p, LMQ__OP_SET, property, NULL, 0, value, &ignored, NULL);
    lmq_value_clear(&ignored);
    return rc;
}

int lmq_proxy_describe(lmq_proxy_t *p, char **json)
{
    return json ? roundtrip(p, LMQ__OP_DESCRIBE, NULL, NULL, 0, NULL, NULL, json) : LMQ_EARG;
}
int lmq_proxy_list(lmq_proxy_t *p, char **json)
{
    return json ? roundtrip(p, LMQ__OP_LIST, NULL, NULL, 0, NULL, NULL, json) : LMQ_EARG;
}
int lmq_proxy_ping(lmq_proxy_t *p, char **json)
{
    return json ? roundtrip(p, LMQ__OP_PING, NULL, NULL, 0, NULL, NULL, json) : LMQ_EARG;
}
int lmq_proxy_stats(lmq_proxy_t *p, char **json)
{
    return json ? roundtrip(p, LMQ__OP_STATS, NULL, NULL, 0, NULL, NULL, json) : LMQ_EARG;
}

int lmq_proxy_workers(lmq_proxy_t *p, char **json)
{
    return json ? roundtrip(p, LMQ__OP_WORKERS, NULL, NULL, 0, NULL, NULL, json) : LMQ_EARG;
}

int lmq_proxy_data_endpoint(lmq_proxy_t *p, char *buf, size_t size)
{
    char *text = NULL;
    if (!p || !buf || !size)
        return LMQ_EARG;
    int rc = roundtrip(p, LMQ__OP_PING, NULL, NULL, 0, NULL, NULL, &text);
    if (rc != 0)
        return rc;
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    const char *data = json_string_value(json_object_get(j, "data"));
    static const char *const wild[] = {"tcp://0.0.0.0:", "tcp://[::]:", "tcp://*:"};
    size_t k = 0, wl = 0;
    while (data && k < sizeof wild / sizeof *wild && strncmp(data, wild[k], wl = strlen(wild[k])) != 0)
        k++;
    int n = 0;
    if (!data)
        rc = set_error(p, LMQ_EPROTO, "the daemon's ping reply names no data endpoint");
    else if (k == sizeof wild / sizeof *wild)
        n = snprintf(buf, size, "%s", data);
    else {
        /* Reach the data port on the host that reached the control port. */
        const char *host = "127.0.0.1";
        size_t hlen = strlen(host);
        if (strncmp(p->endpoint, "tcp://", 6) == 0 && strrchr(p->endpoint, ':') > p->endpoint + 6) {
            host = p->endpoint + 6;
            hlen = (size_t)(strrchr(p->endpoint, ':') - host);
        }
        n = snprintf(buf, size, "tcp://%.*s:%s", (int)hlen, host, data + wl);
    }
    if (rc == 0 && (n < 0 || (size_t)n >= size))
        rc = set_error(p, LMQ_EARG, "the data endpoint does not fit in %zu bytes", size);
    json_decref(j);
    return rc;
}

int lmq_proxy_send_get(lmq_proxy_t *p, const char *property, uint64_t *id)
{
    if (!p || !property || !id)
        return LMQ_EARG;
    return send_pipelined(p, LMQ__OP_GET, property, NULL, 0, id);
}

int lmq_proxy_send_call(lmq_proxy_t *p, const char *method, const lmq_value_t *args, size_t nargs, uint64_t *id)
{
    if (!p || !method || !id || (nargs && !args))
        return LMQ_EARG;
    return send_pipelined(p, LMQ__OP_CALL, method, args, nargs, id);
}

int lmq_proxy_recv(lmq_proxy_t *p, uint64_t *id, lmq_value_t *result)
{
    if (!p || !id)
        return LMQ_EARG;
    lmq__reply_t rep = {0};
    lmq__frames_t bin;
    lmq__frames_init(&bin);
    int came;
    int rc = recv_reply(p, p->timeout_ms, FROM_ANY, &rep, &bin, &came);
    if (rc == LMQ_ETIMEOUT)
        return set_error(p, rc, "no reply within %d ms", p->timeout_ms);
    if (rc != 0 && came == FROM_LOCAL) {
        unsigned lost = p->pend_local;
        char why[300];
        snprintf(why, sizeof why, "%.299s", p->err[0] ? p->err : lmq_strerror(rc));
        local_drop(p, rc == LMQ_ECLOSED ? LOCAL_PROBE : LOCAL_CONNECT);
        lmq__reply_clear(&rep);
        lmq__frames_close(&bin);
        return set_error(p, rc, "the local channel failed with %u request%s in flight (%s)", lost, lost == 1 ? "" : "s",
                         why);
    }
    if (came == FROM_LOCAL && p->pend_local)
        p->pend_local--;
    else if (came == FROM_ZMQ && p->pend_zmq)
        p->pend_zmq--;
    if (rc == LOST)
        return set_error(p, LMQ_EOUTCOME,
                         "daemon not responding (connection to %s lost: stopped, gone, or no heartbeat for %d ms): "
                         "the requests in flight may or may not have run",
                         p->endpoint, LMQ__HEARTBEAT_TIMEOUT_MS);
    if (rc != 0) {
        lmq__reply_clear(&rep);
        lmq__frames_close(&bin);
        return rc;
    }
    *id = rep.id;
    rc = take_result(p, &rep, &bin, result);
    lmq__reply_clear(&rep);
    lmq__frames_close(&bin);
    return rc;
}
