"""Launchers: how a sleigh starts and supervises its workers (see ``base`` for the interface).

``launcher_for`` turns ``Sleigh(launch=...)`` into one: ``'local'``, ``'ssh'``, a batch
scheduler's name (``'slurm'``, ``'pbs'``, ``'lsf'``, ``'flux'``: ``batch.Batch``, which imports
PSI/J), a ``distributed.Client`` (its Dask cluster), a callable ``(argv, rank)``, or any object
that implements ``Launcher``.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from .base import (
    EXITED, FAILED, QUEUED, RESTARTING, RUNNING, STARTING, UNWATCHED, WATCHED, Launcher,
    SleighInfo, WorkerExit, WorkerState, describe_exit, describe_worker, wait_for, worker_argv,
    worker_count,
)
from ..errors import SleighIllegalValueException
from ..options import WorkerSetup, is_command_function
from .batch import Batch
from .byhand import ByHand
from .command import CommandLauncher
from .dask import DaskLauncher, is_dask_client
from .function import FunctionLauncher
from .local import LocalLauncher
from .processes import ProcessLauncher
from .ssh import SshLauncher

__all__ = [
    "BATCH_SCHEDULERS",
    "EXITED",
    "FAILED",
    "QUEUED",
    "RESTARTING",
    "RUNNING",
    "STARTING",
    "UNWATCHED",
    "WATCHED",
    "Batch",
    "ByHand",
    "CommandLauncher",
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
    "describe_worker",
    "launcher_for",
    "wait_for",
    "worker_argv",
    "worker_count",
]


#: ``Sleigh(launch=...)`` names that mean batch jobs through PSI/J (``batch.Batch``).
BATCH_SCHEDULERS = ("slurm", "pbs", "lsf", "flux")


def launcher_for(launch: Any, nodes: Sequence[str] | None = None, python: str | None = None,
                 ssh: Sequence[str] = ("ssh",), env: dict | None = None,
                 options: dict | None = None, setup: WorkerSetup = WorkerSetup()) -> Launcher:
    """The launcher ``Sleigh(launch=..., nodeList=..., python=..., ssh=..., env=...)`` means;
    ``options``: the NetWorkSpaces options, for a NetWorkSpaces launch function (sshcmd)."""
    if isinstance(launch, Launcher):
        return launch
    if launch == "local":
        return LocalLauncher(python or sys.executable, env, setup)
    if launch == "ssh":
        return SshLauncher(nodes or (), ssh, python or "python", setup)
    if launch in BATCH_SCHEDULERS:
        return Batch(launch, python=python or sys.executable, env=env)
    if is_dask_client(launch):  # a distributed.Client: workers on its Dask cluster
        return DaskLauncher(launch)
    if is_command_function(launch):
        return CommandLauncher(launch, nodes or ["localhost"] * 3, options or {},
                               python or "python", setup)
    if callable(launch):
        return FunctionLauncher(launch, python or sys.executable)
    raise SleighIllegalValueException(
        f"unknown launch protocol: {launch!r}; launch must be 'local', 'web', 'ssh', one of "
        f"{', '.join(BATCH_SCHEDULERS)}, a distributed.Client, a function or a Launcher")
