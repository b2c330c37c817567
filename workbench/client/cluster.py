"""Several brokers acting as one: which broker holds a workspace (or a key-value entry), and the
sessions with them.

Each workspace lives whole on one broker, the one its name ranks highest by rendezvous
(highest-random-weight) hashing: every broker scores ``blake2b(broker name, workspace name)``
and the highest score wins. Every NetWorkSpaces guarantee (order, exactly-once fetch, blocking)
is one broker's, so it holds unchanged; the placement needs no shared table, every client
computes the same one, and adding a broker moves only the names it now wins (about 1/n of them
for the n-th broker; ``rebalance`` moves their workspaces). A broker that is down is never
replaced by another for its names, which would split a workspace: operations that need it
raise NwsConnectException naming it, and the other brokers' workspaces work on.

A cluster is given as a list of brokers (addresses or connection files) or as a cluster file,
JSON naming them::

    {"brokers": ["tcp://10.0.0.1:8765", "/home/me/broker-b.json",
                 {"name": "c", "broker": "tcp://10.0.0.3:8765"}]}

A broker's name, which the placement hashes, is its address as given unless the file names it:
give names when a broker may move to another address and should keep its workspaces.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from typing import Iterable, Iterator, NamedTuple, Sequence

from ..config import CONNECT_TIMEOUT, normalize_address
from ..connection_file import is_connection_file
from ..errors import NwsConnectException, NwsConnectionFileException
from .connection import Connection
from .embedded import connect

#: What names a cluster file, besides a ``.json`` connection file: the key it must hold.
CLUSTER_KEY = "brokers"


class Member(NamedTuple):
    """One broker of a cluster: the name the placement hashes, and how to reach it."""

    name: str
    target: str  # an address or a connection file, as a client is given one

    def __str__(self) -> str:
        return self.name if self.name == self.target else f"{self.name} ({self.target})"


def is_several(brokers: object) -> bool:
    """Whether a broker argument names several brokers: a list or tuple of them, or a cluster
    file."""
    if isinstance(brokers, (list, tuple)):
        return True
    return isinstance(brokers, str) and _cluster_file(brokers) is not None


def members(brokers: str | Sequence[str]) -> list[Member]:
    """A broker argument naming several -> its members, in order. NwsConnectionFileException
    for a cluster file that cannot be used, ValueError for an empty list or a name twice."""
    if isinstance(brokers, str):
        entries = _cluster_file(brokers)
        if entries is None:
            entries = [brokers]
    else:
        entries = list(brokers)
    found = [_member(entry) for entry in entries]
    if not found:
        raise ValueError("a cluster needs at least one broker")
    names = [member.name for member in found]
    twice = {name for name in names if names.count(name) > 1}
    if twice:
        raise ValueError(f"a cluster names broker {', '.join(sorted(twice))} twice")
    return found


def _member(entry: object) -> Member:
    if isinstance(entry, dict):
        target = str(entry.get("broker") or entry.get("address") or "")
        if not target:
            raise NwsConnectionFileException(f"cluster entry {entry!r} has no 'broker'")
        return Member(str(entry.get("name") or _canonical(target)), target)
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"a broker is an address or a connection file, not {entry!r}")
    return Member(_canonical(entry), entry)


def _canonical(target: str) -> str:
    """A broker's default name: its address written one way (``host:port`` and
    ``tcp://host:port`` are one broker); a connection file's path as given."""
    return target if is_connection_file(target) else normalize_address(target)


def _cluster_file(text: str) -> list | None:
    """The brokers a cluster file names, or None if ``text`` is not one."""
    if not text.endswith(".json") or not os.path.isfile(text):
        return None
    try:
        with open(text, encoding="utf-8") as file:
            content = json.load(file)
    except (OSError, ValueError):
        return None  # whatever it is, reading it as a connection file says what is wrong
    if not isinstance(content, dict) or CLUSTER_KEY not in content:
        return None  # a broker's connection file
    entries = content[CLUSTER_KEY]
    if not isinstance(entries, list):
        raise NwsConnectionFileException(f"cluster file {text}: '{CLUSTER_KEY}' must be a list")
    return entries


def score(member: str, name: bytes) -> bytes:
    """The rendezvous score of a broker for a name: the highest wins."""
    return hashlib.blake2b(name, key=member.encode("utf-8")[:64], digest_size=8).digest()


def place(cluster: Sequence[Member], name: str | bytes) -> Member:
    """The member of ``cluster`` that holds ``name`` (a workspace's name, a key)."""
    data = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    return max(cluster, key=lambda member: score(member.name, data))


def temp_name(template: str, cluster: Sequence[Member], on: Member | None = None) -> str:
    """A name made from ``template`` (one ``%d``) with a random 64-bit number, so that names
    that clients make at once on different brokers never meet; with ``on``, one that is placed
    on that member (about as many tries as members)."""
    while True:
        name = template % secrets.randbits(64)
        if on is None or place(cluster, name) == on:
            return name


class Brokers:
    """The sessions with the brokers of a cluster, opened when first needed (from any
    thread), and where each name lives."""

    def __init__(self, brokers: str | Sequence[str], timeout: float = CONNECT_TIMEOUT) -> None:
        self.members = members(brokers)
        self.timeout = timeout
        self._connections: dict[str, Connection] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __len__(self) -> int:
        return len(self.members)

    def __str__(self) -> str:
        return f"{len(self.members)} brokers ({', '.join(map(str, self.members))})"

    def place(self, name: str | bytes) -> Member:
        return place(self.members, name)

    def connection(self, member: Member, holding: str | None = None) -> Connection:
        """The session with ``member``, opened if need be. NwsConnectException naming the
        broker (and ``holding``, what the caller wanted of it) if it does not answer."""
        with self._lock:
            if self._closed:
                raise NwsConnectException(f"the cluster's sessions are closed ({self})")
            connection = self._connections.get(member.name)
            if connection is not None and not connection.closed:
                return connection
        # connected outside the lock: a broker that is down holds up its own callers only
        try:
            connection = connect(member.target, None, self.timeout)
        except NwsConnectException as exc:
            what = f", which holds {holding}," if holding else ""
            raise NwsConnectException(
                f"broker {member}{what} does not answer: {exc} (the cluster never moves "
                "its workspaces elsewhere: start that broker again)") from exc
        with self._lock:
            kept = self._connections.get(member.name)
            if self._closed or (kept is not None and not kept.closed):
                extra, connection = connection, kept  # closed meanwhile, or another was first
            else:
                extra, self._connections[member.name] = None, connection
        if extra is not None:
            extra.close()
        if connection is None:
            raise NwsConnectException(f"the cluster's sessions are closed ({self})")
        return connection

    def connection_for(self, name: str, what: str = "workspace") -> Connection:
        """The session with the broker that holds ``name``."""
        return self.connection(self.place(name), f"{what} {name!r}")

    def each(self) -> Iterator[tuple[Member, Connection]]:
        """Every member with its session (each opened if need be, in order)."""
        for member in self.members:
            yield member, self.connection(member)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            connection.close()


class ClusterWatch:
    """Watches of every workspace of each broker of a cluster, as one: events reach the one
    callback from each broker's delivery thread."""

    def __init__(self, watches: list) -> None:
        self.watches = watches
        self.snapshot: dict = {}
        for watch in watches:
            self.snapshot.update(watch.snapshot)

    def close(self) -> None:
        for watch in self.watches:
            watch.close()

    def __enter__(self) -> ClusterWatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: Status fields that are counts: a cluster's is the sum of its brokers'.
_SUMMED = ("workspaces", "values", "waiting", "leases", "memory", "max_memory")


def cluster_status(statuses: dict[str, dict]) -> dict:
    """The brokers' STATUS records -> one for the cluster: counts summed, clients and
    subscribers listed together (each naming its ``broker``), the request counters summed,
    the shortest uptime, limits and version as the first broker's; each broker's record whole
    under ``brokers``."""
    records = list(statuses.items())
    merged = dict(records[0][1])
    for field in _SUMMED:
        merged[field] = sum(record.get(field, 0) for _, record in records)
    merged["uptime"] = min(record["uptime"] for _, record in records)
    merged["clients"] = [{**client, "broker": name} for name, record in records
                         for client in record.get("clients", ())]
    merged["subscribers"] = [{**subscriber, "broker": name} for name, record in records
                             for subscriber in record.get("subscribers", ())]
    counters: dict[str, int] = {}
    for _, record in records:
        for counter, value in record.get("counters", {}).items():
            counters[counter] = counters.get(counter, 0) + value
    merged["counters"] = counters
    merged["brokers"] = statuses
    return merged


def spread(names: Iterable[str], cluster: Sequence[Member]) -> dict[str, list[str]]:
    """Names grouped by the member that holds each: {member name: [names]}."""
    grouped: dict[str, list[str]] = {member.name: [] for member in cluster}
    for name in names:
        grouped[place(cluster, name).name].append(name)
    return grouped


