"""``FileObserver``: berryMQ's file-system adapter. It polls the files a glob matches and
twitters ``<id_name>:created``, ``:removed`` and ``:modified``, each with the path as
``args[0]``, in that order within a round (paths sorted). Files present when it starts are not
reported as created.

A file counts as modified when its modification time (in nanoseconds) or its size changed since
the previous round: berryMQ compared whole-second-resolution times only, which misses a quick
rewrite. ``~`` in the glob is expanded, as berryMQ's own example (``"~/log/*.log"``) needs.
"""

from __future__ import annotations

import glob
import os

from ...topics import parse
from ..registry import registry
from ._polling import Polling

Snapshot = dict[str, tuple[int, int]]


class FileObserver(Polling):
    def __init__(self, target_dir: str, id_name: str, interval: float = 5) -> None:
        super().__init__(interval, f"workbench-mq-fileobserver-{id_name}")
        self.target_dir = target_dir
        self.id_name = id_name
        self._pattern = os.path.expanduser(target_dir)
        self._ids = {event: parse(f"{id_name}:{event}")
                     for event in ("created", "removed", "modified")}
        self.fileinfo = self._snapshot()
        self.start()

    def _snapshot(self) -> Snapshot:
        info: Snapshot = {}
        for path in glob.glob(self._pattern):
            try:
                stat = os.stat(path)
            except OSError:  # removed between the glob and the stat
                continue
            info[path] = (stat.st_mtime_ns, stat.st_size)
        return info

    def poll(self) -> None:
        old, new = self.fileinfo, self._snapshot()
        self.fileinfo = new
        send = registry.send
        for path in sorted(new.keys() - old.keys()):
            send(self._ids["created"], (path,), {})
        for path in sorted(old.keys() - new.keys()):
            send(self._ids["removed"], (path,), {})
        for path in sorted(old.keys() & new.keys()):
            if old[path] != new[path]:
                send(self._ids["modified"], (path,), {})
