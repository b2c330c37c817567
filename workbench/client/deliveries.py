"""What the broker pushes to a client: published messages and workspace events.

A connection that subscribes or watches gets a *delivery socket*: a DEALER of its session with a
channel number of its own, read by one daemon thread. The thread hands each delivery to the
handler registered for its kind (``MESSAGE`` or ``EVENTS``) and grants the broker credit as it
goes: every ``CREDIT_EVERY`` messages, and whatever is left when the socket falls idle. Handlers run
in that thread, so a handler that blocks holds up this process's deliveries (the broker then
keeps a bounded backlog for it and drops the oldest beyond it; ``dropped`` counts them).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Callable

from ..config import DELIVERY_START_TIMEOUT
from ..errors import NwsConnectException
from ..protocol import CHANNEL, HEADER, HEADER_SIZE, Op, Status, request_head
from .dealer import Dealer, DealerError

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("workbench.deliveries")

#: Delivery kinds: the first byte of a delivery's body (see broker/state/deliveries.py).
MESSAGE, EVENTS, SYNC = 1, 2, 3
#: The channel number of every session's delivery socket.
DELIVERY_CHANNEL = 0xFFFE
#: Messages consumed before credit is granted (the broker's window is far larger, so a stream
#: never stalls on credit; the rest is granted when the socket falls idle for a poll slice).
CREDIT_EVERY = 64
_POLL_S = 0.25

_unpack_header = HEADER.unpack_from


class Deliveries(threading.Thread):
    """One connection's delivery socket and the thread that reads it."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(name=f"workbench-deliveries-{connection.address}", daemon=True)
        self._connection = weakref.ref(connection)
        self._identity = connection.session_id + CHANNEL.pack(DELIVERY_CHANNEL)
        self._address = connection.address
        self._endpoint = connection.endpoint
        self._curve = connection.curve
        self._connect_timeout = connection.connect_timeout
        self.channel_arg = b"%d" % DELIVERY_CHANNEL
        self.handlers: dict[int, Callable[[bytes, list], None]] = {}
        self.dropped = 0  # messages the broker dropped for this process, as it last said
        self.delivered = 0
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._failure: str | None = None
        self._markers: dict[bytes, threading.Event] = {}  # sync markers awaited
        self._marker_count = itertools.count()

    def start_and_wait(self) -> Deliveries:
        self.start()
        if not self._ready.wait(DELIVERY_START_TIMEOUT) or self._failure:
            self.stop()
            raise NwsConnectException(self._failure or
                                      f"the delivery socket to {self._address} did not start")
        return self

    def stop(self, wait: bool = False) -> None:
        """Ask the thread to end; it closes its socket itself within a poll slice (250 ms),
        so closing a connection does not wait for it unless ``wait``."""
        self._stopping.set()
        if wait and self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=2 * _POLL_S + 1)

    def expect_marker(self) -> tuple[bytes, threading.Event]:
        """A new sync marker and the event this thread sets once it has read it, and so
        everything the broker sent before it (see ``MessageBus.sync``)."""
        marker = b"%d" % next(self._marker_count)
        arrived = self._markers[marker] = threading.Event()
        return marker, arrived

    def forget_marker(self, marker: bytes) -> None:
        self._markers.pop(marker, None)

    def run(self) -> None:
        sock = None
        try:
            sock = Dealer(self._endpoint, self._identity, self._connect_timeout, self._curve)
            if self._register(sock):
                self._ready.set()
                self._serve(sock)
        except (OSError, DealerError) as exc:  # usually the broker went away (the heartbeat
            self._failure = (self._failure  # tells the callers); if not, nothing more arrives
                             or f"the delivery socket to {self._address} broke: {exc}")
            if not self._stopping.is_set():
                log.warning("%s; no more messages or events reach this process on it",
                            self._failure)
        finally:
            self._ready.set()
            if sock is not None:
                sock.close()
            connection = self._connection()
            if connection is not None:  # a follower's requests made this thread a channel
                connection.close_own_channel()

    def _register(self, sock: Dealer) -> bool:
        """One request on this socket, so the broker can route deliveries to it at once."""
        sock.send([request_head(Op.HEARTBEAT, 1)], self._unless_stopping)
        deadline = time.monotonic() + DELIVERY_START_TIMEOUT
        while not self._stopping.is_set():
            if sock.recv(_POLL_S) is not None:
                return True
            if time.monotonic() > deadline:
                self._failure = f"the broker at {self._address} did not answer"
                return False
        return False

    def _serve(self, sock: Dealer) -> None:
        recv = sock.recv
        messages = batches = 0
        while not self._stopping.is_set():
            message = recv(_POLL_S)
            if message is None:
                if self._connection() is None:
                    return  # the connection was collected
                if messages:  # idle: what was consumed is credited now
                    self._credit(sock, messages, 0)
                    messages = 0
                continue
            head, *frames = message
            _, status, nextra, dropped = _unpack_header(head)
            if status != Status.DELIVERY:
                continue  # a reply (to the registration): nothing to do
            self.dropped = dropped
            self.delivered += 1
            kind = head[HEADER_SIZE]
            if kind == SYNC:
                arrived = self._markers.pop(head[HEADER_SIZE + 1:], None)
                if arrived is not None:
                    arrived.set()
            handler = self.handlers.get(kind)
            if handler is not None:
                try:
                    handler(head, frames)
                except Exception:  # a handler's bug must not stop this process's deliveries
                    log.exception("a delivery handler failed")
            if kind == EVENTS:
                batches += 1
            else:
                messages += 1
            if batches or messages >= CREDIT_EVERY:
                self._credit(sock, messages, batches)
                messages = batches = 0

    def _credit(self, sock: Dealer, messages: int, batches: int) -> None:
        """Tell the broker what was consumed: it may send that many more."""
        sock.send([request_head(Op.MQ_CREDIT, 0,
                                [self.channel_arg, b"%d" % messages, b"%d" % batches])],
                  self._unless_stopping)

    def _unless_stopping(self) -> None:
        """A send that a hung broker's full socket holds up gives way to ``stop``."""
        if self._stopping.is_set():
            raise DealerError("the connection is closing")
