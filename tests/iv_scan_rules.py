#!/usr/bin/python3
"""Checks that the client of examples/python/iv_scan.py follows the client
rules of docs/protocol.md 2.5, against the daemon at argv[1] (psu1: sim-psu)
and a dead endpoint at argv[2]. Run by tests/test_examples.c; prints what
failed and exits 1, or prints "ok".

The timings are bounds on the client's own timers, with slack for a loaded
machine under the sanitizers; each is far from what a client that broke the
rule would take."""

import os
import sys
import time

import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "python"))
import iv_scan  # noqa: E402


def expect_error(code, fn):
    t0 = time.monotonic()
    try:
        fn()
    except iv_scan.LabmqError as e:
        if e.code != code:
            sys.exit(f"expected {code}, got {e}")
        return time.monotonic() - t0
    sys.exit(f"expected {code}, got a result")


def main():
    endpoint, dead = sys.argv[1], sys.argv[2]
    ctx = zmq.Context()

    # No daemon: the send itself times out (ZMQ_IMMEDIATE + ZMQ_SNDTIMEO).
    nobody = iv_scan.Client(ctx, dead, timeout_ms=300)
    took = expect_error("UNREACHABLE", nobody.ping)
    if not 0.25 <= took < 1.5:
        sys.exit(f"UNREACHABLE after {took * 1000:.0f} ms with a 300 ms timeout")
    nobody.close()

    c = iv_scan.Client(ctx, endpoint, timeout_ms=300)
    psu = iv_scan.Device(c, "psu1")
    c.ping()
    psu.set("voltage", 1.25)
    # A hung instrument: the request was sent, so no reply in time is TIMEOUT,
    # and the socket is replaced (its late reply must never be read).
    psu.set("fault", "hang:1500")
    old = c.sock
    took = expect_error("TIMEOUT", lambda: psu.get("voltage"))
    if not 0.25 <= took < 1.2:
        sys.exit(f"TIMEOUT after {took * 1000:.0f} ms with a 300 ms timeout (the hang lasts 1500 ms)")
    if c.sock is old or not old.closed:
        sys.exit("the socket was not replaced after a TIMEOUT")
    # The fresh socket works: the clear queues behind the hang, then the next
    # answer is this request's, not the hung get's late reply.
    c.timeout_ms = 10000
    c._reopen()
    psu.set("fault", "none")
    v = psu.get("voltage")
    if v != 1.25:
        sys.exit(f"voltage read back as {v!r}, expected 1.25")
    # A reply whose id nobody awaits is dropped: a stale id on the wire.
    # (Send a request, forget it, and ask again: the first answer is skipped.)
    c.sock.send_multipart([b'{"v":1,"id":999999,"op":"ping"}'])
    if psu.get("voltage") != 1.25:
        sys.exit("a reply to another id was taken for the answer")
    c.close()
    ctx.term()
    print("ok")


if __name__ == "__main__":
    main()
