"""Finding brokers: every broker records itself in the runtime directory and removes its record
when it stops; ``workbench list`` shows them, ``workbench status`` with no address picks the
only one (or asks which), ``%nws status`` shows the notebook's. Real processes throughout, each
test with a runtime directory of its own."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap

import pytest

from workbench import _version
from workbench.runtime import (
    BrokerRecord, describe_process, process_start, record_path, records_directory,
    running_brokers,
)

from .support import read_line, wait_for


@pytest.fixture(autouse=True)
def runtime(tmp_path, monkeypatch):
    """A runtime directory of this test's own (its brokers, from ``make_broker``, and its
    subprocesses inherit it), and no broker named by the environment."""
    directory = tmp_path / "runtime"
    monkeypatch.setenv("WORKBENCH_RUNTIME_DIR", str(directory))
    monkeypatch.delenv("WORKBENCH_BROKER", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.getcwd())
    return directory


def workbench(*args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, **options)


def recorded(pid: int) -> dict:
    with open(record_path(pid), encoding="utf-8") as file:
        return json.load(file)


def test_a_broker_records_itself_and_workbench_list_shows_it(make_broker):
    broker = make_broker()
    path = record_path(broker.process.pid)
    assert stat.S_IMODE(os.stat(records_directory()).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    found = recorded(broker.process.pid)
    assert found["address"] == broker.address
    assert found["pid"] == broker.process.pid
    assert found["started_by"].startswith("workbench broker, from ")
    assert found["started_by"].endswith(f"(pid {os.getpid()})")
    assert found["curve"] is False and found["connection_file"] is None
    assert found["version"] == _version.__version__
    started = datetime.datetime.fromisoformat(found["started"])
    assert started.utcoffset() == datetime.timedelta(0)
    age = datetime.datetime.now(datetime.timezone.utc) - started
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=1)

    table = workbench("list")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.strip().splitlines()
    assert header.split()[:3] == ["ADDRESS", "PID", "STARTED"]
    assert row.split()[:2] == [broker.address, str(broker.process.pid)]
    assert "workbench broker, from" in row and row.endswith("no")
    listed = workbench("list", "--json")
    assert json.loads(listed.stdout) == [found]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_broker_removes_its_record(make_broker, how):
    broker = make_broker()
    path = record_path(broker.process.pid)
    assert os.path.exists(path)
    broker.process.send_signal(how)
    assert broker.process.wait(timeout=20) == 0
    assert not os.path.exists(path)  # removed by the broker itself, before it exited
    listed = workbench("list")
    assert listed.returncode == 0
    assert listed.stdout.startswith("no broker of yours is running on this machine")


def test_a_killed_broker_leaves_a_record_that_listing_sweeps(make_broker):
    broker = make_broker()
    path = record_path(broker.process.pid)
    broker.process.kill()
    broker.process.wait(timeout=20)
    assert os.path.exists(path)
    assert json.loads(workbench("list", "--json").stdout) == []
    assert not os.path.exists(path)


def test_a_record_whose_pid_now_belongs_to_another_process_is_swept():
    os.makedirs(records_directory(), mode=0o700)
    mine = process_start(os.getpid())
    if mine is None:
        pytest.skip("no /proc: a reused pid cannot be told apart here")
    record = BrokerRecord("tcp://127.0.0.1:9", os.getpid(), "2020-01-01T00:00:00+00:00",
                          "workbench broker", False, None, "0.0.1", process_start=mine - 1)
    with open(record_path(os.getpid()), "w", encoding="utf-8") as file:
        file.write(record.to_json())
    assert running_brokers() == []
    assert not os.path.exists(record_path(os.getpid()))
    alive = dataclasses.replace(record, process_start=mine)  # this very process: kept
    with open(record_path(os.getpid()), "w", encoding="utf-8") as file:
        file.write(alive.to_json())
    assert running_brokers() == [alive]


def test_a_curve_broker_is_found_through_its_connection_file(make_broker):
    broker = make_broker("--curve")
    found = recorded(broker.process.pid)
    assert found["curve"] is True
    assert found["connection_file"] == os.path.abspath(broker.connection_file)
    assert "server_key" not in found and "client_secret" not in json.dumps(found)
    assert found["connection_file"] in workbench("list").stdout
    status = workbench("status")
    assert status.returncode == 0, status.stderr
    assert "security   CURVE" in status.stdout


def _default_port_free() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 8765), timeout=0.5):
            return False
    except OSError:
        return True


def test_a_terminal_finds_the_embedded_broker_of_another_process():
    if not _default_port_free():
        pytest.skip("a broker answers at the default address: a client would use it")
    script = textwrap.dedent("""
        import sys
        from workbench import NetWorkSpace
        ws = NetWorkSpace("from_the_notebook")
        from workbench.client import embedded
        print(embedded.embedded_broker(), flush=True)
        sys.stdin.read()  # until the test is done
        """)
    client = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = read_line(client, 30)
        assert line is not None, client.stderr.read() if client.poll() is not None else ""
        address = line.decode().strip()
        [record] = running_brokers()
        assert record.address == address
        assert record.started_by.startswith("embedded in python")
        assert record.started_by.endswith(f"(pid {client.pid})")
        path = record_path(record.pid)

        status = workbench("status")
        assert status.returncode == 0, status.stderr
        assert f"broker     {address}" in status.stdout
        assert "owns from_the_notebook" in status.stdout

        client.stdin.close()  # the client exits, and stops its broker
        assert client.wait(timeout=30) == 0
        wait_for(lambda: not os.path.exists(path), timeout=20,
                 message="the embedded broker's record outlived it")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        for stream in (client.stdin, client.stdout, client.stderr):
            stream.close()


def test_without_a_terminal_status_names_every_broker_and_how_to_choose(make_broker):
    first, second = make_broker(), make_broker()
    status = workbench("status")
    assert status.returncode == 1
    assert "2 brokers are running on this machine" in status.stderr
    assert first.address in status.stderr and second.address in status.stderr
    assert "--broker ADDR|FILE" in status.stderr
    worker = workbench("worker", "--sleigh", "nosuch")
    assert worker.returncode == 2
    assert first.address in worker.stderr and second.address in worker.stderr
    named = workbench("status", "--broker", second.address)  # an address given: as before
    assert named.returncode == 0 and f"broker     {second.address}" in named.stdout


def test_at_a_terminal_status_asks_which_broker(make_broker):
    addresses = {make_broker().address, make_broker().address}
    controller, terminal = os.openpty()
    asked = subprocess.Popen([sys.executable, "-m", "workbench", "status"], stdin=terminal,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        os.write(controller, b"2\n")
        out, err = asked.communicate(timeout=60)
    finally:
        if asked.poll() is None:
            asked.kill()
            asked.communicate()
        os.close(terminal)
        os.close(controller)
    assert asked.returncode == 0, err
    assert "which one? [1-2]" in err
    listed = dict(line.split()[:2] for line in err.splitlines() if line[:2] in ("1)", "2)"))
    assert set(listed.values()) == addresses
    assert f"broker     {listed['2)']}" in out


def test_status_with_no_broker_running_says_where_to_look():
    if not _default_port_free():
        pytest.skip("a broker answers at the default address")
    status = workbench("status", "--timeout", "0.3")
    assert status.returncode == 1
    assert "no broker answered at tcp://127.0.0.1:8765" in status.stderr
    assert "`workbench list`" in status.stderr


def test_nws_status_shows_the_notebooks_broker(make_broker):
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    broker = make_broker()
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    try:
        shell.run_line_magic("load_ext", "workbench")
        shell.run_line_magic("nws", f"connect {broker.address}")
        summary = shell.run_line_magic("nws", "status")
        text = repr(summary)
        assert text.startswith(f"broker {broker.address}")
        assert f"pid         {broker.process.pid}" in text
        assert "started by  workbench broker, from" in text
        assert "clients     " in text and "workspaces  " in text
        assert broker.address in summary._repr_html_()
    finally:
        shell.magics_manager.registry["NwsMagics"].session.close()
        InteractiveShell.clear_instance()


def test_who_started_a_broker_is_told_in_a_few_words(tmp_path):
    if not os.path.isdir("/proc"):
        pytest.skip("no /proc: a process is described by its pid only")
    launcher = tmp_path / "ipykernel_launcher.py"
    launcher.write_text("import sys\nsys.stdin.read()\n")
    kernel = [sys.executable, str(launcher), "-f", str(tmp_path / "kernel-1f2e3d4c-aa.json")]
    script = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    processes = [subprocess.Popen(argv, stdin=subprocess.PIPE) for argv in (kernel, script)]
    try:
        python = os.path.basename(sys.executable)
        expected = [f"Jupyter kernel 1f2e3d4c (pid {processes[0].pid})",
                    f"{python} -c ... (pid {processes[1].pid})"]
        # polled: for an instant after exec a process's command line reads empty
        wait_for(lambda: [describe_process(p.pid) for p in processes] == expected,
                 timeout=10, message=f"not described as {expected}")
    finally:
        for process in processes:
            process.stdin.close()
            process.wait(timeout=20)
