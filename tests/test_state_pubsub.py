"""Unit tests of publish/subscribe in the broker state (``broker/state/pubsub.py``): routing by
berryMQ identifiers, no echo to the sender, flow control with a bounded drop-oldest backlog,
shared queues with leases, and coalesced workspace events."""

from __future__ import annotations

import json
import random

import pytest

from .state_driver import StateDriver
from workbench import codec
from workbench.broker.state import Limits
from workbench.broker.state.deliveries import FlowLimits
from workbench.protocol import Op, Status

CHANNEL = 9


def make(window: int = 1000, backlog: int = 10_000, backlog_bytes: int = 64 << 20):
    return StateDriver(Limits(flow=FlowLimits(window, backlog, backlog_bytes)),
                       rng=random.Random(0))


@pytest.fixture
def driver() -> StateDriver:
    return make()


def subscribe(d: StateDriver, peer: bytes, *patterns: str) -> bytes:
    """Subscribe ``peer``'s session; returns its delivery socket's identity."""
    for pattern in patterns:
        assert d.call(peer, Op.MQ_SUBSCRIBE, [b"%d" % CHANNEL, pattern.encode()]).ok
    return d.other_channel(peer, CHANNEL)


def publish(d: StateDriver, peer: bytes, identifier: str, value, reply: bool = False):
    args = [identifier.encode(), b"1" if reply else b"0", codec.encode(value)[0]]
    if reply:
        return d.call(peer, Op.MQ_PUBLISH, args)
    d.send(peer, Op.MQ_PUBLISH, args)
    return None


def messages(d: StateDriver, inbox: bytes) -> list[tuple[str, object]]:
    out = []
    for reply in d.replies_for(inbox):
        assert reply.status == Status.DELIVERY and reply.body[0] == 1
        identifier, _, first = reply.body[1:].partition(b"\0")
        out.append((identifier.decode(), codec.decode([first, *reply.extra])))
    return out


def credit(d: StateDriver, peer: bytes, consumed: int, batches: int = 0) -> None:
    d.send(peer, Op.MQ_CREDIT, [b"%d" % CHANNEL, b"%d" % consumed, b"%d" % batches])


# ---------------------------------------------------------------- routing


def test_a_message_reaches_other_sessions_once_and_never_its_sender(driver) -> None:
    sender, other = driver.connect(), driver.connect()
    sender_inbox = subscribe(driver, sender, "job:*")
    other_inbox = subscribe(driver, other, "job:*", "*:run", "job:run")  # three matches, once
    assert publish(driver, sender, "job:run", {"n": 1}, reply=True).body == b"1"
    assert messages(driver, other_inbox) == [("job:run", {"n": 1})]
    assert messages(driver, sender_inbox) == []


@pytest.mark.parametrize("pattern, sent, reached", [
    ("x:a", "x:a", True), ("x:a", "x:b", False), ("x:*", "x:b", True), ("*:a", "y:a", True),
    ("*:*", "z:q", True), ("x:a", "*:a", True), ("x:a", "x", True), ("x:a", "*", True),
    ("x:a", "y", False), ("x@ns:a", "x:a", False), ("x@ns:a", "x@ns:a", True),
    ("x:a", "x@ns:a", False), ("*@ns:*", "q@ns:r", True), ("test*:a", "tests:a", False),
])
def test_berrymq_matching_on_either_side(driver, pattern, sent, reached) -> None:
    sender, other = driver.connect(), driver.connect()
    inbox = subscribe(driver, other, pattern)
    publish(driver, sender, sent, 1)
    assert bool(messages(driver, inbox)) is reached


def test_unsubscribe_counts_subscriptions(driver) -> None:
    sender, other = driver.connect(), driver.connect()
    inbox = subscribe(driver, other, "x:*", "x:*")
    driver.call(other, Op.MQ_UNSUBSCRIBE, [b"%d" % CHANNEL, b"x:*"])
    publish(driver, sender, "x:a", 1)
    assert len(messages(driver, inbox)) == 1
    driver.call(other, Op.MQ_UNSUBSCRIBE, [b"%d" % CHANNEL, b"x:*"])
    publish(driver, sender, "x:a", 2)
    assert messages(driver, inbox) == []


@pytest.mark.parametrize("identifier", ["", "x@:a", "x@*:a", ":a", "x:", "a\tb"])
def test_bad_identifiers(driver, identifier) -> None:
    peer = driver.connect()
    reply = driver.call(peer, Op.MQ_SUBSCRIBE, [b"1", identifier.encode()])
    assert reply.status == Status.BAD_REQUEST
    assert publish(driver, peer, identifier, 1, reply=True).status == Status.BAD_REQUEST
    publish(driver, peer, identifier, 1)  # unanswered: counted, never a stray error reply
    assert driver.replies_for(peer) == []
    assert driver.state.counters["publish_errors"] == 1


# ---------------------------------------------------------------- flow control


def test_beyond_the_window_messages_wait_and_credit_releases_them_in_order() -> None:
    d = make(window=3)
    sender, slow = d.connect(), d.connect()
    inbox = subscribe(d, slow, "x:*")
    for i in range(5):
        publish(d, sender, "x:a", i)
    assert [v for _, v in messages(d, inbox)] == [0, 1, 2]
    credit(d, slow, 2)
    assert [v for _, v in messages(d, inbox)] == [3, 4]


def test_a_slow_subscriber_loses_the_oldest_beyond_its_backlog_and_is_told() -> None:
    d = make(window=2, backlog=3)
    sender, slow, fast = d.connect(), d.connect(), d.connect()
    slow_inbox = subscribe(d, slow, "x:*")
    fast_inbox = subscribe(d, fast, "x:*")
    for i in range(10):
        publish(d, sender, "x:a", i)
        credit(d, fast, 1)
    assert [v for _, v in messages(d, fast_inbox)] == list(range(10))  # unaffected
    assert [v for _, v in messages(d, slow_inbox)] == [0, 1]
    credit(d, slow, 2)
    released = d.replies_for(slow_inbox)
    assert [codec.decode([r.body[1:].partition(b"\0")[2]]) for r in released] == [7, 8]
    assert released[-1].request_id == 5  # the drop count rides in every delivery's header
    credit(d, slow, 2)
    assert [v for _, v in messages(d, slow_inbox)] == [9]
    status = d.status(sender)
    assert status["counters"]["dropped"] == 5
    assert sorted(s["dropped"] for s in status["subscribers"]) == [0, 5]


def test_the_backlog_is_bounded_in_bytes_too() -> None:
    d = make(window=1, backlog=1000, backlog_bytes=5000)
    sender, slow = d.connect(), d.connect()
    inbox = subscribe(d, slow, "x:*")
    for i in range(20):
        publish(d, sender, "x:a", b"%d" % i + b"." * 1000)
    messages(d, inbox)
    subscriber = d.state.deliveries.subscribers[inbox]
    assert subscriber.backlog_bytes <= 5000 and subscriber.dropped >= 14


def test_a_sync_marker_comes_behind_every_message_sent_or_waiting_for_credit() -> None:
    d = make(window=2)
    sender, slow = d.connect(), d.connect()
    inbox = subscribe(d, slow, "x:*")
    for i in range(4):
        publish(d, sender, "x:a", i)
    assert d.call(slow, Op.MQ_SYNC, [b"%d" % CHANNEL, b"m1"]).ok
    assert [v for _, v in messages(d, inbox)] == [0, 1]  # the marker waits behind 2 and 3
    credit(d, slow, 2)
    assert [v for _, v in messages(d, inbox)] == [2, 3]  # (the marker: not a message)
    credit(d, slow, 2)
    (marker,) = d.replies_for(inbox)
    assert marker.status == Status.DELIVERY and marker.body == b"\x03m1"


def test_a_sync_needs_a_delivery_socket(driver) -> None:
    lone = driver.connect()
    reply = driver.call(lone, Op.MQ_SYNC, [b"%d" % CHANNEL, b"m"])
    assert reply.status == Status.BAD_REQUEST and b"subscribe or watch first" in reply.body
    subscribe(driver, lone, "x:*")
    assert driver.call(lone, Op.MQ_SYNC, [b"%d" % CHANNEL, b"m" * 65]).status == \
        Status.BAD_REQUEST


def test_a_vanished_delivery_socket_counts_a_drop(driver) -> None:
    other = driver.connect()
    inbox = subscribe(driver, other, "x:*")
    head = codec.encode(1)[0]
    driver.state.undeliverable(inbox, b"\x01\x04\x00\x00\x00\x00\x00\x00" + head)
    assert driver.state.deliveries.subscribers[inbox].dropped == 1
    assert driver.state.counters["dropped"] == 1


def test_a_session_that_ends_stops_receiving(driver) -> None:
    sender, other = driver.connect(), driver.connect()
    inbox = subscribe(driver, other, "x:*")
    driver.bye(other)
    assert publish(driver, sender, "x:a", 1, reply=True).body == b"0"
    assert driver.state.deliveries.subscribers == {}
    assert driver.state.pubsub.pattern_index.get(None, {}) == {}
    assert messages(driver, inbox) == []


# ---------------------------------------------------------------- shared queues


def test_a_shared_queue_keeps_each_matching_message_once_including_the_senders(driver) -> None:
    producer, consumer = driver.connect(), driver.connect()
    assert driver.call(consumer, Op.MQ_QUEUE, [b"task:*"]).ok
    assert driver.call(consumer, Op.MQ_QUEUE, [b"task:*"]).ok  # idempotent
    for i in range(3):
        publish(driver, producer, "task:run", i)
    publish(driver, producer, "other:run", "no")
    assert driver.var_counts(producer, "__mq")["task:*"][0] == 3
    got = [driver.call(who, Op.FETCH_TRY, [b"__mq", b"task:*"]).value
           for who in (consumer, producer, consumer)]
    assert got == [0, 1, 2]


def test_a_consumer_that_dies_holding_a_message_gives_it_back(driver) -> None:
    producer, consumer, survivor = driver.connect(), driver.connect(), driver.connect()
    driver.call(producer, Op.MQ_QUEUE, [b"task:*"])
    publish(driver, producer, "task:run", "job")
    assert driver.call(consumer, Op.FETCH_TRY, [b"__mq", b"task:*"]).value == "job"
    waiting = driver.send(survivor, Op.FETCH, [b"__mq", b"task:*"])
    driver.advance(driver.timeout + 1)
    driver.heartbeat(producer)
    driver.heartbeat(survivor)
    driver.expire()
    assert driver.reply(survivor, waiting).value == "job"


# ---------------------------------------------------------------- workspace events


def events(d: StateDriver, inbox: bytes) -> list[list[dict]]:
    batches = []
    for reply in d.replies_for(inbox):
        assert reply.status == Status.DELIVERY and reply.body[0] == 2
        batches.append(json.loads(reply.body[1:]))
    return batches


def test_watch_starts_from_a_snapshot(driver) -> None:
    owner = driver.client("demo")
    driver.store(owner, "demo", "x", 1)
    watcher = driver.connect()
    reply = driver.call(watcher, Op.WATCH, [b"%d" % CHANNEL, b"demo"])
    assert reply.json == {"demo": {"x": [1, "fifo"]}}


def test_a_burst_of_stores_is_coalesced_while_a_batch_is_in_flight(driver) -> None:
    owner, watcher = driver.client("demo"), driver.connect()
    driver.call(watcher, Op.WATCH, [b"%d" % CHANNEL, b"demo"])
    inbox = driver.other_channel(watcher, CHANNEL)
    for i in range(1000):
        driver.store(owner, "demo", "x", i)
    # the first request's changes go together, with the state after it
    assert events(driver, inbox) == [[
        {"ws": "demo", "event": "created", "count": 1, "var": "x", "values": 1},
        {"ws": "demo", "event": "stored", "count": 1, "var": "x", "values": 1}]]
    credit(driver, watcher, 0, 1)
    assert events(driver, inbox) == [[{"ws": "demo", "event": "stored", "count": 999,
                                       "var": "x", "values": 1000}]]
    credit(driver, watcher, 0, 1)
    assert events(driver, inbox) == []


def test_an_event_carries_the_values_after_its_change(driver) -> None:
    owner, watcher = driver.client("demo"), driver.connect()
    driver.call(watcher, Op.WATCH, [b"%d" % CHANNEL, b"demo"])
    inbox = driver.other_channel(watcher, CHANNEL)
    for expected in range(1, 6):
        driver.store(owner, "demo", "x", expected)
        (batch,) = events(driver, inbox)
        assert batch[-1]["event"] == "stored" and batch[-1]["values"] == expected
        credit(driver, watcher, 0, 1)


def test_every_kind_of_change_is_an_event(driver) -> None:
    owner, watcher = driver.connect(), driver.connect()
    driver.call(watcher, Op.WATCH, [b"%d" % CHANNEL, b"*"])
    inbox = driver.other_channel(watcher, CHANNEL)
    seen = []

    def drain() -> None:
        for batch in events(driver, inbox):
            seen.extend((e["event"], e.get("var")) for e in batch)
        credit(driver, watcher, 0, 1)

    driver.open_ws(owner, "demo")
    drain()
    driver.store(owner, "demo", "x", 1)
    drain()
    drain()
    driver.fetch_try(owner, "demo", "x")
    drain()
    driver.call(owner, Op.DELETE_VAR, [b"demo", b"x"])
    drain()
    driver.call(owner, Op.DELETE_WS, [b"demo"])
    drain()
    assert seen == [("ws_created", None), ("created", "x"), ("stored", "x"), ("fetched", "x"),
                    ("deleted", "x"), ("ws_deleted", None)]


def test_a_purge_when_the_owner_dies_is_an_event(driver) -> None:
    owner, watcher = driver.client("demo", open=True), driver.connect()
    driver.call(watcher, Op.WATCH, [b"%d" % CHANNEL, b"demo"])
    inbox = driver.other_channel(watcher, CHANNEL)
    driver.bye(owner)
    assert events(driver, inbox) == [[{"ws": "demo", "event": "ws_purged", "count": 1}]]


def test_unwatch_stops_events(driver) -> None:
    owner, watcher = driver.client("demo"), driver.connect()
    driver.call(watcher, Op.WATCH, [b"%d" % CHANNEL, b"demo"])
    driver.call(watcher, Op.UNWATCH, [b"%d" % CHANNEL, b"demo"])
    driver.store(owner, "demo", "x", 1)
    assert driver.replies_for(driver.other_channel(watcher, CHANNEL)) == []
    assert driver.state.deliveries.watched == {}
