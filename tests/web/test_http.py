#!/usr/bin/python3
"""labmq-web's HTTP and WebSocket layer against malformed, hostile and
oversized input, over raw sockets: each gets an error (an HTTP error status,
an error message, or a WebSocket close with the right code), never a crash.
At the end the server still serves the page and a well-formed WebSocket, and
stops with status 0 and no sanitizer report. Then labmq-web runs as a
supervised worker of labmqd (`workers:`): it serves, reaches the daemon, and
stops with it.

Usage: test_http.py --labmqd P --web P --cli P --config sim-lab.yaml
"""

import argparse
import base64
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import tempfile
import time

from webfix import Fail, Lab, wait_for

TIMEOUT = 10.0


def http(port, raw, expect_close=True):
    """Sends raw bytes; returns what came back until close or timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        s.sendall(raw)
        data = b""
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            if not expect_close and b"\r\n\r\n" in data:
                break
        return data
    finally:
        s.close()


def status(resp):
    if not resp.startswith(b"HTTP/1."):
        return None
    return int(resp.split(b" ", 2)[1])


class WS:
    """A minimal WebSocket client (RFC 6455) that can also misbehave."""

    def __init__(self, port, origin=True, host=None):
        self.port = port
        self.s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        host = host or f"127.0.0.1:{port}"
        req = (f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: labmq\r\n")
        if origin is True:
            req += f"Origin: http://{host}\r\n"
        elif origin:
            req += f"Origin: {origin}\r\n"
        self.s.sendall((req + "\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = status(head + b"\r\n")

    def close(self):
        self.s.close()

    def send_frame(self, opcode, payload, fin=True, mask=True, length=None):
        n = len(payload) if length is None else length
        b0 = (0x80 if fin else 0) | opcode
        if n < 126:
            hdr = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
        else:
            hdr = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
        if mask:
            m = os.urandom(4)
            payload = bytes(c ^ m[i % 4] for i, c in enumerate(payload))
            hdr += m
        self.s.sendall(hdr + payload)

    def send_text(self, text):
        self.send_frame(1, text.encode() if isinstance(text, str) else text)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        """(opcode, payload) of the next frame."""
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return b0 & 0x0F, self._read(n)

    def next_json(self, types):
        """The next text message whose "t" is in types (skipping the model's)."""
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end:
            op, data = self.recv()
            if op == 8:
                raise Fail(f"closed by the server: {close_code(data)}")
            if op == 1:
                m = json.loads(data)
                if m.get("t") in types:
                    return m
        raise Fail(f"no {types} message")

    def expect_close(self):
        """The close code the server sends (None: the connection just ended)."""
        end = time.monotonic() + TIMEOUT
        try:
            while time.monotonic() < end:
                op, data = self.recv()
                if op == 8:
                    return close_code(data)
        except (EOFError, ConnectionResetError):
            return None
        raise Fail("the server did not close the connection")


def answer_or_close(w):
    """True when the server answers with an error message or closes; the
    outcome is kept in answer_or_close.last. A timeout is False."""
    end = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < end:
            op, data = w.recv()
            if op == 8:
                answer_or_close.last = f"closed ({close_code(data)})"
                return True
            if op == 1 and json.loads(data).get("t") == "error":
                answer_or_close.last = "answered: " + json.loads(data)["message"]
                return True
    except (EOFError, ConnectionResetError):
        answer_or_close.last = "connection ended"
        return True
    except socket.timeout:
        pass
    answer_or_close.last = "nothing"
    return False


def close_code(data):
    return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None


def check(cond, what):
    if not cond:
        raise Fail(what)
    print("ok:", what)


def main():
    ap = argparse.ArgumentParser()
    for k in ("labmqd", "web", "cli", "config"):
        ap.add_argument("--" + k, required=True)
    a = ap.parse_args()
    rng = random.Random(1234)
    with Lab(a.labmqd, a.web, a.cli, a.config) as lab:
        lab.start_daemon()
        lab.start_web()
        port = lab.port
        try:
            ok_page = lambda: status(http(port, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()))
            check(ok_page() == 200, "GET / is 200")

            # ---- HTTP ----
            r = status(http(port, b"GARBAGE\r\n\r\n"))
            check(r is None or 400 <= r < 500, f"a request line that is no request: {r or 'closed'}")
            r = status(http(port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"))
            check(r is None or 400 <= r < 500, f"a 20 kB URL: {r or 'closed'}")
            r = status(http(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100000 + b"\r\n\r\n"))
            check(r is None or 400 <= r < 500, f"a 100 kB header: {r or 'closed'}")
            r = http(port, b"GET /../../../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            check(b"root:" not in r, f"a path outside the page's directory is not served ({status(r) or 'closed'})")
            r = http(port, b"GET /%2e%2e/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            check(b"root:" not in r, f"an encoded path outside it is not served either ({status(r) or 'closed'})")
            r = status(http(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\nabc"))
            check(r is None or 400 <= r < 600, f"an absurd Content-Length: {r or 'closed'}")
            r = status(http(port, b"GET / HTTP/1.1\r\nHost x no colon\r\n\r\n"))
            check(r is None or 400 <= r < 500, f"a header without a colon: {r or 'closed'}")
            for i in range(20):
                junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
                http(port, junk)
            print("ok: 20 requests of random bytes")
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.1\r\nHo")
            s.close()
            check(ok_page() == 200, "still serving after the malformed requests")

            # ---- WebSocket handshake ----
            w = WS(port, origin="http://evil.example")
            check(w.status != 101, f"a WebSocket from another site's page is refused ({w.status or 'closed'})")
            w.close()
            w = WS(port, origin=False, host="evil.example")
            check(w.status != 101, f"a WebSocket naming a non-loopback Host is refused ({w.status or 'closed'})")
            w.close()
            w = WS(port, origin=False)
            check(w.status == 101, "a WebSocket without Origin (not a browser) from loopback is accepted")
            w.close()

            # ---- WebSocket messages ----
            w = WS(port)
            check(w.status == 101, "a WebSocket from the page's origin is accepted")
            bad = [
                ("{not json", "not a JSON object"),
                ("[1,2]", "not a JSON object"),
                ('{"op":"bogus"}', "unknown op"),
                ('{"op":"set","id":1,"device":"psu1","name":"voltage"}', "set:"),
                ('{"op":"get","id":1,"device":"psu1","name":"voltage","extra":1}', "get:"),
                ('{"op":"get","id":-1,"device":"psu1","name":"voltage"}', "'id'"),
                ('{"op":"get","id":1,"device":"","name":"voltage"}', "'device'"),
                ('{"op":"call","id":1,"device":"psu1","name":"reset","args":5}', "'args'"),
                ('{"op":"sub","topic":"$events/psu1"}', "not a stream topic"),
                ('{"op":"sub","topic":"daq1"}', "not a stream topic"),
                ('{"op":"get","op":"get","id":1,"device":"psu1","name":"voltage"}', "duplicate"),
            ]
            for text, want in bad:
                w.send_text(text)
                m = w.next_json({"error", "reply"})
                check(m["t"] == "error" and want in m["message"], f"{text} -> error '{m.get('message')}'")
            w.send_frame(2, b"\x00\x01\x02")
            m = w.next_json({"error"})
            check("binary" in m["message"], f"a binary message -> '{m['message']}'")
            w.send_text('{"op":"set","id":7,"device":"psu1","name":"voltage","value":[1,2]}')
            m = w.next_json({"reply", "error"})
            check(m["t"] == "reply" and not m["ok"] and m["error"]["code"] == "ARG",
                  f"an array value -> {m['error']['code']}: {m['error']['message']}")
            w.send_text('{"op":"set","id":8,"device":"psu9","name":"voltage","value":1}')
            m = w.next_json({"reply"})
            check(m["id"] == 8 and m["error"]["code"] == "NOTFOUND",
                  f"an unknown device -> the daemon's words: {m['error']['message']}")
            w.send_text('{"op":"set","id":9,"device":"psu1","name":"voltage","value":99}')
            m = w.next_json({"reply"})
            check(m["error"]["code"] == "RANGE", f"out of range past the page -> the daemon's RANGE: {m['error']['message']}")
            w.send_text('{"op":"get","id":10,"device":"psu1","name":"voltage"}')
            m = w.next_json({"reply"})
            check(m["id"] == 10 and m["ok"] and m["result"] == 0, "a well-formed get is answered")
            w.send_text('{"op":"sub","topic":"daq1/wave"}')
            end = time.monotonic() + TIMEOUT
            while True:
                op, data = w.recv()
                if op == 2:
                    break
                if time.monotonic() > end:
                    raise Fail("no binary block after sub daq1/wave")
            hlen = struct.unpack("<I", data[:4])[0]
            h = json.loads(data[4:4 + hlen])
            check((4 + hlen) % 8 == 0 and len(data) - 4 - hlen == 8000 and h["topic"] == "daq1/wave" and h["dtype"] == "<f8",
                  f"a block is one binary message: header {hlen} bytes, payload {len(data) - 4 - hlen} bytes, 8-aligned")
            w.close()

            # ---- a tab that sends requests faster than a slow device answers ----
            w = WS(port)
            w.send_text('{"op":"set","id":1,"device":"psu1","name":"fault","value":"delay:40"}')
            check(w.next_json({"reply"})["ok"], "psu1 made slow (fault delay:40)")
            for i in range(150):
                w.send_text(json.dumps({"op": "get", "id": 100 + i, "device": "psu1", "name": "voltage"}))
            answered, refused = {}, 0
            while len(answered) < 150:
                m = w.next_json({"reply", "error"})
                if m.get("id") in answered:
                    raise Fail(f"request {m['id']} answered twice")
                answered[m.get("id")] = m
                refused += m["t"] == "error" and "requests waiting" in m["message"]
            check(refused >= 1 and sum(m["t"] == "reply" for m in answered.values()) >= 100,
                  f"150 requests at once: each answered once, {refused} refused beyond the 100 a tab may have waiting")
            w.send_text('{"op":"set","id":2,"device":"psu1","name":"fault","value":"none"}')
            check(w.next_json({"reply"})["ok"], "psu1 fast again")
            w.close()

            # ---- a tab that stops reading slows nobody ----
            def first_block(ws):
                end = time.monotonic() + TIMEOUT
                while time.monotonic() < end:
                    op, data = ws.recv()
                    if op == 2:
                        hl = struct.unpack("<I", data[:4])[0]
                        return json.loads(data[4:4 + hl])
                raise Fail("no block")
            slow, fast = WS(port), WS(port)
            for ws in (slow, fast):
                ws.send_text('{"op":"sub","topic":"cam1/frames"}')
            first_block(slow)
            h0 = first_block(fast)
            t0 = time.monotonic()
            n = 0
            while time.monotonic() - t0 < 4:
                op, data = fast.recv()
                if op == 2:
                    n += 1
                    hl = struct.unpack("<I", data[:4])[0]
                    h1 = json.loads(data[4:4 + hl])
            check(n >= 25 and h1["lost"] == 0 and h1["skipped"] - h0["skipped"] <= 5,
                  f"while another tab reads nothing, this one gets {n} frames in 4 s (10 fps), lost {h1['lost']}, "
                  f"skipped {h1['skipped'] - h0['skipped']}")
            last = None
            end = time.monotonic() + 3
            while time.monotonic() < end:  # the slow tab reads again: its buffers, its pending frame, then new ones
                op, data = slow.recv()
                if op == 2:
                    hl = struct.unpack("<I", data[:4])[0]
                    last = json.loads(data[4:4 + hl])
            check(last and last["skipped"] >= 10 and last["lost"] == 0 and
                  last["offered"] - last["sent"] - last["skipped"] in (0, 1),
                  f"the tab that read nothing for 4 s had frames skipped, not queued: offered {last and last['offered']}, "
                  f"sent {last and last['sent']}, skipped {last and last['skipped']}")
            slow.close()
            fast.close()

            w = WS(port)
            w.send_text("x" * 70000)
            check(w.expect_close() == 1009, "a 70 kB message -> close 1009 (too big)")
            w.close()
            w = WS(port)
            for i in range(17):  # 68000 bytes: the last fragment crosses the limit, nothing follows it
                w.send_frame(1 if i == 0 else 0, b"y" * 4000, fin=False)
            code = w.expect_close()
            check(code == 1009, f"fragments adding up to over 64 kB -> close {code}")
            w.close()
            w = WS(port)
            w.send_text(b'{"op":"\xff\xfe"}')
            check(w.expect_close() in (1007, None), "invalid UTF-8 -> close (1007)")
            w.close()
            w = WS(port)
            w.send_frame(1, b"{}", mask=False)
            # RFC 6455 wants a close; libwebsockets 4.1 reads the frame as if masked: either is no crash.
            check(answer_or_close(w), f"an unmasked client frame -> {answer_or_close.last}")
            w.close()
            w = WS(port)
            w.send_frame(1, b"abc", length=1 << 62)
            code = w.expect_close()
            check(code in (1009, 1002, None), f"a frame claiming 2^62 bytes -> closed ({code})")
            w.close()
            w = WS(port)
            w.send_frame(9, b"p" * 200)  # a control frame over 125 bytes
            code = w.expect_close()
            check(code in (1002, None), f"a 200-byte ping -> closed ({code})")
            w.close()

            check(ok_page() == 200, "the page is still served at the end")
            w = WS(port)
            w.send_text('{"op":"get","id":11,"device":"psu1","name":"voltage"}')
            check(w.next_json({"reply"})["ok"], "a WebSocket still works at the end")
            w.close()
        except (Fail, OSError, EOFError) as e:
            print(f"FAIL: {e}\n--- labmq-web stderr:\n{lab.log('web.err')}", file=sys.stderr)
            return 1
        rc = lab.stop_web()
        err = lab.log("web.err")
        if rc != 0 or "ERROR: AddressSanitizer" in err or "runtime error" in err:
            print(f"FAIL: labmq-web exited with {rc}:\n{err}", file=sys.stderr)
            return 1
        print("ok: labmq-web stopped with status 0, no sanitizer report")
    return supervised(a)


def supervised(a):
    """labmq-web as a worker labmqd starts, supervises and stops."""
    with tempfile.TemporaryDirectory(prefix="labmq-web-sup-") as tmp:
        cfg = os.path.join(tmp, "lab.yaml")
        with open(cfg, "w") as f:
            f.write("devices:\n  - name: psu1\n    driver: sim-psu\n"
                    f"workers:\n  - name: web\n    program: {os.path.abspath(a.web)}\n"
                    "    args: [--listen, '127.0.0.1:0']\n    restart: never\n")
        with Lab(a.labmqd, a.web, a.cli, cfg, ndevices=1) as lab:
            try:
                lab.start_daemon()
                url = wait_for("the worker's URL in labmqd's output", lambda: re.search(
                    r"web: serving (http://127\.0\.0\.1:(\d+)/)", lab.log("labmqd.log")))
                port = int(url.group(2))
                check(status(http(port, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
                                        .encode())) == 200, "as a supervised worker it serves the page")
                wait_for("labmq workers to show web running", lambda: "running" in lab.run_cli("workers"))
                w = WS(port)
                w.send_text('{"op":"get","id":1,"device":"psu1","name":"voltage"}')
                check(w.next_json({"reply"})["ok"], "as a worker it reaches the daemon given by --control/--data")
                w.close()
                lab.daemon.send_signal(signal.SIGTERM)
                rc = lab.daemon.wait(30)
                log = lab.log("labmqd.log")
                check(rc == 0 and "web: stopped" in log, f"labmqd stops it with its own shutdown (exit {rc})")
                if "ERROR: AddressSanitizer" in log or "runtime error" in log:
                    raise Fail(f"sanitizer report:\n{log}")
            except (Fail, OSError, EOFError) as e:
                print(f"FAIL: {e}\n--- labmqd (and worker) output:\n{lab.log('labmqd.log')}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
