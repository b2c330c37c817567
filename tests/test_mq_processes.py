"""workbench.mq between processes, through a real broker: a twitter reaches followers and
standalone queues of other processes once and never comes back to its sender, wildcards work
from the sender's side, shared queues hand each message to one consumer and take back what a
killed consumer held, a slow follower neither blocks the publisher nor grows without bound,
berryMQ's connection functions, and a forked child with a session of its own."""

from __future__ import annotations

import ast
import os
import queue
import signal
import subprocess
import textwrap
import threading
import time
import uuid
import warnings

import pytest

from workbench import NetWorkSpace, mq
from workbench.mq.transport import transport

from .support import Broker, spawn_client, start_broker, wait_for


class Child:
    """A client subprocess running ``code``, its output read line by line with timeouts."""

    def __init__(self, broker: Broker, code: str) -> None:
        self.process = spawn_client(broker, textwrap.dedent(code))
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))

    def line(self, timeout: float = 10.0) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            raise AssertionError(f"no output within {timeout} s: {self.finish()}") from None

    def value(self, timeout: float = 10.0):
        return ast.literal_eval(self.line(timeout))

    def finish(self, timeout: float = 10.0) -> str:
        """Wait for the end (killing it after ``timeout``) -> its stderr."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        errors = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return errors


@pytest.fixture
def children(broker):
    """Start children with ``start(code)``; all are ended and reaped after the test."""
    started: list[Child] = []

    def start(code: str) -> Child:
        child = Child(broker, code)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.process.poll() is None:
            child.process.kill()
        if not child.process.stdout.closed:
            child.finish()


@pytest.fixture(scope="module", autouse=True)
def mq_on_broker(broker):
    mq.init_connection((broker.host, broker.port))
    yield
    mq.close_connection()


def uid() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


def test_a_twitter_reaches_another_process_once_and_never_comes_back(children) -> None:
    n = uid()
    child = children(f"""
        from workbench import mq
        got = []

        @mq.following_function("{n}:*")
        def follow(m):
            got.append(("follower", m.id, m.args, m.kwargs))

        @mq.following_function("{n}_own:*")
        def own(m):
            got.append(("own", m.id))

        q = mq.Queue("{n}:*")
        print("ready", flush=True)
        m = q.get(timeout=10)
        got.append(("queue", m.id, m.args, m.kwargs))
        mq.twitter("{n}_own:x")  # its own message: its follower once, not again from the broker
        mq.twitter("{n}_back:x", 1)
        q.get(timeout=10)  # the end marker: everything before it has arrived
        print(repr(got), flush=True)
        """)
    here: list = []

    def follow_here(message: mq.Message) -> None:
        here.append(message.id)

    mq.following_function(f"{n}:*")(follow_here)
    back = mq.Queue(f"{n}_back:*")
    assert child.line() == "ready"
    mq.twitter(f"{n}:x", 1, k="v")
    assert back.get(timeout=10).args == (1,)
    mq.twitter(f"{n}:end")
    assert child.value() == [
        ("follower", f"{n}:x", (1,), {"k": "v"}),
        ("queue", f"{n}:x", (1,), {"k": "v"}),
        ("own", f"{n}_own:x"),
        ("follower", f"{n}:end", (), {}),
    ]
    assert child.finish() == "" and child.process.returncode == 0
    assert here == [f"{n}:x", f"{n}:end"]  # the sender's own, once each: no echo
    assert back.empty()


def test_wildcards_on_the_sender_side_and_exceptions_cross_processes(children) -> None:
    n, act = uid(), uid()
    child = children(f"""
        from workbench import mq
        got = []

        def follower(tag):
            def follow(m):
                got.append((tag, m.id))
            return follow

        b, c, err = follower("b"), follower("c"), follower("err")
        mq.following_function("{n}b:{act}")(b)
        mq.following_function("{n}c:{act}")(c)

        @mq.following_function("{n}:failed")
        def failed(m):
            got.append(("failed", m.args[0][-1], m.type.__name__, str(m.value), m.traceback))

        end = mq.Queue("{n}:end")
        print("ready", flush=True)
        end.get(timeout=10)
        print(repr(got), flush=True)
        """)
    assert child.line() == "ready"
    mq.twitter(f"*:{act}")  # every <name>:{act} follower
    mq.twitter(f"{n}b")  # every {n}b:<action> follower

    @mq.twitter_exception(f"{n}:failed")
    def failing():
        raise ValueError("from the parent")

    failing()
    mq.twitter(f"{n}:end")
    assert child.value() == [
        ("b", f"*:{act}"), ("c", f"*:{act}"), ("b", f"{n}b:*"),
        # the traceback cannot travel; its text does
        ("failed", "ValueError: from the parent\n", "ValueError", "from the parent", None),
    ]
    assert child.finish() == ""


CONSUMER = """
    from workbench import mq
    q = mq.Queue("{name}", shared=True)
    print("ready", flush=True)
    taken = []
    while (m := q.get(timeout=10)).args[0] != "stop":
        taken.append(m.args[0])
    print(repr(taken), flush=True)
    """


def test_a_shared_queue_hands_each_message_to_one_consumer(children) -> None:
    name = f"{uid()}:job"
    consumers = [children(CONSUMER.format(name=name)) for _ in range(3)]
    for consumer in consumers:
        assert consumer.line() == "ready"
    jobs = 90
    for i in range(jobs):
        mq.twitter(name, i)
    for _ in consumers:
        mq.twitter(name, "stop")
    taken = [consumer.value() for consumer in consumers]
    for consumer in consumers:
        assert consumer.finish() == ""
    everything = sorted(i for part in taken for i in part)
    assert everything == list(range(jobs))  # each exactly once, across the three
    assert all(part == sorted(part) for part in taken)  # each in queue order
    # the stops were acknowledged when the consumers exited: none came back
    assert mq.Queue(name, shared=True).qsize() == 0


def test_a_killed_consumer_gives_its_message_back(children) -> None:
    name = f"{uid()}:job"
    jobs = mq.Queue(name, shared=True)
    consumer = children(f"""
        import time
        from workbench import mq
        q = mq.Queue("{name}", shared=True)
        print("ready", flush=True)
        m = q.get(timeout=10)
        print(m.args[0], flush=True)
        time.sleep(30)  # processing, when it is killed
        """)
    assert consumer.line() == "ready"
    mq.twitter(name, "first")
    mq.twitter(name, "second")
    assert consumer.line() == "first"
    # nothing may come back in this time (over two heartbeat intervals): the living consumer
    # still holds "first", unacknowledged
    time.sleep(0.5)
    assert jobs.qsize() == 1
    consumer.process.send_signal(signal.SIGKILL)
    consumer.finish()
    # the broker declares the session dead (0.2 s x 3 here) and puts "first" back
    got = {jobs.get(timeout=5).args[0], jobs.get(timeout=5).args[0]}
    assert got == {"first", "second"}
    jobs.close()


def test_a_slow_follower_neither_blocks_the_publisher_nor_grows(children, tmp_path) -> None:
    n, total = uid(), 20_000
    marker = tmp_path / "go"
    child = children(f"""
        import os, time
        from workbench import mq
        seen = []

        @mq.following_function("{n}:*")
        def slow(m):
            if not seen:  # stuck on the first message until the publisher is done
                deadline = time.monotonic() + 20
                while not os.path.exists({str(marker)!r}) and time.monotonic() < deadline:
                    time.sleep(0.01)
            seen.append(m.args[0])

        print("ready", flush=True)
        deadline = time.monotonic() + 20
        while len(seen) + mq.dropped() < {total} and time.monotonic() < deadline:
            time.sleep(0.01)
        print(repr((len(seen), mq.dropped(), seen == sorted(seen), seen[-1])), flush=True)
        """)
    assert child.line() == "ready"
    started = time.monotonic()
    for i in range(total):
        mq.twitter(f"{n}:tick", i)
    elapsed = time.monotonic() - started
    # The broker handles one socket's requests in order: once this answered, every message
    # above has been routed (and the backlog overflowed) whatever the machine's load.
    transport.bus().publish(f"{n}_sync:done", None, wait=True)
    marker.touch()
    received, dropped, in_order, last = child.value(timeout=30)
    assert child.finish() == ""
    assert elapsed < 5, f"publishing {total} messages took {elapsed:.1f} s"
    assert dropped > 0 and received + dropped == total  # every message delivered or counted
    assert in_order and last == total - 1  # the oldest were dropped, the newest kept


def test_connection_functions_across_processes(broker, children) -> None:
    n = uid()
    child = children(f"""
        from workbench import mq
        got = []

        @mq.following_function("{n}_direct:*")
        def direct(m):
            got.append((m.id, m.args))

        token = mq.connect_via_queue(({broker.host!r}, {broker.port}), "{n}:*")
        print("ready", flush=True)
        m = mq.get(token, timeout=10)
        print(repr((m.id, m.args, got)), flush=True)
        """)
    here: list = []

    def local(message: mq.Message) -> None:
        here.append(message)

    mq.following_function(f"{n}_direct:*")(local)
    assert child.line() == "ready"
    token = mq.connect_oneway((broker.host, broker.port))
    assert mq.send_message(token, f"{n}_direct:x", 5) == "ok"  # there, not here
    mq.twitter(f"{n}:hello", 1)
    assert child.value() == (f"{n}:hello", (1,), [(f"{n}_direct:x", (5,))])
    assert child.finish() == ""
    assert here == []
    assert mq.close_connection(token) == "ok"


def test_send_message_between_processes_keeps_order_and_types(broker, children) -> None:
    """What a sender's send_message calls (and twitters, from the same thread) reach another
    process in the order sent, whatever their identifiers, with the arguments' types; the
    receiving token queue holds each as soon as this process's delivery thread has read it,
    and a sender that ends normally right after sending loses nothing."""
    n, total = uid(), 300
    heard: list = []

    def follower(message: mq.Message) -> None:
        heard.append(message)

    mq.following_function(f"*:{n}")(follower)
    via = mq.connect_via_queue((broker.host, broker.port), f"*:{n}")
    child = children(f"""
        from workbench import mq
        token = mq.connect_oneway(({broker.host!r}, {broker.port}))
        for i in range({total}):
            ident = f"{n}_{{i % 4}}:{n}"
            if i % 5 == 0:
                mq.twitter(ident, i, (i, "t"), {{"i": (i,)}}, seq=i)
            elif i % 2:
                mq.send_message(token, ident, i, (i, "t"), {{"i": (i,)}}, seq=i)
            else:
                mq.send_message(ident, i, (i, "t"), {{"i": (i,)}}, seq=i)
        print("sent", flush=True)
        """)
    assert child.line(timeout=60) == "sent"
    got = [mq.get(via, timeout=10) for _ in range(total)]
    with pytest.raises(mq.Empty):
        mq.get_nowait(via)
    assert [m.args[0] for m in got] == list(range(total))
    assert [m.id for m in got] == [f"{n}_{i % 4}:{n}" for i in range(total)]
    for i, message in enumerate(got):
        assert type(message.args) is tuple and message.args == (i, (i, "t"), {"i": (i,)})
        assert type(message.args[1]) is tuple and type(message.args[2]["i"]) is tuple
        assert type(message.kwargs) is dict and message.kwargs == {"seq": i}
        assert message.seq == i
    wait_for(lambda: len(heard) == total, timeout=10)
    assert [m.args[0] for m in heard] == list(range(total))
    assert mq.close_connection(via) == "ok"


def test_a_token_queue_holds_another_process_send_message_once_it_returns(broker,
                                                                           children) -> None:
    """berryMQ's queues were at its server: once ``send_message`` had returned, any process's
    ``get_nowait`` had the message. Here the sender's call returns once the broker has passed
    it on, and ``get_nowait`` on an empty token queue first reads what the broker sent."""
    n, rounds = uid(), 40
    child = children(f"""
        from workbench import mq, NetWorkSpace
        token = mq.connect_via_queue(({broker.host!r}, {broker.port}), "{n}:*")
        ws = NetWorkSpace("{n}")
        ws.store("ready", 1)
        for _ in range({rounds}):
            count = ws.fetch("go")
            got = [mq.get_nowait(token).args for _ in range(count)]
            try:
                extra = mq.get_nowait(token).args
            except mq.Empty:
                extra = None
            print(repr((got, extra)), flush=True)
        """)
    with NetWorkSpace(n, broker.host, broker.port) as ws:
        ws.fetch("ready", timeout=10)
        token = mq.connect_oneway((broker.host, broker.port))
        for r in range(rounds):
            count = 1 + r % 4
            for i in range(count):
                if i % 2:
                    assert mq.send_message(token, f"{n}:m", r, i, (r, i)) == "ok"
                else:
                    assert mq.send_message(f"{n}:m", r, i, (r, i)) == "ok"
            ws.store("go", count)  # on another connection: only the broker orders the two
            got, extra = child.value()
            assert got == [(r, i, (r, i)) for i in range(count)] and extra is None
    assert child.finish() == ""


def test_get_nowait_in_a_follower_only_looks(broker, children) -> None:
    """A follower runs in the thread that reads the broker: its ``get_nowait`` cannot wait for
    that thread, so it answers at once from what the queue holds."""
    n = uid()
    via = mq.connect_via_queue((broker.host, broker.port), f"{n}_q:*")
    answers: list = []

    def follower(message: mq.Message) -> None:
        started = time.monotonic()
        try:
            answers.append(mq.get_nowait(via).args)
        except mq.Empty:
            answers.append("empty")
        answers.append(time.monotonic() - started)

    mq.following_function(f"{n}:*")(follower)
    child = children(f"""
        from workbench import mq
        mq.twitter("{n}:first")
        mq.twitter("{n}_q:x", 1)
        mq.twitter("{n}:second")
        """)
    assert child.finish() == ""
    wait_for(lambda: len(answers) == 4, timeout=10)
    assert answers[0] == "empty" and answers[2] == (1,)
    assert answers[1] < 1.0 and answers[3] < 1.0  # not MQ_SYNC_TIMEOUT (2 s)
    assert mq.close_connection(via) == "ok"


def test_send_message_returns_once_the_broker_has_the_message(broker, tmp_path) -> None:
    """What ``get_nowait`` in another process relies on: berryMQ's ``send_message`` was a call
    to its server, and so is this one; ``twitter`` still returns at once."""
    paused = start_broker(tmp_path)
    try:
        mq.init_connection((paused.host, paused.port))
        token = mq.connect_oneway((paused.host, paused.port))
        mq.twitter("warm:up")  # connected before the pause
        results: list = []
        paused.process.send_signal(signal.SIGSTOP)  # briefly: within the heartbeat liveness
        try:
            started = time.monotonic()
            mq.twitter("fast:x", 1)
            assert time.monotonic() - started < 0.2
            sender = threading.Thread(target=lambda: results.append(
                mq.send_message(token, "slow:x", 2)))
            sender.start()
            sender.join(0.25)
            assert sender.is_alive() and results == []
        finally:
            paused.process.send_signal(signal.SIGCONT)
        sender.join(10)
        assert results == ["ok"]
    finally:
        mq.close_connection()
        paused.stop()
        mq.init_connection((broker.host, broker.port))


def test_a_forked_child_uses_a_session_of_its_own() -> None:
    n = uid()
    heard = mq.Queue(f"{n}:*")
    mq.twitter(f"{n}_warm:x")  # publishing has taken the parent's connection
    parents, unpublished = transport.connection(), mq.unpublished()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded" fork
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            mq.twitter(f"{n}:from_child", os.getpid())
            transport.bus().publish(f"{n}:sync", None, wait=True)  # everything has left
            if transport.connection() is not parents and mq.unpublished() == unpublished:
                status = 0
        finally:
            os._exit(status)
    # Had the child spoken with this process's session, the broker would not have sent its
    # message here (a sender never hears itself).
    message = heard.get(timeout=10)
    assert message.id == f"{n}:from_child" and message.args == (pid,)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert heard.get(timeout=10).id == f"{n}:sync"
    # and this process's session is intact: the broker still serves it
    shared = mq.Queue(f"{n}_shared", shared=True)
    mq.twitter(f"{n}_shared:x", "still here")
    assert shared.get(timeout=5).args == ("still here",)
    assert heard.empty()
    shared.close()
