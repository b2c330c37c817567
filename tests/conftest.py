"""Fixtures: a real broker process on a free loopback port, fresh workspaces on it, and a private
single-node Slurm."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import tempfile
import uuid

import pytest

from workbench import NwsServer

from .netns import NamespacesUnavailable, make_pair
from .slurm_node import SlurmNode, unavailable_reason
from .state_driver import StateDriver
from .support import Broker, start_broker

_RUNTIME_DIR = "WORKBENCH_RUNTIME_DIR"
_runtime: list[str] = []  # this run's runtime directory


def pytest_configure(config) -> None:
    """Every broker the tests start records itself (``workbench list``): in a folder of this
    run's, not in the user's runtime directory, where a developer's own brokers are listed.
    Subprocesses inherit it through the environment."""
    _runtime.append(tempfile.mkdtemp(prefix="workbench-test-runtime-"))
    os.environ[_RUNTIME_DIR] = _runtime[-1]
    # A suite started in the background (``nohup make test &``) inherits SIGINT ignored, and
    # so would every process it starts: the tests of Ctrl-C would see none arrive.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_unconfigure(config) -> None:
    while _runtime:
        runtime = _runtime.pop()
        shutil.rmtree(runtime, ignore_errors=True)
        if os.environ.get(_RUNTIME_DIR) == runtime:
            del os.environ[_RUNTIME_DIR]


def pytest_collection_finish(session) -> None:
    """What is loaded by now lives for the whole run: freeze it, so that a collection (a test's
    gc.collect() or the interpreter's own) scans only what tests made. A full scan holds the
    GIL for ~0.1 s, longer on a busy machine, and a client's heartbeat thread cannot beat
    meanwhile: the test brokers end a session silent for 0.6 s."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def state_changes_rebuild_the_state():
    """Every broker state a test drove must be rebuildable from the change records it returned
    (what a durability log keeps), and a state restored from them must hold what it would hold
    after a restart, whatever the test checked itself."""
    StateDriver.made.clear()
    yield
    for driver in StateDriver.made:
        driver.check_replay()
        driver.check_restore()
    StateDriver.made.clear()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """One broker shared by a test module (tests use workspaces of their own)."""
    b = start_broker(tmp_path_factory.mktemp("broker"))
    yield b
    b.stop()


@pytest.fixture
def make_broker(tmp_path):
    """Start brokers with extra command-line flags; all are stopped after the test."""
    started: list[Broker] = []

    def make(*args: str) -> Broker:
        b = start_broker(tmp_path, *args)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def ws_name() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def server(broker):
    s = NwsServer(broker.host, broker.port)
    yield s
    s.close()


@pytest.fixture
def ws(server, ws_name):
    """A fresh workspace owned by this test's session."""
    return server.openWs(ws_name)


@pytest.fixture
def other(broker, ws_name, ws):
    """A second session using the same workspace (another client, same process)."""
    s = NwsServer(broker.host, broker.port)
    yield s.useWs(ws_name)
    s.close()


@pytest.fixture(scope="module")
def pair():
    """Two network namespaces joined by a veth pair (``tests/netns.py``), shared by a test
    module; skipped, saying why, where they cannot be made (without root, say)."""
    try:
        made = make_pair()
    except NamespacesUnavailable as exc:
        pytest.skip(f"no network namespaces: {exc}")
    try:
        yield made
    finally:
        made.destroy()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A private single-node Slurm shared by a test module (``tests/slurm_node.py``); skipped,
    saying why, without root or without slurm-wlm and munge installed."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    node = SlurmNode.start(tmp_path_factory.mktemp("slurm"))
    yield node
    node.stop()
