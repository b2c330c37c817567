"""Scale benchmark: the Sleigh at 2, 10, 50 and 100 workers on one broker, and one broker under
1,000 idle client sessions. No anchor: the workbench against itself across sizes.

Pools measured, one at a time, each a ``workbench.Sleigh(N, broker=...)`` of N local workers on
a broker this script starts, in a process of its own (this script run as ``--child pool``)
that opens the pool, measures it and stops it:

1. pool start: from the constructor until all N workers have joined (the constructor returns
   then); and from the stop call until no worker process is left (``gone_s``);
2. tiny-task throughput, tasks/s of the task ``lambda x: x + step``: ``eachElem`` over 20,000
   elements with the pool's own batching (no chunkSize: ``auto``), and ``eachElem`` over
   2,000 elements with ``chunkSize=1`` (one element per task record: ``each1``); each after
   one untimed map, repeated until 1 s has passed, every map's results checked;
3. around each throughput case, the broker's CPU (utime + stime of its process, from
   ``/proc/PID/stat``) per task, its requests per task (``workbench status``' counter), and
   the wake-ups of the workers' main threads per task (their voluntary context switches);
4. one task's round trip: 20 warm-up, then 200 sequential ``submit(fn, x).result()``; median
   and p99.

Session load (``sessions``): a probe client times heartbeat requests, one every 10 ms, first
against the idle broker (5 s), then while 1,000 idle client sessions (``Connection``s, each
with its own heartbeat thread at the client's default interval, 1 s) are connected, started
in 4 child processes of 250 (20 s). Reported: the broker's CPU share (% of one core) over each
span, the probe's heartbeat round trip (median, p99) in each, and the lag: loaded minus idle.
Every session must still be alive at the end, and the broker must list them all. A session
holds two sockets at the broker (its calling thread's and its heartbeat's) and four file
descriptors in its process (with the heartbeat's wake-up pipe): the script raises
RLIMIT_NOFILE to the hard limit for itself, the broker and the session processes, and stops
with a message when that is too low.

How: as the other benchmarks (see ``_harness``): every case runs once per run, the pools in an
order that rotates from run to run; figures are medians over the runs (default 3), the 100/2
ratio the median of the per-run ratios; each run records the CPU used outside the benchmark.
Every process a pool starts is stopped on exit, failure, Ctrl-C or SIGTERM.

    python benchmarks/bench_scale.py [--runs N] [--quick] [--only GROUP] [--output JSON]
                                     [--plot PNG]

prints the figures and writes the raw results to ``benchmarks/results/scale-latest.json``;
``--plot PNG`` draws them against the number of workers (matplotlib). ``--quick`` (one run,
2 and 10 workers, fewer tasks, 200 sessions for 3 s) is the smoke test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple

import _harness as h

RESULTS = h.HERE / "results" / "scale-latest.json"
STEP = 1  # what the task adds
#: How long one pool's case may take: a hundred workers start in seconds on 2 vCPUs.
POOL_TIMEOUT = 600.0
#: How long a pool may take to start (``Sleigh(startTimeout=)``).
POOL_START_TIMEOUT = 180.0
#: How long the processes of a stopped pool get to exit on their own before they are killed.
GONE_TIMEOUT = 8.0
#: File descriptors a session process needs per session (its two sockets and the heartbeat
#: thread's wake-up pipe), and the broker per session (two sockets); plus a margin each.
FDS_PER_SESSION_PROCESS, FDS_PER_SESSION_BROKER, FDS_MARGIN = 4, 2, 256


@dataclass(frozen=True)
class Settings(h.Settings):
    runs: int = 3
    sizes: tuple[int, ...] = (2, 10, 50, 100)
    tasks: int = 20_000  # eachElem with the pool's own batching
    each1_tasks: int = 2_000  # eachElem with chunkSize=1
    min_time_s: float = 1.0  # maps repeat until this long: the broker's CPU is read in ticks
    latency_calls: int = 200
    latency_warmup: int = 20
    sessions: int = 1_000
    session_processes: int = 4
    span_s: float = 20.0  # the session-load span
    idle_span_s: float = 5.0  # the probe against the idle broker
    probe_period_s: float = 0.01


QUICK = Settings(runs=1, sizes=(2, 10), tasks=5_000, each1_tasks=500, min_time_s=0.3,
                 latency_calls=50, latency_warmup=5, sessions=200, session_processes=2,
                 span_s=3.0, idle_span_s=1.0)


# ============================================================================ file descriptors


def raise_nofile(needed: int = 0) -> int:
    """Raise this process's RLIMIT_NOFILE to its hard limit (children inherit it) -> the new
    soft limit; SystemExit with what to do if that is below ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        soft = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if needed > soft:
        raise SystemExit(f"the session load needs {needed} file descriptors per process, but "
                         f"the hard limit is {soft}: raise it (ulimit -Hn, limits.conf) or run "
                         "fewer sessions")
    return soft


def needed_fds(settings: Settings) -> int:
    """File descriptors the broker and each session process need."""
    per_process = -(-settings.sessions // settings.session_processes)
    return max(settings.sessions * FDS_PER_SESSION_BROKER,
               per_process * FDS_PER_SESSION_PROCESS) + FDS_MARGIN


# ============================================================================ child processes

child_argv = partial(h.child_argv, __file__)


def run_child(role: str, params: dict) -> None:
    h.run_replying_child(role, params, Settings,
                         {"pool": measure_pool, "sessions": hold_sessions})


say = h.say


# ---------------------------------------------------------------------------- a pool


def main_thread_wakeups(pids: list[int]) -> int:
    """Voluntary context switches of the main threads of ``pids`` so far (each is a wait that
    ended: a wake-up)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("voluntary_ctxt_switches"):
                        total += int(line.split()[1])
        except OSError:
            pass  # gone
    return total


class Meter:
    """What a throughput case costs besides time: the broker's CPU and requests, the workers'
    wake-ups."""

    def __init__(self, broker_pid: int, server: Any, worker_pids: list[int]) -> None:
        self.broker_pid, self.server, self.worker_pids = broker_pid, server, worker_pids

    def read(self) -> tuple[float, int, int]:
        return (h.cpu_seconds(self.broker_pid), self.server.status()["counters"]["requests"],
                main_thread_wakeups(self.worker_pids))

    def per_task(self, before: tuple, after: tuple, tasks: int, name: str) -> dict:
        cpu, requests, wakeups = (b - a for a, b in zip(before, after))
        return {f"{name}_broker_us": cpu / tasks * 1e6,
                f"{name}_requests_per_task": requests / tasks,
                f"{name}_wakeups_per_task": wakeups / tasks}


def tiny_rate(run_all: Callable[[list], list], items: list, min_time: float, meter: Meter,
              name: str) -> dict:
    """Tasks/s of ``run_all(items)`` after one untimed call, repeated until ``min_time`` has
    passed, with the meter's figures per task; each repetition's results are checked
    (untimed)."""
    expected = [x + STEP for x in items]
    assert run_all(items) == expected, "wrong results"
    done, elapsed = 0, 0.0
    before = meter.read()
    while elapsed < min_time or not done:
        start = time.perf_counter()
        results = run_all(items)
        elapsed += time.perf_counter() - start
        done += len(items)
        assert results == expected, "wrong results"
    after = meter.read()
    return {f"{name}_per_s": done / elapsed, **meter.per_task(before, after, done, name)}


def round_trips(sleigh: Any, task: Callable, settings: Settings) -> dict:
    for x in range(settings.latency_warmup):
        assert sleigh.submit(task, x).result() == x + STEP
    times = []
    for x in range(settings.latency_calls):
        start = time.perf_counter()
        sleigh.submit(task, x).result()
        times.append((time.perf_counter() - start) * 1e6)
    return {"rt_median_us": h.median(times), "rt_p99_us": h.percentile(times, 99)}


def measure_pool(reply: Any, settings: Settings, size: int, port: int, broker_pid: int) -> None:
    """One pool's life: start, the throughput cases, the round trip, stop -> one JSON line."""
    from workbench import NwsServer, Sleigh

    step = STEP
    task = lambda x: x + step  # noqa: E731 - a closure, shipped by value as a notebook's is
    address = f"{h.LOOPBACK}:{port}"
    server = NwsServer(h.LOOPBACK, port)
    start = time.perf_counter()
    sleigh = Sleigh(size, broker=address, startTimeout=POOL_START_TIMEOUT)
    figures: dict[str, Any] = {"start_s": time.perf_counter() - start}
    try:
        workers = sleigh.workerInfo()
        assert len(workers) == size, f"{len(workers)} of {size} workers joined"
        meter = Meter(broker_pid, server, [info["pid"] for info in workers])
        own = lambda xs: sleigh.eachElem(task, xs)  # noqa: E731
        each1 = lambda xs: sleigh.eachElem(task, xs, chunkSize=1)  # noqa: E731
        figures.update(tiny_rate(own, list(range(settings.tasks)), settings.min_time_s, meter,
                                 "auto"))
        figures.update(tiny_rate(each1, list(range(settings.each1_tasks)), settings.min_time_s,
                                 meter, "each1"))
        figures.update(round_trips(sleigh, task, settings))
    finally:
        stopped, gone, killed = h.close_pool(sleigh.stop, GONE_TIMEOUT)
        server.close()
    figures.update({"stop_s": stopped, "gone_s": gone, "counts": {"killed": killed}})
    say(reply, figures)


# ---------------------------------------------------------------------------- idle sessions


def hold_sessions(reply: Any, settings: Settings, port: int, count: int) -> None:
    """Open ``count`` client sessions, say so, hold them idle until told to report, then say
    how many are still alive and close them."""
    from workbench.client.connection import Connection

    raise_nofile(count * FDS_PER_SESSION_PROCESS + FDS_MARGIN)
    sessions = [Connection(f"{h.LOOPBACK}:{port}", 30.0) for _ in range(count)]
    try:
        say(reply, {"open": len(sessions)})
        sys.stdin.readline()  # "report", or the end of the benchmark
        say(reply, {"alive": sum(1 for s in sessions if s.broken is None and not s.closed)})
    finally:
        for session in sessions:
            session.close()


# ============================================================================ the benchmark


@dataclass
class Context:
    """What the cases share: settings, the broker, every process below this one."""

    settings: Settings
    children: h.Children
    ports: dict[str, int]  # every case's server -> the broker's port
    pids: dict[str, int] = field(default_factory=dict)
    broker_proc: Any = None

    @property
    def port(self) -> int:
        return self.ports["broker"]

    def close(self) -> None:
        """Stop every child and whatever any pool left behind."""
        left = h.descendants()
        self.children.stop_all()
        _, killed = h.stop_processes(left, h.STOP_TIMEOUT)
        if killed:
            print(f"killed {killed} processes the pools left behind", file=sys.stderr)


def make_context(children: h.Children, settings: Settings) -> Context:
    # The broker and the session processes inherit the raised limit.
    if "sessions" in (settings.only or ("sessions",)):
        raise_nofile(needed_fds(settings))
    ctx = Context(settings, children, {})
    ctx.broker_proc, port = h.start_broker(children)
    ctx.ports = {"broker": port}
    ctx.pids = {"broker": ctx.broker_proc.pid}
    return ctx


def run_pool(ctx: Context, run: int, size: int) -> dict:
    params = {"size": size, "port": ctx.port, "broker_pid": ctx.broker_proc.pid,
              "settings": asdict(ctx.settings), "parent_pid": os.getpid()}
    proc = ctx.children.spawn(f"pool{size}", child_argv("pool", **params), pipes=True)
    try:
        proc.stdin.close()
        answer = json.loads(h.LineReader(proc, f"{size}-worker pool").readline(POOL_TIMEOUT))
        proc.wait(timeout=h.STOP_TIMEOUT)
    finally:
        left = h.descendants(proc.pid)  # a pool that cannot stop: its workers go too
        ctx.children.stop(proc)
        h.stop_processes(left, h.STOP_TIMEOUT)
    return answer


# ---------------------------------------------------------------------------- session load


def probe_heartbeats(connection: Any, span: float, period: float, broker_pid: int) -> dict:
    """Heartbeat round trips of ``connection``, one every ``period`` s for ``span`` s, and
    the broker's CPU share meanwhile -> figures."""
    from workbench.protocol import Op

    times = []
    cpu0, t0 = h.cpu_seconds(broker_pid), time.monotonic()
    next_beat = t0
    while (now := time.monotonic()) < t0 + span:
        if now < next_beat:
            time.sleep(next_beat - now)
        next_beat += period
        start = time.perf_counter()
        connection.call(Op.HEARTBEAT, [], timeout=10.0)
        times.append((time.perf_counter() - start) * 1e6)
    wall = time.monotonic() - t0
    return {"cpu_pct": (h.cpu_seconds(broker_pid) - cpu0) / wall * 100,
            "median_us": h.median(times), "p99_us": h.percentile(times, 99),
            "max_us": max(times), "beats": len(times)}


def session_load(ctx: Context, run: int) -> dict:
    from workbench import NwsServer
    from workbench.client.connection import Connection

    s, pid = ctx.settings, ctx.broker_proc.pid
    probe = Connection(f"{h.LOOPBACK}:{ctx.port}", h.START_TIMEOUT)
    procs = []
    try:
        idle = probe_heartbeats(probe, s.idle_span_s, s.probe_period_s, pid)
        share = -(-s.sessions // s.session_processes)
        counts = [min(share, s.sessions - i * share) for i in range(s.session_processes)]
        for i, count in enumerate(c for c in counts if c > 0):
            params = {"port": ctx.port, "count": count, "settings": asdict(s),
                      "parent_pid": os.getpid()}
            procs.append(ctx.children.spawn(f"sessions{i}", child_argv("sessions", **params),
                                            pipes=True))
        readers = [h.LineReader(p, f"session process {i}") for i, p in enumerate(procs)]
        opened = sum(json.loads(r.readline(h.START_TIMEOUT + s.sessions / 10))["open"]
                     for r in readers)
        with NwsServer(h.LOOPBACK, ctx.port) as server:
            listed = len(server.status()["clients"])
        load = probe_heartbeats(probe, s.span_s, s.probe_period_s, pid)
        for p in procs:
            p.stdin.write(b"report\n")
            p.stdin.flush()
        alive = sum(json.loads(r.readline(h.START_TIMEOUT))["alive"] for r in readers)
    finally:
        probe.close()
        for p in procs:
            ctx.children.stop(p)
    assert alive == opened == s.sessions, f"{alive} of {opened} sessions alive"
    figures = {f"idle_{k}": v for k, v in idle.items() if k != "beats"}
    figures.update({f"load_{k}": v for k, v in load.items() if k != "beats"})
    figures["lag_median_us"] = load["median_us"] - idle["median_us"]
    figures["lag_p99_us"] = load["p99_us"] - idle["p99_us"]
    figures["counts"] = {"sessions": opened, "alive": alive, "listed_by_broker": listed,
                         "beats_idle": idle["beats"], "beats_load": load["beats"]}
    return figures


def size_cases(sizes: tuple[int, ...]) -> list[h.Case]:
    return [h.Case(f"w{size}.pool", partial(run_pool, size=size), "broker") for size in sizes]


def groups(settings: Settings) -> dict[str, list[h.Case]]:
    """Pools of each size, their order rotating per run; then the session load."""
    return {"pools": size_cases(settings.sizes),
            "sessions": [h.Case("broker.sessions", session_load, "broker")]}


GROUPS = groups(Settings())


def benchmark(settings: Settings) -> dict:
    return h.run_benchmark(settings, groups(settings), make_context)


# ============================================================================ summary


def sizes_of(result: dict) -> list[int]:
    return sorted({int(case[1:].split(".")[0]) for run in result["runs"]
                   for case in run["results"] if case.startswith("w")})


#: The per-size table: (column, figure key in a pool's results).
COLUMNS = [("start", "start_s"), ("stop until gone", "gone_s"),
           ("own batching", "auto_per_s"), ("chunkSize=1", "each1_per_s"),
           ("round trip median", "rt_median_us"), ("p99", "rt_p99_us"),
           ("broker CPU/task, own", "auto_broker_us"), ("chunkSize=1", "each1_broker_us"),
           ("requests/task, own", "auto_requests_per_task"),
           ("chunkSize=1", "each1_requests_per_task"),
           ("worker wake-ups/task, own", "auto_wakeups_per_task"),
           ("chunkSize=1", "each1_wakeups_per_task")]


def comparisons(sizes: list[int]) -> list[tuple]:
    """The largest pool against the smallest: throughput (target 0.8x), start, broker CPU."""
    if len(sizes) < 2:
        return []
    big, small = f"w{sizes[-1]}.pool", f"w{sizes[0]}.pool"
    ratio = f"{sizes[-1]}/{sizes[0]}"
    return [
        (f"tiny tasks/s, own batching, {sizes[-1]} vs {sizes[0]} workers",
         f"{big}.auto_per_s", f"{small}.auto_per_s", "rate", 0.8, ratio),
        (f"tiny tasks/s, chunkSize=1, {sizes[-1]} vs {sizes[0]} workers",
         f"{big}.each1_per_s", f"{small}.each1_per_s", "rate", 0.8, ratio),
        (f"broker CPU per task, own batching, {sizes[-1]} vs {sizes[0]}",
         f"{big}.auto_broker_us", f"{small}.auto_broker_us", "latency", None, ratio),
        (f"round trip median, {sizes[-1]} vs {sizes[0]}", f"{big}.rt_median_us",
         f"{small}.rt_median_us", "latency", None, ratio),
    ]


def report(result: dict, markdown: bool = False) -> None:
    sizes = sizes_of(result)
    h.report(result, comparisons(sizes), [], markdown)
    medians = result["medians"]
    if sizes:
        rows = [[str(size), *(h.fmt_figure(key, medians.get(f"w{size}.pool.{key}"))
                              for _, key in COLUMNS)] for size in sizes]
        print("\nMedians by pool size (tiny tasks/s; CPU, requests and wake-ups per task "
              "around the throughput cases):")
        print(h.format_table(["workers", *(label for label, _ in COLUMNS)], rows, markdown))
    counts = [run["results"]["broker.sessions"]["counts"] for run in result["runs"]
              if "broker.sessions" in run["results"]]
    if counts:
        get = lambda key: h.fmt_figure(key, medians.get(f"broker.sessions.{key}"))  # noqa
        print(f"\nSession load, {counts[0]['sessions']} idle sessions (listed by the broker: "
              f"{', '.join(str(c['listed_by_broker']) for c in counts)}; alive at the end: "
              f"{', '.join(str(c['alive']) for c in counts)}):")
        print(h.format_table(
            ["", "broker CPU", "heartbeat median", "p99"],
            [["idle broker", get("idle_cpu_pct"), get("idle_median_us"), get("idle_p99_us")],
             ["with the sessions", get("load_cpu_pct"), get("load_median_us"),
              get("load_p99_us")],
             ["lag", "", get("lag_median_us"), get("lag_p99_us")]], markdown))
    killed = sum(figures.get("counts", {}).get("killed", 0) for run in result["runs"]
                 for figures in run["results"].values())
    if killed:
        print(f"\n{killed} worker processes outlived their pool's stop by {GONE_TIMEOUT:g} s "
              "and were killed")


# ============================================================================ plot

class Panel(NamedTuple):
    title: str
    unit: str
    lines: list[tuple[str, str]]  # (figure key in a pool's results, line label)
    log: bool = False  # a logarithmic y axis: lines an order of magnitude apart


PANELS = [
    Panel("Pool start and stop", "seconds", [("start_s", "start (all joined)"),
                                             ("gone_s", "stop (no process left)")]),
    Panel("Tiny-task throughput", "tasks/s", [("auto_per_s", "eachElem, own batching"),
                                              ("each1_per_s", "eachElem, chunkSize=1")], True),
    Panel("One task's round trip", "µs", [("rt_median_us", "median"), ("rt_p99_us", "p99")]),
    Panel("Broker CPU per task", "µs", [("auto_broker_us", "own batching"),
                                        ("each1_broker_us", "chunkSize=1")], True),
]


def plot(result: dict, path: Path) -> None:
    """The pools' medians against the number of workers, min-max bars over the runs, in a
    2x2 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sizes_of(result)
    values = h.series(result["runs"])
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.4), constrained_layout=True)
    for ax, panel in zip(axes.flat, PANELS):
        for key, label in panel.lines:
            runs = [values.get(f"w{size}.pool.{key}") for size in sizes]
            xs = [size for size, r in zip(sizes, runs) if r]
            mid = [h.median(r) for r in runs if r]
            low = [m - min(r) for m, r in zip(mid, [r for r in runs if r])]
            high = [max(r) - m for m, r in zip(mid, [r for r in runs if r])]
            ax.errorbar(xs, mid, yerr=[low, high], marker="o", capsize=3, label=label)
        ax.set_xscale("log")
        if panel.log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.minorticks_off()
        ax.set_title(panel.title)
        ax.set_xlabel("workers")
        ax.set_ylabel(panel.unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    meta = result["meta"]
    fig.suptitle(f"Sleigh on one broker: medians of {len(result['runs'])} runs "
                 f"(commit {meta.get('git', {}).get('commit', '?')[:7]}, {meta['cores']} "
                 f"cores)", fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--plot" in argv and importlib.util.find_spec("matplotlib") is None:
        print("--plot needs matplotlib (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    return h.bench_main(argv, description=__doc__.split("\n")[0], groups=GROUPS,
                        settings=Settings(), quick=QUICK, output=RESULTS, run_child=run_child,
                        benchmark=benchmark, report=report, plot=plot)


if __name__ == "__main__":
    sys.exit(main())
