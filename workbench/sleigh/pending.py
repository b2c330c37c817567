"""The master's view of work in flight: batches, and the objects callers hold while they wait.

A ``Batch`` is what one call (eachElem, eachWorker, map, imap, one submit) sent: its records,
the results that came back (by element tag, so a result that arrives twice — its worker died
after sending it but before its lease was acknowledged — counts once), and how to send more
when the call bounds the work in flight. The collector thread fills batches; callers wait on
the sleigh's condition in their own thread, where progress bars and accumulators run (never in
a background thread: notebook widgets must be updated from the kernel's thread).

``SleighPending`` (eachElem/eachWorker with ``blocking=False``), ``SleighResultIterator``
(imap, starmap, map) and ``SleighFuture`` (submit) are the handles callers get.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import SleighError

if TYPE_CHECKING:
    from .master import Sleigh

#: Seconds between two looks at a batch while waiting (Ctrl-C, progress, broken sleigh).
WAIT_SLICE = 0.1


class Batch:
    """One call's tasks as the master tracks them."""

    def __init__(self, batch_id: int, label: str, key: str, total: int | None = None,
                 window: int | None = None, by_consumer: bool = False,
                 accumulator: Any = None) -> None:
        self.id = batch_id
        self.label = label
        self.key = key  # of its function spec
        self.total = total  # elements; None while a lazy source may give more
        self.window = window  # elements in flight at most (None: everything at once)
        self.by_consumer = by_consumer  # in flight until consumed, not until received
        self.source: Iterator[tuple[bytes, tuple]] | None = None  # (variable, record) to send
        self.feed_lock = threading.Lock()
        self.submitted = 0
        self.done = 0
        self.consumed = 0
        self.results: dict[int, Any] = {}
        self.failed: set[int] = set()  # tags whose result is a RemoteError
        self.cancelled = False
        self.error: BaseException | None = None  # the sleigh failed or stopped under it
        self.arrivals: list[tuple[int, Any]] | None = [] if accumulator is not None else None
        self.accumulator = accumulator
        self.future: SleighFuture | None = None
        self.resolution: tuple[Any, bool] | None = None  # a future's (value, failed)

    @property
    def finished(self) -> bool:
        return (self.cancelled or self.error is not None
                or (self.total is not None and self.done >= self.total))

    def in_flight(self) -> int:
        return self.submitted - (self.consumed if self.by_consumer else self.done)

    def room(self) -> int | None:
        """How many more elements may be sent now (None: no bound)."""
        return None if self.window is None else max(0, self.window - self.in_flight())

    def ordered(self) -> list:
        return [self.results[tag] for tag in range(self.total or 0)]

    def check(self) -> None:
        """Raise what ended this batch other than its own completion."""
        if self.error is not None:
            raise self.error
        if self.cancelled:
            raise SleighError(f"batch {self.id} ({self.label}) was cancelled")


def accumulate(accumulator: Any, arrivals: list[tuple[int, Any]], failed: set[int]) -> None:
    """NetWorkSpaces accumulators: a callable takes lists of (tag, value) pairs; an object
    has ``result(pairs)`` and optionally ``error(pairs)`` for the failed tasks."""
    if callable(accumulator) and not hasattr(accumulator, "result"):
        accumulator(arrivals)
        return
    good = [pair for pair in arrivals if pair[0] not in failed]
    bad = [pair for pair in arrivals if pair[0] in failed]
    if good:
        accumulator.result(good)
    if bad:
        (getattr(accumulator, "error", None) or accumulator.result)(bad)


def accumulated(accumulator: Any) -> Any:
    value = getattr(accumulator, "value", None)
    return value() if callable(value) else value


class SleighPending:
    """The handle of a non-blocking eachElem or eachWorker: ``check()`` says how many tasks
    are outstanding, ``wait()`` returns the results (in element order)."""

    def __init__(self, sleigh: Sleigh, batch: Batch) -> None:
        self._sleigh = sleigh
        self._batch = batch

    @property
    def done(self) -> int:
        """Elements whose result has come back."""
        return self._batch.done

    @property
    def total(self) -> int | None:
        """Elements in the batch (None while not all are sent)."""
        return self._batch.total

    def check(self) -> int:
        """How many tasks have not come back yet."""
        batch = self._batch
        return (batch.total if batch.total is not None else batch.submitted) - batch.done

    def wait(self, timeout: float | None = None, progress: bool = False) -> Any:
        """Wait for every result -> the list of results (failed tasks as RemoteError values),
        or the accumulator's value if the call had one. TimeoutError after ``timeout`` s."""
        return self._sleigh._finish(self._batch, timeout, progress)

    def cancel(self) -> None:
        """Give up the batch: queued tasks are skipped, running ones interrupted."""
        self._sleigh._cancel([self._batch])

    def __repr__(self) -> str:
        return f"<SleighPending batch {self._batch.id}: {self.done}/{self.total} done>"


class SleighResultIterator:
    """Results of imap/starmap/map in element order, as they come.

    ``returned``, ``buffered`` (arrived early, waiting for their turn), ``submitted`` and
    ``stopped`` say where it stands; ``shutdown()`` stops sending more tasks, ``stop()`` gives
    up what is left. With ``raise_errors`` (Executor.map), a failed task raises its
    RemoteError when its turn comes; otherwise the error is the element's value (NWS).
    ``deadline`` (monotonic time) bounds the whole iteration, ``each_timeout`` the wait for
    each result; past either, TimeoutError."""

    def __init__(self, sleigh: Sleigh, batch: Batch, raise_errors: bool = False,
                 deadline: float | None = None, progress: bool = False,
                 each_timeout: float | None = None) -> None:
        self._sleigh = sleigh
        self._batch = batch
        self._next = 0
        self._raise = raise_errors
        self._deadline = deadline
        self._each_timeout = each_timeout
        self._bar = sleigh._progress_bar(batch) if progress else None

    def __iter__(self) -> SleighResultIterator:
        return self

    def __next__(self) -> Any:
        batch, tag = self._batch, self._next
        deadline = self._deadline
        if self._each_timeout is not None:
            each = time.monotonic() + self._each_timeout
            deadline = each if deadline is None else min(deadline, each)
        try:
            self._sleigh._wait_for(
                batch, lambda: tag in batch.results or (batch.total is not None
                                                        and tag >= batch.total),
                deadline, self._bar)
        except BaseException:
            self._close_bar()
            raise
        if tag not in batch.results:  # the end, or the batch was given up
            self._close_bar()
            if batch.error is not None:
                raise batch.error
            raise StopIteration
        with self._sleigh._cond:  # so that a late duplicate of this tag is not filed again
            value = batch.results.pop(tag)
            batch.consumed += 1
        self._next += 1
        if batch.source is not None:
            self._sleigh._feed(batch)
        if self._raise and tag in batch.failed:
            self._close_bar()
            self._sleigh._cancel([batch])
            raise value
        return value

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @property
    def returned(self) -> int:
        return self._next

    @property
    def buffered(self) -> int:
        return len(self._batch.results)

    @property
    def submitted(self) -> int:
        return self._batch.submitted

    @property
    def stopped(self) -> bool:
        batch = self._batch
        return batch.finished and (batch.cancelled or self._next >= (batch.total or 0))

    def shutdown(self) -> None:
        """Send no more tasks; the ones sent still come back."""
        self._sleigh._end_source(self._batch)

    def stop(self) -> None:
        """Give up the rest: queued tasks are skipped, running ones interrupted."""
        self._close_bar()
        self._sleigh._cancel([self._batch])

    close = stop

    def __del__(self) -> None:
        # Dropped before the end: give the rest up, from a thread of its own (the collector
        # may be the thread that happens to collect this object).
        batch = getattr(self, "_batch", None)
        if batch is not None and not batch.finished:
            threading.Thread(target=self._sleigh._cancel, args=([batch],), daemon=True,
                             name=f"sleigh-cancel-{batch.id}").start()


class SleighFuture(Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also stops the remote task: skipped
    if it is still queued, interrupted if it runs. Ctrl-C while waiting in ``result()`` or
    ``exception()`` cancels it too."""

    def __init__(self, sleigh: Sleigh, batch: Batch) -> None:
        super().__init__()
        self._sleigh = sleigh
        self._batch = batch

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._sleigh._cancel([self._batch])
        return True

    def result(self, timeout: float | None = None) -> Any:
        return self._interruptible(super().result, timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._interruptible(super().exception, timeout)

    def _interruptible(self, wait: Callable[[float | None], Any], timeout: float | None) -> Any:
        """Wait in slices, so that an interrupt is seen within one even when it comes as a
        flag rather than a signal (``_thread.interrupt_main``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                try:
                    return wait(WAIT_SLICE if remaining is None
                                else max(0.0, min(WAIT_SLICE, remaining)))
                except FuturesTimeout:
                    if remaining is not None and remaining <= WAIT_SLICE:
                        raise
        except KeyboardInterrupt:
            self.cancel()
            raise

    def _resolve(self, value: Any, failed: bool) -> None:
        """Called by the collector thread when the task's result arrives."""
        if self.done():
            return  # cancelled meanwhile
        try:
            if failed:
                self.set_exception(value)
            else:
                self.set_result(value)
        except Exception:  # InvalidStateError: cancelled between the check and the set
            pass

    def _fail(self, error: BaseException) -> None:
        if not self.done():
            try:
                self.set_exception(error)
            except Exception:
                pass
