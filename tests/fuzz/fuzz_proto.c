/* Fuzz target for the wire codec: everything a client controls on the way
 * into the daemon (request header, binary frames, values), and everything a
 * daemon controls on the way into a client (reply header).
 *
 * Input layout: byte 0 = number of binary frames (mod 4); the rest is split
 * at the first "\n--\n" into the header and the binary payload, which is cut
 * into that many frames of equal size.
 *
 * Built with clang -fsanitize=fuzzer when LMQ_FUZZ is on (scripts/fuzz.sh);
 * otherwise main() below replays a corpus, which CI does under ASan/UBSan. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "labmq/status.h"
#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Exactly equal: same type, floats bit for bit (-0.0 is not 0.0), arrays
 * byte for byte. */
static bool same_value(const lmq_value_t *a, const lmq_value_t *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case LMQ_NONE:
        return true;
    case LMQ_BOOL:
        return a->u.b == b->u.b;
    case LMQ_INT:
        return a->u.i == b->u.i;
    case LMQ_FLOAT:
        return memcmp(&a->u.f, &b->u.f, sizeof a->u.f) == 0;
    case LMQ_STRING:
        return strcmp(a->u.s, b->u.s) == 0;
    case LMQ_ARRAY:
        return a->u.a.dtype == b->u.a.dtype && a->u.a.ndim == b->u.a.ndim &&
               memcmp(a->u.a.shape, b->u.a.shape, a->u.a.ndim * sizeof a->u.a.shape[0]) == 0 &&
               a->u.a.nbytes == b->u.a.nbytes && (a->u.a.nbytes == 0 || memcmp(a->u.a.data, b->u.a.data, a->u.a.nbytes) == 0);
    }
    return false;
}

static void die(const char *what, uint64_t id, const char *detail)
{
    fprintf(stderr, "fuzz_proto: %s (id %llu): %s\n", what, (unsigned long long)id, detail);
    abort();
}

/* What the daemon accepts it must be able to send back: v as a reply (the
 * daemon's fast encoder), read back by a client as exactly v. */
static void check_sends_back(uint64_t id, const lmq_value_t *v)
{
    lmq_value_t sent = {0}, back = {0};
    if (lmq_value_copy(&sent, v) != 0)
        die("cannot copy the value", id, "out of memory");
    lmq__frames_t out;
    lmq__frames_init(&out);
    zmq_msg_t reply;
    int rc = lmq__reply_value(&reply, id, &sent, &out); /* moves array data into out */
    lmq_value_clear(&sent);
    if (rc != 0)
        die("an accepted value cannot be sent back", id, lmq_status_name(rc));
    char err[600];
    lmq__reply_t rep;
    if (lmq__reply_parse(zmq_msg_data(&reply), zmq_msg_size(&reply), &rep, err, sizeof err) != 0)
        die("the reply does not parse", id, err);
    if (!rep.ok || !rep.has_id || rep.id != id)
        die("the reply lost its id or its ok", id, "");
    if (lmq__value_from_json(rep.result, &out, &back, err, sizeof err) != 0)
        die("the reply's result does not read back", id, err);
    if (!same_value(v, &back))
        die("the reply's result differs from the value", id, "");
    lmq_value_clear(&back);
    lmq__reply_clear(&rep);
    zmq_msg_close(&reply);
    lmq__frames_close(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t nbin = data[0] % 4;
    const uint8_t *hdr = data + 1;
    size_t hlen = size - 1, plen = 0;
    const uint8_t *payload = NULL;
    const uint8_t *sep = memmem(hdr, hlen, "\n--\n", 4);
    if (sep) {
        payload = sep + 4;
        plen = (size_t)(hdr + hlen - payload);
        hlen = (size_t)(sep - hdr);
    }
    lmq__frames_t bin;
    lmq__frames_init(&bin);
    for (size_t i = 0; i < nbin; i++) {
        size_t part = nbin ? plen / nbin : 0;
        zmq_msg_init_size(&bin.msg[i], part);
        if (part)
            memcpy(zmq_msg_data(&bin.msg[i]), payload + i * part, part);
        bin.n++;
    }

    char err[600];
    lmq__request_t req;
    if (lmq__request_parse(hdr, hlen, nbin, &req, err, sizeof err) == 0) {
        json_t *vals[LMQ__MAX_ARGS + 1];
        size_t nv = 0;
        for (size_t i = 0; req.args && i < json_array_size(req.args); i++)
            vals[nv++] = json_array_get(req.args, i);
        if (req.value)
            vals[nv++] = req.value;
        for (size_t i = 0; i < nv; i++) {
            lmq_value_t v = {0};
            if (lmq__value_from_json(vals[i], &bin, &v, err, sizeof err) == 0)
                check_sends_back(req.id, &v);
            lmq_value_clear(&v);
        }
    } else if (strlen(err) == 0) {
        abort(); /* every refusal must say why */
    }
    lmq__request_clear(&req);

    lmq__reply_t rep;
    lmq__reply_parse(hdr, hlen, &rep, err, sizeof err);
    lmq__reply_clear(&rep);
    lmq__frames_close(&bin);
    return 0;
}
