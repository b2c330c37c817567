"""The broker's whole state as a pure machine: decoded requests in, replies out.

``BrokerState.handle(peer, frames, now)`` takes one request and appends ``(peer, frames)``
replies to ``outbox``; ``expire(now)`` ends silent sessions. Nothing here reads a clock, touches a
socket or starts a thread, so every rule of the broker is testable in microseconds.

Hand-offs are leased: a value given to a fetcher stays accounted to that peer until the client
acknowledges it; cancelling the request or the session's death puts it back at the head of its
variable, so no value is lost to Ctrl-C, a timeout or a killed client.
"""

from __future__ import annotations

import json
import random
import traceback
from dataclasses import dataclass, field
from typing import Callable

from ..._version import __version__
from ...config import (
    MAX_MESSAGE_SIZE, MAX_NAME_LENGTH, MAX_PENDING_OUTPUT, Liveness, default_max_memory,
)
from ...protocol import (
    CHANNEL, FLAG_ACKS, HEADER, HEADER_SIZE, PROTOCOL_VERSION, SEPARATOR, VALUE_ARITY, Op,
    ProtocolError, Status, VersionMismatch, parse_head, reply_head, value_reply_head,
    split_args, unpack_acks, unpack_channel_acks,
)
from .batches import Batches
from .keyvalue import KeyValue
from .operations import Operations
from .pubsub import FlowLimits, PubSub, Subscriber
from .requests import OpError, arity, human_size
from .sessions import Session, SessionTable
from .variables import SINGLE, Value, Variable, Waiter
from .workspaces import Workspace, WorkspaceTable

DEFAULT_WORKSPACE = "__default"
_NAME_CACHE_SIZE = 4096


@dataclass
class Limits:
    max_memory: int = field(default_factory=default_max_memory)
    max_message_size: int = MAX_MESSAGE_SIZE
    max_pending_output: int = MAX_PENDING_OUTPUT
    liveness: Liveness = field(default_factory=Liveness)
    flow: FlowLimits = field(default_factory=FlowLimits)


class BrokerState(Operations, KeyValue, PubSub, Batches):
    def __init__(self, limits: Limits | None = None, rng: random.Random | None = None,
                 now: float = 0.0, files=None) -> None:
        self.limits = limits or Limits()
        # Shared-memory files (``shm.BrokerFiles``), or None where values all travel as bytes.
        self.files = files
        # Shared files no value needs any more: (reference, whether a finder was sent it).
        self.released: list[tuple[bytes, bool]] = []
        self.shared_in_use: set[bytes] = set()  # names of the files values hold now
        self.rng = rng or random.Random()
        self.started = now
        self.now = now
        self.sessions = SessionTable()
        self.spaces = WorkspaceTable()
        self.memory = 0  # bytes of values held, including leased ones
        self.waiting: dict[tuple[bytes, int], tuple[Variable, Waiter]] = {}
        self.ended: dict[bytes, float] = {}  # session id -> when it ended (tombstones)
        self._valid_names: dict[bytes, str] = {}
        self.leases: dict[tuple[bytes, int], tuple[Variable, Value, Session]] = {}
        self.outbox: list[tuple[bytes, list]] = []
        self.notices: list[str] = []  # connect/disconnect lines for the server to log
        # The broker's Unix socket (``ipc://path``) offered to clients on this machine, if any.
        self.local_endpoint: str | None = None
        self.counters = dict.fromkeys(
            ("requests", "errors", "malformed", "oversized", "internal_errors", "expired",
             "kv_gets", "kv_misses", "kv_sets", "published", "dropped", "queue_refused",
             "publish_errors"), 0)
        # Publish/subscribe (see pubsub): delivery sockets, their patterns by namespace and
        # name, shared queues by name, and watchers by workspace name.
        self.flow = self.limits.flow
        self.subscribers: dict[bytes, Subscriber] = {}
        self.pattern_index: dict[str | None, dict[str | None, dict[Subscriber, set]]] = {}
        self.shared_queues: dict[str, tuple] = {}
        self.watched: dict[str, set[Subscriber]] = {}
        self.event_ready: set[Subscriber] = set()  # watchers with events to send (pubsub)
        # (deadline, variable id, variable) of key-value entries that expire; see keyvalue
        self.deadlines: list[tuple[float, int, Variable]] = []
        self.deadlines_limit = 1024  # when to drop stale deadlines (see keyvalue)
        self.spaces.create(DEFAULT_WORKSPACE, persistent=True).owner_label = "(broker)"
        self._handlers: dict[int, Callable] = {
            Op.HELLO: self._hello, Op.BYE: self._bye, Op.HEARTBEAT: self._heartbeat,
            Op.STATUS: self._status, Op.CANCEL: self._cancel,
            Op.OPEN_WS: self._open_ws, Op.USE_WS: self._use_ws, Op.DELETE_WS: self._delete_ws,
            Op.MKTEMP_WS: self._mktemp_ws, Op.LIST_WSS: self._list_wss,
            Op.DECLARE: self._declare, Op.DELETE_VAR: self._delete_var,
            Op.LIST_VARS: self._list_vars, Op.STORE: self._store,
            Op.KV_STORE: self._kv_store, Op.KV_GET: self._kv_get, Op.KV_INCR: self._kv_incr,
            Op.KV_DELETE: self._kv_delete, Op.KV_TOUCH: self._kv_touch,
            Op.KV_FLUSH: self._kv_flush, Op.KV_GET_MULTI: self._kv_get_multi,
            Op.KV_SET_MULTI: self._kv_set_multi, Op.KV_DELETE_MULTI: self._kv_delete_multi,
            Op.KV_COMPARE_SWAP: self._kv_compare_swap,
            Op.MQ_PUBLISH: self._mq_publish, Op.MQ_SUBSCRIBE: self._mq_subscribe,
            Op.MQ_UNSUBSCRIBE: self._mq_unsubscribe, Op.MQ_CREDIT: self._mq_credit,
            Op.MQ_QUEUE: self._mq_queue, Op.WATCH: self._watch, Op.UNWATCH: self._unwatch,
            Op.STORE_MANY: self._store_many, Op.FETCH_MANY: self._fetch_many,
            Op.END_SESSION: self._end_session_of,
        }
        # (consume, block, iterate) for the eight ways of reading a variable
        for op, how in {
            Op.FETCH: (True, True, False), Op.FETCH_TRY: (True, False, False),
            Op.FIND: (False, True, False), Op.FIND_TRY: (False, False, False),
            Op.IFETCH: (True, True, True), Op.IFETCH_TRY: (True, False, True),
            Op.IFIND: (False, True, True), Op.IFIND_TRY: (False, False, True),
        }.items():
            self._handlers[op] = self._reader(*how)

    # ---------------------------------------------------------------- entry points

    def handle(self, peer: bytes, head: bytes, frames: list, now: float) -> None:
        """Process one request from ``peer``: its head frame and the value frames after it."""
        self.now = now
        try:
            op, flags, request_id = parse_head(head)
        except VersionMismatch as exc:  # answerable: our header layout is version-independent
            self.counters["malformed"] += 1
            self._error(peer, exc.request_id, Status.BAD_REQUEST, str(exc))
            return
        except ProtocolError:
            self.counters["malformed"] += 1  # nothing to correlate a reply with: drop it
            return
        self.counters["requests"] += 1
        session, new = self.sessions.touch(peer, now)
        if new:
            if session.id in self.ended:  # a straggler (a late heartbeat) of a closed session
                self.sessions.remove(session)
                self._error(peer, request_id, Status.SHUTTING_DOWN,
                            "this connection's session has ended; connect again")
                return
            if op != Op.HELLO:
                self.notices.append(f"client connected: {session.label} (without hello)")
        session.requests += 1
        try:
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
                    for request in unpack_acks(acked):
                        self._ack((peer, request))
                else:  # usually the one fetch before this request
                    self._ack((peer, int(acked)))
                del args[0]
            handler = self._handlers.get(op)
            if handler is None:
                raise OpError(Status.UNKNOWN_OP,
                              f"unknown operation {op}: is the client newer than this broker "
                              f"(protocol {PROTOCOL_VERSION})?")
            if frames and before_value is None:
                raise ProtocolError(f"operation {op} takes no value frames")
            handler(session, peer, request_id, args, frames)
        except OpError as exc:
            self._error(peer, request_id, exc.status, str(exc))
        except (ProtocolError, IndexError, ValueError, UnicodeDecodeError) as exc:
            self.counters["malformed"] += 1
            self._error(peer, request_id, Status.BAD_REQUEST, f"malformed request: {exc}")
        except Exception:  # a broker bug must not take everyone else down
            self.counters["internal_errors"] += 1
            self.notices.append("internal error:\n" + traceback.format_exc())
            self._error(peer, request_id, Status.INTERNAL, "internal broker error (logged)")
        if self.event_ready:
            self.flush_events()

    def reject_oversized(self, peer: bytes, head: bytes, size: int) -> None:
        """Answer a request whose frames add up to more than the message size limit."""
        self.counters["oversized"] += 1
        try:
            _, _, request_id = parse_head(head)
        except ProtocolError:
            return
        self._error(peer, request_id, Status.TOO_LARGE,
                    f"message of {human_size(size)} exceeds the broker's --max-message-size "
                    f"{human_size(self.limits.max_message_size)}")

    def expire(self, now: float) -> None:
        """End every session silent for longer than the liveness timeout; remove expired
        key-value entries."""
        self.now = now
        self.reap_expired(now)
        self._expire_sessions(now)
        if self.event_ready:
            self.flush_events()

    def _expire_sessions(self, now: float) -> None:
        timeout = self.limits.liveness.timeout
        for session in self.sessions.silent_since(now - timeout):
            self._end_session(session, "timed out", notify_waiters=False)
        # Stragglers arrive within moments of the end; a tombstone outlives them by far.
        for session_id in [sid for sid, ended in self.ended.items() if ended < now - 2 * timeout]:
            del self.ended[session_id]

    def undeliverable(self, peer: bytes, head: bytes) -> None:
        """A message could not be routed (its socket is gone): take back a value a reply
        carried; a delivery to a vanished delivery socket is dropped and counted."""
        _, status, _, request_id = HEADER.unpack_from(head)
        if status == Status.DELIVERY:
            self.counters["dropped"] += 1
            subscriber = self.subscribers.get(peer)
            if subscriber is not None:
                subscriber.dropped += 1
                subscriber.in_flight = max(0, subscriber.in_flight - 1)
            return
        self._return_lease((peer, request_id))

    def shutdown(self) -> None:
        """Tell every blocked caller that the broker is going away."""
        for (peer, request_id) in list(self.waiting):
            self._error(peer, request_id, Status.SHUTTING_DOWN, "the broker shut down")
        self.waiting.clear()

    # ---------------------------------------------------------------- replies

    def _reply(self, peer: bytes, request_id: int, status: int = 0, body: bytes = b"") -> None:
        self.outbox.append((peer, [reply_head(status, request_id, 0, body)]))

    def _error(self, peer: bytes, request_id: int, status: int, message: str) -> None:
        self.counters["errors"] += 1
        self.outbox.append((peer, [reply_head(status, request_id, 0, message.encode())]))

    def _discard(self, value: Value) -> None:
        """A value leaves the broker for good: its memory (and any shared-memory file) is freed."""
        self.memory -= value.size
        if value.shared is not None:
            self.shared_in_use.discard(value.shared.partition(b":")[0])
            self.released.append((value.shared, value.found))

    def _drop_broken_lease(self, peer: bytes, request_id: int, broken: Value) -> None:
        """A leased reply cannot be sent (a value's file vanished): that value is gone; any
        others taken with it (FETCH_MANY) go back to their variable."""
        entry = self.leases.pop((peer, request_id), None)
        if entry is None:
            return
        var, held, session = entry
        session.leases.discard((peer, request_id))
        self._discard(broken)
        others = [v for v in held if v is not broken] if type(held) is list else []
        for value in sorted(others, key=lambda v: v.seq, reverse=True):
            if not (var.live and var.put_back(value)):
                self._discard(value)
        if others and var.live:
            self._serve_waiting(var)

    def _reply_value(self, peer: bytes, request_id: int, var: Variable, value: Value,
                     session: Session) -> None:
        frames = self._frames_for(peer, request_id, value, session)
        if frames is None:
            return
        if len(frames) == 1:
            self.outbox.append(
                (peer, [value_reply_head(request_id, 0, var.id, value.seq, frames[0])]))
        else:
            head = value_reply_head(request_id, len(frames) - 1, var.id, value.seq, frames[0])
            self.outbox.append((peer, [head, *frames[1:]]))

    def _frames_for(self, peer: bytes, request_id: int, value: Value,
                    session: Session) -> list | None:
        """A value's frames as this session can read them: a shared-memory reference for a
        client on this machine, the bytes for others. None (and an error reply sent) if the
        value's file has gone."""
        frames = value.frames
        if value.shared is not None:
            if not session.shares_memory:
                try:
                    return self.files.materialize(frames)  # a client on another machine
                except (OSError, ValueError) as exc:  # its file was removed behind our back
                    self._drop_broken_lease(peer, request_id, value)
                    self._error(peer, request_id, Status.INTERNAL,
                                f"the value's shared-memory file is gone: {exc}")
                    return None
            elif (peer, request_id) not in self.leases:
                value.found = True  # a finder maps it later, unannounced
        return frames

    # ---------------------------------------------------------------- registry changes

    def _create_workspace(self, name: str, owner: Session | None = None,
                          persistent: bool = False) -> Workspace:
        ws = self.spaces.create(name, owner, persistent)
        if self.watched:
            self._event(name, "ws_created")
        return ws

    def _new_variable(self, ws: Workspace, name: str, mode: str,
                      mode_fixed: bool = True) -> Variable:
        var = self.spaces.new_variable(ws, name, mode, mode_fixed)
        if self.watched:
            self._event(ws.name, "created", name)
        return var

    def _json(self, peer: bytes, request_id: int, obj) -> None:
        self._reply(peer, request_id, Status.OK, json.dumps(obj).encode())

    # ---------------------------------------------------------------- argument checks

    def _name(self, arg: bytes, what: str) -> str:
        name = self._valid_names.get(arg)
        if name is not None:  # the same few names arrive with every request
            return name
        name = arg.decode("utf-8")
        if not name:
            raise OpError(Status.BAD_REQUEST, f"a {what} name must not be empty")
        if len(arg) > MAX_NAME_LENGTH:
            raise OpError(Status.BAD_REQUEST,
                          f"{what} name longer than {MAX_NAME_LENGTH} bytes")
        if not name.isprintable():
            raise OpError(Status.BAD_REQUEST,
                          f"{what} name {name!r} contains control characters")
        if len(self._valid_names) >= _NAME_CACHE_SIZE:
            self._valid_names.clear()
        self._valid_names[arg] = name
        return name

    def _workspace(self, arg: bytes) -> Workspace:
        name = self._name(arg, "workspace")
        ws = self.spaces.by_name.get(name)
        if ws is None:
            raise OpError(Status.NO_WORKSPACE,
                          f"no workspace {name!r}: it was never created, or was deleted, or "
                          "purged when its owner disconnected")
        return ws

    # ---------------------------------------------------------------- sessions

    def _hello(self, session: Session, peer: bytes, request_id: int, args: list,
                frames: list) -> None:
        if len(args) > 1:
            raise ProtocolError("hello takes one JSON argument")
        info = json.loads(args[0]) if args else {}
        if not isinstance(info, dict):
            raise ProtocolError("hello expects a JSON object")
        first = not session.greeted
        session.greet(int(info.get("pid", 0)), str(info.get("host", "?"))[:200])
        session.shares_memory = bool(self.files is not None and self.files.identity
                                     and info.get("shm") == self.files.identity)
        if first:
            self.notices.append(f"client connected: {session.label}")
        live = self.limits.liveness
        self._json(peer, request_id, {
            "version": __version__, "protocol": PROTOCOL_VERSION,
            "session": session.id.hex(), "label": session.label,
            "heartbeat_interval": live.interval, "heartbeat_liveness": live.liveness,
            "max_message_size": self.limits.max_message_size,
            "max_memory": self.limits.max_memory,
            "shm_pid": self.files.pid if session.shares_memory else None,
            "local": self.local_endpoint,
        })

    def _bye(self, session: Session, peer: bytes, request_id: int, args: list,
              frames: list) -> None:
        arity(args, 0)
        self._reply(peer, request_id)
        self._end_session(session, "closed", notify_waiters=True)

    def _heartbeat(self, session: Session, peer: bytes, request_id: int, args: list,
                    frames: list) -> None:
        if len(args) > 1:
            raise ProtocolError("heartbeat takes at most one argument")
        if args:
            for channel, acked in unpack_channel_acks(args[0]):
                self._ack((session.id + CHANNEL.pack(channel), acked))
        self._reply(peer, request_id)

    def _status(self, session: Session, peer: bytes, request_id: int, args: list,
                 frames: list) -> None:
        arity(args, 0)
        self._json(peer, request_id, {
            "version": __version__, "protocol": PROTOCOL_VERSION,
            "uptime": self.now - self.started,
            "clients": [{"label": s.label, "owned": sorted(s.owned), "requests": s.requests,
                         "leases": len(s.leases), "waiting": len(s.waiting),
                         "idle": self.now - s.last_seen} for s in self.sessions],
            "workspaces": len(self.spaces),
            "values": sum(len(v) for ws in self.spaces.by_name.values()
                          for v in ws.variables.values()),
            "waiting": len(self.waiting), "leases": len(self.leases),
            "memory": self.memory, "max_memory": self.limits.max_memory,
            "max_message_size": self.limits.max_message_size,
            "heartbeat_interval": self.limits.liveness.interval,
            "heartbeat_liveness": self.limits.liveness.liveness,
            "counters": dict(self.counters),
            "subscribers": self._subscriber_status(),
        })

    def _end_session(self, session: Session, reason: str, notify_waiters: bool) -> None:
        self._drop_subscribers(session)
        for key in list(session.waiting):
            var, waiter = self.waiting.pop(key)
            self._drop_waiter(var, waiter)
            if notify_waiters:
                self._error(key[0], key[1], Status.SHUTTING_DOWN,
                            "the connection to the broker was closed")
        session.waiting.clear()
        self._return_leases(list(session.leases), holder_ended=True)
        for name in list(session.owned):
            ws = self.spaces.get(name)
            if ws is not None and not ws.persistent:
                self._purge(ws, f"workspace {name!r} was purged: its owner {session.label} "
                                f"disconnected ({reason})")
        self.sessions.remove(session)
        self.ended[session.id] = self.now
        self.notices.append(f"client disconnected: {session.label} ({reason})")

    # ---------------------------------------------------------------- leases and waiters

    def _lease(self, session: Session, peer: bytes, request_id: int, var: Variable,
               value: Value | list[Value]) -> None:
        """Hand ``value`` (or a FETCH_MANY's list of values) over until acknowledged."""
        key = (peer, request_id)
        self.leases[key] = (var, value, session)
        session.leases.add(key)

    def _ack(self, key: tuple[bytes, int]) -> None:
        entry = self.leases.pop(key, None)
        if entry is not None:
            if type(entry[1]) is list:
                for value in entry[1]:
                    self._discard(value)
            else:
                self._discard(entry[1])
            entry[2].leases.discard(key)

    def _return_lease(self, key: tuple[bytes, int]) -> None:
        self._return_leases([key])

    def _return_leases(self, keys: list[tuple[bytes, int]], holder_ended: bool = False) -> None:
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
                    self._discard(value)
        for var, values in returned.values():
            # SINGLE keeps only the newest, so it must go back first; others oldest first.
            values.sort(key=lambda value: value.seq, reverse=var.mode == SINGLE)
            for value in values:
                if not var.put_back(value):
                    self._discard(value)
            self._serve_waiting(var)

    def _serve_waiting(self, var: Variable) -> None:
        """Serve blocked callers from values already in the variable (after a put-back)."""
        if var.finders and var.values:
            still_waiting = []
            for waiter in var.finders:
                value = (var.peek(self.rng) if waiter.cookie is None
                         else var.first_after(waiter.cookie))
                if value is None:
                    still_waiting.append(waiter)
                    continue
                self._unwait(waiter)
                self._reply_value(waiter.peer, waiter.request_id, var, value, waiter.session)
            var.finders = still_waiting
        while var.fetchers and var.values:
            waiter = var.fetchers.popleft()
            self._unwait(waiter)
            if waiter.many:
                self._take_many(waiter.session, waiter.peer, waiter.request_id, var, waiter.many)
                continue
            value = var.take(self.rng)
            if self.watched:
                self._event(var.workspace.name, "fetched", var.name)
            self._lease(waiter.session, waiter.peer, waiter.request_id, var, value)
            self._reply_value(waiter.peer, waiter.request_id, var, value, waiter.session)

    def _unwait(self, waiter: Waiter) -> None:
        key = (waiter.peer, waiter.request_id)
        del self.waiting[key]
        waiter.session.waiting.discard(key)

    def _cancel(self, session: Session, peer: bytes, request_id: int, args: list,
                 frames: list) -> None:
        arity(args, 1)
        target = int(args[0])
        key = (peer, target)
        entry = self.waiting.pop(key, None)
        if entry is not None:
            session.waiting.discard(key)
            self._drop_waiter(*entry)
        self._return_lease(key)  # the value raced the cancel: it goes back, nothing is lost
        self._reply(peer, request_id, Status.CANCELLED)

    def _drop_waiter(self, var: Variable, waiter: Waiter) -> None:
        queue = var.fetchers if waiter.consume else var.finders
        try:
            queue.remove(waiter)
        except ValueError:
            pass

    def _fail_waiters(self, var: Variable, status: int, message: str) -> None:
        for waiter in (*var.fetchers, *var.finders):
            key = (waiter.peer, waiter.request_id)
            self.waiting.pop(key, None)
            waiter.session.waiting.discard(key)
            self._error(waiter.peer, waiter.request_id, status, message)
        var.fetchers.clear()
        var.finders.clear()

    def _offer(self, var: Variable, value: Value) -> None:
        """Give a newly stored value to every waiting finder, then to the longest-waiting
        fetcher; only if no fetcher waits does it join the variable."""
        if self.watched:
            self._event(var.workspace.name, "stored", var.name)
            if var.fetchers:
                self._event(var.workspace.name, "fetched", var.name)
        if var.finders:
            still_waiting = []
            for waiter in var.finders:
                if waiter.cookie is not None and value.seq <= waiter.cookie:
                    still_waiting.append(waiter)  # an iterator that has seen this value
                    continue
                self._unwait(waiter)
                self._reply_value(waiter.peer, waiter.request_id, var, value, waiter.session)
            var.finders = still_waiting
        if var.fetchers:
            waiter = var.fetchers.popleft()
            self._unwait(waiter)
            if waiter.many:
                self._lease(waiter.session, waiter.peer, waiter.request_id, var, [value])
                self._reply_many(waiter.peer, waiter.request_id, [value], waiter.session)
                return
            self._lease(waiter.session, waiter.peer, waiter.request_id, var, value)
            self._reply_value(waiter.peer, waiter.request_id, var, value, waiter.session)
        else:
            replaced = var.put(value)
            if replaced is not None:
                self._discard(replaced)
