/* Fuzz target for what a browser tab sends labmq-web (workers/web/msg.c:
 * web_msg_parse) and the Host check of its WebSocket handshake
 * (web_host_is_loopback). libwebsockets parses the HTTP and the WebSocket
 * framing; this is the part of the web view's input that is ours.
 *
 * Input: a tab's text message. Properties checked: a refusal always has a
 * reason; an accepted sub/unsub names a valid topic; an accepted command is
 * an object whose op is get/set/call, with an integer id in range and the
 * names within bounds. The input is also given to the Host check as a string.
 *
 * Built with clang -fsanitize=fuzzer when LMQ_FUZZ is on (scripts/fuzz.sh
 * webmsg); otherwise main() in replay.c replays a corpus under ASan/UBSan. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_webmsg: %s: %s\n", what, detail);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    web_msg_t m;
    char err[300] = "";
    if (web_msg_parse(data, size, &m, err, sizeof err) != 0) {
        if (!err[0])
            die("a refusal without a reason", "");
    } else if (m.kind == WEB_MSG_CMD) {
        const char *op = json_string_value(json_object_get(m.msg, "op"));
        json_t *id = json_object_get(m.msg, "id");
        const char *dev = json_string_value(json_object_get(m.msg, "device"));
        const char *name = json_string_value(json_object_get(m.msg, "name"));
        if (!op || (strcmp(op, "get") && strcmp(op, "set") && strcmp(op, "call")))
            die("a command with another op", op ? op : "(none)");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > WEB_ID_MAX)
            die("a command with a bad id", op);
        if (!dev || !name || !*dev || !*name || strlen(dev) > WEB_NAME_MAX || strlen(name) > WEB_NAME_MAX)
            die("a command with a bad device or name", op);
    } else if (!m.topic || !web_topic_ok(m.topic)) {
        die("a subscription to a bad topic", m.topic ? m.topic : "(none)");
    }
    json_decref(m.msg);
    char host[300];
    size_t n = size < sizeof host - 1 ? size : sizeof host - 1;
    memcpy(host, data, n);
    host[n] = 0;
    (void)web_host_is_loopback(host);
    return 0;
}
