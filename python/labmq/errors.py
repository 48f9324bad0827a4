"""Exceptions: one class per labmq status code (core/src/status.c), all under
labmq.Error. An error reply from the daemon raises the class of its code with
the daemon's message; the client raises UnreachableError (no daemon answers
at the endpoint) and TimeoutError (no reply in time) itself (protocol 2.5).

Some class names (TimeoutError, IOError, PermissionError, SystemError) are
also Python built-ins: use them qualified (labmq.TimeoutError), or catch
labmq.Error and look at .code. They are deliberately not subclasses of the
built-ins, so `except labmq.Error` is the one place every labmq failure
lands."""

class Error(Exception):
    """A labmq failure. `code` is the wire name ("TIMEOUT"), `status` the C
    library's negative enum lmq_status value, `message` the daemon's (or the
    client's) text saying what failed and why."""

    code = "ERROR"
    status = None

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            # An error code this client does not know (protocol 5: codes may
            # be added within version 1): keep the daemon's name for it.
            self.code = code

    def __str__(self):
        return f"{self.code}: {self.message}"

    def __reduce__(self):
        # Exceptions cross process boundaries too (multiprocessing returns a
        # worker's exception to the parent): keep code and message.
        return (_rebuild, (type(self), self.message, self.code))


def _rebuild(cls, message, code):
    if cls is Error:
        return Error(message, code)
    return cls(message)


BY_CODE = {}


def _make(code, status, name, doc):
    cls = type(name, (Error,), {"code": code, "status": status, "__doc__": f"{code}: {doc}.", "__module__": __name__})
    BY_CODE[code] = cls
    return cls


# In the order of core/include/labmq/status.h (append-only there, so here).
ArgError = _make("ARG", -1, "ArgError", "invalid argument: wrong type, count or value")
MemError = _make("MEM", -2, "MemError", "out of memory")
TimeoutError = _make("TIMEOUT", -3, "TimeoutError", "no answer within the timeout")  # noqa: A001
IOError = _make("IO", -4, "IOError", "I/O with the instrument failed (unplugged, hang-up)")  # noqa: A001
DeviceError = _make("DEVICE", -5, "DeviceError", "the instrument reported an error or is not open")
ClosedError = _make("CLOSED", -6, "ClosedError", "closed or shutting down")
ProtoError = _make("PROTO", -7, "ProtoError", "malformed or unsupported message")
NotFoundError = _make("NOTFOUND", -8, "NotFoundError", "no such device, method, property or stream")
UnreachableError = _make("UNREACHABLE", -9, "UnreachableError", "no daemon answers at the endpoint")
BusyError = _make("BUSY", -10, "BusyError", "endpoint already served by another daemon")
ConfigError = _make("CONFIG", -11, "ConfigError", "invalid configuration")
RangeError = _make("RANGE", -12, "RangeError", "value outside the property's or argument's limits")
ReadOnlyError = _make("READONLY", -13, "ReadOnlyError", "property cannot be written")
PermissionError = _make("PERMISSION", -14, "PermissionError",  # noqa: A001
                        "permission denied (by the operating system or the daemon)")
SystemError = _make("SYSTEM", -15, "SystemError",  # noqa: A001
                    "the operating system refused a resource (thread, socket, process)")
LockedError = _make("LOCKED", -16, "LockedError", "the device is locked by another client (the message names it)")
OutcomeUnknownError = _make("OUTCOME_UNKNOWN", -17, "OutcomeUnknownError",
                            "the request may or may not have run: its reply was lost; do not retry blindly")


def from_reply(error):
    """The exception for an error reply's "error" object (protocol 2.3)."""
    if not isinstance(error, dict):
        return ProtoError(f"error reply without an error object: {error!r}")
    code = error.get("code")
    message = error.get("message")
    if not isinstance(message, str):
        message = "error reply without a message"
    if not isinstance(code, str):
        return ProtoError(f"error reply without a code ({message})")
    cls = BY_CODE.get(code)
    return cls(message) if cls else Error(message, code)
