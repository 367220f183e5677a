"""The Ray actor that hosts one partition, as its leader or as a replica.

A leader hosts a ``PartitionService`` (recovered from storage when it starts,
and again when Ray restarts it). A replica holds what its leader acknowledged
but has not stored yet, and becomes the leader, in place, when promoted.
Only forwarding lives here.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import ray

from rayqueue import defaults
from rayqueue.actors.ray_metrics import RayPartitionMetrics
from rayqueue.actors.ray_replicator import RayReplicaLink
from rayqueue.config import QueueConfig
from rayqueue.errors import PartitionFenced, PartitionUnavailable, TlsUnavailable, UnknownCall
from rayqueue.message import PartitionStats
from rayqueue.partition.replication import ReplicaSet, ReplicaState
from rayqueue.partition.service import PartitionService
from rayqueue.storage import ObjectStore, PartitionStore
from rayqueue.transport.wire import Endpoint, Parked, Server

log = logging.getLogger(__name__)

Role = Literal["leader", "replica"]

#: What handles may call over the direct channel (rayqueue.transport.wire): the data calls only.
WIRE_METHODS = frozenset({"send", "receive", "wait_visible", "delete", "change_visibility", "stats"})
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
        self._replies[token] = (value, now + defaults.PARKED_FOR_S)
        return Parked(token)

    def take(self, token: int) -> Any | None:
        """The parked reply, or None if it expired (its messages come back after their
        visibility timeout)."""
        kept = self._replies.pop(token, None)
        return kept[0] if kept is not None else None


async def serve_wire(server: Server | None, dispatch: Any) -> tuple[Server, Endpoint | None]:
    """This process's direct-channel server (started on first use) and its endpoint, or
    no endpoint if Ray uses TLS and the channel cannot: then handles call through Ray."""
    server = server or Server(dispatch)
    try:
        return server, await server.start(ray.util.get_node_ip_address())
    except TlsUnavailable as error:
        log.warning("no direct channel, calls go through Ray: %s", error)
        return server, None


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
        name: str | None = None,
    ) -> None:
        self._config = config
        self._partition = partition
        self._name = name or ray.get_runtime_context().get_actor_name() or f"{config.name}/{partition}"
        self._store = PartitionStore(ObjectStore(storage, storage_options), config.name, partition, uid)
        self._link = RayReplicaLink(config.name, partition, namespace, self._name)
        self._replica = ReplicaState(self._name)
        self._service: PartitionService | None = None
        self._wire: Server | None = None
        self._parked = ParkedReplies()
        #: How this partition stops once it fenced itself (its host replaces this for a hosted one).
        self.stop_when_fenced: Callable[[], None] = _exit_process
        if role == "leader":
            self._lead()

    def _lead(self) -> None:
        replicas = ReplicaSet(self._link, acknowledging=self._config.durability == "replicas")
        service = PartitionService(
            self._config,
            self._partition,
            self._store,
            metrics=RayPartitionMetrics(self._config.name, self._partition),
            replicas=replicas if self._config.replicas else None,
        )
        held = self._replica.promote()
        try:
            service.recover(held)
        except BaseException:
            self._replica.stay(held)  # a promotion that failed leaves a replica holding what it held
            raise
        service.on_fenced = self._fenced
        self._replicas = replicas
        self._service = service

    def _fenced(self) -> None:
        # Replaced, or unable to store what it acknowledged: stop, so that Ray and the
        # coordinator put a leader in its place (a replica, or a restart from storage).
        log.warning("%s: fenced; stopping in %.1f s", self._name, defaults.EXIT_AFTER_FENCE_S)
        try:
            asyncio.get_running_loop().call_later(defaults.EXIT_AFTER_FENCE_S, self.stop_when_fenced)
        except RuntimeError:  # not on the event loop (a synchronous call): stop now
            self.stop_when_fenced()

    @property
    def _leader(self) -> PartitionService:
        if self._service is None:
            raise PartitionUnavailable(self._config.name, self._partition, "asked a replica, not the leader")
        if self._service.fenced:  # still running, but replaced: handles must find the new leader
            raise PartitionFenced(f"{self._config.name}/{self._partition}", self._service.epoch)
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
        """Replicate to these replicas (by actor name) from now on; see ReplicaSet."""
        if self._service is not None and self._config.replicas:
            await self._link.attach(replicas)
            await self._replicas.attach(list(replicas), self._service.unstored)

    def fence(self, epoch: int) -> None:
        """The coordinator promoted a leader of ``epoch``: refuse every older leader's writes."""
        self._replica.fence(epoch)

    def set_scaling(self, retiring: bool, partitions: int) -> None:
        """Scaling: whether this partition is retiring, and how many the queue has now."""
        self._leader.retiring = retiring
        self._leader.set_partition_count(partitions)

    def in_sync_replicas(self) -> list[str]:
        return self._replicas.names() if self._service is not None else []

    async def wire_endpoint(self) -> Endpoint | None:
        """Where handles make data calls without Ray's per-call cost (see rayqueue.transport.wire);
        None: this actor serves no channel, call it through Ray."""
        self._wire, endpoint = await serve_wire(self._wire, self.dispatch)
        return endpoint

    async def dispatch(self, partition: str, method: str, args: tuple[Any, ...]) -> Any:
        """One data call that came over the direct channel."""
        if method not in WIRE_METHODS and method not in REPLICA_WIRE_METHODS:
            raise UnknownCall(method)
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
        self._replica.hold_segment(epoch, batch)

    def hold_deletes(self, epoch: int, seq: int, offsets: np.ndarray) -> None:
        self._replica.hold_deletes(epoch, seq, offsets)

    def release(self, epoch: int, offset_floor: int, seq_floor: int) -> None:
        self._replica.release(epoch, offset_floor, seq_floor)

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
        await self._leader.change_visibility(offset, token, receipt, timeout_s)

    async def stats(self) -> PartitionStats:
        return self._leader.stats()


def _exit_process() -> None:
    os._exit(1)  # a crash to Ray: it restarts a leader without replicas, or reports it dead


RemotePartition = ray.remote(PartitionActor)
