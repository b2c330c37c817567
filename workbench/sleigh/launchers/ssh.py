"""Workers on other hosts, started with ``ssh host python -m workbench worker ...``."""

from __future__ import annotations

import subprocess
from typing import Sequence

from ..options import WorkerSetup
from .base import SleighInfo, worker_argv
from .processes import ProcessLauncher


class SshLauncher(ProcessLauncher):
    """Workers on the hosts of ``nodes``, rank r on ``nodes[r % len(nodes)]``, started with the
    ``ssh`` command and ``python`` there. The broker address must be one the nodes reach.
    ``setup``: the workers' directory and extra import directories there."""

    def __init__(self, nodes: Sequence[str], ssh: Sequence[str] = ("ssh",),
                 python: str = "python", setup: WorkerSetup = WorkerSetup()) -> None:
        super().__init__()
        if not nodes:
            raise ValueError("launch='ssh' needs nodeList, the hosts to start workers on")
        self.nodes = list(nodes)
        self.ssh = list(ssh)
        self.python = python
        self.setup = setup

    def argv(self, sleigh: SleighInfo, rank: int) -> list[str]:
        host = self.nodes[rank % len(self.nodes)]
        remote = worker_argv(sleigh.worker_broker, sleigh.name, rank, self.python)
        return [*self.ssh, host, self.setup.remote_command(remote)]

    def popen(self, sleigh: SleighInfo, rank: int) -> subprocess.Popen:
        return subprocess.Popen(self.argv(sleigh, rank), stdin=sleigh.worker_stdin,
                                start_new_session=True)
