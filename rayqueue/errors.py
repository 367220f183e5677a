"""Every error rayqueue raises, under one root: :class:`RayQueueError`.

Each error carries the values that explain it as attributes, and pickles with
them, because errors cross process boundaries: a partition actor raises, the
caller's handle re-raises the same error. Users never see a raw Ray or storage
exception for the cases below; the handle translates at the boundary.
"""

from __future__ import annotations

from typing import Any

#: How much of a user's value an error message quotes (a 50 MB receipt must not make a 50 MB message).
SHOWN_CHARS = 80


def shown(text: str) -> str:
    """``text`` cut for quoting in an error message."""
    return text if len(text) <= SHOWN_CHARS else f"{text[: SHOWN_CHARS - 3]}..."


class RayQueueError(Exception):
    """Root of every rayqueue error."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self._fields = fields
        for name, value in fields.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild through the root constructor so subclasses keep their fields
        # without each one having to define how it pickles.
        return (_rebuild, (type(self), self.message, self._fields))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[RayQueueError], message: str, fields: dict[str, Any]) -> RayQueueError:
    error = cls.__new__(cls)
    RayQueueError.__init__(error, message, **fields)
    return error


class InvalidArgument(RayQueueError, ValueError):
    """An argument is out of range or malformed; nothing was changed."""


class QueueNotFound(RayQueueError):
    """The queue does not exist, or was deleted while a handle still pointed at it."""

    name: str

    def __init__(self, name: str) -> None:
        super().__init__(f"queue {name!r} does not exist", name=name)


class QueueAlreadyExists(RayQueueError):
    """A queue of that name exists with other settings."""

    name: str
    differences: dict[str, tuple[Any, Any]]

    def __init__(self, name: str, differences: dict[str, tuple[Any, Any]]) -> None:
        detail = ", ".join(
            f"{field}: existing {old!r}, requested {new!r}" for field, (old, new) in sorted(differences.items())
        )
        super().__init__(
            f"queue {name!r} already exists with other settings ({detail})",
            name=name,
            differences=differences,
        )


class QueueFull(RayQueueError):
    """Accepting the batch would pass the queue's ``max_messages``; none of it was stored."""

    name: str
    limit: int
    stored: int
    requested: int

    def __init__(self, name: str, limit: int, stored: int, requested: int) -> None:
        super().__init__(
            f"queue {name!r} is full: {stored} stored + {requested} sent > limit {limit}",
            name=name,
            limit=limit,
            stored=stored,
            requested=requested,
        )


class MessageTooLarge(RayQueueError, ValueError):
    """A body is longer than the queue's ``max_message_bytes``; none of the batch was stored."""

    name: str
    size: int
    limit: int
    index: int

    def __init__(self, name: str, size: int, limit: int, index: int = 0) -> None:
        super().__init__(
            f"message {index} for queue {name!r} is {size} bytes, over the queue's max_message_bytes of {limit}",
            name=name,
            size=size,
            limit=limit,
            index=index,
        )


class InvalidReceipt(RayQueueError, ValueError):
    """A receipt is malformed, forged, or no longer the latest for its message."""

    receipt: str
    reason: str

    def __init__(self, receipt: str, reason: str) -> None:
        super().__init__(f"invalid receipt {receipt!r}: {reason}", receipt=receipt, reason=reason)


class StorageMismatch(RayQueueError):
    """``connect`` asked for other storage than the running coordinator already uses."""

    requested: str
    existing: str

    def __init__(self, requested: str, existing: str) -> None:
        super().__init__(
            f"the rayqueue coordinator in this namespace uses storage {existing!r}, "
            f"not {requested!r}; connect without storage= or use another namespace",
            requested=requested,
            existing=existing,
        )


class StorageUnavailable(RayQueueError):
    """Storage kept failing after retries; the operation was not acknowledged."""

    operation: str
    path: str
    cause: str

    def __init__(self, operation: str, path: str, cause: str) -> None:
        super().__init__(
            f"storage unavailable: {operation} {path!r} failed: {cause}",
            operation=operation,
            path=path,
            cause=cause,
        )


class StorageCorrupt(RayQueueError):
    """An object on storage is not in a format this version of rayqueue can read."""

    path: str
    reason: str

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read {path!r}: {reason}", path=path, reason=reason)


class ObjectExists(RayQueueError):
    """A create-only write found the object already there: another writer won the race.

    Partitions see it when a newer leader of the same partition has written first.
    """

    path: str

    def __init__(self, path: str) -> None:
        super().__init__(f"{path!r} already exists: another writer created it first", path=path)


class PartitionFenced(RayQueueError):
    """A newer leader took over this partition; this one may no longer acknowledge writes.

    What raised it was not acknowledged; retrying reaches the new leader.
    """

    partition: str
    epoch: int

    def __init__(self, partition: str, epoch: int) -> None:
        super().__init__(
            f"partition {partition!r}: a leader newer than epoch {epoch} took over", partition=partition, epoch=epoch
        )


class PartitionRetired(RayQueueError):
    """The partition is being retired by scaling in: it takes no more sends (nothing
    was stored); its messages can still be received and deleted."""

    queue: str
    partition: int

    def __init__(self, queue: str, partition: int) -> None:
        super().__init__(f"partition {partition} of queue {queue!r} is retiring", queue=queue, partition=partition)


class PartitionUnavailable(RayQueueError):
    """A partition did not answer within the bounded retry time."""

    queue: str
    partition: int
    cause: str

    def __init__(self, queue: str, partition: int, cause: str) -> None:
        super().__init__(
            f"partition {partition} of queue {queue!r} is unavailable: {cause}",
            queue=queue,
            partition=partition,
            cause=cause,
        )


class UnknownCall(RayQueueError, ValueError):
    """A partition was asked to run a method that is not one of its calls: a programming
    error (or a peer of another version), answered at once and never retried."""

    method: str

    def __init__(self, method: str) -> None:
        super().__init__(f"{shown(repr(method))} is not a call a partition serves", method=method)


class CoordinatorUnavailable(RayQueueError):
    """The namespace's coordinator did not answer, could not start, or failed running
    ``operation``; queues, routes and failover wait for it. Data calls to partitions whose
    route a handle already has go on."""

    operation: str
    cause: str

    def __init__(self, operation: str, cause: str) -> None:
        super().__init__(
            f"the rayqueue coordinator is unavailable ({operation}): {cause}", operation=operation, cause=cause
        )


class CatalogContention(RayQueueError):
    """The catalog kept changing under the coordinator (another coordinator of the same
    storage is writing it); the change was not made. Retrying is safe."""

    attempts: int

    def __init__(self, attempts: int) -> None:
        super().__init__(
            f"the catalog kept changing under this coordinator ({attempts} attempts): is another namespace's "
            "coordinator using the same storage?",
            attempts=attempts,
        )


class RayUnavailable(RayQueueError):
    """Ray itself cannot be reached or joined (no cluster at the address given)."""


class IncompatiblePeer(RayQueueError):
    """The other end of the direct channel speaks another protocol version: another
    version of rayqueue runs there. Retrying cannot help; run one version everywhere."""

    def __init__(self, peer: str, local_version: int, peer_version: int) -> None:
        super().__init__(
            f"the rayqueue channel at {peer} speaks protocol {peer_version}, this process speaks "
            f"{local_version}: run the same rayqueue version on every node (restart the older processes)",
            peer=peer,
            local_version=local_version,
            peer_version=peer_version,
        )


class BadFrame(RayQueueError):
    """A frame on the direct channel was malformed or could not be read; the call failed."""

    def __init__(self, peer: str, reason: str, **fields: Any) -> None:
        super().__init__(f"bad frame on the channel with {peer}: {reason}", peer=peer, reason=reason, **fields)


class ForbiddenType(BadFrame):
    """A frame named a type the direct channel does not carry; it was refused, not built."""

    def __init__(self, peer: str, module: str, name: str) -> None:
        super().__init__(
            peer, f"it holds {module}.{name}, which the channel does not carry (refused)", module=module, name=name
        )


class FrameTooLarge(BadFrame):
    """A frame is larger than the channel's limits allow. Refused before anything was
    allocated for it (received) or sent (to be sent)."""

    def __init__(self, peer: str, what: str, size: int, limit: int) -> None:
        super().__init__(peer, f"{what} is {size}, over the limit of {limit}", what=what, size=size, limit=limit)


class TlsUnavailable(RayQueueError):
    """Ray runs with TLS (``RAY_USE_TLS``) but the direct channel could not load Ray's
    certificates; the channel stays closed and calls go through Ray."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Ray uses TLS, but the direct channel cannot: {reason}", reason=reason)


__all__ = [
    "BadFrame",
    "CatalogContention",
    "CoordinatorUnavailable",
    "ForbiddenType",
    "FrameTooLarge",
    "IncompatiblePeer",
    "InvalidArgument",
    "InvalidReceipt",
    "MessageTooLarge",
    "ObjectExists",
    "PartitionFenced",
    "PartitionRetired",
    "PartitionUnavailable",
    "QueueAlreadyExists",
    "QueueFull",
    "QueueNotFound",
    "RayQueueError",
    "RayUnavailable",
    "StorageCorrupt",
    "StorageMismatch",
    "StorageUnavailable",
    "TlsUnavailable",
    "UnknownCall",
]
