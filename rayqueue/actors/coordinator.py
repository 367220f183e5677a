"""The coordinator actor and the launcher that starts partition actors with Ray."""

from __future__ import annotations

from typing import Any

import ray

from rayqueue.actors.partition import RemotePartition, partition_actor_name
from rayqueue.config import QueueConfig
from rayqueue.coordinator import Coordinator, QueueRecord, Route
from rayqueue.storage import ObjectStore


class RayLauncher:
    """Partition actors are detached and named, so they outlive a coordinator restart
    and a restarted coordinator finds them again by name."""

    def __init__(self, namespace: str, storage: str, storage_options: dict[str, Any]) -> None:
        self._namespace = namespace
        self._storage = storage
        self._storage_options = storage_options

    def _names(self, record: QueueRecord) -> list[str]:
        return [partition_actor_name(record.config.name, record.uid, p) for p in range(record.config.partitions)]

    def start(self, record: QueueRecord) -> list[Any]:
        handles = [
            RemotePartition.options(
                name=name,
                namespace=self._namespace,
                lifetime="detached",
                get_if_exists=True,
                max_restarts=-1,
                num_cpus=0,
            ).remote(record.config, partition, self._storage, self._storage_options)
            for partition, name in enumerate(self._names(record))
        ]
        ray.get([handle.ready.remote() for handle in handles])
        return handles

    def stop(self, record: QueueRecord) -> None:
        for name in self._names(record):
            try:
                ray.kill(ray.get_actor(name, namespace=self._namespace), no_restart=True)
            except ValueError:
                pass  # never started, or already gone


class CoordinatorActor:
    def __init__(self, namespace: str, storage: str, storage_options: dict[str, Any]) -> None:
        launcher = RayLauncher(namespace, storage, storage_options)
        self._coordinator = Coordinator(ObjectStore(storage, storage_options), launcher)

    def storage_url(self) -> str:
        return self._coordinator.storage_url

    def create_queue(self, config: QueueConfig) -> Route:
        return self._coordinator.create_queue(config)

    def route(self, name: str) -> Route:
        return self._coordinator.route(name)

    def list_queues(self) -> list[str]:
        return self._coordinator.list_queues()

    def delete_queue(self, name: str) -> None:
        self._coordinator.delete_queue(name)


RemoteCoordinator = ray.remote(CoordinatorActor)
