"""Source lines that travel with functions pickled by value, so that a traceback raised where
they run shows the lines they were written with.

cloudpickle pickles a function from ``__main__``, a notebook cell or a local scope by value: its
code object, not its name. The process that runs it has no file to read the lines from — a
notebook cell exists only in the kernel that ran it — and since cloudpickle 3.1.3 every such code
object arrives named ``<dynamic-code>``. So the pickling side records, for every code object it
pickles, the lines it spans (as ``linecache`` has them there), and the pickle carries them: the
payload unpickles to the original object and, on the way, hands the lines to this module's
registry. ``format_exception`` then shows a frame of shipped code with its original file name and
line, whatever name the code object carries.

A code object is recognised by its name, first line and bytecode, which survive pickling in every
cloudpickle release, instead of by its file name, which does not.
"""

from __future__ import annotations

import hashlib
import io
import linecache
import pickle
import threading
import traceback
import types
from typing import Any, Callable, NamedTuple

import cloudpickle

#: At most this many code objects' lines are kept in a process (the oldest go first), so a
#: worker that runs a new lambda per task does not grow without bound.
REGISTRY_SIZE = 10_000


class SourceSpan(NamedTuple):
    """The lines of one code object: where they came from and their text."""

    filename: str
    first: int  # line number of lines[0]
    lines: tuple[str, ...]

    def line(self, lineno: int) -> str | None:
        index = lineno - self.first
        return self.lines[index] if 0 <= index < len(self.lines) else None


CodeKey = tuple  # (name, first line, digest of the bytecode)

_registry: dict[CodeKey, SourceSpan] = {}
# Payloads unpickle on any thread (a delivery thread decodes pub/sub values), and trimming the
# oldest entry takes two steps that another thread's insert must not come between.
_registry_lock = threading.Lock()


def code_key(code: types.CodeType) -> CodeKey:
    return (code.co_name, code.co_firstlineno,
            hashlib.blake2b(code.co_code, digest_size=8).digest())


def span_of(code: types.CodeType) -> SourceSpan | None:
    """The lines ``code`` spans, as this process has them, or None if it has none."""
    numbers = [line for _, _, line in code.co_lines() if line is not None]
    last = max(numbers, default=code.co_firstlineno)
    lines = linecache.getlines(code.co_filename)
    if not lines or last > len(lines):
        return None
    first = code.co_firstlineno
    return SourceSpan(code.co_filename, first, tuple(lines[first - 1:last]))


# ---------------------------------------------------------------------------- pickling

class _SourceRecordingPickler(cloudpickle.Pickler):
    """cloudpickle, noting the lines of every code object it pickles (by value, since a
    function pickled by reference pickles no code)."""

    def __init__(self, file: io.BytesIO, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.spans: dict[CodeKey, SourceSpan] = {}

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.CodeType:
            span = span_of(obj)
            if span is not None:
                self.spans[code_key(obj)] = span
        return super().reducer_override(obj)


class _WithSources:
    """Pickles as ``attach_sources(value, spans)``. The spans are the pickler's own dictionary,
    filled while ``value`` is pickled, which happens before the dictionary's turn comes."""

    def __init__(self, value: Any, spans: dict) -> None:
        self.value, self.spans = value, spans

    def __reduce__(self) -> tuple[Callable, tuple]:
        return attach_sources, (self.value, self.spans)


def dumps(value: Any, protocol: int = 5,
          buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None) -> bytes:
    """``cloudpickle.dumps`` whose payload also carries the source lines of the code it pickles
    by value; ``pickle.loads`` of it returns ``value`` and registers the lines."""
    file = io.BytesIO()
    pickler = _SourceRecordingPickler(file, protocol=protocol, buffer_callback=buffer_callback)
    pickler.dump(_WithSources(value, pickler.spans))
    return file.getvalue()


def attach_sources(value: Any, spans: dict[CodeKey, SourceSpan]) -> Any:
    """Called by ``pickle.loads`` on a payload of ``dumps``: remember the lines, return the
    value."""
    register(spans)
    return value


def register(spans: dict[CodeKey, SourceSpan]) -> None:
    with _registry_lock:
        for key, span in spans.items():
            _registry.pop(key, None)
            _registry[key] = SourceSpan(*span)
        while len(_registry) > REGISTRY_SIZE:
            del _registry[next(iter(_registry))]


# ---------------------------------------------------------------------------- tracebacks

def format_exception(exc: BaseException, tb: types.TracebackType | None) -> str:
    """``traceback.format_exception`` of ``exc`` with its traceback starting at ``tb``, frames of
    shipped code shown with the file and line they were written in."""
    report = traceback.TracebackException(type(exc), exc, tb)
    _restore(report, tb, exc, set())
    return "".join(report.format())


def _restore(report: traceback.TracebackException, tb: types.TracebackType | None,
             exc: BaseException | None, seen: set[int]) -> None:
    if id(report) in seen:
        return
    seen.add(id(report))
    report.stack = _restored_stack(report.stack, tb)
    if exc is None:
        return
    for chained, original in ((report.__cause__, exc.__cause__),
                              (report.__context__, exc.__context__)):
        if chained is not None and original is not None:
            _restore(chained, original.__traceback__, original, seen)
    for member, original in zip(getattr(report, "exceptions", None) or (),
                                getattr(exc, "exceptions", None) or ()):
        _restore(member, original.__traceback__, original, seen)


def _restored_stack(stack: traceback.StackSummary,
                    tb: types.TracebackType | None) -> traceback.StackSummary:
    frames = [frame for frame, _ in traceback.walk_tb(tb)]
    if len(frames) != len(stack) or not _registry:
        return stack
    restored = []
    for summary, frame in zip(stack, frames):
        span = _registry.get(code_key(frame.f_code))
        text = span.line(summary.lineno) if span and summary.lineno is not None else None
        if text is None:
            restored.append(summary)
            continue
        positions = {name: getattr(summary, name) for name in ("end_lineno", "colno", "end_colno")
                     if hasattr(summary, name)}  # Python 3.11+: where the caret goes
        restored.append(traceback.FrameSummary(span.filename, summary.lineno, summary.name,
                                               lookup_line=False, line=text.rstrip("\n"),
                                               **positions))
    return traceback.StackSummary.from_list(restored)
