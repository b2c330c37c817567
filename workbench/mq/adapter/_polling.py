"""What the adapters share: a daemon thread that acts every ``interval`` seconds until stopped.

It waits on an Event rather than sleeping, so ``stop()`` returns at once, not an interval
later. An exception in one round (a synchronous follower's, say) is logged and the next round
still comes: an adapter that died silently would look like one with nothing to report.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("workbench.mq")


class Polling:
    def __init__(self, interval: float, name: str) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        self.interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.poll()
            except Exception:
                log.exception("mq: %s failed", self._thread.name)

    def poll(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping.is_set()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop, and wait (at most ``timeout`` seconds) for a round under way to finish."""
        self._stopping.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
