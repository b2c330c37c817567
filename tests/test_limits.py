"""The broker's caps for an open port: per session, calls waiting, subscriptions and watches (in
the pure state, then through a real client); per source address, TCP connections (against a
real broker). Each refusal names its cap and the flag that raises it, changes nothing (the
replay check of every state test sees to that) and moves a counter."""

from __future__ import annotations

import glob
import json
import os
import socket
import tempfile
import threading

import pytest
import zmq

from workbench import (
    DICT, V_FETCHERS, NetWorkSpace, NwsConnectException, NwsLimitException, NwsServer,
)
from workbench.broker.state import Limits
from workbench.cli import build_parser
from workbench.client.connection import Connection
from workbench.protocol import HEADER, HEADER_SIZE, Op, Status, request_head
from workbench.zmtp import GREETING, HANDSHAKE

from .state_driver import StateDriver
from .support import wait_for

WS = "demo"
CHANNEL = b"9"  # the delivery socket of the sessions below


def capped(**caps: int) -> StateDriver:
    return StateDriver(Limits(**caps))


def refused(reply, flag: str, value: int) -> None:
    assert reply.status == Status.TOO_MANY, reply
    assert f"({flag} {value})" in reply.text and f"a larger {flag}" in reply.text


# ---------------------------------------------------------------- calls waiting


def fetch_many(d: StateDriver, peer: bytes, var: str) -> int:
    return d.send(peer, Op.FETCH_MANY, [WS.encode(), var.encode(), b"10", b"1"])


def test_calls_waiting_beyond_the_cap_are_refused_before_they_make_anything() -> None:
    d = capped(max_waiting=2)
    a = d.client(WS)
    d.fetch(a, WS, "x")
    d.find(a, WS, "y")
    assert d.take_all() == []  # both wait
    d.new_changes()
    for request_id in (d.fetch(a, WS, "z"), d.ifind(a, WS, "z"), fetch_many(d, a, "z")):
        refused(d.reply(a, request_id), "--max-waiting", 2)
    assert "z" not in d.var_counts(a, WS)  # no variable made for a call that may not wait
    assert d.new_changes() == []
    assert d.status(a)["counters"]["over_max_waiting"] == 3
    # Calls that need not wait still work at the cap...
    d.store(a, WS, "v", 1)
    assert d.call(a, Op.FETCH, [WS.encode(), b"v"]).value == 1
    assert d.fetch_try(a, WS, "z").status == Status.MISSING
    # ...and another session's calls wait as before.
    b = d.client(WS)
    other = d.fetch(b, WS, "z")
    assert d.take_all() == []
    d.store(b, WS, "z", "for b")
    assert d.reply(b, other).value == "for b"


def test_the_waiting_cap_frees_as_calls_are_answered_or_cancelled() -> None:
    d = capped(max_waiting=1)
    a = d.client(WS)
    first = d.fetch(a, WS, "x")
    refused(d.reply(a, d.fetch(a, WS, "y")), "--max-waiting", 1)
    d.store(a, WS, "x", 1)
    assert d.reply(a, first).value == 1
    second = fetch_many(d, a, "y")  # answered: a may wait again
    assert d.reply(a, second) is None
    d.cancel(a, second)
    assert d.reply(a, second) is None  # a cancelled call gets no answer of its own
    third = d.find(a, WS, "y")  # cancelled: a may wait again
    assert d.reply(a, third) is None


# ---------------------------------------------------------------- subscriptions


def subscribe(d: StateDriver, peer: bytes, pattern: str):
    return d.call(peer, Op.MQ_SUBSCRIBE, [CHANNEL, pattern.encode()])


def test_subscriptions_beyond_the_cap_are_refused_and_route_nothing() -> None:
    d = capped(max_subscriptions=2)
    a, b, publisher = d.connect(), d.connect(), d.connect()
    assert subscribe(d, a, "news:a").ok and subscribe(d, a, "news:b").ok
    assert subscribe(d, a, "news:a").ok  # a pattern it follows already costs nothing
    refused(subscribe(d, a, "news:c"), "--max-subscriptions", 2)
    assert d.status(a)["counters"]["over_max_subscriptions"] == 1
    assert subscribe(d, b, "news:c").ok and subscribe(d, b, "news:d").ok  # b has caps of its own
    inbox = d.other_channel(a, int(CHANNEL))
    assert d.call(publisher, Op.MQ_PUBLISH, [b"news:c", b"1", b"\0\0\0\0"]).text == "1"
    assert d.replies_for(inbox) == []  # b got it, a did not
    # Unsubscribing a pattern (as often as it was subscribed) frees its place.
    for _ in range(2):
        assert d.call(a, Op.MQ_UNSUBSCRIBE, [CHANNEL, b"news:a"]).ok
    assert subscribe(d, a, "news:c").ok
    refused(subscribe(d, a, "news:e"), "--max-subscriptions", 2)


def test_a_refused_subscription_makes_no_delivery_socket() -> None:
    d = capped(max_subscriptions=1)
    a = d.connect()
    assert subscribe(d, a, "news:a").ok
    refused(d.call(a, Op.MQ_SUBSCRIBE, [b"10", b"news:b"]), "--max-subscriptions", 1)
    assert [s["patterns"] for s in d.status(a)["subscribers"]] == [["news:a"]]
    assert [c["subscriptions"] for c in d.status(a)["clients"]] == [1]


# ---------------------------------------------------------------- watches


def watch(d: StateDriver, peer: bytes, name: str):
    return d.call(peer, Op.WATCH, [CHANNEL, name.encode()])


def test_watches_beyond_the_cap_are_refused_and_free_when_unwatched() -> None:
    d = capped(max_watches=2)
    a, b = d.connect(), d.connect()
    assert watch(d, a, "one").ok and watch(d, a, "*").ok
    assert watch(d, a, "one").ok  # watched already
    refused(watch(d, a, "two"), "--max-watches", 2)
    assert d.status(a)["counters"]["over_max_watches"] == 1
    assert watch(d, b, "two").ok
    d.use_ws(b, "two")
    d.store(b, "two", "x", 1)
    inbox = d.other_channel(a, int(CHANNEL))
    [batch] = [json.loads(r.body[1:]) for r in d.replies_for(inbox)]  # through "*" only
    assert {e["ws"] for e in batch} == {"two"}
    assert d.call(a, Op.UNWATCH, [CHANNEL, b"one"]).ok
    assert watch(d, a, "two").ok
    assert [c["watches"] for c in d.status(a)["clients"] if c["watches"]] == [2, 1]


def test_status_shows_the_caps() -> None:
    d = capped(max_waiting=5, max_subscriptions=6, max_watches=7, max_connections_per_host=8)
    info = d.status(d.connect())
    assert [info[k] for k in ("max_waiting", "max_subscriptions", "max_watches",
                              "max_connections_per_host")] == [5, 6, 7, 8]


def test_the_caps_are_broker_flags_of_at_least_one() -> None:
    args = build_parser().parse_args(["broker", "--max-waiting", "3", "--max-subscriptions",
                                      "4", "--max-watches", "5",
                                      "--max-connections-per-host", "6"])
    assert (args.max_waiting, args.max_subscriptions, args.max_watches,
            args.max_connections_per_host) == (3, 4, 5, 6)
    for bad in ("0", "-1", "many"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["broker", "--max-watches", bad])


# ---------------------------------------------------------------- through a real client


def test_a_client_beyond_its_waiting_cap_gets_a_limit_error(make_broker, ws_name) -> None:
    broker = make_broker("--max-waiting", "1")
    ws = NetWorkSpace(ws_name, broker.host, broker.port)
    try:
        got = []
        waiter = threading.Thread(target=lambda: got.append(ws.fetch("x", timeout=30)))
        waiter.start()
        wait_for(lambda: ws.listVars(format=DICT).get("x", (0,) * 5)[V_FETCHERS] == 1,
                 timeout=10)  # the thread's fetch waits
        with pytest.raises(NwsLimitException, match="--max-waiting 1"):
            ws.find("y", timeout=5)
        ws.store("x", 42)
        waiter.join(10)
        assert got == [42]
        ws.store("y", 7)
        assert ws.find("y", timeout=5) == 7  # the session is below its cap again
        assert ws.server.status()["counters"]["over_max_waiting"] == 1
    finally:
        ws.close()


def test_a_client_beyond_its_watch_cap_gets_a_limit_error(make_broker, ws_name) -> None:
    broker = make_broker("--max-watches", "1")
    ws = NetWorkSpace(ws_name, broker.host, broker.port)
    try:
        first = ws.watch()
        with pytest.raises(NwsLimitException, match="--max-watches 1"):
            ws.server.watch()
        first.close()
        with ws.server.watch() as every:  # the place is free again
            ws.store("x", 1)
            assert any(e["ws"] == ws_name for e in every.next_batch(timeout=10))
    finally:
        ws.close()


# ---------------------------------------------------------------- connections per address


def _accepted(sock: socket.socket) -> bool:
    """Whether the broker served this connection (its greeting and READY) rather than
    refusing it (its greeting and an ERROR, then the end of the stream)."""
    received = b""
    while len(received) < len(HANDSHAKE):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received == HANDSHAKE


def _refusal(sock: socket.socket) -> bytes:
    """Everything the broker sent before it closed the connection."""
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def _status_through(dealer: zmq.Socket, request_id: int) -> dict:
    dealer.send(request_head(Op.STATUS, request_id))
    assert dealer.poll(5000), "the broker did not answer a connected client"
    head = dealer.recv()
    assert HEADER.unpack_from(head)[1:] == (Status.OK, 0, request_id)
    return json.loads(head[HEADER_SIZE:])


def _round_trip(ws: NetWorkSpace) -> None:
    ws.store("x", 1)
    assert ws.fetch("x", timeout=5) == 1


def test_connections_beyond_the_cap_from_one_address_are_refused(make_broker, ws_name) -> None:
    broker = make_broker("--max-connections-per-host", "3")
    dealer = zmq.Context.instance().socket(zmq.DEALER)  # a client connected before the cap
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(broker.address)
    raw: list[socket.socket] = []
    try:
        assert _status_through(dealer, 1)["max_connections_per_host"] == 3
        for _ in range(2):
            raw.append(socket.create_connection((broker.host, broker.port), timeout=5))
            assert _accepted(raw[-1])
        # The fourth connection from 127.0.0.1 is told why in ZeroMQ's ERROR, and closed.
        with socket.create_connection((broker.host, broker.port), timeout=5) as fourth:
            received = _refusal(fourth)
        assert received.startswith(GREETING)
        assert b"\x05ERROR" in received
        assert b"too many connections from 127.0.0.1" in received
        assert b"(--max-connections-per-host)" in received
        with pytest.raises(NwsConnectException) as turned_away:
            NwsServer(broker.host, broker.port)
        assert "too many connections from 127.0.0.1" in str(turned_away.value)
        # The connections already in are served as before, and the refusals were counted.
        assert _status_through(dealer, 2)["counters"]["over_max_connections_per_host"] == 2
        assert broker.log().count("refusing new connections from 127.0.0.1") == 1  # not a flood
        # The private Unix socket is exempt: a client there gets in while TCP is full.
        [path] = glob.glob(os.path.join(tempfile.gettempdir(), f"workbench-{os.getuid()}",
                                        f"broker-{broker.port}-*.sock"))
        with NwsServer(connection=Connection(f"ipc://{path}", 5.0)) as local:
            _round_trip(local.openWs(ws_name))
        # Once connections close, new ones get in.
        for sock in raw:
            sock.close()

        def connects() -> NwsServer | None:
            try:
                return NwsServer(broker.host, broker.port)
            except NwsConnectException:
                return None

        with wait_for(connects, timeout=10) as server:
            _round_trip(server.openWs(ws_name))
    finally:
        dealer.close()
        for sock in raw:
            sock.close()


def test_a_store_many_over_the_memory_cap_is_refused_whole(tmp_path):
    """A batch is checked as a whole: eight values that each fit but together do not are all
    refused, and none is kept (each used to be checked alone, and the batch went past the
    cap)."""
    from workbench import NetWorkSpace, NwsMemoryException

    from .support import start_broker

    broker = start_broker(tmp_path, "--max-memory", "64K")
    try:
        with NetWorkSpace("batch", broker.target) as ws:
            with pytest.raises(NwsMemoryException):
                ws.store_many("v", [bytes([i]) * (20 << 10) for i in range(8)])
            assert ws.listVars(format="dict").get("v", ("v", 0))[1] == 0
            assert ws.store_many("v", [b"x" * (20 << 10)] * 2) == 2  # what fits still does
    finally:
        broker.stop()
