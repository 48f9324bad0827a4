"""A device's local channel (docs/protocol.md 6): synchronous get, set and
call straight to the device's thread over a Unix SOCK_SEQPACKET socket,
when the daemon is on this host and offers one.

The lane asks describe for the socket once (again after the channel closed,
and not more than every 2 s while there is none), and falls back to the
ZeroMQ channel for everything it cannot carry: no channel, a request larger
than one record, a daemon that went away before the request was delivered.
It keeps the client rules of protocol 2.5: a timeout closes the connection
so that a late reply is never read; the end of the connection with a
request outstanding is ClosedError (whether it took effect is unknown).
Submitted (pipelined) requests and the asyncio client stay on ZeroMQ.

LABMQ_NO_LOCAL=1 in the environment keeps proxies off the channel.
LABMQ_LOCAL_SPIN_US (default 50, 0 never) is how long a call polls for its
reply before it sleeps, as the C proxy does (protocol 6)."""

import json
import os
import random
import socket
import struct
import time

from . import _wire, errors

MORE = 0x01
RETRY_S = 2.0
SPIN_BUSY_S = 200e-6  # a yield this long: the CPU is busy with other work
SPIN_HOLD_S = 0.1     # then no polling for this long
# Used when a request cannot go this way: the caller sends it by ZeroMQ.
FALLBACK = object()


def spin_seconds():
    """How long to poll for a reply before sleeping: LABMQ_LOCAL_SPIN_US
    (0..10000 µs, default 50; anything else: the default), none with one CPU.
    A thread woken from another CPU costs 20-40 µs on a VM."""
    v = os.environ.get("LABMQ_LOCAL_SPIN_US", "")
    us = int(v) if v.isdigit() and int(v) <= 10000 else 50
    try:
        cpus = os.sysconf("SC_NPROCESSORS_ONLN")
    except (ValueError, OSError):
        cpus = 1
    return us / 1e6 if cpus > 1 else 0.0


def disabled():
    v = os.environ.get("LABMQ_NO_LOCAL", "")
    return v not in ("", "0")


def split(msg):
    """The frames of a whole message (frame count, lengths, frames)."""
    if len(msg) < 4:
        raise errors.ProtoError("local channel: a message without a frame count")
    (n,) = struct.unpack_from("<I", msg, 0)
    if not 1 <= n <= 1 + _wire.MAX_FRAMES:
        raise errors.ProtoError(f"local channel: {n} frames in a message")
    lens = struct.unpack_from(f"<{n}I", msg, 4)
    off = 4 + 4 * n
    frames = []
    view = memoryview(msg)  # arrays are made on the received bytes, not copies
    for ln in lens:
        if off + ln > len(msg):
            raise errors.ProtoError("local channel: a frame runs past the message")
        frames.append(view[off:off + ln])
        off += ln
    if off != len(msg):
        raise errors.ProtoError("local channel: bytes after the last frame")
    return frames


class _Frame:
    """What result_of expects of a binary frame: a .buffer."""
    __slots__ = ("buffer",)

    def __init__(self, buf):
        self.buffer = buf


class Lane:
    def __init__(self, endpoint, device):
        self.endpoint = endpoint
        self.device = device
        self.state = "off" if disabled() or not endpoint.startswith("ipc://") else "probe"
        self.retry_at = 0.0
        self.path = None
        self.record_max = 0
        self.sock = None
        self.pid = None
        self.next_id = random.randrange(_wire.MAX_ID // 2)
        self.last_path = ""
        self.spin = spin_seconds()
        self.spin_on = True  # the last reply came within the spin window
        self.spin_hold = 0.0  # no polling before (the CPU was busy with other work)

    def _poll_reply(self, sock, n):
        """Polls for a reply for up to self.spin seconds, yielding the CPU
        between polls: the record, or None (the caller then sleeps on the
        socket). As the C proxy (core/src/local.h, lmq__spin_t): polling
        stops after a miss until a reply comes quickly again, and for 0.1 s
        after a yield that took long (the CPU is busy with other work, which
        a yield hands a whole time slice)."""
        if not self.spin_on or self.spin <= 0:
            return None
        sock.settimeout(0.0)
        start = time.monotonic()
        while True:
            try:
                return sock.recv(n)
            except (BlockingIOError, InterruptedError):
                pass
            t0 = time.monotonic()
            os.sched_yield()
            t1 = time.monotonic()
            if t1 - t0 > SPIN_BUSY_S:
                self.spin_on, self.spin_hold = False, t1 + SPIN_HOLD_S
                return None
            if t1 - start >= self.spin:
                self.spin_on = False
                return None

    def _slept(self, waited):
        if not self.spin_on and self.spin > 0 and waited < self.spin and time.monotonic() >= self.spin_hold:
            self.spin_on = True

    def close(self):
        if self.sock is not None and self.pid == os.getpid():
            self.sock.close()
        self.sock = None

    def _drop(self, state):
        self.close()
        self.state = state
        if state == "none":
            self.retry_at = time.monotonic() + RETRY_S

    def _ensure(self, describe):
        """A connected socket, or None (go by ZeroMQ). describe() asks the
        daemon; its errors (UNREACHABLE, TIMEOUT) go to the caller."""
        if self.pid != os.getpid():  # a forked child connects on its own
            self.sock = None
            self.pid = os.getpid()
            if self.state == "on":
                self.state = "connect"
        if self.sock is not None:
            return self.sock
        if self.state == "off" or (self.state == "none" and time.monotonic() < self.retry_at):
            return None
        if self.state in ("none", "probe"):
            try:
                loc = describe().get("local")
            except (errors.UnreachableError, errors.TimeoutError):
                raise
            except errors.Error:
                loc = None  # no such device, say: the ZeroMQ path reports it
            path = loc.get("path") if isinstance(loc, dict) else None
            rmax = loc.get("record_max") if isinstance(loc, dict) else None
            if not isinstance(path, str) or not isinstance(rmax, int) or rmax < 64:
                self._drop("none")  # an older daemon, or none offered
                return None
            self.path, self.record_max = path, rmax
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            self._drop("none")  # gone, refused, not permitted: ZeroMQ
            return None
        self.record_max = min(self.record_max, s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - 64)
        self.sock, self.state = s, "on"
        return s

    def request(self, header, frames, timeout, describe):
        """The reply to a get/set/call as (header, frames), or FALLBACK."""
        sock = self._ensure(describe)
        if sock is None:
            self.last_path = "zmq"
            return FALLBACK
        rid = self.next_id
        self.next_id = rid + 1 if rid + 1 < _wire.MAX_ID else 0
        header = dict(header, v=_wire.PROTOCOL, id=rid)
        try:
            data = _wire.dumps(header)
        except (ValueError, TypeError):
            return FALLBACK  # the ZeroMQ path names the problem
        parts = [data] + [f.tobytes() if hasattr(f, "tobytes") else bytes(f) for f in frames]
        body = struct.pack(f"<I{len(parts)}I", len(parts), *(len(p) for p in parts)) + b"".join(parts)
        if 1 + len(body) > self.record_max:
            self.last_path = "zmq"
            return FALLBACK
        sock.settimeout(timeout)
        try:
            sock.send(b"\x00" + body)
        except (socket.timeout, BlockingIOError):
            self._drop("connect")
            raise errors.TimeoutError(f"{self.device}: the local channel took no request within "
                                      f"{timeout * 1000:.0f} ms") from None
        except OSError:
            self._drop("probe")  # nothing was delivered: the daemon went away or restarted
            self.last_path = "zmq"
            return FALLBACK
        self.last_path = "local"
        start = time.monotonic()
        deadline = start + timeout
        acc = b""
        while True:
            left = deadline - time.monotonic()
            try:
                rec = self._poll_reply(sock, self.record_max + 1) if not acc else None
                if rec is None:
                    if left <= 0:
                        raise socket.timeout
                    sock.settimeout(left)
                    rec = sock.recv(self.record_max + 1)
                    self._slept(time.monotonic() - start)
            except socket.timeout:
                self._drop("connect")  # a fresh connection: the late reply is never read
                raise errors.TimeoutError(f"{header['op']} {self.device}.{header.get('name', '')}: no reply within "
                                          f"{timeout * 1000:.0f} ms on the local channel") from None
            except OSError:
                rec = b""
            if not rec:
                self._drop("probe")
                raise errors.ClosedError(f"{self.device}: the daemon closed the local channel before answering "
                                         "(it stopped or died); whether the request took effect is unknown")
            acc += rec[1:]
            if rec[0] & MORE:
                continue
            try:
                msg = split(acc)
                reply = json.loads(bytes(msg[0]))
            except (ValueError, errors.Error):
                self._drop("connect")
                raise errors.ProtoError(f"{self.device}: a malformed reply on the local channel") from None
            acc = b""
            if not isinstance(reply, dict) or reply.get("id") != rid:
                continue  # not ours: dropped (protocol 2)
            return reply, [_Frame(f) for f in msg[1:]]
