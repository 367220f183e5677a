"""Delays between retries: the first one, doubling each time, up to a cap.

The one backoff rule for every retry loop (partition calls, coordinator calls,
storage calls, reports to the coordinator, writes already acknowledged).
"""

from __future__ import annotations


class Backoff:
    """The delays of one retry loop: ``first``, then doubling, at most ``cap``."""

    def __init__(self, first: float, cap: float) -> None:
        self._next = first
        self._cap = cap

    def peek(self) -> float:
        """The delay ``next`` will give, without taking it (to check a deadline first)."""
        return self._next

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._cap)
        return delay
