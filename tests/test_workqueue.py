"""A workspace as a work queue, against a real broker: encoded values in groups and alone,
fetches in flight together, leases that come back when their holder's session ends."""

from __future__ import annotations

import pytest

from workbench import codec
from workbench.client import workqueue
from workbench.client.connection import Connection
from workbench.client.workqueue import WorkQueue
from workbench.errors import NwsNoWorkSpaceException
from workbench.protocol import Op


@pytest.fixture
def connection(broker):
    c = Connection(broker.address, 5.0)
    yield c
    c.close()


def values(reply) -> list:
    return [codec.decode(frames) for frames, _ in reply.values]


def test_values_go_in_groups_and_come_out_in_order(connection, ws, ws_name, monkeypatch):
    monkeypatch.setattr(workqueue, "STORE_GROUP", 3)
    queue = WorkQueue(connection, ws_name)
    big = b"x" * (2 << 20)  # alone, and through shared memory where the broker shares it
    queue.store_all("q", [codec.encode(v) for v in [1, 2, 3, 4, big, 5]])
    assert ws.fetch_many_try("q", 100) == [1, 2, 3, 4, big, 5]
    request = queue.send_fetch("q", 10, block=False)
    assert queue.receive((request,)) == (request, (), False)  # nothing there, not waiting


def test_fetches_in_flight_answer_in_any_order(connection, ws, ws_name):
    queue = WorkQueue(connection, ws_name)
    first = queue.send_fetch("a", 5)
    second = queue.send_fetch("b", 5)
    ws.store("b", "to b")
    reply = queue.receive((first, second))
    assert reply.request_id == second and values(reply) == ["to b"]
    stored = queue.send_store("a", codec.encode("to a"), acks=(second,))
    reply = queue.receive((first,))
    assert values(reply) == ["to a"] and reply.values[0][1] == 0  # returned by nobody
    assert queue.receive((stored,)) == (stored, (), False)
    queue.acknowledge(first)


def test_idle_callers_are_dealt_a_share_each_and_told_so(broker, connection, ws, ws_name):
    """Two workers blocked on the queue as six values come together: each takes a share (of
    their bytes), in order, and knows it was dealt; a caller alone takes them all."""
    other = Connection(broker.address, 5.0)
    try:
        older, newer = WorkQueue(connection, ws_name), WorkQueue(other, ws_name)
        older_request = older.send_fetch("q", 100)
        connection.call(Op.HEARTBEAT, [])  # answered in order: the fetch waits at the broker
        newer_request = newer.send_fetch("q", 100)
        newer.store_all("q", [codec.encode(v) for v in range(6)])  # after it, on its socket
        first, second = newer.receive((newer_request,)), older.receive((older_request,))
        assert first.dealt and second.dealt
        assert values(first) and values(second)
        assert values(first) + values(second) == list(range(6))  # the newest caller first
        alone = older.send_fetch("q", 100)
        connection.call(Op.HEARTBEAT, [])
        newer.store_all("q", [codec.encode(v) for v in range(3)])
        reply = older.receive((alone,))
        assert values(reply) == [0, 1, 2] and not reply.dealt
        for queue, request in ((newer, newer_request), (older, older_request),
                               (older, alone)):
            queue.acknowledge(request)
    finally:
        other.close()


def test_a_lease_never_acknowledged_comes_back_when_the_session_ends(broker, ws, ws_name):
    holder = Connection(broker.address, 5.0)
    queue = WorkQueue(holder, ws_name)
    ws.store("farewell", "token")
    assert values(queue.receive((queue.send_fetch("farewell", 1, block=False),))) == ["token"]
    watcher = Connection(broker.address, 5.0)
    try:
        waiting = WorkQueue(watcher, ws_name)
        request = waiting.send_fetch("farewell", 1)
        holder.close()  # however a session ends, its leases go back
        reply = waiting.receive((request,))
        assert values(reply) == ["token"] and reply.values[0][1] == 1  # its holder ended
    finally:
        watcher.close()
        holder.close()


def test_ending_the_sessions_of_a_process_seen_dead(connection):
    queue = WorkQueue(connection, "unused")
    assert queue.end_session("no-such-host", 4242, timeout=5.0) == 0


def test_errors_raise_as_their_exceptions(connection):
    queue = WorkQueue(connection, "no_such_workspace_here")
    with pytest.raises(NwsNoWorkSpaceException):
        queue.store("v", codec.encode(1))
    request = queue.send_fetch("v", 1)
    with pytest.raises(NwsNoWorkSpaceException):
        queue.receive((request,))
