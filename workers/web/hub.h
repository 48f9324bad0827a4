/* labmq-web — the ZeroMQ side: the control thread (proxies) and the data
 * thread (subscriptions), each owning its sockets alone. They talk to the
 * server thread only through the bridge (bridge.h); the JSON they post is
 * the page's protocol, described in README.md. */
#ifndef LMQ_WEB_HUB_H
#define LMQ_WEB_HUB_H

#include "bridge.h"
#include "labmq/worker.h"

typedef struct web_hub_cfg {
    void *zctx;
    const char *control; /* the daemon's endpoints */
    const char *data;
    int timeout_ms; /* per call to a device */
    lmq_worker_t *worker; /* its stop descriptor is polled by the control thread */
    web_bridge_t *bridge;
} web_hub_cfg_t;

/* Thread bodies (pthread_create); arg: a web_hub_cfg_t that outlives them.
 * Both return when web_bridge_stopping; the control thread calls
 * web_bridge_stop when a stop signal arrives. */
void *web_control_main(void *arg);
void *web_data_main(void *arg);

#endif
