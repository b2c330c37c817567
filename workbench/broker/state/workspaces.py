"""The registry of workspaces: names, owners, persistence, and the variables each holds."""

from __future__ import annotations

from typing import Any

from .variables import FIFO, Variable



class Workspace:
    __slots__ = ("name", "owner", "owner_label", "persistent", "variables")

    def __init__(self, name: str, owner: Any = None, persistent: bool = False) -> None:
        self.name = name
        self.owner = owner  # the owning Session, or None
        self.owner_label = owner.label if owner is not None else ""
        self.persistent = persistent
        self.variables: dict[str, Variable] = {}

    def claim(self, session: Any, persistent: bool) -> None:
        self.owner = session
        self.owner_label = session.label
        self.persistent = persistent
        session.owned.add(self.name)


class WorkspaceTable:
    def __init__(self) -> None:
        self.by_name: dict[str, Workspace] = {}
        self.temp_counter = 0
        self.next_var_id = 1

    def __len__(self) -> int:
        return len(self.by_name)

    def get(self, name: str) -> Workspace | None:
        return self.by_name.get(name)

    def create(self, name: str, owner: Any = None, persistent: bool = False) -> Workspace:
        ws = self.by_name[name] = Workspace(name)
        if owner is not None:
            ws.claim(owner, persistent)
        else:
            ws.persistent = persistent
        return ws

    def remove(self, ws: Workspace) -> None:
        self.by_name.pop(ws.name, None)
        if ws.owner is not None:
            ws.owner.owned.discard(ws.name)

    def new_variable(self, ws: Workspace, name: str, mode: str = FIFO,
                     mode_fixed: bool = True) -> Variable:
        var = ws.variables[name] = Variable(name, mode, self.next_var_id, ws, mode_fixed)
        self.next_var_id += 1
        return var

    def temp_name(self, template: str) -> str:
        """The next unused name made from ``template`` (checked with ``valid_template``)."""
        while True:
            self.temp_counter += 1
            name = template % self.temp_counter
            if name not in self.by_name:
                return name


