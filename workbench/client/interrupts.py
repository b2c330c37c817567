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

import signal
import threading
from threading import current_thread as _current_thread
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


class Deferred:
    """Hold Ctrl-C back for the duration of a ``with`` block in the main thread, the only one
    Python runs signal handlers in: SIGINT's handler is swapped for one that only notes the
    signal, and the real one runs just after the block (raising there). A signal mask would
    not do: the kernel hands a process's SIGINT to any thread that does not block it, and
    Python then runs the handler in the main thread all the same."""

    __slots__ = ("previous", "caught")

    def __enter__(self) -> None:
        self.previous = None
        if _current_thread() is not threading.main_thread():
            return
        previous = _getsignal(_SIGINT)
        if not callable(previous):  # ignored, or the default action: nothing to defer
            return
        self.caught = None
        try:
            _setsignal(_SIGINT, self._note)
            self.previous = previous
        except BaseException:  # an interrupt that was already due ran the real handler
            _setsignal(_SIGINT, previous)
            raise

    def _note(self, signum, frame) -> None:
        self.caught = (signum, frame)

    def __exit__(self, *exc) -> None:
        previous = self.previous
        if previous is not None:
            _setsignal(_SIGINT, previous)
            if self.caught is not None:
                previous(*self.caught)


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
