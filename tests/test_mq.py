"""workbench.mq in one process: berryMQ's semantics, item by item (identifiers, symmetric
matching, order, guards, weak registration, Message, auto_twitter, twitter_exception, queues,
set_multiplicity, the connection functions, the adapters). A real broker is behind it, as it is
behind every use of mq; tests/test_mq_processes.py covers what crosses processes."""

from __future__ import annotations

import gc
import json
import logging
import queue
import threading
import time
import uuid

import pytest

from workbench import mq
from workbench.client.embedded import connect
from workbench.client.pubsub import MessageBus
from workbench.mq.adapter.fileobserver import FileObserver
from workbench.mq.adapter.timer import IntervalTimer
from workbench.mq.registry import ROUTES_KEPT, registry
from workbench.mq.transport import transport
from workbench.protocol import HEADER_SIZE, Op
from workbench.topics import Identifier, parse

from .support import wait_for


@pytest.fixture(scope="module", autouse=True)
def mq_on_broker(broker):
    """mq of this process uses the module's broker, and leaves it afterwards."""
    mq.init_connection((broker.host, broker.port))
    yield
    mq.set_multiplicity(0)
    mq.close_connection()


def uid() -> str:
    """A fresh name: tests must not hear each other's followers."""
    return f"n{uuid.uuid4().hex[:10]}"


def recorder(calls: list, tag: str = ""):
    def follower(message: mq.Message) -> None:
        calls.append((tag, message.id) if tag else message)
    return follower


def collector() -> tuple[list, object]:
    """A list and a follower appending each message to it (keep both: followers are weak)."""
    got: list = []

    def follower(message: mq.Message) -> None:
        got.append(message)

    return got, follower


def subscribed_at_broker() -> set[str]:
    """The patterns this process's session follows, as the broker sees them."""
    connection = transport.connection()
    info = json.loads(connection.call(Op.STATUS, [])[HEADER_SIZE:])
    return {p for s in info["subscribers"] if s["client"] == connection.label
            for p in s["patterns"]}


# ---------------------------------------------------------------------- identifiers


def test_parsing_is_greedy_and_only_an_exact_star_is_a_wildcard() -> None:
    assert parse("a@b@c:x:y") == Identifier("a@b", "y", "c:x")  # the last ':', the last '@'
    assert parse("a@b@ns:x") == Identifier("a@b", "x", "ns")
    assert parse("name") == Identifier("name", None)  # a missing action is *
    assert parse("*") == Identifier(None, None)
    assert parse("test*:x") == Identifier("test*", "x")  # no partial globs
    assert parse("a:b,c").action == "b,c"  # a literal action
    with pytest.raises(ValueError):
        parse("x@*:a")  # namespaces are never wildcards


def test_a_star_in_a_name_is_literal() -> None:
    name = uid()
    calls: list = []
    literal = recorder(calls, "literal")
    mq.following_function(f"{name}*:x")(literal)
    mq.twitter(f"{name}abc:x")
    assert calls == []
    mq.twitter(f"{name}*:x")
    assert calls == [("literal", f"{name}*:x")]


# ---------------------------------------------------------------------- matching


def test_matching_is_symmetric_for_the_four_follower_forms() -> None:
    ns = uid()  # its own namespace: no other test's wildcard followers
    calls: list = []
    followers = {form: recorder(calls, form) for form in ("n:a", "n:*", "*:a", "*:*")}
    for form, follower in followers.items():
        mq.following_function(form.replace(":", f"@{ns}:"))(follower)

    def reached(sender: str) -> set[str]:
        calls.clear()
        mq.twitter(sender)
        return {tag for tag, _ in calls}

    assert reached(f"n@{ns}:a") == {"n:a", "n:*", "*:a", "*:*"}
    assert reached(f"n@{ns}:b") == {"n:*", "*:*"}
    assert reached(f"m@{ns}:a") == {"*:a", "*:*"}
    assert reached(f"m@{ns}:b") == {"*:*"}
    # a wildcard on the sender's side
    assert reached(f"n@{ns}") == {"n:a", "n:*", "*:a", "*:*"}  # twitter("x"): every x:<action>
    assert reached(f"*@{ns}:a") == {"n:a", "n:*", "*:a", "*:*"}
    assert reached(f"*@{ns}:b") == {"n:*", "*:*"}
    assert reached(f"m@{ns}") == {"*:a", "*:*"}
    assert reached(f"*@{ns}") == set(followers)  # twitter("*"): every follower


def test_a_wildcard_sender_reaches_every_follower_of_its_action() -> None:
    name, action = uid(), uid()
    calls: list = []
    follower = recorder(calls, "f")
    mq.following_function(f"{name}:{action}")(follower)
    mq.twitter(f"*:{action}")
    assert calls == [("f", f"*:{action}")]


def test_namespaces_are_isolated() -> None:
    ns1, ns2, name = uid(), uid(), uid()
    calls: list = []
    f = recorder(calls, "ns1")
    mq.following_function(f"{name}@{ns1}:a")(f)
    mq.twitter(f"{name}@{ns2}:a")
    mq.twitter(f"{name}:a")
    mq.twitter("*")  # the default namespace's everything
    assert calls == []
    mq.twitter(f"*@{ns1}")
    assert calls == [("ns1", "*:*")]
    in_ns1 = mq.Queue(f"{name}@{ns1}")
    mq.twitter(f"{name}@{ns1}:b")
    assert in_ns1.get_nowait().namespace == ns1


# ---------------------------------------------------------------------- order, sync, guard


def test_order_wildcard_name_followers_first_then_exact_in_registration_order() -> None:
    ns, name = uid(), uid()
    calls: list = []
    first_exact = recorder(calls, "exact1")
    wildcard = recorder(calls, "wildcard")
    second_exact = recorder(calls, "exact2")
    wildcard_all = recorder(calls, "wildcard_all")
    mq.following_function(f"{name}@{ns}:a")(first_exact)
    mq.following_function(f"*@{ns}:a")(wildcard)
    mq.following_function(f"{name}@{ns}:*")(second_exact)
    mq.following_function(f"*@{ns}:*")(wildcard_all)
    mq.twitter(f"{name}@{ns}:a")
    assert [tag for tag, _ in calls] == ["wildcard", "wildcard_all", "exact1", "exact2"]


def test_delivery_is_synchronous_and_a_follower_exception_stops_the_rest() -> None:
    name = uid()
    calls: list = []

    def failing(message: mq.Message) -> None:
        calls.append(("failing", threading.get_ident()))
        raise RuntimeError("follower failed")

    later = recorder(calls, "later")
    mq.following_function(f"{name}:a")(failing)
    mq.following_function(f"{name}:a")(later)
    with pytest.raises(RuntimeError, match="follower failed"):
        mq.twitter(f"{name}:a")
    assert calls == [("failing", threading.get_ident())]  # in this thread; `later` not called


def test_the_guard_gets_the_message_and_false_skips_the_follower() -> None:
    name = uid()
    calls: list = []
    guarded: list = []

    def guard(message: mq.Message) -> bool:
        guarded.append(message)
        return message.args[0] == "match"

    follower = recorder(calls, "f")
    mq.following_function(f"{name}:a", guard)(follower)
    mq.twitter(f"{name}:a", "no")
    mq.twitter(f"{name}:b", "match")  # the identifier does not match: no guard call
    mq.twitter(f"{name}:a", "match")
    assert calls == [("f", f"{name}:a")]
    assert [m.args for m in guarded] == [("no",), ("match",)]
    assert all(isinstance(m, mq.Message) for m in guarded)


# ---------------------------------------------------------------------- weak registration


def test_a_function_nothing_keeps_alive_stops_receiving() -> None:
    name = uid()
    calls: list = []
    mq.following_function(f"{name}:a")(lambda message: calls.append(message.id))
    gc.collect()
    mq.twitter(f"{name}:a")
    assert calls == []
    assert f"{name}:a" not in registry.patterns()  # purged, not skipped forever


def test_a_follower_instance_receives_until_it_is_collected() -> None:
    name = uid()
    calls: list = []

    class Logger(metaclass=mq.Follower):
        def __init__(self, tag: str) -> None:
            self.tag = tag

        @mq.following(f"{name}:log")
        def receive(self, message: mq.Message) -> None:
            calls.append((self.tag, message.args))

    one, two = Logger("one"), Logger("two")
    mq.twitter(f"{name}:log", 1)
    assert calls == [("one", (1,)), ("two", (1,))]
    assert f"{name}:log" in subscribed_at_broker()
    del one
    gc.collect()
    mq.twitter(f"{name}:log", 2)
    assert calls[2:] == [("two", (2,))]
    del two
    gc.collect()
    mq.twitter(f"{name}:log", 3)
    assert len(calls) == 3
    # nobody here follows it any more: unsubscribed at the broker too
    assert f"{name}:log" not in registry.patterns()
    assert f"{name}:log" not in subscribed_at_broker()


def test_classmethods_register_once_and_stacked_decorators_each_register() -> None:
    name = uid()
    calls: list = []

    class Watcher(metaclass=mq.Follower):
        @classmethod
        @mq.following(f"{name}:cls")
        def on_class(cls, message: mq.Message) -> None:
            calls.append(("cls", cls.__name__))

        @staticmethod
        @mq.following_function(f"{name}:static")
        def on_static(message: mq.Message) -> None:
            calls.append(("static", message.id))

        @classmethod
        @mq.following_function(f"{name}:bound")
        def bound(cls, message: mq.Message) -> None:
            calls.append(("bound", cls.__name__))

        @mq.following(f"{name}:a")
        @mq.following(f"{name}:b")
        def stacked(self, message: mq.Message) -> None:
            calls.append(("stacked", message.id))

    instances = [Watcher(), Watcher()]
    mq.twitter(f"{name}:cls")
    mq.twitter(f"{name}:static")
    mq.twitter(f"{name}:bound")
    assert calls == [("cls", "Watcher"), ("static", f"{name}:static"), ("bound", "Watcher")]
    calls.clear()
    mq.twitter(f"{name}:a")
    mq.twitter(f"{name}:b")
    assert calls == [("stacked", f"{name}:a")] * 2 + [("stacked", f"{name}:b")] * 2
    del instances


def test_regist_function_and_regist_method() -> None:
    name = uid()
    calls: list = []

    class Target:
        def receive(self, message: mq.Message) -> None:
            calls.append(("method", message.args))

    def function(message: mq.Message) -> None:
        calls.append(("function", message.args))

    target = Target()
    mq.regist_function(f"{name}:f", function)
    mq.regist_method(f"{name}:m", target.receive)  # a bound method: weak to the instance
    mq.twitter(f"{name}:f", 1)
    mq.twitter(f"{name}:m", 2)
    assert calls == [("function", (1,)), ("method", (2,))]
    del target
    gc.collect()
    mq.twitter(f"{name}:m", 3)
    assert calls == [("function", (1,)), ("method", (2,))]

    class Slotted:
        __slots__ = ()

        def __call__(self, message: mq.Message) -> None:
            pass

    with pytest.raises(TypeError, match="weak reference"):
        mq.regist_function(f"{name}:f", Slotted())


# ---------------------------------------------------------------------- Message


def test_message_attributes() -> None:
    name = uid()
    got, follower = collector()
    mq.regist_function(f"{name}@space:*", follower)
    mq.twitter(f"{name}@space:act", 1, "two", user="shibu", name="not the name")
    message = got[0]
    assert message.name == name and message.action == {"act"}
    assert message.id == f"{name}:act" and message.namespace == "space"
    assert message.args == (1, "two") and isinstance(message.args, tuple)
    assert message.kwargs == {"user": "shibu", "name": "not the name"}
    assert message.user == "shibu"  # kwargs are attributes too...
    assert message.name == name  # ...but never shadow the message's own
    assert message.apply(lambda user, name: f"{user}/{name}") == "shibu/not the name"
    mq.twitter("*@space")
    assert got[1].name is None and got[1].action is None and got[1].id == "*:*"


def test_twitter_refuses_what_is_not_an_identifier_however_it_was_routed() -> None:
    name = uid()
    for bad in ("", "x@*:a", ":a", "a\0b"):
        with pytest.raises(ValueError):
            mq.twitter(bad)
    routed = parse(f"{name}:a")
    registry.send(routed, (), {})  # remembers a route under the parsed identifier
    for bad in (routed, 5):
        with pytest.raises(TypeError, match="identifier is a str"):
            mq.twitter(bad)
    with pytest.raises(TypeError):
        mq.twitter([f"{name}:a"])


def test_keyword_arguments_may_be_named_like_twitter_s_parameters() -> None:
    name = uid()
    got, follower = collector()
    mq.regist_function(f"{name}:*", follower)
    mq.twitter(f"{name}:x", identifier="i", self="s")
    assert got[0].kwargs == {"identifier": "i", "self": "s"} and got[0].id == f"{name}:x"


def test_a_message_s_frames_are_the_ones_codec_makes() -> None:
    """mq pickles a message itself (its common case, one call) and leaves the rest to
    ``codec``: either way the frames must be codec's, so every reader decodes them alike."""
    import numpy as np

    from workbench import NwsPicklingException, codec
    from workbench.mq.message import encode, pack

    small = pack("a:b", (1, "two", b"3"), {"k": [4.5]}, None)
    large = pack("a:b", (b"x" * 200_000,), {}, "c:d")  # a pickle in a frame of its own
    array = pack("a:b", (np.arange(100_000),), {}, None)  # a buffer out of band
    for packed in (small, large, array):
        frames = encode(packed)
        assert [bytes(f) for f in frames] == [bytes(f) for f in codec.encode(packed)]
    assert len(encode(large)) == 2  # the pickle detached
    assert type(encode(array)[1]) is memoryview  # the array's own memory, not copied
    back = codec.decode(encode(array))
    assert np.array_equal(back[0][0], np.arange(100_000))
    closure = pack("a:b", (lambda: 42,), {}, None)  # what only cloudpickle takes
    assert codec.decode(encode(closure))[0][0]() == 42
    with pytest.raises(NwsPicklingException):
        encode(pack("a:b", (threading.Lock(),), {}, None))


# ---------------------------------------------------------------------- other sessions


def test_messages_of_other_sessions_arrive_in_the_delivery_thread(broker, caplog) -> None:
    """Another connection of this very process is, to the broker, another process."""
    name = uid()
    calls: list = []

    def failing(message: mq.Message) -> None:
        calls.append(("failing", threading.get_ident()))
        raise RuntimeError("remote follower failed")

    def later(message: mq.Message) -> None:
        calls.append(("later", message.id, message.args, message.kwargs))

    mq.following_function(f"{name}:*")(failing)
    mq.following_function(f"{name}:*")(later)
    mq.errors()
    connection = connect(broker.host, broker.port)
    try:
        bus = MessageBus(connection)
        with caplog.at_level(logging.ERROR, logger="workbench.mq"):
            bus.publish(f"{name}:a", ((1,), {"k": 2}, f"{name}:a", None))
            bus.publish(f"{name}:b", ((3,), {}))  # a plain MessageBus publisher's value
            bus.publish(f"{name}:c", "raw", wait=True)  # any other value: args[0]
            wait_for(lambda: len(calls) == 6, timeout=5)
    finally:
        connection.close()
    assert calls[0][0] == "failing" and calls[0][1] != threading.get_ident()
    assert [c for c in calls if c[0] == "later"] == [
        ("later", f"{name}:a", (1,), {"k": 2}), ("later", f"{name}:b", (3,), {}),
        ("later", f"{name}:c", ("raw",), {})]  # the failure stopped nobody
    failures = mq.errors()
    assert len(failures) == 3 and str(failures[0][1]) == "remote follower failed"
    assert "remote follower failed" in caplog.text


def test_followers_that_come_and_go_between_remote_messages_are_heard(broker) -> None:
    """Remote messages are routed by a table remembered per identifier: every registration,
    closed queue and collected follower must change what the next message reaches."""
    name = uid()
    first, follow_first = collector()
    second, follow_second = collector()
    mq.following_function(f"{name}:x")(follow_first)
    connection = connect(broker.host, broker.port)
    standalone = None
    try:
        bus = MessageBus(connection)

        def send(number: int) -> None:
            bus.publish(f"{name}:x", ((number,), {}, f"{name}:x", None), wait=True)

        send(1)
        wait_for(lambda: len(first) == 1, timeout=5)
        mq.following_function(f"{name}:*")(follow_second)  # came after the route was made
        standalone = mq.Queue(f"{name}:*")
        send(2)
        wait_for(lambda: len(second) == 1 and standalone.qsize() == 1, timeout=5)
        standalone.close()
        queued = standalone.get_nowait()
        del follow_first
        gc.collect()
        send(3)
        wait_for(lambda: len(second) == 2, timeout=5)
        send(4)
        wait_for(lambda: len(second) == 3, timeout=5)
        # the collected follower's pattern is gone from the broker too (purged on arrival)
        wait_for(lambda: f"{name}:x" not in subscribed_at_broker(), timeout=5)
    finally:
        connection.close()
        if standalone is not None:
            standalone.close()
    assert [m.args for m in first] == [(1,), (2,)]  # nothing after it was collected
    assert [m.args for m in second] == [(2,), (3,), (4,)]
    assert queued.args == (2,) and standalone.empty()  # closed: nothing more came in


def test_identifiers_made_up_per_message_do_not_grow_the_routes() -> None:
    name = uid()
    got, follower = collector()
    mq.following_function(f"{name}:*")(follower)
    count = ROUTES_KEPT + 100
    for number in range(count):
        mq.twitter(f"{name}:job{number}")
    assert [m.id for m in got] == [f"{name}:job{number}" for number in range(count)]
    assert len(registry._routes) <= ROUTES_KEPT


def test_with_a_pool_messages_of_other_sessions_go_to_the_workers(broker) -> None:
    name = uid()
    threads: queue.Queue = queue.Queue()

    def follower(message: mq.Message) -> None:
        threads.put(threading.current_thread().name)

    mq.following_function(name)(follower)
    connection = connect(broker.host, broker.port)
    mq.set_multiplicity(1)
    try:
        MessageBus(connection).publish(f"{name}:x", ((), {}, f"{name}:x", None))
        assert threads.get(timeout=5) == "workbench-mq-worker"
    finally:
        mq.set_multiplicity(0)
        connection.close()


# ---------------------------------------------------------------------- auto_twitter


@pytest.mark.parametrize("entry, exit, expected", [
    (False, False, ["entry", "call", "exit"]),
    (True, True, ["entry", "call", "exit"]),
    (True, False, ["entry", "call"]),
    (False, True, ["call", "exit"]),
])
def test_auto_twitter_follows_the_flag_table(entry: bool, exit: bool, expected: list) -> None:
    name = uid()
    calls: list = []

    @mq.auto_twitter(f"{name}:ignored", entry=entry, exit=exit)  # the action is ignored
    def work(a, b=0):
        calls.append("call")
        return a + b

    def seen(message: mq.Message) -> None:
        calls.append(message.action.pop())
        assert message.args == (1,) and message.kwargs == {"b": 2}

    mq.following_function(f"{name}:*")(seen)
    assert work(1, b=2) == 3  # the result is kept
    assert calls == expected
    assert work.__name__ == "work"


def test_auto_twitter_sends_no_exit_when_the_function_raises() -> None:
    name = uid()
    actions: list = []

    @mq.auto_twitter(name)
    def failing():
        raise KeyError("x")

    def seen(message: mq.Message) -> None:
        actions.append(message.id)

    mq.following_function(f"{name}:*")(seen)
    with pytest.raises(KeyError):
        failing()
    assert actions == [f"{name}:entry"]


# ---------------------------------------------------------------------- twitter_exception


def test_twitter_exception_sends_the_id_unchanged_and_swallows() -> None:
    name = uid()
    got, follower = collector()
    mq.regist_function(f"{name}:*", follower)

    @mq.twitter_exception(name)
    def failing(x):
        raise ValueError(f"bad {x}")

    @mq.twitter_exception(f"{name}:short", with_traceback=False)
    def short():
        raise ValueError("short")

    @mq.twitter_exception(f"{name}:fine")
    def fine():
        return 42

    assert failing(1) is None  # swallowed
    message = got[0]
    assert message.id == f"{name}:*"  # no ":exception" added: the name's wildcard
    lines = message.args[0]
    assert isinstance(lines, list) and lines[0].startswith("Traceback")
    assert lines[-1] == "ValueError: bad 1\n"
    assert message.type is ValueError and str(message.value) == "bad 1"
    assert message.traceback is message.value.__traceback__
    short()
    assert got[1].id == f"{name}:short" and got[1].args[0] == ["ValueError: short\n"]
    assert fine() == 42 and len(got) == 2


def test_twitter_exception_reraises_when_asked_and_lets_ctrl_c_through() -> None:
    name = uid()
    got, follower = collector()
    mq.regist_function(f"{name}:*", follower)

    @mq.twitter_exception(f"{name}:exc", reraise=True)
    def failing():
        raise OSError("disk")

    @mq.twitter_exception(f"{name}:exc")
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(OSError, match="disk"):
        failing()
    assert len(got) == 1
    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert len(got) == 1


# ---------------------------------------------------------------------- queues


def test_standalone_queues_each_get_a_copy_in_order() -> None:
    name = uid()
    first, second = mq.Queue(f"{name}:*"), mq.Queue(f"{name}:*")
    for i in range(5):
        mq.twitter(f"{name}:job", i)
    assert first.qsize() == second.qsize() == 5 and not first.empty()
    assert [first.get().args[0] for _ in range(5)] == list(range(5))
    assert [second.get_nowait().args[0] for _ in range(5)] == list(range(5))
    assert first.empty() and not hasattr(first, "put")
    assert isinstance(first, mq.Queue) and mq.Empty is queue.Empty
    with pytest.raises(mq.Empty):
        first.get_nowait()
    started = time.monotonic()
    with pytest.raises(mq.Empty):
        first.get(timeout=0.1)
    assert 0.05 < time.monotonic() - started < 2
    with pytest.raises(mq.Empty):
        first.get(block=False)


def test_a_standalone_queue_wakes_a_blocked_getter() -> None:
    name = uid()
    q = mq.Queue(name)
    threading.Timer(0.05, mq.twitter, (f"{name}:late", "x")).start()
    assert q.get(timeout=5).args == ("x",)


def test_a_full_standalone_queue_drops_the_oldest_and_counts() -> None:
    name = uid()
    q = mq.Queue(name)
    q.maxsize = 3
    for i in range(5):
        mq.twitter(f"{name}:x", i)
    assert q.full() and q.qsize() == 3 and q.dropped == 2
    assert [q.get_nowait().args[0] for _ in range(3)] == [2, 3, 4]


def test_a_standalone_queue_is_released_when_collected() -> None:
    name = uid()
    q = mq.Queue(f"{name}:*")
    assert f"{name}:*" in registry.patterns()
    del q
    gc.collect()
    mq.twitter(f"{name}:x")  # purges
    assert f"{name}:*" not in registry.patterns()


def test_shared_queues_are_one_per_exact_identifier_string() -> None:
    name = uid()
    a, b = mq.Queue(f"{name}:*", shared=True), mq.Queue(f"{name}:*", shared=True)
    other = mq.Queue(name, shared=True)  # "name" and "name:*" are two queues
    for i in range(4):
        mq.twitter(f"{name}:job", i)  # the sender's own messages are stored too
    wait_for(lambda: a.qsize() == 4)
    assert b.qsize() == 4 and not a.empty() and not a.full()
    taken = [a.get(timeout=5).args[0], b.get(timeout=5).args[0], a.get_nowait().args[0],
             b.get(timeout=5).args[0]]
    assert taken == [0, 1, 2, 3]  # shared: each message once, in order
    assert a.empty()
    with pytest.raises(mq.Empty):
        b.get_nowait()
    with pytest.raises(mq.Empty):
        b.get(timeout=0.1)
    assert other.qsize() == 4
    message = other.get(timeout=5)
    assert message.id == f"{name}:job" and message.args == (0,)  # the sender's identifier
    assert isinstance(other, mq.Queue) and other.shared and not a.dropped
    for q in (a, b, other):
        q.close()


def test_a_shared_queue_holds_its_message_until_the_next_get_or_task_done() -> None:
    name = uid()
    q = mq.Queue(name, shared=True)
    mq.twitter(f"{name}:x", 1)
    mq.twitter(f"{name}:x", 2)
    assert q.get(timeout=5).args == (1,)

    def leases() -> int:
        info = json.loads(transport.connection().call(Op.STATUS, [])[HEADER_SIZE:])
        return info["leases"]

    assert leases() >= 1 and q.qsize() == 1
    assert q.get(timeout=5).args == (2,)  # acknowledges the first
    q.task_done()  # and this the second, with the next request
    assert q.qsize() == 0
    q.close()


def test_a_shared_queue_message_is_acknowledged_by_close_and_by_collection() -> None:
    name = uid()

    def leases() -> int:  # this session's only: other tests' may end meanwhile
        connection = transport.connection()
        info = json.loads(connection.call(Op.STATUS, [])[HEADER_SIZE:])
        return sum(c["leases"] for c in info["clients"] if c["label"] == connection.label)

    before = leases()
    q = mq.Queue(name, shared=True)
    for number in range(2):
        mq.twitter(f"{name}:x", number)
    assert q.get(timeout=5).args == (0,) and leases() == before + 1
    q.close()  # at once, in one request
    assert leases() == before

    collected = mq.Queue(name, shared=True)
    assert collected.get(timeout=5).args == (1,) and leases() == before + 1
    del collected
    gc.collect()  # its finalizer leaves the acknowledgement to the heartbeat
    wait_for(lambda: leases() == before, timeout=10)
    assert q.qsize() == 0  # neither came back


# ---------------------------------------------------------------------- set_multiplicity


def test_set_multiplicity_pool_then_back_to_synchronous() -> None:
    name = uid()
    release = threading.Event()
    threads: list = []

    def slow(message: mq.Message) -> None:
        threads.append(threading.get_ident())
        release.wait(5)

    mq.following_function(f"{name}:x")(slow)
    mq.set_multiplicity(2)
    try:
        started = time.monotonic()
        mq.twitter(f"{name}:x")
        mq.twitter(f"{name}:x")
        assert time.monotonic() - started < 1  # returned at once: the pool calls `slow`
        wait_for(lambda: len(threads) == 2, timeout=5)
        assert threading.get_ident() not in threads
        release.set()
    finally:
        mq.set_multiplicity(0)
    threads.clear()
    mq.twitter(f"{name}:x")
    assert threads == [threading.get_ident()]  # synchronous again (berryMQ's 0 did not)
    with pytest.raises(ValueError):
        mq.set_multiplicity(-1)


def test_pool_errors_are_kept_and_logged(caplog) -> None:
    name = uid()

    def failing(message: mq.Message) -> None:
        raise RuntimeError("in the pool")

    mq.following_function(f"{name}:x")(failing)
    mq.errors()
    mq.set_multiplicity(1)
    try:
        with caplog.at_level(logging.ERROR, logger="workbench.mq"):
            mq.twitter(f"{name}:x", 7)  # does not raise here
            failed = wait_for(mq.errors, timeout=5)
    finally:
        mq.set_multiplicity(0)
    assert failed[0][0].args == (7,) and str(failed[0][1]) == "in the pool"
    assert "failed" in caplog.text


# ---------------------------------------------------------------------- talk, unpicklable


def test_talk_receivers_reply_on_the_callback_identifier() -> None:
    name = uid()
    answers = mq.Queue(f"{name}:answer")

    def answer(message: mq.Message) -> None:
        message.reply(message.args[0] * 2)

    mq.following_function(f"{name}:question")(answer)
    mq.talk(f"{name}:question", f"{name}:answer", 21)
    assert answers.get_nowait().args == (42,)
    with pytest.raises(ValueError):
        mq.Message(f"{name}:x").reply()


def test_unpicklable_arguments_reach_this_process_only(caplog) -> None:
    name = uid()
    got, follower = collector()
    mq.regist_function(f"{name}:*", follower)
    lock = threading.Lock()  # cannot be pickled
    before = mq.unpublished()
    with caplog.at_level(logging.WARNING, logger="workbench.mq"):
        mq.twitter(f"{name}:x", lock)
    assert got[0].args[0] is lock  # the object itself, not a copy
    assert mq.unpublished() == before + 1 and "cannot be pickled" in caplog.text


# ---------------------------------------------------------------------- connection functions


def test_connection_functions_tokens_and_results(broker) -> None:
    name = uid()
    address = mq.init_connection((broker.host, broker.port))
    assert address.endswith(f":{broker.port}")
    calls: list = []
    local = recorder(calls, "local")
    mq.following_function(f"{name}:*")(local)
    token = mq.interconnect((broker.host, broker.port))
    oneway = mq.connect_oneway(("localhost", broker.port))  # the same broker
    assert mq.send_message(oneway, f"{name}:x", 1) == "ok"
    assert mq.send_message(f"{name}:x", 2) == "ok"  # berryMQ 0.2's form
    assert calls == []  # sent to other processes, not to this one's followers
    via = mq.connect_via_queue((broker.host, broker.port), f"{name}:*")
    mq.twitter(f"{name}:y", 3)
    message = mq.get(via, timeout=5)
    assert isinstance(message, mq.Message) and message.id == f"{name}:y"
    assert message.args == (3,)
    with pytest.raises(mq.Empty):
        mq.get_nowait(via)
    with pytest.raises(mq.Empty):
        mq.get(True, 0.05)  # berryMQ 0.2's get(block, timeout): the first queue token
    assert mq.get(token) == "invalid token"  # not a queue token
    assert mq.send_message(str(uuid.uuid1()), f"{name}:x") == "invalid token"
    assert mq.close_connection(via) == "ok"
    assert mq.get_nowait(via) == "invalid token"
    for t in (token, oneway):
        assert mq.close_connection(t) == "ok"
    assert mq.send_message(oneway, f"{name}:x") == "invalid token"


def test_a_token_queue_holds_what_send_message_sent_when_it_returns(broker) -> None:
    """berryMQ's style 03 queue was at the server, which send_message reached by a synchronous
    call: so here, in the sender's own process, get_nowait right after it has the message,
    in order, with the arguments as sent, while this process's followers and plain queues
    hear nothing (send_message went to the server only)."""
    name = uid()
    calls: list = []
    local = recorder(calls, "local")
    mq.following_function(f"{name}*:*")(local)
    mq.following_function("*:x")(local)
    plain = mq.Queue("*:x")
    via = mq.connect_via_queue((broker.host, broker.port), "*:x")
    oneway = mq.connect_oneway((broker.host, broker.port))
    nested = {"k": (1, [2, (3,)])}
    for i in range(200):
        ident = f"{name}_{i % 3}:x"
        if i % 2:
            assert mq.send_message(oneway, ident, i, (i, "t"), nested, flag=i) == "ok"
        else:
            assert mq.send_message(ident, i, (i, "t"), nested, flag=i) == "ok"
        message = mq.get_nowait(via)
        assert message.id == ident and message.args == (i, (i, "t"), nested)
        assert type(message.args) is tuple and type(message.args[1]) is tuple
        assert message.args[2] is nested  # in-process receivers get the objects themselves
        assert type(message.kwargs) is dict and message.kwargs == {"flag": i}
        assert message.flag == i
        with pytest.raises(mq.Empty):
            mq.get_nowait(via)
    assert calls == [] and plain.empty()
    for token in (via, oneway):
        assert mq.close_connection(token) == "ok"


def test_an_idle_token_times_out(broker) -> None:
    name = uid()
    token = mq.connect_via_queue((broker.host, broker.port), name, ttl=0.05)
    # No poll can watch a token expire: every use restarts its idle time. Its ttl runs on
    # this process's clock, so sleeping longer than the ttl is certain to cross it.
    time.sleep(0.1)
    assert mq.get_nowait(token) == "timeout"
    assert mq.get_nowait(token) == "invalid token"
    oneway = mq.connect_oneway((broker.host, broker.port), ttl=0.05)
    assert mq.send_message(oneway, f"{name}:x") == "ok"
    time.sleep(0.1)  # idle past its ttl, as above
    assert mq.send_message(oneway, f"{name}:x") == "timeout"
    with pytest.raises(mq.NotConnectToServer):
        mq.get()


def test_closing_and_reconnecting_resubscribes(broker) -> None:
    name = uid()
    q = mq.Queue(f"{name}:*")
    mq.close_connection()
    assert transport.current() is None
    mq.init_connection((broker.host, broker.port))
    assert f"{name}:*" in subscribed_at_broker()
    mq.twitter(f"{name}:again")
    assert q.get_nowait().id == f"{name}:again"


def test_a_connection_closed_under_mq_is_replaced_by_the_next_twitter(broker) -> None:
    """Publishing takes mq's connection without checking it per message: one closed by
    someone else refuses the message, which then goes on a new connection, as before."""
    name = uid()
    listener = connect(broker.host, broker.port)
    got: queue.Queue = queue.Queue()
    try:
        MessageBus(listener, lambda identifier, value: got.put(value[0])).subscribe(f"{name}:*")
        mq.twitter(f"{name}:x", 1)
        assert got.get(timeout=5) == (1,)
        closed = transport.connection()
        closed.close()
        before = mq.unpublished()
        mq.twitter(f"{name}:x", 2)
        assert got.get(timeout=5) == (2,)
        assert mq.unpublished() == before and transport.connection() is not closed
    finally:
        listener.close()


def test_connect_oneway_to_another_broker_has_a_connection_of_its_own(make_broker) -> None:
    other = make_broker()
    connection = connect(other.host, other.port)
    got: queue.Queue = queue.Queue()
    MessageBus(connection, lambda identifier, value: got.put((identifier, value))) \
        .subscribe("far:*")
    mine = transport.connection()
    token = mq.connect_oneway((other.host, other.port))
    try:
        assert mq.send_message(token, "far:x", 1) == "ok"
        assert got.get(timeout=5) == ("far:x", ((1,), {}, "far:x", None))
        assert mq.send_message("far:y", 2) == "ok"  # 0.2's form: every broker a token names
        assert got.get(timeout=5)[0] == "far:y"
    finally:
        assert mq.close_connection((other.host, other.port)) == "ok"
        connection.close()
    assert transport.connection() is mine  # mq itself never left its broker


def test_twitter_does_not_block_when_the_broker_is_gone(broker, make_broker, caplog) -> None:
    doomed = make_broker()
    mq.init_connection((doomed.host, doomed.port))
    name = uid()
    q = mq.Queue(name)
    try:
        doomed.process.kill()
        doomed.process.wait()
        wait_for(lambda: transport.connection().broken, timeout=5)
        before = mq.unpublished()
        with caplog.at_level(logging.WARNING, logger="workbench.mq"):
            for i in range(3000):  # more than a socket queues before sending blocks
                mq.twitter(f"{name}:x", i)
        assert q.qsize() == 3000  # this process's followers still get every message
        assert mq.unpublished() == before + 3000 and "unreachable" in caplog.text
    finally:
        mq.init_connection((broker.host, broker.port))
    assert f"{name}:*" in subscribed_at_broker()  # followed again, on the broker now in use


# ---------------------------------------------------------------------- adapters


def test_interval_timer_ticks_until_stopped() -> None:
    name = uid()
    ticks = mq.Queue(name)
    timer = IntervalTimer(name, 0.05)
    try:
        first = ticks.get(timeout=5)
        assert first.id == f"{name}:tick" and first.args == () and first.kwargs == {}
        ticks.get(timeout=5)
    finally:
        timer.stop()
    assert not timer.running
    while not ticks.empty():
        ticks.get_nowait()
    time.sleep(0.15)  # nothing may arrive in this time (three intervals): the timer stopped
    assert ticks.empty()
    slow = IntervalTimer(name, 30)
    started = time.monotonic()
    slow.stop()  # returns at once, not after an interval
    assert time.monotonic() - started < 1
    with pytest.raises(ValueError):
        IntervalTimer(name, 0)


def test_file_observer_reports_created_modified_removed(tmp_path) -> None:
    name = uid()
    (tmp_path / "old.log").write_text("present at start")
    (tmp_path / "other.txt").write_text("not matched")
    events = mq.Queue(f"{name}:*")
    observer = FileObserver(str(tmp_path / "*.log"), name, interval=0.05)
    def put(path, text: str) -> None:  # whole, at once: no round sees it half written
        staged = tmp_path / "staged.tmp"
        staged.write_text(text)
        staged.replace(path)

    try:
        new = tmp_path / "new.log"
        put(new, "1")
        message = events.get(timeout=5)
        assert message.id == f"{name}:created" and message.args == (str(new),)
        put(new, "longer")
        message = events.get(timeout=5)
        assert message.id == f"{name}:modified" and message.args == (str(new),)
        (tmp_path / "old.log").unlink()
        message = events.get(timeout=5)
        assert message.id == f"{name}:removed" and message.args == (str(tmp_path / "old.log"),)
        time.sleep(0.15)  # nothing may arrive in this time (three rounds)
        assert events.empty()  # nothing else: other.txt is not matched
    finally:
        started = time.monotonic()
        observer.stop()
        assert time.monotonic() - started < 1
    assert not observer.running
