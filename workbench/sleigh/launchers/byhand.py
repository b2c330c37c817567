"""No launcher: workers are started by hand (``workbench worker --sleigh NAME``), as
NetWorkSpaces' ``launch='web'`` had them started from the command in the ``runMe`` variable."""

from __future__ import annotations

from .base import SleighInfo, WorkerState


class ByHand:
    """A ``Launcher`` that starts nothing: every worker joins by itself."""

    def worker_count(self, requested: int | None) -> int:
        return 0

    def start(self, sleigh: SleighInfo, count: int) -> list[WorkerState]:
        return []

    def running(self) -> list[WorkerState]:
        return []

    def stop(self) -> None:
        """Workers that joined by hand leave once the sleigh's workspace is gone."""
