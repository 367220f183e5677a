"""The storage contract rayqueue relies on, written once and run on every backend.

``store`` (see conftest.py) is an empty ObjectStore on memory://, file:// or a
real S3 server. What holds here must hold on all three, because partitions and
the coordinator are written against this contract, not against a backend.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from support.ports import free_ports
from support.seaweed import SeaweedServer

from rayqueue import defaults
from rayqueue.client.rows import IdSource, send_rows
from rayqueue.config import QueueConfig
from rayqueue.errors import ObjectExists, PartitionFenced, StorageCorrupt, StorageUnavailable
from rayqueue.message import encode_receipt
from rayqueue.partition.service import PartitionService
from rayqueue.schemas import SEGMENT_SCHEMA
from rayqueue.storage import CatalogStore, ObjectStore, PartitionStore, RecoveredPartition

#: Writers racing for one name, and how many names they race for.
RACERS = 8
RACES = 3

# ----------------------------------------------------------- put-once objects


def test_put_once_then_get_returns_the_bytes(store: ObjectStore) -> None:
    data = bytes(range(256)) * 16
    store.put_once("a/object", data)
    assert store.get("a/object") == data
    assert store.size("a/object") == len(data)


def test_empty_object_round_trips(store: ObjectStore) -> None:
    store.put_once("empty", b"")
    assert store.get("empty") == b""
    with pytest.raises(ObjectExists):
        store.put_once("empty", b"not empty")


def test_put_once_again_with_the_same_bytes_is_the_same_write(store: ObjectStore) -> None:
    # A writer that retries a put whose reply it lost (after its own retries gave up)
    # finds its object: that is success, not someone else's object.
    store.put_once("a/segment", b"payload")
    store.put_once("a/segment", b"payload")
    assert store.get("a/segment") == b"payload"


def test_put_once_on_an_existing_name_raises_and_keeps_the_first(store: ObjectStore) -> None:
    store.put_once("a/object", b"first")
    with pytest.raises(ObjectExists) as caught:
        store.put_once("a/object", b"second")
    assert caught.value.path.endswith("a/object")
    assert store.get("a/object") == b"first"


@pytest.mark.parametrize("race", range(RACES))
def test_concurrent_put_once_has_exactly_one_winner(store: ObjectStore, race: int) -> None:
    start = threading.Barrier(RACERS)
    won: list[int] = []
    lost: list[int] = []
    failed: list[BaseException] = []

    def write(writer: int) -> None:
        start.wait()
        try:
            store.put_once("contested", b"writer-%d" % writer)
            won.append(writer)
        except ObjectExists:
            lost.append(writer)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            failed.append(error)

    threads = [threading.Thread(target=write, args=(writer,)) for writer in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failed == []
    assert len(won) == 1 and len(lost) == RACERS - 1
    assert store.get("contested") == b"writer-%d" % won[0]


def test_get_of_a_missing_name_raises_file_not_found(store: ObjectStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.get("missing")
    store.put_once("a/present", b"x")
    with pytest.raises(FileNotFoundError):
        store.get("a/missing")


# -------------------------------------------------------------------- listing


def test_list_is_sorted_relative_and_only_under_the_prefix(store: ObjectStore) -> None:
    for name in ["a/3", "a/1", "a/sub/2", "ab/1", "b/1"]:
        store.put_once(name, name.encode())
    assert store.list("a/") == ["a/1", "a/3", "a/sub/2"]
    assert store.list("a") == ["a/1", "a/3", "a/sub/2"]
    assert store.list("a/sub/") == ["a/sub/2"]
    assert store.list("") == ["a/1", "a/3", "a/sub/2", "ab/1", "b/1"]


def test_list_of_a_missing_prefix_is_empty(store: ObjectStore) -> None:
    assert store.list("") == []
    assert store.list("nothing/") == []
    store.put_once("a/1", b"x")
    assert store.list("nothing/") == []


def test_list_is_empty_once_the_last_object_is_deleted(store: ObjectStore) -> None:
    # Some S3 servers keep listing a "directory" whose objects are all gone.
    store.put_once("a/sub/1", b"x")
    store.put_once("a/2", b"x")
    store.delete(["a/sub/1", "a/2"])
    assert store.list("a/") == []
    assert store.list("") == []


# ------------------------------------------------------------------- deleting


def test_delete_removes_present_names_and_ignores_missing_ones(store: ObjectStore) -> None:
    for name in ["a/1", "a/2", "a/3"]:
        store.put_once(name, b"x")
    store.delete(["a/1", "a/missing", "a/3"])
    assert store.list("a/") == ["a/2"]
    store.delete(["a/1"])
    store.delete([])
    assert store.list("a/") == ["a/2"]


def test_a_deleted_name_can_be_created_again(store: ObjectStore) -> None:
    store.put_once("a/1", b"old")
    store.delete(["a/1"])
    store.put_once("a/1", b"new")
    assert store.get("a/1") == b"new"


def test_delete_prefix_removes_everything_below_and_nothing_else(store: ObjectStore) -> None:
    for name in ["a/1", "a/sub/2", "a/sub/deeper/3", "ab/1", "b/1"]:
        store.put_once(name, b"x")
    store.delete_prefix("a/")
    assert store.list("a/") == []
    assert store.list("") == ["ab/1", "b/1"]
    store.delete_prefix("a/")  # already gone: no error
    store.delete_prefix("never/")
    store.put_once("a/1", b"again")  # nothing left behind blocks a new create
    assert store.get("a/1") == b"again"


# ----------------------------------------------------------------- child stores


def test_child_stores_share_the_backend(store: ObjectStore) -> None:
    child = store.child("queues/orders/")
    child.put_once("segments/1", b"from child")
    store.put_once("queues/orders/segments/2", b"from parent")
    assert store.get("queues/orders/segments/1") == b"from child"
    assert child.get("segments/2") == b"from parent"
    assert child.list("segments/") == ["segments/1", "segments/2"]
    with pytest.raises(ObjectExists):
        child.put_once("segments/2", b"again")
    grandchild = child.child("segments")
    assert grandchild.list("") == ["1", "2"]
    child.delete_prefix("segments/")
    assert store.list("") == []


# ------------------------------------------------------- partitions and catalog


def segment(first: int, bodies: list[bytes]) -> pa.RecordBatch:
    n = len(bodies)
    return pa.record_batch(
        [
            pa.array(range(first, first + n), pa.int64()),
            pa.array([f"id-{first + i}" for i in range(n)], pa.string()),
            pa.array(bodies, pa.binary()),
            pa.nulls(n, pa.string()),
            pa.nulls(n, SEGMENT_SCHEMA.field("attributes").type),
            pa.array([datetime(2024, 1, 1, tzinfo=UTC)] * n, SEGMENT_SCHEMA.field("sent_at").type),
        ],
        schema=SEGMENT_SCHEMA,
    )


def bodies_of(recovered: RecoveredPartition) -> list[bytes]:
    return [body for _, table in recovered.segments for body in table.column("body").to_pylist()]


def test_partition_store_round_trip(store: ObjectStore) -> None:
    writer = PartitionStore(store, "orders", 3, "u")
    assert writer.take_over().segments == []
    writer.write_segment(segment(0, [b"a", b"b"]))
    writer.write_segment(segment(2, [b"c"]))
    writer.write_deletes(np.array([1], np.int64), seq=0)
    writer.write_deletes(np.array([0, 1], np.int64), seq=1)

    recovered = PartitionStore(store, "orders", 3, "u").take_over()
    assert bodies_of(recovered) == [b"a", b"b", b"c"]
    assert recovered.deleted_offsets.tolist() == [0, 1]
    assert (recovered.next_offset, recovered.next_delete_seq) == (3, 2)
    empty = PartitionStore(store, "orders", 4, "u")
    assert empty.take_over().segments == [] and empty.objects_read == 0


def test_a_leader_that_was_taken_over_is_fenced(store: ObjectStore) -> None:
    old = PartitionStore(store, "orders", 0, "u")
    old.take_over()
    old.write_segment(segment(0, [b"acknowledged"]))
    new = PartitionStore(store, "orders", 0, "u")
    new.take_over()
    assert new.epoch > old.epoch
    with pytest.raises(PartitionFenced):
        old.write_segment(segment(1, [b"never acknowledged"]))
    assert bodies_of(PartitionStore(store, "orders", 0, "u").take_over()) == [b"acknowledged"]


def test_catalog_newest_version_wins_and_versions_are_created_once(store: ObjectStore) -> None:
    catalog = CatalogStore(store)
    assert catalog.load() == (0, {})
    catalog.save(1, {"orders": {"partitions": 1}})
    catalog.save(2, {"orders": {"partitions": 2}})
    assert CatalogStore(store).load() == (2, {"orders": {"partitions": 2}})
    with pytest.raises(ObjectExists):
        CatalogStore(store).save(2, {"orders": {"partitions": 9}})
    assert CatalogStore(store).load() == (2, {"orders": {"partitions": 2}})


def test_catalog_prunes_old_versions(store: ObjectStore) -> None:
    catalog = CatalogStore(store)
    newest = defaults.CATALOG_VERSIONS_KEPT + 3
    for version in range(1, newest + 1):
        catalog.save(version, {"version": version})
    assert len(store.list("catalog/")) == defaults.CATALOG_VERSIONS_KEPT + 1
    assert catalog.load() == (newest, {"version": newest})


# --------------------------------------------------------- a queue, without Ray


def test_partition_service_survives_restarts(store: ObjectStore) -> None:
    """Send, restart, receive and delete, restart: the deleted message is gone, the rest are back."""
    config = QueueConfig.build(name="orders", max_messages=100, max_message_bytes=1024)
    ids = IdSource()

    def started() -> PartitionService:
        # A new store object too, as a restarted actor would have.
        service = PartitionService(config, 0, PartitionStore(store, config.name, 0, "u"))
        service.recover()
        return service

    async def send() -> None:
        service = started()
        await service.send(send_rows(config, [b"one", b"two", b"three"], ids.take(3)), dedup=False)

    async def receive_and_delete_two() -> list[bytes]:
        service = started()
        delivery = await service.receive(10, 0.0, 30.0)
        picked = delivery.filter(pc.equal(delivery.column("body"), b"two"))
        offsets = picked.column("offset").to_numpy()
        tokens = picked.column("token").to_numpy()
        receipts = [encode_receipt(0, int(o), int(t)) for o, t in zip(offsets, tokens)]
        await service.delete(offsets, tokens, receipts)
        return delivery.column("body").to_pylist()

    async def receive_after_restart() -> list[bytes]:
        service = started()
        return (await service.receive(10, 0.0, 30.0)).column("body").to_pylist()

    asyncio.run(send())
    assert asyncio.run(receive_and_delete_two()) == [b"one", b"two", b"three"]
    assert asyncio.run(receive_after_restart()) == [b"one", b"three"]


# ------------------------------------------------------ failures, on s3 only


def test_unreachable_s3_is_unavailable_not_a_lost_race() -> None:
    """A failed create must never pass for a lost race, whatever its message says.

    The name holds "412" and so does the error text that quotes it: a refused
    conditional create is recognised by the server's answer, not by text.
    """
    (port,) = free_ports(1)
    options = {
        "key": "nobody",
        "secret": "nothing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
        # One attempt per call: this is about what the error becomes, not how long it takes.
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    store = ObjectStore("s3://nowhere/contract", options, retry_s=0.1)
    with pytest.raises(StorageUnavailable):
        store.put_once("segments/00000000000000004120-0000000001.arrow", b"x")


def test_s3_objects_survive_a_server_crash(seaweed: SeaweedServer) -> None:
    """What put_once acknowledged is there after a SIGKILL and restart, through the same store."""
    store = ObjectStore(seaweed.url(f"crash-{uuid.uuid4().hex}"), seaweed.storage_options)
    store.put_once("segments/1", b"acknowledged")
    seaweed.kill()
    seaweed.start()
    assert store.get("segments/1") == b"acknowledged"
    with pytest.raises(ObjectExists):
        store.put_once("segments/1", b"again")
    assert store.list("segments/") == ["segments/1"]


# ------------------------------------------------------------------ fail closed


def test_exists_is_false_only_for_a_missing_object(store: ObjectStore) -> None:
    store.put_once("epochs/0000000001.claim", b"token")
    assert store.exists("epochs/0000000001.claim")
    assert not store.exists("epochs/0000000002.claim")
    assert not store.exists("nowhere/0000000002.claim")


def test_list_leaves_out_dotfiles(store: ObjectStore) -> None:
    store.put_once("epochs/0000000001.claim", b"token")
    store.put_once("epochs/.DS_Store", b"finder")
    assert store.list("epochs/") == ["epochs/0000000001.claim"]


def test_a_damaged_segment_stops_recovery_and_is_kept(store: ObjectStore) -> None:
    writer = PartitionStore(store, "orders", 0, "u")
    writer.take_over()
    name = writer.write_segment(segment(0, [b"a", b"b"]))
    path = f"queues/orders.u/0/{name}"
    damaged = bytearray(store.get(path))
    damaged[len(damaged) // 3] ^= 0x10
    store.delete([path])
    store.put_once(path, bytes(damaged))

    with pytest.raises(StorageCorrupt) as caught:
        list(PartitionStore(store, "orders", 0, "u").take_over().segments)
    assert caught.value.path.endswith(name)
    assert store.exists(path)


def _unreachable_s3() -> ObjectStore:
    (port,) = free_ports(1)
    options = {
        "key": "nobody",
        "secret": "nothing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    return ObjectStore("s3://nowhere/contract", options, retry_s=0.1)


def test_unreachable_s3_is_unavailable_not_absent_or_empty() -> None:
    """s3fs's own exists() answers False on errors for buckets; ours must raise."""
    store = _unreachable_s3()
    with pytest.raises(StorageUnavailable):
        store.exists("epochs/0000000002.claim")
    with pytest.raises(StorageUnavailable):
        store.list("epochs/")


def test_s3_refusing_access_is_unavailable_not_absent_or_empty(seaweed: SeaweedServer) -> None:
    options = {**seaweed.storage_options, "secret": "wrong"}
    store = ObjectStore(seaweed.url(f"denied-{uuid.uuid4().hex}"), options, retry_s=0.1)
    with pytest.raises(StorageUnavailable):
        store.exists("epochs/0000000002.claim")
    with pytest.raises(StorageUnavailable):
        store.list("epochs/")
