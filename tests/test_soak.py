"""Soak: waves of clients connect to one broker, work, and leave every way a client can (closing
politely, killed in the middle of requests, exiting without a goodbye, frozen until the broker
gives up on them, sockets reset under a session); afterwards the broker holds what it held
before: memory within a stated bound, its descriptors, sessions, workspaces and shared-memory
files; and a fresh client works.

The client processes are ``soak_client.py``; raw sessions that vanish are made here.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from workbench import (
    DICT, KeyValueStore, NetWorkSpace, NwsServer, codec,
)
from workbench.protocol import HEADER, Op, Status, request_head
from workbench.zmtp import GREETING, Inbound, command, encode, properties

from .support import broker_status, has_session, wait_for

CLIENT = str(Path(__file__).with_name("soak_client.py"))
SHARED = "soak"  # soak_client.SHARED
THREADS = 4  # client threads per process, each with four sessions
WORK_SECONDS = 2.0  # how long a polite process works; the others leave within it
#: Client processes per wave, by how they leave.
PLAN = ("polite",) * 3 + ("killed",) * 2 + ("vanish",) * 2 + ("frozen",)
RAW_SESSIONS = 6  # sessions per wave whose sockets are reset under them, from this process
WARM_UP_WAVES = 2
SOAK_SECONDS = 20.0  # measured waves start until then: with the warm-up, ~30 s in all
#: Sessions end after 0.5 s x 3 of silence: the support brokers' 0.2 s x 3 is shorter than
#: the stalls of a 2-core machine starting eight client processes at once.
HEARTBEAT = ("--heartbeat-interval", "0.5", "--heartbeat-liveness", "3")
#: glibc serves larger allocations from the heap once a large one was freed (its threshold
#: rises) and keeps the heap's high-water mark: one burst of values in flight leaves RSS
#: ~10 MiB up for good, at a random wave. Pinned, blocks over 16 KiB are mapped and unmapped,
#: and RSS follows what the broker holds.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "16384"}
#: How much the broker's RSS may grow from after the warm-up to after the last wave. Measured
#: on 2 cores, 4-16 waves of ~140 sessions each: +0.1 to +0.5 MiB (the cache of checked names,
#: bounded at 4096, and the interpreter's free lists settling). Above it: a leak of ~1.5 KiB per
#: session, or of one large value in flight per wave.
RSS_BOUND = 2 << 20


class Quiet(NamedTuple):
    """What the broker holds when no client is connected."""

    rss: int
    fds: int
    workspaces: list[str]


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def shm_files(pid: int) -> int:
    return sum(name.startswith(f"workbench-{pid}-") for name in os.listdir("/dev/shm"))


def spawn(broker, mode: str, seed: int) -> subprocess.Popen:
    how = {"polite": "polite", "vanish": "vanish"}.get(mode, "stay")
    # Those that die send their large values through the socket, cut off by the death: one
    # killed between writing a shared-memory file and sending it leaves the file behind
    # (test_a_client_killed_after_spilling_leaves_no_file).
    env = broker.env() if mode == "polite" else broker.env(WORKBENCH_SHM="0")
    return subprocess.Popen([sys.executable, CLIENT, str(THREADS), str(WORK_SECONDS), how,
                             str(seed)], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_working(process: subprocess.Popen, timeout: float = 30.0) -> None:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    assert line.strip() == "working", f"client never got to work: {process.stderr.read()}"


def vanishing_session(broker, number: int) -> None:
    """A session that says hello, opens a workspace of its own and stores in it, then its
    socket is reset: no goodbye, no heartbeat after."""
    ws = f"soak-raw-{number}".encode()
    hello = json.dumps({"pid": number, "host": "soak-raw"}).encode()
    requests = [[request_head(Op.HELLO, 1, [hello])],
                [request_head(Op.OPEN_WS, 2, [ws, b"0", b"1"])],
                [request_head(Op.STORE, 3, [ws, b"v", *codec.encode(b"x" * 100)])]]
    ready = command(b"READY", properties(Socket_Type=b"DEALER"))
    with socket.create_connection((broker.host, broker.port), timeout=10) as sock:
        sock.sendall(GREETING + ready + b"".join(bytes(b) for r in requests for b in encode(r)))
        inbound = Inbound(1 << 30)
        while len(inbound.messages) < len(requests):
            data = sock.recv(65536)
            assert data, "the broker closed a raw session's connection"
            inbound.feed(data)
        for frames, _ in inbound.messages:
            assert HEADER.unpack_from(frames[0])[1] == Status.OK, frames[0]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # reset


def polite_session(broker, number: int) -> None:
    with NetWorkSpace(f"soak-here-{number}", broker.host, broker.port) as ws:
        for i in range(20):
            ws.store("x", {"i": i})
            assert ws.fetch("x", timeout=10) == {"i": i}


def no_client_left(broker) -> bool:
    """Only the asking session is left (and it leaves with its answer)."""
    return len(broker_status(broker)["clients"]) == 1


def wave(broker, rng: random.Random) -> None:
    processes = [(mode, spawn(broker, mode, rng.randrange(1 << 30))) for mode in PLAN]
    here = [threading.Thread(target=target, args=(broker, rng.randrange(1 << 30)))
            for target in (vanishing_session,) * RAW_SESSIONS + (polite_session,) * 2]
    try:
        for thread in here:
            thread.start()
        for _, process in processes:
            wait_working(process)
        # The killed and the frozen stop at random moments of their work, requests in flight.
        chaos = [(rng.uniform(0, WORK_SECONDS), mode, process) for mode, process in processes
                 if mode in ("killed", "frozen")]
        started = time.monotonic()
        for at, mode, process in sorted(chaos, key=lambda c: c[0]):
            time.sleep(max(0.0, started + at - time.monotonic()))
            process.send_signal(signal.SIGKILL if mode == "killed" else signal.SIGSTOP)
        frozen = [process for mode, process in processes if mode == "frozen"]
        wait_for(lambda: not any(has_session(broker, p.pid) for p in frozen), timeout=20,
                 interval=0.1, message="the broker kept the sessions of a frozen client")
        for process in frozen:  # their sessions ended while the connections stayed open
            process.send_signal(signal.SIGKILL)
        for mode, process in processes:
            out, err = process.communicate(timeout=30)
            if mode == "polite":
                assert process.returncode == 0 and out.strip() == "done", err
            elif mode == "vanish":
                assert process.returncode == 0, err
        for thread in here:
            thread.join(30)
            assert not thread.is_alive()
    finally:
        for _, process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def quiet(broker, base_fds: int) -> Quiet:
    """Wait until no client is left, empty the persistent workspace the clients shared and
    the key-value store (what they hold is the clients' to keep, not the broker's to leak),
    wait until the broker's descriptors and files are back, then read what it holds."""
    pid = broker.process.pid
    wait_for(lambda: no_client_left(broker), timeout=20, interval=0.1,
             message="sessions of clients that left are still there")
    with NwsServer(broker.host, broker.port) as server, \
            KeyValueStore(broker.host, broker.port) as kv:
        shared = server.useWs(SHARED)
        for name in shared.listVars(format=DICT):
            shared.deleteVar(name)
        kv.flush()
        workspaces = sorted(server.listWss(format=DICT))
    wait_for(lambda: no_client_left(broker), timeout=10, interval=0.1)
    wait_for(lambda: len(os.listdir(f"/proc/{pid}/fd")) == base_fds, timeout=10,
             message="the broker kept descriptors of connections that are gone")
    wait_for(lambda: shm_files(pid) == 0, timeout=10,
             message="shared-memory files of values that are gone are still there")
    return Quiet(rss(pid), len(os.listdir(f"/proc/{pid}/fd")), workspaces)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_waves_of_clients_leave_the_broker_as_they_found_it(make_broker, monkeypatch):
    monkeypatch.setenv("WORKBENCH_SHM_GRACE", "0.2")  # files of gone values go soon after
    for name, value in ALLOCATOR.items():
        monkeypatch.setenv(name, value)
    broker = make_broker(*HEARTBEAT)
    pid = broker.process.pid
    base_fds = len(os.listdir(f"/proc/{pid}/fd"))
    with NetWorkSpace(SHARED, broker.host, broker.port, persistent=True):
        pass
    rng = random.Random(20261213)
    for _ in range(WARM_UP_WAVES):
        wave(broker, rng)
    warm = quiet(broker, base_fds)
    assert not any(name.startswith("soak-") for name in warm.workspaces), warm.workspaces
    after: list[Quiet] = []
    deadline = time.monotonic() + SOAK_SECONDS
    while time.monotonic() < deadline:
        wave(broker, rng)
        after.append(quiet(broker, base_fds))
    growth = after[-1].rss - warm.rss
    figures = (f"RSS after the warm-up {warm.rss / 2**20:.2f} MiB, after {len(after)} more "
               f"waves {after[-1].rss / 2**20:.2f} MiB ({growth / 2**20:+.2f}); after each: "
               + " ".join(f"{q.rss / 2**20:.2f}" for q in after))
    print(figures)
    assert growth <= RSS_BOUND, figures
    assert after[-1].workspaces == warm.workspaces  # the non-persistent ones went
    assert after[-1].fds == base_fds
    assert broker.process.poll() is None and "Traceback" not in broker.log()
    assert broker_status(broker)["counters"]["internal_errors"] == 0
    with NetWorkSpace("after-the-soak", broker.host, broker.port) as ws:
        ws.store("v", b"fresh")
        assert ws.fetch("v", timeout=5) == b"fresh"


def test_a_client_killed_after_spilling_leaves_no_file(make_broker):
    """A client killed between writing a large value's shared-memory file and sending its
    store: when its session ends, the broker removes the file nobody owns."""
    broker = make_broker()
    client = subprocess.Popen([sys.executable, "-c", SPILL_THEN_HANG], env=broker.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([client.stdout], [], [], 30)
        assert ready and client.stdout.readline().strip() == "spilled", client.stderr.read()
        assert shm_files(broker.process.pid) == 1
        client.kill()
        client.wait()
        wait_for(lambda: not has_session(broker, client.pid), timeout=10)
        wait_for(lambda: shm_files(broker.process.pid) == 0, timeout=5,
                 message="the killed client's file is still there")
    finally:
        client.kill()
        client.communicate()


SPILL_THEN_HANG = """
import threading
from workbench import NetWorkSpace, shm
spill = shm.spill

def spill_then_hang(*args):
    made = spill(*args)
    print("spilled", flush=True)
    threading.Event().wait(60)  # killed here: the store never goes out
    return made

shm.spill = spill_then_hang
NetWorkSpace("spilled").store("v", b"x" * (2 << 20))
"""


def test_a_broker_that_stalled_keeps_the_sessions_that_kept_beating(make_broker):
    # Sessions end after 1.5 s of silence: wide enough that a client's heartbeat thread
    # starved by a loaded machine before the stall does not end its session for real.
    broker = make_broker(*HEARTBEAT)
    with NetWorkSpace("stalled", broker.host, broker.port) as ws:
        ws.store("x", 1)
        broker.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(3.0)  # the stall itself: twice the liveness timeout
        finally:
            broker.process.send_signal(signal.SIGCONT)
        assert ws.fetch("x", timeout=5) == 1
