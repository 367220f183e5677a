"""Storage errors and damaged objects fail closed: never read as "absent", "empty" or "skip it".

Each test names the behaviour; each failed on the code before format 2 (which
skipped unreadable objects, rolled back to older checkpoints and catalogs, and on
file:// read a failing stat as "absent" and a failing listing as "empty").
"""

from __future__ import annotations

import errno
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fsspec.implementations.local import LocalFileSystem

from rayqueue.errors import PartitionFenced, StorageCorrupt, StorageUnavailable
from rayqueue.storage import CatalogStore, ObjectStore, PartitionStore, RecoveredPartition, format
from rayqueue.storage.partition_store import Checkpoint

PARTITION = "queues/orders.u/0"
#: A storage tree written by the format-1 code (see data/make_format_v1.py).
FORMAT_V1 = Path(__file__).parent / "data" / "format_v1"
S = format.SEGMENT_SCHEMA


def segment(first: int, bodies: list[bytes]) -> pa.RecordBatch:
    n = len(bodies)
    return pa.record_batch(
        [
            pa.array(range(first, first + n), pa.int64()),
            pa.array([f"id-{first + i}" for i in range(n)], pa.string()),
            pa.array(bodies, pa.binary()),
            pa.array(["k"] * n, pa.string()),
            pa.array([[("a", "b")]] * n, S.field("attributes").type),
            pa.array([datetime(2024, 1, 1, tzinfo=UTC)] * n, S.field("sent_at").type),
        ],
        schema=S,
    )


def partition(objects: ObjectStore) -> PartitionStore:
    return PartitionStore(objects, "orders", 0, "u")


def leader(objects: ObjectStore) -> PartitionStore:
    store = partition(objects)
    store.take_over()
    return store


def recover(objects: ObjectStore) -> RecoveredPartition:
    """Take over and read every segment, as a starting partition does."""
    recovered = partition(objects).take_over()
    list(recovered.segments)
    return recovered


def bodies(recovered: RecoveredPartition) -> list[bytes]:
    return [body for _name, table in recovered.segments for body in table.column("body").to_pylist()]


def claims(objects: ObjectStore) -> list[str]:
    return [name for name in objects.list(f"{PARTITION}/epochs/") if name.endswith(".claim")]


def replace(objects: ObjectStore, name: str, data: bytes) -> None:
    objects.delete([name])
    objects.put_once(name, data)


def eio(*_args: Any, **_kwargs: Any) -> Any:
    raise OSError(errno.EIO, "Input/output error (injected)")


# ------------------------------------------------------- F4: stat and listing errors


def test_exists_raises_when_stat_fails_instead_of_answering_absent(file_url, monkeypatch):
    store = ObjectStore(file_url, retry_s=0.2)
    store.put_once("epochs/0000000002.claim", b"token")
    monkeypatch.setattr(LocalFileSystem, "info", eio)

    with pytest.raises(StorageUnavailable) as caught:
        store.exists("epochs/0000000002.claim")

    assert caught.value.operation == "stat"


def test_exists_is_false_only_for_a_missing_object(storage_url):
    store = ObjectStore(storage_url)
    store.put_once("a/present", b"")

    assert store.exists("a/present")
    assert not store.exists("a/missing")
    assert not store.exists("nowhere/missing")


def test_a_replaced_leader_cannot_acknowledge_while_stat_fails(file_url, monkeypatch):
    objects = ObjectStore(file_url, retry_s=0.2)
    old = leader(objects)
    leader(objects)  # the successor claims the next epoch
    original = LocalFileSystem.info

    def failing_claims(self: LocalFileSystem, path: str, **kwargs: Any) -> Any:
        return eio() if str(path).endswith(".claim") else original(self, path, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "info", failing_claims)
    with pytest.raises(StorageUnavailable):
        old.write_segment(segment(0, [b"late"]))
    monkeypatch.undo()
    with pytest.raises(PartitionFenced):
        old.check_leader()


def test_list_raises_when_a_folder_cannot_be_listed_instead_of_answering_empty(file_url, monkeypatch):
    store = ObjectStore(file_url, retry_s=0.2)
    store.put_once("p/checkpoints/1", b"x")
    store.put_once("p/segments/1", b"x")
    original = LocalFileSystem.ls

    def failing(self: LocalFileSystem, path: str, detail: bool = True, **kwargs: Any) -> Any:
        return eio() if str(path).rstrip("/").endswith("checkpoints") else original(self, path, detail, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", failing)

    with pytest.raises(StorageUnavailable):
        store.list("p/checkpoints/")
    with pytest.raises(StorageUnavailable):
        store.list("p/")  # a failing folder below fails the whole listing
    assert store.list("p/segments/") == ["p/segments/1"]
    assert store.list("p/missing/") == []


def test_takeover_fails_while_checkpoints_cannot_be_listed_and_deletes_stay_deleted(file_url, monkeypatch):
    objects = ObjectStore(file_url, retry_s=0.2)
    first = leader(objects)
    name = first.write_segment(segment(0, [b"m0", b"m1", b"m2", b"m3"]))
    first.write_deletes(np.array([0, 1], np.int64), seq=0)
    first.write_checkpoint(Checkpoint(seq=1, epoch=first.epoch, next_offset=4, segments=(name,), deleted=((0, 2),)))
    original = LocalFileSystem.ls

    def failing(self: LocalFileSystem, path: str, detail: bool = True, **kwargs: Any) -> Any:
        return eio() if str(path).rstrip("/").endswith("checkpoints") else original(self, path, detail, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", failing)
    with pytest.raises(StorageUnavailable):
        partition(objects).take_over()
    monkeypatch.undo()

    recovered = recover(objects)
    live = [b for b, o in zip(bodies(recovered), range(4)) if o not in recovered.deleted_offsets]
    assert live == [b"m2", b"m3"]


def test_listings_leave_out_dotfiles_and_hidden_folders(storage_url):
    store = ObjectStore(storage_url)
    store.put_once("p/1", b"x")
    store.put_once("p/.DS_Store", b"finder")
    store.put_once("p/.hidden/2", b"x")

    assert store.list("p/") == ["p/1"]


# ---------------------------------------------------------------- damaged objects


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(lambda: format.encode_segment(segment(0, [b"a", b"bc"]), epoch=1), id="segment"),
        pytest.param(lambda: format.encode_deletes(np.array([0, 2, 5], np.int64), epoch=1), id="deletes"),
        pytest.param(lambda: format.encode_json("checkpoint", {"seq": 1}), id="checkpoint"),
        pytest.param(lambda: format.encode_catalog(3, {"orders": {"uid": "u"}}), id="catalog"),
    ],
)
def test_every_flipped_byte_is_detected(encoded):
    data = encoded()
    decode = _decoder_for(data)
    decode(data)  # the undamaged object reads

    undetected = []
    for position in range(len(data)):
        for flip in (0x01 << (position % 8), 0xFF):
            damaged = bytearray(data)
            damaged[position] ^= flip
            try:
                decode(bytes(damaged))
            except StorageCorrupt:
                continue
            undetected.append((position, flip))

    assert undetected == []


def _decoder_for(data: bytes) -> Any:
    payload = bytes(format.unseal(data, "x")[0])
    if payload.startswith(b"ARROW1"):
        kind = b"segment" if b"segment" in payload else b"deletes"
        return (
            (lambda d: format.decode_segment(d, "x"))
            if kind == b"segment"
            else (lambda d: format.decode_deletes(d, "x"))
        )
    if b'"kind"' in payload:
        return lambda d: format.decode_json(d, "x", "checkpoint")
    return lambda d: format.decode_catalog(d, "x")


@pytest.mark.parametrize("kind", ["segment", "deletes"])
def test_every_truncation_is_detected(kind):
    data = (
        format.encode_segment(segment(0, [b"a", b"bc"]), epoch=1)
        if kind == "segment"
        else format.encode_deletes(np.array([0, 2], np.int64), epoch=1)
    )
    decode = format.decode_segment if kind == "segment" else format.decode_deletes

    for length in range(len(data)):
        with pytest.raises(StorageCorrupt):
            decode(data[:length], "x")


def test_a_flipped_byte_in_a_stored_delete_log_stops_recovery(storage_url):
    objects = ObjectStore(storage_url)
    store = leader(objects)
    store.write_segment(segment(0, [b"a", b"b", b"c"]))
    store.write_deletes(np.array([0], np.int64), seq=0)
    name = f"{PARTITION}/{format.deletes_name(0, store.epoch)}"
    damaged = bytearray(objects.get(name))
    damaged[len(damaged) // 2] ^= 0x02
    replace(objects, name, bytes(damaged))

    with pytest.raises(StorageCorrupt, match="checksum") as caught:
        recover(objects)

    assert caught.value.path.endswith(format.deletes_name(0, store.epoch))


def test_an_object_written_by_a_newer_rayqueue_is_refused_not_skipped():
    newer = format.FORMAT_VERSION + 1
    payload = format.encode_segment(segment(0, [b"a"]), epoch=1)[:-12]
    head = b"RQCK" + newer.to_bytes(4, "little")
    import zlib

    data = payload + head + zlib.crc32(head, zlib.crc32(payload)).to_bytes(4, "little")

    with pytest.raises(StorageCorrupt, match="upgrade rayqueue"):
        format.decode_segment(data, "x")


def test_a_newer_segment_on_storage_stops_recovery(storage_url):
    objects = ObjectStore(storage_url)
    store = leader(objects)
    store.write_segment(segment(0, [b"a"]))
    newer = format.encode_table(segment(1, [b"b"]), "segment", **{"rayqueue.format": format.FORMAT_VERSION + 1})
    objects.put_once(f"{PARTITION}/{format.segment_name(1, store.epoch)}", newer)

    with pytest.raises(StorageCorrupt, match="upgrade rayqueue"):
        recover(objects)
    # Refused, and so still there for the newer version to read.
    assert objects.exists(f"{PARTITION}/{format.segment_name(1, store.epoch)}")


def test_a_current_object_without_its_trailer_is_refused():
    data = format.encode_segment(segment(0, [b"a"]), epoch=1)

    with pytest.raises(StorageCorrupt, match="trailer"):
        format.decode_segment(data[:-12], "x")


def test_read_segment_raises_instead_of_returning_none(storage_url):
    objects = ObjectStore(storage_url)
    store = leader(objects)
    name = store.write_segment(segment(0, [b"a"]))
    replace(objects, f"{PARTITION}/{name}", b"garbage")

    with pytest.raises(StorageCorrupt):
        store.read_segment(name)


def test_a_segment_whose_offsets_do_not_match_its_name_is_refused(storage_url):
    objects = ObjectStore(storage_url)
    store = leader(objects)
    objects.put_once(f"{PARTITION}/{format.segment_name(5, store.epoch)}", format.encode_segment(segment(0, [b"a"]), 1))

    with pytest.raises(StorageCorrupt, match="offsets"):
        recover(objects)


# ------------------------------------------------------------ checkpoints and fences


def write_checkpoint(store: PartitionStore, seq: int, names: tuple[str, ...], deleted=()) -> str:
    store.write_checkpoint(Checkpoint(seq=seq, epoch=store.epoch, next_offset=3, segments=names, deleted=deleted))
    return f"{PARTITION}/{format.checkpoint_name(seq, store.epoch)}"


def test_an_unreadable_newest_checkpoint_stops_recovery_not_an_older_one(storage_url):
    objects = ObjectStore(storage_url)
    store = leader(objects)
    name = store.write_segment(segment(0, [b"a", b"b", b"c"]))
    store.write_deletes(np.array([0], np.int64), seq=0)
    older = write_checkpoint(store, 1, (name,), ((0, 1),))
    store.write_deletes(np.array([1], np.int64), seq=1)
    # The newer checkpoint removes delete log 1: an older checkpoint would bring b back.
    objects.put_once(older + ".keep", b"")  # a foreign name: ignored, never removed
    newest = write_checkpoint(store, 2, (name,), ((0, 2),))
    objects.delete([older + ".keep"])
    replace(objects, newest, b"{ damaged")

    with pytest.raises(StorageCorrupt) as caught:
        partition(objects).take_over()

    assert caught.value.path.endswith(newest)


@pytest.mark.parametrize(
    "deleted",
    [
        pytest.param([[0, 10**15]], id="huge"),
        pytest.param([[0, 2], [1, 3]], id="overlapping"),
        pytest.param([[2, 2]], id="empty"),
        pytest.param([[-1, 1]], id="negative"),
        pytest.param([[0, 1, 2]], id="not-a-pair"),
        pytest.param([[5, 6]], id="past-next-offset-in-a-stored-segment"),
    ],
)
def test_checkpoint_ranges_are_checked_before_they_are_expanded(storage_url, deleted):
    objects = ObjectStore(storage_url)
    store = leader(objects)
    name = store.write_segment(segment(0, [b"a", b"b", b"c"]))
    body = {"seq": 0, "epoch": store.epoch, "next_offset": 3, "segments": [name], "deleted": deleted}
    objects.put_once(f"{PARTITION}/{format.checkpoint_name(0, store.epoch)}", format.encode_json("checkpoint", body))

    with pytest.raises(StorageCorrupt):
        partition(objects).take_over()


def test_checkpoint_ranges_in_any_order_and_past_the_stored_floor_are_accepted():
    # The partition lists emptied segments before live ones, and may record deletes
    # in segments not stored yet (held by replicas): both are sound.
    names = (format.segment_name(10, 1), format.segment_name(0, 1), format.segment_name(20, 1))
    body = {"seq": 0, "epoch": 1, "next_offset": 20, "segments": list(names), "deleted": [[10, 12], [0, 3], [21, 400]]}

    checkpoint = Checkpoint.from_json(body, "x")

    assert checkpoint.deleted == ((10, 12), (0, 3), (21, 400))


def test_damaged_fence_is_refused_without_using_up_an_epoch(storage_url):
    objects = ObjectStore(storage_url)
    leader(objects).write_segment(segment(0, [b"a"]))
    fence = f"{PARTITION}/{format.fence_name(1)}"
    replace(objects, fence, format.encode_json("fence", {"epoch": 1}))
    before = claims(objects)

    for _attempt in range(3):
        with pytest.raises(StorageCorrupt) as caught:
            partition(objects).take_over()
        assert caught.value.path.endswith(format.fence_name(1))

    assert claims(objects) == before


@pytest.mark.parametrize("stray", [".DS_Store", "README", "0000000009.claim.bak", "x.fence.json"])
def test_stray_names_in_epochs_are_ignored(storage_url, stray):
    objects = ObjectStore(storage_url)
    leader(objects).write_segment(segment(0, [b"a"]))
    objects.put_once(f"{PARTITION}/epochs/{stray}", b"\0\0\0\1Bud1")

    recovered = recover(objects)

    assert bodies(recovered) == [b"a"]
    assert claims(objects)[-1].endswith(format.claim_name(2))


# ---------------------------------------------------------------- overlapping segments


def test_two_segments_over_the_same_offsets_are_refused_naming_both(storage_url):
    objects = ObjectStore(storage_url)
    old = leader(objects)
    old.write_segment(segment(0, [b"a", b"b"]))
    new = leader(objects)
    new.write_segment(segment(0, [b"a", b"b"]))  # as a replica's held copy would be stored again

    with pytest.raises(StorageCorrupt) as caught:
        partition(objects).take_over()

    assert format.segment_name(0, 1) in str(caught.value)
    assert format.segment_name(0, 2) in str(caught.value)


def test_a_segment_starting_inside_another_is_refused(storage_url):
    objects = ObjectStore(storage_url)
    old = leader(objects)
    old.write_segment(segment(0, [b"a", b"b", b"c"]))
    new = leader(objects)
    new.write_segment(segment(2, [b"x"]))

    with pytest.raises(StorageCorrupt) as caught:
        recover(objects)

    assert format.segment_name(0, 1) in str(caught.value)
    assert format.segment_name(2, 2) in str(caught.value)


def test_stored_segments_tell_which_segments_a_held_one_would_overlap(storage_url):
    objects = ObjectStore(storage_url)
    store = leader(objects)
    first = store.write_segment(segment(0, [b"a", b"b"]))
    later = store.write_segment(segment(5, [b"f"]))
    segments = partition(objects).take_over().segments

    assert segments.overlapping(2, 5) == []  # the gap between them (offsets taken, store failed)
    assert segments.overlapping(1, 3) == [first]
    assert segments.overlapping(3, 7) == [later]
    assert segments.overlaps(0, 1) and not segments.overlaps(6, 9)


# ------------------------------------------------------------- garbage collection


def test_a_checkpoint_removes_nothing_it_did_not_recover_or_write(storage_url):
    objects = ObjectStore(storage_url)
    store = leader(objects)
    dead = store.write_segment(segment(0, [b"a"]))
    live = store.write_segment(segment(1, [b"b"]))
    store.write_deletes(np.array([0], np.int64), seq=0)
    foreign = [f"{PARTITION}/segments/README", f"{PARTITION}/deletes/0-1.arrow", f"{PARTITION}/checkpoints/old.json"]
    for name in foreign:
        objects.put_once(name, b"not ours")
    # Appears after the takeover listed storage, under a rayqueue name: never read.
    unseen = f"{PARTITION}/{format.segment_name(0, 0)}"
    objects.put_once(unseen, b"never read")

    removed = store.write_checkpoint(Checkpoint(seq=1, epoch=store.epoch, next_offset=2, segments=(live,), deleted=()))

    assert removed == 2  # the dead segment and the folded delete log
    remaining = objects.list(f"{PARTITION}/")
    assert all(name in remaining for name in [*foreign, unseen, f"{PARTITION}/{live}"])
    assert f"{PARTITION}/{dead}" not in remaining


# ------------------------------------------------------------------ the catalog


def test_a_newer_catalog_version_is_refused_not_rolled_back(storage_url):
    objects = ObjectStore(storage_url)
    catalog = CatalogStore(objects)
    catalog.save(1, {"a": {}})
    newer = b'{"format": %d, "version": 2, "queues": {}}' % (format.FORMAT_VERSION + 1)
    objects.put_once(format.catalog_name(2), newer)

    with pytest.raises(StorageCorrupt, match="upgrade rayqueue") as caught:
        catalog.load()

    assert caught.value.path.endswith(format.catalog_name(2))


def test_a_catalog_version_holding_another_number_is_refused(storage_url):
    objects = ObjectStore(storage_url)
    objects.put_once(format.catalog_name(2), format.encode_catalog(1, {}))

    with pytest.raises(StorageCorrupt):
        CatalogStore(objects).load()


def test_foreign_names_in_the_catalog_folder_are_ignored(storage_url):
    objects = ObjectStore(storage_url)
    catalog = CatalogStore(objects)
    catalog.save(1, {"a": {}})
    objects.put_once("catalog/notes.json", b"hello")
    objects.put_once("catalog/99999999999999999999.json.bak", b"hello")

    assert catalog.load() == (1, {"a": {}})


# --------------------------------------------------------------- format 1 still loads


@pytest.fixture
def format_v1(tmp_path: Path) -> ObjectStore:
    """A copy of the storage tree the format-1 code wrote."""
    shutil.copytree(FORMAT_V1, tmp_path / "v1")
    return ObjectStore(f"file://{tmp_path / 'v1'}")


def test_a_partition_written_in_format_1_recovers(format_v1):
    reader = partition(format_v1)
    recovered = reader.take_over()

    assert bodies(recovered) == [b"a", b"b", b"c", b"d", b"e", b"f"]
    assert recovered.deleted_offsets.tolist() == [1, 3]
    assert (recovered.next_offset, recovered.next_delete_seq, recovered.checkpoint) == (6, 2, (1, 1))
    assert reader.epoch == 3


def test_format_1_objects_decode_with_their_values(format_v1):
    prefix = f"{PARTITION}/"
    segment0 = format.decode_segment(format_v1.get(prefix + format.segment_name(0, 1)), "x")
    deletes = format.decode_deletes(format_v1.get(prefix + format.deletes_name(1, 1)), "x")
    fence = format.decode_json(format_v1.get(prefix + format.fence_name(2)), "x", "fence")

    assert segment0.column("key").to_pylist() == ["x", None, "y"]
    assert segment0.column("attributes").to_pylist()[0] == [("k", "v")]
    assert deletes.tolist() == [3]
    assert (fence["next_offset"], fence["checkpoint"]) == (5, [1, 1])
    assert CatalogStore(format_v1).load() == (
        2,
        {"orders": {"uid": "u", "partitions": 1}, "other": {"uid": "w", "partitions": 2}},
    )


def test_a_partition_recovered_from_format_1_writes_format_2_beside_it(format_v1):
    store = partition(format_v1)
    store.take_over()
    name = store.write_segment(segment(6, [b"g"]))

    assert format.unseal(format_v1.get(f"{PARTITION}/{name}"), "x")[1] == format.FORMAT_VERSION
    assert bodies(recover(format_v1)) == [b"a", b"b", b"c", b"d", b"e", b"f", b"g"]


def test_a_format_1_object_claiming_format_2_is_refused(format_v1):
    name = f"{PARTITION}/{format.fence_name(2)}"
    forged = format_v1.get(name).replace(b'"format": 1', b'"format": 2')

    with pytest.raises(StorageCorrupt, match="trailer"):
        format.decode_json(forged, "x", "fence")


def test_format_1_data_is_committed_unchanged():
    # Guard against regenerating the golden tree with the current encoder.
    for path in FORMAT_V1.rglob("*"):
        if path.is_file() and not path.name.endswith(".claim"):
            assert format.unseal(path.read_bytes(), str(path))[1] == format.UNSEALED_FORMAT, path
    assert os.path.isdir(FORMAT_V1 / PARTITION / "segments")
