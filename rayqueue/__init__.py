"""rayqueue: a durable, partitioned message queue made of Ray actors.

    import rayqueue
    client = rayqueue.connect()
    q = client.create_queue("orders", max_messages=1_000_000, max_message_bytes=256 * 1024)
    q.send(b"hello")
    for m in q.receive(max_messages=10, wait_s=1.0):
        q.delete(m.receipt)

The names below are imported on first use (PEP 562), so that ``import rayqueue.config``
or the ``rayqueue`` command's argument checks do not pay for importing Ray and Arrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_EXPORTS = {
    "Client": "rayqueue.client.connection",
    "Queue": "rayqueue.client.queue",
    "connect": "rayqueue.client.connection",
    "QueueConfig": "rayqueue.config",
    "BadFrame": "rayqueue.errors",
    "ForbiddenType": "rayqueue.errors",
    "FrameTooLarge": "rayqueue.errors",
    "IncompatiblePeer": "rayqueue.errors",
    "CatalogContention": "rayqueue.errors",
    "CoordinatorUnavailable": "rayqueue.errors",
    "PartitionFenced": "rayqueue.errors",
    "PartitionRetired": "rayqueue.errors",
    "RayUnavailable": "rayqueue.errors",
    "StorageCorrupt": "rayqueue.errors",
    "UnknownCall": "rayqueue.errors",
    "InvalidArgument": "rayqueue.errors",
    "InvalidReceipt": "rayqueue.errors",
    "MessageTooLarge": "rayqueue.errors",
    "PartitionUnavailable": "rayqueue.errors",
    "QueueAlreadyExists": "rayqueue.errors",
    "QueueFull": "rayqueue.errors",
    "QueueNotFound": "rayqueue.errors",
    "RayQueueError": "rayqueue.errors",
    "StorageMismatch": "rayqueue.errors",
    "StorageUnavailable": "rayqueue.errors",
    "Message": "rayqueue.message",
    "PartitionStats": "rayqueue.message",
    "QueueStats": "rayqueue.message",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from rayqueue.client.connection import Client as Client, connect as connect
    from rayqueue.client.queue import Queue as Queue
    from rayqueue.config import QueueConfig as QueueConfig
    from rayqueue.errors import (
        BadFrame as BadFrame,
        CatalogContention as CatalogContention,
        CoordinatorUnavailable as CoordinatorUnavailable,
        ForbiddenType as ForbiddenType,
        FrameTooLarge as FrameTooLarge,
        IncompatiblePeer as IncompatiblePeer,
        InvalidArgument as InvalidArgument,
        InvalidReceipt as InvalidReceipt,
        MessageTooLarge as MessageTooLarge,
        PartitionFenced as PartitionFenced,
        PartitionRetired as PartitionRetired,
        PartitionUnavailable as PartitionUnavailable,
        QueueAlreadyExists as QueueAlreadyExists,
        QueueFull as QueueFull,
        QueueNotFound as QueueNotFound,
        RayQueueError as RayQueueError,
        RayUnavailable as RayUnavailable,
        StorageCorrupt as StorageCorrupt,
        StorageMismatch as StorageMismatch,
        StorageUnavailable as StorageUnavailable,
        UnknownCall as UnknownCall,
    )
    from rayqueue.message import Message as Message, PartitionStats as PartitionStats, QueueStats as QueueStats


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        # a submodule, as an eager __init__ would have made it: rayqueue.errors.QueueFull
        try:
            return importlib.import_module(f"rayqueue.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'rayqueue' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
