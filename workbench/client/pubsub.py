"""Publish/subscribe and workspace events from Python, on one connection.

``MessageBus`` is what ``workbench.mq`` is built on: publish a message under a berryMQ
identifier, subscribe this process to identifier patterns, receive the messages other processes
publish (never this process's own), and use the broker's shared queues. ``Watch`` follows the
changes of a workspace (``NetWorkSpace.watch``), for dashboards.

A message travels as its identifier plus one value (``codec``-encoded; ``workbench.mq`` sends
``(args, kwargs)``). Publishing does not wait for the broker unless asked, so a publisher goes
as fast as the broker takes messages; subscribers that fall behind lose the oldest messages
beyond a bounded backlog, counted in ``MessageBus.dropped`` (see
``broker/state/deliveries.py``).
"""

from __future__ import annotations

import json
import queue
import threading
from collections import Counter
from functools import lru_cache
from typing import Any, Callable, Iterator, NamedTuple

from .. import codec
from ..protocol import HEADER, HEADER_SIZE, META, SEPARATOR, Op, Status
from ..topics import parse
from .connection import Channel, Connection
from .deliveries import EVENTS, MESSAGE

MQ_WORKSPACE = "__mq"
_MQ_WORKSPACE = MQ_WORKSPACE.encode()
_VALUE_AT = HEADER_SIZE + META.size  # where a value reply's value starts
_unpack_header = HEADER.unpack_from


def _decode_value(head: bytes, frames: list) -> Any:
    return codec.decode_at(head, _VALUE_AT, frames)


def raw_frames(head: bytes, offset: int, frames: list) -> list:
    """A message's value as its value frames, undecoded (copied: they outlive the reply)."""
    return [bytes(memoryview(head)[offset:]), *(bytes(frame) for frame in frames)]


class Taken(NamedTuple):
    """A message taken from a shared queue under lease, and what acknowledges it."""

    value: Any
    channel: Channel
    request_id: int


@lru_cache(maxsize=4096)
def _identifier(identifier: str) -> bytes:
    parse(identifier)  # refuse here what the broker would refuse unanswered
    return identifier.encode("utf-8")


@lru_cache(maxsize=4096)
def _unanswered(identifier: str) -> tuple[bytes, bytes]:
    """The arguments of an unanswered publish under ``identifier``, made once (never changed:
    a request's head is built of them, not in them)."""
    return _identifier(identifier), b"0"


def publish_frames(connection: Connection, identifier: str, frames: list,
                   wait: bool = True) -> int | None:
    """Publish a message already encoded (value frames) -> with ``wait``, how many received
    it (``MessageBus.publish``; the HTTP gateway, which never decodes what it passes on)."""
    if not wait:
        args = _unanswered(identifier)
        if len(frames) > 1:  # refused here: an unanswered publish gets no error back
            connection.check_size(frames)
        connection.channel().send(Op.MQ_PUBLISH, args, frames, connection.check_alive)
        return None
    head = connection.read(Op.MQ_PUBLISH, [_identifier(identifier), b"1"], frames,
                           spill=False)[1][0]
    return int(head[HEADER_SIZE:])


class MessageBus:
    """Messages between the processes of one broker, through one connection.

    ``on_message(identifier, value)`` is called in the connection's delivery thread for every
    message another process publishes under an identifier matching one of this bus's
    subscriptions, once per message however many of them match. ``decode(head, offset,
    frames)`` makes the value passed on of the message's frames (``codec.decode_at``; a reader
    that must not unpickle, such as the HTTP gateway, passes ``raw_frames``)."""

    def __init__(self, connection: Connection,
                 on_message: Callable[[str, Any], None] | None = None,
                 decode: Callable[[bytes, int, list], Any] = codec.decode_at) -> None:
        self._connection = connection
        self.on_message = on_message
        self._decode = decode
        self._patterns: Counter[str] = Counter()  # subscribed, and how many times
        self._follow_deliveries()
        connection.on_new_session(self._resubscribe)

    def _follow_deliveries(self) -> None:
        self._deliveries = self._connection.deliveries()
        self._deliveries.handlers[MESSAGE] = self._received

    def _resubscribe(self) -> None:
        """In a new session after the broker came back: the same subscriptions there."""
        self._follow_deliveries()
        for pattern, times in list(self._patterns.items()):
            for _ in range(times):
                self._connection.call(Op.MQ_SUBSCRIBE, [self._deliveries.channel_arg,
                                                        _identifier(pattern)])

    @property
    def dropped(self) -> int:
        """Messages the broker dropped for this process because it read them too slowly."""
        return self._deliveries.dropped

    # ------------------------------------------------------------------ publishing

    def publish(self, identifier: str, value: Any, wait: bool = False) -> int | None:
        """Send a message to every other process following ``identifier``, and into every
        shared queue it matches. With ``wait``, returns how many received it."""
        if wait:
            return publish_frames(self._connection, identifier, codec.encode(value))
        # publish_frames's unanswered path, written out: this is every message's
        frames = codec.encode(value)
        args = _unanswered(identifier)
        connection = self._connection
        if len(frames) > 1:
            connection.check_size(frames)
        connection.channel().send(Op.MQ_PUBLISH, args, frames, connection.check_alive)
        return None

    # ------------------------------------------------------------------ subscribing

    def subscribe(self, pattern: str) -> None:
        """Receive messages whose identifier matches ``pattern`` (berryMQ matching, wildcards
        on either side). Subscribing twice needs unsubscribing twice."""
        self._connection.call(Op.MQ_SUBSCRIBE, [self._deliveries.channel_arg,
                                                _identifier(pattern)])
        self._patterns[pattern] += 1

    def unsubscribe(self, pattern: str) -> None:
        self._connection.call(Op.MQ_UNSUBSCRIBE, [self._deliveries.channel_arg,
                                                  _identifier(pattern)])
        if self._patterns[pattern] > 1:
            self._patterns[pattern] -= 1
        else:
            self._patterns.pop(pattern, None)

    def sync(self, timeout: float) -> bool:
        """Wait until this process has read every message the broker sent it before now
        (every message another process's ``publish(..., wait=True)`` that returned before this
        call sent here) -> False if that took longer than ``timeout`` seconds (a handler
        blocking the delivery thread, or a backlog overflowing) or was asked from the
        delivery thread itself, which cannot wait for itself. One round trip when idle."""
        deliveries = self._deliveries
        if threading.current_thread() is deliveries:
            return False
        marker, arrived = deliveries.expect_marker()
        try:
            self._connection.call(Op.MQ_SYNC, [deliveries.channel_arg, marker])
            return arrived.wait(timeout)
        finally:
            deliveries.forget_marker(marker)

    def _received(self, head: bytes, frames: list) -> None:
        end = head.index(SEPARATOR, HEADER_SIZE + 1)
        identifier = head[HEADER_SIZE + 1:end].decode("utf-8")
        value = self._decode(head, end + 1, frames)
        if self.on_message is not None:
            self.on_message(identifier, value)

    # ------------------------------------------------------------------ shared queues

    def declare_queue(self, pattern: str) -> None:
        """Make the broker keep one queue of every message matching ``pattern`` (exactly this
        string): a FIFO variable of workspace ``__mq`` that consumers fetch from."""
        self._connection.call(Op.MQ_QUEUE, [_identifier(pattern)])

    def queue_get(self, pattern: str, timeout: float | None = None) -> Any:
        """Take the oldest message of a shared queue, waiting for one (NwsTimeoutException,
        a TimeoutError, after ``timeout`` seconds). Leased: if this process dies before it is
        acknowledged, the message goes back to the queue."""
        return self._connection.read(Op.FETCH, [_MQ_WORKSPACE, pattern.encode()], (),
                                     timeout, _decode_value, leased=True)[1]

    def queue_get_nowait(self, pattern: str, missing: Any = None) -> Any:
        status, value = self._connection.read(
            Op.FETCH_TRY, [_MQ_WORKSPACE, pattern.encode()], (), None, _decode_value,
            leased=True)
        return missing if status == Status.MISSING else value

    def queue_take(self, pattern: str, block: bool = True,
                   timeout: float | None = None) -> Taken | None:
        """Take the oldest message of a shared queue and hold it under lease until its
        ``channel.acknowledge_later(request_id)`` (or ``Connection.acknowledge``): a consumer
        that dies first gives it back to the queue. None if the queue is empty and not
        ``block``; NwsTimeoutException (a TimeoutError) after ``timeout`` seconds."""
        connection = self._connection
        status, (head, frames) = connection.read(
            Op.FETCH if block else Op.FETCH_TRY, [_MQ_WORKSPACE, _identifier(pattern)], (),
            timeout if block else None)
        if status == Status.MISSING:
            return None
        channel, request_id = connection.channel(), _unpack_header(head)[3]
        try:
            value = _decode_value(head, frames)
        except Exception:
            channel.acknowledge_later(request_id)  # undecodable: it must not come back forever
            raise
        return Taken(value, channel, request_id)

    def queue_size(self, pattern: str) -> int:
        head = self._connection.call(Op.LIST_VARS, [_MQ_WORKSPACE])
        for name, values, *_ in json.loads(head[HEADER_SIZE:]):
            if name == pattern:
                return values
        return 0


class Watch:
    """The changes of one workspace (or of all: ``"*"``), as batches of events.

    ``snapshot`` is the workspace's variables when the watch began ({ws: {var: [values,
    mode]}}); then every change arrives as an event dict: ``ws``, ``event`` (``created``,
    ``stored``, ``fetched``, ``deleted``, ``ws_created``, ``ws_purged``, ``ws_deleted``),
    ``count`` (how many such changes it stands for) and, for variables, ``var`` and ``values``
    (how many values the variable holds now).

    Nothing floods a slow reader: the broker sends one batch at a time and merges what happens
    meanwhile, and a watch read by iteration merges what arrives between two reads as well, so
    a reader always gets one batch with the latest state however long it took. With
    ``callback``, each batch is passed to it in the connection's delivery thread (merging then
    happens at the broker while the callback runs); otherwise iterate (``for batch in watch``)
    or call ``next_batch(timeout)``."""

    def __init__(self, connection: Connection, workspace: str,
                 callback: Callable[[list[dict]], None] | None = None) -> None:
        self.workspace = workspace
        self.callback = callback
        self._connection = connection
        self._pending: dict[tuple, dict] = {}  # merged events not read yet
        self._arrived = threading.Condition()
        self._closed = False
        self.snapshot: dict = self._start()
        connection.on_new_session(self._start)

    def _start(self) -> dict:
        """Ask the broker for the events (again, in a new session after it came back) ->
        the snapshot it answers with."""
        if self._closed:
            return self.snapshot
        deliveries = self._connection.deliveries()
        router = _WatchRouter.of(deliveries)
        router.add(self)
        try:
            head = self._connection.call(Op.WATCH, [deliveries.channel_arg,
                                                    self.workspace.encode("utf-8")])
        except BaseException:  # refused (--max-watches, no such name): nothing to route
            router.remove(self)
            raise
        return json.loads(head[HEADER_SIZE:])

    def _receive(self, events: list[dict]) -> None:
        if self._closed:
            return
        if self.callback is not None:
            self.callback(events)
            return
        with self._arrived:
            for event in events:
                key = (event["ws"], event["event"], event.get("var"))
                merged = self._pending.get(key)
                if merged is None:
                    self._pending[key] = dict(event)
                else:
                    merged["count"] += event["count"]
                    if "values" in event:
                        merged["values"] = event["values"]
            self._arrived.notify_all()

    def next_batch(self, timeout: float | None = None) -> list[dict]:
        """The events since the last batch read, merged; ``queue.Empty`` if none comes within
        ``timeout`` seconds."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: self._pending or self._closed, timeout):
                raise queue.Empty
            batch = list(self._pending.values())
            self._pending.clear()
            return batch

    def __iter__(self) -> Iterator[list[dict]]:
        while True:
            batch = self.next_batch()
            if not batch:  # closed
                return
            yield batch

    def close(self) -> None:
        if self._closed:
            return
        with self._arrived:
            self._closed = True
            self._arrived.notify_all()
        if self._connection.closed:
            return  # the broker forgot the watch with the session
        deliveries = self._connection.deliveries()
        _WatchRouter.of(deliveries).remove(self)
        self._connection.call(Op.UNWATCH, [deliveries.channel_arg,
                                           self.workspace.encode("utf-8")])

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _WatchRouter:
    """Splits a connection's event batches among its watches, by workspace."""

    _lock = threading.Lock()

    def __init__(self) -> None:
        self.watches: list[Watch] = []

    @classmethod
    def of(cls, deliveries) -> _WatchRouter:
        with cls._lock:
            router = getattr(deliveries, "watch_router", None)
            if router is None:
                router = deliveries.watch_router = cls()
                deliveries.handlers[EVENTS] = router.route
            return router

    def add(self, watch: Watch) -> None:
        self.watches.append(watch)

    def remove(self, watch: Watch) -> None:
        if watch in self.watches:
            self.watches.remove(watch)

    def route(self, head: bytes, frames: list) -> None:
        events = json.loads(head[HEADER_SIZE + 1:])
        for watch in list(self.watches):
            mine = (events if watch.workspace == "*"
                    else [e for e in events if e["ws"] == watch.workspace])
            if mine:
                watch._receive(mine)
