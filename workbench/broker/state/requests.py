"""What every request handler of the broker state shares: refusing a request, checking
arguments, printing sizes."""

from __future__ import annotations

from ...protocol import ProtocolError


class OpError(Exception):
    """Refuse the current request with ``status`` and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
