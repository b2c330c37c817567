"""Durability benchmark: the broker with a data directory against Redis's append-only file, at
the same fsync policy, in the same run.

Systems (values are 100-byte ``bytes``; everything on loopback: the workbench's clients use
the broker's Unix socket, as clients on its machine do, Redis's use TCP):

* ``wb``: ``workbench broker`` without a data directory (nothing is written: what a policy
  costs is measured against it);
* ``wb_everysec``, ``wb_always``: ``workbench broker --data-dir DIR --fsync everysec|always``;
* ``redis``: ``redis-server --appendonly no``, the same measure for Redis;
* ``redis_everysec``, ``redis_always``: ``redis-server --appendonly yes --appendfsync
  everysec|always``.

No RDB snapshots, and Redis's automatic AOF rewrite is off (``--auto-aof-rewrite-percentage
0``): what is stored here is never removed, so the broker's log, which is compacted only when it
outgrows the live data, is never compacted either, and both systems just append. The data
directories and Redis's folders are in one temporary folder, on one file system.

What it measures:

1. single client, sequential: ``store`` round trips/s on one variable (the value is appended,
   as Redis's RPUSH appends to a list: the Redis clients do RPUSH), 500 warm-up then 10,000
   (5,000 split), with this process and the server pinned to one vCPU ("same") and to one
   vCPU each ("split"), as the workspace benchmark; and the server's CPU time per store (every
   thread's, as the scheduler counts it: the figure that other processes on the machine move
   least);
2. the same stores against the broker without a data directory and with one at ``everysec``,
   alternating in 20 batches (the order flipping each time), pinned the same two ways: the
   cost of ``everysec`` free of the drift of a shared machine between two cases, which on the
   project VM moves a case's rate by more than the 10 % the cost may be;
3. 4 client processes, each storing on a variable (list) of its own for 3 s from a common
   start instant: total stores/s. Under ``always`` the replies of one pass of the broker's loop
   share one ``fdatasync`` (group commit): the 4-client rate against the 1-client rate shows
   how well that works;
4. restart: seconds from spawning the server until it answers (the broker a STATUS request,
   Redis a PING), with a data directory (an AOF folder) holding 1,000,000 small values (100
   bytes, one variable or list, stored one record or one command a value), holding 1 GiB
   (1,024 values of 1 MiB), and empty. The data is written once before the runs (untimed) by
   a server at ``everysec``; each run starts a server on it again. The files are in the page
   cache, as after a quick restart.

How: as ``bench_workspace.py`` (see ``_harness``): every case runs once per run, the systems of
a group interleaved with their order rotating from run to run; figures are medians over the runs
(default 5), a ratio is the median of the per-run ratios. The brokers of the rate cases run
with their address space not randomized (``_harness.without_aslr``): where the loader puts the
libraries moved about one broker in six by a third of its CPU time per request.

    python benchmarks/bench_durable.py [--runs N] [--quick] [--only GROUP] [--output JSON]

prints the figures, ratios and targets, and writes the raw results to
``benchmarks/results/durable-latest.json``. ``--quick`` (2 short runs, small restart data) is
the smoke test.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import _harness as h

WORKSPACE = "bench"
VALUE = b"v" * 100
RESULTS = h.HERE / "results" / "durable-latest.json"
POLICIES = ("everysec", "always")
#: Redis with its AOF at a policy, never rewritten (see the module's docstring).
NO_REWRITE = ("--auto-aof-rewrite-percentage", "0")


def redis_aof(policy: str) -> tuple[str, ...]:
    return ("--appendonly", "yes", "--appendfsync", policy, *NO_REWRITE)


def wb_data_dir(path: Path, policy: str) -> list[str]:
    return ["--data-dir", str(path), "--fsync", policy]


@dataclass(frozen=True)
class Settings(h.Settings):
    small_values: int = 1_000_000  # values of the restart with many small values
    big_values: int = 1024  # values of 1 MiB of the restart with 1 GiB
    fill_batch: int = 10_000  # small values written in one request (one pipeline for Redis)
    restart_timeout: float = 300.0
    pair_batches: int = 20  # batches of the alternating cases (of ops, or split_ops, in all)


QUICK = Settings(runs=2, ops=2_000, split_ops=1_000, warmup=100, duration_s=0.5,
                 client_warmup=100, small_values=20_000, big_values=16)

BIG = 1 << 20


#: The servers of the rate cases, by name: which of the two each is ("wb" or "redis").
SYSTEMS = {name: kind for kind in ("wb", "redis")
           for name in (kind, *(f"{kind}_{policy}" for policy in POLICIES))}


class Dataset(NamedTuple):
    """Data a restart loads: a data directory and a Redis folder holding the same values."""

    wb_dir: Path
    redis_dir: Path
    values: int


@dataclass
class Context:
    """What the cases share: settings, servers, the restart data."""

    settings: Settings
    children: h.Children
    ports: dict[str, int]  # system name -> port (a Redis one absent if skipped)
    pids: dict[str, int]
    broker_procs: list = field(default_factory=list)  # their logs are searched for errors
    datasets: dict[str, Dataset] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # "<system>.<dataset>_bytes"

    def close(self) -> None:
        pass


# ============================================================================ child processes
# The script runs itself as `bench_durable.py --child ROLE JSON` for the 4-client case.

child_argv = partial(h.child_argv, __file__)


def run_child(role: str, params: dict) -> None:
    {"storer": storer}[role](**params)


def storer(kind: str, port: int, var: str, warmup: int) -> None:
    store, close = connect(kind, port, var)
    try:
        h.timed_client(store, warmup, per_call=1)
    finally:
        close()


def connect(kind: str, port: int, var: str) -> tuple[Callable[[], object], Callable]:
    """A new client of a broker or a Redis (``kind``) -> (one store of the value on ``var``,
    close)."""
    if kind == "wb":
        from workbench import NetWorkSpace

        ws = NetWorkSpace(WORKSPACE, h.LOOPBACK, port, useUse=True)
        return partial(ws.store, var, VALUE), ws.close
    import redis

    r = redis.Redis(host=h.LOOPBACK, port=port)
    return partial(r.rpush, var, VALUE), r.close


# ============================================================================ cases


def timed_stores(store: Callable[[], object], n: int, pid: int) -> tuple[float, float]:
    """``n`` stores -> (stores/s, the server's CPU µs per store)."""
    cpu = h.cpu_ns(pid)
    rate = h.time_loop(store, n)
    return rate, (h.cpu_ns(pid) - cpu) / n / 1e3


def round_trips(ctx: Context, run: int, system: str, layout: str) -> dict:
    s = ctx.settings
    store, close = connect(SYSTEMS[system], ctx.ports[system], f"rt{run}_{layout}")
    try:
        for _ in range(s.warmup):
            store()
        rate, cpu = timed_stores(store, s.round_trips(layout), ctx.pids[system])
        return {"store_per_s": rate, "server_cpu_us": cpu}
    finally:
        close()


def paired(ctx: Context, run: int, layout: str) -> dict:
    """Stores against the broker without a data directory and with one at ``everysec``, in
    alternating batches (the order flipping each time), both pinned in ``layout``: the cost of
    the policy without the drift of the machine between two cases. Median of the batches."""
    s = ctx.settings
    names = ("wb", "wb_everysec")
    batch = s.round_trips(layout) // s.pair_batches
    clients = [connect("wb", ctx.ports[name], f"pair{run}_{layout}") for name in names]
    figures: dict[str, list] = {name: [] for name in names}
    cpus = h.placements()[layout]  # before this process is pinned
    try:
        with h.Pinned(os.getpid(), ctx.pids["wb"], cpus), \
                h.Pinned(os.getpid(), ctx.pids["wb_everysec"], cpus):
            for store, _ in clients:
                for _ in range(s.warmup):
                    store()
            for index in range(s.pair_batches):
                for name, (store, _) in (zip(names, clients) if index % 2
                                         else reversed(list(zip(names, clients)))):
                    figures[name].append(timed_stores(store, batch, ctx.pids[name]))
    finally:
        for _, close in clients:
            close()
    return {f"{key}_{unit}": h.median(figure[i] for figure in figures[name])
            for name, key in zip(names, ("none", "everysec"))
            for i, unit in enumerate(("per_s", "cpu_us"))}


def clients(ctx: Context, run: int, system: str) -> dict:
    s = ctx.settings
    return h.clients_rate(ctx.children, f"{system}-client", [
        child_argv("storer", kind=SYSTEMS[system], port=ctx.ports[system],
                   var=f"clients{run}_{i}", warmup=s.client_warmup)
        for i in range(s.clients)], s.duration_s)


def restart(ctx: Context, run: int, kind: str, dataset: str) -> dict:
    """Start a server on the data, time it until it answers, stop it."""
    data, timeout = ctx.datasets[dataset], ctx.settings.restart_timeout
    if kind == "wb":
        elapsed, proc = h.time_broker_answers(
            ctx.children, wb_data_dir(data.wb_dir, "everysec"), timeout)
        ctx.broker_procs.append(proc)
    else:
        elapsed, proc = h.time_redis_answers(ctx.children, data.redis_dir,
                                             redis_aof("everysec"), timeout)
    ctx.children.stop(proc)
    return {"start_s": elapsed}


def _group(case: str, measure: Callable, layout: str | None = None) -> list[h.Case]:
    return [h.Case(f"{name}.{case}", partial(measure, system=name), name, layout)
            for name in SYSTEMS]


#: The restart cases: every dataset, for both servers (the "server" of a case is only there
#: to skip Redis's when it is not installed).
DATASETS = ("empty", "small", "big")

#: Cases that compare with one another form a group; within a group the order rotates per run.
GROUPS: dict[str, list[h.Case]] = {
    **{f"rt_{layout}": _group(f"rt_{layout}", partial(round_trips, layout=layout), layout)
       for layout in h.placements()},
    "paired": [h.Case(f"wb.paired_{layout}", partial(paired, layout=layout), "wb_everysec")
               for layout in h.placements()],
    "clients": _group("clients", clients),
    "restart": [h.Case(f"{kind}.restart_{dataset}",
                       partial(restart, kind=kind, dataset=dataset), kind)
                for dataset in DATASETS for kind in ("wb", "redis")],
}


# ============================================================================ runs


def make_context(children: h.Children, settings: Settings) -> Context:
    data = children.logdir / "data"  # every server's files on one file system
    # every broker loaded the same way: what they do tells them apart (h.without_aslr)
    servers = {"wb": h.start_broker(children, fixed_layout=True)}
    for policy in POLICIES:
        servers[f"wb_{policy}"] = h.start_broker(
            children, flags=wb_data_dir(data / f"wb_{policy}", policy), fixed_layout=True)
    if not h.anchor_missing("redis"):
        for name, persistence in [("redis", h.REDIS_IN_MEMORY),
                                  *((f"redis_{p}", redis_aof(p)) for p in POLICIES)]:
            servers[name] = h.start_redis(children, persistence=persistence,
                                          workdir=_folder(data / name))
    ctx = Context(settings, children, {name: port for name, (_, port) in servers.items()},
                  {name: proc.pid for name, (proc, _) in servers.items()},
                  [proc for name, (proc, _) in servers.items() if SYSTEMS[name] == "wb"])
    if not settings.only or "restart" in settings.only:
        make_datasets(ctx, data / "restart")
    return ctx


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_datasets(ctx: Context, folder: Path) -> None:
    """Write the data of the restart cases, for the broker and for Redis (untimed)."""
    s = ctx.settings
    fills = {"empty": [], "small": [("small", VALUE, s.small_values)],
             "big": [("big", os.urandom(BIG), s.big_values)]}
    for name, fill in fills.items():
        data = Dataset(folder / f"wb_{name}", _folder(folder / f"redis_{name}"),
                       sum(count for _, _, count in fill))
        started = time.monotonic()
        fill_broker(ctx, data.wb_dir, fill)
        ctx.sizes[f"wb.{name}_bytes"] = _bytes_under(data.wb_dir)
        if "redis" in ctx.ports:
            fill_redis(ctx, data.redis_dir, fill)
            ctx.sizes[f"redis.{name}_bytes"] = _bytes_under(data.redis_dir)
        ctx.datasets[name] = data
        print(f"  restart data {name!r}: {data.values:,} values, "
              + ", ".join(f"{key.split('.')[0]} {size / 2**20:,.1f} MiB"
                          for key, size in ctx.sizes.items() if key.endswith(f".{name}_bytes"))
              + f"  [{time.monotonic() - started:.1f} s]", flush=True)


#: What a fill stores: (variable or list, value, how many times).
Fill = list[tuple[str, bytes, int]]


def fill_broker(ctx: Context, path: Path, fill: Fill) -> None:
    from workbench import NetWorkSpace

    proc, port = h.start_broker(ctx.children, flags=wb_data_dir(path, "everysec"))
    ctx.broker_procs.append(proc)
    ws = NetWorkSpace(WORKSPACE, h.LOOPBACK, port, useUse=True)
    try:
        for var, value, count in fill:
            for batch in _batches(count, ctx.settings.fill_batch if len(value) < BIG else 1):
                ws.store_many(var, [value] * batch)
    finally:
        ws.close()
    ctx.children.stop(proc)  # SIGTERM: everything on disk


def fill_redis(ctx: Context, path: Path, fill: Fill) -> None:
    import redis

    proc, port = h.start_redis(ctx.children, persistence=redis_aof("everysec"), workdir=path)
    r = redis.Redis(host=h.LOOPBACK, port=port)
    try:
        for var, value, count in fill:
            for batch in _batches(count, ctx.settings.fill_batch if len(value) < BIG else 1):
                pipe = r.pipeline(transaction=False)
                for _ in range(batch):  # one command a value, as the broker logs a record
                    pipe.rpush(var, value)
                pipe.execute()
    finally:
        r.close()
    ctx.children.stop(proc)


def _batches(total: int, size: int) -> list[int]:
    return [min(size, total - done) for done in range(0, total, size)]


def _bytes_under(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "lock")


def benchmark(settings: Settings) -> dict:
    def meta(ctx: Context) -> dict:
        return {"redis_skipped": "redis" not in ctx.ports, "restart_data": ctx.sizes,
                "restart_values": {name: d.values for name, d in ctx.datasets.items()}}

    return h.run_benchmark(settings, GROUPS, make_context, meta)


# ============================================================================ summary

#: (label, workbench figure, anchor figure, how to compare, target, name of the ratio):
#: see _harness.Comparison. Targets: the issue's (at least Redis's rate at each policy;
#: everysec costs at most 10 % of the rate without a data directory).
COMPARISONS = [
    *(row for layout in h.placements() for row in [
        *((f"store rt/s, {policy} vs Redis {policy}, {layout}",
           f"wb_{policy}.rt_{layout}.store_per_s", f"redis_{policy}.rt_{layout}.store_per_s",
           "rate", 1.0) for policy in POLICIES),
        (f"store rt/s, everysec vs no data dir, {layout}",
         f"wb_everysec.rt_{layout}.store_per_s", f"wb.rt_{layout}.store_per_s", "rate", 0.9,
         "everysec/none"),
        (f"store rt/s, always vs no data dir, {layout}",
         f"wb_always.rt_{layout}.store_per_s", f"wb.rt_{layout}.store_per_s", "rate", None,
         "always/none"),
        (f"server CPU per store, everysec vs no data dir, {layout}",
         f"wb_everysec.rt_{layout}.server_cpu_us", f"wb.rt_{layout}.server_cpu_us", "latency",
         None, "everysec/none"),
        (f"store rt/s, everysec vs no data dir, alternating batches, {layout}",
         f"wb.paired_{layout}.everysec_per_s", f"wb.paired_{layout}.none_per_s", "rate", 0.9,
         "everysec/none"),
        (f"server CPU per store, everysec vs no data dir, alternating batches, {layout}",
         f"wb.paired_{layout}.everysec_cpu_us", f"wb.paired_{layout}.none_cpu_us", "latency",
         None, "everysec/none"),
        (f"Redis RPUSH/s, everysec vs no AOF, {layout}",
         f"redis_everysec.rt_{layout}.store_per_s", f"redis.rt_{layout}.store_per_s", "rate",
         None, "everysec/none")]),
    *((f"4 clients stores/s, {policy} vs Redis {policy}", f"wb_{policy}.clients.total_per_s",
       f"redis_{policy}.clients.total_per_s", "rate", 1.0) for policy in POLICIES),
    ("4 clients stores/s, everysec vs no data dir", "wb_everysec.clients.total_per_s",
     "wb.clients.total_per_s", "rate", 0.9, "everysec/none"),
    ("4 clients stores/s, always vs no data dir", "wb_always.clients.total_per_s",
     "wb.clients.total_per_s", "rate", None, "always/none"),
    *((f"{who} always: 4 clients vs 1 client, split (group commit)",
       f"{system}.clients.total_per_s", f"{system}.rt_split.store_per_s", "rate", None,
       "4 clients/1") for who, system in (("workbench", "wb_always"),
                                           ("Redis", "redis_always"))),
    *((f"restart, {what}: workbench vs Redis", f"wb.restart_{dataset}.start_s",
       f"redis.restart_{dataset}.start_s", "speedup", None, "redis/wb")
      for dataset, what in (("small", "many small values"), ("big", "1 MiB values"),
                            ("empty", "no data"))),
]


def report(result: dict, markdown: bool = False) -> None:
    h.report(result, COMPARISONS, ["redis"], markdown)
    meta = result["meta"]
    for name, values in meta.get("restart_values", {}).items():
        sizes = [f"{key.split('.')[0]} {size / 2**20:,.1f} MiB"
                 for key, size in meta["restart_data"].items() if key.endswith(f".{name}_bytes")]
        print(f"restart data {name!r}: {values:,} values; on disk: {', '.join(sizes)}")


def main(argv: list[str] | None = None) -> int:
    return h.bench_main(argv, description=__doc__.split("\n")[0], groups=GROUPS,
                        settings=Settings(), quick=QUICK, output=RESULTS, run_child=run_child,
                        benchmark=benchmark, report=report)


if __name__ == "__main__":
    sys.exit(main())
