/* labmq-recorder — the HDF5 file of a recording (internal to the recorder).
 *
 * One file holds the blocks of several streams, each in its own group of
 * growable datasets, plus the /gaps and /restarts tables (layout:
 * workers/recorder/README.md). Everything is created up front and the file
 * then switches to SWMR writing, so readers (h5py, swmr=True) follow it while
 * it grows: SWMR forbids creating objects later, which is also why a block
 * whose dtype or shape differs from its stream's is refused, not given a new
 * dataset. Blocks are gathered in memory and written a chunk at a time or at
 * rec_file_flush, whichever comes first. One thread only. */
#ifndef LABMQ_RECORDER_RECFILE_H
#define LABMQ_RECORDER_RECFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "labmq/labmq.h"

/* The longest topic the fixed-size topic column of /gaps and /restarts holds. */
#define REC_TOPIC_MAX 127

typedef struct rec_file rec_file_t;

typedef struct rec_stream_info {
    const char *topic; /* "DEV/STREAM" */
    lmq_dtype_t dtype;
    unsigned ndim;
    size_t shape[LMQ_MAX_DIMS];
    const char *units;
    double rate_hz; /* nominal, as described; 0 when unknown */
} rec_stream_info_t;

/* Creates the file with every stream's datasets and starts SWMR writing.
 * An existing file is refused unless `overwrite`. NULL on failure with the
 * reason (naming the file) in err. */
rec_file_t *rec_file_create(const char *path, bool overwrite, const rec_stream_info_t *streams, size_t nstreams,
                            char *err, size_t errsize);

/* Turns off HDF5's printing of its error stack (we report errors ourselves)
 * and its exit handler: after a failed close, that handler would crash on the
 * file it could not close. Call once before anything else of this module. */
void rec_library_init(void);
/* Releases HDF5's memory; only when every file closed (rec_file_close 0). */
void rec_library_term(void);

/* Writes what is still buffered (unless an error came first), closes the
 * file and frees; *f is NULL afterwards. Returns 0 when the file closed and
 * holds everything appended; LMQ_EIO (reason in err, may be NULL) when the
 * last blocks could not be written or an earlier error stopped them, the file
 * being closed and readable; LMQ_ECLOSED when HDF5 could not close it (what
 * was flushed before should still be readable). */
int rec_file_close(rec_file_t **f, char *err, size_t errsize);

/* Appends one block of stream `index`. A seq gap before it (within its epoch)
 * goes into /gaps, an epoch change into /restarts. Returns 0; LMQ_EARG for a
 * block whose dtype or shape differs from the stream's; LMQ_EIO when the file
 * cannot be written (disk full, file size limit). After an error the file takes
 * nothing more; close it. */
int rec_file_append(rec_file_t *f, size_t index, const lmq_frame_t *frame);

/* Writes everything buffered and flushes the file, so SWMR readers see it. */
int rec_file_flush(rec_file_t *f);

const char *rec_file_last_error(const rec_file_t *f);

typedef struct rec_totals {
    uint64_t received; /* blocks appended */
    uint64_t written;  /* of those, written into the file (not buffered, not refused after an error) */
    uint64_t received_bytes; /* payload bytes appended */
    uint64_t bytes;    /* payload bytes written */
    uint64_t lost;     /* blocks missing (the sum of the counts in /gaps) */
    uint64_t restarts;
} rec_totals_t;

/* Totals over all streams. */
void rec_file_totals(const rec_file_t *f, rec_totals_t *t);

#endif
