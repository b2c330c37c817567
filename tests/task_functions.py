"""Task functions that live in an importable module, so they travel to workers by reference."""

from __future__ import annotations


def fails_on_zero(x: int) -> int:
    return 10 // x  # fails on zero
