"""One actor process that hosts many small partitions.

A Ray actor is a whole process (about 100 MiB here), so a queue of one small
partition should not cost one. A ``PartitionHost`` holds many ``PartitionActor``
objects (the same class a dedicated actor runs), each still its own log,
storage prefix, epoch and failover unit; ``HostedPartition`` looks like that
partition's own actor handle, so routes, replication and failover use it as
they use a dedicated actor.
"""

from __future__ import annotations

import inspect
from typing import Any

import ray

from rayqueue.actors.partition import PartitionActor
from rayqueue.errors import PartitionUnavailable


class PartitionHost:
    def __init__(self) -> None:
        self._hosted: dict[str, PartitionActor] = {}

    def add(self, name: str, *args: Any) -> None:
        """Start hosting partition ``name`` (``args`` as for PartitionActor), unless it is here."""
        if name not in self._hosted:
            self._hosted[name] = PartitionActor(*args)

    def remove(self, name: str) -> None:
        self._hosted.pop(name, None)

    def has(self, name: str) -> bool:
        return name in self._hosted

    def count(self) -> int:
        return len(self._hosted)

    async def call(self, name: str, method: str, *args: Any) -> Any:
        hosted = self._hosted.get(name)
        if hosted is None:  # removed, or this host restarted since: the coordinator fails it over
            raise PartitionUnavailable(name, -1, "not hosted here (any more)")
        result = getattr(hosted, method)(*args)
        return await result if inspect.isawaitable(result) else result


RemoteHost = ray.remote(PartitionHost)


class HostedPartition:
    """Stands in for a hosted partition's actor handle: ``hosted.send.remote(...)``."""

    def __init__(self, host: Any, name: str) -> None:
        self.host = host
        self._name = name

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("__"):
            raise AttributeError(method)
        return _Method(self.host, self._name, method)

    def __reduce__(self) -> tuple[Any, ...]:
        return (HostedPartition, (self.host, self._name))

    def __repr__(self) -> str:
        return f"HostedPartition({self._name!r})"


class _Method:
    def __init__(self, host: Any, name: str, method: str) -> None:
        self._host, self._name, self._method = host, name, method

    def remote(self, *args: Any) -> ray.ObjectRef:
        return self._host.call.remote(self._name, self._method, *args)
