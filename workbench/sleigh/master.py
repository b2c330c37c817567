"""``Sleigh``: a pool of worker processes fed through a workspace, with the NetWorkSpaces API
(eachElem, eachWorker, imap, starmap, status, workerInfo) and the ``concurrent.futures``
Executor API (submit, map, shutdown).

Everything flows through the sleigh's workspace, owned by the master so that the broker purges
it when the master's session ends (workers then exit): tasks in ``task`` (and ``task@<rank>``
for eachWorker), results in ``result``, functions in ``__function:<key>``, worker descriptions
in ``worker@<rank>``; ``listVars`` shows all of it.

Threads of the master, each with its own channel to the broker: the caller's (sends tasks,
waits, draws progress, runs accumulators), the collector (takes results in bulk and files them
by batch), one supervisor per launched worker (see ``launch``), and for ``submit`` a sender
that stores the tasks of many quick submits in one request.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import socket
import sys
import threading
import time
import warnings
import weakref
from collections import OrderedDict, deque
from concurrent.futures import Executor
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from .. import shm
from ..client.connection import Connection
from ..client.embedded import connect, start_hint
from ..client.keyvalue import KeyValueStore
from ..client.pubsub import MessageBus
from ..client.workspace import NetWorkSpace, NwsServer
from ..config import CONNECT_TIMEOUT, normalize_address
from ..errors import NwsConnectionDroppedException, NwsException, NwsNoWorkSpaceException
from ..protocol import Op, pack_many, split_many
from . import tasks
from .errors import RemoteError, SleighError
from .launch import (
    CallableLauncher, Launcher, LocalLauncher, SshLauncher, Supervisor, describe_exit, stop_all,
)
from .pending import (
    WAIT_SLICE, Batch, SleighFuture, SleighPending, SleighResultIterator, accumulate,
    accumulated,
)
from .tasks import FUNCTION_PREFIX, ITEMS, RESULT, TASK, own_task_var
from .worker import CANCELLED_VAR, RANK_COUNTER, WORKER_COUNT, cancel_identifier

log = logging.getLogger("workbench.sleigh")

#: Set in every worker's environment: a worker may not start a sleigh of its own.
WORKER_ENV = "WORKBENCH_SLEIGH_WORKER"
#: Records per STORE_MANY request, and bytes.
STORE_GROUP = 2048
STORE_BYTES = 8 << 20
#: Result values taken per request by the collector.
COLLECT_MOST = 256
#: Function specs kept stored in the workspace before the oldest unused ones are deleted.
FUNCTIONS_KEPT = 256
#: Cancelled batch ids a newly started worker is told about.
CANCELLED_KEPT = 4096

_TASK = TASK.encode()
_live: weakref.WeakSet = weakref.WeakSet()


class SleighStatus(NamedTuple):
    workers: int  # workers that said hello and were not seen dead since
    ranks: list  # their ranks
    outstanding: int  # tasks sent whose results have not come back
    batches: int  # calls still waiting for results
    deaths: int  # launched workers that died and were replaced
    duplicates: int  # results that came twice (their worker died unacknowledged); dropped
    stopped: bool


class Sleigh(Executor):
    """A pool of worker processes that run Python functions, fed through a workspace.

    ``Sleigh(workerCount=N)`` starts N workers on this machine (default: one per CPU) and
    returns once all have joined. ``launch='ssh'`` with ``nodeList=[host, ...]`` starts them
    with ssh; a callable ``launch(argv, rank)`` starts them any other way. Any process that
    reaches the broker can join with ``workbench worker --broker ADDR --sleigh NAME``.

    ``broker`` (or ``nwsHost``/``nwsPort``) names the broker; by default it is found like a
    NetWorkSpace's. ``workerBroker`` is the address workers should use, if they see the
    broker under another name. Use as a context manager, or call ``stop()``.
    """

    def __init__(self, workerCount: int | None = None, launch: str | Callable = "local",
                 nodeList: Sequence[str] | None = None, *, broker: str | None = None,
                 nwsHost: str | None = None, nwsPort: int | None = None,
                 workerBroker: str | None = None, wsNameTemplate: str = "sleigh_ride_%04d",
                 userWsNameTemplate: str = "sleigh_user_%04d", startTimeout: float = 30.0,
                 python: str | None = None, ssh: Sequence[str] = ("ssh",),
                 env: dict | None = None) -> None:
        if os.environ.get(WORKER_ENV):
            raise SleighError("a sleigh worker cannot start a sleigh of its own")
        self._stopped = False
        self._stopping = False
        self._shutdown = False
        self._stop_lock = threading.Lock()
        self._cond = threading.Condition()
        self._batches: dict[int, Batch] = {}
        self._batch_ids = itertools.count(1)
        self._workers: dict[int, dict] = {}
        self._hellos: dict[int, int] = {}
        self._deaths = 0
        self._duplicates = 0
        self._failure: str | None = None
        self._functions: OrderedDict[str, int] = OrderedDict()  # key -> batches using it
        self._cancelled_ids: deque[int] = deque(maxlen=CANCELLED_KEPT)
        self._bus: MessageBus | None = None
        self._sender: _Sender | None = None
        self._supervisors: list[Supervisor] = []
        self._collector: threading.Thread | None = None

        self._server = NwsServer(connection=_connect(broker, nwsHost, nwsPort))
        self._connection: Connection = self._server._connection
        try:
            self._start(workerCount, launch, nodeList, workerBroker, wsNameTemplate,
                        userWsNameTemplate, startTimeout, python, ssh, env)
        except BaseException:
            self.stop()
            raise
        _live.add(self)

    def _start(self, workerCount, launch, nodeList, workerBroker, wsNameTemplate,
               userWsNameTemplate, startTimeout, python, ssh, env) -> None:
        server = self._server
        self.wsName = server.mktempWs(wsNameTemplate)
        self.nws: NetWorkSpace = server.openWs(self.wsName)
        self.userNws: NetWorkSpace = server.openWs(server.mktempWs(userWsNameTemplate))
        self._wsb = self.wsName.encode()
        launcher = self._launcher(launch, nodeList, workerBroker or server.address, python,
                                  ssh, env)
        if workerCount is None:
            workerCount = (len(nodeList) if launch == "ssh" and nodeList
                           else os.cpu_count() or 1)
        if workerCount < 0:
            raise ValueError("workerCount must be 0 or more")
        ws = self.nws
        for name, value in ((WORKER_COUNT, workerCount), ("userWs", self.userNws.currentWs()),
                            (CANCELLED_VAR, [])):
            ws.declare(name, "single")
            ws.store(name, value)
        KeyValueStore(connection=self._connection, workspace=self.wsName).store(
            RANK_COUNTER, workerCount)
        self._collector = threading.Thread(target=self._collect, daemon=True,
                                           name=f"sleigh-collector-{self.wsName}")
        self._collector.start()
        self._supervisors = [Supervisor(rank, launcher, self._worker_died, self._hello_count)
                             for rank in range(workerCount)]
        for supervisor in self._supervisors:
            supervisor.start()
        self._wait_ready(workerCount, startTimeout)

    def _launcher(self, launch, nodeList, address, python, ssh, env) -> Launcher:
        if launch == "local":
            return LocalLauncher(address, self.wsName, python or sys.executable,
                                 dict(os.environ if env is None else env, **{WORKER_ENV: "1"}))
        if launch == "ssh":
            return SshLauncher(address, self.wsName, nodeList or (), ssh, python or "python")
        if callable(launch):
            return CallableLauncher(address, self.wsName, launch, python or sys.executable)
        raise ValueError(f"launch must be 'local', 'ssh' or a callable, not {launch!r}")

    def _wait_ready(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(rank in self._workers for rank in range(count)):
                failures = [s.failure for s in self._supervisors if s.failure]
                if failures:
                    raise SleighError("; ".join(failures))
                if self._failure:
                    raise SleighError(self._failure)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    joined = sum(rank in self._workers for rank in range(count))
                    raise SleighError(
                        f"only {joined} of {count} workers joined sleigh {self.wsName} within "
                        f"{timeout:g} s (startTimeout); workers need to reach the broker at "
                        f"{self._connection.address} and import workbench")
                self._cond.wait(min(remaining, 0.05))

    # ------------------------------------------------------------------ properties

    @property
    def workerCount(self) -> int:
        """Workers that have joined (launched or not)."""
        with self._cond:
            return len(self._workers)

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"{self.workerCount} workers"
        return f"<Sleigh {getattr(self, 'wsName', '?')} {state}>"

    def _repr_html_(self) -> str:
        """In a notebook: the workers (rank, host, pid) and the work in flight."""
        from html import escape

        status, info = self.status(), self.workerInfo()
        title = (f"<b>Sleigh {escape(getattr(self, 'wsName', '?'))}</b> at "
                 f"{escape(self._connection.address)}: "
                 + ("stopped" if status.stopped else f"{status.workers} workers"))
        work = (f"{status.outstanding} tasks in flight, {status.batches} calls waiting, "
                f"{status.deaths} worker deaths")
        rows = "".join(f"<tr><td>{w['rank']}</td><td>{escape(str(w['host']))}</td>"
                       f"<td>{w['pid']}</td></tr>" for w in info)
        return (f"<div>{title}</div><div>{work}</div><table><tr><th>rank</th><th>host</th>"
                f"<th>pid</th></tr>{rows}</table>")

    def __reduce__(self) -> Any:
        raise TypeError("a Sleigh cannot travel to its workers (did a task function refer to "
                        "it?); tasks reach the sleigh's workspace as SleighNws")

    # ------------------------------------------------------------------ NetWorkSpaces API

    def eachElem(self, fun: Callable, elementArgs: Any = None, fixedArgs: Sequence = (),
                 argPermute: Sequence[int] | None = None, loadFactor: int = 0,
                 blocking: bool = True, accumulator: Any = None, *,
                 chunkSize: int | None = None, progress: bool = False,
                 timeout: float | None = None) -> Any:
        """Call ``fun`` once per element -> the results, in element order.

        ``elementArgs`` is one list of elements, or a list of lists (zipped, stopping at the
        shortest) when its first item is a list. ``fixedArgs`` are appended to every call's
        arguments; ``argPermute`` then reorders or selects them by index. A failed task's
        result is its ``SleighTaskException`` (RemoteError). ``loadFactor`` keeps at most
        loadFactor x workers tasks queued. ``blocking=False`` returns a SleighPending.
        ``accumulator`` receives lists of (tag, value) pairs as results come (a callable, or
        an object with ``result``/``error``/``value``), and eachElem then returns its value.

        Extensions: ``chunkSize`` elements per task record (default: chosen from the number
        of elements and workers), ``progress`` draws a progress bar, ``timeout`` in seconds.
        """
        items = list(zip(*_element_columns(elementArgs)))
        workers = max(1, self.workerCount)
        if chunkSize is not None:
            bounds: Iterable = tasks.even_chunks(len(items), max(1, chunkSize))
        elif loadFactor:
            bounds = tasks.even_chunks(len(items), 1)
        else:
            bounds = tasks.guided_chunks(len(items), workers)
        window = loadFactor * workers * (chunkSize or 1) if loadFactor else None
        key = self._function_key(fun, fixedArgs, argPermute)
        batch = self._new_batch(fun, key, len(items), window, accumulator=accumulator)
        batch.source = ((_TASK, (batch.id, a, key, items[a:b], None, 0)) for a, b in bounds)
        return self._run(batch, blocking, timeout, progress)

    def eachWorker(self, fun: Callable, *workerArgs: Any, blocking: bool = True,
                   accumulator: Any = None, timeout: float | None = None,
                   progress: bool = False) -> Any:
        """Call ``fun(*workerArgs)`` once on every worker -> the results in rank order.
        Each worker gets its own task in ``task@<rank>``, which it takes before shared ones."""
        with self._cond:
            ranks = sorted(self._workers)
        key = self._function_key(fun)
        batch = self._new_batch(fun, key, len(ranks), None, accumulator=accumulator)
        batch.source = ((own_task_var(rank).encode(), (batch.id, i, key, [workerArgs], None, 0))
                        for i, rank in enumerate(ranks))
        return self._run(batch, blocking, timeout, progress)

    def imap(self, fun: Callable, *iterables: Iterable, loadFactor: int = 10,
             chunksize: int = 1, progress: bool = False,
             timeout: float | None = None) -> SleighResultIterator:
        """``fun`` over the zipped iterables, lazily -> an iterator of the results in order.
        At most loadFactor x workers tasks are in flight or waiting to be read, so infinite
        inputs work. A failed task's value is its RemoteError. ``timeout``: seconds to wait
        for each result (TimeoutError)."""
        return self._lazy(fun, zip(*iterables), loadFactor, chunksize, progress, timeout)

    def starmap(self, fun: Callable, iterable: Iterable[Sequence], loadFactor: int = 10,
                chunksize: int = 1, progress: bool = False,
                timeout: float | None = None) -> SleighResultIterator:
        """Like imap, each item being the argument tuple of one call."""
        return self._lazy(fun, (tuple(args) for args in iterable), loadFactor, chunksize,
                          progress, timeout)

    def _lazy(self, fun: Callable, items: Iterator[tuple], loadFactor: int, chunksize: int,
              progress: bool, timeout: float | None) -> SleighResultIterator:
        chunksize = max(1, chunksize)
        key = self._function_key(fun)
        window = max(1, loadFactor) * max(1, self.workerCount) * chunksize
        batch = self._new_batch(fun, key, None, window, by_consumer=True)
        batch.source = _chunked_records(batch.id, key, items, chunksize)
        self._feed_or_cancel(batch)
        return SleighResultIterator(self, batch, progress=progress, each_timeout=timeout)

    def status(self) -> SleighStatus:
        """Workers, tasks in flight, waiting calls, deaths."""
        with self._cond:
            return SleighStatus(len(self._workers), sorted(self._workers),
                                sum(b.in_flight() for b in self._batches.values()),
                                len(self._batches), self._deaths, self._duplicates,
                                self._stopped)

    def workerInfo(self) -> list[dict]:
        """What each worker said about itself: rank, host, pid, python and workbench
        versions, executable, platform; in rank order."""
        with self._cond:
            return [dict(self._workers[rank]) for rank in sorted(self._workers)]

    def stop(self) -> None:
        """End the sleigh: its workspaces are deleted, so workers leave; every worker this
        sleigh started is gone when this returns. Calls still waiting raise SleighError."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopping = self._shutdown = True
        _live.discard(self)
        if self._sender is not None:
            self._sender.stop()
        with self._cond:
            outstanding = list(self._batches.values())
        self._cancel(outstanding)  # interrupts running tasks, so busy workers leave at once
        stopped = SleighError("the sleigh was stopped")
        with self._cond:
            for batch in outstanding:
                batch.error = stopped
        self._stopped = True
        for ws in (getattr(self, "userNws", None), getattr(self, "nws", None)):
            if ws is not None:
                try:
                    self._server.deleteWs(ws.currentWs())
                except NwsException:
                    pass  # the broker is gone, or purged it already
        stop_all(self._supervisors)
        if self._collector is not None and self._collector.is_alive():
            self._collector.join(2.0)
        self._fail_all(stopped)
        self._server.close()

    # ------------------------------------------------------------------ Executor API

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> SleighFuture:
        """Run ``fn(*args, **kwargs)`` on a worker -> a concurrent.futures Future. A failed
        task raises RemoteError from ``result()``."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        key = self._function_key(fn)
        batch = self._new_batch(fn, key, 1, None)
        future = batch.future = SleighFuture(self, batch)
        batch.submitted = 1
        sender = self._sender
        if sender is None:
            with self._stop_lock:
                if self._sender is None:
                    self._sender = _Sender(self)
                    self._sender.start()
                sender = self._sender
        sender.put(batch, (batch.id, 0, key, [args], kwargs or None, 0))
        return future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1, progress: bool = False) -> SleighResultIterator:
        """``fn`` over the zipped iterables -> an iterator of results in order; a failed task
        raises its RemoteError when its turn comes. The iterables are read at once;
        ``timeout`` counts from this call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        items = list(zip(*iterables))
        key = self._function_key(fn)
        batch = self._new_batch(fn, key, len(items), None)
        batch.source = ((_TASK, (batch.id, a, key, items[a:b], None, 0))
                        for a, b in tasks.even_chunks(len(items), max(1, chunksize)))
        self._feed_or_cancel(batch)
        return SleighResultIterator(self, batch, raise_errors=True, deadline=deadline,
                                    progress=progress)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work; ``cancel_futures`` cancels what has not come back; ``wait`` waits for
        the rest, then stops the sleigh (without waiting: in the background)."""
        self._shutdown = True
        if cancel_futures:
            with self._cond:
                pending = [b for b in self._batches.values() if b.future is not None]
            self._cancel(pending)
        if wait:
            self._drain()
            self.stop()
        else:
            threading.Thread(target=lambda: (self._drain(), self.stop()), daemon=True,
                             name=f"sleigh-shutdown-{self.wsName}").start()

    def _drain(self) -> None:
        """Wait until every submitted future is done."""
        with self._cond:
            while (any(b.future is not None for b in self._batches.values())
                   and not self._failure and not self._stopped):
                self._cond.wait(WAIT_SLICE)

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        """Leaving normally waits for submitted futures (the Executor contract), then stops;
        leaving by an exception stops at once, cancelling what is left."""
        try:
            if exc_type is None:
                self._drain()
        finally:
            self.stop()

    # ------------------------------------------------------------------ sending

    def _new_batch(self, fn: Any, key: str, total: int | None, window: int | None,
                   by_consumer: bool = False, accumulator: Any = None) -> Batch:
        if self._stopped:
            raise SleighError("the sleigh was stopped")
        batch = Batch(next(self._batch_ids), tasks.function_label(fn), key, total, window,
                      by_consumer, accumulator)
        with self._cond:
            self._batches[batch.id] = batch
            self._functions[key] = self._functions.get(key, 0) + 1
        return batch

    def _function_key(self, fn: Callable, fixed: Sequence = (),
                      permute: Sequence[int] | None = None) -> str:
        """Store the function spec once, under the hash of its pickle -> its key."""
        if not callable(fn):
            raise TypeError(f"a sleigh runs callables, not {type(fn).__name__}")
        key, data = tasks.pack_function(fn, fixed, permute)
        with self._cond:
            known = key in self._functions
            if known:
                self._functions.move_to_end(key)
        if not known:
            name = FUNCTION_PREFIX + key
            self.nws.declare(name, "single")
            self.nws.store(name, data)
            with self._cond:
                self._functions.setdefault(key, 0)
            self._forget_functions()
        return key

    def _forget_functions(self) -> None:
        with self._cond:
            idle = [key for key, users in self._functions.items() if not users]
            surplus = len(self._functions) - FUNCTIONS_KEPT
            doomed = idle[:max(0, surplus)]
            for key in doomed:
                del self._functions[key]
        for key in doomed:
            try:
                self.nws.deleteVar(FUNCTION_PREFIX + key)
            except NwsException:
                pass

    def _run(self, batch: Batch, blocking: bool, timeout: float | None, progress: bool) -> Any:
        self._feed_or_cancel(batch)
        if not blocking:
            return SleighPending(self, batch)
        try:
            return self._finish(batch, timeout, progress)
        except BaseException:
            self._cancel([batch])
            raise

    def _feed_or_cancel(self, batch: Batch) -> None:
        try:
            self._feed(batch)
        except BaseException:
            self._cancel([batch])
            raise

    def _feed(self, batch: Batch) -> None:
        """Send the batch's records while its window has room (all, without a window)."""
        if batch.source is None:
            return
        with batch.feed_lock:
            room = batch.room()
            group: list[tuple[bytes, tuple]] = []
            sent = group_items = 0
            exhausted = False
            while room is None or sent + group_items < room:
                if batch.source is None or batch.cancelled:
                    break
                try:
                    pair = next(batch.source)
                except StopIteration:
                    exhausted = True
                    break
                group.append(pair)
                group_items += len(pair[1][ITEMS])
                if len(group) >= STORE_GROUP:
                    self._store_records(group)
                    self._sent(batch, group_items, False)
                    sent += group_items
                    group, group_items = [], 0
            if group:
                self._store_records(group)
            self._sent(batch, group_items, exhausted)

    def _sent(self, batch: Batch, count: int, exhausted: bool) -> None:
        with self._cond:
            batch.submitted += count
            if exhausted:
                batch.source = None
                batch.total = batch.submitted
                self._settle(batch)
            self._cond.notify_all()

    def _end_source(self, batch: Batch) -> None:
        with batch.feed_lock, self._cond:
            batch.source = None
            batch.total = batch.submitted
            self._settle(batch)
            self._cond.notify_all()

    def _store_records(self, pairs: list[tuple[bytes, tuple]]) -> None:
        """Store task records: many per STORE_MANY request, large ones alone through shared
        memory."""
        connection = self._connection
        for var, group in itertools.groupby(pairs, key=lambda pair: pair[0]):
            small: list[list] = []
            size = 0
            for _, record in group:
                frames = tasks.encode_task(record)
                if len(frames) > 1 and tasks.frames_size(frames[1:]) >= shm.THRESHOLD:
                    connection.read(Op.STORE, [self._wsb, var], frames)
                    continue
                small.append(frames)
                size += tasks.frames_size(frames)
                if len(small) >= STORE_GROUP or size >= STORE_BYTES:
                    self._store_many(var, small)
                    small, size = [], 0
            if small:
                self._store_many(var, small)

    def _store_many(self, var: bytes, encoded: list[list]) -> None:
        self._connection.read(Op.STORE_MANY, [self._wsb, var], pack_many(encoded),
                              spill=False)

    # ------------------------------------------------------------------ waiting

    def _finish(self, batch: Batch, timeout: float | None, progress: bool) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = self._progress_bar(batch) if progress else None
        try:
            self._wait_for(batch, lambda: batch.finished, deadline, bar)
        finally:
            if bar is not None:
                bar.close()
        batch.check()
        if batch.accumulator is not None:
            return accumulated(batch.accumulator)
        return batch.ordered()

    def _wait_for(self, batch: Batch, ready: Callable[[], bool], deadline: float | None,
                  bar: Any = None) -> bool:
        """Wait in this thread until ``ready()`` or the batch ends -> ``ready()``. Runs the
        batch's accumulator and progress bar here; Ctrl-C cancels the batch."""
        try:
            while True:
                with self._cond:
                    done = ready() or batch.finished
                    if not done:
                        if self._failure and batch.error is None:
                            raise SleighError(self._failure)
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            raise TimeoutError(f"batch {batch.id} ({batch.label}): "
                                               f"{batch.done} of {batch.total} results came "
                                               "in time")
                        self._cond.wait(WAIT_SLICE if remaining is None
                                        else min(WAIT_SLICE, remaining))
                        done = ready() or batch.finished
                    arrivals = None
                    if batch.arrivals:
                        arrivals, batch.arrivals = batch.arrivals, []
                if arrivals:
                    accumulate(batch.accumulator, arrivals, batch.failed)
                if bar is not None:
                    if bar.total != batch.total:
                        bar.total = batch.total
                    bar.update(batch.done - bar.n)
                if done:
                    return ready()
        except KeyboardInterrupt:
            self._cancel([batch])
            raise

    def _progress_bar(self, batch: Batch) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tqdm.auto's notice about notebook mode
            from tqdm.auto import tqdm

            return tqdm(total=batch.total, desc=batch.label, unit="task")

    # ------------------------------------------------------------------ cancelling

    def _cancel(self, batches: Sequence[Batch]) -> None:
        """Give up batches: forget them here, tell the workers (who skip their queued tasks
        and interrupt the running ones), fail their futures."""
        ids = []
        with self._cond:
            for batch in batches:
                if batch.finished:
                    continue
                batch.cancelled = True
                batch.source = None
                self._release(batch)
                ids.append(batch.id)
            self._cond.notify_all()
        for batch in batches:
            if batch.future is not None and batch.id in ids:
                batch.future.cancel()
        if not ids or self._stopped or self._connection.closed:
            return
        self._cancelled_ids.extend(ids)
        try:
            if self._bus is None:
                self._bus = MessageBus(self._connection)
            self._bus.publish(cancel_identifier(self.wsName), ids)
            self.nws.store(CANCELLED_VAR, list(self._cancelled_ids))
        except NwsException as exc:
            log.warning("could not tell the workers of sleigh %s to cancel: %s", self.wsName, exc)

    def _release(self, batch: Batch) -> None:
        """Under the condition: the batch is over; forget it."""
        if self._batches.pop(batch.id, None) is not None and self._functions.get(batch.key):
            self._functions[batch.key] -= 1

    def _settle(self, batch: Batch) -> None:
        """Under the condition: if the batch just completed, forget it."""
        if batch.finished and batch.id in self._batches:
            self._release(batch)
            if batch.future is not None:  # resolved by the collector, outside the lock
                batch.resolution = (batch.results.get(0), 0 in batch.failed)

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            batches = list(self._batches.values())
            for batch in batches:
                batch.error = error
                batch.source = None
                self._release(batch)
            self._cond.notify_all()
        for batch in batches:
            if batch.future is not None:
                batch.future._fail(error)

    # ------------------------------------------------------------------ collecting

    def _collect(self) -> None:
        """The collector thread: take result values in bulk, file them by batch."""
        args = [self._wsb, RESULT.encode(), b"%d" % COLLECT_MOST, b"1"]
        try:
            while True:
                _, (head, frames) = self._connection.read(Op.FETCH_MANY, args, (), None,
                                                          leased=True)
                for value_frames, _ in split_many(head, frames):
                    try:
                        decoded = tasks.decode_tolerant(value_frames)
                    except Exception:
                        log.exception("sleigh %s: a result value could not be decoded",
                                      self.wsName)
                        continue
                    if decoded.missing:
                        log.warning("sleigh %s: results contain what this process cannot "
                                    "import: %s", self.wsName, "; ".join(decoded.missing))
                    for entry in decoded.value:
                        self._receive(entry)
        except (NwsNoWorkSpaceException, NwsConnectionDroppedException) as exc:
            if not self._stopping:
                self._break(f"sleigh {self.wsName} lost its workspace: {exc}")
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            if not self._stopping:
                log.exception("sleigh %s: the collector failed", self.wsName)
                self._break(f"sleigh {self.wsName}: the collector failed: {exc!r}")

    def _break(self, reason: str) -> None:
        with self._cond:
            self._failure = reason
        self._fail_all(SleighError(reason))

    def _receive(self, entry: tuple) -> None:
        batch_id = entry[0]
        if batch_id == 0:
            self._control(entry)
            return
        _, tag0, rank, values, errors, outputs = entry
        if outputs:
            _print_output(rank, outputs)
        batch = self._batches.get(batch_id)
        if batch is None:
            return  # finished, cancelled, or a duplicate from a worker that died
        failures = dict(errors) if errors else None
        with self._cond:
            if batch.finished:
                return
            results, arrivals, floor = batch.results, batch.arrivals, batch.consumed
            added = 0
            for index, value in enumerate(values):
                tag = tag0 + index
                if tag in results or tag < floor:
                    self._duplicates += 1  # its worker died before the ack reached the broker
                    continue
                if failures is not None and index in failures:
                    value = RemoteError.from_info(failures[index], rank, tag)
                    batch.failed.add(tag)
                results[tag] = value
                added += 1
                if arrivals is not None:
                    arrivals.append((tag, value))
            batch.done += added
            self._settle(batch)
            resolution = batch.resolution
            self._cond.notify_all()
        if resolution is not None and batch.future is not None:
            batch.future._resolve(*resolution)
        if batch.source is not None and not batch.by_consumer:
            try:
                self._feed(batch)
            except NwsException as exc:
                with self._cond:
                    batch.error = exc
                    self._release(batch)
                    self._cond.notify_all()

    def _control(self, entry: tuple) -> None:
        _, kind, rank, payload = entry
        if kind != tasks.HELLO:
            return
        with self._cond:
            self._workers[rank] = payload
            self._hellos[rank] = self._hellos.get(rank, 0) + 1
            count = len(self._workers)
            self._cond.notify_all()
        if rank >= len(self._supervisors):  # a worker that joined by itself
            try:
                self.nws.store(WORKER_COUNT, count)
            except NwsException:
                pass

    # ------------------------------------------------------------------ supervision

    def _hello_count(self, rank: int) -> int:
        with self._cond:
            return self._hellos.get(rank, 0)

    def _worker_died(self, rank: int, process: Any, tail: str) -> bool:
        """A launched worker died: end its broker session now (its leased tasks go back at
        once), say so, and start a replacement -> whether to."""
        if self._stopping:
            return False
        with self._cond:
            info = self._workers.get(rank)
            self._deaths += 1
        if isinstance(self._supervisors[rank].launcher, LocalLauncher) or info is None:
            host, pid = socket.gethostname(), process.pid  # a local worker is its process
        else:
            host, pid = info["host"], info["pid"]
        try:
            self._connection.call(Op.END_SESSION, [host.encode(), b"%d" % pid], timeout=5.0)
        except NwsException as exc:
            log.warning("sleigh %s: could not end the session of dead worker %d: %s",
                        self.wsName, rank, exc)
        log.warning("worker %d (pid %d) died %s; started a replacement%s", rank, pid,
                    describe_exit(process.returncode),
                    f"; its last output:\n{tail}" if tail else "")
        return True

    # PEP 8 names: the same functions.
    each_elem = eachElem
    each_worker = eachWorker
    worker_info = workerInfo


class _Sender(threading.Thread):
    """Stores the tasks of ``submit`` calls: whatever piled up while the previous request was
    in flight goes in one STORE_MANY, so a loop of submits costs few round trips."""

    def __init__(self, sleigh: Sleigh) -> None:
        super().__init__(name=f"sleigh-sender-{sleigh.wsName}", daemon=True)
        self._sleigh = sleigh
        self._queue: deque[tuple[Batch, tuple]] = deque()
        self._wake = threading.Condition()
        self._stopping = False

    def put(self, batch: Batch, record: tuple) -> None:
        with self._wake:
            self._queue.append((batch, record))
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(2.0)

    def run(self) -> None:
        sleigh = self._sleigh
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                taken = list(self._queue)
                self._queue.clear()
            live = [(batch, record) for batch, record in taken if not batch.cancelled]
            try:
                sleigh._store_records([(_TASK, record) for _, record in live])
            except Exception as exc:  # noqa: BLE001 - reported through the futures
                for batch, _ in live:
                    with sleigh._cond:
                        batch.error = exc
                        sleigh._release(batch)
                        sleigh._cond.notify_all()
                    batch.future._fail(exc)


def _connect(broker: str | None, host: str | None, port: int | None) -> Connection:
    if broker:
        address = normalize_address(broker)
        return Connection(address, CONNECT_TIMEOUT, hint=start_hint(address))
    return connect(host, port)


def _element_columns(elementArgs: Any) -> list:
    """NetWorkSpaces' reading of elementArgs: a list whose first item is a list is a list of
    argument lists (zipped); anything else is the one list of elements."""
    if elementArgs is None:
        return [[]]
    if isinstance(elementArgs, list) and elementArgs and isinstance(elementArgs[0], list):
        return elementArgs
    return [elementArgs]


def _chunked_records(batch: int, key: str, items: Iterator[tuple], size: int
                     ) -> Iterator[tuple[bytes, tuple]]:
    tag = 0
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield _TASK, (batch, tag, key, chunk, None, 0)
        tag += len(chunk)


def _print_output(rank: int, outputs: list) -> None:
    """What a task printed, in the master's streams, each line labelled with its worker."""
    for _, out, err in outputs:
        for text, stream in ((out, sys.stdout), (err, sys.stderr)):
            if text:
                stream.write("".join(f"[worker {rank}] {line}\n" for line in text.splitlines()))
                stream.flush()


@atexit.register
def _stop_all_at_exit() -> None:
    for sleigh in list(_live):
        try:
            sleigh.stop()
        except Exception:
            pass
