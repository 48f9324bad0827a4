/* labmq — CURVE keys and client roles (docs/security.md).
 *
 * A daemon reachable over the network encrypts and authenticates every
 * connection with ZeroMQ's CURVE mechanism: it has a key pair, clients know
 * its public key, and it accepts only the client public keys on its
 * allow-list, each with a role. Keys are 32-byte Curve25519 keys written as
 * 40 Z85 characters.
 *
 * A key file is small text in the format of CZMQ's certificates (zcert), so
 * pyzmq's zmq.auth.load_certificate and CZMQ read it as well:
 *
 *   #   labmq CURVE key pair: keep this file private (mode 0600)
 *   metadata
 *   curve
 *       public-key = "Z85 (40 characters)"
 *       secret-key = "Z85 (40 characters)"
 *
 * `labmq keygen -o NAME` writes NAME (both keys, mode 0600) and NAME.pub
 * (the public key only, to hand out). A file holding a secret key that other
 * users can read is refused. */
#ifndef LABMQ_AUTH_H
#define LABMQ_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include "labmq/export.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LMQ_KEY_Z85_LEN 40

typedef struct lmq_keypair {
    char public_key[LMQ_KEY_Z85_LEN + 1]; /* Z85, NUL-terminated */
    char secret_key[LMQ_KEY_Z85_LEN + 1]; /* Z85; "" when only the public key is known */
} lmq_keypair_t;

/* What a client needs to talk to a daemon with keys: the daemon's public
 * key and the client's own key pair. Proxies, subscriptions and event
 * subscriptions take it at creation (lmq_proxy_new_keys, lmq_sub_new_keys,
 * lmq_events_new_keys), so their very first connection is already CURVE. */
typedef struct lmq_client_keys {
    char server_key[LMQ_KEY_Z85_LEN + 1]; /* the daemon's public key, Z85 */
    lmq_keypair_t client;                 /* this client's key pair (secret included) */
} lmq_client_keys_t;

/* What an allow-listed client may do. observe: ping, list, describe, get,
 * stats, workers and subscribing to data; control: everything, including set
 * and call (anything that may change an instrument's state). */
typedef enum lmq_role { LMQ_ROLE_OBSERVE = 1, LMQ_ROLE_CONTROL = 2 } lmq_role_t;

/* "observe" / "control" -> role; -1 for anything else. */
LMQ_EXPORT int lmq_role_parse(const char *text);
LMQ_EXPORT const char *lmq_role_name(lmq_role_t role);

/* Makes a new key pair. Returns 0, or LMQ_ESYS when this libzmq has no CURVE
 * support (err says so). err may be NULL. */
LMQ_EXPORT int lmq_keypair_new(lmq_keypair_t *kp, char *err, size_t errlen);

/* Writes the key file `path` (both keys, mode 0600) and `path`.pub (the
 * public key, mode 0644). Refuses to replace existing files unless
 * overwrite. Returns 0, LMQ_EARG, LMQ_EBUSY (a file exists) or LMQ_EIO, the
 * reason in err. */
LMQ_EXPORT int lmq_keypair_save(const lmq_keypair_t *kp, const char *path, bool overwrite, char *err, size_t errlen);

/* Reads a key file. need_secret: the file must hold the secret key, and
 * must then not be readable or writable by group or others (LMQ_EPERM
 * otherwise, naming the mode and the fix). A secret key must match the
 * public key. Returns 0, LMQ_EIO (cannot read), LMQ_ECONFIG (not a key file,
 * with the line at fault) or LMQ_EPERM, the reason in err. */
LMQ_EXPORT int lmq_keypair_load(lmq_keypair_t *kp, const char *path, bool need_secret, char *err, size_t errlen);

/* A public key given either as 40 Z85 characters or as the path of a key
 * file (its public-key line; a secret key in it is ignored). out receives
 * the Z85 text. Returns 0 or the error of lmq_keypair_load / LMQ_EARG. */
LMQ_EXPORT int lmq_key_public(char out[LMQ_KEY_Z85_LEN + 1], const char *z85_or_path, char *err, size_t errlen);

/* Fills k from a client key file (the key pair: lmq_keypair_load with
 * need_secret) and the daemon's public key (a .pub file or Z85 text:
 * lmq_key_public). Returns 0 or their error, the reason in err (prefixed
 * with which of the two failed). */
LMQ_EXPORT int lmq_client_keys_load(lmq_client_keys_t *k, const char *key_file, const char *server_key, char *err,
                                    size_t errlen);

/* Whether text is a valid Z85-encoded 32-byte key (40 characters). */
LMQ_EXPORT bool lmq_key_z85_ok(const char *text);

#ifdef __cplusplus
}
#endif
#endif
