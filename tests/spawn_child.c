/* Helper process for test_spawn: reports the descriptors it was born with,
 * then uses a device through nothing but a proxy URI from argv. Given a
 * CURRENT_LIMIT it also sets psu1's current_limit to it: a property, and a
 * value, that only this process touches, so the test can tell the child's
 * requests from its own. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <zmq.h>
#include "labmq/labmq.h"

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: spawn_child PROXY_URI REPORT_FILE [CURRENT_LIMIT]\n");
        return 2;
    }
    /* Before anything opens a descriptor of its own. */
    int fds[64], n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 3;
    struct dirent *e;
    while ((e = readdir(d)) && n < 64)
        if (e->d_name[0] != '.' && atoi(e->d_name) != dirfd(d))
            fds[n++] = atoi(e->d_name);
    closedir(d);

    FILE *out = fopen(argv[2], "w");
    if (!out)
        return 4;
    fprintf(out, "fds:");
    for (int i = 0; i < n; i++)
        fprintf(out, " %d", fds[i]);
    fprintf(out, "\n");

    void *ctx = zmq_ctx_new();
    lmq_proxy_t *p = lmq_proxy_open(ctx, argv[1]);
    lmq_value_t v = lmq_float(2.5);
    double back = 0;
    int rc = p ? lmq_proxy_set(p, "voltage", &v) : LMQ_EARG;
    if (rc == 0)
        rc = lmq_proxy_get_double(p, "voltage", &back);
    if (rc == 0 && argc == 4) {
        lmq_value_t limit = lmq_float(strtod(argv[3], NULL));
        rc = lmq_proxy_set(p, "current_limit", &limit);
    }
    if (rc == 0)
        fprintf(out, "voltage %.3f\n", back);
    else
        fprintf(out, "error %s: %s\n", lmq_status_name(rc), p ? lmq_proxy_last_error(p) : "bad uri");
    fclose(out);
    lmq_proxy_destroy(&p);
    zmq_ctx_term(ctx);
    return rc == 0 ? 0 : 1;
}
