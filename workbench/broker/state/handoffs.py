"""Hand-offs: values going from variables to the callers that read them, under leases, and the
callers blocked until a value comes.

A value given to a fetcher stays leased to that request until the client acknowledges it;
cancelling the request, a reply nobody could take, or the end of the holder's session puts it
back at the head of its variable, so no value is lost to Ctrl-C, a timeout or a killed client.
A blocked read waits in its variable (fetchers in arrival order, finders all at once) and in
``waiting``, so a cancel or the end of its session finds it. Fetchers are served oldest first,
but a work queue's FETCH_MANY callers newest first (``_next_fetcher``).

Shared by every service that stores or reads values: workspaces, key-value, work queues and the
shared queues of pub/sub.
"""

from __future__ import annotations

import random
from collections import deque

from ...protocol import (
    MANY_COUNT, MANY_DEALT, MANY_RECORD, Status, reply_head, value_reply_head,
)
from .caps import SessionCaps
from .changes import Returned, Taken, stored
from .deliveries import Deliveries
from .effects import Outbox
from .memory import Memory, file_frames
from .requests import arity
from .sessions import Session
from .variables import FIFO, SINGLE, Value, Variable, Waiter

Key = tuple  # (peer, request id) of a request

#: Blocked FETCH_MANY callers that the values of one STORE_MANY are dealt among, at most: a
#: worker pool's idle workers, as many as a call's own chunks are planned for (a hundred idle
#: workers must not all wake for a map that a few finish in milliseconds; a bigger call is
#: taken in hands by the others, and slow hands are given back to them).
DEAL_MOST = 4


class ManyValues:
    """A reply that carries several values (FETCH_MANY, KV_GET_MULTI) as ``session`` receives
    them: each one's first frame goes in the reply's body, its other frames after the head."""

    __slots__ = ("session", "extra", "count", "reading")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.extra: list = []
        self.count = 0  # frames after the head, once the server has read any files
        self.reading = False  # some are FileFrames

    def add(self, value: Value, leased: bool) -> bytes:
        """Add ``value``'s other frames -> its first frame, for the body."""
        if value.shared is not None:
            if not self.session.shares_memory:  # a client on another machine: send the data
                first, count, data = file_frames(value)
                self.extra.append(data)
                self.count += count
                self.reading = True
                return first
            if not leased:
                value.found = True  # a finder maps it later, unannounced
        self.extra.extend(value.frames[1:])
        self.count += len(value.frames) - 1
        return value.frames[0]

    def send(self, outbox: Outbox, peer: bytes, request_id: int, body: list) -> None:
        frames = [reply_head(Status.OK, request_id, self.count, b"".join(body)), *self.extra]
        if self.reading:
            outbox.send_reading(peer, frames)
        else:
            outbox.send(peer, frames)


class HandOffs:
    def __init__(self, outbox: Outbox, memory: Memory, deliveries: Deliveries,
                 rng: random.Random, caps: SessionCaps) -> None:
        self.outbox = outbox
        self.messages = outbox.messages  # the outbox's lists, at hand on the hottest paths
        self.log = outbox.log
        self.memory = memory
        self.deliveries = deliveries
        self.rng = rng
        self.caps = caps
        #: (peer, request id) -> (variable, value or FETCH_MANY's list of values, session)
        self.leases: dict[Key, tuple[Variable, Value | list[Value], Session]] = {}
        self.waiting: dict[Key, tuple[Variable, Waiter]] = {}

    # ---------------------------------------------------------------- values in

    def store(self, var: Variable, value: Value) -> None:
        """An admitted value joins ``var``, stamped and counted: every waiting finder gets it,
        then the longest-waiting fetcher; only if no fetcher waits does it join the variable."""
        self._arrive(var, value)
        if var.fetchers:
            if self.deliveries.watched:
                self.deliveries.event(var.workspace.name, "fetched", var.name)
            waiter = _next_fetcher(var.fetchers)
            self.unwait(waiter)
            if waiter.many:
                self.lease(waiter.session, waiter.peer, waiter.request_id, var, [value])
                self.reply_many(waiter.peer, waiter.request_id, [value], waiter.session)
                return
            self.lease(waiter.session, waiter.peer, waiter.request_id, var, value)
            self.reply_value(waiter.peer, waiter.request_id, var, value, waiter.session)
        else:
            replaced = var.put(value)
            if replaced is not None:
                self.memory.discard(replaced, var)

    def store_all(self, var: Variable, values: list[Value]) -> None:
        """Admitted values join ``var`` together (STORE_MANY): every waiting finder gets each,
        then, in a FIFO variable, the fetchers take them in arrival order as they would from
        the variable, a blocked FETCH_MANY up to its count at once (a worker pool's idle
        workers take a hand each, not one value each), several blocked FETCH_MANY callers a
        share each (``_deal``); what is left joins the variable. Other modes take them one
        ``store`` at a time."""
        if var.mode != FIFO:
            for value in values:
                self.store(var, value)
            return
        for value in values:
            self._arrive(var, value)
            replaced = var.put(value)
            if replaced is not None:
                self.memory.discard(replaced, var)
        fetchers = var.fetchers
        if fetchers:
            if len(fetchers) > 1 and len(var.values) > 1 and fetchers[-1].many:
                self._deal(var)
            self.serve_waiting(var)

    def _deal(self, var: Variable) -> None:
        """Values for more than one blocked FETCH_MANY caller (a pool's idle workers, and a
        new call's task records): up to DEAL_MOST of them, the newest first, each take an
        equal share of their bytes, in order and up to its count, so that they all start at
        once. A call's records shrink along the queue (big ones first): the same number each
        would not be the same work. Their replies say they were dealt (``MANY_DEALT``)."""
        fetchers, values = var.fetchers, var.values
        dealt: list[Waiter] = []
        while (fetchers and fetchers[-1].many and len(dealt) < len(values)
               and len(dealt) < DEAL_MOST):
            waiter = fetchers.pop()
            self.unwait(waiter)
            dealt.append(waiter)
        left = sum(value.size for value in values)
        for index, waiter in enumerate(dealt):
            after = len(dealt) - index - 1  # callers still to serve: one value each, at least
            share = left / (after + 1)
            hand = [values.popleft()]
            size = hand[0].size
            while (len(values) > after and len(hand) < waiter.many
                   and size + values[0].size / 2 <= share):
                value = values.popleft()
                size += value.size
                hand.append(value)
            left -= size
            self.hand_over(waiter.session, waiter.peer, waiter.request_id, var, hand,
                           dealt=True)

    def _arrive(self, var: Variable, value: Value) -> None:
        """A value is stored: stamped, counted, logged, watched, and given to every finder."""
        var.stamp(value)
        self.memory.used += value.size
        # The record is built only if read (see ``Effects.log``): the variable's and the
        # value's fields it reads never change.
        self.log.append((stored, var, value))
        if self.deliveries.watched:
            self.deliveries.event(var.workspace.name, "stored", var.name)
        if var.finders:
            still_waiting = []
            for waiter in var.finders:
                if waiter.cookie is not None and value.seq <= waiter.cookie:
                    still_waiting.append(waiter)  # an iterator that has seen this value
                    continue
                self.unwait(waiter)
                self.reply_value(waiter.peer, waiter.request_id, var, value, waiter.session)
            var.finders = still_waiting

    # ---------------------------------------------------------------- values out

    def take(self, session: Session, peer: bytes, request_id: int, var: Variable) -> None:
        """Hand the head of ``var`` (it has values) to a fetcher, under a lease."""
        value = var.take(self.rng)
        self.lease(session, peer, request_id, var, value)
        if self.deliveries.watched:
            self.deliveries.event(var.workspace.name, "fetched", var.name)
        self.reply_value(peer, request_id, var, value, session)

    def take_many(self, session: Session, peer: bytes, request_id: int, var: Variable,
                  most: int) -> None:
        """Take up to ``most`` values of ``var`` (it has at least one) under one lease."""
        self.hand_over(session, peer, request_id, var,
                       [var.take(self.rng) for _ in range(min(most, len(var.values)))])

    def hand_over(self, session: Session, peer: bytes, request_id: int, var: Variable,
                  hand: list[Value], dealt: bool = False) -> None:
        """Answer a FETCH_MANY with ``hand``, taken from ``var``, under one lease."""
        self.lease(session, peer, request_id, var, hand)
        if self.deliveries.watched:
            self.deliveries.event(var.workspace.name, "fetched", var.name)
        self.reply_many(peer, request_id, hand, session, dealt)

    def lease(self, session: Session, peer: bytes, request_id: int, var: Variable,
              value: Value | list[Value]) -> None:
        """Hand ``value`` (or a FETCH_MANY's list of values) over until acknowledged."""
        key = (peer, request_id)
        self.leases[key] = (var, value, session)
        session.leases.add(key)
        log = self.log
        if type(value) is list:
            for each in value:
                log.append((Taken, var.id, each.seq))
        else:
            log.append((Taken, var.id, value.seq))

    def reply_value(self, peer: bytes, request_id: int, var: Variable, value: Value,
                    session: Session) -> None:
        frames = value.frames
        if value.shared is not None:
            if not session.shares_memory:  # a client on another machine: send the data
                first, count, data = file_frames(value)
                self.outbox.send_reading(peer, [
                    value_reply_head(request_id, count, var.id, value.seq, first), data])
                return
            if (peer, request_id) not in self.leases:
                value.found = True  # a finder maps it later, unannounced
        if len(frames) == 1:
            self.messages.append(
                (peer, [value_reply_head(request_id, 0, var.id, value.seq, frames[0])]))
        else:
            head = value_reply_head(request_id, len(frames) - 1, var.id, value.seq, frames[0])
            self.messages.append((peer, [head, *frames[1:]]))

    def reply_many(self, peer: bytes, request_id: int, values: list[Value],
                   session: Session, dealt: bool = False) -> None:
        body = [MANY_COUNT.pack(len(values))]
        reply = ManyValues(session)
        for value in values:
            first = reply.add(value, leased=True)
            body.append(MANY_RECORD.pack(value.seq, min(value.returns, 0xFFFF), len(first)))
            body.append(bytes(first))
        if dealt:
            body.append(MANY_DEALT)
        reply.send(self.outbox, peer, request_id, body)

    # ---------------------------------------------------------------- acknowledgements

    def ack(self, key: Key) -> None:
        entry = self.leases.pop(key, None)
        if entry is not None:
            var, values, session = entry
            if type(values) is list:
                for value in values:
                    self.memory.discard(value, var)
            else:
                self.memory.discard(values, var)
            session.leases.discard(key)

    def return_lease(self, key: Key) -> None:
        self.return_leases([key])

    def return_leases(self, keys: list[Key], holder_ended: bool = False) -> None:
        """Put unacknowledged values back at the head of their variables, then serve whoever
        waits there. Several values of one variable go back in store order, so a FIFO queue, a
        LIFO stack or a SINGLE's newest value comes back exactly as it was. ``holder_ended``:
        the session holding them ended (each value counts it in ``returns``), rather than
        cancelling the request."""
        returned: dict[int, tuple[Variable, list[Value]]] = {}
        for key in keys:
            entry = self.leases.pop(key, None)
            if entry is None:
                continue
            var, values, session = entry
            session.leases.discard(key)
            for value in values if type(values) is list else (values,):
                value.returns += holder_ended
                if var.live:
                    returned.setdefault(var.id, (var, []))[1].append(value)
                else:
                    self.memory.discard(value, var)
        for var, values in returned.values():
            # SINGLE keeps only the newest, so it must go back first; others oldest first.
            values.sort(key=lambda value: value.seq, reverse=var.mode == SINGLE)
            self._put_back(var, values, holder_ended)
            self.serve_waiting(var)

    def _put_back(self, var: Variable, values: list[Value], holder_ended: bool) -> None:
        for value in values:
            if var.put_back(value):
                self.log.append((Returned, var.id, value.seq, holder_ended))
            else:
                self.memory.discard(value, var)

    def file_unreadable(self, peer: bytes, request_id: int, reference: bytes,
                        reason: str) -> None:
        """A reply could not be sent because a value's shared-memory file could not be read
        (removed behind the broker's back): that value is gone, any others taken with it
        (FETCH_MANY) go back to their variable, and the caller is told."""
        entry = self.leases.pop((peer, request_id), None)
        if entry is not None:
            var, held, session = entry
            session.leases.discard((peer, request_id))
            values = held if type(held) is list else [held]
            others = [value for value in values if value.shared != reference]
            for value in values:
                if value.shared == reference:
                    self.memory.discard(value, var)
            if var.live:
                others.sort(key=lambda value: value.seq, reverse=True)
                self._put_back(var, others, False)
                if others:
                    self.serve_waiting(var)
            else:
                for value in others:
                    self.memory.discard(value, var)
        self.outbox.error(peer, request_id, Status.INTERNAL,
                          f"the value's shared-memory file is gone: {reason}")

    # ---------------------------------------------------------------- blocked reads

    def may_wait(self, session: Session) -> None:
        """Refuse a read of ``session`` that would block beyond its cap on calls waiting
        (``OpError``); called before anything is made for the read, such as its variable."""
        self.caps.wait(session)

    def park(self, session: Session, peer: bytes, request_id: int, var: Variable,
             consume: bool, cookie: int | None = None, many: int = 0) -> None:
        """Block a read until ``var`` has a value for it (``may_wait`` said it may)."""
        waiter = Waiter(peer, request_id, session, consume, cookie, many)
        (var.fetchers if consume else var.finders).append(waiter)
        key = (peer, request_id)
        self.waiting[key] = (var, waiter)
        session.waiting.add(key)

    def serve_waiting(self, var: Variable) -> None:
        """Serve blocked callers from values already in the variable (after a put-back)."""
        if var.finders and var.values:
            still_waiting = []
            for waiter in var.finders:
                value = (var.peek(self.rng) if waiter.cookie is None
                         else var.first_after(waiter.cookie))
                if value is None:
                    still_waiting.append(waiter)
                    continue
                self.unwait(waiter)
                self.reply_value(waiter.peer, waiter.request_id, var, value, waiter.session)
            var.finders = still_waiting
        while var.fetchers and var.values:
            waiter = _next_fetcher(var.fetchers)
            self.unwait(waiter)
            if waiter.many:
                self.take_many(waiter.session, waiter.peer, waiter.request_id, var, waiter.many)
            else:
                self.take(waiter.session, waiter.peer, waiter.request_id, var)

    def unwait(self, waiter: Waiter) -> None:
        key = (waiter.peer, waiter.request_id)
        del self.waiting[key]
        waiter.session.waiting.discard(key)

    def forget(self, key: Key) -> None:
        """A blocked request goes away unanswered (cancelled, or its session ended)."""
        entry = self.waiting.pop(key, None)
        if entry is not None:
            var, waiter = entry
            waiter.session.waiting.discard(key)
            queue = var.fetchers if waiter.consume else var.finders
            try:
                queue.remove(waiter)
            except ValueError:
                pass

    def fail_waiters(self, var: Variable, status: int, message: str) -> None:
        """Answer every blocked caller of ``var`` with an error."""
        for waiter in (*var.fetchers, *var.finders):
            key = (waiter.peer, waiter.request_id)
            self.waiting.pop(key, None)
            waiter.session.waiting.discard(key)
            self.outbox.error(waiter.peer, waiter.request_id, status, message)
        var.fetchers.clear()
        var.finders.clear()

    def fail_waiter(self, waiter: Waiter, status: int, message: str) -> None:
        """Answer one blocked caller with an error."""
        self.forget((waiter.peer, waiter.request_id))
        self.outbox.error(waiter.peer, waiter.request_id, status, message)

    def cancel(self, session: Session, peer: bytes, request_id: int, args: list,
               frames: list) -> None:
        """CANCEL: a blocked request goes away; a value that raced the cancel goes back."""
        arity(args, 1)
        key = (peer, int(args[0]))
        self.forget(key)
        self.return_lease(key)  # nothing is lost
        self.outbox.reply(peer, request_id, Status.CANCELLED)


def _next_fetcher(fetchers: deque[Waiter]) -> Waiter:
    """The blocked fetcher a value goes to: the longest-waiting one, as NetWorkSpaces serves
    fetch; but when the newest is a work queue's FETCH_MANY (a pool's idle worker), that one,
    so that work goes to a worker that just finished, whose code and data are still in its
    caches, and workers a small load does not need stay asleep."""
    return fetchers.pop() if fetchers[-1].many else fetchers.popleft()
