/* Transports: the common layer (buffering, deadlines, cancellation, clear,
 * trace, errors), the serial kind over pseudo-terminals (the termios path)
 * and the TCP kind over loopback. The fake instrument at the far end is a
 * thread of the test. The libserialport path runs in test_transport_umockdev. */
#include <check.h>
#include "harness.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <pty.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "labmq/labmq.h"
#include "transport_internal.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static int64_t in_ms(int ms) { return lmq_clock_mono_ns() + (int64_t)ms * 1000000; }

/* ---- the fake instrument ---- */

#define PEER_MAX 8

typedef struct peer {
    int fd;        /* pty master or connected socket; -1 until accepted */
    int listen_fd; /* TCP: accepted by the thread; -1 for a pty */
    const char *reply[PEER_MAX]; /* the answer to command i (NULL: none) */
    size_t reply_len[PEER_MAX];  /* 0: strlen */
    int delay_ms[PEER_MAX];      /* before answering command i */
    int chunks;                  /* each answer in this many writes ... */
    int gap_ms;                  /* ... this far apart */
    int ncmds;                   /* then the end: */
    int end;                     /* PEER_STAY, PEER_CLOSE (FIN / hang-up) or PEER_RESET (TCP RST) */
    char got[PEER_MAX][64];      /* the commands received */
    atomic_int received;
    atomic_bool stop;
    pthread_t th;
} peer_t;

enum { PEER_STAY, PEER_CLOSE, PEER_RESET };

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static void *peer_main(void *arg)
{
    peer_t *p = arg;
    if (p->listen_fd >= 0) {
        p->fd = accept(p->listen_fd, NULL, NULL);
        if (p->fd < 0)
            return NULL;
        int one = 1;
        setsockopt(p->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    char line[64];
    size_t n = 0;
    int cmd = 0;
    while (!atomic_load(&p->stop) && cmd < p->ncmds) {
        struct pollfd pf = {.fd = p->fd, .events = POLLIN};
        if (poll(&pf, 1, 20) <= 0)
            continue;
        char c;
        ssize_t r = read(p->fd, &c, 1);
        if (r <= 0)
            break;
        if (n < sizeof line - 1)
            line[n++] = c;
        if (c != '\n')
            continue;
        line[n] = '\0';
        snprintf(p->got[cmd], sizeof p->got[cmd], "%s", line);
        n = 0;
        atomic_fetch_add(&p->received, 1);
        if (p->delay_ms[cmd])
            sleep_ms(p->delay_ms[cmd]);
        const char *reply = p->reply[cmd];
        if (reply) {
            size_t len = p->reply_len[cmd] ? p->reply_len[cmd] : strlen(reply);
            int chunks = p->chunks > 0 ? p->chunks : 1;
            size_t step = (len + (size_t)chunks - 1) / (size_t)chunks;
            for (size_t off = 0; off < len; off += step) {
                write_all(p->fd, reply + off, len - off < step ? len - off : step);
                if (off + step < len && p->gap_ms)
                    sleep_ms(p->gap_ms);
            }
        }
        cmd++;
    }
    if (p->end == PEER_RESET) {
        struct linger lg = {1, 0};
        setsockopt(p->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    if (p->end != PEER_STAY) {
        close(p->fd);
        p->fd = -1;
    }
    return NULL;
}

static void peer_start(peer_t *p) { ck_assert_int_eq(pthread_create(&p->th, NULL, peer_main, p), 0); }

static void peer_join(peer_t *p)
{
    atomic_store(&p->stop, true);
    pthread_join(p->th, NULL);
}

/* ---- a pseudo-terminal, the far end of a "serial port" ---- */

typedef struct pty {
    int master, slave;
    char name[64];
    char conn[128];
} pty_t;

static void pty_open(pty_t *p, const char *query)
{
    ck_assert_int_eq(openpty(&p->master, &p->slave, p->name, NULL, NULL), 0);
    /* The instrument side is raw too: no echo of what the transport sends. */
    struct termios tio;
    tcgetattr(p->master, &tio);
    cfmakeraw(&tio);
    tcsetattr(p->master, TCSANOW, &tio);
    snprintf(p->conn, sizeof p->conn, "serial:%s%s", p->name, query ? query : "");
}

static void pty_close(pty_t *p)
{
    if (p->master >= 0)
        close(p->master);
    close(p->slave);
}

static peer_t *pty_peer(pty_t *p)
{
    peer_t *peer = calloc(1, sizeof *peer);
    peer->fd = p->master;
    peer->listen_fd = -1;
    return peer;
}

static lmq_transport_t *open_ok(const char *conn, const lmq_transport_opts_t *opts)
{
    lmq_transport_t *t = NULL;
    char err[256];
    int rc = lmq_transport_open(&t, conn, opts, err, sizeof err);
    ck_assert_msg(rc == 0, "open %s: %s (%s)", conn, lmq_strerror(rc), err);
    ck_assert_ptr_nonnull(t);
    return t;
}

/* ---- pty round trips ---- */

START_TEST(pty_round_trip_crlf_and_lf)
{
    pty_t p;
    pty_open(&p, "?baud=115200&bits=8&parity=none&stop=1&flow=none");
    peer_t *peer = pty_peer(&p);
    peer->reply[0] = "LABMQ,FAKE,0,1.0\r\n";
    peer->reply[1] = "+1.25E+00\n";
    peer->ncmds = 2;
    peer_start(peer);
    lmq_transport_t *t = open_ok(p.conn, NULL);
    ck_assert_str_eq(lmq_transport_kind(t), "serial");
    ck_assert_str_eq(lmq_transport_connection(t), p.conn);

    char line[128];
    size_t len = 99;
    ck_assert_int_eq(lmq_transport_write(t, "*IDN?\n", 6, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, &len, "\r\n", in_ms(2000)), 0);
    ck_assert_str_eq(line, "LABMQ,FAKE,0,1.0");
    ck_assert_uint_eq(len, 16);
    ck_assert_int_eq(lmq_transport_write(t, "MEAS?\n", 6, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, &len, "\n", in_ms(2000)), 0);
    ck_assert_str_eq(line, "+1.25E+00");
    peer_join(peer);
    ck_assert_str_eq(peer->got[0], "*IDN?\n");
    ck_assert_str_eq(peer->got[1], "MEAS?\n");
    ck_assert(!lmq_transport_broken(t));
    uint8_t stb;
    ck_assert_int_eq(lmq_transport_status_byte(t, &stb, in_ms(100)), LMQ_EARG);
    ck_assert_ptr_nonnull(strstr(lmq_transport_last_error(t), "no status byte"));
    lmq_transport_close(&t);
    ck_assert_ptr_null(t);
    lmq_transport_close(&t); /* NULL is fine */
    lmq_transport_close(NULL);
    free(peer);
    pty_close(&p);
}
END_TEST

START_TEST(pty_through_a_symlink_as_socat_makes)
{
    pty_t p;
    pty_open(&p, NULL);
    char dir[64], link[128], conn[160];
    th_tempdir(dir, sizeof dir);
    snprintf(link, sizeof link, "%s/ttyV0", dir);
    ck_assert_int_eq(symlink(p.name, link), 0);
    snprintf(conn, sizeof conn, "serial:%s?baud=19200", link);
    lmq_transport_t *t = open_ok(conn, NULL);
    write_all(p.master, "HELLO\n", 6);
    char line[16];
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(2000)), 0);
    ck_assert_str_eq(line, "HELLO");
    lmq_transport_close(&t);
    th_rmtree(dir);
    pty_close(&p);
}
END_TEST

START_TEST(pty_split_reply_and_read_exact)
{
    pty_t p;
    pty_open(&p, NULL);
    peer_t *peer = pty_peer(&p);
    peer->reply[0] = "A reply that comes in several pieces\r\n";
    /* A binary block: 4 header bytes, then 10 data bytes, then a line. */
    peer->reply[1] = "#210\x01\x02\x03\x00\x05\x06\x07\x08\x09\x0aOK\n";
    peer->reply_len[1] = 4 + 10 + 3;
    peer->chunks = 5;
    peer->gap_ms = 40;
    peer->ncmds = 2;
    peer_start(peer);
    lmq_transport_t *t = open_ok(p.conn, NULL);
    char line[128];
    ck_assert_int_eq(lmq_transport_write(t, "Q1\n", 3, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\r\n", in_ms(3000)), 0);
    ck_assert_str_eq(line, "A reply that comes in several pieces");

    ck_assert_int_eq(lmq_transport_write(t, "Q2\n", 3, in_ms(1000)), 0);
    unsigned char head[4], data[10];
    ck_assert_int_eq(lmq_transport_read_exact(t, head, 4, in_ms(3000)), 0);
    ck_assert_int_eq(memcmp(head, "#210", 4), 0);
    ck_assert_int_eq(lmq_transport_read_exact(t, data, 10, in_ms(3000)), 0);
    ck_assert_int_eq(memcmp(data, "\x01\x02\x03\x00\x05\x06\x07\x08\x09\x0a", 10), 0);
    /* Plain read hands out what is buffered or arrives, at least one byte. */
    size_t got = 0;
    bool eom = true;
    char c[8];
    ck_assert_int_eq(lmq_transport_read(t, c, 1, &got, &eom, in_ms(3000)), 0);
    ck_assert_uint_eq(got, 1);
    ck_assert(!eom);
    ck_assert_int_eq(c[0], 'O');
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(3000)), 0);
    ck_assert_str_eq(line, "K");
    peer_join(peer);
    lmq_transport_close(&t);
    free(peer);
    pty_close(&p);
}
END_TEST

START_TEST(pty_reply_bigger_than_buffer)
{
    size_t n = 3 * LMQ__TRANSPORT_RBUF + 123;
    char *big = malloc(n + 2);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)('a' + i % 26);
    memcpy(big + n, "\r\n", 2);
    char *block = malloc(n);
    for (size_t i = 0; i < n; i++)
        block[i] = (char)(i * 7);

    pty_t p;
    pty_open(&p, NULL);
    peer_t *peer = pty_peer(&p);
    peer->reply[0] = big;
    peer->reply_len[0] = n + 2;
    peer->reply[1] = block;
    peer->reply_len[1] = n;
    peer->ncmds = 2;
    peer_start(peer);
    lmq_transport_t *t = open_ok(p.conn, NULL);
    char *line = malloc(n + 1);
    size_t len = 0;
    ck_assert_int_eq(lmq_transport_write(t, "CURV?\n", 6, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, n + 1, &len, "\r\n", in_ms(5000)), 0);
    ck_assert_uint_eq(len, n);
    ck_assert_int_eq(memcmp(line, big, n), 0);
    ck_assert_int_eq(lmq_transport_write(t, "BLK?\n", 5, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_exact(t, line, n, in_ms(5000)), 0);
    ck_assert_int_eq(memcmp(line, block, n), 0);
    peer_join(peer);
    lmq_transport_close(&t);
    free(line);
    free(big);
    free(block);
    free(peer);
    pty_close(&p);
}
END_TEST

START_TEST(pty_line_too_long)
{
    pty_t p;
    pty_open(&p, NULL);
    peer_t *peer = pty_peer(&p);
    /* Longer than both the caller's buffer and the read-ahead buffer. */
    size_t n = LMQ__TRANSPORT_RBUF + 500;
    char *reply = malloc(n + 8);
    memset(reply, 'x', n);
    memcpy(reply + n, "\nNEXT\n", 6);
    peer->reply[0] = reply;
    peer->reply_len[0] = n + 6;
    peer->reply[1] = "SHORT BUT NOT SHORT ENOUGH\nAFTER\n";
    peer->ncmds = 2;
    peer_start(peer);
    lmq_transport_t *t = open_ok(p.conn, NULL);
    char line[16];
    size_t len = 0;
    ck_assert_int_eq(lmq_transport_write(t, "Q\n", 2, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, &len, "\n", in_ms(3000)), LMQ_ERANGE);
    ck_assert_ptr_nonnull(strstr(lmq_transport_last_error(t), "does not fit"));
    ck_assert_uint_eq(len, 15);
    /* The rest of the long line was dropped up to its terminator. */
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(3000)), 0);
    ck_assert_str_eq(line, "NEXT");
    ck_assert_int_eq(lmq_transport_write(t, "Q\n", 2, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(3000)), LMQ_ERANGE);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(3000)), 0);
    ck_assert_str_eq(line, "AFTER");
    ck_assert(!lmq_transport_broken(t));
    /* A bad terminator is the caller's error. */
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "", in_ms(10)), LMQ_EARG);
    peer_join(peer);
    /* Too long and unterminated at the deadline: ERANGE, and its tail is
     * not taken for the next line. */
    memset(reply, 'y', n);
    write_all(p.master, reply, n);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(400)), LMQ_ERANGE);
    ck_assert_msg(strstr(lmq_transport_last_error(t), "no terminator before the deadline"), "%s",
                  lmq_transport_last_error(t));
    write_all(p.master, "Z\n", 2);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(2000)), 0);
    ck_assert_str_eq(line, "Z");
    lmq_transport_close(&t);
    free(reply);
    free(peer);
    pty_close(&p);
}
END_TEST

/* ---- deadlines, cancellation, clear ---- */

START_TEST(pty_timeout_at_the_deadline)
{
    pty_t p;
    pty_open(&p, NULL);
    lmq_transport_t *t = open_ok(p.conn, NULL);
    char line[64];
    for (int ms = 150; ms <= 450; ms += 300) {
        int64_t deadline = in_ms(ms);
        ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", deadline), LMQ_ETIMEOUT);
        int64_t late = lmq_clock_mono_ns() - deadline;
        ck_assert_msg(late >= 0, "returned %lld ns before the deadline", (long long)-late);
        ck_assert_msg(late < 200 * 1000000LL, "returned %lld ms after the deadline", (long long)(late / 1000000));
        ck_assert_ptr_nonnull(strstr(lmq_transport_last_error(t), "timeout"));
        ck_assert(!lmq_transport_broken(t));
    }
    /* A partial line stays buffered across a timeout, and a terminator
     * split between two reads is still found. */
    write_all(p.master, "PARTIAL\r", 8);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\r\n", in_ms(150)), LMQ_ETIMEOUT);
    write_all(p.master, "\n", 1);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\r\n", in_ms(2000)), 0);
    ck_assert_str_eq(line, "PARTIAL");
    /* A deadline already past still takes what is there. */
    write_all(p.master, "READY\n", 6);
    sleep_ms(50);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(-1)), 0);
    ck_assert_str_eq(line, "READY");
    lmq_transport_close(&t);
    pty_close(&p);
}
END_TEST

typedef struct {
    atomic_bool *flag;
    int after_ms;
} raiser_t;

static void *raise_later(void *arg)
{
    raiser_t *r = arg;
    sleep_ms(r->after_ms);
    atomic_store(r->flag, true);
    return NULL;
}

START_TEST(pty_cancel_ends_a_long_wait)
{
    pty_t p;
    pty_open(&p, NULL);
    atomic_bool cancel = false;
    lmq_transport_opts_t opts = {.cancel = &cancel, .source = "dmm"};
    lmq_transport_t *t = open_ok(p.conn, &opts);
    raiser_t r = {&cancel, 150};
    pthread_t th;
    pthread_create(&th, NULL, raise_later, &r);
    double t0 = th_now_ms();
    char line[64];
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(20000)), LMQ_ECLOSED);
    double took = th_now_ms() - t0;
    pthread_join(th, NULL);
    ck_assert_msg(took >= 140 && took < 2000, "cancel took %.0f ms", took);
    ck_assert_ptr_nonnull(strstr(lmq_transport_last_error(t), "cancelled"));
    /* While the flag is up, nothing waits. */
    ck_assert_int_eq(lmq_transport_write(t, "X\n", 2, in_ms(1000)), LMQ_ECLOSED);
    lmq_transport_close(&t);
    pty_close(&p);
}
END_TEST

START_TEST(pty_late_reply_is_cleared_not_returned)
{
    pty_t p;
    pty_open(&p, NULL);
    peer_t *peer = pty_peer(&p);
    peer->reply[0] = "LATE 1\n";
    peer->delay_ms[0] = 350; /* 50 ms after the 300 ms deadline */
    peer->reply[1] = "ANSWER 2\n";
    peer->ncmds = 2;
    peer_start(peer);
    lmq_transport_t *t = open_ok(p.conn, NULL);
    char line[64];
    /* The deadline is taken before the write, so however late this thread
     * runs, the reply (350 ms after the peer read Q1) comes after it; the
     * quiet window is generous for a loaded machine. */
    int64_t dl = in_ms(300);
    ck_assert_int_eq(lmq_transport_write(t, "Q1\n", 3, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", dl), LMQ_ETIMEOUT);
    ck_assert_int_eq(lmq_transport_clear(t, 600, in_ms(5000)), 0);
    ck_assert_int_eq(lmq_transport_write(t, "Q2\n", 3, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(3000)), 0);
    ck_assert_str_eq(line, "ANSWER 2");
    peer_join(peer);
    lmq_transport_close(&t);
    free(peer);
    pty_close(&p);
}
END_TEST

START_TEST(pty_clear_drops_buffered_bytes)
{
    pty_t p;
    pty_open(&p, NULL);
    lmq_transport_t *t = open_ok(p.conn, NULL);
    write_all(p.master, "ONE\nTWO\n", 8);
    char line[64];
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(2000)), 0);
    ck_assert_str_eq(line, "ONE");
    /* "TWO\n" now sits in the read-ahead buffer. */
    ck_assert_int_eq(lmq_transport_clear(t, 0, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(100)), LMQ_ETIMEOUT);
    ck_assert_int_eq(lmq_transport_clear(t, -1, in_ms(1000)), LMQ_EARG);
    lmq_transport_close(&t);
    pty_close(&p);
}
END_TEST

/* ---- hang-up ---- */

typedef struct {
    int *fd;
    int after_ms;
} closer_t;

static void *close_later(void *arg)
{
    closer_t *c = arg;
    sleep_ms(c->after_ms);
    close(*c->fd);
    *c->fd = -1;
    return NULL;
}

START_TEST(pty_hangup_is_eio_and_broken)
{
    pty_t p;
    pty_open(&p, NULL);
    lmq_transport_t *t = open_ok(p.conn, NULL);
    closer_t c = {&p.master, 100};
    pthread_t th;
    pthread_create(&th, NULL, close_later, &c);
    double t0 = th_now_ms();
    char line[64];
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(10000)), LMQ_EIO);
    double took = th_now_ms() - t0;
    pthread_join(th, NULL);
    ck_assert_msg(took < 1000, "hang-up noticed after %.0f ms", took);
    ck_assert(lmq_transport_broken(t));
    ck_assert_ptr_nonnull(strstr(lmq_transport_last_error(t), "hung up"));
    ck_assert_int_eq(lmq_transport_write(t, "X\n", 2, in_ms(1000)), LMQ_EIO);
    ck_assert_int_eq(lmq_transport_clear(t, 10, in_ms(1000)), LMQ_EIO);
    lmq_transport_close(&t);
    pty_close(&p);
}
END_TEST

START_TEST(pty_hangup_before_read)
{
    pty_t p;
    pty_open(&p, NULL);
    lmq_transport_t *t = open_ok(p.conn, NULL);
    close(p.master);
    p.master = -1;
    double t0 = th_now_ms();
    char line[64];
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(10000)), LMQ_EIO);
    ck_assert(th_now_ms() - t0 < 1000);
    ck_assert(lmq_transport_broken(t));
    lmq_transport_close(&t);
    pty_close(&p);
}
END_TEST

/* ---- opening: exclusive, missing, permissions, malformed ---- */

START_TEST(pty_second_open_is_busy)
{
    pty_t p;
    pty_open(&p, NULL);
    lmq_transport_t *t = open_ok(p.conn, NULL), *t2 = t;
    char err[256];
    ck_assert_int_eq(lmq_transport_open(&t2, p.conn, NULL, err, sizeof err), LMQ_EBUSY);
    ck_assert_ptr_null(t2);
    ck_assert_msg(strstr(err, p.name) && strstr(err, "busy: another process holds it"), "%s", err);
    lmq_transport_close(&t);
    /* Released on close. */
    t = open_ok(p.conn, NULL);
    lmq_transport_close(&t);
    pty_close(&p);
}
END_TEST

START_TEST(missing_port_is_not_found)
{
    lmq_transport_t *t = NULL;
    char err[512];
    ck_assert_int_eq(lmq_transport_open(&t, "serial:/dev/ttyLMQ_NO_SUCH_PORT?baud=9600", NULL, err, sizeof err),
                     LMQ_ENOTFOUND);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(err, "serial:/dev/ttyLMQ_NO_SUCH_PORT?baud=9600: no such port (ports here:"), "%s", err);
    ck_assert_int_eq(lmq_transport_open(&t, "serial:/dev/null", NULL, err, sizeof err), LMQ_ENOTFOUND);
    ck_assert_msg(strstr(err, "/dev/null: not a serial port"), "%s", err);
}
END_TEST

START_TEST(permission_denied_names_the_group)
{
    pty_t p;
    pty_open(&p, NULL);
    char err[512];
    lmq_transport_t *t = NULL;
    if (geteuid() == 0) {
        /* Check runs each test in its own process: drop to nobody here. */
        struct group *g = getgrnam("dialout");
        ck_assert_ptr_nonnull(g);
        ck_assert_int_eq(chown(p.name, 0, g->gr_gid), 0);
        ck_assert_int_eq(chmod(p.name, 0660), 0);
        ck_assert_int_eq(setgroups(0, NULL), 0);
        ck_assert_int_eq(setgid(65534), 0);
        ck_assert_int_eq(setuid(65534), 0);
        ck_assert_int_eq(lmq_transport_open(&t, p.conn, NULL, err, sizeof err), LMQ_EPERM);
        ck_assert_msg(strstr(err, "permission denied: add the user to the 'dialout' group"), "%s", err);
    } else {
        ck_assert_int_eq(chmod(p.name, 0), 0);
        ck_assert_int_eq(lmq_transport_open(&t, p.conn, NULL, err, sizeof err), LMQ_EPERM);
        ck_assert_msg(strstr(err, "permission denied"), "%s", err);
    }
    ck_assert_ptr_null(t);
    pty_close(&p);
}
END_TEST

START_TEST(malformed_connection_strings)
{
    static const struct {
        const char *conn, *why;
    } cases[] = {
        {"", "empty connection"},
        {"serial", "serial: no transport kind (expected KIND:ADDRESS, KIND one of serial:, tcp:"},
        {"modbus:/dev/ttyS0", "unknown transport kind (known: serial:, tcp:"},
        {"serial:", "no port path"},
        {"serial:ttyUSB0", "must be absolute"},
        {"serial:/dev/ttyS0?baud=fast", "bad baud=fast"},
        {"serial:/dev/ttyS0?baud=0", "bad baud=0"},
        {"serial:/dev/ttyS0?baud=9600x", "bad baud=9600x"},
        {"serial:/dev/ttyS0?bits=9", "bad bits=9 (expected 5, 6, 7 or 8)"},
        {"serial:/dev/ttyS0?parity=maybe", "bad parity=maybe (expected none, odd, even, mark or space)"},
        {"serial:/dev/ttyS0?stop=3", "bad stop=3"},
        {"serial:/dev/ttyS0?flow=magic", "bad flow=magic"},
        {"serial:/dev/ttyS0?speed=9600", "unknown option 'speed'"},
        {"serial:/dev/ttyS0?baud", "malformed option 'baud'"},
        {"serial:/dev/ttyS0?baud=", "malformed option 'baud='"},
        {"serial:/dev/ttyS0?baud=9600&&bits=8", "malformed option"},
        {"serial:/dev/ttyS0?baud=9600&baud=19200", "option 'baud' given twice"},
        {"tcp:", "no port"},
        {"tcp:localhost", "no port"},
        {"tcp::5025", "no host"},
        {"tcp:localhost:0", "port '0' is not a number from 1 to 65535"},
        {"tcp:localhost:65536", "port '65536'"},
        {"tcp:localhost:scpi", "port 'scpi'"},
        {"tcp:localhost:", "port ''"},
        {"tcp:::1:5025", "IPv6 address goes in brackets"},
        {"tcp:[::1]5025", "expected tcp:[IPv6]:PORT"},
        {"tcp:[::1:5025", "expected tcp:[IPv6]:PORT"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lmq_transport_t *t = NULL;
        char err[512];
        int rc = lmq_transport_open(&t, cases[i].conn, NULL, err, sizeof err);
        ck_assert_msg(rc == LMQ_EARG, "'%s': %s (%s)", cases[i].conn, lmq_strerror(rc), err);
        ck_assert_ptr_null(t);
        ck_assert_msg(strstr(err, cases[i].why), "'%s': '%s' lacks '%s'", cases[i].conn, err, cases[i].why);
    }
    lmq_transport_t *t = NULL;
    ck_assert_int_eq(lmq_transport_open(&t, NULL, NULL, NULL, 0), LMQ_EARG);
    lmq_transport_opts_t opts = {.open_timeout_ms = -5};
    char err[128];
    ck_assert_int_eq(lmq_transport_open(&t, "tcp:127.0.0.1:1", &opts, err, sizeof err), LMQ_EARG);
    ck_assert_ptr_nonnull(strstr(err, "negative open timeout"));
}
END_TEST

/* ---- descriptors ---- */

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    ck_assert_ptr_nonnull(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* fds[i] true for every open descriptor below 1024. */
static void fd_set_now(bool fds[1024])
{
    memset(fds, 0, 1024 * sizeof fds[0]);
    DIR *d = opendir("/proc/self/fd");
    ck_assert_ptr_nonnull(d);
    for (struct dirent *e; (e = readdir(d));) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd != dirfd(d) && fd < 1024)
            fds[fd] = true;
    }
    closedir(d);
}

/* Every descriptor opened since `before` is close-on-exec; returns how many. */
static int check_new_fds_cloexec(const bool before[1024])
{
    bool now[1024];
    fd_set_now(now);
    int n = 0;
    for (int fd = 0; fd < 1024; fd++) {
        if (!now[fd] || before[fd])
            continue;
        int fl = fcntl(fd, F_GETFD);
        ck_assert_msg(fl >= 0 && (fl & FD_CLOEXEC), "descriptor %d is not close-on-exec", fd);
        n++;
    }
    return n;
}

static int tcp_listen(int *port, int backlog)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(fd, backlog), 0);
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    *port = ntohs(a.sin_port);
    return fd;
}

START_TEST(open_close_cycles_leak_nothing)
{
    pty_t p;
    pty_open(&p, NULL);
    int port;
    int lfd = tcp_listen(&port, 8);
    char tconn[64];
    snprintf(tconn, sizeof tconn, "tcp:127.0.0.1:%d", port);
    int base = count_fds();
    bool before[1024];
    fd_set_now(before);
    for (int i = 0; i < 100; i++) {
        lmq_transport_t *t = open_ok(p.conn, NULL);
        if (i == 0)
            ck_assert_int_eq(check_new_fds_cloexec(before), 1);
        lmq_transport_close(&t);
        t = open_ok(tconn, NULL);
        if (i == 0)
            ck_assert_int_eq(check_new_fds_cloexec(before), 1);
        int a = accept(lfd, NULL, NULL);
        ck_assert_int_ge(a, 0);
        close(a);
        lmq_transport_close(&t);
        /* And failures release what they took. */
        char err[128];
        ck_assert_int_eq(lmq_transport_open(&t, "serial:/dev/null", NULL, err, sizeof err), LMQ_ENOTFOUND);
    }
    ck_assert_int_eq(count_fds(), base);
    close(lfd);
    pty_close(&p);
}
END_TEST

/* ---- TCP ---- */

static peer_t *tcp_peer(int *port)
{
    peer_t *peer = calloc(1, sizeof *peer);
    peer->fd = -1;
    peer->listen_fd = tcp_listen(port, 4);
    return peer;
}

static void tcp_peer_free(peer_t *peer)
{
    if (peer->fd >= 0)
        close(peer->fd);
    close(peer->listen_fd);
    free(peer);
}

START_TEST(tcp_split_segments_round_trip)
{
    int port;
    peer_t *peer = tcp_peer(&port);
    peer->reply[0] = "KEYSIGHT TECHNOLOGIES,E36312A,MY123,2.1\n";
    peer->reply[1] = "+1.000000E+00\n";
    peer->chunks = 4;
    peer->gap_ms = 30;
    peer->ncmds = 2;
    peer_start(peer);
    char conn[64];
    snprintf(conn, sizeof conn, "tcp:127.0.0.1:%d", port);
    lmq_transport_t *t = open_ok(conn, NULL);
    ck_assert_str_eq(lmq_transport_kind(t), "tcp");
    char line[128];
    ck_assert_int_eq(lmq_transport_write(t, "*IDN?\n", 6, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(3000)), 0);
    ck_assert_str_eq(line, "KEYSIGHT TECHNOLOGIES,E36312A,MY123,2.1");
    ck_assert_int_eq(lmq_transport_write(t, "MEAS:VOLT?\n", 11, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(3000)), 0);
    ck_assert_str_eq(line, "+1.000000E+00");
    peer_join(peer);
    ck_assert_str_eq(peer->got[1], "MEAS:VOLT?\n");
    lmq_transport_close(&t);
    tcp_peer_free(peer);
}
END_TEST

START_TEST(tcp_ipv6_loopback)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        /* A container without IPv6: the address must still parse and fail as I/O. */
        if (fd >= 0)
            close(fd);
        lmq_transport_t *t = NULL;
        char err[256];
        int rc = lmq_transport_open(&t, "tcp:[::1]:5025", NULL, err, sizeof err);
        ck_assert_msg(rc == LMQ_EIO, "%s", err);
        return;
    }
    ck_assert_int_eq(listen(fd, 1), 0);
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    peer_t *peer = calloc(1, sizeof *peer);
    peer->fd = -1;
    peer->listen_fd = fd;
    peer->reply[0] = "six\n";
    peer->ncmds = 1;
    peer_start(peer);
    char conn[64];
    snprintf(conn, sizeof conn, "tcp:[::1]:%d", ntohs(a.sin6_port));
    lmq_transport_t *t = open_ok(conn, NULL);
    char line[16];
    ck_assert_int_eq(lmq_transport_write(t, "?\n", 2, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(3000)), 0);
    ck_assert_str_eq(line, "six");
    peer_join(peer);
    lmq_transport_close(&t);
    tcp_peer_free(peer);
}
END_TEST

static void tcp_end_test(int end)
{
    int port;
    peer_t *peer = tcp_peer(&port);
    peer->reply[0] = "LAST\n";
    peer->ncmds = 1;
    peer->end = end;
    peer_start(peer);
    char conn[64];
    snprintf(conn, sizeof conn, "tcp:localhost:%d", port);
    lmq_transport_t *t = open_ok(conn, NULL);
    char line[64];
    ck_assert_int_eq(lmq_transport_write(t, "Q\n", 2, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(3000)), 0);
    ck_assert_str_eq(line, "LAST");
    double t0 = th_now_ms();
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(10000)), LMQ_EIO);
    ck_assert(th_now_ms() - t0 < 1000);
    ck_assert(lmq_transport_broken(t));
    const char *why = end == PEER_RESET ? "reset by the peer" : "closed by the peer";
    ck_assert_msg(strstr(lmq_transport_last_error(t), why), "%s", lmq_transport_last_error(t));
    ck_assert_int_eq(lmq_transport_write(t, "Q\n", 2, in_ms(1000)), LMQ_EIO);
    peer_join(peer);
    lmq_transport_close(&t);
    tcp_peer_free(peer);
}

/* The idle link check: a hang-up is seen without any read or write. */
START_TEST(check_sees_hangup_without_io)
{
    pty_t p;
    pty_open(&p, NULL);
    lmq_transport_t *t = open_ok(p.conn, NULL);
    ck_assert_int_eq(lmq_transport_check(t), 0);
    write_all(p.master, "unread\n", 7); /* pending input is not a hang-up */
    sleep_ms(20);
    ck_assert_int_eq(lmq_transport_check(t), 0);
    close(p.master);
    p.master = -1;
    ck_assert_int_eq(lmq_transport_check(t), LMQ_EIO);
    ck_assert(lmq_transport_broken(t));
    lmq_transport_close(&t);
    pty_close(&p);

    int port, lfd = tcp_listen(&port, 1);
    char conn[64];
    snprintf(conn, sizeof conn, "tcp:127.0.0.1:%d", port);
    t = open_ok(conn, NULL);
    int peer = accept(lfd, NULL, NULL);
    ck_assert_int_ge(peer, 0);
    ck_assert_int_eq(lmq_transport_check(t), 0);
    close(peer);
    double t0 = th_now_ms();
    while (lmq_transport_check(t) == 0 && th_now_ms() - t0 < 1000)
        sleep_ms(5);
    ck_assert_int_eq(lmq_transport_check(t), LMQ_EIO);
    lmq_transport_close(&t);
    close(lfd);
}
END_TEST

START_TEST(tcp_peer_close_is_eio) { tcp_end_test(PEER_CLOSE); }
END_TEST

START_TEST(tcp_peer_reset_is_eio) { tcp_end_test(PEER_RESET); }
END_TEST

START_TEST(tcp_write_after_peer_close_is_eio)
{
    int port;
    peer_t *peer = tcp_peer(&port);
    peer->ncmds = 0;
    peer->end = PEER_CLOSE;
    peer_start(peer);
    char conn[64];
    snprintf(conn, sizeof conn, "tcp:127.0.0.1:%d", port);
    lmq_transport_t *t = open_ok(conn, NULL);
    peer_join(peer);
    /* The first write may still be accepted by the kernel (then answered by
     * RST); a later one fails, without SIGPIPE killing the test. */
    int rc = 0;
    for (int i = 0; i < 50 && rc == 0; i++) {
        rc = lmq_transport_write(t, "X\n", 2, in_ms(1000));
        sleep_ms(10);
    }
    ck_assert_int_eq(rc, LMQ_EIO);
    ck_assert(lmq_transport_broken(t));
    lmq_transport_close(&t);
    tcp_peer_free(peer);
}
END_TEST

START_TEST(tcp_open_errors)
{
    lmq_transport_t *t = NULL;
    char err[256], conn[64];
    /* A port nobody listens on: bound and closed again. */
    int port;
    close(tcp_listen(&port, 1));
    snprintf(conn, sizeof conn, "tcp:127.0.0.1:%d", port);
    ck_assert_int_eq(lmq_transport_open(&t, conn, NULL, err, sizeof err), LMQ_EIO);
    ck_assert_msg(strstr(err, "connection refused"), "%s", err);
    ck_assert_ptr_null(t);
    /* An unknown host; an empty label fails in the resolver itself, so no
     * query leaves the machine. */
    ck_assert_int_eq(lmq_transport_open(&t, "tcp:no..such..host:5025", NULL, err, sizeof err), LMQ_ENOTFOUND);
    ck_assert_msg(strstr(err, "unknown host 'no..such..host'"), "%s", err);

    /* No answer: a listener whose accept queue is full drops the SYN. */
    int lfd = tcp_listen(&port, 0);
    int filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(connect(filler, (struct sockaddr *)&a, sizeof a), 0);
    snprintf(conn, sizeof conn, "tcp:127.0.0.1:%d", port);
    lmq_transport_opts_t opts = {.open_timeout_ms = 300};
    double t0 = th_now_ms();
    ck_assert_int_eq(lmq_transport_open(&t, conn, &opts, err, sizeof err), LMQ_ETIMEOUT);
    double took = th_now_ms() - t0;
    ck_assert_msg(took >= 299 && took < 1500, "open gave up after %.0f ms", took);
    ck_assert_msg(strstr(err, "no answer before the open deadline"), "%s", err);
    /* ... and a cancel flag ends that wait too. */
    atomic_bool cancel = false;
    raiser_t r = {&cancel, 100};
    pthread_t th;
    pthread_create(&th, NULL, raise_later, &r);
    opts = (lmq_transport_opts_t){.open_timeout_ms = 20000, .cancel = &cancel};
    t0 = th_now_ms();
    ck_assert_int_eq(lmq_transport_open(&t, conn, &opts, err, sizeof err), LMQ_ECLOSED);
    ck_assert(th_now_ms() - t0 < 2000);
    pthread_join(th, NULL);
    close(filler);
    close(lfd);
}
END_TEST

START_TEST(tcp_late_reply_is_cleared)
{
    int port;
    peer_t *peer = tcp_peer(&port);
    peer->reply[0] = "LATE\n";
    peer->delay_ms[0] = 350;
    peer->reply[1] = "FRESH\n";
    peer->ncmds = 2;
    peer_start(peer);
    char conn[64];
    snprintf(conn, sizeof conn, "tcp:127.0.0.1:%d", port);
    lmq_transport_t *t = open_ok(conn, NULL);
    char line[64];
    int64_t dl = in_ms(300); /* before the write: see pty_late_reply_is_cleared_not_returned */
    ck_assert_int_eq(lmq_transport_write(t, "A\n", 2, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", dl), LMQ_ETIMEOUT);
    ck_assert_int_eq(lmq_transport_clear(t, 600, in_ms(5000)), 0);
    ck_assert_int_eq(lmq_transport_write(t, "B\n", 2, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(3000)), 0);
    ck_assert_str_eq(line, "FRESH");
    peer_join(peer);
    lmq_transport_close(&t);
    tcp_peer_free(peer);
}
END_TEST

/* ---- trace ---- */

typedef struct {
    pthread_mutex_t lock;
    char text[8192];
} trace_t;

static void capture(void *user, lmq_log_level_t level, const char *source, const char *msg)
{
    trace_t *c = user;
    pthread_mutex_lock(&c->lock);
    size_t used = strlen(c->text);
    snprintf(c->text + used, sizeof c->text - used, "%d %s: %s\n", (int)level, source, msg);
    pthread_mutex_unlock(&c->lock);
}

START_TEST(trace_logs_tx_and_rx_hex)
{
    trace_t *c = calloc(1, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    lmq_log_t *log = lmq_log_new(LMQ_LOG_TRACE, capture, c);
    pty_t p;
    pty_open(&p, NULL);
    peer_t *peer = pty_peer(&p);
    peer->reply[0] = "OK\r\n";
    peer->ncmds = 1;
    peer_start(peer);
    lmq_transport_opts_t opts = {.log = log, .source = "psu1"};
    lmq_transport_t *t = open_ok(p.conn, &opts);
    char line[16];
    ck_assert_int_eq(lmq_transport_write(t, "*IDN?\n", 6, in_ms(1000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\r\n", in_ms(3000)), 0);
    peer_join(peer);
    lmq_transport_close(&t);
    ck_assert_msg(strstr(c->text, "4 psu1: tx 0000  2a 49 44 4e 3f 0a "), "%s", c->text);
    ck_assert_msg(strstr(c->text, "4 psu1: rx 0000  4f 4b 0d 0a "), "%s", c->text);
    /* Below TRACE, no hex. */
    c->text[0] = '\0';
    lmq_log_set_level(log, LMQ_LOG_DEBUG);
    t = open_ok(p.conn, &opts);
    ck_assert_int_eq(lmq_transport_write(t, "X\n", 2, in_ms(1000)), 0);
    lmq_transport_close(&t);
    ck_assert_ptr_null(strstr(c->text, " tx "));
    lmq_log_destroy(&log);
    pthread_mutex_destroy(&c->lock);
    free(c);
    free(peer);
    pty_close(&p);
}
END_TEST

/* ---- discovery ---- */

static void count_port(void *user, const lmq_port_info_t *info)
{
    int *n = user;
    ck_assert_str_eq(info->kind, "serial");
    ck_assert(strncmp(info->connection, "serial:/dev/", 12) == 0);
    ck_assert_ptr_nonnull(info->description);
    ck_assert(info->vid >= -1 && info->vid <= 0xffff);
    (*n)++;
}

START_TEST(scan_reports_each_port_once)
{
    int n = 0;
    char err[128];
    int rc = lmq_transport_scan(count_port, &n, err, sizeof err);
    ck_assert_msg(rc >= 0, "%s", err);
    ck_assert_int_eq(rc, n);
    ck_assert_int_eq(lmq_transport_scan(NULL, NULL, err, sizeof err), LMQ_EARG);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("transport");
    TCase *pty = tcase_create("pty");
    tcase_add_test(pty, pty_round_trip_crlf_and_lf);
    tcase_add_test(pty, pty_through_a_symlink_as_socat_makes);
    tcase_add_test(pty, pty_split_reply_and_read_exact);
    tcase_add_test(pty, pty_reply_bigger_than_buffer);
    tcase_add_test(pty, pty_line_too_long);
    tcase_add_test(pty, pty_timeout_at_the_deadline);
    tcase_add_test(pty, pty_cancel_ends_a_long_wait);
    tcase_add_test(pty, pty_late_reply_is_cleared_not_returned);
    tcase_add_test(pty, pty_clear_drops_buffered_bytes);
    tcase_add_test(pty, pty_hangup_is_eio_and_broken);
    tcase_add_test(pty, pty_hangup_before_read);
    tcase_add_test(pty, pty_second_open_is_busy);
    tcase_add_test(pty, trace_logs_tx_and_rx_hex);
    suite_add_tcase(s, pty);
    TCase *open = tcase_create("open");
    tcase_add_test(open, missing_port_is_not_found);
    tcase_add_test(open, permission_denied_names_the_group);
    tcase_add_test(open, malformed_connection_strings);
    tcase_add_test(open, open_close_cycles_leak_nothing);
    tcase_add_test(open, scan_reports_each_port_once);
    suite_add_tcase(s, open);
    TCase *tcp = tcase_create("tcp");
    tcase_add_test(tcp, tcp_split_segments_round_trip);
    tcase_add_test(tcp, tcp_ipv6_loopback);
    tcase_add_test(tcp, tcp_peer_close_is_eio);
    tcase_add_test(tcp, check_sees_hangup_without_io);
    tcase_add_test(tcp, tcp_peer_reset_is_eio);
    tcase_add_test(tcp, tcp_write_after_peer_close_is_eio);
    tcase_add_test(tcp, tcp_open_errors);
    tcase_add_test(tcp, tcp_late_reply_is_cleared);
    suite_add_tcase(s, tcp);
    return th_run_suite(s);
}
