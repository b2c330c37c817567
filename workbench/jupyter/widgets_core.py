"""What the live widgets share: the hop from a delivery thread to the kernel's event loop, the
throttle, the base widget, and small HTML tables.

**Threads.** Broker events and messages arrive in a connection's delivery thread. Widgets are
never touched there: that thread only records what changed (under a lock) and calls
``Throttle.request()``, which hands one callback to the event loop captured when the widget
was made (``loop.call_soon_threadsafe``). Since ipykernel 7 a widget updated from another
thread does not reach the browser reliably (ipyparallel's progress bars broke that way), so
every change to a widget happens on that loop: the kernel's, in a notebook.

**Throttle.** However many events arrive, the loop redraws at most once per ``interval``
seconds (0.15 by default): the first request after a quiet spell redraws at once, later ones
within the interval become one redraw at its end, which reads the state as it is then. A
burst of thousands of changes costs a handful of redraws, and the last one shows the end
state.
"""

from __future__ import annotations

import asyncio
import html
import logging
import reprlib
import threading
from typing import Any, Callable, Iterable, Sequence

import ipywidgets as widgets

from ..client.workspace import NwsServer
from ..config import WIDGET_INTERVAL

log = logging.getLogger("workbench.jupyter")

#: Seconds between two redraws of one widget at the most (about 7 a second).
INTERVAL = WIDGET_INTERVAL

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80
_short.maxlist = _short.maxtuple = _short.maxset = _short.maxdict = 8
_short.maxlevel = 3


def short(value: Any) -> str:
    """A repr that stays short however large the value is."""
    try:
        return _short.repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not break a dashboard
        return f"<{type(value).__name__}: repr failed: {exc!r}>"


def event_loop(loop: asyncio.AbstractEventLoop | None = None) -> asyncio.AbstractEventLoop:
    """The loop a widget made now is updated on: ``loop`` if given, else the loop running in
    this thread (a notebook cell runs inside the kernel's), else the kernel's own."""
    if loop is not None:
        return loop
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    from IPython import get_ipython

    io_loop = getattr(getattr(get_ipython(), "kernel", None), "io_loop", None)
    if io_loop is not None:  # tornado's IOLoop wraps the asyncio loop
        return getattr(io_loop, "asyncio_loop", io_loop)
    raise RuntimeError("no event loop to update the widget on: make it in a notebook kernel "
                       "or in a coroutine, or pass loop=")


class Throttle:
    """Runs ``redraw`` on ``loop`` at most once per ``interval`` seconds, however often and
    from whichever threads ``request()`` is called."""

    def __init__(self, loop: asyncio.AbstractEventLoop, redraw: Callable[[], None],
                 interval: float = INTERVAL) -> None:
        self._loop = loop
        self._redraw = redraw
        self.interval = interval
        self.redraws = 0
        self._queued = False  # a hop to the loop is on its way: the next request needs none
        self._handle: asyncio.TimerHandle | None = None  # a redraw is scheduled (loop only)
        self._last = float("-inf")
        self._closed = False

    def request(self) -> None:
        """Any thread: the state changed; redraw soon."""
        if self._closed or self._queued:
            return
        self._queued = True
        try:
            self._loop.call_soon_threadsafe(self._schedule)
        except RuntimeError:  # the loop was closed: nobody will draw again
            self._closed = True

    def _schedule(self) -> None:
        self._queued = False  # before anything is read: a later change requests again
        if self._closed or self._handle is not None:
            return  # the redraw already scheduled will read the newer state
        delay = max(0.0, self._last + self.interval - self._loop.time())
        self._handle = self._loop.call_later(delay, self._run)

    def _run(self) -> None:
        self._handle = None
        if self._closed:
            return
        self._last = self._loop.time()
        self.redraws += 1
        self._redraw()

    def close(self) -> None:
        self._closed = True  # a scheduled redraw finds it and does nothing


class LiveWidget(widgets.VBox):
    """A widget drawn from broker state: ``refresh()`` redraws now, ``close()`` stops what it
    follows and closes it. Subclasses draw in ``_redraw`` (on the loop) and stop in
    ``_stop``; threads that learn of a change call ``self._throttle.request()``."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None, interval: float,
                 **kwargs: Any) -> None:
        loop = event_loop(loop)
        super().__init__(**kwargs)
        self.header = widgets.HTML()
        self._closed = False
        self._lock = threading.Lock()  # what delivery threads record for the next redraw
        self._throttle = Throttle(loop, self._draw, interval)
        self._watch: Any = None  # a Watch to close with the widget
        self._owned: NwsServer | None = None  # a session made for the widget, likewise

    def _open(self, follow: Callable[[], None]) -> None:
        """Start following the broker (``follow``), then draw; if anything fails, close what
        was made and raise."""
        try:
            follow()
            self._draw()
        except BaseException:
            self.close()
            raise

    @property
    def redraws(self) -> int:
        """How many times the widget was drawn from a broker change (throttled)."""
        return self._throttle.redraws

    def refresh(self) -> None:
        """Redraw now, from the broker's state (call it from the kernel's thread)."""
        self._draw()

    def _draw(self) -> None:
        if self._closed:
            return
        try:
            self._redraw()
        except Exception as exc:  # noqa: BLE001 - shown in the widget, not lost in a thread
            log.debug("%r could not redraw", self, exc_info=True)
            self.header.value = self._title() + f" <b>· cannot update: {html.escape(str(exc))}</b>"

    def _redraw(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        """Stop following the broker: the watch, then the session made for the widget."""
        if self._watch is not None:
            self._watch.close()
        if self._owned is not None:
            self._owned.close()

    def _title(self) -> str:
        return ""

    def _body_html(self) -> str:
        return ""

    def close(self) -> None:
        """Stop following the broker and close the widget and its parts."""
        if getattr(self, "_closed", True):
            return  # closed already (or never made); ipywidgets also calls this on collection
        self._closed = True
        self._throttle.close()
        try:
            self._stop()
        except Exception:  # noqa: BLE001 - a broker gone away must not stop the closing
            log.debug("%r: stopping failed", self, exc_info=True)
        for child in self._parts():
            child.close()
        super().close()

    def _parts(self) -> list[widgets.Widget]:
        parts, stack = [], list(self.children)
        while stack:
            child = stack.pop()
            parts.append(child)
            stack.extend(getattr(child, "children", ()))
        return parts

    def _repr_html_(self) -> str:
        """A static copy of what the widget shows (for viewers without live widgets)."""
        return f"<div>{self._title()}</div>{self._body_html()}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], more: int = 0,
          empty: str = "none") -> str:
    """An HTML table of text cells (escaped here); ``more`` rows left out are counted below."""
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(cell))}</td>"
                                    for cell in row) + "</tr>" for row in rows)
    if not body:
        return f"<div><i>{html.escape(empty)}</i></div>"
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    tail = f"<div><i>… and {more} more</i></div>" if more > 0 else ""
    return (f"<table class='workbench-table'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{tail}")


def server_for(server: NwsServer | str | None) -> tuple[NwsServer, bool]:
    """-> (a session with the broker named, whether it was made here and is to be closed).
    ``server``: an NwsServer, an address (``host:port``, ``tcp://host:port``) or a connection
    file, or None for the broker a NetWorkSpace would find."""
    if isinstance(server, NwsServer):
        return server, False
    return NwsServer(server), True
