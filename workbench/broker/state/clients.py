"""The clients' sessions as requests see them: hello, goodbye, heartbeats, a session ended by
another client that saw its process die (``END_SESSION``), and sessions timed out by silence.

Ending a session, whichever way, gives back every value it held under a lease, answers or
forgets its blocked calls, drops its delivery sockets and purges the non-persistent workspaces
it owned. A short-lived tombstone then refuses the stragglers of a closed session (a late
heartbeat), so that they do not open a new session by accident.
"""

from __future__ import annotations

import json
from typing import Callable

from ..._version import __version__
from ...config import Liveness
from ...protocol import CHANNEL, PROTOCOL_VERSION, Op, ProtocolError, Status, unpack_channel_acks
from .effects import Outbox
from .handoffs import HandOffs
from .memory import Memory
from .pubsub import PubSubService
from .registry import Registry
from .requests import Clock, arity
from .sessions import Session, SessionTable


class ClientService:
    def __init__(self, sessions: SessionTable, handoffs: HandOffs, registry: Registry,
                 pubsub: PubSubService, memory: Memory, outbox: Outbox, clock: Clock,
                 liveness: Liveness, max_message_size: int,
                 local_endpoint: str | None) -> None:
        self.sessions = sessions
        self.handoffs = handoffs
        self.registry = registry
        self.pubsub = pubsub
        self.memory = memory
        self.outbox = outbox
        self.clock = clock
        self.liveness = liveness
        self.max_message_size = max_message_size
        # The broker's Unix socket (``ipc://path``) offered to clients on this machine, if any.
        self.local_endpoint = local_endpoint
        # The broker keeps a data directory: what is persistent survives its restart, so a
        # client may wait for it to come back (a sleigh does). Set by the server.
        self.durable = False
        self.ended: dict[bytes, float] = {}  # session id -> when it ended (tombstones)

    def handlers(self) -> dict[int, Callable]:
        return {Op.HELLO: self.hello, Op.BYE: self.bye, Op.HEARTBEAT: self.heartbeat,
                Op.END_SESSION: self.end_session_of}

    def hello(self, session: Session, peer: bytes, request_id: int, args: list,
              frames: list) -> None:
        if len(args) > 1:
            raise ProtocolError("hello takes one JSON argument")
        info = json.loads(args[0]) if args else {}
        if not isinstance(info, dict):
            raise ProtocolError("hello expects a JSON object")
        first = not session.greeted
        session.greet(int(info.get("pid", 0)), str(info.get("host", "?"))[:200])
        shared = self.memory.shared
        session.shares_memory = bool(shared is not None and shared.identity
                                     and info.get("shm") == shared.identity)
        if first:
            self.outbox.notice(f"client connected: {session.label}")
        self.outbox.json(peer, request_id, {
            "version": __version__, "protocol": PROTOCOL_VERSION,
            "session": session.id.hex(), "label": session.label,
            "heartbeat_interval": self.liveness.interval,
            "heartbeat_liveness": self.liveness.liveness,
            "max_message_size": self.max_message_size,
            "max_memory": self.memory.limit,
            "shm_pid": shared.pid if session.shares_memory else None,
            "local": self.local_endpoint,
            "durable": self.durable,
        })

    def bye(self, session: Session, peer: bytes, request_id: int, args: list,
            frames: list) -> None:
        arity(args, 0)
        self.outbox.reply(peer, request_id)
        self.end(session, "closed", notify_waiters=True)

    def heartbeat(self, session: Session, peer: bytes, request_id: int, args: list,
                  frames: list) -> None:
        if len(args) > 1:
            raise ProtocolError("heartbeat takes at most one argument")
        if args:
            for channel, acked in unpack_channel_acks(args[0]):
                self.handoffs.ack((session.id + CHANNEL.pack(channel), acked))
        self.outbox.reply(peer, request_id)

    def end_session_of(self, session: Session, peer: bytes, request_id: int, args: list,
                       frames: list) -> None:
        """args: host, pid of a process the caller saw die. Its sessions end now, instead of
        after the heartbeat timeout, so the values they held go back without delay."""
        arity(args, 2)
        host, pid = args[0].decode("utf-8"), int(args[1])
        ended = [s for s in self.sessions
                 if s.host == host and s.pid == pid and s is not session and s.greeted]
        for dead in ended:
            self.end(dead, f"reported dead by {session.label}", notify_waiters=False)
        self.outbox.reply(peer, request_id, Status.OK, b"%d" % len(ended))

    def end(self, session: Session, reason: str, notify_waiters: bool) -> None:
        self.pubsub.end_session(session)
        for key in list(session.waiting):
            self.handoffs.forget(key)
            if notify_waiters:
                self.outbox.error(key[0], key[1], Status.SHUTTING_DOWN,
                                  "the connection to the broker was closed")
        session.waiting.clear()
        self.handoffs.return_leases(list(session.leases), holder_ended=True)
        for name in list(session.owned):
            ws = self.registry.spaces.get(name)
            if ws is not None and not ws.persistent:
                self.registry.purge(ws, f"workspace {name!r} was purged: its owner "
                                        f"{session.label} disconnected ({reason})")
        files = self.memory.session_files(session)
        if files is not None:
            self.outbox.sweep(files)
        self.sessions.remove(session)
        self.ended[session.id] = self.clock.now
        self.outbox.notice(f"client disconnected: {session.label} ({reason})")

    def is_straggler(self, session: Session) -> bool:
        """A new session whose id ended moments ago: a late message of a closed session."""
        if session.id in self.ended:
            self.sessions.remove(session)
            return True
        return False

    def expire(self, now: float) -> None:
        """End every session silent for longer than the liveness timeout."""
        timeout = self.liveness.timeout
        for session in self.sessions.silent_since(now - timeout):
            self.end(session, "timed out", notify_waiters=False)
        # Stragglers arrive within moments of the end; a tombstone outlives them by far.
        for session_id in [sid for sid, ended in self.ended.items() if ended < now - 2 * timeout]:
            del self.ended[session_id]
