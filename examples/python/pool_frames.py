#!/usr/bin/python3
"""pool_frames.py -- a pool of spawned workers analysing camera frames, each
handed the camera's proxy as a plain argument.

The seed case of labmq: multiprocessing starts workers with 'spawn' (the only
method on Windows and the default on macOS), so everything a worker gets is
pickled. An object holding an open instrument handle cannot be (see
pool_naive.py). A labmq.Device pickles as its URI ("ENDPOINT#cam1") and
connects in the worker on first use, so each worker asks the daemon, which
alone owns the camera, for its own frames:

    labmqd --config examples/sim-lab.yaml &
    /usr/bin/python3 examples/python/pool_frames.py --frames 16 --workers 2

Exit status 0 when every frame was analysed.
"""

import argparse
import multiprocessing
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import labmq  # noqa: E402


def spot(frame):
    """Centroid (x, y) of the bright spot and its peak, in pixels/counts: the
    pixels above half the peak, weighted by their excess over the median."""
    f = frame.astype(np.float64)
    bg = np.median(f)
    w = np.clip(f - bg, 0, None)
    w[w < 0.5 * w.max()] = 0
    total = w.sum()
    if total == 0:
        return float("nan"), float("nan"), float(f.max())
    ys, xs = np.indices(f.shape)
    return float((xs * w).sum() / total), float((ys * w).sum() / total), float(f.max())


def analyse(camera, index):
    """Runs in a worker: `camera` arrived pickled, as its URI."""
    frame = camera.snap()  # a numpy array on the received message, no copy
    x, y, peak = spot(frame)
    return index, os.getpid(), frame.shape, x, y, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-e", "--endpoint", help="control endpoint (default: the per-user ipc endpoint)")
    ap.add_argument("--camera", default="cam1")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--method", default="spawn", choices=["spawn", "fork", "forkserver"])
    args = ap.parse_args()

    lab = labmq.connect(args.endpoint, timeout=10)
    cam = lab.device(args.camera)
    try:
        shape = (cam.height, cam.width)
    except labmq.Error as e:
        print(f"pool_frames.py: {e}", file=sys.stderr)
        return 1
    print(f"{args.frames} frames {shape[0]}x{shape[1]} from {cam.uri}, {args.workers} {args.method} workers")
    t0 = time.monotonic()
    with multiprocessing.get_context(args.method).Pool(args.workers) as pool:
        try:
            results = pool.starmap(analyse, [(cam, i) for i in range(args.frames)])
        except labmq.Error as e:  # a worker's labmq error comes back as itself
            print(f"pool_frames.py: a worker failed: {e}", file=sys.stderr)
            return 1
    dt = time.monotonic() - t0
    print(f"{'frame':>5} {'worker':>7} {'x':>7} {'y':>7} {'peak':>6}")
    for i, pid, fshape, x, y, peak in results:
        print(f"{i:5d} {pid:7d} {x:7.1f} {y:7.1f} {peak:6.0f}")
    ok = len(results) == args.frames and all(r[2] == shape for r in results)
    print(f"pool_frames.py: {len(results)} frames in {dt:.2f} s by {len({r[1] for r in results})} workers:",
          "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
