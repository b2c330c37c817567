"""Workers as processes this machine starts and watches: the common part of the local, ssh and
function launchers.

A ``Supervisor`` thread per rank starts the worker's process (``ProcessLauncher.popen``), waits
on it, and when it dies unexpectedly reports it (``SleighInfo.on_exit``) and starts a
replacement with the same rank. A local worker is started from that thread, which lives as long
as the sleigh: the kernel kills the worker (PR_SET_PDEATHSIG) when the thread that started it
ends, so a master that dies, even by SIGKILL, leaves no worker behind.
"""

from __future__ import annotations

import subprocess
import threading
import time

from ...config import (
    WORKER_KILL_TIMEOUT, WORKER_LEAVE_TIMEOUT, WORKER_STARTUP_FAILURES,
)
from .base import (
    EXITED, FAILED, RESTARTING, RUNNING, STARTING, UNWATCHED, SleighInfo, WorkerExit,
    WorkerState, describe_exit, hand_connection,
)

STARTUP_FAILURES = WORKER_STARTUP_FAILURES
LEAVE_TIMEOUT, KILL_TIMEOUT = WORKER_LEAVE_TIMEOUT, WORKER_KILL_TIMEOUT


class ProcessLauncher:
    """A ``Launcher`` whose workers are processes it starts with ``popen`` and watches."""

    def __init__(self) -> None:
        self._supervisors: list[Supervisor] = []

    # ------------------------------------------------------------------ what a subclass says

    def popen(self, sleigh: SleighInfo, rank: int) -> subprocess.Popen | None:
        """Start the worker of ``rank`` -> its process (None: started, but not watchable)."""
        raise NotImplementedError

    def worker_host(self, process: subprocess.Popen) -> str | None:
        """The worker's host when ``process`` is the worker itself (not an ssh client)."""
        return None

    def log_tail(self, process: subprocess.Popen) -> str:
        """What the worker printed outside of tasks (its errors), if this launcher kept it;
        called once per process, when it has ended."""
        return ""

    # ------------------------------------------------------------------ Launcher

    def start(self, sleigh: SleighInfo, count: int) -> list[WorkerState]:
        supervisors = [Supervisor(rank, self, sleigh) for rank in range(count)]
        self._supervisors.extend(supervisors)
        for supervisor in supervisors:
            supervisor.start()
        return [supervisor.describe() for supervisor in supervisors]

    def running(self) -> list[WorkerState]:
        return [supervisor.describe() for supervisor in self._supervisors]

    def stop(self) -> None:
        """Make the workers leave: they exit by themselves once the sleigh's workspace is
        gone; those still running after LEAVE_TIMEOUT get SIGTERM, then SIGKILL."""
        supervisors = self._supervisors
        for supervisor in supervisors:
            supervisor.leave()
        running = [s.process for s in supervisors if s.process is not None]
        deadline = time.monotonic() + LEAVE_TIMEOUT
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            time.sleep(0.01)
        stubborn = [p for p in running if p.poll() is None]
        for process in stubborn:
            process.terminate()
        deadline = time.monotonic() + KILL_TIMEOUT
        for process in stubborn:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for supervisor in supervisors:
            if supervisor.is_alive() and threading.current_thread() is not supervisor:
                supervisor.join(KILL_TIMEOUT)
            process = supervisor.process  # a replacement started as the stop began, if any
            if process is not None:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                self.log_tail(process)  # closes its log file


class Supervisor(threading.Thread):
    """Starts the worker of one rank and keeps it running until the sleigh stops."""

    def __init__(self, rank: int, launcher: ProcessLauncher, sleigh: SleighInfo) -> None:
        super().__init__(name=f"sleigh-supervisor-{rank}", daemon=True)
        self.rank = rank
        self.launcher = launcher
        self.sleigh = sleigh
        self.process: subprocess.Popen | None = None
        self.state = STARTING
        self.restarts = 0
        self._joins_before = 0  # of this rank, when its current process started
        self.stopping = threading.Event()
        self.failure: str | None = None  # why this rank was given up

    def describe(self) -> WorkerState:
        state = self.state
        if state == STARTING and self.sleigh.joins(self.rank) > self._joins_before:
            state = RUNNING
        pid = self.process.pid if self.process is not None else None
        return WorkerState(self.rank, state, pid, self.restarts, self.failure)

    def run(self) -> None:
        failures = 0
        sleigh, rank = self.sleigh, self.rank
        while not self.stopping.is_set():
            joins = self._joins_before = sleigh.joins(rank)
            self.state = STARTING
            try:
                process = self.process = self.launcher.popen(sleigh, rank)
            except Exception as exc:  # the launcher itself failed: report, do not retry
                self._give_up(f"could not start worker {rank}: {exc!r}")
                return
            if process is None:
                self.state = UNWATCHED  # started by something that gives nothing to watch
                return
            hand_connection(process, sleigh)
            process.wait()
            if self.stopping.is_set():
                self.state = EXITED
                return
            self.state = RESTARTING
            tail = self.launcher.log_tail(process)
            failures = 0 if sleigh.joins(rank) > joins else failures + 1
            last = failures >= STARTUP_FAILURES
            if last:
                self._give_up(f"worker {rank} exited {describe_exit(process.returncode)} "
                              f"{failures} times before joining; not restarting it"
                              + (f"; its last output:\n{tail}" if tail else ""))
            exit = WorkerExit(rank, process.pid, process.returncode, tail,
                              self.launcher.worker_host(process), last)
            if not sleigh.on_exit(exit) or last:
                if not last:
                    self.state = EXITED
                return
            self.restarts += 1

    def _give_up(self, why: str) -> None:
        self.failure = why
        self.state = FAILED

    def leave(self) -> None:
        """No more restarts: the sleigh is stopping."""
        self.stopping.set()
