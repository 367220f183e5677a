"""A leader's link to its replica actors and to the coordinator, over Ray and the
direct channel: the transport under ``rayqueue.partition.replication.ReplicaSet``."""

from __future__ import annotations

import asyncio
from typing import Any

import pyarrow as pa
import ray

from rayqueue import defaults
from rayqueue.transport.direct import TRANSPORT, is_bulky
from rayqueue.transport.drivers import call_coordinator_async


class RayReplicaLink:
    """Implements ``rayqueue.partition.replication.ReplicaLink``.

    ``leader`` is the name of the leader actor this link speaks for: the coordinator
    takes reports about a partition's in-sync set only from its current leader.
    """

    def __init__(self, queue: str, partition: int, namespace: str, leader: str) -> None:
        self._queue = queue
        self._partition = partition
        self._namespace = namespace
        self._leader = leader
        self._handles: dict[str, Any] = {}
        self._nodes: dict[str, str] = {}
        self._node = ray.get_runtime_context().get_node_id()

    async def attach(self, replicas: dict[str, Any]) -> None:
        """The actor handles of the replicas, by name (from the coordinator), and their nodes."""
        self._handles = dict(replicas)
        unknown = [name for name in replicas if name not in self._nodes]
        nodes = await asyncio.gather(*(replicas[name].node_id.remote() for name in unknown), return_exceptions=True)
        self._nodes.update({name: node for name, node in zip(unknown, nodes) if isinstance(node, str)})

    async def hold(self, replica: str, method: str, args: tuple[Any, ...]) -> None:
        handle = self._handles[replica]
        nbytes = sum(arg.nbytes for arg in args if isinstance(arg, pa.RecordBatch))
        await TRANSPORT.call(handle, method, args, bulky=is_bulky(nbytes))

    def release(self, replica: str, epoch: int, offset_floor: int, seq_floor: int) -> None:
        handle = self._handles.get(replica)
        if handle is not None:
            handle.release.remote(epoch, offset_floor, seq_floor)

    async def report_in_sync(self, replica: str) -> bool:
        return bool(await self._coordinator("replica_in_sync", replica))

    async def report_lost(self, replicas: list[str]) -> bool:
        return bool(await self._coordinator("replica_lost", replicas))

    def apart(self, replica: str) -> bool:
        return self._nodes.get(replica, self._node) != self._node  # a node not learned yet counts as the leader's

    async def _coordinator(self, method: str, arg: Any) -> Any:
        coordinator = ray.get_actor(defaults.COORDINATOR_NAME, namespace=self._namespace)
        return await call_coordinator_async(coordinator, method, self._queue, self._partition, self._leader, arg)
