"""A Hypothesis state-machine test of ``BrokerState`` against a plain-Python reference model.

One owner session opens two workspaces; a few other sessions use them. Hypothesis interleaves
declare, store, fetchTry, findTry, blocking fetch (parked when the variable is empty), CANCEL of
a parked fetch or of a handed-out value, acknowledgements, deleteVar and the expiry of a
non-owner session, and checks every reply against the model:

* a variable is ``ModelVar``: its mode, whether the mode is fixed, its values (FIFO and SINGLE
  head first, LIFO top last; MULTI compared as a multiset) and its parked fetchers in arrival
  order;
* a value handed to a fetcher is a lease, still held by the broker until acknowledged; a cancel
  puts it back at the head (FIFO: its place in store order, LIFO: the top, SINGLE: only into an
  empty variable) and parked fetchers are then served from the head. When an expiry returns
  several values of one variable they go back in store order (SINGLE: the newest stays).

Invariants after every step: every stored value is in a variable, leased, delivered (acked) or
destroyed (deleteVar, SINGLE overwrite), exactly once; listVars counts and the held values match
the model; the memory in use is the size of the values held in variables and leases; no reply
arrives that the model did not expect; and a replica that knows nothing but the change records
the state returned holds the same workspaces, variables, values and leases
(``change_replica``).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field

from hypothesis import Phase, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine, initialize, invariant, precondition, rule,
)

from workbench.protocol import Status

from .change_replica import Replica, state_view
from .state_driver import StateDriver, status_name, value_size

WORKSPACES = ("ws1", "ws2")
VARIABLES = ("a", "b")
MODES = ("fifo", "lifo", "multi", "single")
CLIENTS = 2  # non-owner sessions

Key = tuple  # (peer, request id)


@dataclass
class ModelVar:
    mode: str
    fixed: bool  # False while only a parked fetch created it: any declare may still set the mode
    values: list = field(default_factory=list)  # FIFO/SINGLE: head first; LIFO: top last
    fetchers: deque = field(default_factory=deque)  # keys of parked fetches, longest waiting first
    live: bool = True

    def head(self, delivered):
        """The value a fetch or find must get; for MULTI, whichever the broker chose."""
        if self.mode == "multi":
            assert delivered in self.values, f"{delivered!r} is not a value of this variable"
            return delivered
        return self.values[-1] if self.mode == "lifo" else self.values[0]

    def take(self, delivered) -> None:
        expected = self.head(delivered)
        assert delivered == expected, f"fetched {delivered!r}, the {self.mode} head is {expected!r}"
        self.values.remove(expected)


@dataclass
class Lease:
    var: ModelVar
    value: tuple


def store_order(value: tuple) -> int:
    return value[0]


class BrokerStateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.driver = StateDriver(rng=random.Random(0))
        self.owner = self.driver.client(*WORKSPACES, open=True)
        self.clients = [self.driver.client(*WORKSPACES) for _ in range(CLIENTS)]
        self.vars: dict[tuple[str, str], ModelVar] = {}
        self.leases: dict[Key, Lease] = {}
        self.parked: dict[Key, ModelVar] = {}
        self.stored: list = []
        self.delivered: list = []  # acknowledged: consumed for good
        self.destroyed: list = []  # deleted, overwritten (SINGLE) or returned to a dead variable
        self.counter = 0
        self.most_returned_at_once = 0  # steers Hypothesis towards expiries with many leases
        self.replica = Replica()  # the state rebuilt from its change records alone
        self.replayed = 0

    def actor(self, index: int) -> bytes:
        """0 is the owner, 1.. the other sessions."""
        return self.owner if index == 0 else self.clients[index - 1]

    # ------------------------------------------------------------ model helpers

    def expect_value(self, key: Key):
        reply = self.driver.reply(*key)
        assert reply is not None, f"request {key[1]} should have been served"
        assert reply.status == Status.OK, reply
        return reply.value

    def expect_status(self, key: Key, status: int) -> None:
        reply = self.driver.reply(*key)
        assert reply is not None, f"request {key[1]} should have been answered"
        assert reply.status == status, f"{reply} where {status_name(status)} was expected"

    def hand_out(self, var: ModelVar, key: Key, delivered) -> None:
        var.take(delivered)
        self.leases[key] = Lease(var, delivered)

    def serve_parked(self, var: ModelVar) -> None:
        while var.fetchers and var.values:
            key = var.fetchers.popleft()
            del self.parked[key]
            self.hand_out(var, key, self.expect_value(key))

    def give_back(self, var: ModelVar, value) -> None:
        """An unacknowledged value returns to the head, then parked fetchers are served."""
        self.give_back_all(var, [value])

    def give_back_all(self, var: ModelVar, values: list) -> None:
        """Unacknowledged values return to the head in store order (SINGLE: newest first, as
        only it can stay): FIFO puts each at its place in store order, LIFO on top, SINGLE only
        into an empty variable. Then parked fetchers are served."""
        for value in sorted(values, key=store_order, reverse=var.mode == "single"):
            if not var.live:
                self.destroyed.append(value)
            elif var.mode == "fifo":
                var.values = sorted([*var.values, value], key=store_order)
            elif var.mode == "single" and var.values:
                self.destroyed.append(value)
            else:
                var.values.append(value)
        self.serve_parked(var)

    def drop_parked(self, key: Key) -> ModelVar:
        var = self.parked.pop(key)
        var.fetchers.remove(key)
        return var

    # ------------------------------------------------------------ rules

    @initialize(setup=st.lists(
        st.tuples(st.sampled_from((None, *MODES)), st.integers(0, 4)),
        min_size=len(VARIABLES), max_size=len(VARIABLES)))
    def fill_some_variables(self, setup):
        """Start with values in variables of every mode, so that short runs reach them all."""
        for name, (mode, count) in zip(VARIABLES, setup):
            if mode is not None:
                self.declare(0, WORKSPACES[0], name, mode)
            for _ in range(count):
                self.store(0, WORKSPACES[0], name, 0)

    @rule(who=st.integers(0, CLIENTS), ws=st.sampled_from(WORKSPACES),
          name=st.sampled_from(VARIABLES), mode=st.sampled_from(MODES))
    def declare(self, who, ws, name, mode):
        reply = self.driver.declare(self.actor(who), ws, name, mode)
        var = self.vars.get((ws, name))
        if var is None:
            self.vars[ws, name] = ModelVar(mode, fixed=True)
        elif var.mode != mode and var.fixed:
            assert reply.status == Status.DECLARATION_FAILED, reply
            return
        else:
            assert not var.values or var.mode == mode
            var.mode, var.fixed = mode, True
        assert reply.ok, reply

    @rule(who=st.integers(0, CLIENTS), ws=st.sampled_from(WORKSPACES),
          name=st.sampled_from(VARIABLES), padding=st.integers(0, 40))
    def store(self, who, ws, name, padding):
        self.counter += 1
        value = (self.counter, "x" * padding)
        assert self.driver.store(self.actor(who), ws, name, value).ok
        self.stored.append(value)
        var = self.vars.get((ws, name))
        if var is None:
            var = self.vars[ws, name] = ModelVar("fifo", fixed=True)
        var.fixed = True
        if var.fetchers:
            key = var.fetchers.popleft()
            del self.parked[key]
            assert self.expect_value(key) == value
            self.leases[key] = Lease(var, value)
        elif var.mode == "single":
            self.destroyed += var.values
            var.values = [value]
        else:
            var.values.append(value)

    @rule(who=st.integers(0, CLIENTS), ws=st.sampled_from(WORKSPACES),
          name=st.sampled_from(VARIABLES))
    def fetch_try(self, who, ws, name):
        peer = self.actor(who)
        reply = self.driver.fetch_try(peer, ws, name)
        var = self.vars.get((ws, name))
        if var is None or not var.values:
            assert reply.status == Status.MISSING, reply
        else:
            self.hand_out(var, (peer, reply.request_id), reply.value)

    @rule(who=st.integers(0, CLIENTS), ws=st.sampled_from(WORKSPACES),
          name=st.sampled_from(VARIABLES), count=st.integers(2, 4))
    def fetch_try_batch(self, who, ws, name, count):
        """A worker taking several values before it acknowledges any."""
        for _ in range(count):
            self.fetch_try(who, ws, name)

    @rule(who=st.integers(0, CLIENTS), ws=st.sampled_from(WORKSPACES),
          name=st.sampled_from(VARIABLES))
    def find_try(self, who, ws, name):
        reply = self.driver.find_try(self.actor(who), ws, name)
        var = self.vars.get((ws, name))
        if var is None or not var.values:
            assert reply.status == Status.MISSING, reply
        else:
            assert reply.value == var.head(reply.value)

    @rule(who=st.integers(0, CLIENTS), ws=st.sampled_from(WORKSPACES),
          name=st.sampled_from(VARIABLES))
    def fetch(self, who, ws, name):
        peer = self.actor(who)
        key = (peer, self.driver.fetch(peer, ws, name))
        var = self.vars.get((ws, name))
        if var is not None and var.values:
            self.hand_out(var, key, self.expect_value(key))
            return
        if var is None:
            var = self.vars[ws, name] = ModelVar("fifo", fixed=False)
        var.fetchers.append(key)
        self.parked[key] = var

    @precondition(lambda self: self.parked)
    @rule(data=st.data())
    def cancel_parked_fetch(self, data):
        key = data.draw(st.sampled_from(sorted(self.parked)), label="parked fetch")
        assert self.driver.cancel(*key).status == Status.CANCELLED
        self.drop_parked(key)
        assert self.driver.reply(*key) is None

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def cancel_handed_out_value(self, data):
        key = data.draw(st.sampled_from(sorted(self.leases)), label="lease")
        assert self.driver.cancel(*key).status == Status.CANCELLED
        lease = self.leases.pop(key)
        self.give_back(lease.var, lease.value)

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), via_heartbeat=st.booleans())
    def acknowledge(self, data, via_heartbeat):
        peer, request_id = key = data.draw(st.sampled_from(sorted(self.leases)), label="lease")
        if via_heartbeat:
            assert self.driver.heartbeat(peer, [(0, request_id)]).ok
        else:
            assert self.driver.ack(peer, request_id).ok
        self.delivered.append(self.leases.pop(key).value)

    @rule(index=st.integers(0, CLIENTS - 1))
    def expire_session(self, index):
        """Client ``index`` falls silent past the liveness timeout; a new session replaces it."""
        dead = self.clients[index]
        self.driver.advance(self.driver.timeout + 1)
        for peer in [self.owner, *self.clients]:
            if peer != dead:
                assert self.driver.heartbeat(peer).ok
        self.driver.expire()
        for key in [key for key in self.parked if key[0] == dead]:
            self.drop_parked(key)
        returned: dict[int, tuple[ModelVar, list]] = {}
        for key in [key for key in self.leases if key[0] == dead]:
            lease = self.leases.pop(key)
            returned.setdefault(id(lease.var), (lease.var, []))[1].append(lease.value)
        for var, values in returned.values():
            self.most_returned_at_once = max(self.most_returned_at_once, len(values))
            self.give_back_all(var, values)
        self.clients[index] = self.driver.client(*WORKSPACES)

    @rule(who=st.integers(0, CLIENTS), ws=st.sampled_from(WORKSPACES),
          name=st.sampled_from(VARIABLES))
    def delete_var(self, who, ws, name):
        assert self.driver.delete_var(self.actor(who), ws, name).ok
        var = self.vars.pop((ws, name), None)
        if var is None:
            return
        var.live = False
        self.destroyed += var.values
        var.values = []
        while var.fetchers:
            key = var.fetchers.popleft()
            del self.parked[key]
            self.expect_status(key, Status.VARIABLE_DELETED)

    def teardown(self):
        target(self.most_returned_at_once, label="values one expiry returned to one variable")

    # ------------------------------------------------------------ invariants

    @invariant()
    def no_unexpected_replies(self):
        assert self.driver.take_all() == []

    @invariant()
    def listings_and_values_match_the_model(self):
        for ws in WORKSPACES:
            expected = {name: (len(var.values), len(var.fetchers), 0, var.mode)
                        for (space, name), var in self.vars.items() if space == ws}
            assert self.driver.var_counts(self.owner, ws) == expected
            for name, var in ((n, v) for (s, n), v in self.vars.items() if s == ws):
                held = self.driver.held_values(ws, name)
                if var.mode == "multi":
                    assert sorted(held) == sorted(var.values)
                else:
                    assert held == var.values, f"{ws}/{name} ({var.mode})"

    @invariant()
    def every_value_is_held_delivered_or_destroyed_exactly_once(self):
        held = [value for (ws, name) in self.vars for value in self.driver.held_values(ws, name)]
        leased = self.driver.leased_values()
        assert sorted(leased) == sorted(lease.value for lease in self.leases.values())
        accounted = Counter(held) + Counter(leased) + Counter(self.delivered)
        accounted += Counter(self.destroyed)
        assert accounted == Counter(self.stored)

    @invariant()
    def the_change_records_rebuild_the_state(self):
        self.replica.apply_all(self.driver.changes[self.replayed:])
        self.replayed = len(self.driver.changes)
        assert self.replica.view() == state_view(self.driver.state)

    @invariant()
    def memory_is_the_size_of_the_values_held(self):
        values = [value for var in self.vars.values() for value in var.values]
        values += [lease.value for lease in self.leases.values()]
        assert self.driver.state.memory.used == sum(value_size(value) for value in values)


BrokerStateMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, database=None,
    # no explain phase: its tracing makes reporting a failure take minutes
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])
TestBrokerStateMachine = BrokerStateMachine.TestCase
