"""Fixtures: `daemon` is one labmqd shared by a test module (for tests that
leave it as they found it); `own_daemon` is a fresh one per test (for tests
that kill, restart or wedge it)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from labmqd import Daemon  # noqa: E402


@pytest.fixture(scope="module")
def daemon():
    d = Daemon().start()
    yield d
    d.finish()


@pytest.fixture
def own_daemon():
    d = Daemon()
    yield d
    d.finish()


@pytest.fixture
def lab(daemon):
    import labmq
    with labmq.connect(daemon.control, timeout=5) as lab:
        yield lab


@pytest.fixture
def dead_endpoint(tmp_path_factory):
    # An ipc path nobody binds (short: sun_path holds 107 bytes).
    import tempfile
    d = tempfile.mkdtemp(prefix="labmq-py-dead-")
    yield f"ipc://{d}/control"
    os.rmdir(d)
