/* The wire protocol v1 codec (docs/protocol.md): request and reply headers
 * parsed and validated with jansson, values to and from JSON with arrays as
 * binary frames, and direct encoders for the common scalar messages. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "labmq/status.h"
#include "proto.h"
#include "value_internal.h"

static const char *const op_names[LMQ__OP_COUNT] = {"ping",      "list",   "describe",    "call", "get",
                                                    "set",       "stats",  "workers",     "subscribe",
                                                    "credit",    "unsubscribe", "lock", "unlock"};

/* Which keys each op takes (`client` and `deadline_ms` go with every op). */
enum {
    K_DEVICE = 1,
    K_NAME = 2,
    K_ARGS = 4,
    K_VALUE = 8,
    K_DEVICES = 16,
    K_LEASE = 32,
    K_TOPICS = 64,
    K_MODE = 128,
    K_WINDOW = 256,
    K_N = 512
};
static const struct {
    unsigned allowed, required;
} op_keys[LMQ__OP_COUNT] = {
    [LMQ__OP_PING] = {0, 0},
    [LMQ__OP_LIST] = {0, 0},
    [LMQ__OP_DESCRIBE] = {K_DEVICE, K_DEVICE},
    [LMQ__OP_CALL] = {K_DEVICE | K_NAME | K_ARGS, K_DEVICE | K_NAME},
    [LMQ__OP_GET] = {K_DEVICE | K_NAME, K_DEVICE | K_NAME},
    [LMQ__OP_SET] = {K_DEVICE | K_NAME | K_VALUE, K_DEVICE | K_NAME | K_VALUE},
    [LMQ__OP_STATS] = {K_DEVICE, 0},
    [LMQ__OP_WORKERS] = {0, 0},
    [LMQ__OP_SUBSCRIBE] = {K_TOPICS | K_MODE | K_WINDOW, K_TOPICS | K_MODE},
    [LMQ__OP_CREDIT] = {K_N, K_N},
    [LMQ__OP_UNSUBSCRIBE] = {0, 0},
    [LMQ__OP_LOCK] = {K_DEVICES | K_LEASE, K_DEVICES},
    [LMQ__OP_UNLOCK] = {K_DEVICES, 0},
};

const char *lmq__op_name(lmq__op_t op) { return (unsigned)op < LMQ__OP_COUNT ? op_names[op] : "?"; }

void lmq__frames_init(lmq__frames_t *f) { f->n = 0; }

void lmq__frames_close(lmq__frames_t *f)
{
    for (size_t i = 0; i < f->n; i++)
        zmq_msg_close(&f->msg[i]);
    f->n = 0;
}

int lmq__failf(char *err, size_t errlen, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return status;
}

/* A malformed message: PROTO with the reason. */
#define fail(err, errlen, ...) lmq__failf(err, errlen, LMQ_EPROTO, __VA_ARGS__)

static bool read_id(const json_t *j, uint64_t *id)
{
    if (!json_is_integer(j))
        return false;
    json_int_t v = json_integer_value(j);
    if (v < 0 || (uint64_t)v >= LMQ__MAX_ID)
        return false;
    *id = (uint64_t)v;
    return true;
}

int lmq__request_parse(const void *data, size_t len, size_t nbin, lmq__request_t *req, char *err, size_t errlen)
{
    memset(req, 0, sizeof *req);
    if (len > LMQ__MAX_HEADER)
        return fail(err, errlen, "header is %zu bytes; the limit is %d", len, LMQ__MAX_HEADER);
    if (len == 0)
        return fail(err, errlen, "empty header frame (expected a JSON object)");
    json_error_t jerr;
    json_t *j = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        /* jansson validates UTF-8 itself; check again only to say so plainly. */
        if (!lmq__utf8_valid(data, len))
            return fail(err, errlen, "header is not valid UTF-8");
        return fail(err, errlen, "header is not valid JSON: %s (column %d)", jerr.text, jerr.column);
    }
    req->json = j;
    if (!json_is_object(j))
        return fail(err, errlen, "header must be a JSON object");

    /* Read the id first so that every later error can be matched by the client. */
    json_t *jid = json_object_get(j, "id");
    if (jid && read_id(jid, &req->id))
        req->has_id = true;

    req->deadline_ms = -1;
    req->lease_ms = LMQ__LEASE_DEFAULT_MS;
    unsigned seen = 0;
    const char *key;
    json_t *val;
    json_t *jv = NULL, *jop = NULL;
    json_object_foreach(j, key, val)
    {
        if (!strcmp(key, "v"))
            jv = val;
        else if (!strcmp(key, "id"))
            ;
        else if (!strcmp(key, "op"))
            jop = val;
        else if (!strcmp(key, "device")) {
            if (!json_is_string(val))
                return fail(err, errlen, "'device' must be a string");
            req->device = json_string_value(val);
            seen |= K_DEVICE;
        } else if (!strcmp(key, "name")) {
            if (!json_is_string(val))
                return fail(err, errlen, "'name' must be a string");
            req->name = json_string_value(val);
            seen |= K_NAME;
        } else if (!strcmp(key, "args")) {
            if (!json_is_array(val))
                return fail(err, errlen, "'args' must be an array");
            if (json_array_size(val) > LMQ__MAX_ARGS)
                return fail(err, errlen, "%zu arguments; the limit is %d", json_array_size(val), LMQ__MAX_ARGS);
            req->args = val;
            seen |= K_ARGS;
        } else if (!strcmp(key, "value")) {
            req->value = val;
            seen |= K_VALUE;
        } else if (!strcmp(key, "client")) {
            if (!json_is_string(val) || json_string_length(val) < 1 || json_string_length(val) > LMQ__MAX_CLIENT)
                return fail(err, errlen, "'client' must be a string of 1 to %d bytes", LMQ__MAX_CLIENT);
            req->client = json_string_value(val);
        } else if (!strcmp(key, "deadline_ms")) {
            if (!json_is_integer(val) || json_integer_value(val) < 0 ||
                json_integer_value(val) > LMQ__MAX_DEADLINE_MS)
                return fail(err, errlen, "'deadline_ms' must be an integer from 0 to %d", LMQ__MAX_DEADLINE_MS);
            req->deadline_ms = json_integer_value(val);
        } else if (!strcmp(key, "devices")) {
            size_t n = json_is_array(val) ? json_array_size(val) : 0;
            if (n < 1 || n > LMQ__MAX_LOCK_DEVICES)
                return fail(err, errlen, "'devices' must be a list of 1 to %d device names", LMQ__MAX_LOCK_DEVICES);
            for (size_t i = 0; i < n; i++)
                if (!json_is_string(json_array_get(val, i)))
                    return fail(err, errlen, "'devices' entry %zu is not a string", i + 1);
            req->devices = val;
            seen |= K_DEVICES;
        } else if (!strcmp(key, "lease_ms")) {
            if (!json_is_integer(val) || json_integer_value(val) < LMQ__LEASE_MIN_MS ||
                json_integer_value(val) > LMQ__LEASE_MAX_MS)
                return fail(err, errlen, "'lease_ms' must be an integer from %d to %d", LMQ__LEASE_MIN_MS,
                            LMQ__LEASE_MAX_MS);
            req->lease_ms = json_integer_value(val);
            seen |= K_LEASE;
        } else if (!strcmp(key, "topics")) {
            if (!json_is_array(val))
                return fail(err, errlen, "'topics' must be an array of strings");
            req->topics = val;
            seen |= K_TOPICS;
        } else if (!strcmp(key, "mode")) {
            if (!json_is_string(val))
                return fail(err, errlen, "'mode' must be a string");
            req->mode = json_string_value(val);
            seen |= K_MODE;
        } else if (!strcmp(key, "window")) {
            if (!json_is_integer(val))
                return fail(err, errlen, "'window' must be an integer");
            req->window = json_integer_value(val);
            req->has_window = true;
            seen |= K_WINDOW;
        } else if (!strcmp(key, "n")) {
            if (!json_is_integer(val))
                return fail(err, errlen, "'n' must be an integer");
            req->n = json_integer_value(val);
            req->has_n = true;
            seen |= K_N;
        } else
            return fail(err, errlen,
                        "unknown key '%s' (keys: v, id, op, device, name, args, value, client, deadline_ms, devices, "
                        "lease_ms, topics, mode, window, n)",
                        key);
    }
    if (!jv)
        return fail(err, errlen, "missing key 'v' (protocol version, 1)");
    if (!json_is_integer(jv) || json_integer_value(jv) != LMQ__PROTOCOL)
        return fail(err, errlen, "unsupported protocol version (this daemon speaks v=%d)", LMQ__PROTOCOL);
    if (!jid)
        return fail(err, errlen, "missing key 'id'");
    if (!req->has_id)
        return fail(err, errlen, "'id' must be an integer from 0 to 2^53-1");
    if (!jop)
        return fail(err, errlen, "missing key 'op'");
    if (!json_is_string(jop))
        return fail(err, errlen, "'op' must be a string");
    const char *op = json_string_value(jop);
    int found = -1;
    for (int i = 0; i < LMQ__OP_COUNT; i++)
        if (!strcmp(op, op_names[i]))
            found = i;
    if (found < 0)
        return fail(err, errlen,
                    "unknown op '%.64s' (ops: ping, list, describe, call, get, set, stats, workers, subscribe, credit, "
                    "unsubscribe, lock, unlock)",
                    op);
    req->op = (lmq__op_t)found;
    static const char *const key_names[] = {"device", "name",   "args", "value",  "devices",
                                            "lease_ms", "topics", "mode", "window", "n"};
    for (int b = 0; b < 10; b++) {
        unsigned bit = 1u << b;
        if ((seen & bit) && !(op_keys[found].allowed & bit))
            return fail(err, errlen, "op '%s' takes no '%s'", op, key_names[b]);
        if (!(seen & bit) && (op_keys[found].required & bit))
            return fail(err, errlen, "op '%s' needs '%s'", op, key_names[b]);
    }
    if (nbin > LMQ__MAX_BINFRAMES)
        return fail(err, errlen, "%zu binary frames; the limit is %d", nbin, LMQ__MAX_BINFRAMES);
    return 0;
}

void lmq__request_clear(lmq__request_t *req)
{
    if (req->json)
        json_decref(req->json);
    memset(req, 0, sizeof *req);
}

int lmq__request_add_keys(zmq_msg_t *msg, int64_t deadline_ms, const char *quoted)
{
    size_t len = zmq_msg_size(msg);
    const char *old = zmq_msg_data(msg);
    if (len < 2 || old[len - 1] != '}')
        return LMQ_EARG;
    char extra[64] = "";
    if (deadline_ms >= 0)
        snprintf(extra, sizeof extra, ",\"deadline_ms\":%lld", (long long)deadline_ms);
    size_t elen = strlen(extra), qlen = quoted ? strlen(quoted) + sizeof ",\"client\":" - 1 : 0;
    zmq_msg_t out;
    if (zmq_msg_init_size(&out, len + elen + qlen) != 0)
        return LMQ_EMEM;
    char *p = zmq_msg_data(&out);
    memcpy(p, old, len - 1);
    p += len - 1;
    memcpy(p, extra, elen);
    p += elen;
    if (quoted) {
        memcpy(p, ",\"client\":", sizeof ",\"client\":" - 1);
        p += sizeof ",\"client\":" - 1;
        memcpy(p, quoted, strlen(quoted));
        p += strlen(quoted);
    }
    *p = '}';
    zmq_msg_close(msg);
    zmq_msg_init(msg);
    zmq_msg_move(msg, &out);
    return 0;
}

void lmq__heartbeat_set(void *sock)
{
    int ivl = LMQ__HEARTBEAT_IVL_MS, timeout = LMQ__HEARTBEAT_TIMEOUT_MS, ttl = LMQ__HEARTBEAT_TTL_MS;
    zmq_setsockopt(sock, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(sock, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout);
    zmq_setsockopt(sock, ZMQ_HEARTBEAT_TTL, &ttl, sizeof ttl);
}

size_t lmq__recv_rest(void *sock, zmq_msg_t *parts, size_t max)
{
    size_t n = 0;
    bool more = true;
    while (more) {
        zmq_msg_t scratch, *m = n < max ? &parts[n] : &scratch;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, 0) < 0) { /* context terminated mid-message */
            zmq_msg_close(m);
            break;
        }
        more = zmq_msg_more(m);
        if (m == &scratch)
            zmq_msg_close(&scratch);
        n++;
    }
    return n;
}

int lmq__json_to_msg(const json_t *json, zmq_msg_t *msg)
{
    char stack[512];
    size_t n = json_dumpb(json, stack, sizeof stack, JSON_COMPACT);
    if (n == 0)
        return LMQ_EMEM;
    if (n <= sizeof stack) {
        if (zmq_msg_init_size(msg, n) != 0)
            return LMQ_EMEM;
        memcpy(zmq_msg_data(msg), stack, n);
        return 0;
    }
    if (zmq_msg_init_size(msg, n) != 0)
        return LMQ_EMEM;
    json_dumpb(json, zmq_msg_data(msg), n, JSON_COMPACT);
    return 0;
}

static void free_data(void *data, void *hint)
{
    (void)hint;
    free(data);
}

json_t *lmq__value_to_json(lmq_value_t *v, lmq__frames_t *bin)
{
    switch (v->type) {
    case LMQ_NONE:
        return json_null();
    case LMQ_BOOL:
        return json_boolean(v->u.b);
    case LMQ_INT:
        return json_integer(v->u.i);
    case LMQ_FLOAT:
        return json_real(v->u.f); /* NaN/inf have no JSON form: jansson refuses them */
    case LMQ_STRING:
        return json_string(v->u.s);
    case LMQ_ARRAY: {
        if (!bin || bin->n >= LMQ__MAX_BINFRAMES)
            return NULL;
        json_t *shape = json_array();
        for (unsigned i = 0; i < v->u.a.ndim; i++)
            json_array_append_new(shape, json_integer((json_int_t)v->u.a.shape[i]));
        json_t *j = json_pack("{s:I, s:s, s:o}", "$frame", (json_int_t)(bin->n + 1), "dtype",
                              lmq_dtype_name(v->u.a.dtype), "shape", shape);
        if (!j)
            return NULL;
        zmq_msg_t *m = &bin->msg[bin->n];
        /* Hand the buffer to ZeroMQ: large arrays are never copied. */
        if (zmq_msg_init_data(m, v->u.a.data, v->u.a.nbytes, free_data, NULL) != 0) {
            json_decref(j);
            return NULL;
        }
        bin->n++;
        v->u.a.data = NULL;
        memset(v, 0, sizeof *v);
        return j;
    }
    }
    return NULL;
}

/* The wire's dtype names, exactly (lmq_dtype_parse is lenient for people). */
static lmq_dtype_t wire_dtype(const json_t *j)
{
    const char *name = json_string_value(j);
    lmq_dtype_t dt = lmq_dtype_parse(name);
    return dt != LMQ_DT_INVALID && strcmp(name, lmq_dtype_name(dt)) == 0 ? dt : LMQ_DT_INVALID;
}

int lmq__value_from_json_used(const json_t *j, const lmq__frames_t *bin, unsigned *used, lmq_value_t *out, char *err,
                              size_t errlen)
{
    memset(out, 0, sizeof *out);
    switch (json_typeof(j)) {
    case JSON_NULL:
        return 0;
    case JSON_TRUE:
    case JSON_FALSE:
        *out = lmq_bool(json_is_true(j));
        return 0;
    case JSON_INTEGER:
        *out = lmq_int(json_integer_value(j));
        return 0;
    case JSON_REAL:
        *out = lmq_float(json_real_value(j));
        return 0;
    case JSON_STRING:
        return lmq_value_set_string(out, json_string_value(j)) == 0 ? 0 : LMQ_EMEM;
    case JSON_OBJECT: {
        /* An object is always an array reference; any defect in one is PROTO. */
        json_t *jf = json_object_get(j, "$frame"), *jd = json_object_get(j, "dtype"),
               *js = json_object_get(j, "shape");
        if (!jf || !jd || !js || json_object_size(j) != 3)
            return fail(err, errlen,
                        "an object value must be an array reference with exactly the keys $frame, dtype, shape");
        size_t nbin = bin ? bin->n : 0;
        if (!json_is_integer(jf) || json_integer_value(jf) < 1 || (size_t)json_integer_value(jf) > nbin)
            return fail(err, errlen, "'$frame' must be an integer naming one of the %zu binary frames (from 1)", nbin);
        size_t k = (size_t)json_integer_value(jf) - 1;
        if (used && (*used & (1u << k)))
            return fail(err, errlen, "binary frame %zu is referenced twice (one frame per array)", k + 1);
        lmq_dtype_t dt = wire_dtype(jd);
        if (dt == LMQ_DT_INVALID)
            return fail(err, errlen, "unknown dtype (use one of |u1 |i1 <u2 <i2 <u4 <i4 <u8 <i8 <f4 <f8)");
        if (!json_is_array(js) || json_array_size(js) > LMQ_MAX_DIMS)
            return fail(err, errlen, "'shape' must be a list of at most %d sizes", LMQ_MAX_DIMS);
        size_t shape[LMQ_MAX_DIMS];
        unsigned ndim = (unsigned)json_array_size(js);
        for (unsigned i = 0; i < ndim; i++) {
            json_t *d = json_array_get(js, i);
            if (!json_is_integer(d) || json_integer_value(d) < 0)
                return fail(err, errlen, "'shape' entries must be non-negative integers");
            shape[i] = (size_t)json_integer_value(d);
        }
        size_t nbytes;
        if (lmq__array_nbytes(dt, ndim, shape, &nbytes) != 0)
            return fail(err, errlen, "array too large");
        zmq_msg_t *m = (zmq_msg_t *)&bin->msg[k];
        if (zmq_msg_size(m) != nbytes)
            return fail(err, errlen, "binary frame %zu has %zu bytes; dtype and shape need %zu", k + 1,
                        zmq_msg_size(m), nbytes);
        if (used)
            *used |= 1u << k;
        return lmq_value_set_array(out, dt, ndim, shape, zmq_msg_data(m)) == 0 ? 0 : LMQ_EMEM;
    }
    case JSON_ARRAY:
        snprintf(err, errlen, "a JSON list is not a labmq value: arrays travel as binary frames (docs/protocol.md 2.2)");
        return LMQ_EARG;
    }
    return fail(err, errlen, "unsupported value");
}

int lmq__value_from_json(const json_t *j, const lmq__frames_t *bin, lmq_value_t *out, char *err, size_t errlen)
{
    return lmq__value_from_json_used(j, bin, NULL, out, err, errlen);
}

int lmq__request_encode(zmq_msg_t *msg, uint64_t id, lmq__op_t op, const char *device, const char *name,
                        const lmq_value_t *args, size_t nargs, const lmq_value_t *value, lmq__frames_t *bin)
{
    json_t *j = json_pack("{s:i, s:I, s:s}", "v", LMQ__PROTOCOL, "id", (json_int_t)id, "op", lmq__op_name(op));
    if (!j)
        return LMQ_EMEM;
    int rc = 0;
    /* json_string refuses invalid UTF-8; a key silently left out would make
     * the daemon answer about the wrong thing. */
    if ((device && json_object_set_new(j, "device", json_string(device)) != 0) ||
        (name && json_object_set_new(j, "name", json_string(name)) != 0)) {
        json_decref(j);
        return LMQ_EARG;
    }
    /* The codec moves array data into frames; work on copies so the caller's
     * values stay untouched. */
    if (op == LMQ__OP_CALL) {
        json_t *ja = json_array();
        for (size_t i = 0; i < nargs && rc == 0; i++) {
            lmq_value_t tmp = {0};
            if (lmq_value_copy(&tmp, &args[i]) != 0) {
                rc = LMQ_EMEM;
                break;
            }
            json_t *jv = lmq__value_to_json(&tmp, bin);
            lmq_value_clear(&tmp);
            if (!jv)
                rc = LMQ_EARG;
            else
                json_array_append_new(ja, jv);
        }
        json_object_set_new(j, "args", ja);
    }
    if (op == LMQ__OP_SET && rc == 0) {
        lmq_value_t tmp = {0};
        rc = lmq_value_copy(&tmp, value);
        json_t *jv = rc == 0 ? lmq__value_to_json(&tmp, bin) : NULL;
        lmq_value_clear(&tmp);
        if (!jv)
            rc = rc ? rc : LMQ_EARG;
        else
            json_object_set_new(j, "value", jv);
    }
    if (rc == 0)
        rc = lmq__json_to_msg(j, msg);
    json_decref(j);
    return rc;
}

int lmq__reply_parse(const void *data, size_t len, lmq__reply_t *rep, char *err, size_t errlen)
{
    memset(rep, 0, sizeof *rep);
    rep->message = "";
    json_error_t jerr;
    json_t *j = json_loadb(data, len, 0, &jerr);
    if (!j)
        return fail(err, errlen, "reply is not valid JSON: %s", jerr.text);
    rep->json = j;
    json_t *jid = json_object_get(j, "id"), *jok = json_object_get(j, "ok");
    if (!json_is_object(j) || !json_is_boolean(jok))
        return fail(err, errlen, "reply lacks 'ok'");
    rep->has_id = jid && read_id(jid, &rep->id);
    rep->ok = json_is_true(jok);
    if (rep->ok) {
        rep->result = json_object_get(j, "result");
        return 0;
    }
    json_t *je = json_object_get(j, "error");
    const char *code = json_string_value(json_object_get(je, "code"));
    const char *message = json_string_value(json_object_get(je, "message"));
    rep->status = lmq_status_from_name(code);
    if (rep->status == 0)
        rep->status = LMQ_EPROTO;
    rep->message = message ? message : "(no message)";
    return 0;
}

void lmq__reply_clear(lmq__reply_t *rep)
{
    if (rep->json)
        json_decref(rep->json);
    memset(rep, 0, sizeof *rep);
}

int lmq__reply_ok(zmq_msg_t *msg, bool has_id, uint64_t id, json_t *result)
{
    json_t *j = json_object();
    if (!j) {
        json_decref(result);
        return LMQ_EMEM;
    }
    json_object_set_new(j, "v", json_integer(LMQ__PROTOCOL));
    json_object_set_new(j, "id", has_id ? json_integer((json_int_t)id) : json_null());
    json_object_set_new(j, "ok", json_true());
    json_object_set_new(j, "result", result ? result : json_null());
    int rc = lmq__json_to_msg(j, msg);
    json_decref(j);
    return rc;
}

int lmq__reply_error(zmq_msg_t *msg, bool has_id, uint64_t id, int status, const char *message)
{
    json_t *j = json_object();
    if (!j)
        return LMQ_EMEM;
    json_object_set_new(j, "v", json_integer(LMQ__PROTOCOL));
    json_object_set_new(j, "id", has_id ? json_integer((json_int_t)id) : json_null());
    json_object_set_new(j, "ok", json_false());
    /* Messages can quote client bytes; json_string refuses invalid UTF-8. */
    json_t *jm = json_string(message);
    json_object_set_new(j, "error",
                        json_pack("{s:s, s:o}", "code", lmq_status_name(status), "message",
                                  jm ? jm : json_string("(message not valid UTF-8)")));
    int rc = lmq__json_to_msg(j, msg);
    json_decref(j);
    return rc;
}

char *lmq__json_quote(const char *text)
{
    json_t *j = json_string(text ? text : "");
    char *q = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    return q;
}

int lmq__data_header(zmq_msg_t *msg, uint64_t seq, uint64_t epoch, int64_t t_ns, lmq_dtype_t dtype, unsigned ndim,
                     const size_t *shape, const char *units_json)
{
    /* Hot path for fast streams: printf straight into the frame, no JSON tree. */
    char buf[512];
    int n = snprintf(buf, sizeof buf, "{\"v\":1,\"seq\":%llu,\"epoch\":%llu,\"t_ns\":%lld,\"dtype\":\"%s\",\"shape\":[",
                     (unsigned long long)seq, (unsigned long long)epoch, (long long)t_ns, lmq_dtype_name(dtype));
    for (unsigned i = 0; i < ndim; i++)
        n += snprintf(buf + n, sizeof buf - n, "%s%zu", i ? "," : "", shape[i]);
    n += snprintf(buf + n, sizeof buf - n, "],\"units\":%s}", units_json);
    if (n < 0 || (size_t)n >= sizeof buf)
        return LMQ_EARG;
    if (zmq_msg_init_size(msg, (size_t)n) != 0)
        return LMQ_EMEM;
    memcpy(zmq_msg_data(msg), buf, (size_t)n);
    return 0;
}

static bool get_u53(json_t *o, const char *key, uint64_t *out)
{
    json_t *j = json_object_get(o, key);
    if (!json_is_integer(j) || json_integer_value(j) < 0)
        return false;
    *out = (uint64_t)json_integer_value(j);
    return true;
}

/* Copies UTF-8 text into dst[size], cut before a character that does not fit
 * whole, so that what is kept is still valid UTF-8. */
static void copy_utf8(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    if (n >= size) {
        n = size - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80) /* src[n] continues a character */
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int lmq__data_header_parse(const void *data, size_t len, size_t payload_size, lmq__block_header_t *h, char *err,
                           size_t errlen)
{
    memset(h, 0, sizeof *h);
    json_error_t jerr;
    json_t *j = json_loadb(data, len, 0, &jerr);
    if (!j) {
        snprintf(err, errlen, "block header is not JSON: %s", jerr.text);
        return LMQ_EPROTO;
    }
    const char *why = NULL;
    uint64_t t = 0;
    json_t *shape = json_object_get(j, "shape");
    json_t *units = json_object_get(j, "units");
    if (!json_is_object(j))
        why = "block header is not a JSON object";
    else if (!get_u53(j, "seq", &h->seq) || !get_u53(j, "epoch", &h->epoch) || !get_u53(j, "t_ns", &t))
        why = "block header lacks seq, epoch or t_ns";
    else if ((h->dtype = lmq_dtype_parse(json_string_value(json_object_get(j, "dtype")))) == LMQ_DT_INVALID)
        why = "block header has no valid dtype";
    else if (!json_is_array(shape) || json_array_size(shape) > LMQ_MAX_DIMS)
        why = "block header has no valid shape";
    else if (units && !json_is_string(units))
        why = "block header's units is not a string";
    else {
        h->t_ns = (int64_t)t;
        h->ndim = (unsigned)json_array_size(shape);
        for (unsigned i = 0; i < h->ndim && !why; i++) {
            json_t *d = json_array_get(shape, i);
            if (!json_is_integer(d) || json_integer_value(d) < 0)
                why = "block header has no valid shape";
            else
                h->shape[i] = (size_t)json_integer_value(d);
        }
        copy_utf8(h->units, sizeof h->units, units ? json_string_value(units) : "");
    }
    json_decref(j);
    size_t need = 0;
    if (why)
        snprintf(err, errlen, "%s", why);
    else if (lmq__array_nbytes(h->dtype, h->ndim, h->shape, &need) != 0)
        snprintf(err, errlen, "block header announces a shape too large to address");
    else if (need != payload_size)
        snprintf(err, errlen, "block payload has %zu bytes; its header announces %zu", payload_size, need);
    else
        return 0;
    return LMQ_EPROTO;
}

/* ---- direct encoders for the common, fixed-shape headers ----
 * A get of a number is most of what a lab program does in a loop; building a
 * jansson tree to print a dozen bytes costs more than the round trip's
 * user-space work in the broker. These write the same values jansson would
 * (the text of a float may differ: "0.1" where jansson writes
 * "0.10000000000000001"; both read back to the same double). */

/* Shortest %g form that reads back to the same double, always with a '.' or
 * an exponent so that it parses as a float again. Returns the length or -1. */
static int format_double(char *buf, size_t size, double d)
{
    if (!isfinite(d))
        return -1;
    int n = snprintf(buf, size, "%.15g", d);
    if (n > 0 && (size_t)n < size && strtod(buf, NULL) != d)
        n = snprintf(buf, size, "%.17g", d);
    if (n <= 0 || (size_t)n + 2 >= size)
        return -1;
    if (!strpbrk(buf, ".eE")) {
        memcpy(buf + n, ".0", 3);
        n += 2;
    }
    return n;
}

/* Appends the JSON of a scalar value; false for strings and arrays (which
 * take the jansson path) or non-finite floats. */
static bool format_scalar(char *buf, size_t size, const lmq_value_t *v, int *len)
{
    switch (v->type) {
    case LMQ_NONE:
        *len = snprintf(buf, size, "null");
        return true;
    case LMQ_BOOL:
        *len = snprintf(buf, size, "%s", v->u.b ? "true" : "false");
        return true;
    case LMQ_INT:
        *len = snprintf(buf, size, "%lld", (long long)v->u.i);
        return true;
    case LMQ_FLOAT:
        *len = format_double(buf, size, v->u.f);
        return *len > 0;
    default:
        return false;
    }
}

static int msg_from(zmq_msg_t *msg, const char *buf, size_t n)
{
    if (zmq_msg_init_size(msg, n) != 0)
        return LMQ_EMEM;
    memcpy(zmq_msg_data(msg), buf, n);
    return 0;
}

int lmq__reply_value(zmq_msg_t *msg, uint64_t id, lmq_value_t *result, lmq__frames_t *bin)
{
    char buf[128];
    int n = snprintf(buf, sizeof buf, "{\"v\":1,\"id\":%llu,\"ok\":true,\"result\":", (unsigned long long)id);
    int m;
    if (format_scalar(buf + n, sizeof buf - (size_t)n - 1, result, &m)) {
        buf[n + m] = '}';
        return msg_from(msg, buf, (size_t)(n + m + 1));
    }
    if (result->type == LMQ_FLOAT)
        return LMQ_ERANGE;
    json_t *j = lmq__value_to_json(result, bin);
    if (!j)
        return LMQ_EMEM;
    return lmq__reply_ok(msg, true, id, j);
}

/* Names printable without escapes: the daemon's own names always are. */
static bool plain(const char *s)
{
    for (; s && *s; s++)
        if (*s < 0x20 || *s > 0x7e || *s == '"' || *s == '\\')
            return false;
    return true;
}

int lmq__request_encode_fast(zmq_msg_t *msg, uint64_t id, lmq__op_t op, const char *device, const char *name,
                             const lmq_value_t *args, size_t nargs, const lmq_value_t *value)
{
    char buf[512];
    if (!plain(device) || !plain(name) || (device && strlen(device) > 128) || (name && strlen(name) > 128))
        return 1;
    int n = snprintf(buf, sizeof buf, "{\"v\":1,\"id\":%llu,\"op\":\"%s\"", (unsigned long long)id, lmq__op_name(op));
    if (device)
        n += snprintf(buf + n, sizeof buf - (size_t)n, ",\"device\":\"%s\"", device);
    if (name)
        n += snprintf(buf + n, sizeof buf - (size_t)n, ",\"name\":\"%s\"", name);
    int m;
    if (op == LMQ__OP_CALL) {
        n += snprintf(buf + n, sizeof buf - (size_t)n, ",\"args\":[");
        for (size_t i = 0; i < nargs; i++) {
            if (i)
                buf[n++] = ',';
            if ((size_t)n + 40 >= sizeof buf || !format_scalar(buf + n, sizeof buf - (size_t)n, &args[i], &m))
                return 1;
            n += m;
        }
        buf[n++] = ']';
    } else if (op == LMQ__OP_SET) {
        n += snprintf(buf + n, sizeof buf - (size_t)n, ",\"value\":");
        if ((size_t)n + 40 >= sizeof buf || !format_scalar(buf + n, sizeof buf - (size_t)n, value, &m))
            return 1;
        n += m;
    }
    buf[n++] = '}';
    return msg_from(msg, buf, (size_t)n);
}
