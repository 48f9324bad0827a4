/* The daemon object's lifecycle on the caller's thread: declaring devices,
 * binding (after checking no other daemon serves the endpoint), starting the
 * broker thread, and stopping with a bounded grace period. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "daemon_internal.h"
#include "flow.h"
#include "labmq/status.h"
#include "supervise_internal.h"

extern char **environ;

lmq_daemon_t *lmq_daemon_new(void *zctx, const char *control_endpoint, const char *data_endpoint, lmq_log_t *log)
{
    if (!zctx || !control_endpoint || !data_endpoint)
        return NULL;
    lmq_daemon_t *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->zctx = zctx;
    d->log = log;
    d->control = strdup(control_endpoint);
    d->data = strdup(data_endpoint);
    d->wires = lmq__wires_new();
    d->sup = lmq_supervisor_new(log);
    if (!d->control || !d->data || !d->wires || !d->sup) {
        lmq_daemon_destroy(&d);
        return NULL;
    }
    snprintf(d->pipe_endpoint, sizeof d->pipe_endpoint, "inproc://lmq-daemon-%p", (void *)d);
    d->stop_grace_ns = 5000LL * 1000000;
    d->time_scale = 1.0;
    d->subscriber_memory = LMQ__FLOW_DEFAULT_MEMORY;
    return d;
}

const char *lmq_daemon_last_error(const lmq_daemon_t *d) { return d ? d->err : "no daemon"; }

int lmq_daemon_add(lmq_daemon_t *d, const char *name, const lmq_driver_t *driver, const char *connection,
                   const char *const *options)
{
    if (!d)
        return LMQ_EARG;
    if (d->running) {
        snprintf(d->err, sizeof d->err, "devices must be added before lmq_daemon_start");
        return LMQ_EARG;
    }
    if (!lmq__device_name_ok(name)) {
        snprintf(d->err, sizeof d->err, "invalid device name '%s' (use " LMQ__DEVICE_NAME_RULE ")",
                 name ? name : "(null)");
        return LMQ_EARG;
    }
    if (!driver) {
        snprintf(d->err, sizeof d->err, "device '%s': no driver", name);
        return LMQ_EARG;
    }
    for (size_t i = 0; i < d->ndev; i++)
        if (strcmp(d->devs[i]->name, name) == 0) {
            snprintf(d->err, sizeof d->err, "device '%s' is declared twice", name);
            return LMQ_ECONFIG;
        }
    if (d->ndev == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 8;
        lmq_dev_t **nd = realloc(d->devs, cap * sizeof *nd);
        if (!nd) {
            snprintf(d->err, sizeof d->err, "device '%s': out of memory", name);
            return LMQ_EMEM;
        }
        d->devs = nd;
        d->cap = cap;
    }
    lmq_dev_t *dev = lmq__dev_new(name, driver, connection, options, d->err, sizeof d->err);
    if (!dev)
        return LMQ_ECONFIG;
    dev->time_scale = d->time_scale;
    d->devs[d->ndev++] = dev;
    return 0;
}

int lmq_daemon_set_restore(lmq_daemon_t *d, const char *device, bool restore)
{
    if (!d || !device)
        return LMQ_EARG;
    for (size_t i = 0; i < d->ndev; i++)
        if (strcmp(d->devs[i]->name, device) == 0) {
            d->devs[i]->restore = restore;
            return 0;
        }
    snprintf(d->err, sizeof d->err, "no device '%s'", device);
    return LMQ_ENOTFOUND;
}

int lmq_daemon_set_time_scale(lmq_daemon_t *d, double time_scale)
{
    if (!d || !(time_scale >= 1e-3 && time_scale <= 1e6) || d->running)
        return LMQ_EARG;
    /* Devices added later take it too (lmq_daemon_add). */
    d->time_scale = time_scale;
    for (size_t i = 0; i < d->ndev; i++)
        d->devs[i]->time_scale = time_scale;
    return 0;
}

static void strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* A copy of head (nhead strings) followed by the NULL-terminated tail. */
static char **strv_join(const char *const *head, size_t nhead, const char *const *tail)
{
    size_t n = 0;
    while (tail && tail[n])
        n++;
    char **v = calloc(nhead + n + 1, sizeof *v);
    for (size_t i = 0; v && i < nhead + n; i++)
        if (!(v[i] = strdup(i < nhead ? head[i] : tail[i - nhead]))) {
            strv_free(v);
            return NULL;
        }
    return v;
}

int lmq_daemon_add_worker(lmq_daemon_t *d, const char *name, const char *program, const char *const *args,
                          const char *const *envp, lmq_restart_t restart)
{
    if (!d)
        return LMQ_EARG;
    if (d->running) {
        snprintf(d->err, sizeof d->err, "workers must be added before lmq_daemon_start");
        return LMQ_EARG;
    }
    if (!lmq__worker_name_ok(name)) {
        snprintf(d->err, sizeof d->err, "invalid worker name '%.64s' (use " LMQ__WORKER_NAME_RULE ")",
                 name ? name : "(null)");
        return LMQ_EARG;
    }
    if (!program || !program[0]) {
        snprintf(d->err, sizeof d->err, "worker '%s': no program", name);
        return LMQ_EARG;
    }
    if ((unsigned)restart > LMQ_RESTART_NEVER) {
        snprintf(d->err, sizeof d->err, "worker '%s': unknown restart policy %d", name, (int)restart);
        return LMQ_EARG;
    }
    for (size_t i = 0; i < d->nworkers; i++)
        if (strcmp(d->workers[i].name, name) == 0) {
            snprintf(d->err, sizeof d->err, "worker '%s' is declared twice", name);
            return LMQ_ECONFIG;
        }
    struct lmq__worker_decl *nw = realloc(d->workers, (d->nworkers + 1) * sizeof *nw);
    if (!nw) {
        snprintf(d->err, sizeof d->err, "worker '%s': out of memory", name);
        return LMQ_EMEM;
    }
    d->workers = nw;
    struct lmq__worker_decl w = {.restart = restart, .name = strdup(name), .argv = strv_join(&program, 1, args)};
    if (envp)
        w.envp = strv_join(NULL, 0, envp);
    if (!w.name || !w.argv || (envp && !w.envp)) {
        free(w.name);
        strv_free(w.argv);
        strv_free(w.envp);
        snprintf(d->err, sizeof d->err, "worker '%s': out of memory", name);
        return LMQ_EMEM;
    }
    d->workers[d->nworkers++] = w;
    return 0;
}

/* Hands the workers to the supervisor with the standard worker argv, now
 * that the endpoints are bound, and starts it. */
static int start_workers(lmq_daemon_t *d)
{
    if (!d->nworkers)
        return 0;
    if (strncmp(d->bound_control, "inproc://", 9) == 0)
        lmq_log(d->log, LMQ_LOG_WARN, "daemon",
                "workers are separate processes: they cannot reach the inproc:// endpoints %s and %s",
                d->bound_control, d->bound_data);
    lmq_supervisor_set_stop_grace(d->sup, (int)(d->stop_grace_ns / 1000000));
    for (size_t i = 0; i < d->nworkers; i++) {
        struct lmq__worker_decl *w = &d->workers[i];
        const char *head[] = {w->argv[0], "--control", d->bound_control, "--data", d->bound_data, "--name", w->name};
        char **argv = strv_join(head, sizeof head / sizeof *head, (const char *const *)w->argv + 1);
        int rc = argv ? lmq_supervisor_add(d->sup, w->name, argv, w->envp ? w->envp : environ, w->restart)
                      : LMQ_EMEM;
        strv_free(argv);
        if (rc != 0) {
            snprintf(d->err, sizeof d->err, "worker '%s': %s", w->name,
                     rc == LMQ_EMEM ? "out of memory" : lmq_supervisor_last_error(d->sup));
            return rc;
        }
    }
    int rc = lmq_supervisor_start(d->sup);
    if (rc != 0)
        snprintf(d->err, sizeof d->err, "%s", lmq_supervisor_last_error(d->sup));
    return rc;
}

int lmq_daemon_set_subscriber_memory(lmq_daemon_t *d, size_t bytes)
{
    if (!d || d->running || bytes < LMQ__FLOW_MIN_MEMORY || bytes > LMQ__FLOW_MAX_MEMORY)
        return LMQ_EARG;
    d->subscriber_memory = bytes;
    return 0;
}

void lmq_daemon_set_stop_grace(lmq_daemon_t *d, int ms)
{
    if (d)
        d->stop_grace_ns = (int64_t)(ms < 0 ? 0 : ms) * 1000000;
}

/* ZeroMQ silently takes over an ipc socket file that another process still
 * serves; ask the file first so a second daemon refuses instead of stealing
 * the first one's clients. */
static int check_ipc_free(const char *endpoint, char *err, size_t errlen)
{
    if (strncmp(endpoint, "ipc://", 6) != 0)
        return 0;
    const char *path = endpoint + 6;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "ipc path too long for a unix socket (%zu bytes, limit %zu): %s", strlen(path),
                 sizeof sa.sun_path - 1, path);
        return LMQ_ECONFIG;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    close(fd);
    if (rc == 0) {
        snprintf(err, errlen, "another daemon already serves %s", endpoint);
        return LMQ_EBUSY;
    }
    return 0;
}

int lmq_daemon_start(lmq_daemon_t *d)
{
    if (!d)
        return LMQ_EARG;
    if (d->running) {
        snprintf(d->err, sizeof d->err, "daemon already started");
        return LMQ_EARG;
    }
    int rc = check_ipc_free(d->control, d->err, sizeof d->err);
    if (rc == 0)
        rc = check_ipc_free(d->data, d->err, sizeof d->err);
    if (rc != 0)
        return rc;
    /* Epochs in µs since 1970: distinct across restarts, below 2^53. */
    d->epoch = (uint64_t)(lmq_clock_real_ns() / 1000);
    d->pipe = zmq_socket(d->zctx, ZMQ_PAIR);
    if (!d->pipe || zmq_bind(d->pipe, d->pipe_endpoint) != 0) {
        snprintf(d->err, sizeof d->err, "cannot create the broker pipe: %s", zmq_strerror(zmq_errno()));
        if (d->pipe)
            zmq_close(d->pipe);
        d->pipe = NULL;
        return LMQ_ESYS;
    }
    int e = pthread_create(&d->broker, NULL, lmq__broker_main, d);
    if (e != 0) {
        zmq_close(d->pipe);
        d->pipe = NULL;
        snprintf(d->err, sizeof d->err, "cannot start the broker thread: %s", strerror(e));
        return LMQ_ESYS;
    }
    d->running = true;
    char buf[600];
    int n = zmq_recv(d->pipe, buf, sizeof buf - 1, 0);
    if (n >= 1 && buf[0] == LMQ__MSG_READY) {
        rc = start_workers(d);
        if (rc != 0) {
            char why[sizeof d->err];
            snprintf(why, sizeof why, "%s", d->err);
            lmq_daemon_stop(d);
            snprintf(d->err, sizeof d->err, "%s", why);
        }
        return rc;
    }
    /* The broker could not bind: it has cleaned up and exits. */
    pthread_join(d->broker, NULL);
    d->running = false;
    zmq_close(d->pipe);
    d->pipe = NULL;
    if (n > 2) {
        buf[n < (int)sizeof buf ? n : (int)sizeof buf - 1] = 0;
        snprintf(d->err, sizeof d->err, "%.500s", buf + 2);
        return -(int)(unsigned char)buf[1];
    }
    snprintf(d->err, sizeof d->err, "the broker failed to start");
    return LMQ_ESYS;
}

int lmq_daemon_wait_ready(lmq_daemon_t *d, int timeout_ms)
{
    if (!d || !d->running)
        return LMQ_EARG;
    int64_t deadline = lmq_clock_mono_ns() + (int64_t)timeout_ms * 1000000;
    for (;;) {
        size_t opening = 0;
        int len = 0;
        for (size_t i = 0; i < d->ndev; i++) {
            lmq_dev_t *dev = d->devs[i];
            pthread_mutex_lock(&dev->mu);
            bool still = dev->dev_state == LMQ__DEV_OPENING;
            pthread_mutex_unlock(&dev->mu);
            if (still && len >= 0 && (size_t)len < sizeof d->err)
                len += snprintf(d->err + len, sizeof d->err - (size_t)len, "%s%s",
                                opening ? ", " : "still opening: ", dev->name);
            opening += still;
        }
        if (!opening)
            return 0;
        if (timeout_ms >= 0 && lmq_clock_mono_ns() >= deadline)
            return LMQ_ETIMEOUT;
        struct timespec nap = {0, 2 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
}

int lmq_daemon_stop(lmq_daemon_t *d)
{
    if (!d)
        return LMQ_EARG;
    if (d->running) {
        /* Workers first: they are clients of the devices. */
        lmq_supervisor_stop(d->sup);
        char term = LMQ__MSG_TERM;
        zmq_send(d->pipe, &term, 1, 0);
        pthread_join(d->broker, NULL);
        d->running = false;
        if (d->nstuck)
            snprintf(d->err, sizeof d->err, "%zu device%s stuck in the driver at shutdown: %s", d->nstuck,
                     d->nstuck == 1 ? "" : "s", d->stuck_msg);
    }
    return d->nstuck ? LMQ_ETIMEOUT : 0;
}

void lmq_daemon_destroy(lmq_daemon_t **pd)
{
    if (!pd || !*pd)
        return;
    lmq_daemon_t *d = *pd;
    lmq_daemon_stop(d);
    if (d->pipe)
        zmq_close(d->pipe);
    for (size_t i = 0; i < d->ndev; i++)
        lmq__dev_destroy(&d->devs[i]); /* leaves stuck devices to their threads */
    free(d->devs);
    lmq_supervisor_destroy(&d->sup);
    for (size_t i = 0; i < d->nworkers; i++) {
        free(d->workers[i].name);
        strv_free(d->workers[i].argv);
        strv_free(d->workers[i].envp);
    }
    free(d->workers);
    /* A stuck device may still read the wires. */
    if (!d->nstuck)
        lmq__wires_destroy(&d->wires);
    free(d->control);
    free(d->data);
    free(d);
    *pd = NULL;
}
