"""The control connection of one proxy: a DEALER socket that follows the
client rules of docs/protocol.md 2.5, and survives fork().

- ZMQ_IMMEDIATE and a send timeout (ZMQ_SNDTIMEO) equal to the call's
  timeout: with no connected daemon the send itself times out, which is
  UnreachableError, and the request was never queued.
- Once sent, no reply within the timeout is TimeoutError; the socket is then
  closed (LINGER 0) and a fresh one opened on the next request, so the late
  reply of a request still queued at a hung device is never read. The same
  path recovers from a daemon restart: ZeroMQ reconnects by itself.
- Replies are matched by id; a reply whose id nobody awaits is dropped.
- A forked child never touches the parent's socket: it notices the pid
  changed and opens its own socket on its own context (see _process).

One request at a time holds the channel's lock, so a proxy may be shared by
threads (their calls take turns)."""

import json
import os
import random
import threading
import time

import zmq

from . import _process, _wire, errors


_KEYS_HINT = ("; with keys: is this client's public key on the daemon's allow-list, and is the server key "
              "the daemon's public key?")


class _Slot:
    __slots__ = ("parts",)

    def __init__(self):
        self.parts = None


class ChannelBase:
    """The half of a channel that does not wait, shared with labmq.aio's:
    endpoint, timeout, keys, request ids, and a request's encoding and
    send-timeout failure."""

    def __init__(self, endpoint, timeout, keys=None):
        if not isinstance(endpoint, str) or not endpoint:
            raise errors.ArgError(f"an endpoint is a non-empty string such as 'ipc:///path' or "
                                  f"'tcp://host:port', not {endpoint!r}")
        self.endpoint = endpoint
        self.timeout = check_timeout(timeout)
        self.keys = keys  # labmq.Keys: every socket is a CURVE client
        self._sock = None
        self._sndtimeo = None
        self._waiting = {}  # id -> whoever awaits the reply to a request sent on this socket
        # Ids start at a random point, as lmq_proxy's do, so that replies meant
        # for an earlier client on a reused connection are not taken for ours.
        self._next_id = random.randrange(_wire.MAX_ID // 2)

    def _encode(self, sock, header, timeout):
        """(id, bytes, send timeout in ms) of a request about to go out on
        sock: header (without v and id) gets both, and sock a send timeout of
        the request's timeout."""
        ms = int(timeout * 1000)
        if self._sndtimeo != ms:
            sock.setsockopt(zmq.SNDTIMEO, ms)
            self._sndtimeo = ms
        rid = self._next_id
        self._next_id = rid + 1 if rid + 1 < _wire.MAX_ID else 0
        header["v"] = _wire.PROTOCOL
        header["id"] = rid
        try:
            data = _wire.dumps(header)
        except (ValueError, TypeError) as e:
            raise errors.ArgError(f"{describe_request(header)}: cannot encode the request: {e}") from None
        return rid, data, ms

    def _unreachable(self, ms):
        """The error of a send that timed out: the request was never queued,
        so it cannot reach a daemon that starts later."""
        return errors.UnreachableError(f"no labmqd answers at {self.endpoint} (no connection within {ms} ms"
                                       f"{_KEYS_HINT if self.keys is not None else ''})")


class Channel(ChannelBase):
    def __init__(self, endpoint, timeout, keys=None):
        super().__init__(endpoint, timeout, keys)
        self._pid = None
        self._lock = None
        # Bumped whenever the socket is replaced: requests sent on an older
        # socket can no longer be answered.
        self._gen = 0

    # -- process and socket ------------------------------------------------

    def _own(self):
        """The lock of this process's view of the channel; in a forked child,
        first leaves the parent's socket alone and starts afresh."""
        pid = os.getpid()
        if self._pid != pid:
            with _process.lock():
                if self._pid != pid:
                    if self._sock is not None:
                        _process.abandon(self._sock)
                    self._sock = None
                    self._sndtimeo = None
                    self._gen += 1
                    self._waiting = {}
                    self._lock = threading.RLock()
                    self._pid = pid
        return self._lock

    def _socket(self):
        sock = self._sock
        if sock is None:
            sock = _process.connect(zmq.DEALER, self.endpoint, self.keys, "endpoint", immediate=True)
            self._sock = sock
            self._sndtimeo = None
        return sock

    def _replace_socket(self):
        if self._sock is not None:
            self._sock.close(linger=0)
        self._sock = None
        self._gen += 1
        self._waiting = {}

    @property
    def socket(self):
        """This process's socket, or None before the first request (tests use
        it to prove which socket served what)."""
        return self._sock if self._pid == os.getpid() else None

    def close(self):
        """Closes this process's socket (a parent's is left alone)."""
        with self._own():
            self._replace_socket()

    # -- requests ------------------------------------------------------------

    def send(self, header, frames, timeout):
        """Sends a request (header without v and id); returns (id, gen).
        Call with the lock held."""
        sock = self._socket()
        rid, data, ms = self._encode(sock, header, timeout)
        try:
            if frames:
                sock.send_multipart([data] + frames, copy=False)
            else:
                sock.send(data)
        except zmq.Again:
            raise self._unreachable(ms) from None
        self._waiting[rid] = _Slot()
        return rid, self._gen

    def collect(self, rid, gen, timeout, what):
        """The reply to request rid as (header, binary frames): waits up to timeout,
        keeping replies to other awaited requests for their collectors and
        dropping those nobody awaits. Call with the lock held."""
        slot = self._waiting.get(rid) if gen == self._gen else None
        if slot is None:
            raise errors.TimeoutError(f"{what}: abandoned: the socket it was sent on was replaced after a "
                                      "timeout, so its reply can no longer arrive")
        sock = self._sock
        deadline = time.monotonic() + timeout
        while slot.parts is None:
            # Try first, poll only when nothing is there: a pipelined reply
            # is usually waiting already, and a poll is a system call.
            try:
                head = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(max(1, int(left * 1000 + 0.999))):
                    self._replace_socket()
                    raise errors.TimeoutError(
                        f"{what}: no reply within {timeout * 1000:.0f} ms from {self.endpoint}") from None
                continue
            # The header as bytes, the binary frames without a copy (numpy
            # arrays are made on their memory).
            frames = []
            while sock.get(zmq.RCVMORE):
                frames.append(sock.recv(copy=False))
            try:
                reply = json.loads(head)
                other = self._waiting[reply["id"]]
            except (ValueError, TypeError, KeyError):
                continue  # not a reply anybody here awaits: dropped (protocol 2)
            other.parts = (reply, frames)
        del self._waiting[rid]
        return slot.parts

    def forget(self, rid, gen):
        """A pending request nobody will collect: its reply is to be dropped."""
        if self._pid == os.getpid() and gen == self._gen:
            self._waiting.pop(rid, None)

    def request(self, header, frames=(), timeout=None):
        """Sends a request and waits for its reply; returns the decoded result
        or raises the error the reply carries."""
        timeout = self.timeout if timeout is None else check_timeout(timeout)
        with self._own():
            rid, gen = self.send(header, list(frames), timeout)
            reply, parts = self.collect(rid, gen, timeout, describe_request(header))
        return result_of(reply, parts)


def check_timeout(timeout):
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 86400:
        raise errors.ArgError(f"timeout is in seconds, more than 0 and at most 86400, not {timeout!r}")
    return float(timeout)


def describe_request(header):
    op = header.get("op", "?")
    device = header.get("device")
    name = header.get("name")
    target = ".".join(x for x in (device, name) if isinstance(x, str))
    return f"{op} {target}" if target else op


def result_of(reply, frames):
    """The value of a reply header (binary frames: zmq.Frame objects), or the
    exception its error names."""
    if not isinstance(reply, dict) or reply.get("v") != _wire.PROTOCOL:
        raise errors.ProtoError(f"reply is not a protocol {_wire.PROTOCOL} reply: {reply!r:.200}")
    if reply.get("ok") is True:
        result = reply.get("result")
        if isinstance(result, (dict, list)):
            return _wire.decode_value(result, [p.buffer for p in frames])
        return result
    raise errors.from_reply(reply.get("error"))
