"""rayqueue: a durable, partitioned message queue made of Ray actors.

    import rayqueue
    client = rayqueue.connect()
    q = client.create_queue("orders", max_messages=1_000_000, max_message_bytes=256 * 1024)
    q.send(b"hello")
    for m in q.receive(max_messages=10, wait_s=1.0):
        q.delete(m.receipt)
"""

from rayqueue.client import Client, Queue, connect
from rayqueue.config import QueueConfig
from rayqueue.errors import (
    InvalidArgument,
    InvalidReceipt,
    MessageTooLarge,
    PartitionUnavailable,
    QueueAlreadyExists,
    QueueFull,
    QueueNotFound,
    RayQueueError,
    StorageMismatch,
    StorageUnavailable,
)
from rayqueue.message import Message, PartitionStats, QueueStats

__version__ = "0.1.0"

__all__ = [
    "Client",
    "InvalidArgument",
    "InvalidReceipt",
    "Message",
    "MessageTooLarge",
    "PartitionStats",
    "PartitionUnavailable",
    "Queue",
    "QueueAlreadyExists",
    "QueueConfig",
    "QueueFull",
    "QueueNotFound",
    "QueueStats",
    "RayQueueError",
    "StorageMismatch",
    "StorageUnavailable",
    "connect",
]
