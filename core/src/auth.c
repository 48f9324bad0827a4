/* Security: CURVE key pairs and key files, the daemon's allow-list of client
 * keys with their roles, the ZAP handler thread that enforces it (and logs,
 * at a bounded rate, every connection it or the CURVE handshake refuses),
 * the identity of a request's sender, the role check and the audit line. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "auth_internal.h"
#include "labmq/driver.h"
#include "labmq/status.h"

#ifndef ZMQ_ZAP_ENFORCE_DOMAIN
#define ZMQ_ZAP_ENFORCE_DOMAIN 93 /* a DRAFT option in libzmq 4.3's header; libzmq 4.3 implements it */
#endif

#define KEY_FILE_MAX 8192
#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
/* Refusals are logged, but a client retrying every 100 ms (ZeroMQ's
 * reconnect) must not flood the log: at most this many lines per window,
 * then one line counting the rest. */
#define REFUSAL_LOG_BURST 10
#define REFUSAL_LOG_WINDOW_NS (60LL * 1000000000)
#define MAX_MONITORS 4

typedef struct client {
    char name[65];
    uint8_t key[32];
    lmq_role_t role;
} client_t;

struct lmq__auth {
    bool curve;
    uint8_t server_secret[32];
    client_t *clients;
    size_t nclients;

    /* the ZAP thread */
    void *zctx;
    lmq_log_t *log;
    void *pipe; /* caller's end */
    char pipe_endpoint[64];
    pthread_t thread;
    bool running;
    struct monitor {
        char endpoint[80];
        char what[16];
    } monitors[MAX_MONITORS];
    size_t nmonitors; /* set up by the broker thread before it reports ready */
    size_t nwatched;  /* handed to the ZAP thread (lmq__auth_watch) */
    /* ZAP thread only */
    int64_t window_start;
    unsigned window_lines;
    uint64_t window_suppressed;
};

/* ---- roles ---- */

int lmq_role_parse(const char *text)
{
    if (text && strcmp(text, "observe") == 0)
        return LMQ_ROLE_OBSERVE;
    if (text && strcmp(text, "control") == 0)
        return LMQ_ROLE_CONTROL;
    return -1;
}

const char *lmq_role_name(lmq_role_t role)
{
    return role == LMQ_ROLE_OBSERVE ? "observe" : role == LMQ_ROLE_CONTROL ? "control" : "?";
}

/* ---- keys ---- */

static void seterr(char *err, size_t errlen, const char *fmt, ...) LMQ_PRINTF(3, 4);
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

bool lmq_key_z85_ok(const char *text)
{
    uint8_t bin[32];
    return text && strlen(text) == LMQ_KEY_Z85_LEN && zmq_z85_decode(bin, text) != NULL;
}

int lmq_keypair_new(lmq_keypair_t *kp, char *err, size_t errlen)
{
    if (!kp)
        return LMQ_EARG;
    memset(kp, 0, sizeof *kp);
    if (!zmq_has("curve") || zmq_curve_keypair(kp->public_key, kp->secret_key) != 0) {
        seterr(err, errlen, "this libzmq cannot make CURVE keys (built without libsodium?)");
        return LMQ_ESYS;
    }
    return 0;
}

static int write_file(const char *path, const char *text, mode_t mode, bool overwrite, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | (overwrite ? O_TRUNC : O_EXCL), mode);
    if (fd < 0) {
        int e = errno;
        seterr(err, errlen, "cannot create %s: %s", path, strerror(e));
        return e == EEXIST ? LMQ_EBUSY : LMQ_EIO;
    }
    /* An existing file keeps its mode through O_TRUNC: set ours. */
    size_t len = strlen(text);
    bool ok = fchmod(fd, mode) == 0 && write(fd, text, len) == (ssize_t)len;
    int e = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        seterr(err, errlen, "cannot write %s: %s", path, strerror(e));
        unlink(path);
        return LMQ_EIO;
    }
    return 0;
}

int lmq_keypair_save(const lmq_keypair_t *kp, const char *path, bool overwrite, char *err, size_t errlen)
{
    if (!kp || !path || !*path || !lmq_key_z85_ok(kp->public_key) || !lmq_key_z85_ok(kp->secret_key)) {
        seterr(err, errlen, "no key file name, or not a complete key pair");
        return LMQ_EARG;
    }
    size_t plen = strlen(path) + 5;
    char *pub = malloc(plen), text[600];
    if (!pub) {
        seterr(err, errlen, "out of memory");
        return LMQ_EMEM;
    }
    snprintf(pub, plen, "%s.pub", path);
    snprintf(text, sizeof text,
             "#   labmq CURVE key pair: keep this file private (mode 0600).\n"
             "#   Hand out %s (the public key) instead.\n"
             "metadata\n"
             "curve\n"
             "    public-key = \"%s\"\n"
             "    secret-key = \"%s\"\n",
             pub, kp->public_key, kp->secret_key);
    int rc = write_file(path, text, 0600, overwrite, err, errlen);
    if (rc == 0) {
        snprintf(text, sizeof text,
                 "#   labmq CURVE public key: give it to whoever must know this party\n"
                 "#   (clients: the daemon's key; the daemon's allow-list: a client's key).\n"
                 "metadata\n"
                 "curve\n"
                 "    public-key = \"%s\"\n",
                 kp->public_key);
        rc = write_file(pub, text, 0644, overwrite, err, errlen);
        if (rc != 0)
            unlink(path);
    }
    explicit_bzero(text, sizeof text);
    free(pub);
    return rc;
}

/* "public-key = "VALUE"" -> VALUE when line (trimmed) names key; NULL when it
 * names another. */
static const char *key_value(char *line, const char *key, bool *bad)
{
    size_t klen = strlen(key);
    if (strncmp(line, key, klen) != 0)
        return NULL;
    char *p = line + klen;
    p += strspn(p, " \t");
    if (*p != '=') {
        *bad = true;
        return NULL;
    }
    p++;
    p += strspn(p, " \t");
    char q = (*p == '"' || *p == '\'') ? *p++ : 0;
    char *end = p + strlen(p);
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    if (q) {
        if (end == p || end[-1] != q) {
            *bad = true;
            return NULL;
        }
        end--;
    }
    *end = 0;
    return p;
}

int lmq_keypair_load(lmq_keypair_t *kp, const char *path, bool need_secret, char *err, size_t errlen)
{
    if (!kp || !path || !*path) {
        seterr(err, errlen, "no key file given");
        return LMQ_EARG;
    }
    memset(kp, 0, sizeof *kp);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        seterr(err, errlen, "cannot open key file %s: %s", path, strerror(errno));
        return LMQ_EIO;
    }
    struct stat st;
    char buf[KEY_FILE_MAX + 1];
    ssize_t n = 0;
    int rc = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        seterr(err, errlen, "key file %s: not a regular file", path);
        rc = LMQ_ECONFIG;
    } else if (st.st_size > KEY_FILE_MAX) {
        seterr(err, errlen, "key file %s: %lld bytes; a key file is a few lines (made by labmq keygen)", path,
               (long long)st.st_size);
        rc = LMQ_ECONFIG;
    } else {
        size_t got = 0;
        while (got < KEY_FILE_MAX && (n = read(fd, buf + got, KEY_FILE_MAX - got)) > 0)
            got += (size_t)n;
        if (n < 0) {
            seterr(err, errlen, "cannot read key file %s: %s", path, strerror(errno));
            rc = LMQ_EIO;
        }
        buf[got] = 0;
    }
    close(fd);
    int line_no = 0;
    bool have_secret_line = false;
    for (char *save = NULL, *line = rc == 0 ? strtok_r(buf, "\n", &save) : NULL; line && rc == 0;
         line = strtok_r(NULL, "\n", &save)) {
        line_no++;
        line += strspn(line, " \t");
        line[strcspn(line, "\r")] = 0;
        bool bad = false;
        const char *v;
        char *slot = NULL;
        const char *which = NULL;
        if ((v = key_value(line, "public-key", &bad))) {
            slot = kp->public_key;
            which = "public-key";
        } else if (!bad && (v = key_value(line, "secret-key", &bad))) {
            slot = kp->secret_key;
            which = "secret-key";
            have_secret_line = true;
        }
        if (bad) {
            seterr(err, errlen, "key file %s, line %d: expected NAME = \"VALUE\"", path, line_no);
            rc = LMQ_ECONFIG;
        } else if (slot && !lmq_key_z85_ok(v)) {
            seterr(err, errlen, "key file %s, line %d: the %s is not a 40-character Z85 key", path, line_no, which);
            rc = LMQ_ECONFIG;
        } else if (slot) {
            snprintf(slot, LMQ_KEY_Z85_LEN + 1, "%s", v);
        }
    }
    explicit_bzero(buf, sizeof buf);
    if (rc == 0 && !kp->public_key[0]) {
        seterr(err, errlen, "key file %s: no public-key line (is it a key file made by labmq keygen?)", path);
        rc = LMQ_ECONFIG;
    }
    if (rc == 0 && need_secret && !have_secret_line) {
        seterr(err, errlen, "key file %s holds only a public key; this needs the key pair (the file without .pub)",
               path);
        rc = LMQ_ECONFIG;
    }
    if (rc == 0 && need_secret && (st.st_mode & 077)) {
        seterr(err, errlen,
               "key file %s holds a secret key but has mode %04o: other users may read it; run chmod 600 %s "
               "(and make a new key pair if others may have copied it)",
               path, (unsigned)(st.st_mode & 07777), path);
        rc = LMQ_EPERM;
    }
    if (rc == 0 && kp->secret_key[0]) {
        char derived[LMQ_KEY_Z85_LEN + 1];
        if (zmq_curve_public(derived, kp->secret_key) != 0 || strcmp(derived, kp->public_key) != 0) {
            seterr(err, errlen, "key file %s: its secret key does not belong to its public key", path);
            rc = LMQ_ECONFIG;
        }
        explicit_bzero(derived, sizeof derived);
    }
    if (rc == 0 && !need_secret)
        explicit_bzero(kp->secret_key, sizeof kp->secret_key);
    if (rc != 0)
        explicit_bzero(kp, sizeof *kp);
    return rc;
}

int lmq_key_public(char out[LMQ_KEY_Z85_LEN + 1], const char *z85_or_path, char *err, size_t errlen)
{
    if (!out || !z85_or_path || !*z85_or_path) {
        seterr(err, errlen, "no public key given");
        return LMQ_EARG;
    }
    if (lmq_key_z85_ok(z85_or_path)) {
        snprintf(out, LMQ_KEY_Z85_LEN + 1, "%s", z85_or_path);
        return 0;
    }
    if (strlen(z85_or_path) == LMQ_KEY_Z85_LEN && access(z85_or_path, F_OK) != 0) {
        seterr(err, errlen, "'%s' is neither a Z85 key (invalid characters) nor a key file", z85_or_path);
        return LMQ_EARG;
    }
    lmq_keypair_t kp;
    int rc = lmq_keypair_load(&kp, z85_or_path, false, err, errlen);
    if (rc == 0)
        snprintf(out, LMQ_KEY_Z85_LEN + 1, "%s", kp.public_key);
    explicit_bzero(&kp, sizeof kp);
    return rc;
}

int lmq_client_keys_load(lmq_client_keys_t *k, const char *key_file, const char *server_key, char *err, size_t errlen)
{
    if (!k)
        return LMQ_EARG;
    char why[560];
    int rc = lmq_keypair_load(&k->client, key_file, true, why, sizeof why);
    if (rc != 0) {
        seterr(err, errlen, "client key: %s", why);
        return rc;
    }
    rc = lmq_key_public(k->server_key, server_key, why, sizeof why);
    if (rc != 0) {
        seterr(err, errlen, "server key: %s", why);
        explicit_bzero(k, sizeof *k);
    }
    return rc;
}

bool lmq__client_keys_ok(const lmq_client_keys_t *k)
{
    return k && lmq_key_z85_ok(k->server_key) && lmq_key_z85_ok(k->client.public_key) &&
           lmq_key_z85_ok(k->client.secret_key);
}

int lmq__curve_client(void *sock, const lmq_client_keys_t *k)
{
    uint8_t server[32], pub[32], sec[32];
    zmq_z85_decode(server, k->server_key);
    zmq_z85_decode(pub, k->client.public_key);
    zmq_z85_decode(sec, k->client.secret_key);
    int rc = zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server, 32) == 0 &&
                     zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, pub, 32) == 0 &&
                     zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, sec, 32) == 0
                 ? 0
                 : -1;
    explicit_bzero(sec, sizeof sec);
    return rc;
}

/* ---- the allow-list ---- */

lmq__auth_t *lmq__auth_new(void) { return calloc(1, sizeof(lmq__auth_t)); }

void lmq__auth_destroy(lmq__auth_t **pa)
{
    if (!pa || !*pa)
        return;
    lmq__auth_t *a = *pa;
    lmq__auth_stop(a);
    explicit_bzero(a->server_secret, sizeof a->server_secret);
    free(a->clients);
    free(a);
    *pa = NULL;
}

bool lmq__client_name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    /* The names lmq__peer_name gives unauthenticated peers are not for clients. */
    if (n < 1 || n > 64 || strcmp(name, "local") == 0 || strncmp(name, "anonymous@", 10) == 0)
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
              *p == '-' || *p == '.' || *p == '@'))
            return false;
    return true;
}

int lmq__auth_set_server_key(lmq__auth_t *a, const char *secret_z85, char *err, size_t errlen)
{
    if (!a || !lmq_key_z85_ok(secret_z85)) {
        seterr(err, errlen, "the server secret key is not a 40-character Z85 key");
        return LMQ_EARG;
    }
    if (!zmq_has("curve")) {
        seterr(err, errlen, "this libzmq has no CURVE support (built without libsodium?)");
        return LMQ_ESYS;
    }
    zmq_z85_decode(a->server_secret, secret_z85);
    a->curve = true;
    return 0;
}

int lmq__auth_allow(lmq__auth_t *a, const char *name, const char *public_z85, lmq_role_t role, char *err, size_t errlen)
{
    if (!a)
        return LMQ_EARG;
    if (!lmq__client_name_ok(name)) {
        seterr(err, errlen, "invalid client name '%.80s' (use " LMQ__CLIENT_NAME_RULE ")", name ? name : "(null)");
        return LMQ_EARG;
    }
    if (!lmq_key_z85_ok(public_z85)) {
        seterr(err, errlen, "client '%s': the public key is not a 40-character Z85 key", name);
        return LMQ_EARG;
    }
    if (role != LMQ_ROLE_OBSERVE && role != LMQ_ROLE_CONTROL) {
        seterr(err, errlen, "client '%s': unknown role %d (observe or control)", name, (int)role);
        return LMQ_EARG;
    }
    client_t c = {.role = role};
    snprintf(c.name, sizeof c.name, "%s", name);
    zmq_z85_decode(c.key, public_z85);
    for (size_t i = 0; i < a->nclients; i++) {
        if (strcmp(a->clients[i].name, name) == 0) {
            seterr(err, errlen, "client '%s' is on the allow-list twice", name);
            return LMQ_ECONFIG;
        }
        if (memcmp(a->clients[i].key, c.key, sizeof c.key) == 0) {
            seterr(err, errlen, "clients '%s' and '%s' have the same public key", a->clients[i].name, name);
            return LMQ_ECONFIG;
        }
    }
    client_t *nc = realloc(a->clients, (a->nclients + 1) * sizeof *nc);
    if (!nc) {
        seterr(err, errlen, "out of memory");
        return LMQ_EMEM;
    }
    a->clients = nc;
    a->clients[a->nclients++] = c;
    return 0;
}

bool lmq__auth_curve(const lmq__auth_t *a) { return a && a->curve; }
size_t lmq__auth_client_count(const lmq__auth_t *a) { return a ? a->nclients : 0; }

bool lmq__auth_same(const lmq__auth_t *a, const lmq__auth_t *b)
{
    if (!a || !b)
        return a == b;
    if (a->curve != b->curve || a->nclients != b->nclients ||
        (a->curve && memcmp(a->server_secret, b->server_secret, sizeof a->server_secret) != 0))
        return false;
    for (size_t i = 0; i < a->nclients; i++)
        if (strcmp(a->clients[i].name, b->clients[i].name) != 0 || a->clients[i].role != b->clients[i].role ||
            memcmp(a->clients[i].key, b->clients[i].key, sizeof a->clients[i].key) != 0)
            return false;
    return true;
}

static const client_t *find_client(const lmq__auth_t *a, const char *name)
{
    for (size_t i = 0; i < a->nclients; i++)
        if (strcmp(a->clients[i].name, name) == 0)
            return &a->clients[i];
    return NULL;
}

/* ---- the ZAP handler thread (ZeroMQ RFC 27) ---- */

static void refusal_log(lmq__auth_t *a, const char *fmt, ...) LMQ_PRINTF(2, 3);
static void refusal_log(lmq__auth_t *a, const char *fmt, ...)
{
    int64_t now = lmq_clock_mono_ns();
    if (now - a->window_start >= REFUSAL_LOG_WINDOW_NS) {
        if (a->window_suppressed)
            lmq_log(a->log, LMQ_LOG_WARN, "auth", "%llu more refused connections in the last %lld s were not logged",
                    (unsigned long long)a->window_suppressed, REFUSAL_LOG_WINDOW_NS / 1000000000);
        a->window_start = now;
        a->window_lines = 0;
        a->window_suppressed = 0;
    }
    if (a->window_lines >= REFUSAL_LOG_BURST) {
        a->window_suppressed++;
        return;
    }
    a->window_lines++;
    va_list ap;
    va_start(ap, fmt);
    lmq_logv(a->log, LMQ_LOG_WARN, "auth", fmt, ap);
    va_end(ap);
}

static void frame_text(zmq_msg_t *m, char *buf, size_t n)
{
    size_t len = zmq_msg_size(m);
    if (len >= n)
        len = n - 1;
    memcpy(buf, zmq_msg_data(m), len);
    buf[len] = 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] >= 0x7f)
            buf[i] = '?';
}

static void zap_reply(void *rep, zmq_msg_t *request_id, const char *code, const char *text, const char *user)
{
    zmq_send(rep, "1.0", 3, ZMQ_SNDMORE);
    zmq_msg_send(request_id, rep, ZMQ_SNDMORE);
    zmq_send(rep, code, strlen(code), ZMQ_SNDMORE);
    zmq_send(rep, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(rep, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(rep, "", 0, 0);
}

static void handle_zap(lmq__auth_t *a, void *rep)
{
    enum { NF = 8 };
    zmq_msg_t f[NF];
    size_t n = 0;
    bool more = true;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, rep, 0) < 0) {
            zmq_msg_close(&m);
            break;
        }
        more = zmq_msg_more(&m);
        if (n < NF) {
            zmq_msg_init(&f[n]);
            zmq_msg_move(&f[n++], &m);
        }
        zmq_msg_close(&m);
    }
    if (n < 6) { /* not a ZAP request; REP still owes an answer */
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
        zmq_send(rep, "", 0, 0);
        return;
    }
    char version[8], domain[32], address[64], mech[16];
    frame_text(&f[0], version, sizeof version);
    frame_text(&f[2], domain, sizeof domain);
    frame_text(&f[3], address, sizeof address);
    frame_text(&f[5], mech, sizeof mech);
    const client_t *who = NULL;
    if (strcmp(mech, "CURVE") == 0 && n >= 7 && zmq_msg_size(&f[6]) == 32)
        for (size_t i = 0; i < a->nclients && !who; i++)
            if (memcmp(a->clients[i].key, zmq_msg_data(&f[6]), 32) == 0)
                who = &a->clients[i];
    if (strcmp(version, "1.0") != 0) {
        zap_reply(rep, &f[1], "500", "unsupported ZAP version", "");
    } else if (strcmp(domain, LMQ__ZAP_DOMAIN) != 0) {
        /* Another server socket in this context: not ours to let in. */
        refusal_log(a, "refused a client from %s of ZAP domain '%s' (this handler serves only '" LMQ__ZAP_DOMAIN "')",
                    address, domain);
        zap_reply(rep, &f[1], "400", "unknown ZAP domain", "");
    } else if (who) {
        lmq_log(a->log, LMQ_LOG_DEBUG, "auth", "client '%s' (%s) connected from %s", who->name,
                lmq_role_name(who->role), address);
        zap_reply(rep, &f[1], "200", "OK", who->name);
    } else if (strcmp(mech, "CURVE") == 0 && n >= 7 && zmq_msg_size(&f[6]) == 32) {
        char z85[LMQ_KEY_Z85_LEN + 1];
        zmq_z85_encode(z85, zmq_msg_data(&f[6]), 32);
        refusal_log(a, "refused a client from %s: its public key %s is not on the allow-list", address, z85);
        zap_reply(rep, &f[1], "400", "client key not on the allow-list", "");
    } else {
        refusal_log(a, "refused a client from %s: %s security (this daemon accepts only CURVE)", address, mech);
        zap_reply(rep, &f[1], "400", "CURVE required", "");
    }
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&f[i]);
}

/* A monitor event of one of the daemon's sockets: a handshake that failed
 * before (or without) reaching ZAP. */
static void handle_monitor(lmq__auth_t *a, void *mon, const char *what)
{
    zmq_msg_t ev, ep;
    zmq_msg_init(&ev);
    zmq_msg_init(&ep);
    if (zmq_msg_recv(&ev, mon, 0) < 0) {
        zmq_msg_close(&ev);
        zmq_msg_close(&ep);
        return;
    }
    char endpoint[128] = "";
    if (zmq_msg_more(&ev) && zmq_msg_recv(&ep, mon, 0) >= 0)
        frame_text(&ep, endpoint, sizeof endpoint);
    if (zmq_msg_size(&ev) >= 6) {
        const uint8_t *d = zmq_msg_data(&ev);
        uint16_t event;
        uint32_t value;
        memcpy(&event, d, 2);
        memcpy(&value, d + 2, 4);
        if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL && value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
            refusal_log(a, "refused a client on the %s endpoint %s: it does not use CURVE (NULL or PLAIN security)",
                        what, endpoint);
        else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
            refusal_log(a,
                        "refused a client on the %s endpoint %s: CURVE handshake failed (protocol error 0x%x; "
                        "0x11000001: it uses a wrong server public key)",
                        what, endpoint, (unsigned)value);
        else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL && (value == EPIPE || value == ECONNRESET))
            /* The peer hung up first: usually one that found our security
             * not its own (a NULL client sees our CURVE greeting), rarely a
             * client that gave up mid-handshake. */
            refusal_log(a,
                        "a client on the %s endpoint %s hung up during the handshake (%s): one without CURVE keys, "
                        "or one that gave up",
                        what, endpoint, zmq_strerror((int)value));
        else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
            refusal_log(a, "refused a client on the %s endpoint %s: handshake failed (%s)", what, endpoint,
                        zmq_strerror((int)value));
        /* HANDSHAKE_FAILED_AUTH: the ZAP handler refused it and said why. */
    }
    zmq_msg_close(&ev);
    zmq_msg_close(&ep);
}

static void *zap_main(void *arg)
{
    lmq__auth_t *a = arg;
    void *pipe = zmq_socket(a->zctx, ZMQ_PAIR);
    void *rep = zmq_socket(a->zctx, ZMQ_REP);
    void *mon[MAX_MONITORS] = {0};
    zmq_pollitem_t items[2 + MAX_MONITORS];
    size_t nitems = 2;
    char buf[300];
    int linger = 0;
    if (!pipe || zmq_connect(pipe, a->pipe_endpoint) != 0) {
        /* Without the pipe nothing can be reported: the caller sees the
         * thread exit (its recv fails when the pipe closes at stop). */
        if (pipe)
            zmq_close(pipe);
        if (rep)
            zmq_close(rep);
        return NULL;
    }
    if (!rep || zmq_setsockopt(rep, ZMQ_LINGER, &linger, sizeof linger) != 0 || zmq_bind(rep, ZAP_ENDPOINT) != 0) {
        int e = zmq_errno();
        int n = snprintf(buf, sizeof buf, "E%ccannot serve ZAP at " ZAP_ENDPOINT ": %s%s",
                         (char)-(e == EADDRINUSE ? LMQ_EBUSY : LMQ_ESYS), zmq_strerror(e),
                         e == EADDRINUSE ? " (another ZAP handler serves this ZeroMQ context: one daemon with keys "
                                           "per context)"
                                         : "");
        zmq_send(pipe, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1, 0);
        goto out;
    }
    zmq_send(pipe, "Y", 1, 0);
    items[0] = (zmq_pollitem_t){pipe, 0, ZMQ_POLLIN, 0};
    items[1] = (zmq_pollitem_t){rep, 0, ZMQ_POLLIN, 0};
    for (;;) {
        if (zmq_poll(items, (int)nitems, -1) < 0) {
            if (zmq_errno() == EINTR)
                continue;
            break;
        }
        if (items[0].revents & ZMQ_POLLIN) {
            int n = zmq_recv(pipe, buf, sizeof buf, 0);
            if (n == 1 && buf[0] == 'M' && nitems - 2 < a->nmonitors) {
                /* A socket to watch: its monitor endpoint was set before the message. */
                size_t k = nitems - 2;
                mon[k] = zmq_socket(a->zctx, ZMQ_PAIR);
                if (mon[k] && zmq_connect(mon[k], a->monitors[k].endpoint) == 0) {
                    zmq_setsockopt(mon[k], ZMQ_LINGER, &linger, sizeof linger);
                    items[nitems++] = (zmq_pollitem_t){mon[k], 0, ZMQ_POLLIN, 0};
                } else if (mon[k]) {
                    zmq_close(mon[k]);
                    mon[k] = NULL;
                }
                zmq_send(pipe, "Y", 1, 0);
                continue;
            }
            break; /* TERM */
        }
        if (items[1].revents & ZMQ_POLLIN)
            handle_zap(a, rep);
        for (size_t i = 2; i < nitems; i++)
            if (items[i].revents & ZMQ_POLLIN)
                handle_monitor(a, items[i].socket, a->monitors[i - 2].what);
    }
    if (a->window_suppressed)
        lmq_log(a->log, LMQ_LOG_WARN, "auth", "%llu more refused connections were not logged",
                (unsigned long long)a->window_suppressed);
out:
    for (size_t i = 0; i < MAX_MONITORS; i++)
        if (mon[i])
            zmq_close(mon[i]);
    zmq_close(rep);
    zmq_close(pipe);
    return NULL;
}

int lmq__auth_start(lmq__auth_t *a, void *zctx, lmq_log_t *log, char *err, size_t errlen)
{
    if (!a || !a->curve || a->running)
        return 0;
    a->zctx = zctx;
    a->log = log;
    a->nmonitors = a->nwatched = 0;
    a->window_start = lmq_clock_mono_ns();
    a->window_lines = 0;
    a->window_suppressed = 0;
    snprintf(a->pipe_endpoint, sizeof a->pipe_endpoint, "inproc://lmq-zap-%p", (void *)a);
    a->pipe = zmq_socket(zctx, ZMQ_PAIR);
    if (!a->pipe || zmq_bind(a->pipe, a->pipe_endpoint) != 0) {
        seterr(err, errlen, "cannot create the ZAP handler's pipe: %s", zmq_strerror(zmq_errno()));
        if (a->pipe)
            zmq_close(a->pipe);
        a->pipe = NULL;
        return LMQ_ESYS;
    }
    int e = pthread_create(&a->thread, NULL, zap_main, a);
    if (e != 0) {
        seterr(err, errlen, "cannot start the ZAP handler thread: %s", strerror(e));
        zmq_close(a->pipe);
        a->pipe = NULL;
        return LMQ_ESYS;
    }
    char buf[300];
    int n = zmq_recv(a->pipe, buf, sizeof buf - 1, 0);
    if (n == 1 && buf[0] == 'Y') {
        a->running = true;
        return 0;
    }
    pthread_join(a->thread, NULL);
    zmq_close(a->pipe);
    a->pipe = NULL;
    if (n > 2) {
        buf[n] = 0;
        seterr(err, errlen, "%s", buf + 2);
        return -(int)(unsigned char)buf[1];
    }
    seterr(err, errlen, "the ZAP handler failed to start");
    return LMQ_ESYS;
}

void lmq__auth_stop(lmq__auth_t *a)
{
    if (!a || !a->running)
        return;
    zmq_send(a->pipe, "T", 1, 0);
    pthread_join(a->thread, NULL);
    zmq_close(a->pipe);
    a->pipe = NULL;
    a->running = false;
}

int lmq__auth_server_socket(lmq__auth_t *a, void *sock, const char *what, char *err, size_t errlen)
{
    if (!a || !a->curve)
        return 0;
    int one = 1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, a->server_secret, sizeof a->server_secret) != 0 ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, LMQ__ZAP_DOMAIN, strlen(LMQ__ZAP_DOMAIN)) != 0) {
        seterr(err, errlen, "cannot make the %s socket a CURVE server: %s", what, zmq_strerror(zmq_errno()));
        return LMQ_ESYS;
    }
    /* With the handler bound before the socket and unbound after it, CURVE
     * already never skips ZAP; enforcing the domain also refuses, rather than
     * lets through, a client should the handler ever be missing. */
    if (zmq_setsockopt(sock, ZMQ_ZAP_ENFORCE_DOMAIN, &one, sizeof one) != 0)
        lmq_log(a->log, LMQ_LOG_DEBUG, "auth", "this libzmq lacks ZMQ_ZAP_ENFORCE_DOMAIN (a draft option): %s",
                zmq_strerror(zmq_errno()));
    if (a->running && a->nmonitors < MAX_MONITORS) {
        struct monitor *m = &a->monitors[a->nmonitors];
        snprintf(m->endpoint, sizeof m->endpoint, "inproc://lmq-auth-mon-%p-%zu", (void *)a, a->nmonitors);
        snprintf(m->what, sizeof m->what, "%s", what);
        if (zmq_socket_monitor(sock, m->endpoint,
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) == 0)
            a->nmonitors++;
    }
    return 0;
}

void lmq__auth_watch(lmq__auth_t *a)
{
    /* One message per monitor set up since the last call; the handler
     * connects to it and acknowledges. */
    if (!a || !a->running)
        return;
    while (a->nwatched < a->nmonitors) {
        char ack;
        zmq_send(a->pipe, "M", 1, 0);
        zmq_recv(a->pipe, &ack, 1, 0);
        a->nwatched++;
    }
}

/* ---- requests: who, may they, and the audit trail ---- */

size_t lmq__peer_name(const zmq_msg_t *msg, char *buf, size_t n)
{
    if (!buf || !n)
        return 0;
    const char *user = msg ? zmq_msg_gets((zmq_msg_t *)msg, "User-Id") : NULL;
    const char *addr = msg ? zmq_msg_gets((zmq_msg_t *)msg, "Peer-Address") : NULL;
    int len;
    if (user && *user)
        len = snprintf(buf, n, "%s", user);
    else if (addr && *addr && *addr != ':' && (strchr(addr, '.') || strchr(addr, ':')))
        len = snprintf(buf, n, "anonymous@%s", addr);
    else
        len = snprintf(buf, n, "local");
    return len < 0 ? 0 : (size_t)len < n ? (size_t)len : n - 1;
}

bool lmq__op_changes_state(lmq__op_t op)
{
    switch (op) {
    case LMQ__OP_PING:
    case LMQ__OP_LIST:
    case LMQ__OP_DESCRIBE:
    case LMQ__OP_GET:
    case LMQ__OP_STATS:
    case LMQ__OP_WORKERS:
    case LMQ__OP_SUBSCRIBE: /* reading a stream, as a SUB socket on the data endpoint does */
    case LMQ__OP_CREDIT:
    case LMQ__OP_UNSUBSCRIBE:
        return false;
    default:
        return true; /* call, set, and any op added later until shown harmless */
    }
}

int lmq__auth_permit(const lmq__auth_t *a, const char *peer, lmq__op_t op, char *err, size_t errlen)
{
    if (!a || !a->curve || !lmq__op_changes_state(op))
        return 0;
    /* With keys every ipc and tcp peer has passed ZAP and has a name; only
     * inproc peers, in the daemon's own process, have none. */
    if (peer && strcmp(peer, "local") == 0)
        return 0;
    const client_t *c = peer ? find_client(a, peer) : NULL;
    if (c && c->role == LMQ_ROLE_CONTROL)
        return 0;
    if (c)
        seterr(err, errlen, "client '%s' has role %s; %s needs control", c->name, lmq_role_name(c->role),
               lmq__op_name(op));
    else
        seterr(err, errlen, "client '%s' is not on the allow-list; %s needs control", peer ? peer : "?",
               lmq__op_name(op));
    return LMQ_EPERM;
}

void lmq__audit(lmq_log_t *log, const char *peer, const lmq__request_t *req, int status, const char *msg,
                int64_t elapsed_ns)
{
    if (!req || LMQ_LOG_INFO > lmq_log_get_level(log))
        return;
    const json_t *what = req->op == LMQ__OP_SET ? req->value : req->args;
    char *text = what ? json_dumps(what, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    /* Arrays travel as binary frames: their references say dtype and shape. */
    char args[160];
    if (!text)
        snprintf(args, sizeof args, "%s", req->op == LMQ__OP_SET ? "?" : "[]");
    else if (strlen(text) < sizeof args)
        snprintf(args, sizeof args, "%s", text);
    else
        snprintf(args, sizeof args, "%.100s... (%zu bytes)", text, strlen(text));
    free(text);
    double ms = (double)elapsed_ns / 1e6;
    if (status == 0)
        lmq_log(log, LMQ_LOG_INFO, "audit", "%s %s %s.%s %s -> OK (%.3f ms)", peer ? peer : "?", lmq__op_name(req->op),
                req->device ? req->device : "?", req->name ? req->name : "?", args, ms);
    else
        lmq_log(log, LMQ_LOG_INFO, "audit", "%s %s %s.%s %s -> %s: %.300s (%.3f ms)", peer ? peer : "?",
                lmq__op_name(req->op), req->device ? req->device : "?", req->name ? req->name : "?", args,
                lmq_status_name(status), msg ? msg : "", ms);
}
