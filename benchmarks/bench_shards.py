"""Several-brokers benchmark: store/fetch rates of 8 clients against 1, 2 and 3 brokers, what
the multi-broker client costs per operation, and ``Shards.multicast`` over three gateways
against sequential unicasts, in one run.

Servers (everything on loopback): three brokers ``b1``, ``b2``, ``b3`` (``workbench broker``;
the workbench's clients reach them over their Unix sockets, as clients on their machine do)
and a gateway (``workbench web``) in front of each, ``g1``, ``g2``, ``g3``. On a machine with
fewer cores than brokers the brokers share the cores: the figures then say what the cluster
client costs, not how far several brokers scale, which takes a core (or a host) per broker.

What it measures (values are 100-byte ``bytes``):

1. ``clients``: 8 client processes, each given the cluster as a list of 1, 2 or 3 brokers
   (``NwsServer([b1, ...])``) and with workspaces of its own, two on every broker of the
   cluster (names picked by the placement, so that each broker serves the same share, which
   16 names would not promise), doing ``store`` + ``fetch`` pairs on them in turn for 3 s from
   a common start instant: total round trips/s, and the CPU time of the brokers together per
   round trip;
2. ``rt_same``, ``rt_split``, pinned as in the workspace benchmark (this process and ``b1``):
   500 warm-up, then 10,000 ``store`` round trips (5,000 split), then as many ``fetch``es, on a
   NetWorkSpace opened through the 3-broker cluster (``cluster``) and through ``b1`` alone
   (``single``), the workspace's name placed on ``b1`` so that the same broker process serves
   both; then ``openWs`` of that workspace per call, and for the cluster the placement alone
   (``brokers.place``), in µs;
3. ``paired``: the same stores and fetches, ``cluster`` and ``single`` in 20 alternating
   batches, the order flipping each batch, pinned in each layout: the overhead without the
   drift of a shared machine between two cases (the median of the batches);
4. ``wait`` and ``list``: a ``Shards`` over the three gateways, one key each, with kept-alive
   connections (``limit=1``): ``multicast`` to the three keys against three sequential
   ``unicast``s of the same request, seconds per round (median of 20 rounds after 2 warm-up;
   200 after 20 for ``list``). ``wait`` is ``GET /api/workspaces/W/vars/V?wait=0.05`` on an
   empty variable: each gateway waits 50 ms at its broker and answers 408. That is a request
   whose time goes in waiting (at a broker, for a disk, on a network), which three gateways do
   at once, and what a multicast is for. ``list`` (``GET /api/workspaces``, reported) is one
   whose time is the gateways' CPU, which three gateways on 2 vCPUs cannot spend at once.

How: as ``bench_durable.py`` (see ``_harness``): every case runs once per run, the cases of a
group in an order that rotates from run to run; figures are medians over the runs (default 5),
a ratio is the median of the per-run ratios.

    python benchmarks/bench_shards.py [--runs N] [--quick] [--only GROUP] [--output JSON]

prints the figures, ratios and targets (the cluster client's round trips at most 10 % slower
than the single-broker client's; the multicast at least 2x as fast as the sequential unicasts)
and writes the raw results to ``benchmarks/results/shards-latest.json``. ``--quick`` (1 short
run) is the smoke test.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import _harness as h

VALUE = b"v" * 100
VAR = "v"
RESULTS = h.HERE / "results" / "shards-latest.json"
BROKERS = ("b1", "b2", "b3")
#: The gateway in front of each broker, and the Shards key that names it alone.
GATEWAYS = {"g1": "k1", "g2": "k2", "g3": "k3"}
#: The workspace the gateway requests read (made on every broker; its variable stays empty).
GATEWAY_WS = "shards_bench"
STATUS_OK, TIMED_OUT = 200, 408


@dataclass(frozen=True)
class Settings(h.Settings):
    clients: int = 8
    ws_per_broker: int = 2  # workspaces of each client process on each broker of the cluster
    pair_batches: int = 20
    open_calls: int = 2_000  # openWs calls timed per figure
    place_calls: int = 20_000  # placements timed per figure
    wait_s: float = 0.05  # how long each gateway waits for the value that never comes
    wait_rounds: int = 20
    wait_warmup: int = 2
    list_rounds: int = 200
    list_warmup: int = 20


QUICK = Settings(runs=1, ops=500, split_ops=300, warmup=50, clients=3, duration_s=0.5,
                 client_warmup=20, pair_batches=4, open_calls=100, place_calls=1_000,
                 wait_rounds=3, wait_warmup=1, list_rounds=10, list_warmup=2)


@dataclass
class Context:
    """What the cases share: settings, servers, the Shards over the gateways."""

    settings: Settings
    children: h.Children
    ports: dict[str, int]  # b1..b3 (brokers), g1..g3 (their gateways)
    pids: dict[str, int]
    broker_procs: list  # brokers and gateways: their logs are searched for errors
    home: str  # the single-client cases' workspace, placed on b1 by the 3-broker cluster
    shards: Any  # workbench.shards.Shards: g1..g3, keyed k1..k3

    def cluster(self, size: int) -> list[str]:
        """The first ``size`` brokers, as a client is given them."""
        return [f"{h.LOOPBACK}:{self.ports[name]}" for name in BROKERS[:size]]

    def close(self) -> None:
        self.shards.close()


def names_on_each(cluster: list[str], prefix: str, per_broker: int) -> list[str]:
    """Workspace names, ``per_broker`` of them placed on each broker of ``cluster`` (the first
    found counting up from ``prefix``0), interleaved so that consecutive names are on
    different brokers."""
    from workbench.client.cluster import members, place

    brokers = members(cluster)
    found: dict[str, list[str]] = {member.name: [] for member in brokers}
    for index in itertools.count():
        name = f"{prefix}{index}"
        picked = found[place(brokers, name).name]
        if len(picked) < per_broker:
            picked.append(name)
        if all(len(names) == per_broker for names in found.values()):
            return [name for group in zip(*found.values()) for name in group]


# ============================================================================ child processes
# The script runs itself as `bench_shards.py --child pairs JSON` for the 8-client cases.

child_argv = partial(h.child_argv, __file__)


def run_child(role: str, params: dict) -> None:
    {"pairs": pairs_client}[role](**params)


def pairs_client(cluster: list[str], names: list[str], warmup: int) -> None:
    """store + fetch on each of ``names`` in turn, through the cluster's client."""
    from workbench import NwsServer

    server = NwsServer(cluster)
    spaces = itertools.cycle([server.openWs(name) for name in names])  # owned: purged at exit

    def pair() -> None:
        ws = next(spaces)
        ws.store(VAR, VALUE)
        ws.fetch(VAR)

    try:
        h.timed_client(pair, warmup, per_call=2)
    finally:
        server.close()


# ============================================================================ cases


def clients(ctx: Context, run: int, size: int) -> dict:
    """``clients`` processes on a cluster of ``size`` brokers -> total round trips/s, and the
    CPU the brokers used together per round trip (warm-up round trips counted: they are in
    the CPU time too)."""
    s = ctx.settings
    cluster = ctx.cluster(size)
    before = sum(h.cpu_ns(ctx.pids[name]) for name in BROKERS)
    reports = h.run_synchronized(ctx.children, f"b{size}-client", [
        child_argv("pairs", cluster=cluster, warmup=s.client_warmup,
                   names=names_on_each(cluster, f"c{run}_{size}_{i}_", s.ws_per_broker))
        for i in range(s.clients)], s.duration_s)
    used = sum(h.cpu_ns(ctx.pids[name]) for name in BROKERS) - before
    done = sum(report["ops"] for report in reports) + 2 * s.clients * s.client_warmup
    return {"total_per_s": h.aggregate_rate(reports), "brokers_cpu_us": used / done / 1e3}


def session(ctx: Context, system: str) -> Any:
    """A client of the 3-broker cluster, or of ``b1`` alone."""
    from workbench import NwsServer

    if system == "cluster":
        return NwsServer(ctx.cluster(3))
    return NwsServer(h.LOOPBACK, ctx.ports["b1"])


def timed_pairs(ws: Any, var: str, n: int) -> tuple[float, float]:
    """``n`` stores, then ``n`` fetches of what they stored -> (stores/s, fetches/s)."""
    stores = h.time_loop(lambda: ws.store(var, VALUE), n)
    fetches = h.time_loop(lambda: ws.fetch(var), n)
    # Every stored value was fetched exactly once: nothing may be left over.
    if ws.fetchTry(var) is not None:
        raise RuntimeError("values left after as many fetches as stores")
    return stores, fetches


def round_trips(ctx: Context, run: int, system: str, layout: str) -> dict:
    s = ctx.settings
    server = session(ctx, system)
    try:
        ws = server.useWs(ctx.home)
        var = f"rt{run}_{layout}_{system}"
        for _ in range(s.warmup):
            ws.store(var, VALUE)
            ws.fetch(var)
        stores, fetches = timed_pairs(ws, var, s.round_trips(layout))
        figures = {"store_per_s": stores, "fetch_per_s": fetches,
                   "open_us": 1e6 / h.time_loop(lambda: server.openWs(ctx.home), s.open_calls)}
        if system == "cluster":
            figures["place_us"] = 1e6 / h.time_loop(lambda: server.brokers.place(ctx.home),
                                                    s.place_calls)
        return figures
    finally:
        server.close()


def paired(ctx: Context, run: int, layout: str) -> dict:
    """``cluster`` and ``single`` stores and fetches in alternating batches (the order
    flipping each time), pinned in ``layout``: the median of the batches."""
    s = ctx.settings
    systems = ("cluster", "single")
    batch = s.round_trips(layout) // s.pair_batches
    servers = [session(ctx, system) for system in systems]
    figures: dict[str, list] = {system: [] for system in systems}
    try:
        spaces = [server.useWs(ctx.home) for server in servers]
        var = f"pair{run}_{layout}"
        with h.Pinned(os.getpid(), ctx.pids["b1"], h.placements()[layout]):
            for ws in spaces:
                for _ in range(s.warmup):
                    ws.store(var, VALUE)
                    ws.fetch(var)
            for index in range(s.pair_batches):
                turn = list(zip(systems, spaces))
                for system, ws in (turn if index % 2 else reversed(turn)):
                    figures[system].append(timed_pairs(ws, var, batch))
    finally:
        for server in servers:
            server.close()
    return {f"{system}_{op}_per_s": h.median(rates[i] for rates in figures[system])
            for system in systems for i, op in enumerate(("store", "fetch"))}


def gateway_request(ctx: Context, request: str) -> tuple[str, int]:
    """A gateway case's request -> (its path, the status every gateway must answer)."""
    if request == "wait":
        return (f"/api/workspaces/{GATEWAY_WS}/vars/{VAR}?wait={ctx.settings.wait_s:g}",
                TIMED_OUT)
    return "/api/workspaces", STATUS_OK


def gateways(ctx: Context, run: int, how: str, request: str) -> dict:
    """Rounds of one request to every gateway, by one ``multicast`` or by a ``unicast`` per
    key, one after another -> seconds per round."""
    s = ctx.settings
    path, expected = gateway_request(ctx, request)
    keys = list(GATEWAYS.values())

    def checked(answers: list) -> None:
        if [answer.status for answer in answers] != [expected] * len(keys):
            raise RuntimeError(f"GET {path}: {[(a.status, a.body[:200]) for a in answers]}")

    def multicast() -> None:
        checked(ctx.shards.multicast(keys, "GET", path))

    def unicasts() -> None:
        checked([ctx.shards.unicast(key, "GET", path) for key in keys])

    op: Callable[[], None] = multicast if how == "multicast" else unicasts
    rounds, warmup = ((s.wait_rounds, s.wait_warmup) if request == "wait"
                      else (s.list_rounds, s.list_warmup))
    for _ in range(warmup):
        op()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        op()
        times.append(time.perf_counter() - started)
    return {"round_s": h.median(times)}


#: Cases that compare with one another form a group; within a group the order rotates per run.
GROUPS: dict[str, list[h.Case]] = {
    "clients": [h.Case(f"b{size}.clients", partial(clients, size=size), "b1")
                for size in (1, 2, 3)],
    **{f"rt_{layout}": [h.Case(f"{system}.rt_{layout}",
                               partial(round_trips, system=system, layout=layout), "b1", layout)
                        for system in ("cluster", "single")]
       for layout in h.placements()},
    "paired": [h.Case(f"wb.paired_{layout}", partial(paired, layout=layout), "b1")
               for layout in h.placements()],
    **{request: [h.Case(f"{how}.{request}", partial(gateways, how=how, request=request), "g1")
                 for how in ("multicast", "unicast")]
       for request in ("wait", "list")},
}


# ============================================================================ runs


def make_context(children: h.Children, settings: Settings) -> Context:
    from workbench.client.cluster import members, place
    from workbench.shards import Shards

    servers = {name: h.start_broker(children) for name in BROKERS}
    for gateway, broker in zip(GATEWAYS, BROKERS):
        servers[gateway] = h.start_gateway(children, servers[broker][1])
    ports = {name: port for name, (_, port) in servers.items()}
    shards = Shards(((f"{h.LOOPBACK}:{ports[gateway]}", key) for gateway, key in
                     GATEWAYS.items()), limit=1)
    shards.resources.broadcast("PUT", f"/api/workspaces/{GATEWAY_WS}")  # made on each broker
    three = members([f"{h.LOOPBACK}:{ports[name]}" for name in BROKERS])
    home = next(name for name in (f"home{i}" for i in itertools.count())
                if place(three, name) == three[0])
    return Context(settings, children, ports,
                   {name: proc.pid for name, (proc, _) in servers.items()},
                   [proc for proc, _ in servers.values()], home, shards)


def benchmark(settings: Settings) -> dict:
    return h.run_benchmark(settings, GROUPS, make_context,
                           lambda ctx: {"home_ws": ctx.home, "brokers": len(BROKERS)})


# ============================================================================ summary

#: (label, workbench figure, anchor figure, how to compare, target, name of the ratio): see
#: _harness.Comparison. Targets: the issue's (the multi-broker client at most 10 % slower per
#: operation than the single-broker one; multicast at least 2x the sequential unicasts).
COMPARISONS = [
    *((f"8 clients store+fetch rt/s, {size} brokers vs 1", f"b{size}.clients.total_per_s",
       "b1.clients.total_per_s", "rate", None, f"{size}/1") for size in (2, 3)),
    *((f"8 clients, brokers' CPU per rt, {size} brokers vs 1", f"b{size}.clients.brokers_cpu_us",
       "b1.clients.brokers_cpu_us", "latency", None, f"{size}/1") for size in (2, 3)),
    *(row for layout in h.placements() for row in [
        *((f"{op} rt/s, 3-broker cluster vs one broker, {layout}",
           f"cluster.rt_{layout}.{op}_per_s", f"single.rt_{layout}.{op}_per_s", "rate", 0.9,
           "cluster/single") for op in ("store", "fetch")),
        *((f"{op} rt/s, the same, alternating batches, {layout}",
           f"wb.paired_{layout}.cluster_{op}_per_s", f"wb.paired_{layout}.single_{op}_per_s",
           "rate", 0.9, "cluster/single") for op in ("store", "fetch")),
        (f"openWs per call, 3-broker cluster vs one broker, {layout}",
         f"cluster.rt_{layout}.open_us", f"single.rt_{layout}.open_us", "latency", None,
         "cluster/single")]),
    ("multicast vs 3 sequential unicasts, a 50 ms wait", "multicast.wait.round_s",
     "unicast.wait.round_s", "speedup", 2.0, "unicasts/multicast"),
    ("multicast vs 3 sequential unicasts, GET /api/workspaces", "multicast.list.round_s",
     "unicast.list.round_s", "speedup", None, "unicasts/multicast"),
]


def report(result: dict, markdown: bool = False) -> None:
    h.report(result, COMPARISONS, [], markdown)


def main(argv: list[str] | None = None) -> int:
    return h.bench_main(argv, description=__doc__.split("\n")[0], groups=GROUPS,
                        settings=Settings(), quick=QUICK, output=RESULTS, run_child=run_child,
                        benchmark=benchmark, report=report)


if __name__ == "__main__":
    sys.exit(main())
