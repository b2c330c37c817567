"""``IntervalTimer``: berryMQ's timer adapter, which twitters ``<id_name>:tick`` every
``interval`` seconds, without arguments, until stopped. (berryMQ's crashed on construction,
naming its thread target wrongly.)"""

from __future__ import annotations

from ...topics import parse
from ..registry import registry
from ._polling import Polling


class IntervalTimer(Polling):
    def __init__(self, id_name: str, interval: float) -> None:
        super().__init__(interval, f"workbench-mq-timer-{id_name}")
        self.id_name = id_name
        self._tick = parse(f"{id_name}:tick")
        self.start()

    def poll(self) -> None:
        registry.send(self._tick, (), {})
