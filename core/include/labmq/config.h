/* labmq — lab configuration (YAML, via libcyaml).
 *
 *   control: ipc:///run/user/1000/labmq/control   # optional, default endpoint
 *   data: ipc:///run/user/1000/labmq/data         # optional
 *   log_level: info                               # optional
 *   devices:
 *     - name: psu1
 *       driver: sim-psu
 *       connection: ""                            # optional
 *       options: {load_ohms: 100}                 # driver options, optional
 *
 * Errors name the file, line and column (from libcyaml) or the device and
 * option at fault. */
#ifndef LABMQ_CONFIG_H
#define LABMQ_CONFIG_H

#include <stddef.h>
#include "labmq/daemon.h"
#include "labmq/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lmq_config lmq_config_t;

typedef struct lmq_config_device {
    const char *name;
    const char *driver;
    const char *connection;   /* "" when absent */
    const char *const *options; /* NULL-terminated name, value, name, value, ... */
} lmq_config_device_t;

/* Loads and validates a file. On failure returns NULL and, when err is not
 * NULL, *err receives a message (caller frees). */
LMQ_EXPORT lmq_config_t *lmq_config_load(const char *path, char **err);
/* Same from YAML text in memory (for tests and embedding). */
LMQ_EXPORT lmq_config_t *lmq_config_parse(const char *yaml, size_t len, char **err);
LMQ_EXPORT void lmq_config_destroy(lmq_config_t **cfg);

/* Borrowed strings; NULL when not set in the file. */
LMQ_EXPORT const char *lmq_config_control(const lmq_config_t *cfg);
LMQ_EXPORT const char *lmq_config_data(const lmq_config_t *cfg);
LMQ_EXPORT const char *lmq_config_log_level(const lmq_config_t *cfg);
LMQ_EXPORT size_t lmq_config_device_count(const lmq_config_t *cfg);
LMQ_EXPORT const lmq_config_device_t *lmq_config_device(const lmq_config_t *cfg, size_t i);

/* Adds every device to the daemon (lmq_daemon_add). Returns 0 or the first
 * error, with the message in *err (caller frees). */
LMQ_EXPORT int lmq_config_apply(const lmq_config_t *cfg, lmq_daemon_t *d, char **err);

#ifdef __cplusplus
}
#endif
#endif
