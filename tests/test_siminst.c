/* Tests of labmq-siminst, the SCPI instrument simulator: the program is
 * spawned with the shipped models and spoken to over its pseudo-terminal and
 * over TCP, byte for byte, as any client would. Exact replies of each model,
 * the error queue, computed readings that follow the load, every fault, the
 * time scale, and clear errors for bad model files. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include "harness.h"
#include "siminst.h" /* the lexical rules and expressions are tested directly too */

#define SIM_BIN LMQ_BUILD_DIR "/tools/siminst/labmq-siminst"
#define MODELS LMQ_SOURCE_DIR "/examples/instruments/siminst/"
#define DP832 MODELS "rigol-dp832.yaml"
#define DMM MODELS "keysight-34461a.yaml"
#define SMU MODELS "keithley-2400.yaml"

typedef struct sim {
    char dir[128], out[192], err[192], link[192];
    pid_t pid;
    bool tcp;
    char path[256]; /* pty path, from the first line of stdout */
    int port;
    int fd;
} sim_t;

/* Reads the nth line (0-based) of the simulator's stdout, waiting up to 10 s. */
static bool out_line(sim_t *s, int nth, char *buf, size_t size)
{
    double deadline = th_now_ms() + 10000;
    while (th_now_ms() < deadline) {
        char *text = th_read_file(s->out);
        char *p = text;
        for (int i = 0; p && i < nth; i++) {
            p = strchr(p, '\n');
            if (p)
                p++;
        }
        char *nl = p ? strchr(p, '\n') : NULL;
        if (nl) {
            snprintf(buf, size, "%.*s", (int)(nl - p), p);
            free(text);
            return true;
        }
        free(text);
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            return false;
        }
        usleep(10000);
    }
    return false;
}

static void sim_connect(sim_t *s)
{
    if (s->tcp) {
        s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ck_assert_msg(connect(s->fd, (struct sockaddr *)&a, sizeof a) == 0, "connect: %s", strerror(errno));
    } else {
        s->fd = open(s->path, O_RDWR | O_NOCTTY | O_CLOEXEC);
        ck_assert_msg(s->fd >= 0, "open %s: %s", s->path, strerror(errno));
        struct termios tio;
        ck_assert_int_eq(tcgetattr(s->fd, &tio), 0);
        cfmakeraw(&tio);
        ck_assert_int_eq(tcsetattr(s->fd, TCSANOW, &tio), 0);
    }
}

/* Starts the simulator on model with extra options (NULL-ended), connects. */
static void sim_start_v(sim_t *s, bool tcp, const char *model, const char *const *extra)
{
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->tcp = tcp;
    th_tempdir(s->dir, sizeof s->dir);
    snprintf(s->out, sizeof s->out, "%s/out", s->dir);
    snprintf(s->err, sizeof s->err, "%s/err", s->dir);
    snprintf(s->link, sizeof s->link, "%s/tty", s->dir);
    const char *argv[32] = {SIM_BIN, "--seed", "7", "--fault-commands"};
    int n = 4;
    if (tcp) {
        argv[n++] = "--tcp";
        argv[n++] = "0";
    } else {
        argv[n++] = "--link";
        argv[n++] = s->link;
    }
    for (size_t i = 0; extra && extra[i]; i++)
        argv[n++] = extra[i];
    argv[n++] = model;
    argv[n] = NULL;
    s->pid = th_spawn_to_files((char *const *)argv, s->out, s->err);
    char line[160];
    if (!out_line(s, 0, line, sizeof line)) {
        char *err = th_read_file(s->err);
        ck_abort_msg("labmq-siminst printed no address:\n%s", err ? err : "");
    }
    if (tcp) {
        ck_assert_msg(sscanf(line, "tcp:127.0.0.1:%d", &s->port) == 1, "unexpected first line \"%s\"", line);
        ck_assert_int_gt(s->port, 0);
    } else {
        ck_assert_msg(!strncmp(line, "/dev/pts/", 9), "unexpected first line \"%s\"", line);
        snprintf(s->path, sizeof s->path, "%s", line);
    }
    sim_connect(s);
}

/* sim_start(&s, tcp, model, extra options...) */
#define sim_start(s, tcp, ...)                                                                                       \
    do {                                                                                                             \
        const char *const args_[] = {__VA_ARGS__, NULL};                                                             \
        sim_start_v(s, tcp, args_[0], args_ + 1);                                                                    \
    } while (0)

static void sim_send(sim_t *s, const char *line)
{
    size_t n = strlen(line);
    char *b = malloc(n + 1);
    memcpy(b, line, n);
    b[n] = '\n';
    ck_assert_int_eq(write(s->fd, b, n + 1), (ssize_t)n + 1);
    free(b);
}

/* Reads one reply up to '\n' within timeout_ms; returns false on timeout or
 * EOF. */
static bool sim_read(sim_t *s, char *buf, size_t size, int timeout_ms)
{
    size_t n = 0;
    double deadline = th_now_ms() + timeout_ms;
    buf[0] = 0;
    while (n + 1 < size) {
        int left = (int)(deadline - th_now_ms());
        if (left <= 0)
            return false;
        struct pollfd pf = {.fd = s->fd, .events = POLLIN};
        if (poll(&pf, 1, left) <= 0)
            continue;
        ssize_t r = read(s->fd, buf + n, 1); /* byte by byte: never read past one reply */
        if (r <= 0)
            return false;
        if (buf[n] == '\n') {
            buf[n] = 0;
            return true;
        }
        n++;
        buf[n] = 0;
    }
    return false;
}

/* Sends a query and returns its reply in the caller's buffer; fails the
 * test when no reply comes within 5 s. */
static const char *q(sim_t *s, const char *line, char *buf, size_t size)
{
    sim_send(s, line);
    ck_assert_msg(sim_read(s, buf, size, 5000), "no reply to \"%s\" (got \"%s\")", line, buf);
    return buf;
}

#define Q(s, line) q(s, line, reply_, sizeof reply_)
#define EXPECT(s, line, want) ck_assert_str_eq(Q(s, line), want)

/* No reply within ms (a set command, a dropped reply, a failed query). */
static void expect_silence(sim_t *s, int ms)
{
    char buf[256];
    ck_assert_msg(!sim_read(s, buf, sizeof buf, ms), "unexpected reply \"%s\"", buf);
}

static void sim_stop(sim_t *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        int st = -1;
        ck_assert_int_eq(th_wait_exit(s->pid, 20000, &st), 0);
        char *err = th_read_file(s->err);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "labmq-siminst ended with 0x%x:\n%s", (unsigned)st,
                      err ? err : "");
        free(err);
        s->pid = 0;
    }
    th_rmtree(s->dir);
}

/* ---- Rigol DP832 ---- */

static void dp832_basics(bool tcp)
{
    char reply_[512];
    sim_t s;
    sim_start(&s, tcp, DP832);
    EXPECT(&s, "*IDN?", "RIGOL TECHNOLOGIES,DP832,DP8C000000000,00.01.16");
    EXPECT(&s, "SYST:ERR?", "0,\"No error\"");
    EXPECT(&s, ":APPL? CH1", "CH1:30V/3A,0.000,3.000");
    EXPECT(&s, ":APPL? CH3", "CH3:5V/3A,0.000,3.000");
    /* short, long, mixed case, optional nodes, numeric suffix */
    sim_send(&s, ":SOURce2:VOLTage:LEVel:IMMediate:AMPLitude 12.5");
    EXPECT(&s, ":sour2:volt?", "12.500");
    sim_send(&s, "SoUr2:CuRr 1.25E0");
    EXPECT(&s, ":SOURCE2:CURRENT?", "1.250");
    EXPECT(&s, ":APPL? CH2", "CH2:30V/3A,12.500,1.250");
    EXPECT(&s, ":APPL? CH2,VOLT", "12.500");
    EXPECT(&s, ":APPL? CH2,CURRent", "1.250");
    sim_send(&s, ":APPL CH3,3.3,0.5");
    EXPECT(&s, ":APPL? CH3", "CH3:5V/3A,3.300,0.500");
    /* channel selection */
    EXPECT(&s, ":INST?", "CH1");
    sim_send(&s, ":INST:NSEL 2");
    EXPECT(&s, ":INSTrument:SELect?", "CH2");
    EXPECT(&s, ":VOLT?", "12.500");
    sim_send(&s, ":INST CH3");
    EXPECT(&s, ":INST:NSEL?", "3");
    /* MIN/MAX per channel */
    EXPECT(&s, ":VOLT? MAX", "5.300");
    EXPECT(&s, ":SOUR1:VOLT? MAX", "32.000");
    sim_send(&s, ":SOUR1:VOLT MAX");
    EXPECT(&s, ":SOUR1:VOLT?", "32.000");
    /* ';' separated, with relative headers and several replies */
    EXPECT(&s, ":SOUR1:VOLT 1.5;CURR 0.25;:SOUR1:VOLT?;CURR?", "1.500;0.250");
    /* out of range leaves the value alone */
    sim_send(&s, ":SOUR3:VOLT 5.4");
    EXPECT(&s, ":SOUR3:VOLT?", "3.300");
    EXPECT(&s, "SYST:ERR?", "-222,\"Data out of range\"");
    EXPECT(&s, "SYST:ERR?", "0,\"No error\"");
    /* errors */
    sim_send(&s, ":VOLTAGEX 1");
    sim_send(&s, ":VOLT");
    sim_send(&s, ":VOLT 1.2.3");
    sim_send(&s, ":OUTP CH2,MAYBE");
    sim_send(&s, ":SOUR4:VOLT 1");
    sim_send(&s, ":VOLT 1,2");
    EXPECT(&s, ":SYSTem:ERRor?", "-113,\"Undefined header\"");
    EXPECT(&s, "SYST:ERR?", "-109,\"Missing parameter\"");
    EXPECT(&s, "SYST:ERR?", "-102,\"Syntax error\"");
    EXPECT(&s, "SYST:ERR?", "-224,\"Illegal parameter value\"");
    EXPECT(&s, "SYST:ERR?", "-114,\"Header suffix out of range\"");
    EXPECT(&s, "SYST:ERR?", "-108,\"Parameter not allowed\"");
    EXPECT(&s, "SYST:ERR?", "0,\"No error\"");
    /* a command error discards the rest of the line */
    sim_send(&s, ":BOGUS;:SOUR1:VOLT 7");
    EXPECT(&s, ":SOUR1:VOLT?", "1.500");
    EXPECT(&s, "*ESR?", "48"); /* command (32) and execution (16) errors since start */
    EXPECT(&s, "*ESR?", "0");
    EXPECT(&s, "*STB?", "4"); /* the error queue is not empty */
    sim_send(&s, "*CLS");
    EXPECT(&s, "*STB?", "0");
    EXPECT(&s, "SYST:ERR?", "0,\"No error\"");
    /* *RST restores the defaults, *OPC? answers 1 */
    sim_send(&s, ":OUTP CH1,ON");
    EXPECT(&s, "*RST;:APPL? CH2;:OUTP? CH1;*OPC?", "CH2:30V/3A,0.000,3.000;OFF;1");
    EXPECT(&s, ":INST?", "CH1");
    sim_stop(&s);
}

START_TEST(test_dp832_pty) { dp832_basics(false); }
END_TEST

START_TEST(test_dp832_tcp) { dp832_basics(true); }
END_TEST

/* Measured values follow the load: CV below the current limit, CC above. */
START_TEST(test_dp832_load)
{
    char reply_[512];
    sim_t s;
    sim_start(&s, false, DP832, "--set", "load@2=100");
    sim_send(&s, ":APPL CH2,8,1");
    EXPECT(&s, ":MEAS:ALL? CH2", "0.0000,0.0000,0.000"); /* output off */
    sim_send(&s, ":OUTP CH2,ON");
    EXPECT(&s, ":OUTP? CH2", "ON");
    EXPECT(&s, ":OUTP? CH1", "OFF");
    EXPECT(&s, ":MEAS:VOLT? CH2", "8.0000");
    EXPECT(&s, ":MEAS:CURR? CH2", "0.0800");
    EXPECT(&s, ":MEAS:POWE? CH2", "0.640");
    EXPECT(&s, ":OUTP:MODE? CH2", "CV");
    sim_send(&s, "#sim set load@2 4"); /* 8 V into 4 ohm wants 2 A: limited to 1 A */
    EXPECT(&s, ":MEAS:ALL? CH2", "4.0000,1.0000,4.000");
    EXPECT(&s, ":OUTP:MODE? CH2", "CC");
    sim_send(&s, "*RST"); /* the load is not instrument state */
    sim_send(&s, ":APPL CH2,2,3;:OUTP CH2,ON");
    EXPECT(&s, ":MEAS:CURR? CH2", "0.5000");
    sim_stop(&s);
}
END_TEST

/* ---- Keysight 34461A ---- */

START_TEST(test_34461a)
{
    char reply_[2048];
    sim_t s;
    sim_start(&s, true, DMM, "--set", "noise=0", "--set", "signal=1.5");
    EXPECT(&s, "*IDN?", "Keysight Technologies,34461A,MY00000000,A.02.14-02.40-02.14-00.49-02-01");
    EXPECT(&s, "SYST:ERR?", "+0,\"No error\"");
    EXPECT(&s, "READ?", "+1.50000000E+00");
    EXPECT(&s, "FETC?", "+1.50000000E+00");
    EXPECT(&s, "MEAS:VOLT:DC?", "+1.50000000E+00");
    EXPECT(&s, "MEASure:VOLTage? 10,DEF", "+1.50000000E+00");
    sim_send(&s, "#sim set signal -0.0123");
    sim_send(&s, "CONF:VOLT:DC 10");
    sim_send(&s, "SAMP:COUN 3");
    EXPECT(&s, "SAMP:COUN?", "+3");
    EXPECT(&s, "READ?", "-1.23000000E-02,-1.23000000E-02,-1.23000000E-02");
    sim_send(&s, "INIT");
    EXPECT(&s, "FETCh?", "-1.23000000E-02,-1.23000000E-02,-1.23000000E-02");
    /* settings in the model's number format, MIN/MAX, rounding to valid values */
    EXPECT(&s, "VOLT:RANG?;:VOLT:RANG:AUTO?", "+1.00000000E+01;0");
    sim_send(&s, "SENS:VOLT:DC:RANG 2");
    EXPECT(&s, "SENSe:VOLTage:DC:RANGe?", "+1.00000000E+01");
    sim_send(&s, "VOLT:RANG:AUTO ON");
    EXPECT(&s, "VOLT:RANG:AUTO?", "1");
    sim_send(&s, "VOLT:NPLC 0.5");
    EXPECT(&s, "VOLT:NPLC?", "+1.00000000E+00");
    EXPECT(&s, "VOLT:NPLC? MIN;NPLC? MAX", "+2.00000000E-02;+1.00000000E+02");
    sim_send(&s, "VOLT:NPLC 1000");
    EXPECT(&s, "SYST:ERR?", "-222,\"Data out of range\"");
    /* overload on a fixed range */
    sim_send(&s, "#sim set signal 5");
    sim_send(&s, "CONF:VOLT:DC 1");
    EXPECT(&s, "READ?", "+9.90000000E+37");
    sim_send(&s, "CONF:VOLT:DC AUTO");
    EXPECT(&s, "READ?", "+5.00000000E+00");
    /* enums answer their short form */
    sim_send(&s, "TRIG:SOUR bus");
    EXPECT(&s, "TRIGger:SOURce?", "BUS");
    sim_send(&s, "READ?");
    expect_silence(&s, 300);
    EXPECT(&s, "SYST:ERR?", "-214,\"Trigger deadlock\"");
    sim_send(&s, "TRIG:SOUR NEVER");
    EXPECT(&s, "SYST:ERR?", "-224,\"Illegal parameter value\"");
    /* FETCh? after *RST has nothing to return */
    sim_send(&s, "*RST");
    sim_send(&s, "FETC?");
    expect_silence(&s, 300);
    EXPECT(&s, "SYST:ERR?", "-230,\"Data corrupt or stale\"");
    /* a full queue: 20 entries, the last replaced by the overflow */
    sim_send(&s, "*CLS");
    for (int i = 0; i < 25; i++)
        sim_send(&s, "NOSUCH:CMD");
    EXPECT(&s, "*ESR?", "+32");
    EXPECT(&s, "*STB?", "+4");
    for (int i = 0; i < 19; i++)
        EXPECT(&s, "SYST:ERR?", "-113,\"Undefined header\"");
    EXPECT(&s, "SYST:ERR?", "-350,\"Error queue overflow\"");
    EXPECT(&s, "SYST:ERR?", "+0,\"No error\"");
    EXPECT(&s, "*STB?", "+0");
    sim_stop(&s);
}
END_TEST

/* Noise: readings differ, and stay near the signal. */
START_TEST(test_34461a_noise)
{
    char reply_[4096];
    sim_t s;
    sim_start(&s, false, DMM, "--set", "noise=0.001", "--set", "signal=2");
    sim_send(&s, "VOLT:NPLC 0.02;:SAMP:COUN 50");
    Q(&s, "READ?");
    int n = 0;
    double sum = 0, first = 0;
    bool differ = false;
    for (char *tok = strtok(reply_, ","); tok; tok = strtok(NULL, ",")) {
        double v = strtod(tok, NULL);
        ck_assert_msg(v > 1.99 && v < 2.01, "reading %s far from 2 V", tok);
        if (n == 0)
            first = v;
        differ |= v != first;
        sum += v;
        n++;
    }
    ck_assert_int_eq(n, 50);
    ck_assert(differ);
    ck_assert_double_eq_tol(sum / n, 2.0, 0.002);
    sim_stop(&s);
}
END_TEST

/* ---- Keithley 2400 ---- */

START_TEST(test_2400)
{
    char reply_[1024];
    sim_t s;
    sim_start(&s, true, SMU, "--set", "load=1000");
    EXPECT(&s, "*IDN?", "KEITHLEY INSTRUMENTS INC.,MODEL 2400,1234567,C30   Mar 17 2006 09:29:29/A02  /K/J");
    EXPECT(&s, ":SOUR:FUNC?", "VOLT");
    EXPECT(&s, ":SENS:FUNC?", "\"CURR:DC\"");
    EXPECT(&s, ":SENS:CURR:PROT?", "+1.050000E-04");
    EXPECT(&s, ":FORM:ELEM?", "VOLT,CURR,RES,TIME,STAT");
    sim_send(&s, ":READ?"); /* output off */
    expect_silence(&s, 300);
    EXPECT(&s, ":SYST:ERR?", "803,\"Not permitted with OUTPUT off\"");
    sim_send(&s, ":SOUR:VOLT:LEV 1;:SENS:CURR:PROT 0.01;:OUTP ON");
    EXPECT(&s, ":OUTP?", "1");
    /* V, I, R (not measured: 9.91E+37), time, status */
    Q(&s, ":READ?");
    double v, i, r, t, st;
    ck_assert_msg(sscanf(reply_, "%lf,%lf,%lf,%lf,%lf", &v, &i, &r, &t, &st) == 5, "%s", reply_);
    ck_assert_msg(!strncmp(reply_, "+1.000000E+00,+1.000000E-03,+9.910000E+37,+", 43), "%s", reply_);
    ck_assert_msg(!strcmp(reply_ + strlen(reply_) - 14, ",+2.150800E+04"), "%s", reply_);
    ck_assert(t >= 0 && t < 600);
    /* compliance: 100 V into 1 kohm wants 0.1 A, limited to 10 mA */
    sim_send(&s, ":FORM:ELEM VOLT,CURR");
    EXPECT(&s, ":FORM:ELEM?", "VOLT,CURR");
    sim_send(&s, ":SOUR:VOLT 100");
    EXPECT(&s, ":READ?", "+1.000000E+01,+1.000000E-02");
    EXPECT(&s, ":SENS:CURR:PROT:TRIP?", "1");
    /* current source with voltage compliance */
    sim_send(&s, ":SOUR:FUNC CURR;:SOUR:CURR -2E-3");
    EXPECT(&s, ":READ?", "-2.000000E+00,-2.000000E-03");
    sim_send(&s, ":SENS:FUNC 'VOLT','RES'");
    EXPECT(&s, ":SENS:FUNC?", "\"VOLT:DC\",\"CURR:DC\",\"RES\"");
    sim_send(&s, ":FORM:ELEM RES");
    EXPECT(&s, ":READ?", "+1.000000E+03");
    sim_send(&s, ":SENS:FUNC:OFF \"RES\"");
    EXPECT(&s, ":SENS:FUNC:OFF?", "\"RES\"");
    EXPECT(&s, ":SOUR:VOLT? MAX", "+2.100000E+02");
    sim_send(&s, ":SOUR:VOLT 300");
    EXPECT(&s, ":SYST:ERR?", "-222,\"Data out of range\"");
    EXPECT(&s, ":SYST:ERR?", "0,\"No error\"");
    sim_send(&s, "*RST");
    EXPECT(&s, ":OUTP?;:SOUR:FUNC?;:FORM:ELEM?", "0;VOLT;VOLT,CURR,RES,TIME,STAT");
    sim_stop(&s);
}
END_TEST

/* ---- faults ---- */

START_TEST(test_fault_drop_and_garble)
{
    char reply_[512];
    sim_t s;
    sim_start(&s, false, DP832);
    sim_send(&s, "#sim drop 2");
    sim_send(&s, "*IDN?");
    sim_send(&s, ":APPL? CH1");
    expect_silence(&s, 400);
    EXPECT(&s, ":INST?", "CH1"); /* the third reply comes, in step */
    sim_send(&s, "#sim garble 1");
    Q(&s, "*IDN?");
    const char *idn = "RIGOL TECHNOLOGIES,DP832,DP8C000000000,00.01.16";
    ck_assert_uint_eq(strlen(reply_), strlen(idn));
    ck_assert_str_ne(reply_, idn);
    ck_assert_ptr_nonnull(strchr(reply_, '~'));
    EXPECT(&s, "*IDN?", idn);
    sim_stop(&s);
}
END_TEST

START_TEST(test_fault_split_tcp)
{
    char buf[512];
    sim_t s;
    sim_start(&s, true, DP832, "--fault", "split 5 40");
    double t0 = th_now_ms();
    sim_send(&s, "*IDN?");
    ck_assert(sim_read(&s, buf, sizeof buf, 10000));
    double took = th_now_ms() - t0;
    ck_assert_str_eq(buf, "RIGOL TECHNOLOGIES,DP832,DP8C000000000,00.01.16");
    /* 48 bytes in 5-byte pieces 40 ms apart: 9 pauses, 360 ms */
    ck_assert_msg(took >= 300, "split reply took only %.0f ms", took);
    sim_send(&s, "#sim split 0 0");
    sim_send(&s, "*OPC?");
    ck_assert(sim_read(&s, buf, sizeof buf, 5000));
    ck_assert_str_eq(buf, "1");
    sim_stop(&s);
}
END_TEST

START_TEST(test_fault_delay_and_late)
{
    char buf[512];
    sim_t s;
    sim_start(&s, false, DP832, "--fault", "delay 300");
    double t0 = th_now_ms();
    sim_send(&s, "*OPC?");
    ck_assert(sim_read(&s, buf, sizeof buf, 5000));
    ck_assert_str_eq(buf, "1");
    ck_assert_msg(th_now_ms() - t0 >= 250, "delayed reply came after %.0f ms", th_now_ms() - t0);
    sim_send(&s, "#sim delay 0");
    /* A late reply: the client gives up on it, asks again, and the first
     * thing it reads is the old answer -- what "never out of step" guards. */
    sim_send(&s, "#sim late 600");
    sim_send(&s, ":INST?");
    ck_assert(!sim_read(&s, buf, sizeof buf, 200));
    sim_send(&s, "*IDN?");
    ck_assert(sim_read(&s, buf, sizeof buf, 5000));
    ck_assert_str_eq(buf, "CH1");
    ck_assert(sim_read(&s, buf, sizeof buf, 5000));
    ck_assert_str_eq(buf, "RIGOL TECHNOLOGIES,DP832,DP8C000000000,00.01.16");
    sim_stop(&s);
}
END_TEST

/* Waits for POLLHUP or EOF on fd. */
static bool see_hangup(int fd, int ms)
{
    double deadline = th_now_ms() + ms;
    while (th_now_ms() < deadline) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 50) > 0) {
            if (pf.revents & (POLLHUP | POLLERR))
                return true;
            char c;
            ssize_t r = read(fd, &c, 1);
            if (r == 0 || (r < 0 && errno == EIO))
                return true;
        }
    }
    return false;
}

START_TEST(test_fault_hangup_pty)
{
    char reply_[512];
    sim_t s;
    sim_start(&s, false, DP832);
    sim_send(&s, ":SOUR1:VOLT 2.5");
    sim_send(&s, "#sim hangup 500");
    ck_assert_msg(see_hangup(s.fd, 5000), "no hang-up seen on the pty");
    close(s.fd);
    s.fd = -1;
    /* back on a new pty; the link follows it */
    char second[160];
    ck_assert_msg(out_line(&s, 1, second, sizeof second), "no second pty path printed");
    ck_assert(!strncmp(second, "/dev/pts/", 9));
    char target[160] = "";
    double deadline = th_now_ms() + 5000;
    while (th_now_ms() < deadline) {
        ssize_t n = readlink(s.link, target, sizeof target - 1);
        if (n > 0) {
            target[n] = 0;
            break;
        }
        usleep(10000);
    }
    ck_assert_str_eq(target, second);
    snprintf(s.path, sizeof s.path, "%s", s.link);
    sim_connect(&s);
    EXPECT(&s, ":SOUR1:VOLT?", "2.500"); /* the instrument kept its state */
    sim_stop(&s);
    struct stat st;
    ck_assert_int_ne(lstat(s.link, &st), 0); /* the link is removed on exit */
}
END_TEST

START_TEST(test_fault_hangup_tcp)
{
    char reply_[512];
    sim_t s;
    sim_start(&s, true, DP832, "--fault", "hangup 300 2");
    EXPECT(&s, "*OPC?", "1");
    EXPECT(&s, "*OPC?", "1"); /* the second reply still comes, then the line drops */
    ck_assert_msg(see_hangup(s.fd, 5000), "no hang-up seen on TCP");
    close(s.fd);
    s.fd = -1;
    double deadline = th_now_ms() + 5000;
    bool served = false;
    while (!served && th_now_ms() < deadline) {
        sim_connect(&s); /* refused (closed at once) while down */
        sim_send(&s, "*IDN?");
        char buf[256];
        served = sim_read(&s, buf, sizeof buf, 500);
        if (served)
            ck_assert_str_eq(buf, "RIGOL TECHNOLOGIES,DP832,DP8C000000000,00.01.16");
        else {
            close(s.fd);
            s.fd = -1;
            usleep(50000);
        }
    }
    ck_assert_msg(served, "not serving again after the hang-up");
    sim_stop(&s);
}
END_TEST

/* One TCP client at a time: a second one is closed at once. */
START_TEST(test_tcp_one_client)
{
    char reply_[512];
    sim_t s;
    sim_start(&s, true, DP832);
    EXPECT(&s, "*OPC?", "1");
    sim_t other = s;
    sim_connect(&other);
    ck_assert_msg(see_hangup(other.fd, 5000), "a second client was not refused");
    close(other.fd);
    EXPECT(&s, "*OPC?", "1");
    close(s.fd);
    double deadline = th_now_ms() + 5000;
    bool ok = false;
    while (!ok && th_now_ms() < deadline) { /* after the first leaves, the next is served */
        sim_connect(&s);
        sim_send(&s, "*OPC?");
        ok = sim_read(&s, reply_, sizeof reply_, 500);
        if (!ok)
            close(s.fd);
    }
    ck_assert(ok);
    ck_assert_str_eq(reply_, "1");
    sim_stop(&s);
}
END_TEST

/* --time-scale divides command delays: READ? at 100 NPLC takes 2 s of
 * simulated time. */
START_TEST(test_time_scale)
{
    char reply_[512];
    double took[2];
    const char *scale[2] = {"1", "50"};
    for (int k = 0; k < 2; k++) {
        sim_t s;
        sim_start(&s, false, DMM, "--time-scale", scale[k], "--set", "noise=0");
        sim_send(&s, "VOLT:NPLC 100");
        EXPECT(&s, "*OPC?", "1");
        double t0 = th_now_ms();
        EXPECT(&s, "READ?", "+1.23456789E+00");
        took[k] = th_now_ms() - t0;
        sim_stop(&s);
    }
    ck_assert_msg(took[0] >= 1800, "READ? at scale 1 took %.0f ms, expected ~2000", took[0]);
    ck_assert_msg(took[1] < took[0] / 3, "scale 50 took %.0f ms vs %.0f ms at scale 1", took[1], took[0]);
}
END_TEST

START_TEST(test_log_and_crlf)
{
    char reply_[512];
    sim_t s;
    sim_start(&s, false, DP832, "--log");
    ck_assert_int_eq(write(s.fd, "*IDN?\r\n", 7), 7); /* \r\n accepted */
    ck_assert(sim_read(&s, reply_, sizeof reply_, 5000));
    ck_assert_str_eq(reply_, "RIGOL TECHNOLOGIES,DP832,DP8C000000000,00.01.16");
    close(s.fd);
    s.fd = -1;
    kill(s.pid, SIGINT);
    int st;
    ck_assert_int_eq(th_wait_exit(s.pid, 20000, &st), 0);
    s.pid = 0;
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char *err = th_slurp(s.err);
    ck_assert_msg(strstr(err, "< *IDN?\n") && strstr(err, "> RIGOL TECHNOLOGIES,DP832"), "log:\n%s", err);
    free(err);
    sim_stop(&s);
}
END_TEST


/* A slewing setting ramps in simulated time: 10 V/s to 100 V takes 10 s at
 * scale 1, a hundredth of a second at scale 1000. */
START_TEST(test_slew)
{
    char reply_[512], dir[128], model[192];
    th_tempdir(dir, sizeof dir);
    snprintf(model, sizeof model, "%s/ramp.yaml", dir);
    th_write_file(model, "identity: \"SIM,RAMP,0,1\"\n"
                         "variables:\n"
                         "  - {name: volt, type: float, default: \"0\", min: \"0\", max: \"100\", slew: \"10\",\n"
                         "     format: \"%.3f\"}\n"
                         "  - {name: actual, type: float, expr: \"volt\", format: \"%.3f\"}\n"
                         "commands:\n"
                         "  - {header: \"VOLTage\", var: volt}\n"
                         "  - {header: \"MEASure?\", reply: \"{actual}\"}\n");
    sim_t s;
    sim_start(&s, false, model);
    sim_send(&s, "VOLT 100");
    EXPECT(&s, "VOLT?", "100.000"); /* the setting at once */
    double a = strtod(Q(&s, "MEAS?"), NULL);
    ck_assert_msg(a >= 0 && a < 50, "after a moment the output is at %g V, expected on its way", a);
    usleep(100000);
    double b = strtod(Q(&s, "MEAS?"), NULL);
    ck_assert_msg(b > a && b < 100, "ramp: %g then %g", a, b);
    sim_send(&s, "*RST");
    EXPECT(&s, "MEAS?", "0.000"); /* *RST sets, no ramp */
    sim_stop(&s);

    sim_start(&s, false, model, "--time-scale", "1000");
    double t0 = th_now_ms();
    sim_send(&s, "VOLT 100");
    while (strcmp(Q(&s, "MEAS?"), "100.000") && th_now_ms() < t0 + 8000)
        usleep(20000);
    ck_assert_str_eq(reply_, "100.000");
    /* at scale 1 this takes 10 s */
    ck_assert_msg(th_now_ms() - t0 < 5000, "the 10 s ramp took %.0f ms at scale 1000", th_now_ms() - t0);
    sim_stop(&s);
    th_rmtree(dir);
}
END_TEST

/* ---- command line and model errors ---- */

static int run_sim(const char *const *args, char **err_out)
{
    char dir[128], out[192], err[192];
    th_tempdir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(err, sizeof err, "%s/err", dir);
    const char *argv[16] = {SIM_BIN};
    int n = 1;
    for (; args[n - 1]; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    pid_t pid = th_spawn_to_files((char *const *)argv, out, err);
    int st = -1;
    ck_assert_int_eq(th_wait_exit(pid, 20000, &st), 0);
    char *o = th_slurp(out), *e = th_slurp(err);
    size_t lo = strlen(o), le = strlen(e);
    char *both = malloc(lo + le + 1);
    memcpy(both, o, lo);
    memcpy(both + lo, e, le + 1);
    free(o);
    free(e);
    *err_out = both;
    th_rmtree(dir);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void expect_model_error(const char *yaml, const char *want)
{
    char dir[128], path[192];
    th_tempdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/bad.yaml", dir);
    th_write_file(path, yaml);
    char *msg;
    const char *args[] = {"--check", path, NULL};
    int rc = run_sim(args, &msg);
    ck_assert_msg(rc == 2, "exit %d for a bad model:\n%s", rc, msg);
    char full[512];
    snprintf(full, sizeof full, "%s:%s", path, want);
    ck_assert_msg(strstr(msg, full), "expected \"%s\" in:\n%s", full, msg);
    free(msg);
    th_rmtree(dir);
}

START_TEST(test_bad_models)
{
    expect_model_error("identity: x\ncommands:\n  - header: \"*IDN?\n",
                       "4:1: YAML syntax: found unexpected end of stream (while scanning a quoted scalar at line 3)");
    expect_model_error("identity: x\ncolour: red\ncommands: []\n", "2: unknown key \"colour\"");
    expect_model_error("identity: x\ncommands:\n  - {header: \"VOLT[:LEV\"}\n", "3: header: unbalanced '['");
    expect_model_error("identity: x\nvariables:\n  - {name: v, type: float}\ncommands:\n"
                       "  - header: \"VOLT\"\n    var: v\n    do: \"v = w * 2\"\n",
                       "7: do \"v = w * 2\": Unexpected token \"w\"");
    expect_model_error("identity: x\ncommands:\n  - {header: \"VOLT?\", reply: \"{nothing}\"}\n",
                       "3: reply \"{nothing}\": {nothing} is neither a variable");
    expect_model_error("identity: x\nvariables:\n  - {name: v, type: double}\ncommands: []\n",
                       "3: type \"double\" is not one of");
    expect_model_error("identity: x\nvariables:\n  - {name: v, type: float, format: \"%s\"}\ncommands: []\n",
                       "3: format \"%s\": expected one");
}
END_TEST

START_TEST(test_usage)
{
    char *msg;
    const char *help[] = {"--help", NULL};
    ck_assert_int_eq(run_sim(help, &msg), 0);
    ck_assert(strstr(msg, "--time-scale") && strstr(msg, "--fault") && strstr(msg, "Exit status"));
    free(msg);
    const char *bad[] = {"--tcp", "99999", DP832, NULL};
    ck_assert_int_eq(run_sim(bad, &msg), 2);
    ck_assert_ptr_nonnull(strstr(msg, "--tcp"));
    free(msg);
    const char *fault[] = {"--fault", "explode 3", DP832, NULL};
    ck_assert_int_eq(run_sim(fault, &msg), 2);
    ck_assert_ptr_nonnull(strstr(msg, "unknown fault \"explode\""));
    free(msg);
    const char *missing[] = {"/nonexistent/model.yaml", NULL};
    ck_assert_int_eq(run_sim(missing, &msg), 2);
    ck_assert_ptr_nonnull(strstr(msg, "/nonexistent/model.yaml: cannot open"));
    free(msg);
    const char *models[] = {"--check", DP832, NULL};
    ck_assert_int_eq(run_sim(models, &msg), 0);
    free(msg);
    const char *dmm[] = {"--check", DMM, NULL};
    ck_assert_int_eq(run_sim(dmm, &msg), 0);
    free(msg);
    const char *smu[] = {"--check", SMU, NULL};
    ck_assert_int_eq(run_sim(smu, &msg), 0);
    free(msg);
}
END_TEST


/* ---- units: SCPI lexical rules and expressions ---- */

static bool pmatch(const char *pattern, const char *typed, long *suffix)
{
    sim_pattern_t p;
    char err[256];
    ck_assert_msg(sim_pattern_parse(&p, pattern, err, sizeof err) == 0, "%s: %s", pattern, err);
    sim_header_t h;
    bool ok = sim_header_split(&h, typed, strlen(typed)) == 0 && sim_pattern_match(&p, &h, suffix);
    sim_pattern_free(&p);
    return ok;
}

START_TEST(test_unit_patterns)
{
    long sfx;
    const char *src = "[:SOURce#]:VOLTage[:LEVel][:IMMediate]";
    ck_assert(pmatch(src, "VOLT", &sfx) && sfx == 0);
    ck_assert(pmatch(src, ":sour2:volt", &sfx) && sfx == 2);
    ck_assert(pmatch(src, "SOURCE:VOLTAGE:LEVEL:IMM", &sfx));
    ck_assert(pmatch(src, "volt:imm", &sfx));
    ck_assert(!pmatch(src, "VOLTA", &sfx));       /* neither short nor long */
    ck_assert(!pmatch(src, "SOUR:LEV", &sfx));    /* VOLTage is required */
    ck_assert(!pmatch(src, "VOLT:LEV:LEV", &sfx));
    ck_assert(!pmatch(src, "VOLT2", &sfx));       /* no suffix but 1 where no '#' */
    ck_assert(pmatch(src, "VOLT1", &sfx));
    ck_assert(pmatch("MEASure[:SCALar]:CURRent[:DC]?", "MEAS:SCAL:CURR:DC?", &sfx));
    ck_assert(pmatch("*IDN?", "*idn?", &sfx));
    ck_assert(pmatch(":OUTPut[1|2|3][:STATe]", "OUTP3", &sfx) && sfx == 3); /* the guides' notations */
    ck_assert(pmatch("[:SOURce[<n>]]:CURRent", "SOUR2:CURR", &sfx) && sfx == 2);
    ck_assert(pmatch("[:SOURce[<n>]]:CURRent", "CURR", &sfx) && sfx == 0);

    sim_pattern_t p;
    char err[256];
    ck_assert_int_eq(sim_pattern_parse(&p, "VOLT[:LEV", err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "unbalanced"));
    ck_assert_int_eq(sim_pattern_parse(&p, "volt", err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "no upper-case short form"));
    ck_assert_int_eq(sim_pattern_parse(&p, "VOLTage", err, sizeof err), 0);
    ck_assert(p.n == 1 && !strcmp(p.nodes[0].shortf, "VOLT") && !strcmp(p.nodes[0].longf, "VOLTAGE"));
    ck_assert(sim_word_match(&p, "voltage") && !sim_word_match(&p, "VOLTAG"));
    sim_pattern_free(&p);

    sim_header_t h;
    ck_assert_int_eq(sim_header_split(&h, "::VOLT", 6), -1);
    ck_assert_int_eq(sim_header_split(&h, "VOLT:", 5), -1);
    ck_assert_int_eq(sim_header_split(&h, ":*IDN?", 6), -1);
    ck_assert_int_eq(sim_header_split(&h, "VO#LT", 5), -1);
    ck_assert_int_eq(sim_header_split(&h, "*IDN?", 5), 0);
    ck_assert(h.query && h.n == 1 && !strcmp(h.name[0], "*IDN"));
}
END_TEST

START_TEST(test_unit_tokens)
{
    struct {
        const char *in;
        sim_tok_kind_t kind;
        double num;
        const char *text;
    } const cases[] = {
        {"1", SIM_TOK_NUMBER, 1, NULL},         {"+1.5E-3", SIM_TOK_NUMBER, 1.5e-3, NULL},
        {".5", SIM_TOK_NUMBER, 0.5, NULL},      {"-2.", SIM_TOK_NUMBER, -2, NULL},
        {"1e", SIM_TOK_BAD, 0, NULL},           {"1.2.3", SIM_TOK_BAD, 0, NULL},
        {"0x10", SIM_TOK_BAD, 0, NULL},         {"1e999", SIM_TOK_BAD, 0, NULL},
        {"inf", SIM_TOK_WORD, 0, "inf"},        {"MAX", SIM_TOK_WORD, 0, "MAX"},
        {"'it''s'", SIM_TOK_STRING, 0, "it's"}, {"\"VOLT:DC\"", SIM_TOK_STRING, 0, "VOLT:DC"},
        {"\"open", SIM_TOK_BAD, 0, NULL},       {"'a'b", SIM_TOK_BAD, 0, NULL},
        {"O N", SIM_TOK_BAD, 0, NULL},          {"", SIM_TOK_BAD, 0, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sim_tok_t t;
        sim_tok_classify(&t, cases[i].in, strlen(cases[i].in));
        ck_assert_msg(t.kind == cases[i].kind, "\"%s\": kind %d, expected %d", cases[i].in, t.kind, cases[i].kind);
        if (t.kind == SIM_TOK_NUMBER)
            ck_assert_double_eq(t.num, cases[i].num);
        if (cases[i].text)
            ck_assert_str_eq(t.text, cases[i].text);
    }
}
END_TEST

START_TEST(test_unit_expressions)
{
    sim_scope_t *sc = sim_scope_new(42);
    int a = sim_scope_add(sc, "a", false, 2);
    ck_assert_int_ge(sim_scope_add(sc, "k", true, 10), 0);
    ck_assert_int_eq(sim_scope_add(sc, "a", false, 0), -1); /* duplicate */
    char err[256];
    sim_expr_t *e = sim_expr_new(sc, "a = a * 3, a + k", err, sizeof err);
    ck_assert_msg(e != NULL, "%s", err);
    ck_assert_double_eq(sim_scope_slots(sc)[a], 2); /* the trial run at load left no trace */
    double v;
    ck_assert_int_eq(sim_expr_eval(e, &v, err, sizeof err), 0);
    ck_assert_double_eq(v, 16);
    ck_assert_double_eq(sim_scope_slots(sc)[a], 6);
    sim_expr_destroy(&e);
    ck_assert_ptr_null(e);

    const char *bad[] = {"a +", "nosuch * 2", "k = 1", "min(", NULL};
    for (size_t i = 0; bad[i]; i++) {
        ck_assert_ptr_null(sim_expr_new(sc, bad[i], err, sizeof err));
        ck_assert_msg(err[0], "no message for \"%s\"", bad[i]);
    }
    struct {
        const char *x;
        double want;
    } const ok[] = {{"not(0) && not(a == 1)", 1}, {"clamp(a, 0, 5)", 5}, {"a > 5 ? min(a, 1) : 9", 1},
                    {"gauss(0)", 0},             {"uniform(3, 3)", 3},  {"abs(-2) ^ 2", 4}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        e = sim_expr_new(sc, ok[i].x, err, sizeof err);
        ck_assert_msg(e != NULL, "%s: %s", ok[i].x, err);
        ck_assert_int_eq(sim_expr_eval(e, &v, err, sizeof err), 0);
        ck_assert_msg(v == ok[i].want, "%s = %g, expected %g", ok[i].x, v, ok[i].want);
        sim_expr_destroy(&e);
    }
    /* noise: seeded, so reproducible; varying from draw to draw */
    sim_scope_t *sc2 = sim_scope_new(42), *sc3 = sim_scope_new(42);
    sim_expr_t *g1 = sim_expr_new(sc3, "gauss(1)", err, sizeof err);
    sim_expr_t *g2 = sim_expr_new(sc2, "gauss(1)", err, sizeof err);
    double x1, x2, y1;
    ck_assert_int_eq(sim_expr_eval(g1, &x1, err, sizeof err), 0);
    ck_assert_int_eq(sim_expr_eval(g2, &x2, err, sizeof err), 0);
    ck_assert_int_eq(sim_expr_eval(g1, &y1, err, sizeof err), 0);
    ck_assert_double_eq(x1, x2);
    ck_assert_double_ne(x1, y1);
    sim_expr_destroy(&g1);
    sim_expr_destroy(&g2);
    sim_scope_destroy(&sc2);
    sim_scope_destroy(&sc3);
    sim_scope_destroy(&sc);
    ck_assert_ptr_null(sc);
}
END_TEST

static Suite *siminst_suite(void)
{
    Suite *s = suite_create("siminst");
    TCase *tc = tcase_create("siminst");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_dp832_pty);
    tcase_add_test(tc, test_dp832_tcp);
    tcase_add_test(tc, test_dp832_load);
    tcase_add_test(tc, test_34461a);
    tcase_add_test(tc, test_34461a_noise);
    tcase_add_test(tc, test_2400);
    tcase_add_test(tc, test_fault_drop_and_garble);
    tcase_add_test(tc, test_fault_split_tcp);
    tcase_add_test(tc, test_fault_delay_and_late);
    tcase_add_test(tc, test_fault_hangup_pty);
    tcase_add_test(tc, test_fault_hangup_tcp);
    tcase_add_test(tc, test_tcp_one_client);
    tcase_add_test(tc, test_time_scale);
    tcase_add_test(tc, test_slew);
    tcase_add_test(tc, test_log_and_crlf);
    tcase_add_test(tc, test_bad_models);
    tcase_add_test(tc, test_usage);
    suite_add_tcase(s, tc);
    TCase *units = tcase_create("units");
    tcase_add_test(units, test_unit_patterns);
    tcase_add_test(units, test_unit_tokens);
    tcase_add_test(units, test_unit_expressions);
    suite_add_tcase(s, units);
    return s;
}

int main(void) { return th_run_suite(siminst_suite()); }
