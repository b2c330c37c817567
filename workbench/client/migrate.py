"""Moving workspaces when a cluster changes: ``rebalance(old, new)`` puts every workspace (and
every key-value entry) on the broker the new cluster places it on.

Rendezvous hashing moves only what a change must: adding an n-th broker moves the names it now
wins, about 1/n of them, and removing one moves only its own. ``rebalance`` finds them by asking
each broker of the old cluster what it holds, and moves each workspace whole:

* its variables with their modes, and their values in the order a fetch would take them (a
  LIFO variable's are stored back oldest first, so its newest is still on top), as the raw
  frames they are (nothing is decoded, so nothing is unpickled);
* each value is stored on the new broker before the old one lets it go: a move cut short leaves
  values on both brokers, never on neither;
* the workspaces named in ``kv_workspaces`` (``kv`` and ``hive``, the key-value faces'
  defaults) hold key-value entries, which a cluster places by key, not by workspace: each
  entry moves to its key's broker (its time to live is not kept: moved entries do not expire);
  the memcache face's workspace stays whole where it is, since python-memcached's own server
  hashing places its keys;
* a workspace that a live session owns and that is not persistent is left where it is (it
  ends with its owner's session) and reported; the workspaces each broker has of its own
  (``__default``, ``__mq``, ``__babelfish``) stay.

Run it while no client uses the workspaces that move: a value stored on the old broker after
its workspace moved is not seen through the new cluster. ``dry_run`` says what would move.
"""

from __future__ import annotations

import json
from typing import NamedTuple, Sequence

from ..config import BABELFISH_WS
from ..protocol import HEADER_SIZE, Op, Status, pack_many, split_many
from .cluster import Brokers, Member, place
from .connection import Connection
from .keyvalue import DEFAULT_KV_WORKSPACE
from .pubsub import MQ_WORKSPACE

#: Values moved per request.
MOVE_BATCH = 1000
#: Workspaces each broker has of its own: never moved.
_KEEP = {"__default", MQ_WORKSPACE, BABELFISH_WS}
#: The workspaces of the key-value faces that place entries by key, as ``KeyValueStore`` and
#: ``hive.Client`` do on a cluster (their default workspaces).
PLACED_BY_KEY = (DEFAULT_KV_WORKSPACE, "hive")
#: The memcache face's workspace: python-memcached's own server hashing places its keys, so a
#: cluster's placement must not move them.
LEFT_ALONE = ("memcache",)


class Move(NamedTuple):
    """A workspace (or a key-value entry, ``key``) that changed brokers, or could not."""

    workspace: str
    source: str  # the old broker's name
    target: str  # the new one's
    values: int  # values moved
    key: str | None = None  # a key-value entry's key
    skipped: str | None = None  # why it was not moved (None: it was)


def rebalance(old: str | Sequence[str], new: str | Sequence[str], dry_run: bool = False,
              kv_workspaces: Sequence[str] = PLACED_BY_KEY,
              left_alone: Sequence[str] = LEFT_ALONE) -> list[Move]:
    """Move what ``new`` places elsewhere than where ``old`` has it -> what moved (see the
    module's docstring). ``old`` and ``new`` name clusters as ``NwsServer`` takes them; a
    broker is the same one in both when it is reached at the same address, whatever it is
    named (its workspaces then stay where they are, though the names place them anew)."""
    before, after = Brokers(old), Brokers(new)
    moves: list[Move] = []
    try:
        for member, source in before.each():
            for name, owner, persistent in _workspaces(source):
                if name in _KEEP:
                    continue
                if name in left_alone:
                    moves.append(Move(name, member.name, member.name, 0, skipped=(
                        "its face places its keys by its own server hashing")))
                    continue
                if name in kv_workspaces:
                    moves += _move_entries(name, member, source, after, dry_run)
                    continue
                target = after.place(name)
                if _same_broker(after, target, source):
                    continue
                if owner and not persistent:
                    moves.append(Move(name, member.name, target.name, 0, skipped=(
                        f"owned by the live session {owner}, and not persistent")))
                    continue
                moved = 0 if dry_run else _move_workspace(name, source,
                                                          after.connection(target, name))
                moves.append(Move(name, member.name, target.name, moved))
    finally:
        before.close()
        after.close()
    return moves


def _same_broker(cluster: Brokers, member: Member, connection: Connection) -> bool:
    """Whether ``member`` of ``cluster`` is the broker ``connection`` reaches."""
    return cluster.connection(member).address == connection.address


def _workspaces(connection: Connection) -> list[tuple[str, str | None, bool]]:
    rows = json.loads(connection.call(Op.LIST_WSS, [])[HEADER_SIZE:])
    return [(name, owner if owner != "(broker)" else None, persistent)
            for name, _, owner, persistent, *_ in rows]


def _variables(connection: Connection, ws: str) -> list[tuple[str, str]]:
    rows = json.loads(connection.call(Op.LIST_VARS, [ws.encode()])[HEADER_SIZE:])
    return [(name, mode) for name, _, _, _, mode in rows]


def _move_workspace(ws: str, source: Connection, target: Connection) -> int:
    """Every variable of ``ws`` from ``source`` to ``target``, then ``ws`` deleted at the
    source -> the values moved."""
    wsb = ws.encode()
    target.call(Op.USE_WS, [wsb, b"1"])
    moved = 0
    for var, mode in _variables(source, ws):
        target.call(Op.DECLARE, [wsb, var.encode(), mode.encode()])
        moved += _move_values(source, target, wsb, var.encode(), lifo=mode == "lifo")
    source.call(Op.DELETE_WS, [wsb])
    return moved


def _move_values(source: Connection, target: Connection, ws: bytes, var: bytes,
                 lifo: bool) -> int:
    """A variable's values, in the order a fetch takes them, each batch stored at the target
    while the source still holds it under lease: the store happens inside the fetch's decoding,
    before the lease is acknowledged, so a store that fails (the target's memory cap, a broker
    gone) withdraws the fetch and the batch goes back to the head of its variable."""
    if source is target or source.address == target.address:
        raise ValueError(f"moving values of {var!r} from a broker to itself")

    def store_at_target(head: bytes, extra: list) -> int:
        values = [frames for frames, _ in split_many(head, extra)]
        if lifo:  # fetched newest first: stored oldest first, the newest ends on top
            values.reverse()
        if values:
            target.call(Op.STORE_MANY, [ws, var], pack_many(values))
        return len(values)

    moved = 0
    while True:
        status, count = source.read(Op.FETCH_MANY, [ws, var, b"%d" % MOVE_BATCH, b"0"], (),
                                    decode=store_at_target, leased=True, spill=False)
        if status == Status.MISSING or not count:
            return moved
        moved += count


def _move_entries(ws: str, member: Member, source: Connection, after: Brokers,
                  dry_run: bool) -> list[Move]:
    """The key-value entries of ``ws`` whose keys the new cluster places elsewhere."""
    moves = []
    wsb = ws.encode()
    for key, mode in _variables(source, ws):
        target = place(after.members, key.encode("utf-8"))
        if _same_broker(after, target, source):
            continue
        moved = 0
        if not dry_run:
            connection = after.connection(target, f"key {key!r}")
            connection.call(Op.USE_WS, [wsb, b"1"])
            connection.call(Op.DECLARE, [wsb, key.encode(), mode.encode()])
            moved = _move_values(source, connection, wsb, key.encode(), lifo=False)
            source.call(Op.DELETE_VAR, [wsb, key.encode()])
        moves.append(Move(ws, member.name, target.name, moved, key=key))
    return moves
