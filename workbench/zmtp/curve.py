"""CurveZMQ (rfc.zeromq.org/spec/26) inside ZMTP 3.0, as libzmq speaks it: the handshake of
both ends and the boxes every frame travels in afterwards.

All cryptography is libsodium's, through PyNaCl's bindings: Curve25519 key agreement and the
XSalsa20-Poly1305 box (``crypto_box``), with the shared key of a connection computed once
(``crypto_box_beforenm``) and used for every message. Nothing here is hand-made crypto; this
module only lays out the commands and their nonces as the specification fixes them.

The handshake, with the client's permanent key pair (C, c), the server's (S, s), and a
transient pair on each side for this connection only (C', c' and S', s')::

    client                                         server
    greeting (CURVE, as client)  HELLO   ──▶      C', Box[64 zeros](C'→S)
                                         ◀──  WELCOME  Box[S' + cookie](S→C')
    INITIATE  cookie, Box[C + vouch + metadata](C'→S')            ──▶
              (vouch = Box[C' + S](C→S'): the permanent key owner speaks for C')
                                         ◀──  READY    Box[metadata](S'→C')
    MESSAGE   Box[flags + frame](C'→S')  ◀──▶  MESSAGE  Box[flags + frame](S'→C')

The handshake travels in command frames; each MESSAGE, in a data frame of its own whose
flags say nothing (libzmq's framing: MORE and COMMAND are inside the box).

The cookie (C' and s' sealed with a key only the server knows) is how libzmq avoids keeping
state between HELLO and INITIATE; here it is checked the same way. Every box's nonce carries
a counter that must grow: a replayed or reordered command does not open, or is refused.
Forward secrecy comes from the transient keys: a stolen permanent key does not open
yesterday's traffic.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

from nacl import bindings as pynacl
from nacl.exceptions import CryptoError

from . import (
    COMMAND, LARGE_FRAME, LONG, MORE, Inbound, ZmtpError, frame_header, greeting,
    parse_properties, peer_error, peer_identity,
)
from . import z85
from .sodium import BoxError, open_box, seal

KEY_SIZE = 32
_MAC = 16  # crypto_box_MACBYTES: what a box adds to its plaintext
HELLO_SIZE = 200
WELCOME_SIZE = 168
_INITIATE_MIN = 257
_MESSAGE_OVERHEAD = 8 + 8 + _MAC + 1  # name, short nonce, MAC, flags
_MAX_HANDSHAKE = 1 << 16

_HELLO = b"\x05HELLO"
_WELCOME = b"\x07WELCOME"
_INITIATE = b"\x08INITIATE"
_READY = b"\x05READY"
_MESSAGE = b"\x07MESSAGE"
_ERROR = b"\x05ERROR"
_CLIENT_MESSAGES, _SERVER_MESSAGES = b"CurveZMQMESSAGEC", b"CurveZMQMESSAGES"

CLIENT_GREETING = greeting(b"CURVE", as_server=False)
SERVER_GREETING = greeting(b"CURVE", as_server=True)


class KeyPair(NamedTuple):
    """A Curve25519 key pair, 32 raw bytes each."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:  # never a secret in a log or a traceback
        return f"KeyPair(public={z85.encode(self.public)!r}, secret=...)"

    @classmethod
    def generate(cls) -> KeyPair:
        public, secret = pynacl.crypto_box_keypair()
        return cls(public, secret)

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyPair:
        return cls(pynacl.crypto_scalarmult_base(secret), secret)

    @classmethod
    def from_z85(cls, public: str, secret: str) -> KeyPair:
        """A pair from its Z85 text; ValueError if the two do not belong together."""
        pair = cls.from_secret(decode_key(secret, "secret key"))
        if pair.public != decode_key(public, "public key"):
            raise ValueError("the public key does not belong to the secret key")
        return pair


class ClientKeys(NamedTuple):
    """What a client needs to talk CURVE to one broker."""

    server: bytes  # the broker's public key
    client: KeyPair


def decode_key(text: str | bytes, what: str = "key") -> bytes:
    """A key's 40 characters of Z85 -> its 32 bytes; ValueError naming ``what`` otherwise."""
    try:
        raw = z85.decode(text)
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"the {what} is not Z85 text: {exc}") from None
    if len(raw) != KEY_SIZE:
        raise ValueError(f"the {what} is {len(raw)} bytes of Z85; CURVE keys are 32 "
                         "(40 characters)")
    return raw


def encode_key(key: bytes) -> str:
    return z85.encode(key)


def _command(body: bytes) -> bytes:
    size = len(body)
    if size < 256:
        return bytes((COMMAND, size)) + body
    return bytes((COMMAND | LONG,)) + size.to_bytes(8, "big") + body


def _refused(reason: str, counter: str = "curve_malformed") -> ZmtpError:
    return ZmtpError(reason, handshake=True, counter=counter)


def _open(box: bytes, nonce: bytes, public: bytes, secret: bytes, what: str,
          counter: str = "curve_malformed", why: str = "") -> bytes:
    try:
        return pynacl.crypto_box_open(box, nonce, public, secret)
    except (CryptoError, ValueError, TypeError):
        raise _refused(f"the {what} box did not open" + (f": {why}" if why else ""),
                       counter) from None


class Boxes:
    """The MESSAGE boxes of one connection after its handshake: ``seal`` frames to send,
    ``open`` what arrives. Nonces count up from where the handshake left them; one that does
    not grow is refused (a replay, or a reordering)."""

    __slots__ = ("_key", "_out_prefix", "_in_prefix", "_sent", "_received")

    def __init__(self, key: bytes, out_prefix: bytes, in_prefix: bytes, sent: int,
                 received: int) -> None:
        self._key = key
        self._out_prefix = out_prefix
        self._in_prefix = in_prefix
        self._sent = sent  # the last nonce this side used
        self._received = received  # the last nonce the peer used

    def seal_frame(self, frame, flags: int) -> list:
        """One frame (or command body, with ``flags`` 2) -> the buffers of its MESSAGE."""
        self._sent = nonce = self._sent + 1
        short = nonce.to_bytes(8, "big")
        box = seal(flags, frame, self._out_prefix + short, self._key)
        size = 16 + len(box)
        if size < 256:
            return [bytes((0, size)) + _MESSAGE + short + box]
        head = bytes((LONG,)) + size.to_bytes(8, "big") + _MESSAGE + short
        if size < LARGE_FRAME:
            return [head + box]
        return [head, box]

    def seal(self, frames: list | tuple) -> list:
        """A message -> the buffers to send: one MESSAGE command per frame."""
        out = []
        last = len(frames) - 1
        for index, frame in enumerate(frames):
            if type(frame) is not bytes:  # a view of an array counts in bytes
                frame = memoryview(frame).cast("B")
            out += self.seal_frame(frame, MORE if index < last else 0)
        return out

    def open(self, head: bytes, box: bytes | bytearray) -> tuple[int, bytes | bytearray]:
        """A MESSAGE command's body, as its first 16 bytes (name and nonce) and its box ->
        (flags, frame); ZmtpError if it is not one of the peer's, in order. A ``bytearray``
        box may be opened in place (``sodium.open_box``)."""
        if head[:8] != _MESSAGE or len(box) < _MAC + 1:
            raise ZmtpError("expected a MESSAGE command", handshake=False,
                            counter="curve_malformed")
        nonce = int.from_bytes(head[8:16], "big")
        if nonce <= self._received:
            raise ZmtpError("a MESSAGE nonce did not grow (replayed or reordered)",
                            handshake=False, counter="curve_nonce")
        try:
            opened = open_box(box, self._in_prefix + head[8:16], self._key)
        except BoxError:
            raise ZmtpError("a MESSAGE box did not open (tampered with, or not the peer's)",
                            handshake=False, counter="curve_malformed") from None
        self._received = nonce
        return opened


class ServerHandshake:
    """The broker's half: HELLO -> WELCOME, INITIATE -> READY.

    ``authorize(client_public_key)`` says whether a client's permanent key is let in (None:
    every holder of the server key is). Failures raise ZmtpError with the counter that
    ``workbench status`` shows for them."""

    def __init__(self, keys: KeyPair, metadata: bytes,
                 authorize: Callable[[bytes], bool] | None = None) -> None:
        self.keys = keys
        self.metadata = metadata
        self.authorize = authorize
        self.client_key: bytes | None = None  # the client's permanent key, once known
        self._client_transient: bytes | None = None
        self._transient: KeyPair | None = None
        self._cookie_key = os.urandom(KEY_SIZE)
        self.boxes: Boxes | None = None

    def step(self, body: bytes) -> tuple[bytes, dict | None]:
        """A handshake command's body -> (the command to send back, the client's metadata
        once the handshake is complete, else None)."""
        if self._client_transient is None:
            return self._hello(body), None
        return self._initiate(body)

    def _hello(self, body: bytes) -> bytes:
        if body[:6] != _HELLO:
            raise _refused(f"expected HELLO, got {_name(body)}")
        if len(body) != HELLO_SIZE:
            raise _refused(f"HELLO of {len(body)} bytes; it has {HELLO_SIZE}")
        if body[6:8] != b"\x01\x00":
            raise _refused(f"CurveZMQ version {body[6]}.{body[7]}; this broker speaks 1.0")
        transient = body[80:112]
        short = body[112:120]
        signature = _open(body[120:200], b"CurveZMQHELLO---" + short, transient,
                          self.keys.secret, "HELLO", counter="curve_server_key",
                          why="the client has another server key (an old connection file?)")
        if signature != bytes(64):
            raise _refused("the HELLO box holds something else than its 64 zero bytes")
        self._client_transient = transient
        self._client_nonce = int.from_bytes(short, "big")
        self._transient = KeyPair.generate()
        cookie_nonce = os.urandom(16)
        cookie = cookie_nonce + pynacl.crypto_secretbox(
            transient + self._transient.secret, b"COOKIE--" + cookie_nonce, self._cookie_key)
        welcome_nonce = os.urandom(16)
        box = pynacl.crypto_box(self._transient.public + cookie, b"WELCOME-" + welcome_nonce,
                                transient, self.keys.secret)
        return _command(_WELCOME + welcome_nonce + box)

    def _initiate(self, body: bytes) -> tuple[bytes, dict]:
        if self.boxes is not None or body[:9] != _INITIATE:
            raise _refused(f"expected INITIATE, got {_name(body)}")
        if len(body) < _INITIATE_MIN:
            raise _refused(f"INITIATE of {len(body)} bytes; it has at least {_INITIATE_MIN}")
        try:
            cookie = pynacl.crypto_secretbox_open(body[25:105], b"COOKIE--" + body[9:25],
                                                  self._cookie_key)
        except (CryptoError, ValueError):
            raise _refused("the INITIATE cookie is not this connection's") from None
        if cookie != self._client_transient + self._transient.secret:
            raise _refused("the INITIATE cookie is not this connection's")
        short = body[105:113]
        nonce = int.from_bytes(short, "big")
        if nonce <= self._client_nonce:
            raise _refused("the INITIATE nonce did not grow", counter="curve_nonce")
        transient, secret = self._client_transient, self._transient.secret
        plain = _open(body[113:], b"CurveZMQINITIATE" + short, transient, secret, "INITIATE")
        client_key, vouch_nonce, vouch = plain[:32], plain[32:48], plain[48:128]
        vouched = _open(vouch, b"VOUCH---" + vouch_nonce, client_key, secret, "vouch")
        if vouched != transient + self.keys.public:
            raise _refused("the vouch does not name this connection's keys")
        metadata = parse_properties(plain[128:])
        self.client_key = client_key
        if self.authorize is not None and not self.authorize(client_key):
            raise ZmtpError("the client's key is not allowed", handshake=True,
                            counter="curve_key_refused", status=b"400")
        key = pynacl.crypto_box_beforenm(transient, secret)
        self.boxes = Boxes(key, _SERVER_MESSAGES, _CLIENT_MESSAGES, 1, nonce)
        ready = pynacl.crypto_box_easy_afternm(self.metadata, b"CurveZMQREADY---"
                                               + (1).to_bytes(8, "big"), key)
        return _command(_READY + (1).to_bytes(8, "big") + ready), metadata


class ClientHandshake:
    """A client's half: ``hello()`` first, then WELCOME -> INITIATE and READY -> done."""

    def __init__(self, keys: ClientKeys, metadata: bytes) -> None:
        self.keys = keys
        self.metadata = metadata
        self._transient = KeyPair.generate()
        self._server_transient: bytes | None = None
        self._cookie = b""
        self._key = b""
        self.boxes: Boxes | None = None

    def hello(self) -> bytes:
        short = (1).to_bytes(8, "big")
        box = pynacl.crypto_box(bytes(64), b"CurveZMQHELLO---" + short, self.keys.server,
                                self._transient.secret)
        return _command(_HELLO + b"\x01\x00" + bytes(72) + self._transient.public + short
                        + box)

    def step(self, body: bytes) -> tuple[bytes, dict | None]:
        """A handshake command from the broker -> (the command to send back, the broker's
        metadata once the handshake is complete)."""
        if body[:6] == _ERROR:
            error = peer_error(body, handshake=True)
            if error.status == b"400":  # ZAP's status for a key it does not let in
                raise ZmtpError("the broker refused this client's key", handshake=True,
                                counter="refused_by_peer", status=error.status)
            raise error
        if self._server_transient is None:
            return self._welcome(body), None
        return b"", self._ready(body)

    def _welcome(self, body: bytes) -> bytes:
        if body[:8] != _WELCOME or len(body) != WELCOME_SIZE:
            raise _refused(f"expected WELCOME, got {_name(body)}")
        plain = _open(body[24:], b"WELCOME-" + body[8:24], self.keys.server,
                      self._transient.secret, "WELCOME", counter="curve_server_key")
        self._server_transient, self._cookie = plain[:32], plain[32:128]
        self._key = pynacl.crypto_box_beforenm(self._server_transient, self._transient.secret)
        vouch_nonce = os.urandom(16)
        vouch = pynacl.crypto_box(self._transient.public + self.keys.server,
                                  b"VOUCH---" + vouch_nonce, self._server_transient,
                                  self.keys.client.secret)
        short = (2).to_bytes(8, "big")
        box = pynacl.crypto_box_easy_afternm(
            self.keys.client.public + vouch_nonce + vouch + self.metadata,
            b"CurveZMQINITIATE" + short, self._key)
        return _command(_INITIATE + self._cookie + short + box)

    def _ready(self, body: bytes) -> dict:
        if body[:6] != _READY or len(body) < 14 + _MAC:
            raise _refused(f"expected READY, got {_name(body)}")
        short = body[6:14]
        try:
            plain = pynacl.crypto_box_open_easy_afternm(body[14:], b"CurveZMQREADY---" + short,
                                                        self._key)
        except (CryptoError, ValueError):
            raise _refused("the READY box did not open") from None
        self.boxes = Boxes(self._key, _CLIENT_MESSAGES, _SERVER_MESSAGES, 2,
                           int.from_bytes(short, "big"))
        return parse_properties(plain)


def _name(body: bytes) -> str:
    if not body:
        return "an empty command"
    return repr(body[1:1 + body[0]].decode("latin-1"))


class CurveInbound(Inbound):
    """``Inbound`` for a CURVE connection: the greeting, the handshake (``handshake`` is a
    ``ServerHandshake`` or a ``ClientHandshake``), then MESSAGE commands opened into frames.

    What the handshake sends back is appended to ``replies``, as are the answers to
    heartbeats; ``seal(frames)`` gives the buffers of an outgoing message. A frame larger than
    ``max_message`` closes the connection (its MORE flag is inside the box, so the rest of
    its message cannot be skipped unread)."""

    __slots__ = ("handshake", "peer_properties", "boxes", "_large_head")

    def __init__(self, max_message: int, handshake: ServerHandshake | ClientHandshake) -> None:
        super().__init__(max_message)
        self.handshake = handshake
        self.peer_properties: dict[bytes, bytes] = {}
        self.boxes: Boxes | None = None
        self._large_head = b""  # the name and nonce of the large MESSAGE being read

    def seal(self, frames: list | tuple) -> list:
        return self.boxes.seal(frames)

    def _end_large(self) -> None:
        box = self._large  # opened where it was read, and handed on as the frame
        self._large = None
        self._message(self._large_head, box)

    mechanism = b"CURVE"

    def feed(self, data: bytes) -> None:
        data, pos = self._resume(data)
        end = len(data)
        while pos < end:
            header = frame_header(data, pos, end)
            if header is None:
                break
            flags, size, start = header
            ready = self.boxes is not None
            if flags & ~(MORE | LONG | COMMAND) or not (ready or flags & COMMAND):
                raise ZmtpError("a data frame during the CURVE handshake", handshake=not ready,
                                counter="curve_malformed")
            stop = start + size
            if not ready:
                if size > _MAX_HANDSHAKE:
                    raise _refused("handshake command too large")
                if stop > end:
                    break
                self._handshake_step(data[start:stop])
            else:
                if size > self.max_message + _MESSAGE_OVERHEAD:
                    raise ZmtpError(f"a frame of {size} bytes is over the limit of "
                                    f"{self.max_message}", handshake=False, counter="oversized")
                if stop > end:
                    if size >= LARGE_FRAME and end - start >= 16:  # its box into a buffer
                        self._large_head = data[start:start + 16]
                        self._large = bytearray(size - 16)
                        self._large[:end - start - 16] = data[start + 16:end]
                        self._large_filled = end - start - 16
                        return
                    break
                self._message(data[start:start + 16], data[start + 16:stop])
            pos = stop
        if pos < end:
            self._pending = data[pos:]

    def _handshake_step(self, body: bytes) -> None:
        reply, metadata = self.handshake.step(body)
        if reply:
            self.replies.append(reply)
        if metadata is not None:
            self.boxes = self.handshake.boxes
            self.peer_properties = metadata
            self.identity = peer_identity(metadata)

    def _message(self, head: bytes, box: bytes) -> None:
        flags, frame = self.boxes.open(head, box)
        if flags & 2:  # a command inside the box: a heartbeat
            name = frame[1:1 + frame[0]] if frame else b""
            if name == b"PING":
                self.replies += self.boxes.seal_frame(
                    bytes((4,)) + b"PONG" + frame[1 + frame[0] + 2:], 2)
            elif name == b"ERROR":
                raise peer_error(frame, handshake=False)
            return
        if self.identity is None:
            raise ZmtpError("message before READY", handshake=True)
        self._size += len(frame)
        if not self._discarding and self._size > self.max_message:
            self._discarding = True
            if not self._frames:
                self._frames.append(frame[:4096])
        self._add_frame(frame, bool(flags & MORE))

