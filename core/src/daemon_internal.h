/* The daemon object, shared by daemon.c (lifecycle, caller's thread) and
 * broker.c (the broker thread). Internal to liblabmq. */
#ifndef LMQ_DAEMON_INTERNAL_H
#define LMQ_DAEMON_INTERNAL_H

#include <pthread.h>
#include "auth_internal.h"
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
    lmq__auth_t *auth; /* keys and allow-list: set before start, read-only after */
    bool insecure;     /* network endpoints without keys allowed */

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
    int64_t fault_after_ns; /* a ready device busy in its driver this long is FAULT; 0: never */
    size_t nstuck;       /* devices left stuck in their driver */
    char stuck_msg[400]; /* their names and what they were doing */

    /* reload (lmq_daemon_reload) */
    uint64_t epoch_next;    /* caller's thread: the next device epoch to hand out */
    uint64_t reload_seq;    /* caller's thread: numbers the device pipes of reloads */
    size_t nabandoned;      /* broker: devices a reload left stuck in their driver */
    pthread_mutex_t cfg_mu; /* guards what ping and stats show of the configuration: */
    uint64_t generation;    /* 1 at start, +1 per reload applied */
    int64_t loaded_ns;      /* real time the running configuration was applied */
    int64_t last_reload_ns; /* real time of the last reload attempt; 0: none */
    char last_reload[512];  /* "ok" or why the last reload was refused */
};

/* A reload on its way from lmq_daemon_reload (caller's thread) to the broker,
 * which applies it and answers 'Y' or 'E'+status+message on the daemon pipe.
 * The broker swaps `devs` in (leaving the old table here for the caller to
 * free), starts `added`, and stops `removed` without blocking its loop. */
typedef struct lmq__reload {
    lmq_dev_t **devs; /* the new device table, in the new config's order */
    size_t ndev;
    lmq_dev_t **added; /* new and reconfigured devices (owned here until applied) */
    size_t nadded;
    lmq_dev_t **removed;   /* devices to stop: gone, or reconfigured */
    lmq_dev_t **successor; /* [nremoved]: its reconfigured replacement, or NULL */
    size_t nremoved;
    uint64_t epoch;        /* added[i] gets epoch + i */
    uint64_t seq;          /* d->reload_seq, for unique pipe endpoints */
    int64_t stop_grace_ns; /* the new config's; applies to the removed devices */
} lmq__reload_t;

/* The daemon pipe's message carrying a reload (lmq__send_ptr). */
#define LMQ__MSG_RELOAD 'L'

/* The broker thread; arg is the daemon. Reports 'Y' (ready) or 'E'+message on
 * its pipe, then serves until it receives LMQ__MSG_TERM. */
void *lmq__broker_main(void *arg);

#endif
