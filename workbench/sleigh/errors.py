"""What a failed task looks like in the master: ``RemoteError``, and the sleigh's own errors.

A worker cannot send an exception object as such: its class may not exist in the master, or
it may not pickle at all. So a failure travels as an ``ErrorInfo`` (plain data: kind, the
exception's type name and message, the remote traceback as text, and the exception pickled
if it would pickle), and the master turns it back into a ``RemoteError`` that carries the
original exception when it could be rebuilt. ``_render_traceback_`` makes IPython show the
remote traceback instead of the master's stack, which says nothing about what went wrong.

Shape of the tree::

    Exception
     +-- RemoteError (= SleighTaskException)  a task failed; returned by eachElem, raised by
     |    |                                    Future.result and map
     |    +-- TaskCancelledError              its batch was cancelled while it ran
     |    +-- PoisonTaskError                 it killed its worker too often to run again
     NwsException
     +-- SleighError (= SleighException)      the pool itself: start, stop, lost broker
          +-- SleighIllegalValueException     an illegal argument (also a ValueError)
          +-- SleighStoppedException          a call on a stopped sleigh
          +-- SleighNotAllowedException       a sleigh started inside a worker
          +-- the other NetWorkSpaces names (SleighNwsException, ...), never raised here
"""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple

from .. import sources
from ..errors import NwsException

#: Kinds of ErrorInfo.
ERROR, CANCELLED, POISON = "error", "cancelled", "poison"


class ErrorInfo(NamedTuple):
    """A task's failure as plain data, the way it travels from a worker to the master."""

    kind: str
    type_name: str
    message: str
    traceback: str
    exception: bytes | None  # the exception, pickled, when it pickles

    @classmethod
    def from_exception(cls, exc: BaseException, kind: str = ERROR,
                       skip_frames: int = 1) -> ErrorInfo:
        """Capture ``exc`` being handled on a worker. ``skip_frames``: the worker's own frames
        at the top of the traceback, which only say how the task was called."""
        tb = exc.__traceback__
        for _ in range(skip_frames):
            if tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
        text = sources.format_exception(exc, tb)
        try:
            payload = pickle.dumps(exc, protocol=5)
        except Exception:
            try:
                import cloudpickle

                payload = cloudpickle.dumps(exc, protocol=5)
            except Exception:
                payload = None
        return cls(kind, _qualified(type(exc)), str(exc), text, payload)


def _qualified(cls: type) -> str:
    module, name = cls.__module__, cls.__qualname__
    return name if module in ("builtins", "__main__") else f"{module}.{name}"


class RemoteError(Exception):
    """A task raised on a worker. ``exception`` is the remote exception when it could be
    rebuilt here (else None), ``remote_traceback`` the traceback text from the worker,
    ``worker`` its rank, ``tag`` the task's index in its batch."""

    def __init__(self, type_name: str, message: str, remote_traceback: str = "",
                 exception: BaseException | None = None, worker: int | None = None,
                 tag: int | None = None) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.exception = exception
        self.worker = worker
        self.tag = tag

    @classmethod
    def from_info(cls, info: ErrorInfo | tuple, worker: int | None = None,
                  tag: int | None = None) -> RemoteError:
        info = ErrorInfo(*info)
        exception = None
        if info.exception is not None:
            try:
                exception = pickle.loads(info.exception)
            except Exception:
                exception = None  # its class does not exist here: the text has to do
        kind = _KINDS.get(info.kind, RemoteError)
        return kind(info.type_name, info.message, info.traceback, exception, worker, tag)

    @property
    def where(self) -> str:
        parts = []
        if self.tag is not None:
            parts.append(f"task {self.tag}")
        if self.worker is not None:
            parts.append(f"worker {self.worker}")
        return " on ".join(parts)

    def __str__(self) -> str:
        summary = f"{self.type_name}: {self.message}" if self.message else self.type_name
        where = self.where
        text = f"{summary} ({where})" if where else summary
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip("\n")
        return text

    def __repr__(self) -> str:
        where = f", {self.where}" if self.where else ""
        return f"{type(self).__name__}({self.type_name}: {self.message!r}{where})"

    def _render_traceback_(self) -> list[str]:
        """IPython shows these lines instead of the master's traceback: the remote one."""
        from ..jupyter.tracebacks import name_cells

        where = f" ({self.where})" if self.where else ""
        lines = [f"{type(self).__name__}{where}: the task raised on its worker"]
        lines.extend(name_cells(self.remote_traceback).rstrip("\n").splitlines()
                     or [f"{self.type_name}: {self.message}"])
        return lines

    def __reduce__(self) -> tuple[Any, tuple]:
        exception = self.exception
        try:
            pickle.dumps(exception)
        except Exception:
            exception = None
        return (type(self), (self.type_name, self.message, self.remote_traceback, exception,
                             self.worker, self.tag))


#: The NetWorkSpaces name of a failed task's value in eachElem's results.
SleighTaskException = RemoteError


class TaskCancelledError(RemoteError):
    """The task's batch was cancelled (Future.cancel, Ctrl-C in the master) while it ran."""


class PoisonTaskError(RemoteError):
    """The task killed its worker so often that it is not run again."""


_KINDS = {ERROR: RemoteError, CANCELLED: TaskCancelledError, POISON: PoisonTaskError}


class SleighError(NwsException):
    """The worker pool itself failed: workers did not start, the pool was stopped, the broker
    was lost."""


# NetWorkSpaces' names for the sleigh's errors (``nws.sleigh``), so that old scripts catch what
# they caught. Its ``SleighException`` was the base of them all, ``SleighTaskException``
# included; here a failed task is a RemoteError, which is not a SleighError.
SleighException = SleighError


class SleighIllegalValueException(SleighError, ValueError):
    """An illegal argument: a launch protocol, an elementArgs, an accumulator... A ValueError
    too, as callers of the pool's own API caught before."""


class SleighStoppedException(SleighError):
    """A call on a sleigh that was stopped."""


class SleighNotAllowedException(SleighError):
    """A sleigh started where none may be: inside a sleigh worker."""


class SleighNwsException(SleighError):
    """NetWorkSpaces': an operation on the workspace failed (here: NwsException itself)."""


class SleighGatheredException(SleighError):
    """NetWorkSpaces': results already gathered (here ``wait()`` may be called again)."""


class SleighOccupiedException(SleighError):
    """NetWorkSpaces': a call while a non-blocking one runs (here calls run side by side)."""


class SleighScriptException(SleighError):
    """NetWorkSpaces': no worker script found (here workers are ``python -m workbench``)."""


class SleighJoinException(SleighError):
    """NetWorkSpaces': too late to join the worker group (here workers may join any time)."""


class SleighUnsupportedMethodException(SleighError):
    """NetWorkSpaces': an unsupported method."""

