"""The coordinator's logic: the catalog of queues, persisted before it is published.

No Ray here: starting and stopping partition actors goes through a
``PartitionLauncher``, so the catalog rules run in unit tests with a fake one.
Every method is idempotent, so a caller may retry any of them after a failure.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol

from rayqueue.config import QueueConfig
from rayqueue.errors import ObjectExists, QueueAlreadyExists, QueueNotFound, RayQueueError
from rayqueue.storage import CatalogStore, ObjectStore

#: Times a catalog change is re-applied after losing a race to another writer.
CATALOG_ATTEMPTS = 5


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
        self._version = 0
        self._queues: dict[str, QueueRecord] = {}
        self._load()
        self._routes: dict[str, Route] = {}

    @property
    def storage_url(self) -> str:
        return self._store.url

    def create_queue(self, config: QueueConfig) -> Route:
        """Create the queue, or return it if it exists with the same settings."""

        def add(queues: dict[str, QueueRecord]) -> dict[str, QueueRecord] | None:
            existing = queues.get(config.name)
            if existing is None:
                # Objects left by an earlier queue of this name whose deletion was cut short.
                self._store.delete_prefix(_queue_prefix(config.name))
                return {**queues, config.name: QueueRecord(config, uid=uuid.uuid4().hex[:12])}
            differences = existing.config.differences(config)
            if differences:
                raise QueueAlreadyExists(config.name, differences)
            return None

        self._change(add)
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
        removed: list[QueueRecord] = []

        def remove(queues: dict[str, QueueRecord]) -> dict[str, QueueRecord]:
            if name not in queues:
                raise QueueNotFound(name)
            removed[:] = [queues[name]]
            return {key: value for key, value in queues.items() if key != name}

        self._change(remove)
        self._routes.pop(name, None)
        self._launcher.stop(removed[0])
        self._store.delete_prefix(_queue_prefix(name))

    def _change(self, change: Callable[[dict[str, QueueRecord]], dict[str, QueueRecord] | None]) -> None:
        """Apply ``change`` to the catalog (None: nothing to change), persist, then publish.

        If another coordinator committed the same version first, reload and apply
        the change again to what it wrote.
        """
        for _ in range(CATALOG_ATTEMPTS):
            queues = change(self._queues)
            if queues is None:
                return
            version = self._version + 1
            try:
                self._catalog.save(version, {name: record.to_json() for name, record in queues.items()})
            except ObjectExists:
                self._load()
                continue
            self._version, self._queues = version, queues
            return
        raise RayQueueError(f"the catalog kept changing under this coordinator ({CATALOG_ATTEMPTS} attempts)")

    def _load(self) -> None:
        self._version, raw = self._catalog.load()
        self._queues = {name: QueueRecord.from_json(data) for name, data in raw.items()}


def _queue_prefix(name: str) -> str:
    return f"queues/{name}"
