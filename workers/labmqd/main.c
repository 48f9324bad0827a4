/* labmqd — the labmq acquisition daemon.
 *
 * A thin main() around lmq_daemon_t: read the YAML config, bind the control
 * and data endpoints, run until SIGINT or SIGTERM; SIGHUP reloads the config
 * (lmq_daemon_reload applies what changed). It never forks (a process
 * must not fork once it has a ZeroMQ context); supervisors such as systemd
 * keep it in the foreground. Signals are blocked in every thread and taken
 * synchronously in main with sigwait, so no handler runs inside a ZeroMQ or
 * driver call and shutdown happens on an ordinary thread. Workers declared in
 * the config are started once the endpoints are bound and stopped (SIGTERM,
 * then SIGKILL after stop_grace) before the devices close. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stddef.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <zmq.h>
#include "labmq/labmq.h"

enum exit_code { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_STUCK = 3 };

static void usage(FILE *out)
{
    fputs("Usage: labmqd --config FILE [OPTIONS]\n"
          "\n"
          "The labmq acquisition daemon: owns the instruments named in FILE (one thread\n"
          "per device) and serves them to clients over ZeroMQ. It stays in the\n"
          "foreground and stops cleanly on SIGINT (Ctrl-C) or SIGTERM.\n"
          "\n"
          "SIGHUP reloads FILE: devices and workers that were added are started,\n"
          "removed ones stopped, changed ones restarted; unchanged ones are not\n"
          "touched. A new FILE with any error (or a changed control, data,\n"
          "time_scale, fault_after, subscriber_memory or security) is refused as a whole and the running\n"
          "configuration stays;\n"
          "`labmq ping` shows the outcome (config generation, last reload).\n"
          "log_level and stop_grace are taken over on reload.\n"
          "\n"
          "Options:\n"
          "  -c, --config FILE      YAML lab configuration (required)\n"
          "  -n, --check-config     parse and validate FILE (key files included), print\n"
          "                         the devices, endpoints and allowed clients, and exit\n"
          "                         without starting anything\n"
          "      --control EP       control endpoint (ROUTER), overrides the config\n"
          "      --data EP          data endpoint (XPUB), overrides the config\n"
          "  -l, --log-level LEVEL  error, warn, info, debug or trace (trace adds a hex\n"
          "                         dump of instrument I/O); overrides the config\n"
          "  -h, --help             show this help and exit\n"
          "  -V, --version          show the version and exit\n"
          "\n"
          "Defaults:\n"
          "  control  ipc://$XDG_RUNTIME_DIR/labmq/control\n"
          "  data     ipc://$XDG_RUNTIME_DIR/labmq/data\n"
          "           (/tmp/labmq-$UID/ when XDG_RUNTIME_DIR is unset; the directory is\n"
          "           created with mode 0700 and must not be open to other users)\n"
          "  log level info\n"
          "\n"
          "Example configuration:\n"
          "  # lab.yaml\n"
          "  log_level: info                 # optional\n"
          "  # control: tcp://*:5555         # optional, see Defaults; a tcp:// endpoint\n"
          "  # data: tcp://*:5556            #   is served only with the security: keys\n"
          "  # security:                     # CURVE encryption + an allow-list of clients\n"
          "  #   key: labpc.key              #   (docs/security.md); keys: labmq keygen\n"
          "  #   clients:\n"
          "  #     - {name: alice, key: alice.key.pub, role: control}\n"
          "  #     - {name: bob, key: bob.key.pub, role: observe}  # list, get, watch\n"
          "  devices:\n"
          "    - name: psu1                  # letters, digits, _ - .\n"
          "      driver: sim-psu\n"
          "      options: {load_ohms: 100}\n"
          "    - name: daq1\n"
          "      driver: sim-daq\n"
          "      connection: \"\"              # e.g. serial:/dev/ttyUSB0?baud=9600\n"
          "  workers:                        # optional: processes labmqd starts and\n"
          "    - name: mean1                 # supervises (see workers/README.md)\n"
          "      program: ./labmq-example-mean\n"
          "      args: [--stream, daq1/ai0]\n"
          "      restart: on-failure         # always | on-failure | never\n"
          "\n"
          "Built-in drivers:\n",
          out);
    const lmq_driver_t *const *list = lmq_driver_list();
    for (size_t i = 0; list && list[i]; i++)
        fprintf(out, "  %-12s %s\n", list[i]->name, list[i]->description ? list[i]->description : "");
    fputs("\n"
          "Exit status:\n"
          "  0  stopped by a signal, or --check-config found no error\n"
          "  1  invalid configuration, endpoint already served by another labmqd,\n"
          "     a tcp:// endpoint without security keys (and no `insecure: true`),\n"
          "     or another failure to start\n"
          "  2  invalid command line\n"
          "  3  stopped, but a device stayed stuck in its driver beyond the grace\n"
          "     period (stop_grace in the config, default 5 s), at shutdown or when\n"
          "     a reload removed it: named in the log, and not waited for\n",
          out);
}

/* systemd's readiness protocol (sd_notify), without libsystemd: one datagram
 * to $NOTIFY_SOCKET (a path, or an abstract name starting with '@'). Outside
 * systemd the variable is unset and this does nothing. */
static void notify_systemd(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (!path || !*path || strlen(path) >= sizeof sa.sun_path)
        return;
    memcpy(sa.sun_path, path, strlen(path));
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
    if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0) {
        /* systemd gone or not listening: nothing to tell anyone */
    }
    close(fd);
}

/* Tells systemd a reload has begun. systemd 253 and later want the
 * monotonic time with it (Type=notify-reload); older ones ignore it. */
static void notify_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char msg[96];
    snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    notify_systemd(msg);
}

static void notify_ready(size_t ndevices, const char *control)
{
    char ready[600];
    snprintf(ready, sizeof ready, "READY=1\nSTATUS=serving %zu devices on %s", ndevices, control);
    notify_systemd(ready);
}

static void print_summary(const char *path, const lmq_config_t *cfg, const char *control, const char *data,
                          const char *level)
{
    size_t n = lmq_config_device_count(cfg);
    printf("%s: configuration OK\n", path);
    printf("control:   %s\n", control);
    printf("data:      %s\n", data);
    printf("log level: %s\n", level);
    printf("devices:   %zu\n", n);
    for (size_t i = 0; i < n; i++) {
        const lmq_config_device_t *d = lmq_config_device(cfg, i);
        printf("  %-16s %s", d->name, d->driver);
        if (d->connection[0])
            printf("  connection=%s", d->connection);
        for (const char *const *o = d->options; o && o[0]; o += 2)
            printf("  %s=%s", o[0], o[1]);
        putchar('\n');
    }
    const char *server_key = lmq_config_server_public_key(cfg);
    if (server_key) {
        printf("security:  CURVE, server public key %s\n", server_key);
        for (size_t i = 0; i < lmq_config_client_count(cfg); i++) {
            const lmq_config_client_t *c = lmq_config_client(cfg, i);
            printf("  %-16s %-8s %s\n", c->name, lmq_role_name(c->role), c->public_key);
        }
    } else {
        printf("security:  none%s\n", lmq_config_insecure(cfg) ? " (insecure: true)" : "");
    }
    size_t nw = lmq_config_worker_count(cfg);
    if (nw)
        printf("workers:   %zu\n", nw);
    for (size_t i = 0; i < nw; i++) {
        const lmq_config_worker_t *w = lmq_config_worker(cfg, i);
        printf("  %-16s %s", w->name, w->program);
        for (const char *const *a = w->args; a && a[0]; a++)
            printf(" %s", a[0]);
        printf("  (restart: %s%s)\n", lmq_restart_name(w->restart), w->env ? ", own environment" : "");
    }
    fflush(stdout);
}

/* Anything but ipc:// and inproc:// reaches beyond this machine's users. */
static bool is_network(const char *ep)
{
    return strncmp(ep, "ipc://", 6) != 0 && strncmp(ep, "inproc://", 9) != 0;
}

/* Fills ep with the default endpoint, explaining a failure on stderr. */
static int default_endpoint(char *ep, size_t size, const char *which, bool create)
{
    int rc = lmq_default_endpoint(ep, size, which, create);
    if (rc == 0)
        return 0;
    int e = errno;
    char shown[512];
    if (lmq_default_endpoint(shown, sizeof shown, which, false) != 0)
        snprintf(shown, sizeof shown, "(the default %s endpoint)", which);
    fprintf(stderr, "labmqd: cannot use %s: %s%s\n", shown, strerror(e),
            e == EPERM ? " (its directory must belong to you and have mode 0700)" : "");
    fprintf(stderr, "labmqd: fix the directory, or pass --control and --data\n");
    return rc;
}

/* What labmqd was started with; a reload reads the same file and applies
 * the same command-line overrides. */
typedef struct run {
    const char *config_path, *control_arg, *data_arg, *level_arg;
    const char *control, *data; /* in force */
    void *zctx;
    lmq_log_t *log;
    lmq_daemon_t *d;
    size_t ndevices;
} run_t;

/* SIGHUP: re-reads the config, checks all of it (declaring the devices runs
 * their drivers' configure) and hands it to lmq_daemon_reload, or records
 * why it was refused. */
static void reload(run_t *r)
{
    notify_reloading();
    lmq_log(r->log, LMQ_LOG_INFO, "labmqd", "SIGHUP received: reloading %s", r->config_path);
    char *err = NULL;
    lmq_daemon_t *next = NULL;
    lmq_config_t *cfg = lmq_config_load(r->config_path, &err);
    if (!cfg) {
        lmq_daemon_reload_refused(r->d, err ? err : "cannot load the configuration (out of memory)");
        goto done;
    }
    /* The effective endpoints of the new file, as at start; the daemon
     * refuses a change. */
    char control_buf[512], data_buf[512];
    const char *control = r->control_arg ? r->control_arg : lmq_config_control(cfg);
    const char *data = r->data_arg ? r->data_arg : lmq_config_data(cfg);
    if (!control)
        control =
            lmq_default_endpoint(control_buf, sizeof control_buf, "control", false) == 0 ? control_buf : r->control;
    if (!data)
        data = lmq_default_endpoint(data_buf, sizeof data_buf, "data", false) == 0 ? data_buf : r->data;
    next = lmq_daemon_new(r->zctx, control, data, NULL);
    if (!next) {
        lmq_daemon_reload_refused(r->d, "out of memory");
        goto done;
    }
    if (lmq_config_apply(cfg, next, &err) != 0) {
        char why[1024];
        snprintf(why, sizeof why, "%s: %s", r->config_path, err ? err : "out of memory");
        lmq_daemon_reload_refused(r->d, why);
        goto done;
    }
    if (lmq_daemon_reload(r->d, &next) == 0) {
        r->ndevices = lmq_config_device_count(cfg);
        const char *level = lmq_config_log_level(cfg);
        if (!r->level_arg)
            lmq_log_set_level(r->log, (lmq_log_level_t)lmq_log_level_parse(level ? level : "info"));
    }
done:
    free(err);
    lmq_daemon_destroy(&next);
    lmq_config_destroy(&cfg);
    notify_ready(r->ndevices, r->control);
}

int main(int argc, char **argv)
{
    enum { OPT_CONTROL = 256, OPT_DATA };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 'n'},
        {"control", required_argument, NULL, OPT_CONTROL},
        {"data", required_argument, NULL, OPT_DATA},
        {"log-level", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = NULL, *control_arg = NULL, *data_arg = NULL, *level_arg = NULL;
    bool check_only = false;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:nl:hV", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': config_path = optarg; break;
        case 'n': check_only = true; break;
        case OPT_CONTROL: control_arg = optarg; break;
        case OPT_DATA: data_arg = optarg; break;
        case 'l': level_arg = optarg; break;
        case 'h': usage(stdout); return EXIT_OK;
        case 'V':
            printf("labmqd %s (labmq protocol %d)\n", LMQ_VERSION_STRING, LMQ_PROTOCOL_VERSION);
            return EXIT_OK;
        default:
            fprintf(stderr, "Try 'labmqd --help' for more information.\n");
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "labmqd: unexpected argument '%s'\nTry 'labmqd --help' for more information.\n",
                argv[optind]);
        return EXIT_USAGE;
    }
    if (!config_path) {
        fprintf(stderr, "labmqd: no configuration: pass --config FILE (see labmqd --help for an example)\n");
        return EXIT_USAGE;
    }
    if (level_arg && lmq_log_level_parse(level_arg) < 0) {
        fprintf(stderr, "labmqd: --log-level '%s' is not one of error, warn, info, debug, trace\n", level_arg);
        return EXIT_USAGE;
    }

    char *err = NULL;
    lmq_config_t *cfg = lmq_config_load(config_path, &err);
    if (!cfg) {
        fprintf(stderr, "labmqd: %s\n", err ? err : "cannot load the configuration (out of memory)");
        free(err);
        return EXIT_FAIL;
    }
    const char *level_name = level_arg ? level_arg : lmq_config_log_level(cfg) ? lmq_config_log_level(cfg) : "info";
    lmq_log_level_t level = (lmq_log_level_t)lmq_log_level_parse(level_name); /* both validated above */

    /* Command line over config file over default. --check-config only looks,
     * so it computes the default without creating the directory. */
    char control_buf[512], data_buf[512];
    const char *control = control_arg ? control_arg : lmq_config_control(cfg);
    const char *data = data_arg ? data_arg : lmq_config_data(cfg);
    if (!control) {
        if (default_endpoint(control_buf, sizeof control_buf, "control", !check_only) != 0)
            goto fail_config;
        control = control_buf;
    }
    if (!data) {
        if (default_endpoint(data_buf, sizeof data_buf, "data", !check_only) != 0)
            goto fail_config;
        data = data_buf;
    }
    if (check_only) {
        /* Declaring the devices runs each driver's configure() (the scpi
         * driver reads its instrument description there) without binding or
         * opening anything. */
        void *zctx = zmq_ctx_new();
        lmq_daemon_t *d = zctx ? lmq_daemon_new(zctx, control, data, NULL) : NULL;
        int rc = d ? lmq_config_apply(cfg, d, &err) : LMQ_EMEM;
        lmq_daemon_destroy(&d);
        if (zctx)
            zmq_ctx_term(zctx);
        if (rc != 0) {
            fprintf(stderr, "labmqd: %s: %s\n", config_path, err ? err : "out of memory");
            free(err);
            lmq_config_destroy(&cfg);
            return EXIT_FAIL;
        }
        print_summary(config_path, cfg, control, data, lmq_log_level_name(level));
        /* What lmq_daemon_start would refuse, said without starting. */
        const char *net = is_network(control) ? control : is_network(data) ? data : NULL;
        bool refused = net && !lmq_config_server_public_key(cfg) && !lmq_config_insecure(cfg);
        if (refused)
            fprintf(stderr,
                    "labmqd: %s: %s needs CURVE keys: add a security: block (docs/security.md), or "
                    "`security: {insecure: true}` on an isolated network\n",
                    config_path, net);
        lmq_config_destroy(&cfg);
        return refused ? EXIT_FAIL : EXIT_OK;
    }

    /* Before any thread exists, so ZeroMQ's and the devices' threads inherit
     * the mask and the signals queue for sigwait below. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGHUP);
    int rc = pthread_sigmask(SIG_BLOCK, &stop, NULL);
    if (rc != 0) {
        fprintf(stderr, "labmqd: pthread_sigmask: %s\n", strerror(rc));
        goto fail_config;
    }

    int status = EXIT_FAIL;
    void *zctx = zmq_ctx_new();
    lmq_log_t *log = lmq_log_new(level, NULL, NULL);
    lmq_daemon_t *d = zctx && log ? lmq_daemon_new(zctx, control, data, log) : NULL;
    if (!d) {
        fprintf(stderr, "labmqd: cannot create the daemon: %s\n", zctx ? "out of memory" : zmq_strerror(errno));
        goto out;
    }
    if (lmq_config_apply(cfg, d, &err) != 0) {
        fprintf(stderr, "labmqd: %s: %s\n", config_path, err ? err : "out of memory");
        free(err);
        goto out;
    }
    rc = lmq_daemon_start(d);
    if (rc == LMQ_EBUSY) {
        fprintf(stderr, "labmqd: another labmqd already serves %s\n", control);
        goto out;
    }
    if (rc != 0) {
        const char *why = lmq_daemon_last_error(d);
        fprintf(stderr, "labmqd: cannot start: %s\n", why && *why ? why : lmq_strerror(rc));
        goto out;
    }
    fprintf(stderr, "labmqd: serving %zu device%s on control=%s data=%s\n", lmq_config_device_count(cfg),
            lmq_config_device_count(cfg) == 1 ? "" : "s", control, data);
    fflush(stderr);
    /* Ready = clients can connect; instruments may still be opening (they
     * show as such), as start-up never waits for them. */
    run_t run = {.config_path = config_path,
                 .control_arg = control_arg,
                 .data_arg = data_arg,
                 .level_arg = level_arg,
                 .control = control,
                 .data = data,
                 .zctx = zctx,
                 .log = log,
                 .d = d,
                 .ndevices = lmq_config_device_count(cfg)};
    notify_ready(run.ndevices, control);

    for (;;) {
        int sig = 0;
        while ((rc = sigwait(&stop, &sig)) == EINTR)
            ;
        if (rc == 0 && sig == SIGHUP) {
            reload(&run);
            continue;
        }
        if (rc != 0) {
            lmq_log(log, LMQ_LOG_ERROR, "labmqd", "sigwait: %s; shutting down", strerror(rc));
            status = EXIT_FAIL;
        } else {
            lmq_log(log, LMQ_LOG_INFO, "labmqd", "%s received, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
            status = EXIT_OK;
        }
        break;
    }
    notify_systemd("STOPPING=1");
    if (lmq_daemon_stop(d) == LMQ_ETIMEOUT) {
        /* A thread stuck in vendor code still holds its socket, so
         * zmq_ctx_term would wait for ever: leave without it. */
        lmq_log(log, LMQ_LOG_ERROR, "labmqd", "exiting without waiting: %s", lmq_daemon_last_error(d));
        fflush(stderr);
        _exit(EXIT_STUCK);
    }

out:
    lmq_daemon_destroy(&d);
    if (zctx)
        zmq_ctx_term(zctx);
    if (status == EXIT_OK)
        lmq_log(log, LMQ_LOG_INFO, "labmqd", "stopped: devices closed, threads joined");
    lmq_log_destroy(&log);
    lmq_config_destroy(&cfg);
    return status;

fail_config:
    lmq_config_destroy(&cfg);
    return EXIT_FAIL;
}
