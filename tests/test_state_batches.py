"""Unit tests of the work-queue operations of the broker state (``broker/state/batches.py``):
STORE_MANY, FETCH_MANY under one lease, the ``returns`` count, and END_SESSION."""

from __future__ import annotations

import random

import pytest

from .state_driver import StateDriver
from workbench.broker.state.handoffs import DEAL_MOST
from workbench import codec
from workbench.protocol import (
    HEADER_SIZE, MANY_COUNT, MANY_ITEM, MANY_RECORD, Op, Status, split_hand, split_many,
)

WS = "pool"


@pytest.fixture
def driver() -> StateDriver:
    return StateDriver(rng=random.Random(0))


def store_many(d: StateDriver, peer: bytes, var: str, values) -> None:
    records, extra = [], []
    for value in values:
        first, *rest = codec.encode(value)
        records.append(MANY_ITEM.pack(len(first)) + first)
        extra.extend(rest)
    reply = d.call(peer, Op.STORE_MANY, [WS.encode(), var.encode(), b"".join(records)], extra)
    assert reply.ok and reply.body == b"%d" % len(values), reply


def decode_many(reply) -> list[tuple[object, int]]:
    assert reply.ok, reply
    (count,) = MANY_COUNT.unpack_from(reply.body)
    offset, extra, out = MANY_COUNT.size, list(reply.extra), []
    for _ in range(count):
        _, returns, length = MANY_RECORD.unpack_from(reply.body, offset)
        offset += MANY_RECORD.size
        first = reply.body[offset:offset + length]
        offset += length
        nextra = codec.DESCRIPTOR.unpack_from(first)[2]
        out.append((codec.decode([first, *extra[:nextra]]), returns))
        del extra[:nextra]
    return out


def fetch_many(d, peer, var, most, block=True) -> int:
    return d.send(peer, Op.FETCH_MANY, [WS.encode(), var.encode(), b"%d" % most,
                                        b"1" if block else b"0"])


def test_store_many_then_fetch_many_in_order(driver) -> None:
    master, worker = driver.client(WS), driver.client(WS)
    store_many(driver, master, "tasks", list(range(10)) + [b"z" * 70_000])
    first = decode_many(driver.reply(worker, fetch_many(driver, worker, "tasks", 4)))
    assert first == [(0, 0), (1, 0), (2, 0), (3, 0)]
    rest = decode_many(driver.reply(worker, fetch_many(driver, worker, "tasks", 100)))
    assert [v for v, _ in rest] == [4, 5, 6, 7, 8, 9, b"z" * 70_000]
    assert driver.reply(worker, fetch_many(driver, worker, "tasks", 5, block=False)).status \
        == Status.MISSING


def test_a_blocked_fetch_many_gets_the_next_store(driver) -> None:
    master, worker = driver.client(WS), driver.client(WS)
    request = fetch_many(driver, worker, "tasks", 10)
    assert driver.reply(worker, request) is None
    driver.store(master, WS, "tasks", "one")
    assert decode_many(driver.reply(worker, request)) == [("one", 0)]


def test_all_values_of_a_fetch_many_go_back_when_its_holder_dies_and_count_it(driver) -> None:
    master, worker, other = driver.client(WS), driver.client(WS), driver.client(WS)
    store_many(driver, master, "tasks", ["a", "b", "c"])
    decode_many(driver.reply(worker, fetch_many(driver, worker, "tasks", 2)))
    driver.advance(driver.timeout + 1)
    driver.heartbeat(master)
    driver.heartbeat(other)
    driver.expire()
    again = decode_many(driver.reply(other, fetch_many(driver, other, "tasks", 10)))
    assert again == [("a", 1), ("b", 1), ("c", 0)]


def test_an_acknowledged_fetch_many_is_gone_for_good(driver) -> None:
    master, worker = driver.client(WS), driver.client(WS)
    store_many(driver, master, "tasks", ["a", "b"])
    request = fetch_many(driver, worker, "tasks", 2)
    driver.reply(worker, request)
    memory = driver.state.memory.used
    driver.ack(worker, request)
    assert driver.state.memory.used < memory and not driver.state.handoffs.leases
    driver.bye(worker)
    assert driver.var_counts(master, WS)["tasks"][0] == 0


def test_cancelling_a_fetch_many_returns_its_values_without_counting(driver) -> None:
    master, worker = driver.client(WS), driver.client(WS)
    store_many(driver, master, "tasks", ["a", "b"])
    request = fetch_many(driver, worker, "tasks", 2)
    driver.reply(worker, request)
    driver.cancel(worker, request)
    assert decode_many(driver.reply(master, fetch_many(driver, master, "tasks", 5))) == \
        [("a", 0), ("b", 0)]


def test_end_session_ends_a_dead_processs_sessions_now(driver) -> None:
    master = driver.client(WS)
    worker = driver.new_peer()
    driver.hello(worker, pid=777, host="node")
    driver.use_ws(worker, WS)
    store_many(driver, master, "tasks", ["a"])
    driver.reply(worker, fetch_many(driver, worker, "tasks", 1))
    reply = driver.call(master, Op.END_SESSION, [b"node", b"777"])
    assert reply.body == b"1"
    assert decode_many(driver.reply(master, fetch_many(driver, master, "tasks", 1))) == \
        [("a", 1)]


@pytest.mark.parametrize("most", [b"0", b"70000", b"x"])
def test_fetch_many_needs_a_sensible_count(driver, most) -> None:
    peer = driver.client(WS)
    reply = driver.call(peer, Op.FETCH_MANY, [WS.encode(), b"t", most, b"0"])
    assert reply.status == Status.BAD_REQUEST


def test_truncated_store_many_stores_nothing(driver) -> None:
    peer = driver.client(WS)
    first = codec.encode("a")[0]
    blob = MANY_ITEM.pack(len(first)) + first
    reply = driver.call(peer, Op.STORE_MANY, [WS.encode(), b"t", blob + blob[:-1]])
    assert reply.status == Status.BAD_REQUEST
    assert "t" not in driver.var_counts(peer, WS)


def test_a_blocked_fetch_many_takes_up_to_its_count_of_a_store_many(driver) -> None:
    # A pool's idle worker takes a hand of the tasks stored together, not one value each.
    master, worker, other = driver.client(WS), driver.client(WS), driver.client(WS)
    first = fetch_many(driver, worker, "tasks", 3)
    second = fetch_many(driver, other, "tasks", 3)
    store_many(driver, master, "tasks", list(range(5)))
    got = {peer: [v for v, _ in decode_many(driver.reply(peer, request))]
           for peer, request in ((worker, first), (other, second))}
    # the newest waiter first, each value once and in order within a hand
    assert got == {other: [0, 1, 2], worker: [3, 4]}


def dealt(reply) -> bool:
    """Whether a FETCH_MANY reply says its values were dealt among several callers."""
    return split_hand(bytes(HEADER_SIZE) + reply.body, list(reply.extra))[1]


def test_blocked_fetch_manys_share_the_bytes_of_a_store_many_and_are_told_so(driver) -> None:
    # A new call's records shrink along the queue: idle workers each take an equal share of
    # the work stored together, by bytes, in order, and know that the others got some.
    master, a, b, c = (driver.client(WS) for _ in range(4))
    first, second = fetch_many(driver, a, "tasks", 100), fetch_many(driver, b, "tasks", 100)
    sizes = [4000, 3000, 2000, 1000, 900, 800, 700, 600, 500, 400]
    store_many(driver, master, "tasks", [b"x" * size for size in sizes])
    newest, oldest = driver.reply(b, second), driver.reply(a, first)
    assert [len(v) for v, _ in decode_many(newest)] == [4000, 3000]
    assert [len(v) for v, _ in decode_many(oldest)] == sizes[2:]
    assert dealt(newest) and dealt(oldest)
    # one caller waiting, or one value: a hand as before, not dealt
    alone = fetch_many(driver, c, "tasks", 100)
    store_many(driver, master, "tasks", ["p", "q"])
    reply = driver.reply(c, alone)
    assert decode_many(reply) == [("p", 0), ("q", 0)] and not dealt(reply)
    # an old client reads a dealt reply as any other
    assert [frames for frames, _ in split_many(bytes(HEADER_SIZE) + newest.body,
                                               list(newest.extra))] == \
        [codec.encode(b"x" * 4000), codec.encode(b"x" * 3000)]


def test_a_dealt_hand_goes_back_when_its_holder_dies(driver) -> None:
    master, a, b, c = (driver.client(WS) for _ in range(4))
    first, second = fetch_many(driver, a, "tasks", 100), fetch_many(driver, b, "tasks", 100)
    store_many(driver, master, "tasks", list(range(6)))
    kept = decode_many(driver.reply(a, first))
    lost = decode_many(driver.reply(b, second))
    assert kept and lost
    driver.advance(driver.timeout + 1)  # b stops answering; the others are alive
    for peer in (master, a, c):
        driver.heartbeat(peer)
    driver.expire()
    again = decode_many(driver.reply(c, fetch_many(driver, c, "tasks", 100)))
    assert again == [(value, 1) for value, _ in lost]  # in order, the death counted


def test_dealing_leaves_each_caller_a_value_and_keeps_to_its_count(driver) -> None:
    master, a, b, c, d = (driver.client(WS) for _ in range(5))
    # more callers than values: one value each for the newest, the others wait on
    waiting = [fetch_many(driver, peer, "tasks", 10) for peer in (a, b, c)]
    store_many(driver, master, "tasks", [b"x" * 100, b"y"])
    assert decode_many(driver.reply(c, waiting[2])) == [(b"x" * 100, 0)]
    assert decode_many(driver.reply(b, waiting[1])) == [(b"y", 0)]
    assert driver.reply(a, waiting[0]) is None
    driver.cancel(a, waiting[0])
    # a count smaller than the share: the rest stays queued, in order, for the next caller
    small, large = fetch_many(driver, a, "tasks", 1), fetch_many(driver, b, "tasks", 2)
    store_many(driver, master, "tasks", list(range(8)))
    assert decode_many(driver.reply(b, large)) == [(0, 0), (1, 0)]
    assert decode_many(driver.reply(a, small)) == [(2, 0)]
    later = decode_many(driver.reply(d, fetch_many(driver, d, "tasks", 100)))
    assert [v for v, _ in later] == [3, 4, 5, 6, 7]


def test_values_are_dealt_among_a_few_of_many_idle_callers(driver) -> None:
    # A hundred idle workers must not all wake for a small call: the newest few share it.
    master, *workers = (driver.client(WS) for _ in range(1 + DEAL_MOST + 3))
    waiting = [fetch_many(driver, peer, "tasks", 100) for peer in workers]
    store_many(driver, master, "tasks", list(range(40)))
    served = [driver.reply(peer, request) for peer, request in zip(workers, waiting)]
    assert served[:3] == [None, None, None]
    hands = [[v for v, _ in decode_many(reply)] for reply in reversed(served[3:])]
    assert len(hands) == DEAL_MOST and max(map(len, hands)) - min(map(len, hands)) <= 2
    assert sum(hands, []) == list(range(40))


def test_blocked_fetch_manys_are_served_newest_first_and_plain_fetches_oldest_first(
        driver) -> None:
    master, a, b = driver.client(WS), driver.client(WS), driver.client(WS)
    older, newer = fetch_many(driver, a, "tasks", 5), fetch_many(driver, b, "tasks", 5)
    driver.store(master, WS, "tasks", "one")
    assert decode_many(driver.reply(b, newer)) == [("one", 0)]
    assert driver.reply(a, older) is None
    driver.store(master, WS, "tasks", "two")
    assert decode_many(driver.reply(a, older)) == [("two", 0)]
    # plain fetches keep NetWorkSpaces' order: the longest-waiting one first
    older, newer = driver.fetch(a, WS, "queue"), driver.fetch(b, WS, "queue")
    driver.store(master, WS, "queue", "first")
    assert driver.reply(a, older).ok and driver.reply(b, newer) is None


def test_a_store_many_into_a_single_variable_goes_value_by_value(driver) -> None:
    # Only a FIFO queue takes stored values in hands; a SINGLE keeps its newest value, so
    # each waiting fetcher still gets one of them, in order.
    master, a, b = driver.client(WS), driver.client(WS), driver.client(WS)
    driver.call(master, Op.DECLARE, [WS.encode(), b"latest", b"single"])
    first, second = fetch_many(driver, a, "latest", 5), fetch_many(driver, b, "latest", 5)
    store_many(driver, master, "latest", ["x", "y", "z"])
    assert decode_many(driver.reply(b, second)) == [("x", 0)]
    assert decode_many(driver.reply(a, first)) == [("y", 0)]
