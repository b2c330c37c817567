"""The broker's socket loop: the only broker module that touches ZeroMQ.

Receive on a ROUTER, hand each request to ``BrokerState``, send what it returns, end silent
sessions, repeat. A plain blocking loop: asyncio would cost a third of the round trips, and even
a ``zmq.Poller`` call per request costs more than the request itself.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import random
import signal
import socket
import time
from collections import deque
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import shm
from ..config import SHM_RELEASE_GRACE
from .state import BrokerState, Limits

log = logging.getLogger("workbench.broker")

_SNDMORE = int(zmq.SNDMORE)
_HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                       | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
#: Slack over --max-message-size for one frame before libzmq drops the connection outright;
#: below it the broker reads the request and answers with a clear error instead.
_FRAME_SLACK = 1 << 20


class _Stop(Exception):
    """Raised from the SIGTERM handler to leave the poll at once."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the broker reachable from this machine only."""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


class BrokerServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 8765,
                 limits: Limits | None = None, shared_memory: bool = True) -> None:
        self.host = host
        self.port = port
        self.limits = limits or Limits()
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a vanished peer raises
        self.router.setsockopt(zmq.SNDHWM, 0)  # never drop a reply: each answers a request
        self.router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_size + _FRAME_SLACK)
        self.router.linger = 1000
        self.files = shm.BrokerFiles() if shared_memory and shm.identity() else None
        self.state = BrokerState(self.limits, random.Random(), time.monotonic(), self.files)
        self._releases: deque[tuple[float, bytes]] = deque()  # (when, shared-memory reference)
        self.address = ""

    def bind(self) -> str:
        """Bind the ROUTER; ``port=0`` picks a free port. Returns the ``tcp://`` address."""
        host = "127.0.0.1" if self.host == "localhost" else self.host
        if self.port == 0:
            self.router.bind(f"tcp://{host}:*")
        else:
            self.router.bind(f"tcp://{host}:{self.port}")
        endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.port = int(endpoint.rsplit(":", 1)[1])
        self.address = f"tcp://{self.host}:{self.port}"
        return self.address

    def serve_forever(self, parent_pid: int | None = None,
                      on_ready: Callable[[str], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM (or until ``parent_pid`` exits), then shut down cleanly.

        ``on_ready(address)`` is called once requests can be served and signals are handled."""
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        monitor = self.router.get_monitor_socket(_HANDSHAKE_FAILURES)
        tick = min(0.5, self.limits.liveness.interval / 2)
        # A blocking receive that wakes at least once a tick: cheaper than a Poller per request.
        self.router.setsockopt(zmq.RCVTIMEO, max(1, int(tick * 1000)))
        if self.files is not None:
            self.files.sweep()  # what brokers that died left behind
        # Requests allocate a few short-lived objects each and almost never cycles: collect
        # rarely, and never re-scan what was loaded at start.
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        try:
            log.info("workbench broker listening on %s", self.address)
            if on_ready is not None:
                on_ready(self.address)
            next_tick = time.monotonic() + tick
            while True:
                self._serve_one()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + tick
                    self._count_handshake_failures(monitor)
                    self._release_files(now)
                    self.state.expire(now)
                    self._flush()
                    if parent_pid is not None and os.getppid() != parent_pid:
                        log.info("parent process %d exited; stopping", parent_pid)
                        break
        except (KeyboardInterrupt, _Stop):
            log.info("signal received; stopping")
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.state.shutdown()
            self._flush()
            self.router.disable_monitor()
            monitor.close(linger=0)
            self.router.close()
            self.context.term()
            if self.files is not None:
                self.files.sweep(everything_of_mine=True)
            log.info("workbench broker stopped")

    def _on_sigterm(self, signum, frame) -> None:
        raise _Stop()

    def _serve_one(self) -> None:
        """Receive one request (waiting up to a tick), let the state handle it, send replies."""
        recv = self.router.recv
        # Frames, not bytes: a Frame knows whether more follow, and asking the socket instead
        # (getsockopt) costs more than the copy it saves.
        try:
            frame = recv(copy=False)
        except zmq.Again:
            return
        peer = frame.bytes
        head = b""
        frames = []
        size = 0
        if frame.more:
            frame = recv(copy=False)
            head = frame.bytes
            size = len(head)
            while frame.more:
                frame = recv(copy=False)  # values stay in ZeroMQ's memory, never copied
                size += len(frame)
                frames.append(frame)
        state = self.state
        if size > self.limits.max_message_size:
            state.reject_oversized(peer, head, size)
        else:
            state.handle(peer, head, frames, time.monotonic())
        outbox = state.outbox
        if len(outbox) == 1 and not state.notices and not state.released:  # the usual case
            self._send(*outbox.pop())
            if not outbox:
                return
        self._flush()

    def _flush(self) -> None:
        state = self.state
        for line in state.notices:
            log.info("%s", line)
        state.notices.clear()
        if state.released:
            now = time.monotonic()
            for reference, found in state.released:
                if found:  # a finder may not have mapped it yet: give it time
                    self._releases.append((now, reference))
                else:  # fetchers map before they acknowledge: nobody can still need it
                    self.files.release(reference)
            state.released.clear()
        while state.outbox:
            outbox, state.outbox = state.outbox, []
            for peer, frames in outbox:
                self._send(peer, frames)

    def _send(self, peer: bytes, frames: list) -> None:
        send = self.router.send
        try:
            send(peer, _SNDMORE)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            # The peer's socket is gone: a value it was handed goes back.
            self.state.undeliverable(peer, frames[0])
            return
        last = len(frames) - 1
        if not last:
            send(frames[0])
            return
        send(frames[0], _SNDMORE)
        for index in range(1, last + 1):
            send(frames[index], _SNDMORE if index < last else 0, copy=False)

    def _release_files(self, now: float) -> None:
        """Remove shared-memory files of values gone for a while: a finder that was sent a
        reference just before the value went must still be able to map it."""
        releases = self._releases
        while releases and releases[0][0] < now - SHM_RELEASE_GRACE:
            self.files.release(releases.popleft()[1])

    def _count_handshake_failures(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            if event["event"] & _HANDSHAKE_FAILURES:
                self.state.counters["handshake_failures"] = (
                    self.state.counters.get("handshake_failures", 0) + 1)
