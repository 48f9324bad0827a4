"""Subscriptions to data streams (docs/protocol.md 3).

A block is three frames: the topic "DEVICE/STREAM", a JSON header (seq,
epoch, t_ns, dtype, shape, units) and the raw little-endian payload. seq is
gap-free at the publisher, so a jump within one epoch is lost blocks; a new
epoch is a restart of the publisher (daemon or device), not a loss.

Change events (protocol 3.1) travel on the same endpoint under
"$events/DEVICE": Events receives them, as an iterator or with a callback
run on a thread of its own."""

import json
import os
import threading
import time
import typing

import numpy as np
import zmq

from . import _process, _wire, errors
from . import keys as _keys


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


def _header(raw, what):
    """The JSON header of a published message (block or event) with its
    protocol and its seq, epoch and t_ns checked; `what` names it in the
    ProtoError ("block header on daq1/wave")."""
    try:
        h = json.loads(raw)
    except ValueError as e:
        raise errors.ProtoError(f"{what} is not JSON: {e}") from None
    if not isinstance(h, dict) or h.get("v") != _wire.PROTOCOL:
        raise errors.ProtoError(f"{what} is not protocol {_wire.PROTOCOL}: {h!r:.200}")
    for key in ("seq", "epoch", "t_ns"):
        if not isinstance(h.get(key), int) or isinstance(h.get(key), bool) or h[key] < 0:
            raise errors.ProtoError(f"{what}: {key} is not a non-negative integer")
    return h


def parse_block(topic, parts):
    """(header, array) of a received message, or ProtoError. None for a
    message of another topic (SUBSCRIBE matches prefixes: "daq1/wave" also
    lets "daq1/wave2" through)."""
    if bytes(parts[0].buffer) != topic:
        return None
    if len(parts) != 3:
        raise errors.ProtoError(f"block on {topic.decode()} has {len(parts)} frames, expected 3")
    h = _header(parts[1].bytes, f"block header on {topic.decode()}")
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


EVENTS_PREFIX = "$events/"


def check_topic(topic):
    if isinstance(topic, str) and topic.startswith(EVENTS_PREFIX):
        raise errors.ArgError(f"{topic!r} carries change events, not stream blocks: use lab.events() "
                              "or device.events()")
    if not isinstance(topic, str) or topic.count("/") != 1 or topic.startswith("/") or topic.endswith("/"):
        raise errors.ArgError(f"a stream topic is 'DEVICE/STREAM' (e.g. 'daq1/wave'), not {topic!r}")
    return topic


class _Counters:
    """received, lost and restarts of the receiver's tracker (self._t)."""

    received = property(lambda self: self._t.received)
    lost = property(lambda self: self._t.lost)
    restarts = property(lambda self: self._t.restarts)


class _Iterates:
    """Iteration and `with` in terms of the receiver's recv, open and close."""

    def __iter__(self):
        return self

    def __next__(self):
        return self.recv()

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()


class _Receiver(_Iterates):
    """A SUB socket on one topic prefix of a data endpoint, per process."""

    def __init__(self, endpoint, prefix, timeout, keys=None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.keys = keys
        self._prefix = prefix.encode()
        self._pid = None
        self._sock = None
        self._reset()

    def _socket(self):
        pid = os.getpid()
        if self._pid != pid:
            if self._sock is not None:
                _process.abandon(self._sock)
                self._reset()  # a forked child starts afresh
            self._sock = None
            self._pid = pid
        if self._sock is None:
            self._sock = _process.connect(zmq.SUB, self.endpoint, self.keys, "data endpoint",
                                          subscribe=self._prefix)
        return self._sock

    def open(self):
        """Connects now (otherwise the first recv does): what is published
        from then on can be received."""
        self._socket()
        return self

    def recv(self, timeout=...):
        """The next item, waiting up to `timeout` seconds (default: the
        receiver's; None = for ever); TimeoutError when none came."""
        if timeout is ...:
            timeout = self.timeout
        sock = self._socket()
        ms = None if timeout is None else max(0, int(timeout * 1000))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not sock.poll(ms):
                raise errors.TimeoutError(f"no {self._what()} within {timeout:g} s from {self.endpoint}")
            got = self._parse(sock.recv_multipart(copy=False))
            if got is not None:
                return got
            if deadline is not None:
                ms = max(0, int((deadline - time.monotonic()) * 1000))

    def close(self):
        if self._sock is not None and self._pid == os.getpid():
            self._sock.close(linger=0)
        self._sock = None


class _Blocks(_Counters):
    """What a Subscription is, whichever receiver (this module's or
    labmq.aio's) brings its messages."""

    def __init__(self, endpoint, topic, *, timeout=None, keys=None):
        self.topic = check_topic(topic)
        super().__init__(endpoint, topic, timeout, _keys.make(keys))

    def _reset(self):
        self._t = Tracker()

    def _what(self):
        return f"block on {self.topic}"

    def _parse(self, parts):
        got = parse_block(self._prefix, parts)
        return None if got is None else self._t.block(self.topic, *got)


class Subscription(_Blocks, _Receiver):
    """Blocks of one stream: `for block in sub:` or `sub.recv(timeout)`.

    `received`, `lost` and `restarts` count blocks, blocks missing from seq
    gaps, and epoch changes. The first block sets the starting point: blocks
    published before it are not lost. After a daemon restart ZeroMQ
    reconnects by itself and the new epoch counts as a restart.

    A malformed block raises ProtoError (and is skipped; the subscription
    goes on). In a forked child a subscription opens its own socket and
    starts afresh (counters at zero). Pickles as (endpoint, topic)."""

    def __reduce__(self):
        return (_subscription, (self.endpoint, self.topic, self.timeout, self.keys))

    def __repr__(self):
        return (f"<labmq.Subscription {self.topic} at {self.endpoint}: received {self.received}, "
                f"lost {self.lost}, restarts {self.restarts}>")

MODES = ("lossless", "lossy")
DEFAULT_WINDOW = 256
MAX_WINDOW = 1000


class FlowSubscription(_Counters, _Iterates):
    """Blocks of one stream through a flow subscription on the control
    endpoint (docs/protocol.md 3.2): the daemon sends at most `window` blocks
    ahead and queues the rest, bounded in bytes; beyond the bound "lossless"
    drops the newest block (what arrives is an unbroken prefix: for
    recorders) and "lossy" the oldest (a slow reader sees the newest: for
    displays). Drops are counted in the daemon's stats and seen here as seq
    gaps (`lost`), like every loss.

    recv() returns credit as blocks are consumed, renews the lease and
    subscribes again after a daemon restart or an expired lease: call it at
    least every 3 s. The daemon's refusal (an unknown stream: NotFoundError)
    is raised by recv(). Same interface and counters as Subscription; in a
    forked child it opens its own connection and starts afresh."""

    def __init__(self, control_endpoint, topic, mode, *, window=None, timeout=None, keys=None):
        self.topic = check_topic(topic)
        self.keys = _keys.make(keys)
        if mode not in MODES:
            raise errors.ArgError(f"mode must be 'lossless' or 'lossy', not {mode!r}")
        window = DEFAULT_WINDOW if window is None else window
        if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= MAX_WINDOW:
            raise errors.ArgError(f"window must be an integer from 1 to {MAX_WINDOW} (blocks), not {window!r}")
        self.endpoint, self.mode, self.window, self.timeout = control_endpoint, mode, window, timeout
        self._topic = topic.encode()
        self._pid = self._sock = None
        self._t = Tracker()
        self._lease = 10.0
        self._limit, self._overhead = float("inf"), 0

    def _socket(self):
        if self._pid != os.getpid():
            if self._sock is not None:
                _process.abandon(self._sock)
                self._t = Tracker()
            self._sock, self._pid = None, os.getpid()
        if self._sock is None:
            self._sock = _process.connect(zmq.DEALER, self.endpoint, self.keys, "control endpoint")
            self._next_id = 0
            self._series = self._last_sub = 0
            self._subscribe()
        return self._sock

    def _send(self, header):
        self._next_id += 1
        header = {"v": _wire.PROTOCOL, "id": self._next_id, **header}
        self._sent = time.monotonic()
        try:
            self._sock.send(_wire.dumps(header), zmq.DONTWAIT)
        except zmq.Again:
            return None
        return self._next_id

    def _subscribe(self):
        self._state, self._owed, self._owed_bytes = "subscribing", 0, 0
        rid = self._send({"op": "subscribe", "topics": [self.topic], "mode": self.mode, "window": self.window})
        if rid is not None:
            self._series, self._last_sub = rid, rid

    def _service(self):
        """Credit, renewal and retries when due; seconds until next due."""
        now = time.monotonic()
        if self._state == "subscribing":
            if now - self._sent >= self._lease:
                self._subscribe()
            return self._sent + self._lease - now
        if self._state == "refused":
            if now >= self._retry:
                self._subscribe()
                return self._lease
            return self._retry - now
        # Pipelined: half the window (or, with large blocks, a quarter of the
        # daemon's bound) comes back while the rest is on its way.
        if (self._owed >= max(1, self.window // 2) or (self._owed and self._owed_bytes >= self._limit / 4)
                or now - self._sent >= self._lease / 3):
            if self._send({"op": "credit", "n": self._owed}) is not None:
                self._owed = self._owed_bytes = 0
        return self._sent + self._lease / 3 - now

    def _reply(self, parts):
        try:
            reply = json.loads(parts[0].bytes)
            rid = reply["id"]
        except (ValueError, KeyError, TypeError):
            raise errors.ProtoError(f"malformed reply on {self.endpoint}: {parts[0].bytes!r:.200}") from None
        if not isinstance(rid, int) or rid < self._series:
            return  # about a subscription that is gone
        ok = reply.get("ok") is True
        if rid <= self._last_sub:
            if self._state != "subscribing":
                return  # a duplicate subscribe's answer
            if ok:
                self._state, self._owed, self._owed_bytes = "active", 0, 0
                result = reply.get("result") or {}
                lease, limit, overhead = result.get("lease_s"), result.get("memory_limit"), result.get("block_overhead")
                if isinstance(lease, (int, float)) and 1 <= lease <= 3600:
                    self._lease = float(lease)
                self._limit = limit if isinstance(limit, int) and limit > 0 else float("inf")
                self._overhead = overhead if isinstance(overhead, int) and overhead >= 0 else 0
                return
            self._state, self._retry = "refused", time.monotonic() + 1.0
            raise errors.from_reply(reply.get("error"))
        if not ok and self._state == "active":
            err = reply.get("error") or {}
            if err.get("code") == "NOTFOUND":
                self._subscribe()  # the lease expired or the daemon restarted
                return
            raise errors.from_reply(err)

    def open(self):
        """Subscribes now (otherwise the first recv does)."""
        self._socket()
        return self

    def recv(self, timeout=...):
        """The next Block, waiting up to `timeout` seconds (default: the
        subscription's; None = for ever); TimeoutError when none came."""
        if timeout is ...:
            timeout = self.timeout
        sock = self._socket()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            due = self._service()
            left = None if deadline is None else deadline - time.monotonic()
            wait = due if left is None else min(due, left)
            if not sock.poll(max(0, int(wait * 1000) + 1)):
                if left is not None and left <= due:
                    raise errors.TimeoutError(f"no block on {self.topic} within {timeout:g} s from {self.endpoint}")
                continue
            parts = sock.recv_multipart(copy=False)
            if parts[0].bytes[:1] == b"{":
                self._reply(parts)
                continue
            if self._state == "active":
                self._owed += 1  # every block sent spends a credit
                self._owed_bytes += self._overhead + sum(len(p) for p in parts)
            got = parse_block(self._topic, parts)
            if got is not None:
                return self._t.block(self.topic, *got)

    def close(self):
        """Unsubscribes (the daemon frees its queue at once) and closes."""
        if self._sock is not None and self._pid == os.getpid():
            rid = self._send({"op": "unsubscribe"}) if self._state == "active" else None
            deadline = time.monotonic() + 0.2
            while rid is not None and self._sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                head = self._sock.recv_multipart()[0]
                try:
                    reply = json.loads(head) if head[:1] == b"{" else None
                except ValueError:
                    reply = None
                if isinstance(reply, dict) and reply.get("id") == rid:
                    break
            self._sock.close(linger=0)
        self._sock = None

    def __reduce__(self):
        return (_flow_subscription, (self.endpoint, self.topic, self.mode, self.window, self.timeout, self.keys))

    def __repr__(self):
        return (f"<labmq.FlowSubscription {self.topic} ({self.mode}) at {self.endpoint}: received "
                f"{self.received}, lost {self.lost}, restarts {self.restarts}>")


def _flow_subscription(endpoint, topic, mode, window, timeout, keys=None):
    return FlowSubscription(endpoint, topic, mode, window=window, timeout=timeout, keys=keys)


class Event(typing.NamedTuple):
    """A change event (protocol 3.1). kind "property": `name` and `value`
    (arrays as numpy arrays) are the property's new value, `cause` is "set",
    "restore" or "driver". kind "state": `state` is the device's new state,
    `cause` why ("opened", "reconnected", "restored", "lost", "open failed",
    "stuck" (to "fault"), "responding" (back from "fault"), "stopped"),
    `error` the reason when there is one. `lost_before` counts
    this device's events missed just before this one."""

    device: str
    kind: str
    name: typing.Optional[str]
    value: typing.Any
    cause: typing.Optional[str]
    state: typing.Optional[str]
    error: typing.Optional[str]
    seq: int
    epoch: int
    t_ns: int
    lost_before: int = 0
    restarted: bool = False


def parse_event(prefix, exact, parts):
    """An Event's fields from a received message (without loss accounting),
    ProtoError for a malformed one, None for a foreign topic ("$events/psu1"
    also lets "$events/psu10" through)."""
    topic = bytes(parts[0].buffer)
    if (exact and topic != prefix) or not topic.startswith(prefix):
        return None
    where = topic.decode(errors="replace")
    if len(parts) < 2:
        raise errors.ProtoError(f"event on {where} without a header")
    h = _header(parts[1].bytes, f"event header on {where}")
    for key in ("device", "kind"):
        if not isinstance(h.get(key), str) or not h[key]:
            raise errors.ProtoError(f"event header on {where}: {key} is not a non-empty string")
    for key in ("name", "cause", "state", "error"):
        if h.get(key) is not None and not isinstance(h[key], str):
            raise errors.ProtoError(f"event header on {where}: {key} is not a string")
    value = h.get("value")
    if isinstance(value, (dict, list)):
        value = _wire.decode_value(value, [p.buffer for p in parts[2:]])
    return h, value


class EventTracker:
    """Loss and restart bookkeeping of protocol 3.1: seq per device, anew
    with each epoch. Shared with labmq.aio."""

    def __init__(self):
        self.received = self.lost = self.restarts = 0
        self._track = {}  # device -> (epoch, seq)

    def event(self, h, value):
        lost, restarted = 0, False
        last = self._track.get(h["device"])
        if last is not None:
            if last[0] != h["epoch"]:
                restarted = True
                self.restarts += 1
            elif h["seq"] > last[1] + 1:
                lost = h["seq"] - last[1] - 1
                self.lost += lost
        self._track[h["device"]] = (h["epoch"], h["seq"])
        self.received += 1
        return Event(h["device"], h["kind"], h.get("name"), value, h.get("cause"), h.get("state"), h.get("error"),
                     h["seq"], h["epoch"], h["t_ns"], lost, restarted)


class _EventsOf(_Counters):
    """What Events is, whichever receiver (this module's or labmq.aio's)
    brings its messages."""

    def __init__(self, endpoint, device=None, *, timeout=None, keys=None):
        if device is not None and (not isinstance(device, str) or not device or "/" in device):
            raise errors.ArgError(f"events: a device name, or None for every device, not {device!r}")
        self.device = device
        super().__init__(endpoint, EVENTS_PREFIX + (device or ""), timeout, _keys.make(keys))

    def _reset(self):
        self._t = EventTracker()

    def _what(self):
        return f"change event of {self.device}" if self.device else "change event"

    def _parse(self, parts):
        got = parse_event(self._prefix, self.device is not None, parts)
        return None if got is None else self._t.event(*got)


class Events(_EventsOf, _Receiver):
    """Change events of one device (device="psu1") or of every device
    (device=None), as an iterator (`for ev in events:`), with recv(timeout),
    or handed to a callback on a thread (start(callback) ... stop()).

    `lost` counts events missed (seq gaps per device within an epoch),
    `restarts` epoch changes; the first event of each device sets its
    starting point. Events before the subscription reached the daemon are
    not sent to it: open() (or `with`) subscribes before you act. Pickles as
    (endpoint, device); a forked child opens its own socket."""

    def __init__(self, endpoint, device=None, *, timeout=None, keys=None):
        super().__init__(endpoint, device, timeout=timeout, keys=keys)
        self._thread = None
        self._stop = None

    def start(self, callback, *, on_error=None):
        """Calls callback(event) for each event, on a thread of its own (which
        alone uses the socket from then on) until stop(). A malformed event
        goes to on_error(exc) if given, else is skipped. Returns self."""
        if self._thread is not None:
            raise errors.ArgError("events: already started; stop() first")
        self.open()  # subscribed before start() returns
        self._stop = threading.Event()
        stop = self._stop

        def run():
            while not stop.is_set():
                try:
                    ev = self.recv(0.1)
                except errors.TimeoutError:
                    continue
                except errors.ProtoError as e:
                    if on_error is not None:
                        on_error(e)
                    continue
                callback(ev)

        self._thread = threading.Thread(target=run, name=f"labmq-events-{self.device or 'all'}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=5.0):
        """Stops the callback thread (waiting for a callback that is running)."""
        if self._thread is not None:
            self._stop.set()
            if self._thread is not threading.current_thread():
                self._thread.join(timeout)
            self._thread = None

    def close(self):
        self.stop()
        super().close()

    def __reduce__(self):
        return (_events, (self.endpoint, self.device, self.timeout, self.keys))

    def __repr__(self):
        return (f"<labmq.Events {self.device or 'all devices'} at {self.endpoint}: received {self.received}, "
                f"lost {self.lost}, restarts {self.restarts}>")


def _events(endpoint, device, timeout, keys=None):
    return Events(endpoint, device, timeout=timeout, keys=keys)


def _subscription(endpoint, topic, timeout, keys=None):
    return Subscription(endpoint, topic, timeout=timeout, keys=keys)

