/* Helper process for test_supervise and test_workers: one of a few
 * behaviours a supervised worker can have, chosen by argv[1], each leaving
 * evidence in the file argv[2].
 *   report FILE ...    write the descriptors it was born with, whether it
 *                      leads its own process group, argv and environ; exit 0
 *   crash FILE         append the CLOCK_MONOTONIC time of its start; exit 3
 *   exit FILE CODE     append its start time; exit CODE
 *   sleep FILE         write its pid; wait for a signal (default dispositions)
 *   stubborn FILE      ignore SIGTERM, start a grandchild that ignores it too,
 *                      write both pids; wait for ever
 * The grandchild is this program with "stubborn-grandchild". Started by
 * labmqd, it gets the standard worker argv first (--control EP --data EP
 * --name NAME): "report" shows it, the other modes skip it. */
#include <dirent.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static long long mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Writes text to path through a temporary file, so a reader never sees half. */
static int write_whole(const char *path, const char *text)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fputs(text, f);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path);
}

static int append_start(const char *path)
{
    FILE *f = fopen(path, "a");
    if (!f)
        return -1;
    fprintf(f, "%lld\n", mono_ns());
    return fclose(f);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: supervise_child report|crash|exit|sleep|stubborn FILE [...]\n");
        return 2;
    }
    int skip = argc > 7 && strcmp(argv[1], "--control") == 0 ? 6 : 0;
    const char *mode = argv[1 + skip], *file = argv[2 + skip];
    if (argc < 3 + skip) {
        fprintf(stderr, "supervise_child: no mode\n");
        return 2;
    }
    if (strcmp(mode, "report") == 0) {
        /* Before anything opens a descriptor of its own. */
        int fds[64], n = 0;
        DIR *d = opendir("/proc/self/fd");
        if (!d)
            return 4;
        struct dirent *e;
        while ((e = readdir(d)) && n < 64)
            if (e->d_name[0] != '.' && atoi(e->d_name) != dirfd(d))
                fds[n++] = atoi(e->d_name);
        closedir(d);
        size_t cap = 65536, len = 0;
        char *out = malloc(cap);
        if (!out)
            return 4;
        len += (size_t)snprintf(out + len, cap - len, "fds:");
        for (int i = 0; i < n; i++)
            len += (size_t)snprintf(out + len, cap - len, " %d", fds[i]);
        len += (size_t)snprintf(out + len, cap - len, "\ngroup leader: %s\n", getpgrp() == getpid() ? "yes" : "no");
        for (int i = 0; i < argc && len < cap; i++)
            len += (size_t)snprintf(out + len, cap - len, "argv[%d]=%s\n", i, argv[i]);
        for (char **v = environ; *v && len < cap; v++)
            len += (size_t)snprintf(out + len, cap - len, "env=%s\n", *v);
        int rc = len < cap ? write_whole(file, out) : -1;
        free(out);
        return rc == 0 ? 0 : 4;
    }
    if (strcmp(mode, "crash") == 0) {
        append_start(file);
        return 3;
    }
    if (strcmp(mode, "exit") == 0 && argc == 4 + skip) {
        append_start(file);
        return atoi(argv[3 + skip]);
    }
    if (strcmp(mode, "sleep") == 0) {
        char text[64];
        snprintf(text, sizeof text, "%d\n", (int)getpid());
        if (write_whole(file, text) != 0)
            return 4;
        for (;;)
            pause();
    }
    if (strcmp(mode, "stubborn") == 0 || strcmp(mode, "stubborn-grandchild") == 0) {
        signal(SIGTERM, SIG_IGN);
        if (strcmp(mode, "stubborn-grandchild") == 0)
            for (;;)
                pause();
        char *gargv[] = {argv[0], "stubborn-grandchild", (char *)file, NULL};
        pid_t g;
        if (posix_spawn(&g, argv[0], NULL, NULL, gargv, environ) != 0)
            return 4;
        char text[64];
        snprintf(text, sizeof text, "%d %d\n", (int)getpid(), (int)g);
        if (write_whole(file, text) != 0)
            return 4;
        for (;;)
            pause();
    }
    fprintf(stderr, "supervise_child: unknown mode '%s'\n", mode);
    return 2;
}
