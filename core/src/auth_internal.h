/* The daemon's side of security (docs/security.md), internal to liblabmq:
 * its CURVE server key and client allow-list, the ZAP handler thread that
 * enforces the list, who sent a request, what a role may do, and the audit
 * line of every state-changing request. */
#ifndef LMQ_AUTH_INTERNAL_H
#define LMQ_AUTH_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <zmq.h>
#include "labmq/auth.h"
#include "labmq/log.h"
#include "proto.h"

/* The ZAP domain the daemon's sockets authenticate in. */
#define LMQ__ZAP_DOMAIN "labmq"
/* The rule for client names on the allow-list (they appear in logs and
 * replies, and are the identity other features such as locks record). */
#define LMQ__CLIENT_NAME_RULE "1 to 64 letters, digits, '_', '-', '.' and '@'; not local or anonymous@..."

typedef struct lmq__auth lmq__auth_t;

lmq__auth_t *lmq__auth_new(void);
/* Stops the ZAP thread if running, and frees. */
void lmq__auth_destroy(lmq__auth_t **a);

/* The server's secret key (Z85); the public key is derived from it.
 * Returns 0 or LMQ_EARG with the reason in err. */
int lmq__auth_set_server_key(lmq__auth_t *a, const char *secret_z85, char *err, size_t errlen);
/* Adds a client to the allow-list. Names and keys are unique. Returns 0,
 * LMQ_EARG or LMQ_ECONFIG (a duplicate) with the reason in err. */
int lmq__auth_allow(lmq__auth_t *a, const char *name, const char *public_z85, lmq_role_t role, char *err,
                    size_t errlen);
/* Whether a server key is set: the daemon's sockets are then CURVE servers. */
bool lmq__auth_curve(const lmq__auth_t *a);
size_t lmq__auth_client_count(const lmq__auth_t *a);
/* Whether two configurations hold the same server key and allow-list (in
 * the same order): a reload cannot change them under connected clients. */
bool lmq__auth_same(const lmq__auth_t *a, const lmq__auth_t *b);
bool lmq__client_name_ok(const char *name);

/* Starts the ZAP handler thread (it binds inproc://zeromq.zap.01 in zctx)
 * when a server key is set; does nothing otherwise. Must run before the
 * daemon's sockets bind, and lmq__auth_stop after they are closed. Returns 0
 * or a status with the reason in err (LMQ_EBUSY: another ZAP handler already
 * serves this context). */
int lmq__auth_start(lmq__auth_t *a, void *zctx, lmq_log_t *log, char *err, size_t errlen);
void lmq__auth_stop(lmq__auth_t *a);

/* Makes sock a CURVE server authenticated by the ZAP handler (domain
 * LMQ__ZAP_DOMAIN, enforced) and sets up a monitor of its failed handshakes
 * (lmq__auth_watch); `what` names it in the log ("control", "data"). Does
 * nothing without a server key. Call before binding. Returns 0 or LMQ_ESYS. */
int lmq__auth_server_socket(lmq__auth_t *a, void *sock, const char *what, char *err, size_t errlen);

/* Hands the monitors lmq__auth_server_socket set up (on the broker thread)
 * to the ZAP thread, which logs their failed handshakes. Call on the thread
 * that called lmq__auth_start, once the sockets are bound. */
void lmq__auth_watch(lmq__auth_t *a);

/* Client side: whether k holds three valid keys, and making sock a CURVE
 * client with them (before it connects; 0 or -1 with zmq_errno). */
bool lmq__client_keys_ok(const lmq_client_keys_t *k);
int lmq__curve_client(void *sock, const lmq_client_keys_t *k);

/* Who sent msg (any frame of a received request but the ROUTER's routing id
 * frame): the allow-list name the ZAP handler gave the client, else
 * "anonymous@ADDRESS" for an unauthenticated network peer, else "local" (ipc,
 * inproc). Always writes a NUL-terminated name into buf; returns its length. */
size_t lmq__peer_name(const zmq_msg_t *msg, char *buf, size_t n);

/* Whether the client `peer` (lmq__peer_name) may perform op. Without keys
 * everyone may do everything; with keys, inproc peers ("local": the daemon's
 * own process) too. Returns 0, or LMQ_EPERM with a message for the
 * client in err ("client 'alice' has role observe; set needs control"). */
int lmq__auth_permit(const lmq__auth_t *a, const char *peer, lmq__op_t op, char *err, size_t errlen);

/* Whether op may change an instrument's state (audited; needs control). */
bool lmq__op_changes_state(lmq__op_t op);

/* Logs the audit line of a state-changing request at INFO (source "audit"):
 * who, device.name, arguments (truncated), outcome and time to the reply.
 * status 0: OK; else msg is the error text. */
void lmq__audit(lmq_log_t *log, const char *peer, const lmq__request_t *req, int status, const char *msg,
                int64_t elapsed_ns);

#endif
