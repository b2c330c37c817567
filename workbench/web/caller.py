"""Broker calls made from the gateway's event loop itself. ``LoopCaller`` owns one channel of
the gateway's session for the loop's thread, has the loop watch its socket, and hands each
reply to the future waiting for it, by request id.

From a gateway thread a call costs three wake-ups (the worker, the worker again for the
broker's reply, the loop for the result); from the loop, one: the reply's. So the calls that
never wait at the broker and send little (``takes``) come here; waits keep their threads,
their limiter and their cancellation, and a large body goes out from a thread, so that the
loop never waits on a send (a small one the kernel does not take at once is finished when the
socket is writable).

What can go wrong, and what each does:

- The broker goes away (the socket closes): every pending call fails with
  NwsConnectionDroppedException (HTTP 502), as the blocking client's calls do; the socket
  leaves the loop's watch as it closes, and the next call opens a channel of the connection's
  next session (reconnecting, in a thread: the loop never waits for a connect).
- The broker falls silent (the heartbeat misses its answers): pending calls fail the same
  way within ``CHECK_EVERY`` of the heartbeat's verdict, and are cancelled at the broker, so
  a value one of them took goes back once the broker reads again; the channel stays, since
  the session may live on.
- No answer within ``timeout``: BrokerTimeout (HTTP 504), the request cancelled at the
  broker.
- A leased value (a fetchTry) is acknowledged only once ``respond`` made the HTTP answer of
  it. If that fails or the waiting task is cancelled, the request is cancelled and the broker
  puts the value back.
"""

from __future__ import annotations

import asyncio
import threading
from types import CoroutineType
from typing import Any, Callable

from ..client.connection import Channel, Connection, raise_for_status
from ..client.dealer import Dealer, DealerError
from ..config import BYE_TIMEOUT, WEB_CALL_TIMEOUT, WEB_LOOP_CALL_MOST
from ..errors import NwsConnectionDroppedException, NwsException
from ..protocol import HEADER, HEADER_SIZE, Op, Status
from .calls import BrokerCall
from .gateway import no_answer

_unpack_header = HEADER.unpack_from

#: How often (seconds) the pending calls are held against their deadlines and the heartbeat's
#: verdict while there are any: the blocking client's poll slice.
CHECK_EVERY = 0.25

_STOPPING = "the gateway is stopping"


class LoopCaller:
    """The gateway's calls from its event loop, on a channel of ``connection``. Made, used
    and closed (``aclose``) in the loop's thread, which owns the channel."""

    def __init__(self, connection: Connection, timeout: float = WEB_CALL_TIMEOUT,
                 most: int = WEB_LOOP_CALL_MOST) -> None:
        self.connection = connection
        self.timeout = timeout  # seconds the broker may take to answer
        self.most = most  # bytes a call may send to be sent from here
        self.calls = 0  # requests sent (the gateway's status tells)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.current_thread()
        self._channel: Channel | None = None
        self._fd = -1  # the channel's socket, as the loop watches it
        self._writing = False  # whether the loop waits for the socket to take more
        self._pending: dict[int, tuple[asyncio.Future, float]] = {}  # id -> (future, deadline)
        self._opening: asyncio.Future | None = None
        self._check: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def watched(self) -> int | None:
        """The descriptor of the channel's socket while the loop watches it, else None."""
        return self._fd if self._fd >= 0 else None

    def takes(self, call: BrokerCall) -> bool:
        """Whether ``call`` goes out from here: a value of one frame at most, and no more
        than ``most`` bytes (nor than the broker takes). (Its other arguments are names,
        which a URL's length bounds.)"""
        frames = call.frames
        if not frames:
            return not self._closed
        return (len(frames) == 1 and not self._closed and len(frames[0]) <= self.most
                and len(frames[0]) <= self.connection.info["max_message_size"])

    async def call(self, call: BrokerCall, respond: Callable[[Any], Any] | None = None) -> Any:
        """Send ``call`` and wait for its answer -> ``respond(answer)`` (awaited if that is a
        coroutine) if given, else the answer. Raises as ``Gateway.call`` does. A leased value
        is acknowledged once ``respond`` returned; if it raises, it goes back."""
        channel = self._channel
        if channel is None or self._closed or self.connection.broken or (
                not self._current(channel)):
            channel = await self._ready()
        request_id = channel.new_request_id()
        reply = self._send(channel, call.op, call.args, call.frames, request_id)
        try:
            head, extra = await reply
        except asyncio.CancelledError:  # the request's task was cancelled: withdraw it
            if self._pending.pop(request_id, None) is not None:
                self._cancel(channel, request_id)
            raise
        status = head[1]
        if status >= Status.ERROR:
            raise_for_status(status, head)
        leased = call.leased and status == Status.OK
        try:
            made = call.answer(status, head, extra)
            if respond is not None:
                made = respond(made)
                if type(made) is CoroutineType:
                    made = await made
        except BaseException:
            if leased:
                self._cancel(channel, request_id)
            raise
        if leased:
            self._acknowledge(channel, request_id)
        return made

    async def aclose(self) -> None:
        """Stop: acknowledge the values taken (the session's end would hand them back), fail
        what is pending (502) and close the channel, out of the loop's watch first."""
        self._closed = True
        channel = self._channel
        if channel is not None and channel.acks and self._current(channel):
            try:  # the acknowledgements ride on any request
                await asyncio.wait_for(self._send(channel, Op.HEARTBEAT, [], (),
                                                  channel.new_request_id()), BYE_TIMEOUT)
            except (NwsException, asyncio.TimeoutError):
                pass  # the broker is gone or silent: its session's end settles them
        if channel is not None:
            self._lose(channel, NwsConnectionDroppedException(_STOPPING))
        if self._check is not None:
            self._check.cancel()
            self._check = None

    # ------------------------------------------------------------------ the channel

    async def _ready(self) -> Channel:
        """The channel to send on when the one at hand will not do: one of the connection's
        current session, opened if need be."""
        if self._closed:
            raise NwsConnectionDroppedException(_STOPPING)
        connection = self.connection
        if connection.broken and not connection.lost:  # silent: fail fast, as the blocking
            raise NwsConnectionDroppedException(connection.broken)  # client's calls do
        channel = self._channel
        if channel is not None:
            if self._current(channel):
                return channel
            self._lose(channel, NwsConnectionDroppedException(self._gone()))
        if self._opening is None:  # one opening for every call that comes meanwhile
            self._opening = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._opening)

    async def _open(self) -> Channel:
        try:  # connecting (and reconnecting a lost session) may wait: in a thread
            channel = await self._loop.run_in_executor(None, self.connection.open_channel,
                                                       self._thread)
        finally:
            self._opening = None
        if self._closed:
            channel.close()
            raise NwsConnectionDroppedException(_STOPPING)
        self._channel = channel
        self._fd = channel.dealer.fileno()
        self._loop.add_reader(self._fd, self._readable)
        return channel

    def _current(self, channel: Channel) -> bool:
        """Whether ``channel`` still serves: open, of the connection's current session."""
        connection = self.connection
        return (not channel.retired and not channel.dealer.closed and not connection.lost
                and channel.session_id == connection.session_id)

    def _gone(self) -> str:
        connection = self.connection
        if connection.broken:
            return connection.broken
        if connection.closed:
            return f"the connection to {connection.address} is closed"
        return f"the broker at {connection.address} went away (a new session has begun)"

    def _lose(self, channel: Channel, error: NwsException) -> None:
        """Let a channel that serves no more go: out of the loop's watch, then closed; every
        call pending on it fails with ``error``."""
        if channel is not self._channel:
            return
        self._channel = None
        fd, self._fd = self._fd, -1
        if self._writing:
            try:
                self._loop.remove_writer(fd)
            except OSError:  # closed already (the connection broke): the selector let it go
                pass
            self._writing = False
        self._loop.remove_reader(fd)
        channel.close()
        self._fail_pending(error)

    # ------------------------------------------------------------------ requests

    def _send(self, channel: Channel, op: int, args: list, frames: list | tuple,
              request_id: int) -> asyncio.Future:
        """Send a request -> the future of its reply, (head, extra frames)."""
        try:
            sent = channel.post_nowait(op, args, frames, request_id)
        except NwsConnectionDroppedException as exc:
            self._lose(channel, exc)
            raise
        if not sent:
            self._want_to_write()
        loop = self._loop
        future = loop.create_future()
        self._pending[request_id] = (future, loop.time() + self.timeout)
        self.calls += 1
        if self._check is None:
            self._check = loop.call_later(CHECK_EVERY, self._check_pending)
        return future

    def _cancel(self, channel: Channel | None, request_id: int) -> None:
        """Withdraw a request at the broker, which puts back a value it took; its late reply
        then finds nobody waiting and is dropped. On a channel that is gone there is nothing
        to do: the session's end hands back what it held."""
        if channel is None or channel is not self._channel:
            return
        try:
            if not channel.post_nowait(Op.CANCEL, [b"%d" % request_id], (),
                                       channel.new_request_id()):
                self._want_to_write()
        except NwsConnectionDroppedException as exc:
            self._lose(channel, exc)

    def _acknowledge(self, channel: Channel, request_id: int) -> None:
        """Have a leased value acknowledged with the channel's next request (or the
        heartbeat's, within its interval)."""
        if (channel is self._channel and self._current(channel)
                and channel.acknowledge_later(request_id)):
            return
        raise NwsConnectionDroppedException(
            f"the connection to the broker at {self.connection.address} broke before the value "
            "taken could be acknowledged: it was not handed out (the broker puts it back if it "
            "lives on)")

    def _fail_pending(self, error: NwsException) -> list[int]:
        """Fail every pending call with (a copy of) ``error`` -> their request ids."""
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(type(error)(str(error)))
        return list(pending)

    # ------------------------------------------------------------------ the loop's callbacks

    def _on_socket(self, operation: Callable[[Dealer], Any]) -> Any:
        """``operation`` on the channel's socket -> what it returns; None if there is no
        channel, or the connection broke (the channel is then lost)."""
        channel = self._channel
        if channel is None:
            return None
        try:
            return operation(channel.dealer)
        except DealerError as exc:
            self._lose(channel, NwsConnectionDroppedException(str(exc)))
            return None

    def _readable(self) -> None:
        messages = self._on_socket(Dealer.receive_ready)
        if not messages:
            return
        channel = self._channel
        pending = self._pending
        for message in messages:
            head = message[0]
            if len(head) < HEADER_SIZE:
                self._lose(channel, NwsConnectionDroppedException(
                    "the broker sent a malformed reply"))
                return
            request_id = _unpack_header(head)[3]
            waiting = pending.pop(request_id, None)
            if waiting is None:
                continue  # a cancelled request's late reply, or a cancel's confirmation
            if waiting[0].done():  # cancelled as its reply came: a value it took goes back
                self._cancel(channel, request_id)
            else:
                waiting[0].set_result((head, message[1:]))

    def _want_to_write(self) -> None:
        if not self._writing:
            self._loop.add_writer(self._fd, self._writable)
            self._writing = True

    def _writable(self) -> None:
        if self._on_socket(Dealer.flush):
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _check_pending(self) -> None:
        """Every ``CHECK_EVERY`` while calls are pending: the heartbeat's verdict, a session
        that changed, the calls' deadlines."""
        self._check = None
        channel = self._channel
        connection = self.connection
        if channel is not None and not self._current(channel):
            self._lose(channel, NwsConnectionDroppedException(self._gone()))
        elif connection.broken:
            for request_id in self._fail_pending(NwsConnectionDroppedException(
                    connection.broken)):
                self._cancel(channel, request_id)
        else:
            now = self._loop.time()
            late = [request_id for request_id, (_, deadline) in self._pending.items()
                    if deadline <= now]
            for request_id in late:
                future = self._pending.pop(request_id)[0]
                if not future.done():
                    future.set_exception(no_answer(connection.address, self.timeout))
                self._cancel(channel, request_id)
        if self._pending:
            self._check = self._loop.call_later(CHECK_EVERY, self._check_pending)
