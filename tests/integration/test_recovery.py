"""Recovery from storage: a killed partition, a killed coordinator, a whole new Ray."""

from __future__ import annotations

import os
import signal

import pytest
import ray

import rayqueue
from rayqueue.errors import InvalidReceipt


def partition_actor(queue: rayqueue.Queue, partition: int = 0):
    return queue._target.route.partitions[partition]  # the leader's actor handle


def test_killed_partition_process_recovers_everything_acknowledged(client, queue_name):
    queue = client.create_queue(queue_name, max_messages=1000, max_message_bytes=100)
    sent = queue.send_batch([f"m{i}" for i in range(20)])
    received = queue.receive(5)
    queue.delete_batch([m.receipt for m in received[:3]])
    actor = partition_actor(queue)
    pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)  # the process dies, Ray starts it again

    after = queue.send(b"after restart")  # the handle retries through the restart
    # Receipts handed out before the restart are stale now, not silently accepted.
    with pytest.raises(InvalidReceipt):
        queue.delete(received[4].receipt)
    bodies = []
    while batch := queue.receive(100):
        bodies += [m.body for m in batch]
        queue.delete_batch([m.receipt for m in batch])
    # Deleted ones never come back; undeleted ones, in flight or not, all do.
    assert bodies == [f"m{i}".encode() for i in range(3, 20)] + [b"after restart"]
    assert after not in sent


def test_killed_coordinator_rebuilds_its_catalog(client, queue_name):
    queue = client.create_queue(queue_name, max_messages=100, max_message_bytes=100, partitions=2)
    coordinator = ray.get_actor("rayqueue-coordinator")
    ray.kill(coordinator, no_restart=False)
    queue.send(b"while the coordinator restarts")  # partitions do not need it
    assert queue_name in client.list_queues()
    assert client.get_queue(queue_name).config == queue.config
    assert [m.body for m in queue.receive(10)] == [b"while the coordinator restarts"]
