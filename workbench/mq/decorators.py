"""berryMQ's decorators and the ``Follower`` metaclass: how functions and methods come to follow
identifiers, and how calls and exceptions become messages.

Registration keeps weak references only (see ``registry``): a function stops following when
nothing else keeps it alive, a ``Follower`` instance's methods when the instance is collected.
"""

from __future__ import annotations

import functools
import traceback
from types import FunctionType, MethodType
from typing import Any, Callable, TypeVar

from ..topics import parse
from .registry import Guard, registry

F = TypeVar("F", bound=Callable[..., Any])

_FOLLOWING = "__mq_following__"  # on a function: [(identifier, guard)] from @following
_REGISTERED = "__mq_registered__"  # on a function: the entries @following_function made
_METHODS = "__mq_follower_methods__"  # on a Follower class: its tagged instance methods


def _function_of(decorated: Any) -> Any:
    return decorated.__func__ if isinstance(decorated, (classmethod, staticmethod)) else decorated


def following(identifier: str, guard_condition: Guard | None = None) -> Callable[[F], F]:
    """Make a method of a ``Follower`` class follow ``identifier``: every instance's method
    receives matching messages until the instance is collected (classmethods: from the class's
    creation, once). ``guard_condition(message)`` returning False skips the call. Decorators
    can be stacked; each registers."""
    ident = parse(identifier)

    def tag(method: F) -> F:
        function = _function_of(method)
        function.__dict__.setdefault(_FOLLOWING, []).append((ident, guard_condition))
        return method

    return tag


def following_function(identifier: str,
                       guard_condition: Guard | None = None) -> Callable[[F], F]:
    """Make a function (or a static method) follow ``identifier``, by weak reference: a
    function nothing else keeps alive, such as a lambda, silently stops receiving. Returns the
    function unchanged. Under ``@classmethod`` in a ``Follower`` class, the class is passed."""
    ident = parse(identifier)

    def register(function: F) -> F:
        if isinstance(function, classmethod):  # not callable yet: the Follower class binds it
            return following(identifier, guard_condition)(function)
        target = _function_of(function)
        entry = registry.register(ident, registry.weak(target), guard_condition)
        target.__dict__.setdefault(_REGISTERED, []).append(entry)
        return function

    return register


def regist_function(identifier: str, function: Callable,
                    guard_condition: Guard | None = None) -> None:
    """Follow ``identifier`` with ``function`` (weakly), an identifier chosen at run time."""
    registry.register(identifier, registry.weak(function), guard_condition)


def regist_method(identifier: str, method: Callable,
                  guard_condition: Guard | None = None) -> None:
    """Follow ``identifier`` with a bound method, until its instance is collected."""
    registry.register(identifier, registry.weak(method), guard_condition)


class Follower(type):
    """The metaclass of classes whose methods follow identifiers (``@following``).

    At class creation, the classmethods (and static methods) it defines with ``@following``
    are registered, once; at every instantiation, each ``@following`` instance method, its own
    or inherited, is registered as a weak bound method of the new instance."""

    def __init__(cls, name: str, bases: tuple, namespace: dict, **kwargs: Any) -> None:
        super().__init__(name, bases, namespace, **kwargs)
        resolved: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            resolved.update(vars(klass))
        setattr(cls, _METHODS, tuple(
            (value, tags) for value in resolved.values()
            if isinstance(value, FunctionType) and (tags := value.__dict__.get(_FOLLOWING))))
        for attr, value in namespace.items():
            if isinstance(value, classmethod):
                bound = getattr(cls, attr)
                function = value.__func__
                for ident, guard in getattr(function, _FOLLOWING, ()):
                    registry.register(ident, registry.weak(bound), guard)
                for entry in getattr(function, _REGISTERED, ()):
                    entry.ref = registry.weak(bound)  # called with the class, not without it
            elif isinstance(value, staticmethod):
                for ident, guard in getattr(value.__func__, _FOLLOWING, ()):
                    registry.register(ident, registry.weak(value.__func__), guard)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__call__(*args, **kwargs)
        for function, tags in getattr(cls, _METHODS):
            method = MethodType(function, instance)
            for ident, guard in tags:
                registry.register(ident, registry.weak(method), guard)
        return instance


def auto_twitter(identifier: str, entry: bool = False, exit: bool = False) -> Callable[[F], F]:
    """Send ``name:entry`` before each call and/or ``name:exit`` after it, the call's
    arguments as the message's, by berryMQ's table: neither flag or both, both messages;
    ``entry`` only, the entry message; ``exit`` only, the exit message. The identifier's own
    action is ignored, as in berryMQ. The function's result is returned. When the function
    raises, no exit message is sent (as in berryMQ: ``exit`` means it completed; use
    ``twitter_exception`` to announce failures) and the exception propagates."""
    ident = parse(identifier)
    both = entry == exit
    entry_id = ident._replace(action="entry") if both or entry else None
    exit_id = ident._replace(action="exit") if both or exit else None

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def announced(*args: Any, **kwargs: Any) -> Any:
            if entry_id is not None:
                registry.send(entry_id, args, kwargs)
            result = function(*args, **kwargs)
            if exit_id is not None:
                registry.send(exit_id, args, kwargs)
            return result

        return announced  # type: ignore[return-value]

    return decorate


def twitter_exception(identifier: str, reraise: bool = False,
                      with_traceback: bool = True) -> Callable[[F], F]:
    """When the function raises, send ``identifier`` exactly as given (no action is added),
    with the formatted traceback lines as ``args[0]`` (the exception lines only without
    ``with_traceback``) and keyword arguments ``type``, ``value`` and ``traceback``; then
    return None, or re-raise with ``reraise``. Only ``Exception``s are caught: Ctrl-C and
    ``SystemExit`` pass through. Other processes get ``traceback=None`` (a traceback cannot be
    pickled); ``args[0]`` carries its text."""
    ident = parse(identifier)

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except Exception as exc:
                kind, tb = type(exc), exc.__traceback__
                lines = (traceback.format_exception(kind, exc, tb) if with_traceback
                         else traceback.format_exception_only(kind, exc))
                registry.send(ident, (lines,), {"type": kind, "value": exc, "traceback": tb},
                              remote_kwargs={"type": kind, "value": exc, "traceback": None})
                if reraise:
                    raise
                return None

        return guarded  # type: ignore[return-value]

    return decorate
