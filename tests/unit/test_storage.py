"""Storage: put-once objects, retries, the on-disk format, partition objects, the catalog.

The ObjectStore contract runs on memory:// and file:// alike.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from rayqueue import defaults
from rayqueue.client.rows import IdSource, send_rows
from rayqueue.config import QueueConfig
from rayqueue.errors import ObjectExists, StorageCorrupt, StorageUnavailable
from rayqueue.partition.log import PartitionLog
from rayqueue.storage import CatalogStore, ObjectStore, PartitionStore, RecoveredPartition, format

CONFIG = QueueConfig.build(name="orders", max_messages=1000, max_message_bytes=1024)
IDS = IdSource()
T0 = 1_700_000_000.0


def make_segment(bodies: list[bytes], first_offset: int = 0) -> pa.RecordBatch:
    log = PartitionLog(0, quota=1000, retention_s=3600.0, dedup_window_s=300.0)
    log.next_offset = first_offset
    return log.stamp(send_rows(CONFIG, bodies, IDS.take(len(bodies))), T0)


# ------------------------------------------------------------- ObjectStore


def test_put_once_then_get_returns_the_content(storage_url):
    store = ObjectStore(storage_url)

    store.put_once("a/b/object", b"payload")

    assert store.get("a/b/object") == b"payload"


def test_second_put_once_raises_object_exists_and_keeps_content(storage_url):
    store = ObjectStore(storage_url)
    store.put_once("object", b"first")

    with pytest.raises(ObjectExists) as caught:
        store.put_once("object", b"second")

    assert caught.value.path.endswith("object")
    assert store.get("object") == b"first"


def test_put_once_is_create_only_across_store_instances(storage_url):
    ObjectStore(storage_url).put_once("object", b"first")

    with pytest.raises(ObjectExists):
        ObjectStore(storage_url).put_once("object", b"second")


def test_empty_object_round_trips(storage_url):
    store = ObjectStore(storage_url)
    store.put_once("empty", b"")

    assert store.get("empty") == b""
    assert store.list("") == ["empty"]


def test_list_returns_names_under_prefix_sorted(storage_url):
    store = ObjectStore(storage_url)
    for name in ["segs/003", "segs/001", "segs/sub/002", "other/000"]:
        store.put_once(name, b"x")

    assert store.list("segs/") == ["segs/001", "segs/003", "segs/sub/002"]
    assert store.list("") == ["other/000", "segs/001", "segs/003", "segs/sub/002"]


def test_list_of_missing_prefix_is_empty(storage_url):
    assert ObjectStore(storage_url).list("nothing/here/") == []


def test_list_prefix_is_a_folder_not_a_string_prefix(storage_url):
    store = ObjectStore(storage_url)
    store.put_once("queues/a/0/x", b"x")
    store.put_once("queues/ab/0/y", b"y")

    assert store.list("queues/a/") == ["queues/a/0/x"]
    assert store.list("queues/a") == ["queues/a/0/x"]


def test_list_ignores_temporary_files(storage_url):
    store = ObjectStore(storage_url)
    store.put_once("segs/001", b"x")
    temp = f"{store.root}/segs/002.tmp-0123abcd"
    store.fs.pipe_file(temp, b"half written")
    assert store.fs.exists(temp)

    assert store.list("segs/") == ["segs/001"]


def test_size_is_the_object_length(storage_url):
    store = ObjectStore(storage_url)
    store.put_once("object", b"12345")

    assert store.size("object") == 5


def test_delete_removes_the_named_objects_only(storage_url):
    store = ObjectStore(storage_url)
    for name in ["a", "b", "c"]:
        store.put_once(name, b"x")

    store.delete(["a", "c"])

    assert store.list("") == ["b"]


def test_delete_ignores_missing_names(storage_url):
    store = ObjectStore(storage_url)
    store.put_once("a", b"x")

    store.delete(["gone", "a", "also-gone"])
    store.delete([])

    assert store.list("") == []


def test_deleted_name_can_be_created_again(storage_url):
    store = ObjectStore(storage_url)
    store.put_once("a", b"old")
    store.delete(["a"])

    store.put_once("a", b"new")

    assert store.get("a") == b"new"


def test_delete_prefix_removes_everything_under_it_temp_files_included(storage_url):
    store = ObjectStore(storage_url)
    store.put_once("queues/a/0/segments/1", b"x")
    store.put_once("queues/a/1/deletes/1", b"x")
    temp = f"{store.root}/queues/a/0/segments/2.tmp-0123abcd"
    store.fs.pipe_file(temp, b"half")
    store.put_once("queues/ab/0/segments/1", b"y")
    assert store.fs.exists(temp)

    store.delete_prefix("queues/a")

    assert store.list("") == ["queues/ab/0/segments/1"]
    assert not store.fs.exists(temp)


def test_delete_prefix_of_missing_prefix_is_harmless(storage_url):
    ObjectStore(storage_url).delete_prefix("queues/none")


def test_child_store_sees_objects_under_its_prefix(storage_url):
    store = ObjectStore(storage_url)
    child = store.child("queues/a")

    child.put_once("x", b"1")

    assert store.list("") == ["queues/a/x"]
    assert child.list("") == ["x"]
    assert child.get("x") == b"1"


def test_store_pickles_to_the_same_storage(memory_url):
    store = ObjectStore(memory_url, retry_s=0.5)
    store.put_once("a", b"1")

    copy = pickle.loads(pickle.dumps(store))

    assert copy.get("a") == b"1"
    assert copy._retry_s == 0.5


def test_file_put_once_leaves_no_temporary_files(file_url):
    store = ObjectStore(file_url)
    store.put_once("dir/object", b"x")

    assert os.listdir(os.path.join(store.root, "dir")) == ["object"]


# ------------------------------------------------------------------ retries


class FlakyFileSystem:
    """Delegates to a real filesystem; the first ``failures`` storage calls raise."""

    CALLS = {"cat_file", "find", "ls", "info", "pipe_file", "rm_file", "rm", "size"}

    def __init__(self, fs: Any, failures: int, error: Callable[[], BaseException]) -> None:
        self._fs = fs
        self.failures = failures
        self.error = error
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._fs, name)
        if name not in self.CALLS:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.failures > 0:
                self.failures -= 1
                raise self.error()
            return attribute(*args, **kwargs)

        return call


def flaky(store: ObjectStore, failures: int, error: Callable[[], BaseException] = lambda: OSError("boom")):
    store.fs = FlakyFileSystem(store.fs, failures, error)
    return store.fs


@pytest.mark.parametrize("error", [lambda: OSError("connection reset"), lambda: TimeoutError("slow")])
def test_transient_errors_on_get_are_retried(storage_url, error):
    store = ObjectStore(storage_url, retry_s=5.0)
    store.put_once("a", b"1")
    fs = flaky(store, failures=2, error=error)

    assert store.get("a") == b"1"
    assert fs.calls == 3


def test_transient_errors_on_list_are_retried(storage_url):
    store = ObjectStore(storage_url, retry_s=5.0)
    store.put_once("a", b"1")
    flaky(store, failures=2)

    assert store.list("") == ["a"]


def test_transient_errors_on_put_are_retried(memory_url):
    # file:// creates through os.link, not through the fsspec filesystem.
    store = ObjectStore(memory_url, retry_s=5.0)
    flaky(store, failures=2, error=lambda: TimeoutError("slow"))

    store.put_once("a", b"1")

    assert store.get("a") == b"1"


def test_transient_errors_on_delete_are_retried(storage_url):
    store = ObjectStore(storage_url, retry_s=5.0)
    store.put_once("a", b"1")
    flaky(store, failures=1)

    store.delete(["a"])

    assert store.list("") == []


def test_persistent_failure_raises_storage_unavailable_within_retry_s(storage_url):
    store = ObjectStore(storage_url, retry_s=0.3)
    store.put_once("a", b"1")
    fs = flaky(store, failures=10**9, error=lambda: OSError("down"))

    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        store.get("a")
    gave_up_after = time.monotonic() - started

    assert gave_up_after < 0.3 + 5.0  # bounded by the retry budget (slack for a busy machine)
    assert fs.calls > 1
    assert caught.value.operation == "get"
    assert caught.value.path.endswith("/a")
    assert "down" in caught.value.cause


def test_persistent_failure_of_put_raises_storage_unavailable(memory_url):
    store = ObjectStore(memory_url, retry_s=0.2)
    flaky(store, failures=10**9)

    with pytest.raises(StorageUnavailable):
        store.put_once("a", b"1")


def test_permission_error_is_not_retried(storage_url):
    store = ObjectStore(storage_url, retry_s=5.0)
    store.put_once("a", b"1")
    fs = flaky(store, failures=10**9, error=lambda: PermissionError("denied"))

    with pytest.raises(StorageUnavailable):
        store.get("a")

    assert fs.calls == 1


# ------------------------------------------------------------------- format


def test_segment_round_trips():
    segment = make_segment([b"a", b"bb"], first_offset=5)

    table = format.decode_segment(format.encode_segment(segment, epoch=3), "seg")

    assert table.equals(pa.Table.from_batches([segment]))


def test_deletes_round_trip():
    offsets = np.array([3, 1, 7], np.int64)

    decoded = format.decode_deletes(format.encode_deletes(offsets, epoch=1), "del")

    assert decoded.tolist() == [3, 1, 7]


def test_catalog_round_trips():
    queues = {"orders": {"uid": "abc", "epoch": 2}}

    assert format.decode_catalog(format.encode_catalog(7, queues), "cat") == (7, queues)


def test_decoding_a_deletes_object_as_a_segment_is_refused():
    data = format.encode_deletes(np.array([1], np.int64), epoch=1)

    with pytest.raises(StorageCorrupt, match="segment"):
        format.decode_segment(data, "segments/x.arrow")


def test_decoding_a_segment_as_deletes_is_refused():
    with pytest.raises(StorageCorrupt):
        format.decode_deletes(format.encode_segment(make_segment([b"a"]), epoch=1), "deletes/x.arrow")


@pytest.mark.parametrize("data", [b"", b"garbage", b"ARROW1" + b"\0" * 50])
def test_decoding_garbage_raises_storage_corrupt(data):
    with pytest.raises(StorageCorrupt) as caught:
        format.decode_segment(data, "segments/x.arrow")

    assert caught.value.path == "segments/x.arrow"


def test_decoding_a_truncated_segment_raises_storage_corrupt():
    data = format.encode_segment(make_segment([b"a", b"b"]), epoch=1)

    with pytest.raises(StorageCorrupt):
        format.decode_segment(data[: len(data) - 10], "segments/x.arrow")


def test_decoding_an_untagged_arrow_file_raises_storage_corrupt():
    sink = pa.BufferOutputStream()
    table = pa.table({"offset": pa.array([1], pa.int64())})
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)

    with pytest.raises(StorageCorrupt):
        format.decode_deletes(sink.getvalue().to_pybytes(), "deletes/x.arrow")


def test_decoding_a_newer_format_raises_storage_corrupt():
    data = format.encode_table(make_segment([b"a"]), "segment", **{"rayqueue.format": format.FORMAT_VERSION + 1})

    with pytest.raises(StorageCorrupt, match="newer"):
        format.decode_segment(data, "segments/x.arrow")


def test_decoding_a_malformed_format_tag_raises_storage_corrupt():
    data = format.encode_table(make_segment([b"a"]), "segment", **{"rayqueue.format": "v1"})

    with pytest.raises(StorageCorrupt):
        format.decode_segment(data, "segments/x.arrow")


def test_decoding_a_segment_with_another_schema_raises_storage_corrupt():
    other = pa.record_batch([pa.array([1], pa.int64())], names=["offset"])

    with pytest.raises(StorageCorrupt, match="schema"):
        format.decode_segment(format.encode_table(other, "segment"), "segments/x.arrow")


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"\xff\xfe", b"[]", b"null", b'"text"', b'{"format": 1}', b'{"format": 1, "version": 1}'],
)
def test_decoding_a_bad_catalog_raises_storage_corrupt(data):
    with pytest.raises(StorageCorrupt):
        format.decode_catalog(data, "catalog/x.json")


def test_decoding_a_newer_catalog_raises_storage_corrupt():
    data = b'{"format": %d, "version": 1, "queues": {}}' % (format.FORMAT_VERSION + 1)

    with pytest.raises(StorageCorrupt, match="upgrade rayqueue"):
        format.decode_catalog(data, "catalog/x.json")


def test_object_names_sort_in_numeric_order():
    firsts = [0, 9, 10, 99, 100, 12345678901]

    assert sorted(format.segment_name(f, 1) for f in reversed(firsts)) == [format.segment_name(f, 1) for f in firsts]
    assert sorted(format.catalog_name(v) for v in [10, 9, 100]) == [format.catalog_name(v) for v in [9, 10, 100]]


def test_object_names_parse_back():
    assert format.parse_object_name(format.segment_name(42, 3)) == (42, 3)
    assert format.parse_object_name(format.deletes_name(7, 2)) == (7, 2)


# ----------------------------------------------------------- PartitionStore


def leader(objects: ObjectStore, queue: str = "orders", partition: int = 0) -> PartitionStore:
    """A PartitionStore that has taken over its partition, as a partition does on start."""
    store = PartitionStore(objects, queue, partition, "u")
    store.take_over()
    return store


def write_segment(store: PartitionStore, bodies: list[bytes], first_offset: int = 0) -> str:
    return store.write_segment(make_segment(bodies, first_offset))


def write_deletes(store: PartitionStore, offsets: list[int], seq: int) -> str:
    store.write_deletes(np.array(offsets, np.int64), seq)
    return format.deletes_name(seq, store.epoch)


def recover(objects: ObjectStore, queue: str = "orders", partition: int = 0) -> RecoveredPartition:
    """What the next leader finds on storage."""
    return PartitionStore(objects, queue, partition, "u").take_over()


def recovered_bodies(objects: ObjectStore, queue: str = "orders", partition: int = 0) -> list[list[bytes]]:
    return [table.column("body").to_pylist() for _name, table in recover(objects, queue, partition).segments]


def test_partition_store_recovers_what_it_wrote(storage_url):
    objects = ObjectStore(storage_url)
    store = leader(objects)
    write_segment(store, [b"a", b"b"], first_offset=0)
    write_segment(store, [b"c"], first_offset=2)
    write_deletes(store, [1], seq=0)
    write_deletes(store, [2, 1], seq=1)

    reader = PartitionStore(ObjectStore(storage_url), "orders", 0, "u")
    recovered = reader.take_over()

    assert [t.column("body").to_pylist() for _name, t in recovered.segments] == [[b"a", b"b"], [b"c"]]
    assert recovered.deleted_offsets.tolist() == [1, 2]
    assert recovered.next_offset == 3
    assert recovered.next_delete_seq == 2
    assert reader.objects_read == 4  # each object once, segments read as they were iterated


def test_partition_store_of_empty_storage_recovers_nothing(storage_url):
    recovered = recover(ObjectStore(storage_url))

    assert (recovered.segments, recovered.next_offset, recovered.next_delete_seq) == ([], 0, 0)
    assert len(recovered.deleted_offsets) == 0


def test_partitions_and_queues_keep_their_objects_apart(storage_url):
    objects = ObjectStore(storage_url)
    write_segment(leader(objects, "orders", 0), [b"p0"])
    write_segment(leader(objects, "orders", 1), [b"p1"])
    write_segment(leader(objects, "orders2", 0), [b"other"])

    assert recovered_bodies(objects, "orders", 0) == [[b"p0"]]


def test_writing_the_same_segment_twice_raises_object_exists(storage_url):
    store = leader(ObjectStore(storage_url))
    write_segment(store, [b"a"])

    with pytest.raises(ObjectExists):
        write_segment(store, [b"b"])


def tear(path: str) -> None:
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])


PARTITION = "queues/orders.u/0"


def test_torn_segment_stops_recovery_naming_it(file_url):
    objects = ObjectStore(file_url)
    store = leader(objects)
    write_segment(store, [b"a"], first_offset=0)
    torn = write_segment(store, [b"b"], first_offset=1)
    write_segment(store, [b"c"], first_offset=2)
    tear(os.path.join(objects.root, PARTITION, torn))

    with pytest.raises(StorageCorrupt) as caught:
        list(recover(objects).segments)

    assert caught.value.path.endswith(torn)


def test_torn_delete_log_stops_recovery_naming_it(file_url):
    objects = ObjectStore(file_url)
    store = leader(objects)
    write_deletes(store, [1], seq=0)
    torn = write_deletes(store, [2], seq=1)
    tear(os.path.join(objects.root, PARTITION, torn))

    with pytest.raises(StorageCorrupt) as caught:
        recover(objects)

    assert caught.value.path.endswith(torn)


def test_foreign_names_among_segments_are_ignored(storage_url):
    objects = ObjectStore(storage_url)
    write_segment(leader(objects), [b"a"])
    objects.put_once(f"{PARTITION}/segments/README.txt", b"hello")
    objects.put_once(f"{PARTITION}/segments/1-1.arrow", b"not padded: not ours")

    assert recovered_bodies(objects) == [[b"a"]]


def test_unreadable_object_under_a_rayqueue_name_stops_recovery(storage_url):
    objects = ObjectStore(storage_url)
    write_segment(leader(objects), [b"a"])
    objects.put_once(f"{PARTITION}/segments/00000000000000000009-0000000001.arrow", b"not arrow")

    with pytest.raises(StorageCorrupt, match="00000000000000000009-0000000001"):
        recover(objects)


# ------------------------------------------------------------- CatalogStore


def test_catalog_of_empty_storage_is_version_zero(storage_url):
    assert CatalogStore(ObjectStore(storage_url)).load() == (0, {})


def test_catalog_newest_version_wins(storage_url):
    catalog = CatalogStore(ObjectStore(storage_url))
    catalog.save(1, {"a": {"n": 1}})
    catalog.save(2, {"a": {"n": 2}, "b": {"n": 1}})

    assert CatalogStore(ObjectStore(storage_url)).load() == (2, {"a": {"n": 2}, "b": {"n": 1}})


def test_catalog_newest_wins_by_number_not_by_text(storage_url):
    catalog = CatalogStore(ObjectStore(storage_url))
    for version in (9, 10):
        catalog.save(version, {"v": version})

    assert catalog.load() == (10, {"v": 10})


def test_saving_an_existing_catalog_version_raises_object_exists(storage_url):
    catalog = CatalogStore(ObjectStore(storage_url))
    catalog.save(1, {"a": {}})

    with pytest.raises(ObjectExists):
        catalog.save(1, {"b": {}})

    assert catalog.load() == (1, {"a": {}})


def test_unreadable_newest_catalog_version_is_refused_not_rolled_back(storage_url):
    objects = ObjectStore(storage_url)
    catalog = CatalogStore(objects)
    catalog.save(1, {"a": {}})
    objects.put_once(format.catalog_name(2), b"{ torn")

    # Loading version 1 would lose what version 2 added (and a later create could
    # then remove a surviving queue's data): refuse, naming the version.
    with pytest.raises(StorageCorrupt) as caught:
        catalog.load()

    assert caught.value.path.endswith(format.catalog_name(2))


def test_catalog_keeps_only_recent_versions(storage_url):
    objects = ObjectStore(storage_url)
    catalog = CatalogStore(objects)
    for version in range(1, 11):
        catalog.save(version, {"v": version})

    kept = objects.list("catalog/")

    assert len(kept) == defaults.CATALOG_VERSIONS_KEPT + 1
    assert kept[-1] == format.catalog_name(10)
    assert catalog.load() == (10, {"v": 10})


def test_a_takeover_reads_segments_several_at_once_and_yields_them_in_order():
    import threading

    from rayqueue.storage.partition_store import StoredSegments

    running, most, lock = [0], [0], threading.Lock()
    released = threading.Event()

    def read(name: str) -> pa.Table:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        released.wait(0.05)  # slow storage: reads overlap
        with lock:
            running[0] -= 1
        first = int(name.split("/")[-1].split("-")[0])
        if first == 30:
            raise StorageCorrupt(name, "fails its checksum")
        return pa.table({"offset": pa.array([first, first + 1], pa.int64())})

    segments = StoredSegments(read, read_ahead=4)
    for first in range(0, 40, 2):
        segments.add(format.segment_name(first, 1))
    seen = []
    with pytest.raises(StorageCorrupt):
        for _name, table in segments:
            seen.append(table.column("offset")[0].as_py())
    assert seen == list(range(0, 30, 2))  # in order, up to the unreadable one
    assert 1 < most[0] <= 4
