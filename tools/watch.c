/* labmq CLI — watch: a live one-line summary of a data stream.
 *
 * On a terminal the line is redrawn about four times a second; into a pipe or
 * file one line per second is written, so a log of a long run stays readable.
 * The loop polls the subscription socket together with a signalfd, so Ctrl-C
 * ends it at once with a final summary instead of killing the process. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <zmq.h>
#include "cli.h"

#define NS_PER_MS 1000000LL
#define NS_PER_S 1000000000LL
#define REFRESH_TTY_MS 250
#define REFRESH_PIPE_MS 1000
#define RATE_WINDOW_MS 2000 /* long enough to smooth block jitter, short enough to follow changes */
#define RATE_SNAPSHOTS (RATE_WINDOW_MS / REFRESH_TTY_MS + 1)
#define STALL_MS 2000 /* no block for this long: say so on the live line */
#define WATCH_WINDOW 64 /* blocks in flight: enough for fast streams, and a lag of ~2x that at most */

typedef struct snapshot {
    int64_t t_ns;
    uint64_t blocks;
} snapshot_t;

typedef struct watch {
    cli_t *c;
    const char *topic;
    char units[64]; /* from describe, until blocks bring their own */
    lmq_sub_t *sub;
    lmq_frame_t *last; /* the newest block: summarised only when displayed */
    uint64_t blocks;   /* received since the watch began */
    uint64_t malformed;
    int64_t t_start, t_first, t_last; /* monotonic ns; first/last block */
    snapshot_t snap[RATE_SNAPSHOTS];  /* ring of refresh-time counts, for the rate */
    size_t nsnap, snap_head, snap_cap;
} watch_t;

static void snapshot_push(watch_t *w, int64_t now)
{
    w->snap[w->snap_head] = (snapshot_t){now, w->blocks};
    w->snap_head = (w->snap_head + 1) % w->snap_cap;
    if (w->nsnap < w->snap_cap)
        w->nsnap++;
}

/* Blocks per second over the snapshot window. */
static double current_rate(const watch_t *w, int64_t now)
{
    size_t oldest = (w->snap_head + w->snap_cap - w->nsnap) % w->snap_cap;
    const snapshot_t *s = &w->snap[oldest];
    double dt = (double)(now - s->t_ns) / NS_PER_S;
    return dt > 0 ? (double)(w->blocks - s->blocks) / dt : 0;
}

static size_t frame_count(const lmq_frame_t *f)
{
    size_t sz = lmq_dtype_size(lmq_frame_dtype(f));
    return sz ? lmq_frame_size(f) / sz : 0;
}

static const char *units_of(const watch_t *w)
{
    const char *u = w->last ? lmq_frame_units(w->last) : NULL;
    return u && *u ? u : w->units;
}

/* "shape [1000] <f8  seq 123  lost 0  restarts 0  last: min ... V" */
static void fmt_block_info(const watch_t *w, char *buf, size_t size)
{
    char shape[96], mmm[160] = "";
    const lmq_frame_t *f = w->last;
    cli_fmt_shape(shape, sizeof shape, lmq_frame_ndim(f), lmq_frame_shape(f));
    size_t n = frame_count(f);
    if (n) {
        double lo, hi, mean;
        cli_array_stats(lmq_frame_data(f), lmq_frame_dtype(f), n, &lo, &hi, &mean);
        cli_fmt_minmaxmean(mmm, sizeof mmm, lo, hi, mean);
    }
    const char *u = units_of(w);
    snprintf(buf, size, "shape %s %s  seq %llu  lost %llu  restarts %llu  last: %s%s%s", shape,
             lmq_dtype_name(lmq_frame_dtype(f)), (unsigned long long)lmq_frame_seq(f),
             (unsigned long long)lmq_sub_lost(w->sub),
             (unsigned long long)lmq_sub_restarts(w->sub), mmm, *u ? " " : "", u);
}

static unsigned terminal_width(void)
{
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 10)
        return ws.ws_col;
    return 80;
}

static void show_live(watch_t *w, int64_t now)
{
    cli_t *c = w->c;
    char line[512], info[400] = "", extra[96] = "";
    if (!w->last) {
        snprintf(line, sizeof line, "%s  waiting for data... %.1f s", w->topic, (double)(now - w->t_start) / NS_PER_S);
    } else {
        fmt_block_info(w, info, sizeof info);
        if (now - w->t_last > STALL_MS * NS_PER_MS)
            snprintf(extra, sizeof extra, "  (no data for %.1f s)", (double)(now - w->t_last) / NS_PER_S);
        snprintf(line, sizeof line, "%s  %.1f blocks/s  %s%s", w->topic, current_rate(w, now), info, extra);
    }
    if (w->malformed) {
        size_t len = strlen(line);
        snprintf(line + len, sizeof line - len, "  malformed %llu", (unsigned long long)w->malformed);
    }
    if (c->tty) {
        /* A line wider than the terminal wraps and \r no longer returns to
         * its start: cut it to fit. Columns count code points, not bytes. */
        unsigned width = terminal_width() - 1;
        size_t cols = 0, i = 0;
        for (; line[i]; i++) {
            if (((unsigned char)line[i] & 0xC0) != 0x80 && ++cols > width)
                break;
        }
        line[i] = '\0';
        fprintf(c->out, "\r%s\033[K", line);
    } else {
        fprintf(c->out, "%s\n", line);
    }
    fflush(c->out);
}

static void show_final(watch_t *w, int64_t now)
{
    cli_t *c = w->c;
    double elapsed = (double)(now - w->t_start) / NS_PER_S;
    /* The rate between first and last block leaves out the time it took the
     * subscription to reach the daemon. */
    double span = (double)(w->t_last - w->t_first) / NS_PER_S;
    double rate = w->blocks >= 2 && span > 0 ? (double)(w->blocks - 1) / span : 0;
    if (c->json) {
        json_t *j = json_pack("{s:s, s:I, s:f, s:f, s:I, s:I, s:I, s:s}", "topic", w->topic, "blocks",
                              (json_int_t)w->blocks, "duration_s", elapsed, "rate_hz", rate, "lost",
                              (json_int_t)lmq_sub_lost(w->sub), "restarts", (json_int_t)lmq_sub_restarts(w->sub),
                              "malformed", (json_int_t)w->malformed, "units", units_of(w));
        if (j && w->last) {
            const lmq_frame_t *f = w->last;
            json_t *shape = json_array();
            for (unsigned d = 0; d < lmq_frame_ndim(f); d++)
                json_array_append_new(shape, json_integer((json_int_t)lmq_frame_shape(f)[d]));
            json_object_set_new(j, "dtype", json_string(lmq_dtype_name(lmq_frame_dtype(f))));
            json_object_set_new(j, "shape", shape);
            json_t *last = json_pack("{s:I, s:I, s:I}", "seq", (json_int_t)lmq_frame_seq(f), "epoch",
                                     (json_int_t)lmq_frame_epoch(f), "t_ns", (json_int_t)lmq_frame_time_ns(f));
            size_t n = frame_count(f);
            if (last && n) {
                double lo, hi, mean;
                cli_array_stats(lmq_frame_data(f), lmq_frame_dtype(f), n, &lo, &hi, &mean);
                /* json_real refuses NaN: such keys are simply left out. */
                json_object_set_new(last, "min", json_real(lo));
                json_object_set_new(last, "max", json_real(hi));
                json_object_set_new(last, "mean", json_real(mean));
            }
            json_object_set_new(j, "last", last);
        }
        char *txt = j ? json_dumps(j, JSON_REAL_PRECISION(12)) : NULL;
        fprintf(c->out, "%s\n", txt ? txt : "null");
        free(txt);
        json_decref(j);
        return;
    }
    if (c->tty)
        fputs("\r\033[K", c->out);
    char info[400] = "";
    if (w->last)
        fmt_block_info(w, info, sizeof info);
    else
        snprintf(info, sizeof info, "lost %llu  restarts %llu", (unsigned long long)lmq_sub_lost(w->sub),
                 (unsigned long long)lmq_sub_restarts(w->sub));
    fprintf(c->out, "%s  %llu block%s in %.2f s (%.1f blocks/s)  %s", w->topic, (unsigned long long)w->blocks,
            w->blocks == 1 ? "" : "s", elapsed, rate, info);
    if (w->malformed)
        fprintf(c->out, "  malformed %llu", (unsigned long long)w->malformed);
    fputc('\n', c->out);
}

/* Takes every block already queued. Returns 0, or a status that ends the watch. */
static int drain(watch_t *w)
{
    for (;;) {
        if (w->c->count && w->blocks >= (uint64_t)w->c->count)
            return 0;
        lmq_frame_t *f = NULL;
        int rc = lmq_sub_recv(w->sub, &f, 0);
        if (rc == LMQ_ETIMEOUT)
            return 0;
        if (rc == LMQ_EPROTO) {
            w->malformed++;
            continue;
        }
        if (rc != 0)
            return rc;
        int64_t now = lmq_clock_mono_ns();
        if (w->blocks++ == 0)
            w->t_first = now;
        w->t_last = now;
        lmq_frame_destroy(&w->last);
        w->last = f;
    }
}

/* Runs until --count, --duration, a signal or an error. Returns a status. */
static int watch_loop(watch_t *w)
{
    cli_t *c = w->c;
    int64_t interval = (c->tty ? REFRESH_TTY_MS : REFRESH_PIPE_MS) * NS_PER_MS;
    w->snap_cap = (size_t)(RATE_WINDOW_MS * NS_PER_MS / interval) + 1;
    w->t_start = lmq_clock_mono_ns();
    snapshot_push(w, w->t_start);
    int64_t deadline = c->duration_s > 0 ? w->t_start + (int64_t)(c->duration_s * NS_PER_S) : INT64_MAX;
    int64_t next = w->t_start + interval;
    for (;;) {
        int64_t now = lmq_clock_mono_ns();
        if ((c->count && w->blocks >= (uint64_t)c->count) || now >= deadline)
            return 0;
        int64_t until = next < deadline ? next : deadline;
        long wait_ms = until > now ? (long)((until - now + NS_PER_MS - 1) / NS_PER_MS) : 0;
        zmq_pollitem_t items[2] = {
            {lmq_sub_socket(w->sub), 0, ZMQ_POLLIN, 0},
            {NULL, c->sigfd, ZMQ_POLLIN, 0},
        };
        int n = zmq_poll(items, c->sigfd >= 0 ? 2 : 1, wait_ms);
        if (n < 0 && errno != EINTR) {
            cli_failf(c, LMQ_EIO, "waiting for data: %s", zmq_strerror(errno));
            return LMQ_EIO;
        }
        if (n > 0 && (items[1].revents & ZMQ_POLLIN)) {
            struct signalfd_siginfo si;
            if (read(c->sigfd, &si, sizeof si) < 0) {
                /* Nothing to do: the signal still means "stop". */
            }
            return 0;
        }
        /* At every wake, readable or not: lmq_sub_recv also returns credit
         * and renews the subscription's lease. */
        int rc = drain(w);
        if (rc != 0) {
            cli_failf(c, rc, "%s", lmq_sub_last_error(w->sub));
            return rc;
        }
        now = lmq_clock_mono_ns();
        if (now >= next) {
            snapshot_push(w, now);
            if (!c->json)
                show_live(w, now);
            next = now - next > interval ? now + interval : next + interval;
        }
    }
}

/* One line per change event: time, device, what changed, and why. */
static void show_event(cli_t *c, const lmq_event_t *ev)
{
    if (c->json) {
        char val[200] = "null";
        lmq_value_format(lmq_event_value(ev), val, sizeof val);
        json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I}", "device", lmq_event_device(ev), "kind",
                              lmq_event_kind(ev), "name", lmq_event_name(ev), "value", val, "cause",
                              lmq_event_cause(ev), "state", lmq_event_state(ev), "error", lmq_event_error(ev), "seq",
                              (json_int_t)lmq_event_seq(ev), "lost_before", (json_int_t)lmq_event_lost_before(ev));
        char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
        fprintf(c->out, "%s\n", txt ? txt : "null");
        free(txt);
        json_decref(j);
        fflush(c->out);
        return;
    }
    time_t secs = (time_t)(lmq_event_time_ns(ev) / 1000000000);
    struct tm tm;
    localtime_r(&secs, &tm);
    char when[32];
    snprintf(when, sizeof when, "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(lmq_event_time_ns(ev) / 1000000 % 1000));
    if (lmq_event_lost_before(ev))
        fprintf(c->out, "%s  (%llu events lost)\n", when, (unsigned long long)lmq_event_lost_before(ev));
    if (!strcmp(lmq_event_kind(ev), "state")) {
        fprintf(c->out, "%s  %s is %s (%s)%s%s\n", when, lmq_event_device(ev), lmq_event_state(ev),
                lmq_event_cause(ev), *lmq_event_error(ev) ? ": " : "", lmq_event_error(ev));
    } else if (!strcmp(lmq_event_kind(ev), "lock")) {
        fprintf(c->out, "%s  %s %s by '%s'%s%s%s%s\n", when, lmq_event_device(ev), lmq_event_cause(ev),
                lmq_event_holder(ev), *lmq_event_safe_state(ev) ? "; safe state: " : "", lmq_event_safe_state(ev),
                *lmq_event_error(ev) ? ": " : "", lmq_event_error(ev));
    } else {
        char val[200];
        lmq_value_format(lmq_event_value(ev), val, sizeof val);
        fprintf(c->out, "%s  %s.%s = %s (%s)\n", when, lmq_event_device(ev), lmq_event_name(ev), val,
                lmq_event_cause(ev));
    }
    fflush(c->out);
}

/* `watch DEVICE`: the device's change events until Ctrl-C, --count or --duration. */
static int watch_events(cli_t *c, const char *dev)
{
    lmq_proxy_t *p = cli_proxy(c, dev);
    json_t *desc = NULL;
    int rc = p ? cli_describe(c, p, &desc) : CLI_FAILED; /* an unknown device is an error, not a silent wait */
    if (rc == CLI_OK)
        rc = cli_resolve_data(c, p);
    lmq_proxy_destroy(&p);
    json_decref(desc);
    if (rc != CLI_OK)
        return rc;
    lmq_events_t *e = lmq_events_new_keys(c->zctx, c->data, dev, cli_keys(c));
    if (!e)
        return cli_failf(c, LMQ_EARG, "cannot subscribe to %s's events at %s", dev, c->data);
    if (!c->json) {
        fprintf(c->out, "watching %s: property changes and state, until Ctrl-C\n", dev);
        fflush(c->out);
    }
    int64_t t0 = lmq_clock_mono_ns();
    int64_t deadline = c->duration_s > 0 ? t0 + (int64_t)(c->duration_s * NS_PER_S) : INT64_MAX;
    long seen = 0;
    for (;;) {
        int64_t now = lmq_clock_mono_ns();
        if ((c->count && seen >= c->count) || now >= deadline)
            break;
        long wait_ms = deadline == INT64_MAX ? -1 : (long)((deadline - now + NS_PER_MS - 1) / NS_PER_MS);
        zmq_pollitem_t items[2] = {
            {lmq_events_socket(e), 0, ZMQ_POLLIN, 0},
            {NULL, c->sigfd, ZMQ_POLLIN, 0},
        };
        int n = zmq_poll(items, c->sigfd >= 0 ? 2 : 1, wait_ms);
        if (n < 0 && errno != EINTR) {
            rc = cli_failf(c, LMQ_EIO, "waiting for events: %s", zmq_strerror(errno));
            break;
        }
        if (n > 0 && (items[1].revents & ZMQ_POLLIN))
            break;
        lmq_event_t *ev = NULL;
        while (n > 0 && lmq_events_recv(e, &ev, 0) == 0) {
            show_event(c, ev);
            lmq_event_destroy(&ev);
            if (c->count && ++seen >= c->count)
                break;
        }
    }
    lmq_events_destroy(&e);
    return rc;
}

int cli_cmd_watch(cli_t *c, int argc, char **argv)
{
    (void)argc;
    const char *topic = argv[0];
    const char *slash = strchr(topic, '/');
    if (!slash && *topic)
        return watch_events(c, topic);
    if (!slash || slash == topic || !slash[1] || strchr(slash + 1, '/'))
        return cli_usage(c, "watch needs DEVICE/STREAM (a stream) or DEVICE (its change events), e.g. 'labmq "
                            "watch daq1/wave', not '%s'",
                         topic);

    size_t dlen = (size_t)(slash - topic);
    char *dev = strndup(topic, dlen);
    if (!dev)
        return cli_failf(c, LMQ_EMEM, "out of memory");
    watch_t w = {.c = c, .topic = topic};
    json_t *desc = NULL;
    lmq_proxy_t *p = cli_proxy(c, dev);
    int rc = p ? cli_describe(c, p, &desc) : CLI_FAILED;
    if (rc != CLI_OK)
        goto out;
    /* Checking the stream first turns a typo into an error instead of a
     * silent wait for blocks that never come. */
    json_t *st = cli_desc_find(desc, "streams", slash + 1);
    if (!st) {
        rc = cli_fail_notfound(c, desc, dev, "streams", "stream", slash + 1);
        goto out;
    }
    const char *units = json_string_value(json_object_get(st, "units"));
    snprintf(w.units, sizeof w.units, "%s", units ? units : "");
    lmq_proxy_destroy(&p);
    /* Lossy: a display never holds up anything; when it falls behind, the
     * daemon keeps the newest blocks for it (at most WATCH_WINDOW queued). */
    const lmq_sub_opts_t lossy = {.mode = LMQ_SUB_LOSSY, .window = WATCH_WINDOW, .keys = cli_keys(c)};
    w.sub = lmq_sub_new_opts(c->zctx, c->control, topic, &lossy);
    if (!w.sub) {
        rc = cli_failf(c, LMQ_EARG, "cannot subscribe to %s at %s", topic, c->control);
        goto out;
    }

    int st_rc = watch_loop(&w);
    if (st_rc != 0) {
        rc = CLI_FAILED;
        if (!c->json && c->tty)
            fputc('\n', c->out); /* keep the last live line above the error */
        goto out;
    }
    show_final(&w, lmq_clock_mono_ns());
    if (w.blocks == 0)
        rc = cli_failf(c, LMQ_ETIMEOUT, "no block on %s at %s (is the stream running? see 'labmq describe %s')",
                       topic, c->control, dev);
out:
    lmq_proxy_destroy(&p);
    lmq_frame_destroy(&w.last);
    lmq_sub_destroy(&w.sub);
    json_decref(desc);
    free(dev);
    return rc;
}
