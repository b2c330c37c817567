"""Client sessions: who is connected, what each owns and holds, and when each was last heard.

A session is one client connection (one ``NwsServer``); its sockets share the session id at the
front of their routing identities. Any message counts as a sign of life; a session silent for
the liveness timeout is dead. ``Session`` and ``SessionTable`` are the records; greeting, ending
and timing sessions out is ``clients``.
"""

from __future__ import annotations

from ...protocol import CHANNEL, SESSION_ID_SIZE


def session_id_of(peer: bytes) -> bytes:
    """The session a socket belongs to; a foreign peer (no workbench identity) is its own."""
    if len(peer) == SESSION_ID_SIZE + CHANNEL.size:
        return peer[:SESSION_ID_SIZE]
    return peer


class Session:
    __slots__ = ("id", "pid", "host", "label", "last_seen", "connected_at", "owned", "leases",
                 "waiting", "subscriptions", "watches", "requests", "greeted", "shares_memory",
                 "peers")

    def __init__(self, session_id: bytes, now: float) -> None:
        self.id = session_id
        self.pid = 0
        self.host = ""
        self.label = f"session {session_id.hex()[:8]}"
        self.last_seen = now
        self.connected_at = now
        self.owned: set[str] = set()  # names of workspaces this session owns
        self.leases: set[tuple[bytes, int]] = set()  # (peer, request id) of unacknowledged values
        self.waiting: set[tuple[bytes, int]] = set()  # (peer, request id) of blocked requests
        # Patterns and workspaces its delivery sockets follow (counted against ``caps``).
        self.subscriptions = 0
        self.watches = 0
        self.requests = 0
        self.greeted = False
        self.shares_memory = False  # may receive shared-memory references instead of bytes
        self.peers: list[bytes] = []  # its sockets' routing identities

    def greet(self, pid: int, host: str) -> None:
        self.pid = pid
        self.host = host
        self.label = f"{host} ({pid})"
        self.greeted = True


class SessionTable:
    def __init__(self) -> None:
        self.by_id: dict[bytes, Session] = {}
        self.by_peer: dict[bytes, Session] = {}  # every socket seen, for one lookup a request

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self):
        return iter(list(self.by_id.values()))

    def touch(self, peer: bytes, now: float) -> tuple[Session, bool]:
        """The peer's session, refreshed; and whether it is new."""
        session = self.by_peer.get(peer)
        if session is not None:
            session.last_seen = now
            return session, False
        session_id = session_id_of(peer)
        session = self.by_id.get(session_id)
        new = session is None
        if new:
            session = self.by_id[session_id] = Session(session_id, now)
        session.last_seen = now
        session.peers.append(peer)
        self.by_peer[peer] = session
        return session, new

    def silent_since(self, deadline: float) -> list[Session]:
        return [s for s in self.by_id.values() if s.last_seen < deadline]

    def remove(self, session: Session) -> None:
        self.by_id.pop(session.id, None)
        for peer in session.peers:
            self.by_peer.pop(peer, None)
