"""The gateway's web view in a real browser: a broker, a ``workbench web`` process against it,
and headless Chromium (Playwright on Debian's ``chromium``, as in test_browser) on its page.

A value stored by another process shows in the page, its workspace, variable and preview,
within a second of the store returning (measured across the processes by the wall clock). On
a phone-sized screen the page is one column and never scrolls sideways. With a sleigh at work
and messages going, the page shows the sleigh's workers and progress and each identifier's
rate; a picture of that page (1280 x 800) goes into the test's temporary directory, and into
the directory ``WORKBENCH_SCREENSHOTS`` names, if set (the documentation's picture comes from
there: ``WORKBENCH_SCREENSHOTS=docs/img``).

Chromium is Debian's ``chromium`` package; Playwright launches that executable and downloads
no browser of its own. Only when it is missing are the tests skipped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .support import Broker, Web, read_line, start_broker, start_web

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
START_TIMEOUT = 30.0  # a client process ready
#: The page must show a value stored elsewhere within this many seconds (the issue's bound).
SHOWN_WITHIN = 1.0
#: What the page learns by its poll (owners, clients, a sleigh's workers) within this.
POLLED_WITHIN = 10.0
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: "
                                                         "apt-get install chromium)")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = start_broker(tmp_path_factory.mktemp("web-view"))
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def web(broker, tmp_path_factory):
    """A ``workbench web`` process of ``broker`` with a token (as off loopback), so that the
    page works through the cookie ``?token=`` sets."""
    tmp = tmp_path_factory.mktemp("gateway")
    (tmp / "token").write_text(secrets.token_urlsafe(24), encoding="utf-8")
    web = start_web(broker, tmp, "--token-file", str(tmp / "token"))
    yield web
    web.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # the test extra has it

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class Client:
    """Python ``code`` in a client process of ``broker``, told when to go on by lines on its
    stdin; closing stdin ends it (its session, and the workspaces it owns, with it)."""

    def __init__(self, broker: Broker, code: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", code], env=broker.env(),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)

    def line(self) -> str:
        line = read_line(self.process, START_TIMEOUT)
        if line is None:
            self.process.kill()
            pytest.fail(f"the client said nothing within {START_TIMEOUT} s: "
                        f"{self.process.stderr.read().decode(errors='replace')}")
        return line.decode().strip()

    def tell(self, line: str) -> None:
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()


def _open(browser, web: Web, viewport: dict, workspace: str):
    """A page of the web view showing ``workspace``'s variables, once its events flow;
    -> (page, the errors its scripts raise)."""
    page = browser.new_page(viewport=viewport)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(POLLED_WITHIN * 1000)
    page.goto(f"{web.url}?token={web.token}#ws={workspace}")
    page.locator("#broker", has_text="live").wait_for()
    assert "token" not in page.url, page.url  # the cookie carries it from here on
    return page, errors


_ROWS = """id => [...document.querySelectorAll(`#${id} tbody tr`)].map(
    tr => [...tr.cells].map(td => td.textContent))"""


def _rows(page, table: str) -> list[list[str]]:
    return page.evaluate(_ROWS, table)


def _row(page, table: str, first: str) -> list[str] | None:
    return next((row for row in _rows(page, table) if row and row[0] == first), None)


def _until(page, condition, what: str, within: float = POLLED_WITHIN):
    deadline = time.monotonic() + within
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"the page did not show {what} within {within} s; it shows:\n"
                                 f"{page.locator('main').inner_text()}")
        time.sleep(0.05)
    return found


STORE = """\
import sys, time
from workbench import NwsServer
server = NwsServer()
print("ready", flush=True)
sys.stdin.readline()
ws = server.openWs("seen-live")
ws.store("answer", "stored by another process")
print(repr(time.time()), flush=True)
sys.stdin.read()
"""

# Both what the page must show: the workspace's row, the variable's row with its preview.
_SHOWN = """() => {
    const rows = id => [...document.querySelectorAll(`#${id} tbody tr`)].map(
        tr => [...tr.cells].map(td => td.textContent));
    return rows("workspaces").some(row => row[0] === "seen-live")
        && rows("variables").some(row => row[0] === "answer"
                                         && row[5].includes("stored by another process"));
}"""


@pytest.mark.timeout(90)
def test_a_value_stored_elsewhere_shows_within_a_second(broker, web, browser):
    with pytest.raises(urllib.error.HTTPError) as refused:  # what the page has is the cookie
        urllib.request.urlopen(f"{web.url}api/workspaces", timeout=5)
    assert refused.value.code == 401
    page, errors = _open(browser, web, DESKTOP, "seen-live")
    page.locator("#variables-note", has_text="no workspace seen-live").wait_for()
    client = Client(broker, STORE)
    try:
        assert client.line() == "ready"
        client.tell("go")
        deadline = time.monotonic() + 10 * SHOWN_WITHIN  # a failure says how late it was
        while not page.evaluate(_SHOWN):
            if time.monotonic() > deadline:
                raise AssertionError(f"not shown within {10 * SHOWN_WITHIN} s:\n"
                                     f"{page.locator('main').inner_text()}")
            time.sleep(0.005)
        seen = time.time()
        stored = float(client.line())
        took = seen - stored  # below 0 when the event beat the store's reply to the client
        print(f"the page showed the value {took * 1000:.0f} ms after the store returned")
        assert took < SHOWN_WITHIN, f"shown {took:.3f} s after the store returned"
        assert _row(page, "variables", "answer")[1:5] == ["fifo", "1", "0", "0"]
        owner = _row(page, "workspaces", "seen-live")[1]
        assert owner.endswith(f"({client.process.pid})"), owner
        _until(page, lambda: any(row[0] == owner for row in _rows(page, "clients")),
               f"the client {owner}")
    finally:
        client.close()
    # the owner's session ended: its workspace is purged, and the page says so
    _until(page, lambda: _row(page, "workspaces", "seen-live") is None,
           "seen-live purged")
    page.locator("#variables-note", has_text="no workspace seen-live").wait_for()
    assert not errors, errors
    page.close()


LONG_VALUES = """\
from workbench import NwsServer
ws = NwsServer().openWs("a-workspace-with-a-name-much-longer-than-a-phone-is-wide-" * 2,
                        persistent=True)
ws.store("a_variable_whose_name_is_long_as_well_" * 3, "x" * 2000)
ws.store("words", " ".join(["word"] * 400))
"""

# Where the page's sections start and how wide its document is, beside the window's width.
_LAYOUT = """() => ({
    window: window.innerWidth,
    document: document.documentElement.scrollWidth,
    body: document.body.scrollWidth,
    sections: [...document.querySelectorAll("section")].map(s => {
        const box = s.getBoundingClientRect();
        return [box.left, box.right];
    }),
})"""


@pytest.mark.timeout(90)
def test_the_page_fits_a_phone_screen(broker, web, browser):
    client = Client(broker, LONG_VALUES)
    client.close()
    assert client.process.returncode == 0
    name = "a-workspace-with-a-name-much-longer-than-a-phone-is-wide-" * 2
    page, errors = _open(browser, web, PHONE, name)
    _until(page, lambda: _row(page, "variables", "words"), "the long values")
    layout = page.evaluate(_LAYOUT)
    assert layout["document"] <= layout["window"], layout
    assert layout["body"] <= layout["window"], layout
    lefts = {left for left, _ in layout["sections"]}
    assert len(lefts) == 1, f"not one column: {layout}"
    assert all(right <= layout["window"] for _, right in layout["sections"]), layout
    assert not errors, errors
    page.close()


ACTIVITY = """\
import os, sys, threading, time
from workbench import NetWorkSpace, Sleigh, mq


def work(x):
    time.sleep(0.02)
    return x * x


ws = NetWorkSpace("experiment")
ws.store("label", "cooling curve, run 17")
ws.store("samples", 1000)
for n in range(5):
    ws.store("queue", n)
ws.declare("latest", "single")
ws.store("latest", b"\\x00\\x01 raw bytes")
ws.store("parameters", {"alpha": 0.5, "steps": [1, 2, 3]})
shared = NetWorkSpace("calibration", persistent=True)
shared.declare("offset", "single")
shared.store("offset", -0.25)
shared.store("instrument", "thermocouple K")
sleigh = Sleigh(2)
pending = sleigh.eachElem(work, range(1200), chunkSize=1, blocking=False)  # 12 s of work
mq.init_connection(os.environ["WORKBENCH_BROKER"])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
print("ready", sleigh.wsName, flush=True)
n = 0
while not stop.is_set():  # about 20 and 5 messages a second
    mq.twitter("sensor:temperature", 20 + n / 100, unit="C")
    if n % 4 == 0:
        mq.twitter("sensor:pressure", 1013 - n / 10, unit="hPa")
    n += 1
    stop.wait(0.05)
sleigh.stop()
mq.close_connection()
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sleighs_and_message_rates_show(broker, web, browser, tmp_path):
    page, errors = _open(browser, web, DESKTOP, "experiment")
    client = Client(broker, ACTIVITY)
    try:
        ready, sleigh = client.line().split()
        assert ready == "ready"

        def sleigh_at_work():
            row = _row(page, "sleighs", sleigh)  # sleigh, workers, done, queued, progress
            return row is not None and row[1] == "2" and int(row[2]) > 0 and int(row[3]) > 0

        _until(page, sleigh_at_work, f"sleigh {sleigh} with 2 workers, tasks done and queued")

        def heard(identifier: str) -> tuple[float, int]:
            row = _row(page, "messages", identifier)  # identifier, per second, messages, last
            return (float(row[1]), int(row[2])) if row else (0.0, 0)

        # a few seconds of them, for the picture
        _until(page, lambda: heard("sensor:temperature")[0] > 5
               and heard("sensor:temperature")[1] >= 40 and heard("sensor:pressure")[0] > 1,
               "messages per second of sensor:temperature and sensor:pressure")
        _until(page, lambda: any("*:*" in row[1].split(", ")  # the page's "*", as the broker
                                 for row in _rows(page, "subscribers")),  # writes it
               "the page's subscription")
        _until(page, lambda: _row(page, "variables", "parameters"), "experiment's variables")
        assert _row(page, "variables", "samples")[5] == "1000"
        assert _row(page, "variables", "label")[5] == '"cooling curve, run 17"'
        _picture(page, tmp_path)
    finally:
        client.close()
    assert not errors, errors
    page.close()


def _picture(page, shots: Path) -> None:
    """The page as it is, into ``shots``, and into the directory WORKBENCH_SCREENSHOTS names."""
    picture = shots / "web-view.png"
    page.screenshot(path=str(picture))
    extra = os.environ.get("WORKBENCH_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(picture, Path(extra) / picture.name)
