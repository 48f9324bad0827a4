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

/* Closes the file (writing what is still buffered) and frees. Returns 0 or
 * LMQ_EIO with the reason in err (may be NULL); *f is NULL afterwards either
 * way, and what was flushed before stays readable. */
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

/* Totals over all streams: blocks appended, payload bytes appended, blocks
 * lost (sum of /gaps counts), restarts. */
void rec_file_totals(const rec_file_t *f, uint64_t *blocks, uint64_t *bytes, uint64_t *lost, uint64_t *restarts);
/* Blocks of all streams already written to the file and flushed. */
uint64_t rec_file_flushed_blocks(const rec_file_t *f);

#endif
