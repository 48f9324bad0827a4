"""A daemon with keys (docs/security.md) on loopback tcp, from Python: key
files made by `labmq keygen`, a control and an observe client, refusals of an
unknown key and of a client without keys, Keys' own checks, pickling, asyncio,
and the pyzmq-only example with --key/--server-key."""

import asyncio
import os
import pickle
import subprocess
import sys

import pytest
import zmq
import zmq.auth

import labmq
import labmq.aio
from labmqd import LAB_YAML, REPO, Daemon, build_dir

EXAMPLES = os.path.join(REPO, "examples", "python")


def free_port():
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.ROUTER)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    s.close(linger=0)
    return port


def keygen(path):
    r = subprocess.run([os.path.join(build_dir(), "tools", "labmq"), "keygen", "-o", path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return path


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """labmqd with keys: alice may control, bob may observe; carol's key is
    not on the list."""
    keys = tmp_path_factory.mktemp("keys")
    k = {name: keygen(str(keys / f"{name}.key")) for name in ("server", "alice", "bob", "carol")}
    public, secret = zmq.auth.load_certificate(k["alice"])
    server_public, _ = zmq.auth.load_certificate(k["server"] + ".pub")
    d = Daemon(LAB_YAML + f"""\
security:
  key: {k['server']}
  clients:
    - {{name: alice, key: {k['alice']}.pub, role: control}}
    - {{name: bob, key: {k['bob']}.pub, role: observe}}
""", curve={zmq.CURVE_SERVERKEY: server_public, zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret},
               log_level="info")  # the audit lines are info
    d.control = f"tcp://127.0.0.1:{free_port()}"
    d.data = f"tcp://127.0.0.1:{free_port()}"
    d.start()
    d.keys = k
    yield d
    d.finish()


def test_control_client_sets_and_reads(secured):
    k = secured.keys
    with labmq.connect(secured.control, key=k["alice"], server_key=k["server"] + ".pub", timeout=5) as lab:
        psu = lab.device("psu1")
        psu.voltage = 1.5
        assert psu.voltage == pytest.approx(1.5, abs=0.01)
        # A proxy pickles with its key file names and works where it lands.
        again = pickle.loads(pickle.dumps(psu))
        assert again.get("voltage") == pytest.approx(1.5, abs=0.01)
        psu.voltage = 0.0
    assert "audit: alice set psu1.voltage 1.5 -> OK" in secured.log_text()


def test_observe_client_reads_and_subscribes_but_cannot_write(secured):
    k = secured.keys
    server_z85 = zmq.auth.load_certificate(k["server"] + ".pub")[0].decode()
    keys = labmq.Keys(k["bob"], server_z85)  # the server key as Z85 text works too
    with labmq.connect(secured.control, keys=keys, timeout=5) as lab:
        psu = lab.device("psu1")
        assert isinstance(psu.voltage, float)
        assert "voltage" in [p["name"] for p in lab.describe("psu1")["properties"]]
        with pytest.raises(labmq.PermissionError) as e:
            psu.voltage = 1.0
        assert e.value.message == "client 'bob' has role observe; set needs control"
        with pytest.raises(labmq.PermissionError):
            psu.call("reset")
        with lab.subscribe("daq1/wave", timeout=10) as sub:
            block = sub.recv()
            assert block.data.size > 0


def test_unknown_key_and_no_keys_are_refused(secured):
    k = secured.keys
    with labmq.connect(secured.control, key=k["carol"], server_key=k["server"] + ".pub", timeout=0.5) as lab:
        with pytest.raises(labmq.UnreachableError) as e:
            lab.ping()
        assert "allow-list" in e.value.message
    with labmq.connect(secured.control, timeout=0.5) as lab:
        with pytest.raises(labmq.UnreachableError):
            lab.ping()
    log = secured.log_text()
    carol = zmq.auth.load_certificate(k["carol"])[0].decode()
    assert f"its public key {carol} is not on the allow-list" in log
    assert "does not use CURVE" in log or "without CURVE keys" in log


def test_asyncio_client_with_keys(secured):
    k = secured.keys

    async def main():
        lab = labmq.aio.connect(secured.control, key=k["alice"], server_key=k["server"] + ".pub", timeout=5)
        try:
            return (await lab.ping())["daemon"]
        finally:
            lab.close()

    assert asyncio.run(main()) == "labmqd"


def test_keys_checks_files(tmp_path):
    key = keygen(str(tmp_path / "me.key"))
    os.chmod(key, 0o644)
    with pytest.raises(labmq.PermissionError) as e:
        labmq.Keys(key, key + ".pub")
    assert "chmod 600" in e.value.message
    os.chmod(key, 0o600)
    with pytest.raises(labmq.ConfigError) as e:
        labmq.Keys(key + ".pub", key + ".pub")
    assert "holds only a public key" in e.value.message
    with pytest.raises(labmq.IOError):
        labmq.Keys(str(tmp_path / "missing.key"), key + ".pub")
    with pytest.raises(labmq.ArgError):
        labmq.connect("tcp://127.0.0.1:9", key=key)
    assert repr(pickle.loads(pickle.dumps(labmq.Keys(key, key + ".pub")))).startswith("labmq.Keys(")


def test_iv_scan_example_with_keys(secured):
    k = secured.keys
    cmd = [sys.executable, os.path.join(EXAMPLES, "iv_scan.py"), secured.control, "--seconds", "0.3"]
    r = subprocess.run(cmd + ["--key", k["alice"], "--server-key", k["server"] + ".pub"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("iv_scan.py: ok")
    r = subprocess.run(cmd + ["--key", k["bob"], "--server-key", k["server"] + ".pub"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "PERMISSION: client 'bob' has role observe" in r.stderr, r.stdout + r.stderr


def test_iv_scan_pkg_example_with_keys(secured):
    k = secured.keys
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, "iv_scan_pkg.py"), secured.control, "--seconds", "0.3",
                        "--key", k["alice"], "--server-key", k["server"] + ".pub"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("iv_scan_pkg.py: ok")
