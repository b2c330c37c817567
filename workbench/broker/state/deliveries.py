"""Deliveries: messages the broker sends unasked to a client's *delivery socket* (a channel of
its session that only receives), under flow control; and the workspace events of watchers,
coalesced.

Flow control: at most ``window`` messages are in flight to a delivery socket until its client
grants credit; beyond that messages wait in a backlog of at most ``backlog`` messages and
``backlog_bytes`` bytes, and the oldest are dropped when it overflows. Drops are counted per
subscriber, shown by ``workbench status``, and carried in every delivery so the client knows. A
slow subscriber therefore costs the broker a bounded amount of memory and never slows a
publisher or anyone else.

Workspace events go to *watchers* the same way, one batch in flight at a time: while a batch is
unacknowledged, further events accumulate in a dict keyed by (workspace, event, variable) that
counts them, so a burst of ten thousand stores reaches a dashboard as one or two batches.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

from ...config import DELIVERY_BACKLOG, DELIVERY_BACKLOG_BYTES, DELIVERY_WINDOW
from ...protocol import CHANNEL, HEADER, PROTOCOL_VERSION, Status
from .effects import Outbox
from .sessions import Session
from .workspaces import WorkspaceTable

#: Delivery kinds, the first byte of a delivery's body (SYNC: a marker a client asked for, so
#: it knows when everything delivered before it has been read).
MESSAGE, EVENTS, SYNC = 1, 2, 3


@dataclass(frozen=True)
class FlowLimits:
    window: int = DELIVERY_WINDOW  # messages in flight before the client grants credit
    backlog: int = DELIVERY_BACKLOG  # messages waiting beyond the window; oldest dropped
    backlog_bytes: int = DELIVERY_BACKLOG_BYTES


class Subscriber:
    """One delivery socket: its patterns, its window and backlog, its watches."""

    __slots__ = ("peer", "session", "patterns", "in_flight", "backlog", "backlog_bytes",
                 "dropped", "delivered", "watches", "events", "batch_in_flight")

    def __init__(self, peer: bytes, session: Session) -> None:
        self.peer = peer
        self.session = session
        self.patterns: dict = {}  # pattern (topics.Identifier) -> times subscribed
        self.in_flight = 0
        self.backlog: deque[list] = deque()
        self.backlog_bytes = 0
        self.dropped = 0
        self.delivered = 0
        self.watches: set[str] = set()  # workspace names, or "*"
        self.events: dict[tuple[str, str, str | None], int] = {}  # pending, coalesced
        self.batch_in_flight = False


def _size(frames: list) -> int:
    return sum(len(frame) for frame in frames)


class Deliveries:
    def __init__(self, flow: FlowLimits, outbox: Outbox, counters: dict[str, int],
                 spaces: WorkspaceTable) -> None:
        self.flow = flow
        self.outbox = outbox
        self.counters = counters
        self.spaces = spaces
        self.subscribers: dict[bytes, Subscriber] = {}  # by delivery socket
        self.watched: dict[str, set[Subscriber]] = {}  # watchers by workspace name, or "*"
        self.event_ready: set[Subscriber] = set()  # watchers with events to send

    def subscriber(self, session: Session, channel_arg: bytes) -> Subscriber:
        """The delivery socket ``channel_arg`` of ``session``, known from now on."""
        peer = session.id + CHANNEL.pack(int(channel_arg))
        subscriber = self.subscribers.get(peer)
        if subscriber is None:
            subscriber = self.subscribers[peer] = Subscriber(peer, session)
        return subscriber

    def known(self, session: Session, channel_arg: bytes) -> Subscriber | None:
        return self.subscribers.get(session.id + CHANNEL.pack(int(channel_arg)))

    # ---------------------------------------------------------------- flow control

    def deliver(self, subscriber: Subscriber, body: list) -> None:
        """Send ``body`` now if the window allows, else keep it in the bounded backlog."""
        if subscriber.in_flight < self.flow.window:
            subscriber.in_flight += 1
            self._send(subscriber, body)
            return
        subscriber.backlog.append(body)
        subscriber.backlog_bytes += _size(body)
        flow = self.flow
        while (len(subscriber.backlog) > flow.backlog
               or subscriber.backlog_bytes > flow.backlog_bytes):
            subscriber.backlog_bytes -= _size(subscriber.backlog.popleft())
            subscriber.dropped += 1
            self.counters["dropped"] += 1

    def _send(self, subscriber: Subscriber, body: list) -> None:
        """A delivery's header carries the subscriber's drop count where a reply's request id
        would be, so the client always knows how many messages it missed."""
        subscriber.delivered += 1
        head = HEADER.pack(PROTOCOL_VERSION, Status.DELIVERY, len(body) - 1,
                           subscriber.dropped & 0xFFFFFFFF) + body[0]
        self.outbox.send(subscriber.peer, [head, *body[1:]])

    def credit(self, subscriber: Subscriber, messages: int, batches: int) -> None:
        """The client consumed ``messages`` messages and ``batches`` event batches."""
        subscriber.in_flight = max(0, subscriber.in_flight - messages)
        backlog = subscriber.backlog
        while backlog and subscriber.in_flight < self.flow.window:
            body = backlog.popleft()
            subscriber.backlog_bytes -= _size(body)
            subscriber.in_flight += 1
            self._send(subscriber, body)
        if batches:
            subscriber.batch_in_flight = False
            if subscriber.events:
                self.event_ready.add(subscriber)

    def undeliverable(self, peer: bytes) -> None:
        """A delivery found its socket gone: dropped, and counted."""
        self.counters["dropped"] += 1
        subscriber = self.subscribers.get(peer)
        if subscriber is not None:
            subscriber.dropped += 1
            subscriber.in_flight = max(0, subscriber.in_flight - 1)

    # ---------------------------------------------------------------- workspace events

    def watch(self, subscriber: Subscriber, name: str) -> dict:
        """``subscriber`` follows workspace ``name`` ("*": all) -> its variables now, so a
        dashboard starts from a snapshot and then follows the events."""
        if name not in subscriber.watches:
            subscriber.watches.add(name)
            subscriber.session.watches += 1
        self.watched.setdefault(name, set()).add(subscriber)
        spaces = (self.spaces.by_name.values() if name == "*"
                  else [ws for ws in (self.spaces.get(name),) if ws is not None])
        return {ws.name: {var.name: [len(var.values), var.mode]
                          for var in ws.variables.values()} for ws in spaces}

    def unwatch(self, subscriber: Subscriber, name: str) -> None:
        if name in subscriber.watches:
            subscriber.watches.remove(name)
            subscriber.session.watches -= 1
        watchers = self.watched.get(name)
        if watchers is not None:
            watchers.discard(subscriber)
            if not watchers:
                del self.watched[name]

    def event(self, ws_name: str, event: str, var: str | None = None) -> None:
        """Record a change for whoever watches ``ws_name``; called only when someone watches.
        Batches go out when the call is done (``flush_events``), so they carry the state after
        it and all of its changes together."""
        watched = self.watched
        for group in (watched.get(ws_name, ()), watched.get("*", ())):
            for subscriber in group:
                key = (ws_name, event, var)
                subscriber.events[key] = subscriber.events.get(key, 0) + 1
                if not subscriber.batch_in_flight:
                    self.event_ready.add(subscriber)

    def flush_events(self) -> None:
        """Send a batch to every watcher that has events and none in flight."""
        for subscriber in self.event_ready:
            if subscriber.events and not subscriber.batch_in_flight:
                self._send_events(subscriber)
        self.event_ready.clear()

    def _send_events(self, subscriber: Subscriber) -> None:
        batch = []
        for (ws_name, event, var), count in subscriber.events.items():
            item = {"ws": ws_name, "event": event, "count": count}
            if var is not None:
                item["var"] = var
                ws = self.spaces.get(ws_name)
                variable = ws.variables.get(var) if ws is not None else None
                item["values"] = len(variable.values) if variable is not None else 0
            batch.append(item)
        subscriber.events = {}
        subscriber.batch_in_flight = True
        self._send(subscriber, [bytes([EVENTS]) + json.dumps(batch).encode()])

    # ---------------------------------------------------------------- sessions

    def remove_session(self, session: Session) -> list[Subscriber]:
        """Forget the delivery sockets of a session that ended -> them."""
        gone = [s for s in self.subscribers.values() if s.session is session]
        for subscriber in gone:
            del self.subscribers[subscriber.peer]
            for name in list(subscriber.watches):
                self.unwatch(subscriber, name)
        return gone

    def status(self) -> list[dict]:
        return [{"client": s.session.label, "patterns": sorted(map(str, s.patterns)),
                 "watches": sorted(s.watches), "delivered": s.delivered, "dropped": s.dropped,
                 "in_flight": s.in_flight, "backlog": len(s.backlog)}
                for s in self.subscribers.values()]
