"""A client session with one broker: sockets, request ids, heartbeats, cancellation.

Each thread that talks to the broker gets its own DEALER socket (a *channel*, see ``dealer``); all
channels of a connection share one random session id at the front of their routing identities,
so the broker sees one client. The calling thread does its own socket I/O: no hand-off to another
thread, libzmq's or Python's, on the hot path. A daemon thread sends a heartbeat every interval
on a channel of its own, carries the acknowledgements of idle channels, and notices when the
broker stops answering or closes the connection.

A request interrupted by Ctrl-C or by its timeout is cancelled at the broker, which puts back any
value that raced the cancel; the late reply is then discarded here (``interrupts`` tells how).

A broker that goes away (its process stopped, crashed or restarted) fails the calls in flight
with ``NwsConnectionDroppedException``. The next call starts a new session at the same address
on its own, if a broker answers there, and goes on: the old session's non-persistent workspaces
are gone with it (a broker with a data directory keeps the persistent ones). Whatever holds
per-session state (an opened workspace, subscriptions, watches) registers with
``on_new_session`` to set it up again. A broker that only fell silent for a while (the heartbeat
misses answers) may still hold the session, so calls fail meanwhile but nothing reconnects.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import socket
import stat
import threading
import time
import weakref
from collections import deque
import logging
from typing import TYPE_CHECKING, Callable

from .._version import __version__
from .. import shm
from ..config import (
    BYE_TIMEOUT, CANCEL_TIMEOUT, GOODBYE_WAIT, LOCAL_PROBE_TIMEOUT, LOCAL_SOCKET_ENV,
    RECONNECT_INTERVAL, SHM_ENV, Liveness,
)
from ..errors import (
    NwsBadRequestException, NwsConnectException, NwsConnectionDroppedException,
    NwsDeclarationFailedException, NwsException, NwsIteratorInvalidException,
    NwsLimitException, NwsMemoryException, NwsMessageTooLargeException,
    NwsNoWorkSpaceException, NwsOperationException, NwsTimeoutException,
    NwsUnsupportedOperationException, NwsUnpicklingException, NwsValueException,
    NwsVariableDeletedException,
)
from ..connection_file import BrokerTarget, resolve
from .dealer import Dealer, DealerError
from .deliveries import Deliveries
from .interrupts import deliver, settle_send, slot, withdraw
from ..protocol import (
    CHANNEL, FLAG_ACKS, HEADER, HEADER_SIZE, SESSION_ID_SIZE, Op, Status, pack_acks,
    pack_channel_acks, request_head,
)

if TYPE_CHECKING:
    from ..zmtp.curve import ClientKeys

_unpack_header = HEADER.unpack_from
log = logging.getLogger("workbench.client")

#: Longest single wait inside a blocking call, in seconds: how often it checks that the broker
#: is still alive.
_POLL_SLICE = 0.25

_ERRORS: dict[int, type[NwsException]] = {
    Status.BAD_REQUEST: NwsBadRequestException,
    Status.UNKNOWN_OP: NwsUnsupportedOperationException,
    Status.NO_WORKSPACE: NwsNoWorkSpaceException,
    Status.DECLARATION_FAILED: NwsDeclarationFailedException,
    Status.VARIABLE_DELETED: NwsVariableDeletedException,
    Status.ITERATOR_INVALID: NwsIteratorInvalidException,
    Status.NO_MEMORY: NwsMemoryException,
    Status.TOO_LARGE: NwsMessageTooLargeException,
    Status.SHUTTING_DOWN: NwsConnectionDroppedException,
    Status.BAD_VALUE: NwsValueException,
    Status.TOO_MANY: NwsLimitException,
}

_live_connections: weakref.WeakSet[Connection] = weakref.WeakSet()
#: The CURVE brokers this process has connected to, by address, with their keys: a workspace
#: handle that reaches this process by pickle names only the broker's host and port (as
#: NetWorkSpaces' did), and a worker's tasks open workspaces by the address they are given.
_curve_targets: dict[str, BrokerTarget] = {}


def known_target(address: str) -> str | BrokerTarget:
    """``address``, or the CURVE target (with its keys) this process connected to there."""
    return _curve_targets.get(address, address)


def forget_target(address: str) -> None:
    """Forget the CURVE keys of ``address``: the broker there now is another."""
    _curve_targets.pop(address, None)


def _reason(exc: OSError) -> str:
    """'connection refused' rather than '[Errno 111] Connection refused'."""
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def raise_for_status(status: int, head: bytes) -> None:
    if status >= Status.ERROR:
        message = head[HEADER_SIZE:].decode("utf-8", "replace")
        raise _ERRORS.get(status, NwsOperationException)(message or f"broker status {status}")


#: Session listeners a connection holds before it first drops those whose object went.
_LISTENERS_PRUNE_MIN = 64


class Channel:
    """One thread's DEALER socket and the bookkeeping of its requests."""

    def __init__(self, endpoint: str, session_id: bytes, number: int,
                 connect_timeout: float, curve: ClientKeys | None = None,
                 owner: threading.Thread | None = None) -> None:
        """Connect to the broker at ``endpoint`` (with CURVE's ``curve`` keys) for ``owner``
        (None: the calling thread); OSError if nothing accepts there (DealerError, one, if
        the handshake fails)."""
        self.number = number
        self.session_id = session_id
        self.retired = False  # set when the connection closes, from whichever thread
        self.owner = owner or threading.current_thread()  # a socket belongs to one thread
        self.dealer = Dealer(endpoint, session_id + CHANNEL.pack(number), connect_timeout,
                             curve)
        self.ids = itertools.count(1)
        self.stash: dict[int, tuple[bytes, list]] = {}  # replies that came while waiting
        self.cancelled: set[int] = set()  # requests whose late replies are to be discarded
        self.acks: deque[int] = deque()  # leased values consumed, not yet acknowledged

    def acknowledge_later(self, request_id: int, any_thread: bool = False) -> bool:
        """Have the leased reply to ``request_id`` acknowledged with this channel's next
        request, or the heartbeat's -> False if that cannot be: the connection closed, or the
        calling thread is not the channel's (one that reused a finished thread's id, whose
        channel may be gone) and not ``any_thread`` (a finalizer, which may make no request).
        Otherwise ``Connection.acknowledge`` does it at once."""
        if self.retired or not (any_thread or self.owner is threading.current_thread()):
            return False
        self.acks.append(request_id)
        return True

    def send(self, op: int, args: list, frames: list | tuple = (),
             alive: Callable[[], None] | None = None, acks: tuple | list = (),
             request_id: int | None = None) -> int:
        """Send a request -> its id (``request_id``, from ``new_request_id``, or a new one).
        The value's first frame rides in the head, after ``args``. An interrupt that comes
        meanwhile is raised once the request is out, or has been dropped unsent (see
        ``post`` for a caller that must know which)."""
        if request_id is None:
            request_id = next(self.ids) & 0xFFFFFFFF  # ``new_request_id``: every publish's
        lane = self.dealer.lane  # (``accel``: the compiled lane, with this build)
        if lane is None or len(frames) > 1 or not self._post_through(
                lane, op, args, frames, alive, acks, request_id):
            self.post(op, args, frames, alive, acks, request_id)
        if slot.interrupt is not None:  # (``held()``, without its call)
            deliver()
        return request_id

    def _post_through(self, lane, op: int, args: list, frames: list | tuple,
                      alive: Callable[[], None] | None, acks: tuple | list,
                      request_id: int) -> bool:
        """Send a small request, with ``acks`` and the queued acknowledgements, through the
        fast lane -> whether it went out (False: nothing did, and the Python path sends it).
        The rest of a request the kernel took in part goes before anything else, holding
        interrupts as ``Dealer.send`` does."""
        flags, drained = 0, None
        if acks or self.acks:
            args, flags, drained = self.with_acks(args, acks)
        went_out = lane.post(op, flags, request_id, args, frames[0] if frames else None)
        if went_out is False and drained:
            self.give_back(drained, acks)
        if went_out is None and not self.dealer.send_unsent(alive):
            raise NwsConnectionDroppedException(
                "the connection to the broker broke while a request was going out")
        return went_out is not False

    def post(self, op: int, args: list, frames: list | tuple, alive: Callable[[], None] | None,
             acks: tuple | list, request_id: int) -> bool:
        """Send request ``request_id`` -> whether it went out (see ``Dealer.send``); an
        interrupt that came meanwhile is held for the caller (``interrupts``).

        ``acks``: ids of leased replies this very request acknowledges, besides those queued.
        They never go through the queue the heartbeat thread drains, so the broker sees them
        exactly with this request (a worker's result store carries the acknowledgement of
        the tasks it answers: both or neither reach the broker). Queued ones that a dropped
        request took go back to the queue.

        When the socket takes no more (a broker that stopped reading), the send waits in
        slices, reading replies meanwhile, and calls ``alive``, which raises once the broker
        is known gone: a fire-and-forget publisher never hangs on a dead broker."""
        if acks or self.acks:
            head, drained = self._head(op, args, frames, acks, request_id)
        else:  # the usual request: nothing to acknowledge
            drained = None
            head = request_head(op, request_id, [*args, frames[0]] if frames else args)
        try:
            went_out = self.dealer.send((head, *frames[1:]) if len(frames) > 1 else (head,),
                                        alive)
        except DealerError as exc:
            raise NwsConnectionDroppedException(str(exc)) from None
        if not went_out and drained:
            self.give_back(drained, acks)
        return went_out

    def post_nowait(self, op: int, args: list, frames: list | tuple, request_id: int) -> bool:
        """Send request ``request_id`` on a channel an event loop drives, never waiting (see
        ``Dealer.send_nowait``: what the socket does not take now goes out with the next
        ``dealer.flush()``) -> whether it is all out. The queued acknowledgements ride on it,
        as on ``post``. NwsConnectionDroppedException if the connection broke."""
        head = self._head(op, args, frames, (), request_id)[0]
        try:
            return self.dealer.send_nowait((head, *frames[1:]) if len(frames) > 1 else (head,))
        except DealerError as exc:
            raise NwsConnectionDroppedException(str(exc)) from None

    def _head(self, op: int, args: list, frames: list | tuple, acks: tuple | list,
              request_id: int) -> tuple[bytes, list | None]:
        """A request's head frame, carrying ``acks`` and the acknowledgements queued -> (the
        head, the request ids it acknowledges or None)."""
        if frames:
            args = [*args, frames[0]]
        if not self.acks and not acks:
            return request_head(op, request_id, args), None
        args, flags, drained = self.with_acks(args, acks)
        return request_head(op, request_id, args, flags), drained

    def with_acks(self, args: list, acks: tuple | list) -> tuple[list, int, list | None]:
        """A request's arguments carrying ``acks`` and the acknowledgements queued -> (the
        arguments, the head's flags, the request ids they acknowledge or None). Those taken
        from the queue go back to it (``give_back``) if the request is not sent."""
        drained = list(acks)
        queued = self.acks
        while queued:
            try:
                drained.append(queued.popleft())
            except IndexError:  # the heartbeat thread took it
                break
        if not drained:
            return args, 0, None
        acked = b"%d" % drained[0] if len(drained) == 1 else pack_acks(drained)
        return [acked, *args], FLAG_ACKS, drained

    def give_back(self, drained: list, acks: tuple | list = ()) -> None:
        """Put the queued acknowledgements an unsent request took (``drained``, after its own
        ``acks``) back in front of the queue, for the next request."""
        if len(drained) > len(acks):
            self.acks.extendleft(reversed(drained[len(acks):]))

    def new_request_id(self) -> int:
        return next(self.ids) & 0xFFFFFFFF

    def receive(self, request_id: int, deadline: float | None,
                alive: Callable[[], None]) -> tuple[bytes, list]:
        """Wait for the reply to ``request_id`` -> (head, value frames); raises
        NwsTimeoutException at ``deadline``."""
        return self.receive_any((request_id,), deadline, alive)[1:]

    def receive_any(self, request_ids: tuple | set | frozenset, deadline: float | None,
                    alive: Callable[[], None]) -> tuple[int, bytes, list]:
        """Wait for the reply to whichever of ``request_ids`` comes first -> (its id, head,
        value frames): a client with several requests in flight (a worker waiting on two
        variables at once) takes what answers. Replies to other requests are kept for their
        own receive. Raises NwsTimeoutException at ``deadline``."""
        stash = self.stash
        recv = self.dealer.recv
        wait = _POLL_SLICE
        while True:
            if stash:
                for request_id in request_ids:
                    if request_id in stash:
                        return (request_id, *stash.pop(request_id))
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NwsTimeoutException("timed out waiting for the broker's reply")
                wait = min(remaining, _POLL_SLICE)
            try:
                message = recv(wait)
            except DealerError as exc:
                raise NwsConnectionDroppedException(str(exc)) from None
            if message is None:
                alive()
                continue
            head = message[0]
            if len(head) < HEADER_SIZE:
                raise NwsConnectionDroppedException("the broker sent a malformed reply")
            got = _unpack_header(head)[3]
            frames = message[1:]
            if got in request_ids:
                return got, head, frames
            if got in self.cancelled:
                continue  # the late answer to a cancelled request: its value went back
            stash[got] = (head, frames)  # another request in flight on this socket

    def cancel(self, request_id: int, alive: Callable[[], None]) -> None:
        """Cancel an in-flight request and wait (bounded) until the broker confirms it."""
        self.cancelled.add(request_id)
        self.stash.pop(request_id, None)
        cancel_id = self.send(Op.CANCEL, [b"%d" % request_id])
        self.cancelled.add(cancel_id)
        try:
            self.receive(cancel_id, time.monotonic() + CANCEL_TIMEOUT, alive)
        except NwsException:
            return  # the broker is unreachable; its session cleanup returns the value
        finally:
            self.cancelled.discard(cancel_id)
        # Replies on one socket arrive in order: after the confirmation, none can follow.
        self.cancelled.discard(request_id)

    def close(self) -> None:
        self.dealer.close()

    def closable_from_here(self) -> bool:
        """Closing a socket another thread may be blocked on would hand its descriptor number
        to whatever opens next."""
        return self.owner is threading.current_thread() or not self.owner.is_alive()


class Connection:
    """A session with the broker at ``address``: ``tcp://host:port``, a connection file's
    path or JSON text (``connection_file.resolve``), or a ``BrokerTarget``.

    A client on the broker's machine moves to the Unix socket the broker offers in its hello
    reply (``endpoint``); ``address`` stays what the user gave, for messages. Under CURVE
    (``curve``: the keys of a connection file) every TCP socket does CURVE's handshake; the
    Unix socket, which only the broker's user can reach, stays plain."""

    def __init__(self, address: str | BrokerTarget, connect_timeout: float,
                 hint: str = "") -> None:
        self.target = address if isinstance(address, BrokerTarget) else resolve(address)
        self.address = self.target.address
        self.connect_timeout = connect_timeout
        self._hint = hint
        self._closed = False
        self._lock = threading.Lock()
        self._reconnecting = threading.Lock()
        self._session_listeners: list[Callable[[], Callable[[], None] | None]] = []
        self._listeners_lock = threading.Lock()
        self._listeners_pruned_at = _LISTENERS_PRUNE_MIN
        self._reconnecting_thread: threading.Thread | None = None
        self.sessions = 0  # sessions this connection has had: more than one after a reconnect
        # The broker closed the session's sockets: the next call (or a background retry)
        # takes a new session; it stays set until that session is fully set up again.
        self.lost = False
        self._open_session()

    def _open_session(self) -> None:
        """Say hello as a new session: sockets, heartbeat, the broker's limits."""
        target, hint = self.target, self._hint
        self.endpoint = target.address  # where this connection's sockets connect
        self.curve = target.client_keys()
        self.session_id = os.urandom(SESSION_ID_SIZE)
        self.broken: str | None = None  # why the broker is considered unreachable
        if not hasattr(self, "_local"):  # a thread's channel of an older session is closed
            self._local = threading.local()  # by the thread itself (``channel``)
        # ... or, once its thread has ended without another request, by the next new channel
        # or ``close`` (an idle sender thread's, say)
        self._stale: list[Channel] = [
            channel for channel in [*getattr(self, "_stale", ()), *getattr(self, "_channels", ())]
            if not channel.dealer.closed]
        self._channels: list[Channel] = []
        self._channel_numbers = itertools.count(1)
        connect_timeout = self.connect_timeout
        hello = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "version": __version__,
                            "shm": shm.identity() if os.environ.get(SHM_ENV) != "0" else None,
                            }).encode()
        address = target.describe()
        try:
            channel = self._new_channel()
        except DealerError as exc:  # it answered, but the CURVE handshake failed
            raise NwsConnectException(f"cannot connect to the broker at {address}: {exc}") \
                from None
        except OSError as exc:
            raise NwsConnectException(
                f"no broker answered at {address} ({_reason(exc)}); "
                + (hint or "start one with `workbench broker`")) from None
        try:  # no cancel on failure: nobody is there to confirm it
            head, _ = channel.receive(channel.send(Op.HELLO, [hello]),
                                      time.monotonic() + connect_timeout, self.check_alive)
        except NwsTimeoutException:
            self._close_sockets()
            raise NwsConnectException(
                f"no broker answered at {address} within {connect_timeout:g} s; "
                + (hint or "start one with `workbench broker`")) from None
        except NwsConnectionDroppedException as exc:
            # it answered and hung up, saying why (a CURVE broker refusing a plain client)
            self._close_sockets()
            raise NwsConnectException(f"cannot connect to the broker at {address}: {exc}") \
                from None
        if head[1] >= Status.ERROR:
            self._close_sockets()
            raise NwsConnectException(f"the broker at {address} refused this client: "
                                      + head[HEADER_SIZE:].decode("utf-8", "replace"))
        self.info = json.loads(head[HEADER_SIZE:])
        if target.curve:  # its keys proved good
            _curve_targets[target.address] = target
        self.liveness = Liveness(self.info["heartbeat_interval"], self.info["heartbeat_liveness"])
        self.label = self.info["label"]
        self.shm_pid = self.info.get("shm_pid")  # set when values may go through /dev/shm
        self._go_local(self.info.get("local"))
        self._heartbeat = _Heartbeat(self)
        self._heartbeat.start()
        self._deliveries: list[Deliveries] = []  # the delivery thread, once something subscribes
        _live_connections.add(self)
        self._finalizer = weakref.finalize(self, _release, self._heartbeat, self._channels,
                                           self._lock, self.endpoint, self.curve,
                                           self.session_id,
                                           self._deliveries)
        self._session_released = False
        self.sessions += 1

    @property
    def local(self) -> bool:
        """Whether this connection reached the broker through its Unix socket: the broker
        runs on this machine."""
        return self.endpoint.startswith("ipc://")

    @property
    def durable(self) -> bool:
        """Whether the broker keeps a data directory (its persistent state survives it)."""
        return bool(self.info.get("durable"))

    def await_new_session(self, since: bytes, timeout: float) -> bool:
        """Wait until this connection has a session other than ``since`` (a session id), as
        after the broker came back -> False if none came within ``timeout`` seconds or the
        connection was closed. Calls made meanwhile fail fast; a background retry
        reconnects."""
        deadline = time.monotonic() + timeout
        while self.session_id == since or self.lost:
            if self._closed or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _detach_finalizer(self) -> None:
        finalizer = self.__dict__.pop("_finalizer", None)  # not closed, if no session yet
        if finalizer is not None:
            finalizer.detach()

    def on_new_session(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every reconnect, in the thread whose call reconnected,
        before that call goes on (a bound method is held weakly: its object may go)."""
        reference = (weakref.WeakMethod(listener) if hasattr(listener, "__self__")
                     else lambda: listener)
        with self._listeners_lock:
            listeners = self._session_listeners
            if len(listeners) >= 2 * self._listeners_pruned_at:
                # A process that makes a handle per request (a web gateway) must not grow the
                # list by one dead reference per request until a reconnect: prune it whenever
                # it has doubled, so that adding stays O(1) amortized.
                listeners[:] = [ref for ref in listeners if ref() is not None]
                self._listeners_pruned_at = max(len(listeners), _LISTENERS_PRUNE_MIN)
            listeners.append(reference)

    def _reconnect(self) -> None:
        """A new session in place of one the broker closed (the caller saw ``lost``). Other
        threads' calls wait for it, listeners included: ``lost`` stays set until the
        listeners have set the session up (their own calls go through meanwhile)."""
        if self._reconnecting_thread is threading.current_thread():
            return  # a listener's call, in the middle of the reconnect
        with self._reconnecting:
            if not self.lost or self._closed:
                return  # another thread reconnected meanwhile, or the user closed it
            self._reconnecting_thread = threading.current_thread()
            try:
                self._new_session()
            finally:
                self._reconnecting_thread = None

    def _new_session(self) -> None:
        old_session = self.session_id.hex()[:8]
        if not self._session_released:  # (an earlier attempt may have)
            self._detach_finalizer()  # no goodbye: nobody is there to hear it
            _release(self._heartbeat, self._channels, self._lock, deliveries=self._deliveries)
            self._session_released = True
        try:
            self._open_session()
        except NwsConnectException as exc:
            self.broken = str(exc)  # still lost: the next call tries again
            raise NwsConnectionDroppedException(
                f"the broker at {self.address} went away and none answers there now: "
                f"{exc}") from None
        log.warning("the broker at %s went away and a broker answers there again: a new "
                    "session (%s, was %s); the old session's non-persistent workspaces are "
                    "gone", self.address, self.session_id.hex()[:8], old_session)
        with self._listeners_lock:
            pairs = [(ref, ref()) for ref in self._session_listeners]
            self._session_listeners[:] = [ref for ref, listener in pairs if listener is not None]
        for _, listener in pairs:
            if listener is not None:
                listener()  # if it raises, the next call makes a session afresh
        self.lost = False
    def _go_local(self, endpoint: str | None) -> None:
        """Move to the broker's Unix socket if it offered one this process can reach: a new
        channel there replaces the one that said hello, and every later socket connects there.
        Anything amiss (another machine, another user, no answer) keeps TCP."""
        if not endpoint or not endpoint.startswith("ipc://") or (
                os.environ.get(LOCAL_SOCKET_ENV) == "0"):
            return
        path = endpoint[len("ipc://"):]
        try:
            if not stat.S_ISSOCK(os.stat(path).st_mode) or not os.access(path, os.W_OK):
                return
        except OSError:  # not on this machine
            return
        try:
            local = Channel(endpoint, self.session_id, next(self._channel_numbers),
                            LOCAL_PROBE_TIMEOUT)
        except OSError:
            return
        try:
            local.receive(local.send(Op.HEARTBEAT, []), time.monotonic() + LOCAL_PROBE_TIMEOUT,
                          self.check_alive)
        except NwsException:
            local.close()
            return
        with self._lock:
            greeter = self._local.channel
            greeter.close()
            self._channels.remove(greeter)
            self._channels.append(local)
        self._local.channel = local
        self.endpoint = endpoint
        self.curve = None

    @property
    def closed(self) -> bool:
        finalizer = getattr(self, "_finalizer", None)
        return self._closed or (finalizer is not None and not finalizer.alive)

    # ------------------------------------------------------------------ requests

    def channel(self) -> Channel:
        """This thread's channel (made on first use, and made again if its socket broke while
        the session lives on: the old one stays listed, so the heartbeat still carries the
        acknowledgements it holds). A new session first if the broker closed the last one."""
        if self.lost:
            self._reconnect()
        try:
            channel = self._local.channel
            if channel.session_id != self.session_id and not self._closed:
                channel.close()  # a session the broker closed: this thread's socket to it
                raise AttributeError
            if channel.dealer.closed and not channel.retired and not self.broken:
                raise AttributeError
        except AttributeError:
            try:
                channel = self._new_channel()
            except OSError as exc:
                raise NwsConnectionDroppedException(
                    f"cannot reach the broker at {self.address} ({_reason(exc)})") from None
        if channel.retired:
            if not channel.dealer.closed:
                channel.close()  # left open by a close() in another thread
            raise NwsConnectionDroppedException(
                self.broken or f"the connection to {self.address} is closed")
        return channel

    def open_channel(self, owner: threading.Thread) -> Channel:
        """A new channel of this session for ``owner`` alone (an event loop's thread, which
        drives the socket itself: ``Channel.post_nowait``, ``Dealer.receive_ready``), opened
        by the calling thread, which may wait meanwhile: a new session first if the broker
        closed the last one. It is not the calling thread's channel. The heartbeat carries
        its queued acknowledgements as any channel's; its owner closes it (closing the
        connection retires it, as it does the channels of other live threads)."""
        if self.lost:
            self._reconnect()
        try:
            return self._new_channel(owner)
        except OSError as exc:
            raise NwsConnectionDroppedException(
                f"cannot reach the broker at {self.address} ({_reason(exc)})") from None

    def _new_channel(self, owner: threading.Thread | None = None) -> Channel:
        if self.closed:
            raise NwsConnectionDroppedException(f"the connection to {self.address} is closed")
        with self._lock:
            for dead in [c for c in self._channels if not c.owner.is_alive()]:
                dead.close()  # a finished thread's socket
                self._channels.remove(dead)
            self._close_stale()
            channel = Channel(self.endpoint, self.session_id, next(self._channel_numbers),
                              self.connect_timeout, self.curve, owner)
            self._channels.append(channel)
        if owner is None:
            self._local.channel = channel
        return channel

    def acknowledge(self, leases: list[tuple[Channel, int]], timeout: float) -> None:
        """Acknowledge leased replies now, whichever threads' channels took them: one
        heartbeat request carries the (channel, request id) pairs. Raises as ``call``."""
        if leases:
            pairs = [(channel.number, request_id) for channel, request_id in leases]
            self.call(Op.HEARTBEAT, [pack_channel_acks(pairs)], timeout=timeout)

    def close_own_channel(self) -> None:
        """Close the calling thread's channel if the connection closed meanwhile: closing left
        it open, as it leaves every socket a live thread other than the closing one may be
        using, for the thread to close on its next request. A thread that makes no more
        requests as it ends with the connection (the delivery thread) calls this."""
        channel = getattr(self._local, "channel", None)
        if channel is not None and channel.retired:
            channel.close()

    def deliveries(self) -> Deliveries:
        """The delivery socket's thread of this connection, started on first use."""
        with self._lock:
            if not self._deliveries:
                self.check_alive()
                self._deliveries.append(Deliveries(self).start_and_wait())
            return self._deliveries[0]

    def check_alive(self) -> None:
        if self.broken:
            raise NwsConnectionDroppedException(self.broken)
        if self.closed:
            raise NwsConnectionDroppedException(f"the connection to {self.address} was closed")

    def call(self, op: int, args: list, frames: list | tuple = (),
             timeout: float | None = None) -> bytes:
        """Send one request and wait for its reply head. Error statuses raise."""
        return self.read(op, args, frames, timeout)[1][0]

    def read(self, op: int, args: list, frames: list | tuple = (), timeout: float | None = None,
             decode: Callable[[bytes, list], object] | None = None,
             leased: bool = False, spill: bool = True, acks: tuple | list = ()
             ) -> tuple[int, object]:
        """Send one request and wait for its reply -> (status, decoded value or (head, frames)).

        With ``decode``, an OK reply is decoded before anything is acknowledged; with ``leased``
        the value is then acknowledged. Ctrl-C or the timeout at any point before that cancels
        the request at the broker, which puts a raced value back: nothing is lost. ``spill``
        lets one value's large frames go through shared memory (``frames`` is one value).
        ``acks``: leased replies this request acknowledges (see ``Channel.send``)."""
        channel = self.channel()
        request_id = next(channel.ids) & 0xFFFFFFFF  # ``new_request_id``
        # (before the send: after it, the first call that may run a signal handler is inside
        # the ``try`` that withdraws an interrupted request)
        deadline = None if timeout is None else time.monotonic() + timeout
        spilled = None
        head = False  # the reply's head, when the fast lane brought it
        if len(frames) > 1:
            if spill:
                frames, spilled = self._prepare_large(frames)
            else:
                self.check_size(frames)
        elif not acks and not channel.stash:
            lane = channel.dealer.fast_lane()
            if lane is not None:  # (``accel``: the compiled lane, with this build)
                head = self._exchange(channel, lane, op, args, frames, request_id, timeout)
        if head is False:  # nothing went out: the Python path sends it
            try:
                went_out = channel.post(op, args, frames, self.check_alive, acks, request_id)
            except BaseException:  # the connection broke: nothing went out
                if spilled:  # the file is nobody's
                    os.unlink(spilled)
                raise
            if slot.interrupt is not None:  # Ctrl-C came as it went out: interrupts.settle_send
                settle_send(channel, request_id, went_out, self.check_alive,
                            (lambda: os.unlink(spilled)) if spilled else None)
        try:
            reply = (head, []) if head else channel.receive(request_id, deadline,
                                                             self.check_alive)
            status = reply[0][1]
            result = decode(*reply) if decode is not None and status == 0 else reply
        except NwsUnpicklingException:
            if leased:  # an undecodable value must not come back forever: it stays consumed
                channel.acks.append(request_id)
            raise
        except NwsConnectionDroppedException:
            raise  # nobody left to cancel with: the broker returns what the session held
        except BaseException as exc:
            # Ctrl-C, a timeout, or anything else that interrupts the wait (a worker's task
            # being cancelled): withdraw the request, so a value that raced it goes back.
            withdraw(channel, request_id, self.check_alive)
            if isinstance(exc, NwsTimeoutException) and timeout is not None:
                raise NwsTimeoutException(
                    f"no reply within {timeout:g} s (the request was cancelled)") from None
            raise
        if status >= Status.ERROR:
            if spilled:  # refused: the broker never took the file over
                os.unlink(spilled)
            raise_for_status(status, reply[0])
        if leased and status == 0:
            channel.acks.append(request_id)
        return status, result

    def _exchange(self, channel: Channel, lane, op: int, args: list, frames: list | tuple,
                  request_id: int, timeout: float | None) -> bytes | None | bool:
        """Send a small request through the fast lane and wait a first slice for its reply ->
        the reply's head; None if the request went out and its reply is still to come (the
        Python path waits for it); False if nothing went out. An interrupt that comes once the
        request is out withdraws it, as an interrupted wait does."""
        wait = _POLL_SLICE if timeout is None or timeout > _POLL_SLICE else timeout
        flags, drained = 0, None
        if channel.acks:  # the acknowledgements queued go with it, as on the Python path
            args, flags, drained = channel.with_acks(args, ())
        try:
            head = lane.exchange(op, flags, request_id, args, frames[0] if frames else None,
                                 wait)
            if head is False and drained:  # nothing went out: they go with the next request
                channel.give_back(drained)
            if head is None and lane.unsent:  # the kernel took part of it: the rest first
                went_out = channel.dealer.send_unsent(self.check_alive)
                if slot.interrupt is not None:  # held while the rest went out
                    deliver()
                if not went_out:
                    raise NwsConnectionDroppedException(
                        self.broken or f"the connection to {self.address} broke")
        except BaseException:
            if lane.sent_id == request_id:  # it went out (maybe answered): withdraw it
                withdraw(channel, request_id, self.check_alive)
            elif drained:
                channel.give_back(drained)
            raise
        return head

    def _prepare_large(self, frames: list | tuple) -> tuple[list | tuple, str | None]:
        """A value with big frames: through shared memory if the broker shares this machine's,
        else checked against the broker's message size limit before sending.

        -> (the frames to send, the path of a shared-memory file made for them, or None)."""
        size = sum(memoryview(frame).nbytes for frame in frames[1:])
        if self.shm_pid is not None and size >= shm.THRESHOLD:
            return shm.spill(frames, self.shm_pid, self.session_id.hex()[:16])
        self._check_size(frames, size)
        return frames, None

    def check_size(self, frames: list | tuple) -> None:
        """Refuse before sending what the broker would refuse after receiving it all."""
        self._check_size(frames, sum(memoryview(frame).nbytes for frame in frames[1:]))

    def _check_size(self, frames: list | tuple, size: int) -> None:
        size += len(frames[0])
        limit = self.info["max_message_size"]
        if size > limit:
            raise NwsMessageTooLargeException(
                f"a value of {size / 2**20:.1f} MiB exceeds the broker's --max-message-size "
                f"{limit / 2**20:.1f} MiB; store it in parts or restart the broker with a "
                "larger limit")

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """End the session: the broker purges the non-persistent workspaces it owns."""
        if self.closed:
            return
        self._heartbeat.stop()  # no heartbeat may follow the goodbye
        if not self.broken:
            # A goodbye the broker does not answer within a second is not worth a cancellation
            # round of its own: the broker ends a silent session anyway.
            try:
                channel = self.channel()
                channel.receive(channel.send(Op.BYE, []), time.monotonic() + BYE_TIMEOUT,
                                self.check_alive)
            except NwsException:
                pass
        self._closed = True
        self._detach_finalizer()
        _release(self._heartbeat, self._channels, self._lock, deliveries=self._deliveries)
        with self._lock:
            self._close_stale()
        self.close_own_channel()  # it may be of a session before a reconnect

    def _close_stale(self) -> None:
        """Close the sockets of older sessions whose threads ended (holding ``_lock``)."""
        for channel in [c for c in self._stale if c.closable_from_here()]:
            channel.close()
            self._stale.remove(channel)

    def disown(self) -> None:
        """In a child just forked: this session is the parent's. Nothing here may speak for
        it, not even a goodbye at exit (it would end the parent's session), and the sockets'
        descriptors are closed in this process only (the parent's connections stay up).
        Done for every connection at fork; calling it again does nothing more."""
        self._detach_finalizer()
        self._closed = True
        self.broken = (f"this connection to {self.address} belongs to the process that forked "
                       "this one; open a new one here")
        for channel in self._channels:
            channel.retired = True
            channel.close()

    def _close_sockets(self) -> None:
        with self._lock:
            for channel in self._channels:
                channel.close()
            self._channels.clear()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("broken" if self.broken else "open")
        return f"<Connection {self.address} {self.label if hasattr(self, 'label') else ''} {state}>"


def _release(heartbeat: _Heartbeat, channels: list[Channel], lock: threading.Lock,
             endpoint: str = "", curve: ClientKeys | None = None, session_id: bytes = b"",
             deliveries: list | None = None) -> None:
    """Stop the heartbeat and the delivery thread and close the sockets; with ``endpoint``,
    first tell the broker the session is over (a collected or exiting connection), waiting
    at most half a second for it to take note."""
    for thread in deliveries or ():
        thread.stop()
    if endpoint:
        _say_goodbye(endpoint, curve, session_id, channels)
    heartbeat.stop()
    with lock:
        for channel in list(channels):
            channel.retired = True
            if channel.closable_from_here():
                channel.close()
                channels.remove(channel)


def _say_goodbye(endpoint: str, curve: ClientKeys | None, session_id: bytes,
                 channels: list[Channel]) -> None:
    # Values this process took and used must not go back when its session ends: their
    # acknowledgements go first (a heartbeat carries any channel's).
    acks = [(channel.number, rid) for channel in list(channels) for rid in channel.acks]
    try:
        goodbye = Dealer(endpoint, session_id + CHANNEL.pack(0xFFFF), GOODBYE_WAIT, curve)
    except OSError:
        return  # the broker is gone: it ends the session itself
    try:
        if acks:
            goodbye.send([request_head(Op.HEARTBEAT, 2, [pack_channel_acks(acks)])])
        goodbye.send([request_head(Op.BYE, 1)])
        deliver()  # Ctrl-C at exit: nothing more to say
        # Wait for the answer to the goodbye: closing first could reset the connection
        # before the broker read it.
        deadline = time.monotonic() + GOODBYE_WAIT
        while (left := deadline - time.monotonic()) > 0:
            reply = goodbye.recv(left)
            if reply is None or _unpack_header(reply[0])[3] == 1:
                break
    except DealerError:
        pass
    finally:
        goodbye.close()


def _disown_inherited() -> None:
    for connection in list(_live_connections):
        connection.disown()
    _live_connections.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_inherited)


def close_all() -> None:
    """Close every open connection of this process (called at exit, before brokers stop)."""
    for connection in list(_live_connections):
        connection.close()


class _Heartbeat(threading.Thread):
    """Beats for one connection, flushes idle channels' acknowledgements, watches the broker."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(name=f"workbench-heartbeat-{connection.address}", daemon=True)
        self._connection = weakref.ref(connection)
        self._identity = connection.session_id + CHANNEL.pack(0)
        self._address = connection.address
        self._endpoint = connection.endpoint
        self._curve = connection.curve
        self._liveness = connection.liveness
        self._channels = connection._channels
        self._stopping = threading.Event()
        # Written to on stop(): the thread sleeps a whole interval in one poll, not in slices,
        # so an idle client wakes once a second, not ten times.
        self._wake_read, self._wake_write = os.pipe()
        self._stop_lock = threading.Lock()

    def stop(self) -> None:
        with self._stop_lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            os.write(self._wake_write, b"x")
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=2 * self._liveness.interval + 1)
        if not self.is_alive():  # else the thread still polls them; it closes them on its way out
            self._close_wake()

    def _beat(self, sock: Dealer) -> None:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        interval = self._liveness.interval
        last_answer = time.monotonic()
        beat_ids = itertools.count(1)
        while not self._stopping.is_set():
            acks = []
            for channel in list(self._channels):
                while channel.acks:
                    try:
                        acks.append((channel.number, channel.acks.popleft()))
                    except IndexError:  # its own thread took them for its next request
                        break
            args = [pack_channel_acks(acks)] if acks else []
            sock.send([request_head(Op.HEARTBEAT, next(beat_ids), args)], self._unless_stopping)
            deadline = time.monotonic() + interval
            while (remaining := deadline - time.monotonic()) > 0:
                if not sock.pending():
                    poller.poll(remaining * 1000)
                if self._stopping.is_set():
                    return
                while sock.recv(0) is not None:
                    last_answer = time.monotonic()
            silent = time.monotonic() - last_answer
            if silent > self._liveness.timeout:
                self._broken(f"the broker at {self._address} has not answered for "
                             f"{silent:.1f} s")
            elif not self._broken(None):
                return  # the connection was collected

    def _unless_stopping(self) -> None:
        """A beat that a hung broker's full socket holds up gives way to ``stop``."""
        if self._stopping.is_set():
            raise DealerError("the connection is closing")

    def _broken(self, why: str | None, lost: bool = False) -> bool:
        """Tell the connection why the broker is unreachable (None: it is not), and whether
        the session is ``lost`` for good -> whether the connection still exists."""
        connection = self._connection()
        if connection is None:
            return False
        connection.broken = why
        if lost:
            connection.lost = True
        return True

    def _close_wake(self) -> None:
        with self._stop_lock:
            if self._wake_read is not None:
                os.close(self._wake_read)
                os.close(self._wake_write)
                self._wake_read = self._wake_write = None

    def run(self) -> None:
        try:
            sock = Dealer(self._endpoint, self._identity, self._liveness.timeout, self._curve)
        except OSError as exc:
            self._broken(f"the broker at {self._address} cannot be reached: {exc}")
            sock = None
        try:
            if sock is not None:
                self._beat(sock)
        except DealerError as exc:  # the broker closed the connection: it stopped
            if not self._stopping.is_set() and self._broken(
                    f"the broker at {self._address} went away: {exc}", lost=True):
                _Reconnector(self._connection).start()
        finally:
            if sock is not None:
                sock.close()
            if self._stopping.is_set():  # stop() may have come from this very thread (a
                self._close_wake()       # finalizer run here), which cannot wait for itself


class _Reconnector(threading.Thread):
    """Gives a connection whose broker went away a new session as soon as a broker answers at
    its address again, trying every ``RECONNECT_INTERVAL`` seconds: subscriptions and watches
    come back without waiting for a call. Calls meanwhile try once themselves and fail fast."""

    def __init__(self, connection: weakref.ref[Connection]) -> None:
        super().__init__(name="workbench-reconnect", daemon=True)
        self._connection = connection

    def run(self) -> None:
        while True:
            time.sleep(RECONNECT_INTERVAL)
            connection = self._connection()
            if connection is None or connection.closed or not connection.lost:
                return  # collected, closed, or a call reconnected it
            try:
                connection._reconnect()
                return
            except NwsException:
                continue  # nobody answers yet
            finally:
                del connection  # hold it only while trying: it may be collected meanwhile

