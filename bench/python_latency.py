#!/usr/bin/python3
"""python_latency.py -- what a call costs from Python, in one run, one table.

Not a test: numbers are printed, never asserted. One labmqd (this build's,
on a temporary config with one sim-psu and one sim-camera, ipc endpoints in
a temp directory) serves every row, so the rows compare numbers taken
seconds apart on the same machine (in alternating rounds, merged):

  get round trip (one call in flight) and pipelined calls/s (16 in flight):
    C lmq_proxy       build/bench/latency --role client --system labmq (the C row of bench/latency)
    labmq (Python)    Device.get / Device.submit + Pending.result
    bare pyzmq        a DEALER sending the same JSON header, matching ids, nothing else
  camera frames analysed by a pool of spawned workers, tasks/s:
    proxy             each worker is handed the cam1 proxy and snaps its own frame (pool_frames.py)
    pickled frames    the parent snaps, and multiprocessing pickles each frame to a worker

    /usr/bin/python3 bench/python_latency.py [--build build] [--samples N] [--duration S] [--rounds R]

Use a Release build (the default, build/) for numbers; an ASan build works but measures the sanitizer.
"""

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "python"))
sys.path.insert(0, os.path.join(REPO, "examples", "python"))
import labmq  # noqa: E402
from pool_frames import spot  # noqa: E402

CONFIG = """\
devices:
  - name: psu1
    driver: sim-psu
  - name: cam1
    driver: sim-camera
    options: {{width: {w}, height: {h}, fps: 1, exposure_ms: 0.01}}
"""


def percentile(samples, q):
    return float(np.percentile(np.asarray(samples), q))


# -- labmq package ------------------------------------------------------------------


def py_latency(psu, n, warmup):
    for _ in range(warmup):
        psu.get("voltage")
    s = np.empty(n)
    t = time.perf_counter
    for i in range(n):
        a = t()
        psu.get("voltage")
        s[i] = t() - a
    return s


def py_pipelined(psu, inflight, duration):
    q = [psu.submit("get", "voltage") for _ in range(inflight)]
    done = 0
    t0 = time.perf_counter()
    end = t0 + duration
    k = 0
    while True:
        q[k].result()
        done += 1
        if time.perf_counter() >= end:
            break
        q[k] = psu.submit("get", "voltage")
        k = (k + 1) % inflight
    elapsed = time.perf_counter() - t0
    for j in range(inflight):  # drain
        if j != k:
            q[j].result()
    return done / elapsed


# -- bare pyzmq --------------------------------------------------------------------------


class Bare:
    def __init__(self, endpoint):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.id = 0

    def send(self):
        self.id += 1
        self.sock.send(json.dumps({"v": 1, "id": self.id, "op": "get", "device": "psu1",
                                   "name": "voltage"}).encode())
        return self.id

    def recv(self):
        r = json.loads(self.sock.recv())
        if not r["ok"]:
            raise RuntimeError(r)
        return r["id"], r["result"]

    def get(self):
        rid = self.send()
        while self.recv()[0] != rid:
            pass

    def close(self):
        self.sock.close()
        self.ctx.term()


def bare_latency(b, n, warmup):
    for _ in range(warmup):
        b.get()
    s = np.empty(n)
    t = time.perf_counter
    for i in range(n):
        a = t()
        b.get()
        s[i] = t() - a
    return s


def bare_pipelined(b, inflight, duration):
    for _ in range(inflight):
        b.send()
    done = 0
    t0 = time.perf_counter()
    end = t0 + duration
    while True:
        b.recv()
        done += 1
        if time.perf_counter() >= end:
            break
        b.send()
    elapsed = time.perf_counter() - t0
    for _ in range(inflight - 1):
        b.recv()
    return done / elapsed


# -- C proxy (bench/latency's client role) --------------------------------------------------


def c_client(latency_bin, endpoint, mode, count, duration, inflight, warmup):
    args = [latency_bin, "--role", "client", "--system", "labmq", "--endpoint", endpoint, "--device", "psu1",
            "--property", "voltage", "--mode", mode, "--count", str(count), "--warmup", str(warmup),
            "--duration", str(duration), "--inflight", str(inflight)]
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        raise RuntimeError(f"bench/latency client: {line!r}")
    p.stdin.write("go\n")
    p.stdin.flush()
    out, _ = p.communicate(timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"bench/latency client exited {p.returncode}")
    lines = out.split("\n")
    _, calls, elapsed_ns = lines[0].split()
    samples = np.array([int(x.split()[1]) for x in lines[1:] if x.startswith("s ")]) * 1e-9
    return int(calls), int(elapsed_ns) * 1e-9, samples


# -- pool of workers ------------------------------------------------------------------------


def task_proxy(camera):
    return spot(camera.snap())


def task_frame(frame):
    return spot(frame)


def pool_rates(cam, tasks, workers):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        pool.map(task_proxy, [cam] * workers)  # workers started and connected before timing
        t0 = time.perf_counter()
        pool.map(task_proxy, [cam] * tasks, chunksize=1)
        proxy_rate = tasks / (time.perf_counter() - t0)
    with ctx.Pool(workers) as pool:
        pool.map(task_frame, [cam.snap() for _ in range(workers)])
        t0 = time.perf_counter()
        # The parent snaps each frame (it holds the camera, in the naive design)
        # and the pool pickles it to a worker.
        results = pool.imap(task_frame, (cam.snap() for _ in range(tasks)), chunksize=1)
        for _ in results:
            pass
        pickled_rate = tasks / (time.perf_counter() - t0)
    return proxy_rate, pickled_rate


# -- main ----------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description="Python client costs next to bare pyzmq and the C proxy.")
    ap.add_argument("--build", default=os.path.join(REPO, "build"), help="build directory (default: build/)")
    ap.add_argument("--samples", type=int, default=5000, help="round trips per latency row")
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per pipelined row")
    ap.add_argument("--inflight", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per row")
    ap.add_argument("--tasks", type=int, default=200, help="frames per pool row")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--frame", default="512x512", help="camera frame WxH")
    args = ap.parse_args()
    labmqd = os.path.join(args.build, "workers", "labmqd", "labmqd")
    latency_bin = os.path.join(args.build, "bench", "latency")
    if not os.access(labmqd, os.X_OK):
        sys.exit(f"python_latency.py: no labmqd in {args.build} (build first, or pass --build)")
    w, h = (int(x) for x in args.frame.split("x"))

    tmp = tempfile.mkdtemp(prefix="labmq-pybench-")
    cfg = os.path.join(tmp, "lab.yaml")
    with open(cfg, "w") as f:
        f.write(CONFIG.format(w=w, h=h))
    control, data = f"ipc://{tmp}/control", f"ipc://{tmp}/data"
    log = open(os.path.join(tmp, "labmqd.log"), "wb")
    daemon = subprocess.Popen([labmqd, "--config", cfg, "--control", control, "--data", data,
                               "--log-level", "warn"], stdout=log, stderr=log)
    rows = []
    try:
        lab = labmq.connect(control, timeout=5)
        deadline = time.monotonic() + 20
        while True:
            try:
                if all(d["state"] != "opening" for d in lab.devices()):
                    break
            except labmq.Error:
                pass
            if time.monotonic() > deadline:
                sys.exit("python_latency.py: labmqd did not come up")
            time.sleep(0.05)
        psu, cam = lab.device("psu1"), lab.device("cam1")

        def lat_row(name, s):
            rows.append((name, percentile(s, 50) * 1e6, percentile(s, 99) * 1e6, len(s) / s.sum(), None))

        # The systems take turns in rounds, and each row merges its rounds, so
        # a burst of noise from a neighbour lands on all of them alike.
        have_c = os.access(latency_bin, os.X_OK)
        bare = Bare(control)
        n = max(1, args.samples // args.rounds)
        d = args.duration / args.rounds
        lat = {"c": [], "py": [], "bare": []}
        thr = {"c": [], "py": [], "bare": []}
        for _ in range(args.rounds):
            if have_c:
                lat["c"].append(c_client(latency_bin, control, "lat", n, d, 1, args.warmup)[2])
            lat["py"].append(py_latency(psu, n, args.warmup))
            lat["bare"].append(bare_latency(bare, n, args.warmup))
            if have_c:
                calls, elapsed, _ = c_client(latency_bin, control, "thr", 1000, d, args.inflight, args.warmup)
                thr["c"].append(calls / elapsed)
            thr["py"].append(py_pipelined(psu, args.inflight, d))
            thr["bare"].append(bare_pipelined(bare, args.inflight, d))
        bare.close()
        names = {"c": "C lmq_proxy", "py": "labmq (Python)", "bare": "bare pyzmq DEALER"}
        for k in ("c", "py", "bare"):
            if lat[k]:
                lat_row(f"get  {names[k]}", np.concatenate(lat[k]))
            else:
                rows.append((f"get  {names[k]} (no {latency_bin})", None, None, None, None))
        for k in ("c", "py", "bare"):
            if thr[k]:
                rows.append((f"get  x{args.inflight} in flight: {names[k]}", None, None, float(np.mean(thr[k])), None))

        proxy_rate, pickled_rate = pool_rates(cam, args.tasks, args.workers)
        rows.append((f"pool x{args.workers}: proxy to workers ({w}x{h})", None, None, None, proxy_rate))
        rows.append((f"pool x{args.workers}: frames pickled ({w}x{h})", None, None, None, pickled_rate))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)

    def f(x, fmt):
        return format(x, fmt) if x is not None else ""

    print(f"{'':44} {'p50 us':>8} {'p99 us':>8} {'calls/s':>9} {'tasks/s':>8}")
    for name, p50, p99, rate, tasks in rows:
        print(f"{name:44} {f(p50, '8.1f'):>8} {f(p99, '8.1f'):>8} {f(rate, '9.0f'):>9} {f(tasks, '8.1f'):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
