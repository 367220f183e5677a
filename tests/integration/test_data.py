"""rayqueue.data on a local Ray: every row arrives once, and is deleted only after its work succeeded."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pytest
import ray
import ray.data

import rayqueue
from rayqueue.data import MESSAGE_SCHEMA, consume_dataset, delete_batch, read_dataset, write_dataset

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rayqueue.Client]:
    namespace = f"data-{uuid.uuid4().hex[:8]}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=namespace, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield rayqueue.connect(storage=f"file://{tmp_path_factory.mktemp('storage')}", namespace=namespace)
    finally:
        ray.shutdown()


@pytest.fixture
def queue(client: rayqueue.Client) -> Iterator[rayqueue.Queue]:
    name = f"data-{uuid.uuid4().hex[:8]}"
    yield client.create_queue(name, max_messages=10_000, max_message_bytes=64, partitions=2, visibility_timeout_s=2)
    client.delete_queue(name)


def rows(n: int) -> ray.data.Dataset:
    return ray.data.from_items([{"payload": f"row-{i}", "other": i} for i in range(n)], override_num_blocks=4)


def drain(queue: rayqueue.Queue) -> list[rayqueue.Message]:
    received: list[rayqueue.Message] = []
    while batch := queue.receive(1000):
        received += batch
    return received


def test_write_dataset_sends_every_row_once(queue: rayqueue.Queue):
    assert write_dataset(queue, rows(1500), column="payload", batch_size=200) == 1500
    bodies = [m.body for m in drain(queue)]
    assert sorted(bodies) == sorted(f"row-{i}".encode() for i in range(1500))


def test_write_dataset_raises_the_queue_error_not_a_ray_wrapper(client: rayqueue.Client, queue: rayqueue.Queue):
    with pytest.raises(rayqueue.InvalidArgument, match="no column 'body'"):
        write_dataset(queue, rows(10))
    small = client.create_queue(f"small-{uuid.uuid4().hex[:6]}", max_messages=5, max_message_bytes=64)
    try:
        with pytest.raises(rayqueue.QueueFull):
            write_dataset(small, rows(50), column="payload", batch_size=10)
    finally:
        client.delete_queue(small.name)


def test_read_dataset_gives_arrow_batches_and_deletes_nothing(queue: rayqueue.Queue):
    queue.send_batch([f"m{i}" for i in range(300)])
    dataset = read_dataset(queue, max_messages=1000, wait_s=0.2, batch_size=100)
    batches = list(dataset.iter_batches(batch_format="pyarrow", batch_size=None))
    table = pa.concat_tables(batches)
    assert table.schema == MESSAGE_SCHEMA
    assert sorted(table.column("body").to_pylist()) == sorted(f"m{i}".encode() for i in range(300))
    assert queue.stats().in_flight == 300  # received, not deleted

    assert delete_batch(queue, table) == 300
    assert queue.stats().stored == 0


def test_consume_dataset_deletes_each_batch_after_fn_returned(queue: rayqueue.Queue):
    write_dataset(queue, rows(2000), column="payload", batch_size=500)
    report = consume_dataset(queue, lambda batch: batch.num_rows, max_messages=5000, wait_s=0.3, batch_size=250)
    assert report.ok and report.processed == 2000 and report.failed == 0
    assert report.batches >= 8
    assert queue.stats().stored == 0
    assert queue.receive(10, wait_s=0.5) == []


def test_a_failing_batch_is_not_deleted_and_comes_back(queue: rayqueue.Queue):
    queue.send_batch([b"good"] * 300 + [b"poison"] + [b"good"] * 299)

    def fn(batch: pa.Table) -> None:
        if b"poison" in batch.column("body").to_pylist():
            raise ValueError("cannot handle poison")

    report = consume_dataset(queue, fn, max_messages=600, wait_s=0.3, batch_size=100, readers=1)
    assert report.processed + report.failed == 600
    assert 1 <= report.failed <= 100 and not report.ok  # only the poison's batch
    assert any("ValueError: cannot handle poison" in error for error in report.errors)
    assert queue.stats().stored == report.failed  # the failed batch is still there, in flight

    time.sleep(2.5)  # past the visibility timeout: the failed batch is delivered again
    again = drain(queue)
    assert len(again) == report.failed
    assert b"poison" in [m.body for m in again]
    assert all(m.receive_count == 2 for m in again)
    queue.delete_batch([m.receipt for m in again])


def test_consume_dataset_hands_fn_the_format_it_asks_for(queue: rayqueue.Queue):
    queue.send_batch([f"p{i}" for i in range(50)])

    def fn(frame) -> None:  # a pandas DataFrame
        assert list(frame.columns) == MESSAGE_SCHEMA.names
        assert (frame["receive_count"] == 1).all()

    report = consume_dataset(queue, fn, max_messages=50, wait_s=0.3, batch_format="pandas")
    assert report.ok and report.processed == 50


def test_bad_arguments_are_refused_before_any_receive(queue: rayqueue.Queue):
    with pytest.raises(rayqueue.InvalidArgument, match="max_messages"):
        read_dataset(queue, 0)
    with pytest.raises(rayqueue.InvalidArgument, match="batch_size"):
        consume_dataset(queue, print, max_messages=10, batch_size=20_000)
