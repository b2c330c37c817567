"""The live widgets against a real broker: built outside a kernel (ipywidgets works headless),
driven from other clients and processes, their content read back.

Widgets are made inside a coroutine on an event loop of the test's own, as a notebook cell
runs inside the kernel's loop, and the test runs that loop while changes happen: broker
events arrive in a delivery thread and reach the widgets only through the loop (the
thread-to-loop hop is the one a kernel uses). One test does it all in a real ipykernel.
"""

from __future__ import annotations

import asyncio
import queue
import re
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("ipywidgets")

from workbench import KeyValueStore, Sleigh, mq  # noqa: E402
from workbench.errors import NwsNoWorkSpaceException  # noqa: E402
from workbench.jupyter.widgets import (  # noqa: E402
    broker_view, dashboard, message_feed, sleigh_monitor,
)
from workbench.jupyter.widgets_core import INTERVAL, Markup, Throttle, table  # noqa: E402

from .support import spawn_client, wait_for  # noqa: E402

TIMEOUT = 10.0


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def build(loop):
    """Make a widget as a notebook cell would (inside the running loop); closed afterwards."""
    made = []

    def build(factory, *args, **kwargs):
        async def make():
            return factory(*args, **kwargs)

        widget = loop.run_until_complete(make())
        made.append(widget)
        return widget

    yield build
    for widget in made:
        widget.close()


def settle(loop, predicate, timeout: float = TIMEOUT, shown=lambda: ""):
    """Run the loop until ``predicate()`` holds (widgets update only while it runs); else
    fail, saying what ``shown()`` says."""
    async def until():
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"not shown within {timeout} s: {shown()}")
            await asyncio.sleep(0.02)

    loop.run_until_complete(until())


def finish(process) -> str:
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    return out


def cell(content, align: str) -> str:
    return f"<td style='text-align:{align}'>{content}</td>"


def row(*cells) -> str:
    """The HTML of a table row's first cells: numbers right-aligned, text left-aligned."""
    return "".join(cell(c, "right" if isinstance(c, int) else "left") for c in cells)


def plots(html: str) -> list[str]:
    """What each plot in a widget's HTML says it shows (its SVG title, less the time it
    spans, which grows), in order; every one must be well-formed SVG."""
    said = []
    for svg in re.findall(r"<svg.*?</svg>", html):
        title = ET.fromstring(svg).find("{http://www.w3.org/2000/svg}title").text
        said.append(re.sub(r" over the last [\d.]+ (s|min):", ":", title))
    return said


def rows_of(html: str) -> int:
    return html.count("<tr>") - 1  # less the header's


def peak(said: str) -> float:
    return float(re.search(r"max ([\d.]+)", said).group(1))


def buttons(widget) -> dict:
    found, stack = {}, list(widget.children)
    while stack:
        child = stack.pop()
        stack.extend(getattr(child, "children", ()))
        if hasattr(child, "click"):
            found[child.description] = child
    return found


# ---------------------------------------------------------------------------- the hop

def test_throttle_runs_on_the_loop_at_a_bounded_rate(loop):
    seen, state = [], {"n": 0}
    lock = threading.Lock()
    throttle = Throttle(loop, lambda: seen.append((threading.get_ident(), state["n"])),
                        interval=0.1)

    def hammer():
        for _ in range(2000):
            with lock:
                state["n"] += 1
            throttle.request()
            time.sleep(0.0001)

    started = time.monotonic()
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    settle(loop, lambda: not any(t.is_alive() for t in threads) and seen
           and seen[-1][1] == 8000)
    elapsed = time.monotonic() - started
    assert {ident for ident, _ in seen} == {threading.get_ident()}  # the loop's thread only
    assert len(seen) <= elapsed / 0.1 + 3, (len(seen), elapsed)
    throttle.close()
    throttle.request()
    loop.run_until_complete(asyncio.sleep(0.15))  # no redraw may run in this time: closed
    assert seen[-1][1] == 8000 and throttle.redraws == len(seen)


def test_throttle_redraws_later_once_though_nothing_changed(loop):
    seen = []
    throttle = Throttle(loop, lambda: seen.append(loop.time()), interval=0.05)

    async def ask() -> float:
        throttle.request_later(0.2)
        throttle.request_later(0.01)  # one is pending: the first stands
        return loop.time()

    asked = loop.run_until_complete(ask())
    settle(loop, lambda: seen)
    assert seen[0] - asked >= 0.19
    throttle.request_later(0.05)
    throttle.close()
    loop.run_until_complete(asyncio.sleep(0.15))  # no redraw may run in this time: closed
    assert len(seen) == 1


def test_tables_align_numbers_right_and_text_left_and_cut_long_text():
    long = "x" * 40 + "<&>"
    shown = table(("name", "count", "pid", "rate", "plot"),
                  [("a", 1, 4242, 2.5, Markup("<svg/>")),
                   (long, 20, "", 0.0, Markup("<svg/>"))])
    assert shown.count("<th style='text-align:right'>") == 3  # count, pid, rate: numbers
    assert "<th style='text-align:left'>name</th>" in shown
    assert row("a", 1, 4242) + cell(2.5, "right") + cell("<svg/>", "left") in shown
    escaped = "x" * 40 + "&lt;&amp;&gt;"  # cut by the page's style; whole in its title
    assert f"<td style='text-align:left' title='{escaped}'>{escaped}</td>" in shown
    assert row(20) + cell("", "right") in shown  # a blank in a column of numbers
    assert "white-space:nowrap" in shown and "text-overflow:ellipsis" in shown
    assert "font-variant-numeric:tabular-nums" in shown
    assert table(("a",), [], empty="nothing <yet>") == "<div><i>nothing &lt;yet&gt;</i></div>"


def test_no_loop_no_widget():
    with pytest.raises(RuntimeError, match="no event loop"):
        dashboard("anything")


# ---------------------------------------------------------------------------- dashboard

def test_dashboard_follows_another_process(broker, ws, ws_name, loop, build):
    ws.store("x", 42)
    ws.declare("one", "single")
    ws.store("one", "only")
    board = build(dashboard, ws)
    assert row("x", "fifo", 1, 0, 0, "42") in board.table.value
    assert row("one", "single", 1, 0, 0, "&#x27;only&#x27;") in board.table.value
    assert "2 variables · 2 values" in board.header.value
    threads = set()
    board.table.observe(lambda change: threads.add(threading.get_ident()), "value")

    finish(spawn_client(broker, f"from workbench import NetWorkSpace\n"
                                f"ws = NetWorkSpace({ws_name!r}, useUse=True)\n"
                                f"for v in ['a', 'b', 'c']: ws.store('y', v)\n"
                                f"ws.fetch('x')\n"
                                f"ws.close()\n"))  # acknowledges the fetch
    # nothing may be drawn in this time, though the events arrive in it: widgets draw only on
    # the loop, and it is idle
    time.sleep(0.3)
    assert "<td style='text-align:left'>y</td>" not in board.table.value
    settle(loop, lambda: row("y", "fifo", 3, 0, 0, "&#x27;a&#x27;") in board.table.value
           and row("x", "fifo", 0, 0, 0, "") in board.table.value)
    assert threads == {threading.get_ident()}  # drawn on the loop, not the delivery thread
    assert board.variable.options == ("one", "x", "y")


def test_dashboard_plots_each_variables_values_beside_its_row(broker, ws, ws_name, loop,
                                                             build):
    ws.store("a", 1)
    board = build(dashboard, ws)
    assert plots(board.plot.value) == ["a: values: now 1, max 1"]
    finish(spawn_client(broker, f"from workbench import NetWorkSpace\n"
                                f"ws = NetWorkSpace({ws_name!r}, useUse=True)\n"
                                f"for v in range(3): ws.store('b', v)\n"
                                f"ws.fetch('a')\n"
                                f"ws.close()\n"))
    expected = ["a: values: now 0, max 1", "b: values: now 3, max 3"]
    settle(loop, lambda: plots(board.plot.value) == expected,
           shown=lambda: plots(board.plot.value))
    # one plot per row of the table, in its order, so that they line up
    assert rows_of(board.plot.value) == rows_of(board.table.value) == 2
    assert board.table.value.index(">a<") < board.table.value.index(">b<")
    assert plots(board._repr_html_()) == expected  # the static copy shows them too


def test_a_burst_of_stores_costs_a_handful_of_redraws(broker, ws, ws_name, loop, build):
    board = build(dashboard, ws)
    before = board.redraws
    started = time.monotonic()
    writer = spawn_client(broker, f"from workbench import NetWorkSpace\n"
                                  f"ws = NetWorkSpace({ws_name!r}, useUse=True)\n"
                                  f"for i in range(2000): ws.store('burst', i)\n")
    settle(loop, lambda: writer.poll() is not None
           and row("burst", "fifo", 2000, 0, 0, "0") in board.table.value)
    elapsed = time.monotonic() - started
    finish(writer)
    redraws = board.redraws - before
    assert 1 <= redraws <= elapsed / INTERVAL + 3, (redraws, elapsed)
    assert redraws < 40


def test_buttons_fetch_delete_refresh(broker, ws, ws_name, loop, build):
    for value in (1, 2):
        ws.store("a", value)
    ws.store("b", "keep")
    board = build(dashboard, ws)
    press = buttons(board)
    for button in press.values():  # as wide as its text, not stretched across the page
        assert (button.layout.width, button.layout.align_self) == ("auto", "flex-start")
    board.variable.value = "a"
    press["fetchTry"].click()
    assert board.result.value == "fetched a: 1"
    assert row("a", "fifo", 1, 0, 0, "2") in board.table.value
    press["fetchTry"].click()
    press["fetchTry"].click()
    assert board.result.value == "a: no value"
    press["delete"].click()
    assert board.result.value == "deleted a"
    assert ">a<" not in board.table.value and board.variable.options == ("b",)
    assert board.variable.value == "b"
    assert ws.listVars(format="dict").keys() == {"b"}

    # A fetcher that starts waiting makes no event: the refresh button shows it.
    waiter = spawn_client(broker, f"from workbench import NetWorkSpace\n"
                                  f"print(NetWorkSpace({ws_name!r}, useUse=True)"
                                  f".fetch('z', timeout=20))\n")
    wait_for(lambda: ws.listVars(format="dict").get("z", (0, 0, 0))[2] == 1, TIMEOUT)
    press["refresh"].click()
    assert row("z", "fifo", 0, 1, 0, "") in board.table.value
    ws.store("z", "go")
    assert finish(waiter).strip() == "go"


def test_dashboard_by_name_on_a_broker_by_address(broker, ws, ws_name, loop, build):
    ws.store("v", 1)
    board = build(dashboard, ws_name, server=broker.address)
    assert board.ws is not ws and row("v", "fifo", 1) in board.table.value
    with pytest.raises(NwsNoWorkSpaceException):
        build(dashboard, "no_such_workspace", server=f"{broker.host}:{broker.port}")
    ws.server.deleteWs(ws_name)
    settle(loop, lambda: "<b>deleted</b>" in board.header.value)
    session = board._owned
    board.close()
    board.close()  # twice is harmless
    assert session._connection.closed and board.comm is None
    assert repr(board) == f"<WorkspaceDashboard {ws_name!r} at {broker.address} closed>"


# ---------------------------------------------------------------------------- broker view

def test_broker_view_lists_workspaces_and_clients(broker, loop, build, ws_name):
    view = build(broker_view, broker.address)
    assert "__default" in view.workspaces.value and "(this process)" in view.clients.value
    owner = spawn_client(broker, f"import os, socket\n"
                                 f"from workbench import NetWorkSpace\n"
                                 f"ws = NetWorkSpace({ws_name!r})\n"
                                 f"ws.store('v', 1)\n"
                                 f"print(f'{{socket.gethostname()}} ({{os.getpid()}})', "
                                 f"flush=True)\n"
                                 f"ws.fetch('stop', timeout=20)\n")
    try:
        label = owner.stdout.readline().strip()
        settle(loop, lambda: row(ws_name, label, "") in view.workspaces.value,
               shown=lambda: view.workspaces.value)
        assert row(label, ws_name) in view.clients.value
        view.server.useWs(ws_name).store("stop", 1)
        finish(owner)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.communicate()
    settle(loop, lambda: ws_name not in view.workspaces.value)  # purged with its owner
    view.refresh()
    assert label not in view.clients.value
    assert repr(view) == f"<BrokerView {broker.address}>"


# ---------------------------------------------------------------------------- sleigh

def double(x):
    return 2 * x


def test_sleigh_monitor_counts_tasks_per_worker(broker, loop, build):
    with Sleigh(2, broker=broker.address) as sleigh:
        monitor = build(sleigh_monitor, sleigh)
        assert "2 workers" in monitor.header.value
        for rank in (0, 1):
            assert row(rank, "running") in monitor.workers.value
        pending = sleigh.eachElem(double, list(range(300)), blocking=False)
        settle(loop, lambda: monitor.progress_text.value == "300 / 300 tasks · idle")
        assert pending.wait() == [2 * x for x in range(300)]
        assert monitor.progress.value == monitor.progress.max == 300
        assert sum(monitor.done_by_rank.values()) == 300
        for info in sleigh.workerInfo():
            done = monitor.done_by_rank[info["rank"]]
            assert row(info["rank"], "running", info["host"], info["pid"],
                       done) in monitor.workers.value
        assert "queued at the broker 0 · in flight 0 · deaths 0" in monitor.footer.value

        # The rate shows the work, then falls to 0 once it is done, though no event comes.
        def overall() -> str:
            return plots(monitor.rate.value)[0]

        settle(loop, lambda: overall().startswith("tasks done per second: now 0/s")
               and peak(overall()) > 0, shown=overall)
        per_worker = plots(monitor.plot.value)
        assert rows_of(monitor.plot.value) == rows_of(monitor.workers.value) == 2
        for info, said in zip(sleigh.workerInfo(), per_worker):
            assert said.startswith(f"worker {info['rank']}: tasks done per second")
            assert (peak(said) > 0) == (monitor.done_by_rank[info["rank"]] > 0)

        html = sleigh._repr_html_()
        assert f"<b>Sleigh {sleigh.wsName}</b> at {broker.address}: 2 workers" in html
        assert html.count("<tr>") == 3 and repr(sleigh) == f"<Sleigh {sleigh.wsName} 2 workers>"
        assert repr(monitor) == f"<SleighMonitor {sleigh.wsName}>"


def test_sleigh_monitor_shows_a_batch_job_that_has_not_joined(broker, loop, build, tmp_path):
    """A job whose worker has not joined (here its Python only sleeps) is a row of its own,
    with the job's id, in workerInfo(), the monitor and the sleigh's HTML."""
    pytest.importorskip("psij")
    from workbench.sleigh.launch import Batch

    sleeper = tmp_path / "sleeper"
    sleeper.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import time; time.sleep(600)'\n")
    sleeper.chmod(0o755)
    launcher = Batch("local", workers=2, python=str(sleeper), wait=0,
                     directory=tmp_path / "jobs")
    with Sleigh(launch=launcher, broker=broker.address) as sleigh:
        worker = subprocess.Popen([sys.executable, "-m", "workbench", "worker", "--broker",
                                   broker.address, "--sleigh", sleigh.wsName, "--rank", "1"],
                                  env=broker.env())
        try:
            wait_for(lambda: [w["state"] for w in sleigh.workerInfo()] == ["starting",
                                                                          "running"], TIMEOUT)
            job = sleigh.state().launched[0].pid
            assert sleigh.workerInfo()[0] == {"rank": 0, "state": "starting", "host": None,
                                              "pid": None, "job": job}
            monitor = build(sleigh_monitor, sleigh)
            # a column of numbers and blanks is a column of numbers
            assert (row(0, f"starting (job {job})", "") + cell("", "right") + row(0)
                    in monitor.workers.value)
            assert f"<td>0</td><td>starting (job {job})</td>" in sleigh._repr_html_()
        finally:
            sleigh.stop()
            worker.wait(TIMEOUT)
    settle(loop, lambda: "<b>stopped</b>" in monitor.header.value)
    assert repr(sleigh) == f"<Sleigh {sleigh.wsName} stopped>"


# ---------------------------------------------------------------------------- messages

def test_message_feed_shows_messages_from_other_processes(broker, loop, build, ws_name):
    topic = ws_name
    feed = build(message_feed, f"{topic}:*", broker=broker.address, keep=3)
    finish(spawn_client(broker, f"from workbench import mq\n"
                                f"mq.twitter('{topic}_other:price', 0)\n"
                                f"for i in range(4): mq.twitter('{topic}:price', i, cur='EUR')\n"
                                f"mq.Queue('{topic}:done', shared=True)\n"))
    settle(loop, lambda: "4 received" in feed.header.value)
    shown = feed.messages.value
    assert "cur=&#x27;EUR&#x27;" in shown and "_other" not in shown
    assert shown.count("<tr>") == 4  # the header and the 3 kept, newest first
    assert shown.index("3, cur=") < shown.index("2, cur=") < shown.index("1, cur=")
    assert "0, cur=" not in shown
    assert row(f"{topic}:price", 4) in feed.plot.value
    def price() -> str:
        return plots(feed.plot.value)[0]

    settle(loop, lambda: price().startswith(
        f"{topic}:price: messages per second: now 0/s") and peak(price()) > 0,
        shown=price)
    assert peak(price()) <= 4

    mq.init_connection(broker.address)  # this process's own twitter reaches the feed too
    try:
        mq.twitter(f"{topic}:local", "here")
        settle(loop, lambda: "5 received" in feed.header.value)
    finally:
        mq.close_connection()
    assert f"{topic}:local" in feed.messages.value
    assert [said.split(":")[1] for said in plots(feed.plot.value)] == ["local", "price"]
    buttons(feed)["clear"].click()
    assert "no messages yet" in feed.messages.value and "5 received" in feed.header.value
    assert repr(feed) == f"<MessageFeed '{topic}:*' at {broker.address}>"
    feed.close()
    assert repr(feed).endswith(" closed>")


# ---------------------------------------------------------------------------- reprs

def test_reprs_are_stable_and_html_is_useful(broker, server, ws, ws_name, loop, build):
    ws.store("x", 1)
    ws.store("x", 2)
    kv = KeyValueStore(broker.host, broker.port, workspace=f"{ws_name}_kv")
    try:
        kv.store("key", "value")
        for obj, text in ((ws, f"<NetWorkSpace {ws_name!r} at {broker.address}>"),
                          (server, f"<NwsServer {broker.address}>"),
                          (kv, f"<KeyValueStore '{ws_name}_kv' at {broker.address}>")):
            first = repr(obj)
            assert repr(obj) == first == text  # the same every time: no ids, no addresses
        html = ws._repr_html_()
        assert f"<b>NetWorkSpace {ws_name}</b>" in html and "1 variables" in html
        assert "<td>x</td><td>2</td><td>0</td><td>0</td><td>fifo</td>" in html
        assert f"<tr><td><b>{ws_name}</b></td>" in server._repr_html_()  # mine, in bold
        assert "1 entries" in kv._repr_html_() and "<code>key</code>" in kv._repr_html_()
        board = build(dashboard, ws)
        assert board._repr_html_().startswith(f"<div><b>workspace {ws_name}</b>")
        assert "<table" in board._repr_html_()
        assert repr(board) == f"<WorkspaceDashboard {ws_name!r} at {broker.address}>"
    finally:
        kv.close()
    server.close()
    assert "closed" in ws._repr_html_() and "closed" in server._repr_html_()
    assert repr(server) == f"<NwsServer {broker.address} closed>"


# ---------------------------------------------------------------------------- a kernel

def drain_iopub(kc) -> None:
    """Take the kernel's pending output messages (``msg_ready`` is a coroutine before
    jupyter_client 8, so it is not used)."""
    while True:
        try:
            kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            return

def test_in_a_real_kernel_updates_reach_the_front_end(broker, ws, ws_name):
    pytest.importorskip("ipykernel")
    manager = pytest.importorskip("jupyter_client.manager")
    km, kc = manager.start_new_kernel(kernel_name="python3", env=broker.env())
    try:
        def run(code: str) -> str:
            out = []
            reply = kc.execute_interactive(code, timeout=TIMEOUT, output_hook=out.append)
            assert reply["content"]["status"] == "ok", [m["content"] for m in out]
            return "".join(m["content"].get("text", "") for m in out
                           if m["msg_type"] == "stream")

        run(f"import threading\n"
            f"from workbench import NetWorkSpace\n"
            f"from workbench.jupyter.widgets import dashboard\n"
            f"board = dashboard(NetWorkSpace({ws_name!r}, useUse=True))\n"
            f"threads = set()\n"
            f"board.table.observe(lambda c: threads.add(threading.get_ident()), 'value')\n")
        drain_iopub(kc)
        ws.store("seen", "from outside")  # drawn while the kernel is idle, on its loop

        def table_update() -> bool:
            msg = kc.get_iopub_msg(timeout=TIMEOUT)
            state = msg["content"].get("data", {}).get("state", {})
            return msg["msg_type"] == "comm_msg" and "from outside" in str(state.get("value"))

        deadline = time.monotonic() + TIMEOUT
        while not table_update():
            assert time.monotonic() < deadline, "no widget update reached the front end"
        assert run("print(threads == {threading.main_thread().ident}, board.redraws)"
                   ).split()[0] == "True"
        run("board.close()")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# ---------------------------------------------------------------------------- a cluster

def test_the_widgets_follow_a_cluster_of_brokers(tmp_path, loop, build):
    """Given several brokers acting as one, the broker view lists every broker's workspaces
    and follows their events, and a dashboard follows a workspace on the broker it lives on."""
    from workbench import NetWorkSpace, NwsServer

    from .support import start_broker

    brokers = [start_broker(tmp_path) for _ in range(3)]
    cluster = [broker.address for broker in brokers]
    try:
        view = build(broker_view, cluster)
        assert "a cluster of 3 brokers" in view.header.value
        with NwsServer(cluster) as server:
            names = [f"spread{i}" for i in range(6)]
            for name in names:
                server.useWs(name).store("v", name)
            settle(loop, lambda: all(name in view.workspaces.value for name in names),
                   shown=lambda: view.workspaces.value)
            board = build(dashboard, "spread3", server=cluster)
            NetWorkSpace("spread3", server=server, useUse=True).store("w", 7)
            settle(loop, lambda: row("w", "fifo", 1, 0, 0, "7") in board.table.value,
                   shown=lambda: board.table.value)
        view.close()
        board.close()
    finally:
        for broker in brokers:
            broker.stop()
