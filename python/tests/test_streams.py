"""Subscriptions (docs/protocol.md 3): blocks with numpy data, an exact loss
count after a forced gap, and a restart (new epoch) after a daemon restart."""

import json
import pickle
import signal
import time

import numpy as np
import pytest

import labmq
from labmq import stream


def test_blocks_carry_data_seq_epoch_time_units(lab):
    with lab.subscribe("daq1/wave", timeout=5) as sub:
        blocks = [b for _, b in zip(range(3), sub)]
    for b in blocks:
        assert isinstance(b.data, np.ndarray) and b.data.dtype == np.dtype("<f8") and b.data.shape == (1000,)
        assert b.units == "V" and b.topic == "daq1/wave" and b.t_ns > 1.6e18
    assert [b.seq for b in blocks] == list(range(blocks[0].seq, blocks[0].seq + 3))
    assert len({b.epoch for b in blocks}) == 1
    assert blocks[1].t_ns - blocks[0].t_ns == pytest.approx(1e8, rel=0.01)  # 1000 samples at 10 kHz
    assert sub.received == 3 and sub.lost == 0 and sub.restarts == 0


def test_device_subscribe_and_camera_frames(lab):
    cam = lab.device("cam1")
    with cam.subscribe("frames", timeout=5) as sub:
        b = sub.recv()
    assert b.topic == "cam1/frames" and b.data.dtype == np.dtype("<u2") and b.data.shape == (48, 64)


def test_exact_loss_count_after_a_forced_gap(lab):
    daq = lab.device("daq1")

    def skipped():
        return lab.stats("daq1")["devices"][0]["streams"][0]["skipped"]

    with lab.subscribe("daq1/wave", timeout=5) as sub:
        first = sub.recv()
        before = skipped()
        # Hold the device thread for 1.5 s: the board overruns, and the daemon
        # spends the lost blocks' sequence numbers.
        daq.fault = "hang:1500"
        with pytest.raises(labmq.TimeoutError):
            daq.get("ai0")
        daq.fault = "none"
        gap = skipped() - before
        assert gap > 0, "the hang caused no overrun"
        # The catch-up blocks first, then the jump over the skipped ones.
        for _ in range(100):
            b = sub.recv()
            if b.lost_before:
                break
        assert b.lost_before == gap and b.seq > first.seq + gap
        for _ in range(3):  # and nothing missing after it
            sub.recv()
        assert skipped() - before == gap
        assert sub.lost == gap
        assert sub.restarts == 0


def test_restart_after_daemon_restart(own_daemon):
    own_daemon.start()
    lab = labmq.connect(own_daemon.control, timeout=5)
    sub = lab.subscribe("daq1/wave", timeout=10)
    e0 = sub.recv().epoch
    own_daemon.stop(signal.SIGTERM)
    own_daemon.start()
    b = sub.recv()
    assert b.epoch != e0 and b.restarted and b.lost_before == 0
    assert sub.restarts == 1 and sub.lost == 0
    sub.close()


def test_timeout_and_topic_checks(lab):
    with lab.subscribe("nodev/nostream", timeout=0.2) as sub:
        with pytest.raises(labmq.TimeoutError, match="no block on nodev/nostream"):
            sub.recv()
    for bad in ("daq1", "daq1/wave/x", "/wave", ""):
        with pytest.raises(labmq.ArgError, match="DEVICE/STREAM"):
            lab.subscribe(bad)


class _Part:
    def __init__(self, b):
        self.buffer = memoryview(b)
        self.bytes = b


def _msg(topic, header, payload):
    return [_Part(topic.encode()), _Part(json.dumps(header).encode()), _Part(payload)]


def test_longer_topics_are_dropped_and_malformed_blocks_are_proto():
    h = {"v": 1, "seq": 0, "epoch": 1, "t_ns": 1, "dtype": "<f8", "shape": [2], "units": "V"}
    assert stream.parse_block(b"daq1/wave", _msg("daq1/wave2", h, bytes(16))) is None
    hdr, data = stream.parse_block(b"daq1/wave", _msg("daq1/wave", h, np.array([1.0, 2.0]).tobytes()))
    assert data.tolist() == [1.0, 2.0]
    with pytest.raises(labmq.ProtoError, match="has 8 bytes; dtype and shape need 16"):
        stream.parse_block(b"daq1/wave", _msg("daq1/wave", h, bytes(8)))
    with pytest.raises(labmq.ProtoError, match="seq"):
        stream.parse_block(b"daq1/wave", _msg("daq1/wave", dict(h, seq="1"), bytes(16)))
    with pytest.raises(labmq.ProtoError, match="units"):
        stream.parse_block(b"daq1/wave", _msg("daq1/wave", {k: v for k, v in h.items() if k != "units"},
                                              bytes(16)))


def test_tracker_counts_gaps_within_an_epoch_and_restarts_across():
    t = stream.Tracker()
    seen = [(5, 1), (6, 1), (9, 1), (0, 2), (1, 2), (4, 2)]
    blocks = [t.block("a/b", {"seq": s, "epoch": e, "t_ns": 0, "units": ""}, None) for s, e in seen]
    assert [b.lost_before for b in blocks] == [0, 0, 2, 0, 0, 2]
    assert [b.restarted for b in blocks] == [False, False, False, True, False, False]
    assert (t.received, t.lost, t.restarts) == (6, 4, 1)


def test_subscription_pickles_as_endpoint_and_topic(lab):
    sub = lab.subscribe("daq1/wave", timeout=5)
    sub2 = pickle.loads(pickle.dumps(sub))
    assert (sub2.endpoint, sub2.topic, sub2.timeout) == (sub.endpoint, sub.topic, 5)
    assert sub2.recv().topic == "daq1/wave"
    sub2.close()


def test_wildcard_data_endpoint_uses_the_control_host():
    from labmq._wire import connectable_data_endpoint as c
    assert c("tcp://*:5556", "tcp://lab-pc:5555") == "tcp://lab-pc:5556"
    assert c("tcp://0.0.0.0:5556", "tcp://10.0.0.5:5555") == "tcp://10.0.0.5:5556"
    assert c("tcp://[::]:5556", "ipc:///x/control") == "tcp://127.0.0.1:5556"
    assert c("ipc:///x/data", "ipc:///x/control") == "ipc:///x/data"


# ---- flow subscriptions (protocol 3.2) ----

def _subscribers(lab):
    return lab.stats()["subscribers"]


def test_flow_lossless_is_gap_free_and_accounted(lab):
    with lab.subscribe("daq1/wave", mode="lossless", window=4, timeout=5) as sub:
        blocks = [b for _, b in zip(range(12), sub)]  # three windows' worth: credit flows
        assert [b.seq for b in blocks] == list(range(blocks[0].seq, blocks[0].seq + 12))
        assert isinstance(blocks[0].data, np.ndarray) and blocks[0].data.shape == (1000,)
        assert sub.received == 12 and sub.lost == 0
        (entry,) = _subscribers(lab)
        assert entry["mode"] == "lossless" and entry["topics"] == ["daq1/wave"] and entry["window"] == 4
        assert entry["dropped"] == 0 and entry["delivered"] >= 12
    assert _subscribers(lab) == []  # close() unsubscribed


def test_flow_lossy_reader_sees_the_newest(lab):
    daq = lab.device("daq1")
    with daq.subscribe("wave", mode="lossy", window=1, timeout=5) as sub:
        sub.recv()
        time.sleep(1.5)  # 15 blocks at 10 blocks/s: the daemon keeps the newest one for us
        b = sub.recv()  # credit returned: the newest comes, the older ones were dropped
        assert b.lost_before >= 8, b
        (entry,) = _subscribers(lab)
        assert entry["mode"] == "lossy" and entry["dropped"] >= sub.lost
        stream_drops = lab.stats("daq1")["devices"][0]["streams"][0]["subscriber_drops"]
        assert stream_drops >= entry["dropped"]


def test_flow_refusals_and_bad_arguments(lab):
    with pytest.raises(labmq.NotFoundError, match="daq1 has no stream 'nope'"):
        lab.subscribe("daq1/nope", mode="lossless", timeout=5).recv()
    with pytest.raises(labmq.ArgError, match="mode must be"):
        lab.subscribe("daq1/wave", mode="fast")
    with pytest.raises(labmq.ArgError, match="window must be"):
        lab.subscribe("daq1/wave", mode="lossy", window=0)


def test_flow_subscription_pickles(lab):
    sub = lab.subscribe("cam1/frames", mode="lossy", window=2, timeout=5)
    again = pickle.loads(pickle.dumps(sub))
    assert isinstance(again, labmq.FlowSubscription)
    assert (again.endpoint, again.topic, again.mode, again.window) == (lab.endpoint, "cam1/frames", "lossy", 2)
    with again:
        assert again.recv().data.shape == (48, 64)
