/* labmq — instrument transports: one byte-stream interface over serial ports,
 * USBTMC devices and TCP sockets, chosen by a connection string.
 *
 *   serial:/dev/ttyUSB0?baud=115200&bits=8&parity=none&stop=1&flow=none
 *   usbtmc:0957:1798            (VID:PID, hex; the first match)
 *   usbtmc:0957:1798:MY12345    (and serial number)
 *   tcp:192.168.1.20:5025       (raw socket, e.g. SCPI on port 5025)
 *
 * Drivers never call libserialport, libusb or sockets themselves; they open a
 * transport from their device's connection string (lmq_dev_transport_open in
 * driver.h does it with the device's log, name and stop flag).
 *
 * Every operation takes an absolute deadline (CLOCK_MONOTONIC ns, from
 * lmq_clock_mono_ns): a dead instrument costs its deadline and never more. Long
 * waits are cut into slices so that a cancel flag (the device stopping) ends
 * them early with LMQ_ECLOSED.
 *
 * Errors: 0 or a negative lmq_status, with the reason in
 * lmq_transport_last_error():
 *   LMQ_ENOTFOUND  no such port or device (named in the message)
 *   LMQ_EPERM      permission denied (the message names the group to join)
 *   LMQ_EBUSY      the port or device is held by another process
 *   LMQ_ETIMEOUT   the deadline passed; the transport stays usable, but call
 *                  lmq_transport_clear() before the next command
 *   LMQ_EIO        unplugged, hung up or reset: the transport is broken
 *                  (lmq_transport_broken) and must be closed and reopened
 *   LMQ_ECLOSED    cancelled (the device is stopping)
 *   LMQ_EARG       a malformed connection string or argument
 *
 * At LMQ_LOG_TRACE every byte written and read is logged in hex (lmq_log_hex,
 * "tx"/"rx") under the transport's source name.
 *
 * A transport belongs to one thread (the device thread); it is not
 * thread-safe. Every descriptor it opens is close-on-exec, and close releases
 * all of them. */
#ifndef LABMQ_TRANSPORT_H
#define LABMQ_TRANSPORT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "labmq/export.h"
#include "labmq/log.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lmq_transport lmq_transport_t;

typedef struct lmq_transport_opts {
    lmq_log_t *log;                /* borrowed; may be NULL */
    const char *source;            /* log source name ("psu1"); NULL = the connection string */
    const atomic_bool *cancel;     /* when it turns true, waits end with LMQ_ECLOSED; may be NULL */
    int open_timeout_ms;           /* 0 = 2000 */
} lmq_transport_opts_t;

/* Opens the transport named by `connection`. On success *t is set; on failure
 * *t is NULL and, when err is not NULL, the reason is written there
 * ("serial:/dev/ttyUSB0: no such port", "...: permission denied: add the user
 * to the 'dialout' group", "...: busy: another process holds it"). */
LMQ_EXPORT int lmq_transport_open(lmq_transport_t **t, const char *connection, const lmq_transport_opts_t *opts,
                                  char *err, size_t errlen);
/* Closes and frees; accepts NULL and *t == NULL. */
LMQ_EXPORT void lmq_transport_close(lmq_transport_t **t);

/* "serial", "usbtmc" or "tcp". */
LMQ_EXPORT const char *lmq_transport_kind(const lmq_transport_t *t);
/* The connection string it was opened with. Borrowed. */
LMQ_EXPORT const char *lmq_transport_connection(const lmq_transport_t *t);

/* Writes all of data[0..len) before the deadline. For USBTMC, one call is one
 * device-dependent message (sent as one or more DEV_DEP_MSG_OUT transfers,
 * EOM set on the last one). */
LMQ_EXPORT int lmq_transport_write(lmq_transport_t *t, const void *data, size_t len, int64_t deadline_ns);

/* Reads what is available, at least 1 byte, at most size, waiting until the
 * deadline for the first byte. *got receives the count. For USBTMC, *eom
 * (may be NULL) is set when the device marked the end of its message; for
 * byte streams it is always false. */
LMQ_EXPORT int lmq_transport_read(lmq_transport_t *t, void *buf, size_t size, size_t *got, bool *eom,
                                  int64_t deadline_ns);

/* Reads up to and including the terminator `term` (e.g. "\n"; not empty), or
 * to the end of a USBTMC message, whichever comes first. Bytes after the
 * terminator stay buffered for the next read. The result is NUL-terminated
 * without the terminator; *len (may be NULL) receives its length. A line that
 * does not fit in size-1 bytes is LMQ_ERANGE (buf holds its first size-1
 * bytes; the rest is discarded up to the terminator or the deadline). On
 * LMQ_ETIMEOUT the part of a line received so far stays buffered, unless it
 * outgrew the read-ahead buffer. */
LMQ_EXPORT int lmq_transport_read_line(lmq_transport_t *t, char *buf, size_t size, size_t *len, const char *term,
                                       int64_t deadline_ns);

/* Reads exactly n bytes (buffered bytes first). */
LMQ_EXPORT int lmq_transport_read_exact(lmq_transport_t *t, void *buf, size_t n, int64_t deadline_ns);

/* Resynchronises after a timeout or an error, so that a late reply to an
 * earlier command is never read as the answer to the next one: discards what
 * is buffered and what arrives until the line has been quiet for quiet_ms
 * (byte streams), or runs the USBTMC abort/clear sequence (INITIATE_CLEAR,
 * CHECK_CLEAR_STATUS, clear halts). Bounded by the deadline. */
LMQ_EXPORT int lmq_transport_clear(lmq_transport_t *t, int quiet_ms, int64_t deadline_ns);

/* USBTMC READ_STATUS_BYTE (IEEE 488.2 status byte). LMQ_EARG on transports
 * that have none. */
LMQ_EXPORT int lmq_transport_status_byte(lmq_transport_t *t, uint8_t *stb, int64_t deadline_ns);

/* A link check that never blocks, for idle devices (the driver's `check`
 * hook): LMQ_EIO when the far end has hung up, been unplugged or reset the
 * connection (the transport is then broken), else 0. (USBTMC asks the
 * kernel whether the device is still attached; no USB traffic.) */
LMQ_EXPORT int lmq_transport_check(lmq_transport_t *t);

/* True once the transport saw an unplug, a hang-up or a reset: only close is
 * useful then. */
LMQ_EXPORT bool lmq_transport_broken(const lmq_transport_t *t);

/* The reason for the last failure; "" when none. Borrowed, valid until the
 * next call on t. */
LMQ_EXPORT const char *lmq_transport_last_error(const lmq_transport_t *t);

/* ---- discovery (labmq scan) ---- */

typedef struct lmq_port_info {
    const char *connection;   /* usable as a device's connection: "serial:/dev/ttyACM0", "usbtmc:0957:1798:MY1" */
    const char *kind;         /* "serial" or "usbtmc" */
    const char *description;  /* a line for people */
    int vid, pid;             /* -1 when not a USB device */
    const char *manufacturer; /* "" when unknown */
    const char *product;
    const char *serial;
} lmq_port_info_t;

typedef void (*lmq_port_fn)(void *user, const lmq_port_info_t *info);

/* Calls fn for every serial port and every USBTMC device on this machine.
 * Returns the number found (0 is not an error), or a negative status with the
 * reason in err when enumeration itself failed. */
LMQ_EXPORT int lmq_transport_scan(lmq_port_fn fn, void *user, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
