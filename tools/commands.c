/* labmq CLI — the request/reply commands: ping, ls, describe, call, get, set, stats. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"

/* ---- daemon access ---- */

static const char *jstr(json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "";
}

lmq_proxy_t *cli_proxy(cli_t *c, const char *device)
{
    lmq_proxy_t *p = lmq_proxy_new_keys(c->zctx, c->control, device, cli_keys(c));
    if (!p) {
        cli_failf(c, LMQ_EARG, "cannot connect to '%s' (not a ZeroMQ endpoint such as ipc:///path or tcp://host:port?)",
                  c->control);
        return NULL;
    }
    lmq_proxy_set_timeout(p, c->timeout_ms);
    return p;
}

const lmq_client_keys_t *cli_keys(const cli_t *c) { return c->curve ? &c->keys : NULL; }

/* Parses JSON text the daemon sent; frees it. NULL with a reported error. */
static json_t *parse_reply(cli_t *c, char *txt, const char *what)
{
    json_error_t jerr;
    bool empty = !txt;
    json_t *j = empty ? NULL : json_loads(txt, JSON_DECODE_ANY, &jerr);
    free(txt);
    if (!j)
        cli_failf(c, LMQ_EPROTO, "the daemon's %s reply is not valid JSON (%s)", what, empty ? "empty" : jerr.text);
    return j;
}

/* A request answered with JSON text: lmq_proxy_ping, _list, _stats, _describe. */
typedef int (*cli_op_t)(lmq_proxy_t *p, char **json);

/* Runs op on a new proxy for `device` (NULL: daemon-wide). Returns the exit
 * code; on CLI_OK *txt is the reply (caller frees) and, when rtt_ms is given,
 * the round trip in ms. */
static int ask(cli_t *c, const char *device, cli_op_t op, char **txt, double *rtt_ms)
{
    lmq_proxy_t *p = cli_proxy(c, device);
    if (!p)
        return CLI_FAILED;
    *txt = NULL;
    int64_t t0 = lmq_clock_mono_ns();
    int rc = op(p, txt);
    if (rtt_ms)
        *rtt_ms = (double)(lmq_clock_mono_ns() - t0) / 1e6;
    if (rc != 0) {
        rc = cli_fail_proxy(c, p, rc);
        free(*txt);
        *txt = NULL;
    }
    lmq_proxy_destroy(&p);
    return rc;
}

/* The common part of the commands that show one such reply: ask, then with
 * --json print the text as the daemon sent it (scripts and other tools read
 * the same JSON) and return NULL with *rc = CLI_OK; otherwise return the
 * parsed reply for the command to format. NULL with *rc the exit code on
 * failure (reported). */
static json_t *fetch(cli_t *c, const char *device, cli_op_t op, const char *what, double *rtt_ms, int *rc)
{
    char *txt = NULL;
    *rc = ask(c, device, op, &txt, rtt_ms);
    if (*rc != CLI_OK)
        return NULL;
    if (c->json) {
        fprintf(c->out, "%s\n", txt);
        free(txt);
        return NULL;
    }
    json_t *j = parse_reply(c, txt, what);
    if (!j)
        *rc = CLI_FAILED;
    return j;
}

/* A parsed describe reply must be an object; takes j. Returns the exit code. */
static int take_description(cli_t *c, json_t *j, json_t **desc)
{
    if (!j)
        return CLI_FAILED;
    if (!json_is_object(j)) {
        json_decref(j);
        return cli_failf(c, LMQ_EPROTO, "the daemon's describe reply is not a JSON object");
    }
    *desc = j;
    return CLI_OK;
}

int cli_describe(cli_t *c, lmq_proxy_t *p, json_t **desc)
{
    char *txt = NULL;
    int rc = lmq_proxy_describe(p, &txt);
    if (rc != 0)
        return cli_fail_proxy(c, p, rc);
    return take_description(c, parse_reply(c, txt, "describe"), desc);
}

json_t *cli_desc_find(json_t *desc, const char *section, const char *name)
{
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(desc, section), i, e)
    {
        const char *n = json_string_value(json_object_get(e, "name"));
        if (n && strcmp(n, name) == 0)
            return e;
    }
    return NULL;
}

/* "a, b, c": the names in a describe section ("none" when empty). Caller
 * frees; NULL on allocation failure. */
static char *desc_names(json_t *desc, const char *section)
{
    size_t len = 1, i;
    json_t *e, *arr = json_object_get(desc, section);
    json_array_foreach(arr, i, e) len += strlen(jstr(e, "name")) + 2;
    char *s = malloc(len < 8 ? 8 : len);
    if (!s)
        return NULL;
    s[0] = '\0';
    json_array_foreach(arr, i, e)
    {
        if (i)
            strcat(s, ", ");
        strcat(s, jstr(e, "name"));
    }
    if (!s[0])
        strcpy(s, "none");
    return s;
}

int cli_fail_notfound(cli_t *c, json_t *desc, const char *dev, const char *section, const char *kind,
                      const char *name)
{
    char *names = desc_names(desc, section);
    cli_failf(c, LMQ_ENOTFOUND, "device '%s' has no %s '%s' (%s: %s)", dev, kind, name, section,
              names ? names : "?");
    free(names);
    return CLI_FAILED;
}

int cli_resolve_data(cli_t *c, lmq_proxy_t *p)
{
    if (c->data[0])
        return CLI_OK;
    int rc = lmq_proxy_data_endpoint(p, c->data, sizeof c->data);
    return rc == 0 ? CLI_OK : cli_fail_proxy(c, p, rc);
}

/* ---- helpers for describe-driven typing ---- */

static const char *type_phrase(lmq_type_t t)
{
    switch (t) {
    case LMQ_BOOL: return "a bool (true or false)";
    case LMQ_INT: return "an int";
    case LMQ_FLOAT: return "a float";
    case LMQ_STRING: return "a string";
    case LMQ_ARRAY: return "an array of numbers (e.g. 1,2.5,3)";
    default: return "a value";
    }
}

/* Command-line text to a value of the type describe gave. Arrays come as
 * "1,2,3" (or "[1,2,3]") and travel as <f8: the description names no dtype,
 * and the daemon converts what it accepts. Each element is read as a float
 * by lmq_value_parse, so it obeys the same rules as a scalar argument. */
static int parse_typed(lmq_value_t *v, const char *text, lmq_type_t type)
{
    if (type != LMQ_ARRAY)
        return lmq_value_parse(v, text, type);
    size_t len = strlen(text);
    if (len >= 2 && text[0] == '[' && text[len - 1] == ']') {
        text++;
        len -= 2;
    }
    size_t n = 1;
    for (size_t i = 0; i < len; i++)
        n += text[i] == ',';
    char *copy = strndup(text, len);
    double *xs = malloc(n * sizeof *xs);
    int rc = copy && xs ? 0 : LMQ_EMEM;
    char *elem = copy;
    for (size_t k = 0; rc == 0 && k < n; k++) {
        char *next = strchr(elem, ',');
        if (next)
            *next++ = '\0';
        /* strtod skips leading blanks; "1 , 2" also has trailing ones. */
        for (char *e = elem + strlen(elem); e > elem && e[-1] == ' ';)
            *--e = '\0';
        lmq_value_t x = {0};
        rc = lmq_value_parse(&x, elem, LMQ_FLOAT);
        xs[k] = x.u.f;
        elem = next;
    }
    if (rc == 0) {
        size_t shape[1] = {n};
        rc = lmq_value_set_array(v, LMQ_F64, 1, shape, xs);
    }
    free(xs);
    free(copy);
    return rc;
}

/* "channel: int, volts: float V" into buf. */
static void fmt_args(char *buf, size_t size, json_t *args)
{
    size_t i, n = 0;
    json_t *a;
    buf[0] = '\0';
    json_array_foreach(args, i, a)
    {
        if (n >= size)
            break;
        const char *unit = jstr(a, "unit");
        n += (size_t)snprintf(buf + n, size - n, "%s%s: %s%s%s", i ? ", " : "", jstr(a, "name"), jstr(a, "type"),
                              *unit ? " " : "", unit);
    }
}

static void fmt_returns(char *buf, size_t size, json_t *ret)
{
    if (!json_is_object(ret) || strcmp(jstr(ret, "type"), "none") == 0 || !*jstr(ret, "type")) {
        snprintf(buf, size, "-");
        return;
    }
    const char *unit = jstr(ret, "unit");
    snprintf(buf, size, "%s%s%s", jstr(ret, "type"), *unit ? " " : "", unit);
}

static void fmt_number(char *buf, size_t size, json_t *n)
{
    if (json_is_integer(n))
        snprintf(buf, size, "%" JSON_INTEGER_FORMAT, json_integer_value(n));
    else if (json_is_number(n))
        cli_fmt_double(buf, size, json_number_value(n));
    else
        snprintf(buf, size, "?");
}

/* ---- ping ---- */

static void fmt_uptime(char *buf, size_t size, double s)
{
    if (!isfinite(s) || s < 0)
        snprintf(buf, size, "?");
    else if (s < 60)
        snprintf(buf, size, "%.1f s", s);
    else if (s < 3600)
        snprintf(buf, size, "%dm %02ds", (int)(s / 60), (int)fmod(s, 60));
    else if (s < 86400)
        snprintf(buf, size, "%dh %02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else
        snprintf(buf, size, "%dd %02dh", (int)(s / 86400), (int)fmod(s / 3600, 24));
}

/* The daemon's configuration generation and how its last reload (SIGHUP)
 * went; nothing for a daemon too old to say. */
static void print_config(cli_t *c, json_t *cfg)
{
    if (!json_is_object(cfg))
        return;
    json_t *last = json_object_get(cfg, "last_reload");
    fprintf(c->out, "  config   generation %lld, ", (long long)json_integer_value(json_object_get(cfg, "generation")));
    if (!json_is_string(last))
        fprintf(c->out, "never reloaded\n");
    else if (strcmp(json_string_value(last), "ok") == 0)
        fprintf(c->out, "last reload ok\n");
    else
        fprintf(c->out, "last reload REFUSED: %s\n", json_string_value(last));
}

int cli_cmd_ping(cli_t *c, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    double rtt_ms = 0;
    int rc;
    json_t *j = fetch(c, NULL, lmq_proxy_ping, "ping", &rtt_ms, &rc);
    if (!j)
        return rc;
    char up[32], proto[32];
    fmt_uptime(up, sizeof up, json_number_value(json_object_get(j, "uptime_s")));
    fmt_number(proto, sizeof proto, json_object_get(j, "protocol"));
    fprintf(c->out, "%s %s (protocol %s), up %s, answered in %.2f ms\n", *jstr(j, "daemon") ? jstr(j, "daemon") : "daemon",
            jstr(j, "version"), proto, up, rtt_ms);
    fprintf(c->out, "  control  %s\n  data     %s\n", *jstr(j, "control") ? jstr(j, "control") : c->control,
            jstr(j, "data"));
    print_config(c, json_object_get(j, "config"));
    json_decref(j);
    return CLI_OK;
}

/* ---- ls ---- */

int cli_cmd_ls(cli_t *c, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    int rc;
    json_t *j = fetch(c, NULL, lmq_proxy_list, "list", NULL, &rc);
    if (!j)
        return rc;
    if (json_array_size(j) == 0) {
        fprintf(c->out, "no devices (the daemon at %s serves none: check its configuration)\n", c->control);
        json_decref(j);
        return CLI_OK;
    }
    cli_table_t *t = cli_table_new(4);
    cli_table_row(t, "NAME", "DRIVER", "STATE", "DESCRIPTION");
    size_t i, nerr = 0;
    json_t *d;
    json_array_foreach(j, i, d)
    {
        /* "opening", "ready", "fault" and "disconnected" (with the reason below), "stopped" */
        nerr += *jstr(d, "error") != '\0';
        cli_table_row(t, jstr(d, "name"), jstr(d, "driver"), jstr(d, "state"), jstr(d, "description"));
    }
    rc = cli_table_print(t, c->out, "") == 0 ? CLI_OK : cli_failf(c, LMQ_EMEM, "out of memory");
    cli_table_destroy(&t);
    /* Error texts are long and would stretch the table; they go below it. */
    if (rc == CLI_OK && nerr) {
        fputc('\n', c->out);
        json_array_foreach(j, i, d) if (*jstr(d, "error"))
            fprintf(c->out, "%s: %s\n", jstr(d, "name"), jstr(d, "error"));
    }
    /* So are the holders of locks (protocol 2.6). */
    bool first = true;
    json_array_foreach(j, i, d)
    {
        json_t *lk = json_object_get(d, "locked_by");
        if (rc != CLI_OK || !json_is_object(lk))
            continue;
        if (first)
            fputc('\n', c->out);
        first = false;
        fprintf(c->out, "%s: locked by '%s' (lease %.1f s, %.1f s left unless renewed)\n", jstr(d, "name"),
                jstr(lk, "holder"), (double)json_integer_value(json_object_get(lk, "lease_ms")) / 1000,
                (double)json_integer_value(json_object_get(lk, "expires_in_ms")) / 1000);
    }
    json_decref(j);
    return rc;
}

/* ---- describe ---- */

static void describe_methods(json_t *desc, cli_table_t *t)
{
    size_t i;
    json_t *m;
    char sig[512], ret[96];
    cli_table_row(t, "METHOD", "RETURNS", "DESCRIPTION");
    json_array_foreach(json_object_get(desc, "methods"), i, m)
    {
        char args[400];
        fmt_args(args, sizeof args, json_object_get(m, "args"));
        snprintf(sig, sizeof sig, "%s(%s)", jstr(m, "name"), args);
        fmt_returns(ret, sizeof ret, json_object_get(m, "returns"));
        cli_table_row(t, sig, ret, jstr(m, "doc"));
    }
}

static void describe_properties(json_t *desc, cli_table_t *t)
{
    size_t i;
    json_t *pr;
    cli_table_row(t, "PROPERTY", "TYPE", "UNIT", "ACCESS", "LIMITS", "DESCRIPTION");
    json_array_foreach(json_object_get(desc, "properties"), i, pr)
    {
        char lim[96] = "", lo[40], hi[40];
        json_t *min = json_object_get(pr, "min"), *max = json_object_get(pr, "max");
        if (min || max) {
            fmt_number(lo, sizeof lo, min);
            fmt_number(hi, sizeof hi, max);
            snprintf(lim, sizeof lim, "%s .. %s", min ? lo : "", max ? hi : "");
        }
        cli_table_row(t, jstr(pr, "name"), jstr(pr, "type"), jstr(pr, "unit"), jstr(pr, "access"), lim,
                      jstr(pr, "doc"));
    }
}

static void describe_streams(json_t *desc, cli_table_t *t)
{
    size_t i, k;
    json_t *s, *dim;
    cli_table_row(t, "STREAM", "DTYPE", "SHAPE", "RATE", "UNITS", "DESCRIPTION");
    json_array_foreach(json_object_get(desc, "streams"), i, s)
    {
        size_t shape[LMQ_MAX_DIMS];
        unsigned ndim = 0;
        json_array_foreach(json_object_get(s, "shape"), k, dim) if (ndim < LMQ_MAX_DIMS) shape[ndim++] =
            (size_t)json_integer_value(dim);
        char sh[128], rate[48], hz[32];
        cli_fmt_shape(sh, sizeof sh, ndim, shape);
        json_t *r = json_object_get(s, "rate_hz");
        if (json_is_number(r)) {
            fmt_number(hz, sizeof hz, r);
            snprintf(rate, sizeof rate, "%s Hz", hz);
        } else {
            snprintf(rate, sizeof rate, "-");
        }
        cli_table_row(t, jstr(s, "name"), jstr(s, "dtype"), sh, rate, jstr(s, "units"), jstr(s, "doc"));
    }
}

int cli_cmd_describe(cli_t *c, int argc, char **argv)
{
    (void)argc;
    const char *dev = argv[0];
    int rc;
    json_t *desc = fetch(c, dev, lmq_proxy_describe, "describe", NULL, &rc);
    if (!desc)
        return rc;
    if ((rc = take_description(c, desc, &desc)) != CLI_OK)
        return rc;

    fprintf(c->out, "%s  (driver %s, %s%s%s)\n", dev, jstr(desc, "driver"), jstr(desc, "state"),
            *jstr(desc, "error") ? ": " : "", jstr(desc, "error"));
    if (*jstr(desc, "description"))
        fprintf(c->out, "%s\n", jstr(desc, "description"));

    static const struct {
        const char *section;
        size_t ncols;
        void (*fill)(json_t *desc, cli_table_t *t);
    } tables[] = {
        {"methods", 3, describe_methods},
        {"properties", 6, describe_properties},
        {"streams", 6, describe_streams},
    };
    bool any = false;
    int prc = 0;
    for (size_t k = 0; k < sizeof tables / sizeof tables[0]; k++) {
        if (json_array_size(json_object_get(desc, tables[k].section)) == 0)
            continue;
        any = true;
        cli_table_t *t = cli_table_new(tables[k].ncols);
        tables[k].fill(desc, t);
        fputc('\n', c->out);
        prc |= cli_table_print(t, c->out, "  ");
        cli_table_destroy(&t);
    }
    if (!any)
        fprintf(c->out, "\n  (no methods, properties or streams)\n");
    json_decref(desc);
    return prc ? cli_failf(c, LMQ_EMEM, "out of memory") : CLI_OK;
}

/* ---- call ---- */

int cli_cmd_call(cli_t *c, int argc, char **argv)
{
    const char *dev = argv[0], *method = argv[1];
    size_t nargs = (size_t)argc - 2;
    lmq_proxy_t *p = cli_proxy(c, dev);
    if (!p)
        return CLI_FAILED;
    json_t *desc = NULL;
    lmq_value_t *vals = NULL;
    lmq_value_t result = {0};
    int rc = cli_describe(c, p, &desc);
    if (rc != CLI_OK)
        goto out;
    json_t *m = cli_desc_find(desc, "methods", method);
    if (!m) {
        rc = cli_fail_notfound(c, desc, dev, "methods", "method", method);
        goto out;
    }
    json_t *margs = json_object_get(m, "args");
    char sig[400];
    fmt_args(sig, sizeof sig, margs);
    if (json_array_size(margs) != nargs) {
        size_t want = json_array_size(margs);
        rc = cli_failf(c, LMQ_EARG, "%s.%s takes %zu argument%s%s%s%s, %zu given", dev, method, want,
                       want == 1 ? "" : "s", want ? " (" : "", sig, want ? ")" : "", nargs);
        goto out;
    }
    vals = calloc(nargs ? nargs : 1, sizeof *vals);
    if (!vals) {
        rc = cli_failf(c, LMQ_EMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nargs; i++) {
        json_t *a = json_array_get(margs, i);
        lmq_type_t type = lmq_type_parse(jstr(a, "type"));
        if (parse_typed(&vals[i], argv[2 + i], type) != 0) {
            rc = cli_failf(c, LMQ_EARG, "argument '%s' of %s.%s must be %s, not '%s'", jstr(a, "name"), dev, method,
                           type_phrase(type), argv[2 + i]);
            goto out;
        }
    }
    int st = lmq_proxy_call(p, method, vals, nargs, &result);
    if (st != 0) {
        rc = cli_fail_proxy(c, p, st);
        goto out;
    }
    if (c->json)
        cli_print_value_json(c->out, &result);
    else
        cli_print_value(c->out, &result, jstr(json_object_get(m, "returns"), "unit"));
out:
    for (size_t i = 0; vals && i < nargs; i++)
        lmq_value_clear(&vals[i]);
    free(vals);
    lmq_value_clear(&result);
    json_decref(desc);
    lmq_proxy_destroy(&p);
    return rc;
}

/* ---- get / set ---- */

/* Common start of get and set: the proxy, its description and the property. */
static int find_property(cli_t *c, const char *dev, const char *prop, lmq_proxy_t **p, json_t **desc, json_t **pr)
{
    *p = cli_proxy(c, dev);
    if (!*p)
        return CLI_FAILED;
    int rc = cli_describe(c, *p, desc);
    if (rc != CLI_OK)
        return rc;
    *pr = cli_desc_find(*desc, "properties", prop);
    if (!*pr)
        return cli_fail_notfound(c, *desc, dev, "properties", "property", prop);
    return CLI_OK;
}

int cli_cmd_get(cli_t *c, int argc, char **argv)
{
    (void)argc;
    const char *dev = argv[0], *prop = argv[1];
    lmq_proxy_t *p = NULL;
    json_t *desc = NULL, *pr = NULL;
    lmq_value_t v = {0};
    int rc = find_property(c, dev, prop, &p, &desc, &pr);
    if (rc == CLI_OK) {
        int st = lmq_proxy_get(p, prop, &v);
        if (st != 0)
            rc = cli_fail_proxy(c, p, st);
        else if (c->json)
            cli_print_value_json(c->out, &v);
        else
            cli_print_value(c->out, &v, jstr(pr, "unit"));
    }
    lmq_value_clear(&v);
    json_decref(desc);
    lmq_proxy_destroy(&p);
    return rc;
}

int cli_cmd_set(cli_t *c, int argc, char **argv)
{
    (void)argc;
    const char *dev = argv[0], *prop = argv[1], *text = argv[2];
    lmq_proxy_t *p = NULL;
    json_t *desc = NULL, *pr = NULL;
    lmq_value_t v = {0};
    int rc = find_property(c, dev, prop, &p, &desc, &pr);
    if (rc != CLI_OK)
        goto out;
    if (strcmp(jstr(pr, "access"), "ro") == 0) {
        rc = cli_failf(c, LMQ_EREADONLY, "%s.%s is read-only", dev, prop);
        goto out;
    }
    lmq_type_t type = lmq_type_parse(jstr(pr, "type"));
    if (parse_typed(&v, text, type) != 0) {
        rc = cli_failf(c, LMQ_EARG, "%s.%s must be %s, not '%s'", dev, prop, type_phrase(type), text);
        goto out;
    }
    int st = lmq_proxy_set(p, prop, &v);
    if (st != 0) {
        rc = cli_fail_proxy(c, p, st);
        goto out;
    }
    if (c->json) {
        fputs("null\n", c->out);
    } else {
        fprintf(c->out, "%s.%s = ", dev, prop);
        cli_print_value(c->out, &v, jstr(pr, "unit"));
    }
out:
    lmq_value_clear(&v);
    json_decref(desc);
    lmq_proxy_destroy(&p);
    return rc;
}

/* ---- stats ---- */

static void fmt_count(char *buf, size_t size, json_t *n)
{
    if (json_is_integer(n))
        snprintf(buf, size, "%" JSON_INTEGER_FORMAT, json_integer_value(n));
    else if (json_is_number(n))
        snprintf(buf, size, "%.0f", json_number_value(n));
    else
        snprintf(buf, size, "-");
}

static void fmt_us(char *buf, size_t size, json_t *n)
{
    if (!json_is_number(n)) {
        snprintf(buf, size, "-");
        return;
    }
    double us = json_number_value(n);
    /* A decimal only where it carries information. */
    snprintf(buf, size, us < 100 ? "%.1f" : "%.0f", us);
}

/* The flow subscriptions (protocol 3.2), when there are any: who holds how
 * much in the daemon, and what each has lost to its bound. */
static int print_subscribers(cli_t *c, json_t *subs)
{
    if (json_array_size(subs) == 0)
        return CLI_OK;
    fputc('\n', c->out);
    cli_table_t *t = cli_table_new(7);
    for (size_t col = 3; col < 7; col++)
        cli_table_align_right(t, col);
    cli_table_row(t, "SUBSCRIPTION", "MODE", "TOPICS", "HELD BYTES", "QUEUED", "DELIVERED", "DROPPED");
    size_t i;
    json_t *s;
    json_array_foreach(subs, i, s)
    {
        char id[32], held[32], queued[32], delivered[32], dropped[32], topics[256] = "";
        fmt_count(id, sizeof id, json_object_get(s, "subscription"));
        json_int_t bytes = json_integer_value(json_object_get(s, "queued_bytes")) +
                           json_integer_value(json_object_get(s, "in_flight_bytes"));
        snprintf(held, sizeof held, "%" JSON_INTEGER_FORMAT, bytes);
        fmt_count(queued, sizeof queued, json_object_get(s, "queued_blocks"));
        fmt_count(delivered, sizeof delivered, json_object_get(s, "delivered"));
        fmt_count(dropped, sizeof dropped, json_object_get(s, "dropped"));
        size_t k, len = 0;
        json_t *topic;
        json_array_foreach(json_object_get(s, "topics"), k, topic)
        {
            if (len < sizeof topics)
                len += (size_t)snprintf(topics + len, sizeof topics - len, "%s%s", k ? "," : "",
                                        json_string_value(topic) ? json_string_value(topic) : "?");
        }
        cli_table_row(t, id, jstr(s, "mode"), topics, held, queued, delivered, dropped);
    }
    int rc = cli_table_print(t, c->out, "") == 0 ? CLI_OK : cli_failf(c, LMQ_EMEM, "out of memory");
    cli_table_destroy(&t);
    return rc;
}

int cli_cmd_stats(cli_t *c, int argc, char **argv)
{
    int rc;
    json_t *j = fetch(c, argc > 0 ? argv[0] : NULL, lmq_proxy_stats, "stats", NULL, &rc);
    if (!j)
        return rc;
    char up[32], req[32], err[32];
    fmt_uptime(up, sizeof up, json_number_value(json_object_get(j, "uptime_s")));
    fmt_count(req, sizeof req, json_object_get(j, "requests"));
    fmt_count(err, sizeof err, json_object_get(j, "errors"));
    fprintf(c->out, "daemon up %s, %s requests, %s errors\n", up, req, err);
    print_config(c, json_object_get(j, "config"));
    fputc('\n', c->out);

    cli_table_t *t = cli_table_new(8);
    for (size_t col = 2; col < 8; col++)
        cli_table_align_right(t, col);
    cli_table_row(t, "DEVICE", "STATE", "CALLS", "ERRORS", "IN FLIGHT", "P50 µs", "P99 µs", "MAX µs");
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(j, "devices"), i, d)
    {
        char calls[32], errs[32], fl[32], p50[32], p99[32], mx[32];
        json_t *lat = json_object_get(d, "latency_us");
        fmt_count(calls, sizeof calls, json_object_get(d, "calls"));
        fmt_count(errs, sizeof errs, json_object_get(d, "errors"));
        fmt_count(fl, sizeof fl, json_object_get(d, "in_flight"));
        fmt_us(p50, sizeof p50, json_object_get(lat, "p50"));
        fmt_us(p99, sizeof p99, json_object_get(lat, "p99"));
        fmt_us(mx, sizeof mx, json_object_get(lat, "max"));
        cli_table_row(t, jstr(d, "name"), jstr(d, "state"), calls, errs, fl, p50, p99, mx);
    }
    rc = cli_table_print(t, c->out, "") == 0 ? CLI_OK : cli_failf(c, LMQ_EMEM, "out of memory");
    cli_table_destroy(&t);
    if (rc == CLI_OK)
        rc = print_subscribers(c, json_object_get(j, "subscribers"));
    json_decref(j);
    return rc;
}

/* ---- workers ---- */

int cli_cmd_workers(cli_t *c, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    int rc;
    json_t *j = fetch(c, NULL, lmq_proxy_workers, "workers", NULL, &rc);
    if (!j)
        return rc;
    if (!json_is_array(j)) {
        json_decref(j);
        return cli_failf(c, LMQ_EPROTO, "the daemon's workers reply is not a JSON array");
    }
    if (json_array_size(j) == 0) {
        fprintf(c->out, "no workers (labmqd starts those its configuration declares under 'workers:')\n");
        json_decref(j);
        return CLI_OK;
    }
    cli_table_t *t = cli_table_new(6);
    cli_table_align_right(t, 2);
    cli_table_align_right(t, 3);
    cli_table_align_right(t, 4);
    cli_table_row(t, "WORKER", "STATE", "PID", "RESTARTS", "UPTIME", "LAST EXIT");
    size_t i;
    json_t *w;
    json_array_foreach(j, i, w)
    {
        char pid[32] = "-", restarts[32], up[32] = "-", last[64] = "-";
        json_t *jp = json_object_get(w, "pid"), *le = json_object_get(w, "last_exit");
        if (json_is_integer(jp))
            snprintf(pid, sizeof pid, "%lld", (long long)json_integer_value(jp));
        fmt_count(restarts, sizeof restarts, json_object_get(w, "restarts"));
        if (json_is_integer(jp))
            fmt_uptime(up, sizeof up, json_number_value(json_object_get(w, "uptime_s")));
        if (json_is_string(json_object_get(le, "signal")))
            snprintf(last, sizeof last, "%s", json_string_value(json_object_get(le, "signal")));
        else if (json_is_integer(json_object_get(le, "code")))
            snprintf(last, sizeof last, "exit %lld", (long long)json_integer_value(json_object_get(le, "code")));
        cli_table_row(t, jstr(w, "name"), jstr(w, "state"), pid, restarts, up, last);
    }
    rc = cli_table_print(t, c->out, "") == 0 ? CLI_OK : cli_failf(c, LMQ_EMEM, "out of memory");
    cli_table_destroy(&t);
    json_array_foreach(j, i, w)
    {
        const char *why = json_string_value(json_object_get(w, "error"));
        if (why)
            fprintf(c->out, "%s: %s\n", jstr(w, "name"), why);
    }
    json_decref(j);
    return rc;
}

/* ---- scan ---- */

typedef struct scan_ctx {
    json_t *found; /* the ports, as scan reports them */
} scan_ctx_t;

static void scan_one(void *user, const lmq_port_info_t *info)
{
    scan_ctx_t *sc = user;
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "connection", info->connection, "kind", info->kind,
                          "description", info->description ? info->description : "", "manufacturer",
                          info->manufacturer ? info->manufacturer : "", "product", info->product ? info->product : "",
                          "serial", info->serial ? info->serial : "");
    if (j && info->vid >= 0) {
        char id[16];
        snprintf(id, sizeof id, "%04x:%04x", (unsigned)info->vid, (unsigned)info->pid);
        json_object_set_new(j, "usb_id", json_string(id));
    }
    if (j)
        json_array_append_new(sc->found, j);
}

/* Local hardware only: no daemon is asked (one holding a port does not hide it). */
int cli_cmd_scan(cli_t *c, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    scan_ctx_t sc = {.found = json_array()};
    char err[300] = "";
    int n = sc.found ? lmq_transport_scan(scan_one, &sc, err, sizeof err) : LMQ_EMEM;
    if (n < 0) {
        json_decref(sc.found);
        return cli_failf(c, n, "cannot list ports: %s", *err ? err : lmq_strerror(n));
    }
    if (c->json) {
        char *txt = json_dumps(sc.found, JSON_INDENT(2));
        fprintf(c->out, "%s\n", txt ? txt : "[]");
        free(txt);
    } else if (json_array_size(sc.found) == 0) {
        fprintf(c->out, "no serial ports and no USBTMC devices found on this machine\n"
                        "(a TCP instrument is not found by scanning: use tcp:HOST:5025 as its connection)\n");
    } else {
        cli_table_t *t = cli_table_new(5);
        cli_table_row(t, "CONNECTION", "USB ID", "MANUFACTURER", "PRODUCT", "SERIAL");
        size_t i;
        json_t *d;
        json_array_foreach(sc.found, i, d)
        {
            cli_table_row(t, jstr(d, "connection"), jstr(d, "usb_id"), jstr(d, "manufacturer"), jstr(d, "product"),
                          jstr(d, "serial"));
        }
        if (cli_table_print(t, c->out, "") != 0) {
            cli_table_destroy(&t);
            json_decref(sc.found);
            return cli_failf(c, LMQ_EMEM, "out of memory");
        }
        cli_table_destroy(&t);
    }
    json_decref(sc.found);
    return CLI_OK;
}
