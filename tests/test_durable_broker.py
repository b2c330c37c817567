"""A broker with a data directory (``workbench broker --data-dir``), killed with SIGKILL and
started again on the same directory and port: everything it acknowledged is there. Also: under
``--fsync always`` a reply leaves only once the log holding its change is on disk (a slow disk
stood in for); a log that cannot be written stops the broker before it acknowledges; the log is
compacted while the broker serves; a second broker on the directory refuses, naming the first
one's pid; ``--fsync`` wants a ``--data-dir``; ``workbench status`` shows the data directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from workbench.cli import durability_lines

from .support import Broker, broker_status, read_line, run_client, spawn_client, start_broker

#: What a client does before the broker is killed; it prints a line once all of it was
#: acknowledged, then stays (holding a value it never acknowledges, and its own workspace).
BEFORE = """
    import json, os, time, zmq
    import numpy as np
    from workbench import KeyValueStore, NetWorkSpace, mq
    from workbench.protocol import Op, request_head

    ws = NetWorkSpace("kept", persistent=True)
    for i in range(5):
        ws.store("fifo", i)
    ws.declare("stack", "lifo")
    for i in range(3):
        ws.store("stack", i)
    assert ws.fetch("fifo") == 0  # acknowledged by the next request
    ws.store("big", np.arange(300_000, dtype=np.float64))  # 2.4 MB: through shared memory
    ws.store("lease", "held when the broker died")
    mine = NetWorkSpace("mine")  # not persistent: it ends with this session
    mine.store("x", 1)
    kv = KeyValueStore()
    _, version = kv.store("k", "v1")
    kv.store("later", "in an hour", ttl=3600)
    kv.store("n", 41)
    kv.incr("n")
    jobs = mq.Queue("jobs:*", shared=True)
    for i in range(3):
        mq.twitter("jobs:run", i)
    assert jobs.qsize() == 3

    # a raw client takes a value and never acknowledges it
    sock = zmq.Context().socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, os.urandom(16) + b"\\x01\\x00")
    sock.connect(os.environ["WORKBENCH_BROKER"])
    sock.send(request_head(Op.HELLO, 1, [json.dumps({"pid": os.getpid()}).encode()]))
    sock.recv()
    sock.send(request_head(Op.FETCH, 2, [b"kept", b"lease"]))
    assert sock.recv()[1] == 0  # the value came, leased
    print(json.dumps({"version": version}), flush=True)
    time.sleep(60)
    """

#: What a client finds after the restart.
AFTER = """
    import json
    import numpy as np
    from workbench import KeyValueStore, NetWorkSpace, mq
    from workbench.protocol import Status

    ws = NetWorkSpace("kept", useUse=True)
    found = {"workspaces": sorted(ws.server.listWss(format="dict"))}
    found["vars"] = {name: (count, mode) for name, (_, count, _, _, mode)
                     in ws.listVars(format="dict").items()}
    found["fifo"] = [ws.fetchTry("fifo") for _ in range(5)]
    found["stack"] = [ws.fetchTry("stack") for _ in range(4)]
    found["big"] = bool((ws.fetchTry("big") == np.arange(300_000, dtype=np.float64)).all())
    found["lease"] = ws.fetchTry("lease")
    kv = KeyValueStore()
    found["k"] = list(kv.get("k"))
    found["cas"] = kv.store("k", "v2", how="cas", version=kv.get("k").version)[0] == Status.OK
    found["later"] = kv.get("later").value
    found["n"] = kv.get("n").value
    jobs = mq.Queue("jobs:*", shared=True)
    mq.twitter("jobs:run", "after")
    found["jobs"] = [jobs.get(timeout=5).args[0] for _ in range(4)]
    print(json.dumps(found), flush=True)
    """


def dedent(code: str) -> str:
    return textwrap.dedent(code).strip() + "\n"


def kill(broker: Broker) -> None:
    broker.process.send_signal(signal.SIGKILL)
    broker.process.wait(10)
    broker.process.stdout.close()


@pytest.mark.parametrize("policy", ["always", "everysec"])
def test_a_killed_broker_restarts_with_everything_it_acknowledged(tmp_path, policy) -> None:
    data = str(tmp_path / "data")
    first = start_broker(tmp_path, "--data-dir", data, "--fsync", policy)
    writer = spawn_client(first, dedent(BEFORE))
    try:
        line = read_line(writer, 30)
        assert line, writer.stderr.read() if writer.poll() is not None else "no line"
        version = json.loads(line)["version"]
        kill(first)  # SIGKILL: nothing of the broker's own shutdown runs
    finally:
        writer.kill()
        writer.communicate()
    second = start_broker(tmp_path, "--data-dir", data, "--fsync", policy,
                          "--port", str(first.port))
    try:
        assert second.port == first.port
        checked = run_client(second, dedent(AFTER))
        assert checked.returncode == 0, checked.stderr
        found = json.loads(checked.stdout)
    finally:
        second.stop()
    assert found["workspaces"] == ["__default", "__mq", "kept", "kv"]  # "mine" was purged
    assert found["vars"] == {"big": [1, "fifo"], "fifo": [4, "fifo"], "lease": [1, "fifo"],
                             "stack": [3, "lifo"]}
    assert found["fifo"] == [1, 2, 3, 4, None]
    assert found["stack"] == [2, 1, 0, None]
    assert found["big"] is True
    assert found["lease"] == "held when the broker died"  # back at the head
    assert found["k"] == ["v1", version] and found["cas"] is True
    assert found["later"] == "in an hour" and found["n"] == 42
    assert found["jobs"] == [0, 1, 2, "after"]
    assert "restored" in second.log() and "purged" in second.log()


def test_a_second_broker_on_a_data_directory_refuses_naming_the_first(tmp_path) -> None:
    data = str(tmp_path / "data")
    first = start_broker(tmp_path, "--data-dir", data)
    try:
        with pytest.raises(RuntimeError, match=f"in use by another broker \\(pid "
                                               f"{first.process.pid}\\)"):
            start_broker(tmp_path, "--data-dir", data)
    finally:
        first.stop()
    start_broker(tmp_path, "--data-dir", data).stop()  # free once the first stopped


def test_fsync_needs_a_data_directory() -> None:
    done = subprocess.run([sys.executable, "-m", "workbench", "broker", "--port", "0",
                           "--fsync", "always"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "add --data-dir" in done.stderr


def patched_broker(tmp_path, patch: str, *args: str) -> Broker:
    """A broker started by a script that runs ``patch`` first, then the broker in its own
    process (so that the patch can stand in for a disk)."""
    wrapper = tmp_path / f"patched-{len(list(tmp_path.glob('patched-*')))}.py"
    wrapper.write_text(dedent(patch) + dedent("""
        import runpy, sys
        sys.argv = sys.argv[3:]  # after: python -m workbench
        runpy.run_module("workbench", run_name="__main__")
        """))
    return start_broker(tmp_path, *args, within=[sys.executable, str(wrapper)])


#: An ``fdatasync`` that takes 50 ms and then writes where the records of the file it synced
#: ended (the file itself runs on in zeros while the broker appends to it).
SLOW_SYNC = """
    import os, time
    real = os.fdatasync
    def fdatasync(fd):
        from workbench.broker.durable.log import records_end  # (the patch comes first)
        time.sleep(0.05)  # a slow disk: a reply sent before the sync would be seen early
        real(fd)
        with open(os.environ["SYNCED_FILE"] + ".new", "w") as f:
            f.write(str(records_end(f"/proc/self/fd/{fd}")))
        os.replace(os.environ["SYNCED_FILE"] + ".new", os.environ["SYNCED_FILE"])
    os.fdatasync = fdatasync
    """


def test_with_fsync_always_a_reply_leaves_after_the_fdatasync_of_its_change(
        tmp_path, monkeypatch) -> None:
    synced = tmp_path / "synced"
    monkeypatch.setenv("SYNCED_FILE", str(synced))
    data = tmp_path / "data"
    broker = patched_broker(tmp_path, SLOW_SYNC, "--data-dir", str(data), "--fsync", "always")
    try:
        checked = run_client(broker, dedent(f"""
            from workbench import KeyValueStore, NetWorkSpace
            from workbench.broker.durable.log import records_end
            ws = NetWorkSpace("kept", persistent=True)
            kv = KeyValueStore()
            log, synced = {str(data / "log")!r}, {str(synced)!r}
            for i in range(10):
                ws.store("x", i) if i % 2 else kv.store("k", i)
                with open(synced) as f:  # the log on disk holds what was just acknowledged
                    assert int(f.read()) == records_end(log), i
            print("ok")
            """))
        assert checked.stdout == "ok\n", checked.stderr
    finally:
        broker.stop()


def test_the_log_is_compacted_while_the_broker_serves(tmp_path) -> None:
    """Values come and go: the log stays near its minimum size, compacted by the broker
    between requests, and a restart after SIGKILL restores what is left."""
    data = tmp_path / "data"
    broker = start_broker(tmp_path, "--data-dir", str(data), "--compact-min", "64k")
    try:
        churned = run_client(broker, dedent(f"""
            from workbench import NetWorkSpace
            from workbench.broker.durable.log import records_end
            ws = NetWorkSpace("kept", persistent=True)
            largest = 0
            for i in range(3000):  # over 700 kB of records
                ws.store("q" if i % 100 else "kept", "x" * 200 + str(i))
                ws.fetchTry("q")
                largest = max(largest, records_end({str(data / "log")!r}))
            print(largest)
            """), timeout=60)
        assert churned.returncode == 0, churned.stderr
        # uncompacted, the log would pass 700 kB; compactions run in the loop's spare time,
        # so a busy machine lets it grow further past --compact-min before one ends
        assert int(churned.stdout) < 10 * 64 * 1024
        assert "compacted the log" in broker.log()
        durability = broker_status(broker)["durability"]
        assert durability["compactions"] >= 1
        assert time.time() - 60 < durability["last_compaction"] <= time.time()
        kill(broker)
    finally:
        broker.stop()
    again = start_broker(tmp_path, "--data-dir", str(data))
    try:
        left = run_client(again, dedent("""
            from workbench import NetWorkSpace
            ws = NetWorkSpace("kept", useUse=True)
            values = []
            while (value := ws.fetchTry("kept")) is not None:
                values.append(int(value[200:]))
            print(values == list(range(0, 3000, 100)), ws.fetchTry("q"))
            """))
        assert left.stdout.split() == ["True", "None"], left.stderr
    finally:
        again.stop()


#: The disk refuses the log more room (ENOSPC) once the file FAIL_FILE exists; the log asks
#: for no more than it needs (no stretch ahead), so a record that does not fit in the page it
#: ends in asks for room.
FAILING_DISK = """
    import errno, os
    from workbench.broker.durable import log
    log.EXTEND = 0
    REFUSED = ("write", "writev", "pwrite", "pwritev", "posix_fallocate")
    def refusing(call):
        def refused(*args):
            if os.path.exists(os.environ["FAIL_FILE"]):
                raise OSError(errno.ENOSPC, "No space left on device")
            return call(*args)
        return refused
    class FailingOs:
        def __getattr__(self, name):
            return refusing(getattr(os, name)) if name in REFUSED else getattr(os, name)
    log.os = FailingOs()
    """


def test_a_broker_whose_log_cannot_be_written_stops_without_acknowledging(
        tmp_path, monkeypatch) -> None:
    fail = tmp_path / "full"
    monkeypatch.setenv("FAIL_FILE", str(fail))
    data = str(tmp_path / "data")
    broker = patched_broker(tmp_path, FAILING_DISK, "--data-dir", data)
    try:
        stored = run_client(broker, dedent(f"""
            from workbench import NetWorkSpace
            ws = NetWorkSpace("kept", persistent=True)
            ws.store("x", "logged")
            open({str(fail)!r}, "w").close()  # the disk is full from now on
            try:
                ws.store("x", "not logged" * 1000)  # more than a page: it needs room
            except Exception as exc:
                print(type(exc).__name__)
            """))
        assert stored.stdout == "NwsConnectionDroppedException\n", stored.stderr
        assert broker.process.wait(10) == 1
        assert "the log could not be written" in broker.log()
    finally:
        broker.stop()
    fail.unlink()
    again = start_broker(tmp_path, "--data-dir", data)
    try:
        left = run_client(again, dedent("""
            from workbench import NetWorkSpace
            ws = NetWorkSpace("kept", useUse=True)
            print(ws.fetchTry("x"), ws.fetchTry("x"))
            """))
        assert left.stdout == "logged None\n", left.stderr
    finally:
        again.stop()


def workbench_status(broker: Broker, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "workbench", "status", "--broker",
                           broker.address, *args], env=broker.env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_workbench_status_shows_the_data_directory(tmp_path) -> None:
    data = tmp_path / "data"
    started = time.time()
    broker = start_broker(tmp_path, "--data-dir", str(data), "--fsync", "always")
    try:
        stored = run_client(broker, dedent("""
            from workbench import NetWorkSpace
            NetWorkSpace("kept", persistent=True).store("x", "y" * 1000)
            """))
        assert stored.returncode == 0, stored.stderr
        durability = json.loads(workbench_status(broker, "--json"))["durability"]
        text = workbench_status(broker)
    finally:
        broker.stop()
    assert durability == {
        "data_dir": str(data), "fsync": "always", "log_bytes": durability["log_bytes"],
        "last_fsync": durability["last_fsync"], "compactions": 0, "last_compaction": None,
        "compacting": False}
    # nothing was written since the status was asked (it changes nothing)
    assert durability["log_bytes"] == os.path.getsize(data / "log") > 1000
    assert started <= durability["last_fsync"] <= time.time()  # the store's, under always
    assert f"\ndurability {data} (--fsync always), log " in text
    assert "\n           last fsync 20" in text and ", last compaction never\n" in text


def test_workbench_status_says_when_there_is_no_data_directory(tmp_path) -> None:
    broker = start_broker(tmp_path)
    try:
        assert json.loads(workbench_status(broker, "--json"))["durability"] is None
        text = workbench_status(broker)
    finally:
        broker.stop()
    assert "durability no data directory: nothing survives a restart\n" in text


def test_status_lines_of_a_data_directory() -> None:
    now = time.mktime((2024, 5, 2, 14, 3, 22, 0, 0, -1))
    durability = {"data_dir": "/srv/wb", "fsync": "everysec", "log_bytes": 3 << 20,
                  "last_fsync": now - 0.5, "compactions": 2, "last_compaction": now - 7200,
                  "compacting": True}
    assert durability_lines(durability, now) == [
        "durability /srv/wb (--fsync everysec), log 3.0 MiB",
        "           last fsync 2024-05-02 14:03:21 (0.5 s ago), last compaction 2024-05-02 "
        "12:03:22 (2.0 h ago) (2 since the broker started), one under way"]
    never = {**durability, "last_fsync": None, "compactions": 0, "last_compaction": None,
             "compacting": False}
    assert durability_lines(never, now)[1] == "           last fsync never, last compaction never"
