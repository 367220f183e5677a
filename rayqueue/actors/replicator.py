"""A leader's link to its replica actors: replicate, track the in-sync set, report losses."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from rayqueue import defaults

log = logging.getLogger(__name__)


class RayReplicator:
    """Implements ``rayqueue.replication.Replicator`` over replica actors."""

    def __init__(self, queue: str, partition: int, namespace: str) -> None:
        self._queue = queue
        self._partition = partition
        self._namespace = namespace
        self._in_sync: dict[str, Any] = {}
        self._on_leader_node = 0

    def attach(self, replicas: dict[str, Any], on_leader_node: int) -> None:
        """The coordinator's current replicas for this leader, by actor name. The caller
        has given newcomers what is not stored yet, so all of them are in sync."""
        self._in_sync = dict(replicas)
        self._on_leader_node = on_leader_node

    def names(self) -> list[str]:
        return list(self._in_sync)

    async def segment(self, batch: pa.RecordBatch) -> bool:
        return await self._to_all("hold_segment", batch)

    async def deletes(self, seq: int, offsets: np.ndarray) -> bool:
        return await self._to_all("hold_deletes", seq, offsets)

    def stored(self, offset_floor: int, seq_floor: int) -> None:
        for replica in self._in_sync.values():
            replica.release.remote(offset_floor, seq_floor)

    def in_sync(self) -> int:
        return len(self._in_sync)

    def on_leader_node(self) -> int:
        return min(self._on_leader_node, len(self._in_sync))

    async def _to_all(self, method: str, *args: Any) -> bool:
        if not self._in_sync:
            return False
        replicas = dict(self._in_sync)
        outcomes = await asyncio.gather(
            *(
                asyncio.wait_for(_await(getattr(replica, method).remote(*args)), defaults.REPLICA_TIMEOUT_S)
                for replica in replicas.values()
            ),
            return_exceptions=True,
        )
        failed = [name for name, outcome in zip(replicas, outcomes) if isinstance(outcome, BaseException)]
        if failed:
            # Out of sync for good: the coordinator replaces them.
            for name in failed:
                self._in_sync.pop(name, None)
            log.warning("%s partition %d: replicas %s left the in-sync set", self._queue, self._partition, failed)
            self._tell_coordinator()
        return bool(self._in_sync)

    def _tell_coordinator(self) -> None:
        try:
            coordinator = ray.get_actor(defaults.COORDINATOR_NAME, namespace=self._namespace)
            coordinator.replica_lost.remote(self._queue, self._partition)
        except Exception:  # the coordinator's health checks will find it anyway
            log.exception("could not tell the coordinator about a lost replica")


async def _await(ref: ray.ObjectRef) -> Any:
    return await ref
