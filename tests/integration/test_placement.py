"""Where replicas run, on a Ray cluster that grows: a replica that had to share its
leader's node (no other node was there) moves once another node joins."""

from __future__ import annotations

import ray
from ray.cluster_utils import Cluster
from support.queues import drain_bodies, wait_in_sync
from support.waiting import wait_for

import rayqueue


def test_a_replica_on_its_leaders_node_moves_once_another_node_joins(tmp_path):
    # On the leader's node the replica is no second copy: replicas mode waits for
    # storage until it runs elsewhere.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    ray.init(address=cluster.address, namespace="placement", log_to_driver=False)
    try:
        client = rayqueue.connect(storage=f"file://{tmp_path}", namespace="placement")
        queue = client.create_queue("grows", max_messages=100, max_message_bytes=100, replicas=1, durability="replicas")
        sent = [queue.send(b"alone")]
        wait_in_sync(queue, 1)
        assert queue.stats().partitions[0].replicas_on_leader_node == 1

        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        sent += [queue.send(f"m{i}".encode()) for i in range(20)]  # sends go on while it moves
        assert wait_for(lambda: placed_apart(queue), 60, 0.2)

        sent.append(queue.send(b"apart"))
        assert drain_bodies(queue) == [b"alone"] + [f"m{i}".encode() for i in range(20)] + [b"apart"]
        assert len(set(sent)) == 22
    finally:
        ray.shutdown()
        cluster.shutdown()


def placed_apart(queue: rayqueue.Queue) -> bool:
    (partition,) = queue.stats().partitions
    return partition.replicas_in_sync == 1 and partition.replicas_on_leader_node == 0
