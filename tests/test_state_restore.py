"""Unit tests of restoring a broker state from change records (``broker.state.restore``) and of
snapshots (``broker.state.snapshot``): a fresh state fed the records of another answers fetch,
find, iterators, key-value gets and listings as the other would after a restart, with leased
values back at the head, the same ids and versions, and ids never given twice.

The end of every test here (and of every state test, see conftest) also checks the restored
state's internals against the original's (``restore_check``).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .restore_check import check_restore
from .state_driver import StateDriver
from .test_state_batches import WS, decode_many, fetch_many, store_many
from .test_state_kv import KV
from .test_state_pubsub import publish
from workbench.broker.state import BrokerState, Limits, changes
from workbench.broker.state.restore import RestoreError, restore
from workbench.broker.state.snapshot import Snapshot
from workbench.protocol import Op, Status

MODES = ("fifo", "lifo", "multi", "single")


@pytest.fixture
def driver() -> StateDriver:
    return StateDriver(rng=random.Random(0))


def restarted(driver: StateDriver, records: list | None = None,
              later: float = 0.0) -> StateDriver:
    """A driver of a fresh state restored from the driver's records, at the same time (or
    ``later`` seconds after)."""
    state = BrokerState(rng=random.Random(0))
    restore(state, driver.changes if records is None else records)
    return StateDriver.around(state, driver.now + later)


def answers(driver: StateDriver) -> dict:
    """What a new client learns from the state: the workspaces and their variables, each
    variable's values in the order reads give them, with their (variable id, sequence), and the
    memory in use. Reads with a lease leave the values leased: call it last."""
    peer = driver.connect()
    found = {"workspaces": driver.list_wss(peer), "memory": driver.status(peer)["memory"]}
    for ws, *_ in found["workspaces"]:
        for name, count, _, _, mode in driver.list_vars(peer, ws):
            found[ws, name] = (mode, count, _values(driver, peer, ws, name, mode))
    return found


def _values(driver: StateDriver, peer: bytes, ws: str, name: str, mode: str) -> list:
    values = []
    if mode in ("fifo", "single"):  # iterators walk them in store order without taking them
        cookie = (0, 0)
        while (reply := driver.ifind_try(peer, ws, name, cookie)).ok:
            cookie = reply.meta
            values.append((reply.meta, reply.value))
        assert reply.status == Status.MISSING
        return values
    while (reply := driver.fetch_try(peer, ws, name)).ok:  # LIFO: top first
        values.append((reply.meta, reply.value))
    return sorted(values) if mode == "multi" else values


def after_restart(driver: StateDriver) -> StateDriver:
    """The driver's state as a restart leaves it: every session ended, ``RESTART`` s later."""
    driver.advance(RESTART)
    driver.expire()
    return driver


#: Seconds from the records' last to the restarted state's first request: past every session's
#: liveness timeout (see ``after_restart``).
RESTART = Limits().liveness.timeout + 1


def assert_restores(driver: StateDriver) -> None:
    """A state restored from the driver's records answers as the original after a restart."""
    restored = restarted(driver, later=RESTART)
    assert answers(restored) == answers(after_restart(driver))


# ---------------------------------------------------------------- what comes back


@pytest.mark.parametrize("mode", MODES)
def test_values_come_back_in_order_with_leased_ones_at_the_head(driver, mode) -> None:
    owner, worker = driver.client(), driver.client()
    driver.open_ws(owner, WS, persistent=True)
    driver.declare(owner, WS, "v", mode)
    for value in range(6):
        driver.store(owner, WS, "v", value)
    first = driver.fetch_try(worker, WS, "v")
    second = driver.fetch_try(worker, WS, "v")
    driver.ack(worker, second.request_id)
    driver.store(owner, WS, "v", 6)
    restored = restarted(driver)
    expected = {"fifo": [0, 2, 3, 4, 5, 6], "lifo": [4, 3, 2, 1, 0, 6],
                "single": [6]}.get(mode)
    held = restored.held_values(WS, "v")
    if mode == "lifo":  # the leased top goes back on top: last in the list
        assert held == [0, 1, 2, 3, 6, 5] and first.value == 5
    elif mode == "multi":
        assert sorted(held) == sorted({0, 1, 2, 3, 4, 5, 6} - {second.value})
    else:
        assert held == expected
    assert not restored.state.handoffs.leases
    assert_restores(driver)


def test_a_restored_value_is_byte_identical_and_keeps_its_id_and_sequence(driver) -> None:
    peer = driver.client()
    driver.open_ws(peer, WS, persistent=True)
    payloads = [b"\x00\xffraw", "text", {"nested": [1, 2.5, None]}, bytes(range(256)) * 300]
    for payload in payloads:
        driver.store(peer, WS, "x", payload)
    before = [driver.ifind_try(peer, WS, "x", (0, seq)) for seq in range(len(payloads))]
    restored = restarted(driver)
    probe = restored.connect()
    after = [restored.ifind_try(probe, WS, "x", (0, seq)) for seq in range(len(payloads))]
    assert [(r.meta, r.body, r.extra) for r in after] == [(r.meta, r.body, r.extra)
                                                          for r in before]
    assert [r.value for r in after] == payloads


def test_ids_and_sequences_continue_after_the_highest_ever_given(driver) -> None:
    peer = driver.client()
    driver.open_ws(peer, WS, persistent=True)
    for name in ("a", "b", "c"):
        driver.store(peer, WS, name, 1)
    driver.store(peer, WS, "a", 2)
    driver.fetch_all(peer, WS, "a")  # a's highest sequence is gone
    driver.delete_var(peer, WS, "c")  # and the highest variable id
    restored = restarted(driver)
    probe = restored.connect()
    restored.store(probe, WS, "a", 3)
    restored.store(probe, WS, "d", 4)
    assert restored.find_try(probe, WS, "a").meta == (1, 3)
    assert restored.find_try(probe, WS, "d").meta == (4, 1)


def test_key_value_versions_stay_valid_and_deadlines_absolute(driver) -> None:
    kv = KV(driver, driver.connect())
    kv.store("k", "v1")
    kv.store("k", "v2")
    version = kv.version("k")
    kv.store("soon", 1, ttl=10)
    kv.store("later", 2, ttl=100)
    assert kv.incr("n", 1).status == Status.MISSING
    kv.store("n", 41)
    kv.incr("n", 1)
    driver.advance(5)
    restored = restarted(driver)
    again = KV(restored, restored.connect())
    assert again.version("k") == version
    assert again.store("k", "v3", how="cas", version=version).ok
    assert again.value("n") == 42 and again.value("soon") == 1
    restored.advance(6)  # 11 s after the store: past its deadline, as it was set then
    assert again.value("soon") is None and again.value("later") == 2
    assert_restores(driver)


def test_workspaces_without_owners_and_persistent_ones_stay_owned_ones_go(driver) -> None:
    owner, other = driver.connect(pid=7), driver.connect()
    driver.open_ws(owner, "kept", persistent=True)
    driver.open_ws(owner, "purged")
    driver.use_ws(other, "unowned")
    for ws in ("kept", "purged", "unowned"):
        driver.store(owner, ws, "x", ws)
    restored = restarted(driver)
    probe = restored.connect()
    listed = {name: (mine, label, persistent)
              for name, mine, label, persistent, *_ in restored.list_wss(probe)}
    assert listed == {"__default": (False, "(broker)", True),
                      "kept": (False, "testhost (7)", True),
                      "unowned": (False, "", False)}
    restored.open_ws(probe, "kept")  # its owner is gone, but it stays theirs
    assert restored.list_wss(probe)[1][:3] == ["kept", False, "testhost (7)"]
    restored.open_ws(probe, "purged")  # the name is free again
    assert restored.list_vars(probe, "purged") == []
    assert_restores(driver)


def test_the_restart_records_a_purge_and_a_value_put_back(driver) -> None:
    owner, worker = driver.client(), driver.client()
    driver.open_ws(owner, "mine")
    driver.open_ws(owner, WS, persistent=True)
    driver.store(owner, WS, "q", "task")
    driver.fetch(worker, WS, "q")
    [var_id] = {r.var_id for r in driver.changes if isinstance(r, changes.Taken)}
    report, made = restore(BrokerState(), driver.changes)
    assert made == [changes.WorkspaceDeleted("mine"), changes.Returned(var_id, 1, False)]
    assert (report.purged, report.returned, report.values) == (["mine"], 1, 1)


def test_a_value_counts_its_holders_ends_but_not_the_restart(driver) -> None:
    master, worker = driver.client(), driver.client()
    driver.open_ws(master, WS, persistent=True)
    store_many(driver, master, "tasks", ["a", "b"])
    fetch_many(driver, worker, "tasks", 1)
    driver.bye(worker)  # "a" came back once
    worker = driver.client()
    fetch_many(driver, worker, "tasks", 1)  # and is held again when the broker stops
    restored = restarted(driver)
    probe = restored.connect()
    assert decode_many(restored.reply(probe, fetch_many(restored, probe, "tasks", 5))) == \
        [("a", 1), ("b", 0)]


def test_shared_queues_keep_their_messages_and_receive_new_ones(driver) -> None:
    consumer = driver.connect()
    assert driver.call(consumer, Op.MQ_QUEUE, [b"task:*"]).ok
    for n in range(3):
        publish(driver, consumer, "task:run", n, reply=True)
    held = driver.fetch_try(consumer, "__mq", "task:*")
    restored = restarted(driver)
    probe = restored.connect()
    assert publish(restored, probe, "task:run", 3, reply=True).body == b"1"
    assert restored.fetch_all(probe, "__mq", "task:*") == [held.value, 1, 2, 3]


def test_a_variable_made_by_a_blocked_read_comes_back_without_a_fixed_mode(driver) -> None:
    peer = driver.client()
    driver.open_ws(peer, WS, persistent=True)
    driver.fetch(peer, WS, "later")
    restored = restarted(driver)
    probe = restored.connect()
    assert restored.var_counts(probe, WS) == {"later": (0, 0, 0, "fifo")}
    assert restored.declare(probe, WS, "later", "lifo").ok


def test_a_misfit_record_raises_when_strict_and_is_reported_otherwise() -> None:
    records = [changes.WorkspaceCreated("w", True, None, ""),
               changes.Taken(99, 1),
               changes.Declared("w", "x", 1, "fifo", True)]
    with pytest.raises(RestoreError, match="no variable with id 99"):
        restore(BrokerState(), records)
    state = BrokerState()
    report, _ = restore(state, records, strict=False)
    assert report.records == 2 and len(report.misfits) == 1 and "Taken" in report.misfits[0]
    assert state.spaces.get("w").variables["x"].id == 1


# ---------------------------------------------------------------- snapshots


def snapshot_records(driver: StateDriver) -> list:
    return list(Snapshot(driver.state).records())


def test_a_snapshot_rebuilds_what_the_history_does(driver) -> None:
    owner, worker = driver.connect(pid=3), driver.client()
    driver.open_ws(owner, WS, persistent=True)
    driver.open_ws(owner, "mine")
    for name, mode in zip("abcd", MODES):
        driver.declare(owner, WS, name, mode)
        for value in range(4):
            driver.store(owner, WS, name, value)
        driver.fetch_try(worker, WS, name)
    driver.delete_var(owner, WS, "d")
    KV(driver, owner).store("key", "value", ttl=30)
    driver.call(owner, Op.MQ_QUEUE, [b"q:*"])
    publish(driver, owner, "q:x", "m", reply=True)
    store_many(driver, owner, "tasks", ["t1", "t2"])
    fetch_many(driver, worker, "tasks", 2)
    driver.bye(worker)
    records = snapshot_records(driver)
    assert len(records) < len(driver.changes)
    check_restore(records, driver.state)
    assert answers(restarted(driver, records)) == answers(restarted(driver))


def test_a_snapshot_is_the_state_when_it_was_taken(driver) -> None:
    """Records made after the snapshot follow it in a compacted log: together they rebuild the
    state as it is at the end, though the snapshot's records were read out afterwards."""
    peer, worker = driver.client(), driver.client()
    driver.open_ws(peer, WS, persistent=True)
    for value in range(5):
        driver.store(peer, WS, "q", value)
    held = driver.fetch_try(worker, WS, "q")
    snapshot = Snapshot(driver.state)
    since = len(driver.changes)
    driver.ack(worker, held.request_id)
    driver.fetch_all(peer, WS, "q")
    driver.store(peer, WS, "q", "new")
    driver.delete_var(peer, WS, "gone")
    driver.store(peer, WS, "gone", 1)
    check_restore([*snapshot.records(), *driver.changes[since:]], driver.state)


# ---------------------------------------------------------------- random histories


class History:
    """Random requests of an owner, two workers and a key-value client over a persistent
    workspace, a non-persistent one, key-value entries with deadlines and a shared queue."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.d = d = StateDriver(rng=random.Random(0))
        self.owner = d.connect(pid=1)
        d.open_ws(self.owner, WS, persistent=True)
        d.open_ws(self.owner, "np")
        self.workers = [d.client(WS), d.client(WS)]
        self.kv = KV(d, d.connect(pid=2))
        d.call(self.owner, Op.MQ_QUEUE, [b"job:*"])
        self.leases: list[tuple[bytes, int]] = []
        self.counter = 0

    def step(self) -> None:
        rnd, d = self.rnd, self.d
        ws = rnd.choice((WS, WS, "np"))
        name = rnd.choice("abc")
        peer = rnd.choice([self.owner, *self.workers])
        op = rnd.randrange(14)
        self.counter += 1
        if op == 0:
            d.declare(peer, ws, name, rnd.choice(MODES))
        elif op in (1, 2):
            d.store(peer, ws, name, (self.counter, "x" * rnd.randrange(40)))
        elif op == 3:
            reply = d.fetch_try(peer, ws, name)
            if reply.ok:
                self.leases.append((peer, reply.request_id))
        elif op == 4:
            self.leases.append((peer, d.fetch(peer, ws, name)))
        elif op == 5 and self.leases:
            peer, request_id = self.leases.pop(rnd.randrange(len(self.leases)))
            if rnd.random() < 0.5:
                d.ack(peer, request_id)
            else:
                d.cancel(peer, request_id)
        elif op == 6:
            d.delete_var(peer, ws, name)
        elif op == 7:
            how = rnd.choice(("set", "add", "replace", "cas", "append"))
            key = rnd.choice(("k1", "k2", "k3"))
            got = self.kv.get(key)
            version = got.meta[0] << 32 | got.meta[1] if got.ok else 0
            self.kv.store(key, b"%d" % self.counter, how, rnd.choice((0, 0, 2, 50)), version)
        elif op == 8:
            self.kv.incr(rnd.choice(("k1", "k2")), rnd.randrange(5))
            self.kv.d.call(self.kv.peer, Op.KV_DELETE, [b"kv", rnd.choice((b"k1", b"k3"))])
        elif op == 9:
            d.advance(rnd.choice((0.5, 1.0, 3.0)))
            for each in (self.owner, *self.workers, self.kv.peer):
                d.heartbeat(each)
            d.expire()
        elif op == 10:
            publish(d, peer, "job:x", self.counter, reply=True)
            reply = d.fetch_try(peer, "__mq", "job:*")
            if reply.ok and rnd.random() < 0.5:
                d.ack(peer, reply.request_id)
        elif op == 11:
            store_many(d, self.owner, "tasks", [self.counter, -self.counter])
            self.leases.append((peer, fetch_many(d, peer, "tasks", rnd.randrange(1, 4))))
        elif op == 12:  # a worker's process dies: what it held comes back, counted
            index = rnd.randrange(2)
            dead = self.workers[index]
            self.leases = [key for key in self.leases if key[0] != dead]
            d.bye(dead)
            self.workers[index] = d.client(WS)
        elif op == 13 and rnd.random() < 0.3:
            d.delete_ws(self.owner, "np")
            d.open_ws(self.owner, "np")
        d.take_all()


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(rnd=st.randoms(use_true_random=False), steps=st.integers(1, 120),
       split=st.floats(0, 1))
def test_random_histories_restore_from_their_records_and_from_a_snapshot(rnd, steps, split):
    history = History(rnd)
    d = history.d
    cut = int(steps * split)
    for _ in range(cut):
        history.step()
    snapshot, since = Snapshot(d.state), len(d.changes)
    for _ in range(steps - cut):
        history.step()
    compacted = [*snapshot.records(), *d.changes[since:]]
    check_restore(d.changes, d.state)
    check_restore(compacted, d.state)
    from_history = answers(restarted(d, later=RESTART))
    from_snapshot = answers(restarted(d, compacted, later=RESTART))
    assert from_history == from_snapshot
    if not returns_depend_on_order(d.state):
        assert from_history == answers(after_restart(d))


def returns_depend_on_order(state: BrokerState) -> bool:
    """Whether values leased to several sessions wait to go back to one LIFO or SINGLE
    variable. Sessions that end one after another put them back in the order they end (the
    last one's on top, or the first one's in the variable); a restart puts them back together,
    in store order (the newest on top, or the newest in the variable)."""
    holders: dict[int, set] = {}
    for var, _, session in state.handoffs.leases.values():
        if var.mode in ("lifo", "single"):
            holders.setdefault(var.id, set()).add(session.id)
    return any(len(sessions) > 1 for sessions in holders.values())
