/* labmq-web: parsing and checking what a browser tab sends (msg.h). No
 * server state here: the per-tab limits (streams, requests waiting) are
 * server.c's. */
#include "msg.h"
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include "bridge.h" /* WEB_TOPIC_MAX */

bool web_topic_ok(const char *topic)
{
    size_t n = strlen(topic);
    const char *slash = strchr(topic, '/');
    if (n < 3 || n >= WEB_TOPIC_MAX || !slash || slash == topic || !slash[1] || strchr(slash + 1, '/'))
        return false;
    for (const char *p = topic; *p; p++)
        if (!(('a' <= *p && *p <= 'z') || ('A' <= *p && *p <= 'Z') || ('0' <= *p && *p <= '9') ||
              strchr("_-./", *p)))
            return false;
    return true;
}

static bool name_ok(const char *s) { return s[0] && strlen(s) <= WEB_NAME_MAX; }

static int fail(char *err, size_t errlen, const char *fmt, const char *a, const char *b)
{
    snprintf(err, errlen, fmt, a, b);
    return -1;
}

int web_msg_parse(const void *data, size_t len, web_msg_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    json_error_t e;
    out->msg = json_loadb(data, len, JSON_REJECT_DUPLICATES, &e);
    if (!json_is_object(out->msg))
        return fail(err, errlen, "not a JSON object: %s%s", out->msg ? "another JSON value" : e.text, "");
    out->id = json_object_get(out->msg, "id");
    const char *op = json_string_value(json_object_get(out->msg, "op"));
    if (!op)
        return fail(err, errlen, "'op' is missing or not a string (sub, unsub, get, set, call)%s%s", "", "");
    if (strcmp(op, "sub") == 0 || strcmp(op, "unsub") == 0) {
        const char *topic;
        if (json_unpack_ex(out->msg, &e, JSON_STRICT, "{s:s,s:s}", "op", &op, "topic", &topic) != 0)
            return fail(err, errlen, "%s: %s", op, e.text);
        if (!web_topic_ok(topic)) {
            snprintf(err, errlen, "%s: '%.160s' is not a stream topic (DEVICE/STREAM)", op, topic);
            return -1;
        }
        out->kind = op[0] == 's' ? WEB_MSG_SUB : WEB_MSG_UNSUB;
        out->topic = topic;
        return 0;
    }
    if (strcmp(op, "get") != 0 && strcmp(op, "set") != 0 && strcmp(op, "call") != 0) {
        snprintf(err, errlen, "unknown op '%.64s' (sub, unsub, get, set, call)", op);
        return -1;
    }
    json_int_t n;
    const char *device, *name;
    json_t *extra = NULL;
    int rc = strcmp(op, "get") == 0
                 ? json_unpack_ex(out->msg, &e, JSON_STRICT, "{s:s,s:I,s:s,s:s}", "op", &op, "id", &n, "device",
                                  &device, "name", &name)
                 : json_unpack_ex(out->msg, &e, JSON_STRICT, "{s:s,s:I,s:s,s:s,s:o}", "op", &op, "id", &n, "device",
                                  &device, "name", &name, strcmp(op, "set") == 0 ? "value" : "args", &extra);
    if (rc != 0)
        return fail(err, errlen, "%s: %s", op, e.text);
    if (n < 0 || n > WEB_ID_MAX)
        return fail(err, errlen, "%s: 'id' must be an integer from 0 to 2^53-1%s", op, "");
    if (!name_ok(device) || !name_ok(name)) {
        snprintf(err, errlen, "%s: 'device' and 'name' must have 1 to %d characters", op, WEB_NAME_MAX);
        return -1;
    }
    if (strcmp(op, "call") == 0 && (!json_is_array(extra) || json_array_size(extra) > WEB_ARGS_MAX)) {
        snprintf(err, errlen, "call: 'args' must be a list of at most %d values", WEB_ARGS_MAX);
        return -1;
    }
    out->kind = WEB_MSG_CMD;
    return 0;
}

bool web_host_is_loopback(const char *host)
{
    char name[256];
    snprintf(name, sizeof name, "%s", host);
    char *end;
    if (name[0] == '[') { /* [::1]:port */
        end = strchr(name, ']');
        if (!end)
            return false;
        *end = '\0';
        memmove(name, name + 1, strlen(name + 1) + 1);
    } else if ((end = strrchr(name, ':')) != NULL) {
        *end = '\0';
    }
    if (strcasecmp(name, "localhost") == 0)
        return true;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, name, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return inet_pton(AF_INET6, name, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}
