#!/usr/bin/python3
"""bench/web.py: what a browser tab receives and draws through labmq-web,
next to a plain C subscriber (`labmq watch`, an lmq_sub) on the same stream.

For each stream (a 1000 blocks/s waveform of 1000 <f8 samples; 512x512 <u2
camera frames at 100 fps) a labmqd serves only that device, and three
clients take turns for --duration seconds each:
  - the C subscriber;
  - a headless Chromium tab through labmq-web with --max-rate 1000 (the web
    side limits nothing: what the tab itself can take);
  - the same with the default --max-rate 30 (what a tab normally gets).
Counts come from the page (window.labmq: blocks received, frames drawn,
lost upstream, skipped by labmq-web's rate limit) or from labmq watch's
summary; CPU is each process's user+system time over the window, in % of
one core (/proc/PID/stat; the client's is Chromium's processes together);
the last column is the daemon's own stats for the stream over the whole run
(blocks it dropped / the instrument lost), which tells where "lost" came
from. One run, one table (markdown, on stdout).

Usage: bench/web.py [--build DIR] [--duration S]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "web"))
from webfix import Lab, chromium, wait_for  # noqa: E402

WAVE = """devices:
  - name: daq1
    driver: sim-daq
    options: {channels: 1, sample_rate: 1000000, block_size: 1000, waveform: sine, frequency: 1000, amplitude: 1.0}
"""
CAM = """devices:
  - name: cam1
    driver: sim-camera
    options: {width: 512, height: 512, fps: 100, exposure_ms: 1, bit_depth: 12}
"""
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def descendants(pid):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


class Cpu:
    """CPU seconds of some processes between start() and stop()."""

    def __init__(self, pids):
        self.pids = [p for p in pids if p]

    def start(self):
        self.t0 = time.monotonic()
        self.c0 = {p: cpu_s(p) for p in self.pids}

    def stop(self):
        dt = time.monotonic() - self.t0
        return 100 * sum(cpu_s(p) - self.c0[p] for p in self.pids) / dt


def page_counts(d, topic):
    return d.execute_script("const s = window.labmq.streams[arguments[0]];"
                            "return s ? [s.blocks, s.drawn, s.lost, s.skipped, s.offered || 0] : [0, 0, 0, 0, 0];", topic)


def run_c(lab, topic, duration):
    cpu_d = Cpu([lab.daemon.pid])
    cpu_d.start()
    p = subprocess.Popen([lab.cli, "-e", lab.control, "watch", topic, "--duration", str(duration)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu_c = Cpu([p.pid])
    cpu_c.start()
    time.sleep(duration * 0.98)
    c_cpu = cpu_c.stop()  # before it exits and its /proc entry goes
    out, err = p.communicate(timeout=duration + 30)
    d_cpu = cpu_d.stop()
    m = re.search(r"(\d+) blocks in ([\d.]+) s .*lost (\d+)", out.strip().splitlines()[-1] if out.strip() else "")
    if not m:
        raise SystemExit(f"labmq watch said: {out!r} {err!r}")
    n, s, lost = int(m.group(1)), float(m.group(2)), int(m.group(3))
    return {"client": "C subscriber (labmq watch)", "recv": n / s, "drawn": None, "lost": lost, "skipped": None,
            "daemon": d_cpu, "web": None, "client_cpu": c_cpu}


def run_browser(lab, topic, duration, label):
    d = chromium()
    try:
        d.get(lab.url)
        wait_for(f"{topic} blocks in the page", lambda: page_counts(d, topic)[0] >= 5, timeout=30)
        time.sleep(1)  # past the start-up
        browser = Cpu(descendants(d.service.process.pid))
        procs = Cpu([lab.daemon.pid]), Cpu([lab.web.pid]), browser
        for c in procs:
            c.start()
        a, t0 = page_counts(d, topic), time.monotonic()
        time.sleep(duration)
        b, t1 = page_counts(d, topic), time.monotonic()
        d_cpu, w_cpu, b_cpu = (c.stop() for c in procs)
    finally:
        d.quit()
    dt = t1 - t0
    return {"client": label, "recv": (b[0] - a[0]) / dt, "drawn": (b[1] - a[1]) / dt, "lost": b[2] - a[2],
            "skipped": (b[3] - a[3]) / dt, "daemon": d_cpu, "web": w_cpu, "client_cpu": b_cpu}


def fmt(v, f="{:.0f}"):
    return "—" if v is None else f.format(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--duration", type=float, default=10.0)
    a = ap.parse_args()
    progs = dict(labmqd=os.path.join(a.build, "workers", "labmqd", "labmqd"),
                 web=os.path.join(a.build, "workers", "web", "labmq-web"),
                 cli=os.path.join(a.build, "tools", "labmq"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, yaml, topic in (("waveform 1000 × <f8, 1000 blocks/s", WAVE, "daq1/wave"),
                                  ("camera 512×512 <u2, 100 fps", CAM, "cam1/frames")):
            cfg = os.path.join(tmp, topic.split("/")[0] + ".yaml")
            with open(cfg, "w") as f:
                f.write(yaml)
            for rate in (None, 1000, 30):
                with Lab(progs["labmqd"], progs["web"], progs["cli"], cfg,
                         web_args=["--max-rate", str(rate)] if rate else [], ndevices=1) as lab:
                    lab.start_daemon()
                    if rate is None:
                        r = run_c(lab, topic, a.duration)
                    else:
                        lab.start_web()
                        r = run_browser(lab, topic, a.duration, f"browser tab, --max-rate {rate}")
                    r["stream"] = name
                    dev, sname = topic.split("/")
                    st = json.loads(lab.run_cli("stats", dev, "--json"))["devices"][0]
                    st = next(x for x in st["streams"] if x["name"] == sname)
                    r["upstream"] = f"{st['dropped']} / {st['skipped']}"
                    rows.append(r)
                    print(f"# {name}: {r['client']}: {r['recv']:.0f} blocks/s", file=sys.stderr)
    print(f"| stream | client | received blocks/s | drawn/s | lost | skipped/s (rate limit) "
          f"| labmqd CPU % | labmq-web CPU % | client CPU % | daemon dropped / instrument skipped (whole run) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stream']} | {r['client']} | {fmt(r['recv'])} | {fmt(r['drawn'])} | {r['lost']} "
              f"| {fmt(r['skipped'])} | {fmt(r['daemon'])} | {fmt(r['web'])} | {fmt(r['client_cpu'])} | {r['upstream']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
