"""The coordinator actor, and the launcher that starts, probes and promotes partition actors."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayqueue import defaults
from rayqueue.actors.partition import RemotePartition, Role
from rayqueue.config import QueueConfig
from rayqueue.coordinator import Coordinator, QueueRecord, Route
from rayqueue.storage import ObjectStore

log = logging.getLogger(__name__)

#: How long a probe waits for an actor before calling it slow (not dead).
PROBE_TIMEOUT_S = 2.0
#: How long a new actor may take to start.
START_TIMEOUT_S = 60.0
#: How long a promotion may take (it reads the partition's state from storage).
PROMOTE_TIMEOUT_S = 120.0


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

    def start(self, record: QueueRecord) -> list[Any]:
        leaders, attaching = [], []
        for partition, placement in enumerate(record.placements):
            leader = self._actor(record, partition, placement.leader, "leader")
            leader_node = ray.get(leader.node_id.remote(), timeout=START_TIMEOUT_S)
            used, replicas, on_leader_node = {leader_node}, {}, 0
            for name in placement.replicas:
                replica = self._actor(record, partition, name, "replica", avoid=used)
                try:
                    node = ray.get(replica.node_id.remote(), timeout=START_TIMEOUT_S)
                except (RayActorError, GetTimeoutError):
                    log.warning("replica %s did not start; the next health check replaces it", name)
                    self.kill(name)
                    continue
                used.add(node)
                replicas[name] = replica
                on_leader_node += node == leader_node
            attaching.append(leader.attach_replicas.remote(replicas, on_leader_node))
            leaders.append(leader)
        ray.get(attaching)
        return leaders

    def _actor(self, record: QueueRecord, partition: int, name: str, role: Role, avoid: set[str] = frozenset()) -> Any:
        options: dict[str, Any] = dict(
            name=name,
            namespace=self._namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1 if record.config.replicas == 0 else 0,
            num_cpus=0,
        )
        node = _pick_node(avoid) if avoid else None
        if node is not None:
            # Hard affinity: Ray's soft affinity was seen to place actors elsewhere while
            # the node had room. With no other node, replicas share the leader's (and
            # stats say so).
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        return RemotePartition.options(**options).remote(
            record.config, partition, self._storage, self._storage_options, role, self._namespace
        )

    def is_dead(self, name: str) -> bool:
        try:
            actor = ray.get_actor(name, namespace=self._namespace)
        except ValueError:
            return True  # no live actor holds the name
        try:
            ray.get(actor.ready.remote(), timeout=PROBE_TIMEOUT_S)
        except (ActorUnavailableError, GetTimeoutError):
            return False  # restarting, or slow
        except RayActorError:
            return True
        return False

    def promote(self, record: QueueRecord, partition: int, name: str) -> None:
        ray.get(ray.get_actor(name, namespace=self._namespace).promote.remote(), timeout=PROMOTE_TIMEOUT_S)

    def in_sync(self, leader: str) -> list[str]:
        try:
            actor = ray.get_actor(leader, namespace=self._namespace)
            return ray.get(actor.in_sync_replicas.remote(), timeout=PROBE_TIMEOUT_S)
        except (ValueError, RayActorError, GetTimeoutError):
            return []

    def kill(self, name: str) -> None:
        try:
            ray.kill(ray.get_actor(name, namespace=self._namespace), no_restart=True)
        except ValueError:
            pass  # never started, or already gone

    def stop(self, record: QueueRecord) -> None:
        for placement in record.placements:
            for name in (placement.leader, *placement.replicas):
                self.kill(name)


def _pick_node(avoid: set[str]) -> str | None:
    """A live node other than those in ``avoid``, if the cluster has one."""
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"] and node["NodeID"] not in avoid]
    return random.choice(nodes) if nodes else None


class CoordinatorActor:
    """Serialises every call, and a watcher thread's health checks, on one lock."""

    def __init__(self, namespace: str, storage: str, storage_options: dict[str, Any]) -> None:
        launcher = RayLauncher(namespace, storage, storage_options)
        self._coordinator = Coordinator(ObjectStore(storage, storage_options), launcher)
        self._lock = threading.RLock()
        threading.Thread(target=self._watch, name="rayqueue-health", daemon=True).start()

    def _watch(self) -> None:
        # A control loop never dies: each step's failure is logged and the next one runs.
        while True:
            time.sleep(defaults.HEALTH_CHECK_INTERVAL_S)
            try:
                with self._lock:
                    self._coordinator.check_health()
            except Exception:
                log.exception("health check failed; retrying")

    def storage_url(self) -> str:
        return self._coordinator.storage_url

    def create_queue(self, config: QueueConfig) -> Route:
        with self._lock:
            return self._coordinator.create_queue(config)

    def route(self, name: str) -> Route:
        with self._lock:
            return self._coordinator.route(name)

    def report_failure(self, name: str, partition: int) -> Route:
        with self._lock:
            return self._coordinator.report_failure(name, partition)

    def replica_lost(self, name: str, partition: int) -> None:
        with self._lock:
            self._coordinator.replica_lost(name, partition)

    def list_queues(self) -> list[str]:
        with self._lock:
            return self._coordinator.list_queues()

    def delete_queue(self, name: str) -> None:
        with self._lock:
            self._coordinator.delete_queue(name)

    def failover_seconds(self) -> list[float]:
        with self._lock:
            return list(self._coordinator.failover_seconds)


RemoteCoordinator = ray.remote(CoordinatorActor)
