"""A broker's data directory: the lock that keeps a second broker out, the log that is replayed
into the state at start and appended to as the state changes, the fsync policy, compaction.

Files: ``lock`` (held with ``flock`` while a broker runs; it holds that broker's pid), ``log``
(see ``log``), and ``log.new`` while a compaction writes the next log.

What each ``--fsync`` policy guarantees, as Redis's ``appendfsync`` (the default is everysec,
Redis's default too). Under every policy a change's record is in the log file (copied into a
mapping of it: the page cache, see ``log``) before any reply that confirms the change leaves,
so a crash of the broker process loses nothing acknowledged:

* ``always``: a reply that confirms a change leaves only after the change is on disk. The
  records of one pass of the broker's loop share one ``fdatasync`` (group commit), so clients
  that call at the same time share its cost. Nothing acknowledged is lost, even to a power cut.
* ``everysec``: a thread puts the records on disk at most a second after they were written. A
  crash of the machine loses what was acknowledged in the last second or two.
* ``no``: put on disk when the kernel chooses (Linux: within about 30 s). A machine crash
  loses what the kernel had not written yet.

The broker's calls: ``record_log`` for the changes of every call into the state (the
``EntryRecorder``'s: encoded and copied into the log's mapping at once), and, once a pass,
``commit`` before the pass's replies leave when ``needs_commit`` says it must: under
``always`` (the ``fdatasync``), or when records did not fit in the mapping and wait to be
written (where a full disk shows: ``commit`` raises OSError and the broker stops without
sending those replies). Under ``everysec`` and ``no`` a pass thus costs no system call.

Compaction starts when the log is larger than ``compact_min`` (64 MiB) and more than
``compact_factor`` (2) times the live data, which is the larger of the bytes values hold and the
size of the last snapshot; it writes the new log in slices of ``compact_slice`` (5 ms) of the
loop's time (see ``compaction``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from typing import Callable

from ...config import (
    COMPACT_FACTOR, COMPACT_MIN, COMPACT_SLICE, DEFAULT_FSYNC, FSYNC_EVERY, FSYNC_POLICIES,
)
from ..state import BrokerState
from ..state.restore import RestoreReport, Restorer
from .compaction import Compaction, map_shared, sync_directory
from .log import LogWriter, Replay, read_log
from .records import EntryRecorder, encode

log = logging.getLogger("workbench.broker")



class DataDirError(Exception):
    """The data directory cannot be used: another broker holds it, or it cannot be read or
    written."""


class DataDirLocked(DataDirError):
    """Another broker holds the data directory."""


class DataDir:
    def __init__(self, path: str, fsync: str = DEFAULT_FSYNC,
                 fdatasync: Callable[[int], None] = os.fdatasync,
                 compact_min: int = COMPACT_MIN, compact_factor: float = COMPACT_FACTOR,
                 compact_slice: float = COMPACT_SLICE,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"--fsync {fsync!r}: use one of {', '.join(FSYNC_POLICIES)}")
        self.path = os.path.abspath(path)
        self.fsync = fsync
        self.fdatasync = fdatasync
        self.compact_min = compact_min
        self.compact_factor = compact_factor
        self.compact_slice = compact_slice
        self.wall_clock = wall_clock  # deadlines are logged on it
        self.log_path = os.path.join(self.path, "log")
        self._temp_path = self.log_path + ".new"
        self._lock_fd: int | None = None
        self.writer: LogWriter | None = None
        self.state: BrokerState | None = None
        self.compaction: Compaction | None = None
        self.snapshot_bytes = 0  # the size of the last snapshot: live data then
        self._compact_at = compact_min  # the log needs no compaction below this size
        #: ``work`` has something to do after this pass (a compaction to start or to go on
        #: with): the loop reads an attribute a pass, not a call.
        self.wants_work = False
        self.compactions = 0
        self.last_compaction: float | None = None  # wall clock
        self._always = fsync == "always"
        #: ``commit`` must run before the replies of this pass leave: records wait to be
        #: written (they did not fit in the log's mapping), or ``always`` syncs every pass.
        #: The loop reads an attribute a pass, not a call: under ``everysec`` and ``no`` a
        #: record is in the file once recorded.
        self.needs_commit = self._always
        #: The broker's call for the changes of each call into the state, as its
        #: ``Effects.log`` holds them (read at once: they are the state's until its next
        #: call): the recorder's ``record`` once the directory is open, called directly.
        self.record_log: Callable[[list], None] = _not_open
        self._recorder: EntryRecorder | None = None
        self._clock_offset = 0.0  # the wall clock minus the state's
        self._syncer: _EverySecond | None = None
        self._swap = threading.Lock()  # the syncer's fdatasync against a compaction's swap

    # ---------------------------------------------------------------- start and stop

    def lock(self) -> None:
        """Take the directory (made if missing), unless this has it already; DataDirLocked if
        a broker has it, DataDirError if it cannot be made or opened."""
        if self._lock_fd is not None:
            return
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DataDirError(f"data directory {self.path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise DataDirLocked(f"data directory {self.path} is in use by another broker (pid "
                                f"{holder}): stop that one, or give this one another "
                                "--data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        self._lock_fd = fd

    def open(self, state: BrokerState, now: float) -> tuple[Replay, RestoreReport]:
        """Replay the log into the fresh ``state`` (its clock reads ``now``), record what the
        restart changed (purges, leased values put back), and start logging. Takes the lock
        first if ``lock`` was not called. DataDirError if a file cannot be read or written,
        LogError if the log is not one this version reads."""
        self.lock()
        try:
            return self._open(state, now)
        except OSError as exc:
            raise DataDirError(f"data directory {self.path}: {exc}") from None

    def _open(self, state: BrokerState, now: float) -> tuple[Replay, RestoreReport]:
        self.state = state
        self._clock_offset = self.wall_clock() - now
        try:
            os.unlink(self._temp_path)  # a compaction that a crash interrupted
        except FileNotFoundError:
            pass
        restorer = Restorer(state, strict=False)
        replay = read_log(self.log_path, self._clock_offset, restorer.apply)
        report, made = restorer.finish()
        for misfit in report.misfits:
            log.warning("data directory: skipped a record that does not fit: %s", misfit)
        created = not os.path.exists(self.log_path)
        self._use(LogWriter.reopen(self.log_path, self.fdatasync))
        self._recorder = EntryRecorder(self.writer, map_shared, self._clock_offset)
        self.record_log = self._recorder.record
        if created:
            sync_directory(self.path)
        self._measured(self.writer.size)
        self.record(made)
        self.writer.commit(sync=True)
        if self.fsync == "everysec":
            self._syncer = _EverySecond(self)
            self._syncer.start()
        return replay, report

    def close(self) -> None:
        """Put everything on disk and let the directory go (whatever the policy: a broker that
        stops loses nothing)."""
        if self._syncer is not None:
            self._syncer.stop()
            self._syncer = None
        if self.compaction is not None:
            self.writer.tap = None
            self.compaction.abandon()
            self.compaction = None
        if self.writer is not None:
            self.record_log = _not_open
            try:
                self.writer.commit(sync=True)
            finally:
                self.writer.close()
                self.writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the lock goes with it
            self._lock_fd = None

    # ---------------------------------------------------------------- the loop's calls

    def record(self, changes: list) -> None:
        """Append change records (see ``record_log`` for the changes of calls)."""
        offset, append = self._clock_offset, self.writer.append
        for record in changes:
            append(encode(record, offset, map_shared))

    def commit(self) -> None:
        """Before the replies of a pass leave, when ``needs_commit`` says so: write the
        records that wait and, under ``always``, put the log on disk. OSError if the disk
        refuses."""
        self.writer.commit(self._always)
        self.needs_commit = self._always

    def _use(self, writer: LogWriter) -> None:
        """Append to ``writer`` from now on."""
        self.writer = writer
        writer.notify = self._writer_notice
        if self._recorder is not None:
            self._recorder.writer = writer

    def _writer_notice(self) -> None:
        """The writer's ``notify``: records wait for a commit, or the log passed the size
        that may call for a compaction."""
        writer = self.writer
        if writer.waiting:
            self.needs_commit = True
        if writer.size > self._compact_at:
            self.wants_work = True

    @property
    def busy(self) -> bool:
        """A compaction has records to write: the loop should come back at once (``work``).
        (Once they are written, it waits for them to reach the disk, and for a pass.)"""
        return self.compaction is not None and self.compaction.writing

    def set_clock(self, now: float) -> None:
        """The state's clock reads ``now``: deadlines are logged on the wall clock from here
        (the two drift apart slowly: the broker calls this now and then)."""
        self._clock_offset = self.wall_clock() - now
        if self._recorder is not None:
            self._recorder.clock_offset = self._clock_offset

    def work(self, now: float) -> None:
        """After a pass's replies left, if ``wants_work``: start a compaction if the log
        outgrew the live data, or take the next slice of the one under way."""
        compaction = self.compaction
        if compaction is None:  # every pass while the log is past its size for one
            size = self.writer.size
            if size > self._compact_at and size > self.compact_factor * self.state.memory.used:
                self.set_clock(now)
                self._start_compaction()
            return
        try:
            if compaction.ready:
                self._swap_in(compaction)
            else:
                compaction.step(self.compact_slice)
        except OSError as exc:  # the old log is still whole: go on with it, try again later
            log.error("data directory: compaction failed, the log goes on as it was: %s", exc)
            self.writer.tap = None
            compaction.abandon()
            self.compaction = None
            self._measured(self.writer.size)  # not again until it doubles

    def _start_compaction(self) -> None:
        self.writer.commit(self._always)
        started = time.monotonic()
        try:
            compaction = Compaction(self.state, self.log_path, self._temp_path,
                                    self._clock_offset, self.fdatasync)
        except OSError as exc:  # no room for the new log: the old one goes on, whole
            log.error("data directory: a compaction could not start, the log goes on as it "
                      "was: %s", exc)
            try:
                os.unlink(self._temp_path)
            except OSError:
                pass
            self._measured(self.writer.size)  # not again until it doubles
            return
        self.writer.tap = compaction.tap
        self.compaction = compaction
        log.info("data directory: compacting a log of %d bytes (%d in values; the state's "
                 "shape taken in %.3f s)", self.writer.size, self.state.memory.used,
                 time.monotonic() - started)

    def _swap_in(self, compaction: Compaction) -> None:
        old = self.writer
        old.commit(self._always)  # nothing may be left behind in the old log's buffer
        with self._swap:
            self._use(compaction.finish())
            old.close()
        self.compaction = None
        self._measured(compaction.snapshot_bytes)
        self.compactions += 1
        self.last_compaction = self.wall_clock()
        log.info("data directory: compacted the log to %d bytes", self.writer.size)

    def status(self) -> dict:
        """What ``workbench status`` may show of the data directory (times on the wall
        clock, None for never)."""
        writer = self.writer
        return {"data_dir": self.path, "fsync": self.fsync,
                "log_bytes": writer.size if writer is not None else None,
                "last_fsync": writer.synced_at if writer is not None else None,
                "compactions": self.compactions, "last_compaction": self.last_compaction,
                "compacting": self.compaction is not None}

    def _measured(self, snapshot_bytes: int) -> None:
        """The live data was ``snapshot_bytes`` bytes of log: compact again once the log is
        ``compact_factor`` times that (and than the values then, and ``compact_min``)."""
        self.snapshot_bytes = snapshot_bytes
        self._compact_at = max(self.compact_min, self.compact_factor * snapshot_bytes)
        self.wants_work = self.compaction is not None or (
            self.writer is not None and self.writer.size > self._compact_at)
        if self.writer is not None:
            self.writer.limit = self._compact_at  # it tells when the log passes it

    def sync_if_written(self) -> None:
        """Put what was written on disk, if anything was since the last time (``everysec``)."""
        with self._swap:
            writer = self.writer
            if writer is not None and writer.unsynced:
                writer.sync()


def _not_open(entries: list) -> None:
    raise RuntimeError("the data directory is not open (DataDir.open)")


class _EverySecond(threading.Thread):
    """``everysec``: an ``fdatasync`` a second at most, off the loop's thread."""

    def __init__(self, data_dir: DataDir) -> None:
        super().__init__(name="workbench-fsync", daemon=True)
        self.data_dir = data_dir
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(FSYNC_EVERY):
            try:
                self.data_dir.sync_if_written()
            except OSError as exc:  # the next commit meets the failing disk too, and stops
                log.error("data directory: fdatasync failed: %s", exc)

    def stop(self) -> None:
        self._stopping.set()
        self.join()
