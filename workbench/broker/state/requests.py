"""What every part of the broker state shares: refusing a request, checking arguments, printing
sizes, the clock of the call in progress and the counters."""

from __future__ import annotations

from ...protocol import ProtocolError

#: What ``workbench status`` counts. The server counts its own transport events (refused
#: connections, failed handshakes, paused readers) in the same table (``BrokerState.count``).
COUNTERS = ("requests", "errors", "malformed", "oversized", "internal_errors", "expired",
            "kv_gets", "kv_misses", "kv_sets", "published", "dropped", "queue_refused",
            "publish_errors", "over_max_waiting", "over_max_subscriptions", "over_max_watches")


class OpError(Exception):
    """Refuse the current request with ``status`` and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Clock:
    """The time of the call in progress: the ``now`` the server passed in, in seconds."""

    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now


def flag(arg: bytes) -> bool:
    if arg not in (b"0", b"1"):
        raise ProtocolError(f"flag argument {arg!r} is not 0 or 1")
    return arg == b"1"


def arity(args: list, n: int) -> None:
    if len(args) != n:
        raise ProtocolError(f"{len(args)} arguments where {n} were expected")


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
