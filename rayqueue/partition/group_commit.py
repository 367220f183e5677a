"""Group commit: everything submitted while one flush runs goes out in the next.

Concurrent small writers then share one storage write instead of each paying
for their own, and a lone writer still goes out at once (no linger timer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")


class GroupCommit(Generic[Item]):
    """Feeds submitted items to ``flush`` in groups, one flush at a time.

    ``flush(items)`` must either store every item or raise; the outcome is what
    each ``submit`` returns or raises. ``weight`` and ``max_weight`` cap how much
    one flush takes (the first item always goes, whatever its weight).
    """

    def __init__(
        self,
        flush: Callable[[list[Item]], Awaitable[None]],
        weight: Callable[[Item], int] = lambda item: 1,
        max_weight: int = 1 << 62,
    ) -> None:
        self._flush = flush
        self._weight = weight
        self._max_weight = max_weight
        self._pending: list[tuple[Item, asyncio.Future[None]]] = []
        self._running: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> None:
        """Return once ``item`` has been flushed; raise what its flush raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run())
        await future

    def _take_group(self) -> list[tuple[Item, asyncio.Future[None]]]:
        total, count = 0, 0
        for item, _ in self._pending:
            total += self._weight(item)
            if count and total > self._max_weight:
                break
            count += 1
        group, self._pending = self._pending[:count], self._pending[count:]
        return group

    async def _run(self) -> None:
        while self._pending:
            group = self._take_group()
            try:
                await self._flush([item for item, _ in group])
            except BaseException as error:  # every waiter learns the outcome, even of a cancellation
                for _, future in group:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(error, Exception):
                    raise
            else:
                for _, future in group:
                    if not future.done():
                        future.set_result(None)
