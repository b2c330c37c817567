"""A sleigh worker: the loop that takes tasks from the sleigh's workspace and puts results back.

Started by a ``Sleigh`` (``python -m workbench worker --broker ADDR --sleigh NAME --rank R``)
or by hand on any machine that reaches the broker (then it takes the next free rank).

**The loop.** The worker keeps two requests in flight on its channel: FETCH_MANY on the shared
``task`` variable and on its own ``task@<rank>`` (eachWorker's tasks), and takes whichever
answers. A hand of tasks is leased: the store of its results carries the acknowledgement, so
fetch + compute + store happens exactly once even if the worker is killed at any point (a
killed worker's hand goes back to the queue, and its partial results are dropped as
duplicates by the master). How many tasks it takes per request adapts to how long they run:
many when they are tiny, one when they are slow, so that the load stays balanced; a hand that
runs far longer than it was sized for gives what it has not started back to the queue
(``_give_back``), so a worker that took many records of tasks slower than the last ones keeps
only what it began.

**Dying tasks.** Each value fetched says how many times a worker died holding it. A hand that
came back from a dead worker is split into one record per element and queued again; a record
that has killed ``DEATHS_LIMIT`` workers is answered with an error instead of being run (the
accounting is the scheduler's: ``must_split``, ``split_suspects``, ``poisoned``).

**Leaving.** Before it says hello, a worker stores a value into its farewell variable and takes
it under a lease that it never acknowledges. Whenever its broker session ends (it died, was
killed, lost the network, or left), the broker puts the value back, and the master, waiting on
that variable, takes the worker off its roster.

**Cancelling.** The master publishes ``cancel@<sleigh>`` with the batches it gave up. The
delivery thread adds them to the set of cancelled batches (skipped from then on) and, if the
task running now belongs to one, sends SIGINT to the main thread, whose handler raises
``TaskInterrupted`` inside the task: a blocking ``time.sleep`` stops too.

**Globals.** ``SleighRank``, ``SleighWorkerCount``, ``SleighNws`` and ``SleighUserNws`` are
set here (``from workbench.sleigh.worker import SleighRank`` after the worker started), in
``builtins`` (so a bare name works in any module), in the worker's ``__main__`` and in the
globals of functions that came by value (defined in a notebook or a local scope).
"""

from __future__ import annotations

import builtins
import functools
import io
import os
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from itertools import repeat, starmap
from typing import Any, Sequence

from .. import __version__, codec
from ..client.connection import Connection
from ..client.keyvalue import KeyValueStore
from ..client.pubsub import MessageBus
from ..client.workqueue import WorkQueue
from ..client.workspace import NetWorkSpace, NwsServer
from ..connection_file import BrokerTarget
from ..config import (
    BROKER_RESTART_GRACE, CONNECT_TIMEOUT, SLEIGH_WORKER_ENV, WORKER_FLUSH_ITEMS,
    WORKER_FLUSH_SECONDS,
    WORKER_GIVE_BACK_SECONDS, WORKER_HAND_SECONDS, WORKER_MOST_TASKS, WORKER_NICE,
    WORKER_NICE_ENV,
)
from ..errors import (
    NwsConnectionDroppedException, NwsMemoryException, NwsNoWorkSpaceException,
    NwsUnpicklingException,
)
from . import tasks
from .errors import CANCELLED, ERROR, POISON, ErrorInfo
from .scheduler import must_split, poisoned, split_suspects
from .tasks import (
    CONTROL, FUNCTION_PREFIX, RESULT, TASK, Hello, ResultEntry, TaskRecord, farewell_var,
    own_task_var, worker_var,
)

SleighRank: int | None = None
SleighWorkerCount: int | None = None
SleighNws: NetWorkSpace | None = None
SleighUserNws: NetWorkSpace | None = None
GLOBAL_NAMES = ("SleighRank", "SleighWorkerCount", "SleighNws", "SleighUserNws")

# Tuning of the loop, from config (names kept short here, where they are used).
MOST_TASKS = WORKER_MOST_TASKS
HAND_SECONDS = WORKER_HAND_SECONDS
FLUSH_SECONDS, FLUSH_ITEMS = WORKER_FLUSH_SECONDS, WORKER_FLUSH_ITEMS
GIVE_BACK_SECONDS = WORKER_GIVE_BACK_SECONDS
#: A hand that emptied the queue and should take at least this long is shared (``_share``).
SHARE_SECONDS = HAND_SECONDS / 5
_NEVER = float("inf")
#: Function specs a worker keeps.
FUNCTION_CACHE = 128

#: Set in every worker's environment (see config).
WORKER_ENV = SLEIGH_WORKER_ENV
#: Set to "0" in a worker's environment: what tasks print stays in the worker's own output
#: (NetWorkSpaces' ``redirectOutput=False``) instead of going to the master.
REDIRECT_ENV = "WORKBENCH_SLEIGH_REDIRECT_OUTPUT"

RANK_COUNTER = "rankCount"
WORKER_COUNT = "workerCount"
CANCELLED_VAR = "cancelled"


def cancel_identifier(sleigh: str) -> str:
    """The pub/sub identifier the master publishes cancelled batch ids under."""
    namespace = sleigh.replace("@", "_").replace(":", "_")
    return f"cancel@{namespace}:batches"


class TaskInterrupted(BaseException):
    """Raised inside a running task whose batch was cancelled. A BaseException, so that a
    task's ``except Exception`` does not swallow it."""


class _Capture(io.TextIOBase):
    """Collects what tasks print, to be sent with their results, each piece marked with the
    element that printed it: the length of the values of the record running (``running``)
    is that element's index, so the loop that runs a record looks at nothing per element."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.parts: list[tuple[int, str]] = []  # (element index, text)
        self.running: list = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.parts.append((len(self.running), text))
        return len(text)

    def begin(self, values: list) -> None:
        """A record starts, its values to be collected in ``values``: what was printed
        between records goes with its first element."""
        if self.parts:
            self.parts = [(0, text) for _, text in self.parts]
        self.running = values

    def take(self, last: int) -> dict[int, str]:
        """What each element printed, by index (at most ``last``), and forget it."""
        texts: dict[int, str] = {}
        for index, text in self.parts:
            index = min(index, last)
            texts[index] = texts.get(index, "") + text
        self.parts = []
        return texts

    @property
    def encoding(self) -> str:
        return "utf-8"


class Worker:
    """One worker process's session with the sleigh's workspace."""

    def __init__(self, address: str | BrokerTarget, sleigh: str, rank: int | None = None,
                 timeout: float = CONNECT_TIMEOUT) -> None:
        self.connection = Connection(address, timeout)
        self.server = NwsServer(connection=self.connection)
        self.ws = self.server.useWs(sleigh, create=False)
        self.sleigh = sleigh
        self.queue = WorkQueue(self.connection, sleigh)
        self.cancelled: set[int] = set()
        self.running: int | None = None  # the batch of the task running now
        self._interrupting = False
        self.functions: OrderedDict[str, tuple] = OrderedDict()
        self.most = 1  # task records to take per request
        self.pace = 0.0  # seconds per element of the last record stopped to give back
        self.per_element = 0.0  # seconds per element of the last hand
        self.stores: set[int] = set()  # result stores whose replies have not come yet
        self.owed: list[int] = []  # acknowledgements to send with the next request
        self.out, self.err = _Capture("<stdout>"), _Capture("<stderr>")
        self.bus = MessageBus(self.connection, self._on_cancel)
        self.bus.subscribe(cancel_identifier(sleigh))
        self.cancelled.update(self.ws.findTry(CANCELLED_VAR, None) or ())
        if rank is None:
            counter = KeyValueStore(connection=self.connection, workspace=sleigh)
            taken = counter.incr(RANK_COUNTER)
            if taken is None:
                raise NwsNoWorkSpaceException(f"{sleigh!r} is not a sleigh's workspace")
            rank = taken - 1
        self.rank = rank
        self.own_var = own_task_var(rank)
        count = self.ws.findTry(WORKER_COUNT, 0) or 0
        self.worker_count = max(int(count), rank + 1)
        user = self.ws.findTry("userWs", None)
        self.user_ws = self.server.useWs(user) if user else None
        self._set_globals()

    # ------------------------------------------------------------------ start

    def _set_globals(self) -> None:
        values = self.globals()
        module = sys.modules[__name__]
        main = sys.modules.get("__main__")
        for name, value in values.items():
            setattr(module, name, value)
            setattr(builtins, name, value)
            if main is not None:
                setattr(main, name, value)

    def globals(self) -> dict[str, Any]:
        return {"SleighRank": self.rank, "SleighWorkerCount": self.worker_count,
                "SleighNws": self.ws, "SleighUserNws": self.user_ws}

    def info(self) -> dict:
        return {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(),
                "python": sys.version.split()[0], "workbench": __version__,
                "task_format": tasks.TASK_FORMAT,
                "executable": sys.executable, "platform": sys.platform}

    def announce(self) -> None:
        """Say who this worker is: in ``worker@<rank>`` for anyone to read, and to the master
        through the result variable, which counts it as ready and watches its farewell."""
        info = self.info()
        name = worker_var(self.rank)
        self.ws.declare(name, "single")
        self.ws.store(name, info)
        farewell = farewell_var(self.rank, self.connection.session_id.hex()[:12])
        self.ws.store(farewell, self.rank)
        queue = self.queue
        held = queue.receive((queue.send_fetch(farewell, 1, block=False),))
        if not held.values:
            raise RuntimeError(f"the farewell value of worker {self.rank} vanished")
        # never acknowledged: the broker returns it when this session ends, however it ends
        queue.store(RESULT, tasks.encode_entries([Hello(CONTROL, self.rank, info, farewell)]))

    def capture_output(self) -> None:
        sys.stdout, sys.stderr = self.out, self.err

    # ------------------------------------------------------------------ cancelling

    def _on_cancel(self, identifier: str, batches: Any) -> None:
        """In the delivery thread: remember the batches; interrupt the running task if it is
        one of them."""
        self.cancelled.update(batches)
        if self.running is not None and self.running in self.cancelled:
            self._interrupting = True
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._interrupting:
            self._interrupting = False
            if self.running is not None and self.running in self.cancelled:
                raise TaskInterrupted()
            return  # the task finished meanwhile: nothing to interrupt
        raise KeyboardInterrupt  # a real Ctrl-C: the worker stops

    # ------------------------------------------------------------------ the loop

    def serve(self) -> None:
        """Take tasks until the sleigh's workspace goes away. A broker with a data directory
        that goes away is waited for (``BROKER_RESTART_GRACE``): the tasks this worker held
        are back in the bag when it returns, and the worker says hello again."""
        signal.signal(signal.SIGINT, self._on_sigint)
        connection = self.connection
        while True:
            session = connection.session_id
            try:
                self._serve_session()
            except NwsConnectionDroppedException:
                if not connection.durable or not connection.await_new_session(
                        session, BROKER_RESTART_GRACE):
                    raise
            self.stores.clear()  # the requests of the old session, answered or not
            self.owed = []
            self.queue.forget_requests()
            self.announce()

    def _serve_session(self) -> None:
        """Serve in one broker session (see ``serve``)."""
        queue = self.queue
        fetch_shared = fetch_own = None
        while True:
            if fetch_shared is None:
                fetch_shared = queue.send_fetch(TASK, self.most, True, self._take_owed())
            if fetch_own is None:
                fetch_own = queue.send_fetch(self.own_var, 1, True, self._take_owed())
            request_id, hand, dealt = queue.receive((fetch_shared, fetch_own, *self.stores))
            if request_id in self.stores:
                self.stores.discard(request_id)
                continue
            if request_id == fetch_shared:
                fetch_shared, var = None, TASK
            else:
                fetch_own, var = None, self.own_var
                if fetch_shared is not None:  # a broadcast task first; shared ones wait
                    queue.cancel(fetch_shared)
                    fetch_shared = None
            self.run_hand(hand, request_id, var, dealt)

    def _take_owed(self) -> list[int]:
        owed, self.owed = self.owed, []
        return owed

    def run_hand(self, hand: list[tuple[list, int]], lease: int, var: str,
                 dealt: bool) -> None:
        """Run the records of one fetch and send their results; the last send acknowledges
        the fetch. ``dealt``: the broker shared the records stored with these among several
        idle workers, so none of them is left without work."""
        records = [self._decode(frames) for frames, _ in hand]  # (record, missing) each
        if any(returns for _, returns in hand) and must_split(
                [(record, returns) for (record, _), (_, returns) in zip(records, hand)]):
            self._requeue_split(hand, records, lease, var)
            return
        if var == TASK and 1 < len(hand) < self.most and not dealt:
            keep = self._share(hand, records, var)
            hand, records = hand[:keep], records[:keep]
        entries: list[ResultEntry] = []
        pending_items = 0
        acknowledged = False  # by the reply of the hand's last record
        started = first_pending = time.perf_counter()
        deadline = started + GIVE_BACK_SECONDS
        last = len(records) - 1
        for index, ((record, missing), (_, returns)) in enumerate(zip(records, hand)):
            entry = self._run_record(record, missing, returns, deadline)
            now = time.perf_counter()
            if entry is not None and record.reply is not None:
                # A submit whose caller waits on its own variable: the entry goes there at once
                # (with the hand's acknowledgement when nothing else is left to send).
                acknowledged = index == last and not entries
                self._flush([entry], (lease,) if acknowledged else (), record.reply)
                entry = None
            if entry is not None:
                if not entries:
                    first_pending = now
                entries.append(entry)
                pending_items += len(entry.values)
                unstarted = len(record.items) - len(entry.values)
                if unstarted or (index < last and now >= deadline):
                    rest = record._replace(tag0=record.tag0 + len(entry.values),
                                           items=record.items[len(entry.values):]) \
                        if unstarted else None
                    if self._give_back(entries, rest, hand[index + 1:], var):
                        self.owed.append(lease)  # the rest is back in the queue
                        self._adapt((now - started) / (index + 1))
                        return
                    entries, pending_items = [], 0  # sent; the rest runs here after all
                    deadline = _NEVER
                    finished = self._run_record(rest, (), 0, None) if rest else None
                    if finished is not None:
                        entries.append(finished)
                        pending_items += len(finished.values)
                        now = time.perf_counter()
            if index == last:
                break
            if entries and (pending_items >= FLUSH_ITEMS or now - first_pending >= FLUSH_SECONDS):
                self._flush(entries, ())  # early results; the lease stays until the end
                entries, pending_items = [], 0
        elapsed = time.perf_counter() - started
        if entries:
            self._flush(entries, (lease,))
        elif not acknowledged:
            self.owed.append(lease)  # nothing to lose: acknowledged with the next request
        self._adapt(elapsed / len(records))
        self.per_element = elapsed / max(1, sum(_size(record) for record, _ in records))

    def _adapt(self, per_record: float) -> None:
        """Size the next hand to hold about HAND_SECONDS of records like the last ones: at
        once, since a hand that turns out slower is given back (``_give_back``)."""
        if per_record >= HAND_SECONDS:
            self.most = 1
        else:
            self.most = max(1, min(MOST_TASKS, int(HAND_SECONDS / max(per_record, 1e-7))))

    def _share(self, hand: list[tuple[list, int]], records: list, var: str) -> int:
        """A hand that took every record queued (fewer than asked for) leaves the other
        workers nothing to do: if at the last hand's pace it runs SHARE_SECONDS or more, the
        records after the first half of its elements go back to the queue before it starts
        (``_give_back``), for an idle worker -> how many records to keep."""
        sizes = [_size(record) for record, _ in records]
        total = sum(sizes)
        if total * self.per_element < SHARE_SECONDS:
            return len(hand)
        kept = 0
        for keep, size in enumerate(sizes, 1):
            kept += size
            if 2 * kept >= total:
                break
        if keep < len(hand) and self._give_back([], None, hand[keep:], var):
            return keep
        return len(hand)

    def _give_back(self, entries: list, rest: TaskRecord | None, others: list, var: str
                   ) -> bool:
        """A hand that ran past GIVE_BACK_SECONDS (its tasks are slower than those it was sized
        on): send the results so far, and put back what has not started, for idle workers:
        the rest of the running record in pieces of shrinking size, and the other records as
        they came (none came back from a dead worker: such a hand is split before it runs).
        -> whether they went back; then the hand is done, and its lease is acknowledged with
        the next request. The store is awaited before that acknowledgement, so a store the
        broker refuses (its memory cap) leaves the hand here to run; a worker killed in
        between returns the whole hand, whose results sent so far the master drops as
        duplicates."""
        if entries:
            self._flush(entries, ())
        back = [frames for frames, _ in others]
        if rest is not None:
            back[:0] = [tasks.encode_record(rest._replace(tag0=rest.tag0 + start,
                                                          items=rest.items[start:stop]))
                        for start, stop in tasks.paced_chunks(len(rest.items), self.pace,
                                                              self.worker_count)]
        try:
            self.queue.store_all(var, back)
        except NwsMemoryException:
            return False
        return True

    def _requeue_split(self, hand: list[tuple[list, int]], records: list, lease: int, var: str
                       ) -> None:
        """Tasks that came back from a dead worker go back one element per record, with the
        death counted in each, acknowledging this fetch in the same request."""
        encoded = []
        for (record, missing), (frames, returns) in zip(records, hand):
            if record is None or missing:
                encoded.append(frames)  # cannot be split; it fails on its own later
                continue
            encoded.extend(tasks.encode_record(part) for part in split_suspects(record, returns))
        self.most = 1
        self.stores.add(self.queue.send_store_many(var, encoded, (lease,)))

    def _decode(self, frames: list) -> tuple[TaskRecord | None, Sequence[str]]:
        """-> the record (None if it cannot be read) and what it needs that this worker
        cannot import."""
        try:
            return tasks.read_record(codec.decode(frames)), ()
        except Exception:
            pass  # decoded again below, with what this worker lacks replaced
        try:
            value, missing = codec.decode_tolerant(frames)
            return tasks.read_record(value), missing
        except Exception as exc:
            print(f"workbench worker {self.rank}: a task could not be decoded and is dropped: "
                  f"{exc}", file=sys.__stderr__)
            return None, ()

    def _run_record(self, record: TaskRecord | None, missing: Sequence[str], returns: int,
                    deadline: float | None) -> ResultEntry | None:
        """One task record -> its result entry (None: its batch was cancelled), which holds
        fewer values than the record has elements if ``deadline`` passed first."""
        if record is None or record.batch in self.cancelled:
            return None
        if missing:
            problem = ImportError("the task's arguments need what this worker cannot import: "
                                  + "; ".join(missing))
            return tasks.failed_entry(record, self.rank, ErrorInfo.from_exception(problem))
        try:
            fn, fixed, permute = self._function(record.key)
        except Exception as exc:
            return tasks.failed_entry(record, self.rank,
                                      ErrorInfo.from_exception(exc, skip_frames=0))
        deaths = poisoned(record, returns) if returns or record.deaths else None
        if deaths is not None:
            args = tasks.call_args(record.arguments(0), fixed, permute) if record.items else ()
            call = f"{tasks.function_label(fn)}({_short(args)})"
            message = f"task {record.tag0} of {call} killed its worker {deaths} times"
            info = ErrorInfo(POISON, "PoisonTaskError", message, "", None)
            return tasks.failed_entry(record, self.rank, info)
        return self._run_items(record, fn, fixed, permute, deadline)

    def _run_items(self, record: TaskRecord, fn: Any, fixed: tuple, permute: list | None,
                   deadline: float | None) -> ResultEntry:
        """Run the record's elements, in spans that call ``fn`` in a loop of C (a task that
        raises ends its span; the next span starts after it, so each element keeps its own
        error). With a ``deadline`` (of the hand), look at the clock after 1, 3, 7, 15...
        elements (a slow task is seen at once), or after the first only if the rest at its
        pace ends long before the deadline (tiny tasks: one look per record), and stop at
        the first look past it if the elements left would take more than GIVE_BACK_SECONDS at
        the pace so far (kept in ``pace``, seconds per element)."""
        batch, kwargs, items = record.batch, record.kwargs, record.items
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        reshape = bool(fixed) or permute is not None
        bare = record.bare
        values: list = []
        errors: list | None = None
        out, err = self.out, self.err
        out.begin(values)
        err.begin(values)
        count = len(items)
        stop = count if deadline is None else 1
        began = time.perf_counter()
        self.running = batch
        try:
            while True:
                while len(values) < stop:
                    try:
                        span = items[len(values):stop]
                        if reshape:
                            values.extend(starmap(fn, map(
                                tasks.call_args, zip(span) if bare else span, repeat(fixed),
                                repeat(permute))))
                        elif bare:
                            values.extend(map(fn, span))
                        else:
                            values.extend(starmap(fn, span))
                    except TaskInterrupted as exc:
                        if len(values) < count:  # else it came after the last element ran
                            errors = _failed(values, errors, exc, CANCELLED)
                    except KeyboardInterrupt:
                        raise
                    except BaseException as exc:  # noqa: B902 - a task's SystemExit: its error
                        errors = _failed(values, errors, exc, ERROR)
                if stop >= count:
                    break
                now = time.perf_counter()
                pace = (now - began) / stop
                if now >= deadline:
                    self.pace = pace
                    if pace * (count - stop) >= GIVE_BACK_SECONDS:
                        break
                    deadline = _NEVER  # it ends soon enough here
                # the rest at this pace ends long before the deadline: one span, no more looks
                stop = count if pace * (count - stop) * 4 <= deadline - now \
                    else min(count, 2 * stop + 1)
        finally:
            self.running = None
        outputs = _outputs(out, err, len(values) - 1) if out.parts or err.parts else None
        return tasks.result_entry(batch, record.tag0, self.rank, values, errors, outputs)

    def _function(self, key: str) -> tuple:
        spec = self.functions.get(key)
        if spec is not None:
            self.functions.move_to_end(key)
            return spec
        try:
            spec = self.ws.findTry(FUNCTION_PREFIX + key)  # stored before any task using it
        except NwsUnpicklingException as exc:
            raise (exc.__cause__ or exc) from None  # the missing module, by its own name
        if spec is None:
            raise LookupError(f"function {key} is gone from the sleigh (its batch ended)")
        fn, fixed, permute = spec
        self._inject_globals(fn)
        spec = self.functions[key] = (fn, fixed, permute)
        if len(self.functions) > FUNCTION_CACHE:
            self.functions.popitem(last=False)
        return spec

    def _inject_globals(self, fn: Any) -> None:
        """A function that came by value has globals of its own: give it the worker's."""
        namespace = getattr(fn, "__globals__", None)
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        if namespace is not None and namespace is not getattr(module, "__dict__", None):
            namespace.update(self.globals())

    def _flush(self, entries: list, acks: tuple, var: str = RESULT) -> None:
        """Send results as one value of ``var``: through shared memory if large (and then
        waiting for the broker), else without waiting for the reply."""
        request_id = self.queue.send_store(var, tasks.encode_entries(entries), acks)
        if request_id is not None:
            self.stores.add(request_id)

    def close(self) -> None:
        self.server.close()

    def leave(self, status: int) -> None:
        """End the process now, after the broker confirmed the goodbye (replies come in
        order on a channel, so every result sent before has arrived too). A clean close would
        wait for the delivery thread's receive slice (a quarter second) for nothing."""
        try:
            self.queue.goodbye(1.0)
        except Exception:  # noqa: BLE001 - leaving anyway; the broker times the session out
            pass
        for stream in (sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)


def _short(args: tuple, width: int = 60) -> str:
    text = ", ".join(repr(arg) for arg in args)
    return text if len(text) <= width else text[:width - 3] + "..."


def _size(record: TaskRecord | None) -> int:
    """Elements in a record (none in one that could not be read)."""
    return 0 if record is None else len(record.items)


def _failed(values: list, errors: list | None, exc: BaseException, kind: str) -> list:
    """The element running (the next of ``values``) raised ``exc``: its value is None and
    its error is noted -> the errors. ``exc`` keeps the traceback from where it was caught,
    whose first frame (the worker's) ``from_exception`` leaves out."""
    errors = errors or []
    errors.append((len(values), ErrorInfo.from_exception(exc, kind)))
    values.append(None)
    return errors


def _outputs(out: _Capture, err: _Capture, last: int) -> list[tuple[int, str, str]]:
    """(index, stdout, stderr) of each element of the record that printed something."""
    printed, complained = out.take(last), err.take(last)
    return [(index, printed.get(index, ""), complained.get(index, ""))
            for index in sorted(printed.keys() | complained.keys())]


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel kill this process when the thread that started it ends (the
    master's supervisor thread, or the whole master), even by SIGKILL."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # pragma: no cover - no prctl: the workspace purge still stops us
            pass
    if os.getppid() != parent_pid:  # the master died before the line above took effect
        os._exit(0)


def _leave_when_the_broker_is_gone(connection: Connection) -> None:
    """A thread: end this process once its broker has been unreachable for two liveness
    timeouts on end, even while a task runs (its result could go nowhere). A broker that
    is only slow answers again sooner, and the connection is then no longer broken."""
    grace = 2 * connection.liveness.timeout
    if connection.durable:  # it keeps the sleigh's work: wait for it to come back
        grace += BROKER_RESTART_GRACE
    broken_since = None
    while not connection.closed:
        time.sleep(connection.liveness.interval)
        if not connection.broken:
            broken_since = None
        elif broken_since is None:
            broken_since = time.monotonic()
        elif time.monotonic() - broken_since > grace:
            print(f"workbench worker: {connection.broken}; leaving", file=sys.__stderr__)
            os._exit(0)


def _yield_to_the_broker(connection: Connection) -> None:
    """On the broker's machine, run ``WORKER_NICE`` steps nicer (the threads started after
    this, a task's own too, inherit it): a busy worker that the broker's reply wakes then waits
    for the broker to finish its pass rather than taking its core mid-send, which on two cores
    left the broker's next replies, and the other workers, waiting a millisecond."""
    setting = os.environ.get(WORKER_NICE_ENV, "")
    try:
        steps = int(setting) if setting else WORKER_NICE
    except ValueError:
        print(f"workbench worker: {WORKER_NICE_ENV}={setting!r} is not a whole number of "
              f"steps; using {WORKER_NICE}", file=sys.stderr)
        steps = WORKER_NICE
    if steps > 0 and connection.local:
        try:
            os.nice(steps)
        except OSError:  # not allowed here (a container's policy): run as started
            pass


def run(target: BrokerTarget, sleigh: str, rank: int | None = None,
        parent_pid: int | None = None, exit_process: bool = True) -> int:
    """``workbench worker``: join the sleigh and work until it ends -> exit status. With
    ``exit_process`` the process ends right there once the sleigh is over."""
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    try:
        worker = Worker(target, sleigh, rank)
    except NwsNoWorkSpaceException:
        print(f"workbench worker: no sleigh {sleigh!r} at {target.describe()} (it has ended, "
              "or the name is wrong)", file=sys.stderr)
        return 1
    _yield_to_the_broker(worker.connection)
    threading.Thread(target=_leave_when_the_broker_is_gone, args=(worker.connection,),
                     name="sleigh-broker-watch", daemon=True).start()
    try:
        if os.environ.get(REDIRECT_ENV) != "0":
            worker.capture_output()
        worker.announce()
        worker.serve()
    except (NwsNoWorkSpaceException, NwsConnectionDroppedException, KeyboardInterrupt):
        pass  # the sleigh was stopped, its master is gone, or someone pressed Ctrl-C
    except BaseException:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        worker.close()
        raise
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    if exit_process:
        worker.leave(0)
    worker.close()
    return 0
