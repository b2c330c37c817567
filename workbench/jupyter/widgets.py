"""Live widgets: a workspace dashboard, a broker view, a sleigh monitor and a message feed.

::

    from workbench.jupyter.widgets import dashboard, broker_view, sleigh_monitor, message_feed

    dashboard(ws)                 # variables, modes, values, fetchers and finders waiting
    broker_view()                 # workspaces, owners, clients
    sleigh_monitor(sleigh)        # workers, tasks done per worker, progress
    message_feed("sensor:*")      # workbench.mq messages as they are sent

Beside their tables, small plots (``plots``) show the last minutes: values per variable in
the dashboard, tasks done per second (overall and per worker) in the sleigh monitor,
messages per second per identifier in the feed. They are fed from the same events as the
tables and drawn at the same redraws.

Each returns an ipywidgets ``VBox`` that follows broker events (workspace watches, pub/sub),
never polls, and redraws at most about seven times a second on the kernel's event loop (see
``widgets_core``). ``refresh()`` redraws at once; ``close()`` ends the watch or subscription.
A widget shown while the kernel runs a long cell catches up when the cell ends: its updates
wait for the event loop, as every widget update must since ipykernel 7.

Each widget works against any broker: pass an NwsServer, an address or a connection file
(``server=`` or ``broker=``), or let it find the broker as a NetWorkSpace does. A widget shows
the broker's address, never a connection file's keys.
"""

from __future__ import annotations

import asyncio
import html
import threading
import time
import weakref
from collections import Counter, deque
from typing import Any

import ipywidgets as widgets

from ..client.pubsub import MessageBus
from ..client.workspace import (
    DICT, V_FETCHERS, V_FINDERS, V_MODE, V_VALUES, WS_NUMVARS, WS_OWNER, WS_PERSISTENT,
    NetWorkSpace, NwsServer,
)
from ..config import WIDGET_REQUEST_TIMEOUT
from ..errors import NwsException, NwsNoWorkSpaceException
from ..mq.message import unpack
from ..mq.transport import open_connection, transport
from ..sleigh.events import RUNNING, CallProgress
from ..sleigh.launchers import describe_worker
from ..sleigh.master import Sleigh
from ..topics import parse
from .plots import LevelSeries, RateSeries
from .widgets_core import (
    INTERVAL, LiveWidget, Markup, beside, beside_html, button, server_for, short, table,
)

__all__ = ["broker_view", "dashboard", "message_feed", "sleigh_monitor"]

_NOTHING = object()

# The plots' history: levels in 2 s buckets over 3 minutes at the most, rates in 1 s buckets
# over 2 minutes.
_LEVELS, _LEVEL_SECONDS = 90, 2.0
_RATES, _RATE_SECONDS = 120, 1.0
_MAX_IDENTIFIERS = 12  # identifiers a message feed plots: the most recently heard


def _levels(value: int) -> LevelSeries:
    return LevelSeries(_LEVELS, _LEVEL_SECONDS, value=value)


def _rates() -> RateSeries:
    return RateSeries(_RATES, _RATE_SECONDS)


def _rate_plot(series: RateSeries, title: str) -> Markup:
    return Markup(series.plot(title, unit="/s"))


def dashboard(workspace: NetWorkSpace | str, *, server: NwsServer | str | None = None,
              preview: bool = True, max_rows: int = 100, interval: float = INTERVAL,
              loop: asyncio.AbstractEventLoop | None = None) -> WorkspaceDashboard:
    """A live table of a workspace's variables: mode, number of values, fetchers and finders
    waiting, a preview of the value a find would return, and beside each row a plot of its
    number of values over the last minutes; buttons to fetchTry or delete the chosen variable
    and to refresh. ``workspace``: a NetWorkSpace, or the name of an existing
    workspace on ``server`` (an NwsServer, an address, a connection file, or None: the broker
    found as usual)."""
    return WorkspaceDashboard(workspace, server, preview, max_rows, interval, loop)


def broker_view(server: NwsServer | str | None = None, *, max_rows: int = 100,
                interval: float = INTERVAL,
                loop: asyncio.AbstractEventLoop | None = None) -> BrokerView:
    """A live view of a broker: its workspaces (owner, persistence, variables) and its
    clients (what they own, requests, blocked calls). Redrawn on every workspace event; the
    clients list changes with them (the broker sends no event when a client comes or goes:
    ``refresh`` shows them at once)."""
    return BrokerView(server, max_rows, interval, loop)


def sleigh_monitor(sleigh: Sleigh, *, interval: float = INTERVAL,
                   loop: asyncio.AbstractEventLoop | None = None) -> SleighMonitor:
    """A live view of a sleigh: its workers and the tasks each has done since the sleigh was
    first monitored, the progress of the calls running, tasks queued at the broker, deaths;
    plots of the tasks done per second, overall and by each worker."""
    return SleighMonitor(sleigh, interval, loop)


def message_feed(pattern: str = "*", *, broker: NwsServer | str | None = None,
                 keep: int = 50, interval: float = INTERVAL,
                 loop: asyncio.AbstractEventLoop | None = None) -> MessageFeed:
    """The latest ``keep`` messages sent under identifiers matching ``pattern`` (berryMQ
    matching, as ``workbench.mq`` followers use), newest first, from every process of the
    broker, this one included; beside them, a plot of the messages per second under each
    identifier. ``broker``: an NwsServer, address or connection file; by default the broker
    ``workbench.mq`` uses."""
    return MessageFeed(pattern, broker, keep, interval, loop)


# ------------------------------------------------------------------------------ dashboard

class WorkspaceDashboard(LiveWidget):
    """See ``dashboard``. ``table`` holds the variables, ``plot`` beside it each one's number
    of values over the last minutes (row by row), ``result`` what the last action did."""

    def __init__(self, workspace: NetWorkSpace | str, server: NwsServer | str | None,
                 preview: bool, max_rows: int, interval: float,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__(loop, interval)
        self.table = widgets.HTML()
        self.plot = widgets.HTML()
        self.variable = widgets.Dropdown(description="variable", options=[], value=None)
        self.result = widgets.HTML()
        actions = widgets.HBox([
            self.variable,
            button("fetchTry", "take a value of the chosen variable", self.fetch_try),
            button("delete", "delete the chosen variable and its values", self.delete),
            button("refresh", "redraw from the broker now", self.refresh),
        ])
        self.children = [self.header, beside(self.table, self.plot), actions, self.result]
        self.preview = preview
        self.max_rows = max_rows
        self._previews: dict[str, str] = {}
        self._changed: set[str] = set()  # variables whose preview is stale (under _lock)
        # values per variable shown, as events tell (under _lock); a variable gets its series
        # when first shown, so a workspace of many variables costs no more than its table
        self._history: dict[str, LevelSeries] = {}
        self._gone: str | None = None  # "deleted" or "purged" once the workspace went
        self._body = ""

        def follow() -> None:
            if isinstance(workspace, NetWorkSpace):
                self.ws = workspace
            else:
                srv, made = server_for(server)
                self._owned = srv if made else None
                self.ws = srv.useWs(workspace, create=False)
            self.name = self.ws.currentWs()
            self.address = self.ws.server.address
            self._watch = self.ws.watch(self._on_events)

        self._open(follow)

    def _on_events(self, events: list[dict]) -> None:
        """In the delivery thread: note what changed, ask for a redraw."""
        with self._lock:
            history = self._history
            for event in events:
                kind = event["event"]
                if "var" in event:
                    var = event["var"]
                    self._changed.add(var)
                    if kind == "deleted":
                        history.pop(var, None)
                    elif var in history and "values" in event:
                        history[var].set(event["values"])
                elif kind in ("ws_deleted", "ws_purged"):
                    self._gone = kind[3:]
                    history.clear()
                elif kind == "ws_created":
                    self._gone = None
        self._throttle.request()

    def _title(self) -> str:
        return (f"<b>workspace {html.escape(getattr(self, 'name', '?'))}</b> · "
                f"{html.escape(getattr(self, 'address', '?'))}")

    def _body_html(self) -> str:
        return self._body

    def _redraw(self) -> None:
        with self._lock:
            changed, self._changed = self._changed, set()
            gone = self._gone
        try:
            rows = self.ws.listVars(format=DICT)
        except NwsNoWorkSpaceException:
            rows, gone = {}, gone or "deleted"
        names = sorted(rows)
        shown = names[:self.max_rows]
        previews = self._previews
        for name in list(previews):
            if name not in rows:
                del previews[name]
        for name in shown:
            if not self.preview or not rows[name][V_VALUES]:
                previews.pop(name, None)
            elif name in changed or name not in previews:
                previews[name] = self._preview(name)
        self.table.value = table(
            ("variable", "mode", "values", "fetchers", "finders", "preview"),
            ((name, rows[name][V_MODE], rows[name][V_VALUES], rows[name][V_FETCHERS],
              rows[name][V_FINDERS], previews.get(name, "")) for name in shown),
            more=len(names) - len(shown), empty="no variables")
        self.plot.value = self._plots(shown, rows)
        self._body = beside_html(self.table.value, self.plot.value)
        values = sum(row[V_VALUES] for row in rows.values())
        state = f" · <b>{gone}</b>" if gone else ""
        self.header.value = (f"{self._title()} · {len(names)} variables · {values} values"
                             f"{state}")
        if list(self.variable.options) != names:
            chosen = self.variable.value
            self.variable.options = names
            self.variable.value = chosen if chosen in names else (names[0] if names else None)

    def _plots(self, shown: list[str], rows: dict) -> str:
        """A column of plots, one per row of the table, in its order."""
        if not shown:
            return ""
        with self._lock:
            history = self._history
            for name in set(history) - set(shown):
                del history[name]
            for name in shown:
                if name not in history:
                    history[name] = _levels(rows[name][V_VALUES])
            plots = [[Markup(history[name].plot(f"{name}: values"))] for name in shown]
            self._redraw_as_time_passes(history.values())
        return table(("values over time",), plots)

    def _preview(self, name: str) -> str:
        try:
            value = self.ws.findTry(name, _NOTHING)
        except Exception as exc:  # noqa: BLE001 - e.g. a class this kernel cannot import
            return f"<cannot decode: {type(exc).__name__}>"
        return "" if value is _NOTHING else short(value)

    def _act(self, what) -> None:
        name = self.variable.value
        if name is None:
            self.result.value = "<i>no variable chosen</i>"
            return
        try:
            message = what(name)
        except NwsException as exc:
            message = f"{name}: {type(exc).__name__}: {exc}"
        self.result.value = html.escape(message)
        with self._lock:
            self._changed.add(name)
        self.refresh()

    def fetch_try(self) -> None:
        """The fetchTry button: take a value of the chosen variable and show it."""
        def take(name: str) -> str:
            value = self.ws.fetchTry(name, _NOTHING)
            return f"{name}: no value" if value is _NOTHING else f"fetched {name}: {short(value)}"
        self._act(take)

    def delete(self) -> None:
        """The delete button: delete the chosen variable."""
        def delete(name: str) -> str:
            self.ws.deleteVar(name)
            return f"deleted {name}"
        self._act(delete)

    def refresh(self) -> None:
        self._previews.clear()  # find every value again
        super().refresh()

    def __repr__(self) -> str:
        closed = " closed" if self._closed else ""
        return (f"<WorkspaceDashboard {getattr(self, 'name', '?')!r} at "
                f"{getattr(self, 'address', '?')}{closed}>")


# ------------------------------------------------------------------------------ the broker

class BrokerView(LiveWidget):
    """See ``broker_view``. ``workspaces`` and ``clients`` are the two tables."""

    def __init__(self, server: NwsServer | str | None, max_rows: int, interval: float,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__(loop, interval)
        self.workspaces = widgets.HTML()
        self.clients = widgets.HTML()
        self.children = [self.header, self.workspaces, self.clients,
                         button("refresh", "redraw from the broker now", self.refresh)]
        self.max_rows = max_rows

        def follow() -> None:
            self.server, made = server_for(server)
            self._owned = self.server if made else None
            self.address = self.server.address
            self._watch = self.server.watch(lambda events: self._throttle.request())

        self._open(follow)

    def _title(self) -> str:
        return f"<b>broker</b> {html.escape(getattr(self, 'address', '?'))}"

    def _body_html(self) -> str:
        return self.workspaces.value + self.clients.value

    def _redraw(self) -> None:
        spaces = self.server.listWss(format=DICT)
        status = self.server.status(timeout=WIDGET_REQUEST_TIMEOUT)
        me = self.server.label
        names = sorted(spaces)[:self.max_rows]
        self.workspaces.value = "<b>workspaces</b>" + table(
            ("workspace", "owner", "persistent", "variables"),
            ((name, spaces[name][WS_OWNER] or "-", "yes" if spaces[name][WS_PERSISTENT] else "",
              spaces[name][WS_NUMVARS]) for name in names),
            more=len(spaces) - len(names), empty="no workspaces")
        clients = sorted(status["clients"], key=lambda c: c["label"])
        self.clients.value = "<b>clients</b>" + table(
            ("client", "owns", "requests", "blocked", "leases", "idle s"),
            ((c["label"] + (" (this process)" if c["label"] == me else ""),
              ", ".join(c["owned"]) or "-", c["requests"], c["waiting"], c["leases"],
              round(c["idle"], 1)) for c in clients[:self.max_rows]),
            more=len(clients) - self.max_rows, empty="no clients")
        memory = status["memory"] / 2**20
        self.header.value = (f"{self._title()} · workbench {html.escape(status['version'])} · "
                             f"up {status['uptime']:.0f} s · {len(spaces)} workspaces · "
                             f"{status['values']} values · {memory:.1f} MiB · "
                             f"{len(clients)} clients")

    def __repr__(self) -> str:
        closed = " closed" if self._closed else ""
        return f"<BrokerView {getattr(self, 'address', '?')}{closed}>"


# ------------------------------------------------------------------------------ sleighs

class _ResultTally:
    """The task results a sleigh has filed, by worker rank, counted from the first monitor
    of the sleigh on (the sleigh keeps no count per worker): one subscription per sleigh,
    shared by its monitors."""

    def __init__(self) -> None:
        self.done: Counter[int] = Counter()

    def count(self, event: Any) -> None:
        if isinstance(event, CallProgress) and event.rank is not None:
            self.done[event.rank] += event.added


_tallies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_tallies_lock = threading.Lock()


def _tally_of(sleigh: Sleigh) -> _ResultTally:
    with _tallies_lock:
        tally = _tallies.get(sleigh)
        if tally is None:
            tally = _tallies[sleigh] = _ResultTally()
            sleigh.subscribe(tally.count)  # for the sleigh's life, like the counts
        return tally


class SleighMonitor(LiveWidget):
    """See ``sleigh_monitor``. ``progress`` is the bar, ``rate`` beside it the tasks done per
    second, ``workers`` the table and ``plot`` beside it each worker's tasks per second."""

    def __init__(self, sleigh: Sleigh, interval: float,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__(loop, interval)
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="tasks")
        self.progress_text = widgets.HTML()
        self.rate = widgets.HTML()
        self.workers = widgets.HTML()
        self.plot = widgets.HTML()
        self.footer = widgets.HTML()
        self.children = [self.header, beside(self.progress, self.progress_text, self.rate,
                                             align="center"),
                         beside(self.workers, self.plot), self.footer]
        self.sleigh = sleigh
        self.name = getattr(sleigh, "wsName", "?")
        self._queued: dict[str, int] = {}  # task variables -> values (under _lock)
        self._calls: dict[int, CallProgress] = {}  # this round's calls (under _lock)
        self._done = _rates()  # tasks done per second, since this monitor began (under _lock)
        self._done_by_rank: dict[int, RateSeries] = {}  # the same per worker (under _lock)
        self._tally = _tally_of(sleigh)
        self._subscription = sleigh.subscribe(self._on_sleigh_event)

        def follow() -> None:
            try:
                self._watch = sleigh.nws.watch(self._on_events)
            except NwsException:
                return  # stopped already: there is nothing to follow
            for var, (values, _) in self._watch.snapshot.get(self.name, {}).items():
                if var.startswith("task"):
                    self._queued[var] = values

        self._open(follow)

    def _on_sleigh_event(self, event: Any) -> None:
        """In the sleigh's thread that caused the event: note it for the next redraw."""
        if isinstance(event, CallProgress):
            with self._lock:
                if event.rank is not None and event.added:
                    self._done.add(event.added)
                    self._rank_rates(event.rank).add(event.added)
                calls = self._calls
                known = calls.get(event.batch)
                if known is None and calls and all(c.state != RUNNING for c in calls.values()):
                    calls.clear()  # a new round of work: the last one's calls are over
                # a snapshot taken as the monitor subscribed may arrive after newer news
                if known is None or event.done >= known.done or event.state != RUNNING:
                    calls[event.batch] = event
        self._throttle.request()

    def _rank_rates(self, rank: int) -> RateSeries:
        series = self._done_by_rank.get(rank)
        if series is None:
            series = self._done_by_rank[rank] = _rates()
        return series

    def _on_events(self, events: list[dict]) -> None:
        with self._lock:
            for event in events:
                var = event.get("var", "")
                if var.startswith("task"):
                    self._queued[var] = event.get("values", 0)
        self._throttle.request()

    def _title(self) -> str:
        return f"<b>sleigh {html.escape(self.name)}</b>"

    def _body_html(self) -> str:
        return (beside_html(self.progress_text.value, self.rate.value)
                + beside_html(self.workers.value, self.plot.value) + self.footer.value)

    def _round(self) -> tuple[int, int, int]:
        """The calls running, and those finished since the sleigh was last idle ->
        (done, total, running)."""
        with self._lock:
            calls = list(self._calls.values())
        done = sum(call.done for call in calls)
        total = sum(call.total if call.total is not None else call.sent for call in calls)
        return done, total, sum(call.state == RUNNING for call in calls)

    def _redraw(self) -> None:
        sleigh = self.sleigh
        status = sleigh.state()
        info = sleigh.workerInfo()
        done, total, running = self._round()
        self.progress.max = max(total, 1)
        self.progress.value = min(done, total)
        self.progress.bar_style = "success" if total and done >= total else ""
        state = f"{running} calls running" if running else "idle"
        self.progress_text.value = html.escape(f"{done} / {total} tasks · {state}")
        by_rank = self.done_by_rank
        self.workers.value = table(
            ("rank", "state", "host", "pid", "tasks done"),
            ((w["rank"], describe_worker(w), w["host"] or "", w["pid"] or "",
              by_rank.get(w["rank"], 0)) for w in info),
            empty="no workers")
        self._plot_rates([w["rank"] for w in info])
        with self._lock:
            queued = sum(self._queued.values())
        self.footer.value = html.escape(
            f"queued at the broker {queued} · in flight {status.outstanding} · "
            f"deaths {status.deaths} · duplicates dropped {status.duplicates}")
        where = html.escape(sleigh.nws.server.address)
        run = "<b>stopped</b>" if status.stopped else f"{status.workers} workers"
        self.header.value = f"{self._title()} · {where} · {run}"

    def _plot_rates(self, ranks: list[int]) -> None:
        """The tasks done per second overall, and per worker in the table's order; while
        they change, one more redraw when the second ends, so they fall to 0 when work does."""
        with self._lock:
            for rank in set(self._done_by_rank) - set(ranks):
                del self._done_by_rank[rank]
            overall = _rate_plot(self._done, "tasks done per second")
            plots = [[_rate_plot(self._rank_rates(rank), f"worker {rank}: tasks done per second")]
                     for rank in ranks]
            self._redraw_as_time_passes([self._done])
        self.rate.value = overall
        self.plot.value = table(("tasks done per second",), plots) if plots else ""

    @property
    def done_by_rank(self) -> dict[int, int]:
        """Tasks each worker (by rank) finished while this monitor watched, as its table shows."""
        return dict(self._tally.done)

    def _stop(self) -> None:
        self._subscription.close()
        super()._stop()

    def __repr__(self) -> str:
        closed = " closed" if self._closed else ""
        return f"<SleighMonitor {self.name}{closed}>"


# ------------------------------------------------------------------------------ messages

class MessageFeed(LiveWidget):
    """See ``message_feed``. ``messages`` is the table; ``received`` counts every message;
    ``plot`` beside the table shows the messages per second of each identifier heard (the
    most recently heard, if many are)."""

    def __init__(self, pattern: str, broker: NwsServer | str | None, keep: int,
                 interval: float, loop: asyncio.AbstractEventLoop | None) -> None:
        parse(pattern)  # a bad pattern fails here, before anything is made
        super().__init__(loop, interval)
        self.messages = widgets.HTML()
        self.plot = widgets.HTML()
        self.children = [self.header, beside(self.messages, self.plot),
                         button("clear", "forget the messages shown", self.clear)]
        self.pattern = pattern
        self.received = 0
        self._latest: deque[tuple[str, str, str]] = deque(maxlen=keep)  # under _lock
        # identifier -> its messages per second, the one heard last at the end (under _lock)
        self._rates: dict[str, RateSeries] = {}
        self._connection = None

        def follow() -> None:
            address = broker.address if isinstance(broker, NwsServer) else broker
            self._connection = open_connection(address if address is not None
                                               else transport.address)
            self.address = self._connection.address
            self._bus = MessageBus(self._connection, self._on_message)
            self._bus.subscribe(pattern)

        self._open(follow)

    def _on_message(self, identifier: str, value: Any) -> None:
        """In the delivery thread: keep the message's text, ask for a redraw."""
        message = unpack(value, parse(identifier))
        arguments = ", ".join([*map(short, message.args),
                               *(f"{k}={short(v)}" for k, v in message.kwargs.items())])
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        name = str(message.identifier)
        with self._lock:
            self._latest.appendleft((stamp, name, arguments))
            self.received += 1
            rates = self._rates
            series = rates.pop(name, None) or _rates()
            rates[name] = series
            series.add()
            if len(rates) > _MAX_IDENTIFIERS:
                del rates[next(iter(rates))]  # the one heard least recently
        self._throttle.request()

    def _title(self) -> str:
        return (f"<b>messages</b> {html.escape(self.pattern)} · "
                f"{html.escape(getattr(self, 'address', '?'))}")

    def _body_html(self) -> str:
        return beside_html(self.messages.value, self.plot.value)

    def _redraw(self) -> None:
        with self._lock:
            latest, received = list(self._latest), self.received
            rates = sorted(self._rates.items())
            plots = [(name, series.total, _rate_plot(series, f"{name}: messages per second"))
                     for name, series in rates]
            self._redraw_as_time_passes(series for _, series in rates)
        self.messages.value = table(("time", "identifier", "arguments"), latest,
                                    empty="no messages yet")
        self.plot.value = table(("identifier", "messages", "per second"),
                                plots) if plots else ""
        dropped = self._bus.dropped
        lost = f" · {dropped} dropped by the broker (read too slowly)" if dropped else ""
        self.header.value = f"{self._title()} · {received} received{lost}"

    def clear(self) -> None:
        """The clear button: forget the messages shown (the count stays)."""
        with self._lock:
            self._latest.clear()
        self.refresh()

    def _stop(self) -> None:
        if self._connection is not None:
            self._connection.close()  # the broker drops the subscription with the session

    def __repr__(self) -> str:
        closed = " closed" if self._closed else ""
        return (f"<MessageFeed {getattr(self, 'pattern', '?')!r} at "
                f"{getattr(self, 'address', '?')}{closed}>")
