"""The Ray actor that hosts one partition. Only forwarding lives here."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import ray

from rayqueue.actors.metrics import RayPartitionMetrics
from rayqueue.config import QueueConfig
from rayqueue.message import PartitionStats
from rayqueue.partition import PartitionService
from rayqueue.storage import ObjectStore, PartitionStore


class PartitionActor:
    """Recovers its partition from storage when it starts, and again when Ray restarts it."""

    def __init__(
        self, config: QueueConfig, partition: int, storage: str, storage_options: dict[str, Any]
    ) -> None:
        store = PartitionStore(ObjectStore(storage, storage_options), config.name, partition)
        self._service = PartitionService(config, partition, store, metrics=RayPartitionMetrics(config.name, partition))
        self._service.recover()

    def ready(self) -> int:
        return self._service.objects_recovered

    async def send(self, rows: pa.Table, dedup: bool) -> None:
        await self._service.send(rows, dedup)

    async def receive(self, max_messages: int, wait_s: float, visibility_s: float | None) -> pa.Table:
        return await self._service.receive(max_messages, wait_s, visibility_s)

    async def wait_visible(self, wait_s: float) -> bool:
        return await self._service.wait_visible(wait_s)

    async def delete(self, offsets: np.ndarray, tokens: np.ndarray, receipts: list[str]) -> None:
        await self._service.delete(offsets, tokens, receipts)

    async def change_visibility(self, offset: int, token: int, receipt: str, timeout_s: float) -> None:
        self._service.change_visibility(offset, token, receipt, timeout_s)

    async def stats(self) -> PartitionStats:
        return self._service.stats()


def partition_actor_name(queue: str, uid: str, partition: int) -> str:
    return f"rayqueue.{queue}.{uid}.{partition}"


RemotePartition = ray.remote(PartitionActor)
