"""A workspace variable: its values in the order its mode defines, and its waiting callers.

Pure containers: no clock, no sockets. Randomness for MULTI comes from the ``random.Random``
the broker state passes in, so tests can seed it.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

FIFO, LIFO, MULTI, SINGLE = "fifo", "lifo", "multi", "single"
MODES = (FIFO, LIFO, MULTI, SINGLE)
#: Modes whose values keep store order, so iterators (ifind, ifetch) can walk them.
ITERABLE_MODES = (FIFO, SINGLE)


class Value:
    """One stored value: its frames ([descriptor, *payload], opaque) and its store sequence."""

    __slots__ = ("frames", "size", "seq", "shared", "found", "returns")

    def __init__(self, frames: list, size: int, seq: int = 0, shared: bytes | None = None) -> None:
        self.frames = frames
        self.size = size
        self.seq = seq
        self.shared = shared  # the shared-memory reference, when the data lives in a file
        self.found = False  # sent to a finder, who maps it without acknowledging
        self.returns = 0  # times it came back because the session holding it ended


class Waiter:
    """A blocked request: who asked, its request id, and what it wants."""

    __slots__ = ("peer", "request_id", "session", "consume", "cookie", "many")

    def __init__(self, peer: bytes, request_id: int, session: Any, consume: bool,
                 cookie: int | None = None, many: int = 0) -> None:
        self.peer = peer
        self.request_id = request_id
        self.session = session
        self.consume = consume
        self.cookie = cookie  # for ifind: deliver only values with a larger sequence
        self.many = many  # FETCH_MANY: take up to this many values at once (0: a plain fetch)


class Variable:
    """The values of one variable plus the fetchers (FIFO by arrival) and finders waiting on it."""

    __slots__ = ("name", "mode", "id", "values", "fetchers", "finders", "next_seq",
                 "mode_fixed", "live", "workspace", "expires")

    def __init__(self, name: str, mode: str, var_id: int, workspace: Any,
                 mode_fixed: bool = True) -> None:
        self.name = name
        self.mode = mode
        self.id = var_id
        self.workspace = workspace
        self.values: Any = [] if mode == MULTI else deque()
        self.fetchers: deque[Waiter] = deque()
        self.finders: list[Waiter] = []
        self.next_seq = 1
        # A variable created only because someone waits on it may still be declared any mode.
        self.mode_fixed = mode_fixed
        self.live = True
        self.expires: float | None = None  # a key-value entry's deadline (broker clock)

    def __len__(self) -> int:
        return len(self.values)

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.mode_fixed = True
        self.values = list(self.values) if mode == MULTI else deque(self.values)

    def stamp(self, value: Value) -> None:
        value.seq = self.next_seq
        self.next_seq += 1

    def put(self, value: Value) -> Value | None:
        """Add a stamped value by the mode's rule; return the value it replaced (SINGLE)."""
        if self.mode == SINGLE and self.values:
            replaced = self.values.pop()
            self.values.append(value)
            return replaced
        self.values.append(value)
        return None

    def take(self, rng: random.Random) -> Value:
        values = self.values
        mode = self.mode
        if mode == FIFO or mode == SINGLE:
            return values.popleft()
        if mode == LIFO:
            return values.pop()
        index = rng.randrange(len(values))
        values[index], values[-1] = values[-1], values[index]
        return values.pop()

    def peek(self, rng: random.Random) -> Value:
        mode = self.mode
        if mode == FIFO or mode == SINGLE:
            return self.values[0]
        if mode == LIFO:
            return self.values[-1]
        return self.values[rng.randrange(len(self.values))]

    def put_back(self, value: Value) -> bool:
        """Return a value that was handed out but never acknowledged to the head of the variable.

        Returns False when the value no longer belongs (SINGLE that has a newer value: a store
        would have replaced it anyway)."""
        values = self.values
        if self.mode == SINGLE:
            if values:
                return False
            values.append(value)
        elif self.mode == FIFO:
            if not values or value.seq < values[0].seq:
                values.appendleft(value)
            else:  # several returns out of order: keep store order so iterators stay right
                index = self._first_after(value.seq)
                values.insert(index, value)
        else:  # LIFO's head is its top; MULTI has no order
            values.append(value)
        return True

    def first_after(self, seq: int) -> Value | None:
        """The oldest value stored after sequence ``seq`` (FIFO and SINGLE only)."""
        index = self._first_after(seq)
        return self.values[index] if index < len(self.values) else None

    def _first_after(self, seq: int) -> int:
        values = self.values
        n = len(values)
        if not n or values[0].seq > seq:
            return 0
        # Values are usually contiguous in sequence, so the direct guess almost always hits.
        guess = seq + 1 - values[0].seq
        if 0 <= guess < n and values[guess].seq == seq + 1:
            return guess
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if values[mid].seq <= seq:
                lo = mid + 1
            else:
                hi = mid
        return lo
