"""Every face that takes a broker's address takes its connection file too, against a real
CURVE broker: NwsServer, NetWorkSpace, KeyValueStore, the Sleigh, memcache, hive, mq, the
magics and the widgets, and ``WORKBENCH_BROKER`` in a fresh process. A file that cannot be
used is an error naming it, from each face; and nothing any face shows holds the secret key.

A process remembers the keys of a CURVE broker by its address once it connected through its
file; each test here starts as a fresh process would, knowing none, so a face that dropped the
file for a bare address fails."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from workbench import (
    KeyValueStore, NetWorkSpace, NwsConnectException, NwsConnectionFileException, NwsServer,
    Sleigh, hive, memcache, mq,
)
from workbench.client import connection
from workbench.connection_file import resolve
from workbench.jupyter.session import MagicSession
from workbench.jupyter.widgets_core import server_for

from .support import run_client, start_broker, wait_for

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def curve(tmp_path_factory):
    """One broker speaking CURVE on loopback, its connection file in a folder of the module."""
    b = start_broker(tmp_path_factory.mktemp("curve"), "--curve")
    yield b
    b.stop()


@pytest.fixture(autouse=True)
def knowing_no_curve_broker(monkeypatch):
    """Each test starts in a process that remembers no CURVE broker's keys by address."""
    monkeypatch.setattr(connection, "_curve_targets", {})


@pytest.fixture(scope="module")
def secrets(curve) -> list[str]:
    """The forms the client's secret key could be shown in."""
    text = json.loads(connection_text(curve))["client_secret"]
    return [text, repr(resolve(curve.connection_file).client_secret)[2:-1]]


def connection_text(broker) -> str:
    return Path(broker.connection_file).read_text()


def assert_no_secret(secrets: list[str], *shown: str) -> None:
    for text in shown:
        for secret in secrets:
            assert secret not in text, text


def double(x: int) -> int:
    return 2 * x


# ---------------------------------------------------------------------- without the file


def test_the_address_alone_is_refused(curve, ws_name):
    with pytest.raises(NwsConnectException):
        NwsServer(curve.address)
    assert memcache.Client([curve.address], workspace=ws_name).set("k", 1) == 0  # marked dead
    with pytest.raises(hive.ConnectionRefused):
        hive.RawClient(curve.host, curve.port)


# ---------------------------------------------------------------------- the client's own faces


def test_workspaces_and_stores_through_the_file(curve, ws_name):
    with NwsServer(curve.connection_file) as server:
        assert server.address == curve.address
        server.openWs(ws_name).store("x", 1)
        with NetWorkSpace(ws_name, serverHost=curve.connection_file, useUse=True) as ws:
            assert ws.fetch("x") == 1
        with NetWorkSpace(ws_name, curve.connection_file, 1, useUse=True) as ws:
            ws.store("y", 2)  # a port beside a file is ignored
        with NwsServer(host=connection_text(curve)) as by_text:
            assert by_text.useWs(ws_name).fetch("y") == 2
    with KeyValueStore(curve.connection_file, workspace=ws_name) as kv:
        kv.store("k", "v")
        assert kv.get("k").value == "v"


def test_sleighs_through_the_file(curve, secrets):
    with Sleigh(1, broker=curve.connection_file) as sleigh:
        assert sleigh.eachElem(double, [1, 2, 3]) == [2, 4, 6]
        assert_no_secret(secrets, repr(sleigh), sleigh._repr_html_())
    with Sleigh(1, nwsHost=curve.connection_file) as sleigh:
        assert sleigh.eachElem(double, [4]) == [8]


def test_a_sleigh_given_the_address_of_a_broker_reached_through_its_file(curve):
    """As the magics do: the keys read once serve the address alone afterwards."""
    with NwsServer(curve.connection_file):
        with Sleigh(1, broker=curve.address) as sleigh:
            assert sleigh.eachElem(double, [5]) == [10]


# ---------------------------------------------------------------------- memcache and hive


def test_memcache_servers_may_be_connection_files(curve, ws_name):
    mc = memcache.Client([curve.connection_file], workspace=ws_name)
    assert mc.set("a", {"b": 1}) is True and mc.get("a") == {"b": 1}
    assert [str(server) for server in mc.servers] == [f"inet:{curve.host}:{curve.port}"]
    weighted = memcache.Client([(curve.connection_file, 3)], workspace=ws_name)
    assert len(weighted.buckets) == 3 and weighted.get("a") == {"b": 1}
    for client in (mc, weighted):
        client.disconnect_all()


def test_a_memcache_pool_of_a_file_and_an_address(curve, broker, ws_name):
    mc = memcache.Client([curve.connection_file, f"{broker.host}:{broker.port}"],
                         workspace=ws_name)
    values = {f"key{i}": i for i in range(40)}
    try:
        assert mc.set_multi(values) == []
        assert mc.get_multi(list(values)) == values
    finally:
        mc.disconnect_all()
    with KeyValueStore(curve.connection_file, workspace=ws_name) as on_curve, \
            KeyValueStore(broker.address, workspace=ws_name) as on_plain:
        held = [{key for key in values if store.get(key) is not None}
                for store in (on_curve, on_plain)]
    assert held[0] and held[1] and held[0] | held[1] == set(values) and not held[0] & held[1]


def test_a_memcache_file_gone_later_marks_its_server_dead(curve, tmp_path, ws_name):
    """Its broker stopped and took the file away: as an address that stopped answering."""
    copy = tmp_path / "copy.json"
    copy.write_text(connection_text(curve))
    mc = memcache.Client([str(copy)], workspace=ws_name)
    assert mc.set("a", 1) is True
    mc.disconnect_all()
    copy.unlink()
    assert mc.set("a", 2) == 0 and mc.servers[0].deaduntil > 0


def test_hive_through_the_file(curve):
    workspace = f"hive_{uuid.uuid4().hex[:8]}"
    with hive.Client(curve.connection_file, workspace=workspace) as client:
        client.put(("user", 42), {"name": "Ada"})
        assert client.get(("user", 42)) == {"name": "Ada"}
        assert repr(client) == f"<Client {workspace!r} at {curve.address}>"
    with hive.RawClient(curve.connection_file, 1, workspace=workspace) as raw:
        raw.put("k", "v")
        assert raw.get("k") == "v"


def test_hive_whose_broker_stopped_and_took_its_file(make_broker):
    """Reconnecting reads the file again; gone with its broker, it is a refused connection."""
    gone = make_broker("--curve")
    raw = hive.RawClient(gone.connection_file)
    raw.put("k", "v")
    gone.stop()

    def refused() -> str:
        try:
            raw.get("k")
        except hive.ConnectionReset:  # the call that found the broker gone
            return ""
        except hive.ConnectionRefused as exc:
            return str(exc)
        raise AssertionError("the hive answered without its broker")

    message = wait_for(refused, TIMEOUT)
    # Refused either way, naming the file: read again and found gone, or (once seen on a
    # loaded machine: the file outlived its broker) nobody listening at the address it names.
    assert message in (
        f'getting "k": cannot read the connection file {gone.connection_file}: '
        "No such file or directory",
        f'getting "k": no broker answered at {gone.address} ({gone.connection_file}) '
        f"(connection refused); start one with `workbench broker --host {gone.host} --port "
        f"{gone.port}`"), message
    raw.close()


# ---------------------------------------------------------------------- mq


@pytest.fixture
def mq_left():
    yield
    mq.close_connection()


def test_mq_through_the_file(curve, mq_left):
    topic = f"faces{uuid.uuid4().hex[:8]}"
    assert mq.init_connection(curve.connection_file) == curve.address
    queue = mq.Queue(f"{topic}:*", shared=True)
    mq.twitter(f"{topic}:a", 42)
    assert queue.get(timeout=TIMEOUT).args == (42,)
    token = mq.connect_oneway(curve.connection_file)
    assert mq.send_message(token, f"{topic}:b", 43) == "ok"
    assert queue.get(timeout=TIMEOUT).args == (43,)
    assert mq.interconnect(curve.connection_file) != token
    queue.close()
    assert mq.close_connection(curve.connection_file) == "ok"
    assert mq.send_message(token, f"{topic}:c") == "invalid token"


# ---------------------------------------------------------------------- the magics, widgets


@pytest.fixture
def shell():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "workbench")
    yield shell
    shell.magics_manager.registry["NwsMagics"].session.close()
    mq.close_connection()  # %nws twitter pointed mq at the magics' broker
    InteractiveShell.clear_instance()


def test_the_magics_connect_through_the_file(curve, shell, capsys, ws_name, secrets):
    nws = lambda line: shell.run_line_magic("nws", line)  # noqa: E731
    nws(f"connect {curve.connection_file}")
    assert capsys.readouterr().out == (
        f"%nws connected to {curve.address} ({curve.connection_file})\n")
    nws(f"open {ws_name}")
    nws("store x 41 + 1")
    assert nws("fetch x") == 42
    nws("kv set k 'v'")
    assert nws("kv get k") == "v"
    topic = f"faces{uuid.uuid4().hex[:8]}"
    nws(f"twitter {topic}:before")  # points mq at the magics' broker
    queue = mq.Queue(f"{topic}:*", shared=True)
    nws(f"twitter {topic}:a 1")
    assert queue.get(timeout=TIMEOUT).args == (1,)
    queue.close()
    sleigh = nws("sleigh 1")
    try:
        shell.run_cell_magic("nws_each", "", "SleighRank + 100")
    finally:
        nws("sleigh --stop")
    out = capsys.readouterr()
    assert "Out[worker 0]: 100" in out.out and out.err == ""
    assert sleigh.state().stopped
    assert_no_secret(secrets, out.out)


def test_the_magics_name_a_bad_file(curve, shell, capsys, tmp_path):
    missing = tmp_path / "missing.json"
    result = shell.run_cell(f"%nws connect {missing}")
    assert isinstance(result.error_in_exec, NwsConnectionFileException)  # the cell fails
    shown = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out).strip()
    assert shown == (f"NwsConnectionFileException: %nws connect: cannot read the connection "
                     f"file {missing}: No such file or directory")


def test_the_magic_session_shows_no_key_of_json_text(curve, secrets):
    session = MagicSession()
    try:
        said = session.connect(connection_text(curve))
        assert said == f"{curve.address} (the connection given as JSON text)"
        assert session.store("kv").get("nothing") is None
    finally:
        session.close()


def test_widgets_take_the_file_and_show_the_address(curve, secrets):
    pytest.importorskip("ipywidgets")
    import asyncio

    from workbench.jupyter.widgets import broker_view, message_feed

    server, made = server_for(curve.connection_file)
    assert made and server.address == curve.address
    server.close()
    loop = asyncio.new_event_loop()

    async def make():
        return (broker_view(curve.connection_file),
                message_feed("faces:*", broker=curve.connection_file))

    view, feed = loop.run_until_complete(make())
    try:
        assert view.address == feed.address == curve.address
        assert_no_secret(secrets, repr(view), repr(feed), view.header.value,
                         feed.header.value)
    finally:
        view.close()
        feed.close()
        loop.close()


# ---------------------------------------------------------------------- the environment


CLIENT = """
import sys
from workbench import KeyValueStore, NetWorkSpace, hive, mq
ws = NetWorkSpace(sys.argv[1])
ws.store('x', 5)
print(ws.fetch('x'))
kv = KeyValueStore(workspace=sys.argv[1])
kv.store('k', 6)
print(kv.get('k').value)
h = hive.RawClient(workspace=sys.argv[1])
h.put('h', 'seven')
print(h.get('h'))
q = mq.Queue(sys.argv[1] + ':*', shared=True)
mq.twitter(sys.argv[1] + ':m', 8)
print(q.get(timeout=10).args[0])
print(repr(ws), repr(kv), repr(h))
"""


@pytest.mark.parametrize("given", ["file", "json"])
def test_the_environment_names_the_broker(curve, given, ws_name, secrets):
    env = {} if given == "file" else {"WORKBENCH_BROKER": connection_text(curve)}
    done = subprocess.run([sys.executable, "-c", CLIENT, ws_name], env=curve.env(**env),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:4] == ["5", "6", "seven", "8"]
    assert curve.address in lines[4]
    assert_no_secret(secrets, done.stdout, done.stderr)


def test_status_through_the_file(curve, secrets):
    done = subprocess.run([sys.executable, "-m", "workbench", "status", "--json", "--broker",
                           curve.connection_file], env=curve.env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["security"]["mechanism"] == "CURVE"
    assert_no_secret(secrets, done.stdout, done.stderr)


def test_a_bad_environment_names_the_file(curve, tmp_path):
    missing = tmp_path / "missing.json"
    done = run_client(curve, "from workbench import NwsServer\nNwsServer()",
                      WORKBENCH_BROKER=str(missing))
    assert done.returncode == 1
    assert (f"NwsConnectionFileException: cannot read the connection file {missing}"
            in done.stderr)


# ---------------------------------------------------------------------- files that cannot serve


def _bad_file(tmp_path, kind: str, good: str):
    """-> (the path of a ``kind`` of bad connection file, what its error says)."""
    path = tmp_path / f"{kind.replace(' ', '_')}.json"
    found = json.loads(Path(good).read_text())
    if kind == "missing":
        return path, "cannot read the connection file", "No such file or directory"
    if kind == "a directory":
        path.mkdir()
        return path, "cannot read the connection file", "Is a directory"
    if kind == "not UTF-8":
        path.write_bytes(b'{"address": "\xff"}')
        return path, "is not a connection file", "not UTF-8"
    if kind == "not JSON":
        path.write_text("address = tcp://127.0.0.1:1\n")
        return path, "is not a connection file", "not JSON"
    if kind == "no address":
        del found["address"]
        path.write_text(json.dumps(found))
        return path, "is not a connection file", 'no "address"'
    if kind == "a key that is not Z85":
        found["server_key"] = "not a key"
        path.write_text(json.dumps(found))
        return path, "server_key is not a CURVE key", "Z85"
    assert kind == "no secret key"
    del found["client_secret"]
    path.write_text(json.dumps(found))
    return path, "lacks client_secret", "client key pair"


BAD_KINDS = ["missing", "a directory", "not UTF-8", "not JSON", "no address",
             "a key that is not Z85", "no secret key"]

FACES = {
    "NwsServer": lambda path: NwsServer(path),
    "NwsServer(host=)": lambda path: NwsServer(host=path),
    "NetWorkSpace(serverHost=)": lambda path: NetWorkSpace("w", serverHost=path),
    "KeyValueStore": lambda path: KeyValueStore(path),
    "Sleigh(broker=)": lambda path: Sleigh(0, broker=path),
    "Sleigh(nwsHost=)": lambda path: Sleigh(0, nwsHost=path),
    "memcache.Client": lambda path: memcache.Client([path]),
    "memcache.Client weighted": lambda path: memcache.Client([("127.0.0.1:1", 1), (path, 2)]),
    "hive.Client": lambda path: hive.Client(path),
    "hive.RawClient": lambda path: hive.RawClient(path),
    "mq.init_connection": lambda path: mq.init_connection(path),
    "mq.connect_oneway": lambda path: mq.connect_oneway(path),
    "mq.connect_via_queue": lambda path: mq.connect_via_queue(path, "faces:*"),
    "%nws connect": lambda path: MagicSession().connect(path),
    "widgets": lambda path: server_for(path),
}


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("face", list(FACES))
def test_each_face_names_a_bad_file(curve, tmp_path, face, kind):
    path, what, why = _bad_file(tmp_path, kind, curve.connection_file)
    with pytest.raises(NwsConnectionFileException) as raised:
        FACES[face](str(path))
    message = str(raised.value)
    assert str(path) in message and what in message and why in message, message
    assert isinstance(raised.value, ValueError)


# ---------------------------------------------------------------------- secrets


def test_nothing_a_face_shows_holds_the_secret(curve, ws_name, secrets):
    path = curve.connection_file
    server = NwsServer(path)
    ws = server.openWs(ws_name)
    kv = KeyValueStore(path, workspace=ws_name)
    mc = memcache.Client([path], workspace=ws_name)
    client = hive.Client(path)
    try:
        mc.set("a", 1)
        shown = [repr(server), str(server), server._repr_html_(), repr(ws), str(ws),
                 repr(kv), kv._repr_html_(), repr(client), repr(resolve(path)),
                 str(resolve(path)), *(str(s) for s in mc.servers),
                 *(s.name() for s in mc.servers), *(str(stats) for stats in mc.get_stats())]
    finally:
        for closing in (kv.close, mc.disconnect_all, client.close, server.close):
            closing()
    assert_no_secret(secrets, *shown)


def test_a_plain_broker_on_the_port_of_a_curve_broker_that_stopped(tmp_path):
    """The keys this process kept for an address belong to the broker that was there: when
    another, plain one answers on that port later, host and port reach it as they would in a
    process that never knew the first."""
    first = start_broker(tmp_path, "--curve")
    port = first.port
    try:
        NetWorkSpace("before", first.connection_file).close()  # its keys are remembered
    finally:
        first.stop()
    second = start_broker(tmp_path, "--port", str(port))
    try:
        with NetWorkSpace("after", "127.0.0.1", port) as ws:
            ws.store("x", 1)
            assert ws.fetch("x") == 1
    finally:
        second.stop()
