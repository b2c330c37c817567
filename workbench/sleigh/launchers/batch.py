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
the other workers. ``stop()`` cancels every job still queued or running, and so does a small
process beside the master if the master dies without stopping (``reaper``).

``workers_per_job=K`` makes each job one ``workbench worker --workers K`` (``group``) that asks
for K cores and starts K workers on its node, with consecutive ranks.
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
from . import reaper
from .base import (
    EXITED, FAILED, QUEUED, RUNNING, STARTING, SleighInfo, WorkerExit, WorkerState, log,
    worker_argv,
)

#: The schedulers PSI/J knows by these names (and ``local``: processes here, for tests).
SCHEDULERS = ("slurm", "pbs", "lsf", "flux", "cobalt", "local")
#: Where job directories go unless ``Batch(directory=)`` says otherwise.
JOBS_DIRECTORY = Path("~/.workbench/jobs")
#: The custom attribute that names a job in the queue (PSI/J 0.9's templates drop the
#: spec's name), where we know it: ``squeue`` then shows ``sleigh_ride_0001-3``.
JOB_NAME_ATTRIBUTE = {"slurm": "slurm.job-name"}
#: How often PSI/J asks a batch scheduler about the jobs, unless told (its own default).
POLL_INTERVAL = 30.0
#: Characters of a failed job's error output kept in its reason.
OUTPUT_TAIL = 2000


class Batch:
    """A ``Launcher`` that runs the sleigh's workers as batch jobs through PSI/J.

    ``Batch("slurm")`` submits one job per worker to ``scheduler`` (a PSI/J executor name:
    ``slurm``, ``pbs``, ``lsf``, ``flux``, or ``local``). ``workers``: how many workers (default:
    the sleigh's ``workerCount``); ``workers_per_job``: how many in each job (one ``workbench
    worker --workers K`` that asks for K cores and starts K workers). ``walltime``: ``"HH:MM:SS"``, ``"D-HH:MM:SS"``, seconds or a
    ``timedelta``; ``queue`` and ``account`` as the scheduler names them; ``job_extra``: more
    scheduler options, as PSI/J custom attributes (``{"constraint": "haswell"}`` becomes
    ``#SBATCH --constraint=haswell`` under Slurm). ``python``: the interpreter on the compute
    nodes; ``env``: variables added to the jobs' environment. ``wait``: how many workers
    ``Sleigh()`` waits for before it returns (the others join as their jobs start).
    ``directory``: where job directories go (default ``~/.workbench/jobs``);
    ``poll_interval``: how often PSI/J asks the scheduler how the jobs are (seconds; each time
    it runs ``squeue`` or its like), which is how soon a job's end is noticed.
    """

    def __init__(self, scheduler: str = "slurm", workers: int | None = None,
                 workers_per_job: int = 1, walltime: str | float | timedelta | None = None,
                 queue: str | None = None, account: str | None = None,
                 job_extra: dict[str, Any] | None = None, python: str = sys.executable,
                 env: dict[str, str] | None = None, *, wait: int = 1,
                 directory: str | os.PathLike | None = None,
                 poll_interval: float = POLL_INTERVAL) -> None:
        if workers is not None and workers < 0:
            raise ValueError("workers must be 0 or more")
        if workers_per_job < 1:
            raise ValueError("workers_per_job must be 1 or more")
        self.scheduler = scheduler
        self.workers = workers
        self.workers_per_job = workers_per_job
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
        config = getattr(self._executor, "config", None)
        if hasattr(config, "queue_polling_interval"):  # a batch scheduler's, read every round
            config.queue_polling_interval = poll_interval
        self._lock = threading.Lock()
        self._jobs: list[_Job] = []
        self._stopping = False
        self._directory: Path | None = None  # this sleigh's, made by start
        self._reaper: Any = None  # cancels the jobs if this process dies (see reaper.py)

    def __repr__(self) -> str:
        return f"Batch({self.scheduler!r}, workers={self.workers!r})"

    # ------------------------------------------------------------------ Launcher

    def start(self, sleigh: SleighInfo, count: int) -> list[WorkerState]:
        directory = self._job_directory(sleigh)
        broker = sleigh.broker
        if sleigh.connection:
            broker = str(directory / "connection.json")
            write_private(broker, sleigh.connection)  # 0600, in a 0700 directory
        if self._reaper is None:
            self._reaper = reaper.start(self.scheduler)
        first = len(self._jobs)
        start = self._jobs[-1].ranks.stop if self._jobs else 0
        for base in range(start, start + count, self.workers_per_job):
            ranks = range(base, min(base + self.workers_per_job, start + count))
            spec = self._spec(sleigh, broker, ranks, directory)
            job = _Job(ranks, sleigh, self._psij.Job(spec), spec.stdout_path, self)
            with self._lock:
                self._jobs.append(job)
            if job.submit(self._executor):
                reaper.tell(self._reaper, job.native_id)
        return [state for job in self._jobs[first:] for state in job.describe()]

    def running(self) -> list[WorkerState]:
        with self._lock:
            jobs = list(self._jobs)
        return [state for job in jobs for state in job.describe()]

    def stop(self) -> None:
        """Cancel every job not ended yet. ``local`` jobs: wait (at most LEAVE + KILL
        timeouts) for their processes to end; a batch scheduler ends its jobs on its own time
        once told (PSI/J sees it at its next poll), with nothing to wait for here."""
        with self._lock:
            self._stopping = True
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        deadline = time.monotonic() + WORKER_LEAVE_TIMEOUT + WORKER_KILL_TIMEOUT
        for job in jobs if self.scheduler == "local" else ():
            if not job.wait(deadline):
                log.warning("batch job %s (%s) had not ended %g s after it was "
                            "cancelled", job.native_id, job.workers,
                            WORKER_LEAVE_TIMEOUT + WORKER_KILL_TIMEOUT)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        if self._reaper is not None:
            reaper.finish(self._reaper)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def worker_count(self, requested: int | None) -> int | None:
        """``workers``, whatever ``Sleigh(workerCount=)`` says; else as many as it says."""
        return self.workers if self.workers is not None else requested

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

    def _spec(self, sleigh: SleighInfo, broker: str, ranks: range, directory: Path) -> Any:
        """One job: a worker of rank ``ranks[0]``, or ``workbench worker --workers K`` that
        starts K on the job's node, with K cores for its one process."""
        psij = self._psij
        python, *arguments = worker_argv(broker, sleigh.name, ranks[0], self.python)
        resources = None
        if len(ranks) > 1:
            arguments += ["--workers", str(len(ranks))]
            resources = psij.ResourceSpecV1(process_count=1, cpu_cores_per_process=len(ranks))
        label = f"{ranks[0]}" if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
        custom = dict(self.job_extra)
        if self.scheduler in JOB_NAME_ATTRIBUTE:
            custom.setdefault(JOB_NAME_ATTRIBUTE[self.scheduler], f"{sleigh.name}-{label}")
        attributes = psij.JobAttributes(queue_name=self.queue, account=self.account,
                                        custom_attributes=custom or None)
        if self.duration is not None:
            attributes.duration = self.duration
        output = directory / f"worker-{label}.log"
        return psij.JobSpec(executable=python, arguments=arguments,
                            name=f"{sleigh.name}-{label}", environment=dict(self.env),
                            stdout_path=output, stderr_path=output, directory=Path.cwd(),
                            attributes=attributes, resources=resources)


class _Job:
    """One job, of one worker or of ``workers_per_job``: its PSI/J job and what the scheduler
    last said of it."""

    def __init__(self, ranks: range, sleigh: SleighInfo, job: Any, output: Path,
                 launcher: Batch) -> None:
        self.ranks = ranks
        self.sleigh = sleigh
        self.output = output
        self.launcher = launcher
        self.job = job
        self.state = QUEUED
        self.failure: str | None = None
        self.cancelled = False  # by stop(): its end is not a failure
        self.joins_before = [sleigh.joins(rank) for rank in ranks]
        self.ended = threading.Event()

    @property
    def native_id(self) -> str | None:
        return self.job.native_id

    @property
    def workers(self) -> str:
        """``worker 3``, or ``workers 4 to 7``: for messages."""
        if len(self.ranks) == 1:
            return f"worker {self.ranks[0]}"
        return f"workers {self.ranks[0]} to {self.ranks[-1]}"

    def submit(self, executor: Any) -> bool:
        """-> whether the scheduler took the job."""
        self.job.set_job_status_callback(self._changed)
        try:
            executor.submit(self.job)
        except Exception as exc:  # the scheduler refused it: the rank is given up
            self._ended(f"could not submit the job of {self.workers} to "
                        f"{self.launcher.scheduler}: {exc}", None)
            return False
        return self.native_id is not None

    @property
    def pid(self) -> int | None:
        """The job's id, when it is a number (Slurm's, a local process's)."""
        native = self.native_id
        return int(native) if native and native.isdigit() else None

    def describe(self) -> list[WorkerState]:
        """Each of the job's ranks: RUNNING once that worker joined (the scheduler, polled
        every 30 s by PSI/J, may still say QUEUED), else the job's state."""
        states = []
        for rank, joins_before in zip(self.ranks, self.joins_before):
            state = self.state
            if state in (QUEUED, STARTING) and self.sleigh.joins(rank) > joins_before:
                state = RUNNING
            states.append(WorkerState(rank, state, self.pid, 0, self.failure))
        return states

    def cancel(self) -> None:
        self.cancelled = True
        if self.ended.is_set() or self.native_id is None:
            return
        try:
            if self.launcher.scheduler == "local":
                _kill_tree(self.pid)
            else:
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
                why = f"batch job {job.native_id} of {self.workers} {name.lower()}: {reason}"
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
        exits = [WorkerExit(rank, self.pid or 0, returncode, self.failure, None, True)
                 for rank in self.ranks]
        # Told from a thread of its own, waited for: PSI/J's thread outlives the sleigh, and
        # a connection's channel made in it would stay open after the connection closes.
        def tell() -> None:
            for exit in exits:
                self.sleigh.on_exit(exit)

        teller = threading.Thread(target=tell, name=f"batch job {self.native_id} ended",
                                  daemon=True)
        teller.start()
        teller.join()


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


#: The prefix of PSI/J's custom attributes, where it is not the executor's name.
ATTRIBUTE_PREFIX = {"pbs_classic": "pbs"}


def _qualified(key: str, scheduler: str) -> str:
    """A ``job_extra`` key as a PSI/J custom attribute: ``"constraint"`` ->
    ``"slurm.constraint"`` (a key with a dot is already one)."""
    return key if "." in key else f"{ATTRIBUTE_PREFIX.get(scheduler, scheduler)}.{key}"


def _tail(path: Path, size: int = OUTPUT_TAIL) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - size))
            return file.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _kill_tree(pid: int | None) -> None:
    """End a ``local`` job: its process and all below it, as PSI/J's own cancel would. Not
    through PSI/J: its local executor stops watching every job for good when asked to cancel
    one whose process has just ended (its kill raises in its only thread)."""
    import psutil  # PSI/J's own dependency

    try:
        root = psutil.Process(pid)
        processes = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _import_psij() -> Any:
    try:
        import psij
    except ImportError:
        raise ImportError("batch launchers submit jobs through PSI/J: "
                          "pip install 'workbench[cluster]' (or psij-python)") from None
    return psij

