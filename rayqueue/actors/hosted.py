"""The stand-in handle of a partition that lives in a shared ``PartitionHost``.

Kept apart from the host itself so that code which only routes calls (the
channel) need not import the partition actor.
"""

from __future__ import annotations

from typing import Any

import ray


class HostedPartition:
    """Stands in for a hosted partition's actor handle: ``hosted.send.remote(...)``."""

    def __init__(self, host: Any, name: str) -> None:
        self.host = host
        self.name = name

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("__"):
            raise AttributeError(method)
        return _Method(self.host, self.name, method)

    def __reduce__(self) -> tuple[Any, ...]:
        return (HostedPartition, (self.host, self.name))

    def __repr__(self) -> str:
        return f"HostedPartition({self.name!r})"


class _Method:
    def __init__(self, host: Any, name: str, method: str) -> None:
        self._host, self._name, self._method = host, name, method

    def remote(self, *args: Any) -> ray.ObjectRef[Any]:
        return self._host.call.remote(self._name, self._method, *args)
