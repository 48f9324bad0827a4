"""One ZeroMQ context per process, made anew in a forked child.

A forked child inherits copies of its parent's context and sockets. libzmq
objects must never be used (or closed) from the copy: their I/O threads do
not exist in the child, and the socket's connection is the parent's. So
every object that owns a socket remembers the pid that made it, and when the
pid changes it drops the inherited socket into `_inherited` (kept referenced
here, never closed or used, so no finaliser touches it either) and opens its
own on this process's own context."""

import os
import threading

import zmq

from . import errors

_lock = threading.Lock()
_ctx = None
_ctx_pid = None
_inherited = []


def _after_fork_in_child():
    # A thread of the parent may have held the lock at the fork; it does not
    # exist here, so the lock would stay held for ever.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def lock():
    """The process-wide lock that guards the switch to a child's own objects."""
    return _lock


def context():
    """This process's ZeroMQ context (made on first use, and anew after fork)."""
    global _ctx, _ctx_pid
    pid = os.getpid()
    if _ctx_pid == pid:
        return _ctx
    with _lock:
        if _ctx_pid != pid:
            if _ctx is not None:
                _inherited.append(_ctx)
            _ctx = zmq.Context()
            _ctx_pid = pid
        return _ctx


def abandon(obj):
    """Keeps a parent's socket or context alive and untouched in a child."""
    _inherited.append(obj)


def connect(kind, endpoint, keys, what, *, ctx=None, immediate=False, subscribe=None):
    """A socket of `kind` connected to endpoint, on ctx (default: this
    process's context); `what` names the endpoint in the error ("data
    endpoint"). LINGER 0: a request or credit still queued must never hold up
    close() or the process's exit."""
    sock = (ctx or context()).socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if immediate:
        # Queue a request only on a live connection (protocol 2.5).
        sock.setsockopt(zmq.IMMEDIATE, 1)
    if keys is not None:
        keys.apply(sock)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as e:
        sock.close(linger=0)
        raise errors.ArgError(f"cannot connect to {what} {endpoint!r}: {e}") from None
    if subscribe is not None:
        sock.setsockopt(zmq.SUBSCRIBE, subscribe)
    return sock
