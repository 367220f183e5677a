"""PartitionService on real storage (memory:// and file://): persist, then publish.

Each test runs its own event loop with ``asyncio.run``; time is a FakeClock except
where a long poll must really wait (bounded to a fraction of a second).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from rayqueue.client.rows import IdSource, send_rows
from rayqueue.config import QueueConfig
from rayqueue.errors import (
    InvalidArgument,
    InvalidReceipt,
    MessageTooLarge,
    PartitionFenced,
    QueueFull,
    StorageCorrupt,
    StorageUnavailable,
)
from rayqueue.message import encode_receipt
from rayqueue.partition.service import PartitionService
from rayqueue.storage import ObjectStore, PartitionStore

VISIBILITY = 30.0
IDS = IdSource()


class FailingStore(PartitionStore):
    """A PartitionStore whose writes fail while ``failing`` is set, as storage that is down."""

    def __init__(self, store: ObjectStore, queue: str, partition: int, uid: str) -> None:
        super().__init__(store, queue, partition, uid)
        self.failing = False

    def write_segment(self, *args: Any, **kwargs: Any) -> Any:
        if self.failing:
            raise StorageUnavailable("put", "segments/x", "injected failure")
        return super().write_segment(*args, **kwargs)

    def write_deletes(self, *args: Any, **kwargs: Any) -> Any:
        if self.failing:
            raise StorageUnavailable("put", "deletes/x", "injected failure")
        return super().write_deletes(*args, **kwargs)


def open_store(url: str, config: QueueConfig, store_class: type[PartitionStore] = PartitionStore) -> Any:
    return store_class(ObjectStore(url, retry_s=0.2), config.name, 0, "u")


def start_service(
    config: QueueConfig, store: PartitionStore, clock: Callable[[], float], **options: Any
) -> PartitionService:
    """A partition leader that took over from whatever is on storage (a "restart")."""
    service = PartitionService(config, 0, store, clock=clock, **options)
    service.recover()
    return service


def rows(config: QueueConfig, bodies: list[bytes], ids: list[str] | None = None) -> pa.Table:
    return send_rows(config, bodies, ids if ids is not None else IDS.take(len(bodies)))


def bodies_of(delivery: pa.Table) -> list[bytes]:
    return delivery.column("body").to_pylist()


def receipts_of(delivery: pa.Table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    offsets = delivery.column("offset").to_numpy()
    tokens = delivery.column("token").to_numpy()
    return offsets, tokens, [encode_receipt(0, int(o), int(t)) for o, t in zip(offsets, tokens)]


def stored_bodies(url: str, config: QueueConfig) -> list[bytes]:
    """What a fresh leader recovers from storage, deletes applied. It fences earlier
    leaders, so call it once the service under test is done writing."""
    recovered = PartitionStore(ObjectStore(url), config.name, 0, "u").take_over()
    deleted = set(recovered.deleted_offsets.tolist())
    return [
        row["body"]
        for _name, table in recovered.segments
        for row in table.select(["offset", "body"]).to_pylist()
        if row["offset"] not in deleted
    ]


def segment_objects(url: str, config: QueueConfig) -> list[str]:
    return ObjectStore(url).list(f"queues/{config.name}.u/0/segments/")


@pytest.fixture
def config(make_config) -> QueueConfig:
    return make_config(max_messages=1000, max_message_bytes=64)


# -------------------------------------------------------------------- sends


def test_send_is_on_storage_before_it_returns(storage_url, config, clock):
    store = open_store(storage_url, config)

    async def main() -> None:
        service = start_service(config, store, clock)
        await service.send(rows(config, [b"a", b"b"]), dedup=False)
        assert stored_bodies(storage_url, config) == [b"a", b"b"]

    asyncio.run(main())


def test_concurrent_sends_share_segments(storage_url, config, clock):
    store = open_store(storage_url, config)

    async def main() -> None:
        service = start_service(config, store, clock)
        await asyncio.gather(*(service.send(rows(config, [b"m%d" % i]), dedup=False) for i in range(50)))
        delivery = await service.receive(100, 0.0, VISIBILITY)
        assert sorted(bodies_of(delivery)) == sorted(b"m%d" % i for i in range(50))

    asyncio.run(main())
    assert 1 <= len(segment_objects(storage_url, config)) <= 5  # the first flush alone, the rest together
    assert len(stored_bodies(storage_url, config)) == 50


def test_sent_message_is_receivable(storage_url, config, clock):
    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock)
        await service.send(rows(config, [b"hello"]), dedup=False)
        delivery = await service.receive(10, 0.0, None)
        assert bodies_of(delivery) == [b"hello"]

    asyncio.run(main())


def test_message_too_large_is_refused_and_nothing_is_stored(storage_url, config, clock):
    store = open_store(storage_url, config)
    too_large = pa.Table.from_pylist(
        [{"id": "a", "body": b"ok"}, {"id": "b", "body": b"x" * 65}],
        schema=rows(config, [b""]).schema,
    )

    async def main() -> None:
        service = start_service(config, store, clock)
        with pytest.raises(MessageTooLarge) as caught:
            await service.send(too_large, dedup=False)
        assert (caught.value.index, caught.value.size, caught.value.limit) == (1, 65, 64)
        assert (await service.receive(10, 0.0, None)).num_rows == 0

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == []


def test_body_at_the_limit_is_accepted(storage_url, config, clock):
    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock)
        await service.send(rows(config, [b"x" * 64]), dedup=False)

    asyncio.run(main())


def test_send_past_quota_raises_queue_full_and_stores_nothing(storage_url, make_config, clock):
    config = make_config(max_messages=2)
    store = open_store(storage_url, config)

    async def main() -> None:
        service = start_service(config, store, clock)
        await service.send(rows(config, [b"a"]), dedup=False)
        with pytest.raises(QueueFull):
            await service.send(rows(config, [b"b", b"c"]), dedup=False)

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == [b"a"]


def test_expired_messages_do_not_count_against_quota(storage_url, make_config, clock):
    config = make_config(max_messages=2, retention_s=60.0)

    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock)
        await service.send(rows(config, [b"a", b"b"]), dedup=False)
        clock.advance(61)
        await service.send(rows(config, [b"c"]), dedup=False)

    asyncio.run(main())


# ---------------------------------------------------------- storage failure


def test_storage_failure_fails_the_send_and_stops_the_leader(storage_url, make_config, clock):
    # A failed segment write may have landed: the leader cannot know, so it stops and
    # its successor reads what landed (the quota of the failed send is not held).
    config = make_config(max_messages=2)
    store = open_store(storage_url, config, FailingStore)

    async def main() -> None:
        service = start_service(config, store, clock)
        store.failing = True
        with pytest.raises(StorageUnavailable):
            await service.send(rows(config, [b"lost-1", b"lost-2"]), dedup=False)
        assert service.fenced
        with pytest.raises(PartitionFenced):
            await service.send(rows(config, [b"a"]), dedup=False)

        successor = start_service(config, open_store(storage_url, config), clock)
        await successor.send(rows(config, [b"a"]), dedup=False)
        await successor.send(rows(config, [b"b"]), dedup=False)
        assert bodies_of(await successor.receive(10, 0.0, None)) == [b"a", b"b"]

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == [b"a", b"b"]


class LostReplyStore(PartitionStore):
    """Segments land, but the first write's caller hears of a failure (a lost reply)."""

    def __init__(self, store: ObjectStore, queue: str, partition: int, uid: str) -> None:
        super().__init__(store, queue, partition, uid)
        self.lose_next = False

    def write_segment(self, *args: Any, **kwargs: Any) -> Any:
        name = super().write_segment(*args, **kwargs)
        if self.lose_next:
            self.lose_next = False
            raise StorageUnavailable("put", name, "reply lost")
        return name


def test_a_send_whose_outcome_is_unknown_is_stored_once_by_its_retry(storage_url, config, clock):
    # The retry (same id, with dedup) must not store a second copy: after one of them
    # is deleted the other would come back as a message deleted and served again.
    store = open_store(storage_url, config, LostReplyStore)

    async def main() -> None:
        service = start_service(config, store, clock)
        store.lose_next = True
        with pytest.raises(StorageUnavailable):
            await service.send(rows(config, [b"a"], ids=["order-1"]), dedup=True)
        successor = start_service(config, open_store(storage_url, config), clock)
        await successor.send(rows(config, [b"a"], ids=["order-1"]), dedup=True)
        delivery = await successor.receive(10, 0.0, VISIBILITY)
        assert bodies_of(delivery) == [b"a"]
        await successor.delete(*receipts_of(delivery))

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == []


def test_storage_failure_fails_every_send_of_the_group(storage_url, config, clock):
    store = open_store(storage_url, config, FailingStore)

    async def main() -> None:
        service = start_service(config, store, clock)
        store.failing = True
        results = await asyncio.gather(
            *(service.send(rows(config, [b"m%d" % i]), dedup=False) for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(result, StorageUnavailable) for result in results)
        assert service.stats().visible == 0

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == []


def test_storage_failure_during_delete_keeps_the_message(storage_url, config, clock):
    store = open_store(storage_url, config, FailingStore)

    async def main() -> None:
        service = start_service(config, store, clock)
        await service.send(rows(config, [b"a"]), dedup=False)
        delivery = await service.receive(1, 0.0, VISIBILITY)
        store.failing = True
        with pytest.raises(StorageUnavailable):
            await service.delete(*receipts_of(delivery))

        clock.advance(VISIBILITY)
        assert bodies_of(await service.receive(1, 0.0, VISIBILITY)) == [b"a"]

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == [b"a"]


# -------------------------------------------------------------------- dedup


def test_dedup_send_of_the_same_id_twice_stores_once(storage_url, config, clock):
    store = open_store(storage_url, config)

    async def main() -> None:
        service = start_service(config, store, clock)
        await service.send(rows(config, [b"first"], ids=["order-1"]), dedup=True)
        await service.send(rows(config, [b"retry"], ids=["order-1"]), dedup=True)
        assert bodies_of(await service.receive(10, 0.0, None)) == [b"first"]

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == [b"first"]


def test_concurrent_dedup_sends_of_the_same_id_store_once(storage_url, config, clock):
    store = open_store(storage_url, config)

    async def main() -> None:
        service = start_service(config, store, clock)
        await asyncio.gather(*(service.send(rows(config, [b"body"], ids=["order-1"]), dedup=True) for _ in range(5)))
        assert service.stats().visible == 1

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == [b"body"]


def test_dedup_within_one_batch_stores_each_id_once(storage_url, config, clock):
    store = open_store(storage_url, config)

    async def main() -> None:
        service = start_service(config, store, clock)
        await service.send(rows(config, [b"a", b"a-again", b"b"], ids=["a", "a", "b"]), dedup=True)

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == [b"a", b"b"]


def test_dedup_is_remembered_across_a_restart(storage_url, config, clock):
    store = open_store(storage_url, config)

    async def main() -> None:
        first = start_service(config, store, clock)
        await first.send(rows(config, [b"first"], ids=["order-1"]), dedup=True)
        clock.advance(10)
        second = start_service(config, open_store(storage_url, config), clock)
        await second.send(rows(config, [b"retry"], ids=["order-1"]), dedup=True)

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == [b"first"]


def test_dedup_forgets_ids_after_the_window(storage_url, config, clock):
    store = open_store(storage_url, config)

    async def main() -> None:
        service = start_service(config, store, clock)
        await service.send(rows(config, [b"first"], ids=["order-1"]), dedup=True)
        clock.advance(10 * 3600)
        await service.send(rows(config, [b"much later"], ids=["order-1"]), dedup=True)

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == [b"first", b"much later"]


def test_dedup_is_remembered_across_a_checkpoint_and_restart(storage_url, config, clock):
    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock, checkpoint_every=1000)
        await service.send(rows(config, [b"first"], ids=["order-1"]), dedup=True)
        await service.delete(*receipts_of(await service.receive(1, 0.0, VISIBILITY)))
        await service.checkpoint()
        clock.advance(10)

        restarted = start_service(config, open_store(storage_url, config), clock)
        await restarted.send(rows(config, [b"retry"], ids=["order-1"]), dedup=True)
        assert (await restarted.receive(10, 0.0, VISIBILITY)).num_rows == 0

    asyncio.run(main())


def test_failed_dedup_send_can_be_retried(storage_url, config, clock):
    store = open_store(storage_url, config, FailingStore)

    async def main() -> None:
        service = start_service(config, store, clock)
        store.failing = True
        with pytest.raises(StorageUnavailable):
            await service.send(rows(config, [b"a"], ids=["order-1"]), dedup=True)
        successor = start_service(config, open_store(storage_url, config), clock)
        await successor.send(rows(config, [b"a"], ids=["order-1"]), dedup=True)

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == [b"a"]


# -------------------------------------------------------------- long polls


def test_receive_with_wait_returns_as_soon_as_a_send_arrives(storage_url, config, clock):
    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock)
        started = time.monotonic()
        waiting = asyncio.ensure_future(service.receive(10, 10.0, VISIBILITY))
        for _ in range(3):
            await asyncio.sleep(0)  # let the receive start waiting
        assert not waiting.done()

        await service.send(rows(config, [b"late"]), dedup=False)
        delivery = await asyncio.wait_for(waiting, 5.0)

        assert bodies_of(delivery) == [b"late"]
        assert time.monotonic() - started < 5.0

    asyncio.run(main())


def test_receive_with_wait_returns_empty_after_wait_s(storage_url, config, clock):
    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock)
        started = time.monotonic()
        delivery = await service.receive(10, 0.2, VISIBILITY)
        waited = time.monotonic() - started
        assert delivery.num_rows == 0
        assert waited >= 0.2  # it did wait (an upper bound would only measure the machine)

    asyncio.run(main())


def test_wait_visible_sees_a_send_without_taking_it(storage_url, config, clock):
    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock)
        waiting = asyncio.ensure_future(service.wait_visible(10.0))
        await asyncio.sleep(0)
        await service.send(rows(config, [b"a"]), dedup=False)
        assert await asyncio.wait_for(waiting, 5.0) is True
        assert bodies_of(await service.receive(10, 0.0, None)) == [b"a"]

    asyncio.run(main())


def test_wait_visible_waits_rather_than_spins_after_a_delete(storage_url, config, clock):
    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock)
        await service.send(rows(config, [b"a"]), dedup=False)
        await service.delete(*receipts_of(await service.receive(1, 0.0, VISIBILITY)))
        clock.advance(VISIBILITY + 1)
        clock.reads = 0

        assert await service.wait_visible(0.2) is False
        assert clock.reads < 100  # an idle wait reads the clock a few times, not thousands

    asyncio.run(main())


# ------------------------------------------------------------------ deletes


def test_delete_is_durable(storage_url, config, clock):
    store = open_store(storage_url, config)

    async def main() -> None:
        service = start_service(config, store, clock)
        await service.send(rows(config, [b"a", b"b"]), dedup=False)
        delivery = await service.receive(1, 0.0, VISIBILITY)
        await service.delete(*receipts_of(delivery))

        restarted = start_service(config, open_store(storage_url, config), clock)
        clock.advance(VISIBILITY)
        assert bodies_of(await restarted.receive(10, 0.0, VISIBILITY)) == [b"b"]

    asyncio.run(main())


def test_delete_with_stale_receipt_raises_and_deletes_nothing(storage_url, config, clock):
    store = open_store(storage_url, config)

    async def main() -> None:
        service = start_service(config, store, clock)
        await service.send(rows(config, [b"a"]), dedup=False)
        old = receipts_of(await service.receive(1, 0.0, VISIBILITY))
        clock.advance(VISIBILITY)
        await service.receive(1, 0.0, VISIBILITY)
        with pytest.raises(InvalidReceipt):
            await service.delete(*old)

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == [b"a"]


def test_concurrent_deletes_of_the_same_receipt_both_succeed(storage_url, config, clock):
    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock)
        await service.send(rows(config, [b"a"]), dedup=False)
        receipt = receipts_of(await service.receive(1, 0.0, VISIBILITY))
        await asyncio.gather(service.delete(*receipt), service.delete(*receipt))
        assert service.stats().in_flight == 0

    asyncio.run(main())


def test_repeated_receipt_in_one_delete_loses_no_other_message(storage_url, config, clock):
    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock, checkpoint_every=1000)
        await service.send(rows(config, [b"a", b"b"]), dedup=False)
        offsets, tokens, receipts = receipts_of(await service.receive(2, 0.0, VISIBILITY))
        first = [0, 0]
        await service.delete(offsets[first], tokens[first], [receipts[0], receipts[0]])
        await service.checkpoint()

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == [b"b"]


def test_change_visibility_makes_message_receivable_again(storage_url, config, clock):
    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock)
        await service.send(rows(config, [b"a"]), dedup=False)
        offsets, tokens, receipts = receipts_of(await service.receive(1, 0.0, VISIBILITY))
        await service.change_visibility(int(offsets[0]), int(tokens[0]), receipts[0], 0.0)
        assert bodies_of(await service.receive(1, 0.0, VISIBILITY)) == [b"a"]

    asyncio.run(main())


# ----------------------------------------------------------------- recovery


def test_recovery_gives_back_every_undeleted_message_in_order(storage_url, config, clock):
    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock)
        for batch in ([b"m0", b"m1", b"m2"], [b"m3"], [b"m4", b"m5"]):
            await service.send(rows(config, batch), dedup=False)
        delivery = await service.receive(6, 0.0, VISIBILITY)
        offsets, tokens, receipts = receipts_of(delivery)
        chosen = [1, 3, 4]
        await service.delete(offsets[chosen], tokens[chosen], [receipts[i] for i in chosen])

        restarted = start_service(config, open_store(storage_url, config), clock)
        recovered = await restarted.receive(10, 0.0, VISIBILITY)

        assert bodies_of(recovered) == [b"m0", b"m2", b"m5"]
        assert recovered.column("receive_count").to_pylist() == [1, 1, 1]
        assert restarted.stats().in_flight == 3

    asyncio.run(main())


def test_sends_after_recovery_follow_the_recovered_messages(storage_url, config, clock):
    store = open_store(storage_url, config)

    async def main() -> None:
        service = start_service(config, store, clock)
        await service.send(rows(config, [b"before"]), dedup=False)

        restarted = start_service(config, open_store(storage_url, config), clock)
        await restarted.send(rows(config, [b"after"]), dedup=False)
        assert bodies_of(await restarted.receive(10, 0.0, VISIBILITY)) == [b"before", b"after"]

    asyncio.run(main())
    assert stored_bodies(storage_url, config) == [b"before", b"after"]


def test_recovery_of_empty_storage_gives_an_empty_partition(storage_url, config, clock):
    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock)
        assert (await service.receive(10, 0.0, None)).num_rows == 0
        assert service.objects_recovered == 0

    asyncio.run(main())


def test_recovery_stops_at_a_torn_segment_instead_of_skipping_it(file_url, config, clock):
    # Skipping it would lose its messages silently (and a checkpoint would then remove it).
    store = open_store(file_url, config)

    async def main() -> None:
        service = start_service(config, store, clock)
        await service.send(rows(config, [b"kept"]), dedup=False)
        await service.send(rows(config, [b"torn"]), dedup=False)
        torn = tear_last_segment(file_url, config.name)

        with pytest.raises(StorageCorrupt) as refused:
            start_service(config, open_store(file_url, config), clock)
        assert os.path.basename(torn) in str(refused.value)

    asyncio.run(main())


def tear_last_segment(file_url: str, queue: str) -> str:
    folder = os.path.join(file_url.removeprefix("file://"), "queues", f"{queue}.u", "0", "segments")
    path = os.path.join(folder, sorted(os.listdir(folder))[-1])
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    return path


def test_only_the_leader_serves_a_replaced_leader_hands_out_nothing(storage_url, config, clock):
    # Read-index: a receive is answered only after a look at storage that began after
    # it arrived; the successor's claim is there, so the old leader refuses.
    async def main() -> None:
        old = start_service(config, open_store(storage_url, config), clock)
        await old.send(rows(config, [b"a"]), dedup=False)
        new = start_service(config, open_store(storage_url, config), clock)
        delivery = await new.receive(1, 0.0, VISIBILITY)
        await new.delete(*receipts_of(delivery))  # acknowledged by the successor

        with pytest.raises(PartitionFenced):
            await old.receive(1, 0.0, VISIBILITY)
        assert old.fenced

    asyncio.run(main())


def test_only_the_leader_serves_a_replaced_leader_acknowledges_no_empty_delete(storage_url, config, clock):
    # A delete with nothing to write (the message is already deleted here) writes no
    # object, so no write fences it: it must confirm leadership like a receive.
    async def main() -> None:
        old = start_service(config, open_store(storage_url, config), clock)
        await old.send(rows(config, [b"a"]), dedup=False)
        receipt = receipts_of(await old.receive(1, 0.0, VISIBILITY))
        await old.delete(*receipt)
        start_service(config, open_store(storage_url, config), clock)

        with pytest.raises(PartitionFenced):
            await old.delete(*receipt)

    asyncio.run(main())


def test_only_the_leader_serves_a_replaced_leader_changes_no_visibility(storage_url, config, clock):
    async def main() -> None:
        old = start_service(config, open_store(storage_url, config), clock)
        await old.send(rows(config, [b"a"]), dedup=False)
        offsets, tokens, receipts = receipts_of(await old.receive(1, 0.0, VISIBILITY))
        start_service(config, open_store(storage_url, config), clock)

        with pytest.raises(PartitionFenced):
            await old.change_visibility(int(offsets[0]), int(tokens[0]), receipts[0], 0.0)

    asyncio.run(main())


class UnsureStore(PartitionStore):
    """A store that cannot tell whether a newer leader claimed the partition."""

    unsure = False

    def check_leader(self) -> None:
        if self.unsure:
            raise StorageUnavailable("stat", "epochs/x", "injected failure")
        super().check_leader()


def test_only_the_leader_serves_an_unconfirmed_leader_refuses_and_gives_messages_back(storage_url, config, clock):
    # Any error in confirming leadership refuses (fails closed); what the receive took
    # is visible again at once, not hidden for the visibility timeout.
    async def main() -> None:
        store = open_store(storage_url, config, UnsureStore)
        service = start_service(config, store, clock)
        await service.send(rows(config, [b"a"]), dedup=False)
        store.unsure = True
        with pytest.raises(StorageUnavailable):
            await service.receive(1, 0.0, VISIBILITY)
        store.unsure = False
        delivery = await service.receive(1, 0.0, VISIBILITY)
        assert bodies_of(delivery) == [b"a"]
        assert delivery.column("receive_count").to_pylist() == [1]
        assert not service.fenced

    asyncio.run(main())


def test_receives_that_arrive_together_share_one_look_at_storage(storage_url, config, clock):
    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock)
        await service.send(rows(config, [b"m"] * 20), dedup=False)
        looks = service._leadership.looks
        deliveries = await asyncio.gather(*(service.receive(1, 0.0, VISIBILITY) for _ in range(20)))
        assert sum(d.num_rows for d in deliveries) == 20
        assert service._leadership.looks - looks <= 2

    asyncio.run(main())


def test_a_write_that_finds_a_newer_claim_fences_the_leader(storage_url, config, clock):
    async def main() -> None:
        old = start_service(config, open_store(storage_url, config), clock)
        start_service(config, open_store(storage_url, config), clock)
        with pytest.raises(PartitionFenced):
            await old.send(rows(config, [b"late"]), dedup=False)
        assert old.fenced

    asyncio.run(main())


# ------------------------------------------------------ malformed batches


def with_column(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, column)


MALFORMED = {
    # Another schema: concatenated with good rows in one flush, it fails the whole flush.
    "key as large_string": lambda good: with_column(good, "key", pa.array(["k"], pa.large_string())),
    "an extra column": lambda good: good.append_column("extra", pa.array([1])),
    "a null id": lambda good: pa.Table.from_arrays(
        [pa.array([None], pa.string()), *good.columns[1:]], schema=good.schema
    ),
    # The send schema, with a key that is not UTF-8: stored, it fails every receive of it.
    "a key that is not UTF-8": lambda good: with_column(
        good, "key", pa.array([b"\xff\xfe"], pa.binary()).view(pa.string())
    ),
}


@pytest.mark.parametrize("malformed", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_batch_is_refused_and_good_ones_of_the_same_group_commit_are_stored(
    storage_url, config, clock, malformed
):
    store = open_store(storage_url, config)
    bad = malformed(rows(config, [b"bad"]))

    async def main() -> None:
        service = start_service(config, store, clock)
        outcomes = await asyncio.gather(
            service.send(rows(config, [b"first"]), dedup=False),
            service.send(bad, dedup=False),
            service.send(rows(config, [b"second"]), dedup=False),
            return_exceptions=True,
        )
        assert outcomes[0] is None and outcomes[2] is None  # acknowledged
        assert isinstance(outcomes[1], InvalidArgument)
        delivery = await service.receive(10, 0.0, None)  # no UnicodeDecodeError from a stored bad key
        assert sorted(bodies_of(delivery)) == [b"first", b"second"]

    asyncio.run(main())
    assert sorted(stored_bodies(storage_url, config)) == [b"first", b"second"]
    assert len(segment_objects(storage_url, config)) == 1  # one group commit: the bad batch would have joined it


def test_a_malformed_batch_error_says_what_is_wrong(storage_url, config, clock):
    bad = rows(config, [b"x"]).append_column("extra", pa.array([1]))

    async def main() -> None:
        service = start_service(config, open_store(storage_url, config), clock)
        with pytest.raises(InvalidArgument, match="send schema: an extra column 'extra'"):
            await service.send(bad, dedup=False)

    asyncio.run(main())
