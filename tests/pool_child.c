/* A pool worker for test_pool: the task is text.
 *   "echo:N"   -> "N*3 from PID"   (the result names the worker that ran it)
 *   "slow:MS:N"-> the same after sleeping MS milliseconds
 *   "crash"    -> abort(): takes the worker down (a poison task)
 *   "fail"     -> the handler reports "refused on purpose"
 *   "huge"     -> a 1 MiB result of 'x'
 *   "hang"     -> never returns: SIGTERM stays blocked (the runtime takes it
 *                 through a signalfd), so only SIGKILL ends the worker */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "labmq/pool.h"

static int handle(void *user, const void *task, size_t len, void **result, size_t *rlen)
{
    (void)user;
    char text[64];
    if (len >= sizeof text)
        len = sizeof text - 1;
    memcpy(text, task, len);
    text[len] = 0;
    long ms = 0, n = 0;
    if (strcmp(text, "crash") == 0)
        abort();
    if (strcmp(text, "hang") == 0)
        for (;;)
            pause();
    if (strcmp(text, "fail") == 0) {
        *result = strdup("refused on purpose");
        *rlen = strlen("refused on purpose");
        return 1;
    }
    if (strcmp(text, "huge") == 0) {
        *rlen = 1 << 20;
        *result = malloc(*rlen);
        if (!*result)
            return 1;
        memset(*result, 'x', *rlen);
        return 0;
    }
    if (sscanf(text, "slow:%ld:%ld", &ms, &n) == 2) {
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    } else if (sscanf(text, "echo:%ld", &n) != 1) {
        return 1;
    }
    char *out = malloc(64);
    if (!out)
        return 1;
    *rlen = (size_t)snprintf(out, 64, "%ld from %d", n * 3, (int)getpid());
    *result = out;
    return 0;
}

int main(int argc, char **argv) { return lmq_pool_worker_run(argc, argv, handle, NULL); }
