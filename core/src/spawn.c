/* Spawning workers: posix_spawn with every descriptor above stderr closed
 * (but those named), default signal dispositions, optionally an explicit
 * environment and a process group of its own, and a bounded wait for their
 * exit. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "labmq/spawn.h"
#include "labmq/status.h"

extern char **environ;

static int map_spawn_error(int rc)
{
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

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static int spawn(char *const argv[], char *const envp[], const int *keep_fds, size_t nkeep, bool own_group, pid_t *pid)
{
    if (!argv || !argv[0] || !pid || (nkeep && !keep_fds))
        return LMQ_EARG;
    int *keep = NULL;
    if (nkeep) {
        if (!(keep = malloc(nkeep * sizeof *keep)))
            return LMQ_EMEM;
        for (size_t i = 0; i < nkeep; i++) {
            keep[i] = keep_fds[i];
            if (keep[i] < 3 || fcntl(keep[i], F_GETFD) < 0) {
                free(keep);
                errno = EBADF;
                return LMQ_EARG;
            }
        }
        qsort(keep, nkeep, sizeof *keep, cmp_int);
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    if (posix_spawn_file_actions_init(&fa) != 0) {
        free(keep);
        return LMQ_EMEM;
    }
    posix_spawnattr_init(&attr);
    /* The child must start clean: whatever descriptor the parent holds (a
     * device file, a ZeroMQ socket, an eventfd) stays with the parent, even
     * when someone forgot O_CLOEXEC. Below the highest kept descriptor the
     * gaps are closed one by one (closing one that is not open is not an
     * error in the child), above it all at once. */
    int rc = 0, next = 3;
    for (size_t i = 0; i < nkeep && rc == 0; i++) {
        for (int fd = next; fd < keep[i] && rc == 0; fd++)
            rc = posix_spawn_file_actions_addclose(&fa, fd);
        /* dup2 onto itself clears close-on-exec in the child (POSIX.1-2024,
         * glibc >= 2.29): every labmq descriptor is close-on-exec. */
        if (rc == 0 && (i == 0 || keep[i] != keep[i - 1]))
            rc = posix_spawn_file_actions_adddup2(&fa, keep[i], keep[i]);
        next = keep[i] + 1;
    }
    if (rc == 0)
        rc = posix_spawn_file_actions_addclosefrom_np(&fa, next);
    /* Default signal dispositions and an empty mask, whatever the parent
     * blocked (labmqd blocks SIGTERM for sigwait). */
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    if (own_group) {
        posix_spawnattr_setpgroup(&attr, 0);
        flags |= POSIX_SPAWN_SETPGROUP;
    }
    posix_spawnattr_setflags(&attr, flags);
    static char *const empty_env[] = {NULL};
    if (rc == 0)
        rc = posix_spawnp(pid, argv[0], &fa, &attr, argv, envp ? envp : empty_env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    free(keep);
    return rc != 0 ? map_spawn_error(rc) : 0;
}

int lmq_spawn(char *const argv[], pid_t *pid) { return spawn(argv, environ, NULL, 0, false, pid); }

int lmq_spawn_ex(char *const argv[], char *const envp[], const int *keep_fds, size_t nkeep, pid_t *pid)
{
    return spawn(argv, envp, keep_fds, nkeep, true, pid);
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
