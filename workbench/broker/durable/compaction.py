"""Compaction: a new log made of a snapshot of the state, written beside the old one a slice at
a time while the broker goes on serving and committing to the old one, then swapped in by
rename.

1. ``Compaction(...)`` takes the state's shape (``Snapshot``: the one pause that grows with the
   number of values, not their bytes) and maps the files of shared-memory values, so that they
   can still be read when the state has let them go.
2. ``step`` writes the snapshot's records for a time budget a call: the loop calls it once a
   pass, after the pass's replies left. Everything committed to the old log meanwhile is kept
   (``LogWriter.tap``): those changes came after the snapshot.
3. Once the snapshot is written, a thread puts it on disk (``fdatasync``) while the loop goes on.
4. ``finish``, in the loop: write what was committed meanwhile, ``fdatasync`` (only that tail
   is not on disk yet), rename over the old log, fsync the directory -> the new log's writer.

A crash at any moment leaves either the old log whole (the new one is a temporary file, removed
at the next start) or the new one whole.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

from ... import shm
from ..state import BrokerState
from ..state.snapshot import Snapshot
from .log import LogWriter
from .records import encode

#: Records written between two looks at the clock.
_BATCH = 256


class Compaction:
    def __init__(self, state: BrokerState, path: str, temp_path: str, clock_offset: float,
                 fdatasync: Callable[[int], None] = os.fdatasync) -> None:
        self.path = path
        self.temp_path = temp_path
        snapshot = Snapshot(state)
        self._views: dict[bytes, list | None] = {ref: map_shared(ref) for ref in snapshot.shared}
        self._records = snapshot.records()
        self._clock_offset = clock_offset
        self.writer = LogWriter.create(temp_path, fdatasync)
        self.snapshot_bytes = 0  # the size of the snapshot once it is written
        self._tail: list = []  # buffers committed to the old log since the snapshot
        self._syncing: threading.Thread | None = None
        self._sync_error: OSError | None = None

    def tap(self, buffers: list) -> None:
        """Keep what the old log committed (the old log's ``LogWriter.tap``)."""
        self._tail.extend(buffers)

    @property
    def writing(self) -> bool:
        """Snapshot records are left to write (``step``)."""
        return self._syncing is None

    @property
    def ready(self) -> bool:
        """The snapshot is written and on disk: ``finish`` may swap it in."""
        syncing = self._syncing
        return syncing is not None and not syncing.is_alive()

    def step(self, budget: float) -> None:
        """Write snapshot records for about ``budget`` seconds (at least a few, and a value
        whole, however large); once all are written, start putting them on disk."""
        if self._syncing is not None:
            return
        deadline = time.monotonic() + budget
        writer, records, views = self.writer, self._records, self._views
        while True:
            batch = [record for _, record in zip(range(_BATCH), records)]
            for record in batch:
                writer.append(encode(record, self._clock_offset, views.get))
            writer.commit(sync=False)
            if len(batch) < _BATCH:
                break
            if time.monotonic() >= deadline:
                return
        self._views = {}
        self.snapshot_bytes = writer.size
        self._syncing = threading.Thread(target=self._sync, name="workbench-compaction",
                                         daemon=True)
        self._syncing.start()

    def _sync(self) -> None:
        try:
            self.writer.sync()
        except OSError as exc:
            self._sync_error = exc

    def finish(self) -> LogWriter:
        """Swap the new log in (``ready`` said it may) -> its writer, to append to from now
        on. OSError if the disk refused: the old log stays, and ``abandon`` cleans up."""
        if self._sync_error is not None:
            raise self._sync_error
        writer = self.writer
        writer.append_framed(self._tail)
        self._tail = []
        writer.commit(sync=True)
        os.rename(self.temp_path, self.path)
        sync_directory(os.path.dirname(self.path))
        return writer

    def abandon(self) -> None:
        """Give up (the broker stops, or the disk refused): the old log stays as it was."""
        if self._syncing is not None:
            self._syncing.join()
        self.writer.close()
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass


def map_shared(reference: bytes) -> list | None:
    """A shared-memory value's frames, mapped now: they stay readable after the file is
    removed. None if the file cannot be read (the log then keeps its reference)."""
    try:
        return shm.attach(reference)
    except (OSError, ValueError):
        return None


def sync_directory(path: str) -> None:
    """Put a directory's entries on disk: a file created or renamed in it is there after a
    crash only once this returns."""
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
