"""The broker's whole state as a pure machine: decoded requests in, effects out.

``BrokerState.handle(peer, head, frames, now)`` takes one request and returns its ``Effects``:
the replies and deliveries to send, lines to log, shared-memory files to remove, and the changes
it made to the persistent state as records (``changes``). ``expire(now)`` ends silent sessions
and expired key-value entries the same way. Nothing here reads a clock, touches a socket, opens a
file or starts a thread, so every rule of the broker is testable in microseconds, and a log of
the change records can rebuild the state.

The concerns are services composed around shared objects, each handed the ones it uses:

    Outbox       the effects of the call in progress         (effects)
    Memory       bytes held against the cap, shared files    (memory)
    HandOffs     leases and blocked calls                    (handoffs)
    Registry     workspaces and variables coming and going   (registry)
    Deadlines    key-value entries' lifetimes                (expiry)
    Deliveries   delivery sockets, flow control, watchers    (deliveries)
    SessionCaps  what one session may keep open              (caps)

    WorkspaceService, WorkQueueService, KeyValueService, PubSubService, ClientService

and ``handle`` dispatches each op code to the handler a service registered for it. The usual
key-value ``set`` and ``get`` go to a fused handler first (``KeyValueService.store_plain``,
``get_plain``): the whole request in one call, or nothing changed and the general handler does
it; ``test_state_kv`` holds both to the same replies, records and counters.
"""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass, field
from typing import Callable

from ..._version import __version__
from ...config import (
    HANDSHAKE_TIMEOUT, MAX_CONNECTIONS_PER_HOST, MAX_MESSAGE_SIZE, MAX_PENDING_OUTPUT,
    MAX_SUBSCRIPTIONS, MAX_WAITING, MAX_WATCHES, Liveness, default_max_memory,
)
from ...protocol import (
    FLAG_ACKS, HEADER, HEADER_SIZE, PROTOCOL_VERSION, SEPARATOR, VALUE_ARITY, Op, ProtocolError,
    Status, VersionMismatch, parse_head, split_args, unpack_acks,
)
from .batches import WorkQueueService
from .caps import SessionCaps
from .clients import ClientService
from .deliveries import Deliveries, FlowLimits
from .effects import Effects, Outbox
from .expiry import Deadlines
from .handoffs import HandOffs
from .keyvalue import KeyValueService
from .memory import Memory, SharedMemory
from .operations import WorkspaceService
from .pubsub import PubSubService
from .registry import Registry
from .requests import COUNTERS, Clock, OpError, arity, human_size
from .sessions import Session, SessionTable
from .workspaces import WorkspaceTable

DEFAULT_WORKSPACE = "__default"
_unpack_header = HEADER.unpack_from
_NO_HEADER = (None, 0, 0, 0)  # what a head too short for the header reads as


@dataclass
class Limits:
    max_memory: int = field(default_factory=default_max_memory)
    max_message_size: int = MAX_MESSAGE_SIZE
    max_pending_output: int = MAX_PENDING_OUTPUT
    max_waiting: int = MAX_WAITING  # per session, as the caps below
    max_subscriptions: int = MAX_SUBSCRIPTIONS
    max_watches: int = MAX_WATCHES
    max_connections_per_host: int = MAX_CONNECTIONS_PER_HOST  # the server's
    handshake_timeout: float = HANDSHAKE_TIMEOUT  # s a connection may take to become ready
    liveness: Liveness = field(default_factory=Liveness)
    flow: FlowLimits = field(default_factory=FlowLimits)


class BrokerState:
    """The broker's state (see the module's docstring).

    Counters are the state's own: observations for ``workbench status``, not state. They are not
    returned in the effects because nearly every request moves one (that would cost a record a
    request) and no replay needs them (a broker that restarts counts from zero). The server adds
    its transport events with ``count``; the STATUS reply, and ``counters``, show them all."""

    def __init__(self, limits: Limits | None = None, rng: random.Random | None = None,
                 now: float = 0.0, shared_memory: SharedMemory | None = None,
                 local_endpoint: str | None = None, security: dict | None = None,
                 durability: Callable[[], dict] | None = None) -> None:
        self.limits = limits = limits or Limits()
        self.started = now
        self.security = security or {"mechanism": "NULL"}  # how clients connect, for STATUS
        # What STATUS shows of the server's data directory (``DataDir.status``), read only
        # when asked: None without one.
        self.durability = durability
        self.clock = clock = Clock(now)
        self._counters = counters = dict.fromkeys(COUNTERS, 0)
        self.outbox = outbox = Outbox(counters)
        self.spaces = spaces = WorkspaceTable()
        # The default workspace is there before any call: a replay starts from it too.
        spaces.create(DEFAULT_WORKSPACE, persistent=True).owner_label = "(broker)"
        self.sessions = SessionTable()
        self.deliveries = deliveries = Deliveries(limits.flow, outbox, counters, spaces)
        self.memory = memory = Memory(limits.max_memory, shared_memory, outbox)
        caps = SessionCaps(limits.max_waiting, limits.max_subscriptions, limits.max_watches,
                           counters)
        self.handoffs = handoffs = HandOffs(outbox, memory, deliveries, rng or random.Random(),
                                            caps)
        self.registry = registry = Registry(spaces, outbox, deliveries, handoffs, memory)
        self.deadlines = deadlines = Deadlines(clock, outbox, counters, memory, registry,
                                               deliveries)
        self.workspaces = WorkspaceService(registry, handoffs, memory, deadlines, outbox, clock)
        self.work_queues = WorkQueueService(registry, handoffs, memory, deadlines, outbox)
        self.kv = KeyValueService(registry, handoffs, memory, deadlines, outbox, counters)
        self.pubsub = PubSubService(deliveries, registry, handoffs, memory, outbox, counters,
                                    caps)
        self.clients = ClientService(self.sessions, handoffs, registry, self.pubsub, memory,
                                     outbox, clock, limits.liveness, limits.max_message_size,
                                     local_endpoint)
        self._handlers: dict[int, Callable] = {Op.STATUS: self._status,
                                               Op.CANCEL: handoffs.cancel}
        for service in (self.workspaces, self.work_queues, self.kv, self.pubsub, self.clients):
            self._handlers.update(service.handlers())
        # Fused handlers of the usual flag-less requests: each does the whole request from its
        # head, or says it cannot (having changed nothing) and the handler above does it.
        self._plain_handlers: dict[int, Callable] = self.kv.plain_handlers()

    # ---------------------------------------------------------------- entry points

    def handle(self, peer: bytes, head: bytes, frames: list, now: float,
               files: dict[bytes, int | str] | None = None) -> Effects:
        """Process one request from ``peer``: its head frame and the value frames after it.
        ``files``: what the server found about the shared-memory files the request references
        (``shm.BrokerFiles.inspect``): each reference's file size, or why it is unreadable."""
        outbox = self.outbox  # outbox.begin(), written out: this is the hottest path
        outbox.messages.clear()
        outbox.log.clear()
        effects = outbox.effects
        if effects.rare:
            effects.clear_rare()
        self.clock.now = now
        self.memory.checked = files
        counters = self._counters
        # ``parse_head``, inlined: it raises for the rare heads ``_foreign`` answers.
        version, op, flags, request_id = (_unpack_header(head) if len(head) >= HEADER_SIZE
                                          else _NO_HEADER)
        if version != PROTOCOL_VERSION:
            return self._foreign(peer, head, effects)
        counters["requests"] += 1
        # ``sessions.touch``, inlined for a socket already seen (nearly every request).
        session = self.sessions.by_peer.get(peer)
        if session is not None:
            session.last_seen = now
        else:
            session, new = self.sessions.touch(peer, now)
            if new:
                if self.clients.is_straggler(session):
                    self.outbox.error(peer, request_id, Status.SHUTTING_DOWN,
                                      "this connection's session has ended; connect again")
                    return effects
                if op != Op.HELLO:
                    self.outbox.notice(f"client connected: {session.label} (without hello)")
        session.requests += 1
        try:
            plain = None if flags else self._plain_handlers.get(op)
            if plain is not None and plain(session, peer, request_id, head, frames):
                if self.deliveries.event_ready:
                    self.deliveries.flush_events()
                return effects
            before_value = VALUE_ARITY.get(op)
            if before_value is None:
                args = split_args(head)
            else:  # the value's first frame is the last argument and may contain NUL
                before_value += flags & FLAG_ACKS
                args = head[HEADER_SIZE:].split(SEPARATOR, before_value)
                if len(args) != before_value + 1:
                    raise ProtocolError(f"{len(args) - 1} arguments before the value, "
                                        f"expected {before_value}")
                frames.insert(0, args.pop())
            if flags & FLAG_ACKS:
                if not args:
                    raise ProtocolError("acknowledgement flag without acknowledgements")
                acked = args[0]
                if b"," in acked:
                    for acked_id in unpack_acks(acked):
                        self.handoffs.ack((peer, acked_id))
                else:  # usually the one fetch before this request
                    self.handoffs.ack((peer, int(acked)))
                del args[0]
            handler = self._handlers.get(op)
            if handler is None:
                raise OpError(Status.UNKNOWN_OP,
                              f"unknown operation {op}: is the client newer than this broker "
                              f"(protocol {PROTOCOL_VERSION})?")
            if frames and before_value is None:
                raise ProtocolError(f"operation {op} takes no value frames")
            handler(session, peer, request_id, args, frames)
        except Exception as exc:  # a broker bug must not take everyone else down either
            self._refuse(peer, request_id, exc)
        if self.deliveries.event_ready:
            self.deliveries.flush_events()
        return effects

    def _foreign(self, peer: bytes, head: bytes, effects: Effects) -> Effects:
        """A head too short for the header, or of another protocol version: counted as
        malformed, and answered when it says which request it was."""
        self._counters["malformed"] += 1
        try:
            parse_head(head)
        except VersionMismatch as exc:  # answerable: our header layout is version-independent
            self.outbox.error(peer, exc.request_id, Status.BAD_REQUEST, str(exc))
        except ProtocolError:
            pass  # nothing to correlate a reply with: dropped
        return effects

    def _refuse(self, peer: bytes, request_id: int, exc: Exception) -> None:
        """Answer a request that failed with ``exc``."""
        if isinstance(exc, OpError):
            self.outbox.error(peer, request_id, exc.status, str(exc))
        elif isinstance(exc, (ProtocolError, IndexError, ValueError, UnicodeDecodeError)):
            self._counters["malformed"] += 1
            self.outbox.error(peer, request_id, Status.BAD_REQUEST, f"malformed request: {exc}")
        else:
            self._counters["internal_errors"] += 1
            self.outbox.notice("internal error:\n" + "".join(traceback.format_exception(exc)))
            self.outbox.error(peer, request_id, Status.INTERNAL,
                              "internal broker error (logged)")

    def reject_oversized(self, peer: bytes, head: bytes, size: int) -> Effects:
        """Answer a request whose frames add up to more than the message size limit."""
        effects = self.outbox.begin()
        self._counters["oversized"] += 1
        try:
            _, _, request_id = parse_head(head)
        except ProtocolError:
            return effects
        self.outbox.error(peer, request_id, Status.TOO_LARGE,
                          f"message of {human_size(size)} exceeds the broker's "
                          f"--max-message-size {human_size(self.limits.max_message_size)}")
        return effects

    def expire(self, now: float) -> Effects:
        """End every session silent for longer than the liveness timeout; remove expired
        key-value entries."""
        effects = self.outbox.begin()
        self.clock.now = now
        self.deadlines.reap(now)
        self.clients.expire(now)
        return self._done(effects)

    def undeliverable(self, peer: bytes, head: bytes) -> Effects:
        """A message could not be routed (its socket is gone): take back a value a reply
        carried; a delivery to a vanished delivery socket is dropped and counted."""
        effects = self.outbox.begin()
        _, status, _, request_id = HEADER.unpack_from(head)
        if status == Status.DELIVERY:
            self.deliveries.undeliverable(peer)
        else:
            self.handoffs.return_lease((peer, request_id))
        return self._done(effects)

    def file_unreadable(self, peer: bytes, head: bytes, reference: bytes,
                        reason: str) -> Effects:
        """The server could not read a shared-memory file that the message ``head`` to
        ``peer`` needed (see ``FileFrames``): the message is not sent; the value is gone."""
        effects = self.outbox.begin()
        _, _, _, request_id = HEADER.unpack_from(head)
        self.handoffs.file_unreadable(peer, request_id, reference, reason)
        return self._done(effects)

    def compared(self, equal: bool) -> Effects:
        """The server's answer to the ``Comparison`` of the last call: whether the file holds
        the comparand's bytes."""
        effects = self.outbox.begin()
        pending = self.kv.pending
        if pending is not None:
            try:
                self.kv.compared(equal)
            except Exception as exc:
                self._refuse(pending.peer, pending.request_id, exc)
        return self._done(effects)

    def shutdown(self) -> Effects:
        """Tell every blocked caller that the broker is going away."""
        effects = self.outbox.begin()
        for (peer, request_id) in list(self.handoffs.waiting):
            self.outbox.error(peer, request_id, Status.SHUTTING_DOWN, "the broker shut down")
        self.handoffs.waiting.clear()
        return effects

    def _done(self, effects: Effects) -> Effects:
        if self.deliveries.event_ready:
            self.deliveries.flush_events()
        return effects

    # ---------------------------------------------------------------- counters

    def count(self, name: str, n: int = 1) -> None:
        """Count an event of the server's own (a refused connection, a paused reader)."""
        self._counters[name] = self._counters.get(name, 0) + n

    @property
    def counters(self) -> dict[str, int]:
        """Every counter, as ``workbench status`` shows them (a copy)."""
        return dict(self._counters)

    # ---------------------------------------------------------------- status

    def _status(self, session: Session, peer: bytes, request_id: int, args: list,
                frames: list) -> None:
        arity(args, 0)
        now = self.clock.now
        liveness = self.limits.liveness
        self.outbox.json(peer, request_id, {
            "version": __version__, "protocol": PROTOCOL_VERSION,
            "uptime": now - self.started,
            "clients": [{"label": s.label, "owned": sorted(s.owned), "requests": s.requests,
                         "leases": len(s.leases), "waiting": len(s.waiting),
                         "subscriptions": s.subscriptions, "watches": s.watches,
                         "idle": now - s.last_seen} for s in self.sessions],
            "workspaces": len(self.spaces),
            "values": sum(len(v) for ws in self.spaces.by_name.values()
                          for v in ws.variables.values()),
            "waiting": len(self.handoffs.waiting), "leases": len(self.handoffs.leases),
            "memory": self.memory.used, "max_memory": self.memory.limit,
            "max_message_size": self.limits.max_message_size,
            "max_waiting": self.limits.max_waiting,
            "max_subscriptions": self.limits.max_subscriptions,
            "max_watches": self.limits.max_watches,
            "max_connections_per_host": self.limits.max_connections_per_host,
            "heartbeat_interval": liveness.interval,
            "heartbeat_liveness": liveness.liveness,
            "counters": self.counters,
            "security": self.security,
            "subscribers": self.deliveries.status(),
            "durability": self.durability() if self.durability is not None else None,
        })
