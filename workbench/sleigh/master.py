"""``Sleigh``: a pool of worker processes fed through a workspace, with the NetWorkSpaces API
(eachElem, eachWorker, imap, starmap, status, workerInfo) and the ``concurrent.futures``
Executor API (submit, map, shutdown). This module is the API and the pool's life (start,
supervision policy, stop); the parts it composes own the rest:

* ``scheduler.Scheduler``: the calls in flight, their results, the roster, the counters;
* ``dispatch.Dispatcher``: the traffic with the broker (tasks out, results and farewells in);
* ``launchers``: starting, watching and stopping the workers;
* ``pending``: what callers hold while calls run.

Everything flows through the sleigh's workspace, owned by the master so that the broker purges
it when the master's session ends (workers then exit): tasks in ``task`` (and ``task@<rank>``
for eachWorker), results in ``result``, functions in ``__function:<key>``, worker descriptions
in ``worker@<rank>``, farewells in ``farewell@<rank>.<session>``; ``listVars`` shows all of it.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import threading
import time
import warnings
import weakref
from concurrent.futures import Executor
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..client.cluster import is_several, temp_name
from ..client.connection import Connection
from ..client.embedded import connect
from ..client.keyvalue import KeyValueStore
from ..client.workspace import NetWorkSpace, NwsServer
from ..config import SLEIGH_START_TIMEOUT
from ..connection_file import resolve
from ..errors import (
    NwsConnectException, NwsConnectionDroppedException, NwsException, NwsNoWorkSpaceException,
    NwsVariableDeletedException,
)
from . import elements, tasks
from .batch import Batch
from .dispatch import Dispatcher
from .errors import (
    SleighError, SleighIllegalValueException, SleighNotAllowedException, SleighStoppedException,
)
from .events import GroupStatus, SleighStatus, Subscription
from .launchers import (
    QUEUED, RUNNING, STARTING, WATCHED, ByHand, Launcher, SleighInfo, WorkerExit,
    describe_exit, describe_worker, launcher_for, wait_for, worker_argv, worker_count,
)
from .options import (
    WorkerSetup, check_template, sleigh_options, verbose_logging, worker_broker,
)
from .pending import SleighFuture, SleighPending, SleighResultIterator, finish
from .scheduler import Scheduler
from .tasks import TASK_FORMAT, Hello, TaskRecord
from .worker import CANCELLED_VAR, RANK_COUNTER, WORKER_COUNT, WORKER_ENV

log = logging.getLogger("workbench.sleigh")

#: ``launch='web'``: deleting this variable says that all the workers started by hand joined.
BY_HAND_VAR = "deleteMeWhenAllWorkersStarted"
#: Seconds launch='web' waits, once told the workers started, for the hellos of those that
#: announced themselves to reach the master.
BY_HAND_JOIN_TIMEOUT = 10.0

_live: weakref.WeakSet = weakref.WeakSet()


class Sleigh(Executor):
    """A pool of worker processes that run Python functions, fed through a workspace.

    ``Sleigh(workerCount=N)`` starts N workers on this machine (default: one per CPU) and
    returns once all have joined. ``launch='ssh'`` with ``nodeList=[host, ...]`` starts them
    with ssh; ``launch=client`` (a ``distributed.Client``) runs one per Dask worker of its
    cluster; a callable ``launch(argv, rank)`` starts them any other way, and so does an
    object that implements ``workbench.sleigh.launchers.Launcher``. Any process that reaches
    the broker can join with ``workbench worker --broker ADDR --sleigh NAME``.

    ``broker`` (or ``nwsHost``/``nwsPort``) names the broker, by its address or its
    connection file (``nwsPort`` is then ignored); by default it is found like a
    NetWorkSpace's. ``workerBroker`` is the address workers should use, if they see the
    broker under another name. Use as a context manager, or call ``stop()``.
    """

    def __init__(self, workerCount: int | None = None,
                 launch: str | Callable | Launcher | None = None,
                 nodeList: Sequence[str] | None = None, *, broker: str | Sequence[str] | None = None,
                 nwsHost: str | None = None, nwsPort: int | None = None,
                 workerBroker: str | None = None, wsNameTemplate: str | None = None,
                 userWsNameTemplate: str | None = None,
                 startTimeout: float = SLEIGH_START_TIMEOUT,
                 python: str | None = None, ssh: Sequence[str] = ("ssh",),
                 env: dict | None = None, verbose: bool | None = None,
                 workingDir: str | None = None, modulePath: str | None = None,
                 logDir: str | None = None, redirectOutput: bool | None = None,
                 user: str | None = None, nwsHostRemote: str | None = None,
                 nwsPortRemote: int | None = None, scriptExec: Callable | None = None,
                 scriptDir: str | None = None, scriptName: str | None = None,
                 outfile: str | None = None, passwd: str | None = None) -> None:
        if os.environ.get(WORKER_ENV):
            raise SleighNotAllowedException("a sleigh worker cannot start a sleigh of its own")
        if isinstance(workerCount, list):  # NetWorkSpaces' old form: Sleigh(nodeList)
            warnings.warn("nodeList should be passed using the nodeList keyword",
                          DeprecationWarning, stacklevel=2)
            workerCount, nodeList = None, nodeList or workerCount
        options = sleigh_options({
            "workerCount": workerCount, "launch": launch, "nodeList": nodeList,
            "nwsHost": nwsHost, "nwsPort": nwsPort, "wsNameTemplate": wsNameTemplate,
            "userWsNameTemplate": userWsNameTemplate, "verbose": verbose,
            "workingDir": workingDir, "modulePath": modulePath, "logDir": logDir,
            "redirectOutput": redirectOutput, "user": user, "nwsHostRemote": nwsHostRemote,
            "nwsPortRemote": nwsPortRemote, "scriptExec": scriptExec, "scriptDir": scriptDir,
            "scriptName": scriptName, "outfile": outfile, "passwd": passwd})
        #: The NetWorkSpaces options this sleigh was made with (defaultSleighOptions, then
        #: what the call gave), as ``nws.sleigh.Sleigh.options`` held them.
        self.options = options
        launch, workerCount = options["launch"], options["workerCount"]
        if workerCount is not None and (isinstance(workerCount, bool)
                                        or not isinstance(workerCount, int) or workerCount < 0):
            raise SleighIllegalValueException(
                f"workerCount must be a whole number, 0 or more, not {workerCount!r}")
        if launch == "service":
            raise SleighIllegalValueException(
                "launch='service' (NetWorkSpaces' PySleighService daemons) is not supported: "
                "start workers with 'local', 'ssh', a launch function, or by hand with "
                "`workbench worker --sleigh NAME` (launch='web')")
        for name in ("wsNameTemplate", "userWsNameTemplate"):
            check_template(name, options[name])
        setup = WorkerSetup.from_options(options)
        workerBroker = workerBroker or worker_broker(options)
        if options["user"] and launch == "ssh":
            ssh = (*ssh, "-l", str(options["user"]))
        if options["verbose"]:
            verbose_logging()
        self._stopped = False
        self._stopping = False
        self._shutdown = False
        self._stop_lock = threading.Lock()
        self._scheduler = Scheduler()
        self._launcher: Launcher | None = None
        self._launched = 0  # ranks below this are the launcher's
        self._dispatcher: Dispatcher | None = None
        #: Several brokers acting as one (``broker`` named them): the sleigh's workspaces live
        #: on the one its workspace's name is placed on, where its workers connect.
        self._cluster = NwsServer(broker) if is_several(broker) else None
        self._home_name = None
        if self._cluster is not None:
            self._home_name = self._cluster.mktempWs(options["wsNameTemplate"])
            self._connection = self._cluster.connection_for(self._home_name)
        else:
            self._connection = _connect(broker, options["nwsHost"], options["nwsPort"])
        self._server = NwsServer(connection=self._connection)
        try:
            if launch == "web":
                launcher = launcher_for(ByHand())
            else:
                launcher = launcher_for(launch, options["nodeList"], python, ssh, env, options,
                                        setup)
            self._start(workerCount, launcher, options["nodeList"] if launch == "ssh" else None,
                        workerBroker, options["wsNameTemplate"],
                        options["userWsNameTemplate"], startTimeout)
            if launch == "web":
                self._wait_by_hand(workerBroker)
        except BaseException:
            self.stop()
            raise
        _live.add(self)

    def _start(self, workerCount, launcher, sshNodes, workerBroker, wsNameTemplate,
               userWsNameTemplate, startTimeout) -> None:
        server = self._server
        self.wsName = self._home_name or server.mktempWs(wsNameTemplate)
        # On a broker with a data directory the sleigh's workspaces are persistent, so its
        # tasks and results outlive the broker's restart; stop() deletes them either way.
        durable = self._connection.durable
        self.nws: NetWorkSpace = server.openWs(self.wsName, persistent=durable)
        if self._cluster is None:
            user_name = server.mktempWs(userWsNameTemplate)
        else:  # a name the cluster places where the workers are
            brokers = self._cluster.brokers
            user_name = temp_name(userWsNameTemplate, brokers.members,
                                  on=brokers.place(self.wsName))
        self.userNws: NetWorkSpace = server.openWs(user_name, persistent=durable)
        workerCount = worker_count(launcher, workerCount)
        if workerCount is None:
            workerCount = len(sshNodes) if sshNodes else os.cpu_count() or 1
        ws = self.nws
        for name, value in ((WORKER_COUNT, workerCount), ("userWs", self.userNws.currentWs()),
                            (CANCELLED_VAR, [])):
            ws.declare(name, "single")
            ws.store(name, value)
        KeyValueStore(connection=self._connection, workspace=self.wsName).store(
            RANK_COUNTER, workerCount)
        self._launcher, self._launched = launcher, workerCount
        self._dispatcher = Dispatcher(self._scheduler, self._connection, ws, self._joined,
                                      self._farewell)
        self._dispatcher.start()
        target = resolve(workerBroker) if workerBroker else self._connection.target
        self._worker_target = target
        launcher.start(SleighInfo(self.wsName, target.address, self._worker_exited,
                                  self._scheduler.joins,
                                  target.to_json() if target.curve else None, self._new_rank),
                       workerCount)
        self._wait_ready(workerCount, wait_for(launcher, workerCount), startTimeout)

    def _wait_by_hand(self, workerBroker: str | None) -> None:
        """``launch='web'``, as NetWorkSpaces did it: the command that starts a worker is in
        the workspace variable ``runMe``; whoever starts workers by hand deletes the variable
        ``deleteMeWhenAllWorkersStarted`` (in the web UI, or with deleteVar) once they have
        joined, and the sleigh goes on with the workers that joined by then."""
        ws = self.nws
        target = self._worker_target
        ws.store("runMe", shlex.join(worker_argv(target.address, self.wsName, None, "python")))
        ws.declare(BY_HAND_VAR, "fifo")
        try:
            ws.fetch(BY_HAND_VAR)  # no value ever comes: this waits until it is deleted
        except NwsVariableDeletedException:
            pass
        try:
            ws.deleteVar("runMe")
        except NwsException:
            pass
        # A worker that announced itself (its worker@rank variable) has joined: its hello is
        # on its way to the collector, which may not have read it yet.
        announced = [rank for rank in map(tasks.worker_rank, ws.listVars(format="dict"))
                     if rank is not None]
        deadline = time.monotonic() + BY_HAND_JOIN_TIMEOUT
        while (announced and self._scheduler.wait_joined(announced, deadline) < len(announced)
               and time.monotonic() < deadline):
            pass

    def _wait_ready(self, count: int, needed: int, timeout: float) -> None:
        """Wait until ``needed`` of the ``count`` launched workers have joined; fail when so
        many were given up that ``needed`` cannot join (a batch pool waiting for one worker
        goes on while one job of several fails)."""
        deadline = time.monotonic() + timeout
        ranks = range(count)
        while (joined := self._scheduler.wait_joined(ranks, deadline)) < needed:
            launched = self._launcher.running()
            failures = [w.failure for w in launched if w.failure]
            if failures and len(launched) - len(failures) < needed:  # it cannot come now
                raise SleighError("; ".join(failures))
            if self._scheduler.failure:
                raise SleighError(self._scheduler.failure)
            if time.monotonic() >= deadline:
                raise SleighError(
                    f"only {joined} of {needed} workers joined sleigh {self.wsName} within "
                    f"{timeout:g} s (startTimeout); workers need to reach the broker at "
                    f"{self._connection.address} and import workbench")

    # ------------------------------------------------------------------ properties

    @property
    def workerCount(self) -> int:
        """Workers that have joined (launched or not)."""
        return len(self._scheduler.ranks())

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"{self.workerCount} workers"
        return f"<Sleigh {getattr(self, 'wsName', '?')} {state}>"

    def _repr_html_(self) -> str:
        """In a notebook: the workers (rank, host, pid) and the work in flight."""
        from html import escape

        status, info = self.state(), self.workerInfo()
        title = (f"<b>Sleigh {escape(getattr(self, 'wsName', '?'))}</b> at "
                 f"{escape(self._connection.address)}: "
                 + ("stopped" if status.stopped else f"{status.workers} workers"))
        work = (f"{status.outstanding} tasks in flight, {status.batches} calls waiting, "
                f"{status.deaths} worker deaths")
        rows = "".join(f"<tr><td>{w['rank']}</td><td>{escape(describe_worker(w))}</td>"
                       f"<td>{escape(str(w['host'] or ''))}</td><td>{w['pid'] or ''}</td></tr>"
                       for w in info)
        return (f"<div>{title}</div><div>{work}</div><table><tr><th>rank</th><th>state</th>"
                f"<th>host</th><th>pid</th></tr>{rows}</table>")

    def __reduce__(self) -> Any:
        raise TypeError("a Sleigh cannot travel to its workers (did a task function refer to "
                        "it?); tasks reach the sleigh's workspace as SleighNws")

    # ------------------------------------------------------------------ NetWorkSpaces API

    def eachElem(self, fun: Callable | str, elementArgs: Any = None, fixedArgs: Any = None,
                 argPermute: list[int] | None = None, loadFactor: int = 0,
                 blocking: bool = True, accumulator: Any = None, *,
                 type: str | None = None, chunkSize: int | None = None,
                 progress: bool = False, timeout: float | None = None) -> Any:
        """Call ``fun`` once per element -> the results, in element order.

        ``elementArgs`` as NetWorkSpaces read it: a list whose first item is iterable
        (a list, tuple, range, string...) holds one argument list per argument (zipped,
        stopping at the shortest); any other list, or anything else iterable, is the one list
        of elements. ``fixedArgs`` (a list, or one argument) are appended to every call's
        arguments; ``argPermute`` (a list) then reorders or selects them by index. ``fun``
        may be a string: an expression or statements run on the worker with the arguments
        as ``SleighArgs`` (``type='eval'``); ``type='define'`` puts a function into the
        strings' namespace. A failed task's result is its ``SleighTaskException``
        (RemoteError). ``loadFactor`` keeps at most loadFactor x workers tasks queued.
        ``blocking=False`` returns a SleighPending. ``accumulator`` is called once per result
        with ``[(tag, value)]`` (its ``error``, else ``result``, else itself), and eachElem
        then returns its ``value()``. Illegal values raise SleighIllegalValueException.

        Extensions: ``chunkSize`` elements per task record (default: chosen from the number
        of elements and workers), ``progress`` draws a progress bar, ``timeout`` in seconds.
        """
        fn = elements.task_function(fun, type)
        fixed = elements.fixed_args(fixedArgs)
        if argPermute is not None and not isinstance(argPermute, list):
            raise SleighIllegalValueException("argPermute must be a list")
        elements.check_accumulator(accumulator)
        columns, bare = tasks.call_elements(elements.element_lists(elementArgs))
        items = list(columns)
        workers = max(1, self.workerCount)
        if chunkSize is not None:
            bounds: Iterable = tasks.even_chunks(len(items), max(1, chunkSize))
        elif loadFactor:
            bounds = tasks.even_chunks(len(items), 1)
        else:
            bounds = tasks.guided_chunks(len(items), workers)
        window = loadFactor * workers * (chunkSize or 1) if loadFactor else None
        key = self._function_key(fn, fixed, argPermute)
        batch = self._open(fn, key, len(items), window, accumulator=accumulator,
                           records=lambda batch: tasks.records(batch, key, items, bounds,
                                                               bare=bare))
        return self._run(batch, blocking, timeout, progress)

    def eachWorker(self, fun: Callable | str, *workerArgs: Any, blocking: bool = True,
                   accumulator: Any = None, type: str | None = None,
                   timeout: float | None = None, progress: bool = False) -> Any:
        """Call ``fun(*workerArgs)`` once on every worker -> the results in rank order.
        Each worker gets its own task in ``task@<rank>``, which it takes before shared ones.
        A worker that leaves the sleigh before answering (its broker session ended, and no
        launcher replaces it) is left out of the results. ``fun``, ``type`` and
        ``accumulator`` as for eachElem."""
        fn = elements.task_function(fun, type)
        elements.check_accumulator(accumulator)
        ranks = self._scheduler.ranks()
        key = self._function_key(fn)
        batch = self._open(fn, key, len(ranks), None, accumulator=accumulator,
                           records=lambda batch: tasks.own_records(batch, key, ranks, workerArgs),
                           targets=ranks)
        return self._run(batch, blocking, timeout, progress)

    def imap(self, fun: Callable | str, *iterables: Iterable, loadFactor: int = 10,
             chunksize: int = 1, progress: bool = False, timeout: float | None = None,
             type: str | None = None) -> SleighResultIterator:
        """``fun`` over the zipped iterables, lazily -> an iterator of the results in order.
        At most loadFactor x workers tasks are in flight or waiting to be read, so infinite
        inputs work. A failed task's value is its RemoteError. ``timeout``: seconds to wait
        for each result (TimeoutError). ``fun`` and ``type`` as for eachElem."""
        items, bare = tasks.call_elements(iterables)
        return self._lazy(elements.task_function(fun, type), iter(items), loadFactor,
                          chunksize, progress, timeout, bare)

    def starmap(self, fun: Callable | str, iterable: Iterable[Sequence], loadFactor: int = 10,
                chunksize: int = 1, progress: bool = False, timeout: float | None = None,
                type: str | None = None) -> SleighResultIterator:
        """Like imap, each item being the argument tuple of one call."""
        return self._lazy(elements.task_function(fun, type), (tuple(args) for args in iterable),
                          loadFactor, chunksize, progress, timeout)

    def _lazy(self, fun: Callable, items: Iterator, loadFactor: int, chunksize: int,
              progress: bool, timeout: float | None, bare: bool = False
              ) -> SleighResultIterator:
        chunksize = max(1, chunksize)
        key = self._function_key(fun)
        window = max(1, loadFactor) * max(1, self.workerCount) * chunksize
        batch = self._open(fun, key, None, window, by_consumer=True,
                           records=lambda batch: tasks.lazy_records(batch, key, items, chunksize,
                                                                    bare))
        self._dispatcher.feed_or_cancel(batch)
        return SleighResultIterator(self._dispatcher, batch, progress=progress,
                                    each_timeout=timeout)

    def status(self, closeGroup: bool = False, timeout: float = 0.0) -> GroupStatus:
        """NetWorkSpaces' status: ``(workers, closed)``, the workers that have joined and 1 if
        every worker the sleigh launched has joined (else 0). Waits up to ``timeout`` seconds
        for them. ``closeGroup`` reports the group closed with the workers joined by then; it
        closes nothing: a worker may join any sleigh at any time. The richer picture is
        ``state()``."""
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise SleighIllegalValueException(f"timeout must be 0 or more, not {timeout!r}")
        launched = range(self._launched)
        deadline = time.monotonic() + timeout
        while (self._scheduler.wait_joined(launched, deadline) < len(launched)
               and time.monotonic() < deadline):
            pass  # each wait is one slice
        ranks = self._scheduler.ranks()
        closed = closeGroup or all(rank in ranks for rank in launched)
        return GroupStatus(len(ranks), int(closed))

    def state(self) -> SleighStatus:
        """Workers, tasks in flight, waiting calls, deaths, and what the launcher says of
        each worker it started (``launched``: a batch job queued, running, failed...)."""
        status = self._scheduler.status(self._stopped)
        if self._launcher is None:
            return status
        return status._replace(launched=tuple(self._launcher.running()))

    def workerInfo(self) -> list[dict]:
        """What each worker said about itself: rank, host, pid, python and workbench
        versions, executable, platform, and ``state`` "running"; in rank order. A rank the
        launcher started that has not joined yet (a batch job waiting in its queue) is there
        too, as ``{"rank", "state": "queued" or "starting", "host": None, "pid": None, "job"}``
        (``job``: the launcher's id for it, a batch job's id)."""
        joined = [{**info, "state": RUNNING} for info in self._scheduler.workers()]
        ranks = {info["rank"] for info in joined}
        waiting = [{"rank": w.rank, "state": w.state, "host": None, "pid": None, "job": w.pid}
                   for w in (self._launcher.running() if self._launcher is not None else ())
                   if w.state in (QUEUED, STARTING) and w.rank not in ranks]
        return sorted(joined + waiting, key=lambda info: info["rank"])

    def subscribe(self, callback: Callable[[Any], None]) -> Subscription:
        """Follow the sleigh: ``callback(event)`` is called with each event from now on, and
        first with the present state (a ``WorkerJoined`` per worker and a ``CallProgress``
        per call running), which events of the moment may overtake. Events (records of
        ``workbench.sleigh``):

        * ``CallProgress(batch, label, state, done, sent, total, rank, added)``: a call
          opened, ``added`` results came from worker ``rank``, all its elements were sent
          (``total`` known), or it ended (``state`` "done", "cancelled" or "failed");
        * ``WorkerJoined(rank, info)``, ``WorkerLeft(rank, info)``.

        The callback runs in the thread that caused the event (mostly the sleigh's collector
        thread): it must be quick and must not wait for the sleigh. Returns a
        ``Subscription``: ``close()`` it (or use it in a ``with`` block) to stop."""
        return self._scheduler.subscribe(callback)

    def stop(self) -> None:
        """End the sleigh: its workspaces are deleted, so workers leave; every worker this
        sleigh started is gone when this returns. Calls still waiting raise SleighError."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopping = self._shutdown = True
        _live.discard(self)
        dispatcher = self._dispatcher
        outstanding = self._scheduler.close()
        stopped = SleighError("the sleigh was stopped")
        if dispatcher is not None:
            dispatcher.cancel(outstanding)  # interrupts running tasks: busy workers leave now
            dispatcher.stop()
        self._scheduler.fail(outstanding, stopped)
        self._stopped = True
        for ws in (getattr(self, "userNws", None), getattr(self, "nws", None)):
            if ws is not None:
                try:
                    self._server.deleteWs(ws.currentWs())
                except NwsException:
                    pass  # the broker is gone, or purged it already
        if self._launcher is not None:
            self._launcher.stop()
        if dispatcher is not None:
            dispatcher.join(2.0)
            dispatcher.fail(self._scheduler.running(), stopped)
        self._server.close()
        if self._cluster is not None:
            self._cluster.close()

    # ------------------------------------------------------------------ Executor API

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> SleighFuture:
        """Run ``fn(*args, **kwargs)`` on a worker -> a concurrent.futures Future. A failed
        task raises RemoteError from ``result()``."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        key = self._function_key(fn)
        dispatcher = self._dispatcher
        batch = self._open(fn, key, 1, None,
                           future=lambda batch: SleighFuture(dispatcher, batch))
        dispatcher.submit(batch, TaskRecord(batch.id, 0, key, [args], kwargs or None))
        return batch.future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1, progress: bool = False) -> SleighResultIterator:
        """``fn`` over the zipped iterables -> an iterator of results in order; a failed task
        raises its RemoteError when its turn comes. The iterables are read at once;
        ``timeout`` counts from this call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        given, bare = tasks.call_elements(iterables)
        items = list(given)
        key = self._function_key(fn)
        bounds = tasks.even_chunks(len(items), max(1, chunksize))
        batch = self._open(fn, key, len(items), None,
                           records=lambda batch: tasks.records(batch, key, items, bounds,
                                                               bare=bare))
        self._dispatcher.feed_or_cancel(batch)
        return SleighResultIterator(self._dispatcher, batch, raise_errors=True,
                                    deadline=deadline, progress=progress)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work; ``cancel_futures`` cancels what has not come back; ``wait`` waits for
        the rest, then stops the sleigh (without waiting: in the background)."""
        self._shutdown = True
        if cancel_futures and self._dispatcher is not None:
            self._dispatcher.cancel(self._scheduler.futures())
        if wait:
            self._drain()
            self.stop()
        else:
            threading.Thread(target=lambda: (self._drain(), self.stop()), daemon=True,
                             name=f"sleigh-shutdown-{self.wsName}").start()

    def _drain(self) -> None:
        """Wait until every submitted future is done."""
        self._scheduler.wait_futures(lambda: self._stopped)

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        """Leaving normally waits for submitted futures (the Executor contract), then stops;
        leaving by an exception stops at once, cancelling what is left."""
        try:
            if exc_type is None:
                self._drain()
        finally:
            self.stop()

    # ------------------------------------------------------------------ calls

    def _function_key(self, fn: Callable, fixed: Sequence = (),
                      permute: Sequence[int] | None = None) -> str:
        if self._stopped:
            raise SleighStoppedException("the sleigh was stopped")
        lost = self._connection.broken and self._broker_lost()
        if lost:
            raise SleighError(lost)
        try:
            return self._dispatcher.store_function(fn, fixed, permute)
        except (NwsConnectionDroppedException, NwsConnectException) as exc:
            raise SleighError(self._broker_lost() or str(exc)) from exc

    def _open(self, fn: Any, key: str, total: int | None, window: int | None,
              **options: Any) -> Batch:
        """A new call of ``fn`` (see ``Scheduler.open``)."""
        return self._scheduler.open(tasks.function_label(fn), key, total, window, **options)

    def _run(self, batch: Batch, blocking: bool, timeout: float | None, progress: bool) -> Any:
        dispatcher = self._dispatcher
        dispatcher.feed_or_cancel(batch)
        if not blocking:
            return SleighPending(dispatcher, batch)
        try:
            return finish(dispatcher, batch, timeout, progress)
        except BaseException:
            dispatcher.cancel([batch])
            raise

    # ------------------------------------------------------------------ workers

    def _joined(self, hello: Hello) -> None:
        """In the collector: a worker said hello. One that reads task records another way
        (another workbench release) would fail every task it took: the sleigh stops instead,
        saying why."""
        theirs = hello.info.get("task_format")
        if theirs != TASK_FORMAT:
            reason = (f"worker {hello.rank} (pid {hello.info.get('pid')} on "
                      f"{hello.info.get('host')}) runs workbench {hello.info.get('workbench')} "
                      f"with task format {theirs}, this master format {TASK_FORMAT}: install "
                      "the same workbench release for the master and its workers")
            log.error("sleigh %s: %s", self.wsName, reason)
            self._scheduler.break_down(reason)
            return
        count = self._scheduler.joined(hello)
        if hello.rank >= self._launched:  # a worker that joined by itself
            self._store_worker_count(count)

    def _farewell(self, hello: Hello) -> None:
        """In the collector: a worker's broker session ended. A launcher that watches its
        rank replaces it (and reports the death itself); any other worker leaves."""
        if self._stopping or any(w.rank == hello.rank and w.state in WATCHED
                                 for w in self._launcher.running()):
            return
        if self._scheduler.left(hello.rank, hello.farewell):
            log.warning("worker %d (pid %s on %s) left sleigh %s: its broker session ended",
                        hello.rank, hello.info.get("pid"), hello.info.get("host"), self.wsName)
            self._store_worker_count(len(self._scheduler.ranks()))

    def _broker_lost(self) -> str | None:
        """Why this sleigh's broker cannot be reached, or None: it answers."""
        reason = self._connection.broken
        if not reason:
            try:
                self.nws.findTry(WORKER_COUNT)  # one small request: does the broker answer?
                return None
            except NwsNoWorkSpaceException:
                return None  # the sleigh is being stopped; the stop says so
            except NwsException as exc:
                reason = str(exc)
        return (f"sleigh {self.wsName} lost its broker at {self._connection.address} "
                f"({reason}); start the broker and a new sleigh")

    def _new_rank(self) -> int:
        """A rank for a worker the launcher adds (as a worker joining by hand takes one)."""
        taken = KeyValueStore(connection=self._connection, workspace=self.wsName).incr(
            RANK_COUNTER)
        if taken is None:
            raise SleighError("the sleigh was stopped")
        return taken - 1

    def _store_worker_count(self, count: int) -> None:
        try:
            self.nws.store(WORKER_COUNT, count)
        except NwsException:
            pass

    def _worker_exited(self, exit: WorkerExit) -> bool:
        """In a supervisor: a launched worker died. End its broker session now (its leased
        tasks go back at once), say so -> whether to start a replacement."""
        if self._stopping:
            return False
        lost = self._broker_lost()
        if lost:  # the worker left because the broker is gone: a new one could not join
            log.warning("worker %d (pid %d) exited %s: %s; not restarting it", exit.rank,
                        exit.pid, describe_exit(exit.returncode), lost)
            self._scheduler.break_down(lost)
            return False
        self._scheduler.died()
        host, pid = exit.host, exit.pid
        if host is None:
            info = self._scheduler.worker(exit.rank)
            if info is not None:
                host, pid = info["host"], info["pid"]
        if host is not None:
            self._dispatcher.end_session(host, pid)
        log.warning("worker %d (pid %d) died %s; %s%s", exit.rank, pid,
                    describe_exit(exit.returncode),
                    "not restarting it" if exit.last else "started a replacement",
                    f"; its last output:\n{exit.output}" if exit.output else "")
        if exit.last and self._scheduler.given_up(exit.rank):  # eachWorker stops waiting
            self._store_worker_count(len(self._scheduler.ranks()))
        return True

    # PEP 8 names: the same functions.
    each_elem = eachElem
    each_worker = eachWorker
    worker_info = workerInfo


def _connect(broker: str | None, host: str | None, port: int | None) -> Connection:
    # ``connect`` reads a connection file, and has the keys of a CURVE broker that this
    # process reached before through one when given only its address (as the magics do).
    return connect(broker) if broker else connect(host, port)


@atexit.register
def _stop_all_at_exit() -> None:
    for sleigh in list(_live):
        try:
            sleigh.stop()
        except Exception:
            pass
