"""Server-sent events: a workspace's changes (a broker watch) and pub/sub messages, for each
reader of ``/api/events``.

The hub has a session of its own, apart from the API's: the broker does not send a session
the messages it publishes itself, and messages published through the API must reach the
streams. Each stream holds one watch (its own snapshot, its own batches), and the hub
subscribes each pattern the streams ask for once, however many ask for it, and hands each
message to every stream with a matching pattern. Deliveries arrive in the connection's
delivery thread and are passed to the event loop; a reader that falls ``WEB_STREAM_BACKLOG``
items behind loses them and is told ``overflow`` (a page then reloads what it shows).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from typing import Any, AsyncIterator

from ..client.embedded import connect
from ..client.pubsub import MessageBus, Watch, raw_frames
from ..config import CONNECT_TIMEOUT, WEB_KEEPALIVE, WEB_MAX_STREAMS, WEB_STREAM_BACKLOG
from ..errors import NwsLimitException
from ..topics import Identifier, matches, parse
from . import values


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class EventStream:
    """One reader's events, queued for its response in the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, patterns: list[str],
                 backlog: int = WEB_STREAM_BACKLOG) -> None:
        self.loop = loop
        self.patterns: list[Identifier] = [parse(pattern) for pattern in patterns]
        self.subscribed: list[str] = []  # the patterns the hub subscribed for this stream
        self.backlog = backlog
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.dropped = 0  # items lost since the reader was last told
        self.watch: Watch | None = None
        self.snapshot: dict = {}

    def wants(self, identifier: Identifier) -> bool:
        return any(matches(pattern, identifier) for pattern in self.patterns)

    def put(self, item: str) -> None:
        """From any thread."""
        self.loop.call_soon_threadsafe(self._put, item)

    def _put(self, item: str) -> None:
        if self.queue.qsize() >= self.backlog:
            self.dropped += 1
            return
        self.queue.put_nowait(item)

    async def lines(self, keepalive: float = WEB_KEEPALIVE) -> AsyncIterator[str]:
        """The stream's text: the snapshot, then events as they come, keep-alive comments
        between them."""
        yield _event("snapshot", self.snapshot)
        while True:
            try:
                item = await asyncio.wait_for(self.queue.get(), keepalive)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if self.dropped:
                yield _event("overflow", {"dropped": self.dropped})
                self.dropped = 0
            yield item


class EventHub:
    """The streams of one gateway, and the session their watches and subscriptions are on."""

    def __init__(self, broker: str | None, timeout: float = CONNECT_TIMEOUT,
                 max_streams: int = WEB_MAX_STREAMS) -> None:
        self.connection = connect(broker, None, timeout)
        self.bus = MessageBus(self.connection, self._message, decode=raw_frames)
        self.max_streams = max_streams
        self._streams: set[EventStream] = set()
        self._subscribed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def open(self, loop: asyncio.AbstractEventLoop, workspace: str | None,
             patterns: list[str]) -> EventStream:
        """A new stream (blocking: call it in a thread): ``workspace``'s events ("*": every
        workspace's; None: none) and the messages matching ``patterns``. ValueError for a
        pattern that is not an identifier, NwsLimitException beyond ``max_streams``."""
        stream = EventStream(loop, patterns)
        with self._lock:
            if len(self._streams) >= self.max_streams:
                raise NwsLimitException(f"this gateway serves at most {self.max_streams} event "
                                        "streams at once: close one, or start the gateway "
                                        "with a larger --max-streams")
            self._streams.add(stream)
        try:
            if workspace is not None:
                stream.watch = Watch(self.connection, workspace,
                                     lambda batch: stream.put(_event("workspace", batch)))
                stream.snapshot = stream.watch.snapshot
            for pattern in patterns:
                self._subscribe(pattern)
                stream.subscribed.append(pattern)
        except BaseException:
            self.close(stream)
            raise
        return stream

    def _subscribe(self, pattern: str) -> None:
        with self._lock:
            first = not self._subscribed[pattern]
            self._subscribed[pattern] += 1
        if first:
            self.bus.subscribe(pattern)

    def close(self, stream: EventStream) -> None:
        """The stream's reader went away (blocking: call it in a thread)."""
        with self._lock:
            self._streams.discard(stream)
        if stream.watch is not None:
            stream.watch.close()
        for pattern in stream.subscribed:
            with self._lock:
                self._subscribed[pattern] -= 1
                last = self._subscribed[pattern] <= 0
                if last:
                    del self._subscribed[pattern]
            if last:
                self.bus.unsubscribe(pattern)

    def _message(self, identifier: str, frames: list) -> None:
        """In the delivery thread: a message for the streams whose patterns match it."""
        sender = parse(identifier)
        with self._lock:
            streams = [stream for stream in self._streams if stream.wants(sender)]
        if streams:
            item = _event("message", {"identifier": identifier, "value": values.view(frames)})
            for stream in streams:
                stream.put(item)

    @property
    def label(self) -> str:
        """This session's name among the broker's clients."""
        return self.connection.label

    def shut(self) -> None:
        self.connection.close()
