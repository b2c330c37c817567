"""Starting sleigh workers, watching them, and restarting the ones that die.

A *launcher* turns a rank into a running worker process: ``LocalLauncher`` runs
``python -m workbench worker`` here, ``SshLauncher`` runs it on a node through ``ssh``, and
``CallableLauncher`` hands the command to any function (a batch scheduler, a container
runtime). Workers that nobody launched join with ``workbench worker --broker ADDR --sleigh
NAME`` and are not supervised.

A ``Supervisor`` thread per launched rank starts the worker, waits on its process, and when it
dies unexpectedly tells the master at once (which ends the dead worker's broker session so its
leased tasks come back now, not after the heartbeat timeout) and starts a replacement with the
same rank. Local workers are started from that thread, which lives as long as the sleigh: the
kernel kills them (PR_SET_PDEATHSIG) when the thread that started them ends, so a master that
dies, even by SIGKILL, leaves no worker behind.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Sequence

#: A worker that dies this many times in a row before saying hello is not started again.
STARTUP_FAILURES = 3
#: Seconds ``stop`` gives workers to leave by themselves, then after SIGTERM.
LEAVE_TIMEOUT = 2.0
KILL_TIMEOUT = 1.0


def worker_argv(broker: str, sleigh: str, rank: int | None = None,
                python: str = sys.executable, parent_pid: int | None = None) -> list[str]:
    """The command that runs one worker of ``sleigh``."""
    argv = [python, "-m", "workbench", "worker", "--broker", broker, "--sleigh", sleigh]
    if rank is not None:
        argv += ["--rank", str(rank)]
    if parent_pid is not None:
        argv += ["--parent-pid", str(parent_pid)]
    return argv


class Launcher:
    """Starts the worker of one rank -> its process (None: started, but not watchable)."""

    def __init__(self, broker: str, sleigh: str) -> None:
        self.broker = broker
        self.sleigh = sleigh

    def start(self, rank: int) -> subprocess.Popen | None:
        raise NotImplementedError

    def log_tail(self, process: subprocess.Popen) -> str:
        """What the worker printed outside of tasks (its errors), if this launcher kept it."""
        return ""


class LocalLauncher(Launcher):
    """Workers on this machine, with this Python and the master's own import directories (a
    project's, a notebook's folder; not installed packages). Their own output (not
    the tasks', which goes to the master) is kept in an unlinked temporary file per process,
    read when one dies."""

    def __init__(self, broker: str, sleigh: str, python: str = sys.executable,
                 env: dict | None = None) -> None:
        super().__init__(broker, sleigh)
        self.python = python
        self.env = dict(os.environ if env is None else env)
        self.env["WORKBENCH_BROKER"] = broker
        path = [entry or os.getcwd() for entry in sys.path
                if entry == "" or (os.path.isdir(entry) and not _installed(entry))]
        if self.env.get("PYTHONPATH"):
            path.append(self.env["PYTHONPATH"])
        self.env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
        self._logs: dict[int, object] = {}

    def start(self, rank: int) -> subprocess.Popen:
        log = tempfile.TemporaryFile()
        argv = worker_argv(self.broker, self.sleigh, rank, self.python, parent_pid=os.getpid())
        process = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self._logs[process.pid] = log
        return process

    def log_tail(self, process: subprocess.Popen, size: int = 2000) -> str:
        log = self._logs.pop(process.pid, None)
        if log is None:
            return ""
        try:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - size))
            return log.read().decode("utf-8", "replace").strip()
        finally:
            log.close()


def _installed(entry: str) -> bool:
    """Whether an import path entry belongs to a Python installation (the worker's Python
    has its own)."""
    prefixes = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix) if p}
    entry = os.path.abspath(entry)  # a relative entry (sys.path.insert(0, "lib")) is cwd's
    return "site-packages" in entry or any(
        os.path.commonpath([entry, prefix]) == prefix for prefix in prefixes)


class SshLauncher(Launcher):
    """Workers on the hosts of ``nodes`` (rank r on ``nodes[r % len(nodes)]``), started with
    ``ssh host python -m workbench worker ...``. The broker address must be one the nodes
    reach."""

    def __init__(self, broker: str, sleigh: str, nodes: Sequence[str],
                 ssh: Sequence[str] = ("ssh",), python: str = "python") -> None:
        super().__init__(broker, sleigh)
        if not nodes:
            raise ValueError("launch='ssh' needs nodeList, the hosts to start workers on")
        self.nodes = list(nodes)
        self.ssh = list(ssh)
        self.python = python

    def argv(self, rank: int) -> list[str]:
        host = self.nodes[rank % len(self.nodes)]
        remote = worker_argv(self.broker, self.sleigh, rank, self.python)
        return [*self.ssh, host, shlex.join(remote)]

    def start(self, rank: int) -> subprocess.Popen:
        return subprocess.Popen(self.argv(rank), stdin=subprocess.DEVNULL,
                                start_new_session=True)


class CallableLauncher(Launcher):
    """Workers started by ``fn(argv, rank)``; if it returns a ``subprocess.Popen``, that
    process is watched and restarted like a local one."""

    def __init__(self, broker: str, sleigh: str, fn: Callable, python: str = sys.executable
                 ) -> None:
        super().__init__(broker, sleigh)
        self.fn = fn
        self.python = python

    def start(self, rank: int) -> subprocess.Popen | None:
        started = self.fn(worker_argv(self.broker, self.sleigh, rank, self.python), rank)
        return started if isinstance(started, subprocess.Popen) else None


class Supervisor(threading.Thread):
    """Starts the worker of one rank and keeps it running until the sleigh stops.

    ``on_death(rank, process, tail)`` is called when the worker dies unexpectedly and says
    whether to start a replacement; ``hellos(rank)`` counts the hellos of that rank so far, to
    tell a worker that died at work from one that never started."""

    def __init__(self, rank: int, launcher: Launcher,
                 on_death: Callable[[int, subprocess.Popen, str], bool],
                 hellos: Callable[[int], int]) -> None:
        super().__init__(name=f"sleigh-supervisor-{rank}", daemon=True)
        self.rank = rank
        self.launcher = launcher
        self.on_death = on_death
        self.hellos = hellos
        self.process: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.failure: str | None = None  # why this rank was given up

    def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            hellos = self.hellos(self.rank)
            try:
                process = self.process = self.launcher.start(self.rank)
            except Exception as exc:  # the launcher itself failed: report, do not retry
                self.failure = f"could not start worker {self.rank}: {exc!r}"
                return
            if process is None:
                return  # started by a launcher that gives nothing to watch
            process.wait()
            if self.stopping.is_set():
                return
            tail = self.launcher.log_tail(process)
            failures = 0 if self.hellos(self.rank) > hellos else failures + 1
            if failures >= STARTUP_FAILURES:
                self.failure = (f"worker {self.rank} exited {describe_exit(process.returncode)} "
                                f"{failures} times before joining; not restarting it"
                                + (f"; its last output:\n{tail}" if tail else ""))
                self.on_death(self.rank, process, tail)
                return
            if not self.on_death(self.rank, process, tail):
                return

    def leave(self) -> None:
        """No more restarts: the sleigh is stopping."""
        self.stopping.set()


def stop_all(supervisors: Sequence[Supervisor]) -> None:
    """Make the workers leave: they exit by themselves once the sleigh's workspace is gone;
    those still running after LEAVE_TIMEOUT get SIGTERM, then SIGKILL."""
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
            supervisor.launcher.log_tail(process)  # closes its log file


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "(still running)"
    if returncode < 0:
        return f"with signal {-returncode}"
    return f"with status {returncode}"
