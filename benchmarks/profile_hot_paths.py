"""Where the time goes: per-request CPU, system calls and context switches of the client and the
server, for the cases where a peer still wins (issue 20), with the workbench and the peer side by
side, every process pinned to one vCPU (the benchmarks' ``same`` layout: the CPU cost of a
request, not the cost of waking the other vCPU).

Cases (each a fixed number of requests after a warm-up):

* ``kv.set``/``kv.get``: ``KeyValueStore.store``/``get``, ``memcache.Client.set``/``get`` (on a
  broker) and pymemcache (on memcached), 100-byte values over 1,000 keys;
* ``task.rt``: ``Sleigh(2).submit(f, x).result()`` vs ``multiprocessing.Pool(2).apply(f, (x,))``;
* ``task.map``: ``Sleigh.map(f, range(N), chunksize=100)`` vs ``Pool(2).map(..., chunksize=100)``,
  counted per task;
* ``pub``: ``mq.twitter`` and ``MessageBus.publish`` (no subscriber) vs redis-py PUBLISH in
  pipelines of 100 (``transaction=False``).

Per request: CPU µs of the client (this process) and of the server (broker, memcached,
redis-server; the pool's workers apart), from the kernel's CPU clocks; system calls and
context switches (``raw_syscalls:sys_enter`` and ``sched:sched_switch`` counted by
``perf stat -p``, which needs ``perf`` and tracepoint access; without it those columns are
empty). Then a second, profiled pass: the client's top functions by own time (cProfile) and the
server's top symbols by self time (``perf record`` + ``perf report --no-children --sort sym``:
C-level only, as Python 3.11 has no perf trampoline).

    python benchmarks/profile_hot_paths.py [--only kv,task,pub] [--no-profile] [--top N]
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import operator
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import _harness as h

VALUE = b"v" * 100
KEYS = [f"rt{i}" for i in range(1_000)]
CPU = {sorted(os.sched_getaffinity(0))[0]}
#: perf itself runs on the other vCPU (when there is one), off the measured one.
PERF_CPUS = set(sorted(os.sched_getaffinity(0))[1:]) or CPU
TASK = partial(operator.add, 1)


# ---------------------------------------------------------------------------------- counters


def _scratch(suffix: str) -> str:
    """A fresh file for perf to write into (removed by whoever reads it)."""
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as file:
        return file.name


class Perf:
    """``perf stat`` (counts) or ``perf record`` (samples) attached to some pids for a window."""

    def __init__(self, pids: list[int], record: bool = False) -> None:
        self.out = _scratch(".perf")
        pid_list = ",".join(map(str, pids))
        if record:
            argv = ["perf", "record", "-q", "-g", "-F", "2000", "-o", self.out, "-p", pid_list]
        else:
            argv = ["perf", "stat", "-x", ",", "-o", self.out, "-e",
                    "raw_syscalls:sys_enter,sched:sched_switch", "-p", pid_list]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=lambda: os.sched_setaffinity(0, PERF_CPUS))
        time.sleep(0.5)  # attached

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)

    def counts(self) -> dict[str, float]:
        found = {}
        for line in Path(self.out).read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2].startswith(("raw_syscalls", "sched")):
                found[fields[2]] = float(fields[0]) if fields[0][:1].isdigit() else float("nan")
        os.unlink(self.out)
        return found

    def report(self, top: int) -> str:
        text = subprocess.run(["perf", "report", "-i", self.out, "--no-children", "--sort", "sym",
                               "--stdio", "-g", "none", "--percent-limit", "1.5"],
                              capture_output=True, text=True).stdout
        os.unlink(self.out)
        rows = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return "\n".join(rows[:top])


def syscall_names(pids: list[int], run: Callable[[], Any], n: int) -> str:
    """The system calls ``pids`` make while ``run`` runs, by name, per request (``perf trace
    -s``, which slows them: the counts, not the times, are what it is for)."""
    out = _scratch(".trace")
    proc = subprocess.Popen(["perf", "trace", "-s", "-o", out, "-p", ",".join(map(str, pids))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: os.sched_setaffinity(0, PERF_CPUS))
    time.sleep(0.5)
    run()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    calls: dict[str, int] = {}
    for line in Path(out).read_text().splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[1].isdigit():
            calls[fields[0]] = calls.get(fields[0], 0) + int(fields[1])
    os.unlink(out)
    top = sorted(calls.items(), key=lambda item: -item[1])[:6]
    return ", ".join(f"{name} {count / n:.2f}" for name, count in top)


def idle_counts(pids: list[int], seconds: float) -> dict[str, float]:
    """What the processes do while nobody asks them anything (a broker's timers)."""
    perf = Perf(pids)
    time.sleep(seconds)
    perf.stop()
    return perf.counts()


def measure(label: str, op: Callable[[], Any], calls: int, per_call: int, server: list[int],
            workers: list[int], warmup: int, profile: bool, top: int) -> None:
    """Run ``op`` ``calls`` times (``per_call`` requests each) and print per-request figures."""
    for _ in range(warmup):
        op()
    me = [os.getpid()]
    groups = {"client": me, "server": server, "workers": workers}
    perfs = {name: Perf(pids) for name, pids in groups.items() if pids}
    cpu0 = {name: sum(map(h.cpu_ns, pids)) for name, pids in groups.items() if pids}
    start = time.perf_counter_ns()
    for _ in range(calls):
        op()
    wall = time.perf_counter_ns() - start
    cpu1 = {name: sum(map(h.cpu_ns, pids)) for name, pids in groups.items() if pids}
    for perf in perfs.values():
        perf.stop()
    n = calls * per_call
    print(f"\n== {label}: {n} requests, {n / wall * 1e9:,.0f}/s, wall {wall / n / 1e3:.1f} µs")
    for name in perfs:
        counts = perfs[name].counts()
        print(f"  {name:8} cpu {(cpu1[name] - cpu0[name]) / n / 1e3:7.2f} µs"
              f"  syscalls {counts.get('raw_syscalls:sys_enter', float('nan')) / n:6.2f}"
              f"  switches {counts.get('sched:sched_switch', float('nan')) / n:6.2f}")
    if not profile:
        return

    def again() -> None:
        for _ in range(calls):
            op()

    for name, pids in groups.items():
        if pids:
            print(f"  {name} syscalls/request: {syscall_names(pids, again, n)}")
    profiler = cProfile.Profile(time.thread_time_ns, 1e-9)  # CPU, not wall: the
    # server runs inside the client's send on a shared vCPU
    perf = Perf(server, record=True) if server else None
    profiler.enable()
    for _ in range(calls):
        op()
    profiler.disable()
    if perf:
        perf.stop()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    print(f"  client profile (cProfile, own time; {total / n * 1e6:.1f} µs/request profiled, "
          f"{stats.total_calls / n:.0f} Python calls/request):")
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]
    for (path, line, func), (_cc, ncalls, tottime, _cum, _callers) in rows:
        print(f"    {tottime / total:5.1%} {ncalls / n:5.1f}/req  "
              f"{Path(path).name}:{line}({func})")
    if perf:
        print("  server profile (perf, self time by symbol):")
        for row in perf.report(top).splitlines():
            print("    " + row.strip()[:110])


# ---------------------------------------------------------------------------------- cases


def kv_cases(children: h.Children, args: argparse.Namespace) -> None:
    from pymemcache.client.base import Client as Pymemcache

    from workbench import KeyValueStore, memcache

    broker, port = h.start_broker(children)
    memcached, mport = h.start_memcached(children)
    print(f"idle broker over 1 s: {idle_counts([broker.pid], 1.0)}")
    kv = KeyValueStore(h.LOOPBACK, port)
    mc = memcache.Client([f"{h.LOOPBACK}:{port}"])
    pm = Pymemcache((h.LOOPBACK, mport), default_noreply=False)
    clients = {"KeyValueStore": (kv.store, kv.get, broker.pid),
               "memcache.Client": (mc.set, mc.get, broker.pid),
               "pymemcache+memcached": (pm.set, pm.get, memcached.pid)}
    for name, (put, get, server) in clients.items():
        h.pin(server, CPU)
        keys = itertools.cycle(KEYS)
        measure(f"kv.set {name}", lambda: put(next(keys), VALUE), args.ops, 1, [server], [],
                500, args.profile, args.top)
        measure(f"kv.get {name}", lambda: get(next(keys)), args.ops, 1, [server], [],
                500, args.profile, args.top)
    kv.close()
    mc.disconnect_all()
    pm.close()


def task_cases(children: h.Children, args: argparse.Namespace) -> None:
    import multiprocessing

    from workbench import Sleigh

    broker, port = h.start_broker(children)
    before = set(h.descendants())
    sleigh = Sleigh(workerCount=2, broker=f"{h.LOOPBACK}:{port}")
    sleigh.submit(TASK, 0).result()
    workers = [pid for pid in h.descendants() if pid not in before and pid != broker.pid]
    items = list(range(args.map_items))
    for pid in [broker.pid, *workers]:
        h.pin(pid, CPU)
    measure("task.rt Sleigh.submit().result()", lambda: sleigh.submit(TASK, 1).result(),
            args.tasks, 1, [broker.pid], workers, 50, args.profile, args.top)
    measure("task.map Sleigh.map(chunksize=100)",
            lambda: list(sleigh.map(TASK, items, chunksize=100)), 5, len(items), [broker.pid],
            workers, 1, args.profile, args.top)
    sleigh.stop()
    with multiprocessing.Pool(2) as pool:
        pool.apply(TASK, (0,))
        pool_pids = [proc.pid for proc in multiprocessing.active_children()]
        for pid in pool_pids:
            h.pin(pid, CPU)
        measure("task.rt Pool.apply", lambda: pool.apply(TASK, (1,)), args.tasks, 1, [],
                pool_pids, 50, args.profile, args.top)
        measure("task.map Pool.map(chunksize=100)",
                lambda: pool.map(TASK, items, chunksize=100), 5, len(items), [], pool_pids, 1,
                args.profile, args.top)


def pub_cases(children: h.Children, args: argparse.Namespace) -> None:
    import redis

    from workbench import mq
    from workbench.client.embedded import connect
    from workbench.client.pubsub import MessageBus

    broker, port = h.start_broker(children)
    server, rport = h.start_redis(children)
    h.pin(broker.pid, CPU)
    h.pin(server.pid, CPU)
    connection = connect(h.LOOPBACK, port)
    bus = MessageBus(connection)
    mq.init_connection(f"{h.LOOPBACK}:{port}")
    message = b"m" * 64
    r = redis.Redis(host=h.LOOPBACK, port=rport)
    pipe = r.pipeline(transaction=False)

    def pipelined() -> None:
        for _ in range(100):
            pipe.publish("hot", message)
        pipe.execute()

    measure("pub mq.twitter", lambda: mq.twitter("hot", message), args.ops, 1, [broker.pid],
            [], 500, args.profile, args.top)
    measure("pub MessageBus.publish", lambda: bus.publish("hot", message), args.ops, 1,
            [broker.pid], [], 500, args.profile, args.top)
    measure("pub redis pipelined PUBLISH x100", pipelined, args.ops // 100, 100, [server.pid],
            [], 5, args.profile, args.top)
    mq.close_connection()
    connection.close()
    r.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="kv,task,pub")
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=1_000)
    parser.add_argument("--map-items", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    args = parser.parse_args()
    h.pin(os.getpid(), CPU)
    cases = {"kv": kv_cases, "task": task_cases, "pub": pub_cases}
    for name in args.only.split(","):
        with h.Children() as children:
            cases[name](children, args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
