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

from rayqueue.actors.partition_actor import PartitionActor, serve_wire
from rayqueue.control.coordinator import partition_of
from rayqueue.errors import PartitionUnavailable
from rayqueue.transport.wire import Endpoint, Server


class PartitionHost:
    def __init__(self) -> None:
        self._hosted: dict[str, PartitionActor] = {}
        self._wire: Server | None = None

    def add(self, name: str, *args: Any) -> None:
        """Start hosting partition ``name`` (``args`` as for PartitionActor), unless it is here."""
        if name not in self._hosted:
            hosted = PartitionActor(*args, name=name)  # type: ignore[misc]  # args: all but the name
            # Fenced: it leaves this host (the coordinator sees it gone and fails it over);
            # the other partitions here go on.
            hosted.stop_when_fenced = lambda: self.remove(name)
            self._hosted[name] = hosted

    def remove(self, name: str) -> None:
        self._hosted.pop(name, None)

    def has(self, name: str) -> bool:
        return name in self._hosted

    def count(self) -> int:
        return len(self._hosted)

    async def call(self, name: str, method: str, *args: Any) -> Any:
        hosted = self._hosted.get(name)
        if hosted is None:  # removed, or this host restarted since: the coordinator fails it over
            raise PartitionUnavailable(*partition_of(name), "not hosted here (any more)")
        result = getattr(hosted, method)(*args)
        return await result if inspect.isawaitable(result) else result

    async def wire_endpoint(self) -> Endpoint | None:
        """One direct-channel server for every partition hosted here; calls name theirs
        (None: no channel, call through Ray)."""
        self._wire, endpoint = await serve_wire(self._wire, self._dispatch)
        return endpoint

    async def _dispatch(self, name: str, method: str, args: tuple[Any, ...]) -> Any:
        return await self.call(name, "dispatch", name, method, args)


RemoteHost = ray.remote(PartitionHost)
