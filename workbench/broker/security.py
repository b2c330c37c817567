"""What a broker that speaks CURVE holds: its key pair, which clients it lets in, and the
connection file it hands out.

Off loopback the broker speaks CURVE unless told ``--insecure`` (``cli.run_broker``): it
loads its key pair from ``--key-file`` or makes one, and writes a connection file (mode 0600)
holding a client key pair: that pair's public key is the only one let in (``FileKeys``), so
the file is the credential and the server's public key stays public, as CURVE means it. With
``--allow-keys DIR`` the broker lets in instead the clients whose public certificates are in
DIR, read again whenever DIR changes, so that adding or removing a file admits or shuts out a
key without a restart (connections already made stay up).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

from ..certificates import CertificateError, public_keys, read_secret
from ..connection_file import BrokerTarget, read as read_connection_file
from ..errors import NwsConnectionFileException
from ..zmtp.curve import KeyPair

log = logging.getLogger("workbench.broker")


class AllowedKeys:
    """The client keys of the ``*.key`` certificates in a directory, as a predicate."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._stamp = self._read_stamp()
        self._keys = public_keys(directory)  # CertificateError at start: a typo must not pass
        if not self._keys:
            log.warning("--allow-keys %s holds no *.key certificate: no client can connect "
                        "until one is added", directory)

    def _read_stamp(self) -> int | None:
        try:
            return os.stat(self.directory).st_mtime_ns
        except OSError:
            return None

    def __call__(self, client_key: bytes) -> bool:
        stamp = self._read_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._keys = public_keys(self.directory)
                log.info("--allow-keys %s read again: %d keys", self.directory, len(self._keys))
            except CertificateError as exc:  # keep the keys that were good
                log.warning("--allow-keys: %s; keeping the %d keys read before", exc,
                            len(self._keys))
        return client_key in self._keys

    def __len__(self) -> int:
        return len(self._keys)


class FileKeys:
    """The client keys of the connection files this broker wrote, as a predicate."""

    directory = None

    def __init__(self) -> None:
        self._keys: set[bytes] = set()

    def add(self, client_key: bytes) -> None:
        self._keys.add(client_key)

    def __call__(self, client_key: bytes) -> bool:
        return client_key in self._keys


@dataclass(frozen=True)
class CurveSecurity:
    keys: KeyPair
    allowed: AllowedKeys | FileKeys

    @property
    def authorize(self) -> Callable[[bytes], bool]:
        return self.allowed

    def describe(self) -> dict:
        """For ``workbench status``."""
        return {"mechanism": "CURVE", "allowed_keys": self.allowed.directory}


def load_keys(key_file: str | None) -> KeyPair:
    """The broker's key pair: from a secret certificate, or made for this run."""
    if key_file is None:
        return KeyPair.generate()
    found = read_secret(key_file)
    pair = KeyPair.from_secret(found.secret)
    if pair.public != found.public:
        raise CertificateError(f"{key_file}: its public key does not belong to its secret key")
    return pair


def client_target(path: str, address: str, server_key: bytes,
                  with_client_key: bool) -> BrokerTarget:
    """The connection file to write at ``path``: the client key pair of the file already
    there when it is for the same server key (so files handed out stay good across
    restarts), else a new one; none with ``--allow-keys`` (each client brings its own)."""
    if not with_client_key:
        return BrokerTarget(address, server_key, source=path)
    try:
        old = read_connection_file(path)
    except NwsConnectionFileException:
        old = None
    if old is not None and old.server_key == server_key and old.client_key:
        return old._replace(address=address)
    pair = KeyPair.generate()
    return BrokerTarget(address, server_key, pair.public, pair.secret, source=path)

