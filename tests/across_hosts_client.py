"""The client side of tests/test_across_hosts.py, run in the second network namespace: a
legitimate client with the broker's connection file, and intruders without it.

``python tests/across_hosts_client.py ROLE ARGS...`` prints one JSON line of what it saw:

* ``work BROKER WS VALUE_MARKER SMALL_MARKER TASK_MARKER``: store a 64 KiB value and a small
  string and fetch them back, then a sleigh with a launched worker and one joined by
  ``workbench worker --broker BROKER`` maps a function over range(20);
* ``keep BROKER WS SECRET``: a persistent workspace holding SECRET, for intruders to try;
* ``intrude ADDRESS WS FORGED_FILE OWN_PAIR_FILE``: a plain client by address, a raw ZeroMQ
  peer that sends its requests right behind its greeting, and clients with forged connection
  files (a wrong server key; the right one with a key pair of their own);
* ``inspect BROKER WS``: what WS holds now, and the broker's refusal counters.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

from workbench import NetWorkSpace, NwsConnectException, NwsServer, Sleigh
from workbench.codec import encode
from workbench.protocol import Op, request_head
from workbench.zmtp import GREETING, command, encode as frame, properties

TIMEOUT = 20.0
VALUE_SIZE = 64 << 10
TASK_MARKER = ""  # set from the command line; the task function carries it to the workers


def network_namespace() -> str:
    return os.readlink("/proc/self/ns/net")


def marked_square(x: int) -> str:
    return f"{TASK_MARKER}:{x * x}:{network_namespace()}"


def big_value(marker: bytes) -> bytes:
    """64 KiB that are the marker again and again between random bytes: a copy of it lies
    whole in any piece of the value a TCP segment carries, and nothing compresses it."""
    chunks, size = [], 0
    while size < VALUE_SIZE:
        chunks.append(marker + os.urandom(64))
        size += len(chunks[-1])
    return b"".join(chunks)[:VALUE_SIZE]


def work(broker: str, ws_name: str, value_marker: str, small_marker: str,
         task_marker: str) -> dict:
    global TASK_MARKER
    TASK_MARKER = task_marker
    os.environ["WORKBENCH_BROKER"] = broker
    value = big_value(value_marker.encode())
    space = NetWorkSpace(ws_name)
    space.store("big", value)
    space.store("small", small_marker)
    fetched = {"big": space.fetch("big", timeout=TIMEOUT) == value,
               "small": space.fetch("small", timeout=TIMEOUT) == small_marker}
    with Sleigh(1, startTimeout=TIMEOUT) as sleigh:
        joined = subprocess.Popen([sys.executable, "-m", "workbench", "worker", "--broker",
                                   broker, "--sleigh", sleigh.wsName], stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + TIMEOUT
            while sleigh.workerCount < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            workers = sleigh.workerInfo()
            worker_namespaces = [os.readlink(f"/proc/{w['pid']}/ns/net") for w in workers]
            results = sleigh.eachElem(marked_square, list(range(20)), timeout=TIMEOUT)
        finally:
            sleigh.stop()
            joined.wait(TIMEOUT)
    space.server.close()
    return {"namespace": network_namespace(), "fetched": fetched, "results": results,
            "worker_pids": [w["pid"] for w in workers], "joined_pid": joined.pid,
            "worker_namespaces": worker_namespaces}


def keep(broker: str, ws_name: str, secret: str) -> dict:
    with NwsServer(broker) as server:
        server.openWs(ws_name, persistent=True).store("secret", secret)
    return {"kept": True}


def intrude(address: str, ws_name: str, forged_file: str, own_pair_file: str) -> dict:
    return {"plain": _refusal(address, ws_name), "forged": _refusal(forged_file, ws_name),
            "own_pair": _refusal(own_pair_file, ws_name), "raw": _raw_requests(address, ws_name)}


def _refusal(broker: str, ws_name: str) -> str | None:
    """What connecting with ``broker`` and storing raised (None: it worked)."""
    try:
        NetWorkSpace(ws_name, serverHost=broker, useUse=True, timeout=5).store("planted", "x")
    except NwsConnectException as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _raw_requests(address: str, ws_name: str) -> dict:
    """A ZeroMQ peer of the plain mechanism that does not wait to be let in: its greeting,
    READY and requests (hello, read the secret, plant a value) in one write. Whatever comes
    back before the broker hangs up is returned, as text the test can search."""
    parts = urlsplit(address)
    ws = ws_name.encode()
    hello = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
    requests = [request_head(Op.HELLO, 1, [hello]), request_head(Op.USE_WS, 2, [ws, b"0"]),
                request_head(Op.FIND_TRY, 3, [ws, b"secret"]),
                request_head(Op.STORE, 4, [ws, b"planted", encode("x")[0]])]
    data = GREETING + command(b"READY", properties(Socket_Type=b"DEALER", Identity=b"intruder"))
    data += b"".join(b"".join(frame([request])) for request in requests)
    received = b""
    closed = False
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    return {"received": received.decode("latin-1"), "closed": closed}


def inspect(broker: str, ws_name: str) -> dict:
    with NwsServer(broker) as server:
        space = server.useWs(ws_name, create=False)
        variables = sorted(space.listVars(format="dict"))
        secret = space.find("secret", timeout=TIMEOUT)
        counters = server.status()["counters"]
        server.deleteWs(ws_name)
    return {"variables": variables, "secret": secret, "counters": counters}


if __name__ == "__main__":
    roles = {"work": work, "keep": keep, "intrude": intrude, "inspect": inspect}
    print(json.dumps(roles[sys.argv[1]](*sys.argv[2:])), flush=True)
