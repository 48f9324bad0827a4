/* Processes for the benchmarks' roles: see child.h. */
#include "child.h"
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "labmq/labmq.h"

extern char **environ;

int pin_self(int cpu)
{
    if (cpu < 0)
        return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        fprintf(stderr, "%s: sched_setaffinity(cpu %d): %s\n", program_invocation_short_name, cpu, strerror(errno));
        return -1;
    }
    return 0;
}

int child_spawn(child_t *c, char *const argv[], const char *log_path)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    c->pid = -1;
    c->out = NULL;
    c->in = -1;
    if (!log_path && pipe2(in, O_CLOEXEC) != 0)
        return -1;
    if (!log_path && pipe2(out, O_CLOEXEC) != 0) {
        int e = errno;
        close(in[0]);
        close(in[1]);
        errno = e;
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (log_path) {
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    } else {
        posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
        posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    }
    int rc = posix_spawn(&c->pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (!log_path) {
        close(in[0]);
        close(out[1]);
        if (rc != 0) {
            close(in[1]);
            close(out[0]);
        } else {
            c->in = in[1];
            c->out = fdopen(out[0], "r");
        }
    }
    if (rc != 0) {
        c->pid = -1;
        errno = rc;
        return -1;
    }
    return 0;
}

int child_finish(child_t *c, int sig, int timeout_ms)
{
    if (c->pid <= 0)
        return -1;
    if (c->in >= 0)
        close(c->in);
    c->in = -1;
    if (sig)
        kill(c->pid, sig);
    int status = 0;
    int rc = lmq_spawn_wait(c->pid, &status, timeout_ms);
    if (rc == LMQ_ETIMEOUT) {
        kill(c->pid, SIGKILL);
        rc = lmq_spawn_wait(c->pid, &status, -1);
    }
    if (c->out)
        fclose(c->out);
    c->out = NULL;
    c->pid = -1;
    if (rc != 0)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

int child_expect(child_t *c, const char *word, char *buf, size_t size)
{
    size_t n = strlen(word);
    while (c->out && fgets(buf, (int)size, c->out)) {
        buf[strcspn(buf, "\n")] = '\0';
        if (strncmp(buf, word, n) == 0)
            return 0;
    }
    return -1;
}

void av_add(argvb_t *a, const char *s)
{
    if (a->n < (int)(sizeof a->v / sizeof a->v[0]) - 1)
        a->v[a->n++] = (char *)s;
    a->v[a->n] = NULL;
}

const char *av_num(argvb_t *a, const char *fmt, double v)
{
    char *s = a->num[a->nnum++ % 16];
    snprintf(s, sizeof a->num[0], fmt, v);
    return s;
}
