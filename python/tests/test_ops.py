"""Every op against a real labmqd on the simulated lab, attribute access from
describe, and numpy arrays both ways."""

import inspect
import os
import pickle
import subprocess
import threading

import numpy as np
import pytest
import zmq

import labmq
from labmq import _wire
from labmqd import build_dir


def test_ping(lab, daemon):
    p = lab.ping()
    assert p["daemon"] == "labmqd" and p["protocol"] == 1
    assert p["control"] == daemon.control and p["data"] == daemon.data
    assert lab.data_endpoint() == daemon.data


def test_devices_list_names_drivers_and_state(lab):
    devs = {d["name"]: d for d in lab.devices()}
    assert set(devs) == {"psu1", "daq1", "cam1"}
    assert devs["psu1"]["driver"] == "sim-psu"
    assert all(d["state"] == "ready" and d["open"] and d["error"] is None for d in devs.values())


def test_describe(lab):
    d = lab.describe("psu1")
    assert d["device"] == "psu1"
    props = {p["name"]: p for p in d["properties"]}
    assert props["voltage"]["unit"] == "V" and props["voltage"]["access"] == "rw"
    assert props["mode"]["access"] == "ro"
    assert lab.device("psu1").describe() == d


def test_get_set_call(lab):
    psu = lab.device("psu1")
    psu.set("voltage", 1.5)
    assert psu.get("voltage") == 1.5
    psu.set("current_limit", 0.05)
    psu.set("output", True)
    try:
        v, i = psu.call("measure")
        assert v == pytest.approx(1.5, abs=0.01)
    finally:
        psu.set("output", False)
    assert psu.call("reset") is None
    assert psu.get("voltage") == 0.0


def test_stats(lab):
    psu = lab.device("psu1")
    before = lab.stats("psu1")["devices"][0]["calls"]
    psu.get("voltage")
    s = lab.stats("psu1")
    assert [d["name"] for d in s["devices"]] == ["psu1"]
    assert s["devices"][0]["calls"] == before + 1
    assert s["devices"][0]["state"] == "ready"
    assert {d["name"] for d in lab.stats()["devices"]} == {"psu1", "daq1", "cam1"}


def test_workers_none_configured(lab):
    assert lab.workers() == []


def test_raw_request(lab):
    assert lab.request("ping")["daemon"] == "labmqd"
    assert lab.request("get", device="psu1", name="mode") in ("CV", "CC", "OFF")
    assert isinstance(lab.request("call", device="daq1", name="read", args=[1]), float)


def test_attribute_access(lab):
    psu = lab.device("psu1")
    psu.voltage = 2.25
    assert psu.voltage == 2.25 and psu.get("voltage") == 2.25
    assert psu.mode in ("CV", "CC", "OFF")
    daq = lab.device("daq1")
    assert isinstance(daq.read(1), float)
    assert isinstance(daq.read(channel=1), float)  # keywords by the names describe gives
    with pytest.raises(labmq.ArgError, match="unexpected"):
        daq.read(chan=1)
    with pytest.raises(AttributeError, match="no property or method 'nonesuch'"):
        psu.nonesuch
    with pytest.raises(AttributeError, match="no property 'nonesuch'"):
        psu.nonesuch = 1
    with pytest.raises(AttributeError, match="is a method"):
        psu.sweep = 1
    psu.voltage = 0.0


def test_dir_repr_and_docs(lab):
    psu = lab.device("psu1")
    assert repr(psu) == f"labmq.Device('{lab.endpoint}#psu1')"  # no request made for a repr
    names = dir(psu)
    for n in ("voltage", "measured_current", "sweep", "measure", "get", "set", "call"):
        assert n in names
    assert "sim-psu" in repr(psu) and "voltage" in repr(psu)  # described by dir()
    sig = inspect.signature(psu.sweep)
    assert list(sig.parameters) == ["start", "stop", "points"]
    assert "[V]" in psu.sweep.__doc__ and "restores the setpoint" in psu.sweep.__doc__
    assert "psu1.sweep(start: float [V]" in repr(psu.sweep)

    class Printer:  # the part of IPython's pretty printer _repr_pretty_ uses
        def __init__(self):
            self.parts = []

        def text(self, s):
            self.parts.append(s)

    pr = Printer()
    psu._repr_pretty_(pr, False)
    out = "".join(pr.parts)
    assert "voltage" in out and "rw" in out and "0..10" in out and "psu1/iv" in out


def test_device_from_uri_and_dir_without_daemon(dead_endpoint):
    d = labmq.Device(dead_endpoint + "#psu1", timeout=0.2)
    assert d.name == "psu1" and d.endpoint == dead_endpoint and d.uri == dead_endpoint + "#psu1"
    assert "get" in dir(d)  # tab completion degrades to the proxy's own names
    with pytest.raises(labmq.ArgError, match="no device named"):
        labmq.Device(dead_endpoint)
    assert labmq.Device(dead_endpoint, "psu1") == d


def test_pipelined_submit(lab):
    psu = lab.device("psu1")
    psu.voltage = 0.75
    pending = [psu.submit("get", "voltage") for _ in range(40)]
    pending.append(psu.submit("get", "mode"))
    assert len({p.id for p in pending}) == len(pending)
    # Collected in reverse: the replies of the others are kept for them.
    results = [p.result() for p in reversed(pending)]
    assert results[0] in ("CV", "CC", "OFF") and results[1:] == [0.75] * 40
    psu.voltage = 0.0


# -- arrays ----------------------------------------------------------------------


def frame_of(arr):
    """The zmq.Frame an array's memory belongs to, or None (a copy)."""
    base = arr
    while base is not None:
        if isinstance(base, memoryview):
            return base.obj if isinstance(base.obj, zmq.Frame) else None
        base = getattr(base, "base", None)
    return None


def test_sweep_result_is_an_n_by_2_array(lab, monkeypatch):
    monkeypatch.setenv("LABMQ_NO_LOCAL", "1")  # ZeroMQ's frames (the local channel: test_local.py)
    psu = lab.device("psu1")
    psu.current_limit = 0.05
    psu.output = True
    try:
        iv = psu.sweep(0, 3, 16)
    finally:
        psu.output = False
    assert isinstance(iv, np.ndarray) and iv.dtype == np.dtype("<f8") and iv.shape == (16, 2)
    assert iv[:, 0] == pytest.approx(np.linspace(0, 3, 16), abs=0.01)
    assert iv[-1, 1] > iv[0, 1] + 1e-3  # the LED conducts at 3 V
    assert frame_of(iv) is not None, "the array was copied out of the received message"


@pytest.mark.parametrize("dtype", ["<f8", "<f4", "<i4", ">f8"])
def test_array_in_and_out_list_sweep(lab, dtype):
    # An array argument reaches the instrument: the supply measures at each
    # of the given voltages (in any order, any numeric dtype it accepts).
    psu = lab.device("psu1")
    psu.current_limit = 0.05
    psu.output = True
    volts = np.array([2, 0, 1], dtype=dtype)
    try:
        iv = psu.list_sweep(volts)
    finally:
        psu.output = False
    assert iv.dtype == np.dtype("<f8") and iv.shape == (3, 2)
    assert iv[:, 0] == pytest.approx([2.0, 0.0, 1.0], abs=0.01)


def test_list_sweep_refuses_what_it_cannot_use(lab):
    psu = lab.device("psu1")
    psu.output = True
    try:
        with pytest.raises(labmq.ArgError, match="1-D array"):
            psu.list_sweep(np.ones((2, 2)))
        with pytest.raises(labmq.ArgError, match="must be <f8"):
            psu.list_sweep(np.ones(3, dtype="|u1"))
        with pytest.raises(labmq.RangeError, match="outside"):
            psu.list_sweep(np.array([1.0, 99.0]))
        with pytest.raises(labmq.ArgError, match="must be array"):
            psu.list_sweep(1.5)
    finally:
        psu.output = False


def test_snap_is_a_uint16_frame(lab, monkeypatch):
    monkeypatch.setenv("LABMQ_NO_LOCAL", "1")  # ZeroMQ's frames (the local channel: test_local.py)
    cam = lab.device("cam1")
    frame = cam.snap()
    assert frame.dtype == np.dtype("<u2") and frame.shape == (cam.height, cam.width) == (48, 64)
    assert frame.max() < 2 ** cam.bit_depth and frame.max() > 0
    assert frame_of(frame) is not None


ARRAYS = [
    np.arange(5, dtype="<f8"),
    np.arange(12, dtype="|u1").reshape(3, 4),
    np.arange(24, dtype=">i4").reshape(2, 3, 4),  # big-endian: sent little-endian
    np.arange(16, dtype="<f4").reshape(4, 4)[:, ::2],  # not contiguous: sent C order
    np.ones((1, 2, 1, 3), dtype="<u8"),
    np.array(7, dtype="<i2"),  # 0-dimensional: shape []
    np.zeros((0, 3), dtype="<f8"),  # no elements: an empty frame
]


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype.str}{list(a.shape)}")
def test_arrays_sent_are_well_formed_for_the_daemon(lab, arr):
    # Every dtype and shape, judged by the daemon's own frame check: a
    # well-formed array reaches the type check (ARG "got array" where a float
    # is wanted); a frame not matching its dtype and shape would be PROTO.
    # (list_sweep above takes an array for real.)
    daq = lab.device("daq1")
    with pytest.raises(labmq.ArgError, match="must be float, got array"):
        daq.write_ao(0, arr)
    with pytest.raises(labmq.ArgError, match="got array"):
        daq.set("amplitude", arr)
    if arr.ndim:
        with pytest.raises(labmq.ArgError, match="got array"):
            daq.call("write_ao", 0, arr.tolist())  # lists travel as arrays too


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype.str}{list(a.shape)}")
def test_array_encoding_round_trips(arr):
    frames = []
    ref = _wire.encode_value(arr, frames, "x")
    assert ref["dtype"] in _wire.DTYPES and ref["shape"] == list(arr.shape)
    back = _wire.decode_value(ref, [f.tobytes() for f in frames])
    assert back.dtype.str == ref["dtype"] and np.array_equal(back, arr)


def test_array_without_copy_when_already_wire_ready():
    a = np.arange(10, dtype="<f8")
    frames = []
    _wire.encode_value(a, frames, "x")
    assert np.shares_memory(frames[0], a)


@pytest.mark.parametrize("bad,why", [
    (np.array([True, False]), "cannot be sent"),
    (np.array([1 + 2j]), "cannot be sent"),
    (np.zeros((1, 1, 1, 1, 1)), "at most 4 dimensions"),
    (float("nan"), "NaN"),
    (object(), "cannot be sent"),
])
def test_values_that_cannot_be_sent_are_arg_errors_before_sending(lab, bad, why):
    with pytest.raises(labmq.ArgError, match=why):
        lab.device("psu1").set("voltage", bad)


def test_error_classes_pickle():
    e = pickle.loads(pickle.dumps(labmq.RangeError("psu1.voltage out of range")))
    assert type(e) is labmq.RangeError and e.message == "psu1.voltage out of range"


def test_threads_share_a_proxy(lab):
    psu = lab.device("psu1")
    psu.voltage = 1.0
    bad = []

    def hammer(prop, check):
        for _ in range(50):
            v = psu.get(prop)
            if not check(v):
                bad.append((prop, v))

    threads = [threading.Thread(target=hammer, args=("voltage", lambda v: v == 1.0)),
               threading.Thread(target=hammer, args=("mode", lambda v: v in ("CV", "CC", "OFF"))),
               threading.Thread(target=hammer, args=("output", lambda v: v is False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []
    psu.voltage = 0.0


@pytest.mark.parametrize("xdg,expect", [
    ("/run/user/1000", "ipc:///run/user/1000/labmq/{which}"),
    (None, "ipc:///tmp/labmq-{uid}/{which}"),
    ("relative/dir", "ipc:///tmp/labmq-{uid}/{which}"),  # ignored, as the XDG spec (and paths.c) say
    ("", "ipc:///tmp/labmq-{uid}/{which}"),
])
def test_default_endpoint_as_the_c_library_finds_it(monkeypatch, xdg, expect):
    if xdg is None:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", xdg)
    for which in ("control", "data"):
        assert labmq.default_endpoint(which) == expect.format(which=which, uid=os.getuid())
    assert labmq.connect().endpoint == expect.format(which="control", uid=os.getuid())


def test_default_endpoint_too_long_for_a_unix_socket(monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/" + "x" * 100)
    with pytest.raises(labmq.ConfigError, match="longer than the 107 bytes"):
        labmq.default_endpoint("control")
    with pytest.raises(labmq.ArgError, match="'control' or 'data'"):
        labmq.default_endpoint("ctl")


def test_default_endpoint_matches_the_cli(monkeypatch, tmp_path):
    # The C library's own answer, through the labmq CLI's error text when no
    # daemon is there: it names the endpoint it tried.
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    r = subprocess.run([os.path.join(build_dir(), "tools", "labmq"), "--timeout", "100", "ping"],
                       capture_output=True, text=True, env=env, timeout=30)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert r.returncode != 0 and labmq.default_endpoint("control") in r.stdout + r.stderr
