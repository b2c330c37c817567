"""workbench.memcache where python-memcached 1.60 meets a real memcached: the item size limit
(``set`` returns False for a value whose item does not fit), the debug lines it writes to
stderr, and ``quit_all`` — against a real broker, and side by side with a real memcached 1.6
spoken to as python-memcached speaks to it."""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess

import pytest

from workbench import memcache

from .support import broker_status, wait_for

MiB = 1 << 20
#: python-memcached 1.60's flags (its _FLAG_* constants)
FLAG_PICKLE, FLAG_INTEGER, FLAG_TEXT = 1, 2, 16


def address(broker) -> str:
    return f"{broker.host}:{broker.port}"


def largest(key: bytes, flags: int) -> int:
    """The longest value memcached 1.6 stores under ``key`` with ``flags`` (measured)."""
    return MiB - 59 - len(key) - (4 if flags else 0)


def pm_wire(value) -> tuple[int, bytes]:
    """A value as python-memcached 1.60 sends it: (flags, payload)."""
    if type(value) is bytes:
        return 0, value
    if type(value) is str:
        return FLAG_TEXT, value.encode("utf-8")
    if type(value) is int:
        return FLAG_INTEGER, b"%d" % value
    return FLAG_PICKLE, pickle.dumps(value, 0)


CASES = [  # (key, value) at and just past the limit, for each kind of value
    *[(key, b"x" * (largest(key, 0) + extra)) for key in (b"k", b"a" * 250) for extra in (0, 1)],
    *[(b"t", "é" * (largest(b"t", FLAG_TEXT) // 2) + "y" * extra) for extra in (0, 1, 2)],
    *[(b"p", [b"y" * (largest(b"p", FLAG_PICKLE) - 60 + extra)]) for extra in (0, 30)],
]


@pytest.fixture
def mc(broker, ws_name):
    client = memcache.Client([address(broker)], workspace=ws_name)
    yield client
    client.disconnect_all()


# Short ids: pytest puts a test's id in PYTEST_CURRENT_TEST, which the brokers the fixtures
# start inherit, and a megabyte of it does not fit in a process's environment (E2BIG).
@pytest.mark.parametrize("key,value", CASES, ids=[
    f"{type(value).__name__}-key{len(key)}-{index}" for index, (key, value) in enumerate(CASES)])
def test_a_value_whose_item_does_not_fit_in_1_mib_is_not_stored(mc, key, value):
    flags, payload = pm_wire(value)
    fits = 59 + len(key) + (4 if flags else 0) + len(payload) <= MiB
    assert mc.set(key, value) is fits
    assert mc.get(key) == (value if fits else None)


def test_the_client_check_still_comes_first_and_returns_0(mc, capsys, broker, ws_name):
    assert mc.set("big", b"x" * (MiB + 1)) == 0
    assert mc.set_multi({"ok": b"x", "full": b"x" * MiB}) == ["full"]
    assert mc.add("full", b"x" * MiB) is False
    assert mc.set("full", b"x" * MiB, noreply=True) is True  # noreply cannot hear the refusal
    assert mc.get("full") is None
    assert mc.set("zeros", bytes(2 * MiB), min_compress_len=1) is True  # the item is compressed
    larger = memcache.Client([address(broker)], workspace=ws_name,
                             server_max_value_length=2 * MiB)  # as for memcached -I 2m
    assert larger.set("two", b"x" * (2 * MiB - 100)) is True
    unlimited = memcache.Client([address(broker)], workspace=ws_name, server_max_value_length=0)
    assert unlimited.set("huge", b"x" * (3 * MiB)) is True
    for client in (larger, unlimited):
        client.disconnect_all()
    assert capsys.readouterr().err == ""  # nothing is logged without debug


def refuse_each_store_command(mc: memcache.Client) -> None:
    """Each way a store command does not store, and a touch of a missing key (``mc`` has
    ``cache_cas``); the same sequence is sent to memcached below."""
    assert mc.set("full", b"x" * MiB) is False
    mc.set("k", 1)
    assert mc.add("k", 2) is False
    assert mc.replace("nothing", 2) is False
    assert mc.append("nothing", "x") is False
    mc.gets("k")
    mc.set("k", 3)
    assert mc.cas("k", 4) is False  # changed since gets
    mc.gets("k")
    mc.delete("k")
    assert mc.cas("k", 5) is False  # gone since gets
    assert mc.touch("nothing", 10) == 0


def test_debug_lines_are_the_ones_python_memcached_wrote(broker, ws_name, capsys):
    mc = memcache.Client([address(broker)], workspace=ws_name, debug=1, cache_cas=True)
    try:
        assert mc.set("big", b"x" * (MiB + 1)) == 0  # refused before sending: silent
        assert capsys.readouterr().err == ""
        refuse_each_store_command(mc)
        assert capsys.readouterr().err.splitlines() == [
            "MemCached: while expecting 'STORED', got unexpected response "
            "'SERVER_ERROR object too large for cache'",
            "MemCached: while expecting 'STORED', got unexpected response 'NOT_STORED'",
            "MemCached: while expecting 'STORED', got unexpected response 'NOT_STORED'",
            "MemCached: while expecting 'STORED', got unexpected response 'NOT_STORED'",
            "MemCached: while expecting 'STORED', got unexpected response 'EXISTS'",
            "MemCached: while expecting 'STORED', got unexpected response 'NOT_FOUND'",
            "MemCached: touch expected TOUCHED, got: b'NOT_FOUND'",
        ]
    finally:
        mc.disconnect_all()


def test_quit_all_ends_the_sessions_and_the_next_call_reconnects(make_broker, ws_name):
    broker = make_broker()
    mc = memcache.Client([address(broker)], workspace=ws_name)
    assert mc.set("k", "v") is True
    sessions = len(broker_status(broker)["clients"])
    mc.quit_all()
    # the goodbye was answered before quit_all returned: the session is gone at once
    assert len(broker_status(broker)["clients"]) == sessions - 1
    assert mc.get("k") == "v"  # not marked dead: the next call connects again
    assert len(broker_status(broker)["clients"]) == sessions
    mc.quit_all()
    mc.quit_all()  # nothing connected: nothing to do


# ------------------------------------------------------------- side by side with memcached

class Memcached:
    """A real memcached spoken to as python-memcached 1.60 speaks: one text-protocol line per
    command, and the answer line its ``expect`` reads."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.lines = self.sock.makefile("rb")

    def command(self, line: bytes, data: bytes | None = None) -> str:
        self.sock.sendall(line + b"\r\n" + (b"" if data is None else data + b"\r\n"))
        return self.lines.readline().rstrip(b"\r\n").decode()

    def store(self, cmd: str, key: bytes, value, cas: int | None = None) -> str:
        flags, payload = pm_wire(value)
        extra = b"" if cas is None else b" %d" % cas
        return self.command(b"%s %s %d 0 %d%s" % (cmd.encode(), key, flags, len(payload), extra),
                            payload)

    def close(self) -> None:
        self.lines.close()
        self.sock.close()

    def gets_cas(self, key: bytes) -> int:
        self.sock.sendall(b"gets " + key + b"\r\n")
        head = self.lines.readline().split()
        self.lines.readline(), self.lines.readline()  # the value and END
        return int(head[4])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def memcached():
    path = shutil.which("memcached")
    if path is None:
        pytest.skip("memcached is not installed (benchmarks/install-anchors.sh installs it)")
    port = _free_port()
    argv = [path, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]  # memcached refuses to start as root unless told which user
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = wait_for(lambda: _connect(port, proc), message="memcached never answered")
        yield server
        server.close()
    finally:
        proc.terminate()
        proc.wait(10)


def _connect(port: int, proc: subprocess.Popen) -> Memcached | None:
    assert proc.poll() is None, "memcached exited at start"
    try:
        return Memcached(port)
    except OSError:
        return None


def test_set_answers_as_python_memcached_does_against_memcached(mc, memcached, capsys):
    """For each value at and past the item limit, the workbench's ``set`` returns what
    python-memcached's returns against a real memcached (``STORED`` -> True, else False)."""
    for key, value in CASES:
        answer = memcached.store("set", key, value)
        assert mc.set(key, value) is (answer == "STORED"), (key, len(pm_wire(value)[1]))


def test_refusals_and_debug_lines_match_memcached(broker, ws_name, memcached, capsys):
    """The same refused commands on both: memcached's answer line is what python-memcached's
    debug output quotes, and the workbench quotes the same one."""
    mc = memcache.Client([address(broker)], workspace=ws_name, debug=1, cache_cas=True)
    try:
        answers = [
            memcached.store("set", b"full", b"x" * MiB),
            memcached.store("set", b"k", 1) and memcached.store("add", b"k", 2),
            memcached.store("replace", b"nothing", 2),
            memcached.store("append", b"nothing", "x"),
        ]
        version = memcached.gets_cas(b"k")
        memcached.store("set", b"k", 3)
        answers.append(memcached.store("cas", b"k", 4, cas=version))
        version = memcached.gets_cas(b"k")
        memcached.command(b"delete k")
        answers.append(memcached.store("cas", b"k", 5, cas=version))
        touched = memcached.command(b"touch nothing 10")

        refuse_each_store_command(mc)
        expected = [f"MemCached: while expecting 'STORED', got unexpected response {answer!r}"
                    for answer in answers]
        expected.append(f"MemCached: touch expected TOUCHED, got: {touched.encode()!r}")
        assert capsys.readouterr().err.splitlines() == expected
    finally:
        mc.disconnect_all()
