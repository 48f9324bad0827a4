/* labmq — status codes.
 *
 * Every fallible function returns int: 0 on success, a negative lmq_status on
 * failure. The codes are few and distinct; the detail text lives in the handle
 * that failed (e.g. lmq_proxy_last_error) and travels in every error reply.
 * Append-only: values never change meaning between releases. */
#ifndef LABMQ_STATUS_H
#define LABMQ_STATUS_H

#include "labmq/export.h"

#ifdef __cplusplus
extern "C" {
#endif

enum lmq_status {
    LMQ_OK = 0,
    LMQ_EARG = -1,      /* invalid argument: wrong type, count or value */
    LMQ_EMEM = -2,      /* out of memory */
    LMQ_ETIMEOUT = -3,  /* no answer within the timeout */
    LMQ_EIO = -4,       /* I/O with the instrument failed (unplugged, hang-up) */
    LMQ_EDEVICE = -5,   /* the instrument reported an error or is not open */
    LMQ_ECLOSED = -6,   /* the object or the daemon is shutting down */
    LMQ_EPROTO = -7,    /* malformed or unsupported message */
    LMQ_ENOTFOUND = -8, /* no such device, method, property or stream */
    LMQ_EUNREACH = -9,  /* no daemon answers at the endpoint */
    LMQ_EBUSY = -10,    /* endpoint already served by another daemon */
    LMQ_ECONFIG = -11,  /* invalid configuration */
    LMQ_ERANGE = -12,   /* value outside the property's or argument's limits */
    LMQ_EREADONLY = -13, /* property cannot be written */
    LMQ_EPERM = -14,     /* permission denied (by the operating system or the daemon) */
    LMQ_ESYS = -15,      /* the operating system refused a resource (thread, socket, process) */
    LMQ_ELOCKED = -16,   /* the device is locked by another client (the message names it) */
    LMQ_EOUTCOME = -17   /* the request may or may not have run: its reply was lost; do not retry blindly */
};

/* Human-readable text for a status (static storage, never NULL). */
LMQ_EXPORT const char *lmq_strerror(int status);
/* Wire name of a status, e.g. "TIMEOUT" (static storage, never NULL). */
LMQ_EXPORT const char *lmq_status_name(int status);
/* Inverse of lmq_status_name; unknown names map to LMQ_EPROTO. */
LMQ_EXPORT int lmq_status_from_name(const char *name);

#ifdef __cplusplus
}
#endif
#endif
