/* labmq — the declarative `scpi` driver: an instrument description (YAML,
 * option `model`) declares properties and methods as command templates;
 * this file builds the device's tables from it (configure) and moves the
 * bytes through the device's transport. Formatting and parsing live in
 * template.c.
 *
 * Never out of step: after a timeout or an unparsable reply the transport is
 * drained until the line has been quiet (and the description's
 * clear_command is sent), so a late reply to one query is never read as the
 * answer to the next. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "labmq/driver.h"
#include "labmq/status.h"
#include "scpi.h"
#include "template.h"

typedef struct scpi_tables {
    lmq__scpi_desc_t *desc;
    lmq_method_t *methods;
    lmq_property_t *props;
    lmq_arg_t *args;
    char **docs; /* the docs of enums, extended with their names (others point into desc) */
    size_t n_docs;
} scpi_tables_t;

typedef struct scpi_state {
    const lmq__scpi_desc_t *desc;
    lmq_transport_t *t;
    int timeout_ms; /* for commands without their own */
    char *line;     /* LMQ__SCPI_MAX_LINE bytes: one reply */
    char cmd[LMQ__SCPI_MAX_CMD];
} scpi_state_t;

static const lmq_option_t scpi_options[] = {
    {.name = "model",
     .type = LMQ_STRING,
     .def = NULL,
     .doc = "instrument description (YAML): its commands, terminators, checks; see examples/instruments/",
     .path = true},
    {.name = "timeout_ms",
     .type = LMQ_INT,
     .def = "0",
     .doc = "reply timeout of commands without their own; 0 = the description's timeout_ms (2000 when it has none)"},
    {.name = "idn_check",
     .type = LMQ_BOOL,
     .def = "true",
     .doc = "require the *IDN? reply to contain the description's idn at open (false: accept a compatible model)"},
    {.name = NULL},
};

/* ---- I/O ---- */

static int timeout_of(const scpi_state_t *st, const lmq__scpi_cmd_t *c)
{
    return c && c->timeout_ms ? c->timeout_ms : st->timeout_ms;
}

static int64_t deadline_of(const scpi_state_t *st, const lmq__scpi_cmd_t *c)
{
    return lmq_clock_mono_ns() + (int64_t)timeout_of(st, c) * 1000000;
}

/* The instrument's own words for people: as sent when printable, escaped
 * otherwise. */
static void quote_text(const char *line, size_t len, char *out, size_t size)
{
    bool plain = true;
    for (size_t i = 0; i < len; i++)
        plain &= line[i] >= 0x20 && line[i] < 0x7f;
    if (plain)
        snprintf(out, size, "%.*s", (int)len, line);
    else
        lmq__scpi_escape(line, len, out, size);
}

/* Drains what is in flight until the line is quiet, then sends the
 * description's clear_command. With `diag`, the error queue is asked first
 * (clear_command usually empties it): a query the instrument refused never
 * answers, and its error says why. Failures here are left for the next
 * request to meet (a broken transport fails it with LMQ_EIO). */
/* A quiet line is not proof enough: a loaded instrument (or PC) may answer
 * the timed-out query after any quiet period. When the description names the
 * instrument's identity, *IDN? is a marker: every line before its answer is
 * stale and dropped, so the next query reads its own reply. Returns 0 once
 * in step, else the transport's status. */
static int sync_marker(lmq_dev_t *dev, scpi_state_t *st, int64_t step)
{
    const lmq__scpi_desc_t *d = st->desc;
    /* only an identity checked at open is a marker we can trust */
    if (!d->idn || !lmq_dev_opt_bool(dev, "idn_check"))
        return 0;
    char buf[16];
    int n = snprintf(buf, sizeof buf, "*IDN?%s", d->write_term);
    int64_t dl = lmq_clock_mono_ns() + step;
    int rc = lmq_transport_write(st->t, buf, (size_t)n, dl);
    size_t len = 0;
    while (rc == 0 && (rc = lmq_transport_read_line(st->t, st->line, LMQ__SCPI_MAX_LINE, &len, d->read_term, dl)) == 0 &&
           !strcasestr(st->line, d->idn)) {
        char esc[120];
        lmq__scpi_escape(st->line, len, esc, sizeof esc);
        lmq_log(lmq_dev_log(dev), LMQ_LOG_DEBUG, lmq_dev_name(dev), "resynchronising: dropped a stale reply \"%s\"",
                esc);
    }
    return rc;
}

static void resync(lmq_dev_t *dev, scpi_state_t *st, char *diag, size_t dsz)
{
    const lmq__scpi_desc_t *d = st->desc;
    int64_t step = (int64_t)st->timeout_ms * 1000000;
    int rc = lmq_transport_clear(st->t, d->clear_quiet_ms,
                                 lmq_clock_mono_ns() + (int64_t)d->clear_quiet_ms * 1000000 + step);
    if (rc == 0)
        rc = sync_marker(dev, st, step);
    char buf[LMQ__SCPI_MAX_CMD + 4];
    if (rc == 0 && diag && d->error_query) {
        int n = snprintf(buf, sizeof buf, "%s%s", d->error_query, d->write_term);
        int64_t dl = lmq_clock_mono_ns() + step;
        size_t len = 0;
        rc = lmq_transport_write(st->t, buf, (size_t)n, dl);
        if (rc == 0)
            rc = lmq_transport_read_line(st->t, st->line, LMQ__SCPI_MAX_LINE, &len, d->read_term, dl);
        if (rc == 0 && !lmq__scpi_no_error(d, st->line))
            quote_text(st->line, len, diag, dsz);
        if (rc == LMQ_ETIMEOUT)
            rc = lmq_transport_clear(st->t, d->clear_quiet_ms,
                                     lmq_clock_mono_ns() + (int64_t)d->clear_quiet_ms * 1000000 + step);
    }
    if (rc == 0 && d->clear_command) {
        int n = snprintf(buf, sizeof buf, "%s%s", d->clear_command, d->write_term);
        rc = lmq_transport_write(st->t, buf, (size_t)n, lmq_clock_mono_ns() + step);
    }
    if (rc)
        lmq_log(lmq_dev_log(dev), LMQ_LOG_DEBUG, lmq_dev_name(dev), "resynchronising failed: %s (%s)", lmq_strerror(rc),
                lmq_transport_last_error(st->t));
}

/* A transport failure during `what` of command `text` into the request's error. */
static int io_fail(lmq_dev_t *dev, scpi_state_t *st, int rc, const lmq__scpi_cmd_t *c, const char *what,
                   const char *text)
{
    if (rc == LMQ_ETIMEOUT) {
        char diag[256] = "";
        resync(dev, st, diag, sizeof diag);
        if (diag[0])
            return lmq_dev_fail(dev, LMQ_ETIMEOUT, "%s '%s' timed out after %d ms; the instrument reports %s", what,
                                text, timeout_of(st, c), diag);
        return lmq_dev_fail(dev, LMQ_ETIMEOUT, "%s '%s' timed out after %d ms", what, text, timeout_of(st, c));
    }
    if (rc == LMQ_ERANGE) {
        resync(dev, st, NULL, 0);
        return lmq_dev_fail(dev, LMQ_EPROTO, "the reply to '%s' is longer than %d bytes", text, LMQ__SCPI_MAX_LINE - 1);
    }
    if (rc == LMQ_ECLOSED)
        return lmq_dev_fail(dev, LMQ_ECLOSED, "'%s' cancelled: the device is stopping", text);
    return lmq_dev_fail(dev, rc == LMQ_EIO ? LMQ_EIO : rc, "%s '%s': %s", what, text, lmq_transport_last_error(st->t));
}

static int send_line(lmq_dev_t *dev, scpi_state_t *st, const lmq__scpi_cmd_t *c, const char *text, int64_t dl)
{
    char buf[LMQ__SCPI_MAX_CMD + 4];
    int n = snprintf(buf, sizeof buf, "%s%s", text, st->desc->write_term);
    if (n < 0 || (size_t)n >= sizeof buf)
        return lmq_dev_fail(dev, LMQ_EARG, "command '%.60s...' is too long", text);
    int rc = lmq_transport_write(st->t, buf, (size_t)n, dl);
    return rc ? io_fail(dev, st, rc, c, "sending", text) : 0;
}

static int read_line(lmq_dev_t *dev, scpi_state_t *st, const lmq__scpi_cmd_t *c, const char *text, int64_t dl,
                     size_t *len)
{
    int rc = lmq_transport_read_line(st->t, st->line, LMQ__SCPI_MAX_LINE, len, st->desc->read_term, dl);
    return rc ? io_fail(dev, st, rc, c, "the reply to", text) : 0;
}

static int proto_fail(lmq_dev_t *dev, scpi_state_t *st, const char *text, const void *bytes, size_t n, const char *why)
{
    char esc[160];
    lmq__scpi_escape(bytes, n, esc, sizeof esc);
    resync(dev, st, NULL, 0); /* whatever else the garbling left on the line goes too */
    return lmq_dev_fail(dev, LMQ_EPROTO, "the reply to '%s' does not parse (%s): \"%s\"", text, why, esc);
}

/* After a write: asks the error queue; the first error fails the request
 * with the instrument's text, and the queue is emptied so the next request
 * does not inherit it. */
static int check_errors(lmq_dev_t *dev, scpi_state_t *st, const lmq__scpi_cmd_t *c, const char *text)
{
    const lmq__scpi_desc_t *d = st->desc;
    char first[256] = "";
    int extra = 0;
    for (int i = 0; i < 32; i++) {
        int64_t dl = deadline_of(st, c);
        size_t len = 0;
        int rc = send_line(dev, st, c, d->error_query, dl);
        if (rc == 0)
            rc = read_line(dev, st, c, d->error_query, dl, &len);
        if (rc)
            return rc;
        if (lmq__scpi_no_error(d, st->line))
            break;
        if (!first[0])
            quote_text(st->line, len, first, sizeof first);
        else
            extra++;
    }
    if (!first[0])
        return 0;
    if (extra)
        return lmq_dev_fail(dev, LMQ_EDEVICE, "'%s': instrument error %s (and %d more)", text, first, extra);
    return lmq_dev_fail(dev, LMQ_EDEVICE, "'%s': instrument error %s", text, first);
}

/* An indefinite block (#0): to the USBTMC end of message, or on a byte
 * stream to the first read terminator after a whole number of elements. */
static int read_indefinite(lmq_dev_t *dev, scpi_state_t *st, const lmq__scpi_cmd_t *c, const char *text, int64_t dl,
                           unsigned char **data, size_t *n)
{
    const char *term = st->desc->read_term;
    size_t tl = strlen(term), isz = lmq_dtype_size(c->reply.dtype), len = 0, cap = 65536;
    unsigned char *buf = malloc(cap);
    if (!buf)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
    for (;;) {
        if (len == cap) {
            if (cap >= LMQ__SCPI_MAX_BLOCK) {
                free(buf);
                return proto_fail(dev, st, text, "#0", 2, "indefinite block longer than the limit");
            }
            unsigned char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
            }
            buf = nb;
        }
        size_t got = 0;
        bool eom = false;
        int rc = lmq_transport_read(st->t, buf + len, cap - len, &got, &eom, dl);
        if (rc) {
            free(buf);
            return io_fail(dev, st, rc, c, "the reply to", text);
        }
        size_t from = len > tl ? len - tl : 0;
        len += got;
        if (eom) {
            if (len >= tl && memcmp(buf + len - tl, term, tl) == 0)
                len -= tl;
            break;
        }
        bool done = false;
        for (size_t e = from + tl; e <= len; e++)
            if (memcmp(buf + e - tl, term, tl) == 0 && (e - tl) % isz == 0) {
                if (e != len) { /* bytes after the end: the line is out of step */
                    rc = proto_fail(dev, st, text, buf + e, len - e, "bytes after the block");
                    free(buf);
                    return rc;
                }
                len = e - tl;
                done = true;
                break;
            }
        if (done)
            break;
    }
    *data = buf;
    *n = len;
    return 0;
}

static int read_block(lmq_dev_t *dev, scpi_state_t *st, const lmq__scpi_cmd_t *c, const char *text, int64_t dl,
                      lmq_value_t *out)
{
    unsigned char head[12];
    int rc = lmq_transport_read_exact(st->t, head, 2, dl);
    if (rc)
        return io_fail(dev, st, rc, c, "the reply to", text);
    size_t hl = 0, dlen = 0, have = 2;
    bool indef = false;
    char why[200];
    while ((rc = lmq__scpi_block_head(head, have, &hl, &dlen, &indef, why, sizeof why)) == 1) {
        if (have == sizeof head) { /* cannot happen: 2 + 9 digits at most */
            rc = LMQ_EPROTO;
            break;
        }
        int r = lmq_transport_read_exact(st->t, head + have, 1, dl);
        if (r)
            return io_fail(dev, st, r, c, "the reply to", text);
        have++;
    }
    if (rc) {
        /* Name what came: the header bytes plus the rest of that line. */
        size_t len = 0;
        memcpy(st->line, head, have);
        if (lmq_transport_read_line(st->t, st->line + have, LMQ__SCPI_MAX_LINE - have, &len, st->desc->read_term,
                                    lmq_clock_mono_ns() + 50 * 1000000ll) != 0)
            len = 0;
        return proto_fail(dev, st, text, st->line, have + len, why);
    }
    unsigned char *data = NULL;
    size_t n = dlen;
    if (indef) {
        rc = read_indefinite(dev, st, c, text, dl, &data, &n);
        if (rc)
            return rc;
    } else {
        data = malloc(dlen ? dlen : 1);
        if (!data)
            return lmq_dev_fail(dev, LMQ_EMEM, "out of memory for a block of %zu bytes", dlen);
        rc = lmq_transport_read_exact(st->t, data, dlen, dl);
        if (rc) {
            free(data);
            return io_fail(dev, st, rc, c, "the block replying to", text);
        }
        /* The terminator after the block: nothing else may come before it. */
        size_t len = 0;
        rc = lmq_transport_read_line(st->t, st->line, LMQ__SCPI_MAX_LINE, &len, st->desc->read_term, dl);
        if (rc == 0 && len) {
            free(data);
            return proto_fail(dev, st, text, st->line, len, "bytes after the block");
        }
        if (rc) {
            free(data);
            return io_fail(dev, st, rc, c, "the end of the block replying to", text);
        }
    }
    rc = lmq__scpi_block_decode(&c->reply, data, n, out, why, sizeof why);
    if (rc) {
        rc = rc == LMQ_EPROTO ? proto_fail(dev, st, text, data, n, why) : lmq_dev_fail(dev, rc, "%s", why);
    }
    free(data);
    return rc;
}

/* Sends `text` and reads the reply the command declares. */
static int query(lmq_dev_t *dev, scpi_state_t *st, const lmq__scpi_cmd_t *c, const char *text, lmq_value_t *out)
{
    int64_t dl = deadline_of(st, c);
    int rc = send_line(dev, st, c, text, dl);
    if (rc)
        return rc;
    if (c->reply.kind == LMQ__SCPI_R_BLOCK)
        return read_block(dev, st, c, text, dl, out);
    size_t len = 0;
    if ((rc = read_line(dev, st, c, text, dl, &len)) != 0)
        return rc;
    char why[200];
    bool nodata = false;
    rc = lmq__scpi_parse(&c->reply, st->line, len, out, &nodata, why, sizeof why);
    if (rc == LMQ_EPROTO)
        return proto_fail(dev, st, text, st->line, len, why);
    if (rc)
        return lmq_dev_fail(dev, rc, "%s", why);
    if (nodata)
        return lmq_dev_fail(dev, LMQ_EDEVICE, "'%s': the instrument has no reading (%s: overflow or no data)", text,
                            st->line);
    return 0;
}

static int write_cmd(lmq_dev_t *dev, scpi_state_t *st, const lmq__scpi_cmd_t *c, const char *text)
{
    int rc = send_line(dev, st, c, text, deadline_of(st, c));
    if (rc == 0 && c->error_check)
        rc = check_errors(dev, st, c, text);
    return rc;
}

/* ---- handlers ---- */

static int prop_get(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    const lmq__scpi_cmd_t *c = lmq_dev_user(dev);
    return query(dev, state, c, c->query.text, out);
}

static int prop_set(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    scpi_state_t *st = state;
    const lmq__scpi_cmd_t *c = lmq_dev_user(dev);
    char why[300];
    int rc = lmq__scpi_format(&c->command, c->args, in, 1, st->cmd, sizeof st->cmd, why, sizeof why);
    if (rc)
        return lmq_dev_fail(dev, rc, "%s: %s", c->name, why);
    return write_cmd(dev, st, c, st->cmd);
}

static int method_call(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    scpi_state_t *st = state;
    const lmq__scpi_cmd_t *c = lmq_dev_user(dev);
    char why[300];
    int rc = lmq__scpi_format(&c->command, c->args, args, c->n_args, st->cmd, sizeof st->cmd, why, sizeof why);
    if (rc)
        return lmq_dev_fail(dev, rc, "%s: %s", c->name, why);
    if (c->reply.kind == LMQ__SCPI_R_NONE)
        return write_cmd(dev, st, c, st->cmd);
    return query(dev, st, c, st->cmd, result);
}

/* ---- open and close ---- */

static void scpi_close(lmq_dev_t *dev, void *state)
{
    (void)dev;
    scpi_state_t *st = state;
    if (!st)
        return;
    lmq_transport_close(&st->t);
    free(st->line);
    free(st);
}

static int scpi_open(lmq_dev_t *dev, void **state)
{
    const scpi_tables_t *tb = lmq_dev_tables_user(dev);
    if (!tb)
        return lmq_dev_fail(dev, LMQ_ECONFIG, "no instrument description (configure did not run)");
    scpi_state_t *st = calloc(1, sizeof *st);
    if (!st || !(st->line = malloc(LMQ__SCPI_MAX_LINE))) {
        free(st);
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
    }
    st->desc = tb->desc;
    int64_t opt = lmq_dev_opt_int(dev, "timeout_ms");
    st->timeout_ms =
        opt > 0 ? (int)(opt > 3600000 ? 3600000 : opt) : (st->desc->timeout_ms ? st->desc->timeout_ms : 2000);
    int rc = lmq_dev_transport_open(dev, &st->t, st->timeout_ms);
    if (rc) {
        scpi_close(dev, st);
        return rc;
    }
    const lmq__scpi_desc_t *d = st->desc;
    /* A port may hold the end of an earlier session's reply. */
    resync(dev, st, NULL, 0);
    if (d->idn && lmq_dev_opt_bool(dev, "idn_check")) {
        static const lmq__scpi_cmd_t idn_cmd = {.name = "*IDN?", .reply = {.kind = LMQ__SCPI_R_VALUE}};
        int64_t dl = deadline_of(st, NULL);
        size_t len = 0;
        rc = send_line(dev, st, &idn_cmd, "*IDN?", dl);
        if (rc == 0)
            rc = read_line(dev, st, &idn_cmd, "*IDN?", dl, &len);
        if (rc == 0 && !strcasestr(st->line, d->idn)) {
            char esc[200];
            lmq__scpi_escape(st->line, len, esc, sizeof esc);
            const char *file = strrchr(d->path, '/');
            rc = lmq_dev_fail(dev, LMQ_EDEVICE,
                              "*IDN? answers \"%s\"; %s expects \"%s\" (option idn_check: false accepts it)", esc,
                              file ? file + 1 : d->path, d->idn);
        }
        if (rc) {
            scpi_close(dev, st);
            return rc;
        }
    }
    for (size_t i = 0; i < d->n_init; i++) {
        static const lmq__scpi_cmd_t init_cmd = {.name = "init"};
        rc = send_line(dev, st, &init_cmd, d->init[i], deadline_of(st, NULL));
        if (rc == 0 && d->error_query)
            rc = check_errors(dev, st, &init_cmd, d->init[i]);
        if (rc) {
            scpi_close(dev, st);
            return rc;
        }
    }
    *state = st;
    return 0;
}

/* While idle: a hang-up or unplug is noticed without waiting for a request. */
static int scpi_check(lmq_dev_t *dev, void *state)
{
    scpi_state_t *st = state;
    int rc = lmq_transport_check(st->t);
    return rc ? lmq_dev_fail(dev, rc, "%s", lmq_transport_last_error(st->t)) : 0;
}

/* ---- configure: the description into the device's tables ---- */

static void scpi_release(lmq_tables_t *tables)
{
    scpi_tables_t *t = tables->user;
    if (!t)
        return;
    lmq__scpi_desc_free(&t->desc);
    free(t->methods);
    free(t->props);
    free(t->args);
    for (size_t i = 0; i < t->n_docs; i++)
        free(t->docs[i]);
    free(t->docs);
    free(t);
    tables->user = NULL;
}

static lmq_type_t type_of(lmq__scpi_vtype_t t)
{
    switch (t) {
    case LMQ__SCPI_FLOAT:
        return LMQ_FLOAT;
    case LMQ__SCPI_INT:
        return LMQ_INT;
    case LMQ__SCPI_BOOL:
        return LMQ_BOOL;
    case LMQ__SCPI_ENUM:
    case LMQ__SCPI_STRING:
        return LMQ_STRING;
    }
    return LMQ_NONE;
}

/* The description's doc, plus the allowed names of an enum. */
static const char *doc_of(scpi_tables_t *t, const lmq__scpi_field_t *f, const char *doc)
{
    if (f->type != LMQ__SCPI_ENUM)
        return doc ? doc : "";
    size_t need = (doc ? strlen(doc) : 0) + 16;
    for (size_t i = 0; i < f->n_choices; i++)
        need += strlen(f->choices[i].name) + 2;
    char *s = malloc(need);
    if (!s)
        return NULL;
    size_t o = (size_t)snprintf(s, need, "%s%sone of: ", doc ? doc : "", doc && *doc ? "; " : "");
    for (size_t i = 0; i < f->n_choices; i++)
        o += (size_t)snprintf(s + o, need - o, "%s%s", i ? ", " : "", f->choices[i].name);
    t->docs[t->n_docs++] = s;
    return s;
}

static int scpi_configure(lmq_dev_t *dev, lmq_tables_t *tables)
{
    if (!lmq_dev_connection(dev)[0])
        return lmq_dev_fail(dev, LMQ_ECONFIG,
                            "the scpi driver needs a connection: (serial:/dev/ttyUSB0?baud=9600, tcp:HOST:5025, "
                            "usbtmc:VID:PID)");
    char err[600];
    lmq__scpi_desc_t *d = lmq__scpi_desc_load(lmq_dev_opt_str(dev, "model"), err, sizeof err);
    if (!d)
        return lmq_dev_fail(dev, LMQ_ECONFIG, "%s", err);
    scpi_tables_t *t = calloc(1, sizeof *t);
    size_t nargs = 0, ndocs = d->n_props + d->n_methods;
    for (size_t i = 0; i < d->n_methods; i++) {
        nargs += d->methods[i].n_args + 1;
        ndocs += d->methods[i].n_args;
    }
    if (t) {
        t->desc = d;
        t->methods = calloc(d->n_methods + 1, sizeof *t->methods);
        t->props = calloc(d->n_props + 1, sizeof *t->props);
        t->args = calloc(nargs + 1, sizeof *t->args);
        t->docs = calloc(ndocs + 1, sizeof *t->docs);
    }
    lmq_tables_t tmp = {.user = t, .release = scpi_release};
    if (!t) {
        lmq__scpi_desc_free(&d);
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
    }
    if (!t->methods || !t->props || !t->args || !t->docs)
        goto oom;
    for (size_t i = 0; i < d->n_props; i++) {
        const lmq__scpi_cmd_t *c = &d->props[i];
        const lmq__scpi_field_t *f = &c->args[0];
        const char *doc = doc_of(t, f, c->doc);
        if (!doc)
            goto oom;
        t->props[i] = (lmq_property_t){.name = c->name,
                                       .doc = doc,
                                       .type = type_of(f->type),
                                       .unit = f->unit ? f->unit : "",
                                       .limited = f->limited,
                                       .min = f->min,
                                       .max = f->max,
                                       .get = prop_get,
                                       .set = c->command.text ? prop_set : NULL,
                                       .transient = c->transient,
                                       .user = c};
    }
    size_t a = 0;
    for (size_t i = 0; i < d->n_methods; i++) {
        const lmq__scpi_cmd_t *c = &d->methods[i];
        lmq_arg_t *args = &t->args[a];
        for (size_t k = 0; k < c->n_args; k++) {
            const lmq__scpi_field_t *f = &c->args[k];
            const char *doc = doc_of(t, f, f->doc);
            if (!doc)
                goto oom;
            t->args[a++] = (lmq_arg_t){.name = f->name,
                                       .type = type_of(f->type),
                                       .unit = f->unit ? f->unit : "",
                                       .doc = doc,
                                       .limited = f->limited,
                                       .min = f->min,
                                       .max = f->max};
        }
        a++; /* the terminator */
        const lmq__scpi_reply_t *r = &c->reply;
        const char *doc = r->kind == LMQ__SCPI_R_VALUE ? doc_of(t, &r->value, c->doc) : (c->doc ? c->doc : "");
        if (!doc)
            goto oom;
        bool arr = r->kind == LMQ__SCPI_R_LIST || r->kind == LMQ__SCPI_R_BLOCK;
        t->methods[i] = (lmq_method_t){.name = c->name,
                                       .doc = doc,
                                       .args = c->n_args ? args : NULL,
                                       .ret = r->kind == LMQ__SCPI_R_NONE ? LMQ_NONE
                                              : arr                       ? LMQ_ARRAY
                                                                          : type_of(r->value.type),
                                       .ret_unit = r->value.unit ? r->value.unit : "",
                                       .fn = method_call,
                                       .ret_dtype = arr ? r->dtype : LMQ_DT_INVALID,
                                       .ret_ndim = arr ? 1 : 0,
                                       .user = c};
    }
    *tables = (lmq_tables_t){.methods = t->methods, .properties = t->props, .user = t, .release = scpi_release};
    return 0;
oom:
    scpi_release(&tmp);
    return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
}

/* A lock on the device expired: the description's safe_state commands, in
 * order, each checked against the error queue when the description has one.
 * All are tried even when one fails: half safe beats not at all. */
static int scpi_safe_state(lmq_dev_t *dev, void *state)
{
    scpi_state_t *st = state;
    const lmq__scpi_desc_t *d = st->desc;
    if (!d->n_safe_state)
        return 1; /* nothing declared: the daemon reports "none" */
    static const lmq__scpi_cmd_t safe_cmd = {.name = "safe_state"};
    int first = 0;
    size_t nfailed = 0, first_i = 0;
    for (size_t i = 0; i < d->n_safe_state; i++) {
        int rc = send_line(dev, st, &safe_cmd, d->safe_state[i], deadline_of(st, NULL));
        if (rc == 0 && d->error_query)
            rc = check_errors(dev, st, &safe_cmd, d->safe_state[i]);
        if (rc && !nfailed++) {
            first = rc;
            first_i = i;
        }
        if (rc == LMQ_EIO) /* the link is gone: the rest cannot go either */
            break;
    }
    if (!nfailed)
        return 0;
    return lmq_dev_fail(dev, first, "safe_state: %zu of %zu commands failed, the first '%s' (%s)", nfailed,
                        d->n_safe_state, d->safe_state[first_i], lmq_strerror(first));
}

const lmq_driver_t lmq__scpi_driver = {
    .name = "scpi",
    .description = "text instruments (SCPI and alike) declared in a YAML description: no C needed",
    .options = scpi_options,
    .open = scpi_open,
    .close = scpi_close,
    .check = scpi_check,
    .configure = scpi_configure,
    .safe_state = scpi_safe_state,
};
