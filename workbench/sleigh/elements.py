"""NetWorkSpaces' eachElem arguments, read as its Sleigh read them: the element argument lists
(``element_lists``), the fixed arguments (``fixed_args``), the task type and the function it
gives (``task_function``: a string task becomes an ``Expression``, ``type='define'`` a
``Definition``), and the accumulator check. Illegal values raise SleighIllegalValueException.

String tasks run on the worker in one namespace per worker process (``NAMESPACE``), which
persists from task to task as the original's did, so ``type='define'`` tasks put functions
there for later expressions.
"""

from __future__ import annotations

import builtins
from typing import Any, Callable

from .errors import SleighIllegalValueException

TASK_TYPES = ("invoke", "eval", "define")

#: The namespace of string tasks on this worker (``SleighArgs`` is set in it for each task).
NAMESPACE: dict = {"__builtins__": builtins}


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def element_lists(elementArgs: Any) -> list:
    """-> the argument lists to zip. A list whose first item is iterable (strings and tuples
    too) holds one argument list per argument; any other list is the one list of elements;
    anything that is not a list is wrapped as that one list."""
    if elementArgs is None:  # the default: no elements (the original's ``[[]]``)
        return [[]]
    if isinstance(elementArgs, list):
        if not elementArgs:
            raise SleighIllegalValueException("elementArgs is an empty list")
        if not _iterable(elementArgs[0]):
            elementArgs = [elementArgs]
    else:
        elementArgs = [elementArgs]
    for column in elementArgs:
        if not _iterable(column):
            raise SleighIllegalValueException(
                "elementArgs must be an iterable or a list of iterables")
    return elementArgs


def fixed_args(fixedArgs: Any) -> list:
    """-> the fixed arguments: a list as it is, anything else as the one fixed argument."""
    if fixedArgs is None:
        return []
    return fixedArgs if isinstance(fixedArgs, list) else [fixedArgs]


def check_accumulator(accumulator: Any) -> None:
    if accumulator is not None and not callable(accumulator) \
            and not hasattr(accumulator, "result"):
        raise SleighIllegalValueException(
            "accumulator must be callable or have a callable result attribute")


def task_function(fun: Any, type: str | None = None) -> Callable:
    """-> what the workers call for ``fun`` run as a task of ``type`` ('invoke', 'eval' or
    'define'; by default 'eval' for a string, else 'invoke'). A string is compiled here, so
    that its syntax errors show in the master."""
    if type is None:
        type = "eval" if isinstance(fun, str) else "invoke"
    if not isinstance(type, str):
        raise SleighIllegalValueException('"type" parameter must be a string')
    type = type.strip().lower()
    if type not in TASK_TYPES:
        raise SleighIllegalValueException(
            '"type" parameter must be "invoke", "eval", or "define"')
    if isinstance(fun, str):
        if type != "eval":
            raise SleighIllegalValueException('"type" parameter must be "eval" for a string')
        return Expression(fun)
    if type == "eval":
        raise SleighIllegalValueException(
            '"fun" argument must be a string if the task type is "eval"')
    if not callable(fun):
        raise SleighIllegalValueException('"fun" argument must be a function or a string')
    return Definition(fun) if type == "define" else fun


class Expression:
    """A string task: run with the task's arguments as ``SleighArgs`` in the worker's
    ``NAMESPACE``. An expression returns its value; statements return ``SleighValue`` if
    they set it, else None. Travels as its source (code objects do not pickle)."""

    def __init__(self, source: str) -> None:
        self.source = source.lstrip()
        self._compile()

    def _compile(self) -> None:
        try:
            self._code = compile(self.source, "<sleigh expression>", "eval")
            self._expression = True
        except SyntaxError:
            self._code = compile(self.source, "<sleigh expression>", "exec")
            self._expression = False

    def __getstate__(self) -> str:
        return self.source

    def __setstate__(self, source: str) -> None:
        self.source = source
        self._compile()

    def __call__(self, *args: Any) -> Any:
        namespace = NAMESPACE
        namespace["SleighArgs"] = list(args)
        namespace.pop("SleighValue", None)
        if self._expression:
            return eval(self._code, namespace)  # noqa: S307 - the string task is the code
        exec(self._code, namespace)  # noqa: S102
        return namespace.get("SleighValue")

    def __repr__(self) -> str:
        text = self.source if len(self.source) <= 40 else self.source[:37] + "..."
        return f"Expression({text!r})"


class Definition:
    """A ``type='define'`` task: puts the function into the string tasks' namespace under its
    name (a lambda as ``SleighFunction``) and returns None, as the original did."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> None:
        fn = self.fn
        name = getattr(fn, "__name__", None)
        NAMESPACE["SleighFunction" if name in (None, "<lambda>") else name] = fn

    def __repr__(self) -> str:
        return f"Definition({self.fn!r})"
