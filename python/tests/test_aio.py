"""labmq.aio: the same API on asyncio, and the same protocol 2.5 rules."""

import asyncio
import os
import pickle
import time

import numpy as np
import pytest

import labmq
import labmq.aio as aio


def run(coro):
    return asyncio.run(coro)


def test_ops_attributes_and_arrays(daemon):
    async def main():
        lab = aio.connect(daemon.control, timeout=5)
        assert (await lab.ping())["daemon"] == "labmqd"
        assert {d["name"] for d in await lab.devices()} == {"psu1", "daq1", "cam1"}
        assert (await lab.describe("psu1"))["driver"] == "sim-psu"
        assert (await lab.stats("psu1"))["devices"][0]["name"] == "psu1"
        assert await lab.workers() == []
        psu = lab.device("psu1")
        await psu.set("voltage", 0.5)
        assert await psu.get("voltage") == 0.5
        assert await psu.voltage == 0.5  # attribute reads are awaitables
        assert await psu.mode in ("CV", "CC", "OFF")
        frame = await lab.device("cam1").snap()  # method calls are coroutines
        assert frame.dtype == np.dtype("<u2") and frame.shape == (48, 64)
        with pytest.raises(AttributeError, match="await psu1.set"):
            psu.voltage = 1.0
        await psu.describe()
        assert "sweep" in dir(psu) and "sim-psu" in repr(psu)
        assert pickle.loads(pickle.dumps(psu)).uri == psu.uri
        await psu.set("voltage", 0.0)
        lab.close()
        psu.close()
    run(main())


def test_concurrent_requests_share_one_socket(daemon):
    async def main():
        lab = aio.connect(daemon.control, timeout=5)
        psu, daq = lab.device("psu1"), lab.device("daq1")
        await psu.set("voltage", 1.0)
        # 50 in flight at once on one socket, two devices answering in parallel.
        results = await asyncio.gather(*[psu.get("voltage") for _ in range(25)],
                                       *[daq.read(1) for _ in range(25)])
        assert results[:25] == [1.0] * 25 and all(isinstance(x, float) for x in results[25:])
        assert psu._channel._waiting == {}
        await psu.set("voltage", 0.0)
    run(main())


def test_errors(daemon):
    async def main():
        lab = aio.connect(daemon.control, timeout=5)
        with pytest.raises(labmq.NotFoundError, match="psu9"):
            await lab.device("psu9").get("voltage")
        with pytest.raises(labmq.RangeError):
            await lab.device("psu1").set("voltage", 99)
        with pytest.raises(labmq.ProtoError, match="unknown op"):
            await lab.request("bogus")
        with pytest.raises(labmq.NotFoundError, match="nope"):
            await lab.device("psu1").nope
    run(main())


def test_raw_request_sends_lock_device_names(daemon):
    # lab.request builds its header as labmq.Lab.request does: `devices` are names, not an array.
    async def main():
        lab = aio.connect(daemon.control, timeout=5)
        locked = await lab.request("lock", devices=["psu1"], lease_ms=5000, client="aio test")
        try:
            assert locked["devices"] == ["psu1"] and locked["holder"] == "aio test"
        finally:
            await lab.request("unlock", client="aio test")
        lab.close()
    run(main())


def test_unreachable_within_timeout(dead_endpoint):
    async def main():
        psu = aio.Device(dead_endpoint + "#psu1", timeout=0.2)
        t0 = time.monotonic()
        with pytest.raises(labmq.UnreachableError):
            await psu.get("voltage")
        took = time.monotonic() - t0
        assert 0.19 <= took < 0.3, f"UNREACHABLE after {took * 1000:.0f} ms"
        assert not psu._channel._waiting
    run(main())


def test_timeout_fresh_socket_and_no_late_reply(daemon):
    async def main():
        psu = aio.Device(daemon.control + "#psu1", timeout=5)
        await psu.set("voltage", 1.5)
        await psu.set("fault", "hang:1200")
        old = psu._channel._sock
        other = asyncio.ensure_future(psu.get("voltage", timeout=5))  # in flight on the same socket
        with pytest.raises(labmq.TimeoutError, match="no reply within 200 ms"):
            await psu.get("mode", timeout=0.2)
        assert old.closed and psu._channel._sock is None
        with pytest.raises(labmq.TimeoutError, match="abandoned"):
            await other
        await psu.set("fault", "none")
        assert await psu.get("voltage") == 1.5
        await asyncio.sleep(0.2)
        assert await psu.get("voltage") == 1.5
        await psu.set("voltage", 0.0)
    run(main())


def test_subscription_and_a_new_event_loop(daemon):
    lab = aio.connect(daemon.control, timeout=5)
    psu = lab.device("psu1")

    async def main():
        n = 0
        async with lab.subscribe("daq1/wave", timeout=5) as sub:
            async for b in sub:
                assert b.data.shape == (1000,) and b.units == "V"
                n += 1
                if n == 3:
                    break
        assert sub.received == 3 and sub.lost == 0
        return await psu.get("voltage")

    # The same proxies under two event loops, one after the other.
    assert run(main()) == run(main())


def test_forked_child_uses_its_own_socket(daemon):
    psu = aio.Device(daemon.control + "#psu1", timeout=5)
    run(psu.get("voltage"))
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if run(psu.get("voltage")) == 0.0 else 2
        finally:
            os._exit(code)
    assert os.WEXITSTATUS(os.waitpid(pid, 0)[1]) == 0
