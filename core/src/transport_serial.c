/* The serial transport (serial:/dev/ttyUSB0?baud=...) and serial-port
 * discovery. Real ports go through libserialport (lookup, open, line
 * settings, flush); pseudo-terminals, which libserialport 0.1.1 refuses (no
 * /sys/class/tty entry, no modem lines), through plain termios. Both then
 * share one descriptor-level read/write: poll in slices, non-blocking I/O,
 * hang-up detection. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libserialport.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>
#include "labmq/driver.h"
#include "transport_internal.h"

typedef struct serial_params {
    char path[PATH_MAX];
    int baud, bits, stop;
    enum sp_parity parity;
    enum sp_flowcontrol flow;
} serial_params_t;

typedef struct serial {
    struct sp_port *port; /* NULL on the pseudo-terminal path */
    int fd;
    /* libserialport path: a second descriptor of ours that holds the flock,
     * taken before sp_open, which rewrites the line settings of whoever
     * holds the port. -1 on the pty path, where fd holds the lock. */
    int lock_fd;
    bool excl; /* we set TIOCEXCL (and must clear it) */
} serial_t;

static const struct {
    const char *name;
    enum sp_parity value;
} parities[] = {{"none", SP_PARITY_NONE}, {"odd", SP_PARITY_ODD},   {"even", SP_PARITY_EVEN},
                {"mark", SP_PARITY_MARK}, {"space", SP_PARITY_SPACE}};

static const struct {
    const char *name;
    enum sp_flowcontrol value;
} flows[] = {{"none", SP_FLOWCONTROL_NONE},
             {"xonxoff", SP_FLOWCONTROL_XONXOFF},
             {"rtscts", SP_FLOWCONTROL_RTSCTS},
             {"dtrdsr", SP_FLOWCONTROL_DTRDSR}};

static const struct {
    int baud;
    speed_t speed;
} speeds[] = {{50, B50},         {75, B75},         {110, B110},       {134, B134},       {150, B150},
              {200, B200},       {300, B300},       {600, B600},       {1200, B1200},     {1800, B1800},
              {2400, B2400},     {4800, B4800},     {9600, B9600},     {19200, B19200},   {38400, B38400},
              {57600, B57600},   {115200, B115200}, {230400, B230400}, {460800, B460800}, {500000, B500000},
              {576000, B576000}, {921600, B921600}, {1000000, B1000000}, {1152000, B1152000},
              {1500000, B1500000}, {2000000, B2000000}, {2500000, B2500000}, {3000000, B3000000},
              {3500000, B3500000}, {4000000, B4000000}};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static int parse_int(const char *text, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = (*text >= '0' && *text <= '9') ? strtol(text, &end, 10) : -1;
    if (v < lo || v > hi || errno || *end)
        return -1;
    *out = (int)v;
    return 0;
}

/* "/dev/ttyUSB0?baud=115200&bits=8&parity=none&stop=1&flow=none" */
static int parse(lmq_transport_t *t, const char *rest, serial_params_t *p)
{
    *p = (serial_params_t){.baud = 9600, .bits = 8, .stop = 1, .parity = SP_PARITY_NONE, .flow = SP_FLOWCONTROL_NONE};
    size_t plen = strcspn(rest, "?");
    if (plen == 0)
        return lmq__transport_fail(t, LMQ_EARG, "no port path (expected serial:/dev/ttyUSB0)");
    if (rest[0] != '/')
        return lmq__transport_fail(t, LMQ_EARG, "the port path must be absolute (e.g. serial:/dev/ttyUSB0)");
    if (plen >= sizeof p->path)
        return lmq__transport_fail(t, LMQ_EARG, "port path too long");
    memcpy(p->path, rest, plen);
    p->path[plen] = '\0';
    if (!rest[plen])
        return 0;
    const char *q = rest + plen + 1;
    unsigned seen = 0;
    while (*q) {
        size_t n = strcspn(q, "&");
        char item[64];
        if (n == 0 || n >= sizeof item)
            return lmq__transport_fail(t, LMQ_EARG, "malformed option '%.*s' (expected key=value&...)", (int)n, q);
        memcpy(item, q, n);
        item[n] = '\0';
        q += n + (q[n] == '&');
        char *val = strchr(item, '=');
        if (!val || val == item || !val[1])
            return lmq__transport_fail(t, LMQ_EARG, "malformed option '%s' (expected key=value)", item);
        *val++ = '\0';
        static const char *const keys[] = {"baud", "bits", "parity", "stop", "flow"};
        unsigned k = 0;
        while (k < N(keys) && strcmp(item, keys[k]) != 0)
            k++;
        if (k == N(keys))
            return lmq__transport_fail(t, LMQ_EARG, "unknown option '%s' (known: baud, bits, parity, stop, flow)",
                                       item);
        if (seen & (1u << k))
            return lmq__transport_fail(t, LMQ_EARG, "option '%s' given twice", item);
        seen |= 1u << k;
        int bad = 0;
        switch (k) {
        case 0:
            bad = parse_int(val, 1, 4000000, &p->baud);
            break;
        case 1:
            bad = parse_int(val, 5, 8, &p->bits);
            break;
        case 2:
            bad = -1;
            for (size_t i = 0; i < N(parities); i++)
                if (strcmp(val, parities[i].name) == 0) {
                    p->parity = parities[i].value;
                    bad = 0;
                }
            break;
        case 3:
            bad = parse_int(val, 1, 2, &p->stop);
            break;
        default:
            bad = -1;
            for (size_t i = 0; i < N(flows); i++)
                if (strcmp(val, flows[i].name) == 0) {
                    p->flow = flows[i].value;
                    bad = 0;
                }
            break;
        }
        if (bad) {
            static const char *const expect[] = {"a rate from 1 to 4000000", "5, 6, 7 or 8",
                                                 "none, odd, even, mark or space", "1 or 2",
                                                 "none, xonxoff, rtscts or dtrdsr"};
            return lmq__transport_fail(t, LMQ_EARG, "bad %s=%s (expected %s)", item, val, expect[k]);
        }
    }
    return 0;
}

/* "ttyS0, ttyUSB0" — the ports libserialport knows, for a not-found message. */
static void port_names(char *buf, size_t size)
{
    struct sp_port **list = NULL;
    buf[0] = '\0';
    if (sp_list_ports(&list) != SP_OK)
        return;
    size_t used = 0;
    for (size_t i = 0; list[i] && used + 1 < size; i++) {
        int n = snprintf(buf + used, size - used, "%s%s", i ? ", " : "", sp_get_port_name(list[i]));
        if (n < 0)
            break;
        used += (size_t)n;
    }
    sp_free_port_list(list);
    if (used >= size && size > 4)
        strcpy(buf + size - 4, "...");
}

static int fail_notfound(lmq_transport_t *t)
{
    char names[256];
    port_names(names, sizeof names);
    return lmq__transport_fail(t, LMQ_ENOTFOUND, "no such port (ports here: %s)", names[0] ? names : "none");
}

static int fail_open(lmq_transport_t *t, const char *path, int e)
{
    if (e == ENOENT || e == ENODEV || e == ENXIO)
        return fail_notfound(t);
    if (e == EACCES || e == EPERM) {
        struct stat st;
        if (stat(path, &st) == 0) {
            char buf[1024];
            struct group gr, *grp = NULL;
            getgrgid_r(st.st_gid, &gr, buf, sizeof buf, &grp);
            if (grp && (st.st_mode & S_IRWXG) && st.st_gid != 0)
                return lmq__transport_fail(t, LMQ_EPERM, "permission denied: add the user to the '%s' group",
                                           grp->gr_name);
            return lmq__transport_fail(t, LMQ_EPERM, "permission denied (owner uid %u, group %s, mode %03o)",
                                       (unsigned)st.st_uid, grp ? grp->gr_name : "?",
                                       (unsigned)(st.st_mode & 0777));
        }
        return lmq__transport_fail(t, LMQ_EPERM, "permission denied");
    }
    if (e == EBUSY)
        return lmq__transport_fail(t, LMQ_EBUSY, "busy: another process holds it");
    if (e == EMFILE || e == ENFILE || e == ENOMEM)
        return lmq__transport_fail(t, LMQ_ESYS, "%s", strerror(e));
    return lmq__transport_fail(t, LMQ_EIO, "cannot open: %s", strerror(e));
}

/* Exclusive use: flock stops every other labmq (root included, which
 * TIOCEXCL does not); TIOCEXCL also stops other programs that do not lock. */
static int lock(lmq_transport_t *t, int fd)
{
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            return lmq__transport_fail(t, LMQ_EBUSY, "busy: another process holds it");
        return lmq__transport_fail(t, LMQ_EIO, "flock: %s", strerror(errno));
    }
    return 0;
}

static int claim(lmq_transport_t *t, serial_t *s)
{
    int fd = s->fd;
    if (s->lock_fd < 0) {
        int rc = lock(t, fd);
        if (rc < 0)
            return rc;
    }
    if (ioctl(fd, TIOCEXCL) < 0)
        return lmq__transport_fail(t, LMQ_EIO, "TIOCEXCL: %s", strerror(errno));
    s->excl = true;
    return 0;
}

static bool is_pty(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISCHR(st.st_mode))
        return false;
    /* Unix98 pty slaves: majors 136-143 (Documentation/admin-guide/devices.txt). */
    unsigned maj = major(st.st_rdev);
    return maj >= 136 && maj <= 143;
}

static int open_pty(lmq_transport_t *t, const serial_params_t *p, serial_t *s)
{
    int fd = open(p->path, O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return fail_open(t, p->path, errno);
    s->fd = fd;
    int rc = claim(t, s);
    if (rc < 0)
        return rc;
    size_t i = 0;
    while (i < N(speeds) && speeds[i].baud != p->baud)
        i++;
    if (i == N(speeds))
        return lmq__transport_fail(t, LMQ_EARG, "baud=%d: not a standard rate (a pseudo-terminal takes only those)",
                                   p->baud);
    if (p->flow == SP_FLOWCONTROL_DTRDSR)
        return lmq__transport_fail(t, LMQ_EARG, "flow=dtrdsr: a pseudo-terminal has no DTR/DSR lines");
    struct termios tio;
    if (tcgetattr(fd, &tio) < 0)
        return lmq__transport_fail(t, LMQ_EIO, "tcgetattr: %s", strerror(errno));
    cfmakeraw(&tio);
    tio.c_cflag |= CLOCAL | CREAD;
    tio.c_cflag &= ~(tcflag_t)(CSIZE | PARENB | PARODD | CMSPAR | CSTOPB | CRTSCTS);
    static const tcflag_t sizes[] = {CS5, CS6, CS7, CS8};
    tio.c_cflag |= sizes[p->bits - 5];
    if (p->parity != SP_PARITY_NONE)
        tio.c_cflag |= PARENB;
    if (p->parity == SP_PARITY_ODD || p->parity == SP_PARITY_MARK)
        tio.c_cflag |= PARODD;
    if (p->parity == SP_PARITY_MARK || p->parity == SP_PARITY_SPACE)
        tio.c_cflag |= CMSPAR;
    if (p->stop == 2)
        tio.c_cflag |= CSTOPB;
    if (p->flow == SP_FLOWCONTROL_RTSCTS)
        tio.c_cflag |= CRTSCTS;
    if (p->flow == SP_FLOWCONTROL_XONXOFF)
        tio.c_iflag |= IXON | IXOFF;
    /* VMIN 0 would make an empty read return 0, which must mean hang-up;
     * with VMIN 1 and O_NONBLOCK it is EAGAIN. */
    tio.c_cc[VMIN] = 1;
    tio.c_cc[VTIME] = 0;
    cfsetispeed(&tio, speeds[i].speed);
    cfsetospeed(&tio, speeds[i].speed);
    if (tcsetattr(fd, TCSANOW, &tio) < 0)
        return lmq__transport_fail(t, LMQ_EIO, "tcsetattr: %s", strerror(errno));
    if (tcflush(fd, TCIOFLUSH) < 0)
        return lmq__transport_fail(t, LMQ_EIO, "tcflush: %s", strerror(errno));
    return 0;
}

static int sp_fail(lmq_transport_t *t, const char *what)
{
    char *msg = sp_last_error_message();
    int rc = lmq__transport_fail(t, LMQ_EIO, "%s: %s", what, msg ? msg : "failed");
    sp_free_error_message(msg);
    return rc;
}

static int open_sp(lmq_transport_t *t, const serial_params_t *p, serial_t *s, struct sp_port *port)
{
    s->lock_fd = open(p->path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (s->lock_fd < 0) {
        sp_free_port(port);
        return fail_open(t, p->path, errno);
    }
    int rc = lock(t, s->lock_fd);
    if (rc < 0) {
        sp_free_port(port);
        return rc;
    }
    s->port = port;
    if (sp_open(port, SP_MODE_READ_WRITE) != SP_OK) {
        int e = errno;
        s->port = NULL;
        sp_free_port(port);
        return fail_open(t, p->path, e);
    }
    int fd = -1;
    if (sp_get_port_handle(port, &fd) != SP_OK || fd < 0)
        return sp_fail(t, "no descriptor");
    s->fd = fd;
    /* libserialport opens without O_CLOEXEC; set it before anything else. */
    int fl = fcntl(fd, F_GETFL);
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 || fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return lmq__transport_fail(t, LMQ_EIO, "fcntl: %s", strerror(errno));
    rc = claim(t, s);
    if (rc < 0)
        return rc;
    struct sp_port_config *cfg = NULL;
    if (sp_new_config(&cfg) != SP_OK)
        return lmq__transport_fail(t, LMQ_EMEM, "out of memory");
    bool ok = sp_set_config_baudrate(cfg, p->baud) == SP_OK && sp_set_config_bits(cfg, p->bits) == SP_OK &&
              sp_set_config_parity(cfg, p->parity) == SP_OK && sp_set_config_stopbits(cfg, p->stop) == SP_OK &&
              sp_set_config_flowcontrol(cfg, p->flow) == SP_OK;
    ok = ok && sp_set_config(port, cfg) == SP_OK;
    sp_free_config(cfg);
    if (!ok)
        return sp_fail(t, "cannot apply baud/bits/parity/stop/flow");
    /* As on the pty path: an empty read must be EAGAIN, not 0. */
    struct termios tio;
    if (tcgetattr(fd, &tio) < 0)
        return lmq__transport_fail(t, LMQ_EIO, "tcgetattr: %s", strerror(errno));
    tio.c_cc[VMIN] = 1;
    tio.c_cc[VTIME] = 0;
    if (tcsetattr(fd, TCSANOW, &tio) < 0)
        return lmq__transport_fail(t, LMQ_EIO, "tcsetattr: %s", strerror(errno));
    if (sp_flush(port, SP_BUF_BOTH) != SP_OK)
        return sp_fail(t, "flush");
    return 0;
}

static void serial_close(lmq_transport_t *t)
{
    serial_t *s = t->impl;
    if (s->excl)
        ioctl(s->fd, TIOCNXCL); /* the flag outlives us on a tty whose other end stays open */
    if (s->port) {
        sp_close(s->port);
        sp_free_port(s->port);
    } else if (s->fd >= 0) {
        close(s->fd);
    }
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    free(s);
    t->impl = NULL;
}

static int serial_open(lmq_transport_t *t, const char *rest, int64_t deadline_ns)
{
    (void)deadline_ns; /* opening a tty does not wait (O_NONBLOCK ignores carrier) */
    serial_params_t p;
    int rc = parse(t, rest, &p);
    if (rc < 0)
        return rc;
    struct stat st;
    if (stat(p.path, &st) < 0)
        return fail_open(t, p.path, errno);
    /* libserialport knows a port by its /sys/class/tty entry, so a symlink
     * (/dev/serial/by-id/...) is looked up under its target too. */
    struct sp_port *port = NULL;
    if (sp_get_port_by_name(p.path, &port) != SP_OK) {
        port = NULL;
        char real[PATH_MAX];
        if (realpath(p.path, real) && strcmp(real, p.path) != 0 && sp_get_port_by_name(real, &port) != SP_OK)
            port = NULL;
    }
    if (!port && !is_pty(p.path)) {
        if (!S_ISCHR(st.st_mode))
            return lmq__transport_fail(t, LMQ_ENOTFOUND, "not a serial port (not a character device)");
        return lmq__transport_fail(t, LMQ_ENOTFOUND, "not a serial port known to the system (no /sys/class/tty entry)");
    }
    serial_t *s = calloc(1, sizeof *s);
    if (!s) {
        sp_free_port(port);
        return lmq__transport_fail(t, LMQ_EMEM, "out of memory");
    }
    s->fd = s->lock_fd = -1;
    t->impl = s;
    rc = port ? open_sp(t, &p, s, port) : open_pty(t, &p, s);
    if (rc < 0)
        serial_close(t);
    return rc;
}

static int serial_write(lmq_transport_t *t, const void *data, size_t len, int64_t deadline_ns)
{
    serial_t *s = t->impl;
    const char *p = data;
    while (len) {
        ssize_t n = write(s->fd, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            if (errno == EIO || errno == ENXIO || errno == ENODEV)
                return lmq__transport_fail(t, LMQ_EIO, "write: hung up or unplugged (%s)", strerror(errno));
            return lmq__transport_fail(t, LMQ_EIO, "write: %s", strerror(errno));
        }
        short rev;
        int rc = lmq__transport_poll(t, s->fd, POLLOUT, &rev, deadline_ns);
        if (rc < 0)
            return rc;
        if (rev & (POLLHUP | POLLERR | POLLNVAL))
            return lmq__transport_fail(t, LMQ_EIO, "write: hung up or unplugged");
    }
    return 0;
}

static int serial_read(lmq_transport_t *t, void *buf, size_t size, size_t *got, bool *eom, int64_t deadline_ns)
{
    serial_t *s = t->impl;
    (void)eom;
    bool hup = false;
    for (;;) {
        ssize_t n = read(s->fd, buf, size);
        if (n > 0) {
            *got = (size_t)n;
            return 0;
        }
        /* A tty that was hung up (far end of a pty closed, USB adapter
         * pulled) reads as end of file or EIO. */
        if (n == 0)
            return lmq__transport_fail(t, LMQ_EIO, "hung up or unplugged (end of file)");
        if (errno != EAGAIN && errno != EINTR) {
            if (errno == EIO || errno == ENXIO || errno == ENODEV)
                return lmq__transport_fail(t, LMQ_EIO, "hung up or unplugged (%s)", strerror(errno));
            return lmq__transport_fail(t, LMQ_EIO, "read: %s", strerror(errno));
        }
        if (hup)
            return lmq__transport_fail(t, LMQ_EIO, "hung up or unplugged");
        short rev;
        int rc = lmq__transport_poll(t, s->fd, POLLIN, &rev, deadline_ns);
        if (rc < 0)
            return rc;
        if (rev & POLLNVAL)
            return lmq__transport_fail(t, LMQ_EIO, "descriptor no longer valid");
        hup = rev & (POLLHUP | POLLERR); /* read what is left first */
    }
}

static int serial_clear(lmq_transport_t *t, int quiet_ms, int64_t deadline_ns)
{
    serial_t *s = t->impl;
    int rc = s->port ? (sp_flush(s->port, SP_BUF_INPUT) == SP_OK ? 0 : -1) : tcflush(s->fd, TCIFLUSH);
    if (rc < 0) {
        /* A hung-up tty refuses the flush; the drain below says so. */
        lmq_log(t->log, LMQ_LOG_DEBUG, t->source, "clear: flush failed: %s", strerror(errno));
    }
    return lmq__transport_drain(t, quiet_ms, deadline_ns);
}

static int serial_check(lmq_transport_t *t)
{
    const serial_t *s = t->impl;
    return lmq__transport_check_fd(t, s->fd);
}

const lmq__transport_ops_t lmq__transport_serial = {
    .kind = "serial",
    .open = serial_open,
    .close = serial_close,
    .write = serial_write,
    .read = serial_read,
    .clear = serial_clear,
    .status_byte = NULL,
    .check = serial_check,
};

static const char *nz(const char *s) { return s ? s : ""; }

int lmq__transport_scan_serial(lmq_port_fn fn, void *user, char *err, size_t errlen)
{
    struct sp_port **list = NULL;
    struct stat st;
    /* No tty class at all (a container, a board without serial ports): none
     * to list, which libserialport would report as an error. */
    if (stat("/sys/class/tty", &st) != 0 && errno == ENOENT)
        return 0;
    if (sp_list_ports(&list) != SP_OK) {
        char *msg = sp_last_error_message();
        if (err && errlen)
            snprintf(err, errlen, "listing serial ports: %s", msg ? msg : "failed");
        sp_free_error_message(msg);
        return LMQ_EIO;
    }
    int count = 0;
    for (size_t i = 0; list[i]; i++) {
        struct sp_port *port = list[i];
        const char *name = sp_get_port_name(port);
        char connection[PATH_MAX + 8], description[256];
        snprintf(connection, sizeof connection, "serial:%s", name);
        lmq_port_info_t info = {.connection = connection, .kind = "serial", .vid = -1, .pid = -1,
                                .manufacturer = "", .product = "", .serial = ""};
        int vid, pid;
        if (sp_get_port_transport(port) == SP_TRANSPORT_USB && sp_get_port_usb_vid_pid(port, &vid, &pid) == SP_OK) {
            info.vid = vid;
            info.pid = pid;
            info.manufacturer = nz(sp_get_port_usb_manufacturer(port));
            info.product = nz(sp_get_port_usb_product(port));
            info.serial = nz(sp_get_port_usb_serial(port));
        }
        const char *desc = sp_get_port_description(port);
        if (info.vid >= 0)
            snprintf(description, sizeof description, "%s (USB %04x:%04x%s%s)", desc ? desc : name, info.vid,
                     info.pid, info.serial[0] ? ", serial " : "", info.serial);
        else
            snprintf(description, sizeof description, "%s", desc ? desc : name);
        info.description = description;
        fn(user, &info);
        count++;
    }
    sp_free_port_list(list);
    return count;
}
