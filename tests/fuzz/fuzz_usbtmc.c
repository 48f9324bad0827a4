/* Fuzz target for the USBTMC bulk-in header parser
 * (lmq__usbtmc_parse_in_header): the bytes a USB instrument sends back.
 *
 * Input layout: byte 0 = the bTag the request carried, the rest = what one
 * bulk-in transfer delivered. A header that parses must describe bytes that
 * are really there, and match the request's tag.
 *
 * Built with clang -fsanitize=fuzzer when LMQ_FUZZ is on (scripts/fuzz.sh
 * usbtmc); otherwise main() in replay.c replays a corpus under ASan/UBSan. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "transport_usbtmc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t tag = data[0], inverse = (uint8_t)(0xff - tag);
    const uint8_t *buf = data + 1;
    size_t len = size - 1;
    /* A copy of exactly len bytes: ASan sees any read past the transfer. */
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return 0;
    memcpy(copy, buf, len);
    char err[300] = "";
    uint32_t n = 0;
    bool eom = false;
    if (lmq__usbtmc_parse_in_header(copy, len, tag, &n, &eom, err, sizeof err) == 0) {
        if (len < LMQ__USBTMC_HEADER || n > len - LMQ__USBTMC_HEADER)
            abort(); /* announces bytes that did not arrive */
        if (copy[0] != LMQ__USBTMC_DEV_DEP_MSG_IN || copy[1] != tag || copy[2] != inverse)
            abort(); /* not the answer to this request */
        if (eom != (copy[8] & 1))
            abort();
    } else if (!err[0]) {
        abort(); /* every refusal must say why */
    }
    free(copy);
    return 0;
}
