"""Workers on an existing Dask cluster: ``Sleigh(launch=client)`` with a ``distributed.Client``.

**The mechanism: one long-running Dask task per workbench worker.** Each task runs
``workbench worker`` as a child process of its Dask worker (started as a local launcher starts
one: same command, same environment, its own output kept aside) and waits for it. Why a task
and not a worker or nanny plugin:

* a task is scheduled by Dask: it holds one of its worker's threads while the sleigh runs, so
  Dask's own work and the sleigh's share the cluster by Dask's accounting, not behind its back;
* a task dies with its Dask worker and Dask itself places it again: the first tasks are pinned
  to one Dask worker each (``workers=[address]``) but loosely (``allow_other_workers``), so the
  rank of a Dask worker that leaves runs again wherever Dask finds a free thread, or waits in
  Dask's queue until one frees or a new worker arrives (an adaptive cluster grows for it);
* plugins run on every worker that ever joins, outlive the sleigh unless unregistered, and
  need the scheduler's permission to register (``distributed.diagnostics.plugin``): a pool
  that belongs to one sleigh fits a set of futures that belongs to its client.

A child process rather than a thread of the Dask worker: a workbench worker owns its process
(it interrupts tasks with SIGINT on the main thread, captures ``sys.stdout``, sets the
``Sleigh*`` builtins and exits with ``os._exit``). The kernel kills the child when the task's
thread or the Dask worker ends (PR_SET_PDEATHSIG, ``--parent-pid``), however it ends.

**The connection** travels as an argument of the task, over Dask's own connection (TLS when
the cluster uses it), and reaches the child on its stdin (``--broker -``): never on a command
line.

**Watching.** The task tells the client where it runs (its Dask worker, host, pid) through
Dask's event topics; the launcher follows each Dask worker's topic, and when one is removed
with a rank's task on it, reports that worker's death (its broker session is ended at once,
its tasks come back) while Dask places the task again. A task that ends by itself while the
sleigh runs (the worker exited) is reported likewise and submitted again, given up after
``STARTUP_FAILURES`` exits before joining. A pool sized by the cluster (no ``workerCount``)
follows it: a Dask worker that joins later (``cluster.scale``, an adaptive cluster) gets a
workbench worker of a new rank, taken from the counter hand-joined workers use.
``stop()`` sets a Dask ``Event`` that every task
waits on: the child gets LEAVE_TIMEOUT to leave by itself, then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

from .base import (
    EXITED, FAILED, RESTARTING, RUNNING, STARTING, SleighInfo, WorkerExit, WorkerState,
    hand_connection, log,
)
from .local import LocalLauncher
from .processes import KILL_TIMEOUT, LEAVE_TIMEOUT, STARTUP_FAILURES

#: How often a task looks at its child between waits on the stop event (seconds).
POLL = 0.25
#: What ``stop`` waits for the tasks beyond the child's own leave and kill timeouts.
STOP_MARGIN = 3.0
#: The scheduler's event topic that says when Dask workers join.
CLUSTER_TOPIC = "all"


def is_dask_client(launch: Any) -> bool:
    """Whether ``launch`` is a ``distributed.Client`` (told without importing distributed)."""
    cls = type(launch)
    return cls.__module__.split(".")[0] == "distributed" and cls.__name__ == "Client"


class WorkerEnd(NamedTuple):
    """What a task returns: its workbench worker ended."""

    pid: int
    returncode: int | None  # None: it never started (the sleigh had stopped)
    output: str
    host: str


@dataclass
class _Rank:
    """One rank's task as the launcher follows it."""

    rank: int
    future: Any = None  # the distributed.Future of its current task
    address: str | None = None  # the Dask worker running it, once it said so
    pid: int | None = None
    host: str | None = None
    state: str = STARTING
    restarts: int = 0
    failures: int = 0  # exits before joining, in a row
    joins_before: int = 0
    failure: str | None = None


class DaskLauncher:
    """A ``Launcher`` whose workers are long-running tasks on the cluster of ``client``: by
    default one per Dask worker present when the sleigh starts, and one more for each Dask
    worker that joins the cluster later; ``workerCount`` workers (a fixed pool) are spread
    over the Dask workers in turn."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._ranks: list[_Rank] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._sleigh: SleighInfo | None = None
        self._stop_event = f"workbench-stop-{uuid.uuid4().hex}"
        self._topic = f"workbench-started-{uuid.uuid4().hex}"
        self._followed: set[str] = set()  # the Dask workers whose events are followed
        self._reporters: list[threading.Thread] = []
        self._reporters_lock = threading.Lock()
        self._follows_cluster = False  # one worker per Dask worker, those joining later too

    def worker_count(self, requested: int | None) -> int:
        """``requested``, or one worker per Dask worker now in the cluster (then the pool
        follows the cluster: a Dask worker that joins later gets one too)."""
        self._follows_cluster = requested is None
        return len(self._dask_workers()) if requested is None else requested

    def _dask_workers(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    # ------------------------------------------------------------------ Launcher

    def start(self, sleigh: SleighInfo, count: int) -> list[WorkerState]:
        self._sleigh = sleigh
        self.client.subscribe_topic(self._topic, self._on_started)
        if self._follows_cluster:
            self.client.subscribe_topic(CLUSTER_TOPIC, self._on_cluster)
        addresses = self._dask_workers()
        for address in addresses:
            self._follow(address)
        for rank in range(count):
            state = _Rank(rank)
            self._ranks.append(state)
            self._submit(state, addresses[rank % len(addresses)] if addresses else None)
        return self.running()

    def running(self) -> list[WorkerState]:
        return [self._describe(rank) for rank in self._ranks]

    def stop(self) -> None:
        """Tell every task to end its worker (they leave by themselves already, the sleigh's
        workspace being gone), wait for them, and cancel those Dask has not started."""
        from distributed import Event, wait

        with self._lock:
            self._stopping = True
        if self._sleigh is None:
            return  # never started
        event = Event(self._stop_event, client=self.client)
        event.set()
        futures = [rank.future for rank in self._ranks if rank.future is not None]
        try:
            wait(futures, timeout=LEAVE_TIMEOUT + KILL_TIMEOUT + STOP_MARGIN)
        except TimeoutError:
            pass  # a task Dask has queued, not started: cancelled below
        self.client.cancel([future for future in futures if not future.done()])
        for rank in self._ranks:
            if rank.state != FAILED:
                rank.state = EXITED
        for topic in (self._topic, *self._followed,
                      *((CLUSTER_TOPIC,) if self._follows_cluster else ())):
            self.client.unsubscribe_topic(topic)
        event.clear()
        with self._reporters_lock:
            reporters = list(self._reporters)
        for thread in reporters:
            if thread is not threading.current_thread():
                thread.join(STOP_MARGIN)

    # ------------------------------------------------------------------ tasks

    def _submit(self, state: _Rank, address: str | None) -> None:
        sleigh = self._sleigh
        state.joins_before = sleigh.joins(state.rank)
        state.address = state.pid = state.host = None
        key = f"workbench-worker-{sleigh.name}-{state.rank}-{uuid.uuid4().hex}"
        future = self.client.submit(
            serve, sleigh.name, sleigh.broker, sleigh.connection, state.rank, self._stop_event,
            self._topic, key, workers=[address] if address else None, allow_other_workers=True,
            pure=False, key=key)
        state.future = future
        future.add_done_callback(lambda done: self._report(self._ended, state, done))

    def _describe(self, state: _Rank) -> WorkerState:
        shown = state.state
        if shown in (STARTING, RESTARTING) and self._sleigh.joins(state.rank) > state.joins_before:
            shown = RUNNING
        return WorkerState(state.rank, shown, state.pid, state.restarts, state.failure)

    def _on_started(self, event: tuple) -> None:
        """In the client's event loop: a task started its worker (Dask's event topic)."""
        message = event[1]
        state = next((r for r in self._ranks if r.rank == message["rank"]), None)
        if state is None or state.future is None or state.future.key != message["key"]:
            return  # a task given up already
        state.address, state.pid, state.host = message["worker"], message["pid"], message["host"]
        self._follow(message["worker"])

    def _on_cluster(self, event: tuple) -> None:
        """In the client's event loop: the cluster changed; a Dask worker that joined gets a
        workbench worker of a new rank."""
        message = event[1]
        if message.get("action") == "add-worker" and message.get("worker"):
            self._report(self._add, message["worker"])

    def _add(self, address: str) -> None:
        with self._lock:
            if self._stopping or any(rank.address == address for rank in self._ranks):
                return
            try:
                state = _Rank(self._sleigh.new_rank())
            except Exception as exc:  # the sleigh stopped meanwhile
                log.debug("no worker for the new Dask worker %s: %r", address, exc)
                return
            self._ranks.append(state)
            self._follow(address)
            self._submit(state, address)

    def _follow(self, address: str) -> None:
        if address not in self._followed:
            self._followed.add(address)
            self.client.subscribe_topic(address, self._on_dask_worker)

    def _on_dask_worker(self, event: tuple) -> None:
        """In the client's event loop: something happened to a Dask worker."""
        message = event[1]
        if message.get("action") != "remove-worker":
            return
        processing = message.get("processing-tasks") or ()
        for state in self._ranks:
            if state.future is not None and state.future.key in processing:
                self._report(self._lost, state)

    def _report(self, report: Any, *args: Any) -> None:
        """Run ``report`` in a thread of its own: it talks to the broker through the master's
        connection, which must not happen in Dask's event loop, nor in a pool thread of
        Dask's that outlives the sleigh with a channel of that connection open."""
        thread = threading.Thread(target=report, args=args, daemon=True,
                                  name="sleigh-dask-report")
        with self._reporters_lock:
            self._reporters = [t for t in self._reporters if t.is_alive()] + [thread]
            thread.start()  # before stop() can see it

    def _lost(self, state: _Rank) -> None:
        """The Dask worker of a rank left; Dask places its task again."""
        with self._lock:
            if self._stopping:
                return
            pid, host, address = state.pid, state.host, state.address
            state.state, state.restarts = RESTARTING, state.restarts + 1
            state.joins_before = self._sleigh.joins(state.rank)
            state.address = state.pid = state.host = None
        self._sleigh.on_exit(WorkerExit(state.rank, pid or 0, None,
                                        f"its Dask worker {address} left the cluster", host,
                                        False))

    def _ended(self, state: _Rank, future: Any) -> None:
        """A rank's task ended."""
        with self._lock:
            if future is not state.future or self._stopping:
                return
        if future.status != "finished":
            self._give_up(state, f"worker {state.rank}'s Dask task ended ({future.status}): "
                                 f"{_error(future)}", None)
            return
        end: WorkerEnd = future.result()
        joined = self._sleigh.joins(state.rank) > state.joins_before
        state.failures = 0 if joined else state.failures + 1
        last = state.failures >= STARTUP_FAILURES
        if last:
            self._give_up(state, f"worker {state.rank} exited with status {end.returncode} "
                                 f"{state.failures} times before joining; not restarting it"
                                 + (f"; its last output:\n{end.output}" if end.output else ""),
                          end)
            return
        if self._sleigh.on_exit(WorkerExit(state.rank, end.pid, end.returncode, end.output,
                                           end.host, False)):
            with self._lock:
                if self._stopping:
                    return
                state.state, state.restarts = RESTARTING, state.restarts + 1
                self._submit(state, state.address)
        else:
            state.state = EXITED

    def _give_up(self, state: _Rank, why: str, end: WorkerEnd | None) -> None:
        state.failure, state.state = why, FAILED
        self._sleigh.on_exit(WorkerExit(state.rank, end.pid if end else state.pid or 0,
                                        end.returncode if end else None,
                                        end.output if end else why,
                                        end.host if end else state.host, True))


def _error(future: Any) -> str:
    try:
        return repr(future.exception(timeout=1))
    except Exception as exc:  # noqa: BLE001 - cancelled or lost: say that
        return repr(exc)


# ---------------------------------------------------------------------- on the Dask worker

def serve(name: str, broker: str, connection: str | None, rank: int, stop_event: str,
          topic: str, key: str) -> WorkerEnd:
    """The task: run one workbench worker of sleigh ``name`` as a child of this Dask worker
    until it exits or the launcher's stop event is set."""
    from distributed import Event, get_worker

    stopping = Event(stop_event)
    host = socket.gethostname()
    if stopping.is_set():  # placed again after the sleigh stopped
        return WorkerEnd(0, None, "", host)
    sleigh = SleighInfo(name, broker, connection=connection)
    local = LocalLauncher()
    process = local.popen(sleigh, rank)
    try:
        hand_connection(process, sleigh)
        worker = get_worker()
        worker.log_event(topic, {"rank": rank, "pid": process.pid, "host": host,
                                 "worker": worker.address, "key": key})
        while process.poll() is None:
            if stopping.wait(POLL):
                _end(process)
    finally:
        if process.poll() is None:  # the task itself was interrupted
            process.kill()
        process.wait()
    return WorkerEnd(process.pid, process.returncode, local.log_tail(process), host)


def _end(process: subprocess.Popen) -> None:
    """The sleigh stopped: LEAVE_TIMEOUT for the worker to leave by itself, then SIGTERM,
    then SIGKILL."""
    for signal_it, timeout in ((None, LEAVE_TIMEOUT), (process.terminate, KILL_TIMEOUT),
                               (process.kill, None)):
        if signal_it is not None:
            signal_it()
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue
