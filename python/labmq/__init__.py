"""labmq: lab instruments served by labmqd, from Python.

    import labmq
    lab = labmq.connect()                  # the default per-user endpoint
    psu = lab.device("psu1")               # or labmq.Device("ipc://...#psu1")
    psu.voltage = 2.5                      # properties and methods from describe
    iv = psu.sweep(0, 3, 16)               # numpy array [16, 2]
    for block in lab.subscribe("daq1/wave"):
        print(block.seq, block.data.mean())
    for ev in psu.events():                # change events: sets, restores, states
        print(ev.name, ev.value, ev.cause)

Written from docs/protocol.md with pyzmq and numpy only. labmq.aio has the
same API on asyncio. Errors are labmq.Error subclasses, one per status code.
"""

from ._version import __version__
from ._wire import default_endpoint
from .client import DEFAULT_TIMEOUT, Device, Lab, Method, Pending, connect
from .keys import Keys
from .errors import (ArgError, BusyError, ClosedError, ConfigError, DeviceError, Error, IOError,  # noqa: F401
                     LockedError, MemError, NotFoundError, OutcomeUnknownError, PermissionError, ProtoError,
                     RangeError, ReadOnlyError, SystemError, TimeoutError, UnreachableError)
from .stream import Block, Event, Events, FlowSubscription, Subscription

# Not star-exported: the error classes whose names are also built-ins.
__all__ = ["__version__", "connect", "default_endpoint", "Lab", "Device", "Keys", "Method", "Pending", "Subscription",
           "FlowSubscription",
           "Block", "Events", "Event", "Error", "ArgError", "MemError", "DeviceError", "ClosedError", "ProtoError",
           "NotFoundError", "UnreachableError", "BusyError", "ConfigError", "RangeError", "ReadOnlyError",
           "LockedError", "OutcomeUnknownError",
           "DEFAULT_TIMEOUT"]
