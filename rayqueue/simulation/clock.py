"""An asyncio event loop on virtual time: it never sleeps, it jumps to the next timer.

Ready callbacks run in FIFO order as in any asyncio loop, so a program whose only
sources of choice are the loop and a seeded random generator runs the same way
every time.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from typing import Any


class Stuck(RuntimeError):
    """Nothing is ready and no timer is set: the simulated world can never move again."""


class _VirtualSelector(selectors.BaseSelector):
    """Waiting for I/O means letting virtual time pass: nothing ever becomes readable."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, fileobj if isinstance(fileobj, int) else fileobj.fileno(), events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Stuck("no task is ready and no timer is set")
        self._clock.now += max(timeout, 0.0)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now


def virtual_loop(clock: VirtualClock) -> asyncio.AbstractEventLoop:
    """A new event loop whose ``time()`` is ``clock`` (and which advances it)."""
    loop = asyncio.SelectorEventLoop(_VirtualSelector(clock))
    loop.time = clock.time  # type: ignore[method-assign]
    return loop
