/* labmq CLI — lock: holds devices for exclusive control (protocol 2.6) until
 * --duration has passed or Ctrl-C/SIGTERM, renewing the lease three times
 * per lease period, then releases them. If this process dies instead, its
 * lease runs out and the daemon puts the devices in their safe state. */
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include "cli.h"

int cli_cmd_lock(cli_t *c, int argc, char **argv)
{
    lmq_proxy_t *p = cli_proxy(c, NULL);
    if (!p)
        return CLI_FAILED;
    int lease = c->lease_ms ? c->lease_ms : LMQ_PROXY_LEASE_DEFAULT_MS;
    const char *const *devs = (const char *const *)argv;
    int rc = lmq_proxy_lock(p, devs, (size_t)argc, lease);
    if (rc != 0) {
        rc = cli_fail_proxy(c, p, rc);
        lmq_proxy_destroy(&p);
        return rc;
    }
    fprintf(c->out, "locked");
    for (int i = 0; i < argc; i++)
        fprintf(c->out, " %s", argv[i]);
    fprintf(c->out, " as '%s' (lease %d ms); %s releases\n", lmq_proxy_client(p), lease,
            c->duration_s > 0 ? "the end of --duration or Ctrl-C" : "Ctrl-C");
    fflush(c->out);
    int64_t end = c->duration_s > 0 ? lmq_clock_mono_ns() + (int64_t)(c->duration_s * 1e9) : INT64_MAX;
    int status = CLI_OK;
    for (;;) {
        int64_t now = lmq_clock_mono_ns();
        if (now >= end)
            break;
        int64_t wait = (int64_t)lease / 3;
        if ((end - now) / 1000000 < wait)
            wait = (end - now) / 1000000;
        struct pollfd pfd = {.fd = c->sigfd, .events = POLLIN};
        int n = poll(&pfd, c->sigfd >= 0 ? 1 : 0, (int)wait);
        if (n > 0) {
            struct signalfd_siginfo si;
            if (read(c->sigfd, &si, sizeof si) < 0) { /* nothing to do: we stop either way */
            }
            break;
        }
        if ((rc = lmq_proxy_lock(p, devs, (size_t)argc, lease)) != 0) {
            status = cli_fail_proxy(c, p, rc);
            break;
        }
    }
    rc = lmq_proxy_unlock(p, devs, (size_t)argc);
    if (rc != 0 && status == CLI_OK)
        status = cli_fail_proxy(c, p, rc);
    else if (rc == 0)
        fprintf(c->out, "released\n");
    lmq_proxy_destroy(&p);
    return status;
}
