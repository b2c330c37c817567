"""The wire protocol between clients and the broker: frame layout, op codes, status codes.

Every message is a ZeroMQ multipart message whose first frame is the *head*: an 8-byte header
``<BBHI`` followed by a body. A client's DEALER sends::

    [head, *extra]    header = (version, op, flags, request id); body = text arguments joined
                      by NUL (names cannot contain control characters); for an op that carries
                      a value, the value's first frame is the last argument

and the broker's ROUTER sees the client's routing identity in front. The broker answers::

    [head, *extra]    header = (version, status, number of extra frames, request id);
                      body = META + the value's first frame for a value reply, UTF-8 text (JSON,
                      a name, an error message) otherwise

Each frame costs a header to write and parse and some Python on both sides, so everything small
shares the head frame: a store or fetch of a small value is one frame each way, like a bare
echo. Only the large parts of values (detached data, out-of-band buffers) travel as extra
frames, unsent copies.

Request ids are chosen by the client, one counter per socket, so a socket may have many requests
in flight; replies may come back in any order and are matched by id. When ``flags & FLAG_ACKS``
the first argument lists, comma-separated, the request ids whose leased values the client has
consumed (acknowledgements ride on the next request instead of costing a message of their own).

A *value* is ``[descriptor + data, *extra]``: descriptor = ``<BBH`` (kind, flags, number of
extra frames). For raw kinds the payload is data followed by the extra frames; for pickles,
data is the pickle stream and the extra frames are its out-of-band buffers. The broker never
looks inside. A value reply's META = ``<QQ`` (variable id, value sequence number) is the iterators' cookie.

Arguments by op (text; ``0``/``1`` for flags)::

    HELLO       json client info              -> OK json broker info
    BYE                                       -> OK           (the session ends now)
    HEARTBEAT   [channel:id,...]              -> OK           (acks of idle channels ride here)
    STATUS                                    -> OK json
    CANCEL      request id                    -> CANCELLED
    OPEN_WS     ws, persistent, create        -> OK
    USE_WS      ws, create                    -> OK
    DELETE_WS   ws                            -> OK
    MKTEMP_WS   template                      -> OK name
    LIST_WSS                                  -> OK json
    DECLARE     ws, var, mode                 -> OK
    DELETE_VAR  ws, var                       -> OK
    LIST_VARS   ws                            -> OK json
    STORE       ws, var, value                -> OK
    FETCH, FETCH_TRY, FIND, FIND_TRY
                ws, var                       -> OK META + value | MISSING
    IFETCH, IFETCH_TRY, IFIND, IFIND_TRY
                ws, var, variable id, seq     -> OK META + value | MISSING

The key-value service keeps each entry as a SINGLE variable of a workspace (created on first
use, persistent, unowned). An entry's *version* is ``variable id << 32 | value sequence``, so it
changes with every write and never repeats. ``ttl`` is seconds from now as text: ``0`` never
expires, a negative ttl has expired already::

    KV_STORE    ws, key, how, ttl, version, value
                how: set | add | replace | append | prepend | cas (version must match) | swap
                                              -> OK <Q new version | MISSING | EXISTS;
                                                 swap -> OK META + old value | MISSING
    KV_GET      ws, key                       -> OK META + value | MISSING
    KV_INCR     ws, key, incr|decr, delta     -> OK decimal new value | MISSING | BAD_VALUE
    KV_DELETE   ws, key                       -> OK | MISSING
    KV_TOUCH    ws, key, ttl                  -> OK | MISSING
    KV_FLUSH    ws                            -> OK            (every variable of ws goes)
    KV_GET_MULTI ws, key...                   -> OK records: <HQI (key index, version, length)
                                                 + value's first frame; extra frames after
    KV_SET_MULTI ws, ttl, records             -> OK comma-separated indexes of keys not stored;
                records: <HI (key length, first frame length) + key + value's first frame,
                the values' extra frames following the head in order
    KV_DELETE_MULTI ws, key...                -> OK decimal number deleted
    KV_COMPARE_SWAP ws, key, ttl, new value, comparand value
                                              -> OK META + old value (swapped iff the old value
                                                 equals the comparand byte for byte) | MISSING

Publish/subscribe (see ``broker/state/pubsub.py``). A session's *delivery socket* is one of its
channels that only receives; ``channel`` arguments name it. Deliveries are not replies::

    MQ_PUBLISH  identifier, reply (0/1), value -> (OK decimal number of receivers, if asked)
    MQ_SUBSCRIBE channel, pattern              -> OK
    MQ_UNSUBSCRIBE channel, pattern            -> OK
    MQ_CREDIT   channel, messages, batches     -> (no reply) consumed deliveries: more may come
    MQ_QUEUE    pattern                        -> OK    (the shared queue: FIFO variable of __mq)
    MQ_SYNC     channel, marker                -> OK    and a 0x03 delivery carrying ``marker``
                behind everything sent or queued to that delivery socket before it
    WATCH       channel, ws or *               -> OK json {ws: {var: [values, mode]}} snapshot
    UNWATCH     channel, ws or *               -> OK

Work queues (see ``broker/state/batches.py``)::

    STORE_MANY  ws, var, records <I length + value's first frame; extra frames after
                                              -> OK decimal count
    FETCH_MANY  ws, var, most, block (0/1)    -> OK <H count, then per value <QHI (sequence,
                                                 returns, first frame length) + first frame,
                                                 then MANY_DEALT if dealt (below); extra
                                                 frames after; all under one lease
                                                 | MISSING
                blocked FETCH_MANYs are served newest first, each up to ``most`` of the
                values a STORE_MANY brings into a FIFO variable (plain fetches: oldest
                first, one value each); several blocked FETCH_MANYs are dealt those values,
                an equal share of their bytes each, in order
    END_SESSION host, pid                     -> OK decimal number of sessions ended

    delivery    header (version, DELIVERY, number of extra frames, messages dropped so far)
                body: 0x01 identifier NUL value's first frame (extra frames follow) | 0x02 json
                list of coalesced workspace events {ws, event, count[, var, values]} | 0x03
                marker (the answer to an MQ_SYNC)

An error is ``head(status >= ERROR) + UTF-8 message``.
"""

from __future__ import annotations

import enum
import re
import struct

PROTOCOL_VERSION = 1

HEADER = struct.Struct("<BBHI")
HEADER_SIZE = HEADER.size
DESCRIPTOR = struct.Struct("<BBH")
DESCRIPTOR_SIZE = DESCRIPTOR.size
META = struct.Struct("<QQ")
KV_RECORD = struct.Struct("<HQI")  # KV_GET_MULTI reply: key index, version, first frame length
KV_ITEM = struct.Struct("<HI")  # KV_SET_MULTI request: key length, first frame length
VERSION_SHIFT = 32  # an entry's version = variable id << VERSION_SHIFT | value sequence
MANY_ITEM = struct.Struct("<I")  # STORE_MANY request: first frame length, then the frame
MANY_COUNT = struct.Struct("<H")  # FETCH_MANY reply: how many values follow
MANY_RECORD = struct.Struct("<QHI")  # FETCH_MANY reply: sequence, returns, first frame length
#: FETCH_MANY reply: a byte after the records, when the values stored together were dealt among
#: several waiting callers (each got a share): the caller is not the only one with work.
MANY_DEALT = b"\1"
SEPARATOR = b"\0"

FLAG_ACKS = 1

#: Value descriptor flag: the value's one extra frame names a shared-memory file (see ``shm``).
VALUE_SHARED = 2

#: Ops whose last argument is a value's first frame (which may contain NUL): their number of
#: arguments before it.
VALUE_ARITY = {30: 2, 40: 5, 47: 2, 49: 3, 60: 2, 70: 2}
# (STORE, KV_STORE, KV_SET_MULTI, KV_COMPARE_SWAP, MQ_PUBLISH, STORE_MANY)

#: Bytes of random session id at the start of every client socket's routing identity; the two
#: bytes after it number the socket (channel) within the session.
SESSION_ID_SIZE = 16
CHANNEL = struct.Struct("<H")


class Op(enum.IntEnum):
    HELLO = 1
    BYE = 2
    HEARTBEAT = 3
    STATUS = 4
    CANCEL = 5
    OPEN_WS = 10
    USE_WS = 11
    DELETE_WS = 12
    MKTEMP_WS = 13
    LIST_WSS = 14
    DECLARE = 20
    DELETE_VAR = 21
    LIST_VARS = 22
    STORE = 30
    FETCH = 31
    FETCH_TRY = 32
    FIND = 33
    FIND_TRY = 34
    IFETCH = 35
    IFETCH_TRY = 36
    IFIND = 37
    IFIND_TRY = 38
    KV_STORE = 40
    KV_GET = 41
    KV_INCR = 42
    KV_DELETE = 43
    KV_TOUCH = 44
    KV_FLUSH = 45
    KV_GET_MULTI = 46
    KV_SET_MULTI = 47
    KV_DELETE_MULTI = 48
    KV_COMPARE_SWAP = 49
    MQ_PUBLISH = 60
    MQ_SUBSCRIBE = 61
    MQ_UNSUBSCRIBE = 62
    MQ_CREDIT = 63
    MQ_QUEUE = 64
    WATCH = 65
    UNWATCH = 66
    MQ_SYNC = 67
    STORE_MANY = 70
    FETCH_MANY = 71
    END_SESSION = 72


class Status(enum.IntEnum):
    OK = 0
    MISSING = 1
    CANCELLED = 2
    EXISTS = 3  # a conditional key-value write found the key present or changed
    DELIVERY = 4  # not a reply: a message or event batch pushed to a delivery socket
    ERROR = 16  # every status from here on is an error with a message
    BAD_REQUEST = 16
    UNKNOWN_OP = 17
    NO_WORKSPACE = 18
    DECLARATION_FAILED = 19
    VARIABLE_DELETED = 20
    ITERATOR_INVALID = 21
    NO_MEMORY = 22
    TOO_LARGE = 23
    SHUTTING_DOWN = 24
    INTERNAL = 25
    BAD_VALUE = 26  # the stored value does not suit the operation (incr of a non-number)
    TOO_MANY = 27  # beyond a per-session cap: calls waiting, subscriptions, watches


class Kind(enum.IntEnum):
    """What the payload of a value is; only clients interpret it."""

    BYTES = 0
    TEXT = 1
    INT = 2
    PICKLE = 3
    CLOUDPICKLE = 4
    JSON = 5  # UTF-8 JSON text: what the HTTP gateway stores (any language reads it)


class ProtocolError(ValueError):
    """A message that does not follow this module's layout."""


class VersionMismatch(ProtocolError):
    """A well-formed header from another version of the protocol."""

    def __init__(self, version: int, request_id: int) -> None:
        super().__init__(f"protocol version {version}, this side speaks {PROTOCOL_VERSION}: "
                         "install the same workbench version on both sides")
        self.request_id = request_id


# Plain ints for the hot paths: IntEnum arithmetic and lookups cost microseconds there.
_V = PROTOCOL_VERSION
_pack_header = HEADER.pack
_join = SEPARATOR.join


def request_head(op: int, request_id: int, args: list[bytes] | tuple = (), flags: int = 0) -> bytes:
    return _pack_header(_V, op, flags, request_id) + _join(args)


def reply_head(status: int, request_id: int, nframes: int = 0, body: bytes = b"") -> bytes:
    return _pack_header(_V, status, nframes, request_id) + body


#: HEADER + META in one pack, for the hottest reply (``value_reply_head``).
VALUE_REPLY = struct.Struct("<BBHIQQ")
_pack_value_reply = VALUE_REPLY.pack


def value_reply_head(request_id: int, nextra: int, var_id: int, seq: int, first: bytes) -> bytes:
    """The head of an OK reply carrying a value: header, META, then the value's first frame."""
    return _pack_value_reply(_V, 0, nextra, request_id, var_id, seq) + first


def parse_head(head: bytes) -> tuple[int, int, int]:
    """-> (op or status, flags or frame count, request id); ProtocolError on a foreign head."""
    if len(head) < HEADER_SIZE:
        raise ProtocolError(
            f"head of {len(head)} bytes, shorter than the {HEADER_SIZE}-byte header")
    version, code, flags, request_id = HEADER.unpack_from(head)
    if version != _V:
        raise VersionMismatch(version, request_id)
    return code, flags, request_id


def split_args(head: bytes) -> list[bytes]:
    return head[HEADER_SIZE:].split(SEPARATOR) if len(head) > HEADER_SIZE else []


def descriptor(kind: int, nextra: int = 0) -> bytes:
    return DESCRIPTOR.pack(kind, 0, nextra)


def parse_descriptor(frame) -> tuple[int, int, int]:
    """-> (kind, flags, number of extra frames) from a value's first frame."""
    if len(frame) < DESCRIPTOR_SIZE:
        raise ProtocolError(f"value frame of {len(frame)} bytes has no descriptor")
    return DESCRIPTOR.unpack_from(frame)


def pack_acks(request_ids) -> bytes:
    return b",".join(b"%d" % rid for rid in request_ids)


def unpack_acks(arg: bytes) -> list[int]:
    return [int(rid) for rid in arg.split(b",")] if arg else []


def pack_channel_acks(pairs) -> bytes:
    return b",".join(b"%d:%d" % pair for pair in pairs)


def unpack_channel_acks(arg: bytes) -> list[tuple[int, int]]:
    pairs = []
    for item in arg.split(b",") if arg else ():
        channel, _, rid = item.partition(b":")
        pairs.append((int(channel), int(rid)))
    return pairs


def pack_many(encoded) -> list:
    """Encoded values (each a frame list) -> the frames of one STORE_MANY request: the
    records of their first frames, then every extra frame in order."""
    records, extra = [], []
    for first, *rest in encoded:
        records.append(MANY_ITEM.pack(len(first)) + bytes(first))
        extra.extend(rest)
    return [b"".join(records), *extra]


def split_many(head: bytes, extra: list) -> list[tuple[list, int]]:
    """A FETCH_MANY reply -> [(value frames, returns)], not decoded, so that a caller can
    decode each value on its own."""
    return split_hand(head, extra)[0]


def split_hand(head: bytes, extra: list) -> tuple[list[tuple[list, int]], bool]:
    """A FETCH_MANY reply -> ([(value frames, returns)], whether they were dealt among
    several waiting callers: ``MANY_DEALT``)."""
    (count,) = MANY_COUNT.unpack_from(head, HEADER_SIZE)
    offset, used, values = HEADER_SIZE + MANY_COUNT.size, 0, []
    for _ in range(count):
        _, returns, length = MANY_RECORD.unpack_from(head, offset)
        offset += MANY_RECORD.size
        first = head[offset:offset + length]
        offset += length
        nextra = first[2] | first[3] << 8  # the descriptor's count of extra frames
        values.append(([first, *extra[used:used + nextra]] if nextra else [first], returns))
        used += nextra
    return values, head[offset:offset + 1] == MANY_DEALT


#: A template for ``mktempWs``: exactly one integer conversion, any literal ``%%``.
_TEMPLATE = re.compile(r"^(?:[^%]|%%)*%[-+ 0#]*\d*d(?:[^%]|%%)*$")


def valid_template(template: str) -> bool:
    """Whether ``template`` makes a workspace name of one integer (``mktempWs``)."""
    return bool(_TEMPLATE.match(template))
