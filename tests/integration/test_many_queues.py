"""Many small queues share a few host actors: each still its own partition (log, storage
prefix, epoch, failover unit), but not a ~100 MiB process each."""

from __future__ import annotations

import os
import time

import psutil
import pytest
import ray
from support.waiting import kill_and_wait

import rayqueue
from rayqueue import defaults


def create_many(client: rayqueue.Client, prefix: str, count: int) -> tuple[list[rayqueue.Queue], float]:
    started = time.monotonic()
    queues = [
        client.create_queue(f"{prefix}-{i}", max_messages=100, max_message_bytes=100, replicas=1, hosting="shared")
        for i in range(count)
    ]
    return queues, time.monotonic() - started


def hosts_memory(namespace: str) -> tuple[list[int], int]:
    """Partitions each shared host holds, and the hosts' own memory (USS) together."""
    hosts = [ray.get_actor(f"rayqueue.host.{i}", namespace=namespace) for i in range(defaults.SHARED_HOSTS)]
    found = ray.get([host.__ray_call__.remote(lambda self: (os.getpid(), self.count())) for host in hosts])
    return [count for _, count in found], sum(psutil.Process(pid).memory_full_info().uss for pid, _ in found)


def check(queues: list[rayqueue.Queue], namespace: str, seconds: float) -> None:
    for queue in queues[:: max(1, len(queues) // 20)]:
        queue.send(queue.name)
        (message,) = queue.receive(1)
        assert message.body == queue.name.encode()
        queue.delete(message.receipt)
    counts, memory = hosts_memory(namespace)
    partitions = 2 * len(queues)  # a leader and a replica each
    assert sum(counts) >= partitions
    assert all(counts)  # spread over every host
    print(
        f"{len(queues)} queues in {seconds:.1f} s ({seconds / len(queues) * 1000:.0f} ms each); "
        f"{defaults.SHARED_HOSTS} host processes, {memory >> 20} MiB together, "
        f"{memory / partitions / 1024:.0f} KiB per hosted partition"
    )


def test_a_hundred_queues_fit_in_a_few_processes(client):
    namespace = ray.get_runtime_context().namespace
    queues, seconds = create_many(client, "small", 100)
    check(queues, namespace, seconds)


def test_killed_host_fails_its_partitions_over_to_replicas_on_other_hosts(client):
    namespace = ray.get_runtime_context().namespace
    queues, _ = create_many(client, "hosted", 8)
    for queue in queues:
        queue.send(b"kept")
    kill_and_wait(ray.get_actor("rayqueue.host.0", namespace=namespace), no_restart=False)  # Ray restarts it empty
    for queue in queues:
        queue.send(b"after")
        bodies = []
        while batch := queue.receive(10):
            bodies += [m.body for m in batch]
            queue.delete_batch([m.receipt for m in batch])
        assert bodies == [b"kept", b"after"], queue.name


@pytest.mark.slow
def test_a_thousand_queues_fit_on_one_node(client):
    namespace = ray.get_runtime_context().namespace
    queues, seconds = create_many(client, "many", 1000)
    check(queues, namespace, seconds)
