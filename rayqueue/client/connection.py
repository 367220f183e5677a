"""The user's entry points: ``connect`` and ``Client`` (creating, finding and deleting queues)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rayqueue import defaults
from rayqueue.client import session
from rayqueue.client.queue import Queue
from rayqueue.config import QueueConfig, check_queue_name
from rayqueue.transport import drivers


def connect(
    address: str | None = None,
    *,
    storage: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    namespace: str = defaults.NAMESPACE,
) -> Client:
    """Attach to Ray (starting a local one if none runs) and to the namespace's coordinator.

    ``storage`` is an fsspec URL; by default ``defaults.STORAGE`` (a ``file://``
    directory under ``~/.rayqueue``). Asking for other storage than a running
    coordinator uses raises ``StorageMismatch``.
    """
    session.ensure_ray(address, namespace)
    return Client(session.coordinator(namespace, storage, dict(storage_options or {})))


class Client:
    """Creates, finds, lists and deletes queues."""

    def __init__(self, coordinator: Any) -> None:
        self._coordinator = coordinator

    @property
    def storage(self) -> str:
        return drivers.call_coordinator(self._coordinator, "storage_url")

    def create_queue(
        self,
        name: str,
        *,
        max_messages: int,
        max_message_bytes: int,
        partitions: int = 1,
        visibility_timeout_s: float = defaults.VISIBILITY_TIMEOUT_S,
        retention_s: float = defaults.RETENTION_S,
        durability: str = "storage",
        replicas: int = 0,
        partition_memory_bytes: int = defaults.PARTITION_MEMORY_BYTES,
        **settings: Any,
    ) -> Queue:
        """Create a queue, or return the existing one if its settings are the same.

        ``replicas`` replica actors per partition (on other nodes where the cluster
        has them) take over when a leader dies; with ``durability="replicas"`` a
        send is acknowledged once they hold it, before it is stored. Each partition
        keeps at most ``partition_memory_bytes`` of message data in memory; a larger
        backlog waits on storage and is read back as consumers reach it.

        ``settings``: ``hosting="shared"`` puts the partitions in a few shared host actors
        (for many small queues); ``min_partitions`` and ``max_partitions`` let the coordinator grow
        and shrink the queue with load, aiming at ``target_send_rate`` sends per second
        and ``target_backlog`` stored messages per partition, deciding over
        ``scaling_window_s`` and pausing ``scaling_cooldown_s`` after each change.
        Raises ``QueueAlreadyExists`` if a queue of that name has other settings.
        """
        config = QueueConfig.build(
            name=name,
            max_messages=max_messages,
            max_message_bytes=max_message_bytes,
            partitions=partitions,
            visibility_timeout_s=visibility_timeout_s,
            retention_s=retention_s,
            durability=durability,
            replicas=replicas,
            partition_memory_bytes=partition_memory_bytes,
            **settings,
        )
        route = drivers.call_coordinator(self._coordinator, "create_queue", config)
        return Queue(name, self._coordinator, route)

    def get_queue(self, name: str) -> Queue:
        """The queue ``name``; raises ``QueueNotFound``."""
        check_queue_name(name)
        return Queue(name, self._coordinator, drivers.call_coordinator(self._coordinator, "route", name))

    def list_queues(self) -> list[str]:
        return drivers.call_coordinator(self._coordinator, "list_queues")

    def delete_queue(self, name: str) -> None:
        """Delete the queue and its stored data; returns once the data is gone."""
        check_queue_name(name)
        drivers.call_coordinator(self._coordinator, "delete_queue", name)
