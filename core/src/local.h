/* The local channel (docs/protocol.md 6): a Unix SOCK_SEQPACKET socket per
 * device, polled by the device thread itself beside its inproc pipe, so a
 * client on the same host reaches the thread that owns the driver without
 * the broker and ZeroMQ's I/O threads. Internal to liblabmq.
 *
 * Daemon side (local.c): bound by the broker before the device thread starts,
 * served, closed and unlinked by the device thread. Client side
 * (local_client.c): what lmq_proxy uses for call/get/set when the daemon
 * offers a channel. */
#ifndef LMQ_LOCAL_H
#define LMQ_LOCAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "device_internal.h"

/* The largest record either side sends: a request that does not fit in one
 * record goes over ZeroMQ; a reply larger than one record is split (MORE). */
#define LMQ__LOCAL_RECORD_MAX 131072
/* First byte of every record. */
#define LMQ__LOCAL_MORE 0x01
/* Requests each source (the broker's pipe, the local clients) may have
 * served per turn of the device loop, so neither starves the other. */
#define LMQ__LOCAL_BUDGET 32
/* Both ends of the channel spin this long (LABMQ_LOCAL_SPIN_US) before
 * they sleep: see lmq__local_spin_ns. */
#define LMQ__LOCAL_SPIN_US_DEFAULT 50
#define LMQ__LOCAL_SPIN_US_MAX 10000

/* How long a waiting end of the channel polls (yielding the CPU between
 * polls) before it sleeps, in ns: LABMQ_LOCAL_SPIN_US, default 50 µs, 0 to
 * never spin; 0 on a machine with one CPU, where the other end cannot run
 * while this one polls. On a VM a sleeping thread woken from another CPU
 * costs 20-40 µs, more than the whole call; a thread that is still polling
 * sees the message at once. Each end spins only while the other answers
 * within the window (it stops after one miss and starts again after a quick
 * answer), so sparse traffic costs no CPU. */
int64_t lmq__local_spin_ns(void);

/* One end's polling state. A wait polls (lmq__spin_allowed) while the other
 * end answered within the window the time before; it stops after a miss and
 * starts again after a wait that slept less than the window. A yield that
 * took long means the CPU is busy with other work, which a yield hands a
 * whole time slice (milliseconds) while a sleeping thread would be woken
 * ahead of it: then no polling at all for LMQ__SPIN_HOLD_NS. */
typedef struct {
    int64_t window_ns;  /* lmq__local_spin_ns() */
    int64_t hold_until; /* mono ns: no polling before (the CPU was busy) */
    bool on;
} lmq__spin_t;
#define LMQ__SPIN_BUSY_NS (200 * 1000LL)
#define LMQ__SPIN_HOLD_NS (100 * 1000000LL)
void lmq__spin_init(lmq__spin_t *s);
bool lmq__spin_allowed(const lmq__spin_t *s);
/* Yields the CPU between two polls of a wait that began at start: false
 * when polling must stop (the window is over, or the CPU was busy). */
bool lmq__spin_yield(lmq__spin_t *s, int64_t start);
/* A wait slept waited_ns until its event. */
void lmq__spin_slept(lmq__spin_t *s, int64_t waited_ns);

/* ---- framing, shared by both sides ----
 * A message (header + binary frames) is: u32 nframes, nframes x u32 length
 * (little-endian), then the frames back to back. It travels as one or more
 * records, each a flag byte then a piece of the message. */

/* Bytes of the frame table for n frames. */
#define LMQ__LOCAL_TABLE(n) (4 + 4 * (size_t)(n))
void lmq__local_put_table(unsigned char *out, const size_t *lens, size_t n);
/* Splits a whole message into its frames: 0, or LMQ_EPROTO with the reason. */
int lmq__local_split(const unsigned char *msg, size_t len, const unsigned char **frame, size_t *flen, size_t *n,
                     char *err, size_t errlen);

/* ---- daemon side ---- */

/* Creates the device's listening socket beside the daemon's ipc:// control
 * endpoint (same directory, which must be ours and closed to others). No
 * channel (logged, not an error) for other endpoints or when anything is
 * refused: clients then use ZeroMQ. Called by the broker thread before
 * lmq__dev_start. */
void lmq__local_bind(lmq_dev_t *dev, const char *control, lmq_log_t *log);
/* Adds the "local" key to a describe or list entry when the device has a
 * channel; adds the per-path counters to its stats object. */
void lmq__local_describe(lmq_dev_t *dev, json_t *obj);
void lmq__local_stats(lmq_dev_t *dev, json_t *obj);

/* Device thread: waits for the pipe, the channel, or timeout_ms (the loop's
 * replacement for zmq_poll on the pipe). 1 when the pipe may hold messages,
 * 0 when it holds none (the loop need not ask it), -1 when the ZeroMQ
 * context is gone. The thread sets dev->pipe_used after every send or
 * receive on the pipe: only then is the pipe's state asked again. */
int lmq__local_wait(lmq_dev_t *dev, long timeout_ms);
/* Device thread: one turn: accepts clients, reads and checks at most a
 * budget of requests, runs at most a budget of accepted ones, flushes
 * replies. */
void lmq__local_serve(lmq_dev_t *dev);
/* Device thread, leaving its loop: answers CLOSED, in order, what was
 * accepted and not run and what clients sent and was not read yet, gives the
 * replies a bounded time to leave, closes and unlinks the socket. */
void lmq__local_stop(lmq_dev_t *dev);
/* Frees what the channel holds (after the device thread has exited). */
void lmq__local_destroy(lmq_dev_t *dev);

/* The credentials (SO_PEERCRED) of the client a local-channel job came
 * from: true and *cred filled for such a job, false for a ZeroMQ job. For
 * access control: a local client is identified by its uid. */
bool lmq__local_job_peer(const lmq__job_t *job, uid_t *uid, gid_t *gid, pid_t *pid);

/* ---- client side (local_client.c) ---- */

typedef struct lmq__lchan lmq__lchan_t;

/* Connects to a device's channel (the "local" key of its describe).
 * record_max: the daemon's announced limit. NULL when it cannot, with the
 * reason in err and errno set (ENOENT, ECONNREFUSED, EACCES, ...). */
lmq__lchan_t *lmq__lchan_connect(const char *path, size_t record_max, char *err, size_t errlen);
void lmq__lchan_close(lmq__lchan_t **ch);
int lmq__lchan_fd(const lmq__lchan_t *ch);
/* Sends one request (header + frames, only read). 0 when sent; 1 when it
 * does not fit in one record (nothing was sent: use ZeroMQ); LMQ_ETIMEOUT
 * when the socket stayed full for timeout_ms; LMQ_ECLOSED when the daemon
 * has closed the channel (nothing was sent). */
int lmq__lchan_send(lmq__lchan_t *ch, zmq_msg_t *hdr, const lmq__frames_t *bin, int timeout_ms);
/* Receives one whole reply: its header into *hdr (initialised here, the
 * caller closes it) and its binary frames into bin (frames beyond the
 * protocol's limit are dropped). ready: the caller has seen the socket
 * readable (the first receive needs no wait). 0, LMQ_ETIMEOUT, LMQ_ECLOSED (the daemon
 * closed the channel), or LMQ_EPROTO / LMQ_EMEM with the reason in err. */
int lmq__lchan_recv(lmq__lchan_t *ch, int timeout_ms, bool ready, zmq_msg_t *hdr, lmq__frames_t *bin, char *err,
                    size_t errlen);

#endif
