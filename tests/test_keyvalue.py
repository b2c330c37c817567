"""The key-value service through ``KeyValueStore`` against a real broker: every operation,
expiry on the broker's clock, bad input, and atomicity under contention from several
processes (increments and compare-and-set loops end with the exact totals)."""

from __future__ import annotations

import textwrap
import time
import uuid

import numpy as np
import pytest

from workbench import (
    KeyValueStore, NetWorkSpace, NwsBadRequestException, NwsMemoryException,
    NwsMessageTooLargeException, NwsValueException,
)
from workbench.protocol import Status

from .support import spawn_client, wait_for


@pytest.fixture
def space() -> str:
    return f"kv_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def kv(broker, space):
    store = KeyValueStore(broker.host, broker.port, workspace=space)
    yield store
    store.close()


def test_values_keep_their_type_and_versions_move(kv: KeyValueStore) -> None:
    values = {"b": b"\x00raw", "s": "text", "i": 42, "t": True, "f": 1.5, "d": {"a": [1]}}
    versions = {key: kv.store(key, value)[1] for key, value in values.items()}
    for key, value in values.items():
        entry = kv.get(key)
        assert entry.value == value and type(entry.value) is type(value)
        assert entry.version == versions[key]
    status, version = kv.store("i", 43)
    assert status == Status.OK and version != versions["i"]
    assert kv.get("missing") is None


def test_conditional_writes(kv: KeyValueStore) -> None:
    assert kv.store("k", 1, how="add") == (Status.OK, kv.get("k").version)
    assert kv.store("k", 2, how="add")[0] == Status.EXISTS
    assert kv.store("nope", 2, how="replace")[0] == Status.MISSING
    version = kv.get("k").version
    assert kv.store("k", 3, how="cas", version=version)[0] == Status.OK
    assert kv.store("k", 4, how="cas", version=version)[0] == Status.EXISTS
    assert kv.get("k").value == 3
    kv.store("s", "b")
    kv.store("s", "c", how="append")
    kv.store("s", "a", how="prepend")
    assert kv.get("s").value == "abc"
    with pytest.raises(ValueError, match="how must be one of"):
        kv.store("k", 1, how="upsert")


def test_incr_decr(kv: KeyValueStore) -> None:
    kv.store("n", 10)
    assert kv.incr("n") == 11
    assert kv.incr("n", 5, decrement=True) == 6
    assert kv.incr("n", -10) == 0  # a negative delta decrements, floored at 0
    assert kv.incr("missing") is None
    kv.store("word", "ten")
    with pytest.raises(NwsValueException, match="not a decimal number") as raised:
        kv.incr("word")
    assert isinstance(raised.value, ValueError)
    assert kv.get("word").value == "ten"


def test_expiry_on_the_broker_clock(kv: KeyValueStore) -> None:
    # "touched" first: once "short" has expired, so would "touched" have without its touch.
    kv.store("touched", 1, ttl=0.3)
    kv.store("short", 1, ttl=0.3)
    kv.store("long", 1, ttl=60)
    assert kv.touch("touched", 60)
    assert kv.get("short").value == 1
    wait_for(lambda: kv.get("short") is None, timeout=10)
    assert kv.get("long").value == 1 and kv.get("touched").value == 1
    kv.store("gone", 1, ttl=-1)
    assert kv.get("gone") is None


def test_entries_are_workspace_variables(broker, kv: KeyValueStore, space: str) -> None:
    kv.store("config", {"debug": True})
    ws = NetWorkSpace(space, broker.host, broker.port, useUse=True)
    try:
        assert ws.listVars(format="dict")["config"][4] == "single"
        assert ws.find("config") == {"debug": True}
        ws.store("config", {"debug": False})  # a SINGLE store replaces
        assert kv.get("config").value == {"debug": False}
    finally:
        ws.close()


def test_multi_key_operations(kv: KeyValueStore) -> None:
    big = np.arange(100_000, dtype=np.float64)
    assert kv.set_multi({"a": 1, "b": "two", "big": big}) == []
    found = kv.get_multi(["a", "nope", "big", "b"])
    assert set(found) == {"a", "b", "big"}
    assert found["a"].value == 1 and found["b"].value == "two"
    assert np.array_equal(found["big"].value, big)
    assert found["a"].version == kv.get("a").version
    assert kv.delete_multi(["a", "b", "nope"]) == 2
    assert kv.get_multi(["a", "b"]) == {}


def test_swap_and_compare_and_swap(kv: KeyValueStore) -> None:
    assert kv.swap("k", 1) is None and kv.get("k") is None
    kv.store("k", "old")
    assert kv.swap("k", "new").value == "old"
    assert kv.compare_and_swap("k", "newer", "old").value == "new"
    assert kv.get("k").value == "new"
    assert kv.compare_and_swap("k", "newer", "new").value == "new"
    assert kv.get("k").value == "newer"
    assert kv.compare_and_swap("absent", 1, 2) is None


def test_delete_and_flush(kv: KeyValueStore) -> None:
    kv.store("a", 1)
    assert kv.delete("a") and not kv.delete("a")
    kv.set_multi({"x": 1, "y": 2})
    kv.flush()
    assert kv.get_multi(["x", "y"]) == {}


def test_a_large_array_goes_through_shared_memory_and_back(kv: KeyValueStore) -> None:
    array = np.random.default_rng(0).random(2**18)  # 2 MiB: above the shared-memory threshold
    kv.store("array", array)
    assert np.array_equal(kv.get("array").value, array)
    assert np.array_equal(kv.swap("array", 0).value, array)


def test_op_timeout_bounds_every_operation(broker, space) -> None:
    import signal

    kv = KeyValueStore(broker.host, broker.port, workspace=space, op_timeout=0.3)
    try:
        broker.process.send_signal(signal.SIGSTOP)  # a broker that stops answering
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            kv.get("k")
        assert time.monotonic() - started < 5
    finally:
        broker.process.send_signal(signal.SIGCONT)
        kv.close()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("key, error", [
    (42, TypeError), (None, TypeError), ("", NwsBadRequestException),
    ("a\nb", NwsBadRequestException), ("k" * 1025, NwsBadRequestException),
])
def test_bad_keys_get_a_clear_error_and_store_nothing(kv: KeyValueStore, key, error) -> None:
    with pytest.raises(error):
        kv.store(key, 1)
    assert kv.stats()["counters"]["internal_errors"] == 0
    assert kv.get_multi(["a"]) == {}


def test_values_over_the_limits_are_refused_and_change_nothing(make_broker, space,
                                                              monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_SHM", "0")  # the message size limit is the socket's
    broker = make_broker("--max-message-size", "1000000", "--max-memory", "3000000")
    kv = KeyValueStore(broker.host, broker.port, workspace=space)
    try:
        kv.store("k", "small")
        with pytest.raises(NwsMessageTooLargeException, match="max-message-size"):
            kv.store("k", b"x" * 2_000_000)
        for i in range(3):
            kv.store(f"fill{i}", b"y" * 900_000)
        with pytest.raises(NwsMemoryException, match="max-memory"):
            kv.store("k", b"z" * 900_000)
        assert kv.get("k").value == "small"
    finally:
        kv.close()


# ---------------------------------------------------------------- contention


def _workers(broker, space: str, body: str, n: int) -> list:
    return [spawn_client(broker, textwrap.dedent(f"""
        from workbench import KeyValueStore
        from workbench.protocol import Status
        kv = KeyValueStore(workspace={space!r})
        {textwrap.indent(textwrap.dedent(body), "        ").strip()}
        kv.close()
        print("done")
        """)) for _ in range(n)]


def _finish(processes: list) -> None:
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0 and out.strip() == "done", err


def test_concurrent_increments_are_never_lost(broker, kv: KeyValueStore, space: str) -> None:
    kv.store("counter", 0)
    _finish(_workers(broker, space, """
        for _ in range(300):
            kv.incr("counter")
        """, 4))
    assert kv.get("counter").value == 1200


def test_racing_cas_loops_end_with_the_exact_total(broker, kv: KeyValueStore, space) -> None:
    kv.store("total", 0)
    _finish(_workers(broker, space, """
        for _ in range(150):
            while True:
                entry = kv.get("total")
                status, _ = kv.store("total", entry.value + 1, how="cas",
                                     version=entry.version)
                if status == Status.OK:
                    break
        """, 4))
    assert kv.get("total").value == 600  # a lost update would leave it short


def test_racing_adds_have_exactly_one_winner(broker, kv: KeyValueStore, space) -> None:
    kv.store("wins", 0)
    _finish(_workers(broker, space, """
        import os
        for i in range(100):
            if kv.store(f"lock{i}", os.getpid(), how="add")[0] == Status.OK:
                kv.incr("wins")
        """, 3))
    owners = kv.get_multi([f"lock{i}" for i in range(100)])
    assert len(owners) == 100
    assert kv.get("wins").value == 100
