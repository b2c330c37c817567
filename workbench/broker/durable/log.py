"""The log file: a header, then records one after the other, each framed with its length and a
checksum; appended through a shared mapping of the file, read back in order, its torn or
corrupt tail cut.

Layout (little-endian)::

    header   8 bytes "wblog\\x00\\x00\\x00", 4 bytes format version (1)
    record   4 bytes CRC-32 of the body (its initial value: the length's low 32 bits), 8 bytes
             body length, the body (``records``)
    zeros    while a broker appends to the file (see below); none once it closed it

CRC-32 (zlib's) because what a log must catch is a write the machine did not finish and bits a
disk or a cable flipped, not an adversary (whoever can write the data directory can write valid
records): it catches every burst of up to 32 bits and anything else but once in 2^32, and zlib
computes it at gigabytes a second. Starting it from the length means a flipped length is
caught like a flipped body, not read as a shorter record.

Writing (``LogWriter``). The file is extended ``EXTEND`` bytes ahead of its records at a time
(``posix_fallocate``: the blocks are reserved then, so a full disk shows up there, as an
``OSError`` of ``commit``, and not as a SIGBUS when a page of the mapping is first written)
and that stretch is mapped (``MAP_SHARED``). ``append_body`` (a body of one buffer: nearly
every record) and ``append`` frame a record and copy it into the mapping, and from then on it
is in the file: the copy is in the page cache, which outlives the process, so a crash of the
broker loses nothing appended, and the broker may send the replies of a pass without any
system call for its log (under ``everysec`` and ``no``). On Linux the page cache is one:
``fdatasync`` on the file writes back the pages dirtied through the mapping as it does those
written by ``write``, so no ``msync`` is needed, and one ``fdatasync`` (``commit(sync=True)``)
covers every record appended before it (group commit). A record that does not fit in what is
left of the mapping waits (``waiting``) for ``commit``, which copies it into the next stretch
or, past ``_BIG`` bytes, writes it with ``pwritev``; that is where a full disk is met.

So while a broker runs, the file ends in zeros after its records (up to ``EXTEND`` bytes, on
disk as blocks reserved and not written). ``read_log`` takes zeros that run to the end of the
file for the clean end (they are not damage: a length of 0 is no record) and cuts them without
a word; zeros followed by anything else are damage, reported as such. ``LogWriter.close``
truncates the file to its records. ``records_end`` says where the records of a file end while
a broker writes it (its size no longer does).

On a disk or file system that keeps a page still while it is written out ("stable pages":
btrfs with checksums, disks with integrity data) a copy into the page an ``fdatasync`` is
writing waits for that write: under ``everysec``, once a second, one pass may take as long as
a small write to the disk. (Where pages need not be stable, as on ext4 over an ordinary disk,
the copy goes on and the next ``fdatasync`` writes the page again.)

A file truncated or shrunk behind the broker's back while it runs (another program, a
``truncate`` by hand) takes pages of the mapping with it: the broker's next copy into one is
killed by the kernel (SIGBUS), as by any crash; the restart replays what the file still holds.
The broker cannot catch that signal safely, so it does not try: keep other programs away from
a data directory (the lock keeps other brokers out).

``read_log`` replays a file and cuts it after its last good record.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

from .records import Group, RecordError, decode, nbytes

MAGIC = b"wblog\x00\x00\x00"
VERSION = 1
HEADER = struct.Struct("<8sI")
FRAME = struct.Struct("<IQ")  # CRC-32 of the body from the length, body length
_MASK = 0xFFFFFFFF
# looked up once: every record calls them
_pack_frame, _pack_frame_into, _crc32 = FRAME.pack, FRAME.pack_into, zlib.crc32
_FRAME_SIZE = FRAME.size
#: How far ahead of its records the file is extended and mapped at a time: each step costs an
#: ``fallocate`` and a new mapping (tens of microseconds), and a restart after a crash reads
#: that many zeros at most.
EXTEND = 8 << 20
#: Records of one commit past this size that do not fit in the mapping are written with
#: ``pwritev`` from where they are (a value's frames), not copied into a new stretch.
_BIG = 1 << 20
_PAGE = mmap.ALLOCATIONGRANULARITY  # a mapping starts at a multiple of it
_IOV_MAX = 1024  # buffers per writev: the kernel refuses more
_ZEROS = bytes(1 << 20)  # what a chunk of the clean end reads as


class LogError(Exception):
    """A file that this version cannot read as a log: not a log, a newer format, or a record
    whose checksum is right but whose content is not (written by another version?)."""


@dataclass
class Replay:
    """What reading a log found."""

    records: int = 0  # good records, applied
    good_bytes: int = 0  # where the last good record ends: the file is cut there
    cut_bytes: int = 0  # bytes of damage after it (not the zeros of a clean end)
    cut_records: int = 0  # records cut: the damaged one and any whole ones after it

    def describe(self) -> str:
        if not self.cut_bytes:
            return f"{self.records} records"
        return (f"{self.records} records; a damaged tail was cut: {self.cut_records} "
                f"record{'s' if self.cut_records != 1 else ''}, {self.cut_bytes} bytes")


def read_log(path: str, clock_offset: float, apply: Callable[[object], None]) -> Replay:
    """Hand every good record of the log at ``path`` to ``apply``, in order, and cut the file
    after the last one (with an fsync). A missing or empty file is an empty log, and so is a
    file of zeros (a crash of the machine before the header reached the disk).
    ``clock_offset``: the wall clock minus the clock the records' deadlines should be on."""
    replay = Replay()
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return replay
    try:
        size = os.fstat(fd).st_size
        if size < HEADER.size or (os.pread(fd, HEADER.size, 0) == bytes(HEADER.size)
                                  and _zeros_from(fd, 0, size)):
            # nothing was written after a header that did not make it
            replay.cut_bytes = size if size < HEADER.size else 0
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
                    if type(record) is Group:  # one call's changes, together
                        for each in record:
                            apply(each)
                        replay.records += len(record)
                    else:
                        apply(record)
                        replay.records += 1
                if size > replay.good_bytes and not _zeros_from(fd, replay.good_bytes, size):
                    replay.cut_bytes = size - replay.good_bytes
                    replay.cut_records = 1 + _whole_records_after(view, replay.good_bytes)
            finally:
                view.release()
        if size > replay.good_bytes:
            _cut(fd, replay.good_bytes)
    finally:
        os.close(fd)
    return replay


def records_end(path: str) -> int:
    """Where the good records of the log at ``path`` end, without changing it: its size once
    the broker closed it, less than that while a broker appends to it (the file ends in
    zeros then). 0 for a file too short for a header."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < HEADER.size:
            return 0
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                replay = Replay()
                for _, body in _frames(view, replay):
                    body.release()
                return replay.good_bytes
            finally:
                view.release()


def _check_header(view: memoryview, path: str) -> None:
    magic, version = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise LogError(f"{path} is not a workbench log (it does not start with {MAGIC!r})")
    if version != VERSION:
        raise LogError(f"{path} is a log of format {version}; this workbench reads format "
                       f"{VERSION}: use the workbench that wrote it")


def _frames(view: memoryview, replay: Replay) -> Iterator[tuple[int, memoryview]]:
    """The bodies of the good records, in order; sets where they end (``good_bytes``)."""
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


def _zeros_from(fd: int, offset: int, size: int) -> bool:
    """Whether the file holds nothing but zeros from ``offset`` to ``size``: the clean end of
    a log that a broker was appending to (read, not mapped: faster over reserved blocks)."""
    while offset < size:
        chunk = os.pread(fd, min(len(_ZEROS), size - offset), offset)
        if not chunk or chunk != _ZEROS[:len(chunk)]:
            return False
        offset += len(chunk)
    return True


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
    """Appends framed records to a log file through a shared mapping of it (see the module's
    docstring).

    A record counts once it is appended into the mapping: it is in the file then (the page
    cache). One that does not fit waits for ``commit`` (``waiting``), which writes it and, if
    asked, puts the file on disk. ``size`` is where the records in the file end (the file runs
    on in zeros). ``fdatasync`` is the call that puts written data on disk (``os.fdatasync``;
    tests count it). Not thread-safe but for ``sync``, which another thread may call
    (``everysec``)."""

    def __init__(self, fd: int, fdatasync: Callable[[int], None] = os.fdatasync) -> None:
        self.fd = fd
        self.fdatasync = fdatasync
        self.unsynced = False  # appended since the last fdatasync
        self.synced_at: float | None = None  # when the last fdatasync returned (wall clock)
        self.waiting = False  # records wait for ``commit``: they did not fit in the mapping
        #: Called, from ``append``, when records start waiting and when they pass ``limit``.
        self.notify: Callable[[], None] = _nothing
        self._limit = _NO_LIMIT
        self._tap: Callable[[list], None] | None = None
        size = os.fstat(fd).st_size  # where the records end (read_log cut the file there)
        self._file_size = size  # the file's length: the records, then zeros
        # The mapping of the file from _base on, _mapped bytes long; the records in it end at
        # _at. A record goes in by the fast path while it ends before _room: the end of the
        # mapping, or less (the limit), or 0 (records wait, a tap takes them, no mapping).
        self._map: mmap.mmap | None = None
        self._base = size
        self._at = 0
        self._mapped = 0
        self._room = 0
        self._later: list = []  # framed records that wait for ``commit``
        self._map_from(size, 0)

    @classmethod
    def create(cls, path: str, fdatasync: Callable[[int], None] = os.fdatasync) -> LogWriter:
        """A new, empty log at ``path`` (replacing any file there), its header written."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, HEADER.pack(MAGIC, VERSION))
            return cls(fd, fdatasync)
        except OSError:
            os.close(fd)
            raise

    @classmethod
    def reopen(cls, path: str, fdatasync: Callable[[int], None] = os.fdatasync) -> LogWriter:
        """The log at ``path`` (read and cut by ``read_log``), to append to; a missing or empty
        one is created."""
        try:
            if os.path.getsize(path) >= HEADER.size:
                fd = os.open(path, os.O_RDWR)
                try:
                    return cls(fd, fdatasync)
                except OSError:
                    os.close(fd)
                    raise
        except FileNotFoundError:
            pass
        return cls.create(path, fdatasync)

    @property
    def size(self) -> int:
        """Where the records in the file end (not counting those that wait)."""
        return self._base + self._at

    @property
    def limit(self) -> float:
        """A size past which ``append`` calls ``notify`` (once: then there is no limit until
        one is set again)."""
        return self._limit

    @limit.setter
    def limit(self, size: float) -> None:
        self._limit = size
        self._gate()

    @property
    def tap(self) -> Callable[[list], None] | None:
        """Whoever copies what is appended (a compaction in progress): called with the
        buffers of each record once it is in the file, in order."""
        return self._tap

    @tap.setter
    def tap(self, tap: Callable[[list], None] | None) -> None:
        self._tap = tap
        self._gate()

    def _gate(self) -> None:
        """Where the fast path of ``append_body`` stops (see ``__init__``)."""
        if self._later or self._tap is not None:
            self._room = 0
        else:
            self._room = max(0, min(self._mapped, self._limit - self._base))

    def append_body(self, body: bytes) -> None:
        """Append a record whose body is one buffer (nearly every record): framed and copied
        into the mapping, or, if it does not fit, left waiting (``append``)."""
        length = len(body)
        at = self._at
        end = at + _FRAME_SIZE + length
        if end <= self._room:
            mapped = self._map
            # (no ``& _MASK`` on the length: crc32 takes the low 32 bits of its start itself)
            _pack_frame_into(mapped, at, _crc32(body, length), length)
            mapped[at + _FRAME_SIZE:end] = body
            self._at = end
            self.unsynced = True  # after the copy: the syncer's fdatasync must cover it
            return
        self.append([body])

    def append(self, body: list) -> None:
        """Frame a record's body (``records.encode``: a list of buffers) and copy it into the
        mapping. Never fails: a record that does not fit waits for ``commit``, which says if
        the disk refuses it."""
        sizes = [nbytes(buffer) for buffer in body]
        length = sum(sizes)
        crc = length & _MASK
        for buffer in body:
            crc = zlib.crc32(buffer, crc)
        framed = [_pack_frame(crc, length), *body]
        at = self._at
        end = at + _FRAME_SIZE + length
        if self._later or end > self._mapped:
            self._wait(framed)
            return
        mapped = self._map
        mapped[at:at + _FRAME_SIZE] = framed[0]
        at += _FRAME_SIZE
        for buffer, size in zip(body, sizes):
            mapped[at:at + size] = buffer if type(buffer) is bytes else (
                memoryview(buffer).cast("B"))
            at += size
        self._at = end
        self.unsynced = True
        if self._tap is not None:
            self._tap(framed)
        if self._base + end > self._limit:
            self.limit = _NO_LIMIT
            self.notify()

    def append_framed(self, buffers: list) -> None:
        """Append records already framed (what another log's ``tap`` was given): they wait
        for ``commit``."""
        if buffers:
            self._wait(buffers)

    def _wait(self, buffers: list) -> None:
        self._later.extend(buffers)
        if not self.waiting:
            self.waiting = True
            self._room = 0  # the records after these wait too: they keep their order
            self.notify()

    def commit(self, sync: bool) -> None:
        """Write the records that wait and, if ``sync``, put the file on disk before returning.
        OSError if the disk refuses (full, failing): the records that waited are lost, and cut
        off the file again, so that the file still ends with a whole record; those appended
        before them stay."""
        if self._later:
            self._write_later()
        if sync and self.unsynced:
            self.sync()

    def _write_later(self) -> None:
        """Write the records that did not fit in the mapping: copied into the next stretch of
        the file, or written where they are if they are many or large."""
        later, self._later = self._later, []
        self.waiting = False
        at = self.size
        total = sum(map(nbytes, later))
        try:
            if total <= _BIG:
                self._map_from(at, total)
                mapped, offset = self._map, self._at
                for buffer in later:
                    size = nbytes(buffer)
                    mapped[offset:offset + size] = buffer if type(buffer) is bytes else (
                        memoryview(buffer).cast("B"))
                    offset += size
                self._at = offset
            else:
                _pwrite_all(self.fd, later, at)
                self._file_size = max(self._file_size, at + total)
                self._map_from(at + total, 0)
        except OSError:
            self._unmap()
            self._base, self._at = at, 0
            try:
                os.ftruncate(self.fd, at)  # what this commit put in the file goes
                self._file_size = at
            except OSError:
                pass
            raise
        self.unsynced = True
        if self._tap is not None:
            self._tap(later)
        if self.size > self._limit:
            self.limit = _NO_LIMIT
            self.notify()

    def _map_from(self, at: int, need: int) -> None:
        """Map the file from ``at`` on (the page it is in, for the kernel), with room for
        ``need`` bytes and ``EXTEND`` more, extending the file as far first. OSError if the
        disk refuses: then nothing is mapped."""
        end = at + need + max(EXTEND, 1)  # (never an empty mapping)
        end += -end % _PAGE
        base = at - at % _PAGE
        self._unmap()
        if end > self._file_size:
            os.posix_fallocate(self.fd, self._file_size, end - self._file_size)
            self._file_size = end
        self._map = mmap.mmap(self.fd, end - base, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE, offset=base)
        self._base, self._at, self._mapped = base, at - base, end - base
        self._gate()

    def _unmap(self) -> None:
        self._mapped = self._room = 0
        if self._map is not None:
            self._map.close()
            self._map = None

    def sync(self) -> None:
        self.unsynced = False
        self.fdatasync(self.fd)
        self.synced_at = time.time()

    def close(self) -> None:
        """Let the file go, cut after its records (those that wait are dropped)."""
        try:
            size = self.size
            self._unmap()
            if self._file_size > size:
                os.ftruncate(self.fd, size)
        finally:
            os.close(self.fd)


_NO_LIMIT = float("inf")


def _nothing() -> None:
    pass


def _pwrite_all(fd: int, buffers: list, offset: int) -> None:
    """Write every buffer in order at ``offset`` of the file. Small ones are joined first: a
    ``pwritev`` of a thousand tiny buffers costs more than copying them."""
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
    while joined:
        batch = joined[:_IOV_MAX]
        written = os.pwritev(fd, batch, offset)
        offset += written
        for index, buffer in enumerate(batch):
            size = len(buffer)
            if written < size:  # a short write (a signal, a full disk): the rest again
                del joined[:index]
                joined[0] = memoryview(buffer)[written:]
                break
            written -= size
        else:
            del joined[:len(batch)]
