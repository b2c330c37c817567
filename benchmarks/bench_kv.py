"""Key-value benchmark: the workbench's key-value service against memcached and Redis.

Clients measured (values are 100-byte ``bytes``, keys ``str``; everything on loopback TCP):

* ``kv``: ``workbench.KeyValueStore`` (``store``/``get``, ``set_multi``/``get_multi``);
* ``wbmc``: ``workbench.memcache.Client``, the python-memcached face of the same service
  (``set``/``get``, ``set_multi``/``get_multi``), skipped with a note if it is not there;
* ``pymemcache``: ``pymemcache.client.base.Client`` with ``default_noreply=False`` (a set waits
  for STORED, as in baselines.md) against a private ``memcached -t 4`` (``set_many``/``get_many``);
* ``redis``: redis-py against a private ``redis-server`` (SET/GET, MSET/MGET).

The anchors are skipped with a note when their server is not installed
(``benchmarks/install-anchors.sh`` installs both).

What it measures:

1. single client, sequential: set round trips/s over 1,000 keys, then get round trips/s of the
   same keys (500 warm-up, then 10,000 of each), with this process and the server pinned to one
   vCPU ("same") and to one vCPU each ("split", 5,000 of each), as the workspace benchmark;
2. 100 keys at once, pinned the same two ways: each repetition times one 100-key set_multi,
   100 single sets of the same keys, one 100-key get_multi and 100 single gets (5 warm-up + 50
   timed repetitions); the median time of one 100-key operation, keys/s (100 / that time) and
   the speed-up of one multi operation over 100 single round trips of the same client, timed
   moments apart (target for the workbench clients: >= 10x);
3. 4 client processes, each doing set+get pairs on a key of its own for 3 s from a common start
   instant: total operations/s.

How: as ``bench_workspace.py`` (see ``_harness``): every case runs once per run, the clients of a
group interleaved with their order rotating from run to run; figures are medians over the runs
(default 5), a ratio is the median of the per-run ratios; each run records the CPU used by other
processes on the machine.

    python benchmarks/bench_kv.py [--runs N] [--quick] [--only GROUP] [--output JSON]

prints the figures, ratios and targets, and writes the raw results to
``benchmarks/results/kv-latest.json``. ``--quick`` (one short run) is the smoke test.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple

import _harness as h

VALUE = b"v" * 100
RESULTS = h.HERE / "results" / "kv-latest.json"
#: The anchor servers this benchmark compares with (keys of ``_harness.ANCHORS``).
ANCHORS = ["memcached", "redis"]
HAVE_MEMCACHE_FACE = importlib.util.find_spec("workbench.memcache") is not None


@dataclass(frozen=True)
class Settings(h.Settings):
    keys: int = 1_000  # distinct keys the single round trips cycle through (baselines.md)
    batch: int = 100  # keys per multi operation
    batch_reps: int = 50
    batch_warmup: int = 5


QUICK = Settings(runs=1, ops=2_000, split_ops=1_000, warmup=100, batch_reps=10, batch_warmup=2,
                 duration_s=0.5, client_warmup=100)


@dataclass
class Context:
    """What the cases share: settings, server ports and pids (every case connects anew)."""

    settings: Settings
    children: h.Children
    ports: dict[str, int]  # "wb", "memcached", "redis" (absent if skipped)
    pids: dict[str, int]
    broker_proc: Any = None

    def close(self) -> None:
        pass


# ============================================================================ the clients


class Api(NamedTuple):
    """One client library, driven the same way whichever it is: its own methods, unwrapped,
    so that no adapter code is timed."""

    set: Callable[[str, bytes], Any]
    get: Callable[[str], Any]
    set_multi: Callable[[dict], Any]
    get_multi: Callable[[list], Any]
    close: Callable[[], Any]
    value: Callable[[Any], bytes] = lambda got: got  # a get's result -> the value (untimed)
    found: Callable[[list, Any], dict] = lambda keys, got: got  # get_multi's -> {key: value}


def kv_api(port: int) -> Api:
    from workbench import KeyValueStore

    kv = KeyValueStore(h.LOOPBACK, port)
    return Api(kv.store, kv.get, kv.set_multi, kv.get_multi, kv.close,
               value=lambda entry: entry.value,
               found=lambda keys, got: {key: entry.value for key, entry in got.items()})


def wbmc_api(port: int) -> Api:
    from workbench import memcache

    mc = memcache.Client([f"{h.LOOPBACK}:{port}"])
    return Api(mc.set, mc.get, mc.set_multi, mc.get_multi, mc.disconnect_all)


def pymemcache_api(port: int) -> Api:
    from pymemcache.client.base import Client

    client = Client((h.LOOPBACK, port), default_noreply=False)
    return Api(client.set, client.get, client.set_many, client.get_many, client.close)


def redis_api(port: int) -> Api:
    import redis

    r = redis.Redis(host=h.LOOPBACK, port=port)
    return Api(r.set, r.get, r.mset, r.mget, r.close,
               found=lambda keys, got: {k: v for k, v in zip(keys, got) if v is not None})


class System(NamedTuple):
    connect: Callable[[int], Api]
    server: str  # a key of Context.ports


SYSTEMS = {"kv": System(kv_api, "wb"), "wbmc": System(wbmc_api, "wb"),
           "pymemcache": System(pymemcache_api, "memcached"), "redis": System(redis_api, "redis")}
#: The systems measured, workbench first.
NAMES = [name for name in SYSTEMS if name != "wbmc" or HAVE_MEMCACHE_FACE]


def connect(ctx: Context, system: str) -> Api:
    return SYSTEMS[system].connect(ctx.ports[SYSTEMS[system].server])


# ============================================================================ child processes
# The script runs itself as `bench_kv.py --child client JSON` for the 4-client case.

child_argv = partial(h.child_argv, __file__)


def run_child(role: str, params: dict) -> None:
    {"client": pair_client}[role](**params)


def pair_client(system: str, port: int, key: str, warmup: int) -> None:
    api = SYSTEMS[system].connect(port)
    put, get = api.set, api.get

    def pair() -> None:
        put(key, VALUE)
        get(key)

    try:
        h.timed_client(pair, warmup, per_call=2)
    finally:
        api.close()


# ============================================================================ cases


def round_trips(ctx: Context, run: int, system: str, layout: str) -> dict:
    s = ctx.settings
    n = s.round_trips(layout)
    api = connect(ctx, system)
    keys = [f"rt{i}" for i in range(s.keys)]
    put, get = api.set, api.get
    try:
        set_keys, get_keys = itertools.cycle(keys), itertools.cycle(keys)
        sets = h.time_loop(lambda: put(next(set_keys), VALUE), n, s.warmup)
        gets = h.time_loop(lambda: get(next(get_keys)), n, s.warmup)
        assert api.value(get(keys[-1])) == VALUE, f"{system}: wrong value read back"
        return {"set_per_s": sets, "get_per_s": gets}
    finally:
        api.close()


def batches(ctx: Context, run: int, system: str) -> dict:
    """One 100-key set_multi, 100 sets, one get_multi, 100 gets, in turn, repeatedly."""
    s = ctx.settings
    api = connect(ctx, system)
    keys = [f"batch{i}" for i in range(s.batch)]
    mapping = dict.fromkeys(keys, VALUE)
    put, get, put_multi, get_multi = api.set, api.get, api.set_multi, api.get_multi

    def sets() -> None:
        for key in keys:
            put(key, VALUE)

    def gets() -> None:
        for key in keys:
            get(key)

    steps = {"set_multi": lambda: put_multi(mapping), "set_100": sets,
             "get_multi": lambda: get_multi(keys), "get_100": gets}
    times: dict[str, list[float]] = {name: [] for name in steps}
    try:
        for rep in range(s.batch_warmup + s.batch_reps):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                elapsed = time.perf_counter() - start
                if rep >= s.batch_warmup:
                    times[name].append(elapsed)
        found = api.found(keys, get_multi(keys))
        assert found == mapping, f"{system}: get_multi read back {len(found)} of {s.batch}"
    finally:
        api.close()
    t = {name: h.median(values) for name, values in times.items()}
    return {"set_multi_s": t["set_multi"], "get_multi_s": t["get_multi"],
            "set_100_s": t["set_100"], "get_100_s": t["get_100"],
            "set_multi_keys_per_s": s.batch / t["set_multi"],
            "get_multi_keys_per_s": s.batch / t["get_multi"],
            "set_speedup_x": t["set_100"] / t["set_multi"],
            "get_speedup_x": t["get_100"] / t["get_multi"]}


def clients(ctx: Context, run: int, system: str) -> dict:
    s = ctx.settings
    port = ctx.ports[SYSTEMS[system].server]
    return h.clients_rate(ctx.children, f"{system}-client", [
        child_argv("client", system=system, port=port, key=f"pair{run}_{i}",
                   warmup=s.client_warmup)
        for i in range(s.clients)], s.duration_s)


def _group(case: str, measure: Callable, layout: str | None = None) -> list[h.Case]:
    return [h.Case(f"{name}.{case}", partial(measure, system=name), SYSTEMS[name].server, layout)
            for name in NAMES]


#: Cases that compare with one another form a group; within a group the order rotates per run.
#: Single-client cases run pinned in each layout (see _harness.placements); the 4-client case
#: runs unpinned.
GROUPS: dict[str, list[h.Case]] = {
    **{f"rt_{layout}": _group(f"rt_{layout}", partial(round_trips, layout=layout), layout)
       for layout in h.placements()},
    **{f"multi_{layout}": _group(f"multi_{layout}", batches, layout)
       for layout in h.placements()},
    "clients": _group("clients", clients),
}


# ============================================================================ runs


def make_context(children: h.Children, settings: Settings) -> Context:
    if not HAVE_MEMCACHE_FACE:
        print("workbench.memcache not found: the memcache.Client (wbmc) cases are SKIPPED",
              flush=True)
    servers = {"wb": h.start_broker(children), **h.start_anchors(children, ANCHORS)}
    return Context(settings, children, {name: port for name, (_, port) in servers.items()},
                   {name: proc.pid for name, (proc, _) in servers.items()}, servers["wb"][0])


def benchmark(settings: Settings) -> dict:
    return h.run_benchmark(settings, GROUPS, make_context, lambda ctx: {
        "memcached_skipped": "memcached" not in ctx.ports,
        "redis_skipped": "redis" not in ctx.ports,
        "memcache_client_skipped": not HAVE_MEMCACHE_FACE})


# ============================================================================ summary

#: (label, workbench figure, anchor figure, how to compare, target, name of the ratio):
#: see _harness.Comparison.
COMPARISONS = [
    *(row for layout in h.placements() for row in [
        (f"KeyValueStore set vs pymemcache set, {layout}", f"kv.rt_{layout}.set_per_s",
         f"pymemcache.rt_{layout}.set_per_s", "rate"),
        (f"KeyValueStore get vs pymemcache get, {layout}", f"kv.rt_{layout}.get_per_s",
         f"pymemcache.rt_{layout}.get_per_s", "rate"),
        (f"KeyValueStore set vs redis-py SET, {layout}", f"kv.rt_{layout}.set_per_s",
         f"redis.rt_{layout}.set_per_s", "rate"),
        (f"KeyValueStore get vs redis-py GET, {layout}", f"kv.rt_{layout}.get_per_s",
         f"redis.rt_{layout}.get_per_s", "rate"),
        (f"memcache.Client set vs pymemcache set, {layout}", f"wbmc.rt_{layout}.set_per_s",
         f"pymemcache.rt_{layout}.set_per_s", "rate"),
        (f"memcache.Client get vs pymemcache get, {layout}", f"wbmc.rt_{layout}.get_per_s",
         f"pymemcache.rt_{layout}.get_per_s", "rate")]),
    *(row for layout in h.placements() for row in [
        *((f"{client} {multi} vs 100 {single}s, {layout}", f"{system}.multi_{layout}.{op}_multi_s",
           f"{system}.multi_{layout}.{op}_100_s", "speedup", 10.0, "singles/multi")
          for system, client in (("kv", "KeyValueStore"), ("wbmc", "memcache.Client"))
          for op, multi, single in (("set", "set_multi", "set"), ("get", "get_multi", "get"))),
        (f"KeyValueStore set_multi keys/s vs pymemcache set_many, {layout}",
         f"kv.multi_{layout}.set_multi_keys_per_s",
         f"pymemcache.multi_{layout}.set_multi_keys_per_s", "rate"),
        (f"KeyValueStore get_multi keys/s vs pymemcache get_many, {layout}",
         f"kv.multi_{layout}.get_multi_keys_per_s",
         f"pymemcache.multi_{layout}.get_multi_keys_per_s", "rate"),
        (f"KeyValueStore set_multi keys/s vs redis-py MSET, {layout}",
         f"kv.multi_{layout}.set_multi_keys_per_s",
         f"redis.multi_{layout}.set_multi_keys_per_s", "rate"),
        (f"KeyValueStore get_multi keys/s vs redis-py MGET, {layout}",
         f"kv.multi_{layout}.get_multi_keys_per_s",
         f"redis.multi_{layout}.get_multi_keys_per_s", "rate")]),
    ("KeyValueStore 4 clients vs pymemcache 4 clients", "kv.clients.total_per_s",
     "pymemcache.clients.total_per_s", "rate"),
    ("KeyValueStore 4 clients vs redis-py 4 clients", "kv.clients.total_per_s",
     "redis.clients.total_per_s", "rate"),
    ("memcache.Client 4 clients vs pymemcache 4 clients", "wbmc.clients.total_per_s",
     "pymemcache.clients.total_per_s", "rate"),
]


def report(result: dict, markdown: bool = False) -> None:
    h.report(result, COMPARISONS, ANCHORS, markdown)
    if result["meta"].get("memcache_client_skipped"):
        print("\nmemcache.Client (wbmc) cases SKIPPED: workbench.memcache is not there")


def main(argv: list[str] | None = None) -> int:
    return h.bench_main(argv, description=__doc__.split("\n")[0], groups=GROUPS,
                        settings=Settings(), quick=QUICK, output=RESULTS, run_child=run_child,
                        benchmark=benchmark, report=report)


if __name__ == "__main__":
    sys.exit(main())
