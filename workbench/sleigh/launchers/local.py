"""Workers on this machine: ``python -m workbench worker`` with this Python (or another) and the
master's own import directories."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

from ...config import BROKER_ENV
from ..options import WorkerSetup
from ..worker import WORKER_ENV
from .base import SleighInfo, worker_argv
from .processes import ProcessLauncher


class LocalLauncher(ProcessLauncher):
    """Workers here, with ``python`` and the master's own import directories (a project's, a
    notebook's folder; not installed packages) in the environment ``env`` (default: this
    process's). Their own output (not the tasks', which goes to the master) is kept in an
    unlinked temporary file per process, read when one dies, or with ``setup.log_dir`` in a
    file there named after the sleigh and the rank. ``setup`` also gives their working
    directory (default: this process's) and extra import directories."""

    def __init__(self, python: str = sys.executable, env: dict | None = None,
                 setup: WorkerSetup = WorkerSetup()) -> None:
        super().__init__()
        self.python = python
        self.setup = setup
        self.env = dict(os.environ if env is None else env)
        self.env[WORKER_ENV] = "1"  # a task may not start a sleigh of its own
        path = [entry or os.getcwd() for entry in sys.path
                if entry == "" or (os.path.isdir(entry) and not _installed(entry))]
        if self.env.get("PYTHONPATH"):
            path.append(self.env["PYTHONPATH"])
        self.env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
        self.env = setup.environment(self.env)  # modulePath first
        self._logs: dict[int, object] = {}

    def popen(self, sleigh: SleighInfo, rank: int) -> subprocess.Popen:
        if self.setup.log_dir:
            log = open(os.path.join(self.setup.log_dir, f"{sleigh.name}_{rank:04d}.txt"), "ab+")
        else:
            log = tempfile.TemporaryFile()
        argv = worker_argv(sleigh.worker_broker, sleigh.name, rank, self.python,
                           parent_pid=os.getpid())
        env = dict(self.env)
        if sleigh.connection:  # the worker sets it from its stdin, so tasks connect too
            env.pop(BROKER_ENV, None)
        else:
            env[BROKER_ENV] = sleigh.broker
        process = subprocess.Popen(argv, env=env, stdin=sleigh.worker_stdin, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=self.setup.working_dir)
        self._logs[process.pid] = log
        return process

    def worker_host(self, process: subprocess.Popen) -> str:
        return socket.gethostname()  # a local worker is its process

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
