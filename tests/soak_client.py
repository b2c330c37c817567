"""A client process of the soak test (``test_soak``): threads that each hold sessions of their
own on the broker ``WORKBENCH_BROKER`` names and work there (workspaces, hand-offs, key-value,
pub/sub, watches, large values, blocked fetches) until the process leaves the way it is told.

    python soak_client.py THREADS SECONDS MODE SEED

It prints ``working`` once every thread has done a round of work. MODE says how it leaves:
``polite`` closes every session after SECONDS and prints ``done`` (exit 1 if any value came
back wrong); ``vanish`` exits after a random part of SECONDS in the middle of its requests,
without a goodbye; ``stay`` works until it is killed (and leaves by itself after a minute, so
that a test that failed leaves nothing behind).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import traceback

from workbench import KeyValueStore, NetWorkSpace, NwsTimeoutException
from workbench.client.embedded import connect
from workbench.client.pubsub import MessageBus

SHARED = "soak"  # a persistent workspace the test made: hand-offs between everyone
KEYS = 40  # key-value keys, shared by all clients: the store's size stays bounded
LARGE = (1 << 20) + 4096  # over the shared-memory threshold: the value goes through a file
STAY_AT_MOST = 60.0


class Failed(Exception):
    """A value came back different from what was stored."""


def check(got, expected, what: str) -> None:
    if got != expected:
        raise Failed(f"{what}: got {got!r:.60} instead of {expected!r:.60}")


def value(rng: random.Random):
    kind = rng.randrange(20)
    if kind == 0:
        return rng.randbytes(LARGE)
    if kind < 4:
        return rng.randbytes(rng.randrange(300, 70_000))
    if kind < 8:
        return {"n": rng.randrange(1 << 30), "text": "x" * rng.randrange(100)}
    return rng.randbytes(rng.randrange(100))


def one_round(rng: random.Random, own: NetWorkSpace, shared: NetWorkSpace,
              kv: KeyValueStore, bus: MessageBus) -> None:
    v = value(rng)
    own.store("x", v)
    check(own.fetch("x", timeout=20), v, "own fetch")
    shared.store("handoff", v)
    shared.fetchTry("handoff")  # someone's value: hand-offs between processes
    key = f"k{rng.randrange(KEYS)}"
    kv.store(key, v)
    kv.get(key)  # another client may have written it since
    kv.incr("counter")
    bus.publish("soak:tick", rng.randrange(1000))
    if rng.random() < 0.2:
        try:
            own.fetch("nothing", timeout=0.02)  # a blocked fetch that is cancelled
        except NwsTimeoutException:
            pass
    if rng.random() < 0.1:
        watch = own.watch()
        own.store("watched", 1)
        watch.next_batch(timeout=5)
        watch.close()
    own.listVars()


def work(number: int, seed: int, started: threading.Barrier, stop: threading.Event,
         failures: list) -> None:
    rng = random.Random(seed * 100 + number)
    try:
        with NetWorkSpace(f"soak-{os.getpid()}-{number}") as own, \
                NetWorkSpace(SHARED, useUse=True) as shared, KeyValueStore() as kv:
            connection = connect()
            try:
                bus = MessageBus(connection, lambda identifier, message: None)
                bus.subscribe("soak:*")
                one_round(rng, own, shared, kv, bus)
                started.wait(30)
                while not stop.is_set():
                    one_round(rng, own, shared, kv, bus)
            finally:
                connection.close()
    except BaseException:  # noqa: BLE001 - reported by the main thread
        failures.append(traceback.format_exc())
        started.abort()


def main(threads: int, seconds: float, mode: str, seed: int) -> int:
    rng = random.Random(seed)
    started = threading.Barrier(threads + 1)
    stop = threading.Event()
    failures: list[str] = []
    workers = [threading.Thread(target=work, args=(n, seed, started, stop, failures),
                                daemon=True) for n in range(threads)]
    # One more session blocked in a fetch all along: a death must take its waiter away too.
    waiter = NetWorkSpace(f"soak-{os.getpid()}-waiter")
    woken: list = []
    blocked = threading.Thread(target=lambda: woken.append(waiter.fetch("wake", timeout=90)),
                               daemon=True)
    blocked.start()
    for worker in workers:
        worker.start()
    try:
        started.wait(30)
    except threading.BrokenBarrierError:  # a worker failed before it got to work
        print("\n".join(failures), file=sys.stderr)
        return 1
    print("working", flush=True)
    if mode == "vanish":
        stop.wait(rng.uniform(0, seconds))
        os._exit(0)  # no goodbye: the sockets close with the process, requests in flight
    stop.wait(seconds if mode == "polite" else STAY_AT_MOST)
    stop.set()
    for worker in workers:
        worker.join(30)
    waiter.store("wake", "go")
    blocked.join(30)
    waiter.close()
    if woken != ["go"]:
        failures.append(f"the blocked fetch ended with {woken} instead of the value stored")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    count, duration, how, number = sys.argv[1:]
    sys.exit(main(int(count), float(duration), how, int(number)))
