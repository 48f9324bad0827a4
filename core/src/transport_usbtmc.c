/* The USBTMC transport (USBTMC 1.0 with the USB488 status byte) on
 * libusb-1.0: connection "usbtmc:VID:PID[:SERIAL]", device-dependent
 * messages over bulk-out/bulk-in, the abort and clear sequences, the status
 * byte, and discovery of every USBTMC interface on the machine.
 *
 * Every transfer is asynchronous and waited for in slices of at most
 * LMQ__TRANSPORT_SLICE_MS, so the cancel flag and the deadline end a wait
 * that the device never answers; the transfer is then cancelled and the
 * USBTMC abort sequence brings the device back in step with us.
 *
 * Descriptors: each transport has its own libusb context. libusb (1.0.26)
 * opens the usbfs node with O_CLOEXEC and makes its eventfd, timerfd and
 * udev monitor close-on-exec; test_usbtmc checks that, and that close
 * gives every one of them back.
 *
 * Kernel driver: when one (the kernel's usbtmc) holds the interface we
 * detach it to claim the interface and reattach it at close, so /dev/usbtmcN
 * returns; an interface that had no driver is left without one. */
#include "transport_usbtmc.h"

#include <errno.h>
#include <inttypes.h>
#include <libusb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "labmq/driver.h"
#include "labmq/log.h"
#include "transport_internal.h"

/* How long the abort sequence after a timed-out transfer may take on top of
 * the caller's deadline: long enough for a live device to answer a few
 * control requests, short enough that a dead one costs little more than its
 * deadline. If it does not finish, the next command needs
 * lmq_transport_clear (which the ETIMEOUT contract asks for anyway). */
#define ABORT_BUDGET_MS 150
/* A transfer we cancelled must come back from the kernel; past this it is
 * held until close and the transport is broken. */
#define CANCEL_WAIT_MS 1000
/* Between two CHECK_*_STATUS polls while the device answers PENDING. */
#define PENDING_POLL_MS 5

typedef struct usbtmc {
    libusb_context *ctx;
    libusb_device_handle *h;
    uint8_t iface, alt;
    uint8_t protocol; /* bInterfaceProtocol: 1 = USB488 (has READ_STATUS_BYTE) */
    uint8_t ep_out, ep_in, ep_intr; /* ep_intr 0: none */
    uint16_t intr_max;             /* interrupt-in wMaxPacketSize */
    bool claimed, detached;
    /* Within an abort sequence: it runs to its own short budget even when
     * the cancel flag is up, so a stopping device is left in step. */
    bool aborting;
    uint8_t tag;     /* the last bTag sent; 1..255, 0 before the first */
    uint8_t stb_tag; /* the last READ_STATUS_BYTE bTag; 2..127 */
    /* The current transfer's completion flag lives here, not on the stack:
     * a transfer that could not be cancelled may complete after we return. */
    int done;
    struct libusb_transfer *stuck; /* not given back by the kernel; freed at close */
    /* inbuf[pos..end) is payload of the last bulk-in transfer not yet
     * delivered; in_eom: that transfer ended the message (delivered with
     * its last byte, or alone when it had none). */
    size_t pos, end;
    bool in_eom;
    uint8_t inbuf[LMQ__USBTMC_XFER];
    uint8_t outbuf[LMQ__USBTMC_XFER];
} usbtmc_t;

/* ---- the bulk-in header: the boundary to the device ---- */

static void hex_bytes(char *out, size_t outlen, const uint8_t *buf, size_t len, size_t max)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < len && i < max && o + 4 < outlen; i++)
        o += (size_t)snprintf(out + o, outlen - o, "%s%02x", i ? " " : "", buf[i]);
    if (len > max && o + 4 < outlen)
        snprintf(out + o, outlen - o, " ...");
}

int lmq__usbtmc_parse_in_header(const uint8_t *buf, size_t len, uint8_t expect_tag, uint32_t *size, bool *eom,
                                char *err, size_t errlen)
{
    char hex[3 * LMQ__USBTMC_HEADER + 8];
    char why[96];
    hex_bytes(hex, sizeof hex, buf, len, LMQ__USBTMC_HEADER);
    *size = 0;
    *eom = false;
    if (len < LMQ__USBTMC_HEADER) {
        snprintf(why, sizeof why, "%zu bytes, shorter than the 12-byte header", len);
    } else if (buf[0] != LMQ__USBTMC_DEV_DEP_MSG_IN) {
        snprintf(why, sizeof why, "MsgID %u, expected %u (DEV_DEP_MSG_IN)", buf[0], LMQ__USBTMC_DEV_DEP_MSG_IN);
    } else if (buf[1] != expect_tag) {
        snprintf(why, sizeof why, "bTag %u, expected %u (the request's)", buf[1], expect_tag);
    } else if ((buf[1] ^ buf[2]) != 0xff) {
        snprintf(why, sizeof why, "bTagInverse 0x%02x is not the inverse of bTag 0x%02x", buf[2], buf[1]);
    } else {
        uint32_t n = (uint32_t)buf[4] | (uint32_t)buf[5] << 8 | (uint32_t)buf[6] << 16 | (uint32_t)buf[7] << 24;
        if (n > len - LMQ__USBTMC_HEADER) {
            snprintf(why, sizeof why, "TransferSize %" PRIu32 " but only %zu payload bytes arrived", n,
                     len - LMQ__USBTMC_HEADER);
        } else {
            *size = n;
            *eom = buf[8] & 1;
            return 0;
        }
    }
    if (err && errlen)
        snprintf(err, errlen, "bad DEV_DEP_MSG_IN header [%s]: %s", hex, why);
    return LMQ_EPROTO;
}

/* ---- transfers ---- */

static void LIBUSB_CALL xfer_done(struct libusb_transfer *x) { *(int *)x->user_data = 1; }

static int usb_status(lmq_transport_t *t, int r, const char *what)
{
    switch (r) {
    case LIBUSB_ERROR_NO_DEVICE:
        return lmq__transport_fail(t, LMQ_EIO, "%s: the device is gone (unplugged)", what);
    case LIBUSB_ERROR_IO:
        return lmq__transport_fail(t, LMQ_EIO, "%s: I/O error (unplugged or reset?)", what);
    case LIBUSB_ERROR_ACCESS:
        return lmq__transport_fail(t, LMQ_EPERM, "%s: permission denied", what);
    case LIBUSB_ERROR_BUSY:
        return lmq__transport_fail(t, LMQ_EBUSY, "%s: busy", what);
    case LIBUSB_ERROR_NO_MEM:
        return lmq__transport_fail(t, LMQ_EMEM, "%s: out of memory", what);
    default:
        return lmq__transport_fail(t, LMQ_EIO, "%s: %s", what, libusb_strerror(r));
    }
}

/* Runs one transfer until it completes, the deadline passes or the cancel
 * flag rises. Returns 0 with *actual set when it completed; LMQ_ETIMEOUT or
 * LMQ_ECLOSED *without* recording an error (the caller aborts first and then
 * reports); any other failure is recorded. For control transfers buf starts
 * with the 8-byte setup packet and *actual counts the data after it. */
static int xfer(lmq_transport_t *t, unsigned char type, unsigned char ep, uint8_t *buf, int len, int *actual,
                int64_t deadline_ns, const char *what)
{
    usbtmc_t *u = t->impl;
    *actual = 0;
    if (u->stuck)
        return lmq__transport_fail(t, LMQ_EIO, "%s: an earlier transfer never came back: close and reopen", what);
    struct libusb_transfer *x = libusb_alloc_transfer(0);
    if (!x)
        return lmq__transport_fail(t, LMQ_EMEM, "%s: out of memory", what);
    u->done = 0;
    switch (type) {
    case LIBUSB_TRANSFER_TYPE_CONTROL:
        libusb_fill_control_transfer(x, u->h, buf, xfer_done, &u->done, 0);
        break;
    case LIBUSB_TRANSFER_TYPE_INTERRUPT:
        libusb_fill_interrupt_transfer(x, u->h, ep, buf, len, xfer_done, &u->done, 0);
        break;
    default:
        libusb_fill_bulk_transfer(x, u->h, ep, buf, len, xfer_done, &u->done, 0);
        break;
    }
    int r = libusb_submit_transfer(x);
    if (r < 0) {
        libusb_free_transfer(x);
        return usb_status(t, r, what);
    }
    int rc = 0;
    while (!u->done) {
        if (!u->aborting && lmq__transport_cancelled(t)) {
            rc = LMQ_ECLOSED;
            break;
        }
        int ms = lmq__transport_slice_ms(deadline_ns);
        if (ms <= 0) {
            rc = LMQ_ETIMEOUT;
            break;
        }
        struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
        r = libusb_handle_events_timeout_completed(u->ctx, &tv, &u->done);
        if (r < 0 && r != LIBUSB_ERROR_INTERRUPTED && r != LIBUSB_ERROR_TIMEOUT) {
            rc = usb_status(t, r, what);
            break;
        }
    }
    if (!u->done) {
        libusb_cancel_transfer(x);
        int64_t until = lmq_clock_mono_ns() + (int64_t)CANCEL_WAIT_MS * 1000000;
        while (!u->done && lmq_clock_mono_ns() < until) {
            struct timeval tv = {.tv_sec = 0, .tv_usec = 10000};
            libusb_handle_events_timeout_completed(u->ctx, &tv, &u->done);
        }
        if (!u->done) {
            u->stuck = x;
            return lmq__transport_fail(t, LMQ_EIO, "%s: the cancelled transfer never came back", what);
        }
        /* Completed in the meantime: the data is real, use it. */
        if (x->status == LIBUSB_TRANSFER_COMPLETED && rc == LMQ_ETIMEOUT)
            rc = 0;
    }
    if (rc == 0) {
        switch (x->status) {
        case LIBUSB_TRANSFER_COMPLETED:
            *actual = x->actual_length;
            break;
        case LIBUSB_TRANSFER_STALL:
            /* A halted bulk endpoint stays halted until cleared; a stalled
             * control request is the device refusing it. */
            if (type == LIBUSB_TRANSFER_TYPE_BULK)
                libusb_clear_halt(u->h, ep);
            rc = lmq__transport_fail(t, LMQ_EDEVICE, "%s: the device stalled the endpoint (refused)", what);
            break;
        case LIBUSB_TRANSFER_NO_DEVICE:
            rc = lmq__transport_fail(t, LMQ_EIO, "%s: the device is gone (unplugged)", what);
            break;
        case LIBUSB_TRANSFER_OVERFLOW:
            rc = lmq__transport_fail(t, LMQ_EPROTO, "%s: the device sent more than the %d bytes asked for", what,
                                     len);
            break;
        case LIBUSB_TRANSFER_TIMED_OUT:
        case LIBUSB_TRANSFER_CANCELLED:
            rc = LMQ_ETIMEOUT;
            *actual = x->actual_length;
            break;
        default:
            rc = lmq__transport_fail(t, LMQ_EIO, "%s: transfer error (unplugged or reset?)", what);
            break;
        }
    } else if (rc == LMQ_ETIMEOUT || rc == LMQ_ECLOSED) {
        *actual = x->actual_length;
    }
    libusb_free_transfer(x);
    return rc;
}

/* A class request to the USBTMC interface (recipient interface) or one of
 * its endpoints, device to host, answering into data[0..len). *got counts
 * what came. Timeouts are recorded like any failure. */
static int ctrl_in(lmq_transport_t *t, uint8_t recipient, uint8_t request, uint16_t value, uint16_t index,
                   uint8_t *data, uint16_t len, int *got, int64_t deadline_ns, const char *what)
{
    uint8_t buf[LIBUSB_CONTROL_SETUP_SIZE + 64];
    if (len > 64)
        return lmq__transport_fail(t, LMQ_EARG, "%s: %u bytes is too long an answer", what, len);
    libusb_fill_control_setup(buf, LIBUSB_ENDPOINT_IN | LIBUSB_REQUEST_TYPE_CLASS | recipient, request, value, index,
                              len);
    int rc = xfer(t, LIBUSB_TRANSFER_TYPE_CONTROL, 0, buf, LIBUSB_CONTROL_SETUP_SIZE + len, got, deadline_ns, what);
    if (rc == LMQ_ETIMEOUT)
        return lmq__transport_fail(t, LMQ_ETIMEOUT, "%s: no answer to the control request", what);
    if (rc == LMQ_ECLOSED)
        return lmq__transport_fail(t, LMQ_ECLOSED, "%s: cancelled", what);
    if (rc < 0)
        return rc;
    memcpy(data, buf + LIBUSB_CONTROL_SETUP_SIZE, (size_t)*got);
    return 0;
}

static uint8_t next_tag(usbtmc_t *u)
{
    u->tag = (uint8_t)(u->tag % 255 + 1); /* 1..255, never 0 (USBTMC 1.0 §3.2) */
    return u->tag;
}

static void put_header(uint8_t *b, uint8_t msgid, uint8_t tag, uint32_t size, uint8_t attr, uint8_t termchar)
{
    b[0] = msgid;
    b[1] = tag;
    b[2] = (uint8_t)~tag;
    b[3] = 0;
    b[4] = (uint8_t)size;
    b[5] = (uint8_t)(size >> 8);
    b[6] = (uint8_t)(size >> 16);
    b[7] = (uint8_t)(size >> 24);
    b[8] = attr;
    b[9] = termchar;
    b[10] = b[11] = 0;
}

static int64_t after_ms(int ms) { return lmq_clock_mono_ns() + (int64_t)ms * 1000000; }

static void pause_ms(int ms)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ms * 1000000};
    nanosleep(&ts, NULL);
}

/* Reads and drops bulk-in data until a short packet ends a transfer (what a
 * device sends once told to abort), bounded by the deadline. */
static int drain_bulk_in(lmq_transport_t *t, int64_t deadline_ns)
{
    usbtmc_t *u = t->impl;
    for (;;) {
        int got;
        int rc = xfer(t, LIBUSB_TRANSFER_TYPE_BULK, u->ep_in, u->inbuf, sizeof u->inbuf, &got, deadline_ns,
                      "abort: reading bulk-in to the short packet");
        if (rc < 0)
            return rc;
        lmq_log(t->log, LMQ_LOG_DEBUG, t->source, "abort: dropped %d bulk-in bytes", got);
        if (got < (int)sizeof u->inbuf)
            return 0;
    }
}

/* USBTMC 1.0 §4.2.1.4-5: after a bulk-in transfer we gave up on. Best
 * effort within ABORT_BUDGET_MS; what fails is logged, the caller reports
 * the timeout. */
static void abort_bulk_in(lmq_transport_t *t, uint8_t tag)
{
    usbtmc_t *u = t->impl;
    char saved[sizeof t->err];
    memcpy(saved, t->err, sizeof saved);
    int64_t deadline = after_ms(ABORT_BUDGET_MS);
    uint8_t a[8];
    int got;
    u->aborting = true;
    u->pos = u->end = 0;
    u->in_eom = false;
    int rc = ctrl_in(t, LIBUSB_RECIPIENT_ENDPOINT, LMQ__USBTMC_INITIATE_ABORT_BULK_IN, tag, u->ep_in, a, 2, &got,
                     deadline, "INITIATE_ABORT_BULK_IN");
    if (rc == 0 && got >= 1 && a[0] == LMQ__USBTMC_STATUS_SUCCESS) {
        rc = drain_bulk_in(t, deadline);
        while (rc == 0) {
            rc = ctrl_in(t, LIBUSB_RECIPIENT_ENDPOINT, LMQ__USBTMC_CHECK_ABORT_BULK_IN_STATUS, 0, u->ep_in, a, 8, &got,
                         deadline, "CHECK_ABORT_BULK_IN_STATUS");
            if (rc < 0 || got < 1 || a[0] != LMQ__USBTMC_STATUS_PENDING)
                break;
            /* bmAbortBulkIn.D0: more data queued that we must read first. */
            if (got >= 2 && (a[1] & 1))
                rc = drain_bulk_in(t, deadline);
            else
                pause_ms(PENDING_POLL_MS);
        }
        if (rc == 0 && a[0] != LMQ__USBTMC_STATUS_SUCCESS)
            lmq_log(t->log, LMQ_LOG_WARN, t->source, "abort bulk-in: CHECK_ABORT_BULK_IN_STATUS answered 0x%02x",
                    a[0]);
    } else if (rc == 0) {
        /* FAILED: no transfer in progress (it completed meanwhile); nothing to do. */
        lmq_log(t->log, LMQ_LOG_DEBUG, t->source, "abort bulk-in: INITIATE answered 0x%02x (nothing in progress)",
                got >= 1 ? a[0] : 0);
    }
    if (rc < 0)
        lmq_log(t->log, LMQ_LOG_WARN, t->source, "abort bulk-in incomplete (%s); clear before the next command",
                t->err);
    u->aborting = false;
    memcpy(t->err, saved, sizeof saved);
}

/* USBTMC 1.0 §4.2.1.2-3: after a bulk-out transfer we gave up on. */
static void abort_bulk_out(lmq_transport_t *t, uint8_t tag)
{
    usbtmc_t *u = t->impl;
    char saved[sizeof t->err];
    memcpy(saved, t->err, sizeof saved);
    int64_t deadline = after_ms(ABORT_BUDGET_MS);
    uint8_t a[8];
    int got;
    u->aborting = true;
    int rc = ctrl_in(t, LIBUSB_RECIPIENT_ENDPOINT, LMQ__USBTMC_INITIATE_ABORT_BULK_OUT, tag, u->ep_out, a, 2, &got,
                     deadline, "INITIATE_ABORT_BULK_OUT");
    if (rc == 0 && got >= 1 && a[0] == LMQ__USBTMC_STATUS_SUCCESS) {
        while ((rc = ctrl_in(t, LIBUSB_RECIPIENT_ENDPOINT, LMQ__USBTMC_CHECK_ABORT_BULK_OUT_STATUS, 0, u->ep_out, a,
                             8, &got, deadline, "CHECK_ABORT_BULK_OUT_STATUS")) == 0 &&
               got >= 1 && a[0] == LMQ__USBTMC_STATUS_PENDING)
            pause_ms(PENDING_POLL_MS);
        /* §4.2.1.3: the device halted bulk-out; the host clears it. */
        int r = libusb_clear_halt(u->h, u->ep_out);
        if (r < 0 && rc == 0)
            rc = usb_status(t, r, "abort bulk-out: clearing the halt");
    }
    if (rc < 0)
        lmq_log(t->log, LMQ_LOG_WARN, t->source, "abort bulk-out incomplete (%s); clear before the next command",
                t->err);
    u->aborting = false;
    memcpy(t->err, saved, sizeof saved);
}

/* Reports a transfer that ended by timeout or cancellation, after the
 * abort; other failures are already recorded. */
static int gave_up(lmq_transport_t *t, int rc, const char *what)
{
    if (rc == LMQ_ECLOSED)
        return lmq__transport_fail(t, LMQ_ECLOSED, "%s: cancelled", what);
    return lmq__transport_fail(t, LMQ_ETIMEOUT, "%s: the deadline passed (transfer aborted)", what);
}

/* One DEV_DEP_MSG_OUT transfer (or a REQUEST_DEV_DEP_MSG_IN: header only)
 * from outbuf[0..len). */
static int send_out(lmq_transport_t *t, int len, int64_t deadline_ns, const char *what)
{
    usbtmc_t *u = t->impl;
    int sent;
    int rc = xfer(t, LIBUSB_TRANSFER_TYPE_BULK, u->ep_out, u->outbuf, len, &sent, deadline_ns, what);
    if (rc == LMQ_ETIMEOUT || rc == LMQ_ECLOSED) {
        abort_bulk_out(t, u->outbuf[1]);
        return gave_up(t, rc, what);
    }
    if (rc < 0)
        return rc;
    if (sent != len)
        return lmq__transport_fail(t, LMQ_EIO, "%s: only %d of %d bytes went out", what, sent, len);
    return 0;
}

static int usbtmc_write(lmq_transport_t *t, const void *data, size_t len, int64_t deadline_ns)
{
    usbtmc_t *u = t->impl;
    const uint8_t *p = data;
    size_t left = len;
    do {
        size_t n = left < LMQ__USBTMC_MAX_PAYLOAD ? left : LMQ__USBTMC_MAX_PAYLOAD;
        bool last = n == left;
        put_header(u->outbuf, LMQ__USBTMC_DEV_DEP_MSG_OUT, next_tag(u), (uint32_t)n, last ? 1 : 0, 0);
        if (n)
            memcpy(u->outbuf + LMQ__USBTMC_HEADER, p, n);
        /* Each transfer is padded to a multiple of 4 bytes (§3.2). */
        size_t total = (LMQ__USBTMC_HEADER + n + 3) & ~(size_t)3;
        memset(u->outbuf + LMQ__USBTMC_HEADER + n, 0, total - LMQ__USBTMC_HEADER - n);
        int rc = send_out(t, (int)total, deadline_ns, "DEV_DEP_MSG_OUT");
        if (rc < 0)
            return rc;
        p += n;
        left -= n;
    } while (left > 0);
    return 0;
}

/* One REQUEST_DEV_DEP_MSG_IN and the bulk-in transfer answering it, into
 * inbuf. */
static int fetch(lmq_transport_t *t, int64_t deadline_ns)
{
    usbtmc_t *u = t->impl;
    uint8_t tag = next_tag(u);
    /* TermChar off: a message ends at EOM; read_line finds terminators. */
    put_header(u->outbuf, LMQ__USBTMC_REQUEST_DEV_DEP_MSG_IN, tag, LMQ__USBTMC_MAX_PAYLOAD, 0, 0);
    int rc = send_out(t, LMQ__USBTMC_HEADER, deadline_ns, "REQUEST_DEV_DEP_MSG_IN");
    if (rc < 0)
        return rc;
    int got;
    rc = xfer(t, LIBUSB_TRANSFER_TYPE_BULK, u->ep_in, u->inbuf, sizeof u->inbuf, &got, deadline_ns,
              "DEV_DEP_MSG_IN");
    if (rc == LMQ_ETIMEOUT || rc == LMQ_ECLOSED) {
        abort_bulk_in(t, tag);
        return gave_up(t, rc, "reading DEV_DEP_MSG_IN");
    }
    if (rc < 0)
        return rc;
    uint32_t size;
    bool eom;
    char why[200];
    if (lmq__usbtmc_parse_in_header(u->inbuf, (size_t)got, tag, &size, &eom, why, sizeof why) < 0)
        return lmq__transport_fail(t, LMQ_EPROTO, "%s", why);
    if (size > LMQ__USBTMC_MAX_PAYLOAD)
        return lmq__transport_fail(t, LMQ_EPROTO, "DEV_DEP_MSG_IN: TransferSize %" PRIu32 " exceeds the %d asked for",
                                   size, LMQ__USBTMC_MAX_PAYLOAD);
    /* Anything after TransferSize is alignment padding. */
    u->pos = LMQ__USBTMC_HEADER;
    u->end = LMQ__USBTMC_HEADER + size;
    u->in_eom = eom;
    return 0;
}

static int usbtmc_read(lmq_transport_t *t, void *buf, size_t size, size_t *got, bool *eom, int64_t deadline_ns)
{
    usbtmc_t *u = t->impl;
    *got = 0;
    *eom = false;
    /* A transfer with neither payload nor EOM delivers nothing: ask again
     * (the device may send empty transfers while it is busy). */
    while (u->pos == u->end && !u->in_eom) {
        /* Past the deadline, asking would only start a transfer to abort. */
        if (lmq__transport_slice_ms(deadline_ns) <= 0)
            return lmq__transport_fail(t, LMQ_ETIMEOUT, "reading DEV_DEP_MSG_IN: the deadline passed");
        int rc = fetch(t, deadline_ns);
        if (rc < 0)
            return rc;
    }
    size_t n = u->end - u->pos < size ? u->end - u->pos : size;
    memcpy(buf, u->inbuf + u->pos, n);
    u->pos += n;
    *got = n;
    if (u->pos == u->end && u->in_eom) {
        *eom = true;
        u->in_eom = false;
    }
    return 0;
}

/* USBTMC 1.0 §4.2.1.6-7, then clear the bulk halts. */
static int usbtmc_clear(lmq_transport_t *t, int quiet_ms, int64_t deadline_ns)
{
    (void)quiet_ms; /* the device says when it is clear */
    usbtmc_t *u = t->impl;
    u->pos = u->end = 0;
    u->in_eom = false;
    uint8_t a[2];
    int got;
    int rc = ctrl_in(t, LIBUSB_RECIPIENT_INTERFACE, LMQ__USBTMC_INITIATE_CLEAR, 0, u->iface, a, 1, &got, deadline_ns,
                     "INITIATE_CLEAR");
    if (rc < 0)
        return rc;
    if (got < 1 || a[0] != LMQ__USBTMC_STATUS_SUCCESS)
        return lmq__transport_fail(t, LMQ_EDEVICE, "INITIATE_CLEAR: the device answered status 0x%02x",
                                   got >= 1 ? a[0] : 0);
    for (int polls = 1;; polls++) {
        rc = ctrl_in(t, LIBUSB_RECIPIENT_INTERFACE, LMQ__USBTMC_CHECK_CLEAR_STATUS, 0, u->iface, a, 2, &got,
                     deadline_ns, "CHECK_CLEAR_STATUS");
        if (rc < 0)
            return rc;
        if (got < 1 || a[0] != LMQ__USBTMC_STATUS_PENDING)
            break;
        if (lmq_clock_mono_ns() >= deadline_ns)
            return lmq__transport_fail(t, LMQ_ETIMEOUT, "CHECK_CLEAR_STATUS: still pending after %d polls", polls);
        /* bmClear.D0: bulk-in data queued that must be read before the clear finishes. */
        if (got >= 2 && (a[1] & 1)) {
            rc = drain_bulk_in(t, deadline_ns);
            if (rc == LMQ_ETIMEOUT || rc == LMQ_ECLOSED)
                return gave_up(t, rc, "clear: reading bulk-in");
            if (rc < 0)
                return rc;
        } else {
            pause_ms(PENDING_POLL_MS);
        }
    }
    if (got < 1 || a[0] != LMQ__USBTMC_STATUS_SUCCESS)
        return lmq__transport_fail(t, LMQ_EDEVICE, "CHECK_CLEAR_STATUS: the device answered status 0x%02x",
                                   got >= 1 ? a[0] : 0);
    int r = libusb_clear_halt(u->h, u->ep_out);
    if (r == 0)
        r = libusb_clear_halt(u->h, u->ep_in);
    if (r < 0)
        return usb_status(t, r, "clear: clearing the bulk endpoint halts");
    u->pos = u->end = 0;
    u->in_eom = false;
    return 0;
}

/* USB488 §4.3.1: READ_STATUS_BYTE; with an interrupt-in endpoint the byte
 * comes there as a notification (§3.4.2) rather than in the reply. */
static int usbtmc_status_byte(lmq_transport_t *t, uint8_t *stb, int64_t deadline_ns)
{
    usbtmc_t *u = t->impl;
    if (u->protocol != 1)
        return lmq__transport_fail(t, LMQ_EARG,
                                   "not a USB488 interface (bInterfaceProtocol %u): it has no status byte",
                                   u->protocol);
    u->stb_tag = (uint8_t)(u->stb_tag >= 2 && u->stb_tag < 127 ? u->stb_tag + 1 : 2);
    uint8_t tag = u->stb_tag;
    uint8_t a[3];
    int got;
    int rc = ctrl_in(t, LIBUSB_RECIPIENT_INTERFACE, LMQ__USB488_READ_STATUS_BYTE, tag, u->iface, a, 3, &got,
                     deadline_ns, "READ_STATUS_BYTE");
    if (rc < 0)
        return rc;
    if (got < 3)
        return lmq__transport_fail(t, LMQ_EPROTO, "READ_STATUS_BYTE: %d-byte answer, expected 3", got);
    if (a[0] != LMQ__USBTMC_STATUS_SUCCESS)
        return lmq__transport_fail(t, LMQ_EDEVICE, "READ_STATUS_BYTE: the device answered status 0x%02x", a[0]);
    if (a[1] != tag)
        return lmq__transport_fail(t, LMQ_EPROTO, "READ_STATUS_BYTE: answer [%02x %02x %02x] has bTag %u, expected %u",
                                   a[0], a[1], a[2], a[1], tag);
    if (!u->ep_intr) {
        *stb = a[2];
        return 0;
    }
    uint8_t n[1024];
    int len = u->intr_max < 2 ? 2 : u->intr_max > (int)sizeof n ? (int)sizeof n : u->intr_max;
    for (;;) {
        rc = xfer(t, LIBUSB_TRANSFER_TYPE_INTERRUPT, u->ep_intr, n, len, &got, deadline_ns,
                  "READ_STATUS_BYTE notification");
        if (rc == LMQ_ETIMEOUT || rc == LMQ_ECLOSED)
            return gave_up(t, rc, "READ_STATUS_BYTE: waiting for the interrupt-in notification");
        if (rc < 0)
            return rc;
        /* bNotify1 = 0x80 | bTag; anything else (a service request, a stale
         * answer) is not ours. */
        if (got >= 2 && n[0] == (0x80 | tag)) {
            *stb = n[1];
            return 0;
        }
        char hex[64];
        hex_bytes(hex, sizeof hex, n, (size_t)got, 8);
        lmq_log(t->log, LMQ_LOG_DEBUG, t->source, "READ_STATUS_BYTE: skipped interrupt-in notification [%s]", hex);
    }
}

/* ---- finding the device ---- */

typedef struct tmc_iface {
    uint8_t number, alt, protocol;
    uint8_t ep_out, ep_in, ep_intr;
    uint16_t intr_max;
} tmc_iface_t;

/* The first USBTMC interface (class 0xFE, subclass 3) of the device's
 * active configuration that has its two bulk endpoints. */
static bool find_tmc_iface(libusb_device *dev, tmc_iface_t *out)
{
    struct libusb_config_descriptor *cfg;
    if (libusb_get_active_config_descriptor(dev, &cfg) < 0 && libusb_get_config_descriptor(dev, 0, &cfg) < 0)
        return false;
    bool found = false;
    for (int i = 0; i < cfg->bNumInterfaces && !found; i++) {
        const struct libusb_interface *itf = &cfg->interface[i];
        for (int a = 0; a < itf->num_altsetting && !found; a++) {
            const struct libusb_interface_descriptor *d = &itf->altsetting[a];
            if (d->bInterfaceClass != LIBUSB_CLASS_APPLICATION || d->bInterfaceSubClass != 0x03)
                continue;
            tmc_iface_t f = {
                .number = d->bInterfaceNumber, .alt = d->bAlternateSetting, .protocol = d->bInterfaceProtocol};
            for (int e = 0; e < d->bNumEndpoints; e++) {
                const struct libusb_endpoint_descriptor *ep = &d->endpoint[e];
                int type = ep->bmAttributes & LIBUSB_TRANSFER_TYPE_MASK;
                bool in = ep->bEndpointAddress & LIBUSB_ENDPOINT_IN;
                if (type == LIBUSB_TRANSFER_TYPE_BULK && in && !f.ep_in)
                    f.ep_in = ep->bEndpointAddress;
                else if (type == LIBUSB_TRANSFER_TYPE_BULK && !in && !f.ep_out)
                    f.ep_out = ep->bEndpointAddress;
                else if (type == LIBUSB_TRANSFER_TYPE_INTERRUPT && in && !f.ep_intr) {
                    f.ep_intr = ep->bEndpointAddress;
                    f.intr_max = ep->wMaxPacketSize;
                }
            }
            if (f.ep_in && f.ep_out) {
                *out = f;
                found = true;
            }
        }
    }
    libusb_free_config_descriptor(cfg);
    return found;
}

static void get_string(libusb_device_handle *h, uint8_t index, char *buf, int size)
{
    buf[0] = '\0';
    if (index == 0)
        return;
    int n = libusb_get_string_descriptor_ascii(h, index, (unsigned char *)buf, size);
    buf[n > 0 ? (n < size ? n : size - 1) : 0] = '\0';
}

/* Visits every USBTMC device of ctx: the shared half of scan and of the
 * not-found message. */
static int each_tmc(libusb_context *ctx, lmq_port_fn fn, void *user, char *err, size_t errlen)
{
    libusb_device **list;
    ssize_t n = libusb_get_device_list(ctx, &list);
    if (n < 0) {
        if (err && errlen)
            snprintf(err, errlen, "usbtmc: listing USB devices: %s", libusb_strerror((int)n));
        return LMQ_EIO;
    }
    int count = 0;
    for (ssize_t i = 0; i < n; i++) {
        struct libusb_device_descriptor dd;
        tmc_iface_t f;
        if (libusb_get_device_descriptor(list[i], &dd) < 0 || !find_tmc_iface(list[i], &f))
            continue;
        char manufacturer[128] = "", product[128] = "", serial[128] = "";
        libusb_device_handle *h;
        int r = libusb_open(list[i], &h);
        if (r == 0) {
            get_string(h, dd.iManufacturer, manufacturer, sizeof manufacturer);
            get_string(h, dd.iProduct, product, sizeof product);
            get_string(h, dd.iSerialNumber, serial, sizeof serial);
            libusb_close(h);
        }
        char connection[160], description[400];
        if (serial[0])
            snprintf(connection, sizeof connection, "usbtmc:%04x:%04x:%s", dd.idVendor, dd.idProduct, serial);
        else
            snprintf(connection, sizeof connection, "usbtmc:%04x:%04x", dd.idVendor, dd.idProduct);
        snprintf(description, sizeof description, "USBTMC%s %s%s%s (bus %u device %u)%s",
                 f.protocol == 1 ? "/USB488" : "", manufacturer, manufacturer[0] && product[0] ? " " : "", product,
                 libusb_get_bus_number(list[i]), libusb_get_device_address(list[i]),
                 r == LIBUSB_ERROR_ACCESS ? " [no permission to open it]" : "");
        lmq_port_info_t info = {.connection = connection,
                                .kind = "usbtmc",
                                .description = description,
                                .vid = dd.idVendor,
                                .pid = dd.idProduct,
                                .manufacturer = manufacturer,
                                .product = product,
                                .serial = serial};
        fn(user, &info);
        count++;
    }
    libusb_free_device_list(list, 1);
    return count;
}

int lmq__transport_scan_usbtmc(lmq_port_fn fn, void *user, char *err, size_t errlen)
{
    libusb_context *ctx;
    int r = libusb_init(&ctx);
    if (r < 0) {
        if (err && errlen)
            snprintf(err, errlen, "usbtmc: libusb_init: %s", libusb_strerror(r));
        return LMQ_ESYS;
    }
    int n = each_tmc(ctx, fn, user, err, errlen);
    libusb_exit(ctx);
    return n;
}

typedef struct present {
    char text[300];
    int count;
} present_t;

static void note_present(void *user, const lmq_port_info_t *info)
{
    present_t *p = user;
    size_t o = strlen(p->text);
    if (o + 4 < sizeof p->text)
        snprintf(p->text + o, sizeof p->text - o, "%s%s", p->count ? ", " : "", info->connection);
    p->count++;
}

/* "VID:PID[:SERIAL]": 1-4 hex digits each; the serial (if any) is the rest. */
static int parse_rest(const char *rest, uint16_t *vid, uint16_t *pid, const char **serial)
{
    uint16_t v[2];
    const char *p = rest;
    for (int k = 0; k < 2; k++) {
        unsigned x = 0;
        int digits = 0;
        while (digits < 5 && ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F'))) {
            x = x * 16 + (unsigned)(*p <= '9' ? *p - '0' : (*p | 0x20) - 'a' + 10);
            p++;
            digits++;
        }
        if (digits == 0 || digits > 4)
            return -1;
        v[k] = (uint16_t)x;
        if (k == 0 && *p++ != ':')
            return -1;
    }
    *vid = v[0];
    *pid = v[1];
    *serial = NULL;
    if (*p == '\0')
        return 0;
    if (*p != ':' || p[1] == '\0')
        return -1;
    *serial = p + 1;
    return 0;
}

static int open_fail(lmq_transport_t *t, int r, uint16_t vid, uint16_t pid, libusb_device *dev)
{
    if (r == LIBUSB_ERROR_ACCESS)
        return lmq__transport_fail(
            t, LMQ_EPERM,
            "permission denied opening USB device %04x:%04x (bus %u device %u): add a udev rule such as "
            "SUBSYSTEM==\"usb\", ATTR{idVendor}==\"%04x\", ATTR{idProduct}==\"%04x\", MODE=\"0660\", "
            "GROUP=\"plugdev\" and add the user to the 'plugdev' group",
            vid, pid, libusb_get_bus_number(dev), libusb_get_device_address(dev), vid, pid);
    if (r == LIBUSB_ERROR_BUSY)
        return lmq__transport_fail(t, LMQ_EBUSY, "busy: another process holds USB device %04x:%04x", vid, pid);
    if (r == LIBUSB_ERROR_NO_DEVICE)
        return lmq__transport_fail(t, LMQ_ENOTFOUND, "USB device %04x:%04x went away while opening it", vid, pid);
    return lmq__transport_fail(t, LMQ_EIO, "opening USB device %04x:%04x: %s", vid, pid, libusb_strerror(r));
}

/* Finds and opens the device; records the interface to use in u. */
static int find_device(lmq_transport_t *t, uint16_t vid, uint16_t pid, const char *serial)
{
    usbtmc_t *u = t->impl;
    libusb_device **list;
    ssize_t n = libusb_get_device_list(u->ctx, &list);
    if (n < 0)
        return lmq__transport_fail(t, LMQ_EIO, "listing USB devices: %s", libusb_strerror((int)n));
    int rc = 1;         /* 1: keep looking */
    int open_rc = 0;    /* why the last match we could not open failed (recorded in t->err) */
    int matched = 0, no_tmc = 0;
    char serials[200] = "";
    for (ssize_t i = 0; i < n && rc == 1; i++) {
        struct libusb_device_descriptor dd;
        tmc_iface_t f;
        if (libusb_get_device_descriptor(list[i], &dd) < 0 || dd.idVendor != vid || dd.idProduct != pid)
            continue;
        matched++;
        if (!find_tmc_iface(list[i], &f)) {
            no_tmc++;
            continue;
        }
        libusb_device_handle *h;
        int r = libusb_open(list[i], &h);
        if (r < 0) {
            /* Another match may still open; this is the answer if none does. */
            open_rc = open_fail(t, r, vid, pid, list[i]);
            continue;
        }
        if (serial) {
            char s[128];
            get_string(h, dd.iSerialNumber, s, sizeof s);
            if (strcmp(s, serial) != 0) {
                size_t o = strlen(serials);
                if (o + 4 < sizeof serials)
                    snprintf(serials + o, sizeof serials - o, "%s'%s'", o ? ", " : "", s);
                libusb_close(h);
                continue;
            }
        }
        u->h = h;
        u->iface = f.number;
        u->alt = f.alt;
        u->protocol = f.protocol;
        u->ep_out = f.ep_out;
        u->ep_in = f.ep_in;
        u->ep_intr = f.ep_intr;
        u->intr_max = f.intr_max;
        rc = 0;
    }
    libusb_free_device_list(list, 1);
    if (rc != 1)
        return rc;
    if (open_rc < 0)
        return open_rc;
    char wanted[200];
    snprintf(wanted, sizeof wanted, "%04x:%04x%s%s", vid, pid, serial ? " with serial number " : "",
             serial ? serial : "");
    if (matched > no_tmc && serial)
        return lmq__transport_fail(t, LMQ_ENOTFOUND, "no USB device %s (%04x:%04x present with serial %s)", wanted,
                                   vid, pid, serials);
    if (no_tmc)
        return lmq__transport_fail(t, LMQ_ENOTFOUND, "USB device %04x:%04x has no USBTMC interface", vid, pid);
    present_t p = {.text = "", .count = 0};
    char err[100];
    each_tmc(u->ctx, note_present, &p, err, sizeof err);
    return lmq__transport_fail(t, LMQ_ENOTFOUND, "no USB device %s; USBTMC devices present: %s", wanted,
                               p.count ? p.text : "none");
}

static void usbtmc_close(lmq_transport_t *t)
{
    usbtmc_t *u = t->impl;
    if (!u)
        return;
    if (u->h) {
        if (u->claimed)
            libusb_release_interface(u->h, u->iface);
        /* Hand the interface back to the kernel driver we took it from
         * (usbtmc: /dev/usbtmcN comes back); one we did not detach stays
         * as it was. */
        if (u->detached) {
            int r = libusb_attach_kernel_driver(u->h, u->iface);
            if (r < 0 && r != LIBUSB_ERROR_NO_DEVICE)
                lmq_log(t->log, LMQ_LOG_WARN, t->source, "could not reattach the kernel driver: %s",
                        libusb_strerror(r));
        }
        libusb_close(u->h);
    }
    if (u->stuck)
        libusb_free_transfer(u->stuck);
    if (u->ctx)
        libusb_exit(u->ctx);
    free(u);
    t->impl = NULL;
}

static int usbtmc_open(lmq_transport_t *t, const char *rest, int64_t deadline_ns)
{
    (void)deadline_ns; /* opening is a few descriptor reads, each bounded by libusb */
    uint16_t vid, pid;
    const char *serial;
    if (parse_rest(rest, &vid, &pid, &serial) < 0)
        return lmq__transport_fail(t, LMQ_EARG,
                                   "malformed: expected usbtmc:VID:PID or usbtmc:VID:PID:SERIAL with VID and PID "
                                   "1 to 4 hex digits (e.g. usbtmc:0957:1798:MY12345)");
    usbtmc_t *u = calloc(1, sizeof *u);
    if (!u)
        return lmq__transport_fail(t, LMQ_EMEM, "out of memory");
    t->impl = u;
    /* Our own context: no state shared with other transports or libraries. */
    int r = libusb_init(&u->ctx);
    if (r < 0) {
        u->ctx = NULL;
        return lmq__transport_fail(t, LMQ_ESYS, "libusb_init: %s", libusb_strerror(r));
    }
    int rc = find_device(t, vid, pid, serial);
    if (rc < 0)
        return rc;
    r = libusb_kernel_driver_active(u->h, u->iface);
    if (r == 1) {
        r = libusb_detach_kernel_driver(u->h, u->iface);
        if (r < 0)
            return r == LIBUSB_ERROR_ACCESS ? open_fail(t, r, vid, pid, libusb_get_device(u->h))
                                            : usb_status(t, r, "detaching the kernel driver");
        u->detached = true;
    }
    r = libusb_claim_interface(u->h, u->iface);
    if (r == LIBUSB_ERROR_BUSY)
        return lmq__transport_fail(t, LMQ_EBUSY, "busy: another process or driver holds interface %u of %04x:%04x",
                                   u->iface, vid, pid);
    if (r < 0)
        return r == LIBUSB_ERROR_ACCESS ? open_fail(t, r, vid, pid, libusb_get_device(u->h))
                                        : usb_status(t, r, "claiming the USBTMC interface");
    u->claimed = true;
    if (u->alt) {
        r = libusb_set_interface_alt_setting(u->h, u->iface, u->alt);
        if (r < 0)
            return usb_status(t, r, "selecting the USBTMC alternate setting");
    }
    lmq_log(t->log, LMQ_LOG_DEBUG, t->source,
            "USBTMC interface %u (protocol %u): bulk-out 0x%02x, bulk-in 0x%02x, interrupt-in 0x%02x", u->iface,
            u->protocol, u->ep_out, u->ep_in, u->ep_intr);
    return 0;
}

/* Never blocks: the kernel answers any usbfs ioctl on an unplugged device
 * with ENODEV at once, without USB traffic, and GETDRIVER (behind
 * libusb_kernel_driver_active) is the most harmless one to ask. */
static int usbtmc_check(lmq_transport_t *t)
{
    usbtmc_t *u = t->impl;
    if (libusb_kernel_driver_active(u->h, u->iface) == LIBUSB_ERROR_NO_DEVICE)
        return lmq__transport_fail(t, LMQ_EIO, "the device is gone (unplugged)");
    return 0;
}

const lmq__transport_ops_t lmq__transport_usbtmc = {
    .kind = "usbtmc",
    .open = usbtmc_open,
    .close = usbtmc_close,
    .write = usbtmc_write,
    .read = usbtmc_read,
    .clear = usbtmc_clear,
    .status_byte = usbtmc_status_byte,
    .check = usbtmc_check,
};
