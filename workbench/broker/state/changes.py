"""The records of what changed in the broker's persistent state: one record per change, in the
order the state made them. A durability log appends them; a second broker replays them.

The persistent state is the workspaces, their variables and the values in them, with the
key-value entries' deadlines and the shared queues' declarations. Sessions, blocked calls,
leases' holders, subscriptions and counters are not: they live and die with connections, so no
record describes them. A replay starts from a fresh ``BrokerState`` (it holds the default
workspace) and applies the records in order: ``restore`` does, and ``snapshot`` makes the
records that build a state as it is now.

Names: ``ws`` is a workspace's name, ``var`` a variable's, ``var_id`` the variable's id, which the
broker never gives twice (it tells a variable from a later one of the same name). A value is
``(var_id, seq)``: its variable's id and its store sequence, the two halves of a key-value
entry's version.

Replay rules, record by record:

* ``WorkspaceCreated``: a new, empty workspace. ``owner`` is the owning session's id (None: no
  owner); a replay after a restart finds no session alive, so a workspace that is not
  ``persistent`` and has an owner is purged, as it would have been when its owner went.
* ``WorkspaceClaimed``: an unowned workspace gets an owner (``openWs``).
* ``WorkspaceDeleted``: the workspace goes, with its variables and all their values, leased
  ones too (no record follows for each).
* ``Declared``: the variable is created if it does not exist (with ``var_id``), otherwise its
  mode and whether the mode is fixed change; its values keep their order. ``fixed`` is False
  only for a variable created by a blocked read, which a later declare may still give any mode.
* ``VariableDeleted``: the variable goes with all its values, leased ones too.
* ``Stored``: a value joins its variable: at the tail (FIFO), on top (LIFO), anywhere (MULTI),
  as the only value (SINGLE: the value it replaces gets a ``Removed`` of its own). A value handed
  at once to a blocked fetcher is ``Stored`` then ``Taken``. A value held in a shared-memory
  file (``shared``) has the file's reference in its frames, not its data: a log that must
  outlive the file copies the data, at the server's edge like all file I/O.
* ``Taken``: the value was handed to a fetcher under a lease. It is still the broker's: it stays
  in a log's variable until ``Removed``, and a broker that restarts gives it back.
* ``Returned``: a leased value came back to the head of its variable (FIFO: its place in store
  order; LIFO: the top; SINGLE: only into an empty variable, otherwise it is ``Removed``).
  ``holder_ended``: because the session holding it ended (the value counts it), rather than a
  cancel.
* ``Removed``: the value left for good: acknowledged, replaced, overwritten, expired, deleted.
* ``Expires``: a key-value entry's deadline, on the clock the server hands the state (None:
  never). A log that outlives the broker's clock stores it relative to when it wrote it.
* ``QueueDeclared``: the FIFO variable ``name`` of workspace ``__mq`` receives every published
  message whose identifier matches the pattern ``name`` (a shared queue).

Key-value operations need no records of their own: an entry is a SINGLE variable, so a set is a
``Stored`` (and a ``Removed`` of the old value), a delete ``Removed`` values and usually
``VariableDeleted``, a ttl an ``Expires``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union


class WorkspaceCreated(NamedTuple):
    ws: str
    persistent: bool
    owner: bytes | None  # the owning session's id
    owner_label: str  # who owns it, as listWss shows it


class WorkspaceClaimed(NamedTuple):
    ws: str
    persistent: bool
    owner: bytes
    owner_label: str


class WorkspaceDeleted(NamedTuple):
    ws: str


class Declared(NamedTuple):
    ws: str
    var: str
    var_id: int
    mode: str
    fixed: bool


class VariableDeleted(NamedTuple):
    ws: str
    var: str
    var_id: int


class Stored(NamedTuple):
    ws: str
    var: str
    var_id: int
    seq: int
    frames: list  # [descriptor + data, *extra]; a shared-memory value: [descriptor, reference]
    size: int  # bytes it counts against the memory cap
    shared: bytes | None  # the shared-memory file's reference, which owns the data


def stored(var: Any, value: Any) -> Stored:
    """The record of ``value`` stored in ``var`` (a ``Variable`` and a ``Value``). A store's
    entry in ``Effects.log`` is (this function, the variable, the value): a log may read its
    fields from the two without building the record."""
    return Stored(var.workspace.name, var.name, var.id, value.seq, value.frames, value.size,
                  value.shared)


class Taken(NamedTuple):
    var_id: int
    seq: int


class Returned(NamedTuple):
    var_id: int
    seq: int
    holder_ended: bool


class Removed(NamedTuple):
    var_id: int
    seq: int


class Expires(NamedTuple):
    var_id: int
    deadline: float | None


class QueueDeclared(NamedTuple):
    name: str


Change = Union[WorkspaceCreated, WorkspaceClaimed, WorkspaceDeleted, Declared, VariableDeleted,
               Stored, Taken, Returned, Removed, Expires, QueueDeclared]
