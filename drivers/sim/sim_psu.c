/* labmq — sim-psu: a simulated programmable DC power supply driving a load.
 *
 * The supply regulates either its output voltage (CV) or its output current
 * (CC), whichever limit the load reaches first, like a bench supply. The load is
 * a series resistor with an optional LED-like diode (Shockley model), plus an
 * optional voltage-controlled conductance in parallel (a MOSFET electronic
 * load whose gate is another device's wire, e.g. a DAQ's analog output).
 *
 * Physical values are exported on the wires "<device>.vout" and
 * "<device>.iout" (noise-free: they are the analog signals at the terminals;
 * each instrument that reads them adds its own noise). They are refreshed on
 * every measurement and by the monitor stream, so a DAQ wired to them follows
 * the supply even when nobody queries it. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fault.h"
#include "labmq/status.h"
#include "sim.h"

/* The model's absolute ratings; the max_* options may only lower them, the
 * way a supply's OVP/OCP settings do. */
#define RATED_V 60.0
#define RATED_I 10.0

#define APERTURE_NS 2000000 /* one DMM reading of the output */
#define SWEEP_MAX_POINTS 10000

/* Shockley diode: I = Is (exp(V / (n Vt)) - 1); these give ~1.9 V at 20 mA,
 * a red LED. */
#define DIODE_IS 1e-18
#define DIODE_NVT (2.0 * 0.025852)

/* Electronic load: conductance gm * (Vgate - Vth) above threshold. */
#define CTL_GM 0.02 /* S per V */
#define CTL_VTH 1.0 /* V */

typedef enum { MODE_OFF, MODE_CV, MODE_CC } psu_mode_t;
static const char *const mode_names[] = {"OFF", "CV", "CC"};

typedef struct psu {
    lmq__fault_t fault; /* first: see fault.h */
    double max_v, max_i;
    double load_r;
    bool diode;
    double slew;                      /* V/s; 0 = instant */
    double noise;                     /* std dev as a fraction of the range */
    char ctl_wire[LMQ__SIM_WIRE_LEN]; /* "" = no electronic load */
    char wire_v[LMQ__SIM_WIRE_LEN], wire_i[LMQ__SIM_WIRE_LEN];
    int transcript_fd; /* -1 = none */

    double v_set, i_lim;
    bool output;
    /* The output ramps from ramp_from (at ramp_t0) towards v_set. */
    double ramp_from;
    int64_t ramp_t0;

    lmq__sim_rng_t rng;
} psu_t;

/* ---- the circuit ---- */

/* Current through resistor + diode at terminal voltage v. */
static double branch_current(const psu_t *p, double v)
{
    if (v <= 0.0)
        return 0.0;
    if (!p->diode)
        return v / p->load_r;
    /* Solve v = i R + nVt ln(1 + i/Is) for i: the left side grows
     * monotonically in i, so bisection on [0, v/R] always converges. */
    double lo = 0.0, hi = v / p->load_r;
    for (int k = 0; k < 200 && hi - lo > 1e-15 * hi; k++) {
        double mid = 0.5 * (lo + hi);
        double f = mid * p->load_r + DIODE_NVT * log1p(mid / DIODE_IS) - v;
        if (f > 0)
            hi = mid;
        else
            lo = mid;
    }
    return 0.5 * (lo + hi);
}

static double control_conductance(lmq_dev_t *dev, const psu_t *p)
{
    double vg = 0.0;
    /* An unset wire is an unconnected gate: pulled down, the load is off. */
    if (p->ctl_wire[0] == '\0' || lmq_dev_wire_get(dev, p->ctl_wire, &vg) != 0)
        return 0.0;
    return vg > CTL_VTH ? CTL_GM * (vg - CTL_VTH) : 0.0;
}

static double load_current(const psu_t *p, double g, double v) { return branch_current(p, v) + g * (v > 0 ? v : 0.0); }

/* Programmed output voltage at `now`, following the slew-rate ramp. */
static double ramp_voltage(const psu_t *p, int64_t now)
{
    double span = p->v_set - p->ramp_from;
    if (p->slew <= 0.0 || span == 0.0)
        return p->v_set;
    double moved = p->slew * (double)(now - p->ramp_t0) * 1e-9;
    if (moved >= fabs(span))
        return p->v_set;
    return p->ramp_from + (span > 0 ? moved : -moved);
}

static void retarget(psu_t *p, double v_new, int64_t now)
{
    p->ramp_from = p->output ? ramp_voltage(p, now) : 0.0;
    p->ramp_t0 = now;
    p->v_set = v_new;
}

/* Solves the operating point at `now` and exports it on the wires; v_out and
 * i_out may be NULL. */
static psu_mode_t operate(lmq_dev_t *dev, psu_t *p, int64_t now, double *v_out, double *i_out)
{
    double v = 0.0, i = 0.0;
    psu_mode_t mode = MODE_OFF;
    if (p->output) {
        double g = control_conductance(dev, p);
        double vp = ramp_voltage(p, now);
        i = load_current(p, g, vp);
        if (i <= p->i_lim) {
            v = vp;
            mode = MODE_CV;
        } else {
            /* Current-limited: the voltage falls until the load draws exactly
             * the limit; load_current is monotonic in v. */
            double lo = 0.0, hi = vp;
            for (int k = 0; k < 200 && hi - lo > 1e-15 * (hi > 1.0 ? hi : 1.0); k++) {
                double mid = 0.5 * (lo + hi);
                if (load_current(p, g, mid) > p->i_lim)
                    hi = mid;
                else
                    lo = mid;
            }
            v = 0.5 * (lo + hi);
            i = p->i_lim;
            mode = MODE_CC;
        }
    }
    lmq_dev_wire_set(dev, p->wire_v, v);
    lmq_dev_wire_set(dev, p->wire_i, i);
    if (v_out)
        *v_out = v;
    if (i_out)
        *i_out = i;
    return mode;
}

/* The meter's noise on a reading of the terminals. */
static void add_meter_noise(psu_t *p, double *v, double *i)
{
    *v += p->noise * p->max_v * lmq__sim_gauss(&p->rng);
    *i += p->noise * p->max_i * lmq__sim_gauss(&p->rng);
}

/* One reading as the instrument's meter sees it: an aperture, then the
 * operating point at its end plus meter noise. */
static int measure(lmq_dev_t *dev, psu_t *p, double *v, double *i)
{
    int rc = lmq_dev_sim_sleep(dev, APERTURE_NS);
    if (rc)
        return lmq_dev_fail(dev, rc, "measurement interrupted by shutdown");
    operate(dev, p, lmq_dev_sim_ns(dev), v, i);
    add_meter_noise(p, v, i);
    return 0;
}

/* A setpoint change returns once the output has slewed to it (like a
 * supply answering *OPC? after the ramp), and refreshes the wires then, so
 * an instrument wired to the output never reads the value from before the
 * change. */
static int settle(lmq_dev_t *dev, psu_t *p)
{
    int64_t now = lmq_dev_sim_ns(dev);
    if (p->output && p->slew > 0.0) {
        double left = fabs(p->v_set - ramp_voltage(p, now)) / p->slew;
        if (left > 0 && lmq_dev_sim_sleep(dev, (int64_t)(left * 1e9)) != 0)
            return lmq_dev_fail(dev, LMQ_ECLOSED, "interrupted by shutdown while the output slewed");
    }
    operate(dev, p, lmq_dev_sim_ns(dev), NULL, NULL);
    return 0;
}

/* ---- properties ---- */

/* voltage and current_limit need no range checks here: open() narrows their
 * limits to [0, max_*] and the daemon rejects writes outside them before the
 * setter runs. */

static int get_voltage(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_float(((psu_t *)state)->v_set);
    return 0;
}

static int set_voltage(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    psu_t *p = state;
    double v;
    if (lmq_value_to_double(in, &v) != 0)
        return lmq_dev_fail(dev, LMQ_EARG, "voltage must be a number");
    retarget(p, v, lmq_dev_sim_ns(dev));
    return settle(dev, p);
}

static int get_current_limit(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_float(((psu_t *)state)->i_lim);
    return 0;
}

static int set_current_limit(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    psu_t *p = state;
    double a;
    if (lmq_value_to_double(in, &a) != 0)
        return lmq_dev_fail(dev, LMQ_EARG, "current_limit must be a number");
    p->i_lim = a;
    operate(dev, p, lmq_dev_sim_ns(dev), NULL, NULL);
    return 0;
}

static int get_output(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    (void)dev;
    *out = lmq_bool(((psu_t *)state)->output);
    return 0;
}

static int set_output(lmq_dev_t *dev, void *state, const lmq_value_t *in)
{
    psu_t *p = state;
    if (in->type != LMQ_BOOL)
        return lmq_dev_fail(dev, LMQ_EARG, "output must be true or false");
    int64_t now = lmq_dev_sim_ns(dev);
    if (in->u.b && !p->output) {
        /* Switching on ramps up from 0 V, as a real output stage does. */
        p->ramp_from = 0.0;
        p->ramp_t0 = now;
    }
    p->output = in->u.b;
    return settle(dev, p);
}

static int get_measured_voltage(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    double v = 0.0, i = 0.0;
    int rc = measure(dev, state, &v, &i);
    if (rc == 0)
        *out = lmq_float(v);
    return rc;
}

static int get_measured_current(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    double v = 0.0, i = 0.0;
    int rc = measure(dev, state, &v, &i);
    if (rc == 0)
        *out = lmq_float(i);
    return rc;
}

static int get_mode(lmq_dev_t *dev, void *state, lmq_value_t *out)
{
    psu_mode_t m = operate(dev, state, lmq_dev_sim_ns(dev), NULL, NULL);
    return lmq_value_set_string(out, mode_names[m]);
}

/* ---- methods ---- */

static int m_reset(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    (void)args;
    (void)result;
    psu_t *p = state;
    p->output = false;
    p->v_set = 0.0;
    p->i_lim = 0.0;
    p->ramp_from = 0.0;
    p->ramp_t0 = lmq_dev_sim_ns(dev);
    operate(dev, p, p->ramp_t0, NULL, NULL);
    return 0;
}

static int m_measure(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    (void)args;
    double vi[2];
    int rc = measure(dev, state, &vi[0], &vi[1]);
    if (rc)
        return rc;
    size_t shape[1] = {2};
    if (lmq_value_set_array(result, LMQ_F64, 1, shape, vi) != 0)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory for the reading");
    return 0;
}

static int m_sweep(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    psu_t *p = state;
    double start, stop;
    if (lmq_value_to_double(&args[0], &start) != 0 || lmq_value_to_double(&args[1], &stop) != 0 ||
        args[2].type != LMQ_INT)
        return lmq_dev_fail(dev, LMQ_EARG, "sweep takes (start: float V, stop: float V, points: int)");
    int64_t n = args[2].u.i;
    if (n < 2 || n > SWEEP_MAX_POINTS)
        return lmq_dev_fail(dev, LMQ_ERANGE, "sweep points %lld outside 2..%d", (long long)n, SWEEP_MAX_POINTS);
    for (int k = 0; k < 2; k++) {
        double v = k ? stop : start;
        if (v < 0.0 || v > p->max_v)
            return lmq_dev_fail(dev, LMQ_ERANGE, "sweep %s %.3f V outside 0..%.3f V", k ? "stop" : "start", v,
                                p->max_v);
    }
    if (!p->output)
        return lmq_dev_fail(dev, LMQ_EDEVICE, "output is off: switch it on before sweeping");

    size_t shape[2] = {(size_t)n, 2};
    if (lmq_value_set_array(result, LMQ_F64, 2, shape, NULL) != 0)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory for %lld sweep points", (long long)n);
    double *out = result->u.a.data;
    double v_before = p->v_set;
    int rc = 0;
    for (int64_t k = 0; k < n && rc == 0; k++) {
        double v = start + (stop - start) * (double)k / (double)(n - 1);
        /* Let the output slew to the point before the meter reads it. */
        retarget(p, v, lmq_dev_sim_ns(dev));
        rc = settle(dev, p);
        if (rc == 0)
            rc = measure(dev, p, &out[2 * k], &out[2 * k + 1]);
    }
    /* Leave the supply where the user had set it, as a source-measure unit
     * returns to its bias level after a list sweep. */
    retarget(p, v_before, lmq_dev_sim_ns(dev));
    if (rc)
        lmq_value_clear(result);
    return rc;
}

/* A list sweep, as source-measure units have: the voltages come as an
 * array (any numeric dtype, one dimension), each point is measured after the
 * output has slewed to it. */
static int m_list_sweep(lmq_dev_t *dev, void *state, const lmq_value_t *args, lmq_value_t *result)
{
    psu_t *p = state;
    const lmq_array_t *a = &args[0].u.a;
    size_t n = a->ndim == 1 ? a->shape[0] : 0;
    if (a->ndim != 1 || n < 1 || n > SWEEP_MAX_POINTS)
        return lmq_dev_fail(dev, LMQ_EARG, "list_sweep takes a 1-D array of 1..%d voltages (got %u dimensions, %zu)",
                            SWEEP_MAX_POINTS, a->ndim, a->ndim == 1 ? n : (size_t)0);
    if (a->dtype != LMQ_F64 && a->dtype != LMQ_F32 && a->dtype != LMQ_I32 && a->dtype != LMQ_I64)
        return lmq_dev_fail(dev, LMQ_EARG, "list_sweep voltages must be <f8, <f4, <i4 or <i8, not %s",
                            lmq_dtype_name(a->dtype));
    if (!p->output)
        return lmq_dev_fail(dev, LMQ_EDEVICE, "output is off: switch it on before sweeping");
    double *volts = malloc(n * sizeof *volts);
    if (!volts)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory for %zu points", n);
    for (size_t k = 0; k < n; k++) {
        switch (a->dtype) {
        case LMQ_F32:
            volts[k] = ((const float *)a->data)[k];
            break;
        case LMQ_I32:
            volts[k] = ((const int32_t *)a->data)[k];
            break;
        case LMQ_I64:
            volts[k] = (double)((const int64_t *)a->data)[k];
            break;
        default:
            volts[k] = ((const double *)a->data)[k];
            break;
        }
        if (!(volts[k] >= 0.0 && volts[k] <= p->max_v)) {
            double bad = volts[k];
            free(volts);
            return lmq_dev_fail(dev, LMQ_ERANGE, "list_sweep point %zu, %g V, outside 0..%.3f V", k, bad, p->max_v);
        }
    }
    size_t shape[2] = {n, 2};
    if (lmq_value_set_array(result, LMQ_F64, 2, shape, NULL) != 0) {
        free(volts);
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory for %zu points", n);
    }
    double *out = result->u.a.data, v_before = p->v_set;
    int rc = 0;
    for (size_t k = 0; k < n && rc == 0; k++) {
        retarget(p, volts[k], lmq_dev_sim_ns(dev));
        rc = settle(dev, p);
        if (rc == 0)
            rc = measure(dev, p, &out[2 * k], &out[2 * k + 1]);
    }
    retarget(p, v_before, lmq_dev_sim_ns(dev));
    free(volts);
    if (rc)
        lmq_value_clear(result);
    return rc;
}

/* ---- monitor stream ---- */

static int poll_iv(lmq_dev_t *dev, void *state, int64_t now_ns)
{
    (void)now_ns; /* the circuit runs on simulated time (time_scale) */
    psu_t *p = state;
    double vi[2];
    /* The circuit keeps running when the link is down, so the wires follow it
     * even while nothing is published. */
    operate(dev, p, lmq_dev_sim_ns(dev), &vi[0], &vi[1]);
    if (lmq__fault_streams_down(p))
        return 0;
    add_meter_noise(p, &vi[0], &vi[1]);
    return lmq_dev_publish(dev, 0, lmq_clock_real_ns(), vi, sizeof vi);
}

/* ---- transcript and fault ---- */

static void transcript_write(lmq_dev_t *dev, psu_t *p, const char *name)
{
    int64_t t = lmq_clock_real_ns();
    time_t sec = (time_t)(t / 1000000000);
    struct tm tm;
    char stamp[32] = "?";
    if (gmtime_r(&sec, &tm))
        strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    char line[256];
    int len = snprintf(line, sizeof line, "%s.%06dZ %s %s\n", stamp, (int)(t % 1000000000 / 1000), lmq_dev_name(dev),
                       name ? name : "?");
    if (len < 0)
        return;
    if ((size_t)len >= sizeof line) {
        len = (int)sizeof line - 1;
        line[len - 1] = '\n';
    }
    /* One write(2) per line on an O_APPEND descriptor: lines from several
     * processes never interleave, and nothing sits in a buffer if we crash. */
    if (write(p->transcript_fd, line, (size_t)len) < 0)
        lmq_log(lmq_dev_log(dev), LMQ_LOG_WARN, lmq_dev_name(dev), "transcript write failed: %s", strerror(errno));
}

static int psu_before(lmq_dev_t *dev, void *state, const char *name)
{
    psu_t *p = state;
    if (p->transcript_fd >= 0)
        transcript_write(dev, p, name);
    return lmq__fault_before(dev, state, name);
}

/* A lock on the supply expired (its holder crashed or stopped renewing it):
 * the output goes off at once, announced to subscribers like a change the
 * instrument made, and the transcript records it. */
static int psu_safe_state(lmq_dev_t *dev, void *state)
{
    psu_t *p = state;
    if (p->transcript_fd >= 0)
        transcript_write(dev, p, "safe_state");
    p->output = false;
    operate(dev, p, lmq_dev_sim_ns(dev), NULL, NULL);
    lmq_value_t off = lmq_bool(false);
    lmq_dev_notify(dev, "output", &off);
    return 0;
}

/* ---- open / close ---- */

static void psu_close(lmq_dev_t *dev, void *state)
{
    (void)dev;
    psu_t *p = state;
    if (!p)
        return;
    if (p->transcript_fd >= 0)
        close(p->transcript_fd);
    free(p);
}

static int psu_open(lmq_dev_t *dev, void **state)
{
    /* A simulated unplug outlasts the close: no open until it is over. */
    int plugged = lmq__fault_plugged(dev);
    if (plugged)
        return plugged;
    psu_t *p = calloc(1, sizeof *p);
    if (!p)
        return lmq_dev_fail(dev, LMQ_EMEM, "out of memory");
    p->transcript_fd = -1;
    p->max_v = lmq_dev_opt_float(dev, "max_voltage");
    p->max_i = lmq_dev_opt_float(dev, "max_current");
    p->load_r = lmq_dev_opt_float(dev, "load_ohms");
    p->diode = lmq_dev_opt_bool(dev, "load_diode");
    p->slew = lmq_dev_opt_float(dev, "slew_v_per_s");
    p->noise = lmq_dev_opt_float(dev, "noise");
    double monitor_hz = lmq_dev_opt_float(dev, "monitor_hz");
    const char *ctl = lmq_dev_opt_str(dev, "load_control");
    const char *transcript = lmq_dev_opt_str(dev, "transcript");
    int rc = 0;

    /* `!(x > 0)` also rejects NaN, which the option parser may let through. */
    if (!(p->max_v > 0.0) || p->max_v > RATED_V)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "max_voltage %.3f V outside the model's 0..%.0f V rating", p->max_v,
                          RATED_V);
    else if (!(p->max_i > 0.0) || p->max_i > RATED_I)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "max_current %.3f A outside the model's 0..%.0f A rating", p->max_i,
                          RATED_I);
    else if (!(p->load_r >= 1e-3) || isinf(p->load_r))
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "load_ohms %g must be at least 0.001 ohm", p->load_r);
    else if (!(p->slew >= 0.0) || isinf(p->slew))
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "slew_v_per_s %g must be 0 (instant) or positive", p->slew);
    else if (!(p->noise >= 0.0) || p->noise > 0.1)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "noise %g outside 0..0.1 (fraction of range)", p->noise);
    else if (!(monitor_hz >= 0.0) || monitor_hz > 1000.0)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "monitor_hz %g outside 0..1000", monitor_hz);
    else if (strlen(ctl) >= LMQ__SIM_WIRE_LEN)
        rc = lmq_dev_fail(dev, LMQ_ECONFIG, "load_control wire name longer than %d characters", LMQ__SIM_WIRE_LEN - 1);
    if (rc == 0)
        rc = lmq__sim_wire_name(dev, p->wire_v, "vout");
    if (rc == 0)
        rc = lmq__sim_wire_name(dev, p->wire_i, "iout");
    /* describe and the daemon's range check show this unit's limits, not
     * the model's rating. */
    if (rc == 0)
        rc = lmq_dev_property_limits(dev, "voltage", 0.0, p->max_v);
    if (rc == 0)
        rc = lmq_dev_property_limits(dev, "current_limit", 0.0, p->max_i);
    if (rc == 0 && transcript[0] != '\0') {
        /* O_CLOEXEC: the descriptor belongs to this device alone; a worker
         * spawned by the daemon must never inherit it. */
        p->transcript_fd = open(transcript, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (p->transcript_fd < 0)
            rc = lmq_dev_fail(dev, LMQ_EIO, "cannot open transcript '%s': %s", transcript, strerror(errno));
    }
    if (rc == 0) {
        memcpy(p->ctl_wire, ctl, strlen(ctl) + 1);
        lmq__sim_rng_seed(&p->rng, lmq_dev_name(dev), lmq_dev_opt_int(dev, "seed"));
        p->ramp_t0 = lmq_dev_sim_ns(dev);
        size_t shape[1] = {2};
        rc = lmq_dev_stream_shape(dev, 0, 1, shape);
        if (rc == 0)
            rc = lmq_dev_stream_rate(dev, 0, monitor_hz);
        if (rc)
            rc = lmq_dev_fail(dev, rc, "cannot set up the monitor stream");
    }
    if (rc) {
        psu_close(dev, p);
        return rc;
    }
    /* Other devices read the terminals from the start, not only after the
     * first request. */
    operate(dev, p, p->ramp_t0, NULL, NULL);
    *state = p;
    return 0;
}

/* ---- tables ---- */

static const lmq_option_t psu_options[] = {
    {.name = "max_voltage", .type = LMQ_FLOAT, .def = "30", .doc = "voltage limit in V (the model is rated 60 V)"},
    {.name = "max_current",
     .type = LMQ_FLOAT,
     .def = "3",
     .doc = "current limit ceiling in A (the model is rated 10 A)"},
    {.name = "load_ohms", .type = LMQ_FLOAT, .def = "100", .doc = "series resistance of the load in ohm"},
    {.name = "load_diode",
     .type = LMQ_BOOL,
     .def = "true",
     .doc = "an LED-like diode in series with the load (nonlinear I-V)"},
    {.name = "load_control",
     .type = LMQ_STRING,
     .def = "",
     .doc = "wire driving an electronic load in parallel (e.g. daq1.ao0): 20 mS per V above a 1 V threshold"},
    {.name = "slew_v_per_s", .type = LMQ_FLOAT, .def = "1000", .doc = "output slew rate in V/s (0 = instant)"},
    {.name = "noise",
     .type = LMQ_FLOAT,
     .def = "1e-5",
     .doc = "meter noise, standard deviation as a fraction of the range"},
    {.name = "monitor_hz", .type = LMQ_FLOAT, .def = "10", .doc = "rate of the iv monitor stream (0 = off)"},
    {.name = "seed", .type = LMQ_INT, .def = "0", .doc = "noise seed (combined with the device name)"},
    {.name = "transcript",
     .type = LMQ_STRING,
     .def = "",
     .doc = "file to append one line per request to (time, device, request)"},
    {.name = NULL},
};

static const lmq_arg_t sweep_args[] = {
    {.name = "start",
     .type = LMQ_FLOAT,
     .unit = "V",
     .doc = "first voltage (up to max_voltage)",
     .limited = true,
     .min = 0.0,
     .max = RATED_V},
    {.name = "stop",
     .type = LMQ_FLOAT,
     .unit = "V",
     .doc = "last voltage (up to max_voltage)",
     .limited = true,
     .min = 0.0,
     .max = RATED_V},
    {.name = "points", .type = LMQ_INT, .unit = "", .doc = "number of points", .limited = true, .min = 2, .max = 10000},
    {.name = NULL},
};

static const lmq_arg_t list_sweep_args[] = {
    {.name = "voltages", .type = LMQ_ARRAY, .unit = "V", .doc = "the points, a 1-D array (up to max_voltage)"},
    {.name = NULL},
};

static const lmq_method_t psu_methods[] = {
    {.name = "reset", .doc = "output off, voltage and current limit to 0", .ret = LMQ_NONE, .fn = m_reset},
    {.name = "measure",
     .doc = "one reading of the output: [voltage V, current A]",
     .ret = LMQ_ARRAY,
     .ret_unit = "V,A",
     .ret_dtype = LMQ_F64,
     .ret_ndim = 1,
     .fn = m_measure},
    {.name = "sweep",
     .doc = "steps the voltage from start to stop, measuring each point: [points, 2] of [V, A]; then restores the "
            "setpoint",
     .args = sweep_args,
     .ret = LMQ_ARRAY,
     .ret_unit = "V,A",
     .ret_dtype = LMQ_F64,
     .ret_ndim = 2,
     .fn = m_sweep},
    {.name = "list_sweep",
     .doc = "measures at each voltage of an array: [n, 2] of [V, A]; then restores the setpoint",
     .args = list_sweep_args,
     .ret = LMQ_ARRAY,
     .ret_unit = "V,A",
     .ret_dtype = LMQ_F64,
     .ret_ndim = 2,
     .fn = m_list_sweep},
    {.name = NULL},
};

static const lmq_property_t psu_properties[] = {
    {.name = "voltage",
     .doc = "output voltage setpoint (up to max_voltage)",
     .type = LMQ_FLOAT,
     .unit = "V",
     .limited = true,
     .min = 0.0,
     .max = RATED_V,
     .get = get_voltage,
     .set = set_voltage},
    {.name = "current_limit",
     .doc = "output current limit (up to max_current)",
     .type = LMQ_FLOAT,
     .unit = "A",
     .limited = true,
     .min = 0.0,
     .max = RATED_I,
     .get = get_current_limit,
     .set = set_current_limit},
    {.name = "output", .doc = "output enabled", .type = LMQ_BOOL, .unit = "", .get = get_output, .set = set_output},
    {.name = "measured_voltage",
     .doc = "voltage at the terminals (one 2 ms reading)",
     .type = LMQ_FLOAT,
     .unit = "V",
     .get = get_measured_voltage},
    {.name = "measured_current",
     .doc = "output current (one 2 ms reading)",
     .type = LMQ_FLOAT,
     .unit = "A",
     .get = get_measured_current},
    {.name = "mode", .doc = "regulation mode: CV, CC or OFF", .type = LMQ_STRING, .unit = "", .get = get_mode},
    LMQ__FAULT_PROPERTY,
    {.name = NULL},
};

static const lmq_stream_t psu_streams[] = {
    {.name = "iv",
     .doc = "monitor readings [voltage V, current A] at monitor_hz",
     .dtype = LMQ_F64,
     .unit = "V,A",
     .poll = poll_iv},
    {.name = NULL},
};

const lmq_driver_t lmq__sim_psu = {
    .name = "sim-psu",
    .description = "simulated programmable DC power supply (CV/CC) with a diode load",
    .options = psu_options,
    .open = psu_open,
    .close = psu_close,
    .before = psu_before,
    .check = lmq__fault_check,
    .methods = psu_methods,
    .properties = psu_properties,
    .streams = psu_streams,
    .safe_state = psu_safe_state,
};
