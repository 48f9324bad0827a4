"""Fixtures for labmq-web's tests and benchmark: a labmqd on a simulated lab
with ipc endpoints in a temp directory, labmq-web on a free loopback port,
the labmq CLI, and headless Chromium driven by Selenium. Programs are the
build tree's, named on the command line (CTest passes them)."""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time


class Fail(Exception):
    pass


class CliError(Exception):
    """The labmq CLI failed (a daemon not up yet is one reason: callers retry)."""


def wait_for(what, fn, timeout=20.0, every=0.1):
    """Polls fn() until it returns a true value; Fail naming `what` after timeout."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
        except Fail:
            raise
        except Exception as e:  # a page element not there yet, a daemon not up yet
            last = e
        else:
            if last:
                return last
        time.sleep(every)
    raise Fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Lab:
    """labmqd + labmq-web in a temp dir. Use as a context manager."""

    def __init__(self, labmqd, web, cli, config, web_args=(), ndevices=3):
        self.labmqd, self.web_bin, self.cli = labmqd, web, cli
        self.dir = tempfile.mkdtemp(prefix="labmq-web-")
        self.config = os.path.join(self.dir, "lab.yaml")
        shutil.copy(config, self.config)
        self.control = f"ipc://{self.dir}/control"
        self.data = f"ipc://{self.dir}/data"
        self.daemon = None
        self.web = None
        self.web_args = list(web_args)
        self.url = None
        self.ndevices = ndevices

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_web()
        self.stop_daemon()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self, name):
        try:
            with open(os.path.join(self.dir, name), errors="replace") as f:
                return f.read()
        except OSError:
            return "(none)"

    def start_daemon(self):
        with open(os.path.join(self.dir, "labmqd.log"), "ab") as log:
            self.daemon = subprocess.Popen(
                [self.labmqd, "--config", self.config, "--control", self.control, "--data", self.data,
                 "--log-level", "warn"], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wait_for("labmqd to answer with every device ready",
                 lambda: self._daemon_alive() or self.run_cli("ls").count("ready") == self.ndevices)

    def _daemon_alive(self):
        if self.daemon.poll() is not None:
            raise Fail(f"labmqd exited with {self.daemon.returncode}:\n{self.log('labmqd.log')}")
        return False

    def stop_daemon(self):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(20)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None

    def start_web(self):
        out = os.path.join(self.dir, "web.out")
        with open(out, "wb") as o, open(os.path.join(self.dir, "web.err"), "ab") as e:
            self.web = subprocess.Popen(
                [self.web_bin, "--control", self.control, "--data", self.data, "--listen", "127.0.0.1:0"]
                + self.web_args, stdin=subprocess.DEVNULL, stdout=o, stderr=e)

        def url():
            if self.web.poll() is not None:
                raise Fail(f"labmq-web exited with {self.web.returncode}:\n{self.log('web.err')}")
            m = re.search(r"serving (http://127\.0\.0\.1:\d+/)", self.log("web.out"))
            return m and m.group(1)
        self.url = wait_for("labmq-web to print its URL", url)
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
        return self.url

    def stop_web(self):
        """SIGTERM; returns labmq-web's exit status (its contract: 0)."""
        if not self.web:
            return None
        if self.web.poll() is None:
            self.web.send_signal(signal.SIGTERM)
            try:
                self.web.wait(20)
            except subprocess.TimeoutExpired:
                self.web.kill()
                self.web.wait()
        rc = self.web.returncode
        self.web = None
        return rc

    def run_cli(self, *args):
        r = subprocess.run([self.cli, "-e", self.control, *args], capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise CliError(f"labmq {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout


def chromium(width=1400, height=2400):
    """Headless Chromium (Debian's chromium + chromium-driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--no-proxy-server",
              # a tab in the background is still drawn: the measurement is the page's own pace
              "--disable-background-timer-throttling", "--disable-renderer-backgrounding"):
        o.add_argument(a)
    o.binary_location = "/usr/bin/chromium"
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)
