"""berryMQ, re-created on the workbench broker: ``from workbench import mq``.

berryMQ (shibukawa/berrymq 0.3) is a message-passing library for one process, linked to others
by JSON-RPC. Here it is whole, and a ``twitter`` in one process reaches the followers and
queues of every process connected to the same broker::

    from workbench import mq

    @mq.following_function("sensor:*")
    def log(message):
        print(message.id, message.args)

    mq.twitter("sensor:reading", 21.5)    # `log` here, and followers in every other process

Where each part lives: ``message`` (Message), ``registry`` (followers, twitter, delivery,
set_multiplicity), ``decorators`` (following, Follower, auto_twitter, twitter_exception),
``queues`` (Queue), ``connect`` (berryMQ 0.2's inter-process functions, mapped onto the
broker), ``transport`` (this process's connection), ``adapter`` (IntervalTimer, FileObserver).

Identifiers and matching are berryMQ's (``workbench.topics``, shared with the broker):
``name[@namespace][:action]``, ``*`` on either side, namespaces isolated, guards after a match.
In this process followers are called as berryMQ calls them: synchronously in the sender's
thread, a follower's exception propagating to ``twitter`` and stopping the remaining deliveries,
wildcard-name followers first, then exact-name ones, in registration order.

Where this differs from berryMQ, and why:

- **Between processes, through the broker.** Each process keeps one connection, made on the
  first follower, queue or twitter, subscribes the patterns its followers and standalone
  queues use (and unsubscribes those nobody follows any more), and receives each matching
  message of other processes once, never its own back. Those messages are delivered in the
  connection's delivery thread (or the pool); a follower's exception there is logged and kept
  for ``errors()``. Arguments crossing processes are pickled (cloudpickle as a fallback), so
  they must be picklable, and keep their types (``args`` a tuple, ``kwargs`` a dict, tuples
  inside stay tuples: berryMQ's JSON made them lists); in-process followers get the objects
  themselves. A message whose arguments cannot be pickled reaches this process only (counted
  by ``unpublished()``). Everything one thread sends reaches each other process in order.
- **connect_via_queue** queues live in their own process (berryMQ's were at the server):
  ``send_message`` there fills them before it returns; from another process a message
  arrives with the broker's delivery, which ``get(token, timeout=...)`` waits for and a
  ``get_nowait`` may precede (see ``connect``).
- **Slow followers are bounded.** The broker keeps at most a bounded backlog for a process
  that reads slowly and drops the oldest beyond it: ``dropped()`` counts them. A standalone
  queue likewise holds at most 10,000 messages, dropping the oldest (``queue.dropped``).
- **Queues**: a shared queue lives at the broker (one per exact identifier string, each
  message to one consumer in any process, leased so that a consumer that dies gives its
  message back); standalone queues are FIFO with a deque (berryMQ's heap compared Messages),
  and are released when collected (berryMQ kept them forever).
- **Fixed bugs**: ``set_multiplicity(0)`` returns to synchronous delivery;
  ``twitter_exception`` works (berryMQ's raised NameError) and catches ``Exception`` only;
  ``auto_twitter`` returns the function's result; ``IntervalTimer`` starts; followers that
  were collected are purged, not skipped forever.
- **Weak references**: a ``Follower`` class registers the classmethods it defines once; a
  subclass does not register its inherited ones again. ``@classmethod`` over
  ``@following_function`` in a ``Follower`` class is called with the class.
- **Additions**: ``Message.namespace``, ``Message.identifier``; ``talk`` (documented, never
  implemented in berryMQ) with ``Message.reply``; ``Queue.task_done`` and ``Queue.close``;
  ``dropped``, ``unpublished``, ``errors``.
- ``Message.id`` leaves the namespace out, as berryMQ's did; ``name`` starting with ``_`` is
  not local (berryMQ documented it and did not enforce it either).
"""

from __future__ import annotations

from .connect import (
    NotConnectToServer, close_connection, connect_interactively, connect_oneway,
    connect_via_queue, get, get_nowait, init_connection, interconnect, send_message,
)
from .decorators import (
    Follower, auto_twitter, following, following_function, regist_function, regist_method,
    twitter_exception,
)
from .message import Message
from .queues import Empty, Queue
from .registry import errors, set_multiplicity, talk, twitter
from .transport import transport as _transport


def dropped() -> int:
    """Messages of other processes the broker dropped for this one because it read them too
    slowly (``MessageBus.dropped``; 0 before mq has connected)."""
    bus = _transport.current()
    return bus.dropped if bus is not None else 0


def unpublished() -> int:
    """Twitters whose arguments could not be pickled, so only this process received them."""
    return _transport.unpublished


__all__ = [
    "Empty",
    "Follower",
    "Message",
    "NotConnectToServer",
    "Queue",
    "auto_twitter",
    "close_connection",
    "connect_interactively",
    "connect_oneway",
    "connect_via_queue",
    "dropped",
    "errors",
    "following",
    "following_function",
    "get",
    "get_nowait",
    "init_connection",
    "interconnect",
    "regist_function",
    "regist_method",
    "send_message",
    "set_multiplicity",
    "talk",
    "twitter",
    "twitter_exception",
    "unpublished",
]
