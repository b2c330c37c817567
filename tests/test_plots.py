"""The widgets' plots, pure: time-bucketed series driven by a fake clock, and the SVG drawn."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from workbench.jupyter.plots import LevelSeries, RateSeries, duration, number, sparkline

SVG = "{http://www.w3.org/2000/svg}"


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def points(svg: str) -> list[tuple[float, float]]:
    line = ET.fromstring(svg).find(f"{SVG}polyline")
    assert line is not None, svg
    return [tuple(map(float, p.split(","))) for p in line.get("points").split()]


# ---------------------------------------------------------------------------- rates

def test_rates_count_events_per_bucket_and_leave_out_the_bucket_under_way():
    clock = Clock(1000.2)
    rates = RateSeries(length=4, bucket=0.5, clock=clock)
    rates.add(3)
    clock.now = 1000.4
    rates.add()  # the same bucket: [1000.0, 1000.5)
    assert rates.values() == [] and rates.latest is None  # under way: not shown yet
    clock.now = 1000.6
    rates.add(2)
    assert rates.values() == [8.0]  # 4 events in half a second
    clock.now = 1001.2
    assert rates.values() == [8.0, 4.0] and rates.latest == 4.0
    clock.now = 1001.7  # a quiet bucket more
    assert rates.values() == [8.0, 4.0, 0.0] and rates.latest == 0.0
    clock.now = 1002.6
    assert rates.values() == [4.0, 0.0, 0.0, 0.0]  # four buckets at the most
    assert rates.total == 6


def test_rates_keep_a_bounded_number_of_buckets():
    clock = Clock()
    rates = RateSeries(length=10, bucket=1.0, clock=clock)
    for second in range(1000):
        clock.now = 1000.0 + second
        rates.add(second % 3)
        assert rates.stored <= 11
    assert rates.values() == [float(s % 3) for s in range(989, 999)]  # the last 10 complete
    assert rates.total == sum(s % 3 for s in range(1000))
    assert rates.span == 10.0


def test_rates_are_busy_until_a_quiet_bucket_is_complete():
    clock = Clock(1000.25)
    rates = RateSeries(length=5, bucket=1.0, clock=clock)
    assert not rates.busy
    rates.add()
    assert rates.busy and rates.until_next() == pytest.approx(0.75)
    clock.now = 1001.5  # the busy bucket is the last complete one: drawn, not yet followed
    assert rates.busy
    clock.now = 1002.0  # a complete quiet bucket follows it: the drawing is final
    assert not rates.busy and rates.values()[-2:] == [1.0, 0.0]


def test_a_series_needs_buckets():
    with pytest.raises(ValueError, match="2 buckets or more"):
        RateSeries(length=1)
    with pytest.raises(ValueError, match="positive width"):
        LevelSeries(bucket=0)


# ---------------------------------------------------------------------------- levels

def test_levels_fill_forward_and_are_unknown_before_the_first():
    clock = Clock(999.5)
    level = LevelSeries(length=5, bucket=1.0, clock=clock)
    clock.now = 1000.0
    assert level.values() == [None, None] and level.latest is None
    level.set(3)
    clock.now = 1001.2
    level.set(4)
    level.set(7)  # the same bucket, under way: the level now
    assert level.values() == [None, 3, 7]
    clock.now = 1003.9
    assert level.values() == [None, 3, 7, 7, 7]
    clock.now = 1004.0
    assert level.values() == [3, 7, 7, 7, 7]  # five buckets at the most
    assert level.latest == 7


def test_a_level_that_rose_and_fell_within_a_bucket_shows_its_peak():
    clock = Clock(1000.0)
    level = LevelSeries(length=4, bucket=1.0, clock=clock, value=2)
    clock.now = 1001.1
    level.set(2000)  # a burst of stores...
    clock.now = 1001.8
    level.set(0)  # ...all fetched within the same second
    assert level.values() == [2, 0]  # under way: the level now
    assert level.busy and level.until_next() == pytest.approx(0.2)  # the peak is to come
    clock.now = 1003.5
    assert level.values() == [2, 2000, 0, 0] and level.latest == 0
    assert "queue over the last 4 s: now 0, max 2000" in level.plot("queue")
    assert not level.busy


def test_levels_keep_the_level_from_before_the_window_and_stay_bounded():
    clock = Clock(0.0)
    level = LevelSeries(length=4, bucket=2.0, clock=clock, value=5)
    clock.now = 10_000.0  # nothing set for a long time: the level holds
    assert level.values() == [5, 5, 5, 5]
    for step in range(500):
        clock.now = 10_000.0 + step
        level.set(step)
        assert level.stored <= 5
    assert level.values() == [493, 495, 497, 499]  # the last level of each 2 s bucket


def test_a_drawing_is_kept_until_news_or_a_new_bucket():
    clock = Clock(1000.0)
    level = LevelSeries(length=5, clock=clock, value=1)
    first = level.plot("x")
    assert level.plot("x") is first
    level.set(2)
    second = level.plot("x")
    assert second is not first and "now 2" in second
    clock.now = 1001.0
    assert level.plot("x") is not second
    rates = RateSeries(length=5, clock=clock)
    drawn = rates.plot("r")
    rates.add()  # into the bucket under way, which no drawing shows
    assert rates.plot("r") is drawn


# ---------------------------------------------------------------------------- drawing

def test_sparkline_is_svg_with_a_point_per_value_and_says_what_it_shows():
    svg = sparkline([1, 3, 2, 4], width=100, height=20, title="x & <y>", unit="/s")
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    assert root.find(f"{SVG}title").text == "x & <y>: now 4/s, max 4/s"
    assert root.find(f"{SVG}text").text == "now 4/s · max 4"
    drawn = points(svg)
    assert [x for x, _ in drawn] == [1.0, 33.7, 66.3, 99.0]  # oldest on the left
    ys = [y for _, y in drawn]
    assert ys[3] == min(ys) and ys[0] == max(ys)  # the max at the top, the least lowest
    assert 0 <= min(ys) and max(ys) <= 20
    dot = root.find(f"{SVG}circle")
    assert (float(dot.get("cx")), float(dot.get("cy"))) == drawn[-1]  # the latest, marked


def test_sparkline_draws_the_ends_of_flat_stretches_and_skips_the_unknown():
    drawn = points(sparkline([None, None, 0, 0, 0, 0, 5, 5, 5, 0], title="t"))
    assert len(drawn) == 5  # 0 (start), 0 (end of the run), 5, 5, 0
    assert drawn[0][0] > 1  # nothing drawn where nothing was known
    assert drawn[0][1] == drawn[1][1] == drawn[4][1] > drawn[2][1] == drawn[3][1]


def test_sparkline_of_nothing_known_or_all_zero():
    empty = ET.fromstring(sparkline([None, None], title="t"))
    assert empty.find(f"{SVG}polyline") is None
    assert empty.find(f"{SVG}title").text == "t: no data yet"
    zeros = sparkline([0.0] * 30, height=18, title="t")
    assert [y for _, y in points(zeros)] == [16.5, 16.5]  # flat on the bottom
    assert ET.fromstring(zeros).find(f"{SVG}title").text == "t: now 0, max 0"


@pytest.mark.parametrize("value, text", [(0, "0"), (3.0, "3"), (2.54, "2.5"), (140.4, "140"),
                                         (12_345, "12k")])
def test_numbers_are_short(value, text):
    assert number(value) == text


def test_durations_are_short():
    assert [duration(s) for s in (4, 89, 120, 150, 180)] == [
        "4 s", "89 s", "2 min", "2.5 min", "3 min"]
