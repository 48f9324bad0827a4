/* labmq-web — the server thread (see server.h): libwebsockets' protocol
 * callback, the tabs' queues and rate limits, and the model new tabs start
 * from. Everything here runs on the lws thread; the other threads reach it
 * only through the bridge and lws_cancel_service. */
#include "server.h"
#include <arpa/inet.h>
#include <stdarg.h>
#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "labmq/labmq.h"

/* A browser message (JSON text) larger than this is refused: the page's
 * requests are small, so a large one is a mistake or an attack. */
#define WEB_MSG_MAX 65536
#define WEB_CLIENTS_MAX 64
#define WEB_CLIENT_STREAMS_MAX 64
/* Texts waiting for one tab; more means it stopped reading: it is closed
 * (the page reconnects and starts from the model again). */
#define WEB_CLIENT_TEXTS_MAX 4096
/* Requests of one tab waiting for their replies: the control thread runs
 * them one at a time, so more would only queue behind a slow device. */
#define WEB_CLIENT_INFLIGHT_MAX 100
#define WEB_TOPICS_MAX 256
#define WEB_NAME_MAX 128
#define WEB_ARGS_MAX 32
/* Ids the page chooses: JSON-safe integers. */
#define WEB_ID_MAX 9007199254740991LL

typedef struct outmsg {
    struct outmsg *next;
    size_t len;
    unsigned char buf[]; /* LWS_PRE + len */
} outmsg_t;

typedef struct cstream {
    char topic[WEB_TOPIC_MAX];
    web_block_t *pending;
    uint64_t offered, sent, skipped, lost, restarts;
    lws_usec_t last_send;
} cstream_t;

typedef struct web_server web_server_t;

/* One tab: lws's per-session data (zeroed by lws, freed after CLOSED). */
typedef struct client {
    struct client *next;
    struct lws *wsi;
    web_server_t *srv;
    uint64_t id;
    bool live;    /* ESTABLISHED and not yet CLOSED */
    bool closing; /* close at the next WRITEABLE */
    outmsg_t *out, **out_tail;
    size_t nout;
    unsigned inflight; /* requests posted to the control thread, not yet answered */
    cstream_t *streams;
    size_t nstreams;
    unsigned char *rx;
    size_t rxlen;
    lws_sorted_usec_list_t sul;
} client_t;

typedef struct topicref {
    char topic[WEB_TOPIC_MAX];
    unsigned refs;
} topicref_t;

struct web_server {
    web_server_cfg_t cfg;
    struct lws_context *ctx;
    struct lws_vhost *vh;
    struct lws_http_mount mount;
    struct lws_protocols protocols[2];
    client_t *clients;
    size_t nclients;
    uint64_t next_id;
    topicref_t topics[WEB_TOPICS_MAX];
    size_t ntopics;
    json_t *model; /* {"daemon":msg,"list":msg,"stats":msg,"describe":{dev:msg},"values":{dev:{...}}} */
    lws_usec_t interval_us;
    bool done;
};

/* ---- sending ---- */

static void want_write(client_t *c) { lws_callback_on_writable(c->wsi); }

static void close_client(client_t *c, enum lws_close_status why, const char *text)
{
    if (c->closing)
        return;
    c->closing = true;
    lws_close_reason(c->wsi, why, (unsigned char *)text, strlen(text));
    want_write(c);
}

static void send_text(client_t *c, const char *json, size_t len)
{
    if (!c->live || c->closing)
        return;
    if (c->nout >= WEB_CLIENT_TEXTS_MAX) {
        close_client(c, LWS_CLOSE_STATUS_POLICY_VIOLATION, "too many messages waiting: the tab is not reading");
        return;
    }
    outmsg_t *m = malloc(sizeof *m + LWS_PRE + len);
    if (!m) {
        close_client(c, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
        return;
    }
    m->next = NULL;
    m->len = len;
    memcpy(m->buf + LWS_PRE, json, len);
    *c->out_tail = m;
    c->out_tail = &m->next;
    c->nout++;
    want_write(c);
}

static void send_json(client_t *c, json_t *msg)
{
    if (!msg)
        return;
    char *s = json_dumps(msg, JSON_COMPACT);
    if (s)
        send_text(c, s, strlen(s));
    free(s);
    json_decref(msg);
}

static void send_error(client_t *c, json_t *id, const char *fmt, ...) LMQ_PRINTF(3, 4);
static void send_error(client_t *c, json_t *id, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    send_json(c, json_pack("{s:s,s:O,s:s}", "t", "error", "id", id ? id : json_null(), "message", text));
}

static void sul_cb(lws_sorted_usec_list_t *sul)
{
    client_t *c = lws_container_of(sul, client_t, sul);
    want_write(c);
}

/* Asks for WRITEABLE now if something can go, else wakes up when the first
 * pending block is due. */
static void schedule(client_t *c)
{
    if (c->out || c->closing) {
        want_write(c);
        return;
    }
    lws_usec_t now = lws_now_usecs(), first = 0;
    bool any = false;
    for (size_t i = 0; i < c->nstreams; i++) {
        if (!c->streams[i].pending)
            continue;
        lws_usec_t due = c->streams[i].last_send + c->srv->interval_us;
        if (!any || due < first)
            first = due;
        any = true;
    }
    if (!any)
        return;
    if (first <= now)
        want_write(c);
    else
        lws_sul_schedule(c->srv->ctx, 0, &c->sul, sul_cb, first - now);
}

/* The block as one binary message: u32 (LE) header length, the JSON header
 * (padded with spaces so the payload starts 8-aligned), the payload. */
static int write_block(client_t *c, cstream_t *cs)
{
    web_block_t *b = cs->pending;
    json_t *shape = json_array();
    for (unsigned i = 0; i < b->ndim; i++)
        json_array_append_new(shape, json_integer((json_int_t)b->shape[i]));
    json_t *h = json_pack("{s:s,s:I,s:I,s:I,s:s,s:o,s:s,s:I,s:I,s:I,s:I,s:I}", "topic", b->topic, "seq",
                          (json_int_t)b->seq, "epoch", (json_int_t)b->epoch, "t_ns", (json_int_t)b->t_ns, "dtype",
                          lmq_dtype_name(b->dtype), "shape", shape, "units", b->units, "offered",
                          (json_int_t)cs->offered, "sent", (json_int_t)cs->sent + 1, "lost", (json_int_t)cs->lost,
                          "skipped", (json_int_t)cs->skipped, "restarts", (json_int_t)cs->restarts);
    char *hs = h ? json_dumps(h, JSON_COMPACT) : NULL;
    json_decref(h);
    if (!hs)
        return -1;
    size_t hlen = strlen(hs), padded = (4 + hlen + 7) / 8 * 8 - 4, len = 4 + padded + b->size;
    unsigned char *buf = malloc(LWS_PRE + len);
    if (!buf) {
        free(hs);
        return -1;
    }
    unsigned char *p = buf + LWS_PRE;
    p[0] = (unsigned char)(padded & 0xff);
    p[1] = (unsigned char)((padded >> 8) & 0xff);
    p[2] = (unsigned char)((padded >> 16) & 0xff);
    p[3] = (unsigned char)((padded >> 24) & 0xff);
    memcpy(p + 4, hs, hlen);
    memset(p + 4 + hlen, ' ', padded - hlen);
    memcpy(p + 4 + padded, b->data, b->size);
    free(hs);
    int n = lws_write(c->wsi, p, len, LWS_WRITE_BINARY);
    free(buf);
    cs->sent++;
    cs->last_send = lws_now_usecs();
    web_block_unref(&cs->pending);
    return n < (int)len ? -1 : 0;
}

/* One message per WRITEABLE (lws's rule): texts first (replies, events),
 * then the stream that has waited longest among those due. */
static int on_writeable(client_t *c)
{
    if (c->closing)
        return -1;
    if (c->out) {
        outmsg_t *m = c->out;
        c->out = m->next;
        if (!c->out)
            c->out_tail = &c->out;
        c->nout--;
        int n = lws_write(c->wsi, m->buf + LWS_PRE, m->len, LWS_WRITE_TEXT);
        size_t len = m->len;
        free(m);
        if (n < (int)len)
            return -1;
        schedule(c);
        return 0;
    }
    lws_usec_t now = lws_now_usecs();
    cstream_t *best = NULL;
    for (size_t i = 0; i < c->nstreams; i++) {
        cstream_t *cs = &c->streams[i];
        if (cs->pending && cs->last_send + c->srv->interval_us <= now && (!best || cs->last_send < best->last_send))
            best = cs;
    }
    if (best && write_block(c, best) != 0)
        return -1;
    schedule(c);
    return 0;
}

/* ---- the model new tabs start from ---- */

static json_t *model_dev(web_server_t *s, const char *key, const char *device)
{
    json_t *m = json_object_get(s->model, key);
    json_t *d = json_object_get(m, device);
    if (!d) {
        d = json_object();
        json_object_set_new(m, device, d);
    }
    return d;
}

static void model_update(web_server_t *s, json_t *msg)
{
    const char *t = json_string_value(json_object_get(msg, "t"));
    const char *device = json_string_value(json_object_get(msg, "device"));
    if (!t)
        return;
    if (strcmp(t, "daemon") == 0 || strcmp(t, "stats") == 0) {
        json_object_set(s->model, t, msg);
    } else if (strcmp(t, "list") == 0) {
        json_object_set(s->model, "list", msg);
        /* Devices a new daemon no longer has are forgotten. */
        json_t *devs = json_object_get(msg, "devices");
        const char *key[] = {"describe", "values"};
        for (int k = 0; k < 2; k++) {
            json_t *m = json_object_get(s->model, key[k]), *v;
            const char *name;
            void *tmp;
            json_object_foreach_safe(m, tmp, name, v) {
                bool found = false;
                size_t i;
                json_t *d;
                json_array_foreach(devs, i, d)
                    found = found || (json_is_string(json_object_get(d, "name")) &&
                                      strcmp(json_string_value(json_object_get(d, "name")), name) == 0);
                if (!found)
                    json_object_del(m, name);
            }
        }
    } else if (strcmp(t, "describe") == 0 && device) {
        json_object_set(json_object_get(s->model, "describe"), device, msg);
    } else if (strcmp(t, "values") == 0 && device) {
        json_object_update(model_dev(s, "values", device), json_object_get(msg, "values"));
    } else if (strcmp(t, "event") == 0 && device) {
        const char *kind = json_string_value(json_object_get(msg, "kind"));
        if (kind && strcmp(kind, "property") == 0) {
            const char *name = json_string_value(json_object_get(msg, "name"));
            if (name)
                json_object_set(model_dev(s, "values", device), name, json_object_get(msg, "value"));
        } else if (kind && strcmp(kind, "state") == 0) {
            json_t *devs = json_object_get(json_object_get(s->model, "list"), "devices"), *d;
            size_t i;
            json_array_foreach(devs, i, d) {
                const char *name = json_string_value(json_object_get(d, "name"));
                const char *state = json_string_value(json_object_get(msg, "state"));
                const char *error = json_string_value(json_object_get(msg, "error"));
                if (!name || strcmp(name, device) != 0 || !state)
                    continue;
                json_object_set_new(d, "state", json_string(state));
                json_object_set_new(d, "open", json_boolean(strcmp(state, "ready") == 0));
                json_object_set_new(d, "error", error && error[0] ? json_string(error) : json_null());
            }
        }
    }
}

static void send_snapshot(client_t *c)
{
    web_server_t *s = c->srv;
    send_json(c, json_pack("{s:s,s:s,s:I,s:f}", "t", "hello", "version", LMQ_VERSION_STRING, "client",
                           (json_int_t)c->id, "max_rate", s->cfg.max_rate));
    const char *order[] = {"daemon", "list"};
    for (int k = 0; k < 2; k++)
        if (json_object_get(s->model, order[k]))
            send_json(c, json_incref(json_object_get(s->model, order[k])));
    const char *name;
    json_t *v;
    json_object_foreach(json_object_get(s->model, "describe"), name, v)
        send_json(c, json_incref(v));
    json_object_foreach(json_object_get(s->model, "values"), name, v)
        send_json(c, json_pack("{s:s,s:s,s:O}", "t", "values", "device", name, "values", v));
    if (json_object_get(s->model, "stats"))
        send_json(c, json_incref(json_object_get(s->model, "stats")));
}

/* ---- from the other threads ---- */

static client_t *find_client(web_server_t *s, uint64_t id)
{
    for (client_t *c = s->clients; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

static void offer_block(web_server_t *s, web_block_t *b)
{
    for (client_t *c = s->clients; c; c = c->next) {
        cstream_t *cs = NULL;
        for (size_t i = 0; i < c->nstreams && !cs; i++)
            if (strcmp(c->streams[i].topic, b->topic) == 0)
                cs = &c->streams[i];
        if (!cs)
            continue;
        cs->offered += 1 + b->replaced;
        cs->skipped += b->replaced;
        cs->lost += b->lost_before;
        if (b->restarted)
            cs->restarts++;
        if (cs->pending) {
            cs->skipped++;
            web_block_unref(&cs->pending);
        }
        cs->pending = b;
        b->refs++;
        schedule(c);
    }
}

static void drain_bridge(web_server_t *s)
{
    web_text_t *t = web_bridge_take_texts(s->cfg.bridge);
    while (t) {
        web_text_t *nx = t->next;
        if (t->client) { /* a reply */
            client_t *c = find_client(s, t->client);
            if (c) {
                if (c->inflight)
                    c->inflight--;
                send_text(c, t->json, t->len);
            }
        } else {
            json_t *msg = json_loadb(t->json, t->len, 0, NULL);
            model_update(s, msg);
            json_decref(msg);
            for (client_t *c = s->clients; c; c = c->next)
                send_text(c, t->json, t->len);
        }
        web_text_free(t);
        t = nx;
    }
    web_block_t *blocks[64];
    size_t n;
    while ((n = web_bridge_take_blocks(s->cfg.bridge, blocks, 64)) > 0)
        for (size_t i = 0; i < n; i++) {
            offer_block(s, blocks[i]);
            web_block_unref(&blocks[i]);
        }
}

/* ---- from the tabs ---- */

static topicref_t *topic_ref(web_server_t *s, const char *topic, bool create)
{
    for (size_t i = 0; i < s->ntopics; i++)
        if (strcmp(s->topics[i].topic, topic) == 0)
            return &s->topics[i];
    if (!create || s->ntopics >= WEB_TOPICS_MAX)
        return NULL;
    topicref_t *t = &s->topics[s->ntopics++];
    snprintf(t->topic, sizeof t->topic, "%s", topic);
    t->refs = 0;
    return t;
}

static void unsubscribe(client_t *c, size_t i)
{
    web_server_t *s = c->srv;
    topicref_t *t = topic_ref(s, c->streams[i].topic, false);
    if (t && --t->refs == 0) {
        web_bridge_post_subop(s->cfg.bridge, t->topic, false);
        *t = s->topics[--s->ntopics];
    }
    web_block_unref(&c->streams[i].pending);
    c->streams[i] = c->streams[--c->nstreams];
}

/* A topic is DEVICE/STREAM: device and stream names of the daemon's kind. */
static bool topic_ok(const char *topic)
{
    size_t n = strlen(topic);
    const char *slash = strchr(topic, '/');
    if (n < 3 || n >= WEB_TOPIC_MAX || !slash || slash == topic || !slash[1] || strchr(slash + 1, '/'))
        return false;
    for (const char *p = topic; *p; p++)
        if (!(('a' <= *p && *p <= 'z') || ('A' <= *p && *p <= 'Z') || ('0' <= *p && *p <= '9') ||
              strchr("_-./", *p)))
            return false;
    return true;
}

static void on_sub(client_t *c, const char *op, const char *topic)
{
    if (!topic_ok(topic)) {
        send_error(c, NULL, "%s: '%.160s' is not a stream topic (DEVICE/STREAM)", op, topic);
        return;
    }
    size_t i = 0;
    while (i < c->nstreams && strcmp(c->streams[i].topic, topic) != 0)
        i++;
    if (strcmp(op, "unsub") == 0) {
        if (i < c->nstreams)
            unsubscribe(c, i);
        return;
    }
    if (i < c->nstreams)
        return; /* already */
    if (c->nstreams >= WEB_CLIENT_STREAMS_MAX) {
        send_error(c, NULL, "sub: this tab already shows %d streams (the most one tab may)", WEB_CLIENT_STREAMS_MAX);
        return;
    }
    topicref_t *t = topic_ref(c->srv, topic, true);
    if (!t) {
        send_error(c, NULL, "sub: labmq-web already serves %d streams (the most it may)", WEB_TOPICS_MAX);
        return;
    }
    cstream_t *cs = &c->streams[c->nstreams++];
    memset(cs, 0, sizeof *cs);
    snprintf(cs->topic, sizeof cs->topic, "%s", topic);
    if (t->refs++ == 0)
        web_bridge_post_subop(c->srv->cfg.bridge, topic, true);
}

static bool name_ok(const char *s) { return s[0] && strlen(s) <= WEB_NAME_MAX; }

static void on_message(client_t *c, const unsigned char *data, size_t len)
{
    json_error_t e;
    json_t *msg = json_loadb((const char *)data, len, JSON_REJECT_DUPLICATES, &e);
    if (!json_is_object(msg)) {
        send_error(c, NULL, "not a JSON object: %s", msg ? "another JSON value" : e.text);
        json_decref(msg);
        return;
    }
    json_t *id = json_object_get(msg, "id");
    const char *op = json_string_value(json_object_get(msg, "op"));
    if (!op) {
        send_error(c, id, "'op' is missing or not a string (sub, unsub, get, set, call)");
    } else if (strcmp(op, "sub") == 0 || strcmp(op, "unsub") == 0) {
        const char *topic;
        if (json_unpack_ex(msg, &e, JSON_STRICT, "{s:s,s:s}", "op", &op, "topic", &topic) != 0)
            send_error(c, id, "%s: %s", op, e.text);
        else
            on_sub(c, op, topic);
    } else if (strcmp(op, "get") == 0 || strcmp(op, "set") == 0 || strcmp(op, "call") == 0) {
        json_int_t n;
        const char *device, *name;
        json_t *extra = NULL;
        int rc = strcmp(op, "get") == 0
                     ? json_unpack_ex(msg, &e, JSON_STRICT, "{s:s,s:I,s:s,s:s}", "op", &op, "id", &n, "device",
                                      &device, "name", &name)
                     : json_unpack_ex(msg, &e, JSON_STRICT, "{s:s,s:I,s:s,s:s,s:o}", "op", &op, "id", &n, "device",
                                      &device, "name", &name, strcmp(op, "set") == 0 ? "value" : "args", &extra);
        if (rc != 0)
            send_error(c, id, "%s: %s", op, e.text);
        else if (n < 0 || n > WEB_ID_MAX)
            send_error(c, id, "%s: 'id' must be an integer from 0 to 2^53-1", op);
        else if (!name_ok(device) || !name_ok(name))
            send_error(c, id, "%s: 'device' and 'name' must have 1 to %d characters", op, WEB_NAME_MAX);
        else if (strcmp(op, "call") == 0 && (!json_is_array(extra) || json_array_size(extra) > WEB_ARGS_MAX))
            send_error(c, id, "call: 'args' must be a list of at most %d values", WEB_ARGS_MAX);
        else if (c->inflight >= WEB_CLIENT_INFLIGHT_MAX)
            send_error(c, id, "%s: this tab already has %d requests waiting for their replies", op,
                       WEB_CLIENT_INFLIGHT_MAX);
        else {
            c->inflight++;
            web_bridge_post_cmd(c->srv->cfg.bridge, c->id, msg);
            return; /* taken */
        }
    } else {
        send_error(c, id, "unknown op '%.64s' (sub, unsub, get, set, call)", op);
    }
    json_decref(msg);
}

static int on_receive(client_t *c, const void *in, size_t len)
{
    /* The frame's announced length counts: a frame claiming 2^62 bytes is
     * refused at its first bytes, not after a wait for the rest. */
    if (c->rxlen + len + lws_remaining_packet_payload(c->wsi) > WEB_MSG_MAX) {
        lws_close_reason(c->wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, (unsigned char *)"message over 65536 bytes", 24);
        return -1;
    }
    unsigned char *rx = realloc(c->rx, c->rxlen + len + 1);
    if (!rx)
        return -1;
    c->rx = rx;
    memcpy(c->rx + c->rxlen, in, len);
    c->rxlen += len;
    if (!lws_is_final_fragment(c->wsi))
        return 0;
    if (lws_frame_is_binary(c->wsi))
        send_error(c, NULL, "binary messages are not accepted: send JSON text");
    else
        on_message(c, c->rx, c->rxlen);
    c->rxlen = 0;
    return 0;
}

/* ---- who may open a WebSocket ---- */

static bool host_is_loopback(const char *host)
{
    char name[256];
    snprintf(name, sizeof name, "%s", host);
    char *end;
    if (name[0] == '[') { /* [::1]:port */
        end = strchr(name, ']');
        if (!end)
            return false;
        *end = '\0';
        memmove(name, name + 1, strlen(name + 1) + 1);
    } else if ((end = strrchr(name, ':')) != NULL) {
        *end = '\0';
    }
    if (strcasecmp(name, "localhost") == 0)
        return true;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, name, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return inet_pton(AF_INET6, name, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* Another web site open in the same browser must not drive the lab: a
 * browser always names the page's origin, which must be this server (the
 * Host the browser asked for). A loopback server also wants a loopback Host,
 * so a rebound DNS name cannot reach it. */
static bool admit(web_server_t *s, struct lws *wsi, char *why, size_t whysize)
{
    char host[256] = "", origin[300] = "", expect[300];
    if (lws_hdr_copy(wsi, host, sizeof host, WSI_TOKEN_HOST) <= 0) {
        snprintf(why, whysize, "no Host header");
        return false;
    }
    if (s->cfg.loopback && !host_is_loopback(host)) {
        snprintf(why, whysize, "Host '%s' is not a loopback name", host);
        return false;
    }
    if (lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) > 0) {
        if (lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN) <= 0)
            origin[0] = '\0';
        snprintf(expect, sizeof expect, "http://%s", host);
        if (strcasecmp(origin, expect) != 0) {
            snprintf(why, whysize, "Origin '%s' is not this server (%s)", origin, expect);
            return false;
        }
    }
    if (s->nclients >= WEB_CLIENTS_MAX) {
        snprintf(why, whysize, "already %d tabs connected", WEB_CLIENTS_MAX);
        return false;
    }
    return true;
}

/* ---- the protocol callback ---- */

static void client_closed(web_server_t *s, client_t *c)
{
    if (!c->live)
        return;
    c->live = false;
    lws_sul_cancel(&c->sul);
    for (client_t **pp = &s->clients; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    s->nclients--;
    while (c->nstreams)
        unsubscribe(c, c->nstreams - 1);
    free(c->streams);
    while (c->out) {
        outmsg_t *m = c->out;
        c->out = m->next;
        free(m);
    }
    free(c->rx);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    web_server_t *s = lws_context_user(lws_get_context(wsi));
    client_t *c = user;
    char why[400];
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        if (!admit(s, wsi, why, sizeof why)) {
            lwsl_warn("refused a WebSocket: %s\n", why);
            return 1;
        }
        return 0;
    case LWS_CALLBACK_FILTER_HTTP_CONNECTION:
        /* The page is files to GET: anything else (POST with a body to
         * read, PUT, ...) is refused before lws looks further. */
        if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0 && lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) <= 0) {
            lws_return_http_status(wsi, HTTP_STATUS_METHOD_NOT_ALLOWED, "labmq-web serves GET and HEAD only");
            return 1;
        }
        return 0;
    case LWS_CALLBACK_ESTABLISHED:
        c->streams = calloc(WEB_CLIENT_STREAMS_MAX, sizeof *c->streams);
        if (!c->streams)
            return -1;
        c->wsi = wsi;
        c->srv = s;
        c->id = ++s->next_id;
        c->out_tail = &c->out;
        c->live = true;
        c->next = s->clients;
        s->clients = c;
        s->nclients++;
        send_snapshot(c);
        return 0;
    case LWS_CALLBACK_RECEIVE:
        return c && c->live ? on_receive(c, in, len) : -1;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return c && c->live ? on_writeable(c) : 0;
    case LWS_CALLBACK_CLOSED:
        if (c)
            client_closed(s, c);
        return 0;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        if (s) {
            drain_bridge(s);
            if (web_bridge_stopping(s->cfg.bridge))
                s->done = true;
        }
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static void wake(void *arg) { lws_cancel_service(arg); }

static void log_emit(int level, const char *line)
{
    (void)level;
    fprintf(stderr, "labmq-web: %s", line);
}

web_server_t *web_server_new(const web_server_cfg_t *cfg, char *err, size_t errsize)
{
    web_server_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errsize, "out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    s->interval_us = (lws_usec_t)(1e6 / cfg->max_rate);
    s->model = json_pack("{s:{},s:{}}", "describe", "values");
    s->protocols[0] = (struct lws_protocols){
        .name = "labmq", .callback = callback, .per_session_data_size = sizeof(client_t), .rx_buffer_size = 4096};
    s->mount = (struct lws_http_mount){.mountpoint = "/",
                                       .mountpoint_len = 1,
                                       .origin = cfg->www,
                                       .def = "index.html",
                                       .origin_protocol = LWSMPRO_FILE};
    lws_set_log_level(LLL_ERR | LLL_WARN, log_emit);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = cfg->port;
    info.iface = cfg->host;
    info.protocols = s->protocols;
    info.mounts = &s->mount;
    info.user = s;
    info.options = LWS_SERVER_OPTION_VALIDATE_UTF8 | LWS_SERVER_OPTION_HTTP_HEADERS_SECURITY_BEST_PRACTICES_ENFORCE;
    struct in_addr a4;
    if (inet_pton(AF_INET, cfg->host, &a4) == 1)
        info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
    s->ctx = s->model ? lws_create_context(&info) : NULL;
    if (!s->ctx) {
        snprintf(err, errsize, "cannot listen on %s port %d (in use, or not an address of this machine?)", cfg->host,
                 cfg->port);
        json_decref(s->model);
        free(s);
        return NULL;
    }
    s->vh = lws_get_vhost_by_name(s->ctx, "default");
    web_bridge_set_waker(cfg->bridge, wake, s->ctx);
    return s;
}

int web_server_port(web_server_t *s) { return s->vh ? lws_get_vhost_listen_port(s->vh) : -1; }

void web_server_run(web_server_t *s)
{
    while (!s->done && !web_bridge_stopping(s->cfg.bridge))
        if (lws_service(s->ctx, 0) < 0)
            break;
}

void web_server_destroy(web_server_t **ps)
{
    if (!ps || !*ps)
        return;
    web_server_t *s = *ps;
    web_bridge_set_waker(s->cfg.bridge, NULL, NULL);
    lws_context_destroy(s->ctx); /* CLOSED for every tab: their state goes */
    json_decref(s->model);
    free(s);
    *ps = NULL;
}
