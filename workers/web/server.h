/* labmq-web — the server thread: HTTP (the page's static files) and the
 * WebSocket each browser tab opens, on libwebsockets' own event loop.
 *
 * It keeps the model every new tab starts from (daemon, device list,
 * descriptions, last known property values, stats), fans the control and
 * data threads' messages out to the tabs, and sends each tab at most
 * max_rate blocks per second per stream: a block that arrives while the
 * previous one still waits for that tab replaces it (latest wins) and is
 * counted as skipped for that tab, so a slow tab holds one block per stream
 * and slows nothing else. */
#ifndef LMQ_WEB_SERVER_H
#define LMQ_WEB_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include "bridge.h"

typedef struct web_server_cfg {
    const char *host; /* numeric address to bind (127.0.0.1, ::1, 0.0.0.0, ...) */
    int port;         /* 0: any free port (see web_server_port) */
    bool loopback;    /* bound to loopback: WebSockets must name a loopback Host */
    const char *www;  /* the page's directory */
    double max_rate;  /* blocks per second per stream per tab */
    web_bridge_t *bridge;
} web_server_cfg_t;

typedef struct web_server web_server_t;

/* Binds and prepares to serve. NULL with the reason in err. */
web_server_t *web_server_new(const web_server_cfg_t *cfg, char *err, size_t errsize);
void web_server_destroy(web_server_t **s);
/* The port it listens on. */
int web_server_port(web_server_t *s);
/* Serves until web_bridge_stopping. Wakes on the bridge's posts. */
void web_server_run(web_server_t *s);

#endif
