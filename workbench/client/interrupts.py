"""Ctrl-C in the client: what an interrupt may cut, and what it undoes. The design is told in
``docs/interrupts.md``; this module holds every piece of it that the client's sockets use.

An *interrupt* is whatever a SIGINT handler raises in the main thread (KeyboardInterrupt from
Python's own, or a worker's task cancellation), at whatever line the thread happens to be.
Three rules keep the stream to the broker in step and every value accounted for:

1. A system call and the bookkeeping of what it moved are one step (``Deferred``): the
   interrupt lands before or after it, never between the bytes and their accounting.
2. A message is never cut: one that comes before a message's first byte is out drops the
   message; one that comes later waits until its last byte is out. ``Dealer.send`` says which
   happened (it returns whether the message went out) and *holds* the interrupt (``hold``)
   for its caller, which acts on the answer and then raises it (``deliver``).
3. A request that went out and was interrupted, before or during the wait for its reply, is
   withdrawn (``withdraw``): the broker cancels it and puts back a value that raced the
   cancel, and the late reply is discarded. Nothing is lost to an interrupt.
"""

from __future__ import annotations

import os
import signal
import threading
from threading import get_ident as _get_ident
from typing import TYPE_CHECKING, Callable

from ..errors import NwsConnectionDroppedException

if TYPE_CHECKING:
    from .connection import Channel

# The C functions themselves: the signal module's wrappers turn handlers and numbers into enums,
# which costs several times as much, on every message.
try:
    from _signal import getsignal as _getsignal, signal as _setsignal
except ImportError:  # another Python implementation
    _getsignal, _setsignal = signal.getsignal, signal.signal
_SIGINT = signal.SIGINT


class _Guard:
    """SIGINT's handler while the client defers interrupts: the handler it took the place of
    (``handler``) runs at once, unless a ``Deferred`` block is open in the main thread; then
    it runs as that block ends. Installed once and left in place, so that a block costs no
    system call (swapping handlers around every socket call cost four ``rt_sigaction`` per
    request); whoever installs a handler of their own later is wrapped in turn by the next
    block."""

    __slots__ = ("handler",)

    def __init__(self, handler: Callable) -> None:
        self.handler = handler

    def __call__(self, signum, frame) -> None:
        if _deferral.depth:
            _deferral.caught = (signum, frame)
        else:
            self.handler(signum, frame)


class _Deferral:
    """Whether a ``Deferred`` block is open in the main thread (blocks nest), and the signal
    that came meanwhile. Only the main thread runs signal handlers, so only it counts here."""

    __slots__ = ("depth", "caught", "main")

    def __init__(self) -> None:
        self.depth = 0
        self.caught: tuple | None = None
        self.main = threading.main_thread().ident

    def after_fork(self) -> None:  # the child's main thread is the one that forked
        self.__init__()


_deferral = _Deferral()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_deferral.after_fork)


class Deferred:
    """Hold Ctrl-C back for the duration of a ``with`` block in the main thread, the only one
    Python runs signal handlers in: SIGINT's handler is wrapped (once) in one that only notes
    the signal while a block is open, and the real one runs just after the block (raising
    there). A signal mask would not do: the kernel hands a process's SIGINT to any thread
    that does not block it, and Python then runs the handler in the main thread all the
    same. Blocks nest; an instance holds no state, so one (``DEFERRED``) serves every use."""

    __slots__ = ()

    def __enter__(self) -> None:
        if _get_ident() != _deferral.main:
            return
        handler = _getsignal(_SIGINT)
        if type(handler) is not _Guard and callable(handler):
            # An interrupt already due runs the real handler here, before the block.
            _setsignal(_SIGINT, _Guard(handler))
        _deferral.depth += 1

    def __exit__(self, *exc) -> None:
        deferral = _deferral
        if _get_ident() != deferral.main:
            return
        caught = deferral.caught
        if caught is not None and deferral.depth == 1:
            deferral.caught = None
        else:
            caught = None
        deferral.depth -= 1
        if caught is not None:
            handler = _getsignal(_SIGINT)
            if type(handler) is _Guard:
                handler = handler.handler
            if callable(handler):
                handler(*caught)


#: The one ``Deferred`` the socket calls use (``with DEFERRED:``).
DEFERRED = Deferred()


class _Held(threading.local):
    """The interrupt a send held for its caller, per thread (interrupts come to the main
    thread, but nothing here needs to know that). A class attribute, so that asking costs a
    lookup, not a missed one."""

    interrupt: BaseException | None = None


#: ``slot.interrupt`` is the interrupt held for the calling thread, or None: what ``held()``
#: tells, for the request path, which asks after every request without a call.
slot = _Held()


def hold(interrupt: BaseException) -> None:
    """Keep ``interrupt`` for ``deliver``; a second one while the first is held is dropped,
    as Python drops a second SIGINT that comes before the first is handled."""
    if slot.interrupt is None:
        slot.interrupt = interrupt


def held() -> bool:
    """Whether an interrupt is held for this thread."""
    return slot.interrupt is not None


def _take() -> BaseException | None:
    interrupt = slot.interrupt
    if interrupt is not None:
        slot.interrupt = None
    return interrupt


def deliver() -> None:
    """Raise the interrupt held for this thread, if there is one."""
    interrupt = _take()
    if interrupt is not None:
        raise interrupt


def withdraw(channel: Channel, request_id: int, alive: Callable[[], None]) -> None:
    """Cancel an interrupted request at the broker, which puts back a value that raced the
    cancel. A broker that cannot be reached returns what the request held when it ends the
    session, so there is nothing more to do then."""
    try:
        channel.cancel(request_id, alive)
    except NwsConnectionDroppedException:
        pass


def settle_send(channel: Channel, request_id: int, went_out: bool,
                alive: Callable[[], None], unsent: Callable[[], None] | None) -> None:
    """After a request's send, if an interrupt came while it went out: withdraw the request if
    it did go out (else the value it takes would stay leased to a reply nobody reads), or call
    ``unsent`` if it did not; then raise the interrupt."""
    interrupt = _take()
    if interrupt is None:
        return
    try:
        if went_out:
            withdraw(channel, request_id, alive)
        elif unsent is not None:
            unsent()
    finally:
        raise interrupt
