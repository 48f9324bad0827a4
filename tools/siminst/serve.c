/* labmq-siminst — serving the engine over a pseudo-terminal or a TCP socket
 * on 127.0.0.1, one client at a time, with injected faults (dropped,
 * garbled, delayed, split and late replies; hang-ups).
 *
 * One thread, one poll loop. Input is cut into lines at '\n' ("\r\n" is
 * accepted); a line is executed only when the previous one's simulated
 * duration (its commands' delay_ms, divided by the time scale) has passed,
 * as a real instrument works through its input in order. Replies wait in a
 * queue of timed chunks, which is what delays, splits and late replies are
 * made of. Fault times are real milliseconds, not simulated ones.
 *
 * The pty: we keep the slave side open ourselves, so a client closing and
 * reopening the device never makes the master see a hang-up, and we set it
 * raw so the line discipline neither echoes replies back as commands nor
 * rewrites line ends. A hang-up closes both sides (the client sees POLLHUP,
 * then EOF/EIO); coming back creates a new pty, prints its path and moves the
 * --link symlink to it (the link is absent while down). */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>
#include "siminst.h"

#define IN_MAX (64u * 1024) /* a longer line is an input overrun */

typedef struct chunk {
    char *data;
    size_t len, off;
    int64_t due;
    bool last; /* the end of one reply */
    struct chunk *next;
} chunk_t;

typedef struct faults {
    long drop, garble;
    int64_t delay_ms, late_ms, split_ms;
    size_t split_bytes;
    long hangup_after; /* replies still to send before hanging up; -1 = none */
    int64_t hangup_ms;
} faults_t;

typedef struct server {
    sim_engine_t *eng;
    const sim_model_t *m;
    const sim_opts_t *o;
    int sigfd;
    int master, slave; /* pty */
    char ptyname[128];
    int lfd, cfd; /* tcp */
    bool up;
    int64_t back_at;
    char *in;
    size_t inlen;
    bool overrun; /* discarding up to the next '\n' */
    int64_t busy_until;
    chunk_t *head, *tail;
    faults_t f;
} server_t;

/* Bounded to a year: delays come from model expressions. */
static int64_t ms_ns(double ms) { return ms > 0 ? (int64_t)(fmin(ms, 3.2e10) * 1e6) : 0; }

/* ---- faults ---- */

static int fault_apply(faults_t *f, const char *spec, char *err, size_t errsz)
{
    char name[16];
    long a = 0, b = 0;
    int n = sscanf(spec, " %15s %ld %ld", name, &a, &b);
    char extra[2];
    int n2 = sscanf(spec, " %*s %*s %*s %1s", extra);
    if (n < 1) {
        snprintf(err, errsz, "empty fault");
        return -1;
    }
    struct {
        const char *name;
        int min_args, max_args;
    } const kinds[] = {{"drop", 1, 1},  {"garble", 1, 1}, {"delay", 1, 1},  {"split", 2, 2},
                       {"late", 1, 1},  {"hangup", 1, 2}, {"clear", 0, 0}};
    size_t k = 0;
    while (k < 7 && strcmp(kinds[k].name, name))
        k++;
    if (k == 7) {
        snprintf(err, errsz, "unknown fault \"%s\" (drop, garble, delay, split, late, hangup, clear)", name);
        return -1;
    }
    int args = n - 1;
    if (args < kinds[k].min_args || args > kinds[k].max_args || n2 == 1 || a < 0 || b < 0 || a > 86400000 ||
        b > 86400000) {
        snprintf(err, errsz, "fault \"%s\": expected %s", spec,
                 k == 3 ? "split BYTES MS" : k == 5 ? "hangup MS [AFTER_REPLIES]" : k == 6 ? "clear" : "NAME N");
        return -1;
    }
    if (k == 3 && a == 0 && b != 0) {
        snprintf(err, errsz, "fault \"%s\": split needs BYTES > 0 (split 0 0 turns it off)", spec);
        return -1;
    }
    if (!f)
        return 0;
    switch (k) {
    case 0:
        f->drop = a;
        break;
    case 1:
        f->garble = a;
        break;
    case 2:
        f->delay_ms = a;
        break;
    case 3:
        f->split_bytes = (size_t)a;
        f->split_ms = b;
        break;
    case 4:
        f->late_ms = a;
        break;
    case 5:
        f->hangup_ms = a;
        f->hangup_after = args == 2 ? b : 0;
        break;
    default:
        memset(f, 0, sizeof *f);
        f->hangup_after = -1;
    }
    return 0;
}

int sim_fault_check(const char *spec, char *err, size_t errsz) { return fault_apply(NULL, spec, err, errsz); }

/* ---- logging ---- */

static void log_line(const char *dir, const char *s, size_t n)
{
    sim_buf_t b = {0};
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\')
            sim_buf_puts(&b, "\\\\");
        else if (c == '\n')
            sim_buf_puts(&b, "\\n");
        else if (c == '\r')
            sim_buf_puts(&b, "\\r");
        else if (isprint(c))
            sim_buf_add(&b, (const char *)&c, 1);
        else
            sim_buf_printf(&b, "\\x%02x", c);
    }
    fprintf(stderr, "%s %s\n", dir, b.p ? b.p : "");
    sim_buf_free(&b);
}

/* ---- output queue ---- */

static void queue_clear(server_t *s)
{
    while (s->head) {
        chunk_t *c = s->head;
        s->head = c->next;
        free(c->data);
        free(c);
    }
    s->tail = NULL;
}

static bool enqueue(server_t *s, const char *data, size_t len, int64_t due, bool last)
{
    chunk_t *c = calloc(1, sizeof *c);
    if (!c || !(c->data = malloc(len ? len : 1))) {
        free(c);
        return false;
    }
    memcpy(c->data, data, len);
    c->len = len;
    /* Never out of order: a reply is not sent before the one ahead of it. */
    c->due = s->tail && s->tail->due > due ? s->tail->due : due;
    c->last = last;
    if (s->tail)
        s->tail->next = c;
    else
        s->head = c;
    s->tail = c;
    return true;
}

static void send_reply(server_t *s, sim_buf_t *r, int64_t due)
{
    if (s->f.drop > 0) {
        s->f.drop--;
        if (s->o->log)
            fprintf(stderr, "# fault: reply dropped\n");
        return;
    }
    if (s->f.garble > 0) {
        s->f.garble--;
        for (size_t i = 0; i < r->len; i += 4)
            r->p[i] = r->p[i] == '~' ? '#' : '~';
        if (s->o->log)
            fprintf(stderr, "# fault: reply garbled\n");
    }
    sim_buf_puts(r, s->m->terminator);
    if (r->oom)
        return;
    due += ms_ns((double)s->f.delay_ms) + ms_ns((double)s->f.late_ms);
    s->f.late_ms = 0;
    if (s->f.split_bytes == 0) {
        enqueue(s, r->p, r->len, due, true);
        return;
    }
    for (size_t off = 0; off < r->len; off += s->f.split_bytes) {
        size_t n = r->len - off < s->f.split_bytes ? r->len - off : s->f.split_bytes;
        enqueue(s, r->p + off, n, due, off + n == r->len);
        due += ms_ns((double)s->f.split_ms);
    }
}

/* ---- connections ---- */

static int conn_fd(const server_t *s) { return s->o->tcp_port >= 0 ? s->cfd : s->master; }

static void unlink_link(const server_t *s)
{
    struct stat st;
    if (s->o->link && lstat(s->o->link, &st) == 0 && S_ISLNK(st.st_mode))
        unlink(s->o->link);
}

static int pty_open(server_t *s)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0 || ptsname_r(m, s->ptyname, sizeof s->ptyname) != 0) {
        fprintf(stderr, "labmq-siminst: cannot create a pseudo-terminal: %s\n", strerror(errno));
        if (m >= 0)
            close(m);
        return -1;
    }
    int sl = open(s->ptyname, O_RDWR | O_NOCTTY | O_CLOEXEC);
    struct termios tio;
    if (sl < 0 || tcgetattr(sl, &tio) != 0) {
        fprintf(stderr, "labmq-siminst: cannot open %s: %s\n", s->ptyname, strerror(errno));
        close(m);
        if (sl >= 0)
            close(sl);
        return -1;
    }
    cfmakeraw(&tio);
    tcsetattr(sl, TCSANOW, &tio);
    fcntl(m, F_SETFL, fcntl(m, F_GETFL) | O_NONBLOCK);
    s->master = m;
    s->slave = sl;
    if (s->o->link) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.%ld.tmp", s->o->link, (long)getpid());
        unlink(tmp);
        if (symlink(s->ptyname, tmp) != 0 || rename(tmp, s->o->link) != 0) {
            fprintf(stderr, "labmq-siminst: cannot link %s -> %s: %s\n", s->o->link, s->ptyname, strerror(errno));
            unlink(tmp);
            return -1;
        }
    }
    printf("%s\n", s->ptyname);
    fflush(stdout);
    return 0;
}

static void pty_close(server_t *s)
{
    if (s->master >= 0)
        close(s->master);
    if (s->slave >= 0)
        close(s->slave);
    s->master = s->slave = -1;
}

static int tcp_listen(server_t *s)
{
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->o->tcp_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (s->lfd < 0 || setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(s->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(s->lfd, 4) != 0 ||
        getsockname(s->lfd, (struct sockaddr *)&a, &alen) != 0) {
        fprintf(stderr, "labmq-siminst: cannot listen on 127.0.0.1:%ld: %s\n", s->o->tcp_port, strerror(errno));
        return -1;
    }
    printf("tcp:127.0.0.1:%u\n", (unsigned)ntohs(a.sin_port));
    fflush(stdout);
    return 0;
}

static void drop_client(server_t *s, const char *why)
{
    if (s->o->log)
        fprintf(stderr, "# %s\n", why);
    if (s->o->tcp_port >= 0 && s->cfd >= 0) {
        close(s->cfd);
        s->cfd = -1;
    }
    s->inlen = 0;
    s->overrun = false;
    queue_clear(s);
}

static void hang_up(server_t *s, int64_t now)
{
    if (s->o->log)
        fprintf(stderr, "# fault: hanging up for %lld ms\n", (long long)s->f.hangup_ms);
    drop_client(s, "connection closed (hang-up)");
    if (s->o->tcp_port < 0) {
        pty_close(s);
        unlink_link(s);
    }
    s->up = false;
    s->back_at = now + ms_ns((double)s->f.hangup_ms);
    s->f.hangup_after = -1;
}

static void accept_client(server_t *s)
{
    int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0)
        return;
    if (!s->up || s->cfd >= 0) { /* one client at a time; none while hung up */
        if (s->o->log)
            fprintf(stderr, "# refused a connection (%s)\n", s->up ? "busy with another client" : "hung up");
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof one);
    s->cfd = fd;
    if (s->o->log)
        fprintf(stderr, "# client connected\n");
}

/* ---- input ---- */

static void take_line(server_t *s, char *line, size_t n, int64_t now)
{
    if (n && line[n - 1] == '\r')
        n--;
    if (s->o->log)
        log_line("<", line, n);
    if (s->o->fault_commands && n >= 5 && !strncmp(line, "#sim ", 5)) {
        char spec[256], err[SIM_ERRMSG];
        snprintf(spec, sizeof spec, "%.*s", (int)(n - 5), line + 5);
        if (!strncmp(spec, "set ", 4)) {
            if (sim_engine_set_spec(s->eng, spec + 4, err, sizeof err) != 0)
                fprintf(stderr, "labmq-siminst: #sim %s\n", err);
            else if (s->o->log)
                fprintf(stderr, "# set %s\n", spec + 4);
        } else if (fault_apply(&s->f, spec, err, sizeof err) != 0)
            fprintf(stderr, "labmq-siminst: %s\n", err);
        else if (s->o->log)
            fprintf(stderr, "# fault set: %s\n", spec);
        return;
    }
    sim_buf_t r = {0};
    bool has;
    double delay;
    sim_engine_line(s->eng, line, n, &r, &has, &delay);
    int64_t done = now + ms_ns(delay / s->o->scale);
    s->busy_until = done;
    if (has) {
        if (s->o->log)
            log_line(">", r.p ? r.p : "", r.len);
        send_reply(s, &r, done);
    }
    sim_buf_free(&r);
}

static void process_input(server_t *s, int64_t now)
{
    while (s->up && conn_fd(s) >= 0 && now >= s->busy_until && !(s->f.hangup_after == 0)) {
        char *nl = memchr(s->in, '\n', s->inlen);
        if (!nl)
            return;
        size_t n = (size_t)(nl - s->in);
        if (s->overrun)
            s->overrun = false;
        else
            take_line(s, s->in, n, now);
        memmove(s->in, nl + 1, s->inlen - n - 1);
        s->inlen -= n + 1;
        now = sim_mono_ns();
    }
}

static void read_input(server_t *s)
{
    int fd = conn_fd(s);
    for (;;) {
        if (s->inlen == IN_MAX) { /* a line too long for the input buffer */
            if (!memchr(s->in, '\n', s->inlen)) {
                if (!s->overrun)
                    sim_engine_push_error(s->eng, -363);
                s->overrun = true;
                s->inlen = 0;
            } else {
                return; /* complete lines wait for the engine */
            }
        }
        ssize_t n = read(fd, s->in + s->inlen, IN_MAX - s->inlen);
        if (n > 0) {
            s->inlen += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EINTR))
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (s->o->tcp_port >= 0)
            drop_client(s, "client disconnected");
        return;
    }
}

/* Writes what is due; true when the connection wants POLLOUT. */
static bool flush_output(server_t *s, int64_t now)
{
    int fd = conn_fd(s);
    while (s->head && s->head->due <= now) {
        if (fd < 0) {
            queue_clear(s); /* no client: a reply into the void, as on a real port */
            return false;
        }
        chunk_t *c = s->head;
        ssize_t n = s->o->tcp_port >= 0 ? send(fd, c->data + c->off, c->len - c->off, MSG_NOSIGNAL | MSG_DONTWAIT)
                                        : write(fd, c->data + c->off, c->len - c->off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return true;
            if (s->o->tcp_port >= 0)
                drop_client(s, "client gone while sending");
            else
                queue_clear(s);
            return false;
        }
        c->off += (size_t)n;
        if (c->off < c->len)
            return true;
        s->head = c->next;
        if (!s->head)
            s->tail = NULL;
        if (c->last && s->f.hangup_after > 0)
            s->f.hangup_after--;
        free(c->data);
        free(c);
    }
    return false;
}

/* ---- the loop ---- */

int sim_serve(sim_engine_t *eng, const sim_model_t *m, const sim_opts_t *o)
{
    server_t s = {.eng = eng, .m = m, .o = o, .sigfd = -1, .master = -1, .slave = -1, .lfd = -1, .cfd = -1};
    s.f.hangup_after = -1;
    int rc = SIM_EXIT_RUNTIME;
    char err[SIM_ERRMSG];
    for (size_t i = 0; i < o->n_faults; i++)
        if (fault_apply(&s.f, o->faults[i], err, sizeof err) != 0) {
            fprintf(stderr, "labmq-siminst: --fault: %s\n", err);
            return SIM_EXIT_USAGE;
        }
    if (!(s.in = malloc(IN_MAX))) {
        fprintf(stderr, "labmq-siminst: out of memory\n");
        return SIM_EXIT_RUNTIME;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if ((s.sigfd = signalfd(-1, &set, SFD_CLOEXEC)) < 0) {
        fprintf(stderr, "labmq-siminst: signalfd: %s\n", strerror(errno));
        goto out;
    }
    if (o->tcp_port >= 0 ? tcp_listen(&s) : pty_open(&s))
        goto out;
    s.up = true;

    for (;;) {
        int64_t now = sim_mono_ns();
        if (!s.up && now >= s.back_at) {
            if (o->tcp_port < 0 && pty_open(&s) != 0)
                goto out;
            s.up = true;
            if (o->log)
                fprintf(stderr, "# serving again\n");
        }
        process_input(&s, now);
        bool want_out = flush_output(&s, now);
        if (s.up && s.f.hangup_after == 0 && !s.head)
            hang_up(&s, now);

        int64_t wake = -1;
        if (s.head && !want_out)
            wake = s.head->due;
        if (s.up && s.inlen && memchr(s.in, '\n', s.inlen) && s.busy_until > now && (wake < 0 || s.busy_until < wake))
            wake = s.busy_until;
        if (!s.up && (wake < 0 || s.back_at < wake))
            wake = s.back_at;
        int timeout = -1;
        if (wake >= 0) { /* at most an hour at a time: the int must not overflow */
            int64_t ms = wake <= now ? 0 : (wake - now + 999999) / 1000000;
            timeout = ms > 3600000 ? 3600000 : (int)ms;
        }

        struct pollfd pf[3];
        nfds_t n = 0;
        pf[n++] = (struct pollfd){.fd = s.sigfd, .events = POLLIN};
        int lfd_i = -1, c_i = -1;
        if (s.lfd >= 0) {
            lfd_i = (int)n;
            pf[n++] = (struct pollfd){.fd = s.lfd, .events = POLLIN};
        }
        int cfd = conn_fd(&s);
        if (s.up && cfd >= 0) {
            c_i = (int)n;
            short ev = (short)((s.inlen < IN_MAX ? POLLIN : 0) | (want_out ? POLLOUT : 0));
            pf[n++] = (struct pollfd){.fd = cfd, .events = ev};
        }
        if (poll(pf, n, timeout) < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "labmq-siminst: poll: %s\n", strerror(errno));
            goto out;
        }
        if (pf[0].revents) {
            struct signalfd_siginfo si;
            if (read(s.sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
                if (o->log)
                    fprintf(stderr, "# signal %u: stopping\n", si.ssi_signo);
                rc = SIM_EXIT_OK;
                goto out;
            }
        }
        if (lfd_i >= 0 && (pf[lfd_i].revents & POLLIN))
            accept_client(&s);
        if (c_i >= 0 && (pf[c_i].revents & (POLLIN | POLLHUP | POLLERR)))
            read_input(&s);
    }
out:
    queue_clear(&s);
    if (s.cfd >= 0)
        close(s.cfd);
    if (s.lfd >= 0)
        close(s.lfd);
    pty_close(&s);
    unlink_link(&s);
    if (s.sigfd >= 0)
        close(s.sigfd);
    free(s.in);
    return rc;
}
