"""Workers started by a NetWorkSpaces launch function (``sshcmd``, ``rshcmd``, a script's
own ``fn(machine, **options)``): it gives the command prefix for a machine of ``nodeList``,
the worker's command line is appended, and the process is watched like a local one."""

from __future__ import annotations

import subprocess
from typing import Any, Callable, Sequence

from ..options import WorkerSetup, command_prefix
from .base import SleighInfo, worker_argv
from .processes import ProcessLauncher


class CommandLauncher(ProcessLauncher):
    """One worker per entry of ``nodes`` (rank r on ``nodes[r % len(nodes)]``), started with
    ``launch(machine, **options) + [the worker's command]``."""

    def __init__(self, launch: Callable[..., list], nodes: Sequence[str],
                 options: dict[str, Any], python: str = "python",
                 setup: WorkerSetup = WorkerSetup()) -> None:
        super().__init__()
        # asked once per node here, so that a bad node or launch function fails Sleigh()
        self.prefixes = [command_prefix(launch, machine, options) for machine in nodes]
        self.python = python
        self.setup = setup

    def worker_count(self, requested: int | None) -> int:
        """As in NetWorkSpaces: one worker per entry of nodeList, whatever workerCount says."""
        return len(self.prefixes)

    def argv(self, sleigh: SleighInfo, rank: int) -> list[str]:
        remote = worker_argv(sleigh.worker_broker, sleigh.name, rank, self.python)
        return self.prefixes[rank % len(self.prefixes)] + [self.setup.remote_command(remote)]

    def popen(self, sleigh: SleighInfo, rank: int) -> subprocess.Popen:
        return subprocess.Popen(self.argv(sleigh, rank), stdin=sleigh.worker_stdin,
                                start_new_session=True)
