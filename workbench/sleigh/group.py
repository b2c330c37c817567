"""Several workers from one command: ``workbench worker --workers K``.

A batch job that asks for K cores runs one such process (``Batch(workers_per_job=K)``): it
starts K workers on its node with consecutive ranks (``--rank R`` gives R to R + K - 1; without
it each takes the next free rank), hands each the broker (a CURVE connection on its stdin,
never on its command line), and stays until they all end. It is their nanny: a worker killed by
a signal while the sleigh runs (the kernel's OOM killer, a stray ``kill``) is started again with
the same rank, as a local sleigh replaces its workers, unless that happened ``QUICK_DEATHS``
times in a row within ``STARTUP_GRACE`` of a start (it cannot run here). A worker that exits
with a status of its own (the sleigh is gone, the broker unreachable) is not. The workers die
with the group, even by SIGKILL (``--parent-pid``), and a SIGTERM, SIGINT or SIGHUP it gets
(``scancel``, a PSI/J cancel, Ctrl-C) goes on to them, so the job ends when they have left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from ..connection_file import BrokerTarget
from .launchers.base import describe_exit, worker_argv

#: Signals passed on to the workers; after one, a worker that ends is not started again.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: A worker killed sooner than this after its start died quickly (seconds)...
STARTUP_GRACE = 5.0
#: ... and after this many quick deaths in a row it is not started again.
QUICK_DEATHS = 3


@dataclass
class _Member:
    """One worker of the group, as started last."""

    rank: int | None
    process: subprocess.Popen
    quick_deaths: int = 0  # before this start, in a row
    started: float = field(default_factory=time.monotonic)


class WorkerGroup:
    """``count`` workers of ``sleigh`` on this machine, kept running until the sleigh ends."""

    def __init__(self, target: BrokerTarget, sleigh: str, count: int, rank: int | None = None,
                 python: str = sys.executable) -> None:
        self.connection = target.to_json() if target.curve else None
        self.broker = "-" if self.connection else target.address
        self.sleigh, self.python = sleigh, python
        self.stopping = False
        self.members = [self._start(None if rank is None else rank + offset)
                        for offset in range(count)]

    def _start(self, rank: int | None, quick_deaths: int = 0) -> _Member:
        argv = worker_argv(self.broker, self.sleigh, rank, self.python, parent_pid=os.getpid())
        process = subprocess.Popen(argv, stdin=subprocess.PIPE if self.connection
                                   else subprocess.DEVNULL)
        if self.connection:
            with process.stdin:
                process.stdin.write(self.connection.encode())
        return _Member(rank, process, quick_deaths)

    def forward(self, signum: int, frame: FrameType | None = None) -> None:
        """A signal handler: pass ``signum`` on to every worker still running."""
        self.stopping = True
        for member in self.members:
            if member.process.poll() is None:
                member.process.send_signal(signum)

    def wait(self) -> int:
        """Until every worker has ended for good -> 0, or the first failure's status."""
        failure = 0
        while self.members:
            pid, status = os.wait()
            member = next((m for m in self.members if m.process.pid == pid), None)
            if member is None:
                continue
            member.process.returncode = code = os.waitstatus_to_exitcode(status)
            self.members.remove(member)
            if code == 0:
                continue
            lived = time.monotonic() - member.started
            quick_deaths = member.quick_deaths + 1 if lived < STARTUP_GRACE else 0
            again = code < 0 and not self.stopping and quick_deaths < QUICK_DEATHS
            print(f"workbench worker --workers: worker {member.rank} (pid {pid}) died "
                  f"{describe_exit(code)} after {lived:.1f} s; "
                  f"{'starting it again' if again else 'not starting it again'}",
                  file=sys.stderr, flush=True)
            if again:
                self.members.append(self._start(member.rank, quick_deaths))
            elif not failure:
                failure = 128 - code if code < 0 else code
        return failure


def run_group(target: BrokerTarget, sleigh: str, count: int, rank: int | None = None) -> int:
    """``workbench worker --workers K``: run the group until it ends -> exit status (128 + N
    for a signal N, as a shell says it)."""
    group = WorkerGroup(target, sleigh, count, rank)
    previous = {signum: signal.signal(signum, group.forward) for signum in FORWARDED}
    try:
        return group.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
