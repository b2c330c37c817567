"""A test driver that talks to the pure ``BrokerState`` the way the broker's server loop does.

It builds request heads with ``protocol.request_head``, passes them to ``state.handle`` with a
clock the test controls, and decodes the replies of the ``Effects`` it returns; it keeps every
change record too (``changes``). Nothing here knows the state's internals except
``held_values`` and ``leased_values``, which the state-machine test uses to compare the broker's
variables with its reference model.

Peers are routing identities as a client's sockets have them: a 16-byte session id followed by a
2-byte channel number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from workbench import codec, protocol
from workbench.broker.state import BrokerState, Effects, Limits
from workbench.protocol import CHANNEL, FLAG_ACKS, META, SESSION_ID_SIZE, Op, Status

from .change_replica import Replica, state_view
from .restore_check import check_restore


@dataclass
class Reply:
    """One decoded reply of the broker."""

    peer: bytes
    status: int
    request_id: int
    body: bytes
    extra: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def meta(self) -> tuple[int, int]:
        """(variable id, value sequence number) of a value reply: an iterator's cookie."""
        self._expect(Status.OK)
        return META.unpack_from(self.body)

    @property
    def value(self) -> Any:
        self._expect(Status.OK)
        return codec.decode([self.body[META.size:], *self.extra])

    @property
    def json(self) -> Any:
        self._expect(Status.OK)
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()

    def _expect(self, status: int) -> None:
        assert self.status == status, (
            f"reply to request {self.request_id} has status {status_name(self.status)}"
            f" ({self.text!r}), expected {status_name(status)}")

    def __repr__(self) -> str:
        return f"<Reply #{self.request_id} {status_name(self.status)} {self.body[:40]!r}>"


def status_name(status: int) -> str:
    if status == Status.BAD_REQUEST:
        return "BAD_REQUEST"  # not ERROR, the alias that comes first in the enum
    try:
        return Status(status).name
    except ValueError:
        return str(status)


def value_size(value: Any) -> int:
    """Bytes the broker accounts for a stored value: all of its frames."""
    return sum(len(frame) for frame in codec.encode(value))


class StateDriver:
    """Sends requests to a ``BrokerState`` and keeps the replies it has not handed out yet."""

    #: The drivers the running test made: at its end, conftest checks that each one's change
    #: records rebuild its state (``check_replay``).
    made: list[StateDriver] = []

    def __init__(self, limits: Limits | None = None, rng=None, now: float = 0.0) -> None:
        StateDriver.made.append(self)
        self.state = BrokerState(limits, rng, now)
        self.now = now
        self.pending: list[Reply] = []
        self.changes: list = []  # every change record the state returned, in order
        self._changes_seen = 0
        self.notices: list[str] = []
        self._next_request_id: dict[bytes, int] = {}
        self._sessions = 0
        #: Called with the ``Effects`` of every call into the state, before they are read.
        self.on_effects: Callable[[Effects], None] | None = None

    @classmethod
    def around(cls, state: BrokerState, now: float = 0.0) -> StateDriver:
        """A driver of an existing state (one restored from records, say), which the end of the
        test does not check: its records are not all its own."""
        driver = cls(now=now)
        cls.made.remove(driver)
        driver.state = state
        return driver

    # ------------------------------------------------------------ clients and clock

    def new_peer(self, channel: int = 0) -> bytes:
        """The routing identity of a fresh session's socket (nothing sent yet)."""
        self._sessions += 1
        session_id = b"session-%08d" % self._sessions
        assert len(session_id) == SESSION_ID_SIZE
        return session_id + CHANNEL.pack(channel)

    @staticmethod
    def other_channel(peer: bytes, channel: int) -> bytes:
        """Another socket of the same session."""
        return peer[:SESSION_ID_SIZE] + CHANNEL.pack(channel)

    def connect(self, pid: int = 1000, host: str = "testhost") -> bytes:
        """A new session that has said HELLO; returns its peer."""
        peer = self.new_peer()
        self.hello(peer, pid, host)
        return peer

    def client(self, *workspaces: str, open: bool = False, persistent: bool = False) -> bytes:
        """A new session that has said HELLO and used (or opened) ``workspaces``."""
        peer = self.connect()
        for ws in workspaces:
            if open:
                self.open_ws(peer, ws, persistent)
            else:
                self.use_ws(peer, ws)
        return peer

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def expire(self) -> None:
        """Let the state end every session silent for longer than the liveness timeout."""
        self._collect(self.state.expire(self.now))

    @property
    def timeout(self) -> float:
        return self.state.limits.liveness.timeout

    # ------------------------------------------------------------ raw requests and replies

    def send(self, peer: bytes, op: int, args=(), frames=(), flags: int = 0,
             request_id: int | None = None) -> int:
        """Hand one request to the state; returns its request id."""
        if request_id is None:
            request_id = self._next_request_id.get(peer, 1)
            self._next_request_id[peer] = request_id + 1
        head = protocol.request_head(op, request_id, list(args), flags)
        self.send_raw(peer, head, list(frames))
        return request_id

    def send_raw(self, peer: bytes, head: bytes, frames: list | None = None) -> None:
        self._collect(self.state.handle(peer, head, list(frames or []), self.now))

    def _collect(self, effects: Effects) -> None:
        if self.on_effects is not None:
            self.on_effects(effects)
        self.changes.extend(effects.changes)
        self.notices.extend(effects.notices)
        for peer, (head, *extra) in effects.messages:
            status, nextra, request_id = protocol.parse_head(head)
            assert nextra == len(extra), f"reply head announces {nextra} frames, {len(extra)} sent"
            self.pending.append(
                Reply(peer, status, request_id, head[protocol.HEADER_SIZE:], list(extra)))

    def replies_for(self, peer: bytes) -> list[Reply]:
        """Every reply to ``peer`` not handed out yet, in the order the state sent them."""
        mine = [reply for reply in self.pending if reply.peer == peer]
        self.pending = [reply for reply in self.pending if reply.peer != peer]
        return mine

    def take_all(self) -> list[Reply]:
        replies, self.pending = self.pending, []
        return replies

    def reply(self, peer: bytes, request_id: int) -> Reply | None:
        """The reply to one request, or None if the state has not answered it (yet)."""
        for index, reply in enumerate(self.pending):
            if reply.peer == peer and reply.request_id == request_id:
                del self.pending[index]
                assert not any(r.peer == peer and r.request_id == request_id
                               for r in self.pending), f"request {request_id} answered twice"
                return reply
        return None

    def call(self, peer: bytes, op: int, args=(), frames=(), flags: int = 0) -> Reply:
        """Send a request that must be answered at once; returns its reply."""
        request_id = self.send(peer, op, args, frames, flags)
        reply = self.reply(peer, request_id)
        assert reply is not None, f"{Op(op).name} request {request_id} got no reply"
        return reply

    # ------------------------------------------------------------ sessions

    def hello(self, peer: bytes, pid: int = 1000, host: str = "testhost") -> Reply:
        return self.call(peer, Op.HELLO, [json.dumps({"pid": pid, "host": host}).encode()])

    def bye(self, peer: bytes) -> Reply:
        return self.call(peer, Op.BYE)

    def heartbeat(self, peer: bytes, channel_acks=()) -> Reply:
        """A sign of life; ``channel_acks`` are (channel, request id) pairs to acknowledge."""
        args = [protocol.pack_channel_acks(channel_acks)] if channel_acks else []
        return self.call(peer, Op.HEARTBEAT, args)

    def ack(self, peer: bytes, *request_ids: int) -> Reply:
        """Acknowledge leased values by piggy-backing on a STATUS request (FLAG_ACKS)."""
        return self.call(peer, Op.STATUS, [protocol.pack_acks(request_ids)], flags=FLAG_ACKS)

    def status(self, peer: bytes) -> dict:
        return self.call(peer, Op.STATUS).json

    def cancel(self, peer: bytes, request_id: int) -> Reply:
        return self.call(peer, Op.CANCEL, [b"%d" % request_id])

    # ------------------------------------------------------------ workspaces

    def open_ws(self, peer: bytes, ws: str, persistent: bool = False,
                create: bool = True) -> Reply:
        return self.call(peer, Op.OPEN_WS, [ws.encode(), _flag(persistent), _flag(create)])

    def use_ws(self, peer: bytes, ws: str, create: bool = True) -> Reply:
        return self.call(peer, Op.USE_WS, [ws.encode(), _flag(create)])

    def delete_ws(self, peer: bytes, ws: str) -> Reply:
        return self.call(peer, Op.DELETE_WS, [ws.encode()])

    def mktemp_ws(self, peer: bytes, template: str) -> Reply:
        return self.call(peer, Op.MKTEMP_WS, [template.encode()])

    def list_wss(self, peer: bytes) -> list:
        return self.call(peer, Op.LIST_WSS).json

    # ------------------------------------------------------------ variables

    def declare(self, peer: bytes, ws: str, var: str, mode: str) -> Reply:
        return self.call(peer, Op.DECLARE, [ws.encode(), var.encode(), mode.encode()])

    def delete_var(self, peer: bytes, ws: str, var: str) -> Reply:
        return self.call(peer, Op.DELETE_VAR, [ws.encode(), var.encode()])

    def list_vars(self, peer: bytes, ws: str) -> list:
        return self.call(peer, Op.LIST_VARS, [ws.encode()]).json

    def var_counts(self, peer: bytes, ws: str) -> dict[str, tuple[int, int, int, str]]:
        """listVars as name -> (values, fetchers, finders, mode)."""
        return {name: (nvalues, nfetchers, nfinders, mode)
                for name, nvalues, nfetchers, nfinders, mode in self.list_vars(peer, ws)}

    def store(self, peer: bytes, ws: str, var: str, value: Any, acks=()) -> Reply:
        """Store ``value`` the way a client does: its first frame is the head's last argument."""
        first, *extra = codec.encode(value)
        args = [ws.encode(), var.encode(), first]
        flags = 0
        if acks:
            args.insert(0, protocol.pack_acks(acks))
            flags = FLAG_ACKS
        return self.call(peer, Op.STORE, args, extra, flags)

    def read(self, peer: bytes, op: int, ws: str, var: str, cookie=None) -> int:
        """Send one of the eight reads; returns the request id (the reply may come later)."""
        args = [ws.encode(), var.encode()]
        if cookie is not None:
            args += [b"%d" % cookie[0], b"%d" % cookie[1]]
        return self.send(peer, op, args)

    def fetch(self, peer: bytes, ws: str, var: str) -> int:
        return self.read(peer, Op.FETCH, ws, var)

    def find(self, peer: bytes, ws: str, var: str) -> int:
        return self.read(peer, Op.FIND, ws, var)

    def fetch_try(self, peer: bytes, ws: str, var: str) -> Reply:
        return self._answered(peer, self.read(peer, Op.FETCH_TRY, ws, var))

    def find_try(self, peer: bytes, ws: str, var: str) -> Reply:
        return self._answered(peer, self.read(peer, Op.FIND_TRY, ws, var))

    def ifind(self, peer: bytes, ws: str, var: str, cookie=(0, 0)) -> int:
        return self.read(peer, Op.IFIND, ws, var, cookie)

    def ifind_try(self, peer: bytes, ws: str, var: str, cookie=(0, 0)) -> Reply:
        return self._answered(peer, self.read(peer, Op.IFIND_TRY, ws, var, cookie))

    def ifetch_try(self, peer: bytes, ws: str, var: str, cookie=(0, 0)) -> Reply:
        return self._answered(peer, self.read(peer, Op.IFETCH_TRY, ws, var, cookie))

    def _answered(self, peer: bytes, request_id: int) -> Reply:
        reply = self.reply(peer, request_id)
        assert reply is not None, f"request {request_id} got no reply"
        return reply

    def fetch_all(self, peer: bytes, ws: str, var: str) -> list:
        """fetchTry until MISSING, acknowledging each value; returns the values in order."""
        values = []
        while True:
            reply = self.fetch_try(peer, ws, var)
            if reply.status == Status.MISSING:
                return values
            values.append(reply.value)
            self.ack(peer, reply.request_id)

    # ------------------------------------------------------------ introspection

    def new_changes(self) -> list:
        """The change records returned since the last call of this method."""
        new = self.changes[self._changes_seen:]
        self._changes_seen = len(self.changes)
        return new

    def check_replay(self) -> None:
        """A replica fed nothing but the change records holds what the state holds."""
        replica = Replica()
        replica.apply_all(self.changes)
        assert replica.view() == state_view(self.state)

    def check_restore(self) -> None:
        """A fresh state restored from the change records holds what the state would hold
        after a restart (``restore_check``)."""
        check_restore(self.changes, self.state)

    def held_values(self, ws: str, var: str) -> list | None:
        """The decoded values the state holds in a variable, head first for FIFO and SINGLE,
        top last for LIFO; None if there is no such variable. For invariants only."""
        space = self.state.spaces.get(ws)
        variable = space.variables.get(var) if space is not None else None
        if variable is None:
            return None
        return [codec.decode(value.frames) for value in variable.values]

    def leased_values(self) -> list:
        """The decoded values handed to fetchers and not acknowledged yet. For invariants only."""
        return [codec.decode(value.frames) for _, value, _ in self.state.handoffs.leases.values()]


def _flag(on: bool) -> bytes:
    return b"1" if on else b"0"
