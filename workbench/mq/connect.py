"""berryMQ 0.2's inter-process functions, mapped onto the broker.

berryMQ linked processes point to point, by JSON-RPC over HTTP, in three styles. Here every
process connected to one broker already exchanges messages with every other, so the functions
keep their names, arguments, tokens, ``ttl`` and results (``"ok"``, ``"invalid token"``,
``"timeout"``) and mean:

``init_connection(addr=("localhost", 0))``
    mq in this process uses the broker at ``addr`` = ``(host, port)`` (or ``"host:port"``, or
    a broker's connection file: the path of a ``.json`` file, whose keys are used), leaving
    any other: followers are re-subscribed there. Port 0 (berryMQ's default, "any port")
    means the broker found as usual: ``WORKBENCH_BROKER``, the default address, or a private
    one. Connects at once and returns the broker's address. The functions below take
    ``addr`` alike; a connection file that cannot be used raises NwsConnectionFileException.
``interconnect(addr, ttl=1000)`` (style 01, also ``connect_interactively``)
    the same, returning a token. Every twitter of every process on the broker already reaches
    every other process, once, never echoed back: what style 01 did for a pair of peers (and,
    through relays, for more, looping on cycles of three).
``connect_oneway(addr, ttl=1000)`` (style 02)
    a token for ``send_message``. On mq's own broker (or when mq has none yet, which then
    becomes it) the token uses mq's connection; another broker gets a connection of its own,
    used only to publish.
``send_message(token, identifier, *args, **kwargs)``
    publishes to every process following ``identifier`` on the token's broker, and into its
    shared queues, without calling this process's followers (a style 02 message went to the
    server only). ``send_message(identifier, ...)`` (berryMQ 0.2's form) publishes to mq's
    broker and to every other broker a token names.
``connect_via_queue(addr, identifier, ttl=1000)`` (style 03)
    a token whose messages, those matching ``identifier``, wait in a standalone queue of its
    own (each token gets its copy, as each style 03 client had its own queue at the server),
    filled by mq's subscription on the broker; ``get(token, block=True, timeout=1000)`` and
    ``get_nowait(token)`` return them as Messages, raising ``Empty``. A broker-held shared
    queue would not do: the broker keeps one per filter string and hands each message to one
    consumer, so two tokens with the same filter would compete instead of each getting a copy.
    The queue stands for berryMQ's queue at the server: once ``send_message`` has returned,
    in any process, ``get_nowait`` has the message. From the sender's own process it is put
    in the queue before the call returns; from another, the sender's call returns once the
    broker has passed the message on (as berryMQ's call to its server did), and a
    ``get_nowait`` that finds the queue empty first reads what the broker has sent this
    process (``MessageBus.sync``: one round trip, at most ``MQ_SYNC_TIMEOUT`` seconds while
    a follower holds up the delivery thread; from a follower itself it cannot wait).

Order: every message one thread sends (``send_message`` and ``twitter`` alike, whatever their
identifiers) reaches each other process, its followers and token queues, in the order sent;
the broker has it before any later request of that thread on mq's connection, and a
``send_message`` before the call returns. ``twitter`` does not wait for the broker.
``close_connection([addr])``
    forgets the tokens of the broker at ``addr`` (or the token ``addr``); with no argument,
    every token, and mq leaves its broker (a later twitter or follower connects afresh, as
    usual, and re-subscribes).

A token unused for more than ``ttl`` seconds expires (``None`` or 0: never): using it returns
``"timeout"`` once, then ``"invalid token"``. Payloads are pickled, not JSON: tuples stay
tuples (berryMQ's JSON made every tuple, ``args`` included, a list), ``kwargs`` a dict, and
arguments must be picklable to leave the process. In the sender's own process a token queue
receives the objects themselves, as its followers do (berryMQ's went through JSON even
there).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..client.connection import Connection
from ..client.pubsub import MessageBus
from ..config import MQ_SYNC_TIMEOUT
from ..topics import parse
from .message import Message, pack
from .queues import Empty, StandaloneQueue
from .registry import registry
from .transport import broker_address, open_connection, same_broker, transport

OK, INVALID_TOKEN, TIMEOUT = "ok", "invalid token", "timeout"
_TOKEN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class NotConnectToServer(RuntimeError):
    """``get()`` without a token, and no ``connect_via_queue`` token to read."""


@dataclass(eq=False)
class _Link:
    style: str  # "interconnect", "oneway" or "queue"
    address: str  # the broker's
    ttl: float | None
    token: str = field(default_factory=lambda: str(uuid.uuid1()))
    last_used: float = field(default_factory=time.monotonic)
    queue: StandaloneQueue | None = None
    connection: Connection | None = None  # a oneway link's own, to a broker not mq's
    bus: MessageBus | None = None

    def use(self) -> bool:
        """False once it has been idle longer than its ttl."""
        now = time.monotonic()
        if self.ttl and now - self.last_used > self.ttl:
            return False
        self.last_used = now
        return True

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()
        if self.connection is not None:
            self.connection.close()


_links: dict[str, _Link] = {}
_lock = threading.Lock()


def _add(link: _Link) -> str:
    with _lock:
        _links[link.token] = link
    return link.token


def _take(token: str) -> _Link | str:
    """The link of a token, or the result that says why not (an expired one is removed)."""
    link = _links.get(token)
    if link is None:
        return INVALID_TOKEN
    if not link.use():
        _close_links([link])
        return TIMEOUT
    return link


def _close_links(links: list[_Link]) -> None:
    with _lock:
        for link in links:
            _links.pop(link.token, None)
    for link in links:
        link.close()


def init_connection(addr: tuple[str, int] | str | None = ("localhost", 0)) -> str:
    transport.use(broker_address(addr))
    return transport.connection().address


def interconnect(addr: tuple[str, int] | str, ttl: float | None = 1000) -> str:
    address = init_connection(addr)
    return _add(_Link("interconnect", address, ttl))


connect_interactively = interconnect  # its name in berryMQ 0.2's code


def connect_oneway(addr: tuple[str, int] | str, ttl: float | None = 1000) -> str:
    address = broker_address(addr)
    if address is None or (transport.current() is None and transport.address is None):
        address = init_connection(address)
    mine = transport.connection().address
    if same_broker(mine, address):
        return _add(_Link("oneway", mine, ttl))
    connection = open_connection(address)
    return _add(_Link("oneway", connection.address, ttl, connection=connection,
                      bus=MessageBus(connection)))


def connect_via_queue(addr: tuple[str, int] | str, identifier: str,
                      ttl: float | None = 1000) -> str:
    address = init_connection(addr)
    return _add(_Link("queue", address, ttl, queue=StandaloneQueue(identifier, at_server=True)))


def send_message(target: str, *args: Any, **kwargs: Any) -> str:
    """``send_message(token, identifier, *args, **kwargs)`` or berryMQ 0.2's
    ``send_message(identifier, *args, **kwargs)``: see the module docstring."""
    if target in _links or _TOKEN.fullmatch(target):
        link = _take(target)
        if isinstance(link, str):
            return link
        if not args:
            raise TypeError("send_message(token, identifier, ...) needs an identifier")
        ident, args = parse(args[0]), args[1:]
        if link.bus is not None:
            transport.publish(str(ident), pack(ident, args, kwargs, None), link.connection,
                              confirmed=True)
        else:
            registry.send(ident, args, kwargs, local=False)
        return OK
    ident = parse(target)
    registry.send(ident, args, kwargs, local=False)
    with _lock:
        others = {id(link.connection): link.connection for link in _links.values()
                  if link.bus is not None}
    for other in others.values():
        transport.publish(str(ident), pack(ident, args, kwargs, None), other, confirmed=True)
    return OK


def get(token: str | bool | None = None, block: bool | float = True,
        timeout: float | None = 1000) -> Message | str:
    """The next message of a ``connect_via_queue`` token (without one, of the first such
    token, as berryMQ 0.2's ``get(block, timeout)``); ``Empty`` if none comes in time."""
    if isinstance(token, bool):  # get(block[, timeout]), berryMQ 0.2's signature
        if not isinstance(block, bool):
            timeout = block
        token, block = None, token
    if token is None:
        with _lock:
            token = next((t for t, link in _links.items() if link.style == "queue"), None)
        if token is None:
            raise NotConnectToServer("get() reads a connect_via_queue() token; there is none")
    link = _take(token)
    if isinstance(link, str):
        return link
    if link.queue is None:
        return INVALID_TOKEN  # not a style 03 token
    if block:
        return link.queue.get(True, timeout)
    try:
        return link.queue.get(False)
    except Empty:  # what the broker already sent here may still be on its way: wait for it
        bus = transport.current()
        if bus is None or not bus.sync(MQ_SYNC_TIMEOUT):
            raise
    return link.queue.get(False)


def get_nowait(token: str | None = None) -> Message | str:
    return get(token, False)


def close_connection(addr: tuple[str, int] | str | None = None) -> str:
    if addr is None:
        _close_links(list(_links.values()))
        transport.close()
        transport.address = None
        return OK
    if isinstance(addr, str) and (addr in _links or _TOKEN.fullmatch(addr)):
        link = _links.get(addr)
        if link is None:
            return INVALID_TOKEN
        _close_links([link])
        return OK
    address = broker_address(addr)
    if address is None:
        address = transport.current() and transport.connection().address
    if address:
        _close_links([link for link in list(_links.values())
                      if same_broker(link.address, address)])
    return OK
