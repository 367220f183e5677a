"""Reading a queue out in tests."""

from __future__ import annotations

import rayqueue
from support.waiting import wait_for


def drain_bodies(queue: rayqueue.Queue) -> list[bytes]:
    """Receive and delete until the queue answers with nothing; the bodies, in order."""
    bodies = []
    while batch := queue.receive(100):
        bodies += [m.body for m in batch]
        queue.delete_batch([m.receipt for m in batch])
    return bodies


def wait_in_sync(queue: rayqueue.Queue, replicas: int, timeout_s: float = 60.0) -> None:
    """Return once every partition has ``replicas`` replicas in sync. ``create_queue``
    waits for that only so long (``defaults.ATTACH_TIMEOUT_S``, then it goes on): on a
    loaded machine, starting the replicas' processes takes longer."""

    def in_sync() -> bool:
        return all(partition.replicas_in_sync == replicas for partition in queue.stats().partitions)

    assert wait_for(in_sync, timeout_s, 0.2), f"replicas not in sync after {timeout_s} s: {queue.stats()}"
