"""labmq on asyncio (zmq.asyncio): the API of labmq with `await`.

    import labmq.aio
    lab = labmq.aio.connect()
    psu = lab.device("psu1")
    await psu.set("voltage", 2.5)         # or: await psu.call("sweep", 0, 3, 16)
    v = await psu.voltage                 # attribute reads are awaitables ...
    iv = await psu.sweep(0, 3, 16)        # ... and method calls coroutines
    async for block in lab.subscribe("daq1/wave"):
        ...

Requests in flight at once (asyncio.gather) share the proxy's socket; replies
are matched by id. Protocol 2.5 holds as in the synchronous client: the send
timeout (ZMQ_SNDTIMEO, which zmq.asyncio honours: an unsent request is
withdrawn) gives UnreachableError, no reply in time gives TimeoutError and a
fresh socket, replies nobody awaits are dropped. Proxies pickle as their URI
and, in a forked child or under another event loop, open a socket of their
own. Writing a property by assignment is not possible with await: use
`await psu.set(...)`."""

import asyncio
import json
import os

import zmq
import zmq.asyncio

from . import _process, _wire, errors
from . import keys as _keys
from ._channel import ChannelBase, check_timeout, describe_request, result_of
from .client import DEFAULT_TIMEOUT, _DeviceBase, _LabBase, describe_text
from .stream import _Blocks, _EventsOf

_actx = None
_actx_pid = None


def _context():
    """zmq.asyncio view of this process's one ZeroMQ context."""
    global _actx, _actx_pid
    ctx = _process.context()
    if _actx_pid != os.getpid() or _actx is None:
        _actx = zmq.asyncio.Context.shadow(ctx.underlying)
        _actx_pid = os.getpid()
    return _actx


def _let_go(sock, was, now):
    """Lets go of a socket made for owner `was` (pid, event loop) on behalf
    of owner `now`: one of this process, made under another event loop, is
    closed; a parent's is never touched (_process). True in a forked child."""
    if was[0] == now[0]:
        sock.close(linger=0)
        return False
    _process.abandon(sock)
    return True


class _Channel(ChannelBase):
    """Channel (labmq._channel) on asyncio: one reader task per socket hands
    each reply to the future of its id while any are awaited."""

    def __init__(self, endpoint, timeout, keys=None):
        super().__init__(endpoint, timeout, keys)
        self._owner = None  # (pid, loop) the socket belongs to
        self._reader = None

    def _socket(self):
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._owner != owner:
            if self._sock is not None:
                _let_go(self._sock, self._owner, owner)
            self._sock, self._reader, self._waiting, self._owner = None, None, {}, owner
        if self._sock is None:
            self._sock = _process.connect(zmq.DEALER, self.endpoint, self.keys, "endpoint", ctx=_context(),
                                          immediate=True)
            self._sndtimeo = None
        return self._sock

    def _replace_socket(self):
        if self._reader is not None:
            self._reader.cancel()
        if self._sock is not None and self._owner and self._owner[0] == os.getpid():
            self._sock.close(linger=0)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(errors.TimeoutError(
                    "abandoned: the socket it was sent on was replaced after a timeout, so its reply can "
                    "no longer arrive"))
        self._sock, self._reader, self._waiting = None, None, {}

    async def _read(self, sock, waiting):
        while waiting:
            parts = await sock.recv_multipart(copy=False)
            try:
                reply = json.loads(parts[0].bytes)
                fut = waiting.pop(reply["id"])
            except (ValueError, TypeError, KeyError, IndexError):
                continue  # nobody here awaits it: dropped (protocol 2)
            if not fut.done():
                fut.set_result((reply, parts[1:]))

    async def request(self, header, frames=(), timeout=None):
        timeout = self.timeout if timeout is None else check_timeout(timeout)
        sock = self._socket()
        rid, data, ms = self._encode(sock, header, timeout)
        what = describe_request(header)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await sock.send_multipart([data] + list(frames), copy=False)
        except zmq.Again:
            raise self._unreachable(ms) from None
        fut = loop.create_future()
        waiting = self._waiting
        waiting[rid] = fut
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read(sock, waiting))
        try:
            reply, parts = await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            if sock is self._sock:
                self._replace_socket()
            raise errors.TimeoutError(f"{what}: no reply within {ms} ms from {self.endpoint}") from None
        finally:
            waiting.pop(rid, None)
            if not waiting and self._reader is not None and sock is self._sock:
                self._reader.cancel()  # nothing left to read for (a cancelled caller)
                self._reader = None
        return result_of(reply, parts)

    def close(self):
        self._replace_socket()


def connect(endpoint=None, *, timeout=DEFAULT_TIMEOUT, data=None, key=None, server_key=None, keys=None):
    """labmq.connect on asyncio (no request is made here)."""
    return Lab(endpoint, timeout=timeout, data=data, keys=_keys.make(keys, key, server_key))


def _lab(endpoint, timeout, data, keys=None):
    return Lab(endpoint, timeout=timeout, data=data, keys=keys)


class Lab(_LabBase):
    _channel_class = _Channel
    _unpickle = staticmethod(_lab)
    _package = "labmq.aio"

    async def request(self, op, *, timeout=None, **fields):
        return await self._channel.request(*self._request_header(op, fields), timeout)

    async def ping(self):
        return await self._channel.request({"op": "ping"})

    async def devices(self):
        return await self._channel.request({"op": "list"})

    async def describe(self, device):
        return await self._channel.request({"op": "describe", "device": device})

    async def stats(self, device=None):
        return await self._channel.request(self._stats_header(device))

    async def workers(self):
        return await self._channel.request({"op": "workers"})

    def device(self, name):
        return Device(self.endpoint, name, self.timeout, keys=self._channel.keys, _data=self._data)

    __getitem__ = device

    async def data_endpoint(self):
        if self._data is None:
            self._data = _wire.connectable_data_endpoint((await self.ping())["data"], self.endpoint)
        return self._data

    def subscribe(self, topic, *, timeout=None):
        """An async Subscription (the data endpoint is asked of the daemon on
        its first recv)."""
        return Subscription(self.data_endpoint, topic, timeout=timeout, keys=self._channel.keys)

    def events(self, device=None, *, timeout=None):
        """Change events of one device or of every device (async iterator)."""
        return Events(self.data_endpoint, device, timeout=timeout, keys=self._channel.keys)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()


class Member:
    """`device.x` on asyncio: `await device.x` reads property x,
    `await device.x(args)` calls method x (the daemon says NOTFOUND if x is
    not one)."""

    __slots__ = ("_device", "_name")

    def __init__(self, device, name):
        self._device, self._name = device, name

    def __await__(self):
        return self._device.get(self._name).__await__()

    def __call__(self, *args):
        return self._device.call(self._name, *args)

    def __repr__(self):
        return f"<labmq.aio member {self._device.name}.{self._name}: await it to get, call it to call>"


def _device(uri, timeout, keys):
    return Device(uri, None, timeout, keys=keys)


class Device(_DeviceBase):
    """labmq.Device on asyncio."""

    _channel_class = _Channel
    _unpickle = staticmethod(_device)
    _package = "labmq.aio"

    async def get(self, prop, *, timeout=None):
        return await self._channel.request(*self._get_header(prop), timeout)

    async def set(self, prop, value, *, timeout=None):
        await self._channel.request(*self._set_header(prop, value), timeout)

    async def call(self, method, *args, timeout=None):
        return await self._channel.request(*self._call_header(method, args), timeout)

    async def describe(self):
        table = await self._channel.request({"op": "describe", "device": self._name})
        object.__setattr__(self, "_table", table)
        return table

    async def data_endpoint(self):
        if self._data is None:
            ping = await self._channel.request({"op": "ping"})
            object.__setattr__(self, "_data", _wire.connectable_data_endpoint(ping["data"], self.endpoint))
        return self._data

    def subscribe(self, stream, *, timeout=None):
        return Subscription(self.data_endpoint, self._topic(stream), timeout=timeout, keys=self._channel.keys)

    def events(self, *, timeout=None):
        return Events(self.data_endpoint, self._name, timeout=timeout, keys=self._channel.keys)

    def close(self):
        self._channel.close()

    def __getattr__(self, attr):
        if attr.startswith("_"):
            raise AttributeError(attr)
        return Member(self, attr)

    def __setattr__(self, attr, value):
        if attr.startswith("_") or hasattr(type(self), attr):
            object.__setattr__(self, attr, value)
            return
        raise AttributeError(f"{self._name}.{attr} = ...: assignment cannot be awaited; "
                             f"use `await {self._name}.set({attr!r}, value)`")

    def __dir__(self):
        names = set(super().__dir__())
        if self._table is not None:  # completion from the last `await dev.describe()`
            names.update(x.get("name") for x in (self._table.get("properties") or [])
                         + (self._table.get("methods") or []) if isinstance(x.get("name"), str)
                         and x.get("name").isidentifier())
        return sorted(names)

    def _repr_pretty_(self, printer, cycle):
        printer.text(describe_text(self, self._table) if self._table is not None else repr(self))


class _Receiver:
    """A SUB socket on a topic prefix, per process and event loop. The data
    endpoint is a string, or a coroutine function that finds it (ping)."""

    def __init__(self, endpoint, prefix, timeout, keys=None):
        self._endpoint = endpoint
        self.timeout = timeout
        self.keys = keys
        self._prefix = prefix.encode()
        self._owner = None
        self._sock = None
        self._reset()

    @property
    def endpoint(self):
        return self._endpoint if isinstance(self._endpoint, str) else None

    async def open(self):
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._owner != owner:
            if self._sock is not None and _let_go(self._sock, self._owner, owner):
                self._reset()  # a forked child starts afresh
            self._sock, self._owner = None, owner
        if self._sock is None:
            if not isinstance(self._endpoint, str):
                self._endpoint = await self._endpoint()
            self._sock = _process.connect(zmq.SUB, self._endpoint, self.keys, "data endpoint", ctx=_context(),
                                          subscribe=self._prefix)
        return self

    async def recv(self, timeout=...):
        if timeout is ...:
            timeout = self.timeout
        await self.open()
        sock = self._sock
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                parts = await asyncio.wait_for(sock.recv_multipart(copy=False), left)
            except asyncio.TimeoutError:
                raise errors.TimeoutError(f"no {self._what()} within {timeout:g} s from "
                                          f"{self._endpoint}") from None
            got = self._parse(parts)
            if got is not None:
                return got

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.recv()

    def close(self):
        if self._sock is not None and self._owner and self._owner[0] == os.getpid():
            self._sock.close(linger=0)
        self._sock = None

    async def __aenter__(self):
        return await self.open()

    async def __aexit__(self, *exc):
        self.close()


class Subscription(_Blocks, _Receiver):
    """labmq.Subscription on asyncio: `async for block in sub`, or
    `await sub.recv(timeout)`."""

    def __repr__(self):
        return (f"<labmq.aio.Subscription {self.topic}: received {self.received}, lost {self.lost}, "
                f"restarts {self.restarts}>")


class Events(_EventsOf, _Receiver):
    """labmq.Events on asyncio: `async for ev in events` (no callback thread:
    a task that iterates is the asyncio form)."""

    def __repr__(self):
        return (f"<labmq.aio.Events {self.device or 'all devices'}: received {self.received}, lost {self.lost}, "
                f"restarts {self.restarts}>")

