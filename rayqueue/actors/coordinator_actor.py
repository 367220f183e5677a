"""The coordinator actor, and the launcher that starts, probes and promotes partition actors."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayqueue import defaults
from rayqueue.actors.host import RemoteHost
from rayqueue.actors.hosted import HostedPartition
from rayqueue.actors.partition_actor import RemotePartition, Role
from rayqueue.config import QueueConfig
from rayqueue.control.coordinator import (
    SHARED_PREFIX,
    Coordinator,
    Placement,
    QueueRecord,
    partition_of,
)
from rayqueue.errors import PartitionUnavailable, RayQueueError
from rayqueue.message import PartitionStats
from rayqueue.routes import Route
from rayqueue.storage import ObjectStore

log = logging.getLogger(__name__)


class RayLauncher:
    """Partition actors are detached and named, so they outlive a coordinator restart
    and a restarted coordinator finds them again by name.

    Without replicas, Ray restarts a dead leader in place (it recovers from storage).
    With replicas, a dead leader stays dead and the coordinator promotes a replica.
    """

    def __init__(self, namespace: str, storage: str, storage_options: dict[str, Any]) -> None:
        self._namespace = namespace
        self._storage = storage
        self._storage_options = storage_options
        self._nodes: dict[str, str] = {}

    def start(self, record: QueueRecord, wait: bool = False, create: frozenset[int] = frozenset()) -> list[Any]:
        """Find the leaders (creating only those of partitions in ``create``) and wait
        until they serve; start (or find) the replicas and hand them to their leaders.
        With ``wait``, wait (bounded) until the leaders have caught them up.

        Raises PartitionUnavailable naming the first partition whose leader is gone
        (and not in ``create``) or does not start. A replica in its placement's
        ``in_sync`` is never created: if its name is free it is dead, and the next
        health check replaces it."""
        queue = record.config.name
        leaders = [
            self._leader(record, partition, placement, partition in create)
            for partition, placement in enumerate(record.placements)
        ]
        deadline = time.monotonic() + defaults.START_TIMEOUT_S
        for partition, ref in enumerate([leader.ready.remote() for leader in leaders]):
            try:
                ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except (RayActorError, RayTaskError, GetTimeoutError) as error:
                raise PartitionUnavailable(queue, partition, f"leader did not start: {_describe(error)}") from None
        attaching = []
        for partition, (leader, placement) in enumerate(zip(leaders, record.placements)):
            replicas = self._replicas(record, partition, placement, self._node_of(placement.leader, leader))
            attaching.append(leader.attach_replicas.remote(replicas))
        if wait:
            self._await_attached(queue, attaching)
        return leaders

    def _leader(self, record: QueueRecord, partition: int, placement: Placement, create: bool) -> Any:
        if create:
            return self._actor(record, partition, placement.leader, "leader")
        leader = self._find(placement.leader)
        if leader is None:  # died since the coordinator's probe: fail over, never re-create (F8)
            cause = f"leader {placement.leader} is gone; it is failed over, not started again from storage"
            raise PartitionUnavailable(record.config.name, partition, cause)
        return leader

    def _replicas(self, record: QueueRecord, partition: int, placement: Placement, leader_node: str) -> dict[str, Any]:
        used = {leader_node}
        replicas = {}
        for name in placement.replicas:
            replica = self._find(name)
            if replica is None and name in placement.in_sync:
                log.warning("in-sync replica %s is gone; the health check replaces it", name)
                continue
            if replica is None:
                node = _pick_node(used)
                replica = self._actor(record, partition, name, "replica", node)
                self._nodes[name] = node or ""
            used.add(self._node_of(name, replica))
            replicas[name] = replica
        return replicas

    def _await_attached(self, queue: str, attaching: list[Any]) -> None:
        """Wait, bounded, for leaders to catch their replicas up. A leader reports each
        caught-up replica to the coordinator without waiting for its answer (the
        coordinator is busy here), so this never waits on the coordinator; if it is
        slow, the replicas join in the background and nothing is promised about them."""
        done, slow = ray.wait(attaching, num_returns=len(attaching), timeout=defaults.ATTACH_TIMEOUT_S)
        if slow:
            log.warning("queue %s: %d leaders still catching replicas up; going on", queue, len(slow))
        for ref in done:
            try:
                ray.get(ref)
            except (RayActorError, RayTaskError) as error:  # a failing leader: failover deals with it
                log.warning("queue %s: a leader could not attach its replicas: %s", queue, _describe(error))

    def _find(self, name: str) -> Any | None:
        """The live actor (or hosted partition) of this name, or None."""
        handle = self._handle(name)
        if isinstance(handle, HostedPartition):
            try:
                hosted = ray.get(handle.host.has.remote(name), timeout=defaults.PROBE_TIMEOUT_S)
            except (RayActorError, GetTimeoutError):
                hosted = False
            return handle if hosted else None
        return handle

    def _handle(self, name: str) -> Any | None:
        """Like ``_find``, without asking a host whether it still holds the partition:
        for calls that learn it anyway (a call to a partition no longer hosted fails)."""
        if name.startswith(SHARED_PREFIX):
            host = self._get(_host_name(name))
            return HostedPartition(host, name) if host is not None else None
        return self._get(name)

    def _get(self, name: str) -> Any | None:
        try:
            return ray.get_actor(name, namespace=self._namespace)
        except ValueError:
            return None

    def _node_of(self, name: str, actor: Any) -> str:
        """The node an actor runs on (remembered: actors do not move while they live)."""
        if name not in self._nodes:
            try:
                self._nodes[name] = ray.get(actor.node_id.remote(), timeout=defaults.PROBE_TIMEOUT_S)
            except (RayActorError, GetTimeoutError):
                return ""
        return self._nodes[name]

    def _where(self, name: str) -> str:
        """The node an actor runs on; "" if unknown. One started with no node chosen (the
        cluster had no other) is asked where it runs."""
        if not self._nodes.get(name):
            self._nodes.pop(name, None)
            handle = self._get(name)
            return self._node_of(name, handle) if handle is not None else ""
        return self._nodes[name]

    def _actor(self, record: QueueRecord, partition: int, name: str, role: Role, node: str | None = None) -> Any:
        options: dict[str, Any] = dict(
            name=name,
            namespace=self._namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1 if record.config.replicas == 0 else 0,
            num_cpus=record.config.partition_num_cpus,
            resources=dict(record.config.partition_resources),
        )
        if node is not None:
            # Hard affinity: Ray's soft affinity was seen to place actors elsewhere while
            # the node had room. With no other node, replicas share the leader's (and
            # stats say so).
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        args = (record.config, partition, self._storage, self._storage_options, role, self._namespace, record.uid)
        if name.startswith(SHARED_PREFIX):
            host = RemoteHost.options(
                name=_host_name(name),
                namespace=self._namespace,
                lifetime="detached",
                get_if_exists=True,
                max_restarts=-1,  # restarted empty: the coordinator fails its partitions over
                num_cpus=record.config.partition_num_cpus,
                resources=dict(record.config.partition_resources),
            ).remote()
            try:
                ray.get(host.add.remote(name, *args), timeout=defaults.START_TIMEOUT_S)  # type: ignore[attr-defined]
            except (RayActorError, RayTaskError, GetTimeoutError) as error:
                raise PartitionUnavailable(
                    record.config.name, partition, f"hosting {name}: {_describe(error)}"
                ) from None
            return HostedPartition(host, name)
        return RemotePartition.options(**options).remote(*args)

    def dead(self, names: list[str]) -> set[str]:
        found = {name: self._handle(name) for name in names}
        dead = {name for name, actor in found.items() if actor is None}  # no live actor holds the name
        for name, outcome in self._ask(found, "ready").items():
            if isinstance(outcome, (RayActorError, RayTaskError)) and not isinstance(outcome, ActorUnavailableError):
                dead.add(name)  # dead, or no longer hosted where it was (restarting is not dead)
        for name in dead:
            self._nodes.pop(name, None)
        return dead

    def _ask(self, actors: dict[str, Any], method: str) -> dict[str, Any]:
        """Call ``method`` on every actor at once; each one's result, or the error it
        raised. Actors that are None or do not answer within the probe timeout are left out."""
        calls = {getattr(actor, method).remote(): name for name, actor in actors.items() if actor is not None}
        ready, _slow = (
            ray.wait(list(calls), num_returns=len(calls), timeout=defaults.PROBE_TIMEOUT_S) if calls else ([], [])
        )
        outcomes: dict[str, Any] = {}
        for ref in ready:
            try:
                outcomes[calls[ref]] = ray.get(ref)
            except (RayActorError, RayTaskError) as error:
                outcomes[calls[ref]] = error
        return outcomes

    def promote(self, record: QueueRecord, partition: int, name: str) -> int:
        """Make the replica ``name`` lead; its epoch. Any failure (the replica dying
        mid-promotion included) is a PartitionUnavailable, never a raw Ray error."""
        queue = record.config.name
        replica = self._find(name)
        if replica is None:
            raise PartitionUnavailable(queue, partition, f"replica {name} is gone")
        try:
            return int(ray.get(replica.promote.remote(), timeout=defaults.PROMOTE_TIMEOUT_S))
        except (RayActorError, RayTaskError, GetTimeoutError) as error:
            raise PartitionUnavailable(queue, partition, f"promoting {name}: {_describe(error)}") from None

    def fence(self, name: str, epoch: int) -> None:
        queue, partition = partition_of(name)
        replica = self._handle(name)
        if replica is None:
            raise PartitionUnavailable(queue, partition, f"replica {name} is gone")
        try:
            ray.get(replica.fence.remote(epoch), timeout=defaults.PROBE_TIMEOUT_S)
        except (RayActorError, RayTaskError, GetTimeoutError) as error:
            raise PartitionUnavailable(queue, partition, f"fencing {name}: {_describe(error)}") from None

    def partition_stats(self, leaders: list[str]) -> list[Any]:
        outcomes = self._ask({name: self._handle(name) for name in leaders}, "stats")
        return [outcome if isinstance(outcome, PartitionStats) else None for outcome in map(outcomes.get, leaders)]

    def set_scaling(self, leader: str, retiring: bool, partitions: int) -> None:
        actor = self._find(leader)
        try:
            if actor is not None:
                ray.get(actor.set_scaling.remote(retiring, partitions), timeout=defaults.PROBE_TIMEOUT_S)
        except Exception:  # a failing leader: failover, then the next route, tells its successor
            log.exception("could not tell %s its scaling state", leader)

    def misplaced(self, placement: Placement) -> set[str]:
        if placement.leader.startswith(SHARED_PREFIX):
            return set()  # shared hosts are placed by Ray alone
        nodes = {name: self._where(name) for name in (placement.leader, *placement.replicas)}
        leader_node = nodes.pop(placement.leader)
        sharing = {name for name, node in nodes.items() if node and node == leader_node}
        if not leader_node or not sharing or _pick_node({leader_node, *nodes.values()}) is None:
            return set()
        return sharing

    def kill(self, name: str) -> None:
        """Stop one actor for good, without waiting (it may be dead already)."""
        try:
            if name.startswith(SHARED_PREFIX):
                host = self._get(_host_name(name))
                if host is not None:
                    host.remove.remote(name)
            else:
                actor = self._get(name)
                if actor is not None:  # else never started, or already gone
                    ray.kill(actor, no_restart=True)
        except Exception as error:  # dying already: nothing left to stop
            log.warning("could not kill %s: %s", name, _describe(error))
        self._nodes.pop(name, None)

    def stop(self, record: QueueRecord) -> None:
        for placement in record.placements:
            for name in (placement.leader, *placement.replicas):
                self.kill(name)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


def _host_name(name: str) -> str:
    """The shared host of a hosted partition: generations of one partition (its leader
    and replicas) go to consecutive hosts, so they do not share one."""
    stem, _, generation = name.rpartition(".")
    return f"rayqueue.host.{(zlib.crc32(stem.encode()) + int(generation)) % defaults.SHARED_HOSTS}"


def _pick_node(avoid: set[str]) -> str | None:
    """A live node other than those in ``avoid``, if the cluster has one."""
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"] and node["NodeID"] not in avoid]
    return random.choice(nodes) if nodes else None


class CoordinatorActor:
    """Serialises every call, and a watcher thread's health checks, on one lock.

    Leaders call ``replica_in_sync`` and ``replica_lost`` asynchronously (they await the
    answer without blocking their event loop), and nothing the coordinator waits on
    (``ready``, ``promote``, ``fence``, ``attach_replicas``) waits on the coordinator,
    so a report queued behind a ``route`` never deadlocks it."""

    def __init__(self, namespace: str, storage: str, storage_options: dict[str, Any]) -> None:
        launcher = RayLauncher(namespace, storage, storage_options)
        self._store = ObjectStore(storage, storage_options)
        self._coordinator = Coordinator(self._store, launcher)
        self._lock = threading.RLock()
        threading.Thread(target=self._watch, name="rayqueue-health", daemon=True).start()

    def _watch(self) -> None:
        # A control loop never dies: each step's failure is logged and the next one runs.
        next_sweep = time.monotonic() + defaults.HEALTH_CHECK_INTERVAL_S
        while True:
            time.sleep(defaults.HEALTH_CHECK_INTERVAL_S)
            try:
                with self._lock:
                    self._coordinator.check_health()
                    self._coordinator.autoscale(time.time())
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + defaults.ORPHAN_SWEEP_INTERVAL_S
                    self._sweep()
            except Exception:
                log.exception("health check, scaling or sweep failed; retrying")

    def _sweep(self) -> None:
        listed = self._store.list("queues/")  # slow on S3: outside the lock
        with self._lock:
            self._coordinator.sweep_orphans(listed)

    def storage_url(self) -> str:
        return self._coordinator.storage_url

    def create_queue(self, config: QueueConfig) -> Route:
        with self._lock, _translated(config.name, -1):
            return self._coordinator.create_queue(config)

    def route(self, name: str) -> Route:
        with self._lock, _translated(name, -1):
            return self._coordinator.route(name)

    def report_failure(self, name: str, partition: int) -> Route:
        with self._lock, _translated(name, partition):
            return self._coordinator.report_failure(name, partition)

    def replica_in_sync(self, name: str, partition: int, leader: str, replica: str) -> bool:
        with self._lock:
            return self._coordinator.replica_in_sync(name, partition, leader, replica)

    def replica_lost(self, name: str, partition: int, leader: str, lost: list[str]) -> bool:
        with self._lock:
            return self._coordinator.replica_lost(name, partition, leader, lost)

    def list_queues(self) -> list[str]:
        with self._lock:
            return self._coordinator.list_queues()

    def delete_queue(self, name: str) -> None:
        with self._lock:
            self._coordinator.delete_queue(name)

    def failover_seconds(self) -> list[float]:
        with self._lock:
            return list(self._coordinator.failover_seconds)


@contextlib.contextmanager
def _translated(queue: str, partition: int) -> Iterator[None]:
    """Handles see RayQueueErrors only: a raw Ray error that escaped the launcher
    (a bug) still reaches them as PartitionUnavailable, which they retry."""
    try:
        yield
    except RayQueueError:
        raise
    except (RayActorError, RayTaskError, GetTimeoutError) as error:
        log.exception("queue %s: a Ray error escaped the launcher", queue)
        raise PartitionUnavailable(queue, partition, _describe(error)) from None


RemoteCoordinator = ray.remote(CoordinatorActor)
