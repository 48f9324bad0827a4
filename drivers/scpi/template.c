/* labmq — the scpi driver's descriptions (loaded from YAML with libyaml's
 * document API, which keeps every node's line for the messages), command
 * templates and reply parsing. No I/O: see template.h for the syntax. */
#include "template.h"
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>
#include "labmq/status.h"

/* ---- small helpers ---- */

static int fail(char *err, size_t errlen, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int status, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return status;
}

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

static void trim(const char **s, size_t *len)
{
    while (*len && is_blank(**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len && is_blank((*s)[*len - 1]))
        (*len)--;
}

char *lmq__scpi_escape(const void *data, size_t len, char *out, size_t size)
{
    if (!out || !size)
        return out;
    const unsigned char *p = data;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char tmp[8];
        unsigned char c = p[i];
        if (c == '\n')
            strcpy(tmp, "\\n");
        else if (c == '\r')
            strcpy(tmp, "\\r");
        else if (c == '\t')
            strcpy(tmp, "\\t");
        else if (c == '\\' || c == '"')
            snprintf(tmp, sizeof tmp, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            snprintf(tmp, sizeof tmp, "\\x%02x", c);
        else
            snprintf(tmp, sizeof tmp, "%c", c);
        size_t t = strlen(tmp);
        if (o + t + 4 > size) { /* room for "..." and the NUL */
            if (o + 4 <= size) {
                memcpy(out + o, "...", 3);
                o += 3;
            }
            break;
        }
        memcpy(out + o, tmp, t);
        o += t;
    }
    out[o] = '\0';
    return out;
}

/* ---- numbers ---- */

int lmq__scpi_number(const char *text, size_t len, double *out)
{
    if (!text)
        return LMQ_EPROTO;
    trim(&text, &len);
    /* IEEE 488.2 decimal numeric: [sign] digits [. digits] [E [sign] digits].
     * strtod alone would also take hex, "inf" and "nan". */
    size_t i = 0, digits = 0;
    if (i < len && (text[i] == '+' || text[i] == '-'))
        i++;
    while (i < len && isdigit((unsigned char)text[i]))
        i++, digits++;
    if (i < len && text[i] == '.') {
        i++;
        while (i < len && isdigit((unsigned char)text[i]))
            i++, digits++;
    }
    if (!digits)
        return LMQ_EPROTO;
    if (i < len && (text[i] == 'e' || text[i] == 'E')) {
        i++;
        if (i < len && (text[i] == '+' || text[i] == '-'))
            i++;
        size_t ed = 0;
        while (i < len && isdigit((unsigned char)text[i]))
            i++, ed++;
        if (!ed)
            return LMQ_EPROTO;
    }
    if (i != len || len >= 128)
        return LMQ_EPROTO;
    char buf[128];
    memcpy(buf, text, len);
    buf[len] = '\0';
    errno = 0;
    double d = strtod(buf, NULL);
    if (!isfinite(d)) /* 1E+999: no instrument means that */
        return LMQ_EPROTO;
    *out = d;
    return 0;
}

/* SCPI-99 §7.2.1.5: 9.91E+37 is "not a number"; instruments send 9.9E+37 for
 * an overload. Either way there is no reading. */
static bool overflow_marker(double d) { return fabs(d) >= 9.9e37; }

/* ---- comma lists (quoted strings may hold commas) ---- */

/* Finds element k of a comma list; 0 with [*s, *s+*n), or LMQ_EPROTO naming
 * how many there are. */
static int list_element(const char *text, size_t len, int k, const char **s, size_t *n, size_t *count)
{
    size_t start = 0, idx = 0;
    bool quoted = false;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && text[i] == '"')
            quoted = !quoted;
        if (i == len || (text[i] == ',' && !quoted)) {
            if ((int)idx == k) {
                *s = text + start;
                *n = i - start;
            }
            idx++;
            start = i + 1;
        }
    }
    *count = idx;
    return (int)idx > k ? 0 : LMQ_EPROTO;
}

/* A quoted string reply ("text" with "" for a quote) into plain text. */
static char *unquote(const char *s, size_t n)
{
    if (n >= 2 && (s[0] == '"' || s[0] == '\'') && s[n - 1] == s[0]) {
        char q = s[0];
        char *o = malloc(n);
        if (!o)
            return NULL;
        size_t k = 0;
        for (size_t i = 1; i + 1 < n; i++) {
            o[k++] = s[i];
            if (s[i] == q && i + 2 < n && s[i + 1] == q)
                i++;
        }
        o[k] = '\0';
        return o;
    }
    return dup_n(s, n);
}

static bool word_eq(const char *s, size_t n, const char *w) { return w && strlen(w) == n && strncasecmp(s, w, n) == 0; }

/* ---- reply parsing ---- */

static int parse_scalar(const lmq__scpi_field_t *f, const char *s, size_t n, lmq_value_t *out, bool *nodata, char *err,
                        size_t errlen)
{
    trim(&s, &n);
    double d;
    switch (f->type) {
    case LMQ__SCPI_FLOAT:
    case LMQ__SCPI_INT:
        if (lmq__scpi_number(s, n, &d) != 0)
            return fail(err, errlen, LMQ_EPROTO, "not a number");
        if (overflow_marker(d)) {
            *nodata = true;
            return 0;
        }
        if (f->type == LMQ__SCPI_FLOAT) {
            *out = lmq_float(d);
            return 0;
        }
        if (d != floor(d) || d < -9.2e18 || d > 9.2e18)
            return fail(err, errlen, LMQ_EPROTO, "not an integer");
        *out = lmq_int((int64_t)d);
        return 0;
    case LMQ__SCPI_BOOL:
        if (word_eq(s, n, f->on) || word_eq(s, n, "ON")) {
            *out = lmq_bool(true);
            return 0;
        }
        if (word_eq(s, n, f->off) || word_eq(s, n, "OFF")) {
            *out = lmq_bool(false);
            return 0;
        }
        if (lmq__scpi_number(s, n, &d) == 0 && (d == 0 || d == 1)) {
            *out = lmq_bool(d == 1);
            return 0;
        }
        return fail(err, errlen, LMQ_EPROTO, "not a boolean (1/0/ON/OFF)");
    case LMQ__SCPI_ENUM: {
        char *u = unquote(s, n);
        if (!u)
            return fail(err, errlen, LMQ_EMEM, "out of memory");
        size_t un = strlen(u);
        for (size_t i = 0; i < f->n_choices; i++) {
            const lmq__scpi_choice_t *c = &f->choices[i];
            if (word_eq(u, un, c->spelling) || word_eq(u, un, c->shortf)) {
                free(u);
                return lmq_value_set_string(out, c->name) ? fail(err, errlen, LMQ_EMEM, "out of memory") : 0;
            }
        }
        free(u);
        return fail(err, errlen, LMQ_EPROTO, "none of the enum's spellings");
    }
    case LMQ__SCPI_STRING: {
        char *u = unquote(s, n);
        if (!u)
            return fail(err, errlen, LMQ_EMEM, "out of memory");
        int rc = lmq_value_set_string(out, u);
        free(u);
        if (rc == LMQ_EMEM)
            return fail(err, errlen, LMQ_EMEM, "out of memory");
        return rc ? fail(err, errlen, LMQ_EPROTO, "not UTF-8 text") : 0;
    }
    }
    return fail(err, errlen, LMQ_EPROTO, "unknown type");
}

static int parse_list(const lmq__scpi_reply_t *r, const char *text, size_t len, lmq_value_t *out, char *err,
                      size_t errlen)
{
    trim(&text, &len);
    size_t count = 0;
    if (len) {
        count = 1;
        for (size_t i = 0; i < len; i++)
            count += text[i] == ',';
    }
    size_t isz = lmq_dtype_size(r->dtype);
    unsigned char *buf = count ? malloc(count * isz) : NULL;
    if (count && !buf)
        return fail(err, errlen, LMQ_EMEM, "out of memory");
    const char *s = text;
    for (size_t k = 0; k < count; k++) {
        const char *e = memchr(s, ',', (size_t)(text + len - s));
        size_t n = e ? (size_t)(e - s) : (size_t)(text + len - s);
        double d;
        if (lmq__scpi_number(s, n, &d) != 0) {
            free(buf);
            return fail(err, errlen, LMQ_EPROTO, "element %zu is not a number", k);
        }
        bool nd = overflow_marker(d);
        unsigned char *dst = buf + k * isz;
        if (r->dtype == LMQ_F64) {
            double v = nd ? NAN : d;
            memcpy(dst, &v, sizeof v);
        } else if (r->dtype == LMQ_F32) {
            float v = nd ? NAN : (float)d;
            memcpy(dst, &v, sizeof v);
        } else {
            /* integers: in range and whole, stored little-endian byte by byte */
            static const double lo[] = {[LMQ_U8] = 0,  [LMQ_I8] = -128,           [LMQ_U16] = 0, [LMQ_I16] = -32768,
                                        [LMQ_U32] = 0, [LMQ_I32] = -2147483648.0, [LMQ_U64] = 0, [LMQ_I64] = -9.2e18};
            static const double hi[] = {
                [LMQ_U8] = 255,           [LMQ_I8] = 127,           [LMQ_U16] = 65535,  [LMQ_I16] = 32767,
                [LMQ_U32] = 4294967295.0, [LMQ_I32] = 2147483647.0, [LMQ_U64] = 1.8e19, [LMQ_I64] = 9.2e18};
            if (nd || d != floor(d) || d < lo[r->dtype] || d > hi[r->dtype]) {
                free(buf);
                return fail(err, errlen, LMQ_EPROTO, "element %zu (%.*s) does not fit %s", k, (int)(n > 40 ? 40 : n), s,
                            lmq_dtype_name(r->dtype));
            }
            uint64_t u = d < 0 ? (uint64_t)(int64_t)d : (uint64_t)d;
            for (size_t b = 0; b < isz; b++)
                dst[b] = (unsigned char)(u >> (8 * b));
        }
        s += n + 1;
    }
    size_t shape[1] = {count};
    int rc = lmq_value_set_array(out, r->dtype, 1, shape, buf);
    free(buf);
    return rc ? fail(err, errlen, LMQ_EMEM, "out of memory") : 0;
}

int lmq__scpi_parse(const lmq__scpi_reply_t *r, const char *text, size_t len, lmq_value_t *out, bool *nodata, char *err,
                    size_t errlen)
{
    bool nd = false;
    if (nodata)
        *nodata = false;
    if (!r || !text || !out)
        return fail(err, errlen, LMQ_EARG, "no reply description");
    if (r->kind == LMQ__SCPI_R_LIST)
        return parse_list(r, text, len, out, err, errlen);
    if (r->kind != LMQ__SCPI_R_VALUE)
        return fail(err, errlen, LMQ_EARG, "not a one-line reply");
    const char *s = text;
    size_t n = len;
    if (r->element >= 0) {
        size_t count = 0;
        if (list_element(text, len, r->element, &s, &n, &count) != 0)
            return fail(err, errlen, LMQ_EPROTO, "%zu element%s, element %d wanted", count, count == 1 ? "" : "s",
                        r->element);
    }
    int rc = parse_scalar(&r->value, s, n, out, &nd, err, errlen);
    if (rc == 0 && nodata)
        *nodata = nd;
    return rc;
}

/* ---- definite- and indefinite-length blocks ---- */

int lmq__scpi_block_head(const void *buf, size_t len, size_t *head, size_t *data_len, bool *indefinite, char *err,
                         size_t errlen)
{
    const unsigned char *p = buf;
    *indefinite = false;
    if (len < 1)
        return 1;
    if (p[0] != '#')
        return fail(err, errlen, LMQ_EPROTO, "not a block: it does not start with '#'");
    if (len < 2)
        return 1;
    if (!isdigit(p[1]))
        return fail(err, errlen, LMQ_EPROTO, "not a block: '#' is not followed by a digit");
    size_t nd = (size_t)(p[1] - '0');
    if (nd == 0) {
        *indefinite = true;
        *head = 2;
        *data_len = 0;
        return 0;
    }
    if (len < 2 + nd)
        return 1;
    uint64_t n = 0;
    for (size_t i = 0; i < nd; i++) {
        if (!isdigit(p[2 + i]))
            return fail(err, errlen, LMQ_EPROTO, "block length digit %zu is not a digit", i + 1);
        n = n * 10 + (uint64_t)(p[2 + i] - '0');
    }
    if (n > LMQ__SCPI_MAX_BLOCK)
        return fail(err, errlen, LMQ_EPROTO, "block of %llu bytes exceeds the limit of %u", (unsigned long long)n,
                    LMQ__SCPI_MAX_BLOCK);
    *head = 2 + nd;
    *data_len = (size_t)n;
    return 0;
}

int lmq__scpi_block_decode(const lmq__scpi_reply_t *r, const void *data, size_t n, lmq_value_t *out, char *err,
                           size_t errlen)
{
    size_t isz = lmq_dtype_size(r->dtype);
    if (!isz)
        return fail(err, errlen, LMQ_EARG, "block without a dtype");
    if (n % isz)
        return fail(err, errlen, LMQ_EPROTO, "%zu bytes are not a whole number of %s elements", n,
                    lmq_dtype_name(r->dtype));
    size_t shape[1] = {n / isz};
    if (lmq_value_set_array(out, r->dtype, 1, shape, NULL))
        return fail(err, errlen, LMQ_EMEM, "out of memory");
    unsigned char *dst = out->u.a.data;
    const unsigned char *src = data;
    /* labmq arrays are little-endian bytes whatever the host: copy or reverse. */
    if (!r->big_endian || isz == 1) {
        if (n)
            memcpy(dst, src, n);
    } else {
        for (size_t i = 0; i < n; i += isz)
            for (size_t b = 0; b < isz; b++)
                dst[i + b] = src[i + isz - 1 - b];
    }
    return 0;
}

int lmq__scpi_parse_block(const lmq__scpi_reply_t *r, const void *buf, size_t len, lmq_value_t *out, char *err,
                          size_t errlen)
{
    size_t head = 0, dlen = 0;
    bool indef = false;
    int rc = lmq__scpi_block_head(buf, len, &head, &dlen, &indef, err, errlen);
    if (rc == 1)
        return fail(err, errlen, LMQ_EPROTO, "truncated block header");
    if (rc)
        return rc;
    if (indef)
        dlen = len - head;
    if (len - head < dlen)
        return fail(err, errlen, LMQ_EPROTO, "truncated block: %zu of %zu bytes", len - head, dlen);
    if (len - head > dlen)
        return fail(err, errlen, LMQ_EPROTO, "%zu bytes after a block of %zu", len - head - dlen, dlen);
    return lmq__scpi_block_decode(r, (const unsigned char *)buf + head, dlen, out, err, errlen);
}

/* ---- formatting ---- */

typedef struct outbuf {
    char *p;
    size_t size, len;
    bool full;
} outbuf_t;

static void put(outbuf_t *o, const char *s, size_t n)
{
    if (o->len + n >= o->size) {
        o->full = true;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = '\0';
}

static const char *choice_names(const lmq__scpi_field_t *f, char *buf, size_t size)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < f->n_choices && o < size; i++)
        o += (size_t)snprintf(buf + o, size - o, "%s%s", i ? ", " : "", f->choices[i].name);
    return buf;
}

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
#endif
/* The format was built by compile_spec from a validated spec. */
static int fmt_double(char *buf, size_t size, const char *fmt, double d) { return snprintf(buf, size, fmt, d); }
static int fmt_int(char *buf, size_t size, const char *fmt, long long v) { return snprintf(buf, size, fmt, v); }
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

static int format_one(outbuf_t *o, const lmq__scpi_seg_t *sg, const lmq__scpi_field_t *f, const lmq_value_t *v,
                      char *err, size_t errlen)
{
    char tmp[128];
    double d;
    switch (f->type) {
    case LMQ__SCPI_FLOAT:
    case LMQ__SCPI_INT: {
        if (lmq_value_to_double(v, &d) != 0 || !isfinite(d))
            return fail(err, errlen, LMQ_EARG, "'%s' is not a finite number", f->name);
        const char *fmt = sg->fmt[0] ? sg->fmt : (f->type == LMQ__SCPI_INT ? "%lld" : "%.12g");
        size_t fl = strlen(fmt);
        bool int_conv = fl >= 3 && strcmp(fmt + fl - 3, "lld") == 0;
        if (int_conv && (d != floor(d) || fabs(d) > 9.2e18))
            return fail(err, errlen, LMQ_EARG, "'%s' is not a whole number", f->name);
        int k = int_conv ? fmt_int(tmp, sizeof tmp, fmt, v->type == LMQ_INT ? (long long)v->u.i : (long long)d)
                         : fmt_double(tmp, sizeof tmp, fmt, d);
        if (k < 0 || (size_t)k >= sizeof tmp)
            return fail(err, errlen, LMQ_EARG, "'%s' does not format", f->name);
        put(o, tmp, (size_t)k);
        return 0;
    }
    case LMQ__SCPI_BOOL:
        if (v->type != LMQ_BOOL)
            return fail(err, errlen, LMQ_EARG, "'%s' is not a boolean", f->name);
        put(o, v->u.b ? f->on : f->off, strlen(v->u.b ? f->on : f->off));
        return 0;
    case LMQ__SCPI_ENUM:
        if (v->type != LMQ_STRING)
            return fail(err, errlen, LMQ_EARG, "'%s' is not a string", f->name);
        for (size_t i = 0; i < f->n_choices; i++)
            if (strcmp(v->u.s, f->choices[i].name) == 0) {
                put(o, f->choices[i].spelling, strlen(f->choices[i].spelling));
                return 0;
            }
        return fail(err, errlen, LMQ_EARG, "'%s' is not one of: %s", v->u.s, choice_names(f, tmp, sizeof tmp));
    case LMQ__SCPI_STRING: {
        if (v->type != LMQ_STRING)
            return fail(err, errlen, LMQ_EARG, "'%s' is not a string", f->name);
        bool quote = strcmp(sg->fmt, "q") == 0;
        for (const unsigned char *p = (const unsigned char *)v->u.s; *p; p++) {
            if (*p < 0x20 || *p == 0x7f)
                return fail(err, errlen, LMQ_EARG, "'%s' holds a control character (\\x%02x)", f->name, *p);
            if (*p == ';' && !quote)
                return fail(err, errlen, LMQ_EARG,
                            "'%s' holds ';', which would start a second command (the template can send it quoted: "
                            "{%s:q})",
                            f->name, f->name);
        }
        if (!quote) {
            put(o, v->u.s, strlen(v->u.s));
            return 0;
        }
        put(o, "\"", 1);
        for (const char *p = v->u.s; *p; p++) {
            put(o, p, 1);
            if (*p == '"') /* SCPI doubles a quote inside a quoted string */
                put(o, "\"", 1);
        }
        put(o, "\"", 1);
        return 0;
    }
    }
    return fail(err, errlen, LMQ_EARG, "unknown type");
}

int lmq__scpi_format(const lmq__scpi_tmpl_t *t, const lmq__scpi_field_t *fields, const lmq_value_t *vals, size_t n,
                     char *out, size_t size, char *err, size_t errlen)
{
    if (!t || !t->text || !out || size == 0)
        return fail(err, errlen, LMQ_EARG, "no template");
    outbuf_t o = {out, size, 0, false};
    out[0] = '\0';
    for (size_t i = 0; i < t->n; i++) {
        const lmq__scpi_seg_t *sg = &t->segs[i];
        if (sg->lit) {
            put(&o, sg->lit, strlen(sg->lit));
            continue;
        }
        if (sg->field >= n)
            return fail(err, errlen, LMQ_EARG, "template refers to value %zu of %zu", sg->field, n);
        int rc = format_one(&o, sg, &fields[sg->field], &vals[sg->field], err, errlen);
        if (rc)
            return rc;
    }
    if (o.full)
        return fail(err, errlen, LMQ_EARG, "the command is longer than %zu bytes", size - 1);
    return 0;
}

bool lmq__scpi_no_error(const lmq__scpi_desc_t *d, const char *reply)
{
    size_t n = strlen(reply);
    const char *s = reply;
    trim(&s, &n);
    for (size_t i = 0; i < d->n_no_error; i++) {
        size_t pl = strlen(d->no_error[i]);
        if (n >= pl && strncasecmp(s, d->no_error[i], pl) == 0 &&
            (n == pl || s[pl] == ',' || s[pl] == ' ' || s[pl] == '\t'))
            return true;
    }
    return false;
}

/* ---- loading a description ---- */

typedef struct loader {
    const char *origin;
    yaml_document_t doc;
    char *err;
    size_t errlen;
    bool check_default; /* the description's error_check */
} loader_t;

static int lfail(loader_t *L, const yaml_node_t *n, const char *entry, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int lfail(loader_t *L, const yaml_node_t *n, const char *entry, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n)
        fail(L->err, L->errlen, LMQ_ECONFIG, "%s:%lu: %s%s%s", L->origin, (unsigned long)n->start_mark.line + 1,
             entry ? entry : "", entry ? ": " : "", msg);
    else
        fail(L->err, L->errlen, LMQ_ECONFIG, "%s: %s%s%s", L->origin, entry ? entry : "", entry ? ": " : "", msg);
    return -1;
}

static yaml_node_t *node_at(loader_t *L, int id) { return yaml_document_get_node(&L->doc, id); }

static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* Every key a scalar, known and given once. */
static int check_keys(loader_t *L, yaml_node_t *map, const char *entry, const char *const *known)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node_at(L, p->key);
        const char *ks = scalar(k);
        if (!ks)
            return lfail(L, k, entry, "a key must be a plain word");
        bool ok = false;
        for (size_t i = 0; known[i]; i++)
            ok |= strcmp(ks, known[i]) == 0;
        if (!ok) {
            char list[400];
            size_t o = 0;
            list[0] = '\0';
            for (size_t i = 0; known[i] && o < sizeof list; i++)
                o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", known[i]);
            return lfail(L, k, entry, "unknown key '%s' (known: %s)", ks, list);
        }
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++)
            if (strcmp(scalar(node_at(L, q->key)) ? scalar(node_at(L, q->key)) : "", ks) == 0)
                return lfail(L, k, entry, "'%s' is given twice", ks);
    }
    return 0;
}

static yaml_node_t *find(loader_t *L, yaml_node_t *map, const char *key)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        const char *ks = scalar(node_at(L, p->key));
        if (ks && strcmp(ks, key) == 0)
            return node_at(L, p->value);
    }
    return NULL;
}

/* A string value: *out is a copy, or NULL when absent and not required. */
static int get_str(loader_t *L, yaml_node_t *map, const char *entry, const char *key, bool required, char **out)
{
    yaml_node_t *v = find(L, map, key);
    *out = NULL;
    if (!v) {
        return required ? lfail(L, map, entry, "'%s' is required", key) : 0;
    }
    const char *s = scalar(v);
    if (!s)
        return lfail(L, v, entry, "'%s' must be text", key);
    *out = strdup(s);
    return *out ? 0 : lfail(L, v, entry, "out of memory");
}

static int get_num(loader_t *L, yaml_node_t *map, const char *entry, const char *key, double *out, bool *present)
{
    yaml_node_t *v = find(L, map, key);
    *present = v != NULL;
    if (!v)
        return 0;
    const char *s = scalar(v);
    if (!s || lmq__scpi_number(s, strlen(s), out) != 0)
        return lfail(L, v, entry, "'%s' must be a number, not '%s'", key, s ? s : "(a collection)");
    return 0;
}

static int get_int(loader_t *L, yaml_node_t *map, const char *entry, const char *key, long lo, long hi, int *out)
{
    double d;
    bool present;
    if (get_num(L, map, entry, key, &d, &present))
        return -1;
    if (!present)
        return 0;
    if (d != floor(d) || d < (double)lo || d > (double)hi)
        return lfail(L, find(L, map, key), entry, "'%s' must be a whole number in %ld..%ld", key, lo, hi);
    *out = (int)d;
    return 0;
}

static int get_bool(loader_t *L, yaml_node_t *map, const char *entry, const char *key, bool *out, bool *present)
{
    yaml_node_t *v = find(L, map, key);
    if (present)
        *present = v != NULL;
    if (!v)
        return 0;
    const char *s = scalar(v);
    if (s && (strcmp(s, "true") == 0 || strcmp(s, "yes") == 0))
        *out = true;
    else if (s && (strcmp(s, "false") == 0 || strcmp(s, "no") == 0))
        *out = false;
    else
        return lfail(L, v, entry, "'%s' must be true or false", key);
    return 0;
}

/* A list of strings; a single scalar is a list of one. */
static int get_strlist(loader_t *L, yaml_node_t *map, const char *entry, const char *key, char ***out, size_t *n)
{
    yaml_node_t *v = find(L, map, key);
    *out = NULL;
    *n = 0;
    if (!v)
        return 0;
    size_t count =
        v->type == YAML_SEQUENCE_NODE ? (size_t)(v->data.sequence.items.top - v->data.sequence.items.start) : 1;
    if (v->type == YAML_MAPPING_NODE)
        return lfail(L, v, entry, "'%s' must be text or a list of text", key);
    *out = calloc(count ? count : 1, sizeof **out);
    if (!*out)
        return lfail(L, v, entry, "out of memory");
    for (size_t i = 0; i < count; i++) {
        yaml_node_t *item = v->type == YAML_SEQUENCE_NODE ? node_at(L, v->data.sequence.items.start[i]) : v;
        const char *s = scalar(item);
        if (!s)
            return lfail(L, item, entry, "'%s' item %zu must be text", key, i + 1);
        (*out)[i] = strdup(s);
        if (!(*out)[i])
            return lfail(L, item, entry, "out of memory");
        (*n)++;
    }
    return 0;
}

static bool name_ok(const char *s)
{
    if (!s || !(isalpha((unsigned char)s[0]) || s[0] == '_') || strlen(s) > 63)
        return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_')
            return false;
    return true;
}

static bool has_control(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return true;
    return false;
}

static void field_free(lmq__scpi_field_t *f)
{
    free(f->name);
    free(f->unit);
    free(f->doc);
    free(f->on);
    free(f->off);
    for (size_t i = 0; i < f->n_choices; i++) {
        free(f->choices[i].name);
        free(f->choices[i].spelling);
        free(f->choices[i].shortf);
    }
    free(f->choices);
    memset(f, 0, sizeof *f);
}

static int parse_vtype(const char *s, lmq__scpi_vtype_t *t)
{
    static const char *const names[] = {"float", "int", "bool", "enum", "string"};
    for (size_t i = 0; i < 5; i++)
        if (strcmp(s, names[i]) == 0) {
            *t = (lmq__scpi_vtype_t)i;
            return 0;
        }
    return -1;
}

/* The value-describing keys common to properties, arguments and results:
 * type (already known), unit, doc, min, max, values, spellings. */
static int field_load(loader_t *L, yaml_node_t *map, const char *entry, lmq__scpi_field_t *f)
{
    if (get_str(L, map, entry, "unit", false, &f->unit) || get_str(L, map, entry, "doc", false, &f->doc))
        return -1;
    bool has_min, has_max;
    if (get_num(L, map, entry, "min", &f->min, &has_min) || get_num(L, map, entry, "max", &f->max, &has_max))
        return -1;
    if (has_min || has_max) {
        if (f->type != LMQ__SCPI_FLOAT && f->type != LMQ__SCPI_INT)
            return lfail(L, find(L, map, has_min ? "min" : "max"), entry, "min and max are for float and int values");
        if (!has_min)
            f->min = -DBL_MAX;
        if (!has_max)
            f->max = DBL_MAX;
        if (f->min > f->max)
            return lfail(L, find(L, map, "min"), entry, "min %g is above max %g", f->min, f->max);
        f->limited = true;
    }
    yaml_node_t *sp = find(L, map, "spellings");
    if (sp) {
        if (f->type != LMQ__SCPI_BOOL)
            return lfail(L, sp, entry, "spellings are for bool values");
        char **w = NULL;
        size_t nw = 0;
        int rc = get_strlist(L, map, entry, "spellings", &w, &nw);
        if (rc == 0 && nw != 2)
            rc = lfail(L, sp, entry, "spellings must be two words: [true, false] as sent, e.g. [ON, OFF]");
        if (rc == 0 && (has_control(w[0]) || has_control(w[1]) || !w[0][0] || !w[1][0]))
            rc = lfail(L, sp, entry, "spellings must be non-empty words without control characters");
        if (rc == 0) {
            f->on = w[0];
            f->off = w[1];
            w[0] = w[1] = NULL;
        }
        for (size_t i = 0; i < nw; i++)
            free(w[i]);
        free(w);
        if (rc)
            return -1;
    } else if (f->type == LMQ__SCPI_BOOL) {
        f->on = strdup("1");
        f->off = strdup("0");
        if (!f->on || !f->off)
            return lfail(L, map, entry, "out of memory");
    }
    yaml_node_t *vals = find(L, map, "values");
    if (f->type == LMQ__SCPI_ENUM) {
        if (!vals || vals->type != YAML_MAPPING_NODE || vals->data.mapping.pairs.top == vals->data.mapping.pairs.start)
            return lfail(L, vals ? vals : map, entry,
                         "an enum needs 'values': a mapping from each name to the instrument's spelling");
        size_t nc = (size_t)(vals->data.mapping.pairs.top - vals->data.mapping.pairs.start);
        f->choices = calloc(nc, sizeof *f->choices);
        if (!f->choices)
            return lfail(L, vals, entry, "out of memory");
        for (yaml_node_pair_t *p = vals->data.mapping.pairs.start; p < vals->data.mapping.pairs.top; p++) {
            yaml_node_t *k = node_at(L, p->key), *v = node_at(L, p->value);
            const char *ks = scalar(k), *vs = scalar(v);
            if (!ks || !*ks || !vs || !*vs || has_control(vs))
                return lfail(L, k, entry, "enum values map a name to a spelling (both non-empty text)");
            for (size_t i = 0; i < f->n_choices; i++)
                if (strcmp(f->choices[i].name, ks) == 0)
                    return lfail(L, k, entry, "enum value '%s' is given twice", ks);
            lmq__scpi_choice_t *c = &f->choices[f->n_choices++];
            c->name = strdup(ks);
            c->spelling = strdup(vs);
            c->shortf = malloc(strlen(vs) + 1);
            if (!c->name || !c->spelling || !c->shortf)
                return lfail(L, k, entry, "out of memory");
            size_t o = 0;
            for (const char *q = vs; *q; q++)
                if (!islower((unsigned char)*q))
                    c->shortf[o++] = *q;
            c->shortf[o] = '\0';
        }
    } else if (vals) {
        return lfail(L, vals, entry, "values are for enum types");
    }
    return 0;
}

/* Builds "%+08.3f" style formats from "+08.3f"; "q"; or fails. */
static int compile_spec(loader_t *L, yaml_node_t *at, const char *entry, const lmq__scpi_field_t *f, const char *spec,
                        size_t n, char fmt[24])
{
    if (n == 1 && spec[0] == 'q') {
        if (f->type != LMQ__SCPI_STRING)
            return lfail(L, at, entry, "{%s:q} quotes strings; '%s' is not one", f->name, f->name);
        strcpy(fmt, "q");
        return 0;
    }
    if (f->type != LMQ__SCPI_FLOAT && f->type != LMQ__SCPI_INT)
        return lfail(L, at, entry, "{%s:%.*s}: %s values take no format (bool and enum use their spellings)", f->name,
                     (int)n, spec, f->name);
    size_t i = 0;
    if (i < n && spec[i] == '+')
        i++;
    if (i < n && spec[i] == '0')
        i++;
    size_t w = 0;
    while (i < n && isdigit((unsigned char)spec[i]) && w < 3)
        i++, w++;
    if (i < n && spec[i] == '.') {
        i++;
        size_t p = 0;
        while (i < n && isdigit((unsigned char)spec[i]) && p < 3)
            i++, p++;
        if (!p)
            i = n + 1; /* "." without digits */
    }
    if (i + 1 != n || !strchr("feEgGd", spec[n - 1]) || (spec[n - 1] == 'd' && f->type != LMQ__SCPI_INT) ||
        (spec[n - 1] == 'd' && memchr(spec, '.', n)))
        return lfail(L, at, entry,
                     "{%s:%.*s}: a format is [+][0][width][.precision] and one of f e E g G (or d for int values)",
                     f->name, (int)n, spec);
    if (spec[n - 1] == 'd')
        snprintf(fmt, 24, "%%%.*slld", (int)(n - 1), spec);
    else
        snprintf(fmt, 24, "%%%.*s", (int)n, spec);
    return 0;
}

static void tmpl_free(lmq__scpi_tmpl_t *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->segs[i].lit);
    free(t->segs);
    free(t->text);
    memset(t, 0, sizeof *t);
}

static int add_lit(lmq__scpi_tmpl_t *t, const char *s, size_t n)
{
    if (!n)
        return 0;
    if (t->n && t->segs[t->n - 1].lit) { /* extend the previous literal run */
        char *old = t->segs[t->n - 1].lit;
        size_t ol = strlen(old);
        char *p = realloc(old, ol + n + 1);
        if (!p)
            return -1;
        memcpy(p + ol, s, n);
        p[ol + n] = '\0';
        t->segs[t->n - 1].lit = p;
        return 0;
    }
    lmq__scpi_seg_t *segs = realloc(t->segs, (t->n + 1) * sizeof *segs);
    if (!segs)
        return -1;
    t->segs = segs;
    memset(&segs[t->n], 0, sizeof segs[t->n]);
    segs[t->n].lit = dup_n(s, n);
    if (!segs[t->n].lit)
        return -1;
    t->n++;
    return 0;
}

/* Compiles the template at map[key] against fields[0..nf). */
static int tmpl_load(loader_t *L, yaml_node_t *map, const char *entry, const char *key, const lmq__scpi_field_t *fields,
                     size_t nf, lmq__scpi_tmpl_t *t)
{
    if (get_str(L, map, entry, key, false, &t->text))
        return -1;
    if (!t->text)
        return 0;
    yaml_node_t *at = find(L, map, key);
    const char *s = t->text;
    if (!*s)
        return lfail(L, at, entry, "%s: an empty command", key);
    if (has_control(s))
        return lfail(L, at, entry, "%s: a control character in the command (terminators are added by the driver)", key);
    bool *used = calloc(nf ? nf : 1, sizeof *used);
    if (!used)
        return lfail(L, at, entry, "out of memory");
    int rc = 0;
    for (size_t i = 0; s[i] && rc == 0;) {
        if (s[i] == '{' && s[i + 1] == '{') {
            rc = add_lit(t, "{", 1) ? lfail(L, at, entry, "out of memory") : 0;
            i += 2;
        } else if (s[i] == '}' && s[i + 1] == '}') {
            rc = add_lit(t, "}", 1) ? lfail(L, at, entry, "out of memory") : 0;
            i += 2;
        } else if (s[i] == '}') {
            rc = lfail(L, at, entry, "%s: a lone '}' at column %zu (write '}}' for a brace)", key, i + 1);
        } else if (s[i] == '{') {
            const char *close = strchr(s + i, '}');
            if (!close) {
                rc = lfail(L, at, entry, "%s: '{' at column %zu is never closed", key, i + 1);
                break;
            }
            const char *name = s + i + 1, *colon = memchr(name, ':', (size_t)(close - name));
            size_t nl = (size_t)((colon ? colon : close) - name);
            size_t k = 0;
            while (k < nf && !(strlen(fields[k].name) == nl && strncmp(fields[k].name, name, nl) == 0))
                k++;
            if (k == nf) {
                char names[256] = "";
                size_t o = 0;
                for (size_t j = 0; j < nf && o < sizeof names; j++)
                    o += (size_t)snprintf(names + o, sizeof names - o, "%s%s", j ? ", " : "", fields[j].name);
                rc = lfail(L, at, entry, "%s: {%.*s} names no %s (%s%s)", key, (int)nl, name,
                           nf ? "argument" : "value: this command takes none", nf ? "known: " : "", names);
                break;
            }
            lmq__scpi_seg_t seg = {.field = k};
            if (colon && compile_spec(L, at, entry, &fields[k], colon + 1, (size_t)(close - colon - 1), seg.fmt)) {
                rc = -1;
                break;
            }
            lmq__scpi_seg_t *segs = realloc(t->segs, (t->n + 1) * sizeof *segs);
            if (!segs) {
                rc = lfail(L, at, entry, "out of memory");
                break;
            }
            t->segs = segs;
            segs[t->n++] = seg;
            used[k] = true;
            i = (size_t)(close - s) + 1;
        } else {
            size_t j = i;
            while (s[j] && s[j] != '{' && s[j] != '}')
                j++;
            rc = add_lit(t, s + i, j - i) ? lfail(L, at, entry, "out of memory") : 0;
            i = j;
        }
    }
    for (size_t k = 0; rc == 0 && k < nf; k++)
        if (!used[k])
            rc = lfail(L, at, entry, "%s: never uses {%s}", key, fields[k].name);
    free(used);
    return rc;
}

static int parse_dtype(loader_t *L, yaml_node_t *at, const char *entry, const char *s, bool block, lmq_dtype_t *dt,
                       bool *big)
{
    char buf[16];
    *big = false;
    if (strlen(s) >= sizeof buf - 1)
        return lfail(L, at, entry, "dtype '%s' is not one of u1 i1 u2 i2 u4 i4 u8 i8 f4 f8", s);
    const char *rest = s;
    char order = 0;
    if (*s == '<' || *s == '>' || *s == '|')
        order = *s, rest = s + 1;
    snprintf(buf, sizeof buf, "<%s", rest);
    *dt = lmq_dtype_parse(buf);
    if (*dt == LMQ_DT_INVALID || strchr("<>|", rest[0]))
        return lfail(L, at, entry,
                     "dtype '%s' is not one of u1 i1 u2 i2 u4 i4 u8 i8 f4 f8 (with < or > for the "
                     "byte order)",
                     s);
    if (!block && order == '>')
        return lfail(L, at, entry, "dtype '%s': a comma list has no byte order (use '<%s' or '%s')", s, rest, rest);
    if (block && lmq_dtype_size(*dt) > 1 && order != '<' && order != '>')
        return lfail(L, at, entry,
                     "dtype '%s' needs the block's byte order: '<%s' (little-endian) or '>%s' (big-endian, the "
                     "IEEE 488.2 default)",
                     s, rest, rest);
    *big = order == '>';
    return 0;
}

static void cmd_free(lmq__scpi_cmd_t *c, bool is_prop)
{
    free(c->name);
    free(c->doc);
    for (size_t i = 0; i < c->n_args; i++)
        field_free(&c->args[i]);
    free(c->args);
    tmpl_free(&c->query);
    tmpl_free(&c->command);
    if (!is_prop)
        field_free(&c->reply.value);
}

static int entry_common(loader_t *L, yaml_node_t *map, lmq__scpi_desc_t *d, const char *entry, lmq__scpi_cmd_t *c)
{
    if (get_int(L, map, entry, "timeout_ms", 1, 3600000, &c->timeout_ms))
        return -1;
    bool ec = L->check_default, present = false;
    if (get_bool(L, map, entry, "error_check", &ec, &present))
        return -1;
    if (present && ec && !d->error_query)
        return lfail(L, find(L, map, "error_check"), entry, "error_check needs the description's error_query");
    c->error_check = ec;
    return 0;
}

static int load_property(loader_t *L, yaml_node_t *map, lmq__scpi_desc_t *d, size_t idx, lmq__scpi_cmd_t *c)
{
    static const char *const keys[] = {"name",    "type",       "unit",        "doc",     "min",
                                       "max",     "values",     "spellings",   "get",     "set",
                                       "element", "timeout_ms", "error_check", "restore", NULL};
    char entry[96];
    snprintf(entry, sizeof entry, "property %zu", idx + 1);
    if (map->type != YAML_MAPPING_NODE)
        return lfail(L, map, entry, "must be a mapping (name:, type:, get:, ...)");
    if (get_str(L, map, entry, "name", true, &c->name))
        return -1;
    snprintf(entry, sizeof entry, "property '%s'", c->name);
    c->line = (int)map->start_mark.line + 1;
    if (!name_ok(c->name))
        return lfail(L, find(L, map, "name"), entry, "a name is a letter or '_' then letters, digits, '_' (<= 63)");
    if (check_keys(L, map, entry, keys))
        return -1;
    if (get_str(L, map, entry, "doc", false, &c->doc))
        return -1;
    c->args = calloc(1, sizeof *c->args);
    if (!c->args)
        return lfail(L, map, entry, "out of memory");
    c->n_args = 1;
    lmq__scpi_field_t *f = &c->args[0];
    char *type = NULL;
    if (get_str(L, map, entry, "type", true, &type))
        return -1;
    int bad = parse_vtype(type, &f->type);
    free(type);
    if (bad)
        return lfail(L, find(L, map, "type"), entry, "type must be float, int, bool, enum or string");
    f->name = strdup("value");
    if (!f->name || field_load(L, map, entry, f))
        return f->name ? -1 : lfail(L, map, entry, "out of memory");
    if (!find(L, map, "get"))
        return lfail(L, map, entry, "a property needs get: (a write-only command is a method)");
    if (tmpl_load(L, map, entry, "get", NULL, 0, &c->query) || tmpl_load(L, map, entry, "set", f, 1, &c->command))
        return -1;
    c->reply.kind = LMQ__SCPI_R_VALUE;
    c->reply.value = *f; /* shared with args[0]: cmd_free knows */
    c->reply.element = -1;
    if (get_int(L, map, entry, "element", 0, 1000, &c->reply.element))
        return -1;
    bool restore = true, present = false;
    if (get_bool(L, map, entry, "restore", &restore, &present))
        return -1;
    if (present && !c->command.text)
        return lfail(L, find(L, map, "restore"), entry, "restore is for properties with set:");
    c->transient = !restore;
    return entry_common(L, map, d, entry, c);
}

static int load_method(loader_t *L, yaml_node_t *map, lmq__scpi_desc_t *d, size_t idx, lmq__scpi_cmd_t *c)
{
    static const char *const keys[] = {"name",      "doc",     "args",  "command",    "returns",     "unit", "values",
                                       "spellings", "element", "dtype", "timeout_ms", "error_check", NULL};
    static const char *const arg_keys[] = {"name", "type", "unit", "doc", "min", "max", "values", "spellings", NULL};
    char entry[96];
    snprintf(entry, sizeof entry, "method %zu", idx + 1);
    if (map->type != YAML_MAPPING_NODE)
        return lfail(L, map, entry, "must be a mapping (name:, command:, ...)");
    if (get_str(L, map, entry, "name", true, &c->name))
        return -1;
    snprintf(entry, sizeof entry, "method '%s'", c->name);
    c->line = (int)map->start_mark.line + 1;
    if (!name_ok(c->name))
        return lfail(L, find(L, map, "name"), entry, "a name is a letter or '_' then letters, digits, '_' (<= 63)");
    if (check_keys(L, map, entry, keys) || get_str(L, map, entry, "doc", false, &c->doc))
        return -1;
    yaml_node_t *args = find(L, map, "args");
    if (args) {
        if (args->type != YAML_SEQUENCE_NODE)
            return lfail(L, args, entry, "args must be a list of {name:, type:, ...}");
        size_t na = (size_t)(args->data.sequence.items.top - args->data.sequence.items.start);
        c->args = calloc(na ? na : 1, sizeof *c->args);
        if (!c->args)
            return lfail(L, args, entry, "out of memory");
        for (size_t i = 0; i < na; i++) {
            yaml_node_t *a = node_at(L, args->data.sequence.items.start[i]);
            char aentry[192];
            snprintf(aentry, sizeof aentry, "%s, argument %zu", entry, i + 1);
            if (a->type != YAML_MAPPING_NODE)
                return lfail(L, a, aentry, "must be a mapping (name:, type:, ...)");
            lmq__scpi_field_t *f = &c->args[c->n_args++];
            if (get_str(L, a, aentry, "name", true, &f->name))
                return -1;
            snprintf(aentry, sizeof aentry, "%s, argument '%s'", entry, f->name);
            if (!name_ok(f->name))
                return lfail(L, find(L, a, "name"), aentry, "a name is a letter or '_' then letters, digits, '_'");
            for (size_t j = 0; j + 1 < c->n_args; j++)
                if (strcmp(c->args[j].name, f->name) == 0)
                    return lfail(L, a, aentry, "given twice");
            char *type = NULL;
            if (check_keys(L, a, aentry, arg_keys) || get_str(L, a, aentry, "type", true, &type))
                return -1;
            int bad = parse_vtype(type, &f->type);
            free(type);
            if (bad)
                return lfail(L, find(L, a, "type"), aentry, "type must be float, int, bool, enum or string");
            if (field_load(L, a, aentry, f))
                return -1;
        }
    }
    if (!find(L, map, "command"))
        return lfail(L, map, entry, "a method needs command:");
    if (tmpl_load(L, map, entry, "command", c->args, c->n_args, &c->command))
        return -1;
    char *ret = NULL;
    if (get_str(L, map, entry, "returns", false, &ret))
        return -1;
    yaml_node_t *rn = find(L, map, "returns");
    lmq__scpi_reply_t *r = &c->reply;
    r->element = -1;
    int rc = 0;
    if (!ret || strcmp(ret, "none") == 0) {
        r->kind = LMQ__SCPI_R_NONE;
    } else if (strcmp(ret, "list") == 0 || strcmp(ret, "block") == 0) {
        r->kind = strcmp(ret, "list") == 0 ? LMQ__SCPI_R_LIST : LMQ__SCPI_R_BLOCK;
        char *dt = NULL;
        rc = get_str(L, map, entry, "dtype", false, &dt);
        if (rc == 0 && !dt && r->kind == LMQ__SCPI_R_BLOCK)
            rc = lfail(L, rn, entry, "returns: block needs dtype: (e.g. '<f4', '>i2')");
        if (rc == 0)
            rc = dt ? parse_dtype(L, find(L, map, "dtype"), entry, dt, r->kind == LMQ__SCPI_R_BLOCK, &r->dtype,
                                  &r->big_endian)
                    : (r->dtype = LMQ_F64, 0);
        free(dt);
    } else if (parse_vtype(ret, &r->value.type) == 0) {
        r->kind = LMQ__SCPI_R_VALUE;
        r->value.name = strdup("result");
        if (!r->value.name)
            rc = lfail(L, rn, entry, "out of memory");
        if (rc == 0)
            rc = get_int(L, map, entry, "element", 0, 1000, &r->element);
        if (rc == 0) {
            /* min/max are not keys of a method: field_load only sees unit, values, spellings. */
            rc = field_load(L, map, entry, &r->value);
        }
    } else {
        rc = lfail(L, rn, entry, "returns must be none, float, int, bool, enum, string, list or block");
    }
    free(ret);
    if (rc)
        return -1;
    if (r->kind != LMQ__SCPI_R_VALUE) {
        static const char *const value_only[] = {"element", "values", "spellings", NULL};
        for (size_t i = 0; value_only[i]; i++)
            if (find(L, map, value_only[i]))
                return lfail(L, find(L, map, value_only[i]), entry, "'%s' is for methods returning one value",
                             value_only[i]);
    }
    if (r->kind != LMQ__SCPI_R_LIST && r->kind != LMQ__SCPI_R_BLOCK && find(L, map, "dtype"))
        return lfail(L, find(L, map, "dtype"), entry, "dtype is for methods returning list or block");
    if (r->kind == LMQ__SCPI_R_NONE && find(L, map, "unit"))
        return lfail(L, find(L, map, "unit"), entry, "unit is the unit of the result; this method returns none");
    if (r->kind != LMQ__SCPI_R_VALUE && get_str(L, map, entry, "unit", false, &r->value.unit))
        return -1;
    if (entry_common(L, map, d, entry, c))
        return -1;
    if (r->kind != LMQ__SCPI_R_NONE && find(L, map, "error_check") && c->error_check)
        return lfail(L, find(L, map, "error_check"), entry,
                     "error_check is for commands that return nothing (a query's reply is its own check)");
    if (r->kind != LMQ__SCPI_R_NONE)
        c->error_check = false;
    return 0;
}

void lmq__scpi_desc_free(lmq__scpi_desc_t **pd)
{
    if (!pd || !*pd)
        return;
    lmq__scpi_desc_t *d = *pd;
    free(d->path);
    free(d->instrument);
    free(d->write_term);
    free(d->read_term);
    free(d->idn);
    for (size_t i = 0; i < d->n_init; i++)
        free(d->init[i]);
    free(d->init);
    for (size_t i = 0; i < d->n_safe_state; i++)
        free(d->safe_state[i]);
    free(d->safe_state);
    free(d->clear_command);
    free(d->error_query);
    for (size_t i = 0; i < d->n_no_error; i++)
        free(d->no_error[i]);
    free(d->no_error);
    for (size_t i = 0; i < d->n_props; i++)
        cmd_free(&d->props[i], true);
    free(d->props);
    for (size_t i = 0; i < d->n_methods; i++)
        cmd_free(&d->methods[i], false);
    free(d->methods);
    free(d);
    *pd = NULL;
}

static int load_terms(loader_t *L, yaml_node_t *root, lmq__scpi_desc_t *d)
{
    static const char *const keys[] = {"write", "read", NULL};
    yaml_node_t *t = find(L, root, "terminators");
    if (t) {
        if (t->type != YAML_MAPPING_NODE)
            return lfail(L, t, "terminators", "must be a mapping {write: \"\\n\", read: \"\\n\"}");
        if (check_keys(L, t, "terminators", keys) || get_str(L, t, "terminators", "write", false, &d->write_term) ||
            get_str(L, t, "terminators", "read", false, &d->read_term))
            return -1;
    }
    if (!d->write_term && !(d->write_term = strdup("\n")))
        return lfail(L, root, NULL, "out of memory");
    if (!d->read_term && !(d->read_term = strdup("\n")))
        return lfail(L, root, NULL, "out of memory");
    if (!d->read_term[0] || !d->write_term[0] || strlen(d->read_term) > 2 || strlen(d->write_term) > 2)
        return lfail(L, t, "terminators", "a terminator is one or two characters (\"\\n\", \"\\r\\n\")");
    return 0;
}

static int load_root(loader_t *L, lmq__scpi_desc_t *d)
{
    static const char *const keys[] = {"instrument",  "terminators", "idn",         "init",       "clear_command",
                                       "error_query", "no_error",    "error_check", "timeout_ms", "clear_quiet_ms",
                                       "properties",  "methods",     "safe_state",  NULL};
    yaml_node_t *root = yaml_document_get_root_node(&L->doc);
    if (!root)
        return lfail(L, NULL, NULL, "empty description");
    if (root->type != YAML_MAPPING_NODE)
        return lfail(L, root, NULL, "a description is a mapping (instrument:, properties:, methods:, ...)");
    if (check_keys(L, root, NULL, keys))
        return -1;
    if (get_str(L, root, NULL, "instrument", false, &d->instrument) || load_terms(L, root, d) ||
        get_str(L, root, NULL, "idn", false, &d->idn) || get_strlist(L, root, "init", "init", &d->init, &d->n_init) ||
        get_strlist(L, root, "safe_state", "safe_state", &d->safe_state, &d->n_safe_state) ||
        get_str(L, root, NULL, "clear_command", false, &d->clear_command) ||
        get_str(L, root, NULL, "error_query", false, &d->error_query) ||
        get_strlist(L, root, "no_error", "no_error", &d->no_error, &d->n_no_error) ||
        get_int(L, root, NULL, "timeout_ms", 1, 3600000, &d->timeout_ms))
        return -1;
    d->clear_quiet_ms = 100;
    if (get_int(L, root, NULL, "clear_quiet_ms", 1, 10000, &d->clear_quiet_ms))
        return -1;
    if (d->idn && !*d->idn)
        return lfail(L, find(L, root, "idn"), "idn", "an empty idn matches anything: leave it out instead");
    for (size_t i = 0; i < d->n_init; i++)
        if (!*d->init[i] || has_control(d->init[i]))
            return lfail(L, find(L, root, "init"), "init", "command %zu is empty or holds a control character", i + 1);
    for (size_t i = 0; i < d->n_safe_state; i++)
        if (!*d->safe_state[i] || has_control(d->safe_state[i]))
            return lfail(L, find(L, root, "safe_state"), "safe_state",
                         "command %zu is empty or holds a control character", i + 1);
    const char *single[] = {d->clear_command, d->error_query};
    const char *single_names[] = {"clear_command", "error_query"};
    for (size_t i = 0; i < 2; i++)
        if (single[i] && (!*single[i] || has_control(single[i])))
            return lfail(L, find(L, root, single_names[i]), single_names[i],
                         "an empty command or one holding a control character");
    if (d->n_no_error && !d->error_query)
        return lfail(L, find(L, root, "no_error"), "no_error", "means nothing without error_query");
    if (d->error_query && !d->n_no_error) {
        d->no_error = calloc(2, sizeof *d->no_error);
        if (!d->no_error || !(d->no_error[0] = strdup("0")) || !(d->no_error[1] = strdup("+0")))
            return lfail(L, root, NULL, "out of memory");
        d->n_no_error = 2;
    }
    bool ec = d->error_query != NULL, present = false;
    if (get_bool(L, root, NULL, "error_check", &ec, &present))
        return -1;
    if (present && ec && !d->error_query)
        return lfail(L, find(L, root, "error_check"), "error_check", "needs error_query");
    L->check_default = ec;

    int rc = 0;
    yaml_node_t *props = find(L, root, "properties"), *meths = find(L, root, "methods");
    if (props && props->type != YAML_SEQUENCE_NODE)
        rc = lfail(L, props, "properties", "must be a list");
    if (rc == 0 && meths && meths->type != YAML_SEQUENCE_NODE)
        rc = lfail(L, meths, "methods", "must be a list");
    size_t np = props ? (size_t)(props->data.sequence.items.top - props->data.sequence.items.start) : 0;
    size_t nm = meths ? (size_t)(meths->data.sequence.items.top - meths->data.sequence.items.start) : 0;
    if (rc == 0 && np + nm == 0)
        rc = lfail(L, root, NULL, "declares no properties and no methods");
    if (rc == 0) {
        d->props = calloc(np ? np : 1, sizeof *d->props);
        d->methods = calloc(nm ? nm : 1, sizeof *d->methods);
        if (!d->props || !d->methods)
            rc = lfail(L, root, NULL, "out of memory");
    }
    for (size_t i = 0; rc == 0 && i < np; i++) {
        yaml_node_t *n = node_at(L, props->data.sequence.items.start[i]);
        d->n_props++;
        rc = load_property(L, n, d, i, &d->props[i]);
        for (size_t j = 0; rc == 0 && j < i; j++)
            if (strcmp(d->props[j].name, d->props[i].name) == 0)
                rc = lfail(L, n, NULL, "property '%s' is declared twice (first on line %d)", d->props[i].name,
                           d->props[j].line);
    }
    for (size_t i = 0; rc == 0 && i < nm; i++) {
        yaml_node_t *n = node_at(L, meths->data.sequence.items.start[i]);
        d->n_methods++;
        rc = load_method(L, n, d, i, &d->methods[i]);
        for (size_t j = 0; rc == 0 && j < i; j++)
            if (strcmp(d->methods[j].name, d->methods[i].name) == 0)
                rc = lfail(L, n, NULL, "method '%s' is declared twice (first on line %d)", d->methods[i].name,
                           d->methods[j].line);
    }
    return rc;
}

lmq__scpi_desc_t *lmq__scpi_desc_parse(const char *text, size_t len, const char *origin, char *err, size_t errlen)
{
    loader_t L = {.origin = origin ? origin : "description", .err = err, .errlen = errlen};
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        fail(err, errlen, LMQ_EMEM, "%s: out of memory", L.origin);
        return NULL;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    if (!yaml_parser_load(&p, &L.doc)) {
        fail(err, errlen, LMQ_ECONFIG, "%s:%lu: %s%s%s", L.origin, (unsigned long)p.problem_mark.line + 1,
             p.problem ? p.problem : "not YAML", p.context ? " " : "", p.context ? p.context : "");
        yaml_parser_delete(&p);
        return NULL;
    }
    yaml_parser_delete(&p);
    lmq__scpi_desc_t *d = calloc(1, sizeof *d);
    if (!d || !(d->path = strdup(L.origin))) {
        free(d);
        yaml_document_delete(&L.doc);
        fail(err, errlen, LMQ_EMEM, "%s: out of memory", L.origin);
        return NULL;
    }
    int rc = load_root(&L, d);
    yaml_document_delete(&L.doc);
    if (rc) {
        lmq__scpi_desc_free(&d);
        return NULL;
    }
    return d;
}

lmq__scpi_desc_t *lmq__scpi_desc_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rbe");
    if (!f) {
        fail(err, errlen, LMQ_ECONFIG, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            if (cap > 4u * 1024 * 1024) {
                free(buf);
                fclose(f);
                fail(err, errlen, LMQ_ECONFIG, "%s: larger than 4 MiB: not an instrument description", path);
                return NULL;
            }
            char *nb = realloc(buf, cap = cap * 2 + 8192);
            if (!nb) {
                free(buf);
                fclose(f);
                fail(err, errlen, LMQ_EMEM, "%s: out of memory", path);
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        fail(err, errlen, LMQ_ECONFIG, "%s: read error", path);
        return NULL;
    }
    lmq__scpi_desc_t *d = lmq__scpi_desc_parse(buf, len, path, err, errlen);
    free(buf);
    return d;
}
