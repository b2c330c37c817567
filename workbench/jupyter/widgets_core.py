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
state. A plot asks for one redraw more when its bucket of time ends (``request_later``), so
that a rate falls to zero once the events stop; nothing else is drawn without news.

**Tables** (``table``) share one look, and the plots (``plots``) sit beside them (``beside``).
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
from .plots import Series

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
        self._later: asyncio.TimerHandle | None = None  # a request_later is pending (loop only)
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

    def request_later(self, delay: float) -> None:
        """On the loop: redraw in ``delay`` seconds though nothing changes (a plot whose time
        moves on); one such request is pending at a time, and the first stands."""
        if self._closed or self._later is not None:
            return
        self._later = self._loop.call_later(delay, self._fire_later)

    def _fire_later(self) -> None:
        self._later = None
        self.request()

    def close(self) -> None:
        self._closed = True  # a scheduled redraw finds it and does nothing
        if self._later is not None:
            self._later.cancel()


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

    def _redraw_as_time_passes(self, plotted: Iterable[Series]) -> None:
        """(On the loop.) If a plot of ``plotted`` changes when its bucket ends, redraw then
        though no news comes: a rate falls to 0 once the events stop, a level shows its peak."""
        for series in plotted:
            if series.busy:
                # just past the end: asyncio may run a timer a little early
                self._throttle.request_later(series.until_next() + 0.05)
                return

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


class Markup(str):
    """A table cell that is HTML already (a plot): ``table`` puts it in unescaped."""


#: How the tables look, wherever they are shown: compact rows of one line, headers that stand
#: out, figures in columns (tabular), long text cut with an ellipsis (its cell's title holds
#: it whole). Row heights are fixed, so a table of plots beside a table lines up with its rows.
TABLE_STYLE = (
    "<style>"
    "table.workbench-table{border-collapse:collapse;border-spacing:0;margin:2px 0 6px;"
    "font-size:var(--jp-ui-font-size1,13px);font-variant-numeric:tabular-nums;"
    "table-layout:auto}"
    "table.workbench-table th{font-weight:600;padding:4px 10px;line-height:18px;"
    "white-space:nowrap;border:none;border-bottom:1px solid var(--jp-border-color1,#bdbdbd)}"
    "table.workbench-table td{padding:2px 10px;height:18px;line-height:18px;"
    "white-space:nowrap;max-width:36ch;overflow:hidden;text-overflow:ellipsis;"
    "vertical-align:middle;border:none}"
    "table.workbench-table tbody tr:nth-child(odd){background:transparent}"
    "table.workbench-table tbody tr:nth-child(even){background:var(--jp-layout-color2,#f2f2f2)}"
    "table.workbench-table svg{display:block}"
    "table.workbench-table td:has(>svg){max-width:none}"
    "</style>")
_LONG = 30  # characters past which a cell may be cut: its title then holds the whole text


def _alignment(column: Sequence[Any]) -> str:
    """A column whose cells are all numbers (int, float) or empty is right-aligned."""
    numbers = False
    for cell in column:
        if isinstance(cell, (int, float)) and not isinstance(cell, bool):
            numbers = True
        elif cell != "":
            return "left"
    return "right" if numbers else "left"


def _cell(cell: Any, opening: str) -> str:
    """``opening``: the cell's tag, unclosed."""
    if isinstance(cell, (Markup, int, float)):  # nothing to escape
        return f"{opening}>{cell}</td>"
    text = str(cell)
    if len(text) > _LONG:
        text = html.escape(text)
        return f"{opening} title='{text}'>{text}</td>"
    return f"{opening}>{html.escape(text)}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], more: int = 0,
          empty: str = "none") -> str:
    """An HTML table: text cells escaped and left-aligned, numbers (int, float) right-aligned
    (a column whose cells are all numbers or empty is a column of numbers, its header too),
    ``Markup`` cells as they are; ``more`` rows left out are counted below. Every widget's
    tables come from here, so they look alike."""
    rows = [list(row) for row in rows]
    if not rows:
        return f"<div><i>{html.escape(empty)}</i></div>"
    aligns = [_alignment(column) for column in zip(*rows)]
    head = "".join(f"<th style='text-align:{align}'>{html.escape(h)}</th>"
                   for h, align in zip(headers, aligns))
    openings = [f"<td style='text-align:{align}'" for align in aligns]
    body = "".join("<tr>" + "".join(map(_cell, row, openings)) + "</tr>" for row in rows)
    tail = f"<div><i>… and {more} more</i></div>" if more > 0 else ""
    return (f"{TABLE_STYLE}<table class='workbench-table'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{tail}")


def beside_html(*parts: str) -> str:
    """Static HTML parts side by side (wrapping when narrow), as ``beside`` lays out widgets."""
    cells = "".join(f"<div>{part}</div>" for part in parts)
    return (f"<div style='display:flex;flex-flow:row wrap;column-gap:16px;"
            f"align-items:flex-start'>{cells}</div>")


def beside(*children: widgets.Widget, align: str = "flex-start") -> widgets.HBox:
    """Widgets side by side, top-aligned (or as ``align`` says), wrapping when the page is
    narrow: a table and the plots beside it."""
    return widgets.HBox(list(children), layout=widgets.Layout(
        flex_flow="row wrap", align_items=align, grid_gap="0 16px"))


def button(description: str, tooltip: str, handler: Callable[[], None]) -> widgets.Button:
    """A button as wide as its text (a VBox would stretch it across the page otherwise)."""
    button = widgets.Button(description=description, tooltip=tooltip,
                            layout=widgets.Layout(width="auto", align_self="flex-start"))
    button.on_click(lambda _: handler())
    return button


def server_for(server: NwsServer | str | None) -> tuple[NwsServer, bool]:
    """-> (a session with the broker named, whether it was made here and is to be closed).
    ``server``: an NwsServer, an address (``host:port``, ``tcp://host:port``) or a connection
    file, or None for the broker a NetWorkSpace would find."""
    if isinstance(server, NwsServer):
        return server, False
    return NwsServer(server), True
