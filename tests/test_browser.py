"""In a real browser: JupyterLab runs headless, headless Chromium (driven by Playwright) opens a
notebook and runs a cell that shows a workspace dashboard, this process stores a value into that
workspace on the same broker, and the dashboard in the page shows it within a few seconds.

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(path: Path) -> None:
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "dashboard",
                   "metadata": {}, "outputs": [], "source": CELL}],
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
                        broker, log)
    finally:
        if lab is not None:
            _stop(lab)
        broker.stop()


def _in_the_browser(sync_playwright, url: str, broker, log: Path) -> None:
    from playwright.sync_api import Error as PlaywrightError

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page()
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
            row = output.locator(".widget-html-content tr", has_text="answer")
            assert "42" in row.inner_text(), output.inner_text()
            print(f"the dashboard in the page showed the value {took:.2f} s after the store")
        except PlaywrightError as exc:
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
