"""Publish/subscribe benchmark: the workbench's MessageBus against Redis PUBLISH/SUBSCRIBE.

Systems measured (100-byte ``bytes`` payloads; everything on loopback TCP; one publisher process,
this one, and one subscriber process it starts per case):

* ``wb``: ``workbench.client.pubsub.MessageBus`` on a connection of
  ``workbench.client.embedded.connect``: ``publish(identifier, value)`` without ``wait`` (fire
  and forget) and ``subscribe(identifier)``, whose ``on_message`` handler runs in the
  subscriber's delivery thread;
* ``mq``: the same through ``workbench.mq``, berryMQ's API on MessageBus: ``twitter(identifier,
  payload)`` and an ``@following_function(identifier)`` follower (called in the delivery
  thread with a ``Message``), skipped with a note when ``workbench.mq`` does not import;
* ``redis``: redis-py PUBLISH (synchronous: waits for Redis's reply) against a private
  ``redis-server``, the subscriber looping over ``pubsub.listen()``; ``redis.pipelined`` is
  the same with PUBLISHes pipelined in batches of 100 (``transaction=False``). Skipped with a
  note when ``redis-server`` is missing (``benchmarks/install-anchors.sh`` installs it).

What it measures (the method of baselines.md, "redis_pubsub.py"):

1. latency: the publisher sleeps 1 ms, then publishes a message whose first 8 bytes are its
   CLOCK_MONOTONIC send time; the subscriber takes its receive time first thing in its handler
   (loop) and keeps receive minus send time. 100 warm-up + 1,000 measured; median and p99;
2. delivery rate: 100 warm-up messages, then 20,000 published back to back; messages received
   by the subscriber / time from the first publish to the last receipt. Messages carry a
   sequence number: the subscriber counts what it received, and the workbench's broker also
   says how many it dropped (``MessageBus.dropped``); a run that lost any is flagged in the
   output and listed under the tables, never left out;
3. publish calls/s: the same 20,000 publishes / time from the first call to the last return.

How: as the other benchmarks (see ``_harness``): every case runs once per run, each group's
cases in an order that rotates from run to run; figures are medians over the runs (default 9),
a ratio is the median of the per-run ratios; each run records the CPU other processes used.

    python benchmarks/bench_pubsub.py [--runs N] [--quick] [--only GROUP] [--output JSON]

prints the figures, ratios and targets, and writes the raw results to
``benchmarks/results/pubsub-latest.json``. ``--quick`` (one short run) is the smoke test.
"""

from __future__ import annotations

import json
import struct
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple

import _harness as h

SIZE = 100  # bytes per payload
RESULTS = h.HERE / "results" / "pubsub-latest.json"
#: Payload head: CLOCK_MONOTONIC send time in ns, sequence number (negative: warm-up).
STAMP = struct.Struct("<qq")
PADDING = b"p" * (SIZE - STAMP.size)


def _mq_missing() -> str | None:
    """Why the ``mq`` cases cannot run here, or None."""
    try:
        from workbench import mq
    except Exception as exc:  # not there yet, or broken
        return f"workbench.mq does not import ({type(exc).__name__}: {exc})"
    missing = [name for name in ("twitter", "following_function", "init_connection",
                                 "close_connection", "dropped") if not hasattr(mq, name)]
    return f"workbench.mq has no {', '.join(missing)}" if missing else None


MQ_MISSING = _mq_missing()


@dataclass(frozen=True)
class Settings(h.Settings):
    latency_msgs: int = 1_000
    latency_warmup: int = 100
    gap_s: float = 0.001  # idle time before each latency message: the subscriber must be asleep
    rate_msgs: int = 20_000
    rate_warmup: int = 100
    batch: int = 100  # PUBLISHes per pipeline of redis.pipelined
    # 9 runs, not 5: a run takes about 8 s, and the latency medians of single runs vary more
    # than the other benchmarks' figures (they flip with where the scheduler puts the three
    # processes).
    runs: int = 9
    quiet_s: float = 3.0  # a subscriber that receives nothing this long reports what it has


QUICK = Settings(runs=1, latency_msgs=200, latency_warmup=50, rate_msgs=5_000, rate_warmup=50)


@dataclass
class Context:
    """What the cases share: settings, server ports and pids (every case connects anew)."""

    settings: Settings
    children: h.Children
    ports: dict[str, int]  # "wb", "redis" (absent if skipped)
    pids: dict[str, int]
    broker_proc: Any = None

    def close(self) -> None:
        pass


def payload(seq: int, sent_ns: int = 0) -> bytes:
    return STAMP.pack(sent_ns, seq) + PADDING


# ============================================================================ the clients
# A publisher is driven through its own methods (bound to the topic by a partial), so that no
# adapter code is timed.


class Publisher(NamedTuple):
    publish: Callable[[bytes], Any]  # one message to the case's identifier/channel
    close: Callable[[], Any]
    publish_many: Callable[[list], Any] | None = None  # pipelined: a batch in one go


def wb_publisher(port: int, topic: str) -> Publisher:
    from workbench.client.embedded import connect
    from workbench.client.pubsub import MessageBus

    connection = connect(h.LOOPBACK, port)
    bus = MessageBus(connection)
    return Publisher(partial(bus.publish, topic), connection.close)


def mq_publisher(port: int, topic: str) -> Publisher:
    from workbench import mq

    mq.init_connection(f"{h.LOOPBACK}:{port}")
    return Publisher(partial(mq.twitter, topic), mq.close_connection)


def redis_publisher(port: int, topic: str) -> Publisher:
    import redis

    r = redis.Redis(host=h.LOOPBACK, port=port)
    pipe = r.pipeline(transaction=False)

    def publish_many(batch: list) -> None:
        for message in batch:
            pipe.publish(topic, message)
        pipe.execute()

    return Publisher(partial(r.publish, topic), r.close, publish_many)


# ============================================================================ the subscriber
# The script runs itself as `bench_pubsub.py --child subscriber JSON`. It says "ready" once
# subscribed, "warm" once every warm-up message arrived, and then a JSON report once the last
# message arrived (or nothing came for quiet_s seconds).

child_argv = partial(h.child_argv, __file__)


class Receiver:
    """What a subscriber keeps of the messages it receives; called with the receive time taken
    before anything else, then the payload."""

    def __init__(self, warmup: int, total: int, latencies: bool) -> None:
        self.warmup, self.total = warmup, total
        self.warm = threading.Event()
        self.done = threading.Event()
        self.warm_seen = self.received = self.out_of_order = 0
        self.next_seq = 0
        self.last_ns = 0
        self.latencies: list[int] | None = [] if latencies else None

    def __call__(self, now: int, data: bytes) -> None:
        sent, seq = STAMP.unpack_from(data)
        if seq < 0:
            self.warm_seen += 1
            if self.warm_seen == self.warmup:
                self.warm.set()
            return
        self.received += 1
        self.last_ns = now
        if self.latencies is not None:
            self.latencies.append(now - sent)
        if seq != self.next_seq:
            self.out_of_order += seq < self.next_seq  # a gap is a loss, counted by the parent
        self.next_seq = seq + 1
        if seq == self.total - 1:
            self.done.set()

    def report(self, **extra: Any) -> dict:
        return {"received": self.received, "last_ns": self.last_ns,
                "out_of_order": self.out_of_order, "latencies_ns": self.latencies, **extra}


def run_child(role: str, params: dict) -> None:
    {"subscriber": subscriber}[role](**params)


def subscriber(system: str, port: int, topic: str, warmup: int, total: int, latencies: bool,
               quiet_s: float) -> None:
    receiver = Receiver(warmup, total, latencies)
    {"wb": wb_subscriber, "mq": mq_subscriber, "redis": redis_subscriber}[system](
        port, topic, receiver, quiet_s)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _wait_in_main_thread(receiver: Receiver, quiet_s: float) -> None:
    """For subscribers whose handler runs in another thread: say "warm" when it is, and
    return once the last message came, or once nothing came for ``quiet_s``."""
    if not receiver.warm.wait(h.START_TIMEOUT):
        raise SystemExit(f"only {receiver.warm_seen} of {receiver.warmup} warm-up messages came")
    _say("warm")
    seen, since = -1, time.monotonic()
    while not receiver.done.wait(0.1):
        if receiver.received != seen:
            seen, since = receiver.received, time.monotonic()
        elif time.monotonic() - since > quiet_s:
            return


def wb_subscriber(port: int, topic: str, receiver: Receiver, quiet_s: float) -> None:
    from workbench.client.embedded import connect
    from workbench.client.pubsub import MessageBus

    mono_ns = h.mono_ns
    connection = connect(h.LOOPBACK, port)
    bus = MessageBus(connection, lambda identifier, value: receiver(mono_ns(), value))
    try:
        bus.subscribe(topic)  # answered once the broker routes the topic here
        _say("ready")
        _wait_in_main_thread(receiver, quiet_s)
        h.child_report(receiver.report(dropped=bus.dropped))
    finally:
        connection.close()


def mq_subscriber(port: int, topic: str, receiver: Receiver, quiet_s: float) -> None:
    from workbench import mq

    mono_ns = h.mono_ns
    mq.init_connection(f"{h.LOOPBACK}:{port}")

    def follower(message: Any) -> None:  # referenced here: mq holds followers weakly
        receiver(mono_ns(), message.args[0])

    try:
        mq.following_function(topic)(follower)  # subscribed at the broker when it returns
        _say("ready")
        _wait_in_main_thread(receiver, quiet_s)
        h.child_report(receiver.report(dropped=mq.dropped()))
    finally:
        mq.close_connection()


def redis_subscriber(port: int, topic: str, receiver: Receiver, quiet_s: float) -> None:
    import redis

    mono_ns = h.mono_ns
    # The socket timeout ends listen() once nothing came for quiet_s (a lost last message).
    r = redis.Redis(host=h.LOOPBACK, port=port, socket_timeout=quiet_s)
    pubsub = r.pubsub()
    try:
        pubsub.subscribe(topic)
        deadline = time.monotonic() + h.START_TIMEOUT
        while (pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
            if time.monotonic() > deadline:
                raise SystemExit("redis did not confirm the subscription")
        _say("ready")
        said_warm = False
        try:
            for message in pubsub.listen():
                now = mono_ns()
                if message["type"] != "message":
                    continue
                receiver(now, message["data"])
                if receiver.done.is_set():
                    break
                if not said_warm and receiver.warm.is_set():
                    _say("warm")
                    said_warm = True
        except redis.exceptions.TimeoutError:
            if not said_warm:
                raise
        h.child_report(receiver.report(dropped=0))
    finally:
        pubsub.close()
        r.close()


# ============================================================================ cases


class System(NamedTuple):
    publisher: Callable[[int, str], Publisher]
    server: str  # a key of Context.ports


SYSTEMS = {"wb": System(wb_publisher, "wb"), "mq": System(mq_publisher, "wb"),
           "redis": System(redis_publisher, "redis")}


def with_subscriber(ctx: Context, run: int, system: str, case: str, warmup: int, total: int,
                    latencies: bool, publish: Callable[[Publisher], dict]) -> dict:
    """Start the subscriber process of ``system``, connect the publisher, warm up, run
    ``publish(publisher)`` -> what it returns, with the subscriber's report under
    "subscriber". Warm-up messages are 1 ms apart too when ``latencies`` are measured."""
    s = ctx.settings
    topic = f"bench{run}:{case}"
    port = ctx.ports[SYSTEMS[system].server]
    name = f"{system}-subscriber"
    proc = ctx.children.spawn(name, child_argv(
        "subscriber", system=system, port=port, topic=topic, warmup=warmup, total=total,
        latencies=latencies, quiet_s=s.quiet_s), pipes=True)
    reader = h.LineReader(proc, name)
    publisher = SYSTEMS[system].publisher(port, topic)
    try:
        if (line := reader.readline(h.START_TIMEOUT)) != "ready":
            raise RuntimeError(f"{name}: expected 'ready', got {line!r}")
        for seq in range(-warmup, 0):
            if latencies:
                time.sleep(s.gap_s)
            publisher.publish(payload(seq, h.mono_ns()))
        if (line := reader.readline(h.START_TIMEOUT)) != "warm":
            raise RuntimeError(f"{name}: expected 'warm', got {line!r}")
        figures = publish(publisher)
        report = json.loads(reader.readline(h.START_TIMEOUT + s.quiet_s))
        proc.wait(timeout=h.STOP_TIMEOUT)
    finally:
        publisher.close()
        ctx.children.stop(proc)
    figures["subscriber"] = report
    return figures


def _deliveries(system: str, case: str, sent: int, report: dict) -> dict:
    """Sent, received and lost messages, loudly when any was lost. Kept out of the figures
    (a count is not a median to take), listed by ``report`` for every run."""
    delivery = {"sent": sent, "received": report["received"],
                "lost": sent - report["received"], "dropped": report.get("dropped", 0),
                "out_of_order": report["out_of_order"]}
    if delivery["lost"] or delivery["dropped"] or delivery["out_of_order"]:
        print(f"  LOSSY: {system}.{case} received {delivery['received']:,} of {sent:,} "
              f"(broker dropped {delivery['dropped']:,}, out of order "
              f"{delivery['out_of_order']:,})", flush=True)
    return delivery


def latency(ctx: Context, run: int, system: str) -> dict:
    s = ctx.settings

    def publish(publisher: Publisher) -> dict:
        send, mono_ns, sleep, gap = publisher.publish, h.mono_ns, time.sleep, s.gap_s
        for seq in range(s.latency_msgs):
            sleep(gap)
            send(STAMP.pack(mono_ns(), seq) + PADDING)
        return {}

    result = with_subscriber(ctx, run, system, "latency", s.latency_warmup, s.latency_msgs,
                             True, publish)
    report = result.pop("subscriber")
    us = [ns / 1000 for ns in report["latencies_ns"]]
    figures = {"median_us": h.median(us), "p99_us": h.percentile(us, 99), "min_us": min(us),
               "max_us": max(us)}
    figures["delivery"] = _deliveries(system, "latency", s.latency_msgs, report)
    return figures


def rate(ctx: Context, run: int, system: str, pipelined: bool = False) -> dict:
    """20,000 messages back to back (built beforehand: only the publish calls are timed) ->
    delivery rate and publish calls/s."""
    s = ctx.settings
    messages = [payload(seq) for seq in range(s.rate_msgs)]

    def publish(publisher: Publisher) -> dict:
        start = h.mono_ns()
        if pipelined:
            publish_many, batch = publisher.publish_many, s.batch
            for i in range(0, len(messages), batch):
                publish_many(messages[i:i + batch])
        else:
            send = publisher.publish
            for message in messages:
                send(message)
        return {"start_ns": start, "returned_ns": h.mono_ns()}

    case = "pipelined" if pipelined else "rate"
    result = with_subscriber(ctx, run, system, case, s.rate_warmup, s.rate_msgs, False, publish)
    report, start = result["subscriber"], result["start_ns"]
    return {"delivered_per_s": report["received"] / ((report["last_ns"] - start) / 1e9),
            "publish_per_s": s.rate_msgs / ((result["returned_ns"] - start) / 1e9),
            "delivery": _deliveries(system, case, s.rate_msgs, report)}


#: The systems measured, workbench first.
NAMES = [name for name in SYSTEMS if name != "mq" or MQ_MISSING is None]


def _cases(case: str, measure: Callable) -> list[h.Case]:
    return [h.Case(f"{name}.{case}", partial(measure, system=name), SYSTEMS[name].server)
            for name in NAMES]


#: Cases that compare with one another form a group; within a group the order rotates per run.
#: All run unpinned, as the hand-off of the workspace benchmark and baselines.md.
GROUPS: dict[str, list[h.Case]] = {
    "latency": _cases("latency", latency),
    "rate": [*_cases("rate", rate),
             h.Case("redis.pipelined", partial(rate, system="redis", pipelined=True), "redis")],
}


# ============================================================================ runs


def make_context(children: h.Children, settings: Settings) -> Context:
    if MQ_MISSING:
        print(f"{MQ_MISSING}: the mq cases are SKIPPED (MessageBus only)", flush=True)
    servers = {"wb": h.start_broker(children), **h.start_anchors(children, ["redis"])}
    return Context(settings, children, {name: port for name, (_, port) in servers.items()},
                   {name: proc.pid for name, (proc, _) in servers.items()}, servers["wb"][0])


def benchmark(settings: Settings) -> dict:
    return h.run_benchmark(settings, GROUPS, make_context, lambda ctx: {
        "redis_skipped": "redis" not in ctx.ports, "mq_skipped": MQ_MISSING or False})


# ============================================================================ summary


def _comparisons(system: str, client: str) -> list[tuple]:
    name = f"{system}/redis"
    return [
        (f"{client} delivery rate vs redis-py PUBLISH", f"{system}.rate.delivered_per_s",
         "redis.rate.delivered_per_s", "rate", 1.0, name),
        (f"{client} delivery rate vs redis-py pipelined PUBLISH",
         f"{system}.rate.delivered_per_s", "redis.pipelined.delivered_per_s", "rate", None, name),
        (f"{client} latency median vs redis-py", f"{system}.latency.median_us",
         "redis.latency.median_us", "latency", 1.0, name),
        (f"{client} latency p99 vs redis-py", f"{system}.latency.p99_us",
         "redis.latency.p99_us", "latency", None, name),
        (f"{client} publish calls/s vs redis-py PUBLISH", f"{system}.rate.publish_per_s",
         "redis.rate.publish_per_s", "rate", None, name),
        (f"{client} publish calls/s vs redis-py pipelined", f"{system}.rate.publish_per_s",
         "redis.pipelined.publish_per_s", "rate", None, name),
    ]


#: (label, workbench figure, anchor figure, how to compare, target): see _harness.Comparison.
COMPARISONS = [
    *_comparisons("wb", "MessageBus"),
    *_comparisons("mq", "mq"),
    ("mq delivery rate vs MessageBus", "mq.rate.delivered_per_s", "wb.rate.delivered_per_s",
     "rate", None, "mq/wb"),
    ("mq latency median vs MessageBus", "mq.latency.median_us", "wb.latency.median_us",
     "latency", None, "mq/wb"),
]


def losses(result: dict) -> list[list]:
    """Every case of every run that lost, dropped or reordered a message."""
    rows = []
    for run in result["runs"]:
        for case, figures in run["results"].items():
            d = figures.get("delivery")
            if d and (d["lost"] or d["dropped"] or d["out_of_order"]):
                rows.append([str(run["run"]), case, f"{d['sent']:,}", f"{d['received']:,}",
                             f"{d['lost']:,}", f"{d['dropped']:,}", f"{d['out_of_order']:,}"])
    return rows


def report(result: dict, markdown: bool = False) -> None:
    comparisons = COMPARISONS
    if result["meta"].get("mq_skipped"):  # no rows of "skipped" for a system not measured
        comparisons = [row for row in COMPARISONS if not row[1].startswith("mq.")]
    h.report(result, comparisons, ["redis"], markdown)
    rows = losses(result)
    if rows:
        print(f"\nLOSSY: {len(rows)} case runs did not deliver every message:")
        print(h.format_table(["run", "case", "sent", "received", "lost", "broker dropped",
                              "out of order"], rows, markdown))
    else:
        print("\nEvery message was delivered, in order, in every case of every run.")
    if result["meta"].get("mq_skipped"):
        print(f"\nmq cases SKIPPED: {result['meta']['mq_skipped']} (MessageBus measured alone)")


def main(argv: list[str] | None = None) -> int:
    return h.bench_main(argv, description=__doc__.split("\n")[0], groups=GROUPS,
                        settings=Settings(), quick=QUICK, output=RESULTS, run_child=run_child,
                        benchmark=benchmark, report=report)


if __name__ == "__main__":
    sys.exit(main())
