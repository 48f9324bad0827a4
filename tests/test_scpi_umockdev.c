/* The scpi driver over the real libserialport path: an emulated USB CDC
 * port (umockdev_cdc.h) whose far end a relay thread connects to
 * labmq-siminst's DP832 on TCP, so the daemon drives a simulated supply
 * through /dev/ttyACM0 exactly as it would a USB-serial instrument. */
#include <check.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"
#include "umockdev_cdc.h"

#define SIM_BIN LMQ_BUILD_DIR "/tools/siminst/labmq-siminst"

typedef struct relay {
    int a, b;
    atomic_bool stop;
    pthread_t thread;
} relay_t;

/* Copies bytes both ways until stopped or either side closes. */
static void *relay_main(void *arg)
{
    relay_t *r = arg;
    char buf[4096];
    while (!atomic_load(&r->stop)) {
        struct pollfd p[2] = {{.fd = r->a, .events = POLLIN}, {.fd = r->b, .events = POLLIN}};
        if (poll(p, 2, 20) <= 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (!(p[i].revents & (POLLIN | POLLHUP)))
                continue;
            ssize_t n = read(p[i].fd, buf, sizeof buf);
            if (n <= 0 && i == 0) { /* EIO: no one has the port open (yet, or between reopens) */
                usleep(5000);
                continue;
            }
            if (n <= 0)
                return NULL;
            if (write(i == 0 ? r->b : r->a, buf, (size_t)n) != n)
                return NULL;
        }
    }
    return NULL;
}

static int connect_tcp(const char *addr)
{
    int port = 0;
    ck_assert_msg(sscanf(addr, "tcp:127.0.0.1:%d", &port) == 1, "%s", addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

START_TEST(dp832_over_usb_serial)
{
    char dir[128], out[192], err[192];
    th_tempdir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(err, sizeof err, "%s/err", dir);
    char *argv[] = {SIM_BIN, "--log", "--tcp", "0", LMQ_SOURCE_DIR "/examples/instruments/siminst/rigol-dp832.yaml",
                    NULL};
    pid_t sim = th_spawn_to_files(argv, out, err);
    char addr[128] = "";
    for (int i = 0; i < 500 && !strchr(addr, '\n'); i++) {
        char *t = th_read_file(out);
        snprintf(addr, sizeof addr, "%s", t ? t : "");
        free(t);
        usleep(10000);
    }
    ck_assert_msg(strchr(addr, '\n'), "labmq-siminst printed no address");
    addr[strcspn(addr, "\n")] = '\0';

    bed_t b;
    bed_up(&b);
    struct termios tio; /* the far end passes bytes through untouched */
    ck_assert_int_eq(tcgetattr(b.far, &tio), 0);
    cfmakeraw(&tio);
    ck_assert_int_eq(tcsetattr(b.far, TCSANOW, &tio), 0);
    relay_t r = {.a = b.far, .b = connect_tcp(addr)};
    ck_assert_int_eq(pthread_create(&r.thread, NULL, relay_main, &r), 0);

    void *ctx = zmq_ctx_new();
    lmq_daemon_t *d = lmq_daemon_new(ctx, "inproc://cdc", "inproc://cdc-data", NULL);
    const char *opts[] = {"model", LMQ_SOURCE_DIR "/examples/instruments/rigol-dp832.yaml", NULL};
    ck_assert_int_eq(lmq_daemon_add(d, "psu", lmq_driver_find("scpi"), "serial:/dev/ttyACM0?baud=9600", opts), 0);
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, 20000), 0);
    lmq_proxy_t *p = lmq_proxy_new(ctx, "inproc://cdc", "psu");
    lmq_value_t v = lmq_float(1.5);
    if (lmq_proxy_set(p, "voltage", &v) != 0) {
        char *e = th_read_file(err);
        ck_abort_msg("%s\nsimulator: %s", lmq_proxy_last_error(p), e ? e : "");
    }
    double x = 0;
    ck_assert_int_eq(lmq_proxy_get_double(p, "voltage", &x), 0);
    ck_assert_double_eq_tol(x, 1.5, 1e-9);
    /* libserialport opened the port (the pty fallback never asks for modem lines) */
    ck_assert_int_gt(atomic_load(&b.modem.tiocm_calls), 0);
    /* the instrument's error, through the USB-serial path */
    lmq_value_t args[3] = {lmq_int(3), lmq_float(6), lmq_float(1)};
    ck_assert_int_eq(lmq_proxy_call(p, "apply", args, 3, &v), LMQ_EDEVICE);
    ck_assert_msg(strstr(lmq_proxy_last_error(p), "-222,\"Data out of range\""), "%s", lmq_proxy_last_error(p));

    /* Unplug: the device leaves sysfs and its tty hangs up (the testbed only
     * removes files; closing the far end is the hang-up). */
    atomic_store(&r.stop, true);
    pthread_join(r.thread, NULL);
    umockdev_testbed_remove_device(b.tb, TTY_SYSPATH);
    close(b.far);
    double t0 = th_now_ms();
    char *json = NULL;
    bool gone = false;
    while (!gone && th_now_ms() - t0 < 1000) {
        ck_assert_int_eq(lmq_proxy_list(p, &json), 0);
        gone = strstr(json, "\"disconnected\"") != NULL;
        free(json);
        usleep(10000);
    }
    ck_assert_msg(gone, "not disconnected within 1 s of the unplug");

    lmq_proxy_destroy(&p);
    ck_assert_int_eq(lmq_daemon_stop(d), 0);
    lmq_daemon_destroy(&d);
    zmq_ctx_term(ctx);
    close(r.b);
    bed_down(&b);
    kill(sim, SIGTERM);
    int st;
    ck_assert_int_eq(th_wait_exit(sim, 20000, &st), 0);
    th_rmtree(dir);
}
END_TEST

int main(void)
{
    /* Testbeds live under TMPDIR: a directory removed at the end, whatever happened. */
    char tmp[] = "/tmp/lmq-umockdev-XXXXXX";
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    setenv("TMPDIR", tmp, 1);
    Suite *s = suite_create("scpi_umockdev");
    TCase *tc = tcase_create("libserialport");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, dp832_over_usb_serial);
    suite_add_tcase(s, tc);
    int rc = th_run_suite(s);
    th_rmtree(tmp);
    return rc;
}
