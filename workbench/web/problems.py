"""Errors as the HTTP API answers them: the Python exception's message, its name, and the
status code that says what kind of failure it was."""

from __future__ import annotations

from starlette.responses import JSONResponse

from ..errors import (
    NwsBadRequestException, NwsConnectException, NwsDeclarationFailedException, NwsException,
    NwsLimitException, NwsMemoryException, NwsMessageTooLargeException, NwsNoWorkSpaceException,
    NwsServerException, NwsTimeoutException, NwsValueException, NwsVariableDeletedException,
)
from .calls import EmptyVariable
from .gateway import BrokerTimeout

#: The most specific class first: an exception takes the status of the first class it is.
_STATUSES = (
    (EmptyVariable, 404), (NwsNoWorkSpaceException, 404),
    (NwsDeclarationFailedException, 409), (NwsVariableDeletedException, 410),
    (NwsValueException, 400), (NwsBadRequestException, 400),
    (NwsMessageTooLargeException, 413), (NwsMemoryException, 507), (NwsLimitException, 429),
    (BrokerTimeout, 504), (NwsTimeoutException, 408), (NwsConnectException, 503),
    (NwsServerException, 502),
)


class HttpProblem(Exception):
    """A request the gateway refuses before asking the broker (bad JSON, a bad parameter)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


#: What a request whose client left is answered (no one reads it; nginx's number for it).
CLIENT_GONE = 499


class ClientGone(Exception):
    """The HTTP client left while its request waited: nothing is answered (and nothing was
    taken for it)."""


def status_of(exc: Exception) -> int:
    if isinstance(exc, HttpProblem):
        return exc.status
    if isinstance(exc, ClientGone):
        return CLIENT_GONE
    for cls, status in _STATUSES:
        if isinstance(exc, cls):
            return status
    return 500


def problem(exc: Exception, headers: dict | None = None) -> JSONResponse:
    """The JSON answer for an error: ``{"error", "exception", "status"}``."""
    status = status_of(exc)
    name = "HttpProblem" if isinstance(exc, HttpProblem) else type(exc).__name__
    message = str(exc) if isinstance(exc, (HttpProblem, NwsException)) else (
        f"the gateway failed: {name}: {exc} (its log has the traceback)")
    return JSONResponse({"error": message, "exception": name, "status": status}, status,
                        headers=headers)
