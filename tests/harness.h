/* Test harness: temp dirs and a real labmqd process for multi-process tests.
 * Nothing here creates a ZeroMQ context (Check forks each test). */
#ifndef LMQ_TEST_HARNESS_H
#define LMQ_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct th_daemon {
    char dir[128];
    char config[192];
    char control[200];
    char data[200];
    char log[192]; /* labmqd's output; shown when it fails */
    pid_t pid;
} th_daemon_t;

/* Makes a private temp dir under /tmp; aborts the test on failure. */
void th_tempdir(char *buf, size_t size);
void th_write_file(const char *path, const char *text);
/* Reads a whole file (caller frees); NULL when missing. */
char *th_read_file(const char *path);
/* Reads a whole file (caller frees); aborts the test when it cannot. */
char *th_slurp(const char *path);
void th_rmtree(const char *dir);

/* Starts argv[0] (a path) with posix_spawn, never fork: stdin from /dev/null,
 * stdout into out_path and stderr into err_path (NULL: into out_path too), so
 * a large output cannot block the child on a full pipe. Aborts the test when
 * it cannot start. */
pid_t th_spawn_to_files(char *const argv[], const char *out_path, const char *err_path);
/* Waits up to timeout_ms for pid. Returns 0 with the wait status in *status,
 * or -1 when pid overran (it is then killed and reaped). Aborts the test when
 * pid is not a child. */
int th_wait_exit(pid_t pid, int timeout_ms, int *status);

/* Writes `yaml` as the config in a new temp dir and starts labmqd on ipc
 * endpoints inside it; returns once it answers a ping (devices opened). */
void th_daemon_start(th_daemon_t *d, const char *yaml);
/* The same with an existing config file. */
void th_daemon_start_config(th_daemon_t *d, const char *config_path);
/* (Re)starts labmqd with the same config and endpoints. */
void th_daemon_restart(th_daemon_t *d);
/* Sends sig and waits up to 20 s; returns the wait status (-1 on overrun). */
int th_daemon_stop(th_daemon_t *d, int sig);
/* Stops with SIGTERM, fails the test unless labmqd exits 0 (showing its
 * output), and removes the temp dir. The normal end of a daemon test. */
void th_daemon_finish(th_daemon_t *d);
/* Stops (if running) and removes the temp dir, whatever the exit status. */
void th_daemon_cleanup(th_daemon_t *d);

double th_now_ms(void);

/* Loop tests over the proxy's two paths (protocol.md 6): path 0 leaves
 * LABMQ_NO_LOCAL unset (the local channel), path 1 sets it (ZeroMQ only,
 * also for daemons started afterwards). Returns "local" or "zmq", what
 * lmq_proxy_last_path then reports. */
const char *th_use_path(int path);

/* The state letter of /proc/PID/stat ('R', 'S', 'Z', ...) and, when ppid is
 * not NULL, its parent; 0 when the process is gone. */
char th_proc_state(pid_t pid, pid_t *ppid);
/* SIGSTOPs pid and returns once every thread of it has stopped. */
void th_stop_process(pid_t pid);

/* Raw protocol clients (a DEALER socket the test owns): the next reply's
 * header as JSON, its binary frames dropped; NULL after timeout_ms. */
struct json_t;
struct json_t *th_recv_reply(void *sock, int timeout_ms);
/* "OK" for a success, else the reply's error code; and its message ("" when none). */
const char *th_reply_code(struct json_t *reply);
const char *th_reply_message(struct json_t *reply);

/* Runs a Check suite (each test in its own process) and frees it; returns
 * the process exit status for main(). */
struct Suite;
int th_run_suite(struct Suite *suite);

#endif
