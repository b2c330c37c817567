"""What travels through a sleigh's workspace: task records, result entries, function specs.

A **task record** is one value of the FIFO variable ``task`` (or a worker's own ``task@<rank>``)::

    (batch, tag0, function key, items, kwargs, deaths)

``items`` is a chunk of argument tuples, the elements ``tag0``, ``tag0 + 1``, ... of the batch:
one record carries many small tasks so that tiny tasks cost one broker value per chunk, while
results, errors and output stay per element. ``deaths`` counts the workers the record killed
before it was split apart (see ``split_suspects``); the broker counts the rest (``returns``).

The function travels once per map, not once per task: ``pack_function`` pickles ``(function,
fixed arguments, argument permutation)`` by value with cloudpickle, and its hash names the
SINGLE variable ``__function:<key>`` that workers read once and cache.

A **result value** is what a worker stores into ``result`` at each flush: a list of entries::

    (batch, tag0, rank, values, errors, outputs)

``errors`` lists ``(index, ErrorInfo)``; ``outputs`` lists ``(index, stdout text, stderr
text)``. An entry whose batch is 0 is a control entry: ``(0, kind, rank, payload)``.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from .. import codec, sources
from ..config import OUT_OF_BAND_THRESHOLD
from ..protocol import DESCRIPTOR, Kind

#: A record that has killed this many workers is not run again.
DEATHS_LIMIT = 3

# Field positions of a task record and of a result entry.
BATCH, TAG0, KEY, ITEMS, KWARGS, DEATHS = range(6)
RANK, VALUES, ERRORS, OUTPUTS = 2, 3, 4, 5

#: Control entries (batch 0) in the result variable.
HELLO = "hello"

FUNCTION_PREFIX = "__function:"
TASK, RESULT = "task", "result"


def own_task_var(rank: int) -> str:
    """The FIFO variable only the worker of ``rank`` takes from (eachWorker's tasks)."""
    return f"task@{rank}"


def worker_var(rank: int) -> str:
    """The SINGLE variable holding what the worker of ``rank`` said about itself."""
    return f"worker@{rank}"


# ---------------------------------------------------------------------------- functions

def pack_function(fn: Callable, fixed: Sequence = (), permute: Sequence[int] | None = None
                  ) -> tuple[str, bytes]:
    """-> (key, bytes) of a function spec. cloudpickle pickles what lives in ``__main__``
    (a notebook) or in a local scope by value, with the lines of its source (``sources``), and
    importable functions by reference."""
    data = sources.dumps((fn, tuple(fixed), None if permute is None else list(permute)))
    return hashlib.blake2b(data, digest_size=12).hexdigest(), data


def function_label(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def call_args(item: tuple, fixed: tuple, permute: list | None) -> tuple:
    """One element's arguments: its own, then the fixed ones, then reordered or selected."""
    args = item + fixed if fixed else item
    if permute is not None:
        args = tuple(args[i] for i in permute)
    return args


# ---------------------------------------------------------------------------- chunking

def guided_chunks(count: int, workers: int, most: int = 10_000) -> Iterator[tuple[int, int]]:
    """(start, stop) of chunks that shrink as the work runs out: big ones first cost few
    records, small ones last keep the workers finishing together. A handful of elements per
    worker gives chunks of one."""
    start, share = 0, 4 * max(1, workers)
    while start < count:
        size = min(most, max(1, math.ceil((count - start) / share)))
        yield start, start + size
        start += size


def even_chunks(count: int | None, size: int) -> Iterator[tuple[int, int]]:
    start = 0
    while count is None or start < count:
        yield start, start + size if count is None else min(count, start + size)
        start += size


# ---------------------------------------------------------------------------- encoding

def encode_task(record: tuple) -> list:
    """A task record's frames. Plain pickle names classes and functions of ``__main__`` by
    reference, which a worker cannot resolve, so such records are pickled by value."""
    frames = codec.encode(record)
    first = frames[0]
    kind, flags, _ = DESCRIPTOR.unpack_from(first)
    if kind == Kind.PICKLE:
        data = frames[1] if flags & codec.DETACHED else first
        if b"__main__" in data:
            return _by_value(record)
    return frames


def _by_value(value: Any) -> list:
    """cloudpickle frames in the codec's layout, large buffers out of band."""
    buffers: list = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_THRESHOLD:
            return True
        buffers.append(raw)
        return False

    data = sources.dumps(value, buffer_callback=out_of_band)
    if len(data) >= OUT_OF_BAND_THRESHOLD:
        return [DESCRIPTOR.pack(Kind.CLOUDPICKLE, codec.DETACHED, len(buffers) + 1), data,
                *buffers]
    return [DESCRIPTOR.pack(Kind.CLOUDPICKLE, 0, len(buffers)) + data, *buffers]


def frames_size(frames: Sequence) -> int:
    return sum(memoryview(frame).nbytes for frame in frames)


# ---------------------------------------------------------------------------- decoding

class Decoded(NamedTuple):
    value: Any
    missing: list[str]  # what could not be imported here (placeholders stand in for them)


def decode_tolerant(frames: list) -> Decoded:
    """Decode a value; if that fails because a class or function does not exist in this
    process, decode it again with placeholders standing in for what is missing, so that at
    least which task it was (and what was missing) is known."""
    try:
        return Decoded(codec.decode(frames), [])
    except Exception:
        kind, data, buffers = codec.split(frames)
        if kind not in (Kind.PICKLE, Kind.CLOUDPICKLE):
            raise
    unpickler = _Tolerant(io.BytesIO(bytes(data)), buffers=buffers)  # the failing path only
    return Decoded(unpickler.load(), unpickler.missing)


class _Tolerant(pickle.Unpickler):
    def __init__(self, file: Any, buffers: Sequence) -> None:
        super().__init__(file, buffers=buffers)
        self.missing: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except Exception as exc:
            self.missing.append(f"{module}.{name} ({type(exc).__name__}: {exc})")
            return type(name, (Undecodable,), {"__module__": module})


class Undecodable:
    """Stands in for an object whose class does not exist in the process decoding it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Undecodable:
        return type(self)(*args)

    def __repr__(self) -> str:
        return f"<undecodable {type(self).__module__}.{type(self).__name__}>"


def chunk_records(batch: int, key: str, chunks: Iterable[tuple[int, list]],
                  kwargs: dict | None = None) -> Iterator[tuple]:
    for tag0, items in chunks:
        yield (batch, tag0, key, items, kwargs, 0)


def split_suspects(record: tuple, returns: int) -> list[tuple]:
    """A record that came back from a dead worker, as one record per element, each counting
    the death: run alone, the element that kills workers is found and the others are not
    blamed for it."""
    batch, tag0, key, items, kwargs, deaths = record
    return [(batch, tag0 + i, key, [item], kwargs, deaths + returns)
            for i, item in enumerate(items)]

