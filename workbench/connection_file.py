"""Connection files: where a broker is and the keys to talk to it, the way Jupyter and
ipyparallel hand out connections.

A broker that speaks CURVE writes one (JSON, mode 0600)::

    {"address": "tcp://10.0.0.5:8765", "mechanism": "CURVE",
     "server_key": "<Z85>", "client_key": "<Z85>", "client_secret": "<Z85>"}

Whoever holds the file can connect: it is a password, to be kept like one. Wherever a client
takes a broker's address it also takes a connection file: a path to an existing ``.json``
file, or the JSON text itself (how workers get it without a key on their command line).
``resolve`` is the one place that tells them apart.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import TYPE_CHECKING, NamedTuple

from .certificates import write_private
from .config import normalize_address
from .errors import NwsConnectionFileException
from .zmtp import z85

if TYPE_CHECKING:
    from .zmtp.curve import ClientKeys

SUFFIX = ".json"
_KEYS = ("server_key", "client_key", "client_secret")


class BrokerTarget(NamedTuple):
    """A broker to connect to: its address and, for CURVE, the keys."""

    address: str  # tcp://host:port (or ipc://path)
    server_key: bytes | None = None
    client_key: bytes | None = None
    client_secret: bytes | None = None
    source: str | None = None  # the connection file it came from, for messages

    @property
    def curve(self) -> bool:
        return self.server_key is not None

    def client_keys(self) -> ClientKeys | None:
        """The keys the client's sockets use, or None for the plain mechanism;
        NwsConnectionFileException for a broker's file that carries no client key pair."""
        if self.server_key is None:
            return None
        if self.client_key is None:
            raise NwsConnectionFileException(
                f"{self.source} has the broker's key but no client key pair (the broker lets "
                "in only its --allow-keys): make your own file with `workbench connection-file "
                f"{self.source} --key-file NAME.key_secret -o PATH`")
        from .zmtp.curve import ClientKeys, KeyPair
        return ClientKeys(self.server_key, KeyPair(self.client_key, self.client_secret))

    def __repr__(self) -> str:
        # Never the secret key: a target ends up in tracebacks, logs and notebook outputs.
        fields = [f"address={self.address!r}", f"mechanism={'CURVE' if self.curve else 'NULL'!r}"]
        if self.client_key is not None:
            fields.append(f"client_key={z85.encode(self.client_key)!r}")
        if self.source is not None:
            fields.append(f"source={self.source!r}")
        return f"BrokerTarget({', '.join(fields)})"

    def describe(self) -> str:
        """The address, and the file it came from, for messages."""
        return self.address if self.source is None else f"{self.address} ({self.source})"

    def to_json(self) -> str:
        """The connection file's text (a worker gets it this way, never on a command line)."""
        found = {"address": self.address}
        if self.curve:
            found.update(mechanism="CURVE", server_key=z85.encode(self.server_key))
        if self.client_key is not None:
            found.update(client_key=z85.encode(self.client_key),
                         client_secret=z85.encode(self.client_secret))
        return json.dumps(found, indent=1)


def is_connection_file(text: str) -> bool:
    """Whether a broker argument names a connection file (a ``.json`` path) or is one's JSON
    text, rather than an address."""
    text = text.strip()
    return text.startswith("{") or text.endswith(SUFFIX)


def resolve(text: str) -> BrokerTarget:
    """A broker argument -> what to connect to: an address (``host:port``, ``tcp://...``, a
    port), a connection file's path, or its JSON text. NwsConnectionFileException names a
    file that cannot be used and says why."""
    text = text.strip()
    if text.startswith("{"):
        return parse(text, "the connection given as JSON text")
    if is_connection_file(text):
        return read(text)
    return BrokerTarget(normalize_address(text))


def read(path: str) -> BrokerTarget:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise NwsConnectionFileException(
            f"cannot read the connection file {path}: {exc.strerror or exc}") from None
    except UnicodeError as exc:
        raise NwsConnectionFileException(
            f"{path} is not a connection file (not UTF-8 text: {exc})") from None
    return parse(text, path)


def parse(text: str, source: str) -> BrokerTarget:
    """A connection file's JSON text -> the target; ``source`` names it in errors."""
    try:
        found = json.loads(text)
    except ValueError as exc:
        raise NwsConnectionFileException(f"{source} is not a connection file (not JSON: {exc})")
    if not isinstance(found, dict) or not isinstance(found.get("address"), str):
        raise NwsConnectionFileException(
            f"{source} is not a connection file: it has no \"address\" (a broker writes one "
            "when it starts off loopback; `workbench broker --connection-file PATH`)")
    address = normalize_address(found["address"])
    names = [name for name in _KEYS if found.get(name) is not None]
    if names and names[0] != "server_key" or len(names) == 2:
        missing = [name for name in _KEYS if name not in names]
        raise NwsConnectionFileException(
            f"{source} lacks {', '.join(missing)}: a CURVE connection needs the broker's key "
            "and a client key pair")
    keys = []
    for name in names:
        key = found[name]
        try:
            value = z85.decode(key) if isinstance(key, str) else b""
        except ValueError:
            value = b""
        if len(value) != 32:
            raise NwsConnectionFileException(
                f"{source}: {name} is not a CURVE key (40 characters of Z85)")
        keys.append(value)
    return BrokerTarget(address, *keys, source=source)


def write(path: str, target: BrokerTarget) -> None:
    """Write ``target`` to ``path``, mode 0600 (its directory is made 0700 if missing)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    write_private(path, target.to_json() + "\n")


def runtime_directory() -> str:
    """Where a broker writes its connection file by default: ``workbench`` in the user's
    runtime directory (``$XDG_RUNTIME_DIR``, which only the user can enter), else in a
    private folder of this user's under the temporary directory."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, "workbench")
    return os.path.join(tempfile.gettempdir(), f"workbench-{os.getuid()}", "runtime")


def default_path(port: int) -> str:
    return os.path.join(runtime_directory(), f"broker-{port}{SUFFIX}")
