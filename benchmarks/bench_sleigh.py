"""Worker-pool benchmark: the workbench's Sleigh against the pools Python users already have.

Pools measured, 2 worker processes each, everything on one machine:

* ``wb``: ``workbench.Sleigh`` on a broker this script starts (``map``, ``submit``,
  ``eachElem``), skipped with a note while ``from workbench import Sleigh`` fails;
* ``mp``: ``multiprocessing.Pool(2)``; ``ppe``: ``concurrent.futures.ProcessPoolExecutor(2)``
  (both fork);
* ``ipp``: ipyparallel, ``ipyparallel.Cluster(n=2)``, tasks through a ``LoadBalancedView``;
* ``dask``: dask.distributed, ``LocalCluster(n_workers=2, threads_per_worker=1,
  processes=True)`` and a ``Client``.

ipyparallel and dask are optional (the ``bench`` extra installs them): when they do not import
they are skipped with a note, and ``--quick`` leaves them out (their clusters take seconds to
start). The task is the anchors' (see the ipyparallel/dask anchors): a closure
``lambda x: x + step``; multiprocessing and concurrent.futures cannot pickle a closure, so they
get ``functools.partial(operator.add, step)``, which computes the same.

What it measures, once per run:

1. cold start: in a fresh process (imports done before the clock starts), the constructor until
   the result of a first task is back; then the stop call, and until every process the pool ran
   has exited. The Sleigh twice: on the benchmark's running broker, and on a broker of its own
   started in the timed span (``start_own``: what a notebook with no broker gets, and what the
   anchors' figures include: their controller or scheduler);
2. tiny tasks, one per message: 2,000 calls in one ``map`` with chunksize 1 (dask:
   ``Client.map`` + ``gather``), tasks/s; a pool fast enough repeats it until 0.3 s have
   passed. Also, for the Sleigh, multiprocessing and concurrent.futures, 2,000 ``submit``s
   (``apply_async``) and then every result (``submit``), and ``eachElem`` with ``chunkSize=1``
   (``each``);
3. tiny tasks, batched: 20,000 calls in one ``map`` with chunksize 100 (dask: ``Client.map``
   over 100-item chunks), repeated the same way; and the pool's own batching (``auto``):
   ``eachElem`` without a chunkSize, ``Pool.map``'s default chunks;
4. one task's round trip: 20 warm-up, then 200 sequential submit-and-wait calls (``submit``,
   ``apply``); median and p99;
5. a 100 MiB float64 numpy array to a worker and back, a task returning its argument: the median
   of 2 round trips (each pool did one untimed when it started).

How: as the other benchmarks (see ``_harness``). Each pool lives for the whole benchmark in a
driver process of its own (this script run as ``--child driver``), asked for one case at a time,
so no pool's threads share a process with another's. Every case runs once per run, each group's
pools in an order that rotates from run to run; figures are medians over the runs (default 5),
a ratio is the median of the per-run ratios; each run records the CPU used outside the benchmark
(the pools' processes are the benchmark's). Every process a pool starts is stopped on exit,
failure, Ctrl-C or SIGTERM, those that outlive their pool's stop call too (ipyparallel's engine
nannies), and the drivers die with the benchmark.

    python benchmarks/bench_sleigh.py [--runs N] [--quick] [--only GROUP] [--output JSON]

prints the figures, ratios and targets, and writes the raw results to
``benchmarks/results/sleigh-latest.json``. ``--quick`` (one short run, no ipyparallel or dask)
is the smoke test.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import operator
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Callable, NamedTuple

import _harness as h

RESULTS = h.HERE / "results" / "sleigh-latest.json"
WORKERS = 2
STEP = 1  # what the task adds
#: How long one case may take in a driver (ipyparallel's 2,000 unbatched tasks: ~10 s).
CASE_TIMEOUT = 180.0
#: How long a pool may take to start (ipyparallel: ~7 s on the project VM when quiet).
POOL_START_TIMEOUT = 90.0
#: How long the processes of a stopped pool get to exit on their own before they are killed
#: (ipyparallel's engine nannies linger about 3 s after its stop call returns).
GONE_TIMEOUT = 8.0


@dataclass(frozen=True)
class Settings(h.Settings):
    tiny_calls: int = 2_000  # the anchors' method: 2,000 calls of the closure
    batched_calls: int = 20_000
    chunksize: int = 100
    min_time_s: float = 0.3  # a fast pool repeats a map until this long, to time it reliably
    latency_calls: int = 200  # the anchors' method: median of 200 sequential calls
    latency_warmup: int = 20
    big_mib: int = 100
    big_timed: int = 2
    heavy_anchors: bool = True  # ipyparallel and dask: seconds to start, seconds per case


QUICK = Settings(runs=1, tiny_calls=500, batched_calls=5_000, min_time_s=0.1,
                 latency_calls=100, latency_warmup=10, big_mib=20, big_timed=1,
                 heavy_anchors=False)


# ============================================================================ the pools


def closure_task() -> Callable[[int], int]:
    """The anchors' task: a closure, which a pool must ship by value."""
    step = STEP
    return lambda x: x + step


def picklable_task() -> Callable[[int], int]:
    """The same computation for the pools that pickle functions by reference."""
    return partial(operator.add, STEP)


def same(value: Any) -> Any:
    """The 100 MiB task: back to the caller as it came."""
    return value


class Pool(NamedTuple):
    """One pool, driven the same way whichever it is: its own calls, at most in a lambda that
    collects the results (every pool pays that one Python call alike). Every call blocks until
    every result is back."""

    map: Callable[[Callable, list, int], list]  # (fn, items, chunksize) -> results in order
    call: Callable[[Callable, Any], Any]  # one task: submit, wait for its result
    close: Callable[[], Any]  # the pool's own stop
    task: Callable[[], Callable]  # makes the tiny task this pool is given
    submit_each: Callable[[Callable, list], list] | None = None  # one submit per item
    auto_map: Callable[[Callable, list], list] | None = None  # the pool's own batching
    each_elem: Callable[[Callable, list], list] | None = None  # eachElem, one item per task


def sleigh_missing() -> str | None:
    """Why the workbench's Sleigh cannot be measured here, or None."""
    try:
        from workbench import Sleigh  # noqa: F401
    except Exception as exc:  # not there yet, or broken
        return f"from workbench import Sleigh fails ({type(exc).__name__}: {exc})"
    return None


def open_wb(port: int | None) -> Pool:
    """A Sleigh on the broker at ``port``, or with ``port`` None on a broker of its own (the
    workbench's embedded broker, as a notebook with no broker running gets)."""
    from workbench import Sleigh
    from workbench.client import embedded

    own_broker = port is None
    sleigh = Sleigh(workerCount=WORKERS, broker=embedded.embedded_broker() if own_broker
                    else f"{h.LOOPBACK}:{port}")

    def close() -> None:
        sleigh.stop()
        if own_broker:
            embedded._stop_embedded()  # what exiting the process would do

    return Pool(map=lambda fn, items, chunksize: list(sleigh.map(fn, items,
                                                                  chunksize=chunksize)),
                call=lambda fn, x: sleigh.submit(fn, x).result(), close=close,
                task=closure_task,
                submit_each=lambda fn, items: [f.result() for f in
                                               [sleigh.submit(fn, x) for x in items]],
                auto_map=sleigh.eachElem,  # without a chunkSize it chooses its chunks
                each_elem=lambda fn, items: sleigh.eachElem(fn, items, chunkSize=1))


def open_mp(port: int) -> Pool:
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(WORKERS)

    def close() -> None:
        pool.terminate()  # what leaving `with Pool(...)` does
        pool.join()

    return Pool(map=pool.map, call=lambda fn, x: pool.apply(fn, (x,)), close=close,
                task=picklable_task,
                submit_each=lambda fn, items: [r.get() for r in
                                               [pool.apply_async(fn, (x,)) for x in items]],
                auto_map=pool.map)


def open_ppe(port: int) -> Pool:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    executor = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork"))
    return Pool(map=lambda fn, items, chunksize: list(executor.map(fn, items,
                                                                   chunksize=chunksize)),
                call=lambda fn, x: executor.submit(fn, x).result(),
                close=executor.shutdown, task=picklable_task,
                submit_each=lambda fn, items: [f.result() for f in
                                               [executor.submit(fn, x) for x in items]])


def open_ipp(port: int) -> Pool:
    import ipyparallel as ipp

    cluster = ipp.Cluster(n=WORKERS, log_level=logging.ERROR)
    try:
        client = cluster.start_and_connect_sync()
    except BaseException:
        cluster.stop_cluster_sync()
        raise
    view = client.load_balanced_view()

    def close() -> None:
        try:
            client.close()
        finally:
            cluster.stop_cluster_sync()

    return Pool(map=lambda fn, items, chunksize: view.map_sync(fn, items, chunksize=chunksize),
                call=view.apply_sync, close=close, task=closure_task)


def open_dask(port: int) -> Pool:
    from dask.distributed import Client, LocalCluster

    # A task's argument of 100 MiB travels in the task itself, which dask warns about.
    warnings.filterwarnings("ignore", message="Sending large graph")
    cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    try:
        client = Client(cluster)
    except BaseException:
        cluster.close()
        raise

    def map_chunks(fn: Callable, items: list, chunksize: int) -> list:
        # pure=False everywhere: otherwise equal calls share a key and run once
        if chunksize == 1:
            return client.gather(client.map(fn, items, pure=False))
        chunks = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
        done = client.gather(client.map(lambda chunk: [fn(x) for x in chunk], chunks,
                                        pure=False))
        return [result for chunk in done for result in chunk]

    def close() -> None:
        try:
            client.close()
        finally:
            cluster.close()

    return Pool(map=map_chunks, call=lambda fn, x: client.submit(fn, x, pure=False).result(),
                close=close, task=closure_task)


class System(NamedTuple):
    label: str  # how the tables call it
    open: Callable[[int], Pool]
    module: str  # what must import for it to run
    heavy: bool = False  # left out by --quick


SYSTEMS = {"wb": System("Sleigh", open_wb, "workbench"),
           "mp": System("multiprocessing.Pool", open_mp, "multiprocessing"),
           "ppe": System("ProcessPoolExecutor", open_ppe, "concurrent.futures"),
           "ipp": System("ipyparallel", open_ipp, "ipyparallel", heavy=True),
           "dask": System("dask.distributed", open_dask, "distributed", heavy=True)}
ANCHOR_NAMES = ["mp", "ppe", "ipp", "dask"]


def why_skipped(name: str, settings: Settings) -> str | None:
    """Why pool ``name`` is not measured in this benchmark, or None."""
    system = SYSTEMS[name]
    if name == "wb":
        return sleigh_missing()
    if importlib.util.find_spec(system.module) is None:
        return f"{system.module} is not installed (pip install -e '.[bench]' installs it)"
    if system.heavy and not settings.heavy_anchors:
        return "left out by --quick (its cluster takes seconds to start; run without --quick)"
    return None


# ============================================================================ the cases
# Each runs in the driver process of its pool and returns its figures.


class Driver:
    """What a driver process holds: its pool, the settings, the 100 MiB array."""

    def __init__(self, system: str, settings: Settings, pool: Pool) -> None:
        import numpy as np

        self.system, self.settings, self.pool = system, settings, pool
        self.task = pool.task()
        self.big = np.random.default_rng(1).random(settings.big_mib * 2**20 // 8)
        self.call(1)
        self.pool.call(same, self.big)  # the first big round trip backs the workers' memory

    def call(self, x: int) -> Any:
        result = self.pool.call(self.task, x)
        assert result == x + STEP, f"{self.system}: task returned {result!r} for {x!r}"
        return result


def repeated_rate(run_all: Callable[[list], list], items: list, min_time: float) -> float:
    """Tasks/s of ``run_all(items)``, repeated until ``min_time`` has passed; each repetition's
    results are checked (untimed)."""
    expected = [x + STEP for x in items]
    done, elapsed = 0, 0.0
    while elapsed < min_time or not done:
        start = time.perf_counter()
        results = run_all(items)
        elapsed += time.perf_counter() - start
        done += len(items)
        assert list(results) == expected, "wrong results"
    return done / elapsed


def tiny(driver: Driver, how: str) -> dict:
    s, pool, task = driver.settings, driver.pool, driver.task
    items = list(range(s.tiny_calls))
    run_all = {"map": lambda xs: pool.map(task, xs, 1),
               "submit": lambda xs: pool.submit_each(task, xs),
               "each": lambda xs: pool.each_elem(task, xs)}[how]
    return {"tasks_per_s": repeated_rate(run_all, items, s.min_time_s)}


def batched(driver: Driver, how: str) -> dict:
    s, pool, task = driver.settings, driver.pool, driver.task
    items = list(range(s.batched_calls))
    run_all = {"chunks": lambda xs: pool.map(task, xs, s.chunksize),
               "auto": lambda xs: pool.auto_map(task, xs)}[how]
    return {"tasks_per_s": repeated_rate(run_all, items, s.min_time_s)}


def latency(driver: Driver) -> dict:
    s = driver.settings
    for x in range(s.latency_warmup):
        driver.call(x)
    times = []
    for x in range(s.latency_calls):
        start = time.perf_counter()
        driver.pool.call(driver.task, x)
        times.append(time.perf_counter() - start)
    driver.call(s.latency_calls)
    us = [t * 1e6 for t in times]
    return {"median_us": h.median(us), "p99_us": h.percentile(us, 99), "min_us": min(us),
            "max_us": max(us)}


def big(driver: Driver) -> dict:
    import numpy as np

    times = []
    for _ in range(driver.settings.big_timed):
        start = time.perf_counter()
        out = driver.pool.call(same, driver.big)
        times.append(time.perf_counter() - start)
        assert isinstance(out, np.ndarray) and np.array_equal(out, driver.big), "corrupted"
        del out  # freed before the next round trip, as a real user's loop would
    return {"rt_s": h.median(times), "times_s": times}


#: What a driver can be asked -> how it measures it.
MEASURES: dict[str, Callable[[Driver], dict]] = {
    "tiny": partial(tiny, how="map"), "submit": partial(tiny, how="submit"),
    "each": partial(tiny, how="each"), "batched": partial(batched, how="chunks"),
    "auto": partial(batched, how="auto"), "latency": latency, "big": big}


# ============================================================================ child processes
# `bench_sleigh.py --child driver JSON` holds a pool for the whole benchmark and answers one
# JSON line per case asked on its stdin; `--child start JSON` measures one cold start.

child_argv = partial(h.child_argv, __file__)


def run_child(role: str, params: dict) -> None:
    h.run_replying_child(role, params, Settings, {"driver": drive, "start": cold_start})


say = h.say


def drive(reply: Any, system: str, settings: Settings, port: int) -> None:
    pool = SYSTEMS[system].open(port)
    try:
        driver = Driver(system, settings, pool)
        say(reply, "ready")
        for line in sys.stdin:
            try:
                say(reply, MEASURES[json.loads(line)["case"]](driver))
            except Exception:
                say(reply, {"error": traceback.format_exc()})
    finally:
        h.close_pool(pool.close, GONE_TIMEOUT)


def cold_start(reply: Any, system: str, settings: Settings, port: int | None) -> None:
    __import__(SYSTEMS[system].module)  # imports are not part of a cold start
    start = time.perf_counter()
    pool = SYSTEMS[system].open(port)
    try:
        task = pool.task()
        result = pool.call(task, 1)
        started = time.perf_counter() - start
        assert result == 1 + STEP, f"{system}: first task returned {result!r}"
        processes = len([pid for pid in h.descendants() if not h.is_helper(pid)])
    finally:
        stopped, gone, killed = h.close_pool(pool.close, GONE_TIMEOUT)
    # counts in a dict of their own: they are not figures to take medians of
    say(reply, {"start_s": started, "stop_s": stopped, "gone_s": gone,
                "counts": {"processes": processes, "killed": killed}})


# ============================================================================ the benchmark


@dataclass
class Context:
    """What the cases share: settings, the driver of each pool measured, the broker."""

    settings: Settings
    children: h.Children
    ports: dict[str, int]  # every pool measured -> the broker's port (0: not used)
    pids: dict[str, int] = field(default_factory=dict)  # the benchmark's processes
    skipped: dict[str, str] = field(default_factory=dict)  # pool -> why not measured
    drivers: dict[str, Any] = field(default_factory=dict)  # pool -> (process, reader)
    broker_proc: Any = None
    seen: dict[int, int] = field(default_factory=dict)  # every process below this one

    busy: str | None = None  # the pool whose driver is starting or measuring a case

    def ask(self, system: str, case: str) -> dict:
        proc, reader = self.drivers[system]
        proc.stdin.write((json.dumps({"case": case}) + "\n").encode())
        proc.stdin.flush()
        self.busy = system
        answer = json.loads(reader.readline(CASE_TIMEOUT))
        self.busy = None
        self.seen.update(h.descendants())
        if "error" in answer:
            raise RuntimeError(f"{system} {case}:\n{answer['error']}")
        return answer

    def child_params(self, system: str) -> dict:
        return {"system": system, "port": self.ports[system],
                "settings": asdict(self.settings), "parent_pid": os.getpid()}

    def env(self) -> dict:
        # ipyparallel keeps its profile, logs and connection files here, not in ~/.ipython
        return {**os.environ, "IPYTHONDIR": str(self.children.logdir / "ipython")}

    def close(self) -> None:
        """Stop every driver (each stops its pool), then whatever any pool left behind."""
        self.seen.update(h.descendants())
        for system, (proc, _) in self.drivers.items():
            if proc.poll() is None:
                proc.stdin.close()  # end of commands: the driver stops its pool and exits
                if system == self.busy:  # interrupted while busy: SIGTERM ends it
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in self.drivers.values():
            try:
                proc.wait(timeout=GONE_TIMEOUT + h.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass  # Children.stop: SIGTERM again (ignored while it cleans up), then SIGKILL
            self.children.stop(proc)
        left = {pid: started for pid, started in self.seen.items()
                if pid not in {p.pid for _, p in self.children.procs}}
        _, killed = h.stop_processes(left, h.STOP_TIMEOUT)
        if killed:
            print(f"killed {killed} processes the pools left behind", file=sys.stderr)


def start_driver(ctx: Context, system: str) -> None:
    proc = ctx.children.spawn(f"{system}-driver", child_argv("driver", **ctx.child_params(system)),
                              pipes=True, env=ctx.env())
    reader = h.LineReader(proc, f"{system} driver")
    ctx.drivers[system] = (proc, reader)
    ctx.busy = system
    line = reader.readline(POOL_START_TIMEOUT)
    ctx.busy = None
    if json.loads(line) != "ready":
        raise RuntimeError(f"{system} driver: expected 'ready', got {line!r}")


def make_context(children: h.Children, settings: Settings) -> Context:
    ctx = Context(settings, children, {})
    try:
        for name, system in SYSTEMS.items():
            why = why_skipped(name, settings)
            if why:
                ctx.skipped[name] = why
                print(f"{system.label}: SKIPPED, {why}", flush=True)
        if "wb" not in ctx.skipped:
            ctx.broker_proc, ctx.ports["wb"] = h.start_broker(children)
        ctx.ports.update({name: 0 for name in SYSTEMS
                          if name not in ctx.skipped and name != "wb"})
        for name in ctx.ports:
            start_driver(ctx, name)
        # The meter counts every process below this one as the benchmark's: the broker, the
        # drivers and every process of their pools (cold starts are reaped, hence counted).
        ctx.seen.update(h.descendants())
        ctx.pids = {f"pid{pid}": pid for pid in ctx.seen}
    except BaseException:
        ctx.close()
        raise
    return ctx


def asked(case: str) -> Callable[[Context, int], dict]:
    return lambda ctx, run, system: ctx.ask(system, case)


def measure_cold_start(ctx: Context, run: int, system: str, own_broker: bool = False) -> dict:
    params = {**ctx.child_params(system), **({"port": None} if own_broker else {})}
    proc = ctx.children.spawn(f"{system}-start", child_argv("start", **params), pipes=True,
                              env=ctx.env())
    try:
        proc.stdin.close()
        answer = json.loads(h.LineReader(proc, f"{system} cold start").readline(
            POOL_START_TIMEOUT + GONE_TIMEOUT))
        proc.wait(timeout=h.STOP_TIMEOUT)
    finally:
        # What it started, in case it cannot stop it: Context.close makes sure it is gone.
        ctx.seen.update(h.descendants(proc.pid))
        ctx.children.stop(proc)
    return answer


def _cases(case: str, measure: Callable, systems: list[str] | None = None) -> list[h.Case]:
    return [h.Case(f"{name}.{case}", partial(measure, system=name), name)
            for name in systems or SYSTEMS]


#: Cases that compare with one another form a group; within a group the order rotates per run.
#: Nothing is pinned: a pool's master and 2 workers share the 2 vCPUs as a user's would.
GROUPS: dict[str, list[h.Case]] = {
    "start": [*_cases("start", measure_cold_start),
              h.Case("wb.start_own", partial(measure_cold_start, system="wb", own_broker=True),
                     "wb")],
    "tiny": [*_cases("tiny", asked("tiny")),
             *_cases("submit", asked("submit"), ["wb", "mp", "ppe"]),
             *_cases("each", asked("each"), ["wb"])],
    "batched": [*_cases("batched", asked("batched")),
                *_cases("auto", asked("auto"), ["wb", "mp"])],
    "latency": _cases("latency", asked("latency")),
    "big": _cases("big", asked("big")),
}


def benchmark(settings: Settings) -> dict:
    def meta(ctx: Context) -> dict:
        info = {f"{name}_skipped": ctx.skipped.get(name, False) for name in SYSTEMS}
        for module in ("ipyparallel", "dask", "distributed"):
            try:
                info[module] = __import__(module).__version__
            except Exception:
                info[module] = None
        return info

    return h.run_benchmark(settings, GROUPS, make_context, meta)


# ============================================================================ summary


def _against(anchor: str) -> list[tuple]:
    label = SYSTEMS[anchor].label
    tiny_target = 10.0 if anchor in ("ipp", "dask") else None
    return [
        (f"cold start, own broker, vs {label}", "wb.start_own.start_s",
         f"{anchor}.start.start_s", "speedup", None, "anchor/wb"),
        (f"tiny tasks/s, chunksize 1, vs {label}", "wb.tiny.tasks_per_s",
         f"{anchor}.tiny.tasks_per_s", "rate", tiny_target),
        (f"tiny tasks/s, chunksize 100, vs {label}", "wb.batched.tasks_per_s",
         f"{anchor}.batched.tasks_per_s", "rate"),
        (f"round trip median vs {label}", "wb.latency.median_us",
         f"{anchor}.latency.median_us", "speedup", None, "anchor/wb"),
        (f"round trip p99 vs {label}", "wb.latency.p99_us", f"{anchor}.latency.p99_us",
         "speedup", None, "anchor/wb"),
        (f"100 MiB round trip vs {label}", "wb.big.rt_s", f"{anchor}.big.rt_s", "speedup",
         None, "anchor/wb"),
    ]


#: (label, workbench figure, anchor figure, how to compare, target, name of the ratio):
#: see _harness.Comparison.
COMPARISONS = [
    *(row for anchor in ANCHOR_NAMES for row in _against(anchor)),
    ("submit per item vs ProcessPoolExecutor submit", "wb.submit.tasks_per_s",
     "ppe.submit.tasks_per_s", "rate"),
    ("eachElem vs map, chunksize 1", "wb.each.tasks_per_s", "wb.tiny.tasks_per_s", "rate",
     None, "each/map"),
    ("own batching vs Pool.map default chunks", "wb.auto.tasks_per_s", "mp.auto.tasks_per_s",
     "rate"),
]


class Target(NamedTuple):
    """An absolute target for a workbench figure, judged on its median over the runs."""

    label: str
    figure: str
    bound: float
    below: bool  # met when the figure is below the bound (else: at least the bound)


TARGETS = [
    Target("cold start, own broker < 1 s", "wb.start_own.start_s", 1.0, True),
    Target("cold start, running broker < 1 s", "wb.start.start_s", 1.0, True),
    Target("tiny tasks, chunksize 1 >= 5,000/s", "wb.tiny.tasks_per_s", 5_000, False),
    Target("tiny tasks, batched >= 100,000/s", "wb.batched.tasks_per_s", 100_000, False),
    Target("round trip median < 1 ms", "wb.latency.median_us", 1_000, True),
]


def judge_targets(values: dict[str, list[float]]) -> list[dict]:
    rows = []
    for target in TARGETS:
        runs = values.get(target.figure)
        row = {**target._asdict(), "median": h.median(runs) if runs else None}
        if runs:
            row["met"] = row["median"] < target.bound if target.below \
                else row["median"] >= target.bound
        rows.append(row)
    return rows


def report(result: dict, markdown: bool = False) -> None:
    meta = result["meta"]
    skipped = [name for name in SYSTEMS if meta.get(f"{name}_skipped")]
    comparisons = [row for row in COMPARISONS
                   if not any(key.startswith(f"{name}.") for key in row[1:3] for name in skipped)]
    h.report(result, comparisons, [], markdown)
    print("anchors: " + " · ".join(f"{module} {meta.get(module)}"
                                   for module in ("ipyparallel", "dask", "distributed")))
    values = h.series(result["runs"])
    result["targets"] = judge_targets(values)
    rows = []
    for row in result["targets"]:
        runs = values.get(row["figure"])
        shown = (f"{h.fmt_figure(row['figure'], row['median'])} "
                 f"({h.fmt_figure(row['figure'], min(runs))} - "
                 f"{h.fmt_figure(row['figure'], max(runs))})") if runs else "skipped"
        met = "skipped" if runs is None else ("MET" if row["met"] else "NOT MET")
        rows.append([row["label"], shown, met])
    print("\nTargets, on the median of the runs:")
    print(h.format_table(["target", "workbench: median (min - max)", "result"], rows, markdown))
    counts = {case: figures["counts"] for run in result["runs"]
              for case, figures in run["results"].items() if "counts" in figures}
    if counts:
        print("\nprocesses a cold-started pool ran, besides the one using it: " + ", ".join(
            f"{case} {count['processes']}" for case, count in counts.items()))
    killed = sum(figures.get("counts", {}).get("killed", 0) for run in result["runs"]
                 for figures in run["results"].values())
    if killed:
        print(f"\n{killed} processes outlived their pool's stop by {GONE_TIMEOUT:g} s and were "
              "killed")
    for name in skipped:
        print(f"\n{SYSTEMS[name].label} ({name}) SKIPPED: {meta[f'{name}_skipped']}")


def main(argv: list[str] | None = None) -> int:
    return h.bench_main(argv, description=__doc__.split("\n")[0], groups=GROUPS,
                        settings=Settings(), quick=QUICK, output=RESULTS, run_child=run_child,
                        benchmark=benchmark, report=report)


if __name__ == "__main__":
    sys.exit(main())
