/* The serial transport's libserialport path against an emulated USB CDC
 * port: umockdev (linked as a preload, see tests/CMakeLists.txt) gives the
 * unchanged libserialport a sysfs tree with a USB device and its ttyACM0,
 * whose device node is a pty the test drives from the far end. An ioctl
 * handler supplies the modem lines a pty lacks. */
#include <check.h>
#include <sys/wait.h>
#include "harness.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <umockdev.h>
#include <unistd.h>
#include "labmq/labmq.h"
#include "umockdev_cdc.h"

static int64_t in_ms(int ms) { return lmq_clock_mono_ns() + (int64_t)ms * 1000000; }

/* Reads one line from the far end (the instrument receiving a command). */
static void far_read_line(int fd, char *buf, size_t size)
{
    size_t n = 0;
    double end = th_now_ms() + 3000;
    while (n + 1 < size && th_now_ms() < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        ssize_t r = read(fd, buf + n, 1);
        ck_assert_int_eq(r, 1);
        if (buf[n++] == '\n')
            break;
    }
    buf[n] = '\0';
}

typedef struct found {
    int n;
    lmq_port_info_t info;
    char connection[64], manufacturer[64], product[64], serial[64], description[256];
} found_t;

static void on_port(void *user, const lmq_port_info_t *info)
{
    found_t *f = user;
    f->n++;
    f->info = *info;
    snprintf(f->connection, sizeof f->connection, "%s", info->connection);
    snprintf(f->manufacturer, sizeof f->manufacturer, "%s", info->manufacturer);
    snprintf(f->product, sizeof f->product, "%s", info->product);
    snprintf(f->serial, sizeof f->serial, "%s", info->serial);
    snprintf(f->description, sizeof f->description, "%s", info->description);
}

START_TEST(scan_lists_the_usb_port)
{
    bed_t b;
    bed_up(&b);
    found_t f = {0};
    char err[128];
    ck_assert_int_eq(lmq_transport_scan(on_port, &f, err, sizeof err), 1);
    ck_assert_int_eq(f.n, 1);
    ck_assert_str_eq(f.connection, "serial:/dev/ttyACM0");
    ck_assert_str_eq(f.info.kind, "serial");
    ck_assert_int_eq(f.info.vid, 0x2a8d);
    ck_assert_int_eq(f.info.pid, 0x1202);
    ck_assert_str_eq(f.manufacturer, "Keysight Technologies");
    ck_assert_str_eq(f.product, "E36312A Power Supply");
    ck_assert_str_eq(f.serial, "MY59001234");
    ck_assert_msg(strstr(f.description, "USB 2a8d:1202") && strstr(f.description, "MY59001234"), "%s",
                  f.description);
    bed_down(&b);
}
END_TEST

/* `labmq scan`, a separate process, sees the emulated port too: it inherits
 * the testbed (UMOCKDEV_DIR) and gets the preload through LD_PRELOAD, as under
 * umockdev-wrapper. The sanitizer runtime must then not insist on being the
 * first library loaded. */
static char *run_scan(void)
{
    char dir[128], out[200];
    th_tempdir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/out", dir);
    setenv("LD_PRELOAD", "libumockdev-preload.so.0", 1);
    setenv("ASAN_OPTIONS", "verify_asan_link_order=0:detect_leaks=0", 1);
    char *argv[] = {LMQ_BUILD_DIR "/tools/labmq", "scan", NULL};
    pid_t pid = th_spawn_to_files(argv, out, NULL);
    unsetenv("LD_PRELOAD");
    int st;
    ck_assert_int_eq(th_wait_exit(pid, 20000, &st), 0);
    char *text = th_slurp(out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "labmq scan: status 0x%x: %s", (unsigned)st, text);
    th_rmtree(dir);
    return text;
}

START_TEST(cli_scan_lists_the_usb_port)
{
    bed_t b;
    bed_up(&b);
    char *text = run_scan();
    ck_assert_msg(strstr(text, "serial:/dev/ttyACM0") && strstr(text, "2a8d:1202") &&
                      strstr(text, "Keysight Technologies") && strstr(text, "MY59001234"),
                  "%s", text);
    free(text);
    bed_down(&b);
}
END_TEST

START_TEST(cli_scan_says_when_there_is_nothing)
{
    UMockdevTestbed *tb = umockdev_testbed_new(); /* an empty machine */
    char *text = run_scan();
    ck_assert_msg(strstr(text, "no serial ports and no USBTMC devices found"), "%s", text);
    free(text);
    g_object_unref(tb);
}
END_TEST

/* Checks every descriptor on a pty (the emulated port) is close-on-exec;
 * returns how many there are. The far end (the testbed's) is on /dev/ptmx. */
static int check_tty_fds_cloexec(void)
{
    DIR *d = opendir("/proc/self/fd");
    ck_assert_ptr_nonnull(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        char link[300], target[256];
        snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
        ssize_t len = readlink(link, target, sizeof target - 1);
        if (e->d_name[0] == '.' || len <= 0)
            continue;
        target[len] = '\0';
        if (strncmp(target, "/dev/pts/", 9) != 0)
            continue;
        int fl = fcntl(atoi(e->d_name), F_GETFD);
        ck_assert_msg(fl >= 0 && (fl & FD_CLOEXEC), "descriptor %s (%s) is not close-on-exec", e->d_name, target);
        n++;
    }
    closedir(d);
    return n;
}

START_TEST(libserialport_round_trip_and_unplug)
{
    bed_t b;
    bed_up(&b);
    lmq_transport_t *t = NULL;
    char err[256];
    int rc = lmq_transport_open(&t, "serial:/dev/ttyACM0?baud=115200&parity=even&flow=rtscts", NULL, err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    /* libserialport, not the pty fallback, opened it: it asked for the modem lines. */
    ck_assert_int_gt(atomic_load(&b.modem.tiocm_calls), 0);
    /* Its descriptors on the port (the lock holder and libserialport's own,
     * opened without O_CLOEXEC) are close-on-exec; the ioctl socket of the
     * preload is umockdev's. */
    ck_assert_int_eq(check_tty_fds_cloexec(), 2);

    /* Exclusive here too. */
    lmq_transport_t *t2 = NULL;
    ck_assert_int_eq(lmq_transport_open(&t2, "serial:/dev/ttyACM0", NULL, err, sizeof err), LMQ_EBUSY);
    ck_assert_msg(strstr(err, "busy: another process holds it"), "%s", err);

    char cmd[64], line[64];
    ck_assert_int_eq(lmq_transport_write(t, "*IDN?\n", 6, in_ms(2000)), 0);
    far_read_line(b.far, cmd, sizeof cmd);
    ck_assert_str_eq(cmd, "*IDN?\n");
    const char *reply = "Keysight Technologies,E36312A,MY59001234,2.1.0\r\n";
    ck_assert_int_eq(write(b.far, reply, strlen(reply)), (ssize_t)strlen(reply));
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\r\n", in_ms(3000)), 0);
    ck_assert_str_eq(line, "Keysight Technologies,E36312A,MY59001234,2.1.0");

    /* A late reply is cleared, never read as the next answer. */
    rc = lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(200));
    ck_assert_msg(rc == LMQ_ETIMEOUT, "%s", lmq_transport_last_error(t));
    ck_assert_int_eq(write(b.far, "LATE\n", 5), 5);
    ck_assert_int_eq(lmq_transport_clear(t, 150, in_ms(3000)), 0);
    ck_assert_int_eq(write(b.far, "FRESH\n", 6), 6);
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(3000)), 0);
    ck_assert_str_eq(line, "FRESH");

    /* Unplug: the device leaves sysfs and, as the kernel does when a USB
     * serial adapter goes, its tty hangs up (the testbed only removes files,
     * so the test closes the far end itself; the testbed never closes it). */
    umockdev_testbed_remove_device(b.tb, TTY_SYSPATH);
    close(b.far);
    double t0 = th_now_ms();
    ck_assert_int_eq(lmq_transport_read_line(t, line, sizeof line, NULL, "\n", in_ms(10000)), LMQ_EIO);
    ck_assert(th_now_ms() - t0 < 1000);
    ck_assert(lmq_transport_broken(t));
    ck_assert_ptr_nonnull(strstr(lmq_transport_last_error(t), "hung up"));
    lmq_transport_close(&t);
    /* Every descriptor on the port released. (Not a count of all: as non-root
     * the busy open above fails in open(2), and umockdev 0.17's preload then
     * leaks the ioctl socket it connects for the failed descriptor.) */
    ck_assert_int_eq(check_tty_fds_cloexec(), 0);
    /* Gone for good: reopening names the missing port. */
    ck_assert_int_eq(lmq_transport_open(&t, "serial:/dev/ttyACM0", NULL, err, sizeof err), LMQ_ENOTFOUND);
    ck_assert_msg(strstr(err, "/dev/ttyACM0: no such port"), "%s", err);
    bed_down(&b);
}
END_TEST

int main(void)
{
    /* Testbeds live under TMPDIR; a failed test cannot unref its own, so
     * give them a directory removed at the end whatever happened. */
    char tmp[] = "/tmp/lmq-umockdev-XXXXXX";
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    setenv("TMPDIR", tmp, 1);
    Suite *s = suite_create("transport_umockdev");
    TCase *tc = tcase_create("libserialport");
    tcase_add_test(tc, scan_lists_the_usb_port);
    tcase_add_test(tc, cli_scan_lists_the_usb_port);
    tcase_add_test(tc, cli_scan_says_when_there_is_nothing);
    tcase_add_test(tc, libserialport_round_trip_and_unplug);
    suite_add_tcase(s, tc);
    int rc = th_run_suite(s);
    th_rmtree(tmp);
    return rc;
}
