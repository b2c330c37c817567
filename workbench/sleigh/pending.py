"""What callers hold while their calls run, and how they wait: ``SleighPending`` (eachElem and
eachWorker with ``blocking=False``), ``SleighResultIterator`` (imap, starmap, map) and
``SleighFuture`` (submit).

Callers wait in their own thread (``wait_for``), one slice at a time on the scheduler's
condition, and run accumulators and progress bars there: never in a background thread, since
notebook widgets must be updated from the kernel's thread. Ctrl-C while waiting cancels the call.
Everything here goes through the public faces of the ``Dispatcher`` (sending, cancelling) and
the ``Scheduler`` (waiting, reading results).
"""

from __future__ import annotations

import operator
import threading
import time
import warnings
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .batch import Batch
from .scheduler import WAIT_SLICE

if TYPE_CHECKING:
    from .dispatch import Dispatcher


def wait_for(dispatcher: Dispatcher, batch: Batch, deadline: float | None,
             bar: Any = None, tag: int | None = None) -> None:
    """Wait in this thread until the batch ends or, with ``tag``, until that element's
    result is in (or the elements end before it). Runs the batch's accumulator and progress
    bar here; Ctrl-C cancels the batch."""
    scheduler = dispatcher.scheduler
    try:
        while True:
            over = scheduler.wait(batch, deadline, tag)
            if batch.arrivals:
                accumulate(batch.accumulator, scheduler.arrivals(batch), batch.failed)
            if bar is not None:
                draw(bar, batch)
            if over:
                return
    except KeyboardInterrupt:
        dispatcher.cancel([batch])
        raise


def finish(dispatcher: Dispatcher, batch: Batch, timeout: float | None, progress: bool) -> Any:
    """Wait for the whole batch -> its results in element order, or its accumulator's value."""
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = progress_bar(batch) if progress else None
    try:
        wait_for(dispatcher, batch, deadline, bar)
    finally:
        if bar is not None:
            bar.close()
    batch.check()
    if batch.accumulator is not None:
        return accumulated(batch.accumulator)
    return batch.ordered()


def draw(bar: Any, batch: Batch) -> None:
    """Bring the progress bar up to the batch's count."""
    if bar.total != batch.total:
        bar.total = batch.total
    bar.update(batch.done - bar.n)


def progress_bar(batch: Batch) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tqdm.auto's notice about notebook mode
        from tqdm.auto import tqdm

        return tqdm(total=batch.total, desc=batch.label, unit="task")


def accumulate(accumulator: Any, arrivals: list[tuple[int, Any]], failed: set[int]) -> None:
    """NetWorkSpaces accumulators, called as the original called them: once per result, with
    ``[(tag, value)]``; a failed task's goes to ``error`` if there is one, then to ``result``,
    then to the accumulator itself; any other result to ``result``, else to the accumulator."""
    result = getattr(accumulator, "result", None) or accumulator
    error = getattr(accumulator, "error", None) or result
    for pair in arrivals:
        (error if pair[0] in failed else result)([pair])


def accumulated(accumulator: Any) -> Any:
    value = getattr(accumulator, "value", None)
    return value() if callable(value) else value


class SleighPending:
    """The handle of a non-blocking eachElem or eachWorker: ``check()`` says how many tasks
    are outstanding, ``wait()`` returns the results (in element order)."""

    def __init__(self, dispatcher: Dispatcher, batch: Batch) -> None:
        self._dispatcher = dispatcher
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
        return finish(self._dispatcher, self._batch, timeout, progress)

    def cancel(self) -> None:
        """Give up the batch: queued tasks are skipped, running ones interrupted."""
        self._dispatcher.cancel([self._batch])

    def __repr__(self) -> str:
        return f"<SleighPending batch {self._batch.id}: {self.done}/{self.total} done>"


class SleighResultIterator:
    """Results of imap/starmap/map in element order, as they come.

    ``returned``, ``buffered`` (arrived early, waiting for their turn), ``submitted`` and
    ``stopped`` say where it stands; ``shutdown()`` stops sending more tasks, ``stop()`` gives
    up what is left. With ``raise_errors`` (Executor.map), a failed task raises its
    RemoteError when its turn comes; otherwise the error is the element's value (NWS).
    ``deadline`` (monotonic time) bounds the whole iteration, ``each_timeout`` the wait for
    each result; past either, TimeoutError.

    Results are taken from the scheduler a run at a time (every result in that follows the
    last one taken, under one acquisition of its lock) and handed out from that list:
    iterating (``for``, ``list()``) yields from it without a Python call per element."""

    def __init__(self, dispatcher: Dispatcher, batch: Batch, raise_errors: bool = False,
                 deadline: float | None = None, progress: bool = False,
                 each_timeout: float | None = None) -> None:
        self._dispatcher = dispatcher
        self._batch = batch
        self._ready: Iterator[Any] = iter(())  # taken from the batch, not handed out yet
        self._taken = 0  # elements taken from the batch
        self._failure: BaseException | None = None  # to raise once the ready ones are out
        self._raise = raise_errors
        self._deadline = deadline
        self._each_timeout = each_timeout
        self._bar = progress_bar(batch) if progress else None

    def __iter__(self) -> Iterator[Any]:
        return self._results()

    def _results(self) -> Iterator[Any]:
        # the list iterator is the object's, so that next() and any other loop over this
        # object go on from where this one stopped
        while True:
            yield from self._ready
            if not self._take():
                return

    def __next__(self) -> Any:
        for value in self._ready:
            return value
        if not self._take():
            raise StopIteration
        return next(self._ready)

    def _take(self) -> bool:
        """Wait for the next results and take every one that is in -> False at the end. A
        failed task's RemoteError, with ``raise_errors``, raises when its turn comes."""
        if self._failure is not None:
            self._raise_failure()
        batch, tag = self._batch, self._taken
        scheduler = self._dispatcher.scheduler
        values, failed = scheduler.take_ready(batch, tag, self._raise)
        if batch.source is not None:  # what was handed out made room in a lazy call's window
            self._dispatcher.feed(batch)
        if values:  # in already: no wait
            if self._bar is not None:
                draw(self._bar, batch)
        else:
            deadline = self._deadline
            if self._each_timeout is not None:
                each = time.monotonic() + self._each_timeout
                deadline = each if deadline is None else min(deadline, each)
            try:
                wait_for(self._dispatcher, batch, deadline, self._bar, tag)
            except BaseException:
                self._close_bar()
                raise
            values, failed = scheduler.take_ready(batch, tag, self._raise)
        if not values:  # the end, or the batch was given up
            self._close_bar()
            if batch.error is not None:
                raise batch.error
            return False
        if failed is not None:
            self._failure = values[failed]
            del values[failed:]
        self._taken += len(values)
        self._ready = iter(values)
        if not values:
            self._raise_failure()
        return True

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        self._taken += 1
        self._close_bar()
        self._dispatcher.cancel([self._batch])
        raise failure

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @property
    def returned(self) -> int:
        return self._taken - operator.length_hint(self._ready)

    @property
    def buffered(self) -> int:
        return len(self._batch.results) + operator.length_hint(self._ready)

    @property
    def submitted(self) -> int:
        return self._batch.submitted

    @property
    def stopped(self) -> bool:
        batch = self._batch
        return batch.finished and (batch.cancelled or self.returned >= (batch.total or 0))

    def shutdown(self) -> None:
        """Send no more tasks; the ones sent still come back."""
        self._dispatcher.scheduler.end_source(self._batch)

    def stop(self) -> None:
        """Give up the rest: queued tasks are skipped, running ones interrupted."""
        self._close_bar()
        self._dispatcher.cancel([self._batch])

    close = stop

    def __del__(self) -> None:
        # Dropped before the end: give the rest up, from a thread of its own (the collector
        # may be the thread that happens to collect this object).
        batch = getattr(self, "_batch", None)
        if batch is not None and not batch.finished:
            threading.Thread(target=self._dispatcher.cancel, args=([batch],), daemon=True,
                             name=f"sleigh-cancel-{batch.id}").start()


class SleighFuture(Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also stops the remote task: skipped
    if it is still queued, interrupted if it runs. Ctrl-C while waiting in ``result()`` or
    ``exception()`` cancels it too."""

    def __init__(self, dispatcher: Dispatcher, batch: Batch) -> None:
        super().__init__()
        self._dispatcher = dispatcher
        self._batch = batch

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._dispatcher.cancel([self._batch])
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
            if not self.done():
                self._dispatcher.collect_own(self._batch, deadline)
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

    def resolve(self, value: Any, failed: bool) -> None:
        """The task's result arrived (called by the collector thread)."""
        if self.done():
            return  # cancelled meanwhile
        try:
            if failed:
                self.set_exception(value)
            else:
                self.set_result(value)
        except Exception:  # InvalidStateError: cancelled between the check and the set
            pass

    def fail(self, error: BaseException) -> None:
        """The sleigh failed or stopped before the task's result came."""
        if not self.done():
            try:
                self.set_exception(error)
            except Exception:
                pass
