"""When a write may be acknowledged: one strategy per durability level, chosen once.

Both are handed the write's storage future from the ``OrderedWriter`` (already
queued) and return once the write may be acknowledged, or raise.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from rayqueue.replication import ReplicaSet


class Durability(Protocol):
    #: Whether writes can be acknowledged before they are stored (then replicas must
    #: be given what is unstored when they join).
    acknowledges_unstored: bool

    async def segment(self, batch: pa.RecordBatch, stored: asyncio.Future[Any]) -> None: ...

    async def deletes(self, seq: int, offsets: np.ndarray, stored: asyncio.Future[Any]) -> None: ...

    def settled(self, offset_floor: int, seq_floor: int) -> None:
        """Everything below these floors is stored and in the log."""


class StorageFirst:
    """``durability="storage"``: a write is acknowledged once it is on storage.
    Replicas are standbys: they hold nothing, so a promotion reads storage only."""

    acknowledges_unstored = False

    async def segment(self, batch: pa.RecordBatch, stored: asyncio.Future[Any]) -> None:
        await stored

    async def deletes(self, seq: int, offsets: np.ndarray, stored: asyncio.Future[Any]) -> None:
        await stored

    def settled(self, offset_floor: int, seq_floor: int) -> None:
        pass


class ReplicasFirst:
    """``durability="replicas"``: a write is acknowledged once every replica of the
    in-sync set holds it (or, failing that, once it is stored); the ordered writer
    stores it in the background, and replicas let go of what is settled."""

    acknowledges_unstored = True

    def __init__(self, replicas: ReplicaSet) -> None:
        self._replicas = replicas

    async def segment(self, batch: pa.RecordBatch, stored: asyncio.Future[Any]) -> None:
        if not await self._replicas.segment(batch):
            await stored

    async def deletes(self, seq: int, offsets: np.ndarray, stored: asyncio.Future[Any]) -> None:
        if not await self._replicas.deletes(seq, offsets):
            await stored

    def settled(self, offset_floor: int, seq_floor: int) -> None:
        self._replicas.release(offset_floor, seq_floor)
