/* An out-of-tree labmq driver: a pulse counter with a gate time, standing in
 * for a lab's own hardware (a camera SDK, a motion stage). It shows the whole
 * driver contract: options, open/close, a method, properties with limits, a
 * stream, and LMQ_DRIVER_EXPORT so labmqd can load it from a config:
 *
 *   devices:
 *     - name: counter1
 *       driver: ./libcounter.so          # relative to the config file
 *       options: {rate_hz: 1000}
 *
 * The "hardware" is simulated: counts arrive at rate_hz with Poisson noise. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <labmq/labmq.h>

typedef struct counter {
    double rate_hz;  /* mean count rate */
    double gate_s;   /* counting time per reading */
    uint64_t total;  /* counts since open */
    uint64_t rng;
} counter_t;

static double uniform(counter_t *c)
{
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return (double)(c->rng >> 11) / 9007199254740992.0;
}

/* Counts in one gate: Poisson, by its normal approximation for large means. */
static int64_t count_once(counter_t *c)
{
    double mean = c->rate_hz * c->gate_s;
    double u1 = uniform(c) + 1e-300, u2 = uniform(c);
    double n = mean + sqrt(mean) * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
    int64_t k = n < 0 ? 0 : (int64_t)llround(n);
    c->total += (uint64_t)k;
    return k;
}

static int open_counter(lmq_dev_t *dev, void **state)
{
    counter_t *c = calloc(1, sizeof *c);
    if (!c)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
    c->rate_hz = lmq_dev_opt_float(dev, "rate_hz");
    c->gate_s = 0.1;
    c->rng = 0x9E3779B97F4A7C15ull;
    lmq_dev_stream_rate(dev, 0, 10);
    size_t shape[1] = {1};
    lmq_dev_stream_shape(dev, 0, 1, shape);
    *state = c;
    return 0;
}

static void close_counter(lmq_dev_t *dev, void *state)
{
    (void)dev;
    free(state);
}

static int m_count(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    counter_t *c = state;
    int64_t sum = 0;
    for (int64_t i = 0; i < args[0].u.i; i++) {
        int rc = lmq_dev_sleep(dev, (int64_t)(c->gate_s * 1e9)); /* the gate really takes its time */
        if (rc)
            return lmq_dev_fail(dev, rc, "interrupted by shutdown");
        sum += count_once(c);
    }
    *result = lmq_int(sum);
    return 0;
}

static int get_gate(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_float(((counter_t *)state)->gate_s);
    return 0;
}

static int set_gate(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    (void)dev;
    ((counter_t *)state)->gate_s = in->u.f; /* a float within limits: the daemon checked it */
    return 0;
}

static int get_total(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_int((int64_t)((counter_t *)state)->total);
    return 0;
}

static int poll_rate(lmq_dev_t *dev, void *state, int64_t now_ns)
{
    (void)now_ns;
    counter_t *c = state;
    double r = (double)count_once(c) / c->gate_s;
    return lmq_dev_publish(dev, 0, lmq_clock_real_ns(), &r, sizeof r);
}

static const lmq_option_t options[] = {
    {.name = "rate_hz", .type = LMQ_FLOAT, .def = "1000", .doc = "mean count rate of the simulated source"},
    {.name = NULL},
};

static const lmq_arg_t count_args[] = {
    {.name = "gates", .type = LMQ_INT, .unit = "", .doc = "gates to sum", .limited = true, .min = 1, .max = 100},
    {.name = NULL},
};

static const lmq_method_t methods[] = {
    {.name = "count", .doc = "counts over `gates` gate times", .args = count_args, .ret = LMQ_INT, .fn = m_count},
    {.name = NULL},
};

static const lmq_property_t properties[] = {
    {.name = "gate",
     .doc = "gate time",
     .type = LMQ_FLOAT,
     .unit = "s",
     .limited = true,
     .min = 0.001,
     .max = 10,
     .get = get_gate,
     .set = set_gate},
    {.name = "total", .doc = "counts since open", .type = LMQ_INT, .unit = "", .get = get_total},
    {.name = NULL},
};

static const lmq_stream_t streams[] = {
    {.name = "rate", .doc = "count rate, one gate per block", .dtype = LMQ_F64, .unit = "Hz", .poll = poll_rate},
    {.name = NULL},
};

static const lmq_driver_t counter_driver = {
    .name = "counter",
    .description = "pulse counter with a gate time (an out-of-tree example driver)",
    .options = options,
    .open = open_counter,
    .close = close_counter,
    .methods = methods,
    .properties = properties,
    .streams = streams,
};

LMQ_DRIVER_EXPORT(counter_driver)
