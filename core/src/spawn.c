/* Spawning workers: posix_spawn with every descriptor above stderr closed
 * and default signal dispositions, and a bounded wait for their exit. */
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "labmq/spawn.h"
#include "labmq/status.h"

extern char **environ;

int lmq_spawn(char *const argv[], pid_t *pid)
{
    if (!argv || !argv[0] || !pid)
        return LMQ_EARG;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    if (posix_spawn_file_actions_init(&fa) != 0)
        return LMQ_EMEM;
    posix_spawnattr_init(&attr);
    /* The child must start clean: whatever descriptor the parent holds (a
     * device file, a ZeroMQ socket, an eventfd) stays with the parent, even
     * when someone forgot O_CLOEXEC. */
    int rc = posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    /* Default signal dispositions and an empty mask, whatever the parent
     * blocked (labmqd blocks SIGTERM for sigwait). */
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    if (rc == 0)
        rc = posix_spawnp(pid, argv[0], &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
        errno = rc;
        switch (rc) {
        case ENOENT:
        case ENOTDIR:
            return LMQ_ENOTFOUND;
        case EACCES:
        case EPERM:
            return LMQ_EPERM;
        case ENOMEM:
            return LMQ_EMEM;
        default:
            return LMQ_ESYS;
        }
    }
    return 0;
}

int lmq_spawn_wait(pid_t pid, int *status, int timeout_ms)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int st = 0;
        pid_t r = waitpid(pid, &st, timeout_ms < 0 ? 0 : WNOHANG);
        if (r == pid) {
            if (status)
                *status = st;
            return 0;
        }
        if (r < 0 && errno != EINTR)
            return LMQ_EARG;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (timeout_ms >= 0 && elapsed >= timeout_ms)
            return LMQ_ETIMEOUT;
        struct timespec nap = {0, 2 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
}
