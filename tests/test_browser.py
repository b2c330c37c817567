"""In a real browser: JupyterLab runs headless, headless Chromium (driven by Playwright) opens a
notebook and runs a cell that shows a workspace dashboard, this process stores a value into that
workspace on the same broker, and the dashboard in the page shows it within a few seconds.

Then the notebook shows a sleigh monitor (its sleigh at work) and a message feed, this process
stores, fetches and sends messages for a few seconds, and once each widget has drawn its plots
the test takes a picture of each into its temporary directory, and into the directory
``WORKBENCH_SCREENSHOTS`` names, if set (the documentation's pictures come from there:
``WORKBENCH_SCREENSHOTS=docs/img``).

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it); Playwright launches that
executable and downloads no browser of its own. Only when it is missing is the test skipped.
JupyterLab runs with every Jupyter directory in the test's temporary directory, a kernel spec of
this Python there ("Python 3 (workbench)", the extension loaded at start), and
``WORKBENCH_BROKER`` naming the broker the test started, so the notebook's kernel uses it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from workbench import NetWorkSpace
from workbench.jupyter.kernelspec import kernel_spec

from .support import start_broker

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
WORKSPACE = "browser"
KERNEL = "workbench"
#: The dashboard must show a value stored elsewhere within this many seconds.
SHOWN_WITHIN = 5.0
START_TIMEOUT = 60.0  # each step: the server, the page, the kernel, the first output
ACTIVITY = 6.0  # seconds of stores and messages for the widgets' plots to show
PLOTTED_WITHIN = 30.0  # after it, each widget must have drawn its plots within this

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get "
                                                "install chromium; .ci/run installs it)"),
]

CELL = f"""\
import workbench.jupyter.widgets as w
from workbench import NetWorkSpace
ws = NetWorkSpace({WORKSPACE!r})
w.dashboard(ws)"""

MONITOR_CELL = """\
import time
from workbench import Sleigh


def work(x):
    time.sleep(0.004 if x < 300 else 0.02)   # quick tasks first, then slower ones
    return x


s = Sleigh(2)
monitor = w.sleigh_monitor(s)
pending = s.eachElem(work, range(600), chunkSize=1, blocking=False)
monitor"""

FEED_CELL = """\
feed = w.message_feed("sensor:*", keep=8)
feed"""

STOP_CELL = """\
s.stop()
print("sleigh stopped:", s.state().stopped)"""

CELLS = [("dashboard", CELL), ("monitor", MONITOR_CELL), ("feed", FEED_CELL),
         ("stop", STOP_CELL)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(path: Path) -> None:
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": name,
                   "metadata": {}, "outputs": [], "source": source} for name, source in CELLS],
        "metadata": {"kernelspec": {"name": KERNEL, "display_name": "Python 3 (workbench)",
                                    "language": "python"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")


def _jupyter_environment(home: Path, broker_env: dict) -> dict:
    """JupyterLab's environment: the broker named, Jupyter's directories in ``home`` (no user
    settings, workspaces or kernels count), the workbench kernel of this Python."""
    env = {k: v for k, v in broker_env.items() if not k.startswith("JUPYTER")}
    data = home / "data"
    kernel = data / "kernels" / KERNEL
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps(kernel_spec(sys.executable)),
                                        encoding="utf-8")
    # no "get notified about Jupyter news?" toast over the widgets in the pictures
    settings = home / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}), encoding="utf-8")
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(data),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"),
               JUPYTER_PREFER_ENV_PATH="0", PYTHONPATH=os.pathsep.join(
                   filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return env


def _wait_for_server(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited ({process.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"JupyterLab did not answer within {START_TIMEOUT} s:\n{log.read_text()}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM: JupyterLab shuts its kernels down; then whatever is left of its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _run(page, cell, shows: str):
    """Run ``cell``; -> its output, once it shows the text ``shows``."""
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    output = cell.locator(".jp-OutputArea-output")
    output.filter(has_text=shows).first.wait_for()
    return output


def _activity(broker) -> None:
    """What the widgets are to plot, for ``ACTIVITY`` seconds: a variable that fills and
    drains in the dashboard's workspace, and messages under two identifiers at rates that
    change. (The sleigh's tasks run in the notebook meanwhile.)"""
    from workbench import mq

    ws = NetWorkSpace(WORKSPACE, serverHost=broker.host, serverPort=broker.port, useUse=True)
    mq.init_connection(broker.address)
    try:
        tick, ticks = 0.05, int(ACTIVITY / 0.05)
        started = time.monotonic()
        for n in range(ticks):
            if n < ticks // 2:
                ws.store("queue", n)
            else:
                ws.fetchTry("queue")
            if n % 4 == 0:
                ws.store("readings", n)
            if n < ticks // 2 or n % 2:  # 20 a second, then 10
                mq.twitter("sensor:temperature", 20 + n / 100, unit="C")
            for _ in range(3 * n // ticks):  # 0, then 20, then 40 a second
                mq.twitter("sensor:pressure", 1013 - n / 10, unit="hPa")
            # paced by the clock, not waiting for anything
            time.sleep(max(0.0, started + (n + 1) * tick - time.monotonic()))
    finally:
        mq.close_connection()
        ws.close()


_POINTS = """svgs => svgs.map(svg => [
    (svg.querySelector("title") || {}).textContent || "",
    ((svg.querySelector("polyline") || {getAttribute: () => ""}).getAttribute("points") || "")
        .split(" ").filter(Boolean).length])"""


def _points(output, title: str) -> int:
    """How many points the plot in ``output`` whose title begins with ``title`` draws."""
    drawn = output.locator("svg").evaluate_all(_POINTS)
    return max((points for said, points in drawn if said.startswith(title)), default=0)


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + PLOTTED_WITHIN
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} was not drawn within {PLOTTED_WITHIN} s")
        time.sleep(0.2)


_RIGHT = """widget => {
    let right = 0;  // where what the widget draws ends: its boxes span the page's width
    const texts = document.createTreeWalker(widget, NodeFilter.SHOW_TEXT);
    while (texts.nextNode()) {
        const range = document.createRange();
        range.selectNodeContents(texts.currentNode);
        right = Math.max(right, range.getBoundingClientRect().right);
    }
    for (const part of widget.querySelectorAll("table, svg, button, select, .progress")) {
        right = Math.max(right, part.getBoundingClientRect().right);
    }
    return right;
}"""


def _picture(element, name: str, shots: Path) -> None:
    """A PNG of ``element``, cut where what it draws ends, into ``shots``, and into the
    directory WORKBENCH_SCREENSHOTS names, if set."""
    shots.mkdir(exist_ok=True)
    element.scroll_into_view_if_needed()
    box = element.bounding_box()
    right = element.evaluate(_RIGHT)
    element.page.screenshot(path=str(shots / f"{name}.png"), clip={
        "x": box["x"], "y": box["y"], "height": box["height"],
        "width": min(box["width"], right - box["x"] + 8)})
    extra = os.environ.get("WORKBENCH_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shots / f"{name}.png", Path(extra) / f"{name}.png")


@pytest.mark.timeout(4 * START_TIMEOUT)
def test_dashboard_in_jupyterlab_shows_a_value_stored_elsewhere(tmp_path):
    from playwright.sync_api import sync_playwright  # the test extra has it

    broker = start_broker(tmp_path)
    lab = None
    try:
        root = tmp_path / "notebooks"
        root.mkdir()
        _notebook(root / "dashboard.ipynb")
        env = _jupyter_environment(tmp_path / "jupyter", broker.env())
        token = uuid.uuid4().hex
        port = _free_port()
        log = tmp_path / "jupyterlab.log"
        with open(log, "wb") as out:
            lab = subprocess.Popen(
                [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
                 "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
                 f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                 # nothing fetched from the Internet: no news, no update checks
                 "--LabApp.news_url=None",
                 "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                 "--LabApp.extension_manager=readonly",
                 *(["--allow-root"] if os.geteuid() == 0 else [])],
                env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", lab, log)
        _in_the_browser(sync_playwright, f"{base}/lab/tree/dashboard.ipynb?token={token}",
                        broker, log, tmp_path / "screenshots")
    finally:
        if lab is not None:
            _stop(lab)
        broker.stop()


def _in_the_browser(sync_playwright, url: str, broker, log: Path, shots: Path) -> None:
    from playwright.sync_api import Error as PlaywrightError

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        # wide enough for the tables and their plots side by side beside the file browser
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(START_TIMEOUT * 1000)
        step = "opening the notebook"
        try:
            page.goto(url)
            cell = page.locator(".jp-Notebook .jp-CodeCell").first
            cell.locator(".cm-content").click()
            step = "starting the workbench kernel"
            page.locator(".jp-KernelName", has_text="Python 3 (workbench)").first.wait_for()
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for()
            step = "running the cell that shows the dashboard"
            page.keyboard.press("Shift+Enter")
            output = cell.locator(".jp-OutputArea-output")
            header = output.locator(".widget-html-content", has_text=f"workspace {WORKSPACE}")
            header.wait_for()
            assert "0 variables · 0 values" in header.inner_text(), header.inner_text()
            assert broker.address in header.inner_text(), header.inner_text()

            step = f"waiting {SHOWN_WITHIN} s for the stored value to show"
            ws = NetWorkSpace(WORKSPACE, serverHost=broker.host, serverPort=broker.port,
                              useUse=True)
            try:
                stored = time.monotonic()
                ws.store("answer", 42)
                output.locator(".widget-html-content", has_text="1 variables · 1 values"
                               ).wait_for(timeout=SHOWN_WITHIN * 1000)
                took = time.monotonic() - stored
            finally:
                ws.close()
            # the table's row (the plot beside the table has a row for it too)
            row = output.locator(".widget-html-content tr", has_text="answer").filter(
                has_text="fifo")
            assert "42" in row.inner_text(), output.inner_text()
            print(f"the dashboard in the page showed the value {took:.2f} s after the store")

            step = "showing a sleigh monitor and a message feed"
            cells = page.locator(".jp-Notebook .jp-CodeCell")
            monitor = _run(page, cells.nth(1), "sleigh")
            feed = _run(page, cells.nth(2), "messages sensor:*")
            step = f"storing, fetching and sending messages for {ACTIVITY} s"
            _activity(broker)
            step = f"waiting {PLOTTED_WITHIN} s for every widget to draw its plots"
            _until(lambda: _points(output, "queue:") >= 3, "the dashboard's plot of queue")
            _until(lambda: "600 / 600 tasks" in monitor.inner_text()
                   and _points(monitor, "tasks done per second") >= 3,
                   "the sleigh monitor's tasks done per second")
            _until(lambda: min(_points(feed, f"sensor:{name}:")
                               for name in ("temperature", "pressure")) >= 3,
                   "the message feed's messages per second")
            step = "taking the pictures"
            for name, widget in (("dashboard", output), ("sleigh-monitor", monitor),
                                 ("message-feed", feed)):
                _picture(widget.locator(".widget-vbox").first, name, shots)
            step = "stopping the sleigh"
            _run(page, cells.nth(3), "sleigh stopped: True")
        except (PlaywrightError, AssertionError) as exc:
            shot, shown = log.with_name("page.png"), "?"
            try:
                page.screenshot(path=str(shot))
                shown = page.locator(".jp-OutputArea").all_inner_texts()
            except PlaywrightError:
                pass
            pytest.fail(f"{step}: {exc}\nthe page: {shot}\noutputs: {shown}\n"
                        f"--- JupyterLab ---\n"
                        f"{log.read_text(errors='replace')[-6000:]}")
        finally:
            browser.close()
