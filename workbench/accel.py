"""The compiled parts of the workbench, where this install has them.

Each is optional: an install without a C compiler has none, and every caller then takes the
Python path, which gives the same results (the test suite runs both: ``make test`` with them,
``make test-lowest`` without). ``WORKBENCH_PURE_PYTHON=1`` in the environment turns them off,
to compare the two or to rule them out when something looks wrong.

- ``Lane``: the client's fast lane, a small request and its reply in one call
  (``workbench/_lane.c``; used by ``client.dealer`` and ``client.connection``).
- ``serve_read``: the broker's fast pass over a readable connection, its small requests
  handled and their small replies written in one call (``workbench/_broker_pass.c``; used by
  ``broker.server``).
- ``PlainKV``: the key-value service's usual set and get, each in one call on the state's own
  objects (``workbench/_kv_pass.c``; used by ``broker.state.keyvalue``).
"""

from __future__ import annotations

import os

PURE_PYTHON = os.environ.get("WORKBENCH_PURE_PYTHON", "") not in ("", "0")

Lane = None
serve_read = None
PlainKV = None
if not PURE_PYTHON:
    try:
        from ._lane import Lane
    except ImportError:  # built without a C compiler
        pass
    try:
        from ._broker_pass import serve_read
    except ImportError:
        pass
    try:
        from ._kv_pass import PlainKV
    except ImportError:
        pass


def compiled() -> list[str]:
    """The names of the compiled parts in use."""
    parts = (("Lane", Lane), ("serve_read", serve_read), ("PlainKV", PlainKV))
    return [name for name, part in parts if part is not None]
