"""A whole new Ray on the same storage finds every queue and message as they were."""

from __future__ import annotations

import uuid

import ray

import rayqueue


def test_everything_is_back_after_ray_restarts(tmp_path, ray_starter):
    storage = f"file://{tmp_path}"
    namespace = f"restart-{uuid.uuid4().hex[:6]}"
    ray_starter(namespace)
    try:
        client = rayqueue.connect(storage=storage, namespace=namespace)
        one = client.create_queue("one", max_messages=100, max_message_bytes=100, visibility_timeout_s=5)
        two = client.create_queue("two", max_messages=50, max_message_bytes=10, partitions=3, retention_s=3600)
        one.send_batch([f"a{i}" for i in range(10)])
        two.send_batch([f"b{i}" for i in range(9)])
        one.delete_batch([m.receipt for m in one.receive(4)])
        one.receive(2)  # in flight when Ray goes away: must come back
        configs = {"one": one.config, "two": two.config}
    finally:
        ray.shutdown()

    ray_starter(namespace)
    try:
        client = rayqueue.connect(storage=storage, namespace=namespace)
        assert client.list_queues() == ["one", "two"]
        one, two = client.get_queue("one"), client.get_queue("two")
        assert {"one": one.config, "two": two.config} == configs
        assert [m.body for m in one.receive(100)] == [f"a{i}".encode() for i in range(4, 10)]
        bodies = []
        while batch := two.receive(100):
            bodies += [m.body for m in batch]
        assert sorted(bodies) == sorted(f"b{i}".encode() for i in range(9))
        assert one.stats().in_flight == 6
    finally:
        ray.shutdown()
