"""Subscriptions to data streams (docs/protocol.md 3).

A block is three frames: the topic "DEVICE/STREAM", a JSON header (seq,
epoch, t_ns, dtype, shape, units) and the raw little-endian payload. seq is
gap-free at the publisher, so a jump within one epoch is lost blocks; a new
epoch is a restart of the publisher (daemon or device), not a loss.

(Change events of a device will arrive the same way once the daemon
publishes them: a Subscription to the device's event topic is the hook a
`Device.events()` iterator is to be built on; nothing here pretends to
deliver them before the protocol defines them.)"""

import json
import os
import time
import typing

import numpy as np
import zmq

from . import _process, _wire, errors


class Block(typing.NamedTuple):
    """One published block. `data` is a numpy array on the
    received message's own memory (no copy); `lost_before` counts the blocks missing just
    before this one, `restarted` says it opens a new epoch."""

    data: np.ndarray
    seq: int
    epoch: int
    t_ns: int
    units: str
    topic: str
    lost_before: int = 0
    restarted: bool = False


_HEADER_INTS = ("seq", "epoch", "t_ns")


def parse_block(topic, parts):
    """(header, array) of a received message, or ProtoError. None for a
    message of another topic (SUBSCRIBE matches prefixes: "daq1/wave" also
    lets "daq1/wave2" through)."""
    if bytes(parts[0].buffer) != topic:
        return None
    if len(parts) != 3:
        raise errors.ProtoError(f"block on {topic.decode()} has {len(parts)} frames, expected 3")
    try:
        h = json.loads(parts[1].bytes)
    except ValueError as e:
        raise errors.ProtoError(f"block header on {topic.decode()} is not JSON: {e}") from None
    if not isinstance(h, dict) or h.get("v") != _wire.PROTOCOL:
        raise errors.ProtoError(f"block header on {topic.decode()} is not protocol {_wire.PROTOCOL}: {h!r:.200}")
    for key in _HEADER_INTS:
        if not isinstance(h.get(key), int) or isinstance(h.get(key), bool) or h[key] < 0:
            raise errors.ProtoError(f"block header on {topic.decode()}: {key} is not a non-negative integer")
    if not isinstance(h.get("units"), str):
        raise errors.ProtoError(f"block header on {topic.decode()}: units is not a string")
    data = _wire.array_from_buffer(parts[2].buffer, h.get("dtype"), h.get("shape"), f"block on {topic.decode()}")
    return h, data


class Tracker:
    """The loss and restart bookkeeping of protocol 3, shared with labmq.aio."""

    def __init__(self):
        self.received = self.lost = self.restarts = 0
        self.epoch = self.seq = None

    def block(self, topic, h, data):
        lost, restarted = 0, False
        if self.epoch is not None and h["epoch"] != self.epoch:
            restarted = True
            self.restarts += 1
        elif self.seq is not None and h["seq"] > self.seq + 1:
            lost = h["seq"] - self.seq - 1
            self.lost += lost
        self.epoch, self.seq = h["epoch"], h["seq"]
        self.received += 1
        return Block(data, h["seq"], h["epoch"], h["t_ns"], h["units"], topic, lost, restarted)


def check_topic(topic):
    if not isinstance(topic, str) or topic.count("/") != 1 or topic.startswith("/") or topic.endswith("/"):
        raise errors.ArgError(f"a stream topic is 'DEVICE/STREAM' (e.g. 'daq1/wave'), not {topic!r}")
    return topic


class Subscription:
    """Blocks of one stream: `for block in sub:` or `sub.recv(timeout)`.

    `received`, `lost` and `restarts` count blocks, blocks missing from seq
    gaps, and epoch changes. The first block sets the starting point: blocks
    published before it are not lost. After a daemon restart ZeroMQ
    reconnects by itself and the new epoch counts as a restart.

    A malformed block raises ProtoError (and is skipped; the subscription
    goes on). In a forked child a subscription opens its own socket and
    starts afresh (counters at zero). Pickles as (endpoint, topic)."""

    def __init__(self, endpoint, topic, *, timeout=None):
        self.endpoint = endpoint
        self.topic = check_topic(topic)
        self.timeout = timeout
        self._topic = topic.encode()
        self._pid = None
        self._sock = None
        self._t = Tracker()

    received = property(lambda self: self._t.received)
    lost = property(lambda self: self._t.lost)
    restarts = property(lambda self: self._t.restarts)

    def _socket(self):
        pid = os.getpid()
        if self._pid != pid:
            if self._sock is not None:
                _process.abandon(self._sock)
            self._sock = None
            self._t = Tracker()
            self._pid = pid
        if self._sock is None:
            sock = _process.context().socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            try:
                sock.connect(self.endpoint)
            except zmq.ZMQError as e:
                sock.close(linger=0)
                raise errors.ArgError(f"cannot connect to data endpoint {self.endpoint!r}: {e}") from None
            sock.setsockopt(zmq.SUBSCRIBE, self._topic)
            self._sock = sock
        return self._sock

    def open(self):
        """Connects now (otherwise the first recv does): blocks published
        from then on can be received."""
        self._socket()
        return self

    def recv(self, timeout=...):
        """The next Block, waiting up to `timeout` seconds (default: the
        subscription's; None = for ever); TimeoutError when none came."""
        if timeout is ...:
            timeout = self.timeout
        sock = self._socket()
        ms = None if timeout is None else max(0, int(timeout * 1000))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not sock.poll(ms):
                raise errors.TimeoutError(f"no block on {self.topic} within {timeout:g} s from {self.endpoint}")
            got = parse_block(self._topic, sock.recv_multipart(copy=False))
            if got is not None:
                return self._t.block(self.topic, *got)
            if deadline is not None:
                ms = max(0, int((deadline - time.monotonic()) * 1000))

    def __iter__(self):
        return self

    def __next__(self):
        return self.recv()

    def close(self):
        if self._sock is not None and self._pid == os.getpid():
            self._sock.close(linger=0)
        self._sock = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def __reduce__(self):
        return (_subscription, (self.endpoint, self.topic, self.timeout))

    def __repr__(self):
        return (f"<labmq.Subscription {self.topic} at {self.endpoint}: received {self.received}, "
                f"lost {self.lost}, restarts {self.restarts}>")


def _subscription(endpoint, topic, timeout):
    return Subscription(endpoint, topic, timeout=timeout)

