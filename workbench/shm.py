"""Large values through shared memory, when client and broker share a machine.

Sending 100 MB through a socket costs two copies through the kernel each way. A client on the
broker's machine instead writes a large value's big frames (detached data, out-of-band pickle
buffers) once into a file in ``/dev/shm`` and sends only its name; the broker keeps the name
(never the data) and owns the file from then on; a local fetcher maps the file copy-on-write, so
the array it gets is writable and was never copied. A client on another machine gets the bytes
through the socket as usual: the broker maps the file and sends it.

Who may use it: the broker announces an identity (boot id and the device and inode of
``/dev/shm``); a client that sees the same identity shares the broker's memory. Files are named
``workbench-<broker pid>-<session>-<random>``, so a broker can remove what it leaves behind, and
what a dead broker left behind, at start and at exit.
"""

from __future__ import annotations

import mmap
import os
import re
import uuid
from typing import Callable, Sequence

from .config import SHM_THRESHOLD
from .protocol import VALUE_SHARED

SHM_DIR = "/dev/shm"
PREFIX = "workbench-"
#: Values whose big frames add up to at least this many bytes go through shared memory.
THRESHOLD = SHM_THRESHOLD
_CHUNK = 64 << 20
#: Longest shared-memory reference a broker looks at: a name and a size for each frame.
_MAX_REFERENCE = 64 << 10
#: Descriptor flag (byte 1 of a value's first frame): the extra frame is a shared-memory
#: reference ``name:size,size,...`` instead of the frames themselves.
SHARED = VALUE_SHARED

_NAME = re.compile(rb"workbench-(\d+)-[0-9a-f]{1,32}-[0-9a-f]{1,32}")


def identity() -> str | None:
    """What two processes must agree on to share ``/dev/shm``; None where it is unusable."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        st = os.stat(SHM_DIR)
    except OSError:
        return None
    if not os.access(SHM_DIR, os.W_OK):
        return None
    return f"{boot}:{st.st_dev}:{st.st_ino}"


def spill(frames: Sequence, broker_pid: int, session: str) -> tuple[list, str]:
    """Write a value's extra frames to a new shared-memory file.

    -> (the value's frames as a reference, the file's path)."""
    extras = [memoryview(frame).cast("B") for frame in frames[1:]]
    sizes = [view.nbytes for view in extras]
    name = f"{PREFIX}{broker_pid}-{session}-{uuid.uuid4().hex[:16]}"
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # write(), not a mapping: the kernel fills fresh pages in bulk, twice as fast as
        # faulting them in one by one through a mapping.
        for view in extras:
            written = 0
            while written < view.nbytes:
                written += os.write(fd, view[written:written + _CHUNK])
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    head = bytearray(frames[0])
    head[1] |= SHARED
    reference = name.encode() + b":" + b",".join(b"%d" % size for size in sizes)
    return [bytes(head), reference], path


def parse_reference(reference: bytes) -> tuple[str, list[int]]:
    """``name:size,...`` -> (name, sizes); ValueError for anything that is not one of ours."""
    name, _, sizes = bytes(reference).partition(b":")
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a workbench shared-memory name: {name[:80]!r}")
    return name.decode(), [int(size) for size in sizes.split(b",")] if sizes else []


def attach(reference: bytes) -> list[memoryview]:
    """Map a referenced file copy-on-write -> one writable view per original frame."""
    name, sizes = parse_reference(reference)
    total = sum(sizes)
    if not total:
        return [memoryview(b"") for _ in sizes]
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY)
    try:
        mapped = mmap.mmap(fd, total, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    whole = memoryview(mapped)
    views, offset = [], 0
    for size in sizes:
        views.append(whole[offset:offset + size])
        offset += size
    return views


def without_flag(first_frame) -> bytes:
    head = bytearray(first_frame)
    head[1] &= ~SHARED
    return bytes(head)


def unshared(frames: Sequence) -> list[bytes]:
    """A value's frames as bytes, with what a shared-memory reference names in its place: for a
    reader that hands a value on to a process that may not map the file (another user's), or
    not before the broker removes it. OSError or ValueError if the file cannot be read."""
    if len(frames) == 2 and len(frames[0]) > 1 and frames[0][1] & SHARED:
        return [without_flag(frames[0]), *map(bytes, attach(frames[1]))]
    return [bytes(frame) for frame in frames]


class BrokerFiles:
    """The broker's side, at its server's edge (the broker's state opens no file): check the
    files clients hand over, read them for clients that cannot map them, remove them."""

    def __init__(self, broker_pid: int | None = None) -> None:
        self.pid = broker_pid or os.getpid()
        self.identity = identity()
        self._prefix = f"{PREFIX}{self.pid}-".encode()

    def inspect(self, frames: Sequence) -> dict[bytes, int | str] | None:
        """What the files a request's frames (after its head) may reference hold: for each
        frame shaped like a reference to one of this broker's files, the file's size, or why it
        cannot be read. None when no frame is (nearly always: references are rare and short)."""
        found = None
        prefix = self._prefix
        for frame in frames:
            if len(frame) > _MAX_REFERENCE or frame[:len(prefix)] != prefix:
                continue
            reference = bytes(frame)
            try:
                name, _ = parse_reference(reference)
                size: int | str = os.stat(os.path.join(SHM_DIR, name)).st_size
            except ValueError:  # not a reference after all: the broker's state decides
                continue
            except OSError as exc:
                size = str(exc)
            if found is None:
                found = {}
            found[reference] = size
        return found

    def holds(self, reference: bytes, frames: Sequence) -> bool:
        """Whether the referenced file holds exactly ``frames``, one after the other (False if
        it cannot be read)."""
        try:
            views = attach(reference)
        except (OSError, ValueError):
            return False
        return len(views) == len(frames) and all(
            _same_bytes(view, memoryview(frame).cast("B")) for view, frame in zip(views, frames))

    def release(self, reference: bytes) -> None:
        name, _ = parse_reference(reference)
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass

    def remove_unheld(self, prefix: str, held: frozenset) -> int:
        """Remove the files whose names start with ``prefix`` (an ended session's), except
        ``held`` -> how many went."""
        return _remove(lambda name: name.startswith(prefix) and name not in held)

    def sweep(self, everything_of_mine: bool = False) -> int:
        """Remove files of brokers that are gone (and, at exit, this broker's own)."""
        def gone(name: str) -> bool:
            match = _NAME.fullmatch(name.encode())
            if not match:
                return False
            pid = int(match.group(1))
            return (pid == self.pid and everything_of_mine) or (
                pid != self.pid and not _alive(pid))
        return _remove(gone)


def _remove(chosen: Callable[[str], bool]) -> int:
    """Remove the files of ``/dev/shm`` that ``chosen`` picks -> how many went."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    removed = 0
    for name in names:
        if chosen(name):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed += 1
            except OSError:
                pass
    return removed


def _same_bytes(a: memoryview, b: memoryview) -> bool:
    # Chunk by chunk as bytes: comparing memoryviews goes item by item, 40 times slower.
    if a.nbytes != b.nbytes:
        return False
    step = 4 << 20
    return all(a[i:i + step].tobytes() == b[i:i + step].tobytes()
               for i in range(0, a.nbytes, step))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
