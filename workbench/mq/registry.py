"""Who follows what in this process, and how a message reaches them.

Owns the follower table (followers and standalone queues, by namespace and name, as berryMQ
kept it), the patterns this process subscribes at the broker, ``twitter`` itself, the delivery
of messages arriving from other processes, and the worker pool of ``set_multiplicity``.

A message a process twitters is handed to the broker (for other processes and shared queues)
and then delivered here, synchronously in the sender's thread unless a pool is set: a
follower's exception reaches ``twitter`` and stops the remaining deliveries, as in berryMQ. A
message from another process arrives once, in the connection's delivery thread, and goes to
every matching follower and standalone queue of this process once; there nobody can receive a
follower's exception, so it is logged and kept for ``errors()`` and the next follower still
gets the message.

Order: a named message goes first to the wildcard-name followers of its namespace, then to
those of its name, each in registration order; a wildcard-name message (``"*:action"``) goes to
the followers of every name, names in the order they were first followed.

Only weak references are held: a follower that is garbage-collected stops receiving, and its
entry is purged at the next twitter, registration or arrival, which also unsubscribes a pattern
nobody here follows any more.
"""

from __future__ import annotations

import inspect
import logging
import os
import queue
import threading
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from ..config import MQ_POOL_BACKLOG
from ..topics import Identifier, matches, parse
from .message import Message, pack, unpack
from .transport import transport

log = logging.getLogger("workbench.mq")

#: Routes remembered at most (see ``Registry._route``).
ROUTES_KEPT = 4096

Guard = Callable[[Message], bool]
Ref = Callable[[], Callable[[Message], Any] | None]


@dataclass(eq=False)
class Entry:
    """One registration: a weak reference to what is called, and what it follows."""

    identifier: Identifier
    ref: Ref
    guard: Guard | None = None
    is_queue: bool = False
    # a connect_via_queue token's queue: berryMQ kept it at the server, so it receives what
    # send_message sends even from its own process, which followers there do not
    at_server: bool = False


class Registry:
    def __init__(self) -> None:
        self._lock = threading.RLock()  # the tables and counts; never held while calling out
        self._subscribing = threading.RLock()  # one reconciliation with the broker at a time
        # namespace -> name (None for *) -> entries; tuples are replaced, never changed, so
        # a delivery iterates them without a lock
        self._tables: dict[str | None, dict[str | None, tuple[Entry, ...]]] = {}
        self._counts: dict[str, int] = {}  # pattern -> entries following it
        self._subscribed: set[str] = set()  # patterns subscribed on the current bus
        self._subscribed_on = -1  # the bus generation _subscribed refers to
        self._changed = False  # a pattern came or went since the last reconciliation
        self._dead = False  # a weak reference died: purge at the next opportunity
        # identifier as received -> (parsed, the entries it reaches, in delivery order);
        # replaced by an empty dict whenever the tables change
        self._routes: dict[str | Identifier, tuple[Identifier, str, tuple[Entry, ...]]] = {}
        self.errors: deque[tuple[Message, BaseException]] = deque(maxlen=1000)
        self.pool = Pool(self._failed)
        transport.on_message = self._received
        transport.on_new_bus = self.reconcile

    # ------------------------------------------------------------------ registration

    def weak(self, target: Callable) -> Ref:
        """A weak reference to a function or a bound method (berryMQ never kept followers
        alive); the registry hears when it dies."""
        try:
            if inspect.ismethod(target):
                return weakref.WeakMethod(target, self._died)
            return weakref.ref(target, self._died)
        except TypeError:
            raise TypeError(f"{target!r} cannot follow messages: followers are held by weak "
                            "reference, which this object does not support") from None

    def _died(self, _ref: Any) -> None:
        self._dead = True  # only a flag: this may run inside any code, even under our lock

    def register(self, identifier: str | Identifier, ref: Ref, guard: Guard | None = None,
                 is_queue: bool = False, at_server: bool = False) -> Entry:
        ident = parse(identifier) if isinstance(identifier, str) else identifier
        entry = Entry(ident, ref, guard, is_queue, at_server)
        with self._lock:
            table = self._tables.setdefault(ident.namespace, {})
            table[ident.name] = table.get(ident.name, ()) + (entry,)
            self._routes = {}  # after the change: see _route
            self._count(str(ident), 1)
        self.purge()
        self.reconcile()
        return entry

    def unregister(self, entry: Entry) -> None:
        ident = entry.identifier
        with self._lock:
            table = self._tables.get(ident.namespace, {})
            entries = table.get(ident.name, ())
            if entry not in entries:
                return
            self._store(ident.namespace, ident.name, tuple(e for e in entries if e is not entry))
            self._count(str(ident), -1)
        self.reconcile(connect=False)

    def _store(self, namespace: str | None, name: str | None, entries: tuple) -> None:
        table = self._tables[namespace]
        if entries:
            table[name] = entries
        else:
            del table[name]
            if not table:
                del self._tables[namespace]
        self._routes = {}  # after the change: see _route

    def _count(self, pattern: str, delta: int) -> None:
        count = self._counts.get(pattern, 0) + delta
        if count > 0:
            self._counts[pattern] = count
        else:
            self._counts.pop(pattern, None)
        if count == 0 or count == delta:  # the pattern went or came
            self._changed = True

    def purge(self) -> None:
        """Drop the entries whose follower was collected (berryMQ skipped them forever)."""
        if not self._dead:
            return
        self._dead = False
        with self._lock:
            for namespace, table in list(self._tables.items()):
                for name, entries in list(table.items()):
                    alive = tuple(e for e in entries if e.ref() is not None)
                    if len(alive) == len(entries):
                        continue
                    for entry in set(entries).difference(alive):
                        self._count(str(entry.identifier), -1)
                    self._store(namespace, name, alive)
        self.reconcile(connect=False)

    def reconcile(self, connect: bool = True) -> None:
        """Make the broker's subscriptions of this process the patterns followed here. Without
        ``connect``, nothing happens while there is no bus (a new one subscribes anew)."""
        if not self._changed and self._subscribed_on == transport.generation \
                and transport.current() is not None:
            return
        if not connect and transport.current() is None:
            return
        with self._subscribing:
            bus = transport.bus()  # a new bus calls back here first (hence the RLock)
            if self._subscribed_on != transport.generation:
                self._subscribed, self._subscribed_on = set(), transport.generation
            with self._lock:
                wanted = set(self._counts)
                self._changed = False
            try:
                for pattern in sorted(wanted - self._subscribed):
                    bus.subscribe(pattern)
                    self._subscribed.add(pattern)
                for pattern in sorted(self._subscribed - wanted):
                    bus.unsubscribe(pattern)
                    self._subscribed.discard(pattern)
            except BaseException:
                self._changed = True  # the next registration or purge tries again
                raise

    def patterns(self) -> set[str]:
        """The patterns followed in this process (what it subscribes at the broker)."""
        with self._lock:
            return set(self._counts)

    # ------------------------------------------------------------------ sending

    def send(self, ident: Identifier, args: tuple, kwargs: dict, callback: str | None = None,
             remote_kwargs: dict | None = None, local: bool = True) -> None:
        """Hand a message to the broker, then to this process's followers; not ``local``
        (``send_message``), only to the queues of its ``connect_via_queue`` tokens, and only
        once the broker has passed it on, as berryMQ's call to its server returned then.
        ``remote_kwargs`` replace what other processes cannot receive."""
        if self._dead:
            self.purge()
        ident, text, entries = self._route(ident)
        transport.publish(text, pack(text, args, kwargs if remote_kwargs is None
                                     else remote_kwargs, callback), confirmed=not local)
        if not local:
            entries = tuple(entry for entry in entries if entry.at_server)
        if entries:
            self._dispatch(entries, Message(ident, args, kwargs, callback))

    def twitter(self, identifier: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a message: to this process's followers and standalone queues (synchronously,
        unless ``set_multiplicity``), and through the broker to every other process's and
        into every shared queue it matches. Other processes receive the arguments pickled;
        this one receives the objects themselves.

        ``mq.twitter`` is this method itself, the path of nearly every message: ``send`` with
        the route looked up by the identifier as given (parsed when first seen)."""
        if self._dead:
            self.purge()
        route = self._routes.get(identifier) if type(identifier) is str else None
        if route is None:  # not seen since the tables changed (or not a plain str)
            parse(identifier)  # what is not an identifier raises here, as it always does
            route = self._route(identifier)
        ident, text, entries = route
        transport.publish(text, pack(text, args, kwargs, None))
        if entries:
            self._dispatch(entries, Message(ident, args, kwargs))

    def _route(self, key: str | Identifier) -> tuple[Identifier, str, tuple[Entry, ...]]:
        """A message's identifier (as received, or parsed) -> the identifier parsed, as text,
        and the entries the message reaches, in delivery order; remembered until the tables
        change.
        The table of routes is taken before the tables are read and a change replaces it after
        changing them, so a route computed across a change is never kept."""
        routes = self._routes
        route = routes.get(key)
        if route is None:
            ident = parse(key) if isinstance(key, str) else key
            route = ident, str(ident), self._reached(ident)
            if len(routes) >= ROUTES_KEPT:  # identifiers made up per message (job ids):
                routes.clear()  # start afresh rather than grow
            routes[key] = route
        return route

    def _reached(self, ident: Identifier) -> tuple[Entry, ...]:
        table = self._tables.get(ident.namespace)
        if not table:
            return ()
        groups = (list(table.values()) if ident.name is None
                  else (table.get(None, ()), table.get(ident.name, ())))
        return tuple(entry for entries in groups for entry in entries
                     if matches(entry.identifier, ident))

    def _dispatch(self, entries: tuple[Entry, ...], message: Message) -> None:
        """Deliver a message of this process's own to its followers and standalone queues."""
        pool = self.pool if self.pool.active else None
        for entry in entries:
            target = entry.ref()
            if target is None:
                self._dead = True
            elif entry.guard is None or entry.guard(message):
                if pool is None or entry.is_queue:
                    target(message)
                else:
                    pool.submit(target, message)

    def _received(self, identifier: str, value: Any) -> None:
        """A message from another process (in the delivery thread): the path every remote
        message takes, hence the routes remembered and the few calls."""
        if self._dead:
            try:
                self.purge()
            except Exception:
                log.exception("mq: unsubscribing collected followers failed")
        route = self._routes.get(identifier)
        ident, text, entries = route if route is not None else self._route(identifier)
        message = unpack(value, ident, text)
        pool = self.pool if self.pool.active else None
        for entry in entries:
            target = entry.ref()
            if target is None:
                self._dead = True
                continue
            try:
                if entry.guard is not None and not entry.guard(message):
                    continue
                if pool is None or entry.is_queue:
                    target(message)
                else:
                    pool.submit(target, message, wait=True)  # a full pool slows this thread
            except Exception as exc:
                self._failed(message, exc)

    def _failed(self, message: Message, exc: BaseException) -> None:
        self.errors.append((message, exc))
        log.error("mq: a follower of %s failed", message.identifier, exc_info=exc)

    def after_fork(self) -> None:
        self._lock = threading.RLock()
        self._subscribing = threading.RLock()
        self._subscribed, self._subscribed_on = set(), -1
        self.pool.after_fork()


class Pool:
    """``set_multiplicity``'s worker threads: each (follower, message) pair is a work item.

    A message from another process waits while ``BACKLOG`` items are pending, so that a slow
    pool slows the delivery thread and the broker's bounded, counted backlog takes over; a
    local ``twitter`` never waits, as in berryMQ."""

    BACKLOG = MQ_POOL_BACKLOG
    _STOP = None

    def __init__(self, failed: Callable[[Message, BaseException], None]) -> None:
        self._failed = failed
        self._lock = threading.Lock()
        self._size = 0  # workers wanted
        self.active = False  # whether there are: read per message, hence not a property
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._room = threading.Condition()
        self._pending = 0
        self._running = 0  # workers started and not told to stop

    @property
    def size(self) -> int:
        return self._size

    def resize(self, number: int) -> None:
        if number < 0:
            raise ValueError(f"set_multiplicity({number}): the number of threads cannot be "
                             "negative (0 delivers synchronously)")
        with self._lock:
            self._size, self.active = number, number > 0
            self._adjust()

    def _adjust(self) -> None:
        if self._pid != os.getpid():  # a forked child: the workers stayed in the parent
            self._reset()
        while self._running < self._size:
            thread = threading.Thread(target=self._run, name="workbench-mq-worker", daemon=True)
            thread.start()
            self._running += 1
        while self._running > self._size:
            self._work.put(self._STOP)  # a worker finishes the items before it, then stops
            self._running -= 1

    def after_fork(self) -> None:
        """The workers stayed in the parent: the next submit starts this process's own."""
        self._lock = threading.Lock()
        self._pid = -1

    def submit(self, function: Callable[[Message], Any], message: Message,
               wait: bool = False) -> None:
        if self._pid != os.getpid():
            with self._lock:
                self._adjust()
        with self._room:
            if wait:
                self._room.wait_for(lambda: self._pending < self.BACKLOG)
            self._pending += 1
        self._work.put((function, message))

    def _run(self) -> None:
        while (item := self._work.get()) is not self._STOP:
            function, message = item
            try:
                function(message)
            except Exception as exc:
                self._failed(message, exc)
            finally:
                with self._room:
                    self._pending -= 1
                    if self._pending == self.BACKLOG - 1:
                        self._room.notify_all()
            del item, function, message  # no reference left here keeps a follower alive


registry = Registry()


def _after_fork_in_child() -> None:
    registry.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------- the functions


twitter = registry.twitter  # no function around it: one call less per message


def talk(identifier: str, callback_identifier: str, *args: Any, **kwargs: Any) -> None:
    """Send a message like ``twitter`` whose receivers answer on ``callback_identifier``
    (``message.reply(...)``). berryMQ documented this and never implemented it."""
    parse(callback_identifier)
    registry.send(parse(identifier), args, kwargs, callback=callback_identifier)


def set_multiplicity(number: int) -> None:
    """``n > 0``: followers are called by a pool of ``n`` daemon threads and ``twitter``
    returns at once (standalone queues are still filled at once, in order); ``0``: back to
    synchronous delivery; ``n < 0``: ValueError. Follower errors in the pool are logged and
    kept for ``errors()``."""
    registry.pool.resize(int(number))


def errors() -> list[tuple[Message, BaseException]]:
    """The (message, exception) pairs of followers that failed where no sender could hear it
    (in the pool, or for messages from other processes), oldest first; clears them."""
    taken = []
    while registry.errors:
        taken.append(registry.errors.popleft())
    return taken
