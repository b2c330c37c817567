"""The compiled parts (``workbench.accel``) against the Python paths they stand in for.

The client's fast lane (``workbench/_lane.c``): the same bytes on the wire, the same replies
taken, nothing lost when it stops short (a short send, bytes that are not its reply, an
interrupt). The broker's fast pass (``workbench/_broker_pass.c``): the same bytes back for any
stream of requests, however the reads cut it. The key-value service's fused set and get
(``workbench/_kv_pass.c``): the same replies, records and counts as the Python ones for any
sequence of requests. All: the same results with and without them, and an install without a C
compiler that works. The rest of the suite runs with them where they are
built (``make test``) and without them (``make test-lowest``, ``WORKBENCH_PURE_PYTHON=1``)."""

from __future__ import annotations

import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from workbench import NetWorkSpace, accel, codec
from workbench.broker.state import Limits
from workbench.client.connection import Channel
from workbench.client.dealer import Dealer
from workbench.protocol import FLAG_ACKS, HEADER, Op, pack_acks, request_head
from workbench.zmtp import (
    COMMAND, GREETING, HANDSHAKE, MORE, Inbound, command, encode, frame_header, properties,
)

from .state_driver import StateDriver
from .support import start_broker

ROOT = Path(__file__).resolve().parent.parent
ALL_PARTS = ["Lane", "serve_read", "PlainKV"]
_NOT_HERE = "not in use here (WORKBENCH_PURE_PYTHON=1, or built without a C compiler)"
needs_lane = pytest.mark.skipif(accel.Lane is None, reason="the fast lane is " + _NOT_HERE)
needs_pass = pytest.mark.skipif(accel.serve_read is None,
                                reason="the broker's fast pass is " + _NOT_HERE)
needs_fused_kv = pytest.mark.skipif(accel.PlainKV is None,
                                    reason="the fused key-value requests are " + _NOT_HERE)


def _compiler_here() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_path("include"), "Python.h")
    return shutil.which(compiler) is not None and headers.exists()


def test_the_lane_is_in_use_wherever_it_can_be():
    """A build with a C compiler has the lane, and nothing turns it off silently."""
    if accel.PURE_PYTHON:
        assert accel.compiled() == []
    elif _compiler_here():
        assert accel.compiled() == ALL_PARTS, "not all were built: `make setup` again"
    else:  # an install without a compiler: the Python path, and it says so
        assert accel.Lane is None and accel.compiled() == []


def _pair() -> tuple[socket.socket, socket.socket]:
    near, far = socket.socketpair()
    near.setblocking(False)
    far.settimeout(5)
    return near, far


def _drain(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    data = b""
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except BlockingIOError:
        pass
    return data


_args = st.lists(st.binary(max_size=300), max_size=5)
_last = st.none() | st.binary(max_size=70_000)


@needs_lane
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.integers(0, 255), flags=st.integers(0, 2**16 - 1),
       request_id=st.integers(0, 2**32 - 1), args=_args, last=_last)
def test_a_request_goes_out_as_the_python_path_frames_it(op, flags, request_id, args, last):
    parts = args if last is None else [*args, last]
    expected = b"".join(encode([request_head(op, request_id, parts, flags)]))
    for waits in (True, False):  # ``exchange`` (a request and its reply), ``post`` (a send)
        near, far = _pair()
        with near, far:
            lane = accel.Lane(near.fileno())
            if waits:
                answer, sent = lane.exchange(op, flags, request_id, args, last, 0.0), None
            else:
                answer, sent = lane.post(op, flags, request_id, args, last), True
            wire = _drain(far)
            if len(expected) > 1 << 16:  # too large for the lane: nothing went out
                assert answer is False and wire == b""
            else:
                assert answer is sent and wire == expected and lane.sent_id == request_id
            assert not lane.unparsed and not lane.unsent


def _head(request_id: int, body: bytes = b"") -> bytes:
    return HEADER.pack(1, 0, 0, request_id) + body


_frame = st.binary(max_size=400)
_message = st.lists(_frame, min_size=1, max_size=3)


@needs_lane
@settings(max_examples=200, deadline=None)
@given(request_id=st.integers(0, 2**32 - 1), reply_body=st.binary(max_size=600),
       others=st.lists(_message, max_size=3), before=st.booleans(), wrong_id=st.booleans())
def test_only_its_own_one_frame_reply_is_taken_and_anything_else_is_kept(
        request_id, reply_body, others, before, wrong_id):
    """What the lane reads is its reply's head when that is all that came; otherwise every
    byte is kept for the Python parser, which finds in it what it would find in the stream."""
    answering = (request_id + wrong_id) % 2**32
    reply = [_head(answering, reply_body)]
    messages = [*others, reply] if before else [reply, *others]
    stream = b"".join(b"".join(encode(message)) for message in messages)
    near, far = _pair()
    with near, far:
        lane = accel.Lane(near.fileno())
        far.sendall(stream)
        answer = lane.exchange(7, 0, request_id, [b"k"], None, 5.0)
        if not others and not wrong_id:
            assert answer == reply[0] and not lane.unparsed
            return
        assert answer is None
        assert bytes(lane.unparsed) == stream
        parser = Inbound(1 << 30)
        parser.feed(HANDSHAKE)
        parser.feed(bytes(lane.unparsed))
        assert [frames for frames, _ in parser.messages] == messages


@needs_lane
def test_a_lane_holding_unparsed_bytes_sends_nothing_until_they_are_taken():
    near, far = _pair()
    with near, far:
        lane = accel.Lane(near.fileno())
        far.sendall(b"".join(encode([_head(99)])))
        assert lane.exchange(1, 0, 1, [b"a"], None, 5.0) is None  # not its reply: kept
        assert lane.unparsed
        assert lane.exchange(1, 0, 2, [b"b"], None, 0.0) is False
        assert _drain(far) == b"".join(encode([request_head(1, 1, [b"a"])]))


class _SilentBroker:
    """A listening socket that completes ZeroMQ's handshake with one DEALER and then reads
    only when told: the kernel's buffers fill, and sends are cut short."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.peer: socket.socket | None = None

    def accept(self) -> None:
        self.listener.settimeout(5)
        self.peer, _ = self.listener.accept()
        self.peer.sendall(HANDSHAKE)

    def read_all(self, until: float) -> list[list]:
        """Read and parse until ``until`` seconds pass with nothing new."""
        parser = Inbound(1 << 30)
        self.peer.settimeout(until)
        try:
            while chunk := self.peer.recv(1 << 20):
                parser.feed(chunk)
        except socket.timeout:
            pass
        return [frames for frames, _ in parser.messages]

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
        self.listener.close()


@pytest.fixture
def silent():
    """A ``_SilentBroker`` and a ``Dealer`` connected to it, past the handshake."""
    broker = _SilentBroker()
    dealer = Dealer(f"tcp://127.0.0.1:{broker.port}", b"lane-test", 5)
    try:
        broker.accept()
        assert dealer.recv(0.3) is None  # reads the broker's handshake: the lane may go
        yield broker, dealer
    finally:
        dealer.close()
        broker.close()


@needs_lane
@pytest.mark.parametrize("waits", [True, False], ids=["exchange", "post"])
def test_a_request_cut_short_by_a_full_buffer_is_finished_before_the_next_one(silent, waits):
    broker, dealer = silent
    lane = dealer.fast_lane()
    assert lane is not None
    sent, value = [], b"v" * 50_000
    for request_id in range(1, 10_000):
        if waits:
            answer = lane.exchange(3, 0, request_id, [b"key"], value, 0.0)
        else:
            answer = lane.post(3, 0, request_id, [b"key"], value)
        if answer is False:  # the kernel took nothing: try again smaller
            value = value[: len(value) // 2]
            if not value:
                pytest.fail("the kernel never took part of a request")
            continue
        sent.append(request_id)
        if lane.unsent:
            break
    else:
        pytest.fail("the socket's buffers never filled")
    reader = threading.Thread(target=lambda: results.extend(broker.read_all(1.0)))
    results: list = []
    reader.start()
    assert dealer.send([b"after"]) is True  # finishes the cut request first
    reader.join(30)
    assert not lane.unsent
    heads = [HEADER.unpack_from(frames[0])[3] for frames in results[:-1]]
    assert heads == sent and results[-1] == [b"after"]


@needs_lane
def test_bytes_the_lane_kept_reach_the_python_path_before_newer_ones(silent):
    broker, dealer = silent
    lane = dealer.fast_lane()
    first, second = [_head(41, b"first")], [_head(42, b"second"), b"more"]
    broker.peer.sendall(b"".join(encode(first)))
    assert lane.exchange(1, 0, 40, [b"q"], None, 5.0) is None and lane.unparsed
    assert lane.exchange(1, 0, 43, [b"q"], None, 0.0) is False  # it must be parsed first
    broker.peer.sendall(b"".join(encode(second)))
    assert dealer.recv(5) == first
    assert dealer.recv(5) == second
    assert dealer.fast_lane() is lane


@needs_lane
def test_queued_acknowledgements_ride_on_the_lanes_request():
    """A leased reply's acknowledgement, queued on the channel, goes out with the next request
    the lane sends, framed as the Python path frames it (``Channel._head``)."""
    broker = _SilentBroker()
    channel = Channel(f"tcp://127.0.0.1:{broker.port}", b"session-lane-test", 1, 5)
    try:
        broker.accept()
        channel.acks.extend([7, 9])
        request_id = channel.send(Op.STORE, [b"ws", b"x"], [b"value"])
        assert channel.dealer.lane.sent_id == request_id  # (through the lane)
        assert not channel.acks
        (request,) = broker.read_all(0.5)
        assert request == [request_head(Op.STORE, request_id,
                                         [pack_acks([7, 9]), b"ws", b"x", b"value"], FLAG_ACKS)]
    finally:
        channel.close()
        broker.close()


@needs_lane
def test_a_requests_own_acknowledgements_ride_on_the_lane_too():
    """A store that acknowledges the tasks it answers (``acks``: both reach the broker or
    neither) goes through the lane with them first, then the queued ones."""
    broker = _SilentBroker()
    channel = Channel(f"tcp://127.0.0.1:{broker.port}", b"session-lane-test", 1, 5)
    try:
        broker.accept()
        channel.acks.append(11)
        request_id = channel.send(Op.STORE, [b"ws", b"result"], [b"value"], acks=(3,))
        assert channel.dealer.lane.sent_id == request_id  # (through the lane)
        assert not channel.acks
        (request,) = broker.read_all(0.5)
        assert request == [request_head(Op.STORE, request_id,
                                         [pack_acks([3, 11]), b"ws", b"result", b"value"],
                                         FLAG_ACKS)]
    finally:
        channel.close()
        broker.close()


@pytest.fixture(scope="module")
def silent_connection():
    """One ``_SilentBroker`` and ``Dealer`` for a whole hypothesis test: each example leaves
    the stream between two messages."""
    broker = _SilentBroker()
    dealer = Dealer(f"tcp://127.0.0.1:{broker.port}", b"lane-test", 5)
    try:
        broker.accept()
        assert dealer.recv(0.3) is None
        yield broker, dealer
    finally:
        dealer.close()
        broker.close()


_any_frame = st.one_of(st.binary(max_size=300),
                       st.integers(1_000, 200_000).map(lambda size: os.urandom(size)))


@needs_lane
@settings(max_examples=60, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(messages=st.lists(st.lists(_any_frame, min_size=1, max_size=4), min_size=1, max_size=6),
       pings=st.lists(st.integers(0, 5), max_size=3),
       cut_points=st.lists(st.floats(0, 1), max_size=5))
def test_the_client_receives_any_stream_as_the_python_parser_does(
        silent_connection, messages, pings, cut_points):
    """Messages of any frames, small and large, with commands between them, cut anywhere by
    the reads: the compiled lane and the parser it hands over to give the dealer the same
    messages, in order, as the parser alone finds in the stream."""
    broker, dealer = silent_connection
    pieces = [b"".join(encode(message)) for message in messages]
    for at in pings:  # a ZMTP heartbeat the broker sends: no message
        pieces.insert(min(at, len(pieces)), command(b"PING", b"\x00\x0aping"))
    stream = b"".join(pieces)
    start = 0
    for cut in [*sorted({int(point * len(stream)) for point in cut_points}), len(stream)]:
        broker.peer.sendall(stream[start:cut])
        start = cut
    received = []
    while len(received) < len(messages):
        message = dealer.recv(5)
        assert message is not None, "a message never came"
        received.append([bytes(frame) for frame in message])
    assert received == messages
    # back between messages once the rest of the stream (a command after the last message,
    # maybe still on its way) is read
    deadline = time.monotonic() + 5
    while dealer.fast_lane() is None and time.monotonic() < deadline:
        assert dealer.recv(0.05) is None, "a message that was not sent"
    assert dealer.fast_lane() is not None


@needs_lane
def test_ctrl_c_in_the_lanes_wait_withdraws_the_fetch_and_loses_nothing(
        broker, ws_name, monkeypatch):
    lanes = []
    make_lane = accel.Lane
    monkeypatch.setattr(accel, "Lane", lambda fd: lanes.append(make_lane(fd)) or lanes[-1])
    with NetWorkSpace(ws_name, broker.host, broker.port) as ws:
        ws.store("warm", 1)
        assert ws.fetch("warm") == 1
        ws.store("other", 2)  # (carries the fetch's acknowledgement)
        sent_before = [lane.sent_id for lane in lanes]
        timer = threading.Timer(0.05, signal.pthread_kill,
                                (threading.main_thread().ident, signal.SIGINT))
        started = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            ws.fetch("x", timeout=10)  # waits in the lane's first slice when the signal comes
        assert time.monotonic() - started < 0.25
        assert [lane.sent_id for lane in lanes[:len(sent_before)]] != sent_before
        ws.store("x", "kept")
        # the interrupted fetch was withdrawn: the value waits for the next one
        assert ws.fetch("x", timeout=5) == "kept"


_SCENARIO = textwrap.dedent("""
    import sys
    from workbench import NetWorkSpace, accel
    from workbench.client.keyvalue import KeyValueStore
    import workbench.memcache as memcache
    host, port = sys.argv[1], int(sys.argv[2])
    seen = [accel.compiled()]
    kv = KeyValueStore(host, port, workspace="same-results-kv-" + sys.argv[3])
    for key, value in [("a", b"x" * 100), ("b", "text"), ("c", 12), ("d", [1, {2: 3}]),
                       ("e", b"y" * 70_000)]:
        seen.append(kv.store(key, value)[0])
        entry = kv.get(key)
        seen.append((entry.value, entry.version > 0))
    seen += [kv.get("absent"), kv.incr("c", 5), kv.delete("a"), kv.get("a")]
    mc = memcache.Client([f"{host}:{port}"])
    seen += [mc.set("m", "v"), mc.get("m"), mc.add("m", "w"), mc.get("m"), mc.incr("n")]
    ws = NetWorkSpace("same-results-" + sys.argv[3], host, port)
    ws.store("v", 1)
    ws.store("v", 2)
    seen += [ws.fetch("v"), ws.find("v"), ws.fetchTry("none", "default")]
    try:
        ws.fetch("none", timeout=0.3)
    except Exception as exc:
        seen.append(type(exc).__name__)
    kv.flush()
    print(repr(seen[1:]))
    print(repr(seen[0]))
""")


@pytest.fixture(scope="module")
def twin_brokers(tmp_path_factory):
    """Two brokers alike but for the fast pass: (Python path, compiled), the first started with
    ``WORKBENCH_PURE_PYTHON=1``. Small messages only: over 128 KiB is refused."""
    tmp_path = tmp_path_factory.mktemp("twins")
    brokers = []
    saved = os.environ.get("WORKBENCH_PURE_PYTHON")
    try:
        for pure in ("1", "0"):
            os.environ["WORKBENCH_PURE_PYTHON"] = pure
            brokers.append(start_broker(tmp_path, "--max-message-size", "128K"))
    finally:
        if saved is None:
            os.environ.pop("WORKBENCH_PURE_PYTHON", None)
        else:
            os.environ["WORKBENCH_PURE_PYTHON"] = saved
    yield brokers
    for broker in brokers:
        broker.stop()


@needs_lane
@needs_pass
def test_the_compiled_parts_and_the_python_path_give_the_same_results(twin_brokers, tmp_path):
    """The same calls, Python client and broker against compiled client and broker."""
    script = tmp_path / "scenario.py"
    script.write_text(_SCENARIO)
    outputs = []
    for pure, broker in zip(("1", "0"), twin_brokers):
        env = {**os.environ, "WORKBENCH_PURE_PYTHON": pure}
        done = subprocess.run([sys.executable, str(script), broker.host, str(broker.port),
                               "run"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.splitlines())
    (pure_results, pure_parts), (compiled_results, compiled_parts) = outputs
    assert pure_parts == "[]" and compiled_parts == repr(ALL_PARTS)
    assert pure_results == compiled_results


# ------------------------------------------------------------------ the broker's fast pass


def _kv_request(step: tuple, request_id: int, ws: bytes) -> list[bytes]:
    """One request of a generated stream, as a message's frames."""
    kind, key = step[0], b"k%d" % step[1]
    if kind == "set":
        value = codec.encode(b"v" * step[2])
        head = request_head(Op.KV_STORE, request_id, [ws, key, b"set", b"0", b"0", value[0]])
        return [head, *value[1:]]
    if kind == "set-frames":  # a value in two frames: never the fast pass's
        value = codec.encode(b"w" * step[2])
        return [request_head(Op.KV_STORE, request_id,
                             [ws, key, b"set", b"0", b"0", value[0]]), b"extra"]
    if kind == "get":
        return [request_head(Op.KV_GET, request_id, [ws, key])]
    if kind == "incr":
        return [request_head(Op.KV_INCR, request_id, [ws, key, b"incr", b"3"])]
    if kind == "delete":
        return [request_head(Op.KV_DELETE, request_id, [ws, key])]
    if kind == "garbage":  # a head the state refuses, answered with an error
        return [b"\x01\xfe" + bytes(step[2] % 40)]
    raise AssertionError(kind)


_step = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 4), st.sampled_from([0, 10, 200, 300, 70_000,
                                                                 140_000])),
    st.tuples(st.just("set-frames"), st.integers(0, 4), st.integers(0, 100)),
    st.tuples(st.sampled_from(["get", "incr", "delete"]), st.integers(0, 4)),
    st.tuples(st.just("garbage"), st.integers(0, 4), st.integers(0, 200)),
    st.tuples(st.just("ping"), st.integers(0, 4)),
)
_SENTINEL = 0xFFFFFFFF


def _replies_to(broker, identity: bytes, stream: bytes, cuts: list[int]) -> bytes:
    """Everything ``broker`` sends back for ``stream``, sent cut at ``cuts`` (each piece its
    own write, so the broker reads them apart), up to the reply to the sentinel request."""
    with socket.create_connection((broker.host, broker.port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ready = command(b"READY", properties(Socket_Type=b"DEALER", Identity=identity))
        raw.sendall(GREETING + ready)
        start = 0
        for cut in [*sorted(set(cuts)), len(stream)]:
            if cut > start:
                raw.sendall(stream[start:cut])
                time.sleep(0.002)
            start = cut
        parser, received = Inbound(1 << 30), b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = raw.recv(1 << 20)
            assert chunk, "the broker closed the connection"
            received += chunk
            parser.feed(chunk)
            if any(frames[0][4:8] == _SENTINEL.to_bytes(4, "little")
                   for frames, _ in parser.messages):
                return received
        raise AssertionError("no reply to the sentinel request")


@needs_pass
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_step, min_size=1, max_size=12), cut_points=st.lists(st.floats(0, 1),
                                                                          max_size=6))
def test_the_broker_answers_any_stream_as_the_python_path_does(twin_brokers, steps, cut_points):
    """Pipelined requests, small and large, one frame and several, commands and garbage, cut
    anywhere by the reads: the compiled pass answers with the same bytes, in the same order."""
    ws = b"pass-%s" % os.urandom(4).hex().encode()
    messages, pings = [], []
    for number, step in enumerate(steps, 1):
        if step[0] == "ping":  # a ZMTP 3.1 heartbeat: answered with a PONG, in order
            pings.append(number)
            messages.append(command(b"PING", b"\x00\x0a" + b"ctx%d" % number))
        else:
            messages.append(b"".join(encode(_kv_request(step, number, ws))))
    sentinel = b"".join(encode([request_head(Op.KV_GET, _SENTINEL, [ws, b"k0"])]))
    stream = b"".join(messages) + sentinel
    cuts = [int(point * len(stream)) for point in cut_points]
    identity = b"twin-%s" % os.urandom(4).hex().encode()
    python_path, fast_pass = (_split(_replies_to(broker, identity, stream, cuts))
                              for broker in twin_brokers)
    assert fast_pass.messages == python_path.messages
    # (a PONG goes out as its PING is read, ahead of the replies to requests of the same read:
    # where the reads cut the stream decides its place, on either path)
    assert sorted(fast_pass.commands) == sorted(python_path.commands)
    assert len(python_path.commands) == len(pings)


# ------------------------------------------------------------------ the fused key-value requests

_KEYS = ["k0", "k1"]
_kv_set = st.tuples(st.just("set"), st.sampled_from(_KEYS), st.sampled_from([0, 3, 100, 900]),
                    st.sampled_from([b"0", b"0.0", b"5", b"x"]),
                    st.sampled_from([b"set", b"set", b"add", b"replace"]), st.booleans())
_kv_step = st.one_of(
    # sets twice as often: plain values of any size, a value with flags, the other ways to
    # store, times to live the fused set takes and those it leaves (a deadline, a bad number)
    _kv_set, _kv_set,
    st.tuples(st.just("get"), st.sampled_from([*_KEYS, "\x01bad"]), st.booleans()),
    st.tuples(st.sampled_from(["delete", "fetch", "fifo", "watch"]), st.sampled_from(_KEYS)),
    st.tuples(st.just("touch"), st.sampled_from(_KEYS), st.sampled_from([b"0", b"2"])),
    st.tuples(st.just("wait"), st.sampled_from([1.0, 3.0])),
)


def _drive(driver: StateDriver, steps: list) -> list:
    """Run ``steps`` on a fresh state -> everything it answered, recorded and counted."""
    peer, other = driver.client("kv"), driver.connect()
    seen: list = []
    for step in steps:
        kind, key = step[0], step[1] if isinstance(step[1], str) else ""
        ws_key = [b"kv", key.encode()]
        if kind == "set":
            size, ttl, how, flagged = step[2:]
            value = codec.encode(b"v" * size)[0]
            if flagged:  # a compressed value's descriptor: never the fused set's
                value = value[:1] + b"\x01" + value[2:]
            driver.send(peer, Op.KV_STORE, [*ws_key, how, ttl, b"0", value])
        elif kind == "get":
            driver.send(peer, Op.KV_GET, ws_key if step[2] else [b"elsewhere", ws_key[1]])
        elif kind == "delete":
            driver.send(peer, Op.KV_DELETE, ws_key)
        elif kind == "fetch":  # a blocked fetch: the entry has a waiter
            driver.fetch(other, "kv", key)
        elif kind == "fifo":  # the name becomes a queue's
            driver.send(peer, Op.KV_DELETE, ws_key)
            driver.declare(other, "kv", key, "fifo")
        elif kind == "watch":  # somebody watches the workspace
            driver.send(other, Op.WATCH, [b"9", b"kv"])
        elif kind == "touch":
            driver.send(peer, Op.KV_TOUCH, [*ws_key, step[2]])
        else:  # time passes for the entries, not for the sessions (they beat)
            driver.advance(step[1])
            driver.heartbeat(peer)
            driver.heartbeat(other)
            driver.expire()
        seen.append([(r.peer, r.status, r.request_id, r.body, r.extra)
                     for r in driver.take_all()])
    return [seen, driver.new_changes(), driver.status(peer)["counters"]]


@needs_fused_kv
@settings(max_examples=200, deadline=None)
@given(steps=st.lists(_kv_step, min_size=8, max_size=30), memory=st.sampled_from([600, 1 << 20]))
def test_the_fused_key_value_requests_do_what_the_python_ones_do(steps, memory):
    """Sets and gets among deletes, waiters, queues, watchers, deadlines, a full memory and
    bad names: the compiled set and get answer, record and count as the Python ones."""
    compiled = _drive(StateDriver(Limits(max_memory=memory)), steps)
    with pytest.MonkeyPatch.context() as python_only:
        python_only.setattr(accel, "PlainKV", None)
        python = _drive(StateDriver(Limits(max_memory=memory)), steps)
    assert compiled == python


class _Replies(NamedTuple):
    messages: list[list[bytes]]
    commands: list[bytes]


def _split(stream: bytes) -> _Replies:
    """A broker's bytes after its handshake -> its messages, in order, and its commands."""
    replies = _Replies([], [])
    pos, frames = len(HANDSHAKE), []
    while pos < len(stream):
        flags, size, start = frame_header(stream, pos, len(stream))
        body, pos = stream[start:start + size], start + size
        if flags & COMMAND:
            replies.commands.append(body)
            continue
        frames.append(body)
        if not flags & MORE:
            replies.messages.append(frames)
            frames = []
    return replies


def test_the_package_builds_and_works_without_a_c_compiler(tmp_path):
    """pip makes a wheel without the extension where no compiler runs, and that install takes
    the Python path."""
    source = tmp_path / "source"  # the tree as a clone has it: no extension built in place
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", "*.so", ".hypothesis"))
    env = {**os.environ, "CC": str(tmp_path / "no-such-compiler"), "PIP_NO_INPUT": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheels"), str(source)],
        env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "wheels").glob("workbench-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "installed")
    assert "workbench/accel.py" in names
    assert not [name for name in names if name.endswith((".so", ".pyd"))]
    probe = ("from workbench import accel, NetWorkSpace; "
             "ws = NetWorkSpace('probe'); ws.store('x', 41); "
             "print(accel.compiled(), ws.fetch('x') + 1)")
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith("WORKBENCH_")}
    # -S: no site module, so no editable install of this tree is on the path (its finder would
    # lend the installed package the extension built here); the dependencies come after.
    path = os.pathsep.join([str(tmp_path / "installed"), *site.getsitepackages()])
    ran = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env={**clean, "PYTHONPATH": path})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["[]", "42"]
