/* Config files (lmq_config_*) and default endpoints (lmq_default_endpoint).
 *
 * Bad configs are a table: each must fail with its own message and, where the
 * fault has a place in the file, with that line and column. The endpoint tests
 * point XDG_RUNTIME_DIR at a temporary directory (Check forks per test, so
 * setenv stays inside the test). */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "device_internal.h"
#include "harness.h"
#include "labmq/labmq.h"

static const char *opt_value(const lmq_config_device_t *d, const char *name)
{
    for (const char *const *o = d->options; o && o[0]; o += 2)
        if (strcmp(o[0], name) == 0)
            return o[1];
    return NULL;
}

static size_t opt_count(const lmq_config_device_t *d)
{
    size_t n = 0;
    for (const char *const *o = d->options; o && o[0]; o += 2)
        n++;
    return n;
}

static const char good_yaml[] = "# a small lab\n"
                                "control: ipc:///tmp/lab/control\n"
                                "data: tcp://127.0.0.1:5556\n"
                                "log_level: debug\n"
                                "devices:\n"
                                "  - name: psu1\n"
                                "    driver: sim-psu\n"
                                "    options: {load_ohms: 100, load_diode: false}\n"
                                "  - name: cam.1\n"
                                "    driver: sim-camera\n"
                                "    connection: \"usb:1234:5678\"\n"
                                "    options:\n"
                                "      fps: 2.5\n"
                                "      width: 64\n"
                                "  - {name: daq_1, driver: sim-daq, options: }\n";

START_TEST(test_valid)
{
    char *err = (char *)"untouched";
    lmq_config_t *cfg = lmq_config_parse(good_yaml, strlen(good_yaml), &err);
    ck_assert_msg(cfg != NULL, "%s", err ? err : "(no message)");
    ck_assert_ptr_null(err);
    ck_assert_str_eq(lmq_config_control(cfg), "ipc:///tmp/lab/control");
    ck_assert_str_eq(lmq_config_data(cfg), "tcp://127.0.0.1:5556");
    ck_assert_str_eq(lmq_config_log_level(cfg), "debug");
    ck_assert_uint_eq(lmq_config_device_count(cfg), 3);

    const lmq_config_device_t *d = lmq_config_device(cfg, 0);
    ck_assert_str_eq(d->name, "psu1");
    ck_assert_str_eq(d->driver, "sim-psu");
    ck_assert_str_eq(d->connection, "");
    ck_assert_uint_eq(opt_count(d), 2);
    ck_assert_str_eq(opt_value(d, "load_ohms"), "100");
    ck_assert_str_eq(opt_value(d, "load_diode"), "false");

    d = lmq_config_device(cfg, 1);
    ck_assert_str_eq(d->name, "cam.1");
    ck_assert_str_eq(d->connection, "usb:1234:5678");
    ck_assert_uint_eq(opt_count(d), 2);
    ck_assert_str_eq(opt_value(d, "fps"), "2.5");
    ck_assert_str_eq(opt_value(d, "width"), "64");

    d = lmq_config_device(cfg, 2);
    ck_assert_str_eq(d->name, "daq_1");
    ck_assert_ptr_nonnull(d->options); /* empty list, not NULL */
    ck_assert_uint_eq(opt_count(d), 0);

    ck_assert_ptr_null(lmq_config_device(cfg, 3));
    lmq_config_destroy(&cfg);
    ck_assert_ptr_null(cfg);
    lmq_config_destroy(&cfg);
    lmq_config_destroy(NULL);
}
END_TEST

START_TEST(test_minimal_defaults)
{
    static const char y[] = "devices: []\n";
    char *err = NULL;
    lmq_config_t *cfg = lmq_config_parse(y, strlen(y), &err);
    ck_assert_msg(cfg != NULL, "%s", err ? err : "");
    ck_assert_ptr_null(lmq_config_control(cfg));
    ck_assert_ptr_null(lmq_config_data(cfg));
    ck_assert_ptr_null(lmq_config_log_level(cfg));
    ck_assert_uint_eq(lmq_config_device_count(cfg), 0);
    lmq_config_destroy(&cfg);
    /* err may be NULL: the caller does not want the message. */
    ck_assert_ptr_null(lmq_config_parse("x: [", 4, NULL));
}
END_TEST

static const struct bad {
    const char *what, *yaml;
    const char *want[3]; /* substrings of the message */
} bad[] = {
    {"syntax error", "devices:\n  - name: a\n    driver: \"sim-psu\n", {"<config>:4:1:", "syntax error"}},
    {"tab", "devices: []\n\tcontrol: x\n", {"<config>:2:1:", "syntax error"}},
    {"unknown top-level key", "control: ipc:///tmp/x\n\ndevices: []\nfoo: 1\n",
     {"<config>:4:1:", "unknown key 'foo'", "devices"}},
    {"unknown device key", "devices:\n  - name: a\n    driver: sim-psu\n    drvier: x\n",
     {"<config>:4:5:", "device 'a'", "unknown key 'drvier'"}},
    {"unknown driver", "devices:\n  - name: x\n    driver: sim-foo\n",
     {"<config>:3:13:", "device 'x': unknown driver 'sim-foo'", "sim-psu"}},
    {"unknown driver with options", "devices:\n  - name: x\n    driver: sim-foo\n    options: {nope: 1}\n",
     {"<config>:3:13:", "unknown driver 'sim-foo'", "built-in drivers:"}},
    {"unknown option", "devices:\n  - name: psu1\n    driver: sim-psu\n    options:\n      load_ohm: 5\n",
     {"<config>:5:7:", "option 'load_ohm' is not an option of driver sim-psu", "load_ohms"}},
    {"option of another driver", "devices:\n  - name: psu1\n    driver: sim-psu\n    options: {fps: 10}\n",
     {"<config>:4:15:", "device 'psu1': option 'fps' is not an option of driver sim-psu", "its options:"}},
    {"bad float", "devices:\n  - name: psu1\n    driver: sim-psu\n    options: {load_ohms: lots}\n",
     {"<config>:4:26:", "option 'load_ohms' must be a number", "'lots'"}},
    {"bad bool", "devices:\n  - name: psu1\n    driver: sim-psu\n    options: {load_diode: maybe}\n",
     {"<config>:4:27:", "option 'load_diode' must be a bool"}},
    {"bad int", "devices:\n  - name: cam\n    driver: sim-camera\n    options: {width: 6.5}\n",
     {"<config>:4:22:", "option 'width' must be an integer"}},
    {"option value is a list", "devices:\n  - name: psu1\n    driver: sim-psu\n    options: {load_ohms: [1, 2]}\n",
     {"<config>:4:26:", "load_ohms", "expected a scalar value, found a list"}},
    {"duplicate device name", "devices:\n  - name: a\n    driver: sim-psu\n  - name: a\n    driver: sim-daq\n",
     {"<config>:4:11:", "device 'a': duplicate name", "line 2"}},
    {"duplicate key", "devices:\n  - name: a\n    driver: sim-psu\n    name: b\n",
     {"<config>:4:5:", "duplicate key 'name'"}},
    {"missing name", "devices:\n  - name: a\n    driver: sim-psu\n  - driver: sim-daq\n",
     {"<config>:4:5:", "devices[1]", "missing required key 'name'"}},
    {"missing driver", "devices:\n  - name: a\n", {"<config>:2:5:", "device 'a'", "missing required key 'driver'"}},
    {"missing devices", "log_level: info\n", {"<config>:1:1:", "missing required key 'devices'"}},
    {"slash in name", "devices:\n  - name: a/b\n    driver: sim-psu\n", {"<config>:2:11:", "'a/b' is invalid"}},
    {"hash in name", "devices:\n  - name: \"a#b\"\n    driver: sim-psu\n", {"<config>:2:11:", "'a#b' is invalid"}},
    {"name too long", "devices:\n  - name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n    driver: sim-psu\n",
     {"<config>:2:11:", "is invalid", "64"}},
    {"empty name", "devices:\n  - name: \"\"\n    driver: sim-psu\n", {"<config>:2:11:", "'' is invalid"}},
    {"devices not a list", "devices: {a: 1}\n", {"<config>:1:10:", "expected a list, found a mapping"}},
    {"device not a mapping", "devices:\n  - psu1\n", {"<config>:2:5:", "expected a mapping"}},
    {"top level not a mapping", "- a\n", {"<config>:1:1:", "expected a mapping"}},
    {"bad log level", "log_level: loud\ndevices: []\n", {"<config>:1:12:", "log_level 'loud'"}},
    {"bad endpoint", "devices: []\ndata: /tmp/sock\n", {"<config>:2:7:", "data endpoint '/tmp/sock'"}},
    {"fault_after out of range", "devices: []\nfault_after: -1\n", {"<config>:2:14:", "fault_after -1 s", "0..3600"}},
    {"scpi without a connection",
     "devices:\n  - name: k\n    driver: scpi\n    options: {model: " LMQ_SOURCE_DIR
     "/examples/instruments/keithley-2400.yaml}\n",
     {"<config>:2:5:", "device 'k'", "needs a connection"}},
    {"empty", "", {"<config>: ", "empty"}},
    {"only a comment", "# nothing yet\n", {"empty"}},
};

START_TEST(test_bad)
{
    const struct bad *b = &bad[_i];
    char *err = NULL;
    lmq_config_t *cfg = lmq_config_parse(b->yaml, strlen(b->yaml), &err);
    ck_assert_msg(cfg == NULL, "%s: accepted", b->what);
    ck_assert_msg(err != NULL, "%s: no message", b->what);
    for (int k = 0; k < 3 && b->want[k]; k++)
        ck_assert_msg(strstr(err, b->want[k]) != NULL, "%s: message \"%s\" lacks \"%s\"", b->what, err, b->want[k]);
    free(err);
}
END_TEST

/* ---- files ---- */

START_TEST(test_load_file)
{
    char tmpdir[64];
    th_tempdir(tmpdir, sizeof tmpdir);
    char path[128], *err = NULL;
    snprintf(path, sizeof path, "%s/lab.yaml", tmpdir);
    th_write_file(path, good_yaml);
    lmq_config_t *cfg = lmq_config_load(path, &err);
    ck_assert_msg(cfg != NULL, "%s", err ? err : "");
    ck_assert_uint_eq(lmq_config_device_count(cfg), 3);
    lmq_config_destroy(&cfg);

    /* Messages name the file. */
    th_write_file(path, "devices:\n  - name: p\n    driver: sim-psu\n    options: {fps: 1}\n");
    ck_assert_ptr_null(lmq_config_load(path, &err));
    char want[160];
    snprintf(want, sizeof want, "%s:4:15: device 'p': option 'fps'", path);
    ck_assert_msg(strstr(err, want) != NULL, "%s", err);
    free(err);

    snprintf(path, sizeof path, "%s/missing.yaml", tmpdir);
    ck_assert_ptr_null(lmq_config_load(path, &err));
    ck_assert_msg(strstr(err, path) && strstr(err, strerror(ENOENT)), "%s", err);
    free(err);

    ck_assert_ptr_null(lmq_config_load(tmpdir, &err)); /* a directory */
    ck_assert_msg(strstr(err, tmpdir) != NULL, "%s", err);
    free(err);

    ck_assert_ptr_null(lmq_config_load(NULL, &err));
    ck_assert_ptr_nonnull(err);
    free(err);
    th_rmtree(tmpdir);
}
END_TEST

/* Everything the config accepts, the daemon accepts too (same option parser). */
START_TEST(test_apply)
{
    char *err = NULL;
    lmq_config_t *cfg = lmq_config_parse(good_yaml, strlen(good_yaml), &err);
    ck_assert_msg(cfg != NULL, "%s", err ? err : "");
    void *zctx = zmq_ctx_new();
    lmq_daemon_t *d = lmq_daemon_new(zctx, "inproc://cfg-control", "inproc://cfg-data", NULL);
    ck_assert_ptr_nonnull(d);
    int rc = lmq_config_apply(cfg, d, &err);
    ck_assert_msg(rc == 0, "apply: %s", err ? err : "");
    /* The daemon's own refusal comes back as the message. */
    ck_assert_int_eq(lmq_config_apply(cfg, d, &err), LMQ_ECONFIG);
    ck_assert_msg(err && strstr(err, "psu1") && !strstr(err, "device 'psu1': device"), "%s", err ? err : "");
    free(err);
    ck_assert_int_eq(lmq_daemon_start(d), 0);
    ck_assert_int_eq(lmq_daemon_wait_ready(d, 20000), 0);

    lmq_proxy_t *p = lmq_proxy_new(zctx, "inproc://cfg-control", NULL);
    char *json = NULL;
    ck_assert_int_eq(lmq_proxy_list(p, &json), 0);
    ck_assert_msg(strstr(json, "\"psu1\"") && strstr(json, "\"cam.1\"") && strstr(json, "\"daq_1\""), "%s", json);
    free(json);
    lmq_proxy_destroy(&p);
    lmq_daemon_destroy(&d);
    zmq_ctx_term(zctx);
    lmq_config_destroy(&cfg);

    ck_assert_int_eq(lmq_config_apply(NULL, NULL, &err), LMQ_EARG);
    free(err);
}
END_TEST

/* ---- the rules the config shares with lmq_daemon_add (internal) ---- */

/* No built-in driver has a required option, so a table of our own. */
static const lmq_option_t fake_options[] = {
    {.name = "rate", .type = LMQ_FLOAT, .def = "1", .doc = NULL},
    {.name = "port", .type = LMQ_STRING, .def = NULL, .doc = "serial port"},
    {.name = NULL},
};
static const lmq_driver_t fake_driver = {.name = "fake", .options = fake_options};

START_TEST(test_shared_rules)
{
    lmq__option_fault_t f;
    const char *ok[] = {"port", "/dev/ttyS0", NULL};
    ck_assert_int_eq(lmq__options_parse(&fake_driver, ok, NULL, &f), 0);
    const char *missing[] = {"rate", "2", NULL};
    ck_assert_int_eq(lmq__options_parse(&fake_driver, missing, NULL, &f), LMQ__OPT_MISSING);
    ck_assert_str_eq(f.name, "port");
    const char *bad_value[] = {"port", "x", "rate", "fast", NULL};
    ck_assert_int_eq(lmq__options_parse(&fake_driver, bad_value, NULL, &f), LMQ__OPT_BAD_VALUE);
    ck_assert_str_eq(f.name, "rate");
    ck_assert_str_eq(f.text, "fast");
    const char *unknown[] = {"port", "x", "baud", "9600", NULL};
    ck_assert_int_eq(lmq__options_parse(&fake_driver, unknown, NULL, &f), LMQ__OPT_UNKNOWN);
    ck_assert_str_eq(f.name, "baud");
    const char *novalue[] = {"port", NULL, NULL};
    ck_assert_int_eq(lmq__options_parse(&fake_driver, novalue, NULL, &f), LMQ__OPT_NO_VALUE);

    /* The daemon phrases the same faults. */
    char err[256];
    ck_assert_ptr_null(lmq__dev_new("d", &fake_driver, "", missing, err, sizeof err));
    ck_assert_msg(strstr(err, "needs option 'port' (serial port)") != NULL, "%s", err);
    ck_assert_ptr_null(lmq__dev_new("d", &fake_driver, "", bad_value, err, sizeof err));
    ck_assert_msg(strstr(err, "'rate' = 'fast'") != NULL, "%s", err);
    lmq_dev_t *dev = lmq__dev_new("d", &fake_driver, "", ok, err, sizeof err);
    ck_assert_msg(dev != NULL, "%s", err);
    lmq__dev_destroy(&dev);

    ck_assert(lmq__device_name_ok("a.b_c-9"));
    ck_assert(lmq__device_name_ok("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")); /* 64 */
    ck_assert(!lmq__device_name_ok("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
    ck_assert(!lmq__device_name_ok(""));
    ck_assert(!lmq__device_name_ok(NULL));
    ck_assert(!lmq__device_name_ok("a/b"));
}
END_TEST

/* ---- default endpoints ---- */

START_TEST(test_endpoint_create)
{
    char tmpdir[64];
    th_tempdir(tmpdir, sizeof tmpdir);
    char xdg[128], dir[160], want[200], ep[256];
    snprintf(xdg, sizeof xdg, "%s/run", tmpdir);
    ck_assert_int_eq(mkdir(xdg, 0700), 0);
    setenv("XDG_RUNTIME_DIR", xdg, 1);
    snprintf(dir, sizeof dir, "%s/labmq", xdg);

    /* Without create nothing is touched. */
    ck_assert_int_eq(lmq_default_endpoint(ep, sizeof ep, "control", false), 0);
    snprintf(want, sizeof want, "ipc://%s/control", dir);
    ck_assert_str_eq(ep, want);
    struct stat st;
    ck_assert_int_ne(lstat(dir, &st), 0);

    umask(022);
    ck_assert_int_eq(lmq_default_endpoint(ep, sizeof ep, "control", true), 0);
    ck_assert_str_eq(ep, want);
    ck_assert_int_eq(lstat(dir, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    ck_assert_int_eq(st.st_mode & 0777, 0700);
    ck_assert_int_eq(lmq_default_endpoint(ep, sizeof ep, "data", true), 0); /* existing and fine */
    snprintf(want, sizeof want, "ipc://%s/data", dir);
    ck_assert_str_eq(ep, want);

    ck_assert_int_eq(lmq_default_endpoint(ep, sizeof ep, "other", false), LMQ_EARG);
    ck_assert_int_eq(lmq_default_endpoint(NULL, 10, "data", false), LMQ_EARG);
    ck_assert_int_eq(lmq_default_endpoint(ep, 10, "data", false), LMQ_EARG); /* buffer too small */

    unsetenv("XDG_RUNTIME_DIR");
    ck_assert_int_eq(lmq_default_endpoint(ep, sizeof ep, "control", false), 0);
    snprintf(want, sizeof want, "ipc:///tmp/labmq-%lu/control", (unsigned long)getuid());
    ck_assert_str_eq(ep, want);
    th_rmtree(tmpdir);
}
END_TEST

START_TEST(test_endpoint_refuse)
{
    char tmpdir[64];
    th_tempdir(tmpdir, sizeof tmpdir);
    char xdg[128], dir[160], ep[256];
    snprintf(xdg, sizeof xdg, "%s/run", tmpdir);
    ck_assert_int_eq(mkdir(xdg, 0700), 0);
    setenv("XDG_RUNTIME_DIR", xdg, 1);
    snprintf(dir, sizeof dir, "%s/labmq", xdg);

    /* Open to others: refused, and left as it is. */
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    ck_assert_int_eq(chmod(dir, 0755), 0);
    ck_assert_int_eq(lmq_default_endpoint(ep, sizeof ep, "control", true), LMQ_ECONFIG);
    ck_assert_int_eq(errno, EPERM);
    struct stat st;
    ck_assert_int_eq(lstat(dir, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0755);
    ck_assert_int_eq(chmod(dir, 0750), 0);
    ck_assert_int_eq(lmq_default_endpoint(ep, sizeof ep, "control", true), LMQ_ECONFIG);

    /* A symlink, even to a good directory, is not followed. */
    char real[160];
    snprintf(real, sizeof real, "%s/real", tmpdir);
    ck_assert_int_eq(mkdir(real, 0700), 0);
    ck_assert_int_eq(rmdir(dir), 0);
    ck_assert_int_eq(symlink(real, dir), 0);
    ck_assert_int_eq(lmq_default_endpoint(ep, sizeof ep, "data", true), LMQ_ECONFIG);

    /* A file in its place. */
    ck_assert_int_eq(unlink(dir), 0);
    th_write_file(dir, "");
    ck_assert_int_eq(lmq_default_endpoint(ep, sizeof ep, "data", true), LMQ_ECONFIG);

    /* Missing parent: not created behind the user's back. */
    char gone[160];
    snprintf(gone, sizeof gone, "%s/does-not-exist", tmpdir);
    setenv("XDG_RUNTIME_DIR", gone, 1);
    ck_assert_int_eq(lmq_default_endpoint(ep, sizeof ep, "data", true), LMQ_ECONFIG);

    /* Longer than a unix socket path can be. */
    char longdir[300];
    memset(longdir, 'x', sizeof longdir - 1);
    longdir[0] = '/';
    longdir[sizeof longdir - 1] = '\0';
    setenv("XDG_RUNTIME_DIR", longdir, 1);
    ck_assert_int_eq(lmq_default_endpoint(ep, sizeof ep, "control", false), LMQ_ECONFIG);
    th_rmtree(tmpdir);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, test_valid);
    tcase_add_test(tc, test_minimal_defaults);
    tcase_add_loop_test(tc, test_bad, 0, (int)(sizeof bad / sizeof bad[0]));
    suite_add_tcase(s, tc);

    tc = tcase_create("files");
    tcase_add_test(tc, test_load_file);
    tcase_add_test(tc, test_endpoint_create);
    tcase_add_test(tc, test_endpoint_refuse);
    suite_add_tcase(s, tc);

    tc = tcase_create("daemon");
    tcase_add_test(tc, test_apply);
    tcase_add_test(tc, test_shared_rules);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return th_run_suite(config_suite());
}
