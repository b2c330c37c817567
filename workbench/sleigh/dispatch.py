"""The master's traffic with the broker for a sleigh's tasks: function specs stored once per
map, task records encoded and stored, results and farewells collected, cancelled batches
published to the workers. It decides nothing itself: it carries out what the ``Scheduler``
answers.

Threads: the caller's (feeds its call, stores function specs, cancels), the collector (takes
result values in bulk, files them with the scheduler, feeds the calls whose window results
made room in, and waits on every worker's farewell variable), and for ``submit`` a sender that
stores the tasks of many quick submits in one request. A caller that waits for a submit's
result before the sender took its task stores the task itself, naming its thread's reply
variable, and takes the result from there (``collect_own``): a lone round trip wakes no
thread of the master but the caller's.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections import deque
from typing import Callable, Sequence

from .. import codec
from ..client.connection import Connection
from ..client.pubsub import MessageBus
from ..client.workqueue import STORE_GROUP, WorkQueue
from ..client.workspace import NetWorkSpace
from ..config import BROKER_RESTART_GRACE
from ..errors import (
    NwsConnectionDroppedException, NwsException, NwsNoWorkSpaceException, NwsTimeoutException,
)
from ..protocol import Kind
from . import tasks
from .errors import SleighError
from .batch import Batch
from .scheduler import WAIT_SLICE, Scheduler
from .specs import SpecCache
from .tasks import (
    CONTROL, FUNCTION_PREFIX, RESULT, TASK, WATCH, Hello, ResultEntry, TaskRecord, Watch,
)
from .worker import CANCELLED_VAR, cancel_identifier

log = logging.getLogger("workbench.sleigh")

#: Result values taken per request by the collector.
COLLECT_MOST = 256


class Dispatcher:
    """Carries one sleigh's tasks to its workspace and its results to the scheduler.

    ``on_hello(hello)`` and ``on_farewell(hello)`` are the master's: a worker said hello, and
    the broker session of a worker that said hello ended."""

    def __init__(self, scheduler: Scheduler, connection: Connection, nws: NetWorkSpace,
                 on_hello: Callable[[Hello], None], on_farewell: Callable[[Hello], None]
                 ) -> None:
        self.scheduler = scheduler
        self.name = nws.currentWs()
        self.stopping = False  # the workspace is going away: losing it is no failure
        self._connection = connection
        self._nws = nws
        self._queue = WorkQueue(connection, self.name)  # blocking stores, from any thread
        self._on_hello = on_hello
        self._on_farewell = on_farewell
        self._bus: MessageBus | None = None
        self._specs = SpecCache()
        self._sender: _Sender | None = None
        self._sender_lock = threading.Lock()
        self._watched: set[str] = set()  # reply variables the collector takes from
        self._watched_lock = threading.Lock()
        self._collector = threading.Thread(target=self._collect, daemon=True,
                                           name=f"sleigh-collector-{self.name}")

    def start(self) -> None:
        self._collector.start()

    def stop(self) -> None:
        """Store no more submits; wait (bounded) for the collector to see the workspace go."""
        self.stopping = True
        if self._sender is not None:
            self._sender.stop()

    def join(self, timeout: float) -> None:
        if self._collector.is_alive():
            self._collector.join(timeout)

    # ------------------------------------------------------------------ sending

    def store_function(self, fn: Callable, fixed: Sequence = (),
                       permute: Sequence[int] | None = None) -> str:
        """Store the function spec once, under the hash of its pickle -> its key. The pickle
        of a function whose parts cannot have changed is not made again (``SpecCache``)."""
        if not callable(fn):
            raise TypeError(f"a sleigh runs callables, not {type(fn).__name__}")
        key, data = self._specs.pack(fn, fixed, permute)
        if not self.scheduler.knows_function(key):
            name = FUNCTION_PREFIX + key
            self._nws.declare(name, "single")
            self._queue.store(name, codec.from_pickle(data, Kind.CLOUDPICKLE))
            for doomed in self.scheduler.function_stored(key):
                try:
                    self._nws.deleteVar(FUNCTION_PREFIX + doomed)
                except NwsException:
                    pass
        return key

    def feed(self, batch: Batch) -> None:
        """Send the batch's records while its window has room (all, without a window)."""
        while True:
            taken = self.scheduler.take(batch, STORE_GROUP)
            if taken.records:
                self.store(taken.records)
            if not taken.full:
                return

    def feed_or_cancel(self, batch: Batch) -> None:
        """Feed from the caller's thread: if that fails, the call is given up."""
        try:
            self.feed(batch)
        except BaseException:
            self.cancel([batch])
            raise

    def store(self, pairs: list[tuple[str, TaskRecord]]) -> None:
        """Store task records, many per request (see ``WorkQueue.store_all``)."""
        for var, group in itertools.groupby(pairs, key=lambda pair: pair[0]):
            self._queue.store_all(var, [tasks.encode_record(record) for _, record in group])

    def submit(self, batch: Batch, record: TaskRecord) -> None:
        """Hand a submit's record to the sender thread, which stores what piled up in one
        request; a store that fails fails the future. A caller that waits for the result
        before the sender took the record stores it itself (``collect_own``)."""
        sender = self._sender
        if sender is None:
            with self._sender_lock:
                if self._sender is None:
                    self._sender = _Sender(self)
                    self._sender.start()
                sender = self._sender
        sender.put(batch, record)

    def collect_own(self, batch: Batch, deadline: float | None) -> None:
        """Wait in the calling thread for the result of submit ``batch``, until it is in or
        ``deadline``, if the sender has not taken its record yet: store the record here,
        naming this thread's reply variable, and file what comes there: no other thread of
        the master wakes on the result's way (the collector never hears of it). Otherwise (the
        sender took it, or this is a thread of the sleigh's own) return at once: the
        collector files the result. A thread that stops waiting before its result is in
        (a timeout, a lost broker) hands its variable to the collector (``watch``)."""
        sender = self._sender
        if sender is None or self.stopping or threading.current_thread() in (
                self._collector, sender):
            return
        record = sender.take_back(batch)
        if record is None:
            return
        reply = tasks.reply_var()
        queue = WorkQueue(self._connection, self.name)
        fetch = self._send_own(queue, batch, record._replace(reply=reply))
        future = batch.future
        try:
            while fetch is not None and not future.done():
                slice_end = time.monotonic() + WAIT_SLICE  # a Ctrl-C flag is seen within one
                try:
                    values = queue.receive((fetch,), slice_end if deadline is None
                                           else min(deadline, slice_end)).values
                except NwsTimeoutException:
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    continue
                queue.acknowledge(fetch)
                fetch = None
                for frames, _ in values:
                    for entry in self._entries(frames):
                        if entry.batch > CONTROL:
                            self._file(entry)
                if not future.done():
                    fetch = queue.send_fetch(reply, COLLECT_MOST)
        except NwsException:  # a lost broker, the workspace gone with a stop: the collector
            pass  # waits for the broker to come back, or the future fails saying why
        finally:
            self._withdraw(queue, fetch)
        if not future.done():
            self.watch(reply)

    def _send_own(self, queue: WorkQueue, batch: Batch, record: TaskRecord) -> int | None:
        """Store a submit's record, which names a reply variable, and ask for what comes
        there -> the fetch's request id; None if the task is not known to be stored (its
        future fails, saying why, as for a store of the sender's)."""
        fetch = None
        try:
            stored = queue.send_store(TASK, tasks.encode_record(record))
            fetch = queue.send_fetch(record.reply, COLLECT_MOST)
            if stored is not None:
                queue.receive((stored,))
            return fetch
        except NwsException as exc:
            self._withdraw(queue, fetch)
            self.fail([batch], exc)
            return None
        except BaseException:  # Ctrl-C: no reply may come to a fetch nobody reads
            self._withdraw(queue, fetch)
            raise

    @staticmethod
    def _withdraw(queue: WorkQueue, fetch: int | None) -> None:
        """Cancel a fetch in flight, if any: a value that raced the cancel goes back."""
        if fetch is not None:
            try:
                queue.cancel(fetch)
            except NwsException:
                pass

    def watch(self, reply: str) -> None:
        """Have the collector take what comes in reply variable ``reply`` from now on."""
        with self._watched_lock:
            if reply in self._watched:
                return
            self._watched.add(reply)
        try:  # wake the collector; a collector that starts a session takes every one anyway
            self._queue.store(RESULT, tasks.encode_entries([Watch(WATCH, reply)]))
        except NwsException:
            pass

    def end_session(self, host: str, pid: int) -> None:
        """End the broker session of a worker seen dead, so its tasks come back now."""
        try:
            self._queue.end_session(host, pid, timeout=5.0)
        except NwsException as exc:
            log.warning("sleigh %s: could not end the session of dead worker %s on %s: %s",
                        self.name, pid, host, exc)

    # ------------------------------------------------------------------ cancelling

    def cancel(self, batches: Sequence[Batch]) -> None:
        """Give up batches: the scheduler forgets them, the workers skip their queued tasks
        and interrupt the running ones, their futures are cancelled."""
        ids = self.scheduler.cancel(batches)
        for batch in batches:
            if batch.future is not None and batch.id in ids:
                batch.future.cancel()
        if not ids or self.stopping or self._connection.closed:
            return
        try:
            if self._bus is None:
                self._bus = MessageBus(self._connection)
            self._bus.publish(cancel_identifier(self.name), ids)
            self._nws.store(CANCELLED_VAR, self.scheduler.cancelled_ids())
        except NwsException as exc:
            log.warning("could not tell the workers of sleigh %s to cancel: %s", self.name, exc)

    def fail(self, batches: Sequence[Batch], error: BaseException) -> None:
        """End batches with ``error``; their futures raise it."""
        self.scheduler.fail(batches, error)
        for batch in batches:
            if batch.future is not None:
                batch.future.fail(error)

    # ------------------------------------------------------------------ collecting

    def _collect(self) -> None:
        """The collector thread: take result values in bulk and file them; wait on the
        farewell variable of every worker that said hello. A broker with a data directory
        that went away is waited for (``BROKER_RESTART_GRACE``): its results and tasks are
        still there when it is back, and the workers say hello again."""
        connection = self._connection
        while True:
            session = connection.session_id
            try:
                self._collect_session()
                return
            except NwsConnectionDroppedException as exc:
                if self.stopping:
                    return
                if not connection.durable or not connection.await_new_session(
                        session, BROKER_RESTART_GRACE):
                    self._break(f"sleigh {self.name} lost its broker at {connection.address} "
                                f"({exc}); start the broker and a new sleigh")
                    return
                log.warning("sleigh %s: its broker at %s is back; collecting again",
                            self.name, connection.address)

    def _collect_session(self) -> None:
        """Collect in one broker session (see ``_collect``)."""
        queue = WorkQueue(self._connection, self.name)  # requests in flight on this thread
        # what each fetch waits on: the result variable (None), a worker's farewell (its
        # Hello), or a reply variable given up by a thread of the caller's (its name)
        waiting: dict[int, Hello | str | None] = {queue.send_fetch(RESULT, COLLECT_MOST): None}
        with self._watched_lock:
            watched = list(self._watched)
        for reply in watched:
            waiting[queue.send_fetch(reply, COLLECT_MOST)] = reply
        try:
            while True:
                request_id, values, _ = queue.receive(waiting.keys())
                source = waiting.pop(request_id)
                queue.acknowledge(request_id)
                if isinstance(source, Hello):
                    self._farewell(source)
                    continue
                for frames, _ in values:
                    for entry in self._entries(frames):
                        if entry.batch > CONTROL:
                            self._file(entry)
                        elif entry.batch == CONTROL:
                            self._on_hello(entry)
                            waiting[queue.send_fetch(entry.farewell, 1)] = entry
                        elif entry.var not in waiting.values():  # a Watch
                            waiting[queue.send_fetch(entry.var, COLLECT_MOST)] = entry.var
                # after filing: what came meanwhile comes in one reply (and the ack with it)
                waiting[queue.send_fetch(source or RESULT, COLLECT_MOST)] = source
        except NwsConnectionDroppedException:
            raise  # _collect decides: wait for the broker, or give up
        except NwsNoWorkSpaceException as exc:
            if not self.stopping:
                self._break(f"sleigh {self.name} lost its workspace: {exc}")
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            if not self.stopping:
                log.exception("sleigh %s: the collector failed", self.name)
                self._break(f"sleigh {self.name}: the collector failed: {exc!r}")

    def _entries(self, frames: list) -> list[ResultEntry | Hello]:
        try:
            decoded = codec.decode_tolerant(frames)
        except Exception:
            log.exception("sleigh %s: a result value could not be decoded", self.name)
            return []
        if decoded.missing:
            log.warning("sleigh %s: results contain what this process cannot import: %s",
                        self.name, "; ".join(decoded.missing))
        return [tasks.read_entry(value) for value in decoded.value]

    def _file(self, entry: ResultEntry) -> None:
        if entry.outputs:
            _print_output(entry.rank, entry.outputs)
        filed = self.scheduler.file(entry)
        if filed is None:
            return
        batch = filed.batch
        if filed.resolution is not None and batch.future is not None:
            batch.future.resolve(*filed.resolution)
        if filed.feed:
            try:
                self.feed(batch)
            except NwsException as exc:
                self.fail([batch], exc)

    def _farewell(self, hello: Hello) -> None:
        self._on_farewell(hello)
        try:
            self._nws.deleteVar(hello.farewell)
        except NwsException:
            pass  # the sleigh is stopping: its workspace went first

    def _break(self, reason: str) -> None:
        batches = self.scheduler.break_down(reason)
        for batch in batches:
            if batch.future is not None:
                batch.future.fail(SleighError(reason))


class _Sender(threading.Thread):
    """Stores the tasks of ``submit`` calls: whatever piled up while the previous request was
    in flight goes in one STORE_MANY, so a loop of submits costs few round trips."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        super().__init__(name=f"sleigh-sender-{dispatcher.name}", daemon=True)
        self._dispatcher = dispatcher
        self._queue: deque[tuple[Batch, TaskRecord]] = deque()
        self._wake = threading.Condition()
        self._stopping = False

    def put(self, batch: Batch, record: TaskRecord) -> None:
        with self._wake:
            self._queue.append((batch, record))
            self._wake.notify()

    def take_back(self, batch: Batch) -> TaskRecord | None:
        """The record of ``batch``, which will not be sent here, if it is the last one put and
        not taken yet; else None."""
        with self._wake:
            if self._queue and self._queue[-1][0] is batch:
                return self._queue.pop()[1]
        return None

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(2.0)

    def run(self) -> None:
        dispatcher = self._dispatcher
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                taken = list(self._queue)
                self._queue.clear()
            live = [(batch, record) for batch, record in taken if not batch.cancelled]
            try:
                dispatcher.store([(TASK, record) for _, record in live])
            except Exception as exc:  # noqa: BLE001 - reported through the futures
                dispatcher.fail([batch for batch, _ in live], exc)


def _print_output(rank: int, outputs: list) -> None:
    """What a task printed, in the master's streams, each line labelled with its worker."""
    for _, out, err in outputs:
        for text, stream in ((out, sys.stdout), (err, sys.stderr)):
            if text:
                stream.write("".join(f"[worker {rank}] {line}\n" for line in text.splitlines()))
                stream.flush()
