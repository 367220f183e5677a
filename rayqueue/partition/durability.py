"""When a write may be acknowledged: one strategy per durability level, chosen once.

Both are handed the write's storage future from the ``OrderedWriter`` (already
queued) and return once the write may be acknowledged, or raise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from rayqueue import defaults
from rayqueue.partition.replication import ReplicaSet


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
    in-sync set holds it (one of them on another node than the leader's), and the
    ordered writer stores it in the background; replicas let go of what is settled.
    It is acknowledged once stored instead when the replicas cannot hold it (or none
    of them would outlive the leader's node), or when more than ``max_unstored`` writes wait to be
    stored (``unstored`` counts them): storage that falls behind slows producers down,
    rather than growing what only the replicas hold without bound."""

    acknowledges_unstored = True

    def __init__(
        self, replicas: ReplicaSet, unstored: Callable[[], int], max_unstored: int = defaults.MAX_UNSTORED_WRITES
    ) -> None:
        self._replicas = replicas
        self._unstored = unstored
        self._max_unstored = max_unstored

    async def segment(self, batch: pa.RecordBatch, stored: asyncio.Future[Any]) -> None:
        if not await self._replicas.segment(batch) or self._unstored() > self._max_unstored:
            await stored

    async def deletes(self, seq: int, offsets: np.ndarray, stored: asyncio.Future[Any]) -> None:
        if not await self._replicas.deletes(seq, offsets) or self._unstored() > self._max_unstored:
            await stored

    def settled(self, offset_floor: int, seq_floor: int) -> None:
        self._replicas.release(offset_floor, seq_floor)
