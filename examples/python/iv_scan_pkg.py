#!/usr/bin/python3
"""iv_scan_pkg.py -- iv_scan.py on the labmq package.

The same I-V sweep, table and stream check as iv_scan.py (and
examples/iv_scan.c), with the package doing what iv_scan.py spells out by
hand (request ids, protocol 2.5's timeout rules, array frames, loss
counting). iv_scan.py stays as the proof that a client can be written from
docs/protocol.md alone.

    labmqd --config examples/sim-lab.yaml &
    /usr/bin/python3 examples/python/iv_scan_pkg.py

Exit status 0 only if the sweep worked and no stream block was lost.
"""

import argparse
import os
import sys
import time

import numpy as np

# In-tree use without installing (pip install ./python makes this a no-op).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import labmq  # noqa: E402


def sweep(psu, daq, args):
    """The sweep proper; True when the current rises with the voltage."""
    gain = daq.ai0_gain
    # The most sensitive input range that still holds the largest current.
    daq.ai_range = args.ilimit * gain * 1.05
    print(f"{'V_set[V]':>10} {'V_meas[V]':>10} {'I[A]':>12}")
    currents = []
    for v in np.linspace(0.0, args.vmax, args.steps + 1):
        psu.voltage = float(v)
        vmeas = psu.measured_voltage
        i = daq.ai0 / gain
        currents.append(i)
        print(f"{v:10.3f} {vmeas:10.4f} {i:12.4e}", flush=True)
    currents = np.array(currents)
    tol = max(1e-6, 0.01 * currents.max())  # a dip under 1% of full scale is noise
    dips = int(np.count_nonzero(np.diff(currents) < -tol))
    if dips or not currents.max() > currents[0]:
        print(f"iv_scan_pkg.py: the current does not rise with the voltage ({dips} dips); check the wiring",
              file=sys.stderr)
        return False
    return True


def watch_stream(lab, topic, seconds):
    with lab.subscribe(topic, timeout=3) as sub:
        try:
            first = sub.recv()  # the window starts at the first block
        except labmq.TimeoutError:
            print(f"iv_scan_pkg.py: no block on {topic} within 3 s (is the stream running?)", file=sys.stderr)
            return False
        samples, last = first.data.size, first
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                last = sub.recv(left)
            except labmq.TimeoutError:
                break
            samples += last.data.size
        dt = (last.t_ns - first.t_ns) * 1e-9
        rate = (samples - last.data.size) / dt if dt > 0 else 0.0
        print(f"stream {topic}: {sub.received} blocks, {samples} samples, lost {sub.lost}, "
              f"restarts {sub.restarts}, rate {rate:.0f} samples/s (last block {last.data.dtype.str}"
              f"{list(last.data.shape)}, mean {float(last.data.mean()):.4g} {last.units})")
        if sub.lost:
            print(f"iv_scan_pkg.py: {sub.lost} blocks of {topic} were lost", file=sys.stderr)
        return sub.lost == 0


def main():
    ap = argparse.ArgumentParser(description="I-V sweep through a labmq daemon, on the labmq package.")
    ap.add_argument("endpoint_pos", nargs="?", metavar="ENDPOINT", help="control endpoint (same as --endpoint)")
    ap.add_argument("-e", "--endpoint", help="control endpoint (default: the per-user ipc endpoint)")
    ap.add_argument("-d", "--data", help="data endpoint (default: the one the daemon reports in ping)")
    ap.add_argument("--psu", default="psu1")
    ap.add_argument("--daq", default="daq1")
    ap.add_argument("--vmax", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--ilimit", type=float, default=0.05)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--key", metavar="FILE", help="this client's key pair, for a daemon with keys")
    ap.add_argument("--server-key", metavar="KEY", help="the daemon's public key: its .pub file or Z85 text")
    args = ap.parse_args()

    try:
        lab = labmq.connect(args.endpoint or args.endpoint_pos, data=args.data, key=args.key,
                            server_key=args.server_key)
    except labmq.Error as e:
        print(f"iv_scan_pkg.py: keys: {e}", file=sys.stderr)
        return 2
    psu, daq = lab.device(args.psu), lab.device(args.daq)
    ok = output_on = False
    range_before = None
    try:
        info = lab.ping()
        print(f"daemon: {info['daemon']} {info['version']} at {lab.endpoint}, data {lab.data_endpoint()}")
        range_before = daq.ai_range  # shared with every user of the board: restore it
        psu.current_limit = args.ilimit
        psu.voltage = 0.0
        output_on = True  # from here on, always switch the output off again
        psu.output = True
        print(f"sweep: {args.psu} 0..{args.vmax:g} V in {args.steps} steps, limit {args.ilimit:g} A, "
              f"current via {args.daq}/ai0")
        ok = sweep(psu, daq, args) and watch_stream(lab, f"{args.daq}/wave", args.seconds)
    except labmq.UnreachableError as e:
        print(f"iv_scan_pkg.py: {e.message}\n            start one first, e.g.: "
              f"labmqd --config examples/sim-lab.yaml", file=sys.stderr)
    except labmq.Error as e:
        print(f"iv_scan_pkg.py: {e}", file=sys.stderr)
    finally:
        try:
            if output_on:
                psu.voltage = 0.0
                psu.output = False
            if range_before is not None:
                daq.ai_range = range_before
        except labmq.Error as e:
            print(f"iv_scan_pkg.py: cleaning up: {e}", file=sys.stderr)
            ok = False
    print("iv_scan_pkg.py:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
