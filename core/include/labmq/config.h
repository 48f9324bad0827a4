/* labmq — lab configuration (YAML, via libcyaml).
 *
 *   control: ipc:///run/user/1000/labmq/control   # optional, default endpoint
 *   data: ipc:///run/user/1000/labmq/data         # optional
 *   log_level: info                               # optional
 *   stop_grace: 5                                 # optional: s to wait for devices at stop
 *   fault_after: 3                                # optional: s in a driver before a device is "fault"
 *   time_scale: 1                                 # optional: simulated instruments run this much faster
 *   subscriber_memory: 67108864                   # optional: bytes the daemon holds per stream
 *                                                 #   subscriber at most (protocol 3.2; 64 MiB)
 *   devices:
 *     - name: psu1
 *       driver: sim-psu                           # or a path: ./libmydriver.so
 *       connection: ""                            # optional, e.g. serial:/dev/ttyUSB0?baud=9600
 *       options: {load_ohms: 100}                 # driver options, optional
 *       restore: false                            # optional: write back settings after a reconnect
 *   workers:                                      # optional: supervised worker processes
 *     - name: mean1
 *       program: ./mean-worker                    # a path (relative to the file) or a name in PATH
 *       args: [--stream, daq1/wave]               # optional, after the standard worker argv
 *       env: [LANG=C, PATH=/usr/bin:/bin]         # optional: its whole environment
 *                                                 #   (absent: labmqd's environment)
 *       restart: on-failure                       # optional: always | on-failure (default) | never
 *   security:                                     # optional (docs/security.md)
 *     key: labpc.key                              # this daemon's key pair (labmq keygen), mode 0600
 *     clients:                                    # the allow-list
 *       - name: alice                             # in logs, audit lines and PERMISSION errors
 *         key: alice.key.pub                      # a public key file, or the 40-character Z85 key
 *         role: control                           # observe (default) | control
 *     insecure: false                             # true: serve tcp:// without keys (a warning)
 *
 * Errors name the file, line and column (from libcyaml) or the device and
 * option at fault. A driver given by path is loaded (lmq_driver_load) when
 * the file is; paths in the file, and option values that name files, are
 * relative to the file's directory. */
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
    const char *driver;         /* as written: a built-in name or a path */
    const char *connection;     /* "" when absent */
    const char *const *options; /* NULL-terminated name, value, name, value, ... */
    const lmq_driver_t *drv;    /* the driver it names (built in, or loaded from the path) */
    bool restore;               /* write back last-set properties after a reconnect */
} lmq_config_device_t;

typedef struct lmq_config_worker {
    const char *name;
    const char *program;     /* a path resolved against the file's directory, or a bare name */
    const char *const *args; /* NULL-terminated, after the standard worker argv */
    const char *const *env;  /* NULL-terminated; NULL when the file gives none */
    lmq_restart_t restart;
} lmq_config_worker_t;

typedef struct lmq_config_client {
    const char *name;
    char public_key[LMQ_KEY_Z85_LEN + 1]; /* Z85 (read from the key file when one was named) */
    lmq_role_t role;
} lmq_config_client_t;

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

LMQ_EXPORT size_t lmq_config_worker_count(const lmq_config_t *cfg);
LMQ_EXPORT const lmq_config_worker_t *lmq_config_worker(const lmq_config_t *cfg, size_t i);

/* security: the daemon's public key (Z85; NULL without security.key), the
 * allow-list, and whether tcp:// without keys is allowed. */
LMQ_EXPORT const char *lmq_config_server_public_key(const lmq_config_t *cfg);
LMQ_EXPORT size_t lmq_config_client_count(const lmq_config_t *cfg);
LMQ_EXPORT const lmq_config_client_t *lmq_config_client(const lmq_config_t *cfg, size_t i);
LMQ_EXPORT bool lmq_config_insecure(const lmq_config_t *cfg);

/* Adds every device to the daemon (lmq_daemon_add), every worker
 * (lmq_daemon_add_worker), and the security settings (lmq_daemon_set_curve,
 * lmq_daemon_allow, lmq_daemon_set_insecure). Returns 0 or the first
 * error, with the message in *err (caller frees). */
LMQ_EXPORT int lmq_config_apply(const lmq_config_t *cfg, lmq_daemon_t *d, char **err);

#ifdef __cplusplus
}
#endif
#endif
