"""The NetWorkSpaces operations of the broker state: workspaces (open, use, delete, mktemp,
list) and variables (declare, delete, list, store and the eight ways of reading).

``WorkspaceService`` holds the request handlers; the registry, the hand-offs, the memory and the
deadlines it works through are the ones every other service shares."""

from __future__ import annotations

from typing import Callable

from ...protocol import Op, Status, valid_template
from .effects import Outbox
from .expiry import Deadlines
from .handoffs import HandOffs
from .memory import Memory
from .registry import Registry
from .requests import Clock, OpError, arity, flag
from .sessions import Session
from .variables import FIFO, ITERABLE_MODES, MODES

#: (consume, block, iterate) for the eight ways of reading a variable
READS = {
    Op.FETCH: (True, True, False), Op.FETCH_TRY: (True, False, False),
    Op.FIND: (False, True, False), Op.FIND_TRY: (False, False, False),
    Op.IFETCH: (True, True, True), Op.IFETCH_TRY: (True, False, True),
    Op.IFIND: (False, True, True), Op.IFIND_TRY: (False, False, True),
}


class WorkspaceService:
    def __init__(self, registry: Registry, handoffs: HandOffs, memory: Memory,
                 deadlines: Deadlines, outbox: Outbox, clock: Clock) -> None:
        self.registry = registry
        self.spaces = registry.spaces
        self.handoffs = handoffs
        self.memory = memory
        self.deadlines = deadlines
        self.outbox = outbox
        self.clock = clock

    def handlers(self) -> dict[int, Callable]:
        table = {
            Op.OPEN_WS: self.open_ws, Op.USE_WS: self.use_ws, Op.DELETE_WS: self.delete_ws,
            Op.MKTEMP_WS: self.mktemp_ws, Op.LIST_WSS: self.list_wss,
            Op.DECLARE: self.declare, Op.DELETE_VAR: self.delete_var,
            Op.LIST_VARS: self.list_vars, Op.STORE: self.store,
        }
        for op, how in READS.items():
            table[op] = self.reader(*how)
        return table

    # ---------------------------------------------------------------- workspaces

    def open_ws(self, session: Session, peer: bytes, request_id: int, args: list,
                frames: list) -> None:
        arity(args, 3)
        name = self.registry.name(args[0], "workspace")
        persistent, create = flag(args[1]), flag(args[2])
        ws = self.spaces.get(name)
        if ws is None:
            if not create:
                raise OpError(Status.NO_WORKSPACE, f"no workspace {name!r} (create=False)")
            self.registry.create_workspace(name, session, persistent)
        elif ws.owner is None and not ws.owner_label:
            self.registry.claim(ws, session, persistent)
        self.outbox.reply(peer, request_id)

    def use_ws(self, session: Session, peer: bytes, request_id: int, args: list,
               frames: list) -> None:
        arity(args, 2)
        name = self.registry.name(args[0], "workspace")
        create = flag(args[1])
        if self.spaces.get(name) is None:
            if not create:
                raise OpError(Status.NO_WORKSPACE, f"no workspace {name!r} (create=False)")
            self.registry.create_workspace(name)
        self.outbox.reply(peer, request_id)

    def delete_ws(self, session: Session, peer: bytes, request_id: int, args: list,
                  frames: list) -> None:
        ws = self.registry.workspace(args[0])
        self.registry.purge(ws, f"workspace {ws.name!r} was deleted", "ws_deleted")
        self.outbox.reply(peer, request_id)

    def mktemp_ws(self, session: Session, peer: bytes, request_id: int, args: list,
                  frames: list) -> None:
        arity(args, 1)
        template = args[0].decode("utf-8")
        if not valid_template(template):
            raise OpError(Status.BAD_REQUEST,
                          f"workspace template {template!r} must contain exactly one integer "
                          "conversion such as %d (write %% for a literal percent sign)")
        name = self.spaces.temp_name(template)
        self.registry.name(name.encode(), "workspace")
        self.registry.create_workspace(name)
        self.outbox.reply(peer, request_id, Status.OK, name.encode())

    def list_wss(self, session: Session, peer: bytes, request_id: int, args: list,
                 frames: list) -> None:
        arity(args, 0)
        self.deadlines.reap(self.clock.now)
        self.outbox.json(peer, request_id, [
            [ws.name, ws.owner is session, ws.owner_label, ws.persistent, len(ws.variables),
             sorted(ws.variables)]
            for ws in sorted(self.spaces.by_name.values(), key=lambda w: w.name)])

    # ---------------------------------------------------------------- variables

    def declare(self, session: Session, peer: bytes, request_id: int, args: list,
                frames: list) -> None:
        arity(args, 3)
        ws = self.registry.workspace(args[0])
        name = self.registry.name(args[1], "variable")
        mode = args[2].decode("utf-8").lower()
        if mode not in MODES:
            raise OpError(Status.BAD_REQUEST,
                          f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        var = ws.variables.get(name)
        if var is None:
            self.registry.new_variable(ws, name, mode)
        elif var.mode != mode:
            if var.mode_fixed:
                raise OpError(Status.DECLARATION_FAILED,
                              f"variable {name!r} is already declared {var.mode}; a mode cannot "
                              "change (delete the variable first)")
            if mode not in ITERABLE_MODES:
                for waiter in [w for w in var.finders if w.cookie is not None]:
                    self.handoffs.fail_waiter(waiter, Status.BAD_REQUEST,
                                              f"variable {name!r} was declared {mode}; "
                                              "iterators need fifo or single")
            self.registry.set_mode(var, mode)
        elif not var.mode_fixed:
            self.registry.fix(var)
        self.outbox.reply(peer, request_id)

    def delete_var(self, session: Session, peer: bytes, request_id: int, args: list,
                   frames: list) -> None:
        arity(args, 2)
        ws = self.registry.workspace(args[0])
        var = ws.variables.get(self.registry.name(args[1], "variable"))
        if var is not None:
            self.registry.delete_variable(var, Status.VARIABLE_DELETED,
                                          f"variable {var.name!r} was deleted")
        self.outbox.reply(peer, request_id)

    def list_vars(self, session: Session, peer: bytes, request_id: int, args: list,
                  frames: list) -> None:
        arity(args, 1)
        ws = self.registry.workspace(args[0])
        self.deadlines.reap(self.clock.now)
        self.outbox.json(peer, request_id, [
            [var.name, len(var.values), len(var.fetchers), len(var.finders), var.mode]
            for var in sorted(ws.variables.values(), key=lambda v: v.name)])

    def store(self, session: Session, peer: bytes, request_id: int, args: list,
              frames: list) -> None:
        arity(args, 2)
        ws = self.registry.workspace(args[0])
        name = self.registry.name(args[1], "variable")
        value = self.memory.admit(session, frames)
        var = self.deadlines.unexpired(ws, name)
        if var is None:
            var = self.registry.new_variable(ws, name, FIFO)
        elif not var.mode_fixed:
            self.registry.fix(var)
        self.handoffs.store(var, value)
        self.outbox.reply(peer, request_id)

    def reader(self, consume: bool, block: bool, iterate: bool) -> Callable:
        def read(session: Session, peer: bytes, request_id: int, args: list,
                 frames: list = ()) -> None:
            arity(args, 4 if iterate else 2)
            ws = self.registry.workspace(args[0])
            name = self.registry.name(args[1], "variable")
            var = self.deadlines.unexpired(ws, name)
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
                    self.handoffs.take(session, peer, request_id, var)
                    return
                value = var.first_after(cookie) if iterate else var.peek(self.handoffs.rng)
                if value is not None:
                    self.handoffs.reply_value(peer, request_id, var, value, session)
                    return
            if not block:
                self.outbox.reply(peer, request_id, Status.MISSING)
                return
            self.handoffs.may_wait(session)
            if var is None:
                var = self.registry.new_variable(ws, name, FIFO, mode_fixed=False)
            self.handoffs.park(session, peer, request_id, var, consume,
                               cookie if iterate and not consume else None)

        return read
