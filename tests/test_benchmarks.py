"""The benchmarks still run against the current client and broker (smoke tests: they assert
that every case produced its figures, never how fast they are).

The quick runs of the selected tests start together when the first of them does, two at a
time (``quick_runs``), and each test checks its own: a run keeps about one of the two cores of
a small machine busy (its clients and servers take turns, and it waits on processes
starting), so two at once take little more than one. They assert nothing about speed, so
sharing the machine changes none of what they check."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
BENCH = BENCHMARKS / "bench_workspace.py"
BENCH_KV = BENCHMARKS / "bench_kv.py"
BENCH_PUBSUB = BENCHMARKS / "bench_pubsub.py"
BENCH_SLEIGH = BENCHMARKS / "bench_sleigh.py"
BENCH_START = BENCHMARKS / "bench_broker_start.py"
BENCH_CURVE = BENCHMARKS / "bench_curve.py"
BENCH_SCALE = BENCHMARKS / "bench_scale.py"
BENCH_DURABLE = BENCHMARKS / "bench_durable.py"
BENCH_WEB = BENCHMARKS / "bench_web.py"
BENCH_SHARDS = BENCHMARKS / "bench_shards.py"
AT_ONCE = 2  # quick runs at the same time
#: The scale benchmark draws its plot where matplotlib is installed (the bench extra).
PLOTTING = importlib.util.find_spec("matplotlib") is not None


class QuickRun(NamedTuple):
    """``script --quick``, with ``--plot`` if ``plot``, within ``timeout`` seconds; it takes
    about ``takes`` seconds alone on two cores (the longest start first, so that the runs
    going at once end at about the same time)."""

    script: Path
    takes: float
    plot: bool = False
    timeout: float = 230.0


class Outcome(NamedTuple):
    stdout: str  # what the script printed
    saved: dict  # the result it saved (``--output``)


def checks(script: Path, takes: float, plot: bool = False, timeout: float = 230.0
           ) -> Callable:
    """Mark a test as the one that checks ``script``'s quick run (``quick_runs`` starts it)."""
    def mark(test: Callable) -> Callable:
        test.quick_run = QuickRun(script, takes, plot, timeout)
        return test
    return mark


class QuickRuns:
    """Quick runs started ahead of the tests that check them, ``AT_ONCE`` at a time, the
    longest first; each writes its files in ``folder``."""

    def __init__(self, folder: Path, runs: list[QuickRun]) -> None:
        self.folder = folder
        self._pool = ThreadPoolExecutor(AT_ONCE, thread_name_prefix="quick-run")
        self._started: dict[Path, Future] = {
            run.script: self._pool.submit(self._run, run)
            for run in sorted(runs, key=lambda run: run.takes, reverse=True)}

    def outcome(self, script: Path) -> Outcome:
        """What ``script``'s quick run printed and saved, once it is done; it must succeed."""
        return self._started[script].result()

    def plot(self, script: Path) -> Path:
        return self.folder / f"{script.stem}.png"

    def close(self) -> None:
        """Drop the runs not started (their tests were not reached); the others finish."""
        self._pool.shutdown(cancel_futures=True)

    def _run(self, run: QuickRun) -> Outcome:
        output = self.folder / f"{run.script.stem}.json"
        plot = ["--plot", str(self.plot(run.script))] if run.plot else []
        result = subprocess.run([sys.executable, str(run.script), "--quick", "--output",
                                 str(output), *plot], capture_output=True, text=True,
                                timeout=run.timeout)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return Outcome(result.stdout, json.loads(output.read_text()))


@pytest.fixture(scope="module")
def quick_runs(request, tmp_path_factory):
    """The quick runs of this module's selected tests, all started when the first needs one."""
    runs = [item.function.quick_run for item in request.session.items
            if isinstance(item, pytest.Function) and item.module is request.module
            and hasattr(item.function, "quick_run")]
    started = QuickRuns(tmp_path_factory.mktemp("quick-runs"), runs)
    yield started
    started.close()


@pytest.mark.timeout(240)
@checks(BENCH, takes=15)
def test_quick_benchmark_runs_and_reports_every_case(quick_runs):
    stdout, saved = quick_runs.outcome(BENCH)
    medians = saved["medians"]
    for figure in ("wb.rt_same.store_per_s", "wb.rt_split.fetch_per_s", "wb.handoff.median_us",
                   "wb.clients.total_per_s", "wb.big.rt_s", "echo.rt_same.rt_per_s",
                   "relay.handoff.median_us"):
        assert medians[figure] > 0, figure
    assert "store rt/s vs echo rt/s" in stdout
    assert saved["meta"]["broker_log_problems"] == []


#: Every figure of one key-value client, per case.
KV_FIGURES = {
    "rt": ("set_per_s", "get_per_s"),
    "multi": ("set_multi_s", "get_multi_s", "set_100_s", "get_100_s", "set_multi_keys_per_s",
              "get_multi_keys_per_s", "set_speedup_x", "get_speedup_x"),
    "clients": ("total_per_s",),
}


@pytest.mark.timeout(240)
@checks(BENCH_KV, takes=10)
def test_quick_kv_benchmark_runs_and_reports_every_case(quick_runs):
    stdout, saved = quick_runs.outcome(BENCH_KV)
    meta, medians = saved["meta"], saved["medians"]
    # The workbench's clients are always measured; an anchor only where its server runs, and
    # a skipped one is said so.
    systems = ["kv"]
    if importlib.util.find_spec("workbench.memcache") is not None:
        systems.append("wbmc")
    for anchor, system in (("memcached", "pymemcache"), ("redis", "redis")):
        if meta[f"{anchor}_skipped"]:
            assert f"{anchor} anchors SKIPPED" in stdout
        else:
            systems.append(system)
    layouts = ["same", "split"] if len(os.sched_getaffinity(0)) > 1 else ["same"]
    cases = {"clients": KV_FIGURES["clients"]}
    for layout in layouts:
        cases[f"rt_{layout}"] = KV_FIGURES["rt"]
        cases[f"multi_{layout}"] = KV_FIGURES["multi"]
    expected = {f"{system}.{case}.{figure}" for system in systems
                for case, figures in cases.items() for figure in figures}
    assert expected <= medians.keys(), sorted(expected - medians.keys())
    for figure, value in medians.items():
        assert value > 0, figure
    assert "KeyValueStore get_multi vs 100 gets" in stdout
    assert meta["broker_log_problems"] == []


#: Every figure of one pub/sub system, per case.
PUBSUB_FIGURES = {
    "latency": ("median_us", "p99_us", "min_us", "max_us"),
    "rate": ("delivered_per_s", "publish_per_s"),
}


@pytest.mark.timeout(240)
@checks(BENCH_PUBSUB, takes=6)
def test_quick_pubsub_benchmark_runs_and_reports_every_case(quick_runs):
    stdout, saved = quick_runs.outcome(BENCH_PUBSUB)
    meta, medians = saved["meta"], saved["medians"]
    # MessageBus is always measured; mq once workbench.mq is there, Redis where its server
    # runs, and a skipped one is said so.
    expected = {f"wb.{case}.{figure}" for case, figures in PUBSUB_FIGURES.items()
                for figure in figures}
    if meta["mq_skipped"]:
        assert "mq cases SKIPPED" in stdout
    else:
        expected |= {f"mq.{case}.{figure}" for case, figures in PUBSUB_FIGURES.items()
                     for figure in figures}
    if meta["redis_skipped"]:
        assert "redis anchors SKIPPED" in stdout
    else:
        expected |= {f"redis.{case}.{figure}" for case, figures in PUBSUB_FIGURES.items()
                     for figure in figures}
        expected |= {f"redis.pipelined.{figure}" for figure in PUBSUB_FIGURES["rate"]}
    assert expected <= medians.keys(), sorted(expected - medians.keys())
    for figure, value in medians.items():
        assert value > 0, figure
    # Losses are counted for every case of every run, and said when there are any.
    for run in saved["runs"]:
        for case, figures in run["results"].items():
            delivery = figures["delivery"]
            assert delivery["received"] + delivery["lost"] == delivery["sent"], case
            assert delivery["received"] > 0, case
    assert ("did not deliver every message" in stdout) == any(
        figures["delivery"]["lost"] or figures["delivery"]["dropped"]
        or figures["delivery"]["out_of_order"]
        for run in saved["runs"] for figures in run["results"].values())
    assert "MessageBus delivery rate vs redis-py PUBLISH" in stdout
    assert meta["broker_log_problems"] == []


#: Every figure of one worker pool, per case.
SLEIGH_FIGURES = {
    "start": ("start_s", "stop_s", "gone_s"),
    "tiny": ("tasks_per_s",),
    "batched": ("tasks_per_s",),
    "latency": ("median_us", "p99_us", "min_us", "max_us"),
    "big": ("rt_s",),
}


@pytest.mark.timeout(240)
@checks(BENCH_SLEIGH, takes=10)
def test_quick_sleigh_benchmark_runs_and_reports_every_case(quick_runs):
    stdout, saved = quick_runs.outcome(BENCH_SLEIGH)
    meta, medians = saved["meta"], saved["medians"]
    # The standard library's pools always run; the Sleigh wherever workbench has one; --quick
    # leaves ipyparallel and dask out (installed or not) and says so.
    systems = ["mp", "ppe"]
    extra = {"mp.submit.tasks_per_s", "ppe.submit.tasks_per_s", "mp.auto.tasks_per_s"}
    if importlib.util.find_spec("workbench.sleigh") is None:
        assert "Sleigh (wb) SKIPPED" in stdout
    else:
        assert not meta["wb_skipped"], meta["wb_skipped"]
        systems.append("wb")
        extra |= {f"wb.{case}.{figure}" for case, figures in (
            ("start_own", SLEIGH_FIGURES["start"]), ("submit", ("tasks_per_s",)),
            ("each", ("tasks_per_s",)), ("auto", ("tasks_per_s",))) for figure in figures}
        assert "round trip median < 1 ms" in stdout
    for name in ("ipp", "dask"):
        assert meta[f"{name}_skipped"]
        assert f"({name}) SKIPPED" in stdout
    expected = extra | {f"{system}.{case}.{figure}" for system in systems
                        for case, figures in SLEIGH_FIGURES.items() for figure in figures}
    assert expected <= medians.keys(), sorted(expected - medians.keys())
    for figure, value in medians.items():
        assert value > 0, figure
    assert meta["broker_log_problems"] == []


@pytest.mark.timeout(240)
@checks(BENCH_CURVE, takes=4)
def test_quick_curve_benchmark_runs_and_reports_every_case(quick_runs):
    stdout, saved = quick_runs.outcome(BENCH_CURVE)
    medians = saved["medians"]
    layouts = ["same", "split"] if len(os.sched_getaffinity(0)) > 1 else ["same"]
    expected = {f"{system}.rt_{layout}.{figure}" for layout in layouts
                for system, figures in (("wb_curve", ("store_per_s", "fetch_per_s")),
                                        ("wb_tcp", ("store_per_s", "fetch_per_s")),
                                        ("echo_curve", ("rt_per_s",)), ("echo", ("rt_per_s",)))
                for figure in figures}
    expected |= {f"{system}.big.rt_s" for system in ("wb_curve", "wb_tcp", "echo_curve", "echo")}
    assert expected <= medians.keys(), sorted(expected - medians.keys())
    for figure, value in medians.items():
        assert value > 0, figure
    assert "CURVE store rt/s vs pyzmq CURVE echo" in stdout
    assert "100 MiB store+fetch, CURVE vs pyzmq CURVE echo" in stdout
    assert saved["meta"]["broker_log_problems"] == []


@pytest.mark.timeout(120)
@checks(BENCH_START, takes=2)
def test_quick_broker_start_benchmark_measures_the_start(quick_runs):
    stdout, saved = quick_runs.outcome(BENCH_START)
    for figure in ("interpreter_ms", "import_ms", "answers_ms"):
        assert saved["medians"][figure] > 0, figure
    assert "python -m workbench broker, until it answers" in stdout
    assert "workbench.broker.server" in saved["modules"]


#: Every figure of one pool size.
SCALE_FIGURES = ("start_s", "stop_s", "gone_s", "auto_per_s", "each1_per_s", "rt_median_us",
                 "rt_p99_us", "auto_broker_us", "each1_broker_us", "auto_requests_per_task",
                 "each1_requests_per_task")


@pytest.mark.timeout(120)
@checks(BENCH_SCALE, takes=10, plot=PLOTTING, timeout=110)
def test_quick_scale_benchmark_measures_every_size_and_the_session_load(quick_runs):
    # The plot where matplotlib is installed; the figures everywhere.
    stdout, saved = quick_runs.outcome(BENCH_SCALE)
    medians = saved["medians"]
    expected = {f"w{size}.pool.{figure}" for size in (2, 10) for figure in SCALE_FIGURES}
    expected |= {f"broker.sessions.{figure}" for figure in (
        "idle_cpu_pct", "idle_median_us", "idle_p99_us", "load_cpu_pct", "load_median_us",
        "load_p99_us")}
    assert expected <= medians.keys(), sorted(expected - medians.keys())
    for figure in expected - {"w2.pool.auto_broker_us", "w10.pool.auto_broker_us",
                              "broker.sessions.idle_cpu_pct"}:  # CPU ticks can read 0
        assert medians[figure] > 0, figure
    counts = saved["runs"][0]["results"]["broker.sessions"]["counts"]
    assert counts["alive"] == counts["sessions"] == 200
    assert counts["listed_by_broker"] >= 200
    assert "tiny tasks/s, own batching, 10 vs 2 workers" in stdout
    if PLOTTING:
        assert quick_runs.plot(BENCH_SCALE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["meta"]["broker_log_problems"] == []


@pytest.mark.timeout(240)
@checks(BENCH_DURABLE, takes=15)
def test_quick_durable_benchmark_runs_and_reports_every_case(quick_runs):
    stdout, saved = quick_runs.outcome(BENCH_DURABLE)
    meta, medians = saved["meta"], saved["medians"]
    # The broker at every policy always; Redis at every policy where its server runs, and a
    # skipped one is said so.
    systems = ["wb", "wb_everysec", "wb_always"]
    if meta["redis_skipped"]:
        assert "redis anchors SKIPPED" in stdout
    else:
        systems += ["redis", "redis_everysec", "redis_always"]
    layouts = ["same", "split"] if len(os.sched_getaffinity(0)) > 1 else ["same"]
    expected = {f"{system}.rt_{layout}.{figure}" for system in systems for layout in layouts
                for figure in ("store_per_s", "server_cpu_us")}
    expected |= {f"{system}.clients.total_per_s" for system in systems}
    expected |= {f"wb.paired_{layout}.{policy}_{unit}" for layout in layouts
                 for policy in ("none", "everysec") for unit in ("per_s", "cpu_us")}
    expected |= {f"{kind}.restart_{data}.start_s" for kind in {s.split("_")[0] for s in systems}
                 for data in ("empty", "small", "big")}
    assert expected <= medians.keys(), sorted(expected - medians.keys())
    for figure, value in medians.items():
        assert value > 0, figure
    # The restart data holds what it says: the values, written by the broker (and Redis).
    assert meta["restart_values"] == {"empty": 0, "small": 20_000, "big": 16}
    assert meta["restart_data"]["wb.big_bytes"] > 16 << 20
    assert "store rt/s, everysec vs no data dir" in stdout
    assert "restart, many small values" in stdout
    assert meta["broker_log_problems"] == []


#: The CPU figures of each system's one-client cases: whose CPU each measures.
WEB_CPU = {"api": ("server", "broker", "client"), "bare": ("server", "client"),
           "py": ("broker", "client")}


@pytest.mark.timeout(120)
@checks(BENCH_WEB, takes=10, timeout=110)
def test_quick_web_benchmark_runs_and_reports_every_case(quick_runs):
    stdout, saved = quick_runs.outcome(BENCH_WEB)
    medians = saved["medians"]
    expected = {f"{system}.rt_{op}.{figure}" for system, roles in WEB_CPU.items()
                for op in ("store", "find")
                for figure in ("requests_per_s", *(f"{role}_cpu_us" for role in roles))}
    expected |= {f"{system}.clients_{op}.{figure}" for system in ("api", "bare")
                 for op in ("store", "find") for figure in ("total_per_s", "server_cpu_us")}
    expected |= {f"api.clients_{op}.broker_cpu_us" for op in ("store", "find")}
    expected |= {f"{system}.events.{figure}" for system in ("api", "py")
                 for figure in ("median_us", "p90_us", "min_us", "max_us")}
    assert expected <= medians.keys(), sorted(expected - medians.keys())
    for figure, value in medians.items():
        assert value > 0, figure
    assert "store/s vs bare POST, 1 client" in stdout
    assert "findTry/s vs bare GET, 4 clients" in stdout
    assert "SSE delivery latency median < 5 ms" in stdout
    # The broker's, the gateway's and the bare server's logs hold no error.
    assert saved["meta"]["broker_log_problems"] == []


@pytest.mark.timeout(120)
@checks(BENCH_SHARDS, takes=8, timeout=110)
def test_quick_shards_benchmark_runs_and_reports_every_case(quick_runs):
    stdout, saved = quick_runs.outcome(BENCH_SHARDS)
    medians = saved["medians"]
    layouts = ["same", "split"] if len(os.sched_getaffinity(0)) > 1 else ["same"]
    expected = {f"b{size}.clients.{figure}" for size in (1, 2, 3)
                for figure in ("total_per_s", "brokers_cpu_us")}
    expected |= {f"{system}.rt_{layout}.{figure}" for system in ("cluster", "single")
                 for layout in layouts for figure in ("store_per_s", "fetch_per_s", "open_us")}
    expected |= {f"cluster.rt_{layout}.place_us" for layout in layouts}
    expected |= {f"wb.paired_{layout}.{system}_{op}_per_s" for layout in layouts
                 for system in ("cluster", "single") for op in ("store", "fetch")}
    expected |= {f"{how}.{request}.round_s" for how in ("multicast", "unicast")
                 for request in ("wait", "list")}
    assert expected <= medians.keys(), sorted(expected - medians.keys())
    for figure, value in medians.items():
        assert value > 0, figure
    # The gateways waited as told: a round of three sequential unicasts takes three waits.
    assert medians["unicast.wait.round_s"] >= 3 * 0.05
    assert "store rt/s, 3-broker cluster vs one broker" in stdout
    assert "multicast vs 3 sequential unicasts, a 50 ms wait" in stdout
    # The brokers' and the gateways' logs hold no error.
    assert saved["meta"]["broker_log_problems"] == []
