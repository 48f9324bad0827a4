/* Retry de-duplication (protocol 2.5): per named client, the ids of the
 * `call`s and `set`s the daemon accepted in the last minute, whether each
 * still runs, and its reply while the memory bounds allow. A retry (same
 * `client`, same `id`, from any connection) gets the original's reply,
 * waits for it while it still runs, or is told that its outcome is no
 * longer known: never is it run twice. Replies are kept as ZeroMQ message
 * copies, which share their data: keeping one costs no copy of an array. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "dedup.h"
#include "labmq/status.h"

typedef struct joined {
    zmq_msg_t env[2];
    size_t nenv;
} joined_t;

typedef struct entry {
    bool used, running, kept;
    uint64_t id;
    int64_t t_ns;
    lmq__op_t op;
    char *device, *name; /* what the id was used for */
    zmq_msg_t hdr;
    lmq__frames_t bin;
    size_t bytes;
    joined_t *joined;
    size_t njoined;
} entry_t;

typedef struct client {
    char *name;
    int64_t last_ns;
    entry_t *ring; /* LMQ__DEDUP_PER_CLIENT */
    size_t next;   /* where the next id goes (the oldest is overwritten) */
} client_t;

struct lmq__dedup {
    client_t *clients;
    size_t nclients;
    size_t kept_bytes;
};

lmq__dedup_t *lmq__dedup_new(void)
{
    lmq__dedup_t *dd = calloc(1, sizeof *dd);
    if (dd && !(dd->clients = calloc(LMQ__DEDUP_CLIENTS, sizeof *dd->clients))) {
        free(dd);
        return NULL;
    }
    return dd;
}

static void entry_clear(lmq__dedup_t *dd, entry_t *e)
{
    if (!e->used)
        return;
    if (e->kept) {
        zmq_msg_close(&e->hdr);
        lmq__frames_close(&e->bin);
        dd->kept_bytes -= e->bytes;
    }
    for (size_t i = 0; i < e->njoined; i++)
        for (size_t k = 0; k < e->joined[i].nenv; k++)
            zmq_msg_close(&e->joined[i].env[k]);
    free(e->joined);
    free(e->device);
    free(e->name);
    memset(e, 0, sizeof *e);
}

static void client_clear(lmq__dedup_t *dd, client_t *c)
{
    for (size_t i = 0; c->ring && i < LMQ__DEDUP_PER_CLIENT; i++)
        entry_clear(dd, &c->ring[i]);
    free(c->ring);
    free(c->name);
    memset(c, 0, sizeof *c);
}

void lmq__dedup_destroy(lmq__dedup_t **pdd)
{
    if (!pdd || !*pdd)
        return;
    lmq__dedup_t *dd = *pdd;
    for (size_t i = 0; i < dd->nclients; i++)
        client_clear(dd, &dd->clients[i]);
    free(dd->clients);
    free(dd);
    *pdd = NULL;
}

static client_t *find_client(lmq__dedup_t *dd, const char *name)
{
    for (size_t i = 0; i < dd->nclients; i++)
        if (strcmp(dd->clients[i].name, name) == 0)
            return &dd->clients[i];
    return NULL;
}

static entry_t *find_entry(client_t *c, uint64_t id, int64_t now)
{
    for (size_t i = 0; i < LMQ__DEDUP_PER_CLIENT; i++) {
        entry_t *e = &c->ring[i];
        /* A running request is remembered however long it runs. */
        if (e->used && e->id == id && (e->running || now - e->t_ns < LMQ__DEDUP_TTL_NS))
            return e;
    }
    return NULL;
}

static bool same_str(const char *a, const char *b) { return (!a && !b) || (a && b && strcmp(a, b) == 0); }

int lmq__dedup_lookup(lmq__dedup_t *dd, const lmq__request_t *req, const zmq_msg_t *env, size_t nenv, int64_t now,
                      zmq_msg_t *hdr, lmq__frames_t *bin, int *status, char *err, size_t errlen)
{
    client_t *c = req->client ? find_client(dd, req->client) : NULL;
    entry_t *e = c ? find_entry(c, req->id, now) : NULL;
    if (!e)
        return LMQ__DEDUP_NEW;
    if (e->op != req->op || !same_str(e->device, req->device) || !same_str(e->name, req->name)) {
        *status = LMQ_EPROTO;
        snprintf(err, errlen,
                 "id %llu of client '%s' was already used for %s %s.%s within the last %lld s: a retry must repeat "
                 "its request exactly, a new request needs a new id",
                 (unsigned long long)req->id, req->client, lmq__op_name(e->op), e->device ? e->device : "",
                 e->name ? e->name : "", LMQ__DEDUP_TTL_NS / 1000000000);
        return LMQ__DEDUP_REFUSED;
    }
    if (e->running) {
        joined_t *nj = e->njoined < LMQ__DEDUP_JOIN_MAX ? realloc(e->joined, (e->njoined + 1) * sizeof *nj) : NULL;
        if (!nj) {
            *status = LMQ_EOUTCOME;
            snprintf(err, errlen,
                     "%s %s.%s (id %llu of client '%s') is still running; too many retries wait for it: its "
                     "outcome is not known yet",
                     lmq__op_name(e->op), e->device, e->name, (unsigned long long)req->id, req->client);
            return LMQ__DEDUP_REFUSED;
        }
        e->joined = nj;
        joined_t *j = &e->joined[e->njoined++];
        j->nenv = nenv;
        for (size_t k = 0; k < nenv; k++) {
            zmq_msg_init(&j->env[k]);
            zmq_msg_copy(&j->env[k], (zmq_msg_t *)&env[k]);
        }
        return LMQ__DEDUP_JOINED;
    }
    if (!e->kept) {
        *status = LMQ_EOUTCOME;
        snprintf(err, errlen,
                 "%s %s.%s (id %llu of client '%s') already ran; its reply is no longer kept, so its outcome is "
                 "unknown here: it is not run again",
                 lmq__op_name(e->op), e->device, e->name, (unsigned long long)req->id, req->client);
        return LMQ__DEDUP_REFUSED;
    }
    zmq_msg_init(hdr);
    zmq_msg_copy(hdr, &e->hdr);
    lmq__frames_init(bin);
    for (size_t i = 0; i < e->bin.n; i++) {
        zmq_msg_init(&bin->msg[i]);
        zmq_msg_copy(&bin->msg[i], &e->bin.msg[i]);
    }
    bin->n = e->bin.n;
    return LMQ__DEDUP_REPLAY;
}

bool lmq__dedup_start(lmq__dedup_t *dd, const lmq__request_t *req, int64_t now)
{
    if (!req->client)
        return false;
    client_t *c = find_client(dd, req->client);
    if (!c) {
        if (dd->nclients == LMQ__DEDUP_CLIENTS) {
            /* Full: forget the client heard from least recently. */
            size_t old = 0;
            for (size_t i = 1; i < dd->nclients; i++)
                if (dd->clients[i].last_ns < dd->clients[old].last_ns)
                    old = i;
            client_clear(dd, &dd->clients[old]);
            dd->clients[old] = dd->clients[--dd->nclients];
            memset(&dd->clients[dd->nclients], 0, sizeof dd->clients[0]);
        }
        c = &dd->clients[dd->nclients];
        c->name = strdup(req->client);
        c->ring = calloc(LMQ__DEDUP_PER_CLIENT, sizeof *c->ring);
        if (!c->name || !c->ring) {
            free(c->name);
            free(c->ring);
            memset(c, 0, sizeof *c);
            return false;
        }
        dd->nclients++;
    }
    c->last_ns = now;
    entry_t *e = &c->ring[c->next];
    /* The slot of the oldest id; one still running keeps its slot (its
     * retries must still find it), and the newer id takes the next. */
    for (size_t tries = 0; e->used && e->running && tries < LMQ__DEDUP_PER_CLIENT; tries++) {
        c->next = (c->next + 1) % LMQ__DEDUP_PER_CLIENT;
        e = &c->ring[c->next];
    }
    if (e->used && e->running)
        return false;
    entry_clear(dd, e);
    e->device = req->device ? strdup(req->device) : NULL;
    e->name = req->name ? strdup(req->name) : NULL;
    if ((req->device && !e->device) || (req->name && !e->name)) {
        free(e->device);
        free(e->name);
        e->device = e->name = NULL;
        return false;
    }
    e->used = e->running = true;
    e->id = req->id;
    e->op = req->op;
    e->t_ns = now;
    c->next = (c->next + 1) % LMQ__DEDUP_PER_CLIENT;
    return true;
}

void lmq__dedup_finish(lmq__dedup_t *dd, const lmq__request_t *req, const zmq_msg_t *hdr, const lmq__frames_t *bin,
                       int64_t now, lmq__dedup_send_fn send, void *user)
{
    client_t *c = req->client ? find_client(dd, req->client) : NULL;
    entry_t *e = NULL;
    for (size_t i = 0; c && i < LMQ__DEDUP_PER_CLIENT && !e; i++)
        if (c->ring[i].used && c->ring[i].running && c->ring[i].id == req->id)
            e = &c->ring[i];
    if (!e)
        return; /* forgotten meanwhile (its client was evicted) */
    e->running = false;
    e->t_ns = now; /* the retry window starts when the reply leaves */
    size_t bytes = zmq_msg_size((zmq_msg_t *)hdr);
    for (size_t i = 0; bin && i < bin->n; i++)
        bytes += zmq_msg_size((zmq_msg_t *)&bin->msg[i]);
    if (bytes <= LMQ__DEDUP_REPLY_MAX && dd->kept_bytes + bytes <= LMQ__DEDUP_BUDGET) {
        zmq_msg_init(&e->hdr);
        zmq_msg_copy(&e->hdr, (zmq_msg_t *)hdr);
        lmq__frames_init(&e->bin);
        for (size_t i = 0; bin && i < bin->n; i++) {
            zmq_msg_init(&e->bin.msg[i]);
            zmq_msg_copy(&e->bin.msg[i], (zmq_msg_t *)&bin->msg[i]);
        }
        e->bin.n = bin ? bin->n : 0;
        e->bytes = bytes;
        e->kept = true;
        dd->kept_bytes += bytes;
    }
    for (size_t j = 0; j < e->njoined; j++) {
        zmq_msg_t h;
        lmq__frames_t b;
        zmq_msg_init(&h);
        zmq_msg_copy(&h, (zmq_msg_t *)hdr);
        lmq__frames_init(&b);
        for (size_t i = 0; bin && i < bin->n; i++) {
            zmq_msg_init(&b.msg[i]);
            zmq_msg_copy(&b.msg[i], (zmq_msg_t *)&bin->msg[i]);
        }
        b.n = bin ? bin->n : 0;
        send(user, e->joined[j].env, e->joined[j].nenv, &h, &b);
        for (size_t k = 0; k < e->joined[j].nenv; k++)
            zmq_msg_close(&e->joined[j].env[k]);
    }
    free(e->joined);
    e->joined = NULL;
    e->njoined = 0;
}
