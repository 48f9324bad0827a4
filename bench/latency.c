/* labmq — round-trip latency and throughput of a property `get`, compared
 * with plain libzmq programs of the same shape.
 *
 * One run measures three systems under three CPU layouts and prints a table:
 *
 *   labmq       workers/labmqd with one sim-psu device; clients use
 *               lmq_proxy_get (1 in flight) and lmq_proxy_send_get/recv
 *               (pipelined), kept on ZeroMQ (lmq_proxy_set_local false).
 *   labmq-local the same daemon and calls over the device's local channel
 *               (a Unix SOCK_SEQPACKET socket served by the device thread).
 *   unix-floor  the kernel's floor for that: a raw SOCK_SEQPACKET ping-pong
 *               with a one-thread poll server, records of the local
 *               channel's sizes.
 *   raw-broker  client DEALER -> ROUTER + zmq_poll -> inproc PAIR -> device
 *               thread -> back; opaque frames of the sizes labmq puts on the
 *               wire (measured at start-up), no JSON.
 *   echo        client DEALER -> ROUTER that sends every message straight back.
 *
 * Every process is started with posix_spawn (this program re-executes itself
 * in a --role); a role pins itself with sched_setaffinity before it creates
 * its ZeroMQ context, so every thread it starts inherits the placement. The
 * parent (the "orchestrator") never creates a ZeroMQ context.
 *
 * Child protocol: a client prints "ready" on stdout once warmed up, waits for
 * a line on stdin (so several clients start together), runs, prints
 * "result CALLS ELAPSED_NS" and, in latency mode, one "s NS" line per sample.
 * A raw server prints "ready" once bound and exits when its stdin closes. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "child.h"
#include "labmq/labmq.h"

/* LMQ_BENCH_LABMQD: the labmqd of the build tree (set by bench/CMakeLists.txt). */


#define MAX_FRAMES 8
#define MAX_CLIENTS 16
#define FRAME_MAX_BYTES 4096

/* ------------------------------------------------------------------ */
/* options shared by all roles                                          */

typedef struct frames {
    int n;
    size_t size[MAX_FRAMES];
} frames_t;

typedef struct opts {
    const char *role; /* NULL = orchestrator */
    int cpu;          /* -1 = leave affinity alone */
    /* orchestrator */
    bool quick;
    long samples;
    long warmup;
    double duration_s;
    int rounds;
    int inflight;
    int clients;
    const char *labmqd;
    const char *property;
    const char *only; /* restrict layouts: "same", "split", "free" */
    /* roles */
    const char *system;   /* client: labmq | raw | echo */
    const char *endpoint; /* client, servers */
    const char *device;
    const char *mode; /* client: lat | thr */
    long count;
    frames_t req, rep;
    char **exec_argv; /* exec role: the rest of argv after "--" */
} opts_t;

/* "58" or "0,58" -> frames */
static int frames_parse(frames_t *f, const char *text)
{
    f->n = 0;
    const char *p = text;
    while (*p) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(p, &end, 10);
        if (end == p || errno || v > FRAME_MAX_BYTES || f->n == MAX_FRAMES)
            return -1;
        f->size[f->n++] = v;
        p = end;
        if (*p == ',')
            p++;
        else if (*p)
            return -1;
    }
    return f->n > 0 ? 0 : -1;
}

static void frames_format(const frames_t *f, char *buf, size_t size)
{
    size_t off = 0;
    buf[0] = '\0';
    for (int i = 0; i < f->n && off < size; i++)
        off += (size_t)snprintf(buf + off, size - off, "%s%zu", i ? "," : "", f->size[i]);
}

/* Sends the opaque frames of f, taken from buf (FRAME_MAX_BYTES). more: more
 * frames follow the last one. */
static int send_frames(void *sock, const frames_t *f, const char *buf, bool more)
{
    for (int i = 0; i < f->n; i++) {
        int flags = (i + 1 < f->n || more) ? ZMQ_SNDMORE : 0;
        if (zmq_send(sock, buf, f->size[i], flags) < 0)
            return -1;
    }
    return 0;
}

/* Receives and drops one whole multipart message. */
static int recv_drop(void *sock)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    int more;
    do {
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            zmq_msg_close(&m);
            return -1;
        }
        more = zmq_msg_more(&m);
    } while (more);
    zmq_msg_close(&m);
    return 0;
}

/* Moves one whole multipart message from `from` to `to` without copying. */
static int forward(void *from, void *to)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    int more;
    do {
        if (zmq_msg_recv(&m, from, 0) < 0) {
            zmq_msg_close(&m);
            return -1;
        }
        more = zmq_msg_more(&m);
        if (zmq_msg_send(&m, to, more ? ZMQ_SNDMORE : 0) < 0) {
            zmq_msg_close(&m);
            return -1;
        }
    } while (more);
    zmq_msg_close(&m);
    return 0;
}

static void *socket_new(void *ctx, int type)
{
    void *s = zmq_socket(ctx, type);
    if (s) {
        int linger = 0;
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    }
    return s;
}

/* A server has stdin as a pipe from the orchestrator; EOF means stop. */
static bool stdin_closed(void)
{
    char buf[64];
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    return n <= 0;
}

static void say_ready(void)
{
    printf("ready\n");
    fflush(stdout);
}

/* ------------------------------------------------------------------ */
/* role: echo                                                           */

static int role_echo(const opts_t *o)
{
    void *ctx = zmq_ctx_new();
    void *router = socket_new(ctx, ZMQ_ROUTER);
    if (zmq_bind(router, o->endpoint) != 0) {
        fprintf(stderr, "latency echo: bind %s: %s\n", o->endpoint, zmq_strerror(errno));
        return 1;
    }
    say_ready();
    zmq_pollitem_t items[] = {{router, 0, ZMQ_POLLIN, 0}, {NULL, STDIN_FILENO, ZMQ_POLLIN, 0}};
    for (;;) {
        if (zmq_poll(items, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if ((items[1].revents & (ZMQ_POLLIN | ZMQ_POLLERR)) && stdin_closed())
            break;
        if (items[0].revents & ZMQ_POLLIN)
            if (forward(router, router) != 0)
                break;
    }
    zmq_close(router);
    zmq_ctx_term(ctx);
    return 0;
}

/* ------------------------------------------------------------------ */
/* role: unix-echo — the floor of the local channel                     */

/* The local channel's framing adds a flag byte and a 4-byte frame count and
 * length to a one-frame message. */
#define LOCAL_OVERHEAD 9

static int unix_socket_at(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path)
        return -1;
    memcpy(sa->sun_path, path, strlen(path) + 1);
    return socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
}

/* One thread polls the listening socket and its clients, and answers each
 * record with one of the reply's size: what a device thread does, minus
 * labmq. */
static int role_unix_echo(const opts_t *o)
{
    struct sockaddr_un sa;
    int lfd = unix_socket_at(o->endpoint, &sa);
    unlink(o->endpoint);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 16) != 0) {
        fprintf(stderr, "latency unix-echo: %s: %s\n", o->endpoint, strerror(errno));
        return 1;
    }
    say_ready();
    char buf[FRAME_MAX_BYTES + 64], reply[FRAME_MAX_BYTES + 64];
    memset(reply, 'x', sizeof reply);
    size_t rlen = o->rep.size[0] + LOCAL_OVERHEAD;
    struct pollfd pf[2 + MAX_CLIENTS];
    nfds_t n = 2;
    pf[0] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
    pf[1] = (struct pollfd){.fd = lfd, .events = POLLIN};
    for (;;) {
        if (poll(pf, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pf[0].revents && stdin_closed())
            break;
        if ((pf[1].revents & POLLIN) && n < 2 + MAX_CLIENTS) {
            int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0)
                pf[n++] = (struct pollfd){.fd = fd, .events = POLLIN};
        }
        for (nfds_t i = 2; i < n; i++) {
            if (!pf[i].revents)
                continue;
            ssize_t got = recv(pf[i].fd, buf, sizeof buf, 0);
            if (got <= 0 || send(pf[i].fd, reply, rlen, MSG_NOSIGNAL) < 0) {
                close(pf[i].fd);
                pf[i--] = pf[--n];
            }
        }
    }
    for (nfds_t i = 2; i < n; i++)
        close(pf[i].fd);
    close(lfd);
    unlink(o->endpoint);
    return 0;
}

/* ------------------------------------------------------------------ */
/* role: raw-broker — the labmq daemon's shape without labmq            */

typedef struct raw_device {
    void *ctx;
    const char *pipe_ep;
    frames_t rep;
    char payload[FRAME_MAX_BYTES];
} raw_device_t;

/* The device thread: [identity][request frames...] in on its PAIR, answers
 * [identity][reply frames...]; "$TERM" ends it. */
static void *raw_device_run(void *arg)
{
    raw_device_t *dev = arg;
    void *pair = socket_new(dev->ctx, ZMQ_PAIR);
    if (zmq_connect(pair, dev->pipe_ep) != 0)
        abort(); /* inproc connect to a bound endpoint cannot fail */
    zmq_send(pair, "ready", 5, 0);
    zmq_msg_t id, m;
    zmq_msg_init(&id);
    zmq_msg_init(&m);
    for (;;) {
        if (zmq_msg_recv(&id, pair, 0) < 0)
            break;
        if (!zmq_msg_more(&id)) {
            if (zmq_msg_size(&id) == 5 && memcmp(zmq_msg_data(&id), "$TERM", 5) == 0)
                break;
            continue;
        }
        int more;
        do { /* the request: opaque, looked at only for its size */
            if (zmq_msg_recv(&m, pair, 0) < 0)
                goto out;
            more = zmq_msg_more(&m);
        } while (more);
        if (zmq_msg_send(&id, pair, ZMQ_SNDMORE) < 0 || send_frames(pair, &dev->rep, dev->payload, false) < 0)
            break;
    }
out:
    zmq_msg_close(&m);
    zmq_msg_close(&id);
    zmq_close(pair);
    return NULL;
}

static int role_raw_broker(const opts_t *o)
{
    raw_device_t dev = {.pipe_ep = "inproc://raw-device", .rep = o->rep};
    memset(dev.payload, 'x', sizeof dev.payload);
    dev.ctx = zmq_ctx_new();
    void *router = socket_new(dev.ctx, ZMQ_ROUTER);
    void *pair = socket_new(dev.ctx, ZMQ_PAIR);
    if (zmq_bind(router, o->endpoint) != 0 || zmq_bind(pair, dev.pipe_ep) != 0) {
        fprintf(stderr, "latency raw-broker: bind %s: %s\n", o->endpoint, zmq_strerror(errno));
        return 1;
    }
    pthread_t thread;
    if (pthread_create(&thread, NULL, raw_device_run, &dev) != 0)
        return 1;
    char ready[8];
    zmq_recv(pair, ready, sizeof ready, 0);
    say_ready();

    zmq_pollitem_t items[] = {
        {router, 0, ZMQ_POLLIN, 0}, {pair, 0, ZMQ_POLLIN, 0}, {NULL, STDIN_FILENO, ZMQ_POLLIN, 0}};
    for (;;) {
        if (zmq_poll(items, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if ((items[2].revents & (ZMQ_POLLIN | ZMQ_POLLERR)) && stdin_closed())
            break;
        if ((items[0].revents & ZMQ_POLLIN) && forward(router, pair) != 0)
            break;
        if ((items[1].revents & ZMQ_POLLIN) && forward(pair, router) != 0)
            break;
    }
    zmq_send(pair, "$TERM", 5, 0);
    pthread_join(thread, NULL);
    zmq_close(pair);
    zmq_close(router);
    zmq_ctx_term(dev.ctx);
    return 0;
}

/* ------------------------------------------------------------------ */
/* role: client                                                         */

/* One request/reply path, so the measuring loops are the same for every system. */
typedef struct client {
    const opts_t *o;
    void *ctx;
    void *dealer; /* raw, echo */
    char payload[FRAME_MAX_BYTES];
    lmq_proxy_t *proxy; /* labmq */
    int ufd;            /* unix: the floor's socket; -1 otherwise */
} client_t;

static int client_send(client_t *c)
{
    if (c->proxy) {
        uint64_t id;
        return lmq_proxy_send_get(c->proxy, c->o->property, &id);
    }
    if (c->ufd >= 0)
        return send(c->ufd, c->payload, c->o->req.size[0] + LOCAL_OVERHEAD, MSG_NOSIGNAL) < 0 ? -1 : 0;
    return send_frames(c->dealer, &c->o->req, c->payload, false);
}

static int client_recv(client_t *c)
{
    if (c->proxy) {
        uint64_t id;
        lmq_value_t v = {0};
        int rc = lmq_proxy_recv(c->proxy, &id, &v);
        lmq_value_clear(&v);
        return rc;
    }
    if (c->ufd >= 0) {
        char buf[FRAME_MAX_BYTES + 64];
        struct pollfd pf = {.fd = c->ufd, .events = POLLIN};
        return poll(&pf, 1, 5000) == 1 && recv(c->ufd, buf, sizeof buf, 0) > 0 ? 0 : -1;
    }
    zmq_pollitem_t item = {c->dealer, 0, ZMQ_POLLIN, 0};
    int n = zmq_poll(&item, 1, 5000);
    if (n <= 0)
        return -1;
    return recv_drop(c->dealer);
}

/* One synchronous call: what an application does. */
static int client_call(client_t *c)
{
    if (c->proxy) {
        lmq_value_t v = {0};
        int rc = lmq_proxy_get(c->proxy, c->o->property, &v);
        lmq_value_clear(&v);
        return rc;
    }
    if (client_send(c) != 0)
        return -1;
    return client_recv(c);
}

static const char *client_error(const client_t *c, int rc)
{
    if (c->proxy)
        return lmq_proxy_last_error(c->proxy)[0] ? lmq_proxy_last_error(c->proxy) : lmq_strerror(rc);
    return zmq_strerror(errno);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int role_client(const opts_t *o)
{
    client_t c = {.o = o, .ufd = -1};
    memset(c.payload, 'x', sizeof c.payload);
    c.ctx = zmq_ctx_new();
    bool labmq = strcmp(o->system, "labmq") == 0, local = strcmp(o->system, "local") == 0;
    if (labmq || local) {
        c.proxy = lmq_proxy_new(c.ctx, o->endpoint, o->device);
        if (!c.proxy)
            return 1;
        lmq_proxy_set_timeout(c.proxy, 5000);
        lmq_proxy_set_local(c.proxy, local); /* labmq: today's ZeroMQ path */
    } else if (strcmp(o->system, "unix") == 0) {
        struct sockaddr_un sa;
        c.ufd = unix_socket_at(o->endpoint, &sa);
        if (c.ufd < 0 || connect(c.ufd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
            o->req.size[0] + LOCAL_OVERHEAD > sizeof c.payload)
            return 1;
    } else {
        c.dealer = socket_new(c.ctx, ZMQ_DEALER);
        int hwm = 0;
        zmq_setsockopt(c.dealer, ZMQ_SNDHWM, &hwm, sizeof hwm);
        zmq_setsockopt(c.dealer, ZMQ_RCVHWM, &hwm, sizeof hwm);
        if (zmq_connect(c.dealer, o->endpoint) != 0)
            return 1;
    }

    /* The first call may wait for the server to come up (labmqd was just
     * started); then warm up connections, caches, first-call paths. */
    for (int64_t end = lmq_clock_mono_ns() + 15 * 1000000000LL;;) {
        int rc = client_call(&c);
        if (rc == 0)
            break;
        if (lmq_clock_mono_ns() > end) {
            fprintf(stderr, "latency client (%s): no answer from %s: %s\n", o->system, o->endpoint,
                    client_error(&c, rc));
            return 1;
        }
    }
    for (long i = 0; i < o->warmup; i++) {
        int rc = client_call(&c);
        if (rc != 0) {
            fprintf(stderr, "latency client (%s): warm-up call failed: %s\n", o->system, client_error(&c, rc));
            return 1;
        }
    }
    say_ready();
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        return 0; /* the orchestrator gave up */

    bool lat = strcmp(o->mode, "lat") == 0;
    int rc = 0;
    long done = 0;
    int64_t t0 = lmq_clock_mono_ns(), elapsed = 0;
    if (lat) {
        int64_t *s = malloc((size_t)o->count * sizeof *s);
        if (!s)
            return 1;
        for (; done < o->count; done++) {
            int64_t a = lmq_clock_mono_ns();
            if ((rc = client_call(&c)) != 0)
                break;
            s[done] = lmq_clock_mono_ns() - a;
        }
        elapsed = lmq_clock_mono_ns() - t0;
        printf("result %ld %" PRId64 "\n", done, elapsed);
        for (long i = 0; i < done; i++)
            printf("s %" PRId64 "\n", s[i]);
        free(s);
    } else {
        int64_t end = t0 + (int64_t)(o->duration_s * 1e9);
        int inflight = 0;
        while (rc == 0) {
            while (inflight < o->inflight && (rc = client_send(&c)) == 0)
                inflight++;
            if (rc != 0 || (rc = client_recv(&c)) != 0)
                break;
            inflight--;
            done++;
            int64_t t = lmq_clock_mono_ns();
            if (t >= end) {
                elapsed = t - t0;
                break;
            }
        }
        while (rc == 0 && inflight > 0 && client_recv(&c) == 0) /* drain */
            inflight--;
        printf("result %ld %" PRId64 "\n", done, elapsed);
    }
    if (rc != 0)
        fprintf(stderr, "latency client (%s): call failed: %s\n", o->system, client_error(&c, rc));
    if (rc == 0 && local && strcmp(lmq_proxy_last_path(c.proxy), "local") != 0) {
        fprintf(stderr, "latency client (local): the calls went by %s: the daemon offers no local channel\n",
                lmq_proxy_last_path(c.proxy));
        rc = 1;
    }
    fflush(stdout);
    if (c.ufd >= 0)
        close(c.ufd);
    lmq_proxy_destroy(&c.proxy);
    if (c.dealer)
        zmq_close(c.dealer);
    zmq_ctx_term(c.ctx);
    return rc != 0;
}

/* ------------------------------------------------------------------ */
/* role: sniff — the sizes of labmq's request and reply frames          */

/* Relays one message from `from` to `to`, noting the frame sizes in seen.
 * Router side: `id` receives the routing id of a request (id_in) or is sent
 * ahead of a reply (id_out); it is not counted. */
static int relay_one(void *from, void *to, frames_t *seen, zmq_msg_t *id_in, zmq_msg_t *id_out, int timeout_ms)
{
    zmq_pollitem_t item = {from, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout_ms) <= 0)
        return -1;
    if (id_in && (zmq_msg_recv(id_in, from, 0) < 0 || !zmq_msg_more(id_in)))
        return -1;
    if (id_out) {
        zmq_msg_t copy;
        zmq_msg_init(&copy);
        zmq_msg_copy(&copy, id_out);
        zmq_msg_send(&copy, to, ZMQ_SNDMORE);
        zmq_msg_close(&copy);
    }
    zmq_msg_t m;
    zmq_msg_init(&m);
    int more;
    seen->n = 0;
    do {
        if (zmq_msg_recv(&m, from, 0) < 0)
            return -1;
        more = zmq_msg_more(&m);
        if (seen->n < MAX_FRAMES)
            seen->size[seen->n++] = zmq_msg_size(&m);
        zmq_msg_send(&m, to, more ? ZMQ_SNDMORE : 0);
    } while (more);
    zmq_msg_close(&m);
    return 0;
}

/* Puts an inproc ROUTER between an lmq_proxy and the daemon (all on this one
 * thread: send_get, relay, recv), so the sizes are the proxy's and the
 * daemon's own. Also waits for the daemon to come up. Prints "req A,B" and
 * "rep C,D". */
static int role_sniff(const opts_t *o)
{
    void *ctx = zmq_ctx_new();
    lmq_proxy_t *ping = lmq_proxy_new(ctx, o->endpoint, NULL);
    lmq_proxy_set_timeout(ping, 250);
    int rc = LMQ_EUNREACH;
    for (int64_t end = lmq_clock_mono_ns() + 15 * 1000000000LL; lmq_clock_mono_ns() < end;) {
        char *json = NULL;
        rc = lmq_proxy_ping(ping, &json);
        free(json);
        if (rc == 0)
            break;
    }
    lmq_proxy_destroy(&ping);
    if (rc != 0) {
        fprintf(stderr, "latency: no labmqd answers at %s: %s\n", o->endpoint, lmq_strerror(rc));
        zmq_ctx_term(ctx);
        return 1;
    }

    const char *relay_ep = "inproc://latency-sniff";
    void *router = socket_new(ctx, ZMQ_ROUTER);
    void *dealer = socket_new(ctx, ZMQ_DEALER);
    zmq_bind(router, relay_ep);
    zmq_connect(dealer, o->endpoint);
    lmq_proxy_t *p = lmq_proxy_new(ctx, relay_ep, o->device);
    frames_t req = {0}, rep = {0};
    zmq_msg_t rid;
    zmq_msg_init(&rid);
    /* ids grow during a run; look at a request well into the count. */
    for (int i = 0; i < 1000 && rc == 0; i++) {
        uint64_t id;
        lmq_value_t v = {0};
        rc = lmq_proxy_send_get(p, o->property, &id);
        if (rc == 0 && relay_one(router, dealer, &req, &rid, NULL, 5000) == 0 &&
            relay_one(dealer, router, &rep, NULL, &rid, 5000) == 0)
            rc = lmq_proxy_recv(p, &id, &v);
        else if (rc == 0)
            rc = LMQ_ETIMEOUT;
        lmq_value_clear(&v);
    }
    if (rc != 0)
        fprintf(stderr, "latency: get %s.%s failed: %s\n", o->device, o->property,
                p && lmq_proxy_last_error(p)[0] ? lmq_proxy_last_error(p) : lmq_strerror(rc));
    char a[64], b[64];
    frames_format(&req, a, sizeof a);
    frames_format(&rep, b, sizeof b);
    printf("req %s\nrep %s\n", a, b);
    fflush(stdout);
    zmq_msg_close(&rid);
    lmq_proxy_destroy(&p);
    zmq_close(dealer);
    zmq_close(router);
    zmq_ctx_term(ctx);
    return rc != 0;
}

/* ------------------------------------------------------------------ */
/* role: exec — pin, then become another program (labmqd)              */

static int role_exec(const opts_t *o)
{
    if (!o->exec_argv || !o->exec_argv[0])
        return 2;
    execv(o->exec_argv[0], o->exec_argv);
    fprintf(stderr, "latency: exec %s: %s\n", o->exec_argv[0], strerror(errno));
    return 127;
}

/* ------------------------------------------------------------------ */
/* orchestrator                                                         */

typedef struct bench {
    const opts_t *o;
    char self[PATH_MAX];
    char dir[64];
    char control[128], data[128], raw_ep[128], echo_ep[128], floor_path[128];
    char config[128], daemon_log[128];
    frames_t req, rep;
    bool have_labmq;
    int ncpu;
} bench_t;

/* argv for a role of this program, pinned to cpu. */
static void av_role(argvb_t *a, const bench_t *b, const char *role, int cpu)
{
    a->n = 0;
    a->nnum = 0;
    av_add(a, b->self);
    av_add(a, "--role");
    av_add(a, role);
    av_add(a, "--cpu");
    av_add(a, av_num(a, "%.0f", cpu));
}

typedef struct layout {
    const char *name;
    int server_cpu, client_cpu;
} layout_t;

enum { SYS_LABMQ, SYS_LOCAL, SYS_RAW, SYS_ECHO, SYS_FLOOR, NSYS };
static const char *const sys_name[NSYS] = {"labmq", "labmq-local", "raw-broker", "echo", "unix-floor"};
static const char *const sys_arg[NSYS] = {"labmq", "local", "raw", "echo", "unix"};

enum { M_LAT, M_THR1, M_THRN, NMODE };

typedef struct result {
    int64_t *s;
    size_t ns, cap;
    long calls[NMODE];
    int64_t elapsed[NMODE];
    double rate[NMODE]; /* calls/s, summed over rounds and clients */
    int rate_runs[NMODE];
    bool failed;
} result_t;

static int start_servers(bench_t *b, const layout_t *l, child_t srv[NSYS])
{
    argvb_t a;
    for (int i = 0; i < NSYS; i++)
        srv[i].pid = -1;
    if (b->have_labmq) {
        av_role(&a, b, "exec", l->server_cpu);
        av_add(&a, "--");
        av_add(&a, b->o->labmqd);
        av_add(&a, "--config");
        av_add(&a, b->config);
        av_add(&a, "--control");
        av_add(&a, b->control);
        av_add(&a, "--data");
        av_add(&a, b->data);
        if (child_spawn(&srv[SYS_LABMQ], a.v, b->daemon_log) != 0) {
            fprintf(stderr, "latency: cannot start %s: %s\n", b->o->labmqd, strerror(errno));
            return -1;
        }
    }
    char rep[64], line[64];
    frames_format(&b->rep, rep, sizeof rep);
    av_role(&a, b, "raw-broker", l->server_cpu);
    av_add(&a, "--endpoint");
    av_add(&a, b->raw_ep);
    av_add(&a, "--rep");
    av_add(&a, rep);
    if (child_spawn(&srv[SYS_RAW], a.v, NULL) != 0 || child_expect(&srv[SYS_RAW], "ready", line, sizeof line))
        return -1;
    av_role(&a, b, "echo", l->server_cpu);
    av_add(&a, "--endpoint");
    av_add(&a, b->echo_ep);
    if (child_spawn(&srv[SYS_ECHO], a.v, NULL) != 0 || child_expect(&srv[SYS_ECHO], "ready", line, sizeof line))
        return -1;
    av_role(&a, b, "unix-echo", l->server_cpu);
    av_add(&a, "--endpoint");
    av_add(&a, b->floor_path);
    av_add(&a, "--rep");
    av_add(&a, rep);
    if (child_spawn(&srv[SYS_FLOOR], a.v, NULL) != 0 || child_expect(&srv[SYS_FLOOR], "ready", line, sizeof line))
        return -1;
    return 0;
}

static void stop_servers(child_t srv[NSYS])
{
    for (int i = 0; i < NSYS; i++)
        if (srv[i].pid > 0)
            child_finish(&srv[i], i == SYS_LABMQ ? SIGTERM : 0, 5000);
}

/* One measurement: nclients clients of one system, started together. With
 * mix_sys >= 0 (pipelined, mode M_THR1): one client of sys and one of
 * mix_sys at once, the second's results into mix_r: the mixed load. */
static int run_clients(bench_t *b, const layout_t *l, int sys, int mode, long count, double duration,
                       result_t *r, int mix_sys, result_t *mix_r)
{
    const opts_t *o = b->o;
    int nclients = mode == M_THRN ? o->clients : mix_sys >= 0 ? 2 : 1;
    result_t *rr[MAX_CLIENTS];
    int first_sys = sys;
    child_t c[MAX_CLIENTS];
    char req[64], line[128];
    frames_format(&b->req, req, sizeof req);
    int started = 0, rc = 0;
    for (; started < nclients; started++) {
        sys = started == 1 && mix_sys >= 0 ? mix_sys : first_sys;
        rr[started] = started == 1 && mix_sys >= 0 ? mix_r : r;
        const char *ep = sys == SYS_LABMQ || sys == SYS_LOCAL ? b->control
                         : sys == SYS_RAW                    ? b->raw_ep
                         : sys == SYS_FLOOR                  ? b->floor_path
                                                             : b->echo_ep;
        argvb_t a;
        av_role(&a, b, "client", l->client_cpu);
        av_add(&a, "--system");
        av_add(&a, sys_arg[sys]);
        av_add(&a, "--endpoint");
        av_add(&a, ep);
        av_add(&a, "--device");
        av_add(&a, "psu1");
        av_add(&a, "--property");
        av_add(&a, o->property);
        av_add(&a, "--req");
        av_add(&a, req);
        av_add(&a, "--mode");
        av_add(&a, mode == M_LAT ? "lat" : "thr");
        av_add(&a, "--count");
        av_add(&a, av_num(&a, "%.0f", (double)count));
        av_add(&a, "--warmup");
        av_add(&a, av_num(&a, "%.0f", (double)o->warmup));
        av_add(&a, "--duration");
        av_add(&a, av_num(&a, "%.3f", duration));
        av_add(&a, "--inflight");
        av_add(&a, av_num(&a, "%.0f", mode == M_LAT ? 1 : o->inflight));
        if (child_spawn(&c[started], a.v, NULL) != 0) {
            rc = -1;
            break;
        }
    }
    for (int i = 0; i < started && rc == 0; i++)
        if (child_expect(&c[i], "ready", line, sizeof line) != 0)
            rc = -1;
    for (int i = 0; i < started && rc == 0; i++) /* go */
        if (write(c[i].in, "go\n", 3) != 3)
            rc = -1;
    for (int i = 0; i < started; i++) {
        long calls = 0;
        int64_t elapsed = 0;
        if (rc == 0 && (child_expect(&c[i], "result", line, sizeof line) != 0 ||
                        sscanf(line, "result %ld %" SCNd64, &calls, &elapsed) != 2))
            rc = -1;
        r = rr[i];
        if (rc == 0 && mode == M_LAT) {
            while (fgets(line, sizeof line, c[i].out)) {
                int64_t v;
                if (sscanf(line, "s %" SCNd64, &v) != 1)
                    continue;
                if (r->ns == r->cap) {
                    size_t cap = r->cap ? 2 * r->cap : 4096;
                    int64_t *s = realloc(r->s, cap * sizeof *s);
                    if (!s) {
                        rc = -1;
                        break;
                    }
                    r->s = s;
                    r->cap = cap;
                }
                r->s[r->ns++] = v;
            }
        }
        if (rc == 0 && elapsed > 0) {
            r->calls[mode] += calls;
            r->elapsed[mode] += elapsed;
            r->rate[mode] += (double)calls * 1e9 / (double)elapsed;
        }
        if (child_finish(&c[i], rc == 0 ? 0 : SIGTERM, 10000) != 0)
            rc = -1;
    }
    for (int i = 0; i < nclients && rc == 0 && mode != M_LAT; i++)
        if (i == 0 || rr[i] != rr[0])
            rr[i]->rate_runs[mode]++;
    if (rc != 0) {
        rr[0]->failed = true;
        fprintf(stderr, "latency: %s clients failed (%s layout)\n", sys_name[first_sys], l->name);
    }
    return rc;
}

static double pct(const result_t *r, double q)
{
    if (r->ns == 0)
        return 0;
    size_t k = (size_t)(q * (double)r->ns + 0.999999);
    if (k < 1)
        k = 1;
    if (k > r->ns)
        k = r->ns;
    return (double)r->s[k - 1] / 1e3;
}

static double rate(const result_t *r, int mode)
{
    if (mode == M_LAT)
        return r->elapsed[M_LAT] > 0 ? (double)r->calls[M_LAT] * 1e9 / (double)r->elapsed[M_LAT] : 0;
    return r->rate_runs[mode] > 0 ? r->rate[mode] / r->rate_runs[mode] : 0;
}

static void print_ratio(double num, double den, bool lower_better, double target, char *buf, size_t size)
{
    if (num <= 0 || den <= 0) {
        snprintf(buf, size, "%s", "n/a");
        return;
    }
    double x = floor(num / den * 100 + 0.5) / 100; /* judged as printed */
    bool ok = lower_better ? x <= target : x >= target;
    snprintf(buf, size, "%.2fx %s", x, ok ? "ok" : "MISS");
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: latency [--quick] [--samples N] [--warmup N] [--duration S] [--rounds R]\n"
            "               [--inflight K] [--clients C] [--layout same|split|free] [--labmqd PATH]\n"
            "               [--property NAME]\n"
            "\n"
            "Measures a `get` of a sim-psu property through labmqd (labmq), through a raw libzmq\n"
            "broker of the same shape (raw-broker) and through a DEALER/ROUTER echo (echo), with\n"
            "clients and servers on the same CPU, on separate CPUs, and unpinned.\n"
            "\n"
            "  --quick        small counts for a smoke test (about 10 s)\n"
            "  --samples N    round trips per system and layout for the latency columns (20000)\n"
            "  --warmup N     calls each client makes before measuring (1000)\n"
            "  --duration S   seconds per throughput run (2.0), split over the rounds\n"
            "  --rounds R     alternate the systems R times per layout and merge (3)\n"
            "  --inflight K   requests each client keeps in flight in the pipelined columns (16)\n"
            "  --clients C    client processes in the last column (4)\n"
            "  --layout L     run only one layout\n"
            "  --labmqd PATH  the daemon (default " LMQ_BENCH_LABMQD ")\n"
            "  --property P   the property read (default voltage)\n");
}

static int orchestrate(const opts_t *o)
{
    bench_t b = {.o = o};
    ssize_t n = readlink("/proc/self/exe", b.self, sizeof b.self - 1);
    if (n <= 0)
        return 1;
    b.self[n] = '\0';
    snprintf(b.dir, sizeof b.dir, "/tmp/lmq-bench-XXXXXX");
    if (!mkdtemp(b.dir)) {
        perror("latency: mkdtemp");
        return 1;
    }
    snprintf(b.control, sizeof b.control, "ipc://%s/control", b.dir);
    snprintf(b.data, sizeof b.data, "ipc://%s/data", b.dir);
    snprintf(b.raw_ep, sizeof b.raw_ep, "ipc://%s/raw", b.dir);
    snprintf(b.echo_ep, sizeof b.echo_ep, "ipc://%s/echo", b.dir);
    snprintf(b.floor_path, sizeof b.floor_path, "%s/floor", b.dir);
    snprintf(b.config, sizeof b.config, "%s/labmqd.yaml", b.dir);
    snprintf(b.daemon_log, sizeof b.daemon_log, "%s/labmqd.log", b.dir);
    b.ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    write_file(b.config, "devices:\n  - name: psu1\n    driver: sim-psu\n");
    int status = 0;

    /* labmq's own frame sizes, from a daemon on no particular CPU; these
     * typical sizes stand in when labmq cannot be run. */
    const frames_t assumed_req = {1, {58}}, assumed_rep = {1, {48}};
    b.req = assumed_req;
    b.rep = assumed_rep;
    b.have_labmq = access(o->labmqd, X_OK) == 0;
    if (!b.have_labmq) {
        fprintf(stderr, "latency: %s not found or not executable; labmq rows skipped\n", o->labmqd);
        status = 1;
    }
    if (b.have_labmq) {
        layout_t any = {"free", -1, -1};
        child_t srv[NSYS], sn = {.pid = -1, .out = NULL, .in = -1};
        char line[128];
        argvb_t a;
        int ok = start_servers(&b, &any, srv) == 0;
        av_role(&a, &b, "sniff", -1);
        av_add(&a, "--endpoint");
        av_add(&a, b.control);
        av_add(&a, "--device");
        av_add(&a, "psu1");
        av_add(&a, "--property");
        av_add(&a, o->property);
        ok = ok && child_spawn(&sn, a.v, NULL) == 0;
        ok = ok && child_expect(&sn, "req ", line, sizeof line) == 0 && frames_parse(&b.req, line + 4) == 0;
        ok = ok && child_expect(&sn, "rep ", line, sizeof line) == 0 && frames_parse(&b.rep, line + 4) == 0;
        if (sn.pid > 0 && child_finish(&sn, 0, 10000) != 0)
            ok = 0;
        stop_servers(srv);
        if (!ok) {
            b.req = assumed_req;
            b.rep = assumed_rep;
            fprintf(stderr, "latency: labmq does not work; labmq rows skipped. Daemon log (%s):\n", b.daemon_log);
            FILE *f = fopen(b.daemon_log, "r");
            char buf[512];
            while (f && fgets(buf, sizeof buf, f))
                fputs(buf, stderr);
            if (f)
                fclose(f);
            b.have_labmq = false;
            status = 1;
        }
    }

    layout_t layouts[] = {{"same", 0, 0}, {"split", 0, 1}, {"free", -1, -1}};
    const char *layout_doc[] = {"server and clients on CPU 0", "server on CPU 0, clients on CPU 1",
                                "no affinity set"};
    result_t res[3][NSYS], mix[3][2];
    memset(res, 0, sizeof res);
    memset(mix, 0, sizeof mix);
    bool ran[3] = {false, false, false};
    int rounds = o->rounds < 1 ? 1 : o->rounds;
    for (int li = 0; li < 3; li++) {
        const layout_t *l = &layouts[li];
        if (o->only && strcmp(o->only, l->name) != 0)
            continue;
        if (b.ncpu < 2 && l->client_cpu >= 1)
            continue;
        child_t srv[NSYS];
        fprintf(stderr, "latency: layout %s ...\n", l->name);
        if (start_servers(&b, l, srv) != 0) {
            fprintf(stderr, "latency: cannot start the servers\n");
            stop_servers(srv);
            status = 1;
            continue;
        }
        ran[li] = true;
        for (int round = 0; round < rounds; round++)
            for (int mode = 0; mode < NMODE; mode++)
                for (int k = 0; k < NSYS; k++) {
                    /* alternate the order so no system always goes first */
                    int sys = (k + round) % NSYS;
                    if ((sys == SYS_LABMQ || sys == SYS_LOCAL) && !b.have_labmq)
                        continue;
                    if (res[li][sys].failed)
                        continue;
                    long count = (o->samples + rounds - 1) / rounds;
                    if (run_clients(&b, l, sys, mode, count, o->duration_s / rounds, &res[li][sys], -1, NULL) != 0)
                        status = 1;
                }
        /* mixed load: a pipelined client on each path of the same device at once */
        for (int round = 0; round < rounds && b.have_labmq; round++)
            if (run_clients(&b, l, SYS_LOCAL, M_THR1, 1, o->duration_s / rounds, &mix[li][0], SYS_LABMQ,
                            &mix[li][1]) != 0)
                status = 1;
        stop_servers(srv);
    }

    /* ---- the table ---- */
    char req[64], rep[64];
    frames_format(&b.req, req, sizeof req);
    frames_format(&b.rep, rep, sizeof rep);
    printf("\nlabmq latency benchmark: get psu1.%s (sim-psu), %d CPUs online\n", o->property, b.ncpu);
    printf("%ld samples per system and layout after %ld warm-up calls; throughput %.2f s per column; "
           "%d round(s)\n",
           o->samples, o->warmup, o->duration_s, rounds);
    printf("wire: request %s B, reply %s B (per frame after the routing id; %s)\n\n", req, rep,
           b.have_labmq ? "measured from labmq" : "assumed: labmq not run");
    char c1[32], c2[32], c3[32];
    snprintf(c1, sizeof c1, "calls/s 1x1");
    snprintf(c2, sizeof c2, "calls/s 1x%d", o->inflight);
    snprintf(c3, sizeof c3, "calls/s %dx%d", o->clients, o->inflight);
    printf("%-6s %-12s %10s %10s %13s %13s %13s\n", "layout", "system", "p50 us", "p99 us", c1, c2, c3);
    printf("%-6s %-12s %10s %10s %13s %13s %13s\n", "------", "------------", "----------", "----------",
           "-------------", "-------------", "-------------");
    for (int li = 0; li < 3; li++) {
        if (!ran[li])
            continue;
        for (int sys = 0; sys < NSYS; sys++) {
            result_t *r = &res[li][sys];
            if (r->ns)
                qsort(r->s, r->ns, sizeof *r->s, cmp_i64);
            printf("%-6s %-12s", sys == 0 ? layouts[li].name : "", sys_name[sys]);
            if (r->ns == 0 || r->failed) {
                printf(" %10s %10s %13s %13s %13s\n", "n/a", "n/a", "n/a", "n/a", "n/a");
                continue;
            }
            printf(" %10.1f %10.1f %13.0f %13.0f %13.0f\n", pct(r, 0.5), pct(r, 0.99), rate(r, M_LAT),
                   rate(r, M_THR1), rate(r, M_THRN));
        }
        result_t *lm = &res[li][SYS_LABMQ], *rw = &res[li][SYS_RAW];
        char r1[16], r2[16], r3[16], r4[16], r5[16];
        bool have = lm->ns && rw->ns && !lm->failed && !rw->failed;
        print_ratio(have ? pct(lm, 0.5) : 0, pct(rw, 0.5), true, 1.25, r1, sizeof r1);
        print_ratio(have ? pct(lm, 0.99) : 0, pct(rw, 0.99), true, 1.25, r2, sizeof r2);
        print_ratio(have ? rate(lm, M_LAT) : 0, rate(rw, M_LAT), false, 0.8, r3, sizeof r3);
        print_ratio(have ? rate(lm, M_THR1) : 0, rate(rw, M_THR1), false, 0.8, r4, sizeof r4);
        print_ratio(have ? rate(lm, M_THRN) : 0, rate(rw, M_THRN), false, 0.8, r5, sizeof r5);
        printf("%-6s %-12s %10s %10s %13s %13s %13s\n", "", "labmq/raw", r1, r2, r3, r4, r5);
        /* the local channel against its floor (<= 1.5x) and against the ZeroMQ path (>= 5x faster; pipelined >= 1x) */
        result_t *lo = &res[li][SYS_LOCAL], *fl = &res[li][SYS_FLOOR];
        have = lo->ns && fl->ns && !lo->failed && !fl->failed;
        print_ratio(have ? pct(lo, 0.5) : 0, pct(fl, 0.5), true, 1.5, r1, sizeof r1);
        print_ratio(have ? pct(lo, 0.99) : 0, pct(fl, 0.99), true, 1.5, r2, sizeof r2);
        printf("%-6s %-12s %10s %10s\n", "", "local/floor", r1, r2);
        have = lo->ns && lm->ns && !lo->failed && !lm->failed;
        print_ratio(have ? pct(lm, 0.5) : 0, pct(lo, 0.5), false, 5.0, r1, sizeof r1);
        print_ratio(have ? pct(lm, 0.99) : 0, pct(lo, 0.99), false, 5.0, r2, sizeof r2);
        print_ratio(have ? rate(lo, M_LAT) : 0, rate(lm, M_LAT), false, 5.0, r3, sizeof r3);
        print_ratio(have ? rate(lo, M_THR1) : 0, rate(lm, M_THR1), false, 1.0, r4, sizeof r4);
        print_ratio(have ? rate(lo, M_THRN) : 0, rate(lm, M_THRN), false, 1.0, r5, sizeof r5);
        printf("%-6s %-12s %10s %10s %13s %13s %13s\n\n", "", "zmq/local", r1, r2, r3, r4, r5);
    }
    if (b.have_labmq) {
        printf("mixed load: one labmq-local and one labmq client, %d in flight each, on the same device at once\n",
               o->inflight);
        printf("%-6s %15s %15s %15s %15s\n", "layout", "local calls/s", "alone", "zmq calls/s", "alone");
        for (int li = 0; li < 3; li++)
            if (ran[li] && !mix[li][0].failed)
                printf("%-6s %15.0f %15.0f %15.0f %15.0f\n", layouts[li].name, rate(&mix[li][0], M_THR1),
                       rate(&res[li][SYS_LOCAL], M_THR1), rate(&mix[li][1], M_THR1), rate(&res[li][SYS_LABMQ], M_THR1));
        printf("\n");
    }
    printf("layouts: ");
    for (int li = 0; li < 3; li++)
        printf("%s%s = %s", li ? "; " : "", layouts[li].name, layout_doc[li]);
    printf(".\n");
    printf("systems: labmq = labmqd + lmq_proxy_get / lmq_proxy_send_get+recv on ZeroMQ; labmq-local = the same\n"
           "  over the device's local channel; unix-floor = SOCK_SEQPACKET ping-pong to a one-thread poll\n"
           "  server, records of the channel's sizes; raw-broker = DEALER -> ROUTER\n"
           "  + zmq_poll -> inproc PAIR -> device thread -> back, opaque frames of labmq's sizes, no JSON;\n"
           "  echo = DEALER -> ROUTER that returns each message (the floor of one process hop).\n");
    printf("columns: p50/p99 = round trip of one client with 1 call in flight (microseconds);\n"
           "  calls/s AxB = completed calls per second, summed over A client processes with up to B in\n"
           "  flight each (1x1 comes from the latency run).\n");
    printf("ratio: labmq/raw-broker; targets p50, p99 <= 1.25x, calls/s >= 0.80x (ok / MISS).\n"
           "  local/floor: labmq-local / unix-floor, target p50, p99 <= 1.5x. zmq/local: how many times\n"
           "  labmq-local beats labmq: targets p50, p99, calls/s 1x1 >= 5x, pipelined calls/s >= 1x.\n");

    for (int li = 0; li < 3; li++)
        for (int sys = 0; sys < NSYS; sys++)
            free(res[li][sys].s);
    unlink(b.config);
    const char *sockets[] = {b.control, b.data, b.raw_ep, b.echo_ep};
    for (size_t i = 0; i < sizeof sockets / sizeof *sockets; i++)
        unlink(sockets[i] + strlen("ipc://"));
    if (status == 0)
        unlink(b.daemon_log);
    else if (access(b.daemon_log, F_OK) == 0)
        fprintf(stderr, "latency: daemon log kept in %s\n", b.daemon_log);
    if (status == 0)
        rmdir(b.dir);
    return status;
}

/* ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    opts_t o = {
        .cpu = -1,
        .samples = 20000,
        .warmup = 1000,
        .duration_s = 2.0,
        .rounds = 3,
        .inflight = 16,
        .clients = 4,
        .labmqd = LMQ_BENCH_LABMQD,
        .property = "voltage",
        .device = "psu1",
        .mode = "lat",
        .count = 1000,
    };
    bool samples_set = false, duration_set = false, warmup_set = false, rounds_set = false;
    enum {
        O_ROLE = 256, O_CPU, O_SYSTEM, O_ENDPOINT, O_DEVICE, O_MODE, O_COUNT, O_REQ, O_REP, O_LABMQD,
        O_PROPERTY, O_LAYOUT, O_INFLIGHT, O_CLIENTS, O_WARMUP, O_ROUNDS
    };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"quick", no_argument, NULL, 'q'},
        {"samples", required_argument, NULL, 'n'},
        {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"rounds", required_argument, NULL, O_ROUNDS},
        {"inflight", required_argument, NULL, O_INFLIGHT},
        {"clients", required_argument, NULL, O_CLIENTS},
        {"layout", required_argument, NULL, O_LAYOUT},
        {"labmqd", required_argument, NULL, O_LABMQD},
        {"property", required_argument, NULL, O_PROPERTY},
        {"role", required_argument, NULL, O_ROLE},
        {"cpu", required_argument, NULL, O_CPU},
        {"system", required_argument, NULL, O_SYSTEM},
        {"endpoint", required_argument, NULL, O_ENDPOINT},
        {"device", required_argument, NULL, O_DEVICE},
        {"mode", required_argument, NULL, O_MODE},
        {"count", required_argument, NULL, O_COUNT},
        {"req", required_argument, NULL, O_REQ},
        {"rep", required_argument, NULL, O_REP},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "hqn:d:", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': usage(stdout); return 0;
        case 'q': o.quick = true; break;
        case 'n': o.samples = atol(optarg); samples_set = true; break;
        case 'd': o.duration_s = atof(optarg); duration_set = true; break;
        case O_WARMUP: o.warmup = atol(optarg); warmup_set = true; break;
        case O_ROUNDS: o.rounds = atoi(optarg); rounds_set = true; break;
        case O_INFLIGHT: o.inflight = atoi(optarg); break;
        case O_CLIENTS: o.clients = atoi(optarg); break;
        case O_LAYOUT: o.only = optarg; break;
        case O_LABMQD: o.labmqd = optarg; break;
        case O_PROPERTY: o.property = optarg; break;
        case O_ROLE: o.role = optarg; break;
        case O_CPU: o.cpu = atoi(optarg); break;
        case O_SYSTEM: o.system = optarg; break;
        case O_ENDPOINT: o.endpoint = optarg; break;
        case O_DEVICE: o.device = optarg; break;
        case O_MODE: o.mode = optarg; break;
        case O_COUNT: o.count = atol(optarg); break;
        case O_REQ:
            if (frames_parse(&o.req, optarg) != 0)
                return 2;
            break;
        case O_REP:
            if (frames_parse(&o.rep, optarg) != 0)
                return 2;
            break;
        default: usage(stderr); return 2;
        }
    }
    o.exec_argv = argv + optind;
    if (pin_self(o.cpu) != 0)
        return 1;
    if (o.role) {
        signal(SIGPIPE, SIG_IGN);
        if (strcmp(o.role, "exec") == 0)
            return role_exec(&o);
        if (!o.endpoint) {
            fprintf(stderr, "latency: --role %s needs --endpoint\n", o.role);
            return 2;
        }
        if (strcmp(o.role, "echo") == 0)
            return role_echo(&o);
        if (strcmp(o.role, "unix-echo") == 0)
            return o.rep.n ? role_unix_echo(&o) : 2;
        if (strcmp(o.role, "raw-broker") == 0)
            return o.rep.n ? role_raw_broker(&o) : 2;
        if (strcmp(o.role, "client") == 0)
            return o.system && (o.req.n || strcmp(o.system, "labmq") == 0 || strcmp(o.system, "local") == 0) &&
                           o.count > 0
                       ? role_client(&o)
                       : 2;
        if (strcmp(o.role, "sniff") == 0)
            return role_sniff(&o);
        fprintf(stderr, "latency: unknown role '%s'\n", o.role);
        return 2;
    }
    if (o.quick) {
        if (!samples_set)
            o.samples = 1000;
        if (!warmup_set)
            o.warmup = 100;
        if (!duration_set)
            o.duration_s = 0.3;
        if (!rounds_set)
            o.rounds = 1;
    }
    if (o.samples < 1 || o.duration_s <= 0 || o.inflight < 1 || o.clients < 1 || o.clients > MAX_CLIENTS ||
        o.warmup < 0) {
        usage(stderr);
        return 2;
    }
    if (o.only && strcmp(o.only, "same") && strcmp(o.only, "split") && strcmp(o.only, "free")) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    return orchestrate(&o);
}
