"""Restoring a broker's state from records: a fresh ``BrokerState`` fed the change records of
an earlier one (``changes``, by the replay rules of its docstring) and the records of a
``snapshot``, so that it serves as the earlier one would have after a restart.

Everything persistent comes back: workspaces, variables with their ids, modes and values in
order (values keep their store sequences, so key-value versions and iterators' cookies stay
true), key-value deadlines, shared queues. Nothing tied to a connection does, since no session
outlives the broker: what the sessions ended would have done happens once the records are
applied (``Restorer.finish``). A non-persistent workspace with an owner is purged; a value taken
under a lease and never acknowledged goes back to the head of its variable, as a cancel puts it
back (its count of returns unchanged: the broker stopped, not its holder). The values of one
variable go back together, in store order, whoever held them: the newest on top of a LIFO, the
newest into a SINGLE (sessions that end one by one would put back each one's in turn). Those
changes are returned as records too, for the log that goes on from here.

Ids continue after the highest ever given, never reusing one: a variable's next sequence after
its highest value's, the next variable id after the highest variable's (or where a snapshot
says). A deadline is taken as it comes: on the restored state's clock (a log converts).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from .changes import (
    Change, Declared, Expires, QueueDeclared, Removed, Returned, Stored, Taken, VariableDeleted,
    WorkspaceClaimed, WorkspaceCreated, WorkspaceDeleted,
)
from .core import BrokerState
from .pubsub import MQ_WORKSPACE
from .snapshot import NextSequence, NextVariableId, SnapshotRecord, ValueReturns
from .variables import FIFO, MULTI, SINGLE, Value, Variable


class RestoreError(ValueError):
    """A record that does not fit the ones before it (a value stored twice, a variable of a
    workspace that does not exist)."""


@dataclass
class RestoreReport:
    """What a restore found and did."""

    records: int = 0  # applied
    misfits: list[str] = field(default_factory=list)  # records skipped, and why (not strict)
    purged: list[str] = field(default_factory=list)  # workspaces whose owners are gone
    returned: int = 0  # leased values put back at the head of their variable
    workspaces: int = 0
    variables: int = 0
    values: int = 0
    bytes: int = 0  # of the values


class Restorer:
    """Applies records to a fresh ``BrokerState``, then ``finish`` makes it ready to serve.

    ``strict``: a record that does not fit raises ``RestoreError``; otherwise it is skipped and
    listed in the report (a broker that restarts must start: one misfit should not cost the
    rest)."""

    def __init__(self, state: BrokerState, strict: bool = True) -> None:
        self.state = state
        self.strict = strict
        self.spaces = state.spaces
        self.report = RestoreReport()
        self._vars: dict[int, Variable] = {}
        self._held: dict[int, dict[int, Value]] = {}  # by var id: seq -> value, in their order
        self._leased: dict[int, dict[int, Value]] = {}
        self._owned: dict[str, bool] = {}  # whether each workspace had an owner
        self._queues: dict[str, int] = {}  # a shared queue's name -> its variable's id
        self._next_var_id = self.spaces.next_var_id
        self._handlers = {
            WorkspaceCreated: self._workspace_created, WorkspaceClaimed: self._workspace_claimed,
            WorkspaceDeleted: self._workspace_deleted, Declared: self._declared,
            VariableDeleted: self._variable_deleted, Stored: self._stored, Taken: self._taken,
            Returned: self._returned, Removed: self._removed, Expires: self._expires,
            QueueDeclared: self._queue_declared, NextVariableId: self._next_variable_id,
            NextSequence: self._next_sequence, ValueReturns: self._value_returns,
        }

    def apply_all(self, records: Iterable[Change | SnapshotRecord]) -> None:
        for record in records:
            self.apply(record)

    def apply(self, record: Change | SnapshotRecord) -> None:
        try:
            handler = self._handlers[type(record)]
        except KeyError:
            raise TypeError(f"not a change record: {record!r}") from None
        try:
            handler(record)
        except RestoreError as exc:
            if self.strict:
                raise
            self.report.misfits.append(f"{record!r:.200}: {exc}")
            return
        self.report.records += 1

    # ---------------------------------------------------------------- workspaces

    def _workspace_created(self, r: WorkspaceCreated) -> None:
        if self.spaces.get(r.ws) is not None:
            raise RestoreError(f"workspace {r.ws!r} created twice")
        ws = self.spaces.create(r.ws, None, r.persistent)
        ws.owner_label = r.owner_label  # the owner's session is gone; who it was is not
        self._owned[r.ws] = r.owner is not None

    def _workspace_claimed(self, r: WorkspaceClaimed) -> None:
        ws = self._workspace(r.ws)
        ws.persistent = r.persistent
        ws.owner_label = r.owner_label
        self._owned[r.ws] = True

    def _workspace_deleted(self, r: WorkspaceDeleted) -> None:
        ws = self._workspace(r.ws)
        for var in ws.variables.values():
            self._forget(var)
        ws.variables.clear()
        self.spaces.remove(ws)
        self._owned.pop(r.ws, None)

    def _workspace(self, name: str):
        ws = self.spaces.get(name)
        if ws is None:
            raise RestoreError(f"no workspace {name!r}")
        return ws

    # ---------------------------------------------------------------- variables

    def _declared(self, r: Declared) -> None:
        var = self._vars.get(r.var_id)
        if var is not None:  # its container is made for its mode at the end
            var.mode, var.mode_fixed = r.mode, r.fixed
            return
        ws = self._workspace(r.ws)
        if r.var in ws.variables:
            raise RestoreError(f"variable {r.ws}/{r.var} created twice")
        var = ws.variables[r.var] = Variable(r.var, r.mode, r.var_id, ws, r.fixed)
        self._vars[r.var_id] = var
        self._held[r.var_id] = {}
        self._leased[r.var_id] = {}
        if r.var_id >= self._next_var_id:
            self._next_var_id = r.var_id + 1

    def _variable_deleted(self, r: VariableDeleted) -> None:
        var = self._var(r.var_id)
        ws = var.workspace
        if ws.variables.get(var.name) is var:
            del ws.variables[var.name]
        self._forget(var)

    def _forget(self, var: Variable) -> None:
        var.live = False
        del self._vars[var.id], self._held[var.id], self._leased[var.id]

    def _var(self, var_id: int) -> Variable:
        var = self._vars.get(var_id)
        if var is None:
            raise RestoreError(f"no variable with id {var_id}")
        return var

    def _expires(self, r: Expires) -> None:
        self._var(r.var_id).expires = r.deadline

    def _queue_declared(self, r: QueueDeclared) -> None:
        ws = self._workspace(MQ_WORKSPACE)
        var = ws.variables.get(r.name)
        if var is None:
            raise RestoreError(f"shared queue {r.name!r} without its variable")
        self._queues[r.name] = var.id

    def _next_variable_id(self, r: NextVariableId) -> None:
        self._next_var_id = max(self._next_var_id, r.var_id)

    def _next_sequence(self, r: NextSequence) -> None:
        var = self._var(r.var_id)
        var.next_seq = max(var.next_seq, r.seq)

    # ---------------------------------------------------------------- values

    def _stored(self, r: Stored) -> None:
        # The most frequent record by far: a restart of a million values spends its time here.
        held = self._held.get(r.var_id)
        if held is None:
            raise RestoreError(f"no variable with id {r.var_id}")
        seq = r.seq
        if seq in held or seq in self._leased[r.var_id]:
            raise RestoreError(f"value {seq} of {r.ws}/{r.var} stored twice")
        held[seq] = Value(r.frames, r.size, seq, r.shared)  # frames never change: shared
        var = self._vars[r.var_id]
        if seq >= var.next_seq:
            var.next_seq = seq + 1

    def _taken(self, r: Taken) -> None:
        self._leased[r.var_id][r.seq] = self._pop(self._held, r.var_id, r.seq, "held")

    def _returned(self, r: Returned) -> None:
        value = self._pop(self._leased, r.var_id, r.seq, "leased")
        value.returns += r.holder_ended
        self._held[r.var_id][r.seq] = value  # last: a LIFO's top; a FIFO is sorted at the end

    def _removed(self, r: Removed) -> None:
        values = self._held.get(r.var_id)
        if values is not None and r.seq in values:
            del values[r.seq]
        else:
            self._pop(self._leased, r.var_id, r.seq, "held or leased")

    def _value_returns(self, r: ValueReturns) -> None:
        values = self._held.get(r.var_id, {})
        value = values.get(r.seq) or self._leased.get(r.var_id, {}).get(r.seq)
        if value is None:
            raise RestoreError(f"no value {r.seq} in the variable with id {r.var_id}")
        value.returns = r.returns

    def _pop(self, table: dict[int, dict[int, Value]], var_id: int, seq: int,
             what: str) -> Value:
        values = table.get(var_id)
        if values is None:
            raise RestoreError(f"no variable with id {var_id}")
        value = values.pop(seq, None)
        if value is None:
            raise RestoreError(f"value {seq} of the variable with id {var_id} is not {what}")
        return value

    # ---------------------------------------------------------------- the end

    def finish(self) -> tuple[RestoreReport, list[Change]]:
        """Make the state ready to serve: what the end of every session would have done, done
        (see the module's docstring) -> the report and the records of those changes."""
        state, report = self.state, self.report
        made: list[Change] = []
        for name, owned in list(self._owned.items()):
            ws = self.spaces.get(name)
            if owned and ws is not None and not ws.persistent:
                self._workspace_deleted(WorkspaceDeleted(name))
                made.append(WorkspaceDeleted(name))
                report.purged.append(name)
        memory, deadlines = state.memory, state.deadlines
        for var_id, var in self._vars.items():
            held = self._held[var_id].values()
            ordered = sorted(held, key=_seq) if var.mode == FIFO else list(held)
            var.values = ordered if var.mode == MULTI else deque(ordered)
            for value in ordered:
                memory.restored(value)
            leased = sorted(self._leased[var_id].values(), key=_seq, reverse=var.mode == SINGLE)
            for value in leased:  # as ``HandOffs.return_leases`` puts them back
                if var.put_back(value):
                    memory.restored(value)
                    made.append(Returned(var_id, value.seq, False))
                    report.returned += 1
                else:
                    made.append(Removed(var_id, value.seq))
            if var.expires is not None:
                deadlines.restored(var)
            report.values += len(var.values)
        for name, var_id in self._queues.items():
            var = self._vars.get(var_id)
            if var is not None:
                state.pubsub.restored_queue(name, var)
        self.spaces.next_var_id = max(self.spaces.next_var_id, self._next_var_id)
        report.workspaces = len(self.spaces)
        report.variables = len(self._vars)
        report.bytes = memory.used
        return report, made


def restore(state: BrokerState, records: Iterable[Change | SnapshotRecord],
            strict: bool = True) -> tuple[RestoreReport, list[Change]]:
    """Apply ``records`` to the fresh ``state`` and make it ready (see ``Restorer``)."""
    restorer = Restorer(state, strict)
    restorer.apply_all(records)
    return restorer.finish()


def _seq(value: Value) -> int:
    return value.seq
