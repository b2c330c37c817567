"""``Batch``: one call (eachElem, eachWorker, map, imap, one submit) as the scheduler tracks it:
what it sends, the results that came back by element tag (``Results``: so a result that arrives
twice counts once), and the window that bounds its work in flight."""

from __future__ import annotations

import bisect
import itertools
import threading
from typing import Any, Iterator

from .errors import SleighError
from .events import CANCELLED, DONE, FAILED, RUNNING, CallProgress
from .tasks import TaskRecord


class Batch:
    """One call's tasks as the scheduler tracks them. Anyone may read its fields; only the
    scheduler changes them, under its lock."""

    def __init__(self, batch_id: int, label: str, key: str, total: int | None,
                 window: int | None, by_consumer: bool, accumulator: Any,
                 targets: list[int] | None) -> None:
        self.id = batch_id
        self.label = label
        self.key = key  # of its function spec
        self.total = total  # elements; None while a lazy source may give more
        self.window = window  # elements in flight at most (None: everything at once)
        self.by_consumer = by_consumer  # in flight until consumed, not until received
        self.source: Iterator[tuple[str, TaskRecord]] | None = None  # (variable, record)
        self.feed_lock = threading.Lock()  # a generator takes one thread at a time
        self.submitted = 0
        self.done = 0
        self.consumed = 0  # results taken out of ``results``
        self.read = 0  # results the caller was handed (what a lazy call's window counts)
        self.results = Results()
        self.failed: set[int] = set()  # tags whose result is a RemoteError
        self.withdrawn = False  # an element went with its worker (eachWorker): tags have gaps
        self.cancelled = False
        self.error: BaseException | None = None  # the sleigh failed or stopped under it
        self.arrivals: list[tuple[int, Any]] | None = [] if accumulator is not None else None
        self.accumulator = accumulator
        self.targets = targets  # eachWorker: the rank each element was sent to
        self.future: Any = None  # a submit's SleighFuture

    @property
    def finished(self) -> bool:
        return (self.cancelled or self.error is not None
                or (self.total is not None and self.done >= self.total))

    @property
    def state(self) -> str:
        if self.error is not None:
            return FAILED
        if self.cancelled:
            return CANCELLED
        return DONE if self.finished else RUNNING

    def in_flight(self) -> int:
        return self.submitted - (self.read if self.by_consumer else self.done)

    def room(self) -> int | None:
        """How many more elements may be sent now (None: no bound)."""
        return None if self.window is None else max(0, self.window - self.in_flight())

    def ordered(self) -> list:
        """The results in element order."""
        return self.results.ordered()

    def check(self) -> None:
        """Raise what ended this batch other than its own completion."""
        if self.error is not None:
            raise self.error
        if self.cancelled:
            raise SleighError(f"batch {self.id} ({self.label}) was cancelled")

    def progress(self, rank: int | None = None, added: int = 0) -> CallProgress:
        return CallProgress(self.id, self.label, self.state, self.done, self.submitted,
                            self.total, rank, added)


class Results:
    """A call's results that came back and were not taken yet, by element tag, kept as runs of
    consecutive elements (a list each, as a record's results came) so that a chunk's results
    are filed, taken and joined whole, without a step per element."""

    def __init__(self) -> None:
        self._runs: dict[int, list] = {}  # first tag -> the values from there on
        self._starts: list[int] = []  # the runs' first tags, in order
        self._count = 0
        #: Every element before this one has its result here or taken already: what can be
        #: taken at once from where the last take stopped.
        self.frontier = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, tag: int) -> bool:
        return self._run_of(tag) is not None

    def get(self, tag: int, default: Any = None) -> Any:
        start = self._run_of(tag)
        return default if start is None else self._runs[start][tag - start]

    def _run_of(self, tag: int) -> int | None:
        """The first tag of the run that holds ``tag``, or None."""
        index = bisect.bisect_right(self._starts, tag) - 1
        if index < 0:
            return None
        start = self._starts[index]
        return start if tag < start + len(self._runs[start]) else None

    def overlaps(self, start: int, stop: int) -> bool:
        """Whether any element from ``start`` to ``stop`` (excluded) has its result here."""
        index = bisect.bisect_left(self._starts, stop) - 1
        if index < 0:
            return False
        first = self._starts[index]
        return first + len(self._runs[first]) > start

    def add(self, start: int, values: list) -> None:
        """The results of elements ``start``, ``start + 1``... (none of them here yet)."""
        if not values:
            return
        bisect.insort(self._starts, start)
        self._runs[start] = values
        self._count += len(values)
        if start == self.frontier:
            runs, stop = self._runs, start
            while stop in runs:
                stop += len(runs[stop])
            self.frontier = stop

    def take(self, start: int) -> list:
        """Take out the results from element ``start`` (where the last take stopped) up to
        the frontier, in order."""
        runs, tag, parts = self._runs, start, []
        while tag < self.frontier:
            run = runs.pop(tag)
            parts.append(run)
            tag += len(run)
        if not parts:
            return []
        index = bisect.bisect_left(self._starts, start)
        del self._starts[index:index + len(parts)]
        self._count -= tag - start
        return parts[0] if len(parts) == 1 else list(itertools.chain.from_iterable(parts))

    def ordered(self) -> list:
        """Every result here, in element order."""
        runs = self._runs
        return list(itertools.chain.from_iterable(runs[start] for start in self._starts))
