"""This process's one connection to the broker, as ``workbench.mq`` uses it.

Owns which broker mq talks to (``init_connection``; otherwise ``WORKBENCH_BROKER``, the default
broker or a private one, as ``NetWorkSpace`` finds it), the ``MessageBus`` on that connection
(made lazily, on the first follower, queue or twitter), publishing, and the acknowledgement of
messages that shared queues hold under lease when the process exits or changes brokers.

Fork safety: a child process must never speak with its parent's session (its goodbye would end
the parent's). After ``fork`` the inherited connection is disowned, never closed or collected,
and the child makes its own on first use. That is done by the ``os.register_at_fork`` hook,
which runs in every child that goes on running Python (``PyOS_AfterFork_Child`` runs it), so
publishing, the path of every message, checks nothing more; the calls that make or hand out
the bus check ``os.getpid()`` as well.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import weakref
from typing import Any, Callable, NamedTuple, Protocol
from urllib.parse import urlsplit

from ..client.connection import Channel, Connection
from ..client.embedded import connect
from ..client.pubsub import MessageBus, publish_frames
from ..config import MQ_ACK_TIMEOUT, normalize_address
from ..connection_file import is_connection_file, resolve
from ..errors import NwsException, NwsPicklingException, NwsServerException
from .message import encode

log = logging.getLogger("workbench.mq")


class Link(NamedTuple):
    """mq's bus and its connection."""

    bus: MessageBus
    connection: Connection


class LeaseHolder(Protocol):
    def take_leases(self) -> list[tuple[Channel, int, int]]:
        """Forget and return the (channel, request id, bus generation) of unacknowledged
        messages."""


class Transport:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pid = os.getpid()
        # the bus and its connection, once made (the connection may have been closed since:
        # ``link`` makes new ones, publishing does on finding it closed)
        self._link: Link | None = None
        self._inherited: list[Connection] = []  # a parent's, kept from ever being collected
        # chosen by init_connection (an address or a connection file); None: found as usual
        self.address: str | None = None
        self.generation = 0  # counts the buses made: a shared queue re-declares on a new one
        # the registry's dispatch (set when it is made, before any bus), which a bus calls
        # itself: no call of ours in between per message
        self.on_message: Callable[[str, Any], None] | None = None
        self.on_new_bus: Callable[[], None] | None = None  # the registry re-subscribes
        self.lease_holders: weakref.WeakSet[LeaseHolder] = weakref.WeakSet()
        self.unpublished = 0
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ the bus

    def link(self) -> Link:
        """The bus and its connection, connecting first if there is none (or it was closed,
        or this is a child)."""
        link = self._link
        if link is not None and self._pid == os.getpid() and not link.connection.closed:
            return link
        with self._lock:
            if self._pid != os.getpid():
                self.after_fork()
            link = self._link
            made = link is None or link.connection.closed
            if made:
                connection = self._connect()
                link = self._link = Link(MessageBus(connection, self.on_message), connection)
                self.generation += 1
        if made and self.on_new_bus is not None:
            self.on_new_bus()
        return link

    def bus(self) -> MessageBus:
        return self.link().bus

    def connection(self) -> Connection:
        return self.link().connection

    def current(self) -> MessageBus | None:
        """The bus if there is a usable one; never connects."""
        link = self._link
        if link is None or self._pid != os.getpid() or link.connection.closed:
            return None
        return link.bus

    def _connect(self) -> Connection:
        return open_connection(self.address)

    # ------------------------------------------------------------------ publishing

    def publish(self, identifier: str, value: tuple, connection: Connection | None = None,
                confirmed: bool = False) -> bool:
        """Hand a message (``message.pack``ed) to the broker (mq's, or ``connection``'s)
        without waiting, or with ``confirmed`` once the broker has passed it on (then every
        receiver's ``sync`` after this returns finds it). A value that cannot be pickled is
        not sent (the sender's own followers still get it), nor anything while the
        connection's heartbeat finds the broker gone or when it goes during a confirmed
        publish: counted, and logged once per identifier.

        The path of every ``twitter`` takes mq's connection unchecked (no ``getpid``, no
        ``closed`` per message: the fork hook replaces it in a child, and one closed under mq
        is found when it refuses the message)."""
        unchecked = False
        if connection is None:
            link = self._link
            unchecked = link is not None and not confirmed
            # (a confirmed publish waits for the broker: checks cost nothing beside that,
            # and it is never sent twice)
            connection = link.connection if unchecked else self.connection()
        broken = connection.broken
        if broken:  # sending would queue up in the socket, then block: the broker is gone
            # (the connection reconnects on its own when a broker answers there again)
            return self._refused(identifier, value, connection, unchecked,
                                 f"the broker is unreachable ({broken})")
        try:
            publish_frames(connection, identifier, encode(value), confirmed)
        except NwsPicklingException as exc:
            return self._unpublished(identifier, f"its arguments cannot be pickled ({exc})")
        except NwsServerException as exc:
            return self._refused(identifier, value, connection, unchecked,
                                 f"the broker went away ({exc})")
        return True

    def _refused(self, identifier: str, value: tuple, connection: Connection, unchecked: bool,
                 why: str) -> bool:
        """A message ``connection`` did not send -> False, counted; but mq's connection taken
        unchecked may have been closed under mq (``Connection.close``, the finalizers at
        exit), which refuses a message before any of it goes out: then it goes on a new
        connection, as ``link`` would have made one before."""
        if unchecked and connection.closed:
            return self.publish(identifier, value, self.connection())
        return self._unpublished(identifier, why)

    def _unpublished(self, identifier: str, why: str) -> bool:
        self.unpublished += 1
        if identifier not in self._warned and len(self._warned) < 1000:  # not a log flood
            self._warned.add(identifier)
            log.warning("mq: %s reached this process's followers only: %s", identifier, why)
        return False

    # ------------------------------------------------------------------ which broker

    def use(self, address: str | None) -> None:
        """Talk to the broker at ``address`` from now on (None: find it as usual), closing the
        connection to another one. The registry re-subscribes on the new bus."""
        with self._lock:
            link = self._link
            if self.current() is not None and same_broker(link.connection.address, address):
                self.address = address
                return
            self.close()
            self.address = address

    def close(self) -> None:
        """Acknowledge what shared queues hold, then end the session."""
        with self._lock:
            link = self._link
            if link is not None and self._pid == os.getpid() and not link.connection.closed:
                self.settle_leases()
                link.connection.close()
            self._link = None

    def settle_leases(self) -> None:
        """Acknowledge now every message a shared queue of this process holds under lease,
        whichever thread's channel took it: one heartbeat request carries (channel, request
        id) pairs, as the heartbeat thread's own do."""
        pending = []
        for holder in list(self.lease_holders):
            pending.extend(holder.take_leases())
        self.acknowledge(pending)

    def acknowledge(self, pending: list[tuple[Channel, int, int]]) -> None:
        leases = [(channel, request_id) for channel, request_id, generation in pending
                  if generation == self.generation]  # an older session's leases went with it
        link = self._link
        if not leases or link is None or link.connection.closed or self._pid != os.getpid():
            return
        try:
            link.connection.acknowledge(leases, timeout=MQ_ACK_TIMEOUT)
        except NwsException as exc:  # the broker gives the messages back: at least once
            log.warning("mq: %d shared-queue messages were not acknowledged: %s",
                        len(leases), exc)

    # ------------------------------------------------------------------ fork

    def after_fork(self) -> None:
        """In a child: disown the parent's session, so that nothing here ever closes it (its
        goodbye would end the parent's session at the broker), and start afresh."""
        self._lock = threading.RLock()
        link = self._link
        if link is not None and self._pid != os.getpid():
            link.connection.disown()  # neither exit nor collection may say goodbye for it
            self._inherited.append(link.connection)
        self._link = None
        self._pid = os.getpid()
        self.lease_holders = weakref.WeakSet()


def open_connection(address: str | None) -> Connection:
    """A new session with the broker at ``address`` (or of a connection file), or the one
    found as usual."""
    return connect(address)


def same_broker(address: str, other: str | None) -> bool:
    """Whether a broker address and another address or connection file name one broker
    (``localhost`` is ``127.0.0.1``). ``None`` (find it as usual) matches whatever broker is
    in use."""
    if other is None:
        return True
    if is_connection_file(other):
        other = resolve(other).address
    a, b = urlsplit(address), urlsplit(other)
    if a.port != b.port:
        return False
    if a.hostname == b.hostname:
        return True
    try:
        return socket.gethostbyname(a.hostname) == socket.gethostbyname(b.hostname)
    except OSError:
        return False


def broker_address(addr: tuple[str, int] | str | None) -> str | None:
    """berryMQ's ``(host, port)`` (or ``"host:port"``) -> a broker address; port 0, like
    berryMQ's default ``("localhost", 0)``, and None mean "find the broker as usual". A
    connection file (its path or JSON text) stays as it is, for each connection to read: one
    that cannot be used raises NwsConnectionFileException here."""
    if addr is None:
        return None
    if isinstance(addr, str):
        if is_connection_file(addr):
            resolve(addr)
            return addr
        return normalize_address(addr)
    host, port = addr
    if not port:
        return None
    return normalize_address(f"{host or 'localhost'}:{int(port)}")


transport = Transport()


def _after_fork_in_child() -> None:
    transport.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _settle_at_exit() -> None:
    if transport.current() is not None:
        transport.settle_leases()


# Exit handlers run last registered first. Connections are closed at exit by their finalizers
# (``weakref.finalize`` registers its handler when the first one is made) and by the embedded
# broker's handler: making a finalizer first ensures both are registered before this one, which
# therefore acknowledges the leases while the session is still open.
weakref.finalize(transport, lambda: None)
atexit.register(_settle_at_exit)
