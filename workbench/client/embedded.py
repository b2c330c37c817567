"""Finding a broker: an explicit address, ``WORKBENCH_BROKER``, the default one, or a private one.

A client given no address uses the broker at the default address if one answers; otherwise this
process starts a private broker subprocess on a free loopback port (once), points
``WORKBENCH_BROKER`` at it so child processes (workers) find it, and stops it at exit. The broker
also stops by itself when it sees this process gone, so nothing is left running after a crash.
Like every broker it records itself (``runtime``): ``workbench list`` in a terminal shows it.
"""

from __future__ import annotations

import atexit
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlsplit

from ..config import (
    BROKER_ENV, BROKER_READY, CONNECT_TIMEOUT, DEFAULT_HOST, DEFAULT_PORT,
    EMBEDDED_START_TIMEOUT, EMBEDDED_STOP_TIMEOUT, PORT_PROBE_TIMEOUT, PROBE_TIMEOUT,
    normalize_address,
)
from ..connection_file import is_connection_file, resolve
from ..errors import NwsConnectException
from ..runtime import started_by_embedding
from .connection import Connection, close_all, forget_target, known_target

_lock = threading.Lock()
_embedded: subprocess.Popen | None = None
_embedded_address: str | None = None


def connect(host: str | None = None, port: int | None = None,
            timeout: float = CONNECT_TIMEOUT) -> Connection:
    """A new session with the broker the arguments, the environment or the defaults name.
    ``host`` and ``WORKBENCH_BROKER`` may be a connection file (``port`` is then ignored)."""
    if host is not None and is_connection_file(host):
        target = resolve(host)
        return Connection(target, timeout, hint=start_hint(target.address))
    if host is not None or port is not None:  # a host alone may be host:port or tcp://...
        address = normalize_address(host if port is None else f"{host or DEFAULT_HOST}:{port}")
        target = known_target(address)
        try:
            return Connection(target, timeout, hint=start_hint(address))
        except NwsConnectException:
            if target is address:
                raise
        # The CURVE broker this process knew there is gone, and another answers (a port used
        # again): connect as a process that never knew it would, without its keys.
        forget_target(address)
        return Connection(address, timeout, hint=start_hint(address))
    if os.environ.get(BROKER_ENV):
        target = resolve(os.environ[BROKER_ENV])
        return Connection(target, timeout,
                          hint=f"{BROKER_ENV} names it; " + start_hint(target.address))
    default = normalize_address(f"{DEFAULT_HOST}:{DEFAULT_PORT}")
    if _port_accepts(DEFAULT_HOST, DEFAULT_PORT):
        try:
            return Connection(default, PROBE_TIMEOUT)
        except NwsConnectException:
            pass  # something else listens there: fall back to a private broker
    return Connection(embedded_broker(), timeout, hint="the embedded broker did not answer")


def start_hint(address: str) -> str:
    parts = urlsplit(address)
    return f"start one with `workbench broker --host {parts.hostname} --port {parts.port}`"


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PORT_PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def embedded_broker() -> str:
    """The address of this process's private broker, starting it on first use."""
    global _embedded, _embedded_address
    with _lock:
        if _embedded is not None and _embedded.poll() is None:
            return _embedded_address
        errors = tempfile.TemporaryFile()  # warnings and errors only; shown if it fails to start
        process = subprocess.Popen(
            [sys.executable, "-m", "workbench", "broker", "--host", "127.0.0.1", "--port", "0",
             "--parent-pid", str(os.getpid()), "--announce", "--log-level", "WARNING",
             "--started-by", started_by_embedding()],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
            # its own session: Ctrl-C in a terminal must not kill it before this process cleans up
            start_new_session=True,
        )
        with errors:  # the broker keeps its own descriptor of the file
            try:
                address = _read_announcement(process)
            except NwsConnectException as exc:
                errors.seek(0)
                tail = errors.read()[-2000:].decode("utf-8", "replace").strip()
                raise NwsConnectException(f"{exc}\n{tail}" if tail else str(exc)) from None
        _embedded, _embedded_address = process, address
        os.environ[BROKER_ENV] = address
        return address


def _read_announcement(process: subprocess.Popen) -> str:
    deadline = time.monotonic() + EMBEDDED_START_TIMEOUT
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, remaining))
        if not ready:
            process.kill()
            raise NwsConnectException(
                f"the embedded broker did not start within {EMBEDDED_START_TIMEOUT:g} s")
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            raise NwsConnectException(
                f"the embedded broker exited with status {process.wait()} before starting")
        line += chunk
    text = line.decode().strip()
    if not text.startswith(BROKER_READY):
        process.kill()
        raise NwsConnectException(f"unexpected output from the embedded broker: {text!r}")
    return text[len(BROKER_READY):]


@atexit.register
def _stop_embedded() -> None:
    close_all()  # say goodbye while the broker still answers
    process = _embedded
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=EMBEDDED_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if os.environ.get(BROKER_ENV) == _embedded_address:
        del os.environ[BROKER_ENV]
