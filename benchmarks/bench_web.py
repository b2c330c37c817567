"""Web gateway benchmark: the HTTP/JSON API of ``workbench web`` against a bare endpoint of the
same stack, and the delivery of its server-sent events, in the same run.

Servers (everything on loopback TCP):

* ``api``: a broker (``workbench broker``) and ``python -m workbench web --broker ADDR --port
  P`` in front of it, as a user starts them;
* ``bare``: the floor of the stack, in a process of its own: a Starlette application whose
  routes answer a constant (``GET``, the JSON the API answers a findTry with) or read a JSON
  body and answer 204 (``POST``, as a store does), served by uvicorn with the gateway's
  settings (``workbench/web/server.py``: warnings only, no access log, no server header);
* ``py`` (reported, no target): the same stores and findTrys made from Python with a
  ``NetWorkSpace`` straight to the broker: what the broker's round trip is without HTTP.

What it measures:

1. one client (this process, an ``httpx.Client``: one keep-alive connection, reused): 200
   warm-up, then 2,000 requests back to back: ``POST /api/workspaces/bench/vars/V`` (a store,
   the body a small JSON object) and ``GET`` of the same variable (a findTry), against the
   bare ``POST`` and ``GET``; requests/s, and the CPU time per request of the client, of the
   server (every thread, as the scheduler counts it) and, for the API, of the broker;
2. 4 client processes, each with its own keep-alive connection, making the same requests for
   3 s from a common start instant: total requests/s, and the servers' CPU per request;
3. server-sent events: a reader process holds ``GET /api/events?ws=NAME`` open with httpx and
   parses it as a browser's ``EventSource`` does (``event:``/``data:`` lines, an event
   dispatched at the blank line); this process sleeps 2 ms, takes the time and calls
   ``NetWorkSpace.store`` on the broker; the reader takes its time when the ``workspace`` event
   saying ``stored`` is dispatched. 20 warm-up, then 200 samples: median and p90 (the
   clock is CLOCK_MONOTONIC, shared by the processes). The same measured with a Python
   ``Watch`` on the broker in the reader's place (reported: the broker's part of it).

How: as ``bench_durable.py`` (see ``_harness``): every case runs once per run, the cases of a
group in an order that rotates from run to run; figures are medians over the runs (default 5),
a ratio is the median of the per-run ratios. Nothing is pinned.

    python benchmarks/bench_web.py [--runs N] [--quick] [--only GROUP] [--output JSON]

prints the figures, ratios and targets (the API at least 0.7x the bare endpoint's rate; SSE
delivery under 5 ms median), and writes the raw results to
``benchmarks/results/web-latest.json``. ``--quick`` (1 short run) is the smoke test.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import _harness as h

WORKSPACE = "bench"
RESULTS = h.HERE / "results" / "web-latest.json"
#: What a store sends: a small JSON object (built once: the client's encoding is not timed).
VALUE = {"name": "sample", "step": 12, "loss": 0.25, "tags": ["a", "b"]}
BODY = json.dumps(VALUE).encode()
JSON_TYPE = {"content-type": "application/json"}
#: What the bare GET answers: the view the API answers a findTry of VALUE with.
CONSTANT = {"kind": "json", "value": VALUE}
BARE_PATH = "/bare"
STATUS_OK, NO_CONTENT = 200, 204


@dataclass(frozen=True)
class Settings(h.Settings):
    ops: int = 2_000  # timed requests of one client, per figure
    warmup: int = 200
    sse_samples: int = 200
    sse_warmup: int = 20
    gap_s: float = 0.002  # idle time before each store of the SSE case: the reader is asleep


QUICK = Settings(runs=1, ops=100, warmup=20, duration_s=0.3, client_warmup=10,
                 sse_samples=20, sse_warmup=5)


@dataclass
class Context:
    """What the cases share: settings, servers (every case connects anew)."""

    settings: Settings
    children: h.Children
    ports: dict[str, int]  # "api" (the gateway), "bare", "py" and "broker" (the broker)
    pids: dict[str, int]  # the same but "py"
    broker_procs: list  # the broker, the gateway, the bare server: their logs are searched

    def url(self, system: str, path: str) -> str:
        return f"http://{h.LOOPBACK}:{self.ports[system]}{path}"

    def close(self) -> None:
        pass


# ============================================================================ requests


class Request(NamedTuple):
    """One kind of request of a system: where it goes and what it must answer."""

    method: str
    path: str  # under the server
    expect: int


def variable_path(var: str) -> str:
    return f"/api/workspaces/{WORKSPACE}/vars/{var}"


def requests(system: str, var: str) -> dict[str, Request]:
    """The requests of a system, by the operation they stand for."""
    if system == "api":
        return {"store": Request("POST", variable_path(var), NO_CONTENT),
                "find": Request("GET", variable_path(var), STATUS_OK)}
    return {"store": Request("POST", BARE_PATH, NO_CONTENT),
            "find": Request("GET", BARE_PATH, STATUS_OK)}


def requester(http: Any, base: str, request: Request) -> Callable[[], None]:
    """One request on ``http`` (an ``httpx.Client``), its status checked: a benchmark that
    counted errors would measure something else."""
    url = base + request.path
    send = (partial(http.post, url, content=BODY, headers=JSON_TYPE)
            if request.method == "POST" else partial(http.get, url))

    def call() -> None:
        response = send()
        if response.status_code != request.expect:
            raise RuntimeError(f"{request.method} {url}: {response.status_code} "
                               f"{response.text[:300]}")
    return call


def python_op(ws: Any, op: str, var: str) -> Callable[[], Any]:
    """The same operation made from Python on a NetWorkSpace."""
    return partial(ws.store, var, VALUE) if op == "store" else partial(ws.findTry, var)


# ============================================================================ child processes
# The script runs itself as `bench_web.py --child ROLE JSON`: the bare server, the clients of
# the 4-client cases and the event readers.

child_argv = partial(h.child_argv, __file__)


def run_child(role: str, params: dict) -> None:
    {"bare_server": bare_server, "client": client, "sse_reader": sse_reader,
     "watch_reader": watch_reader}[role](**params)


def bare_app() -> Any:
    """The floor of the stack: Starlette routing to two endpoints that do what every API
    endpoint does around its broker call (read a JSON body; answer JSON)."""
    from starlette.applications import Starlette
    from starlette.requests import Request as HttpRequest
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def constant(request: HttpRequest) -> Response:
        return JSONResponse(CONSTANT)

    async def read_json(request: HttpRequest) -> Response:
        json.loads(await request.body())
        return Response(status_code=NO_CONTENT)

    return Starlette(routes=[Route(BARE_PATH, constant, methods=["GET"]),
                             Route(BARE_PATH, read_json, methods=["POST"])])


def bare_server(port: int, parent_pid: int) -> None:
    import uvicorn

    h.die_with_parent(parent_pid)
    # The settings workbench.web.server gives uvicorn for the gateway.
    config = uvicorn.Config(bare_app(), host=h.LOOPBACK, port=port, log_level="warning",
                            lifespan="on", access_log=False, server_header=False)
    uvicorn.Server(config).run()


def client(base: str, request: list, warmup: int) -> None:
    import httpx

    with httpx.Client() as http:
        h.timed_client(requester(http, base, Request(*request)), warmup, per_call=1)


def server_sent_events(lines: Iterable[str]) -> Iterator[tuple[str, str, int]]:
    """Lines of a ``text/event-stream`` -> (event name, data, CLOCK_MONOTONIC ns when the event
    was dispatched), parsed as the HTML standard's EventSource does: fields until a blank
    line, which dispatches the event; comments (``:``) skipped."""
    name, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield name, "\n".join(data), h.mono_ns()
            name, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


def stored_count(events: list[dict], var: str) -> int:
    return sum(event["count"] for event in events
               if event["event"] == "stored" and event.get("var") == var)


def sse_reader(url: str, var: str) -> None:
    """Follow the gateway's events; say "ready" at the snapshot, then the time of every
    event saying ``var`` was stored."""
    import httpx

    with httpx.Client(timeout=httpx.Timeout(h.START_TIMEOUT, read=None)) as http:
        with http.stream("GET", url) as response:
            if response.status_code != STATUS_OK:
                raise SystemExit(f"GET {url}: {response.status_code} {response.read()[:300]!r}")
            for name, data, at in server_sent_events(response.iter_lines()):
                if name == "snapshot":
                    h.child_report({"ready": True})
                elif name == "workspace" and (count := stored_count(json.loads(data), var)):
                    h.child_report({"at": at, "count": count})


def watch_reader(port: int, workspace: str, var: str) -> None:
    """The same as ``sse_reader`` with a Python ``Watch`` on the broker itself."""
    import threading

    from workbench.client.embedded import connect
    from workbench.client.pubsub import Watch

    def arrived(events: list[dict]) -> None:
        at = h.mono_ns()
        if count := stored_count(events, var):
            h.child_report({"at": at, "count": count})

    connection = connect(h.LOOPBACK, port)
    try:
        Watch(connection, workspace, arrived)
        h.child_report({"ready": True})
        threading.Event().wait()  # until stopped
    finally:
        connection.close()


# ============================================================================ cases


def one_client(ctx: Context, run: int, system: str, op: str) -> dict:
    """``ops`` requests (or Python calls) back to back -> requests/s and CPU per request."""
    s = ctx.settings
    var = f"rt{run}_{op}"
    if system == "py":
        from workbench import NetWorkSpace

        http = NetWorkSpace(WORKSPACE, h.LOOPBACK, ctx.ports["py"], useUse=True)
        call, close = python_op(http, op, var), http.close
    else:
        import httpx

        http = httpx.Client()
        call, close = requester(http, ctx.url(system, ""), requests(system, var)[op]), http.close
    processes = {**server_pids(ctx, system), "client": os.getpid()}
    try:
        seed(ctx, system, var)
        for _ in range(s.warmup):
            call()
        before = {name: h.cpu_ns(pid) for name, pid in processes.items()}
        rate = h.time_loop(call, s.ops)
        after = {name: h.cpu_ns(pid) for name, pid in processes.items()}
    finally:
        close()
    return {"requests_per_s": rate,
            **{f"{name}_cpu_us": (after[name] - before[name]) / s.ops / 1e3
               for name in processes}}


def server_pids(ctx: Context, system: str) -> dict[str, int]:
    """The processes that serve a system's requests, by role."""
    return {"api": {"server": ctx.pids["api"], "broker": ctx.pids["broker"]},
            "bare": {"server": ctx.pids["bare"]},
            "py": {"broker": ctx.pids["broker"]}}[system]


def seed(ctx: Context, system: str, var: str) -> None:
    """One value in ``var`` for the findTrys to find, stored as the system stores it: through
    the API it is JSON (what the bare GET answers is its view), from Python a pickle."""
    if system == "api":
        import httpx

        response = httpx.post(ctx.url("api", variable_path(var)), content=BODY,
                              headers=JSON_TYPE)
        if response.status_code != NO_CONTENT:
            raise RuntimeError(f"store through the API: {response.status_code} "
                               f"{response.text[:300]}")
    elif system == "py":
        from workbench import NetWorkSpace

        ws = NetWorkSpace(WORKSPACE, h.LOOPBACK, ctx.ports["py"], useUse=True)
        try:
            ws.store(var, VALUE)
        finally:
            ws.close()


def clients(ctx: Context, run: int, system: str, op: str) -> dict:
    """``clients`` processes making ``op`` requests together -> total requests/s and the
    servers' CPU per request (warm-up requests counted: they are in the CPU time too)."""
    s = ctx.settings
    var = f"clients{run}_{op}"
    seed(ctx, system, var)
    servers = server_pids(ctx, system)
    before = {name: h.cpu_ns(pid) for name, pid in servers.items()}
    request = list(requests(system, var)[op])
    reports = h.run_synchronized(ctx.children, f"{system}-client", [
        child_argv("client", base=ctx.url(system, ""), request=request, warmup=s.client_warmup)
        for _ in range(s.clients)], s.duration_s)
    done = sum(report["ops"] for report in reports) + s.clients * s.client_warmup
    return {"total_per_s": h.aggregate_rate(reports),
            **{f"{name}_cpu_us": (h.cpu_ns(pid) - before[name]) / done / 1e3
               for name, pid in servers.items()}}


def event_latency(ctx: Context, run: int, system: str) -> dict:
    """Store from this process, see the ``stored`` event in the reader -> latency figures."""
    from workbench import NetWorkSpace

    s = ctx.settings
    name, var = f"events{run}_{system}", "v"
    ws = NetWorkSpace(name, h.LOOPBACK, ctx.ports["broker"])  # made (and owned) here
    if system == "api":
        argv = child_argv("sse_reader", url=ctx.url("api", f"/api/events?ws={name}"), var=var)
    else:
        argv = child_argv("watch_reader", port=ctx.ports["broker"], workspace=name, var=var)
    proc = ctx.children.spawn(f"{system}-reader", argv, pipes=True)
    reader = h.LineReader(proc, f"{system} event reader")
    latencies = []
    try:
        if json.loads(reader.readline(h.START_TIMEOUT)) != {"ready": True}:
            raise RuntimeError(f"{reader.name}: did not say it was ready")
        for sample in range(-s.sse_warmup, s.sse_samples):
            time.sleep(s.gap_s)
            sent = h.mono_ns()
            ws.store(var, sample)
            seen = json.loads(reader.readline(h.START_TIMEOUT))
            if seen["count"] != 1:
                raise RuntimeError(f"{reader.name}: {seen['count']} stores in one event")
            if sample >= 0:
                latencies.append((seen["at"] - sent) / 1e3)
    finally:
        ctx.children.stop(proc)
        ws.close()
    return {"median_us": h.median(latencies), "p90_us": h.percentile(latencies, 90),
            "min_us": min(latencies), "max_us": max(latencies)}


#: Cases that compare with one another form a group; within a group the order rotates per run.
GROUPS: dict[str, list[h.Case]] = {
    "rt": [h.Case(f"{system}.rt_{op}", partial(one_client, system=system, op=op), system)
           for op in ("store", "find") for system in ("api", "bare", "py")],
    "clients": [h.Case(f"{system}.clients_{op}", partial(clients, system=system, op=op), system)
                for op in ("store", "find") for system in ("api", "bare")],
    "events": [h.Case(f"{system}.events", partial(event_latency, system=system), system)
               for system in ("api", "py")],
}


# ============================================================================ runs


def start_bare(children: h.Children) -> tuple[Any, int]:
    import httpx

    port = h.free_port()
    proc = children.spawn("bare", child_argv("bare_server", port=port,
                                             parent_pid=os.getpid()))
    url = f"http://{h.LOOPBACK}:{port}{BARE_PATH}"
    h.wait_for(lambda: httpx.get(url, timeout=1).status_code == STATUS_OK, h.START_TIMEOUT,
               "bare Starlette server", proc)
    return proc, port


def make_context(children: h.Children, settings: Settings) -> Context:
    import httpx

    broker = h.start_broker(children)
    servers = {"broker": broker, "py": broker, "api": h.start_gateway(children, broker[1]),
               "bare": start_bare(children)}
    # The workspace every rate case uses, made as an HTTP client makes it (it stays).
    httpx.put(f"http://{h.LOOPBACK}:{servers['api'][1]}/api/workspaces/{WORKSPACE}"
              ).raise_for_status()
    # "py" is the broker itself: its pid once, or the CPU meter would count it twice.
    return Context(settings, children, {name: port for name, (_, port) in servers.items()},
                   {name: proc.pid for name, (proc, _) in servers.items() if name != "py"},
                   [servers[name][0] for name in ("broker", "api", "bare")])


def benchmark(settings: Settings) -> dict:
    import httpx
    import starlette
    import uvicorn

    return h.run_benchmark(settings, GROUPS, make_context, lambda ctx: {
        "httpx": httpx.__version__, "starlette": starlette.__version__,
        "uvicorn": uvicorn.__version__})


# ============================================================================ summary

#: (label, workbench figure, anchor figure, how to compare, target, name of the ratio): see
#: _harness.Comparison. Target: the issue's (the API at least 0.7x the bare endpoint's rate).
COMPARISONS = [
    *((f"{what}/s vs bare {method}, {who}", f"api.{case}_{op}.{figure}",
       f"bare.{case}_{op}.{figure}", "rate", 0.7, "api/bare")
      for case, who, figure in (("rt", "1 client", "requests_per_s"),
                                ("clients", "4 clients", "total_per_s"))
      for op, what, method in (("store", "store", "POST"), ("find", "findTry", "GET"))),
    ("store/s vs bare GET (a constant), 1 client", "api.rt_store.requests_per_s",
     "bare.rt_find.requests_per_s", "rate", None, "api/bare"),
    *((f"gateway CPU per {what} vs bare {method}, {who}", f"api.{case}_{op}.server_cpu_us",
       f"bare.{case}_{op}.server_cpu_us", "latency", None, "api/bare")
      for case, who in (("rt", "1 client"), ("clients", "4 clients"))
      for op, what, method in (("store", "store", "POST"), ("find", "findTry", "GET"))),
    *((f"{what}/s over HTTP vs from Python, 1 client", f"api.rt_{op}.requests_per_s",
       f"py.rt_{op}.requests_per_s", "rate", None, "api/py")
      for op, what in (("store", "store"), ("find", "findTry"))),
    ("event latency median, SSE vs a Python Watch", "api.events.median_us",
     "py.events.median_us", "latency", None, "sse/watch"),
]


class Target(NamedTuple):
    """An absolute target for a figure, judged on its median over the runs."""

    label: str
    figure: str
    bound: float
    below: bool  # met when the figure is below the bound (else: at least the bound)


TARGETS = [Target("SSE delivery latency median < 5 ms", "api.events.median_us", 5_000, True)]


def report(result: dict, markdown: bool = False) -> None:
    h.report(result, COMPARISONS, [], markdown)
    meta = result["meta"]
    print(f"\nhttpx {meta.get('httpx')} · starlette {meta.get('starlette')} · "
          f"uvicorn {meta.get('uvicorn')}")
    values = h.series(result["runs"])
    rows, result["targets"] = [], []
    for target in TARGETS:
        runs = values.get(target.figure)
        row = {**target._asdict(), "median": h.median(runs) if runs else None}
        if runs:
            row["met"] = (row["median"] < target.bound if target.below
                          else row["median"] >= target.bound)
        result["targets"].append(row)
        shown = (f"{h.fmt_figure(target.figure, row['median'])} "
                 f"({h.fmt_figure(target.figure, min(runs))} - "
                 f"{h.fmt_figure(target.figure, max(runs))})") if runs else "skipped"
        rows.append([target.label, shown, "skipped" if not runs
                     else "MET" if row["met"] else "NOT MET"])
    print("\nTargets, on the median of the runs:")
    print(h.format_table(["target", "median (min - max)", "result"], rows, markdown))


def main(argv: list[str] | None = None) -> int:
    return h.bench_main(argv, description=__doc__.split("\n")[0], groups=GROUPS,
                        settings=Settings(), quick=QUICK, output=RESULTS, run_child=run_child,
                        benchmark=benchmark, report=report)


if __name__ == "__main__":
    sys.exit(main())
