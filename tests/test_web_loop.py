"""The gateway's broker calls from its event loop (``workbench.web.caller``): many at once
each answered once, a large body sent from a thread, and what happens when the broker goes
away, falls silent or is slow, or when an HTTP client leaves while its value is on the way."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import time
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from workbench import NetWorkSpace, codec
from workbench.config import LOCAL_SOCKET_ENV
from workbench.errors import NwsConnectionDroppedException
from workbench.web import calls
from workbench.web.caller import LoopCaller
from workbench.web.gateway import BrokerTimeout, Gateway

from .support import broker_status, start_broker, start_web, wait_for

pytestmark = pytest.mark.timeout(60)

#: A broker whose heartbeat takes 10 s to give up on a silent client, so that one stopped for
#: a second is slow, not gone.
PATIENT = ("--heartbeat-interval", "1", "--heartbeat-liveness", "10")


class Own:
    """A broker of one test's own, which the test may stop, kill or restart, and a gateway of
    it if asked; at the end the broker is woken (if stopped) and both are stopped."""

    def __init__(self, tmp_path, *broker_args: str, web: bool = True,
                 web_args: tuple = ()) -> None:
        self.tmp_path = tmp_path
        self.broker = start_broker(tmp_path, *broker_args)
        self.web = start_web(self.broker, tmp_path, *web_args) if web else None
        self.closing: list = []  # sessions of the test, closed first

    def signal(self, number: int) -> None:
        self.broker.process.send_signal(number)

    def restart(self) -> None:
        """Another broker on the port of this one, which was killed."""
        self.broker.process.wait(10)
        self.broker.stop()
        self.broker = start_broker(self.tmp_path, "--port", str(self.broker.port))

    def seed(self, ws: str) -> None:
        """Through the gateway: workspace ``ws`` made, and 1 stored in its variable v."""
        with self.web.client() as http:
            assert http.put(f"/api/workspaces/{ws}").status_code == 201
            assert http.post(f"/api/workspaces/{ws}/vars/v", json=1).status_code == 204

    def space(self, name: str, **options) -> NetWorkSpace:
        space = NetWorkSpace(name, self.broker.target, **options)
        self.closing.append(space)
        return space

    def close(self) -> None:
        if self.broker.process.poll() is None:
            self.signal(signal.SIGCONT)
        for session in self.closing:
            session.close()
        if self.web is not None:
            self.web.stop()
        self.broker.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A broker and a gateway (bodies up to 1 MiB) for the tests that leave them as they are."""
    mine = Own(tmp_path_factory.mktemp("loop"), web_args=("--max-body", "1m"))
    yield mine
    mine.close()


@pytest.fixture(scope="module")
def web(shared):
    return shared.web


@pytest.fixture(scope="module")
def broker(shared):
    return shared.broker


@pytest.fixture
def ws(broker):
    space = NetWorkSpace(f"l{uuid.uuid4().hex[:8]}", broker.target)
    yield space
    space.close()


def _var(space: NetWorkSpace, var: str) -> str:
    return f"/api/workspaces/{space.currentWs()}/vars/{var}"


def _calls(web) -> dict:
    with web.client() as http:
        return http.get("/api/status").json()["gateway"]["calls"]


async def _many(web, requests: list[tuple[str, str, object]], connections: int = 200) -> list:
    """Make ``requests`` (method, path, JSON body or None) all at once -> their responses."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=web.url, limits=limits, timeout=20.0) as http:
        return await asyncio.gather(*(
            http.request(method, path, json=body) if body is not None
            else http.request(method, path) for method, path, body in requests))


def _leases(broker) -> int:
    return broker_status(broker)["leases"]


# ---------------------------------------------------------------------- many at once


def test_concurrent_stores_are_each_stored_exactly_once(web, ws):
    before = _calls(web)
    answers = asyncio.run(_many(web, [("POST", _var(ws, "many"), n) for n in range(200)]))
    assert [answer.status_code for answer in answers] == [204] * 200
    stored = []
    while (value := ws.fetchTry("many")) is not None:
        stored.append(value)
    assert sorted(stored) == list(range(200))
    after = _calls(web)
    assert after["loop"] - before["loop"] >= 200 and after["threads"] == before["threads"]


def test_concurrent_fetches_hand_each_value_out_once(web, ws, broker):
    for n in range(100):
        ws.store("queue", n)
    answers = asyncio.run(_many(web, [("POST", _var(ws, "queue") + "/fetch", None)] * 150))
    taken = [answer.json()["value"] for answer in answers if answer.status_code == 200]
    assert sorted(taken) == list(range(100))
    assert sorted(answer.status_code for answer in answers).count(404) == 50
    assert ws.fetchTry("queue") is None
    # each value was acknowledged (on a later request, or the heartbeat): none goes back
    wait_for(lambda: _leases(broker) == 0, 5, message="values taken are still leased")
    assert ws.fetchTry("queue") is None


def test_mixed_calls_from_the_loop_answer_as_the_thread_did(web, ws):
    name = ws.currentWs()
    requests = [("PUT", f"/api/kv/{name}/k{n}", {"n": n}) for n in range(50)]
    requests += [("PUT", f"/api/workspaces/{name}/vars/d{n}/mode", "lifo") for n in range(20)]
    requests += [("POST", f"/api/publish/loop.{name}", n) for n in range(20)]
    answers = asyncio.run(_many(web, requests))
    assert {answer.status_code for answer in answers} == {200, 204}
    with web.client() as http:
        got = http.get(f"/api/kv/{name}/k7")
        assert got.json()["value"] == {"n": 7} and got.headers["etag"] == (
            f'"{got.json()["version"]}"')
        assert http.get(f"/api/workspaces/{name}/vars").json()["d3"]["mode"] == "lifo"
        assert http.get(f"/api/kv/{name}/none").status_code == 404
        assert http.delete(f"/api/kv/{name}/k7").status_code == 204


def test_a_large_body_goes_out_from_a_thread(web, ws):
    before = _calls(web)
    with web.client() as http:
        assert http.post(_var(ws, "big"), json="x" * (200 << 10)).status_code == 204
        assert http.post(_var(ws, "small"), json="y" * 100).status_code == 204
    after = _calls(web)
    assert after["threads"] == before["threads"] + 1
    assert after["loop"] == before["loop"] + 2  # the small store and the first status
    assert ws.fetch("big") == "x" * (200 << 10)
    assert ws.fetch("small") == "y" * 100


def test_a_large_value_is_shown_and_taken_once(web, ws, broker):
    """A large value's view is made in a thread (the loop only asks): found, then taken and
    acknowledged."""
    ws.store("large", b"z" * (300 << 10))
    with web.client() as http:
        found = http.get(_var(ws, "large")).json()
        assert found["kind"] == "bytes" and found["size"] == 300 << 10
        taken = http.post(_var(ws, "large") + "/fetch").json()
        assert base64.b64decode(taken["value"]) == b"z" * (300 << 10)
    assert ws.fetchTry("large") is None
    wait_for(lambda: _leases(broker) == 0, 5, message="the value taken is still leased")


# ---------------------------------------------------------------------- the broker goes away


@pytest.fixture
def own(tmp_path):
    """``own(*broker_args, web=True)`` -> an ``Own``."""
    made: list[Own] = []
    yield lambda *args, **options: made.append(Own(tmp_path, *args, **options)) or made[-1]
    for each in made:
        each.close()


def test_calls_in_flight_fail_when_the_broker_is_killed_then_it_serves_again(own):
    mine = own()
    web = mine.web
    mine.seed("k")

    async def in_flight() -> tuple[list, float]:
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(base_url=web.url, limits=limits, timeout=20) as http:
            requests = [http.post("/api/workspaces/k/vars/v", json=n) for n in range(20)]
            requests += [http.get("/api/workspaces/k/vars/v") for _ in range(20)]
            tasks = [asyncio.ensure_future(request) for request in requests]
            await asyncio.sleep(0.3)  # sent on to the stopped broker, unanswered
            assert not any(task.done() for task in tasks)
            mine.signal(signal.SIGKILL)
            killed = time.monotonic()
            answers = await asyncio.gather(*tasks)
            return answers, time.monotonic() - killed

    mine.signal(signal.SIGSTOP)
    answers, took = asyncio.run(in_flight())
    assert {answer.status_code for answer in answers} == {502}
    assert {answer.json()["exception"] for answer in answers} == {
        "NwsConnectionDroppedException"}
    assert took < 3
    with web.client() as http:
        assert http.post("/api/workspaces/k/vars/v", json=2).status_code == 502
        mine.restart()
        # a new session at the same address: the calls from the loop go through it
        wait_for(lambda: http.put("/api/workspaces/k").status_code == 201, 10, interval=0.1)
        assert http.post("/api/workspaces/k/vars/v", json=3).status_code == 204
        assert http.get("/api/workspaces/k/vars/v").json()["value"] == 3
        assert http.post("/api/workspaces/k/vars/v/fetch").json()["value"] == 3
    assert web.stop() == 0
    assert "Traceback" not in web.log() and "never retrieved" not in web.log()


def test_a_silent_broker_answers_502_and_the_value_stays(own):
    """The heartbeat gives the broker up (0.6 s): the fetch waiting fails, and is cancelled,
    so the value it took when the broker woke up goes back (if the broker did not end the
    gateway's silent session first, which hands it back too)."""
    mine = own()
    space = mine.space("silent", useUse=True)  # the workspace outlives its session
    space.store("v", "kept")
    mine.signal(signal.SIGSTOP)
    started = time.monotonic()
    with mine.web.client() as http:
        answer = http.post("/api/workspaces/silent/vars/v/fetch")
        assert answer.status_code == 502, answer.text
        assert time.monotonic() - started < 5
        mine.signal(signal.SIGCONT)
        # (the broker may end the silent sessions as it wakes up, this test's too: the
        # gateway's calls take a new one)
        wait_for(lambda: http.get("/api/workspaces/silent/vars/v").status_code == 200, 10,
                 interval=0.1)
        wait_for(lambda: _leases(mine.broker) == 0, 5,
                 message="the cancelled fetch's value is still leased")
        assert http.post("/api/workspaces/silent/vars/v/fetch").json()["value"] == "kept"


def test_a_fetch_whose_client_left_puts_the_value_back(own):
    """The client hangs up while its fetchTry is at the (stopped) broker: the value the fetch
    took when the broker woke up is not acknowledged but handed back."""
    mine = own(*PATIENT)
    space = mine.space("left")
    space.store("v", "kept")
    with mine.web.client() as http:  # the gateway's channel is open before the broker stops
        assert http.get("/api/workspaces/left/vars/v").status_code == 200
    parts = urlsplit(mine.web.url)
    mine.signal(signal.SIGSTOP)
    client = socket.create_connection((parts.hostname, parts.port))
    client.sendall(b"POST /api/workspaces/left/vars/v/fetch HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Length: 0\r\n\r\n")
    time.sleep(0.3)  # the fetch is at the broker's socket
    client.close()
    time.sleep(0.3)  # the gateway saw the client go
    mine.signal(signal.SIGCONT)
    wait_for(lambda: _leases(mine.broker) == 0, 5, message="the value is still leased")
    assert space.fetchTry("v") == "kept"
    with mine.web.client() as http:  # and the gateway goes on
        assert http.post("/api/workspaces/left/vars/v", json=1).status_code == 204


def test_the_gateway_stops_cleanly_with_calls_in_flight(own):
    mine = own()
    web = mine.web
    mine.seed("t")
    mine.signal(signal.SIGSTOP)

    async def stop_meanwhile() -> list:
        async with httpx.AsyncClient(base_url=web.url, timeout=20) as http:
            tasks = [asyncio.ensure_future(http.get("/api/workspaces/t/vars/v"))
                     for _ in range(5)]
            await asyncio.sleep(0.2)
            web.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks, return_exceptions=True)

    started = time.monotonic()
    answers = asyncio.run(stop_meanwhile())
    assert web.process.wait(10) == 0
    assert time.monotonic() - started < 8
    assert all(isinstance(answer, httpx.Response) and answer.status_code == 502
               for answer in answers), answers
    assert "Traceback" not in web.log()


def test_the_loop_speaks_curve(own, monkeypatch):
    """Over TCP to a CURVE broker every frame the loop sends and reads is sealed."""
    monkeypatch.setenv(LOCAL_SOCKET_ENV, "0")  # no move to the broker's plain Unix socket
    mine = own("--curve")
    answers = asyncio.run(_many(mine.web, [("PUT", "/api/kv/c/k", n) for n in range(50)]))
    assert {answer.status_code for answer in answers} == {200}
    versions = {answer.json()["version"] for answer in answers}
    assert len(versions) == 50  # every write made a version of its own
    with mine.web.client() as http:
        assert http.get("/api/kv/c/k").json()["version"] == max(versions)
        assert http.get("/api/status").json()["gateway"]["calls"]["threads"] == 0


# ---------------------------------------------------------------------- the caller itself


def test_a_call_the_broker_does_not_answer_times_out_and_takes_nothing(own):
    """LoopCaller in this process: a stopped broker's fetchTry ends in BrokerTimeout (504)
    after the caller's timeout; it was cancelled, so the value stays."""
    mine = own(*PATIENT, web=False)
    gateway = Gateway(mine.broker.target)
    mine.closing.append(gateway)
    mine.space("slow").store("v", "kept")

    async def scenario() -> float:
        caller = LoopCaller(gateway.connection, timeout=0.5)
        try:
            assert (await caller.call(calls.find("slow", "v", None))).frames
            mine.signal(signal.SIGSTOP)
            started = time.monotonic()
            with pytest.raises(BrokerTimeout, match="did not answer within 0.5 s"):
                await caller.call(calls.fetch("slow", "v", None))
            took = time.monotonic() - started
            mine.signal(signal.SIGCONT)
            assert (await caller.call(calls.status()))["leases"] == 0
            return took
        finally:
            await caller.aclose()

    assert 0.5 <= asyncio.run(scenario()) < 2
    assert mine.closing[1].fetchTry("v") == "kept"


async def _caller(gateway: Gateway) -> LoopCaller:
    return LoopCaller(gateway.connection)


def test_the_caller_reconnects_after_a_restart_and_refuses_once_closed(own):
    mine = own(web=False)
    gateway = Gateway(mine.broker.target)
    mine.closing.append(gateway)
    loop = asyncio.new_event_loop()
    try:
        caller = loop.run_until_complete(_caller(gateway))
        loop.run_until_complete(caller.call(calls.use_workspace("r")))
        loop.run_until_complete(caller.call(calls.store("r", "v", codec.encode("x"))))
        watched = caller.watched
        mine.signal(signal.SIGSTOP)

        async def killed_meanwhile() -> None:
            pending = asyncio.ensure_future(caller.call(calls.status()))
            await asyncio.sleep(0.1)
            mine.signal(signal.SIGKILL)
            with pytest.raises(NwsConnectionDroppedException):
                await pending

        loop.run_until_complete(killed_meanwhile())
        # the closed socket is out of the loop's watch
        assert caller.watched is None and not loop.remove_reader(watched)
        mine.restart()

        async def reconnected() -> bool:
            try:
                await caller.call(calls.use_workspace("r"))
            except NwsConnectionDroppedException:
                await asyncio.sleep(0.1)
                return False
            return True

        wait_for(lambda: loop.run_until_complete(reconnected()), 10)
        assert gateway.connection.sessions == 2
        listed = loop.run_until_complete(caller.call(calls.list_workspaces()))
        assert listed["r"]["variables"] == 0  # the new broker's workspace
        loop.run_until_complete(caller.aclose())
        with pytest.raises(NwsConnectionDroppedException, match="stopping"):
            loop.run_until_complete(caller.call(calls.status()))
    finally:
        loop.close()


def test_the_calls_describe_their_requests():
    """The pure part: what a call sends and what it makes of a reply."""
    put = calls.kv_put("ns", "key", [b"frame"], 1.5, "cas", 7)
    assert put.args == [b"ns", b"key", b"cas", b"1.5", b"7"] and put.size == 17
    assert calls.kv_incr("ns", "k", -3).args[2:] == [b"decr", b"3"]
    assert calls.fetch("w", "v", None).leased and not calls.find("w", "v", None).leased
    with pytest.raises(ValueError):
        calls.publish("bad@:x", [b"x"])
    listed = calls.list_variables("w").answer(0, b"\0" * 8 + json.dumps(
        [["v", 2, 0, 1, "fifo"]]).encode(), [])
    assert listed == {"v": {"name": "v", "values": 2, "fetchers": 0, "finders": 1,
                            "mode": "fifo"}}
