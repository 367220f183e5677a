"""What a partition reports about itself, with no Ray here.

``PartitionService`` calls a ``PartitionMetrics``; the partition actor passes
one that records through Ray's metrics API (so figures reach the Ray
dashboard and Prometheus), and tests and tools pass ``NoMetrics``.
"""

from __future__ import annotations

from typing import Protocol


class PartitionMetrics(Protocol):
    def sent(self, messages: int, body_bytes: int) -> None: ...

    def received(self, messages: int, redelivered: int) -> None: ...

    def deleted(self, messages: int) -> None: ...

    def storage_write(self, seconds: float) -> None: ...

    def state(self, visible: int, in_flight: int, stored_bytes: int) -> None: ...


class NoMetrics:
    """Reports nothing."""

    def sent(self, messages: int, body_bytes: int) -> None:
        pass

    def received(self, messages: int, redelivered: int) -> None:
        pass

    def deleted(self, messages: int) -> None:
        pass

    def storage_write(self, seconds: float) -> None:
        pass

    def state(self, visible: int, in_flight: int, stored_bytes: int) -> None:
        pass
