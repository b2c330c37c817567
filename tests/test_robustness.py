"""Bad input and hard stops: random frames, random bytes, oversized messages, the memory cap,
signals, and the broker's log lines and status report."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import zmq

from workbench import (
    NetWorkSpace, NwsConnectionDroppedException, NwsMemoryException,
    NwsMessageTooLargeException, NwsServer,
)
from workbench.protocol import HEADER, PROTOCOL_VERSION, Op, request_head

from .support import wait_for


def status(broker) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "workbench", "status", "--broker", broker.address, "--json"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def random_message(rng: random.Random) -> list[bytes]:
    """A message that is wrong in one of the ways a broken or hostile client could be."""
    def blob(n):
        return rng.randbytes(rng.randrange(n))

    kind = rng.randrange(6)
    request_id = rng.randrange(1 << 32)
    if kind == 0:  # random frames
        return [blob(64) for _ in range(rng.randrange(1, 5))]
    if kind == 1:  # a truncated header
        return [HEADER.pack(PROTOCOL_VERSION, Op.STORE, 0, request_id)[:rng.randrange(8)]]
    if kind == 2:  # an unknown op code
        return [HEADER.pack(PROTOCOL_VERSION, rng.choice([0, 6, 99, 255]), 0, request_id)]
    if kind == 3:  # a known op with garbage arguments
        op = rng.choice(list(Op))
        return [request_head(op, request_id, [blob(20) for _ in range(rng.randrange(5))],
                             rng.randrange(4))] + [blob(30) for _ in range(rng.randrange(3))]
    if kind == 4:  # a store whose value descriptor lies about its frames
        return [request_head(Op.STORE, request_id, [b"__default", b"v", blob(12)])]
    return [HEADER.pack(rng.randrange(256), rng.randrange(256), rng.randrange(65536),
                        request_id) + blob(40)]


def test_random_frames_and_bytes_leave_the_broker_serving(broker, ws):
    rng = random.Random(20261121)
    context = zmq.Context.instance()
    fuzzers = []
    for _ in range(4):
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(broker.address)
        fuzzers.append(sock)
    sent = 0
    for i in range(4000):
        fuzzers[i % 4].send_multipart(random_message(rng))
        sent += 1
        if i % 500 == 0:  # everyone else is still served, in the middle of it all
            ws.store("alive", i)
            assert ws.fetch("alive", timeout=5) == i
    for _ in range(20):  # raw bytes on the port: not even ZeroMQ
        with socket.create_connection((broker.host, broker.port), timeout=5) as raw:
            raw.sendall(rng.randbytes(rng.randrange(1, 2000)))
    replies = 0
    for sock in fuzzers:
        while sock.poll(200):
            frames = sock.recv_multipart()
            assert frames[0][0] == PROTOCOL_VERSION  # a well-formed reply, never garbage
            replies += frames[0][1] >= 16
        sock.close()
    assert replies > 500  # requests that could be correlated got an error reply
    assert broker.process.poll() is None
    ws.store("after", "fine")
    assert ws.fetch("after", timeout=5) == "fine"
    counters = status(broker)["counters"]
    assert counters["malformed"] > 500
    assert counters["internal_errors"] == 0


def test_another_protocol_version_is_told_what_to_do(broker):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(broker.address)
    sock.send(HEADER.pack(PROTOCOL_VERSION + 1, Op.HELLO, 0, 77) + b"{}")
    assert sock.poll(5000)
    head = sock.recv()
    sock.close()
    assert HEADER.unpack_from(head)[1:] == (16, 0, 77)
    assert b"install the same workbench version on both sides" in head


def test_oversized_message_gets_a_clear_error(make_broker, monkeypatch):
    monkeypatch.setenv("WORKBENCH_SHM", "0")  # through the socket, as from another machine
    broker = make_broker("--max-message-size", "1M")
    ws = NetWorkSpace("big", broker.host, broker.port)
    with pytest.raises(NwsMessageTooLargeException, match="--max-message-size 1.0 MiB"):
        ws.store("v", b"x" * (2 << 20))  # refused by the client before sending
    from workbench.protocol import Op
    from workbench.codec import encode

    channel = ws._connection.channel()  # a client that does not check: the broker refuses
    request_id = channel.send(Op.STORE, [b"big", b"v"], encode(b"x" * (2 << 20)))
    head, _ = channel.receive(request_id, time.monotonic() + 10, lambda: None)
    assert head[1] == 23 and b"--max-message-size 1.0 MiB" in head
    ws.store("v", b"x" * 1000)
    assert ws.fetch("v") == b"x" * 1000
    assert status(broker)["counters"]["oversized"] == 1
    ws.close()


def test_memory_cap_refuses_stores_and_keeps_the_broker_alive(make_broker):
    broker = make_broker("--max-memory", "3M")
    ws = NetWorkSpace("capped", broker.host, broker.port)
    ws.store("v", b"a" * (1 << 20))
    ws.store("v", b"b" * (1 << 20))
    with pytest.raises(NwsMemoryException, match="--max-memory"):
        ws.store("v", b"c" * (2 << 20))
    assert ws.listVars(format="dict")["v"][1] == 2  # the refused store changed nothing
    assert ws.fetch("v") == b"a" * (1 << 20)
    wait_for(lambda: ws.store("v", b"d" * (1 << 20)) is None)  # room again once acknowledged
    assert broker.process.poll() is None
    ws.close()


def test_sigterm_stops_cleanly_and_tells_blocked_clients(make_broker):
    broker = make_broker()
    ws = NetWorkSpace("doomed", broker.host, broker.port)
    box = {}

    def blocked():
        try:
            ws.fetch("never", timeout=20)
        except Exception as exc:  # noqa: BLE001 - inspected below
            box["error"] = exc

    thread = threading.Thread(target=blocked, daemon=True)
    thread.start()
    wait_for(lambda: ws.listVars(format="dict").get("never", (0, 0, 0))[2] == 1)
    assert broker.stop() == 0
    thread.join(10)
    assert isinstance(box["error"], NwsConnectionDroppedException)
    assert "shut down" in str(box["error"])
    log = broker.log()
    assert "signal received; stopping" in log and "workbench broker stopped" in log
    ws._connection.close()


def test_sigint_stops_cleanly(make_broker):
    broker = make_broker()
    broker.process.send_signal(signal.SIGINT)
    assert broker.process.wait(10) == 0
    assert "workbench broker stopped" in broker.log()


def test_one_log_line_per_client_connect_and_disconnect(make_broker):
    broker = make_broker()
    server = NwsServer(broker.host, broker.port)
    label = server._connection.label
    server.close()
    wait_for(lambda: f"client disconnected: {label} (closed)" in broker.log())
    log = broker.log()
    assert log.count(f"client connected: {label}") == 1
    assert log.count(f"client disconnected: {label}") == 1
    assert " INFO " in log.splitlines()[-1]


def test_status_reports_clients_workspaces_and_limits(broker, ws):
    ws.store("v", b"12345")
    info = status(broker)
    assert info["workspaces"] >= 2 and info["values"] >= 1
    assert info["memory"] >= 5
    assert info["heartbeat_interval"] == 0.2 and info["heartbeat_liveness"] == 3
    assert any(ws.currentWs() in client["owned"] for client in info["clients"])
    text = subprocess.run([sys.executable, "-m", "workbench", "status", "--broker",
                           broker.address], capture_output=True, text=True, timeout=30)
    assert text.returncode == 0
    assert f"broker     {broker.address}" in text.stdout
    assert "dead after 0.6 s of silence" in text.stdout


def test_status_without_a_broker_fails_clearly():
    result = subprocess.run([sys.executable, "-m", "workbench", "status", "--broker",
                             "127.0.0.1:9", "--timeout", "0.3"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "no broker answered at tcp://127.0.0.1:9 (connection refused)" in result.stderr
    assert "start one with `workbench broker --host 127.0.0.1 --port 9`" in result.stderr


def test_busy_port_is_reported(broker):
    result = subprocess.run([sys.executable, "-m", "workbench", "broker", "--port",
                             str(broker.port)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{broker.port}" in result.stderr


def test_python_dash_m_and_help():
    result = subprocess.run([sys.executable, "-m", "workbench", "--help"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0
    for command in ("broker", "status"):
        assert command in result.stdout
    result = subprocess.run([sys.executable, "-m", "workbench", "broker", "--help"],
                            capture_output=True, text=True, timeout=30)
    assert "--max-memory" in result.stdout and "--heartbeat-liveness" in result.stdout


def test_client_notices_a_killed_broker_at_once(make_broker):
    broker = make_broker()
    ws = NetWorkSpace("orphan", broker.host, broker.port)
    broker.process.send_signal(signal.SIGKILL)
    broker.process.wait()
    try:
        started = time.monotonic()
        with pytest.raises(NwsConnectionDroppedException, match="went away|closed the connection"):
            ws.fetch("never", timeout=20)
        assert time.monotonic() - started < 2
    finally:
        ws._connection.close()


def test_client_notices_a_hung_broker_by_its_silence(make_broker):
    broker = make_broker()
    ws = NetWorkSpace("orphan", broker.host, broker.port)
    broker.process.send_signal(signal.SIGSTOP)  # connections stay open; nothing answers
    try:
        started = time.monotonic()
        with pytest.raises(NwsConnectionDroppedException, match="has not answered"):
            ws.fetch("never", timeout=20)
        assert time.monotonic() - started < 10
    finally:
        broker.process.send_signal(signal.SIGCONT)
        ws._connection.close()


def test_closed_sessions_leave_no_phantoms(make_broker):
    """A heartbeat that arrives after the goodbye must not bring a closed session back."""
    broker = make_broker()
    for _ in range(8):
        NwsServer(broker.host, broker.port).close()
    time.sleep(0.3)  # no session may come back in this time from a heartbeat that was late
    info = status(broker)
    assert [c["label"] for c in info["clients"] if "without hello" in c["label"]
            or c["label"].startswith("session ")] == []
    assert len(info["clients"]) == 1  # the status command's own session
    assert "without hello" not in broker.log()
