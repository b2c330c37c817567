"""A broker with ``--data-dir`` and ``--fsync always`` is killed with SIGKILL at random moments
while four client processes (``crash_client.py``) store, fetch, set and delete key-value
entries and publish into a shared queue, each writing down which of its calls were
acknowledged and which were in flight when the broker died; each time a broker starts again on
the same directory and port, and the clients reconnect on their own and go on. At the end,
after one more SIGKILL and restart, what the broker holds must be what the journals allow:

* every acknowledged store is there exactly once, unless a fetch took it;
* a value whose fetch was acknowledged is gone, and never came back to a later fetch;
* nothing is there twice, nothing is there that was never stored, and a variable's values
  are in the order they were stored;
* a call in doubt went either way, consistently: a store that carried the acknowledgement of
  a fetch took effect with it or not at all;
* every acknowledged key-value entry is there with its version, unless its deletion was
  acknowledged, and an acknowledged deletion found its entry; every acknowledged publish is
  in the shared queue once.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from workbench import KeyValueStore, NetWorkSpace, NwsServer
from workbench.client.embedded import connect
from workbench.client.pubsub import MessageBus

from .crash_client import QUEUE, WORKSPACE
from .support import Broker, start_broker

pytestmark = pytest.mark.timeout(120)

CLIENT = str(Path(__file__).with_name("crash_client.py"))
CLIENTS = 4
ROUNDS = 8
SEED = 17
#: Seconds from when every client has made progress on a broker until it is killed.
KILL_DELAY = (0.05, 0.6)
#: Acknowledged calls every client makes on each broker before it may be killed.
PROGRESS = 5
#: How long every client may take to make that progress (or to finish, once told).
CLIENT_DEADLINE = 20.0
#: Sessions end after 4 s of silence: a 2-core machine running five processes flat out may
#: stall a client past the support brokers' 0.6 s (which would be legal, but is not the test).
BROKER_ARGS = ("--fsync", "always", "--heartbeat-liveness", "20")


# ---------------------------------------------------------------------- what the clients did

@dataclass
class KvEntry:
    acknowledged: bool  # its set (False: in doubt)
    version: int
    deleted: bool | None = None  # its deletion: acknowledged, in doubt, or never tried


@dataclass
class History:
    """One client's journal, and what it allows the broker to hold."""

    client: int
    stored: dict[str, bool] = field(default_factory=dict)  # value -> acknowledged
    fetched: dict[str, list[int]] = field(default_factory=dict)  # value -> its fetch lines
    consumed: set[str] = field(default_factory=set)  # values whose fetch was acknowledged
    #: Stores in doubt that carried a fetch's acknowledgement: (line, value, fetched value).
    tied: list[tuple[int, str, str]] = field(default_factory=list)
    #: Values fetched by a session that ended unacknowledged: (line that says so, value).
    returned: list[tuple[int, str]] = field(default_factory=list)
    kv: dict[str, KvEntry] = field(default_factory=dict)
    published: dict[str, bool] = field(default_factory=dict)  # value -> acknowledged
    sessions: int = 0
    in_doubt: int = 0
    problems: list[str] = field(default_factory=list)


def read_journal(path: Path) -> list[dict]:
    """The whole lines of a journal (a client may be writing its last)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1]]


def history(client: int, lines: list[dict]) -> History:
    """Replay a journal, noting what it shows went wrong while the clients ran."""
    h = History(client)
    for index, line in enumerate(lines):
        op, done = line["op"], line.get("done")
        value = f"{client}:{line['n']}"
        h.sessions = max(h.sessions, line.get("session", 0))
        h.in_doubt += done is False
        if op == "store":
            h.stored[value] = done
            acked = line.get("acks")
            if acked is not None and done:
                h.consumed.add(acked)
            elif acked is not None:
                h.tied.append((index, value, acked))
            if line.get("returned") is not None:
                h.returned.append((index, line["returned"]))
        elif op in ("fetch", "fetch_try") and line.get("value") is not None:
            got = line["value"]
            if got not in h.stored:
                h.problems.append(f"client {client} fetched {got!r}, which it never stored")
            if got in h.consumed:
                h.problems.append(f"{got!r} came back to a fetch after its fetch was "
                                  "acknowledged")
            h.fetched.setdefault(got, []).append(index)
        elif op == "kv_set":
            h.kv[value] = KvEntry(done, line.get("version", 0))
        elif op == "kv_delete":
            h.kv[line["key"]].deleted = done
            if done and not line["existed"]:
                h.problems.append(f"entry {line['key']!r} was not there when deleted")
        elif op == "publish":
            h.published[value] = done
            if done and line["received"] != 1:
                h.problems.append(f"publish of {value!r} reached {line['received']} queues")
    return h


# ---------------------------------------------------------------------- what the broker holds

class Found(NamedTuple):
    values: dict[str, list[str]]  # variable of workspace WORKSPACE -> values, head first
    entries: dict[str, tuple[Any, int]]  # key -> (value, version)
    queued: list[str]  # the shared queue's messages, head first


def read_back(broker: Broker) -> Found:
    """Everything the broker holds of the clients' (taking it: the test is over)."""
    connection = connect(broker.host, broker.port)
    try:
        server = NwsServer(connection=connection)
        ws = NetWorkSpace(WORKSPACE, server=server, useUse=True)
        values = {}
        for var in ws.listVars(format="dict"):
            values[var] = taken = []
            while (value := ws.fetchTry(var)) is not None:
                taken.append(value)
        kv = KeyValueStore(connection=connection)
        keys = NetWorkSpace(kv.workspace, server=server, useUse=True).listVars(format="dict")
        entries = {key: tuple(entry) for key, entry in kv.get_multi(keys).items()}
        bus = MessageBus(connection)
        queued = []
        while (message := bus.queue_get_nowait(QUEUE)) is not None:
            queued.append(message)
        return Found(values, entries, queued)
    finally:
        connection.close()


def client_of(value: str) -> tuple[int, int]:
    client, n = value.split(":")
    return int(client), int(n)


def check(histories: list[History], found: Found) -> list[str]:
    """Everything that the broker's state says was a lie (see the module's docstring)."""
    problems = [p for h in histories for p in h.problems]
    present: set[str] = set()
    for var, values in found.values.items():
        for value, times in Counter(values).items():
            if times > 1:
                problems.append(f"{value!r} is in {var} {times} times")
        present.update(values)
        if not values:
            continue
        client = client_of(values[0])[0]
        if var != f"c{client}" or any(client_of(v)[0] != client for v in values):
            problems.append(f"{var} holds values of another client: {values[:5]}")
        elif [client_of(v)[1] for v in values] != sorted(client_of(v)[1] for v in values):
            problems.append(f"{var}'s values are out of store order: {values}")
    for h in histories:
        for value, acknowledged in h.stored.items():
            if acknowledged and value not in h.fetched and value not in present:
                problems.append(f"the acknowledged store of {value!r} is lost")
        for value in present:
            if client_of(value)[0] == h.client and value not in h.stored:
                problems.append(f"{value!r} is there, and was never stored")
        for value in h.consumed & present:
            problems.append(f"{value!r} is there after its fetch was acknowledged")
        def came_back(value: str, since: int) -> bool:
            return value in present or any(i > since for i in h.fetched.get(value, ()))

        for index, value in h.returned:
            if not came_back(value, index):
                problems.append(f"{value!r}, held unacknowledged by a session that ended, "
                                "did not come back")
        for index, value, acked in h.tied:
            applied = value in present or value in h.fetched
            if applied == came_back(acked, index):
                problems.append(f"the store of {value!r} in doubt {'took' if applied else 'lost'}"
                                f" its effect, but the acknowledgement of {acked!r} it carried "
                                f"{'did not' if applied else 'did'}")
    for key, (value, version) in found.entries.items():
        client, n = client_of(key)
        entry = histories[client].kv.get(key)
        if entry is None or value != n:
            problems.append(f"entry {key!r} = {value!r} was never set")
        elif entry.deleted:
            problems.append(f"entry {key!r} is there after its deletion was acknowledged")
        elif entry.acknowledged and version != entry.version:
            problems.append(f"entry {key!r} has version {version}, not {entry.version}")
    for h in histories:
        for key, entry in h.kv.items():
            if entry.acknowledged and entry.deleted is None and key not in found.entries:
                problems.append(f"the acknowledged entry {key!r} is lost")
    for value, times in Counter(found.queued).items():
        if times > 1:
            problems.append(f"message {value!r} is queued {times} times")
    for h in histories:
        mine = [v for v in found.queued if client_of(v)[0] == h.client]
        if [client_of(v)[1] for v in mine] != sorted(client_of(v)[1] for v in mine):
            problems.append(f"client {h.client}'s messages are out of order: {mine}")
        for value in mine:
            if value not in h.published:
                problems.append(f"message {value!r} is queued, and was never published")
        for value, acknowledged in h.published.items():
            if acknowledged and value not in mine:
                problems.append(f"the acknowledged message {value!r} is lost")
    return problems


# ---------------------------------------------------------------------- the run

def acknowledged(journal: Path) -> int:
    return journal.read_bytes().count(b'"done": true') if journal.exists() else 0


def wait_for_progress(clients: list[subprocess.Popen], journals: list[Path],
                      since: list[int]) -> list[int]:
    """Wait until every client has had PROGRESS more calls acknowledged -> the counts."""
    deadline = time.monotonic() + CLIENT_DEADLINE
    while True:
        counts = [acknowledged(journal) for journal in journals]
        if all(count >= before + PROGRESS for count, before in zip(counts, since)):
            return counts
        for number, client in enumerate(clients):
            if client.poll() is not None:
                raise AssertionError(f"client {number} exited: {errors(journals[number])}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the clients made no progress: {counts} after {since}")
        time.sleep(0.02)


def errors(journal: Path) -> str:
    return journal.with_suffix(".err").read_text()


def kill(broker: Broker) -> None:
    broker.process.send_signal(signal.SIGKILL)
    broker.process.wait(10)
    broker.stop()


def test_what_a_broker_killed_at_random_acknowledged_is_there(tmp_path) -> None:
    rng = random.Random(SEED)
    data = str(tmp_path / "data")
    stop = tmp_path / "stop"
    journals = [tmp_path / f"client-{number}.jsonl" for number in range(CLIENTS)]
    broker = start_broker(tmp_path, "--data-dir", data, *BROKER_ARGS)
    clients: list[subprocess.Popen] = []
    try:
        for number, journal in enumerate(journals):
            with open(journal.with_suffix(".err"), "wb") as err:
                clients.append(subprocess.Popen(
                    [sys.executable, CLIENT, str(number), str(SEED + number), str(journal),
                     str(stop)], env=broker.env(), stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=err))
        counts = [0] * CLIENTS
        for _ in range(ROUNDS):
            counts = wait_for_progress(clients, journals, counts)
            time.sleep(rng.uniform(*KILL_DELAY))  # the random moment
            kill(broker)
            broker = start_broker(tmp_path, "--data-dir", data, *BROKER_ARGS,
                                  "--port", str(broker.port))
        wait_for_progress(clients, journals, counts)
        stop.touch()
        for number, client in enumerate(clients):
            assert client.wait(CLIENT_DEADLINE) == 0, errors(journals[number])
        kill(broker)  # what the clients left, as a crash leaves it
        broker = start_broker(tmp_path, "--data-dir", data, *BROKER_ARGS,
                              "--port", str(broker.port))
        found = read_back(broker)
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
        broker.stop()
    histories = [history(number, read_journal(journal))
                 for number, journal in enumerate(journals)]
    problems = check(histories, found)
    assert not problems, "\n".join(problems[:30])
    for h in histories:  # every client went through every restart
        assert h.sessions >= ROUNDS + 1, (h.client, h.sessions)
    assert sum(h.in_doubt for h in histories) > 0  # some calls were in flight at a kill
