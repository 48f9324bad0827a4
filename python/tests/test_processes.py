"""Proxies cross process boundaries: pickled as their URI into spawned,
forked and forkserver children, and a forked child never touches its
parent's socket."""

import concurrent.futures
import multiprocessing
import os
import pickle
import time

import pytest

import labmq
import procs


def test_device_pickles_as_its_uri(lab):
    psu = lab.device("psu1")
    psu.get("voltage")  # has a socket now, and a description
    psu.describe()
    data = pickle.dumps(psu)
    assert len(data) < 200 and psu.uri.encode() in data
    back = pickle.loads(data)
    assert back.uri == psu.uri and back.timeout == psu.timeout
    assert back._channel.socket is None and back._table is None  # lazy: nothing opened yet
    assert back.get("voltage") == psu.get("voltage")
    lab2 = pickle.loads(pickle.dumps(lab))
    assert lab2.endpoint == lab.endpoint and lab2.ping()["daemon"] == "labmqd"


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_pool_workers_reach_the_device(lab, method):
    psu = lab.device("psu1")
    psu.voltage = 1.75
    psu.get("voltage")  # the parent's socket exists before the pool starts (fork copies it)
    parent_sock = psu._channel.socket
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.map(procs.reach, [psu] * 6)
    pids = {r[0] for r in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert all(r[1] == psu.uri and r[2] == 1.75 and r[3] in ("CV", "CC", "OFF") for r in results)
    assert psu._channel.socket is parent_sock and not parent_sock.closed
    assert psu.get("voltage") == 1.75
    psu.voltage = 0.0


def test_process_pool_executor_with_camera_frames(lab):
    cam = lab.device("cam1")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        results = list(ex.map(procs.snap_mean, [cam] * 4))
    assert all(r[1] == (48, 64) and r[2] > 0 for r in results)


def test_errors_cross_back_from_workers(lab):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        with pytest.raises(labmq.NotFoundError, match="psu9"):
            pool.apply(procs.reach, (lab.device("psu9"),))


def test_forked_child_never_touches_the_parents_socket(lab, monkeypatch):
    monkeypatch.setenv("LABMQ_NO_LOCAL", "1")  # the DEALER's rules (the local channel: test_local.py)
    psu = lab.device("psu1")
    psu.voltage = 2.5
    psu.fault = "delay:400"  # keeps the parent's request in flight across the fork
    try:
        ch = psu._channel
        sock = ch.socket
        pending = psu.submit("get", "voltage")
        next_id = ch._next_id
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, never return into pytest
            try:
                os.close(r)
                mode = psu.mode  # through a socket of its own
                report = {
                    "ok": mode in ("CV", "CC", "OFF"),
                    "own_socket": ch.socket is not None and ch.socket is not sock,
                    "waiting": list(ch._waiting),
                    "pending_refused": None,
                }
                try:
                    pending.result()
                except labmq.ClosedError as e:
                    report["pending_refused"] = str(e)
                os.write(w, pickle.dumps(report))
            except BaseException as e:
                os.write(w, pickle.dumps({"error": repr(e)}))
            finally:
                os._exit(0)
        os.close(w)
        # The parent: its in-flight request is answered to it, on its socket.
        assert pending.result() == 2.5
        with os.fdopen(r, "rb") as f:
            report = pickle.loads(f.read())
        assert os.waitpid(pid, 0)[1] == 0
        assert "error" not in report, report
        assert report["ok"] and report["own_socket"] and report["waiting"] == []
        assert "sent by process" in report["pending_refused"]
        assert ch.socket is sock and not sock.closed
        assert ch._next_id == next_id  # the child's requests took no ids of ours
        assert psu.get("voltage") == 2.5
    finally:
        psu.fault = "none"
        psu.voltage = 0.0


def test_forked_child_subscription_and_lab(lab):
    sub = lab.subscribe("daq1/wave", timeout=5)
    sub.recv()
    sock = sub._sock
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            b = sub.recv()  # its own SUB socket, counters from zero
            code = 0 if (sub._sock is not sock and sub.received == 1 and b.topic == "daq1/wave"
                         and lab.ping()["daemon"] == "labmqd") else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert sub._sock is sock and sub.recv().topic == "daq1/wave" and sub.received == 2
    sub.close()


def test_many_forks_in_a_row_stay_fast(lab):
    # A child's context is its own: fork-heavy code does not pile up waits.
    psu = lab.device("psu1")
    psu.get("voltage")
    t0 = time.monotonic()
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            try:
                psu.get("voltage")
            finally:
                os._exit(0)
        assert os.WEXITSTATUS(os.waitpid(pid, 0)[1]) == 0
    assert time.monotonic() - t0 < 20
