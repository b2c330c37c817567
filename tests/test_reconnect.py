"""Clients across a broker's restart: the calls in flight when it went away raise
``NwsConnectionDroppedException``; the next call starts a new session at the same address on
its own and works (the old session's non-persistent workspaces are gone); subscriptions and
watches follow without a call; a broker that is only silent for a while keeps its session."""

from __future__ import annotations

import signal
import threading
import uuid

import pytest

from workbench import KeyValueStore, NetWorkSpace, NwsConnectionDroppedException
from workbench.client.embedded import connect
from workbench.client.pubsub import MessageBus

from .support import run_client, start_broker, wait_for

pytestmark = pytest.mark.timeout(60)


def restart(broker, tmp_path):
    """SIGKILL ``broker`` and start another on the same port."""
    broker.process.send_signal(signal.SIGKILL)
    broker.process.wait(10)
    broker.stop()
    return start_broker(tmp_path, "--port", str(broker.port))


def test_calls_in_flight_fail_and_the_next_call_reconnects(tmp_path) -> None:
    broker = start_broker(tmp_path)
    name = f"r{uuid.uuid4().hex[:8]}"
    ws = NetWorkSpace(name, broker.host, broker.port)
    kv = KeyValueStore(broker.host, broker.port)
    try:
        ws.store("before", 1)
        kv.store("k", "v")
        failures: list = []

        def blocked_fetch() -> None:
            try:
                ws.fetch("never", timeout=30)
            except Exception as exc:  # noqa: BLE001 - what the waiting caller gets
                failures.append(exc)

        waiter = threading.Thread(target=blocked_fetch)
        waiter.start()
        wait_for(lambda: ws.listVars(format="dict").get("never", (0, 0, 0))[2] == 1)
        broker.process.send_signal(signal.SIGKILL)
        waiter.join(10)
        assert len(failures) == 1 and isinstance(failures[0], NwsConnectionDroppedException)
        with pytest.raises(NwsConnectionDroppedException):
            ws.store("while down", 1)
        wait_for(lambda: ws.server._connection.lost, timeout=10)
        with pytest.raises(NwsConnectionDroppedException, match="none answers there now"):
            ws.store("while down", 1)  # a new session is tried: nobody at the address yet
        broker.process.wait(10)
        broker.stop()
        broker = start_broker(tmp_path, "--port", str(broker.port))
        ws.store("after", 2)  # a new session, opened on its own
        assert ws.fetch("after") == 2
        assert ws.fetchTry("before") is None  # the old broker's values went with it
        assert ws.server._connection.sessions == 2
        kv.store("k2", "v2")
        assert kv.get("k2").value == "v2" and kv.get("k") is None
        mine = ws.server.listWss(format="dict")[name][1]
        assert mine  # the new session owns the workspace it opened again
    finally:
        ws.close()
        kv.close()
        broker.stop()


def test_subscriptions_and_watches_follow_to_the_new_session(tmp_path) -> None:
    broker = start_broker(tmp_path)
    connection = connect(broker.host, broker.port)
    heard: list = []
    bus = MessageBus(connection, lambda identifier, value: heard.append((identifier, value)))
    try:
        bus.subscribe("sensor:*")
        watched = NetWorkSpace("watched", broker.host, broker.port, useUse=True)
        watch = watched.watch()
        broker = restart(broker, tmp_path)
        # no call needed: the connection takes a new session once a broker answers there
        wait_for(lambda: connection.sessions == 2, timeout=10)
        run_client(broker, "from workbench import mq\nmq.twitter('sensor:reading', 21.5)\n"
                           "mq.close_connection()")
        wait_for(lambda: heard, timeout=10)
        assert [identifier for identifier, _ in heard] == ["sensor:reading"]
        watched.store("x", 1)
        batch = watch.next_batch(timeout=10)
        assert any(event.get("var") == "x" for event in batch), batch
        watch.close()
        watched.close()
    finally:
        connection.close()
        broker.stop()


def test_a_broker_silent_for_a_while_keeps_the_session(tmp_path) -> None:
    broker = start_broker(tmp_path, "--heartbeat-liveness", "20")  # it keeps sessions 4 s
    ws = NetWorkSpace(f"s{uuid.uuid4().hex[:8]}", broker.host, broker.port)
    try:
        ws.store("kept", 1)
        connection = ws.server._connection
        broker.process.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: connection.broken, timeout=10)
            with pytest.raises(NwsConnectionDroppedException):
                ws.store("meanwhile", 2)
        finally:
            broker.process.send_signal(signal.SIGCONT)
        wait_for(lambda: not connection.broken, timeout=10)
        assert ws.fetch("kept") == 1 and connection.sessions == 1 and not connection.lost
    finally:
        ws.close()
        broker.stop()


def test_handles_made_and_dropped_leave_no_listener_behind(server, ws_name) -> None:
    """A process that makes a workspace handle per request (a web gateway) on one session must
    not grow the session's reconnect listeners by one per request."""
    server.openWs(ws_name)
    for _ in range(1000):
        NetWorkSpace(ws_name, server=server, useUse=True)
    assert len(server._connection._session_listeners) < 200
