"""Reading a queue out in tests."""

from __future__ import annotations

import rayqueue


def drain_bodies(queue: rayqueue.Queue) -> list[bytes]:
    """Receive and delete until the queue answers with nothing; the bodies, in order."""
    bodies = []
    while batch := queue.receive(100):
        bodies += [m.body for m in batch]
        queue.delete_batch([m.receipt for m in batch])
    return bodies
