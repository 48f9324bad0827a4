#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "daemon_internal.h"
#include "labmq/status.h"

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
    if (!d->control || !d->data || !d->wires) {
        lmq_daemon_destroy(&d);
        return NULL;
    }
    snprintf(d->pipe_endpoint, sizeof d->pipe_endpoint, "inproc://lmq-daemon-%p", (void *)d);
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
    d->devs[d->ndev++] = dev;
    return 0;
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
        return LMQ_EMEM;
    }
    if (pthread_create(&d->broker, NULL, lmq__broker_main, d) != 0) {
        zmq_close(d->pipe);
        d->pipe = NULL;
        snprintf(d->err, sizeof d->err, "cannot start the broker thread");
        return LMQ_EMEM;
    }
    d->running = true;
    char buf[600];
    int n = zmq_recv(d->pipe, buf, sizeof buf - 1, 0);
    if (n >= 1 && buf[0] == LMQ__MSG_READY)
        return 0;
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
    return LMQ_EIO;
}

void lmq_daemon_destroy(lmq_daemon_t **pd)
{
    if (!pd || !*pd)
        return;
    lmq_daemon_t *d = *pd;
    if (d->running) {
        char term = LMQ__MSG_TERM;
        zmq_send(d->pipe, &term, 1, 0);
        pthread_join(d->broker, NULL);
        d->running = false;
    }
    if (d->pipe)
        zmq_close(d->pipe);
    for (size_t i = 0; i < d->ndev; i++)
        lmq__dev_destroy(&d->devs[i]);
    free(d->devs);
    lmq__wires_destroy(&d->wires);
    free(d->control);
    free(d->data);
    free(d);
    *pd = NULL;
}
