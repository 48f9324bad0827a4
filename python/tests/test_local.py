"""The local channel (docs/protocol.md 6) from Python: get, set and call go
straight to the device's thread when the daemon offers a channel, and by
ZeroMQ otherwise, with the same results and errors."""

import signal
import threading

import numpy as np
import pytest

import labmq


def local_calls(lab, device):
    return lab.stats(device)["devices"][0]["calls_local"]


def test_calls_take_the_local_channel(lab):
    psu = lab.device("psu1")
    before = local_calls(lab, "psu1")
    psu.set("voltage", 1.25)
    assert psu.last_path == "local"
    assert psu.get("voltage") == 1.25
    cam = lab.device("cam1")
    frame = cam.call("snap")
    assert isinstance(frame, np.ndarray) and frame.ndim == 2
    assert cam.last_path == "local"
    assert local_calls(lab, "psu1") == before + 2
    with pytest.raises(labmq.RangeError, match="outside"):
        psu.set("voltage", 1000.0)
    with pytest.raises(labmq.NotFoundError, match="properties: "):
        psu.get("volts")
    assert psu.last_path == "local"


def test_large_requests_and_no_local_go_by_zeromq(lab, monkeypatch):
    psu = lab.device("psu1")
    psu.set("output", True)
    try:
        with pytest.raises(labmq.ArgError, match="1..10000 voltages"):
            psu.call("list_sweep", np.zeros(17000))  # 136 kB: more than a record
        assert psu.last_path == "zmq"
        assert psu.get("voltage") is not None
        assert psu.last_path == "local"
    finally:
        psu.set("output", False)
    monkeypatch.setenv("LABMQ_NO_LOCAL", "1")
    other = lab.device("psu1")
    assert other.get("voltage") is not None
    assert other.last_path == "zmq"


def test_large_reply_spans_records():
    from labmqd import Daemon
    d = Daemon("devices:\n  - name: cam1\n    driver: sim-camera\n    options: {width: 512, height: 512}\n")
    try:
        d.start()
        with labmq.connect(d.control, timeout=5) as lab:
            cam = lab.device("cam1")
            frame = cam.call("snap")  # 512 kB: several records
            assert frame.shape == (512, 512) and frame.dtype == np.uint16
            assert cam.last_path == "local"
            assert local_calls(lab, "cam1") == 1
    finally:
        d.finish()


def test_timeout_then_no_stale_reply(lab):
    psu = lab.device("psu1")
    psu.set("voltage", 1.0)
    psu.set("fault", "delay:400")
    try:
        with pytest.raises(labmq.TimeoutError):
            psu.get("voltage", timeout=0.15)
    finally:
        psu.set("fault", "none", timeout=5)
    psu.set("voltage", 3.0)
    assert psu.get("voltage") == 3.0
    assert psu.last_path == "local"


def test_daemon_killed_mid_request_is_closed(own_daemon):
    own_daemon.start()
    with labmq.connect(own_daemon.control, timeout=5) as lab:
        psu = lab.device("psu1")
        assert psu.get("voltage") is not None and psu.last_path == "local"
        psu.set("fault", "hang:3000")
        killer = threading.Timer(0.3, own_daemon.stop, (signal.SIGKILL,))
        killer.start()
        with pytest.raises(labmq.ClosedError, match="unknown"):
            psu.get("voltage")
        killer.join()
        # the next request goes by ZeroMQ (nothing listens: UNREACHABLE), then
        # back on a new channel once a daemon is there again
        psu.timeout = 0.3
        with pytest.raises((labmq.UnreachableError, labmq.TimeoutError)):
            psu.get("voltage")
        own_daemon.start()
        psu.timeout = 5
        assert psu.get("voltage") == 0.0
        assert psu.last_path == "local"


def test_spin_setting(monkeypatch):
    """LABMQ_LOCAL_SPIN_US: default 50 µs, 0 never, junk is the default; and
    a call still answers with polling off."""
    from labmq import _local
    import os
    multi = os.sysconf("SC_NPROCESSORS_ONLN") > 1
    for value, want in (("", 50e-6), ("0", 0.0), ("200", 200e-6), ("-1", 50e-6), ("20000", 50e-6), ("5us", 50e-6)):
        monkeypatch.setenv("LABMQ_LOCAL_SPIN_US", value)
        assert _local.spin_seconds() == (want if multi else 0.0), value


def test_calls_without_polling(daemon, monkeypatch):
    monkeypatch.setenv("LABMQ_LOCAL_SPIN_US", "0")
    psu = labmq.connect(daemon.control, timeout=5).device("psu1")
    psu.set("voltage", 0.5)
    assert psu.get("voltage") == 0.5 and psu.last_path == "local"
