"""python-memcached's ``Client`` (v1.60) on the broker's key-value service.

Scripts written for python-memcached run after changing one import::

    from workbench import memcache          # was: import memcache
    mc = memcache.Client(["127.0.0.1:8765"])
    mc.set("some_key", "Some value")
    mc.get("some_key")                      # -> 'Some value'

Each "server" is a broker; its entries are the SINGLE variables of one workspace (``"memcache"``
unless ``workspace=`` says otherwise), so ``NetWorkSpace(workspace).listVars()``, ``find`` and
any other workbench client see them. Everything python-memcached decides on the client is kept:
key checks and their exception classes, the flag semantics of values (the exact type survives a
round trip: bytes, str, int, and pickled anything else, bool included), ``min_compress_len``,
the client-side value size limit, memcached's expiry rules, ``cache_cas``, the cmemcache hash with
weighted buckets and ten rehashes past a dead server, ``dead_retry``, ``flush_on_reconnect``,
``key_prefix`` multi operations keyed by the caller's original keys, and the return values
(True/False/0, 1/0, int/None) of every method. The Client is a ``threading.local``: each thread
has its own connections, as in the original.

Values travel in the workbench codec's frame format (bytes as ``Kind.BYTES``, str as
``Kind.TEXT``, int as decimal ``Kind.INT``, the rest pickled with the given pickler as
``Kind.PICKLE``, zlib or the given compressor behind the ``COMPRESSED`` flag), so that other
workbench clients decode them too, and so that the broker can ``incr`` a number stored as an int
or as a string of digits without changing its type.

Where the workbench differs, and what was chosen:

- A server is a broker address: ``"host:port"``, ``"tcp://host:port"`` or ``"inet:host:port"``;
  the default port is the broker's (``config.DEFAULT_PORT``), not 11211. Unix sockets and
  ``inet6:`` addresses are refused (``ValueError``). A server may also be a broker's connection
  file (the path of a ``.json`` file, as ``"server.json"`` or ``("server.json", weight)``): its
  keys are used, and it is read again at each reconnection, so a restarted broker's new keys
  are found. A file that cannot be used (missing, unreadable, not a connection file) raises
  ``NwsConnectionFileException`` (a ``ValueError``) naming it when the Client is made: that is
  a mistake in the configuration, not a server that went away. A file that disappears later
  (its broker stopped) marks the server dead, as an unreachable address does.
- Keys must also be valid broker names: UTF-8 text the broker considers printable. A bytes key
  that is not UTF-8, or one holding a non-printable character such as U+00A0 (allowed by
  memcached's byte rule), raises ``MemcachedKeyCharacterError`` saying so, even with
  ``check_keys=False``. A str that cannot be encoded as UTF-8 (a lone surrogate) raises
  ``MemcachedStringEncodingError``.
- ``noreply=True`` still waits for the broker's answer (each operation is one request); the
  method then returns what python-memcached returns with noreply: True, 1, or None for incr/decr.
- ``delete``'s ``time`` argument (memcached's long-gone "hold" time) is accepted and ignored.
  ``delete`` returns 1 whether or not the key existed, as python-memcached does, and 0 only when
  no server could be reached.
- ``socket_timeout`` bounds connecting to a broker. A broker that stops answering afterwards is
  noticed by the connection's heartbeats (3 s by default), which then fail the call; the store's
  ``op_timeout`` is not used, because a timed-out call to a hung broker then waits for its
  cancellation, and closing for its goodbye, several seconds more than the heartbeats take.
- ``get_stats`` builds memcached's fields from the broker's status: ``curr_items`` and ``bytes``
  count the whole broker, ``stat_args`` other than None give an empty dict, and ``get_slabs``
  gives an empty dict per server (the broker has no slabs).
- Keys that hash to no live server are reported by ``set_multi`` as not stored (python-memcached
  left them out of its list unless every server was down).
- The item size limit of memcached 1.6 is applied by the client, as the broker has none: a
  value whose item (59 bytes, the key, 4 bytes of flags unless 0, and the value) exceeds 1 MiB
  is not sent, and ``set`` returns False, as the original does when memcached answers
  ``SERVER_ERROR object too large for cache`` (with ``debug``, the same line is logged). A larger
  ``server_max_value_length`` raises the item size with it (memcached's ``-I``); 0 removes both.
  An append or prepend is checked for the added part only: memcached also refuses one whose
  joined value would not fit, which the client cannot know.
- append/prepend never compress the added value: the broker concatenates plain payloads only,
  and appending to a compressed value is refused (the call returns False).
- Times may be floats, and ``datetime.timedelta`` is accepted wherever a time is; both follow
  memcached's rules (over 30 days means an absolute Unix time).
"""

from __future__ import annotations

import binascii
import datetime
import io
import pickle
import re
import sys
import threading
import time as _time
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from . import codec
from .client.keyvalue import Entry, KeyValueStore
from .config import DEFAULT_PORT
from .connection_file import is_connection_file, resolve
from .errors import (
    NwsConnectException, NwsConnectionDroppedException, NwsException, NwsOperationException,
    NwsTimeoutException,
)
from .protocol import DESCRIPTOR_SIZE, Status

__all__ = [
    "SERVER_MAX_KEY_LENGTH",
    "SERVER_MAX_VALUE_LENGTH",
    "Client",
    "MemcachedKeyCharacterError",
    "MemcachedKeyError",
    "MemcachedKeyLengthError",
    "MemcachedKeyNoneError",
    "MemcachedKeyTypeError",
    "MemcachedStringEncodingError",
    "cmemcache_hash",
    "useOldServerHashFunction",
]

SERVER_MAX_KEY_LENGTH = 250
#: memcached's default item size limit; values longer than this are not sent. Change it here
#: (``memcache.SERVER_MAX_VALUE_LENGTH = N``) or per client with ``server_max_value_length``.
SERVER_MAX_VALUE_LENGTH = 1024 * 1024
DEFAULT_WORKSPACE = "memcache"

#: What memcached 1.6 (measured on 1.6.18) counts in an item besides its value: a 48-byte
#: header, 8 bytes of CAS, the key and its NUL, the value's CRLF; and 4 bytes of flags unless
#: they are 0. An item must fit in the largest slab: ``-I``, 1 MiB unless raised.
_ITEM_OVERHEAD = 48 + 8 + 1 + 2
_ITEM_FLAGS_SIZE = 4
_ITEM_SIZE_MAX = 1024 * 1024
#: What memcached answers to a value whose item does not fit, and ``set`` reads as False.
_TOO_LARGE = "SERVER_ERROR object too large for cache"

_DEAD_RETRY = 30  # seconds before a dead server is tried again
_SOCKET_TIMEOUT = 3  # seconds to wait for a broker to answer a new connection
#: memcached reads an expiry time above 30 days as an absolute Unix time.
_MAX_RELATIVE_EXPIRY = 60 * 60 * 24 * 30
_EXPIRED = -1.0  # the store's ttl for "already expired"
#: ``time``'s default, which the usual call's test takes by identity: another 0 (0.0, a bool)
#: only goes the general way, to the same result.
_NEVER = 0
_OK = int(Status.OK)  # bound once: an enum member costs a class lookup at each use

valid_key_chars_re = re.compile(rb"[\x21-\x7e\x80-\xff]+")

#: What python-memcached's socket errors become here: the server is marked dead.
_CONNECTION_ERRORS = (NwsConnectException, NwsConnectionDroppedException, NwsTimeoutException)


class MemcachedKeyError(Exception):
    pass


class MemcachedKeyLengthError(MemcachedKeyError):
    pass


class MemcachedKeyCharacterError(MemcachedKeyError):
    pass


class MemcachedKeyNoneError(MemcachedKeyError):
    pass


class MemcachedKeyTypeError(MemcachedKeyError):
    pass


class MemcachedStringEncodingError(Exception):
    pass


def cmemcache_hash(key: bytes) -> int:
    """The server hash python-memcached shares with cmemcache (never 0)."""
    return (((binascii.crc32(key) & 0xffffffff) >> 16) & 0x7fff) or 1


serverHashFunction: Callable[[bytes], int] = cmemcache_hash


def useOldServerHashFunction() -> None:
    """Use the old python-memcache server hash function (plain crc32)."""
    global serverHashFunction
    serverHashFunction = binascii.crc32


def _store_ttl(expiry: Any) -> float:
    """memcached's exptime -> the store's seconds from now (0 never, negative expired).

    0 (or None) never expires; up to 30 days is relative; above that an absolute Unix time,
    expired at once if past; negative is expired at once. A timedelta counts as its seconds."""
    if expiry is None:
        return 0
    seconds = expiry.total_seconds() if isinstance(expiry, datetime.timedelta) else float(expiry)
    if seconds == 0:
        return 0
    if seconds > _MAX_RELATIVE_EXPIRY:
        seconds -= _time.time()
    return seconds if seconds > 0 else _EXPIRED


def _original(key: Any) -> Any:
    """A multi operation's key as results report it: a ``(hashvalue, key)`` tuple's key."""
    return key[1] if isinstance(key, tuple) else key


def _broker_name(key: bytes) -> None:
    """Refuse a key the broker cannot take as a name: it must be printable UTF-8 text."""
    try:
        name = key.decode("utf-8")
    except UnicodeDecodeError:
        raise MemcachedKeyCharacterError(
            f"key {key!r} is not UTF-8: the broker's keys are UTF-8 text") from None
    if not name.isprintable():
        raise MemcachedKeyCharacterError(
            f"key {name!r} holds a character the broker does not accept in a name "
            "(non-printable)")


class _Host:
    """One broker of the pool: its address, weight, store connection and dead-until time."""

    def __init__(self, host: str | tuple, debug: int = 0, dead_retry: float = _DEAD_RETRY,
                 socket_timeout: float = _SOCKET_TIMEOUT, flush_on_reconnect: int = 0,
                 workspace: str = DEFAULT_WORKSPACE,
                 decode: Callable[[list], Any] = codec.decode) -> None:
        self.dead_retry = dead_retry
        self.socket_timeout = socket_timeout
        self.debug = debug
        self.flush_on_reconnect = flush_on_reconnect
        self.workspace = workspace
        self._decode = decode
        if isinstance(host, tuple):
            host, self.weight = host
        else:
            self.weight = 1
        # A connection file is read now, so that a bad one fails here; the connection reads
        # it again (a restarted broker writes new keys). An address connects by host and port.
        self._broker: tuple[str | None, int | None]
        if is_connection_file(host):
            self.ip, self.port = _host_and_port(resolve(host).address)
            self._broker = (host, None)
        else:
            self.ip, self.port = _parse_address(host)
            self._broker = (self.ip, self.port)
        self.address = (self.ip, self.port)
        self.deaduntil = 0.0
        self.store: KeyValueStore | None = None
        self.flush_on_next_connect = 0

    def debuglog(self, message: str) -> None:
        if self.debug:
            sys.stderr.write(f"MemCached: {message}\n")

    def unexpected(self, expected: str, answer: str) -> None:
        """With ``debug``, what python-memcached logged when a server's answer was not the one
        it expected: memcached's answer, as a real server would have given it."""
        if self.debug:
            self.debuglog(f"while expecting {expected!r}, got unexpected response {answer!r}")

    def quit(self) -> None:
        """End the session with the broker, waiting for its answer, as memcached's ``quit``
        waits for the server to close; the next operation connects again."""
        self.close_socket()

    def _check_dead(self) -> bool:
        if self.deaduntil and self.deaduntil > _time.time():
            return True
        self.deaduntil = 0
        return False

    def connect(self) -> int:
        return 1 if self._get_store() is not None else 0

    def mark_dead(self, reason: object) -> None:
        self.debuglog(f"MemCache: {self}: {reason}.  Marking dead.")
        self.deaduntil = _time.time() + self.dead_retry
        if self.flush_on_reconnect:
            self.flush_on_next_connect = 1
        self.close_socket()

    def _get_store(self) -> KeyValueStore | None:
        """The open store, connecting (and flushing, after a death) when needed; None if dead."""
        if self._check_dead():
            return None
        if self.store is not None:
            return self.store
        try:
            self.store = KeyValueStore(*self._broker, workspace=self.workspace,
                                       timeout=self.socket_timeout, decode=self._decode,
                                       decodes_plain_as_codec=True)
            if self.flush_on_next_connect:
                self.store.flush()  # it may hold values overwritten elsewhere while it was away
                self.flush_on_next_connect = 0
        except _CONNECTION_ERRORS as exc:
            self.mark_dead(f"connect: {exc}")
            return None
        return self.store

    def close_socket(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            try:
                store.close()
            except NwsException:
                pass  # the broker is gone; closing is all that was asked

    def flush(self) -> None:
        self.store.flush()

    def name(self) -> str:
        """The server identifier of get_stats and get_slabs."""
        return f"{self.ip}:{self.port} ({self.weight})"

    def __str__(self) -> str:
        dead = f" (dead until {self.deaduntil:.0f})" if self.deaduntil else ""
        return f"inet:{self.ip}:{self.port}{dead}"


_ADDRESS = re.compile(r"^(?:tcp://|inet:)?(?P<host>[^:/\[\]]+)(?::(?P<port>[0-9]+))?$")


def _parse_address(address: str) -> tuple[str, int]:
    """``host[:port]``, ``tcp://host:port`` or ``inet:host[:port]`` -> (host, port)."""
    match = _ADDRESS.match(address)
    if match is None:
        raise ValueError(f'Unable to parse connection string: "{address}"')
    return match["host"], int(match["port"] or DEFAULT_PORT)


def _host_and_port(address: str) -> tuple[str, int]:
    """A connection file's ``tcp://host:port`` -> (host, port), for the server's name."""
    parts = urlsplit(address)
    return parts.hostname or address, parts.port or DEFAULT_PORT


class Client(threading.local):
    """Object representing a pool of memcache servers (here: brokers).

    In all cases where a key is used, the key can be either:
        1. A simple hashable type (string, integer, etc.).
        2. A tuple of ``(hashvalue, key)``, to choose the server without hashing: keeping all
           of a user's objects on one server by using the user's id as the hash value, say.
    """

    _FLAG_PICKLE = 1 << 0
    _FLAG_INTEGER = 1 << 1
    _FLAG_LONG = 1 << 2
    _FLAG_COMPRESSED = 1 << 3

    _SERVER_RETRIES = 10  # how many times to try finding a free server.

    MemcachedKeyError = MemcachedKeyError
    MemcachedKeyLengthError = MemcachedKeyLengthError
    MemcachedKeyCharacterError = MemcachedKeyCharacterError
    MemcachedKeyNoneError = MemcachedKeyNoneError
    MemcachedKeyTypeError = MemcachedKeyTypeError
    MemcachedStringEncodingError = MemcachedStringEncodingError

    def __init__(self, servers: Iterable, debug: int = 0, pickleProtocol: int = 0,
                 pickler: Callable = pickle.Pickler, unpickler: Callable = pickle.Unpickler,
                 compressor: Callable[[bytes], bytes] = zlib.compress,
                 decompressor: Callable[[bytes], bytes] = zlib.decompress,
                 pload: Callable | None = None, pid: Callable | None = None,
                 server_max_key_length: int | None = None,
                 server_max_value_length: int | None = None,
                 dead_retry: float = _DEAD_RETRY, socket_timeout: float = _SOCKET_TIMEOUT,
                 cache_cas: bool = False, flush_on_reconnect: int = 0, check_keys: bool = True,
                 key_encoder: Callable | None = None,
                 workspace: str = DEFAULT_WORKSPACE) -> None:
        """Create a new Client object with the given list of servers.

        ``servers`` goes to ``set_servers``. ``debug`` writes connection trouble to standard
        error. ``pickleProtocol``, ``pickler``, ``unpickler``, ``pid`` (persistent_id) and
        ``pload`` (persistent_load) control how non-bytes/str/int values are pickled;
        ``compressor``/``decompressor`` how ``min_compress_len`` compresses. Keys longer than
        ``server_max_key_length`` bytes (250) raise, values longer than
        ``server_max_value_length`` (1 MiB; 0: no limit) are not sent. A server that fails
        is left alone for ``dead_retry`` seconds; ``socket_timeout`` bounds a connection
        attempt. ``cache_cas`` makes ``gets`` remember versions for ``cas`` (never expired:
        see ``reset_cas``). ``flush_on_reconnect`` flushes a server that comes back after
        being dead, so it cannot serve values overwritten elsewhere meanwhile. ``check_keys``
        checks length and characters; ``key_encoder`` maps each key before anything else.
        ``workspace`` is where the entries live on each broker.
        """
        super().__init__()
        self.debug = debug
        self.dead_retry = dead_retry
        self.socket_timeout = socket_timeout
        self.flush_on_reconnect = flush_on_reconnect
        self.workspace = workspace
        self.stats: dict[str, int] = {}
        self.cache_cas = cache_cas
        self.reset_cas()
        self.do_check_key = check_keys
        self.key_encoder = key_encoder
        self.pickleProtocol = pickleProtocol
        self.pickler = pickler
        self.unpickler = unpickler
        self.compressor = compressor
        self.decompressor = decompressor
        self.persistent_load = pload
        self.persistent_id = pid
        self.server_max_key_length = (SERVER_MAX_KEY_LENGTH if server_max_key_length is None
                                      else server_max_key_length)
        self.server_max_value_length = (SERVER_MAX_VALUE_LENGTH if server_max_value_length is None
                                        else server_max_value_length)
        # The broker answers as a memcached started with -I large enough for what the client
        # lets through (memcached's 1 MiB at least); with no client limit, it has none either.
        # Kept as the room an item with flags leaves for its key and value (None: no limit).
        self._item_room = (None if self.server_max_value_length == 0
                           else max(self.server_max_value_length, _ITEM_SIZE_MAX)
                           - _ITEM_OVERHEAD - _ITEM_FLAGS_SIZE)
        self.picklerIsKeyword = self._pickler_takes_keyword()
        self.servers: list[_Host] = []
        self.set_servers(servers)

    def _pickler_takes_keyword(self) -> bool:
        """Some pickler classes take the protocol only positionally."""
        try:
            self.pickler(io.BytesIO(), protocol=self.pickleProtocol)
        except TypeError:
            return False
        return True

    # ------------------------------------------------------------------ setup

    def reset_cas(self) -> None:
        """Forget the versions ``gets`` recorded (with ``cache_cas=True``): they never expire
        otherwise, so a long-running process should call this now and then."""
        self.cas_ids: dict[bytes, int] = {}

    def set_servers(self, servers: Iterable) -> None:
        """Set the pool of servers: ``"host:port"`` strings or connection files' paths (weight
        1), or ``(server, weight)`` tuples. Connections to the previous pool are closed; a
        connection file that cannot be used raises NwsConnectionFileException."""
        if isinstance(servers, str):
            servers = [servers]
        pool = [_Host(s, self.debug, dead_retry=self.dead_retry,
                      socket_timeout=self.socket_timeout,
                      flush_on_reconnect=self.flush_on_reconnect,
                      workspace=self.workspace, decode=self._decode_value)
                for s in servers]  # a bad address or file raises before the old pool goes
        self.disconnect_all()
        self.servers = pool
        self._init_buckets()

    def _init_buckets(self) -> None:
        self.buckets = [server for server in self.servers for _ in range(server.weight)]

    def forget_dead_hosts(self) -> None:
        """Reset every host in the pool to an "alive" state."""
        for server in self.servers:
            server.deaduntil = 0

    def disconnect_all(self) -> None:
        for server in self.servers:
            server.close_socket()

    def quit_all(self) -> None:
        """End the session with every connected server and wait for each to close it (the
        servers stay in the pool, alive: the next operation reconnects)."""
        for server in self.servers:
            server.quit()

    def debuglog(self, message: str) -> None:
        if self.debug:
            sys.stderr.write(f"MemCached: {message}\n")

    def _statlog(self, func: str) -> None:
        self.stats[func] = self.stats.get(func, 0) + 1

    # ------------------------------------------------------------------ keys and servers

    def check_key(self, key: Any, key_extra_len: int = 0) -> None:
        """Check a key: None (MemcachedKeyNoneError), not bytes or str
        (MemcachedKeyTypeError), longer than ``server_max_key_length`` bytes with
        ``key_extra_len`` more (MemcachedKeyLengthError), empty or holding a byte outside
        0x21-0x7E and 0x80-0xFF, or not a name the broker takes (MemcachedKeyCharacterError)."""
        if isinstance(key, tuple):
            key = key[1]
        key = self._typed_key(key)
        if (self.server_max_key_length != 0
                and len(key) + key_extra_len > self.server_max_key_length):
            raise MemcachedKeyLengthError(f"Key length is > {self.server_max_key_length}")
        if not valid_key_chars_re.fullmatch(key):
            raise MemcachedKeyCharacterError(
                f"Control/space characters not allowed (key={key!r})")
        if not key.isascii():  # printable ASCII passed the byte rule: the broker takes it
            _broker_name(key)

    def _typed_key(self, key: Any) -> bytes:
        """The key as bytes, or the error for None and for keys neither str nor bytes."""
        if key is None:
            raise MemcachedKeyNoneError("Key is None")
        key = self._encode_key(key)
        if not isinstance(key, bytes):
            raise MemcachedKeyTypeError("Key must be a binary string")
        return key

    @staticmethod
    def _encode_key(key: Any) -> Any:
        """A str key -> its UTF-8 bytes; anything else unchanged."""
        if not isinstance(key, str):
            return key
        try:
            return key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise MemcachedStringEncodingError(f"key {key!r} cannot be encoded: {exc}") from None

    def _user_key(self, key: Any) -> Any:
        return self.key_encoder(key) if self.key_encoder is not None else key

    def _checked(self, key: Any, key_extra_len: int = 0) -> None:
        """``check_key``, or with ``check_keys=False`` only what the broker itself needs."""
        if self.do_check_key:
            self.check_key(key, key_extra_len)
        else:
            _broker_name(self._typed_key(key))

    def _get_server(self, key: Any) -> tuple[_Host | None, Any]:
        """The live server for a key (or a ``(hashvalue, key)`` tuple) -> (server, key);
        a dead server's keys rehash up to ten times, then (None, None)."""
        if len(self.buckets) == 1:  # every rehash lands here too: no need to hash
            server = self.buckets[0]
            key = key[1] if isinstance(key, tuple) else key
            return (server, key) if server.connect() else (None, None)
        if isinstance(key, tuple):
            serverhash, key = key
        else:
            serverhash = serverHashFunction(key)
        if not self.buckets:
            return None, None
        for i in range(Client._SERVER_RETRIES):
            server = self.buckets[serverhash % len(self.buckets)]
            if server.connect():
                return server, key
            serverhash = serverHashFunction((str(serverhash) + str(i)).encode("ascii"))
        return None, None

    def _server_for(self, key: Any) -> tuple[_Host | None, bytes | None]:
        """A single-key operation's key, encoded and checked, and its server."""
        if type(key) is str and key.isascii() and self.do_check_key and self.key_encoder is None:
            # The usual key, printable ASCII text, checked in one step: the general way below
            # costs as much as the request itself (a key it refuses goes there for its error).
            encoded = key.encode("ascii")
            limit = self.server_max_key_length
            if (not limit or len(encoded) <= limit) and valid_key_chars_re.fullmatch(encoded):
                buckets = self.buckets
                if len(buckets) == 1:
                    server = buckets[0]
                    if server.store is not None and not server.deaduntil:  # connected, alive
                        return server, encoded
                return self._get_server(encoded)
        hashvalue, user_key = key if isinstance(key, tuple) else (None, key)
        key = self._encode_key(self._user_key(user_key))
        self._checked(key)
        return self._get_server(key if hashvalue is None else (hashvalue, key))

    def _map_and_prefix_keys(self, key_iterable: Iterable,
                             key_prefix: str | bytes) -> tuple[dict, dict, list]:
        """-> ({server: [prefixed keys]}, {prefixed key: key as given}, [original keys with
        no live server]). Hashing uses the prefixed key; int keys go through str()."""
        prefix = self._encode_key(key_prefix)
        if prefix:
            self._checked(prefix)
        server_keys: dict[_Host, list[bytes]] = {}
        prefixed_to_given: dict[bytes, Any] = {}
        unserved: list = []
        # The usual case, plain str keys on one server with the standard checks, in a loop of
        # its own: the general one below costs as much per key as the broker does.
        plain = (self.do_check_key and self.key_encoder is None and len(self.buckets) == 1
                 and self.buckets[0].connect())
        limit = self.server_max_key_length - len(prefix) if self.server_max_key_length else None
        fullmatch = valid_key_chars_re.fullmatch
        for given in key_iterable:
            if plain and type(given) is str and given.isascii():
                key = given.encode("ascii")
                if (limit is not None and len(key) > limit) or not fullmatch(key):
                    self.check_key(key, len(prefix))  # raises the precise error
                prefixed = prefix + key
                server_keys.setdefault(self.buckets[0], []).append(prefixed)
                prefixed_to_given[prefixed] = given
                continue
            hashvalue, user_key = given if isinstance(given, tuple) else (None, given)
            if user_key is None:
                self.check_key(user_key)
            key = self._multi_key(user_key)
            self._checked(key, len(prefix))
            prefixed = prefix + key
            server, _ = self._get_server(prefixed if hashvalue is None else (hashvalue, prefixed))
            if server is None:
                unserved.append(user_key)
                continue
            server_keys.setdefault(server, []).append(prefixed)
            prefixed_to_given[prefixed] = given
        return server_keys, prefixed_to_given, unserved

    def _multi_key(self, key: Any) -> bytes:
        """Multi operations take str()-ables, such as database ids, as keys too."""
        key = self._encode_key(self._user_key(key))
        return key if isinstance(key, bytes) else str(key).encode("utf-8")

    # ------------------------------------------------------------------ values

    def _value_frames(self, key: bytes, val: Any,
                      min_compress_len: int = 0) -> list | str | None:
        """A value -> its frames (python-memcached's flags as codec kinds); None if the final
        payload is longer than ``server_max_value_length`` (it is then not sent, as in the
        original); ``_TOO_LARGE`` if memcached would refuse its item under ``key``."""
        value = codec.payload(val, self._pickle)
        compressed = False
        if min_compress_len and value.compressible and len(value.data) > min_compress_len:
            packed = self.compressor(value.data)
            if len(packed) < len(value.data):  # only retained if compressing helped
                value, compressed = value._replace(data=packed), True
        if self.server_max_value_length != 0 and len(value.data) > self.server_max_value_length:
            return None
        room = self._item_room  # below it, any item fits: the exact count only near the limit
        if room is not None and len(value.data) + len(key) > room:
            # python-memcached's flags are 0 for uncompressed bytes only
            flags = 0 if type(val) is bytes and not compressed else _ITEM_FLAGS_SIZE
            if len(value.data) + len(key) + flags > room + _ITEM_FLAGS_SIZE:
                return _TOO_LARGE
        return codec.inline(value, compressed)

    def _pickle(self, val: Any) -> bytes:
        file = io.BytesIO()
        if self.picklerIsKeyword:
            pickler = self.pickler(file, protocol=self.pickleProtocol)
        else:
            pickler = self.pickler(file, self.pickleProtocol)
        if self.persistent_id:
            pickler.persistent_id = self.persistent_id
        pickler.dump(val)
        return file.getvalue()

    def _decode_value(self, frames: list) -> Any:
        """Value frames -> the value: compressed payloads through ``decompressor``, pickles
        through ``unpickler``; values other workbench clients stored through the codec."""
        return codec.decode(frames, self.decompressor, self._unpickle)

    def _unpickle(self, data: Any, buffers: Any = ()) -> Any:
        """An unpicklable value reads as None (and is logged), as in python-memcached."""
        try:
            file = io.BytesIO(data)
            unpickler = (self.unpickler(file, buffers=buffers) if buffers
                         else self.unpickler(file))
            if self.persistent_load:
                unpickler.persistent_load = self.persistent_load
            return unpickler.load()
        except Exception as exc:
            self.debuglog(f"Pickle error: {exc}\n")
            return None

    # ------------------------------------------------------------------ storing

    def set(self, key: Any, val: Any, time: Any = 0, min_compress_len: int = 0,
            noreply: bool = False) -> bool | int:
        """Unconditionally set a key -> True if stored, False if the broker refused it, 0 if
        no server is reachable or the value is too long.

        ``time``: 0 never expires, up to 30 days is seconds from now, more is an absolute Unix
        time, negative is expired at once (a timedelta counts as its seconds).
        ``min_compress_len``: compress payloads longer than this, if that makes them smaller
        (0: never)."""
        if time is _NEVER and not min_compress_len:  # the usual call, in as few steps as it takes
            state = self.__dict__  # see _plain_server
            server = _plain_server(state, key)
            if server is not None:
                frames = _plain_frames(state, key, val)
                if frames is not None:
                    stats = state["stats"]
                    stats["set"] = stats.get("set", 0) + 1  # (_statlog)
                    # No version: the broker reads one for a cas only.
                    return _store_on(self, server, "set", key.encode("ascii"), frames, 0, 0,
                                     noreply)
        return self._set("set", key, val, time, min_compress_len, noreply)

    def add(self, key: Any, val: Any, time: Any = 0, min_compress_len: int = 0,
            noreply: bool = False) -> bool | int:
        """Like ``set``, but only if the key does not exist yet (False if it does)."""
        return self._set("add", key, val, time, min_compress_len, noreply)

    def replace(self, key: Any, val: Any, time: Any = 0, min_compress_len: int = 0,
                noreply: bool = False) -> bool | int:
        """Like ``set``, but only if the key exists (False if not). The opposite of ``add``."""
        return self._set("replace", key, val, time, min_compress_len, noreply)

    def append(self, key: Any, val: Any, time: Any = 0, min_compress_len: int = 0,
               noreply: bool = False) -> bool | int:
        """Append to an existing key's value (False if it does not exist). The entry keeps its
        type and expiry; ``time`` and ``min_compress_len`` are ignored, as memcached does."""
        return self._set("append", key, val, time, 0, noreply)

    def prepend(self, key: Any, val: Any, time: Any = 0, min_compress_len: int = 0,
                noreply: bool = False) -> bool | int:
        """Prepend to an existing key's value; see ``append``."""
        return self._set("prepend", key, val, time, 0, noreply)

    def cas(self, key: Any, val: Any, time: Any = 0, min_compress_len: int = 0,
            noreply: bool = False) -> bool | int:
        """Check and set: store if the key has not changed since ``gets`` read it -> True, or
        False if it changed or vanished. With no version recorded by ``gets`` (no
        ``cache_cas``, or after ``reset_cas``) this is a plain ``set``, as in the original."""
        return self._set("cas", key, val, time, min_compress_len, noreply)

    def _set(self, cmd: str, key: Any, val: Any, time: Any, min_compress_len: int = 0,
             noreply: bool = False) -> bool | int:
        server, key = self._server_for(key)
        if server is None:
            return 0
        self._statlog(cmd)
        if cmd == "cas" and key not in self.cas_ids:
            cmd = "set"
            self._statlog(cmd)
        frames = self._value_frames(key, val, min_compress_len)
        if frames is None:
            return 0
        if frames is _TOO_LARGE:
            server.unexpected("STORED", _TOO_LARGE)
            return True if noreply else False
        return _store_on(self, server, cmd, key, frames, _store_ttl(time),
                         self.cas_ids.get(key, 0), noreply)

    def touch(self, key: Any, time: Any = 0, noreply: bool = False) -> int:
        """Give an existing key a new expiry time (rules as ``set``) -> 1, or 0 if absent."""
        server, key = self._server_for(key)
        if server is None:
            return 0
        self._statlog("touch")
        try:
            touched = server.store.touch(key, _store_ttl(time))
        except _CONNECTION_ERRORS as exc:
            server.mark_dead(exc)
            return 0
        if not (noreply or touched):
            self.debuglog("touch expected TOUCHED, got: b'NOT_FOUND'")
        return 1 if noreply or touched else 0

    def delete(self, key: Any, time: Any = None, noreply: bool = False) -> int:
        """Delete a key -> 1 whether it existed or not (as python-memcached), 0 if no server
        could be reached. ``time`` (memcached's old hold time) is accepted and ignored."""
        server, key = self._server_for(key)
        if server is None:
            return 0
        self._statlog("delete")
        try:
            server.store.delete(key)
        except _CONNECTION_ERRORS as exc:
            server.mark_dead(exc)
            return 0
        return 1

    def incr(self, key: Any, delta: int = 1, noreply: bool = False) -> int | None:
        """Atomically add ``delta`` to a number stored as an int or a string of digits ->
        the new number (the stored type is kept), None if the key is absent or no server
        answers (or with ``noreply``). ValueError for a non-number or a negative delta."""
        return self._incrdecr("incr", key, delta, noreply)

    def decr(self, key: Any, delta: int = 1, noreply: bool = False) -> int | None:
        """Like ``incr``, but subtracts, never going below 0."""
        return self._incrdecr("decr", key, delta, noreply)

    def _incrdecr(self, cmd: str, key: Any, delta: int, noreply: bool = False) -> int | None:
        server, key = self._server_for(key)
        if server is None:
            return None
        self._statlog(cmd)
        if not isinstance(delta, int) or not 0 <= delta < 1 << 64:
            raise ValueError(f"CLIENT_ERROR invalid numeric delta argument: {delta!r}")
        try:
            number = server.store.incr(key, delta, decrement=cmd == "decr")
        except _CONNECTION_ERRORS as exc:
            server.mark_dead(exc)
            return None
        return None if noreply else number

    # ------------------------------------------------------------------ reading

    def get(self, key: Any, default: Any = None) -> Any:
        """The key's value, or ``default`` if it is absent or no server answers."""
        state = self.__dict__  # see _plain_server
        server = _plain_server(state, key)
        if server is None:
            return self._get("get", key, default)
        stats = state["stats"]
        stats["get"] = stats.get("get", 0) + 1  # (_statlog)
        entry = _entry_on(server, key.encode("ascii"))
        return default if entry is None else entry.value

    def gets(self, key: Any) -> Any:
        """Like ``get``; with ``cache_cas=True`` also records the version for ``cas``."""
        return self._get("gets", key, None)

    def _get(self, cmd: str, key: Any, default: Any) -> Any:
        server, key = self._server_for(key)
        if server is None:
            return default
        self._statlog(cmd)
        entry = _entry_on(server, key)
        if entry is None:
            return default
        if cmd == "gets" and self.cache_cas:
            self.cas_ids[key] = entry.version
        return entry.value

    # ------------------------------------------------------------------ several keys

    def get_multi(self, keys: Iterable, key_prefix: str | bytes = "") -> dict:
        """{original key: value} for the keys present, one round trip per server. Keys are
        looked up with ``key_prefix`` in front; the result's keys are the ones given (ints
        stay ints; a ``(hashvalue, key)`` tuple gives ``key``)."""
        self._statlog("get_multi")
        server_keys, prefixed_to_given, _ = self._map_and_prefix_keys(keys, key_prefix)
        retvals = {}
        for server, prefixed in server_keys.items():
            try:
                found = server.store.get_multi(prefixed)
            except _CONNECTION_ERRORS as exc:
                server.mark_dead(exc)
                continue
            for key, entry in found.items():
                retvals[_original(prefixed_to_given[key])] = entry.value
        return retvals

    def set_multi(self, mapping: Mapping, time: Any = 0, key_prefix: str | bytes = "",
                  min_compress_len: int = 0, noreply: bool = False) -> list:
        """Set several keys, one round trip per server -> the original (unprefixed) keys not
        stored: values too long, servers unreachable, refusals by the broker."""
        self._statlog("set_multi")
        server_keys, prefixed_to_given, notstored = self._map_and_prefix_keys(
            mapping.keys(), key_prefix)
        ttl = _store_ttl(time)
        for server, prefixed in server_keys.items():
            encoded = {}
            for key in prefixed:
                frames = self._value_frames(key, mapping[prefixed_to_given[key]],
                                            min_compress_len)
                if frames is None or frames is _TOO_LARGE:
                    notstored.append(_original(prefixed_to_given[key]))
                else:
                    encoded[key] = frames
            notstored.extend(_original(prefixed_to_given[key])
                             for key in self._set_on(server, encoded, ttl))
        return notstored

    def _set_on(self, server: _Host, encoded: dict, ttl: float) -> list:
        """Store encoded values on one server -> the prefixed keys not stored."""
        if not encoded:
            return []
        try:
            return server.store.set_multi(encoded, ttl, encoded=True)
        except _CONNECTION_ERRORS as exc:
            server.mark_dead(exc)
            return list(encoded)

    def delete_multi(self, keys: Iterable, time: Any = None, key_prefix: str | bytes = "",
                     noreply: bool = False) -> int:
        """Delete several keys, one round trip per server -> 1, or 0 if a server failed on the
        way. ``time`` is accepted and ignored, as in ``delete``."""
        self._statlog("delete_multi")
        server_keys, _, _ = self._map_and_prefix_keys(keys, key_prefix)
        rc = 1
        for server, prefixed in server_keys.items():
            try:
                server.store.delete_multi(prefixed)
            except _CONNECTION_ERRORS as exc:
                server.mark_dead(exc)
                rc = 0
        return rc

    # ------------------------------------------------------------------ whole servers

    def flush_all(self) -> None:
        """Remove every entry of the workspace on every reachable server."""
        for server in self._live_servers():
            try:
                server.flush()
            except _CONNECTION_ERRORS as exc:
                server.mark_dead(exc)

    def get_stats(self, stat_args: str | None = None) -> list[tuple[str, dict[str, str]]]:
        """[("host:port (weight)", {stat: string})] for every reachable server, memcached's
        fields built from the broker's status; values are strings, as memcached sends them.
        ``stat_args`` ("items", "slabs", ...) name sub-statistics the broker does not have:
        their dict is empty."""
        data = []
        for server in self._live_servers():
            try:
                stats = {} if stat_args else _memcached_stats(server.store.stats())
            except _CONNECTION_ERRORS as exc:
                server.mark_dead(exc)
                continue
            data.append((server.name(), stats))
        return data

    def get_slabs(self) -> list[tuple[str, dict]]:
        """[("host:port (weight)", {})]: the broker allocates no slabs, so there is nothing to
        report, but scripts iterating over the result keep working."""
        return [(server.name(), {}) for server in self._live_servers()]

    def _live_servers(self) -> list[_Host]:
        return [server for server in self.servers if server.connect()]


def _store_answer(cmd: str, status: int) -> str:
    """What memcached answers a storage command that did not store: a cas finds the entry
    changed (EXISTS) or gone (NOT_FOUND); the others NOT_STORED."""
    if cmd == "cas":
        return "EXISTS" if status == Status.EXISTS else "NOT_FOUND"
    return "NOT_STORED"


def _plain_server(state: dict, key: Any) -> _Host | None:
    """The server of a single-key call when the call is the usual one, which needs none of the
    general way's steps: a str key of printable ASCII but space (memcached's byte rule, for
    ASCII), within the length limit, with the standard checks and no ``key_encoder``, on a pool
    of one server, connected and alive. None otherwise: the general way then checks the key,
    raising its exact error, and finds the server, connecting or skipping a dead one.

    ``state`` is the client's ``__dict__``: its attributes for this thread, read as a plain
    dict, as each attribute of a ``threading.local`` costs a search for the thread's first."""
    if (type(key) is str and key.isascii() and key.isprintable() and " " not in key and key
            and state["do_check_key"] and state["key_encoder"] is None):
        limit = state["server_max_key_length"]
        buckets = state["buckets"]
        if (not limit or len(key) <= limit) and len(buckets) == 1:
            server = buckets[0]
            if server.store is not None and not server.deaduntil:
                return server
    return None


def _plain_frames(state: dict, key: str, val: Any) -> list | None:
    """A ``set``'s value frames when they are what ``_value_frames`` makes with nothing to
    decide: a bytes, str or int value, whose item is well within the limits. None otherwise
    (the general way then encodes it, and counts the call before an encoding error)."""
    try:
        frame = codec.plain_frame(val)
    except UnicodeEncodeError:  # a lone surrogate
        return None
    room = state["_item_room"]
    if frame is None or room is None:
        return None
    size = len(frame) - DESCRIPTOR_SIZE
    if size + len(key) > room or size > state["server_max_value_length"]:
        return None
    return [frame]


def _store_on(client: Client, server: _Host, cmd: str, key: bytes, frames: list, ttl: float,
              version: int, noreply: bool) -> bool | int:
    """A storage command's encoded value sent to its server -> what python-memcached's
    method returns: True if stored, False if refused, 0 if the server failed (it is then
    marked dead); True for any answer with ``noreply``."""
    try:
        status, _ = server.store.store(key, None, ttl, cmd, version, frames)
    except _CONNECTION_ERRORS as exc:
        server.mark_dead(exc)
        return 0
    except NwsOperationException as exc:  # memory cap, a non-entry variable, ...
        client.debuglog(f"{cmd} {key!r} not stored: {exc}")
        return bool(noreply)
    if noreply:
        return True
    if status != _OK:
        server.unexpected("STORED", _store_answer(cmd, status))
    return status == _OK


def _entry_on(server: _Host, key: bytes) -> Entry | None:
    """The key's entry on its server, or None if absent or if the server failed (it is then
    marked dead)."""
    try:
        return server.store.get(key)
    except _CONNECTION_ERRORS as exc:
        server.mark_dead(exc)
        return None


def _memcached_stats(status: dict) -> dict[str, str]:
    """The broker's status -> memcached's ``stats`` fields, as unconverted strings."""
    counters = status.get("counters", {})
    gets, misses = counters.get("kv_gets", 0), counters.get("kv_misses", 0)
    fields = {
        "pid": status.get("pid"),
        "uptime": int(status.get("uptime", 0)),
        "time": int(_time.time()),
        "version": status.get("version"),
        "curr_items": status.get("values", 0),
        "total_items": counters.get("kv_sets", 0),
        "bytes": status.get("memory", 0),
        "curr_connections": len(status.get("clients", ())),
        "cmd_get": gets,
        "cmd_set": counters.get("kv_sets", 0),
        "get_hits": gets - misses,
        "get_misses": misses,
        "expired_unfetched": counters.get("expired", 0),
        "evictions": 0,
        "limit_maxbytes": status.get("max_memory", 0),
        "threads": 1,
    }
    return {name: str(value) for name, value in fields.items() if value is not None}
