"""Ctrl-C in the client (``workbench.client.interrupts``): the guard around system calls, the
interrupt a send holds for its caller, and a real SIGINT that comes in the middle of a message
the broker's end is not reading."""

from __future__ import annotations

import fcntl
import signal
import socket
import termios
import threading

import pytest

from workbench.client import interrupts
from workbench.client.dealer import Dealer
from workbench.zmtp import GREETING, command, encode, properties

from .support import wait_for


def test_deferred_holds_sigint_until_the_block_ends():
    reached = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts.Deferred():
            signal.raise_signal(signal.SIGINT)
            reached = True
    assert reached


def test_deferred_leaves_other_threads_and_ignored_sigint_alone():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.Deferred():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    seen = []

    def in_thread():
        with interrupts.Deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(timeout=5)
    assert seen == [signal.getsignal(signal.SIGINT)]


def test_deferred_wraps_the_handler_once_and_runs_it_at_once_outside_blocks():
    """The handler is wrapped on the first block and left in place (no system call per
    block); outside a block a SIGINT runs the real handler at once."""
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with interrupts.Deferred():
            pass
        guard = signal.getsignal(signal.SIGINT)
        for _ in range(3):
            with interrupts.DEFERRED:
                pass
        assert signal.getsignal(signal.SIGINT) is guard
        signal.raise_signal(signal.SIGINT)
        assert seen == [signal.SIGINT]
        with interrupts.DEFERRED:
            signal.raise_signal(signal.SIGINT)
            assert seen == [signal.SIGINT]  # held back ...
        assert seen == [signal.SIGINT, signal.SIGINT]  # ... until the block ends
    finally:
        signal.signal(signal.SIGINT, previous)


def test_deferred_runs_the_handler_installed_since_and_nested_blocks_end_at_the_outer():
    with interrupts.DEFERRED:
        pass
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append("mine"))
    try:
        with interrupts.DEFERRED:
            with interrupts.DEFERRED:
                signal.raise_signal(signal.SIGINT)
            assert seen == []  # the inner block's end is not the end of the deferral
        assert seen == ["mine"]
        with interrupts.DEFERRED:  # delivered once: nothing is left over for the next block
            pass
        assert seen == ["mine"]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_held_interrupt_is_delivered_once_and_the_first_one_wins():
    first, second = KeyboardInterrupt("first"), KeyboardInterrupt("second")
    interrupts.hold(first)
    interrupts.hold(second)
    assert interrupts.held()
    with pytest.raises(KeyboardInterrupt) as caught:
        interrupts.deliver()
    assert caught.value is first
    assert not interrupts.held()
    interrupts.deliver()  # nothing held: nothing raised


def test_held_interrupts_belong_to_their_thread():
    interrupts.hold(KeyboardInterrupt())
    try:
        seen = []
        thread = threading.Thread(target=lambda: seen.append(interrupts.held()))
        thread.start()
        thread.join(timeout=5)
        assert seen == [False]
    finally:
        with pytest.raises(KeyboardInterrupt):
            interrupts.deliver()


def _pending_bytes(sock: socket.socket) -> int:
    return int.from_bytes(fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"), "little")


def test_sigint_in_the_middle_of_a_message_lets_it_finish_and_is_held(tmp_path):
    """A peer that stops reading leaves a large message half sent; a real SIGINT then must
    not cut it: the send finishes once the peer reads again, says the message went out, and
    holds the interrupt for its caller. The peer receives exactly the whole message."""
    path = str(tmp_path / "peer.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    identity = b"i" * 18
    greeting = GREETING + command(b"READY", properties(Socket_Type=b"DEALER",
                                                       Identity=identity))
    frames = [b"head", b"x" * (16 << 20)]
    message = b"".join(bytes(part) for part in encode(frames))
    dealer = Dealer(f"ipc://{path}", identity, 5.0)
    peer, _ = listener.accept()
    received = bytearray()

    def interrupt_then_read():
        # Part of the message is out once more than the greeting waits to be read.
        wait_for(lambda: _pending_bytes(peer) > len(greeting), message="nothing was sent")
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        peer.settimeout(10)
        while len(received) < len(greeting) + len(message):
            chunk = peer.recv(1 << 20)
            if not chunk:
                break
            received.extend(chunk)

    reader = threading.Thread(target=interrupt_then_read, daemon=True)
    reader.start()
    try:
        assert dealer.send(frames) is True
        assert interrupts.held()
        with pytest.raises(KeyboardInterrupt):
            interrupts.deliver()
        reader.join(timeout=20)
        assert not reader.is_alive()
        assert bytes(received) == greeting + message
        assert not dealer.closed
    finally:
        dealer.close()
        peer.close()
        listener.close()
