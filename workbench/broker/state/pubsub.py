"""Publish/subscribe in the broker state: berryMQ messages between processes, shared queues, and
coalesced workspace events.

A client process has one *delivery socket* (a channel of its session that only receives). It
subscribes identifier patterns; a published message goes once to every other session with a
matching pattern (never back to the sender's), which then calls its own followers. A *shared
queue* is a FIFO variable of workspace ``__mq`` named by its pattern: every matching message is
stored there once, and consumers fetch it with a lease, so a consumer that dies gives it back.

Flow control: at most ``window`` messages are in flight to a delivery socket until its client
grants credit; beyond that messages wait in a backlog of at most ``backlog`` messages and
``backlog_bytes`` bytes, and the oldest are dropped when it overflows. Drops are counted per
subscriber, shown by ``workbench status``, and carried in every delivery so the client knows. A
slow subscriber therefore costs the broker a bounded amount of memory and never slows a
publisher or anyone else.

Workspace events go to *watchers* the same way, one batch in flight at a time: while a batch is
unacknowledged, further events accumulate in a dict keyed by (workspace, event, variable) that
counts them, so a burst of ten thousand stores reaches a dashboard as one or two batches.

A mixin of ``BrokerState``, like ``operations`` and ``keyvalue``.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

from ...protocol import CHANNEL, HEADER, PROTOCOL_VERSION, SEPARATOR, ProtocolError, Status
from ...topics import Identifier, matches, parse
from .requests import OpError, arity, flag
from .sessions import Session
from .variables import FIFO
from .workspaces import Workspace

MQ_WORKSPACE = "__mq"
#: Delivery kinds, the first byte of a delivery's body.
MESSAGE, EVENTS = 1, 2


@dataclass(frozen=True)
class FlowLimits:
    window: int = 1000  # messages in flight to one delivery socket before it grants credit
    backlog: int = 10_000  # messages waiting beyond the window; the oldest are dropped
    backlog_bytes: int = 64 << 20


class Subscriber:
    """One delivery socket: its patterns, its window and backlog, its watches."""

    __slots__ = ("peer", "session", "patterns", "in_flight", "backlog", "backlog_bytes",
                 "dropped", "delivered", "watches", "events", "batch_in_flight")

    def __init__(self, peer: bytes, session: Session) -> None:
        self.peer = peer
        self.session = session
        self.patterns: dict[Identifier, int] = {}  # pattern -> times subscribed
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


class PubSub:
    # ---------------------------------------------------------------- subscribing

    def _subscriber(self, session: Session, channel_arg: bytes) -> Subscriber:
        peer = session.id + CHANNEL.pack(int(channel_arg))
        subscriber = self.subscribers.get(peer)
        if subscriber is None:
            subscriber = self.subscribers[peer] = Subscriber(peer, session)
        return subscriber

    def _pattern(self, arg: bytes) -> Identifier:
        try:
            return parse(arg.decode("utf-8"))
        except ValueError as exc:
            raise OpError(Status.BAD_REQUEST, str(exc)) from None

    def _mq_subscribe(self, session: Session, peer: bytes, request_id: int, args: list,
                      frames: list) -> None:
        arity(args, 2)
        pattern = self._pattern(args[1])
        subscriber = self._subscriber(session, args[0])
        count = subscriber.patterns.get(pattern, 0)
        subscriber.patterns[pattern] = count + 1
        if not count:
            self.pattern_index.setdefault(pattern.namespace, {}).setdefault(
                pattern.name, {}).setdefault(subscriber, set()).add(pattern.action)
        self._reply(peer, request_id)

    def _mq_unsubscribe(self, session: Session, peer: bytes, request_id: int, args: list,
                        frames: list) -> None:
        arity(args, 2)
        pattern = self._pattern(args[1])
        subscriber = self.subscribers.get(session.id + CHANNEL.pack(int(args[0])))
        if subscriber is not None and pattern in subscriber.patterns:
            subscriber.patterns[pattern] -= 1
            if not subscriber.patterns[pattern]:
                del subscriber.patterns[pattern]
                self._unindex(subscriber, pattern)
        self._reply(peer, request_id)

    def _unindex(self, subscriber: Subscriber, pattern: Identifier) -> None:
        by_name = self.pattern_index.get(pattern.namespace, {})
        actions = by_name.get(pattern.name, {}).get(subscriber)
        if actions is None:
            return
        actions.discard(pattern.action)
        if not actions:
            del by_name[pattern.name][subscriber]
            if not by_name[pattern.name]:
                del by_name[pattern.name]

    def _mq_queue(self, session: Session, peer: bytes, request_id: int, args: list,
                  frames: list) -> None:
        """Declare the shared queue of a pattern (idempotent): a FIFO variable of ``__mq``."""
        arity(args, 1)
        pattern = self._pattern(args[0])
        name = self._name(args[0], "queue")
        ws = self._mq_space()
        var = ws.variables.get(name)
        if var is None or not var.live:
            var = self._new_variable(ws, name, FIFO)
        elif var.mode != FIFO:
            raise OpError(Status.BAD_REQUEST,
                          f"{name!r} in {MQ_WORKSPACE} is a {var.mode} variable, not a queue")
        self.shared_queues[name] = (pattern, var)
        self._reply(peer, request_id)

    def _mq_space(self) -> Workspace:
        ws = self.spaces.get(MQ_WORKSPACE)
        if ws is None:
            ws = self._create_workspace(MQ_WORKSPACE, persistent=True)
        return ws

    # ---------------------------------------------------------------- publishing

    def _mq_publish(self, session: Session, peer: bytes, request_id: int, args: list,
                    frames: list) -> None:
        """args: identifier, wants a reply (0/1); the value's first frame is inline. A
        publisher that wants no reply gets none, not even an error: it is counted instead."""
        arity(args, 2)
        reply = flag(args[1])
        try:
            sender = self._pattern(args[0])
            if not frames:
                raise ProtocolError("publish without a message")
        except (OpError, ProtocolError):
            if reply:
                raise
            self.counters["publish_errors"] += 1
            return
        receivers = 0
        for subscriber in self._matching(sender):
            if subscriber.session is not session:
                self._deliver(subscriber, args[0], frames)
                receivers += 1
        if self.shared_queues:
            receivers += self._enqueue(sender, session, frames)
        self.counters["published"] += 1
        if reply:
            self._reply(peer, request_id, Status.OK, b"%d" % receivers)

    def _matching(self, sender: Identifier) -> set[Subscriber]:
        by_name = self.pattern_index.get(sender.namespace)
        if not by_name:
            return set()
        if sender.name is None:
            groups = list(by_name.values())
        else:
            groups = [by_name.get(sender.name, {}), by_name.get(None, {})]
        found = set()
        action = sender.action
        for group in groups:
            for subscriber, actions in group.items():
                if action is None or None in actions or action in actions:
                    found.add(subscriber)
        return found

    def _enqueue(self, sender: Identifier, session: Session, frames: list) -> int:
        """Store the message once in every shared queue whose pattern matches -> how many."""
        stored = 0
        for name, (pattern, var) in list(self.shared_queues.items()):
            if not var.live:
                del self.shared_queues[name]
                continue
            if matches(pattern, sender):
                try:
                    value = self._incoming_value(session, list(frames))
                except OpError:
                    self.counters["queue_refused"] += 1  # memory cap: counted, not fatal
                    continue
                var.stamp(value)
                self.memory += value.size
                self._offer(var, value)
                stored += 1
        return stored

    def _deliver(self, subscriber: Subscriber, identifier: bytes, frames: list) -> None:
        body = [bytes([MESSAGE]) + identifier + SEPARATOR + bytes(frames[0]), *frames[1:]]
        if subscriber.in_flight < self.flow.window:
            subscriber.in_flight += 1
            self._send_delivery(subscriber, body)
            return
        subscriber.backlog.append(body)
        subscriber.backlog_bytes += _size(body)
        flow = self.flow
        while (len(subscriber.backlog) > flow.backlog
               or subscriber.backlog_bytes > flow.backlog_bytes):
            subscriber.backlog_bytes -= _size(subscriber.backlog.popleft())
            subscriber.dropped += 1
            self.counters["dropped"] += 1

    def _send_delivery(self, subscriber: Subscriber, body: list) -> None:
        """A delivery's header carries the subscriber's drop count where a reply's request id
        would be, so the client always knows how many messages it missed."""
        subscriber.delivered += 1
        head = HEADER.pack(PROTOCOL_VERSION, Status.DELIVERY, len(body) - 1,
                           subscriber.dropped & 0xFFFFFFFF) + body[0]
        self.outbox.append((subscriber.peer, [head, *body[1:]]))

    def _mq_credit(self, session: Session, peer: bytes, request_id: int, args: list,
                   frames: list) -> None:
        """args: channel, messages consumed, event batches consumed (no reply)."""
        arity(args, 3)
        subscriber = self.subscribers.get(session.id + CHANNEL.pack(int(args[0])))
        if subscriber is None:
            return
        subscriber.in_flight = max(0, subscriber.in_flight - int(args[1]))
        backlog = subscriber.backlog
        while backlog and subscriber.in_flight < self.flow.window:
            body = backlog.popleft()
            subscriber.backlog_bytes -= _size(body)
            subscriber.in_flight += 1
            self._send_delivery(subscriber, body)
        if int(args[2]):
            subscriber.batch_in_flight = False
            if subscriber.events:
                self.event_ready.add(subscriber)

    # ---------------------------------------------------------------- workspace events

    def _watch(self, session: Session, peer: bytes, request_id: int, args: list,
               frames: list) -> None:
        """args: channel, workspace name or "*"; the reply lists the workspace's variables
        now, so a dashboard starts from a snapshot and then follows the events."""
        arity(args, 2)
        name = "*" if args[1] == b"*" else self._name(args[1], "workspace")
        subscriber = self._subscriber(session, args[0])
        subscriber.watches.add(name)
        self.watched.setdefault(name, set()).add(subscriber)
        self._json(peer, request_id, self._snapshot(name))

    def _unwatch(self, session: Session, peer: bytes, request_id: int, args: list,
                 frames: list) -> None:
        arity(args, 2)
        name = args[1].decode("utf-8")
        subscriber = self.subscribers.get(session.id + CHANNEL.pack(int(args[0])))
        if subscriber is not None and name in subscriber.watches:
            subscriber.watches.discard(name)
            watchers = self.watched.get(name)
            if watchers is not None:
                watchers.discard(subscriber)
                if not watchers:
                    del self.watched[name]
        self._reply(peer, request_id)

    def _snapshot(self, name: str) -> dict:
        spaces = (self.spaces.by_name.values() if name == "*"
                  else [ws for ws in (self.spaces.get(name),) if ws is not None])
        return {ws.name: {var.name: [len(var.values), var.mode]
                          for var in ws.variables.values()} for ws in spaces}

    def _event(self, ws_name: str, event: str, var: str | None = None) -> None:
        """Record a change for whoever watches ``ws_name``; called only when someone watches.
        Batches go out when the request is done (``flush_events``), so they carry the state
        after it and all of its changes together."""
        watched = self.watched
        subscribers = watched.get(ws_name, ())
        everyone = watched.get("*", ())
        for group in (subscribers, everyone):
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
        self._send_delivery(subscriber, [bytes([EVENTS]) + json.dumps(batch).encode()])

    # ---------------------------------------------------------------- sessions

    def _drop_subscribers(self, session: Session) -> None:
        for peer in [p for p, s in self.subscribers.items() if s.session is session]:
            subscriber = self.subscribers.pop(peer)
            for pattern in list(subscriber.patterns):
                self._unindex(subscriber, pattern)
            for name in subscriber.watches:
                watchers = self.watched.get(name)
                if watchers is not None:
                    watchers.discard(subscriber)
                    if not watchers:
                        del self.watched[name]

    def _subscriber_status(self) -> list[dict]:
        return [{"client": s.session.label, "patterns": sorted(map(str, s.patterns)),
                 "watches": sorted(s.watches), "delivered": s.delivered, "dropped": s.dropped,
                 "in_flight": s.in_flight, "backlog": len(s.backlog)}
                for s in self.subscribers.values()]

