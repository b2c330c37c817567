"""The broker's socket loop: the only broker module that touches sockets, and the edge where
the broker's files are read and removed.

Accept DEALER connections (over TCP, and from this machine over a Unix socket too), read
requests (ZMTP framing in ``zmtp``), hand each to ``BrokerState``, apply the ``Effects`` it
returns (send, log, read and remove shared-memory files), end silent sessions, repeat. One
thread does all of it around one ``epoll`` (``poll`` where there is none): a reply is written
from the thread that computed it, with no hand-off to an I/O thread (see ``zmtp`` for why). Each
pass reads what every ready peer sent, handles those requests in order and then writes every
peer's replies in one system call each.

With a data directory (``durable``), the change records of every call into the state are
handed to its log as the call's effects are applied (``DataDir.record_log``: copied into the
log file's mapping, so they are in the file at once), and when the log says the pass must
commit (``DataDir.needs_commit``: under ``--fsync always``, or records that did not fit in the
mapping) it does so before any reply of the pass is written (first thing in ``_flush``): under
``always`` the replies leave after the ``fdatasync`` that covers them all. A compaction under
way takes a slice of each pass after its replies left (``DataDir.work``).
"""

from __future__ import annotations

import errno
import gc
import ipaddress
import logging
import os
import random
import secrets
import select
import signal
import socket
import stat
import tempfile
import time
from collections import deque
from functools import partial
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Callable

from .. import accel, shm
from ..config import (
    DEFAULT_HOST, DEFAULT_PORT, SHM_RELEASE_GRACE, STOP_LINGER,
)
from .state import BrokerState, Effects, FileFrames, Limits, SharedMemory
from ..zmtp import (
    GREETING, HANDSHAKE, READ_CHUNK, ZmtpError, Inbound, encode, error_command, properties,
)

if TYPE_CHECKING:
    from .durable import DataDir
    from .security import CurveSecurity

log = logging.getLogger("workbench.broker")

_READ = select.POLLIN
_WRITE = select.POLLOUT
_CLOSED = select.POLLHUP | select.POLLERR  # reading then tells what happened
_READABLE = _READ | _CLOSED
_IOV_MAX = 1024  # buffers per sendmsg: the kernel refuses more
_serve_read = accel.serve_read  # None without the compiled parts
#: At most this many (kind, source address) pairs of refused connections are logged; the
#: counters count every one (a scan from many addresses must not fill the log or the memory).
_MOST_LOGGED_REFUSALS = 1000
#: What the broker's CURVE READY says of it.
_READY_METADATA = properties(Socket_Type=b"ROUTER")


class _Stop(BaseException):
    """Raised from the SIGTERM handler to leave the poll at once. Not an Exception: the
    state's guard against its own bugs (``except Exception``) must not take it for one."""


class _LogFailed(Exception):
    """The data directory's log could not be written: the broker stops without sending the
    replies it could not make durable."""


def _remove_stale_sockets(directory: str) -> None:
    """Remove the Unix sockets of brokers that died without cleaning up: nobody accepts on
    them any more."""
    for name in os.listdir(directory):
        if not (name.startswith("broker-") and name.endswith(".sock")):
            continue
        path = os.path.join(directory, name)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)  # a stopped broker's full backlog must not hang this one's start
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            try:
                os.unlink(path)
            except OSError:
                pass
        except OSError:
            pass
        finally:
            probe.close()


def _address_of(source: str) -> str:
    """A peer's IP address as its connections are counted: an IPv4 address reaching an IPv6
    listener (``::ffff:a.b.c.d``) counts as itself."""
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return source
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


class _Poller:
    """``select.epoll`` where the system has it, else ``select.poll``: one interface, timeouts
    in seconds, events as ``POLLIN``/``POLLOUT`` bits (epoll's have the same values)."""

    def __init__(self) -> None:
        if hasattr(select, "epoll"):
            self._poller = select.epoll()
            self.poll = self._poller.poll
            self.close = self._poller.close
        else:
            self._poller = select.poll()
            self.poll = lambda timeout: self._poller.poll(timeout * 1000)
            self.close = lambda: None
        self.register = self._poller.register
        self.modify = self._poller.modify
        self.unregister = self._poller.unregister


class _Peer:
    """One accepted connection: its socket, its parser, and the bytes waiting to go out.

    Under CURVE the parser holds the handshake and, once it is done, the connection's boxes:
    ``seal`` turns a message into the buffers to send (plain ZMTP framing under NULL)."""

    __slots__ = ("sock", "fd", "source", "inbound", "seal", "identity", "out", "queued",
                 "events", "accepted", "plain")

    def __init__(self, sock: socket.socket, source: str, inbound: Inbound, greeting: bytes,
                 now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.source = source  # the client's address, or "local" for the Unix socket
        self.inbound = inbound
        self.seal: Callable[[list], list] = encode
        self.identity: bytes | None = None  # routable once the peer's READY came
        self.out: list = [greeting]  # buffers not yet written, in order
        self.queued = len(greeting)  # their bytes
        # What the poller watches: reading, unless too many replies wait (see _write), and
        # write readiness while the kernel's buffer is full.
        self.events = _READ
        self.accepted = now
        # Whether the next read may take the compiled fast pass (``accel.serve_read``): the
        # connection is plain and routed, and its parser holds nothing of a message.
        self.plain = False

    def queue(self, buffers: list) -> None:
        self.out.extend(buffers)
        self.queued += sum(map(len, buffers))  # encode()'s buffers are bytes or byte views


class BrokerServer:
    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 limits: Limits | None = None, shared_memory: bool = True,
                 local_socket: bool = True, curve: CurveSecurity | None = None,
                 data_dir: DataDir | None = None) -> None:
        self.host = host
        self.durable = data_dir  # None: nothing is written anywhere
        self.failure: str | None = None  # why serving stopped, if it had to
        # With CURVE every TCP connection must complete its handshake; the Unix socket, which
        # only this user can reach, stays plain.
        self.curve = curve
        self._logged_refusals: set[tuple[str, str]] = set()
        self.port = port
        self.limits = limits or Limits()
        self.files = shm.BrokerFiles() if shared_memory and shm.identity() else None
        self.state: BrokerState | None = None  # made by bind(), which knows the local socket
        self._releases: deque[tuple[float, bytes]] = deque()  # (when, shared-memory reference)
        self.address = ""
        self.listener: socket.socket | None = None
        self.local_socket = local_socket
        self.local_listener: socket.socket | None = None  # see _listen_locally
        self.local_path: str | None = None
        self.poller = _Poller()
        self.by_fd: dict[int, _Peer] = {}
        self.routes: dict[bytes, _Peer] = {}  # routing identity -> its connection
        self.peers: set[_Peer] = set()
        self.dirty: dict[_Peer, None] = {}  # peers with output, in the order it was made
        self._replies = bytearray()  # the fast pass's replies not yet written (``_read_plain``)
        # A descriptor held in reserve, freed to shed a connection when none are left (_shed).
        self._spare_fd: int | None = None
        self._warned_fds = False
        # TCP connections by source address, against --max-connections-per-host (_admit).
        self._connections_from: dict[str, int] = {}
        self._capped_hosts: set[str] = set()  # told in the log, until one of theirs closes

    def bind(self) -> str:
        """Listen on the host and port; ``port=0`` picks a free port. Returns the ``tcp://``
        address. Raises OSError (address in use, unknown interface); with a data directory,
        ``DataDirError`` (another broker has it, or a file cannot be read or written) or
        ``LogError`` (its log is not one this version reads)."""
        if self.durable is not None:
            self.durable.lock()  # before the port: a second broker on it must not take one
        host = "127.0.0.1" if self.host == "localhost" else self.host
        family, kind, proto, _, address = socket.getaddrinfo(
            host, self.port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
        try:
            if os.name == "posix":  # restart at once on the same port, as libzmq does
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(512)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self.listener = listener
        self.port = listener.getsockname()[1]
        self.address = f"tcp://{self.host}:{self.port}"
        if self.local_socket:
            self._listen_locally()
        files = self.files
        self.state = BrokerState(
            self.limits, random.Random(), time.monotonic(),
            SharedMemory(files.identity, files.pid) if files is not None else None,
            f"ipc://{self.local_path}" if self.local_path else None,
            {**(self.curve.describe() if self.curve else {"mechanism": "NULL"}),
             "local_socket": self.local_path is not None},
            self.durable.status if self.durable is not None else None)
        if self.durable is not None:
            self.state.clients.durable = True
            self._restore()
        return self.address

    def _restore(self) -> None:
        """Restore the state from the data directory's log, and say what came back."""
        durable = self.durable
        started = time.monotonic()
        replay, report = durable.open(self.state, started)
        if replay.cut_bytes:
            log.warning("data directory %s: the log ended in a damaged record (a crash while "
                        "writing?); cut %d record(s), %d bytes", durable.path,
                        replay.cut_records, replay.cut_bytes)
        log.info("data directory %s (--fsync %s): restored %d workspaces, %d variables, %d "
                 "values (%d bytes) from %d records in %.2f s", durable.path, durable.fsync,
                 report.workspaces, report.variables, report.values, report.bytes,
                 replay.records, time.monotonic() - started)
        if report.purged:
            log.info("data directory: purged the workspaces of sessions that ended with the "
                     "last broker: %s", ", ".join(report.purged))

    def _listen_locally(self) -> None:
        """Also listen on a Unix socket, which clients on this machine use instead of TCP (the
        broker offers it in its hello reply): it skips the loopback TCP stack, and only this
        user can reach it. Its name carries a random token, so a client can never mistake
        another broker's socket for this one's."""
        if not hasattr(socket, "AF_UNIX"):
            return
        directory = os.path.join(tempfile.gettempdir(), f"workbench-{os.getuid()}")
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            info = os.lstat(directory)
            if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
                    or info.st_mode & 0o077):
                log.warning("no local socket: %s is not a directory private to this user",
                            directory)
                return
            _remove_stale_sockets(directory)
            path = os.path.join(directory, f"broker-{self.port}-{secrets.token_hex(6)}.sock")
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(path)
                listener.listen(512)
            except OSError:
                listener.close()
                raise
        except OSError as exc:  # a path too long, a full disk: TCP still serves everyone
            log.warning("no local socket (clients on this machine use TCP): %s", exc)
            return
        listener.setblocking(False)
        self.local_listener, self.local_path = listener, path

    def serve_forever(self, parent_pid: int | None = None,
                      on_ready: Callable[[str], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM (or until ``parent_pid`` exits), then shut down cleanly.

        ``on_ready(address)`` is called once requests can be served and signals are handled."""
        if self.listener is None:
            self.bind()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        tick = min(0.5, self.limits.liveness.interval / 2)
        listeners = {listener.fileno(): listener
                     for listener in (self.listener, self.local_listener) if listener}
        self._spare_fd = os.open(os.devnull, os.O_RDONLY)
        for fd in listeners:
            self.poller.register(fd, _READ)
        if self.files is not None:
            self.files.sweep()  # what brokers that died left behind
        # Requests allocate a few short-lived objects each and almost never cycles: collect
        # rarely, and never re-scan what was loaded at start.
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        poll = self.poller.poll
        durable = self.durable
        try:
            log.info("workbench broker listening on %s", self.address)
            if on_ready is not None:
                on_ready(self.address)
            next_tick = time.monotonic() + tick
            while True:
                timeout = max(0.0, next_tick - time.monotonic())
                if durable is not None and durable.wants_work and durable.busy:
                    timeout = 0.0  # a compaction goes on between passes
                self._serve(poll(timeout), listeners)
                now = time.monotonic()
                if durable is not None and durable.wants_work:
                    self._durable_work(now)
                if now >= next_tick:
                    if now - next_tick > tick:  # this process stalled (stopped, starved):
                        # what clients sent meanwhile counts before their silence is judged
                        self._serve(poll(0), listeners)
                        now = time.monotonic()
                    next_tick = now + tick
                    if durable is not None:
                        durable.set_clock(now)
                    self._release_files(now)
                    self._end_slow_handshakes(now)
                    self._apply(self.state.expire(now))
                    self._flush()
                    if parent_pid is not None and os.getppid() != parent_pid:
                        log.info("parent process %d exited; stopping", parent_pid)
                        break
        except (KeyboardInterrupt, _Stop):
            log.info("signal received; stopping")
        except _LogFailed as exc:
            self._log_failed(exc)
        finally:
            signal.signal(signal.SIGTERM, previous)
            if self.failure is None:
                try:
                    self._apply(self.state.shutdown())
                    self._flush()
                    self._linger()
                except _LogFailed as exc:
                    self._log_failed(exc)
            for peer in list(self.peers):
                self._close(peer)
            self.poller.close()
            self.listener.close()
            if self._spare_fd is not None:
                os.close(self._spare_fd)
            if self.local_listener is not None:
                self.local_listener.close()
                try:
                    os.unlink(self.local_path)
                except OSError:
                    pass
            if self.files is not None:
                self.files.sweep(everything_of_mine=True)
            if durable is not None:
                try:
                    durable.close()
                except OSError as exc:
                    log.critical("data directory %s: the log could not be closed: %s",
                                 durable.path, exc)
            log.info("workbench broker stopped")

    def _serve(self, ready: list, listeners: dict) -> None:
        """One pass: read what every ready peer sent, handle it, write every reply."""
        by_fd = self.by_fd
        # With a log, what a writable peer holds may include replies of this pass: they wait
        # for the pass's commit.
        deferred = self.durable is not None
        writable: list[_Peer] | None = None  # made when needed: rarely
        for fd, events in ready:
            peer = by_fd.get(fd)
            if peer is None:
                if fd in listeners:
                    self._accept(listeners[fd])
                continue  # closed earlier in this pass
            if events & _READABLE:
                if peer.plain:
                    self._read_plain(peer)
                else:
                    self._read(peer)
            if events & _WRITE and peer.out:
                if not deferred:
                    self._write(peer)
                elif writable is None:
                    writable = [peer]
                else:
                    writable.append(peer)
        if writable:
            self._commit()
            for peer in writable:
                if peer.out:  # (closed meanwhile: nothing left)
                    self._write(peer)
        self._flush()

    def _on_sigterm(self, signum, frame) -> None:
        raise _Stop()

    def _log_failed(self, exc: _LogFailed) -> None:
        self.failure = f"the data directory's log could not be written: {exc.__cause__}"
        log.critical("data directory %s: the log could not be written (%s); stopping without "
                     "sending the replies of changes it does not hold", self.durable.path,
                     exc.__cause__)

    # ------------------------------------------------------------------ connections

    def _accept(self, listener: socket.socket) -> None:
        now = time.monotonic()
        while True:
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._shed(listener, exc)
                else:  # a connection reset before it was taken: nothing to do
                    log.debug("accept failed: %s", exc)
                return
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                source = self._admit(sock, address[0])
                if source is None:
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                source = "local"  # the private Unix socket's connections are not counted
            peer = self._new_peer(sock, source, now)
            self.peers.add(peer)
            self.by_fd[sock.fileno()] = peer
            self.poller.register(sock.fileno(), _READ)
            self._write(peer)  # the greeting and READY go first, before the peer's arrive

    def _new_peer(self, sock: socket.socket, source: str, now: float) -> _Peer:
        max_message = self.limits.max_message_size
        if self.curve is None or source == "local":
            return _Peer(sock, source, Inbound(max_message), HANDSHAKE, now)
        from ..zmtp.curve import SERVER_GREETING, CurveInbound, ServerHandshake
        handshake = ServerHandshake(self.curve.keys, _READY_METADATA, self.curve.authorize)
        return _Peer(sock, source, CurveInbound(max_message, handshake), SERVER_GREETING, now)

    def _admit(self, sock: socket.socket, source: str) -> str | None:
        """Count a new TCP connection against its source address -> the address; or, beyond
        --max-connections-per-host, tell it why in ZeroMQ's ERROR command (in place of READY,
        as a NULL mechanism that refuses does), close it and count it -> None."""
        host = _address_of(source)
        cap = self.limits.max_connections_per_host
        held = self._connections_from.get(host, 0)
        if held < cap:
            self._connections_from[host] = held + 1
            return host
        self._count("over_max_connections_per_host")
        if host not in self._capped_hosts:
            self._capped_hosts.add(host)
            log.warning("refusing new connections from %s: it has %d open, the limit "
                        "(--max-connections-per-host)", host, cap)
        reason = (f"too many connections from {host}: the broker's limit is {cap} "
                  "(--max-connections-per-host); close some, or start the broker with a "
                  "larger --max-connections-per-host")
        greeting = GREETING
        if self.curve is not None:
            from ..zmtp.curve import SERVER_GREETING as greeting
        try:
            sock.send(greeting + error_command(reason))
            # Read what the peer sent already: closing with it unread would reset the
            # connection, and a reset can discard the ERROR before the peer reads it.
            sock.recv(READ_CHUNK)
        except OSError:
            pass
        sock.close()
        return None

    def _left(self, peer: _Peer) -> None:
        """A counted TCP connection closed: its address may have one more."""
        if peer.source == "local":
            return
        host = peer.source
        held = self._connections_from[host] - 1
        if held:
            self._connections_from[host] = held
        else:
            del self._connections_from[host]
        self._capped_hosts.discard(host)

    def _shed(self, listener: socket.socket, exc: OSError) -> None:
        """Out of file descriptors: the pending connection would keep the listener readable
        and the loop spinning. Free the spare descriptor kept for this, take the connection
        and close it at once (its client sees the broker refuse), then keep a spare again."""
        self._count("refused_connections")
        if not self._warned_fds:
            self._warned_fds = True
            log.warning("out of file descriptors (%s): refusing new connections until clients "
                        "leave; raise the limit (ulimit -n) for more clients", exc)
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
        try:
            sock, _ = listener.accept()
            sock.close()
        except OSError:
            pass
        try:
            self._spare_fd = os.open(os.devnull, os.O_RDONLY)
        except OSError:
            pass

    def _count(self, name: str) -> None:
        self.state.count(name)

    def _close(self, peer: _Peer) -> None:
        """Drop a connection. Values in replies it never got are the sender's session's leases:
        they go back when that session ends."""
        if peer not in self.peers:
            return
        self.peers.discard(peer)
        self.dirty.pop(peer, None)
        self._left(peer)
        if peer.identity is not None and self.routes.get(peer.identity) is peer:
            del self.routes[peer.identity]
        fd = peer.sock.fileno()
        del self.by_fd[fd]
        self.poller.unregister(fd)
        peer.sock.close()
        peer.out = []

    def _refuse(self, peer: _Peer, error: ZmtpError) -> None:
        """Close a connection that broke the protocol or was refused: counted under the
        error's counter, logged once for each kind of refusal and source address."""
        counter = error.counter or ("handshake_failures" if error.handshake else "malformed")
        self._count(counter)
        logged = self._logged_refusals
        if (counter, peer.source) not in logged and len(logged) < _MOST_LOGGED_REFUSALS:
            logged.add((counter, peer.source))
            log.warning("refused a connection from %s: %s (counted as %s; further ones of "
                        "this kind from there are only counted)", peer.source, error, counter)
        try:  # tell a ZeroMQ peer why, if it can hear it; never wait for it
            peer.sock.send(error_command(error.status or str(error)))
        except OSError:
            pass
        self._close(peer)

    def _end_slow_handshakes(self, now: float) -> None:
        timeout = self.limits.handshake_timeout
        for peer in [p for p in self.peers if p.identity is None
                     and now - p.accepted > timeout]:
            self._refuse(peer, ZmtpError(f"no handshake within {timeout:g} s", handshake=True,
                                         counter="handshake_timeouts"))

    # ------------------------------------------------------------------ reading

    def _read(self, peer: _Peer) -> None:
        inbound = peer.inbound
        try:
            if not inbound.read_from(peer.sock, READ_CHUNK):
                self._close(peer)
                return
        except (BlockingIOError, InterruptedError):
            return
        except ZmtpError as exc:
            self._refuse(peer, exc)
            return
        except OSError:  # reset by the peer
            self._close(peer)
            return
        if peer.identity is None and inbound.identity is not None:
            if not self._route(peer, inbound.identity):
                return
        self._take_parsed(peer)

    def _take_parsed(self, peer: _Peer) -> None:
        """Answer the commands and handle the messages the peer's parser completed."""
        inbound = peer.inbound
        if inbound.replies:
            peer.queue(inbound.replies)
            inbound.replies.clear()
            self.dirty[peer] = None
        messages = inbound.messages
        if messages:
            inbound.messages = []
            self._handle(peer.identity, messages)
        peer.plain = (_serve_read is not None and peer.identity is not None
                      and self.by_fd.get(peer.fd) is peer and inbound.between_messages())

    def _read_plain(self, peer: _Peer) -> None:
        """``_read``, with the loop's part done by the compiled fast pass (``accel``): the
        small requests of the read go to the state and their small replies out, in one call;
        what it leaves (effects to apply, bytes to parse) is done here as ``_read`` does it."""
        replies = self._replies
        try:
            effects, rest = _serve_read(peer.fd, peer.identity, self.state.handle,
                                        self.limits.max_message_size, self.durable is not None,
                                        replies, not peer.out and self.durable is None)
        finally:
            if replies:  # not written yet (all of them, with a log: they wait for its commit)
                peer.out.append(bytes(replies))
                peer.queued += len(replies)
                replies.clear()
                self.dirty[peer] = None
        if effects is not None:
            self._apply(effects)
        if rest:
            try:
                peer.inbound.feed(rest)
            except ZmtpError as exc:
                self._refuse(peer, exc)
                return
            self._take_parsed(peer)
        elif rest is None:  # the end of the stream, or reset by the peer
            self._close(peer)

    def _route(self, peer: _Peer, identity: bytes) -> bool:
        """The peer is ready: replies to ``identity`` go to it -> True. As with libzmq's
        ROUTER, an identity another connection holds stays there: the newcomer is closed."""
        if identity in self.routes:
            self._refuse(peer, ZmtpError("routing identity already connected", handshake=True))
            return False
        peer.identity = identity
        self.routes[identity] = peer
        if peer.inbound.boxes is not None:  # CURVE: replies go sealed
            peer.seal = peer.inbound.seal
        return True

    def _handle(self, identity: bytes, messages: list) -> None:
        """Hand each message of a peer (its frame lists are this call's to change) to the
        state, and apply what it decided."""
        state = self.state
        files = self.files
        limit = self.limits.max_message_size
        apply = self._apply
        for frames, size in messages:
            head = frames[0] if frames else b""
            if type(head) is not bytes:  # a large head frame, read into a buffer of its own
                head = bytes(head)
            if size > limit:
                apply(state.reject_oversized(identity, head, size))
                continue
            del frames[:1]  # the value frames after the head, if any
            apply(state.handle(identity, head, frames, _monotonic(),
                               files.inspect(frames) if frames and files is not None else None))

    # ------------------------------------------------------------------ effects

    def _apply(self, effects: Effects) -> None:
        """Carry out what the state decided (see ``Effects``), then the calls into the state
        that this calls for: a message whose socket is gone, a file that cannot be read, a
        comparison. Each such call reuses the effects, so it waits until these are applied."""
        routes = self.routes
        dirty = self.dirty
        later: list[Callable[[], Effects]] | None = None  # made when needed: rarely
        durable = self.durable
        while True:
            if durable is not None and effects.log:  # before a file it reads is released
                durable.record_log(effects.log)
            rare = effects.rare  # anything besides messages (and changes)
            if rare and effects.reads:
                later = self._read_files(effects, later or [])
            for identity, frames in effects.messages:
                peer = routes.get(identity)
                if peer is None:  # its socket is gone: a value it was handed goes back
                    later = later or []
                    later.append(partial(self.state.undeliverable, identity, frames[0]))
                    continue
                buffers = peer.seal(frames)  # ``peer.queue``, inlined: this runs every request
                peer.out += buffers
                peer.queued += sum(map(len, buffers))
                dirty[peer] = None
            if rare:
                for line in effects.notices:
                    log.info("%s", line)
                if effects.released:
                    self._release(effects.released)
                for files in effects.swept:
                    self.files.remove_unheld(files.prefix, files.held)
                comparison = effects.comparison
                if comparison is not None:
                    later = later or []
                    later.append(partial(self.state.compared, self.files.holds(
                        comparison.reference, comparison.frames)))
            if not later:
                return
            effects = later.pop(0)()

    def _read_files(self, effects: Effects,
                    later: list[Callable[[], Effects]]) -> list[Callable[[], Effects]]:
        """Put the frames of the shared-memory files that messages carry in their place. A
        message whose file cannot be read is not sent, and the state hears why."""
        messages = effects.messages
        unsent = []
        for index in effects.reads:
            identity, frames = messages[index]
            read: list = []
            try:
                for frame in frames:
                    if type(frame) is FileFrames:
                        reference = frame.reference
                        read.extend(shm.attach(reference))
                    else:
                        read.append(frame)
            except (OSError, ValueError) as exc:  # removed behind the broker's back
                unsent.append(index)
                later.append(partial(self.state.file_unreadable, identity, frames[0],
                                     reference, str(exc)))
                continue
            messages[index] = (identity, read)
        if unsent:
            messages[:] = [m for i, m in enumerate(messages) if i not in unsent]
        return later

    def _release(self, released: list) -> None:
        """Remove the files of values that are gone; one a finder was sent waits a while, since
        that finder may not have mapped it yet (fetchers map before they acknowledge)."""
        now = time.monotonic()
        for reference, found in released:
            if found:
                self._releases.append((now, reference))
            else:
                self.files.release(reference)

    # ------------------------------------------------------------------ writing

    def _commit(self) -> None:
        """Commit the log if it must be (``DataDir.needs_commit``): the pass's changes are
        all in the file (under ``always``, on disk). ``_flush`` does the same inline."""
        durable = self.durable
        if durable.needs_commit:
            try:
                durable.commit()
            except OSError as exc:
                raise _LogFailed() from exc

    def _durable_work(self, now: float) -> None:
        """After a pass: start a compaction, or take a slice of one (see ``DataDir.work``)."""
        try:
            self.durable.work(now)
        except OSError as exc:
            raise _LogFailed() from exc

    def _flush(self) -> None:
        """Write every peer's output (committing the log first: see the module's docstring)."""
        durable = self.durable
        if durable is not None and durable.needs_commit:
            try:  # ``_commit``, inlined: this runs every pass
                durable.commit()
            except OSError as exc:
                raise _LogFailed() from exc
        dirty = self.dirty
        while dirty:
            peers = list(dirty)
            dirty.clear()
            for peer in peers:
                if peer.events & _WRITE:  # the kernel's buffer is still full
                    self._watch(peer)
                else:
                    self._write(peer)

    def _write(self, peer: _Peer) -> None:
        """Write as much of the peer's output as the kernel takes; wait for write readiness
        for the rest. A peer with more than ``max_pending_output`` bytes of replies waiting has
        its requests left unread (in the kernel, then in its own socket: the client's sends
        wait) until it has taken half of them; whatever it asked is answered, in order."""
        out = peer.out
        try:
            while out:
                if len(out) == 1:  # the usual case: one reply, sent whole
                    batch = out
                    sent = peer.sock.send(out[0])
                    if sent == len(out[0]):
                        out.clear()
                        break
                else:
                    batch = out[:_IOV_MAX]
                    sent = peer.sock.sendmsg(batch)
                peer.queued -= sent
                for index, buffer in enumerate(batch):
                    size = len(buffer)
                    if sent < size:
                        del out[:index]
                        if sent:
                            out[0] = memoryview(buffer).cast("B")[sent:]
                        break
                    sent -= size
                else:
                    del out[:len(batch)]
                    continue
                break  # the kernel's buffer is full
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:  # the peer went away
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN,
                                 errno.ESHUTDOWN, errno.ECONNABORTED):
                log.warning("writing to a client failed: %s", exc)
            self._close(peer)
            return
        if not out:
            peer.queued = 0
            if peer.events == _READ:  # what ``_watch`` would leave as it is
                return
        self._watch(peer)

    def _watch(self, peer: _Peer) -> None:
        """Have the poller watch what the peer's output allows (see ``_write``)."""
        if not peer.out:
            events = _READ
        else:
            limit = self.limits.max_pending_output
            reading = peer.events & _READ
            if reading and peer.queued > limit:
                self._count("paused_readers")
                reading = 0
            elif not reading and peer.queued <= limit // 2:
                reading = _READ
            events = reading | _WRITE
        if events != peer.events:
            peer.events = events
            self.poller.modify(peer.sock.fileno(), events)

    def _linger(self) -> None:
        """On the way out: keep writing pending replies for a moment, so that clients blocked
        in a call learn that the broker stops instead of waiting for their heartbeat."""
        deadline = time.monotonic() + STOP_LINGER
        for peer in list(self.peers):  # a stop between queueing and writing left it unwatched
            if peer.out:
                self._write(peer)
        while any(peer.out for peer in self.peers) and time.monotonic() < deadline:
            for fd, events in self.poller.poll(0.05):
                peer = self.by_fd.get(fd)
                if peer is not None and events & _WRITE and peer.out:
                    self._write(peer)

    def _release_files(self, now: float) -> None:
        """Remove shared-memory files of values gone for a while: a finder that was sent a
        reference just before the value went must still be able to map it."""
        releases = self._releases
        while releases and releases[0][0] < now - SHM_RELEASE_GRACE:
            self.files.release(releases.popleft()[1])
