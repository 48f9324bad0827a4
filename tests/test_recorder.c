/* labmq-recorder: what it writes is what the daemon sent, seq by seq; h5py
 * follows the file while it is written (SWMR); a forced gap is named exactly
 * in /gaps; a file size limit and an unwritable path are clear errors, and
 * the blocks written before a full disk stay readable; `labmq record` runs it.
 *
 * Each test starts a real labmqd (sim-daq) and the recorder as processes
 * (posix_spawn), and keeps a subscription of its own on the same stream as
 * the reference for what was sent. */
#include <check.h>
#include <errno.h>
#include <hdf5.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>
#include "harness.h"
#include "labmq/labmq.h"

#define RECORDER LMQ_BUILD_DIR "/tools/labmq-recorder"
#define CLI LMQ_BUILD_DIR "/tools/labmq"
#define TOPIC "daq1/wave"
/* 20 blocks/s of 500 doubles. */
#define SLOW_DAQ                                                                                                     \
    "devices:\n  - name: daq1\n    driver: sim-daq\n    options: {sample_rate: 10000, block_size: 500}\n"
/* 100 blocks/s of 1000 doubles: 0.8 MB/s, to reach a file size limit soon. */
#define FAST_DAQ                                                                                                     \
    "devices:\n  - name: daq1\n    driver: sim-daq\n    options: {sample_rate: 100000, block_size: 1000}\n"

static void nap_ms(int ms)
{
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* ---- the reference: blocks seen by our own subscription ---- */

typedef struct ref_block {
    uint64_t seq, epoch, lost_before;
    int64_t t_ns;
    size_t size;
    void *data;
} ref_block_t;

typedef struct ref {
    void *zctx;
    lmq_sub_t *sub;
    ref_block_t *b;
    size_t n, cap;
} ref_t;

static void ref_start(ref_t *r, const th_daemon_t *d)
{
    memset(r, 0, sizeof *r);
    r->zctx = zmq_ctx_new();
    r->sub = lmq_sub_new(r->zctx, d->data, TOPIC);
    ck_assert_ptr_nonnull(r->sub);
}

/* Takes what has arrived; waits up to timeout_ms for the first. */
static void ref_take(ref_t *r, int timeout_ms)
{
    lmq_frame_t *f = NULL;
    while (lmq_sub_recv(r->sub, &f, timeout_ms) == 0) {
        if (r->n == r->cap) {
            r->cap = r->cap ? 2 * r->cap : 256;
            r->b = realloc(r->b, r->cap * sizeof *r->b);
            ck_assert_ptr_nonnull(r->b);
        }
        ref_block_t *b = &r->b[r->n++];
        b->seq = lmq_frame_seq(f);
        b->epoch = lmq_frame_epoch(f);
        b->lost_before = lmq_frame_lost_before(f);
        b->t_ns = lmq_frame_time_ns(f);
        b->size = lmq_frame_size(f);
        b->data = malloc(b->size);
        ck_assert_ptr_nonnull(b->data);
        memcpy(b->data, lmq_frame_data(f), b->size);
        lmq_frame_destroy(&f);
        timeout_ms = 0;
    }
}

/* Receives until the block with `seq` is in (the recorder may have stopped
 * after we last looked). */
static void ref_until(ref_t *r, uint64_t seq)
{
    double deadline = th_now_ms() + 10000;
    while ((r->n == 0 || r->b[r->n - 1].seq < seq) && th_now_ms() < deadline)
        ref_take(r, 200);
    ck_assert_msg(r->n > 0 && r->b[r->n - 1].seq >= seq, "our subscription never saw seq %llu",
                  (unsigned long long)seq);
}

static const ref_block_t *ref_find(const ref_t *r, uint64_t seq)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->b[i].seq == seq)
            return &r->b[i];
    return NULL;
}

static void ref_end(ref_t *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->b[i].data);
    free(r->b);
    lmq_sub_destroy(&r->sub);
    zmq_ctx_term(r->zctx);
}

/* ---- running the recorder ---- */

typedef struct run {
    char file[256], out[256], err[256];
    pid_t pid;
} run_t;

static void run_start(run_t *rn, const th_daemon_t *d, const char *name, const char *duration)
{
    snprintf(rn->file, sizeof rn->file, "%s/%s.h5", d->dir, name);
    snprintf(rn->out, sizeof rn->out, "%s/%s.out", d->dir, name);
    snprintf(rn->err, sizeof rn->err, "%s/%s.err", d->dir, name);
    char ctl[256];
    snprintf(ctl, sizeof ctl, "%s", d->control);
    char *argv[] = {RECORDER, "--control", ctl, "-o", rn->file, TOPIC, duration ? "--duration" : NULL,
                    (char *)duration, NULL};
    rn->pid = th_spawn_to_files(argv, rn->out, rn->err);
}

/* Waits for the recorder; returns its exit code (-1: killed by a signal). */
static int run_wait(run_t *rn, int timeout_ms, char **err_text)
{
    int st = 0;
    ck_assert_msg(th_wait_exit(rn->pid, timeout_ms, &st) == 0, "the recorder did not exit within %d ms", timeout_ms);
    *err_text = th_slurp(rn->err);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Whether pid has not exited yet; it is left to be reaped. */
static bool running(pid_t pid)
{
    siginfo_t info = {0};
    ck_assert_int_eq(waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT), 0);
    return info.si_pid == 0;
}

/* Waits until the recorder says it records (subscribed, file created). */
static void run_await_recording(run_t *rn)
{
    double deadline = th_now_ms() + 20000;
    for (;;) {
        char *text = th_read_file(rn->err);
        bool ok = text && strstr(text, "recording 1 stream");
        free(text);
        if (ok)
            return;
        ck_assert_msg(running(rn->pid), "the recorder exited early: %s", th_slurp(rn->err));
        ck_assert_msg(th_now_ms() < deadline, "the recorder did not start recording within 20 s");
        nap_ms(20);
    }
}

/* ---- reading the file back with the HDF5 C API ---- */

typedef struct rec {
    size_t n;
    uint64_t *seq, *epoch;
    int64_t *t_ns;
    double *data; /* n x block */
    size_t block; /* elements per block */
    size_t ngaps, nrestarts;
} rec_t;

static size_t ds_rows(hid_t file, const char *path, hsize_t *dims, int *rank)
{
    hid_t ds = H5Dopen2(file, path, H5P_DEFAULT);
    ck_assert_msg(ds >= 0, "no dataset %s", path);
    hid_t sp = H5Dget_space(ds);
    *rank = H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sclose(sp);
    H5Dclose(ds);
    return (size_t)dims[0];
}

static void ds_read(hid_t file, const char *path, hid_t memtype, void *buf)
{
    hid_t ds = H5Dopen2(file, path, H5P_DEFAULT);
    ck_assert_int_ge(ds, 0);
    ck_assert_int_ge(H5Dread(ds, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf), 0);
    H5Dclose(ds);
}

static char *attr_string(hid_t obj, const char *name)
{
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    ck_assert_msg(a >= 0, "no attribute %s", name);
    hid_t t = H5Aget_type(a);
    ck_assert(H5Tis_variable_str(t) > 0);
    char *s = NULL;
    ck_assert_int_ge(H5Aread(a, t, &s), 0);
    char *copy = strdup(s);
    H5free_memory(s);
    H5Tclose(t);
    H5Aclose(a);
    return copy;
}

static void rec_read(rec_t *r, const char *path)
{
    memset(r, 0, sizeof *r);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_msg(f >= 0, "HDF5 cannot open %s", path);
    hsize_t dims[8];
    int rank;
    const char *g = "/streams/" TOPIC;
    r->n = ds_rows(f, "/streams/" TOPIC "/seq", dims, &rank);
    ck_assert_int_eq(rank, 1);
    ck_assert_uint_eq(ds_rows(f, "/streams/" TOPIC "/t_ns", dims, &rank), r->n);
    ck_assert_uint_eq(ds_rows(f, "/streams/" TOPIC "/epoch", dims, &rank), r->n);
    ck_assert_uint_eq(ds_rows(f, "/streams/" TOPIC "/data", dims, &rank), r->n);
    ck_assert_int_eq(rank, 2);
    r->block = (size_t)dims[1];
    r->seq = malloc((r->n + 1) * sizeof *r->seq);
    r->epoch = malloc((r->n + 1) * sizeof *r->epoch);
    r->t_ns = malloc((r->n + 1) * sizeof *r->t_ns);
    r->data = malloc((r->n * r->block + 1) * sizeof *r->data);
    ck_assert(r->seq && r->epoch && r->t_ns && r->data);
    if (r->n) {
        ds_read(f, "/streams/" TOPIC "/seq", H5T_NATIVE_UINT64, r->seq);
        ds_read(f, "/streams/" TOPIC "/epoch", H5T_NATIVE_UINT64, r->epoch);
        ds_read(f, "/streams/" TOPIC "/t_ns", H5T_NATIVE_INT64, r->t_ns);
        ds_read(f, "/streams/" TOPIC "/data", H5T_NATIVE_DOUBLE, r->data);
    }
    r->ngaps = ds_rows(f, "/gaps", dims, &rank);
    r->nrestarts = ds_rows(f, "/restarts", dims, &rank);
    hid_t grp = H5Gopen2(f, g, H5P_DEFAULT);
    ck_assert_int_ge(grp, 0);
    char *s = attr_string(grp, "dtype");
    ck_assert_str_eq(s, "<f8");
    free(s);
    s = attr_string(grp, "units");
    ck_assert_str_eq(s, "V");
    free(s);
    s = attr_string(grp, "topic");
    ck_assert_str_eq(s, TOPIC);
    free(s);
    H5Gclose(grp);
    H5Fclose(f);
}

static void rec_free(rec_t *r)
{
    free(r->seq);
    free(r->epoch);
    free(r->t_ns);
    free(r->data);
}

/* Every row of the file is the block our subscription got with that seq:
 * same epoch, t_ns and bytes. */
static void rec_matches_ref(const rec_t *r, ref_t *ref)
{
    ck_assert_uint_gt(r->n, 0);
    ref_until(ref, r->seq[r->n - 1]);
    for (size_t i = 0; i < r->n; i++) {
        const ref_block_t *b = ref_find(ref, r->seq[i]);
        ck_assert_msg(b != NULL, "row %zu: seq %llu never reached our subscription", i, (unsigned long long)r->seq[i]);
        ck_assert_uint_eq(r->epoch[i], b->epoch);
        ck_assert_int_eq(r->t_ns[i], b->t_ns);
        ck_assert_uint_eq(b->size, r->block * sizeof(double));
        ck_assert_msg(memcmp(r->data + i * r->block, b->data, b->size) == 0, "row %zu (seq %llu): data differ", i,
                      (unsigned long long)r->seq[i]);
    }
}

/* ---- tests ---- */

START_TEST(records_every_block_as_sent)
{
    th_daemon_t d;
    th_daemon_start(&d, SLOW_DAQ);
    ref_t ref;
    ref_start(&ref, &d);
    ref_take(&ref, 5000); /* subscribed before the recorder starts */
    ck_assert_uint_gt(ref.n, 0);
    run_t rn;
    run_start(&rn, &d, "rec", "3");
    double t0 = th_now_ms();
    while (th_now_ms() - t0 < 2500) /* keep our subscription drained meanwhile */
        ref_take(&ref, 100);
    char *err;
    int code = run_wait(&rn, 30000, &err);
    ck_assert_msg(code == 0, "exit %d: %s", code, err);
    ck_assert_msg(strstr(err, "lost 0, restarts 0; stopped after --duration"), "%s", err);
    free(err);

    rec_t r;
    rec_read(&r, rn.file);
    /* 20 blocks/s for 3 s; a slow, shared machine may start late */
    ck_assert_msg(r.n >= 20, "only %zu blocks recorded in 3 s", r.n);
    ck_assert_uint_eq(r.block, 500);
    for (size_t i = 1; i < r.n; i++)
        ck_assert_uint_eq(r.seq[i], r.seq[i - 1] + 1);
    ck_assert_uint_eq(r.ngaps, 0);
    ck_assert_uint_eq(r.nrestarts, 0);
    rec_matches_ref(&r, &ref);
    ck_assert_uint_eq(lmq_sub_lost(ref.sub), 0);
    rec_free(&r);
    ref_end(&ref);
    th_daemon_finish(&d);
}
END_TEST

/* h5py follows the file while it is written: SWMR. The script must see the
 * datasets grow between its refreshes, and the recorder must still be
 * running when it has; then SIGINT ends the recording cleanly. */
static const char *const swmr_script =
    "import sys, time, h5py\n"
    "path = sys.argv[1]\n"
    "f = h5py.File(path, 'r', libver='latest', swmr=True)\n"
    "g = f['/streams/daq1/wave']\n"
    "seq, data, t = g['seq'], g['data'], g['t_ns']\n"
    "assert g.attrs['dtype'] == '<f8' and g.attrs['units'] == 'V', dict(g.attrs)\n"
    "sizes = []\n"
    "for i in range(4):\n"
    "    for d in (seq, data, t):\n"
    "        d.refresh()\n"
    "    n = seq.shape[0]\n"
    "    assert data.shape[1:] == (500,), data.shape\n"
    "    if n:\n"
    "        s = seq[:n]\n"
    "        assert (s[1:] - s[:-1] == 1).all(), 'seq not contiguous'\n"
    "    sizes.append(n)\n"
    "    time.sleep(0.8)\n"
    "print('sizes', sizes)\n"
    "assert sizes[-1] > sizes[0] and len(set(sizes)) >= 3, 'no growth: %s' % sizes\n";

START_TEST(h5py_follows_the_file_while_written)
{
    th_daemon_t d;
    th_daemon_start(&d, SLOW_DAQ);
    run_t rn;
    run_start(&rn, &d, "live", NULL);
    run_await_recording(&rn);
    nap_ms(300);
    char out[256];
    snprintf(out, sizeof out, "%s/py.out", d.dir);
    char *argv[] = {"/usr/bin/python3", "-c", (char *)swmr_script, rn.file, NULL};
    pid_t py = th_spawn_to_files(argv, out, NULL);
    int st = 0;
    ck_assert_msg(th_wait_exit(py, 30000, &st) == 0, "h5py did not finish within 30 s");
    char *text = th_slurp(out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "h5py reading the live file:\n%s", text);
    ck_assert_ptr_nonnull(strstr(text, "sizes"));
    free(text);
    ck_assert_msg(running(rn.pid), "the recorder ended before h5py had read");
    kill(rn.pid, SIGINT);
    char *err;
    int code = run_wait(&rn, 20000, &err);
    ck_assert_msg(code == 0, "exit %d: %s", code, err);
    ck_assert_msg(strstr(err, "stopped by SIGINT"), "%s", err);
    free(err);
    rec_t r;
    rec_read(&r, rn.file);
    ck_assert_uint_gt(r.n, 20);
    rec_free(&r);
    th_daemon_finish(&d);
}
END_TEST

static void set_fault(lmq_proxy_t *p, const char *fault)
{
    lmq_value_t v = {0};
    lmq_value_set_string(&v, fault);
    int rc = lmq_proxy_set(p, "fault", &v);
    ck_assert_msg(rc == 0, "set fault %s: %s", fault, lmq_proxy_last_error(p));
    lmq_value_clear(&v);
}

START_TEST(forced_gap_is_named_exactly)
{
    th_daemon_t d;
    th_daemon_start(&d, SLOW_DAQ);
    ref_t ref;
    ref_start(&ref, &d);
    ref_take(&ref, 5000);
    run_t rn;
    run_start(&rn, &d, "gap", NULL);
    run_await_recording(&rn);
    double t0 = th_now_ms();
    while (th_now_ms() - t0 < 800)
        ref_take(&ref, 100);
    /* Hold daq1's device thread for 1.5 s (30 blocks' time): the daemon
     * spends the lost blocks' seq numbers. */
    lmq_proxy_t *p = lmq_proxy_new(ref.zctx, d.control, "daq1");
    lmq_proxy_set_timeout(p, 5000);
    set_fault(p, "hang:1500");
    lmq_proxy_set_timeout(p, 300);
    double v;
    ck_assert_int_eq(lmq_proxy_get_double(p, "amplitude", &v), LMQ_ETIMEOUT);
    lmq_proxy_set_timeout(p, 5000);
    set_fault(p, "none"); /* answered once the hang is over */
    lmq_proxy_destroy(&p);
    t0 = th_now_ms();
    while (th_now_ms() - t0 < 800)
        ref_take(&ref, 100);
    kill(rn.pid, SIGTERM);
    char *err;
    int code = run_wait(&rn, 20000, &err);
    ck_assert_msg(code == 0, "exit %d: %s", code, err);
    ck_assert_msg(strstr(err, "stopped by SIGTERM"), "%s", err);
    free(err);

    rec_t r;
    rec_read(&r, rn.file);
    rec_matches_ref(&r, &ref);
    ck_assert_uint_eq(r.nrestarts, 0);
    /* The gaps our subscription saw inside the recorded range. */
    typedef struct gap {
        char topic[128];
        uint64_t epoch, first_seq, count;
        int64_t t_ns;
    } gap_t;
    gap_t want[16];
    size_t nwant = 0;
    uint64_t lost = 0;
    for (size_t i = 0; i < ref.n; i++) {
        const ref_block_t *b = &ref.b[i];
        if (b->lost_before && b->seq > r.seq[0] && b->seq <= r.seq[r.n - 1]) {
            ck_assert_uint_lt(nwant, 16);
            want[nwant++] = (gap_t){TOPIC, b->epoch, b->seq - b->lost_before, b->lost_before, b->t_ns};
            lost += b->lost_before;
        }
    }
    ck_assert_msg(nwant >= 1 && lost >= 10, "the hang lost %llu blocks in %zu gaps", (unsigned long long)lost, nwant);
    ck_assert_uint_eq(r.ngaps, nwant);
    /* Rows plus gaps cover the recorded range exactly. */
    ck_assert_uint_eq(r.n + lost, r.seq[r.n - 1] - r.seq[0] + 1);

    hid_t f = H5Fopen(rn.file, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t str = H5Tcopy(H5T_C_S1);
    H5Tset_size(str, sizeof want[0].topic);
    hid_t t = H5Tcreate(H5T_COMPOUND, sizeof(gap_t));
    H5Tinsert(t, "topic", HOFFSET(gap_t, topic), str);
    H5Tinsert(t, "epoch", HOFFSET(gap_t, epoch), H5T_NATIVE_UINT64);
    H5Tinsert(t, "first_seq", HOFFSET(gap_t, first_seq), H5T_NATIVE_UINT64);
    H5Tinsert(t, "count", HOFFSET(gap_t, count), H5T_NATIVE_UINT64);
    H5Tinsert(t, "t_ns", HOFFSET(gap_t, t_ns), H5T_NATIVE_INT64);
    gap_t got[16];
    ds_read(f, "/gaps", t, got);
    for (size_t i = 0; i < nwant; i++) {
        ck_assert_str_eq(got[i].topic, TOPIC);
        ck_assert_uint_eq(got[i].epoch, want[i].epoch);
        ck_assert_uint_eq(got[i].first_seq, want[i].first_seq);
        ck_assert_uint_eq(got[i].count, want[i].count);
        ck_assert_int_eq(got[i].t_ns, want[i].t_ns);
        /* and those seqs are indeed absent from the rows */
        for (size_t k = 0; k < r.n; k++)
            ck_assert(r.seq[k] < got[i].first_seq || r.seq[k] >= got[i].first_seq + got[i].count);
    }
    H5Tclose(t);
    H5Tclose(str);
    H5Fclose(f);
    rec_free(&r);
    ref_end(&ref);
    th_daemon_finish(&d);
}
END_TEST

/* A file size limit (RLIMIT_FSIZE, as a full disk would) stops the
 * recording with the file's name and EFBIG; the file still opens and holds,
 * exactly as sent, the blocks written before. */
START_TEST(full_disk_keeps_what_was_written)
{
    th_daemon_t d;
    th_daemon_start(&d, FAST_DAQ);
    ref_t ref;
    ref_start(&ref, &d);
    ref_take(&ref, 5000);
    struct rlimit old, lim;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 4u << 20; /* about 4 s of this stream */
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    run_t rn;
    run_start(&rn, &d, "full", "60");
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    double t0 = th_now_ms();
    while (running(rn.pid) && th_now_ms() - t0 < 40000)
        ref_take(&ref, 100);
    char *err;
    int code = run_wait(&rn, 1000, &err);
    ck_assert_msg(code == 1, "exit %d: %s", code, err);
    ck_assert_msg(strstr(err, rn.file) && strstr(err, "File too large (EFBIG)"), "%s", err);
    ck_assert_msg(strstr(err, "stay readable"), "%s", err);
    free(err);
    struct stat sb;
    ck_assert_int_eq(stat(rn.file, &sb), 0);
    ck_assert_int_le(sb.st_size, 4 << 20);
    rec_t r;
    rec_read(&r, rn.file);
    ck_assert_msg(r.n >= 50, "only %zu blocks in the file", r.n);
    rec_matches_ref(&r, &ref);
    ck_assert_uint_eq(r.ngaps, 0);
    rec_free(&r);
    ref_end(&ref);
    th_daemon_finish(&d);
}
END_TEST

/* A daemon restart is a row in /restarts (old epoch and last seq, new epoch
 * and first seq) and no loss; after a restart with another block shape the
 * recorder stops with a clear error and the file keeps what came before. */
START_TEST(daemon_restart_and_shape_change)
{
    th_daemon_t d;
    th_daemon_start(&d, SLOW_DAQ);
    run_t rn;
    run_start(&rn, &d, "restart", NULL);
    run_await_recording(&rn);
    nap_ms(1000);
    ck_assert_int_eq(th_daemon_stop(&d, SIGTERM), 0);
    th_daemon_restart(&d);
    nap_ms(1500);
    ck_assert_int_eq(th_daemon_stop(&d, SIGTERM), 0);
    th_write_file(d.config,
                  "devices:\n  - name: daq1\n    driver: sim-daq\n    options: {sample_rate: 10000, block_size: 250}\n");
    th_daemon_restart(&d);
    char *err;
    int code = run_wait(&rn, 20000, &err);
    ck_assert_msg(code == 1, "exit %d: %s", code, err);
    ck_assert_msg(strstr(err, "of daq1/wave is <f8 [250], but the recording of that stream holds <f8 [500]"), "%s",
                  err);
    ck_assert_msg(strstr(err, "lost 0, restarts 1"), "%s", err);
    free(err);

    rec_t r;
    rec_read(&r, rn.file);
    ck_assert_uint_eq(r.ngaps, 0);
    ck_assert_uint_eq(r.nrestarts, 1);
    size_t k = 1; /* the first row of the new epoch */
    while (k < r.n && r.epoch[k] == r.epoch[0])
        k++;
    ck_assert_msg(k > 5 && r.n - k > 5, "%zu rows before the restart, %zu after", k, r.n - k);
    for (size_t i = 1; i < r.n; i++)
        if (i != k) {
            ck_assert_uint_eq(r.epoch[i], r.epoch[i - 1]);
            ck_assert_uint_eq(r.seq[i], r.seq[i - 1] + 1);
        }
    typedef struct restart {
        uint64_t prev_epoch, last_seq, epoch, first_seq;
    } restart_t;
    hid_t f = H5Fopen(rn.file, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t t = H5Tcreate(H5T_COMPOUND, sizeof(restart_t));
    H5Tinsert(t, "prev_epoch", HOFFSET(restart_t, prev_epoch), H5T_NATIVE_UINT64);
    H5Tinsert(t, "last_seq", HOFFSET(restart_t, last_seq), H5T_NATIVE_UINT64);
    H5Tinsert(t, "epoch", HOFFSET(restart_t, epoch), H5T_NATIVE_UINT64);
    H5Tinsert(t, "first_seq", HOFFSET(restart_t, first_seq), H5T_NATIVE_UINT64);
    restart_t got;
    ds_read(f, "/restarts", t, &got);
    ck_assert_uint_eq(got.prev_epoch, r.epoch[k - 1]);
    ck_assert_uint_eq(got.last_seq, r.seq[k - 1]);
    ck_assert_uint_eq(got.epoch, r.epoch[k]);
    ck_assert_uint_eq(got.first_seq, r.seq[k]);
    ck_assert_uint_ne(got.epoch, got.prev_epoch);
    H5Tclose(t);
    H5Fclose(f);
    rec_free(&r);
    th_daemon_finish(&d);
}
END_TEST

static char *run_failing(const th_daemon_t *d, char *const argv[], int want_code)
{
    char out[256], errp[256];
    snprintf(out, sizeof out, "%s/fail.out", d->dir);
    snprintf(errp, sizeof errp, "%s/fail.err", d->dir);
    pid_t pid = th_spawn_to_files(argv, out, errp);
    int st = 0;
    ck_assert_int_eq(th_wait_exit(pid, 20000, &st), 0);
    char *err = th_slurp(errp);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == want_code, "%s: want exit %d: %s", argv[0], want_code, err);
    return err;
}

#define ASSERT_SAYS(text, what) ck_assert_msg(strstr((text), (what)), "expected '%s' in: %s", (what), (text))

START_TEST(bad_paths_and_names_are_clear_errors)
{
    th_daemon_t d;
    th_daemon_start(&d, SLOW_DAQ);
    char ctl[256], notdir[256], exists[256];
    snprintf(ctl, sizeof ctl, "%s", d.control);
    snprintf(notdir, sizeof notdir, "%s/lab.yaml/x.h5", d.dir); /* below a regular file */
    snprintf(exists, sizeof exists, "%s/lab.yaml", d.dir);

    char *a1[] = {RECORDER, "--control", ctl, "-o", "/nonexistent-dir/x.h5", TOPIC, NULL};
    char *err = run_failing(&d, a1, 1);
    ASSERT_SAYS(err, "/nonexistent-dir/x.h5: cannot create: No such file or directory");
    free(err);
    char *a2[] = {RECORDER, "--control", ctl, "-o", notdir, TOPIC, NULL};
    err = run_failing(&d, a2, 1);
    ASSERT_SAYS(err, notdir);
    ASSERT_SAYS(err, "Not a directory");
    free(err);
    char *a3[] = {RECORDER, "--control", ctl, "-o", exists, TOPIC, NULL};
    err = run_failing(&d, a3, 1);
    ASSERT_SAYS(err, "file exists (give --overwrite to replace it)");
    free(err);
    char *text = th_slurp(exists); /* and it was left alone */
    ck_assert_str_eq(text, SLOW_DAQ);
    free(text);

    char file[256];
    snprintf(file, sizeof file, "%s/x.h5", d.dir);
    char *a4[] = {RECORDER, "--control", ctl, "-o", file, "daq1/wav", NULL};
    err = run_failing(&d, a4, 1);
    ASSERT_SAYS(err, "device daq1 has no stream 'wav' (streams: wave)");
    free(err);
    char *a5[] = {RECORDER, "--control", ctl, "-o", file, "daq9/wave", NULL};
    err = run_failing(&d, a5, 1);
    ASSERT_SAYS(err, "no device 'daq9'");
    free(err);
    ck_assert_int_ne(access(file, F_OK), 0); /* no file for a recording that never began */
    char nobody[300];
    snprintf(nobody, sizeof nobody, "ipc://%s/nobody", d.dir);
    char *a6[] = {RECORDER, "--control", nobody, "--timeout", "300", "-o", file, TOPIC, NULL};
    err = run_failing(&d, a6, 1);
    ASSERT_SAYS(err, "no daemon answers at");
    free(err);
    char *a7[] = {RECORDER, "--control", ctl, TOPIC, NULL};
    err = run_failing(&d, a7, 2);
    ASSERT_SAYS(err, "no output file given");
    free(err);
    char *a8[] = {RECORDER, "--control", ctl, "-o", file, "daq1wave", NULL};
    err = run_failing(&d, a8, 2);
    ASSERT_SAYS(err, "'daq1wave' is not a stream");
    free(err);
    th_daemon_finish(&d);
}
END_TEST

/* `labmq record` finds the recorder next to itself, passes the options and
 * returns its exit status; --stream works as a worker would be given it. */
START_TEST(cli_record_runs_the_recorder)
{
    th_daemon_t d;
    th_daemon_start(&d, SLOW_DAQ);
    char ctl[256], file[256], out[256], errp[256];
    snprintf(ctl, sizeof ctl, "%s", d.control);
    snprintf(file, sizeof file, "%s/cli.h5", d.dir);
    snprintf(out, sizeof out, "%s/cli.out", d.dir);
    snprintf(errp, sizeof errp, "%s/cli.err", d.dir);
    char *argv[] = {CLI, "-e", ctl, "record", TOPIC, "-o", file, "--duration", "1.5", NULL};
    pid_t pid = th_spawn_to_files(argv, out, errp);
    int st = 0;
    ck_assert_int_eq(th_wait_exit(pid, 30000, &st), 0);
    char *err = th_slurp(errp);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", err);
    ASSERT_SAYS(err, "stopped after --duration");
    free(err);
    rec_t r;
    rec_read(&r, file);
    ck_assert_uint_gt(r.n, 5);
    rec_free(&r);
    /* the same file again: the recorder's refusal is the CLI's exit 1 */
    pid = th_spawn_to_files(argv, out, errp);
    ck_assert_int_eq(th_wait_exit(pid, 30000, &st), 0);
    err = th_slurp(errp);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "%s", err);
    ASSERT_SAYS(err, "file exists");
    free(err);
    /* the worker form: --stream, --name, --overwrite */
    char *wargv[] = {RECORDER, "--control", ctl, "--name", "rec1", "--stream", TOPIC, "--overwrite", "-o", file,
                     "--duration", "1", NULL};
    pid = th_spawn_to_files(wargv, out, errp);
    ck_assert_int_eq(th_wait_exit(pid, 30000, &st), 0);
    err = th_slurp(errp);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", err);
    ASSERT_SAYS(err, "rec1: ");
    free(err);
    rec_read(&r, file);
    ck_assert_uint_gt(r.n, 5);
    rec_free(&r);
    th_daemon_finish(&d);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("recorder");
    TCase *tc = tcase_create("recorder");
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, records_every_block_as_sent);
    tcase_add_test(tc, h5py_follows_the_file_while_written);
    tcase_add_test(tc, forced_gap_is_named_exactly);
    tcase_add_test(tc, full_disk_keeps_what_was_written);
    tcase_add_test(tc, daemon_restart_and_shape_change);
    tcase_add_test(tc, bad_paths_and_names_are_clear_errors);
    tcase_add_test(tc, cli_record_runs_the_recorder);
    suite_add_tcase(s, tc);
    return th_run_suite(s);
}
