/* Self-description generated from a device's tables (describe op), and from
 * a driver's static tables (lmq_driver_describe, for documentation). */
#include <stdlib.h>
#include <string.h>
#include "device_internal.h"

static json_t *str(const char *s) { return json_string(s ? s : ""); }

static void add_limits(json_t *j, bool limited, double min, double max)
{
    if (limited) {
        json_object_set_new(j, "min", json_real(min));
        json_object_set_new(j, "max", json_real(max));
    }
}

static json_t *describe_tables(const lmq_driver_t *drv, const char *name, const lmq_method_t *mt,
                               const lmq_property_t *pt, const lmq_stream_t *st)
{
    json_t *methods = json_array(), *props = json_array(), *streams = json_array();
    for (const lmq_method_t *m = mt; m && m->name; m++) {
        json_t *args = json_array();
        for (const lmq_arg_t *a = m->args; a && a->name; a++) {
            json_t *ja = json_pack("{s:s, s:s, s:o, s:o}", "name", a->name, "type", lmq_type_name(a->type), "unit",
                                   str(a->unit), "doc", str(a->doc));
            add_limits(ja, a->limited, a->min, a->max);
            json_array_append_new(args, ja);
        }
        json_t *ret = json_null();
        if (m->ret != LMQ_NONE) {
            ret = json_pack("{s:s, s:o}", "type", lmq_type_name(m->ret), "unit", str(m->ret_unit));
            if (m->ret == LMQ_ARRAY && m->ret_dtype != LMQ_DT_INVALID)
                json_object_set_new(ret, "dtype", json_string(lmq_dtype_name(m->ret_dtype)));
            if (m->ret == LMQ_ARRAY && m->ret_ndim)
                json_object_set_new(ret, "ndim", json_integer(m->ret_ndim));
        }
        json_array_append_new(methods, json_pack("{s:s, s:o, s:o, s:o}", "name", m->name, "doc", str(m->doc), "args",
                                                 args, "returns", ret));
    }
    for (const lmq_property_t *p = pt; p && p->name; p++) {
        json_t *jp = json_pack("{s:s, s:o, s:s, s:o, s:s}", "name", p->name, "doc", str(p->doc), "type",
                               lmq_type_name(p->type), "unit", str(p->unit), "access", p->set ? "rw" : "ro");
        add_limits(jp, p->limited, p->min, p->max);
        json_array_append_new(props, jp);
    }
    for (const lmq_stream_t *s = st; s && s->name; s++) {
        size_t len = strlen(name) + strlen(s->name) + 2;
        char *topic = malloc(len);
        if (topic)
            snprintf(topic, len, "%s/%s", name, s->name);
        json_array_append_new(streams, json_pack("{s:s, s:o, s:o, s:s, s:[], s:f, s:o}", "name", s->name, "topic",
                                                 str(topic), "doc", str(s->doc), "dtype", lmq_dtype_name(s->dtype),
                                                 "shape", "rate_hz", 0.0, "units", str(s->unit)));
        free(topic);
    }
    return json_pack("{s:s, s:s, s:o, s:s, s:b, s:o, s:o, s:o}", "device", name, "driver", drv->name, "description",
                     str(drv->description), "state", "unknown", "open", 0, "methods", methods, "properties", props,
                     "streams", streams);
}

json_t *lmq__describe(lmq_dev_t *dev)
{
    json_t *j = describe_tables(dev->drv, dev->name, dev->methods, dev->props, dev->stream_defs);
    if (!j)
        return NULL;
    json_t *streams = json_object_get(j, "streams"), *props = json_object_get(j, "properties");
    pthread_mutex_lock(&dev->mu);
    for (size_t i = 0; i < dev->nprops; i++) {
        const lmq_property_t *p = &dev->props[i];
        if (!p->limited)
            continue;
        double lo, hi;
        lmq__dev_limits(dev, p, &lo, &hi);
        json_object_set_new(json_array_get(props, i), "min", json_real(lo));
        json_object_set_new(json_array_get(props, i), "max", json_real(hi));
    }
    json_object_set_new(j, "state", json_string(lmq__dev_state_name(dev->dev_state)));
    json_object_set_new(j, "open", json_boolean(dev->is_open));
    bool has_error = dev->dev_state == LMQ__DEV_DISCONNECTED || dev->dev_state == LMQ__DEV_FAULT;
    json_object_set_new(j, "error", has_error ? json_string(dev->open_error) : json_null());
    for (size_t i = 0; i < dev->nstreams; i++) {
        json_t *js = json_array_get(streams, i), *shape = json_object_get(js, "shape");
        for (unsigned d = 0; d < dev->streams[i].ndim; d++)
            json_array_append_new(shape, json_integer((json_int_t)dev->streams[i].shape[d]));
        json_object_set_new(js, "rate_hz", json_real(dev->streams[i].rate_hz));
    }
    pthread_mutex_unlock(&dev->mu);
    return j;
}

char *lmq_driver_describe(const lmq_driver_t *drv, const char *device_name)
{
    if (!drv || !device_name)
        return NULL;
    json_t *j = describe_tables(drv, device_name, drv->methods, drv->properties, drv->streams);
    char *text = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    json_decref(j);
    return text;
}
