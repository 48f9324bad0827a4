#!/usr/bin/python3
"""sweep_notebook.py -- an I-V curve as a numpy array, the way a notebook cell
would take it:

    import labmq
    from sweep_notebook import iv_curve
    lab = labmq.connect()
    iv = iv_curve(lab.device("psu1"), lab.device("daq1"), vmax=3.0, steps=31)
    iv.shape                     # (31, 3): V set, V measured, I
    plt.plot(iv[:, 1], iv[:, 2])

or from the shell (prints the array and compares with the supply's own
sweep method, which returns the same [points, 2] curve in one call):

    /usr/bin/python3 examples/python/sweep_notebook.py --vmax 3 --steps 16
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import labmq  # noqa: E402


def iv_curve(psu, daq, vmax=3.0, steps=31, ilimit=0.05):
    """Steps the supply from 0 to vmax, reading the terminal voltage and the
    current through the DAQ (ai0 is the current sense); returns an array
    [steps, 3] of (V set, V measured, A). Leaves the output off and the
    DAQ's input range as it found it."""
    gain = daq.ai0_gain
    range_before = daq.ai_range
    psu.current_limit = ilimit
    psu.voltage = 0.0
    psu.output = True
    try:
        daq.ai_range = ilimit * gain * 1.05  # the most sensitive range that holds the current
        out = np.empty((steps, 3))
        for k, v in enumerate(np.linspace(0.0, vmax, steps)):
            psu.voltage = float(v)
            out[k] = (v, psu.measured_voltage, daq.ai0 / gain)
        return out
    finally:
        psu.voltage = 0.0
        psu.output = False
        daq.ai_range = range_before


def main():
    ap = argparse.ArgumentParser(description="I-V curve as a numpy array")
    ap.add_argument("-e", "--endpoint")
    ap.add_argument("--vmax", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=16)
    args = ap.parse_args()
    lab = labmq.connect(args.endpoint, timeout=10)
    psu, daq = lab.device("psu1"), lab.device("daq1")
    try:
        iv = iv_curve(psu, daq, args.vmax, args.steps)
        psu.current_limit = 0.05
        psu.output = True
        try:
            device_side = psu.sweep(0.0, args.vmax, args.steps)  # [steps, 2]: V, A
        finally:
            psu.output = False
    except labmq.Error as e:
        print(f"sweep_notebook.py: {e}", file=sys.stderr)
        return 1
    np.set_printoptions(precision=4, suppress=False)
    print("iv_curve (V set, V measured, A):")
    print(iv)
    # Two measurements of one curve: they agree within the meters' noise
    # (a few tenths of a milliamp with the default DAQ noise) plus 3%.
    agree = np.allclose(iv[:, 2], device_side[:, 1], atol=5e-4 + 0.03 * np.abs(device_side[:, 1]).max())
    print(f"psu1.sweep agrees with the DAQ's readings: {agree}")
    return 0 if iv.shape == (args.steps, 3) and agree else 1


if __name__ == "__main__":
    sys.exit(main())
