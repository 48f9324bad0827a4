/* Fuzz target for the YAML config loader (lmq_config_parse, the in-memory
 * form of lmq_config_load): everything a lab's config file controls.
 *
 * Input: the file's text. A config that loads must be accepted by a daemon
 * as it is (lmq_config_apply: what the loader accepts, lmq_daemon_add
 * accepts too); one that does not load must say why.
 *
 * Built with clang -fsanitize=fuzzer when LMQ_FUZZ is on (scripts/fuzz.sh
 * config); otherwise main() in replay.c replays a corpus under ASan/UBSan.
 * Paths in the text are relative to the working directory (the loader's
 * directory for in-memory text). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>
#include "labmq/config.h"
#include "labmq/daemon.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *err = NULL;
    lmq_config_t *cfg = lmq_config_parse((const char *)data, size, &err);
    if (!cfg) {
        if (!err || !*err)
            abort(); /* every refusal must say why */
        free(err);
        return 0;
    }
    for (size_t i = 0; i < lmq_config_device_count(cfg); i++) {
        const lmq_config_device_t *dev = lmq_config_device(cfg, i);
        if (!dev->name || !dev->drv || !dev->connection)
            abort();
    }
    void *zctx = zmq_ctx_new();
    lmq_daemon_t *d = zctx ? lmq_daemon_new(zctx, "inproc://fuzz-control", "inproc://fuzz-data", NULL) : NULL;
    if (d && lmq_config_apply(cfg, d, &err) != 0) {
        fprintf(stderr, "fuzz_config: the loader accepted what the daemon refuses: %s\n", err ? err : "?");
        abort();
    }
    free(err);
    lmq_daemon_destroy(&d);
    if (zctx)
        zmq_ctx_term(zctx);
    lmq_config_destroy(&cfg);
    return 0;
}
