"""A workspace used as a work queue: values that are already encoded go in and out many per
request, with several requests in flight on the calling thread's channel. The client side of
``STORE_MANY``, ``FETCH_MANY`` and ``END_SESSION`` (see ``broker/state/batches.py``).

Values stay frames here (the caller encodes and decodes them with ``codec``), so that a worker
pool can decide per value how it travels and decode each one on its own. Blocking methods work
from any thread; a request sent with a ``send_*`` method is received with ``receive`` on the
thread that sent it, and that thread's ``WorkQueue`` knows which of its requests are fetches.
"""

from __future__ import annotations

import time
from typing import Collection, Iterable, NamedTuple, Sequence

from .. import shm
from ..protocol import HEADER_SIZE, Op, Status, pack_many, split_hand
from .connection import Connection, raise_for_status

_OK, _ERROR = int(Status.OK), int(Status.ERROR)  # plain ints: enum members cost a lookup

#: Values per STORE_MANY request, and bytes.
STORE_GROUP = 2048
STORE_BYTES = 8 << 20

_ZERO, _ONE = b"0", b"1"
_NOTHING = ()  # the values of a store's reply, or of a fetch that found none


class Reply(NamedTuple):
    request_id: int
    values: Sequence[tuple[list, int]]  # a fetch's (value frames, returns); empty for a store
    dealt: bool  # a fetch's values were dealt among several waiting callers (``MANY_DEALT``)


# A NamedTuple's constructor is a Python function; a worker receives a reply per hand of tasks.
_reply = tuple.__new__


def frames_size(frames: Sequence) -> int:
    return sum(memoryview(frame).nbytes for frame in frames)


def _shared(frames: list) -> bool:
    """Whether a value is large enough to go through shared memory (and so alone)."""
    return len(frames) > 1 and frames_size(frames[1:]) >= shm.THRESHOLD


class WorkQueue:
    """The variables of workspace ``ws`` as work queues, on ``connection``."""

    def __init__(self, connection: Connection, ws: str) -> None:
        self.connection = connection
        self.ws = ws
        self._wsb = ws.encode()
        self._fetches: set[int] = set()  # this thread's fetches in flight

    # ------------------------------------------------------------------ blocking, any thread

    def store(self, var: str, frames: list, acks: tuple | list = ()) -> None:
        """Store one encoded value and wait for the broker; a large value goes through shared
        memory when the broker shares this machine's. ``acks``: leased replies this store
        acknowledges (see ``Channel.send``)."""
        self.connection.read(Op.STORE, [self._wsb, var.encode()], frames, acks=acks)

    def store_all(self, var: str, encoded: Iterable[list]) -> None:
        """Store encoded values in order: many per STORE_MANY request (at most STORE_GROUP
        values and about STORE_BYTES bytes each), a large value alone through ``store``."""
        group: list[list] = []
        size = 0
        for frames in encoded:
            if len(frames) > 1:  # most values are one small frame: no sizing call for those
                extra = frames_size(frames[1:])
                if extra >= shm.THRESHOLD:
                    if group:
                        self._store_many(var, group)
                        group, size = [], 0
                    self.store(var, frames)
                    continue
                size += extra
            group.append(frames)
            size += len(frames[0])
            if len(group) >= STORE_GROUP or size >= STORE_BYTES:
                self._store_many(var, group)
                group, size = [], 0
        if group:
            self._store_many(var, group)

    def _store_many(self, var: str, encoded: list[list]) -> None:
        self.connection.read(Op.STORE_MANY, [self._wsb, var.encode()], pack_many(encoded),
                             spill=False)

    def end_session(self, host: str, pid: int, timeout: float) -> int:
        """End the broker sessions of the process ``pid`` on ``host``, which the caller saw
        die: the values they held leased go back at once, not after the heartbeat timeout ->
        how many sessions ended."""
        head = self.connection.call(Op.END_SESSION, [host.encode(), b"%d" % pid],
                                    timeout=timeout)
        return int(head[HEADER_SIZE:] or 0)

    # ------------------------------------------------------------------ pipelined, one thread

    def send_fetch(self, var: str, most: int, block: bool = True,
                   acks: tuple | list = ()) -> int:
        """Ask for up to ``most`` values of ``var`` under one lease (waiting for one if
        ``block``) -> the request id, for ``receive``. The lease is acknowledged with
        ``acknowledge``, or by a store's ``acks``."""
        connection = self.connection
        request_id = connection.channel().send(
            Op.FETCH_MANY, [self._wsb, var.encode(), b"%d" % most, _ONE if block else _ZERO],
            (), connection.check_alive, acks)
        self._fetches.add(request_id)
        return request_id

    def send_store(self, var: str, frames: list, acks: tuple | list = ()) -> int | None:
        """Store one encoded value without waiting -> the request id, for ``receive``. A value
        large enough for shared memory is stored at once, waiting (-> None)."""
        if _shared(frames):
            self.store(var, frames, acks)
            return None
        connection = self.connection
        return connection.channel().send(Op.STORE, [self._wsb, var.encode()], frames,
                                          connection.check_alive, acks)

    def send_store_many(self, var: str, encoded: list[list], acks: tuple | list = ()) -> int:
        """Store encoded values in one request without waiting -> the request id."""
        connection = self.connection
        return connection.channel().send(Op.STORE_MANY, [self._wsb, var.encode()],
                                          pack_many(encoded), connection.check_alive, acks)

    def forget_requests(self) -> None:
        """Forget the requests sent in a session that ended: a new session numbers its
        requests afresh, and an old fetch's id must not make a new store's reply a fetch's."""
        self._fetches.clear()

    def receive(self, request_ids: Collection[int], deadline: float | None = None) -> Reply:
        """Wait for the reply to whichever of ``request_ids`` comes first. Errors raise as the
        NwsException of their status; a fetch that found nothing (not blocking) has no
        values."""
        connection = self.connection
        request_id, head, frames = connection.channel().receive_any(
            request_ids, deadline, connection.check_alive)
        status = head[1]
        fetches = self._fetches
        fetched = request_id in fetches
        if fetched:
            fetches.discard(request_id)
        if status >= _ERROR:
            raise_for_status(status, head)
        if fetched and status == _OK:
            return _reply(Reply, (request_id, *split_hand(head, frames)))
        return _reply(Reply, (request_id, _NOTHING, False))

    def acknowledge(self, request_id: int) -> None:
        """Acknowledge a fetch's lease with this thread's next request: its values are
        consumed for good."""
        self.connection.channel().acknowledge_later(request_id)

    def cancel(self, request_id: int) -> None:
        """Withdraw a request in flight; a value that raced the cancel goes back."""
        self._fetches.discard(request_id)
        connection = self.connection
        connection.channel().cancel(request_id, connection.check_alive)

    def goodbye(self, timeout: float) -> None:
        """End this session now and wait (at most ``timeout`` seconds) until the broker
        confirms it: replies come in order on a channel, so everything this thread sent
        before has arrived too."""
        connection = self.connection
        channel = connection.channel()
        channel.receive(channel.send(Op.BYE, []), time.monotonic() + timeout,
                        connection.check_alive)
