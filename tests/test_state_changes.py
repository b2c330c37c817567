"""Unit tests of what the broker state returns besides replies: the change records of each kind
of request (``broker.state.changes``), the notices and the shared-memory files to release, and
requests that change nothing. Every test here and in the other state tests also ends with a
replay check (conftest): a replica fed only the records holds what the state holds."""

from __future__ import annotations

import random

import pytest

from .change_replica import Replica, state_view
from .state_driver import StateDriver
from workbench import codec
from workbench.broker.state import (
    BrokerState, Comparison, FileFrames, Limits, Release, SharedMemory, changes,
)
from workbench.protocol import Kind, Op, Status, request_head
from workbench.shm import SHARED

WS = "ws"


@pytest.fixture
def driver() -> StateDriver:
    return StateDriver(rng=random.Random(0))


def test_a_store_fetch_and_acknowledgement_are_stored_taken_removed(driver: StateDriver):
    peer = driver.client(WS)
    driver.new_changes()
    driver.store(peer, WS, "x", 42)
    [declared, stored] = driver.new_changes()
    assert declared == changes.Declared(WS, "x", declared.var_id, "fifo", True)
    assert stored == changes.Stored(WS, "x", declared.var_id, 1, stored.frames,
                                    sum(map(len, codec.encode(42))), None)
    assert codec.decode(stored.frames) == 42
    request_id = driver.fetch(peer, WS, "x")
    assert driver.new_changes() == [changes.Taken(declared.var_id, 1)]
    driver.ack(peer, request_id)
    assert driver.new_changes() == [changes.Removed(declared.var_id, 1)]


def test_reads_and_listings_change_nothing(driver: StateDriver):
    peer = driver.client(WS)
    driver.store(peer, WS, "x", 1)
    driver.new_changes()
    driver.find_try(peer, WS, "x")
    driver.list_vars(peer, WS)
    driver.list_wss(peer)
    driver.status(peer)
    driver.heartbeat(peer)
    assert driver.new_changes() == []


def test_a_hand_off_is_stored_then_taken_and_a_cancel_returns_it(driver: StateDriver):
    fetcher, storer = driver.client(WS), driver.client(WS)
    driver.new_changes()
    request_id = driver.fetch(fetcher, WS, "q")
    [declared] = driver.new_changes()
    assert not declared.fixed  # only a blocked read made it: a declare may still pick its mode
    driver.store(storer, WS, "q", "v")
    assert [type(r) for r in driver.new_changes()] == [changes.Declared, changes.Stored,
                                                  changes.Taken]
    driver.cancel(fetcher, request_id)
    assert driver.new_changes() == [changes.Returned(declared.var_id, 1, False)]


def test_values_held_by_a_session_that_ends_come_back_counting_it(driver: StateDriver):
    owner, worker = driver.client(WS), driver.client(WS)
    for value in ("a", "b"):
        driver.store(owner, WS, "tasks", value)
    driver.fetch(worker, WS, "tasks")
    driver.fetch(worker, WS, "tasks")
    driver.new_changes()
    driver.bye(worker)
    [first, second] = driver.new_changes()
    assert (first.seq, second.seq) == (1, 2) and first.holder_ended and second.holder_ended


def test_a_single_variable_replaces_its_value_with_a_record_for_each(driver: StateDriver):
    peer = driver.client(WS)
    driver.declare(peer, WS, "s", "single")
    driver.store(peer, WS, "s", 1)
    driver.new_changes()
    driver.store(peer, WS, "s", 2)
    stored, removed = driver.new_changes()
    assert (stored.seq, removed) == (2, changes.Removed(stored.var_id, 1))


def test_workspaces_created_claimed_and_purged_with_their_owner(driver: StateDriver):
    user, owner = driver.connect(), driver.connect(pid=7)
    driver.new_changes()
    driver.use_ws(user, "shared")
    driver.open_ws(owner, "shared")  # nobody owned it: now this session does
    driver.open_ws(owner, "mine")
    driver.store(owner, "mine", "x", 1)
    created, claimed, mine, *_ = driver.new_changes()
    owner_id = owner[:16]
    assert created == changes.WorkspaceCreated("shared", False, None, "")
    assert claimed == changes.WorkspaceClaimed("shared", False, owner_id, "testhost (7)")
    assert mine == changes.WorkspaceCreated("mine", False, owner_id, "testhost (7)")
    driver.bye(owner)
    assert sorted(driver.new_changes()) == [changes.WorkspaceDeleted("mine"),
                                       changes.WorkspaceDeleted("shared")]


def test_a_mode_chosen_later_and_a_deleted_variable(driver: StateDriver):
    peer = driver.client(WS)
    driver.new_changes()
    driver.fetch(peer, WS, "v")  # created by the blocked read, any mode still allowed
    [created] = driver.new_changes()
    driver.declare(peer, WS, "v", "lifo")
    assert driver.new_changes() == [changes.Declared(WS, "v", created.var_id, "lifo", True)]
    driver.delete_var(peer, WS, "v")
    assert driver.new_changes() == [changes.VariableDeleted(WS, "v", created.var_id)]


def test_key_value_deadlines_and_expiry(driver: StateDriver):
    peer = driver.client("kv")
    driver.new_changes()
    first = codec.encode("v")[0]
    driver.call(peer, Op.KV_STORE, [b"kv", b"k", b"set", b"10", b"", first])
    declared, stored, expires = driver.new_changes()
    assert declared.mode == "single" and expires == changes.Expires(stored.var_id, 10.0)
    driver.advance(11)
    driver.heartbeat(peer)
    driver.expire()
    assert driver.new_changes() == [changes.Expires(stored.var_id, None),
                               changes.Removed(stored.var_id, 1),
                               changes.VariableDeleted("kv", "k", stored.var_id)]


def test_a_shared_queue_is_declared_once(driver: StateDriver):
    peer = driver.connect()
    for _ in range(2):
        assert driver.call(peer, Op.MQ_QUEUE, [b"jobs:*"]).ok
    assert [type(r) for r in driver.new_changes()] == [
        changes.WorkspaceCreated, changes.Declared, changes.QueueDeclared]


def test_notices_say_who_came_and_went(driver: StateDriver):
    peer = driver.connect(pid=5)
    driver.bye(peer)
    assert driver.notices == ["client connected: testhost (5)",
                              "client disconnected: testhost (5) (closed)"]


def test_a_replica_that_misses_a_record_differs(driver: StateDriver):
    peer = driver.client(WS)
    driver.store(peer, WS, "x", 1)
    driver.store(peer, WS, "x", 2)
    replica = Replica()
    replica.apply_all(driver.changes[:-1])
    assert replica.view() != state_view(driver.state)


# ---------------------------------------------------------------- shared memory, at the edge

PID = 4242
REFERENCE = b"workbench-%d-ab-cd:1000" % PID
#: A value whose one extra frame (1000 bytes) lives in the file REFERENCE names.
SHARED_FIRST = bytes([Kind.BYTES, SHARED]) + (1).to_bytes(2, "little")


def shared_state() -> tuple[BrokerState, bytes]:
    """A state that shares memory with a client, and that client's peer."""
    state = BrokerState(Limits(), random.Random(0), 0.0, SharedMemory("box", PID))
    peer = b"s" * 16 + b"\0\0"
    state.handle(peer, request_head(Op.HELLO, 1, [b'{"shm": "box"}']), [], 0.0)
    state.handle(peer, request_head(Op.USE_WS, 2, [WS.encode(), b"1"]), [], 0.0)
    return state, peer


def status_of(effects) -> int:
    return effects.messages[0][1][0][1]


def test_the_state_takes_a_file_only_as_the_server_found_it():
    state, peer = shared_state()
    store = request_head(Op.STORE, 3, [WS.encode(), b"big", SHARED_FIRST])
    effects = state.handle(peer, store, [REFERENCE], 0.0)  # the server found no such file
    assert status_of(effects) == Status.BAD_REQUEST
    assert b"unreadable" in effects.messages[0][1][0]
    effects = state.handle(peer, store, [REFERENCE], 0.0, files={REFERENCE: 999})
    assert b"holds 999 bytes, not 1000" in effects.messages[0][1][0]
    effects = state.handle(peer, store, [REFERENCE], 0.0, files={REFERENCE: 1000})
    assert status_of(effects) == Status.OK
    assert [type(r) for r in effects.changes] == [changes.Declared, changes.Stored]
    assert effects.changes[1].shared == REFERENCE and effects.changes[1].size == 1004


def test_a_remote_reader_gets_the_file_read_at_the_edge():
    state, owner = shared_state()
    state.handle(owner, request_head(Op.STORE, 3, [WS.encode(), b"big", SHARED_FIRST]),
                 [REFERENCE], 0.0, files={REFERENCE: 1000})
    remote = b"r" * 16 + b"\0\0"
    state.handle(remote, request_head(Op.HELLO, 1, [b"{}"]), [], 0.0)
    effects = state.handle(remote, request_head(Op.FETCH_TRY, 2, [WS.encode(), b"big"]), [], 0.0)
    assert effects.reads == [0]
    [(peer, [head, placeholder])] = effects.messages
    assert peer == remote and placeholder == FileFrames(REFERENCE)
    assert head[2] == 1  # the file's one frame takes the placeholder's place
    # The server could not read it (removed behind the broker's back): the value is gone.
    effects = state.file_unreadable(remote, head, REFERENCE, "gone")
    assert status_of(effects) == Status.INTERNAL
    assert b"shared-memory file is gone: gone" in effects.messages[0][1][0]
    assert effects.released == [Release(REFERENCE, False)]
    assert [type(r) for r in effects.changes] == [changes.Removed]


def test_a_compare_and_swap_against_a_file_waits_for_the_servers_comparison():
    state, peer = shared_state()
    kv_store = request_head(Op.KV_STORE, 3, [WS.encode(), b"k", b"set", b"0", b"",
                                             SHARED_FIRST])
    assert status_of(state.handle(peer, kv_store, [REFERENCE], 0.0,
                                  files={REFERENCE: 1000})) == Status.OK
    new = codec.encode("new")
    comparand = [SHARED_FIRST[:1] + b"\0" + SHARED_FIRST[2:], b"y" * 1000]
    swap = request_head(Op.KV_COMPARE_SWAP, 4, [WS.encode(), b"k", b"0", new[0]])
    effects = state.handle(peer, swap, [*new[1:], *comparand], 0.0)
    assert effects.comparison == Comparison(REFERENCE, comparand[1:])
    assert effects.changes == []  # nothing swapped: the file's bytes decide
    effects = state.compared(True)
    assert [type(r) for r in effects.changes] == [changes.Removed, changes.Stored]
    assert effects.released == [Release(REFERENCE, True)]  # the reply sent it: a grace
    effects = state.handle(peer, swap, [*new[1:], comparand[0], b"y" * 999], 0.0)
    assert status_of(effects) == Status.OK  # the old value, not swapped: sizes differ
    assert effects.comparison is None and effects.changes == []
