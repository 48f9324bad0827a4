/* labmq-web — the queues between its threads.
 *
 * labmq-web runs three threads: the control thread owns the proxies (calls,
 * describe, list, ping, stats), the data thread owns the subscriptions
 * (streams and change events), and the server thread owns libwebsockets.
 * No socket or lws object crosses a thread; only the messages below do,
 * through one mutex. The ZeroMQ threads are woken by an eventfd each (they
 * zmq_poll it), the server thread by a waker (lws_cancel_service).
 *
 * Stream blocks do not queue: each topic has one slot, and a block that
 * arrives before the server took the previous one replaces it (latest wins),
 * carrying the count of blocks it replaced and their upstream losses. So a
 * busy server thread delays nothing upstream and holds one block per stream. */
#ifndef LMQ_WEB_BRIDGE_H
#define LMQ_WEB_BRIDGE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "labmq/value.h"

#define WEB_TOPIC_MAX 160
#define WEB_UNITS_MAX 32

/* A text (JSON) message for one browser (client != 0) or for all (0). */
typedef struct web_text {
    struct web_text *next;
    uint64_t client;
    size_t len;
    char *json; /* owned */
} web_text_t;

/* One stream block, copied out of its ZeroMQ message. Once posted it
 * belongs to the server thread, which shares it between browsers by refs. */
typedef struct web_block {
    int refs;
    char topic[WEB_TOPIC_MAX];
    uint64_t seq, epoch;
    int64_t t_ns;
    uint64_t lost_before; /* upstream: seq gap before it (and before blocks it replaced) */
    uint64_t replaced;    /* blocks it replaced in its slot before the server took them */
    bool restarted;       /* a new epoch starts with it (or with a block it replaced) */
    lmq_dtype_t dtype;
    unsigned ndim;
    size_t shape[LMQ_MAX_DIMS];
    char units[WEB_UNITS_MAX];
    size_t size;
    unsigned char *data; /* owned */
} web_block_t;

/* A request for the control thread: a browser's (client, its JSON, taken)
 * or the data thread's "refresh" of a device that became ready (client 0). */
typedef struct web_cmd {
    struct web_cmd *next;
    uint64_t client;
    json_t *req;
} web_cmd_t;

/* Subscribe to (on) or drop (off) a stream, for the data thread. */
typedef struct web_subop {
    struct web_subop *next;
    bool on;
    char topic[WEB_TOPIC_MAX];
} web_subop_t;

typedef struct web_bridge web_bridge_t;

/* NULL when the system refuses (errno set). */
web_bridge_t *web_bridge_new(void);
/* Frees everything still queued. The threads must have ended. */
void web_bridge_destroy(web_bridge_t **b);

/* How the ZeroMQ threads wake the server thread; must be thread-safe. */
void web_bridge_set_waker(web_bridge_t *b, void (*wake)(void *arg), void *arg);

/* Control/data thread -> server. Both take ownership (also on failure). */
void web_bridge_post_text(web_bridge_t *b, uint64_t client, char *json);
void web_bridge_post_block(web_bridge_t *b, web_block_t *blk);
/* Server side: the texts in order (a list the caller frees with
 * web_text_free), and the latest block of each topic (at most max). */
web_text_t *web_bridge_take_texts(web_bridge_t *b);
size_t web_bridge_take_blocks(web_bridge_t *b, web_block_t **out, size_t max);
/* Texts dropped because the server thread fell more than WEB_TEXT_QUEUE_MAX
 * behind (a stalled server; never expected). */
uint64_t web_bridge_texts_dropped(web_bridge_t *b);

/* Server/data thread -> control thread (req taken). */
void web_bridge_post_cmd(web_bridge_t *b, uint64_t client, json_t *req);
web_cmd_t *web_bridge_take_cmds(web_bridge_t *b);
/* Server -> data thread. */
void web_bridge_post_subop(web_bridge_t *b, const char *topic, bool on);
web_subop_t *web_bridge_take_subops(web_bridge_t *b);

/* Readable when commands (resp. sub operations, or stop) are waiting; for
 * zmq_poll. Reading is done by the take functions. */
int web_bridge_control_fd(const web_bridge_t *b);
int web_bridge_data_fd(const web_bridge_t *b);

/* Asks every thread to end (any thread may call it); wakes them all. */
void web_bridge_stop(web_bridge_t *b);
bool web_bridge_stopping(web_bridge_t *b);

web_block_t *web_block_new(size_t size);
void web_block_unref(web_block_t **blk);
void web_text_free(web_text_t *t);
void web_cmd_free(web_cmd_t *c);
void web_subop_free(web_subop_t *s);

#endif
