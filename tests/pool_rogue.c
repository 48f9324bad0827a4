/* A misbehaving pool worker for test_pool, speaking the pool's wire protocol
 * (core/src/pool.c) by hand. For each task "N" it sends, in this order:
 *  - from a second socket carrying the name of its previous incarnation
 *    (pool-S.G-1: a worker the pool reaped), a wrong result "ghost";
 *  - malformed messages: a bare "D", an unknown type, a result with too many
 *    parts;
 *  - a result for a task it was never given (id + 1000): "phantom";
 *  - the right result "3N ok", twice.
 * The pool must deliver exactly one result per task: "3N ok". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <zmq.h>

static void send_result(void *s, uint64_t id, const char *text)
{
    unsigned char h[10] = {'D', 1};
    memcpy(h + 2, &id, 8);
    zmq_send(s, h, sizeof h, ZMQ_SNDMORE);
    zmq_send(s, text, strlen(text), 0);
}

int main(int argc, char **argv)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test leaves no rogue behind */
    const char *control = NULL, *name = NULL;
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--control") == 0)
            control = argv[++i];
        else if (strcmp(argv[i], "--name") == 0)
            name = argv[++i];
    }
    int slot = 0;
    unsigned gen = 0;
    if (!control || !name || sscanf(name, "pool-%d.%u", &slot, &gen) != 2)
        return 2;
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(s, ZMQ_ROUTING_ID, name, strlen(name));
    zmq_connect(s, control);
    void *ghost = NULL;
    if (gen > 1) {
        char old[32];
        snprintf(old, sizeof old, "pool-%d.%u", slot, gen - 1);
        ghost = zmq_socket(ctx, ZMQ_DEALER);
        zmq_setsockopt(ghost, ZMQ_ROUTING_ID, old, strlen(old));
        zmq_connect(ghost, control);
    }
    unsigned char ready[5] = {'R', 1, 0, 0, 0};
    zmq_send(s, ready, sizeof ready, 0);
    for (;;) {
        unsigned char h[16];
        char task[64];
        int hl = zmq_recv(s, h, sizeof h, 0);
        if (hl == 1 && h[0] == 'S')
            break;
        int more = 0;
        size_t ml = sizeof more;
        zmq_getsockopt(s, ZMQ_RCVMORE, &more, &ml);
        if (hl != 9 || h[0] != 'T' || !more)
            break;
        int tl = zmq_recv(s, task, sizeof task - 1, 0);
        if (tl < 0)
            break;
        task[tl < (int)sizeof task - 1 ? tl : (int)sizeof task - 1] = 0;
        uint64_t id;
        memcpy(&id, h + 1, 8);
        if (ghost)
            send_result(ghost, id, "ghost");
        usleep(20000); /* let the ghost's answer arrive first */
        zmq_send(s, "D", 1, 0);
        zmq_send(s, "X123456789", 10, ZMQ_SNDMORE);
        zmq_send(s, "junk", 4, 0);
        unsigned char d[10] = {'D', 1};
        memcpy(d + 2, &id, 8);
        zmq_send(s, d, sizeof d, ZMQ_SNDMORE);
        zmq_send(s, "extra", 5, ZMQ_SNDMORE);
        zmq_send(s, "parts", 5, 0);
        send_result(s, id + 1000, "phantom");
        char ok[64];
        snprintf(ok, sizeof ok, "%ld ok", atol(task) * 3);
        send_result(s, id, ok);
        send_result(s, id, ok);
    }
    if (ghost)
        zmq_close(ghost);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return 0;
}
