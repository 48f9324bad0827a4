"""The client rules of docs/protocol.md 2.5: no daemon is UNREACHABLE within
the timeout, no reply in time is TIMEOUT with a fresh socket, a late reply
is never taken for the answer to a newer request, and a proxy outlives a
daemon restart.

Bounds are the issue's (timeout + 100 ms; working again within 3 s of the
restart); each is far from what a client breaking the rule would take (a
request queued for ever, a reply to the wrong request)."""

import gc
import signal
import time

import pytest

import labmq


@pytest.mark.parametrize("timeout", [0.1, 0.3])
def test_absent_daemon_is_unreachable_within_timeout(dead_endpoint, timeout):
    psu = labmq.Device(dead_endpoint + "#psu1", timeout=timeout)
    for _ in range(2):  # also on the second request over the same socket
        t0 = time.monotonic()
        with pytest.raises(labmq.UnreachableError):
            psu.get("voltage")
        took = time.monotonic() - t0
        assert timeout - 0.01 <= took < timeout + 0.1, f"UNREACHABLE after {took * 1000:.0f} ms"


def test_unsent_request_never_reaches_a_daemon_started_later(own_daemon):
    # Refused while nobody listened, the request must not be delivered to
    # the daemon that binds the endpoint afterwards.
    psu = labmq.Device(own_daemon.control + "#psu1", timeout=0.2)
    with pytest.raises(labmq.UnreachableError):
        psu.set("voltage", 4.0)
    own_daemon.start()
    psu.timeout = 5
    assert psu.get("voltage") == 0.0


def test_timeout_replaces_the_socket_and_late_replies_are_never_taken(lab, monkeypatch):
    monkeypatch.setenv("LABMQ_NO_LOCAL", "1")  # the DEALER's rules (the local channel: test_local.py)
    psu = lab.device("psu1")
    psu.voltage = 1.25
    psu.fault = "hang:1500"
    psu.timeout = 0.3
    old = psu._channel.socket
    t0 = time.monotonic()
    # The hung request asks for a string, so its late reply, if ever taken,
    # could not pass for the float answers below.
    with pytest.raises(labmq.TimeoutError, match="no reply within 300 ms"):
        psu.get("mode")
    assert 0.29 <= time.monotonic() - t0 < 0.4 + 0.3
    assert psu._channel.socket is None and old.closed, "the socket was not replaced after a TIMEOUT"
    psu.timeout = 5
    psu.fault = "none"  # queued behind the hang, on the new socket
    assert psu.get("voltage") == 1.25
    time.sleep(0.2)
    assert psu.get("voltage") == 1.25
    psu.voltage = 0.0


def test_abandoned_pendings_after_a_timeout(lab):
    psu = lab.device("psu1")
    psu.fault = "hang:1000"
    first = psu.submit("get", "voltage", timeout=0.2)
    second = psu.submit("get", "voltage")
    with pytest.raises(labmq.TimeoutError):
        first.result()
    # Its socket is gone: the second can never be answered, and says so.
    with pytest.raises(labmq.TimeoutError, match="abandoned"):
        second.result()
    psu.fault = "none"


def test_reply_to_a_forgotten_request_is_dropped(lab):
    psu = lab.device("psu1")
    psu.voltage = 2.0
    p = psu.submit("get", "mode")
    rid = p.id
    del p
    gc.collect()
    assert rid not in psu._channel._waiting
    assert psu.get("voltage") == 2.0  # the mode reply arrives first and is dropped
    assert not psu._channel._waiting
    # A stale id on the wire (from no request of ours) is dropped too.
    psu._channel.socket.send(b'{"v":1,"id":1,"op":"ping"}')
    assert psu.get("voltage") == 2.0
    psu.voltage = 0.0


def test_daemon_killed_and_restarted(own_daemon):
    own_daemon.start()
    psu = labmq.Device(own_daemon.control + "#psu1", timeout=0.5)
    sub_lab = labmq.connect(own_daemon.control, timeout=0.5)
    psu.voltage = 3.0
    assert sub_lab.ping()
    own_daemon.stop(signal.SIGKILL)
    with pytest.raises((labmq.UnreachableError, labmq.TimeoutError)):
        psu.get("voltage")
    own_daemon.start()
    ready = time.monotonic()
    while True:
        try:
            v = psu.get("voltage")  # the same proxy
            break
        except (labmq.UnreachableError, labmq.TimeoutError):
            assert time.monotonic() - ready < 3, "the proxy did not work again within 3 s of the restart"
    assert v == 0.0  # a new daemon: the setpoint is its default again
    assert time.monotonic() - ready < 3
    assert sub_lab.ping()["daemon"] == "labmqd"
