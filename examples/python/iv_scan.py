#!/usr/bin/python3
"""iv_scan.py -- the I-V sweep of examples/iv_scan.c, in Python.

A complete labmq client written from docs/protocol.md with only pyzmq, json
and numpy: no labmq library is imported. It follows the client rules of 2.5:
no daemon is UNREACHABLE (the send times out), no reply in time is TIMEOUT
(and the socket is replaced), late replies are dropped by id. Run it with the system Python
(/usr/bin/python3, which has python3-zmq and python3-numpy) against a running
daemon:

    labmqd --config examples/sim-lab.yaml &
    /usr/bin/python3 examples/python/iv_scan.py

A daemon with keys (docs/security.md) needs this client's key pair and the
daemon's public key: --key alice.key --server-key labpc.key.pub (files made by
`labmq keygen`; the same options as the labmq CLI).

Exit status 0 only if the sweep worked and no stream block was lost.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import zmq
import zmq.auth

PROTOCOL = 1


class LabmqError(Exception):
    """An error reply (code from docs/protocol.md 2.3) or a client-side failure
    (UNREACHABLE: no daemon answers; TIMEOUT: no reply in time)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def default_endpoint(which):
    """The per-user ipc endpoint a daemon binds when given none (protocol 1)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    directory = os.path.join(base, "labmq") if base else f"/tmp/labmq-{os.getuid()}"
    return f"ipc://{directory}/{which}"


def decode_value(value, frames):
    """Turns a JSON value into Python, replacing array references
    ({"$frame": K, "dtype": ..., "shape": [...]}) by numpy arrays."""
    if isinstance(value, dict) and "$frame" in value:
        k = value["$frame"]
        if not isinstance(k, int) or not 1 <= k <= len(frames):
            raise LabmqError("PROTO", f"reply refers to binary frame {k} of {len(frames)}")
        # frombuffer shares the frame's memory (no copy); it is read-only.
        return np.frombuffer(frames[k - 1], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
    if isinstance(value, list):
        return [decode_value(v, frames) for v in value]
    if isinstance(value, dict):
        return {k: decode_value(v, frames) for k, v in value.items()}
    return value


def encode_value(value, frames):
    """The reverse for request arguments: numpy arrays travel as binary frames."""
    if isinstance(value, np.ndarray):
        # '<' forces little-endian; ascontiguousarray gives C order.
        a = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        frames.append(a.tobytes())
        return {"$frame": len(frames), "dtype": a.dtype.str, "shape": list(a.shape)}
    if isinstance(value, np.generic):
        return value.item()
    return value


class Client:
    """One DEALER connection to a daemon's control endpoint, following the
    client rules of docs/protocol.md 2.5. Replies may come out of order
    (requests to different devices run in parallel), so each request gets an
    id and replies are matched by it."""

    def __init__(self, ctx, endpoint, timeout_ms=2000, curve=None):
        self.ctx = ctx
        self.endpoint = endpoint
        self.curve = curve  # {socket option: key} for a daemon with keys
        self.timeout_ms = timeout_ms
        self.next_id = 1
        self.sock = None
        self._open()

    def _open(self):
        sock = self.ctx.socket(zmq.DEALER)
        # Never block process exit (or a socket swap) on unsent requests.
        sock.setsockopt(zmq.LINGER, 0)
        # Queue a request only on a live connection: with no daemon the send
        # itself times out (UNREACHABLE) instead of waiting in a queue for
        # one that starts later.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        for opt, key in (self.curve or {}).items():
            sock.setsockopt(opt, key)
        sock.connect(self.endpoint)
        self.sock = sock

    def _reopen(self):
        """After a TIMEOUT: the old request may still be queued at a hung
        device; a fresh socket makes sure its late reply never reaches us.
        ZeroMQ connects the new socket to a restarted daemon by itself."""
        self.sock.close(linger=0)
        self._open()

    def close(self):
        self.sock.close(linger=0)

    def request(self, op, **keys):
        frames = []
        header = {"v": PROTOCOL, "id": self.next_id, "op": op}
        for k, v in keys.items():
            if k == "args":
                v = [encode_value(a, frames) for a in v]
            elif k == "value":
                v = encode_value(v, frames)
            header[k] = v
        self.next_id += 1
        try:
            self.sock.send_multipart([json.dumps(header).encode()] + frames)
        except zmq.Again:
            # Never queued, so it cannot reach a daemon that starts later.
            raise LabmqError("UNREACHABLE", f"no labmqd answers at {self.endpoint} "
                             f"(no connection within {self.timeout_ms} ms)") from None

        deadline = time.monotonic() + self.timeout_ms / 1000
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                self._reopen()
                raise LabmqError("TIMEOUT", f"no reply to {op} within {self.timeout_ms} ms from {self.endpoint}")
            parts = self.sock.recv_multipart(copy=False)
            # A DEALER gets no delimiter frame back (only REQ sends one).
            try:
                reply = json.loads(bytes(parts[0].buffer).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue  # not a reply of this protocol: nobody awaits it
            if not isinstance(reply, dict) or reply.get("id") != header["id"]:
                continue  # no longer awaited (an earlier request's late reply), or unmatchable
            if not reply.get("ok"):
                err = reply.get("error") or {}
                raise LabmqError(err.get("code", "PROTO"), err.get("message", "error reply without a message"))
            return decode_value(reply.get("result"), [p.buffer for p in parts[1:]])

    def ping(self):
        return self.request("ping")


class Device:
    """A proxy: a device name at an endpoint."""

    def __init__(self, client, name):
        self.client = client
        self.name = name

    def call(self, method, *args):
        return self.client.request("call", device=self.name, name=method, args=list(args))

    def get(self, prop):
        return self.client.request("get", device=self.name, name=prop)

    def set(self, prop, value):
        self.client.request("set", device=self.name, name=prop, value=value)


class Subscription:
    """One stream ("device/stream") from the data endpoint, with the loss and
    restart bookkeeping of protocol 3: a seq gap within an epoch is lost
    blocks, a new epoch is a restart."""

    def __init__(self, ctx, endpoint, topic, curve=None):
        self.topic = topic.encode()
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for opt, key in (curve or {}).items():
            self.sock.setsockopt(opt, key)
        self.sock.connect(endpoint)
        self.sock.setsockopt(zmq.SUBSCRIBE, self.topic)
        self.epoch = None
        self.seq = None
        self.received = self.lost = self.restarts = 0

    def close(self):
        self.sock.close()

    def recv(self, timeout_ms):
        """Next block as (header, numpy array), or None on timeout."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                return None
            parts = self.sock.recv_multipart(copy=False)
            # SUBSCRIBE matches prefixes: "daq1/wave" would also let
            # "daq1/wave2" through.
            if len(parts) != 3 or bytes(parts[0].buffer) != self.topic:
                continue
            h = json.loads(bytes(parts[1].buffer).decode("utf-8"))
            if h.get("v") != PROTOCOL:
                continue
            if self.epoch is not None and h["epoch"] != self.epoch:
                self.restarts += 1
            elif self.seq is not None and h["seq"] > self.seq + 1:
                self.lost += h["seq"] - self.seq - 1
            self.epoch, self.seq = h["epoch"], h["seq"]
            self.received += 1
            data = np.frombuffer(parts[2].buffer, dtype=np.dtype(h["dtype"])).reshape(h["shape"])
            return h, data


def connectable(data_ep, control_ep):
    """A daemon bound to tcp://*:P reports that; connect to the host we
    reached its control endpoint at instead."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if data_ep.startswith(wildcard) and control_ep.startswith("tcp://"):
            host = control_ep[len("tcp://"):].rsplit(":", 1)[0]
            return f"tcp://{host}:{data_ep[len(wildcard):]}"
    return data_ep


def sweep(psu, daq, args):
    """The sweep proper; True when the current rises with the voltage."""
    gain = daq.get("ai0_gain")
    # The most sensitive input range that still holds the largest current the
    # supply may deliver: milliamps on a 10 V range would be lost in the
    # converter's steps. (The DAQ rounds up to its next range.)
    daq.set("ai_range", args.ilimit * gain * 1.05)
    print(f"{'V_set[V]':>10} {'V_meas[V]':>10} {'I[A]':>12}")
    vs = np.linspace(0.0, args.vmax, args.steps + 1)
    currents = []
    for v in vs:
        psu.set("voltage", float(v))
        vmeas = psu.get("measured_voltage")
        i = daq.get("ai0") / gain
        currents.append(i)
        print(f"{v:10.3f} {vmeas:10.4f} {i:12.4e}", flush=True)
    currents = np.array(currents)
    # Noise allowance as in iv_scan.c: a dip under 1% of full scale is noise.
    tol = max(1e-6, 0.01 * currents.max())
    dips = int(np.count_nonzero(np.diff(currents) < -tol))
    if dips or not currents.max() > currents[0]:
        print(f"iv_scan.py: the current does not rise with the voltage ({dips} dips); check the wiring",
              file=sys.stderr)
        return False
    return True


def watch_stream(ctx, data_ep, topic, seconds, curve=None):
    sub = Subscription(ctx, data_ep, topic, curve)
    try:
        # Start the window at the first block: the subscription takes a
        # moment to reach the daemon.
        first = sub.recv(3000)
        if first is None:
            print(f"iv_scan.py: no block on {topic} within 3 s (is the stream running?)", file=sys.stderr)
            return False
        h0, d0 = first
        samples, last = d0.size, (h0, d0)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            got = sub.recv(int(left * 1000) + 1)
            if got is None:
                break
            samples += got[1].size
            last = got
        dt = (last[0]["t_ns"] - h0["t_ns"]) * 1e-9
        rate = (samples - last[1].size) / dt if dt > 0 else 0.0
        print(f"stream {topic}: {sub.received} blocks, {samples} samples, lost {sub.lost}, "
              f"restarts {sub.restarts}, rate {rate:.0f} samples/s "
              f"(last block {last[1].dtype.str}{list(last[1].shape)}, mean {float(last[1].mean()):.4g} "
              f"{last[0].get('units', '')})")
        if sub.lost:
            print(f"iv_scan.py: {sub.lost} blocks of {topic} were lost", file=sys.stderr)
        return sub.lost == 0
    finally:
        sub.close()


def load_curve(key_file, server_key):
    """The CURVE socket options for --key and --server-key (a .pub file or
    the 40-character Z85 key). Key files are CZMQ certificates, as labmq
    keygen writes them."""
    if not key_file and not server_key:
        return None
    if not key_file or not server_key:
        raise LabmqError("ARG", "--key and --server-key go together")
    if os.stat(key_file).st_mode & 0o077:
        raise LabmqError("PERMISSION", f"{key_file} holds a secret key that other users may read: chmod 600 {key_file}")
    public, secret = zmq.auth.load_certificate(key_file)
    if not secret:
        raise LabmqError("CONFIG", f"{key_file} holds no secret key (give the key pair, not the .pub file)")
    server = server_key.encode() if len(server_key) == 40 and not os.path.exists(server_key) \
        else zmq.auth.load_certificate(server_key)[0]
    return {zmq.CURVE_SERVERKEY: server, zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret}


def main():
    ap = argparse.ArgumentParser(description="I-V sweep through a labmq daemon (pyzmq + json + numpy only).")
    ap.add_argument("endpoint_pos", nargs="?", metavar="ENDPOINT", help="control endpoint (same as --endpoint)")
    ap.add_argument("-e", "--endpoint", help="control endpoint (default: the per-user ipc endpoint)")
    ap.add_argument("-d", "--data", help="data endpoint (default: the one the daemon reports in ping)")
    ap.add_argument("--psu", default="psu1")
    ap.add_argument("--daq", default="daq1")
    ap.add_argument("--vmax", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--ilimit", type=float, default=0.05)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--key", metavar="FILE", help="this client's key pair, for a daemon with keys")
    ap.add_argument("--server-key", metavar="KEY", help="the daemon's public key: its .pub file or Z85 text")
    args = ap.parse_args()
    endpoint = args.endpoint or args.endpoint_pos or default_endpoint("control")
    try:
        curve = load_curve(args.key, args.server_key)
    except (LabmqError, OSError, ValueError) as e:
        print(f"iv_scan.py: keys: {e}", file=sys.stderr)
        return 2

    ctx = zmq.Context()
    client = Client(ctx, endpoint, curve=curve)
    psu = Device(client, args.psu)
    daq = Device(client, args.daq)
    ok = False
    output_on = False
    range_before = None
    try:
        info = client.ping()
        data_ep = args.data or connectable(info["data"], endpoint)
        print(f"daemon: {info['daemon']} {info['version']} at {endpoint}, data {data_ep}")
        range_before = daq.get("ai_range")  # shared with every user of the board: restore it
        psu.set("current_limit", args.ilimit)
        psu.set("voltage", 0.0)
        output_on = True  # from here on, always switch the output off again
        psu.set("output", True)
        print(f"sweep: {args.psu} 0..{args.vmax:g} V in {args.steps} steps, limit {args.ilimit:g} A, "
              f"current via {args.daq}/ai0")
        ok = sweep(psu, daq, args) and watch_stream(ctx, data_ep, f"{args.daq}/wave", args.seconds, curve)
    except LabmqError as e:
        if e.code == "UNREACHABLE":
            print(f"iv_scan.py: {e.message}\n            start one first, e.g.: "
                  f"labmqd --config examples/sim-lab.yaml", file=sys.stderr)
        else:
            print(f"iv_scan.py: {e}", file=sys.stderr)
    finally:
        try:
            if output_on:
                psu.set("voltage", 0.0)
                psu.set("output", False)
            if range_before is not None:
                daq.set("ai_range", range_before)
        except LabmqError as e:
            print(f"iv_scan.py: cleaning up: {e}", file=sys.stderr)
            ok = False
        client.close()
        ctx.term()
    print("iv_scan.py:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
