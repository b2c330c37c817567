"""ZeroMQ's wire protocol (ZMTP 3.0), as the broker's ROUTER and the clients' DEALER sockets
speak it: the framing and the NULL mechanism here, CURVE in ``zmtp.curve``.

Pure: bytes in, messages out, and bytes to send; the sockets belong to the broker's server loop
(``broker/server``) and the client's ``client/dealer``, which hand them in to read from.

Why not libzmq: it moves every message between its own I/O thread and the thread that called
it. A hand-off from one client to another crossed the broker in three thread wake-ups and each
client in two more; on small VMs a wake-up of an idle vCPU costs more than the request, and
those hops put even a bare libzmq relay behind Redis's BLPOP hand-off (``docs/benchmarks.md``).
Here each process moves its own bytes in the thread that needs them. On the wire nothing
changes: any ZeroMQ DEALER can talk to the broker, and the test suite's hostile clients are
pyzmq sockets.

The wire format (rfc.zeromq.org/spec/23): each side sends a 64-byte greeting (signature
``FF 00*8 7F``, version 3.0, the mechanism's name), then under NULL a ``READY`` command whose properties name
the socket type and, for a DEALER, its routing identity. After that every frame is a flags byte
(``MORE`` = 1, ``LONG`` = 2, ``COMMAND`` = 4), a size (one byte, or eight big-endian bytes when
``LONG``) and the body; a message is a run of frames whose last lacks ``MORE``.
"""

from __future__ import annotations

import itertools

MORE, LONG, COMMAND = 1, 2, 4
GREETING_SIZE = 64


def greeting(mechanism: bytes = b"NULL", as_server: bool = False) -> bytes:
    """The 64 bytes each side sends first: signature, version 3.0, mechanism, role."""
    return (b"\xff" + bytes(8) + b"\x7f" + bytes((3, 0)) + mechanism.ljust(20, b"\0")
            + bytes((int(as_server),)) + bytes(31))


GREETING = greeting()
#: Socket types a ROUTER may talk to (ZMTP 3.0's compatibility table).
PEER_TYPES = frozenset((b"DEALER", b"REQ", b"ROUTER"))
#: A frame body at least this large is read straight into a buffer of its own (``body_buffer``)
#: instead of through the connection's read chunks.
LARGE_FRAME = 1 << 16
#: Bytes asked of the kernel per read of small frames. Kept under glibc malloc's mmap threshold
#: (128 KiB): ``recv`` allocates its whole size first, and a larger chunk is mapped, faulted in
#: and unmapped on every read, ~10 us instead of ~2 us (more on a just-woken thread), on every
#: message either end receives.
READ_CHUNK = 1 << 16
#: How much of a message's first frame is kept when the message is too large to keep whole:
#: enough for the request header, so the sender can be told.
KEPT_HEAD = 4096
_MAX_COMMAND = 1 << 16
_FLAG_BITS = MORE | LONG | COMMAND

# Short frame headers, by (more, size): built once, used for every reply.
_SHORT = tuple(tuple(bytes((more, size)) for size in range(256)) for more in (0, MORE))
_LAST_SHORT = _SHORT[0]
_generated_ids = itertools.count(1)


class ZmtpError(Exception):
    """The peer broke the protocol, or was refused; the connection is to be closed.
    ``handshake`` tells whether it happened before the peer was ready (a port scanner, another
    protocol, a client without the broker's key); ``counter`` names what ``workbench status``
    counts it as (None: the transport's default); ``status`` is what the ERROR command tells a
    ZeroMQ peer (ZAP's status code for a refused key; None: the reason)."""

    def __init__(self, reason: str, handshake: bool, counter: str | None = None,
                 status: bytes | None = None) -> None:
        super().__init__(reason)
        self.handshake = handshake
        self.counter = counter
        self.status = status


def frame_header(data: bytes, pos: int, end: int) -> tuple[int, int, int] | None:
    """The frame header at ``data[pos:end]`` -> (flags, body size, where the body starts), or
    None if the header is not all there yet."""
    flags = data[pos]
    if flags & LONG:
        if end - pos < 9:
            return None
        return flags, int.from_bytes(data[pos + 1:pos + 9], "big"), pos + 9
    if end - pos < 2:
        return None
    return flags, data[pos + 1], pos + 2


def _frame_header(size: int, flags: int) -> bytes:
    if size < 256:
        return bytes((flags, size))
    return bytes((flags | LONG,)) + size.to_bytes(8, "big")


def command(name: bytes, body: bytes = b"") -> bytes:
    """A command frame: ``name`` (length-prefixed) followed by ``body``."""
    payload = bytes((len(name),)) + name + body
    return _frame_header(len(payload), COMMAND) + payload


def properties(**values: bytes) -> bytes:
    """ZMTP metadata: each property as a length-prefixed name and a 4-byte-length value."""
    out = b""
    for name, value in values.items():
        key = name.replace("_", "-").encode()
        out += bytes((len(key),)) + key + len(value).to_bytes(4, "big") + value
    return out


#: What the broker sends first on every connection: its greeting and its READY.
HANDSHAKE = GREETING + command(b"READY", properties(Socket_Type=b"ROUTER"))
PONG = b"PONG"


def error_command(reason: str | bytes) -> bytes:
    """The ERROR command ZMTP sends before closing a connection whose handshake failed."""
    text = (reason if isinstance(reason, bytes) else reason.encode())[:255]
    return command(b"ERROR", bytes((len(text),)) + text)


def parse_greeting(greeting: bytes, expected: bytes = b"NULL") -> None:
    """Check a peer's 64-byte greeting; raise ZmtpError if this side cannot talk to it. A
    mechanism other than ``expected`` raises with ``counter`` ``"mechanism_mismatch"`` and
    the peer's mechanism as ``status``."""
    if greeting[0] != 0xFF or not greeting[9] & 1:
        raise ZmtpError("not a ZeroMQ peer (bad signature)", handshake=True)
    if greeting[10] < 3:
        raise ZmtpError(f"ZMTP {greeting[10]}.x peer; this side speaks ZMTP 3",
                        handshake=True)
    mechanism = greeting[12:32].rstrip(b"\0")
    if mechanism != expected:
        theirs, ours = mechanism.decode("latin-1"), expected.decode()
        raise ZmtpError(f"the peer speaks the {theirs!r} security mechanism, this side "
                        f"{ours!r}", handshake=True, counter="refused_mechanism",
                        status=mechanism)


def parse_properties(data: bytes) -> dict[bytes, bytes]:
    """ZMTP metadata -> {lower-case name: value}; raise ZmtpError if it is cut short."""
    found = {}
    pos, end = 0, len(data)
    while pos < end:
        size = data[pos]
        name = data[pos + 1:pos + 1 + size]
        pos += 1 + size
        if pos + 4 > end:
            raise ZmtpError("metadata cut short", handshake=True)
        length = int.from_bytes(data[pos:pos + 4], "big")
        pos += 4
        if pos + length > end:
            raise ZmtpError("metadata cut short", handshake=True)
        found[name.lower()] = data[pos:pos + length]
        pos += length
    return found


def peer_error(body: bytes, handshake: bool) -> ZmtpError:
    """An ERROR command's body -> the error that ends the connection, with the peer's reason
    (``counter`` ``"refused_by_peer"``; ``status`` the reason's bytes)."""
    reason = body[7:7 + body[6]] if len(body) > 6 else b""
    text = reason.decode("utf-8", "replace") or "no reason given"
    return ZmtpError(f"the peer refused the connection: {text}", handshake=handshake,
                     counter="refused_by_peer", status=reason)


def identity_from_ready(body: bytes) -> bytes:
    """A READY command's body -> the peer's routing identity (generated when it sets none).
    An ERROR instead (a peer that refuses, as the NULL mechanism allows) raises its reason."""
    if body[:6] == b"\x05ERROR":
        raise peer_error(body, handshake=True)
    if not body or body[1:1 + body[0]] != b"READY":
        raise ZmtpError("expected a READY command", handshake=True)
    return peer_identity(parse_properties(body[1 + body[0]:]))


def peer_identity(found: dict[bytes, bytes]) -> bytes:
    """A peer's metadata -> its routing identity (generated when it sets none); ZmtpError if
    its socket type cannot talk to a ROUTER."""
    socket_type = found.get(b"socket-type", b"")
    if socket_type not in PEER_TYPES:
        raise ZmtpError(f"a ROUTER cannot talk to a {socket_type.decode('latin-1')!r} socket",
                        handshake=True)
    identity = found.get(b"identity", b"")
    if not identity:  # as libzmq's ROUTER does: a zero byte first, so no client id collides
        identity = b"\0" + next(_generated_ids).to_bytes(4, "big")
    elif len(identity) > 255:
        raise ZmtpError("routing identity longer than 255 bytes", handshake=True)
    return identity


def encode(frames: list | tuple) -> list:
    """A message -> the buffers to send, in order. Small frames are joined to their headers;
    large ones are sent from their own memory, never copied."""
    if len(frames) == 1:  # the usual message: one small frame
        frame = frames[0]
        if type(frame) is bytes and len(frame) < 256:
            return [_LAST_SHORT[len(frame)] + frame]
    out = []
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        if type(frame) is bytes:
            size = len(frame)
        else:  # any buffer: a numpy array's memory counts in bytes, not in elements
            frame = memoryview(frame).cast("B")
            size = frame.nbytes
        more = MORE if index < last else 0
        if size < 256:
            out.append(_SHORT[more][size] + frame if type(frame) is bytes
                       else _SHORT[more][size] + bytes(frame))
        else:
            out.append(bytes((more | LONG,)) + size.to_bytes(8, "big"))
            out.append(frame)
    return out


class Inbound:
    """The byte stream one peer sends -> its routing identity, then its messages.

    ``feed(data)`` parses what arrived and appends each complete message to ``messages`` as
    ``(frames, size)``; a message over ``max_message`` bytes is not kept: its frames are skipped
    as they arrive and it is appended as ``([first bytes of its first frame], size)`` so the
    sender can be answered. While a large frame is coming, ``body_buffer()`` gives the part of
    its own buffer still to fill: read into it, then call ``body_filled(n)``."""

    #: The connection's CURVE boxes (``zmtp.curve``); a plain connection has none.
    boxes = None
    #: The security mechanism the peer's greeting must name.
    mechanism = b"NULL"

    __slots__ = ("max_message", "identity", "messages", "replies", "_pending", "_frames",
                 "_size", "_skip", "_discarding", "_large", "_large_filled", "_large_more",
                 "_greeted", "_head_missing")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self.identity: bytes | None = None  # set once the peer's READY arrived
        self.messages: list[tuple[list, int]] = []
        self.replies: list[bytes] = []  # commands to send back (PONG)
        self._pending = b""  # the start of a frame whose rest has not arrived
        self._frames: list = []  # frames of the message being read
        self._size = 0  # its bytes so far
        self._skip = 0  # bytes of an oversized message's frame still to skip
        self._discarding = False  # the message being read is over the limit
        self._large: bytearray | None = None  # a large frame being read into its own buffer
        self._large_filled = 0
        self._large_more = False
        self._greeted = False
        self._head_missing = 0  # bytes of an oversized message's head still to keep

    def read_from(self, sock, chunk: int) -> bool:
        """Read once from a non-blocking ``sock`` into the parser (a large frame's body
        straight into its own buffer) -> False at the end of the stream. The socket's
        errors, BlockingIOError included, and ZmtpError propagate."""
        if self._large is None:  # ``body_buffer()``, inlined: this runs every read
            data = sock.recv(chunk)
            end = len(data)
            # Most reads bring exactly one message of one small frame, with nothing left over
            # from the last read: taken whole here, without ``feed``'s calls. (Under CURVE,
            # ``boxes`` is set before ``identity``; its frames are boxed: ``feed`` opens them.)
            if (end > 1 and data[0] == 0 and end == data[1] + 2 and self.boxes is None
                    and self.identity is not None and not self._pending and not self._skip
                    and not self._frames and end - 2 <= self.max_message):
                self.messages.append(([data[2:]], end - 2))
            elif end:
                self.feed(data)
            else:
                return False
        else:
            target = memoryview(self._large)[self._large_filled:]
            count = sock.recv_into(target)
            target.release()  # the buffer may be handed on, even resized (``zmtp.sodium``)
            if not count:
                return False
            self.body_filled(count)
        return True

    def between_messages(self) -> bool:
        """Whether the peer is past its handshake and the next byte it sends starts a message
        (nothing of one is held here), on a connection without CURVE: then bytes read
        elsewhere may be parsed from scratch (the client's fast lane, ``accel``)."""
        return (self.identity is not None and self.boxes is None and not self._pending
                and self._large is None and not self._skip and not self._frames)

    def body_buffer(self) -> memoryview | None:
        """The unfilled part of the large frame being read, or None."""
        if self._large is None:
            return None
        return memoryview(self._large)[self._large_filled:]

    def body_filled(self, count: int) -> None:
        """``count`` more bytes of the large frame were read into ``body_buffer()``."""
        self._large_filled += count
        if self._large_filled == len(self._large):
            self._end_large()

    def _end_large(self) -> None:
        frame, more = self._large, self._large_more
        self._large = None
        self._add_frame(frame, more)

    def _add_frame(self, frame, more: bool) -> None:
        if not self._discarding:
            self._frames.append(frame)
        if not more:
            frames = self._frames
            if self._discarding:
                frames = frames[:1]
            self.messages.append((frames, self._size))
            self._frames = []
            self._size = 0
            self._discarding = False

    def _resume(self, data: bytes) -> tuple[bytes, int]:
        """Start parsing ``data``: after what was left over, into the large frame or the
        skipped one in progress, past the peer's greeting -> (the bytes, where frames start;
        at the end if the greeting is not all there yet)."""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        pos, end = 0, len(data)
        if self._large is not None:  # the rest of a large frame, read the ordinary way
            take = min(end, len(self._large) - self._large_filled)
            self._large[self._large_filled:self._large_filled + take] = data[:take]
            pos = take
            self.body_filled(take)
        elif self._skip:
            take = min(end, self._skip)
            if self._head_missing:  # the head of an oversized message, cut by a read
                more_head = data[:min(take, self._head_missing)]
                self._frames[0] += more_head
                self._head_missing -= len(more_head)
            self._skip -= take
            pos = take
            if not self._skip:  # the skipped frame ended
                self._add_frame(b"", self._large_more)
        if not self._greeted:
            if end - pos < GREETING_SIZE:
                self._pending = data[pos:]
                return data, end
            parse_greeting(data[pos:pos + GREETING_SIZE], self.mechanism)
            self._greeted = True
            pos += GREETING_SIZE
        return data, pos

    def feed(self, data: bytes) -> None:
        """Parse bytes as they arrived from the peer. Raises ZmtpError on a protocol breach."""
        if self._pending or self._large is not None or self._skip or not self._greeted:
            data, pos = self._resume(data)
        else:  # nothing left over: what arrived starts with a frame
            pos = 0
        end = len(data)
        max_message = self.max_message
        while pos < end:
            header = frame_header(data, pos, end)
            if header is None:
                break
            flags, size, start = header
            if flags & ~_FLAG_BITS:
                raise ZmtpError("reserved frame flags set", handshake=self.identity is None)
            stop = start + size
            if flags & COMMAND:
                if size > _MAX_COMMAND:
                    raise ZmtpError("command frame too large", handshake=self.identity is None)
                if stop > end:
                    break
                self._command(data[start:stop])
                pos = stop
                continue
            if self.identity is None:
                raise ZmtpError("message before READY", handshake=True)
            more = bool(flags & MORE)
            if stop > end and size < LARGE_FRAME and not self._discarding:
                break  # a small frame cut short: parsed again when the rest arrives
            self._size += size  # from here on the frame is consumed, whole or in parts
            if not self._discarding and self._size > max_message:
                self._discarding = True
                if not self._frames:  # keep the head of the request, to answer it
                    kept = bytes(data[start:min(stop, end, start + KEPT_HEAD)])
                    self._frames.append(kept)
                    self._head_missing = min(size, KEPT_HEAD) - len(kept)
            if self._discarding:
                if stop > end:
                    self._skip = stop - end
                    self._large_more = more
                    return
                self._add_frame(b"", more)
                pos = stop
                continue
            if stop > end:
                self._large = bytearray(size)
                self._large[:end - start] = data[start:end]
                self._large_filled = end - start
                self._large_more = more
                return
            self._add_frame(data[start:stop], more)
            pos = stop
        if pos < end:
            self._pending = data[pos:]

    def _command(self, body: bytes) -> None:
        if self.identity is None:
            self.identity = identity_from_ready(body)
            return
        name = body[1:1 + body[0]] if body else b""
        if name == b"PING":  # ZMTP 3.1 heartbeat: answer with the context it carried
            self.replies.append(command(b"PONG", body[1 + body[0] + 2:]))
        elif name == b"ERROR":
            raise peer_error(body, handshake=False)
        # Anything else (SUBSCRIBE, PONG, unknown commands) means nothing to a ROUTER.
