/* What the benchmarks share to run their roles as separate processes: CPU
 * pinning, children started with posix_spawn (never fork: the orchestrator
 * may hold a ZeroMQ context) with their stdin/stdout as pipes, and argv
 * building. Internal to bench/. */
#ifndef LABMQ_BENCH_CHILD_H
#define LABMQ_BENCH_CHILD_H

#include <stdio.h>
#include <sys/types.h>

/* Pins the calling thread's process to cpu (-1: leave it). 0 or -1 (said on stderr). */
int pin_self(int cpu);

typedef struct child {
    pid_t pid;
    FILE *out; /* the child's stdout; NULL when not captured */
    int in;    /* the child's stdin; -1 when not a pipe */
} child_t;

/* Starts argv with stdin/stdout as pipes, or, with log_path, stdin from
 * /dev/null and stdout/stderr appended to log_path. 0 or -1 (errno). */
int child_spawn(child_t *c, char *const argv[], const char *log_path);
/* Closes its stdin (a role takes that as "stop"), sends sig when not 0,
 * waits up to timeout_ms (then SIGKILL) and reaps it. Its exit status,
 * 128 + the signal, or -1. */
int child_finish(child_t *c, int sig, int timeout_ms);
/* Reads its stdout until a line starts with word; that line (no newline) in buf. 0 or -1. */
int child_expect(child_t *c, const char *word, char *buf, size_t size);

/* argv for a role: strings are borrowed, numbers formatted into the builder. */
typedef struct argvb {
    char *v[48];
    int n;
    char num[16][40];
    int nnum;
} argvb_t;

void av_add(argvb_t *a, const char *s);
/* fmt applied to v, kept in the builder (the last 16 stay valid). */
const char *av_num(argvb_t *a, const char *fmt, double v);

#endif
