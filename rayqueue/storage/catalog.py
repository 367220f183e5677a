"""The catalog: every queue's settings and partition map, as versioned documents.

Each change is a new document ``catalog/<version>.json`` created only if that
version does not exist yet, so two coordinators can never both commit the same
version: the loser gets ObjectExists and must reload. The newest readable
version wins.
"""

from __future__ import annotations

import logging
from typing import Any

from rayqueue import defaults
from rayqueue.errors import StorageCorrupt
from rayqueue.storage import format
from rayqueue.storage.objects import ObjectStore

log = logging.getLogger(__name__)


class CatalogStore:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def load(self) -> tuple[int, dict[str, Any]]:
        """The highest version number on storage, and the queues of the newest readable
        version; ``(0, {})`` on empty storage. The next save must use a higher number
        than any present, readable or not."""
        names = self._store.list("catalog/")
        highest = max((v for v in map(_version_of, names) if v is not None), default=0)
        for name in reversed(names):
            try:
                return highest, format.decode_catalog(self._store.get(name), name)[1]
            except StorageCorrupt as error:
                # Versions are created whole, so this is foreign or damaged: skip it.
                log.warning("skipping unreadable catalog version: %s", error)
        return highest, {}

    def save(self, version: int, queues: dict[str, Any]) -> None:
        """Create ``version``; raise ObjectExists if another writer created it first."""
        self._store.put_once(format.catalog_name(version), format.encode_catalog(version, queues))
        self._prune(version)

    def _prune(self, newest: int) -> None:
        keep_from = newest - defaults.CATALOG_VERSIONS_KEPT
        old = [
            name
            for name in self._store.list("catalog/")
            if _version_of(name) is not None and _version_of(name) < keep_from  # type: ignore[operator]
        ]
        self._store.delete(old)


def _version_of(name: str) -> int | None:
    try:
        return int(name.rsplit("/", 1)[-1].removesuffix(".json"))
    except ValueError:
        return None
