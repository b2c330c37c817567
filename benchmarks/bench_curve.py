"""CURVE benchmark: the workbench over TCP with CURVE against a bare pyzmq CURVE echo, and
against itself over plain TCP.

Systems (everything on loopback TCP; both workbench brokers run with ``--no-local-socket
--no-shared-memory``, so that a client on this machine talks TCP and every value's bytes cross
the socket, as they do for a client on another machine):

* ``wb_curve``: a broker started with ``--curve``; the client connects with the connection file
  the broker wrote (CURVE's handshake, then every frame in its own box);
* ``wb_tcp``: the same broker flags without ``--curve`` (the plain mechanism; both brokers
  with ``--heartbeat-liveness 10``, see ``BROKER_FLAGS``);
* ``echo_curve``: a bare pyzmq DEALER->ROUTER echo with CURVE (``curve_server=True`` on the
  ROUTER, keys from ``zmq.curve_keypair()``), in its own process; the anchor;
* ``echo``: the same echo without CURVE (what CURVE costs libzmq).

What it measures:

1. single client, sequential: ``store`` round trips/s and ``fetch`` round trips/s of 100-byte
   values (500 warm-up, then 10,000 of each; 5,000 split) and the echo's round trips/s of the
   same value, pinned as in the workspace benchmark: this process and the server on one vCPU
   ("same") and on one vCPU each ("split");
2. a 100 MiB float64 numpy array: ``store`` + ``fetch`` round trip in seconds (1 warm-up + 3
   timed; a pickle-5 out-of-band buffer, sent as one frame each way), against an echo of the
   array's buffer with ``copy=False`` on both ends. Around each, the bytes the kernel counted
   on the broker's TCP connections (``ss -ti``) are checked to hold every array sent and
   received: nothing went by ``/dev/shm``.

Targets (issue "Off one machine, safely"): CURVE round trips >= 1.0x the pyzmq CURVE echo's
rate and >= 0.7x the workbench's own plain TCP rate; 100 MiB over CURVE >= 0.8x the rate of the
pyzmq CURVE echo of the same buffer (echo time / workbench time).

How: as ``bench_workspace.py`` (see ``_harness``): every case runs once per run, the systems of
a group interleaved with their order rotating from run to run; figures are medians over the
runs (default 5), a ratio is the median of the per-run ratios; each run records the CPU used by
other processes on the machine.

    python benchmarks/bench_curve.py [--runs N] [--quick] [--only GROUP] [--output JSON]

prints the figures, ratios and targets, and writes the raw results to
``benchmarks/results/curve-latest.json``. ``--quick`` (one short run, a 16 MiB array) is the
smoke test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import _harness as h

WORKSPACE = "bench"
VALUE = b"v" * 100
RESULTS = h.HERE / "results" / "curve-latest.json"
#: Both brokers: TCP only, and values through the socket only, never through /dev/shm. Under
#: CURVE a 100 MiB value holds the broker's one thread while it is opened or sealed, on a
#: loaded machine for longer than the default liveness (3 s), after which a client gives the
#: broker up; 10 heartbeat intervals keep the benchmark measuring (heartbeats cost nothing).
BROKER_FLAGS = ("--no-local-socket", "--no-shared-memory", "--heartbeat-liveness", "10")


@dataclass(frozen=True)
class Settings(h.Settings):
    big_mib: int = 100
    big_timed: int = 3
    big_warmup: int = 1


QUICK = Settings(runs=1, ops=1_000, split_ops=500, warmup=100, big_mib=16, big_timed=1)


@dataclass
class Context:
    """What the cases share: settings, servers, this process's workspaces (one per broker)."""

    settings: Settings
    children: h.Children
    ports: dict[str, int]  # "wb_curve", "wb_tcp", "echo_curve", "echo", and "-nocopy" echoes
    pids: dict[str, int]
    broker_procs: list
    keys: h.CurveKeys  # the CURVE echoes' keys
    spaces: dict[str, Any] = field(default_factory=dict)  # "wb_curve"/"wb_tcp" -> NetWorkSpace
    big_array: Any = None

    def close(self) -> None:
        for space in self.spaces.values():
            space.close()


# ============================================================================ cases
# Each case runs once per run and returns its figures; names are "<system>.<case>".


def wb_round_trips(ctx: Context, run: int, system: str, layout: str) -> dict:
    space, var = ctx.spaces[system], f"rt{run}"
    n, warmup = ctx.settings.round_trips(layout), ctx.settings.warmup
    stores = h.time_loop(lambda: space.store(var, VALUE), n, warmup)
    fetches = h.time_loop(lambda: space.fetch(var), n, warmup)
    # Every stored value was fetched exactly once: nothing may be left over.
    assert space.fetchTry(var) is None, "values left after as many fetches as stores"
    return {"store_per_s": stores, "fetch_per_s": fetches}


def _echo_socket(ctx: Context, server: str):
    return h.dealer(ctx.ports[server], curve=ctx.keys if "curve" in server else None)


def echo_round_trips(ctx: Context, run: int, server: str, layout: str) -> dict:
    sock = _echo_socket(ctx, server)

    def round_trip() -> None:  # as the workspace benchmark's echo: multipart calls both ends
        sock.send_multipart([VALUE])
        sock.recv_multipart()

    try:
        n, warmup = ctx.settings.round_trips(layout), ctx.settings.warmup
        return {"rt_per_s": h.time_loop(round_trip, n, warmup)}
    finally:
        sock.close()


def _timed_big(ctx: Context, round_trip: Callable[[], Any]) -> dict:
    """1 warm-up + N timed round trips of the big array; the last result is checked untimed."""
    import numpy as np

    def check(result: Any) -> None:
        assert np.array_equal(result, ctx.big_array), "corrupted"

    return h.time_repeats(round_trip, ctx.settings.big_warmup, ctx.settings.big_timed, check)


def _port_traffic(port: int) -> tuple[int, int] | None:
    """(bytes received, bytes sent) so far by the open TCP connections of a loopback server's
    port, on the server's side (the kernel's TCP_INFO, through ``ss``); None without ``ss``."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(["ss", "-tinH", "state", "established", f"sport = :{port}"],
                         capture_output=True, text=True, check=True).stdout
    return (sum(int(n) for n in re.findall(r"bytes_received:(\d+)", out)),
            sum(int(n) for n in re.findall(r"bytes_sent:(\d+)", out)))


def wb_big(ctx: Context, run: int, system: str) -> dict:
    space, var, port = ctx.spaces[system], f"big{run}", ctx.ports[system]

    def round_trip() -> Any:
        space.store(var, ctx.big_array)
        return space.fetch(var)

    before = _port_traffic(port)
    figures = _timed_big(ctx, round_trip)
    after = _port_traffic(port)
    if before is not None and after is not None:
        # Every store and fetch carried the array through the broker's TCP port (not by
        # /dev/shm, not by a Unix socket).
        rounds = ctx.settings.big_warmup + ctx.settings.big_timed
        received, sent = (a - b for a, b in zip(after, before))
        nbytes = ctx.big_array.nbytes
        assert min(received, sent) >= rounds * nbytes, (
            f"{system}: the broker's port received {received:,} and sent {sent:,} bytes for "
            f"{rounds} round trips of {nbytes:,}: the array did not cross it")
    return figures


def echo_big(ctx: Context, run: int, server: str) -> dict:
    import numpy as np

    sock = _echo_socket(ctx, server)

    def round_trip() -> Any:
        sock.send(ctx.big_array, copy=False)
        frame = sock.recv(copy=False)
        return np.frombuffer(frame.buffer, dtype=ctx.big_array.dtype)

    try:
        return _timed_big(ctx, round_trip)
    finally:
        sock.close()


Case = h.Case


def round_trip_group(layout: str) -> list[Case]:
    return [Case(f"wb_curve.rt_{layout}", partial(wb_round_trips, system="wb_curve",
                                                  layout=layout), "wb_curve", layout),
            Case(f"wb_tcp.rt_{layout}", partial(wb_round_trips, system="wb_tcp", layout=layout),
                 "wb_tcp", layout),
            Case(f"echo_curve.rt_{layout}", partial(echo_round_trips, server="echo_curve",
                                                    layout=layout), "echo_curve", layout),
            Case(f"echo.rt_{layout}", partial(echo_round_trips, server="echo", layout=layout),
                 "echo", layout)]


#: Cases that compare with one another form a group; within a group the order rotates per run.
#: Single-client round trips run pinned in each layout (see _harness.placements); the 100 MiB
#: round trips unpinned, as in the workspace benchmark.
GROUPS: dict[str, list[Case]] = {
    **{f"rt_{layout}": round_trip_group(layout) for layout in h.placements()},
    "big": [Case("wb_curve.big", partial(wb_big, system="wb_curve"), "wb_curve"),
            Case("wb_tcp.big", partial(wb_big, system="wb_tcp"), "wb_tcp"),
            Case("echo_curve.big", partial(echo_big, server="echo_curve-nocopy"),
                 "echo_curve-nocopy"),
            Case("echo.big", partial(echo_big, server="echo-nocopy"), "echo-nocopy")],
}


# ============================================================================ runs


def _check_transport(target: str, mechanism: str) -> None:
    """The benchmark's premise: the broker speaks ``mechanism`` and offers no Unix socket."""
    from workbench import KeyValueStore

    with KeyValueStore(target) as store:
        security = store.stats()["security"]
    if security["mechanism"] != mechanism or security["local_socket"]:
        raise RuntimeError(f"expected a {mechanism} broker on TCP only, got {security}")


def make_context(children: h.Children, settings: Settings) -> Context:
    import numpy as np
    from workbench import NetWorkSpace

    keys = h.CurveKeys.generate()
    connection_file = Path(children.logdir) / "broker-curve.json"
    servers = {
        "wb_curve": h.start_broker(children, flags=BROKER_FLAGS, connection_file=connection_file),
        "wb_tcp": h.start_broker(children, flags=BROKER_FLAGS),
        "echo_curve": h.start_echo_server(children, curve=keys),
        "echo_curve-nocopy": h.start_echo_server(children, nocopy=True, curve=keys),
        "echo": h.start_echo_server(children),
        "echo-nocopy": h.start_echo_server(children, nocopy=True)}
    ctx = Context(settings, children, {name: port for name, (_, port) in servers.items()},
                  {name: proc.pid for name, (proc, _) in servers.items()},
                  [servers["wb_curve"][0], servers["wb_tcp"][0]], keys)
    targets = {"wb_curve": str(connection_file),
               "wb_tcp": f"tcp://{h.LOOPBACK}:{ctx.ports['wb_tcp']}"}
    for system, target in targets.items():
        _check_transport(target, "CURVE" if system == "wb_curve" else "NULL")
        # This process owns each workspace for the whole benchmark.
        ctx.spaces[system] = NetWorkSpace(WORKSPACE, target)
    ctx.big_array = np.random.default_rng(1).random(settings.big_mib * 2**20 // 8)
    return ctx


def benchmark(settings: Settings) -> dict:
    import nacl

    return h.run_benchmark(settings, GROUPS, make_context,
                           lambda ctx: {"big_mib": settings.big_mib, "pynacl": nacl.__version__})


# ============================================================================ summary

def _round_trip_rows(layout: str) -> list[tuple]:
    rows: list[tuple] = []
    for op in ("store", "fetch"):
        figure = f"wb_curve.rt_{layout}.{op}_per_s"
        rows += [(f"CURVE {op} rt/s vs pyzmq CURVE echo, {layout}", figure,
                  f"echo_curve.rt_{layout}.rt_per_s", "rate", 1.0),
                 (f"CURVE {op} rt/s vs plain TCP {op}, {layout}", figure,
                  f"wb_tcp.rt_{layout}.{op}_per_s", "rate", 0.7, "curve/plain")]
    return rows + [
        (f"plain TCP store rt/s vs plain echo, {layout}", f"wb_tcp.rt_{layout}.store_per_s",
         f"echo.rt_{layout}.rt_per_s", "rate", None),
        (f"pyzmq CURVE echo vs plain echo, {layout}", f"echo_curve.rt_{layout}.rt_per_s",
         f"echo.rt_{layout}.rt_per_s", "rate", None, "curve/plain")]


#: (label, workbench figure, anchor figure, how to compare, target, ratio's name): see
#: _harness.Comparison.
COMPARISONS = [
    *(row for layout in h.placements() for row in _round_trip_rows(layout)),
    ("100 MiB store+fetch, CURVE vs pyzmq CURVE echo", "wb_curve.big.rt_s",
     "echo_curve.big.rt_s", "speedup", 0.8),
    ("100 MiB store+fetch, CURVE vs plain TCP", "wb_curve.big.rt_s", "wb_tcp.big.rt_s",
     "speedup", None, "plain/curve"),
    ("100 MiB plain TCP vs plain echo", "wb_tcp.big.rt_s", "echo.big.rt_s", "speedup", None),
    ("100 MiB pyzmq CURVE echo vs plain echo", "echo_curve.big.rt_s", "echo.big.rt_s",
     "speedup", None, "plain/curve"),
]


def report(result: dict, markdown: bool = False) -> None:
    print(f"\nPyNaCl {result['meta'].get('pynacl')} (the workbench's CURVE); the anchors' "
          "CURVE is libzmq's own, on the libsodium bundled with pyzmq")
    h.report(result, COMPARISONS, [], markdown)
    big_mib = result["meta"].get("big_mib", 100)
    if big_mib != 100:
        print(f"\n(the big array was {big_mib} MiB in this run, not 100)")


def main(argv: list[str] | None = None) -> int:
    return h.bench_main(argv, description=__doc__.split("\n")[0], groups=GROUPS,
                        settings=Settings(), quick=QUICK, output=RESULTS,
                        run_child=lambda role, params: None, benchmark=benchmark,
                        report=report)


if __name__ == "__main__":
    sys.exit(main())
