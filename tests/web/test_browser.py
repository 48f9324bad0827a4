#!/usr/bin/python3
"""labmq-web in a real browser: headless Chromium driven by Selenium, against
labmqd on the simulated lab (examples/sim-lab.yaml). Checks, in order:

- the device list appears, every device ready;
- psu1.voltage set through the page changes it on the device (`labmq get`);
- an out-of-range value is refused by the page and never sent;
- an error the daemon gives is shown as the daemon words it;
- the stats table counts psu1's requests;
- daq1/wave blocks arrive (the page's counter grows, lost 0);
- a cam1 frame is drawn (the canvas's pixels are not all equal);
- a device that disconnects is shown disconnected, then ready again;
- after a daemon restart the page recovers by itself (daemon shown down,
  then up with a restart counted; streams flow again in a new epoch; a set
  through the page works again);
- labmq-web stops with status 0 on SIGTERM.

Saves a screenshot (--screenshot PATH; docs/web.png is one).

Usage: test_browser.py --labmqd P --web P --cli P --config sim-lab.yaml [--screenshot PATH]
"""

import argparse
import sys
import time

from webfix import CliError, Fail, Lab, chromium, wait_for


def js(d, script, *args):
    return d.execute_script(script, *args)


def stream(d, topic):
    return js(d, "const s = window.labmq.streams[arguments[0]];"
                 "return s ? {blocks: s.blocks, drawn: s.drawn, lost: s.lost, skipped: s.skipped,"
                 "restarts: s.restarts, epoch: s.epoch} : null;", topic)


def cli_value(lab, dev, prop):
    return float(lab.run_cli("get", dev, prop).split()[0])


def set_in_page(d, key, text):
    """Types text into the property's input and presses its set button;
    returns the message element next to it."""
    from selenium.webdriver.common.by import By
    inp = d.find_element(By.CSS_SELECTOR, f'[data-input="{key}"]')
    inp.clear()
    inp.send_keys(text)
    d.find_element(By.CSS_SELECTOR, f'[data-set="{key}"]').click()
    return d.find_element(By.CSS_SELECTOR, f'[data-error="{key}"]')


def device_state(d, dev):
    return js(d, "const n = document.querySelector(`#devices tr[data-device='${arguments[0]}'] [data-state]`);"
                 "return n ? n.dataset.state : null;", dev)


def main():
    ap = argparse.ArgumentParser()
    for k in ("labmqd", "web", "cli", "config"):
        ap.add_argument("--" + k, required=True)
    ap.add_argument("--screenshot", default="web.png")
    a = ap.parse_args()
    from selenium.webdriver.common.by import By

    step = "start"
    with Lab(a.labmqd, a.web, a.cli, a.config) as lab:
        lab.start_daemon()
        url = lab.start_web()
        d = chromium()
        try:
            d.get(url)
            step = "the device list"
            wait_for("three devices listed, all ready", lambda: [device_state(d, n) for n in ("psu1", "daq1", "cam1")]
                     == ["ready"] * 3)
            wait_for("psu1's panel (from describe)", lambda: d.find_element(By.CSS_SELECTOR, '[data-input="psu1.voltage"]'))
            print("ok: device list and panels")

            step = "set psu1.voltage"
            msg = set_in_page(d, "psu1.voltage", "2.5")
            wait_for("the set's reply", lambda: msg.text == "done" or (msg.text.startswith(("RANGE", "ARG", "DEVICE",
                     "TIMEOUT", "CLOSED", "WEB")) and Fail(f"the set failed: {msg.text}")))
            if abs(cli_value(lab, "psu1", "voltage") - 2.5) > 1e-9:
                raise Fail(f"labmq get psu1 voltage gives {cli_value(lab, 'psu1', 'voltage')}, not 2.5")
            wait_for("the change event to show 2.5 in the page", lambda: d.find_element(
                By.CSS_SELECTOR, '[data-value="psu1.voltage"]').text == "2.5")
            print("ok: psu1.voltage set through the page is 2.5 on the device")
            calls = wait_for("psu1's requests counted in the page's stats table", lambda: int(d.find_element(
                By.CSS_SELECTOR, '[data-stats="psu1"] .calls').text) >= 1 and d.find_element(
                By.CSS_SELECTOR, '[data-stats="psu1"] .calls').text)
            print(f"ok: stats show psu1 with {calls} requests")

            step = "out-of-range value"
            replies = js(d, "return window.labmq.replies;")
            msg = set_in_page(d, "psu1.voltage", "50")
            if not (msg.text.startswith("not sent") and "maximum 10" in msg.text):
                raise Fail(f"an out-of-range voltage was not refused by the page: '{msg.text}'")
            time.sleep(0.5)
            if js(d, "return window.labmq.replies;") != replies:
                raise Fail("the page sent the out-of-range value anyway (a reply came back)")
            if cli_value(lab, "psu1", "voltage") != 2.5:
                raise Fail("the out-of-range value reached the device")
            print(f"ok: refused in the page: '{msg.text}'")
            msg = set_in_page(d, "psu1.voltage", "abc")
            if "not a number" not in msg.text:
                raise Fail(f"'abc' was not refused as not a number: '{msg.text}'")
            print(f"ok: refused in the page: '{msg.text}'")

            step = "daemon's error wording"
            msg = set_in_page(d, "psu1.fault", "sometimes")
            wait_for("the daemon's error for fault=sometimes", lambda: msg.text.startswith(("ARG", "DEVICE", "RANGE")))
            print(f"ok: the daemon's error is shown: '{msg.text}'")

            step = "daq1/wave"
            first = wait_for("daq1/wave blocks", lambda: (stream(d, "daq1/wave") or {}).get("blocks", 0) >= 3 and
                             stream(d, "daq1/wave"))
            s = wait_for("20 more daq1/wave blocks", lambda: stream(d, "daq1/wave")["blocks"] >= first["blocks"] + 20
                         and stream(d, "daq1/wave"))
            if s["lost"] != 0 or s["drawn"] == 0:
                raise Fail(f"daq1/wave: {s}")
            shown = d.find_element(By.CSS_SELECTOR, '[data-stream="daq1/wave"] .blocks').text
            if int(shown) < first["blocks"]:
                raise Fail(f"the page's daq1/wave counter shows {shown}")
            print(f"ok: daq1/wave {s['blocks']} blocks, {s['drawn']} drawn, lost {s['lost']}")

            step = "cam1 frame"
            wait_for("a cam1 frame drawn", lambda: (stream(d, "cam1/frames") or {}).get("drawn", 0) >= 2)
            distinct = js(d, "const c = document.querySelector('[data-stream=\"cam1/frames\"] canvas');"
                             "const p = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                             "const seen = new Set(); for (let i = 0; i < p.length; i += 4 * 97) seen.add(p[i] << 16 | p[i+1] << 8 | p[i+2]);"
                             "return [c.width, c.height, seen.size];")
            if distinct[:2] != [512, 512] or distinct[2] < 2:
                raise Fail(f"cam1 canvas {distinct[0]}x{distinct[1]} has {distinct[2]} distinct colours")
            print(f"ok: cam1 frame drawn ({distinct[0]}x{distinct[1]}, {distinct[2]} distinct colours sampled)")
            d.execute_script("window.scrollTo(0, 0)")
            d.save_screenshot(a.screenshot)
            print(f"ok: screenshot {a.screenshot}")

            step = "device disconnect"
            set_in_page(d, "psu1.fault", "disconnect:3000")
            wait_for("psu1 shown disconnected", lambda: device_state(d, "psu1") == "disconnected")
            msg = set_in_page(d, "psu1.voltage", "1")
            wait_for("a set to the disconnected psu1 answered", lambda: msg.text.startswith(("DEVICE", "IO", "TIMEOUT")))
            print(f"ok: psu1 disconnected, a set answers '{msg.text}'")
            wait_for("psu1 ready again", lambda: device_state(d, "psu1") == "ready", timeout=30)
            print("ok: psu1 ready again")

            step = "daemon restart"
            before = stream(d, "daq1/wave")
            lab.stop_daemon()
            wait_for("the page to show the daemon down", lambda: js(
                d, "return document.getElementById('daemon').dataset.up;") == "false")
            time.sleep(2)  # the next daemon starts visibly later than the last
            lab.start_daemon()
            wait_for("the page to show the daemon up again with a restart counted", lambda: js(
                d, "const e = document.getElementById('daemon'); return e.dataset.up === 'true' && +e.dataset.restarts >= 1;"),
                timeout=30)
            s = wait_for("daq1/wave blocks in a new epoch", lambda: (lambda s: s["epoch"] != before["epoch"] and
                         s["blocks"] >= before["blocks"] + 10 and s)(stream(d, "daq1/wave")), timeout=30)
            if s["restarts"] < 1:
                raise Fail(f"daq1/wave after the restart counts no restart: {s}")
            wait_for("psu1's value from the new daemon (0)", lambda: d.find_element(
                By.CSS_SELECTOR, '[data-value="psu1.voltage"]').text == "0")
            msg = set_in_page(d, "psu1.voltage", "1.5")
            wait_for("the set after the restart", lambda: msg.text == "done")
            if cli_value(lab, "psu1", "voltage") != 1.5:
                raise Fail("the set after the restart did not reach the device")
            print(f"ok: recovered from a daemon restart (daq1/wave epoch {before['epoch']} -> {s['epoch']}, "
                  f"restarts {s['restarts']})")

            step = "browser log"
            errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
            if errors:
                raise Fail(f"the page logged errors: {errors}")
        except (Fail, CliError) as e:
            try:
                d.save_screenshot(a.screenshot + ".failed.png")
            except Exception:
                pass
            print(f"FAIL ({step}): {e}\n--- labmq-web stderr:\n{lab.log('web.err')}\n--- labmqd:\n"
                  f"{lab.log('labmqd.log')}", file=sys.stderr)
            return 1
        finally:
            d.quit()
        rc = lab.stop_web()
        if rc != 0:
            print(f"FAIL: labmq-web exited with {rc} on SIGTERM:\n{lab.log('web.err')}", file=sys.stderr)
            return 1
        if "ERROR: AddressSanitizer" in lab.log("web.err") or "runtime error" in lab.log("web.err"):
            print(f"FAIL: sanitizer report:\n{lab.log('web.err')}", file=sys.stderr)
            return 1
        print("ok: labmq-web stopped with status 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
