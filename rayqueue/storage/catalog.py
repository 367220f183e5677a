"""The catalog: every queue's settings and partition map, as versioned documents.

Each change is a new document ``catalog/<version>.json`` created only if that
version does not exist yet, so two coordinators can never both commit the same
version: the loser gets ObjectExists and must reload. The newest version wins;
if it cannot be read (damaged, or written by a newer rayqueue) loading refuses
with StorageCorrupt: rolling back to an older version would lose the queues
created since, and a later create of one of them could remove its data.
"""

from __future__ import annotations

from typing import Any

from rayqueue import defaults
from rayqueue.errors import StorageCorrupt
from rayqueue.storage import format
from rayqueue.storage.objects import ObjectStore


class CatalogStore:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def load(self) -> tuple[int, dict[str, Any]]:
        """The newest version number and its queues (raw records, not checked here);
        ``(0, {})`` on empty storage. Raises StorageCorrupt naming the newest version
        if it cannot be read. Names in ``catalog/`` that are not versions are ignored."""
        versions = [
            (version, name) for name in self._store.list("catalog/") if (version := _version_of(name)) is not None
        ]
        if not versions:
            return 0, {}
        newest, name = max(versions)
        where = f"{self._store.url}/{name}"
        try:
            data = self._store.get(name)
        except FileNotFoundError:
            # Pruned by a newer writer between the listing and the read: it saved a newer one.
            raise StorageCorrupt(where, "listed, then gone before it was read; load again") from None
        version, queues = format.decode_catalog(data, where)
        if version != newest:
            raise StorageCorrupt(where, f"holds version {version}")
        return newest, queues

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
    """``catalog/000..7.json`` -> 7; None for any name ``catalog_name`` does not make."""
    stem = name.rsplit("/", 1)[-1]
    if len(stem) != 25 or not stem.endswith(".json") or not stem[:20].isdigit() or not stem[:20].isascii():
        return None
    return int(stem[:20])
