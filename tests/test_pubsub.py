"""Publish/subscribe and workspace events through a real broker: ``MessageBus`` between
processes, a slow subscriber that does not hold up its publisher, and ``NetWorkSpace.watch``."""

from __future__ import annotations

import queue
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from workbench import NetWorkSpace, codec
from workbench.client.embedded import connect
from workbench.client.pubsub import MessageBus, publish_frames

from .support import spawn_client, wait_for


@pytest.fixture
def connection(broker):
    c = connect(broker.host, broker.port)
    yield c
    c.close()


def test_messages_from_another_process_arrive_once_in_order(broker, connection) -> None:
    got: queue.Queue = queue.Queue()
    bus = MessageBus(connection, lambda identifier, value: got.put((identifier, value)))
    bus.subscribe("job:*")
    bus.subscribe("*:run")  # matches too: still one delivery per message
    publisher = spawn_client(broker, textwrap.dedent("""
        from workbench.client.embedded import connect
        from workbench.client.pubsub import MessageBus
        bus = MessageBus(connect())
        for i in range(200):
            bus.publish("job:run", {"i": i})
        bus.publish("other:thing", "not for us")
        print(bus.publish("job:run", "last", wait=True))
        """))
    out, err = publisher.communicate(timeout=30)
    assert publisher.returncode == 0, err
    assert out.strip() == "1"  # one receiver: this process
    received = [got.get(timeout=10) for _ in range(201)]
    assert received == [("job:run", {"i": i}) for i in range(200)] + [("job:run", "last")]
    with pytest.raises(queue.Empty):
        got.get(timeout=0.2)


def test_a_process_does_not_hear_its_own_messages(connection) -> None:
    got = []
    bus = MessageBus(connection, lambda identifier, value: got.append(value))
    bus.subscribe("x:*")
    assert bus.publish("x:a", 1, wait=True) == 0
    time.sleep(0.2)  # nothing may arrive in this time: the broker routed it to nobody
    assert got == []


def test_a_slow_subscriber_does_not_hold_up_the_publisher(broker, connection) -> None:
    seen = []
    release = threading.Event()

    def slow(identifier: str, value) -> None:
        seen.append(value)
        release.wait(10)  # stuck until the publisher is done

    bus = MessageBus(connection, slow)
    bus.subscribe("flood:*")
    publisher = spawn_client(broker, textwrap.dedent("""
        import time
        from workbench.client.embedded import connect
        from workbench.client.pubsub import MessageBus
        bus = MessageBus(connect())
        started = time.monotonic()
        for i in range(30_000):
            bus.publish("flood:x", i)
        bus.publish("flood:x", -1, wait=True)
        print(time.monotonic() - started)
        """))
    out, err = publisher.communicate(timeout=60)
    assert publisher.returncode == 0, err
    assert float(out) < 20  # the broker absorbed it all; nothing waited for the subscriber
    release.set()
    wait_for(lambda: bus.dropped > 0 and seen and seen[-1] == -1, timeout=20)
    # what arrived is in order, and what did not is counted
    assert seen == sorted(seen[:-1]) + [-1]
    assert len(seen) + bus.dropped == 30_001


def test_watch_follows_another_process_coalescing_bursts(broker) -> None:
    ws = NetWorkSpace("watched", broker.host, broker.port)
    ws.store("before", 1)
    watch = NetWorkSpace("watched", broker.host, broker.port, useUse=True).watch()
    try:
        assert watch.snapshot == {"watched": {"before": [1, "fifo"]}}
        writer = spawn_client(broker, textwrap.dedent("""
            from workbench import NetWorkSpace
            ws = NetWorkSpace("watched", useUse=True)
            for i in range(2000):
                ws.store("x", i)
            ws.fetch("x")
            ws.deleteVar("before")
            """))
        assert writer.wait(30) == 0, writer.stderr.read()
        writer.stdout.close()
        writer.stderr.close()
        totals: dict = {}
        batches = 0
        while totals.get(("deleted", "before")) is None:
            for event in watch.next_batch(timeout=10):
                key = (event["event"], event.get("var"))
                totals[key] = totals.get(key, 0) + event["count"]
            batches += 1
        assert totals[("created", "x")] == 1
        assert totals[("stored", "x")] == 2000 and totals[("fetched", "x")] == 1
        assert batches < 100  # coalesced: far fewer batches than changes
    finally:
        watch.close()
        ws.close()


def test_watch_with_a_callback_and_close(broker) -> None:
    ws = NetWorkSpace("called", broker.host, broker.port)
    batches: queue.Queue = queue.Queue()
    watch = ws.watch(batches.put)
    ws.store("v", 1)
    first = batches.get(timeout=5)
    assert first[0]["event"] == "created" and first[0]["var"] == "v"
    watch.close()
    while not batches.empty():
        batches.get()
    ws.store("v", 2)
    with pytest.raises(queue.Empty):
        batches.get(timeout=0.3)
    ws.close()


def test_closing_the_connection_stops_the_delivery_thread(broker) -> None:
    c = connect(broker.host, broker.port)
    MessageBus(c).subscribe("x:*")
    thread = c.deliveries()
    c.close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_handler_s_requests_leave_no_socket_open_after_close(broker, connection) -> None:
    """A handler that makes requests (mq unsubscribes collected followers there) gives the
    delivery thread a socket of its own; closing the connection must close it too."""
    listener = connect(broker.host, broker.port)
    try:
        channels: queue.Queue = queue.Queue()
        bus = MessageBus(listener, lambda identifier, value: channels.put(listener.channel()))
        bus.subscribe("ask:*")
        MessageBus(connection).publish("ask:x", 1, wait=True)
        channel = channels.get(timeout=5)
        thread = listener.deliveries()
    finally:
        listener.close()
    thread.join(timeout=5)
    assert not thread.is_alive() and channel.dealer.closed


def test_status_shows_subscribers_and_their_drops(broker, connection) -> None:
    MessageBus(connection).subscribe("status:*")
    text = subprocess.run([sys.executable, "-m", "workbench", "status", "--broker",
                           broker.address], capture_output=True, text=True, timeout=30)
    assert text.returncode == 0, text.stderr
    line = next(line for line in text.stdout.splitlines() if "status:*" in line)
    assert "delivered 0" in line and "dropped 0" in line


def test_publishing_to_a_dead_broker_raises_instead_of_hanging(make_broker) -> None:
    from workbench import NwsConnectionDroppedException

    doomed = make_broker()
    connection = connect(doomed.host, doomed.port)
    bus = MessageBus(connection)
    doomed.process.kill()
    doomed.process.wait()
    outcome: list = []

    def flood() -> None:
        try:
            for i in range(20_000):
                bus.publish("x:y", i)
            outcome.append("all sent")
        except NwsConnectionDroppedException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    thread.join(15)
    assert not thread.is_alive(), "publish hung on a dead broker"
    assert isinstance(outcome[0], NwsConnectionDroppedException)
    connection.close()


def test_an_oversized_message_is_refused_before_it_is_sent(make_broker) -> None:
    from workbench import NwsMessageTooLargeException

    small = make_broker("--max-message-size", "100000")
    connection = connect(small.host, small.port)
    try:
        with pytest.raises(NwsMessageTooLargeException):
            MessageBus(connection).publish("x:y", b"z" * 200_000)
    finally:
        connection.close()



def test_a_bad_identifier_is_refused_answered_or_not(connection) -> None:
    bus = MessageBus(connection)
    for bad in ("", "x@*:a", ":a"):
        for wait in (False, True):
            with pytest.raises(ValueError):
                bus.publish(bad, 1, wait=wait)
            with pytest.raises(ValueError):
                publish_frames(connection, bad, codec.encode(1), wait=wait)
    bus.publish("x:fine", 1)  # refusals leave nothing behind
    assert bus.publish("x:fine", 2, wait=True) == 0


def test_a_message_taken_from_a_shared_queue_is_held_until_acknowledged(broker) -> None:
    """``queue_take`` leases: a consumer whose session ends before acknowledging gives the
    message back to the head of the queue; an acknowledged one is gone."""
    pattern = f"take:{time.monotonic_ns()}"

    def take_then_close(acknowledge: bool, **how):
        connection = connect(broker.host, broker.port)
        try:
            bus = MessageBus(connection)
            bus.declare_queue(pattern)
            taken = bus.queue_take(pattern, **how)
            if taken is not None and acknowledge:
                connection.acknowledge([(taken.channel, taken.request_id)], timeout=5)
            return taken and taken.value
        finally:
            connection.close()

    assert take_then_close(False, block=False) is None
    with pytest.raises(TimeoutError):
        take_then_close(False, timeout=0.1)
    publisher = connect(broker.host, broker.port)
    try:
        for value in ("a", "b"):
            MessageBus(publisher).publish(pattern, value, wait=True)
    finally:
        publisher.close()
    assert take_then_close(False, timeout=5) == "a"  # not acknowledged: back it goes
    assert take_then_close(True, timeout=5) == "a"
    assert take_then_close(True, timeout=5) == "b"
    assert take_then_close(False, block=False) is None
