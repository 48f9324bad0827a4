"""Worker functions for test_processes.py (importable by spawned children)."""

import os


def reach(device):
    """What a worker sees through a proxy it was handed."""
    return os.getpid(), device.uri, device.get("voltage"), device.mode


def snap_mean(camera):
    frame = camera.snap()
    return os.getpid(), frame.shape, float(frame.mean())
