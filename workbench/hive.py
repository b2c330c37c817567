"""wrpme's hive (quasardb from December 2012) on the broker's key-value service.

``RawClient`` puts, updates, gets and removes str or bytes entries; ``Client`` pickles keys and
values so that any picklable object can be stored under any picklable key::

    from workbench.hive import Client, AliasNotFound
    hive = Client("127.0.0.1")          # or Client(): the broker NetWorkSpace would use
    hive.put(("user", 42), {"name": "Ada"})
    hive.get(("user", 42))              # -> {'name': 'Ada'}

Entries are the key-value entries of one workspace (``"hive"`` unless told otherwise), so
``NetWorkSpace("hive").listVars()`` lists a RawClient's keys. Each method is one atomic request
to the broker, so ``put`` on an existing key and ``compare_and_swap`` are race-free between
clients.

Where this differs from wrpme, and why:

- The port is the workbench broker's (8765), not wrpme's 5909 (documented, never attested) nor
  quasardb's 2836: the hive lives in the broker, not in a server of its own.
- ``update`` of a missing key raises ``AliasNotFound``, as wrpme documented it; quasardb 1.2 and
  later made it create the entry (an upsert). ``put`` is the way to create.
- ``get_update``, ``compare_and_swap`` and ``remove_all`` come from quasardb's first release;
  ``compare_and_swap`` compares the stored and the comparand's bytes (for ``Client``, their
  pickles; for ``RawClient``, their type too: ``"a"`` is not ``b"a"``).
- Messages read like quasardb's (``putting "<key>"``, the key cut to 128 characters, CR and LF
  made spaces), with the broker's own explanation after a colon when it gave one. ``Client``
  shows ``str(key)``, not the key's pickle.
- ``hostname`` may also be a broker's connection file (the path of a ``.json`` file), whose
  keys are used; ``port`` is then ignored. A file that cannot be used raises
  ``NwsConnectionFileException`` (a ``ValueError``) naming it, at construction; the file is read
  again at each reconnection (a restarted broker writes new keys), and one missing by then
  raises ``ConnectionRefused``, as a broker that is gone does.
- Connection errors are also the matching built-in exceptions (``Timeout`` is a
  ``TimeoutError``, ``ConnectionRefused`` a ``ConnectionRefusedError``, ...), so code written
  for sockets catches them too.
"""

from __future__ import annotations

import base64
import pickle
import socket
import threading
from typing import Any, Callable, TypeVar

from . import codec
from .client.cluster import is_several
from .client.connection import Connection
from .client.embedded import connect
from .client.keyvalue import Entry, KeyValueStore
from .config import CONNECT_TIMEOUT, DEFAULT_HOST, DEFAULT_PORT, MAX_NAME_LENGTH
from .connection_file import is_connection_file, resolve
from .errors import (
    NwsBadRequestException, NwsConnectException, NwsConnectionDroppedException, NwsException,
    NwsMemoryException, NwsMessageTooLargeException, NwsTimeoutException,
)
from .protocol import Status

__all__ = [
    "DEFAULT_WORKSPACE",
    "AliasAlreadyExists",
    "AliasNotFound",
    "Client",
    "ConnectionRefused",
    "ConnectionReset",
    "HostNotFound",
    "Internal",
    "InvalidInput",
    "NoMemory",
    "RawClient",
    "System",
    "Timeout",
    "WrpmeException",
]

#: The workspace whose key-value entries make the hive.
DEFAULT_WORKSPACE = "hive"
#: Characters of a key shown in an exception's message (quasardb's cut).
_SHOWN = 128
#: Names of ``Client`` entries: this prefix, then the key's pickle in URL-safe base64.
_PICKLED_KEY = "pickle:"
#: Fixed, so that a key names the same entry whatever Python version stores or reads it.
_KEY_PROTOCOL = 4
#: Fixed, as the workbench's own values: any Python 3.8+ reader unpickles them.
_VALUE_PROTOCOL = 5

_T = TypeVar("_T")


# ---------------------------------------------------------------------- exceptions


class WrpmeException(Exception):
    """Base exception for the hive."""


class System(WrpmeException):
    """A system error occurred."""


class Internal(WrpmeException):
    """The broker failed in a way this module has no better name for."""


class NoMemory(WrpmeException):
    """The broker's memory cap (``--max-memory``) would be exceeded; nothing was stored.

    Not a ``MemoryError``: that means this interpreter ran out, which is not the case."""


class HostNotFound(WrpmeException, socket.gaierror):
    """The host name could not be resolved."""


class AliasNotFound(WrpmeException):
    """The entry does not exist."""


class AliasAlreadyExists(WrpmeException):
    """The entry already exists: ``put`` never overwrites."""


class Timeout(WrpmeException, TimeoutError):
    """The broker did not answer in time.

    The key-value calls carry no time limit of their own: a broker that stops answering is
    noticed by the connection's heartbeats and raises ConnectionReset instead."""


class InvalidInput(WrpmeException, ValueError):
    """The key or the value is unusable: empty, of the wrong type, or too long."""


class ConnectionRefused(WrpmeException, ConnectionRefusedError):
    """No broker answered at the address."""


class ConnectionReset(WrpmeException, ConnectionResetError):
    """The connection dropped during the call; the next call connects again.

    The call may or may not have taken effect."""


_MAPPED: tuple[tuple[type[NwsException], type[WrpmeException]], ...] = (
    (NwsConnectException, ConnectionRefused),
    (NwsConnectionDroppedException, ConnectionReset),
    (NwsMemoryException, NoMemory),
    (NwsTimeoutException, Timeout),
    (NwsBadRequestException, InvalidInput),
    (NwsMessageTooLargeException, InvalidInput),  # the value is too big for this broker
)


def _mapped(exc: NwsException, message: str) -> WrpmeException:
    for nws, wrpme in _MAPPED:
        if isinstance(exc, nws):
            return wrpme(f"{message}: {exc}")
    return Internal(f"{message}: {exc}")


def _shown(alias: str) -> str:
    return alias[:_SHOWN].replace("\r", " ").replace("\n", " ")


# ---------------------------------------------------------------------- values


def _raw_encode(obj: Any) -> list:
    if isinstance(obj, bytes):
        obj = bytes(obj)  # a subclass would be pickled by codec.encode
    elif isinstance(obj, str):
        obj = str(obj)
    else:
        raise InvalidInput(f"RawClient takes str or bytes values, not {type(obj).__name__}; "
                           "Client pickles any object")
    if not obj:
        raise InvalidInput("the value is empty")
    return codec.encode(obj)


def _raw_decode(frames: list) -> Any:
    """str and bytes come back as stored; anything else (a pickle stored by a Client or a
    NetWorkSpace) comes back as its bytes, never unpickled."""
    return codec.decode_raw(frames)


def _pickled(obj: Any, protocol: int | None = None) -> bytes:
    """``pickle.dumps``, whose failures all raise ``pickle.PicklingError`` (as wrpme said):
    some objects make ``pickle`` raise TypeError or AttributeError instead."""
    try:
        return pickle.dumps(obj, protocol=protocol)
    except pickle.PicklingError:
        raise
    except (TypeError, AttributeError) as exc:
        raise pickle.PicklingError(f"cannot pickle {type(obj).__name__}: {exc}") from exc


def _pickle_encode(obj: Any) -> list:
    """The value's pickle, framed as a pickled value so that NetWorkSpace readers unpickle it."""
    return codec.from_pickle(_pickled(obj, _VALUE_PROTOCOL))


def _unpickled(data: Any, buffers: Any) -> Any:
    return pickle.loads(data, buffers=buffers)


def _pickle_decode(frames: list) -> Any:
    """Pickles are unpickled (their errors propagate); str, bytes and int stored by another
    kind of client come back as they are."""
    return codec.decode(frames, unpickle=_unpickled)


# ---------------------------------------------------------------------- clients


class RawClient:
    """The raw interface to a hive: keys and values are str or bytes, stored as they are.

    ``hostname``: a DNS name or an IPv4 address (the workbench connects over IPv4 only), or a
    broker's connection file; ``port`` defaults to the broker's (8765).
    Without either, the broker is found as ``NetWorkSpace`` finds it (``WORKBENCH_BROKER``, the
    default address, or a private broker). The client connects at construction (a failure
    raises ``HostNotFound`` or ``ConnectionRefused``) and disconnects at ``close()``, at the end
    of a ``with`` block, or when it is destroyed. A connection that dropped is made again by
    the next call, so a restarted broker is found again. ``timeout``: seconds to wait for a
    broker to answer when connecting.
    """

    _encode: Callable[[Any], list] = staticmethod(_raw_encode)
    _decode: Callable[[list], Any] = staticmethod(_raw_decode)

    def __init__(self, hostname: str | None = None, port: int | None = None,
                 workspace: str = DEFAULT_WORKSPACE, timeout: float = CONNECT_TIMEOUT) -> None:
        self.hostname = hostname
        self.port = port
        #: Several brokers acting as one (a list, a cluster file): each key lives on the one
        #: it is placed on (``client.cluster``), through one ClusterKeyValueStore.
        self._several = is_several(hostname)
        # Read now so that a bad file fails at once, and kept for messages (never the keys).
        self._where = (resolve(hostname).describe() if hostname is not None and not self._several
                       and is_connection_file(hostname) else None)
        self.workspace = workspace
        self.timeout = timeout
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._store: KeyValueStore | None = None
        self._closed = False
        with self._lock:
            self._connect()

    def __repr__(self) -> str:
        where = (self._store.address if self._several and self._store is not None
                 else self._connection.address if self._connection is not None
                 else "disconnected")
        return f"<{type(self).__name__} {self.workspace!r} at {where}>"

    # ------------------------------------------------------------------ the wrpme API

    def put(self, key: Any, obj: Any) -> None:
        """Store ``obj`` under a new ``key``; AliasAlreadyExists if the key exists."""
        name, message = self._name(key), self._message("putting", key)
        status, _ = self._call(message, lambda kv: kv.store(name, obj, how="add"))
        if status == Status.EXISTS:
            raise AliasAlreadyExists(message)

    def update(self, key: Any, obj: Any) -> None:
        """Replace the value of an existing ``key``; AliasNotFound if it is missing."""
        name, message = self._name(key), self._message("updating", key)
        status, _ = self._call(message, lambda kv: kv.store(name, obj, how="replace"))
        if status == Status.MISSING:
            raise AliasNotFound(message)

    def get(self, key: Any) -> Any:
        """The value stored under ``key``; AliasNotFound if it is missing."""
        name, message = self._name(key), self._message("getting", key)
        return self._found(message, self._call(message, lambda kv: kv.get(name)))

    def remove(self, key: Any) -> None:
        """Remove ``key`` and its value; AliasNotFound if it is missing."""
        name, message = self._name(key), self._message("removing", key)
        if not self._call(message, lambda kv: kv.delete(name)):
            raise AliasNotFound(message)

    def get_update(self, key: Any, obj: Any) -> Any:
        """Replace the value of an existing ``key`` -> the value it had; AliasNotFound if it is
        missing."""
        name, message = self._name(key), self._message("getting and updating", key)
        return self._found(message, self._call(message, lambda kv: kv.swap(name, obj)))

    def compare_and_swap(self, key: Any, new_obj: Any, comparand: Any) -> Any:
        """Replace the value of ``key`` by ``new_obj`` only if it equals ``comparand`` -> the
        value it had, swapped or not (compare it with ``comparand`` to know which);
        AliasNotFound if it is missing."""
        name, message = self._name(key), self._message("comparing and swapping", key)
        return self._found(message, self._call(
            message, lambda kv: kv.compare_and_swap(name, new_obj, comparand)))

    def remove_all(self) -> None:
        """Remove every entry of the hive (every variable of its workspace)."""
        self._call("removing all", lambda kv: kv.flush())

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Disconnect; later calls raise ConnectionReset."""
        with self._lock:
            self._closed = True
            self._drop()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Destruction needs no __del__: the connection, held only here, says goodbye to the broker
    # when it is collected, without waiting for an answer.

    # ------------------------------------------------------------------ keys and calls

    def _name(self, key: Any) -> str:
        """``key`` as an entry name of the workspace."""
        if isinstance(key, bytes):
            try:
                key = key.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput("a bytes key must be UTF-8 text (entry names are text)") \
                    from None
        elif not isinstance(key, str):
            raise InvalidInput(f"RawClient takes str or bytes keys, not {type(key).__name__}; "
                               "Client pickles any object")
        if not key:
            raise InvalidInput("the key is empty")
        if len(key.encode("utf-8")) > MAX_NAME_LENGTH:
            raise InvalidInput(f"key too long: {MAX_NAME_LENGTH} bytes at most")
        return key

    def _shown_key(self, key: Any) -> str:
        return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)

    def _message(self, doing: str, key: Any) -> str:
        return f'{doing} "{_shown(self._shown_key(key))}"'

    @staticmethod
    def _found(message: str, entry: Entry | None) -> Any:
        if entry is None:
            raise AliasNotFound(message)
        return entry.value

    def _call(self, message: str, operation: Callable[[KeyValueStore], _T]) -> _T:
        """Run one operation, connecting first if the connection is gone; broker failures
        become this module's exceptions, prefixed with ``message``."""
        with self._lock:
            if self._closed:
                raise ConnectionReset(f"{message}: the client is closed")
            connection = self._connection
            if self._several:  # its sessions reconnect by themselves
                if self._store is None:
                    self._connect(message)
            elif connection is None or connection.closed or connection.broken:
                self._drop()
                self._connect(message)
                connection = self._connection
            store = self._store
        try:
            return operation(store)
        except NwsException as exc:
            if isinstance(exc, NwsConnectionDroppedException):
                with self._lock:
                    if self._connection is connection:
                        # known gone: close without the goodbye that would wait for an answer
                        connection.broken = connection.broken or str(exc)
                        self._drop()
            raise _mapped(exc, message) from exc

    def _connect(self, message: str = "") -> None:
        """Open a new connection (the lock is held)."""
        if message == "":
            if self._where is not None:
                where = self._where
            elif self.hostname is None and self.port is None:
                where = "the broker"
            elif self._several:
                where = "the cluster of brokers"
            else:
                where = f"{self.hostname or DEFAULT_HOST}:{self.port or DEFAULT_PORT}"
            message = f"connecting to {where}"
        if self._several:
            try:
                self._store = KeyValueStore(self.hostname, workspace=self.workspace,
                                            timeout=self.timeout, encode=self._encode,
                                            decode=self._decode)
            except NwsException as exc:
                raise _mapped(exc, message) from exc
            return
        if self.hostname is not None and self._where is None:
            if ":" in self.hostname:
                raise InvalidInput(f"{message}: IPv6 addresses are not supported; use an IPv4 "
                                   "address or a host name")
            try:  # ZeroMQ would only keep trying an unresolvable name until the timeout
                socket.getaddrinfo(self.hostname, self.port or DEFAULT_PORT,
                                   type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise HostNotFound(f"{message}: cannot resolve {self.hostname!r}: "
                                   f"{exc.strerror}") from exc
        try:
            connection = connect(self.hostname, self.port, self.timeout)
        except NwsException as exc:
            raise _mapped(exc, message) from exc
        self._connection = connection
        self._store = KeyValueStore(workspace=self.workspace, connection=connection,
                                    encode=self._encode, decode=self._decode)

    def _drop(self) -> None:
        """Close the connection, if any (the lock is held)."""
        connection, self._connection, store, self._store = (self._connection, None,
                                                            self._store, None)
        if self._several and store is not None:
            store.close()
        if connection is not None and not connection.closed:
            connection.close()


class Client(RawClient):
    """The classic interface to a hive: keys and values are any picklable objects.

    Both are pickled, so ``Client("h").put("a", 1)`` and ``RawClient("h").put("a", b"1")`` name
    different entries. A key's entry name is ``"pickle:"`` and the URL-safe base64 of its
    pickle (protocol 4, whatever the Python version): equal keys must pickle alike, which str,
    bytes, numbers and tuples of them do, but sets of strings do not across processes (their
    order depends on the string hash seed). Pickles longer than the broker's names allow raise
    InvalidInput. Objects that cannot be pickled raise ``pickle.PicklingError``; values that
    cannot be unpickled raise what ``pickle.loads`` raises. Empty strings are valid keys and
    values here: their pickles are not empty.
    """

    _encode = staticmethod(_pickle_encode)
    _decode = staticmethod(_pickle_decode)

    def _name(self, key: Any) -> str:
        name = _PICKLED_KEY + base64.urlsafe_b64encode(_pickled(key, _KEY_PROTOCOL)).decode()
        if len(name) > MAX_NAME_LENGTH:
            raise InvalidInput(f"key too long: its pickle takes more than {MAX_NAME_LENGTH} "
                               "bytes once encoded")
        return name

    def _shown_key(self, key: Any) -> str:
        return str(key)
