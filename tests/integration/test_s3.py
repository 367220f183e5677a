"""rayqueue on a real S3 server (SeaweedFS): end to end through Ray actors, across a
full Ray restart, and through a storage outage."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster
from support.queues import drain_bodies, wait_in_sync
from support.waiting import kill_and_wait

import rayqueue
from rayqueue.errors import PartitionUnavailable, StorageUnavailable
from rayqueue.storage import ObjectStore


def s3_options(seaweed: Any) -> dict[str, Any]:
    # One botocore attempt per call: rayqueue's own retries bound the outage time.
    return {**seaweed.storage_options, "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}


def start(ray_starter: Any, seaweed: Any, namespace: str) -> None:
    # The region reaches the actors' processes through the job's environment.
    ray_starter(namespace, runtime_env={"env_vars": seaweed.env_vars})


def test_round_trip_through_actors_and_a_ray_restart(seaweed, ray_starter):
    storage = seaweed.url(f"e2e-{uuid.uuid4().hex[:8]}")
    options = s3_options(seaweed)
    start(ray_starter, seaweed, "s3-e2e")
    try:
        client = rayqueue.connect(storage=storage, storage_options=options, namespace="s3-e2e")
        queue = client.create_queue("on-s3", max_messages=1000, max_message_bytes=1000, partitions=2)
        ids = queue.send_batch([f"m{i}" for i in range(10)]) + [queue.send(b"single", message_id="once")]
        received = []
        while batch := queue.receive(3):
            received += batch
            if len(received) >= 4:
                break
        queue.delete_batch([m.receipt for m in received[:4]])
        config = queue.config
    finally:
        ray.shutdown()

    start(ray_starter, seaweed, "s3-e2e")
    try:
        client = rayqueue.connect(storage=storage, storage_options=options, namespace="s3-e2e")
        queue = client.get_queue("on-s3")
        assert queue.config == config
        assert queue.send(b"retry", message_id="once") == "once"  # remembered across the restart
        back = []
        while batch := queue.receive(100):
            back += batch
        assert sorted(m.id for m in back) == sorted(set(ids) - {m.id for m in received[:4]})
        client.delete_queue("on-s3")
        assert ObjectStore(storage, options).list("queues/") == []
    finally:
        ray.shutdown()


def test_storage_outage_fails_calls_clearly_and_loses_nothing(seaweed, ray_starter):
    # With storage down a leader can neither store a send nor confirm that it still leads
    # (so it serves no receive: a successor might be serving): calls fail with
    # StorageUnavailable, in bounded time, and once storage is back nothing acknowledged
    # is missing.
    storage = seaweed.url(f"outage-{uuid.uuid4().hex[:8]}")
    start(ray_starter, seaweed, "s3-outage")
    try:
        client = rayqueue.connect(storage=storage, storage_options=s3_options(seaweed), namespace="s3-outage")
        queue = client.create_queue("outage", max_messages=1000, max_message_bytes=100)
        before = set(queue.send_batch([f"before{i}" for i in range(5)]))
        seaweed.stop()
        try:
            started = time.monotonic()
            with pytest.raises((StorageUnavailable, PartitionUnavailable)):
                queue.send(b"during the outage")
            with pytest.raises((StorageUnavailable, PartitionUnavailable)):
                queue.receive(10)
            assert time.monotonic() - started < 120  # bounded, not a hang
        finally:
            seaweed.start()
        after = queue.send(b"after the outage")
        received: dict[str, bytes] = {}
        deadline = time.monotonic() + 60
        while set(received) < before | {after} and time.monotonic() < deadline:
            for message in queue.receive(10, wait_s=1.0):
                received[message.id] = message.body
                queue.delete(message.receipt)
        assert set(received) >= before | {after}
        assert received[after] == b"after the outage"
    finally:
        ray.shutdown()


def test_replicas_hold_what_an_outage_kept_from_storage_through_a_failover(seaweed):
    # The replica runs on another node than its leader (two nodes), so its word suffices.
    storage = seaweed.url(f"replicas-{uuid.uuid4().hex[:8]}")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(
        address=cluster.address,
        namespace="s3-replicas",
        log_to_driver=False,
        runtime_env={"env_vars": seaweed.env_vars},
    )
    try:
        client = rayqueue.connect(storage=storage, storage_options=s3_options(seaweed), namespace="s3-replicas")
        queue = client.create_queue("held", max_messages=1000, max_message_bytes=100, replicas=1, durability="replicas")
        queue.send(b"stored")
        # Sends are acknowledged before they are stored only once the coordinator has
        # recorded the replica as in sync (it may then be promoted).
        wait_in_sync(queue, 1)
        assert queue.stats().partitions[0].replicas_on_leader_node == 0
        seaweed.stop()
        try:
            # Acknowledged once the replica holds them; storage is down.
            held = queue.send_batch([f"held{i}" for i in range(5)])
            kill_and_wait(queue._target.route.partitions[0])
        finally:
            seaweed.start()
        queue.send(b"after")  # the replica takes over, stores what it held, and serves
        assert drain_bodies(queue) == [b"stored"] + [f"held{i}".encode() for i in range(5)] + [b"after"]
        assert len(held) == 5
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_replica_on_the_leaders_node_is_no_second_copy(seaweed, ray_starter):
    # One node: the replica shares it with its leader and would go with it, so a send
    # waits for storage, however long it is down, and is stored once acknowledged: the
    # leader and the replica may then die together (as the node would) and lose nothing.
    storage = seaweed.url(f"one-node-{uuid.uuid4().hex[:8]}")
    start(ray_starter, seaweed, "s3-one-node")
    try:
        client = rayqueue.connect(storage=storage, storage_options=s3_options(seaweed), namespace="s3-one-node")
        queue = client.create_queue(
            "shared", max_messages=1000, max_message_bytes=100, replicas=1, durability="replicas"
        )
        queue.send(b"stored")
        wait_in_sync(queue, 1)
        assert queue.stats().partitions[0].replicas_on_leader_node == 1
        with ThreadPoolExecutor(1) as pool:
            seaweed.stop()
            try:
                sending = pool.submit(queue.send, b"during the outage")
                time.sleep(5)
                # The replica holds it; that is not enough. If it is done, say how it ended.
                assert not sending.done(), sending.exception() or f"acknowledged as {sending.result()}"
            finally:
                seaweed.start()
            sending.result(timeout=120)
        partition = [name for name in ray.util.list_named_actors() if name.startswith("rayqueue.shared.")]
        assert len(partition) == 2  # the leader and its replica, as a lost node would take them
        # Both at once, and dead before the drain: a dying leader still answers its socket
        # for a few milliseconds, and its successor refuses the receipts it handed out.
        kill_and_wait(*(ray.get_actor(name, namespace="s3-one-node") for name in partition))
        assert drain_bodies(queue) == [b"stored", b"during the outage"]
    finally:
        ray.shutdown()
