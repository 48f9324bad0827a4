/* The USBTMC transport against a USB488 instrument emulated at usbfs by
 * umockdev: the unchanged libusb runs against the ioctl handler below, which
 * plays the instrument and checks every bulk-out header it receives.
 *
 * The test links libumockdev-preload (see tests/CMakeLists.txt), so every
 * process of it runs with the preload active. The handler runs on
 * umockdev's thread while libusb waits in ioctl(): it never blocks, and its
 * state is shared with the test under a mutex. */
#include <check.h>
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/ioctl.h> /* usbdevice_fs.h uses _IOR without it */
#include <linux/usbdevice_fs.h>
#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <time.h>
#include <umockdev.h>
#include <unistd.h>
#include "labmq/labmq.h"
#include "labmq/transport.h"
#include "transport_internal.h"
#include "transport_usbtmc.h"

#define VID 0x0957
#define PID 0x1798
#define SERIAL "MY12345"
#define IDN "LABMQ,MOCK488," SERIAL ",1.0"
#define EP_OUT 0x02
#define EP_IN 0x81
#define EP_INTR 0x83
#define NODE "/dev/bus/usb/001/002"

/* ---- the emulated instrument ---- */

typedef struct urb {
    UMockdevIoctlData *data; /* the struct usbdevfs_urb (our copy; written back on reap) */
    UMockdevIoctlData *buf;  /* its buffer */
} urb_t;

typedef struct inst {
    pthread_mutex_t mu;
    /* behaviour, set by the test */
    bool has_intr;     /* the interface has an interrupt-in endpoint */
    bool silent;       /* never answer a REQUEST_DEV_DEP_MSG_IN */
    bool wrong_tag;    /* answer with the wrong bTag */
    bool garbage;      /* answer with a bad MsgID */
    bool no_eom;       /* never set EOM */
    bool stall_out;    /* bulk-out transfers never complete */
    bool unplugged;    /* every submit fails with ENODEV */
    bool unplug_on_request; /* a REQUEST_DEV_DEP_MSG_IN unplugs it: the bulk-in transfer dies */
    bool dying;             /* the next bulk-in transfer completes with ENODEV */
    bool claim_busy;   /* CLAIMINTERFACE fails with EBUSY */
    bool kernel_driver; /* the kernel's usbtmc driver holds the interface */
    bool srq_first;    /* a service-request notification precedes the status byte */
    uint32_t split;    /* most payload bytes per bulk-in transfer; 0 = as asked */
    uint8_t stb;
    /* what it saw */
    uint8_t last_tag; /* 0: none since the interface was claimed */
    int tag_errors;
    char tag_error[160];
    int wraps;           /* bTag 255 followed by 1 */
    int out_transfers;   /* DEV_DEP_MSG_OUT transfers */
    int out_eoms;        /* of them with EOM */
    int messages;        /* complete device-dependent messages */
    size_t last_msg_len;
    int requests;        /* REQUEST_DEV_DEP_MSG_IN */
    uint32_t last_req_size;
    int init_abort_in, check_abort_in, init_abort_out, check_abort_out, init_clear, check_clear, clear_halts;
    int rsb, rsb_bad_tags, rsb_wraps;
    uint8_t last_rsb_tag;
    uint8_t abort_in_tag;
    int claims, releases;
    int disconnects, connects; /* kernel driver detached / reattached */
    /* device state */
    GByteArray *cmd;   /* message being received */
    GByteArray *reply; /* queued output */
    bool req_pending;
    uint8_t req_tag;
    uint32_t req_max;
    bool zlp_pending; /* after INITIATE_ABORT_BULK_IN: end the transfer with a short packet */
    int notify_tag;   /* -1: none; else the READ_STATUS_BYTE answer due on interrupt-in */
    bool srq_pending;
    int clear_polls;  /* CHECK_CLEAR_STATUS answers PENDING this many more times */
    GQueue bulk_in, intr_in, held_out; /* urb_t* waiting for the device */
    GQueue done;                       /* urb_t* to reap: status/actual already set */
    GQueue discarded;
} inst_t;

static void urb_free(urb_t *u)
{
    g_object_unref(u->data);
    g_object_unref(u->buf);
    g_free(u);
}

static struct usbdevfs_urb *urb_of(urb_t *u) { return (struct usbdevfs_urb *)u->data->data; }

static void finish(inst_t *in, urb_t *u, int status, int actual)
{
    urb_of(u)->status = status;
    urb_of(u)->actual_length = actual;
    g_queue_push_tail(&in->done, u);
}

static void set_reply(inst_t *in, const void *data, size_t len)
{
    g_byte_array_set_size(in->reply, 0);
    g_byte_array_append(in->reply, data, (guint)len);
}

/* A complete device-dependent message arrived. */
static void command(inst_t *in)
{
    char text[64] = "";
    size_t n = in->cmd->len < sizeof text - 1 ? in->cmd->len : sizeof text - 1;
    memcpy(text, in->cmd->data, n);
    text[n] = '\0';
    text[strcspn(text, "\n")] = '\0';
    in->messages++;
    size_t previous = in->last_msg_len;
    in->last_msg_len = in->cmd->len;
    unsigned count;
    if (strcmp(text, "*IDN?") == 0) {
        set_reply(in, IDN "\n", strlen(IDN) + 1);
    } else if (sscanf(text, "LONG? %u", &count) == 1) {
        /* count pattern bytes and "\n" */
        g_byte_array_set_size(in->reply, count + 1);
        for (unsigned i = 0; i < count; i++)
            in->reply->data[i] = (guint8)('A' + i % 26);
        in->reply->data[count] = '\n';
    } else if (strcmp(text, "NOTERM?") == 0) {
        set_reply(in, "ABC", 3);
    } else if (strcmp(text, "LEN?") == 0) {
        char r[32];
        int k = snprintf(r, sizeof r, "%zu\n", previous);
        set_reply(in, r, (size_t)k);
    }
    g_byte_array_set_size(in->cmd, 0);
}

static void check_tag(inst_t *in, const uint8_t *h)
{
    uint8_t want = (uint8_t)(in->last_tag % 255 + 1);
    if (in->last_tag == 0 && h[1] != 0)
        want = h[1]; /* the first after a claim may be any non-zero bTag */
    if (h[1] == 0 || h[1] != want || (uint8_t)(h[1] ^ h[2]) != 0xff) {
        if (!in->tag_errors)
            snprintf(in->tag_error, sizeof in->tag_error, "bTag %u (inverse 0x%02x) after %u", h[1], h[2],
                     in->last_tag);
        in->tag_errors++;
    }
    if (in->last_tag == 255 && h[1] == 1)
        in->wraps++;
    in->last_tag = h[1];
}

/* A bulk-out transfer: one USBTMC message header and its payload. */
static void bulk_out(inst_t *in, const uint8_t *b, int len)
{
    if (len < 12 || len % 4 != 0) {
        snprintf(in->tag_error, sizeof in->tag_error, "bulk-out transfer of %d bytes", len);
        in->tag_errors++;
        return;
    }
    check_tag(in, b);
    uint32_t size = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 | (uint32_t)b[7] << 24;
    if (b[0] == LMQ__USBTMC_DEV_DEP_MSG_OUT) {
        if ((12 + size + 3) / 4 * 4 != (uint32_t)len) {
            snprintf(in->tag_error, sizeof in->tag_error, "DEV_DEP_MSG_OUT of %u bytes in a %d-byte transfer", size,
                     len);
            in->tag_errors++;
            return;
        }
        in->out_transfers++;
        g_byte_array_append(in->cmd, b + 12, size);
        if (b[8] & 1) {
            in->out_eoms++;
            command(in);
        }
    } else if (b[0] == LMQ__USBTMC_REQUEST_DEV_DEP_MSG_IN) {
        in->requests++;
        in->last_req_size = size;
        /* Like a real device, it answers the oldest request it has not
         * answered: a host that gave up without aborting gets that bTag. */
        if (!in->req_pending) {
            in->req_pending = true;
            in->req_tag = b[1];
            in->req_max = size;
        }
        if (in->unplug_on_request)
            in->dying = true;
    } else {
        snprintf(in->tag_error, sizeof in->tag_error, "MsgID %u on bulk-out", b[0]);
        in->tag_errors++;
    }
}

/* Completes waiting IN transfers that the device has something for. */
static void serve(inst_t *in)
{
    while (!g_queue_is_empty(&in->bulk_in)) {
        urb_t *u = g_queue_peek_head(&in->bulk_in);
        uint8_t *b = u->buf->data;
        if (in->dying) {
            g_queue_pop_head(&in->bulk_in);
            finish(in, u, -ENODEV, 0);
            in->unplugged = true;
            continue;
        }
        if (in->zlp_pending) {
            g_queue_pop_head(&in->bulk_in);
            in->zlp_pending = false;
            finish(in, u, 0, 0);
            continue;
        }
        if (!in->req_pending || in->silent || in->reply->len == 0)
            break;
        g_queue_pop_head(&in->bulk_in);
        uint32_t n = in->reply->len < in->req_max ? in->reply->len : in->req_max;
        if (in->split && n > in->split)
            n = in->split;
        bool eom = n == in->reply->len && !in->no_eom;
        uint8_t tag = in->wrong_tag ? (uint8_t)(in->req_tag + 1) : in->req_tag;
        b[0] = in->garbage ? 0x07 : LMQ__USBTMC_DEV_DEP_MSG_IN;
        b[1] = tag;
        b[2] = (uint8_t)~tag;
        b[3] = 0;
        b[4] = (uint8_t)n;
        b[5] = (uint8_t)(n >> 8);
        b[6] = (uint8_t)(n >> 16);
        b[7] = (uint8_t)(n >> 24);
        b[8] = eom ? 1 : 0;
        b[9] = b[10] = b[11] = 0;
        memcpy(b + 12, in->reply->data, n);
        int total = (int)((12 + n + 3) / 4 * 4);
        memset(b + 12 + n, 0xEE, (size_t)total - 12 - n); /* padding the host must skip */
        g_byte_array_remove_range(in->reply, 0, n);
        in->req_pending = false;
        finish(in, u, 0, total);
    }
    while (!g_queue_is_empty(&in->intr_in) && (in->notify_tag >= 0 || in->srq_pending)) {
        urb_t *u = g_queue_pop_head(&in->intr_in);
        uint8_t *b = u->buf->data;
        if (in->srq_pending) {
            b[0] = 0x81; /* SRQ notification: not an answer */
            b[1] = 0x40;
            in->srq_pending = false;
        } else {
            b[0] = (uint8_t)(0x80 | in->notify_tag);
            b[1] = in->stb;
            in->notify_tag = -1;
        }
        finish(in, u, 0, 2);
    }
}

static int str_desc(uint8_t index, uint8_t *out)
{
    static const char *const strings[] = {NULL, "Labmq Instruments", "MOCK488", SERIAL};
    if (index == 0) {
        memcpy(out, "\x04\x03\x09\x04", 4);
        return 4;
    }
    if (index >= 4)
        return -1;
    size_t n = strlen(strings[index]);
    out[0] = (uint8_t)(2 + 2 * n);
    out[1] = 3;
    for (size_t i = 0; i < n; i++) {
        out[2 + 2 * i] = (uint8_t)strings[index][i];
        out[3 + 2 * i] = 0;
    }
    return (int)(2 + 2 * n);
}

/* A control transfer: the setup packet and room for the answer after it.
 * Returns the answer's length, or -1 to stall. */
static int control(inst_t *in, uint8_t *b, int len)
{
    uint8_t type = b[0], req = b[1];
    uint16_t value = (uint16_t)(b[2] | b[3] << 8), wlen = (uint16_t)(b[6] | b[7] << 8);
    uint8_t *a = b + 8;
    uint8_t ans[64];
    int n = -1;
    if (wlen > len - 8)
        return -1;
    if (type == 0x80 && req == 6 && value >> 8 == 3) {
        uint8_t s[256];
        int k = str_desc((uint8_t)value, s);
        if (k < 0)
            return -1;
        memcpy(a, s, (size_t)(k < wlen ? k : wlen));
        return k < wlen ? k : wlen;
    }
    if (type == 0xA2 && req == LMQ__USBTMC_INITIATE_ABORT_BULK_IN) {
        in->init_abort_in++;
        in->abort_in_tag = (uint8_t)value;
        if (in->req_pending && (uint8_t)value == in->req_tag) {
            in->req_pending = false;
            g_byte_array_set_size(in->reply, 0);
            in->zlp_pending = true;
            ans[0] = LMQ__USBTMC_STATUS_SUCCESS;
        } else {
            ans[0] = LMQ__USBTMC_STATUS_FAILED;
        }
        ans[1] = (uint8_t)value;
        n = 2;
    } else if (type == 0xA2 && req == LMQ__USBTMC_CHECK_ABORT_BULK_IN_STATUS) {
        in->check_abort_in++;
        memset(ans, 0, 8);
        ans[0] = in->zlp_pending ? LMQ__USBTMC_STATUS_PENDING : LMQ__USBTMC_STATUS_SUCCESS;
        n = 8;
    } else if (type == 0xA2 && req == LMQ__USBTMC_INITIATE_ABORT_BULK_OUT) {
        in->init_abort_out++;
        ans[0] = LMQ__USBTMC_STATUS_SUCCESS;
        ans[1] = (uint8_t)value;
        n = 2;
    } else if (type == 0xA2 && req == LMQ__USBTMC_CHECK_ABORT_BULK_OUT_STATUS) {
        in->check_abort_out++;
        memset(ans, 0, 8);
        ans[0] = LMQ__USBTMC_STATUS_SUCCESS;
        n = 8;
    } else if (type == 0xA1 && req == LMQ__USBTMC_INITIATE_CLEAR) {
        in->init_clear++;
        g_byte_array_set_size(in->cmd, 0);
        g_byte_array_set_size(in->reply, 0);
        in->req_pending = false;
        in->clear_polls = 1;
        ans[0] = LMQ__USBTMC_STATUS_SUCCESS;
        n = 1;
    } else if (type == 0xA1 && req == LMQ__USBTMC_CHECK_CLEAR_STATUS) {
        in->check_clear++;
        ans[0] = in->clear_polls > 0 ? LMQ__USBTMC_STATUS_PENDING : LMQ__USBTMC_STATUS_SUCCESS;
        ans[1] = 0;
        if (in->clear_polls > 0)
            in->clear_polls--;
        n = 2;
    } else if (type == 0xA1 && req == LMQ__USB488_READ_STATUS_BYTE) {
        uint8_t tag = (uint8_t)value;
        in->rsb++;
        if (tag < 2 || tag > 127)
            in->rsb_bad_tags++;
        if (in->last_rsb_tag == 127 && tag == 2)
            in->rsb_wraps++;
        in->last_rsb_tag = tag;
        ans[0] = LMQ__USBTMC_STATUS_SUCCESS;
        ans[1] = tag;
        if (in->has_intr) {
            ans[2] = 0;
            in->notify_tag = tag;
            in->srq_pending = in->srq_first;
        } else {
            ans[2] = in->stb;
        }
        n = 3;
    }
    if (n < 0)
        return -1;
    n = n < wlen ? n : wlen;
    memcpy(a, ans, (size_t)n);
    return n;
}

static gboolean on_ioctl(UMockdevIoctlBase *base, UMockdevIoctlClient *client, gpointer user)
{
    (void)base;
    inst_t *in = user;
    gulong request = umockdev_ioctl_client_get_request(client);
    UMockdevIoctlData *arg = umockdev_ioctl_client_get_arg(client);
    long res = 0;
    int err = 0;
    pthread_mutex_lock(&in->mu);
    /* The kernel answers every ioctl on the node of an unplugged device with
     * ENODEV, except reaping what was in flight. */
    if (in->unplugged && request != USBDEVFS_REAPURB && request != USBDEVFS_REAPURBNDELAY &&
        request != USBDEVFS_DISCARDURB) {
        pthread_mutex_unlock(&in->mu);
        umockdev_ioctl_client_complete(client, -1, ENODEV);
        return TRUE;
    }
    switch (request) {
    case USBDEVFS_GET_CAPABILITIES: {
        UMockdevIoctlData *d = umockdev_ioctl_data_resolve(arg, 0, sizeof(guint32), NULL);
        *(guint32 *)d->data = USBDEVFS_CAP_BULK_CONTINUATION | USBDEVFS_CAP_NO_PACKET_SIZE_LIM |
                              USBDEVFS_CAP_REAP_AFTER_DISCONNECT | USBDEVFS_CAP_ZERO_PACKET;
        g_object_unref(d);
        break;
    }
    case USBDEVFS_CLAIMINTERFACE:
        if (in->claim_busy || in->kernel_driver) {
            res = -1;
            err = EBUSY;
        } else {
            in->claims++;
            in->last_tag = 0;
        }
        break;
    case USBDEVFS_RELEASEINTERFACE:
        in->releases++;
        break;
    case USBDEVFS_CLEAR_HALT:
        in->clear_halts++;
        break;
    case USBDEVFS_SETINTERFACE:
    case USBDEVFS_SETCONFIGURATION:
    case USBDEVFS_RESET:
    case USBDEVFS_RESETEP:
    case USBDEVFS_DISCONNECT_CLAIM:
        break;
    case USBDEVFS_GETDRIVER:
        if (in->kernel_driver) {
            UMockdevIoctlData *d = umockdev_ioctl_data_resolve(arg, 0, sizeof(struct usbdevfs_getdriver), NULL);
            snprintf(((struct usbdevfs_getdriver *)d->data)->driver, USBDEVFS_MAXDRIVERNAME + 1, "usbtmc");
            g_object_unref(d);
        } else {
            res = -1;
            err = ENODATA;
        }
        break;
    case USBDEVFS_IOCTL: {
        UMockdevIoctlData *d = umockdev_ioctl_data_resolve(arg, 0, sizeof(struct usbdevfs_ioctl), NULL);
        int code = ((struct usbdevfs_ioctl *)d->data)->ioctl_code;
        g_object_unref(d);
        if (code == (int)USBDEVFS_DISCONNECT && in->kernel_driver) {
            in->kernel_driver = false;
            in->disconnects++;
        } else if (code == (int)USBDEVFS_CONNECT && !in->kernel_driver) {
            in->kernel_driver = true;
            in->connects++;
            res = 1; /* the kernel's device_attach(): 1 = a driver was bound */
        } else {
            res = -1;
            err = ENODATA;
        }
        break;
    }
    case USBDEVFS_SUBMITURB: {
        urb_t *u = g_new0(urb_t, 1);
        u->data = umockdev_ioctl_data_resolve(arg, 0, sizeof(struct usbdevfs_urb), NULL);
        struct usbdevfs_urb *urb = urb_of(u);
        u->buf = umockdev_ioctl_data_resolve(u->data, offsetof(struct usbdevfs_urb, buffer),
                                             (gsize)urb->buffer_length, NULL);
        if (urb->type == USBDEVFS_URB_TYPE_CONTROL) {
            int n = control(in, u->buf->data, urb->buffer_length);
            finish(in, u, n < 0 ? -EPIPE : 0, n < 0 ? 0 : n);
        } else if (urb->type == USBDEVFS_URB_TYPE_BULK && urb->endpoint == EP_OUT) {
            if (in->stall_out) {
                g_queue_push_tail(&in->held_out, u);
            } else {
                bulk_out(in, u->buf->data, urb->buffer_length);
                finish(in, u, 0, urb->buffer_length);
            }
        } else if (urb->type == USBDEVFS_URB_TYPE_BULK && urb->endpoint == EP_IN) {
            g_queue_push_tail(&in->bulk_in, u);
        } else if (urb->type == USBDEVFS_URB_TYPE_INTERRUPT && urb->endpoint == EP_INTR && in->has_intr) {
            g_queue_push_tail(&in->intr_in, u);
        } else {
            urb_free(u);
            res = -1;
            err = EINVAL;
            break;
        }
        serve(in);
        break;
    }
    case USBDEVFS_REAPURB:
    case USBDEVFS_REAPURBNDELAY: {
        urb_t *u = g_queue_pop_head(&in->discarded);
        if (!u)
            u = g_queue_pop_head(&in->done);
        if (!u) {
            res = -1;
            err = EAGAIN;
            break;
        }
        UMockdevIoctlData *ptr = umockdev_ioctl_data_resolve(arg, 0, sizeof(gpointer), NULL);
        umockdev_ioctl_data_set_ptr(ptr, 0, u->data);
        g_object_unref(ptr);
        urb_free(u);
        break;
    }
    case USBDEVFS_DISCARDURB: {
        gulong addr = (gulong) * (void **)arg->data;
        GQueue *qs[] = {&in->bulk_in, &in->intr_in, &in->held_out};
        res = -1;
        err = EINVAL;
        for (size_t q = 0; q < G_N_ELEMENTS(qs) && res < 0; q++) {
            for (GList *l = qs[q]->head; l; l = l->next) {
                urb_t *u = l->data;
                if (u->data->client_addr == addr) {
                    g_queue_delete_link(qs[q], l);
                    urb_of(u)->status = -ENOENT;
                    urb_of(u)->actual_length = 0;
                    g_queue_push_tail(&in->discarded, u);
                    res = 0;
                    err = 0;
                    break;
                }
            }
        }
        break;
    }
    default:
        pthread_mutex_unlock(&in->mu);
        return FALSE; /* ENOTTY */
    }
    pthread_mutex_unlock(&in->mu);
    umockdev_ioctl_client_complete(client, res, err);
    return TRUE;
}

/* ---- testbed ---- */

typedef struct mock {
    UMockdevTestbed *tb;
    UMockdevIoctlBase *handler;
    inst_t in;
} mock_t;

static void hex_append(GString *s, const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        g_string_append_printf(s, "%02x", b[i]);
}

static void mock_start(mock_t *m, bool with_intr)
{
    memset(m, 0, sizeof *m);
    inst_t *in = &m->in;
    pthread_mutex_init(&in->mu, NULL);
    in->has_intr = with_intr;
    in->cmd = g_byte_array_new();
    in->reply = g_byte_array_new();
    in->notify_tag = -1;
    g_queue_init(&in->bulk_in);
    g_queue_init(&in->intr_in);
    g_queue_init(&in->held_out);
    g_queue_init(&in->done);
    g_queue_init(&in->discarded);

    m->tb = umockdev_testbed_new();
    ck_assert_ptr_nonnull(m->tb);
    m->handler = umockdev_ioctl_base_new();
    g_signal_connect(m->handler, "handle-ioctl", G_CALLBACK(on_ioctl), in);
    GError *error = NULL;
    ck_assert_msg(umockdev_testbed_attach_ioctl(m->tb, NODE, m->handler, &error), "attach_ioctl: %s",
                  error ? error->message : "?");

    const uint8_t dev[] = {18, 1, 0x00, 0x02, 0, 0, 0, 64, VID & 0xff, VID >> 8, PID & 0xff, PID >> 8, 0x00, 0x01,
                           1, 2, 3, 1};
    uint8_t nep = with_intr ? 3 : 2;
    uint8_t total = (uint8_t)(9 + 9 + 7 * nep);
    const uint8_t cfg[] = {9, 2, total, 0, 1, 1, 0, 0x80, 50,
                           /* interface 0: class 0xFE (application), subclass 3 (USBTMC), protocol 1 (USB488) */
                           9, 4, 0, 0, nep, 0xFE, 0x03, 0x01, 0,
                           7, 5, EP_OUT, 2, 0x00, 0x02, 0,
                           7, 5, EP_IN, 2, 0x00, 0x02, 0,
                           7, 5, EP_INTR, 3, 8, 0, 10};
    GString *rec = g_string_new("P: /devices/labmq_usbtmc_mock/usb1/1-1\n"
                                "N: bus/usb/001/002\n"
                                "E: SUBSYSTEM=usb\n"
                                "E: DEVTYPE=usb_device\n"
                                "E: DEVNAME=" NODE "\n"
                                "E: BUSNUM=001\n"
                                "E: DEVNUM=002\n"
                                "A: busnum=1\\n\n"
                                "A: devnum=2\\n\n"
                                "A: speed=480\\n\n"
                                "A: bConfigurationValue=1\\n\n"
                                "H: descriptors=");
    hex_append(rec, dev, sizeof dev);
    hex_append(rec, cfg, total);
    g_string_append(rec, "\n");
    ck_assert_msg(umockdev_testbed_add_from_string(m->tb, rec->str, &error), "add_from_string: %s",
                  error ? error->message : "?");
    g_string_free(rec, TRUE);
    /* With the preload active /sys is the testbed's; without it the tests
     * would talk to the machine's own USB devices. */
    ck_assert_msg(g_file_test("/sys/devices/labmq_usbtmc_mock/usb1/1-1/descriptors", G_FILE_TEST_EXISTS),
                  "the umockdev preload is not active (link with -lumockdev-preload)");
}

static void drop_queue(GQueue *q)
{
    urb_t *u;
    while ((u = g_queue_pop_head(q)))
        urb_free(u);
}

static void mock_stop(mock_t *m)
{
    g_clear_object(&m->tb); /* removes /tmp/umockdev.XXXXXX */
    g_clear_object(&m->handler);
    inst_t *in = &m->in;
    drop_queue(&in->bulk_in);
    drop_queue(&in->intr_in);
    drop_queue(&in->held_out);
    drop_queue(&in->done);
    drop_queue(&in->discarded);
    g_byte_array_unref(in->cmd);
    g_byte_array_unref(in->reply);
    pthread_mutex_destroy(&in->mu);
}

#define LOCKED(m, stmt)                      \
    do {                                     \
        pthread_mutex_lock(&(m)->in.mu);     \
        stmt;                                \
        pthread_mutex_unlock(&(m)->in.mu);   \
    } while (0)

static int64_t in_ms(int ms) { return lmq_clock_mono_ns() + (int64_t)ms * 1000000; }

static lmq_transport_t *open_ok(const char *connection)
{
    lmq_transport_t *t = NULL;
    char err[512] = "";
    int rc = lmq_transport_open(&t, connection, NULL, err, sizeof err);
    ck_assert_msg(rc == 0, "open %s: %d %s", connection, rc, err);
    ck_assert_ptr_nonnull(t);
    return t;
}

static void query(lmq_transport_t *t, const char *q, char *buf, size_t size)
{
    int rc = lmq_transport_write(t, q, strlen(q), in_ms(2000));
    ck_assert_msg(rc == 0, "write %s: %d %s", q, rc, lmq_transport_last_error(t));
    rc = lmq_transport_read_line(t, buf, size, NULL, "\n", in_ms(2000));
    ck_assert_msg(rc == 0, "read after %s: %d %s", q, rc, lmq_transport_last_error(t));
}

/* ---- tests ---- */

START_TEST(header_parser)
{
    uint8_t h[16] = {2, 5, 0xfa, 0, 3, 0, 0, 0, 1, 0, 0, 0, 'a', 'b', 'c', 0};
    uint32_t size;
    bool eom;
    char err[200];
    ck_assert_int_eq(lmq__usbtmc_parse_in_header(h, 16, 5, &size, &eom, err, sizeof err), 0);
    ck_assert_uint_eq(size, 3);
    ck_assert(eom);
    ck_assert_int_eq(lmq__usbtmc_parse_in_header(h, 15, 5, &size, &eom, err, sizeof err), 0);
    ck_assert_int_eq(lmq__usbtmc_parse_in_header(h, 14, 5, &size, &eom, err, sizeof err), LMQ_EPROTO);
    ck_assert_msg(strstr(err, "TransferSize 3") && strstr(err, "[02 05 fa 00 03 00 00 00 01 00 00 00 ...]"), "%s", err);
    ck_assert_int_eq(lmq__usbtmc_parse_in_header(h, 16, 6, &size, &eom, err, sizeof err), LMQ_EPROTO);
    ck_assert_msg(strstr(err, "bTag 5, expected 6"), "%s", err);
    ck_assert_int_eq(lmq__usbtmc_parse_in_header(h, 5, 5, &size, &eom, err, sizeof err), LMQ_EPROTO);
    ck_assert_msg(strstr(err, "5 bytes") && strstr(err, "[02 05 fa 00 03]"), "%s", err);
    ck_assert_int_eq(lmq__usbtmc_parse_in_header(h, 0, 5, &size, &eom, err, sizeof err), LMQ_EPROTO);
    h[2] = 0xfb;
    ck_assert_int_eq(lmq__usbtmc_parse_in_header(h, 16, 5, &size, &eom, err, sizeof err), LMQ_EPROTO);
    ck_assert_msg(strstr(err, "bTagInverse 0xfb"), "%s", err);
    h[2] = 0xfa;
    h[0] = 1;
    ck_assert_int_eq(lmq__usbtmc_parse_in_header(h, 16, 5, &size, &eom, err, sizeof err), LMQ_EPROTO);
    ck_assert_msg(strstr(err, "MsgID 1"), "%s", err);
    h[0] = 2;
    h[7] = 0xff; /* TransferSize near 4 GiB must not wrap anything */
    ck_assert_int_eq(lmq__usbtmc_parse_in_header(h, 16, 5, &size, &eom, err, sizeof err), LMQ_EPROTO);
}
END_TEST

START_TEST(permission_denied_names_the_fix)
{
    mock_t m;
    mock_start(&m, true);
    /* A node we may not open (as one without a udev rule is for a user).
     * Root passes any permission check, so then the open below runs with
     * another filesystem uid (this thread only; the test process is forked). */
    char *root = umockdev_testbed_get_root_dir(m.tb);
    char *node = g_strconcat(root, NODE, NULL);
    ck_assert_int_eq(chmod(node, 0), 0);
    /* mkdtemp made it (and main's run directory around it) 0700; the
     * emulated udev monitor binds its socket in it. */
    char *run = g_path_get_dirname(root);
    ck_assert_int_eq(chmod(run, 0755), 0);
    g_free(run);
    ck_assert_int_eq(chmod(root, 0777), 0);
    /* The preload talks to the ioctl handler through this socket. */
    char *sock = g_strconcat(root, "/ioctl", NODE, NULL);
    ck_assert_int_eq(chmod(sock, 0777), 0);
    g_free(sock);
    bool as_root = geteuid() == 0;
    if (as_root)
        setfsuid(65534);
    lmq_transport_t *t = NULL;
    char err[512];
    int rc = lmq_transport_open(&t, "usbtmc:0957:1798", NULL, err, sizeof err);
    if (as_root)
        setfsuid(0);
    ck_assert_msg(rc == LMQ_EPERM, "%d %s", rc, err);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(err, "permission denied") && strstr(err, "udev rule") &&
                      strstr(err, "ATTR{idVendor}==\"0957\"") && strstr(err, "plugdev"),
                  "%s", err);
    g_free(node);
    g_free(root);
    mock_stop(&m);
}
END_TEST

static void count_warning(void *user, lmq_log_level_t level, const char *source, const char *msg)
{
    (void)source;
    if (level <= LMQ_LOG_WARN) {
        fprintf(stderr, "%s\n", msg);
        ++*(int *)user;
    }
}

START_TEST(kernel_driver_detached_and_given_back)
{
    mock_t m;
    mock_start(&m, true);
    /* Nothing bound: nothing detached, nothing attached at close. */
    lmq_transport_t *t = open_ok("usbtmc:0957:1798");
    lmq_transport_close(&t);
    LOCKED(&m, {
        ck_assert_int_eq(m.in.disconnects, 0);
        ck_assert_int_eq(m.in.connects, 0);
        m.in.kernel_driver = true;
    });
    /* The kernel's usbtmc driver bound: detached to claim, reattached at
     * close, with no complaint in the log. */
    int warnings = 0;
    lmq_log_t *log = lmq_log_new(LMQ_LOG_WARN, count_warning, &warnings);
    lmq_transport_opts_t opts = {.log = log};
    char err[256];
    ck_assert_int_eq(lmq_transport_open(&t, "usbtmc:0957:1798", &opts, err, sizeof err), 0);
    char buf[128];
    query(t, "*IDN?\n", buf, sizeof buf);
    ck_assert_str_eq(buf, IDN);
    LOCKED(&m, {
        ck_assert_int_eq(m.in.disconnects, 1);
        ck_assert(!m.in.kernel_driver);
    });
    lmq_transport_close(&t);
    ck_assert_int_eq(warnings, 0);
    lmq_log_destroy(&log);
    LOCKED(&m, {
        ck_assert_int_eq(m.in.connects, 1);
        ck_assert(m.in.kernel_driver);
        ck_assert_int_eq(m.in.claims, 2);
        ck_assert_int_eq(m.in.releases, 2);
    });
    mock_stop(&m);
}
END_TEST

static void collect(void *user, const lmq_port_info_t *info)
{
    GPtrArray *a = user;
    g_ptr_array_add(a, g_strdup_printf("%s|%s|%04x:%04x|%s|%s|%s|%s", info->connection, info->kind, info->vid,
                                       info->pid, info->manufacturer, info->product, info->serial,
                                       info->description));
}

START_TEST(scan_lists_the_instrument)
{
    mock_t m;
    mock_start(&m, true);
    GPtrArray *found = g_ptr_array_new_with_free_func(g_free);
    char err[256] = "";
    /* The USBTMC half of lmq_transport_scan (the testbed has no sysfs tty
     * class, which the serial half needs). */
    int n = lmq__transport_scan_usbtmc(collect, found, err, sizeof err);
    ck_assert_msg(n == 1, "scan: %d %s", n, err);
    const char *line = g_ptr_array_index(found, 0);
    ck_assert_msg(
        g_str_has_prefix(line, "usbtmc:0957:1798:MY12345|usbtmc|0957:1798|Labmq Instruments|MOCK488|MY12345|"),
        "%s", line);
    ck_assert_msg(strstr(line, "USB488") && strstr(line, "bus 1 device 2"), "%s", line);
    g_ptr_array_free(found, TRUE);
    /* The connection it reports opens the device. */
    lmq_transport_t *t = open_ok("usbtmc:0957:1798:MY12345");
    ck_assert_str_eq(lmq_transport_kind(t), "usbtmc");
    lmq_transport_close(&t);
    ck_assert_ptr_null(t);
    mock_stop(&m);
}
END_TEST

START_TEST(idn_round_trip)
{
    mock_t m;
    mock_start(&m, true);
    lmq_transport_t *t = open_ok("usbtmc:0957:1798");
    char buf[256];
    query(t, "*IDN?\n", buf, sizeof buf);
    ck_assert_str_eq(buf, IDN);
    /* The raw read reports the message end with the last byte. */
    ck_assert_int_eq(lmq_transport_write(t, "*IDN?\n", 6, in_ms(2000)), 0);
    size_t got;
    bool eom;
    ck_assert_int_eq(lmq_transport_read(t, buf, 10, &got, &eom, in_ms(2000)), 0);
    ck_assert_uint_eq(got, 10);
    ck_assert(!eom);
    ck_assert_int_eq(lmq_transport_read(t, buf, sizeof buf, &got, &eom, in_ms(2000)), 0);
    ck_assert_uint_eq(got, strlen(IDN) + 1 - 10);
    ck_assert(eom);
    LOCKED(&m, {
        ck_assert_int_eq(m.in.messages, 2);
        ck_assert_int_eq(m.in.out_eoms, 2);
        ck_assert_uint_eq(m.in.last_req_size, LMQ__USBTMC_MAX_PAYLOAD);
        ck_assert_msg(m.in.tag_errors == 0, "%s", m.in.tag_error);
    });
    lmq_transport_close(&t);
    mock_stop(&m);
}
END_TEST

START_TEST(multi_transfer_read)
{
    mock_t m;
    mock_start(&m, true);
    lmq_transport_t *t = open_ok("usbtmc:0957:1798:MY12345");
    /* Five times what one transfer carries: the host asks again until EOM. */
    enum { N = 5 * LMQ__USBTMC_MAX_PAYLOAD + 17 };
    char *buf = malloc(N + 2);
    ck_assert_int_eq(lmq_transport_write(t, "LONG? 20437\n", 12, in_ms(2000)), 0);
    ck_assert_int_eq(N, 20437);
    int rc = lmq_transport_read_exact(t, buf, N + 1, in_ms(5000));
    ck_assert_msg(rc == 0, "%s", lmq_transport_last_error(t));
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(buf[i], 'A' + i % 26);
    ck_assert_int_eq(buf[N], '\n');
    LOCKED(&m, ck_assert_int_eq(m.in.requests, 6));
    /* The device splits on its own: many short transfers, EOM on the last. */
    LOCKED(&m, m.in.split = 7);
    char line[256];
    query(t, "*IDN?\n", line, sizeof line);
    ck_assert_str_eq(line, IDN);
    LOCKED(&m, ck_assert_int_eq(m.in.requests, 6 + (int)(strlen(IDN) + 1 + 6) / 7));
    free(buf);
    lmq_transport_close(&t);
    mock_stop(&m);
}
END_TEST

START_TEST(long_write_is_split)
{
    mock_t m;
    mock_start(&m, true);
    lmq_transport_t *t = open_ok("usbtmc:0957:1798");
    enum { N = 2 * LMQ__USBTMC_MAX_PAYLOAD + 1001 };
    char *msg = malloc(N);
    memset(msg, 'x', N);
    msg[N - 1] = '\n';
    ck_assert_int_eq(lmq_transport_write(t, msg, N, in_ms(2000)), 0);
    char line[64];
    query(t, "LEN?\n", line, sizeof line);
    ck_assert_int_eq(atoi(line), N);
    LOCKED(&m, {
        ck_assert_int_eq(m.in.out_transfers, 4); /* 3 for the long one, 1 for LEN? */
        ck_assert_int_eq(m.in.out_eoms, 2);
        ck_assert_msg(m.in.tag_errors == 0, "%s", m.in.tag_error);
    });
    free(msg);
    lmq_transport_close(&t);
    mock_stop(&m);
}
END_TEST

START_TEST(eom_ends_a_line)
{
    mock_t m;
    mock_start(&m, true);
    lmq_transport_t *t = open_ok("usbtmc:0957:1798");
    char buf[64];
    size_t len;
    /* No terminator: the message end ends the line. */
    ck_assert_int_eq(lmq_transport_write(t, "NOTERM?\n", 8, in_ms(2000)), 0);
    int64_t deadline = in_ms(2000);
    ck_assert_int_eq(lmq_transport_read_line(t, buf, sizeof buf, &len, "\n", deadline), 0);
    ck_assert_str_eq(buf, "ABC");
    ck_assert_uint_eq(len, 3);
    /* A device that never marks EOM still delivers lines by terminator, and
     * the raw read reports no message end. */
    LOCKED(&m, m.in.no_eom = true);
    query(t, "*IDN?\n", buf, sizeof buf);
    ck_assert_str_eq(buf, IDN);
    ck_assert_int_eq(lmq_transport_write(t, "*IDN?\n", 6, in_ms(2000)), 0);
    size_t got;
    bool eom = true;
    ck_assert_int_eq(lmq_transport_read(t, buf, sizeof buf, &got, &eom, in_ms(2000)), 0);
    ck_assert_uint_eq(got, strlen(IDN) + 1);
    ck_assert(!eom);
    lmq_transport_close(&t);
    mock_stop(&m);
}
END_TEST

START_TEST(btag_wraps_and_never_zero)
{
    mock_t m;
    mock_start(&m, true);
    lmq_transport_t *t = open_ok("usbtmc:0957:1798");
    char buf[128];
    /* 2 transfers (command, request) per query: 340 bTags wrap once. */
    for (int i = 0; i < 170; i++) {
        query(t, "*IDN?\n", buf, sizeof buf);
        ck_assert_str_eq(buf, IDN);
    }
    LOCKED(&m, {
        ck_assert_msg(m.in.tag_errors == 0, "%d bad: first %s", m.in.tag_errors, m.in.tag_error);
        ck_assert_int_eq(m.in.out_transfers + m.in.requests, 340);
        ck_assert_int_eq(m.in.wraps, 1);
    });
    lmq_transport_close(&t);
    mock_stop(&m);
}
END_TEST

START_TEST(silent_device_times_out_and_aborts)
{
    mock_t m;
    mock_start(&m, true);
    lmq_transport_t *t = open_ok("usbtmc:0957:1798");
    LOCKED(&m, m.in.silent = true);
    ck_assert_int_eq(lmq_transport_write(t, "LONG? 10\n", 9, in_ms(2000)), 0);
    char buf[128];
    double t0 = th_now_ms();
    int rc = lmq_transport_read_line(t, buf, sizeof buf, NULL, "\n", in_ms(300));
    double took = th_now_ms() - t0;
    ck_assert_int_eq(rc, LMQ_ETIMEOUT);
    ck_assert_msg(took >= 290 && took < 300 + 200, "took %.0f ms", took);
    ck_assert_msg(strstr(lmq_transport_last_error(t), "usbtmc:0957:1798: "), "%s", lmq_transport_last_error(t));
    ck_assert(!lmq_transport_broken(t));
    LOCKED(&m, {
        ck_assert_int_eq(m.in.init_abort_in, 1);
        ck_assert_int_ge(m.in.check_abort_in, 1);
        ck_assert_int_eq(m.in.abort_in_tag, m.in.last_tag); /* the request's bTag */
        ck_assert(!m.in.zlp_pending);                       /* the host read the short packet */
        m.in.silent = false;
    });
    /* Device and host agree again: the next query gets its own answer, not
     * the late one to LONG?. */
    query(t, "*IDN?\n", buf, sizeof buf);
    ck_assert_str_eq(buf, IDN);
    LOCKED(&m, ck_assert_msg(m.in.tag_errors == 0, "%s", m.in.tag_error));
    lmq_transport_close(&t);
    mock_stop(&m);
}
END_TEST

START_TEST(stuck_bulk_out_times_out_and_aborts)
{
    mock_t m;
    mock_start(&m, true);
    lmq_transport_t *t = open_ok("usbtmc:0957:1798");
    LOCKED(&m, m.in.stall_out = true);
    double t0 = th_now_ms();
    ck_assert_int_eq(lmq_transport_write(t, "*IDN?\n", 6, in_ms(200)), LMQ_ETIMEOUT);
    ck_assert_msg(th_now_ms() - t0 < 200 + 200, "took %.0f ms", th_now_ms() - t0);
    LOCKED(&m, {
        ck_assert_int_eq(m.in.init_abort_out, 1);
        ck_assert_int_ge(m.in.check_abort_out, 1);
        ck_assert_int_ge(m.in.clear_halts, 1);
        m.in.stall_out = false;
    });
    char buf[128];
    query(t, "*IDN?\n", buf, sizeof buf);
    ck_assert_str_eq(buf, IDN);
    lmq_transport_close(&t);
    mock_stop(&m);
}
END_TEST

static void *raise_later(void *arg)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 200 * 1000000L};
    nanosleep(&ts, NULL);
    atomic_store((atomic_bool *)arg, true);
    return NULL;
}

START_TEST(cancel_flag_ends_a_wait)
{
    mock_t m;
    mock_start(&m, true);
    atomic_bool cancel = false;
    lmq_transport_opts_t opts = {.cancel = &cancel};
    lmq_transport_t *t = NULL;
    char err[256];
    ck_assert_int_eq(lmq_transport_open(&t, "usbtmc:0957:1798", &opts, err, sizeof err), 0);
    LOCKED(&m, m.in.silent = true);
    ck_assert_int_eq(lmq_transport_write(t, "*IDN?\n", 6, in_ms(2000)), 0);
    /* The flag rises while the bulk-in transfer waits: the wait ends within
     * a slice (plus the abort), long before the deadline. */
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, raise_later, &cancel), 0);
    char buf[64];
    double t0 = th_now_ms();
    ck_assert_int_eq(lmq_transport_read_line(t, buf, sizeof buf, NULL, "\n", in_ms(10000)), LMQ_ECLOSED);
    double took = th_now_ms() - t0;
    pthread_join(th, NULL);
    ck_assert_msg(took >= 190 && took < 2000, "took %.0f ms", took);
    LOCKED(&m, ck_assert_int_eq(m.in.init_abort_in, 1));
    lmq_transport_close(&t);
    mock_stop(&m);
}
END_TEST

START_TEST(clear_runs_the_clear_sequence)
{
    mock_t m;
    mock_start(&m, true);
    lmq_transport_t *t = open_ok("usbtmc:0957:1798");
    /* A half-read reply is dropped by the clear. */
    ck_assert_int_eq(lmq_transport_write(t, "LONG? 9000\n", 11, in_ms(2000)), 0);
    char buf[128];
    size_t got;
    ck_assert_int_eq(lmq_transport_read(t, buf, 16, &got, NULL, in_ms(2000)), 0);
    int halts;
    LOCKED(&m, halts = m.in.clear_halts);
    int rc = lmq_transport_clear(t, 0, in_ms(2000));
    ck_assert_msg(rc == 0, "%s", lmq_transport_last_error(t));
    LOCKED(&m, {
        ck_assert_int_eq(m.in.init_clear, 1);
        ck_assert_int_eq(m.in.check_clear, 2); /* PENDING once, then SUCCESS */
        ck_assert_int_eq(m.in.clear_halts - halts, 2);
    });
    query(t, "*IDN?\n", buf, sizeof buf);
    ck_assert_str_eq(buf, IDN);
    lmq_transport_close(&t);
    mock_stop(&m);
}
END_TEST

START_TEST(status_byte_by_interrupt)
{
    mock_t m;
    mock_start(&m, true);
    lmq_transport_t *t = open_ok("usbtmc:0957:1798");
    LOCKED(&m, m.in.stb = 0x42);
    uint8_t stb = 0;
    ck_assert_int_eq(lmq_transport_status_byte(t, &stb, in_ms(2000)), 0);
    ck_assert_uint_eq(stb, 0x42);
    /* A service request notification first is not the answer. */
    LOCKED(&m, {
        m.in.srq_first = true;
        m.in.stb = 0x10;
    });
    ck_assert_int_eq(lmq_transport_status_byte(t, &stb, in_ms(2000)), 0);
    ck_assert_uint_eq(stb, 0x10);
    LOCKED(&m, m.in.srq_first = false);
    /* bTag runs 2..127 and wraps. */
    for (int i = 0; i < 130; i++)
        ck_assert_int_eq(lmq_transport_status_byte(t, &stb, in_ms(2000)), 0);
    LOCKED(&m, {
        ck_assert_int_eq(m.in.rsb, 132);
        ck_assert_int_eq(m.in.rsb_bad_tags, 0);
        ck_assert_int_eq(m.in.rsb_wraps, 1);
    });
    lmq_transport_close(&t);
    mock_stop(&m);
}
END_TEST

START_TEST(status_byte_in_the_reply)
{
    mock_t m;
    mock_start(&m, false);
    lmq_transport_t *t = open_ok("usbtmc:0957:1798");
    LOCKED(&m, m.in.stb = 0x21);
    uint8_t stb = 0;
    ck_assert_int_eq(lmq_transport_status_byte(t, &stb, in_ms(2000)), 0);
    ck_assert_uint_eq(stb, 0x21);
    lmq_transport_close(&t);
    mock_stop(&m);
}
END_TEST

START_TEST(malformed_header_is_proto)
{
    mock_t m;
    mock_start(&m, true);
    lmq_transport_t *t = open_ok("usbtmc:0957:1798");
    char buf[128];
    LOCKED(&m, m.in.garbage = true);
    ck_assert_int_eq(lmq_transport_write(t, "*IDN?\n", 6, in_ms(2000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, buf, sizeof buf, NULL, "\n", in_ms(2000)), LMQ_EPROTO);
    const char *e = lmq_transport_last_error(t);
    ck_assert_msg(strstr(e, "MsgID 7") && strstr(e, "[07 "), "%s", e);
    LOCKED(&m, {
        m.in.garbage = false;
        m.in.wrong_tag = true;
    });
    ck_assert_int_eq(lmq_transport_write(t, "*IDN?\n", 6, in_ms(2000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, buf, sizeof buf, NULL, "\n", in_ms(2000)), LMQ_EPROTO);
    e = lmq_transport_last_error(t);
    ck_assert_msg(strstr(e, "bTag") && strstr(e, "expected"), "%s", e);
    ck_assert(!lmq_transport_broken(t));
    LOCKED(&m, m.in.wrong_tag = false);
    ck_assert_int_eq(lmq_transport_clear(t, 0, in_ms(2000)), 0);
    query(t, "*IDN?\n", buf, sizeof buf);
    ck_assert_str_eq(buf, IDN);
    lmq_transport_close(&t);
    mock_stop(&m);
}
END_TEST

START_TEST(unplug_is_io_and_broken)
{
    mock_t m;
    mock_start(&m, true);
    lmq_transport_t *t = open_ok("usbtmc:0957:1798");
    /* The idle check asks without I/O on the bus. */
    ck_assert_int_eq(lmq_transport_check(t), 0);
    LOCKED(&m, m.in.unplugged = true);
    ck_assert_int_eq(lmq_transport_check(t), LMQ_EIO);
    ck_assert(lmq_transport_broken(t));
    ck_assert_msg(strstr(lmq_transport_last_error(t), "gone"), "%s", lmq_transport_last_error(t));
    lmq_transport_close(&t);

    /* Unplugged before a command: the write finds out. */
    LOCKED(&m, m.in.unplugged = false);
    t = open_ok("usbtmc:0957:1798");
    LOCKED(&m, m.in.unplugged = true);
    ck_assert_int_eq(lmq_transport_write(t, "*IDN?\n", 6, in_ms(2000)), LMQ_EIO);
    ck_assert(lmq_transport_broken(t));
    ck_assert_msg(strstr(lmq_transport_last_error(t), "gone"), "%s", lmq_transport_last_error(t));
    ck_assert_int_eq(lmq_transport_write(t, "*IDN?\n", 6, in_ms(2000)), LMQ_EIO);
    lmq_transport_close(&t);

    /* Unplugged while a read waits: the bulk-in transfer dies with the device. */
    LOCKED(&m, {
        m.in.unplugged = false;
        m.in.unplug_on_request = true;
    });
    t = open_ok("usbtmc:0957:1798");
    char buf[64];
    ck_assert_int_eq(lmq_transport_write(t, "*IDN?\n", 6, in_ms(2000)), 0);
    ck_assert_int_eq(lmq_transport_read_line(t, buf, sizeof buf, NULL, "\n", in_ms(2000)), LMQ_EIO);
    ck_assert_msg(strstr(lmq_transport_last_error(t), "gone"), "%s", lmq_transport_last_error(t));
    ck_assert(lmq_transport_broken(t));
    lmq_transport_close(&t);
    mock_stop(&m);
}
END_TEST

START_TEST(open_errors)
{
    mock_t m;
    mock_start(&m, true);
    lmq_transport_t *t = NULL;
    char err[512];
    ck_assert_int_eq(lmq_transport_open(&t, "usbtmc:1234:5678", NULL, err, sizeof err), LMQ_ENOTFOUND);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(err, "usbtmc:1234:5678: no USB device 1234:5678") &&
                      strstr(err, "present: usbtmc:0957:1798:MY12345"),
                  "%s", err);
    ck_assert_int_eq(lmq_transport_open(&t, "usbtmc:0957:1798:OTHER", NULL, err, sizeof err), LMQ_ENOTFOUND);
    ck_assert_msg(strstr(err, "serial number OTHER") && strstr(err, "'MY12345'"), "%s", err);
    static const char *const bad[] = {"usbtmc:",          "usbtmc:0957",      "usbtmc:0957:",
                                      "usbtmc:xyz:1798",  "usbtmc:12345:1798", "usbtmc:0957:1798:",
                                      "usbtmc:0957;1798", "usbtmc::1798",     "usbtmc:0957:17g8"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(lmq_transport_open(&t, bad[i], NULL, err, sizeof err) == LMQ_EARG, "%s: %s", bad[i], err);
        ck_assert_msg(strstr(err, bad[i]) && strstr(err, "VID:PID"), "%s", err);
    }
    LOCKED(&m, m.in.claim_busy = true);
    ck_assert_int_eq(lmq_transport_open(&t, "usbtmc:0957:1798", NULL, err, sizeof err), LMQ_EBUSY);
    ck_assert_msg(strstr(err, "busy"), "%s", err);
    mock_stop(&m);
    /* No device at all. */
    UMockdevTestbed *empty = umockdev_testbed_new();
    ck_assert_int_eq(lmq_transport_open(&t, "usbtmc:0957:1798", NULL, err, sizeof err), LMQ_ENOTFOUND);
    ck_assert_msg(strstr(err, "present: none"), "%s", err);
    g_object_unref(empty);
}
END_TEST

/* The descriptors open now, with their close-on-exec flag. */
static int fd_list(int *fds, bool *cloexec, int max)
{
    DIR *d = opendir("/proc/self/fd");
    ck_assert_ptr_nonnull(d);
    int me = dirfd(d), n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        if (e->d_name[0] == '.')
            continue;
        int fd = atoi(e->d_name);
        if (fd == me)
            continue;
        int fl = fcntl(fd, F_GETFD);
        fds[n] = fd;
        cloexec[n] = fl >= 0 && (fl & FD_CLOEXEC);
        n++;
    }
    closedir(d);
    return n;
}

/* fd_list once umockdev's thread has closed its end of the emulation
 * sockets of nodes closed a moment ago (it does so when it notices the
 * hang-up): the listing has stayed the same for 100 ms (at most 5 s). */
static int fd_list_settled(int *fds, bool *cloexec, int max)
{
    int n = fd_list(fds, cloexec, max);
    for (int stable = 0, polls = 0; stable < 10 && polls < 500; polls++) {
        int again[256];
        bool cx[256];
        usleep(10000);
        int m = fd_list(again, cx, max < 256 ? max : 256);
        if (m == n && memcmp(again, fds, sizeof *fds * (size_t)n) == 0) {
            stable++;
        } else {
            stable = 0;
            n = m;
            memcpy(fds, again, sizeof *fds * (size_t)m);
            memcpy(cloexec, cx, sizeof *cx * (size_t)m);
        }
    }
    return n;
}

static bool listed(const int *fds, int n, int fd)
{
    for (int i = 0; i < n; i++)
        if (fds[i] == fd)
            return true;
    return false;
}

static const char *fd_target(int fd, char *target, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, size - 1);
    target[n > 0 ? n : 0] = '\0';
    return target;
}

static bool is_socket(int fd)
{
    char target[64];
    return strncmp(fd_target(fd, target, sizeof target), "socket:", 7) == 0;
}

/* How many descriptors without FD_CLOEXEC not in before[0..nb) are open. */
static int count_inheritable(const int *before, int nb, int *sockets)
{
    int fds[256];
    bool cx[256];
    int n = fd_list(fds, cx, 256), count = 0;
    *sockets = 0;
    for (int i = 0; i < n; i++) {
        if (cx[i] || listed(before, nb, fds[i]))
            continue;
        count++;
        *sockets += is_socket(fds[i]);
    }
    return count;
}

START_TEST(open_close_leaks_nothing)
{
    mock_t m;
    mock_start(&m, true);
    char buf[128];
    /* A first cycle lets umockdev and GLib open what they keep for good. */
    lmq_transport_t *t = open_ok("usbtmc:0957:1798");
    lmq_transport_close(&t);
    int before[256], during[256];
    bool cx_before[256], cx_during[256];
    int nb = fd_list_settled(before, cx_before, 256);
    /* umockdev's preload gives every open of an emulated node a socket to
     * its ioctl handler, without FD_CLOEXEC: measure that on a plain open. */
    int probe = open(NODE, O_RDWR | O_CLOEXEC);
    ck_assert_int_ge(probe, 0);
    int mock_sockets;
    int mock_inheritable = count_inheritable(before, nb, &mock_sockets);
    ck_assert_int_eq(mock_inheritable, mock_sockets);
    close(probe);
    /* Everything else the open transport holds is close-on-exec. */
    t = open_ok("usbtmc:0957:1798");
    query(t, "*IDN?\n", buf, sizeof buf);
    int nd = fd_list(during, cx_during, 256);
    ck_assert_int_gt(nd, nb);
    int sockets, inheritable = count_inheritable(before, nb, &sockets);
    ck_assert_msg(inheritable == sockets && sockets <= mock_sockets,
                  "%d descriptors without FD_CLOEXEC (%d sockets; umockdev accounts for %d)", inheritable, sockets,
                  mock_sockets);
    lmq_transport_close(&t);
    for (int i = 0; i < 100; i++) {
        t = open_ok("usbtmc:0957:1798:MY12345");
        lmq_transport_close(&t);
    }
    int after[256];
    bool cx_after[256];
    int na = fd_list_settled(after, cx_after, 256);
    for (int i = 0; i < na; i++) {
        char target[128];
        ck_assert_msg(listed(before, nb, after[i]), "fd %d (%s) leaked", after[i],
                      fd_target(after[i], target, sizeof target));
    }
    ck_assert_int_eq(na, nb);
    LOCKED(&m, {
        ck_assert_int_eq(m.in.claims, 102);
        ck_assert_int_eq(m.in.releases, 102);
    });
    mock_stop(&m);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("usbtmc");
    TCase *internal = tcase_create("internal");
    tcase_add_test(internal, header_parser);
    suite_add_tcase(s, internal);
    TCase *tc = tcase_create("emulated instrument");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, scan_lists_the_instrument);
    tcase_add_test(tc, idn_round_trip);
    tcase_add_test(tc, multi_transfer_read);
    tcase_add_test(tc, long_write_is_split);
    tcase_add_test(tc, eom_ends_a_line);
    tcase_add_test(tc, btag_wraps_and_never_zero);
    tcase_add_test(tc, silent_device_times_out_and_aborts);
    tcase_add_test(tc, stuck_bulk_out_times_out_and_aborts);
    tcase_add_test(tc, cancel_flag_ends_a_wait);
    tcase_add_test(tc, clear_runs_the_clear_sequence);
    tcase_add_test(tc, status_byte_by_interrupt);
    tcase_add_test(tc, status_byte_in_the_reply);
    tcase_add_test(tc, malformed_header_is_proto);
    tcase_add_test(tc, unplug_is_io_and_broken);
    tcase_add_test(tc, open_errors);
    tcase_add_test(tc, permission_denied_names_the_fix);
    tcase_add_test(tc, kernel_driver_detached_and_given_back);
    tcase_add_test(tc, open_close_leaks_nothing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    /* Each test's testbed (umockdev.XXXXXX under TMPDIR) goes into a
     * directory of this run, removed at the end: a test that fails exits
     * before it can unref its testbed. Set before any GLib call caches it. */
    char dir[] = "/tmp/lmqtest-usbtmc-XXXXXX";
    if (!mkdtemp(dir) || setenv("TMPDIR", dir, 1) != 0) {
        perror("test_usbtmc: temp dir");
        return EXIT_FAILURE;
    }
    int rc = th_run_suite(suite());
    th_rmtree(dir);
    return rc;
}
