"""Unit tests of the broker's pure state machine (``workbench.broker.state``).

Each test drives ``BrokerState`` through ``StateDriver`` (request heads in, decoded replies out,
a clock the test controls) and asserts behaviour a NetWorkSpaces user can see:

* variable modes: FIFO, LIFO, SINGLE order; MULTI delivers each value once in a seeded random
  order; a store creates a FIFO variable; declaring and redeclaring modes;
* blocking: fetch and find wait on an empty variable; a store serves waiting fetchers in arrival
  order, one value each, and every waiting finder;
* deleteVar, deleteWs and purges fail blocked callers with the right status;
* iterators: ifind and ifindTry cookies, ITERATOR_INVALID, refusal on LIFO and MULTI;
* leases: CANCEL and session expiry put unacknowledged values back at the head, acknowledged
  values never come back;
* workspace ownership and persistence, listings, mktempWs templates;
* the memory cap, malformed requests, unknown ops and bad names.
"""

from __future__ import annotations

import random

import pytest

from .state_driver import StateDriver, value_size
from workbench import protocol
from workbench.broker.state import Limits
from workbench.protocol import FLAG_ACKS, Op, Status

WS = "work"
OWNER_PID = 4242


@pytest.fixture
def driver() -> StateDriver:
    return StateDriver(rng=random.Random(0))


@pytest.fixture
def owner(driver: StateDriver) -> bytes:
    """A session that opened (and so owns) the non-persistent workspace ``WS``."""
    peer = driver.connect(pid=OWNER_PID, host="ownerhost")
    assert driver.open_ws(peer, WS).ok
    return peer


@pytest.fixture
def other(driver: StateDriver, owner: bytes) -> bytes:
    """A second session that uses ``WS`` without owning it."""
    return driver.client(WS)


def store_all(driver: StateDriver, peer: bytes, var: str, values, ws: str = WS) -> None:
    for value in values:
        assert driver.store(peer, ws, var, value).ok


def expire_silent(driver: StateDriver, *alive: bytes) -> None:
    """Let the liveness timeout pass; the ``alive`` peers speak just before the state looks."""
    driver.advance(driver.timeout + 1)
    for peer in alive:
        assert driver.heartbeat(peer).ok
    driver.expire()


def no_reply(driver: StateDriver, peer: bytes, request_id: int) -> bool:
    return driver.reply(peer, request_id) is None


# ------------------------------------------------------------------------- modes


def test_fifo_fetches_values_in_store_order(driver, owner):
    store_all(driver, owner, "x", ["a", "b", "c"])
    assert driver.fetch_all(owner, WS, "x") == ["a", "b", "c"]


def test_lifo_fetches_newest_value_first(driver, owner):
    assert driver.declare(owner, WS, "x", "lifo").ok
    store_all(driver, owner, "x", ["a", "b", "c"])
    assert driver.fetch_all(owner, WS, "x") == ["c", "b", "a"]


def test_single_keeps_only_the_last_value_and_a_fetch_empties_it(driver, owner):
    assert driver.declare(owner, WS, "x", "single").ok
    store_all(driver, owner, "x", ["a", "b", "c"])
    assert driver.var_counts(owner, WS)["x"] == (1, 0, 0, "single")
    assert driver.fetch_all(owner, WS, "x") == ["c"]
    assert driver.fetch_try(owner, WS, "x").status == Status.MISSING


def test_single_overwrite_frees_the_replaced_value(driver, owner):
    assert driver.declare(owner, WS, "x", "single").ok
    store_all(driver, owner, "x", ["a" * 100, "b"])
    assert driver.state.memory.used == value_size("b")


@pytest.mark.parametrize("mode, head", [("fifo", 1), ("lifo", 3), ("single", 3)])
def test_find_try_returns_the_head_without_removing_it(driver, owner, mode, head):
    assert driver.declare(owner, WS, "x", mode).ok
    store_all(driver, owner, "x", [1, 2, 3])
    assert [driver.find_try(owner, WS, "x").value for _ in range(3)] == [head] * 3
    assert driver.fetch_try(owner, WS, "x").value == head


def multi_fetch_order(seed: int, values) -> list:
    driver = StateDriver(rng=random.Random(seed))
    peer = driver.client(WS, open=True)
    assert driver.declare(peer, WS, "x", "multi").ok
    store_all(driver, peer, "x", values)
    return driver.fetch_all(peer, WS, "x")


def test_multi_returns_every_value_exactly_once():
    values = list(range(20))
    fetched = multi_fetch_order(1, values)
    assert sorted(fetched) == values


def test_multi_order_depends_on_the_random_generator():
    values = list(range(20))
    orders = {tuple(multi_fetch_order(seed, values)) for seed in (1, 2)}
    assert len(orders) == 2
    assert tuple(values) not in orders and tuple(reversed(values)) not in orders


def test_multi_order_is_reproducible_with_a_fixed_seed():
    values = list(range(20))
    assert multi_fetch_order(7, values) == multi_fetch_order(7, values)


# ------------------------------------------------------------------------- declarations


def test_a_store_creates_a_fifo_variable(driver, owner):
    assert driver.store(owner, WS, "x", 1).ok
    assert driver.list_vars(owner, WS) == [["x", 1, 0, 0, "fifo"]]


@pytest.mark.parametrize("first, second", [("fifo", "lifo"), ("lifo", "multi"),
                                           ("multi", "single"), ("single", "fifo")])
def test_redeclaring_another_mode_fails(driver, owner, first, second):
    assert driver.declare(owner, WS, "x", first).ok
    reply = driver.declare(owner, WS, "x", second)
    assert reply.status == Status.DECLARATION_FAILED
    assert driver.var_counts(owner, WS)["x"][3] == first


def test_declaring_a_variable_created_by_a_store_with_another_mode_fails(driver, owner):
    assert driver.store(owner, WS, "x", 1).ok
    assert driver.declare(owner, WS, "x", "lifo").status == Status.DECLARATION_FAILED


@pytest.mark.parametrize("mode", ["fifo", "lifo", "multi", "single"])
def test_redeclaring_the_same_mode_is_fine(driver, owner, mode):
    assert driver.declare(owner, WS, "x", mode).ok
    assert driver.declare(owner, WS, "x", mode).ok
    assert driver.declare(owner, WS, "x", mode.upper()).ok


def test_unknown_mode_is_a_bad_request(driver, owner):
    assert driver.declare(owner, WS, "x", "stack").status == Status.BAD_REQUEST
    assert driver.list_vars(owner, WS) == []


def test_a_variable_created_only_by_a_blocked_fetch_can_still_be_declared(driver, owner, other):
    waiting = driver.fetch(other, WS, "x")
    assert driver.var_counts(owner, WS)["x"] == (0, 1, 0, "fifo")
    assert driver.declare(owner, WS, "x", "lifo").ok
    assert driver.declare(owner, WS, "x", "fifo").status == Status.DECLARATION_FAILED
    store_all(driver, owner, "x", ["first"])
    assert driver.reply(other, waiting).value == "first"
    store_all(driver, owner, "x", ["a", "b"])
    assert driver.fetch_all(owner, WS, "x") == ["b", "a"]


# ------------------------------------------------------------------------- blocking


def test_fetch_on_an_empty_variable_blocks_until_a_store(driver, owner, other):
    waiting = driver.fetch(other, WS, "x")
    assert no_reply(driver, other, waiting)
    store_all(driver, owner, "x", ["v"])
    assert driver.reply(other, waiting).value == "v"
    assert driver.var_counts(owner, WS)["x"] == (0, 0, 0, "fifo")


def test_find_on_an_empty_variable_blocks_until_a_store(driver, owner, other):
    waiting = driver.find(other, WS, "x")
    assert no_reply(driver, other, waiting)
    assert driver.var_counts(owner, WS)["x"] == (0, 0, 1, "fifo")
    store_all(driver, owner, "x", ["v"])
    assert driver.reply(other, waiting).value == "v"
    assert driver.var_counts(owner, WS)["x"] == (1, 0, 0, "fifo")


def test_waiting_fetchers_are_served_in_arrival_order_one_value_each(driver, owner):
    fetchers = [driver.client(WS) for _ in range(3)]
    waiting = [(peer, driver.fetch(peer, WS, "x")) for peer in fetchers]
    store_all(driver, owner, "x", ["v1", "v2"])
    assert [driver.reply(peer, rid).value for peer, rid in waiting[:2]] == ["v1", "v2"]
    assert no_reply(driver, *waiting[2])
    assert driver.var_counts(owner, WS)["x"] == (0, 1, 0, "fifo")
    store_all(driver, owner, "x", ["v3"])
    assert driver.reply(*waiting[2]).value == "v3"
    assert driver.take_all() == []


def test_every_waiting_finder_gets_the_value_and_it_stays(driver, owner):
    finders = [driver.client(WS) for _ in range(3)]
    waiting = [(peer, driver.find(peer, WS, "x")) for peer in finders]
    store_all(driver, owner, "x", ["seen by all"])
    assert [driver.reply(peer, rid).value for peer, rid in waiting] == ["seen by all"] * 3
    assert driver.fetch_all(owner, WS, "x") == ["seen by all"]


def test_a_store_reaches_waiting_finders_and_then_one_fetcher(driver, owner):
    finder, fetchers = driver.client(WS), [driver.client(WS) for _ in range(2)]
    find = driver.find(finder, WS, "x")
    fetches = [(peer, driver.fetch(peer, WS, "x")) for peer in fetchers]
    store_all(driver, owner, "x", ["v"])
    assert driver.reply(finder, find).value == "v"
    assert driver.reply(*fetches[0]).value == "v"
    assert no_reply(driver, *fetches[1])
    assert driver.var_counts(owner, WS)["x"] == (0, 1, 0, "fifo")


def test_fetch_try_and_find_try_on_an_empty_variable_report_missing(driver, owner):
    assert driver.fetch_try(owner, WS, "x").status == Status.MISSING
    assert driver.find_try(owner, WS, "x").status == Status.MISSING
    assert driver.list_vars(owner, WS) == []


def test_reads_of_a_missing_workspace_report_no_workspace(driver, owner):
    for op in (Op.FETCH, Op.FETCH_TRY, Op.FIND, Op.FIND_TRY):
        request_id = driver.read(owner, op, "nowhere", "x")
        assert driver.reply(owner, request_id).status == Status.NO_WORKSPACE
    assert driver.store(owner, "nowhere", "x", 1).status == Status.NO_WORKSPACE


# ------------------------------------------------------------------------- deletion


def test_delete_var_destroys_values_and_fails_blocked_callers(driver, owner, other):
    store_all(driver, owner, "full", [1, 2])
    fetch = driver.fetch(other, WS, "empty")
    find = driver.find(other, WS, "empty")
    assert driver.delete_var(owner, WS, "full").ok
    assert driver.delete_var(owner, WS, "empty").ok
    assert driver.reply(other, fetch).status == Status.VARIABLE_DELETED
    assert driver.reply(other, find).status == Status.VARIABLE_DELETED
    assert driver.list_vars(owner, WS) == []
    assert driver.fetch_try(owner, WS, "full").status == Status.MISSING
    assert driver.state.memory.used == 0


def test_delete_ws_fails_blocked_callers_and_later_requests(driver, owner, other):
    store_all(driver, owner, "x", [1])
    fetch = driver.fetch(other, WS, "y")
    find = driver.find(other, WS, "z")
    assert driver.delete_ws(owner, WS).ok
    assert driver.reply(other, fetch).status == Status.NO_WORKSPACE
    assert driver.reply(other, find).status == Status.NO_WORKSPACE
    assert driver.store(other, WS, "x", 2).status == Status.NO_WORKSPACE
    assert driver.fetch_try(other, WS, "x").status == Status.NO_WORKSPACE
    assert WS not in [row[0] for row in driver.list_wss(other)]
    assert driver.state.memory.used == 0


def test_delete_ws_of_a_missing_workspace_reports_no_workspace(driver, owner):
    assert driver.delete_ws(owner, "nowhere").status == Status.NO_WORKSPACE


def test_a_reopened_workspace_after_deletion_is_a_fresh_instance(driver, owner):
    store_all(driver, owner, "x", [1])
    assert driver.delete_ws(owner, WS).ok
    assert driver.open_ws(owner, WS).ok
    assert driver.list_vars(owner, WS) == []


# ------------------------------------------------------------------------- iterators


def test_ifind_never_repeats_a_value_and_blocks_at_the_end(driver, owner, other):
    store_all(driver, owner, "x", ["a", "b"])
    cookie, seen = (0, 0), []
    for _ in range(2):
        reply = driver.reply(other, driver.ifind(other, WS, "x", cookie))
        seen.append(reply.value)
        cookie = reply.meta
    assert seen == ["a", "b"]
    waiting = driver.ifind(other, WS, "x", cookie)
    assert no_reply(driver, other, waiting)
    store_all(driver, owner, "x", ["c"])
    assert driver.reply(other, waiting).value == "c"
    assert driver.var_counts(owner, WS)["x"] == (3, 0, 0, "fifo")


def test_ifind_try_reports_missing_at_the_end_and_continues_with_new_values(driver, owner):
    store_all(driver, owner, "x", ["a", "b"])
    cookie, seen = (0, 0), []
    while (reply := driver.ifind_try(owner, WS, "x", cookie)).ok:
        seen.append(reply.value)
        cookie = reply.meta
    assert seen == ["a", "b"]
    assert reply.status == Status.MISSING
    store_all(driver, owner, "x", ["c"])
    reply = driver.ifind_try(owner, WS, "x", cookie)
    assert reply.value == "c"
    assert driver.ifind_try(owner, WS, "x", reply.meta).status == Status.MISSING


def test_ifind_skips_values_fetched_meanwhile(driver, owner, other):
    store_all(driver, owner, "x", ["a", "b", "c"])
    first = driver.ifind_try(owner, WS, "x")
    assert first.value == "a"
    for expected in ("a", "b"):
        handed_out = driver.fetch_try(other, WS, "x")
        assert handed_out.value == expected
        driver.ack(other, handed_out.request_id)
    assert driver.ifind_try(owner, WS, "x", first.meta).value == "c"


def test_ifind_on_a_single_variable_sees_each_new_value(driver, owner):
    assert driver.declare(owner, WS, "x", "single").ok
    store_all(driver, owner, "x", ["a"])
    reply = driver.ifind_try(owner, WS, "x")
    assert reply.value == "a"
    assert driver.ifind_try(owner, WS, "x", reply.meta).status == Status.MISSING
    store_all(driver, owner, "x", ["b"])
    assert driver.ifind_try(owner, WS, "x", reply.meta).value == "b"


def test_an_iterator_over_a_deleted_and_recreated_variable_is_invalid(driver, owner):
    store_all(driver, owner, "x", ["a"])
    cookie = driver.ifind_try(owner, WS, "x").meta
    assert driver.delete_var(owner, WS, "x").ok
    store_all(driver, owner, "x", ["b"])
    assert driver.ifind_try(owner, WS, "x", cookie).status == Status.ITERATOR_INVALID
    waiting = driver.ifind(owner, WS, "x", cookie)
    assert driver.reply(owner, waiting).status == Status.ITERATOR_INVALID
    assert driver.ifind_try(owner, WS, "x", (0, 0)).value == "b"  # reset() starts over


@pytest.mark.parametrize("op", [Op.IFETCH, Op.IFETCH_TRY, Op.IFIND, Op.IFIND_TRY])
@pytest.mark.parametrize("mode", ["lifo", "multi"])
def test_iterators_are_refused_on_lifo_and_multi_variables(driver, owner, op, mode):
    assert driver.declare(owner, WS, "x", mode).ok
    store_all(driver, owner, "x", [1])
    reply = driver.reply(owner, driver.read(owner, op, WS, "x", (0, 0)))
    assert reply.status == Status.BAD_REQUEST
    assert driver.var_counts(owner, WS)["x"] == (1, 0, 0, mode)


def test_ifetch_try_consumes_in_fifo_order(driver, owner):
    store_all(driver, owner, "x", ["a", "b"])
    first = driver.ifetch_try(owner, WS, "x")
    second = driver.ifetch_try(owner, WS, "x", first.meta)
    assert [first.value, second.value] == ["a", "b"]
    assert driver.ifetch_try(owner, WS, "x", second.meta).status == Status.MISSING


# ------------------------------------------------------------------------- cancel and leases


def test_cancel_of_a_blocked_fetch_removes_it_and_a_later_store_is_kept(driver, owner, other):
    waiting = driver.fetch(other, WS, "x")
    assert driver.cancel(other, waiting).status == Status.CANCELLED
    assert driver.var_counts(owner, WS)["x"] == (0, 0, 0, "fifo")
    store_all(driver, owner, "x", ["kept"])
    assert no_reply(driver, other, waiting)
    assert driver.fetch_all(owner, WS, "x") == ["kept"]


def test_cancel_of_a_blocked_find_removes_it(driver, owner, other):
    waiting = driver.find(other, WS, "x")
    assert driver.cancel(other, waiting).status == Status.CANCELLED
    store_all(driver, owner, "x", ["v"])
    assert no_reply(driver, other, waiting)
    assert driver.var_counts(owner, WS)["x"] == (1, 0, 0, "fifo")


@pytest.mark.parametrize("mode, stored, taken, after_cancel", [
    ("fifo", ["a", "b", "c"], "a", ["a", "b", "c"]),
    ("lifo", ["a", "b", "c"], "c", ["c", "b", "a"]),
    ("single", ["a"], "a", ["a"]),
])
def test_cancel_after_handout_puts_the_unacknowledged_value_back_at_the_head(
        driver, owner, other, mode, stored, taken, after_cancel):
    assert driver.declare(owner, WS, "x", mode).ok
    store_all(driver, owner, "x", stored)
    handed_out = driver.fetch_try(other, WS, "x")
    assert handed_out.value == taken
    assert driver.cancel(other, handed_out.request_id).status == Status.CANCELLED
    assert driver.fetch_all(owner, WS, "x") == after_cancel


def test_cancel_after_handout_serves_a_waiting_fetcher(driver, owner, other):
    store_all(driver, owner, "x", ["v"])
    handed_out = driver.fetch_try(other, WS, "x")
    third = driver.client(WS)
    waiting = driver.fetch(third, WS, "x")
    driver.cancel(other, handed_out.request_id)
    assert driver.reply(third, waiting).value == "v"


def test_a_returned_single_value_does_not_overwrite_a_newer_one(driver, owner, other):
    assert driver.declare(owner, WS, "x", "single").ok
    store_all(driver, owner, "x", ["old"])
    handed_out = driver.fetch_try(other, WS, "x")
    store_all(driver, owner, "x", ["new"])
    driver.cancel(other, handed_out.request_id)
    assert driver.fetch_all(owner, WS, "x") == ["new"]
    assert driver.state.memory.used == 0


@pytest.mark.parametrize("how", ["flag", "heartbeat", "store"])
def test_an_acknowledged_value_is_never_returned(driver, owner, other, how):
    store_all(driver, owner, "x", ["once"])
    handed_out = driver.fetch_try(other, WS, "x")
    if how == "flag":
        assert driver.ack(other, handed_out.request_id).ok
    elif how == "heartbeat":
        assert driver.heartbeat(other, [(0, handed_out.request_id)]).ok
    else:
        assert driver.store(other, WS, "y", "z", acks=[handed_out.request_id]).ok
    assert driver.state.memory.used == (value_size("z") if how == "store" else 0)
    driver.cancel(other, handed_out.request_id)
    expire_silent(driver, owner)
    assert driver.fetch_try(owner, WS, "x").status == Status.MISSING


def test_a_leased_value_counts_against_memory_until_acknowledged(driver, owner, other):
    store_all(driver, owner, "x", ["abc"])
    handed_out = driver.fetch_try(other, WS, "x")
    assert driver.state.memory.used == value_size("abc")
    driver.ack(other, handed_out.request_id)
    assert driver.state.memory.used == 0


def test_acks_of_another_channel_ride_on_the_heartbeat(driver, owner, other):
    second_socket = driver.other_channel(other, 3)
    store_all(driver, owner, "x", ["v"])
    handed_out = driver.fetch_try(second_socket, WS, "x")
    assert driver.heartbeat(other, [(3, handed_out.request_id)]).ok
    assert driver.state.memory.used == 0
    expire_silent(driver, owner)
    assert driver.fetch_try(owner, WS, "x").status == Status.MISSING


# ------------------------------------------------------------------------- session expiry


def test_an_expired_session_returns_its_unacknowledged_values_to_the_head(driver, owner, other):
    store_all(driver, owner, "x", ["a", "b", "c"])
    assert driver.fetch_try(other, WS, "x").value == "a"
    assert driver.fetch_try(other, WS, "x").value == "b"
    expire_silent(driver, owner)
    assert driver.fetch_all(owner, WS, "x") == ["a", "b", "c"]


def test_values_returned_by_an_expired_session_reach_waiting_fetchers_in_store_order(
        driver, owner, other):
    """Eight leases make a right order by luck (1 in 8!) practically impossible."""
    values = list(range(1, 9))
    store_all(driver, owner, "x", values)
    for expected in values:
        assert driver.fetch_try(other, WS, "x").value == expected
    waiter = driver.client(WS)
    waiting = [driver.fetch(waiter, WS, "x") for _ in values]
    expire_silent(driver, owner, waiter)
    assert [driver.reply(waiter, request_id).value for request_id in waiting] == values


def test_an_expired_session_restores_a_lifo_stack(driver, owner, other):
    """As if the values had never been taken: the newest is on top again."""
    values = list(range(1, 9))
    assert driver.declare(owner, WS, "x", "lifo").ok
    store_all(driver, owner, "x", values)
    for expected in reversed(values):
        assert driver.fetch_try(other, WS, "x").value == expected
    expire_silent(driver, owner)
    assert driver.fetch_all(owner, WS, "x") == list(reversed(values))


def test_a_session_silent_for_less_than_the_timeout_survives(driver, owner, other):
    store_all(driver, owner, "x", ["a"])
    handed_out = driver.fetch_try(other, WS, "x")
    driver.advance(driver.timeout)
    driver.expire()
    assert driver.fetch_try(owner, WS, "x").status == Status.MISSING
    assert driver.ack(other, handed_out.request_id).ok
    assert driver.state.memory.used == 0


def test_an_expired_session_blocked_fetch_does_not_swallow_a_store(driver, owner, other):
    waiting = driver.fetch(other, WS, "x")
    expire_silent(driver, owner)
    assert driver.take_all() == []  # a dead client is not answered
    store_all(driver, owner, "x", ["kept"])
    assert driver.fetch_all(owner, WS, "x") == ["kept"]
    assert no_reply(driver, other, waiting)


def test_an_expired_owner_purges_its_non_persistent_workspaces(driver, owner, other):
    store_all(driver, owner, "x", ["a"])
    fetch = driver.fetch(other, WS, "empty")
    expire_silent(driver, other)
    assert driver.reply(other, fetch).status == Status.NO_WORKSPACE
    assert driver.fetch_try(other, WS, "x").status == Status.NO_WORKSPACE
    assert WS not in [row[0] for row in driver.list_wss(other)]
    assert driver.state.memory.used == 0


def test_an_expired_owner_keeps_its_persistent_workspaces(driver):
    owner = driver.client("kept", open=True, persistent=True)
    other = driver.client("kept")
    store_all(driver, owner, "x", ["a"], ws="kept")
    expire_silent(driver, other)
    assert driver.fetch_all(other, "kept", "x") == ["a"]
    assert driver.open_ws(other, "kept").ok  # the dead owner keeps it: no claim
    [row] = [row for row in driver.list_wss(other) if row[0] == "kept"]
    assert row[1:4] == [False, "testhost (1000)", True]


def test_leases_on_a_purged_workspace_are_freed(driver, owner, other):
    store_all(driver, owner, "x", ["a", "b"])
    handed_out = driver.fetch_try(other, WS, "x")
    expire_silent(driver, other)
    assert driver.state.memory.used == value_size("a")
    driver.cancel(other, handed_out.request_id)
    assert driver.state.memory.used == 0


def test_bye_purges_the_owned_workspace_and_answers_its_waiters(driver, owner, other):
    mine = driver.fetch(owner, WS, "x")
    theirs = driver.fetch(other, WS, "y")
    assert driver.bye(owner).ok
    assert driver.reply(owner, mine).status == Status.SHUTTING_DOWN
    assert driver.reply(other, theirs).status == Status.NO_WORKSPACE


# ------------------------------------------------------------------------- ownership and listings


def owner_row(driver: StateDriver, peer: bytes, ws: str) -> list:
    [row] = [row for row in driver.list_wss(peer) if row[0] == ws]
    return row


def test_open_takes_ownership_of_an_unowned_workspace(driver):
    user, opener = driver.connect(pid=1), driver.connect(pid=2)
    assert driver.use_ws(user, "shared").ok
    assert owner_row(driver, user, "shared")[1:4] == [False, "", False]
    assert driver.open_ws(opener, "shared", persistent=True).ok
    assert owner_row(driver, opener, "shared")[1:4] == [True, "testhost (2)", True]
    assert owner_row(driver, user, "shared")[1] is False


def test_use_never_takes_ownership(driver, owner):
    user = driver.connect(pid=7)
    assert driver.use_ws(user, WS).ok
    assert owner_row(driver, user, WS)[1:3] == [False, f"ownerhost ({OWNER_PID})"]
    assert driver.use_ws(user, "fresh").ok
    assert owner_row(driver, user, "fresh")[1:3] == [False, ""]


def test_open_does_not_steal_an_owned_workspace(driver, owner):
    opener = driver.connect(pid=9)
    assert driver.open_ws(opener, WS, persistent=True).ok
    assert owner_row(driver, opener, WS)[1:4] == [False, f"ownerhost ({OWNER_PID})", False]
    assert owner_row(driver, owner, WS)[1] is True


def test_the_default_workspace_belongs_to_the_broker(driver, owner):
    assert driver.open_ws(owner, "__default").ok
    assert owner_row(driver, owner, "__default")[1:4] == [False, "(broker)", True]


def test_open_and_use_without_create_report_a_missing_workspace(driver, owner):
    assert driver.open_ws(owner, "nowhere", create=False).status == Status.NO_WORKSPACE
    assert driver.use_ws(owner, "nowhere", create=False).status == Status.NO_WORKSPACE
    assert "nowhere" not in [row[0] for row in driver.list_wss(owner)]


def test_list_wss_rows(driver, owner):
    store_all(driver, owner, "b", [1])
    store_all(driver, owner, "a", [1])
    other = driver.connect()
    assert driver.list_wss(other) == [
        ["__default", False, "(broker)", True, 0, []],
        [WS, False, f"ownerhost ({OWNER_PID})", False, 2, ["a", "b"]],
    ]
    assert driver.list_wss(owner)[1][1] is True


def test_list_vars_rows(driver, owner, other):
    store_all(driver, owner, "values", [1, 2])
    assert driver.declare(owner, WS, "counter", "single").ok
    driver.fetch(other, WS, "job")
    driver.find(other, WS, "job")
    driver.find(other, WS, "job")
    assert driver.list_vars(other, WS) == [
        ["counter", 0, 0, 0, "single"],
        ["job", 0, 1, 2, "fifo"],
        ["values", 2, 0, 0, "fifo"],
    ]


def test_list_vars_of_a_missing_workspace(driver, owner):
    reply = driver.call(owner, Op.LIST_VARS, [b"nowhere"])
    assert reply.status == Status.NO_WORKSPACE


@pytest.mark.parametrize("template, first_name", [
    ("__pyws__%d", "__pyws__1"), ("job_%04d", "job_0001"), ("100%%_%d", "100%_1"),
])
def test_mktemp_with_one_integer_conversion_creates_unowned_workspaces(
        driver, owner, template, first_name):
    first = driver.mktemp_ws(owner, template)
    second = driver.mktemp_ws(owner, template)
    assert first.text == first_name
    assert second.ok and second.text != first.text
    assert owner_row(driver, owner, first.text)[1:4] == [False, "", False]
    assert driver.open_ws(owner, first.text).ok
    assert owner_row(driver, owner, first.text)[1] is True


@pytest.mark.parametrize("template", ["plain", "%s", "%d_%d", "%%d", "%f", "tab\t%d", ""])
def test_mktemp_refuses_templates_without_exactly_one_integer_conversion(
        driver, owner, template):
    before = driver.list_wss(owner)
    assert driver.mktemp_ws(owner, template).status == Status.BAD_REQUEST
    assert driver.list_wss(owner) == before


# ------------------------------------------------------------------------- memory cap


def test_a_store_beyond_the_memory_cap_is_refused_and_changes_nothing():
    cap = value_size("x" * 50) * 2
    driver = StateDriver(Limits(max_memory=cap))
    owner = driver.client(WS, open=True)
    store_all(driver, owner, "x", ["x" * 50, "y" * 50])
    before = (driver.list_vars(owner, WS), driver.state.memory.used)
    assert driver.store(owner, WS, "x", "z").status == Status.NO_MEMORY
    assert driver.store(owner, WS, "new", "z").status == Status.NO_MEMORY
    assert (driver.list_vars(owner, WS), driver.state.memory.used) == before
    assert driver.fetch_all(owner, WS, "x") == ["x" * 50, "y" * 50]
    assert driver.store(owner, WS, "x", "z").ok  # room again once values are consumed


def test_a_refused_store_does_not_serve_a_waiting_fetcher():
    driver = StateDriver(Limits(max_memory=10))
    owner = driver.client(WS, open=True)
    waiting = driver.fetch(owner, WS, "x")
    assert driver.store(owner, WS, "x", "too large for the cap").status == Status.NO_MEMORY
    assert no_reply(driver, owner, waiting)
    assert driver.var_counts(owner, WS)["x"] == (0, 1, 0, "fifo")
    assert driver.state.memory.used == 0


def test_unacknowledged_leases_count_against_the_memory_cap():
    size = value_size("v" * 20)
    driver = StateDriver(Limits(max_memory=size))
    owner = driver.client(WS, open=True)
    store_all(driver, owner, "x", ["v" * 20])
    handed_out = driver.fetch_try(owner, WS, "x")
    assert driver.store(owner, WS, "x", "w" * 20).status == Status.NO_MEMORY
    driver.ack(owner, handed_out.request_id)
    assert driver.store(owner, WS, "x", "w" * 20).ok


# ------------------------------------------------------------------------- malformed requests


@pytest.mark.parametrize("head", [b"", b"\x01\x14", protocol.HEADER.pack(1, Op.STATUS, 0, 1)[:7]])
def test_heads_shorter_than_the_header_are_dropped_and_counted(driver, owner, head):
    before = driver.state.counters["malformed"]
    driver.send_raw(owner, head)
    assert driver.take_all() == []
    assert driver.state.counters["malformed"] == before + 1


def test_a_head_of_another_protocol_version_is_refused_and_counted(driver, owner):
    before = driver.state.counters["malformed"]
    driver.send_raw(owner, protocol.HEADER.pack(99, Op.STATUS, 0, 77))
    [reply] = driver.take_all()
    assert (reply.status, reply.request_id) == (Status.BAD_REQUEST, 77)
    assert "protocol version 99" in reply.text
    assert driver.state.counters["malformed"] == before + 1


@pytest.mark.parametrize("op, args, frames, flags", [
    (Op.DECLARE, [WS.encode(), b"x"], [], 0),  # missing mode
    (Op.FETCH_TRY, [WS.encode()], [], 0),  # missing variable
    (Op.IFIND_TRY, [WS.encode(), b"x", b"zero", b"0"], [], 0),  # cookie not a number
    (Op.OPEN_WS, [WS.encode(), b"yes", b"1"], [], 0),  # flag not 0/1
    (Op.CANCEL, [b"seven"], [], 0),
    (Op.HELLO, [b"not json"], [], 0),
    (Op.HELLO, [b"[1, 2]"], [], 0),
    (Op.STORE, [WS.encode(), b"x"], [], 0),  # no value
    (Op.STORE, [WS.encode(), b"x", b"\x00"], [], 0),  # value without a descriptor
    (Op.STORE, [WS.encode(), b"x", protocol.descriptor(0, 2) + b"v"], [b"one"], 0),
    (Op.LIST_WSS, [], [b"stray frame"], 0),
    (Op.STATUS, [], [], FLAG_ACKS),  # acknowledgement flag without acknowledgements
    (Op.STATUS, [b"1,x"], [], FLAG_ACKS),
    (Op.LIST_VARS, [b"\xff\xfe"], [], 0),  # not UTF-8
])
def test_bad_arguments_get_bad_request(driver, owner, op, args, frames, flags):
    before = driver.state.counters["malformed"]
    reply = driver.call(owner, op, args, frames, flags)
    assert reply.status == Status.BAD_REQUEST
    assert driver.state.counters["malformed"] == before + 1
    assert driver.list_vars(owner, WS) == []


def test_unknown_ops_get_unknown_op(driver, owner):
    reply = driver.call(owner, 99, [b"whatever"])
    assert reply.status == Status.UNKNOWN_OP
    assert "unknown operation 99" in reply.text


@pytest.mark.parametrize("name", ["tab\there", "new\nline", "bell\x07", "del\x7f", "esc\x1b[0m"])
def test_names_with_control_characters_are_refused(driver, owner, name):
    assert driver.open_ws(owner, name).status == Status.BAD_REQUEST
    assert driver.store(owner, WS, name, 1).status == Status.BAD_REQUEST
    assert driver.declare(owner, WS, name, "fifo").status == Status.BAD_REQUEST
    assert driver.reply(owner, driver.fetch(owner, WS, name)).status == Status.BAD_REQUEST
    assert name not in [row[0] for row in driver.list_wss(owner)]
    assert driver.list_vars(owner, WS) == []


def test_empty_and_overlong_names_are_refused(driver, owner):
    assert driver.use_ws(owner, "").status == Status.BAD_REQUEST
    assert driver.store(owner, WS, "", 1).status == Status.BAD_REQUEST
    assert driver.store(owner, WS, "v" * 1025, 1).status == Status.BAD_REQUEST
    assert driver.store(owner, WS, "v" * 1024, 1).ok


def test_printable_unicode_names_are_accepted(driver, owner):
    assert driver.open_ws(owner, "résumé ✓").ok
    assert driver.store(owner, "résumé ✓", "ü", "v").ok
    assert driver.list_vars(owner, "résumé ✓") == [["ü", 1, 0, 0, "fifo"]]
