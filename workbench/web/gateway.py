"""The broker as the HTTP API uses it: blocking calls (run in the gateway's threads) that hand
back values as raw frames, never decoded here (``values`` shows them).

One session serves every request; each thread of the gateway has its own channel on it, as
every client thread does. Blocking calls take a timeout, and a call whose timeout runs out is
cancelled at the broker, so nothing is taken after the HTTP client was told 408.
"""

from __future__ import annotations

import json
from ..client.connection import Connection
from ..client.embedded import connect
from ..client.keyvalue import Entry, KeyValueStore
from ..client.pubsub import publish_frames
from ..client.workspace import DICT, NwsServer
from ..config import CONNECT_TIMEOUT
from ..errors import NwsOperationException
from ..protocol import HEADER_SIZE, META, Op, Status

_VALUE_AT = HEADER_SIZE + META.size


class EmptyVariable(NwsOperationException):
    """A find or fetch without waiting found no value (HTTP 404)."""


def _frames(head: bytes, extra: list) -> list:
    """A value reply -> its value frames, copied out of the reply (they outlive it)."""
    return [bytes(memoryview(head)[_VALUE_AT:]), *(bytes(frame) for frame in extra)]


class Gateway:
    """A session with one broker, for the gateway's requests (from any of its threads)."""

    def __init__(self, broker: str | None = None, timeout: float = CONNECT_TIMEOUT,
                 connection: Connection | None = None) -> None:
        self.connection = connection or connect(broker, None, timeout)
        self.server = NwsServer(connection=self.connection)

    @property
    def address(self) -> str:
        return self.connection.address

    @property
    def label(self) -> str:
        """This session's name among the broker's clients."""
        return self.connection.label

    def close(self) -> None:
        self.connection.close()

    # ------------------------------------------------------------------ the broker

    def status(self) -> dict:
        return self.server.status()

    # ------------------------------------------------------------------ workspaces

    def list_workspaces(self) -> dict:
        return {name: {"name": name, "owner": owner, "persistent": persistent,
                       "variables": count, "vars": list(names)}
                for name, (_, _, owner, persistent, count, names)
                in self.server.listWss(format=DICT).items()}

    def create_workspace(self, ws: str) -> bool:
        """Make the workspace unless it exists (unowned: it stays until deleted) -> whether
        this made it."""
        existed = ws in self.server.listWss(format=DICT)
        self.server.useWs(ws, create=True)
        return not existed

    def delete_workspace(self, ws: str) -> None:
        self.server.deleteWs(ws)

    # The variables' calls go straight to the broker by the workspace's name: a NetWorkSpace
    # handle would cost a round trip of its own to attach (and a workspace that does not
    # exist answers NwsNoWorkSpaceException either way).

    def list_variables(self, ws: str) -> dict:
        rows = json.loads(self.connection.call(Op.LIST_VARS, [ws.encode()])[HEADER_SIZE:])
        return {name: {"name": name, "values": count, "fetchers": fetchers,
                       "finders": finders, "mode": mode}
                for name, count, fetchers, finders, mode in rows}

    def declare(self, ws: str, var: str, mode: str) -> None:
        self.connection.call(Op.DECLARE, [ws.encode(), var.encode(), mode.encode()])

    def delete_variable(self, ws: str, var: str) -> None:
        self.connection.call(Op.DELETE_VAR, [ws.encode(), var.encode()])

    # ------------------------------------------------------------------ values

    def store(self, ws: str, var: str, frames: list) -> None:
        self.connection.call(Op.STORE, [ws.encode(), var.encode()], frames)

    def find(self, ws: str, var: str, wait: float | None) -> list:
        """The value frames of a value of the variable, left there; ``wait``: None to answer
        at once (EmptyVariable), else seconds to wait for one (NwsTimeoutException)."""
        return self._read(Op.FIND_TRY if wait is None else Op.FIND, ws, var, wait, False)

    def fetch(self, ws: str, var: str, wait: float | None) -> list:
        """As ``find``, and the value is taken."""
        return self._read(Op.FETCH_TRY if wait is None else Op.FETCH, ws, var, wait, True)

    def _read(self, op: int, ws: str, var: str, wait: float | None, leased: bool) -> list:
        status, frames = self.connection.read(op, [ws.encode(), var.encode()], (), wait,
                                              _frames, leased=leased)
        if status == Status.MISSING:
            raise EmptyVariable(f"variable {var!r} of workspace {ws!r} holds no value")
        return frames

    # ------------------------------------------------------------------ key-value

    def _store(self, namespace: str) -> KeyValueStore:
        return KeyValueStore(connection=self.connection, workspace=namespace,
                             decode=lambda frames: [bytes(frame) for frame in frames])

    def kv_get(self, namespace: str, key: str) -> Entry | None:
        """The entry (its value as frames) or None."""
        return self._store(namespace).get(key)

    def kv_put(self, namespace: str, key: str, frames: list, ttl: float, how: str,
               version: int) -> tuple[int, int]:
        return self._store(namespace).store(key, None, ttl, how, version, frames=frames)

    def kv_delete(self, namespace: str, key: str) -> bool:
        return self._store(namespace).delete(key)

    def kv_incr(self, namespace: str, key: str, delta: int) -> int | None:
        return self._store(namespace).incr(key, delta)

    # ------------------------------------------------------------------ messages

    def publish(self, identifier: str, frames: list) -> int:
        """Send a message; -> how many received it (the broker answers once it passed it on)."""
        return publish_frames(self.connection, identifier, frames)
