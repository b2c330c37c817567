"""The wire protocol between clients and the broker: frame layout, op codes, status codes.

Every message is a ZeroMQ multipart message. The client's DEALER sends::

    [header, *args]                 header = <BBHI: version, op, flags, request id

and the broker's ROUTER sees the client's routing identity in front of it. The broker answers::

    [header, *payload]              header = <BBHI: version, status, flags, request id

Request ids are chosen by the client, one counter per socket, so a socket may have many requests
in flight; replies come back in any order and are matched by id. When ``flags & FLAG_ACKS``, the
first argument is a packed array of ``<I`` request ids whose leased values the client has
consumed (acknowledgements ride on the next request instead of costing a message of their own).

A *value* travels as ``[descriptor, *payload]``: descriptor = ``<BBH`` (kind, 0, number of payload
frames); the broker never looks inside the payload. A value reply is ``[meta, descriptor,
*payload]`` with meta = ``<QQ`` (variable id, value sequence number), the cookie of iterators.

Arguments by op (names are UTF-8 frames; ``u8``/``u32`` are little-endian packed integers)::

    HELLO       [json client info]            -> OK [json broker info]
    BYE         []                            -> OK           (the session ends now)
    HEARTBEAT   [<HI pairs: channel, rid>]    -> OK           (acks of idle channels ride here)
    STATUS      []                            -> OK [json]
    CANCEL      [u32 request id]              -> CANCELLED
    OPEN_WS     [ws, u8 persistent, u8 create]-> OK
    USE_WS      [ws, u8 create]               -> OK
    DELETE_WS   [ws]                          -> OK
    MKTEMP_WS   [template]                    -> OK [name]
    LIST_WSS    []                            -> OK [json]
    DECLARE     [ws, var, mode]               -> OK
    DELETE_VAR  [ws, var]                     -> OK
    LIST_VARS   [ws]                          -> OK [json]
    STORE       [ws, var, *value]             -> OK
    FETCH, FETCH_TRY, FIND, FIND_TRY
                [ws, var]                     -> OK [meta, *value] | MISSING
    IFETCH, IFETCH_TRY, IFIND, IFIND_TRY
                [ws, var, <QQ cookie>]        -> OK [meta, *value] | MISSING

Errors are ``[header(status >= ERROR), UTF-8 message]``.
"""

from __future__ import annotations

import enum
import struct

PROTOCOL_VERSION = 1

HEADER = struct.Struct("<BBHI")
DESCRIPTOR = struct.Struct("<BBH")
META = struct.Struct("<QQ")
COOKIE = META
U32 = struct.Struct("<I")
U8 = struct.Struct("<B")
CHANNEL_ACK = struct.Struct("<HI")

FLAG_ACKS = 1

#: Bytes of random session id at the start of every client socket's routing identity; the two
#: bytes after it number the socket (channel) within the session.
SESSION_ID_SIZE = 16
CHANNEL_SIZE = 2
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


#: Ops whose successful reply hands over a value under a lease that the client must acknowledge.
LEASING_OPS = frozenset({Op.FETCH, Op.FETCH_TRY, Op.IFETCH, Op.IFETCH_TRY})


class Status(enum.IntEnum):
    OK = 0
    MISSING = 1
    CANCELLED = 2
    ERROR = 16  # every status from here on is an error with a message frame
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


class Kind(enum.IntEnum):
    """What the payload of a value is; only clients interpret it."""

    BYTES = 0
    TEXT = 1
    INT = 2
    PICKLE = 3
    CLOUDPICKLE = 4


class ProtocolError(ValueError):
    """A message that does not follow this module's layout."""


def request_header(op: int, request_id: int, flags: int = 0) -> bytes:
    return HEADER.pack(PROTOCOL_VERSION, op, flags, request_id)


def reply_header(status: int, request_id: int) -> bytes:
    return HEADER.pack(PROTOCOL_VERSION, status, 0, request_id)


def parse_header(frame: bytes) -> tuple[int, int, int]:
    """-> (op or status, flags, request id); raises ProtocolError on a foreign header."""
    if len(frame) != HEADER.size:
        raise ProtocolError(f"header of {len(frame)} bytes, expected {HEADER.size}")
    version, code, flags, request_id = HEADER.unpack(frame)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, this side speaks {PROTOCOL_VERSION}")
    return code, flags, request_id


def pack_acks(request_ids: list[int]) -> bytes:
    return struct.pack(f"<{len(request_ids)}I", *request_ids)


def unpack_acks(frame: bytes) -> tuple[int, ...]:
    if len(frame) % 4:
        raise ProtocolError("acknowledgement frame is not a whole number of u32")
    return struct.unpack(f"<{len(frame) // 4}I", frame)


def pack_channel_acks(pairs: list[tuple[int, int]]) -> bytes:
    return b"".join(CHANNEL_ACK.pack(channel, rid) for channel, rid in pairs)


def unpack_channel_acks(frame: bytes) -> list[tuple[int, int]]:
    if len(frame) % CHANNEL_ACK.size:
        raise ProtocolError("heartbeat acknowledgements are not whole (channel, id) pairs")
    return [CHANNEL_ACK.unpack_from(frame, i) for i in range(0, len(frame), CHANNEL_ACK.size)]


def descriptor(kind: int, nframes: int) -> bytes:
    return DESCRIPTOR.pack(kind, 0, nframes)


def parse_descriptor(frame: bytes) -> tuple[int, int]:
    """-> (kind, number of payload frames)."""
    if len(frame) != DESCRIPTOR.size:
        raise ProtocolError(f"value descriptor of {len(frame)} bytes, expected {DESCRIPTOR.size}")
    kind, _, nframes = DESCRIPTOR.unpack(frame)
    return kind, nframes
