"""The broker requests the HTTP API makes, each with what its reply means. Pure: no sockets.

A ``BrokerCall`` goes out through either face of the gateway's session: from the event loop
(``caller.LoopCaller``) when it never waits at the broker and is small, else from a gateway
thread (``gateway.Gateway.call``). Both raise an error reply as the Python client does
(``raise_for_status``) and then ask the call's ``answer`` what any other reply means.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Callable, NamedTuple

from ..errors import NwsOperationException
from ..protocol import HEADER_SIZE, META, VERSION_SHIFT, Op, Status
from ..topics import parse

_VALUE_AT = HEADER_SIZE + META.size
_VERSION = struct.Struct("<Q")


class EmptyVariable(NwsOperationException):
    """A find or fetch without waiting found no value (HTTP 404)."""


class Value(NamedTuple):
    """A value as the broker handed it over: its frames (never decoded here) and, for a
    key-value entry, its version."""

    frames: list
    version: int = 0


def _nothing(status: int, head: bytes, extra: list) -> None:
    return None


def _text(status: int, head: bytes, extra: list) -> Any:
    return json.loads(head[HEADER_SIZE:])


class BrokerCall(NamedTuple):
    """One request: ``op`` with text ``args`` and a value's ``frames``. ``answer(status, head,
    extra frames)`` says what a reply that is not an error means. ``leased``: an OK reply
    holds a value under a lease, acknowledged once the HTTP answer is made (until then the
    broker puts it back if the request is cancelled). ``spill``: a large value may go
    through shared memory."""

    op: int
    args: list
    frames: list | tuple = ()
    answer: Callable[[int, bytes, list], Any] = _nothing
    leased: bool = False
    spill: bool = True

    @property
    def size(self) -> int:
        """Bytes of the request's arguments and value."""
        return (sum(map(len, self.args)) +
                sum(memoryview(frame).nbytes for frame in self.frames))


# ---------------------------------------------------------------------- the broker


def status() -> BrokerCall:
    return BrokerCall(Op.STATUS, [], answer=_text)


# ---------------------------------------------------------------------- workspaces


def _workspaces(status: int, head: bytes, extra: list) -> dict:
    return {name: {"name": name, "owner": owner, "persistent": persistent,
                   "variables": count, "vars": list(names)}
            for name, _, owner, persistent, count, names in json.loads(head[HEADER_SIZE:])}


def list_workspaces() -> BrokerCall:
    """-> ``{ws: {"name", "owner", "persistent", "variables", "vars"}}``."""
    return BrokerCall(Op.LIST_WSS, [], answer=_workspaces)


def use_workspace(ws: str) -> BrokerCall:
    """Make the workspace unless it exists, never taking ownership: it stays until deleted."""
    return BrokerCall(Op.USE_WS, [ws.encode(), b"1"])


def delete_workspace(ws: str) -> BrokerCall:
    return BrokerCall(Op.DELETE_WS, [ws.encode()])


# The variables' calls go straight to the broker by the workspace's name: a NetWorkSpace
# handle would cost a round trip of its own to attach (and a workspace that does not exist
# answers NwsNoWorkSpaceException either way).


def _variables(status: int, head: bytes, extra: list) -> dict:
    return {name: {"name": name, "values": count, "fetchers": fetchers, "finders": finders,
                   "mode": mode}
            for name, count, fetchers, finders, mode in json.loads(head[HEADER_SIZE:])}


def list_variables(ws: str) -> BrokerCall:
    """-> ``{var: {"name", "values", "fetchers", "finders", "mode"}}``."""
    return BrokerCall(Op.LIST_VARS, [ws.encode()], answer=_variables)


def declare(ws: str, var: str, mode: str) -> BrokerCall:
    return BrokerCall(Op.DECLARE, [ws.encode(), var.encode(), mode.encode()])


def delete_variable(ws: str, var: str) -> BrokerCall:
    return BrokerCall(Op.DELETE_VAR, [ws.encode(), var.encode()])


# ---------------------------------------------------------------------- values


def store(ws: str, var: str, frames: list) -> BrokerCall:
    return BrokerCall(Op.STORE, [ws.encode(), var.encode()], frames)


def _frames(head: bytes, extra: list) -> list:
    """A value reply -> its value frames, copied out of the reply (they outlive it)."""
    return [bytes(memoryview(head)[_VALUE_AT:]), *(bytes(frame) for frame in extra)]


def _read(op: int, ws: str, var: str, leased: bool) -> BrokerCall:
    def answer(status: int, head: bytes, extra: list) -> Value:
        if status == Status.MISSING:
            raise EmptyVariable(f"variable {var!r} of workspace {ws!r} holds no value")
        return Value(_frames(head, extra))

    return BrokerCall(op, [ws.encode(), var.encode()], answer=answer, leased=leased)


def find(ws: str, var: str, wait: float | None) -> BrokerCall:
    """-> a ``Value`` of the variable, left there. ``wait``: None to answer at once
    (EmptyVariable if it holds none), else seconds to wait for one (the caller's timeout)."""
    return _read(Op.FIND_TRY if wait is None else Op.FIND, ws, var, False)


def fetch(ws: str, var: str, wait: float | None) -> BrokerCall:
    """As ``find``, and the value is taken (under a lease until the answer is made)."""
    return _read(Op.FETCH_TRY if wait is None else Op.FETCH, ws, var, True)


# ---------------------------------------------------------------------- key-value


def kv_get(ns: str, key: str) -> BrokerCall:
    """-> the entry as a ``Value`` with its version, or None if absent."""
    return BrokerCall(Op.KV_GET, [ns.encode(), key.encode()], answer=_entry)


def _entry(status: int, head: bytes, extra: list) -> Value | None:
    if status == Status.MISSING:
        return None
    var_id, seq = META.unpack_from(head, HEADER_SIZE)
    return Value(_frames(head, extra), var_id << VERSION_SHIFT | seq)


def _put(status: int, head: bytes, extra: list) -> tuple[int, int]:
    new_version = _VERSION.unpack_from(head, HEADER_SIZE)[0] if status == Status.OK else 0
    return status, new_version


def kv_put(ns: str, key: str, frames: list, ttl: float, how: str, version: int) -> BrokerCall:
    """Write the entry if ``how`` (``set``, ``add``, ``cas``) allows -> (status, new
    version): ``Status.OK``, or ``MISSING``/``EXISTS`` when refused."""
    return BrokerCall(Op.KV_STORE, [ns.encode(), key.encode(), how.encode(),
                                    b"%r" % float(ttl), b"%d" % version], frames, answer=_put)


def _found(status: int, head: bytes, extra: list) -> bool:
    return status == Status.OK


def kv_delete(ns: str, key: str) -> BrokerCall:
    """-> whether there was such an entry."""
    return BrokerCall(Op.KV_DELETE, [ns.encode(), key.encode()], answer=_found)


def _number(status: int, head: bytes, extra: list) -> int | None:
    return int(head[HEADER_SIZE:]) if status == Status.OK else None


def kv_incr(ns: str, key: str, delta: int) -> BrokerCall:
    """-> the new number (a negative ``delta`` subtracts, never below 0), or None if absent."""
    how = b"incr" if delta >= 0 else b"decr"
    return BrokerCall(Op.KV_INCR, [ns.encode(), key.encode(), how, b"%d" % abs(delta)],
                      answer=_number)


# ---------------------------------------------------------------------- messages


def _delivered(status: int, head: bytes, extra: list) -> int:
    return int(head[HEADER_SIZE:])


def publish(identifier: str, frames: list) -> BrokerCall:
    """-> how many received the message (the broker answers once it passed it on).
    ValueError if ``identifier`` is not one."""
    parse(identifier)  # refused here: the broker would refuse it unanswered
    return BrokerCall(Op.MQ_PUBLISH, [identifier.encode(), b"1"], frames,
                      answer=_delivered, spill=False)
