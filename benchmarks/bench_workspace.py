"""Workspace benchmark: the workbench broker's store/fetch against same-run anchors.

What it measures (values are 100-byte ``bytes`` unless noted; everything on loopback: the
workbench clients use the broker's Unix socket, as clients on its machine do, except where a
figure says TCP; the anchors use TCP):

1. single client, sequential: ``store`` round trips/s and ``fetch`` round trips/s (500
   warm-up, then 10,000 of each; the stores fill the variable the fetches then drain), with
   this process and the server pinned to one vCPU ("same") and to one vCPU each ("split", 5,000
   of each): on a small VM the placement moves a round trip by 3x, more than the server does;
2. hand-off latency: a consumer process is parked in ``fetch``; the producer (this process)
   sleeps 1 ms, stores a value carrying its CLOCK_MONOTONIC send time, then waits in ``fetch``
   for the consumer's acknowledgement on a second variable. 100 warm-up + 1,000 measured;
   median and p99 of receive time minus send time; once more with both clients on TCP;
3. 4 client processes, each doing store+fetch pairs on a variable of its own for 3 s from a
   common start instant: total round trips/s;
4. a 100 MiB float64 numpy array: ``store`` + ``fetch`` round trip in seconds (1 warm-up +
   3 timed; the array is a pickle-5 out-of-band buffer, which a client on the broker's
   machine hands over through ``/dev/shm``).

Anchors, measured in the same run: a bare pyzmq DEALER->ROUTER echo server (blocking
``recv_multipart``/``send_multipart`` loop, in its own process) for 1, 3 and 4 (a 100 MiB
``copy=False`` echo); a bare pyzmq ROUTER relay for 2 (what a broker built on libzmq pays
for a hand-off, its I/O thread's wake-ups included: ``_harness.relay_server``); and redis-py
against a private ``redis-server`` for all four (SET and GET
rates, RPUSH->BLPOP hand-off with the same 1 ms gap and acknowledgement, 4-client SET/GET pairs,
100 MiB SET+GET of the array's bytes), skipped with a note when ``redis-server`` is missing
(``benchmarks/install-anchors.sh`` installs it).

How: every case runs once per run, workbench and anchors interleaved (each group's order rotates
from run to run), so drift on a shared machine hits all of them alike. Figures are medians over
the runs (default 5); a ratio is the median of the per-run ratios, each taken between figures
measured moments apart. Each run also records the CPU used by other processes on the machine,
to spot noisy runs.

    python benchmarks/bench_workspace.py [--runs N] [--quick]

prints the figures, ratios and targets, and writes the raw results to
``benchmarks/results/latest.json``. ``--quick`` (one short run) is the smoke test.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import _harness as h

WORKSPACE = "bench"
VALUE = b"v" * 100  # the 100-byte value of every small-value case
RESULTS = h.HERE / "results" / "latest.json"


@dataclass(frozen=True)
class Settings(h.Settings):
    handoffs: int = 1_000
    handoff_warmup: int = 100
    gap_s: float = 0.001  # idle time before each hand-off: the consumer must be asleep
    big_mib: int = 100
    big_timed: int = 3
    big_warmup: int = 1


QUICK = Settings(runs=1, ops=2_000, split_ops=1_000, warmup=100, handoffs=200,
                 handoff_warmup=50, duration_s=0.5, client_warmup=100, big_timed=1)


@dataclass
class Context:
    """What the cases share: settings, server ports, this process's client handles."""

    settings: Settings
    children: h.Children
    ports: dict[str, int]  # "wb", "echo", "echo-nocopy", "redis" (absent if skipped)
    pids: dict[str, int]
    broker_proc: Any = None
    ws: Any = None
    big_array: Any = None
    _big_bytes: bytes | None = field(default=None, repr=False)

    @property
    def big_bytes(self) -> bytes:
        # redis-py takes bytes: converted once, outside every timing (in the anchor's favour)
        if self._big_bytes is None:
            self._big_bytes = self.big_array.tobytes()
        return self._big_bytes

    @property
    def broker_port(self) -> int:
        return self.ports["wb"]

    @property
    def echo_port(self) -> int:
        return self.ports["echo"]

    @property
    def redis_port(self) -> int | None:
        return self.ports.get("redis")

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


# ============================================================================ child processes
# The script runs itself as `bench_workspace.py --child ROLE JSON` for the client processes.


child_argv = partial(h.child_argv, __file__)


def run_child(role: str, params: dict) -> None:
    {"wb-consumer": wb_consumer, "redis-consumer": redis_consumer,
     "relay-consumer": relay_consumer,
     "wb-client": wb_client, "echo-client": echo_client,
     "redis-client": redis_client}[role](**params)


_SEND_TIME = struct.Struct("<q")


def stamped_value() -> bytes:
    """A 100-byte value whose first 8 bytes are the CLOCK_MONOTONIC send time in ns."""
    return _SEND_TIME.pack(h.mono_ns()) + VALUE[_SEND_TIME.size:]


def consume(take: Callable[[], bytes], ack: Callable[[], Any], total: int, warmup: int) -> None:
    """Consumer side of a hand-off: take a value (parked until it comes), note its latency,
    acknowledge; report the measured latencies in ns on stdout."""
    latencies = []
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for _ in range(total):
        value = take()
        received = h.mono_ns()  # before anything else, so the ack is not in the latency
        latencies.append(received - _SEND_TIME.unpack_from(value)[0])
        ack()
    h.child_report({"latencies_ns": latencies[warmup:]})


def wb_consumer(port: int, var: str, ack: str, total: int, warmup: int) -> None:
    from workbench import NetWorkSpace

    ws = NetWorkSpace(WORKSPACE, h.LOOPBACK, port, useUse=True)
    try:
        consume(lambda: ws.fetch(var), lambda: ws.store(ack, b"1"), total, warmup)
    finally:
        ws.close()


def redis_consumer(port: int, var: str, ack: str, total: int, warmup: int) -> None:
    import redis

    r = redis.Redis(host=h.LOOPBACK, port=port)
    try:
        consume(lambda: r.blpop([var])[1], lambda: r.rpush(ack, b"1"), total, warmup)
    finally:
        r.close()


def relay_consumer(port: int, var: str, ack: str, total: int, warmup: int) -> None:
    sock = h.dealer(port)
    try:
        consume(lambda: _relay(sock, b"want", var), lambda: _relay(sock, b"put", ack, b"1"),
                total, warmup)
    finally:
        sock.close()


def _relay(sock, kind: bytes, key: str, value: bytes = b"") -> bytes:
    sock.send_multipart([kind, key.encode(), value])
    return sock.recv()


def wb_client(port: int, var: str, warmup: int) -> None:
    from workbench import NetWorkSpace

    ws = NetWorkSpace(WORKSPACE, h.LOOPBACK, port, useUse=True)

    def pair() -> None:
        ws.store(var, VALUE)
        ws.fetch(var)

    try:
        h.timed_client(pair, warmup, per_call=2)
    finally:
        ws.close()


def _echo_round_trip(sock) -> Callable[[], None]:
    def round_trip() -> None:  # the anchor's method (baselines.md): multipart calls both ends
        sock.send_multipart([VALUE])
        sock.recv_multipart()

    return round_trip


def echo_client(port: int, warmup: int) -> None:
    sock = h.dealer(port)
    try:
        h.timed_client(_echo_round_trip(sock), warmup, per_call=1)
    finally:
        sock.close()


def redis_client(port: int, key: str, warmup: int) -> None:
    import redis

    r = redis.Redis(host=h.LOOPBACK, port=port)

    def pair() -> None:
        r.set(key, VALUE)
        r.get(key)

    try:
        h.timed_client(pair, warmup, per_call=2)
    finally:
        r.close()


# ============================================================================ cases
# Each case runs once per run and returns its figures; names are "<system>.<case>".


def _round_trips(ctx: Context, layout: str) -> tuple[int, int]:
    """(timed, warm-up) round trips per figure in a layout."""
    return ctx.settings.round_trips(layout), ctx.settings.warmup


def wb_round_trips(ctx: Context, run: int, layout: str) -> dict:
    ws, var = ctx.ws, f"rt{run}"
    n, warmup = _round_trips(ctx, layout)
    stores = h.time_loop(lambda: ws.store(var, VALUE), n, warmup)
    fetches = h.time_loop(lambda: ws.fetch(var), n, warmup)
    # Every stored value was fetched exactly once: nothing may be left over.
    assert ws.fetchTry(var) is None, "values left after as many fetches as stores"
    return {"store_per_s": stores, "fetch_per_s": fetches}


def echo_round_trips(ctx: Context, run: int, layout: str) -> dict:
    sock = h.dealer(ctx.echo_port)
    try:
        return {"rt_per_s": h.time_loop(_echo_round_trip(sock), *_round_trips(ctx, layout))}
    finally:
        sock.close()


def redis_round_trips(ctx: Context, run: int, layout: str) -> dict:
    import redis

    r = redis.Redis(host=h.LOOPBACK, port=ctx.redis_port)
    keys = [f"k{i}".encode() for i in range(1000)]  # as in baselines.md: 1,000 keys
    try:
        set_keys, get_keys = itertools.cycle(keys), itertools.cycle(keys)
        sets = h.time_loop(lambda: r.set(next(set_keys), VALUE), *_round_trips(ctx, layout))
        gets = h.time_loop(lambda: r.get(next(get_keys)), *_round_trips(ctx, layout))
        r.delete(*keys)
        return {"set_per_s": sets, "get_per_s": gets}
    finally:
        r.close()


def produce_hand_offs(ctx: Context, name: str, consumer: list[str],
                      store: Callable[[bytes], Any], wait_ack: Callable[[], Any]) -> dict:
    """Producer side: 1 ms idle, store a stamped value, wait for the consumer's ack; repeat."""
    s = ctx.settings
    proc = ctx.children.spawn(name, consumer, pipes=True)
    reader = h.LineReader(proc, name)
    try:
        if reader.readline(h.START_TIMEOUT) != "ready":
            raise RuntimeError(f"{name} did not start")
        for _ in range(s.handoff_warmup + s.handoffs):
            time.sleep(s.gap_s)
            store(stamped_value())
            wait_ack()
        latencies = json.loads(reader.readline(h.START_TIMEOUT))["latencies_ns"]
        proc.wait(timeout=h.STOP_TIMEOUT)
    finally:
        ctx.children.stop(proc)
    us = [ns / 1000 for ns in latencies]
    return {"median_us": h.median(us), "p99_us": h.percentile(us, 99), "min_us": min(us),
            "max_us": max(us)}


def wb_hand_off(ctx: Context, run: int, ws: Any = None) -> dict:
    s, ws = ctx.settings, ws or ctx.ws
    var, ack = f"handoff{run}", f"ack{run}"
    consumer = child_argv("wb-consumer", port=ctx.broker_port, var=var, ack=ack,
                          total=s.handoff_warmup + s.handoffs, warmup=s.handoff_warmup)
    return produce_hand_offs(ctx, "wb-consumer", consumer, lambda v: ws.store(var, v),
                             lambda: ws.fetch(ack))


def wb_tcp_hand_off(ctx: Context, run: int) -> dict:
    """The same hand-off with both clients on loopback TCP, as clients on other machines talk
    (clients on the broker's machine use its Unix socket)."""
    from workbench import NetWorkSpace
    from workbench.config import LOCAL_SOCKET_ENV

    saved = os.environ.get(LOCAL_SOCKET_ENV)
    os.environ[LOCAL_SOCKET_ENV] = "0"  # for this client and the consumer process it starts
    ws = None
    try:
        ws = NetWorkSpace(WORKSPACE, h.LOOPBACK, ctx.broker_port, useUse=True)
        return wb_hand_off(ctx, run, ws)
    finally:
        if ws is not None:
            ws.close()
        if saved is None:
            del os.environ[LOCAL_SOCKET_ENV]
        else:
            os.environ[LOCAL_SOCKET_ENV] = saved


def redis_hand_off(ctx: Context, run: int) -> dict:
    import redis

    s = ctx.settings
    var, ack = f"handoff{run}", f"ack{run}"
    r = redis.Redis(host=h.LOOPBACK, port=ctx.redis_port)
    consumer = child_argv("redis-consumer", port=ctx.redis_port, var=var, ack=ack,
                          total=s.handoff_warmup + s.handoffs, warmup=s.handoff_warmup)
    try:
        return produce_hand_offs(ctx, "redis-consumer", consumer, lambda v: r.rpush(var, v),
                                 lambda: r.blpop([ack]))
    finally:
        r.close()


def relay_hand_off(ctx: Context, run: int) -> dict:
    s = ctx.settings
    var, ack = f"handoff{run}", f"ack{run}"
    sock = h.dealer(ctx.ports["relay"])
    consumer = child_argv("relay-consumer", port=ctx.ports["relay"], var=var, ack=ack,
                          total=s.handoff_warmup + s.handoffs, warmup=s.handoff_warmup)
    try:
        return produce_hand_offs(ctx, "relay-consumer", consumer,
                                 lambda v: _relay(sock, b"put", var, v),
                                 lambda: _relay(sock, b"want", ack))
    finally:
        sock.close()


def _clients(ctx: Context, name: str, argvs: list[list[str]]) -> dict:
    return h.clients_rate(ctx.children, name, argvs, ctx.settings.duration_s)


def wb_clients(ctx: Context, run: int) -> dict:
    s = ctx.settings
    return _clients(ctx, "wb-client", [
        child_argv("wb-client", port=ctx.broker_port, var=f"mc{run}_{i}", warmup=s.client_warmup)
        for i in range(s.clients)])


def echo_clients(ctx: Context, run: int) -> dict:
    s = ctx.settings
    return _clients(ctx, "echo-client", [
        child_argv("echo-client", port=ctx.echo_port, warmup=s.client_warmup)
        for _ in range(s.clients)])


def redis_clients(ctx: Context, run: int) -> dict:
    s = ctx.settings
    return _clients(ctx, "redis-client", [
        child_argv("redis-client", port=ctx.redis_port, key=f"mc{run}_{i}",
                   warmup=s.client_warmup)
        for i in range(s.clients)])


def _timed_big(ctx: Context, round_trip: Callable[[], Any], check: Callable[[Any], None]) -> dict:
    """1 warm-up + N timed round trips of the big value; the last result is checked untimed."""
    return h.time_repeats(round_trip, ctx.settings.big_warmup, ctx.settings.big_timed, check)


def _same_array(ctx: Context) -> Callable[[Any], None]:
    import numpy as np

    def check(out: Any) -> None:
        assert isinstance(out, np.ndarray) and np.array_equal(out, ctx.big_array), "corrupted"

    return check


def wb_big(ctx: Context, run: int) -> dict:
    ws, var = ctx.ws, f"big{run}"

    def round_trip() -> Any:
        ws.store(var, ctx.big_array)
        return ws.fetch(var)

    return _timed_big(ctx, round_trip, _same_array(ctx))


def echo_big(ctx: Context, run: int) -> dict:
    import numpy as np

    sock = h.dealer(ctx.ports["echo-nocopy"])

    def round_trip() -> Any:
        sock.send(ctx.big_array, copy=False)
        frame = sock.recv(copy=False)
        return np.frombuffer(frame.buffer, dtype=ctx.big_array.dtype)

    try:
        return _timed_big(ctx, round_trip, _same_array(ctx))
    finally:
        sock.close()


def redis_big(ctx: Context, run: int) -> dict:
    import redis

    r = redis.Redis(host=h.LOOPBACK, port=ctx.redis_port)
    data, key = ctx.big_bytes, f"big{run}"
    parts: dict[str, list] = {"set_s": [], "get_s": []}

    def round_trip() -> bytes:
        start = time.perf_counter()
        r.set(key, data)
        middle = time.perf_counter()
        value = r.get(key)
        parts["set_s"].append(middle - start)
        parts["get_s"].append(time.perf_counter() - middle)
        return value

    def check(value: bytes) -> None:
        assert value == data, "corrupted"

    try:
        result = _timed_big(ctx, round_trip, check)
        r.delete(key)
    finally:
        r.close()
    warm = ctx.settings.big_warmup
    result.update({name: h.median(times[warm:]) for name, times in parts.items()})
    return result


Case = h.Case


def round_trip_group(layout: str) -> list[Case]:
    return [Case(f"wb.rt_{layout}", partial(wb_round_trips, layout=layout), "wb", layout),
            Case(f"echo.rt_{layout}", partial(echo_round_trips, layout=layout), "echo", layout),
            Case(f"redis.rt_{layout}", partial(redis_round_trips, layout=layout), "redis",
                 layout)]


#: Cases that compare with one another form a group; within a group the order rotates per run.
#: Single-client round trips run pinned in each layout (see _harness.placements: unpinned, they
#: flip between two speeds 3x apart); the multi-process cases run unpinned.
GROUPS: dict[str, list[Case]] = {
    **{f"rt_{layout}": round_trip_group(layout) for layout in h.placements()},
    "handoff": [Case("wb.handoff", wb_hand_off, "wb"),
                Case("wb_tcp.handoff", wb_tcp_hand_off, "wb"),
                Case("redis.handoff", redis_hand_off, "redis"),
                Case("relay.handoff", relay_hand_off, "relay")],
    "clients": [Case("wb.clients", wb_clients, "wb"), Case("echo.clients", echo_clients, "echo"),
                Case("redis.clients", redis_clients, "redis")],
    "big": [Case("wb.big", wb_big, "wb"), Case("echo.big", echo_big, "echo-nocopy"),
            Case("redis.big", redis_big, "redis")],
}


# ============================================================================ runs


def start_servers(children: h.Children) -> dict[str, tuple[Any, int]]:
    """Every server for the whole benchmark -> name: (process, port)."""
    servers = {"wb": h.start_broker(children), "echo": h.start_echo_server(children),
               "echo-nocopy": h.start_echo_server(children, nocopy=True),
               "relay": h.start_relay_server(children)}
    servers.update(h.start_anchors(children, ["redis"]))
    return servers


def make_context(children: h.Children, settings: Settings) -> Context:
    import numpy as np
    from workbench import NetWorkSpace

    servers = start_servers(children)
    ctx = Context(settings, children, {name: port for name, (_, port) in servers.items()},
                  {name: proc.pid for name, (proc, _) in servers.items()}, servers["wb"][0])
    # This process owns the workspace for the whole benchmark; client processes only use it.
    ctx.ws = NetWorkSpace(WORKSPACE, h.LOOPBACK, ctx.broker_port)
    ctx.big_array = np.random.default_rng(1).random(settings.big_mib * 2**20 // 8)
    return ctx


def benchmark(settings: Settings) -> dict:
    return h.run_benchmark(settings, GROUPS, make_context,
                           lambda ctx: {"redis_skipped": ctx.redis_port is None})


# ============================================================================ summary

#: (label, workbench figure, anchor figure, how to compare, target): see _harness.Comparison.
COMPARISONS = [
    *(row for layout in h.placements() for row in [
        (f"store rt/s vs echo rt/s, {layout}", f"wb.rt_{layout}.store_per_s",
         f"echo.rt_{layout}.rt_per_s", "rate", 0.85),
        (f"fetch rt/s vs echo rt/s, {layout}", f"wb.rt_{layout}.fetch_per_s",
         f"echo.rt_{layout}.rt_per_s", "rate", 0.85),
        (f"store rt/s vs redis SET, {layout}", f"wb.rt_{layout}.store_per_s",
         f"redis.rt_{layout}.set_per_s", "rate", None),
        (f"fetch rt/s vs redis GET, {layout}", f"wb.rt_{layout}.fetch_per_s",
         f"redis.rt_{layout}.get_per_s", "rate", None)]),
    ("hand-off median vs BLPOP median", "wb.handoff.median_us", "redis.handoff.median_us",
     "latency", 1.0),
    ("hand-off p99 vs BLPOP p99", "wb.handoff.p99_us", "redis.handoff.p99_us", "latency", None),
    ("hand-off over TCP vs BLPOP", "wb_tcp.handoff.median_us", "redis.handoff.median_us",
     "latency", None),
    ("hand-off median vs bare ZeroMQ relay", "wb.handoff.median_us",
     "relay.handoff.median_us", "latency", None),
    ("bare ZeroMQ relay hand-off vs BLPOP", "relay.handoff.median_us",
     "redis.handoff.median_us", "latency", None),
    ("4 clients rt/s vs 4-client echo", "wb.clients.total_per_s", "echo.clients.total_per_s",
     "rate", None),
    ("4 clients rt/s vs redis 4 clients", "wb.clients.total_per_s", "redis.clients.total_per_s",
     "rate", None),
    ("100 MiB store+fetch vs redis SET+GET", "wb.big.rt_s", "redis.big.rt_s", "speedup", 3.0),
    ("100 MiB store+fetch vs 100 MiB echo", "wb.big.rt_s", "echo.big.rt_s", "speedup", None),
]


def report(result: dict, markdown: bool = False) -> None:
    h.report(result, COMPARISONS, ["redis"], markdown)


def main(argv: list[str] | None = None) -> int:
    return h.bench_main(argv, description=__doc__.split("\n")[0], groups=GROUPS,
                        settings=Settings(), quick=QUICK, output=RESULTS, run_child=run_child,
                        benchmark=benchmark, report=report)


if __name__ == "__main__":
    sys.exit(main())
