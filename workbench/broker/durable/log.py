"""The log file: a header, then records one after the other, each framed with its length and a
checksum; appended in batches, read back in order, its torn or corrupt tail cut.

Layout (little-endian)::

    header   8 bytes "wblog\\x00\\x00\\x00", 4 bytes format version (1)
    record   4 bytes CRC-32 of the body (its initial value: the length's low 32 bits), 8 bytes
             body length, the body (``records``)

CRC-32 (zlib's) because what a log must catch is a write the machine did not finish and bits a
disk or a cable flipped, not an adversary (whoever can write the data directory can write valid
records): it catches every burst of up to 32 bits and anything else but once in 2^32, and zlib
computes it at gigabytes a second. Starting it from the length means a flipped length is
caught like a flipped body, not read as a shorter record.

``append`` encodes records into a buffer; ``commit`` writes the buffer with one ``write``
(``writev``) and, when asked, one ``fdatasync``: the broker commits once per pass of its loop,
before any reply of the pass leaves, so one ``fdatasync`` covers every request of the pass
(group commit). ``read_log`` replays a file and cuts it after its last good record.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

from .records import RecordError, decode, nbytes

MAGIC = b"wblog\x00\x00\x00"
VERSION = 1
HEADER = struct.Struct("<8sI")
FRAME = struct.Struct("<IQ")  # CRC-32 of the body from the length, body length
_MASK = 0xFFFFFFFF
_pack_frame, _crc32 = FRAME.pack, zlib.crc32  # looked up once: every record calls them
#: Frames at least this large are written from where they are, not copied into the buffer.
_BIG = 64 << 10
_IOV_MAX = 1024  # buffers per writev: the kernel refuses more


class LogError(Exception):
    """A file that this version cannot read as a log: not a log, a newer format, or a record
    whose checksum is right but whose content is not (written by another version?)."""


@dataclass
class Replay:
    """What reading a log found."""

    records: int = 0  # good records, applied
    good_bytes: int = 0  # where the last good record ends: the file is cut there
    cut_bytes: int = 0  # bytes after it
    cut_records: int = 0  # records cut: the damaged one and any whole ones after it

    def describe(self) -> str:
        if not self.cut_bytes:
            return f"{self.records} records"
        return (f"{self.records} records; a damaged tail was cut: {self.cut_records} "
                f"record{'s' if self.cut_records != 1 else ''}, {self.cut_bytes} bytes")


def read_log(path: str, clock_offset: float, apply: Callable[[object], None]) -> Replay:
    """Hand every good record of the log at ``path`` to ``apply``, in order, and cut the file
    after the last one (with an fsync). A missing or empty file is an empty log.
    ``clock_offset``: the wall clock minus the clock the records' deadlines should be on."""
    replay = Replay()
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return replay
    try:
        size = os.fstat(fd).st_size
        if size < HEADER.size:  # nothing was written after a header that did not make it
            replay.cut_bytes = size
            replay.cut_records = 0
            _cut(fd, 0)
            return replay
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                _check_header(view, path)
                for offset, body in _frames(view, replay):
                    try:
                        record = decode(body, clock_offset)
                    except RecordError as exc:
                        raise LogError(f"{path}: the record at byte {offset} has a good "
                                       f"checksum but cannot be read ({exc}): was it written "
                                       "by another version of workbench?") from None
                    finally:
                        body.release()
                    apply(record)
                    replay.records += 1
            finally:
                view.release()
        if replay.cut_bytes:
            _cut(fd, replay.good_bytes)
    finally:
        os.close(fd)
    return replay


def _check_header(view: memoryview, path: str) -> None:
    magic, version = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise LogError(f"{path} is not a workbench log (it does not start with {MAGIC!r})")
    if version != VERSION:
        raise LogError(f"{path} is a log of format {version}; this workbench reads format "
                       f"{VERSION}: use the workbench that wrote it")


def _frames(view: memoryview, replay: Replay) -> Iterator[tuple[int, memoryview]]:
    """The bodies of the good records, in order; sets where they end and what follows."""
    size = len(view)
    offset = HEADER.size
    unpack, crc32, frame = FRAME.unpack_from, zlib.crc32, FRAME.size
    while offset + frame <= size:
        crc, length = unpack(view, offset)
        end = offset + frame + length
        if not length or end > size:
            break
        body = view[offset + frame:end]
        if crc32(body, length & _MASK) != crc:
            body.release()
            break
        yield offset, body
        offset = end
    replay.good_bytes = offset
    replay.cut_bytes = size - offset
    if replay.cut_bytes:
        replay.cut_records = 1 + _whole_records_after(view, offset)


def _whole_records_after(view: memoryview, offset: int) -> int:
    """How many good records follow the damaged one at ``offset``, if its length can be
    believed: a lower bound of what cutting there loses, for the report."""
    size = len(view)
    count = 0
    while offset + FRAME.size <= size:
        _, length = FRAME.unpack_from(view, offset)
        offset += FRAME.size + length
        if offset + FRAME.size > size:
            break
        crc, length = FRAME.unpack_from(view, offset)
        end = offset + FRAME.size + length
        if not length or end > size or zlib.crc32(view[offset + FRAME.size:end],
                                                  length & _MASK) != crc:
            break
        count += 1
    return count


def _cut(fd: int, size: int) -> None:
    os.ftruncate(fd, size)
    os.fsync(fd)


class LogWriter:
    """Appends framed records to a log file opened for appending (see the module's docstring).

    ``fdatasync`` is the call that puts written data on disk (``os.fdatasync``; tests count
    it). Not thread-safe but for ``sync``, which another thread may call (``everysec``)."""

    def __init__(self, fd: int, fdatasync: Callable[[int], None] = os.fdatasync) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size  # bytes in the file, committed or not
        self.fdatasync = fdatasync
        self._pending: list = []  # buffers appended, not yet written
        self.unsynced = False  # written since the last fdatasync
        self.synced_at: float | None = None  # when the last fdatasync returned (wall clock)
        #: Whoever copies what is committed (a compaction in progress): called with the
        #: buffers of each commit.
        self.tap: Callable[[list], None] | None = None

    @classmethod
    def create(cls, path: str, fdatasync: Callable[[int], None] = os.fdatasync) -> LogWriter:
        """A new, empty log at ``path`` (replacing any file there), its header written."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        os.write(fd, HEADER.pack(MAGIC, VERSION))
        return cls(fd, fdatasync)

    @classmethod
    def reopen(cls, path: str, fdatasync: Callable[[int], None] = os.fdatasync) -> LogWriter:
        """The log at ``path`` (read and cut by ``read_log``), to append to; a missing or empty
        one is created."""
        try:
            if os.path.getsize(path) >= HEADER.size:
                return cls(os.open(path, os.O_WRONLY | os.O_APPEND), fdatasync)
        except FileNotFoundError:
            pass
        return cls.create(path, fdatasync)

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def append(self, body: list) -> None:
        """Frame and buffer a record's body (``records.encode``: a list of buffers); nothing
        is written until ``commit``."""
        if len(body) == 1:  # nearly every record: one small buffer
            data = body[0]
            length = len(data)
            self._pending.append(_pack_frame(_crc32(data, length & _MASK), length) + data)
            return
        length = sum(map(nbytes, body))
        crc = length & _MASK
        for buffer in body:
            crc = zlib.crc32(buffer, crc)
        self._pending.append(FRAME.pack(crc, length))
        self._pending.extend(body)  # ``write_all`` joins the small ones

    def commit(self, sync: bool) -> None:
        """Write what was appended (one system call for up to 1024 records) and, if ``sync``,
        put it on disk before returning. OSError if the disk refuses (full, failing): what was
        appended is lost, and a part of it that made it to the file is cut off again, so that
        the file still ends with a whole record."""
        buffers = self._pending
        if buffers:
            self._pending = []
            try:
                if len(buffers) == 1 and type(buffers[0]) is bytes:  # a pass of one change
                    written = os.write(self.fd, buffers[0])
                    if written < len(buffers[0]):
                        written += write_all(self.fd, [memoryview(buffers[0])[written:]])
                else:
                    written = write_all(self.fd, buffers)
            except OSError:
                try:
                    os.ftruncate(self.fd, self.size)
                except OSError:
                    pass
                raise
            self.size += written
            self.unsynced = True
            if self.tap is not None:
                self.tap(buffers)
        if sync and self.unsynced:
            self.sync()

    def sync(self) -> None:
        self.unsynced = False
        self.fdatasync(self.fd)
        self.synced_at = time.time()

    def close(self) -> None:
        os.close(self.fd)


def write_all(fd: int, buffers: list) -> int:
    """Write every buffer in order -> the bytes written. Small ones are joined first: a
    ``writev`` of a thousand tiny buffers costs more than copying them."""
    joined: list = []
    small: list = []
    for buffer in buffers:
        if type(buffer) is bytes and len(buffer) < _BIG:
            small.append(buffer)
        else:
            if small:
                joined.append(b"".join(small))
                small = []
            joined.append(memoryview(buffer).cast("B"))
    if small:
        joined.append(b"".join(small) if len(small) > 1 else small[0])
    total = 0
    while joined:
        batch = joined[:_IOV_MAX]
        written = os.writev(fd, batch) if len(batch) > 1 else os.write(fd, batch[0])
        total += written
        for index, buffer in enumerate(batch):
            size = len(buffer)
            if written < size:  # a short write (a signal, a full disk): the rest again
                del joined[:index]
                joined[0] = memoryview(buffer)[written:]
                break
            written -= size
        else:
            del joined[:len(batch)]
    return total
