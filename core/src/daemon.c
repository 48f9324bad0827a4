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
    pthread_mutex_init(&d->cfg_mu, NULL);
    d->control = strdup(control_endpoint);
    d->data = strdup(data_endpoint);
    d->wires = lmq__wires_new();
    d->sup = lmq_supervisor_new(log);
    d->auth = lmq__auth_new();
    if (!d->control || !d->data || !d->wires || !d->sup || !d->auth) {
        lmq_daemon_destroy(&d);
        return NULL;
    }
    snprintf(d->pipe_endpoint, sizeof d->pipe_endpoint, "inproc://lmq-daemon-%p", (void *)d);
    d->stop_grace_ns = 5000LL * 1000000;
    d->fault_after_ns = (int64_t)LMQ_DAEMON_DEFAULT_FAULT_AFTER_MS * 1000000;
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

/* Hands one worker to the supervisor with the standard worker argv (the
 * endpoints as bound). */
static int supervise_worker(lmq_daemon_t *d, const struct lmq__worker_decl *w)
{
    const char *head[] = {w->argv[0], "--control", d->bound_control, "--data", d->bound_data, "--name", w->name};
    char **argv = strv_join(head, sizeof head / sizeof *head, (const char *const *)w->argv + 1);
    int rc = argv ? lmq_supervisor_add(d->sup, w->name, argv, w->envp ? w->envp : environ, w->restart) : LMQ_EMEM;
    strv_free(argv);
    if (rc != 0)
        snprintf(d->err, sizeof d->err, "worker '%s': %s", w->name,
                 rc == LMQ_EMEM ? "out of memory" : lmq_supervisor_last_error(d->sup));
    return rc;
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
        int rc = supervise_worker(d, &d->workers[i]);
        if (rc != 0)
            return rc;
    }
    int rc = lmq_supervisor_start(d->sup);
    if (rc != 0)
        snprintf(d->err, sizeof d->err, "%s", lmq_supervisor_last_error(d->sup));
    return rc;
}

int lmq_daemon_set_curve(lmq_daemon_t *d, const char *secret_z85)
{
    if (!d)
        return LMQ_EARG;
    if (d->running) {
        snprintf(d->err, sizeof d->err, "keys must be set before lmq_daemon_start");
        return LMQ_EARG;
    }
    return lmq__auth_set_server_key(d->auth, secret_z85, d->err, sizeof d->err);
}

int lmq_daemon_allow(lmq_daemon_t *d, const char *name, const char *public_z85, lmq_role_t role)
{
    if (!d)
        return LMQ_EARG;
    if (d->running) {
        snprintf(d->err, sizeof d->err, "clients must be allowed before lmq_daemon_start");
        return LMQ_EARG;
    }
    return lmq__auth_allow(d->auth, name, public_z85, role, d->err, sizeof d->err);
}

void lmq_daemon_set_insecure(lmq_daemon_t *d, bool insecure)
{
    if (d && !d->running)
        d->insecure = insecure;
}

/* Anything but a local transport reaches beyond this machine's users. */
static bool is_network(const char *endpoint)
{
    return strncmp(endpoint, "ipc://", 6) != 0 && strncmp(endpoint, "inproc://", 9) != 0;
}

/* A network endpoint without keys lets anyone who reaches it drive the
 * instruments: refused unless the caller said it knows (insecure). */
static int check_security(lmq_daemon_t *d)
{
    const char *net = is_network(d->control) ? d->control : is_network(d->data) ? d->data : NULL;
    if (lmq__auth_curve(d->auth)) {
        if (!lmq__auth_client_count(d->auth))
            lmq_log(d->log, LMQ_LOG_WARN, "auth", "CURVE keys are set but no client is allowed: every client is refused");
        if (d->nworkers)
            lmq_log(d->log, LMQ_LOG_WARN, "auth",
                    "workers get no keys from labmqd: each needs its own key pair and allow-list entry "
                    "(labmq-recorder: --key and --server-key in its args), or this daemon refuses it");
        return 0;
    }
    if (!net)
        return 0;
    if (!d->insecure) {
        snprintf(d->err, sizeof d->err,
                 "refusing to serve %s without CURVE keys: anyone who can reach it could drive the instruments; "
                 "configure security (a server key and the clients' public keys, docs/security.md), or set "
                 "`insecure: true` under security: on an isolated network",
                 net);
        return LMQ_ECONFIG;
    }
    lmq_log(d->log, LMQ_LOG_WARN, "auth",
            "INSECURE: serving %s without authentication or encryption (security: insecure: true); anyone who "
            "reaches it can drive the instruments",
            net);
    return 0;
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

void lmq_daemon_set_fault_after(lmq_daemon_t *d, int ms)
{
    if (d && !d->running)
        d->fault_after_ns = (int64_t)(ms < 0 ? 0 : ms) * 1000000;
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
    int rc = check_security(d);
    if (rc == 0)
        rc = check_ipc_free(d->control, d->err, sizeof d->err);
    if (rc == 0)
        rc = check_ipc_free(d->data, d->err, sizeof d->err);
    /* The ZAP handler must serve before the sockets bind. */
    if (rc == 0)
        rc = lmq__auth_start(d->auth, d->zctx, d->log, d->err, sizeof d->err);
    if (rc != 0)
        return rc;
    /* Epochs in µs since 1970: distinct across restarts, below 2^53. */
    d->epoch = (uint64_t)(lmq_clock_real_ns() / 1000);
    d->epoch_next = d->epoch + d->ndev;
    pthread_mutex_lock(&d->cfg_mu);
    d->generation = 1;
    d->loaded_ns = lmq_clock_real_ns();
    pthread_mutex_unlock(&d->cfg_mu);
    d->pipe = zmq_socket(d->zctx, ZMQ_PAIR);
    if (!d->pipe || zmq_bind(d->pipe, d->pipe_endpoint) != 0) {
        snprintf(d->err, sizeof d->err, "cannot create the broker pipe: %s", zmq_strerror(zmq_errno()));
        if (d->pipe)
            zmq_close(d->pipe);
        d->pipe = NULL;
        lmq__auth_stop(d->auth);
        return LMQ_ESYS;
    }
    int e = pthread_create(&d->broker, NULL, lmq__broker_main, d);
    if (e != 0) {
        zmq_close(d->pipe);
        d->pipe = NULL;
        lmq__auth_stop(d->auth);
        snprintf(d->err, sizeof d->err, "cannot start the broker thread: %s", strerror(e));
        return LMQ_ESYS;
    }
    d->running = true;
    char buf[600];
    int n = zmq_recv(d->pipe, buf, sizeof buf - 1, 0);
    if (n >= 1 && buf[0] == LMQ__MSG_READY) {
        lmq__auth_watch(d->auth);
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
    lmq__auth_stop(d->auth);
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
        /* The sockets it authenticated are closed now. */
        lmq__auth_stop(d->auth);
        if (d->nstuck)
            snprintf(d->err, sizeof d->err, "%zu device%s stuck in the driver at shutdown: %s", d->nstuck,
                     d->nstuck == 1 ? "" : "s", d->stuck_msg);
        else if (d->nabandoned)
            snprintf(d->err, sizeof d->err, "%zu device%s removed by a reload stayed stuck in the driver (see the log)",
                     d->nabandoned, d->nabandoned == 1 ? "" : "s");
    }
    /* An abandoned thread still holds its socket: the caller must not wait
     * for the context either way. */
    return d->nstuck || d->nabandoned ? LMQ_ETIMEOUT : 0;
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
    pthread_mutex_destroy(&d->cfg_mu);
    lmq_supervisor_destroy(&d->sup);
    for (size_t i = 0; i < d->nworkers; i++) {
        free(d->workers[i].name);
        strv_free(d->workers[i].argv);
        strv_free(d->workers[i].envp);
    }
    free(d->workers);
    /* A stuck device may still read the wires. */
    if (!d->nstuck && !d->nabandoned)
        lmq__wires_destroy(&d->wires);
    lmq__auth_destroy(&d->auth);
    free(d->control);
    free(d->data);
    free(d);
    *pd = NULL;
}

/* ---- reload ---- */

static bool strv_equal(char *const *a, char *const *b)
{
    if (!a || !b)
        return a == b;
    size_t i = 0;
    for (; a[i] && b[i]; i++)
        if (strcmp(a[i], b[i]) != 0)
            return false;
    return !a[i] && !b[i];
}

static bool same_worker(const struct lmq__worker_decl *a, const struct lmq__worker_decl *b)
{
    return a->restart == b->restart && strv_equal(a->argv, b->argv) && strv_equal(a->envp, b->envp);
}

static lmq_dev_t *find_dev(lmq_dev_t **devs, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (devs[i] && strcmp(devs[i]->name, name) == 0)
            return devs[i];
    return NULL;
}

static const struct lmq__worker_decl *find_worker(const struct lmq__worker_decl *w, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(w[i].name, name) == 0)
            return &w[i];
    return NULL;
}

/* applied: the generation moves on. why: NULL ("ok"), or what went wrong. */
static void record_reload(lmq_daemon_t *d, bool applied, const char *why)
{
    int64_t now = lmq_clock_real_ns();
    pthread_mutex_lock(&d->cfg_mu);
    d->last_reload_ns = now;
    if (applied) {
        d->generation++;
        d->loaded_ns = now;
    }
    snprintf(d->last_reload, sizeof d->last_reload, "%s", why ? why : "ok");
    pthread_mutex_unlock(&d->cfg_mu);
}

void lmq_daemon_reload_refused(lmq_daemon_t *d, const char *why)
{
    if (!d)
        return;
    record_reload(d, false, why && *why ? why : "refused");
    lmq_log(d->log, LMQ_LOG_ERROR, "daemon", "reload refused, the running configuration stays: %s",
            why && *why ? why : "refused");
}

/* Daemon-wide settings that cannot change under running devices and
 * clients; names the key at fault. */
static int check_fixed_keys(lmq_daemon_t *d, const lmq_daemon_t *next)
{
    if (strcmp(d->control, next->control) != 0) {
        snprintf(d->err, sizeof d->err,
                 "control: the control endpoint cannot change while labmqd runs (serving %.180s, the new "
                 "configuration says %.180s); restart labmqd to move it",
                 d->control, next->control);
        return LMQ_ECONFIG;
    }
    if (strcmp(d->data, next->data) != 0) {
        snprintf(d->err, sizeof d->err,
                 "data: the data endpoint cannot change while labmqd runs (serving %.180s, the new configuration "
                 "says %.180s); restart labmqd to move it",
                 d->data, next->data);
        return LMQ_ECONFIG;
    }
    if (d->time_scale != next->time_scale) {
        snprintf(d->err, sizeof d->err,
                 "time_scale: cannot change while labmqd runs (%g now, %g in the new configuration): it applies to "
                 "every simulated device; restart labmqd",
                 d->time_scale, next->time_scale);
        return LMQ_ECONFIG;
    }
    if (d->subscriber_memory != next->subscriber_memory) {
        snprintf(d->err, sizeof d->err,
                 "subscriber_memory: cannot change while labmqd runs (%zu bytes now, %zu in the new configuration): "
                 "subscriptions were made with it; restart labmqd",
                 d->subscriber_memory, next->subscriber_memory);
        return LMQ_ECONFIG;
    }
    if (d->fault_after_ns != next->fault_after_ns) {
        snprintf(d->err, sizeof d->err,
                 "fault_after: cannot change while labmqd runs (%g s now, %g s in the new configuration); restart "
                 "labmqd",
                 (double)d->fault_after_ns / 1e9, (double)next->fault_after_ns / 1e9);
        return LMQ_ECONFIG;
    }
    /* The ZAP thread reads the allow-list without a lock, and a revoked
     * key's connections would stay open anyway. */
    if (!lmq__auth_same(d->auth, next->auth) || d->insecure != next->insecure) {
        snprintf(d->err, sizeof d->err,
                 "security: the server key, the client allow-list and insecure cannot change while labmqd runs; "
                 "restart labmqd to apply them");
        return LMQ_ECONFIG;
    }
    return 0;
}

static void reload_free(lmq__reload_t *r)
{
    if (!r)
        return;
    free(r->devs);
    free(r->added);
    free(r->removed);
    free(r->successor);
    free(r);
}

/* The device diff: a device whose parsed configuration is unchanged keeps
 * its object (thread, handle, epoch, queue, stats); the others are taken
 * from next (added, reconfigured) or stopped (removed, reconfigured). */
static lmq__reload_t *plan_devices(lmq_dev_t *const *old, size_t nold, lmq_daemon_t *next)
{
    lmq__reload_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    size_t most = nold + next->ndev + 1;
    r->devs = calloc(next->ndev + 1, sizeof *r->devs);
    r->added = calloc(next->ndev + 1, sizeof *r->added);
    r->removed = calloc(most, sizeof *r->removed);
    r->successor = calloc(most, sizeof *r->successor);
    if (!r->devs || !r->added || !r->removed || !r->successor) {
        reload_free(r);
        return NULL;
    }
    for (size_t i = 0; i < next->ndev; i++) {
        lmq_dev_t *nd = next->devs[i], *od = find_dev((lmq_dev_t **)old, nold, nd->name);
        if (od && lmq__dev_same_config(od, nd)) {
            r->devs[r->ndev++] = od;
            continue;
        }
        r->devs[r->ndev++] = nd;
        r->added[r->nadded++] = nd;
        if (od) {
            r->removed[r->nremoved] = od;
            r->successor[r->nremoved++] = nd;
        }
    }
    for (size_t i = 0; i < nold; i++)
        if (!find_dev(next->devs, next->ndev, old[i]->name))
            r->removed[r->nremoved++] = old[i];
    return r;
}

/* One line for the log: what a reload changed. */
static void describe_plan(const lmq__reload_t *r, char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = 0;
#define APPEND(...)                                                                                                    \
    do {                                                                                                               \
        if (len < size)                                                                                                \
            len += (size_t)snprintf(buf + len, size - len, __VA_ARGS__);                                               \
    } while (0)
    size_t nnew = 0, nchanged = 0, ngone = 0;
    for (size_t i = 0; i < r->nadded; i++) {
        bool changed = false;
        for (size_t k = 0; k < r->nremoved; k++)
            changed = changed || r->successor[k] == r->added[i];
        if (!changed)
            APPEND("%s%s", nnew++ ? ", " : "devices added: ", r->added[i]->name);
    }
    for (size_t k = 0; k < r->nremoved; k++)
        if (!r->successor[k])
            APPEND("%s%s", ngone++ ? ", " : nnew ? "; removed: " : "devices removed: ", r->removed[k]->name);
    for (size_t k = 0; k < r->nremoved; k++)
        if (r->successor[k])
            APPEND("%s%s",
                   nchanged++      ? ", "
                   : nnew || ngone ? "; reconfigured: "
                                   : "devices reconfigured: ",
                   r->removed[k]->name);
    APPEND("%s%zu unchanged", nnew || ngone || nchanged ? "; " : "devices: ", r->ndev - r->nadded);
#undef APPEND
}

/* Stops removed and changed workers, then starts added and changed ones. */
static int reload_workers(lmq_daemon_t *d, lmq_daemon_t *next)
{
    lmq_supervisor_set_stop_grace(d->sup, (int)(d->stop_grace_ns / 1000000));
    for (size_t i = 0; i < d->nworkers; i++) {
        const struct lmq__worker_decl *nw = find_worker(next->workers, next->nworkers, d->workers[i].name);
        if (nw && same_worker(nw, &d->workers[i]))
            continue;
        if (lmq__supervisor_remove(d->sup, d->workers[i].name) == 0)
            lmq_log(d->log, LMQ_LOG_INFO, "daemon", "worker %s %s", d->workers[i].name,
                    nw ? "stopped: its declaration changed" : "stopped: removed from the configuration");
    }
    int rc = 0;
    size_t added = 0;
    for (size_t i = 0; i < next->nworkers && rc == 0; i++) {
        const struct lmq__worker_decl *ow = find_worker(d->workers, d->nworkers, next->workers[i].name);
        if (ow && same_worker(ow, &next->workers[i]))
            continue;
        rc = supervise_worker(d, &next->workers[i]);
        added++;
    }
    /* The declarations follow the new configuration from now on. */
    struct lmq__worker_decl *tw = d->workers;
    size_t tn = d->nworkers;
    d->workers = next->workers;
    d->nworkers = next->nworkers;
    next->workers = tw;
    next->nworkers = tn;
    if (rc == 0 && added && strncmp(d->bound_control, "inproc://", 9) == 0)
        lmq_log(d->log, LMQ_LOG_WARN, "daemon",
                "workers are separate processes: they cannot reach the inproc:// endpoints %s and %s", d->bound_control,
                d->bound_data);
    if (rc == 0 && added && lmq_supervisor_count(d->sup) && (rc = lmq_supervisor_start(d->sup)) == LMQ_EARG)
        rc = 0; /* already running: it has started the new ones itself */
    return rc;
}

int lmq_daemon_reload(lmq_daemon_t *d, lmq_daemon_t **pnext)
{
    if (!d || !pnext || !*pnext)
        return LMQ_EARG;
    lmq_daemon_t *next = *pnext;
    lmq__reload_t *r = NULL;
    int rc = 0;
    char summary[400];
    if (!d->running || next->running) {
        snprintf(d->err, sizeof d->err, "%s",
                 !d->running ? "the daemon is not running" : "the new declaration must not be started");
        rc = LMQ_EARG;
        goto out;
    }
    if ((rc = check_fixed_keys(d, next)) != 0)
        goto refused;
    if (!(r = plan_devices(d->devs, d->ndev, next))) {
        snprintf(d->err, sizeof d->err, "out of memory");
        rc = LMQ_EMEM;
        goto refused;
    }
    if (d->epoch_next < (uint64_t)(lmq_clock_real_ns() / 1000))
        d->epoch_next = (uint64_t)(lmq_clock_real_ns() / 1000);
    r->epoch = d->epoch_next;
    r->seq = ++d->reload_seq;
    r->stop_grace_ns = next->stop_grace_ns;
    describe_plan(r, summary, sizeof summary);
    /* The broker swaps the tables while this thread waits for its answer:
     * nobody else touches d->devs meanwhile. */
    if (lmq__send_ptr(d->pipe, LMQ__MSG_RELOAD, r, 0) != 0) {
        snprintf(d->err, sizeof d->err, "cannot reach the broker: %s", zmq_strerror(zmq_errno()));
        rc = LMQ_ESYS;
        goto refused;
    }
    char buf[600];
    int n = zmq_recv(d->pipe, buf, sizeof buf - 1, 0);
    lmq__handoff_acquire(d); /* the broker's reload_reply released it */
    if (n < 1 || buf[0] != LMQ__MSG_READY) {
        /* Nothing changed: the added devices never started (next still
         * owns them, the broker has closed their pipes). */
        if (n >= (int)sizeof buf)
            n = (int)sizeof buf - 1;
        buf[n > 0 ? n : 0] = 0;
        snprintf(d->err, sizeof d->err, "%.500s", n > 2 ? buf + 2 : "the broker did not answer");
        rc = n > 2 ? -(int)(unsigned char)buf[1] : LMQ_ESYS;
        goto refused;
    }
    /* Applied: the added devices are the daemon's now; r->devs holds the
     * old table, whose removed devices the broker frees once stopped. */
    for (size_t i = 0; i < next->ndev; i++)
        for (size_t k = 0; k < r->nadded; k++)
            if (next->devs[i] == r->added[k])
                next->devs[i] = NULL;
    d->epoch_next += r->nadded; /* the broker has taken over the stop grace */
    free(r->devs);
    r->devs = NULL;
    rc = reload_workers(d, next);
    if (rc != 0) {
        /* The devices are applied; a worker that could not be handed over
         * is the only part missing. */
        char why[sizeof d->err];
        snprintf(why, sizeof why, "%s", d->err);
        snprintf(d->err, sizeof d->err, "devices reloaded, but %.480s", why);
        lmq_log(d->log, LMQ_LOG_ERROR, "daemon", "reload: %s", d->err);
        record_reload(d, true, d->err);
        goto out;
    }
    record_reload(d, true, NULL);
    lmq_log(d->log, LMQ_LOG_INFO, "daemon", "reloaded (generation %llu): %s", (unsigned long long)d->generation,
            summary);
    goto out;
refused:
    lmq_daemon_reload_refused(d, d->err);
out:
    reload_free(r);
    lmq_daemon_destroy(pnext);
    return rc;
}
