"""The Arrow bulk path: send Arrow columns, receive one Arrow table, delete by its receipt column."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rayqueue.errors import InvalidArgument, InvalidReceipt, MessageTooLarge

COLUMNS = ["id", "body", "receipt", "receive_count", "sent_at", "attributes", "key"]


def test_arrow_round_trip_in_order(queue):
    ids = queue.send_batch(pa.array([f"m{i}".encode() for i in range(50)], pa.binary()))
    assert isinstance(ids, pa.Array) and len(ids) == 50

    table = queue.receive_batch(1000)

    assert table.column_names == COLUMNS
    assert table.column("id").to_pylist() == ids.to_pylist()
    assert table.column("body").to_pylist() == [f"m{i}".encode() for i in range(50)]
    assert table.column("receive_count").to_pylist() == [1] * 50
    assert queue.stats().in_flight == 50
    queue.delete_batch(table.column("receipt"))
    stats = queue.stats()
    assert stats.visible == stats.in_flight == 0


def test_string_array_and_table_with_keys_and_attributes(client, queue_name):
    queue = client.create_queue(queue_name, max_messages=1000, max_message_bytes=100, partitions=3)
    attributes = pa.array([[("n", str(i))] for i in range(30)], pa.map_(pa.string(), pa.string()))
    table = pa.table(
        {
            "body": pa.array([f"{k}{i}" for i in range(10) for k in "abc"]),
            "key": pa.array([k for _ in range(10) for k in "abc"]),
            "attributes": attributes,
        }
    )
    queue.send_batch(table)
    queue.send_batch(pa.array(["plain"]))
    received = []
    while (batch := queue.receive_batch(7)).num_rows:
        received.append(batch)
        queue.delete_batch(batch.column("receipt"))
    rows = pa.concat_tables(received).to_pylist()
    by_key: dict = {}
    for row in rows:
        by_key.setdefault(row["key"], []).append(row["body"].decode())
    assert by_key == {None: ["plain"], **{k: [f"{k}{i}" for i in range(10)] for k in "abc"}}
    assert sorted(int(dict(r["attributes"])["n"]) for r in rows if r["key"]) == list(range(30))


def test_arrow_limits(queue):
    with pytest.raises(MessageTooLarge) as caught:
        queue.send_batch(pa.array([b"ok", b"x" * 1025]))
    assert caught.value.index == 1
    with pytest.raises(InvalidArgument, match="null"):
        queue.send_batch(pa.array([b"ok", None], pa.binary()))
    with pytest.raises(InvalidArgument, match="body"):
        queue.send_batch(pa.table({"payload": [b"x"]}))
    with pytest.raises(InvalidArgument, match="type"):
        queue.send_batch(pa.table({"body": [1, 2]}))
    with pytest.raises(InvalidArgument):
        queue.send_batch(pa.array([b"x"] * 10_001))
    assert queue.stats().visible == 0


def test_empty_receive_batch_has_the_columns(queue):
    table = queue.receive_batch(10)
    assert table.num_rows == 0 and table.column_names == COLUMNS


def test_receipt_column_with_a_stale_receipt_deletes_nothing(queue):
    queue.send_batch(pa.array([b"a", b"b"]))
    table = queue.receive_batch(10, visibility_timeout_s=0)
    again = queue.receive_batch(10)  # visibility 0: delivered again, the first receipts are stale
    with pytest.raises(InvalidReceipt):
        queue.delete_batch(table.column("receipt"))
    queue.delete_batch(again.column("receipt"))
    assert queue.stats().visible == 0
