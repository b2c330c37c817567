"""Publish/subscribe in the broker state: berryMQ messages between processes, shared queues, and
the requests that start and stop workspace watches.

A client process has one *delivery socket* (see ``deliveries``). It subscribes identifier
patterns; a published message goes once to every other session with a matching pattern (never
back to the sender's), which then calls its own followers. A *shared queue* is a FIFO variable of
workspace ``__mq`` named by its pattern: every matching message is stored there once, and
consumers fetch it with a lease, so a consumer that dies gives it back.
"""

from __future__ import annotations

from typing import Callable

from ...protocol import Op, ProtocolError, SEPARATOR, Status
from ...topics import Identifier, matches, parse
from .caps import SessionCaps
from .changes import QueueDeclared
from .deliveries import MESSAGE, SYNC, Deliveries, Subscriber
from .effects import Outbox
from .handoffs import HandOffs
from .memory import Memory
from .registry import Registry
from .requests import OpError, arity, flag
from .sessions import Session
from .variables import FIFO, Variable
from .workspaces import Workspace

MQ_WORKSPACE = "__mq"


class PubSubService:
    def __init__(self, deliveries: Deliveries, registry: Registry, handoffs: HandOffs,
                 memory: Memory, outbox: Outbox, counters: dict[str, int],
                 caps: SessionCaps) -> None:
        self.deliveries = deliveries
        self.registry = registry
        self.handoffs = handoffs
        self.memory = memory
        self.outbox = outbox
        self.counters = counters
        self.caps = caps
        # Subscribers by the namespace and name of their patterns, then the actions they take.
        self.pattern_index: dict[str | None, dict[str | None, dict[Subscriber, set]]] = {}
        self.shared_queues: dict[str, tuple[Identifier, Variable]] = {}

    def handlers(self) -> dict[int, Callable]:
        return {
            Op.MQ_PUBLISH: self.publish, Op.MQ_SUBSCRIBE: self.subscribe,
            Op.MQ_UNSUBSCRIBE: self.unsubscribe, Op.MQ_CREDIT: self.credit,
            Op.MQ_QUEUE: self.queue, Op.WATCH: self.watch, Op.UNWATCH: self.unwatch,
            Op.MQ_SYNC: self.sync,
        }

    # ---------------------------------------------------------------- subscribing

    def _pattern(self, arg: bytes) -> Identifier:
        try:
            return parse(arg.decode("utf-8"))
        except ValueError as exc:
            raise OpError(Status.BAD_REQUEST, str(exc)) from None

    def subscribe(self, session: Session, peer: bytes, request_id: int, args: list,
                  frames: list) -> None:
        arity(args, 2)
        pattern = self._pattern(args[1])
        known = self.deliveries.known(session, args[0])
        count = known.patterns.get(pattern, 0) if known is not None else 0
        if not count:
            self.caps.subscribe(session)  # before anything is made for it
        subscriber = known or self.deliveries.subscriber(session, args[0])
        subscriber.patterns[pattern] = count + 1
        if not count:
            session.subscriptions += 1
            self.pattern_index.setdefault(pattern.namespace, {}).setdefault(
                pattern.name, {}).setdefault(subscriber, set()).add(pattern.action)
        self.outbox.reply(peer, request_id)

    def unsubscribe(self, session: Session, peer: bytes, request_id: int, args: list,
                    frames: list) -> None:
        arity(args, 2)
        pattern = self._pattern(args[1])
        subscriber = self.deliveries.known(session, args[0])
        if subscriber is not None and pattern in subscriber.patterns:
            subscriber.patterns[pattern] -= 1
            if not subscriber.patterns[pattern]:
                del subscriber.patterns[pattern]
                session.subscriptions -= 1
                self._unindex(subscriber, pattern)
        self.outbox.reply(peer, request_id)

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

    def queue(self, session: Session, peer: bytes, request_id: int, args: list,
              frames: list) -> None:
        """Declare the shared queue of a pattern (idempotent): a FIFO variable of ``__mq``."""
        arity(args, 1)
        pattern = self._pattern(args[0])
        name = self.registry.name(args[0], "queue")
        ws = self._mq_space()
        var = ws.variables.get(name)
        if var is None or not var.live:
            var = self.registry.new_variable(ws, name, FIFO)
        elif var.mode != FIFO:
            raise OpError(Status.BAD_REQUEST,
                          f"{name!r} in {MQ_WORKSPACE} is a {var.mode} variable, not a queue")
        queued = self.shared_queues.get(name)
        if queued is None or queued[1] is not var:
            self.outbox.log.append((QueueDeclared, name))
        self.shared_queues[name] = (pattern, var)
        self.outbox.reply(peer, request_id)

    def restored_queue(self, name: str, var: Variable) -> None:
        """A shared queue restored from a log (``restore``): ``var`` of ``__mq`` receives
        what matches ``name`` again."""
        self.shared_queues[name] = (parse(name), var)

    def _mq_space(self) -> Workspace:
        ws = self.registry.spaces.get(MQ_WORKSPACE)
        if ws is None:
            ws = self.registry.create_workspace(MQ_WORKSPACE, persistent=True)
        return ws

    # ---------------------------------------------------------------- publishing

    def publish(self, session: Session, peer: bytes, request_id: int, args: list,
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
        body = None
        for subscriber in self._matching(sender):
            if subscriber.session is not session:
                if body is None:
                    body = [bytes([MESSAGE]) + args[0] + SEPARATOR + bytes(frames[0]),
                            *frames[1:]]
                self.deliveries.deliver(subscriber, body)
                receivers += 1
        if self.shared_queues:
            receivers += self._enqueue(sender, session, frames)
        self.counters["published"] += 1
        if reply:
            self.outbox.reply(peer, request_id, Status.OK, b"%d" % receivers)

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
                    value = self.memory.admit(session, list(frames))
                except OpError:
                    self.counters["queue_refused"] += 1  # memory cap: counted, not fatal
                    continue
                self.handoffs.store(var, value)
                stored += 1
        return stored

    def credit(self, session: Session, peer: bytes, request_id: int, args: list,
               frames: list) -> None:
        """args: channel, messages consumed, event batches consumed (no reply)."""
        arity(args, 3)
        subscriber = self.deliveries.known(session, args[0])
        if subscriber is not None:
            self.deliveries.credit(subscriber, int(args[1]), int(args[2]))

    def sync(self, session: Session, peer: bytes, request_id: int, args: list,
             frames: list) -> None:
        """args: channel, marker. The marker goes to the delivery socket as a delivery of its
        own, behind every message already sent or waiting for credit there: when the client
        reads it, it has read everything published before this request (berryMQ's
        ``get_nowait`` after another process's ``send_message``, see ``workbench.mq``)."""
        arity(args, 2)
        if len(args[1]) > 64:
            raise OpError(Status.BAD_REQUEST, "a sync marker is at most 64 bytes")
        subscriber = self.deliveries.known(session, args[0])
        if subscriber is None:
            raise OpError(Status.BAD_REQUEST, "sync on a channel that is not a delivery "
                          "socket: subscribe or watch first")
        self.deliveries.deliver(subscriber, [bytes([SYNC]) + args[1]])
        self.outbox.reply(peer, request_id)

    # ---------------------------------------------------------------- workspace events

    def watch(self, session: Session, peer: bytes, request_id: int, args: list,
              frames: list) -> None:
        """args: channel, workspace name or "*"; the reply lists the workspace's variables
        now, so a dashboard starts from a snapshot and then follows the events."""
        arity(args, 2)
        name = "*" if args[1] == b"*" else self.registry.name(args[1], "workspace")
        known = self.deliveries.known(session, args[0])
        if known is None or name not in known.watches:
            self.caps.watch(session)  # before anything is made for it
        subscriber = known or self.deliveries.subscriber(session, args[0])
        self.outbox.json(peer, request_id, self.deliveries.watch(subscriber, name))

    def unwatch(self, session: Session, peer: bytes, request_id: int, args: list,
                frames: list) -> None:
        arity(args, 2)
        name = args[1].decode("utf-8")
        subscriber = self.deliveries.known(session, args[0])
        if subscriber is not None and name in subscriber.watches:
            self.deliveries.unwatch(subscriber, name)
        self.outbox.reply(peer, request_id)

    # ---------------------------------------------------------------- sessions

    def end_session(self, session: Session) -> None:
        """A session ended: its delivery sockets and their patterns go."""
        for subscriber in self.deliveries.remove_session(session):
            for pattern in list(subscriber.patterns):
                self._unindex(subscriber, pattern)
