"""Old scripts, unchanged: ``import nws.client``, ``from nws.sleigh import Sleigh``,
``import berrymq``, ``import memcache`` and ``import wrpme`` answered by the workbench's faces.

Run a script with the old names in place (its workers get them too)::

    python -m workbench.compat old_script.py ARG...     # or: workbench compat old_script.py

or put them in place inside a process or a notebook::

    import workbench.compat
    workbench.compat.install()
    from nws.client import NetWorkSpace

Nothing is written or installed: an import hook (``finder``) answers the old names in this
process only, and only while installed, so a real python-memcached in the same environment is
what ``import memcache`` finds everywhere else. Which module answers which name is
``names.FACES``; an old module with no face here (``nws.babelfish``, ...) raises an ImportError
saying why. What still differs from each original is on the docs page "Running old scripts".
"""

from __future__ import annotations

import os
import runpy
import sys
from types import ModuleType
from typing import Sequence

from ..config import COMPAT_ENV
from .finder import OldNameFinder
from .names import ROOTS

_finder: OldNameFinder | None = None
# Modules that held old names before install() (a real python-memcached already imported):
# set aside while installed, put back by uninstall().
_set_aside: dict[str, ModuleType] = {}


def install() -> None:
    """Answer the old import names in this process, and in the sleigh workers it starts from
    now on (through ``config.COMPAT_ENV`` in the environment they inherit). Modules that a
    script had already imported under those names stay what they are for whoever holds them;
    the next ``import`` finds the workbench's face. Calling it again does nothing."""
    global _finder
    if _finder is not None:
        return
    _finder = OldNameFinder()
    sys.meta_path.insert(0, _finder)
    for name in [name for name in sys.modules if _is_old_name(name)]:
        _set_aside[name] = sys.modules.pop(name)
    os.environ[COMPAT_ENV] = "1"


def uninstall() -> None:
    """Stop answering the old names: the next ``import memcache`` finds what it found before
    ``install()``. Modules already imported under them stay bound where they were imported."""
    global _finder
    if _finder is None:
        return
    sys.meta_path.remove(_finder)
    _finder = None
    for name in [name for name in sys.modules if _is_old_name(name)]:
        del sys.modules[name]
    sys.modules.update(_set_aside)
    _set_aside.clear()
    os.environ.pop(COMPAT_ENV, None)


def installed() -> bool:
    """Whether the old names are answered in this process now."""
    return _finder is not None


def run_script(script: str, args: Sequence[str] = ()) -> None:
    """Run ``script`` as ``python SCRIPT ARGS...`` would, with the old names installed: as
    ``__main__``, with ``sys.argv`` ``[SCRIPT, *ARGS]`` and the script's folder first on the
    import path. The script's ``sys.exit`` and exceptions propagate, so the process ends
    with its status."""
    install()
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


def _is_old_name(name: str) -> bool:
    return name.partition(".")[0] in ROOTS


__all__ = ["install", "installed", "run_script", "uninstall"]
