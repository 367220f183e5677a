"""A leader's link to its replica actors: replicate, track the in-sync set, report losses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from rayqueue import defaults
from rayqueue.actors import channel
from rayqueue.errors import PartitionFenced
from rayqueue.replication import HeldWrites

log = logging.getLogger(__name__)


class RayReplicator:
    """Implements ``rayqueue.replication.Replicator`` over replica actors.

    A replica joins in two steps: from the moment it joins it receives every new
    write, then it is given what was acknowledged before and is not stored yet;
    only then does it count as in sync. So an in-sync replica holds every
    acknowledged write that is not on storage.

    Every write carries the leader's ``epoch``. A replica refuses writes from an
    epoch older than one it has seen (or once it leads itself): a leader that was
    replaced but still runs, and that handles still reach, then learns it is
    fenced before it acknowledges anything.
    """

    def __init__(self, queue: str, partition: int, namespace: str) -> None:
        self._queue = queue
        self._partition = partition
        self._namespace = namespace
        self._in_sync: dict[str, Any] = {}
        self._joining: dict[str, Any] = {}
        self._nodes: dict[str, str] = {}
        self._node = ray.get_runtime_context().get_node_id()
        #: The leader's epoch, set once it has taken over.
        self.epoch = 0

    async def attach(self, replicas: dict[str, Any], unstored: Callable[[], HeldWrites]) -> None:
        """Replicate to exactly these replicas (by actor name) from now on."""
        for group in (self._in_sync, self._joining):
            for name in [name for name in group if name not in replicas]:
                del group[name]
        newcomers = {n: r for n, r in replicas.items() if n not in self._in_sync and n not in self._joining}
        self._joining.update(newcomers)
        held = unstored()  # taken after joining: what comes later reaches them as it happens
        outcomes = await asyncio.gather(
            *(self._catch_up(name, replica, held) for name, replica in newcomers.items()), return_exceptions=True
        )
        failed = {name: outcome for name, outcome in zip(newcomers, outcomes) if isinstance(outcome, BaseException)}
        for name, replica in newcomers.items():
            if self._joining.pop(name, None) is not None and name not in failed:
                self._in_sync[name] = replica
        if failed:
            self._lost(failed)

    async def _catch_up(self, name: str, replica: Any, held: HeldWrites) -> None:
        calls = [
            channel.call_async(replica, "hold_segment", (self.epoch, batch), bulky=_bulky(batch))
            for batch in held.segments.values()
        ]
        calls += [channel.call_async(replica, "hold_deletes", (self.epoch, seq, offsets)) for seq, offsets in held.deletes.items()]
        self._nodes[name] = await replica.node_id.remote()
        await asyncio.gather(*calls)

    def names(self) -> list[str]:
        return list(self._in_sync)

    async def segment(self, batch: pa.RecordBatch) -> bool:
        return await self._to_all("hold_segment", batch, bulky=_bulky(batch))

    async def deletes(self, seq: int, offsets: np.ndarray) -> bool:
        return await self._to_all("hold_deletes", seq, offsets, bulky=False)

    def stored(self, offset_floor: int, seq_floor: int) -> None:
        for replica in (*self._in_sync.values(), *self._joining.values()):
            replica.release.remote(offset_floor, seq_floor)

    def in_sync(self) -> int:
        return len(self._in_sync)

    def on_leader_node(self) -> int:
        return sum(self._nodes.get(name) == self._node for name in self._in_sync)

    async def _to_all(self, method: str, *args: Any, bulky: bool) -> bool:
        """Send to every replica; True if every in-sync one took it (and there is one)."""
        replicas = {**self._joining, **self._in_sync}
        if not replicas:
            return False
        outcomes = await asyncio.gather(
            *(
                asyncio.wait_for(
                    channel.call_async(replica, method, (self.epoch, *args), bulky=bulky), defaults.REPLICA_TIMEOUT_S
                )
                for replica in replicas.values()
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, PartitionFenced):
                raise PartitionFenced(f"{self._queue}/{self._partition}", self.epoch)
        failed = {name: outcome for name, outcome in zip(replicas, outcomes) if isinstance(outcome, BaseException)}
        if failed:
            self._lost(failed)
        return bool(self._in_sync)

    def _lost(self, failed: dict[str, BaseException]) -> None:
        """Out of sync for good: the coordinator replaces them."""
        for name in failed:
            self._in_sync.pop(name, None)
            self._joining.pop(name, None)
        causes = {name: f"{type(error).__name__}: {error}"[:200] for name, error in failed.items()}
        log.warning("%s partition %d: replicas left the in-sync set: %s", self._queue, self._partition, causes)
        try:
            coordinator = ray.get_actor(defaults.COORDINATOR_NAME, namespace=self._namespace)
            coordinator.replica_lost.remote(self._queue, self._partition, list(failed))
        except Exception:  # the coordinator's health check finds dead replicas anyway
            log.exception("could not tell the coordinator about lost replicas")


def _bulky(batch: pa.RecordBatch) -> bool:
    return batch.nbytes >= defaults.BULKY_CALL_BYTES
