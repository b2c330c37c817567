"""The one exception tree of the workbench. The NetWorkSpaces names come from ``nws.client``.

::

    NwsException                              anything the workbench raises
    ├── NwsServerException                    talking to the broker failed
    │   ├── NwsConnectException               no broker answered at the address
    │   │   ├── NwsConnectionFileException    a connection file cannot be used (a ValueError)
    │   │   └── HostUnreachableError          no gateway answered at a host of
    │   │                                     ``workbench.shards`` (a ConnectionError)
    │   ├── NwsConnectionDroppedException     the broker stopped answering, or shut down
    │   └── NwsUnsupportedOperationException  the broker does not know the operation
    ├── NwsOperationException                 the broker refused or aborted an operation
    │   ├── NwsNoWorkSpaceException           no such workspace (never created, deleted, purged)
    │   ├── NwsDeclarationFailedException     a variable already has another mode
    │   ├── NwsVariableDeletedException       the variable was deleted under a blocked call
    │   ├── NwsIteratorInvalidException       an iterator's variable was deleted and re-created
    │   ├── NwsBadRequestException            malformed request, bad name, bad argument
    │   │   └── NwsIllegalModeException       ``declare`` of a mode that does not exist (a
    │   │                                     ValueError, as NetWorkSpaces raised)
    │   ├── NwsMemoryException                the broker's --max-memory cap would be exceeded
    │   ├── NwsMessageTooLargeException       a message above the broker's --max-message-size
    │   ├── NwsLimitException                 beyond a per-session cap of the broker: calls
    │   │                                     waiting, subscriptions or watches (--max-...)
    │   ├── NwsValueException                 a stored value does not suit the operation (also a
    │   │                                     ValueError: incr of a non-number)
    │   ├── NwsPicklingException              a value could not be serialized
    │   ├── NwsUnpicklingException            a value could not be deserialized (keeps the bytes)
    │   └── ResponseError                     a gateway answered an HTTP error status
    │                                         (``workbench.shards``: status, reason, body, message)
    ├── NwsTimeoutException                   a blocking call's ``timeout`` ran out (a TimeoutError)
    └── NwsUnsupportedMethodException         a method of the original API that cannot work here
"""

from __future__ import annotations


class NwsException(Exception):
    """Base class for all exceptions raised by the workbench."""

    def _render_traceback_(self) -> list[str]:
        """IPython's hook: show the user's frames, not the client's (``jupyter.tracebacks``)."""
        from .jupyter.tracebacks import without_library_frames

        return without_library_frames(self)


class NwsServerException(NwsException):
    """Error communicating with the broker."""


class NwsConnectException(NwsServerException):
    """Unable to connect to the broker."""


class NwsConnectionFileException(NwsConnectException, ValueError):
    """A connection file that cannot be read or does not hold what a client needs."""


class HostUnreachableError(NwsConnectException, ConnectionError):
    """A gateway of ``workbench.shards`` could not be reached (refused, reset, timed out); the
    message names the host, and the socket's own error is the cause. A ConnectionError, so
    code written for the original client's OSError still catches it."""


class NwsConnectionDroppedException(NwsServerException):
    """The broker stopped answering, or shut down, while a call was in progress."""


class NwsUnsupportedOperationException(NwsServerException):
    """The broker does not support this operation."""


class NwsOperationException(NwsException):
    """Error performing a workspace operation."""


class NwsNoWorkSpaceException(NwsOperationException):
    """No such workspace: never created, deleted, or purged when its owner left."""


class NwsDeclarationFailedException(NwsOperationException):
    """Variable declaration failed: the variable already exists with another mode."""


class NwsVariableDeletedException(NwsOperationException):
    """The variable was deleted while a call was blocked on it."""


class NwsIteratorInvalidException(NwsOperationException):
    """The iterator's variable was deleted and re-created; call ``reset()`` to start over."""


class NwsBadRequestException(NwsOperationException):
    """The broker rejected a malformed request or argument."""


class NwsIllegalModeException(NwsBadRequestException, ValueError):
    """``declare`` was given a mode other than fifo, lifo, multi and single. NetWorkSpaces
    raised ValueError here, so this is one too."""


class NwsMemoryException(NwsOperationException):
    """Storing the value would exceed the broker's memory cap (``--max-memory``)."""


class NwsMessageTooLargeException(NwsOperationException):
    """The message exceeds the broker's ``--max-message-size``."""


class NwsLimitException(NwsOperationException):
    """The session would go beyond a cap of the broker on what one session keeps open: calls
    waiting (``--max-waiting``), subscriptions (``--max-subscriptions``) or watches
    (``--max-watches``). Nothing changed; the message names the cap and its value."""


class NwsPicklingException(NwsOperationException):
    """A value could not be serialized for storing."""


class NwsUnpicklingException(NwsOperationException):
    """A value could not be deserialized. ``raw`` keeps its frames as bytes."""

    def __init__(self, message: str, raw: bytes = b"") -> None:
        super().__init__(message)
        self.raw = raw


class NwsTimeoutException(NwsException, TimeoutError):
    """A blocking call did not complete within its ``timeout``; the request was cancelled."""


class NwsUnsupportedMethodException(NwsException):
    """A method of the original API that has no meaning here."""


class NwsValueException(NwsOperationException, ValueError):
    """The stored value does not suit the operation, such as incrementing a non-number."""


class ResponseError(NwsOperationException):
    """A gateway answered with an HTTP error status (``workbench.shards``). ``status`` and
    ``reason`` are the HTTP status line's, ``body`` the raw answer, ``message`` the gateway's
    own (the ``error`` of its JSON answer, as the Python exception said it), ``exception`` the
    name of that exception (``NwsNoWorkSpaceException``) when the gateway gave one."""

    def __init__(self, status: int, reason: str, body: bytes, message: str,
                 exception: str | None = None, request: str = "") -> None:
        where = f"{request}: " if request else ""
        super().__init__(f"{where}{status} {reason}: {message}")
        self.status, self.reason, self.body = status, reason, body
        self.message, self.exception, self.request = message, exception, request

    def __reduce__(self):
        # rebuilt from the fields, not from the one-line message (a task's error is pickled)
        return type(self), (self.status, self.reason, self.body, self.message, self.exception,
                            self.request)
