"""Many values in one request, for work queues: ``STORE_MANY`` puts a list of values into a
variable, and ``FETCH_MANY`` takes up to n at once under one lease.

Each value taken by ``FETCH_MANY`` carries ``returns``: how many times a session holding it
ended before acknowledging it. A worker pool uses it to stop re-running a task that keeps
killing its workers. (``END_SESSION``, with which a pool's master ends the session of a worker
it saw die, is the sessions' service.)
"""

from __future__ import annotations

from typing import Callable

from ...protocol import DESCRIPTOR_SIZE, MANY_ITEM, Op, ProtocolError, Status
from .effects import Outbox
from .expiry import Deadlines
from .handoffs import HandOffs
from .memory import Memory
from .registry import Registry
from .requests import OpError, arity, flag
from .sessions import Session
from .variables import FIFO

MAX_MANY = 65_535


class WorkQueueService:
    def __init__(self, registry: Registry, handoffs: HandOffs, memory: Memory,
                 deadlines: Deadlines, outbox: Outbox) -> None:
        self.registry = registry
        self.handoffs = handoffs
        self.memory = memory
        self.deadlines = deadlines
        self.outbox = outbox

    def handlers(self) -> dict[int, Callable]:
        return {Op.STORE_MANY: self.store_many, Op.FETCH_MANY: self.fetch_many}

    def store_many(self, session: Session, peer: bytes, request_id: int, args: list,
                   frames: list) -> None:
        arity(args, 2)
        ws = self.registry.workspace(args[0])
        name = self.registry.name(args[1], "variable")
        values = self.memory.admit_all(session, list(_many_items(frames[0], frames[1:])))
        var = self.deadlines.unexpired(ws, name)
        if var is None:
            var = self.registry.new_variable(ws, name, FIFO)
        elif not var.mode_fixed:
            self.registry.fix(var)
        self.handoffs.store_all(var, values)
        self.outbox.reply(peer, request_id, Status.OK, b"%d" % len(values))

    def fetch_many(self, session: Session, peer: bytes, request_id: int, args: list,
                   frames: list) -> None:
        """args: ws, var, most values to take, block (0/1)."""
        arity(args, 4)
        ws = self.registry.workspace(args[0])
        name = self.registry.name(args[1], "variable")
        most = int(args[2])
        if not 0 < most <= MAX_MANY:
            raise OpError(Status.BAD_REQUEST, f"fetch_many takes 1 to {MAX_MANY} values")
        var = self.deadlines.unexpired(ws, name)
        if var is not None and var.values:
            self.handoffs.take_many(session, peer, request_id, var, most)
            return
        if not flag(args[3]):
            self.outbox.reply(peer, request_id, Status.MISSING)
            return
        self.handoffs.may_wait(session)
        if var is None:
            var = self.registry.new_variable(ws, name, FIFO, mode_fixed=False)
        self.handoffs.park(session, peer, request_id, var, True, many=most)


def _many_items(blob: bytes, extra: list) -> list[list]:
    """A STORE_MANY request's records -> each value's frames, checked to be whole."""
    items = []
    unpack, size = MANY_ITEM.unpack_from, MANY_ITEM.size
    offset, end, next_extra = 0, len(blob), 0
    while offset < end:
        if offset + size > end:
            raise ProtocolError("store_many records are truncated")
        (length,) = unpack(blob, offset)
        start = offset + size
        offset = start + length
        if offset > end or length < DESCRIPTOR_SIZE:
            raise ProtocolError("store_many records are truncated")
        first = blob[start:offset]
        nextra = first[2] | first[3] << 8
        value_frames = [first, *extra[next_extra:next_extra + nextra]]
        next_extra += nextra
        if len(value_frames) != nextra + 1:
            raise ProtocolError("store_many records announce more frames than arrived")
        items.append(value_frames)
    if next_extra != len(extra):
        raise ProtocolError("store_many has more value frames than its records announce")
    if not items:
        raise ProtocolError("store_many without values")
    return items
