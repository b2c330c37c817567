"""``Batch``: one call (eachElem, eachWorker, map, imap, one submit) as the scheduler tracks it:
what it sends, the results that came back by element tag (so a result that arrives twice counts
once), and the window that bounds its work in flight."""

from __future__ import annotations

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
        self.results: dict[int, Any] = {}
        #: Every element before this one has its result in (or read already): what an
        #: iterator can take at once. Filed runs that start further on wait in ``runs``
        #: (start -> end), and the frontier jumps over each as it reaches it.
        self.frontier = 0
        self.runs: dict[int, int] = {}
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
        if self.withdrawn:
            return [self.results[tag] for tag in sorted(self.results)]
        return list(map(self.results.__getitem__, range(self.total or 0)))

    def check(self) -> None:
        """Raise what ended this batch other than its own completion."""
        if self.error is not None:
            raise self.error
        if self.cancelled:
            raise SleighError(f"batch {self.id} ({self.label}) was cancelled")

    def progress(self, rank: int | None = None, added: int = 0) -> CallProgress:
        return CallProgress(self.id, self.label, self.state, self.done, self.submitted,
                            self.total, rank, added)
