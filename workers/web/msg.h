/* labmq-web: what a browser tab may send (workers/web/README.md), parsed and
 * checked without the server around it, so that it can be fuzzed
 * (tests/fuzz/fuzz_webmsg.c); and which Host names are loopback. */
#ifndef LMQ_WEB_MSG_H
#define LMQ_WEB_MSG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define WEB_NAME_MAX 128
#define WEB_ARGS_MAX 32
#define WEB_ID_MAX 9007199254740991LL /* 2^53 - 1 */

typedef enum { WEB_MSG_SUB, WEB_MSG_UNSUB, WEB_MSG_CMD } web_msg_kind_t;

typedef struct web_msg {
    web_msg_kind_t kind;
    json_t *msg;       /* the whole message (owned; NULL when it was not JSON) */
    json_t *id;        /* its "id" (borrowed from msg; may be NULL) */
    const char *topic; /* SUB, UNSUB: a valid DEVICE/STREAM (borrowed from msg) */
} web_msg_t;

/* Parses one text message of a tab. 0: a well-formed sub/unsub (topic
 * checked) or get/set/call (keys, id, names and args checked; the whole
 * message goes to the daemon); else -1 with the reason in err, to be sent
 * back with out->id. Either way the caller json_decref()s out->msg unless it
 * hands it on. */
int web_msg_parse(const void *data, size_t len, web_msg_t *out, char *err, size_t errlen);

/* Whether a stream topic is DEVICE/STREAM of the characters names use. */
bool web_topic_ok(const char *topic);

/* Whether an HTTP Host header ("name", "name:port", "[v6]:port") names this
 * machine's loopback (localhost, 127.0.0.0/8, ::1). */
bool web_host_is_loopback(const char *host);

#endif
