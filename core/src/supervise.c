/* The worker supervisor: declared workers started with lmq_spawn_ex, watched
 * through pidfds on the supervisor's own thread, reaped by pid, restarted
 * with back-off within a crash budget, and stopped with SIGTERM, then SIGKILL,
 * to their process groups. State is guarded by one mutex: the thread writes
 * it, any thread may take a snapshot. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/wait.h>
#include <unistd.h>
#include "labmq/driver.h"
#include "labmq/spawn.h"
#include "labmq/status.h"
#include "labmq/supervise.h"
#include "supervise_internal.h"

#define MS ((int64_t)1000000)
#define BACKOFF_MIN_NS (100 * MS)
#define BACKOFF_MAX_NS (30000 * MS)
/* A run this long proves the worker healthy again: the next back-off starts
 * from the minimum. */
#define BACKOFF_RESET_NS (10000 * MS)
#define CRASH_BUDGET 5
#define CRASH_WINDOW_NS (60000 * MS)
#define STARTING_NS (1000 * MS)
/* Without a pidfd (an old kernel, a seccomp filter) exits are polled. */
#define POLL_FALLBACK_MS 50

typedef struct worker {
    char name[64];
    char **argv, **envp; /* owned copies, NULL-terminated */
    lmq_restart_t restart;

    /* written by the supervisor thread under mu */
    lmq_worker_state_t state;
    pid_t pid;
    int pidfd; /* -1 when none */
    int64_t started_ns, next_start_ns, backoff_ns;
    int64_t crash_ns[CRASH_BUDGET]; /* ring of the latest crash times */
    unsigned ncrash, restarts, starts;
    bool has_exited;
    int last_code, last_signal;
    char error[256];

    /* declared or retired while the supervisor runs (lmq_supervisor_add,
     * lmq__supervisor_remove); under mu */
    bool fresh;  /* added while running: the thread starts it at its next pass */
    bool retire; /* to be stopped and forgotten */
    bool gone;   /* retired and reaped: the remover may drop the entry */
    bool termed; /* SIGTERM sent to the retiring worker */
    bool killed; /* SIGKILL sent to it */
    int64_t kill_at;
} worker_t;

struct lmq_supervisor {
    lmq_log_t *log;
    worker_t *w;
    size_t n, cap;
    pthread_mutex_t mu;
    pthread_cond_t gone; /* a retired worker has been reaped */
    int64_t grace_ns;
    char err[256];

    /* caller's thread */
    pthread_t thread;
    bool running;
    int wake[2]; /* the caller writes a byte to ask the thread to stop */
    atomic_bool stop_requested;
};

static const char *const state_names[] = {"stopped", "starting", "running", "backoff", "failed", "exited"};
static const char *const restart_names[] = {"on-failure", "always", "never"};

const char *lmq_worker_state_name(lmq_worker_state_t state)
{
    return (unsigned)state < sizeof state_names / sizeof *state_names ? state_names[state] : "unknown";
}

const char *lmq_restart_name(lmq_restart_t restart)
{
    return (unsigned)restart < sizeof restart_names / sizeof *restart_names ? restart_names[restart] : "unknown";
}

int lmq_restart_parse(const char *text)
{
    for (int i = 0; text && i < (int)(sizeof restart_names / sizeof *restart_names); i++)
        if (strcmp(text, restart_names[i]) == 0)
            return i;
    return -1;
}

const char *lmq_supervisor_last_error(const lmq_supervisor_t *s) { return s ? s->err : "no supervisor"; }

lmq_supervisor_t *lmq_supervisor_new(lmq_log_t *log)
{
    lmq_supervisor_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->log = log;
    s->grace_ns = 5000 * MS;
    s->wake[0] = s->wake[1] = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->gone, NULL);
    return s;
}

static void strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

/* Tells the supervisor thread to look at its table again. */
static void wake_thread(lmq_supervisor_t *s)
{
    char b = 1;
    while (write(s->wake[1], &b, 1) < 0 && errno == EINTR)
        ;
}

static char **strv_copy(char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    char **c = calloc(n + 1, sizeof *c);
    for (size_t i = 0; c && i < n; i++)
        if (!(c[i] = strdup(v[i]))) {
            strv_free(c);
            return NULL;
        }
    return c;
}

bool lmq__worker_name_ok(const char *name)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len > 63)
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
              *p == '-' || *p == '.'))
            return false;
    return true;
}

int lmq_supervisor_add(lmq_supervisor_t *s, const char *name, char *const argv[], char *const envp[],
                       lmq_restart_t restart)
{
    if (!s)
        return LMQ_EARG;
    if (!lmq__worker_name_ok(name)) {
        snprintf(s->err, sizeof s->err, "invalid worker name '%.64s' (use " LMQ__WORKER_NAME_RULE ")",
                 name ? name : "(null)");
        return LMQ_EARG;
    }
    if (!argv || !argv[0] || !argv[0][0]) {
        snprintf(s->err, sizeof s->err, "worker '%s': no program", name);
        return LMQ_EARG;
    }
    if ((unsigned)restart > LMQ_RESTART_NEVER) {
        snprintf(s->err, sizeof s->err, "worker '%s': unknown restart policy %d", name, (int)restart);
        return LMQ_EARG;
    }
    bool dup = false;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->n; i++)
        dup = dup || strcmp(s->w[i].name, name) == 0;
    pthread_mutex_unlock(&s->mu);
    if (dup) {
        snprintf(s->err, sizeof s->err, "worker '%s' is declared twice", name);
        return LMQ_EARG;
    }
    worker_t nw = {.restart = restart, .pidfd = -1, .backoff_ns = BACKOFF_MIN_NS, .fresh = s->running};
    snprintf(nw.name, sizeof nw.name, "%s", name);
    nw.argv = strv_copy(argv);
    nw.envp = strv_copy(envp);
    if (!nw.argv || !nw.envp)
        goto oom;
    /* A snapshot may be taken meanwhile (a daemon adds its workers while
     * its broker already answers `workers`). */
    pthread_mutex_lock(&s->mu);
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 4;
        worker_t *grown = realloc(s->w, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&s->mu);
            goto oom;
        }
        s->w = grown;
        s->cap = cap;
    }
    s->w[s->n++] = nw;
    pthread_mutex_unlock(&s->mu);
    if (s->running)
        wake_thread(s);
    return 0;
oom:
    strv_free(nw.argv);
    strv_free(nw.envp);
    snprintf(s->err, sizeof s->err, "worker '%s': out of memory", name);
    return LMQ_EMEM;
}

void lmq_supervisor_set_stop_grace(lmq_supervisor_t *s, int ms)
{
    if (!s)
        return;
    /* The thread reads it under mu (a reload changes it while running). */
    pthread_mutex_lock(&s->mu);
    s->grace_ns = (int64_t)(ms < 0 ? 0 : ms) * MS;
    pthread_mutex_unlock(&s->mu);
}

/* ---- the supervisor thread ---- */

static void describe_exit(char *buf, size_t size, int code, int sig)
{
    if (sig) {
        const char *abbrev = sigabbrev_np(sig);
        if (abbrev)
            snprintf(buf, size, "killed by SIG%s", abbrev);
        else
            snprintf(buf, size, "killed by signal %d", sig);
    } else {
        snprintf(buf, size, "exit status %d", code);
    }
}

/* Signals the worker's process group, and the worker itself if it has left
 * that group (setpgid), so it is never missed. Once: a second SIGTERM often
 * means "hurry" to a program. */
static void signal_worker(const worker_t *w, int sig)
{
    kill(-w->pid, sig);
    if (getpgid(w->pid) != w->pid)
        kill(w->pid, sig);
}

/* Under mu. */
static void spawn_worker(lmq_supervisor_t *s, worker_t *w, int64_t now)
{
    pid_t pid = 0;
    int rc = lmq_spawn_ex(w->argv, w->envp, NULL, 0, &pid);
    if (rc == LMQ_ENOTFOUND || rc == LMQ_EPERM) {
        /* Retrying cannot help until someone installs or fixes the program. */
        w->state = LMQ_WORKER_FAILED;
        snprintf(w->error, sizeof w->error, "cannot start %.180s: %s", w->argv[0],
                 rc == LMQ_ENOTFOUND ? "no such program" : "not executable (permission denied)");
        lmq_log(s->log, LMQ_LOG_ERROR, "supervisor", "worker %s: %s", w->name, w->error);
        return;
    }
    if (rc != 0) {
        int e = errno;
        snprintf(w->error, sizeof w->error, "cannot start %.180s: %s", w->argv[0], strerror(e));
        lmq_log(s->log, LMQ_LOG_ERROR, "supervisor", "worker %s: %s; retrying in %.1f s", w->name, w->error,
                (double)w->backoff_ns / 1e9);
        w->state = LMQ_WORKER_BACKOFF;
        w->next_start_ns = now + w->backoff_ns;
        w->backoff_ns = w->backoff_ns * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : w->backoff_ns * 2;
        return;
    }
    w->error[0] = 0;
    w->pid = pid;
    w->pidfd = pidfd_open(pid, 0);
    w->started_ns = now;
    w->state = LMQ_WORKER_STARTING;
    if (w->starts++)
        w->restarts++;
    lmq_log(s->log, LMQ_LOG_INFO, "supervisor", "worker %s started (pid %d)", w->name, (int)pid);
}

/* Under mu: records how the worker ended and decides what comes next. */
static void worker_ended(lmq_supervisor_t *s, worker_t *w, int status, int64_t now, bool stopping)
{
    if (w->pidfd >= 0)
        close(w->pidfd);
    w->pidfd = -1;
    pid_t pid = w->pid;
    w->pid = 0;
    w->has_exited = true;
    w->last_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    w->last_signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    bool crashed = w->last_code != 0;
    char how[64];
    describe_exit(how, sizeof how, w->last_code, w->last_signal);
    if (stopping) {
        w->state = LMQ_WORKER_STOPPED;
        lmq_log(s->log, LMQ_LOG_INFO, "supervisor", "worker %s (pid %d) stopped: %s", w->name, (int)pid, how);
        return;
    }
    if (w->restart == LMQ_RESTART_NEVER || (w->restart == LMQ_RESTART_ON_FAILURE && !crashed)) {
        w->state = LMQ_WORKER_EXITED;
        lmq_log(s->log, crashed ? LMQ_LOG_WARN : LMQ_LOG_INFO, "supervisor",
                "worker %s (pid %d) ended: %s; not restarted (restart: %s)", w->name, (int)pid, how,
                lmq_restart_name(w->restart));
        return;
    }
    if (crashed) {
        w->crash_ns[w->ncrash++ % CRASH_BUDGET] = now;
        unsigned recent = 0;
        for (unsigned i = 0; i < CRASH_BUDGET && i < w->ncrash; i++)
            recent += now - w->crash_ns[i] < CRASH_WINDOW_NS;
        if (recent >= CRASH_BUDGET) {
            w->state = LMQ_WORKER_FAILED;
            snprintf(w->error, sizeof w->error, "crashed %d times within %d s (last: %s); not restarted", CRASH_BUDGET,
                     (int)(CRASH_WINDOW_NS / (1000 * MS)), how);
            lmq_log(s->log, LMQ_LOG_ERROR, "supervisor", "worker %s (pid %d) %s", w->name, (int)pid, w->error);
            return;
        }
    }
    if (now - w->started_ns >= BACKOFF_RESET_NS)
        w->backoff_ns = BACKOFF_MIN_NS;
    w->state = LMQ_WORKER_BACKOFF;
    w->next_start_ns = now + w->backoff_ns;
    lmq_log(s->log, crashed ? LMQ_LOG_WARN : LMQ_LOG_INFO, "supervisor",
            "worker %s (pid %d) ended: %s; restarting in %.1f s", w->name, (int)pid, how, (double)w->backoff_ns / 1e9);
    w->backoff_ns = w->backoff_ns * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : w->backoff_ns * 2;
}

/* Reaps the worker if its main process has ended. Its process group is
 * killed first, while the unreaped leader still pins the group id (so the
 * signal cannot reach an unrelated process that reused the pid). */
static void check_worker(lmq_supervisor_t *s, worker_t *w, int64_t now, bool stopping)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)w->pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0) {
        if (errno != ECHILD)
            return;
        /* Reaped behind our back: the host set SIGCHLD to SIG_IGN (or
         * waited for every child). The worker is gone; how it ended is not
         * known, so it counts as a crash. */
        lmq_log(s->log, LMQ_LOG_WARN, "supervisor",
                "worker %s (pid %d) was reaped by someone else: its exit status is lost", w->name, (int)w->pid);
        worker_ended(s, w, 255 << 8, now, stopping);
        return;
    }
    if (si.si_pid != w->pid)
        return;
    kill(-w->pid, SIGKILL);
    int status = 0;
    pid_t r;
    while ((r = waitpid(w->pid, &status, 0)) < 0 && errno == EINTR)
        ;
    if (r != w->pid)
        status = 0;
    worker_ended(s, w, status, now, stopping);
}

int lmq__supervisor_remove(lmq_supervisor_t *s, const char *name)
{
    if (!s || !name)
        return LMQ_EARG;
    pthread_mutex_lock(&s->mu);
    size_t i = 0;
    while (i < s->n && strcmp(s->w[i].name, name) != 0)
        i++;
    if (i == s->n) {
        pthread_mutex_unlock(&s->mu);
        snprintf(s->err, sizeof s->err, "no worker '%s'", name);
        return LMQ_ENOTFOUND;
    }
    if (s->running) {
        s->w[i].retire = true;
        wake_thread(s);
        /* The supervisor thread only marks the entry gone; entries leave the
         * table here, on the thread that declares workers, so i still
         * indexes this worker after the wait. */
        while (!s->w[i].gone)
            pthread_cond_wait(&s->gone, &s->mu);
    }
    strv_free(s->w[i].argv);
    strv_free(s->w[i].envp);
    memmove(&s->w[i], &s->w[i + 1], (s->n - i - 1) * sizeof *s->w);
    s->n--;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* Under mu: a worker being retired gets SIGTERM, then SIGKILL after the
 * grace period; once reaped it is marked gone for lmq__supervisor_remove. */
static void retire_worker(lmq_supervisor_t *s, worker_t *w, int64_t now)
{
    if (w->pid && !w->termed) {
        w->termed = true;
        w->kill_at = now + s->grace_ns;
        lmq_log(s->log, LMQ_LOG_INFO, "supervisor", "stopping worker %s (pid %d): it is being removed", w->name,
                (int)w->pid);
        signal_worker(w, SIGTERM);
    } else if (w->pid && !w->killed && now >= w->kill_at) {
        w->killed = true;
        lmq_log(s->log, LMQ_LOG_WARN, "supervisor", "worker %s (pid %d) still running %.1f s after SIGTERM: killing it",
                w->name, (int)w->pid, (double)s->grace_ns / 1e9);
        signal_worker(w, SIGKILL);
    }
    if (w->pid)
        check_worker(s, w, now, true);
    if (!w->pid) {
        if (w->state == LMQ_WORKER_BACKOFF)
            w->state = LMQ_WORKER_STOPPED;
        w->gone = true;
        pthread_cond_broadcast(&s->gone);
    }
}

static void *supervisor_main(void *arg)
{
    lmq_supervisor_t *s = arg;
    pthread_mutex_lock(&s->mu);
    int64_t now = lmq_clock_mono_ns();
    for (size_t i = 0; i < s->n; i++) {
        s->w[i].fresh = false;
        spawn_worker(s, &s->w[i], now);
    }
    size_t pfd_cap = s->n + 1; /* under mu: workers may be added meanwhile */
    pthread_mutex_unlock(&s->mu);

    bool stopping = false, killed = false;
    int64_t kill_at = 0;
    struct pollfd *pfd = calloc(pfd_cap, sizeof *pfd);
    for (;;) {
        pthread_mutex_lock(&s->mu);
        now = lmq_clock_mono_ns();
        if (pfd && s->n + 1 > pfd_cap) { /* workers added while running */
            struct pollfd *grown = realloc(pfd, (s->n + 1) * sizeof *pfd);
            if (grown) {
                pfd = grown;
                pfd_cap = s->n + 1;
            }
        }
        for (size_t i = 0; i < s->n; i++) {
            worker_t *w = &s->w[i];
            if (w->retire && !w->gone)
                retire_worker(s, w, now);
            else if (w->fresh && !stopping) {
                w->fresh = false;
                spawn_worker(s, w, now);
            }
        }
        if (!stopping && atomic_load(&s->stop_requested)) {
            stopping = true;
            kill_at = now + s->grace_ns;
            for (size_t i = 0; i < s->n; i++) {
                worker_t *w = &s->w[i];
                if (w->pid) {
                    lmq_log(s->log, LMQ_LOG_INFO, "supervisor", "stopping worker %s (pid %d)", w->name, (int)w->pid);
                    signal_worker(w, SIGTERM);
                } else if (w->state == LMQ_WORKER_BACKOFF) {
                    w->state = LMQ_WORKER_STOPPED;
                }
            }
        }
        for (size_t i = 0; i < s->n; i++)
            if (s->w[i].pid && !s->w[i].retire)
                check_worker(s, &s->w[i], now, stopping);
        if (stopping && !killed && now >= kill_at) {
            killed = true;
            for (size_t i = 0; i < s->n; i++)
                if (s->w[i].pid) {
                    lmq_log(s->log, LMQ_LOG_WARN, "supervisor",
                            "worker %s (pid %d) still running %.1f s after SIGTERM: killing it", s->w[i].name,
                            (int)s->w[i].pid, (double)s->grace_ns / 1e9);
                    signal_worker(&s->w[i], SIGKILL);
                }
        }
        /* What to wait for: worker exits (pidfds), the stop request, the
         * next scheduled restart, the kill deadline. */
        int64_t next = -1;
        size_t nfd = 0, running = 0;
        bool blind = false;
        if (pfd && !stopping)
            pfd[nfd++] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
        for (size_t i = 0; i < s->n; i++) {
            worker_t *w = &s->w[i];
            if (!stopping && !w->retire && w->state == LMQ_WORKER_BACKOFF && w->next_start_ns <= now)
                spawn_worker(s, w, now);
            if (!stopping && !w->retire && w->state == LMQ_WORKER_BACKOFF && (next < 0 || w->next_start_ns < next))
                next = w->next_start_ns;
            if (w->retire && w->pid && !w->killed && (next < 0 || w->kill_at < next))
                next = w->kill_at;
            if (w->pid) {
                running++;
                if (w->pidfd >= 0 && pfd && nfd < pfd_cap)
                    pfd[nfd++] = (struct pollfd){.fd = w->pidfd, .events = POLLIN};
                else
                    blind = true;
            }
        }
        pthread_mutex_unlock(&s->mu);
        if (stopping && running == 0)
            break;
        if (stopping && !killed && (next < 0 || kill_at < next))
            next = kill_at;
        int timeout = next < 0 ? -1 : (int)((next - now + MS - 1) / MS);
        if (blind || !pfd)
            timeout = timeout < 0 || timeout > POLL_FALLBACK_MS ? POLL_FALLBACK_MS : timeout;
        if (pfd) {
            poll(pfd, nfd, timeout);
            char drain[64];
            if (!stopping && (pfd[0].revents & POLLIN))
                while (read(s->wake[0], drain, sizeof drain) > 0)
                    ;
        } else
            usleep((useconds_t)timeout * 1000);
    }
    free(pfd);
    return NULL;
}

int lmq_supervisor_start(lmq_supervisor_t *s)
{
    if (!s)
        return LMQ_EARG;
    if (s->running) {
        snprintf(s->err, sizeof s->err, "the supervisor is already running");
        return LMQ_EARG;
    }
    if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        snprintf(s->err, sizeof s->err, "cannot create the supervisor's pipe: %s", strerror(errno));
        s->wake[0] = s->wake[1] = -1;
        return LMQ_ESYS;
    }
    atomic_store(&s->stop_requested, false);
    int e = pthread_create(&s->thread, NULL, supervisor_main, s);
    if (e != 0) {
        snprintf(s->err, sizeof s->err, "cannot start the supervisor thread: %s", strerror(e));
        close(s->wake[0]);
        close(s->wake[1]);
        s->wake[0] = s->wake[1] = -1;
        return LMQ_ESYS;
    }
    s->running = true;
    return 0;
}

int lmq_supervisor_stop(lmq_supervisor_t *s)
{
    if (!s)
        return LMQ_EARG;
    if (!s->running)
        return 0;
    atomic_store(&s->stop_requested, true);
    char b = 1;
    while (write(s->wake[1], &b, 1) < 0 && errno == EINTR)
        ;
    pthread_join(s->thread, NULL);
    close(s->wake[0]);
    close(s->wake[1]);
    s->wake[0] = s->wake[1] = -1;
    s->running = false;
    return 0;
}

void lmq_supervisor_destroy(lmq_supervisor_t **ps)
{
    if (!ps || !*ps)
        return;
    lmq_supervisor_t *s = *ps;
    lmq_supervisor_stop(s);
    for (size_t i = 0; i < s->n; i++) {
        strv_free(s->w[i].argv);
        strv_free(s->w[i].envp);
    }
    free(s->w);
    pthread_cond_destroy(&s->gone);
    pthread_mutex_destroy(&s->mu);
    free(s);
    *ps = NULL;
}

/* ---- state ---- */

size_t lmq_supervisor_count(const lmq_supervisor_t *s) { return s ? s->n : 0; }

/* Under mu. */
static void fill_info(const worker_t *w, int64_t now, lmq_worker_info_t *info)
{
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", w->name);
    info->state = w->state;
    if (w->pid) {
        info->uptime_s = (double)(now - w->started_ns) / 1e9;
        info->state = now - w->started_ns < STARTING_NS ? LMQ_WORKER_STARTING : LMQ_WORKER_RUNNING;
    }
    info->pid = w->pid;
    info->restarts = w->restarts;
    info->has_exited = w->has_exited;
    info->last_exit_code = w->last_code;
    info->last_exit_signal = w->last_signal;
    if (w->state == LMQ_WORKER_FAILED || w->state == LMQ_WORKER_BACKOFF)
        snprintf(info->error, sizeof info->error, "%s", w->error);
}

int lmq_supervisor_info(lmq_supervisor_t *s, size_t i, lmq_worker_info_t *info)
{
    if (!s || !info)
        return LMQ_EARG;
    pthread_mutex_lock(&s->mu);
    bool ok = i < s->n;
    if (ok)
        fill_info(&s->w[i], lmq_clock_mono_ns(), info);
    pthread_mutex_unlock(&s->mu);
    return ok ? 0 : LMQ_EARG;
}

json_t *lmq__supervisor_snapshot(lmq_supervisor_t *s)
{
    json_t *arr = json_array();
    if (!arr || !s)
        return arr;
    int64_t now = lmq_clock_mono_ns();
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->n; i++) {
        lmq_worker_info_t in;
        fill_info(&s->w[i], now, &in);
        lmq_restart_t restart = s->w[i].restart;
        json_t *last = json_null();
        if (in.has_exited && in.last_exit_signal) {
            const char *abbrev = sigabbrev_np(in.last_exit_signal);
            char sig[32];
            if (abbrev)
                snprintf(sig, sizeof sig, "SIG%s", abbrev);
            else
                snprintf(sig, sizeof sig, "%d", in.last_exit_signal);
            last = json_pack("{s:s}", "signal", sig);
        } else if (in.has_exited) {
            last = json_pack("{s:i}", "code", in.last_exit_code);
        }
        json_t *j =
            json_pack("{s:s, s:s, s:o, s:i, s:f, s:s, s:o, s:o}", "name", in.name, "state",
                      lmq_worker_state_name(in.state), "pid", in.pid ? json_integer(in.pid) : json_null(), "restarts",
                      (int)in.restarts, "uptime_s", in.uptime_s, "restart", lmq_restart_name(restart), "last_exit",
                      last ? last : json_null(), "error", in.error[0] ? json_string(in.error) : json_null());
        if (!j || json_array_append_new(arr, j) != 0) {
            pthread_mutex_unlock(&s->mu);
            json_decref(arr);
            return NULL;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return arr;
}

char *lmq_supervisor_json(lmq_supervisor_t *s)
{
    json_t *j = lmq__supervisor_snapshot(s);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return text;
}
