"""A partition process killed with SIGKILL in the middle of writes loses nothing acknowledged."""

from __future__ import annotations

import os
import signal
import threading
import time

import ray
from ray.exceptions import ActorUnavailableError

import rayqueue
from rayqueue.errors import RayQueueError


def partition_pid(queue: rayqueue.Queue) -> int:
    """The leader's process id, once Ray has (re)started it."""
    actor = queue._target.route.partitions[0]  # the leader's actor handle
    deadline = time.monotonic() + 60
    while True:
        try:
            return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
        except ActorUnavailableError:  # still restarting after the last kill
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_sigkill_during_sends_and_deletes_loses_no_acknowledged_message(client, queue_name):
    queue = client.create_queue(queue_name, max_messages=100_000, max_message_bytes=100)
    acknowledged: set[str] = set()
    deleted: set[str] = set()
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            try:
                acknowledged.update(queue.send_batch([f"m{i}-{j}" for j in range(20)]))
            except RayQueueError:
                pass  # not acknowledged: may or may not be stored
            i += 1

    def consume() -> None:
        while not stop.is_set():
            try:
                messages = queue.receive(10, wait_s=0.2)
                queue.delete_batch([m.receipt for m in messages])
                deleted.update(m.id for m in messages)
            except RayQueueError:
                pass  # e.g. receipts made stale by the restart

    workers = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(3):
            time.sleep(0.7)
            os.kill(partition_pid(queue), signal.SIGKILL)
        time.sleep(0.7)
    finally:
        stop.set()
        for worker in workers:
            worker.join()

    remaining: set[str] = set()
    while batch := queue.receive(1000):
        remaining.update(m.id for m in batch)
        queue.delete_batch([m.receipt for m in batch])
    assert len(acknowledged) > 100
    assert acknowledged - deleted - remaining == set()  # nothing acknowledged is lost
    assert remaining & deleted == set()  # nothing deleted comes back
