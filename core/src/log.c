/* The logger object: levels, a pluggable handler (timestamped stderr lines by
 * default, one fprintf per line so threads never interleave) and the hex
 * trace of instrument I/O. */
#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "labmq/log.h"

struct lmq_log {
    atomic_int level; /* labmqd changes it on a reload while every thread logs */
    lmq_log_fn handler;
    void *user;
};

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

lmq_log_t *lmq_log_new(lmq_log_level_t level, lmq_log_fn handler, void *user)
{
    lmq_log_t *log = calloc(1, sizeof *log);
    if (!log)
        return NULL;
    atomic_init(&log->level, (int)level);
    log->handler = handler;
    log->user = user;
    return log;
}

void lmq_log_destroy(lmq_log_t **log)
{
    if (log && *log) {
        free(*log);
        *log = NULL;
    }
}

void lmq_log_set_level(lmq_log_t *log, lmq_log_level_t level)
{
    if (log)
        atomic_store_explicit(&log->level, (int)level, memory_order_relaxed);
}

lmq_log_level_t lmq_log_get_level(const lmq_log_t *log)
{
    return log ? (lmq_log_level_t)atomic_load_explicit(&((lmq_log_t *)log)->level, memory_order_relaxed) : LMQ_LOG_WARN;
}

int lmq_log_level_parse(const char *text)
{
    for (int i = 0; text && i <= LMQ_LOG_TRACE; i++)
        if (strcasecmp(text, level_names[i]) == 0)
            return i;
    if (text && strcasecmp(text, "warning") == 0)
        return LMQ_LOG_WARN;
    return -1;
}

const char *lmq_log_level_name(lmq_log_level_t level)
{
    return (level >= LMQ_LOG_ERROR && level <= LMQ_LOG_TRACE) ? level_names[level] : "?";
}

void lmq_logv(lmq_log_t *log, lmq_log_level_t level, const char *source, const char *fmt, va_list ap)
{
    if (level > lmq_log_get_level(log))
        return;
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (log && log->handler) {
        log->handler(log->user, level, source ? source : "", msg);
        return;
    }
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    /* One fprintf per line: stdio locks the stream, so lines from several
     * threads do not interleave. */
    fprintf(stderr, "%02d:%02d:%02d.%03ld %-5s %s: %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
            level_names[level], source ? source : "labmq", msg);
}

void lmq_log(lmq_log_t *log, lmq_log_level_t level, const char *source, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lmq_logv(log, level, source, fmt, ap);
    va_end(ap);
}

void lmq_log_hex(lmq_log_t *log, const char *source, const char *what, const void *data, size_t len)
{
    if (LMQ_LOG_TRACE > lmq_log_get_level(log))
        return;
    const unsigned char *p = data;
    for (size_t off = 0; off < len || off == 0; off += 16) {
        char hex[16 * 3 + 1] = "", ascii[17] = "";
        size_t n = len - off < 16 ? len - off : 16;
        for (size_t i = 0; i < n; i++) {
            snprintf(hex + 3 * i, 4, "%02x ", p[off + i]);
            ascii[i] = isprint(p[off + i]) ? (char)p[off + i] : '.';
        }
        lmq_log(log, LMQ_LOG_TRACE, source, "%s %04zx  %-48s %s", what, off, hex, ascii);
        if (len == 0)
            break;
    }
}
