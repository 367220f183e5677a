"""The coordinator's logic: the catalog of queues, persisted before it is published.

No Ray here: starting and stopping partition actors goes through a
``PartitionLauncher``, so the catalog rules run in unit tests with a fake one.
Every method is idempotent, so a caller may retry any of them after a failure.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from rayqueue.config import QueueConfig
from rayqueue.errors import QueueAlreadyExists, QueueNotFound
from rayqueue.storage import CatalogStore, ObjectStore


@dataclass(frozen=True)
class QueueRecord:
    """What the catalog keeps for one queue."""

    config: QueueConfig
    #: Tells apart two queues that had the same name at different times.
    uid: str
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config.model_dump(), "uid": self.uid, "created_at": self.created_at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueueRecord:
        return cls(QueueConfig(**data["config"]), data["uid"], data["created_at"])


@dataclass(frozen=True)
class Route:
    """How a handle reaches a queue: its settings and one actor handle per partition."""

    config: QueueConfig
    uid: str
    partitions: tuple[Any, ...]


class PartitionLauncher(Protocol):
    def start(self, record: QueueRecord) -> list[Any]:
        """Start (or find) every partition actor of the queue; return once all are ready."""

    def stop(self, record: QueueRecord) -> None:
        """Stop every partition actor of the queue, for good."""


class Coordinator:
    def __init__(self, store: ObjectStore, launcher: PartitionLauncher) -> None:
        self._store = store
        self._catalog = CatalogStore(store)
        self._launcher = launcher
        self._version, raw = self._catalog.load()
        self._queues = {name: QueueRecord.from_json(data) for name, data in raw.items()}
        self._routes: dict[str, Route] = {}

    @property
    def storage_url(self) -> str:
        return self._store.url

    def create_queue(self, config: QueueConfig) -> Route:
        """Create the queue, or return it if it exists with the same settings."""
        existing = self._queues.get(config.name)
        if existing is not None:
            differences = existing.config.differences(config)
            if differences:
                raise QueueAlreadyExists(config.name, differences)
            return self.route(config.name)
        # Objects left by an earlier queue of this name whose deletion was cut short.
        self._store.delete_prefix(_queue_prefix(config.name))
        record = QueueRecord(config, uid=uuid.uuid4().hex[:12])
        self._commit({**self._queues, config.name: record})
        return self.route(config.name)

    def route(self, name: str) -> Route:
        record = self._queues.get(name)
        if record is None:
            raise QueueNotFound(name)
        route = self._routes.get(name)
        if route is None or route.uid != record.uid:
            route = Route(record.config, record.uid, tuple(self._launcher.start(record)))
            self._routes[name] = route
        return route

    def list_queues(self) -> list[str]:
        return sorted(self._queues)

    def delete_queue(self, name: str) -> None:
        """Forget the queue, stop its partitions and remove its objects from storage."""
        record = self._queues.get(name)
        if record is None:
            raise QueueNotFound(name)
        self._commit({key: value for key, value in self._queues.items() if key != name})
        self._routes.pop(name, None)
        self._launcher.stop(record)
        self._store.delete_prefix(_queue_prefix(name))

    def _commit(self, queues: dict[str, QueueRecord]) -> None:
        # Persist, then publish: the new catalog is on storage before anyone sees it.
        version = self._version + 1
        self._catalog.save(version, {name: record.to_json() for name, record in queues.items()})
        self._version, self._queues = version, queues


def _queue_prefix(name: str) -> str:
    return f"queues/{name}"
