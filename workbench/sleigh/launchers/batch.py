"""Workers as batch jobs (Slurm, PBS, LSF, Flux, or ``local`` processes) submitted through
PSI/J (``psij-python``, the ``cluster`` extra), one job per worker; imported only when used.

A job's command is ``python -m workbench worker --broker B --sleigh NAME --rank R``. A CURVE
broker's connection never goes on a job's command line or into its script, which other users
of a cluster may read: it is written to a 0600 file in a 0700 directory of the user's
(``~/.workbench/jobs/``, on the shared filesystem of most clusters), whose path (not a secret)
is ``B``; the directory also keeps each job's output, and goes when the sleigh stops.

The scheduler's view of each job comes through PSI/J's status callbacks: a queued job is
QUEUED, a started one STARTING until its worker joins, then RUNNING. A job that ends while the
sleigh runs (failed, cancelled by the scheduler or by hand, out of walltime) is reported once
to ``SleighInfo.on_exit`` with the scheduler's reason, and is not resubmitted: its tasks run on
the other workers. ``stop()`` cancels every job still queued or running.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from ...certificates import write_private
from ...config import WORKER_KILL_TIMEOUT, WORKER_LEAVE_TIMEOUT
from ..worker import WORKER_ENV
from .base import (
    EXITED, FAILED, QUEUED, RUNNING, STARTING, SleighInfo, WorkerExit, WorkerState, log,
    worker_argv,
)

#: The schedulers PSI/J knows by these names (and ``local``: processes here, for tests).
SCHEDULERS = ("slurm", "pbs", "lsf", "flux", "cobalt", "local")
#: Where job directories go unless ``Batch(directory=)`` says otherwise.
JOBS_DIRECTORY = Path("~/.workbench/jobs")
#: Characters of a failed job's error output kept in its reason.
OUTPUT_TAIL = 2000


class Batch:
    """A ``Launcher`` that runs the sleigh's workers as batch jobs through PSI/J.

    ``Batch("slurm")`` submits one job per worker to ``scheduler`` (a PSI/J executor name:
    ``slurm``, ``pbs``, ``lsf``, ``flux``, or ``local``). ``workers``: how many workers (default:
    the sleigh's ``workerCount``). ``walltime``: ``"HH:MM:SS"``, ``"D-HH:MM:SS"``, seconds or a
    ``timedelta``; ``queue`` and ``account`` as the scheduler names them; ``job_extra``: more
    scheduler options, as PSI/J custom attributes (``{"constraint": "haswell"}`` becomes
    ``#SBATCH --constraint=haswell`` under Slurm). ``python``: the interpreter on the compute
    nodes; ``env``: variables added to the jobs' environment. ``wait``: how many workers
    ``Sleigh()`` waits for before it returns (the others join as their jobs start).
    """

    def __init__(self, scheduler: str = "slurm", workers: int | None = None,
                 workers_per_job: int = 1, walltime: str | float | timedelta | None = None,
                 queue: str | None = None, account: str | None = None,
                 job_extra: dict[str, Any] | None = None, python: str = sys.executable,
                 env: dict[str, str] | None = None, *, wait: int = 1,
                 directory: str | os.PathLike | None = None) -> None:
        if workers_per_job != 1:
            raise NotImplementedError("workers_per_job: only one worker per job for now")
        if workers is not None and workers < 0:
            raise ValueError("workers must be 0 or more")
        self.scheduler = scheduler
        self.workers = workers
        self.duration = parse_walltime(walltime)
        self.queue, self.account = queue, account
        self.job_extra = {_qualified(key, scheduler): value
                          for key, value in (job_extra or {}).items()}
        self.python = python
        self.env = {**(env or {}), WORKER_ENV: "1"}  # a task may not start a sleigh
        self.wait = wait
        self.root = Path(directory) if directory is not None else JOBS_DIRECTORY.expanduser()
        self._psij = _import_psij()  # here, not at import: only a sleigh that uses it pays
        try:
            self._executor = self._psij.JobExecutor.get_instance(scheduler)
        except ValueError as exc:
            raise ValueError(f"PSI/J has no executor {scheduler!r} (it knows "
                             f"{', '.join(SCHEDULERS)}): {exc}") from None
        self._lock = threading.Lock()
        self._jobs: list[_Job] = []
        self._stopping = False
        self._directory: Path | None = None  # this sleigh's, made by start

    def __repr__(self) -> str:
        return f"Batch({self.scheduler!r}, workers={self.workers!r})"

    # ------------------------------------------------------------------ Launcher

    def start(self, sleigh: SleighInfo, count: int) -> list[WorkerState]:
        directory = self._job_directory(sleigh)
        broker = sleigh.broker
        if sleigh.connection:
            broker = str(directory / "connection.json")
            write_private(broker, sleigh.connection)  # 0600, in a 0700 directory
        first = len(self._jobs)
        for rank in range(first, first + count):
            spec = self._spec(sleigh, broker, rank, directory)
            job = _Job(rank, sleigh, self._psij.Job(spec), spec.stdout_path, self)
            with self._lock:
                self._jobs.append(job)
            job.submit(self._executor)
        return [job.describe() for job in self._jobs[first:]]

    def running(self) -> list[WorkerState]:
        with self._lock:
            jobs = list(self._jobs)
        return [job.describe() for job in jobs]

    def stop(self) -> None:
        """Cancel every job not ended yet, and wait (at most LEAVE + KILL timeouts) for the
        scheduler to say they ended."""
        with self._lock:
            self._stopping = True
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        deadline = time.monotonic() + WORKER_LEAVE_TIMEOUT + WORKER_KILL_TIMEOUT
        for job in jobs:
            if not job.wait(deadline):
                log.warning("batch job %s (worker %d) had not ended %g s after it was "
                            "cancelled", job.native_id, job.rank,
                            WORKER_LEAVE_TIMEOUT + WORKER_KILL_TIMEOUT)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def worker_count(self) -> int | None:
        """``workers``: how many jobs, whatever ``Sleigh(workerCount=)`` says."""
        return self.workers

    @property
    def wait_for(self) -> int:
        """How many workers ``Sleigh()`` waits for (the pool is elastic)."""
        return self.wait

    # ------------------------------------------------------------------ jobs

    def _job_directory(self, sleigh: SleighInfo) -> Path:
        if self._directory is None:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            # mkdtemp: 0700, and unique when two brokers both have a sleigh_ride_0001
            self._directory = Path(tempfile.mkdtemp(prefix=f"{sleigh.name}-", dir=self.root))
        return self._directory

    def _spec(self, sleigh: SleighInfo, broker: str, rank: int, directory: Path) -> Any:
        psij = self._psij
        python, *arguments = worker_argv(broker, sleigh.name, rank, self.python)
        attributes = psij.JobAttributes(queue_name=self.queue, account=self.account,
                                        custom_attributes=dict(self.job_extra) or None)
        if self.duration is not None:
            attributes.duration = self.duration
        output = directory / f"worker-{rank}.log"
        return psij.JobSpec(executable=python, arguments=arguments,
                            name=f"{sleigh.name}-{rank}", environment=dict(self.env),
                            stdout_path=output, stderr_path=output, directory=Path.cwd(),
                            attributes=attributes)


class _Job:
    """One worker's job: its PSI/J job and what the scheduler last said of it."""

    def __init__(self, rank: int, sleigh: SleighInfo, job: Any, output: Path,
                 launcher: Batch) -> None:
        self.rank = rank
        self.sleigh = sleigh
        self.output = output
        self.launcher = launcher
        self.job = job
        self.state = QUEUED
        self.failure: str | None = None
        self.cancelled = False  # by stop(): its end is not a failure
        self.joins_before = sleigh.joins(rank)
        self.ended = threading.Event()

    @property
    def native_id(self) -> str | None:
        return self.job.native_id

    def submit(self, executor: Any) -> None:
        self.job.set_job_status_callback(self._changed)
        try:
            executor.submit(self.job)
        except Exception as exc:  # the scheduler refused it: the rank is given up
            self._ended(f"could not submit the job of worker {self.rank} to "
                        f"{self.launcher.scheduler}: {exc}", None)

    def describe(self) -> WorkerState:
        state = self.state
        if state == STARTING and self.sleigh.joins(self.rank) > self.joins_before:
            state = RUNNING
        native = self.native_id
        pid = int(native) if native and native.isdigit() else None
        return WorkerState(self.rank, state, pid, 0, self.failure)

    def cancel(self) -> None:
        self.cancelled = True
        if not self.ended.is_set() and self.native_id is not None:
            try:
                self.job.cancel()
            except Exception as exc:  # ended meanwhile, or the scheduler is unreachable
                log.debug("cancelling batch job %s: %r", self.native_id, exc)

    def wait(self, deadline: float) -> bool:
        if self.native_id is None:  # never submitted
            return True
        return self.ended.wait(max(0.0, deadline - time.monotonic()))

    def _changed(self, job: Any, status: Any) -> None:
        """In PSI/J's thread: the scheduler says something new about the job."""
        name = status.state.name
        if name == "QUEUED":
            self.state = QUEUED
        elif name == "ACTIVE":
            self.state = STARTING
        elif status.state.final:
            why = None
            if name != "COMPLETED" or not self.launcher.stopping:
                reason = status.message or (f"exit code {status.exit_code}"
                                            if status.exit_code is not None else "no reason")
                why = (f"batch job {job.native_id} of worker {self.rank} "
                       f"{name.lower()}: {reason}")
            self._ended(why, status.exit_code)

    def _ended(self, why: str | None, returncode: int | None) -> None:
        if self.ended.is_set():
            return
        if self.cancelled or why is None:
            self.state = EXITED
            self.ended.set()
            return
        tail = _tail(self.output)
        self.failure = why + (f"; its last output:\n{tail}" if tail else "")
        self.state = FAILED  # before on_exit: the master then lets the rank's farewell in
        self.ended.set()
        native = self.native_id
        self.sleigh.on_exit(WorkerExit(self.rank, int(native) if native and native.isdigit()
                                       else 0, returncode, self.failure, None, True))


def parse_walltime(walltime: str | float | timedelta | None) -> timedelta | None:
    """``"HH:MM:SS"``, ``"MM:SS"``, ``"D-HH:MM:SS"``, seconds, or a timedelta -> a timedelta."""
    if walltime is None or isinstance(walltime, timedelta):
        return walltime
    if isinstance(walltime, (int, float)):
        return timedelta(seconds=walltime)
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", walltime.strip())
    if match is None:
        raise ValueError(f"walltime {walltime!r}: expected HH:MM:SS, MM:SS or D-HH:MM:SS")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def _qualified(key: str, scheduler: str) -> str:
    """A ``job_extra`` key as a PSI/J custom attribute: ``"constraint"`` ->
    ``"slurm.constraint"`` (a key with a dot is already one)."""
    return key if "." in key else f"{scheduler}.{key}"


def _tail(path: Path, size: int = OUTPUT_TAIL) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - size))
            return file.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _import_psij() -> Any:
    try:
        import psij
    except ImportError:
        raise ImportError("batch launchers submit jobs through PSI/J: "
                          "pip install 'workbench[cluster]' (or psij-python)") from None
    return psij

