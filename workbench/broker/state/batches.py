"""Many values in one request, for work queues: ``STORE_MANY`` puts a list of values into a
variable, ``FETCH_MANY`` takes up to n at once under one lease, and ``END_SESSION`` lets a
process that saw another die (a worker pool's master) end its session at once instead of after
the heartbeat timeout, so the values it held go back without delay.

Each value taken by ``FETCH_MANY`` carries ``returns``: how many times a session holding it
ended before acknowledging it. A worker pool uses it to stop re-running a task that keeps
killing its workers.

A mixin of ``BrokerState``, like ``operations``.
"""

from __future__ import annotations

from ...protocol import (
    DESCRIPTOR_SIZE, MANY_COUNT, MANY_ITEM, MANY_RECORD, ProtocolError, Status, reply_head,
)
from .requests import OpError, arity, flag
from .sessions import Session
from .variables import FIFO, Value, Variable, Waiter

MAX_MANY = 65_535


class Batches:
    def _store_many(self, session: Session, peer: bytes, request_id: int, args: list,
                    frames: list) -> None:
        arity(args, 2)
        ws = self._workspace(args[0])
        name = self._name(args[1], "variable")
        values = [self._incoming_value(session, value_frames)
                  for value_frames in _many_items(frames[0], frames[1:])]
        var = self._unexpired(ws, name)
        if var is None:
            var = self._new_variable(ws, name, FIFO)
        else:
            var.mode_fixed = True
        for value in values:
            var.stamp(value)
            self.memory += value.size
            self._offer(var, value)
        self._reply(peer, request_id, Status.OK, b"%d" % len(values))

    def _fetch_many(self, session: Session, peer: bytes, request_id: int, args: list,
                    frames: list) -> None:
        """args: ws, var, most values to take, block (0/1)."""
        arity(args, 4)
        ws = self._workspace(args[0])
        name = self._name(args[1], "variable")
        most = int(args[2])
        if not 0 < most <= MAX_MANY:
            raise OpError(Status.BAD_REQUEST, f"fetch_many takes 1 to {MAX_MANY} values")
        var = self._unexpired(ws, name)
        if var is not None and var.values:
            self._take_many(session, peer, request_id, var, most)
            return
        if not flag(args[3]):
            self._reply(peer, request_id, Status.MISSING)
            return
        if var is None:
            var = self._new_variable(ws, name, FIFO, mode_fixed=False)
        waiter = Waiter(peer, request_id, session, True, many=most)
        var.fetchers.append(waiter)
        key = (peer, request_id)
        self.waiting[key] = (var, waiter)
        session.waiting.add(key)

    def _take_many(self, session: Session, peer: bytes, request_id: int, var: Variable,
                   most: int) -> None:
        """Take up to ``most`` values of ``var`` (it has at least one) under one lease."""
        taken = [var.take(self.rng) for _ in range(min(most, len(var.values)))]
        self._lease(session, peer, request_id, var, taken)
        if self.watched:
            self._event(var.workspace.name, "fetched", var.name)
        self._reply_many(peer, request_id, taken, session)

    def _reply_many(self, peer: bytes, request_id: int, values: list[Value],
                    session: Session) -> None:
        body = [MANY_COUNT.pack(len(values))]
        extra: list = []
        for value in values:
            value_frames = self._frames_for(peer, request_id, value, session)
            if value_frames is None:  # its shared-memory file vanished: error already sent
                return
            first = value_frames[0]
            body.append(MANY_RECORD.pack(value.seq, min(value.returns, 0xFFFF), len(first)))
            body.append(bytes(first))
            extra.extend(value_frames[1:])
        self.outbox.append((peer, [reply_head(Status.OK, request_id, len(extra), b"".join(body)),
                                   *extra]))

    def _end_session_of(self, session: Session, peer: bytes, request_id: int, args: list,
                        frames: list) -> None:
        """args: host, pid of a process the caller saw die. Its sessions end now."""
        arity(args, 2)
        host, pid = args[0].decode("utf-8"), int(args[1])
        ended = [s for s in self.sessions
                 if s.host == host and s.pid == pid and s is not session and s.greeted]
        for dead in ended:
            self._end_session(dead, f"reported dead by {session.label}", notify_waiters=False)
        self._reply(peer, request_id, Status.OK, b"%d" % len(ended))


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
