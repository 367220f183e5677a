"""Leadership epochs, fencing of stale leaders, and checkpoints, on real files."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest

from rayqueue.client.rows import IdSource, send_rows
from rayqueue.config import QueueConfig
from rayqueue.errors import PartitionFenced
from rayqueue.partition.replication import HeldWrites
from rayqueue.partition.service import PartitionService
from rayqueue.storage import ObjectStore, PartitionStore

CONFIG = QueueConfig.build(name="q", max_messages=100_000, max_message_bytes=100)
IDS = IdSource()


def rows(*bodies: str) -> pa.Table:
    return send_rows(CONFIG, list(bodies), IDS.take(len(bodies)))


def leader(root: str, **options: int) -> PartitionService:
    service = PartitionService(CONFIG, 0, PartitionStore(ObjectStore(root), "q", 0, "u"), **options)
    service.recover()
    return service


async def bodies_of(service: PartitionService) -> list[bytes]:
    delivery = await service.receive(10_000, 0.0, None)
    return delivery.column("body").to_pylist()


async def delete_all(service: PartitionService, count: int) -> None:
    delivery = await service.receive(count, 0.0, None)
    await service.delete(delivery.column("offset").to_numpy(), delivery.column("token").to_numpy(), [])


def test_each_takeover_claims_a_newer_epoch(tmp_path):
    root = f"file://{tmp_path}"
    assert [leader(root).epoch for _ in range(3)] == [1, 2, 3]


def test_stale_leader_can_neither_acknowledge_nor_damage(tmp_path):
    root = f"file://{tmp_path}"

    async def scenario() -> None:
        old = leader(root)
        await old.send(rows("before"), dedup=False)
        stale_delivery = await old.receive(1, 0.0, None)
        new = leader(root)  # takes over while the old one still runs
        with pytest.raises(PartitionFenced):
            await old.send(rows("stale send"), dedup=False)
        with pytest.raises(PartitionFenced):  # found out it was replaced: it serves nothing more
            await old.receive(1, 0.0, None)
        with pytest.raises(PartitionFenced):
            await old.delete(stale_delivery.column("offset").to_numpy(), stale_delivery.column("token").to_numpy(), [])
        await new.send(rows("after"), dedup=False)
        assert await bodies_of(new) == [b"before", b"after"]
        # A third leader sees what the second acknowledged, and nothing of the stale writes.
        assert await bodies_of(leader(root)) == [b"before", b"after"]

    asyncio.run(scenario())


def test_stale_checkpoint_removes_nothing(tmp_path):
    root = f"file://{tmp_path}"

    async def scenario() -> None:
        old = leader(root, checkpoint_every=1_000)
        for i in range(4):
            await old.send(rows(f"m{i}"), dedup=False)
        await delete_all(old, 2)
        leader(root)  # takes over
        await old.checkpoint()  # stale: must not remove segments or delete logs
        assert await bodies_of(leader(root)) == [b"m2", b"m3"]

    asyncio.run(scenario())


def test_checkpoint_bounds_what_recovery_reads(tmp_path):
    root = f"file://{tmp_path}"
    store = ObjectStore(root)

    async def scenario() -> None:
        service = leader(root, checkpoint_every=1_000)
        for i in range(20):
            await service.send(rows(*(f"{i}-{j}" for j in range(10))), dedup=False)
        for _ in range(18):
            await delete_all(service, 10)
        await delete_all(service, 3)  # part of the 19th segment too
        await service.checkpoint()
        segments = store.list("queues/q.u/0/segments/")
        assert len(segments) == 2  # 18 emptied segments are gone
        assert store.list("queues/q.u/0/deletes/") == []  # folded into the checkpoint
        assert len(store.list("queues/q.u/0/checkpoints/")) == 1
        recovered = leader(root)
        assert recovered.objects_recovered == 3  # the checkpoint and two segments
        expected = [f"18-{j}".encode() for j in range(3, 10)] + [f"19-{j}".encode() for j in range(10)]
        assert await bodies_of(recovered) == expected

    asyncio.run(scenario())


def test_deletes_after_a_checkpoint_survive_recovery(tmp_path):
    root = f"file://{tmp_path}"

    async def scenario() -> None:
        service = leader(root, checkpoint_every=1_000)
        await service.send(rows(*(f"m{i}" for i in range(10))), dedup=False)
        await delete_all(service, 2)
        await service.checkpoint()
        await delete_all(service, 3)
        await service.send(rows("late"), dedup=False)
        assert await bodies_of(leader(root)) == [f"m{i}".encode() for i in range(5, 10)] + [b"late"]

    asyncio.run(scenario())


def test_checkpoints_happen_on_their_own(tmp_path):
    root = f"file://{tmp_path}"
    store = ObjectStore(root)

    async def scenario() -> None:
        service = leader(root, checkpoint_every=4)
        for i in range(12):
            await service.send(rows(f"m{i}"), dedup=False)
            await delete_all(service, 1)
        await asyncio.sleep(0)  # let the background checkpoint finish
        if service._checkpointing is not None:
            await service._checkpointing
        assert store.list("queues/q.u/0/checkpoints/")
        assert len(store.list("queues/q.u/0/segments/")) < 12
        assert await bodies_of(leader(root)) == []

    asyncio.run(scenario())


def test_a_promoted_replica_does_not_store_again_what_was_deleted_and_removed(tmp_path):
    # A replica that took a copy of a segment long ago (and missed being told it was
    # stored) is promoted after every message in it was deleted and the checkpoint
    # removed it: bringing the copy back would deliver deleted messages again.
    root = f"file://{tmp_path}"

    async def scenario() -> None:
        old = leader(root, checkpoint_every=1)
        await old.send(rows("gone-1", "gone-2"), dedup=False)
        store = PartitionStore(ObjectStore(root), "q", 0, "u")
        (name,) = ObjectStore(root).list("queues/q.u/0/segments/")
        held = HeldWrites()
        held.add_segment(store.read_segment(name.removeprefix("queues/q.u/0/")).to_batches()[0])
        await delete_all(old, 2)
        await old.send(rows("kept"), dedup=False)
        await old.checkpoint()
        assert name not in ObjectStore(root).list("queues/q.u/0/segments/")  # removed as empty

        promoted = PartitionService(CONFIG, 0, PartitionStore(ObjectStore(root), "q", 0, "u"))
        promoted.recover(held)
        assert await bodies_of(promoted) == [b"kept"]

    asyncio.run(scenario())
