/* Test helper: an emulated USB CDC serial port (umockdev). The testbed gives
 * the unchanged libserialport a sysfs tree with a USB device (2a8d:1202,
 * "Keysight Technologies", serial MY59001234) and its ttyACM0, whose device
 * node is a pty the test drives from the far end; an ioctl handler supplies
 * the modem lines a pty lacks. The test must link the umockdev preload (see
 * tests/CMakeLists.txt). */
#ifndef LMQ_TEST_UMOCKDEV_CDC_H
#define LMQ_TEST_UMOCKDEV_CDC_H

#include <stdatomic.h>
#include <umockdev.h>

#define TTY_SYSPATH "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/tty/ttyACM0"

/* The modem lines of the emulated port (a pty has none). */
typedef struct modem {
    atomic_int bits;
    atomic_int tiocm_calls; /* only libserialport asks: proof of its path */
} modem_t;

typedef struct bed {
    UMockdevTestbed *tb;
    UMockdevIoctlBase *handler;
    modem_t modem;
    int far; /* the pty master: the instrument's end */
} bed_t;

/* Sets up /dev/ttyACM0; aborts the test when the preload is not active. */
void bed_up(bed_t *b);
/* Removes the testbed (and its /tmp/umockdev.XXXXXX). */
void bed_down(bed_t *b);

#endif
