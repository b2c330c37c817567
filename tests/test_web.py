"""The HTTP/JSON gateway (``workbench web``) against a real broker: each route answers as the
Python method it stands for, values cross between JSON and Python intact, errors carry the
Python exception's message with the right status, events stream, and the token keeps out who
lacks it."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from workbench import KeyValueStore, NetWorkSpace
from workbench.web.openapi import document
from workbench.web.server import WebSettings, choose_token

from .support import broker_status, read_line, start_broker, start_web, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = start_broker(tmp_path_factory.mktemp("web"), "--max-memory", "2M")
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def web(broker, tmp_path_factory):
    web = start_web(broker, tmp_path_factory.mktemp("gateway"), "--max-body", "64k")
    yield web
    web.stop()


@pytest.fixture
def http(web):
    with web.client() as client:
        yield client


@pytest.fixture
def ws(broker):
    """A workspace of a Python client, with a fresh name."""
    space = NetWorkSpace(f"w{uuid.uuid4().hex[:8]}", broker.target)
    yield space
    space.close()


def _path(space: NetWorkSpace, var: str = "") -> str:
    return f"/api/workspaces/{space.currentWs()}" + (f"/vars/{var}" if var else "")


# ---------------------------------------------------------------------- values both ways


@pytest.mark.parametrize("value", [{"a": [1, 2.5, None], "b": {"c": True}}, [1, "two", 3.0],
                                   2.5, True, False, None, "text ü", 42, -7])
def test_json_stored_over_http_is_what_python_fetches(http, ws, value):
    answer = http.post(_path(ws, "x"), content=json.dumps(value))  # json=None sends nothing
    assert answer.status_code == 204, answer.text
    fetched = ws.fetch("x", timeout=5)
    assert fetched == value and type(fetched) is type(value)


def test_python_values_come_out_as_json_views(http, ws):
    ws.store("text", "héllo")
    ws.store("number", 12345678901234567890)
    ws.store("raw", b"\x00\xffbytes")
    ws.store("mapping", {"k": (1, 2)})
    views = {var: http.get(_path(ws, var)).json() for var in ("text", "number", "raw", "mapping")}
    assert views["text"] == {"kind": "text", "value": "héllo"}
    assert views["number"] == {"kind": "int", "value": 12345678901234567890}
    assert views["raw"]["kind"] == "bytes" and views["raw"]["encoding"] == "base64"
    assert base64.b64decode(views["raw"]["value"]) == b"\x00\xffbytes"
    # a pickle is never unpickled by the gateway: its type's name and size
    assert views["mapping"]["kind"] == "pickle" and views["mapping"]["type"] == "dict"
    assert views["mapping"]["size"] > 0 and "value" not in views["mapping"]


def test_pickled_values_are_named_without_being_run(http, ws, tmp_path):
    """A pickle that would run code when loaded is shown by name, and the code never runs."""
    marker = tmp_path / "ran"
    ws.store("evil", _Evil(str(marker)))
    shown = http.get(_path(ws, "evil")).json()
    # named by what rebuilds it, which a babelfish would call: the gateway does not
    assert shown == {"kind": "pickle", "type": "posix.system", "size": shown["size"]}
    time.sleep(0.2)
    assert not marker.exists()
    import numpy

    ws.store("array", numpy.arange(12.0).reshape(3, 4))
    assert http.get(_path(ws, "array")).json()["type"] == "numpy.ndarray"


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


# ---------------------------------------------------------------------- workspaces and variables


def test_workspaces_and_variables_are_listed_as_the_dict_forms(http, ws):
    ws.store("a", 1)
    ws.store("a", 2)
    ws.declare("b", "lifo")
    listed = http.get("/api/workspaces").json()[ws.currentWs()]
    assert listed["persistent"] is False and listed["variables"] == 2
    assert sorted(listed["vars"]) == ["a", "b"] and listed["owner"]
    variables = http.get(_path(ws) + "/vars").json()
    assert variables["a"] == {"name": "a", "values": 2, "fetchers": 0, "finders": 0,
                              "mode": "fifo"}
    assert variables["b"]["mode"] == "lifo"
    ws.store("long", b"\x01" * 1000)
    previews = http.get(_path(ws) + "/vars", params={"preview": "1"}).json()
    assert previews["a"]["preview"] == {"kind": "int", "value": 1}
    assert "preview" not in previews["b"]  # empty
    shortened = previews["long"]["preview"]
    assert shortened["truncated"] and shortened["size"] == 1000
    assert base64.b64decode(shortened["value"]) == b"\x01" * 200  # still base64


def test_status_names_the_gateways_own_sessions(http, broker):
    answer = http.get("/api/status").json()
    labels = {client["label"] for client in answer["clients"]}
    assert len(answer["gateway"]["sessions"]) == 2
    assert set(answer["gateway"]["sessions"]) <= labels


def test_put_and_delete_a_workspace(http, broker):
    name = f"made{uuid.uuid4().hex[:6]}"
    made = http.put(f"/api/workspaces/{name}")
    assert made.status_code == 201 and made.json() == {"name": name, "created": True}
    assert http.put(f"/api/workspaces/{name}").status_code == 200
    space = NetWorkSpace(name, broker.target, useUse=True, create=False)
    space.store("v", "from python")
    assert http.get(f"/api/workspaces/{name}/vars/v").json()["value"] == "from python"
    space.close()
    assert http.delete(f"/api/workspaces/{name}").status_code == 204
    gone = http.delete(f"/api/workspaces/{name}")
    assert gone.status_code == 404 and gone.json()["exception"] == "NwsNoWorkSpaceException"


def test_declare_and_delete_a_variable(http, ws):
    assert http.put(_path(ws, "v") + "/mode", json="lifo").status_code == 204
    for value in (1, 2, 3):
        http.post(_path(ws, "v"), json=value)
    assert http.post(_path(ws, "v") + "/fetch").json()["value"] == 3  # lifo
    conflict = http.put(_path(ws, "v") + "/mode", json="fifo")
    assert conflict.status_code == 409
    assert conflict.json()["exception"] == "NwsDeclarationFailedException"
    bad = http.put(_path(ws, "v") + "/mode", json="sideways")
    assert bad.status_code == 400 and "illegal mode" in bad.json()["error"]
    assert http.delete(_path(ws, "v")).status_code == 204
    assert "v" not in ws.listVars(format="dict")


# ---------------------------------------------------------------------- find and fetch


def test_find_leaves_and_fetch_takes(http, ws):
    ws.store("v", "only")
    assert http.get(_path(ws, "v")).json()["value"] == "only"
    assert http.post(_path(ws, "v") + "/fetch").json()["value"] == "only"
    empty = http.get(_path(ws, "v"))
    assert empty.status_code == 404 and "holds no value" in empty.json()["error"]
    assert http.post(_path(ws, "v") + "/fetch").status_code == 404


def test_a_wait_returns_a_value_stored_meanwhile(http, ws):
    threading.Timer(0.3, ws.store, ("later", "stored meanwhile")).start()
    started = time.monotonic()
    answer = http.post(_path(ws, "later") + "/fetch", params={"wait": "10"})
    assert answer.status_code == 200 and answer.json()["value"] == "stored meanwhile"
    assert time.monotonic() - started < 5


def test_a_wait_that_runs_out_answers_408_and_takes_nothing(http, ws, broker):
    answer = http.post(_path(ws, "none") + "/fetch", params={"wait": "0.3"})
    assert answer.status_code == 408 and answer.json()["exception"] == "NwsTimeoutException"
    wait_for(lambda: broker_status(broker)["waiting"] == 0, 5,
             message="the broker still has the cancelled fetch waiting")
    ws.store("none", "kept")
    assert ws.fetchTry("none") == "kept"  # the cancelled fetch took nothing
    assert http.get(_path(ws, "none"), params={"wait": "0.2"}).status_code == 408


def test_a_client_that_gives_up_its_wait_strands_nothing(http, ws, broker, web):
    """A fetch whose HTTP client left holds no broker call for longer than a slice, and a
    value stored afterwards stays for whoever fetches it next."""
    with web.client(timeout=0.5) as impatient:
        with pytest.raises(httpx.TimeoutException):
            impatient.post(_path(ws, "later") + "/fetch", params={"wait": "30"})
    wait_for(lambda: broker_status(broker)["waiting"] == 0, 5,
             message="the gateway kept waiting for a client that left")
    ws.store("later", "precious")
    time.sleep(1.5)  # a slice: a wait left behind would have taken it by now
    assert ws.fetchTry("later") == "precious"


def test_many_waits_do_not_hold_up_other_requests(web, ws, http):
    """Waiting requests have threads of their own: 70 of them (more than the gateway's
    threads for other calls) leave the rest answering at once."""
    import asyncio

    async def wait_many() -> list[int]:
        async with httpx.AsyncClient(base_url=web.url, timeout=20) as client:
            waits = [client.get(_path(ws, "never"), params={"wait": "3"}) for _ in range(70)]

            async def meanwhile() -> float:
                await asyncio.sleep(0.5)
                started = time.monotonic()
                assert (await client.get("/api/status")).status_code == 200
                return time.monotonic() - started

            answers = await asyncio.gather(meanwhile(), *waits)
            assert answers[0] < 1.0
            return [answer.status_code for answer in answers[1:]]

    assert asyncio.run(wait_many()) == [408] * 70


def test_bad_requests_say_what_to_do(http, ws, web):
    assert http.get(_path(ws, "v"), params={"wait": "soon"}).status_code == 400
    not_json = http.post(_path(ws, "v"), content=b"{oops", headers={
        "content-type": "application/json"})
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
    empty = http.post(_path(ws, "v"), content=b"")
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    missing = http.get("/api/workspaces/no-such-ws/vars/v")
    assert missing.status_code == 404
    assert missing.json()["error"].startswith("no workspace 'no-such-ws'")


def test_numbers_json_cannot_carry_are_refused(http, ws):
    for text in ("NaN", "[1, Infinity]", "-Infinity", "1e400"):
        answer = http.post(_path(ws, "n"), content=text)
        assert answer.status_code == 400 and "not JSON" in answer.json()["error"], text
    assert ws.listVars(format="dict").get("n", ("n", 0))[1] == 0


def test_every_answer_is_json(http):
    missing = http.get("/api/no/such/route")
    assert missing.status_code == 404 and missing.json()["status"] == 404
    wrong = http.patch("/api/workspaces/anything")
    assert wrong.status_code == 405 and wrong.json()["status"] == 405
    assert set(wrong.headers["allow"].split(", ")) == {"PUT", "DELETE"}


def test_pages_of_other_sites_cannot_use_the_gateway(http, ws, web):
    """A page elsewhere can make the browser send a request, and on loopback without a
    token nothing else would stop it: a cross-site write is refused, and so is any request
    addressed by a name that is not a loopback one (DNS rebinding)."""
    port = urlsplit(web.url).port
    cross = http.post(_path(ws, "planted"), content='"from another site"',
                      headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403 and "another site" in cross.json()["error"]
    same = http.post(_path(ws, "mine"), content='"from the page"',
                     headers={"Origin": f"http://127.0.0.1:{port}"})
    assert same.status_code == 204
    assert "planted" not in ws.listVars(format="dict")
    rebound = http.get("/api/workspaces", headers={"Host": f"evil.example:{port}"})
    assert rebound.status_code == 403 and "loopback" in rebound.json()["error"]
    assert http.get("/api/workspaces", headers={"Host": f"localhost:{port}"}).status_code == 200


def test_a_body_over_the_cap_is_refused_unread(http, ws):
    big = http.post(_path(ws, "v"), json="x" * (70 << 10))
    assert big.status_code == 413 and "--max-body" in big.json()["error"]

    def chunks():  # no Content-Length: the cap is counted as the body arrives
        for _ in range(20):
            yield b'"' + b"y" * (8 << 10)

    streamed = http.post(_path(ws, "v"), content=chunks())
    assert streamed.status_code == 413
    assert ws.listVars(format="dict").get("v", ("v", 0))[1] == 0


def test_the_memory_cap_answers_507(http, ws):
    answer = http.post(_path(ws, "big"), json="z" * (60 << 10))
    for _ in range(60):
        if answer.status_code != 204:
            break
        answer = http.post(_path(ws, "big"), json="z" * (60 << 10))
    assert answer.status_code == 507 and answer.json()["exception"] == "NwsMemoryException"
    ws.deleteVar("big")


# ---------------------------------------------------------------------- key-value


def test_key_value_versions_are_etags(http, broker):
    ns = f"kv{uuid.uuid4().hex[:6]}"
    put = http.put(f"/api/kv/{ns}/k", json={"v": 1})
    assert put.status_code == 200
    version = put.json()["version"]
    assert put.headers["etag"] == f'"{version}"'
    got = http.get(f"/api/kv/{ns}/k")
    assert got.json() == {"kind": "json", "value": {"v": 1}, "version": version}
    assert got.headers["etag"] == f'"{version}"'
    with KeyValueStore(broker.target, workspace=ns) as store:
        entry = store.get("k")
        assert entry.value == {"v": 1} and entry.version == version
        store.store("k", "changed by python")
    stale = http.put(f"/api/kv/{ns}/k", json=2, headers={"If-Match": f'"{version}"'})
    assert stale.status_code == 412
    fresh = http.get(f"/api/kv/{ns}/k").headers["etag"]
    assert http.put(f"/api/kv/{ns}/k", json=2, headers={"If-Match": fresh}).status_code == 200
    assert http.put(f"/api/kv/{ns}/k", json=3, headers={"If-None-Match": "*"}).status_code == 412
    assert http.put(f"/api/kv/{ns}/new", json=3, headers={"If-None-Match": "*"}).status_code == 200


def test_key_value_conditions_as_http_has_them(http):
    ns = f"kv{uuid.uuid4().hex[:6]}"
    assert http.put(f"/api/kv/{ns}/k", json=1, headers={"If-Match": "*"}).status_code == 412
    tag = http.put(f"/api/kv/{ns}/k", json=1).headers["etag"]
    unchanged = http.get(f"/api/kv/{ns}/k", headers={"If-None-Match": tag})
    assert unchanged.status_code == 304 and unchanged.headers["etag"] == tag
    assert http.put(f"/api/kv/{ns}/k", json=2, headers={"If-Match": "*"}).status_code == 200
    assert http.get(f"/api/kv/{ns}/k", headers={"If-None-Match": tag}).json()["value"] == 2
    refused = http.put(f"/api/kv/{ns}/k", json=3, headers={"If-None-Match": tag})
    assert refused.status_code == 400 and "If-Match" in refused.json()["error"]


def test_key_value_incr_delete_and_ttl(http):
    ns = f"kv{uuid.uuid4().hex[:6]}"
    http.put(f"/api/kv/{ns}/n", json=10)
    assert http.post(f"/api/kv/{ns}/n/incr").json() == {"value": 11}
    assert http.post(f"/api/kv/{ns}/n/incr", params={"delta": "-5"}).json() == {"value": 6}
    assert http.post(f"/api/kv/{ns}/absent/incr").status_code == 404
    http.put(f"/api/kv/{ns}/word", json="abc")
    assert http.post(f"/api/kv/{ns}/word/incr").status_code == 400
    assert http.delete(f"/api/kv/{ns}/n").status_code == 204
    assert http.delete(f"/api/kv/{ns}/n").status_code == 404
    assert http.get(f"/api/kv/{ns}/n").status_code == 404
    http.put(f"/api/kv/{ns}/brief", json=1, params={"ttl": "0.3"})
    assert http.get(f"/api/kv/{ns}/brief").status_code == 200
    wait_for(lambda: http.get(f"/api/kv/{ns}/brief").status_code == 404, 5)


# ---------------------------------------------------------------------- messages and events


def test_publish_reaches_python_followers(http, broker):
    # a follower in another process, through the same broker
    follower = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, json, threading\n"
         "from workbench.client.embedded import connect\n"
         "from workbench.client.pubsub import MessageBus\n"
         "seen = threading.Event()\n"
         "def on(identifier, value):\n"
         "    print(json.dumps([identifier, value]), flush=True); seen.set()\n"
         "bus = MessageBus(connect(), on)\n"
         "bus.subscribe('news:*')\n"
         "print('ready', flush=True)\n"
         "seen.wait(20)\n"],
        env=broker.env(), stdout=subprocess.PIPE)
    try:
        assert read_line(follower, 20) == b"ready\n"
        answer = http.post("/api/publish/news:today", json={"headline": "up", "n": [1, 2]})
        assert answer.status_code == 200 and answer.json() == {"delivered": 1}
        line = read_line(follower, 10)
        assert json.loads(line) == ["news:today", {"headline": "up", "n": [1, 2]}]
    finally:
        follower.kill()
        follower.wait()
        follower.stdout.close()
    assert http.post("/api/publish/bad@:x", json=1).status_code == 400


class _Reader(threading.Thread):
    """Reads an event stream as an EventSource does: (event, data) pairs into a list."""

    def __init__(self, client: httpx.Client, path: str) -> None:
        super().__init__(daemon=True)
        self.client, self.path = client, path
        self.events: list[tuple[str, object]] = []
        self.opened = threading.Event()
        self.leaving = threading.Event()  # hang up after the next line (a blocked read cannot
        # be interrupted from another thread)

    def run(self) -> None:
        with self.client.stream("GET", self.path, timeout=30) as response:
            self.opened.set()
            event = None
            try:
                for line in response.iter_lines():
                    if self.leaving.is_set():
                        return
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        self.events.append((event, json.loads(line[6:])))
            except httpx.HTTPError:
                pass

    def named(self, name: str) -> list:
        return [data for event, data in self.events if event == name]


def test_events_stream_workspace_changes_and_messages(web, ws, broker):
    client = web.client()
    reader = _Reader(client, f"/api/events?ws={ws.currentWs()}&subscribe=chat:*")
    reader.start()
    assert reader.opened.wait(10)
    wait_for(lambda: reader.named("snapshot"), 10)
    ws.store("v", 1)
    wait_for(lambda: any(event["event"] == "stored" and event["var"] == "v"
                         for batch in reader.named("workspace") for event in batch), 5)
    from workbench.client.embedded import connect
    from workbench.client.pubsub import publish_frames
    from workbench.codec import encode

    sender = connect(broker.target)  # another session: the gateway's hears it
    try:
        assert publish_frames(sender, "chat:hello", encode({"who": "py"})) == 1
    finally:
        sender.close()
    wait_for(lambda: reader.named("message"), 5)
    assert reader.named("message")[0] == {"identifier": "chat:hello",
                                          "value": {"kind": "pickle", "type": "dict",
                                                    "size": reader.named("message")[0]
                                                    ["value"]["size"]}}
    before = broker_status(broker)
    watches = sum(client_["watches"] for client_ in before["clients"])
    reader.leaving.set()
    ws.store("v", 2)  # a line for the reader to hang up after
    reader.join(10)
    client.close()
    wait_for(lambda: sum(c["watches"] for c in broker_status(broker)["clients"]) < watches, 10,
             message="the gateway kept the watch of a stream whose reader left")


def test_events_need_something_to_follow(http):
    answer = http.get("/api/events")
    assert answer.status_code == 400 and "?ws=NAME" in answer.json()["error"]
    assert http.get("/api/events", params={"subscribe": "bad@:x"}).status_code == 400


# ---------------------------------------------------------------------- safety


def test_a_slow_client_holds_no_broker_request(web, ws, broker, http):
    """A client that sends half a body holds a connection, not a broker request: the
    broker sees no call of the gateway's waiting, and others are served meanwhile."""
    parts = urlsplit(web.url)
    slow = socket.create_connection((parts.hostname, parts.port))
    try:
        slow.sendall(f"POST {_path(ws, 'slow')} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     "application/json\r\nContent-Length: 1000\r\n\r\n\"abc".encode())
        time.sleep(0.3)
        assert broker_status(broker)["waiting"] == 0
        started = time.monotonic()
        assert http.post(_path(ws, "other"), json=1).status_code == 204
        assert time.monotonic() - started < 2
        assert "slow" not in ws.listVars(format="dict")
    finally:
        slow.close()


def test_the_token_is_required_when_given(broker, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-enough-length\n")
    web = start_web(broker, tmp_path, "--token-file", str(token_file))
    try:
        assert web.token == "s3cret-token-of-enough-length"
        with httpx.Client(base_url=web.url, timeout=10) as anonymous:
            refused = anonymous.get("/api/workspaces")
            assert refused.status_code == 401 and "token" in refused.json()["error"]
            wrong = anonymous.get("/api/workspaces", headers={"Authorization": "token nope"})
            assert wrong.status_code == 401
            assert anonymous.get("/api/workspaces", headers={
                "Authorization": f"token {web.token}"}).status_code == 200
            first = anonymous.get("/", params={"token": web.token})
            assert first.status_code == 200 and "workbench_token" in first.headers["set-cookie"]
            assert "HttpOnly" in first.headers["set-cookie"]
            # the cookie is enough from then on (the page's own requests and event stream)
            assert anonymous.get("/api/workspaces").status_code == 200
        written = json.loads(Path(web.connection_file).read_text())
        assert written == {"url": web.url, "token": web.token}
        assert os.stat(web.connection_file).st_mode & 0o777 == 0o600
    finally:
        web.stop()
    assert not os.path.exists(web.connection_file)


def test_off_loopback_a_token_is_made_unless_insecure(tmp_path):
    assert choose_token(WebSettings(host="127.0.0.1")) is None
    assert choose_token(WebSettings(host="::1")) is None
    made = choose_token(WebSettings(host="0.0.0.0"))
    assert made and len(made) >= 32 and made != choose_token(WebSettings(host="0.0.0.0"))
    assert choose_token(WebSettings(host="192.0.2.7", insecure=True)) is None
    short = tmp_path / "short"
    short.write_text("abc")
    from workbench.web.server import SetupError

    with pytest.raises(SetupError, match="at least 16"):
        choose_token(WebSettings(host="0.0.0.0", token_file=str(short)))


def test_without_a_broker_the_gateway_says_so_in_a_line(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "workbench", "web", "--broker",
                           f"127.0.0.1:{port}", "--port", "0"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("workbench web: ") and "Traceback" not in done.stderr
    assert str(port) in done.stderr


def test_https_with_a_certificate(broker, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    web = start_web(broker, tmp_path, "--certfile", str(cert), "--keyfile", str(key))
    try:
        assert web.url.startswith("https://")
        trusting = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=web.url, verify=trusting, timeout=10) as client:
            assert client.get("/api/workspaces").status_code == 200
    finally:
        web.stop()


def test_the_openapi_document_names_every_route(http, web):
    served = http.get("/api/openapi.json").json()
    assert served == document() and served["openapi"].startswith("3.1")
    from starlette.routing import Route

    from workbench.web import api

    routes = {(method.lower(), route.path) for route in api.routes if isinstance(route, Route)
              for method in route.methods if method != "HEAD"}
    documented = {(method, path) for path, operations in served["paths"].items()
                  for method in operations}
    assert routes == documented


def test_broker_web_starts_a_gateway_beside_it(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broker = start_broker(tmp_path, "--web", str(port))
    try:
        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).json()[
                    "version"] is not None
            except httpx.HTTPError:
                return False

        wait_for(answers, 20, message="no gateway beside the broker")
        with NetWorkSpace("beside", broker.target) as space:
            space.store("v", "seen")
            got = httpx.get(f"http://127.0.0.1:{port}/api/workspaces/beside/vars/v").json()
            assert got == {"kind": "text", "value": "seen"}
    finally:
        broker.stop()

    def gone() -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=1)
            return False
        except httpx.HTTPError:
            return True

    wait_for(gone, 10, message="the gateway outlived its broker")


def test_a_babelfish_shows_what_a_pickle_holds(http, ws, broker):
    """Without a babelfish a pickle is a type and a size; with one running, its repr too (the
    gateway still unpickles nothing itself)."""
    ws.store("pickled", {"answer": 42})
    assert "repr" not in http.get(_path(ws, "pickled")).json()
    fish = subprocess.Popen([sys.executable, "-m", "workbench", "babelfish", "--broker",
                             broker.target], env=broker.env(), stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "__babelfish" in http.get("/api/workspaces").json(), 20,
                 message="the babelfish did not start")
        shown = http.get(_path(ws, "pickled")).json()
        assert shown["kind"] == "pickle" and shown["type"] == "dict"
        assert shown["repr"] == "{'answer': 42}"
        preview = http.get(_path(ws) + "/vars", params={"preview": "1"}).json()["pickled"]
        assert preview["preview"]["repr"] == "{'answer': 42}"
    finally:
        fish.terminate()
        fish.wait(10)
    wait_for(lambda: "__babelfish" not in http.get("/api/workspaces").json(), 10)
    assert "repr" not in http.get(_path(ws, "pickled")).json()
