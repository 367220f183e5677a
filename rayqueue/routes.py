"""What the coordinator tells a handle: how to reach a queue's partitions.

A type of its own, so the client side never imports the coordinator's logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rayqueue.config import QueueConfig


@dataclass(frozen=True)
class Route:
    """How a handle reaches a queue: its settings and one leader actor per partition."""

    config: QueueConfig
    uid: str
    partitions: tuple[Any, ...]
    #: Partitions being retired: receive from them, send elsewhere.
    retiring: frozenset[int] = frozenset()

    def sendable(self) -> list[int]:
        return [p for p in range(len(self.partitions)) if p not in self.retiring]
