"""Workers started by a function of the user's: a batch scheduler's submit command, a container
runtime, anything that can run a command line."""

from __future__ import annotations

import subprocess
import sys
from typing import Callable

from .base import SleighInfo, worker_argv
from .processes import ProcessLauncher


class FunctionLauncher(ProcessLauncher):
    """Workers started by ``fn(argv, rank)``. If it returns a ``subprocess.Popen``, that
    process is watched and replaced when it dies, like a local one; anything else is not
    watched. Under CURVE the command line says ``--broker -``: start it with
    ``stdin=subprocess.PIPE`` and the connection is written there."""

    def __init__(self, fn: Callable[[list[str], int], object],
                 python: str = sys.executable) -> None:
        super().__init__()
        self.fn = fn
        self.python = python

    def popen(self, sleigh: SleighInfo, rank: int) -> subprocess.Popen | None:
        started = self.fn(worker_argv(sleigh.worker_broker, sleigh.name, rank, self.python),
                          rank)
        return started if isinstance(started, subprocess.Popen) else None
