"""The registry: workspaces and variables coming and going, checked names, and the records and
watcher events that every such change makes. Shared by every service, so that a workspace or a
variable is created and destroyed one way whoever asks."""

from __future__ import annotations

from ...config import MAX_NAME_LENGTH
from ...protocol import Status
from .changes import (
    Declared, VariableDeleted, WorkspaceClaimed, WorkspaceCreated, WorkspaceDeleted,
)
from .deliveries import Deliveries
from .effects import Outbox
from .handoffs import HandOffs
from .memory import Memory
from .requests import OpError
from .sessions import Session
from .variables import Variable
from .workspaces import Workspace, WorkspaceTable

_NAME_CACHE_SIZE = 4096


class Registry:
    def __init__(self, spaces: WorkspaceTable, outbox: Outbox, deliveries: Deliveries,
                 handoffs: HandOffs, memory: Memory) -> None:
        self.spaces = spaces
        self.outbox = outbox
        self.deliveries = deliveries
        self.handoffs = handoffs
        self.memory = memory
        #: Names already checked, by their bytes: a request naming one needs no check (the hot
        #: paths look here before they call ``name``).
        self.valid_names: dict[bytes, str] = {}

    # ---------------------------------------------------------------- names

    def name(self, arg: bytes, what: str) -> str:
        """A workspace, variable or key name from a request, checked."""
        name = self.valid_names.get(arg)
        if name is not None:  # the same few names arrive with every request
            return name
        name = arg.decode("utf-8")
        if not name:
            raise OpError(Status.BAD_REQUEST, f"a {what} name must not be empty")
        if len(arg) > MAX_NAME_LENGTH:
            raise OpError(Status.BAD_REQUEST,
                          f"{what} name longer than {MAX_NAME_LENGTH} bytes")
        if not name.isprintable():
            raise OpError(Status.BAD_REQUEST,
                          f"{what} name {name!r} contains control characters")
        if len(self.valid_names) >= _NAME_CACHE_SIZE:
            self.valid_names.clear()
        self.valid_names[arg] = name
        return name

    def workspace(self, arg: bytes) -> Workspace:
        """The existing workspace a request names."""
        name = self.name(arg, "workspace")
        ws = self.spaces.by_name.get(name)
        if ws is None:
            raise OpError(Status.NO_WORKSPACE,
                          f"no workspace {name!r}: it was never created, or was deleted, or "
                          "purged when its owner disconnected")
        return ws

    # ---------------------------------------------------------------- workspaces

    def create_workspace(self, name: str, owner: Session | None = None,
                         persistent: bool = False) -> Workspace:
        ws = self.spaces.create(name, owner, persistent)
        self.outbox.log.append((WorkspaceCreated, name, ws.persistent,
                           owner.id if owner is not None else None, ws.owner_label))
        if self.deliveries.watched:
            self.deliveries.event(name, "ws_created")
        return ws

    def claim(self, ws: Workspace, session: Session, persistent: bool) -> None:
        """An unowned workspace gets an owner."""
        ws.claim(session, persistent)
        self.outbox.log.append((WorkspaceClaimed, ws.name, persistent, session.id, ws.owner_label))

    def purge(self, ws: Workspace, message: str, event: str = "ws_purged") -> None:
        """Remove a workspace with everything in it; its blocked callers get ``message``."""
        for var in ws.variables.values():
            self._destroy(var, Status.NO_WORKSPACE, message)
        ws.variables.clear()
        self.spaces.remove(ws)
        self.outbox.log.append((WorkspaceDeleted, ws.name))
        if self.deliveries.watched:
            self.deliveries.event(ws.name, event)

    # ---------------------------------------------------------------- variables

    def new_variable(self, ws: Workspace, name: str, mode: str,
                     mode_fixed: bool = True) -> Variable:
        var = self.spaces.new_variable(ws, name, mode, mode_fixed)
        self.outbox.log.append((Declared, ws.name, name, var.id, mode, mode_fixed))
        if self.deliveries.watched:
            self.deliveries.event(ws.name, "created", name)
        return var

    def fix(self, var: Variable) -> None:
        """A variable created by a blocked read is used for real: its mode is fixed now."""
        var.mode_fixed = True
        self.outbox.log.append((Declared, var.workspace.name, var.name, var.id, var.mode, True))

    def set_mode(self, var: Variable, mode: str) -> None:
        var.set_mode(mode)
        self.outbox.log.append((Declared, var.workspace.name, var.name, var.id, mode, True))

    def delete_variable(self, var: Variable, status: int, message: str) -> None:
        """Remove a variable with its values; its blocked callers get ``message``."""
        ws = var.workspace
        if ws.variables.get(var.name) is var:
            del ws.variables[var.name]
        self._destroy(var, status, message)
        self.outbox.log.append((VariableDeleted, ws.name, var.name, var.id))
        if self.deliveries.watched:
            self.deliveries.event(ws.name, "deleted", var.name)

    def _destroy(self, var: Variable, status: int, message: str) -> None:
        self.handoffs.fail_waiters(var, status, message)
        var.live = False
        for value in var.values:
            self.memory.discard(value, var)
        var.values.clear()
