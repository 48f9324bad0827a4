#!/usr/bin/python3
"""The Python side of bench/pool: multiprocessing start-up ('spawn' and
'fork': a trivial process started, its first message received) and
multiprocessing.Pool(2) with 'spawn' on the same tiny tasks as the labmq pool
(the centroid of a 4x4 uint16 frame). Prints one result per line:

  start METHOD MS MS ...           (each start-up)
  pool_create MS
  pool MODE TASKS SECONDS

Run by bench/pool (bench/README.md); standard library only."""
import argparse
import multiprocessing as mp
import struct
import sys
import time
from array import array


def ready(conn):
    conn.send_bytes(b"r")
    conn.close()


def centroid(task):
    h, w = struct.unpack_from("<II", task)
    px = array("H", task[8:])
    total = sx = sy = 0
    for y in range(h):
        for x in range(w):
            v = px[y * w + x]
            total += v
            sx += v * x
            sy += v * y
    return (sx / total, sy / total, total) if total else (float("nan"), float("nan"), 0)


def frame(i):
    px = [1 + (i * 7 + k * 13) % 1000 for k in range(16)]
    return struct.pack("<II16H", 4, 4, *px)


def starts(method, runs):
    ctx = mp.get_context(method)
    times = []
    for _ in range(runs):
        parent, child = ctx.Pipe(duplex=False)
        t0 = time.perf_counter()
        p = ctx.Process(target=ready, args=(child,))
        p.start()
        parent.recv_bytes()
        times.append((time.perf_counter() - t0) * 1e3)
        p.join()
        parent.close()
        child.close()
    print(f"start {method} " + " ".join(f"{t:.3f}" for t in times), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=10000)
    a = ap.parse_args()
    starts("spawn", a.starts)
    starts("fork", a.starts)
    tasks = [frame(i) for i in range(a.tasks)]
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(2) as pool:
        pool.apply(centroid, (tasks[0],))  # both started; one answered
        print(f"pool_create {(time.perf_counter() - t0) * 1e3:.3f}", flush=True)
        t0 = time.perf_counter()
        pool.map(centroid, tasks)
        print(f"pool map {a.tasks} {time.perf_counter() - t0:.6f}", flush=True)
        t0 = time.perf_counter()
        for _ in pool.imap_unordered(centroid, tasks, chunksize=1):
            pass
        print(f"pool imap1 {a.tasks} {time.perf_counter() - t0:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
