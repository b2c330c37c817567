"""Launchers: how a sleigh starts and supervises its workers (see ``base`` for the interface).

``launcher_for`` turns ``Sleigh(launch=...)`` into one: ``'local'``, ``'ssh'``, a
``distributed.Client`` (its Dask cluster), a callable ``(argv, rank)``, or any object that
implements ``Launcher``.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from .base import (
    EXITED, FAILED, RESTARTING, RUNNING, STARTING, UNWATCHED, WATCHED, Launcher, SleighInfo,
    WorkerExit, WorkerState, describe_exit, worker_argv,
)
from .dask import DaskLauncher, is_dask_client
from .function import FunctionLauncher
from .local import LocalLauncher
from .processes import ProcessLauncher
from .ssh import SshLauncher

__all__ = [
    "EXITED",
    "FAILED",
    "RESTARTING",
    "RUNNING",
    "STARTING",
    "UNWATCHED",
    "WATCHED",
    "DaskLauncher",
    "FunctionLauncher",
    "Launcher",
    "LocalLauncher",
    "ProcessLauncher",
    "SleighInfo",
    "SshLauncher",
    "WorkerExit",
    "WorkerState",
    "describe_exit",
    "launcher_for",
    "worker_argv",
]


def launcher_for(launch: Any, nodes: Sequence[str] | None = None, python: str | None = None,
                 ssh: Sequence[str] = ("ssh",), env: dict | None = None) -> Launcher:
    """The launcher ``Sleigh(launch=..., nodeList=..., python=..., ssh=..., env=...)`` means."""
    if isinstance(launch, Launcher):
        return launch
    if launch == "local":
        return LocalLauncher(python or sys.executable, env)
    if launch == "ssh":
        return SshLauncher(nodes or (), ssh, python or "python")
    if is_dask_client(launch):  # a distributed.Client: workers on its Dask cluster
        return DaskLauncher(launch)
    if callable(launch):
        return FunctionLauncher(launch, python or sys.executable)
    raise ValueError(f"launch must be 'local', 'ssh', a distributed.Client, a callable or a "
                     f"Launcher, not {launch!r}")
