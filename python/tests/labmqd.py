"""A labmqd for the tests: the daemon the C build made (LABMQ_BUILD_DIR, set
by CTest), on a temporary config with ipc endpoints in a temp directory, as
tests/harness.c's th_daemon_* start it."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import zmq

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

LAB_YAML = """\
devices:
  - name: psu1
    driver: sim-psu
    options: {max_voltage: 10, max_current: 0.1, load_ohms: 100, load_diode: true, slew_v_per_s: 0, noise: 1e-5}
  - name: daq1
    driver: sim-daq
    options: {channels: 4, ai_wires: "psu1.iout,psu1.vout", sample_rate: 10000, block_size: 1000,
              noise: 1e-5}
  - name: cam1
    driver: sim-camera
    options: {width: 64, height: 48, fps: 10, exposure_ms: 1, bit_depth: 12}
"""


def build_dir():
    d = os.environ.get("LABMQ_BUILD_DIR")
    candidates = [d] if d else [os.path.join(REPO, "build-asan"), os.path.join(REPO, "build")]
    for c in candidates:
        if c and os.access(os.path.join(c, "workers", "labmqd", "labmqd"), os.X_OK):
            return c
    raise RuntimeError(f"no labmqd: set LABMQ_BUILD_DIR to a build directory (tried {', '.join(map(str, candidates))})")


def labmqd_path():
    return os.path.join(build_dir(), "workers", "labmqd", "labmqd")


def _request(sock, op, rid):
    sock.send(json.dumps({"v": 1, "id": rid, "op": op}).encode())
    if not sock.poll(200):
        return None
    return json.loads(sock.recv())


class Daemon:
    """curve: the socket options ({zmq.CURVE_SERVERKEY: ..., ...}) the readiness
    check needs for a daemon with keys (its control endpoint then set by the
    test, e.g. on loopback tcp)."""

    def __init__(self, yaml=LAB_YAML, curve=None, log_level="warn"):
        self.curve = curve
        self.log_level = log_level
        self.dir = tempfile.mkdtemp(prefix="labmq-py-")
        self.config = os.path.join(self.dir, "lab.yaml")
        with open(self.config, "w") as f:
            f.write(yaml)
        self.control = f"ipc://{self.dir}/control"
        self.data = f"ipc://{self.dir}/data"
        self.log = os.path.join(self.dir, "labmqd.log")
        self.proc = None

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return "(no log)"

    def start(self):
        """Starts labmqd and returns once it answers and no device is still
        "opening" (start-up does not wait for instruments)."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([labmqd_path(), "--config", self.config, "--control", self.control,
                                          "--data", self.data, "--log-level", self.log_level],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        ctx = zmq.Context()
        sock = self._dealer(ctx)
        deadline = time.monotonic() + 20  # generous: sanitizers on a loaded machine
        rid = 0
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"labmqd exited ({self.proc.returncode}) before answering:\n{self.log_text()}")
                if time.monotonic() > deadline:
                    self.stop(signal.SIGKILL)
                    raise RuntimeError(f"labmqd did not get ready within 20 s:\n{self.log_text()}")
                rid += 1
                reply = _request(sock, "list", rid)
                while reply is not None and reply.get("id") != rid:  # a late answer to an earlier try
                    reply = json.loads(sock.recv()) if sock.poll(200) else None
                if reply and reply.get("ok") and all(d["state"] != "opening" for d in reply["result"]):
                    return self
                if reply is None:  # not bound yet: try again on a fresh socket
                    sock.close(linger=0)
                    sock = self._dealer(ctx)
                time.sleep(0.02)
        finally:
            sock.close(linger=0)
            ctx.term()

    def _dealer(self, ctx):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        for opt, key in (self.curve or {}).items():
            sock.setsockopt(opt, key)
        sock.connect(self.control)
        return sock

    def stop(self, sig=signal.SIGTERM):
        """Stops the daemon; returns its exit status (None if none ran)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        return rc

    def finish(self):
        """SIGTERM; the daemon must exit 0 (under ASan: no leak, no error)."""
        rc = self.stop()
        log = self.log_text()
        shutil.rmtree(self.dir, ignore_errors=True)
        if rc not in (0, None):
            raise AssertionError(f"labmqd ended with status {rc} after SIGTERM:\n{log}")
