/* Request checking against a device's tables, done by the broker before a
 * request is queued (protocol §2.4): argument count, types, limits, and array
 * references. A bad request is answered at once, whatever state the device
 * is in (hung, disconnected, busy), and a driver only ever sees values its
 * tables allow. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "device_internal.h"
#include "labmq/status.h"

/* An int is promoted where a float is wanted; LMQ_NONE accepts anything. */
static int check_type(lmq_value_t *v, lmq_type_t want, const char *what, char *err, size_t errlen)
{
    if (want == LMQ_NONE || v->type == want)
        return 0;
    if (want == LMQ_FLOAT && v->type == LMQ_INT) {
        *v = lmq_float((double)v->u.i);
        return 0;
    }
    return lmq__failf(err, errlen, LMQ_EARG, "%s must be %s, got %s", what, lmq_type_name(want), lmq_type_name(v->type));
}

static int check_limits(const lmq_value_t *v, double lo, double hi, const char *unit, const char *what, char *err,
                        size_t errlen)
{
    double d;
    if (lmq_value_to_double(v, &d) != 0 || (d >= lo && d <= hi))
        return 0;
    unit = unit ? unit : "";
    return lmq__failf(err, errlen, LMQ_ERANGE, "%s = %g%s%s is outside %g..%g%s%s", what, d, *unit ? " " : "", unit, lo, hi,
                 *unit ? " " : "", unit);
}

/* Converts one JSON value, naming it in any error. */
static int convert(const json_t *j, const lmq__frames_t *bin, unsigned *used, lmq_value_t *out, const char *what,
                   char *err, size_t errlen)
{
    char why[300];
    int rc = lmq__value_from_json_used(j, bin, used, out, why, sizeof why);
    if (rc == LMQ_EMEM)
        return lmq__failf(err, errlen, rc, "%s: out of memory", what);
    if (rc != 0)
        return lmq__failf(err, errlen, rc, "%s: %s", what, why);
    return 0;
}

int lmq__check_request(lmq_dev_t *dev, lmq__job_t *job, const lmq__frames_t *bin, char *err, size_t errlen)
{
    const lmq__request_t *req = &job->req;
    const lmq_method_t *m = job->method;
    const lmq_property_t *p = job->prop;
    unsigned used = 0;
    char what[200];
    int rc = 0;
    /* In the order the protocol document gives: argument count, the values
     * themselves (array references), frames nobody refers to, then types
     * and limits. */
    size_t want = 0, got = 0;
    if (req->op == LMQ__OP_CALL) {
        while (m->args && m->args[want].name)
            want++;
        got = req->args ? json_array_size(req->args) : 0;
        if (got != want) {
            char names[300] = "";
            size_t len = 0;
            for (size_t i = 0; i < want && len < sizeof names; i++)
                len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", i ? ", " : "", m->args[i].name);
            return lmq__failf(err, errlen, LMQ_EARG, "%s.%s takes %zu argument%s%s%s%s, got %zu", dev->name, m->name, want,
                         want == 1 ? "" : "s", want ? " (" : "", names, want ? ")" : "", got);
        }
        for (size_t i = 0; i < got && rc == 0; i++) {
            snprintf(what, sizeof what, "argument %zu '%s' of %s.%s", i + 1, m->args[i].name, dev->name, m->name);
            rc = convert(json_array_get(req->args, i), bin, &used, &job->args[i], what, err, errlen);
            job->nargs = i + 1;
        }
    } else if (req->op == LMQ__OP_SET) {
        snprintf(what, sizeof what, "%s.%s", dev->name, p->name);
        rc = convert(req->value, bin, &used, &job->value, what, err, errlen);
    }
    if (rc != 0)
        return rc;
    /* Every binary frame carries exactly one value: a frame nothing refers
     * to is a client bug worth naming, not something to ignore. */
    size_t nbin = bin ? bin->n : 0;
    for (size_t k = 0; k < nbin; k++)
        if (!(used & (1u << k)))
            return lmq__failf(err, errlen, LMQ_EPROTO, "binary frame %zu is not referenced by the header", k + 1);
    if (req->op == LMQ__OP_CALL) {
        for (size_t i = 0; i < got && rc == 0; i++) {
            const lmq_arg_t *a = &m->args[i];
            snprintf(what, sizeof what, "argument %zu '%s' of %s.%s", i + 1, a->name, dev->name, m->name);
            rc = check_type(&job->args[i], a->type, what, err, errlen);
            if (rc == 0 && a->limited)
                rc = check_limits(&job->args[i], a->min, a->max, a->unit, what, err, errlen);
        }
    } else if (req->op == LMQ__OP_SET) {
        rc = check_type(&job->value, p->type, what, err, errlen);
        if (rc == 0 && p->limited) {
            double lo, hi;
            pthread_mutex_lock(&dev->mu);
            lmq__dev_limits(dev, p, &lo, &hi);
            pthread_mutex_unlock(&dev->mu);
            rc = check_limits(&job->value, lo, hi, p->unit, what, err, errlen);
        }
    }
    return rc;
}
