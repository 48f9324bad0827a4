/* labmq-recorder — records data streams of a labmqd into an HDF5 file.
 *
 * main() reads the command line, asks the daemon what each stream is
 * (describe), creates the file (recfile.c), then polls the subscriptions
 * together with a signalfd: blocks are appended as they come, the file is
 * flushed for SWMR readers every FLUSH_MS, and SIGINT/SIGTERM or --duration
 * end the recording cleanly. The subscriptions are lossless flow
 * subscriptions (docs/protocol.md 3.2): the daemon holds what the recorder has
 * not taken yet, up to its subscriber_memory, and a slow display of the same
 * stream cannot take blocks from the recording. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <zmq.h>
#include "labmq/labmq.h"
#include "recfile.h"

/* Exit codes, documented in --help and README.md. */
enum { EXIT_DONE = 0, EXIT_FAILED = 1, EXIT_USAGE = 2 };

#define PROG "labmq-recorder"
#define EP_MAX 512
/* SWMR readers see new blocks at least this often. */
#define FLUSH_MS 500
#define PROGRESS_MS 250
/* Blocks taken from one subscription before the others (and the signals)
 * get their turn. */
#define DRAIN_MAX 256
#define NS_PER_MS 1000000LL

typedef struct opts {
    char control[EP_MAX];
    char data[EP_MAX];
    const char *output;
    const char *name; /* as a supervised worker: shown in messages */
    double duration_s; /* 0: until a signal */
    int timeout_ms;
    bool overwrite, quiet;
    const char **topics;
    size_t ntopics;
    const char *key_file, *server_key; /* --key, --server-key */
    lmq_client_keys_t keys;            /* loaded from them */
    bool curve;                        /* both given */
} opts_t;

typedef struct stream {
    const char *topic;
    char units[64];
    lmq_sub_t *sub;
    uint64_t malformed;
    bool refused; /* the daemon refused the subscription; said once until it accepts */
} stream_t;

static const char *prog_name(const opts_t *o) { return o->name ? o->name : PROG; }

static int fail(const opts_t *o, const char *fmt, ...) LMQ_PRINTF(2, 3);
static int fail(const opts_t *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog_name(o));
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_FAILED;
}

static int usage(const char *fmt, ...) LMQ_PRINTF(1, 2);
static int usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(PROG ": ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry '" PROG " --help' for more information.\n", stderr);
    return EXIT_USAGE;
}

static void print_help(void)
{
    char control[EP_MAX];
    if (lmq_default_endpoint(control, sizeof control, "control", false) != 0)
        snprintf(control, sizeof control, "ipc://$XDG_RUNTIME_DIR/labmq/control");
    printf("labmq-recorder - record data streams of labmqd into an HDF5 file, losing nothing silently\n"
           "\n"
           "Usage: labmq-recorder [OPTIONS] -o FILE DEV/STREAM...\n"
           "       labmq-recorder [OPTIONS] -o FILE --stream DEV/STREAM [--stream ...]\n"
           "\n"
           "Each stream goes into the group /streams/DEV/STREAM (datasets data, t_ns, seq, epoch);\n"
           "every lost block is listed in /gaps, every daemon restart in /restarts (layout:\n"
           "workers/recorder/README.md). The file is written in SWMR mode and flushed every %d ms,\n"
           "so h5py.File(FILE, 'r', swmr=True) can follow it while it grows.\n"
           "Recording ends on Ctrl-C (SIGINT), SIGTERM or after --duration, with a summary line.\n"
           "\n"
           "Options:\n"
           "  -o, --output FILE   the HDF5 file to create (refused if it exists, see --overwrite)\n"
           "  -s, --stream TOPIC  a stream to record, DEV/STREAM (repeatable; same as an operand)\n"
           "      --duration S    stop after S seconds (default: until a signal)\n"
           "      --overwrite     replace FILE if it exists\n"
           "  -c, --control EP    the daemon's control endpoint (default %s)\n"
           "  -d, --data EP       accepted (the standard worker argv) and unused: blocks come over\n"
           "                      the control endpoint, as a lossless flow subscription\n"
           "  -t, --timeout MS    wait at most MS ms for each answer of the daemon (default %d)\n"
           "      --key FILE      this client's key pair, for a daemon with keys (docs/security.md)\n"
           "      --server-key K  the daemon's public key: its .pub file or the Z85 key\n"
           "  -n, --name NAME     name in messages (as a supervised worker)\n"
           "  -q, --quiet         no progress line on a terminal\n"
           "  -h, --help          show this help\n"
           "  -V, --version       show the version\n"
           "\n"
           "On a terminal, stderr shows a progress line: blocks and MB received, MB/s, lost, restarts.\n"
           "\n"
           "Example:\n"
           "  labmq-recorder -o run1.h5 --duration 60 daq1/wave cam1/frames\n"
           "\n"
           "Exit status:\n"
           "  0  recorded until stopped (signal or --duration); lost blocks, if any, are in /gaps\n"
           "  1  failed: no daemon, unknown device or stream, the file cannot be created or\n"
           "     written (disk full, file size limit), a block whose dtype or shape changed;\n"
           "     the message names the file and the reason, and what was flushed stays readable\n"
           "  2  usage error\n",
           FLUSH_MS, control, LMQ_PROXY_DEFAULT_TIMEOUT_MS);
}

/* ---- command line ---- */

static const struct option long_opts[] = {
    {"output", required_argument, NULL, 'o'}, {"stream", required_argument, NULL, 's'},
    {"duration", required_argument, NULL, 'D'}, {"overwrite", no_argument, NULL, 'W'},
    {"control", required_argument, NULL, 'c'}, {"data", required_argument, NULL, 'd'},
    {"timeout", required_argument, NULL, 't'}, {"name", required_argument, NULL, 'n'},
    {"quiet", no_argument, NULL, 'q'},         {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},       {"key", required_argument, NULL, 'K'},
    {"server-key", required_argument, NULL, 'S'}, {NULL, 0, NULL, 0},
};

static bool valid_topic(const char *t)
{
    const char *slash = strchr(t, '/');
    return slash && slash != t && slash[1] && !strchr(slash + 1, '/') && strlen(t) <= REC_TOPIC_MAX;
}

/* Returns -1 to go on, else the exit code. */
static int parse_args(opts_t *o, int argc, char **argv)
{
    o->topics = calloc((size_t)argc, sizeof *o->topics);
    if (!o->topics)
        return fail(o, "out of memory");
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":o:s:c:d:t:n:qhV", long_opts, NULL)) != -1) {
        char *end = NULL;
        switch (ch) {
        case 'o': o->output = optarg; break;
        case 's': o->topics[o->ntopics++] = optarg; break;
        case 'D':
            o->duration_s = strtod(optarg, &end);
            if (end == optarg || *end || !isfinite(o->duration_s) || o->duration_s <= 0 || o->duration_s > 1e9)
                return usage("--duration needs a positive number of seconds, not '%s'", optarg);
            break;
        case 'W': o->overwrite = true; break;
        case 'c':
        case 'd': {
            char *dst = ch == 'c' ? o->control : o->data;
            if (!*optarg || strlen(optarg) >= EP_MAX)
                return usage("--%s needs an endpoint such as ipc:///tmp/lab/%s", ch == 'c' ? "control" : "data",
                             ch == 'c' ? "control" : "data");
            snprintf(dst, EP_MAX, "%s", optarg);
            break;
        }
        case 't': {
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end || v < 1 || v > INT_MAX)
                return usage("--timeout needs a whole number of milliseconds from 1, not '%s'", optarg);
            o->timeout_ms = (int)v;
            break;
        }
        case 'n': o->name = optarg; break;
        case 'K': o->key_file = optarg; break;
        case 'S': o->server_key = optarg; break;
        case 'q': o->quiet = true; break;
        case 'h': print_help(); return EXIT_DONE;
        case 'V': printf(PROG " %s (protocol %d)\n", LMQ_VERSION_STRING, LMQ_PROTOCOL_VERSION); return EXIT_DONE;
        case ':': return usage("option '%s' needs a value", argv[optind - 1]);
        default:
            if (optopt)
                return usage("unknown option '-%c'", optopt);
            return usage("unknown option '%s'", argv[optind - 1]);
        }
    }
    for (int i = optind; i < argc; i++)
        o->topics[o->ntopics++] = argv[i];
    if (!o->output)
        return usage("no output file given (-o FILE)");
    if (o->ntopics == 0)
        return usage("no stream given (DEV/STREAM, e.g. daq1/wave)");
    for (size_t i = 0; i < o->ntopics; i++) {
        if (!valid_topic(o->topics[i]))
            return usage("'%s' is not a stream: give DEV/STREAM, e.g. daq1/wave", o->topics[i]);
        for (size_t j = 0; j < i; j++)
            if (strcmp(o->topics[i], o->topics[j]) == 0)
                return usage("stream %s given twice", o->topics[i]);
    }
    if (!o->control[0] && lmq_default_endpoint(o->control, sizeof o->control, "control", false) != 0)
        return fail(o, "cannot work out the default control endpoint; give one with --control");
    if (!o->key_file != !o->server_key)
        return usage("--key and --server-key go together");
    if (o->key_file) {
        char err[600];
        if (lmq_client_keys_load(&o->keys, o->key_file, o->server_key, err, sizeof err) != 0)
            return fail(o, "%s", err);
        o->curve = true;
    }
    return -1;
}

/* ---- asking the daemon ---- */

static int proxy_fail(const opts_t *o, const lmq_proxy_t *p, int rc, const char *what)
{
    if (rc == LMQ_EUNREACH && !o->curve)
        return fail(o, "no daemon answers at %s (is labmqd running?)", o->control);
    const char *msg = lmq_proxy_last_error(p);
    return fail(o, "%s: %s", what, msg && *msg ? msg : lmq_strerror(rc));
}

/* Fills *info from the device's describe. info->topic and info->units point
 * into st (which outlives info). */
static int describe_stream(const opts_t *o, void *zctx, stream_t *st, rec_stream_info_t *info)
{
    char dev[REC_TOPIC_MAX + 1];
    const char *slash = strchr(st->topic, '/');
    snprintf(dev, sizeof dev, "%.*s", (int)(slash - st->topic), st->topic);
    lmq_proxy_t *p = lmq_proxy_new_keys(zctx, o->control, dev, o->curve ? &o->keys : NULL);
    if (!p)
        return fail(o, "cannot make a proxy for %s at %s", dev, o->control);
    lmq_proxy_set_timeout(p, o->timeout_ms);
    char *text = NULL;
    int rc = lmq_proxy_describe(p, &text);
    if (rc != 0) {
        rc = proxy_fail(o, p, rc, st->topic);
        lmq_proxy_destroy(&p);
        return rc;
    }
    lmq_proxy_destroy(&p);
    json_t *desc = json_loads(text, 0, NULL);
    free(text);
    json_t *streams = json_object_get(desc, "streams"), *js, *hit = NULL;
    size_t i;
    char names[256] = "";
    size_t len = 0;
    json_array_foreach(streams, i, js)
    {
        const char *name = json_string_value(json_object_get(js, "name"));
        if (name && strcmp(name, slash + 1) == 0)
            hit = js;
        if (name && len < sizeof names)
            len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", len ? ", " : "", name);
    }
    rc = EXIT_DONE;
    json_t *shape = json_object_get(hit, "shape");
    const char *units = json_string_value(json_object_get(hit, "units"));
    if (!desc)
        rc = fail(o, "%s: the daemon's description of %s is not JSON", st->topic, dev);
    else if (!hit)
        rc = fail(o, "%s: device %s has no stream '%s' (streams: %s)", st->topic, dev, slash + 1,
                  len ? names : "none");
    else if ((info->dtype = lmq_dtype_parse(json_string_value(json_object_get(hit, "dtype")))) == LMQ_DT_INVALID ||
             !json_is_array(shape) || json_array_size(shape) > LMQ_MAX_DIMS)
        rc = fail(o, "%s: the daemon describes no valid dtype and shape for it", st->topic);
    else {
        info->ndim = (unsigned)json_array_size(shape);
        for (unsigned d = 0; d < info->ndim; d++) {
            json_int_t v = json_integer_value(json_array_get(shape, d));
            if (v <= 0)
                rc = fail(o, "%s: the daemon describes an empty block shape", st->topic);
            info->shape[d] = v > 0 ? (size_t)v : 0;
        }
        snprintf(st->units, sizeof st->units, "%s", units ? units : "");
        info->units = st->units;
        info->topic = st->topic;
        info->rate_hz = json_number_value(json_object_get(hit, "rate_hz"));
    }
    json_decref(desc);
    return rc;
}

/* ---- the recording loop ---- */

typedef struct progress {
    bool tty;
    bool drawn;
    int64_t t_start;
} progress_t;

static void print_progress(const opts_t *o, rec_file_t *f, progress_t *pg, int64_t now)
{
    rec_totals_t t;
    rec_file_totals(f, &t);
    double secs = (double)(now - pg->t_start) / 1e9;
    /* What came in: it is written within FLUSH_MS, and the line would lag
     * otherwise. */
    double mb = (double)t.received_bytes / 1e6;
    fprintf(stderr, "\r%s: %llu blocks  %.1f MB  %.1f MB/s  lost %llu  restarts %llu  %.0f s\033[K", prog_name(o),
            (unsigned long long)t.received, mb, secs > 0 ? mb / secs : 0.0, (unsigned long long)t.lost,
            (unsigned long long)t.restarts, secs);
    fflush(stderr);
    pg->drawn = true;
}

static void print_summary(const opts_t *o, const rec_totals_t *t, const stream_t *st, const progress_t *pg,
                          int64_t now, const char *why)
{
    uint64_t malformed = 0;
    for (size_t i = 0; i < o->ntopics; i++)
        malformed += st[i].malformed;
    double secs = (double)(now - pg->t_start) / 1e9;
    double mb = (double)t->bytes / 1e6;
    fprintf(stderr, "%s: %s: %llu blocks, %.1f MB in %.1f s (%.1f MB/s), lost %llu, restarts %llu", prog_name(o),
            o->output, (unsigned long long)t->written, mb, secs, secs > 0 ? mb / secs : 0.0,
            (unsigned long long)t->lost, (unsigned long long)t->restarts);
    if (t->received > t->written)
        fprintf(stderr, "; %llu blocks received after the error not written", (unsigned long long)(t->received - t->written));
    if (malformed)
        fprintf(stderr, "; %llu malformed blocks refused (in /gaps)", (unsigned long long)malformed);
    fprintf(stderr, "; %s\n", why);
}

/* Takes up to DRAIN_MAX waiting blocks of one stream into the file. Returns
 * 0, or nonzero when the file failed. */
static int drain(const opts_t *o, rec_file_t *f, stream_t *st, size_t index)
{
    for (int k = 0; k < DRAIN_MAX; k++) {
        lmq_frame_t *fr = NULL;
        int rc = lmq_sub_recv(st->sub, &fr, 0);
        if (rc == LMQ_ETIMEOUT)
            return 0;
        if (rc == LMQ_EPROTO) {
            /* Skipped; its seq is missing, so the next block's gap records it. */
            if (st->malformed++ == 0)
                fprintf(stderr, "%s: %s: malformed block refused: %s\n", prog_name(o), st->topic,
                        lmq_sub_last_error(st->sub));
            continue;
        }
        if (rc != 0) {
            /* Refused (a daemon restarted without this stream): the
             * subscription asks again by itself; what is missed meanwhile
             * shows as a gap or a restart. */
            if (!st->refused)
                fprintf(stderr, "%s: %s: %s\n", prog_name(o), st->topic, lmq_sub_last_error(st->sub));
            st->refused = true;
            return 0;
        }
        st->refused = false;
        rc = rec_file_append(f, index, fr);
        lmq_frame_destroy(&fr);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int record(opts_t *o, void *zctx, int sigfd, bool *hdf5_ok)
{
    stream_t *st = calloc(o->ntopics, sizeof *st);
    rec_stream_info_t *info = calloc(o->ntopics, sizeof *info);
    zmq_pollitem_t *items = calloc(o->ntopics + 1, sizeof *items);
    rec_file_t *f = NULL;
    int rc = EXIT_DONE;
    if (!st || !info || !items) {
        rc = fail(o, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < o->ntopics && rc == EXIT_DONE; i++) {
        st[i].topic = o->topics[i];
        rc = describe_stream(o, zctx, &st[i], &info[i]);
    }
    const lmq_sub_opts_t lossless = {.mode = LMQ_SUB_LOSSLESS, .keys = o->curve ? &o->keys : NULL};
    for (size_t i = 0; i < o->ntopics && rc == EXIT_DONE; i++) {
        st[i].sub = lmq_sub_new_opts(zctx, o->control, st[i].topic, &lossless);
        if (!st[i].sub)
            rc = fail(o, "%s: cannot subscribe at %s: %s", st[i].topic, o->control, zmq_strerror(errno));
        items[i] = (zmq_pollitem_t){lmq_sub_socket(st[i].sub), 0, ZMQ_POLLIN, 0};
    }
    if (rc != EXIT_DONE)
        goto out;
    char err[600];
    f = rec_file_create(o->output, o->overwrite, info, o->ntopics, err, sizeof err);
    if (!f) {
        rc = fail(o, "%s", err);
        goto out;
    }
    items[o->ntopics] = (zmq_pollitem_t){NULL, sigfd, ZMQ_POLLIN, 0};
    progress_t pg = {.tty = !o->quiet && isatty(STDERR_FILENO) == 1, .t_start = lmq_clock_mono_ns()};
    fprintf(stderr, "%s: recording %zu stream%s from %s into %s\n", prog_name(o), o->ntopics,
            o->ntopics == 1 ? "" : "s", o->control, o->output);
    int64_t end = o->duration_s > 0 ? pg.t_start + (int64_t)(o->duration_s * 1e9) : INT64_MAX;
    int64_t next_flush = pg.t_start + FLUSH_MS * NS_PER_MS, next_progress = pg.t_start;
    const char *why = "stopped after --duration";
    char sigwhy[64];
    bool failed = false;
    for (;;) {
        int64_t now = lmq_clock_mono_ns();
        if (pg.tty && now >= next_progress) {
            print_progress(o, f, &pg, now);
            next_progress = now + PROGRESS_MS * NS_PER_MS;
        }
        if (now >= next_flush) {
            if (rec_file_flush(f) != 0) {
                failed = true;
                break;
            }
            next_flush = now + FLUSH_MS * NS_PER_MS;
        }
        if (now >= end)
            break;
        int64_t wake = next_flush < end ? next_flush : end;
        if (pg.tty && next_progress < wake)
            wake = next_progress;
        long wait_ms = (long)((wake - now + NS_PER_MS - 1) / NS_PER_MS);
        if (zmq_poll(items, (int)o->ntopics + 1, wait_ms) < 0 && errno != EINTR) {
            rc = fail(o, "cannot wait for blocks: %s", zmq_strerror(errno));
            why = "stopped on an error";
            break;
        }
        if (items[o->ntopics].revents & ZMQ_POLLIN) {
            struct signalfd_siginfo si;
            if (read(sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
                snprintf(sigwhy, sizeof sigwhy, "stopped by SIG%s", sigabbrev_np((int)si.ssi_signo));
                why = sigwhy;
                for (size_t i = 0; i < o->ntopics && !failed; i++)
                    failed = drain(o, f, &st[i], i) != 0;
                break;
            }
        }
        /* Every subscription at every wake (at least each FLUSH_MS), readable
         * or not: lmq_sub_recv also returns credit and renews the lease. */
        for (size_t i = 0; i < o->ntopics && !failed; i++)
            failed = drain(o, f, &st[i], i) != 0;
        if (failed)
            break;
    }
    if (!failed && rec_file_flush(f) != 0)
        failed = true;
    if (pg.drawn)
        fputs("\r\033[K", stderr);
    if (failed) {
        why = "stopped on an error";
        rc = fail(o, "%s", rec_file_last_error(f));
    }
    int64_t now = lmq_clock_mono_ns();
    rec_totals_t t;
    rec_file_totals(f, &t);
    int crc = rec_file_close(&f, err, sizeof err);
    if (crc == LMQ_ECLOSED) {
        rc = fail(o, "%s", err);
        *hdf5_ok = false;
    } else if (crc != 0 && !failed) {
        rc = fail(o, "%s", err);
    }
    print_summary(o, &t, st, &pg, now, why);
    if (failed && crc != LMQ_ECLOSED)
        fprintf(stderr, "%s: %s: closed; the %llu blocks written before the error stay readable\n", prog_name(o),
                o->output, (unsigned long long)t.written);
out:
    for (size_t i = 0; st && i < o->ntopics; i++)
        lmq_sub_destroy(&st[i].sub);
    rec_file_close(&f, NULL, 0);
    free(items);
    free(info);
    free(st);
    return rc;
}

/* SIGINT/SIGTERM become readable on a signalfd polled next to the sockets.
 * They are blocked before the ZeroMQ context starts its threads, so every
 * thread inherits the mask. A file size limit (RLIMIT_FSIZE) must give EFBIG,
 * reported like a full disk, not kill the process with SIGXFSZ. */
static int catch_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    if (signal(SIGXFSZ, SIG_IGN) == SIG_ERR || sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        return -1;
    return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

int main(int argc, char **argv)
{
    opts_t o = {.timeout_ms = LMQ_PROXY_DEFAULT_TIMEOUT_MS};
    int rc = parse_args(&o, argc, argv);
    if (rc >= 0) {
        free(o.topics);
        return rc;
    }
    int sigfd = catch_signals();
    if (sigfd < 0) {
        rc = fail(&o, "cannot set up signal handling: %s", strerror(errno));
        free(o.topics);
        return rc;
    }
    void *zctx = zmq_ctx_new();
    if (!zctx) {
        rc = fail(&o, "cannot create a ZeroMQ context: %s", zmq_strerror(errno));
    } else {
        zmq_ctx_set(zctx, ZMQ_BLOCKY, 0);
        bool hdf5_ok = true;
        rec_library_init();
        rc = record(&o, zctx, sigfd, &hdf5_ok);
        zmq_ctx_term(zctx);
        if (hdf5_ok)
            rec_library_term();
    }
    close(sigfd);
    free(o.topics);
    return rc;
}
