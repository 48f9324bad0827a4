/* The worker runtime: the standard worker argv, stop signals taken through a
 * signalfd, and the worker process's ZeroMQ context. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <zmq.h>
#include "labmq/daemon.h"
#include "labmq/worker.h"

struct lmq_worker {
    void *zctx;
    int sigfd;
    int stop_signal; /* 0 until a stop signal was read */
    char *name, *control, *data;
    char **devices, **streams, **options; /* NULL-terminated; options as "KEY=VALUE" */
    size_t ndevices, nstreams, noptions;
};

static void usage(FILE *out, const char *prog, const char *about)
{
    fprintf(out,
            "Usage: %s [--control EP] [--data EP] [--name NAME] [--device DEV]...\n"
            "       %*s [--stream DEV/STREAM]... [--option KEY=VALUE]...\n"
            "\n"
            "A labmq worker: labmqd starts it with --control, --data and --name and\n"
            "supervises it; it stops cleanly on SIGTERM or SIGINT.\n"
            "\n"
            "Options (each also as --key=value):\n"
            "  --control EP          the daemon's control endpoint (default: labmq's default)\n"
            "  --data EP             the daemon's data endpoint (default: labmq's default)\n"
            "  --name NAME           this worker's name (default: the program's file name)\n"
            "  --device DEV          a device to work with (repeatable)\n"
            "  --stream DEV/STREAM   a stream to work with (repeatable)\n"
            "  --option KEY=VALUE    a setting of this worker (repeatable)\n"
            "  --help                show this help and exit\n",
            prog, (int)strlen(prog), "");
    if (about && *about)
        fprintf(out, "\n%s\n", about);
    fprintf(out, "\nExit status: 0 stopped on request or done, 1 failure, 2 invalid command line.\n");
}

static bool push(char ***list, size_t *n, const char *value)
{
    char **grown = realloc(*list, (*n + 2) * sizeof *grown);
    if (!grown)
        return false;
    *list = grown;
    if (!(grown[*n] = strdup(value)))
        return false;
    grown[++*n] = NULL;
    return true;
}

static void free_list(char **list)
{
    for (size_t i = 0; list && list[i]; i++)
        free(list[i]);
    free(list);
}

void lmq_worker_destroy(lmq_worker_t **pw)
{
    if (!pw || !*pw)
        return;
    lmq_worker_t *w = *pw;
    if (w->zctx)
        zmq_ctx_term(w->zctx);
    if (w->sigfd >= 0)
        close(w->sigfd);
    free(w->name);
    free(w->control);
    free(w->data);
    free_list(w->devices);
    free_list(w->streams);
    free_list(w->options);
    free(w);
    *pw = NULL;
}

static bool stream_ok(const char *s)
{
    const char *slash = strchr(s, '/');
    return slash && slash != s && slash[1] && !strchr(slash + 1, '/');
}

/* Returns 0, or the exit code after reporting on stderr. */
static int parse(lmq_worker_t *w, int argc, char *const argv[], const char *prog, const char *about)
{
    static const char *const keys[] = {"control", "data", "name", "device", "stream", "option"};
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            usage(stdout, prog, about);
            return LMQ_WORKER_EXIT_OK;
        }
        if (arg[0] == '-' && arg[1] != '-') {
            fprintf(stderr,
                    "%s: unknown option '%s' (options: --control, --data, --name, --device, --stream, "
                    "--option, --help)\n",
                    prog, arg);
            return LMQ_WORKER_EXIT_USAGE;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "%s: unexpected argument '%s' (workers take only options; see --help)\n", prog, arg);
            return LMQ_WORKER_EXIT_USAGE;
        }
        const char *eq = strchr(arg, '=');
        size_t klen = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        int k = -1;
        for (int j = 0; j < (int)(sizeof keys / sizeof *keys); j++)
            if (strlen(keys[j]) == klen && strncmp(arg + 2, keys[j], klen) == 0)
                k = j;
        if (k < 0) {
            fprintf(stderr,
                    "%s: unknown option '%.*s' (options: --control, --data, --name, --device, --stream, --option, "
                    "--help)\n",
                    prog, (int)(klen + 2), arg);
            return LMQ_WORKER_EXIT_USAGE;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (!value) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: option --%s needs a value\n", prog, keys[k]);
                return LMQ_WORKER_EXIT_USAGE;
            }
            value = argv[++i];
        }
        bool ok = true;
        switch (k) {
        case 0:
        case 1:
        case 2: {
            char **slot = k == 0 ? &w->control : k == 1 ? &w->data : &w->name;
            if (!*value) {
                fprintf(stderr, "%s: --%s must not be empty\n", prog, keys[k]);
                return LMQ_WORKER_EXIT_USAGE;
            }
            free(*slot);
            ok = (*slot = strdup(value)) != NULL;
            break;
        }
        case 3:
            if (!*value) {
                fprintf(stderr, "%s: --device must not be empty\n", prog);
                return LMQ_WORKER_EXIT_USAGE;
            }
            ok = push(&w->devices, &w->ndevices, value);
            break;
        case 4:
            if (!stream_ok(value)) {
                fprintf(stderr, "%s: --stream '%s' is not DEV/STREAM (like daq1/wave)\n", prog, value);
                return LMQ_WORKER_EXIT_USAGE;
            }
            ok = push(&w->streams, &w->nstreams, value);
            break;
        default: {
            const char *e = strchr(value, '=');
            if (!e || e == value) {
                fprintf(stderr, "%s: --option '%s' is not KEY=VALUE\n", prog, value);
                return LMQ_WORKER_EXIT_USAGE;
            }
            ok = push(&w->options, &w->noptions, value);
        }
        }
        if (!ok) {
            fprintf(stderr, "%s: out of memory\n", prog);
            return LMQ_WORKER_EXIT_FAILURE;
        }
    }
    return -1;
}

lmq_worker_t *lmq_worker_new(int argc, char *const argv[], const char *about, int *exit_code)
{
    int dummy;
    if (!exit_code)
        exit_code = &dummy;
    *exit_code = LMQ_WORKER_EXIT_FAILURE;
    const char *prog = argc > 0 && argv && argv[0] ? argv[0] : "worker";
    const char *base = strrchr(prog, '/') ? strrchr(prog, '/') + 1 : prog;
    lmq_worker_t *w = calloc(1, sizeof *w);
    if (!w) {
        fprintf(stderr, "%s: out of memory\n", base);
        return NULL;
    }
    w->sigfd = -1;
    int rc = parse(w, argc, argv, base, about);
    if (rc >= 0) {
        *exit_code = rc;
        lmq_worker_destroy(&w);
        return NULL;
    }
    char ep[512];
    if (!w->name && !(w->name = strdup(base)))
        goto oom;
    if (!w->control) {
        if (lmq_default_endpoint(ep, sizeof ep, "control", false) != 0) {
            fprintf(stderr, "%s: no --control given and no default endpoint: %s\n", base, strerror(errno));
            goto fail;
        }
        if (!(w->control = strdup(ep)))
            goto oom;
    }
    if (!w->data) {
        if (lmq_default_endpoint(ep, sizeof ep, "data", false) != 0) {
            fprintf(stderr, "%s: no --data given and no default endpoint: %s\n", base, strerror(errno));
            goto fail;
        }
        if (!(w->data = strdup(ep)))
            goto oom;
    }
    /* A worker whose daemon died (even by SIGKILL, when it could not stop
     * its workers) is asked to stop like any other: no orphan keeps running. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    /* Blocked before the context exists, so ZeroMQ's threads inherit the
     * mask and the signals wait in the signalfd for the worker's loop. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    int e = pthread_sigmask(SIG_BLOCK, &stop, NULL);
    if (e != 0 || (w->sigfd = signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
        fprintf(stderr, "%s: cannot take the stop signals: %s\n", base, strerror(e ? e : errno));
        goto fail;
    }
    if (!(w->zctx = zmq_ctx_new())) {
        fprintf(stderr, "%s: cannot create a ZeroMQ context: %s\n", base, zmq_strerror(errno));
        goto fail;
    }
    *exit_code = LMQ_WORKER_EXIT_OK;
    return w;
oom:
    fprintf(stderr, "%s: out of memory\n", base);
fail:
    lmq_worker_destroy(&w);
    return NULL;
}

void *lmq_worker_zctx(lmq_worker_t *w) { return w ? w->zctx : NULL; }
const char *lmq_worker_name(const lmq_worker_t *w) { return w ? w->name : NULL; }
const char *lmq_worker_control(const lmq_worker_t *w) { return w ? w->control : NULL; }
const char *lmq_worker_data(const lmq_worker_t *w) { return w ? w->data : NULL; }
size_t lmq_worker_device_count(const lmq_worker_t *w) { return w ? w->ndevices : 0; }
size_t lmq_worker_stream_count(const lmq_worker_t *w) { return w ? w->nstreams : 0; }

const char *lmq_worker_device(const lmq_worker_t *w, size_t i) { return w && i < w->ndevices ? w->devices[i] : NULL; }

const char *lmq_worker_stream(const lmq_worker_t *w, size_t i) { return w && i < w->nstreams ? w->streams[i] : NULL; }

const char *lmq_worker_option(const lmq_worker_t *w, const char *key)
{
    if (!w || !key)
        return NULL;
    size_t len = strlen(key);
    for (size_t i = w->noptions; i-- > 0;)
        if (strncmp(w->options[i], key, len) == 0 && w->options[i][len] == '=')
            return w->options[i] + len + 1;
    return NULL;
}

bool lmq_worker_stopping(lmq_worker_t *w)
{
    if (!w)
        return true;
    if (w->stop_signal)
        return true;
    struct signalfd_siginfo si;
    if (read(w->sigfd, &si, sizeof si) == (ssize_t)sizeof si)
        w->stop_signal = (int)si.ssi_signo;
    return w->stop_signal != 0;
}

int lmq_worker_stop_signal(const lmq_worker_t *w) { return w ? w->stop_signal : 0; }

int lmq_worker_fd(const lmq_worker_t *w) { return w ? w->sigfd : -1; }
