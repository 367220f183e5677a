"""Replicas and failover on a multi-node Ray cluster on this machine: leaders killed,
worker processes killed, whole nodes removed; nothing acknowledged is lost."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.exceptions import RayTaskError
from support.queues import drain_bodies, wait_in_sync
from support.waiting import kill_and_wait

import rayqueue
from rayqueue.client.rows import send_rows
from rayqueue.errors import PartitionFenced


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, rayqueue.Client]]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(3):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="replicas", log_to_driver=False)
    storage = "file://" + str(tmp_path_factory.mktemp("storage"))
    try:
        yield cluster, rayqueue.connect(storage=storage, namespace="replicas")
    finally:
        ray.shutdown()
        cluster.shutdown()


def new_queue(client: rayqueue.Client, **settings: Any) -> rayqueue.Queue:
    """A queue whose replicas are all in sync (the tests below start from there)."""
    settings = {"max_messages": 10_000, "max_message_bytes": 1000, "replicas": 2, **settings}
    queue = client.create_queue(f"q-{uuid.uuid4().hex[:8]}", **settings)
    wait_in_sync(queue, settings["replicas"])
    return queue


def leader(queue: rayqueue.Queue, partition: int = 0) -> Any:
    return queue._target.route.partitions[partition]


def failovers() -> list[float]:
    return ray.get(ray.get_actor("rayqueue-coordinator").failover_seconds.remote())


def test_replicas_are_placed_on_other_nodes(cluster):
    _, client = cluster
    queue = new_queue(client, partitions=2)
    for partition in queue.stats().partitions:
        assert partition.replicas_in_sync == 2
        assert partition.replicas_on_leader_node == 0


@pytest.mark.parametrize("durability", ["storage", "replicas"])
def test_killed_leader_is_replaced_and_nothing_acknowledged_is_lost(cluster, durability):
    _, client = cluster
    queue = new_queue(client, durability=durability)
    sent = [f"m{i}".encode() for i in range(20)]
    queue.send_batch(sent[:10])
    for body in sent[10:]:
        queue.send(body)
    count = len(failovers())
    kill_and_wait(leader(queue))

    queue.send(b"after")  # reaches the promoted replica through a fresh route
    assert drain_bodies(queue) == sent + [b"after"]
    assert len(failovers()) == count + 1
    stats = queue.stats().partitions[0]
    assert stats.visible == stats.in_flight == 0


def test_killed_worker_process_of_a_leader_fails_over(cluster):
    _, client = cluster
    queue = new_queue(client, durability="replicas")
    queue.send_batch([b"a", b"b"])
    pid = ray.get(leader(queue).__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)
    queue.send(b"c")
    assert drain_bodies(queue) == [b"a", b"b", b"c"]


def test_removed_node_fails_over_its_leaders(cluster):
    ray_cluster, client = cluster
    queue = new_queue(client, partitions=4, durability="replicas")
    head = ray_cluster.head_node.node_id
    nodes = {node.node_id: node for node in ray_cluster.worker_nodes}
    on_workers = [p for p in range(4) if ray.get(leader(queue, p).node_id.remote()) in nodes]
    assert on_workers, "every leader landed on the head node"
    victim_partition = on_workers[0]
    victim = ray.get(leader(queue, victim_partition).node_id.remote())
    assert victim != head
    queue.send_batch([f"before{i}" for i in range(40)])
    ray_cluster.remove_node(nodes[victim])
    try:
        queue.send_batch([f"after{i}" for i in range(40)])
        bodies = drain_bodies(queue)
        assert sorted(bodies) == sorted(
            [f"before{i}".encode() for i in range(40)] + [f"after{i}".encode() for i in range(40)]
        )
    finally:
        ray_cluster.add_node(num_cpus=1)  # give the next tests their node back
        ray_cluster.wait_for_nodes()


def test_killed_replica_is_replaced(cluster):
    _, client = cluster
    queue = new_queue(client)
    name = ray.get(leader(queue).in_sync_replicas.remote())[0]
    ray.kill(ray.get_actor(name), no_restart=True)
    queue.send(b"x")  # the leader notices as it replicates... or the health check does
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        in_sync = ray.get(leader(queue).in_sync_replicas.remote())
        if len(in_sync) == 2 and name not in in_sync:
            break
        time.sleep(0.2)
    assert len(in_sync) == 2 and name not in in_sync
    assert drain_bodies(queue) == [b"x"]


def test_a_replaced_leader_that_still_runs_acknowledges_nothing(cluster):
    """A leader whose replica was promoted behind its back (as when Ray declared its
    node dead but its process lives on, reachable): the replica refuses its writes,
    so it acknowledges nothing, and from then on it serves nothing."""
    _, client = cluster
    queue = new_queue(client, replicas=1, durability="replicas")
    queue.send(b"before")
    old = leader(queue)
    (replica_name,) = ray.get(old.in_sync_replicas.remote())
    replica = ray.get_actor(replica_name)
    ray.get(replica.promote.remote())

    rows = send_rows(queue.config, [b"after"], ["after-id"])
    for call in (lambda: old.send.remote(rows, False), lambda: old.receive.remote(10, 0.0, None)):
        with pytest.raises(RayTaskError) as caught:
            ray.get(call())
        assert isinstance(caught.value.cause, PartitionFenced)
    delivered = ray.get(replica.receive.remote(10, 0.0, None))
    assert delivered.column("body").to_pylist() == [b"before"]
