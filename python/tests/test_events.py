"""Change events (docs/protocol.md 3.1): iterator, callback and asyncio forms."""

import asyncio
import json
import os
import pickle
import signal
import threading
import time

import pytest

import labmq
import labmq.aio as aio
from labmq import stream


def prime(ev, *devices, timeout=10):
    """Waits until the subscription has reached the daemon: events published
    before that are not sent to it (protocol 3.1), and ZeroMQ subscribes in
    the background. Sets each device's transient fault knob to "none" (an
    event, no change) until each one's event arrives, then drains."""
    deadline = time.monotonic() + timeout
    seen = set()
    while seen != {d.name for d in devices}:
        assert time.monotonic() < deadline, "the subscription never reached the daemon"
        for d in devices:
            d.fault = "none"
        try:
            while True:
                e = ev.recv(0.2)
                if e.name == "fault":
                    seen.add(e.device)
        except labmq.TimeoutError:
            pass
    return ev


async def aprime(ev, *devices, timeout=10):
    deadline = time.monotonic() + timeout
    seen = set()
    while seen != {d.name for d in devices}:
        assert time.monotonic() < deadline, "the subscription never reached the daemon"
        for d in devices:
            await d.set("fault", "none")
        try:
            while True:
                e = await ev.recv(0.2)
                if e.name == "fault":
                    seen.add(e.device)
        except labmq.TimeoutError:
            pass
    return ev


def test_another_clients_set_arrives_as_an_event(lab, daemon):
    psu = lab.device("psu1")
    other = labmq.connect(daemon.control).device("psu1")  # another client, another socket
    with psu.events(timeout=5) as ev:
        prime(ev, psu)
        other.voltage = 1.75
        e = ev.recv()
    assert (e.device, e.kind, e.name, e.value, e.cause) == ("psu1", "property", "voltage", 1.75, "set")
    assert e.t_ns > 1.6e18 and e.lost_before == 0 and not e.restarted
    other.voltage = 0.0


def test_refused_set_sends_no_event(lab):
    psu = lab.device("psu1")
    with psu.events(timeout=0.5) as ev:
        prime(ev, psu)
        with pytest.raises(labmq.RangeError):
            psu.voltage = 99
        with pytest.raises(labmq.TimeoutError, match="no change event of psu1"):
            ev.recv()


def test_one_device_only_and_every_device(lab):
    psu, daq = lab.device("psu1"), lab.device("daq1")
    with psu.events(timeout=5) as one, lab.events(timeout=5) as every:
        prime(one, psu)
        prime(every, psu, daq)
        with pytest.raises(labmq.TimeoutError):  # drains the knob events of every's priming
            while one.recv(0.3).name == "fault":
                pass
        daq.amplitude = 0.5
        psu.voltage = 0.5
        assert one.recv().name == "voltage"  # daq1's event never reaches a psu1 subscription
        got = [every.recv(), every.recv()]
    # Events of different devices come in no promised order (protocol 3.1):
    # over the local channel a set's reply may leave before its event.
    assert sorted((e.device, e.name) for e in got) == [("daq1", "amplitude"), ("psu1", "voltage")]
    daq.amplitude = 1.0
    psu.voltage = 0.0


def test_state_events_of_a_lost_and_reconnected_device(own_daemon):
    own_daemon.start()
    lab = labmq.connect(own_daemon.control, timeout=5)
    psu = lab.device("psu1")
    with psu.events(timeout=5) as ev:
        prime(ev, psu)
        psu.fault = "disconnect:200"
        with pytest.raises(labmq.IOError):
            psu.get("voltage")
        seen = [ev.recv() for _ in range(3)]
    assert [(e.kind, e.name or e.state, e.cause) for e in seen] == [
        ("property", "fault", "set"), ("state", "disconnected", "lost"), ("state", "ready", "reconnected")]
    assert "disconnected" in seen[1].error
    assert [e.seq for e in seen] == list(range(seen[0].seq, seen[0].seq + 3))


def test_callback_on_a_thread(lab):
    psu = lab.device("psu1")
    got, done = [], threading.Event()

    def on_event(e):
        got.append(e)
        if len(got) == 3:
            done.set()

    events = prime(psu.events(), psu).start(on_event)
    try:
        for v in (0.25, 0.5, 0.75):
            psu.voltage = v
        assert done.wait(5), f"{len(got)} events of 3"
    finally:
        events.close()
    assert [e.value for e in got] == [0.25, 0.5, 0.75]
    with pytest.raises(labmq.ArgError, match="already started"):
        events.start(print).start(print)
    events.close()
    psu.voltage = 0.0


def test_restart_after_daemon_restart(own_daemon):
    own_daemon.start()
    lab = labmq.connect(own_daemon.control, timeout=5)
    psu = lab.device("psu1")
    with psu.events(timeout=10) as ev:
        prime(ev, psu)
        psu.voltage = 1.0
        first = ev.recv()
        own_daemon.stop(signal.SIGTERM)
        own_daemon.start()
        # Events published before the subscription reached the new daemon are
        # not sent to it (protocol 3.1): set until one arrives.
        after = []
        deadline = time.monotonic() + 10
        while not any(e.epoch != first.epoch and e.name == "voltage" for e in after):
            assert time.monotonic() < deadline, f"no event from the new daemon: {after}"
            psu.voltage = 2.0
            try:
                while True:
                    after.append(ev.recv(0.3))
            except labmq.TimeoutError:
                pass
    old = [e for e in after if e.epoch == first.epoch]
    new = [e for e in after if e.epoch != first.epoch]
    assert all(e.kind == "state" and e.state == "stopped" for e in old)  # the old daemon's goodbye
    assert new[0].restarted and not any(e.restarted for e in new[1:])
    assert new[-1].value == 2.0 and ev.restarts == 1 and ev.lost == 0


class _Part:
    def __init__(self, b):
        self.buffer = memoryview(b)
        self.bytes = b


def _msg(topic, header, *frames):
    return [_Part(topic.encode()), _Part(json.dumps(header).encode())] + [_Part(f) for f in frames]


def test_parsing_filtering_and_loss_accounting():
    h = {"v": 1, "seq": 4, "epoch": 9, "t_ns": 5, "device": "psu1", "kind": "property", "name": "wave",
         "value": {"$frame": 1, "dtype": "<f8", "shape": [2]}, "cause": "driver"}
    payload = b"\0" * 8 + b"\0\0\0\0\0\0\xf0\x3f"
    assert stream.parse_event(b"$events/psu1", True, _msg("$events/psu10", h, payload)) is None
    hdr, value = stream.parse_event(b"$events/psu1", True, _msg("$events/psu1", h, payload))
    assert value.tolist() == [0.0, 1.0]  # an array value arrives as numpy
    with pytest.raises(labmq.ProtoError, match="device"):
        stream.parse_event(b"$events/", False, _msg("$events/x", dict(h, device="")))
    with pytest.raises(labmq.ProtoError, match="seq"):
        stream.parse_event(b"$events/", False, _msg("$events/x", dict(h, seq=None)))
    t = stream.EventTracker()
    seen = [("a", 1, 0), ("b", 1, 7), ("a", 1, 1), ("a", 1, 4), ("b", 1, 8), ("a", 2, 0)]
    evs = [t.event({"device": d, "epoch": ep, "seq": s, "t_ns": 0, "kind": "state"}, None) for d, ep, s in seen]
    assert [e.lost_before for e in evs] == [0, 0, 0, 2, 0, 0]
    assert (t.received, t.lost, t.restarts) == (6, 2, 1)


def test_events_pickle_and_fork(lab):
    ev = lab.device("psu1").events(timeout=5)
    back = pickle.loads(pickle.dumps(ev))
    assert (back.endpoint, back.device, back.timeout) == (ev.endpoint, "psu1", 5)
    with pytest.raises(labmq.ArgError, match="carries change events, not stream blocks"):
        lab.subscribe("$events/psu1")
    prime(ev, lab.device("psu1"))
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            with lab.device("psu1").events(timeout=5) as mine:
                prime(mine, lab.device("psu1"))
                lab.device("psu1").voltage = 0.0
                code = 0 if mine.recv().name == "voltage" else 2
        finally:
            os._exit(code)
    assert os.WEXITSTATUS(os.waitpid(pid, 0)[1]) == 0
    e = ev.recv()
    while e.name == "fault":  # the child's priming
        e = ev.recv()
    assert (e.name, e.value) == ("voltage", 0.0)  # the parent's subscription saw the child's set too
    ev.close()


def test_aio_events(daemon):
    async def main():
        lab = aio.connect(daemon.control, timeout=5)
        psu = lab.device("psu1")
        async with psu.events(timeout=5) as ev:
            await aprime(ev, psu)
            await psu.set("voltage", 0.5)
            await psu.set("voltage", 0.0)
            got = []
            async for e in ev:
                got.append((e.name, e.value, e.cause))
                if len(got) == 2:
                    break
        assert got == [("voltage", 0.5, "set"), ("voltage", 0.0, "set")]
    asyncio.run(main())
