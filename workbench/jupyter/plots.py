"""Small live plots for the widgets: bounded, time-bucketed series fed from broker events
(``RateSeries``: events per second; ``LevelSeries``: a level, such as a variable's number of
values) and ``sparkline``, which draws one as a small inline SVG string.

Pure: no widgets, no I/O, no threads (callers lock); time comes from the clock passed in
(``time.monotonic`` by default), so tests drive it. SVG strings rather than a plotting widget:
they look the same in a live widget, a static ``_repr_html_``, a saved notebook and on Binder,
and cost no dependency.
"""

from __future__ import annotations

import html
import math
import time
from collections import deque
from functools import lru_cache
from typing import Callable, Sequence

Clock = Callable[[], float]


class Series:
    """Buckets of ``bucket`` seconds, from when the series began (at most the last
    ``length``) to now. Only buckets that had news are stored, at most about ``length`` of
    them, so memory stays bounded however long the series lives; buckets are numbered from
    the clock's zero, so series made at different times share their boundaries. A young
    series shows all it knows: its plot spans the time since it began, then the window."""

    def __init__(self, length: int = 120, bucket: float = 1.0,
                 clock: Clock = time.monotonic) -> None:
        if length < 2 or bucket <= 0:
            raise ValueError(f"a series needs 2 buckets or more of a positive width, "
                             f"not {length} of {bucket} s")
        self.length = length
        self.bucket = bucket
        self._clock = clock
        self._points: deque[list] = deque()  # [bucket number, number...], oldest first
        self._begun = self._now()
        self._changes = 0  # news that changes a drawing within its bucket
        self._drawn: tuple[tuple, str] = ((), "")

    def _now(self) -> int:
        return math.floor(self._clock() / self.bucket)

    @property
    def span(self) -> float:
        """The seconds the series shows at the most."""
        return self.length * self.bucket

    @property
    def stored(self) -> int:
        """How many buckets are held (bounded by about ``length``)."""
        return len(self._points)

    def until_next(self) -> float:
        """Seconds until the next bucket begins."""
        now = self._clock()
        return (math.floor(now / self.bucket) + 1) * self.bucket - now

    def values(self) -> list[float | None]:
        """One value per bucket shown, oldest first."""
        raise NotImplementedError

    @property
    def latest(self) -> float | None:
        """The value now (None: unknown)."""
        raise NotImplementedError

    @property
    def busy(self) -> bool:
        """Whether what is drawn now changes when the next bucket begins, though no news
        comes: the owner then draws again at that time (``until_next``)."""
        raise NotImplementedError

    def plot(self, title: str, width: int = 120, height: int = 18, unit: str = "") -> str:
        """``sparkline`` of ``values()``, its title saying over what time; drawn again only
        once news came or a bucket began (widgets redraw several times a second, mostly with
        nothing new for most series)."""
        key = (self._changes, self._now(), title, width, height, unit)
        if key != self._drawn[0]:
            values = self.values()
            said = f"{title} over the last {duration(len(values) * self.bucket)}"
            self._drawn = key, sparkline(values, width, height, title=said, unit=unit,
                                         latest=self.latest)
        return self._drawn[1]


class RateSeries(Series):
    """Events per second in each complete bucket; the bucket under way is left out (half a
    second of a second would read as half the rate)."""

    def __init__(self, length: int = 120, bucket: float = 1.0,
                 clock: Clock = time.monotonic) -> None:
        super().__init__(length, bucket, clock)
        self.total = 0  # every event added, however old

    def add(self, count: int = 1) -> None:
        """``count`` events happened now."""
        self.total += count  # drawings do not change: they show the complete buckets only
        now = self._now()
        points = self._points
        if points and points[-1][0] == now:
            points[-1][1] += count
            return
        points.append([now, count])
        oldest = now - self.length  # the first bucket values() may show
        while points[0][0] < oldest:
            points.popleft()

    def values(self) -> list[float | None]:
        now = self._now()
        counts = dict(self._points)
        return [counts.get(b, 0) / self.bucket
                for b in range(max(self._begun, now - self.length), now)]

    @property
    def latest(self) -> float | None:
        """The rate in the last complete bucket."""
        last = self._now() - 1
        if last < self._begun:
            return None
        for bucket, count in reversed(self._points):
            if bucket <= last:
                return count / self.bucket if bucket == last else 0.0
        return 0.0

    @property
    def busy(self) -> bool:
        """Whether the last complete bucket or the one under way had events."""
        return bool(self._points) and self._points[-1][0] >= self._now() - 1


class LevelSeries(Series):
    """The highest level in each complete bucket, so that a level that rose and fell within
    a bucket still shows, and the level now in the bucket under way; a bucket with nothing
    set keeps the level before it. Unknown (None) before the first ``set``."""

    def __init__(self, length: int = 120, bucket: float = 1.0,
                 clock: Clock = time.monotonic, value: float | None = None) -> None:
        super().__init__(length, bucket, clock)
        if value is not None:
            self.set(value)

    def set(self, value: float) -> None:
        """The level is ``value`` from now on."""
        self._changes += 1
        now = self._now()
        points = self._points  # [bucket, last level, highest level]
        if points and points[-1][0] == now:
            point = points[-1]
            point[1] = value
            point[2] = max(point[2], value)
            return
        points.append([now, value, max(value, points[-1][1]) if points else value])
        first = now - self.length + 1
        while len(points) > 1 and points[1][0] <= first:
            points.popleft()  # the level at the window's start is the point after it

    @property
    def latest(self) -> float | None:
        return self._points[-1][1] if self._points else None

    def values(self) -> list[float | None]:
        now = self._now()
        points, at, level = list(self._points), 0, None
        out: list[float | None] = []
        for b in range(max(self._begun, now - self.length + 1), now + 1):
            while at < len(points) and points[at][0] < b:
                level = points[at][1]
                at += 1
            out.append(points[at][2] if at < len(points) and points[at][0] == b else level)
        if points and points[-1][0] == now:
            out[-1] = points[-1][1]
        return out

    @property
    def busy(self) -> bool:
        """Whether the level rose higher in the bucket under way than it is now (its peak
        shows once the bucket is complete)."""
        point = self._points[-1] if self._points else None
        return point is not None and point[0] == self._now() and point[2] != point[1]


def number(value: float) -> str:
    """A short figure: 3, 2.5, 140, 12k."""
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value == int(value):
        return str(int(value))
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def duration(seconds: float) -> str:
    """45 s, 2 min, 2.5 min."""
    return f"{seconds:g} s" if seconds < 90 else f"{seconds / 60:.3g} min"


@lru_cache(maxsize=1024)
def _abscissae(count: int, width: int) -> tuple[str, ...]:
    step = (width - 2) / max(count - 1, 1)
    return tuple(f"{1 + i * step:.1f}".removesuffix(".0") for i in range(count))


#: The line's colour: JupyterLab's brand blue, which reads on light and dark themes alike.
STROKE = "#1976d2"
_CHAR = 6.6  # the width of a character of the label, in pixels (11 px tabular figures)


def sparkline(values: Sequence[float | None], width: int = 120, height: int = 18, *,
              title: str, unit: str = "", latest: float | None = None) -> str:
    """An SVG of ``values`` as a line across ``width`` pixels, from 0 (bottom) to their max
    (top), oldest on the left, no axes; on its right, the value now (``latest``, else the
    last value) and the max as text. None is unknown: not drawn. ``title`` names what it
    shows (read out by screen readers, shown as a tooltip); the value now and the max are
    added to it. Inside a flat stretch only its two ends are points."""
    known = [(i, v) for i, v in enumerate(values) if v is not None]
    top = max((v for _, v in known), default=0)
    if latest is None and known:
        latest = known[-1][1]
    if latest is None:
        label, said = "–", "no data yet"
    else:
        label = f"now {number(latest)}{unit} · max {number(top)}"
        said = f"now {number(latest)}{unit}, max {number(top)}{unit}"
    xs = _abscissae(len(values), width)
    scale = (height - 3) / top if top else 0.0
    bottom = height - 1.5
    points: list[tuple[str, str]] = []
    last = len(known) - 1
    for at, (i, v) in enumerate(known):
        if 0 < at < last and known[at - 1][1] == v == known[at + 1][1]:
            continue  # the middle of a flat stretch: the line passes through it anyway
        points.append((xs[i], f"{bottom - v * scale:.1f}"))
    line = dot = ""
    if len(points) > 1:
        line = (f"<polyline points='{' '.join(f'{x},{y}' for x, y in points)}' fill='none' "
                f"stroke='{STROKE}' stroke-width='1.5' stroke-linejoin='round'/>")
    if points:
        x, y = points[-1]
        dot = f"<circle cx='{x}' cy='{y}' r='2' fill='{STROKE}'/>"
    total = width + 6 + math.ceil(len(label) * _CHAR)
    # the label's figures are tabular where the page says so (the tables do): SVG text
    # inherits the font of the HTML around it
    named = html.escape(f"{title}: {said}", quote=False)
    return (f"<svg xmlns='http://www.w3.org/2000/svg' role='img' width='{total}' "
            f"height='{height}' style='vertical-align:middle'><title>{named}</title>"
            f"{line}{dot}<text x='{width + 6}' y='{height / 2 + 4:g}' font-size='11' "
            f"fill='currentColor'>{html.escape(label)}</text></svg>")
