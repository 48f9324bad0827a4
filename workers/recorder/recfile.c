/* labmq-recorder — the HDF5 file of a recording: per-stream groups of
 * chunked, growable datasets, the /gaps and /restarts tables, SWMR writing,
 * and error text that names the file and the system's reason. */
#include "recfile.h"
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FORMAT_NAME "labmq-recording 1"
/* Target bytes per chunk of `data`: large enough for efficient I/O, small
 * enough that a slow stream's partial chunk is cheap to rewrite at each flush. */
#define CHUNK_TARGET_BYTES (1u << 20)
#define MAX_ROWS_PER_CHUNK 65536
#define CHUNK_SECONDS 1.0
/* Rows per chunk of the 8-byte index datasets (t_ns, seq, epoch). */
#define INDEX_CHUNK_ROWS 4096
#define TABLE_CHUNK_ROWS 256
/* Room reserved beyond what the next write needs, so that a steady stream
 * does not ask the file system at every write; and what HDF5's own metadata
 * may need on top of the data at a write or a flush. */
#define RESERVE_SLACK (8u << 20)
#define METADATA_ROOM (1u << 20)

typedef struct gap_row {
    char topic[REC_TOPIC_MAX + 1];
    uint64_t epoch, first_seq, count;
    int64_t t_ns; /* of the block after the gap */
} gap_row_t;

typedef struct restart_row {
    char topic[REC_TOPIC_MAX + 1];
    uint64_t prev_epoch, last_seq; /* the last block before the restart */
    uint64_t epoch, first_seq;     /* the first block after it */
    int64_t t_ns;                  /* of the first block after it */
} restart_row_t;

typedef struct rec_stream {
    char topic[REC_TOPIC_MAX + 1];
    lmq_dtype_t dtype;
    unsigned ndim;
    size_t shape[LMQ_MAX_DIMS];
    size_t block_bytes;
    hid_t ftype; /* little-endian file type, also the memory type: bytes go in unconverted */
    hid_t group, data, t_ns, seq, epoch;
    uint64_t rows; /* rows in the file */
    /* blocks gathered for the next write */
    size_t cap, nbuf;
    unsigned char *buf;
    int64_t *buf_t;
    uint64_t *buf_seq, *buf_epoch;
    bool have_last;
    uint64_t last_seq, last_epoch;
    uint64_t blocks, lost, restarts;
} rec_stream_t;

struct rec_file {
    char *path;
    int fd;         /* the file driver's descriptor (borrowed), for the reservation */
    bool reserving; /* false where the file system cannot preallocate */
    hid_t file, gaps, restarts, gap_type, restart_type;
    uint64_t gap_rows, restart_rows;
    gap_row_t *pend_gaps;
    size_t npend_gaps, cap_gaps;
    restart_row_t *pend_restarts;
    size_t npend_restarts, cap_restarts;
    rec_stream_t *streams;
    size_t nstreams;
    bool failed;
    char err[512];
};

static void set_err(char *err, size_t size, const char *fmt, ...) LMQ_PRINTF(3, 4);
static void set_err(char *err, size_t size, const char *fmt, ...)
{
    if (!err || !size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, size, fmt, ap);
    va_end(ap);
}

/* ---- the reason behind an HDF5 failure ---- */

typedef struct h5_reason {
    int errnum;          /* from the file driver's "errno = N", 0 when none */
    char innermost[256]; /* the most specific description on the stack */
} h5_reason_t;

static herr_t walk_cb(unsigned n, const H5E_error2_t *e, void *data)
{
    h5_reason_t *r = data;
    if (n == 0 && e->desc)
        snprintf(r->innermost, sizeof r->innermost, "%s", e->desc);
    const char *p = e->desc ? strstr(e->desc, "errno = ") : NULL;
    if (p && r->errnum == 0)
        r->errnum = atoi(p + 8);
    return 0;
}

/* HDF5 keeps the system's errno only as text inside its error stack (the sec2
 * driver writes "errno = 28, error message = ..."): read it back from there,
 * so a full disk says "No space left on device", not "unable to flush". */
static void h5_fail(char *err, size_t size, const char *path, const char *what, int saved_errno)
{
    h5_reason_t r = {0};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_cb, &r);
    H5Eclear2(H5E_DEFAULT);
    int e = r.errnum ? r.errnum : saved_errno;
    if (e) {
        const char *name = strerrorname_np(e);
        set_err(err, size, "%s: cannot %s: %s (%s)", path, what, strerror(e), name ? name : "?");
    } else {
        set_err(err, size, "%s: cannot %s: %s", path, what, r.innermost[0] ? r.innermost : "HDF5 error");
    }
}

static void file_fail(rec_file_t *f, const char *what)
{
    int saved = errno;
    f->failed = true;
    h5_fail(f->err, sizeof f->err, f->path, what, saved);
}

/* ---- types and attributes ---- */

static hid_t file_type(lmq_dtype_t dt)
{
    switch (dt) {
    case LMQ_U8: return H5T_STD_U8LE;
    case LMQ_I8: return H5T_STD_I8LE;
    case LMQ_U16: return H5T_STD_U16LE;
    case LMQ_I16: return H5T_STD_I16LE;
    case LMQ_U32: return H5T_STD_U32LE;
    case LMQ_I32: return H5T_STD_I32LE;
    case LMQ_U64: return H5T_STD_U64LE;
    case LMQ_I64: return H5T_STD_I64LE;
    case LMQ_F32: return H5T_IEEE_F32LE;
    case LMQ_F64: return H5T_IEEE_F64LE;
    default: return H5I_INVALID_HID;
    }
}

static int attr_write(hid_t obj, const char *name, hid_t type, hid_t space, const void *value)
{
    hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0)
        return -1;
    herr_t rc = H5Awrite(a, type, value);
    H5Aclose(a);
    return rc < 0 ? -1 : 0;
}

/* A variable-length UTF-8 string: h5py reads it as str. */
static int attr_string(hid_t obj, const char *name, const char *value)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    hid_t s = H5Screate(H5S_SCALAR);
    int rc = -1;
    if (t >= 0 && s >= 0 && H5Tset_size(t, H5T_VARIABLE) >= 0 && H5Tset_cset(t, H5T_CSET_UTF8) >= 0)
        rc = attr_write(obj, name, t, s, &value);
    if (t >= 0)
        H5Tclose(t);
    if (s >= 0)
        H5Sclose(s);
    return rc;
}

static int attr_scalar(hid_t obj, const char *name, hid_t type, const void *value)
{
    hid_t s = H5Screate(H5S_SCALAR);
    int rc = s >= 0 ? attr_write(obj, name, type, s, value) : -1;
    if (s >= 0)
        H5Sclose(s);
    return rc;
}

static int attr_u64_array(hid_t obj, const char *name, const uint64_t *v, size_t n)
{
    hsize_t dims[1] = {n};
    hid_t s = H5Screate_simple(1, dims, NULL);
    int rc = s >= 0 ? attr_write(obj, name, H5T_STD_U64LE, s, v) : -1;
    if (s >= 0)
        H5Sclose(s);
    return rc;
}

static hid_t topic_type(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t >= 0 && (H5Tset_size(t, REC_TOPIC_MAX + 1) < 0 || H5Tset_strpad(t, H5T_STR_NULLTERM) < 0)) {
        H5Tclose(t);
        return H5I_INVALID_HID;
    }
    return t;
}

/* One column of a table row: its name, offset, and native type (0: the topic string). */
typedef struct column {
    const char *name;
    size_t offset;
    hid_t type;
} column_t;

/* The compound type of a table's rows; H5I_INVALID_HID on failure. */
static hid_t row_type(size_t size, const column_t *cols, size_t ncols)
{
    hid_t str = topic_type(), t = H5Tcreate(H5T_COMPOUND, size);
    bool ok = str >= 0 && t >= 0;
    for (size_t i = 0; ok && i < ncols; i++)
        ok = H5Tinsert(t, cols[i].name, cols[i].offset, cols[i].type ? cols[i].type : str) >= 0;
    if (str >= 0)
        H5Tclose(str);
    if (!ok && t >= 0) {
        H5Tclose(t);
        t = H5I_INVALID_HID;
    }
    return t;
}

static hid_t gap_type(void)
{
    const column_t cols[] = {
        {"topic", HOFFSET(gap_row_t, topic), 0},
        {"epoch", HOFFSET(gap_row_t, epoch), H5T_NATIVE_UINT64},
        {"first_seq", HOFFSET(gap_row_t, first_seq), H5T_NATIVE_UINT64},
        {"count", HOFFSET(gap_row_t, count), H5T_NATIVE_UINT64},
        {"t_ns", HOFFSET(gap_row_t, t_ns), H5T_NATIVE_INT64},
    };
    return row_type(sizeof(gap_row_t), cols, sizeof cols / sizeof cols[0]);
}

static hid_t restart_type(void)
{
    const column_t cols[] = {
        {"topic", HOFFSET(restart_row_t, topic), 0},
        {"prev_epoch", HOFFSET(restart_row_t, prev_epoch), H5T_NATIVE_UINT64},
        {"last_seq", HOFFSET(restart_row_t, last_seq), H5T_NATIVE_UINT64},
        {"epoch", HOFFSET(restart_row_t, epoch), H5T_NATIVE_UINT64},
        {"first_seq", HOFFSET(restart_row_t, first_seq), H5T_NATIVE_UINT64},
        {"t_ns", HOFFSET(restart_row_t, t_ns), H5T_NATIVE_INT64},
    };
    return row_type(sizeof(restart_row_t), cols, sizeof cols / sizeof cols[0]);
}

/* ---- datasets ---- */

/* An empty dataset growable along its first axis: [0, rest...]. cache_bytes
 * > 0 sizes its chunk cache, so a chunk filled over several writes is not
 * read back from the file each time. */
static hid_t create_growable(hid_t loc, const char *name, hid_t type, unsigned rank_rest, const size_t *rest,
                             hsize_t chunk_rows, size_t cache_bytes)
{
    hsize_t dims[LMQ_MAX_DIMS + 1] = {0}, maxdims[LMQ_MAX_DIMS + 1] = {H5S_UNLIMITED}, chunk[LMQ_MAX_DIMS + 1];
    chunk[0] = chunk_rows;
    for (unsigned i = 0; i < rank_rest; i++)
        dims[i + 1] = maxdims[i + 1] = chunk[i + 1] = rest[i];
    hid_t space = H5Screate_simple((int)rank_rest + 1, dims, maxdims);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    hid_t ds = H5I_INVALID_HID;
    if (space >= 0 && dcpl >= 0 && dapl >= 0 && H5Pset_chunk(dcpl, (int)rank_rest + 1, chunk) >= 0 &&
        (cache_bytes == 0 || H5Pset_chunk_cache(dapl, 521, cache_bytes, 1.0) >= 0))
        ds = H5Dcreate2(loc, name, type, space, H5P_DEFAULT, dcpl, dapl);
    if (space >= 0)
        H5Sclose(space);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (dapl >= 0)
        H5Pclose(dapl);
    return ds;
}

/* Appends nrows rows (each of shape rest) at row `at`. */
static int append_rows(hid_t ds, hid_t memtype, uint64_t at, size_t nrows, unsigned rank_rest, const size_t *rest,
                       const void *buf)
{
    hsize_t size[LMQ_MAX_DIMS + 1], start[LMQ_MAX_DIMS + 1] = {0}, count[LMQ_MAX_DIMS + 1];
    size[0] = at + nrows;
    start[0] = at;
    count[0] = nrows;
    for (unsigned i = 0; i < rank_rest; i++)
        size[i + 1] = count[i + 1] = rest[i];
    if (H5Dset_extent(ds, size) < 0)
        return -1;
    hid_t fspace = H5Dget_space(ds);
    hid_t mspace = H5Screate_simple((int)rank_rest + 1, count, NULL);
    int rc = -1;
    if (fspace >= 0 && mspace >= 0 && H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL) >= 0 &&
        H5Dwrite(ds, memtype, mspace, fspace, H5P_DEFAULT, buf) >= 0)
        rc = 0;
    if (fspace >= 0)
        H5Sclose(fspace);
    if (mspace >= 0)
        H5Sclose(mspace);
    return rc;
}

static void stream_close(rec_stream_t *s)
{
    hid_t *ids[] = {&s->data, &s->t_ns, &s->seq, &s->epoch};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if (*ids[i] >= 0)
            H5Dclose(*ids[i]);
    if (s->group >= 0)
        H5Gclose(s->group);
    s->data = s->t_ns = s->seq = s->epoch = s->group = H5I_INVALID_HID;
    free(s->buf);
    free(s->buf_t);
    free(s->buf_seq);
    free(s->buf_epoch);
    s->buf = NULL;
    s->buf_t = NULL;
    s->buf_seq = s->buf_epoch = NULL;
}

/* Creates /streams/DEV/STREAM and its datasets. Returns 0, or -1 with the
 * HDF5 error stack set, or -2 with err set. */
static int stream_create(rec_file_t *f, rec_stream_t *s, const rec_stream_info_t *in, char *err, size_t errsize)
{
    snprintf(s->topic, sizeof s->topic, "%s", in->topic);
    s->dtype = in->dtype;
    s->ndim = in->ndim;
    s->ftype = file_type(in->dtype);
    size_t elems = 1;
    for (unsigned i = 0; i < in->ndim; i++) {
        s->shape[i] = in->shape[i];
        elems *= in->shape[i];
    }
    s->block_bytes = elems * lmq_dtype_size(in->dtype);
    size_t rows = CHUNK_TARGET_BYTES / s->block_bytes;
    /* A slow stream's chunk would be rewritten at every flush for a long
     * time: there, a chunk holds about CHUNK_SECONDS of blocks. */
    if (in->rate_hz > 0 && in->rate_hz * CHUNK_SECONDS < (double)rows)
        rows = (size_t)(in->rate_hz * CHUNK_SECONDS + 0.5);
    rows = rows < 1 ? 1 : rows > MAX_ROWS_PER_CHUNK ? MAX_ROWS_PER_CHUNK : rows;
    s->cap = rows;
    s->buf = malloc(rows * s->block_bytes);
    s->buf_t = malloc(rows * sizeof *s->buf_t);
    s->buf_seq = malloc(rows * sizeof *s->buf_seq);
    s->buf_epoch = malloc(rows * sizeof *s->buf_epoch);
    if (!s->buf || !s->buf_t || !s->buf_seq || !s->buf_epoch) {
        set_err(err, errsize, "%s: out of memory for a chunk of %zu blocks of %s", f->path, rows, s->topic);
        return -2;
    }
    char path[sizeof s->topic + 16];
    snprintf(path, sizeof path, "/streams/%s", s->topic);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (lcpl < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0) {
        if (lcpl >= 0)
            H5Pclose(lcpl);
        return -1;
    }
    s->group = H5Gcreate2(f->file, path, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Pclose(lcpl);
    if (s->group < 0)
        return -1;
    /* Partial chunks are rewritten at every flush: keep two in the cache
     * (a one-block chunk is always written whole and needs none). */
    size_t cache = rows > 1 ? 2 * rows * s->block_bytes : 0;
    s->data = create_growable(s->group, "data", s->ftype, s->ndim, s->shape, rows, cache);
    s->t_ns = create_growable(s->group, "t_ns", H5T_STD_I64LE, 0, NULL, INDEX_CHUNK_ROWS, 0);
    s->seq = create_growable(s->group, "seq", H5T_STD_U64LE, 0, NULL, INDEX_CHUNK_ROWS, 0);
    s->epoch = create_growable(s->group, "epoch", H5T_STD_U64LE, 0, NULL, INDEX_CHUNK_ROWS, 0);
    if (s->data < 0 || s->t_ns < 0 || s->seq < 0 || s->epoch < 0)
        return -1;
    uint64_t shape64[LMQ_MAX_DIMS];
    for (unsigned i = 0; i < s->ndim; i++)
        shape64[i] = s->shape[i];
    const char *units = in->units ? in->units : "";
    if (attr_string(s->group, "topic", s->topic) < 0 || attr_string(s->group, "dtype", lmq_dtype_name(s->dtype)) < 0 ||
        attr_string(s->group, "units", units) < 0 || attr_u64_array(s->group, "block_shape", shape64, s->ndim) < 0 ||
        attr_scalar(s->group, "rate_hz", H5T_IEEE_F64LE, &in->rate_hz) < 0 || attr_string(s->data, "units", units) < 0)
        return -1;
    return 0;
}

static int check_info(const char *path, const rec_stream_info_t *in, char *err, size_t errsize)
{
    const char *slash = in->topic ? strchr(in->topic, '/') : NULL;
    if (!slash || slash == in->topic || !slash[1] || strchr(slash + 1, '/'))
        set_err(err, errsize, "%s: topic '%s' is not DEV/STREAM", path, in->topic ? in->topic : "");
    else if (strlen(in->topic) > REC_TOPIC_MAX)
        set_err(err, errsize, "%s: topic '%s' is longer than %d bytes", path, in->topic, REC_TOPIC_MAX);
    else if (file_type(in->dtype) < 0)
        set_err(err, errsize, "%s: stream %s has no valid dtype", path, in->topic);
    else if (in->ndim > LMQ_MAX_DIMS)
        set_err(err, errsize, "%s: stream %s has more than %d dimensions", path, in->topic, LMQ_MAX_DIMS);
    else {
        for (unsigned i = 0; i < in->ndim; i++)
            if (in->shape[i] == 0 || in->shape[i] > ((size_t)1 << 31)) {
                set_err(err, errsize, "%s: stream %s has an empty or oversized block shape", path, in->topic);
                return -1;
            }
        return 0;
    }
    return -1;
}

/* Opens the path ourselves first: the system's answer (ENOENT, EACCES,
 * EEXIST, ...) is clearer than HDF5's, and it tells whether we created it. */
static int claim_path(const char *path, bool overwrite, bool *created, char *err, size_t errsize)
{
    *created = false;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno == EEXIST && overwrite)
        fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
    else if (fd >= 0)
        *created = true;
    if (fd < 0) {
        if (errno == EEXIST)
            set_err(err, errsize, "%s: file exists (give --overwrite to replace it)", path);
        else
            set_err(err, errsize, "%s: cannot create: %s (%s)", path, strerror(errno), strerrorname_np(errno));
        return -1;
    }
    close(fd);
    return 0;
}

rec_file_t *rec_file_create(const char *path, bool overwrite, const rec_stream_info_t *streams, size_t nstreams,
                            char *err, size_t errsize)
{
    if (!path || !*path || !streams || nstreams == 0) {
        set_err(err, errsize, "no file or no streams to record");
        return NULL;
    }
    for (size_t i = 0; i < nstreams; i++) {
        if (check_info(path, &streams[i], err, errsize) != 0)
            return NULL;
        for (size_t j = 0; j < i; j++)
            if (strcmp(streams[i].topic, streams[j].topic) == 0) {
                set_err(err, errsize, "%s: stream %s given twice", path, streams[i].topic);
                return NULL;
            }
    }
    bool created;
    if (claim_path(path, overwrite, &created, err, errsize) != 0)
        return NULL;
    rec_file_t *f = calloc(1, sizeof *f);
    if (f) {
        f->file = f->gaps = f->restarts = f->gap_type = f->restart_type = H5I_INVALID_HID;
        f->fd = -1;
    }
    if (!f || !(f->path = strdup(path)) || !(f->streams = calloc(nstreams, sizeof *f->streams))) {
        set_err(err, errsize, "%s: out of memory", path);
        goto fail;
    }
    for (size_t i = 0; i < nstreams; i++) {
        rec_stream_t *s = &f->streams[i];
        s->group = s->data = s->t_ns = s->seq = s->epoch = H5I_INVALID_HID;
    }
    f->nstreams = nstreams;
    /* SWMR needs the latest file format. */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0 && H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST) >= 0)
        f->file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (fapl >= 0)
        H5Pclose(fapl);
    if (f->file < 0) {
        h5_fail(err, errsize, path, "create an HDF5 file", errno);
        goto fail;
    }
    /* The file driver opens without O_CLOEXEC; nothing of ours may leak into
     * a program started later. */
    int *fdp = NULL;
    if (H5Fget_vfd_handle(f->file, H5P_DEFAULT, (void **)&fdp) >= 0 && fdp) {
        f->fd = *fdp;
        f->reserving = true;
        fcntl(f->fd, F_SETFD, FD_CLOEXEC);
    }
    int64_t now = lmq_clock_real_ns();
    if (attr_string(f->file, "format", FORMAT_NAME) < 0 || attr_string(f->file, "labmq_version", LMQ_VERSION_STRING) < 0 ||
        attr_scalar(f->file, "created_ns", H5T_STD_I64LE, &now) < 0) {
        h5_fail(err, errsize, path, "write the file's attributes", 0);
        goto fail;
    }
    for (size_t i = 0; i < nstreams; i++) {
        int rc = stream_create(f, &f->streams[i], &streams[i], err, errsize);
        if (rc == -1)
            h5_fail(err, errsize, path, "create the datasets of a stream", 0);
        if (rc != 0)
            goto fail;
    }
    f->gap_type = gap_type();
    f->restart_type = restart_type();
    if (f->gap_type < 0 || f->restart_type < 0 ||
        (f->gaps = create_growable(f->file, "gaps", f->gap_type, 0, NULL, TABLE_CHUNK_ROWS, 0)) < 0 ||
        (f->restarts = create_growable(f->file, "restarts", f->restart_type, 0, NULL, TABLE_CHUNK_ROWS, 0)) < 0) {
        h5_fail(err, errsize, path, "create the gaps and restarts tables", 0);
        goto fail;
    }
    if (H5Fstart_swmr_write(f->file) < 0) {
        h5_fail(err, errsize, path, "start SWMR writing", 0);
        goto fail;
    }
    return f;
fail:
    rec_file_close(&f, NULL, 0);
    if (created)
        unlink(path);
    return NULL;
}

/* ---- writing ---- */

/* A write that fails halfway leaves an HDF5 file unreadable: the superblock
 * may already announce an end of file that the data never reached. So space
 * is claimed from the file system (fallocate) before HDF5 writes into it, and
 * a full disk or a file size limit is met here, before anything is written,
 * while the file is still whole. `bytes`: what the coming writes may add. */
static int reserve(rec_file_t *f, uint64_t bytes)
{
    hsize_t used = 0;
    struct stat st;
    if (!f->reserving || H5Fget_filesize(f->file, &used) < 0 || fstat(f->fd, &st) != 0)
        return 0;
    uint64_t need = used + bytes + METADATA_ROOM;
    if ((uint64_t)st.st_size >= need)
        return 0;
    /* With slack first; when that does not fit, exactly what is needed. */
    int rc = fallocate(f->fd, 0, st.st_size, (off_t)(need + RESERVE_SLACK - (uint64_t)st.st_size));
    if (rc != 0 && (errno == ENOSPC || errno == EFBIG || errno == EDQUOT))
        rc = fallocate(f->fd, 0, st.st_size, (off_t)(need - (uint64_t)st.st_size));
    if (rc == 0)
        return 0;
    if (errno == EOPNOTSUPP || errno == ENOSYS) {
        f->reserving = false; /* HDF5's own write errors are all that is left */
        return 0;
    }
    int e = errno;
    f->failed = true;
    set_err(f->err, sizeof f->err, "%s: cannot write: %s (%s)", f->path, strerror(e), strerrorname_np(e));
    return LMQ_EIO;
}

/* Gives back the reserved room HDF5 has not used (the file system would keep
 * it: the file driver truncates only to its own idea of the end). */
static void unreserve(rec_file_t *f)
{
    hsize_t used = 0;
    struct stat st;
    if (f->fd >= 0 && H5Fget_filesize(f->file, &used) >= 0 && fstat(f->fd, &st) == 0 && (uint64_t)st.st_size > used)
        if (ftruncate(f->fd, (off_t)used) != 0)
            return; /* the file keeps some zeros at its end; nothing is lost */
}

static uint64_t stream_need(const rec_stream_t *s)
{
    if (s->nbuf == 0)
        return 0;
    /* The chunks the rows touch are allocated whole: one more than they fill. */
    return (uint64_t)(s->nbuf + s->cap) * s->block_bytes + 3 * 2 * INDEX_CHUNK_ROWS * sizeof(uint64_t);
}

static int write_stream(rec_file_t *f, rec_stream_t *s)
{
    if (s->nbuf == 0)
        return 0;
    if (reserve(f, stream_need(s)) != 0)
        return LMQ_EIO;
    if (append_rows(s->data, s->ftype, s->rows, s->nbuf, s->ndim, s->shape, s->buf) < 0 ||
        append_rows(s->t_ns, H5T_NATIVE_INT64, s->rows, s->nbuf, 0, NULL, s->buf_t) < 0 ||
        append_rows(s->seq, H5T_NATIVE_UINT64, s->rows, s->nbuf, 0, NULL, s->buf_seq) < 0 ||
        append_rows(s->epoch, H5T_NATIVE_UINT64, s->rows, s->nbuf, 0, NULL, s->buf_epoch) < 0) {
        file_fail(f, "write");
        return LMQ_EIO;
    }
    s->rows += s->nbuf;
    s->nbuf = 0;
    return 0;
}

static int write_tables(rec_file_t *f)
{
    if (f->npend_gaps) {
        if (append_rows(f->gaps, f->gap_type, f->gap_rows, f->npend_gaps, 0, NULL, f->pend_gaps) < 0) {
            file_fail(f, "write the gaps table");
            return LMQ_EIO;
        }
        f->gap_rows += f->npend_gaps;
        f->npend_gaps = 0;
    }
    if (f->npend_restarts) {
        if (append_rows(f->restarts, f->restart_type, f->restart_rows, f->npend_restarts, 0, NULL,
                        f->pend_restarts) < 0) {
            file_fail(f, "write the restarts table");
            return LMQ_EIO;
        }
        f->restart_rows += f->npend_restarts;
        f->npend_restarts = 0;
    }
    return 0;
}

int rec_file_flush(rec_file_t *f)
{
    if (!f)
        return LMQ_EARG;
    if (f->failed)
        return LMQ_EIO;
    uint64_t need = (f->npend_gaps + TABLE_CHUNK_ROWS) * sizeof(gap_row_t) +
                    (f->npend_restarts + TABLE_CHUNK_ROWS) * sizeof(restart_row_t);
    for (size_t i = 0; i < f->nstreams; i++)
        need += stream_need(&f->streams[i]);
    if (reserve(f, need) != 0)
        return LMQ_EIO;
    for (size_t i = 0; i < f->nstreams; i++)
        if (write_stream(f, &f->streams[i]) != 0)
            return LMQ_EIO;
    if (write_tables(f) != 0)
        return LMQ_EIO;
    if (H5Fflush(f->file, H5F_SCOPE_LOCAL) < 0) {
        file_fail(f, "flush");
        return LMQ_EIO;
    }
    return 0;
}

/* Room for one more row: the array itself (possibly moved), or NULL with the
 * old one untouched. */
static void *grow(void *arr, size_t n, size_t *cap, size_t elem)
{
    if (n < *cap)
        return arr;
    size_t ncap = *cap ? 2 * *cap : 16;
    void *p = realloc(arr, ncap * elem);
    if (p)
        *cap = ncap;
    return p;
}

static int note_loss(rec_file_t *f, rec_stream_t *s, const lmq_frame_t *fr)
{
    uint64_t seq = lmq_frame_seq(fr), epoch = lmq_frame_epoch(fr);
    if (lmq_frame_restarted(fr)) {
        restart_row_t *rows = grow(f->pend_restarts, f->npend_restarts, &f->cap_restarts, sizeof *rows);
        if (!rows)
            return LMQ_EMEM;
        f->pend_restarts = rows;
        restart_row_t *r = &f->pend_restarts[f->npend_restarts++];
        memset(r, 0, sizeof *r);
        snprintf(r->topic, sizeof r->topic, "%s", s->topic);
        r->prev_epoch = s->last_epoch;
        r->last_seq = s->last_seq;
        r->epoch = epoch;
        r->first_seq = seq;
        r->t_ns = lmq_frame_time_ns(fr);
        s->restarts++;
    } else if (lmq_frame_lost_before(fr) > 0) {
        gap_row_t *rows = grow(f->pend_gaps, f->npend_gaps, &f->cap_gaps, sizeof *rows);
        if (!rows)
            return LMQ_EMEM;
        f->pend_gaps = rows;
        gap_row_t *g = &f->pend_gaps[f->npend_gaps++];
        memset(g, 0, sizeof *g);
        snprintf(g->topic, sizeof g->topic, "%s", s->topic);
        g->epoch = epoch;
        g->count = lmq_frame_lost_before(fr);
        g->first_seq = seq - g->count;
        g->t_ns = lmq_frame_time_ns(fr);
        s->lost += g->count;
    }
    return 0;
}

static bool same_format(const rec_stream_t *s, const lmq_frame_t *fr)
{
    if (lmq_frame_dtype(fr) != s->dtype || lmq_frame_ndim(fr) != s->ndim)
        return false;
    for (unsigned i = 0; i < s->ndim; i++)
        if (lmq_frame_shape(fr)[i] != s->shape[i])
            return false;
    return lmq_frame_size(fr) == s->block_bytes;
}

int rec_file_append(rec_file_t *f, size_t index, const lmq_frame_t *fr)
{
    if (!f || !fr || index >= f->nstreams)
        return LMQ_EARG;
    if (f->failed)
        return LMQ_EIO;
    rec_stream_t *s = &f->streams[index];
    if (!same_format(s, fr)) {
        char had[64], got[64];
        int n = snprintf(had, sizeof had, "%s [", lmq_dtype_name(s->dtype));
        for (unsigned i = 0; i < s->ndim; i++)
            n += snprintf(had + n, sizeof had - (size_t)n, i ? ", %zu" : "%zu", s->shape[i]);
        snprintf(had + n, sizeof had - (size_t)n, "]");
        n = snprintf(got, sizeof got, "%s [", lmq_dtype_name(lmq_frame_dtype(fr)));
        for (unsigned i = 0; i < lmq_frame_ndim(fr); i++)
            n += snprintf(got + n, sizeof got - (size_t)n, i ? ", %zu" : "%zu", lmq_frame_shape(fr)[i]);
        snprintf(got + n, sizeof got - (size_t)n, "]");
        f->failed = true;
        set_err(f->err, sizeof f->err,
                "%s: block seq %llu of %s is %s, but the recording of that stream holds %s; "
                "a stream that changes its block format needs a new recording",
                f->path, (unsigned long long)lmq_frame_seq(fr), s->topic, got, had);
        return LMQ_EARG;
    }
    if (s->have_last && note_loss(f, s, fr) != 0) {
        f->failed = true;
        set_err(f->err, sizeof f->err, "%s: out of memory for the gaps table", f->path);
        return LMQ_EMEM;
    }
    size_t i = s->nbuf++;
    memcpy(s->buf + i * s->block_bytes, lmq_frame_data(fr), s->block_bytes);
    s->buf_t[i] = lmq_frame_time_ns(fr);
    s->buf_seq[i] = lmq_frame_seq(fr);
    s->buf_epoch[i] = lmq_frame_epoch(fr);
    s->have_last = true;
    s->last_seq = lmq_frame_seq(fr);
    s->last_epoch = lmq_frame_epoch(fr);
    s->blocks++;
    return s->nbuf == s->cap ? write_stream(f, s) : 0;
}

int rec_file_close(rec_file_t **pf, char *err, size_t errsize)
{
    if (!pf || !*pf)
        return 0;
    rec_file_t *f = *pf;
    int rc = f->failed ? LMQ_EIO : 0;
    if (f->file >= 0 && !f->failed && rec_file_flush(f) != 0)
        rc = LMQ_EIO;
    for (size_t i = 0; f->streams && i < f->nstreams; i++)
        stream_close(&f->streams[i]);
    if (f->gaps >= 0)
        H5Dclose(f->gaps);
    if (f->restarts >= 0)
        H5Dclose(f->restarts);
    if (f->gap_type >= 0)
        H5Tclose(f->gap_type);
    if (f->restart_type >= 0)
        H5Tclose(f->restart_type);
    if (f->file >= 0)
        unreserve(f);
    if (f->file >= 0 && H5Fclose(f->file) < 0) {
        file_fail(f, "close");
        rc = LMQ_ECLOSED;
    } else if (f->file >= 0) {
        /* A recording that ended is on the disk, not only in the page cache
         * (fsync acts on the file, whichever descriptor asks). */
        int fd = open(f->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) != 0) {
            int e = errno;
            f->failed = true;
            set_err(f->err, sizeof f->err, "%s: cannot write to the disk: %s (%s)", f->path, strerror(e),
                    strerrorname_np(e));
            rc = rc ? rc : LMQ_EIO;
        }
        if (fd >= 0)
            close(fd);
    }
    if (rc != 0)
        set_err(err, errsize, "%s", f->err);
    free(f->pend_gaps);
    free(f->pend_restarts);
    free(f->streams);
    free(f->path);
    free(f);
    *pf = NULL;
    return rc;
}

const char *rec_file_last_error(const rec_file_t *f) { return f ? f->err : "no file"; }

void rec_file_totals(const rec_file_t *f, rec_totals_t *t)
{
    memset(t, 0, sizeof *t);
    for (size_t i = 0; f && i < f->nstreams; i++) {
        const rec_stream_t *s = &f->streams[i];
        t->received += s->blocks;
        t->received_bytes += s->blocks * s->block_bytes;
        t->written += s->rows;
        t->bytes += s->rows * s->block_bytes;
        t->lost += s->lost;
        t->restarts += s->restarts;
    }
}

void rec_library_init(void)
{
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

void rec_library_term(void) { H5close(); }
