"""berryMQ identifiers: how ``name[@namespace][:action]`` is parsed and how two of them match.

Shared by the broker (which routes messages between processes) and ``workbench.mq`` (which calls
the followers of its own process), so that both agree exactly.

Parsing splits greedily on the last ``:`` and then on the last ``@``; a missing action means
``*``. Only a part that is exactly ``*`` is a wildcard (``"test*"`` is a literal name), and a
namespace is never a wildcard. Matching is symmetric: a wildcard on the follower's side or on
the sender's side matches anything, so ``twitter("x")`` reaches every ``x:<action>`` follower
and ``twitter("*:test")`` every ``<name>:test`` follower, within one namespace.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

WILDCARD = "*"


class Identifier(NamedTuple):
    """A parsed identifier; ``None`` stands for a wildcard part."""

    name: str | None
    action: str | None
    namespace: str | None = None

    def __str__(self) -> str:
        name = WILDCARD if self.name is None else self.name
        action = WILDCARD if self.action is None else self.action
        if self.namespace is None:
            return f"{name}:{action}"
        return f"{name}@{self.namespace}:{action}"


@lru_cache(maxsize=4096)
def parse(identifier: str) -> Identifier:
    """``"name@ns:action"`` -> Identifier. Raises ValueError for what cannot be an identifier."""
    if not isinstance(identifier, str):
        raise TypeError(f"an identifier is a str such as 'name:action', not "
                        f"{type(identifier).__name__}")
    if not identifier or not identifier.isprintable() or "\0" in identifier:
        raise ValueError(f"identifier {identifier!r} must be non-empty printable text, "
                         "such as 'name:action'")
    rest, colon, action = identifier.rpartition(":")
    if not colon:
        rest, action = identifier, WILDCARD
    name, at, namespace = rest.rpartition("@")
    if not at:
        name, namespace = rest, None
    elif not namespace or namespace == WILDCARD:
        raise ValueError(f"identifier {identifier!r}: a namespace after '@' must be a name "
                         "(namespaces are never wildcards)")
    if not name:
        raise ValueError(f"identifier {identifier!r} has an empty name; use '*' for any name")
    if not action:
        raise ValueError(f"identifier {identifier!r} has an empty action; use '*' for any action")
    return Identifier(None if name == WILDCARD else name,
                      None if action == WILDCARD else action, namespace)


def matches(follower: Identifier, sender: Identifier) -> bool:
    """Whether a message sent as ``sender`` reaches a follower of ``follower``."""
    return (follower.namespace == sender.namespace
            and (follower.name is None or sender.name is None or follower.name == sender.name)
            and (follower.action is None or sender.action is None
                 or follower.action == sender.action))
