"""Unit tests of the broker's key-value operations (``workbench.broker.state.keyvalue``).

Driven through ``StateDriver`` with a clock the tests control: conditional writes and versions,
append/prepend, incr/decr rules, expiry (invisible at once, reclaimed by the deadline heap
without a scan), multi-key operations, compare-and-swap, the memory cap, and how entries meet
the workspace model (listVars, waiting finders, other modes).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given, settings, strategies as st

from .state_driver import Reply, StateDriver
from workbench import codec
from workbench.broker.state import Limits
from workbench.protocol import FLAG_ACKS, KV_ITEM, KV_RECORD, Kind, Op, Status, descriptor

WS = "kv"


@pytest.fixture
def driver() -> StateDriver:
    return StateDriver(rng=random.Random(0))


@pytest.fixture
def peer(driver: StateDriver) -> bytes:
    """A session that has used the key-value workspace (so NWS requests find it too)."""
    return driver.client(WS)


class KV:
    """Key-value requests as ``KeyValueStore`` sends them."""

    def __init__(self, driver: StateDriver, peer: bytes) -> None:
        self.d, self.peer = driver, peer

    def store(self, key: str, value, how: str = "set", ttl: float = 0,
              version: int = 0) -> Reply:
        first, *extra = codec.encode(value)
        return self.d.call(self.peer, Op.KV_STORE,
                           [WS.encode(), key.encode(), how.encode(), b"%r" % float(ttl),
                            b"%d" % version, first], extra)

    def get(self, key: str) -> Reply:
        return self.d.call(self.peer, Op.KV_GET, [WS.encode(), key.encode()])

    def value(self, key: str):
        reply = self.get(key)
        return reply.value if reply.ok else None

    def version(self, key: str) -> int:
        var_id, seq = self.get(key).meta
        return var_id << 32 | seq

    def incr(self, key: str, delta: int, how: str = "incr") -> Reply:
        return self.d.call(self.peer, Op.KV_INCR,
                           [WS.encode(), key.encode(), how.encode(), str(delta).encode()])

    def call(self, op: int, *args: bytes, frames=()) -> Reply:
        return self.d.call(self.peer, op, [WS.encode(), *args], frames)

    def names(self) -> list[str]:
        return [row[0] for row in self.d.list_vars(self.peer, WS)]


@pytest.fixture
def kv(driver: StateDriver, peer: bytes) -> KV:
    return KV(driver, peer)


def stored_version(reply: Reply) -> int:
    assert reply.ok, reply
    return int.from_bytes(reply.body[:8], "little")


# ---------------------------------------------------------------- conditional writes


def test_set_creates_a_single_variable_in_a_persistent_workspace(driver: StateDriver) -> None:
    peer = driver.connect()
    kv = KV(driver, peer)
    assert kv.store("a", 1).ok
    assert driver.list_vars(peer, WS) == [["a", 1, 0, 0, "single"]]
    assert kv.store("a", 2).ok
    assert kv.value("a") == 2
    assert driver.state.spaces.get(WS).persistent


def test_add_only_if_absent_and_replace_only_if_present(kv: KV) -> None:
    assert kv.store("a", 1, "replace").status == Status.MISSING
    assert kv.get("a").status == Status.MISSING
    assert kv.store("a", 1, "add").ok
    assert kv.store("a", 2, "add").status == Status.EXISTS
    assert kv.value("a") == 1
    assert kv.store("a", 3, "replace").ok
    assert kv.value("a") == 3


def test_every_write_changes_the_version_and_the_reply_carries_it(kv: KV) -> None:
    first = stored_version(kv.store("a", 1))
    assert kv.version("a") == first
    second = stored_version(kv.store("a", 1))
    assert second != first and kv.version("a") == second


def test_versions_never_repeat_after_delete_and_recreate(kv: KV) -> None:
    old = stored_version(kv.store("a", 1))
    assert kv.call(Op.KV_DELETE, b"a").ok
    assert stored_version(kv.store("a", 1)) != old


def test_cas_stores_only_if_the_version_is_unchanged(kv: KV) -> None:
    version = stored_version(kv.store("a", 1))
    assert kv.store("a", 2, "cas", version=version).ok
    assert kv.store("a", 3, "cas", version=version).status == Status.EXISTS
    assert kv.value("a") == 2
    assert kv.store("zz", 3, "cas", version=version).status == Status.MISSING


def test_append_and_prepend_keep_the_kind_and_need_the_key(kv: KV) -> None:
    assert kv.store("s", "x", "append").status == Status.MISSING
    kv.store("s", "mid")
    assert kv.store("s", "-end", "append").ok
    assert kv.store("s", "start-", "prepend").ok
    assert kv.value("s") == "start-mid-end"
    kv.store("b", b"\x00\x01")
    kv.store("b", b"\x02", "append")
    assert kv.value("b") == b"\x00\x01\x02"


def test_append_keeps_the_expiry(kv: KV, driver: StateDriver) -> None:
    kv.store("s", "a", ttl=10)
    kv.store("s", "b", "append")
    driver.advance(11)
    assert kv.get("s").status == Status.MISSING


@pytest.mark.parametrize("old, new", [([1, 2], "more"), ("x" * 100_000, "more"), ("s", [1]),
                                      (12, "x")])
def test_append_that_would_corrupt_a_value_is_refused_and_changes_nothing(kv: KV, old,
                                                                         new) -> None:
    kv.store("v", old)
    before = kv.version("v")
    reply = kv.store("v", new, "append")
    assert reply.status == Status.BAD_VALUE and "append and prepend" in reply.text
    assert kv.version("v") == before and kv.value("v") == old


def test_append_digits_to_an_int_keeps_an_int(kv: KV) -> None:
    kv.store("n", 12)
    kv.store("n", 3, "append")
    assert kv.value("n") == 123


# ---------------------------------------------------------------- incr / decr


def test_incr_and_decr_on_decimal_values_keep_the_kind(kv: KV) -> None:
    kv.store("n", 20)
    assert kv.incr("n", 1).text == "21"
    assert kv.value("n") == 21
    kv.store("s", "20")
    assert kv.incr("s", 5).text == "25"
    assert kv.value("s") == "25"
    kv.store("b", b"7")
    assert kv.incr("b", 3, "decr").text == "4"
    assert kv.value("b") == b"4"


def test_decr_floors_at_zero_and_incr_wraps_at_2_to_the_64(kv: KV) -> None:
    kv.store("n", 1)
    assert kv.incr("n", 2, "decr").text == "0"
    kv.store("big", str(2**64 - 1))
    assert kv.incr("big", 2).text == "1"


def test_incr_of_a_missing_key_is_missing(kv: KV) -> None:
    assert kv.incr("none", 1).status == Status.MISSING
    assert "none" not in kv.names()


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", [1], "", "1" * 21])
def test_incr_of_a_non_number_is_bad_value_and_changes_nothing(kv: KV, value) -> None:
    kv.store("v", value)
    before = kv.version("v")
    reply = kv.incr("v", 1)
    assert reply.status == Status.BAD_VALUE
    assert "not a decimal number" in reply.text
    assert kv.version("v") == before and kv.value("v") == value


@pytest.mark.parametrize("delta", ["-1", "x", ""])
def test_incr_needs_a_non_negative_decimal_delta(kv: KV, driver, peer, delta) -> None:
    kv.store("n", 1)
    reply = driver.call(peer, Op.KV_INCR, [WS.encode(), b"n", b"incr", delta.encode()])
    assert reply.status == Status.BAD_VALUE
    assert kv.value("n") == 1


# ---------------------------------------------------------------- expiry


def test_an_expired_entry_is_invisible_at_once(kv: KV, driver: StateDriver) -> None:
    kv.store("t", 1, ttl=5)
    driver.advance(4.9)
    assert kv.value("t") == 1
    driver.advance(0.2)
    assert kv.get("t").status == Status.MISSING
    assert kv.store("t", 2, "replace").status == Status.MISSING
    assert kv.store("t", 2, "add").ok


def test_expired_entries_are_hidden_from_listings_and_nws_readers(kv: KV, driver, peer) -> None:
    kv.store("t", 1, ttl=1)
    kv.store("keep", 1)
    driver.advance(2)
    assert kv.names() == ["keep"]
    reply = driver.call(peer, Op.FIND_TRY, [WS.encode(), b"t"])
    assert reply.status == Status.MISSING


def test_expired_memory_is_reclaimed_by_the_tick_without_touching_the_key(
        kv: KV, driver: StateDriver) -> None:
    for i in range(100):
        kv.store(f"k{i}", "x" * 1000, ttl=1 + i % 2)
    kv.store("forever", "x" * 1000)
    before = driver.state.memory.used
    driver.advance(1.5)
    driver.expire()  # the server loop's tick
    assert driver.state.memory.used < before
    assert len(driver.state.spaces.get(WS).variables) == 51
    driver.advance(1)
    driver.expire()
    assert list(driver.state.spaces.get(WS).variables) == ["forever"]
    assert driver.state.counters["expired"] == 100
    assert not driver.state.deadlines


def test_touch_moves_the_deadline_and_rewrites_leave_stale_heap_entries_harmless(
        kv: KV, driver: StateDriver) -> None:
    kv.store("t", 1, ttl=1)
    assert kv.call(Op.KV_TOUCH, b"t", b"10.0").ok
    driver.advance(2)
    driver.expire()
    assert kv.value("t") == 1
    assert kv.call(Op.KV_TOUCH, b"t", b"0").ok  # never
    driver.advance(100)
    driver.state.deadlines.reap(driver.now)  # (a tick would also end this silent session)
    assert kv.value("t") == 1
    assert kv.call(Op.KV_TOUCH, b"nope", b"1").status == Status.MISSING


def test_rewriting_a_key_with_a_long_ttl_does_not_pile_up_deadlines(kv: KV, driver) -> None:
    for _ in range(10_000):
        kv.store("hot", 1, ttl=30 * 86400)
    assert len(driver.state.deadlines) <= 1024
    driver.advance(30 * 86400 + 1)
    assert kv.get("hot").status == Status.MISSING


def test_a_set_without_ttl_clears_the_deadline_and_negative_ttl_expires_at_once(
        kv: KV, driver: StateDriver) -> None:
    kv.store("t", 1, ttl=1)
    kv.store("t", 2)
    driver.advance(5)
    assert kv.value("t") == 2
    kv.store("gone", 1, ttl=-1)
    assert kv.get("gone").status == Status.MISSING


@pytest.mark.parametrize("ttl", [b"soon", b"nan", b"inf"])
def test_a_ttl_must_be_a_finite_number(kv: KV, driver, peer, ttl) -> None:
    reply = driver.call(peer, Op.KV_STORE, [WS.encode(), b"a", b"set", ttl, b"0",
                                            *codec.encode(1)])
    assert reply.status == Status.BAD_REQUEST
    assert kv.get("a").status == Status.MISSING


# ---------------------------------------------------------------- removal


def test_delete_and_flush(kv: KV, driver, peer) -> None:
    kv.store("a", 1)
    kv.store("b", 2)
    assert kv.call(Op.KV_DELETE, b"a").ok
    assert kv.call(Op.KV_DELETE, b"a").status == Status.MISSING
    assert kv.names() == ["b"]
    memory = driver.state.memory.used
    assert memory > 0
    assert kv.call(Op.KV_FLUSH).ok
    assert kv.names() == [] and driver.state.memory.used == 0


def test_flush_fails_readers_blocked_in_the_workspace(kv: KV, driver: StateDriver) -> None:
    waiter = driver.client(WS)
    request = driver.fetch(waiter, WS, "q")
    kv.call(Op.KV_FLUSH)
    assert driver.reply(waiter, request).status == Status.VARIABLE_DELETED


# ---------------------------------------------------------------- several keys


def test_get_multi_returns_the_present_keys_with_versions(kv: KV) -> None:
    kv.store("a", 1)
    kv.store("b", "two")
    kv.store("big", b"z" * 100_000)  # a detached frame travels as an extra frame
    reply = kv.call(Op.KV_GET_MULTI, b"a", b"missing", b"big", b"b")
    records, offset, extra = {}, 0, list(reply.extra)
    while offset < len(reply.body):
        index, version, length = KV_RECORD.unpack_from(reply.body, offset)
        offset += KV_RECORD.size
        first = reply.body[offset:offset + length]
        offset += length
        nextra = codec.DESCRIPTOR.unpack_from(first)[2]
        records[index] = (version, codec.decode([first, *extra[:nextra]]))
        del extra[:nextra]
    assert records == {0: (kv.version("a"), 1), 2: (kv.version("big"), b"z" * 100_000),
                       3: (kv.version("b"), "two")}


def set_multi_blob(items: dict) -> tuple[bytes, list]:
    records, extra = [], []
    for key, value in items.items():
        first, *rest = codec.encode(value)
        records.append(KV_ITEM.pack(len(key), len(first)) + key.encode() + first)
        extra.extend(rest)
    return b"".join(records), extra


def test_set_multi_sets_all_and_reports_the_keys_it_could_not(kv: KV, driver, peer) -> None:
    driver.store(peer, WS, "queue", 1)  # a FIFO variable: not a key-value entry
    blob, extra = set_multi_blob({"a": 1, "queue": 2, "big": b"y" * 70_000, "bad\x01": 3})
    reply = kv.call(Op.KV_SET_MULTI, b"0", blob, frames=extra)
    assert reply.ok and reply.body == b"1,3"
    assert kv.value("a") == 1 and kv.value("big") == b"y" * 70_000


def test_set_multi_rejects_truncated_records(kv: KV) -> None:
    blob, _ = set_multi_blob({"a": 1})
    assert kv.call(Op.KV_SET_MULTI, b"0", blob[:-1]).status == Status.BAD_REQUEST
    assert kv.get("a").status == Status.MISSING


def test_delete_multi_counts_what_it_removed(kv: KV) -> None:
    kv.store("a", 1)
    kv.store("b", 1)
    assert kv.call(Op.KV_DELETE_MULTI, b"a", b"x", b"b").body == b"2"
    assert kv.names() == []


# ---------------------------------------------------------------- swaps


def test_swap_returns_the_old_value_and_needs_the_key(kv: KV) -> None:
    assert kv.store("a", 1, "swap").status == Status.MISSING
    kv.store("a", 1)
    assert kv.store("a", 2, "swap").value == 1
    assert kv.value("a") == 2


def test_compare_and_swap_swaps_only_on_equality(kv: KV) -> None:
    new, comparand = codec.encode("new"), codec.encode("old")
    assert kv.call(Op.KV_COMPARE_SWAP, b"a", b"0", new[0],
                   frames=comparand).status == Status.MISSING
    kv.store("a", "old")
    assert kv.call(Op.KV_COMPARE_SWAP, b"a", b"0", new[0], frames=comparand).value == "old"
    assert kv.value("a") == "new"
    assert kv.call(Op.KV_COMPARE_SWAP, b"a", b"0", codec.encode("x")[0],
                   frames=comparand).value == "new"
    assert kv.value("a") == "new"


def test_compare_and_swap_without_a_comparand_is_malformed(kv: KV) -> None:
    kv.store("a", 1)
    reply = kv.call(Op.KV_COMPARE_SWAP, b"a", b"0", codec.encode(2)[0])
    assert reply.status == Status.BAD_REQUEST
    assert kv.value("a") == 1


# ---------------------------------------------------------------- the workspace model


def test_a_set_wakes_a_finder_waiting_on_the_key(kv: KV, driver: StateDriver) -> None:
    waiter = driver.client(WS)
    request = driver.find(waiter, WS, "config")
    assert driver.reply(waiter, request) is None
    kv.store("config", {"debug": True})
    assert driver.reply(waiter, request).value == {"debug": True}
    assert kv.value("config") == {"debug": True}


def test_key_value_ops_refuse_variables_of_other_modes(kv: KV, driver, peer) -> None:
    driver.store(peer, WS, "queue", 1)
    reply = kv.store("queue", 2)
    assert reply.status == Status.BAD_REQUEST and "fifo variable" in reply.text
    assert kv.get("queue").status == Status.BAD_REQUEST
    assert driver.var_counts(peer, WS)["queue"] == (1, 0, 0, "fifo")


@pytest.mark.parametrize("key", [b"", b"a\x01b", b"x" * 1025, b"\xff"])
def test_bad_keys_are_refused_and_store_nothing(kv: KV, driver, peer, key) -> None:
    reply = driver.call(peer, Op.KV_STORE, [WS.encode(), key, b"set", b"0", b"0",
                                            *codec.encode(1)])
    assert reply.status == Status.BAD_REQUEST
    assert kv.names() == []


def test_the_memory_cap_refuses_a_write_and_keeps_the_old_value() -> None:
    driver = StateDriver(Limits(max_memory=10_000))
    kv = KV(driver, driver.connect())
    kv.store("a", "small")
    reply = kv.store("a", "x" * 20_000)
    assert reply.status == Status.NO_MEMORY and "--max-memory" in reply.text
    assert kv.value("a") == "small"


# ---------------------------------------------------------------- the fused paths change nothing

_KEYS = [b"a", b"a", b"a", b"b", b"", b"bad\x01key"]
_VALUES = [
    codec.encode(b"x" * 40), codec.encode("text"), codec.encode(7),
    codec.encode(b"y" * 300),  # still one frame, larger than one ZMTP short frame
    [descriptor(Kind.BYTES, 1), b"extra frame"],  # a value with an extra frame
    [b"\0"],  # no descriptor
    [bytes((0, 8, 0, 0)) + b"unknown flag"],
]
_TTLS = [b"0", b"0.0", b"0.0", b"30.0", b"-1.0", b"nan", b"x"]
_NOTHING_ACKED = b"4000000000"  # acknowledges no lease, so the request means the same

kv_requests = st.one_of(
    st.tuples(st.just("store"), st.sampled_from([b"kv", b"kv", b"new", b"bad\x02ws"]),
              st.sampled_from(_KEYS), st.sampled_from([b"set", b"set", b"set", b"add",
                                                       b"replace", b"append", b"bogus"]),
              st.sampled_from(_TTLS), st.sampled_from(range(len(_VALUES)))),
    st.tuples(st.just("get"), st.sampled_from([b"kv", b"kv", b"new", b"bad\x02ws"]),
              st.sampled_from(_KEYS), st.sampled_from([0, 0, 0, 1, 2])),
    st.tuples(st.just("delete"), st.sampled_from(_KEYS)),
    st.tuples(st.just("fetch"), st.sampled_from(_KEYS)),  # waits on the entry if it is empty
    st.tuples(st.just("declare"), st.sampled_from(_KEYS)),  # a FIFO variable, not an entry
    st.tuples(st.just("advance"), st.sampled_from([0.5, 40.0])),
    st.tuples(st.just("expire")),
)


def _send_kv(driver: StateDriver, peer: bytes, request, general: bool) -> None:
    """One request; ``general`` sends it with an acknowledgement of nothing, which the fused
    handlers leave to the general ones."""
    kind, *rest = request
    flags, acks = (FLAG_ACKS, [_NOTHING_ACKED]) if general else (0, [])
    if kind == "store":
        ws, key, how, ttl, which = rest
        first, *extra = _VALUES[which]
        driver.send(peer, Op.KV_STORE, [*acks, ws, key, how, ttl, b"0", first], extra, flags)
    elif kind == "get":
        ws, key, oddity = rest
        args = [*acks, ws, key, *([b"one too many"] if oddity == 1 else [])]
        driver.send(peer, Op.KV_GET, args, [b"a frame"] if oddity == 2 else [], flags)
    elif kind == "delete":
        driver.send(peer, Op.KV_DELETE, [b"kv", rest[0]])
    elif kind == "fetch":
        driver.send(peer, Op.FETCH, [b"kv", rest[0]])
    elif kind == "declare":
        driver.send(peer, Op.DECLARE, [b"kv", rest[0], b"fifo"])
    elif kind == "advance":
        driver.advance(rest[0])
    else:
        driver.expire()


@settings(max_examples=300, deadline=None)
@given(st.lists(kv_requests, max_size=40))
@example([("store", b"kv", b"a", b"set", b"30.0", 0), ("store", b"kv", b"a", b"set", b"0", 0),
          ("advance", 40.0), ("get", b"kv", b"a", 0)])
@example([("store", b"kv", b"a", b"set", b"0", 0), ("fetch", b"a"), ("fetch", b"a"),
          ("store", b"kv", b"a", b"set", b"0", 1), ("get", b"kv", b"a", 0)])
def test_the_fused_store_and_get_decide_exactly_as_the_general_handlers(requests) -> None:
    """A plain KV_STORE or KV_GET may be done by a fused handler (``store_plain``,
    ``get_plain``); the same requests through the general handlers must give the same
    replies, change records, counters and memory, under a memory cap that refuses some."""
    fused, general = (StateDriver(Limits(max_memory=1000), rng=random.Random(0))
                      for _ in range(2))
    peers = [driver.client("kv") for driver in (fused, general)]
    for request in requests:
        _send_kv(fused, peers[0], request, general=False)
        _send_kv(general, peers[1], request, general=True)
    assert [(r.status, r.request_id, r.body, r.extra) for r in fused.take_all()] == \
        [(r.status, r.request_id, r.body, r.extra) for r in general.take_all()]
    assert fused.changes == general.changes
    assert fused.state.counters == general.state.counters
    assert fused.state.memory.used == general.state.memory.used
