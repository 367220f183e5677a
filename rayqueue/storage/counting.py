"""An ObjectStore that counts its requests: what a workload costs on object storage."""

from __future__ import annotations

import builtins
from collections import Counter
from typing import Any

from rayqueue.storage.objects import ObjectStore


class CountingStore(ObjectStore):
    """Counts put, get, list, head (exists) and delete requests; children share the count."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: Counter[str] = Counter()

    def put_once(self, name: str, data: bytes) -> None:
        self.requests["put"] += 1
        super().put_once(name, data)

    def get(self, name: str) -> bytes:
        self.requests["get"] += 1
        return super().get(name)

    def list(self, prefix: str) -> list[str]:
        self.requests["list"] += 1
        return super().list(prefix)

    def exists(self, name: str) -> bool:
        self.requests["head"] += 1
        return super().exists(name)

    def delete(self, names: builtins.list[str]) -> None:
        self.requests["delete"] += len(names)
        super().delete(names)
