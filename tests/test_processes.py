"""Several client processes on one broker: exactly-once delivery, hand-offs, ownership and
lifetime when processes exit or are killed, and the embedded broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from workbench import DICT, NetWorkSpace, NwsServer

from .support import (
    HEARTBEAT_INTERVAL, HEARTBEAT_LIVENESS, has_session, run_client, spawn_client, wait_for,
)

DEAD_AFTER = HEARTBEAT_INTERVAL * HEARTBEAT_LIVENESS


def code(text: str) -> str:
    return textwrap.dedent(text)


def read_line(process: subprocess.Popen, timeout: float = 20.0) -> str:
    import select

    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no output from client: {process.stderr.read() if process.poll() else ''}"
    return process.stdout.readline().strip()


def test_concurrent_fetchers_in_several_processes_get_every_value_once(broker, ws, ws_name):
    consumers = [spawn_client(broker, code(f"""
        from workbench import NetWorkSpace
        ws = NetWorkSpace({ws_name!r}, useUse=True)
        got = []
        while True:
            value = ws.fetch("jobs", timeout=20)
            if value is None:
                break
            got.append(value)
        ws.store("done", got)
        """)) for _ in range(3)]
    for i in range(600):
        ws.store("jobs", i)
    for _ in consumers:
        ws.store("jobs", None)
    results = [ws.fetch("done", timeout=30) for _ in consumers]
    for process in consumers:
        assert process.wait(30) == 0, process.stderr.read()
        process.stdout.close()
        process.stderr.close()
    delivered = sorted(v for got in results for v in got)
    assert delivered == list(range(600))
    assert all(got == sorted(got) for got in results)  # each saw the FIFO order


def test_store_in_one_process_reaches_a_fetch_blocked_in_another(broker, ws, ws_name):
    process = spawn_client(broker, code(f"""
        from workbench import NetWorkSpace
        ws = NetWorkSpace({ws_name!r}, useUse=True)
        ws.store("ready2", 1)
        print(ws.fetch("handoff2", timeout=20), flush=True)
        """))
    ws.fetch("ready2", timeout=20)
    wait_for(lambda: ws.listVars(format=DICT).get("handoff2", (0, 0, 0))[2] == 1)
    ws.store("handoff2", "across processes")
    assert read_line(process) == "across processes"
    assert process.wait(10) == 0
    process.stdout.close()
    process.stderr.close()


def test_owner_exit_purges_its_workspace_and_wakes_waiters(broker, ws_name, server):
    result = run_client(broker, code(f"""
        from workbench import NetWorkSpace
        ws = NetWorkSpace({ws_name!r})
        ws.store("x", 1)
        """))
    assert result.returncode == 0, result.stderr
    # A normal exit says goodbye: the purge is immediate.
    wait_for(lambda: ws_name not in server.listWss(format=DICT), timeout=2)


@pytest.mark.parametrize("persistent", [False, True])
def test_killed_owner_is_noticed_by_heartbeat(broker, ws_name, server, persistent):
    owner = spawn_client(broker, code(f"""
        import time
        from workbench import NetWorkSpace
        ws = NetWorkSpace({ws_name!r}, persistent={persistent})
        ws.store("x", 1)
        print("ready", flush=True)
        time.sleep(60)
        """))
    assert read_line(owner) == "ready"
    watcher = server.useWs(ws_name)
    from .test_client import in_thread

    thread, box = in_thread(watcher.fetch, "never")
    wait_for(lambda: server.listWss(format=DICT)[ws_name] and
             watcher.listVars(format=DICT).get("never", (0, 0, 0))[2] == 1)
    killed_at = time.monotonic()
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()
    owner.stderr.close()
    if persistent:
        wait_for(lambda: not has_session(broker, owner.pid), timeout=10,
                 message="the killed owner's session was never ended")
        assert server.listWss(format=DICT)[ws_name][4] == 2  # values kept: x and never
        assert watcher.fetch("x", timeout=5) == 1
        server.deleteWs(ws_name)
    else:
        wait_for(lambda: ws_name not in server.listWss(format=DICT), timeout=10)
        purged_after = time.monotonic() - killed_at
        assert purged_after < DEAD_AFTER + 2
        thread.join(5)
        assert "purged" in str(box["error"])


def test_value_handed_to_a_killed_client_goes_back(broker, ws, ws_name):
    """A raw client takes a value and never acknowledges it; killing it returns the value."""
    taker = spawn_client(broker, code(f"""
        import json, os, socket, sys, time, zmq
        from workbench.protocol import Op, request_head
        sock = zmq.Context().socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, os.urandom(16) + b"\\x01\\x00")
        sock.connect(os.environ["WORKBENCH_BROKER"])
        sock.send(request_head(Op.HELLO, 1, [json.dumps({{"pid": os.getpid()}}).encode()]))
        sock.recv()
        sock.send(request_head(Op.FETCH, 2, [{ws_name!r}.encode(), b"precious"]))
        head = sock.recv()
        print("got", head[1], flush=True)  # status 0: the value arrived, never acknowledged
        time.sleep(60)
        """))
    wait_for(lambda: ws.listVars(format=DICT).get("precious", (0, 0, 0))[2] == 1)
    ws.store("precious", "do not lose me")
    assert read_line(taker) == "got 0"
    assert ws.fetchTry("precious") is None  # it is out, leased to the taker
    taker.send_signal(signal.SIGKILL)
    taker.wait()
    taker.stdout.close()
    taker.stderr.close()
    assert ws.fetch("precious", timeout=10) == "do not lose me"


def test_fetcher_killed_while_blocked_loses_no_value(broker, ws, ws_name):
    blocked = spawn_client(broker, code(f"""
        from workbench import NetWorkSpace
        ws = NetWorkSpace({ws_name!r}, useUse=True)
        print("blocking", flush=True)
        ws.fetch("item")
        """))
    assert read_line(blocked) == "blocking"
    wait_for(lambda: ws.listVars(format=DICT).get("item", (0, 0, 0))[2] == 1)
    blocked.send_signal(signal.SIGKILL)
    blocked.wait()
    blocked.stdout.close()
    blocked.stderr.close()
    ws.store("item", "still here")  # may be handed to the dead fetcher before it is noticed
    assert ws.fetch("item", timeout=10) == "still here"


def test_embedded_broker_lives_as_long_as_its_process(tmp_path):
    script = code("""
        import os, sys
        os.environ.pop("WORKBENCH_BROKER", None)
        from workbench import NetWorkSpace
        from workbench.client import embedded
        ws = NetWorkSpace("embedded")
        ws.store("x", 41)
        assert ws.fetch("x") + 1 == 42
        child = embedded._embedded
        print(child.pid if child else "default", os.environ.get("WORKBENCH_BROKER"), flush=True)
        if sys.argv[1] == "hang":
            import time; time.sleep(60)
        """)
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_BROKER"}
    done = subprocess.run([sys.executable, "-c", script, "exit"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pid, address = done.stdout.split()
    assert pid != "default", "a broker answered at the default address; stop it to run this test"
    assert address.startswith("tcp://127.0.0.1:")
    wait_for(lambda: not _alive(int(pid)), timeout=10, message="embedded broker outlived exit")

    # Killed without any chance to clean up: the broker notices its parent is gone.
    hung = subprocess.Popen([sys.executable, "-c", script, "hang"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = int(read_line(hung).split()[0])
    assert _alive(pid)
    hung.send_signal(signal.SIGKILL)
    hung.wait()
    hung.stdout.close()
    hung.stderr.close()
    wait_for(lambda: not _alive(pid), timeout=10, message="embedded broker outlived a SIGKILL")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_find_the_embedded_broker_through_the_environment(broker):
    """A child started with the parent's environment talks to the same broker."""
    result = run_client(broker, code("""
        import os, subprocess, sys
        from workbench import NetWorkSpace
        ws = NetWorkSpace("family")
        subprocess.run([sys.executable, "-c",
            "from workbench import NetWorkSpace; NetWorkSpace('family', useUse=True).store('m', 'hi')"],
            check=True)
        print(ws.fetch("m", timeout=10))
        """))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hi"


def test_nws_scripts_run_unchanged(broker):
    """The seed's own example, with the import changed."""
    result = run_client(broker, code("""
        from workbench import NetWorkSpace
        nws = NetWorkSpace("test")
        nws.store("answer", 42)
        count = nws.fetch("answer")
        print("The answer is", count)
        """))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "The answer is 42\n"


def test_open_ws_gives_a_workspace_usable_from_another_server(broker, ws_name):
    first = NwsServer(broker.host, broker.port)
    try:
        space = first.openWs(ws_name)
        space.store("k", "v")
        second = NetWorkSpace(ws_name, broker.host, broker.port, useUse=True)
        assert second.fetch("k", timeout=5) == "v"
        second.close()
        assert ws_name in first.listWss(format=DICT)  # a user leaving purges nothing
    finally:
        first.close()


def test_a_value_fetched_by_a_process_that_exits_without_closing_stays_consumed(broker, ws,
                                                                                 ws_name):
    ws.store("once", "only one copy")
    result = run_client(broker, code(f"""
        import gc, os
        from workbench import NetWorkSpace

        print(os.getpid())

        def take():
            space = NetWorkSpace({ws_name!r}, useUse=True)
            print(space.fetch("once", timeout=10))  # then the handle is dropped, never closed

        take()
        gc.collect()
        """))
    assert result.returncode == 0, result.stderr
    pid, taken = result.stdout.split("\n", 1)
    assert taken.strip() == "only one copy"
    # Had the session ended without the acknowledgement, the value would be back by now.
    wait_for(lambda: not has_session(broker, int(pid)), timeout=10)
    assert ws.fetchTry("once") is None  # not put back: it was consumed
