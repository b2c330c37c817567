"""The NetWorkSpaces operations of the broker state: workspaces (open, use, delete, mktemp,
list) and variables (declare, delete, list, store and the eight ways of reading).

A mixin of ``BrokerState``: these handlers use its registry, hand-off and reply methods, so that
``core`` keeps the dispatch, sessions and leases and this module the operations users call."""

from __future__ import annotations

from typing import Callable

from ...protocol import VALUE_SHARED, ProtocolError, Status, parse_descriptor
from .requests import OpError, arity, flag, human_size
from .sessions import Session
from .variables import FIFO, ITERABLE_MODES, MODES, Value, Variable, Waiter
from .workspaces import Workspace, valid_template


class Operations:
    # ---------------------------------------------------------------- workspaces

    def _open_ws(self, session: Session, peer: bytes, request_id: int, args: list,
                  frames: list) -> None:
        arity(args, 3)
        name = self._name(args[0], "workspace")
        persistent, create = flag(args[1]), flag(args[2])
        ws = self.spaces.get(name)
        if ws is None:
            if not create:
                raise OpError(Status.NO_WORKSPACE, f"no workspace {name!r} (create=False)")
            self._create_workspace(name, session, persistent)
        elif ws.owner is None and not ws.owner_label:
            ws.claim(session, persistent)
        self._reply(peer, request_id)

    def _use_ws(self, session: Session, peer: bytes, request_id: int, args: list,
                 frames: list) -> None:
        arity(args, 2)
        name = self._name(args[0], "workspace")
        create = flag(args[1])
        if self.spaces.get(name) is None:
            if not create:
                raise OpError(Status.NO_WORKSPACE, f"no workspace {name!r} (create=False)")
            self._create_workspace(name)
        self._reply(peer, request_id)

    def _delete_ws(self, session: Session, peer: bytes, request_id: int, args: list,
                    frames: list) -> None:
        ws = self._workspace(args[0])
        self._purge(ws, f"workspace {ws.name!r} was deleted", "ws_deleted")
        self._reply(peer, request_id)

    def _purge(self, ws: Workspace, message: str, event: str = "ws_purged") -> None:
        for var in ws.variables.values():
            self._destroy_variable(var, Status.NO_WORKSPACE, message)
        ws.variables.clear()
        self.spaces.remove(ws)
        if self.watched:
            self._event(ws.name, event)

    def _destroy_variable(self, var: Variable, status: int, message: str) -> None:
        self._fail_waiters(var, status, message)
        var.live = False
        for value in var.values:
            self._discard(value)
        var.values.clear()

    def _mktemp_ws(self, session: Session, peer: bytes, request_id: int, args: list,
                    frames: list) -> None:
        arity(args, 1)
        template = args[0].decode("utf-8")
        if not valid_template(template):
            raise OpError(Status.BAD_REQUEST,
                          f"workspace template {template!r} must contain exactly one integer "
                          "conversion such as %d (write %% for a literal percent sign)")
        name = self.spaces.temp_name(template)
        self._name(name.encode(), "workspace")
        self._create_workspace(name)
        self._reply(peer, request_id, Status.OK, name.encode())

    def _list_wss(self, session: Session, peer: bytes, request_id: int, args: list,
                   frames: list) -> None:
        arity(args, 0)
        self.reap_expired(self.now)
        self._json(peer, request_id, [
            [ws.name, ws.owner is session, ws.owner_label, ws.persistent, len(ws.variables),
             sorted(ws.variables)]
            for ws in sorted(self.spaces.by_name.values(), key=lambda w: w.name)])

    # ---------------------------------------------------------------- variables

    def _declare(self, session: Session, peer: bytes, request_id: int, args: list,
                  frames: list) -> None:
        arity(args, 3)
        ws = self._workspace(args[0])
        name = self._name(args[1], "variable")
        mode = args[2].decode("utf-8").lower()
        if mode not in MODES:
            raise OpError(Status.BAD_REQUEST,
                          f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        var = ws.variables.get(name)
        if var is None:
            self._new_variable(ws, name, mode)
        elif var.mode != mode:
            if var.mode_fixed:
                raise OpError(Status.DECLARATION_FAILED,
                              f"variable {name!r} is already declared {var.mode}; a mode cannot "
                              "change (delete the variable first)")
            if mode not in ITERABLE_MODES:
                for waiter in [w for w in var.finders if w.cookie is not None]:
                    var.finders.remove(waiter)
                    key = (waiter.peer, waiter.request_id)
                    self.waiting.pop(key, None)
                    waiter.session.waiting.discard(key)
                    self._error(waiter.peer, waiter.request_id, Status.BAD_REQUEST,
                                f"variable {name!r} was declared {mode}; iterators need "
                                "fifo or single")
            var.set_mode(mode)
        else:
            var.mode_fixed = True
        self._reply(peer, request_id)

    def _delete_var(self, session: Session, peer: bytes, request_id: int, args: list,
                     frames: list) -> None:
        arity(args, 2)
        ws = self._workspace(args[0])
        name = self._name(args[1], "variable")
        var = ws.variables.pop(name, None)
        if var is not None:
            self._destroy_variable(var, Status.VARIABLE_DELETED,
                                   f"variable {name!r} was deleted")
            if self.watched:
                self._event(ws.name, "deleted", name)
        self._reply(peer, request_id)

    def _list_vars(self, session: Session, peer: bytes, request_id: int, args: list,
                    frames: list) -> None:
        arity(args, 1)
        ws = self._workspace(args[0])
        self.reap_expired(self.now)
        self._json(peer, request_id, [
            [var.name, len(var.values), len(var.fetchers), len(var.finders), var.mode]
            for var in sorted(ws.variables.values(), key=lambda v: v.name)])

    def _store(self, session: Session, peer: bytes, request_id: int, args: list,
                frames: list) -> None:
        arity(args, 2)
        ws = self._workspace(args[0])
        name = self._name(args[1], "variable")
        value = self._incoming_value(session, frames)
        var = self._unexpired(ws, name)
        if var is None:
            var = self._new_variable(ws, name, FIFO)
        else:
            var.mode_fixed = True
        var.stamp(value)
        self.memory += value.size
        self._offer(var, value)
        self._reply(peer, request_id)

    def _incoming_value(self, session: Session, frames: list) -> Value:
        """A value arriving in a request, checked: its frames, its shared-memory file, the
        memory cap. Not yet stored: the caller stamps it and adds its size to ``memory``."""
        if not frames:
            raise ProtocolError("store without a value")
        _, flags, nextra = parse_descriptor(frames[0])
        shared = None
        if flags & VALUE_SHARED:
            if self.files is None or not session.shares_memory or len(frames) != 2:
                raise ProtocolError("a shared-memory value from a client that cannot share")
            shared = bytes(frames[1])
            if shared.partition(b":")[0] in self.shared_in_use:
                raise OpError(Status.BAD_REQUEST,
                              "shared-memory file already holds another value")
            try:
                size = len(frames[0]) + self.files.size(shared)
            except OSError as exc:
                raise OpError(Status.BAD_REQUEST,
                              f"shared-memory value unreadable: {exc}") from None
        else:
            if nextra != len(frames) - 1:
                raise ProtocolError(
                    f"value announces {nextra} extra frames, {len(frames) - 1} arrived")
            size = 0
            for frame in frames:
                size += len(frame)
        if self.memory + size > self.limits.max_memory:
            raise OpError(Status.NO_MEMORY,
                          f"storing {human_size(size)} would exceed the broker's memory cap "
                          f"(--max-memory {human_size(self.limits.max_memory)}, "
                          f"{human_size(self.memory)} in use): fetch or delete values, or restart "
                          "the broker with a larger --max-memory")
        value = Value(frames, size, shared=shared)
        if shared is not None:  # one file, one value: releasing it must not break another
            self.shared_in_use.add(shared.partition(b":")[0])
        return value

    def _reader(self, consume: bool, block: bool, iterate: bool) -> Callable:
        def read(session: Session, peer: bytes, request_id: int, args: list,
                 frames: list = ()) -> None:
            arity(args, 4 if iterate else 2)
            ws = self._workspace(args[0])
            name = self._name(args[1], "variable")
            var = self._unexpired(ws, name)
            cookie = None
            if iterate:
                var_id, cookie = int(args[2]), int(args[3])
                if var is not None and var.mode not in ITERABLE_MODES:
                    raise OpError(Status.BAD_REQUEST,
                                  f"variable {name!r} is {var.mode}; iterators need fifo or "
                                  "single")
                if var_id and (var.id != var_id if var is not None else block):
                    raise OpError(Status.ITERATOR_INVALID,
                                  f"variable {name!r} was deleted (and maybe re-created) since "
                                  "the iterator started; call reset() to start over")
            if var is not None and var.values:
                if consume:
                    value = var.take(self.rng)
                    self._lease(session, peer, request_id, var, value)
                    if self.watched:
                        self._event(ws.name, "fetched", name)
                elif iterate:
                    value = var.first_after(cookie)
                else:
                    value = var.peek(self.rng)
                if value is not None:
                    self._reply_value(peer, request_id, var, value, session)
                    return
            if not block:
                self._reply(peer, request_id, Status.MISSING)
                return
            if var is None:
                var = self._new_variable(ws, name, FIFO, mode_fixed=False)
            waiter = Waiter(peer, request_id, session, consume,
                            cookie if iterate and not consume else None)
            (var.fetchers if consume else var.finders).append(waiter)
            key = (peer, request_id)
            self.waiting[key] = (var, waiter)
            session.waiting.add(key)

        return read
