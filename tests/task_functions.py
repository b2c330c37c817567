"""Task functions that live in an importable module, so they travel to workers by reference.

A worker imports the module of a function that goes by reference. This one needs nothing a
worker has not loaded already: a test module would bring pytest, the master and the launchers
into every worker, which for a hundred workers on two cores is seconds of CPU before the first
task runs."""

from __future__ import annotations

import time


def fails_on_zero(x: int) -> int:
    return 10 // x  # fails on zero


def tagged(x):
    """``x`` and the rank of the worker that ran it, a millisecond later."""
    from workbench.sleigh.worker import SleighRank  # set once the worker started

    time.sleep(0.001)  # long enough for a map to be under way when workers are killed
    return x, SleighRank
