"""Package faces whose public names are imported on first touch (PEP 562), so that importing
a package loads only what its user touches."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_names(package: str, sources: dict[str, str]
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """-> the ``__getattr__`` and ``__dir__`` of ``package``, whose names come from the
    modules ``sources`` gives (relative to the package), each resolved once."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        source = sources.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source, package), name)
        namespace[name] = value  # resolved once: the next touch is a plain lookup
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(sources))

    return __getattr__, __dir__
