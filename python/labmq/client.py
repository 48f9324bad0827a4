"""Lab and Device: the synchronous client (labmq.aio has the same on asyncio)."""

import inspect
import keyword
import os

from . import _local, _wire, errors
from . import keys as _keys
from ._channel import Channel, check_timeout, describe_request, result_of
from .stream import Events, FlowSubscription, Subscription

DEFAULT_TIMEOUT = 2.0  # seconds; LMQ_PROXY_DEFAULT_TIMEOUT_MS in the C library


def connect(endpoint=None, *, timeout=DEFAULT_TIMEOUT, data=None, key=None, server_key=None, keys=None):
    """A Lab: the daemon at `endpoint` (default: the per-user ipc endpoint the
    C library and labmqd use, see default_endpoint()). Nothing is sent yet:
    an absent daemon shows up as UnreachableError on the first request.
    `timeout` (seconds) bounds every request; `data` overrides the data
    endpoint the daemon reports in ping. A daemon with keys (docs/security.md)
    needs `key` (this client's key file) and `server_key` (the daemon's .pub
    file or Z85 key), or `keys=labmq.Keys(...)`; its devices and
    subscriptions use them too."""
    return Lab(endpoint, timeout=timeout, data=data, keys=_keys.make(keys, key, server_key))


def _lab(endpoint, timeout, data, keys=None):
    return Lab(endpoint, timeout=timeout, data=data, keys=keys)


class _LabBase:
    """What Lab and labmq.aio.Lab share: all but sending and waiting. A
    subclass names its channel class, the function that unpickles it and
    the package its repr names."""

    def __init__(self, endpoint=None, *, timeout=DEFAULT_TIMEOUT, data=None, keys=None):
        self._channel = self._channel_class(endpoint or _wire.default_endpoint("control"), timeout,
                                            _keys.make(keys))
        self._data = data

    @property
    def endpoint(self):
        return self._channel.endpoint

    @property
    def timeout(self):
        """Seconds each request may take (send and reply) before
        UnreachableError or TimeoutError."""
        return self._channel.timeout

    @timeout.setter
    def timeout(self, value):
        self._channel.timeout = check_timeout(value)

    @staticmethod
    def _request_header(op, fields):
        """The header of a raw request and its binary frames."""
        frames = []
        header = {"op": op}
        for key, value in fields.items():
            if key == "args" and isinstance(value, (list, tuple)):  # positional arguments, each a value
                header[key] = [_wire.encode_value(a, frames, f"argument {i} of {op}") for i, a in enumerate(value, 1)]
            elif key == "devices" and isinstance(value, (list, tuple)):  # lock/unlock: names, not an array
                header[key] = [str(name) for name in value]
            else:
                header[key] = _wire.encode_value(value, frames, f"{op} field {key!r}")
        return header, frames

    @staticmethod
    def _stats_header(device):
        header = {"op": "stats"}
        if device is not None:
            header["device"] = device
        return header

    def close(self):
        self._channel.close()

    def __reduce__(self):
        return (self._unpickle, (self.endpoint, self.timeout, self._data, self._channel.keys))

    def __repr__(self):
        return f"{self._package}.connect({self.endpoint!r})"


class Lab(_LabBase):
    """A daemon: its devices, ping, stats, and subscriptions to its streams.
    Pickles as its endpoint; usable in a forked child (which opens its own
    socket)."""

    _channel_class = Channel
    _unpickle = staticmethod(_lab)
    _package = "labmq"

    def request(self, op, *, timeout=None, **fields):
        """A raw request: {"op": op, **fields} (protocol 2.1), for ops this
        package has no method for. Returns the result; raises the error."""
        return self._channel.request(*self._request_header(op, fields), timeout)

    def ping(self):
        """{"daemon", "version", "protocol", "control", "data", "uptime_s",
        "config"}; config: {"generation", "loaded_ns", "last_reload",
        "last_reload_ns"} (protocol 2.4)."""
        return self._channel.request({"op": "ping"})

    def devices(self):
        """The daemon's devices: a list of {"name", "driver", "description",
        "state", "open", "error"} (protocol 2.4 `list`)."""
        return self._channel.request({"op": "list"})

    def describe(self, device):
        return self._channel.request({"op": "describe", "device": device})

    def stats(self, device=None):
        """Requests, errors, latency and stream counters (protocol 2.4)."""
        return self._channel.request(self._stats_header(device))

    def workers(self):
        """The worker processes the daemon supervises: a list of {"name",
        "state", "pid", "restarts", "uptime_s", "restart", "last_exit",
        "error"} (protocol 2.4 `workers`)."""
        return self._channel.request({"op": "workers"})

    def device(self, name):
        """The proxy of device `name` (no request is made until it is used)."""
        return Device(self.endpoint, name, self.timeout, keys=self._channel.keys, _data=self._data)

    __getitem__ = device

    def data_endpoint(self):
        """The data endpoint as this process can connect to it: the one given
        to connect(), else the daemon's (ping), with a wildcard host replaced
        by the host used for control (protocol 2.4)."""
        if self._data is None:
            self._data = _wire.connectable_data_endpoint(self.ping()["data"], self.endpoint)
        return self._data

    def subscribe(self, topic, *, timeout=None, mode=None, window=None):
        """A Subscription to "DEVICE/STREAM": iterate it for Blocks.
        `timeout` (seconds, None = wait for ever) bounds each wait. With
        `mode` "lossless" or "lossy", a FlowSubscription on the control
        endpoint instead (protocol 3.2: credit, `window` blocks ahead, the
        daemon's memory bounded, drops counted)."""
        if mode is not None:
            return FlowSubscription(self.endpoint, topic, mode, window=window, timeout=timeout,
                                    keys=self._channel.keys)
        return Subscription(self.data_endpoint(), topic, timeout=timeout, keys=self._channel.keys)

    def events(self, device=None, *, timeout=None):
        """Change events (protocol 3.1) of one device, or of every device."""
        return Events(self.data_endpoint(), device, timeout=timeout, keys=self._channel.keys)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Pending:
    """A request sent without waiting (Device.submit); result() collects it.
    Replies may arrive in any order; each Pending gets its own."""

    __slots__ = ("_device", "_id", "_gen", "_pid", "_what", "_timeout", "_done", "_value", "_error")

    def __init__(self, device, rid, gen, what, timeout):
        self._device, self._id, self._gen, self._what, self._timeout = device, rid, gen, what, timeout
        self._pid = os.getpid()
        self._done = False
        self._value = self._error = None

    @property
    def id(self):
        return self._id

    def result(self, timeout=None):
        """The result, waiting up to `timeout` (default: the proxy's) for the
        reply; raises the error it carries, or TimeoutError. A TIMEOUT
        replaces the proxy's socket, which abandons its other pending
        requests too (protocol 2.5)."""
        if not self._done:
            ch = self._device._channel
            t = self._timeout if timeout is None else check_timeout(timeout)
            if self._pid != os.getpid():
                raise errors.ClosedError(f"{self._what}: sent by process {self._pid}; its reply goes there, "
                                         "not to this forked child")
            with ch._own():
                try:
                    reply, parts = ch.collect(self._id, self._gen, t, self._what)
                    self._value = result_of(reply, parts)
                except errors.Error as e:
                    self._error = e
            self._done = True
        if self._error is not None:
            raise self._error
        return self._value

    def __del__(self):
        if not self._done and self._pid == os.getpid():
            self._device._channel.forget(self._id, self._gen)

    def __repr__(self):
        state = "done" if self._done else "pending"
        return f"<labmq.Pending {self._what} id={self._id} {state}>"


class Method:
    """A device method as a Python callable (from describe): positional
    arguments, or keywords by the names describe gives them."""

    def __init__(self, device, spec):
        self._device = device
        self._spec = spec
        self.__name__ = spec["name"]
        self.__qualname__ = f"{device.name}.{spec['name']}"
        self._argnames = [a.get("name", f"arg{i}") for i, a in enumerate(spec.get("args") or [])]
        self.__doc__ = method_doc(spec)
        try:
            params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        annotation=arg_annotation(a))
                      for n, a in zip(self._argnames, spec.get("args") or [])]
            self.__signature__ = inspect.Signature(params)
        except (ValueError, TypeError):
            pass  # an argument name that is no Python identifier: no signature, calls still work

    def _args(self, args, kwargs):
        if not kwargs:
            return args
        out = list(args)
        for name in self._argnames[len(args):]:
            if name not in kwargs:
                break
            out.append(kwargs.pop(name))
        if kwargs:
            raise errors.ArgError(f"{self.__qualname__}() got unexpected or out-of-order keyword arguments "
                                  f"{', '.join(sorted(kwargs))} (arguments: {', '.join(self._argnames)})")
        return out

    def __call__(self, *args, **kwargs):
        return self._device.call(self.__name__, *self._args(args, kwargs))

    def __repr__(self):
        return f"<labmq method {signature_line(self._spec, self._device.name)}>"


def _device(uri, timeout, keys):
    return Device(uri, None, timeout, keys=keys)


class _DeviceBase:
    """What Device and labmq.aio.Device share: identity, the headers of get,
    set and call, pickling and repr; all but sending and waiting. A subclass
    names its channel class, the function that unpickles it and the package
    its repr names."""

    def __init__(self, uri, device=None, timeout=DEFAULT_TIMEOUT, *, keys=None, _data=None):
        if device is None:
            endpoint, device = _wire.split_uri(uri)
        else:
            endpoint = uri
        if not isinstance(device, str) or not device:
            raise errors.ArgError(f"no device named in {uri!r}: a proxy URI is 'ENDPOINT#DEVICE'")
        object.__setattr__(self, "_channel", self._channel_class(endpoint, timeout, _keys.make(keys)))
        object.__setattr__(self, "_name", device)
        object.__setattr__(self, "_table", None)
        object.__setattr__(self, "_data", _data)

    @property
    def name(self):
        return self._name

    @property
    def endpoint(self):
        return self._channel.endpoint

    @property
    def uri(self):
        """"ENDPOINT#DEVICE": all another process needs to reach the device."""
        return f"{self._channel.endpoint}#{self._name}"

    @property
    def timeout(self):
        """Seconds each request may take (send and reply)."""
        return self._channel.timeout

    @timeout.setter
    def timeout(self, value):
        self._channel.timeout = check_timeout(value)

    def _get_header(self, prop):
        return {"op": "get", "device": self._name, "name": prop}, []

    def _set_header(self, prop, value):
        frames = []
        v = _wire.encode_value(value, frames, f"{self._name}.{prop}")
        return {"op": "set", "device": self._name, "name": prop, "value": v}, frames

    def _call_header(self, method, args):
        if len(args) > _wire.MAX_ARGS:
            raise errors.ArgError(f"{self._name}.{method}: at most {_wire.MAX_ARGS} arguments, got {len(args)}")
        frames = []
        enc = [_wire.encode_value(a, frames, f"argument {i} of {self._name}.{method}")
               for i, a in enumerate(args, 1)]
        return {"op": "call", "device": self._name, "name": method, "args": enc}, frames

    def _topic(self, stream):
        return stream if "/" in stream else f"{self._name}/{stream}"

    def __reduce__(self):
        return (self._unpickle, (self.uri, self.timeout, self._channel.keys))

    def __eq__(self, other):
        # A proxy of the same package (sync or asyncio) on the same URI.
        return isinstance(other, _DeviceBase) and other._package == self._package and other.uri == self.uri

    def __hash__(self):
        return hash(self.uri)

    def __repr__(self):
        # No request here: a repr must work with no daemon and in any process.
        text = f"{self._package}.Device({self.uri!r})"
        if self._table is not None:
            text += f"  # {self._table.get('driver', '?')}: {names_line(self._table)}"
        return text


class Device(_DeviceBase):
    """A proxy: a device name at a daemon's endpoint, e.g.
    Device("ipc:///run/user/1000/labmq/control#psu1") or lab.device("psu1").

    Properties and methods from `describe` are attributes: `psu.voltage`
    reads, `psu.voltage = 2.5` writes, `psu.sweep(0, 3, 16)` calls, and
    dir()/tab completion lists them. get/set/call do the same by name (also
    for names the proxy's own attributes hide). Arrays arrive as numpy
    arrays on the received message's own memory (no copy).

    A Device pickles as its URI (and timeout) and connects lazily wherever it
    is unpickled, and a forked child opens its own socket, so proxies can be
    handed to multiprocessing workers under spawn, fork and forkserver."""

    _channel_class = Channel
    _unpickle = staticmethod(_device)
    _package = "labmq"

    def __init__(self, uri, device=None, timeout=DEFAULT_TIMEOUT, *, keys=None, _data=None):
        super().__init__(uri, device, timeout, keys=keys, _data=_data)
        object.__setattr__(self, "_lane", _local.Lane(self.endpoint, self._name))

    # -- operations --------------------------------------------------------------

    def get(self, prop, *, timeout=None):
        return self._request(*self._get_header(prop), timeout)

    def set(self, prop, value, *, timeout=None):
        self._request(*self._set_header(prop, value), timeout)

    def call(self, method, *args, timeout=None):
        return self._request(*self._call_header(method, args), timeout)

    def _request(self, header, frames, timeout):
        """A get/set/call over the device's local channel when the daemon
        offers one (protocol 6), else over ZeroMQ."""
        ch = self._channel
        t = ch.timeout if timeout is None else check_timeout(timeout)
        with ch._own():
            got = self._lane.request(header, frames, t,
                                     lambda: ch.request({"op": "describe", "device": self._name}, (), t))
        if got is _local.FALLBACK:
            return ch.request(header, frames, timeout)
        return result_of(*got)

    @property
    def last_path(self):
        """The path the last get/set/call took: "local" (the device's local
        channel), "zmq", or "" before the first."""
        return self._lane.last_path

    def submit(self, op, name, *args, timeout=None):
        """Sends a get, set or call without waiting for its reply, and returns
        a Pending: `[psu.submit("get", "voltage") for _ in range(16)]` keeps 16
        requests in flight. Then collect each with .result()."""
        if op == "get" and not args:
            header, frames = self._get_header(name)
        elif op == "set" and len(args) == 1:
            header, frames = self._set_header(name, args[0])
        elif op == "call":
            header, frames = self._call_header(name, args)
        else:
            raise errors.ArgError(f"submit: op is 'get' (no value), 'set' (one value) or 'call', "
                                  f"not {op!r} with {len(args)} values")
        t = self.timeout if timeout is None else check_timeout(timeout)
        with self._channel._own():
            rid, gen = self._channel.send(header, frames, t)
        return Pending(self, rid, gen, describe_request(header), t)

    def describe(self):
        """The device's self-description (fetched anew; attribute access and
        tab completion use the last one)."""
        table = self._channel.request({"op": "describe", "device": self._name})
        object.__setattr__(self, "_table", table)
        return table

    def _described(self):
        return self._table if self._table is not None else self.describe()

    def data_endpoint(self):
        if self._data is None:
            ping = self._channel.request({"op": "ping"})
            object.__setattr__(self, "_data", _wire.connectable_data_endpoint(ping["data"], self.endpoint))
        return self._data

    def subscribe(self, stream, *, timeout=None, mode=None, window=None):
        """A Subscription to one of this device's streams ("wave" or
        "daq1/wave"); with `mode`, a FlowSubscription (see Lab.subscribe)."""
        topic = self._topic(stream)
        if mode is not None:
            return FlowSubscription(self.endpoint, topic, mode, window=window, timeout=timeout,
                                    keys=self._channel.keys)
        return Subscription(self.data_endpoint(), topic, timeout=timeout, keys=self._channel.keys)

    def events(self, *, timeout=None):
        """This device's change events (protocol 3.1): property changes (by any
        client's set, a restore, the driver) and state changes. Iterate, or
        .start(callback)."""
        return Events(self.data_endpoint(), self._name, timeout=timeout, keys=self._channel.keys)

    def close(self):
        """Closes this process's sockets; the next request opens new ones."""
        self._channel.close()
        self._lane.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- attributes from describe --------------------------------------------------

    def __getattr__(self, attr):
        # Only reached for names that are not the proxy's own. Private and
        # dunder names (pickle, copy and IPython probe for them) never cause
        # a request.
        if attr.startswith("_"):
            raise AttributeError(attr)
        table = self._described()
        for p in table.get("properties") or []:
            if p.get("name") == attr:
                return self.get(attr)
        for m in table.get("methods") or []:
            if m.get("name") == attr:
                return Method(self, m)
        raise AttributeError(f"{self._name} has no property or method {attr!r} ({names_line(table)})")

    def __setattr__(self, attr, value):
        if attr.startswith("_") or hasattr(type(self), attr):
            object.__setattr__(self, attr, value)
            return
        table = self._described()
        if any(p.get("name") == attr for p in table.get("properties") or []):
            self.set(attr, value)
            return
        if any(m.get("name") == attr for m in table.get("methods") or []):
            raise AttributeError(f"{self._name}.{attr} is a method, not a property: call it")
        raise AttributeError(f"{self._name} has no property {attr!r} ({names_line(table)})")

    def __dir__(self):
        names = set(super().__dir__())
        try:
            table = self._described()
        except errors.Error:
            return sorted(names)  # no daemon: complete what we have
        names.update(x.get("name") for x in (table.get("properties") or []) + (table.get("methods") or [])
                     if isinstance(x.get("name"), str) and x.get("name").isidentifier()
                     and not keyword.iskeyword(x.get("name")))
        return sorted(names)

    # -- display ---------------------------------------------------------

    def _repr_pretty_(self, printer, cycle):
        """IPython/Jupyter display: the description, as a table."""
        try:
            table = self._described()
        except errors.Error as e:
            printer.text(f"{self!r}  # {e}")
            return
        printer.text(describe_text(self, table))


# -- text for people ----------------------------------------------------------------


def unit_text(unit):
    return f" [{unit}]" if unit else ""


def arg_annotation(arg):
    return f"{arg.get('type', '?')}{unit_text(arg.get('unit'))}"


def limits_text(d):
    lo, hi = d.get("min"), d.get("max")
    if lo is None and hi is None:
        return ""
    return f" {'' if lo is None else f'{lo:g}'}..{'' if hi is None else f'{hi:g}'}"


def signature_line(spec, device=None):
    args = ", ".join(f"{a.get('name')}: {arg_annotation(a)}" for a in spec.get("args") or [])
    ret = spec.get("returns")
    rtext = "None" if not ret else f"{ret.get('type', '?')}{unit_text(ret.get('unit'))}"
    prefix = f"{device}." if device else ""
    return f"{prefix}{spec.get('name')}({args}) -> {rtext}"


def method_doc(spec):
    lines = [signature_line(spec), "", spec.get("doc") or ""]
    for a in spec.get("args") or []:
        lines.append(f"  {a.get('name')}: {arg_annotation(a)}{limits_text(a)}  {a.get('doc') or ''}".rstrip())
    return "\n".join(lines).rstrip()


def names_line(table):
    props = ", ".join(p.get("name", "?") for p in table.get("properties") or []) or "none"
    methods = ", ".join(m.get("name", "?") for m in table.get("methods") or []) or "none"
    return f"properties: {props}; methods: {methods}"


def _property_line(p):
    return (f"{p.get('name'):<18} {p.get('type', '?'):<6} {p.get('access', '?'):<2}"
            f"{unit_text(p.get('unit'))}{limits_text(p)}  {p.get('doc') or ''}")


def _method_line(m):
    return f"{signature_line(m)}  {m.get('doc') or ''}"


def _stream_line(s):
    return (f"{s.get('topic')}  {s.get('dtype')}{s.get('shape')}{unit_text(s.get('units'))}"
            f" at {s.get('rate_hz', 0):g} Hz  {s.get('doc') or ''}")


def describe_text(device, table):
    lines = [f"{device.uri}  {table.get('driver', '?')}, {table.get('state', '?')}: {table.get('description', '')}"]
    for key, entry_line in (("properties", _property_line), ("methods", _method_line), ("streams", _stream_line)):
        entries = table.get(key) or []
        if entries:
            lines.append(f"{key}:")
            lines.extend(f"  {entry_line(e)}".rstrip() for e in entries)
    return "\n".join(lines)

