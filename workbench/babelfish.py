"""The babelfish (NetWorkSpaces' name): a trusted client that turns pickled values into readable
text for the web view, and ``ask``, the other side, for a process that must never unpickle.

**Who unpickles.** The gateway (``workbench web``) reads values off the broker as frames and never
unpickles one: unpickling runs code chosen by whoever stored the value. A babelfish is a process
that its user starts on purpose, trusting every client that can store (``docs/security.md``); it
unpickles values on request and answers a short repr, the type, and for numpy arrays and pandas
frames their shape, dtype and first rows, as JSON text.

**The exchange**, through the broker like any other client's::

    asker                                         babelfish (owns workspace __babelfish)
    store requests <- Request(reply_var, frames, timeout)
                                                  fetch requests, translate the frames
    fetch reply_var (timeout) <------------------ store reply_var <- JSON text
    deleteVar reply_var

The workspace ``__babelfish`` is owned by the babelfish's session, so it exists exactly while a
babelfish runs: with none, the asker's store fails at once (``NwsNoWorkSpaceException``) and
``ask`` answers None. An answer is text, read raw: the asker never unpickles anything, whoever
stored into the reply variable. A reply that comes after the asker gave up would be left behind:
the babelfish does not store one it finished later than the asker's timeout after taking the
request, and deletes every reply variable once that timeout (plus a grace) has passed.
"""

from __future__ import annotations

import heapq
import io
import json
import logging
import math
import reprlib
import signal
import sys
import time
import uuid
from typing import Any, NamedTuple, Sequence

from . import codec, shm
from .client.connection import Connection
from .client.workspace import NetWorkSpace, NwsServer
from .config import (
    BABELFISH_HEAD_CHARS, BABELFISH_HEAD_ROWS, BABELFISH_MAX_VALUE, BABELFISH_POLL,
    BABELFISH_REPLY_GRACE, BABELFISH_REPR_CHARS, BABELFISH_REQUESTS, BABELFISH_TIMEOUT,
    BABELFISH_WS,
)
from .errors import (
    NwsNoWorkSpaceException, NwsOperationException, NwsServerException, NwsTimeoutException,
    NwsUnpicklingException,
)
from .protocol import parse_descriptor

log = logging.getLogger("workbench.babelfish")

__all__ = ["Babelfish", "Request", "ask", "translate"]


class Request(NamedTuple):
    """What an asker stores into ``__babelfish``/``requests``: the variable to answer into, a
    value's frames as read off the broker (``workbench.codec``'s, undecoded), and how many seconds
    the asker waits for the answer."""

    reply_var: str
    frames: list[bytes]
    timeout: float = BABELFISH_TIMEOUT


# ---------------------------------------------------------------------------- the asking side

def ask(connection_or_server: Connection | NwsServer, frames: Sequence,
        timeout: float = BABELFISH_TIMEOUT) -> dict | None:
    """Have the babelfish translate a value -> ``{"repr", "type"[, "shape", "dtype", "head"]}``
    or ``{"error": "..."}`` if the value cannot be unpickled; None when no babelfish runs (at
    once), when none answered within ``timeout`` seconds, or when the value is larger than
    ``BABELFISH_MAX_VALUE`` bytes.

    ``frames``: a value's frames as read off the broker, undecoded (bytes or memoryviews; a
    shared-memory reference is read here, so the babelfish need not map the file). Nothing is
    unpickled in this process: the answer is JSON text read raw. Blocking: async code calls it
    in a worker thread. Errors of the connection itself (the broker went away) propagate."""
    server = (connection_or_server if isinstance(connection_or_server, NwsServer)
              else NwsServer(connection=connection_or_server))
    try:
        frames = shm.unshared(frames)
    except (OSError, ValueError):  # the file went with its value meanwhile
        return None
    if sum(map(len, frames)) > BABELFISH_MAX_VALUE:
        return None
    reply_var = f"reply-{uuid.uuid4().hex}"
    try:
        ws = NetWorkSpace(BABELFISH_WS, server=server, useUse=True, create=False)
    except NwsNoWorkSpaceException:
        return None  # no babelfish runs
    answer = io.BytesIO()
    try:
        ws.store(BABELFISH_REQUESTS, Request(reply_var, frames, timeout))
        ws.fetchFile(reply_var, answer, timeout=timeout)
    except (NwsTimeoutException, NwsOperationException):
        return None  # no answer in time; the babelfish stopped; the broker refused the request
    finally:
        try:
            ws.deleteVar(reply_var)
        except NwsOperationException:
            pass  # the workspace went with its babelfish: nothing is left to delete
    try:
        reply = json.loads(answer.getvalue())
    except ValueError:  # not the babelfish's JSON: someone else stored into the reply variable
        return None
    return reply if isinstance(reply, dict) else None


# ---------------------------------------------------------------------------- translation

def _short_repr() -> reprlib.Repr:
    shortener = reprlib.Repr()
    shortener.maxlevel = 3
    shortener.maxdict = shortener.maxlist = shortener.maxtuple = 8
    shortener.maxset = shortener.maxfrozenset = shortener.maxdeque = 8
    shortener.maxstring = shortener.maxlong = 80
    shortener.maxother = BABELFISH_REPR_CHARS
    return shortener


_REPR = _short_repr()


def _bounded(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most - 3] + "..."


def translate(frames: Sequence) -> dict:
    """A value's frames -> what the web view shows of it (the answer ``ask`` returns). This
    unpickles: it runs whatever code the value's pickle names."""
    if len(frames) > 1 and parse_descriptor(frames[0])[1] & shm.SHARED:
        # a file another user's process may have written: ask() sends the bytes instead
        return {"error": "a shared-memory reference: send the value's bytes"}
    try:
        value = codec.decode(frames)
    except NwsUnpicklingException as exc:
        return {"error": str(exc)}
    cls = type(value)
    # named as the gateway names types it reads off a pickle: builtins without their module
    name = (cls.__qualname__ if cls.__module__ == "builtins"
            else f"{cls.__module__}.{cls.__qualname__}")
    answer: dict[str, Any] = {"repr": _repr(value), "type": name}
    package = cls.__module__.partition(".")[0]
    # Their modules are loaded already if the value is theirs: nothing is imported here.
    if package == "numpy":
        answer.update(_array(value, sys.modules["numpy"]))
    elif package == "pandas":
        answer.update(_frame(value, sys.modules["pandas"]))
    return answer


def _repr(value: Any) -> str:
    try:
        return _bounded(_REPR.repr(value), BABELFISH_REPR_CHARS)
    except Exception as exc:  # noqa: BLE001 - a value's own __repr__ may raise anything
        return f"<{type(value).__qualname__}: repr failed: {type(exc).__name__}: {exc}>"


def _array(value: Any, numpy: Any) -> dict:
    if not isinstance(value, numpy.ndarray):
        return {}  # a numpy scalar, a dtype: the repr says it all
    first = value[:BABELFISH_HEAD_ROWS] if value.ndim else value
    with numpy.printoptions(threshold=200, edgeitems=3, linewidth=100):
        head = str(first)
    return {"shape": list(value.shape), "dtype": str(value.dtype),
            "head": _bounded(head, BABELFISH_HEAD_CHARS)}


def _frame(value: Any, pandas: Any) -> dict:
    first = value.head(BABELFISH_HEAD_ROWS) if hasattr(value, "head") else None
    if isinstance(value, pandas.DataFrame):
        dtypes = {str(dtype) for dtype in value.dtypes}
        dtype = (dtypes.pop() if len(dtypes) == 1 else
                 ", ".join(f"{column}: {dtype}" for column, dtype in value.dtypes.items()))
        head = first.to_string(max_cols=20, max_colwidth=40)
    elif isinstance(value, pandas.Series):
        dtype, head = str(value.dtype), first.to_string()
    else:
        return {}  # an index, a timestamp: the repr says it all
    return {"shape": list(value.shape), "dtype": _bounded(dtype, BABELFISH_REPR_CHARS),
            "head": _bounded(head, BABELFISH_HEAD_CHARS)}


# ---------------------------------------------------------------------------- the babelfish

def _as_request(value: Any) -> Request | None:
    """A fetched request, checked: anyone can store into ``requests``."""
    if not isinstance(value, tuple) or len(value) not in (2, 3):
        return None
    reply_var, frames, *timeout = value
    if (not isinstance(reply_var, str) or not reply_var or reply_var == BABELFISH_REQUESTS
            or not isinstance(frames, (list, tuple)) or not frames
            or not all(isinstance(frame, (bytes, bytearray)) for frame in frames)):
        return None
    if timeout and not (isinstance(timeout[0], (int, float)) and math.isfinite(timeout[0])
                        and timeout[0] >= 0):
        return None  # it would never be due for deletion
    return Request(reply_var, list(frames), *timeout)


class Babelfish:
    """The serving side: owns ``__babelfish`` on a session and answers its requests."""

    def __init__(self, server: NwsServer) -> None:
        self.server = server
        self.ws = server.openWs(BABELFISH_WS)  # owned, not persistent: it goes with us
        self._late: list[tuple[float, str]] = []  # (when to delete, reply variable), a heap

    @property
    def owns_workspace(self) -> bool:
        """Whether this session owns the workspace (another babelfish may, and share it)."""
        row = self.server.listWss("dict").get(BABELFISH_WS)
        return bool(row and row[1])

    def serve(self, poll: float = BABELFISH_POLL) -> None:
        """Answer requests until interrupted (Ctrl-C; ``run`` turns SIGTERM into one)."""
        while True:
            self._delete_due_replies()
            wait = poll if not self._late else min(poll, self._late[0][0] - time.monotonic())
            try:
                value = self.ws.fetch(BABELFISH_REQUESTS, timeout=max(wait, 0.01))
            except NwsTimeoutException:
                continue
            except NwsNoWorkSpaceException:
                # The babelfish we shared it with stopped, or someone deleted it: open it again.
                self.server.openWs(BABELFISH_WS, self.ws)
                log.info("workspace %s went away; opened it again", BABELFISH_WS)
                continue
            except NwsUnpicklingException as exc:
                log.warning("a request that is not one (ignored): %s", exc)
                continue
            self.answer(value, received=time.monotonic())

    def answer(self, value: Any, received: float) -> None:
        """Translate one fetched request and store the answer, unless its asker gave up."""
        request = _as_request(value)
        if request is None:
            log.warning("a request that is not one (ignored): a %s", type(value).__name__)
            return
        try:
            text = json.dumps(translate(request.frames))
        except Exception as exc:  # noqa: BLE001 - a value's own code may raise anything
            text = json.dumps({"error": f"cannot describe the value: {type(exc).__name__}: "
                                        f"{exc}"})
        if time.monotonic() - received > request.timeout:
            return  # its asker stopped waiting: an answer would only be left behind
        try:
            self.ws.store(request.reply_var, text)
        except NwsOperationException as exc:  # a bad name, the memory cap, the workspace gone
            log.warning("cannot answer into %r: %s", request.reply_var, exc)
            return
        heapq.heappush(self._late, (received + request.timeout + BABELFISH_REPLY_GRACE,
                                    request.reply_var))

    def _delete_due_replies(self) -> None:
        """Replies whose askers are past waiting: taken and deleted by them, nearly always;
        otherwise they came too late, and go now."""
        now = time.monotonic()
        while self._late and self._late[0][0] <= now:
            _, reply_var = heapq.heappop(self._late)
            try:
                self.ws.deleteVar(reply_var)
            except NwsOperationException:
                pass  # the workspace is gone, and the variable with it


def _interrupt_on_sigterm() -> None:
    """SIGTERM stops the babelfish as Ctrl-C does: as a SIGINT, which the client holds back
    while a message is half sent and which cancels a blocked fetch at the broker."""

    def interrupt(signum: int, frame: Any) -> None:
        if not callable(signal.getsignal(signal.SIGINT)):  # started in the background: ignored
            signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, interrupt)


def run(server: NwsServer) -> int:
    """``workbench babelfish``: serve on ``server`` until SIGTERM or Ctrl-C -> exit status."""
    _interrupt_on_sigterm()
    try:
        babelfish = Babelfish(server)
        shared = "" if babelfish.owns_workspace else " (with another babelfish, whose workspace it is)"
        log.info("babelfish serving workspace %s on %s%s; it unpickles values on request: run "
                 "it only where every client that can store is trusted", BABELFISH_WS,
                 server.address, shared)
        babelfish.serve()
    except KeyboardInterrupt:
        log.info("babelfish stopping")
    except NwsServerException as exc:  # the broker went away, or shut down
        log.error("babelfish stopping: %s", exc)
        return 1
    finally:
        server.close()
    return 0
