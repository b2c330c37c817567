"""How a sleigh gets its workers: the ``Launcher`` interface and the records it speaks in.

A launcher starts ``count`` workers for a sleigh, says what it has running, and stops them. A
worker is the command ``worker_argv`` builds (``python -m workbench worker --broker ADDR
--sleigh NAME --rank R``), run wherever the launcher runs things: it joins the sleigh through
the broker by itself, so a launcher never talks to the broker. A broker that speaks CURVE is
reached with a connection file: its text goes to the worker's stdin (``--broker -``), never on
its command line, where ``ps`` would show the keys (``hand_connection``). A launcher that watches its
workers reports an unexpected exit to ``SleighInfo.on_exit``, which ends the dead worker's
broker session (its tasks come back at once) and says whether to start a replacement of the
same rank.

The launchers here (``local``, ``ssh``, ``function``) are processes watched by
``processes.ProcessLauncher``; ``batch.Batch`` submits batch jobs (``slurm``, ``pbs``, ...)
through PSI/J. Two optional members of a launcher: ``worker_count(requested)``, how many
workers it starts for ``Sleigh(workerCount=requested)`` (its own ``workers=``, one per Dask
worker when none is asked; None: the sleigh's default), and ``wait_for``, how many of them
``Sleigh()`` waits for (default: all; batch jobs may wait in a queue).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Callable, NamedTuple, Protocol, runtime_checkable

log = logging.getLogger("workbench.sleigh")

#: A worker's states, as ``Launcher.running`` describes them.
QUEUED = "queued"  # a batch job waiting for the scheduler to start it
STARTING = "starting"  # started, not joined yet
RUNNING = "running"  # joined the sleigh
RESTARTING = "restarting"  # died; a replacement of the same rank is on its way
UNWATCHED = "unwatched"  # started by something that gives nothing to watch
EXITED = "exited"  # ended as the sleigh stopped
FAILED = "failed"  # given up (see ``WorkerState.failure``)

#: States in which the launcher stands for the rank: if it dies, it is replaced.
WATCHED = frozenset({QUEUED, STARTING, RUNNING, RESTARTING})


class WorkerExit(NamedTuple):
    """A watched worker ended while the sleigh ran."""

    rank: int
    pid: int  # of the process the launcher started (the worker itself, an ssh client, ...)
    returncode: int | None
    output: str  # what it printed outside of tasks, if the launcher kept it
    host: str | None  # the worker's host when ``pid`` is the worker itself, else None
    last: bool  # the launcher gives this rank up: no replacement follows


def _replace(exit: WorkerExit) -> bool:
    return True


def _never(rank: int) -> int:
    return 0


def _no_rank() -> int:
    raise RuntimeError("this sleigh gives no new ranks to its launcher")


class SleighInfo(NamedTuple):
    """What a launcher is told about the sleigh it starts workers for."""

    name: str  # the sleigh's workspace, which workers join (``--sleigh``)
    broker: str  # the broker's address as the workers reach it
    on_exit: Callable[[WorkerExit], bool] = _replace  # -> whether to start a replacement
    joins: Callable[[int], int] = _never  # how many times a worker of a rank has joined
    # A CURVE broker's connection file, as text: for the workers' stdin, never their argv.
    connection: str | None = None
    # A rank for one more worker than ``start`` was asked for (from the counter workers
    # joining by hand take theirs from, so the two never clash).
    new_rank: Callable[[], int] = _no_rank

    def __repr__(self) -> str:  # never the connection's keys in a log
        return (f"SleighInfo(name={self.name!r}, broker={self.broker!r}"
                f"{', connection=...' if self.connection else ''})")

    @property
    def worker_broker(self) -> str:
        """A worker's ``--broker``: the address, or ``-`` (the connection comes on stdin)."""
        return "-" if self.connection else self.broker

    @property
    def worker_stdin(self) -> int:
        """The ``stdin`` for ``subprocess.Popen`` of a worker (see ``hand_connection``)."""
        return subprocess.PIPE if self.connection else subprocess.DEVNULL


class WorkerState(NamedTuple):
    """One rank as its launcher sees it."""

    rank: int
    state: str  # QUEUED, STARTING, RUNNING, RESTARTING, UNWATCHED, EXITED or FAILED
    pid: int | None  # of the process the launcher started, if any
    restarts: int  # replacements started so far
    failure: str | None = None  # why the rank was given up


@runtime_checkable
class Launcher(Protocol):
    """Starts and stops the workers of one sleigh."""

    def start(self, sleigh: SleighInfo, count: int) -> list[WorkerState]:
        """Start workers of ranks 0 to count - 1 -> their states; returns without waiting for
        them to join."""
        ...

    def stop(self) -> None:
        """Make every worker started leave: by the time this returns none runs. The sleigh's
        workspace is gone already, which makes workers leave by themselves."""
        ...

    def running(self) -> list[WorkerState]:
        """What this launcher has started, rank by rank."""
        ...


def worker_count(launcher: Launcher, requested: int | None) -> int | None:
    """How many workers ``launcher`` starts for ``Sleigh(workerCount=requested)`` (None: the
    sleigh's default)."""
    own = getattr(launcher, "worker_count", None)
    return requested if own is None else own(requested)


def wait_for(launcher: Launcher, count: int) -> int:
    """How many of ``count`` workers ``Sleigh()`` waits for before it returns: all, unless
    the launcher says fewer (batch jobs may wait in a queue; the pool is elastic)."""
    return min(count, getattr(launcher, "wait_for", count))


def worker_argv(broker: str, sleigh: str, rank: int | None = None,
                python: str = sys.executable, parent_pid: int | None = None) -> list[str]:
    """The command that runs one worker of ``sleigh``."""
    argv = [python, "-m", "workbench", "worker", "--broker", broker, "--sleigh", sleigh]
    if rank is not None:
        argv += ["--rank", str(rank)]
    if parent_pid is not None:
        argv += ["--parent-pid", str(parent_pid)]
    return argv


def hand_connection(process: subprocess.Popen, sleigh: SleighInfo) -> None:
    """Give a just-started worker the connection on its stdin, then close it (the worker
    reads to the end). Nothing to do for a broker without CURVE."""
    if not sleigh.connection:
        return
    if process.stdin is None:
        log.warning("worker pid %d was started without a stdin pipe: under CURVE a worker "
                    "reads the broker's connection file on stdin (Popen(stdin=PIPE))",
                    process.pid)
        return
    try:
        process.stdin.write(sleigh.connection.encode())
        process.stdin.close()
    except OSError:  # it died at once: its exit is reported as any other
        pass


def describe_exit(returncode: int | None) -> str:
    if returncode is None:  # a batch job whose scheduler gave no exit code
        return "(no exit status known)"
    if returncode < 0:
        return f"with signal {-returncode}"
    return f"with status {returncode}"


def describe_worker(info: dict) -> str:
    """A ``Sleigh.workerInfo()`` entry's state for people: ``running``, ``queued (job 48116)``."""
    state = info.get("state", RUNNING)
    job = info.get("job")
    return f"{state} (job {job})" if job is not None and state != RUNNING else state
