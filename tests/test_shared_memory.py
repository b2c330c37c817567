"""Large values through /dev/shm between processes of one machine, and through the socket for
clients that cannot share it; no file outlives its value or its broker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from workbench import NetWorkSpace, NwsMemoryException, shm

from .support import run_client, wait_for


def broker_files(broker) -> list[str]:
    return sorted(name for name in os.listdir(shm.SHM_DIR)
                  if name.startswith(f"{shm.PREFIX}{broker.process.pid}-"))


def big_array(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((512, 1024))  # 4 MiB


def test_a_large_value_goes_through_shared_memory_and_the_file_goes_with_it(broker, ws):
    assert shm.identity() is not None, "this machine's /dev/shm should be usable"
    assert ws._connection.shm_pid == broker.process.pid
    array = big_array()
    ws.store("a", array)
    [name] = broker_files(broker)
    assert os.stat(os.path.join(shm.SHM_DIR, name)).st_size == array.nbytes
    got = ws.fetch("a")
    assert np.array_equal(got, array)
    got[0, 0] = -1.0  # a private, writable copy-on-write view: the file is untouched
    ws.store("other", 1)  # carries the acknowledgement of the fetch
    wait_for(lambda: broker_files(broker) == [], message="file kept after its value went")
    assert got[0, 0] == -1.0 and got[1, 1] == array[1, 1]  # still readable after the unlink


def test_small_values_stay_in_the_socket(broker, ws):
    ws.store("s", np.arange(1000))
    assert broker_files(broker) == []
    assert ws.fetch("s").sum() == 499500


def test_clients_that_cannot_share_get_bytes(broker, ws, ws_name):
    array = big_array(1)
    ws.store("to_remote", array)
    code = textwrap.dedent(f"""
        import numpy as np
        from workbench import NetWorkSpace
        ws = NetWorkSpace({ws_name!r}, useUse=True)
        assert ws._connection.shm_pid is None
        got = ws.fetch("to_remote", timeout=10)
        ws.store("checksum", float(got.sum()))
        ws.store("from_remote", np.full((512, 1024), 7.0))
        """)
    result = run_client(broker, code, WORKBENCH_SHM="0")
    assert result.returncode == 0, result.stderr
    assert ws.fetch("checksum", timeout=10) == pytest.approx(float(array.sum()))
    assert ws.fetch("from_remote", timeout=10)[3, 3] == 7.0


def test_finders_keep_what_they_found(broker, ws, other):
    array = big_array(2)
    ws.store("shared", array)
    found = other.find("shared")
    assert np.array_equal(ws.fetch("shared"), array)
    ws.store("ack", 1)
    assert np.array_equal(found, array)


def test_a_refused_value_leaves_no_file(make_broker):
    broker = make_broker("--max-memory", "2M")
    ws = NetWorkSpace("capped", broker.host, broker.port)
    with pytest.raises(NwsMemoryException):
        ws.store("a", big_array())
    assert broker_files(broker) == []
    ws.close()


def test_files_do_not_outlive_their_broker(make_broker):
    broker = make_broker()
    ws = NetWorkSpace("kept", broker.host, broker.port, persistent=True)
    ws.store("a", big_array())
    assert len(broker_files(broker)) == 1
    ws.close()
    assert broker.stop() == 0
    assert broker_files(broker) == []


def test_files_of_a_dead_broker_are_swept(make_broker):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(shm.SHM_DIR, f"{shm.PREFIX}{dead.pid}-abc-def")
    with open(stale, "wb") as f:
        f.write(b"left behind")
    make_broker()
    assert not os.path.exists(stale)


def test_one_file_cannot_back_two_values(broker, ws):
    """A client that hands over the same file twice is refused: releasing one value must not
    take the data of another with it."""
    import time

    from workbench.codec import encode
    from workbench.protocol import Op

    array = big_array(3)
    before = set(broker_files(broker))  # earlier tests' files may wait out their grace
    ws.store("first", array)
    [name] = set(broker_files(broker)) - before
    frames = encode(array)
    head = bytearray(frames[0])
    head[1] |= shm.SHARED
    reference = name.encode() + b":%d" % array.nbytes
    channel = ws._connection.channel()
    request_id = channel.send(Op.STORE, [ws._wsb, b"second"], [bytes(head), reference])
    reply, _ = channel.receive(request_id, time.monotonic() + 10, lambda: None)
    assert reply[1] == 16 and b"already holds another value" in reply
    assert np.array_equal(ws.fetch("first"), array)


def test_a_file_removed_behind_the_brokers_back_is_a_clear_error(broker, ws, ws_name):
    before = set(broker_files(broker))
    ws.store("doomed", big_array(4))
    [name] = set(broker_files(broker)) - before
    os.unlink(os.path.join(shm.SHM_DIR, name))
    code = textwrap.dedent(f"""
        from workbench import NetWorkSpace, NwsOperationException
        ws = NetWorkSpace({ws_name!r}, useUse=True)
        try:
            ws.fetch("doomed", timeout=10)
        except NwsOperationException as exc:
            print("error:", exc)
        """)
    result = run_client(broker, code, WORKBENCH_SHM="0")
    assert result.returncode == 0, result.stderr
    assert "shared-memory file is gone" in result.stdout
    ws.store("after", 1)  # the broker serves on
    assert ws.fetch("after") == 1


def test_a_vanished_file_in_a_fetch_many_loses_only_that_value(broker, ws, ws_name):
    ws.store("mixed", "before")
    before = set(broker_files(broker))
    ws.store("mixed", big_array(4))
    [name] = set(broker_files(broker)) - before
    ws.store("mixed", "after")
    os.unlink(os.path.join(shm.SHM_DIR, name))
    code = textwrap.dedent(f"""
        from workbench import NetWorkSpace, NwsOperationException
        ws = NetWorkSpace({ws_name!r}, useUse=True)
        try:
            ws.fetch_many("mixed", 10, timeout=10)
        except NwsOperationException as exc:
            print("error:", exc)
        """)
    result = run_client(broker, code, WORKBENCH_SHM="0")
    assert result.returncode == 0, result.stderr
    assert "shared-memory file is gone" in result.stdout
    assert ws.fetch_many_try("mixed", 10) == ["before", "after"]


def test_compare_and_swap_compares_a_shared_memory_value_byte_for_byte(broker, ws_name):
    """The broker compares the file at its edge: swapped only when every byte is the same."""
    from workbench import KeyValueStore

    kv = KeyValueStore(broker.host, broker.port, workspace=ws_name)
    try:
        array = big_array(5)
        before = set(broker_files(broker))
        kv.store("k", array)
        assert len(set(broker_files(broker)) - before) == 1  # it went through shared memory
        almost = array.copy()
        almost[-1, -1] += 1.0  # the last byte of the file differs
        assert np.array_equal(kv.compare_and_swap("k", "new", almost).value, array)
        assert np.array_equal(kv.get("k").value, array)  # not swapped
        assert np.array_equal(kv.compare_and_swap("k", "new", array).value, array)
        assert kv.get("k").value == "new"
    finally:
        kv.close()


def test_the_server_edge_inspects_only_its_own_references_and_compares_files():
    files = shm.BrokerFiles(os.getpid())
    assert files.inspect([b"plain bytes", b"workbench-1-ab-cd:5"]) is None  # not ours
    frames, path = shm.spill([b"head", b"data" * 1000], os.getpid(), "ab")
    missing = f"{shm.PREFIX}{os.getpid()}-ab-0123:7".encode()
    try:
        found = files.inspect([b"other", frames[1], missing])
        assert found[frames[1]] == 4000
        assert "No such file" in found[missing]
        assert files.holds(frames[1], [b"data" * 1000])
        assert not files.holds(frames[1], [b"data" * 999 + b"datb"])
        assert not files.holds(missing, [b"x" * 7])
    finally:
        os.unlink(path)
