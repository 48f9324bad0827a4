/* Fuzz target for the stream block header parser (lmq__data_header_parse,
 * what lmq_sub_recv runs on every block a daemon publishes).
 *
 * Input layout: bytes 0..3 = the payload's size (little-endian), the rest =
 * the header frame. A header that parses must come back unchanged through
 * the daemon's own encoder (lmq__data_header): what a subscriber accepts, a
 * daemon could have sent.
 *
 * Built with clang -fsanitize=fuzzer when LMQ_FUZZ is on (scripts/fuzz.sh
 * block); otherwise main() in replay.c replays a corpus, which CI does under
 * ASan/UBSan. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "labmq/status.h"
#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_block: %s: %s\n", what, detail);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    size_t payload = (size_t)data[0] | (size_t)data[1] << 8 | (size_t)data[2] << 16 | (size_t)data[3] << 24;
    char err[300] = "";
    lmq__block_header_t h;
    if (lmq__data_header_parse(data + 4, size - 4, payload, &h, err, sizeof err) != 0) {
        if (!err[0])
            die("a refusal without a reason", "");
        return 0;
    }
    char *units = lmq__json_quote(h.units);
    if (!units)
        die("accepted units that cannot be sent again", h.units);
    zmq_msg_t msg;
    int rc = lmq__data_header(&msg, h.seq, h.epoch, h.t_ns, h.dtype, h.ndim, h.shape, units);
    free(units);
    if (rc != 0)
        die("an accepted header cannot be encoded", lmq_status_name(rc));
    lmq__block_header_t back;
    if (lmq__data_header_parse(zmq_msg_data(&msg), zmq_msg_size(&msg), payload, &back, err, sizeof err) != 0)
        die("the encoded header does not parse", err);
    zmq_msg_close(&msg);
    if (memcmp(&h, &back, sizeof h) != 0)
        die("the header changed on its way through the encoder", "");
    return 0;
}
