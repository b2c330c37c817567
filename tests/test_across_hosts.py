"""For real across hosts: a broker in one network namespace, a client and a sleigh's workers in
another, and a packet capture on the veth pair between them.

Off loopback the broker speaks CURVE with no flag, and the capture shows that nothing a client
stores or a task returns crosses in plain, while the same session under ``--insecure`` does
show it (so the capture would see it). A process in the second namespace without the
connection file can neither read nor write.

The connection-file model: without ``--allow-keys`` the broker lets in only the client key pair
of the connection file it wrote, so whoever holds the file is in and no one else: a forged file
with the right server key (which is public) and a key pair of its own is refused, as is one
with a wrong server key. With ``--allow-keys`` the client keys listed there are let in instead.

Root only (``ip netns``); skipped otherwise. The namespaces share this machine's files, so the
broker runs with ``--no-local-socket --no-shared-memory``: otherwise clients in the second
namespace would find its Unix socket and /dev/shm, which a second host would not, and nothing
would cross the veth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest

from workbench.zmtp import GREETING_SIZE, greeting, z85
from workbench.zmtp.curve import KeyPair

from .netns import ACROSS, Host, HostPair
from .packet_capture import CaptureSummary, read_frames, tcp_payload
from .support import Broker, read_line, start_broker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parent.parent
CLIENT = str(Path(__file__).with_name("across_hosts_client.py"))
CAPTURE = str(Path(__file__).with_name("packet_capture.py"))
TIMEOUT = 30.0
VALUE_SIZE = 64 << 10  # across_hosts_client.VALUE_SIZE


@pytest.fixture
def hosts(pair):
    """The pair, with nothing left running in it after each test."""
    yield pair
    pair.kill_processes()


@dataclass
class Capture:
    """The capture process (tests/packet_capture.py) on one host's veth end."""

    process: subprocess.Popen
    path: str

    @classmethod
    def start(cls, host: Host, path: str) -> Capture:
        process = subprocess.Popen(
            host.command(sys.executable, CAPTURE, host.interface, path),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if read_line(process, TIMEOUT) != b"ready\n":
            process.kill()
            process.wait()
            raise RuntimeError(f"the capture did not start: {process.stderr.read().decode()}")
        return cls(process, path)

    def stop(self) -> CaptureSummary:
        """Stop (it takes what the kernel still holds first) and say what it saw."""
        try:
            out, err = self.process.communicate(b"", timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        assert self.process.returncode == 0, err.decode()
        return CaptureSummary(**json.loads(out))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


class Markers(NamedTuple):
    """Random strings that only the values carry: each one found on the wire is a leak."""

    value: str  # repeated through a 64 KiB stored value
    small: str  # a small stored string
    task: str  # in what a task returns

    @classmethod
    def new(cls) -> Markers:
        return cls(*(f"{kind}-marker-{uuid.uuid4().hex}" for kind in ("value", "small", "task")))


class Session(NamedTuple):
    """A client's work across the veth: the broker it reached, the markers in what it
    stored, and what crossed the veth meanwhile."""

    broker: Broker
    markers: Markers
    frames: bytes  # every frame, whole, one after another
    broker_payload: int  # TCP payload bytes to and from the broker's port
    capture: CaptureSummary


def run_in(host: Host, *argv: str) -> dict:
    """tests/across_hosts_client.py in ``host``'s namespace: its JSON report."""
    env = {name: value for name, value in os.environ.items() if name != "WORKBENCH_BROKER"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(host.command(sys.executable, CLIENT, *argv), env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def start_broker_in(host: Host, tmp_path, *args: str) -> Broker:
    return start_broker(tmp_path, "--host", host.address, *ACROSS, *args,
                        within=host.command())


def work_across(hosts: HostPair, tmp_path, *broker_args: str) -> Session:
    """The broker in A (``broker_args``), a capture on A's veth end, and in B the client's
    stores and fetches and a sleigh's map, checked."""
    markers = Markers.new()
    broker = start_broker_in(hosts.a, tmp_path, *broker_args)
    capture = None
    try:
        capture = Capture.start(hosts.a, str(tmp_path / "veth.frames"))
        report = run_in(hosts.b, "work", broker.target, "across", *markers)
        summary = capture.stop()
    finally:
        if capture is not None:
            capture.kill()
        broker.stop()
    frames = list(read_frames(capture.path))
    payload = sum(len(tcp_payload(frame, broker.port) or b"") for frame in frames)
    _check_work(hosts, report, markers)
    return Session(broker, markers, b"".join(frames), payload, summary)


def _check_work(hosts: HostPair, report: dict, markers: Markers) -> None:
    """The client's work was done, and done in B: the client, both workers, every task."""
    namespace_b = hosts.b.namespace_id()
    assert report["namespace"] == namespace_b != os.readlink("/proc/self/ns/net")
    assert report["fetched"] == {"big": True, "small": True}
    assert report["results"] == [f"{markers.task}:{x * x}:{namespace_b}" for x in range(20)]
    assert len(report["worker_pids"]) == 2 and report["joined_pid"] in report["worker_pids"]
    assert report["worker_namespaces"] == [namespace_b] * 2


def test_under_curve_nothing_a_client_stores_crosses_in_plain(hosts, tmp_path):
    """No flag: off loopback the broker speaks CURVE, and the client and workers in B reach it
    by its connection file. The capture saw the whole session (the 64 KiB value went to the
    broker and back, and more), and none of the markers."""
    connection_file = str(tmp_path / "conn.json")
    session = work_across(hosts, tmp_path, "--connection-file", connection_file)
    broker = session.broker
    assert f"CURVE on tcp://{hosts.a.address}:{broker.port}" in broker.log()
    assert broker.target == connection_file
    assert session.capture.dropped == 0 and session.capture.truncated == 0, session.capture
    assert session.broker_payload > 2 * VALUE_SIZE, \
        f"only {session.broker_payload} bytes to and from port {broker.port} crossed the veth"
    for marker in session.markers:
        assert marker.encode() not in session.frames, f"{marker} crossed the veth in plain"


def test_the_capture_sees_an_insecure_session(hosts, tmp_path):
    """The control: the same session with ``--insecure`` puts every marker on the wire, so the
    test above would see any that crossed in plain."""
    session = work_across(hosts, tmp_path, "--insecure")
    assert "--insecure: listening on" in session.broker.log()
    assert session.broker.target.startswith("tcp://")
    assert session.capture.dropped == 0 and session.capture.truncated == 0, session.capture
    for marker in session.markers:
        assert marker.encode() in session.frames, f"{marker} not captured"


def test_without_the_connection_file_nothing_gets_in(hosts, tmp_path):
    """From B: a client that has only the address, a raw ZeroMQ peer that sends its requests
    right behind its greeting, and clients with forged connection files (a wrong server key;
    the right one with a key pair of their own) are all refused, each with a clear error and a
    counter; the secret they tried for never reaches them and what they tried to store never
    lands."""
    connection_file = str(tmp_path / "conn.json")
    broker = start_broker_in(hosts.a, tmp_path, "--connection-file", connection_file)
    try:
        secret, ws = f"secret-{uuid.uuid4().hex}", f"guarded_{uuid.uuid4().hex[:8]}"
        run_in(hosts.b, "keep", connection_file, ws, secret)
        forged = tmp_path / "forged.json"
        found = json.loads(Path(connection_file).read_text())
        pair = KeyPair.generate()
        forged.write_text(json.dumps({
            **found, "server_key": z85.encode(KeyPair.generate().public),
            "client_key": z85.encode(pair.public), "client_secret": z85.encode(pair.secret)}))
        own_pair = tmp_path / "own_pair.json"
        own_pair.write_text(json.dumps({
            **found, "client_key": z85.encode(pair.public),
            "client_secret": z85.encode(pair.secret)}))
        tried = run_in(hosts.b, "intrude", broker.address, ws, str(forged), str(own_pair))
        after = run_in(hosts.b, "inspect", connection_file, ws)
    finally:
        broker.stop()
    assert tried["plain"].startswith("NwsConnectException: ")
    assert "requires CURVE" in tried["plain"] and "connection file" in tried["plain"]
    assert tried["forged"].startswith("NwsConnectException: ")
    assert "CURVE handshake" in tried["forged"] and str(forged) in tried["forged"]
    assert "refused this client's key" in tried["own_pair"]
    # the raw peer got the broker's greeting and an ERROR command, no reply, then the door
    raw = tried["raw"]["received"].encode("latin-1")
    assert tried["raw"]["closed"] and raw.startswith(greeting(b"CURVE", as_server=True))
    assert secret.encode() not in raw
    assert raw[GREETING_SIZE + 2:].startswith(b"\x05ERROR") and len(raw) < GREETING_SIZE + 64
    assert after["variables"] == ["secret"] and after["secret"] == secret
    counters = after["counters"]
    assert counters.get("refused_mechanism", 0) >= 2, counters  # the plain client and raw peer
    assert counters.get("curve_server_key", 0) >= 1, counters
    assert counters.get("curve_key_refused", 0) >= 1, counters
