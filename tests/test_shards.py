"""``workbench.shards``, the seed's REST client, against real gateways: three brokers, each with
its own ``workbench web``, on loopback (and, as root, one of them across a network namespace).
What each broker holds afterwards is asked natively, so a test sees which gateways a request
really reached."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from workbench import DICT, NetWorkSpace
from workbench.errors import (
    HostUnreachableError, NwsConnectException, NwsConnectionFileException, NwsException,
    NwsOperationException, ResponseError,
)
from workbench.shards import Resource, Resources, Response, Shards

from .netns import ACROSS
from .support import Broker, Web, start_broker, start_web

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE_CLIENT = str(Path(__file__).with_name("shards_client.py"))


@dataclass
class Node:
    """A broker and its gateway: one host of the cluster."""

    broker: Broker
    web: Web

    @property
    def host(self) -> str:
        """The gateway as a ``Resources`` host: ``host:port``."""
        return urlsplit(self.web.url).netloc

    def held(self, ws: str) -> dict[str, int]:
        """Variable -> values the broker holds in ``ws``, asked natively (not through HTTP)."""
        with NetWorkSpace(ws, self.broker.target, useUse=True, create=False) as space:
            return {var: row[1] for var, row in space.listVars(format=DICT).items()}

    def stop(self) -> None:
        self.web.stop()
        self.broker.stop()


def start_nodes(tmp_path, count: int = 3) -> list[Node]:
    nodes: list[Node] = []
    try:
        for _ in range(count):
            broker = start_broker(tmp_path)
            nodes.append(Node(broker, start_web(broker, tmp_path)))
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes: list[Node]) -> None:
    for node in nodes:
        node.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three nodes shared by the tests that stop none of them."""
    nodes = start_nodes(tmp_path_factory.mktemp("shards"))
    yield nodes
    stop_nodes(nodes)


@pytest.fixture
def own_cluster(tmp_path):
    """Three nodes of this test's own, which it may stop."""
    nodes = start_nodes(tmp_path)
    yield nodes
    stop_nodes(nodes)


@pytest.fixture
def ws() -> str:
    return f"s{uuid.uuid4().hex[:10]}"


def answered_by(response: Response) -> str:
    """The ``host:port`` a response came from."""
    return urlsplit(response.request_line.split()[1]).netloc


def create_everywhere(resources: Resources, ws: str) -> None:
    assert [answer.status for answer in resources.broadcast("PUT", f"/api/workspaces/{ws}")] \
        == [201] * len(resources)


def store_path(ws: str, var: str) -> str:
    return f"/api/workspaces/{ws}/vars/{var}"


class CountingResource(Resource):
    """A Resource that counts the connections it opens."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.connects = 0

    def connect(self) -> None:
        self.connects += 1
        super().connect()


# ---------------------------------------------------------------------- Response


def test_a_response_is_truthy_only_when_successful_and_raises_the_gateways_error(cluster, ws):
    resource = Resource(cluster[0].host)
    resource.request("GET", f"/api/workspaces/{ws}/vars")
    missing = resource.getresponse()
    assert isinstance(missing, Response) and not missing
    assert (missing.status, missing.reason) == (404, "Not Found")
    said = json.loads(missing.body)
    assert said["exception"] == "NwsNoWorkSpaceException" and ws in said["error"]
    assert missing.body is missing.body and missing.read() == b""  # read once, kept
    with pytest.raises(ResponseError) as caught:
        missing()
    error = caught.value
    assert isinstance(error, NwsOperationException) and isinstance(error, NwsException)
    assert (error.status, error.reason, error.body) == (404, "Not Found", missing.body)
    assert error.message == said["error"] and error.exception == "NwsNoWorkSpaceException"
    assert str(error) == (f"GET http://{cluster[0].host}/api/workspaces/{ws}/vars: "
                          f"404 Not Found: {said['error']}")
    copied = pickle.loads(pickle.dumps(error))  # as a failed task's error travels
    assert (copied.status, copied.message, str(copied)) == (404, error.message, str(error))

    resource.request("PUT", f"/api/workspaces/{ws}")
    created = resource.getresponse()
    assert created and created.status == 201 and created() == {"name": ws, "created": True}
    resource.request("POST", store_path(ws, "x"), 1)
    stored = resource.getresponse()
    assert stored and stored.status == 204 and stored.body == b"" and stored() is None
    resource.close()


class _GzipHandler(BaseHTTPRequestHandler):
    """Answers every GET with gzipped JSON, saying which encodings the request accepted."""

    def do_GET(self) -> None:
        body = gzip.compress(json.dumps(
            {"accepted": self.headers.get("Accept-Encoding")}).encode())
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_gzipped_answer_is_decoded():
    """The gateway does not compress; a server in front of it (a proxy) may."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GzipHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        resource = Resource(f"127.0.0.1:{server.server_address[1]}", timeout=5)
        assert resource.get("/") == {"accepted": "gzip"}
        resource.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---------------------------------------------------------------------- Resource


def test_resource_verbs_store_and_read_json_through_the_gateway(cluster, ws):
    node = cluster[0]
    resource = Resource(node.host)
    path = store_path(ws, "v")
    assert resource.put(f"/api/workspaces/{ws}") == {"name": ws, "created": True}
    assert resource.post(path, answer=42, nested=[1, None]) is None  # keywords: one object
    assert resource("POST", path, [1, "two", 3.5]) is None  # any other JSON value
    assert resource("POST", path, "text") is None
    with NetWorkSpace(ws, node.broker.target, useUse=True) as space:
        assert space.fetch("v", timeout=5) == {"answer": 42, "nested": [1, None]}
    assert resource.get(path) == {"kind": "json", "value": [1, "two", 3.5]}  # left there
    assert resource.post(f"{path}/fetch")["value"] == [1, "two", 3.5]
    assert resource.get(path, wait=0.5)["value"] == "text"  # params: the query
    assert resource.post(f"{path}/fetch")["value"] == "text"
    with pytest.raises(ResponseError) as caught:
        resource.get(path, wait=0.1)  # nothing left: the wait runs out
    assert caught.value.status == 408
    namespace = f"kv{uuid.uuid4().hex[:8]}"
    version = resource.put(f"/api/kv/{namespace}/k", colour="blue")["version"]
    assert resource.get(f"/api/kv/{namespace}/k") == {
        "kind": "json", "value": {"colour": "blue"}, "version": version}
    assert resource.delete(f"/api/kv/{namespace}/k") is None
    assert resource.delete(f"/api/workspaces/{ws}") is None
    assert ws not in resource.get("/api/workspaces")
    resource.close()


def test_a_resource_finds_its_gateway_by_url_connection_file_and_token(cluster, tmp_path):
    token = uuid.uuid4().hex
    (tmp_path / "token").write_text(token)
    web = start_web(cluster[0].broker, tmp_path, "--token-file", str(tmp_path / "token"))
    try:
        assert web.token == token
        written = Path(web.connection_file).read_text()
        for given in (web.connection_file, written, f"{web.url}?token={token}"):
            with Resource(given) as resource:
                assert resource.get("/api/status")["version"], given
        with pytest.raises(ResponseError) as caught, Resource(web.url) as resource:
            resource.get("/api/status")  # the address alone
        assert caught.value.status == 401 and "token" in caught.value.message
    finally:
        web.stop()
    with pytest.raises(NwsConnectionFileException, match="removes its own when it stops"):
        Resource(web.connection_file)  # the gateway took its file with it
    (tmp_path / "bad.json").write_text('{"address": "tcp://127.0.0.1:1"}')
    with pytest.raises(NwsConnectionFileException, match="not a web connection file"):
        Resource(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="not a gateway's address"):
        Resource("ftp://127.0.0.1:21/")
    assert Resource("example.org").port == 8766  # a bare host: the gateway's port


def test_https_with_a_private_certificate_authority(cluster, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=20)
    web = start_web(cluster[0].broker, tmp_path, "--certfile", str(cert), "--keyfile", str(key))
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        with Resource(web.connection_file, context=trusting) as resource:
            assert resource.get("/api/status")["version"]
            assert resource.sock.version().startswith("TLS")
        with pytest.raises(ssl.SSLCertVerificationError), Resource(web.url) as resource:
            resource.get("/api/status")  # the system's CAs do not know it
    finally:
        web.stop()


def test_a_kept_alive_connection_serves_several_requests(cluster):
    resource = CountingResource(cluster[0].host)
    for _ in range(5):
        assert resource.get("/api/status")["version"]
        assert resource.kept_alive
    assert resource.connects == 1
    resource.close()
    resources = Resources([cluster[0].host], limit=1)
    resources.resource_class = CountingResource
    served = [resources.unicast("GET", "/api/status") for _ in range(5)]
    assert all(served) and len(resources[cluster[0].host]) == 1
    assert resources[cluster[0].host][0].connects == 1  # one connection served all five
    resources.close()


def test_a_connection_the_gateway_closed_is_reopened_and_the_request_sent_again(
        cluster, tmp_path):
    broker = cluster[0].broker
    web = start_web(broker, tmp_path)
    port = urlsplit(web.url).port
    resource = CountingResource(web.url, timeout=5)
    try:
        assert resource.get("/api/status")["version"]
        first = resource.sock.getsockname()
        web.stop()  # the kept connection is closed under the resource
        web = start_web(broker, tmp_path, "--port", str(port))
        assert resource.get("/api/status")["version"]
        assert resource.connects == 2 and resource.sock.getsockname() != first
        web.stop()
        with pytest.raises(ConnectionRefusedError):  # once more, then the real failure
            resource.get("/api/status")
        assert resource.connects == 3 and not resource.kept_alive
        with pytest.raises(ConnectionRefusedError):  # a fresh connection is not retried
            resource.get("/api/status")
        assert resource.connects == 4
    finally:
        web.stop()
        resource.close()


# ---------------------------------------------------------------------- Resources


def test_resources_keep_at_most_limit_idle_connections_per_host(cluster):
    first, second = cluster[0].host, cluster[1].host
    resources = Resources([first, second], limit=2)
    sent = [resources.request(first, "GET", "/api/status") for _ in range(3)]
    assert len({id(resource) for resource in sent}) == 3  # each request had its own
    assert all(resources.getresponse(first, resource) for resource in sent)
    assert len(resources[first]) == 2 and not sent[2].kept_alive  # no room: closed
    assert (resources.priority(first), resources.priority(second)) == (-2, 0)
    resources.close()
    assert resources.priority(first) == 0
    uncached = Resources([first])
    resource = uncached.request(first, "GET", "/api/status")
    assert uncached.getresponse(first, resource) and not resource.kept_alive
    assert len(uncached[first]) == 0


def test_choice_prefers_idle_connections_and_none_excludes(cluster):
    hosts = [node.host for node in cluster]
    resources = Resources(hosts, limit=1)
    assert {resources.choice(hosts) for _ in range(300)} == set(hosts)  # none idle: any
    assert answered_by(resources.unicast("GET", "/api/status", hosts=[hosts[1]])) == hosts[1]
    assert {resources.choice(hosts) for _ in range(50)} == {hosts[1]}  # its idle connection
    assert answered_by(resources.unicast("GET", "/api/status")) == hosts[1]

    class Excluding(Resources):
        def priority(self, host):
            return None if host == hosts[1] else super().priority(host)

    excluding = Excluding(hosts, limit=1)
    assert {excluding.choice(hosts) for _ in range(200)} == {hosts[0], hosts[2]}
    with pytest.raises(ValueError):
        excluding.choice([hosts[1]])
    with pytest.raises(ValueError):
        resources.choice([])
    resources.close()


def test_a_gateway_stopped_mid_way_is_skipped_by_unicast_and_named_by_broadcast(own_cluster):
    hosts = [node.host for node in own_cluster]
    resources = Resources(hosts, limit=2)
    assert all(resources.broadcast("GET", "/api/status"))
    assert all(resources.broadcast("GET", "/api/status", hosts=[hosts[1], hosts[1]]))
    assert [resources.priority(host) for host in hosts] == [-1, -2, -1]  # the first choice
    own_cluster[1].stop()
    answers = [resources.unicast("GET", "/api/status") for _ in range(20)]
    assert all(answers) and hosts[1] not in {answered_by(answer) for answer in answers}
    assert resources.priority(hosts[1]) == 0  # its dead idle connections were let go
    with pytest.raises(HostUnreachableError) as caught:
        resources.broadcast("GET", "/api/status")
    assert str(caught.value).startswith(f"{hosts[1]} could not be reached for GET /api/status")
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    own_cluster[0].stop()
    own_cluster[2].stop()
    with pytest.raises(HostUnreachableError) as caught:
        resources.unicast("GET", "/api/status")
    assert all(host in str(caught.value) for host in hosts)
    assert isinstance(caught.value, ConnectionError) and isinstance(caught.value,
                                                                    NwsConnectException)


def test_broadcast_sends_every_request_before_reading_and_answers_in_host_order(cluster, ws):
    hosts = [node.host for node in cluster]
    resources = Resources(hosts, limit=1)
    create_everywhere(resources, ws)
    for order in (hosts, hosts[::-1], [hosts[2], hosts[0]]):
        answers = resources.broadcast("GET", f"/api/workspaces/{ws}/vars", hosts=order)
        assert [answered_by(answer) for answer in answers] == order
    started = time.monotonic()
    waited = resources.broadcast("GET", f"/api/workspaces/{ws}/vars/none?wait=1")
    elapsed = time.monotonic() - started
    assert [answer.status for answer in waited] == [408] * 3
    assert elapsed < 2.0, f"three 1 s waits took {elapsed:.2f} s: not at once"
    resources.close()


# ---------------------------------------------------------------------- Shards


class Ranked(Resources):
    """Resources whose host priorities the test sets (None: out)."""

    ranks: dict = {}

    def priority(self, host):
        return self.ranks.get(host, 0)


class RankedShards(Shards):
    resources_class = Ranked


def layout(a: str, b: str, c: str, shards_class=Shards, limit: int = 1) -> Shards:
    """Each colour on two of the three hosts, "solo" on the first only."""
    return shards_class([(a, "solo")], limit, **{a: ["red", "green"], b: ["green", "blue"],
                                                 c: ["blue", "red"]})


def test_shards_map_keys_to_host_clusters_and_rank_covers():
    a, b, c = "10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"  # nothing is sent
    shards = layout(a, b, c, RankedShards)
    assert shards == {"solo": {a}, "red": {a, c}, "green": {a, b}, "blue": {b, c}}
    assert list(shards.resources) == [a, b, c] and shards.resources.limit == 1
    Ranked.ranks = {a: 0, b: -5, c: -5}
    assert shards.priority([a]) == (1, 0) and shards.priority([b, c]) == (2, -10)
    covers = [frozenset({a}), frozenset({a, b}), frozenset({b, c})]
    assert shards.choice(covers) == {a}  # the fewest hosts first, idle connections or not
    assert shards.choice(covers[1:]) == {b, c}  # then the most idle connections
    Ranked.ranks = {a: None}
    assert shards.priority([a, b]) is None and shards.choice(covers) == {b, c}
    with pytest.raises(ValueError):
        shards.choice([frozenset({a})])
    assert shards.multicast([], "GET", "/api/status") == []  # no keys: no host


def test_shards_unicast_broadcast_and_multicast_reach_the_hosts_of_their_keys(cluster, ws):
    a, b, c = (node.host for node in cluster)
    shards = layout(a, b, c)
    create_everywhere(shards.resources, ws)
    assert answered_by(shards.unicast("solo", "POST", store_path(ws, "u"), 1)) == a
    answers = shards.broadcast("green", "POST", store_path(ws, "b"), 1)
    assert [answered_by(answer) for answer in answers] == [a, b] and all(answers)
    # red and green share host a: one host covers both, however idle the others are
    assert [answered_by(answer) for answer in
            shards.multicast(["red", "green"], "POST", store_path(ws, "m1"), 1)] == [a]
    # all three colours need two hosts; b and c keep idle connections and a none
    shards.resources.forget(a)
    assert [shards.resources.priority(host) for host in (a, b, c)] == [0, -1, -1]
    answers = shards.multicast(["red", "green", "blue"], "POST", store_path(ws, "m2"), 1)
    assert [answered_by(answer) for answer in answers] == [b, c]
    held = [node.held(ws) for node in cluster]
    assert held == [{"u": 1, "b": 1, "m1": 1}, {"b": 1, "m2": 1}, {"m2": 1}]
    shards.close()


class Avoiding(Resources):
    """Resources that leave out the hosts known to be down (as the original's Replicas did)."""

    down: set = set()

    def priority(self, host):
        return None if host in self.down else super().priority(host)


class AvoidingShards(Shards):
    resources_class = Avoiding


def test_shards_with_a_broker_stopped_mid_way(own_cluster, ws):
    a, b, c = (node.host for node in own_cluster)
    shards = layout(a, b, c, AvoidingShards)
    Avoiding.down = set()
    create_everywhere(shards.resources, ws)
    own_cluster[2].broker.stop()  # c's gateway still answers, for a broker that is gone
    answers = shards.broadcast("blue", "POST", store_path(ws, "x"), 1)
    assert [answered_by(answer) for answer in answers] == [b, c]
    assert answers[0] and not answers[1] and answers[1].status in (502, 503)
    with pytest.raises(ResponseError) as caught:
        answers[1]()
    assert own_cluster[2].broker.address in caught.value.message
    shards.resources.forget(b)  # c now ranks first for blue: its answer is an answer
    answer = shards.unicast("blue", "POST", store_path(ws, "x"), 2)
    assert answered_by(answer) == c and not answer
    own_cluster[2].web.stop()  # now c cannot be reached at all: skipped
    answers = [shards.unicast("blue", "GET", "/api/status") for _ in range(5)]
    assert [answered_by(answer) for answer in answers] == [b] * 5
    shards.resources.forget(b)
    with pytest.raises(HostUnreachableError, match=c):  # {c} covers blue and red alone
        shards.multicast(["blue", "red"], "POST", store_path(ws, "y"), 1)
    Avoiding.down = {c}
    answers = shards.multicast(["blue", "red"], "POST", store_path(ws, "y"), 1)
    assert [answered_by(answer) for answer in answers] == [a, b] and all(answers)
    assert [own_cluster[0].held(ws), own_cluster[1].held(ws)] == [{"y": 1}, {"x": 1, "y": 1}]
    shards.close()


# ---------------------------------------------------------------------- across namespaces


def run_client_in(host, *argv: str) -> dict:
    env = {name: value for name, value in os.environ.items() if name != "WORKBENCH_BROKER"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(host.command(sys.executable, NAMESPACE_CLIENT, *argv), env=env,
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.timeout(60)
def test_a_gateway_across_a_network_namespace(pair, tmp_path, ws):
    """Two nodes in namespace B on its loopback, one in A serving on its veth address (so it
    makes a token and writes it to its connection file); the client runs in B."""
    near = [Node(broker, start_web(broker, tmp_path, within=pair.b.command()))
            for broker in (start_broker(tmp_path, *ACROSS, within=pair.b.command())
                           for _ in range(2))]
    far_broker = start_broker(tmp_path, *ACROSS, within=pair.a.command())
    far = Node(far_broker, start_web(far_broker, tmp_path, "--host", pair.a.address,
                                     within=pair.a.command()))
    try:
        assert far.web.token and far.host.startswith(f"{pair.a.address}:")
        argv = (near[0].host, near[1].host, far.web.connection_file, far.web.url, ws)
        seen = run_client_in(pair.b, "up", *argv)
        assert seen["namespace"] == pair.b.namespace_id() != os.readlink("/proc/self/ns/net")
        assert seen["far_version"] and seen["without_token"] == 401
        assert seen["created"] == [201, 201, 201]
        # blue and red share only the far host: the multicast crossed the veth, alone
        assert seen["multicast"] == [f"POST {far.web.url}api/workspaces/{ws}/vars/m"]
        assert seen["held"] == [{}, {}, {"m": 1, "u": 1}]
        far.stop()
        seen = run_client_in(pair.b, "down", *argv)
        assert {urlsplit(line.split()[1]).netloc for line in seen["unicast"]} == {near[0].host}
        for name in ("broadcast", "multicast"):
            assert seen[name].startswith(f"{far.web.connection_file} could not be reached")
    finally:
        stop_nodes([*near, far])
