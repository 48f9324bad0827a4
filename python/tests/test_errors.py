"""One exception class per status code, each reachable one provoked for real."""

import os
import re
import time

import pytest
import zmq

import labmq
from labmq import errors
from labmqd import REPO


def test_one_class_per_status_code_of_the_c_library():
    with open(os.path.join(REPO, "core", "src", "status.c")) as f:
        names = dict(re.findall(r'\{(LMQ_E\w+), "(\w+)",', f.read()))
    with open(os.path.join(REPO, "core", "include", "labmq", "status.h")) as f:
        values = {k: int(v) for k, v in re.findall(r"(LMQ_E\w+) = (-\d+)", f.read())}
    assert names and set(names) == set(values)
    assert set(errors.BY_CODE) == set(names.values())
    for enum, code in names.items():
        cls = errors.BY_CODE[code]
        assert issubclass(cls, labmq.Error) and cls.code == code and cls.status == values[enum]
        assert getattr(labmq, cls.__name__) is cls


def expect(cls, fn, match):
    with pytest.raises(cls) as info:
        fn()
    assert isinstance(info.value, labmq.Error) and info.value.code == cls.code
    assert re.search(match, info.value.message), info.value.message
    return info.value


def test_notfound(lab):
    expect(labmq.NotFoundError, lambda: lab.device("psu9").get("voltage"), r"no device 'psu9' \(devices: psu1")
    expect(labmq.NotFoundError, lambda: lab.device("psu1").get("nope"), "psu1 has no property 'nope'")
    expect(labmq.NotFoundError, lambda: lab.device("psu1").call("nope"), "nope")
    expect(labmq.NotFoundError, lambda: lab.stats("psu9"), "psu9")


def test_arg(lab):
    expect(labmq.ArgError, lambda: lab.device("daq1").call("read"), r"daq1.read takes 1 argument \(channel\)")
    expect(labmq.ArgError, lambda: lab.device("psu1").set("voltage", "high"), "must be float")


def test_range_and_readonly(lab):
    expect(labmq.RangeError, lambda: lab.device("psu1").set("voltage", 99), r"outside 0..10 V")
    expect(labmq.RangeError, lambda: lab.device("daq1").read(7), "")
    expect(labmq.ReadOnlyError, lambda: lab.device("psu1").set("mode", "CV"), "psu1.mode is read-only")


def test_locked_names_the_holder(lab, daemon):
    import labmq as lm
    with lm.connect(daemon.control, timeout=5) as holder:
        locked = holder.request("lock", devices=["psu1"], lease_ms=5000, client="alice@bench pid 7")
        assert locked["devices"] == ["psu1"] and locked["holder"] == "alice@bench pid 7"
        try:
            expect(labmq.LockedError, lambda: lab.device("psu1").set("voltage", 1.0),
                   r"psu1 is locked by 'alice@bench pid 7'")
            lab.device("psu1").get("voltage")  # reading stays open
            entry = [d for d in lab.devices() if d["name"] == "psu1"][0]
            assert entry["locked_by"]["holder"] == "alice@bench pid 7"
        finally:
            holder.request("unlock", client="alice@bench pid 7")
    lab.device("psu1").set("voltage", 0.0)  # free again (and as the other tests expect it)


def test_proto_from_malformed_requests(lab):
    expect(labmq.ProtoError, lambda: lab.request("bogus"), "unknown op 'bogus'")
    expect(labmq.ProtoError, lambda: lab.request("ping", colour="red"), "colour")
    expect(labmq.ProtoError, lambda: lab.request("get", device="psu1", name=5), "name")


def test_proto_for_raw_bytes_is_answered_and_the_next_request_served(lab, daemon):
    # Not JSON at all, from a bare socket: the daemon answers PROTO (id null,
    # which no client awaits) and goes on serving.
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(daemon.control)
    s.send(b"{not json")
    assert s.poll(5000)
    reply = s.recv_json()
    s.close()
    assert reply["ok"] is False and reply["error"]["code"] == "PROTO" and reply["id"] is None
    assert isinstance(errors.from_reply(reply["error"]), labmq.ProtoError)
    assert lab.ping()["daemon"] == "labmqd"


def test_device_error_from_an_instrument_fault(lab):
    psu = lab.device("psu1")
    psu.fault = "error"
    try:
        expect(labmq.DeviceError, lambda: psu.get("voltage"), "simulated instrument error")
    finally:
        psu.fault = "none"
    assert psu.get("voltage") == 0.0


def test_timeout_reported_by_the_daemon(lab):
    # The instrument hangs for 300 ms; the daemon's own deadline answers
    # TIMEOUT (the client waited longer).
    psu = lab.device("psu1")
    psu.fault = "hang:300"
    try:
        expect(labmq.TimeoutError, lambda: psu.get("voltage"), r"within 300 ms \(simulated hang\)")
    finally:
        psu.fault = "none"


def test_timeout_on_the_client(lab):
    psu = lab.device("psu1")
    psu.fault = "hang:800"
    try:
        t0 = time.monotonic()
        expect(labmq.TimeoutError, lambda: psu.get("voltage", timeout=0.2), "no reply within 200 ms")
        assert time.monotonic() - t0 < 0.7
    finally:
        psu.fault = "none"


def test_io_error_from_a_disconnected_instrument(own_daemon):
    own_daemon.start()
    psu = labmq.Device(own_daemon.control + "#psu1", timeout=5)
    psu.fault = "disconnect:200"
    expect(labmq.IOError, lambda: psu.get("voltage"), "disconnected")


def test_unreachable(dead_endpoint):
    lab = labmq.connect(dead_endpoint, timeout=0.2)
    expect(labmq.UnreachableError, lab.ping, "no labmqd answers at " + re.escape(dead_endpoint))


def test_unknown_error_code_keeps_the_daemons_name():
    e = errors.from_reply({"code": "FUTURE", "message": "a code added later"})
    assert type(e) is labmq.Error and e.code == "FUTURE" and str(e) == "FUTURE: a code added later"
