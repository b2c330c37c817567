"""A replica of the broker's persistent state built from nothing but its change records, the way
a durability log or a second broker would rebuild it (the rules are ``broker.state.changes``'s
docstring), and the same view taken from a live ``BrokerState`` to compare it with.

It takes the records of a snapshot (``broker.state.snapshot``) too. The replica is strict: a
record that does not fit what came before (a value taken twice, a variable created twice, a
removal of a value nobody holds) fails at once, so a missing or superfluous record shows up
where it happens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.broker.state import DEFAULT_WORKSPACE, BrokerState, changes
from workbench.broker.state.pubsub import MQ_WORKSPACE


@dataclass
class ReplicaVar:
    ws: str
    name: str
    mode: str
    fixed: bool
    held: list = field(default_factory=list)  # seqs in the variable's order (see put_back)
    leased: set = field(default_factory=set)
    expires: float | None = None


class Replica:
    def __init__(self) -> None:
        self.workspaces = {DEFAULT_WORKSPACE: (True, "(broker)")}  # name -> (persistent, owner)
        self.variables: dict[int, ReplicaVar] = {}
        self.values: dict[tuple[int, int], tuple] = {}  # (var_id, seq) -> (frames, size, shared)
        self.returns: dict[tuple[int, int], int] = {}
        self.queues: set[str] = set()

    def apply_all(self, records) -> None:
        for record in records:
            self.apply(record)

    def apply(self, record) -> None:
        getattr(self, "_" + type(record).__name__)(record)

    # ------------------------------------------------------------ workspaces

    def _WorkspaceCreated(self, r: changes.WorkspaceCreated) -> None:
        assert r.ws not in self.workspaces, f"{r.ws!r} created twice"
        self.workspaces[r.ws] = (r.persistent, r.owner_label)

    def _WorkspaceClaimed(self, r: changes.WorkspaceClaimed) -> None:
        assert r.ws in self.workspaces, f"{r.ws!r} claimed before it was created"
        self.workspaces[r.ws] = (r.persistent, r.owner_label)

    def _WorkspaceDeleted(self, r: changes.WorkspaceDeleted) -> None:
        del self.workspaces[r.ws]
        for var_id in [i for i, var in self.variables.items() if var.ws == r.ws]:
            self._drop_variable(var_id)

    # ------------------------------------------------------------ variables

    def _Declared(self, r: changes.Declared) -> None:
        var = self.variables.get(r.var_id)
        if var is None:
            assert r.ws in self.workspaces, f"variable of a missing workspace {r.ws!r}"
            assert all(v.ws != r.ws or v.name != r.var for v in self.variables.values()), (
                f"{r.ws}/{r.var} created twice")
            self.variables[r.var_id] = ReplicaVar(r.ws, r.var, r.mode, r.fixed)
        else:
            var.mode, var.fixed = r.mode, r.fixed

    def _VariableDeleted(self, r: changes.VariableDeleted) -> None:
        var = self.variables[r.var_id]
        assert (var.ws, var.name) == (r.ws, r.var)
        self._drop_variable(r.var_id)

    def _drop_variable(self, var_id: int) -> None:
        var = self.variables.pop(var_id)
        for seq in [*var.held, *var.leased]:
            del self.values[var_id, seq]
        if var.ws == MQ_WORKSPACE:
            self.queues.discard(var.name)

    def _Expires(self, r: changes.Expires) -> None:
        self.variables[r.var_id].expires = r.deadline

    def _QueueDeclared(self, r: changes.QueueDeclared) -> None:
        self.queues.add(r.name)

    # ------------------------------------------------------------ values

    def _Stored(self, r: changes.Stored) -> None:
        var = self.variables[r.var_id]
        assert (var.ws, var.name) == (r.ws, r.var)
        assert (r.var_id, r.seq) not in self.values, "a value stored twice"
        self.values[r.var_id, r.seq] = (list(r.frames), r.size, r.shared)
        var.held.append(r.seq)  # a SINGLE's old value gets a Removed of its own

    def _Taken(self, r: changes.Taken) -> None:
        var = self.variables[r.var_id]
        var.held.remove(r.seq)
        var.leased.add(r.seq)

    def _Returned(self, r: changes.Returned) -> None:
        var = self.variables[r.var_id]
        var.leased.remove(r.seq)
        if var.mode == "fifo":
            var.held = sorted([*var.held, r.seq])
        else:
            assert var.mode != "single" or not var.held, "a SINGLE value came back over another"
            var.held.append(r.seq)
        if r.holder_ended:
            self.returns[r.var_id, r.seq] = self.returns.get((r.var_id, r.seq), 0) + 1

    def _Removed(self, r: changes.Removed) -> None:
        var = self.variables[r.var_id]
        if r.seq in var.leased:
            var.leased.remove(r.seq)
        else:
            var.held.remove(r.seq)
        del self.values[r.var_id, r.seq]

    # ------------------------------------------------------------ a snapshot's own records

    def _NextSequence(self, r) -> None:
        assert r.var_id in self.variables  # the view has no sequences to come

    def _NextVariableId(self, r) -> None:
        assert all(var_id < r.var_id for var_id in self.variables)

    def _ValueReturns(self, r) -> None:
        assert (r.var_id, r.seq) in self.values
        self.returns[r.var_id, r.seq] = r.returns

    # ------------------------------------------------------------ the view

    def view(self) -> dict:
        spaces = {ws: {"persistent": p, "owner": owner, "variables": {}}
                  for ws, (p, owner) in self.workspaces.items()}
        for var_id, var in self.variables.items():
            held = [self._value(var_id, seq) for seq in var.held]
            spaces[var.ws]["variables"][var.name] = {
                "id": var_id, "mode": var.mode, "fixed": var.fixed, "expires": var.expires,
                "held": sorted(held) if var.mode == "multi" else held,
                "leased": sorted(self._value(var_id, seq) for seq in var.leased)}
        return {"workspaces": spaces, "queues": sorted(self.queues)}

    def _value(self, var_id: int, seq: int) -> tuple:
        frames, size, shared = self.values[var_id, seq]
        returns = self.returns.get((var_id, seq), 0)
        return (seq, [bytes(frame) for frame in frames], size, shared, returns)


def state_view(state: BrokerState) -> dict:
    """The same view of a live state, read from its internals (for this comparison only)."""
    leased: dict[int, list] = {}
    for var, values, _ in state.handoffs.leases.values():
        for value in values if type(values) is list else [values]:
            leased.setdefault(var.id, []).append(value)
    spaces = {}
    for ws in state.spaces.by_name.values():
        variables = {}
        for var in ws.variables.values():
            held = [_value(value) for value in var.values]
            variables[var.name] = {
                "id": var.id, "mode": var.mode, "fixed": var.mode_fixed, "expires": var.expires,
                "held": sorted(held) if var.mode == "multi" else held,
                "leased": sorted(_value(value) for value in leased.get(var.id, []))}
        spaces[ws.name] = {"persistent": ws.persistent, "owner": ws.owner_label,
                           "variables": variables}
    queues = sorted(name for name, (_, var) in state.pubsub.shared_queues.items() if var.live)
    return {"workspaces": spaces, "queues": queues}


def _value(value) -> tuple:
    return (value.seq, [bytes(frame) for frame in value.frames], value.size, value.shared,
            value.returns)
