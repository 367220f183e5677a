"""A partition keeps at most its memory budget of message data; the rest waits on storage."""

from __future__ import annotations

import asyncio

import pyarrow as pa

from rayqueue.client.rows import IdSource, send_rows
from rayqueue.config import QueueConfig
from rayqueue.partition.service import PartitionService
from rayqueue.storage import ObjectStore, PartitionStore

BUDGET = 1024 * 1024
BODY = 10_000  # bytes per message
PER_SEGMENT = 20  # messages per send: about 200 kB per segment
CONFIG = QueueConfig.build(name="big", max_messages=100_000, max_message_bytes=BODY, partition_memory_bytes=BUDGET)
IDS = IdSource()
TOTAL_5X = (5 * BUDGET // (BODY * PER_SEGMENT) + 1) * PER_SEGMENT


def service(root: str) -> PartitionService:
    partition = PartitionService(CONFIG, 0, PartitionStore(ObjectStore(root), "big", 0, "u"))
    partition.recover()
    return partition


def rows(first: int) -> pa.Table:
    bodies = [str(first + i).encode().ljust(BODY, b".") for i in range(PER_SEGMENT)]
    return send_rows(CONFIG, bodies, IDS.take(PER_SEGMENT))


def test_a_backlog_ten_times_the_budget_stays_within_it_and_drains_in_order(tmp_path):
    async def scenario() -> None:
        partition = service(f"file://{tmp_path}")
        total = (10 * BUDGET // (BODY * PER_SEGMENT) + 1) * PER_SEGMENT  # over ten times the budget
        peak = 0
        for first in range(0, total, PER_SEGMENT):
            await partition.send(rows(first), dedup=False)
            peak = max(peak, partition._log.resident_bytes)
        assert peak <= BUDGET
        assert partition.stats().visible == total  # counted, though most of it is on storage
        received = []
        while (delivery := await partition.receive(7, 0.0, None)).num_rows:
            peak = max(peak, partition._log.resident_bytes)
            received += [int(body.rstrip(b".")) for body in delivery.column("body").to_pylist()]
            await partition.delete(delivery.column("offset").to_numpy(), delivery.column("token").to_numpy(), [])
        assert received == list(range(total))  # nothing lost, nothing reordered
        assert peak <= BUDGET + PER_SEGMENT * BODY * 2  # the budget, plus the segment being read back

    asyncio.run(scenario())


def test_recovery_of_a_large_backlog_stays_within_the_budget(tmp_path):
    async def fill() -> None:
        partition = service(f"file://{tmp_path}")
        for first in range(0, TOTAL_5X, PER_SEGMENT):
            await partition.send(rows(first), dedup=False)

    asyncio.run(fill())
    recovered = service(f"file://{tmp_path}")
    assert recovered._log.resident_bytes <= BUDGET
    assert recovered.stats().visible == TOTAL_5X

    async def first_ten() -> list[int]:
        delivery = await recovered.receive(10, 0.0, None)
        return [int(body.rstrip(b".")) for body in delivery.column("body").to_pylist()]

    assert asyncio.run(first_ten()) == list(range(10))
