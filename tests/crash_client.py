"""A client process of the crash test (``test_durable_crash``): it changes the broker that
``WORKBENCH_BROKER`` names as fast as it can, through the broker's restarts, and writes to its
journal exactly what was acknowledged and what was in doubt, until the stop file appears.

    python crash_client.py CLIENT SEED JOURNAL STOP_FILE

Every operation gets a number ``n`` of its own, and every value it writes names the client
and that number: ``"CLIENT:n"`` in the variable ``cCLIENT`` of the persistent workspace
``crash``, in the shared queue ``crash:*`` (published under ``crash:CLIENT``), and as the
key-value entry ``"CLIENT:n"`` whose value is ``n``. A journal line (JSON) is written, and
flushed, once the call returned (``"done": true``: acknowledged) or raised
``NwsConnectionDroppedException`` (``"done": false``: the broker went away with the call in
flight, and its outcome is unknown).

A fetch is exact when its acknowledgement rides on a store, as a sleigh's worker acknowledges
its task with its result (``WorkQueue``): the fetched value is consumed for good exactly when
that store is, and the store's line says so (``"acks"``). If the session that holds the value
ended before the store reached it, the broker gave the value back, and the store's line says
that instead (``"returned"``). The public ``fetchTry`` acknowledges with the next request or
the heartbeat, whichever comes first, so its values may come back after a crash (at least
once): the journal says ``fetch_try``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any, NamedTuple

from workbench import KeyValueStore, NetWorkSpace, NwsConnectionDroppedException, codec
from workbench.client.embedded import connect
from workbench.client.pubsub import MessageBus
from workbench.client.workqueue import WorkQueue
from workbench.client.workspace import NwsServer

WORKSPACE = "crash"
QUEUE = "crash:*"
#: Relative weights of the operations.
WEIGHTS = {"store": 40, "fetch": 20, "fetch_try": 8, "kv_set": 14, "kv_delete": 6,
           "publish": 12}
#: After a call found the broker gone: how long to wait before the next one (it retries).
RETRY_PAUSE = 0.02
#: The longest any one reply may take (the broker is up, or the call fails at once).
REPLY_TIMEOUT = 20.0


class Held(NamedTuple):
    """A value fetched under a lease that the next store acknowledges."""

    request_id: int
    value: str
    session: bytes  # the id of the connection's session it was fetched in


class Client:
    """One client process: a session with the broker, its journal, what it holds."""

    def __init__(self, number: int, seed: int, journal: str) -> None:
        self.number = number
        self.var = f"c{number}"
        self.rng = random.Random(seed)
        self.journal = open(journal, "a", buffering=1, encoding="utf-8")  # a line: a write
        self.connection = connection = connect()
        self.ws = NetWorkSpace(WORKSPACE, server=NwsServer(connection=connection),
                               persistent=True)
        self.queue = WorkQueue(connection, WORKSPACE)
        self.kv = KeyValueStore(connection=connection)
        self.bus = MessageBus(connection)
        self.bus.declare_queue(QUEUE)
        self.n = 0
        self.held: Held | None = None
        self.kv_keys: list[str] = []  # set and acknowledged, not yet deleted

    def value(self) -> str:
        return f"{self.number}:{self.n}"

    def run(self, stop_file: str) -> None:
        operations, weights = list(WEIGHTS), list(WEIGHTS.values())
        while not os.path.exists(stop_file):
            op = "store" if self.held else self.rng.choices(operations, weights)[0]
            if op == "kv_delete" and not self.kv_keys:
                op = "kv_set"
            if not self.call(op):
                time.sleep(RETRY_PAUSE)
        if self.held:  # its acknowledgement rides on a last store
            self.call("store")
        self.connection.close()
        self.journal.write(json.dumps({"n": self.n, "op": "end"}) + "\n")
        self.journal.close()

    def call(self, op: str) -> bool:
        """Make the next call and write its line -> whether it was acknowledged."""
        self.n += 1
        facts: dict[str, Any] = {}
        try:
            getattr(self, op)(facts)
            done = True
        except NwsConnectionDroppedException:
            done = False
        self.journal.write(json.dumps({"n": self.n, "op": op, "done": done,
                                       "session": self.connection.sessions, **facts}) + "\n")
        return done

    # ------------------------------------------------------------------ operations
    # Each fills in ``facts`` for its journal line, what it knows before its call too.

    def store(self, facts: dict) -> None:
        """Store the next value; with a held value's acknowledgement (``acks``) if the
        session that holds it is the one the store goes to; otherwise that session has ended
        and given the value back (``returned``).

        Sessions are told apart by their ids, not by ``Connection.sessions``: the id changes
        as a new session starts, and a call from this thread may go through that session
        before ``sessions`` counts it (the reconnector thread opens it meanwhile)."""
        held, self.held = self.held, None
        if held is None or held.session != self.connection.session_id:
            if held is not None:
                facts["returned"] = held.value
            self.ws.store(self.var, self.value())
            return
        facts["acks"] = held.value
        try:
            self.queue.store(self.var, codec.encode(self.value()), acks=[held.request_id])
        finally:
            if self.connection.session_id != held.session:  # it reconnected: the store
                facts["returned"] = facts.pop("acks")  # went to a new session, unacknowledged

    def fetch(self, facts: dict) -> None:
        request_id = self.queue.send_fetch(self.var, 1, block=False)
        reply = self.queue.receive([request_id], time.monotonic() + REPLY_TIMEOUT)
        facts["value"] = value = codec.decode(reply.values[0][0]) if reply.values else None
        if value is not None:  # held by the session the request went to: the one now
            self.held = Held(request_id, value, self.connection.session_id)

    def fetch_try(self, facts: dict) -> None:
        facts["value"] = self.ws.fetchTry(self.var)

    def kv_set(self, facts: dict) -> None:
        key = self.value()
        _, facts["version"] = self.kv.store(key, self.n)
        self.kv_keys.append(key)

    def kv_delete(self, facts: dict) -> None:
        keys = self.kv_keys
        facts["key"] = key = keys.pop(self.rng.randrange(len(keys)))
        facts["existed"] = self.kv.delete(key)

    def publish(self, facts: dict) -> None:
        facts["received"] = self.bus.publish(f"{WORKSPACE}:{self.number}", self.value(),
                                             wait=True)


def main(argv: list[str]) -> None:
    number, seed, journal, stop_file = argv
    Client(int(number), int(seed), journal).run(stop_file)


if __name__ == "__main__":
    main(sys.argv[1:])
