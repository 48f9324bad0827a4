/* labmq — sim-daq: a simulated multi-channel data-acquisition board.
 *
 * Analog inputs read wires of the daemon (another simulated instrument's
 * terminals, e.g. "psu1.iout" through a shunt/transimpedance gain), analog
 * outputs drive wires ("<device>.ao<N>"), and a built-in function generator,
 * looped back into a buffered input, streams blocks of samples at the sample
 * rate. Every reading goes through the same ADC model: clipping at the input
 * range and 16-bit quantisation, so what a client sees behaves like a real
 * board's data. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault.h"
#include "labmq/status.h"
#include "sim.h"

#define MAX_AI 64
#define MAX_AO 16
#define MAX_GAIN 1e9
#define AO_LIMIT_V 10.0
#define MAX_RATE_HZ 1e6
#define APERTURE_NS 1000000 /* one conversion plus settling */
#define ADC_BITS 16
#define MAX_CATCHUP_BLOCKS 8

static const double ranges[] = {0.1, 1.0, 10.0};
#define NRANGES (sizeof ranges / sizeof ranges[0])

typedef enum { WAVE_SINE, WAVE_SQUARE, WAVE_NOISE, WAVE_COUNT } wave_t;
static const char *const wave_names[WAVE_COUNT] = {"sine", "square", "noise"};

typedef struct daq {
    lmq__fault_t fault; /* first: see fault.h */
    int64_t channels, ao_channels;
    char ao_wire[MAX_AO][LMQ__SIM_WIRE_LEN]; /* [ao_channels]: "<device>.aoN", made at open */
    char *wires_buf;                         /* owned copy of ai_wires, cut at the commas */
    const char **ai_wire;                    /* [channels], into wires_buf; NULL = unconnected */
    double gain[MAX_AI];                     /* front-end gain per input, V per unit of the wire */
    double range, noise;

    double rate; /* samples/s */
    size_t block;
    wave_t wave;
    double freq, amp;
    double phase; /* generator phase in cycles, [0, 1) */
    /* Sample clock: `done` samples have been streamed since (t0_mono, t0_real). */
    int64_t t0_mono, t0_real;
    uint64_t done;

    lmq__sim_rng_t rng;
} daq_t;

/* Clips at the range and quantises like a bipolar 16-bit converter. */
static double adc(const daq_t *d, double v)
{
    double lsb = 2.0 * d->range / (double)(1 << ADC_BITS);
    if (v > d->range - lsb)
        v = d->range - lsb;
    if (v < -d->range)
        v = -d->range;
    return floor(v / lsb + 0.5) * lsb;
}

/* The signal at an input terminal, before the converter. */
static double input_signal(lmq_dev_t *dev, daq_t *d, int64_t ch)
{
    double v = 0.0;
    /* Unconnected, or wired to a signal nobody drives yet: only noise. */
    if (d->ai_wire[ch] && lmq_dev_wire_get(dev, d->ai_wire[ch], &v) == 0)
        v *= d->gain[ch];
    else
        v = 0.0;
    return v + d->noise * lmq__sim_gauss(&d->rng);
}

static int aperture(lmq_dev_t *dev)
{
    int rc = lmq_dev_sim_sleep(dev, APERTURE_NS);
    return rc ? lmq_dev_fail(dev, rc, "conversion interrupted by shutdown") : 0;
}

/* One conversion of an existing input, for read() and the aiN properties. */
static int convert(lmq_dev_t *dev, daq_t *d, int64_t ch, lmq_value_t *out)
{
    int rc = aperture(dev);
    if (rc == 0)
        *out = lmq_float(adc(d, input_signal(dev, d, ch)));
    return rc;
}

/* ---- methods ---- */

/* Arguments reach the methods checked against the tables daq_configure
 * built (type, and channel numbers this board has). */
static int m_read(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    return convert(dev, state, args[0].u.i, result);
}

static int m_read_all(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    (void)args;
    daq_t *d = state;
    int rc = aperture(dev);
    if (rc)
        return rc;
    size_t shape[1] = {(size_t)d->channels};
    if (lmq_value_set_array(result, LMQ_F64, 1, shape, NULL) != 0)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory for %lld readings", (long long)d->channels);
    double *v = result->u.a.data;
    /* Simultaneous sampling: every channel from the same instant. */
    for (int64_t ch = 0; ch < d->channels; ch++)
        v[ch] = adc(d, input_signal(dev, d, ch));
    return 0;
}

static int m_write_ao(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    (void)result;
    daq_t *d = state;
    const char *wire = d->ao_wire[args[0].u.i];
    int rc = lmq_dev_wire_set(dev, wire, args[1].u.f);
    return rc ? lmq_dev_fail(dev, rc, "cannot drive wire %s", wire) : 0;
}

/* ---- properties ---- */

/* Every input is a property too (ai0, ai0_gain, ...), so a script can `get
 * ai0` like any other reading. The tables are built per device from its
 * `channels` option (configure), so describe lists exactly the inputs this
 * board has; the entry's user pointer carries the channel. */
static int channel_of(lmq_dev_t *dev) { return (int)(uintptr_t)lmq_dev_user(dev); }

static int get_ai(lmq_dev_t *dev, void *state, lmq_value_t *out) { return convert(dev, state, channel_of(dev), out); }

static int get_gain(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    *out = lmq_float(((daq_t *)state)->gain[channel_of(dev)]);
    return 0;
}

static int set_gain(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    ((daq_t *)state)->gain[channel_of(dev)] = in->u.f; /* a float within limits: checked by the daemon */
    return 0;
}

static int get_range(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_float(((daq_t *)state)->range);
    return 0;
}

static int set_range(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    daq_t *d = state;
    double r;
    if (lmq_value_to_double(in, &r) != 0)
        return lmq_dev_fail(dev, LMQ_EARG, "ai_range must be a number");
    /* Like a meter: the smallest range that holds the requested value. */
    for (size_t k = 0; k < NRANGES; k++) {
        if (r <= ranges[k] * (1.0 + 1e-9)) {
            d->range = ranges[k];
            return 0;
        }
    }
    return lmq_dev_fail(dev, LMQ_ERANGE, "ai_range %.3f V exceeds the largest range, 10 V (ranges: 0.1, 1, 10)", r);
}

static int get_waveform(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    return lmq_value_set_string(out, wave_names[((daq_t *)state)->wave]);
}

static int parse_wave(const char *s, wave_t *w)
{
    for (int k = 0; k < WAVE_COUNT; k++) {
        if (strcmp(s, wave_names[k]) == 0) {
            *w = (wave_t)k;
            return 0;
        }
    }
    return -1;
}

static int set_waveform(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    daq_t *d = state;
    if (in->type != LMQ_STRING || parse_wave(in->u.s, &d->wave) != 0)
        return lmq_dev_fail(dev, LMQ_EARG, "waveform '%.32s' unknown: expected sine, square or noise",
                            in->type == LMQ_STRING ? in->u.s : "?");
    return 0;
}

static int get_frequency(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_float(((daq_t *)state)->freq);
    return 0;
}

static int set_frequency(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    daq_t *d = state;
    double f;
    if (lmq_value_to_double(in, &f) != 0)
        return lmq_dev_fail(dev, LMQ_EARG, "frequency must be a number");
    /* The table's limit is the highest rate's; this one depends on the rate. */
    if (f > d->rate / 2)
        return lmq_dev_fail(dev, LMQ_ERANGE, "frequency %.3f Hz outside 0..%.3f Hz (Nyquist limit at %.1f S/s)", f,
                            d->rate / 2, d->rate);
    /* The generator keeps its phase, so the waveform stays continuous. */
    d->freq = f;
    return 0;
}

static int get_amplitude(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_float(((daq_t *)state)->amp);
    return 0;
}

static int set_amplitude(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    daq_t *d = state;
    double a;
    if (lmq_value_to_double(in, &a) != 0)
        return lmq_dev_fail(dev, LMQ_EARG, "amplitude must be a number");
    d->amp = a;
    return 0;
}

static int get_rate(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_float(((daq_t *)state)->rate);
    return 0;
}

static void anchor_clock(daq_t *d)
{
    d->t0_mono = lmq_clock_mono_ns();
    d->t0_real = lmq_clock_real_ns();
    d->done = 0;
}

static int set_rate(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    daq_t *d = state;
    double r;
    if (lmq_value_to_double(in, &r) != 0)
        return lmq_dev_fail(dev, LMQ_EARG, "sample_rate must be a number");
    if (d->freq > r / 2)
        return lmq_dev_fail(dev, LMQ_ERANGE,
                            "sample rate %.1f S/s is below twice the %.3f Hz generator frequency (Nyquist)", r,
                            d->freq);
    int rc = lmq_dev_stream_rate(dev, 0, r / (double)d->block);
    if (rc)
        return lmq_dev_fail(dev, rc, "cannot change the stream rate");
    /* A new sample clock starts now; the blocks already sent keep their times. */
    d->rate = r;
    anchor_clock(d);
    return 0;
}

/* ---- the "wave" stream ---- */

/* Runs the generator over n samples nobody sees. */
static void skip_samples(daq_t *d, double n)
{
    d->phase += d->freq / d->rate * n;
    d->phase -= floor(d->phase);
}

static void generate(daq_t *d, double *out, size_t n)
{
    double step = d->freq / d->rate;
    for (size_t k = 0; k < n; k++) {
        double v;
        switch (d->wave) {
        case WAVE_SQUARE:
            v = d->phase < 0.5 ? d->amp : -d->amp;
            break;
        case WAVE_NOISE:
            v = d->amp * lmq__sim_gauss(&d->rng);
            break;
        default:
            v = d->amp * sin(6.283185307179586 * d->phase);
            break;
        }
        out[k] = adc(d, v + d->noise * lmq__sim_gauss(&d->rng));
        d->phase += step;
        d->phase -= floor(d->phase);
    }
}

static int poll_wave(lmq_dev_t *dev, void *state, int64_t now_ns)
{
    daq_t *d = state;
    double period_ns = 1e9 / d->rate;
    int rc = 0;
    /* The board samples continuously: publish every block completed by now,
     * so a poll delayed by a slow request catches up without a gap. */
    for (int n = 0; n < MAX_CATCHUP_BLOCKS; n++) {
        int64_t end = d->t0_mono + (int64_t)((double)(d->done + d->block) * period_ns);
        if (end > now_ns)
            return rc;
        int64_t t_first = d->t0_real + (int64_t)((double)d->done * period_ns);
        if (!lmq_dev_stream_wanted(dev, 0)) {
            /* Nobody listens: nothing is generated, but the generator's
             * phase moves on, so the wave stays continuous in time. */
            skip_samples(d, (double)d->block);
            d->done += d->block;
            continue;
        }
        if (lmq__fault_streams_down(d)) {
            /* Unplugged: the samples are lost (their seq too, so subscribers
             * count them), but the generator runs on. */
            lmq_dev_stream_skip(dev, 0, 1);
            skip_samples(d, (double)d->block);
            d->done += d->block;
            continue;
        }
        double *buf = malloc(d->block * sizeof *buf);
        if (!buf)
            return lmq_dev_fail(dev, LMQ_EMEM, "out of memory for a %zu-sample block", d->block);
        generate(d, buf, d->block);
        d->done += d->block;
        void *p = buf;
        rc = lmq_dev_publish_take(dev, 0, t_first, &p, d->block * sizeof *buf);
        free(p); /* NULL once the daemon took it */
        if (rc)
            return rc;
    }
    /* Still behind after a burst: a real board's FIFO would overflow here.
     * Skip to the present (advancing the phase over the lost samples). */
    int64_t end = d->t0_mono + (int64_t)((double)(d->done + d->block) * period_ns);
    if (end <= now_ns) {
        /* Whole blocks are lost, and their sequence numbers with them, so
         * every subscriber counts the loss exactly; the clock stays on its
         * grid, so t_ns keeps matching seq. */
        uint64_t blocks = (uint64_t)(((double)(now_ns - d->t0_mono) / period_ns - (double)d->done) / (double)d->block);
        skip_samples(d, (double)(blocks * d->block));
        d->done += blocks * d->block;
        lmq_dev_stream_skip(dev, 0, blocks);
        lmq_log(lmq_dev_log(dev), LMQ_LOG_WARN, lmq_dev_name(dev),
                "wave: acquisition overrun, %llu blocks (%llu samples) lost", (unsigned long long)blocks,
                (unsigned long long)(blocks * d->block));
    }
    return rc;
}

/* ---- open / close ---- */

static void daq_close(lmq_dev_t *dev, void *state)
{
    (void)dev;
    daq_t *d = state;
    if (!d)
        return;
    free(d->ai_wire);
    free(d->wires_buf);
    free(d);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        *--e = '\0';
    return s;
}

static int parse_wires(lmq_dev_t *dev, daq_t *d, const char *list)
{
    d->wires_buf = strdup(list);
    d->ai_wire = calloc((size_t)d->channels, sizeof *d->ai_wire);
    if (!d->wires_buf || !d->ai_wire)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
    int64_t ch = 0;
    for (char *s = d->wires_buf; s; ch++) {
        char *comma = strchr(s, ',');
        if (comma)
            *comma = '\0';
        char *name = trim(s);
        s = comma ? comma + 1 : NULL;
        if (*name == '\0')
            continue;
        if (ch >= d->channels)
            return lmq_dev_fail(dev, LMQ_ECONFIG, "ai_wires names '%s' for ai%lld, but the DAQ has %lld inputs", name,
                                (long long)ch, (long long)d->channels);
        if (strlen(name) >= LMQ__SIM_WIRE_LEN)
            return lmq_dev_fail(dev, LMQ_ECONFIG, "ai_wires: wire name for ai%lld is too long", (long long)ch);
        d->ai_wire[ch] = name;
    }
    return 0;
}

static int daq_open(lmq_dev_t *dev, void **state)
{
    /* A simulated unplug outlasts the close: no open until it is over. */
    int plugged = lmq__fault_plugged(dev);
    if (plugged)
        return plugged;
    daq_t *d = calloc(1, sizeof *d);
    if (!d)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
    d->channels = lmq_dev_opt_int(dev, "channels");
    d->ao_channels = lmq_dev_opt_int(dev, "ao_channels");
    double gain = lmq_dev_opt_float(dev, "ai_gain");
    for (int k = 0; k < MAX_AI; k++)
        d->gain[k] = gain;
    d->noise = lmq_dev_opt_float(dev, "noise");
    d->rate = lmq_dev_opt_float(dev, "sample_rate");
    int64_t block = lmq_dev_opt_int(dev, "block_size");
    d->freq = lmq_dev_opt_float(dev, "frequency");
    d->amp = lmq_dev_opt_float(dev, "amplitude");
    d->range = ranges[NRANGES - 1];
    const char *wave = lmq_dev_opt_str(dev, "waveform");
    int rc = 0;

    if (d->channels < 1 || d->channels > MAX_AI)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "channels %lld outside 1..%d", (long long)d->channels, MAX_AI);
    else if (d->ao_channels < 0 || d->ao_channels > MAX_AO)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "ao_channels %lld outside 0..%d", (long long)d->ao_channels, MAX_AO);
    else if (!(fabs(gain) <= MAX_GAIN))
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "ai_gain %g outside -1e9..1e9", gain);
    else if (!(d->noise >= 0.0) || d->noise > 1.0)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "noise %g V outside 0..1 V rms", d->noise);
    else if (!(d->rate >= 1.0) || d->rate > MAX_RATE_HZ)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "sample_rate %g outside 1..%.0f S/s", d->rate, MAX_RATE_HZ);
    /* One block must fit one protocol frame (64 MiB). */
    else if (block < 1 || block > (64 << 20) / 8)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "block_size %lld outside 1..%d samples", (long long)block, (64 << 20) / 8);
    else if (parse_wave(wave, &d->wave) != 0)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "waveform '%s' unknown: expected sine, square or noise", wave);
    else if (!(d->freq >= 0.0) || d->freq > d->rate / 2)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "frequency %g Hz outside 0..%g Hz (Nyquist)", d->freq, d->rate / 2);
    else if (!(d->amp >= 0.0) || d->amp > AO_LIMIT_V)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "amplitude %g V outside 0..%.0f V", d->amp, AO_LIMIT_V);
    if (rc == 0)
        rc = parse_wires(dev, d, lmq_dev_opt_str(dev, "ai_wires"));
    if (rc == 0) {
        /* The sample clock starts before the daemon's poll schedule does, so
         * each poll finds its block complete. */
        anchor_clock(d);
        d->block = (size_t)block;
        size_t shape[1] = {d->block};
        rc = lmq_dev_stream_shape(dev, 0, 1, shape);
        if (rc == 0)
            rc = lmq_dev_stream_rate(dev, 0, d->rate / (double)d->block);
        if (rc)
            rc = lmq_dev_fail(dev, rc, "cannot set up the wave stream");
    }
    /* Outputs come up at 0 V, as after a power cycle. */
    for (int64_t ch = 0; rc == 0 && ch < d->ao_channels; ch++) {
        char signal[24];
        snprintf(signal, sizeof signal, "ao%lld", (long long)ch);
        rc = lmq__sim_wire_name(dev, d->ao_wire[ch], signal);
        if (rc == 0 && (rc = lmq_dev_wire_set(dev, d->ao_wire[ch], 0.0)) != 0)
            rc = lmq_dev_fail(dev, rc, "cannot drive wire %s", d->ao_wire[ch]);
    }
    if (rc) {
        daq_close(dev, d);
        return rc;
    }
    lmq__sim_rng_seed(&d->rng, lmq_dev_name(dev), lmq_dev_opt_int(dev, "seed"));
    *state = d;
    return 0;
}

/* ---- tables ---- */

static const lmq_option_t daq_options[] = {
    {.name = "channels", .type = LMQ_INT, .def = "4", .doc = "analog inputs (1..64)"},
    {.name = "ai_wires",
     .type = LMQ_STRING,
     .def = "",
     .doc = "comma list of the wire each input reads, e.g. \"psu1.iout,psu1.vout,,daq1.ao0\"; empty = unconnected"},
    {.name = "ai_gain",
     .type = LMQ_FLOAT,
     .def = "1.0",
     .doc = "front-end gain of every input in V per unit of its wire (a shunt or transimpedance)"},
    {.name = "ao_channels", .type = LMQ_INT, .def = "2", .doc = "analog outputs (0..16), driving wires <device>.aoN"},
    {.name = "sample_rate", .type = LMQ_FLOAT, .def = "10000", .doc = "samples per second of the wave stream"},
    {.name = "block_size", .type = LMQ_INT, .def = "1000", .doc = "samples per published block"},
    {.name = "waveform", .type = LMQ_STRING, .def = "sine", .doc = "generator waveform: sine, square or noise"},
    {.name = "frequency", .type = LMQ_FLOAT, .def = "50", .doc = "generator frequency in Hz"},
    {.name = "amplitude", .type = LMQ_FLOAT, .def = "1", .doc = "generator amplitude in V"},
    {.name = "noise", .type = LMQ_FLOAT, .def = "1e-4", .doc = "input noise in V rms"},
    {.name = "seed", .type = LMQ_INT, .def = "0", .doc = "noise seed (combined with the device name)"},
    {.name = NULL},
};

static const lmq_property_t daq_common_properties[] = {
    {.name = "ai_range",
     .doc = "input range, +-V (0.1, 1 or 10; rounds up to the next range)",
     .type = LMQ_FLOAT,
     .unit = "V",
     .limited = true,
     .min = 0.0,
     .max = 10.0,
     .get = get_range,
     .set = set_range},
    {.name = "waveform",
     .doc = "generator waveform: sine, square or noise",
     .type = LMQ_STRING,
     .unit = "",
     .get = get_waveform,
     .set = set_waveform},
    {.name = "frequency",
     .doc = "generator frequency (up to half the sample rate)",
     .type = LMQ_FLOAT,
     .unit = "Hz",
     .limited = true,
     .min = 0.0,
     .max = MAX_RATE_HZ / 2,
     .get = get_frequency,
     .set = set_frequency},
    {.name = "amplitude",
     .doc = "generator amplitude",
     .type = LMQ_FLOAT,
     .unit = "V",
     .limited = true,
     .min = 0.0,
     .max = AO_LIMIT_V,
     .get = get_amplitude,
     .set = set_amplitude},
    {.name = "sample_rate",
     .doc = "samples per second of the wave stream",
     .type = LMQ_FLOAT,
     .unit = "Hz",
     .limited = true,
     .min = 1.0,
     .max = MAX_RATE_HZ,
     .get = get_rate,
     .set = set_rate},
    LMQ__FAULT_PROPERTY,
    {.name = NULL},
};
#define NCOMMON (sizeof daq_common_properties / sizeof daq_common_properties[0]) /* with the terminator */

static const lmq_stream_t daq_streams[] = {
    {.name = "wave",
     .doc = "the generator looped back into a buffered input: block_size samples per block",
     .dtype = LMQ_F64,
     .unit = "V",
     .poll = poll_wave},
    {.name = NULL},
};

/* One device's tables, in one allocation. */
typedef struct daq_tables {
    lmq_method_t methods[4];
    lmq_arg_t read_args[2], ao_args[3];
    lmq_property_t props[2 * MAX_AI + NCOMMON];
    char names[2 * MAX_AI][24];
    char docs[2 * MAX_AI][96];
    char read_doc[64], ao_doc[64];
} daq_tables_t;

static void daq_release(lmq_tables_t *t) { free(t->user); }

static int daq_configure(lmq_dev_t *dev, lmq_tables_t *tables)
{
    int64_t channels = lmq_dev_opt_int(dev, "channels"), ao = lmq_dev_opt_int(dev, "ao_channels");
    if (channels < 1 || channels > MAX_AI)
        return lmq_dev_fail(dev, LMQ_ECONFIG, "channels %lld outside 1..%d", (long long)channels, MAX_AI);
    if (ao < 0 || ao > MAX_AO)
        return lmq_dev_fail(dev, LMQ_ECONFIG, "ao_channels %lld outside 0..%d", (long long)ao, MAX_AO);
    daq_tables_t *t = calloc(1, sizeof *t);
    if (!t)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
    snprintf(t->read_doc, sizeof t->read_doc, "analog input number, 0..%lld", (long long)channels - 1);
    t->read_args[0] = (lmq_arg_t){.name = "channel",
                                  .type = LMQ_INT,
                                  .unit = "",
                                  .doc = t->read_doc,
                                  .limited = true,
                                  .min = 0,
                                  .max = (double)(channels - 1)};
    size_t m = 0;
    t->methods[m++] = (lmq_method_t){.name = "read",
                                     .doc = "one conversion of an analog input",
                                     .args = t->read_args,
                                     .ret = LMQ_FLOAT,
                                     .ret_unit = "V",
                                     .fn = m_read};
    t->methods[m++] = (lmq_method_t){.name = "read_all",
                                     .doc = "one simultaneous conversion of every analog input",
                                     .ret = LMQ_ARRAY,
                                     .ret_unit = "V",
                                     .ret_dtype = LMQ_F64,
                                     .ret_ndim = 1,
                                     .fn = m_read_all};
    if (ao > 0) {
        snprintf(t->ao_doc, sizeof t->ao_doc, "analog output number, 0..%lld", (long long)ao - 1);
        t->ao_args[0] = (lmq_arg_t){
            .name = "channel", .type = LMQ_INT, .unit = "", .doc = t->ao_doc, .limited = true, .max = (double)(ao - 1)};
        t->ao_args[1] = (lmq_arg_t){.name = "volts",
                                    .type = LMQ_FLOAT,
                                    .unit = "V",
                                    .doc = "output voltage",
                                    .limited = true,
                                    .min = -AO_LIMIT_V,
                                    .max = AO_LIMIT_V};
        t->methods[m++] = (lmq_method_t){
            .name = "write_ao", .doc = "sets an analog output", .args = t->ao_args, .ret = LMQ_NONE, .fn = m_write_ao};
    }
    size_t k = 0;
    for (int64_t ch = 0; ch < channels; ch++) {
        const void *user = (const void *)(uintptr_t)ch;
        snprintf(t->names[k], sizeof t->names[k], "ai%lld", (long long)ch);
        snprintf(t->docs[k], sizeof t->docs[k], "one conversion of analog input %lld", (long long)ch);
        t->props[k] = (lmq_property_t){
            .name = t->names[k], .doc = t->docs[k], .type = LMQ_FLOAT, .unit = "V", .get = get_ai, .user = user};
        k++;
        snprintf(t->names[k], sizeof t->names[k], "ai%lld_gain", (long long)ch);
        snprintf(t->docs[k], sizeof t->docs[k], "front-end gain of ai%lld (V per unit of its wire)", (long long)ch);
        t->props[k] = (lmq_property_t){.name = t->names[k],
                                       .doc = t->docs[k],
                                       .type = LMQ_FLOAT,
                                       .unit = "V/unit",
                                       .limited = true,
                                       .min = -MAX_GAIN,
                                       .max = MAX_GAIN,
                                       .get = get_gain,
                                       .set = set_gain,
                                       .user = user};
        k++;
    }
    memcpy(&t->props[k], daq_common_properties, sizeof daq_common_properties);
    *tables = (lmq_tables_t){
        .methods = t->methods, .properties = t->props, .streams = daq_streams, .user = t, .release = daq_release};
    return 0;
}

const lmq_driver_t lmq__sim_daq = {
    .name = "sim-daq",
    .description = "simulated DAQ board: wired analog inputs and outputs, streamed function generator",
    .options = daq_options,
    .open = daq_open,
    .close = daq_close,
    .before = lmq__fault_before,
    .check = lmq__fault_check,
    .configure = daq_configure,
    .methods = NULL, /* per device: see daq_configure */
    .properties = daq_common_properties,
    .streams = daq_streams,
};
