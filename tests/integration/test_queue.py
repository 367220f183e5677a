"""The five operations and their rules, on real partition actors and real files, once per
transport (the direct sockets and Ray actor calls: see ``each_transport``)."""

from __future__ import annotations

import asyncio
import glob
import os
import pickle
import time

import pytest
import ray
from support.queues import wait_in_sync

import rayqueue
from rayqueue.errors import (
    InvalidArgument,
    InvalidReceipt,
    MessageTooLarge,
    QueueAlreadyExists,
    QueueFull,
    QueueNotFound,
    StorageMismatch,
)

pytestmark = pytest.mark.usefixtures("each_transport")


def drain(queue: rayqueue.Queue, wait_s: float = 0.0) -> list[rayqueue.Message]:
    """Receive and delete until the queue answers empty."""
    out = []
    while batch := queue.receive(100, wait_s=wait_s):
        queue.delete_batch([m.receipt for m in batch])
        out += batch
    return out


# ------------------------------------------------------------------ queue lifecycle


def test_create_same_settings_returns_the_queue_and_other_settings_fail(client, queue_name):
    first = client.create_queue(queue_name, max_messages=10, max_message_bytes=100)
    again = client.create_queue(queue_name, max_messages=10, max_message_bytes=100)
    assert again.config == first.config
    with pytest.raises(QueueAlreadyExists, match="max_messages"):
        client.create_queue(queue_name, max_messages=11, max_message_bytes=100)
    assert queue_name in client.list_queues()
    assert client.get_queue(queue_name).config == first.config


def test_unknown_queue_is_queue_not_found(client):
    with pytest.raises(QueueNotFound):
        client.get_queue("no-such-queue")
    with pytest.raises(QueueNotFound):
        client.delete_queue("no-such-queue")


@pytest.mark.parametrize("name", ["", "a" * 81, "has space", "dot.ted", "ünï", "slash/y"])
def test_bad_queue_names_are_refused(client, name):
    with pytest.raises(InvalidArgument, match="name"):
        client.create_queue(name, max_messages=10, max_message_bytes=100)


def test_longest_name_is_accepted(client):
    name = "n" * 80
    client.create_queue(name, max_messages=10, max_message_bytes=100)
    assert name in client.list_queues()
    client.delete_queue(name)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_messages", 0),
        ("max_message_bytes", 0),
        ("max_message_bytes", 17 * 1024 * 1024),
        ("partitions", 0),
        ("visibility_timeout_s", -1),
        ("visibility_timeout_s", 43_201),
        ("retention_s", 59),
        ("retention_s", 15 * 24 * 3600),
        ("durability", "sometimes"),
    ],
)
def test_out_of_range_settings_quote_the_value(client, queue_name, setting, value):
    settings = {"max_messages": 10, "max_message_bytes": 100, setting: value}
    with pytest.raises(InvalidArgument, match=f"{setting} \\({value!r}\\)"):
        client.create_queue(queue_name, **settings)
    assert queue_name not in client.list_queues()


def test_delete_queue_removes_stored_data_and_old_handles_fail(client, queue_name, storage_url):
    queue = client.create_queue(queue_name, max_messages=10, max_message_bytes=100)
    queue.send(b"x")
    (folder,) = glob.glob(os.path.join(storage_url.removeprefix("file://"), "queues", f"{queue_name}.*"))
    assert os.listdir(folder)  # queues/<name>.<uid>: the queue's own prefix
    client.delete_queue(queue_name)
    assert not os.path.exists(folder)
    assert queue_name not in client.list_queues()
    with pytest.raises(QueueNotFound):
        queue.send(b"y")
    with pytest.raises(QueueNotFound):
        queue.receive()


def test_recreated_queue_starts_empty(client, queue_name):
    queue = client.create_queue(queue_name, max_messages=10, max_message_bytes=100)
    queue.send(b"old")
    client.delete_queue(queue_name)
    queue = client.create_queue(queue_name, max_messages=10, max_message_bytes=100)
    assert queue.receive(10) == []


def test_connecting_with_other_storage_is_refused(client, tmp_path):
    namespace = ray.get_runtime_context().namespace
    with pytest.raises(StorageMismatch):
        rayqueue.connect(storage=f"file://{tmp_path}", namespace=namespace)


# ------------------------------------------------------------------- send, receive


def test_round_trip_keeps_body_attributes_key_and_id(queue):
    before = time.time()
    message_id = queue.send("héllo", key="k1", attributes={"kind": "greeting", "empty": ""})
    (message,) = queue.receive(10)
    assert message.id == message_id
    assert message.body == "héllo".encode()
    assert message.attributes == {"kind": "greeting", "empty": ""}
    assert message.key == "k1"
    assert message.receive_count == 1
    assert before - 1 <= message.sent_at <= time.time() + 1
    queue.delete(message.receipt)
    assert queue.receive(10) == []


def test_one_partition_is_first_in_first_out(queue):
    sent = [queue.send(f"m{i}") for i in range(5)]
    sent += queue.send_batch([f"b{i}" for i in range(20)])
    received = [m.id for m in drain(queue)]
    assert received == sent


def test_message_too_large_stores_nothing_of_the_batch(queue):
    with pytest.raises(MessageTooLarge) as error:
        queue.send_batch([b"ok", b"x" * 1025, b"ok"])
    assert error.value.index == 1 and error.value.size == 1025
    queue.send(b"x" * 1024)  # exactly the limit is fine
    assert [m.body for m in drain(queue)] == [b"x" * 1024]


def test_queue_full_refuses_whole_batch_and_frees_room_on_delete(client, queue_name):
    queue = client.create_queue(queue_name, max_messages=5, max_message_bytes=100)
    queue.send_batch([b"a"] * 4)
    with pytest.raises(QueueFull):
        queue.send_batch([b"b"] * 2)
    assert queue.stats().visible == 4
    queue.send(b"c")
    with pytest.raises(QueueFull):
        queue.send(b"d")
    (first,) = queue.receive(1)
    with pytest.raises(QueueFull):  # received but not deleted still counts
        queue.send(b"d")
    queue.delete(first.receipt)
    queue.send(b"d")
    assert queue.stats().visible + queue.stats().in_flight == 5


def test_queue_full_counts_all_partitions(client, queue_name):
    queue = client.create_queue(queue_name, max_messages=7, max_message_bytes=100, partitions=3)
    for i in range(7):
        queue.send(f"{i}")
    with pytest.raises(QueueFull):
        queue.send(b"one too many")
    assert queue.stats().visible == 7


def test_batch_limits(queue):
    with pytest.raises(InvalidArgument, match="10000"):
        queue.send_batch([b"x"] * 10_001)
    with pytest.raises(InvalidArgument):
        queue.receive(0)
    with pytest.raises(InvalidArgument):
        queue.receive(10_001)
    with pytest.raises(InvalidArgument):
        queue.receive(1, wait_s=21)
    with pytest.raises(InvalidArgument):
        queue.send_batch(b"not a list")
    with pytest.raises(InvalidArgument):
        queue.send(12345)  # type: ignore[arg-type]
    assert queue.send_batch([]) == []
    assert queue.stats().visible == 0


def test_repeated_message_id_is_stored_once(queue):
    assert queue.send(b"first", message_id="order-1") == "order-1"
    assert queue.send(b"retry", message_id="order-1") == "order-1"
    (message,) = queue.receive(10)
    assert message.body == b"first"
    queue.delete(message.receipt)
    # Within the dedup window even a deleted message's id is remembered.
    queue.send(b"late retry", message_id="order-1")
    assert queue.receive(10) == []


def test_long_poll_returns_when_a_message_arrives(queue):
    @ray.remote
    def send_later(q: rayqueue.Queue) -> str:
        time.sleep(0.5)
        return q.send(b"late")

    pending = send_later.remote(queue)
    started = time.monotonic()
    messages = queue.receive(5, wait_s=15)
    assert [m.body for m in messages] == [b"late"]
    assert time.monotonic() - started < 10  # woke on arrival, not at the end of the wait
    assert ray.get(pending) == messages[0].id


def test_long_poll_returns_empty_after_wait(queue):
    started = time.monotonic()
    assert queue.receive(5, wait_s=0.3) == []
    assert time.monotonic() - started >= 0.3


# ------------------------------------------------------------ visibility, receipts


def test_unacknowledged_message_comes_back_with_new_receipt(queue):
    queue.send(b"work")
    (first,) = queue.receive(1, visibility_timeout_s=0.2)
    assert queue.receive(1) == []  # hidden while in flight
    (second,) = queue.receive(1, wait_s=5)
    assert second.id == first.id and second.receive_count == 2
    assert second.receipt != first.receipt
    with pytest.raises(InvalidReceipt, match="latest"):
        queue.delete(first.receipt)
    queue.delete(second.receipt)
    queue.delete(second.receipt)  # twice is harmless
    assert queue.stats().visible == 0 and queue.stats().in_flight == 0


@pytest.mark.parametrize("receipt", ["", "garbage", "0.1", "0.x.y", "9.0.1", "0.-1.1", "0.0.0"])
def test_malformed_or_forged_receipts_are_invalid(queue, receipt):
    queue.send(b"x")
    with pytest.raises(InvalidReceipt):
        queue.delete(receipt)
    assert queue.stats().visible == 1


def test_forged_token_on_a_real_message_is_invalid(queue):
    queue.send(b"x")
    (message,) = queue.receive(1)
    partition, epoch, offset, token = message.receipt.split(".")
    forged = int(token) ^ 1 or 2  # well formed, not the token the partition handed out
    with pytest.raises(InvalidReceipt):
        queue.delete(f"{partition}.{epoch}.{offset}.{forged}")
    with pytest.raises(InvalidReceipt):
        queue.delete(f"{partition}.{epoch}.{int(offset) + 50}.{token}")
    assert queue.stats().in_flight == 1


def test_delete_batch_with_one_bad_receipt_deletes_nothing(queue):
    queue.send_batch([b"a", b"b"])
    messages = queue.receive(2)
    with pytest.raises(InvalidReceipt):
        queue.delete_batch([messages[0].receipt, "0.0.ffff"])
    assert queue.stats().in_flight == 2


def test_change_visibility(queue):
    queue.send(b"x")
    (message,) = queue.receive(1, visibility_timeout_s=60)
    queue.change_visibility(message.receipt, 0)
    (again,) = queue.receive(1)
    assert again.receive_count == 2
    with pytest.raises(InvalidReceipt):
        queue.change_visibility(message.receipt, 10)
    with pytest.raises(InvalidArgument):
        queue.change_visibility(again.receipt, -1)


def test_stats_are_exact(queue):
    queue.send_batch([b"12345"] * 10)
    received = queue.receive(4)
    queue.delete(received[0].receipt)
    stats = queue.stats()
    assert (stats.visible, stats.in_flight, stats.stored_bytes) == (6, 3, 45)


# ------------------------------------------------------------------- partitions


def test_many_partitions_deliver_every_message_once(client, queue_name):
    queue = client.create_queue(queue_name, max_messages=1000, max_message_bytes=100, partitions=3)
    sent = set(queue.send_batch([f"{i}" for i in range(30)]))
    sent |= {queue.send(f"single{i}") for i in range(30)}
    received = [m.id for m in drain(queue)]
    assert sorted(received) == sorted(sent)
    assert {p.partition for p in queue.stats().partitions} == {0, 1, 2}


def test_key_keeps_order_across_partitions(client, queue_name):
    queue = client.create_queue(queue_name, max_messages=1000, max_message_bytes=100, partitions=3)
    for i in range(10):
        for key in ("a", "b", "c"):
            queue.send(f"{key}{i}", key=key)
    by_key: dict[str, list[str]] = {}
    for message in drain(queue):
        by_key.setdefault(message.key, []).append(message.body.decode())
    assert by_key == {key: [f"{key}{i}" for i in range(10)] for key in "abc"}


def test_long_poll_over_partitions_finds_a_late_message(client, queue_name):
    queue = client.create_queue(queue_name, max_messages=100, max_message_bytes=100, partitions=3)

    @ray.remote
    def send_later(q: rayqueue.Queue) -> None:
        time.sleep(0.5)
        q.send(b"late")

    pending = send_later.remote(queue)
    messages = queue.receive(5, wait_s=15)
    ray.get(pending)
    assert [m.body for m in messages] == [b"late"]


# ------------------------------------------------------------- handles elsewhere


def test_handle_works_in_tasks_and_async_actors(queue):
    assert pickle.loads(pickle.dumps(queue)).config == queue.config

    @ray.remote
    def produce(q: rayqueue.Queue, n: int) -> list[str]:
        return [q.send(f"task-{i}") for i in range(n)]

    @ray.remote
    class Consumer:
        async def consume(self, q: rayqueue.Queue, n: int) -> list[bytes]:
            bodies: list[bytes] = []
            while len(bodies) < n:
                for m in await q.receive_async(10, wait_s=2):
                    await q.delete_async(m.receipt)
                    bodies.append(m.body)
            await q.send_async(b"from actor")
            await q.send_batch_async([b"batch from actor"])
            return bodies

    ids = ray.get([produce.remote(queue, 5), produce.remote(queue, 5)])
    consumer = Consumer.remote()
    bodies = ray.get(consumer.consume.remote(queue, 10))
    assert sorted(bodies) == sorted([f"task-{i}".encode() for i in range(5)] * 2)
    assert len({i for group in ids for i in group}) == 10
    assert sorted(m.body for m in drain(queue)) == [b"batch from actor", b"from actor"]


def test_async_twins_in_driver_event_loop(queue):
    async def main() -> list[bytes]:
        await queue.send_async(b"a")
        await queue.send_batch_async([b"b", b"c"])
        messages = await queue.receive_async(3, wait_s=1)
        await queue.change_visibility_async(messages[0].receipt, 30)
        await queue.delete_batch_async([m.receipt for m in messages])
        assert (await queue.stats_async()).visible == 0
        return [m.body for m in messages]

    assert asyncio.run(main()) == [b"a", b"b", b"c"]


def test_on_one_node_replicas_share_it_and_stats_say_so(client, queue_name):
    queue = client.create_queue(queue_name, max_messages=10, max_message_bytes=100, replicas=1)
    wait_in_sync(queue, 1)
    assert queue.stats().partitions[0].replicas_on_leader_node == 1


def test_durability_replicas_needs_a_replica(client, queue_name):
    with pytest.raises(InvalidArgument, match="replicas"):
        client.create_queue(queue_name, max_messages=10, max_message_bytes=100, durability="replicas")


def test_buffered_consumer_prefetches_and_batches_deletes(queue):
    sent = queue.send_batch([f"m{i}" for i in range(25)])
    got = []
    with queue.consumer(prefetch=10, delete_batch=4, flush_interval_s=60) as consumer:
        while (message := consumer.receive()) is not None:
            got.append(message.id)
            consumer.delete(message.receipt)
            if len(got) == 6:
                stats = queue.stats()
                assert stats.in_flight == 10 - 4  # ten fetched, one batch of four deletes flushed
        assert got == sent
    assert queue.stats().visible == queue.stats().in_flight == 0  # closing flushed the rest


def test_closing_a_buffered_consumer_gives_back_unreturned_messages(queue):
    queue.send_batch([b"a", b"b", b"c"])
    with queue.consumer(prefetch=3) as consumer:
        first = consumer.receive()
        consumer.delete(first.receipt)
    assert [m.body for m in queue.receive(10)] == [b"b", b"c"]
