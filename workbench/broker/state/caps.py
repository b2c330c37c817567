"""Caps on what one client session may keep open at the broker: calls waiting, pub/sub patterns
and workspace watches (``config`` says why and how many). A request that would go beyond one is
refused with ``TOO_MANY`` before it changes anything, and the refusal is counted."""

from __future__ import annotations

from ...protocol import Status
from .requests import OpError
from .sessions import Session


class SessionCaps:
    __slots__ = ("max_waiting", "max_subscriptions", "max_watches", "counters")

    def __init__(self, max_waiting: int, max_subscriptions: int, max_watches: int,
                 counters: dict[str, int]) -> None:
        self.max_waiting = max_waiting
        self.max_subscriptions = max_subscriptions
        self.max_watches = max_watches
        self.counters = counters

    def wait(self, session: Session) -> None:
        """Before a call of ``session`` blocks."""
        if len(session.waiting) >= self.max_waiting:
            self._refuse("over_max_waiting", "calls waiting", "--max-waiting",
                         self.max_waiting, "let some return or cancel them")

    def subscribe(self, session: Session) -> None:
        """Before ``session`` follows a pattern it does not follow yet."""
        if session.subscriptions >= self.max_subscriptions:
            self._refuse("over_max_subscriptions", "subscriptions", "--max-subscriptions",
                         self.max_subscriptions, "unsubscribe patterns it no longer needs")

    def watch(self, session: Session) -> None:
        """Before ``session`` watches a workspace it does not watch yet."""
        if session.watches >= self.max_watches:
            self._refuse("over_max_watches", "watches", "--max-watches", self.max_watches,
                         'close watches it no longer needs, or watch "*"')

    def _refuse(self, counter: str, what: str, flag: str, limit: int, remedy: str) -> None:
        self.counters[counter] += 1
        raise OpError(Status.TOO_MANY,
                      f"too many {what}: this session has {limit}, the broker's limit "
                      f"({flag} {limit}); {remedy}, or start the broker with a larger {flag}")
