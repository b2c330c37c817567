"""The sleigh's scheduler: the calls in flight (``Batch``) and what came back for them, the roster
of workers, and the accounting of retries. A state machine: the master's threads feed it events
and it answers with what to do next, as values. It owns one lock, a condition that callers wait
on; it opens no socket and starts no thread, so tests drive it directly.

Events in: a call opens (``open``), its records are taken to be sent (``take``), results come
(``file``), calls are cancelled or fail (``cancel``, ``fail``), workers join and leave
(``joined``, ``left``). Decisions out: the records to send now (``Taken``), a future to resolve
and whether to send more (``Filed``), the batches whose workers must stop (``cancel``). Callers
wait on it a slice at a time (``wait``), in their own thread.
Observers ``subscribe`` to ``CallProgress``, ``WorkerJoined`` and ``WorkerLeft`` records.

Retries are counted where a task comes back: a worker's hand that held the tasks of a dead
worker is split one element per record (``must_split``, ``split_suspects``), and a record that
killed ``DEATHS_LIMIT`` workers is answered as poison (``poisoned``), not run again.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from ..config import SLEIGH_WAIT_SLICE
from .batch import Batch
from .errors import RemoteError, SleighError
from .events import SleighStatus, Subscription, WorkerJoined, WorkerLeft
from .tasks import DEATHS_LIMIT, Hello, ResultEntry, TaskRecord

log = logging.getLogger("workbench.sleigh")

#: Seconds between two looks at a batch while waiting (Ctrl-C, progress, broken sleigh).
WAIT_SLICE = SLEIGH_WAIT_SLICE
#: Function specs kept stored in the workspace before the oldest unused ones are deleted.
FUNCTIONS_KEPT = 256
#: Cancelled batch ids a newly started worker is told about.
CANCELLED_KEPT = 4096


class Taken(NamedTuple):
    """Records to send now, counted as sent. ``full``: there may be more room: take again."""

    records: list[tuple[str, TaskRecord]]
    full: bool


class Filed(NamedTuple):
    """What to do after filing a result entry: resolve a future with ``resolution`` (value,
    failed), or ``feed`` the batch, which has more to send and room for it now."""

    batch: Batch
    resolution: tuple[Any, bool] | None
    feed: bool


_NOTHING_TAKEN = Taken([], False)


# ---------------------------------------------------------------------------- the scheduler

class Scheduler:
    """The batch table, the roster and the counters of one sleigh, under one condition."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._batches: dict[int, Batch] = {}
        self._ids = itertools.count(1)
        self._workers: dict[int, Hello] = {}
        self._joins: Counter[int] = Counter()
        self._functions: OrderedDict[str, int] = OrderedDict()  # key -> batches using it
        self._cancelled: deque[int] = deque(maxlen=CANCELLED_KEPT)
        self._observers: tuple[Callable[[Any], None], ...] = ()
        self._deaths = 0
        self._duplicates = 0
        self._failure: str | None = None
        self._closed = False

    # ------------------------------------------------------------------ observers

    def subscribe(self, callback: Callable[[Any], None]) -> Subscription:
        """Call ``callback(event)`` with each ``CallProgress``, ``WorkerJoined`` and
        ``WorkerLeft`` from now on, in the thread that caused it (the collector's, mostly),
        never under the scheduler's lock; first, in this thread, with the present state (a
        ``WorkerJoined`` per worker, a ``CallProgress`` per call running), which events of
        the moment may overtake. It must be quick and must not wait for the sleigh; what it
        raises is logged."""
        with self._cond:
            self._observers = (*self._observers, callback)
            present = [WorkerJoined(rank, hello.info)
                       for rank, hello in sorted(self._workers.items())]
            present += [batch.progress() for batch in self._batches.values()]
        for event in present:
            try:
                callback(event)
            except Exception:
                log.exception("a sleigh observer failed on %r", event)
        return Subscription(callback, self.unsubscribe)

    def unsubscribe(self, callback: Callable[[Any], None]) -> None:
        with self._cond:
            observers = list(self._observers)
            if callback in observers:
                observers.remove(callback)
            self._observers = tuple(observers)

    def _emit(self, event: Any) -> None:
        for callback in self._observers:
            try:
                callback(event)
            except Exception:  # an observer's bug must not stop the sleigh
                log.exception("a sleigh observer failed on %r", event)

    # ------------------------------------------------------------------ calls

    def open(self, label: str, key: str, total: int | None = None, window: int | None = None,
             *, records: Callable[[int], Iterator[tuple[str, TaskRecord]]] | None = None,
             by_consumer: bool = False, accumulator: Any = None,
             targets: list[int] | None = None,
             future: Callable[[Batch], Any] | None = None) -> Batch:
        """A new call: ``total`` elements (None: as many as its records give), at most
        ``window`` in flight, sent as the (variable, record) pairs of ``records(batch id)``.
        Without records, the caller sends its elements itself (a submit, whose
        ``future(batch)`` its result resolves)."""
        with self._cond:
            if self._closed:
                raise SleighError("the sleigh was stopped")
            batch = Batch(next(self._ids), label, key, total, window, by_consumer, accumulator,
                          targets)
            if records is not None:
                batch.source = records(batch.id)
            else:
                batch.submitted = total or 0
            if future is not None:
                batch.future = future(batch)
            self._batches[batch.id] = batch
            self._functions[key] = self._functions.get(key, 0) + 1
        if self._observers:
            self._emit(batch.progress())
        return batch

    def take(self, batch: Batch, most: int) -> Taken:
        """The batch's next records to send, at most ``most`` and as many elements as its
        window has room for; they count as sent from now on. When the source ends, the batch
        knows its total. The source is read outside the lock (it may be the caller's
        generator), one thread at a time."""
        with batch.feed_lock:
            with self._cond:
                source = batch.source
                if source is None or batch.finished:
                    return _NOTHING_TAKEN
                room = batch.room()
            taken: list[tuple[str, TaskRecord]] = []
            items = 0
            exhausted = False
            while (room is None or items < room) and len(taken) < most:
                try:
                    pair = next(source)
                except StopIteration:
                    exhausted = True
                    break
                taken.append(pair)
                items += len(pair[1].items)
            if not taken and not exhausted:
                return _NOTHING_TAKEN  # the window is full
            with self._cond:
                batch.submitted += items
                if exhausted and batch.source is source:
                    batch.source = None
                    batch.total = batch.submitted
                    self._settle(batch)
                self._cond.notify_all()
        if exhausted and self._observers:
            self._emit(batch.progress())
        return Taken(taken, len(taken) >= most)

    def end_source(self, batch: Batch) -> None:
        """Send no more of the batch: the elements sent are all it has."""
        with batch.feed_lock, self._cond:
            batch.source = None
            batch.total = batch.submitted
            self._settle(batch)
            self._cond.notify_all()
        if self._observers:
            self._emit(batch.progress())

    def file(self, entry: ResultEntry) -> Filed | None:
        """A worker's results for one record -> what to do next (None: nothing, as when the
        batch ended, or the results came twice from a worker that died before its
        acknowledgement reached the broker)."""
        batch = self._batches.get(entry.batch)
        if batch is None:
            return None  # finished, cancelled, or a duplicate from a worker that died
        with self._cond:
            if batch.finished:
                return None
            added = self._file_values(batch, entry)
            batch.done += added
            resolution = self._settle(batch)
            self._cond.notify_all()
            progress = batch.progress(entry.rank, added) if self._observers else None
        if progress is not None:
            self._emit(progress)
        feed = batch.source is not None and not batch.by_consumer
        return Filed(batch, resolution, feed) if resolution is not None or feed else None

    def _file_values(self, batch: Batch, entry: ResultEntry) -> int:
        """Under the lock: the entry's values into the batch's results -> how many were new.
        A run that came once (nearly always) goes in whole; one that overlaps results in or
        taken already (its worker died before its acknowledgement reached the broker) goes
        in as the pieces that are new, the duplicates dropped."""
        results, values, tag0 = batch.results, entry.values, entry.tag0
        failed: set[int] = set()
        if entry.errors:
            values = list(values)
            for index, info in entry.errors:
                values[index] = RemoteError.from_info(info, entry.rank, tag0 + index)
                failed.add(tag0 + index)
        stop = tag0 + len(values)
        if tag0 >= batch.consumed and not results.overlaps(tag0, stop):
            pieces = [(tag0, values)]
        else:
            pieces = self._new_pieces(batch, tag0, values)
        added = 0
        for start, piece in pieces:
            results.add(start, piece)
            added += len(piece)
            if batch.arrivals is not None:
                batch.arrivals.extend(zip(range(start, start + len(piece)), piece))
        if failed:  # those filed now: a duplicate's error does not replace a result in
            batch.failed.update(tag for tag in failed
                                if any(start <= tag < start + len(piece)
                                       for start, piece in pieces))
        return added

    def _new_pieces(self, batch: Batch, tag0: int, values: list) -> list[tuple[int, list]]:
        """(first tag, values) of the runs of ``values`` whose results are neither in nor
        taken; the others count as duplicates."""
        pieces: list[tuple[int, list]] = []
        for tag, value in enumerate(values, tag0):
            if tag < batch.consumed or tag in batch.results:
                self._duplicates += 1
            elif pieces and pieces[-1][0] + len(pieces[-1][1]) == tag:
                pieces[-1][1].append(value)
            else:
                pieces.append((tag, [value]))
        return pieces

    def take_ready(self, batch: Batch, tag: int, find_failure: bool = False
                   ) -> tuple[list, int | None]:
        """Take the results of elements ``tag``, ``tag + 1``... that are in, in order, out
        of the batch, under one acquisition of the lock -> (values, the index in them of the
        first that failed if ``find_failure`` and one did, else None). The caller has been
        handed every result before ``tag`` (a lazy call's window makes room for as many);
        those taken now count only when it next comes for more."""
        with self._cond:
            batch.read = max(batch.read, tag)
            values = batch.results.take(tag)
            batch.consumed += len(values)
            failed = batch.failed
            if find_failure and failed:
                tags = range(tag, tag + len(values))
                if not failed.isdisjoint(tags):
                    return values, min(t for t in failed if t in tags) - tag
            return values, None

    def wait(self, batch: Batch, deadline: float | None, tag: int | None = None) -> bool:
        """Wait at most WAIT_SLICE for the batch to end or, with ``tag``, for that element's
        result (or for the elements to end before it) -> whether that happened. TimeoutError
        at ``deadline``; SleighError if the sleigh broke."""
        with self._cond:
            over = self._over(batch, tag)
            if not over:
                if self._failure and batch.error is None:
                    raise SleighError(self._failure)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"batch {batch.id} ({batch.label}): {batch.done} of "
                                       f"{batch.total} results came in time")
                self._cond.wait(WAIT_SLICE if remaining is None
                                else min(WAIT_SLICE, remaining))
                over = self._over(batch, tag)
            return over

    def arrivals(self, batch: Batch) -> list[tuple[int, Any]]:
        """The (tag, value) pairs filed since the last call, for the batch's accumulator."""
        with self._cond:
            arrivals, batch.arrivals = batch.arrivals, []
            return arrivals or []

    @staticmethod
    def _over(batch: Batch, tag: int | None) -> bool:
        if batch.finished or tag is None:
            return batch.finished
        return tag in batch.results or (batch.total is not None and tag >= batch.total)

    def cancel(self, batches: Iterable[Batch]) -> list[int]:
        """Give batches up -> the ids of those that were still running, whose workers must
        skip their queued tasks and interrupt the running ones."""
        given_up = []
        with self._cond:
            for batch in batches:
                if batch.finished:
                    continue
                batch.cancelled = True
                batch.source = None
                self._release(batch)
                given_up.append(batch)
                self._cancelled.append(batch.id)
            self._cond.notify_all()
        if self._observers:
            for batch in given_up:
                self._emit(batch.progress())
        return [batch.id for batch in given_up]

    def cancelled_ids(self) -> list[int]:
        """The most recent cancelled batch ids (what a newly started worker must skip)."""
        with self._cond:
            return list(self._cancelled)

    def fail(self, batches: Iterable[Batch], error: BaseException) -> None:
        """End batches with ``error`` (the sleigh failed or stopped under them)."""
        failed = []
        with self._cond:
            for batch in batches:
                if batch.error is None:
                    batch.error = error
                    batch.source = None
                    self._release(batch)
                    failed.append(batch)
            self._cond.notify_all()
        if self._observers:
            for batch in failed:
                self._emit(batch.progress())

    def running(self) -> list[Batch]:
        """The batches still waiting for results."""
        with self._cond:
            return list(self._batches.values())

    def break_down(self, reason: str) -> list[Batch]:
        """The sleigh cannot go on (its workspace is gone): every call fails with
        SleighError(reason), and so does every wait from now on -> the batches failed."""
        with self._cond:
            self._failure = reason
            batches = list(self._batches.values())
        self.fail(batches, SleighError(reason))
        return batches

    @property
    def failure(self) -> str | None:
        return self._failure

    def close(self) -> list[Batch]:
        """No new calls -> the batches still running."""
        with self._cond:
            self._closed = True
            return list(self._batches.values())

    def wait_futures(self, stopped: Callable[[], bool]) -> None:
        """Wait until no submitted future is pending (or the sleigh broke, or ``stopped()``)."""
        with self._cond:
            while (any(b.future is not None for b in self._batches.values())
                   and not self._failure and not stopped()):
                self._cond.wait(WAIT_SLICE)

    def futures(self) -> list[Batch]:
        """The batches of submitted futures still pending."""
        with self._cond:
            return [b for b in self._batches.values() if b.future is not None]

    def _settle(self, batch: Batch) -> tuple[Any, bool] | None:
        """Under the lock: if the batch just completed, forget it -> a future's resolution."""
        if batch.finished and batch.id in self._batches:
            self._release(batch)
            if batch.future is not None:
                return batch.results.get(0), 0 in batch.failed
        return None

    def _release(self, batch: Batch) -> None:
        """Under the lock: the batch is over; forget it."""
        if self._batches.pop(batch.id, None) is not None and self._functions.get(batch.key):
            self._functions[batch.key] -= 1

    # ------------------------------------------------------------------ function specs

    def knows_function(self, key: str) -> bool:
        """Whether the function spec ``key`` is stored already (it is then kept longest)."""
        with self._cond:
            known = key in self._functions
            if known:
                self._functions.move_to_end(key)
            return known

    def function_stored(self, key: str) -> list[str]:
        """The spec ``key`` was stored -> the keys of unused specs to delete, the oldest
        beyond FUNCTIONS_KEPT."""
        with self._cond:
            self._functions.setdefault(key, 0)
            idle = [k for k, users in self._functions.items() if not users]
            doomed = idle[:max(0, len(self._functions) - FUNCTIONS_KEPT)]
            for k in doomed:
                del self._functions[k]
            return doomed

    # ------------------------------------------------------------------ workers

    def joined(self, hello: Hello) -> int:
        """A worker said hello -> the number of workers on the roster."""
        with self._cond:
            self._workers[hello.rank] = hello
            self._joins[hello.rank] += 1
            count = len(self._workers)
            self._cond.notify_all()
        if self._observers:
            self._emit(WorkerJoined(hello.rank, hello.info))
        return count

    def left(self, rank: int, farewell: str) -> bool:
        """The session of the worker whose farewell variable is ``farewell`` ended, and
        nothing replaces it: off the roster, and the eachWorker elements it had not answered
        are withdrawn from their calls -> whether it was on the roster (a later hello of the
        same rank stays)."""
        with self._cond:
            hello = self._workers.get(rank)
            if hello is None or hello.farewell != farewell:
                return False
            del self._workers[rank]
            settled = []
            for batch in list(self._batches.values()):
                if batch.targets is None or batch.finished:
                    continue
                for tag, target in enumerate(batch.targets):
                    if target == rank and tag not in batch.results:
                        batch.withdrawn = True
                        batch.submitted -= 1
                        batch.total -= 1
                        settled.append(batch)
                self._settle(batch)
            self._cond.notify_all()
        if self._observers:
            self._emit(WorkerLeft(rank, hello.info))
            for batch in settled:
                self._emit(batch.progress())
        return True

    def given_up(self, rank: int) -> bool:
        """The launcher gave ``rank`` up (its worker is dead, no replacement comes): off the
        roster as ``left`` -> whether it was on it."""
        with self._cond:
            hello = self._workers.get(rank)
        return hello is not None and self.left(rank, hello.farewell)

    def died(self) -> None:
        """A launched worker died."""
        with self._cond:
            self._deaths += 1

    def joins(self, rank: int) -> int:
        """How many times a worker of ``rank`` said hello."""
        with self._cond:
            return self._joins[rank]

    def worker(self, rank: int) -> dict | None:
        with self._cond:
            hello = self._workers.get(rank)
            return None if hello is None else hello.info

    def ranks(self) -> list[int]:
        with self._cond:
            return sorted(self._workers)

    def workers(self) -> list[dict]:
        """What each worker on the roster said about itself, in rank order."""
        with self._cond:
            return [dict(self._workers[rank].info) for rank in sorted(self._workers)]

    def wait_joined(self, ranks: Sequence[int], deadline: float) -> int:
        """Wait at most WAIT_SLICE (and until ``deadline``) for all of ``ranks`` to be on
        the roster -> how many of them are."""
        with self._cond:
            joined = sum(rank in self._workers for rank in ranks)
            if joined < len(ranks):
                self._cond.wait(max(0.0, min(WAIT_SLICE, deadline - time.monotonic())))
                joined = sum(rank in self._workers for rank in ranks)
            return joined

    # ------------------------------------------------------------------ status

    def status(self, stopped: bool) -> SleighStatus:
        with self._cond:
            return SleighStatus(len(self._workers), sorted(self._workers),
                                sum(b.in_flight() for b in self._batches.values()),
                                len(self._batches), self._deaths, self._duplicates, stopped)


# ---------------------------------------------------------------------------- retries

def must_split(hand: Sequence[tuple[TaskRecord | None, int]]) -> bool:
    """Whether a worker's hand of (record, returns) is to be split rather than run: some of
    it came back from a dead worker (``returns``) and it holds more than one element, any of
    which may be what killed it."""
    return any(returns for _, returns in hand) and (
        len(hand) > 1 or any(len(record.items) > 1 for record, _ in hand if record is not None))


def split_suspects(record: TaskRecord, returns: int) -> list[TaskRecord]:
    """A record that came back from a dead worker, as one record per element, each counting
    the death: run alone, the element that kills workers is found and the others are not
    blamed for it."""
    deaths = record.deaths + returns
    return [record._replace(tag0=record.tag0 + i, items=[item], deaths=deaths)
            for i, item in enumerate(record.items)]


def poisoned(record: TaskRecord, returns: int) -> int | None:
    """The workers ``record`` killed, if that is too many to run it again (else None)."""
    deaths = record.deaths + returns
    return deaths if deaths >= DEATHS_LIMIT else None
