"""CURVE off loopback: libzmq's CURVE peers against the broker and the client, connection
files, allowed keys, and every refusal counted while legitimate clients keep working."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading

import pytest
import zmq
import zmq.auth

from workbench import NetWorkSpace, NwsConnectException, NwsConnectionFileException, codec
from workbench.client.dealer import Dealer, DealerError
from workbench.connection_file import BrokerTarget, read as read_connection_file, write
from workbench.protocol import HEADER, HEADER_SIZE, Op, request_head
from workbench.zmtp import z85
from workbench.zmtp.curve import (
    CLIENT_GREETING, ClientHandshake, ClientKeys, CurveInbound, KeyPair, decode_key,
)
from workbench.zmtp import properties

from .support import broker_status, start_broker, wait_for

SIZES = [1, 255, 256, 65_535, 70_000, 8 << 20, 100_000_000]
_META = 16  # a value reply's variable id and sequence number, after the header


@pytest.fixture(scope="module")
def curve_broker(tmp_path_factory):
    # A raw libzmq client sends no heartbeats: its session must outlive a 100 MB round trip.
    broker = start_broker(tmp_path_factory.mktemp("curve"), "--curve", "--no-local-socket",
                          "--heartbeat-liveness", "100")
    yield broker
    broker.stop()


def counters(broker, via: str | None = None) -> dict:
    """The broker's counters, asked through its connection file (or ``via`` another)."""
    if via is None:
        return broker_status(broker)["counters"]
    from workbench import KeyValueStore
    with KeyValueStore(via) as asker:
        return asker.stats()["counters"]


def libzmq_dealer(target: BrokerTarget, server_key: bytes | None = None) -> zmq.Socket:
    """A pyzmq DEALER with the keys of a connection file (``server_key`` overrides)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, os.urandom(16) + b"\x01\x00")
    sock.curve_serverkey = z85.encode(server_key or target.server_key).encode()
    sock.curve_publickey = z85.encode(target.client_key).encode()
    sock.curve_secretkey = z85.encode(target.client_secret).encode()
    sock.connect(target.address)
    return sock


def call(sock: zmq.Socket, op: int, request_id: int, args: list, frames=()) -> list:
    sock.send_multipart([request_head(op, request_id, args), *frames], copy=False)
    assert sock.poll(60_000), f"no reply to op {op}"
    reply = [frame.bytes for frame in sock.recv_multipart(copy=False)]
    assert HEADER.unpack_from(reply[0])[3] == request_id
    return reply


def test_a_libzmq_dealer_stores_and_fetches_through_a_curve_broker(curve_broker):
    target = read_connection_file(curve_broker.connection_file)
    sock = libzmq_dealer(target)
    try:
        hello = call(sock, Op.HELLO, 1, [json.dumps({"pid": os.getpid()}).encode()])
        assert hello[0][1] == 0  # OK
        for request_id, size in enumerate(SIZES, start=2):
            value = os.urandom(size) if size < 1 << 20 else bytes([size % 251]) * size
            encoded = codec.encode(value)
            stored = call(sock, Op.STORE, 2 * request_id, [b"__default", b"curve_v", encoded[0]],
                          encoded[1:])  # a value's first frame ends the head
            assert stored[0][1] == 0
            fetched = call(sock, Op.FETCH, 2 * request_id + 1, [b"__default", b"curve_v"])
            assert fetched[0][1] == 0
            assert [fetched[0][HEADER_SIZE + _META:], *fetched[1:]] == [bytes(f) for f in encoded]
    finally:
        sock.close()


@pytest.fixture
def libzmq_curve_router():
    """A pyzmq ROUTER with curve_server=True echoing every message -> (address, public key)."""
    context = zmq.Context.instance()
    public, secret = zmq.curve_keypair()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.curve_server = True
    router.curve_publickey, router.curve_secretkey = public, secret
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def echo():
        while not stop.is_set():
            if router.poll(100):
                router.send_multipart(router.recv_multipart(copy=False), copy=False)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{port}", z85.decode(public)
    stop.set()
    thread.join(10)
    router.close()


def test_the_client_talks_curve_to_a_libzmq_router(libzmq_curve_router):
    address, server_key = libzmq_curve_router
    dealer = Dealer(address, b"curve-client", 5.0, ClientKeys(server_key, KeyPair.generate()))
    try:
        for size in SIZES:
            value = os.urandom(size) if size < 1 << 20 else bytes([size % 251]) * size
            assert dealer.send([b"head", value])
            reply = dealer.recv(60)
            assert reply is not None and reply[0] == b"head" and bytes(reply[1]) == value
    finally:
        dealer.close()


def test_the_client_refuses_a_router_with_another_key(libzmq_curve_router):
    address, _ = libzmq_curve_router
    wrong = ClientKeys(KeyPair.generate().public, KeyPair.generate())
    with pytest.raises(DealerError, match="handshake"):
        Dealer(address, b"curve-client-2", 5.0, wrong)


def test_off_loopback_the_broker_speaks_curve_with_no_flag(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), PYTHONPATH=os.getcwd())
    process = subprocess.Popen(
        [sys.executable, "-m", "workbench", "broker", "--host", "0.0.0.0", "--port", "0",
         "--advertise", "127.0.0.1", "--no-local-socket", "--announce"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith("WORKBENCH_BROKER ")
        announced = process.stderr.readline()
        path = announced.split("connection file ")[1].split(" (")[0]
        assert os.path.dirname(path) == str(runtime / "workbench")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with open(path) as file:
            found = json.load(file)
        assert {"address", "server_key", "client_key", "client_secret"} <= set(found)
        assert found["address"].startswith("tcp://127.0.0.1:")
        assert all(len(decode_key(found[key])) == 32
                   for key in ("server_key", "client_key", "client_secret"))
        ws = NetWorkSpace("offloop", serverHost=path)
        ws.store("x", 42)
        assert ws.fetch("x") == 42
        port = int(found["address"].rsplit(":", 1)[1])
        plain = subprocess.run(  # a process that never saw the file: plain by address
            [sys.executable, "-c", "import workbench\n"
             f"workbench.NetWorkSpace('offloop', serverHost='127.0.0.1', serverPort={port})"],
            env=env, capture_output=True, text=True, timeout=30)
        assert "NwsConnectException" in plain.stderr and "requires CURVE" in plain.stderr
        status = subprocess.run([sys.executable, "-m", "workbench", "status", "--broker", path],
                                env=env, capture_output=True, text=True, timeout=30)
        assert "security   CURVE on TCP" in status.stdout
        assert "refused_mechanism 1" in status.stdout
        ws.server.close()
    finally:
        process.terminate()
        process.wait(15)
        process.stdout.close()
        process.stderr.close()
    assert not os.path.exists(path)  # its keys died with the broker


def test_the_address_in_the_connection_file_is_reachable_from_elsewhere():
    from workbench.hosts import advertised_host
    assert advertised_host("10.1.2.3") == "10.1.2.3"
    assert advertised_host("node7.example") == "node7.example"
    chosen = advertised_host("0.0.0.0")
    assert chosen not in ("0.0.0.0", "127.0.0.1", "")
    socket.getaddrinfo(chosen, None)  # a name or address this machine resolves


def test_insecure_off_loopback_starts_with_a_warning(make_broker):
    broker = make_broker("--host", "0.0.0.0", "--insecure", "--no-local-socket")
    wait_for(lambda: "without authentication or encryption" in broker.log(), timeout=10)
    ws = NetWorkSpace("insecure", serverHost="127.0.0.1", serverPort=broker.port)
    ws.store("x", 1)
    assert ws.fetch("x") == 1
    ws.server.close()
    contradiction = subprocess.run(
        [sys.executable, "-m", "workbench", "broker", "--curve", "--insecure", "--port", "0"],
        capture_output=True, text=True, timeout=30)
    assert contradiction.returncode == 2 and "contradict" in contradiction.stderr


def test_a_wrong_server_key_is_refused_and_counted(curve_broker):
    before = counters(curve_broker).get("curve_server_key", 0)
    target = read_connection_file(curve_broker.connection_file)
    forged = target._replace(server_key=KeyPair.generate().public)
    with pytest.raises(NwsConnectException, match="CURVE handshake failed"):
        NetWorkSpace("wrongkey", serverHost=forged.to_json())
    wait_for(lambda: counters(curve_broker).get("curve_server_key", 0) == before + 1)


def test_only_the_connection_file_s_own_key_pair_gets_in(curve_broker):
    """The server key is public: knowing it and making a key pair of one's own is not enough."""
    before = counters(curve_broker).get("curve_key_refused", 0)
    target = read_connection_file(curve_broker.connection_file)
    pair = KeyPair.generate()
    forged = target._replace(client_key=pair.public, client_secret=pair.secret)
    with pytest.raises(NwsConnectException, match="refused this client's key"):
        NetWorkSpace("ownpair", serverHost=forged.to_json())
    sock = libzmq_dealer(forged)  # nor with libzmq
    sock.send(request_head(Op.HELLO, 1, [b"{}"]))
    assert not sock.poll(1000)
    sock.close()
    wait_for(lambda: counters(curve_broker).get("curve_key_refused", 0) == before + 2)
    # each kind of refusal is logged once for each source, then only counted
    assert curve_broker.log().count("refused a connection from 127.0.0.1: the client's key") == 1


def test_allowed_keys_let_in_only_their_clients_and_are_read_again(tmp_path, make_broker):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    alice_public, alice_secret = zmq.auth.create_certificates(str(tmp_path), "alice")
    os.rename(alice_public, allowed / "alice.key")
    broker = make_broker("--curve", "--allow-keys", str(allowed), "--no-local-socket")
    written = read_connection_file(broker.connection_file)
    assert written.curve and written.client_key is None  # each client brings its own key
    mine = str(tmp_path / "alice.json")
    made = subprocess.run([sys.executable, "-m", "workbench", "connection-file",
                           broker.connection_file, "--key-file", alice_secret, "-o", mine],
                          capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(os.stat(mine).st_mode) == 0o600
    ws = NetWorkSpace("allowed", serverHost=mine)
    ws.store("x", "alice's")

    bob = KeyPair.generate()
    bobs = str(tmp_path / "bob.json")
    write(bobs, written._replace(client_key=bob.public, client_secret=bob.secret))
    with pytest.raises(NwsConnectException, match="refused this client's key"):
        NetWorkSpace("allowed", serverHost=bobs)
    assert counters(broker, via=mine)["curve_key_refused"] == 1
    # A libzmq client with an allowed key gets in too; one without is refused the same way.
    sock = libzmq_dealer(read_connection_file(mine))
    assert call(sock, Op.HELLO, 1, [b"{}"])[0][1] == 0
    sock.close()

    (allowed / "bob.key").write_text(
        f'curve\n    public-key = "{z85.encode(bob.public)}"\n')  # admitted, no restart
    bob_ws = NetWorkSpace("allowed", serverHost=bobs)
    assert bob_ws.fetch("x") == "alice's"
    os.unlink(allowed / "alice.key")  # shut out: new connections only
    with pytest.raises(NwsConnectException, match="refused this client's key"):
        NetWorkSpace("allowed2", serverHost=mine)
    ws.store("y", "still connected")
    assert bob_ws.fetch("y") == "still connected"
    ws.server.close()
    bob_ws.server.close()


def test_broker_key_file_keeps_the_connection_file_good_across_restarts(tmp_path, make_broker):
    _, secret = zmq.auth.create_certificates(str(tmp_path), "server")
    path = str(tmp_path / "keep.json")
    first = make_broker("--curve", "--key-file", secret, "--connection-file", path)
    before = read_connection_file(path)
    assert z85.encode(before.server_key) == zmq.auth.load_certificate(secret)[0].decode()
    first.stop()
    assert os.path.exists(path)  # with --key-file the file outlives the broker
    second = make_broker("--curve", "--key-file", secret, "--connection-file", path,
                         "--port", str(first.port))
    after = read_connection_file(path)
    assert after.client_key == before.client_key
    ws = NetWorkSpace("kept", serverHost=path)
    ws.store("x", 1)
    assert ws.fetch("x") == 1
    ws.server.close()
    second.stop()


def raw_curve_connection(target: BrokerTarget) -> tuple[socket.socket, CurveInbound]:
    """A TCP connection that has done CURVE's handshake by hand, to misbehave after it."""
    host, port = target.address[len("tcp://"):].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    handshake = ClientHandshake(target.client_keys(),
                                properties(Socket_Type=b"DEALER", Identity=os.urandom(18)))
    inbound = CurveInbound(1 << 30, handshake)
    sock.sendall(CLIENT_GREETING + handshake.hello())
    while inbound.boxes is None:
        inbound.feed(sock.recv(65536))
        for reply in inbound.replies:
            sock.sendall(reply)
        inbound.replies.clear()
    return sock, inbound


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_a_replayed_message_closes_the_connection_and_is_counted(curve_broker):
    target = read_connection_file(curve_broker.connection_file)
    legitimate = NetWorkSpace("replay", serverHost=curve_broker.connection_file)
    before = counters(curve_broker).get("curve_nonce", 0)
    sock, inbound = raw_curve_connection(target)
    message = b"".join(inbound.seal([request_head(Op.HEARTBEAT, 1)]))
    sock.sendall(message)
    sock.sendall(message)  # the same nonce again
    assert closed_by_peer(sock)
    sock.close()
    assert counters(curve_broker)["curve_nonce"] == before + 1
    legitimate.store("x", "unharmed")
    assert legitimate.fetch("x") == "unharmed"
    legitimate.server.close()


@pytest.mark.parametrize("mangle, counter", [
    (lambda hello: hello[:-1] + bytes([hello[-1] ^ 1]), "curve_server_key"),  # garbled box
    (lambda hello: hello[:100], "curve_malformed"),  # a truncated command (length lies)
    (lambda hello: hello[:2] + b"\x05HELLO\x02\x00" + hello[10:], "curve_malformed"),  # v2.0
])
def test_garbled_handshakes_are_refused_and_counted(curve_broker, mangle, counter):
    target = read_connection_file(curve_broker.connection_file)
    host, port = target.address[len("tcp://"):].rsplit(":", 1)
    before = counters(curve_broker).get(counter, 0)
    hello = ClientHandshake(target.client_keys(), b"").hello()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        data = mangle(hello)
        if len(data) < len(hello):  # cut short: the header says more; close our side
            data = data[:1] + bytes([len(data) - 2]) + data[2:]
        sock.sendall(CLIENT_GREETING + data)
        assert closed_by_peer(sock)
    assert counters(curve_broker)[counter] == before + 1


def test_a_truncated_initiate_is_refused(curve_broker):
    target = read_connection_file(curve_broker.connection_file)
    host, port = target.address[len("tcp://"):].rsplit(":", 1)
    before = counters(curve_broker).get("curve_malformed", 0)
    handshake = ClientHandshake(target.client_keys(), b"")
    inbound = CurveInbound(1 << 30, handshake)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(CLIENT_GREETING + handshake.hello())
        while not inbound.replies:
            inbound.feed(sock.recv(65536))
        initiate = inbound.replies[0]
        short = initiate[2:200]  # a short frame: a 198-byte INITIATE, under its minimum
        sock.sendall(bytes((4, len(short))) + short)
        assert closed_by_peer(sock)
    assert counters(curve_broker)["curve_malformed"] == before + 1


def test_a_handshake_that_never_completes_is_closed(make_broker):
    broker = make_broker("--curve", "--handshake-timeout", "0.5", "--no-local-socket")
    legitimate = NetWorkSpace("slow", serverHost=broker.connection_file)
    with socket.create_connection((broker.host, broker.port), timeout=10) as sock:
        sock.sendall(CLIENT_GREETING)  # and nothing more
        assert closed_by_peer(sock)
    assert counters(broker)["handshake_timeouts"] == 1
    legitimate.store("x", 1)
    assert legitimate.fetch("x") == 1
    legitimate.server.close()


@pytest.mark.parametrize("content, message", [
    (None, "cannot read the connection file"),
    ("not json", "not JSON"),
    ('{"server_key": "x"}', 'no "address"'),
    ('{"address": "tcp://127.0.0.1:1", "server_key": "short", "client_key": "a", '
     '"client_secret": "b"}', "not a CURVE key"),
    ('{"address": "tcp://127.0.0.1:1", "client_key": "0000000000000000000000000000000000000000"}',
     "lacks server_key, client_secret"),
    ('{"address": "tcp://127.0.0.1:1", "server_key": "0000000000000000000000000000000000000000"}',
     "no client key pair"),
])
def test_a_connection_file_that_cannot_be_used_is_named(tmp_path, content, message):
    path = tmp_path / "broker.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(NwsConnectionFileException, match=message) as raised:
        NetWorkSpace("x", serverHost=str(path))
    assert str(path) in str(raised.value)


def test_sleigh_workers_get_the_connection_without_a_key_on_their_command_line(curve_broker):
    from workbench import Sleigh
    secret = z85.encode(read_connection_file(curve_broker.connection_file).client_secret)
    with Sleigh(workerCount=2, broker=curve_broker.connection_file) as sleigh:
        assert sleigh.eachElem(lambda x: x * x, list(range(10))) == [x * x for x in range(10)]
        pids = [info["pid"] for info in sleigh.workerInfo()]
        assert len(pids) == 2
        for pid in pids:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
            assert b"--broker" in argv and argv[argv.index(b"--broker") + 1] == b"-"
            assert secret.encode() not in b" ".join(argv)
            with open(f"/proc/{pid}/environ", "rb") as environ:
                assert secret.encode() not in environ.read()


def test_ssh_and_callable_launchers_hand_the_connection_on_stdin(curve_broker, tmp_path,
                                                                monkeypatch):
    from workbench import Sleigh
    secret = z85.encode(read_connection_file(curve_broker.connection_file).client_secret)
    log = tmp_path / "ssh.log"
    fake = tmp_path / "ssh"  # runs the remote command here, keeping stdin, and logs its argv
    fake.write_text('#!/bin/sh\nhost="$1"; shift\necho "$host $*" >> "$FAKE_SSH_LOG"\n'
                    'exec /bin/sh -c "$*"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    with Sleigh(launch="ssh", nodeList=["nodeA", "nodeB"], broker=curve_broker.connection_file,
                python=sys.executable) as sleigh:
        assert sleigh.eachElem(abs, [-1, -2, -3]) == [1, 2, 3]
    commands = log.read_text()
    assert "--broker - " in commands and secret not in commands

    started = []

    def launch(argv, rank):
        started.append(argv)
        return subprocess.Popen(argv, stdin=subprocess.PIPE, env=dict(
            os.environ, PYTHONPATH=os.getcwd(), WORKBENCH_BROKER=""))

    with Sleigh(2, launch=launch, broker=curve_broker.connection_file) as sleigh:
        assert sleigh.eachElem(abs, [-4, -5]) == [4, 5]
    assert all(argv[argv.index("--broker") + 1] == "-" for argv in started)


def test_an_array_fetched_over_curve_is_whole_and_writable(curve_broker, monkeypatch):
    import numpy as np
    monkeypatch.setenv("WORKBENCH_SHM", "0")  # every byte crosses the CURVE connection
    ws = NetWorkSpace("arrays", serverHost=curve_broker.connection_file)
    array = np.arange(3_000_000, dtype=np.float64)
    ws.store("a", array)
    fetched = ws.fetch("a")
    assert fetched.flags.writeable and np.array_equal(fetched, array)
    fetched[0] = -1.0  # as over a plain connection
    ws.server.close()


def test_the_in_place_boxes_and_pynacl_s_speak_the_same_wire(curve_broker):
    """The broker seals and opens in place through the system libsodium (which CI installs);
    a client on PyNaCl alone (``WORKBENCH_SODIUM=pynacl``) talks to it byte for byte."""
    from workbench.zmtp import sodium
    assert sodium.IN_PLACE, "no shared libsodium found: install it (Debian: libsodium23)"
    code = (
        "import os, workbench\n"
        "from workbench.zmtp import sodium\n"
        "assert not sodium.IN_PLACE\n"
        "ws = workbench.NetWorkSpace('pynacl_side', persistent=True)\n"
        "for size in (1, 300, 70_000, 3 << 20):\n"
        "    value = os.urandom(size)\n"
        "    ws.store('v', value)\n"
        "    assert ws.fetch('v') == value, size\n"
        "ws.store('back', b'from pynacl' * 10_000)\n")
    done = subprocess.run([sys.executable, "-c", code], env=curve_broker.env(
        WORKBENCH_SODIUM="pynacl", WORKBENCH_SHM="0"), capture_output=True, text=True,
        timeout=60)
    assert done.returncode == 0, done.stderr
    ws = NetWorkSpace("pynacl_side", serverHost=curve_broker.connection_file)
    assert ws.fetch("back", timeout=10) == b"from pynacl" * 10_000
    ws.server.close()


def test_broker_dash_on_a_terminal_says_so_instead_of_waiting():
    """``--broker -`` reads a connection file on stdin; on a terminal nobody will write it."""
    import pty
    leader, follower = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "workbench", "worker", "--broker", "-",
                               "--sleigh", "any"], stdin=follower, capture_output=True,
                              text=True, timeout=30)
    finally:
        os.close(leader)
        os.close(follower)
    assert done.returncode == 2 and "stdin is a terminal" in done.stderr
