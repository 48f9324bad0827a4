/* Typed values: construction, copies, formatting for people and parsing of
 * command-line and config text. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "labmq/status.h"
#include "labmq/value.h"
#include "value_internal.h"

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [LMQ_DT_INVALID] = {"", 0}, [LMQ_U8] = {"|u1", 1},  [LMQ_I8] = {"|i1", 1},  [LMQ_U16] = {"<u2", 2},
    [LMQ_I16] = {"<i2", 2},     [LMQ_U32] = {"<u4", 4}, [LMQ_I32] = {"<i4", 4}, [LMQ_U64] = {"<u8", 8},
    [LMQ_I64] = {"<i8", 8},     [LMQ_F32] = {"<f4", 4}, [LMQ_F64] = {"<f8", 8},
};
#define NDTYPES (sizeof dtypes / sizeof dtypes[0])

static const char *const type_names[] = {"none", "bool", "int", "float", "string", "array"};

size_t lmq_dtype_size(lmq_dtype_t dt) { return (unsigned)dt < NDTYPES ? dtypes[dt].size : 0; }

const char *lmq_dtype_name(lmq_dtype_t dt) { return (unsigned)dt < NDTYPES ? dtypes[dt].name : ""; }

lmq_dtype_t lmq_dtype_parse(const char *name)
{
    if (!name)
        return LMQ_DT_INVALID;
    for (size_t i = 1; i < NDTYPES; i++) {
        /* numpy writes single bytes as "|u1"; accept "<u1" and "u1" too. */
        const char *n = dtypes[i].name;
        if (strcmp(name, n) == 0 || strcmp(name, n + 1) == 0 || (name[0] == '<' && strcmp(name + 1, n + 1) == 0))
            return (lmq_dtype_t)i;
    }
    return LMQ_DT_INVALID;
}

const char *lmq_type_name(lmq_type_t t)
{
    return (unsigned)t < sizeof type_names / sizeof type_names[0] ? type_names[t] : "?";
}

lmq_type_t lmq_type_parse(const char *name)
{
    for (size_t i = 1; name && i < sizeof type_names / sizeof type_names[0]; i++)
        if (strcmp(name, type_names[i]) == 0)
            return (lmq_type_t)i;
    if (name && strcmp(name, "double") == 0)
        return LMQ_FLOAT;
    return LMQ_NONE;
}

void lmq_value_clear(lmq_value_t *v)
{
    if (!v)
        return;
    if (v->type == LMQ_STRING)
        free(v->u.s);
    else if (v->type == LMQ_ARRAY)
        free(v->u.a.data);
    memset(v, 0, sizeof *v);
}

bool lmq__utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        unsigned c = *p++;
        int more;
        uint32_t cp, min;
        if (c < 0x80)
            continue;
        else if ((c & 0xe0) == 0xc0)
            more = 1, cp = c & 0x1f, min = 0x80;
        else if ((c & 0xf0) == 0xe0)
            more = 2, cp = c & 0x0f, min = 0x800;
        else if ((c & 0xf8) == 0xf0)
            more = 3, cp = c & 0x07, min = 0x10000;
        else
            return false;
        if (end - p < more)
            return false;
        while (more--) {
            if ((*p & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (*p++ & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
    }
    return true;
}

int lmq_value_set_string(lmq_value_t *v, const char *s)
{
    if (!v || !s)
        return LMQ_EARG;
    size_t len = strlen(s);
    if (!lmq__utf8_valid(s, len))
        return LMQ_EARG;
    char *copy = malloc(len + 1);
    if (!copy)
        return LMQ_EMEM;
    memcpy(copy, s, len + 1);
    lmq_value_clear(v);
    v->type = LMQ_STRING;
    v->u.s = copy;
    return 0;
}

int lmq__array_nbytes(lmq_dtype_t dtype, unsigned ndim, const size_t *shape, size_t *nbytes)
{
    size_t n = lmq_dtype_size(dtype);
    if (n == 0 || ndim > LMQ_MAX_DIMS || (ndim > 0 && !shape))
        return LMQ_EARG;
    for (unsigned i = 0; i < ndim; i++) {
        if (shape[i] != 0 && n > SIZE_MAX / shape[i])
            return LMQ_EARG;
        n *= shape[i];
    }
    *nbytes = n;
    return 0;
}

int lmq_value_set_array(lmq_value_t *v, lmq_dtype_t dtype, unsigned ndim, const size_t *shape, const void *data)
{
    size_t nbytes;
    if (!v || lmq__array_nbytes(dtype, ndim, shape, &nbytes) != 0)
        return LMQ_EARG;
    void *buf = malloc(nbytes ? nbytes : 1);
    if (!buf)
        return LMQ_EMEM;
    if (data)
        memcpy(buf, data, nbytes);
    else
        memset(buf, 0, nbytes);
    lmq_value_clear(v);
    v->type = LMQ_ARRAY;
    v->u.a.dtype = dtype;
    v->u.a.ndim = ndim;
    for (unsigned i = 0; i < ndim; i++)
        v->u.a.shape[i] = shape[i];
    v->u.a.data = buf;
    v->u.a.nbytes = nbytes;
    return 0;
}

int lmq_value_copy(lmq_value_t *dst, const lmq_value_t *src)
{
    if (!dst || !src)
        return LMQ_EARG;
    if (src->type == LMQ_STRING)
        return lmq_value_set_string(dst, src->u.s);
    if (src->type == LMQ_ARRAY)
        return lmq_value_set_array(dst, src->u.a.dtype, src->u.a.ndim, src->u.a.shape, src->u.a.data);
    lmq_value_clear(dst);
    *dst = *src;
    return 0;
}

int lmq_value_to_double(const lmq_value_t *v, double *out)
{
    if (!v || !out)
        return LMQ_EARG;
    if (v->type == LMQ_FLOAT)
        *out = v->u.f;
    else if (v->type == LMQ_INT)
        *out = (double)v->u.i;
    else
        return LMQ_EARG;
    return 0;
}

int lmq_value_format(const lmq_value_t *v, char *buf, size_t size)
{
    if (!v)
        return snprintf(buf, size, "(null)");
    switch (v->type) {
    case LMQ_NONE:
        return snprintf(buf, size, "none");
    case LMQ_BOOL:
        return snprintf(buf, size, "%s", v->u.b ? "true" : "false");
    case LMQ_INT:
        return snprintf(buf, size, "%" PRId64, v->u.i);
    case LMQ_FLOAT:
        return snprintf(buf, size, "%.10g", v->u.f);
    case LMQ_STRING:
        return snprintf(buf, size, "\"%s\"", v->u.s);
    case LMQ_ARRAY: {
        int n = snprintf(buf, size, "%s[", lmq_dtype_name(v->u.a.dtype));
        for (unsigned i = 0; i < v->u.a.ndim; i++)
            n += snprintf(size > (size_t)n ? buf + n : NULL, size > (size_t)n ? size - n : 0, "%s%zu",
                          i ? "," : "", v->u.a.shape[i]);
        n += snprintf(size > (size_t)n ? buf + n : NULL, size > (size_t)n ? size - n : 0, "]");
        return n;
    }
    }
    return snprintf(buf, size, "?");
}

/* Decimal, as a lab user means "010" (strtoll's base 0 reads it as octal 8);
 * hexadecimal only when asked for with 0x. */
static int parse_int(const char *text, int64_t *out)
{
    const char *digits = text + (*text == '-' || *text == '+');
    int base = (digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) ? 16 : 10;
    char *end;
    errno = 0;
    long long i = strtoll(text, &end, base);
    if (!*text || *end || errno || end == text || (base == 16 && end == digits + 2))
        return LMQ_EARG;
    *out = i;
    return 0;
}

int lmq_value_parse(lmq_value_t *v, const char *text, lmq_type_t type)
{
    if (!v || !text)
        return LMQ_EARG;
    char *end;
    if (type == LMQ_NONE) {
        /* Guess the narrowest type the text fits. */
        if (!strcasecmp(text, "true") || !strcasecmp(text, "false") || !strcasecmp(text, "on") ||
            !strcasecmp(text, "off"))
            type = LMQ_BOOL;
        else {
            int64_t i;
            if (parse_int(text, &i) == 0)
                type = LMQ_INT;
            else {
                (void)strtod(text, &end);
                type = (*text && !*end) ? LMQ_FLOAT : LMQ_STRING;
            }
        }
    }
    switch (type) {
    case LMQ_BOOL:
        if (!strcasecmp(text, "true") || !strcasecmp(text, "on") || !strcmp(text, "1") || !strcasecmp(text, "yes"))
            *v = lmq_bool(true);
        else if (!strcasecmp(text, "false") || !strcasecmp(text, "off") || !strcmp(text, "0") ||
                 !strcasecmp(text, "no"))
            *v = lmq_bool(false);
        else
            return LMQ_EARG;
        return 0;
    case LMQ_INT: {
        int64_t i;
        if (parse_int(text, &i) != 0)
            return LMQ_EARG;
        *v = lmq_int(i);
        return 0;
    }
    case LMQ_FLOAT: {
        errno = 0;
        double f = strtod(text, &end);
        if (!*text || *end || errno || !isfinite(f))
            return LMQ_EARG;
        *v = lmq_float(f);
        return 0;
    }
    case LMQ_STRING:
        memset(v, 0, sizeof *v);
        return lmq_value_set_string(v, text);
    default:
        return LMQ_EARG;
    }
}
