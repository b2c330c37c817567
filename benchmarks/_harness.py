"""Shared plumbing for the benchmarks in this folder: servers, child processes, clocks, stats.

What lives here is what every benchmark needs the same way, so that the workspace, key-value,
pub/sub and worker benchmarks measure with one method:

* servers under test and anchor servers (the workbench broker, a ``workbench web`` gateway in
  front of one, and a bare pyzmq DEALER->ROUTER echo server, each plain or with CURVE;
  ``redis-server``, ``memcached``) started on free loopback ports and stopped for sure
  afterwards; an anchor that is not installed is skipped with a note (``start_anchors``);
* client processes that connect, warm up, then start measuring at one common instant (a
  barrier over their stdin/stdout pipes) and report one JSON line each;
* one clock for latencies across processes (CLOCK_MONOTONIC is system-wide on Linux);
* pinning a client and a server to named CPU layouts (``placements``);
* runs: groups of ``Case``s measured once per run, their order rotating from run to run
  (``run_once``, ``run_benchmark``); medians and percentiles, the background-CPU meter;
* the summary (medians of runs, ratios as the median of per-run ratios, the tables) and the
  command line every benchmark script shares (``bench_main``).

Every child runs in a session (process group) of its own: a Ctrl-C typed in the terminal reaches
only this process, whose ``finally`` then stops each group in order (SIGTERM, then SIGKILL).

Run as a script, this module is the echo server anchor::

    python benchmarks/_harness.py echo-server --port PORT [--nocopy] [--parent-pid PID]

(a CURVE server when ``$BENCH_CURVE_SERVER_SECRET`` holds its Z85 secret key).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

LOOPBACK = "127.0.0.1"
HERE = Path(__file__).resolve().parent

#: How long a server or a client process may take to come up before the benchmark gives up.
START_TIMEOUT = 20.0
#: How long a stopped child gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0


# ---------------------------------------------------------------------------------- clocks


def mono_ns() -> int:
    """CLOCK_MONOTONIC in ns: one clock shared by every process on the machine, so a send time
    taken in one process can be subtracted from a receive time taken in another."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def sleep_until(deadline_ns: int) -> None:
    remaining = deadline_ns - mono_ns()
    if remaining > 0:
        time.sleep(remaining / 1e9)


def time_loop(op: Callable[[], Any], n: int, warmup: int = 0) -> float:
    """Call ``op`` ``warmup`` times untimed, then ``n`` times timed -> calls per second."""
    for _ in range(warmup):
        op()
    start = time.perf_counter()
    for _ in range(n):
        op()
    return n / (time.perf_counter() - start)


def time_repeats(op: Callable[[], Any], warmup: int, timed: int,
                 check: Callable[[Any], None]) -> dict:
    """Call a long ``op`` (a 100 MiB round trip) ``warmup`` times untimed, then ``timed`` times
    timed -> {"rt_s": the median time, "times_s": each}; the last result goes to ``check``,
    untimed."""
    times = []
    for i in range(warmup + timed):
        start = time.perf_counter()
        result = op()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
        if i == warmup + timed - 1:
            check(result)
        del result  # free it before the next call, as a real user's loop would
    return {"rt_s": median(times), "times_s": times}


# ---------------------------------------------------------------------------------- stats


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): always a value that was actually measured."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats
    return ordered[int(rank) - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def spread(values: Sequence[float]) -> tuple[float, float]:
    return min(values), max(values)


# ---------------------------------------------------------------------------------- children


class Children:
    """Every process a benchmark starts, so that all of them are stopped whatever happens.

    Use as a context manager; ``stop_all`` also runs on SIGTERM (turned into SystemExit by
    ``install_signal_handlers``) and on Ctrl-C, because both unwind through ``__exit__``."""

    def __init__(self) -> None:
        self.logdir = Path(tempfile.mkdtemp(prefix="wb-bench-"))
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_all()
        if exc[0] is None:
            shutil.rmtree(self.logdir, ignore_errors=True)
        else:
            print(f"child logs kept in {self.logdir}", file=sys.stderr)

    def spawn(self, name: str, argv: list[str], pipes: bool = False,
              env: dict | None = None) -> subprocess.Popen:
        """Start ``argv`` in its own session; stderr goes to a log file shown on failure.
        With ``pipes`` its stdin/stdout are pipes for the ready/go/result protocol."""
        log = open(self.logdir / f"{name}-{len(self.procs)}.log", "wb")
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else subprocess.DEVNULL, stderr=log,
                start_new_session=True, env=env, bufsize=0)
        finally:
            log.close()
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM the child's whole process group, SIGKILL it if it lingers, reap it."""
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        # Newest first: clients before the servers they talk to.
        for _, proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                print(f"could not stop pid {proc.pid}: {exc}", file=sys.stderr)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the child leads its own group (start_new_session)
    except ProcessLookupError:
        pass


def log_tail(proc: subprocess.Popen, limit: int = 2000) -> str:
    try:
        return Path(proc.log_path).read_text(errors="replace")[-limit:].strip()  # type: ignore
    except (AttributeError, OSError):
        return ""


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C does, so ``finally`` blocks stop the children."""
    def unwind(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)
    signal.signal(signal.SIGHUP, unwind)


class LineReader:
    """Read whole lines from a child's stdout with a deadline (a plain readline could hang)."""

    def __init__(self, proc: subprocess.Popen, name: str) -> None:
        self.proc = proc
        self.name = name
        self.buffer = b""

    def readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
            if not ready:
                raise TimeoutError(f"{self.name}: no answer within {timeout:g} s\n"
                                   f"{log_tail(self.proc)}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"{self.name} exited with status {self.proc.wait()}\n"
                                   f"{log_tail(self.proc)}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def wait_for(check: Callable[[], bool], timeout: float, what: str,
             proc: subprocess.Popen | None = None) -> None:
    """Poll ``check`` until it returns True; fail early if ``proc`` died meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: exited with status {proc.returncode}\n{log_tail(proc)}")
        try:
            if check():
                return
        except Exception:
            pass  # not up yet
        if time.monotonic() > deadline:
            detail = log_tail(proc) if proc is not None else ""
            raise TimeoutError(f"{what}: not ready after {timeout:g} s\n{detail}")
        time.sleep(0.05)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------- pools


def process_table() -> dict[int, tuple[int, int]]:
    """Every live process -> (parent pid, start time in clock ticks since boot)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if fields[0] not in "ZX":  # a zombie has exited; its parent only has to reap it
            table[int(entry)] = (int(fields[1]), int(fields[19]))
    return table


def descendants(root: int | None = None) -> dict[int, int]:
    """Every live process below ``root`` (default: this one) -> its start time, which tells
    it from a later process that got the same pid."""
    table = process_table()
    below: dict[int, int] = {}
    frontier = [os.getpid() if root is None else root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in table.items():
            if ppid == parent and pid not in below:
                below[pid] = started
                frontier.append(pid)
    return below


def still_running(procs: dict[int, int]) -> dict[int, int]:
    table = process_table()
    return {pid: started for pid, started in procs.items()
            if pid in table and table[pid][1] == started}


def stop_processes(procs: dict[int, int], grace: float) -> tuple[float, int]:
    """Wait up to ``grace`` s for ``procs`` to exit, then SIGKILL those left (by pid, checked
    against their start time) -> (seconds until all were gone, how many had to be killed)."""
    start = time.perf_counter()
    left = still_running(procs)
    while left and time.perf_counter() - start < grace:
        time.sleep(0.01)
        left = still_running(left)
    elapsed = time.perf_counter() - start
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return elapsed, len(left)


def is_helper(pid: int) -> bool:
    """multiprocessing's resource tracker: it serves the process that started it, not a pool,
    and exits with it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"resource_tracker" in cmdline.read()
    except OSError:
        return False


def close_pool(close: Callable[[], Any], grace: float) -> tuple[float, float, int]:
    """Stop a pool (``close``) and make sure every process below this one is gone, those
    still running ``grace`` s after the call returned killed -> (seconds the stop call took,
    seconds until the last process exited, processes that had to be killed)."""
    # A second SIGTERM (the benchmark's Children.stop) must not cut the cleanup short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    procs = {pid: started for pid, started in descendants().items() if not is_helper(pid)}
    start = time.perf_counter()
    try:
        close()
    finally:
        stopped = time.perf_counter() - start
        gone, killed = stop_processes(procs, grace)
    return stopped, stopped + gone, killed


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far, in seconds (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Linux's CPU clock of another process (``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``).
_CPUCLOCK_SCHED = 2


def cpu_ns(pid: int) -> int:
    """CPU time every thread of a process has used so far, those that ended included, in ns,
    as the scheduler counts it: precise where ``cpu_seconds`` counts clock ticks. The
    process's CPU clock, where the kernel lets this process read it; else the sum of its
    live threads' ``/proc/PID/task/*/schedstat`` (which loses what an ended thread used: a
    thread pool that lets idle threads go would seem to have used less than nothing)."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | _CPUCLOCK_SCHED)
    except OSError:
        pass
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that just ended
    return total


# ---------------------------------------------------------------------------------- servers


def start_broker(children: Children, port: int | None = None, flags: Sequence[str] = (),
                 connection_file: Path | None = None,
                 fixed_layout: bool = False) -> tuple[subprocess.Popen, int]:
    """A workbench broker on loopback with extra command-line ``flags``; ready once a
    NetWorkSpace can open on it. With ``connection_file`` the broker speaks CURVE and writes
    its connection file there, which is how the probe (and every client) connects. With
    ``fixed_layout`` its address space is not randomized (see ``without_aslr``)."""
    from workbench import NetWorkSpace

    port = port or free_port()
    argv = [sys.executable, "-m", "workbench", "broker", "--host", LOOPBACK, "--port", str(port),
            # the broker stops by itself if this process is killed without a chance to clean up
            "--parent-pid", str(os.getpid()), *flags]
    if fixed_layout:
        argv = without_aslr(argv)
    if connection_file is not None:
        argv += ["--curve", "--connection-file", str(connection_file)]
    proc = children.spawn("broker", argv)

    def answers() -> bool:
        if connection_file is None:
            NetWorkSpace("__bench_probe__", LOOPBACK, port, timeout=0.5).close()
        else:  # the file is there once the broker listens
            NetWorkSpace("__bench_probe__", str(connection_file), timeout=0.5).close()
        return True

    wait_for(answers, START_TIMEOUT, "workbench broker", proc)
    return proc, port


def start_gateway(children: Children, broker_port: int) -> tuple[subprocess.Popen, int]:
    """``python -m workbench web`` in front of the broker at ``broker_port``, on a free loopback
    port (its web connection file in the log folder); ready once it answers ``/api/status``."""
    from urllib.request import urlopen

    port = free_port()
    proc = children.spawn("web", [
        sys.executable, "-m", "workbench", "web", "--broker", f"{LOOPBACK}:{broker_port}",
        "--host", LOOPBACK, "--port", str(port), "--parent-pid", str(os.getpid()),
        "--connection-file", str(children.logdir / f"web-{port}.json")])

    def answers() -> bool:
        with urlopen(f"http://{LOOPBACK}:{port}/api/status", timeout=1) as response:
            return response.status == 200

    wait_for(answers, START_TIMEOUT, "workbench web", proc)
    return proc, port


def without_aslr(argv: list[str]) -> list[str]:
    """``argv`` run with its address space not randomized (``setarch -R``), where ``setarch``
    is at hand. Why: on the project VM about one broker process in six, started the same way,
    spent a third more CPU time per request than the others (19.4 against 14.1 µs a store)
    for as long as it ran, and which ones did followed where the loader had put the libraries;
    without randomization every broker lands the same way, so two brokers compared in one run
    differ by what they do, not by where they were loaded."""
    setarch = shutil.which("setarch")
    if setarch is None or not sys.platform.startswith("linux"):
        return argv
    return [setarch, platform.machine(), "--addr-no-randomize", *argv]


class CurveKeys(NamedTuple):
    """Z85 key pairs (``zmq.curve_keypair()``) of a CURVE anchor server and its clients."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def generate(cls) -> CurveKeys:
        import zmq

        return cls(*zmq.curve_keypair(), *zmq.curve_keypair())


#: How an echo server started with CURVE learns its secret key: not on its command line.
CURVE_SECRET_ENV = "BENCH_CURVE_SERVER_SECRET"


def start_echo_server(children: Children, nocopy: bool = False, port: int | None = None,
                      curve: CurveKeys | None = None) -> tuple[subprocess.Popen, int]:
    """The bare-ZeroMQ anchor: a ROUTER echoing every message back (see ``echo_server``);
    with ``curve`` it is a CURVE server (``curve_server=True``) with that server key."""
    port = port or free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "echo-server", "--port", str(port),
            "--parent-pid", str(os.getpid())]
    if nocopy:
        argv.append("--nocopy")
    env = None
    if curve is not None:
        env = {**os.environ, CURVE_SECRET_ENV: curve.server_secret.decode()}
    name = ("echo-curve" if curve else "echo") + ("-nocopy" if nocopy else "")
    proc = children.spawn(name, argv, env=env)
    wait_for(lambda: _echo_answers(port, curve), START_TIMEOUT, "zmq echo server", proc)
    return proc, port


def dealer(port: int, rcvtimeo_ms: int | None = None, curve: CurveKeys | None = None):
    """A DEALER socket connected to a loopback port, that drops unsent messages on close;
    a CURVE client of a server with ``curve``'s keys."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if rcvtimeo_ms is not None:
        sock.setsockopt(zmq.RCVTIMEO, rcvtimeo_ms)
    if curve is not None:
        sock.curve_serverkey = curve.server_public
        sock.curve_publickey = curve.client_public
        sock.curve_secretkey = curve.client_secret
    sock.connect(f"tcp://{LOOPBACK}:{port}")
    return sock


def _echo_answers(port: int, curve: CurveKeys | None = None) -> bool:
    sock = dealer(port, 500, curve)
    try:
        sock.send(b"ping")
        return sock.recv() == b"ping"
    finally:
        sock.close()


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


#: redis-server without persistence: the anchor of every in-memory figure.
REDIS_IN_MEMORY = ("--appendonly", "no")


def redis_argv(port: int, workdir: str | Path,
               persistence: Sequence[str] = REDIS_IN_MEMORY) -> list[str]:
    """A redis-server on loopback with its files in ``workdir``, never an RDB snapshot, and
    the append-only file as ``persistence`` says."""
    return [redis_server_path(), "--save", "", *persistence, "--bind", LOOPBACK,
            "--port", str(port), "--dir", str(workdir), "--logfile", ""]


def start_redis(children: Children, port: int | None = None,
                persistence: Sequence[str] = REDIS_IN_MEMORY,
                workdir: str | Path | None = None) -> tuple[subprocess.Popen, int]:
    """A throwaway redis-server (see ``redis_argv``), its files in ``workdir`` (default: a
    temp folder)."""
    import redis

    port = port or free_port()
    workdir = workdir or tempfile.mkdtemp(prefix="wb-bench-redis-", dir=children.logdir)
    proc = children.spawn("redis", redis_argv(port, workdir, persistence))
    wait_for(lambda: redis.Redis(host=LOOPBACK, port=port, socket_timeout=1).ping(),
             START_TIMEOUT, "redis-server", proc)
    return proc, port


def time_broker_answers(children: Children, flags: Sequence[str] = (),
                        timeout: float = START_TIMEOUT) -> tuple[float, subprocess.Popen]:
    """Seconds from spawning ``python -m workbench broker [flags]`` until it answers a STATUS
    request sent by a bare pyzmq DEALER that reconnects every millisecond -> (seconds, the
    broker, still running)."""
    import zmq

    from workbench.protocol import Op, request_head

    port = free_port()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 1)  # retry the connection every millisecond
    sock.connect(f"tcp://{LOOPBACK}:{port}")
    try:
        started = time.perf_counter()
        proc = children.spawn("broker", [
            sys.executable, "-m", "workbench", "broker", "--host", LOOPBACK, "--port", str(port),
            "--parent-pid", str(os.getpid()), *flags])
        sock.send(request_head(Op.STATUS, 1))
        if not sock.poll(timeout * 1000):
            raise TimeoutError(f"the broker did not answer within {timeout:g} s\n"
                               f"{log_tail(proc)}")
        sock.recv()
        return time.perf_counter() - started, proc
    finally:
        sock.close()


def time_redis_answers(children: Children, workdir: str | Path,
                       persistence: Sequence[str] = REDIS_IN_MEMORY,
                       timeout: float = START_TIMEOUT) -> tuple[float, subprocess.Popen]:
    """Seconds from spawning a redis-server (``redis_argv``) until it answers PING with PONG:
    while it loads its files it refuses the port or answers -LOADING. Polled every
    millisecond over a bare socket (no client library's retries in the figure) -> (seconds,
    the server, still running)."""
    port = free_port()
    started = time.perf_counter()
    proc = children.spawn("redis", redis_argv(port, workdir, persistence))
    deadline = started + timeout
    while True:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return time.perf_counter() - started, proc
        except OSError:
            pass  # not listening yet
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with status {proc.returncode}\n"
                               f"{log_tail(proc)}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"redis-server did not answer within {timeout:g} s")
        time.sleep(0.001)


def memcached_path() -> str | None:
    return shutil.which("memcached")


def start_memcached(children: Children, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """A throwaway memcached: loopback only, TCP only (``-U 0``), 4 threads, 1 GiB of memory."""
    port = port or free_port()
    argv = [memcached_path(), "-l", LOOPBACK, "-p", str(port), "-U", "0", "-t", "4",
            "-m", "1024"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]  # memcached refuses to start as root unless told which user
    proc = children.spawn("memcached", argv)
    wait_for(lambda: _memcached_answers(port), START_TIMEOUT, "memcached", proc)
    return proc, port


def _memcached_answers(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
        sock.sendall(b"version\r\n")
        return sock.recv(100).startswith(b"VERSION")


class Anchor(NamedTuple):
    """An anchor server and the Python client the benchmarks drive it with."""

    server: str  # executable
    client: str  # importable module
    start: Callable[[Children], tuple[subprocess.Popen, int]]


ANCHORS = {"redis": Anchor("redis-server", "redis", lambda c: start_redis(c)),
           "memcached": Anchor("memcached", "pymemcache", lambda c: start_memcached(c))}


def start_anchors(children: Children, names: Iterable[str]) -> dict[str, tuple[Any, int]]:
    """The anchor servers among ``names`` that can run here -> name: (process, port); each
    one missing (server not installed, or its Python client) is reported and skipped."""
    servers = {}
    for name in names:
        if anchor_missing(name):
            continue
        servers[name] = ANCHORS[name].start(children)
    return servers


def anchor_missing(name: str) -> bool:
    """Whether the anchor ``name`` (a key of ``ANCHORS``) cannot run here; if so, says why."""
    anchor = ANCHORS[name]
    if shutil.which(anchor.server) is None:
        why = f"{anchor.server} not found"
        fix = "benchmarks/install-anchors.sh installs it"
    elif importlib.util.find_spec(anchor.client) is None:
        why = f"Python package {anchor.client} not installed"
        fix = "pip install -e '.[bench]' installs it"
    else:
        return False
    print(f"{why}: the {name} anchors are SKIPPED ({fix})", flush=True)
    return True


def echo_server(port: int, nocopy: bool, parent_pid: int | None) -> None:
    """DEALER->ROUTER echo with a plain blocking recv_multipart/send_multipart loop, the cheapest
    way to serve ZeroMQ from Python with pyzmq: what a broker built on libzmq stands on.
    ``nocopy`` keeps frames in ZeroMQ's memory (how a broker should move big values)."""
    context, router = _bound_router(port, parent_pid, os.environ.get(CURVE_SECRET_ENV))
    copy = not nocopy
    # No receive timeout, no poller: the plain blocking loop baselines.md measured.
    try:
        while True:
            router.send_multipart(router.recv_multipart(copy=copy), copy=copy)
    finally:
        router.close()
        context.term()


def start_relay_server(children: Children) -> tuple[subprocess.Popen, int]:
    """The hand-off of a broker built on libzmq: a bare ROUTER relay (see ``relay_server``)."""
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "relay-server", "--port", str(port),
            "--parent-pid", str(os.getpid())]
    proc = children.spawn("relay", argv)
    wait_for(lambda: _relay_answers(port), START_TIMEOUT, "zmq relay server", proc)
    return proc, port


def _relay_answers(port: int) -> bool:
    import zmq

    sock = dealer(port, 200)
    try:
        sock.send_multipart([b"put", b"probe", b"x"])
        return sock.recv() == b"ok"
    except zmq.Again:
        return False
    finally:
        sock.close()


def relay_server(port: int, parent_pid: int | None) -> None:
    """A queue broker with nothing but the hand-off: ``[put, key, value]`` gives the value to
    the longest-waiting ``[want, key, _]`` (or queues it) and answers ``ok``; ``want`` is
    answered with a value when there is one. No protocol, no leases, no checks: what a broker
    built on libzmq pays for a hand-off, wake-ups of libzmq's I/O threads included."""
    from collections import defaultdict, deque

    context, router = _bound_router(port, parent_pid)
    waiting: defaultdict[bytes, deque] = defaultdict(deque)
    queued: defaultdict[bytes, deque] = defaultdict(deque)
    try:
        while True:
            peer, kind, key, value = router.recv_multipart()
            if kind == b"want":
                if queued[key]:
                    router.send_multipart([peer, queued[key].popleft()])
                else:
                    waiting[key].append(peer)
                continue
            if waiting[key]:
                router.send_multipart([waiting[key].popleft(), value])
            else:
                queued[key].append(value)
            router.send_multipart([peer, b"ok"])
    finally:
        router.close()
        context.term()


def _bound_router(port: int, parent_pid: int | None, curve_secret: str | None = None):
    """-> (context, ROUTER bound on loopback) for an anchor server that dies with its parent;
    a CURVE server with the Z85 secret key ``curve_secret``, if given."""
    import zmq

    if parent_pid is not None:
        die_with_parent(parent_pid)
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    if curve_secret:
        router.curve_server = True
        router.curve_secretkey = curve_secret.encode()
    router.bind(f"tcp://{LOOPBACK}:{port}")
    return context, router


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel send SIGTERM when the benchmark dies, even by SIGKILL: no orphans, and
    no timer in the server's loop."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before the request took effect
        raise SystemExit(0)


# ---------------------------------------------------------------------------------- barrier


def run_synchronized(children: Children, name: str, argvs: list[list[str]], duration: float,
                     lead: float = 0.2) -> list[dict]:
    """Start one client process per argv, wait until every one says ``ready`` (connected and
    warmed up), then tell all of them the same CLOCK_MONOTONIC start and end instants; returns
    their JSON reports. Starting them together matters: a client that starts early would have
    the server to itself for a while and inflate the aggregate."""
    procs = [children.spawn(f"{name}{i}", argv, pipes=True) for i, argv in enumerate(argvs)]
    readers = [LineReader(p, f"{name} client {i}") for i, p in enumerate(procs)]
    try:
        for reader in readers:
            line = reader.readline(START_TIMEOUT)
            if line != "ready":
                raise RuntimeError(f"{reader.name}: expected 'ready', got {line!r}")
        start = mono_ns() + int(lead * 1e9)
        end = start + int(duration * 1e9)
        for proc in procs:
            proc.stdin.write(f"go {start} {end}\n".encode())
            proc.stdin.flush()
        reports = [json.loads(r.readline(duration + lead + START_TIMEOUT)) for r in readers]
        for proc in procs:
            proc.wait(timeout=STOP_TIMEOUT)
    finally:
        for proc in procs:
            children.stop(proc)
    for report in reports:
        report["start_ns"] = start
    return reports


def aggregate_rate(reports: list[dict]) -> float:
    """Total operations / wall time from the common start to the last client's last reply."""
    start = reports[0]["start_ns"]
    last = max(r["end_ns"] for r in reports)
    return sum(r["ops"] for r in reports) / ((last - start) / 1e9)


def child_ready() -> tuple[int, int]:
    """Client side of ``run_synchronized``: announce readiness, wait for the go -> (start_ns,
    end_ns)."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    line = sys.stdin.readline().split()
    if not line or line[0] != "go":
        raise SystemExit("parent went away before the start signal")
    return int(line[1]), int(line[2])


def child_report(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def timed_until(op: Callable[[], Any], start_ns: int, end_ns: int, per_call: int = 1) -> dict:
    """Client side of a fixed-duration phase: wait for the common start, call ``op`` until the
    end instant -> report with operations done and when the last one finished."""
    sleep_until(start_ns)
    calls = 0
    now = mono_ns()
    while now < end_ns:
        op()
        calls += 1
        now = mono_ns()
    return {"ops": calls * per_call, "end_ns": now, "pid": os.getpid()}


def child_argv(script: str | Path, role: str, **params: Any) -> list[str]:
    """How a benchmark script runs itself as a client process: ``script --child ROLE JSON``
    (``bench_main`` dispatches it to the script's ``run_child``)."""
    return [sys.executable, str(Path(script).resolve()), "--child", role, json.dumps(params)]


def run_replying_child(role: str, params: dict, settings_type: type,
                       roles: dict[str, Callable[..., None]]) -> None:
    """A child process (``child_argv``) whose stdout carries only JSON lines (``say``): what
    it or a pool it starts prints goes to its log. It unwinds on SIGTERM and dies with the
    benchmark; ``roles[role](reply=..., settings=..., **params)`` does its work."""
    reply = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    die_with_parent(params.pop("parent_pid"))
    settings = settings_type(**{**params.pop("settings"), "only": ()})
    roles[role](reply=reply, settings=settings, **params)


def say(reply: Any, obj: Any) -> None:
    """One JSON line to the benchmark, from a ``run_replying_child``."""
    reply.write(json.dumps(obj) + "\n")
    reply.flush()


def timed_client(op: Callable[[], Any], warmup: int, per_call: int) -> None:
    """A whole client process of ``clients_rate``: warm up, wait for the go, call ``op`` until
    the end instant, report."""
    for _ in range(warmup):
        op()
    start_ns, end_ns = child_ready()
    child_report(timed_until(op, start_ns, end_ns, per_call))


def clients_rate(children: Children, name: str, argvs: list[list[str]],
                 duration: float) -> dict:
    """Run client processes together for ``duration`` s -> total and per-client rates."""
    reports = run_synchronized(children, name, argvs, duration)
    start = reports[0]["start_ns"]
    return {"total_per_s": aggregate_rate(reports),
            "per_client_per_s": [r["ops"] / ((r["end_ns"] - start) / 1e9) for r in reports]}


# ---------------------------------------------------------------------------------- CPU meter


class CpuMeter:
    """Cores of CPU used by processes that are not ours while a run lasted (other jobs on a
    shared machine), so noisy runs can be spotted. Ours = this process, its reaped children, and
    the long-running servers whose pids are passed in. Interrupt time is left out of both sides:
    loopback traffic shows up there and is not attributed to any process."""

    def __init__(self, server_pids: Iterable[int]) -> None:
        self.server_pids = list(server_pids)
        self.tick = os.sysconf("SC_CLK_TCK")

    def _machine_busy(self) -> float:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:]
        user, nice, system = (int(x) for x in fields[:3])
        return (user + nice + system) / self.tick

    def _ours(self) -> float:
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            total += usage.ru_utime + usage.ru_stime
        for pid in self.server_pids:
            try:
                total += cpu_seconds(pid)
            except (OSError, IndexError, ValueError):
                pass
        return total

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = self._machine_busy()
        self.ours0 = self._ours()

    def stop(self) -> dict:
        wall = time.monotonic() - self.t0
        busy = self._machine_busy() - self.busy0
        ours = self._ours() - self.ours0
        return {"wall_s": wall, "our_cores": ours / wall,
                "background_cores": max(0.0, (busy - ours) / wall)}


# ---------------------------------------------------------------------------------- placement


def pin(pid: int, cpus: set[int]) -> None:
    """Restrict every thread of a process (ZeroMQ's I/O threads, redis-server's helpers) to
    ``cpus``; threads started later inherit it from their creator."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass  # a thread that just ended


def placements() -> dict[str, tuple[set[int], set[int]]]:
    """Named (client CPUs, server CPUs) layouts for one client talking to one server.

    On a small VM where the two processes run decides the round trip more than anything the
    server does: waking a process on the other vCPU costs more than the whole request when both
    share one (on the 2-vCPU project VM a bare ZeroMQ echo ran 3-4x slower split than on one
    vCPU, and unpinned runs flip between the two). So round trips are measured in both
    layouts, pinned: ``same`` (one vCPU: the CPU cost of a request) and ``split`` (a vCPU each:
    what a server with a core of its own sees)."""
    cpus = sorted(os.sched_getaffinity(0))
    layouts = {"same": ({cpus[0]}, {cpus[0]})}
    if len(cpus) > 1:
        layouts["split"] = ({cpus[0]}, {cpus[1]})
    return layouts


class Pinned:
    """Pin a client and a server process to a layout for the duration of a ``with`` block, then
    give every thread back the CPUs it had."""

    def __init__(self, client_pid: int, server_pid: int, layout: tuple[set[int], set[int]]):
        self.pins = [(client_pid, layout[0]), (server_pid, layout[1])]
        self.saved = {pid: os.sched_getaffinity(pid) for pid, _ in self.pins}

    def __enter__(self) -> Pinned:
        for pid, cpus in self.pins:
            pin(pid, cpus)
        return self

    def __exit__(self, *exc: Any) -> None:
        for pid, cpus in self.saved.items():
            try:
                pin(pid, cpus)
            except FileNotFoundError:
                pass  # the server already stopped


# ---------------------------------------------------------------------------------- runs

#: A run whose other processes used more CPU than this (in cores) is flagged as noisy.
NOISY_CORES = 0.15


@dataclass(frozen=True)
class Settings:
    """What every benchmark's settings have; a benchmark subclasses it with its own."""

    runs: int = 5
    # Timed round trips per single-client figure: baselines.md used 20,000 unpinned. Pinned
    # figures vary far less; 10,000 on one vCPU and 5,000 split (where a round trip is ~3x
    # slower) keep both over a second for the workbench and 5 runs within ~3 minutes on 2 cores.
    ops: int = 10_000
    split_ops: int = 5_000
    warmup: int = 500
    clients: int = 4  # client processes of the multi-client cases
    duration_s: float = 3.0  # how long they run
    client_warmup: int = 200
    only: tuple[str, ...] = ()  # names of groups to measure; empty: all of them

    def round_trips(self, layout: str) -> int:
        """Timed single-client round trips per figure in a layout."""
        return self.split_ops if layout == "split" else self.ops


@dataclass(frozen=True)
class Case:
    """One measurement of one system, taken once per run.

    ``measure(ctx, run)`` returns its figures; a figure's name is ``<case name>.<key>``. The
    context needs ``settings`` (with ``only``), ``ports`` and ``pids`` (keyed by server name)."""

    name: str  # "<system>.<case>"
    measure: Callable[[Any, int], dict]
    server: str  # the server it talks to: a key of ctx.ports (absent: skipped)
    layout: str | None = None  # pinned placement of this process and the server (None: free)

    def __call__(self, ctx: Any, run: int) -> dict:
        if self.layout is None:
            return self.measure(ctx, run)
        with Pinned(os.getpid(), ctx.pids[self.server], placements()[self.layout]):
            return self.measure(ctx, run)


def run_once(groups: dict[str, list[Case]], ctx: Any, run: int, meter: CpuMeter) -> dict:
    """Every case once, groups in a fixed order, cases inside a group rotated by the run (so
    drift hits the workbench and its anchors alike)."""
    results, order = {}, []
    meter.start()
    for name, group in groups.items():
        if ctx.settings.only and name not in ctx.settings.only:
            continue
        shift = run % len(group)
        for case in group[shift:] + group[:shift]:
            if case.server not in ctx.ports:
                continue  # an anchor whose server is not installed
            started = time.monotonic()
            results[case.name] = case(ctx, run)
            order.append(case.name)
            print(f"  run {run + 1}: {case.name:<15} {brief(results[case.name])}  "
                  f"[{time.monotonic() - started:.1f} s]", flush=True)
    cpu = meter.stop()
    if cpu["background_cores"] > NOISY_CORES:
        print(f"  run {run + 1}: NOISY, other processes used {cpu['background_cores']:.2f} "
              "cores", flush=True)
    return {"run": run + 1, "order": order, "cpu": cpu, "results": results}


def brief(figures: dict) -> str:
    return ", ".join(f"{k} {v:,.4g}" for k, v in figures.items() if isinstance(v, (int, float)))


def run_benchmark(settings: Any, groups: dict[str, list[Case]],
                  make_context: Callable[[Children, Any], Any],
                  meta: Callable[[Any], dict] | None = None) -> dict:
    """Start the servers (``make_context``), do ``settings.runs`` runs, stop everything ->
    ``{"meta": ..., "runs": [...]}``. The context also needs ``close()`` (its own clients) and
    ``broker_proc`` (whose log is searched for errors), or ``broker_procs`` for several."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.monotonic()
    with Children() as children:
        ctx = make_context(children, settings)
        meter = CpuMeter(ctx.pids.values())
        try:
            runs = [run_once(groups, ctx, run, meter) for run in range(settings.runs)]
        finally:
            ctx.close()
        problems = [line for proc in getattr(ctx, "broker_procs", None) or [ctx.broker_proc]
                    for line in log_problems(proc)]
    info = {"started": started, "elapsed_s": time.monotonic() - t0,
            "settings": asdict(settings), **(meta(ctx) if meta else {}),
            "broker_log_problems": problems}
    return {"meta": versions(info), "runs": runs}


# ---------------------------------------------------------------------------------- summary


class Comparison(NamedTuple):
    """One line of the comparison table.

    how: "rate" -> figure/anchor, higher is better; "latency" -> figure/anchor, lower is
    better; "speedup" -> anchor time / figure time, higher is better."""

    label: str
    figure: str  # the workbench's figure
    anchor: str  # the figure it is compared with
    how: str
    target: float | None = None
    name: str | None = None  # what the ratio is, for the table ("wb/anchor" if not told)


def series(runs: list[dict]) -> dict[str, list[float]]:
    """Every scalar figure -> its values run by run ("wb.rt.store_per_s": [...])."""
    out: dict[str, list[float]] = {}
    for run in runs:
        for case, figures in run["results"].items():
            for key, value in figures.items():
                if isinstance(value, (int, float)):
                    out.setdefault(f"{case}.{key}", []).append(value)
    return out


def ratio(how: str, wb: float, anchor: float) -> float:
    return anchor / wb if how == "speedup" else wb / anchor


def compare(values: dict[str, list[float]], comparisons: Iterable[Sequence]) -> list[dict]:
    rows = []
    for comparison in comparisons:
        label, wb_key, anchor_key, how, target, name = Comparison(*comparison)
        wb, anchor = values.get(wb_key), values.get(anchor_key)
        row = {"label": label, "workbench": wb_key, "anchor": anchor_key, "how": how,
               "target": target, "wb_median": median(wb) if wb else None,
               "anchor_median": median(anchor) if anchor else None}
        if name:
            row["name"] = name
        if wb and anchor:
            # The headline is the median of the per-run ratios: each pairs figures measured
            # minutes apart at most, so drift between runs cancels out of it.
            row["run_ratios"] = [ratio(how, w, a) for w, a in zip(wb, anchor)]
            row["ratio"] = median(row["run_ratios"])
            row["ratio_of_medians"] = ratio(how, row["wb_median"], row["anchor_median"])
            if target is not None:
                row["met"] = row["ratio"] <= target if how == "latency" else row["ratio"] >= target
        rows.append(row)
    return rows


def fmt_figure(key: str, value: float | None) -> str:
    """A figure with its unit, told by the name's suffix: _us, _per_s, _x (a ratio), _pct (a
    share of one core or of a whole, in per cent), _per_task (a count), else s."""
    if value is None:
        return "skipped"
    if key.endswith("_pct"):
        return f"{value:.2f}%"
    if key.endswith("_per_task"):
        return f"{value:.3g}"
    if key.endswith("_us"):
        return f"{value:.2f} µs" if abs(value) < 10 else f"{value:,.0f} µs"
    if key.endswith("_per_s"):
        return f"{value:,.0f}/s"
    if key.endswith("_x"):
        return f"{value:.1f}x"
    if value < 0.001:
        return f"{value * 1e6:,.0f} µs"
    if value < 0.01:
        return f"{value * 1e3:.2f} ms"
    return f"{value:.3f} s"


def comparison_table(rows: list[dict], markdown: bool = False) -> str:
    lines = []
    for row in rows:
        target = row["target"]
        sign = "<=" if row["how"] == "latency" else ">="
        name = row.get("name") or ("anchor/wb" if row["how"] == "speedup" else "wb/anchor")
        if "ratio" not in row:
            ratio_text, met = "n/a", "skipped"
        else:
            low, high = spread(row["run_ratios"])
            ratio_text = f"{row['ratio']:.2f}x ({low:.2f}-{high:.2f})"
            met = "report" if target is None else ("MET" if row["met"] else "NOT MET")
        lines.append([row["label"], fmt_figure(row["workbench"], row["wb_median"]),
                      fmt_figure(row["anchor"], row["anchor_median"]), f"{name} {ratio_text}",
                      "-" if target is None else f"{sign} {target:g}x", met])
    return format_table(
        ["comparison", "workbench", "anchor", "ratio: median of runs (range)", "target",
         "result"], lines, markdown)


def figures_table(values: dict[str, list[float]], markdown: bool = False) -> str:
    rows = []
    for key, vals in values.items():
        low, high = spread(vals)
        rows.append([key, fmt_figure(key, median(vals)),
                     f"{fmt_figure(key, low)} - {fmt_figure(key, high)}"])
    return format_table(["figure", f"median of {len(next(iter(values.values())))}",
                         "min - max"], rows, markdown)


def report(result: dict, comparisons: Iterable[Sequence], anchors: Sequence[str],
           markdown: bool = False) -> None:
    """Print a result's versions, every figure and the comparisons; adds ``medians`` and
    ``comparisons`` to ``result`` (they are saved with it). ``anchors`` names the anchor
    servers the benchmark uses (keys of ``ANCHORS``)."""
    values = series(result["runs"])
    result["medians"] = {key: median(vals) for key, vals in values.items()}
    result["comparisons"] = compare(values, comparisons)
    background = [run["cpu"]["background_cores"] for run in result["runs"]]
    meta = result["meta"]
    parts = [f"workbench {meta['workbench']}", f"python {meta['python']}",
             f"pyzmq {meta['zmq']} (libzmq {meta.get('libzmq')})"]
    for name in anchors:
        anchor = ANCHORS[name]
        client = "redis-py" if anchor.client == "redis" else anchor.client
        parts.append(f"{client} {meta.get(anchor.client)}")
        parts.append(meta.get(f"{name}_server", f"no {anchor.server}"))
    parts.append(f"{meta['cores']} cores")
    print("\n" + " · ".join(parts))
    print(f"commit {meta.get('git', {}).get('commit', '?')[:10]}, started {meta['started']}; "
          f"{len(result['runs'])} runs in {meta['elapsed_s']:.0f} s; CPU used by other "
          f"processes per run: {', '.join(f'{b:.2f}' for b in background)} cores\n")
    print(figures_table(values, markdown))
    print()
    print(comparison_table(result["comparisons"], markdown))
    if meta["broker_log_problems"]:
        print(f"\nWARNING: the broker logged {len(meta['broker_log_problems'])} error lines, "
              "e.g.:\n  " + "\n  ".join(meta["broker_log_problems"][:5]))
    for name in anchors:
        if meta.get(f"{name}_skipped"):
            print(f"\n{name} anchors SKIPPED: {ANCHORS[name].server} or the Python package "
                  f"{ANCHORS[name].client} is not installed (run benchmarks/install-anchors.sh "
                  "and pip install -e '.[bench]')")


# ---------------------------------------------------------------------------------- reporting


def versions(extra: dict | None = None) -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "kernel": platform.release(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo
                               if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    for module in ("zmq", "numpy", "redis", "pymemcache", "workbench", "cloudpickle"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = None
    try:
        import zmq
        info["libzmq"] = zmq.zmq_version()
        from redis.utils import HIREDIS_AVAILABLE
        info["hiredis"] = HIREDIS_AVAILABLE
    except Exception:
        pass
    if redis_server_path():
        out = subprocess.run([redis_server_path(), "--version"], capture_output=True, text=True)
        info["redis_server"] = out.stdout.strip()
    if memcached_path():
        out = subprocess.run([memcached_path(), "-V"], capture_output=True, text=True,
                             check=False)
        info["memcached_server"] = out.stdout.strip()
    info["git"] = git_state()
    info.update(extra or {})
    return info


def git_state() -> dict:
    """The commit measured and the files changed since: figures belong to a code state."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"),
                "changed": [line[3:] for line in git("status", "--porcelain").splitlines()
                            if not line[3:].startswith("benchmarks/")]}
    except (OSError, subprocess.SubprocessError):
        return {}


def log_problems(proc: subprocess.Popen) -> list[str]:
    """Lines of a server's log that report errors: a benchmark that "passed" while its server
    logged tracebacks measured something else than intended."""
    try:
        text = Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return []
    return [line for line in text.splitlines()
            if any(word in line for word in ("ERROR", "Traceback", "internal error", "CRITICAL"))]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                 markdown: bool = False) -> str:
    """Aligned plain-text columns, or a Markdown table to paste into docs."""
    if markdown:
        return "\n".join("| " + " | ".join(str(cell) for cell in row) + " |"
                         for row in [headers, ["---"] * len(headers), *rows])
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in [headers, ["-" * w for w in widths], *rows]]
    return "\n".join(lines)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)  # never leave a half-written result behind


# ---------------------------------------------------------------------------------- command line


def bench_main(argv: list[str] | None, *, description: str, groups: dict[str, list[Case]],
               settings: Any, quick: Any, output: Path,
               run_child: Callable[[str, dict], None], benchmark: Callable[[Any], dict],
               report: Callable[[dict, bool], None],
               plot: Callable[[dict, Path], None] | None = None) -> int:
    """The command line every benchmark script shares::

        SCRIPT [--runs N] [--quick] [--output JSON] [--only GROUP]... [--markdown]
        SCRIPT --show JSON [--markdown]
        SCRIPT --child ROLE PARAMS      (a client process the script started itself)

    ``settings``/``quick`` are the default and ``--quick`` settings (dataclasses with ``runs``
    and ``only``); ``benchmark(settings)`` measures, ``report(result, markdown)`` prints. A
    script that can draw its figures passes ``plot(result, path)``, and gets ``--plot PNG``
    (after a run, or with ``--show``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        run_child(argv[1], json.loads(argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=None,
                        help=f"runs to take the median of (default {settings.runs}; "
                             f"{quick.runs} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke test: fewer runs, operations and seconds")
    parser.add_argument("--output", type=Path, default=output,
                        help="where to write the raw JSON (default %(default)s)")
    parser.add_argument("--show", type=Path, default=None, metavar="JSON",
                        help="print the tables of a saved result instead of measuring")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--only", action="append", choices=list(groups), default=None,
                        metavar="GROUP", help="measure only this group of cases (repeatable): "
                        + ", ".join(groups))
    if plot is not None:
        parser.add_argument("--plot", type=Path, default=None, metavar="PNG",
                            help="draw the figures into this image")
    args = parser.parse_args(argv)
    if args.show is not None:
        result = json.loads(args.show.read_text())
        report(result, args.markdown)
        if plot is not None and args.plot is not None:
            plot(result, args.plot)
        return 0
    chosen = quick if args.quick else settings
    if args.runs is not None:
        chosen = replace(chosen, runs=max(1, args.runs))
    if args.only:
        chosen = replace(chosen, only=tuple(args.only))
    install_signal_handlers()
    try:
        result = benchmark(chosen)
    except KeyboardInterrupt:
        print("\ninterrupted; every child process was stopped", file=sys.stderr)
        return 130
    report(result, args.markdown)
    write_json(args.output, result)
    print(f"\nraw results: {args.output}")
    if plot is not None and args.plot is not None:
        plot(result, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    echo = commands.add_parser("echo-server", help="run the bare pyzmq echo anchor")
    echo.add_argument("--port", type=int, required=True)
    echo.add_argument("--nocopy", action="store_true", help="recv/send with copy=False")
    echo.add_argument("--parent-pid", type=int, default=None, help="exit when it is gone")
    relay = commands.add_parser("relay-server", help="run the bare pyzmq relay anchor")
    relay.add_argument("--port", type=int, required=True)
    relay.add_argument("--parent-pid", type=int, default=None, help="exit when it is gone")
    args = parser.parse_args(argv)
    try:
        if args.command == "relay-server":
            relay_server(args.port, args.parent_pid)
        else:
            echo_server(args.port, args.nocopy, args.parent_pid)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM -> clean exit
    _main()
