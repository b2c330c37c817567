"""What travels through a sleigh's workspace: task records, result entries, function specs, and
the names of the variables they travel in.

A **task record** (``TaskRecord``) is one value of the FIFO variable ``task`` (or a worker's own
``task@<rank>``): a chunk of argument tuples, the elements ``tag0``, ``tag0 + 1``, ... of one
call (a *batch*). One record carries many small tasks so that tiny tasks cost one broker value
per chunk, while results, errors and output stay per element.

A **result value** is what a worker stores into ``result`` at each flush: a list of
``ResultEntry`` (one per record run) and ``Hello`` entries (a worker joined; batch 0). A
record that names a ``reply`` variable has its entry stored there instead, alone: the thread
that waits for it takes it from there itself (``reply_var``). The master tells its own
collector to take from such a variable with a ``Watch`` entry (batch -1) in ``result``.

Records travel as plain tuples: pickling a NamedTuple costs ten times a tuple's, and tiny tasks
would pay it on every record. ``encode_record``/``encode_entries`` and ``read_record``/
``read_entry`` are where they turn into tuples and back; ``records``, ``lazy_records`` and
``result_entry`` build them on the hot paths.

The function travels once per map, not once per task: ``pack_function`` pickles ``(function,
fixed arguments, argument permutation)`` by value with cloudpickle, and its hash names the
SINGLE variable ``__function:<key>`` that workers read once and cache.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import threading
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from .. import codec, sources
from ..config import SLEIGH_CHUNK_WORKERS, TASK_DEATHS_LIMIT, WORKER_HAND_SECONDS
from .errors import ErrorInfo

#: A record that has killed this many workers is not run again.
DEATHS_LIMIT = TASK_DEATHS_LIMIT
#: Seconds of work a worker's hand of tasks should hold.
HAND_SECONDS = WORKER_HAND_SECONDS
#: Workers eachElem's own chunks are planned for, at most.
CHUNK_WORKERS = SLEIGH_CHUNK_WORKERS
#: The batch number of control entries (``Hello``) in the result variable.
CONTROL = 0
#: The batch number of the master's note to its collector (``Watch``).
WATCH = -1

FUNCTION_PREFIX = "__function:"
TASK, RESULT = "task", "result"
#: The layout of task records and result entries. A worker says it in its hello, and a master
#: refuses to run with a worker of another (an install of another workbench release), which
#: could read none of its records.
TASK_FORMAT = 3


def own_task_var(rank: int) -> str:
    """The FIFO variable only the worker of ``rank`` takes from (eachWorker's tasks)."""
    return f"task@{rank}"


def worker_var(rank: int) -> str:
    """The SINGLE variable holding what the worker of ``rank`` said about itself."""
    return f"worker@{rank}"


def worker_rank(var: str) -> int | None:
    """The rank whose ``worker_var`` ``var`` is, or None: another variable."""
    prefix, at, rank = var.partition("@")
    return int(rank) if prefix == "worker" and at and rank.isdigit() else None


def reply_var() -> str:
    """The variable the results of the calling thread's own submits come to (see
    ``Dispatcher.collect_own``): one per thread, so that nothing else is stored there."""
    return f"reply@{threading.get_ident()}"


def farewell_var(rank: int, session: str) -> str:
    """The variable whose one value the worker of ``rank`` (in session ``session``) holds
    leased while it lives: the broker puts it back when that session ends."""
    return f"farewell@{rank}.{session}"


# ---------------------------------------------------------------------------- records

class TaskRecord(NamedTuple):
    """A chunk of one call's elements, as a worker takes it."""

    batch: int  # the call
    tag0: int  # the index of the first element in the call
    key: str  # of the function spec, in __function:<key>
    items: list  # argument tuples, one per element
    kwargs: dict | None = None  # keyword arguments of every call (submit)
    deaths: int = 0  # workers killed by this record before it was split apart; the broker
    #                  counts the rest (``returns``)
    bare: bool = False  # each item is its element's one argument, not a tuple of them: a call
    #                     of one argument per element (map, imap) pickles no tuple per element
    reply: str | None = None  # the variable its result entry goes to, alone (None: result)

    def arguments(self, index: int) -> tuple:
        """The argument tuple of element ``index``."""
        item = self.items[index]
        return (item,) if self.bare else item


class ResultEntry(NamedTuple):
    """What came of one task record on a worker, per element."""

    batch: int
    tag0: int
    rank: int  # of the worker that ran it
    values: list  # one per element; None where it failed
    errors: list[tuple[int, ErrorInfo]] | None = None  # (index, failure)
    outputs: list[tuple[int, str, str]] | None = None  # (index, stdout, stderr)


class Hello(NamedTuple):
    """A worker joined: its control entry in the result variable."""

    batch: int  # always CONTROL: what tells it from a ResultEntry
    rank: int
    info: dict  # what the worker says about itself (workerInfo)
    farewell: str  # its farewell variable (see ``farewell_var``)


class Watch(NamedTuple):
    """A thread of the master stopped waiting on its reply variable with a result still to
    come there: the collector takes what comes there from now on."""

    batch: int  # always WATCH
    var: str


# A NamedTuple's own constructor is a Python function that costs twice this, once per record.
_new = tuple.__new__


def result_entry(batch: int, tag0: int, rank: int, values: list, errors: list | None,
                 outputs: list | None) -> ResultEntry:
    return _new(ResultEntry, (batch, tag0, rank, values, errors, outputs))


def failed_entry(record: TaskRecord, rank: int, info: ErrorInfo) -> ResultEntry:
    """Every element of ``record`` failed the same way."""
    count = len(record.items)
    return ResultEntry(record.batch, record.tag0, rank, [None] * count,
                       [(i, info) for i in range(count)])


def encode_record(record: TaskRecord) -> list:
    return codec.encode_portable(tuple(record))


#: A task record from its wire tuple (the worker reads one per task: no Python call).
read_record: Callable[[tuple], TaskRecord] = functools.partial(_new, TaskRecord)


def encode_entries(entries: Sequence[ResultEntry | Hello | Watch]) -> list:
    return codec.encode([tuple(entry) for entry in entries])


def read_entry(value: tuple) -> ResultEntry | Hello | Watch:
    batch = value[0]
    return _new(ResultEntry if batch > CONTROL else Hello if batch == CONTROL else Watch, value)


# ---------------------------------------------------------------------------- chunking

def records(batch: int, key: str, items: Sequence, bounds: Iterable[tuple[int, int]],
            var: str = TASK, bare: bool = False) -> Iterator[tuple[str, TaskRecord]]:
    """(variable, record) of the chunks ``items[start:stop]`` of a call's elements (argument
    tuples, or with ``bare`` each element's one argument)."""
    for start, stop in bounds:
        yield var, _new(TaskRecord, (batch, start, key, items[start:stop], None, 0, bare,
                                       None))


def own_records(batch: int, key: str, ranks: Sequence[int], args: tuple
                ) -> Iterator[tuple[str, TaskRecord]]:
    """(variable, record) of an eachWorker call: ``args`` once for each of ``ranks``, in the
    worker's own variable."""
    for tag, rank in enumerate(ranks):
        yield own_task_var(rank), _new(TaskRecord, (batch, tag, key, [args], None, 0, False,
                                                           None))


def lazy_records(batch: int, key: str, items: Iterator, size: int, bare: bool = False
                 ) -> Iterator[tuple[str, TaskRecord]]:
    """(variable, record) of chunks of ``size`` elements, read from ``items`` as needed
    (argument tuples, or with ``bare`` each element's one argument)."""
    tag = 0
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield TASK, _new(TaskRecord, (batch, tag, key, chunk, None, 0, bare, None))
        tag += len(chunk)


def call_elements(iterables: Sequence[Iterable]) -> tuple[Iterable, bool]:
    """The elements of a call over the zipped ``iterables`` -> (elements, bare): one
    iterable's items are the elements' one arguments as they are; several are zipped into
    argument tuples."""
    if len(iterables) == 1:
        return iterables[0], True
    return zip(*iterables), False


def guided_chunks(count: int, workers: int, most: int = 10_000) -> Iterator[tuple[int, int]]:
    """(start, stop) of chunks that shrink as the work runs out: big ones first cost few
    records, small ones last keep the workers finishing together, down to an eighth of the
    first (a tail of tinier records would cost tiny tasks a message each for nothing: a
    worker gives the rest of a record that turns out slow back to the queue in pieces for
    the idle ones, ``Worker._give_back``). A handful of elements per worker gives chunks of
    one. Planned for at most CHUNK_WORKERS workers, whatever the pool's size: more, smaller
    records would cost tiny tasks more messages than they save."""
    start, share = 0, 4 * max(1, min(workers, CHUNK_WORKERS))
    least = math.ceil(count / (8 * share))
    while start < count:
        size = min(most, count - start, max(least, math.ceil((count - start) / share)))
        yield start, start + size
        start += size


def paced_chunks(count: int, pace: float, workers: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of equal chunks of ``count`` elements that take ``pace`` seconds each:
    about HAND_SECONDS of work per chunk, and no more than 4 chunks per worker (what a worker
    gives back of a record that turned out slow, for the idle ones)."""
    size = max(1, int(HAND_SECONDS / pace) if pace > 0 else count,
               math.ceil(count / (4 * max(1, workers))))
    return even_chunks(count, size)


def even_chunks(count: int | None, size: int) -> Iterator[tuple[int, int]]:
    start = 0
    while count is None or start < count:
        yield start, start + size if count is None else min(count, start + size)
        start += size


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
