/* labmq — stream throughput: blocks/s and MB/s from a device through the
 * daemon to a subscriber process, next to raw libzmq PUB -> SUB over the same
 * transport with the same block sizes and process layout, in the same run.
 *
 *   labmq  a daemon (lmq_daemon_new/lmq_daemon_add, ipc:// endpoints in a
 *          temp dir) runs the "bench-source" driver defined below, whose
 *          stream poll publishes blocks with lmq_dev_publish_take; the
 *          subscriber reads them with lmq_sub_recv from a plain SUB socket
 *          on the data endpoint (lmq_sub_new).
 *   flow   the same daemon; the subscriber is a lossless flow subscription
 *          on the control endpoint (lmq_sub_new_opts, protocol 3.2: credit,
 *          the daemon's bounded queue), with the default window.
 *   raw    one thread publishes the same blocks (malloc'd, handed to
 *          zmq_msg_init_data) on a PUB socket as topic + 16-byte binary
 *          header (seq, t_ns) + payload; the subscriber is a SUB socket.
 *
 * "As fast as the subscriber consumes": PUB/SUB has no back-pressure (a
 * publisher that outruns its subscriber loses blocks at the high-water mark,
 * and a 4 MiB block queue would take gigabytes), so both publishers are held
 * to a window of blocks in flight by a counter the subscriber shares with
 * them in a mapped file: the subscriber stores seq + 1 of each block it has
 * consumed, the publisher sleeps on a futex when `window` blocks are
 * unacknowledged. The window stays far below every high-water mark on the
 * way, so a block lost anywhere is a real loss and shows as a seq gap.
 * A publisher that sees no progress for PROBE_NS sends one block anyway:
 * blocks published before the subscription reached it were dropped, and
 * the first block the subscriber does get re-synchronises the window.
 *
 * Every process is started with posix_spawn (this program re-executes itself
 * in a --role) and pins itself with sched_setaffinity before it creates its
 * ZeroMQ context; the orchestrator never creates one.
 *
 * Child protocol: a publisher prints "ready" once bound, "cpu NS FAULTS" when
 * told to stop through the shared file (its CPU time and minor page faults
 * while the subscriber was measuring), and exits. A subscriber prints
 * "result BLOCKS BYTES LOST ERRORS ELAPSED_NS CPU_NS" and exits. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "child.h"
#include "labmq/labmq.h"


#define TOPIC "src/data"
#define MAX_WINDOW 256      /* blocks: a PUB sees its queue up to ~500 + 1 ms of blocks late; XPUB holds 1000 */
#define PROBE_NS 20000000LL /* no progress for this long: send one block anyway */
#define WAIT_NS 1000000LL   /* one futex wait; the device thread then serves requests */
#define POLL_BATCH 256      /* blocks per driver poll at most */
#define OPEN_BATCH 4096     /* open loop: blocks per poll at most, catching up after a stall */

static const size_t default_sizes[] = {64, 4096, 65536, 1048576, 4194304};
#define NSIZES (sizeof default_sizes / sizeof default_sizes[0])

/* ------------------------------------------------------------------ */
/* the shared window                                                    */

typedef struct ctl {
    alignas(64) _Atomic uint64_t acked; /* seq + 1 of the newest block consumed */
    alignas(64) _Atomic uint64_t want;  /* the publisher sleeps until acked >= want */
    _Atomic uint32_t wake;              /* futex word, bumped to wake the publisher */
    _Atomic uint32_t waiting;
    alignas(64) _Atomic uint32_t measuring; /* subscriber: 1 while measuring, 2 after */
    _Atomic uint32_t stop;                  /* orchestrator: publisher, stop */
} ctl_t;

static ctl_t *ctl_map(const char *path, bool create)
{
    int fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0), 0600);
    if (fd < 0) {
        fprintf(stderr, "streams: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    if (create && ftruncate(fd, sizeof(ctl_t)) != 0) {
        fprintf(stderr, "streams: %s: %s\n", path, strerror(errno));
        close(fd);
        return NULL;
    }
    void *p = mmap(NULL, sizeof(ctl_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        fprintf(stderr, "streams: mmap %s: %s\n", path, strerror(errno));
        return NULL;
    }
    return p;
}

static void ctl_unmap(ctl_t **c)
{
    if (*c)
        munmap(*c, sizeof(ctl_t));
    *c = NULL;
}

/* Shared between processes, so not FUTEX_PRIVATE_FLAG. */
static void futex_wait(_Atomic uint32_t *word, uint32_t expect, int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expect, &ts, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word) { syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, 1, NULL, NULL, 0); }

/* The publisher side of the window. */
typedef struct gate {
    ctl_t *ctl;
    uint64_t window;
    uint64_t last_acked;
    int64_t last_progress;
} gate_t;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* May block `next` (the seq it would get) be published? Waits up to wait_ns
 * for room, then for half the window to drain (fewer wake-ups). */
static bool gate_open(gate_t *g, uint64_t next, int64_t wait_ns)
{
    ctl_t *c = g->ctl;
    int64_t now = 0;
    uint64_t acked = atomic_load(&c->acked);
    if (acked != g->last_acked || g->last_progress == 0) {
        g->last_acked = acked;
        g->last_progress = mono_ns();
    }
    if (next - acked < g->window)
        return true;
    if (wait_ns > 0) {
        uint64_t want = next - g->window / 2;
        atomic_store(&c->want, want);
        atomic_store(&c->waiting, 1);
        uint32_t w = atomic_load(&c->wake);
        if (atomic_load(&c->acked) < want)
            futex_wait(&c->wake, w, wait_ns);
        atomic_store(&c->waiting, 0);
        acked = atomic_load(&c->acked);
        if (next - acked < g->window)
            return true;
    }
    now = mono_ns();
    if (acked == g->last_acked && now - g->last_progress > PROBE_NS) {
        g->last_progress = now;
        return true;
    }
    return false;
}

/* The subscriber side: block seq has been consumed. */
static void ctl_ack(ctl_t *c, uint64_t seq)
{
    atomic_store(&c->acked, seq + 1);
    if (atomic_load(&c->waiting) && seq + 1 >= atomic_load(&c->want)) {
        atomic_store(&c->waiting, 0);
        atomic_fetch_add(&c->wake, 1);
        futex_wake(&c->wake);
    }
}

static int64_t cpu_self_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Follows the subscriber's measuring flag: the publisher's CPU time between
 * its 0 -> 1 and 1 -> 2 transitions. */
typedef struct cpu_watch {
    int seen;
    int64_t start, total;
    long flt_start, faults; /* minor page faults: fresh memory for blocks */
} cpu_watch_t;

static long minflt_self(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static void cpu_watch_step(cpu_watch_t *w, const ctl_t *c)
{
    int m = (int)atomic_load(&c->measuring);
    if (m == w->seen)
        return;
    if (w->seen == 0 && m >= 1) {
        w->start = cpu_self_ns();
        w->flt_start = minflt_self();
    }
    if (m == 2 && w->seen == 1) {
        w->total = cpu_self_ns() - w->start;
        w->faults = minflt_self() - w->flt_start;
    }
    w->seen = m;
}

/* Every byte is written, as a source writes its data; the first and last
 * carry the seq's low byte so the subscriber can check the block it got. */
static void *block_new(size_t size, uint64_t seq)
{
    void *p = malloc(size);
    if (p)
        memset(p, (int)(seq & 0xff), size);
    return p;
}

static bool block_ok(const void *data, size_t size, size_t expect, uint64_t seq)
{
    const unsigned char *p = data;
    return size == expect && size > 0 && p[0] == (unsigned char)(seq & 0xff) &&
           p[size - 1] == (unsigned char)(seq & 0xff);
}

/* ------------------------------------------------------------------ */
/* options                                                              */

typedef struct opts {
    const char *role; /* NULL = orchestrator */
    int cpu;
    bool quick;
    double duration_s, warmup_s;
    int rounds;
    const char *only; /* one layout */
    size_t sizes[NSIZES];
    size_t nsizes;
    size_t window_bytes;
    double paced; /* open-loop rows at this fraction of the windowed rate; 0 = none */
    /* roles */
    const char *system; /* sub: labmq | raw */
    const char *endpoint;
    const char *dir;
    const char *shm;
    size_t size;
    long window;
    double rate; /* publisher: open loop at this many blocks/s (0: windowed) */
    int hwm;     /* raw publisher's SNDHWM; orchestrator: passed on */
} opts_t;

static void say(const char *line)
{
    fputs(line, stdout);
    fputc('\n', stdout);
    fflush(stdout);
}

/* ------------------------------------------------------------------ */
/* the labmq publisher: a daemon with the bench-source driver           */

typedef struct source {
    ctl_t *ctl;
    gate_t gate;
    size_t size;
    uint64_t seq; /* = the seq the daemon gives the next block: every block is spent */
    double rate;  /* > 0: open loop, this many blocks/s whatever the subscriber does */
    int64_t t0;
} source_t;

static int source_open(lmq_dev_t *dev, void **state)
{
    source_t *s = calloc(1, sizeof *s);
    if (!s)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
    int64_t size = lmq_dev_opt_int(dev, "block");
    int64_t window = lmq_dev_opt_int(dev, "window");
    if (size < 1 || window < 1 || window > MAX_WINDOW) {
        free(s);
        return lmq_dev_fail(dev, LMQ_EARG, "block must be > 0 and window in 1..%d", MAX_WINDOW);
    }
    s->ctl = ctl_map(lmq_dev_opt_str(dev, "shm"), false);
    if (!s->ctl) {
        free(s);
        return lmq_dev_fail(dev, LMQ_EIO, "cannot map %s", lmq_dev_opt_str(dev, "shm"));
    }
    s->size = (size_t)size;
    s->gate = (gate_t){.ctl = s->ctl, .window = (uint64_t)window};
    s->rate = lmq_dev_opt_float(dev, "rate");
    size_t shape[1] = {s->size};
    int rc = lmq_dev_stream_shape(dev, 0, 1, shape);
    /* Windowed: due at every turn of the device loop, the window paces it.
     * Open loop: polled every millisecond, publishing what is due, as a DAQ
     * driver empties its buffer. */
    if (rc == 0)
        rc = lmq_dev_stream_rate(dev, 0, s->rate > 0 ? 1000 : 1e9);
    if (rc != 0) {
        ctl_unmap(&s->ctl);
        free(s);
        return lmq_dev_fail(dev, rc, "cannot set up the stream");
    }
    *state = s;
    return 0;
}

static void source_close(lmq_dev_t *dev, void *state)
{
    (void)dev;
    source_t *s = state;
    ctl_unmap(&s->ctl);
    free(s);
}

/* Open loop: how many blocks should have been published by now. */
static uint64_t paced_due(double rate, int64_t t0, int64_t now)
{
    return (uint64_t)((double)(now - t0) * 1e-9 * rate) + 1;
}

static int source_poll(lmq_dev_t *dev, void *state, int64_t now_ns)
{
    source_t *s = state;
    /* A block published while nobody subscribes is dropped without a seq:
     * publish none then, so that s->seq stays the seq the daemon gives, and
     * start the open-loop clock with the subscriber. */
    if (!lmq_dev_stream_wanted(dev, 0)) {
        s->t0 = 0;
        lmq_dev_sleep(dev, 1000000); /* not a busy loop until then; a stop ends it early */
        return 0;
    }
    if (s->rate > 0 && !s->t0)
        s->t0 = now_ns;
    uint64_t due = s->rate > 0 ? paced_due(s->rate, s->t0, now_ns) : UINT64_MAX;
    for (int i = 0; i < (s->rate > 0 ? OPEN_BATCH : POLL_BATCH) && s->seq < due; i++) {
        if (s->rate <= 0 && !gate_open(&s->gate, s->seq, i == 0 ? WAIT_NS : 0))
            return 0;
        void *p = block_new(s->size, s->seq);
        if (!p)
            return lmq_dev_fail(dev, LMQ_EMEM, "out of memory for a %zu-byte block", s->size);
        int rc = lmq_dev_publish_take(dev, 0, lmq_clock_real_ns(), &p, s->size);
        free(p); /* NULL once taken */
        if (rc != 0)
            return rc;
        s->seq++;
    }
    return 0;
}

static const lmq_option_t source_options[] = {
    {.name = "block", .type = LMQ_INT, .def = "65536", .doc = "bytes per block"},
    {.name = "window", .type = LMQ_INT, .def = "64", .doc = "blocks in flight at most"},
    {.name = "shm", .type = LMQ_STRING, .def = NULL, .doc = "the file shared with the subscriber"},
    {.name = "rate", .type = LMQ_FLOAT, .def = "0", .doc = "blocks/s, open loop; 0 = as the window allows"},
    {.name = NULL},
};

static const lmq_stream_t source_streams[] = {
    {.name = "data",
     .doc = "blocks of `block` bytes, as fast as the window allows",
     .dtype = LMQ_U8,
     .unit = "",
     .poll = source_poll},
    {.name = NULL},
};

static const lmq_driver_t source_driver = {
    .name = "bench-source",
    .description = "publishes blocks as fast as its subscriber consumes them (bench/streams)",
    .options = source_options,
    .open = source_open,
    .close = source_close,
    .streams = source_streams,
};

static int role_labmq_pub(const opts_t *o)
{
    ctl_t *c = ctl_map(o->shm, false);
    if (!c)
        return 1;
    char control[PATH_MAX + 16], data[PATH_MAX + 16], block[32], window[32], rate[32];
    snprintf(control, sizeof control, "ipc://%s/control", o->dir);
    snprintf(data, sizeof data, "ipc://%s/data", o->dir);
    snprintf(block, sizeof block, "%zu", o->size);
    snprintf(window, sizeof window, "%ld", o->window);
    snprintf(rate, sizeof rate, "%.17g", o->rate);
    const char *const options[] = {"block", block, "window", window, "shm", o->shm, "rate", rate, NULL};
    int status = 1;
    void *zctx = zmq_ctx_new();
    lmq_log_t *log = lmq_log_new(LMQ_LOG_WARN, NULL, NULL);
    lmq_daemon_t *d = zctx && log ? lmq_daemon_new(zctx, control, data, log) : NULL;
    if (!d)
        fprintf(stderr, "streams: cannot create the daemon\n");
    else if (lmq_daemon_add(d, "src", &source_driver, "", options) != 0 || lmq_daemon_start(d) != 0 ||
             lmq_daemon_wait_ready(d, 5000) != 0)
        fprintf(stderr, "streams: daemon: %s\n", lmq_daemon_last_error(d));
    else {
        say("ready");
        cpu_watch_t w = {0};
        while (!atomic_load(&c->stop)) {
            cpu_watch_step(&w, c);
            struct timespec nap = {0, 2000000};
            nanosleep(&nap, NULL);
        }
        cpu_watch_step(&w, c);
        printf("cpu %" PRId64 " %ld\n", w.total, w.faults);
        fflush(stdout);
        status = 0;
    }
    lmq_daemon_destroy(&d);
    lmq_log_destroy(&log);
    if (zctx)
        zmq_ctx_term(zctx);
    ctl_unmap(&c);
    return status;
}

/* ------------------------------------------------------------------ */
/* the raw publisher                                                    */

static void free_block(void *data, void *hint)
{
    (void)hint;
    free(data);
}

typedef struct raw_pub {
    ctl_t *ctl;
    void *sock;
    size_t size;
    uint64_t window;
    double rate;
    bool failed;
} raw_pub_t;

/* Publishes from a thread of its own, as labmq's device thread does, so
 * both systems allocate blocks from the same kind of malloc arena (blocks
 * malloc'd on the main thread and freed on the ZeroMQ I/O thread make glibc
 * trim and regrow the main heap: page faults labmq would not pay). */
static void *raw_pub_run(void *arg)
{
    raw_pub_t *r = arg;
    gate_t g = {.ctl = r->ctl, .window = r->window};
    uint64_t seq = 0, due = UINT64_MAX;
    int64_t t0 = mono_ns();
    while (!atomic_load(&r->ctl->stop)) {
        if (r->rate > 0) {
            /* The labmq driver's rhythm: every millisecond, what is due. */
            if (seq >= due) {
                struct timespec nap = {0, 1000000};
                nanosleep(&nap, NULL);
            }
            due = paced_due(r->rate, t0, mono_ns());
            if (due > seq + OPEN_BATCH)
                due = seq + OPEN_BATCH;
            if (seq >= due)
                continue;
        } else if (!gate_open(&g, seq, WAIT_NS))
            continue;
        void *p = block_new(r->size, seq);
        if (!p) {
            fprintf(stderr, "streams: out of memory for a %zu-byte block\n", r->size);
            r->failed = true;
            break;
        }
        uint64_t hdr[2] = {seq, (uint64_t)lmq_clock_real_ns()};
        zmq_msg_t payload;
        zmq_msg_init_data(&payload, p, r->size, free_block, NULL);
        zmq_send(r->sock, TOPIC, strlen(TOPIC), ZMQ_SNDMORE);
        zmq_send(r->sock, hdr, sizeof hdr, ZMQ_SNDMORE);
        if (zmq_msg_send(&payload, r->sock, 0) < 0)
            zmq_msg_close(&payload);
        seq++;
    }
    return NULL;
}

static int role_raw_pub(const opts_t *o)
{
    ctl_t *c = ctl_map(o->shm, false);
    if (!c)
        return 1;
    int status = 1;
    void *zctx = zmq_ctx_new();
    void *pub = zctx ? zmq_socket(zctx, ZMQ_PUB) : NULL;
    /* SNDHWM as labmq's device pipe: with the default 1000, a PUB drops
     * 64-byte blocks at a few 100k/s with only 64 in flight, because it
     * learns what its I/O thread has taken only every 500 messages and only
     * when it processes commands (about every millisecond). */
    int linger = 0, hwm = o->hwm;
    if (pub) {
        zmq_setsockopt(pub, ZMQ_LINGER, &linger, sizeof linger);
        zmq_setsockopt(pub, ZMQ_SNDHWM, &hwm, sizeof hwm);
    }
    if (!pub || zmq_bind(pub, o->endpoint) != 0) {
        fprintf(stderr, "streams: raw publisher: bind %s: %s\n", o->endpoint, zmq_strerror(zmq_errno()));
        goto out;
    }
    /* pthread_create is the full barrier ZeroMQ asks for when a socket
     * moves to another thread. */
    raw_pub_t r = {.ctl = c, .sock = pub, .size = o->size, .window = (uint64_t)o->window, .rate = o->rate};
    pthread_t th;
    if (pthread_create(&th, NULL, raw_pub_run, &r) != 0) {
        fprintf(stderr, "streams: raw publisher: cannot start its thread\n");
        goto out;
    }
    say("ready");
    cpu_watch_t w = {0};
    while (!atomic_load(&c->stop)) {
        cpu_watch_step(&w, c);
        struct timespec nap = {0, 2000000};
        nanosleep(&nap, NULL);
    }
    cpu_watch_step(&w, c);
    pthread_join(th, NULL);
    printf("cpu %" PRId64 " %ld\n", w.total, w.faults);
    fflush(stdout);
    status = r.failed ? 1 : 0;
out:
    if (pub)
        zmq_close(pub);
    if (zctx)
        zmq_ctx_term(zctx);
    ctl_unmap(&c);
    return status;
}

/* ------------------------------------------------------------------ */
/* the subscriber                                                       */

/* Receives one raw block the plainest way (a blocking receive with
 * ZMQ_RCVTIMEO): 0 and its seq (then *ok says whether the payload is the one
 * sent), 1 on timeout, -1 for a message without a valid header. */
static int raw_recv(void *sub, size_t size, uint64_t *seq, size_t *got, bool *ok)
{
    zmq_msg_t part[3];
    int n = 0;
    bool more = true;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sub, 0) < 0) { /* ZMQ_RCVTIMEO: EAGAIN */
            zmq_msg_close(&m);
            if (n == 0)
                return 1;
            break;
        }
        more = zmq_msg_more(&m);
        if (n < 3) {
            zmq_msg_init(&part[n]);
            zmq_msg_move(&part[n++], &m);
        }
        zmq_msg_close(&m);
    }
    int rc = -1;
    if (n == 3 && zmq_msg_size(&part[1]) == 2 * sizeof(uint64_t)) {
        uint64_t hdr[2];
        memcpy(hdr, zmq_msg_data(&part[1]), sizeof hdr);
        *seq = hdr[0];
        *got = zmq_msg_size(&part[2]);
        *ok = block_ok(zmq_msg_data(&part[2]), *got, size, hdr[0]);
        rc = 0;
    }
    for (int i = 0; i < n; i++)
        zmq_msg_close(&part[i]);
    return rc;
}

/* Receives one block of either system: as raw_recv. */
static int sub_recv(void *sub, lmq_sub_t *ls, size_t size, uint64_t *seq, size_t *got, bool *ok)
{
    if (sub)
        return raw_recv(sub, size, seq, got, ok);
    lmq_frame_t *f = NULL;
    int r = lmq_sub_recv(ls, &f, 200);
    if (r == LMQ_ETIMEOUT)
        return 1;
    if (r != 0)
        return -1;
    *seq = lmq_frame_seq(f);
    *got = lmq_frame_size(f);
    *ok = block_ok(lmq_frame_data(f), *got, size, *seq);
    lmq_frame_destroy(&f);
    return 0;
}

typedef struct tally {
    uint64_t blocks, bytes, errors, lost;
} tally_t;

static int role_sub(const opts_t *o)
{
    ctl_t *c = ctl_map(o->shm, false);
    if (!c)
        return 1;
    bool raw = strcmp(o->system, "raw") == 0;
    int status = 1;
    void *zctx = zmq_ctx_new();
    lmq_sub_t *ls = NULL;
    void *sub = NULL;
    if (raw) {
        sub = zctx ? zmq_socket(zctx, ZMQ_SUB) : NULL;
        int linger = 0, hwm = 10000, timeout = 200; /* as lmq_sub; as lmq_sub_recv's wait below */
        if (sub) {
            zmq_setsockopt(sub, ZMQ_LINGER, &linger, sizeof linger);
            zmq_setsockopt(sub, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
            zmq_setsockopt(sub, ZMQ_RCVHWM, &hwm, sizeof hwm);
            zmq_setsockopt(sub, ZMQ_SUBSCRIBE, TOPIC, strlen(TOPIC));
        }
        if (!sub || zmq_connect(sub, o->endpoint) != 0) {
            fprintf(stderr, "streams: subscriber: connect %s failed\n", o->endpoint);
            goto out;
        }
    } else if (strcmp(o->system, "flow") == 0) {
        const lmq_sub_opts_t lossless = {.mode = LMQ_SUB_LOSSLESS};
        if (!zctx || !(ls = lmq_sub_new_opts(zctx, o->endpoint, TOPIC, &lossless))) {
            fprintf(stderr, "streams: subscriber: lmq_sub_new_opts(%s) failed\n", o->endpoint);
            goto out;
        }
    } else if (!zctx || !(ls = lmq_sub_new(zctx, o->endpoint, TOPIC))) {
        fprintf(stderr, "streams: subscriber: lmq_sub_new(%s) failed\n", o->endpoint);
        goto out;
    }
    tally_t t = {0}, at_start = {0};
    uint64_t last_seq = 0;
    bool have_last = false, measuring = false;
    int64_t first = 0, t0 = 0, t_end = 0, cpu0 = 0;
    const int64_t warm_ns = (int64_t)(o->warmup_s * 1e9), dur_ns = (int64_t)(o->duration_s * 1e9);
    const int64_t deadline = mono_ns() + 10000000000LL + warm_ns + dur_ns;
    for (;;) {
        uint64_t seq = 0;
        size_t got = 0;
        bool ok = false;
        int rc = sub_recv(sub, ls, o->size, &seq, &got, &ok);
        int64_t now = mono_ns();
        if (rc == 1) {
            if (now > deadline || (measuring && now - t_end > 2000000000LL)) {
                fprintf(stderr, "streams: subscriber (%s, %zu B): %s\n", o->system, o->size,
                        first ? "the stream stalled" : "no block arrived");
                break;
            }
            continue;
        }
        if (rc < 0) { /* a malformed message: no seq to acknowledge */
            t.errors++;
            continue;
        }
        if (ok) {
            t.blocks++;
            t.bytes += got;
        } else
            t.errors++;
        /* lmq_sub counts labmq's gaps; the raw header's seq is counted here
         * the same way (the first block sets the start). */
        if (sub && have_last && seq > last_seq + 1)
            t.lost += seq - last_seq - 1;
        if (ls)
            t.lost = lmq_sub_lost(ls);
        if (!have_last || seq > last_seq)
            last_seq = seq;
        have_last = true;
        ctl_ack(c, last_seq);
        if (!first)
            first = now;
        if (!measuring && now - first >= warm_ns) {
            measuring = true;
            t0 = t_end = now;
            at_start = t;
            cpu0 = cpu_self_ns();
            atomic_store(&c->measuring, 1);
        } else if (measuring) {
            t_end = now;
            if (now - t0 >= dur_ns) {
                atomic_store(&c->measuring, 2);
                printf("result %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRId64 " %" PRId64 "\n",
                       t.blocks - at_start.blocks, t.bytes - at_start.bytes, t.lost - at_start.lost,
                       t.errors - at_start.errors, t_end - t0, cpu_self_ns() - cpu0);
                fflush(stdout);
                status = 0;
                break;
            }
        }
    }
    atomic_store(&c->measuring, 2);
out:
    lmq_sub_destroy(&ls);
    if (sub)
        zmq_close(sub);
    if (zctx)
        zmq_ctx_term(zctx);
    ctl_unmap(&c);
    return status;
}

/* ------------------------------------------------------------------ */
/* orchestrator                                                         */

typedef struct layout {
    const char *name;
    int pub_cpu, sub_cpu;
} layout_t;

enum { SYS_LABMQ, SYS_FLOW, SYS_RAW, NSYS };
static const char *const sys_name[NSYS] = {"labmq", "flow", "raw"};

typedef struct result {
    uint64_t blocks, bytes, lost, errors;
    int64_t elapsed_ns, sub_cpu_ns, pub_cpu_ns;
    long pub_faults;
    int failed;
} result_t;

typedef struct bench {
    const opts_t *o;
    char self[PATH_MAX];
    char dir[64];
    int nrun;
} bench_t;

static long window_for(const opts_t *o, size_t size)
{
    size_t w = o->window_bytes / size;
    if (w < 4)
        w = 4;
    if (w > MAX_WINDOW)
        w = MAX_WINDOW;
    return (long)w;
}

/* One publisher and one subscriber: adds what the subscriber measured to r. */
static int run_once(bench_t *b, const layout_t *l, int sys, size_t size, double rate, result_t *r)
{
    const opts_t *o = b->o;
    char shm[128], raw_ep[128], data_ep[128], control_ep[128], line[256];
    snprintf(shm, sizeof shm, "%s/ctl-%d", b->dir, b->nrun++);
    snprintf(raw_ep, sizeof raw_ep, "ipc://%s/raw", b->dir);
    snprintf(data_ep, sizeof data_ep, "ipc://%s/data", b->dir);
    snprintf(control_ep, sizeof control_ep, "ipc://%s/control", b->dir);
    ctl_t *c = ctl_map(shm, true);
    if (!c)
        return -1;
    child_t pub = {.pid = -1, .in = -1}, sub = {.pid = -1, .in = -1};
    argvb_t a = {0};
    av_add(&a, b->self);
    av_add(&a, "--role");
    av_add(&a, sys == SYS_RAW ? "raw-pub" : "labmq-pub");
    av_add(&a, "--cpu");
    av_add(&a, av_num(&a, "%.0f", l->pub_cpu));
    av_add(&a, "--dir");
    av_add(&a, b->dir);
    av_add(&a, "--endpoint");
    av_add(&a, raw_ep);
    av_add(&a, "--shm");
    av_add(&a, shm);
    av_add(&a, "--size");
    av_add(&a, av_num(&a, "%.0f", (double)size));
    av_add(&a, "--window");
    av_add(&a, av_num(&a, "%.0f", (double)window_for(o, size)));
    av_add(&a, "--raw-hwm");
    av_add(&a, av_num(&a, "%.0f", o->hwm));
    av_add(&a, "--rate");
    av_add(&a, av_num(&a, "%.1f", rate));
    int ok = child_spawn(&pub, a.v, NULL) == 0 && child_expect(&pub, "ready", line, sizeof line) == 0;
    if (ok) {
        argvb_t s = {0};
        av_add(&s, b->self);
        av_add(&s, "--role");
        av_add(&s, "sub");
        av_add(&s, "--system");
        av_add(&s, sys_name[sys]);
        av_add(&s, "--cpu");
        av_add(&s, av_num(&s, "%.0f", l->sub_cpu));
        av_add(&s, "--endpoint");
        av_add(&s, sys == SYS_LABMQ ? data_ep : sys == SYS_FLOW ? control_ep : raw_ep);
        av_add(&s, "--shm");
        av_add(&s, shm);
        av_add(&s, "--size");
        av_add(&s, av_num(&s, "%.0f", (double)size));
        av_add(&s, "--duration");
        av_add(&s, av_num(&s, "%.3f", o->duration_s));
        av_add(&s, "--warmup");
        av_add(&s, av_num(&s, "%.3f", o->warmup_s));
        uint64_t blocks, bytes, lost, errors;
        int64_t el, cpu;
        ok = child_spawn(&sub, s.v, NULL) == 0 && child_expect(&sub, "result ", line, sizeof line) == 0 &&
             sscanf(line + 7, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNd64 " %" SCNd64, &blocks, &bytes,
                    &lost, &errors, &el, &cpu) == 6;
        if (ok) {
            r->blocks += blocks;
            r->bytes += bytes;
            r->lost += lost;
            r->errors += errors;
            r->elapsed_ns += el;
            r->sub_cpu_ns += cpu;
        }
        if (sub.pid > 0 && child_finish(&sub, 0, 5000) != 0)
            ok = 0;
    }
    atomic_store(&c->stop, 1);
    int64_t pcpu = 0;
    long faults = 0;
    if (pub.pid > 0 && ok && child_expect(&pub, "cpu ", line, sizeof line) == 0 &&
        sscanf(line + 4, "%" SCNd64 " %ld", &pcpu, &faults) == 2) {
        r->pub_cpu_ns += pcpu;
        r->pub_faults += faults;
    }
    if (pub.pid > 0 && child_finish(&pub, 0, 10000) != 0)
        ok = 0;
    ctl_unmap(&c);
    unlink(shm);
    if (!ok) {
        r->failed++;
        fprintf(stderr, "streams: %s %s %zu B: a run failed\n", l->name, sys_name[sys], size);
    }
    return ok ? 0 : -1;
}

static void size_name(size_t size, char *buf, size_t n)
{
    if (size >= 1048576 && size % 1048576 == 0)
        snprintf(buf, n, "%zu MiB", size / 1048576);
    else if (size >= 1024 && size % 1024 == 0)
        snprintf(buf, n, "%zu KiB", size / 1024);
    else
        snprintf(buf, n, "%zu B", size);
}

static void print_row(const layout_t *l, size_t size, const char *name, const result_t *x, const char *last)
{
    char sz[32];
    size_name(size, sz, sizeof sz);
    double secs = (double)x->elapsed_ns / 1e9;
    if (x->failed && !x->blocks) {
        printf("%-6s %8s %-9s %10s\n", l->name, sz, name, "failed");
        return;
    }
    printf("%-6s %8s %-9s %10.0f %9.1f %6" PRIu64 " %6" PRIu64 " %8.0f %8.0f %8.1f %10s\n", l->name, sz, name,
           secs > 0 ? (double)x->blocks / secs : 0, secs > 0 ? (double)x->bytes / secs / 1e6 : 0, x->lost, x->errors,
           secs > 0 ? 100.0 * (double)x->pub_cpu_ns / (double)x->elapsed_ns : 0,
           secs > 0 ? 100.0 * (double)x->sub_cpu_ns / (double)x->elapsed_ns : 0,
           x->blocks ? (double)x->pub_faults / (double)x->blocks : 0, last);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: streams [--quick] [--duration S] [--warmup S] [--rounds R] [--layout same|split|free]\n"
            "               [--sizes B,B,...] [--window-bytes N]\n"
            "\n"
            "Blocks/s and MB/s of a stream from a device through a labmq daemon to a subscriber\n"
            "process (labmq: a plain SUB; flow: a lossless flow subscription), next to raw libzmq\n"
            "PUB -> SUB (all over ipc://), for each block size, with\n"
            "publisher and subscriber on the same CPU, on separate CPUs, and unpinned.\n"
            "\n"
            "  --quick           short runs for a smoke test (about 20 s)\n"
            "  --duration S      seconds measured per run (1.0)\n"
            "  --warmup S        seconds received before measuring (0.3)\n"
            "  --rounds R        runs per system, size and layout, alternating the systems (3)\n"
            "  --layout L        run only one layout\n"
            "  --sizes LIST      block sizes in bytes (64,4096,65536,1048576,4194304)\n"
            "  --window-bytes N  bytes in flight at most (32 MiB; 4..%d blocks)\n"
            "  --paced F         then each system open loop (no window) at F times its own rate,\n"
            "                    the rows SYSTEM@F: a subscriber that keeps up loses nothing (0.5; 0 = skip)\n"
            "  --raw-hwm N       the raw PUB's SNDHWM (10000, as labmq's device pipe; labmq's XPUB\n"
            "                    keeps ZeroMQ's default, 1000)\n",
            MAX_WINDOW);
}

static int orchestrate(const opts_t *o)
{
    bench_t b = {.o = o};
    ssize_t n = readlink("/proc/self/exe", b.self, sizeof b.self - 1);
    if (n <= 0)
        return 1;
    b.self[n] = '\0';
    snprintf(b.dir, sizeof b.dir, "/tmp/lmq-streams-XXXXXX");
    if (!mkdtemp(b.dir)) {
        perror("streams: mkdtemp");
        return 1;
    }
    int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    layout_t layouts[] = {{"same", 0, 0}, {"split", 0, 1}, {"free", -1, -1}};
    int status = 0;
    printf("stream throughput, ipc://, %.1f s x %d per row after %.1f s warm-up; window %zu MiB (4..%d blocks)\n",
           o->duration_s, o->rounds, o->warmup_s, o->window_bytes >> 20, MAX_WINDOW);
    printf("%-6s %8s %-9s %10s %9s %6s %6s %8s %8s %8s %10s\n", "layout", "block", "system", "blocks/s", "MB/s", "lost",
           "errors", "pub CPU%", "sub CPU%", "pub flt", "x raw");
    fflush(stdout);
    for (size_t li = 0; li < sizeof layouts / sizeof layouts[0]; li++) {
        const layout_t *l = &layouts[li];
        if (o->only && strcmp(o->only, l->name) != 0)
            continue;
        if (l->sub_cpu >= ncpu || l->pub_cpu >= ncpu) {
            printf("%-6s (skipped: needs CPU %d, this machine has %d)\n", l->name, l->sub_cpu, ncpu);
            continue;
        }
        for (size_t si = 0; si < o->nsizes; si++) {
            size_t size = o->sizes[si];
            result_t r[NSYS] = {{0}};
            for (int round = 0; round < o->rounds; round++)
                for (int k = 0; k < NSYS; k++) {
                    int sys = (round & 1) ? NSYS - 1 - k : k;
                    if (run_once(&b, l, sys, size, 0, &r[sys]) != 0)
                        status = 1;
                }
            double rate[NSYS];
            for (int sys = 0; sys < NSYS; sys++) {
                double secs = (double)r[sys].elapsed_ns / 1e9;
                rate[sys] = secs > 0 ? (double)r[sys].blocks / secs : 0;
            }
            for (int sys = 0; sys < NSYS; sys++) {
                char ratio[24] = "";
                if (sys != SYS_RAW && rate[SYS_RAW] > 0) {
                    double q = rate[sys] / rate[SYS_RAW];
                    snprintf(ratio, sizeof ratio, "%.2f%s", q, size >= 65536 ? (q >= 0.8 ? " ok" : " MISS") : "");
                }
                print_row(l, size, sys_name[sys], &r[sys], ratio);
            }
            /* Open loop: no window, each publisher at a fraction of its own
             * windowed rate; a subscriber that keeps up must lose nothing. */
            for (int sys = 0; o->paced > 0 && sys < NSYS; sys++) {
                result_t p = {0};
                char name[24], offered[24];
                if (rate[sys] <= 0)
                    continue;
                if (run_once(&b, l, sys, size, o->paced * rate[sys], &p) != 0)
                    status = 1;
                snprintf(name, sizeof name, "%s@%.0f%%", sys_name[sys], o->paced * 100);
                snprintf(offered, sizeof offered, "%.0f/s", o->paced * rate[sys]);
                print_row(l, size, name, &p, offered);
            }
            fflush(stdout);
        }
    }
    rmdir(b.dir);
    return status;
}

/* ------------------------------------------------------------------ */

static int parse_sizes(opts_t *o, const char *text)
{
    o->nsizes = 0;
    char *end;
    const char *p = text;
    while (*p) {
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p || errno || v < 16 || v > (1ULL << 30) || o->nsizes >= NSIZES || (*end && *end != ','))
            return -1;
        o->sizes[o->nsizes++] = (size_t)v;
        p = *end ? end + 1 : end;
    }
    return o->nsizes ? 0 : -1;
}

int main(int argc, char **argv)
{
    opts_t o = {.cpu = -1,
                .duration_s = 1.0,
                .warmup_s = 0.3,
                .rounds = 3,
                .window_bytes = 32u << 20,
                .paced = 0.5,
                .hwm = 10000,
                .window = 64};
    memcpy(o.sizes, default_sizes, sizeof default_sizes);
    o.nsizes = NSIZES;
    bool duration_set = false, warmup_set = false, rounds_set = false;
    enum {
        O_ROLE = 256,
        O_CPU,
        O_SYSTEM,
        O_ENDPOINT,
        O_DIR,
        O_SHM,
        O_SIZE,
        O_WINDOW,
        O_WARMUP,
        O_ROUNDS,
        O_LAYOUT,
        O_SIZES,
        O_WBYTES,
        O_RATE,
        O_PACED,
        O_HWM
    };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"quick", no_argument, NULL, 'q'},
        {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"rounds", required_argument, NULL, O_ROUNDS},
        {"layout", required_argument, NULL, O_LAYOUT},
        {"sizes", required_argument, NULL, O_SIZES},
        {"window-bytes", required_argument, NULL, O_WBYTES},
        {"role", required_argument, NULL, O_ROLE},
        {"cpu", required_argument, NULL, O_CPU},
        {"system", required_argument, NULL, O_SYSTEM},
        {"endpoint", required_argument, NULL, O_ENDPOINT},
        {"dir", required_argument, NULL, O_DIR},
        {"shm", required_argument, NULL, O_SHM},
        {"size", required_argument, NULL, O_SIZE},
        {"window", required_argument, NULL, O_WINDOW},
        {"rate", required_argument, NULL, O_RATE},
        {"paced", required_argument, NULL, O_PACED},
        {"raw-hwm", required_argument, NULL, O_HWM},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "hqd:", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h':
            usage(stdout);
            return 0;
        case 'q':
            o.quick = true;
            break;
        case 'd':
            o.duration_s = atof(optarg);
            duration_set = true;
            break;
        case O_WARMUP:
            o.warmup_s = atof(optarg);
            warmup_set = true;
            break;
        case O_ROUNDS:
            o.rounds = atoi(optarg);
            rounds_set = true;
            break;
        case O_LAYOUT:
            o.only = optarg;
            break;
        case O_SIZES:
            if (parse_sizes(&o, optarg) != 0) {
                fprintf(stderr, "streams: --sizes: up to %zu sizes of 16 B..1 GiB, comma-separated\n", NSIZES);
                return 2;
            }
            break;
        case O_WBYTES:
            o.window_bytes = (size_t)strtoull(optarg, NULL, 10);
            break;
        case O_ROLE:
            o.role = optarg;
            break;
        case O_CPU:
            o.cpu = atoi(optarg);
            break;
        case O_SYSTEM:
            o.system = optarg;
            break;
        case O_ENDPOINT:
            o.endpoint = optarg;
            break;
        case O_DIR:
            o.dir = optarg;
            break;
        case O_SHM:
            o.shm = optarg;
            break;
        case O_SIZE:
            o.size = (size_t)strtoull(optarg, NULL, 10);
            break;
        case O_WINDOW:
            o.window = atol(optarg);
            break;
        case O_RATE:
            o.rate = atof(optarg);
            break;
        case O_PACED:
            o.paced = atof(optarg);
            break;
        case O_HWM:
            o.hwm = atoi(optarg);
            break;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (pin_self(o.cpu) != 0)
        return 1;
    if (o.role) {
        signal(SIGPIPE, SIG_IGN);
        if (!o.shm || o.size == 0 || o.window < 1 || o.window > MAX_WINDOW) {
            fprintf(stderr, "streams: --role %s needs --shm, --size > 0 and --window 1..%d\n", o.role, MAX_WINDOW);
            return 2;
        }
        if (strcmp(o.role, "labmq-pub") == 0 && o.dir)
            return role_labmq_pub(&o);
        if (strcmp(o.role, "raw-pub") == 0 && o.endpoint)
            return role_raw_pub(&o);
        if (strcmp(o.role, "sub") == 0 && o.endpoint && o.system &&
            (strcmp(o.system, "labmq") == 0 || strcmp(o.system, "flow") == 0 || strcmp(o.system, "raw") == 0))
            return role_sub(&o);
        fprintf(stderr, "streams: --role %s: unknown role or missing --dir/--endpoint/--system\n", o.role);
        return 2;
    }
    if (o.quick) {
        if (!duration_set)
            o.duration_s = 0.2;
        if (!warmup_set)
            o.warmup_s = 0.1;
        if (!rounds_set)
            o.rounds = 1;
    }
    if (o.duration_s <= 0 || o.warmup_s < 0 || o.rounds < 1 || o.window_bytes < 1 || !(o.paced >= 0 && o.paced < 1) ||
        o.hwm < 0) {
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
