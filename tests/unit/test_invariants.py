"""The write path's invariants, each pinned by a deterministic test without Ray.

Each test is named after the invariant it pins and plays, step by step, the
interleaving in which a finding of the durability review broke it (F1, F2, F5, F7,
F10, F12). The simulation (test_simulation.py) looks for such interleavings by
itself; these keep the known ones from coming back.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from rayqueue import defaults
from rayqueue.client.rows import IdSource, send_rows
from rayqueue.config import QueueConfig
from rayqueue.errors import PartitionFenced, StorageUnavailable
from rayqueue.partition.log import PartitionLog
from rayqueue.partition.replication import HeldWrites, ReplicaSet, ReplicaState
from rayqueue.partition.service import PartitionService
from rayqueue.partition.writer import OrderedWriter, Settlement
from rayqueue.storage import ObjectStore, PartitionStore

IDS = IdSource()
REPLICATED = QueueConfig.build(name="q", max_messages=1000, max_message_bytes=100, durability="replicas", replicas=1)
STORED = QueueConfig.build(name="q", max_messages=1000, max_message_bytes=100)


def rows(config: QueueConfig, *bodies: str) -> pa.Table:
    return send_rows(config, list(bodies), IDS.take(len(bodies)))


def bodies(table: pa.Table) -> list[bytes]:
    return table.column("body").to_pylist()


class Link:
    """A replica link to in-process ``ReplicaState`` objects; holds can be held back."""

    def __init__(self, *names: str) -> None:
        self.replicas = {name: ReplicaState(name) for name in names}
        self.gate: asyncio.Event | None = None
        self.failing: set[str] = set()
        self.recorded: set[str] = set()
        self.lost_reports: list[list[str]] = []
        self.coordinator_answers = True
        #: Replicas that run on the leader's node.
        self.on_leader_node: set[str] = set()

    async def hold(self, replica: str, method: str, args: tuple[Any, ...]) -> None:
        if replica in self.failing:
            raise ConnectionError(replica)
        getattr(self.replicas[replica], method)(*args)
        if self.gate is not None and method == "hold_segment":
            await self.gate.wait()  # the replica holds it; its reply is still in flight

    def release(self, replica: str, epoch: int, offset_floor: int, seq_floor: int) -> None:
        self.replicas[replica].release(epoch, offset_floor, seq_floor)

    async def report_in_sync(self, replica: str) -> bool:
        self.recorded.add(replica)
        return True

    async def report_lost(self, replicas: list[str]) -> bool:
        self.lost_reports.append(replicas)
        self.recorded -= set(replicas)
        return self.coordinator_answers

    def apart(self, replica: str) -> bool:
        return replica not in self.on_leader_node


async def replicated_leader(
    root: str, link: Link, store: type[PartitionStore] = PartitionStore, **options: Any
) -> PartitionService:
    """A leader with durability "replicas" over ``link``'s replicas, once they are recorded in sync."""
    replicas = ReplicaSet(link, acknowledging=True)
    service = PartitionService(REPLICATED, 0, store(ObjectStore(root), "q", 0, "u"), replicas=replicas, **options)
    service.recover()
    await replicas.attach(list(link.replicas), service.unstored)
    await recorded(replicas, len(link.replicas))
    return service


async def recorded(replicas: ReplicaSet, count: int) -> None:
    """Let the in-sync reports be answered (they run in the background)."""
    for _ in range(100):
        if replicas.in_sync() >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"only {replicas.in_sync()} of {count} replicas recorded in sync")


def promote(root: str, config: QueueConfig, held: HeldWrites | None = None) -> PartitionService:
    successor = PartitionService(config, 0, PartitionStore(ObjectStore(root), "q", 0, "u"))
    successor.recover(held)
    return successor


# ------------------------------------------------ 1. floors pass only what is settled


def test_floors_only_pass_what_is_stored_and_published_replicas_mode(tmp_path):
    # F1: m1's store finishes while the replica's acknowledgement is in flight; a delete
    # commits and checkpoints in that gap. The checkpoint must keep m1, and the replica
    # must not be told to let go of it before it is published.
    root = f"file://{tmp_path}"

    async def scenario() -> None:
        link = Link("r1")
        leader = await replicated_leader(root, link, checkpoint_every=1)
        await leader.send(rows(REPLICATED, "m0"), dedup=False)
        taken = await leader.receive(1, 0.0, None)
        link.gate = asyncio.Event()
        sending = asyncio.ensure_future(leader.send(rows(REPLICATED, "m1"), dedup=False))
        while 1 not in link.replicas["r1"].held.segments:  # the replica holds m1...
            await asyncio.sleep(0.001)
        while leader.unstored().segments:  # ... m1's store finished; it is not published yet
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        assert not sending.done()
        assert 1 in link.replicas["r1"].held.segments  # not released: not settled
        await leader.delete(taken.column("offset").to_numpy(), taken.column("token").to_numpy(), [])
        if leader._checkpointing is not None:
            await leader._checkpointing
        link.gate.set()
        await sending  # m1 is acknowledged

        successor = promote(root, REPLICATED, link.replicas["r1"].promote())
        assert bodies(await successor.receive(10, 0.0, None)) == [b"m1"]

    asyncio.run(scenario())


def test_floors_only_pass_what_is_stored_and_published_storage_mode(tmp_path):
    # F1, storage mode: a checkpoint that starts as m1's store completes (before the send
    # publishes it) must not treat m1's segment as dead.
    root = f"file://{tmp_path}"

    async def scenario() -> None:
        leader = promote(root, STORED)
        leader._checkpoint_every = 1_000
        await leader.send(rows(STORED, "m0"), dedup=False)
        taken = await leader.receive(1, 0.0, None)
        await leader.delete(taken.column("offset").to_numpy(), taken.column("token").to_numpy(), [])
        stored = leader._segment_writer._on_stored
        checkpoints: list[asyncio.Future[None]] = []

        def checkpoint_in_the_gap(first: int) -> None:
            stored(first)
            checkpoints.append(asyncio.ensure_future(leader.checkpoint()))

        leader._segment_writer._on_stored = checkpoint_in_the_gap
        await leader.send(rows(STORED, "m1"), dedup=False)
        await asyncio.gather(*checkpoints)
        assert bodies(await promote(root, STORED).receive(10, 0.0, None)) == [b"m1"]

    asyncio.run(scenario())


class OnceFailingStore(PartitionStore):
    """The first segment write fails for good (not a transient error), once ``proceed`` is set."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.failed = False
        self.proceed = threading.Event()

    def write_segment(self, batch: pa.RecordBatch) -> str:
        if not self.failed:
            self.failed = True
            self.proceed.wait(10)
            raise FileNotFoundError("segments/ (removed under the writer)")
        return super().write_segment(batch)


def test_a_write_acknowledged_before_it_is_stored_is_never_forgotten(tmp_path):
    # F2: a background store that fails for good must not be passed by the next
    # store's floor (replicas released, checkpoint past it): the leader stops instead,
    # and the replica that holds it takes over with it.
    root = f"file://{tmp_path}"

    async def scenario() -> None:
        link = Link("r1")
        leader = await replicated_leader(root, link, OnceFailingStore, checkpoint_every=1)
        store = leader._store
        await leader.send(rows(REPLICATED, "m0"), dedup=False)  # acknowledged: r1 holds it
        store.proceed.set()  # ... and then its store fails for good
        while not leader.fenced:
            await asyncio.sleep(0.001)
        with pytest.raises(PartitionFenced):
            await leader.send(rows(REPLICATED, "m1"), dedup=False)
        assert 0 in link.replicas["r1"].held.segments  # never released

        successor = promote(root, REPLICATED, link.replicas["r1"].promote())
        assert bodies(await successor.receive(10, 0.0, None)) == [b"m0"]

    asyncio.run(scenario())


class SlowSegmentStore(PartitionStore):
    """Segment writes wait for ``proceed``; delete logs go straight through."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.proceed = threading.Event()

    def write_segment(self, batch: pa.RecordBatch) -> str:
        self.proceed.wait(10)
        return super().write_segment(batch)


def test_a_checkpoint_keeps_the_deletes_of_an_emptied_segment_above_its_floor(tmp_path):
    # Found by chaos (replicas mode, a node removed): m0 is acknowledged by the replica,
    # received and deleted while its segment is still being stored; the delete log is
    # stored, folded by a checkpoint and removed. The segment lands later, above the
    # checkpoint's floor, so recovery loads it: the checkpoint must still say m0 is deleted.
    root = f"file://{tmp_path}"

    async def scenario() -> None:
        link = Link("r1")
        leader = await replicated_leader(root, link, SlowSegmentStore, checkpoint_every=1)
        store = leader._store
        await leader.send(rows(REPLICATED, "m0"), dedup=False)
        taken = await leader.receive(1, 0.0, None)
        await leader.delete(taken.column("offset").to_numpy(), taken.column("token").to_numpy(), [])
        await leader._delete_writer.drained()  # the delete log is stored...
        await leader.checkpoint()  # ... folded into a checkpoint, and removed
        store.proceed.set()
        while leader.unstored().segments:
            await asyncio.sleep(0.001)  # m0's segment lands

        successor = promote(root, REPLICATED, link.replicas["r1"].promote())
        assert bodies(await successor.receive(10, 0.0, None)) == []

    asyncio.run(scenario())


def test_what_only_the_replicas_hold_stays_bounded_when_storage_falls_behind(tmp_path):
    # Found by chaos on S3: a leader whose storage fell behind acknowledged on its
    # replicas alone, without bound; a promoted replica then had 1,697 segments to store
    # before it could serve. Past MAX_UNSTORED_WRITES unstored writes, a send waits for storage.
    root = f"file://{tmp_path}"

    async def scenario() -> None:
        link = Link("r1")
        leader = await replicated_leader(root, link, SlowSegmentStore)
        for n in range(defaults.MAX_UNSTORED_WRITES):  # storage is stuck: the replica's word suffices
            await asyncio.wait_for(leader.send(rows(REPLICATED, f"m{n}"), dedup=False), 5)
        late = asyncio.ensure_future(leader.send(rows(REPLICATED, "late"), dedup=False))
        await asyncio.sleep(0.05)
        assert not late.done()  # one more would pass the bound: it waits for storage
        assert len(link.replicas["r1"].held.segments) == defaults.MAX_UNSTORED_WRITES + 1
        leader._store.proceed.set()
        await asyncio.wait_for(late, 10)
        assert bodies(await leader.receive(20, 0.0, None))[-1] == b"late"

    asyncio.run(scenario())


# --------------------------------------------------- 2. an epoch's objects land as a prefix


def test_what_an_epoch_wrote_lands_as_a_prefix():
    # F7: the writer stores one object at a time, in key order, whatever the timing:
    # a later object never lands before an earlier one.
    started: list[int] = []
    release = {0: asyncio.Event(), 1: asyncio.Event()}

    async def run_blocking(call: Any, *args: Any) -> Any:
        started.append(args[0])
        await release[args[0]].wait()
        return call(*args)

    async def scenario() -> None:
        writer = OrderedWriter(
            Settlement(), run_blocking, retry=True, fatal=True, on_stored=lambda key: None, on_fatal=lambda e: None
        )
        first = writer.submit(0, lambda key: key, 0)
        second = writer.submit(1, lambda key: key, 1)
        release[1].set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert started == [0] and not second.done()
        release[0].set()
        assert await first == 0 and await second == 1
        assert started == [0, 1]

    asyncio.run(scenario())


def test_a_retried_write_whose_first_attempt_landed_is_the_same_write(tmp_path):
    # A write acknowledged before it was stored is retried after a storage error; its
    # first attempt may have landed (the reply was lost): that is success, not a conflict.
    attempts = 0

    async def run_blocking(call: Any, *args: Any) -> Any:
        nonlocal attempts
        attempts += 1
        result = call(*args)
        if attempts == 1:
            raise StorageUnavailable("put", "segments/x", "reply lost")
        return result

    async def scenario() -> None:
        store = ObjectStore(f"file://{tmp_path}")
        writer = OrderedWriter(
            Settlement(), run_blocking, retry=True, fatal=True, on_stored=lambda key: None, on_fatal=pytest.fail
        )
        await writer.submit(0, store.put_once, "segments/x", b"payload")
        assert attempts == 2 and store.get("segments/x") == b"payload"

    asyncio.run(scenario())


# -------------------------------------------------- 4. the in-sync set is the coordinator's fact


def test_a_write_is_acknowledged_unstored_only_if_a_recorded_replica_holds_it():
    async def scenario() -> None:
        link = Link("r1")
        replicas = ReplicaSet(link, acknowledging=True)
        link.report_in_sync = _never  # type: ignore[method-assign]  # the coordinator has not answered
        await replicas.attach(["r1"], HeldWrites)
        assert replicas.names() == ["r1"] and replicas.in_sync() == 0  # caught up, not recorded
        assert not await replicas.segment(_batch(0))  # held, but nobody may promote r1 yet

    asyncio.run(scenario())


def test_a_write_is_acknowledged_unstored_only_if_a_replica_on_another_node_holds_it(tmp_path):
    # Found by chaos on S3 (replicas mode, seed 24): a promoted leader's one in-sync
    # replica ran on its own node (the coordinator places a replica there when no other
    # node is free). The leader acknowledged writes that it and that replica alone held;
    # the node was removed and took both copies with it.
    root = f"file://{tmp_path}"

    async def scenario() -> None:
        link = Link("r1", "r2")
        link.on_leader_node = {"r1", "r2"}
        leader = await replicated_leader(root, link, SlowSegmentStore)
        assert leader._replicas is not None and leader._replicas.on_leader_node() == 2
        sending = asyncio.ensure_future(leader.send(rows(REPLICATED, "m0"), dedup=False))
        await asyncio.sleep(0.05)
        assert not sending.done()  # both replicas hold m0, and both go with the leader's node
        assert all(0 in replica.held.segments for replica in link.replicas.values())
        leader._store.proceed.set()
        await asyncio.wait_for(sending, 10)  # acknowledged once stored

        link.on_leader_node = {"r1"}  # r2 runs elsewhere: its word suffices
        assert leader._replicas.on_leader_node() == 1
        leader._store.proceed.clear()
        await asyncio.wait_for(leader.send(rows(REPLICATED, "m1"), dedup=False), 5)
        assert 1 in leader.unstored().segments  # acknowledged while its store waits

        successor = promote(root, REPLICATED, link.replicas["r2"].promote())  # the leader's node is gone
        leader._store.proceed.set()
        assert bodies(await successor.receive(10, 0.0, None)) == [b"m0", b"m1"]

    asyncio.run(scenario())


def test_a_failed_replica_counts_until_the_coordinator_recorded_it_left(tmp_path):
    # F5: the leader acknowledges without a replica only once the coordinator recorded
    # that it left, and reports it only once what it may hold is stored.
    async def scenario() -> None:
        link = Link("r1", "r2")
        link.coordinator_answers = False  # a replaced leader: the coordinator refuses
        replicas = ReplicaSet(link, acknowledging=True)
        await replicas.attach(["r1", "r2"], HeldWrites)
        await recorded(replicas, 2)
        link.failing.add("r2")
        assert not await replicas.segment(_batch(0))
        for _ in range(100):
            if link.lost_reports:
                break
            await asyncio.sleep(0)
        assert link.lost_reports == [["r2"]]
        assert not await replicas.segment(_batch(1))  # refused: r2 still counts, storage decides

    asyncio.run(scenario())


def test_a_replica_is_never_reported_lost_once_a_write_failed_for_good(tmp_path):
    # Found by the simulation with the real coordinator (seed 40000): a replica failed a
    # write, and its leader reported it lost once its writer had "drained", which a write
    # that failed for good counts as. The coordinator then removed the one copy of a delete
    # the leader had acknowledged and could not store: the message came back.
    root = f"file://{tmp_path}"

    async def scenario() -> None:
        link = Link("r1")
        leader = await replicated_leader(root, link, OnceFailingStore)
        await leader.send(rows(REPLICATED, "m0"), dedup=False)  # acknowledged: r1 holds it
        link.failing.add("r1")
        sending = asyncio.ensure_future(leader.send(rows(REPLICATED, "m1"), dedup=False))
        for _ in range(20):
            await asyncio.sleep(0)  # r1 failed m1: it is leaving, reported once m0 is stored
        leader._store.proceed.set()  # ... which it never is
        while not leader.fenced:
            await asyncio.sleep(0.001)
        with pytest.raises(PartitionFenced):
            await sending
        for _ in range(20):
            await asyncio.sleep(0)
        assert link.lost_reports == []  # r1 holds m0: it stays in the in-sync set, to be promoted
        assert 0 in link.replicas["r1"].held.segments

    asyncio.run(scenario())


def test_a_stale_replica_list_never_drops_a_recorded_replica():
    # Found by the simulation with the real coordinator (seed 40509): two attach calls
    # overtook each other, and the older list (r1 only) dropped r2 from the leader's set
    # after the coordinator had recorded r2 in sync. The leader acknowledged on r1 alone;
    # r1 died, r2 was promoted without those writes.
    async def scenario() -> None:
        link = Link("r1", "r2")
        link.coordinator_answers = False  # the coordinator has not recorded r2's removal
        replicas = ReplicaSet(link, acknowledging=True)
        await replicas.attach(["r1", "r2"], HeldWrites)
        await recorded(replicas, 2)
        await replicas.attach(["r1"], HeldWrites)  # stale
        assert not await replicas.segment(_batch(0))  # r2 still counts: storage decides
        for _ in range(100):
            if link.lost_reports:
                break
            await asyncio.sleep(0)
        assert link.lost_reports == [["r2"]]
        link.coordinator_answers = True  # recorded: only now may r1's word suffice
        await replicas._record_lost(["r2"])
        assert await replicas.segment(_batch(1))

    asyncio.run(scenario())


def test_every_live_replica_refuses_a_replaced_leader_once_fenced():
    replica = ReplicaState("r2")
    replica.hold_segment(3, _batch(0))
    replica.fence(4)  # the coordinator promoted another replica under epoch 4
    with pytest.raises(PartitionFenced):
        replica.hold_segment(3, _batch(1))
    with pytest.raises(PartitionFenced):
        replica.hold_deletes(3, 0, np.array([0]))


def test_a_release_carries_its_epoch_and_a_stale_one_is_ignored():
    # F12: a late release from a replaced leader must not drop what the new one sent.
    replica = ReplicaState("r1")
    replica.hold_segment(5, _batch(7))
    replica.release(4, 100, 100)
    assert 7 in replica.held.segments
    replica.release(5, 100, 100)
    assert replica.held.segments == {}


def test_a_promoted_replica_takes_no_more_writes():
    replica = ReplicaState("r1")
    replica.hold_segment(1, _batch(0))
    held = replica.promote()
    assert list(held.segments) == [0]
    with pytest.raises(PartitionFenced):
        replica.hold_segment(1, _batch(1))


# ------------------------------------------------------------------ 7. nothing gets stuck


def test_nothing_gets_stuck_two_failed_delete_attempts_leave_the_message_visible():
    # F10: a retried delete while the first attempt is still being stored; both fail.
    log = PartitionLog(0, quota=10, retention_s=3600, dedup_window_s=300)
    segment = log.stamp(rows(STORED, "m"), now=100.0)
    log.publish(segment, "segments/0")
    delivery = log.receive(1, 100.0, 30.0)
    offsets, tokens = delivery.column("offset").to_numpy(), delivery.column("token").to_numpy()
    first = log.prepare_delete(offsets, tokens, ["r"])
    second = log.prepare_delete(offsets, tokens, ["r"])
    log.abort_delete(first)
    log.abort_delete(second)
    assert log.receive(1, 131.0, 30.0).num_rows == 1


# --------------------------------------------------------- 8. deliveries can be attributed


def test_deliveries_carry_the_epoch_of_the_leader_that_served_them(tmp_path):
    root = f"file://{tmp_path}"

    async def scenario() -> None:
        first = promote(root, STORED)
        await first.send(rows(STORED, "m"), dedup=False)
        assert (await first.receive(1, 0.0, 0.0)).column("epoch").to_pylist() == [first.epoch]
        second = promote(root, STORED)
        assert (await second.receive(1, 0.0, 0.0)).column("epoch").to_pylist() == [second.epoch]
        assert second.epoch > first.epoch

    asyncio.run(scenario())


def _batch(first: int) -> pa.RecordBatch:
    log = PartitionLog(0, quota=10, retention_s=3600, dedup_window_s=300)
    log.next_offset = first
    return log.stamp(rows(STORED, "x"), now=100.0)


async def _never(replica: str) -> bool:
    await asyncio.Event().wait()
    return False
