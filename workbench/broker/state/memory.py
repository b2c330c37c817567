"""The memory values hold: admitting the value a request brings (its frames, its shared-memory
file, the ``--max-memory`` cap), counting it while the broker holds it, and letting it go.

A shared-memory value is held as its file's reference (``name:size,...``); the data stays in the
file. The state never opens one: the server looks at the files a request hands over before the
state sees the request (``checked``), reads a file for a client on another machine after the
state decided to send it (``FileFrames``), and removes the files the state releases.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

from ...protocol import VALUE_SHARED, ProtocolError, Status, parse_descriptor
from ...shm import PREFIX, parse_reference, without_flag
from .changes import Removed
from .effects import FileFrames, Outbox, SessionFiles
from .requests import OpError, human_size
from .sessions import Session
from .variables import Value, Variable


class SharedMemory(NamedTuple):
    """The broker's side of ``/dev/shm``, which clients that share it are told."""

    identity: str  # what a client must see to share it (see ``shm.identity``)
    pid: int  # the broker's process id, which its files' names carry


def file_frames(value: Value) -> tuple[bytes, int, FileFrames]:
    """A shared-memory value as a client that cannot map its file receives it: its first frame
    without the shared flag, how many frames the file holds, and their place in the message."""
    sizes = value.shared.partition(b":")[2]
    count = sizes.count(b",") + 1 if sizes else 0
    return without_flag(value.frames[0]), count, FileFrames(value.shared)


class Memory:
    """Bytes held by values, against the cap; the shared-memory files values hold."""

    __slots__ = ("used", "limit", "shared", "in_use", "checked", "outbox", "log", "_prefix")

    def __init__(self, limit: int, shared: SharedMemory | None, outbox: Outbox) -> None:
        self.used = 0  # bytes of values held, including leased ones
        self.limit = limit
        self.shared = shared  # None where values all travel as bytes
        self.in_use: set[bytes] = set()  # names of the files values hold now
        #: The server's findings about the files the request in progress references: each
        #: reference's file size, or why it cannot be read (``shm.BrokerFiles.inspect``).
        self.checked: Mapping[bytes, int | str] | None = None
        self.outbox = outbox
        self.log = outbox.log  # the outbox's change log, at hand on the hottest path
        self._prefix = f"{PREFIX}{shared.pid}-" if shared is not None else ""

    def admit(self, session: Session, frames: list) -> Value:
        """The value arriving in a request, checked: its frames, its shared-memory file, the
        memory cap. Not yet stored: storing it adds its size to ``used``."""
        if not frames:
            raise ProtocolError("store without a value")
        _, flags, nextra = parse_descriptor(frames[0])
        shared = None
        if flags & VALUE_SHARED:
            if self.shared is None or not session.shares_memory or len(frames) != 2:
                raise ProtocolError("a shared-memory value from a client that cannot share")
            shared = bytes(frames[1])
            if shared.partition(b":")[0] in self.in_use:
                raise OpError(Status.BAD_REQUEST,
                              "shared-memory file already holds another value")
            size = len(frames[0]) + self._file_size(shared)
        else:
            if nextra != len(frames) - 1:
                raise ProtocolError(
                    f"value announces {nextra} extra frames, {len(frames) - 1} arrived")
            size = 0
            for frame in frames:
                size += len(frame)
        if self.used + size > self.limit:
            raise self.no_room(size)
        value = Value(frames, size, shared=shared)
        if shared is not None:  # one file, one value: releasing it must not break another
            self.in_use.add(shared.partition(b":")[0])
        return value

    def admit_all(self, session: Session, values: list) -> list[Value]:
        """Several values arriving in one request (``admit`` each), checked together against
        the cap: a batch that would not fit as a whole is refused whole, and nothing of it is
        kept (the files its values named are free again)."""
        admitted: list[Value] = []
        try:
            for frames in values:
                admitted.append(self.admit(session, frames))
            total = sum(value.size for value in admitted)
            if self.used + total > self.limit:
                raise self.no_room(total)
        except BaseException:
            for value in admitted:
                if value.shared is not None:
                    self.in_use.discard(value.shared.partition(b":")[0])
            raise
        return admitted

    def no_room(self, size: int) -> OpError:
        """The refusal of a value of ``size`` bytes that does not fit under the cap."""
        return OpError(Status.NO_MEMORY,
                       f"storing {human_size(size)} would exceed the broker's memory cap "
                       f"(--max-memory {human_size(self.limit)}, {human_size(self.used)} in "
                       "use): fetch or delete values, or restart the broker with a larger "
                       "--max-memory")

    def _file_size(self, reference: bytes) -> int:
        """Bytes in a referenced file, as the server found them; ValueError unless it is a
        whole file of this broker's."""
        name, sizes = parse_reference(reference)
        if not name.startswith(self._prefix):
            raise ValueError("shared-memory file made for another broker")
        found = self.checked.get(reference) if self.checked else None
        if found is None or isinstance(found, str):
            raise OpError(Status.BAD_REQUEST,
                          f"shared-memory value unreadable: {found or 'the file was not found'}")
        if found != sum(sizes):
            raise ValueError(f"shared-memory file holds {found} bytes, not {sum(sizes)}")
        return found

    def discard(self, value: Value, var: Variable) -> None:
        """A value of ``var`` leaves the broker for good: its memory (and any file) is freed.
        The change is recorded unless the variable went first (its values went with it)."""
        self.used -= value.size
        if var.live:
            self.log.append((Removed, var.id, value.seq))
        if value.shared is not None:
            self.in_use.discard(value.shared.partition(b":")[0])
            self.outbox.release(value.shared, value.found)

    def restored(self, value: Value) -> None:
        """A value restored from a log (``restore``) is held: counted, and its file in use."""
        self.used += value.size
        if value.shared is not None:
            self.in_use.add(value.shared.partition(b":")[0])

    def session_files(self, session: Session) -> SessionFiles | None:
        """The files an ended session's clients may have made, and those values hold."""
        if self.shared is None or not session.shares_memory:
            return None
        prefix = f"{self._prefix}{session.id.hex()[:16]}-"
        held = prefix.encode()
        return SessionFiles(prefix, frozenset(name.decode() for name in self.in_use
                                              if name.startswith(held)))

    def discard_unstored(self, value: Value) -> None:
        """An admitted value that was never stored after all (refused, or merged into
        another): the broker took its file over, so the file goes."""
        if value.shared is not None:
            self.in_use.discard(value.shared.partition(b":")[0])
            self.outbox.release(value.shared, False)
