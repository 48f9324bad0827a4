/* labmq CLI — record: runs labmq-recorder for the given streams and waits
 * for it, passing on Ctrl-C and SIGTERM so the recording ends cleanly.
 *
 * The recorder is a program of its own (it is also run as a supervised
 * worker); the CLI only finds it, hands over the endpoints and options in
 * argv, and returns its exit status. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cli.h"

#define RECORDER "labmq-recorder"
/* How often the wait for the recorder looks whether it has exited. */
#define REAP_POLL_MS 50

/* Next to this program (as installed, and in the build tree), else by name
 * on PATH. */
static void find_recorder(char *buf, size_t size)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            if ((size_t)snprintf(buf, size, "%s/" RECORDER, self) < size && access(buf, X_OK) == 0)
                return;
        }
    }
    snprintf(buf, size, RECORDER);
}

int cli_cmd_record(cli_t *c, int argc, char **argv)
{
    if (!c->output)
        return cli_usage(c, "record needs an output file: labmq record DEV/STREAM... -o FILE");
    char prog[PATH_MAX + 32], duration[64] = "", timeout[32];
    find_recorder(prog, sizeof prog);
    snprintf(timeout, sizeof timeout, "%d", c->timeout_ms);
    if (c->duration_s > 0)
        snprintf(duration, sizeof duration, "%.17g", c->duration_s);
    /* prog, 15 option words at most, "--", the streams, NULL */
    char **args = calloc((size_t)argc + 18, sizeof *args);
    if (!args)
        return cli_failf(c, LMQ_EMEM, "out of memory");
    size_t n = 0;
    args[n++] = prog;
    args[n++] = "--control";
    args[n++] = c->control;
    args[n++] = "--timeout";
    args[n++] = timeout;
    if (c->data[0]) {
        args[n++] = "--data";
        args[n++] = c->data;
    }
    args[n++] = "--output";
    args[n++] = (char *)c->output;
    if (duration[0]) {
        args[n++] = "--duration";
        args[n++] = duration;
    }
    if (c->overwrite)
        args[n++] = "--overwrite";
    if (c->curve) {
        /* The server key as Z85: no second lookup of a file in the child. */
        args[n++] = "--key";
        args[n++] = (char *)c->key_path;
        args[n++] = "--server-key";
        args[n++] = c->keys.server_key;
    }
    args[n++] = "--";
    for (int i = 0; i < argc; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    pid_t pid;
    int rc = lmq_spawn(args, &pid);
    free(args);
    if (rc == LMQ_ENOTFOUND)
        return cli_failf(c, rc, RECORDER " is neither next to labmq nor on PATH");
    if (rc != 0)
        return cli_failf(c, rc, "cannot start %s: %s", prog, strerror(errno));
    int status = 0;
    for (;;) {
        rc = lmq_spawn_wait(pid, &status, 0);
        if (rc != LMQ_ETIMEOUT)
            break;
        struct pollfd pfd = {c->sigfd, POLLIN, 0};
        if (poll(&pfd, 1, REAP_POLL_MS) > 0) {
            struct signalfd_siginfo si;
            /* A Ctrl-C on a terminal reached the recorder too; a SIGTERM to
             * this process alone would not have. */
            if (read(c->sigfd, &si, sizeof si) == (ssize_t)sizeof si)
                kill(pid, (int)si.ssi_signo);
        }
    }
    if (rc != 0)
        return cli_failf(c, rc, "lost track of %s (pid %d)", prog, (int)pid);
    if (WIFSIGNALED(status))
        return cli_failf(c, LMQ_ESYS, "%s was killed by signal %s", RECORDER, sigabbrev_np(WTERMSIG(status)));
    /* The recorder has said what went wrong; its codes are ours (0, 1, 2). */
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : CLI_FAILED;
    return code == CLI_OK || code == CLI_USAGE ? code : CLI_FAILED;
}
