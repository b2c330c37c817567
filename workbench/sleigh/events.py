"""What observers of a sleigh see (``Sleigh.subscribe``): the records of its events, the
subscription handle, ``SleighStatus``, the snapshot ``Sleigh.state()`` returns, and
``GroupStatus``, NetWorkSpaces' ``Sleigh.status()``."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

#: The states of a call (``CallProgress.state``).
RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"


class CallProgress(NamedTuple):
    """A call's standing: when it opens, as its results come, once all its elements are sent,
    and when it ends."""

    batch: int
    label: str  # the function's name
    state: str  # "running", "done", "cancelled" or "failed"
    done: int  # results filed
    sent: int  # elements sent to the workers
    total: int | None  # elements in the call; None while a lazy input may give more
    rank: int | None = None  # the worker whose results just came, if that is the news
    added: int = 0  # how many results just came from it


class WorkerJoined(NamedTuple):
    rank: int
    info: dict  # what the worker said about itself (as workerInfo)


class WorkerLeft(NamedTuple):
    """A worker's broker session ended (it died, or left) and nothing will replace it."""

    rank: int
    info: dict


class Subscription:
    """An observer's registration: ``close()`` (or leaving a ``with`` block) ends it."""

    def __init__(self, callback: Callable[[Any], None],
                 unsubscribe: Callable[[Callable[[Any], None]], None]) -> None:
        self.callback = callback
        self._unsubscribe = unsubscribe

    def close(self) -> None:
        self._unsubscribe(self.callback)

    unsubscribe = close

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SleighStatus(NamedTuple):
    workers: int  # workers that said hello and were not seen dead since
    ranks: list  # their ranks
    outstanding: int  # tasks sent whose results have not come back
    batches: int  # calls still waiting for results
    deaths: int  # launched workers that died and were replaced
    duplicates: int  # results that came twice (their worker died unacknowledged); dropped
    stopped: bool
    # The launcher's view of each rank it started (``launchers.WorkerState``): a batch job
    # queued, starting, running, or failed with the scheduler's reason.
    launched: tuple = ()


class GroupStatus(NamedTuple):
    """``Sleigh.status()``, as NetWorkSpaces answered it: ``workers, closed = s.status()``."""

    workers: int  # workers that have joined
    closed: int  # 1 once every worker the sleigh launched has joined (or closeGroup), else 0
