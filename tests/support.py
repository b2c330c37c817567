"""Test support: a real broker process on a free loopback port, client subprocesses, polling.

Brokers run with short heartbeats (0.2 s x 3) so that liveness tests finish quickly; every broker
is stopped (SIGTERM, then SIGKILL) when its test or module is done.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence


HEARTBEAT_INTERVAL = 0.2
HEARTBEAT_LIVENESS = 3
START_TIMEOUT = 20.0


@dataclass
class Broker:
    process: subprocess.Popen
    address: str
    host: str
    port: int
    log_path: str
    args: list = field(default_factory=list)
    connection_file: str | None = None  # a CURVE broker's (``--curve``): clients connect with it

    @property
    def target(self) -> str:
        """What a client is given to reach this broker: its connection file, or address."""
        return self.connection_file or self.address

    def env(self, **extra: str) -> dict:
        """Environment for a client subprocess that should use this broker; ``extra`` may
        set ``WORKBENCH_BROKER`` otherwise (the connection file's JSON text, say)."""
        env = {**os.environ, "WORKBENCH_BROKER": self.target, **extra}
        env.setdefault("PYTHONPATH", os.getcwd())
        return env

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 10.0) -> int:
        return stop_process(self.process, timeout)


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` seconds -> its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    process.stdout.close()
    return process.returncode


def start_broker(tmp_path, *args: str, within: Sequence[str] = ()) -> Broker:
    """A broker with ``args``; with ``--curve`` (and no ``--connection-file``) its connection
    file goes to ``tmp_path``. ``within``: a command that runs it elsewhere and execs it
    (``ip netns exec NAME``), so the process is still the broker's."""
    log_path = str(tmp_path / f"broker-{uuid.uuid4().hex[:8]}.log")
    connection_file = None
    if "--curve" in args and "--connection-file" not in args:
        connection_file = str(tmp_path / f"broker-{uuid.uuid4().hex[:8]}.json")
        args = (*args, "--connection-file", connection_file)
    elif "--connection-file" in args:
        connection_file = args[list(args).index("--connection-file") + 1]
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [*within, sys.executable, "-m", "workbench", "broker", "--port", "0", "--announce",
         "--heartbeat-interval", str(HEARTBEAT_INTERVAL),
         "--heartbeat-liveness", str(HEARTBEAT_LIVENESS), *args],
        stdout=subprocess.PIPE, stderr=log_file, stdin=subprocess.DEVNULL)
    log_file.close()
    line = read_line(process, START_TIMEOUT)
    if line is None:
        process.kill()
        process.wait()
        process.stdout.close()
        raise RuntimeError(f"broker did not start: {Path(log_path).read_text()}")
    address = line.decode().split()[1]
    host, port = address.rsplit("/", 1)[1].rsplit(":", 1)
    return Broker(process, address, host, int(port), log_path, list(args), connection_file)


def read_line(process: subprocess.Popen, timeout: float) -> bytes | None:
    """The first line ``process`` writes to its stdout (a pipe), or None if it exits or says
    nothing within ``timeout`` seconds. Reads unbuffered, so nothing after it is taken."""
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([process.stdout], [], [], max(0, deadline - time.monotonic()))
        if not ready:
            return None
        chunk = os.read(process.stdout.fileno(), 1)
        if not chunk:
            return None
        line += chunk
    return line


def run_client(broker: Broker, code: str, timeout: float = 30.0, **env: str):
    """Run Python ``code`` in a client subprocess of ``broker``; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-c", code], env=broker.env(**env), timeout=timeout,
                          capture_output=True, text=True)


def spawn_client(broker: Broker, code: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env=broker.env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def broker_status(broker: Broker) -> dict:
    """The broker's status (what ``workbench status --json`` prints), asked from this process:
    cheap enough to poll. The asking session is among its clients."""
    from workbench import KeyValueStore

    with KeyValueStore(broker.target) as asker:
        return asker.stats()


def has_session(broker: Broker, pid: int) -> bool:
    """Whether the broker still holds a session of process ``pid`` (sessions are labelled
    "host (pid)"): a process that exited or was killed is gone once this is False."""
    return any(client["label"].endswith(f" ({pid})")
               for client in broker_status(broker)["clients"])


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = ""):
    """Poll ``predicate`` until it returns a true value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


@dataclass
class Web:
    """A ``workbench web`` gateway process (``start_web``)."""

    process: subprocess.Popen
    url: str  # http(s)://host:port/, without the token
    token: str | None
    connection_file: str
    log_path: str

    def client(self, **options):
        """An httpx client of the gateway, carrying its token if it has one."""
        import httpx

        headers = {"Authorization": f"token {self.token}"} if self.token else {}
        options.setdefault("timeout", 20.0)
        return httpx.Client(base_url=self.url, headers=headers, **options)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 10.0) -> int:
        return stop_process(self.process, timeout)


def start_web(broker: Broker, tmp_path, *args: str, within: Sequence[str] = ()) -> Web:
    """A gateway of ``broker`` on a free loopback port, with ``args``; ready once it printed
    where it serves (its first line). ``within``: as for ``start_broker``."""
    log_path = str(tmp_path / f"web-{uuid.uuid4().hex[:8]}.log")
    connection_file = str(tmp_path / f"web-{uuid.uuid4().hex[:8]}.json")
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [*within, sys.executable, "-m", "workbench", "web", "--broker", broker.target,
             "--port", "0", "--connection-file", connection_file, *args],
            stdout=subprocess.PIPE, stderr=log_file, stdin=subprocess.DEVNULL)
    line = read_line(process, START_TIMEOUT)
    if line is None:
        process.kill()
        process.wait()
        process.stdout.close()
        raise RuntimeError(f"workbench web did not start: {Path(log_path).read_text()}")
    served = line.decode().split()[3]  # "workbench web: serving URL[?token=T] (...) ..."
    url, _, token = served.partition("?token=")
    return Web(process, url, token or None, connection_file, log_path)
