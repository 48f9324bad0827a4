#!/usr/bin/python3
"""pool_naive.py -- the same pool as pool_frames.py, done the usual way: a
camera object that holds its open instrument handle, handed to spawned
workers. It fails before any worker runs:

    TypeError: cannot pickle '_io.FileIO' object

multiprocessing must pickle every argument to send it to a 'spawn' worker,
and an open handle (a serial port, a USB device, a vendor SDK session; here
an open file stands for the port, as in pyserial) is process-local state
that cannot be pickled. With 'fork' nothing is pickled and every child
shares the parent's open handle instead, which is worse: several processes
talking over one instrument connection. (multiprocessing even duplicates an
open socket.socket into workers on purpose, with the same result.)
pool_frames.py passes a labmq.Device, which pickles as its URI.

Exit status 1, with the error, which is the point.
"""

import multiprocessing
import os
import sys


class NaiveCamera:
    """A driver object the way vendor SDK wrappers look: it owns the open
    connection to the instrument."""

    def __init__(self):
        # The "open instrument": a serial port would be open("/dev/ttyUSB0", "r+b", buffering=0).
        self.handle = open(os.devnull, "r+b", buffering=0)

    def snap(self):
        raise RuntimeError("never reached: the worker never receives the camera")

    def close(self):
        self.handle.close()


def analyse(camera, index):
    return index, camera.snap().mean()


def main():
    cam = NaiveCamera()
    try:
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            pool.starmap(analyse, [(cam, i) for i in range(4)])
    except TypeError as e:
        print(f"pool_naive.py: {type(e).__name__}: {e}", file=sys.stderr)
        print("pool_naive.py: an open handle cannot cross a process boundary; "
              "pool_frames.py hands the workers labmq proxies instead", file=sys.stderr)
        return 1
    finally:
        cam.close()
    print("pool_naive.py: the handle was pickled after all?")
    return 2


if __name__ == "__main__":
    sys.exit(main())
