"""The wire format of docs/protocol.md: default endpoints, proxy URIs,
request headers, and values (numpy arrays as binary frames, both ways)."""

import json
import math
import os

import numpy as np

from . import errors

PROTOCOL = 1
# Protocol 2.2: the dtypes an array may have on the wire.
DTYPES = ("|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f4", "<f8")
MAX_DIMS = 4
# Protocol 2.1: ids are integers below 2^53 (a double holds them exactly).
MAX_ID = 1 << 53
# Limits the daemon enforces (protocol 4); checked here so the error names the
# argument instead of arriving as PROTO.
MAX_ARGS = 32
MAX_FRAMES = 16
# sockaddr_un.sun_path holds 108 bytes with its NUL (Linux).
SUN_PATH_MAX = 107


def default_endpoint(which="control"):
    """The endpoint a daemon binds when given none, as the C library finds it
    (core/src/paths.c): ipc://$XDG_RUNTIME_DIR/labmq/WHICH, or
    ipc:///tmp/labmq-$UID/WHICH when XDG_RUNTIME_DIR is unset or relative
    (the XDG spec says to ignore a relative one)."""
    if which not in ("control", "data"):
        raise errors.ArgError(f"default_endpoint: which must be 'control' or 'data', not {which!r}")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    directory = f"{xdg}/labmq" if xdg and xdg.startswith("/") else f"/tmp/labmq-{os.getuid()}"
    path = f"{directory}/{which}"
    if len(path.encode()) > SUN_PATH_MAX:
        raise errors.ConfigError(f"the default endpoint's socket path {path!r} is longer than the "
                                 f"{SUN_PATH_MAX} bytes a Unix socket address holds (XDG_RUNTIME_DIR is too long)")
    return f"ipc://{path}"


def split_uri(uri):
    """"ENDPOINT#DEVICE" -> (endpoint, device or None), as lmq_proxy_open
    splits it (at the last '#'; an empty device is none)."""
    if not isinstance(uri, str) or not uri:
        raise errors.ArgError(f"a proxy URI is a non-empty string 'ENDPOINT#DEVICE', not {uri!r}")
    endpoint, sep, device = uri.rpartition("#")
    if not sep:
        return uri, None
    if not endpoint:
        raise errors.ArgError(f"proxy URI {uri!r} has no endpoint before '#'")
    return endpoint, device or None


def connectable_data_endpoint(data, control):
    """Protocol 2.4: a daemon bound to every interface (tcp://*:P,
    tcp://0.0.0.0:P, tcp://[::]:P) is reached at the host this client used
    for control; lmq_proxy_data_endpoint falls back to 127.0.0.1 when the
    control endpoint is not TCP."""
    for wildcard in ("tcp://0.0.0.0:", "tcp://[::]:", "tcp://*:"):
        if data.startswith(wildcard):
            host = "127.0.0.1"
            if control.startswith("tcp://") and control.rfind(":") > len("tcp://"):
                host = control[len("tcp://"):control.rfind(":")]
            return f"tcp://{host}:{data[len(wildcard):]}"
    return data


def encode_value(value, frames, what):
    """A Python value as a protocol 2.2 JSON value; numpy arrays (and lists
    or tuples, which become arrays) are appended to frames as raw
    little-endian C-order bytes and referenced by {"$frame": K, ...}. `what`
    names the value in errors ("argument 2 of psu1.sweep")."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise errors.ArgError(f"{what}: {value} cannot be sent (JSON has no NaN or infinity)")
        return value
    if isinstance(value, np.generic) and not isinstance(value, (np.void, np.object_)):
        return encode_value(value.item(), frames, what)
    if isinstance(value, (list, tuple)):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        dt = value.dtype
        if dt.kind not in "uif" or dt.itemsize not in (1, 2, 4, 8) or (dt.kind == "f" and dt.itemsize < 4):
            raise errors.ArgError(f"{what}: arrays of {dt} cannot be sent (dtypes: {' '.join(DTYPES)})")
        if value.ndim > MAX_DIMS:
            raise errors.ArgError(f"{what}: arrays have at most {MAX_DIMS} dimensions, this one has {value.ndim}")
        if len(frames) >= MAX_FRAMES:
            raise errors.ArgError(f"{what}: a request carries at most {MAX_FRAMES} arrays")
        # Little-endian and C order; neither copies an array that already is.
        # (asarray, not ascontiguousarray, which makes a 0-d array 1-d.)
        a = np.asarray(value, dtype=dt.newbyteorder("<") if dt.itemsize > 1 else dt, order="C")
        frames.append(a)  # sent from the array's own memory (buffer protocol)
        return {"$frame": len(frames), "dtype": a.dtype.str, "shape": list(a.shape)}
    raise errors.ArgError(f"{what}: a {type(value).__name__} cannot be sent "
                          "(values are None, bool, int, float, str or numpy arrays)")


def dumps(header):
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode()


def decode_value(value, frames):
    """The reverse for replies: array references become numpy arrays that
    share the received frame's memory (no copy; the message is ours alone, so
    the arrays are writable)."""
    if isinstance(value, dict):
        if "$frame" in value:
            return decode_array(value, frames)
        return {k: decode_value(v, frames) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_value(v, frames) for v in value]
    return value


def array_from_buffer(buf, dtype, shape, what):
    """numpy view of buf with dtype and shape from a header; ProtoError when
    they do not describe it."""
    if dtype not in DTYPES:
        raise errors.ProtoError(f"{what}: dtype {dtype!r} is not one of {' '.join(DTYPES)}")
    # Protocol 2.2: at most 4 dimensions; [] is a 0-dimensional array of one element.
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise errors.ProtoError(f"{what}: shape {shape!r} is not a list of at most {MAX_DIMS} sizes")
    dt = np.dtype(dtype)
    need = math.prod(shape) * dt.itemsize
    have = memoryview(buf).nbytes
    if have != need:
        raise errors.ProtoError(f"{what}: the binary frame has {have} bytes; dtype and shape need {need}")
    if need == 0:
        return np.empty(shape, dtype=dt)
    return np.frombuffer(buf, dtype=dt).reshape(shape)  # shape [] gives a 0-d array


def decode_array(ref, frames):
    k = ref.get("$frame")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(frames):
        raise errors.ProtoError(f"reply refers to binary frame {k!r}, but carries {len(frames)}")
    return array_from_buffer(frames[k - 1], ref.get("dtype"), ref.get("shape"), f"array in binary frame {k}")
