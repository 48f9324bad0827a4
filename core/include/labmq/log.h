/* labmq — logging.
 *
 * A logger is an object, not global state: the daemon owns one and hands it to
 * its devices. A NULL logger is valid everywhere and logs warnings and errors
 * to stderr. Handlers may be called from several threads at once. */
#ifndef LABMQ_LOG_H
#define LABMQ_LOG_H

#include <stdarg.h>
#include "labmq/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lmq_log_level {
    LMQ_LOG_ERROR = 0,
    LMQ_LOG_WARN = 1,
    LMQ_LOG_INFO = 2,
    LMQ_LOG_DEBUG = 3,
    LMQ_LOG_TRACE = 4 /* hex trace of transport I/O */
} lmq_log_level_t;

typedef void (*lmq_log_fn)(void *user, lmq_log_level_t level, const char *source, const char *msg);

typedef struct lmq_log lmq_log_t;

/* handler NULL = timestamped lines on stderr. Returns NULL on allocation failure. */
LMQ_EXPORT lmq_log_t *lmq_log_new(lmq_log_level_t level, lmq_log_fn handler, void *user);
LMQ_EXPORT void lmq_log_destroy(lmq_log_t **log);
LMQ_EXPORT void lmq_log_set_level(lmq_log_t *log, lmq_log_level_t level);
LMQ_EXPORT lmq_log_level_t lmq_log_get_level(const lmq_log_t *log);
/* Parses "error|warn|info|debug|trace"; returns -1 when unknown. */
LMQ_EXPORT int lmq_log_level_parse(const char *text);
LMQ_EXPORT const char *lmq_log_level_name(lmq_log_level_t level);

/* source names the emitter ("broker", "psu1", ...). */
LMQ_EXPORT void lmq_log(lmq_log_t *log, lmq_log_level_t level, const char *source, const char *fmt, ...)
    LMQ_PRINTF(4, 5);
LMQ_EXPORT void lmq_logv(lmq_log_t *log, lmq_log_level_t level, const char *source, const char *fmt, va_list ap);
/* Logs `len` bytes as hex + ASCII at TRACE level, prefixed with `what` ("tx"/"rx"). */
LMQ_EXPORT void lmq_log_hex(lmq_log_t *log, const char *source, const char *what, const void *data, size_t len);

#ifdef __cplusplus
}
#endif
#endif
