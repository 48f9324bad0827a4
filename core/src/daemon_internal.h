/* The daemon object, shared by daemon.c (lifecycle, caller's thread) and
 * broker.c (the broker thread). Internal to liblabmq. */
#ifndef LMQ_DAEMON_INTERNAL_H
#define LMQ_DAEMON_INTERNAL_H

#include <pthread.h>
#include "device_internal.h"
#include "labmq/daemon.h"
#include "labmq/supervise.h"

struct lmq_daemon {
    void *zctx;
    char *control, *data;
    lmq_log_t *log;
    lmq_dev_t **devs;
    size_t ndev, cap;
    lmq__wires_t *wires;
    uint64_t epoch;
    char pipe_endpoint[96];
    char err[512];
    double time_scale;
    size_t subscriber_memory; /* bytes held per stream subscriber at most (protocol 3.2) */

    /* Workers: declared before start, handed to the supervisor (with the
     * bound endpoints in their argv) once the broker is up. The broker
     * reads the supervisor's state, which is thread-safe. */
    lmq_supervisor_t *sup;
    struct lmq__worker_decl {
        char *name;
        char **argv; /* the program and its own arguments */
        char **envp; /* NULL: the daemon's environment */
        lmq_restart_t restart;
    } *workers;
    size_t nworkers;

    /* caller's thread */
    void *pipe;
    pthread_t broker;
    bool running;

    /* broker thread; the bound endpoints are written before it reports ready */
    char bound_control[256], bound_data[256]; /* as ZeroMQ bound them: ports resolved */
    int64_t started_ns;
    uint64_t requests, errors;
    uint64_t replies_dropped;       /* refused-request replies a non-reading client lost */
    uint64_t replies_undeliverable; /* replies to clients that had disconnected */

    /* shutdown: set before start, read after the broker has exited */
    int64_t stop_grace_ns;
    size_t nstuck;       /* devices left stuck in their driver */
    char stuck_msg[400]; /* their names and what they were doing */
};

/* The broker thread; arg is the daemon. Reports 'Y' (ready) or 'E'+message on
 * its pipe, then serves until it receives LMQ__MSG_TERM. */
void *lmq__broker_main(void *arg);

#endif
