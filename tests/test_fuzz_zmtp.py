"""Fuzzing the ZMTP stream parser every broker connection is read with (``zmtp.Inbound``), and
a real broker under hostile raw connections while a client works.

The properties are stated against a ``Wire``: how to make the broker's parser, fresh (for any
bytes a peer may send first) or with a valid peer's stream for it. The NULL mechanism is the
one wire so far; another mechanism is one more ``Wire`` in ``WIRES`` and every property runs on
it too: for CURVE, ``fresh`` makes a server-side parser with its keys, and ``stream`` either
returns the client's handshake bytes as ``prefix`` (if the server's side can be made
deterministic) or runs the handshake on the parser and returns ``prefix=b""``, with ``encode``
a client's encrypting encoder. ``parse`` hands bytes to a parser in the pieces a socket's reads
would return, through ``feed`` or the way the server reads (``read_from``: large frames
straight into ``body_buffer``).
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Callable, NamedTuple

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from workbench import KeyValueStore, NetWorkSpace
from workbench.protocol import Op, request_head
from workbench.zmtp import (
    COMMAND, GREETING, KEPT_HEAD, LARGE_FRAME, LONG, MORE, READ_CHUNK, Inbound, ZmtpError,
    command, encode, properties,
)

from .support import broker_status, wait_for

# A hang never ends, and the slowest examples take well under a second alone: the deadline
# leaves room for a 2-core machine busy with other tests, so that it never fails by timing.
FUZZ = settings(deadline=timedelta(seconds=5), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: Reads an example may cut a stream into: 1-byte reads of a long stream take longer steps.
MAX_READS = 20_000
#: Limits the parser is made with: 0 (every message is over it), a small one, one just over a
#: LARGE_FRAME, and the broker's default (nothing a test sends reaches it).
MAX_MESSAGES = (0, 1000, LARGE_FRAME + 100, 1 << 30)


class Message(NamedTuple):
    """What a parser gives out for one message: its frames (only a head if it was over the
    limit) and its size on the wire."""

    frames: list[bytes]
    size: int


class Stream(NamedTuple):
    """A fresh parser of the broker's side and what a valid peer sends it."""

    parser: Inbound
    prefix: bytes  # the greeting and handshake (b"" if the wire had to run it on the parser)
    encode: Callable[[list[bytes]], bytes]  # a message -> its bytes on the wire
    identity: bytes  # the routing identity the parser must find (b"": one it generates)


@dataclass(frozen=True)
class Wire:
    name: str
    fresh: Callable[[int], Inbound]  # max_message -> a parser that has read nothing yet
    stream: Callable[[int, bytes], Stream]  # (max_message, peer identity) -> Stream


def message_bytes(frames: list[bytes]) -> bytes:
    return b"".join(bytes(buffer) for buffer in encode(frames))


def null_ready(identity: bytes, socket_type: bytes = b"DEALER") -> bytes:
    return command(b"READY", properties(Socket_Type=socket_type, Identity=identity))


def null_stream(max_message: int, identity: bytes) -> Stream:
    return Stream(Inbound(max_message), GREETING + null_ready(identity), message_bytes, identity)


WIRES = [Wire("NULL", Inbound, null_stream)]


class Parsed(NamedTuple):
    messages: list[Message]
    replies: list[bytes]
    error: ZmtpError | None  # what ended the stream, if the parser refused it


class ChunkedSocket:
    """A non-blocking socket whose reads return the given chunks, none more than asked for,
    then the end of the stream."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = deque(chunks)

    def _take(self, size: int) -> bytes:
        if not self._chunks:
            return b""
        chunk = self._chunks.popleft()
        if len(chunk) > size:
            self._chunks.appendleft(chunk[size:])
        return chunk[:size]

    def recv(self, size: int) -> bytes:
        return self._take(size)

    def recv_into(self, buffer: memoryview) -> int:
        assert len(buffer) > 0, "an empty body buffer reads as the end of the stream"
        data = self._take(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(data)), len(data)]
    return [data[start:stop] for start, stop in zip(bounds, bounds[1:])]


@st.composite
def cuts_of(draw, size: int) -> list[int]:
    """Where a socket's reads cut a stream of ``size`` bytes: anywhere, or every n bytes."""
    if draw(st.booleans()):
        step = max(draw(st.sampled_from([1, 2, 3, 64, 4095, READ_CHUNK + 1])), size // MAX_READS)
        return list(range(step, size, step))
    return draw(st.lists(st.integers(1, max(1, size - 1)), max_size=40))


def parse(parser: Inbound, chunks: list[bytes], via_socket: bool) -> Parsed:
    """Hand ``chunks`` to ``parser`` as reads would, until the end or a protocol error."""
    messages: list[Message] = []
    replies: list[bytes] = []

    def collect() -> None:
        messages.extend(Message([bytes(f) for f in frames], size)
                        for frames, size in parser.messages)
        parser.messages.clear()
        replies.extend(parser.replies)
        parser.replies.clear()

    error = None
    try:
        if via_socket:
            sock = ChunkedSocket(chunks)
            while parser.read_from(sock, READ_CHUNK):
                collect()
        else:
            for chunk in chunks:
                parser.feed(chunk)
                collect()
    except ZmtpError as exc:
        error = exc
    collect()  # what the read that failed completed before the error
    return Parsed(messages, replies, error)


def check_bounded(message: Message, max_message: int) -> None:
    """A message within the limit is kept whole; of one over it only a head stays, the start
    of its first frame (or that frame whole, if the limit was crossed after it): never more
    than the limit or KEPT_HEAD, whatever size the peer announces."""
    kept = sum(map(len, message.frames))
    if message.size <= max_message:
        assert kept == message.size
    else:
        assert len(message.frames) == 1
        assert kept <= max(max_message, KEPT_HEAD)


def check_as_sent(got: Message, sent: list[bytes], max_message: int) -> None:
    size = sum(map(len, sent))
    assert got.size == size
    if size <= max_message:
        assert got.frames == sent
        return
    (head,) = got.frames
    first = sent[0]
    if len(first) <= max_message:  # the limit was crossed by a later frame
        assert head == first
    else:  # the start of the first frame: KEPT_HEAD bytes, fewer if a read ended first
        assert len(head) <= KEPT_HEAD and first.startswith(head)


# ------------------------------------------------------------------ strategies


@lru_cache(maxsize=64)
def filler(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


SIZES = (0, 1, 255, 256, LARGE_FRAME - 1, LARGE_FRAME, LARGE_FRAME + 1, 300_000)
frames = st.one_of(st.binary(max_size=300),
                   st.builds(filler, st.sampled_from(SIZES), st.integers(0, 3)))
messages = st.lists(frames, min_size=1, max_size=4)


class Ping(NamedTuple):
    context: bytes

    def wire(self) -> bytes:
        return command(b"PING", b"\x00\x0a" + self.context)


# Between messages a peer may send commands: a PING (answered), anything else (ignored).
traffic = st.lists(st.one_of(messages, st.builds(Ping, st.binary(max_size=16)),
                             st.builds(command, st.sampled_from([b"SUBSCRIBE", b"PONG", b"X"]),
                                       st.binary(max_size=20))),
                   max_size=8)
identities = st.binary(max_size=255)


def size_field(size: int) -> bytes:
    return size.to_bytes(8, "big")


COMMANDS = [b"READY", b"PING", b"PONG", b"ERROR", b"SUBSCRIBE", b"HELLO", b"INITIATE"]
# The pieces a hostile stream is made of: bytes a parser must refuse or take, anywhere.
tokens = st.one_of(
    st.binary(max_size=80),
    st.just(GREETING),
    st.builds(lambda at, byte: GREETING[:at] + bytes((byte,)) + GREETING[at + 1:],
              st.integers(0, 63), st.integers(0, 255)),
    st.builds(null_ready, st.binary(max_size=300),
              st.sampled_from([b"DEALER", b"ROUTER", b"REQ", b"PUB", b""])),
    st.builds(lambda metadata, cut: command(b"READY", metadata[:cut]),
              st.builds(properties, Socket_Type=st.sampled_from([b"DEALER", b"PUB"]),
                        Identity=st.binary(max_size=8)),
              st.integers(0, 40)),
    st.builds(command, st.one_of(st.binary(max_size=12), st.sampled_from(COMMANDS)),
              st.binary(max_size=40)),
    st.builds(lambda flags, size: bytes((flags, size)), st.integers(0, 255), st.integers(0, 255)),
    st.builds(lambda flags, size: bytes((flags | LONG,)) + size_field(size),
              st.sampled_from([0, MORE, COMMAND, MORE | COMMAND, 0x80]),
              st.one_of(st.integers(0, (1 << 64) - 1),
                        st.sampled_from([255, 256, LARGE_FRAME, 1 << 30, (1 << 64) - 1]))),
    st.builds(message_bytes, messages),
)
hostile = st.one_of(st.binary(max_size=2000), st.lists(tokens, max_size=12).map(b"".join))


# ------------------------------------------------------------------ properties


@pytest.mark.parametrize("wire", WIRES, ids=lambda w: w.name)
@settings(FUZZ, max_examples=1000)
@given(data=hostile, max_message=st.sampled_from(MAX_MESSAGES), via_socket=st.booleans(),
       pieces=st.data())
@example(data=GREETING + null_ready(b"") + b"\x02" + size_field(1 << 63), max_message=1000,
         via_socket=True, pieces=None).via("a frame announced larger than any buffer")
@example(data=GREETING + null_ready(b"x" * 256), max_message=1000, via_socket=False,
         pieces=None).via("an identity longer than ZeroMQ allows")
@example(data=GREETING + null_ready(b"a") + b"\x06" + size_field(1 << 17), max_message=1 << 30,
         via_socket=True, pieces=None).via("a command frame over the command size limit")
@example(data=GREETING[:10] + b"\x02" + GREETING[11:], max_message=1000, via_socket=False,
         pieces=None).via("a ZMTP 2 peer")
@example(data=GREETING + null_ready(b"") + b"\x02" + size_field(LARGE_FRAME) + b"x" * 100,
         max_message=1 << 30, via_socket=True, pieces=None).via("the end inside a large frame")
def test_any_bytes_give_messages_or_a_protocol_error(wire, data, max_message, via_socket,
                                                     pieces):
    cuts = pieces.draw(cuts_of(len(data))) if pieces is not None else []
    parser = wire.fresh(max_message)
    parsed = parse(parser, split(data, cuts), via_socket)  # no other exception escapes
    for message in parsed.messages:
        check_bounded(message, max_message)
    identity = parser.identity
    assert identity is None or 0 < len(identity) <= 255
    if parsed.messages:
        assert identity is not None  # nothing is taken from a peer before its handshake


def expected_replies(items: list) -> list[bytes]:
    return [command(b"PONG", item.context) for item in items if isinstance(item, Ping)]


def wire_bytes(stream: Stream, items: list) -> bytes:
    return stream.prefix + b"".join(
        stream.encode(item) if isinstance(item, list) else
        item.wire() if isinstance(item, Ping) else item
        for item in items)


def check_traffic(parsed: Parsed, stream: Stream, items: list, max_message: int) -> None:
    sent = [item for item in items if isinstance(item, list)]
    assert len(parsed.messages) >= len(sent)
    for got, message in zip(parsed.messages, sent):
        check_as_sent(got, message, max_message)
    assert parsed.replies[:len(expected_replies(items))] == expected_replies(items)
    identity = stream.parser.identity
    if stream.identity:
        assert identity == stream.identity
    else:  # generated, as libzmq's ROUTER does: a zero byte first, never a client's choice
        assert identity is not None and identity[0] == 0


@pytest.mark.parametrize("wire", WIRES, ids=lambda w: w.name)
@settings(FUZZ, max_examples=500)
@given(items=traffic, identity=identities, max_message=st.sampled_from(MAX_MESSAGES),
       via_socket=st.booleans(), pieces=st.data())
@example(items=[[filler(LARGE_FRAME, 0)], [b"after"]], identity=b"", max_message=1 << 30,
         via_socket=True, pieces=None).via("a large frame, then a small message")
@example(items=[[b"h", filler(300_000, 1), b"t"], [b"after"]], identity=b"i",
         max_message=1000, via_socket=True, pieces=None).via("the limit crossed by frame 2")
def test_a_valid_stream_gives_back_what_was_sent(wire, items, identity, max_message,
                                                 via_socket, pieces):
    stream = wire.stream(max_message, identity)
    data = wire_bytes(stream, items)
    cuts = pieces.draw(cuts_of(len(data))) if pieces is not None else []
    parsed = parse(stream.parser, split(data, cuts), via_socket)
    assert parsed.error is None
    assert len(parsed.messages) == sum(isinstance(item, list) for item in items)
    assert parsed.replies == expected_replies(items)
    check_traffic(parsed, stream, items, max_message)
    assert stream.parser.body_buffer() is None  # nothing half-read is left over


@pytest.mark.parametrize("wire", WIRES, ids=lambda w: w.name)
@settings(FUZZ, max_examples=500)
@given(items=traffic, identity=identities, garbage=hostile,
       max_message=st.sampled_from(MAX_MESSAGES), via_socket=st.booleans(), pieces=st.data())
@example(items=[[b"ok"]], identity=b"g", garbage=b"\x80\x00", max_message=1000,
         via_socket=False, pieces=None).via("reserved flags after a message")
@example(items=[], identity=b"g", garbage=b"\x03" + size_field(2000) + b"x" * 10,
         max_message=1000, via_socket=True, pieces=None).via("an oversized frame cut off")
def test_a_valid_prefix_then_garbage_keeps_what_came_before(wire, items, identity, garbage,
                                                            max_message, via_socket, pieces):
    stream = wire.stream(max_message, identity)
    data = wire_bytes(stream, items) + garbage
    cuts = pieces.draw(cuts_of(len(data))) if pieces is not None else []
    parsed = parse(stream.parser, split(data, cuts), via_socket)  # only ZmtpError may escape
    check_traffic(parsed, stream, items, max_message)
    for message in parsed.messages:
        check_bounded(message, max_message)


def test_large_frames_are_read_into_their_own_buffer_in_any_reads():
    """The server's path, step by step: ``read_from`` gives a large frame's body buffer to
    ``recv_into`` until it is full, whatever the kernel returns per read."""
    stream = null_stream(1 << 30, b"reader")
    big = filler(3 * LARGE_FRAME + 7, 2)
    data = stream.prefix + message_bytes([b"head", big]) + message_bytes([b"next"])
    sock = ChunkedSocket(split(data, list(range(1000, len(data), 1000))))
    buffers_seen = 0
    while stream.parser.read_from(sock, READ_CHUNK):
        buffers_seen += stream.parser.body_buffer() is not None
    assert buffers_seen > 100  # the 1000-byte reads went into the frame's buffer
    assert [([bytes(f) for f in frames], size) for frames, size in stream.parser.messages] == [
        ([b"head", big], 4 + len(big)), ([b"next"], 4)]


def test_an_oversized_head_does_not_depend_on_where_a_read_ends():
    """A read that ends right after the header of an oversized first frame: its head is kept
    from the reads that follow, so the broker can still tell the sender it was too large."""
    stream = null_stream(1000, b"cut")
    head = request_head(Op.STORE, 9, [b"ws", b"v"]) + b"z" * LARGE_FRAME  # not read again
    data = stream.prefix + message_bytes([head])
    header_end = len(stream.prefix) + 9
    parsed = parse(stream.parser, split(data, [header_end]), via_socket=True)
    assert parsed.messages == [Message([head[:KEPT_HEAD]], len(head))]


# ------------------------------------------------------------------ a real broker


class Hostile(NamedTuple):
    """One raw connection's bytes, and what the broker must make of them."""

    data: bytes
    refused: str | None  # the counter the broker's refusal moves; None: no refusal expected
    hold: bool  # stays open until the end of the test instead of closing at once


def hostile_connections(rng: random.Random, max_message: int) -> list[Hostile]:
    ready = GREETING + null_ready(b"")  # generated identities: many connections, no clash

    def announce(size: int, flags: int = 0) -> bytes:
        return ready + bytes((flags | LONG,)) + size_field(size) + rng.randbytes(10)

    made = []
    for _ in range(30):
        made += [
            Hostile(rng.randbytes(rng.randrange(1, 2000)), None, False),
            Hostile(GREETING[:rng.randrange(1, 64)], None, rng.random() < 0.5),
            Hostile(GREETING[:12] + b"PLAIN".ljust(20, b"\0") + GREETING[32:],
                    "handshake_failures", False),
            Hostile(GREETING + command(b"HELLO", rng.randbytes(20)), "handshake_failures", False),
            Hostile(GREETING + null_ready(b"", b"PUB"), "handshake_failures", False),
            Hostile(GREETING + null_ready(b"x")[:-3], None, True),  # READY never completes
            Hostile(ready + b"\x80\x01x", "malformed", False),
            Hostile(announce((1 << 64) - 1, COMMAND), "malformed", False),
            Hostile(announce(max_message - 1), None, True),  # a buffer is made, never filled
            Hostile(announce(rng.choice([max_message + 1, 1 << 63, (1 << 64) - 1])), None, True),
            Hostile(ready + message_bytes([request_head(Op.HEARTBEAT, 1)])
                    + rng.randbytes(rng.randrange(1, 500)), None, False),
        ]
    rng.shuffle(made)
    return made


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def attack(address: tuple[str, int], hostile: Hostile) -> socket.socket | None:
    """Send one hostile stream; wait for the broker to close a connection it must refuse.
    Returns the socket if it is to be held open."""
    sock = socket.create_connection(address, timeout=10)
    try:
        sock.sendall(hostile.data)
        if hostile.hold:
            return sock
        if hostile.refused:
            received = b""
            while chunk := sock.recv(4096):  # until the broker closes the connection
                received += chunk
            assert received.startswith(GREETING)  # a ZeroMQ peer is told, then closed
    except (ConnectionResetError, BrokenPipeError):
        pass  # refused before everything was sent
    sock.close()
    return None


@pytest.mark.timeout(120)
def test_a_broker_fed_garbage_keeps_serving_and_leaks_nothing(make_broker, monkeypatch):
    monkeypatch.setenv("WORKBENCH_SHM", "0")  # values through the socket, beside the garbage
    max_message = 2 << 20
    broker = make_broker("--max-message-size", "2M")
    pid = broker.process.pid
    base_fds = open_fds(pid)
    before = broker_status(broker)["counters"]
    wait_for(lambda: open_fds(pid) == base_fds, message="the status client's socket stayed")
    hostiles = hostile_connections(random.Random(20261213), max_message)
    done = threading.Event()
    checked: list[int] = []
    failures: list[BaseException] = []

    def work() -> None:  # a legitimate client, all along
        try:
            with NetWorkSpace("fuzzed", broker.host, broker.port) as ws, \
                    KeyValueStore(broker.host, broker.port) as kv:
                rng = random.Random(7)
                while not done.is_set() or len(checked) < 20:
                    value = rng.randbytes(rng.choice([0, 10, 300, LARGE_FRAME + 1, 1 << 20]))
                    ws.store("v", value)
                    assert ws.fetch("v", timeout=10) == value
                    kv.store(b"k", value)
                    assert kv.get(b"k").value == value
                    checked.append(len(value))
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            failures.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    held = []
    try:
        with ThreadPoolExecutor(8) as pool:
            held = [sock for sock in pool.map(
                lambda h: attack((broker.host, broker.port), h), hostiles) if sock is not None]
        assert broker.process.poll() is None
    finally:
        done.set()
        worker.join(60)
        for sock in held:
            sock.close()
    assert not failures, failures
    assert len(checked) >= 20
    after = broker_status(broker)["counters"]
    refusals = {name: sum(h.refused == name for h in hostiles)
                for name in ("handshake_failures", "malformed")}
    for name, least in refusals.items():
        assert after.get(name, 0) - before.get(name, 0) >= least, (name, after)
    assert after["internal_errors"] == 0
    wait_for(lambda: open_fds(pid) == base_fds, timeout=10,
             message="the broker kept descriptors of closed connections")
    assert "Traceback" not in broker.log()
