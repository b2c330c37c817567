"""A ZeroMQ DEALER socket driven by the thread that uses it.

libzmq runs every socket's I/O in a thread of its own, so each request a client sends wakes that
thread and each reply wakes the caller from it: two thread hand-offs per request, which on a
small machine cost more than the request itself (``docs/benchmarks.md``). Here the calling
thread reads and writes the stream itself, with ZeroMQ's framing from ``workbench.zmtp``; to
the broker, and on the wire, it is a DEALER like libzmq's.

Interrupts (see ``interrupts``): a system call and the accounting of what it moved are one
step, and no message is cut in half, so the stream stays in step for the cancellation that
follows an interrupt. ``send`` says whether the message went out and holds the interrupt for its
caller; waits let it through.
"""

from __future__ import annotations

import select
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Callable

from .. import accel
from ..zmtp import GREETING, READ_CHUNK, Inbound, ZmtpError, command, encode, properties
from .interrupts import DEFERRED, deliver, held, hold

if TYPE_CHECKING:
    from ..zmtp.curve import ClientKeys
_IOV_MAX = 1024  # buffers per sendmsg
_JOIN_BELOW = 1 << 16  # a message smaller than this goes out as one joined buffer
_UNLIMITED = 1 << 62  # the broker's replies are not size-checked here: it checked the requests


class DealerError(ConnectionError):
    """The connection to the broker broke: closed, reset, or not speaking ZeroMQ."""


_CLOSED = "the broker closed the connection (it stopped, or was killed)"


def _broken(exc: OSError) -> str:
    if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
        return _CLOSED
    return f"the connection to the broker broke: {exc}"


def connect_stream(endpoint: str, timeout: float) -> socket.socket:
    """A connected stream socket to ``tcp://host:port`` or ``ipc://path``; OSError if nothing
    accepts there within ``timeout`` seconds."""
    if endpoint.startswith("ipc://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(endpoint[len("ipc://"):])
        except BaseException:
            sock.close()
            raise
    elif endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        raise ValueError(f"unsupported endpoint {endpoint!r}: expected tcp://host:port")
    sock.setblocking(False)
    return sock


def _refusal(error: ZmtpError) -> str:
    """What a client is told when the broker's side of the protocol is not what it expects."""
    if error.counter == "refused_by_peer":
        return str(error).replace("the peer", "the broker", 1)
    if error.counter == "refused_mechanism":
        if error.status == b"CURVE":
            return ("the broker requires CURVE security (it listens off loopback, or with "
                    "--curve): connect with its connection file, not its address")
        return (f"the broker does not speak CURVE ({error}): its connection file is stale, "
                "or this is another broker")
    if error.handshake and error.counter:
        return f"the CURVE handshake failed: {error}"
    return f"the broker broke ZeroMQ's protocol: {error}"


class Dealer:
    """One DEALER connection with routing identity ``identity``, used by one thread at a time.

    ``send(frames)`` sends a message and says whether it went out; ``recv(timeout)`` returns
    the next message's frames (``bytes``, or ``bytearray`` for large ones) or None when
    ``timeout`` seconds pass. Both raise DealerError once the connection is broken; it is then
    closed.

    With ``curve`` (the broker's public key and this client's key pair) the connection speaks
    CURVE: the constructor completes the handshake (two round trips, within
    ``connect_timeout``) and every frame travels sealed."""

    def __init__(self, endpoint: str, identity: bytes, connect_timeout: float,
                 curve: ClientKeys | None = None) -> None:
        self.endpoint = endpoint
        self._sock = connect_stream(endpoint, connect_timeout)
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN)
        self._messages: deque[list] = deque()
        self._outbox: deque[list] = deque()  # messages ``send_nowait`` queued, not yet out
        self._cut = False  # part of a message is sent, the rest not yet
        self.closed = False
        #: The compiled fast lane (``accel.Lane``) of a plain connection, while it is open: for
        #: sending at any time, for a request and its reply when ``fast_lane`` says so.
        self.lane = None
        metadata = properties(Socket_Type=b"DEALER", Identity=identity)
        if curve is None:
            self._inbound = Inbound(_UNLIMITED)
            self._seal = encode
            # The greeting and READY go out at once; the broker's arrive as the first bytes read.
            self._send_buffers([GREETING + command(b"READY", metadata)], None)
            if accel.Lane is not None:
                self.lane = accel.Lane(self._sock.fileno())
        else:
            self._handshake(curve, metadata, connect_timeout)
        if held():  # interrupted while connecting: the caller never gets this socket
            self.close()
            deliver()

    def _handshake(self, keys: ClientKeys, metadata: bytes, timeout: float) -> None:
        """CURVE's greeting, HELLO, WELCOME, INITIATE and READY, before anything is sent."""
        from ..zmtp.curve import CLIENT_GREETING, ClientHandshake, CurveInbound
        handshake = ClientHandshake(keys, metadata)
        inbound = self._inbound = CurveInbound(_UNLIMITED, handshake)
        self._send_buffers([CLIENT_GREETING + handshake.hello()], None)
        deadline = time.monotonic() + timeout
        try:
            while inbound.boxes is None:
                if not self._poll.poll(max(0.0, deadline - time.monotonic()) * 1000):
                    raise DealerError(f"no CURVE handshake with the broker within {timeout:g} s")
                try:
                    self._read()
                except DealerError as exc:
                    text = str(exc)
                    if "CURVE" in text:
                        raise
                    hint = "" if "refused" in text else (  # a libzmq broker hangs up mutely
                        "; is the server key the broker's current one?")
                    raise DealerError(f"the CURVE handshake failed: {text}{hint}") from None
                if inbound.replies:
                    self._send_buffers(inbound.replies, None)
                    inbound.replies.clear()
        except BaseException:
            self.close()
            raise
        self._seal = inbound.seal

    def fileno(self) -> int:
        return self._sock.fileno()

    def pending(self) -> bool:
        """Whether a received message is waiting to be taken by ``recv``."""
        return bool(self._messages)

    def fast_lane(self):
        """The compiled fast lane (``accel.Lane``: a small request and its reply in one call),
        when it may be used now: the connection is open and plain, and nothing received is
        waiting or half parsed. None otherwise; the lane keeps what it read but did not take
        (``unparsed``) and what it sent in part (``unsent``) for the methods here, which
        deal with both before anything else."""
        lane = self.lane
        if lane is None or self._messages or not self._inbound.between_messages():
            return None
        return lane

    def send_unsent(self, alive: Callable[[], None] | None) -> bool:
        """Send the rest of a message the fast lane sent in part (the kernel took only the first
        bytes), before anything else -> whether it went out (not if the connection broke or
        ``alive`` gave up: it is then closed). Interrupts meanwhile are held."""
        unsent = self.lane.unsent
        with DEFERRED:
            buffers = [bytes(unsent)]
            unsent.clear()
            self._cut = True
        return self._finish(self._check_open(), buffers, alive)

    def _take_unparsed(self) -> None:
        """Parse what the fast lane read but did not take: it came before anything the
        kernel holds now."""
        unparsed = self.lane.unparsed
        with DEFERRED:
            data = bytes(unparsed)
            unparsed.clear()
            self._parse(data)

    # ------------------------------------------------------------------ sending

    def send(self, frames: list | tuple, alive: Callable[[], None] | None = None) -> bool:
        """Send one message -> whether it went out.

        While the kernel takes no more (a broker that stopped reading), wait in slices of
        ``_SLICE`` seconds calling ``alive()``, which raises to give up (closing the connection
        if part of the message is out). An interrupt (Ctrl-C) cuts no message: one that comes
        before the first byte is out drops the message (False), one that comes later waits
        until the last is out (True). Either way it is not raised here but held for the caller
        (``interrupts.hold``), which acts on the answer and then ``interrupts.deliver``s it."""
        lane = self.lane
        if lane is not None and lane.unsent and not self.send_unsent(alive):
            return False
        buffers = self._seal(frames)
        if len(buffers) > 1:
            if sum(map(len, buffers)) >= _JOIN_BELOW:
                return self._send_buffers(buffers, alive)
            buffers = [b"".join(buffers)]
        if self.closed:
            self._check_open()  # raises
        # The usual request: small, and taken whole by the kernel at once, in one call and
        # no more. Anything else (part or none of it taken, an error) goes the general way.
        data = buffers[0]
        sent = 0
        try:
            with DEFERRED:
                sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return self._send_buffers(buffers, alive)  # which finds the error again, and says it
        except BaseException as exc:  # an interrupt, before the call or during it
            hold(exc)
            if sent == len(data) or not sent:
                self._cut = False
                return bool(sent)
            buffers[0] = memoryview(data)[sent:]
            self._cut = True
            return self._finish(self._sock, buffers, alive)
        if sent == len(data):
            self._cut = False
            return True
        if sent:
            buffers[0] = memoryview(data)[sent:]
            self._cut = True
        return self._send_buffers(buffers, alive)

    def _send_buffers(self, buffers: list, alive: Callable[[], None] | None) -> bool:
        sock = self._check_open()
        while True:
            try:
                with DEFERRED:  # an interrupt lands between system calls, never inside the
                    if self._send_some(sock, buffers):  # bookkeeping of what went out
                        return True
                writable = self._poll_out(_SLICE)
            except DealerError:
                raise  # closed already, and says why
            except OSError as exc:
                reason = self._last_words()
                self.close()
                raise DealerError(reason or _broken(exc)) from None
            except BaseException as exc:  # an interrupt
                hold(exc)
                # (one that came during the call that sent the last byte: the message is out)
                return not buffers or (self._cut and self._finish(sock, buffers, alive))
            if not writable and alive is not None:
                try:
                    alive()
                except BaseException:
                    if self._cut:  # the rest will never follow: the stream is out of step
                        self.close()
                    raise

    def _finish(self, sock: socket.socket, buffers: list,
                alive: Callable[[], None] | None) -> bool:
        """Send the rest of a message whose first bytes are out, holding the interrupts that
        come meanwhile -> whether it went out (not if the connection broke or ``alive`` gave
        up: it is then closed)."""
        while True:
            try:
                while True:
                    with DEFERRED:
                        if self._send_some(sock, buffers):
                            return True
                    if not self._poll_out(_SLICE) and alive is not None:
                        alive()
            except KeyboardInterrupt as exc:
                hold(exc)  # the first one is kept; the message goes on
            except BaseException:
                self.close()
                return False

    def _send_some(self, sock: socket.socket, buffers: list) -> bool:
        """Send what the kernel takes now -> whether the whole message is out. ``_cut`` tells
        whether part of it is."""
        try:
            if len(buffers) == 1:
                sent = sock.send(buffers[0])
            else:
                sent = sock.sendmsg(buffers[:_IOV_MAX])
        except (BlockingIOError, InterruptedError):
            return False
        while sent:
            size = memoryview(buffers[0]).nbytes
            if sent < size:
                buffers[0] = memoryview(buffers[0]).cast("B")[sent:]
                break
            sent -= size
            del buffers[0]
        self._cut = bool(buffers)
        return not buffers

    def _last_words(self) -> str | None:
        """What a broker that closed the connection said first (an ERROR naming the limit or
        the refusal), if it is still there to read; None if not."""
        try:
            while self._inbound.read_from(self._sock, READ_CHUNK):
                pass
        except ZmtpError as exc:
            return _refusal(exc)
        except OSError:
            pass
        return None

    def _poll_out(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the kernel to take more -> whether it will. Replies that
        arrive meanwhile are read and queued for ``recv``: the broker stops reading a
        connection whose replies pile up unread (``--max-pending-output``), so a send that
        waited without reading could wait for ever."""
        poller = select.poll()
        poller.register(self._sock, select.POLLOUT | select.POLLIN)
        deadline = time.monotonic() + seconds
        while True:
            ready = poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
            if not ready:
                return False
            events = ready[0][1]
            if events & select.POLLIN:
                with DEFERRED:
                    self._read()
            if events & ~select.POLLIN:  # writable, or closed: the send finds out which
                return True

    # ------------------------------------------------------------------ receiving

    def recv(self, timeout: float | None) -> list | None:
        """The next message's frames, waiting up to ``timeout`` seconds (None: for ever)."""
        messages = self._messages
        if not messages and self.lane is not None and self.lane.unparsed:
            self._take_unparsed()
        if messages:
            return messages.popleft()
        if self.closed:
            self._check_open()  # raises
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = self._poll.poll
        while True:
            if deadline is None:
                ready = poll()
            else:
                ready = poll(max(0.0, deadline - time.monotonic()) * 1000)
            if ready:
                with DEFERRED:
                    self._read()
                if messages:
                    return messages.popleft()
            elif deadline is not None and time.monotonic() >= deadline:
                return None

    def _read(self) -> None:
        """Move what the kernel holds into the parser; complete messages into the queue."""
        inbound = self._inbound
        lane = self.lane
        if lane is not None:
            if lane.unparsed:
                self._take_unparsed()
            if inbound.between_messages():  # the compiled lane reads and splits it
                self._read_through(lane)
                return
        try:
            if not inbound.read_from(self._sock, READ_CHUNK):
                raise DealerError(_CLOSED)
        except (BlockingIOError, InterruptedError):
            return
        except DealerError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise DealerError(_broken(exc)) from None
        except ZmtpError as exc:
            self.close()
            raise DealerError(_refusal(exc)) from None
        self._queue_parsed()

    def _read_through(self, lane) -> None:
        """``_read`` by the compiled lane: the complete messages read go to the queue, the
        bytes after them to the parser."""
        try:
            messages = lane.receive()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close()
            raise DealerError(_broken(exc)) from None
        if messages is None:
            self.close()
            raise DealerError(_CLOSED)
        self._messages.extend(messages)
        if lane.unparsed:
            self._take_unparsed()

    def _parse(self, data: bytes) -> None:
        """Parse bytes read elsewhere (the fast lane's), as ``_read`` parses the kernel's."""
        try:
            self._inbound.feed(data)
        except ZmtpError as exc:
            self.close()
            raise DealerError(_refusal(exc)) from None
        self._queue_parsed()

    def _queue_parsed(self) -> None:
        inbound = self._inbound
        if inbound.messages:
            for frames, _ in inbound.messages:
                self._messages.append(frames)
            inbound.messages.clear()

    # ------------------------------------------------------------------ for an event loop

    # A socket an event loop watches is never waited on: the loop says when it is readable or
    # writable, and these read or write what the kernel has or takes at that moment.

    def send_nowait(self, frames: list | tuple) -> bool:
        """Send one message without waiting -> whether it, and every message queued before
        it, is out. What the kernel does not take now stays queued, in order: call ``flush``
        whenever the socket is writable until it says True. Not to be mixed with ``send`` on
        one socket. DealerError (the connection is then closed) if the connection broke."""
        lane = self.lane
        if lane is not None and lane.unsent:  # (a lane is not used on a loop-driven socket)
            self._outbox.append([bytes(lane.unsent)])
            lane.unsent.clear()
        buffers = self._seal(frames)
        if len(buffers) > 1 and sum(map(len, buffers)) < _JOIN_BELOW:
            buffers = [b"".join(buffers)]
        self._outbox.append(buffers)
        return self.flush()

    def flush(self) -> bool:
        """Send what the kernel takes now of the messages ``send_nowait`` queued -> whether
        all of them are out."""
        sock = self._check_open()
        outbox = self._outbox
        try:
            while outbox:
                with DEFERRED:
                    if not self._send_some(sock, outbox[0]):
                        return False
                    outbox.popleft()
        except OSError as exc:
            reason = self._last_words()
            self.close()
            raise DealerError(reason or _broken(exc)) from None
        return True

    def receive_ready(self) -> list[list]:
        """Read once what the kernel holds, without waiting -> the messages complete so far
        (maybe none: a message may arrive in parts). For a socket an event loop saw readable.
        DealerError (the connection is then closed) if the connection broke."""
        messages = self._messages  # (``_read`` takes what a fast lane left first)
        if not messages:
            self._check_open()
            with DEFERRED:
                self._read()
        taken = list(messages)
        messages.clear()
        return taken

    # ------------------------------------------------------------------ lifetime

    def _check_open(self) -> socket.socket:
        if self.closed:
            raise DealerError("the connection to the broker is closed")
        return self._sock

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.lane = None  # its descriptor is about to be another file's
            self._sock.close()


#: Longest wait for the kernel to take more of a message before ``alive()`` is asked.
_SLICE = 0.25
