/* Runs an in-process daemon and reads a property through a proxy, using only
 * the installed headers and library. */
#include <labmq/labmq.h>
#include <stdio.h>
#include <zmq.h>

int main(void)
{
    void *ctx = zmq_ctx_new();
    lmq_daemon_t *d = lmq_daemon_new(ctx, "inproc://lab", "inproc://lab-data", NULL);
    lmq_daemon_add(d, "psu1", lmq_driver_find("sim-psu"), NULL, NULL);
    int rc = lmq_daemon_start(d);
    lmq_proxy_t *p = lmq_proxy_new(ctx, "inproc://lab", "psu1");
    lmq_value_t v = lmq_float(1.25);
    double back = 0;
    if (rc == 0)
        rc = lmq_proxy_set(p, "voltage", &v);
    if (rc == 0)
        rc = lmq_proxy_get_double(p, "voltage", &back);
    printf("labmq %s: voltage %.2f (%s)\n", LMQ_VERSION_STRING, back, rc ? lmq_proxy_last_error(p) : "ok");
    lmq_proxy_destroy(&p);
    lmq_daemon_destroy(&d);
    zmq_ctx_term(ctx);
    return rc == 0 && back == 1.25 ? 0 : 1;
}
