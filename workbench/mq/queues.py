"""berryMQ's ``Queue``, the pull side: a standalone queue in this process, or a shared one at
the broker.

**Standalone** (the default): every matching message, from this process or another, is copied
into every standalone queue following it. The queue is bounded (``maxsize``, 10,000): when
full, the oldest message is dropped for the new one and counted in ``dropped``, as the broker
does for a slow subscriber, rather than growing without end or blocking the sender. It is FIFO
(a deque: berryMQ's heap of ``(priority, message)`` pairs compared messages on equal
priorities, which fails on Python 3) and is released when collected (berryMQ never released
one).

**Shared** (``shared=True``): one queue at the broker per exact identifier string (``"task"``
and ``"task:*"`` are two queues), shared by every process: each matching message is stored
once, wherever it was sent from, and each goes to exactly one consumer. A message taken is held
under a *lease* until its consumer is done with it: until that thread's next ``get`` on the
queue, ``task_done()``, ``close()``, the queue's collection, or the process's exit. If the
consumer's process dies first, the broker puts the message back at the head of the queue (once
it declares the session dead, a few heartbeats later) for another consumer: at least once,
never lost. ``qsize`` and
``empty`` ask the broker; ``full`` is always False (the broker's memory limit bounds it).

Neither has ``put``: messages arrive by ``twitter``. ``Empty`` is ``queue.Empty``.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections import deque
from typing import Any

from ..client.connection import Channel, Connection
from ..config import MQ_QUEUE_MAXSIZE
from ..errors import NwsTimeoutException
from ..topics import parse
from .message import Message, unpack
from .registry import registry
from .transport import transport

Empty = queue.Empty

#: How many messages a standalone queue holds before it drops the oldest.
STANDALONE_MAXSIZE = MQ_QUEUE_MAXSIZE


class Queue:
    """``Queue(identifier, shared=False)``: see the module docstring. ``Queue(...)`` returns a
    ``StandaloneQueue`` or a ``SharedQueue``; both are ``Queue``s."""

    identifier: str
    shared: bool
    dropped: int

    def __new__(cls, identifier: str, shared: bool = False, **options: Any) -> Queue:
        kind = (SharedQueue if shared else StandaloneQueue) if cls is Queue else cls
        return super().__new__(kind)

    def get(self, block: bool = True, timeout: float | None = None) -> Message:
        raise NotImplementedError

    def get_nowait(self) -> Message:
        return self.get(block=False)

    def qsize(self) -> int:
        raise NotImplementedError

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return False

    def task_done(self) -> None:
        """Say that the message this thread took last is dealt with (shared queues)."""

    def close(self) -> None:
        """Stop receiving (standalone) or release the leases held (shared)."""

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "shared" if self.shared else "standalone"
        return f"<mq.Queue {self.identifier!r} {kind}, {self.qsize()} messages>"


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class StandaloneQueue(Queue):
    maxsize = STANDALONE_MAXSIZE

    def __init__(self, identifier: str, shared: bool = False, at_server: bool = False) -> None:
        """``at_server``: a ``connect_via_queue`` token's queue (see ``registry.Entry``)."""
        self.identifier = identifier
        self.shared = False
        self.dropped = 0
        self._items: deque[Message] = deque()
        self._arrived = threading.Condition(threading.Lock())
        self._entry = registry.register(parse(identifier), registry.weak(self._receive),
                                        is_queue=True, at_server=at_server)

    def _receive(self, message: Message) -> None:
        with self._arrived:
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(message)
            self._arrived.notify()

    def get(self, block: bool = True, timeout: float | None = None) -> Message:
        _check_timeout(timeout)
        with self._arrived:
            if block and not self._arrived.wait_for(lambda: self._items, timeout):
                raise Empty
            if not self._items:
                raise Empty
            return self._items.popleft()

    def qsize(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def close(self) -> None:
        registry.unregister(self._entry)


class SharedQueue(Queue):
    def __init__(self, identifier: str, shared: bool = True) -> None:
        self.identifier = identifier
        self.shared = True
        self.dropped = 0  # the broker drops nothing from a shared queue
        self._ident = parse(identifier)
        self._declared = -1  # the bus generation it was declared on
        # thread id -> (channel, request id, bus generation) of the message it holds
        self._leases: dict[int, tuple[Channel, int, int]] = {}
        self._lock = threading.Lock()
        self._connection()
        transport.lease_holders.add(self)
        weakref.finalize(self, _release, self._leases)

    def _connection(self) -> Connection:
        """mq's connection, the queue declared on it (again, on a new one)."""
        connection = transport.connection()
        if self._declared != transport.generation:
            transport.bus().declare_queue(self.identifier)
            self._declared = transport.generation
        return connection

    def get(self, block: bool = True, timeout: float | None = None) -> Message:
        """The oldest message, held under lease until this thread's next ``get``."""
        _check_timeout(timeout)
        self._connection()
        self.task_done()  # the acknowledgement rides on the fetch itself
        try:
            taken = transport.bus().queue_take(self.identifier, block, timeout)
        except NwsTimeoutException:
            raise Empty from None
        if taken is None:
            raise Empty
        with self._lock:
            self._leases[threading.get_ident()] = (taken.channel, taken.request_id,
                                                   transport.generation)
        return unpack(taken.value, self._ident)

    def task_done(self) -> None:
        """Acknowledge the message this thread took last: sent with its next request or
        heartbeat."""
        with self._lock:
            lease = self._leases.pop(threading.get_ident(), None)
        if lease is None or lease[2] != transport.generation:
            return  # nothing held, or held by a session that has ended (and given it back)
        channel, request_id, _ = lease
        if not channel.acknowledge_later(request_id):  # a thread that reused a finished
            transport.acknowledge([lease])  # one's id: that channel may be gone

    def take_leases(self) -> list[tuple[Channel, int, int]]:
        with self._lock:
            leases = list(self._leases.values())
            self._leases.clear()
        return leases

    def close(self) -> None:
        """Acknowledge now every message this queue object's threads hold."""
        transport.acknowledge(self.take_leases())

    def qsize(self) -> int:
        self._connection()
        return transport.bus().queue_size(self.identifier)


def _release(leases: dict[int, tuple[Channel, int, int]]) -> None:
    """A collected shared queue acknowledges what it held, by the heartbeat (no request may
    be made from a finalizer)."""
    for channel, request_id, generation in list(leases.values()):
        if generation == transport.generation:
            channel.acknowledge_later(request_id, any_thread=True)
    leases.clear()
