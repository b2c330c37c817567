"""How the workbench's errors read in IPython: the user's code, not the library's insides.

IPython asks an exception for ``_render_traceback_()`` before formatting it itself (the hook
ipyparallel made for remote errors). Two uses here:

- ``one_line(exc, text)``: a magic that failed shows ``ExceptionName: text`` and nothing else,
  as IPython shows a ``UsageError``; the cell still fails, so Run All stops there.
- ``NwsException`` renders through ``without_library_frames``: a ``fetch(timeout=1)`` that times
  out shows the cell's line that called it, and not the frames of the client that waited.
  Set ``WORKBENCH_TRACEBACK=full`` to see every frame.

A task's traceback comes from its worker as text (``sleigh.errors.RemoteError``); ``name_cells``
names the frames of functions defined in this notebook's cells as IPython names its own
(``Cell In[4], line 3``) rather than by the kernel's temporary file.
"""

from __future__ import annotations

import os
import re
import types
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent.parent) + os.sep
_RED, _RESET = "\x1b[0;31m", "\x1b[0m"
_FILE_LINE = re.compile(r'^(\s*)File "([^"]+)", line (\d+)', re.M)


def one_line(exc: BaseException, text: str) -> BaseException:
    """Make IPython show ``exc`` as ``TypeName: text``, without a traceback -> ``exc``."""
    line = f"{_RED}{type(exc).__name__}{_RESET}: {text}"
    exc._render_traceback_ = lambda: [line]  # IPython's hook; see the module docstring
    return exc


def without_library_frames(exc: BaseException) -> list[str]:
    """IPython's traceback of ``exc`` without the frames of workbench's own modules (the
    innermost frame stays when all are). Outside IPython: the usual traceback lines."""
    import traceback

    from IPython import get_ipython

    shell = get_ipython()
    tb = exc.__traceback__
    if os.environ.get("WORKBENCH_TRACEBACK") != "full":
        tb = _user_frames(tb)
    if shell is None:
        return traceback.format_exception(type(exc), exc, tb)
    return shell.InteractiveTB.structured_traceback(type(exc), exc, tb)


def _user_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    frames = []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    kept = [f for f in frames if not f.tb_frame.f_code.co_filename.startswith(_PACKAGE)]
    if not kept and frames:
        kept = frames[-1:]
    rebuilt = None
    for frame in reversed(kept):
        rebuilt = types.TracebackType(rebuilt, frame.tb_frame, frame.tb_lasti, frame.tb_lineno)
    return rebuilt


def name_cells(text: str) -> str:
    """``text`` (a traceback) with the files of this IPython's cells named as its cells."""
    try:
        from IPython import get_ipython
    except ImportError:
        return text
    shell = get_ipython()
    name_of = getattr(getattr(shell, "compile", None), "format_code_name", None)
    if name_of is None:  # not in IPython, or an IPython before 8.1
        return text

    def named(match: re.Match) -> str:
        label = name_of(match.group(2))
        if label is None:
            return match.group(0)
        return f"{match.group(1)}{label[0]} {label[1]}, line {match.group(3)}"

    return _FILE_LINE.sub(named, text)
