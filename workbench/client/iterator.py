"""``NwsValueIterator``: walking a variable's values with a (variable id, sequence) cookie."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import NwsIteratorInvalidException, NwsVariableDeletedException
from ..protocol import Op

if TYPE_CHECKING:
    from .workspace import NetWorkSpace

_OPS = {"fetch": Op.IFETCH, "fetchTry": Op.IFETCH_TRY, "find": Op.IFIND, "findTry": Op.IFIND_TRY}
#: What the broker answers when the variable was deleted under the iterator (while it waited,
#: or between steps, and maybe re-created since).
_DELETED = (NwsVariableDeletedException, NwsIteratorInvalidException)


class NwsValueIterator:
    """Iterates a fifo or single variable for ``ifetch``, ``ifetchTry``, ``ifind``, ``ifindTry``.

    The find iterators never return a value twice: they remember the sequence number of the last
    value seen. Once an iterator has raised StopIteration it keeps raising it, as Python
    requires, until ``restart()``; ``reset()`` goes back to the first value.

    Deleting the variable ends every iterator on it, as in NetWorkSpaces (whose iterators
    stopped on any failed step); with ``raise_on_delete`` the step raises the broker's error
    instead: NwsVariableDeletedException for a step that was waiting, NwsIteratorInvalidException
    for one that comes after.
    """

    def __init__(self, ws: NetWorkSpace, varName: str, op: str,
                 timeout: float | None = None, raise_on_delete: bool = False) -> None:
        if op not in _OPS:
            raise ValueError(f"op must be one of {', '.join(_OPS)}, not {op!r}")
        self._ws = ws
        self._var = varName
        self._op = _OPS[op]
        self._timeout = timeout
        self._raise_on_delete = raise_on_delete
        self.reset()

    def __repr__(self) -> str:
        return (f"<NwsValueIterator {self._op.name.lower()} {self._var!r} of "
                f"{self._ws.currentWs()!r} after #{self._seq}>")

    def reset(self) -> None:
        """Start again from the first value of the variable."""
        self._var_id = 0
        self._seq = 0
        self._stopped = False

    def restart(self) -> None:
        """Continue after StopIteration with the values stored since."""
        self._stopped = False

    def __iter__(self) -> NwsValueIterator:
        return self

    def _step(self, raw: bool) -> tuple[bool, Any]:
        if self._stopped:
            return False, None
        try:
            found, value, var_id, seq = self._ws._iterate(
                self._op, self._var, self._var_id, self._seq, self._timeout, raw)
        except _DELETED:
            if self._raise_on_delete:
                raise
            found = False
        if not found:
            self._stopped = True
            return False, None
        self._var_id, self._seq = var_id, seq
        return True, value

    def __next__(self) -> Any:
        found, value = self._step(raw=False)
        if not found:
            raise StopIteration
        return value

    next = __next__

    def writeTo(self, fobj: BinaryIO) -> int:
        """Write the next value's raw bytes to a file; returns the number written (0 at the end)."""
        from .workspace import _write

        found, data = self._step(raw=True)
        return _write(fobj, data) if found else 0

    write_to = writeTo
