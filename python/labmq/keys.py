"""CURVE keys for a daemon with security (docs/security.md): this client's
key pair and the daemon's public key.

    keys = labmq.Keys("~/.config/labmq/alice.key", "labpc.key.pub")
    lab = labmq.connect("tcp://labpc:5555", keys=keys)

Key files are the ones `labmq keygen` writes (CZMQ's certificate format, read
with zmq.auth.load_certificate). A Keys object pickles as its two file names
(or the daemon's Z85 key), never as key material, and loads them again
wherever it is unpickled."""

import os
import stat

import zmq
import zmq.auth

from . import errors

Z85_LEN = 40


def _z85_ok(text):
    if not isinstance(text, str) or len(text) != Z85_LEN:
        return False
    try:
        return len(zmq.utils.z85.decode(text.encode())) == 32
    except (ValueError, KeyError, TypeError):
        return False


def _load(path, need_secret):
    path = os.path.expanduser(path)
    try:
        st = os.stat(path)
        public, secret = zmq.auth.load_certificate(path)
    except FileNotFoundError as e:
        raise errors.IOError(f"cannot open key file {path}: {e.strerror}") from None
    except OSError as e:
        raise errors.IOError(f"cannot read key file {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise errors.ConfigError(f"key file {path}: {e} (is it a key file made by labmq keygen?)") from None
    if not public or not _z85_ok(public.decode("ascii", "replace")):
        raise errors.ConfigError(f"key file {path}: no valid public-key line (is it a key file made by labmq keygen?)")
    if need_secret:
        if not secret:
            raise errors.ConfigError(f"key file {path} holds only a public key; this needs the key pair "
                                     f"(the file without .pub)")
        if st.st_mode & 0o077:
            raise errors.PermissionError(f"key file {path} holds a secret key but has mode "
                                         f"{stat.S_IMODE(st.st_mode):04o}: other users may read it; run chmod 600 "
                                         f"{path}")
        if not _z85_ok(secret.decode("ascii", "replace")) or zmq.curve_public(secret) != public:
            raise errors.ConfigError(f"key file {path}: its secret key does not belong to its public key")
    return public, secret


class Keys:
    """key_file: this client's key pair (mode 0600); server_key: the daemon's
    public key, as its .pub file or the 40-character Z85 text. Raises
    labmq.IOError, ConfigError or PermissionError (a secret others can read)
    at once, naming the file."""

    def __init__(self, key_file, server_key):
        if not key_file or not server_key:
            raise errors.ArgError("Keys needs both this client's key file and the daemon's public key")
        self._args = (key_file, server_key)
        self.public_key, self._secret = _load(key_file, True)
        if _z85_ok(server_key):
            self.server_key = server_key.encode()
        else:
            self.server_key, _ = _load(server_key, False)

    def apply(self, sock):
        """Makes sock a CURVE client with these keys (before it connects)."""
        sock.curve_serverkey = self.server_key
        sock.curve_publickey = self.public_key
        sock.curve_secretkey = self._secret

    def __reduce__(self):
        return (Keys, self._args)

    def __repr__(self):
        return f"labmq.Keys({self._args[0]!r}, server public key {self.server_key.decode()})"


def make(keys=None, key=None, server_key=None):
    """keys, or Keys(key, server_key) when those are given; None for none."""
    if keys is not None and (key or server_key):
        raise errors.ArgError("give keys=Keys(...) or key= and server_key=, not both")
    if keys is not None and not isinstance(keys, Keys):
        raise errors.ArgError(f"keys is a labmq.Keys, not {type(keys).__name__}")
    if key or server_key:
        return Keys(key, server_key)
    return keys
