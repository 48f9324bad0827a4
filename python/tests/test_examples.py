"""The Python examples, run as their users run them, against labmqd."""

import os
import subprocess
import sys

import pytest

from labmqd import REPO

EXAMPLES = os.path.join(REPO, "examples", "python")


def run(name, *args, timeout=120):
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_pool_frames(daemon, method):
    r = run("pool_frames.py", "-e", daemon.control, "--frames", "6", "--workers", "2", "--method", method)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 frames in" in r.stdout and r.stdout.rstrip().endswith("ok")


def test_pool_naive_fails_with_cannot_pickle():
    r = run("pool_naive.py")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "TypeError: cannot pickle" in r.stderr


def test_sweep_notebook(daemon):
    r = run("sweep_notebook.py", "-e", daemon.control, "--steps", "8")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "agrees with the DAQ's readings: True" in r.stdout


def test_sweep_notebook_as_a_module(daemon):
    sys.path.insert(0, EXAMPLES)
    try:
        from sweep_notebook import iv_curve
    finally:
        sys.path.remove(EXAMPLES)
    import labmq
    lab = labmq.connect(daemon.control, timeout=10)
    iv = iv_curve(lab.device("psu1"), lab.device("daq1"), vmax=3.0, steps=7)
    assert iv.shape == (7, 3) and iv[-1, 2] > iv[0, 2]
    assert lab.device("psu1").output is False


def test_iv_scan_pkg(daemon):
    r = run("iv_scan_pkg.py", daemon.control, "--seconds", "0.5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lost 0" in r.stdout and r.stdout.rstrip().endswith("iv_scan_pkg.py: ok")


def test_iv_scan_pkg_without_daemon(dead_endpoint):
    r = run("iv_scan_pkg.py", dead_endpoint)
    assert r.returncode == 1 and "no labmqd answers at" in r.stderr
