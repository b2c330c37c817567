"""``NwsTextFile``: a workspace variable read and written as a text file, a value per line, for
``NetWorkSpace.makefile`` (NetWorkSpaces' class of the same name, as a Python 3 text file)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from ..errors import NwsOperationException

if TYPE_CHECKING:
    from .workspace import NetWorkSpace

_END = object()


class NwsTextFile(io.TextIOBase):
    """A fifo variable as a text file, opened ``'r'``, ``'w'`` or ``'a'``.

    Writing stores each complete line, with its newline, as one value; the rest of a line waits
    for its newline, ``flush()`` or ``close()``. ``'w'`` deletes the variable first, ``'a'``
    adds to it. Reading walks the values as ``ifindTry`` does: it consumes nothing and ends at
    the last value stored (a value that is not text raises ValueError; bytes are read as
    UTF-8). Every mode declares the variable fifo, creating it if needed, as the original did.
    """

    def __init__(self, ws: NetWorkSpace, varName: str, mode: str) -> None:
        super().__init__()
        if mode not in ("r", "w", "a"):
            raise ValueError(f"illegal mode specified: {mode!r}")
        self._ws = ws
        self.name = varName
        self.mode = mode
        self._pending: list[str] = []  # the written part of a line not stored yet
        self._buffer = ""  # what was read from values but not returned yet
        if mode == "w":
            try:
                ws.deleteVar(varName)
            except NwsOperationException:
                pass  # nothing to empty
        self._values = ws.ifindTry(varName) if mode == "r" else None
        ws.declare(varName, "fifo")

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{state} nws file {self.name!r}, mode {self.mode!r} at {hex(id(self))}>"

    def readable(self) -> bool:
        return self.mode == "r"

    def writable(self) -> bool:
        return self.mode != "r"

    def _check(self, reading: bool) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if reading != self.readable():
            what = "read" if reading else "write"
            raise io.UnsupportedOperation(f"{what} operation not allowed in mode {self.mode!r}")

    def __iter__(self) -> NwsTextFile:
        self._check(reading=True)  # the original refused to iterate a file open for writing
        return self

    def _next_value(self) -> str | None:
        """The next value's text, or None after the last one."""
        value: Any = next(self._values, _END)
        if value is _END:
            return None
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).decode("utf-8")
        if not isinstance(value, str):
            raise ValueError(f"read a non-string from {self!r}: {value!r}")
        return value

    def _gather(self, size: int, line: bool) -> str:
        """What was buffered and the values after it, until ``size`` characters (all if
        negative) or, reading a line, a value holding a newline."""
        parts, have = [self._buffer], len(self._buffer)
        while (size < 0 or have < size) and not (line and "\n" in parts[-1]):
            value = self._next_value()
            if value is None:
                break
            parts.append(value)
            have += len(value)
        return "".join(parts)

    def _take(self, text: str, end: int) -> str:
        self._buffer = text[end:]
        return text[:end]

    def read(self, size: int | None = -1) -> str:
        self._check(reading=True)
        size = -1 if size is None else size
        text = self._gather(size, line=False)
        return self._take(text, len(text) if size < 0 else size)

    def readline(self, size: int | None = -1) -> str:
        self._check(reading=True)
        size = -1 if size is None else size
        text = self._gather(size, line=True)
        end = text.find("\n") + 1 or len(text)
        return self._take(text, end if size < 0 else min(end, size))

    def write(self, s: str) -> int:
        self._check(reading=False)
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        *lines, rest = s.split("\n")
        if lines:
            lines[0] = "".join(self._pending) + lines[0]
            self._pending = []
            self._ws.store_many(self.name, [line + "\n" for line in lines])
        if rest:
            self._pending.append(rest)
        return len(s)

    def flush(self) -> None:
        """Store the part of a line written since the last newline, as a value of its own."""
        super().flush()  # ValueError once closed
        if self._pending:
            text, self._pending = "".join(self._pending), []
            self._ws.store(self.name, text)
