/* labmq CLI — formatting values and arrays for people and for scripts. */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"

/* Elements shown when an array is summarised on one line. */
#define SUMMARY_ELEMS 5

void cli_fmt_shape(char *buf, size_t size, unsigned ndim, const size_t *shape)
{
    size_t n = 0;
    n += (size_t)snprintf(buf, size, "[");
    for (unsigned d = 0; d < ndim && n < size; d++)
        n += (size_t)snprintf(buf + n, size - n, "%s%zu", d ? ", " : "", shape[d]);
    if (n < size)
        snprintf(buf + n, size - n, "]");
}

/* Arrays are little-endian on the wire whatever the host is; assembling the
 * bytes also sidesteps alignment of payloads we did not allocate. */
static uint64_t load_le(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t k = 0; k < n; k++)
        v |= (uint64_t)p[k] << (8 * k);
    return v;
}

static uint64_t elem_bits(const void *data, lmq_dtype_t dt, size_t i)
{
    size_t sz = lmq_dtype_size(dt);
    return load_le((const unsigned char *)data + i * sz, sz);
}

static float bits_f32(uint64_t u)
{
    uint32_t w = (uint32_t)u;
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}

static double bits_f64(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

double cli_elem_double(const void *data, lmq_dtype_t dt, size_t i)
{
    uint64_t u = elem_bits(data, dt, i);
    switch (dt) {
    case LMQ_U8: return (double)(uint8_t)u;
    case LMQ_I8: return (double)(int8_t)(uint8_t)u;
    case LMQ_U16: return (double)(uint16_t)u;
    case LMQ_I16: return (double)(int16_t)(uint16_t)u;
    case LMQ_U32: return (double)(uint32_t)u;
    case LMQ_I32: return (double)(int32_t)(uint32_t)u;
    case LMQ_U64: return (double)u;
    case LMQ_I64: return (double)(int64_t)u;
    case LMQ_F32: return (double)bits_f32(u);
    case LMQ_F64: return bits_f64(u);
    default: return NAN;
    }
}

void cli_fmt_double(char *buf, size_t size, double d)
{
    if (isnan(d)) {
        snprintf(buf, size, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(buf, size, d < 0 ? "-inf" : "inf");
        return;
    }
    /* Start with enough digits for the integer part, so a limit of 60 reads
     * "60" and not "6e+01"; only large numbers take an exponent. */
    double mag = fabs(d);
    int prec = mag >= 1 && mag < 1e6 ? (int)floor(log10(mag)) + 1 : 1;
    for (; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            return;
    }
}

static void fmt_float32(char *buf, size_t size, float f)
{
    if (!isfinite(f)) {
        cli_fmt_double(buf, size, (double)f);
        return;
    }
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, size, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f)
            return;
    }
}

void cli_fmt_elem(char *buf, size_t size, const void *data, lmq_dtype_t dt, size_t i, int prec)
{
    uint64_t u = elem_bits(data, dt, i);
    switch (dt) {
    case LMQ_U8:
    case LMQ_U16:
    case LMQ_U32:
    case LMQ_U64: snprintf(buf, size, "%" PRIu64, u); return;
    case LMQ_I8: snprintf(buf, size, "%" PRId8, (int8_t)(uint8_t)u); return;
    case LMQ_I16: snprintf(buf, size, "%" PRId16, (int16_t)(uint16_t)u); return;
    case LMQ_I32: snprintf(buf, size, "%" PRId32, (int32_t)(uint32_t)u); return;
    /* i64 straight from the bits: through double it would round above 2^53. */
    case LMQ_I64: snprintf(buf, size, "%" PRId64, (int64_t)u); return;
    case LMQ_F32:
        if (prec > 0)
            snprintf(buf, size, "%.*g", prec, (double)bits_f32(u));
        else
            fmt_float32(buf, size, bits_f32(u));
        return;
    case LMQ_F64:
        if (prec > 0)
            snprintf(buf, size, "%.*g", prec, bits_f64(u));
        else
            cli_fmt_double(buf, size, bits_f64(u));
        return;
    default: snprintf(buf, size, "?"); return;
    }
}

void cli_array_stats(const void *data, lmq_dtype_t dt, size_t n, double *min, double *max, double *mean)
{
    double lo = NAN, hi = NAN, sum = 0;
    for (size_t i = 0; i < n; i++) {
        double x = cli_elem_double(data, dt, i);
        lo = fmin(lo, x);
        hi = fmax(hi, x);
        sum += x;
    }
    *min = lo;
    *max = hi;
    *mean = n ? sum / (double)n : NAN;
}

void cli_fmt_minmaxmean(char *buf, size_t size, double min, double max, double mean)
{
    double scale = 0;
    const double xs[3] = {min, max, mean};
    for (int k = 0; k < 3; k++)
        if (isfinite(xs[k]) && fabs(xs[k]) > scale)
            scale = fabs(xs[k]);
    if (scale != 0 && (scale < 1e-3 || scale >= 1e6)) {
        snprintf(buf, size, "min %.3e max %.3e mean %.3e", min, max, mean);
        return;
    }
    /* About four significant digits on the largest magnitude, the same
     * decimals for all three so the columns of a live line stay put. */
    int dec = scale == 0 ? 3 : 3 - (int)floor(log10(scale));
    if (dec < 0)
        dec = 0;
    if (dec > 6)
        dec = 6;
    /* A mean of -0.00001 shown as "-0.000" reads like a sign that matters. */
    double half_ulp = 0.5 * pow(10, -dec);
    double v[3] = {min, max, mean};
    for (int k = 0; k < 3; k++)
        if (fabs(v[k]) < half_ulp)
            v[k] = 0.0;
    snprintf(buf, size, "min %.*f max %.*f mean %.*f", dec, v[0], dec, v[1], dec, v[2]);
}

static size_t array_count(const lmq_array_t *a)
{
    size_t n = a->ndim ? 1 : 0;
    for (unsigned d = 0; d < a->ndim; d++)
        n *= a->shape[d];
    /* Trust the byte count over the shape if they ever disagree. */
    size_t sz = lmq_dtype_size(a->dtype);
    if (sz == 0)
        return 0;
    if (n * sz > a->nbytes)
        n = a->nbytes / sz;
    return n;
}

static void print_array(FILE *out, const lmq_array_t *a, const char *unit)
{
    char shape[128], el[64], mmm[160];
    size_t n = array_count(a);
    cli_fmt_shape(shape, sizeof shape, a->ndim, a->shape);
    fprintf(out, "%s %s%s%s  [", lmq_dtype_name(a->dtype), shape, unit && *unit ? " " : "", unit ? unit : "");
    for (size_t i = 0; i < n && i < SUMMARY_ELEMS; i++) {
        cli_fmt_elem(el, sizeof el, a->data, a->dtype, i, 6);
        fprintf(out, "%s%s", i ? ", " : "", el);
    }
    fprintf(out, "%s]", n > SUMMARY_ELEMS ? ", ..." : "");
    if (n > 0) {
        double lo, hi, mean;
        cli_array_stats(a->data, a->dtype, n, &lo, &hi, &mean);
        cli_fmt_minmaxmean(mmm, sizeof mmm, lo, hi, mean);
        fprintf(out, "  %s", mmm);
    }
    fputc('\n', out);
}

void cli_print_value(FILE *out, const lmq_value_t *v, const char *unit)
{
    if (v->type == LMQ_NONE)
        return; /* a method without result: success says enough */
    if (v->type == LMQ_ARRAY) {
        print_array(out, &v->u.a, unit);
        return;
    }
    char small[256];
    char *buf = small;
    int n = lmq_value_format(v, small, sizeof small);
    if (n >= (int)sizeof small) {
        /* Long strings (an instrument's *IDN? or error queue) print whole. */
        char *big = malloc((size_t)n + 1);
        if (big) {
            lmq_value_format(v, big, (size_t)n + 1);
            buf = big;
        }
    }
    bool numeric = v->type == LMQ_INT || v->type == LMQ_FLOAT;
    fprintf(out, "%s%s%s\n", buf, numeric && unit && *unit ? " " : "", numeric && unit ? unit : "");
    if (buf != small)
        free(buf);
}

static void print_json_double(FILE *out, double d)
{
    char buf[40];
    if (!isfinite(d)) {
        fputs("null", out); /* JSON has no NaN or infinity */
        return;
    }
    cli_fmt_double(buf, sizeof buf, d);
    /* Keep floats recognisable as floats to typed readers (json.loads -> float). */
    fprintf(out, "%s%s", buf, strpbrk(buf, ".eE") ? "" : ".0");
}

void cli_print_value_json(FILE *out, const lmq_value_t *v)
{
    switch (v->type) {
    case LMQ_NONE: fputs("null", out); break;
    case LMQ_BOOL: fputs(v->u.b ? "true" : "false", out); break;
    case LMQ_INT: fprintf(out, "%" PRId64, v->u.i); break;
    case LMQ_FLOAT: print_json_double(out, v->u.f); break;
    case LMQ_STRING: {
        json_t *s = json_string(v->u.s ? v->u.s : "");
        char *txt = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
        fputs(txt ? txt : "null", out);
        free(txt);
        json_decref(s);
        break;
    }
    case LMQ_ARRAY: {
        const lmq_array_t *a = &v->u.a;
        char shape[128], el[64];
        bool is_float = a->dtype == LMQ_F32 || a->dtype == LMQ_F64;
        cli_fmt_shape(shape, sizeof shape, a->ndim, a->shape);
        fprintf(out, "{\"dtype\": \"%s\", \"shape\": %s, \"data\": [", lmq_dtype_name(a->dtype), shape);
        size_t n = array_count(a);
        for (size_t i = 0; i < n; i++) {
            if (i)
                fputs(", ", out);
            if (is_float && !isfinite(cli_elem_double(a->data, a->dtype, i))) {
                fputs("null", out);
                continue;
            }
            cli_fmt_elem(el, sizeof el, a->data, a->dtype, i, 0);
            fputs(el, out);
        }
        fputs("]}", out);
        break;
    }
    }
    fputc('\n', out);
}

size_t cli_text_width(const char *s)
{
    size_t w = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p & 0xC0) != 0x80)
            w++;
    return w;
}
