/* labmq-web — the control thread (proxies: ping, list, describe, stats, and
 * the browsers' get/set/call) and the data thread (stream subscriptions and
 * change events). Each owns its ZeroMQ sockets alone and posts JSON texts
 * and stream blocks to the server thread through the bridge.
 *
 * The control thread pings the daemon every TICK_MS: a failed ping marks it
 * down; a daemon that answers again, or answers with a later start time
 * (uptime reset: it restarted), is read anew (list, describe, every
 * property). The data thread needs nothing of the kind: ZeroMQ reconnects
 * its subscriptions by itself, and the blocks' epoch tells a restart. */
#include "hub.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>
#include "labmq/labmq.h"

#define TICK_MS 1000
/* A restart moves the daemon's start time by at least this much; two pings
 * of one daemon differ only by rounding and scheduling. */
#define RESTART_SLACK_S 1.5
#define PING_TIMEOUT_MS 500
#define DEVICES_MAX 1024
#define STREAMS_MAX 128
/* Blocks taken from one subscription before the others get their turn. */
#define DRAIN_MAX 64
/* Blocks the daemon may hold for one stream of labmq-web (a lossy flow
 * subscription keeps the newest): enough for a tab's frame rate. */
#define WEB_WINDOW 16
/* How often each flow subscription is served at least (credit, lease). */
#define RENEW_MS 250
/* Elements of an array value shown in the page (it is not plotted). */
#define ARRAY_HEAD 8

static double now_s(int clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- values <-> JSON (the page's form of protocol 2.2) ---- */

static double element(const lmq_array_t *a, size_t i)
{
    const unsigned char *p = (const unsigned char *)a->data + i * lmq_dtype_size(a->dtype);
    union {
        uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
        uint64_t u64; int64_t i64; float f32; double f64;
    } u;
    memcpy(&u, p, lmq_dtype_size(a->dtype));
    switch (a->dtype) {
    case LMQ_U8: return u.u8;
    case LMQ_I8: return u.i8;
    case LMQ_U16: return u.u16;
    case LMQ_I16: return u.i16;
    case LMQ_U32: return u.u32;
    case LMQ_I32: return u.i32;
    case LMQ_U64: return (double)u.u64;
    case LMQ_I64: return (double)u.i64;
    case LMQ_F32: return u.f32;
    case LMQ_F64: return u.f64;
    default: return NAN;
    }
}

/* A number JSON can carry: NaN and infinities become strings. */
static json_t *number_json(double d)
{
    if (isnan(d))
        return json_string("NaN");
    if (isinf(d))
        return json_string(d > 0 ? "Infinity" : "-Infinity");
    return json_real(d);
}

/* Arrays become {"$array": dtype, "shape": [...], "head": [first values]}:
 * the page shows them as a summary, never as a list of every element. */
static json_t *value_json(const lmq_value_t *v)
{
    switch (v->type) {
    case LMQ_NONE: return json_null();
    case LMQ_BOOL: return json_boolean(v->u.b);
    case LMQ_INT: return json_integer(v->u.i);
    case LMQ_FLOAT: return number_json(v->u.f);
    case LMQ_STRING: return json_string(v->u.s);
    case LMQ_ARRAY: {
        const lmq_array_t *a = &v->u.a;
        json_t *shape = json_array(), *head = json_array();
        size_t n = 1;
        for (unsigned i = 0; i < a->ndim; i++) {
            json_array_append_new(shape, json_integer((json_int_t)a->shape[i]));
            n *= a->shape[i];
        }
        for (size_t i = 0; i < n && i < ARRAY_HEAD; i++)
            json_array_append_new(head, number_json(element(a, i)));
        return json_pack("{s:s,s:o,s:o,s:I}", "$array", lmq_dtype_name(a->dtype), "shape", shape, "head", head,
                         "size", (json_int_t)n);
    }
    }
    return json_null();
}

/* A browser's value: scalars only (the page has no way to enter arrays). */
static int json_value(const json_t *j, lmq_value_t *v, char *err, size_t errsize)
{
    memset(v, 0, sizeof *v);
    switch (json_typeof(j)) {
    case JSON_NULL: return 0;
    case JSON_TRUE: *v = lmq_bool(true); return 0;
    case JSON_FALSE: *v = lmq_bool(false); return 0;
    case JSON_INTEGER: *v = lmq_int(json_integer_value(j)); return 0;
    case JSON_REAL: *v = lmq_float(json_real_value(j)); return 0;
    case JSON_STRING:
        if (lmq_value_set_string(v, json_string_value(j)) != 0) {
            snprintf(err, errsize, "a string value could not be stored");
            return LMQ_EMEM;
        }
        return 0;
    default:
        snprintf(err, errsize, "arrays and objects cannot be sent from the page: give a number, bool or string");
        return LMQ_EARG;
    }
}

/* ---- the control thread ---- */

typedef struct devproxy {
    char *name;
    lmq_proxy_t *p;
} devproxy_t;

typedef struct control {
    const web_hub_cfg_t *cfg;
    lmq_proxy_t *daemon;
    devproxy_t *devs;
    size_t ndevs;
    bool up;
    bool reported; /* the daemon's state has been posted at least once */
    double started; /* the daemon's start, Unix seconds */
    uint64_t restarts;
    char down_reason[256];
} control_t;

static void post(control_t *c, uint64_t client, json_t *msg)
{
    if (!msg)
        return;
    web_bridge_post_text(c->cfg->bridge, client, json_dumps(msg, JSON_COMPACT));
    json_decref(msg);
}

/* The result of a proxy's JSON op, parsed; NULL when it failed or the text
 * is not JSON (a daemon bug: reported as the reason). */
static json_t *parse_result(char *text, char *why, size_t whysize)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &e);
    if (!j)
        snprintf(why, whysize, "the daemon's answer is not JSON: %s", e.text);
    free(text);
    return j;
}

static void drop_devices(control_t *c)
{
    for (size_t i = 0; i < c->ndevs; i++) {
        lmq_proxy_destroy(&c->devs[i].p);
        free(c->devs[i].name);
    }
    free(c->devs);
    c->devs = NULL;
    c->ndevs = 0;
}

static devproxy_t *find_dev(control_t *c, const char *name)
{
    for (size_t i = 0; i < c->ndevs; i++)
        if (strcmp(c->devs[i].name, name) == 0)
            return &c->devs[i];
    return NULL;
}

/* Reads every property of a ready device and posts them as one "values".
 * A device that stops answering is not asked again for each property: the
 * calls run one at a time, and the tabs' requests wait behind them. */
static void refresh_values(control_t *c, devproxy_t *d, json_t *describe)
{
    const char *state = json_string_value(json_object_get(describe, "state"));
    if (!state || strcmp(state, "ready") != 0)
        return; /* read when it is ready (its state event asks for that) */
    json_t *values = json_object(), *props = json_object_get(describe, "properties"), *prop;
    size_t i;
    json_array_foreach(props, i, prop) {
        const char *name = json_string_value(json_object_get(prop, "name"));
        if (!name)
            continue;
        lmq_value_t v = {0};
        int rc = lmq_proxy_get(d->p, name, &v);
        if (rc == 0)
            json_object_set_new(values, name, value_json(&v));
        lmq_value_clear(&v);
        if (rc == LMQ_ETIMEOUT || rc == LMQ_EIO || rc == LMQ_EUNREACH || rc == LMQ_ECLOSED)
            break;
    }
    post(c, 0, json_pack("{s:s,s:s,s:o}", "t", "values", "device", d->name, "values", values));
}

static void refresh_device(control_t *c, devproxy_t *d)
{
    char *text = NULL, why[256] = "";
    int rc = lmq_proxy_describe(d->p, &text);
    if (rc != 0) {
        post(c, 0, json_pack("{s:s,s:s,s:{s:s,s:s}}", "t", "describe_failed", "device", d->name, "error", "code",
                             lmq_status_name(rc), "message", lmq_proxy_last_error(d->p)));
        return;
    }
    json_t *desc = parse_result(text, why, sizeof why);
    if (!desc)
        return;
    post(c, 0, json_pack("{s:s,s:s,s:O}", "t", "describe", "device", d->name, "d", desc));
    refresh_values(c, d, desc);
    json_decref(desc);
}

/* list, then describe and read every device; the device proxies follow the list. */
static void refresh_all(control_t *c)
{
    char *text = NULL, why[256] = "";
    if (lmq_proxy_list(c->daemon, &text) != 0)
        return; /* the next tick's ping sees why */
    json_t *list = parse_result(text, why, sizeof why);
    if (!json_is_array(list)) {
        json_decref(list);
        return;
    }
    drop_devices(c);
    size_t n = json_array_size(list) < DEVICES_MAX ? json_array_size(list) : DEVICES_MAX;
    c->devs = calloc(n ? n : 1, sizeof *c->devs);
    for (size_t i = 0; c->devs && i < n; i++) {
        const char *name = json_string_value(json_object_get(json_array_get(list, i), "name"));
        if (!name)
            continue;
        devproxy_t *d = &c->devs[c->ndevs];
        d->name = strdup(name);
        d->p = d->name ? lmq_proxy_new(c->cfg->zctx, c->cfg->control, name) : NULL;
        if (!d->p) {
            free(d->name);
            continue;
        }
        lmq_proxy_set_timeout(d->p, c->cfg->timeout_ms);
        c->ndevs++;
    }
    post(c, 0, json_pack("{s:s,s:O}", "t", "list", "devices", list));
    json_decref(list);
    for (size_t i = 0; i < c->ndevs; i++)
        refresh_device(c, &c->devs[i]);
}

static void post_daemon(control_t *c, json_t *ping)
{
    json_t *msg = json_pack("{s:s,s:b,s:s,s:s,s:I}", "t", "daemon", "up", c->up, "control", c->cfg->control, "data",
                            c->cfg->data, "restarts", (json_int_t)c->restarts);
    if (c->up) {
        json_object_set_new(msg, "started_s", json_real(c->started));
        json_object_set(msg, "ping", ping);
    } else {
        json_object_set_new(msg, "error", json_string(c->down_reason));
    }
    post(c, 0, msg);
}

static void tick(control_t *c)
{
    char *text = NULL, why[256] = "";
    int rc = lmq_proxy_ping(c->daemon, &text);
    json_t *ping = rc == 0 ? parse_result(text, why, sizeof why) : NULL;
    json_t *uptime = json_object_get(ping, "uptime_s");
    if (!ping || !json_is_number(uptime)) {
        char reason[256];
        snprintf(reason, sizeof reason, "%s", rc != 0 ? lmq_proxy_last_error(c->daemon) : why[0] ? why : "no uptime in the ping");
        if (c->up || !c->reported || strcmp(reason, c->down_reason) != 0) {
            c->up = false;
            c->reported = true;
            snprintf(c->down_reason, sizeof c->down_reason, "%s", reason);
            post_daemon(c, NULL);
        }
        json_decref(ping);
        return;
    }
    double started = now_s(CLOCK_REALTIME) - json_number_value(uptime);
    /* Answering all along or back after a silence, a daemon that started at
     * another time is a new one. */
    bool new_daemon = c->started != 0 && fabs(started - c->started) > RESTART_SLACK_S;
    if (new_daemon)
        c->restarts++;
    if (!c->up || new_daemon) {
        c->up = c->reported = true;
        c->started = started;
        post_daemon(c, ping);
        refresh_all(c);
    }
    json_decref(ping);
    text = NULL;
    if (lmq_proxy_stats(c->daemon, &text) == 0) {
        json_t *stats = parse_result(text, why, sizeof why);
        if (stats)
            post(c, 0, json_pack("{s:s,s:o}", "t", "stats", "s", stats));
    }
}

static void reply_error(control_t *c, uint64_t client, json_t *id, int rc, const char *message)
{
    post(c, client, json_pack("{s:s,s:O,s:b,s:{s:s,s:s}}", "t", "reply", "id", id, "ok", 0, "error", "code",
                              lmq_status_name(rc), "message", message));
}

/* A browser's get/set/call (its shape checked by the server thread), or a
 * device refresh from the data thread. */
static void run_cmd(control_t *c, web_cmd_t *cmd)
{
    const char *op = json_string_value(json_object_get(cmd->req, "op"));
    const char *device = json_string_value(json_object_get(cmd->req, "device"));
    const char *name = json_string_value(json_object_get(cmd->req, "name"));
    json_t *id = json_object_get(cmd->req, "id");
    if (!op || !device)
        return;
    devproxy_t *d = find_dev(c, device);
    if (strcmp(op, "refresh") == 0) {
        if (d)
            refresh_device(c, d);
        return;
    }
    if (!name || !id)
        return;
    /* A device the list did not show: the daemon words the answer. */
    devproxy_t temp = {0};
    if (!d) {
        temp.name = (char *)device;
        temp.p = lmq_proxy_new(c->cfg->zctx, c->cfg->control, device);
        if (!temp.p) {
            reply_error(c, cmd->client, id, LMQ_EMEM, "out of memory");
            return;
        }
        lmq_proxy_set_timeout(temp.p, c->cfg->timeout_ms);
        d = &temp;
    }
    char err[256] = "";
    lmq_value_t result = {0};
    int rc = 0;
    if (strcmp(op, "get") == 0) {
        rc = lmq_proxy_get(d->p, name, &result);
    } else if (strcmp(op, "set") == 0) {
        lmq_value_t v;
        rc = json_value(json_object_get(cmd->req, "value"), &v, err, sizeof err);
        if (rc == 0)
            rc = lmq_proxy_set(d->p, name, &v);
        lmq_value_clear(&v);
    } else { /* call */
        json_t *args = json_object_get(cmd->req, "args");
        size_t n = json_array_size(args);
        lmq_value_t *vals = calloc(n ? n : 1, sizeof *vals);
        if (!vals) {
            rc = LMQ_EMEM;
            snprintf(err, sizeof err, "out of memory");
        }
        for (size_t i = 0; rc == 0 && i < n; i++) {
            char why[200];
            rc = json_value(json_array_get(args, i), &vals[i], why, sizeof why);
            if (rc != 0)
                snprintf(err, sizeof err, "argument %zu: %s", i + 1, why);
        }
        if (rc == 0)
            rc = lmq_proxy_call(d->p, name, vals, n, &result);
        for (size_t i = 0; vals && i < n; i++)
            lmq_value_clear(&vals[i]);
        free(vals);
    }
    if (rc != 0) {
        reply_error(c, cmd->client, id, rc, err[0] ? err : lmq_proxy_last_error(d->p));
    } else {
        json_t *r = value_json(&result);
        if (strcmp(op, "get") == 0) /* what was read is news for every page */
            post(c, 0, json_pack("{s:s,s:s,s:{s:O}}", "t", "values", "device", device, "values", name, r));
        post(c, cmd->client, json_pack("{s:s,s:O,s:b,s:o}", "t", "reply", "id", id, "ok", 1, "result", r));
    }
    lmq_value_clear(&result);
    lmq_proxy_destroy(&temp.p);
}

void *web_control_main(void *arg)
{
    const web_hub_cfg_t *cfg = arg;
    control_t c = {.cfg = cfg};
    c.daemon = lmq_proxy_new(cfg->zctx, cfg->control, NULL);
    if (!c.daemon) {
        fprintf(stderr, "labmq-web: cannot make a proxy for %s\n", cfg->control);
        web_bridge_stop(cfg->bridge);
        return NULL;
    }
    lmq_proxy_set_timeout(c.daemon, PING_TIMEOUT_MS);
    zmq_pollitem_t items[] = {{NULL, web_bridge_control_fd(cfg->bridge), ZMQ_POLLIN, 0},
                              {NULL, lmq_worker_fd(cfg->worker), ZMQ_POLLIN, 0}};
    double next = 0;
    while (!web_bridge_stopping(cfg->bridge)) {
        if (lmq_worker_stopping(cfg->worker)) {
            web_bridge_stop(cfg->bridge);
            break;
        }
        double now = now_s(CLOCK_MONOTONIC);
        if (now >= next) {
            tick(&c);
            next = now_s(CLOCK_MONOTONIC) + TICK_MS / 1000.0;
            continue; /* look at the signals and the stop flag again first */
        }
        if (zmq_poll(items, 2, (long)((next - now) * 1000) + 1) < 0)
            continue; /* EINTR */
        if (items[0].revents & ZMQ_POLLIN) {
            web_cmd_t *cmd = web_bridge_take_cmds(cfg->bridge);
            while (cmd) {
                web_cmd_t *nx = cmd->next;
                if (!web_bridge_stopping(cfg->bridge))
                    run_cmd(&c, cmd);
                web_cmd_free(cmd);
                cmd = nx;
            }
        }
    }
    drop_devices(&c);
    lmq_proxy_destroy(&c.daemon);
    return NULL;
}

/* ---- the data thread ---- */

typedef struct stream {
    char topic[WEB_TOPIC_MAX];
    lmq_sub_t *sub;
} stream_t;

static void post_event(const web_hub_cfg_t *cfg, lmq_event_t *ev)
{
    const char *kind = lmq_event_kind(ev);
    if (!kind || !lmq_event_device(ev))
        return;
    json_t *msg = json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:s?}", "t", "event", "device", lmq_event_device(ev), "kind",
                            kind, "seq", (json_int_t)lmq_event_seq(ev), "lost_before",
                            (json_int_t)lmq_event_lost_before(ev), "t_ns", (json_int_t)lmq_event_time_ns(ev),
                            "cause", lmq_event_cause(ev));
    if (!msg)
        return;
    if (strcmp(kind, "property") == 0) {
        json_object_set_new(msg, "name", json_string(lmq_event_name(ev)));
        json_object_set_new(msg, "value", value_json(lmq_event_value(ev)));
    } else {
        json_object_set_new(msg, "state", json_string(lmq_event_state(ev)));
        json_object_set_new(msg, "error", json_string(lmq_event_error(ev)));
    }
    web_bridge_post_text(cfg->bridge, 0, json_dumps(msg, JSON_COMPACT));
    json_decref(msg);
    /* A device that is ready again may have other limits or values (restored,
     * or a new daemon): read it anew. */
    if (strcmp(kind, "state") == 0 && lmq_event_state(ev) && strcmp(lmq_event_state(ev), "ready") == 0)
        web_bridge_post_cmd(cfg->bridge, 0, json_pack("{s:s,s:s}", "op", "refresh", "device", lmq_event_device(ev)));
}

static void post_frame(const web_hub_cfg_t *cfg, lmq_frame_t *f)
{
    web_block_t *blk = web_block_new(lmq_frame_size(f));
    if (!blk)
        return;
    snprintf(blk->topic, sizeof blk->topic, "%s", lmq_frame_topic(f));
    blk->seq = lmq_frame_seq(f);
    blk->epoch = lmq_frame_epoch(f);
    blk->t_ns = lmq_frame_time_ns(f);
    blk->lost_before = lmq_frame_lost_before(f);
    blk->restarted = lmq_frame_restarted(f);
    blk->dtype = lmq_frame_dtype(f);
    blk->ndim = lmq_frame_ndim(f);
    for (unsigned i = 0; i < blk->ndim && i < LMQ_MAX_DIMS; i++)
        blk->shape[i] = lmq_frame_shape(f)[i];
    snprintf(blk->units, sizeof blk->units, "%s", lmq_frame_units(f));
    memcpy(blk->data, lmq_frame_data(f), blk->size);
    web_bridge_post_block(cfg->bridge, blk);
}

static void apply_subops(const web_hub_cfg_t *cfg, stream_t *streams, size_t *n)
{
    web_subop_t *op = web_bridge_take_subops(cfg->bridge);
    while (op) {
        size_t i = 0;
        while (i < *n && strcmp(streams[i].topic, op->topic) != 0)
            i++;
        if (op->on && i == *n && *n < STREAMS_MAX) {
            /* Lossy flow subscriptions (protocol 3.2): the daemon keeps at
             * most WEB_WINDOW blocks for labmq-web, the newest, and counts
             * what it drops; the tabs' own rate limit comes after. */
            const lmq_sub_opts_t lossy = {.mode = LMQ_SUB_LOSSY, .window = WEB_WINDOW};
            streams[*n].sub = lmq_sub_new_opts(cfg->zctx, cfg->control, op->topic, &lossy);
            if (streams[*n].sub) {
                memcpy(streams[*n].topic, op->topic, sizeof streams[*n].topic);
                (*n)++;
            } else {
                fprintf(stderr, "labmq-web: cannot subscribe to %s at %s\n", op->topic, cfg->control);
            }
        } else if (!op->on && i < *n) {
            lmq_sub_destroy(&streams[i].sub);
            streams[i] = streams[--*n];
        }
        web_subop_t *nx = op->next;
        web_subop_free(op);
        op = nx;
    }
}

void *web_data_main(void *arg)
{
    const web_hub_cfg_t *cfg = arg;
    stream_t *streams = calloc(STREAMS_MAX, sizeof *streams);
    zmq_pollitem_t *items = calloc(STREAMS_MAX + 2, sizeof *items);
    lmq_events_t *events = lmq_events_new(cfg->zctx, cfg->data, NULL);
    if (!streams || !items || !events) {
        fprintf(stderr, "labmq-web: cannot subscribe to the change events at %s\n", cfg->data);
        web_bridge_stop(cfg->bridge);
        goto out;
    }
    size_t n = 0;
    while (!web_bridge_stopping(cfg->bridge)) {
        items[0] = (zmq_pollitem_t){NULL, web_bridge_data_fd(cfg->bridge), ZMQ_POLLIN, 0};
        items[1] = (zmq_pollitem_t){lmq_events_socket(events), 0, ZMQ_POLLIN, 0};
        for (size_t i = 0; i < n; i++)
            items[2 + i] = (zmq_pollitem_t){lmq_sub_socket(streams[i].sub), 0, ZMQ_POLLIN, 0};
        /* A flow subscription gives credit and renews its lease inside
         * lmq_sub_recv: every stream gets a call at least every RENEW_MS. */
        if (zmq_poll(items, (int)n + 2, RENEW_MS) < 0)
            continue;
        /* Blocks first: the items refer to the streams as they were polled. */
        for (size_t i = 0; i < n; i++) {
            for (int k = 0; k < DRAIN_MAX; k++) {
                lmq_frame_t *f = NULL;
                int rc = lmq_sub_recv(streams[i].sub, &f, 0);
                if (rc == LMQ_EPROTO)
                    continue; /* skipped by lmq_sub, which says why */
                if (rc != 0)
                    break;
                post_frame(cfg, f);
                lmq_frame_destroy(&f);
            }
        }
        if (items[1].revents & ZMQ_POLLIN) {
            for (int k = 0; k < DRAIN_MAX; k++) {
                lmq_event_t *ev = NULL;
                int rc = lmq_events_recv(events, &ev, 0);
                if (rc == LMQ_EPROTO)
                    continue;
                if (rc != 0)
                    break;
                post_event(cfg, ev);
                lmq_event_destroy(&ev);
            }
        }
        if (items[0].revents & ZMQ_POLLIN)
            apply_subops(cfg, streams, &n);
    }
    for (size_t i = 0; i < n; i++)
        lmq_sub_destroy(&streams[i].sub);
out:
    lmq_events_destroy(&events);
    free(items);
    free(streams);
    return NULL;
}
