"""Running a notebook cell on a sleigh worker, for ``%%nws_each``: what runs there and what
comes back. No IPython here: workers import this module.

Each worker keeps one namespace for all the cells it runs, so a name one cell defines is there
for the next, as in a kernel. ``SleighRank`` and the other worker globals are available.
"""

from __future__ import annotations

import ast
import contextlib
import io
import itertools
import linecache
import traceback
from typing import Any, NamedTuple

#: The namespace cells run in, one per worker process.
namespace: dict[str, Any] = {"__name__": "__nws_each__"}
_cell_numbers = itertools.count(1)


class CellOutput(NamedTuple):
    """What running a cell on one worker produced."""

    rank: int | None
    stdout: str
    stderr: str
    value: str | None  # repr of the last expression's value, if the cell ends with one
    error: str | None  # the traceback of what the cell raised


def run_cell(source: str) -> CellOutput:
    """Run ``source`` in this worker's namespace, capturing what it prints."""
    import builtins

    filename = f"<nws_each-{next(_cell_numbers)}>"
    # Registered so that a traceback shows the cell's lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    out, err = io.StringIO(), io.StringIO()
    value = error = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            body, last = _split_last_expression(ast.parse(source, filename))
            exec(compile(body, filename, "exec"), namespace)  # noqa: S102 - the user's cell
            if last is not None:
                result = eval(compile(last, filename, "eval"), namespace)  # noqa: S307
                if result is not None:
                    value = repr(result)
        except (Exception, SystemExit) as exc:  # a cancellation (a BaseException) goes on
            error = _cell_traceback(exc, filename)
    return CellOutput(getattr(builtins, "SleighRank", None), out.getvalue(), err.getvalue(),
                      value, error)


def _split_last_expression(tree: ast.Module) -> tuple[ast.Module, ast.Expression | None]:
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
        return tree, last
    return tree, None


def _cell_traceback(exc: BaseException, filename: str) -> str:
    """The traceback from the cell's own frames on (this module's are left out)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) or tb is None:
        return "".join(traceback.format_exception_only(type(exc), exc))
    return "".join(traceback.format_exception(type(exc), exc, tb))
