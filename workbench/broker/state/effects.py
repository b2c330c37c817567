"""What one call into the broker state decided, as values (``Effects``), and the ``Outbox`` that
every part of the state adds them to while the call runs.

The state reads no clock, touches no socket and opens no file: where a decision needs the world,
it says so in its effects and the server does it. A reply that carries a shared-memory value to
a client on another machine holds a ``FileFrames`` where the file's frames go, and the server
reads the file; a compare-and-swap against a shared-memory value leaves a ``Comparison`` that
the server answers through ``BrokerState.compared``.

Every entry point returns the same ``Effects`` object, emptied and filled anew (a new object and
new lists each call would cost more than a request's change records): what it holds is valid
until the next call into the state. ``changes`` is a new list each time it is read, for whoever
keeps the records longer (a log).
"""

from __future__ import annotations

import json
from typing import NamedTuple

from ...protocol import reply_head
from .changes import Change


class Release(NamedTuple):
    """A shared-memory file that no value needs any more."""

    reference: bytes  # ``name:size,...``
    found: bool  # a finder was sent it and may map it later: remove it after a grace period


class SessionFiles(NamedTuple):
    """A session ended: the shared-memory files its clients made whose names start with
    ``prefix`` go, except those values still hold (``held``, by name). A client killed between
    writing a file and sending its store would leave one nobody owns."""

    prefix: str
    held: frozenset


class FileFrames(NamedTuple):
    """In a message's frames: the frames of this shared-memory file, for a client that cannot
    map it. The server reads the file and puts its frames in this one's place."""

    reference: bytes


class Comparison(NamedTuple):
    """A compare-and-swap waits on whether the file ``reference`` holds exactly ``frames`` (the
    comparand's extra frames)."""

    reference: bytes
    frames: list


class Effects:
    """What one call decided. The server applies it in this order: read the files of the
    messages ``reads`` points at, send ``messages``, log ``notices``, remove ``released`` files
    and the unheld files of ended sessions (``swept``), then settle a ``comparison`` if there is
    one. ``changes`` are the state changes the call
    made (see ``changes``), for whoever records them."""

    __slots__ = ("messages", "log", "notices", "released", "swept", "reads", "comparison",
                 "rare")

    def __init__(self) -> None:
        #: (routing identity, frames) of every reply and delivery, in the order they go out
        self.messages: list[tuple[bytes, list]] = []
        #: The changes as (record class, *fields), or (a function that builds the record,
        #: *arguments): a tuple costs a fraction of a record, and the hot path makes one or two
        #: a request; ``changes`` builds the records.
        self.log: list[tuple] = []
        self.clear_rare()

    def clear_rare(self) -> None:
        """Empty the rarer effects. Most calls make none, so ``rare`` says whether to."""
        self.notices: list[str] | tuple = ()  # lines for the broker's log
        self.released: list[Release] | tuple = ()
        self.swept: list[SessionFiles] | tuple = ()
        self.reads: list[int] | tuple = ()  # indexes of messages that hold FileFrames
        self.comparison: Comparison | None = None
        self.rare = False  # whether the call made any of them

    @property
    def changes(self) -> list[Change]:
        """The state changes of the call as records, in the order they happened."""
        return [entry[0](*entry[1:]) for entry in self.log]

    def __repr__(self) -> str:
        return (f"<Effects {len(self.messages)} messages, {len(self.log)} changes, "
                f"{len(self.notices)} notices, {len(self.released)} released>")


class Outbox:
    """The effects of the call in progress, shared by every part of the state. ``messages`` and
    ``log`` are its lists, which the hot paths append to directly: a message is (routing
    identity, frames), a change is (record class or builder, *fields or arguments)."""

    __slots__ = ("effects", "messages", "log", "counters")

    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters
        self.effects = effects = Effects()
        # The same two lists for good: the hottest paths keep them at hand (HandOffs, Memory).
        self.messages = effects.messages
        self.log = effects.log

    def begin(self) -> Effects:
        """Start a call: the effects are emptied, and what the state decides from now on goes
        into them."""
        self.messages.clear()
        self.log.clear()
        effects = self.effects
        if effects.rare:
            effects.clear_rare()
        return effects

    def send(self, peer: bytes, frames: list) -> None:
        self.messages.append((peer, frames))

    def send_reading(self, peer: bytes, frames: list) -> None:
        """Send a message some of whose frames are ``FileFrames`` for the server to read."""
        effects = self.effects
        if not effects.reads:
            effects.reads = []
            effects.rare = True
        effects.reads.append(len(self.messages))
        self.messages.append((peer, frames))

    def reply(self, peer: bytes, request_id: int, status: int = 0, body: bytes = b"") -> None:
        self.messages.append((peer, [reply_head(status, request_id, 0, body)]))

    def error(self, peer: bytes, request_id: int, status: int, message: str) -> None:
        self.counters["errors"] += 1
        self.messages.append((peer, [reply_head(status, request_id, 0, message.encode())]))

    def json(self, peer: bytes, request_id: int, obj) -> None:
        self.reply(peer, request_id, 0, json.dumps(obj).encode())

    def notice(self, line: str) -> None:
        effects = self.effects
        if not effects.notices:
            effects.notices = []
            effects.rare = True
        effects.notices.append(line)

    def release(self, reference: bytes, found: bool) -> None:
        effects = self.effects
        if not effects.released:
            effects.released = []
            effects.rare = True
        effects.released.append(Release(reference, found))

    def sweep(self, files: SessionFiles) -> None:
        effects = self.effects
        if not effects.swept:
            effects.swept = []
            effects.rare = True
        effects.swept.append(files)

    def compare(self, reference: bytes, frames: list) -> None:
        self.effects.comparison = Comparison(reference, frames)
        self.effects.rare = True
