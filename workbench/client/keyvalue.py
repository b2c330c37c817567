"""The broker's key-value service from Python: ``KeyValueStore``, what the memcache and hive
faces are built on.

Entries live as SINGLE variables of one workspace (``"kv"`` unless told otherwise), so the same
keys are visible to ``NetWorkSpace.listVars`` and to the dashboards. Each method is one request
and one atomic operation at the broker. Values are encoded by ``codec`` unless the store is
given another ``encode``/``decode`` pair (the memcache face keeps python-memcached's pickler
options that way).

Times to live are seconds from now (``0``: never expires; negative: expired at once); the faces
translate their own conventions.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from .. import codec
from ..config import CONNECT_TIMEOUT, REPR_TIMEOUT
from ..protocol import (
    HEADER_SIZE, KV_ITEM, KV_RECORD, META, VERSION_SHIFT, Op, Status,
)
from .cluster import Brokers, Member, cluster_status, is_several
from .connection import Connection
from .embedded import connect

DEFAULT_KV_WORKSPACE = "kv"
_VALUE_AT = HEADER_SIZE + META.size
_VERSION = struct.Struct("<Q")
_HOWS = {how: how.encode() for how in ("set", "add", "replace", "append", "prepend", "cas")}
_NO_TTL = b"0.0"
# What the usual requests use, bound once: an enum member costs a class lookup at each use,
# and building a NamedTuple through its own __new__ twice what tuple's costs.
_KV_STORE, _KV_GET, _OK = Op.KV_STORE, Op.KV_GET, int(Status.OK)
_unpack_meta = META.unpack_from
_new_entry = tuple.__new__


class Entry(NamedTuple):
    """A value read from the store and its version (changes with every write; see ``cas``)."""

    value: Any
    version: int


def _ttl(ttl: float) -> bytes:
    return _NO_TTL if ttl == 0 else b"%r" % float(ttl)


def _key(key: str | bytes) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"a key is str or bytes, not {type(key).__name__}")


class KeyValueStore:
    """The key-value entries of one workspace on one broker.

    ``KeyValueStore()`` finds the broker as ``NetWorkSpace`` does (``WORKBENCH_BROKER``, the
    default address, or a private broker); ``host``/``port`` name one, and ``host`` may be a
    connection file. ``timeout`` bounds the connection, ``op_timeout`` every operation after
    it (NwsTimeoutException, a TimeoutError; the operation is cancelled at the broker).

    ``host`` may name several brokers acting as one (a list, a cluster file: see
    ``client.cluster``): each key then lives on the broker it is placed on, as a workspace's
    name places the workspace (``ClusterKeyValueStore``)."""

    def __new__(cls, host: str | list | None = None, *args: Any, **kwargs: Any):
        # several brokers (a list, a cluster file): a store that spreads the keys over them
        if cls is KeyValueStore and kwargs.get("connection") is None and is_several(host):
            cls = ClusterKeyValueStore
        return super().__new__(cls)

    def __init__(self, host: str | None = None, port: int | None = None,
                 workspace: str = DEFAULT_KV_WORKSPACE, timeout: float = CONNECT_TIMEOUT,
                 connection: Connection | None = None,
                 encode: Callable[[Any], list] = codec.encode,
                 decode: Callable[[list], Any] = codec.decode,
                 op_timeout: float | None = None, decodes_plain_as_codec: bool = False) -> None:
        """``decodes_plain_as_codec``: ``decode`` decodes bytes, text and decimal integers
        as ``codec`` does (it differs in pickles or compression only), so those are decoded
        here without it (a face's own decoder costs a frame list and several calls)."""
        self._connection = connection or connect(host, port, timeout)
        self.op_timeout = op_timeout  # seconds any one operation may take (None: no limit)
        self.workspace = workspace
        self._ws = workspace.encode("utf-8")
        self._encode = encode
        self._decode = decode
        self._plain_by_codec = decodes_plain_as_codec or decode is codec.decode

    def _read(self, op: int, args: list, frames: list | tuple = (),
              spill: bool = True) -> tuple[int, tuple[bytes, list]]:
        return self._connection.read(op, args, frames, self.op_timeout, spill=spill)

    @property
    def address(self) -> str:
        return self._connection.address

    def __repr__(self) -> str:
        return f"<KeyValueStore {self.workspace!r} at {self.address}>"

    def _repr_html_(self) -> str:
        """In a notebook: how many entries the store holds, and the first keys."""
        from html import escape

        title = f"<b>KeyValueStore {escape(self.workspace)}</b> at {escape(self.address)}"
        try:
            rows = json.loads(self._connection.call(Op.LIST_VARS, [self._ws],
                                                    timeout=REPR_TIMEOUT)[HEADER_SIZE:])
        except Exception as exc:  # noqa: BLE001 - a repr shows what went wrong, never raises
            return f"<div>{title}: {escape(str(exc))}</div>"
        keys = [name for name, values, *_ in rows if values]
        shown = ", ".join(f"<code>{escape(key)}</code>" for key in keys[:20])
        more = f" and {len(keys) - 20} more" if len(keys) > 20 else ""
        return f"<div>{title}: {len(keys)} entries</div><div>{shown}{more}</div>"

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> KeyValueStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def store(self, key: str | bytes, value: Any, ttl: float = 0, how: str = "set",
              version: int = 0, frames: list | None = None) -> tuple[int, int]:
        """Write ``value`` under ``key`` if ``how`` allows -> (status, new version).

        ``how``: ``set`` always; ``add`` only if absent; ``replace``, ``append``, ``prepend``
        only if present; ``cas`` only if the entry's version is still ``version``. Status is
        ``Status.OK``, ``Status.MISSING`` (absent) or ``Status.EXISTS`` (present, or changed
        since ``version``). ``frames`` passes a value already encoded."""
        how_arg = _HOWS.get(how)
        if how_arg is None:
            raise ValueError(f"how must be one of {', '.join(_HOWS)}, not {how!r}")
        status, reply = self._connection.read(
            _KV_STORE,
            [self._ws, key if type(key) is bytes else _key(key), how_arg,
             _NO_TTL if ttl == 0 else _ttl(ttl), b"0" if version == 0 else b"%d" % version],
            frames if frames is not None else self._encode(value), self.op_timeout)
        if status == _OK:
            return status, _VERSION.unpack_from(reply[0], HEADER_SIZE)[0]
        return status, 0

    def swap(self, key: str | bytes, value: Any, ttl: float = 0) -> Entry | None:
        """Replace an existing entry's value -> the old entry; None (nothing stored) if absent."""
        status, reply = self._read(
            Op.KV_STORE, [self._ws, _key(key), b"swap", _ttl(ttl), b"0"], self._encode(value))
        return self._entry(*reply) if status == Status.OK else None

    def compare_and_swap(self, key: str | bytes, value: Any, comparand: Any,
                         ttl: float = 0) -> Entry | None:
        """Replace the entry's value by ``value`` if it equals ``comparand`` (as encoded
        bytes) -> the old entry either way; None if the key is absent."""
        new = self._encode(value)
        status, reply = self._read(
            Op.KV_COMPARE_SWAP, [self._ws, _key(key), _ttl(ttl)],
            [*new, *self._encode(comparand)], spill=False)
        return self._entry(*reply) if status == Status.OK else None

    def incr(self, key: str | bytes, delta: int = 1, decrement: bool = False) -> int | None:
        """Add (or subtract, never below 0) ``delta`` to a decimal number -> the new number;
        None if absent. A value that is not a decimal number raises NwsValueException."""
        if delta < 0:
            delta, decrement = -delta, not decrement
        status, reply = self._read(
            Op.KV_INCR, [self._ws, _key(key), b"decr" if decrement else b"incr", b"%d" % delta])
        return int(reply[0][HEADER_SIZE:]) if status == Status.OK else None

    def touch(self, key: str | bytes, ttl: float) -> bool:
        """Give an entry a new time to live; False if absent."""
        status, _ = self._read(Op.KV_TOUCH, [self._ws, _key(key), _ttl(ttl)])
        return status == Status.OK

    def delete(self, key: str | bytes) -> bool:
        """Remove an entry; False if it was absent."""
        status, _ = self._read(Op.KV_DELETE, [self._ws, _key(key)])
        return status == Status.OK

    def flush(self) -> None:
        """Remove every entry (every variable) of the workspace."""
        self._read(Op.KV_FLUSH, [self._ws])

    # ------------------------------------------------------------------ reads

    def get(self, key: str | bytes) -> Entry | None:
        """The entry's value and version, or None if absent (or expired)."""
        status, (head, extra) = self._connection.read(
            _KV_GET, [self._ws, key if type(key) is bytes else _key(key)], (), self.op_timeout)
        return self._entry(head, extra) if status == _OK else None

    def _entry(self, head: bytes, extra: list) -> Entry:
        var_id, seq = _unpack_meta(head, HEADER_SIZE)
        value = codec.NOT_PLAIN
        if self._plain_by_codec and not extra:  # bytes, text, int: decoded alike by every face
            value = codec.plain_at(head, _VALUE_AT)
        if value is codec.NOT_PLAIN:
            if self._decode is codec.decode:
                value = codec.decode_at(head, _VALUE_AT, extra)
            else:
                value = self._decode([memoryview(head)[_VALUE_AT:], *extra])
        return _new_entry(Entry, (value, var_id << VERSION_SHIFT | seq))

    # ------------------------------------------------------------------ several keys

    def get_multi(self, keys: Iterable[str | bytes]) -> dict:
        """{key: Entry} for the keys present, in one round trip."""
        keys = list(keys)
        _, (head, extra) = self._read(Op.KV_GET_MULTI, [self._ws, *map(_key, keys)])
        found = {}
        offset, end, next_extra = HEADER_SIZE, len(head), 0
        unpack_record, record_size = KV_RECORD.unpack_from, KV_RECORD.size
        decode = self._decode
        while offset < end:
            index, version, length = unpack_record(head, offset)
            offset += record_size
            first = head[offset:offset + length]  # bytes: small values decode fastest so
            offset += length
            nextra = first[2] | first[3] << 8  # the descriptor's count of extra frames
            if nextra:
                frames = [first, *extra[next_extra:next_extra + nextra]]
                next_extra += nextra
            else:
                frames = [first]
            found[keys[index]] = Entry(decode(frames), version)
        return found

    def set_multi(self, mapping: Mapping, ttl: float = 0, encoded: bool = False) -> list:
        """Set every key of ``mapping`` in one round trip -> the keys not stored (memory cap,
        bad key). ``encoded``: the mapping's values are frames already."""
        keys = list(mapping)
        records, extra = [], []
        for key in keys:
            frames = mapping[key] if encoded else self._encode(mapping[key])
            name, first = _key(key), bytes(frames[0])
            records.append(KV_ITEM.pack(len(name), len(first)) + name + first)
            extra.extend(frames[1:])
        _, (head, _) = self._read(
            Op.KV_SET_MULTI, [self._ws, _ttl(ttl)], [b"".join(records), *extra], spill=False)
        body = head[HEADER_SIZE:]
        return [keys[int(index)] for index in body.split(b",")] if body else []

    def delete_multi(self, keys: Iterable[str | bytes]) -> int:
        """Remove several entries in one round trip -> how many there were."""
        _, (head, _) = self._read(Op.KV_DELETE_MULTI, [self._ws, *map(_key, keys)])
        return int(head[HEADER_SIZE:])

    # ------------------------------------------------------------------ the broker

    def stats(self) -> dict:
        """The broker's status (``workbench status --json``): memory, counters, clients."""
        return json.loads(self._read(Op.STATUS, [])[1][0][HEADER_SIZE:])


class ClusterKeyValueStore(KeyValueStore):
    """A ``KeyValueStore`` over several brokers: each key lives on the one it is placed on by
    rendezvous hashing (``client.cluster``), so each operation on a key is that broker's one
    atomic operation; a call on several keys asks each broker concerned once. A broker that is
    down makes the calls on its keys raise NwsConnectException naming it."""

    def __init__(self, host: str | list, port: int | None = None,
                 workspace: str = DEFAULT_KV_WORKSPACE, timeout: float = CONNECT_TIMEOUT,
                 connection: Connection | None = None,
                 encode: Callable[[Any], list] = codec.encode,
                 decode: Callable[[list], Any] = codec.decode,
                 op_timeout: float | None = None) -> None:
        self.brokers = Brokers(host, timeout)
        self.workspace = workspace
        self.op_timeout = op_timeout
        self._options = {"workspace": workspace, "encode": encode, "decode": decode,
                         "op_timeout": op_timeout}
        self._stores: dict[str, KeyValueStore] = {}

    def _store_of(self, member: Member) -> KeyValueStore:
        store = self._stores.get(member.name)
        if store is None:
            connection = self.brokers.connection(member, f"the keys of {self.workspace!r}")
            store = self._stores[member.name] = KeyValueStore(connection=connection,
                                                              **self._options)
        return store

    def _store_for(self, key: str | bytes) -> KeyValueStore:
        return self._store_of(self.brokers.place(_key(key)))

    def _grouped(self, keys: Iterable) -> dict[Member, list]:
        grouped: dict[Member, list] = {}
        for key in keys:
            grouped.setdefault(self.brokers.place(_key(key)), []).append(key)
        return grouped

    @property
    def address(self) -> str:
        return f"a cluster of {self.brokers}"

    def __repr__(self) -> str:
        return f"<KeyValueStore {self.workspace!r} on {self.address}>"

    def _repr_html_(self) -> str:
        from html import escape

        return f"<div><b>KeyValueStore {escape(self.workspace)}</b> on {escape(self.address)}</div>"

    def close(self) -> None:
        self.brokers.close()

    def store(self, key, value, ttl=0, how="set", version=0, frames=None):
        return self._store_for(key).store(key, value, ttl, how, version, frames)

    def swap(self, key, value, ttl=0):
        return self._store_for(key).swap(key, value, ttl)

    def compare_and_swap(self, key, value, comparand, ttl=0):
        return self._store_for(key).compare_and_swap(key, value, comparand, ttl)

    def incr(self, key, delta=1, decrement=False):
        return self._store_for(key).incr(key, delta, decrement)

    def touch(self, key, ttl):
        return self._store_for(key).touch(key, ttl)

    def delete(self, key):
        return self._store_for(key).delete(key)

    def get(self, key):
        return self._store_for(key).get(key)

    def flush(self) -> None:
        for member in self.brokers.members:
            self._store_of(member).flush()

    def get_multi(self, keys: Iterable[str | bytes]) -> dict:
        found: dict = {}
        for member, some in self._grouped(keys).items():
            found.update(self._store_of(member).get_multi(some))
        return found

    def set_multi(self, mapping: Mapping, ttl: float = 0, encoded: bool = False) -> list:
        refused: list = []
        for member, some in self._grouped(mapping).items():
            refused += self._store_of(member).set_multi({key: mapping[key] for key in some},
                                                        ttl, encoded)
        return refused

    def delete_multi(self, keys: Iterable[str | bytes]) -> int:
        return sum(self._store_of(member).delete_multi(some)
                   for member, some in self._grouped(keys).items())

    def stats(self) -> dict:
        """The brokers' status, summed (``cluster.cluster_status``)."""
        return cluster_status({str(member): self._store_of(member).stats()
                               for member in self.brokers.members})
