"""Key-value entries' lifetimes: an entry past its deadline is treated as absent by every
operation that touches it, and a heap of deadlines lets ``reap`` remove due entries without
scanning anything else. Shared by the key-value service and by the workspace operations, which
see the same variables."""

from __future__ import annotations

import heapq

from ...protocol import Status
from .changes import Expires
from .deliveries import Deliveries
from .effects import Outbox
from .memory import Memory
from .registry import Registry
from .requests import Clock
from .variables import Variable
from .workspaces import Workspace

_MIN_DEADLINES_LIMIT = 1024


class Deadlines:
    def __init__(self, clock: Clock, outbox: Outbox, counters: dict[str, int],
                 memory: Memory, registry: Registry, deliveries: Deliveries) -> None:
        self.clock = clock
        self.outbox = outbox
        self.counters = counters
        self.memory = memory
        self.registry = registry
        self.deliveries = deliveries
        # (deadline, variable id, variable) of entries that expire; stale ones (the entry was
        # rewritten or deleted since) stay until they come up or ``set`` prunes them.
        self.heap: list[tuple[float, int, Variable]] = []
        self.limit = _MIN_DEADLINES_LIMIT  # when to drop stale deadlines

    def __len__(self) -> int:
        return len(self.heap)

    def unexpired(self, ws: Workspace, name: str) -> Variable | None:
        """The variable ``name`` of ``ws``, after removing its value if its deadline passed."""
        var = ws.variables.get(name)
        if var is not None and var.expires is not None and var.expires <= self.clock.now:
            self.expire(var)
            var = ws.variables.get(name)
        return var

    def set(self, var: Variable, ttl: float | None) -> None:
        """ttl: None keeps the deadline, 0 removes it, otherwise seconds from now."""
        if ttl is None:
            return
        if ttl == 0:
            self.clear(var)
            return
        now = self.clock.now
        var.expires = now + ttl if ttl > 0 else now - 1.0
        self.outbox.log.append((Expires, var.id, var.expires))
        heap = self.heap
        heapq.heappush(heap, (var.expires, var.id, var))
        if len(heap) > self.limit:
            # Rewrites leave their old deadlines behind until those pass; a key rewritten
            # often with a long ttl would pile them up, so drop the stale ones now and then.
            heap[:] = {entry[:2]: entry for entry in heap
                       if entry[2].live and entry[2].expires == entry[0]}.values()
            heapq.heapify(heap)
            self.limit = max(_MIN_DEADLINES_LIMIT, 2 * len(heap))

    def restored(self, var: Variable) -> None:
        """A variable restored from a log (``restore``) has a deadline: tracked, not recorded
        (the log has its record)."""
        heapq.heappush(self.heap, (var.expires, var.id, var))

    def clear(self, var: Variable) -> None:
        """The entry never expires now."""
        if var.expires is not None:
            var.expires = None
            self.outbox.log.append((Expires, var.id, None))

    def expire(self, var: Variable) -> None:
        """An entry's time is up: its value goes, and the variable too unless someone waits."""
        self.clear(var)
        for value in var.values:
            self.memory.discard(value, var)
        var.values.clear()
        self.counters["expired"] += 1
        self.forget(var)

    def forget(self, var: Variable) -> None:
        """An entry without values goes, unless a blocked reader waits on it."""
        ws = var.workspace
        if not var.fetchers and not var.finders and ws.variables.get(var.name) is var:
            self.registry.delete_variable(var, Status.VARIABLE_DELETED, "")  # nobody to tell
        elif self.deliveries.watched:
            self.deliveries.event(ws.name, "deleted", var.name)

    def reap(self, now: float) -> None:
        """Remove the entries whose deadline has passed: O(log n) each, no scan."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            deadline, _, var = heapq.heappop(heap)
            if var.live and var.expires == deadline:  # else touched, rewritten or deleted
                self.expire(var)
