"""berryMQ's ``Message``, and the form a message takes between processes.

A message crosses the broker as one codec value, ``(args, kwargs, identifier, callback)``.
The identifier rides in the value because a shared queue at the broker stores only the value:
without it, a message taken from ``Queue("task:*", shared=True)`` could not say which
``task:<action>`` it was sent as. ``callback`` is ``talk``'s reply identifier, or None.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

from .. import codec
from ..config import OUT_OF_BAND_THRESHOLD
from ..topics import WILDCARD, Identifier, parse

_dumps = pickle.dumps
#: A small pickle's frame is this descriptor, then the pickle (``codec``'s layout).
_PICKLED = codec.from_pickle(b"")[0]


class Message:
    """What a follower receives and a ``Queue`` returns; made by berryMQ, not by users.

    ``name`` is the sender's name (None for ``*``), ``action`` a one-element set (None for
    ``*``), ``id`` the string ``"name:action"``, ``args`` a tuple and ``kwargs`` a dict, whose
    items are also attributes of the message (``message.user``). The attributes above are
    read-only properties, so a keyword argument named like one of them is reachable only
    through ``kwargs``."""

    # Slots are data descriptors: the keyword arguments copied into ``__dict__`` cannot shadow
    # these, whatever their names.
    __slots__ = ("_identifier", "_args", "_kwargs", "_callback", "__dict__", "__weakref__")

    def __init__(self, identifier: Identifier | str, args: tuple = (),
                 kwargs: dict | None = None, callback: str | None = None) -> None:
        self._identifier = parse(identifier) if isinstance(identifier, str) else identifier
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self._callback = callback
        self.__dict__.update(self._kwargs)

    @property
    def name(self) -> str | None:
        return self._identifier.name

    @property
    def action(self) -> set[str] | None:
        """A set, as in berryMQ (whose actions were matched by set intersection)."""
        action = self._identifier.action
        return None if action is None else {action}

    @property
    def namespace(self) -> str | None:
        """Not in berryMQ's Message; ``id`` leaves the namespace out, as berryMQ's did."""
        return self._identifier.namespace

    @property
    def id(self) -> str:
        identifier = self._identifier
        return f"{identifier.name or WILDCARD}:{identifier.action or WILDCARD}"

    @property
    def identifier(self) -> Identifier:
        """The parsed identifier the message was sent as, namespace included."""
        return self._identifier

    @property
    def args(self) -> tuple:
        return self._args

    @property
    def kwargs(self) -> dict:
        return self._kwargs

    @property
    def callback(self) -> str | None:
        """The identifier ``talk`` asked receivers to answer on, or None."""
        return self._callback

    def apply(self, function: Callable[..., Any]) -> Any:
        """``function(**kwargs)``: hand a message on to a function with matching parameters."""
        return function(**self._kwargs)

    def reply(self, *args: Any, **kwargs: Any) -> None:
        """Answer a ``talk``: twitter the callback identifier with these arguments."""
        if self._callback is None:
            raise ValueError(f"message {self.id!r} was not sent by talk(): nothing to reply to")
        from .registry import twitter

        twitter(self._callback, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<Message {self._identifier} args={self._args!r} kwargs={self._kwargs!r}>"


def pack(identifier: Identifier | str, args: tuple, kwargs: dict, callback: str | None
         ) -> tuple:
    """The value a message travels as between processes."""
    return (args, kwargs, str(identifier), callback)


class _OutOfBand(Exception):
    """A message holds a buffer that ``codec`` sends in a frame of its own (an array)."""


def _out_of_band(buffer: pickle.PickleBuffer) -> None:
    raise _OutOfBand


def encode(packed: tuple) -> list:
    """A packed message -> its value frames, the very frames ``codec.encode`` makes, by the
    shortest path for the common message: one pickle call (no callback made per message)
    behind the descriptor made once. A message holding a buffer that codec sends out of
    band, or an object plain pickle refuses, goes through ``codec.encode``, which decides
    (cloudpickle, or NwsPicklingException); a large pickle through ``codec.from_pickle``."""
    try:
        data = _dumps(packed, 5, buffer_callback=_out_of_band)
    except Exception:  # pickling it again raises what it must, if anything
        return codec.encode(packed)
    if len(data) < OUT_OF_BAND_THRESHOLD:
        return [_PICKLED + data]
    return codec.from_pickle(data)


def unpack(value: Any, sent_as: Identifier, sent_as_text: str | None = None) -> Message:
    """A received value -> Message. ``sent_as`` (``sent_as_text`` as text, if given: the
    identifier a value carries is parsed only if it differs) stands in for an identifier the
    value lacks: a plain ``MessageBus`` publisher's
    ``(args, kwargs)``, or any other single value."""
    if type(value) is tuple and 2 <= len(value) <= 4 and type(value[0]) is tuple \
            and type(value[1]) is dict:
        identifier = sent_as
        if len(value) > 2:
            text = value[2]
            if text != sent_as_text and type(text) is str:
                identifier = parse(text)
        return _received(identifier, value[0], value[1], value[3] if len(value) > 3 else None)
    return _received(sent_as, (value,), {}, None)


def _received(identifier: Identifier, args: tuple, kwargs: dict, callback: str | None
              ) -> Message:
    """A Message of freshly unpickled parts, which need no copying or checking."""
    message = _new_message(Message)
    message._identifier, message._args, message._kwargs = identifier, args, kwargs
    message._callback = callback
    if kwargs:
        message.__dict__.update(kwargs)
    return message


_new_message = object.__new__
