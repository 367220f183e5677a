"""The Ray actor that hosts one partition, as its leader or as a replica.

A leader hosts a ``PartitionService`` (recovered from storage when it starts,
and again when Ray restarts it). A replica holds what its leader acknowledged
but has not stored yet, and becomes the leader, in place, when promoted.
Only forwarding lives here.
"""

from __future__ import annotations

import inspect
import itertools
import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import ray

from rayqueue import defaults
from rayqueue.actors.metrics import RayPartitionMetrics
from rayqueue.actors.replicator import RayReplicator
from rayqueue.config import QueueConfig
from rayqueue.errors import PartitionFenced, PartitionUnavailable
from rayqueue.message import PartitionStats
from rayqueue.partition import PartitionService
from rayqueue.replication import HeldWrites
from rayqueue.storage import ObjectStore, PartitionStore
from rayqueue.wire import Endpoint, Parked, Server

Role = Literal["leader", "replica"]

#: What handles may call over the direct channel (rayqueue.wire): the data calls only.
WIRE_METHODS = frozenset({"send", "receive", "wait_visible", "delete", "change_visibility", "stats"})
#: How long a parked reply waits to be fetched.
PARKED_FOR_S = 60.0
#: What a leader calls on its replicas over the same channel.
REPLICA_WIRE_METHODS = frozenset({"hold_segment", "hold_deletes"})


class ParkedReplies:
    """Replies too large for the socket (a receive of tens of megabytes), kept until the
    handle fetches them through Ray, whose object store moves them faster."""

    def __init__(self) -> None:
        self._replies: dict[int, tuple[Any, float]] = {}
        self._tokens = itertools.count(1)

    def park_if_bulky(self, value: Any) -> Any:
        if not isinstance(value, pa.Table) or value.nbytes < defaults.BULKY_CALL_BYTES:
            return value
        now = time.monotonic()
        self._replies = {t: kept for t, kept in self._replies.items() if kept[1] > now}  # never fetched
        token = next(self._tokens)
        self._replies[token] = (value, now + PARKED_FOR_S)
        return Parked(token)

    def take(self, token: int) -> Any | None:
        """The parked reply, or None if it expired (its messages come back after their
        visibility timeout)."""
        kept = self._replies.pop(token, None)
        return kept[0] if kept is not None else None


async def serve_wire(server: Server | None, dispatch: Any) -> tuple[Server, Endpoint]:
    """This process's direct-channel server (started on first use) and its endpoint."""
    server = server or Server(dispatch)
    return server, await server.start(ray.util.get_node_ip_address())


class PartitionActor:
    def __init__(
        self,
        config: QueueConfig,
        partition: int,
        storage: str,
        storage_options: dict[str, Any],
        role: Role,
        namespace: str,
        uid: str,
    ) -> None:
        self._config = config
        self._partition = partition
        self._store = PartitionStore(ObjectStore(storage, storage_options), config.name, partition, uid)
        self._replicator = RayReplicator(config.name, partition, namespace)
        self._held = HeldWrites()
        #: The newest leader epoch this replica has taken writes from.
        self._leader_epoch = 0
        self._service: PartitionService | None = None
        self._wire: Server | None = None
        self._parked = ParkedReplies()
        if role == "leader":
            self._lead()

    def _lead(self) -> None:
        service = PartitionService(
            self._config,
            self._partition,
            self._store,
            metrics=RayPartitionMetrics(self._config.name, self._partition),
            replicator=self._replicator if self._config.replicas else None,
        )
        service.recover(self._held)
        self._held = HeldWrites()
        self._replicator.epoch = service.epoch
        self._service = service

    @property
    def _leader(self) -> PartitionService:
        if self._service is None:
            raise PartitionUnavailable(self._config.name, self._partition, "asked a replica, not the leader")
        if self._service.fenced:  # still running, but replaced: handles must find the new leader
            raise PartitionFenced(f"{self._config.name}/{self._partition}", self._service.epoch)
        self._service.watch_leadership()
        return self._service

    # ------------------------------------------------------------------ control

    def ready(self) -> int:
        return self._service.objects_recovered if self._service else 0

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def promote(self) -> int:
        """Become the leader under a new epoch; returns the epoch."""
        if self._service is None:
            self._lead()
        return self._leader.epoch

    async def attach_replicas(self, replicas: dict[str, Any]) -> None:
        """Replicate to these replicas (by actor name) from now on; see RayReplicator."""
        if self._service is not None and self._config.replicas:
            await self._replicator.attach(replicas, self._service.unstored)

    def set_scaling(self, retiring: bool, partitions: int) -> None:
        """Scaling: whether this partition is retiring, and how many the queue has now."""
        self._leader.retiring = retiring
        self._leader.set_partition_count(partitions)

    def in_sync_replicas(self) -> list[str]:
        return self._replicator.names()

    async def wire_endpoint(self) -> Endpoint:
        """Where handles make data calls without Ray's per-call cost (see rayqueue.wire)."""
        self._wire, endpoint = await serve_wire(self._wire, self.dispatch)
        return endpoint

    async def dispatch(self, partition: str, method: str, args: tuple[Any, ...]) -> Any:
        """One data call that came over the direct channel."""
        if method not in WIRE_METHODS and method not in REPLICA_WIRE_METHODS:
            raise PartitionUnavailable(self._config.name, self._partition, f"{method!r} is not a data call")
        result = getattr(self, method)(*args)
        return self._parked.park_if_bulky(await result if inspect.isawaitable(result) else result)

    def take_parked(self, token: int) -> Any:
        """A reply that ``dispatch`` parked, through Ray."""
        reply = self._parked.take(token)
        if reply is None:
            raise PartitionUnavailable(self._config.name, self._partition, f"no parked reply {token} (expired)")
        return reply

    # ----------------------------------------------------------- as a replica

    def hold_segment(self, epoch: int, batch: pa.RecordBatch) -> None:
        self._follow(epoch)
        self._held.add_segment(batch)

    def hold_deletes(self, epoch: int, seq: int, offsets: np.ndarray) -> None:
        self._follow(epoch)
        self._held.add_deletes(seq, offsets)

    def _follow(self, epoch: int) -> None:
        """Take writes only from the newest leader: a replaced one must not be acknowledged."""
        if self._service is not None or epoch < self._leader_epoch:  # it leads now, or a newer one does
            raise PartitionFenced(f"{self._config.name}/{self._partition}", epoch)
        self._leader_epoch = epoch

    def release(self, offset_floor: int, seq_floor: int) -> None:
        self._held.release(offset_floor, seq_floor)

    # ------------------------------------------------------------ as a leader

    async def send(self, rows: pa.Table, dedup: bool) -> None:
        await self._leader.send(rows, dedup)

    async def receive(self, max_messages: int, wait_s: float, visibility_s: float | None) -> pa.Table:
        return await self._leader.receive(max_messages, wait_s, visibility_s)

    async def wait_visible(self, wait_s: float) -> bool:
        return await self._leader.wait_visible(wait_s)

    async def delete(self, offsets: np.ndarray, tokens: np.ndarray, receipts: list[str]) -> None:
        await self._leader.delete(offsets, tokens, receipts)

    async def change_visibility(self, offset: int, token: int, receipt: str, timeout_s: float) -> None:
        self._leader.change_visibility(offset, token, receipt, timeout_s)

    async def stats(self) -> PartitionStats:
        return self._leader.stats()


RemotePartition = ray.remote(PartitionActor)
