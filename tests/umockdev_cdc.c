/* Test helper: the emulated USB CDC serial port (umockdev_cdc.h). */
#include "umockdev_cdc.h"
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include "harness.h"

static const char *const records = "P: /devices/pci0000:00/0000:00:14.0/usb1/1-1\n"
                                   "E: SUBSYSTEM=usb\n"
                                   "E: DEVTYPE=usb_device\n"
                                   "E: BUSNUM=001\n"
                                   "E: DEVNUM=002\n"
                                   "A: busnum=1\n"
                                   "A: devnum=2\n"
                                   "A: speed=480\n"
                                   "A: idVendor=2a8d\n"
                                   "A: idProduct=1202\n"
                                   "A: manufacturer=Keysight Technologies\n"
                                   "A: product=E36312A Power Supply\n"
                                   "A: serial=MY59001234\n"
                                   "\n"
                                   "P: /devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0\n"
                                   "E: SUBSYSTEM=usb\n"
                                   "E: DEVTYPE=usb_interface\n"
                                   "E: DRIVER=cdc_acm\n"
                                   "A: bInterfaceClass=02\n"
                                   "A: bInterfaceNumber=00\n"
                                   "\n"
                                   "P: /devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/tty/ttyACM0\n"
                                   "N: ttyACM0\n"
                                   "E: SUBSYSTEM=tty\n"
                                   "E: DEVNAME=/dev/ttyACM0\n"
                                   /* umockdev does not make this link; libserialport follows it to the
                                    * USB device's attributes. */
                                   "L: device=../../../1-1:1.0\n";

static gboolean handle_ioctl(UMockdevIoctlBase *base, UMockdevIoctlClient *client, gpointer user)
{
    (void)base;
    modem_t *m = user;
    gulong req = umockdev_ioctl_client_get_request(client);
    if (req == TIOCMGET || req == TIOCMSET || req == TIOCMBIS || req == TIOCMBIC) {
        atomic_fetch_add(&m->tiocm_calls, 1);
        UMockdevIoctlData *arg = umockdev_ioctl_client_get_arg(client);
        UMockdevIoctlData *d = umockdev_ioctl_data_resolve(arg, 0, sizeof(int), NULL);
        if (!d) {
            umockdev_ioctl_client_complete(client, -1, EFAULT);
            return TRUE;
        }
        int v;
        memcpy(&v, d->data, sizeof v);
        if (req == TIOCMGET)
            v = atomic_load(&m->bits);
        else if (req == TIOCMSET)
            atomic_store(&m->bits, v);
        else if (req == TIOCMBIS)
            atomic_fetch_or(&m->bits, v);
        else
            atomic_fetch_and(&m->bits, ~v);
        if (req == TIOCMGET)
            memcpy(d->data, &v, sizeof v);
        umockdev_ioctl_client_complete(client, 0, 0);
        g_object_unref(d);
        return TRUE;
    }
    /* Everything else (TIOCINQ, TIOCEXCL, ...) runs on the real pty. */
    int e = 0;
    int r = umockdev_ioctl_client_execute(client, &e, NULL);
    umockdev_ioctl_client_complete(client, r, e);
    return TRUE;
}

void bed_up(bed_t *b)
{
    memset(b, 0, sizeof *b);
    b->tb = umockdev_testbed_new();
    ck_assert_ptr_nonnull(b->tb);
    b->modem.bits = TIOCM_DSR | TIOCM_CTS | TIOCM_CD;
    b->handler = umockdev_ioctl_base_new();
    g_signal_connect(b->handler, "handle-ioctl", G_CALLBACK(handle_ioctl), &b->modem);
    GError *err = NULL;
    ck_assert_msg(umockdev_testbed_attach_ioctl(b->tb, "/dev/ttyACM0", b->handler, &err), "attach: %s",
                  err ? err->message : "?");
    ck_assert_msg(umockdev_testbed_add_from_string(b->tb, records, &err), "add: %s", err ? err->message : "?");
    b->far = umockdev_testbed_get_dev_fd(b->tb, "/dev/ttyACM0");
    ck_assert_int_ge(b->far, 0);
    /* The preload is active: /sys is the testbed's (else the test would
     * touch the real machine's ports). */
    char *vid = th_read_file("/sys/class/tty/ttyACM0/device/../idVendor");
    ck_assert_msg(vid && strncmp(vid, "2a8d", 4) == 0, "umockdev preload not active (LD_PRELOAD=%s)",
                  getenv("LD_PRELOAD") ? getenv("LD_PRELOAD") : "");
    free(vid);
}

void bed_down(bed_t *b)
{
    umockdev_testbed_detach_ioctl(b->tb, "/dev/ttyACM0", NULL);
    g_object_unref(b->handler);
    /* Removes the testbed's /tmp/umockdev.XXXXXX. */
    g_object_unref(b->tb);
}
