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
    char *wires_buf; /* owned copy of ai_wires, cut at the commas */
    const char **ai_wire; /* [channels], into wires_buf; NULL = unconnected */
    double gain[MAX_AI]; /* front-end gain per input, V per unit of the wire */
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

static int check_ai(lmq_dev_t *dev, const daq_t *d, int64_t ch)
{
    if (ch < 0 || ch >= d->channels)
        return lmq_dev_fail(dev, LMQ_ERANGE, "analog input %lld does not exist: this DAQ has ai0..ai%lld",
                            (long long)ch, (long long)d->channels - 1);
    return 0;
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
    int rc = lmq_dev_sleep(dev, APERTURE_NS);
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

static int m_read(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    daq_t *d = state;
    if (args[0].type != LMQ_INT)
        return lmq_dev_fail(dev, LMQ_EARG, "channel must be an integer");
    int rc = check_ai(dev, d, args[0].u.i);
    return rc ? rc : convert(dev, d, args[0].u.i, result);
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
    double volts;
    if (args[0].type != LMQ_INT || lmq_value_to_double(&args[1], &volts) != 0)
        return lmq_dev_fail(dev, LMQ_EARG, "write_ao takes (channel: int, volts: float)");
    int64_t ch = args[0].u.i;
    if (ch < 0 || ch >= d->ao_channels) {
        if (d->ao_channels == 0)
            return lmq_dev_fail(dev, LMQ_ERANGE, "analog output %lld does not exist: this DAQ has none",
                                (long long)ch);
        return lmq_dev_fail(dev, LMQ_ERANGE, "analog output %lld does not exist: this DAQ has ao0..ao%lld",
                            (long long)ch, (long long)d->ao_channels - 1);
    }
    if (!(fabs(volts) <= AO_LIMIT_V))
        return lmq_dev_fail(dev, LMQ_ERANGE, "%.3f V is outside the analog output range of +-%.1f V", volts,
                            AO_LIMIT_V);
    int rc = lmq_dev_wire_set(dev, d->ao_wire[ch], volts);
    return rc ? lmq_dev_fail(dev, rc, "cannot drive wire %s", d->ao_wire[ch]) : 0;
}

/* ---- properties ---- */

/* The first inputs are properties too, so a script can `get ai0` like any
 * other reading; read(channel) reaches all of them. */
static int ai_exists(lmq_dev_t *dev, const daq_t *d, int ch)
{
    if (ch >= d->channels)
        return lmq_dev_fail(dev, LMQ_ENOTFOUND, "ai%d does not exist: this DAQ has %lld analog inputs", ch,
                            (long long)d->channels);
    return 0;
}

static int get_ai(lmq_dev_t *dev, daq_t *d, int ch, lmq_value_t *out)
{
    int rc = ai_exists(dev, d, ch);
    return rc ? rc : convert(dev, d, ch, out);
}

static int get_gain(lmq_dev_t *dev, daq_t *d, int ch, lmq_value_t *out)
{
    int rc = ai_exists(dev, d, ch);
    if (rc == 0)
        *out = lmq_float(d->gain[ch]);
    return rc;
}

static int set_gain(lmq_dev_t *dev, daq_t *d, int ch, const lmq_value_t *in)
{
    double g;
    int rc = ai_exists(dev, d, ch);
    if (rc)
        return rc;
    if (lmq_value_to_double(in, &g) != 0)
        return lmq_dev_fail(dev, LMQ_EARG, "ai%d_gain must be a number", ch);
    d->gain[ch] = g;
    return 0;
}

#define AI_ACCESSORS(n)                                                                                        \
    static int get_ai##n(lmq_dev_t *dev, void *state, lmq_value_t *out) { return get_ai(dev, state, n, out); } \
    static int get_ai##n##_gain(lmq_dev_t *dev, void *state, lmq_value_t *out)                                 \
    {                                                                                                          \
        return get_gain(dev, state, n, out);                                                                   \
    }                                                                                                          \
    static int set_ai##n##_gain(lmq_dev_t *dev, void *state, const lmq_value_t *in)                            \
    {                                                                                                          \
        return set_gain(dev, state, n, in);                                                                    \
    }
AI_ACCESSORS(0)
AI_ACCESSORS(1)
AI_ACCESSORS(2)
AI_ACCESSORS(3)
AI_ACCESSORS(4)
AI_ACCESSORS(5)
AI_ACCESSORS(6)
AI_ACCESSORS(7)

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
        if (lmq__fault_streams_down(d)) {
            /* Unplugged: the samples are lost, but the generator runs on. */
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
        double lost = (double)(now_ns - d->t0_mono) / period_ns - (double)d->done;
        skip_samples(d, lost);
        lmq_log(lmq_dev_log(dev), LMQ_LOG_WARN, lmq_dev_name(dev), "wave: acquisition overrun, %.0f samples dropped",
                lost);
        anchor_clock(d);
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
    {"channels", LMQ_INT, "4", "analog inputs (1..64)"},
    {"ai_wires", LMQ_STRING, "",
     "comma list of the wire each input reads, e.g. \"psu1.iout,psu1.vout,,daq1.ao0\"; empty = unconnected"},
    {"ai_gain", LMQ_FLOAT, "1.0", "front-end gain of every input in V per unit of its wire (a shunt or transimpedance)"},
    {"ao_channels", LMQ_INT, "2", "analog outputs (0..16), driving wires <device>.aoN"},
    {"sample_rate", LMQ_FLOAT, "10000", "samples per second of the wave stream"},
    {"block_size", LMQ_INT, "1000", "samples per published block"},
    {"waveform", LMQ_STRING, "sine", "generator waveform: sine, square or noise"},
    {"frequency", LMQ_FLOAT, "50", "generator frequency in Hz"},
    {"amplitude", LMQ_FLOAT, "1", "generator amplitude in V"},
    {"noise", LMQ_FLOAT, "1e-4", "input noise in V rms"},
    {"seed", LMQ_INT, "0", "noise seed (combined with the device name)"},
    {NULL, LMQ_NONE, NULL, NULL},
};

static const lmq_arg_t read_args[] = {
    {"channel", LMQ_INT, "", "analog input number"},
    {NULL, LMQ_NONE, NULL, NULL},
};

static const lmq_arg_t write_ao_args[] = {
    {"channel", LMQ_INT, "", "analog output number"},
    {"volts", LMQ_FLOAT, "V", "output voltage, -10..10"},
    {NULL, LMQ_NONE, NULL, NULL},
};

static const lmq_method_t daq_methods[] = {
    {"read", "one conversion of an analog input", read_args, LMQ_FLOAT, "V", m_read},
    {"read_all", "one simultaneous conversion of every analog input", NULL, LMQ_ARRAY, "V", m_read_all},
    {"write_ao", "sets an analog output", write_ao_args, LMQ_NONE, "", m_write_ao},
    {.name = NULL},
};

#define AI_PROPERTIES(n)                                                                                       \
    {"ai" #n, "one conversion of analog input " #n, LMQ_FLOAT, "V", false, 0, 0, get_ai##n, NULL},              \
    {"ai" #n "_gain", "front-end gain of ai" #n " (V per unit of its wire: a shunt or transimpedance)",       \
     LMQ_FLOAT, "V/unit", true, -MAX_GAIN, MAX_GAIN, get_ai##n##_gain, set_ai##n##_gain}

static const lmq_property_t daq_properties[] = {
    AI_PROPERTIES(0),
    AI_PROPERTIES(1),
    AI_PROPERTIES(2),
    AI_PROPERTIES(3),
    AI_PROPERTIES(4),
    AI_PROPERTIES(5),
    AI_PROPERTIES(6),
    AI_PROPERTIES(7),
    {"ai_range", "input range, +-V (0.1, 1 or 10; rounds up to the next range)", LMQ_FLOAT, "V", true, 0.0, 10.0,
     get_range, set_range},
    {"waveform", "generator waveform: sine, square or noise", LMQ_STRING, "", false, 0, 0, get_waveform,
     set_waveform},
    {"frequency", "generator frequency (up to half the sample rate)", LMQ_FLOAT, "Hz", true, 0.0, MAX_RATE_HZ / 2,
     get_frequency, set_frequency},
    {"amplitude", "generator amplitude", LMQ_FLOAT, "V", true, 0.0, AO_LIMIT_V, get_amplitude, set_amplitude},
    {"sample_rate", "samples per second of the wave stream", LMQ_FLOAT, "Hz", true, 1.0, MAX_RATE_HZ, get_rate,
     set_rate},
    LMQ__FAULT_PROPERTY,
    {.name = NULL},
};

static const lmq_stream_t daq_streams[] = {
    {"wave", "the generator looped back into a buffered input: block_size samples per block", LMQ_F64, "V",
     poll_wave},
    {.name = NULL},
};

const lmq_driver_t lmq__sim_daq = {
    .name = "sim-daq",
    .description = "simulated DAQ board: wired analog inputs and outputs, streamed function generator",
    .options = daq_options,
    .open = daq_open,
    .close = daq_close,
    .before = lmq__fault_before,
    .methods = daq_methods,
    .properties = daq_properties,
    .streams = daq_streams,
};
