"""A snapshot of the broker's persistent state as records: the change records (``changes``) that
build the state as it is now from a fresh one, plus three records of what a replay of the whole
history would have counted itself, which a snapshot that drops the history must say. A
compaction writes them in place of the log that led to the same state.

``Snapshot(state)`` takes the state's shape at once (its workspaces, variables, the lists of
values each holds, the leases): that is the one pause, proportional to the number of values, not
their bytes. ``records()`` then yields the records from what was taken, as slowly as the caller
likes, while the state goes on: values never change once stored, so what was taken stays the
state as it was at the moment of the snapshot. The records of changes made after that moment
follow the snapshot's records in the new log.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Union

from .changes import (
    Declared, Expires, QueueDeclared, Stored, Taken, WorkspaceCreated, WorkspaceDeleted,
)
from .core import DEFAULT_WORKSPACE, BrokerState
from .variables import Value


class NextVariableId(NamedTuple):
    """Variable ids from ``var_id`` on are unused: ids of variables deleted before the
    snapshot, which no record names any more, are never given again."""

    var_id: int


class NextSequence(NamedTuple):
    """The variable's next value gets sequence ``seq``: sequences of values gone before the
    snapshot are never given again, so key-value versions and iterators' cookies stay true."""

    var_id: int
    seq: int


class ValueReturns(NamedTuple):
    """The value came back ``returns`` times because the session holding it ended (what the
    ``Returned`` records with ``holder_ended`` of the history counted)."""

    var_id: int
    seq: int
    returns: int


SnapshotRecord = Union[NextVariableId, NextSequence, ValueReturns]


class _VariableShape(NamedTuple):
    ws: str
    var: str
    var_id: int
    mode: str
    fixed: bool
    next_seq: int
    expires: float | None
    held: list  # its values in its order
    leased: list  # its values handed out and not acknowledged, in store order


class _WorkspaceShape(NamedTuple):
    record: WorkspaceCreated
    variables: list  # of _VariableShape


class Snapshot:
    """The state's shape at the moment this was made (see the module's docstring)."""

    def __init__(self, state: BrokerState) -> None:
        leased: dict[int, list[Value]] = {}
        for var, values, _ in state.handoffs.leases.values():
            leased.setdefault(var.id, []).extend(values if type(values) is list else (values,))
        returns: dict[tuple[int, int], int] = {}
        self.workspaces: list[_WorkspaceShape] = []
        self.shared: list[bytes] = []  # references of the shared-memory values taken
        for ws in state.spaces.by_name.values():
            owner = ws.owner.id if ws.owner is not None else None
            variables = []
            for var in ws.variables.values():
                held = list(var.values)
                taken = sorted(leased.get(var.id, ()), key=_seq)
                for value in (*held, *taken):
                    if value.returns:  # counted now: later returns have records of their own
                        returns[var.id, value.seq] = value.returns
                    if value.shared is not None:
                        self.shared.append(value.shared)
                variables.append(_VariableShape(ws.name, var.name, var.id, var.mode,
                                                var.mode_fixed, var.next_seq, var.expires,
                                                held, taken))
            self.workspaces.append(_WorkspaceShape(
                WorkspaceCreated(ws.name, ws.persistent, owner, ws.owner_label), variables))
        self.returns = returns
        self.queues = [name for name, (_, var) in state.pubsub.shared_queues.items()
                       if var.live]
        self.next_var_id = state.spaces.next_var_id

    def records(self) -> Iterator:
        """The records that build the state of the snapshot from a fresh one."""
        # A fresh state has the default workspace; the snapshot's is whatever it became.
        yield WorkspaceDeleted(DEFAULT_WORKSPACE)
        returns = self.returns
        for ws in self.workspaces:
            yield ws.record
            for var in ws.variables:
                var_id = var.var_id
                yield Declared(var.ws, var.var, var_id, var.mode, var.fixed)
                yield NextSequence(var_id, var.next_seq)
                if var.expires is not None:
                    yield Expires(var_id, var.expires)
                for value in var.held:
                    yield Stored(var.ws, var.var, var_id, value.seq, value.frames, value.size,
                                 value.shared)
                for value in var.leased:
                    yield Stored(var.ws, var.var, var_id, value.seq, value.frames, value.size,
                                 value.shared)
                    yield Taken(var_id, value.seq)
                if returns:
                    for value in (*var.held, *var.leased):
                        count = returns.get((var_id, value.seq))
                        if count:
                            yield ValueReturns(var_id, value.seq, count)
        for name in self.queues:
            yield QueueDeclared(name)
        yield NextVariableId(self.next_var_id)


def _seq(value: Value) -> int:
    return value.seq
