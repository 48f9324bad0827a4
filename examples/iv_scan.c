/* iv_scan — measure the I-V curve of the load on a power supply, then check
 * that a DAQ waveform stream arrives without loss.
 *
 * Everything goes through labmq proxies: this program never opens an
 * instrument. It needs a running labmqd, e.g.
 *
 *     labmqd --config examples/sim-lab.yaml &
 *     iv_scan
 *
 * The devices are the ones of examples/sim-lab.yaml: psu1 (a supply driving a
 * diode load) and daq1 (whose ai0 reads psu1's output current through a
 * front-end gain, and which streams daq1/wave).
 *
 * Exit status: 0 when the sweep and the stream check worked and no stream
 * block was lost, 1 otherwise. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "labmq/labmq.h"

/* Names from the driver tables (drivers/sim/sim_psu.c, sim_daq.c); `labmq
 * describe psu1` lists them. */
#define PSU_VOLTAGE "voltage"             /* rw setpoint, V */
#define PSU_CURRENT_LIMIT "current_limit" /* rw, A */
#define PSU_OUTPUT "output"               /* rw bool */
#define PSU_MEASURE_VOLTAGE "measured_voltage" /* ro, V at the terminals */
#define DAQ_AI0 "ai0"                     /* ro, V */
#define DAQ_GAIN "ai0_gain"               /* V/A: ai0 = gain * psu1 current */
#define DAQ_RANGE "ai_range"              /* +-V, board-wide; the DAQ rounds up to its next range */
#define WAVE_STREAM "wave"

struct options {
    const char *endpoint; /* control; NULL = default */
    const char *data;     /* data; NULL = ask the daemon (ping) */
    const char *psu, *daq;
    double vmax, ilimit, seconds;
    int steps;
    double wait_s;
    const char *key_file, *server_key; /* a daemon with keys (docs/security.md) */
    lmq_client_keys_t keys; /* loaded from them */
    const lmq_client_keys_t *use_keys; /* &keys when given, else NULL */
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: iv_scan [options] [ENDPOINT]\n"
            "\n"
            "Sweeps a supply's voltage, reads the current through a DAQ input, prints the\n"
            "I-V table, then subscribes to the DAQ's waveform for a while and reports\n"
            "blocks received, lost and the sample rate achieved. Needs a running labmqd.\n"
            "\n"
            "  -e, --endpoint EP   control endpoint (default: the per-user ipc endpoint,\n"
            "                      as labmqd uses without --control)\n"
            "  -d, --data EP       data endpoint (default: the one the daemon reports)\n"
            "      --psu NAME      supply device (default psu1)\n"
            "      --daq NAME      DAQ device (default daq1)\n"
            "      --vmax V        last voltage step (default 3.0)\n"
            "      --steps N       number of steps after 0 V (default 15)\n"
            "      --ilimit A      supply current limit (default 0.05)\n"
            "      --seconds S     how long to watch the stream (default 1)\n"
            "      --wait S        wait up to S seconds for the daemon to come up (default 0)\n"
            "      --key FILE      this client's key pair, for a daemon with keys\n"
            "      --server-key K  the daemon's public key: its .pub file or the Z85 key\n"
            "  -h, --help          this text\n"
            "\n"
            "Exit status 0 only if every step worked and no stream block was lost.\n");
}

static int parse_args(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        {"endpoint", required_argument, NULL, 'e'}, {"data", required_argument, NULL, 'd'},
        {"psu", required_argument, NULL, 'P'},      {"daq", required_argument, NULL, 'D'},
        {"vmax", required_argument, NULL, 'V'},     {"steps", required_argument, NULL, 'n'},
        {"ilimit", required_argument, NULL, 'I'},   {"seconds", required_argument, NULL, 's'},
        {"wait", required_argument, NULL, 'w'},     {"help", no_argument, NULL, 'h'},
        {"key", required_argument, NULL, 'K'},      {"server-key", required_argument, NULL, 'S'},
        {NULL, 0, NULL, 0}};
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "e:d:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'e': o->endpoint = optarg; break;
        case 'd': o->data = optarg; break;
        case 'P': o->psu = optarg; break;
        case 'D': o->daq = optarg; break;
        case 'K': o->key_file = optarg; break;
        case 'S': o->server_key = optarg; break;
        case 'h': usage(stdout); exit(0);
        case 'n':
            o->steps = (int)strtol(optarg, &end, 10);
            if (*end || o->steps < 1 || o->steps > 10000)
                goto bad;
            break;
        case 'V': case 'I': case 's': case 'w': {
            double v = strtod(optarg, &end);
            if (*end || !isfinite(v) || v < 0)
                goto bad;
            *(c == 'V' ? &o->vmax : c == 'I' ? &o->ilimit : c == 's' ? &o->seconds : &o->wait_s) = v;
            break;
        }
        default: usage(stderr); return -1;
        }
    }
    if (optind < argc)
        o->endpoint = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "iv_scan: unexpected argument '%s' (see --help)\n", argv[optind]);
        return -1;
    }
    if (!o->key_file != !o->server_key) {
        fprintf(stderr, "iv_scan: --key and --server-key go together\n");
        return -1;
    }
    if (o->key_file) {
        char err[600];
        if (lmq_client_keys_load(&o->keys, o->key_file, o->server_key, err, sizeof err) != 0) {
            fprintf(stderr, "iv_scan: %s\n", err);
            return -1;
        }
        o->use_keys = &o->keys;
    }
    return 0;
bad:
    fprintf(stderr, "iv_scan: invalid value '%s' (see --help)\n", optarg);
    return -1;
}

/* Reports a failed proxy operation with the daemon's reason, which names the
 * device and what was wrong ("psu1: 40 V exceeds max 30"). */
static int fail(lmq_proxy_t *p, const char *what, int rc)
{
    if (rc == LMQ_EUNREACH)
        fprintf(stderr, "iv_scan: %s: the daemon stopped answering (%s)\n", what, lmq_proxy_last_error(p));
    else
        fprintf(stderr, "iv_scan: %s %s failed: %s: %s\n", lmq_proxy_device(p) ? lmq_proxy_device(p) : "",
                what, lmq_status_name(rc), lmq_proxy_last_error(p));
    return rc;
}

static int set_double(lmq_proxy_t *p, const char *prop, double v)
{
    lmq_value_t val = lmq_float(v);
    int rc = lmq_proxy_set(p, prop, &val);
    return rc ? fail(p, prop, rc) : 0;
}

static int get_double(lmq_proxy_t *p, const char *prop, double *v)
{
    int rc = lmq_proxy_get_double(p, prop, v);
    return rc ? fail(p, prop, rc) : 0;
}

static int set_output(lmq_proxy_t *p, bool on)
{
    lmq_value_t val = lmq_bool(on);
    int rc = lmq_proxy_set(p, PSU_OUTPUT, &val);
    return rc ? fail(p, PSU_OUTPUT, rc) : 0;
}

/* Asks the daemon where it publishes data, waiting up to wait_s for one to
 * answer (scripts start the daemon and the example back to back). */
static int find_daemon(lmq_proxy_t *d, const char *endpoint, double wait_s, char *data, size_t size)
{
    int64_t deadline = lmq_clock_mono_ns() + (int64_t)(wait_s * 1e9);
    int rc;
    while ((rc = lmq_proxy_data_endpoint(d, data, size)) == LMQ_EUNREACH || rc == LMQ_ETIMEOUT) {
        if (lmq_clock_mono_ns() >= deadline) {
            fprintf(stderr,
                    "iv_scan: no labmqd answers at %s\n"
                    "         start one first, e.g.: labmqd --config examples/sim-lab.yaml --control %s\n",
                    endpoint, endpoint);
            return -1;
        }
    }
    if (rc != 0)
        fprintf(stderr, "iv_scan: ping %s failed: %s: %s\n", endpoint, lmq_status_name(rc), lmq_proxy_last_error(d));
    return rc ? -1 : 0;
}

/* The sweep proper. Prints one row per step and checks that the current never
 * falls as the voltage rises, which is what any passive load must do. */
static int sweep(lmq_proxy_t *psu, lmq_proxy_t *daq, const struct options *o)
{
    double gain = 1.0;
    if (get_double(daq, DAQ_GAIN, &gain))
        return -1;
    if (gain <= 0) {
        fprintf(stderr, "iv_scan: %s %s is %g; need a positive gain\n", o->daq, DAQ_GAIN, gain);
        return -1;
    }
    /* The most sensitive input range that still holds the largest current the
     * supply may deliver: milliamps on a 10 V range would be lost in the
     * converter's steps. */
    if (set_double(daq, DAQ_RANGE, o->ilimit * gain * 1.05))
        return -1;
    printf("%10s %10s %12s\n", "V_set[V]", "V_meas[V]", "I[A]");
    double *cur = calloc((size_t)o->steps + 1, sizeof *cur);
    if (!cur) {
        fprintf(stderr, "iv_scan: out of memory\n");
        return -1;
    }
    double i_max = 0;
    for (int k = 0; k <= o->steps; k++) {
        double vset = o->vmax * k / o->steps, vmeas, ai0;
        if (set_double(psu, PSU_VOLTAGE, vset) || get_double(psu, PSU_MEASURE_VOLTAGE, &vmeas) ||
            get_double(daq, DAQ_AI0, &ai0)) {
            free(cur);
            return -1;
        }
        cur[k] = ai0 / gain;
        i_max = fmax(i_max, cur[k]);
        printf("%10.3f %10.4f %12.4e\n", vset, vmeas, cur[k]);
        fflush(stdout);
    }
    /* Allow for the instruments' noise: a dip smaller than 1% of the full
     * scale reached is noise, not a falling curve. */
    int dips = 0;
    for (int k = 1; k <= o->steps; k++)
        dips += cur[k] < cur[k - 1] - fmax(1e-6, 0.01 * i_max);
    bool rises = i_max > cur[0];
    free(cur);
    if (dips || !rises) {
        fprintf(stderr, "iv_scan: the current does not rise with the voltage (%d dips); check the wiring\n", dips);
        return -1;
    }
    return 0;
}

/* Watches the stream for o->seconds and reports what arrived. Returns 0 when
 * blocks arrived and none were lost. */
static int watch_stream(void *zctx, const char *data_ep, const struct options *o)
{
    char topic[256];
    snprintf(topic, sizeof topic, "%s/%s", o->daq, WAVE_STREAM);
    lmq_sub_t *sub = lmq_sub_new_keys(zctx, data_ep, topic, o->use_keys);
    if (!sub) {
        fprintf(stderr, "iv_scan: cannot subscribe to %s at %s\n", topic, data_ep);
        return -1;
    }
    /* The window starts at the first block, not at subscribe time: ZeroMQ
     * takes a moment to pass the subscription to the daemon, and that delay
     * is not the stream's fault. */
    int rc = 0;
    uint64_t frames = 0, samples = 0, last_samples = 0;
    int64_t t_first = 0, t_last = 0, window_end = 0;
    for (;;) {
        int timeout_ms = frames ? (int)((window_end - lmq_clock_mono_ns()) / 1000000) : 3000;
        if (frames && timeout_ms <= 0)
            break;
        lmq_frame_t *f = NULL;
        rc = lmq_sub_recv(sub, &f, timeout_ms);
        if (rc == LMQ_ETIMEOUT) {
            if (!frames)
                fprintf(stderr, "iv_scan: no block on %s within 3 s (is the stream running?)\n", topic);
            rc = frames ? 0 : -1;
            break;
        }
        if (rc == LMQ_EPROTO) {
            fprintf(stderr, "iv_scan: malformed block skipped: %s\n", lmq_sub_last_error(sub));
            continue;
        }
        if (rc) {
            fprintf(stderr, "iv_scan: receiving %s: %s\n", topic, lmq_strerror(rc));
            break;
        }
        uint64_t n = 1;
        for (unsigned d = 0; d < lmq_frame_ndim(f); d++)
            n *= lmq_frame_shape(f)[d];
        if (!frames) {
            t_first = lmq_frame_time_ns(f);
            window_end = lmq_clock_mono_ns() + (int64_t)(o->seconds * 1e9);
        }
        t_last = lmq_frame_time_ns(f);
        frames++;
        samples += n;
        last_samples = n;
        lmq_frame_destroy(&f);
    }
    /* Rate by the daemon's acquisition timestamps: samples up to the start
     * of the last block, over the time to that block. */
    double rate = t_last > t_first ? (double)(samples - last_samples) / ((double)(t_last - t_first) * 1e-9) : 0;
    uint64_t lost = lmq_sub_lost(sub), restarts = lmq_sub_restarts(sub);
    printf("stream %s: %llu blocks, %llu samples, lost %llu, restarts %llu, rate %.0f samples/s\n", topic,
           (unsigned long long)frames, (unsigned long long)samples, (unsigned long long)lost,
           (unsigned long long)restarts, rate);
    if (rc == 0 && lost) {
        fprintf(stderr, "iv_scan: %llu blocks of %s were lost\n", (unsigned long long)lost, topic);
        rc = -1;
    }
    lmq_sub_destroy(&sub);
    return rc;
}

int main(int argc, char **argv)
{
    struct options o = {.psu = "psu1", .daq = "daq1", .vmax = 3.0, .steps = 15, .ilimit = 0.05, .seconds = 1.0};
    if (parse_args(argc, argv, &o))
        return 1;

    char defep[512], datadef[512];
    if (!o.endpoint) {
        /* create=false: a client must not make the daemon's directory. */
        if (lmq_default_endpoint(defep, sizeof defep, "control", false)) {
            fprintf(stderr, "iv_scan: cannot work out the default endpoint; pass --endpoint\n");
            return 1;
        }
        o.endpoint = defep;
    }

    void *zctx = zmq_ctx_new();
    if (!zctx) {
        fprintf(stderr, "iv_scan: zmq_ctx_new: %s\n", zmq_strerror(zmq_errno()));
        return 1;
    }
    int status = 1;
    lmq_proxy_t *daemon = NULL, *psu = NULL, *daq = NULL;
    bool output_on = false, range_saved = false;
    double range_before = 0;

    /* A proxy with no device talks to the daemon itself (ping, list, stats). */
    daemon = lmq_proxy_new_keys(zctx, o.endpoint, NULL, o.use_keys);
    if (!daemon) {
        fprintf(stderr, "iv_scan: cannot use endpoint '%s' (expected e.g. ipc:///path or tcp://host:port)\n",
                o.endpoint);
        goto out;
    }

    /* Unless told, ask the daemon where it publishes (this also waits for it). */
    if (find_daemon(daemon, o.endpoint, o.wait_s, datadef, sizeof datadef))
        goto out;
    if (!o.data)
        o.data = datadef;
    printf("daemon: labmqd at %s, data %s\n", o.endpoint, o.data);

    /* Two ways to name a device: endpoint + name, or one URI string (which
     * is what you would hand to another process). */
    psu = lmq_proxy_new_keys(zctx, o.endpoint, o.psu, o.use_keys);
    char uri[1024];
    snprintf(uri, sizeof uri, "%s#%s", o.endpoint, o.daq);
    /* A URI names no keys: with keys, the daq proxy is made like the psu's. */
    daq = o.use_keys ? lmq_proxy_new_keys(zctx, o.endpoint, o.daq, o.use_keys) : lmq_proxy_open(zctx, uri);
    if (!psu || !daq) {
        fprintf(stderr, "iv_scan: cannot create proxies (bad endpoint or device name?)\n");
        goto out;
    }


    /* The range is shared with every other user of the board: put it back. */
    if (get_double(daq, DAQ_RANGE, &range_before))
        goto out;
    range_saved = true;
    if (set_double(psu, PSU_CURRENT_LIMIT, o.ilimit) || set_double(psu, PSU_VOLTAGE, 0.0))
        goto out;
    /* From here on the output must be switched off again, whatever happens. */
    output_on = true;
    if (set_output(psu, true))
        goto out;
    printf("sweep: %s 0..%.3g V in %d steps, limit %.3g A, current via %s/%s\n", o.psu, o.vmax, o.steps,
           o.ilimit, o.daq, DAQ_AI0);
    if (sweep(psu, daq, &o))
        goto out;
    if (watch_stream(zctx, o.data, &o))
        goto out;
    status = 0;

out:
    if (output_on) {
        if (set_double(psu, PSU_VOLTAGE, 0.0) || set_output(psu, false))
            status = 1;
    }
    if (range_saved && set_double(daq, DAQ_RANGE, range_before))
        status = 1;
    lmq_proxy_destroy(&daq);
    lmq_proxy_destroy(&psu);
    lmq_proxy_destroy(&daemon);
    zmq_ctx_term(zctx);
    printf("iv_scan: %s\n", status ? "FAILED" : "ok");
    return status;
}
