/* The device model: a device's configuration and tables, the services the
 * daemon gives drivers (lmq_dev_*), and the device thread, the only code that
 * touches a driver's handle: it opens the instrument (never waited for by
 * start-up), serves the jobs the broker hands it in order, polls streams,
 * and on a lost link closes the driver and reopens it with back-off,
 * restoring what clients had set. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "device_internal.h"
#include "labmq/status.h"
#include "locks.h"
#include "transport_internal.h"
#include "local.h"
#include "value_internal.h"

#define REOPEN_INTERVAL_NS (2LL * 1000000000)

/* ---- wires ---- */

typedef struct wire {
    char *name;
    double value;
} wire_t;

struct lmq__wires {
    pthread_mutex_t mu;
    wire_t *v;
    size_t n, cap;
};

lmq__wires_t *lmq__wires_new(void)
{
    lmq__wires_t *w = calloc(1, sizeof *w);
    if (w)
        pthread_mutex_init(&w->mu, NULL);
    return w;
}

void lmq__wires_destroy(lmq__wires_t **pw)
{
    if (!pw || !*pw)
        return;
    lmq__wires_t *w = *pw;
    for (size_t i = 0; i < w->n; i++)
        free(w->v[i].name);
    free(w->v);
    pthread_mutex_destroy(&w->mu);
    free(w);
    *pw = NULL;
}

int lmq_dev_wire_set(lmq_dev_t *dev, const char *name, double value)
{
    if (!dev || !name || !dev->wires)
        return LMQ_EARG;
    lmq__wires_t *w = dev->wires;
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    size_t i = 0;
    while (i < w->n && strcmp(w->v[i].name, name) != 0)
        i++;
    if (i == w->n) {
        if (w->n == w->cap) {
            size_t cap = w->cap ? 2 * w->cap : 16;
            wire_t *nv = realloc(w->v, cap * sizeof *nv);
            if (!nv) {
                rc = LMQ_EMEM;
                goto out;
            }
            w->v = nv;
            w->cap = cap;
        }
        if (!(w->v[i].name = strdup(name))) {
            rc = LMQ_EMEM;
            goto out;
        }
        w->n++;
    }
    w->v[i].value = value;
out:
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int lmq_dev_wire_get(lmq_dev_t *dev, const char *name, double *value)
{
    if (!dev || !name || !value || !dev->wires)
        return LMQ_EARG;
    lmq__wires_t *w = dev->wires;
    int rc = LMQ_ENOTFOUND;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->v[i].name, name) == 0) {
            *value = w->v[i].value;
            rc = 0;
            break;
        }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

/* ---- construction ---- */

static size_t count_named(const void *table, size_t stride)
{
    size_t n = 0;
    if (table)
        while (*(const char *const *)((const char *)table + n * stride))
            n++;
    return n;
}

bool lmq__device_name_ok(const char *s)
{
    if (!s || !*s || strlen(s) > 64)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' ||
              *s == '-' || *s == '.'))
            return false;
    return true;
}

static const lmq_option_t *find_option(const lmq_driver_t *drv, const char *name)
{
    for (const lmq_option_t *o = drv->options; o && o->name; o++)
        if (strcmp(o->name, name) == 0)
            return o;
    return NULL;
}

int lmq__options_parse(const lmq_driver_t *drv, const char *const *options, lmq__option_value_t *out,
                       lmq__option_fault_t *f)
{
    *f = (lmq__option_fault_t){0};
    for (const char *const *o = options; o && o[0]; o += 2) {
        f->name = o[0];
        if (!(f->opt = find_option(drv, o[0])))
            return LMQ__OPT_UNKNOWN;
        if (!o[1])
            return LMQ__OPT_NO_VALUE;
    }
    size_t k = 0;
    for (const lmq_option_t *opt = drv->options; opt && opt->name; opt++, k++) {
        const char *text = opt->def;
        for (const char *const *o = options; o && o[0]; o += 2)
            if (strcmp(o[0], opt->name) == 0)
                text = o[1];
        *f = (lmq__option_fault_t){.name = opt->name, .opt = opt, .text = text};
        if (!text)
            return LMQ__OPT_MISSING;
        lmq_value_t v = {0};
        int rc = lmq_value_parse(out ? &out[k].val : &v, text, opt->type);
        lmq_value_clear(&v);
        if (out)
            out[k].opt = opt;
        if (rc != 0)
            return LMQ__OPT_BAD_VALUE;
    }
    return 0;
}

static void fill_limits(lmq_dev_t *dev)
{
    for (size_t i = 0; i < dev->nprops; i++) {
        dev->limits[i][0] = dev->props[i].min;
        dev->limits[i][1] = dev->props[i].max;
    }
}

/* The option fault as a sentence for people. */
static void describe_option_fault(const lmq_dev_t *dev, int fault, const lmq__option_fault_t *f, char *err,
                                  size_t errlen)
{
    const lmq_driver_t *drv = dev->drv;
    switch (fault) {
    case LMQ__OPT_UNKNOWN: {
        int n =
            snprintf(err, errlen, "device '%s': driver %s has no option '%s' (options:", dev->name, drv->name, f->name);
        for (size_t j = 0; j < dev->nopts && n > 0 && (size_t)n < errlen; j++)
            n += snprintf(err + n, errlen - n, "%s %s", j ? "," : "", drv->options[j].name);
        if (n > 0 && (size_t)n < errlen)
            snprintf(err + n, errlen - n, "%s)", dev->nopts ? "" : " none");
        break;
    }
    case LMQ__OPT_NO_VALUE:
        snprintf(err, errlen, "device '%s': option '%s' has no value", dev->name, f->name);
        break;
    case LMQ__OPT_MISSING:
        snprintf(err, errlen, "device '%s': driver %s needs option '%s' (%s)", dev->name, drv->name, f->name,
                 f->opt->doc ? f->opt->doc : lmq_type_name(f->opt->type));
        break;
    default:
        snprintf(err, errlen, "device '%s': option '%s' = '%s' is not a valid %s", dev->name, f->name, f->text,
                 lmq_type_name(f->opt->type));
        break;
    }
}

lmq_dev_t *lmq__dev_new(const char *name, const lmq_driver_t *drv, const char *connection, const char *const *options,
                        char *err, size_t errlen)
{
    lmq_dev_t *dev = calloc(1, sizeof *dev);
    if (!dev) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&dev->mu, NULL);
    pthread_mutex_init(&dev->ev_mu, NULL);
    dev->drv = drv;
    dev->time_scale = 1.0;
    dev->sim_t0 = lmq_clock_mono_ns();
    dev->name = strdup(name);
    dev->connection = strdup(connection ? connection : "");
    dev->nopts = count_named(drv->options, sizeof(lmq_option_t));
    dev->opts = calloc(dev->nopts + 1, sizeof *dev->opts);
    size_t evlen = strlen(name) + sizeof LMQ__EVENTS_PREFIX;
    if ((dev->ev_topic = malloc(evlen)))
        snprintf(dev->ev_topic, evlen, LMQ__EVENTS_PREFIX "%s", name);
    if (!dev->name || !dev->connection || !dev->opts || !dev->ev_topic) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* Options first: configure() reads them. */
    lmq__option_fault_t f;
    int fault = lmq__options_parse(drv, options, dev->opts, &f);
    if (fault) {
        describe_option_fault(dev, fault, &f, err, errlen);
        goto fail;
    }
    dev->methods = drv->methods;
    dev->props = drv->properties;
    dev->stream_defs = drv->streams;
    if (drv->configure) {
        int rc = drv->configure(dev, &dev->tables);
        if (rc != 0) {
            snprintf(err, errlen, "device '%s': %s", name, dev->fail_msg[0] ? dev->fail_msg : lmq_strerror(rc));
            goto fail;
        }
        if (dev->tables.methods)
            dev->methods = dev->tables.methods;
        if (dev->tables.properties)
            dev->props = dev->tables.properties;
        if (dev->tables.streams)
            dev->stream_defs = dev->tables.streams;
    }
    dev->fail_status = 0;
    dev->fail_msg[0] = 0;
    /* The name of each table entry is its first member. */
    dev->nmethods = count_named(dev->methods, sizeof(lmq_method_t));
    dev->nprops = count_named(dev->props, sizeof(lmq_property_t));
    dev->nstreams = count_named(dev->stream_defs, sizeof(lmq_stream_t));
    dev->streams = calloc(dev->nstreams + 1, sizeof *dev->streams);
    dev->limits = calloc(dev->nprops + 1, sizeof *dev->limits);
    dev->last_set = calloc(dev->nprops + 1, sizeof *dev->last_set);
    if (!dev->streams || !dev->limits || !dev->last_set) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    fill_limits(dev);
    for (size_t i = 0; i < dev->nstreams; i++) {
        size_t len = strlen(name) + strlen(dev->stream_defs[i].name) + 2;
        if (!(dev->streams[i].topic = malloc(len))) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        snprintf(dev->streams[i].topic, len, "%s/%s", name, dev->stream_defs[i].name);
        if (!(dev->streams[i].units_json = lmq__json_quote(dev->stream_defs[i].unit))) {
            snprintf(err, errlen, "stream %s: unit is not valid UTF-8", dev->streams[i].topic);
            goto fail;
        }
    }
    return dev;
fail:
    lmq__dev_destroy(&dev);
    return NULL;
}

void lmq__dev_destroy(lmq_dev_t **pdev)
{
    if (!pdev || !*pdev)
        return;
    lmq_dev_t *dev = *pdev;
    /* A thread stuck in its driver may still touch the device: leave it. */
    if (dev->abandoned) {
        *pdev = NULL;
        return;
    }
    lmq__local_destroy(dev);
    for (size_t k = 0; dev->opts && k < dev->nopts; k++)
        lmq_value_clear(&dev->opts[k].val);
    for (size_t i = 0; dev->streams && i < dev->nstreams; i++) {
        free(dev->streams[i].topic);
        free(dev->streams[i].units_json);
    }
    for (size_t i = 0; dev->last_set && i < dev->nprops; i++)
        lmq_value_clear(&dev->last_set[i]);
    if (dev->tables.release)
        dev->tables.release(&dev->tables);
    free(dev->last_set);
    free(dev->opts);
    free(dev->streams);
    free(dev->limits);
    free(dev->name);
    free(dev->connection);
    free(dev->ev_topic);
    pthread_mutex_destroy(&dev->mu);
    pthread_mutex_destroy(&dev->ev_mu);
    free(dev);
    *pdev = NULL;
}

static bool value_equal(const lmq_value_t *a, const lmq_value_t *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case LMQ_BOOL:
        return a->u.b == b->u.b;
    case LMQ_INT:
        return a->u.i == b->u.i;
    case LMQ_FLOAT:
        return a->u.f == b->u.f || (isnan(a->u.f) && isnan(b->u.f));
    case LMQ_STRING:
        return strcmp(a->u.s, b->u.s) == 0;
    case LMQ_ARRAY:
        return a->u.a.dtype == b->u.a.dtype && a->u.a.ndim == b->u.a.ndim &&
               memcmp(a->u.a.shape, b->u.a.shape, sizeof a->u.a.shape) == 0 && a->u.a.nbytes == b->u.a.nbytes &&
               (!a->u.a.nbytes || memcmp(a->u.a.data, b->u.a.data, a->u.a.nbytes) == 0);
    default:
        return true;
    }
}

/* Parsed values, not text: "50" and "50.0" for a float option are the same
 * configuration, and an option left at its default equals one given as it. */
bool lmq__dev_same_config(const lmq_dev_t *dev, const lmq_dev_t *other)
{
    if (dev->drv != other->drv || strcmp(dev->name, other->name) != 0 ||
        strcmp(dev->connection, other->connection) != 0 || dev->restore != other->restore ||
        dev->time_scale != other->time_scale || dev->nopts != other->nopts)
        return false;
    for (size_t k = 0; k < dev->nopts; k++)
        if (dev->opts[k].opt != other->opts[k].opt || !value_equal(&dev->opts[k].val, &other->opts[k].val))
            return false;
    return true;
}

const char *lmq__dev_state_name(lmq__dev_state_t s)
{
    static const char *const names[] = {"opening", "ready", "disconnected", "stopped", "fault"};
    return (unsigned)s < sizeof names / sizeof *names ? names[s] : "?";
}

const lmq_method_t *lmq__dev_method(const lmq_dev_t *dev, const char *name)
{
    for (size_t i = 0; i < dev->nmethods; i++)
        if (strcmp(dev->methods[i].name, name) == 0)
            return &dev->methods[i];
    return NULL;
}

const lmq_property_t *lmq__dev_property(const lmq_dev_t *dev, const char *name)
{
    for (size_t i = 0; i < dev->nprops; i++)
        if (strcmp(dev->props[i].name, name) == 0)
            return &dev->props[i];
    return NULL;
}

void lmq__pipe_options(void *sock)
{
    int linger = 0, hwm = 10000;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
}

/* "a, b, c" of a table's names, for error messages that show what exists. */
static void name_list(char *buf, size_t size, const void *table, size_t stride, size_t n)
{
    size_t len = 0;
    buf[0] = 0;
    for (size_t i = 0; i < n && len < size; i++) {
        const char *name = *(const char *const *)((const char *)table + i * stride);
        len += (size_t)snprintf(buf + len, size - len, "%s%s", i ? ", " : "", name);
    }
    if (n == 0)
        snprintf(buf, size, "none");
}

int lmq__dev_target(const lmq_dev_t *dev, bool call, bool set, const char *name, const lmq_method_t **method,
                    const lmq_property_t **prop, char *err, size_t errlen)
{
    char names[400];
    *method = NULL;
    *prop = NULL;
    if (call) {
        if ((*method = lmq__dev_method(dev, name)))
            return 0;
        name_list(names, sizeof names, dev->methods, sizeof(lmq_method_t), dev->nmethods);
        snprintf(err, errlen, "%s has no method '%.64s' (methods: %s)", dev->name, name, names);
        return LMQ_ENOTFOUND;
    }
    if (!(*prop = lmq__dev_property(dev, name))) {
        name_list(names, sizeof names, dev->props, sizeof(lmq_property_t), dev->nprops);
        snprintf(err, errlen, "%s has no property '%.64s' (properties: %s)", dev->name, name, names);
        return LMQ_ENOTFOUND;
    }
    if (set && !(*prop)->set) {
        snprintf(err, errlen, "%s.%s is read-only", dev->name, (*prop)->name);
        return LMQ_EREADONLY;
    }
    return 0;
}

void lmq__dev_limits(lmq_dev_t *dev, const lmq_property_t *p, double *min, double *max)
{
    size_t i = (size_t)(p - dev->props);
    *min = dev->limits[i][0];
    *max = dev->limits[i][1];
}

/* ---- services for drivers ---- */

const char *lmq_dev_name(const lmq_dev_t *dev) { return dev->name; }
const char *lmq_dev_connection(const lmq_dev_t *dev) { return dev->connection; }
lmq_log_t *lmq_dev_log(const lmq_dev_t *dev) { return dev->log; }
bool lmq_dev_stopping(const lmq_dev_t *dev) { return atomic_load(&dev->stopping); }
const void *lmq_dev_user(const lmq_dev_t *dev) { return dev ? dev->cur_user : NULL; }

void *lmq_dev_tables_user(const lmq_dev_t *dev) { return dev ? dev->tables.user : NULL; }

static const lmq_value_t *opt_value(const lmq_dev_t *dev, const char *name)
{
    for (size_t k = 0; k < dev->nopts; k++)
        if (strcmp(dev->opts[k].opt->name, name) == 0)
            return &dev->opts[k].val;
    /* Asking for an option the driver's own table lacks is a driver bug. */
    assert(!"driver asked for an option missing from its table");
    return NULL;
}

double lmq_dev_opt_float(const lmq_dev_t *dev, const char *name)
{
    double d = 0;
    const lmq_value_t *v = opt_value(dev, name);
    return v && lmq_value_to_double(v, &d) == 0 ? d : 0.0;
}

int64_t lmq_dev_opt_int(const lmq_dev_t *dev, const char *name)
{
    const lmq_value_t *v = opt_value(dev, name);
    return v && v->type == LMQ_INT ? v->u.i : 0;
}

bool lmq_dev_opt_bool(const lmq_dev_t *dev, const char *name)
{
    const lmq_value_t *v = opt_value(dev, name);
    return v && v->type == LMQ_BOOL ? v->u.b : false;
}

const char *lmq_dev_opt_str(const lmq_dev_t *dev, const char *name)
{
    const lmq_value_t *v = opt_value(dev, name);
    return v && v->type == LMQ_STRING ? v->u.s : "";
}

int lmq_dev_fail(lmq_dev_t *dev, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dev->fail_msg, sizeof dev->fail_msg, fmt, ap);
    va_end(ap);
    dev->fail_status = status;
    return status;
}

int lmq_dev_transport_open(lmq_dev_t *dev, lmq_transport_t **t, int open_timeout_ms)
{
    if (!dev || !t)
        return LMQ_EARG;
    lmq_transport_opts_t opts = {
        .log = dev->log, .source = dev->name, .cancel = &dev->stopping, .open_timeout_ms = open_timeout_ms};
    char err[400];
    int rc = lmq_transport_open(t, dev->connection, &opts, err, sizeof err);
    if (rc == 0) /* the request's deadline caps its waits (protocol 2.1 deadline_ms) */
        lmq__transport_set_cap(*t, &dev->deadline_ns);
    return rc ? lmq_dev_fail(dev, rc, "%s", err) : 0;
}

int lmq_dev_sleep(lmq_dev_t *dev, int64_t ns)
{
    /* Short naps so that a stop request is noticed within ~10 ms. */
    int64_t end = lmq_clock_mono_ns() + ns;
    for (;;) {
        if (atomic_load(&dev->stopping))
            return LMQ_ECLOSED;
        int64_t left = end - lmq_clock_mono_ns();
        if (left <= 0)
            return 0;
        if (left > 10000000)
            left = 10000000;
        struct timespec ts = {0, (long)left};
        nanosleep(&ts, NULL);
    }
}

double lmq_dev_time_scale(const lmq_dev_t *dev) { return dev->time_scale; }

int64_t lmq_dev_sim_ns(const lmq_dev_t *dev)
{
    int64_t now = lmq_clock_mono_ns();
    return dev->sim_t0 + (int64_t)((double)(now - dev->sim_t0) * dev->time_scale);
}

int lmq_dev_sim_sleep(lmq_dev_t *dev, int64_t ns)
{
    return lmq_dev_sleep(dev, (int64_t)((double)ns / dev->time_scale));
}

int lmq_dev_property_limits(lmq_dev_t *dev, const char *property, double min, double max)
{
    const lmq_property_t *p = dev && property ? lmq__dev_property(dev, property) : NULL;
    if (!p)
        return LMQ_ENOTFOUND;
    if (!p->limited || !(min <= max) || min < p->min || max > p->max)
        return LMQ_EARG;
    pthread_mutex_lock(&dev->mu);
    size_t i = (size_t)(p - dev->props);
    dev->limits[i][0] = min;
    dev->limits[i][1] = max;
    pthread_mutex_unlock(&dev->mu);
    return 0;
}

int lmq_dev_stream_rate(lmq_dev_t *dev, size_t index, double hz)
{
    if (index >= dev->nstreams || !(hz >= 0) || !isfinite(hz))
        return LMQ_EARG;
    pthread_mutex_lock(&dev->mu);
    lmq__stream_rt_t *s = &dev->streams[index];
    if (s->rate_hz == 0 && hz > 0)
        s->next_due = lmq_clock_mono_ns() + (int64_t)(1e9 / hz);
    s->rate_hz = hz;
    pthread_mutex_unlock(&dev->mu);
    return 0;
}

int lmq_dev_stream_shape(lmq_dev_t *dev, size_t index, unsigned ndim, const size_t *shape)
{
    if (index >= dev->nstreams || ndim > LMQ_MAX_DIMS || (ndim && !shape))
        return LMQ_EARG;
    pthread_mutex_lock(&dev->mu);
    dev->streams[index].ndim = ndim;
    for (unsigned i = 0; i < ndim; i++)
        dev->streams[index].shape[i] = shape[i];
    pthread_mutex_unlock(&dev->mu);
    return 0;
}

bool lmq_dev_stream_wanted(const lmq_dev_t *dev, size_t index)
{
    return dev && index < dev->nstreams && atomic_load(&dev->streams[index].wanted);
}

int lmq_dev_stream_skip(lmq_dev_t *dev, size_t index, uint64_t blocks)
{
    if (!dev || index >= dev->nstreams)
        return LMQ_EARG;
    dev->streams[index].seq += blocks;
    atomic_fetch_add(&dev->streams[index].skipped, blocks);
    return 0;
}

static void free_data(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Says so at 1, 2, 4, 8, ... events: visible without flooding the log. */
static bool worth_logging(uint64_t count) { return (count & (count - 1)) == 0; }

static int publish_msg(lmq_dev_t *dev, size_t index, int64_t t_ns, zmq_msg_t *payload)
{
    lmq__stream_rt_t *s = &dev->streams[index];
    const lmq_stream_t *st = &dev->stream_defs[index];
    size_t need = 0, have = zmq_msg_size(payload);
    pthread_mutex_lock(&dev->mu);
    unsigned ndim = s->ndim;
    size_t shape[LMQ_MAX_DIMS];
    memcpy(shape, s->shape, sizeof shape);
    pthread_mutex_unlock(&dev->mu);
    if (lmq__array_nbytes(st->dtype, ndim, shape, &need) != 0 || need != have) {
        /* A driver bug fails this block only; its seq is not spent, since no
         * data was lost that the driver could have delivered. */
        zmq_msg_close(payload);
        uint64_t n = atomic_fetch_add(&s->errors, 1) + 1;
        if (worth_logging(n))
            lmq_log(dev->log, LMQ_LOG_ERROR, dev->name,
                    "stream %s: driver published %zu bytes, its shape and dtype need %zu; block refused (%llu so far)",
                    s->topic, have, need, (unsigned long long)n);
        return lmq_dev_fail(dev, LMQ_EARG, "stream %s: %zu bytes do not match its shape and dtype (%zu)", s->topic,
                            have, need);
    }
    /* Nobody listens: a stream nobody subscribes to costs nothing (no
     * header, no copy, no send), and its seq counts only published blocks. */
    if (!atomic_load(&s->wanted)) {
        zmq_msg_close(payload);
        return 0;
    }
    uint64_t seq = s->seq++;
    zmq_msg_t kind, topic, header;
    zmq_msg_init_size(&kind, 1);
    *(char *)zmq_msg_data(&kind) = LMQ__MSG_PUBLISH;
    zmq_msg_init_size(&topic, strlen(s->topic));
    memcpy(zmq_msg_data(&topic), s->topic, strlen(s->topic));
    int rc = lmq__data_header(&header, seq, dev->epoch, t_ns, st->dtype, ndim, shape, s->units_json);
    if (rc != 0) {
        zmq_msg_close(&kind);
        zmq_msg_close(&topic);
        zmq_msg_close(payload);
        return rc;
    }
    /* Never block acquisition on a slow broker: a refused block is dropped,
     * but its seq is spent, so subscribers see the gap. The first part is
     * the one that can be refused; once it is accepted, the rest follow. */
    dev->pipe_used = true;
    if (zmq_msg_send(&kind, dev->pipe, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        uint64_t dropped = atomic_fetch_add(&s->dropped, 1) + 1;
        if (worth_logging(dropped))
            lmq_log(dev->log, LMQ_LOG_WARN, dev->name, "stream %s: the broker is not keeping up; %llu blocks dropped",
                    s->topic, (unsigned long long)dropped);
        zmq_msg_close(&kind);
        zmq_msg_close(&topic);
        zmq_msg_close(&header);
        zmq_msg_close(payload);
        return 0;
    }
    zmq_msg_send(&topic, dev->pipe, ZMQ_SNDMORE);
    zmq_msg_send(&header, dev->pipe, ZMQ_SNDMORE);
    lmq__handoff_release(zmq_msg_data(payload)); /* a subscriber over inproc reads it in place */
    zmq_msg_send(payload, dev->pipe, 0);
    atomic_fetch_add(&s->published, 1);
    return 0;
}

int lmq_dev_publish(lmq_dev_t *dev, size_t index, int64_t t_ns, const void *data, size_t nbytes)
{
    if (!dev || index >= dev->nstreams || (!data && nbytes))
        return LMQ_EARG;
    zmq_msg_t payload;
    if (zmq_msg_init_size(&payload, nbytes) != 0)
        return LMQ_EMEM;
    if (nbytes)
        memcpy(zmq_msg_data(&payload), data, nbytes);
    return publish_msg(dev, index, t_ns, &payload);
}

int lmq_dev_publish_take(lmq_dev_t *dev, size_t index, int64_t t_ns, void **data, size_t nbytes)
{
    if (!dev || index >= dev->nstreams || !data || !*data)
        return LMQ_EARG;
    zmq_msg_t payload;
    if (zmq_msg_init_data(&payload, *data, nbytes, free_data, NULL) != 0)
        return LMQ_EMEM;
    *data = NULL;
    return publish_msg(dev, index, t_ns, &payload);
}

/* ---- the device thread ---- */

int lmq__send_ptr(void *sock, char kind, void *ptr, int flags)
{
    char buf[1 + sizeof ptr];
    lmq__handoff_release(ptr);
    buf[0] = kind;
    memcpy(buf + 1, &ptr, sizeof ptr);
    return zmq_send(sock, buf, sizeof buf, flags) < 0 ? -1 : 0;
}

void lmq__job_destroy(lmq__job_t **pjob)
{
    if (!pjob || !*pjob)
        return;
    lmq__job_t *job = *pjob;
    for (size_t i = 0; i < job->nenvelope; i++)
        zmq_msg_close(&job->envelope[i]);
    lmq__request_clear(&job->req);
    for (size_t i = 0; i < job->nargs; i++)
        lmq_value_clear(&job->args[i]);
    lmq_value_clear(&job->value);
    zmq_msg_close(&job->reply);
    lmq__frames_close(&job->reply_bin);
    free(job);
    *pjob = NULL;
}

#define REOPEN_FIRST_NS (100LL * 1000000)
#define REOPEN_MAX_NS (1000LL * 1000000)
#define CHECK_INTERVAL_NS (250LL * 1000000)

static void set_state(lmq_dev_t *dev, lmq__dev_state_t st, const char *error, const char *cause);

/* The driver is back after the broker marked the device FAULT. */
static void driver_returned(lmq_dev_t *dev)
{
    lmq_log(dev->log, LMQ_LOG_INFO, dev->name, "responding again: its driver returned");
    set_state(dev, LMQ__DEV_READY, NULL, "responding");
}

/* Marks the thread as inside the driver (for the stuck-device report at
 * shutdown and FAULT) or, with what == NULL, as back in the daemon. */
static void enter_driver(lmq_dev_t *dev, const char *what, const char *name, lmq__job_t *job, const void *user)
{
    pthread_mutex_lock(&dev->mu);
    if (what) {
        dev->busy_since = lmq_clock_mono_ns();
        snprintf(dev->busy_what, sizeof dev->busy_what, "%s%s%.100s", what, name ? " " : "", name ? name : "");
    } else
        dev->busy_since = 0;
    dev->current = job;
    bool recovered = !what && dev->dev_state == LMQ__DEV_FAULT;
    pthread_mutex_unlock(&dev->mu);
    dev->cur_user = user;
    if (what) { /* a failure the driver reports stays readable after it returns */
        dev->fail_status = 0;
        dev->fail_msg[0] = 0;
    }
    if (recovered)
        driver_returned(dev);
}

/* Sends a change event (protocol 3.1), under ev_mu: the device thread's go
 * to the broker on sock like a stream block (the kind frame first), never
 * blocking the device thread; a refused event spends its seq so subscribers
 * see the gap. The broker's own (publish, on its thread) go straight to its
 * publishing path. value and extra (more header keys, taken) may be NULL. */
static void send_event(lmq_dev_t *dev, void *sock, lmq__publish_fn publish, void *arg, const char *kind,
                       const char *name,
                       const lmq_value_t *value, const char *cause, const char *state, const char *error, json_t *extra)
{
    if (!sock && !publish) {
        json_decref(extra);
        return;
    }
    lmq__frames_t bin;
    lmq__frames_init(&bin);
    json_t *h = json_pack("{s:i, s:I, s:I, s:I, s:s, s:s}", "v", LMQ__PROTOCOL, "seq", (json_int_t)dev->ev_seq++,
                          "epoch", (json_int_t)dev->epoch, "t_ns", (json_int_t)lmq_clock_real_ns(), "device",
                          dev->name, "kind", kind);
    if (!h) {
        json_decref(extra);
        return;
    }
    if (extra)
        json_object_update(h, extra);
    json_decref(extra);
    if (name)
        json_object_set_new(h, "name", json_string(name));
    if (value) {
        lmq_value_t copy = {0};
        json_t *jv = lmq_value_copy(&copy, value) == 0 ? lmq__value_to_json(&copy, &bin) : NULL;
        lmq_value_clear(&copy);
        json_object_set_new(h, "value", jv ? jv : json_null());
    }
    if (cause)
        json_object_set_new(h, "cause", json_string(cause));
    if (state)
        json_object_set_new(h, "state", json_string(state));
    if (error)
        json_object_set_new(h, "error", json_string(error));
    zmq_msg_t kindm, topic, header;
    int rc = lmq__json_to_msg(h, &header);
    json_decref(h);
    if (rc != 0) {
        lmq__frames_close(&bin);
        return;
    }
    zmq_msg_init_size(&topic, strlen(dev->ev_topic));
    memcpy(zmq_msg_data(&topic), dev->ev_topic, strlen(dev->ev_topic));
    if (publish) { /* the broker's own: topic, header, value frames, handed over */
        zmq_msg_t parts[2 + LMQ__MAX_BINFRAMES];
        size_t n = 0;
        parts[n++] = topic;
        parts[n++] = header;
        for (size_t i = 0; i < bin.n && n < 2 + LMQ__MAX_BINFRAMES; i++) {
            zmq_msg_init(&parts[n]);
            zmq_msg_move(&parts[n++], &bin.msg[i]);
        }
        lmq__frames_close(&bin);
        publish(arg, parts, n);
        return;
    }
    zmq_msg_init_size(&kindm, 1);
    *(char *)zmq_msg_data(&kindm) = LMQ__MSG_PUBLISH;
    if (zmq_msg_send(&kindm, sock, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        atomic_fetch_add(&dev->events_dropped, 1);
        zmq_msg_close(&kindm);
        zmq_msg_close(&topic);
        zmq_msg_close(&header);
        lmq__frames_close(&bin);
        return;
    }
    zmq_msg_send(&topic, sock, ZMQ_SNDMORE);
    zmq_msg_send(&header, sock, bin.n ? ZMQ_SNDMORE : 0);
    for (size_t i = 0; i < bin.n; i++)
        zmq_msg_send(&bin.msg[i], sock, i + 1 < bin.n ? ZMQ_SNDMORE : 0);
    lmq__frames_close(&bin);
}

static void emit_event_extra(lmq_dev_t *dev, const char *kind, const char *name, const lmq_value_t *value,
                             const char *cause, const char *state, const char *error, json_t *extra)
{
    pthread_mutex_lock(&dev->ev_mu);
    send_event(dev, dev->pipe, NULL, NULL, kind, name, value, cause, state, error, extra);
    dev->pipe_used = true;
    pthread_mutex_unlock(&dev->ev_mu);
}

static void emit_event(lmq_dev_t *dev, const char *kind, const char *name, const lmq_value_t *value, const char *cause,
                       const char *state, const char *error)
{
    emit_event_extra(dev, kind, name, value, cause, state, error, NULL);
}

int64_t lmq__dev_watch(lmq_dev_t *dev, int64_t now, int64_t fault_after_ns, lmq__publish_fn publish,
                       void (*drain)(void *arg, lmq_dev_t *dev), void *arg)
{
    pthread_mutex_lock(&dev->mu);
    int64_t since = dev->dev_state == LMQ__DEV_READY ? dev->busy_since : 0;
    pthread_mutex_unlock(&dev->mu);
    if (!since)
        return now + fault_after_ns; /* a driver entered from now on is due no earlier */
    if (now - since < fault_after_ns)
        return since + fault_after_ns;
    /* Events the device sent before it got stuck go out first; it can send
     * no new one while we hold ev_mu. */
    pthread_mutex_lock(&dev->ev_mu);
    drain(arg, dev);
    char error[256];
    pthread_mutex_lock(&dev->mu);
    bool fault = dev->dev_state == LMQ__DEV_READY && dev->busy_since == since; /* still in that same entry */
    if (fault) {
        dev->dev_state = LMQ__DEV_FAULT;
        snprintf(error, sizeof error, "in its driver (%.160s) for %.1f s, longer than fault_after (%.1f s)",
                 dev->busy_what, (double)(now - since) / 1e9, (double)fault_after_ns / 1e9);
        snprintf(dev->open_error, sizeof dev->open_error, "%s", error);
    }
    pthread_mutex_unlock(&dev->mu);
    if (fault) {
        send_event(dev, NULL, publish, arg, "state", NULL, NULL, "stuck", lmq__dev_state_name(LMQ__DEV_FAULT), error,
                   NULL);
        lmq_log(dev->log, LMQ_LOG_WARN, dev->name, "FAULT: %s", error);
    }
    pthread_mutex_unlock(&dev->ev_mu);
    return now + fault_after_ns;
}

/* cause: why the state changed ("opened", "reconnected", "restored",
 * "lost", "open failed", "stopped"), also in the change event. */
static void set_state(lmq_dev_t *dev, lmq__dev_state_t st, const char *error, const char *cause)
{
    pthread_mutex_lock(&dev->mu);
    bool changed = dev->dev_state != st; /* not each retry's new reason: no event storm */
    dev->dev_state = st;
    dev->is_open = st == LMQ__DEV_READY || st == LMQ__DEV_FAULT;
    if (error)
        snprintf(dev->open_error, sizeof dev->open_error, "%.255s", error);
    else
        dev->open_error[0] = 0;
    pthread_mutex_unlock(&dev->mu);
    if (changed)
        emit_event(dev, "state", NULL, NULL, cause, lmq__dev_state_name(st), error);
}

int lmq_dev_notify(lmq_dev_t *dev, const char *property, const lmq_value_t *value)
{
    if (!dev || !property || !value || !lmq__dev_property(dev, property))
        return LMQ_EARG;
    emit_event(dev, "property", property, value, "driver", NULL, NULL);
    return 0;
}

/* Writes back what clients last set, so an instrument that was power-cycled
 * comes back as they left it. */
static void restore_settings(lmq_dev_t *dev)
{
    int n = 0, failed = 0;
    for (size_t i = 0; i < dev->nprops; i++) {
        const lmq_property_t *p = &dev->props[i];
        if (dev->last_set[i].type == LMQ_NONE || !p->set || p->transient)
            continue;
        enter_driver(dev, "restore", p->name, NULL, p->user);
        int rc = p->set(dev, dev->state, &dev->last_set[i]);
        enter_driver(dev, NULL, NULL, NULL, NULL);
        char val[64];
        lmq_value_format(&dev->last_set[i], val, sizeof val);
        if (rc == 0) {
            n++;
            emit_event(dev, "property", p->name, &dev->last_set[i], "restore", NULL, NULL);
            lmq_log(dev->log, LMQ_LOG_INFO, dev->name, "restored %s = %s", p->name, val);
        } else {
            failed++;
            lmq_log(dev->log, LMQ_LOG_WARN, dev->name, "cannot restore %s = %s: %s", p->name, val,
                    dev->fail_msg[0] ? dev->fail_msg : lmq_strerror(rc));
        }
    }
    if (n || failed) {
        pthread_mutex_lock(&dev->mu);
        dev->restores++;
        pthread_mutex_unlock(&dev->mu);
        lmq_log(dev->log, failed ? LMQ_LOG_WARN : LMQ_LOG_INFO, dev->name, "RESTORED: %d setting%s written back%s", n,
                n == 1 ? "" : "s", failed ? " (some failed, see above)" : "");
    }
}

static void try_open(lmq_dev_t *dev)
{
    bool was_lost = dev->dev_state == LMQ__DEV_DISCONNECTED;
    void *state = NULL;
    enter_driver(dev, "open", NULL, NULL, NULL);
    int rc = dev->drv->open ? dev->drv->open(dev, &state) : 0;
    enter_driver(dev, NULL, NULL, NULL, NULL);
    int64_t now = lmq_clock_mono_ns();
    if (rc == 0) {
        dev->state = state;
        dev->reopen_backoff_ns = REOPEN_FIRST_NS;
        bool restored = false;
        if (was_lost) {
            pthread_mutex_lock(&dev->mu);
            dev->reopens++;
            uint64_t before = dev->restores;
            pthread_mutex_unlock(&dev->mu);
            if (dev->restore)
                restore_settings(dev);
            pthread_mutex_lock(&dev->mu);
            restored = dev->restores != before;
            pthread_mutex_unlock(&dev->mu);
        }
        set_state(dev, LMQ__DEV_READY, NULL, restored ? "restored" : was_lost ? "reconnected" : "opened");
        lmq_log(dev->log, LMQ_LOG_INFO, dev->name, "%s (%s)", was_lost ? "reconnected" : "opened", dev->drv->name);
        return;
    }
    char why[256];
    snprintf(why, sizeof why, "%.255s", dev->fail_msg[0] ? dev->fail_msg : lmq_strerror(rc));
    /* Log a failure when it is new, not at every retry. */
    bool same = dev->dev_state == LMQ__DEV_DISCONNECTED && strcmp(why, dev->open_error) == 0;
    lmq_log(dev->log, same ? LMQ_LOG_DEBUG : LMQ_LOG_WARN, dev->name, "cannot open: %s (retrying)", why);
    set_state(dev, LMQ__DEV_DISCONNECTED, why, "open failed");
    if (!dev->reopen_backoff_ns)
        dev->reopen_backoff_ns = REOPEN_FIRST_NS;
    dev->next_open_try = now + dev->reopen_backoff_ns;
    dev->reopen_backoff_ns = dev->reopen_backoff_ns * 2 > REOPEN_MAX_NS ? REOPEN_MAX_NS : dev->reopen_backoff_ns * 2;
}

/* The link to the instrument is gone: close the driver and reopen later. */
static void lose_link(lmq_dev_t *dev, const char *reason)
{
    char why[256]; /* reason may be dev->fail_msg, which close() reuses */
    snprintf(why, sizeof why, "%.255s", reason);
    lmq_log(dev->log, LMQ_LOG_WARN, dev->name, "disconnected: %s", why);
    if (dev->drv->close) {
        enter_driver(dev, "close", NULL, NULL, NULL);
        dev->drv->close(dev, dev->state);
        enter_driver(dev, NULL, NULL, NULL, NULL);
    }
    dev->state = NULL;
    pthread_mutex_lock(&dev->mu);
    dev->disconnects++;
    pthread_mutex_unlock(&dev->mu);
    set_state(dev, LMQ__DEV_DISCONNECTED, why, "lost");
    dev->reopen_backoff_ns = REOPEN_FIRST_NS;
    dev->next_open_try = lmq_clock_mono_ns() + REOPEN_FIRST_NS;
}

static int run_job(lmq_dev_t *dev, lmq__job_t *job, lmq_value_t *result)
{
    const lmq__request_t *req = &job->req;
    if (!dev->is_open) {
        pthread_mutex_lock(&dev->mu);
        char why[256];
        snprintf(why, sizeof why, "%s", dev->open_error);
        pthread_mutex_unlock(&dev->mu);
        return lmq_dev_fail(dev, LMQ_EDEVICE, "device '%s' is disconnected: %s (reopening)", dev->name, why);
    }
    const void *user = job->method ? job->method->user : job->prop->user;
    enter_driver(dev, lmq__op_name(req->op), req->name, job, user);
    int rc = dev->drv->before ? dev->drv->before(dev, dev->state, req->name) : 0;
    if (rc == 0) {
        if (req->op == LMQ__OP_CALL)
            rc = job->method->fn(dev, dev->state, job->args, result);
        else if (req->op == LMQ__OP_GET)
            rc = job->prop->get(dev, dev->state, result);
        else
            rc = job->prop->set(dev, dev->state, &job->value);
    }
    pthread_mutex_lock(&dev->mu);
    dev->busy_since = 0;
    dev->current = NULL;
    bool recovered = dev->dev_state == LMQ__DEV_FAULT;
    pthread_mutex_unlock(&dev->mu);
    dev->cur_user = NULL;
    if (recovered)
        driver_returned(dev);
    if (rc == 0 && req->op == LMQ__OP_SET) {
        size_t i = (size_t)(job->prop - dev->props);
        lmq_value_clear(&dev->last_set[i]);
        lmq_value_copy(&dev->last_set[i], &job->value);
        emit_event(dev, "property", job->prop->name, &job->value, "set", NULL, NULL);
    }
    return rc;
}

/* A lock on the device was taken, released or has expired (locks.c). An
 * expired lock puts the instrument in its safe state first; the event tells
 * how that went. */
static void lock_change(lmq_dev_t *dev, char what, const char *holder, size_t len)
{
    char name[LMQ__MAX_CLIENT + 48];
    snprintf(name, sizeof name, "%.*s", (int)(len < sizeof name ? len : sizeof name - 1), holder);
    const char *cause = what == LMQ__LOCK_TAKEN ? "locked" : what == LMQ__LOCK_RELEASED ? "unlocked" : "lock expired";
    /* The local channel bypasses the broker's lock check: it asks this. */
    snprintf(dev->lock_holder, sizeof dev->lock_holder, "%s", what == LMQ__LOCK_TAKEN ? name : "");
    const char *safe = NULL;
    char why[512] = "";
    if (what == LMQ__LOCK_EXPIRED) {
        if (!dev->drv->safe_state)
            safe = "none";
        else if (!dev->is_open)
            safe = "not open";
        else {
            enter_driver(dev, "safe_state", NULL, NULL, NULL);
            int rc = dev->drv->safe_state(dev, dev->state);
            enter_driver(dev, NULL, NULL, NULL, NULL);
            safe = rc == 0 ? "done" : rc > 0 ? "none" : "failed";
            if (rc > 0)
                rc = 0;
            if (rc != 0) {
                snprintf(why, sizeof why, "%s", dev->fail_msg[0] ? dev->fail_msg : lmq_strerror(rc));
                lmq_log(dev->log, LMQ_LOG_ERROR, dev->name, "SAFE STATE FAILED after the lock of '%s' expired: %s",
                        name, why);
            } else
                lmq_log(dev->log, LMQ_LOG_WARN, dev->name, "safe state set: the lock of '%s' expired", name);
            if (rc == LMQ_EIO && dev->is_open)
                lose_link(dev, why);
        }
    }
    json_t *extra = json_pack("{s:s}", "holder", name);
    if (extra && safe)
        json_object_set_new(extra, "safe_state", json_string(safe));
    emit_event_extra(dev, "lock", NULL, NULL, cause, NULL, why[0] ? why : NULL, extra);
}

void lmq__dev_handle_job(lmq_dev_t *dev, lmq__job_t *job)
{
    lmq_value_t result = {0};
    dev->fail_status = 0;
    dev->fail_msg[0] = 0;
    int rc;
    if (job->deadline_ns && lmq_clock_mono_ns() >= job->deadline_ns)
        /* Waited out its budget in the queue: the instrument never sees it. */
        rc = lmq_dev_fail(dev, LMQ_ETIMEOUT, "%s %s.%s: deadline passed before the device ran it",
                          lmq__op_name(job->req.op), dev->name, job->req.name);
    else {
        dev->deadline_ns = job->deadline_ns;
        rc = run_job(dev, job, &result);
        dev->deadline_ns = 0;
    }
    int enc = 0;
    if (rc == 0) {
        enc = lmq__reply_value(&job->reply, job->req.id, &result, &job->reply_bin);
        if (enc == LMQ_ERANGE) {
            enc = 0;
            rc = lmq_dev_fail(dev, LMQ_EDEVICE, "%s.%s returned %g, which JSON cannot carry", dev->name, job->req.name,
                              result.u.f);
        }
    }
    lmq_value_clear(&result);
    if (rc != 0) {
        lmq__frames_close(&job->reply_bin);
        char msg[600];
        if (!dev->fail_msg[0] || dev->fail_status != rc)
            snprintf(msg, sizeof msg, "%s %s.%s: %s%s%s", lmq__op_name(job->req.op), dev->name, job->req.name,
                     lmq_strerror(rc), dev->fail_msg[0] ? ": " : "", dev->fail_msg);
        else
            snprintf(msg, sizeof msg, "%s", dev->fail_msg);
        enc = lmq__reply_error(&job->reply, true, job->req.id, rc, msg);
        job->failed = true;
        job->status = rc;
        snprintf(job->fail_msg, sizeof job->fail_msg, "%.*s", (int)sizeof job->fail_msg - 1, msg);
        lmq_log(dev->log, LMQ_LOG_DEBUG, dev->name, "%s failed: %s", lmq__op_name(job->req.op), msg);
        if (rc == LMQ_EIO && dev->is_open)
            lose_link(dev, msg);
    } else
        lmq_log(dev->log, LMQ_LOG_TRACE, dev->name, "%s %s: ok", lmq__op_name(job->req.op), job->req.name);
    if (enc != 0) /* out of memory while encoding: an empty reply frame the broker turns into MEM */
        zmq_msg_init(&job->reply);
}

static void poll_streams(lmq_dev_t *dev, int64_t now)
{
    for (size_t i = 0; i < dev->nstreams && dev->is_open; i++) {
        lmq__stream_rt_t *s = &dev->streams[i];
        pthread_mutex_lock(&dev->mu);
        double hz = s->rate_hz;
        pthread_mutex_unlock(&dev->mu);
        if (hz <= 0 || now < s->next_due || !dev->stream_defs[i].poll)
            continue;
        int64_t period = (int64_t)(1e9 / hz);
        enter_driver(dev, "poll", dev->stream_defs[i].name, NULL, dev->stream_defs[i].user);
        int rc = dev->stream_defs[i].poll(dev, dev->state, now);
        enter_driver(dev, NULL, NULL, NULL, NULL);
        if (rc != 0) {
            char why[600];
            snprintf(why, sizeof why, "stream %s: %s", s->topic, dev->fail_msg[0] ? dev->fail_msg : lmq_strerror(rc));
            uint64_t n = atomic_fetch_add(&s->errors, 1) + 1;
            if (rc == LMQ_EIO)
                lose_link(dev, why);
            else if (worth_logging(n))
                lmq_log(dev->log, LMQ_LOG_WARN, dev->name, "%s (%llu failed polls so far)", why, (unsigned long long)n);
        }
        s->next_due += period;
        /* After a stall (a hung request), resume the rhythm instead of bursting
         * out every missed block at once. */
        if (now - s->next_due > 2 * period)
            s->next_due = now + period;
    }
}

static int64_t next_stream_due(lmq_dev_t *dev)
{
    int64_t due = INT64_MAX;
    pthread_mutex_lock(&dev->mu);
    for (size_t i = 0; i < dev->nstreams; i++)
        if (dev->streams[i].rate_hz > 0 && dev->streams[i].next_due < due)
            due = dev->streams[i].next_due;
    pthread_mutex_unlock(&dev->mu);
    return due;
}

static void *device_thread(void *arg)
{
    lmq_dev_t *dev = arg;
    /* Requests that arrive while open() runs wait in the pipe. */
    try_open(dev);

    while (!atomic_load(&dev->stopping)) {
        int64_t now = lmq_clock_mono_ns();
        int64_t due = dev->is_open ? next_stream_due(dev) : dev->next_open_try;
        if (dev->is_open && dev->drv->check && dev->next_check < due)
            due = dev->next_check;
        long timeout = due == INT64_MAX ? 100 : (long)((due - now + 999999) / 1000000);
        if (timeout < 0)
            timeout = 0;
        if (timeout > 100) /* wake now and then to notice `stopping` */
            timeout = 100;
        /* local channel: waits for the pipe and the channel's clients */
        int pipe_ready = lmq__local_wait(dev, timeout);
        if (pipe_ready < 0)
            break;
        for (int burst = 0; pipe_ready && burst < LMQ__LOCAL_BUDGET && !atomic_load(&dev->stopping); burst++) {
            dev->pipe_used = true;
            zmq_msg_t msg;
            zmq_msg_init(&msg);
            if (zmq_msg_recv(&msg, dev->pipe, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&msg);
                break;
            }
            const char *d = zmq_msg_data(&msg);
            size_t n = zmq_msg_size(&msg);
            if (n == 1 + sizeof(void *) && d[0] == LMQ__MSG_JOB) {
                lmq__job_t *job;
                memcpy(&job, d + 1, sizeof job);
                lmq__handoff_acquire(job);
                lmq__dev_handle_job(dev, job);
                lmq__send_ptr(dev->pipe, LMQ__MSG_DONE, job, 0);
            } else if (n >= 2 && d[0] == LMQ__MSG_LOCK)
                lock_change(dev, d[1], d + 2, n - 2);
            else if (n >= 1 && d[0] == LMQ__MSG_TERM)
                atomic_store(&dev->stopping, true);
            zmq_msg_close(&msg);
        }
        lmq__local_serve(dev); /* local channel: its turn, within the same budget */
        now = lmq_clock_mono_ns();
        if (atomic_load(&dev->stopping))
            break;
        if (dev->is_open)
            poll_streams(dev, now);
        if (dev->is_open && dev->drv->check && now >= dev->next_check) {
            dev->next_check = now + CHECK_INTERVAL_NS;
            enter_driver(dev, "check", NULL, NULL, NULL);
            int rc = dev->drv->check(dev, dev->state);
            enter_driver(dev, NULL, NULL, NULL, NULL);
            if (rc == LMQ_EIO)
                lose_link(dev, dev->fail_msg[0] ? dev->fail_msg : "link lost");
        } else if (!dev->is_open && now >= dev->next_open_try)
            try_open(dev);
    }
    lmq__local_stop(dev); /* local channel: CLOSED answers, then closed and unlinked */
    if (dev->is_open && dev->drv->close) {
        enter_driver(dev, "close", NULL, NULL, NULL);
        dev->drv->close(dev, dev->state);
        enter_driver(dev, NULL, NULL, NULL, NULL);
    }
    dev->state = NULL;
    set_state(dev, LMQ__DEV_STOPPED, NULL, "stopped");
    zmq_close(dev->pipe);
    dev->pipe = NULL;
    atomic_store(&dev->exited, true);
    return NULL;
}

int lmq__dev_connect(lmq_dev_t *dev, void *zctx, lmq_log_t *log, lmq__wires_t *wires, uint64_t epoch)
{
    dev->zctx = zctx;
    dev->log = log;
    dev->wires = wires;
    dev->epoch = epoch;
    pthread_mutex_lock(&dev->mu); /* lmq_daemon_wait_ready reads it meanwhile */
    dev->dev_state = LMQ__DEV_OPENING;
    pthread_mutex_unlock(&dev->mu);
    dev->sim_t0 = lmq_clock_mono_ns();
    atomic_store(&dev->stopping, false);
    atomic_store(&dev->exited, false);
    /* The pipe is connected here, before the thread exists, so the broker
     * can queue jobs at once; pthread_create is the memory barrier ZeroMQ
     * asks for when a socket moves to another thread. */
    dev->pipe = zmq_socket(zctx, ZMQ_PAIR);
    if (!dev->pipe)
        return LMQ_ESYS;
    lmq__pipe_options(dev->pipe);
    if (zmq_connect(dev->pipe, dev->pipe_endpoint) != 0) {
        zmq_close(dev->pipe);
        dev->pipe = NULL;
        return LMQ_ESYS;
    }
    return 0;
}

int lmq__dev_launch(lmq_dev_t *dev)
{
    if (pthread_create(&dev->thread, NULL, device_thread, dev) != 0) {
        zmq_close(dev->pipe);
        dev->pipe = NULL;
        return LMQ_ESYS;
    }
    dev->thread_started = true;
    return 0;
}

int lmq__dev_start(lmq_dev_t *dev, void *zctx, lmq_log_t *log, lmq__wires_t *wires, uint64_t epoch)
{
    int rc = lmq__dev_connect(dev, zctx, log, wires, epoch);
    return rc ? rc : lmq__dev_launch(dev);
}

int lmq__dev_join(lmq_dev_t *dev, int64_t deadline_ns)
{
    if (!dev->thread_started)
        return 0;
    atomic_store(&dev->stopping, true);
    /* A driver blocked outside lmq_dev_sleep (vendor code, a plain sleep)
     * cannot be interrupted: wait until the deadline, then leave it. */
    while (!atomic_load(&dev->exited) && lmq_clock_mono_ns() < deadline_ns) {
        struct timespec nap = {0, 2 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    if (!atomic_load(&dev->exited)) {
        dev->abandoned = true;
        pthread_detach(dev->thread);
        dev->thread_started = false;
        return LMQ_ETIMEOUT;
    }
    pthread_join(dev->thread, NULL);
    dev->thread_started = false;
    return 0;
}
